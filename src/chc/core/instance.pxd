# Types for the compiled build of instance.py (Cython pure-Python mode; see setup.py).
cimport cython

from ..nf cimport Context
from ..packet cimport Packet


cdef class Instance:
    cdef public object vertex, instance_id, nf, client, delay, free_at, busy, first_error, shared
    cdef public Context ctx
    cdef public object queue
    cdef public dict objects
    cdef public bint arrival_clocks
    cdef public long long arrivals, inversions, last_clock, packets_in, packets_out, dropped, nf_errors
    cdef public list finished, forks, fired

    @cython.locals(pkt=Packet, res=object, ctx=Context, out=list, timers=list)
    cpdef list run(self, list batch)
