"""§5.4 root failover over processes: a real SIGKILL of a root's process.

The coordinator keeps the input it sent a root from the oldest clock the root
still logs (its *floor*), with the next clock and counters the root had at each
batch; every instance keeps its reports to the root from the floor on; the store
server keeps the commit reports the root pulled.  A failover root stamps the kept
input again with the same clocks and splits it the same way (so receivers drop
by through what they had), and rebuilds its packet log from it, from the commits
pulled again and from the reports the instances send again; entries below a
floor someone heard are dropped.  The run ends with the sim's state digest,
counts and alerts; with the replay switched off (``--break no-replay``) it does
not.  Each piece is also tested on its own, and fails with it switched off.
"""

from __future__ import annotations

import itertools
import os
import signal
from collections import deque
from pathlib import Path
from types import SimpleNamespace

import pytest

zmq = pytest.importorskip("zmq")

from chc.backends.memory import MemoryStore  # noqa: E402
from chc.capture import open_capture  # noqa: E402
from chc.cli import main  # noqa: E402
from chc.coe import draw_kill, variant  # noqa: E402
from chc.core.root import Root  # noqa: E402
from chc.core.store import ObjectKey, Op  # noqa: E402
from chc.runtime.proc import Kill, ProcRuntime, parse_kill  # noqa: E402
from chc.runtime.procio import Guard  # noqa: E402
from chc.runtime.procworker import CausalInbox, InstanceWorker, input_name  # noqa: E402
from chc.runtime.sim import SimRuntime  # noqa: E402
from chc.runtime.storeserver import Failover  # noqa: E402
from chc.runtime.wire import Kind, decode, endpoint  # noqa: E402
from chc.scenario import load_scenario  # noqa: E402
from chc.spec import load_spec  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LAN = str(ROOT / "traces/pathspider/lan-2012.pcap.gz")
PAPER = str(ROOT / "examples/paper_chain.yaml")
PARALLEL = str(ROOT / "examples/scenarios/parallel.yaml")
N = 6000
MODEL = "EO+C+NA"


@pytest.fixture(scope="module")
def records() -> list[tuple[int, bytes]]:
    with open_capture(LAN) as r:
        return list(itertools.islice(r, N))


@pytest.fixture(scope="module")
def sim(records):
    rt = SimRuntime(load_spec(PAPER), model=MODEL)
    rt.run(records)
    return rt.summary()


def _alive(pids) -> list[int]:
    out = []
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        out.append(pid)
    return out


# -- end to end ------------------------------------------------------------------------------

def test_a_killed_root_fails_over_with_the_sims_results(records, sim):
    rt = ProcRuntime(load_spec(PAPER), model=MODEL, kills=[Kill("root", 0, 3000)])
    rt.run(records)
    s = rt.summary()
    assert s.state_digest == sim.state_digest
    assert (s.packets_in, s.packets_out, s.dropped, s.non_ip) == (sim.packets_in, sim.packets_out, sim.dropped,
                                                                  sim.non_ip)
    assert sorted(map(str, s.alerts)) == sorted(map(str, sim.alerts))
    assert s.log == sim.log and s.log["remaining"] == 0
    [event] = s.events
    assert event["kind"] == "root-failover" and event["failover_process"] == "@root.0#1"
    assert event["killed_at_packet"] >= 3000 and event["replayed"] == event["handed_over"] > 0
    assert not _alive(rt.pids.values())


def test_without_the_replay_a_killed_root_loses_input(records, sim):
    rt = ProcRuntime(load_spec(PAPER), model=MODEL, kills=[Kill("root", 0, 3000)], breaks=("no-replay",))
    rt.run(records)
    s = rt.summary()
    assert s.state_digest != sim.state_digest or s.packets_out != sim.packets_out
    assert s.events[0]["not_replayed"] > 0


def _check(argv: list[str], monkeypatch) -> int:
    monkeypatch.chdir(ROOT)
    return main(["check", "--runtime", "proc", PAPER, PARALLEL, LAN, *argv])


def test_a_killed_root_passes_the_check_and_without_the_replay_diverges(monkeypatch, capsys):
    assert _check(["--packets", "2000", "--seed", "6", "--kill", "root[0]@1000"], monkeypatch) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "killed root[0] (@root.0) at input packet" in out and "@root.0#1 replayed" in out
    assert _check(["--packets", "2000", "--seed", "6", "--kill", "root[0]@1000", "--break", "no-replay"],
                  monkeypatch) == 1
    assert "DIVERGED" in capsys.readouterr().out


def test_a_root_and_an_instance_it_feeds_killed_together_both_fail_over(monkeypatch, capsys):
    # The instance's failover needs what the root sent it: the root's failover hands it over.
    assert _check(["--packets", "2000", "--seed", "6", "--kill", "nat[0]@1000,root[0]@1000"], monkeypatch) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "@root.0#1 replayed" in out and "nat.0#1 replayed" in out


# -- the pieces ------------------------------------------------------------------------------

def test_kills_name_roots_and_random_draws_them():
    chain = load_spec(PAPER)
    assert parse_kill("root[0]@5", chain) == Kill("root", 0, 5)
    assert Kill("root", 0, 5).process == "@root.0" and Kill("nat", 1, 5).process == "nat.1"
    with pytest.raises(ValueError, match="1 root"):
        parse_kill("root[1]@5", chain)
    scenario = load_scenario(PARALLEL)
    drawn = [draw_kill(variant(chain, scenario, seed, ["memory"]), 3000, "random") for seed in range(60)]
    assert any(k.startswith("root[0]@") for k in drawn)
    assert any(not k.startswith("root") for k in drawn)


def test_a_root_failover_is_refused_with_the_log_in_the_store():
    with pytest.raises(ValueError, match="packet-log store"):
        ProcRuntime(load_spec(PAPER), model=MODEL, log_mode="store", kills=[Kill("root", 0, 5)])


def test_the_coordinator_keeps_input_from_the_roots_floor():
    rt = ProcRuntime(load_spec(PAPER), model=MODEL, kills=[Kill("root", 0, 10)])
    rt.kept_input[0].extend((k, [[0, b"", k]]) for k in range(4))
    def said(n: int) -> list[int]:          # a root's counters after its nth batch
        return [n, 0, 0, 0, 0, 0, n]
    rt._ingested(0, [0, 100, said(10), 0])
    rt._ingested(0, [1, 200, said(20), 0])
    assert [k for k, _ in rt.kept_input[0]] == [0, 1, 2, 3]        # clock 0 still logged
    rt._ingested(0, [2, 300, said(30), 150])
    # batch 0 (clocks < 100) is done with; batch 1 holds clocks 100..199, some >= the floor
    assert [k for k, _ in rt.kept_input[0]] == [1, 2, 3]
    assert rt.input_start[0] == (1, 100, said(10))
    rt._ingested(0, [3, 400, said(40), 400])
    assert not rt.kept_input[0] and rt.input_start[0] == (4, 400, said(40))
    rt._ingested(0, [1, 200, said(20), 150])          # a failover's replay of an old one
    assert rt.input_start[0][0] == 4 and 1 not in rt.ingested[0]


def test_a_new_root_drops_what_was_done_below_a_floor():
    root = Root(0)
    for clock in (5, 7, 9):
        root.log[clock] = object()
    root.logged = 3
    assert root.forget_below(8) == 2 and list(root.log) == [9]
    assert (root.logged, root.deleted) == (3, 2)        # the failed root's deletions, as they were


def test_a_senders_kept_reports_start_after_the_mark_it_sends():
    inbox = CausalInbox()
    # nat.0's report depends on portscan.0's through 40, which portscan.0 pruned (done with)
    assert inbox.offer("nat.0", 50, {"portscan.0": 40}, [[1, 50, 0]]) == []
    assert inbox.start("portscan.0", 45) == [[[1, 50, 0]]]
    assert inbox.marks["portscan.0"] == 45
    # a failover process's kept reports past the mark are new to a new root
    assert inbox.start("trojan.0#1", -1) == []
    assert inbox.offer("trojan.0#1", 10, {}, [[1, 10, 0]]) == [[[1, 10, 0]]]


def test_the_store_server_keeps_a_roots_commits_from_its_floor():
    store = MemoryStore()
    failover = Failover(store)
    for clock in (3, 8):
        store.execute([Op("incr", ObjectKey("nat", "c", 1), (1,), client="nat/0", seq=clock, tag=(clock, 0),
                          xor_id=clock + 100)])
    assert sorted(failover.commits(store, 0)) == [(3, 103), (8, 108)]
    assert failover.call(None, b"@root.0#1", "recommits", 0) == [-1, [3, 103, 8, 108]]
    failover.prune_below(store, 5)
    assert failover.call(None, b"@root.0#1", "recommits", 0) == [5, [8, 108]]


def test_an_instance_keeps_its_reports_from_the_floor_and_sends_them_to_a_new_root(tmp_path):
    ctx = zmq.Context()
    try:
        router = ctx.socket(zmq.ROUTER)
        router.bind(endpoint(str(tmp_path), "@root.0#1"))
        worker = SimpleNamespace(kept={0: deque([(10, {}, [[1, 10, 0]]), (20, {"nat.0": 9}, [[1, 15, 0], [1, 20, 0]]),
                                                 (30, {}, [[0, 30, 1]])])},
                                 kept_from={}, out=SimpleNamespace(floors={0: 16}, ctx=ctx),
                                 plan=SimpleNamespace(address=lambda name: endpoint(str(tmp_path), name)),
                                 me="trojan.1", guard=Guard([]), roots=[ctx.socket(zmq.DEALER)])
        InstanceWorker._prune_reports(worker)
        # the second report still has clock 20 above the floor: it stays, with the one behind
        assert [r[0] for r in worker.kept[0]] == [20, 30] and worker.kept_from == {0: 10}
        InstanceWorker.reroot(worker, 0, "@root.0#1")
        got = []
        while len(got) < 3 and router.poll(5000):
            peer, frame = router.recv_multipart()
            kind, body = decode(frame)
            assert peer == b"trojan.1" and kind == Kind.REPORT
            got.append(body)
        assert got == [[10, {}, [[2, 16, 0]]], [20, {"nat.0": 9}, [[1, 15, 0], [1, 20, 0]]], [30, {}, [[0, 30, 1]]]]
    finally:
        ctx.destroy(linger=0)


def test_a_failover_roots_input_mailbox_has_its_generation():
    assert input_name("@root.0") == "@root.0.in" and input_name("@root.0#2") == "@root.0.in#2"


class _EndLost(ProcRuntime):
    """The kill stops the root (SIGSTOP) and SIGKILLs it once the end of input is sent:
    that end dies unread in its socket."""

    stopped = None

    def _kill(self, kill):
        self.stopped = self.procs[self.current[kill.process]]
        os.kill(self.stopped.pid, signal.SIGSTOP)

    def _tell_root(self, r, what):
        super()._tell_root(r, what)
        if what == "end" and self.stopped is not None:
            p, self.stopped = self.stopped, None
            p.kill()
            p.join(5)


def test_a_root_killed_after_its_last_input_is_told_the_end_again(records):
    """The end of input went to the dead root's socket and was never read; its failover
    is told it again (before, the run waited for good: a hunt's seed hung)."""
    head = records[:2000]
    ref = SimRuntime(load_spec(PAPER), model=MODEL)
    ref.run(head)
    rt = _EndLost(load_spec(PAPER), model=MODEL, kills=[Kill("root", 0, 1500)], hwm=64)     # room for the end
    rt.run(head)
    s = rt.summary()
    assert s.state_digest == ref.summary().state_digest and s.log["remaining"] == 0
    assert [e["kind"] for e in s.events] == ["root-failover"]


def test_a_root_killed_from_outside_fails_over_with_failover_on(records, sim):
    """``--failover``: no planned kill; a SIGKILL from outside (here, the input's generator)."""
    rt = ProcRuntime(load_spec(PAPER), model=MODEL, failover=True)

    def feed():
        for index, record in enumerate(records):
            if index == 3500:
                os.kill(rt.procs["@root.0"].pid, signal.SIGKILL)
            yield record
    rt.run(feed())
    s = rt.summary()
    assert s.state_digest == sim.state_digest and s.log == sim.log
    [event] = s.events
    assert event["kind"] == "root-failover" and event["detect_s"] is None and "killed_at_packet" not in event


def test_the_second_of_two_roots_killed_passes_the_check(tmp_path, monkeypatch, capsys):
    """Each root keeps to its own clocks: the failover of root 1 re-stamps root 1's input
    (root 0's packets and reports are none of its business)."""
    two = tmp_path / "two_roots.yaml"
    two.write_text("roots: 2\n" + Path(PAPER).read_text())
    monkeypatch.chdir(ROOT)
    assert main(["check", "--runtime", "proc", str(two), PARALLEL, LAN, "--packets", "2000", "--seed", "1",
                 "--kill", "root[1]@1000"]) == 0
    out = capsys.readouterr().out
    assert "killed root[1] (@root.1) at input packet" in out and "@root.1#1 replayed" in out


class _NoStore:
    """What a failover root asks of the store while it restores: nothing pulled before."""

    round_trips = 0

    def recommits(self, root: int) -> tuple[int, list]:
        return -1, []

    def execute(self, ops: list) -> list:
        return [None] * len(ops)

    def commits(self, root: int) -> list:
        return []

    def prune_below(self, clock: int) -> int:
        return 0


def test_a_failover_roots_replay_is_not_cut_by_the_log_bound(records, tmp_path):
    """Replaying, the rebuilt log holds what the failed root had already deleted (reports
    come after): the log bound must not drop input there, or every later packet gets
    another clock than the failed root gave it."""
    from chc.runtime.procworker import Plan, RootWorker

    zmq_ctx = zmq.Context()
    try:
        plan = Plan(str(tmp_path), load_spec(PAPER), MODEL, 256, ("memory", endpoint(str(tmp_path), "@store")),
                    log_limit=500, recover=True)
        rows = [[ts, data, k] for k, (ts, data) in enumerate(records[:1024])]
        batches = [rows[k:k + 256] for k in range(0, len(rows), 256)]
        replay = {"first": 0, "next": 0, "counters": [0] * 7, "batches": batches, "floor": -1,
                  "current": {}, "fenced": []}
        worker = RootWorker(plan, zmq_ctx, 0, Guard([]), "@root.0#1", replay)
        worker.store = _NoStore()
        held = worker._restore(replay)
        root = worker.root
        assert root.next_seq == len(rows)           # every frame stamped: the failed root's clocks
        assert root.dropped_overflow == 0 and len(root.log) > 500
        assert root.log_limit == 500                # and the bound is back for new input
        assert held and worker.replayed["packets"] == len(rows)
    finally:
        zmq_ctx.destroy(linger=0)
