# Types for the compiled build of client.py (Cython pure-Python mode; see setup.py).
cimport cython

cdef unsigned long long _XOR_STEP, _MASK32

from .state cimport LocalObject
from .store cimport Increments


cdef class CoalescedObject


cdef class StoreClient:
    cdef public object backend, vertex, client_id, faults, clock, issued
    cdef public object instance
    cdef public bint caching, no_ack_wait, exclusive, retransmit, callbacks
    cdef public long long seq, n_in_packet, blocking_ops, nonblocking_ops, cache_hits, abandoned
    cdef public unsigned long long packet_xor
    cdef public list pending, prefetchable, unacked
    cdef public dict callback_caches
    cdef public list coalesced, refused, late
    cdef public object unstorable
    cdef public dict noted

    cpdef begin_packet(self, object clock)
    @cython.locals(n=cython.longlong, xor_id=cython.ulonglong)
    cdef (long long, unsigned long long) _next_update(self, unsigned long long xor_base)
    cpdef Increments open_increments(self, object key, long long n, object default)
    @cython.locals(h=CoalescedObject)
    cdef list _take_pending(self)
    cpdef send(self, object op)
    cpdef flush(self, object waited=*)
    cpdef _acked(self, long long seq, object refused=*)
    cdef list _resend(self)


cdef class _Handle(LocalObject):
    cdef public StoreClient client
    cdef public object name, _absent
    cdef public bint per_flow, _write_mostly
    cdef public dict _keys
    cdef public unsigned long long _xor_base
    cdef public bint private
    cpdef key(self, object key)


cdef class RemoteObject(_Handle):
    pass


cdef class CoalescedObject(RemoteObject):
    cdef public dict _open
    @cython.locals(inc=Increments)
    cpdef incr(self, object by=*, object key=*)


cdef class CachedObject(_Handle):
    cpdef _slot_value(self, object key)
    cpdef _load(self, object key)
    cpdef _queue(self, str code, object key, tuple args)


cdef class CallbackObject(CachedObject):
    cpdef _load(self, object key)
    cpdef _queue(self, str code, object key, tuple args)
