"""``chc serve``: a capture replayed in real time, graceful stops, metrics, the
dashboard (in a real headless Chromium when Playwright and Debian's ``chromium``
are installed; ``.ci/run`` installs both).

No timing is in any pass/fail condition: rates and durations only decide how
many packets a run sees, and the checks hold for any number above one pass.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from chc.capture import open_capture
from chc.observe import Observer, graph, status_line
from chc.runtime.sim import SimRuntime
from chc.serve import Replay
from chc.spec import load_spec
from conftest import _unavailable

ROOT = Path(__file__).resolve().parent.parent
PORTSCAN = ROOT / "examples" / "portscan.yaml"
SCAN = ROOT / "traces" / "scans" / "nmap-syn-scan.pcap"
PAPER = ROOT / "examples" / "paper_chain.yaml"
LAN = ROOT / "traces" / "pathspider" / "lan-2012.pcap.gz"
CHROMIUM = "/usr/bin/chromium"
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}


def _chc(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "chc.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Serve:
    """``chc serve ...`` in the background; stderr lines read up to the URLs."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "chc.cli", "serve", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=ENV)
        self.lines: list[str] = []

    def wait_line(self, start: str) -> str:
        while True:
            line = self.proc.stderr.readline()
            assert line, f"chc serve ended (exit {self.proc.wait()}) before {start!r}: {self.lines}"
            self.lines.append(line)
            if line.startswith(start):
                return line.strip()

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        out, err = self.proc.communicate(timeout=60)
        return self.proc.returncode, out, "".join(self.lines) + err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=30)


@pytest.fixture
def serves() -> Iterator[list[Serve]]:
    made: list[Serve] = []
    yield made
    for s in made:
        s.kill()


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def _metrics(text: str) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


# -- the replay source -----------------------------------------------------------------

def test_a_looped_replay_keeps_time_and_indexes_increasing():
    with open_capture(SCAN) as r:
        one = list(r)
    replay = Replay(str(SCAN), rate=1000.0, loop=True)
    got = []
    while len(got) < 3 * len(one) + 5:
        pkts, _, _ = replay.take(500, len(got), -10**18)     # a start long ago: everything is due
        got += pkts
    replay.close()
    assert [p.index for p in got] == list(range(len(got)))
    ts = [p.ts for p in got]
    assert all(a <= b for a, b in zip(ts, ts[1:], strict=False))
    # Each pass is the capture shifted by one span plus one mean gap, frames unchanged.
    span = one[-1][0] - one[0][0]
    gap = span // (len(one) - 1)
    n = len(one)
    assert got[n].ts == one[0][0] + span + gap and got[2 * n].ts == one[0][0] + 2 * (span + gap)
    assert [bytes(p.data) for p in got[n:2 * n]] == [d for _, d in one]
    assert [p.vt for p in got[:3]] == [0, 1_000_000, 2_000_000]      # 1,000 packets/s
    assert replay.passes == 4


def test_a_replay_hands_over_only_what_is_due():
    replay = Replay(str(SCAN), rate=1000.0)
    t0 = time.monotonic_ns()
    pkts, first, total = replay.take(10_000, 0, t0)
    assert len(pkts) < 100             # at 1,000 packets/s only the first few are due at once
    assert first == t0 and total == t0 * len(pkts) + sum(p.vt for p in pkts)
    pkts, _, _ = replay.take(10_000, len(pkts), t0 - 10**12)
    assert replay.exhausted is True and replay.passes == 1
    replay.close()


# -- serve end to end ------------------------------------------------------------------

def test_serve_once_equals_run(tmp_path):
    """A capture replayed once in real time gives chc run's results."""
    a, b = tmp_path / "serve.json", tmp_path / "run.json"
    res = _chc("serve", str(PORTSCAN), "--capture", str(SCAN), "--rate", "20000", "--summary-json", str(a))
    assert res.returncode == 0, res.stderr
    assert _chc("run", str(PORTSCAN), str(SCAN), "--summary-json", str(b), "-q").returncode == 0
    served, ran = json.loads(a.read_text()), json.loads(b.read_text())
    assert sorted(served) == sorted(ran)
    for key in ("packets_in", "packets_out", "dropped", "non_ip", "vertices", "alerts", "state_digest", "log"):
        assert served[key] == ran[key], key
    assert served["capture"]["replay"] == {"rate": 20000.0, "loop": False, "passes": 1, "stopped_by": "end"}
    assert "chain 'portscan'" in res.stdout and "state digest" in res.stdout


CRASH = """\
name: serve-crash
parallelism: 2
delays: {portscan: "uniform:50:150"}
events:
  - {at: {packets: 400}, do: crash, target: "portscan[0]"}
"""


def _crash_run(tmp_path) -> tuple[dict, dict]:
    scenario = tmp_path / "crash.yaml"
    scenario.write_text(CRASH)
    a, b = tmp_path / "serve.json", tmp_path / "run.json"
    res = _chc("serve", str(PORTSCAN), "--capture", str(SCAN), "--rate", "5000", "--scenario", str(scenario),
               "--summary-json", str(a), "-q")
    assert res.returncode == 0, res.stderr
    assert _chc("run", str(PORTSCAN), str(SCAN), "--summary-json", str(b), "-q").returncode == 0
    return json.loads(a.read_text()), json.loads(b.read_text())


def test_a_scenario_crashes_an_instance_during_a_replay(tmp_path):
    """--scenario: a detector instance crashes mid-replay and fails over (§5.4); the
    run says what happened and flags the scanner as chc run does."""
    served, ran = _crash_run(tmp_path)
    assert [(e["kind"], e["vertex"], e["instance"]) for e in served["events"]] == [
        ("crash", "portscan", 0), ("failover", "portscan", 0)]
    assert served["vertices"]["portscan"]["instances"] == 2 and served["packets_in"] == ran["packets_in"]
    # The scanner is flagged as chc run flags it; at which packet may differ: with two
    # instances in real time a read of the verdict may come before the other's flag, a
    # valid serialization (the next test checks COE; CI once saw clock 35 against 27).
    assert [(a["kind"], a["host"]) for a in served["alerts"]] == [
        (a["kind"], a["host"]) for a in ran["alerts"]]
    res = _chc("serve", str(PORTSCAN), "--live", "a:b", "--scenario", str(tmp_path / "crash.yaml"))
    assert res.returncode == 2 and "--live takes no --scenario" in res.stderr


def test_a_crash_during_a_replay_keeps_coe_and_counts_each_packet_once(tmp_path):
    """The scenario serve applies, checked by chc check in the sim: the failover's
    replay reads the shared likelihood as the failed instance did (the store's read
    log), so nothing diverges; and the served summary counts each packet once
    (the replay's packets were counted by the failed instance).  Its outputs need
    not be chc run's: with two instances a read of the scanner's verdict may come
    before another instance's flag, a valid serialization (docs/coe.md)."""
    served, _ = _crash_run(tmp_path)
    assert served["packets_out"] + served["dropped"] == served["packets_in"]
    res = _chc("check", str(PORTSCAN), str(tmp_path / "crash.yaml"), str(SCAN), "--seeds", "2")
    assert res.returncode == 0, res.stdout + res.stderr



def test_a_crash_deferred_to_the_end_of_a_serve_is_failed_over_in_its_drain(tmp_path):
    """scale-crash.yaml served at 3,000 packets/s: crashes waiting for their vertex's
    hand-overs ran in the drain, at an infinite virtual time, and serve exited 1 with
    OverflowError (a new user's trial, every time).  Each crash is failed over, and
    every packet is accounted for."""
    summary = tmp_path / "s.json"
    res = _chc("serve", str(PAPER), "--scenario", str(ROOT / "examples" / "scenarios" / "scale-crash.yaml"),
               "--capture", str(LAN), "--rate", "3000", "-c", "3000", "-q", "--summary-json", str(summary))
    assert res.returncode == 0, res.stderr[-2000:]
    served = json.loads(summary.read_text())
    assert served["packets_in"] == 3000 and served["packets_out"] + served["dropped"] == 3000
    crashes = [(e["vertex"], e["instance"]) for e in served["events"] if e["kind"] == "crash"]
    assert crashes and sorted(crashes) == sorted((e["vertex"], e["instance"]) for e in served["events"]
                                                 if e["kind"] == "failover")

def test_serve_in_a_loop_for_a_duration_with_metrics(tmp_path, serves):
    pytest.importorskip("prometheus_client")
    port = _free_port()
    summary = tmp_path / "s.json"
    s = Serve(str(PORTSCAN), "--capture", str(SCAN), "--rate", "1500", "--loop", "--duration", "4",
              "--metrics-port", str(port), "--summary-json", str(summary), "--status", "1")
    serves.append(s)
    assert s.wait_line("chc: serve:").startswith(f"chc: serve: {SCAN} at 1,500 packets/s, in a loop")
    assert s.wait_line("chc: metrics at") == f"chc: metrics at http://127.0.0.1:{port}/metrics"
    s.wait_line("chc serve: ")                  # a status line: a sample was taken
    s.wait_line("chc serve: ")
    scraped = _metrics(_get(f"http://127.0.0.1:{port}/metrics"))
    code, out, err = s.stop(signal.SIGCONT)     # not a stop signal: runs out its duration
    assert code == 0, err
    data = json.loads(summary.read_text())
    assert data["capture"]["replay"]["stopped_by"] == "duration"
    assert out.rstrip().splitlines()[-1] == "stopped by --duration 4 s"
    assert data["capture"]["replay"]["passes"] >= 2 and data["packets_in"] > 1242
    # Looping the same scan: its scanner is flagged once; its later probes are dropped.
    assert [(a["kind"], a["host"]) for a in data["alerts"]] == [("portscan", "10.99.0.1")]
    assert data["packets_in"] == data["packets_out"] + data["dropped"]
    assert "state digest" in out
    inst = (("direction", "forward"), ("instance", "0"), ("vertex", "portscan"))
    assert scraped[("chc_alerts_total", (("kind", "portscan"), ("vertex", "portscan")))] == 1
    assert 0 < scraped[("chc_instance_packets_in_total", inst)] <= data["vertices"]["portscan"]["packets_in"]
    assert scraped[("chc_instance_packets_per_second", inst)] > 0
    assert 0 < scraped[("chc_store_round_trips_total", ())] <= data["store"]["round_trips"]
    assert scraped[("chc_store_ops_total", (("kind", "blocking"),))] > 0
    assert scraped[("chc_batch_processing_seconds_count", ())] > 0
    # The instance's own processing time: one observation per batch it ran.
    assert scraped[("chc_instance_batch_seconds_count", inst)] > 0
    assert 0 < scraped[("chc_instance_batch_seconds_sum", inst)] < 4


@pytest.mark.parametrize("sig, code, why", [(signal.SIGTERM, 0, "terminate"), (signal.SIGINT, 130, "interrupt")])
def test_a_signal_stops_drains_and_writes_the_summary(tmp_path, serves, sig, code, why):
    summary = tmp_path / "s.json"
    s = Serve(str(PAPER), "--capture", str(LAN), "--rate", "2000", "--loop", "--status", "0.5",
              "--summary-json", str(summary))
    serves.append(s)
    s.wait_line("chc serve: ")
    got, out, err = s.stop(sig)
    assert got == code, err
    assert "Traceback" not in err
    data = json.loads(summary.read_text())
    assert data["capture"]["replay"]["stopped_by"] == why
    assert out.rstrip().splitlines()[-1].startswith("stopped by " + ("SIGTERM" if why == "terminate" else "Ctrl-C"))
    assert data["packets_in"] > 0
    # Drained: every packet that entered left or was dropped, and the roots' logs are empty.
    assert data["log"]["remaining"] == 0 and data["log"]["logged"] == data["log"]["deleted"]
    assert data["packets_in"] == data["packets_out"] + data["dropped"]
    assert "chain 'paper-chain'" in out


OWN_STATE = """
from chc.nf import NF, SRC_IP, Access, Value

class Seen:
    pass

class KeepsObjects(NF):
    kind = "keepsobjects"
    last = Value(SRC_IP, Access.READ_WRITE)

    def process(self, pkt, ctx):
        self.last.set((1, Seen()), pkt.src)
        return pkt

class KeepsSets(NF):
    kind = "keepssets"
    last = Value(SRC_IP, Access.READ_WRITE)

    def process(self, pkt, ctx):
        self.last.set(frozenset([pkt.dport]), pkt.src)
        return pkt
"""


@pytest.mark.parametrize("nf, store, says", [
    ("KeepsObjects", "memory", "holds a Seen inside its tuple"),
    ("KeepsSets", "redis", "holds a frozenset (frozenset({"),
])
def test_a_state_value_chc_cannot_keep_ends_serve_with_its_summary(tmp_path, request, nf, store, says):
    """As chc run: the summary printed and written with state_error, then one line, exit
    2.  On Redis (EO+C+NA) the batch flush that sent the set stopped the server with
    ``chc: error: the redis store cannot hold ...`` and no summary at all."""
    (tmp_path / "own_state_mine.py").write_text(OWN_STATE)
    spec = tmp_path / "chain.yaml"
    spec.write_text(f"name: own\nvertices:\n  heavy: {{nf: 'own_state_mine.py:{nf}'}}\nedges: []\n")
    url = request.getfixturevalue("redis_urls")[0] if store == "redis" else "memory"
    summary = tmp_path / "s.json"
    res = _chc("serve", str(spec), "--capture", str(LAN), "-c", "300", "--rate", "100000", "--model", "EO+C+NA",
               "--store", url, "--summary-json", str(summary), "--state-json", str(tmp_path / "state.json"))
    assert res.returncode == 2, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("chc: error: heavy.last['10.") and says in last, res.stderr
    assert "Traceback" not in res.stderr
    assert "chain 'own'" in res.stdout and res.stdout.rstrip().endswith("stopped by -c 300 packets")
    data = json.loads(summary.read_text())
    assert data["packets_in"] == 300 and data["state_digest"] == "" and data["state_error"] == last[12:]
    assert data["log"]["remaining"] == 0
    assert not (tmp_path / "state.json").exists()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_the_process_exits_keeps_the_exit_code(tmp_path, sig):
    """The summary out, a SIGTERM while the interpreter exited (timeout(1)'s second, a
    process-group kill) killed the process: exit 143 (SIGINT: a KeyboardInterrupt in its
    exit).  It ends it with the command's own exit code.  (An exit handler stands for a
    slow interpreter exit: it says when it runs, then waits for the signal.)"""
    boot = ("import atexit, sys, time, runpy\n"
            "atexit.register(lambda: (print('exiting', file=sys.stderr, flush=True), time.sleep(30)))\n"
            "runpy.run_module('chc.cli', run_name='__main__')\n")
    summary = tmp_path / "s.json"
    proc = subprocess.Popen([sys.executable, "-c", boot, "serve", str(PORTSCAN), "--capture", str(SCAN), "-c", "50",
                             "--rate", "10000", "--summary-json", str(summary)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        lines = []
        while not lines or lines[-1] != "exiting\n":
            lines.append(proc.stderr.readline())
            assert lines[-1], f"chc serve ended (exit {proc.wait()}) first: {lines}"
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, (proc.returncode, lines, err)
    assert out.rstrip().endswith("stopped by -c 50 packets") and json.loads(summary.read_text())["packets_in"] == 50
    assert "Traceback" not in err


# -- bad input -------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--capture", "no/such.pcap"], "no/such.pcap"),
    (["--capture", str(SCAN), "--rate", "0"], "--rate 0.0: expected a positive number"),
    (["--capture", str(SCAN), "--rate", "-5"], "--rate -5.0: expected a positive number"),
    (["--capture", str(SCAN), "--rate", "nan"], "--rate nan: expected a positive number"),
    (["--capture", str(SCAN), "--duration", "0"], "--duration 0.0: expected a positive number"),
    (["--capture", str(SCAN), "--dashboard-port", "99999"], "--dashboard-port '99999': expected PORT"),
    (["--live", "a:b", "--rate", "10"], "--live takes no --rate"),
    (["--capture", "-"], "needs a file"),
])
def test_bad_input_is_one_line_exit_2(args, message):
    res = _chc("serve", str(PORTSCAN), *args)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("chc: error:") and message in lines[0], res.stderr


@pytest.mark.parametrize("option", ["--metrics-port", "--dashboard-port"])
def test_a_port_in_use_is_one_line_exit_2(option):
    if option == "--metrics-port":
        pytest.importorskip("prometheus_client")
    else:
        pytest.importorskip("uvicorn")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        res = _chc("serve", str(PORTSCAN), "--capture", str(SCAN), "--duration", "5", option, str(port))
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [f"chc: error: {option} {port}: Address already in use"]


# -- the observer ----------------------------------------------------------------------

def test_the_observer_counts_rates_alerts_and_events():
    from chc.packet import Packet

    rt = SimRuntime(load_spec(PORTSCAN), model="EO+C+NA")
    obs = Observer(rt, interval=1.0, now=0.0)
    with open_capture(SCAN) as r:
        pkts = [Packet(d, ts, i) for i, (ts, d) in enumerate(r)]
    rt.feed(pkts[:600], lambda out: None)
    obs.batch(600, 600 * 0.002, 0.004)
    s = obs.sample(2.0)
    assert s["packets_in"] == 600 and s["pps_in"] == 300.0
    assert s["latency_ms"] == {"mean": 2.0, "max": 4.0}
    assert [i["pps"] for i in s["instances"]] == [s["instances"][0]["packets_in"] / 2]
    assert [(a["kind"], a["host"]) for a in s["alerts"]] == [("portscan", "10.99.0.1")]
    assert obs.alert_counts == {("portscan", "portscan"): 1}
    rt.scale_out("portscan", by="test")
    rt.feed(pkts[600:], lambda out: None)
    s = obs.sample(3.0)
    assert s["alerts"] == [] and s["latency_ms"] is None          # each alert is reported once
    assert [e["kind"] for e in s["events"]] == ["scale-out", "move"]     # §5.1: flow groups handed over
    assert obs.event_counts == {"scale-out": 1, "move": 1}
    assert len(s["instances"]) == 2 and s["packets_in"] == len(pkts)
    assert "1,242 in (642/s)" in status_line(s) and "instances 2" in status_line(s)
    json.dumps(s, allow_nan=False)                                  # what the dashboard sends


def test_metrics_export_events_and_the_store():
    pytest.importorskip("prometheus_client")
    from prometheus_client import generate_latest

    from chc.metrics import LiveMetrics

    rt = SimRuntime(load_spec(PORTSCAN), model="EO+C+NA")
    obs = Observer(rt)
    metrics = LiveMetrics(obs, {})
    rt.scale_out("portscan", by="test")
    obs.sample()
    got = _metrics(generate_latest(metrics.registry).decode())
    assert got[("chc_events_total", (("kind", "scale-out"),))] == 1
    assert ("chc_store_round_trips_total", ()) in got


def test_metrics_time_each_instance_batch():
    pytest.importorskip("prometheus_client")
    from prometheus_client import generate_latest

    from chc.metrics import LiveMetrics

    rt = SimRuntime(load_spec(PAPER).with_parallelism({"lb": 2}), model="T", batch_size=64)
    metrics = LiveMetrics(Observer(rt), {})
    with open_capture(LAN) as reader:
        rt.run(itertools.islice(reader, 1000))
    got = _metrics(generate_latest(metrics.registry).decode())
    for vertex, instance in [("nat", "0"), ("portscan", "0"), ("lb", "0"), ("lb", "1"), ("trojan", "0")]:
        labels = (("direction", "forward"), ("instance", instance), ("vertex", vertex))
        inst = rt.instances[vertex][int(instance)]
        assert 0 < got[("chc_instance_batch_seconds_count", labels)] <= inst.packets_in
        assert got[("chc_instance_batch_seconds_sum", labels)] > 0


def test_the_graph_of_a_chain_with_a_tap():
    rt = SimRuntime(load_spec(PAPER), model="T")
    g = graph(rt)
    assert {v["name"]: v["column"] for v in g["vertices"]} == {"nat": 1, "trojan": 2, "portscan": 2, "lb": 3}
    assert {(e["from"], e["to"], e["kind"]) for e in g["edges"]} == {
        ("root", "nat", "edge"), ("nat", "portscan", "edge"), ("nat", "trojan", "tap"), ("portscan", "lb", "edge")}


# -- the dashboard ---------------------------------------------------------------------

SCAN_WATCH = """\
name: scan-watch
input: {malformed: drop, non_ip: pass}
vertices:
  portscan:
    nf: portscan
    config: {theta0: 0.8, theta1: 0.2, eta0: 0.01, eta1: 99, timeout_s: 5}
    scaling: {out_above_pps: 2, in_below_pps: 0.5, min: 1, max: 2, interval_ms: 2000}
  fwd: {nf: pass}
  trojan: {nf: trojan}
edges:
  - portscan -> fwd
offpath:
  - {from: portscan, to: trojan, tap: input}
"""


def _playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the dashboard test needs Playwright (pip install playwright)")
    if not Path(CHROMIUM).exists():
        _unavailable(f"the dashboard test needs Chromium at {CHROMIUM} (apt-get install chromium)")
    pytest.importorskip("uvicorn")
    return sync_playwright


def test_the_dashboard_in_a_headless_browser(tmp_path, serves):
    sync_playwright = _playwright()
    chain = tmp_path / "scan-watch.yaml"
    chain.write_text(SCAN_WATCH)
    port = _free_port()
    with sync_playwright() as pw:
        # The browser first, so the page is up before the scan's alert (packet 27 at 4/s).
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            s = Serve(str(chain), "--capture", str(SCAN), "--rate", "4", "--loop", "--dashboard-port", str(port),
                      "--summary-json", str(tmp_path / "s.json"))
            serves.append(s)
            url = s.wait_line("chc: dashboard at").rpartition(" ")[2]
            assert url == f"http://127.0.0.1:{port}/"
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("requestfailed", lambda r: errors.append(r.url))
            page.goto(url)
            page.wait_for_function("document.getElementById('state').textContent === 'live'", timeout=30_000)
            # Rates move: the input counter grows from sample to sample, an instance shows a rate.
            page.wait_for_function("Number(document.getElementById('packets-in').textContent.replace(/,/g, '')) > 0",
                                   timeout=30_000)
            first = int(page.inner_text("#packets-in").replace(",", ""))
            page.wait_for_function(f"Number(document.getElementById('packets-in').textContent.replace(/,/g, '')) "
                                   f"> {first}", timeout=30_000)
            page.wait_for_selector("g.instance[data-pps]:not([data-pps='0'])", timeout=30_000)
            # The alert arrives live (a row marked fresh came with a sample, not with the page).
            row = page.wait_for_selector("#alerts tbody tr.fresh", timeout=60_000)
            assert "portscan" in row.inner_text() and "10.99.0.1" in row.inner_text()
            # The manager scales the detector out (above 2 packets/s): an event and a second instance.
            page.wait_for_selector("#events tbody tr", timeout=60_000)
            assert "scale-out" in page.inner_text("#events")
            page.wait_for_selector("g.vertex[data-vertex='portscan'] g.instance[data-instance='1']", timeout=30_000)
            assert {e.get_attribute("data-vertex") for e in page.query_selector_all("g.vertex")} == {
                "portscan", "fwd", "trojan"}
            assert page.evaluate("document.querySelectorAll('.uplot').length") == 2
            page.wait_for_timeout(2500)          # a few more points on the charts
            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            if os.environ.get("CHC_DASHBOARD_SHOT"):        # docs/img/dashboard.png is made this way
                shutil.copy(shot, os.environ["CHC_DASHBOARD_SHOT"])
            state = json.loads(_get(url + "state"))
            assert state["graph"]["chain"] == "scan-watch" and state["alerts"][0]["host"] == "10.99.0.1"
            assert errors == []                 # no script error, nothing failed to load (no CDN)
            code, out, err = s.stop()
            assert code == 0, err
            page.wait_for_function("document.getElementById('state').textContent === 'stopped'", timeout=30_000)
        finally:
            browser.close()
    data = json.loads((tmp_path / "s.json").read_text())
    assert [(a["kind"], a["host"]) for a in data["alerts"]] == [("portscan", "10.99.0.1")]
    assert any(e["kind"] == "scale-out" for e in data["events"])
    assert math.isfinite(data["elapsed_s"])



def test_a_truncated_capture_loops_what_it_reads_warns_once_and_is_partial(tmp_path):
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(SCAN.read_bytes()[:50_000])
    res = _chc("serve", str(PORTSCAN), "--capture", str(cut), "--rate", "20000", "--loop", "-c", "3000",
               "--summary-json", str(tmp_path / "s.json"))
    assert res.returncode == 3, res.stderr       # partial, as chc run says it (it was 0)
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["packets_in"] == 3000 and data["capture"]["replay"]["passes"] == 5     # 698 packets a pass
    assert data["partial"] is True and data["capture"]["truncated"] is True
    assert res.stderr.count("last record truncated") == 1
    assert res.stdout.startswith("PARTIAL: the capture stopped early at byte 49,980")


def test_the_serve_rate_bench_runs():
    """Smoke: bench/serve_rate.py on a few packets (its figures are for docs/live.md, not judged)."""
    pytest.importorskip("uvicorn")
    pytest.importorskip("prometheus_client")
    import importlib.util

    spec = importlib.util.spec_from_file_location("serve_rate", ROOT / "bench" / "serve_rate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = mod.main(["--packets", "600", "--half-load-seconds", "2", "--rounds", "1"])
    assert set(res["pps"]) == {"run", "serve", "serve+watch"} and all(v > 0 for v in res["pps"].values())
    assert res["half_load"]["latency_mean_ms"] > 0


def test_the_status_line_rewrites_itself_on_a_terminal_and_prints_lines_elsewhere():
    import io

    from chc.serve import StatusLine

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    rt = SimRuntime(load_spec(PORTSCAN), model="T")
    obs = Observer(rt, now=0.0)
    tty, log = Tty(), io.StringIO()
    on_tty, in_log = StatusLine(1.0, tty), StatusLine(2.0, log)
    for t in (1.0, 2.0, 3.0, 4.0):
        s = obs.sample(t)
        on_tty(s)
        in_log(s)
    on_tty.close()
    assert tty.getvalue().count("\r") == 5 and tty.getvalue().endswith("\r\x1b[K")
    assert [line.split(",")[0] for line in log.getvalue().splitlines()] == ["chc serve: 1 s", "chc serve: 3 s"]

