"""Issue 18: a day-one user's mishaps (lost input, a killed machine, a silent
partial result) and what users of tcpdump / tshark / tcpreplay expect."""

from __future__ import annotations

import errno
import fcntl
import io
import json
import os
import re
import shutil
import signal
import stat
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from chc.capture import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    LINKTYPE_RAW,
    CaptureWriter,
    open_capture,
)
from chc.cli import Progress, main
from chc.feed import Feed
from chc.linktypes import LinkAdapter
from chc.packet import Packet
from chc.spec import MAX_PARALLELISM, SpecError, load_spec, parse_spec

ROOT = Path(__file__).resolve().parent.parent
CHAIN = str(ROOT / "examples/paper_chain.yaml")
HTTP = str(ROOT / "traces/zeek/http_get.pcap")


# -- item 2: one parallelism limit everywhere ---------------------------------------

def test_spec_parallelism_above_the_limit_is_refused_naming_it():
    spec = {"vertices": {"a": {"nf": "pass", "parallelism": MAX_PARALLELISM + 1}}}
    with pytest.raises(SpecError, match=rf"vertices\.a\.parallelism: .*{MAX_PARALLELISM}"):
        parse_spec(spec)
    spec["vertices"]["a"]["parallelism"] = MAX_PARALLELISM
    assert parse_spec(spec).vertices["a"].parallelism == MAX_PARALLELISM


def test_cli_parallelism_above_the_limit_is_exit_2_naming_it(capsys):
    # Before the fix any count ran (100,000 until the kernel killed it); one past
    # the limit shows the defect without endangering the machine.
    with pytest.raises(SystemExit) as exc:
        main(["run", CHAIN, HTTP, "--parallelism", str(MAX_PARALLELISM + 1), "--no-progress", "-q"])
    assert exc.value.code == 2
    assert str(MAX_PARALLELISM) in capsys.readouterr().err


def test_with_parallelism_refuses_above_the_limit():
    chain = load_spec(CHAIN)
    with pytest.raises(SpecError, match=str(MAX_PARALLELISM)):
        chain.with_parallelism(MAX_PARALLELISM + 1)
    with pytest.raises(SpecError, match=str(MAX_PARALLELISM)):
        chain.with_parallelism({"nat": 10**6})


# -- item 7: spec errors say what is wrong and where ---------------------------------

def test_vertex_without_nf_names_the_missing_key():
    with pytest.raises(SpecError) as err:
        parse_spec({"vertices": {"a": {"parallelism": 2}}})
    assert "vertices.a.nf" in str(err.value) and "missing" in str(err.value)
    assert "None" not in str(err.value)


def test_yaml_syntax_error_gives_line_and_column(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("vertices:\n  a: {nf: pass\nedges: []\n")
    with pytest.raises(SpecError) as err:
        load_spec(bad)
    msg = str(err.value)
    assert msg.startswith(f"{bad}:3:")          # path:line:column, 1-based as editors count
    assert "\n" not in msg


# -- helpers -------------------------------------------------------------------------

LAN = str(ROOT / "traces/pathspider/lan-2012.pcap.gz")
SMB = str(ROOT / "traces/zeek/smb_smb2.pcap")
CHC = [sys.executable, "-m", "chc.cli"]


def summary_of(tmp_path: Path, *args: str, code: int = 0) -> dict:
    out = tmp_path / "summary.json"
    assert main(["run", *args, "--summary-json", str(out), "--no-progress", "-q"]) == code
    return json.loads(out.read_text())


def records(path) -> list[tuple[int, bytes]]:
    with open_capture(path) as reader:
        return list(reader)


def write_pcap(path: Path, recs, linktype: int = LINKTYPE_ETHERNET) -> Path:
    with CaptureWriter(path, linktype=linktype) as w:
        w.write_many(recs)
    return path


def chc(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*CHC, *args], capture_output=True, timeout=300, **kw)


# -- item 1: an output never destroys an input; outputs appear whole or not at all ----

@pytest.mark.parametrize("flag", ["--out", "--summary-json", "--state-json"])
def test_output_that_is_the_input_capture_is_refused(tmp_path, capsys, flag):
    capture = tmp_path / "s.pcap"
    shutil.copy(SMB, capture)
    before = capture.read_bytes()
    assert main(["run", CHAIN, str(capture), flag, str(capture), "--no-progress", "-q"]) == 2
    assert capture.read_bytes() == before               # was cut to 77 of 1,178 packets
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and flag in err and "capture" in err


def test_output_through_a_link_or_other_spelling_is_refused(tmp_path):
    capture = tmp_path / "s.pcap"
    shutil.copy(SMB, capture)
    (tmp_path / "hard.pcap").hardlink_to(capture)
    (tmp_path / "soft.pcap").symlink_to(capture)
    for alias in ("hard.pcap", "soft.pcap", "./sub/../s.pcap"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        assert main(["run", CHAIN, str(capture), "--out", str(tmp_path / alias), "--no-progress", "-q"]) == 2
    spec = tmp_path / "chain.yaml"
    shutil.copy(CHAIN, spec)
    assert main(["run", str(spec), SMB, "--summary-json", str(spec), "--no-progress", "-q"]) == 2
    assert spec.read_text() == Path(CHAIN).read_text()
    both = str(tmp_path / "x.json")
    assert main(["run", CHAIN, SMB, "--summary-json", both, "--state-json", both, "--no-progress", "-q"]) == 2


def test_failed_run_leaves_earlier_outputs_untouched_and_no_temporary(tmp_path, monkeypatch):
    out, js = tmp_path / "out.pcap", tmp_path / "summary.json"
    out.write_bytes(b"earlier output")
    js.write_text("earlier summary")
    real = CaptureWriter.write_many

    def disk_full(self, recs):
        real(self, recs)
        self._flush()
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(CaptureWriter, "write_many", disk_full)
    with pytest.raises(OSError):
        main(["run", CHAIN, LAN, "--out", str(out), "--summary-json", str(js), "--no-progress", "-q"])
    assert out.read_bytes() == b"earlier output"        # was half-written before the fix
    assert js.read_text() == "earlier summary"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.pcap", "summary.json"]


def test_outputs_are_written_whole_with_the_usual_permissions(tmp_path):
    out = tmp_path / "o.pcap.gz"
    s = summary_of(tmp_path, CHAIN, SMB, "--out", str(out))
    assert len(records(out)) == s["packets_out"] == 1178
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~_umask()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.pcap.gz", "summary.json"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# -- item 3: a closed stdout is not an error ------------------------------------------

@pytest.mark.parametrize("args", [
    ["check", CHAIN, str(ROOT / "examples/scenarios/parallel.yaml"), HTTP, "--seeds", "3"],
    ["run", CHAIN, HTTP, "--no-progress"],
    ["run", CHAIN, SMB, "--no-progress", "--out", "-"],
])
def test_closed_stdout_stops_quietly(args):
    proc = subprocess.Popen([*CHC, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()             # `| head -0`: the reader is gone before chc writes
    _, err = proc.communicate(timeout=300)
    assert proc.returncode in (0, 141), err.decode()      # was 1 with a BrokenPipeError traceback
    assert b"Traceback" not in err and b"BrokenPipe" not in err


# -- item 4: a capture that stops early is never a silent success --------------------

def _corrupt_after(tmp_path: Path, good: int) -> tuple[Path, int, int]:
    """lan-2012 with a corrupt record after ``good`` records; (path, offset, total)."""
    recs = records(LAN)
    path = write_pcap(tmp_path / "corrupt.pcap", recs[:good])
    offset = path.stat().st_size
    with open(path, "ab") as fh:
        fh.write(struct.pack("<IIII", 1, 0, 10**7, 10**7))    # claims 10 MB captured
        for ts, data in recs[good:]:
            fh.write(struct.pack("<IIII", ts // 10**9, ts % 10**9 // 1000, len(data), len(data)) + data)
    return path, offset, len(recs)


def test_corrupt_record_is_partial_exit_3_with_reason_and_offset(tmp_path):
    path, offset, total = _corrupt_after(tmp_path, 1000)
    s = summary_of(tmp_path, CHAIN, str(path), code=3)     # was exit 0, truncated: false
    assert s["packets_in"] == 1000 and total - 1000 == 61781
    cap = s["capture"]
    assert cap["truncated"] is True and cap["offset"] == offset
    assert "corrupt" in cap["reason"] and "10000000" in cap["reason"]
    assert s["partial"] is True and str(f"{offset:,}") in s["partial_reasons"][0]
    res = chc("run", CHAIN, str(path), "--no-progress", "-q")
    assert res.returncode == 3 and res.stdout == b""
    assert f"corrupt data after 1,000 packets at byte {offset:,}" in res.stderr.decode()
    s = summary_of(tmp_path, CHAIN, str(path), "--allow-partial")
    assert s["partial"] is True and s["capture"]["truncated"] is True


def test_truncated_last_record_is_partial_too(tmp_path):
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(Path(SMB).read_bytes()[:-10])
    s = summary_of(tmp_path, CHAIN, str(cut), code=3)
    assert s["capture"]["reason"] == "last record truncated" and s["packets_in"] == 1177
    whole = summary_of(tmp_path, CHAIN, SMB)
    assert whole["partial"] is False and whole["capture"]["truncated"] is False
    assert whole["capture"]["offset"] is None and whole["partial_reasons"] == []


# -- item 5: Ctrl-C reports what was processed ----------------------------------------

def _wait_until_reading(proc: subprocess.Popen, pipe) -> None:
    """Until the child has read everything in ``pipe`` and waits for more."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        left = fcntl.ioctl(pipe.fileno(), termios.FIONREAD, b"\0\0\0\0")
        wchan = Path(f"/proc/{proc.pid}/wchan").read_text() if Path(f"/proc/{proc.pid}/wchan").exists() else ""
        if int.from_bytes(left, sys.byteorder) == 0 and "pipe" in wchan:
            return
        time.sleep(0.05)
    raise AssertionError(f"chc did not wait for input (wchan {wchan!r})")


def test_ctrl_c_prints_and_writes_the_partial_summary(tmp_path):
    recs = records(SMB)[:300]
    head = write_pcap(tmp_path / "head.pcap", recs).read_bytes()
    js, out = tmp_path / "s.json", tmp_path / "o.pcap"
    proc = subprocess.Popen([*CHC, "run", CHAIN, "-", "--no-progress", "--summary-json", str(js),
                             "--out", str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdin.write(head)          # like tcpdump -w - that has sent 300 packets so far
    proc.stdin.flush()
    _wait_until_reading(proc, proc.stdin)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr.decode()
    text = stdout.decode()
    assert text.startswith("PARTIAL: interrupted after 300 packets read")    # was: no summary
    assert "300 packets in" in text and "state digest" in text
    s = json.loads(js.read_text())
    assert s["partial"] is True and s["packets_in"] == 300
    assert s["packets_out"] + s["dropped"] == 300 and len(records(out)) == s["packets_out"]
    assert b"Traceback" not in stderr
    # said at once: a proc run finishes what it read ahead, seconds on Redis (a new-user trial)
    assert b"chc: stopping: no more input; finishing what the chain holds (Ctrl-C again to abort)" in stderr


def test_interrupt_flag_stops_the_feed_between_records(tmp_path):
    with open_capture(SMB) as reader:
        feed = Feed(reader)
        taken = []
        for rec in feed:
            taken.append(rec)
            if len(taken) == 10:
                feed.interrupt()    # what the SIGINT handler does outside a read
        assert len(taken) == 10 and feed.stopped_by == "interrupt"
        with pytest.raises(KeyboardInterrupt):
            feed.interrupt()        # a second Ctrl-C aborts


# -- stdin and stdout, as tcpdump -w - | chc run chain - ------------------------------

def test_stdin_capture_and_stdout_output_match_files(tmp_path):
    js_file, js_pipe, out = tmp_path / "f.json", tmp_path / "p.json", tmp_path / "o.pcap"
    assert main(["run", CHAIN, SMB, "--out", str(out), "--summary-json", str(js_file), "--no-progress", "-q"]) == 0
    with open(SMB, "rb") as stdin:
        res = chc("run", CHAIN, "-", "--out", "-", "--summary-json", str(js_pipe), "--no-progress", stdin=stdin)
    assert res.returncode == 0, res.stderr
    assert res.stdout == out.read_bytes()                    # pcap on the pipe, byte for byte
    assert "1,178 packets in" in res.stderr.decode()         # the summary moved to stderr
    a, b = json.loads(js_file.read_text()), json.loads(js_pipe.read_text())
    assert a["state_digest"] == b["state_digest"] and b["capture"]["path"] == "-"


def test_gzip_capture_on_stdin_arriving_in_small_pieces(tmp_path):
    proc = subprocess.Popen([*CHC, "run", CHAIN, "-", "--no-progress", "-q", "--summary-json",
                             str(tmp_path / "s.json")], stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    data = Path(LAN).read_bytes()[:200_000]
    proc.stdin.write(data[:1])      # a pipe may hand over one byte first
    proc.stdin.flush()
    time.sleep(0.2)
    proc.stdin.write(data[1:])
    proc.stdin.close()
    assert proc.wait(timeout=120) == 3            # the cut gzip stream is reported, not hidden
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["capture"]["format"] == "pcap" and s["packets_in"] > 1000


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
def test_stdout_output_reads_in_tshark():
    chc_run = subprocess.Popen([*CHC, "run", CHAIN, SMB, "--out", "-", "--no-progress", "-q"],
                               stdout=subprocess.PIPE)
    res = subprocess.run(["tshark", "-r", "-", "-T", "fields", "-e", "frame.number"], stdin=chc_run.stdout,
                         capture_output=True, text=True, timeout=300)
    chc_run.stdout.close()
    assert chc_run.wait(timeout=300) == 0
    assert len(res.stdout.split()) == 1178


def test_binary_output_to_a_terminal_is_refused(monkeypatch, capsys):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert main(["run", CHAIN, SMB, "--out", "-", "--no-progress"]) == 2
    assert "terminal" in capsys.readouterr().err


# -- link types: Linux cooked v1/v2, raw IP, null/loopback -----------------------------

def _family(ethertype: int, ipv6: int) -> int:
    return 2 if ethertype == 0x0800 else ipv6


def _as_linktype(frame: bytes, linktype: int) -> bytes:
    """An Ethernet frame as a capture of ``linktype`` would hold it (no VLAN tags)."""
    proto, rest = frame[12:14], frame[14:]
    ethertype = int.from_bytes(proto, "big")
    src = frame[6:12] + b"\0\0"
    return {
        LINKTYPE_LINUX_SLL: struct.pack("!HHH", 0, 1, 6) + src + proto + rest,
        LINKTYPE_LINUX_SLL2: proto + b"\0\0" + struct.pack("!IHBB", 3, 1, 4, 6) + src + rest,
        LINKTYPE_RAW: rest,
        LINKTYPE_IPV4: rest,
        LINKTYPE_IPV6: rest,
        LINKTYPE_NULL: struct.pack("<I", _family(ethertype, 30)) + rest,
        LINKTYPE_LOOP: struct.pack("!I", _family(ethertype, 24)) + rest,
    }[linktype]


def _mixed() -> list[tuple[int, bytes]]:
    """IPv4 from the LAN capture (with ARP), then wikipedia.pcap's IPv6, in time order."""
    lan = records(LAN)[:2500]
    wiki = records(ROOT / "traces/zeek/wikipedia.pcap")
    shift = lan[-1][0] + 1000 - wiki[0][0]
    return lan + [(ts + shift, data) for ts, data in wiki]


def _keeps(linktype: int, frame: bytes) -> bool:
    ethertype = frame[12:14]
    if linktype == LINKTYPE_IPV4:
        return ethertype == b"\x08\x00"
    if linktype == LINKTYPE_IPV6:
        return ethertype == b"\x86\xdd"
    # Only Linux cooked captures carry a protocol number for ARP and the like.
    return linktype in (LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2) or ethertype in (b"\x08\x00", b"\x86\xdd")


@pytest.mark.parametrize("linktype", [LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2, LINKTYPE_RAW, LINKTYPE_IPV4,
                                      LINKTYPE_IPV6, LINKTYPE_NULL, LINKTYPE_LOOP])
def test_link_type_runs_like_ethernet_and_is_kept_on_output(tmp_path, linktype):
    recs = [(ts, f) for ts, f in _mixed() if _keeps(linktype, f)]
    ether_in = write_pcap(tmp_path / "ether.pcap", recs)
    other_in = write_pcap(tmp_path / "other.pcap", [(ts, _as_linktype(f, linktype)) for ts, f in recs], linktype)
    ether_out, other_out = tmp_path / "ether-out.pcap", tmp_path / "other-out.pcapng"
    a = summary_of(tmp_path, CHAIN, str(ether_in), "--out", str(ether_out))
    b = summary_of(tmp_path, CHAIN, str(other_in), "--out", str(other_out))
    assert a["packets_in"] == b["packets_in"] == len(recs) > 4
    for key in ("packets_out", "dropped", "malformed", "non_ip", "alerts", "state_digest"):
        assert a[key] == b[key], key
    assert b["capture"]["linktype"] == linktype
    with open_capture(other_out) as reader:
        assert reader.linktype == linktype
        got = list(reader)
    # Same packets, same rewrites, each with its own link header restored.
    assert got == [(ts, _as_linktype(f, linktype)) for ts, f in records(ether_out)]
    if linktype != LINKTYPE_IPV6:
        assert any(f[12:14] == b"\x08\x00" and f[26:30] != o[26:30] for (_, f), (_, o) in
                   zip(records(ether_out), recs, strict=True))       # the NAT did rewrite


def test_unsupported_link_type_is_exit_2_listing_the_supported(tmp_path, capsys):
    path = write_pcap(tmp_path / "wifi.pcap", [(0, b"\0" * 40)], linktype=105)
    assert main(["run", CHAIN, str(path), "--no-progress", "-q"]) == 2
    err = capsys.readouterr().err
    assert "link type 105" in err and "113" in err and "276" in err and err.count("\n") == 1


def test_link_adapter_round_trips_short_and_odd_frames():
    for linktype in (LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2, LINKTYPE_NULL, LINKTYPE_RAW):
        adapter = LinkAdapter(linktype)
        for frame in (b"", b"\x45", b"\0" * 3, bytes(range(40)), b"\x60" + bytes(60)):
            ether = adapter.to_ether(frame)
            assert adapter.from_ether(ether) == frame
    with pytest.raises(ValueError, match="MAC"):
        LinkAdapter(LINKTYPE_RAW).from_ether(b"\0" * 40)


# -- --filter (libpcap's BPF) and -c/--count -------------------------------------------

def _expected(recs, predicate) -> int:
    return sum(1 for _, f in recs if predicate(Packet(f)))


def test_filter_keeps_what_tcpdump_would(tmp_path):
    recs = records(LAN)[:5000]
    smb = _expected(recs, lambda p: p.proto == 6 and 139 in (p.sport, p.dport))
    s = summary_of(tmp_path, CHAIN, LAN, "--filter", "tcp port 139", "-c", "100000")
    assert s["capture"]["filter"] == "tcp port 139"
    assert s["packets_in"] + s["capture"]["filtered_out"] == 62781
    head = write_pcap(tmp_path / "head.pcap", recs)
    s = summary_of(tmp_path, CHAIN, str(head), "--filter", "tcp port 139")
    assert s["packets_in"] == smb >= 32
    dns = summary_of(tmp_path, CHAIN, str(head), "--filter", "udp and port 53 and not tcp")
    assert dns["packets_in"] == _expected(recs, lambda p: p.proto == 17 and 53 in (p.sport, p.dport)) >= 32
    arp = summary_of(tmp_path, CHAIN, str(head), "--filter", "arp")
    assert arp["packets_in"] == sum(1 for _, f in recs if f[12:14] == b"\x08\x06") == arp["non_ip"]


def test_filter_applies_to_the_input_link_type(tmp_path):
    recs = [(ts, _as_linktype(f, LINKTYPE_LINUX_SLL2)) for ts, f in records(LAN)[:3000]]
    path = write_pcap(tmp_path / "any.pcap", recs, LINKTYPE_LINUX_SLL2)
    ether = summary_of(tmp_path, CHAIN, LAN, "--filter", "udp", "-c", "3000")
    s = summary_of(tmp_path, CHAIN, str(path), "--filter", "udp")
    assert s["packets_in"] == _expected(records(LAN)[:3000], lambda p: p.proto == 17) > 0
    assert ether["packets_in"] <= 3000


def test_bad_filter_is_one_line_exit_2(capsys):
    assert main(["run", CHAIN, SMB, "--filter", "tcp port", "--no-progress", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("chc: error:") and "tcp port" in err and err.count("\n") == 1


def test_count_stops_after_n_packets_and_is_not_partial(tmp_path):
    s = summary_of(tmp_path, CHAIN, LAN, "-c", "100")
    assert s["packets_in"] == 100 and s["partial"] is False and s["capture"]["count"] == 100
    s = summary_of(tmp_path, CHAIN, LAN, "--count", "7", "--filter", "udp")
    assert s["packets_in"] == 7 and s["vertices"]["nat"]["packets_in"] == 7


# -- progress: percentage, rate and time left when the size is known -------------------

def test_progress_shows_percentage_rate_and_eta_for_a_file():
    text = io.StringIO()
    with open_capture(LAN) as reader:
        bar = Progress(reader, os.path.getsize(LAN), file=text, disable=False)
        n = 0
        for _ in reader:
            n += 1
            if n % 20000 == 0:
                time.sleep(0.6)         # past the bar's refresh interval
                bar.update(20000)
        bar.update(n % 20000)
        bar.close()
    shown = text.getvalue()
    assert "%" in shown and "pkt/s" in shown and "<" in shown    # tqdm's [elapsed<remaining, rate]
    assert "100%" in shown or bar.bar.n == os.path.getsize(LAN)


def test_progress_counts_packets_on_a_pipe():
    text = io.StringIO()
    with open(SMB, "rb") as fh, open_capture(f"/dev/fd/{fh.fileno()}") as reader:
        bar = Progress(reader, None, file=text, disable=False)
        bar.update(1178)
        bar.close()
    assert "pkt" in text.getvalue() and "%" not in text.getvalue()


# -- item 8: documented examples write under out/ or /tmp, never into the checkout ------

_OUTPUT_FLAG = re.compile(r"(?:^|\s)(-o|--out|--json|--png|--summary-json|--state-json|--truth|--save-failures)"
                          r"[ =]([^\s`'\"\\]+)")


def _documented_outputs() -> list[tuple[str, str, str]]:
    files = [ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("examples/**/*.yaml"), *ROOT.glob("bench/*.py")]
    return [(f.relative_to(ROOT).as_posix(), flag, path) for f in files
            for flag, path in _OUTPUT_FLAG.findall(f.read_text(encoding="utf-8"))]


def test_documented_examples_write_under_out_or_tmp():
    found = _documented_outputs()
    assert len(found) > 15                     # the scan does see the examples
    stray = [(doc, flag, path) for doc, flag, path in found
             if not (path.startswith(("out/", "/tmp/", "-")) or path.split(".")[0].isupper() or path[0] in "<{$"
                     or (flag == "--save-failures" and path.startswith("tests/regressions/")))]
    assert stray == []                         # was: m.pcap, t1.pcap.gz, quick.json, ... in the root
    assert "/out/" in (ROOT / ".gitignore").read_text().split()


@pytest.mark.parametrize("command", [
    ["rewrite", "{cap}", "-o", "{cap}", "--map", "10.0.0.11=10.9.9.9"],
    ["merge", str(ROOT / "traces/zeek/http_get.pcap"), "{cap}", "-o", "{cap}"],
    ["trojan", "{cap}", "-o", "{cap}", "--count", "1", "--truth", "{dir}/t.json"],
    ["scan", "{cap}", "-o", "{dir}/o.pcap", "--truth", "{cap}"],
])
def test_trace_outputs_never_overwrite_an_input(tmp_path, capsys, command):
    capture = tmp_path / "s.pcap"
    shutil.copy(SMB, capture)
    before = capture.read_bytes()
    args = [a.format(cap=capture, dir=tmp_path) for a in command]
    assert main(["trace", *args]) == 2
    assert capture.read_bytes() == before
    assert "refusing to overwrite" in capsys.readouterr().err


def test_ctrl_c_while_chc_is_still_importing_is_one_line(monkeypatch, capsys):
    """The ``chc`` command's entry point: a Ctrl-C during its imports (a heavy start, an
    early ^C) printed a KeyboardInterrupt traceback from the import machinery."""
    import chc

    class Interrupted:
        def find_spec(self, name, path=None, target=None):
            if name == "chc.cli":
                raise KeyboardInterrupt
            return None

    monkeypatch.delitem(sys.modules, "chc.cli")
    monkeypatch.setattr(sys, "meta_path", [Interrupted(), *sys.meta_path])
    try:
        code = chc.console()
    except KeyboardInterrupt:           # (not let through: it would stop the whole test run)
        pytest.fail("a Ctrl-C during chc's imports escaped as KeyboardInterrupt")
    assert code == 130
    assert capsys.readouterr().err == "chc: interrupted\n"


@pytest.mark.parametrize("command", ["check", "serve"])
def test_a_typo_in_a_scenario_target_names_the_file_and_the_event(tmp_path, capsys, command):
    scenario = tmp_path / "typo.yaml"
    scenario.write_text("events:\n  - {at: {packets: 10}, do: scale-out, target: nat}\n"
                        "  - {at: {packets: 100}, do: scale-out, target: trojn}\n")
    chain, lan = str(ROOT / "examples/paper_chain.yaml"), str(ROOT / "traces/pathspider/lan-2012.pcap.gz")
    argv = (["check", chain, str(scenario), lan, "--packets", "200"] if command == "check"
            else ["serve", chain, "--capture", lan, "--scenario", str(scenario), "--duration", "1"])
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"chc: error: {scenario}: events[1].target: unknown vertex 'trojn' "
                   "(vertices: nat, trojan, portscan, lb)")       # (a scale-out takes no root, no store)


@pytest.mark.parametrize("command", ["check", "serve"])
@pytest.mark.parametrize("scenario, says", [
    # a scale-out of the store: "unknown vertex 'store' in 'store' (vertices: ...)", from the runtime
    ("events:\n  - {at: {packets: 10}, do: scale-out, target: nat}\n"
     "  - {at: {packets: 100}, do: scale-out, target: store}\n",
     "events[1].target: 'store': only a crash targets the store or a root (vertices: nat, trojan, portscan, lb)"),
    ("events:\n  - {at: {packets: 100}, do: drop, target: 'root[0]', count: 1}\n",
     "events[0].target: 'root[0]': only a crash targets the store or a root "
     "(vertices: nat, trojan, portscan, lb; * (every store link))"),
    ("events:\n  - {at: {packets: 100}, do: slow, target: '*', delay: 'const:5'}\n",
     "events[0].target: '*' (every store link) is the target of a store-link fault only "
     "(vertices: nat, trojan, portscan, lb)"),
    ("events:\n  - {at: {packets: 100}, do: crash, target: 'root[x]'}\n",
     "events[0].target: 'root[x]': a root is root[R] (vertices: nat, trojan, portscan, lb; root[R], store)"),
    # a bad random.vertices: "random.vertices: unknown vertex 'natt' (...)", no file
    ("random: {events: 3, vertices: [nat, natt]}\n",
     "random.vertices: unknown vertex 'natt' (vertices: nat, trojan, portscan, lb; root[R], store)"),
    # "unknown vertex 'natt' in 'natt'" from the runtime; a parallelism of 'natt' was ignored
    ("delays: {natt: 'const:5'}\n", "delays.natt: unknown vertex 'natt' (vertices: nat, trojan, portscan, lb)"),
    ("parallelism: {natt: 2}\n", "parallelism.natt: unknown vertex 'natt' (vertices: nat, trojan, portscan, lb)"),
], ids=["scale-out-store", "drop-root", "slow-every-link", "root-x", "random-vertices", "delays",
        "parallelism"])
def test_a_scenario_error_names_the_file_and_the_field(tmp_path, capsys, command, scenario, says):
    """Some scenario mistakes were found by the runtime, named with neither the file nor
    the event (or field), and a parallelism naming no vertex was ignored."""
    _check_refuses_scenario(tmp_path, capsys, scenario, says, command)


def _check_refuses_scenario(tmp_path, capsys, scenario: str, says: str, command: str = "check") -> None:
    """chc check (or serve) over the paper chain refuses ``scenario`` with exit 2 and one
    line naming the file."""
    path = tmp_path / "bad.yaml"
    path.write_text(scenario)
    chain, lan = str(ROOT / "examples/paper_chain.yaml"), str(ROOT / "traces/pathspider/lan-2012.pcap.gz")
    argv = (["check", chain, str(path), lan, "--packets", "200"] if command == "check"
            else ["serve", chain, "--capture", lan, "--scenario", str(path), "--duration", "1"])
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == f"chc: error: {path}: {says}"


@pytest.mark.parametrize("scenario, says", [
    ("events:\n  - {at: {packets: 100}, do: crash, target: 'root[3]'}\n", "events[0].target: 'root[3]': the chain "
     "has roots 0-0"),
    ("random: {events: 3, actions: [crash], vertices: ['root[2]']}\n",
     "random.vertices: 'root[2]': the chain has roots 0-0"),
    ("events:\n  - {at: {packets: 100}, do: set-backends, target: nat, backends: [10.0.0.1]}\n",
     "events[0]: nat (nat): do: the nat NF has no operator control 'set-backends'"),
], ids=["root-3", "random-root-2", "control"])
@pytest.mark.parametrize("command", ["check", "serve"])
def test_a_check_names_the_file_for_what_the_chain_refuses_in_a_scenario(tmp_path, capsys, scenario, says, command):
    """What only the chain spec tells (its roots, its NFs' controls): check and serve know it
    (serve said the runtime's words without the file)."""
    _check_refuses_scenario(tmp_path, capsys, scenario, says, command)


@pytest.mark.parametrize("scenario, says", [
    # a target that is no string: AttributeError ('int' object has no attribute 'partition')
    ("events:\n  - {at: {packets: 100}, do: crash, target: 5}\n",
     "events[0].target: a name (vertex, vertex[i], root[R], store or *), got 5"),
    ("events:\n  - {at: {packets: 100}, do: scale-out, target: [nat]}\n",
     "events[0].target: a name (vertex, vertex[i], root[R], store or *), got ['nat']"),
    # "'nat[x]': expected nat[N] with a number N" from the runtime, no file; 'nat[' crashed any nat instance
    ("delays: {'nat[x]': 'const:5'}\n", "delays.nat[x]: 'nat[x]': an instance is nat[N] with a number N"),
    ("events:\n  - {at: {packets: 100}, do: crash, target: 'nat['}\n",
     "events[0].target: 'nat[': an instance is nat[N] with a number N"),
], ids=["int", "list", "delays-index", "crash-index"])
def test_a_malformed_scenario_target_is_one_line_naming_the_file(tmp_path, capsys, scenario, says):
    _check_refuses_scenario(tmp_path, capsys, scenario, says)


@pytest.mark.parametrize("argv, says", [
    (["run", "x.yaml", "--bogus"], "chc: error: unrecognized arguments: --bogus (see chc run -h)\n"),
    (["trace", "inspect", "x.pcap", "--bogus"],
     "chc: error: unrecognized arguments: --bogus (see chc trace inspect -h)\n"),
    (["run", "x.yaml", "y.pcap", "--batch-size", "abc"],
     "chc: error: argument --batch-size: expected a positive integer, got 'abc' (see chc run -h)\n"),
    (["frobnicate"], "chc: error: argument COMMAND: invalid choice: 'frobnicate' (choose from 'run', 'serve', "
                     "'trace', 'bench', 'check') (see chc -h)\n"),
])
def test_a_bad_command_line_is_one_line_naming_the_help_to_read(capsys, argv, says):
    """argparse printed its usage block first, and an unknown option of a subcommand
    the top level's usage (found by a new-user trial)."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and capsys.readouterr().err == says


def test_metrics_and_dashboard_on_one_port_is_named_as_such(capsys):
    """It said "--dashboard-port 18091: Address already in use" (found by a new-user trial)."""
    assert main(["serve", str(ROOT / "examples/paper_chain.yaml"), "--capture", LAN, "--metrics-port", "18091",
                 "--dashboard-port", "18091"]) == 2
    assert capsys.readouterr().err == ("chc: error: --metrics-port and --dashboard-port: both 18091: give each its "
                                       "own port (it said 'Address already in use')\n")


def test_check_with_a_store_the_scenario_does_not_pin_is_one_line(tmp_path, capsys):
    """A scenario that pins its store and a --store naming another: the pin would win
    silently (a check of something else than asked); refused in one line, exit 2."""
    sc = tmp_path / "pinned.yaml"
    sc.write_text("name: pinned\nstore: memory\n")
    code = main(["check", CHAIN, str(sc), str(ROOT / "traces/pathspider/lan-2012.pcap.gz"), "--packets", "50",
                 "--store", "redis://127.0.0.1:1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "pins store: memory" in err and "\n" not in err


def test_check_with_the_scenario_left_out_says_the_scenario_is_missing(capsys):
    """``chc check CHAIN CAPTURE`` said 'missing: CAPTURE' (the capture had taken the
    scenario's place): a new user's trial."""
    assert main(["check", str(ROOT / "examples/paper_chain.yaml"),
                 str(ROOT / "traces/pathspider/lan-2012.pcap.gz"), "--seeds", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("chc: error: check needs CHAIN SCENARIO CAPTURE (missing: SCENARIO; ") and \
        "lan-2012.pcap.gz is a capture: the scenario comes between the chain and the capture" in err, err


def test_a_chain_spec_given_as_the_scenario_says_so(capsys):
    """A chain spec where the scenario goes said 'input: unknown field (known: name,
    parallelism, ...)', not that the file was read as a scenario (a new user's trial)."""
    chain = str(ROOT / "examples/paper_chain.yaml")
    assert main(["check", chain, chain, str(ROOT / "traces/pathspider/lan-2012.pcap.gz"), "--seeds", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"chc: error: {chain}: a chain spec (it has vertices), given where the scenario goes: "
                   "chc check CHAIN SCENARIO CAPTURE (e.g. examples/scenarios/parallel.yaml)"), err
