# Types for the compiled build of _common.py (Cython pure-Python mode; see setup.py).

cdef class Prefixes:
    cdef public list nets
    cdef dict _memo
