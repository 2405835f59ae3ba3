"""Tests for chc.capture: pcap / pcapng reading and writing."""

from __future__ import annotations

import gzip
import logging
import os
import struct
import tempfile
from pathlib import Path

import dpkt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chc.capture import (
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_RAW,
    MAX_CAPLEN,
    CaptureError,
    CaptureReader,
    CaptureWriter,
    open_capture,
)

TRACES = Path(__file__).resolve().parent.parent / "traces"

# Counted independently with Wireshark's capinfos.
TRACE_COUNTS = {
    "pathspider/lan-2012.pcap.gz": 62781,
    "pathspider/random-garbage.pcap": 5000,
    "scans/nmap-syn-scan.pcap": 1242,
    "zeek/echo-connections.pcap.gz": 82582,
    "zeek/ftp_bruteforce.pcap": 606,
    "zeek/ftp_ipv4.pcap": 95,
    "zeek/ftp_retr.pcap": 67,
    "zeek/http_bro.org.pcap": 751,
    "zeek/http_get.pcap": 14,
    "zeek/irc-basic.pcap": 34,
    "zeek/irc-more-commands.pcap": 145,
    "zeek/pe_pe.pcap": 535,
    "zeek/rfb_vnc-scanner.pcap": 20,
    "zeek/smb_smb2.pcap": 1178,
    "zeek/ssh_single-conn.pcap": 94,
    "zeek/ssh_sshguess.pcap": 431,
    "zeek/wikipedia.pcap": 136,
}

S = 1_000_000_000


def read_all(path: Path | str) -> tuple[list[tuple[int, bytes]], CaptureReader]:
    with open_capture(path) as reader:
        records = list(reader)
    return records, reader


# -- hand-made captures ----------------------------------------------------


def pcap_header(order: str = "<", nsec: bool = False, snaplen: int = 65535, linktype: int = 1) -> bytes:
    magic = 0xA1B23C4D if nsec else 0xA1B2C3D4
    return struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)


def pcap_record(sec: int, frac: int, data: bytes, order: str = "<", caplen: int | None = None) -> bytes:
    cap = len(data) if caplen is None else caplen
    return struct.pack(order + "IIII", sec, frac, cap, len(data)) + data


def block(order: str, btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    blen = len(body) + 12
    return struct.pack(order + "II", btype, blen) + body + struct.pack(order + "I", blen)


def shb(order: str) -> bytes:
    return block(order, 0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def option(order: str, code: int, value: bytes) -> bytes:
    return struct.pack(order + "HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def idb(order: str, linktype: int, snaplen: int = 0, options: bytes = b"") -> bytes:
    if options:
        options += struct.pack(order + "HH", 0, 0)
    return block(order, 1, struct.pack(order + "HHI", linktype, 0, snaplen) + options)


def epb(order: str, ifid: int, ts: int, data: bytes, caplen: int | None = None) -> bytes:
    cap = len(data) if caplen is None else caplen
    head = struct.pack(order + "IIIII", ifid, ts >> 32, ts & 0xFFFFFFFF, cap, len(data))
    return block(order, 6, head + data)


def spb(order: str, data: bytes, origlen: int | None = None) -> bytes:
    orig = len(data) if origlen is None else origlen
    return block(order, 3, struct.pack(order + "I", orig) + data)


# -- round trip --------------------------------------------------------------

FORMATS = [
    ("x.pcap", False),
    ("x.pcap", True),
    ("x.pcapng", False),
    ("x.pcapng", True),
]

record_lists = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=(1 << 32) * S - 1),
        st.binary(max_size=300),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(
    records=record_lists,
    fmt=st.sampled_from(FORMATS),
    gz=st.booleans(),
    linktype=st.sampled_from([LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_LINUX_SLL]),
)
def test_round_trip(records: list[tuple[int, bytes]], fmt: tuple[str, bool], gz: bool, linktype: int) -> None:
    name, nsec = fmt
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, name + (".gz" if gz else ""))
        with CaptureWriter(path, linktype=linktype, nanosecond=nsec) as writer:
            writer.write_many(records)
        got, reader = read_all(path)
        with open(path, "rb") as f:
            assert (f.read(2) == b"\x1f\x8b") == gz
    expected = [(ts if nsec else ts // 1000 * 1000, data) for ts, data in records]
    assert got == expected
    assert reader.format == name.rsplit(".", 1)[1]
    assert reader.linktype == linktype
    assert reader.nanosecond == nsec
    assert not reader.truncated and not reader.corrupt and reader.warnings == []


@pytest.mark.parametrize("suffix", [".pcap", ".pcapng", ".pcap.gz", ".pcapng.gz"])
def test_round_trip_records_spanning_chunks(tmp_path: Path, suffix: str) -> None:
    # Frames near the 256 KiB limit cross the reader's chunk boundaries.
    records = [
        (i * 1000, bytes([i]) * size) for i, size in enumerate([MAX_CAPLEN, 1, 200_001, 0, 77_777, MAX_CAPLEN - 3])
    ]
    path = tmp_path / f"big{suffix}"
    with CaptureWriter(path) as writer:
        writer.write_many(records)
    got, reader = read_all(path)
    assert got == records
    assert reader.warnings == []


def test_writer_output_is_readable_by_dpkt(tmp_path: Path) -> None:
    records = [(1_600_000_000 * S + 123_456_789, b"abc"), (2 * S + 5, b"x" * 61)]
    ns_pcap = tmp_path / "ns.pcap"
    with CaptureWriter(ns_pcap, nanosecond=True) as writer:
        writer.write_many(records)
    with open(ns_pcap, "rb") as f:
        reader = dpkt.pcap.Reader(f)
        got = [(int(ts * S), bytes(data)) for ts, data in reader]
        assert reader.datalink() == LINKTYPE_ETHERNET
    assert got == records
    us_ng = tmp_path / "us.pcapng"
    with CaptureWriter(us_ng) as writer:
        writer.write_many(records)
    with open(us_ng, "rb") as f:
        got_ng = [(round(ts * 1e6), bytes(data)) for ts, data in dpkt.pcapng.Reader(f)]
    assert got_ng == [(ts // 1000, data) for ts, data in records]


def test_writer_truncates_to_snaplen(tmp_path: Path) -> None:
    for name in ("s.pcap", "s.pcapng"):
        path = tmp_path / name
        with CaptureWriter(path, snaplen=10) as writer:
            writer.write(5000, bytes(range(30)))
        got, reader = read_all(path)
        assert got == [(5000, bytes(range(10)))]
        assert reader.snaplen == 10


def test_writer_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match=r"out\.txt: unknown capture suffix"):
        CaptureWriter(tmp_path / "out.txt")
    with pytest.raises(CaptureError, match="cannot create"):
        CaptureWriter(tmp_path / "missing-dir" / "x.pcap")
    writer = CaptureWriter(tmp_path / "w.pcap")
    with pytest.raises(ValueError, match="negative"):
        writer.write(-1, b"")
    with pytest.raises(ValueError, match="does not fit"):
        writer.write((1 << 32) * S, b"")
    writer.close()
    writer.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        writer.write(0, b"")
    assert read_all(tmp_path / "w.pcap")[0] == []


# -- bundled traces ----------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TRACE_COUNTS))
def test_bundled_trace_counts(name: str) -> None:
    n = 0
    with open_capture(TRACES / name) as reader:
        assert reader.format == "pcap"
        assert reader.linktype == LINKTYPE_ETHERNET
        assert not reader.nanosecond
        for ts, data in reader:
            assert isinstance(ts, int) and isinstance(data, bytes)
            n += 1
    assert n == TRACE_COUNTS[name]
    assert not reader.truncated and not reader.corrupt and reader.warnings == []


def test_bundled_traces_are_all_listed() -> None:
    found = {str(p.relative_to(TRACES)) for p in TRACES.rglob("*") if ".pcap" in p.name}
    assert found == set(TRACE_COUNTS)


@pytest.mark.parametrize(
    ("name", "first", "last"),
    [
        # frame.time_epoch and frame.cap_len printed by tshark
        ("pathspider/lan-2012.pcap.gz", (1353690039425111000, 74), (1353693638421204000, 66)),
        ("zeek/echo-connections.pcap.gz", (1627225020686470000, 74), (1627225027180797000, 66)),
        ("zeek/http_get.pcap", (1362692526869344000, 78), (1362692527080972000, 66)),
    ],
)
def test_bundled_trace_timestamps(name: str, first: tuple[int, int], last: tuple[int, int]) -> None:
    records, _ = read_all(TRACES / name)
    assert (records[0][0], len(records[0][1])) == first
    assert (records[-1][0], len(records[-1][1])) == last


def test_matches_dpkt_on_random_garbage() -> None:
    path = TRACES / "pathspider/random-garbage.pcap"
    ours, _ = read_all(path)
    with open(path, "rb") as f:
        theirs = [(ts, bytes(data)) for ts, data in dpkt.pcap.Reader(f)]
    assert [d for _, d in ours] == [d for _, d in theirs]
    assert all(abs(a / S - b) < 1e-6 for (a, _), (b, _) in zip(ours, theirs, strict=True))


def test_gzip_detected_by_magic_not_suffix(tmp_path: Path) -> None:
    src = TRACES / "pathspider/lan-2012.pcap.gz"
    disguised = tmp_path / "lan.pcap"
    disguised.write_bytes(src.read_bytes())
    plain = tmp_path / "plain.pcap"
    plain.write_bytes(gzip.decompress(src.read_bytes()))
    got, _ = read_all(disguised)
    assert len(got) == 62781
    assert got == read_all(plain)[0]


def test_multi_member_gzip(tmp_path: Path) -> None:
    raw = (TRACES / "zeek/http_get.pcap").read_bytes()
    path = tmp_path / "multi.pcap.gz"
    path.write_bytes(gzip.compress(raw[:100]) + gzip.compress(raw[100:]) + b"\0" * 8)
    got, reader = read_all(path)
    assert len(got) == 14
    assert reader.warnings == []
    path.write_bytes(gzip.compress(raw) + b"junk")
    got, reader = read_all(path)
    assert len(got) == 14
    assert not reader.truncated
    assert "trailing" in reader.warnings[0]


# -- truncation --------------------------------------------------------------


def last_record_offset(path: Path) -> int:
    records, _ = read_all(path)
    return 24 + sum(16 + len(d) for _, d in records[:-1])


@pytest.mark.parametrize("cut", ["data", "header", "one-byte"])
def test_truncated_pcap(tmp_path: Path, cut: str, caplog: pytest.LogCaptureFixture) -> None:
    src = TRACES / "zeek/http_get.pcap"
    raw = src.read_bytes()
    start = last_record_offset(src)
    last_len = len(raw) - start
    end = {
        "data": start + 16 + (last_len - 16) // 2,
        "header": start + 8,
        "one-byte": len(raw) - 1,
    }[cut]
    path = tmp_path / "cut.pcap"
    path.write_bytes(raw[:end])
    with caplog.at_level(logging.WARNING, logger="chc.capture"):
        got, reader = read_all(path)
    assert got == read_all(src)[0][:13]
    assert reader.truncated and not reader.corrupt
    assert reader.warnings == [f"{path}: last record truncated after 13 packets at byte {start:,}"]
    assert (reader.stop_reason, reader.stop_offset) == ("last record truncated", start)
    assert "cut.pcap" in caplog.text


def test_cut_at_record_boundary_is_not_truncated(tmp_path: Path) -> None:
    src = TRACES / "zeek/http_get.pcap"
    path = tmp_path / "boundary.pcap"
    path.write_bytes(src.read_bytes()[: last_record_offset(src)])
    got, reader = read_all(path)
    assert len(got) == 13
    assert not reader.truncated and reader.warnings == []
    assert reader.stop_reason is None and reader.stop_offset is None


def test_truncated_gzip_stream(tmp_path: Path) -> None:
    data = (TRACES / "pathspider/lan-2012.pcap.gz").read_bytes()
    path = tmp_path / "cut.pcap.gz"
    path.write_bytes(data[: len(data) // 2])
    got, reader = read_all(path)
    assert 0 < len(got) < 62781
    assert reader.truncated
    assert "cut.pcap.gz" in reader.warnings[0]
    assert f"after {len(got):,} packets" in reader.warnings[0]
    # the cause named (it said "last record truncated", a new user's trial)
    assert reader.stop_reason.startswith("gzip stream truncated"), reader.stop_reason


def test_corrupt_gzip_stream(tmp_path: Path) -> None:
    packed = bytearray((TRACES / "pathspider/lan-2012.pcap.gz").read_bytes())
    middle = len(packed) // 2
    packed[middle : middle + 64] = b"\xff" * 64
    path = tmp_path / "bad.pcap.gz"
    path.write_bytes(bytes(packed))
    got, reader = read_all(path)
    assert 1000 < len(got) < 62781
    assert reader.corrupt
    assert reader.warnings[0].startswith(f"{path}: corrupt data after {len(got):,} packets")


def test_truncated_pcapng(tmp_path: Path) -> None:
    body = shb("<") + idb("<", 1) + epb("<", 0, 10, b"a" * 40) + epb("<", 0, 20, b"b" * 40)
    path = tmp_path / "cut.pcapng"
    path.write_bytes(body[:-30])
    got, reader = read_all(path)
    assert got == [(10_000, b"a" * 40)]
    assert reader.truncated
    second = len(shb("<") + idb("<", 1) + epb("<", 0, 10, b"a" * 40))
    assert reader.warnings == [f"{path}: last record truncated after 1 packets at byte {second}"]
    assert reader.stop_offset == second


# -- hand-built pcap / pcapng ------------------------------------------------


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("nsec", [False, True])
def test_pcap_byte_orders_and_resolutions(tmp_path: Path, order: str, nsec: bool) -> None:
    body = pcap_header(order, nsec, linktype=LINKTYPE_RAW)
    body += pcap_record(1, 999_999, b"\x45" + b"\0" * 19, order)
    body += pcap_record(4_000_000_000, 5, b"", order)
    path = tmp_path / "hand.pcap"
    path.write_bytes(body)
    got, reader = read_all(path)
    unit = 1 if nsec else 1000
    assert got == [
        (S + 999_999 * unit, b"\x45" + b"\0" * 19),
        (4_000_000_000 * S + 5 * unit, b""),
    ]
    assert reader.format == "pcap"
    assert reader.linktype == LINKTYPE_RAW
    assert reader.nanosecond == nsec


def test_pcap_linktype_ignores_fcs_bits(tmp_path: Path) -> None:
    path = tmp_path / "fcs.pcap"
    path.write_bytes(pcap_header(linktype=0x1400_0000 | LINKTYPE_ETHERNET))
    assert read_all(path)[1].linktype == LINKTYPE_ETHERNET


@pytest.mark.parametrize("order", ["<", ">"])
def test_pcapng_interfaces_spb_and_unknown_blocks(tmp_path: Path, order: str) -> None:
    tsresol_ns = option(order, 9, b"\x09")
    tsresol_pow2 = option(order, 9, b"\x94")  # 2^-20 s
    tsoffset = option(order, 14, struct.pack(order + "q", 100))
    body = (
        shb(order)
        + idb(order, LINKTYPE_ETHERNET, 64)  # if 0: default microseconds
        + block(order, 0x0BAD, b"unknown block type")
        + idb(order, LINKTYPE_RAW, 0, option(order, 2, b"eth1") + tsresol_ns)  # if 1
        + idb(order, LINKTYPE_ETHERNET, 0, tsresol_pow2 + tsoffset)  # if 2
        + epb(order, 0, 1_500_000, b"frame0")
        + block(order, 4, b"\x00\x00\x00\x00")  # name resolution block: skipped
        + epb(order, 1, 1_234_567_890_123, b"\x45raw")
        + spb(order, b"simple" + b"\0" * 6, origlen=9)  # padding is not data
        + spb(order, b"s" * 100)  # longer than if 0's snaplen (64)
        + epb(order, 2, 3 << 20, b"pow2")
        + block(order, 5, b"\0" * 20)  # interface statistics: skipped
        + epb(order, 7, 1, b"undeclared interface")
        + epb(order, 0, 2_000_000, b"last")
    )
    path = tmp_path / "hand.pcapng"
    path.write_bytes(body)
    got, reader = read_all(path)
    assert got == [
        (1_500_000_000, b"frame0"),
        (1_234_567_890_123, b"\x45raw"),
        (0, b"simple\0\0\0"),
        (0, b"s" * 64),
        (3 * S + 100 * S, b"pow2"),
        (2_000_000_000, b"last"),
    ]
    assert reader.format == "pcapng"
    assert reader.linktype == LINKTYPE_ETHERNET  # first interface
    assert not reader.nanosecond
    assert not reader.truncated and not reader.corrupt
    assert len(reader.warnings) == 2
    assert "different link types" in reader.warnings[0]
    assert "undeclared interface 7" in reader.warnings[1]
    assert all(w.startswith(str(path)) for w in reader.warnings)


def test_pcapng_new_section_resets_interfaces_and_byte_order(tmp_path: Path) -> None:
    body = (
        shb("<")
        + idb("<", LINKTYPE_RAW, 0, option("<", 9, b"\x09"))
        + epb("<", 0, 5, b"one")
        + shb(">")
        + idb(">", LINKTYPE_RAW)
        + epb(">", 0, 5, b"two")
    )
    path = tmp_path / "sections.pcapng"
    path.write_bytes(body)
    got, reader = read_all(path)
    assert got == [(5, b"one"), (5000, b"two")]
    assert reader.linktype == LINKTYPE_RAW
    assert reader.nanosecond
    assert reader.warnings == []


def test_pcapng_without_packets(tmp_path: Path) -> None:
    path = tmp_path / "empty.pcapng"
    path.write_bytes(shb(">") + idb(">", LINKTYPE_LINUX_SLL))
    got, reader = read_all(path)
    assert got == []
    assert reader.linktype == LINKTYPE_LINUX_SLL
    assert reader.warnings == []


# -- errors -------------------------------------------------------------------


def test_error_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.pcap"
    path.write_bytes(b"")
    with pytest.raises(CaptureError, match=r"empty\.pcap: empty file"):
        open_capture(path)


def test_error_empty_gzip(tmp_path: Path) -> None:
    path = tmp_path / "empty.pcap.gz"
    path.write_bytes(gzip.compress(b""))
    with pytest.raises(CaptureError, match=r"empty\.pcap\.gz: empty file"):
        open_capture(path)


def test_error_text_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello world, this is not a capture\n")
    with pytest.raises(CaptureError) as info:
        open_capture(path)
    assert str(info.value) == (f"{path}: not a pcap or pcapng capture (starts with b'hello wo')")
    assert "\n" not in str(info.value)


def test_error_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "random.bin"
    path.write_bytes(bytes((i * 73 + 41) % 256 for i in range(4096)))
    with pytest.raises(CaptureError, match=r"random\.bin: not a pcap or pcapng"):
        open_capture(path)


def test_error_gzipped_text(tmp_path: Path) -> None:
    path = tmp_path / "notes.pcap.gz"
    path.write_bytes(gzip.compress(b"just text"))
    with pytest.raises(CaptureError, match=r"notes\.pcap\.gz: not a pcap"):
        open_capture(path)


def test_error_bad_gzip(tmp_path: Path) -> None:
    path = tmp_path / "bad.gz"
    path.write_bytes(b"\x1f\x8b" + b"\xff" * 30)
    with pytest.raises(CaptureError, match=r"bad\.gz: corrupt gzip data"):
        open_capture(path)


def test_error_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "x.pcap"
    with pytest.raises(CaptureError) as info:
        open_capture(path)
    assert str(info.value) == f"{path}: no such file"


def test_error_directory(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match="is a directory") as info:
        open_capture(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_error_short_pcap_header(tmp_path: Path) -> None:
    path = tmp_path / "short.pcap"
    path.write_bytes(pcap_header()[:10])
    with pytest.raises(CaptureError, match=r"short\.pcap: truncated pcap file header"):
        open_capture(path)


def test_error_bad_pcapng_section_header(tmp_path: Path) -> None:
    path = tmp_path / "bad.pcapng"
    path.write_bytes(b"\x0a\x0d\x0d\x0a" + b"\x1c\0\0\0" + b"XXXX" + b"\0" * 16)
    with pytest.raises(CaptureError, match=r"bad\.pcapng: corrupt pcapng section"):
        open_capture(path)


# -- corruption ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("snaplen", "caplen"),
    [(65535, 0x7FFF_FFFF), (0, MAX_CAPLEN + 1), (262144, 300_000), (20_000, 80_001)],
)
def test_absurd_caplen_stops_cleanly(tmp_path: Path, snaplen: int, caplen: int) -> None:
    body = pcap_header(snaplen=snaplen)
    body += pcap_record(1, 0, b"ok1") + pcap_record(2, 0, b"ok2")
    body += pcap_record(3, 0, b"\0" * 64, caplen=caplen)
    body += pcap_record(4, 0, b"never read")
    path = tmp_path / "absurd.pcap"
    path.write_bytes(body)
    got, reader = read_all(path)
    assert got == [(S, b"ok1"), (2 * S, b"ok2")]
    assert reader.corrupt and not reader.truncated
    assert len(reader.warnings) == 1
    assert reader.warnings[0].startswith(f"{path}: corrupt data after 2 packets")
    assert str(caplen) in reader.warnings[0]


def test_caplen_above_small_snaplen_is_tolerated(tmp_path: Path) -> None:
    # libpcap/Wireshark accept frames longer than a (wrong) header snaplen.
    body = pcap_header(snaplen=96) + pcap_record(1, 0, b"e" * 1514)
    path = tmp_path / "snap96.pcap"
    path.write_bytes(body)
    got, reader = read_all(path)
    assert got == [(S, b"e" * 1514)]
    assert reader.warnings == []


@pytest.mark.parametrize(
    "bad",
    [
        struct.pack("<II", 6, 0x7FFF_FFF0) + b"\0" * 40,  # absurd block length
        struct.pack("<II", 6, 13) + b"\0" * 40,  # not a multiple of 4
        epb("<", 0, 1, b"x" * 8)[:-4] + struct.pack("<I", 99),  # trailer mismatch
        epb("<", 0, 1, b"x" * 8, caplen=500),  # caplen beyond the block
        block("<", 0x0BAD, b"")[:4] + struct.pack("<I", 1 << 30),  # huge other block
    ],
)
def test_corrupt_pcapng_stops_cleanly(tmp_path: Path, bad: bytes) -> None:
    body = shb("<") + idb("<", 1) + epb("<", 0, 1, b"good") + bad + epb("<", 0, 2, b"lost")
    path = tmp_path / "corrupt.pcapng"
    path.write_bytes(body)
    got, reader = read_all(path)
    assert got == [(1000, b"good")]
    assert reader.corrupt
    assert reader.warnings[0].startswith(f"{path}: corrupt data after 1 packets")


def test_pcapng_caplen_above_interface_limit(tmp_path: Path) -> None:
    body = shb("<") + idb("<", 1, snaplen=100) + epb("<", 0, 1, b"z" * 70_000)
    path = tmp_path / "big.pcapng"
    path.write_bytes(body)
    got, reader = read_all(path)
    assert got == []
    assert reader.corrupt and "70000" in reader.warnings[0]


# -- reader object --------------------------------------------------------------


def test_reader_is_lazy_single_pass_and_closes(tmp_path: Path) -> None:
    reader = open_capture(TRACES / "zeek/http_get.pcap")
    it = iter(reader)
    first = next(it)
    assert first[0] == 1362692526869344000
    assert len(list(reader)) == 13  # the rest
    assert list(reader) == []  # single pass
    reader.close()
    reader.close()
    with open_capture(TRACES / "zeek/ftp_retr.pcap") as reader2:
        next(iter(reader2))
    assert list(reader2) == []  # closed early: nothing more, no error
    assert "pcap" in repr(reader2)


def test_warnings_are_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "lan.pcap"
    path.write_bytes(pcap_header() + pcap_record(1, 0, b"abc")[:-1])
    with caplog.at_level(logging.WARNING, logger="chc.capture"):
        _, reader = read_all(path)
    assert [r.getMessage() for r in caplog.records] == reader.warnings
    assert caplog.records[0].name == "chc.capture"
    assert reader.warnings == [f"{path}: last record truncated after 0 packets at byte 24"]
