"""Ctrl-C of ``chc check`` (chc.ctrlc): the first stops the check and reports the seeds
that finished, the second aborts at once; neither is lost, neither leaves a process.
No timing decides a pass: the proc runtime's stop is measured on a fake clock."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import types
import weakref
from pathlib import Path

import pytest

from chc import checkrun, ctrlc

ROOT = Path(__file__).resolve().parent.parent
PAPER = ROOT / "examples" / "paper_chain.yaml"
PARALLEL = ROOT / "examples" / "scenarios" / "parallel.yaml"
LAN = ROOT / "traces" / "pathspider" / "lan-2012.pcap.gz"
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}


class _Job:
    """What run_seeds needs of a Job: seed 1 gets a Ctrl-C inside a weakref callback."""

    stores = ["memory"]
    runtime = "sim"
    breaks = ()
    truncated = None

    def run(self, seed: int) -> dict:
        if seed == 1:
            _ctrl_c_in_a_weakref_callback()
        return {"seed": seed, "verdict": "pass", "drawn": "fake", "seconds": 0.0, "faults": {}, "breaks": {},
                "unrecoverable": None, "first_divergence": None}


def _ctrl_c_in_a_weakref_callback() -> None:
    """SIGINT handled inside a weakref callback (as pyzmq's sockets' WeakSet removes a
    collected one): what its handler raises there is printed and dropped."""
    class Thing:
        pass

    def collected(ref: weakref.ref) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):
            pass                    # (the handler runs here)

    thing = Thing()
    ref = weakref.ref(thing, collected)
    del thing
    assert ref() is None


def test_a_ctrl_c_lost_inside_a_weakref_callback_still_stops_the_check(capfd, monkeypatch):
    """A new user's Ctrl-C of a check was lost so ("Exception ignored in: <function
    WeakSet...> KeyboardInterrupt") and every seed ran, exit 0."""
    ignored = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: ignored.append(u.exc_type))
    said = []
    report = checkrun.run_seeds(_Job(), [0, 1, 2, 3], 1, said.append)
    err = capfd.readouterr().err
    assert KeyboardInterrupt in ignored                 # (it did land in the callback, and was dropped)
    assert report.interrupted and [r["seed"] for r in report.results] == [0, 1]
    assert "interrupted (Ctrl-C) after 2 of 4 seeds" in report.summary_line()
    assert "chc: stopping" in err


def test_a_ctrl_c_under_a_polling_loop_is_raised_at_its_poll():
    aborted = []
    with ctrlc.flagged("stopping") as ctrl, ctrlc.polling(lambda: aborted.append(1)):
        os.kill(os.getpid(), signal.SIGINT)         # not raised where it lands...
        for _ in range(1000):
            pass
        assert ctrl.count == 1
        with pytest.raises(KeyboardInterrupt) as first:
            ctrlc.poll()                            # ...but at the loop's safe point
        assert type(first.value) is KeyboardInterrupt
        with pytest.raises(ctrlc.Aborted):          # a second: the abort callbacks first
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):
                pass
        assert aborted == [1]
        with pytest.raises(ctrlc.Aborted):
            ctrlc.poll()
    ctrlc.poll()                                    # (outside flagged: nothing)


class _Worker:
    """A worker process on a fake clock: it exits when killed, or never."""

    def __init__(self, clock: list[float]) -> None:
        self.clock = clock
        self.exitcode: int | None = None
        self.killed = False

    def is_alive(self) -> bool:
        return self.exitcode is None

    def kill(self) -> None:
        self.killed = True
        self.exitcode = -9

    def join(self, timeout: float | None = None) -> None:
        if self.exitcode is None:
            self.clock[0] += timeout or 0.0


@pytest.fixture
def stopping(monkeypatch):
    """A proc runtime with 12 workers that reported but do not exit, stopped on a fake clock."""
    from chc.runtime import proc
    from chc.spec import load_spec

    rt = proc.ProcRuntime(load_spec(str(PAPER)))
    clock = [0.0]
    monkeypatch.setattr(proc, "time", types.SimpleNamespace(monotonic=lambda: clock[0],
                                                            perf_counter=time.perf_counter))
    names = [f"nat.{i}" for i in range(12)]
    rt.procs = {name: _Worker(clock) for name in names}
    rt.reported = {name: {} for name in names}
    return rt, clock


@pytest.mark.parametrize("finished", [True, False])
def test_the_proc_runtimes_stop_waits_once_for_all_its_workers(stopping, caplog, finished):
    """Each worker that had reported got 2 s in turn: a Ctrl-C's stop took up to 24 s with
    12, silently.  Now a finished run gives them one shared grace (said when it waits),
    and an interrupted or failed one kills them at once."""
    from chc.runtime import proc

    rt, clock = stopping
    rt._abandoned = not finished
    with caplog.at_level(logging.WARNING, logger="chc.proc"):
        rt._stop()
    assert all(w.killed for w in rt.procs.values())
    if finished:
        assert clock[0] <= proc.STOP_GRACE_S
        assert "waiting up to" in caplog.text and "12 workers to exit" in caplog.text
    else:
        assert clock[0] == 0 and not caplog.text


def test_a_second_ctrl_c_inside_the_stop_still_kills_every_worker(stopping):
    """A second Ctrl-C raised inside the stop's wait for a worker left the others running
    (and the interpreter's exit then joined them for good)."""
    rt, clock = stopping
    rt._abandoned = False
    first = next(iter(rt.procs.values()))

    def interrupted(timeout: float | None = None) -> None:
        raise ctrlc.Aborted                         # (what the handler raises where it lands)
    first.join = interrupted
    with pytest.raises(ctrlc.Aborted):
        rt._stop()
    assert all(w.killed for w in rt.procs.values())


def _group(pgid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[2]) == pgid:
                    out.append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return out


def _gone(pgid: int, within_s: float = 30) -> list[int]:
    deadline = time.monotonic() + within_s
    while _group(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return _group(pgid)


def _proc_check(tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    """``chc check --runtime proc`` in its own process group, once its first seed is done
    (the next one under way)."""
    report = tmp_path / "r.json"
    p = subprocess.Popen([sys.executable, "-m", "chc.cli", "check", "--runtime", "proc", str(PAPER), str(PARALLEL),
                          str(LAN), "--packets", "3000", "--seeds", "50", "--json", str(report)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, start_new_session=True)
    line = p.stdout.readline()
    assert line.startswith("seed 0: PASS"), (line, p.stderr.read() if p.poll() is not None else "")
    return p, report


@pytest.mark.parametrize("twice", [False, True])
def test_ctrl_c_of_a_proc_check_stops_it_and_leaves_no_process(tmp_path, twice):
    """One Ctrl-C: the seed under way is dropped, those that finished are reported and
    written (exit 130).  Two: it ends at once, wherever the second lands (its stop takes
    milliseconds now: before the report, the check aborts and writes nothing; after it,
    the exit is the signal's).  A new user's double Ctrl-C left the seed's 13 workers
    running and the check hung for good in multiprocessing's exit, which joined them."""
    p, report = _proc_check(tmp_path)
    try:
        time.sleep(0.5)                             # (the seed's workers up)
        os.killpg(p.pid, signal.SIGINT)
        if twice:
            time.sleep(0.05)
            os.killpg(p.pid, signal.SIGINT)
        p.wait(timeout=120)
        left = _group(p.pid)        # (at once: the forkserver outlived the check by up to 1.4 s)
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert p.returncode in ((130, -signal.SIGINT) if twice else (130,)), err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert "chc: stopping: the seed under way is dropped" in err
    if "chc: interrupted" in err:
        assert twice and not report.exists()        # (aborted: nothing written)
    else:
        data = json.loads(report.read_text())
        assert data["interrupted"] and len(data["results"]) >= 1 and "interrupted (Ctrl-C) after" in out
    if not twice:                   # (a second Ctrl-C may cut the stop short: then they end with it)
        assert not left, f"processes of the check outlived it: {left}"
    assert not _gone(p.pid), "a process of the check outlived it"
