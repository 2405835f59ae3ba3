"""§5.4 NF failover over processes: a real SIGKILL of an NF instance's process.

A failover process takes over the killed instance's logical identity, its
upstreams hand over what they sent it, and it replays that from the oldest clock
its root still logs; the run ends with the state digest, packet counts and
alerts of an undisturbed sim run on the same input (COE), and leaves no process
behind.  With the replay switched off (``--break no-replay``) the digest
differs: the test that the replay is what recovers the state.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
from pathlib import Path

import pytest

pytest.importorskip("zmq")

from chc.capture import open_capture  # noqa: E402
from chc.cli import main  # noqa: E402
from chc.runtime.proc import Kill, ProcRuntime  # noqa: E402
from chc.runtime.sim import SimRuntime  # noqa: E402
from chc.spec import load_spec  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LAN = ROOT / "traces/pathspider/lan-2012.pcap.gz"
PAPER = ROOT / "examples/paper_chain.yaml"
N = 6000            # the coordinator buffers ~2k packets ahead of the root: kill well after that
MODEL = "EO+C+NA"


@pytest.fixture(scope="module")
def records() -> list[tuple[int, bytes]]:
    with open_capture(str(LAN)) as r:
        return list(itertools.islice(r, N))


@pytest.fixture(scope="module")
def sim(records):
    rt = SimRuntime(load_spec(str(PAPER)), model=MODEL)
    rt.run(records)
    return rt.summary()


def _proc(records, kill: Kill, breaks: tuple[str, ...] = ()) -> ProcRuntime:
    rt = ProcRuntime(load_spec(str(PAPER)), model=MODEL, kills=[kill], breaks=breaks)
    rt.run(records)
    return rt


def test_on_redis_a_killed_nat_and_root_fail_over_with_the_sims_results(records, sim, redis_urls):
    """``--store redis://`` with kills: the store server runs in front of Redis (what NF
    and root failover keep at the store: the read log, fences, the reports roots
    pulled), and both failovers end as the sim does."""
    from chc.backends.redis import RedisStore
    store = RedisStore(redis_urls[:1], fresh=True, namespace="proc-kill")      # what chc run opens
    try:
        rt = ProcRuntime(load_spec(str(PAPER)), model=MODEL, store=store, store_url=redis_urls[0],
                         namespace="proc-kill", kills=[Kill("nat", 0, 3000), Kill("root", 0, 4500)])
        rt.run(records)
    finally:
        store.close()
    s = rt.summary()
    assert sorted(e["kind"] for e in s.events) == ["failover", "root-failover"]
    assert all(e["replayed"] > 0 for e in s.events)
    assert s.store["backend"] == f"{redis_urls[0]} (through the store server)"
    assert s.state_digest == sim.state_digest and s.alerts == sim.alerts
    assert (s.packets_in, s.packets_out, s.dropped) == (sim.packets_in, sim.packets_out, sim.dropped)
    assert _gone(rt.pids.values())


def _gone(pids) -> bool:
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
        except OSError:
            continue
        return False
    return True


def test_a_killed_nat_fails_over_with_the_sims_results(records, sim):
    rt = _proc(records, Kill("nat", 0, 4000))
    s = rt.summary()
    (event,) = s.events
    assert event["kind"] == "failover" and event["process"] == "nat.0" and event["how"] == "killed by signal 9"
    assert event["failover_process"] == "nat.0#1" and event["replayed"] > 0
    assert event["detect_s"] is not None and event["recovery_s"] >= event["replay_s"]
    assert s.state_digest == sim.state_digest
    assert (s.packets_in, s.packets_out, s.dropped) == (sim.packets_in, sim.packets_out, sim.dropped)
    assert s.alerts == sim.alerts
    assert {v: st["packets_in"] for v, st in s.vertices.items()} == \
        {v: st["packets_in"] for v, st in sim.vertices.items()}
    # nothing is left behind: the killed process, its failover, every other worker
    assert "nat.0#1" in rt.pids and len(rt.pids) == 7 and _gone(rt.pids.values())
    assert not os.path.exists(rt.directory)


def test_without_the_replay_the_state_is_wrong(records, sim):
    rt = _proc(records, Kill("nat", 0, 4000), breaks=("no-replay",))
    s = rt.summary()
    assert s.events[0]["replayed"] == 0
    assert s.state_digest != sim.state_digest


def test_cli_kill_shows_the_failover(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "s.json"
    assert main(["run", "--runtime", "proc", str(PAPER), str(LAN), "-c", str(N), "--model", MODEL,
                 "--no-progress", "-q", "--kill", "portscan[0]@4000", "--summary-json", str(out)]) == 0
    s = json.loads(out.read_text())
    assert [e["kind"] for e in s["events"]] == ["failover"] and s["events"][0]["vertex"] == "portscan"


@pytest.mark.parametrize("argv, says", [
    (["--kill", "nat[3]@10"], "1 instance"),
    (["--kill", "nope@10"], "no vertex"),
    (["--kill", "nat@x"], "VERTEX[I]@PACKETS"),
    (["--kill", "nat@10", "--model", "T"], "model T"),
    (["--kill", "store@10", "--model", "T"], "no store server to kill"),
    (["--kill", "nat@10", "--runtime", "sim"], "--runtime proc"),
    (["--kill", "root[1]@10"], "1 root(s)"),
    (["--kill", "root@10", "--packet-log", "store"], "packet-log store"),
    (["--heartbeat", "-1"], "heartbeats: an interval >= 0"),
    # another runtime's options: accepted, and nothing done with them (a new user's trial)
    (["--heartbeat", "100", "--runtime", "sim"], "--heartbeat is for --runtime proc"),
    (["--misses", "3", "--runtime", "sim"], "--misses is for --runtime proc"),
    (["--ray-address", "auto:1"], "--ray-address is for --runtime ray"),
    (["--ray-pin", "nat[0]=gpu", "--runtime", "sim"], "--ray-pin is for --runtime ray"),
])
def test_bad_kills_are_one_line(argv, says, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    argv = ["run", str(PAPER), str(LAN), "-c", "10", "--no-progress", *argv]
    if "--runtime" not in argv:
        argv += ["--runtime", "proc"]
    if "--model" not in argv:
        argv += ["--model", MODEL]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0]


def test_a_failover_replays_only_what_every_upstreams_watermark_had_passed(tmp_path):
    """§5.4 the hand-over to a failover of an instance fed by several upstreams (the
    parallel chain's portscan.2, fed by nat.0-2).  The failed instance could have run
    only what every upstream's watermark had passed (clock 6 here); the failover
    replays that and keeps the rest (nat.0's 20-23) queued.  Replayed at once, 20-23
    ran before nat.2's later 10-19, whose batch then went out with a through (19)
    below what the replay had sent (23), and every lb instance dropped it as a
    failover's duplicate: ``chc check --kill random`` seeds 0 and 4 lost packets."""
    import zmq

    from chc.runtime.procio import Guard
    from chc.runtime.procworker import INF, InstanceWorker
    from chc.runtime.wire import Kind, dealer, encode, pack_packets

    pkts, plan = _clocked(tmp_path)
    ctx = zmq.Context()
    guard = Guard([])
    try:
        lbs = [InstanceWorker(plan, ctx, "lb", j, guard) for j in range(3)]
        # The failed portscan.2 had run clocks 3 and 4 (one batch, through 4) before its SIGKILL.
        dead = [dealer(ctx, plan.address(f"lb.{j}"), "portscan.2") for j in range(3)]
        for j, sock in enumerate(dead):
            sock.send(encode(Kind.DATA, [4, {}, pack_packets(pkts[3:5] if j == 0 else []), False, 4, {}, []]))
        for lb in lbs:
            _pump(lb, lambda lb=lb: lb.seen.mark.get(b"portscan.2") == 4)
            lb.box.fence(b"portscan.2")                 # the coordinator's fence: its failover's frames come
        handed = {"nat.0": [pack_packets([pkts[c] for c in (3, 5, 20, 21, 22, 23)]), 23, False, {}, 23],
                  "nat.1": [pack_packets([pkts[4]]), 7, False, {}, 7],
                  "nat.2": [pack_packets([pkts[6]]), 6, False, {}, 6]}
        failover = InstanceWorker(plan, ctx, "portscan", 2, guard, "portscan.2#1",
                                  {"floors": {0: 0}, "feeds": handed, "bound": 6})
        runs: list[list[int]] = []
        process = failover._process
        failover._process = lambda batch, mark: (runs.append([p.clock for p in batch]), process(batch, mark))
        # What the upstreams send after the re-pointing: nat.2's 10-19 (it lagged), then the end.
        # Each socket is kept until the run ends: one dropped at once closes with
        # LINGER 0 and loses its frame if the ipc connection is not up yet (under
        # CI's load that hung failover.run() until the 90-minute limit).
        upstreams = []
        for name, sent in (("nat.0", []), ("nat.1", []), ("nat.2", pkts[10:20])):
            upstreams.append(dealer(ctx, plan.address("portscan.2#1"), name))
            upstreams[-1].send(encode(Kind.DATA, [INF, {}, pack_packets(sent), True, INF, {}, []]))
        failover.run()
        assert runs[:4] == [[3], [4], [5], [6]]         # the replay: one clock a step, nothing past 6
        assert [c for batch in runs for c in batch] == [3, 4, 5, 6, *range(10, 24)]
        got: list[int] = []
        for lb in lbs:
            _pump(lb, lambda lb=lb: b"portscan.2" in lb.ended)
            clocks = [p.clock for p in lb.queues[b"portscan.2"]]
            assert clocks == sorted(clocks)
            got += clocks
        assert sorted(got) == [3, 4, 5, 6, *range(10, 24)]     # every packet once: none lost, none twice
    finally:
        ctx.destroy(linger=0)


def test_a_failover_fed_by_a_failover_still_replaying_replays_what_comes_behind(tmp_path):
    """§5.4 two failures in a row: nat.0 and portscan.2 die together, nat.0#1 is still
    replaying when it hands over what it sent portscan.2 (clocks 3 and 5, watermark 5),
    but the dead nat.0 may have sent the dead portscan.2 up to 12 (the bound the
    coordinator computes from what nat.0 was handed).  The failover waits for nat.0#1's
    replay to come and replays everything up to 12 one clock a step: taken as new
    input in one batch, clocks the dead portscan.2 had run went out again under a new
    through, and the root applied a packet's fork twice (``chc check --kill
    portscan[2]@900,nat[0]@900``: a packet never completed)."""
    import zmq

    from chc.runtime.procio import Guard
    from chc.runtime.procworker import INF, InstanceWorker
    from chc.runtime.wire import Kind, dealer, encode, pack_packets

    pkts, plan = _clocked(tmp_path)
    ctx = zmq.Context()
    guard = Guard([])
    try:
        _lbs = [InstanceWorker(plan, ctx, "lb", j, guard) for j in range(3)]    # bound: they take its output
        handed = {"nat.0": [pack_packets([pkts[3], pkts[5]]), 5, False, {}, 5],
                  "nat.1": [pack_packets([pkts[4]]), 12, False, {}, 12],
                  "nat.2": [pack_packets([pkts[6], pkts[8]]), 12, False, {}, 12]}
        failover = InstanceWorker(plan, ctx, "portscan", 2, guard, "portscan.2#1",
                                  {"floors": {0: 0}, "feeds": handed, "bound": 12, "fenced": ["nat.0"]})
        runs: list[list[int]] = []
        process = failover._process
        failover._process = lambda batch, mark: (runs.append([p.clock for p in batch]), process(batch, mark))
        frames = {"nat.0#1": [[pkts[3], pkts[5]], 5, 5, False],       # what it handed over already: dropped
                  "nat.1": [pkts[13:15], INF, INF, True], "nat.2": [[pkts[15]], INF, INF, True]}
        upstreams = []
        for name, (sent, mark, through, eof) in frames.items():
            upstreams.append(dealer(ctx, plan.address("portscan.2#1"), name))
            upstreams[-1].send(encode(Kind.DATA, [mark, {}, pack_packets(sent), eof, through, {}, []]))
        later = upstreams[0]
        later.send(encode(Kind.DATA, [12, {}, pack_packets([pkts[7], pkts[9], pkts[11]]), False, 11, {}, []]))
        later.send(encode(Kind.DATA, [INF, {}, pack_packets(pkts[20:22]), True, INF, {}, []]))
        failover.run()
        assert runs[:8] == [[3], [4], [5], [6], [7], [8], [9], [11]]
        assert sorted(c for batch in runs for c in batch) == [3, 4, 5, 6, 7, 8, 9, 11, 13, 14, 15, 20, 21]
    finally:
        ctx.destroy(linger=0)


def _clocked(tmp_path):
    """24 IP packets of the LAN capture with clocks 0-23, and a recovering plan of the
    paper chain at parallelism 3 (in-process workers, model T: no store)."""
    from chc.packet import Packet
    from chc.runtime.procworker import Plan

    with open_capture(str(LAN)) as r:
        pkts = [p for p in (Packet(data, ts, k) for k, (ts, data) in enumerate(itertools.islice(r, 60)))
                if p.src is not None][:24]
    assert len(pkts) == 24
    for clock, p in enumerate(pkts):
        p.clock = clock
    return pkts, Plan(str(tmp_path), load_spec(str(PAPER)).with_parallelism(3), "T", 1, ("memory", ""), recover=True)


def _pump(worker, done, tries: int = 500) -> None:
    """Take what reaches ``worker``'s mailbox until ``done()`` (a bounded wait, not a timing assert)."""
    for _ in range(tries):
        if done():
            return
        if not worker._receive():
            worker.box.sock.poll(20)
    raise AssertionError(f"{worker.me} did not get what was sent to it")


def test_a_store_call_made_while_another_waits_takes_only_its_own_answer(tmp_path):
    """The coordinator's wait for the store server's answer to one call also watches
    its workers, and a death it sees there starts a failover, which calls the store
    again.  The inner call must leave the outer one's answer to it (``chc check
    --kill random:3``, seed 5: the inner call took it, and the run hung)."""
    import threading

    import zmq

    from chc.runtime.procio import Guard
    from chc.runtime.storeserver import RemoteStore
    from chc.runtime.wire import Kind, decode, encode

    ctx = zmq.Context()
    address = f"ipc://{tmp_path}/store"
    server = ctx.socket(zmq.ROUTER)
    server.bind(address)
    died_r, died_w = os.pipe()
    inner: list = []

    def gone(fd: int) -> None:                  # a worker died: its failover calls the store
        guard.sentinels.remove(fd)
        inner.append(remote._call("hold_pruning", True))

    guard = Guard([died_r], gone)
    remote = RemoteStore(ctx, address, "@coordinator", guard)

    def serve() -> None:
        """Answer the first request only once the second is in: the inner call reads both."""
        requests = []
        while len(requests) < 2:
            peer, frame = server.recv_multipart()
            requests.append((peer, decode(frame)[1][0]))
            if len(requests) == 1:
                os.write(died_w, b"x")
        for peer, rid in requests:
            server.send_multipart([peer, encode(Kind.REPLY, [rid, 1, f"answer {rid}"])])

    threading.Thread(target=serve, daemon=True).start()
    outer: list = []
    caller = threading.Thread(target=lambda: outer.append(remote._call("fence", "nat.0")), daemon=True)
    caller.start()
    caller.join(20)
    try:
        assert inner == ["answer 2"] and outer == ["answer 1"]
    finally:
        os.close(died_r)
        os.close(died_w)
        ctx.destroy(linger=0)


def test_a_control_message_to_a_failover_waits_until_it_is_connected():
    """The coordinator's mailbox drops a message to a peer not yet connected: a fence
    sent to a failover just launched (lb.2#1, when portscan.2 died next) was lost, and
    lb.2#1 held portscan.2#1's frames for good (``chc check --kill random:3`` seed 2
    hung in 2 of 4 runs).  So it waits until the process said it is ready, or is gone."""
    rt = ProcRuntime(load_spec(str(PAPER)))
    sent: list = []

    class Box:
        def reply(self, peer: bytes, frame: bytes) -> None:
            sent.append((peer, peer.decode() in rt.ready))

    class Alive:
        def __init__(self, alive: bool) -> None:
            self.alive = alive

        def is_alive(self) -> bool:
            return self.alive

    waits = []

    def service(ms: float) -> None:             # its "ready" arrives on the third wait
        waits.append(ms)
        if len(waits) == 3:
            rt.ready.add("lb.2#1")

    rt.box, rt._service = Box(), service
    rt.current = {"lb.2": "lb.2#1", "lb.1": "lb.1#1"}
    rt.procs = {"lb.2#1": Alive(True), "lb.1#1": Alive(False)}
    rt._tell("lb.2", b"fence")
    assert sent == [(b"lb.2#1", True)] and len(waits) == 3
    rt._tell("lb.1", b"fence")                  # died before it was ready: no wait for ever
    assert sent[-1] == (b"lb.1#1", False) and len(waits) == 3


def test_a_death_seen_during_a_failover_waits_for_it_and_a_dead_feeder_goes_first():
    """§5.4 failures in a row, in the coordinator: a death seen inside a failover's waits
    is queued, not failed over there (a downstream instance failed over inside its
    upstream's failover would ask the dead upstream for its hand-over and wait for
    ever); once the failover ends the queued deaths follow in order.  A dead feeder of
    the instance being failed over is the exception: it goes first, inside."""
    from chc.runtime.procio import Guard

    rt = ProcRuntime(load_spec(str(PAPER)).with_parallelism(3), model="EO+C+NA", failover=True)
    done: list[str] = []

    class Proc:
        pid = 1

        def join(self, timeout: float) -> None:
            pass

    fds = {"nat.0": 100, "lb.2": 101}

    def failover(dead: str, p) -> None:
        done.append(dead)
        if dead == "nat.0":                     # lb.2 dies while nat.0 is failed over
            rt._failing = True
            rt._gone(fds["lb.2"])
            assert done == ["nat.0"]            # (not inside)
            rt._failing = False

    rt.guard = Guard(list(fds.values()))
    rt._sentinels = {fd: n for n, fd in fds.items()}
    rt.procs = {"nat.0": Proc(), "lb.2": Proc()}
    rt.current = {"nat.0": "nat.0", "lb.2": "lb.2"}
    rt._failover = failover
    rt._gone(fds["nat.0"])
    assert done == ["nat.0", "lb.2"] and rt._deaths == []
    # Inside portscan.2's failover, nat.0 (a feeder) is dead and queued: failed over there.
    done.clear()
    rt._deaths = [("nat.0", Proc())]
    rt._failover = lambda dead, p: done.append(dead)
    told: list = []
    rt._repoint = lambda feeder, vertex, i, new: told.append((feeder, new))
    rt._dead_feeders("portscan", 2, "portscan.2#1", ["nat.0", "nat.1", "nat.2"], {"nat.1": [], "nat.2": []})
    assert done == ["nat.0"] and told == [("nat.0", "portscan.2#1")] and rt._deaths == []


def test_a_failover_started_after_a_target_failed_over_sends_to_the_targets_failover(tmp_path):
    """§5.4 nat.0 fails after portscan.2 already did: nat.0#1 feeds portscan.2#1 (the
    dead portscan.2's address has nobody behind it)."""
    import zmq

    from chc.runtime.procio import Guard
    from chc.runtime.procworker import _Sender

    _, plan = _clocked(tmp_path)
    ctx = zmq.Context()
    try:
        out = _Sender(plan, ctx, "nat.0#1", "nat", Guard([]), {"portscan.2": "portscan.2#1"})
        ends = [s.getsockopt(zmq.LAST_ENDPOINT).decode() for s in out.socks["portscan"]]
        assert ends == [plan.address("portscan.0"), plan.address("portscan.1"), plan.address("portscan.2#1")]
    finally:
        ctx.destroy(linger=0)


# -- a worker that hangs: heartbeats (procio) ---------------------------------------------------

def _stopped_at(rt: ProcRuntime, records, process: str, at: int):
    """The records, SIGSTOPping ``process`` (it hangs: alive, silent) at record ``at``; it
    goes on after 60 s if nothing killed it (so a test without detection fails, not hangs)."""
    import signal
    import threading
    for index, record in enumerate(records):
        if index == at:
            pid = rt.procs[process].pid
            os.kill(pid, signal.SIGSTOP)
            wake = threading.Timer(60, _signal, (pid, signal.SIGCONT))
            wake.daemon = True
            wake.start()
        yield record


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def test_a_hung_instance_is_found_by_its_heartbeats_killed_and_failed_over(records, sim):
    rt = ProcRuntime(load_spec(str(PAPER)), model=MODEL, failover=True, heartbeat_s=0.1, misses=10)
    rt.run(_stopped_at(rt, records, "nat.0", 3500))
    s = rt.summary()
    assert s.state_digest == sim.state_digest and s.packets_out == sim.packets_out
    hung = [e for e in s.events if e["process"] == "nat.0"]
    assert len(hung) == 1 and hung[0]["how"].startswith("silent for") and "killed" in hung[0]["how"]
    assert _gone(rt.pids.values())


def test_a_hung_instance_without_recovery_stops_the_run_with_one_line(records):
    from chc.runtime.errors import ProcFailure
    rt = ProcRuntime(load_spec(str(PAPER)), model=MODEL, heartbeat_s=0.1, misses=10)
    with pytest.raises(ProcFailure, match=r"nat\.0 \(pid \d+\) was silent for [\d.]+ s \(10 heartbeats\) and killed"):
        rt.run(_stopped_at(rt, records, "nat.0", 3500))
    assert _gone(rt.pids.values())


@pytest.mark.parametrize("kills", [[], [Kill("nat", 0, 5500)]], ids=["no-recovery", "nf-recovery-only"])
def test_a_hung_store_server_stops_the_run_with_one_line(records, kills):
    """The store server beats too: one that hangs is killed and, without its recovery on,
    the run stops, instead of waiting for it for good.  (With NF recovery on and no
    checkpoints, its death was taken for a recoverable store's: a missing-log error.)"""
    from chc.runtime.errors import ProcFailure
    rt = ProcRuntime(load_spec(str(PAPER)), model=MODEL, heartbeat_s=0.1, misses=10, kills=kills)
    with pytest.raises(ProcFailure, match=r"@store \(pid \d+\) was silent for [\d.]+ s .*store server is recovered "
                                          r"only with --failover or a --kill store@N"):
        rt.run(_stopped_at(rt, records, "@store", 3500))
    assert _gone(rt.pids.values())


def test_a_hung_store_server_with_failover_on_is_killed_and_failed_over(records, sim):
    rt = ProcRuntime(load_spec(str(PAPER)), model=MODEL, heartbeat_s=0.1, misses=10, failover=True)
    rt.run(_stopped_at(rt, records, "@store", 3500))
    s = rt.summary()
    assert s.state_digest == sim.state_digest
    [e] = [e for e in s.events if e["kind"] == "store-failover"]
    assert e["how"].startswith("silent for") and e["failover_process"] == "@store#1"
    assert _gone(rt.pids.values())


def test_a_kill_past_the_input_is_logged_as_skipped_and_checks_say_so():
    """It killed nothing, silently (chc run), and chc check said "killed ..., after the
    instances had finished" (found by a new-user trial)."""
    from chc.coe import _kill_faults
    with open_capture(str(LAN)) as reader:
        records = list(itertools.islice(reader, 500))
    rt = ProcRuntime(load_spec(PAPER), model="EO+C+NA", kills=[Kill("nat", 0, 999_999)])
    rt.run(records)
    skipped = [e for e in rt.summary().events if e["kind"] == "kill-skipped"]
    assert [(e["process"], e["reason"]) for e in skipped] == [("nat.0", "the input ended before packet 999999")]
    # the printed summary says it too (it was in the JSON alone: a new-user trial)
    assert "kills not done (1):\n  nat.0: the input ended before packet 999999" in rt.summary().render()
    assert _kill_faults(1, "nat[0]@999999", [], skipped) == {
        "not_killed": "nat.0 (the input ended before packet 999999)"}
    moved = [{"kind": "failover", "process": "nat.0", "killed_at_packet": 1728, "kill_asked_at": 1709,
              "failover_process": "nat.0#1", "replayed": 5, "handed_over": 5, "replay_s": 0.01,
              "logged_floor": [0], "recovery_s": 0.02}]
    assert _kill_faults(1, "nat[0]@1709", moved, [])["killed"] == (
        "nat[0] (nat.0) at input packet 1728 (asked at 1709: kills land between input batches)")
    restarted = [{"kind": "manager-restarted", "vertex": "portscan", "killed_at_packet": 3072}]
    assert _kill_faults(1, "manager:portscan@3000", [], restarted) == {
        "killed": "manager:portscan at input packet 3072, started again"}


def test_a_scenarios_crashes_are_real_kills_and_pass_the_check(tmp_path, monkeypatch, capsys):
    """§5.4 a scenario's crash events on proc are SIGKILLs at their input packets (they were
    refused: "use --kill"), among its scaling changes (scale-crash.yaml: five fixed
    crashes and seed-drawn ones); each is failed over and the seed passes, and without
    the failover's replay it diverges."""
    monkeypatch.chdir(ROOT)
    scenario = "examples/scenarios/scale-crash.yaml"
    argv = ["check", "--runtime", "proc", str(PAPER), scenario, str(LAN), "--packets", "3000", "--seeds", "2"]
    assert main([*argv, "--json", str(tmp_path / "c.json")]) == 0
    results = json.loads((tmp_path / "c.json").read_text())["results"]
    assert all(r["events"].get("failover", 0) >= 5 for r in results), [r["events"] for r in results]
    out = capsys.readouterr().out
    assert "2 of 2 seeds passed" in out
    # each seed's faults: counted, the first kills a line each, the others by process and packet
    # (one line of 1,200-1,400 characters before); --json keeps every one in full
    assert max(map(len, out.splitlines())) < 400, out
    assert out.count("each failed over (the first 3 below; --json: faults has every one):") == 2, out
    assert all(r["faults"]["killed"].count(" at input packet ") >= 5 for r in results)
    assert main([*argv, "--break", "no-replay"]) == 1


def test_scenario_crash_targets_become_kills():
    from chc.runtime.proc import ROOT as ROOT_KILL
    from chc.runtime.proc import STORE_KILL, crash_kill
    from chc.scenario import Event

    chain = load_spec(str(PAPER)).with_parallelism(3)
    kill = crash_kill(Event("crash", "nat", {"pick": 7}, at_packet=100), chain)
    assert (kill.vertex, kill.at, kill.pick) == ("nat", 100, 7)     # an instance of nat when it is due
    assert crash_kill(Event("crash", "lb[2]", at_packet=5), chain).instance == 2
    assert crash_kill(Event("crash", "root[0]", at_packet=5), chain).vertex == ROOT_KILL
    assert crash_kill(Event("crash", "store", at_packet=5), chain).vertex == STORE_KILL
    with pytest.raises(ValueError, match="kills at input packets"):
        crash_kill(Event("crash", "nat", at_time_ns=5_000_000), chain)


def test_a_scenario_crash_not_made_is_a_pass_without_its_kill(tmp_path, monkeypatch, capsys):
    """A crash past the input was a plain PASS (nothing killed, nothing recovered: a new
    user's trial); it is counted as --kill's are.  A crash of an instance the vertex
    never has is refused in one line (as the sim and --kill refuse it)."""
    monkeypatch.chdir(ROOT)
    late = tmp_path / "late.yaml"
    late.write_text("parallelism: {nat: 2}\nevents:\n  - {at: {packets: 99999}, do: crash, target: nat}\n")
    assert main(["check", "--runtime", "proc", str(PAPER), str(late), str(LAN), "--packets", "600",
                 "--seed", "0"]) == 0
    out = capsys.readouterr().out
    assert "PASS WITHOUT ITS KILL (nat." in out and "the input ended before packet 99999" in out, out
    none = tmp_path / "none.yaml"
    none.write_text("parallelism: {nat: 2}\nevents:\n  - {at: {packets: 100}, do: crash, target: 'nat[5]'}\n")
    assert main(["check", "--runtime", "proc", str(PAPER), str(none), str(LAN), "--packets", "600",
                 "--seed", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "crash of nat[5]: nat has instances 0-1" in err[0], err


@pytest.mark.parametrize("scenario, argv, says", [
    ("model: T\n", [], "a scenario's crash: in model T"),
    ("packet_log: store\n", [], "a scenario's crash of the root: a failover root"),
    ("packet_log: store\n", ["--kill", "nat@50"], "--kill root: a failover root"),
])
def test_what_a_scenario_crash_cannot_recover_names_the_crash(tmp_path, monkeypatch, capsys, scenario, argv, says):
    """Its refusals said '--kill: ...' though no --kill was given (a new user's trial)."""
    monkeypatch.chdir(ROOT)
    sc = tmp_path / "sc.yaml"
    sc.write_text(scenario + "events:\n  - {at: {packets: 100}, do: crash, target: 'root[0]'}\n")
    rc = main(["check", "--runtime", "proc", str(PAPER), str(sc), str(LAN), "--packets", "300", "--seed", "0", *argv])
    out = capsys.readouterr()
    assert rc in (1, 2) and says in out.out + out.err, out


def test_serving_several_roots_with_a_scenarios_crashes(tmp_path):
    """Crash events turn recovery on as --kill does; with several roots that was refused
    (one clock order held root 1's packets until an end a served chain never reaches):
    per-root order holds with recovery now (docs/proc.md, "Several roots")."""
    spec = tmp_path / "two.yaml"
    spec.write_text(PAPER.read_text() + "\nroots: 2\n")
    sc = tmp_path / "c.yaml"
    sc.write_text("events:\n  - {at: {packets: 600}, do: crash, target: nat}\n")
    out = tmp_path / "s.json"
    # (--rate: at the capture's own timestamps these 1,500 packets take 72 s)
    assert main(["serve", str(spec), "--runtime", "proc", "--capture", str(LAN), "--scenario", str(sc),
                 "--rate", "3000", "--model", "EO+C+NA", "-c", "1500", "--summary-json", str(out),
                 "--quiet"]) == 0
    s = json.loads(out.read_text())
    assert s["packets_in"] == s["packets_out"] == 1500 and [e["kind"] for e in s["events"]] == ["failover"]
