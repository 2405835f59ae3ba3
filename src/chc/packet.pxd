# Types for the compiled build of packet.py (Cython, pure-Python mode): the same
# source runs interpreted when the extension is not built (see setup.py).
cimport cython

cdef class Packet:
    cdef public object data, ts, index
    cdef public int l3, ip_off, l4_off, payload_off, ip_end
    cdef public int proto, sport, dport, flags, frag
    cdef public object src, dst, malformed
    cdef public object clock, xor, marks, vt, flow_key
    cpdef Packet copy(self)

@cython.locals(src=bytes, dst=bytes, sport=int, dport=int)
cpdef bytes flow_key(Packet pkt)
cpdef void parse(Packet pkt)
cdef void _reset(Packet pkt)
cdef void _parse_ipv4(Packet pkt, object data, int off, int n)
cdef void _parse_ipv6(Packet pkt, object data, int off, int n)
cdef void _parse_l4(Packet pkt, object data, int l4, int end)
cdef int _csum_update(long old_csum, long old_sum, long new_sum, long words) noexcept
cdef int _port_at(Packet pkt, int offset) noexcept
cdef int _csum_at(Packet pkt, bint icmp6) except? -2
cdef bytearray _writable(Packet pkt, bytes ip)
cdef void _rewrite(Packet pkt, bytearray data, int addr_at, int port_at, bytes ip, long port) except *
cpdef void rewrite_src(Packet pkt, bytes ip, object port=*) except *
cpdef void rewrite_dst(Packet pkt, bytes ip, object port=*) except *
