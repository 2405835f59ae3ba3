"""Tests for chc.packet: header parsing, in-place rewrites, checksums.

Oracles are independent of the code under test: dpkt for real captures, and for
generated frames the generator itself plus a from-scratch checksum written here
(``ref_sum`` / ``ref_csum``), never packet.py's own helpers.
"""

from __future__ import annotations

import functools
import glob
import gzip
import os
import random
import struct
from dataclasses import dataclass, field

import dpkt
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from chc.packet import (
    FRAG_FIRST,
    FRAG_LATER,
    PROTO_ICMP,
    PROTO_ICMP6,
    PROTO_TCP,
    PROTO_UDP,
    Packet,
    describe_flow,
    flow_key,
    ip_bytes,
    ip_str,
    ipv4_header_ok,
    l4_checksum_ok,
    rewrite_dst,
    rewrite_src,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAN = os.path.join(ROOT, "traces", "pathspider", "lan-2012.pcap.gz")
GARBAGE = os.path.join(ROOT, "traces", "pathspider", "random-garbage.pcap")
ZEEK = sorted(glob.glob(os.path.join(ROOT, "traces", "zeek", "*.pcap")))


def hyp(max_examples: int) -> settings:
    """Hypothesis settings: no deadline (CI jitter), no example database in the repo."""
    return settings(max_examples=max_examples, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


# -- reference checksum (RFC 1071), written from scratch ------------------------

def ref_sum(buf) -> int:
    """One's-complement sum of 16-bit big-endian words (odd length: pad a zero
    byte).  Since 2**16 == 1 (mod 0xFFFF), the word sum is the big integer mod
    0xFFFF; the end-around-carry result is in 1..0xFFFF unless all bytes are 0."""
    buf = bytes(buf)
    if len(buf) & 1:
        buf += b"\0"
    if not any(buf):
        return 0
    return int.from_bytes(buf, "big") % 0xFFFF or 0xFFFF


def ref_sum_loop(buf) -> int:
    """The same sum, the textbook way (word by word, end-around carry)."""
    buf = bytes(buf)
    if len(buf) & 1:
        buf += b"\0"
    total = 0
    for i in range(0, len(buf), 2):
        total += (buf[i] << 8) | buf[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return total


def ref_csum(buf) -> int:
    return ~ref_sum(buf) & 0xFFFF


def pseudo(src: bytes, dst: bytes, proto: int, length: int) -> bytes:
    if len(src) == 4:
        return src + dst + bytes((0, proto)) + length.to_bytes(2, "big")
    return src + dst + length.to_bytes(4, "big") + bytes((0, 0, 0, proto))


def ref_l4_csum(src: bytes, dst: bytes, proto: int, seg: bytes) -> int:
    """Checksum a TCP/UDP/ICMPv6 segment must carry (its checksum field ignored)."""
    at = {PROTO_TCP: 16, PROTO_UDP: 6, PROTO_ICMP6: 2}[proto]
    seg = seg[:at] + b"\0\0" + seg[at + 2:]
    c = ref_csum(pseudo(src, dst, proto, len(seg)) + seg)
    if proto == PROTO_UDP and c == 0:
        c = 0xFFFF
    return c


def ref_ip4_csum(hdr: bytes) -> int:
    return ref_csum(hdr[:10] + b"\0\0" + hdr[12:])


def u16(buf, at: int) -> int:
    return (buf[at] << 8) | buf[at + 1]


def test_reference_checksum_matches_rfc1071_example():
    data = bytes.fromhex("0001f203f4f5f6f7")       # RFC 1071 section 3 example
    assert ref_sum(data) == ref_sum_loop(data) == 0xDDF2
    assert ref_csum(data) == 0x220D
    assert ref_sum(b"\xff\xff\xff\xff") == ref_sum_loop(b"\xff\xff\xff\xff") == 0xFFFF
    assert ref_sum(b"") == ref_sum(b"\0\0\0") == 0
    assert ref_sum(b"\x01") == 0x0100


@hyp(200)
@given(st.binary(max_size=200))
def test_reference_checksum_fast_equals_loop(buf):
    assert ref_sum(buf) == ref_sum_loop(buf)


# -- frame generator ----------------------------------------------------------

@dataclass
class Gen:
    """A generated frame and the fields the parser must report for it."""
    data: bytes
    l3: int
    ip_off: int
    ip_hdr_end: int        # end of the fixed IP header (+ IPv4 options)
    l4_off: int
    payload_off: int
    ip_end: int
    proto: int
    src: bytes
    dst: bytes
    sport: int = 0
    dport: int = 0
    flags: int = 0
    frag: int = 0
    udp_nocsum: bool = False
    payload: bytes = b""
    tags: int = 0
    cuts: list = field(default_factory=list)   # (frame length below which, word in the reason)

    def expect(self) -> dict:
        return {
            "l3": self.l3, "ip_off": self.ip_off, "l4_off": self.l4_off, "payload_off": self.payload_off,
            "ip_end": self.ip_end, "proto": self.proto, "src": self.src, "dst": self.dst,
            "sport": self.sport, "dport": self.dport, "flags": self.flags, "frag": self.frag,
            "malformed": None,
        }


def fields_of(pkt: Packet) -> dict:
    return {k: getattr(pkt, k) for k in (
        "l3", "ip_off", "l4_off", "payload_off", "ip_end", "proto", "src", "dst",
        "sport", "dport", "flags", "frag", "malformed")}


@st.composite
def frames(draw, l4s=("tcp", "udp", "icmp"), frags=("none", "df", "first", "atomic", "later"), families=(4, 6)):
    """Ethernet + 0..2 VLAN tags + IPv4 (options) / IPv6 (extension headers,
    optional fragment header) + TCP (options) / UDP / ICMP(v6), valid checksums."""
    family = draw(st.sampled_from(families))
    kind = draw(st.sampled_from(l4s))
    frag_kind = draw(st.sampled_from(frags))
    ntags = draw(st.integers(0, 2))
    l2 = bytearray(draw(st.binary(min_size=12, max_size=12)))
    for _ in range(ntags):
        l2 += struct.pack("!HH", draw(st.sampled_from((0x8100, 0x88A8, 0x9100))), draw(st.integers(0, 0xFFFF)))
    l2 += struct.pack("!H", 0x0800 if family == 4 else 0x86DD)
    ip_off = len(l2)
    alen = 4 if family == 4 else 16
    src = draw(st.binary(min_size=alen, max_size=alen))
    dst = draw(st.binary(min_size=alen, max_size=alen))
    payload = draw(st.binary(max_size=48))
    sport, dport = draw(st.integers(0, 0xFFFF)), draw(st.integers(0, 0xFFFF))

    # L4 segment (checksum field zero for now) and its header length
    flags = 0
    if kind == "tcp":
        proto = PROTO_TCP
        opts = draw(st.binary(min_size=0, max_size=40).map(lambda b: b[:len(b) // 4 * 4]))
        doff = 20 + len(opts)
        flags = draw(st.integers(0, 0xFF))
        off_byte = (doff // 4) << 4 | draw(st.integers(0, 15))      # low nibble: reserved / NS bit
        seg = struct.pack("!HHIIBBHHH", sport, dport, draw(st.integers(0, 2**32 - 1)),
                          draw(st.integers(0, 2**32 - 1)), off_byte, flags,
                          draw(st.integers(0, 0xFFFF)), 0, draw(st.integers(0, 0xFFFF))) + opts + payload
        hlen = doff
        need = doff
    elif kind == "udp":
        proto = PROTO_UDP
        seg = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
        hlen = need = 8
    else:
        proto = PROTO_ICMP if family == 4 else PROTO_ICMP6
        seg = struct.pack("!BBH", draw(st.integers(0, 255)), draw(st.integers(0, 255)), 0) + \
            draw(st.binary(min_size=4, max_size=4)) + payload
        hlen = 8 if family == 4 else 4
        need = 4
        sport = dport = 0
    udp_nocsum = kind == "udp" and family == 4 and draw(st.booleans())
    if proto == PROTO_ICMP:
        c = ref_csum(seg)
        seg = seg[:2] + c.to_bytes(2, "big") + seg[4:]
    elif not udp_nocsum:
        c = ref_l4_csum(src, dst, proto, seg)
        at = {PROTO_TCP: 16, PROTO_UDP: 6, PROTO_ICMP6: 2}[proto]
        seg = seg[:at] + c.to_bytes(2, "big") + seg[at + 2:]

    frag = 0
    later = frag_kind == "later"
    if family == 4:
        opts = draw(st.binary(max_size=40).map(lambda b: b[:len(b) // 4 * 4]))
        ihl = 20 + len(opts)
        fl = {"none": 0, "df": 0x4000, "first": 0x2000, "atomic": 0,
              "later": draw(st.integers(1, 0x1FFF)) | (0x2000 if draw(st.booleans()) else 0)}[frag_kind]
        frag = FRAG_LATER if later else FRAG_FIRST if frag_kind == "first" else 0
        hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl // 4, draw(st.integers(0, 255)), ihl + len(seg),
                          draw(st.integers(0, 0xFFFF)), fl, draw(st.integers(0, 255)), proto, 0, src, dst) + opts
        hdr = hdr[:10] + ref_ip4_csum(hdr).to_bytes(2, "big") + hdr[12:]
        l3 = hdr
        ip_hdr_end = ip_off + ihl
        l4_off = ip_hdr_end
        cuts = [(ip_off + 20, "IPv4"), (ip_hdr_end, "IPv4")]
    else:
        exts = []
        for _ in range(draw(st.integers(0, 2))):
            etype = draw(st.sampled_from((0, 60, 43)))       # hop-by-hop, destination options, routing
            elen = draw(st.integers(0, 3))
            exts.append((etype, bytes((elen,)) + draw(st.binary(min_size=(elen + 1) * 8 - 2,
                                                                max_size=(elen + 1) * 8 - 2))))
        if frag_kind != "none" and frag_kind != "df":
            offset = draw(st.integers(1, 0x1FFF)) if later else 0
            m = 1 if frag_kind == "first" else 0 if frag_kind == "atomic" else int(draw(st.booleans()))
            exts.append((44, b"\0" + struct.pack("!HI", offset << 3 | m, draw(st.integers(0, 2**32 - 1)))))
            frag = FRAG_LATER if later else FRAG_FIRST if frag_kind == "first" else 0
        chain = b""
        cuts = [(ip_off + 40, "IPv6")]
        for i, (_etype, body) in enumerate(exts):
            nxt = exts[i + 1][0] if i + 1 < len(exts) else proto
            chain += bytes((nxt,)) + body
            cuts.append((ip_off + 40 + len(chain), "IPv6 extension"))
        first = exts[0][0] if exts else proto
        l3 = struct.pack("!IHBB16s16s", 6 << 28 | draw(st.integers(0, 2**28 - 1)), len(chain) + len(seg),
                         first, draw(st.integers(0, 255)), src, dst) + chain
        ip_hdr_end = ip_off + 40
        l4_off = ip_off + len(l3)

    trailer = draw(st.binary(max_size=12))         # Ethernet padding / FCS: not part of the datagram
    data = bytes(l2) + l3 + seg + trailer
    ip_end = len(data) - len(trailer)
    name = {PROTO_TCP: "TCP", PROTO_UDP: "UDP"}.get(proto, "ICMP")
    g = Gen(data=data, l3=family, ip_off=ip_off, ip_hdr_end=ip_hdr_end, l4_off=l4_off,
            payload_off=l4_off if later else l4_off + hlen, ip_end=ip_end, proto=proto, src=src, dst=dst,
            sport=0 if later else sport, dport=0 if later else dport, flags=0 if later else flags, frag=frag,
            udp_nocsum=udp_nocsum, payload=seg if later else seg[hlen:], tags=ntags)
    g.cuts = [(14, "ethernet")] + [(14 + 4 * (i + 1), "802.1Q") for i in range(ntags)] + cuts
    if not later:
        g.cuts.append((l4_off + need, name))
    return g


# -- 3. generated frames -------------------------------------------------------

@hyp(400)
@given(frames())
def test_generated_frames_parse_exactly(g):
    pkt = Packet(g.data, ts=7, index=3)
    assert fields_of(pkt) == g.expect()
    assert bytes(pkt.payload) == g.payload
    assert pkt.flow == (g.src, g.dst, g.sport, g.dport, g.proto)
    assert pkt.is_ip and (pkt.ts, pkt.index) == (7, 3)
    # bytearray / memoryview-free bytes input parse the same
    assert fields_of(Packet(bytearray(g.data))) == g.expect()
    # packet.py's own verifiers agree with the generator's checksums
    if g.l3 == 4:
        assert ipv4_header_ok(pkt) is True
    ok = l4_checksum_ok(pkt)
    if g.frag or g.proto not in (PROTO_TCP, PROTO_UDP) or g.udp_nocsum:
        assert ok is None
    else:
        assert ok is True


@hyp(400)
@given(frames(), st.data())
def test_truncated_frames_never_raise_and_are_malformed_where_cut(g, data):
    n = data.draw(st.integers(0, len(g.data)))
    pkt = Packet(g.data[:n])
    # the header that is cut decides: the first required prefix longer than n
    cut = next((word for need, word in g.cuts if n < need), None)
    if cut is not None:
        assert pkt.malformed is not None, (n, g.cuts)
        assert cut in pkt.malformed, (n, cut, pkt.malformed)
        return
    exp = g.expect()
    exp["ip_end"] = min(g.ip_end, n)
    if g.proto == PROTO_ICMP and g.frag != FRAG_LATER and exp["ip_end"] < g.l4_off + 8:
        exp["payload_off"] = g.l4_off + 4     # ICMPv4 with only type/code/checksum present
    assert fields_of(pkt) == exp
    assert bytes(pkt.payload) == g.data[exp["payload_off"]:exp["ip_end"]]


def test_handmade_truncations():
    assert Packet(b"").malformed == "short ethernet header"
    assert Packet(b"\0" * 13).malformed == "short ethernet header"
    assert Packet(b"\0" * 12 + b"\x81\x00\0").malformed == "short 802.1Q tag"
    assert Packet(b"\0" * 12 + b"\x08\x00" + b"\x45" * 19).malformed == "short IPv4 header"
    assert Packet(b"\0" * 12 + b"\x86\xdd" + b"\x60" * 39).malformed == "short IPv6 header"
    nonip = Packet(b"\0" * 12 + b"\x08\x06" + b"\0" * 28)          # ARP
    assert (nonip.l3, nonip.malformed, nonip.is_ip, nonip.src) == (0, None, False, b"")
    # IPv4 version 5 / IHL 4 / total length < IHL
    assert Packet(b"\0" * 12 + b"\x08\x00\x55" + b"\0" * 40).malformed == "bad IPv4 version/IHL"
    assert Packet(b"\0" * 12 + b"\x08\x00\x44" + b"\0" * 40).malformed == "bad IPv4 version/IHL"
    assert Packet(b"\0" * 12 + b"\x08\x00\x45\x00\x00\x13" + b"\0" * 40).malformed == "bad IPv4 length"
    assert Packet(b"\0" * 12 + b"\x86\xdd\x40" + b"\0" * 60).malformed == "bad IPv6 version"


def _ip6(nxt: int, body: bytes, plen: int | None = None) -> bytes:
    return (b"\0" * 12 + b"\x86\xdd" + struct.pack("!IHBB16s16s", 6 << 28, len(body) if plen is None else plen,
                                                   nxt, 64, b"\x01" * 16, b"\x02" * 16) + body)


def test_ipv6_extension_header_longer_than_datagram_is_malformed():
    # hop-by-hop header claims 11 * 8 bytes but the datagram holds only 8
    pkt = Packet(_ip6(0, bytes((59, 10)) + b"\0" * 6))
    assert pkt.malformed == "short IPv6 extension header"
    # same header, no next header (59), datagram long enough: fine, empty payload
    pkt = Packet(_ip6(0, bytes((59, 0)) + b"\0" * 6))
    assert (pkt.malformed, pkt.proto, pkt.l4_off, pkt.payload_off, pkt.ip_end) == (None, 59, 62, 62, 62)


def test_ipv6_fragment_header_kinds():
    udp = struct.pack("!HHHH", 1000, 53, 8, 0)
    first = Packet(_ip6(44, bytes((17, 0)) + struct.pack("!HI", 0x0001, 9) + udp))
    assert (first.frag, first.proto, first.sport, first.dport, first.l4_off) == (FRAG_FIRST, 17, 1000, 53, 62)
    atomic = Packet(_ip6(44, bytes((17, 0)) + struct.pack("!HI", 0x0000, 9) + udp))   # RFC 6946
    assert (atomic.frag, atomic.proto, atomic.sport, atomic.dport) == (0, 17, 1000, 53)
    later = Packet(_ip6(44, bytes((17, 0)) + struct.pack("!HI", 0x0008, 9) + udp))
    assert (later.frag, later.proto, later.sport, later.dport, later.l4_off, later.payload_off) == \
        (FRAG_LATER, 17, 0, 0, 62, 62)


def test_ipv6_authentication_header_length_in_4_byte_units():
    tcp = struct.pack("!HHIIBBHHH", 443, 5000, 1, 2, 0x50, 0x12, 100, 0, 0) + b"data"
    ah = bytes((6, 4, 0, 0)) + b"\x11" * 20            # payload length 4: (4 + 2) * 4 = 24 bytes
    pkt = Packet(_ip6(51, ah + tcp))
    assert (pkt.malformed, pkt.proto, pkt.l4_off, pkt.payload_off) == (None, PROTO_TCP, 78, 98)
    assert (pkt.sport, pkt.dport, pkt.flags, bytes(pkt.payload)) == (443, 5000, 0x12, b"data")


# -- 1. real frames against dpkt ---------------------------------------------------

@functools.cache
def read_pcap(path: str) -> tuple[tuple[int, bytes], ...]:
    with (gzip.open(path) if path.endswith(".gz") else open(path, "rb")) as f:
        reader = dpkt.pcap.Reader(f)
        assert reader.datalink() == dpkt.pcap.DLT_EN10MB
        return tuple((i, bytes(buf)) for i, (_ts, buf) in enumerate(reader))


def compare_with_dpkt(frames) -> dict:
    counts = {"tcp": 0, "udp": 0, "non_ip": 0, "other_ip": 0}
    for i, buf in frames:
        pkt = Packet(buf, index=i)
        eth = dpkt.ethernet.Ethernet(buf)
        ip = eth.data
        if not isinstance(ip, dpkt.ip.IP | dpkt.ip6.IP6):
            counts["non_ip"] += 1
            assert pkt.l3 == 0, i
            continue
        ip_off = 14 + 4 * len(getattr(eth, "vlan_tags", ()))
        assert (pkt.ip_off, pkt.src, pkt.dst, pkt.proto) == (ip_off, ip.src, ip.dst, ip.p), i
        if isinstance(ip, dpkt.ip.IP):
            assert pkt.l3 == 4, i
            l4_off = ip_off + ip.hl * 4
            assert pkt.ip_end == min(ip_off + ip.len, len(buf)), i
            assert pkt.frag == (FRAG_LATER if ip.offset else FRAG_FIRST if ip.mf else 0), i
        else:
            assert pkt.l3 == 6, i
            l4_off = ip_off + 40 + sum(len(bytes(e)) for e in ip.all_extension_headers)
            assert pkt.ip_end == min(ip_off + 40 + ip.plen, len(buf)), i
        assert pkt.malformed is None, (i, pkt.malformed)
        assert pkt.l4_off == l4_off, i
        l4 = ip.data
        if isinstance(l4, dpkt.tcp.TCP):
            counts["tcp"] += 1
            assert (pkt.sport, pkt.dport, pkt.flags) == (l4.sport, l4.dport, l4.flags & 0xFF), i
            assert pkt.payload_off == l4_off + l4.off * 4, i
            assert bytes(pkt.payload) == bytes(l4.data), i
        elif isinstance(l4, dpkt.udp.UDP):
            counts["udp"] += 1
            assert (pkt.sport, pkt.dport, pkt.flags) == (l4.sport, l4.dport, 0), i
            assert pkt.payload_off == l4_off + 8, i
            assert bytes(pkt.payload) == bytes(l4.data), i
        else:
            counts["other_ip"] += 1
            assert (pkt.sport, pkt.dport) == (0, 0), i
            if isinstance(l4, dpkt.icmp.ICMP):
                assert pkt.proto == PROTO_ICMP and pkt.payload_off == l4_off + 8, i
                assert bytes(pkt.payload) == bytes(l4.data)[4:], i      # dpkt's ICMP data holds id/seq
    ours = {"tcp": 0, "udp": 0, "non_ip": 0}
    for _i, buf in frames:
        pkt = Packet(buf)
        if pkt.l3 == 0:
            ours["non_ip"] += 1
        elif pkt.is_ip and pkt.frag != FRAG_LATER and pkt.proto in (PROTO_TCP, PROTO_UDP):
            ours["tcp" if pkt.proto == PROTO_TCP else "udp"] += 1
    assert ours == {k: counts[k] for k in ours}
    return counts


def test_lan_2012_first_5000_match_dpkt():
    frames = read_pcap(LAN)
    assert len(frames) == 62781
    counts = compare_with_dpkt(frames[:5000])
    assert counts == {"tcp": 4877, "udp": 63, "non_ip": 52, "other_ip": 8}


def test_lan_2012_all_frames_parse():
    kinds = {}
    for i, buf in read_pcap(LAN):
        pkt = Packet(buf, index=i)
        key = (pkt.l3, pkt.proto, pkt.malformed, pkt.frag)
        kinds[key] = kinds.get(key, 0) + 1
    assert kinds == {(4, PROTO_TCP, None, 0): 60873, (4, PROTO_UDP, None, 0): 1031, (0, 0, None, 0): 743,
                     (4, PROTO_ICMP, None, 0): 105, (4, 2, None, 0): 29}


@pytest.mark.parametrize("path", ZEEK, ids=[os.path.basename(p) for p in ZEEK])
def test_zeek_traces_match_dpkt(path):
    frames = read_pcap(path)
    counts = compare_with_dpkt(frames)
    assert sum(counts.values()) == len(frames) > 0


def test_zeek_trace_totals():
    assert len(ZEEK) == 13
    total = {"tcp": 0, "udp": 0, "non_ip": 0, "other_ip": 0}
    for path in ZEEK:
        for k, v in compare_with_dpkt(read_pcap(path)).items():
            total[k] += v
    assert total == {"tcp": 4048, "udp": 48, "non_ip": 10, "other_ip": 0}


# -- 2. garbage -----------------------------------------------------------------

def check_consistent(pkt: Packet) -> str:
    """Whatever the bytes, a parse is malformed, non-IP, or self-consistent."""
    data = pkt.data
    n = len(data)
    if pkt.malformed is not None:
        assert isinstance(pkt.malformed, str) and pkt.malformed
        assert not pkt.is_ip
        return "malformed"
    etype, off = u16(data, 12), 14
    while etype in (0x8100, 0x88A8, 0x9100):
        etype, off = u16(data, off + 2), off + 4
    if pkt.l3 == 0:
        assert etype not in (0x0800, 0x86DD)
        assert (pkt.src, pkt.dst, pkt.proto, pkt.sport, pkt.dport) == (b"", b"", 0, 0, 0)
        return "non_ip"
    assert pkt.is_ip and pkt.ip_off == off
    assert (pkt.l3, etype) in ((4, 0x0800), (6, 0x86DD))
    assert 14 <= pkt.ip_off < pkt.l4_off <= pkt.payload_off <= pkt.ip_end <= n
    assert data[pkt.ip_off] >> 4 == pkt.l3
    if pkt.l3 == 4:
        assert pkt.l4_off == pkt.ip_off + (data[pkt.ip_off] & 15) * 4
        assert (pkt.src, pkt.dst, pkt.proto) == (data[off + 12:off + 16], data[off + 16:off + 20], data[off + 9])
        assert pkt.ip_end == min(n, off + u16(data, off + 2))
    else:
        assert pkt.l4_off >= pkt.ip_off + 40
        assert (pkt.src, pkt.dst) == (data[off + 8:off + 24], data[off + 24:off + 40])
        assert pkt.ip_end == min(n, off + 40 + u16(data, off + 4))
    l4 = pkt.l4_off
    if pkt.frag == FRAG_LATER:
        assert (pkt.payload_off, pkt.sport, pkt.dport, pkt.flags) == (l4, 0, 0, 0)
    elif pkt.proto in (PROTO_TCP, PROTO_UDP):
        assert (pkt.sport, pkt.dport) == (u16(data, l4), u16(data, l4 + 2))
        if pkt.proto == PROTO_TCP:
            assert pkt.payload_off == l4 + (data[l4 + 12] >> 4) * 4 >= l4 + 20
            assert pkt.flags == data[l4 + 13]
        else:
            assert pkt.payload_off == l4 + 8
    assert len(pkt.payload) == pkt.ip_end - pkt.payload_off
    return "ip"


def test_random_garbage_never_raises():
    frames = read_pcap(GARBAGE)
    assert len(frames) == 5000
    kinds = {"malformed": 0, "non_ip": 0, "ip": 0}
    for i, buf in frames:
        kinds[check_consistent(Packet(buf, index=i))] += 1
    assert sum(kinds.values()) == 5000
    assert kinds["ip"] == 0          # random ethertypes: no frame claims IPv4 / IPv6


@pytest.mark.parametrize("prefix", [b"\x08\x00\x45", b"\x08\x00\x40", b"\x86\xdd\x60",
                                    b"\x81\x00\x00\x01\x08\x00\x46", b"\x88\xa8\x00\x01\x81\x00\x00\x02\x86\xdd\x60"])
def test_random_garbage_forced_ip_never_raises(prefix):
    """The garbage frames with an IP ethertype (and version) spliced in, so that
    the random bytes go through the IPv4 / IPv6 / L4 parsers."""
    kinds = {"malformed": 0, "non_ip": 0, "ip": 0}
    rng = random.Random(len(prefix))
    for i, buf in read_pcap(GARBAGE):
        b = bytearray(buf[:12]) + prefix + buf[12 + len(prefix):]
        if rng.random() < 0.5:          # plausible lengths so that L4 parsing is reached too
            ip = len(prefix) + 11
            if b[ip] >> 4 == 4 and len(b) >= ip + 20:
                b[ip] = 0x40 | max(5, b[ip] & 15)
                b[ip + 2:ip + 4] = (len(b) - ip).to_bytes(2, "big")
                if rng.random() < 0.8:
                    b[ip + 6:ip + 8] = b"\x40\x00"       # DF, offset 0: the L4 header is parsed
                b[ip + 9] = rng.choice((1, 6, 17))
            elif b[ip] >> 4 == 6 and len(b) >= ip + 40:
                b[ip + 4:ip + 6] = max(0, len(b) - ip - 40).to_bytes(2, "big")
                b[ip + 6] = rng.choice((0, 6, 17, 43, 44, 58, 60))
        kinds[check_consistent(Packet(bytes(b), index=i))] += 1
    assert kinds["non_ip"] == 0
    assert kinds["ip"] > 0 and kinds["malformed"] > 0


@hyp(300)
@given(st.sampled_from([b"", b"\x08\x00", b"\x86\xdd", b"\x81\x00\x00\x00\x08\x00", b"\x08\x00\x45",
                        b"\x86\xdd\x60\x00\x00\x00\x00\x14\x06"]),
       st.binary(max_size=120))
def test_random_bytes_never_raise(prefix, tail):
    pkt = Packet(b"\xaa" * 12 + prefix + tail)
    check_consistent(pkt)


# -- 4. rewrites and checksums ---------------------------------------------------

def verify_rewritten(pkt: Packet, g: Gen, before: bytes, patched: set[int]) -> None:
    """Checksums of the rewritten frame against a from-scratch recomputation."""
    data = bytes(pkt.data)
    assert len(data) == len(before)
    ip = g.ip_off
    seg = data[g.l4_off:g.ip_end]
    changed = {i for i in range(len(data)) if data[i] != before[i]}
    if g.l3 == 4:
        ihl = (data[ip] & 15) * 4
        assert u16(data, ip + 10) == ref_ip4_csum(data[ip:ip + ihl])
        assert ref_sum(data[ip:ip + ihl]) == 0xFFFF
        patched = patched | {ip + 10, ip + 11}
        assert (pkt.src, pkt.dst) == (data[ip + 12:ip + 16], data[ip + 16:ip + 20])
    else:
        assert (pkt.src, pkt.dst) == (data[ip + 8:ip + 24], data[ip + 24:ip + 40])
    if g.frag == FRAG_LATER:
        assert seg == before[g.l4_off:g.ip_end]
    elif g.proto == PROTO_ICMP:
        assert seg == before[g.l4_off:g.ip_end]                       # no pseudo-header in ICMPv4
        assert ref_sum(seg) == 0xFFFF
    else:
        at = g.l4_off + {PROTO_TCP: 16, PROTO_UDP: 6, PROTO_ICMP6: 2}[g.proto]
        patched = patched | {at, at + 1}
        if g.udp_nocsum:
            assert u16(data, at) == 0
        else:
            assert u16(data, at) == ref_l4_csum(pkt.src, pkt.dst, g.proto, seg)
            assert ref_sum(pseudo(pkt.src, pkt.dst, g.proto, len(seg)) + seg) == 0xFFFF
        if g.proto in (PROTO_TCP, PROTO_UDP):
            assert (pkt.sport, pkt.dport) == (u16(data, g.l4_off), u16(data, g.l4_off + 2))
    assert changed <= patched
    # a fresh parse of the rewritten bytes sees what the packet object says
    assert fields_of(Packet(data)) == fields_of(pkt)
    if g.l3 == 4:
        assert ipv4_header_ok(pkt)
    if not g.frag and g.proto in (PROTO_TCP, PROTO_UDP) and not g.udp_nocsum:
        assert l4_checksum_ok(pkt) is True


def addr_for(family: int):
    n = 4 if family == 4 else 16
    return st.binary(min_size=n, max_size=n)


@st.composite
def rewrite_cases(draw, **kw):
    g = draw(frames(**kw))
    ops = draw(st.lists(st.tuples(st.sampled_from(("src", "dst")), addr_for(g.l3),
                                  st.none() | st.integers(0, 0xFFFF)), min_size=1, max_size=3))
    return g, ops


def apply_ops(pkt: Packet, g: Gen, ops) -> set[int]:
    patched = set()
    for which, addr, port in ops:
        a_at = g.ip_off + {(4, "src"): 12, (4, "dst"): 16, (6, "src"): 8, (6, "dst"): 24}[(g.l3, which)]
        p_at = g.l4_off + (0 if which == "src" else 2)
        old_ports = (pkt.sport, pkt.dport)
        (rewrite_src if which == "src" else rewrite_dst)(pkt, addr, port)
        patched |= set(range(a_at, a_at + len(addr)))
        assert getattr(pkt, which) == addr
        assert pkt.data[a_at:a_at + len(addr)] == addr
        has_ports = g.proto in (PROTO_TCP, PROTO_UDP) and g.frag != FRAG_LATER
        if port is not None and has_ports:
            patched |= {p_at, p_at + 1}
            assert getattr(pkt, which[0] + "port") == port == u16(pkt.data, p_at)
        else:
            assert (pkt.sport, pkt.dport) == old_ports
    return patched


@hyp(400)
@given(rewrite_cases())
def test_rewrite_keeps_checksums_valid(case):
    g, ops = case
    pkt = Packet(g.data)
    patched = apply_ops(pkt, g, ops)
    assert isinstance(pkt.data, bytearray)
    verify_rewritten(pkt, g, g.data, patched)


@hyp(150)
@given(rewrite_cases(l4s=("udp",), frags=("none",), families=(4,)).filter(lambda c: c[0].udp_nocsum))
def test_rewrite_udp4_without_checksum_stays_zero(case):
    g, ops = case
    pkt = Packet(g.data)
    apply_ops(pkt, g, ops)
    assert u16(pkt.data, g.l4_off + 6) == 0
    assert l4_checksum_ok(pkt) is None


@hyp(150)
@given(frames(l4s=("udp",), frags=("none", "df", "atomic")), st.data())
def test_rewrite_udp_checksum_that_would_be_zero_is_ffff(g, data):
    assume(not g.udp_nocsum)
    which = data.draw(st.sampled_from(("src", "dst")))
    addr = data.draw(addr_for(g.l3))
    # choose the port so that the from-scratch sum of the rewritten datagram is 0xFFFF
    seg = bytearray(g.data[g.l4_off:g.ip_end])
    seg[6:8] = b"\0\0"
    p_at = 0 if which == "src" else 2
    seg[p_at:p_at + 2] = b"\0\0"
    src, dst = (addr, g.dst) if which == "src" else (g.src, addr)
    rest = ref_sum(pseudo(src, dst, PROTO_UDP, len(seg)) + bytes(seg))
    port = 0xFFFF - rest
    pkt = Packet(g.data)
    (rewrite_src if which == "src" else rewrite_dst)(pkt, addr, port)
    new_seg = bytes(pkt.data[g.l4_off:g.ip_end])
    assert u16(new_seg, p_at) == port
    assert ref_sum(pseudo(src, dst, PROTO_UDP, len(seg)) + new_seg[:6] + b"\0\0" + new_seg[8:]) == 0xFFFF
    assert u16(pkt.data, g.l4_off + 6) == 0xFFFF
    assert l4_checksum_ok(pkt) is True


def test_rewrite_udp_checksum_zero_case_fixed_example():
    src, dst = ip_bytes("10.0.0.1"), ip_bytes("10.0.0.2")
    payload = b"hello"
    udp = struct.pack("!HHHH", 1234, 53, 8 + len(payload), 0) + payload
    c = ref_l4_csum(src, dst, PROTO_UDP, udp)
    udp = udp[:6] + c.to_bytes(2, "big") + udp[8:]
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, PROTO_UDP, 0, src, dst)
    hdr = hdr[:10] + ref_ip4_csum(hdr).to_bytes(2, "big") + hdr[12:]
    frame = b"\x02" * 12 + b"\x08\x00" + hdr + udp
    new_src = ip_bytes("192.168.7.9")
    rest = ref_sum(pseudo(new_src, dst, PROTO_UDP, len(udp)) + b"\0\0" + udp[2:6] + b"\0\0" + udp[8:])
    pkt = Packet(frame)
    rewrite_src(pkt, new_src, 0xFFFF - rest)
    assert u16(pkt.data, 34 + 6) == 0xFFFF
    assert ip_str(pkt.src) == "192.168.7.9" and pkt.sport == 0xFFFF - rest
    assert l4_checksum_ok(pkt) is True and ipv4_header_ok(pkt) is True


def test_rewrite_icmpv6_updates_its_pseudo_header_checksum():
    body = struct.pack("!BBHHH", 128, 0, 0, 7, 1) + b"ping"           # echo request
    src, dst = ip_bytes("2001:db8::1"), ip_bytes("2001:db8::2")
    body = body[:2] + ref_l4_csum(src, dst, PROTO_ICMP6, body).to_bytes(2, "big") + body[4:]
    frame = b"\x02" * 12 + b"\x86\xdd" + struct.pack("!IHBB16s16s", 6 << 28, len(body), 58, 64, src, dst) + body
    pkt = Packet(frame)
    new = ip_bytes("2001:db8::beef")
    rewrite_dst(pkt, new, 80)
    assert (pkt.dst, pkt.dport) == (new, 0)
    assert u16(pkt.data, 54 + 2) == ref_l4_csum(src, new, PROTO_ICMP6, bytes(pkt.data[54:]))


def test_rewrite_real_lan_2012_frames():
    rng = random.Random(2019)
    done = 0
    for i, buf in read_pcap(LAN):
        pkt = Packet(buf, index=i)
        if pkt.l3 != 4 or pkt.proto not in (PROTO_TCP, PROTO_UDP) or pkt.frag or pkt.malformed:
            continue
        ip, l4, end = pkt.ip_off, pkt.l4_off, pkt.ip_end
        ihl = l4 - ip
        seg = buf[l4:end]
        if ref_sum(buf[ip:ip + ihl]) != 0xFFFF:
            continue
        c_at = 16 if pkt.proto == PROTO_TCP else 6
        nocsum = pkt.proto == PROTO_UDP and u16(seg, 6) == 0
        if not nocsum and ref_sum(pseudo(pkt.src, pkt.dst, pkt.proto, len(seg)) + seg) != 0xFFFF:
            continue
        rewrite_src(pkt, rng.randbytes(4), rng.randrange(0x10000) if rng.random() < 0.8 else None)
        rewrite_dst(pkt, rng.randbytes(4), rng.randrange(0x10000) if rng.random() < 0.8 else None)
        data = pkt.data
        assert u16(data, ip + 10) == ref_ip4_csum(data[ip:ip + ihl]), i
        seg = bytes(data[l4:end])
        if nocsum:
            assert u16(seg, 6) == 0, i
        else:
            assert u16(seg, c_at) == ref_l4_csum(pkt.src, pkt.dst, pkt.proto, seg), i
        assert (pkt.sport, pkt.dport) == (u16(seg, 0), u16(seg, 2)), i
        assert data[:ip + 12] == buf[:ip + 10] + data[ip + 10:ip + 12], i
        assert data[l4 + 4:] == buf[l4 + 4:l4 + c_at] + data[l4 + c_at:l4 + c_at + 2] + buf[l4 + c_at + 2:], i
        done += 1
    assert done == 61904


# -- 5. copy -----------------------------------------------------------------

@hyp(100)
@given(rewrite_cases(frags=("none",)), st.booleans())
def test_copy_is_independent(case, as_bytearray):
    g, ops = case
    orig = Packet(bytearray(g.data) if as_bytearray else g.data, ts=11, index=5)
    orig.clock, orig.xor, orig.marks = 99, 0xDEADBEEF, 3
    before = fields_of(orig)
    c = orig.copy()
    assert fields_of(c) == before
    assert (c.ts, c.index, c.clock, c.xor, c.marks) == (11, 5, 99, 0xDEADBEEF, 3)
    assert bytes(c.data) == g.data
    apply_ops(c, g, ops)                           # rewriting the copy ...
    assert bytes(orig.data) == g.data              # ... leaves the original alone
    assert fields_of(orig) == before
    c2 = orig.copy()
    apply_ops(orig, g, ops)                        # and the other way round
    assert bytes(c2.data) == g.data
    assert fields_of(c2) == before
    assert bytes(orig.data) == bytes(c.data)       # same rewrites, same bytes


# -- 6. rewrites that must be refused -----------------------------------------------

@pytest.mark.parametrize("frame", [
    b"\x02" * 12 + b"\x08\x06" + b"\0" * 28,                             # ARP: not IP
    b"\x02" * 10,                                                        # short Ethernet
    b"\x02" * 12 + b"\x08\x00" + b"\x45" + b"\0" * 10,                   # short IPv4
    b"\x02" * 12 + b"\x08\x00" + struct.pack("!BBHHHBBH4s4s", 0x45, 0, 30, 0, 0, 64, 6, 0,
                                               b"\1" * 4, b"\2" * 4) + b"\0" * 10,   # short TCP
    b"\x02" * 12 + b"\x86\xdd" + b"\x60" + b"\0" * 20,                   # short IPv6
])
def test_rewrite_refuses_malformed_and_non_ip(frame):
    for data in (frame, bytearray(frame)):
        pkt = Packet(data)
        assert not pkt.is_ip
        for fn in (rewrite_src, rewrite_dst):
            with pytest.raises(ValueError):
                fn(pkt, b"\x0a\0\0\x01", 80)
            with pytest.raises(ValueError):
                fn(pkt, b"\x0a" * 16)
        assert bytes(pkt.data) == frame


def test_rewrite_refuses_address_family_mismatch():
    g_src, g_dst = ip_bytes("10.1.1.1"), ip_bytes("10.1.1.2")
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 0, 0, 64, PROTO_UDP, 0, g_src, g_dst)
    frame = b"\x02" * 12 + b"\x08\x00" + hdr + struct.pack("!HHHH", 1, 2, 8, 0)
    pkt = Packet(frame)
    assert pkt.is_ip
    with pytest.raises(ValueError):
        rewrite_src(pkt, ip_bytes("::1"), 5)
    with pytest.raises(ValueError):
        rewrite_dst(pkt, b"\1\2\3", 5)
    assert bytes(pkt.data) == frame and (pkt.src, pkt.sport) == (g_src, 1)


def test_a_rewrite_renews_the_cached_flow_key():
    """The flow key is kept on the packet; a rewrite changes the 5-tuple, so the
    key (which keys per-flow state and partitions traffic) must follow it."""
    src, dst = ip_bytes("10.0.0.1"), ip_bytes("10.0.0.2")
    udp = struct.pack("!HHHH", 1234, 53, 8, 0)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 1, 0, 64, PROTO_UDP, 0, src, dst)
    pkt = Packet(b"\x02" * 12 + b"\x08\x00" + hdr + udp)
    assert describe_flow(flow_key(pkt)) == "10.0.0.1:1234 <-> 10.0.0.2:53 udp"
    rewrite_src(pkt, ip_bytes("198.51.100.7"), 40000)
    assert describe_flow(flow_key(pkt)) == "10.0.0.2:53 <-> 198.51.100.7:40000 udp"
    assert flow_key(pkt) == flow_key(Packet(bytes(pkt.data)))
