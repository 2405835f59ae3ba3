"""`chc run` end to end: bundled captures, bad input, the summary contract."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from chc.capture import open_capture
from chc.cli import main
from chc.packet import Packet, ip_bytes

ROOT = Path(__file__).resolve().parent.parent
CHAIN = str(ROOT / "examples/paper_chain.yaml")
LAN = str(ROOT / "traces/pathspider/lan-2012.pcap.gz")
GARBAGE = str(ROOT / "traces/pathspider/random-garbage.pcap")
CAPTURES = sorted(str(p) for p in (ROOT / "traces").rglob("*.pcap*"))

SUMMARY_KEYS = {"packets_in", "packets_out", "dropped", "malformed", "elapsed_s", "pps",
                "vertices", "alerts", "state_digest"}


def run(tmp_path, *args: str) -> dict:
    out = tmp_path / "summary.json"
    assert main(["run", *args, "--summary-json", str(out), "--no-progress", "-q"]) == 0
    return json.loads(out.read_text())


def test_bundled_captures_are_all_there():
    names = {Path(p).name for p in CAPTURES}
    assert {"lan-2012.pcap.gz", "random-garbage.pcap", "ftp_retr.pcap", "ssh_single-conn.pcap",
            "irc-basic.pcap", "pe_pe.pcap"} <= names


@pytest.mark.parametrize("capture", CAPTURES, ids=lambda p: Path(p).name)
def test_run_completes_on_every_capture(tmp_path, capture):
    s = run(tmp_path, CHAIN, capture)
    assert set(s) >= SUMMARY_KEYS
    n = sum(1 for _ in open_capture(capture))
    assert s["packets_in"] == n
    # Nothing is lost silently: every packet is out or counted as dropped.
    assert s["packets_out"] + s["dropped"] == n
    assert s["nf_errors"] == 0
    for v in s["vertices"].values():
        assert {"instances", "packets_in", "packets_out", "alerts"} <= set(v)


def test_lan_summary(tmp_path):
    s = run(tmp_path, CHAIN, LAN)
    assert s["packets_in"] == 62781
    assert s["non_ip"] == 743 and s["malformed"] == 0
    assert s["vertices"]["nat"]["packets_in"] == 62781 - 743
    assert s["vertices"]["trojan"]["packets_in"] == s["vertices"]["nat"]["packets_in"]
    assert len(s["state_digest"]) == 64


def test_garbage_frames_are_counted_not_fatal(tmp_path, capsys):
    s = run(tmp_path, CHAIN, GARBAGE)
    assert s["packets_in"] == 5000
    # Every frame is accounted for by the root's screening or by the NFs.
    assert s["malformed"] + s["non_ip"] + s["vertices"]["nat"]["packets_in"] == 5000
    assert s["non_ip"] > 4900                 # random EtherTypes: not IP
    assert s["packets_out"] + s["dropped"] == 5000
    strict = tmp_path / "strict.yaml"
    strict.write_text(Path(CHAIN).read_text().replace("non_ip: pass", "non_ip: drop"))
    s = run(tmp_path, str(strict), GARBAGE)
    assert s["dropped"] == 5000 and s["packets_out"] == 0
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("content", [b"", b"hello, this is not a capture\n", b"\x00" * 3])
def test_non_capture_is_one_line_error_exit_2(tmp_path, capsys, content):
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(content)
    assert main(["run", CHAIN, str(bad), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "bad.pcap" in err and err.startswith("chc: error:")


def test_bad_spec_is_exit_2(tmp_path, capsys):
    spec = tmp_path / "chain.yaml"
    spec.write_text("vertices: {a: {nf: nope}}\n")
    assert main(["run", str(spec), LAN, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "vertices.a.nf" in err and err.count("\n") == 1


def test_results_do_not_depend_on_batch_size(tmp_path):
    results = []
    for size in ("1", "7", "256", "5000"):
        out = tmp_path / f"out{size}.pcap"
        s = run(tmp_path, CHAIN, LAN, "--batch-size", size, "--out", str(out))
        results.append((s["alerts"], s["state_digest"], s["packets_out"], out.read_bytes()))
    assert all(r == results[0] for r in results[1:])


def _records(path):
    return [Packet(data, ts, i) for i, (ts, data) in enumerate(open_capture(path))]


NAT_ONLY = """
name: nat-only
vertices:
  nat: {nf: nat, config: {external_ip: 198.51.100.7, internal: [10.64.0.0/16], port_range: [20000, 59999]}}
"""


def test_nat_translation_is_consistent_both_ways(tmp_path):
    out = tmp_path / "nat.pcap"
    spec = tmp_path / "nat.yaml"
    spec.write_text(NAT_ONLY)
    run(tmp_path, str(spec), LAN, "--out", str(out))
    ext = ip_bytes("198.51.100.7")
    inside = ip_bytes("10.64.0.0")[:2]
    before, after = _records(LAN), _records(str(out))
    assert len(before) == len(after)      # parallelism 1, no drops: one to one, in order
    port_of: dict = {}
    ports_used: list[int] = []
    untranslated: set = set()         # connections opened from outside pass as they are
    translated = 0
    for a, b in zip(before, after, strict=True):
        if not a.is_ip or a.proto not in (6, 17) or (a.src[:2] == inside) == (a.dst[:2] == inside):
            continue
        outbound = a.src[:2] == inside
        key = (a.src, a.sport, a.dst, a.dport, a.proto) if outbound else (a.dst, a.dport, a.src, a.sport, a.proto)
        if not outbound and key not in port_of:
            untranslated.add(key)
        if key in untranslated:
            assert b.data == a.data
            continue
        if outbound:                       # source becomes external_ip:port
            assert b.src == ext and b.dst == a.dst and b.dport == a.dport
            port = b.sport
            if a.flags & 0x12 == 0x02 and port_of.get(key) != port:   # a SYN reopening the 5-tuple
                port_of.pop(key, None)
        else:                              # reply: destination becomes external_ip:port
            assert b.dst == ext and b.src == a.src and b.sport == a.sport
            port = b.dport
        translated += 1
        if key not in port_of:
            ports_used.append(port)
        assert port_of.setdefault(key, port) == port, f"connection {key} changed port"
    assert translated > 30000
    assert len(set(ports_used)) == len(ports_used)      # no two connections share a port


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
def test_output_has_no_checksum_errors_in_tshark(tmp_path):
    out = tmp_path / "out.pcap"
    run(tmp_path, CHAIN, LAN, "--out", str(out))
    prefs = ["-o", "ip.check_checksum:TRUE", "-o", "tcp.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE"]

    def count(filt: str) -> int:
        res = subprocess.run(["tshark", "-r", str(out), *prefs, "-Y", filt, "-T", "fields", "-e", "frame.number"],
                             capture_output=True, text=True, check=True)
        return len(res.stdout.split())

    assert count("ip.src == 198.51.100.7 || ip.dst == 198.51.100.7") > 30000    # the NAT rewrote
    assert count("tcp.checksum.status == 1") > 30000                          # tshark did verify
    assert count("ip.checksum.status == 0 || tcp.checksum.status == 0 || udp.checksum.status == 0") == 0


def test_console_script_help_and_run(tmp_path):
    exe = shutil.which("chc") or sys.executable
    cmd = [exe] if exe.endswith("chc") else [exe, "-m", "chc.cli"]
    res = subprocess.run([*cmd, "run", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "--summary-json" in res.stdout
    res = subprocess.run([*cmd, "run", CHAIN, str(ROOT / "traces/zeek/ftp_retr.pcap"), "--no-progress"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "67 packets in" in res.stdout and "state digest" in res.stdout


def test_check_takes_c_for_its_packet_count_as_run_does():
    """``chc run -c N`` and ``chc check --packets N`` named one thing two ways (a new user's trial)."""
    from chc.cli import build_parser

    args = build_parser().parse_args(["check", "chain.yaml", "scenario.yaml", "capture.pcap", "-c", "300"])
    assert args.packets == 300
    # ...and run and serve take check's --packets (chc run ... --packets 2000 was refused)
    assert build_parser().parse_args(["run", "chain.yaml", "capture.pcap", "--packets", "300"]).count == 300
    assert build_parser().parse_args(["serve", "chain.yaml", "--capture", "c.pcap", "--packets", "30"]).count == 30


def test_state_json_prints_connection_keys_and_the_digest_keeps_hex(tmp_path):
    """--state-json wrote a connection's key as 26 hex digits (a new user's trial)."""
    from chc.summary import canonical

    out = tmp_path / "state.json"
    summary = tmp_path / "s.json"
    assert main(["run", str(ROOT / "examples/paper_chain.yaml"), LAN, "-c", "500", "--no-progress", "-q",
                 "--state-json", str(out), "--summary-json", str(summary)]) == 0
    keys = [k for k, _ in json.loads(out.read_text())["nat"]["mapping"]]
    assert keys and all(" <-> " in k and k.endswith((" tcp", " udp")) for k in keys), keys[:3]
    assert canonical(b"\x0a\x00\x00\x01\x04\xd2\xc0\x00\x02\x09\x00\x50\x06") == "0a00000104d2c00002090050" "06"


def test_a_capture_given_for_the_chain_says_the_capture_comes_last(capsys):
    """It said "not valid YAML ('utf-8' codec can't decode byte 0xd4 ...)" (a new user's trial)."""
    assert main(["run", LAN, CHAIN]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("a capture, not YAML: the capture comes last (chc run CHAIN CAPTURE, "
                        "chc check CHAIN SCENARIO CAPTURE)"), err


def test_model_t_with_several_instances_of_cross_flow_state_is_said(tmp_path, capsys):
    """In T each instance keeps its own copy of cross-flow state (the NAT's port pool, the
    port-scan detector's per-host likelihood): a new user's --parallelism 3 missed a planted
    scanner without a word.  Said once, naming the vertices and objects; not with parallelism 1."""
    run(tmp_path, CHAIN, LAN, "-c", "50", "--model", "T", "--parallelism", "3")
    err = capsys.readouterr().err
    assert err.count("chc: warning: model T keeps a copy of each instance's cross-flow state") == 1, err
    assert "portscan (likelihood)" in err and "nat (ports," in err
    run(tmp_path, CHAIN, LAN, "-c", "50", "--model", "T")
    run(tmp_path, CHAIN, LAN, "-c", "50", "--parallelism", "3")
    assert "cross-flow" not in capsys.readouterr().err


@pytest.mark.parametrize("runtime", ["sim", "proc"])
def test_a_serve_in_model_t_with_several_instances_of_cross_flow_state_says_so(capsys, runtime):
    """As chc run does (a new user's trial: chc serve said nothing)."""
    assert main(["serve", CHAIN, "--capture", LAN, "--rate", "5000", "-c", "100", "--quiet", "--model", "T",
                 "--parallelism", "2", "--runtime", runtime]) == 0
    err = capsys.readouterr().err
    assert err.count("chc: warning: model T keeps a copy of each instance's cross-flow state") == 1, err


def test_summary_alerts_show_another_roots_clock_as_root_and_sequence(tmp_path, capsys):
    """A root's id is in its clocks' high bits: root 1's alert showed `clock 281,474,976,711,587`
    (a new user's trial); now `1:seq`, as chc check prints clocks."""
    import yaml
    spec = yaml.safe_load(Path(CHAIN).read_text())
    spec["roots"] = 2
    chain = tmp_path / "two.yaml"
    chain.write_text(yaml.safe_dump(spec))
    assert main(["run", str(chain), str(ROOT / "traces/scans/nmap-syn-scan.pcap"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    alerts = out.split("alerts (", 1)[1].splitlines()[1:2]
    assert alerts and re.match(r"\s+clock\s+1:[\d,]+\s+portscan", alerts[0]), out


def test_options_the_run_does_not_use_are_said_and_a_negative_log_limit_refused(tmp_path, capsys):
    """A new user's --store-ca with the memory store and --log-limit with --packet-log off
    were taken without a word; --log-limit -1 was taken though the help defines only 0."""
    run(tmp_path, CHAIN, LAN, "-c", "5", "--store-ca", str(tmp_path / "ca.pem"))
    assert "chc: warning: --store-ca is for a TLS store (rediss://): not used with --store memory" \
        in capsys.readouterr().err
    run(tmp_path, CHAIN, LAN, "-c", "5", "--packet-log", "off", "--log-limit", "10")
    assert "--log-limit bounds the packet log: not used with --packet-log off" in capsys.readouterr().err
    run(tmp_path, CHAIN, LAN, "-c", "5", "--log-limit", "0")
    assert "warning" not in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["run", CHAIN, LAN, "--log-limit", "-1"])
    assert info.value.code == 2 and "expected an integer >= 0" in capsys.readouterr().err
