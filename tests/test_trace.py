"""`chc trace`: synthetic traces, inspect, merge/rewrite, Trojan and scan scenarios.

Every output is re-parsed: statistics recounted, checksums verified from scratch
on every IPv4 TCP/UDP frame (and by tshark when it is installed), ground truth
checked against the packets and against the detectors' alerts in `chc run`.
"""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from chc.capture import open_capture
from chc.cli import main
from chc.packet import (
    PROTO_TCP,
    PROTO_UDP,
    TCP_ACK,
    TCP_FIN,
    TCP_RST,
    TCP_SYN,
    Packet,
    ip_str,
    ipv4_header_ok,
    l4_checksum_ok,
)
from chc.trace.gen import PROFILES
from chc.trace.ops import parse_offset
from chc.trace.scan import parse_ports
from chc.trace.stats import inspect_capture, render

ROOT = Path(__file__).resolve().parent.parent
LAN = str(ROOT / "traces/pathspider/lan-2012.pcap.gz")
NMAP = str(ROOT / "traces/scans/nmap-syn-scan.pcap")
TROJAN_CHAIN = str(ROOT / "examples/trojan.yaml")
PORTSCAN_CHAIN = str(ROOT / "examples/portscan.yaml")


def packets(path) -> list[Packet]:
    with open_capture(path) as reader:
        return [Packet(data, ts, i) for i, (ts, data) in enumerate(reader)]


def assert_checksums_valid(path) -> int:
    """Every IPv4 TCP/UDP frame verifies from scratch; returns how many were checked."""
    checked = 0
    for p in packets(path):
        if p.l3 == 4 and p.malformed is None:
            assert ipv4_header_ok(p), f"{path}: bad IPv4 header checksum in frame {p.index}"
            if p.proto in (PROTO_TCP, PROTO_UDP):
                assert l4_checksum_ok(p) is True, f"{path}: bad L4 checksum in frame {p.index}"
                checked += 1
    return checked


def tshark_bad_checksums(path) -> int:
    res = subprocess.run(
        ["tshark", "-n", "-r", str(path), "-o", "tcp.analyze_sequence_numbers:FALSE",
         "-o", "tcp.desegment_tcp_streams:FALSE",
         "-o", "ip.check_checksum:TRUE", "-o", "tcp.check_checksum:TRUE",
         "-o", "udp.check_checksum:TRUE", "-Y",
         'ip.checksum.status=="Bad" || tcp.checksum.status=="Bad" || udp.checksum.status=="Bad"'],
        capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return len([line for line in res.stdout.splitlines() if line.strip()])


needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")


def run_chain(tmp_path, chain: str, capture: str) -> list[dict]:
    out = tmp_path / f"summary-{Path(capture).name}-{Path(chain).stem}.json"
    assert main(["run", chain, capture, "--summary-json", str(out), "--no-progress", "-q"]) == 0
    return json.loads(out.read_text())["alerts"]


# -- gen ---------------------------------------------------------------------------------

def gen(path, *args: str) -> None:
    assert main(["trace", "gen", "-o", str(path), "--no-progress", *args]) == 0


def test_gen_is_deterministic_by_seed(tmp_path, capsys):
    args = ("--profile", "trace2", "--packets", "20000", "--connections", "500")
    gen(tmp_path / "a.pcap", *args, "--seed", "3")
    gen(tmp_path / "b.pcap", *args, "--seed", "3")
    gen(tmp_path / "c.pcap", *args, "--seed", "4")
    gen(tmp_path / "a.pcap.gz", *args, "--seed", "3")
    a = (tmp_path / "a.pcap").read_bytes()
    assert a == (tmp_path / "b.pcap").read_bytes()
    assert a != (tmp_path / "c.pcap").read_bytes()
    assert gzip.decompress((tmp_path / "a.pcap.gz").read_bytes()) == a
    assert "20,000 packets, 500 connections" in capsys.readouterr().out


@pytest.fixture(scope="module", params=["trace1", "trace2"])
def small_trace(request, tmp_path_factory):
    """The profile at 1% of its size (trace1: 38K packets / 17 connections; trace2: 64K / 1,990)."""
    path = tmp_path_factory.mktemp("gen") / f"{request.param}.pcap"
    gen(path, "--profile", request.param, "--scale", "0.01", "--seed", "11")
    return request.param, path


def test_gen_profile_statistics_within_5_percent(small_trace):
    name, path = small_trace
    prof = PROFILES[name]
    s = inspect_capture(path)
    want_packets = round(prof.packets * 0.01)
    want_conns = round(prof.connections * 0.01)
    assert abs(s["packets"] - want_packets) <= 0.05 * want_packets
    assert abs(s["flows"] - want_conns) <= 0.05 * want_conns
    assert abs(s["sizes"]["p50"] - prof.median) <= 0.05 * prof.median
    # By construction the counts are exact, and no 5-tuple is used twice.
    assert (s["packets"], s["flows"], s["five_tuples"]) == (want_packets, want_conns, want_conns)
    assert s["malformed"] == 0 and s["non_ip"] == 0 and s["out_of_order"] == 0
    assert s["protocols"].keys() == {"tcp", "udp"}
    assert s["tcp_syns"] == s["flows_by_protocol"]["tcp"]


def test_gen_structure(small_trace):
    """Handshakes, FIN and RST teardowns, both directions, heavy-tailed flow sizes, many ports."""
    name, path = small_trace
    size: Counter = Counter()
    dirs: dict = {}
    flags: dict = {}
    ports = set()
    for p in packets(path):
        a, b = (p.src, p.sport), (p.dst, p.dport)
        key = (p.proto, min(a, b), max(a, b))
        size[key] += 1
        dirs.setdefault(key, set()).add(a)
        if p.proto == PROTO_TCP:
            flags.setdefault(key, []).append(p.flags)
        ports.add(min(p.sport, p.dport))
    tcp = [k for k in size if k[0] == PROTO_TCP]
    for k in tcp:
        f = flags[k]
        assert f[:3] == [TCP_SYN, TCP_SYN | TCP_ACK, TCP_ACK]
        assert f[-1] & TCP_RST or (f[-3] & TCP_FIN and f[-2] & TCP_FIN and f[-1] == TCP_ACK)
        assert len(dirs[k]) == 2
    fins = sum(1 for k in tcp if not flags[k][-1] & TCP_RST)
    assert 0 < fins < len(tcp) or len(tcp) < 20
    sizes = sorted(size.values())
    assert sizes[-1] > 20 * sizes[len(sizes) // 2]          # heavy tail
    if name == "trace2":
        assert fins < len(tcp)                               # some RSTs
        assert len(ports) > 20
        assert sum(1 for k in size if k[0] == PROTO_UDP) > 0.05 * len(size)


def test_gen_checksums_valid(small_trace):
    _, path = small_trace
    assert assert_checksums_valid(path) > 30000


@needs_tshark
def test_gen_tshark_checksums(small_trace):
    assert tshark_bad_checksums(small_trace[1]) == 0


def test_gen_rejects_impossible_sizes(tmp_path, capsys):
    assert main(["trace", "gen", "--packets", "10", "--connections", "100", "-o", str(tmp_path / "x.pcap"),
                 "--no-progress"]) == 2
    assert "too few" in capsys.readouterr().err


# -- inspect -----------------------------------------------------------------------------

def test_inspect_lan_exact_counts(capsys):
    # Counted independently: capinfos (packets), tshark -z conv,tcp / conv,udp
    # (5,959 TCP and 137 UDP conversations), tshark frame.len (nearest-rank percentiles).
    assert main(["trace", "inspect", LAN, "--json", "--no-progress"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["packets"] == 62781 and s["bytes"] == 4626848
    assert s["flows_by_protocol"]["tcp"] == 5959 and s["flows_by_protocol"]["udp"] == 137
    assert s["flows"] == 6108 and s["five_tuples"] == 6024
    assert s["hosts"] == 25
    assert s["non_ip"] == 743 and s["malformed"] == 0 and s["ipv4"] == 62038
    assert {k: s["sizes"][k] for k in ("p5", "p50", "p95")} == {"p5": 62, "p50": 66, "p95": 90}
    assert s["protocols"] == {"icmp": 105, "igmp": 29, "tcp": 60873, "udp": 1031}
    assert s["duration_s"] == pytest.approx(3598.996093)


def test_inspect_text_and_small_capture(capsys):
    assert main(["trace", "inspect", str(ROOT / "traces/zeek/pe_pe.pcap"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "packets      535" in out and "flows        6  (tcp 6" in out and "hosts        2" in out
    assert "p50 116" in out and "p95 1514" in out


def test_inspect_garbage_counts_malformed():
    s = inspect_capture(ROOT / "traces/pathspider/random-garbage.pcap")
    assert s["packets"] == 5000
    assert s["malformed"] + s["non_ip"] + s["ipv4"] + s["ipv6"] == 5000
    assert s["non_ip"] > 4000
    # (rendered: no empty protocol list, no "(; 0 distinct" from an empty flow breakdown)
    text = render(s)
    assert "flows        0  (0 distinct 5-tuples)" in text and "protocols    none (no IP packet)" in text


def test_inspect_bad_file(tmp_path, capsys):
    (tmp_path / "x.pcap").write_text("hello")
    assert main(["trace", "inspect", str(tmp_path / "x.pcap")]) == 2
    assert "not a pcap" in capsys.readouterr().err


# -- merge / rewrite -----------------------------------------------------------------------

def test_parse_offset_and_ports():
    assert parse_offset("+1.5s") == 1_500_000_000
    assert parse_offset("-200ms") == -200_000_000
    assert parse_offset("30us") == 30_000 and parse_offset("12ns") == 12 and parse_offset("2") == 2 * 10**9
    with pytest.raises(ValueError):
        parse_offset("1.5 minutes")
    assert parse_ports("1-3,80, 22") == [1, 2, 3, 22, 80]
    with pytest.raises(ValueError):
        parse_ports("0-10")


def test_merge_with_shift_and_align(tmp_path):
    a, b = str(ROOT / "traces/zeek/irc-basic.pcap"), str(ROOT / "traces/zeek/ssh_single-conn.pcap")
    out = tmp_path / "m.pcap"
    assert main(["trace", "merge", a, b, "-o", str(out), "--align", "--shift", "ssh_single-conn.pcap=+1.5s"]) == 0
    got = [(ts, d) for ts, d in open_capture(out)]
    assert len(got) == 34 + 94
    ts = [t for t, _ in got]
    assert ts == sorted(ts)
    irc0 = next(iter(open_capture(a)))[0]
    ssh = [t for t, d in got if Packet(d).dport == 22 or Packet(d).sport == 22]
    assert ssh[0] == irc0 + 1_500_000_000
    assert main(["trace", "merge", a, b, "-o", str(out), "--shift", "nope=1s"]) == 2


def test_rewrite_keeps_checksums_valid(tmp_path):
    out = tmp_path / "r.pcap"
    assert main(["trace", "rewrite", str(ROOT / "traces/zeek/pe_pe.pcap"), "-o", str(out), "--fix-checksums",
                 "--map", "192.168.1.31=10.1.2.3", "--map", "192.168.1.32=203.0.113.9"]) == 0
    pk = packets(out)
    assert {ip_str(p.src) for p in pk} == {"10.1.2.3", "203.0.113.9"}
    assert assert_checksums_valid(out) == 535


# -- Trojan scenario -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trojan(tmp_path_factory):
    d = tmp_path_factory.mktemp("trojan")
    out, truth = d / "trojan.pcap", d / "truth.json"
    assert main(["trace", "trojan", LAN, "-o", str(out), "--count", "3", "--truth", str(truth)]) == 0
    return out, json.loads(truth.read_text())


def test_trojan_truth_matches_packets(trojan):
    out, truth = trojan
    pk = packets(out)
    assert len(pk) == truth["packets"] == 62781 + truth["planted_packets"]
    hosts = [i["host"] for i in truth["instances"]]
    assert len(set(hosts)) == 3
    lan_hosts = {ip_str(p.src) for p in packets(LAN) if p.l3} | {ip_str(p.dst) for p in packets(LAN) if p.l3}
    assert not set(hosts) & lan_hosts
    for inst in truth["instances"]:
        ssh, ftp, irc = (pk[inst["steps"][k]] for k in ("ssh", "ftp", "irc"))
        assert inst["steps"]["ssh"] < inst["steps"]["ftp"] < inst["steps"]["irc"]
        assert ip_str(ssh.src) == ip_str(ftp.src) == ip_str(irc.src) == inst["host"]
        assert ssh.dport == 22 and ssh.flags == TCP_SYN
        assert ftp.dport == 21 and bytes(ftp.payload).startswith(b"RETR NOTEPAD.EXE")
        assert irc.dport == 6667 and irc.flags == TCP_SYN
        assert ip_str(ftp.dst) == inst["servers"]["ftp"]
        # The step packets are the first of their kind for the host.
        mine = [p for p in pk if ip_str(p.src) == inst["host"]]
        assert mine[0].index <= inst["steps"]["ssh"]
        assert min(p.index for p in mine if p.dport == 22) == inst["steps"]["ssh"]
        assert min(p.index for p in mine if p.dport == 6667) == inst["steps"]["irc"]
        # Every planted packet of the instance sits between its first and last index.
        assert inst["packets"] == len([p for p in pk if inst["host"] in (ip_str(p.src), ip_str(p.dst))])
    # The PASV replies name the rewritten server, so a client would follow them.
    pasv = [bytes(p.payload) for p in pk if p.sport == 21 and bytes(p.payload).startswith(b"227")]
    assert pasv and all(b"(203,0,113,21," in x for x in pasv)
    ts = [p.ts for p in pk]
    assert sum(1 for x, y in zip(ts, ts[1:], strict=False) if y < x) == 32    # lan-2012's own


def test_trojan_checksums_valid(trojan):
    assert assert_checksums_valid(trojan[0]) > 60000


@needs_tshark
def test_trojan_tshark_checksums(trojan):
    assert tshark_bad_checksums(trojan[0]) == 0


def test_trojan_detector_alerts_match_truth(trojan, tmp_path):
    out, truth = trojan
    alerts = run_chain(tmp_path, TROJAN_CHAIN, str(out))
    got = [(a["kind"], a["host"], a["clock"]) for a in alerts]
    want = [("trojan", i["host"], i["steps"]["irc"]) for i in truth["instances"]]
    assert got == want
    assert [(a["host"], a["clock"]) for a in truth["expected_alerts"]] == [(h, c) for _, h, c in want]
    assert all(i["alert_clock"] == i["steps"]["irc"] for i in truth["instances"])


def test_trojan_detector_silent_on_background(tmp_path):
    assert run_chain(tmp_path, TROJAN_CHAIN, LAN) == []


def test_trojan_positions_hosts_and_gap(tmp_path):
    out, truth_path = tmp_path / "t.pcap", tmp_path / "t.json"
    assert main(["trace", "trojan", LAN, "-o", str(out), "--at", "5000,40000", "--host", "10.64.77.1,10.64.77.2",
                 "--gap-packets", "0", "--truth", str(truth_path)]) == 0
    truth = json.loads(truth_path.read_text())
    assert [i["host"] for i in truth["instances"]] == ["10.64.77.1", "10.64.77.2"]
    pk = packets(out)
    for inst in truth["instances"]:
        s = inst["steps"]
        # gap 0: the three steps follow each other directly.
        assert s["ftp"] == s["ssh"] + 1 and s["irc"] == s["ftp"] + 1
        assert ip_str(pk[s["ssh"]].src) == inst["host"]
    alerts = run_chain(tmp_path, TROJAN_CHAIN, str(out))
    assert [(a["host"], a["clock"]) for a in alerts] == [(i["host"], i["steps"]["irc"]) for i in truth["instances"]]
    assert main(["trace", "trojan", LAN, "-o", str(out), "--at", "99999999", "--truth", str(truth_path)]) == 2


# -- scan scenario ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    d = tmp_path_factory.mktemp("scan")
    out, truth = d / "scan.pcap", d / "truth.json"
    assert main(["trace", "scan", LAN, "-o", str(out), "--scanners", "3", "--ports", "1-120", "--rate", "200",
                 "--truth", str(truth)]) == 0
    return out, json.loads(truth.read_text())


def test_scan_truth_matches_packets(scan):
    out, truth = scan
    pk = packets(out)
    assert len(pk) == truth["packets"] == 62781 + truth["planted_packets"]
    for sc in truth["scanners"]:
        syns = [p for p in pk if ip_str(p.src) == sc["host"] and p.flags == TCP_SYN]
        assert len(syns) == sc["probes"] == 120 * len(sc["targets"])
        assert {ip_str(p.dst) for p in syns} == set(sc["targets"])
        assert {p.dport for p in syns} == set(range(1, 121))
        answers = [p for p in pk if ip_str(p.dst) == sc["host"]]
        assert sum(1 for p in answers if p.flags == TCP_SYN | TCP_ACK) == sc["open"]
        assert sum(1 for p in answers if p.flags == TCP_RST | TCP_ACK) == sc["closed"]
        assert sc["open"] + sc["closed"] + sc["filtered"] == sc["probes"]
        assert pk[sc["first_index"]].flags == TCP_SYN and ip_str(pk[sc["first_index"]].src) == sc["host"]
    ts = [p.ts for p in pk]
    assert sum(1 for x, y in zip(ts, ts[1:], strict=False) if y < x) == 32    # lan-2012's own


def test_scan_checksums_valid(scan):
    assert assert_checksums_valid(scan[0]) > 60000


@needs_tshark
def test_scan_tshark_checksums(scan):
    assert tshark_bad_checksums(scan[0]) == 0


def test_scan_detector_flags_exactly_the_scanners(scan, tmp_path):
    out, truth = scan
    alerts = run_chain(tmp_path, PORTSCAN_CHAIN, str(out))
    assert all(a["kind"] == "portscan" for a in alerts)
    flagged = sorted(a["host"] for a in alerts)
    assert flagged == sorted(x["host"] for x in truth["scanners"]) == sorted(truth["expected_alerts"])


def test_portscan_silent_on_lan_background(tmp_path):
    # Every one of lan-2012's 5,971 SYNs is answered by a SYN-ACK: no host is a scanner.
    assert run_chain(tmp_path, PORTSCAN_CHAIN, LAN) == []


def test_scan_truth_predicts_a_missed_scanner(tmp_path):
    """With most probes answered TRW declares the scanner benign; the truth says so."""
    out, truth_path = tmp_path / "s.pcap", tmp_path / "s.json"
    assert main(["trace", "scan", LAN, "-o", str(out), "--ports", "1-20", "--answered", "0.97",
                 "--truth", str(truth_path)]) == 0
    truth = json.loads(truth_path.read_text())
    assert truth["expected_alerts"] == [] and truth["scanners"][0]["trw_flagged"] is False
    assert run_chain(tmp_path, PORTSCAN_CHAIN, str(out)) == []


# -- the real nmap capture -------------------------------------------------------------------

def test_real_nmap_scan_is_flagged(tmp_path):
    s = inspect_capture(NMAP)
    assert s["packets"] == 1242 and s["non_ip"] == 24
    alerts = run_chain(tmp_path, PORTSCAN_CHAIN, NMAP)
    assert [(a["kind"], a["host"]) for a in alerts] == [("portscan", "10.99.0.1")]
    syns = [p for p in packets(NMAP) if p.flags == TCP_SYN]
    assert {ip_str(p.src) for p in syns} == {"10.99.0.1"} and len({p.dst for p in syns}) == 6


def test_real_nmap_scan_checksums_valid():
    assert assert_checksums_valid(NMAP) == 1218


@needs_tshark
def test_tshark_check_finds_bad_checksums():
    # pe_pe.pcap was captured on the FTP server with checksum offload: 14 of its
    # frames carry unfinished checksums, so the check above can fail.
    assert tshark_bad_checksums(ROOT / "traces/zeek/pe_pe.pcap") == 14


@pytest.mark.parametrize("argv", [
    ["inspect", "{raw}"], ["rewrite", "{raw}", "-o", "{out}", "--map", "192.168.6.110=10.1.1.1"],
    ["trojan", "{raw}", "-o", "{out}", "--count", "1", "--truth", "{truth}"],
    ["scan", "{raw}", "-o", "{out}", "--truth", "{truth}"], ["merge", "{raw}", "-o", "{out}"],
])
def test_a_capture_that_is_not_ethernet_is_refused_in_one_line(tmp_path, capsys, argv):
    """The tools parse Ethernet frames: on raw IP, inspect counted no IPv4 and trojan
    wrote Ethernet frames into a raw-IP file, exit 0 (found by a new-user trial)."""
    from chc.capture import LINKTYPE_RAW, CaptureWriter
    raw = tmp_path / "raw.pcap"
    with open_capture(str(ROOT / "traces/zeek/irc-basic.pcap")) as reader, \
            CaptureWriter(str(raw), linktype=LINKTYPE_RAW) as w:
        for ts, frame in reader:
            w.write(ts, frame[14:])
    names = {"raw": str(raw), "out": str(tmp_path / "o.pcap"), "truth": str(tmp_path / "t.json")}
    assert main(["trace", *(a.format(**names) for a in argv)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"chc: error: {raw}: link type 101 (RAW (raw IPv4/IPv6)): chc trace reads Ethernet captures "
                   "only (chc run reads this one)")
    assert not (tmp_path / "o.pcap").exists()


def test_a_capture_to_a_terminal_is_refused(monkeypatch, capsys):
    """``chc trace merge ... -o -`` wrote binary pcap onto the terminal (chc run --out -
    refuses that); a pipe or a redirect is fine."""
    import sys
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert main(["trace", "merge", str(ROOT / "traces/zeek/irc-basic.pcap"), "-o", "-"]) == 2
    assert "standard output is a terminal" in capsys.readouterr().err


@pytest.mark.parametrize("sub", [["inspect"], ["rewrite", "--map", "10.0.0.1=10.0.0.2", "-o", "OUT"]])
def test_a_capture_that_stops_early_is_exit_3_as_in_chc_run(tmp_path, capsys, sub):
    """They printed the capture's warning and exited 0 (a new user's trial); chc run exits 3."""
    whole = (Path(__file__).resolve().parent.parent / "traces/zeek/http_get.pcap").read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(whole[:-30])
    argv = ["trace", sub[0], str(cut), *[str(tmp_path / "out.pcap") if a == "OUT" else a for a in sub[1:]]]
    assert main(argv) == 3
    assert "stopped early (last record truncated): the result covers the part before it (exit 3)" in \
        capsys.readouterr().err


def test_a_closed_pipe_ends_chc_trace_quietly_as_chc_run(tmp_path):
    """'chc: error: output: Broken pipe', exit 2, where chc run ... | head exits 141 quietly."""
    import sys
    chc = Path(sys.executable).parent / "chc"
    if not chc.exists():
        pytest.skip("no chc console script beside this interpreter")
    r = subprocess.run(f"{chc} trace gen --profile trace1 --packets 20000 -o - | head -c 100 >/dev/null; "
                       "echo ${PIPESTATUS[0]}", shell=True, executable="/bin/bash", capture_output=True, text=True,
                       timeout=120)
    assert r.stdout.strip() == "141" and "error" not in r.stderr, r.stderr


def test_scan_says_when_the_background_has_fewer_targets_than_asked(tmp_path, capsys):
    """--targets 100 on a background of 18 hosts scanned 18 without a word (a new user's trial)."""
    bg = Path(__file__).resolve().parent.parent / "traces/zeek/http_get.pcap"
    assert main(["trace", "scan", str(bg), "-o", str(tmp_path / "s.pcap"), "--truth", str(tmp_path / "t.json"),
                 "--targets", "100", "--ports", "20-30", "--any-order"]) == 0
    truth = json.loads((tmp_path / "t.json").read_text())
    assert truth["targets_asked"] == 100 and truth["targets_available"] < 100
    assert all(len(x["targets"]) == truth["targets_available"] for x in truth["scanners"])
    assert f"--targets 100: the background has {truth['targets_available']} hosts to scan" in capsys.readouterr().err
