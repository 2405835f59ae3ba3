"""``chc check --runtime proc --kill``: the COE oracle judging a run with a real SIGKILL.

Each seed SIGKILLs one NF instance process (``random``: an instance and an input
packet drawn from the seed; or ``VERTEX[I]@N``), a failover process takes over
(§5.4) and the checker compares the run with the logical chain under the store's
serialization.  The run passes; with the failover's replay switched off
(``--break no-replay``) the same seed diverges; the updates the killed process
issued reach the checker although its final report dies with it (they travel
with every batch's stats).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

pytest.importorskip("zmq")

from chc.capture import open_capture  # noqa: E402
from chc.cli import main  # noqa: E402
from chc.coe import draw_kill, variant  # noqa: E402
from chc.runtime.proc import Kill, ProcRuntime  # noqa: E402
from chc.scenario import load_scenario  # noqa: E402
from chc.spec import load_spec  # noqa: E402
from procpace import held  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LAN = str(ROOT / "traces/pathspider/lan-2012.pcap.gz")
PAPER = str(ROOT / "examples/paper_chain.yaml")
PARALLEL = str(ROOT / "examples/scenarios/parallel.yaml")
# Seed 6 of the parallel scenario draws EO+C+NA with batches of 64: updates in flight at the kill.
SEED = "6"
KILL = "nat[0]@1000"


def _check(argv: list[str], monkeypatch) -> int:
    monkeypatch.chdir(ROOT)
    return main(["check", "--runtime", "proc", PAPER, PARALLEL, LAN, *argv])


def test_a_killed_nat_instance_passes_the_check(monkeypatch, capsys):
    assert _check(["--packets", "2000", "--seed", SEED, "--kill", KILL], monkeypatch) == 0
    out = capsys.readouterr().out
    assert f"kill {KILL}" in out and "PASS" in out
    assert "killed nat[0] (nat.0) at input packet" in out and "failover nat.0#1 replayed" in out


def test_without_the_replay_the_killed_run_diverges(monkeypatch, capsys):
    assert _check(["--packets", "2000", "--seed", SEED, "--kill", KILL, "--break", "no-replay"], monkeypatch) == 1
    out = capsys.readouterr().out
    assert "DIVERGED" in out and "break no-replay: nat.0#1 replayed none of the" in out


def test_a_random_kill_per_seed(monkeypatch, capsys):
    # Seed 2 draws lb[2]@1028.  (Seed 0's early portscan kill diverged only at times, before
    # the failover kept to the merge rule: the deterministic test of that is in test_proc_kill.py.)
    assert _check(["--packets", "1500", "--seed", "2", "--kill", "random"], monkeypatch) == 0
    out = capsys.readouterr().out
    assert "1 of 1 seeds passed" in out and "kill lb[2]@1028" in out
    assert out.count("    faults: killed lb[2] (lb.2) at input packet") == 1


def test_two_kills_at_once_both_fail_over_and_pass(monkeypatch, capsys):
    """Both processes die before the coordinator looks: their deaths reach it in one
    wait, the upstream NAT is a feeder of the portscan instance being failed over.
    Before deaths were taken one failover at a time (a feeder that died first), a
    failover sent its hand-over request to a failover not yet connected (lost) and a
    failover started later held its upstream failover's frames for a fence it never
    got: each of these hung the run."""
    kill = "portscan[2]@900,nat[0]@900"
    assert _check(["--packets", "2500", "--seed", "4", "--kill", kill], monkeypatch) == 0
    out = capsys.readouterr().out
    assert "1 of 1 seeds passed" in out and f"kill {kill}" in out
    assert "failover portscan.2#1 replayed" in out and "nat.0#1 replayed" in out


@pytest.mark.parametrize("kill, seeds", [
    # A failover root forgets the log entries below its floor, the oldest packet it still
    # logs: one more (<=) silently dropped packet 0 while a copy of it was in the chain,
    # which only a second failure (lb.0's replay) showed: its output lost.
    ("root[0]@1000,lb[0]@2000", ["--seed", "0"]),
    # A failover root takes each instance's kept reports again; a report at the through it
    # has already applied (<= seen) is a duplicate: applied twice, the counts went wrong.
    ("trojan[1]@1500", ["--seeds", "3"]),
])
def test_failure_pairs_a_mutation_hunt_found_only_these_runs_catch(monkeypatch, capsys, kill, seeds):
    """Kept as regressions: each exits 1 with its mechanism switched off (a mutation hunt;
    single random kills never caught them)."""
    assert _check(["--packets", "3000", *seeds, "--kill", kill], monkeypatch) == 0, capsys.readouterr().out


def test_killing_an_instance_again_kills_its_failover(monkeypatch, capsys):
    """A second kill of lb[1] kills lb.1#1, a third lb.1#2 (the coordinator fails over
    what died before it looks for the instance's process).  A failover that dies
    before its replay is reported gets its event all the same, and its hold on the
    store's pruning is released when the next failover takes over."""
    kill = "lb[1]@800,lb[1]@1100,lb[1]@1500"
    assert _check(["--packets", "2500", "--seed", SEED, "--kill", kill], monkeypatch) == 0
    out = capsys.readouterr().out
    assert "1 of 1 seeds passed" in out
    assert "killed lb[1] (lb.1) at input packet" in out and "; lb[1] (lb.1#1) at input packet" in out
    assert "; lb[1] (lb.1#2) at" in out
    assert "lb.1#3 replayed" in out


def test_random_k_draws_k_kills_of_different_instances():
    chain, sc = load_spec(PAPER), load_scenario(PARALLEL)
    v = variant(chain, sc, 3, ["memory"])
    one = draw_kill(v, 1000, "random")
    three = draw_kill(v, 1000, "random:3").split(",")
    assert len(three) == 3 and three[0] == one              # random is random:1: seeds keep their kill
    assert len({k.split("@")[0] for k in three}) == 3
    with pytest.raises(ValueError, match="random:K"):
        draw_kill(v, 1000, "random:0")


def test_a_seeds_kill_is_drawn_from_the_seed_apart_from_its_variant():
    chain, sc = load_spec(PAPER), load_scenario(PARALLEL)
    v = variant(chain, sc, 3, ["memory"])
    kills = {draw_kill(v, 1000, "random") for _ in range(3)}
    assert len(kills) == 1
    vertex, rest = kills.pop().split("[")
    i, at = rest.split("]@")
    assert vertex in chain.vertices and int(i) < v.parallelism[vertex] and 100 <= int(at) <= 900
    assert variant(chain, sc, 3, ["memory"]) == v                   # the kill changes nothing else
    assert "kill" not in v.as_json()                                # a sim seed's JSON is as before
    assert draw_kill(v, 1000, "lb[1]@5") == "lb[1]@5"


def test_the_killed_process_issued_updates_reach_the_checker():
    """Without the replay nothing re-issues what the killed NAT issued before the kill:
    the checker gets those updates only from the per-batch stats."""
    with open_capture(LAN) as reader:
        records = list(itertools.islice(reader, 3000))
    rt = ProcRuntime(load_spec(PAPER), model="EO+C+NA", record=True, kills=[Kill("nat", 0, 2000)],
                     breaks=("no-replay",))
    rt.run(held(rt, records, "nat.0", 1500))
    (event,) = rt.summary().events
    assert event["replayed"] == 0
    nat = sorted(tag[0] for key, tag in rt.issued_updates() if key.vertex == "nat")
    assert nat and nat[0] < 100            # issued by nat.0 (the killed process) early in the run
    assert "nat.0" not in {n for n, r in rt.reported.items() if "issued" in r and r["issued"]}


@pytest.mark.parametrize("argv, says", [
    (["--kill", "nat@x"], "VERTEX[I]@PACKETS"),
    (["--kill", "nope@10"], "no vertex"),
    (["--kill", "nat[7]@10"], "3 instance(s)"),                    # the seed's parallelism
    (["--kill", "nat[0]@10,lb@x"], "VERTEX[I]@PACKETS"),
    (["--kill", "random:x"], "random:K"),
    (["--break", "no-replay"], "needs a --kill"),
    (["--kill", "random", "--runtime", "sim"], "--runtime proc"),
    (["--kill", "nat[0]@10", "--kill", "during"], "--kill during draws the kills itself: give it alone"),
])
def test_bad_kills_are_one_line(argv, says, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    argv = ["check", PAPER, PARALLEL, LAN, "--packets", "50", "--seeds", "1", *argv]
    if "--runtime" not in argv:
        argv += ["--runtime", "proc"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0]


class _Box:
    """What ``storeserver._handle`` needs of a mailbox: its replies, kept."""

    def __init__(self) -> None:
        self.replies: list = []

    def reply(self, peer: bytes, frame: bytes) -> None:
        self.replies.append((peer, frame))


def store_server(vertex: str = "portscan", obj: str = "likelihood") -> tuple:
    """A store server's request handling without its process (a memory store with what
    NF failover keeps): ``call(peer, method, args)`` answers as it would, ``op(code,
    *args, ...)`` is one op of ``vertex[i]`` on a shared object; the recording, kept."""
    from chc.backends.memory import MemoryStore
    from chc.core.store import ObjectKey, Op
    from chc.runtime.storeserver import Failover, _handle
    from chc.runtime.wire import Kind, decode, encode, op_rows

    store, box, steps = MemoryStore(), _Box(), []
    failover = Failover(store)
    key = ObjectKey(vertex, obj, b"h", False)

    def call(peer: bytes, method: str, args: list) -> object:
        _handle(box, store, peer, Kind.CALL, decode(encode(Kind.CALL, [1, method, args]))[1], steps, failover)
        return decode(box.replies[-1][1])[1][2]

    def op(code: str, *args, seq: int = 0, clock: int = -1, i: int = 0) -> list:
        return op_rows([Op(code, key, args, f"{vertex}/{i}", seq, i, None if clock < 0 else (clock, 0))])
    return call, op, steps, failover


def test_the_recording_keeps_the_stores_answer_to_a_replayed_read():
    """§5.4 a failover's replayed read of a shared object is answered from the read log
    (the value the killed instance read); the checker's recording must keep what the
    store itself answered, or its re-execution of the serialization disagrees."""
    from chc.runtime.wire import decode

    call, op, steps, _ = store_server()
    call(b"portscan.0", "execute", [op("set", 1, seq=1, clock=4), 4])
    assert call(b"portscan.0", "execute", [op("get"), 5]) == [1]          # logged for clock 5
    call(b"portscan.1", "execute", [op("set", 2, seq=1, clock=6, i=1), 6])      # another instance moves it on
    call(b"portscan.0#1", "replaying", [True])
    assert call(b"portscan.0#1", "execute", [op("get"), 5]) == [1]        # the replay: the logged value
    recorded = decode(steps[-1])[1]
    assert recorded[0] == "execute" and recorded[2] == [2] and recorded[3] is None


def test_a_submitted_request_does_not_carry_the_ops_still_in_flight(tmp_path):
    """ZeroMQ loses nothing and keeps order: a non-blocking request sends the un-ACKed
    ops an earlier, unanswered request carries only after that one was refused (the
    client's go-back-N resend made a failover's one-clock replay steps quadratic)."""
    import zmq

    from chc.core.store import ObjectKey, Op
    from chc.runtime.procio import Guard
    from chc.runtime.storeserver import RemoteStore
    from chc.runtime.wire import Kind, decode, encode

    ctx = zmq.Context()
    try:
        server = ctx.socket(zmq.ROUTER)
        address = f"ipc://{tmp_path}/store"
        server.bind(address)
        remote = RemoteStore(ctx, address, "nat.0#1", Guard([]))
        key = ObjectKey("nat", "map", 1, True)
        ops = [Op("set", key, (n,), "nat/0", n, 0, (n, 0)) for n in range(1, 6)]

        def request() -> tuple[bytes, int, list[int]]:
            peer, frame = server.recv_multipart()
            rid, _, args = decode(frame)[1]
            return peer, rid, [row[7] for row in args[0]]          # the ops' seqs

        remote.submit(ops[:2], lambda seq: None)
        peer, first, seqs = request()
        assert seqs == [1, 2]
        remote.submit(ops[:3], lambda seq: None)                    # un-ACKed 1, 2 in front of 3
        assert request()[2] == [3]
        server.send_multipart([peer, encode(Kind.REPLY, [first, 0, ["StoreError", "refused"]])])
        while remote.acks[0][0] == first:
            remote._read(True)
        remote.submit(ops[:5], lambda seq: None)                    # after the refusal: all again
        assert request()[2] == [1, 2, 3, 4, 5]
    finally:
        ctx.destroy(linger=0)


# -- on Redis: the store server in front of it (docs/proc.md) ------------------------------------

def test_on_redis_a_killed_nat_passes_and_without_the_replay_diverges(monkeypatch, capsys, redis_urls):
    """On Redis the store server stands in front of it (the read log, fences, the
    recorded order): seed 6's NAT kill passes, and without the replay diverges."""
    argv = ["--packets", "2000", "--seed", SEED, "--kill", KILL, "--store", redis_urls[0]]
    assert _check(argv, monkeypatch) == 0
    out = capsys.readouterr().out
    assert f"store {redis_urls[0]}" in out and "PASS" in out and "failover nat.0#1 replayed" in out
    assert _check([*argv, "--break", "no-replay"], monkeypatch) == 1
    assert "DIVERGED" in capsys.readouterr().out


def test_on_several_redis_servers_random_kills_draw_no_store_and_a_store_kill_is_one_line(monkeypatch, capsys,
                                                                                        redis_urls):
    """Store failover runs in front of one Redis server: there --kill random draws the store
    server too; on two servers (two store instances) it draws instances and roots only, and
    --kill store is refused before anything starts."""
    chain, sc = load_spec(PAPER), load_scenario(PARALLEL)
    one, two = redis_urls[0], ",".join(redis_urls[:2])
    assert any("store@" in draw_kill(variant(chain, sc, seed, [one]), 1000, "random:3") for seed in range(40))
    assert not any("store@" in draw_kill(variant(chain, sc, seed, [two]), 1000, "random:3") for seed in range(40))
    monkeypatch.chdir(ROOT)
    assert main(["run", "--runtime", "proc", PAPER, LAN, "--store", two, "--model", "EO", "--kill", "store@10"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("chc: error: --kill store: store failover needs") and "\n" not in err


def test_kills_given_in_two_options_are_both_made():
    """A second --kill silently replaced the first (a new user's trial)."""
    from chc.cli import _one_kill
    assert _one_kill(["nat[0]@10", "lb[1]@20"]) == "nat[0]@10,lb[1]@20" and _one_kill(None) == ""


def test_a_kill_may_name_an_instance_a_manager_adds():
    """chc serve refused --kill portscan[1]@N for a vertex its policy scales out (chc check
    took it): the kill lands if the instance is there by then, else it is logged skipped."""
    from chc.runtime.proc import parse_kill

    scaled = load_spec(str(ROOT / "examples/autoscale.yaml"))
    assert parse_kill("portscan[1]@8000", scaled).instance == 1
    with pytest.raises(ValueError, match="nat has 1 instance"):
        parse_kill("nat[1]@8000", scaled)          # no policy on nat: one instance, always


def test_a_seed_whose_kill_was_not_made_is_no_plain_pass(monkeypatch, capsys, tmp_path):
    """A kill past the input was skipped and the seed counted as a plain pass ("2 of 2
    seeds passed"): a user believed recovery was tested when it was not.  Its line, the
    last line and the JSON now say the kill was not made, and why; still exit 0."""
    import json
    out_json = tmp_path / "check.json"
    assert _check(["--packets", "500", "--seeds", "2", "--kill", "nat[0]@50000", "--json", str(out_json)],
                  monkeypatch) == 0
    out = capsys.readouterr().out
    assert out.count("PASS WITHOUT ITS KILL (nat.0 not killed: the input ended before packet 50000)") == 2, out
    assert "0 of 2 seeds passed with their kill, 2 passed without it (kill not made in seeds 0, 1: the input " \
           "ended before packet 50000)" in out, out
    assert "2 of 2 seeds passed" not in out
    report = json.loads(out_json.read_text())
    assert report["passed_without_kill"] == [0, 1] and report["verdicts"] == {"pass": 2}
    assert [r["kills_not_made"] for r in report["results"]] == [
        [{"process": "nat.0", "reason": "the input ended before packet 50000"}]] * 2


def test_a_seed_that_made_one_of_its_two_kills_says_which_was_not_made(monkeypatch, capsys):
    """The made kill's failover and the skipped one both show (the skipped one was dropped
    from the faults when another kill had failed over)."""
    assert _check(["--packets", "500", "--seed", "0", "--kill", "nat[0]@200,nat[1]@50000"], monkeypatch) == 0
    out = capsys.readouterr().out
    assert "PASS WITHOUT 1 OF ITS 2 KILLS (nat.1 not killed: the input ended before packet 50000)" in out, out
    assert "faults: killed nat[0] (nat.0) at input packet" in out and "failover nat.0#1 replayed" in out
    assert "0 of 1 seeds passed with their kill, 1 passed without it" in out


def test_the_last_line_counts_the_seeds_without_their_kill_apart():
    from types import SimpleNamespace

    from chc.checkrun import Report

    def seed(n: int, verdict: str, missed: list[dict]) -> dict:
        return {"seed": n, "verdict": verdict, "kills_not_made": missed}

    retired = [{"process": "lb.3", "reason": "retired by a scale-in before it"}]
    results = [seed(0, "pass", []), seed(1, "pass", retired), seed(2, "diverged", []), seed(3, "pass", []),
               seed(4, "pass", retired)]
    job = SimpleNamespace(breaks=(), truncated=None, kill="during", records=[])
    line = Report(job, results, 1.0, 1, asked=5).summary_line()     # type: ignore[arg-type]
    assert line.startswith("2 of 5 seeds passed with their kill, 2 passed without it (kill not made in seeds 1, 4: "
                           "retired by a scale-in before it); 5 seeds: 2 pass, 2 pass without their kill, "
                           "1 diverged ("), line
    assert Report(job, results[:1], 1.0, 1, asked=1).summary_line().startswith("1 of 1 seeds passed (")


def test_kill_during_a_scenario_with_no_change_is_refused(monkeypatch, capsys):
    """--kill during with no scaling event and no scaling policy drew no kill in any
    seed, and each passed as a plain PASS ("2 of 2 seeds passed"): nothing was killed,
    no recovery was tested.  The explicit VERTEX[I]@change:K is refused the same way."""
    assert _check(["--packets", "500", "--seeds", "2", "--kill", "during"], monkeypatch) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == (
        f"chc: error: --kill during: {PARALLEL} makes no scaling change and no vertex of {PAPER} has a "
        "scaling: policy, so no seed has a change to kill during (it needs scale-out, scale-in, move or "
        "refine events); use --kill random or VERTEX[I]@N")
    assert "PASS" not in captured.out


def test_a_seed_with_many_kills_shows_them_counted_and_wrapped():
    """A scenario's crashes and drawn ones made 5-7 failovers a seed, printed as one line
    of 1,200-1,400 characters (a new user's trial).  Up to three stay one line."""
    from chc.checkrun import _fault_lines
    from chc.coe import _kill_faults

    def nf(name: str, at: int) -> dict:
        return {"kind": "failover", "process": name, "killed_at_packet": at, "failover_process": f"{name}#1",
                "replayed": 3, "handed_over": 5, "replay_s": 0.01, "logged_floor": [100], "recovery_s": 0.02}
    root = {"kind": "root-failover", "process": "@root.0", "killed_at_packet": 900, "failover_process": "@root.0#1",
            "replayed": 7, "logged_floor": 1 << 40, "recovery_s": 0.03}
    store = {"kind": "store-failover", "process": "@store", "killed_at_packet": 1000, "failover_process": "@store#1",
             "checkpoint": 4, "re_executed": 9, "recovery_s": 0.04, "wal": True, "wal_updates": 9}
    skipped = {"kind": "kill-skipped", "process": "nat.3", "reason": "retired by a scale-in before it"}
    failovers = [nf("nat.0", 100), nf("lb.1", 300), root, store, nf("portscan.0", 1200)]
    faults = _kill_faults(6, "", failovers, [*failovers, skipped])
    lines = _fault_lines(faults)
    assert lines[0] == ("    faults: 5 kills (3 NF instances, 1 root, 1 store server), each failed over (the first 3 "
                        "below; --json: faults has every one):")
    assert lines[1] == ("      killed nat[0] (nat.0) at input packet 100; failover nat.0#1 replayed 3 packets "
                        "(5 handed over) "
                        "in 0.01 s (logged floor 100, recovery 0.02 s)")
    assert lines[3].startswith("      killed root[0] (@root.0) at input packet 900; failover @root.0#1 replayed 7 "
                               "input packets")
    assert lines[4:] == ["      and 2 more: store (@store) at 1000, portscan[0] (portscan.0) at 1200",
                         "      not killed: nat.3 (retired by a scale-in before it)"]
    three = _fault_lines(_kill_faults(3, "", failovers[:3], failovers[:3]))
    assert len(three) == 1 and three[0].startswith("    faults: killed nat[0] (nat.0) at input packet 100; "
                                                   "lb[1] (lb.1) at input")


def test_a_skipped_kill_beside_a_made_one_stays_in_the_faults():
    """random:K, VERTEX[I]@N,...: one kill failed over, another skipped; the skipped one
    was dropped from the seed's faults (--json) once another had failed over."""
    from chc.coe import _kill_faults, _kills_not_made

    failover = {"kind": "failover", "process": "nat.0", "killed_at_packet": 200, "failover_process": "nat.0#1",
                "replayed": 3, "handed_over": 5, "replay_s": 0.01, "logged_floor": [100], "recovery_s": 0.02}
    skipped = {"kind": "kill-skipped", "process": "nat.1", "packet": 500,
               "reason": "the input ended before packet 50000"}
    faults = _kill_faults(2, "nat[0]@200,nat[1]@50000", [failover], [failover, skipped])
    assert faults["killed"] == "nat[0] (nat.0) at input packet 200"
    assert faults["not_killed"] == "nat.1 (the input ended before packet 50000)"
    assert _kills_not_made(2, "nat[0]@200,nat[1]@50000", [failover], [failover, skipped]) == [
        {"process": "nat.1", "reason": "the input ended before packet 50000"}]


def test_a_failover_that_replayed_nothing_says_only_the_takeover_was_checked():
    """A --kill random seed can pass with `replayed 0 packets`: its line did not say that no
    replay was exercised (a new user's trial)."""
    from chc.coe import _kill_faults

    def nf(replayed: int) -> dict:
        return {"kind": "failover", "process": "nat.0", "killed_at_packet": 100, "failover_process": "nat.0#1",
                "replayed": replayed, "handed_over": 0, "replay_s": 0.0, "logged_floor": [100], "recovery_s": 0.01}
    assert _kill_faults(1, "", [nf(0)], [nf(0)])["failover"].endswith(", nothing to replay: only the takeover "
                                                                         "was checked)")
    assert "only the takeover" not in _kill_faults(1, "", [nf(2)], [nf(2)])["failover"]
    # (inside the parentheses: "; " separates failovers, and a seed with many kills is still
    # wrapped: the CI caught a 1,900-character line when it was not)
    from chc.checkrun import _fault_lines
    five = [nf(0), nf(2), nf(0), nf(3), nf(0)]
    assert _fault_lines(_kill_faults(5, "", five, five))[0].startswith("    faults: 5 kills (5 NF instances)")
