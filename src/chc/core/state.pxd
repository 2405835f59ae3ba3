# Types for the compiled build of state.py (Cython pure-Python mode; see setup.py).

cdef class LocalObject:
    cdef public object decl, config, _init, recorder
    cdef public dict values
    cdef public bint _init_mutable, _blind
