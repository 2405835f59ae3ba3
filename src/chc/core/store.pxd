# Types for the compiled build of store.py (Cython pure-Python mode; see setup.py).

cdef class Increments:
    cdef public object total
    cdef public list clocks, ns, amounts, xor_ids
    cpdef add(self, object clock, object n, object by, object xor_id)


cdef class Op:
    cdef public object code, key, args, client, instance, tag, default
    cdef public long long seq
    cdef public unsigned long long xor_id
