# Types for the compiled build of nf.py (Cython pure-Python mode; see setup.py).

cdef class Context:
    cdef public object vertex, instance, clock, packet_clock, now, index
    cdef public list alerts, _timers
    cdef public object packet, partition
    cdef public long long _timer_seq, _armed, _parent
