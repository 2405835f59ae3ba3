"""§5.3 straggler clones on the proc runtime (docs/proc.md, "Clones"; docs/stragglers.md).

A clone is a process started while its straggler runs, from the straggler's state;
the upstreams copy to it what they send the straggler; receivers take each clock of
the pair once (instances per packet, the root per report item, the coordinator per
clock), the store answers a pair's reads of a clock the other copy read first from
its read log; the copy that is further is kept.  The runs here give the sim's state
digest, counts and alerts, and pass the COE check; with the duplicates let through
(``--break no-dup-suppression``) the check fails.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("zmq")

from chc.capture import open_capture  # noqa: E402
from chc.cli import main  # noqa: E402
from chc.runtime.proc import ProcRuntime  # noqa: E402
from chc.runtime.procstore import client_id  # noqa: E402
from chc.runtime.procworker import TIMER, CausalInbox  # noqa: E402
from chc.runtime.sim import SimRuntime  # noqa: E402
from chc.runtime.wire import Mailbox, is_generation, logical, previous  # noqa: E402
from chc.scenario import Event  # noqa: E402
from chc.spec import load_spec  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LAN = str(ROOT / "traces/pathspider/lan-2012.pcap.gz")
SCAN = str(ROOT / "traces/scans/nmap-syn-scan.pcap")
PAPER = str(ROOT / "examples/paper_chain.yaml")
SCENARIO = str(ROOT / "examples/scenarios/proc-clone.yaml")


def _records(path: str, n: int | None = None) -> list[tuple[int, bytes]]:
    with open_capture(path) as reader:
        return list(itertools.islice(reader, n))


def _ev(target: str, at: int, **params) -> Event:
    return Event("clone", target, params, at_packet=at)


def _compare(records: list, events: list[Event], model: str, parallelism: dict | None = None) -> dict:
    """A proc run with the clone events against the sim's run without them."""
    chain = load_spec(PAPER)
    if parallelism:
        chain = chain.with_parallelism(parallelism)
    return against_sim(chain, records, events, model)[1]


def against_sim(chain: Any, records: list, events: list[Event], model: str, feed: Any = None,
                sim_events: list[Event] = (), **kw: Any) -> tuple[ProcRuntime, dict]:
    """A proc run of ``chain`` with ``events`` (``kw``: more of ProcRuntime's; ``feed``:
    the records as the run takes them, paced) and its summary, which must be the sim's
    run's without them (clones and slow-downs change no result), or with ``sim_events``
    (§4.3 operator controls change results: the sim's run gets the same)."""
    sim = SimRuntime(chain, model=model, events=list(sim_events))
    sim.run(records)
    want = sim.summary().as_json()
    rt = ProcRuntime(chain, model=model, batch_size=64, events=events, **kw)
    rt.run(records if feed is None else feed)
    got = rt.summary().as_json()
    assert not any(p.is_alive() for p in rt.procs.values())
    for key in ("state_digest", "packets_in", "packets_out", "dropped", "alerts"):
        assert got[key] == want[key], key
    for v in want["vertices"]:
        for key in ("packets_in", "packets_out", "dropped", "alerts"):
            assert got["vertices"][v][key] == want["vertices"][v][key], (v, key)
    assert got["log"]["remaining"] == 0
    return rt, got


# -- names and the per-item rules (sans-I/O) ---------------------------------------------------

def test_a_clone_is_no_generation_and_a_kept_one_bases_its_failovers():
    """``wire.previous`` stays right: receivers hold a generation's frames until the one
    before it is fenced; a clone's are never held, and a kept clone's failover waits
    for the clone."""
    assert logical(b"nat.0~1") == logical(b"nat.0#1~2") == logical(b"nat.0~1#1") == b"nat.0"
    assert not is_generation(b"nat.0~1") and not is_generation(b"nat.0#1~1") and is_generation(b"nat.0~1#1")
    assert previous(b"nat.0~1#1") == b"nat.0~1" and previous(b"nat.0~1#2") == b"nat.0~1#1"
    assert previous(b"nat.0#2") == b"nat.0#1" and previous(b"nat.0#1") == b"nat.0"
    assert client_id("nat.0") == "nat/0" and client_id("nat.0#2") == "nat/0+failover2"
    assert client_id("nat.0~1") == "nat/0+~1" and client_id("nat.0~1#1") == "nat/0+~1#1"


@pytest.mark.timeout(30)
def test_a_clones_frames_are_not_held_for_a_fence(tmp_path):
    import zmq

    from chc.runtime.wire import Kind, dealer, encode, endpoint
    ctx = zmq.Context()
    try:
        box = Mailbox(ctx, endpoint(str(tmp_path), "box"), "test")
        senders = [dealer(ctx, endpoint(str(tmp_path), "box"), name) for name in ("nat.0~1", "nat.0#1")]
        for sock in senders:
            sock.send(encode(Kind.DATA, [1]))
        got = []
        while len(got) + sum(map(len, box.held.values())) < 2:
            assert box.sock.poll(5000), "a frame did not come"
            msg = box.recv()
            if msg is not None:
                got.append(msg[0])
        assert got == [b"nat.0~1"] and list(box.held) == [b"nat.0#1"]
        box.close()
    finally:
        ctx.destroy(0)


def test_the_root_takes_each_item_of_a_pair_once_whatever_the_batches():
    """The two copies report the same items in batches of their own: items of a clock
    past the logical sender's mark are new, a timer's k-th firing of a clock is new if
    fewer were taken (its clock is the arming packet's, which the other copy passed)."""
    inbox = CausalInbox(per_item=True)
    straggler = [[0, 10, 1], [1, 11, 5], [TIMER, 3, [0, 7, 1]], [1, 12, 6]]
    applied = inbox.offer("nat.0", 12, {}, straggler)
    assert applied == [straggler]
    # the clone's batches: 11-12 again, the timer again (its first firing of clock 3), then new
    applied = inbox.offer("nat.0~1", 11, {}, [[1, 11, 5], [TIMER, 3, [0, 7, 1]]])
    applied += inbox.offer("nat.0~1", 14, {}, [[1, 12, 6], [TIMER, 3, [1, 9, 2]], [1, 14, 8]])
    assert applied == [[], [[TIMER, 3, [1, 9, 2]], [1, 14, 8]]]
    # the straggler catches up: all of it seen
    assert inbox.offer("nat.0", 14, {}, [[TIMER, 3, [1, 9, 2]], [1, 14, 8]]) == [[]]
    assert inbox.duplicate_items == 5 and inbox.marks["nat.0"] == 14
    inbox.forget_below(4)
    assert not inbox.fired


# -- runs against the sim ------------------------------------------------------------------------

@pytest.mark.timeout(180)
@pytest.mark.parametrize("model", ["EO+C+NA", "EO"])
def test_clones_of_named_and_lagging_instances_give_the_sims_state_and_counts(model):
    """Clones of nat[0] (kept or not), of a vertex's instance furthest behind, one
    resolved at the end of input; a clone while another pair of its vertex runs ends
    that pair first (one pair a vertex).  (Parallel instances only where they share nothing:
    where they do, their updates' order is the processes' race, docs/proc.md.)"""
    events = [_ev("nat[0]", 300, for_packets=3000), _ev("portscan", 3500, for_packets=200), _ev("trojan", 3800),
              _ev("lb[0]", 4500, for_packets=100000)]
    got = _compare(_records(LAN, 6000), events, model, {"trojan": 2})
    kinds = [e["kind"] for e in got["events"]]
    assert kinds.count("clone") == 4 and kinds.count("clone-resolved") == 4
    resolved = [e for e in got["events"] if e["kind"] == "clone-resolved"]
    assert resolved[-1]["packet"] == 6000 and resolved[-1]["vertex"] == "lb"     # (at the end of input)
    for e in resolved:
        assert e["stopped_process"] != e["kept_process"]
        assert e["kept_process"] == (e["stopped_process"] + "~1" if e["kept"] == "clone"
                                     else e["stopped_process"].rsplit("~", 1)[0])


@pytest.mark.timeout(120)
def test_pairs_side_by_side_on_adjacent_vertices_give_the_sims_state():
    """Pairs of nat, portscan and lb at once: an upstream in a pair copies to the clone
    downstream from both its copies (their two records merged, each clock once), and
    a clone started beside a pair downstream copies to that pair's clone too.  (With
    the upstream's straggler alone teed, a pair next to another missed the other
    copy's packets: chc check hung at the end.)"""
    events = [_ev("nat[0]", 300, for_packets=100000), _ev("portscan[0]", 500, for_packets=100000),
              _ev("lb[0]", 700, for_packets=1500), _ev("lb[0]", 2500, for_packets=100000)]
    got = _compare(_records(LAN, 6000), events, "EO+C+NA")
    assert [e["kind"] for e in got["events"]].count("clone-resolved") == 4


@pytest.mark.timeout(120)
def test_a_clone_of_the_portscan_detector_gives_the_sims_alerts():
    """The scan trace raises an alert (portscan's TRW): once, with its detector cloned."""
    got = _compare(_records(SCAN), [_ev("portscan[0]", 200, for_packets=400), _ev("nat[0]", 700)], "EO+C+NA")
    assert len(got["alerts"]) == 1


# -- a copy of a pair that dies (§5.3 with §5.4) -----------------------------------------------------

def _crash(target: str, at: int, **params) -> Event:
    return Event("crash", target, params, at_packet=at)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("model", ["EO+C+NA", "EO"])
def test_a_killed_copy_of_a_pair_leaves_the_other_to_go_on(model):
    """A crash of a paired instance kills its straggler, ``copy: clone`` its clone, while
    the pair runs (kills of other processes wait for the pairs): the pair is resolved for
    the copy that lives, which needs no replay, and the run gives the sim's state."""
    events = [_ev("nat[0]", 1000, for_packets=100000), _crash("nat[0]", 2000),
              _ev("lb[0]", 2500, for_packets=100000), _crash("lb[0]", 3000, copy="clone")]
    got = _compare(_records(LAN, 5000), events, model)
    deaths = [e for e in got["events"] if e["kind"] == "clone-resolved"]
    assert [(e["vertex"], e["kept"], e.get("by"), e.get("died")) for e in deaths] == [
        ("nat", "clone", "death", "nat.0"), ("lb", "straggler", "death", "lb.0~1")]
    assert all(2000 <= e["killed_at_packet"] < 2500 for e in deaths[:1]) and deaths[1]["killed_at_packet"] >= 3000
    assert not any(e["kind"] in ("failover", "kill-skipped") for e in got["events"])


def test_a_kill_of_a_clone_names_an_nf_instance_at_a_packet():
    from chc.runtime.proc import Kill, crash_kill, parse_kill
    chain = load_spec(PAPER)
    assert parse_kill("lb[0]~@500", chain) == Kill("lb", 0, 500, clone=True)
    assert parse_kill("lb@500", chain) == Kill("lb", 0, 500)
    assert crash_kill(_crash("lb", 9, copy="clone"), chain) == Kill("lb", 0, 9, pick=0, clone=True)
    for bad in ("root[0]~@5", "store~@5", "nat[0]~@change:1"):
        with pytest.raises(ValueError, match="a clone"):
            parse_kill(bad, chain)
    with pytest.raises(ValueError, match="copy is straggler"):
        crash_kill(_crash("nat[0]", 9, copy="both"), chain)


@pytest.mark.timeout(300)
def test_chc_check_passes_kills_of_pair_copies_and_catches_duplicates(monkeypatch, capsys, tmp_path):
    """``chc check``: a pair whose straggler is killed passes (the kill counted as made:
    the other copy went on), and with --break no-dup-suppression the same run fails (the
    pairs of test_without_duplicate_suppression_the_check_fails, for the same reason)."""
    monkeypatch.chdir(ROOT)
    scenario = tmp_path / "pair-death.yaml"
    scenario.write_text("name: pair-death\nevents:\n"
                        "  - {at: {packets: 300}, do: clone, target: \"nat[0]\", for_packets: 100}\n"
                        "  - {at: {packets: 400}, do: clone, target: \"portscan[0]\", for_packets: 100000}\n"
                        "  - {at: {packets: 5000}, do: crash, target: \"portscan[0]\"}\n")
    assert main(["check", "--runtime", "proc", PAPER, str(scenario), LAN, "--packets", "6000", "--seeds", "1"]) == 0
    out = capsys.readouterr().out
    assert "1 of 1 seeds passed" in out and "went on alone" in out and "WITHOUT" not in out
    assert main(["check", "--runtime", "proc", PAPER, str(scenario), LAN, "--packets", "6000", "--seeds", "1",
                 "--break", "no-dup-suppression"]) == 1
    assert "duplicate" in capsys.readouterr().out


def test_the_sim_refuses_a_crash_of_a_clone_copy(tmp_path):
    sim = None
    with pytest.raises(ValueError, match="proc runtime's"):
        sim = SimRuntime(load_spec(PAPER), model="EO", events=[_crash("nat[0]", 10, copy="clone")])
    assert sim is None


# -- the COE check --------------------------------------------------------------------------------

@pytest.mark.timeout(300)
def test_chc_check_runtime_proc_passes_the_clone_scenario(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    assert main(["check", "--runtime", "proc", PAPER, SCENARIO, LAN, "--packets", "6000", "--seeds", "2"]) == 0
    out = capsys.readouterr().out
    assert "clone-resolved" in out and "2 of 2 seeds passed" in out


@pytest.mark.timeout(300)
def test_without_duplicate_suppression_the_check_fails(monkeypatch, capsys, tmp_path):
    """--break no-dup-suppression: receivers take both copies' packets, the coordinator
    both copies' outputs and alerts; the checker names a duplicated output.  A pair that
    runs from early on to the end of 6,000 packets: a shorter one may end before the
    clone's first batch (all that was queued for its straggler) has left it, and its
    duplicates never meet the straggler's."""
    monkeypatch.chdir(ROOT)
    scenario = tmp_path / "long-pair.yaml"
    scenario.write_text("name: long-pair\nevents:\n"
                        "  - {at: {packets: 300}, do: clone, target: \"nat[0]\", for_packets: 100}\n"
                        "  - {at: {packets: 400}, do: clone, target: \"portscan[0]\", for_packets: 100000}\n")
    assert main(["check", "--runtime", "proc", PAPER, str(scenario), LAN, "--packets", "6000", "--seeds", "2",
                 "--break", "no-dup-suppression"]) == 1
    out = capsys.readouterr().out
    assert "DIVERGED" in out and "duplicate" in out


def test_the_break_needs_clones(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    assert main(["check", "--runtime", "proc", PAPER, "examples/scenarios/scale.yaml", LAN, "--packets", "100",
                 "--seeds", "1", "--break", "no-dup-suppression"]) == 2
    assert "clone events" in capsys.readouterr().err


# -- the vertex manager ---------------------------------------------------------------------------

@pytest.mark.timeout(180)
def test_a_managers_clone_decision_is_carried_out(tmp_path):
    """A policy's ``Decision("clone", 0)`` (proc_policies:clone_once): the clone runs and
    is resolved, the run gives the sim's state."""
    import yaml
    d = yaml.safe_load(Path(PAPER).read_text())
    d["vertices"]["trojan"]["parallelism"] = 2
    d["vertices"]["trojan"]["scaling"] = {"policy": "proc_policies:clone_once", "interval_ms": 20}
    spec = tmp_path / "chain.yaml"
    spec.write_text(yaml.safe_dump(d))
    chain = load_spec(str(spec))
    records = _records(LAN, 3000)
    sim = SimRuntime(load_spec(PAPER).with_parallelism({"trojan": 2}), model="EO+C+NA")
    sim.run(records)
    rt = ProcRuntime(chain, model="EO+C+NA", batch_size=64)

    def paced():        # (the decision needs load reports: input fed at once would end first)
        for k, rec in enumerate(records):
            if k % 64 == 0:
                time.sleep(0.02)
            yield rec
    rt.run(paced())
    s = rt.summary().as_json()
    clones = [e for e in s["events"] if e["kind"] == "clone"]
    assert clones, s["events"]
    assert clones[0]["by"] == "manager" and clones[0]["reason"] == "clone_once"
    assert any(e["kind"] == "clone-resolved" for e in s["events"])
    assert s["state_digest"] == sim.summary().as_json()["state_digest"]
    assert s["packets_out"] == 3000


def test_the_coordinator_counts_each_clock_of_a_pair_once():
    """Per clock, not per message: the copies' batches overlap (rows: [clock, in, out,
    dropped, errors, sink outputs])."""
    rt = ProcRuntime(load_spec(PAPER), model="EO+C+NA", events=[_ev("nat[0]", 10)])    # (not run)
    alert = ["nat", 0, "k", "h", 1, 11, {}]
    rt._count_clocks("nat.0", [12, None, [alert], 0, None, [], None, [[10, 1, 1, 0, 0, 0], [12, 1, 0, 1, 0, 0]]])
    rt._count_clocks("nat.0~1", [11, None, [alert], 0, None, [], None, [[10, 1, 1, 0, 0, 0], [11, 1, 1, 0, 0, 0]]])
    rt._count_clocks("nat.0~1", [13, None, [], 0, None, [], None, [[12, 1, 0, 1, 0, 0], [13, 1, 1, 0, 0, 0]]])
    st = rt.stats["nat.0"]
    assert st["counters"] == [3, 2, 1, 0] and st["alerts"] == [alert] and rt.dup["alerts"] == 1


def test_the_store_answers_a_pairs_read_of_a_clock_the_other_copy_read_first():
    """§5.3 the slower copy sees what the faster saw: its read of a shared object for a
    clock the other copy read already is answered from the read log (another instance
    has moved the object on since); past the log, a copy's reads are logged; the
    checker's recording follows the first copy's read (the second's has no clock)."""
    from chc.runtime.wire import decode
    from test_proc_kill_check import store_server

    call, op, steps, failover = store_server()
    call(b"portscan.1", "execute", [op("set", 1, seq=1, clock=4, i=1), 4])
    assert call(b"portscan.0", "execute", [op("get"), 5]) == [1]            # before the pair: logged
    cursor = call(b"portscan.0", "pairing", [True, ["portscan", 0], None])
    assert cursor == [[["portscan", 0, 5], 1]]                              # its reads so far
    call(b"portscan.0~1", "pairing", [True, ["portscan", 0], cursor])
    assert call(b"portscan.0~1", "execute", [op("get"), 7]) == [1]          # the clone first: logged
    call(b"portscan.1", "execute", [op("set", 2, seq=2, clock=8, i=1), 8])  # another instance moves it on
    assert call(b"portscan.0", "execute", [op("get"), 7]) == [1]            # the straggler: the logged value
    assert decode(steps[-1])[1][3] is None
    assert call(b"portscan.0", "execute", [op("get"), 9]) == [2]            # past the log: the store's, logged
    assert decode(steps[-1])[1][3] == 9
    assert call(b"portscan.0~1", "execute", [op("get"), 9]) == [2]
    call(b"portscan.0", "pairing", [False, ["portscan", 0], None])
    assert b"portscan.0" not in failover.pairs and b"portscan.0~1" in failover.pairs
