"""Logical clocks, the packet log and the XOR commit vector (§5, §5.2, §5.4, §7.2),
and chain-wide ordering (R4) under delays."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chc.backends.memory import MemoryStore
from chc.capture import open_capture
from chc.core.root import CLOCK_BITS, Root, root_of
from chc.packet import Packet
from chc.runtime.pacing import Pacer
from chc.runtime.sim import SimRuntime
from chc.spec import load_spec, parse_spec
from frames import ACK, PSH_ACK, SYN, tcp, udp

ROOT = Path(__file__).resolve().parent.parent
LAN = ROOT / "traces/pathspider/lan-2012.pcap.gz"
PAPER = ROOT / "examples/paper_chain.yaml"
R4 = ROOT / "examples/r4_chain.yaml"


def lan(n=6000):
    return list(itertools.islice(open_capture(LAN), n))


def run(chain, records, **kw):
    rt = SimRuntime(chain, **kw)
    out = []
    rt.run(records, emit=out.extend)
    return rt, out


# -- clocks ------------------------------------------------------------------------

@pytest.mark.parametrize("every", [1, 10, 100])
def test_clocks_unique_and_increasing_across_root_restart(every):
    """§7.2 fn. 5: a restarted root resumes at last persisted + n."""
    chain = load_spec(PAPER)
    records = lan(3000)
    rt = SimRuntime(chain, model="T", batch_size=37, persist_every=every)
    clocks = []
    for i in range(0, len(records), 250):
        batch = [Packet(d, ts, i + j) for j, (ts, d) in enumerate(records[i:i + 250])]
        rt.step(batch)
        clocks += [p.clock for p in batch]          # ARP passes around the NFs, with a clock
        if i in (500, 1500):
            rt.restart_root(0)            # the root fails after this batch
    assert len(set(clocks)) == len(clocks)
    assert clocks == sorted(clocks)
    # The resumed clock skips at most n - 1 + n values.
    gaps = [b - a for a, b in itertools.pairwise(clocks)]
    assert max(gaps) <= 2 * every


def test_restart_without_persistence_would_reuse_clocks():
    """The mechanism matters: resuming from the last *persisted* clock without
    adding n reuses clocks the failed root already handed out."""
    root = Root(0, persist_every=10)
    batch = [Packet(udp("10.0.0.1", "10.0.0.2", 1, 2, b"x"), 0, i) for i in range(25)]
    root.ingest(batch)
    persisted = max(op.args[0] for op in root.drain_outbox())
    assert persisted == 20
    naive = Root(0, persist_every=1, resume_from=persisted - 1)   # resumes at 20
    assert naive.next_seq == 20 and naive.next_seq < root.next_seq
    good = Root(0, persist_every=10, resume_from=persisted)
    assert good.next_seq == 30 >= root.next_seq


def test_root_id_in_high_bits():
    chain = parse_spec({"roots": 3, "vertices": {"p": {"nf": "pass"}}})
    rt, out = run(chain, lan(2000), model="T")
    ids = {root_of(p.clock) for p in out if p.l3}
    assert ids == {0, 1, 2}
    assert all(p.clock >> CLOCK_BITS == root_of(p.clock) for p in out)
    per_root = {r: [p.clock for p in out if p.l3 and root_of(p.clock) == r] for r in ids}
    for clocks in per_root.values():
        assert len(set(clocks)) == len(clocks)
    s = rt.summary()
    assert s.log["logged"] == s.log["deleted"] and s.log["remaining"] == 0


# -- packet log and XOR vector ---------------------------------------------------------

@pytest.mark.parametrize("model", ["T", "EO", "EO+C", "EO+C+NA"])
@pytest.mark.parametrize("log_mode", ["local", "store"])
def test_log_is_empty_after_every_run(model, log_mode):
    rt, _ = run(load_spec(PAPER), lan(), model=model, log_mode=log_mode)
    s = rt.summary()
    admitted = s.packets_in - s.non_ip - s.malformed
    assert s.log["logged"] == admitted and s.log["deleted"] == admitted and s.log["remaining"] == 0


@pytest.mark.parametrize("roots", [1, 2])
def test_each_root_prunes_the_clock_log_of_its_own_clocks(roots):
    """§5.3 the store's clock log is pruned as each root's packets are done.  A root's
    clocks carry its id in the high bits, so with two roots no one floor covers both:
    the sim pruned only with one root, and with two it kept all 201,188 entries."""
    chain = load_spec(PAPER)
    chain.roots = roots
    store = MemoryStore()
    run(chain, lan(), model="EO+C+NA", store=store)
    assert len(store.engine.log_order) == 0 and not store.engine.clock_log
    assert sorted(store.engine.floors) == list(range(roots))


def test_uncommitted_update_keeps_packet_logged():
    """§5.4, Figure 6: while the store has not committed a packet's non-blocking
    update, the XOR check fails and the packet stays logged; once the commit
    report arrives, it is deleted."""
    store = MemoryStore()
    store.hold_commits = True
    rt, _ = run(load_spec(PAPER), lan(2000), model="EO+C+NA", store=store)
    held = rt.summary().log["remaining"]
    assert held > 1000                      # every packet updated a counter
    store.hold_commits = False
    rt._settle()
    assert rt.summary().log["remaining"] == 0


def test_without_xor_check_uncommitted_packets_are_deleted(monkeypatch):
    """Switch the XOR check off: packets are deleted although their updates never
    committed, so a crash would lose them. The test above would catch that."""
    def done_ignoring_vector(self, clock, vector):
        entry = self.log.get(clock)
        if entry is not None:
            entry.live -= 1
            if entry.live <= 0:
                self._delete(clock)

    monkeypatch.setattr(Root, "done", done_ignoring_vector)
    store = MemoryStore()
    store.hold_commits = True
    rt, _ = run(load_spec(PAPER), lan(2000), model="EO+C+NA", store=store)
    assert rt.summary().log["remaining"] == 0


def test_taps_and_drops_complete_the_log():
    """Off-path copies and dropped packets are reported: the fork count balances."""
    spec = {"vertices": {"scan": {"nf": "portscan"}, "troj": {"nf": "trojan"}, "p": {"nf": "pass"}},
            "edges": ["scan -> p"], "offpath": [{"from": "scan", "to": "troj", "tap": "output"}]}
    frames = [tcp("10.9.9.9", f"10.0.0.{i}", 40000 + i, 80, SYN) for i in range(1, 60)]
    recs = [(i * 10_000_000_000, f) for i, f in enumerate(frames)]     # 10 s apart: timeouts fire
    rt, out = run(parse_spec(spec), recs, model="EO+C+NA")
    s = rt.summary()
    assert s.alerts and s.vertices["scan"]["dropped"] > 0              # the scanner got blocked
    assert s.log["remaining"] == 0 and s.log["deleted"] == len(frames)


def test_log_overflow_drops_input_and_counts_it():
    rt, out = run(load_spec(PAPER), lan(3000), model="T", batch_size=500, log_limit=100)
    s = rt.summary()
    assert s.log["dropped_overflow"] > 0
    assert s.log["logged"] + s.log["dropped_overflow"] == s.packets_in - s.non_ip
    assert s.packets_out + s.dropped == s.packets_in


# -- R4: chain-wide ordering under delays (§2.1 Figure 2, §7.3) ---------------------------

HOST = "10.70.0.5"


def trojan_sequence(host=HOST, spacing=20):
    """SSH, then FTP RETR of an .exe, then IRC, `spacing` background packets apart."""
    steps = [
        tcp(host, "198.51.100.22", 41000, 22, SYN),
        tcp(host, "198.51.100.21", 41001, 21, PSH_ACK, b"RETR setup.exe\r\n"),
        tcp(host, "198.51.100.66", 41002, 6667, SYN),
    ]
    background = [tcp("10.70.1.1", "198.51.100.80", 50000 + i, 80, ACK, b"x" * 1200) for i in range(3 * spacing)]
    frames = []
    for i, step in enumerate(steps):
        frames.append(step)
        frames += background[i * spacing:(i + 1) * spacing]
    return frames


def r4_run(delays, clocks=True, seed=0):
    frames = trojan_sequence()
    recs = [(i, f) for i, f in enumerate(frames)]
    # ~10 Gbit/s replay: a 1.25 kB packet every ~1 µs; 50-100 µs delays reorder dozens.
    rt, _ = run(load_spec(R4), recs, model="T", pacer=Pacer("mbps", 10_000), delays=delays,
                seed=seed, clocks=clocks, batch_size=16)
    return [a for a in rt.summary().alerts if a["kind"] == "trojan"]


@pytest.mark.parametrize("delayed", [[], ["scrub_ssh"], ["scrub_ssh", "scrub_ftp"]])
def test_r4_trojan_detected_with_clocks_whatever_the_delays(delayed):
    alerts = r4_run({v: "uniform:50:100" for v in delayed})
    assert [(a["host"], a["clock"]) for a in alerts] == [(HOST, 42)]


def test_r4_without_clocks_the_reordered_sequence_is_missed():
    """The mechanism matters: with arrival order instead of clocks, a slowed SSH
    scrubber makes FTP arrive first and the Trojan goes unnoticed."""
    assert r4_run({}, clocks=False)                         # no reordering: found
    assert r4_run({"scrub_ssh": "uniform:50:100"}, clocks=False) == []


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), which=st.sets(st.sampled_from(["scrub_ssh", "scrub_ftp", "scrub_irc"])),
       batch=st.integers(1, 64))
def test_r4_property_any_delays_any_batching(seed, which, batch):
    frames = trojan_sequence(spacing=10)
    recs = [(i, f) for i, f in enumerate(frames)]
    rt, _ = run(load_spec(R4), recs, model="T", pacer=Pacer("mbps", 10_000),
                delays={v: "uniform:50:100" for v in which}, seed=seed, batch_size=batch)
    s = rt.summary()
    assert [(a["host"], a["clock"]) for a in s.alerts] == [(HOST, 22)]
    assert s.log["remaining"] == 0 and s.packets_out == len(frames)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["record", "replay", "done", "restore", "forget"]),
                          st.integers(0, 40), st.integers(1, 6)), max_size=60))
def test_the_oldest_logged_clock_is_the_logs_minimum(steps):
    """``Root.oldest`` follows the log from its last answer (clocks enter in increasing
    order, leave in any): whatever the sequence of records, deletions, a restore of
    arbitrary clocks, input logged again from a floor and a failover's forgetting below
    a floor, it is the log's minimum
    (what a replay starts from and the store's clock log is kept from: §5.4)."""
    from types import SimpleNamespace

    root = Root(1)
    base = root.base
    nxt = base
    for what, a, n in steps:
        if what == "record":        # a batch stamped in order, gaps for unlogged clocks
            nxt += a % 3
            root.record([SimpleNamespace(clock=nxt + k) for k in range(n)])
            nxt += n
        elif what == "replay":      # input logged again from a floor (below the last answer)
            root.record([SimpleNamespace(clock=base + a + k) for k in range(n)])
            nxt = max(nxt, base + a + n)
        elif what == "done" and root.log:
            root.done(sorted(root.log)[a % len(root.log)], 0)
        elif what == "restore":     # a store-held log taken over: any clocks, below the last answer too
            root.restore({"log": dict.fromkeys(base + (a + k * 7) % 50 for k in range(n))})
            nxt = max(nxt, max(root.log) + 1)
        elif what == "forget":
            root.forget_below(base + a)
        assert root.oldest == (min(root.log) if root.log else base | root.next_seq)


def test_clocks_are_shown_as_root_and_sequence_number():
    """A clock in a report: root 0's as its sequence number, another root's as R:seq (a
    failover root of root 2 said 'kept since its floor 562949953421412')."""
    from chc.coe import _kill_faults
    from chc.core.root import clock_text

    assert [clock_text(c) for c in (-1, 0, 4711, (2 << CLOCK_BITS) | 100)] == ["-1", "0", "4711", "2:100"]
    root = {"kind": "root-failover", "process": "@root.2", "failover_process": "@root.2#1", "replayed": 7,
            "logged_floor": (2 << CLOCK_BITS) | 100, "recovery_s": 0.5, "killed_at_packet": 900}
    nf = {"kind": "failover", "process": "nat.0", "failover_process": "nat.0#1", "replayed": 3, "handed_over": 4,
          "replay_s": 0.1, "logged_floor": [-1, 1 << CLOCK_BITS, (2 << CLOCK_BITS) | 7], "recovery_s": 0.2,
          "killed_at_packet": 950}
    faults = _kill_faults(1, "root[2]@900", [root, nf], [root, nf])
    assert "kept since its floor 2:100 " in faults["failover"]
    assert "logged floor -1, 1:0, 2:7," in faults["failover"]
