# Types for the compiled build of store.py (Cython pure-Python mode; see setup.py).

cdef class Increments:
    cdef public object total
    cdef public list tags, amounts, xor_ids, commits
    cpdef add(self, object clock, object n, object by, unsigned long long xor_id)


cdef class Op:
    cdef public object code, key, args, client, instance, tag, default
    cdef public long long seq
    cdef public unsigned long long xor_id
