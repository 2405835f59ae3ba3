"""The sim runtime's network (chc.runtime.simnet): links, faults, FIFO, non-blocking clients."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from chc.backends.memory import MemoryStore
from chc.capture import open_capture
from chc.runtime.pacing import Pacer
from chc.runtime.sim import SimRuntime
from chc.runtime.simnet import LinkModel, Network
from chc.scenario import ScenarioError, parse_scenario
from chc.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
PAPER = ROOT / "examples/paper_chain.yaml"
LAN = ROOT / "traces/pathspider/lan-2012.pcap.gz"


@pytest.fixture(scope="module")
def records() -> list[tuple[int, bytes]]:
    return list(itertools.islice(open_capture(LAN), 3000))


def run(records, model: str, network: dict | None = None, seed: int = 0, parallelism: int = 2):
    chain = load_spec(PAPER).with_parallelism(parallelism)
    rt = SimRuntime(chain, model=model, batch_size=64, store=MemoryStore() if model != "T" else None,
                    pacer=Pacer("multiplier", 1), seed=seed, network=network)
    out = []
    rt.run(records, emit=lambda pkts: out.extend((p.clock, bytes(p.data)) for p in pkts))
    return rt, out


@pytest.mark.parametrize("raw, field", [
    ({"data": {"drop": 0.1}}, "network.data.drop: the data link cannot drop"),
    ({"commits": {"reorder": 0.1}}, "network.commits.reorder: the commits link cannot reorder"),
    ({"wire": {"latency": "const:1"}}, "network.wire: unknown link"),
    ({"store": {"drop": 1.5}}, "network.store.drop: a probability"),
    ({"store": {"latency": "gauss:3"}}, "network.store.latency"),
    ({"store": {"jitter": 3}}, "network.store.jitter: unknown field"),
    ({"store": {"timeout_us": 0}}, "network.store.timeout_us"),
])
def test_link_faults_are_validated_by_field(raw, field):
    with pytest.raises(ScenarioError) as err:
        parse_scenario({"network": raw})
    assert field in str(err.value)


@pytest.mark.parametrize("event, message", [
    ({"at": {"packets": 5}, "do": "drop", "count": 0}, "count"),
    ({"at": {"packets": 5}, "do": "delay", "count": 1}, "needs by_us"),
    ({"at": {"packets": 5}, "do": "partition", "target": "nat"}, "needs duration_us"),
    ({"at": {"packets": 5}, "do": "crash"}, "needs a target"),
    ({"at": {"packets": 5}, "do": "drop", "ttl": 3}, "unknown parameter 'ttl'"),
])
def test_fault_events_are_validated(event, message):
    with pytest.raises(ScenarioError) as err:
        parse_scenario({"events": [event]})
    assert message in str(err.value)


def test_non_blocking_updates_are_in_flight_while_the_instance_goes_on(records):
    """EO+C+NA with store latency: after a step, updates of packets already output
    are still unacknowledged; at the end every one is acknowledged and the state
    is model T's."""
    chain = load_spec(PAPER)
    net = {"store": LinkModel(latency="const:200")}
    rt = SimRuntime(chain, model="EO+C+NA", batch_size=64, store=MemoryStore(), pacer=Pacer("topspeed"),
                    network=net)
    from chc.packet import Packet
    batch = []
    for i, (ts, data) in enumerate(records[:64]):
        p = Packet(data, ts, i)
        p.vt = 0
        batch.append(p)
    out = rt.step(batch)
    assert out, "the step released output"
    assert any(i.client.unacked for insts in rt.instances.values() for i in insts)
    rt.drain()
    assert not any(i.client.unacked for insts in rt.instances.values() for i in insts)
    t_rt, _ = run(records[:64], "T", parallelism=1)
    assert rt.summary().state_digest == t_rt.summary().state_digest


def test_lossy_store_links_keep_model_t_state(records):
    """Drops, duplicates and reordering on store links: every update applies once."""
    t_rt, t_out = run(records, "T", parallelism=1)
    faults = {"store": LinkModel(latency="uniform:5:60", drop=0.05, duplicate=0.05, reorder=0.05, timeout_us=300)}
    for model in ("EO", "EO+C", "EO+C+NA"):
        rt, out = run(records, model, faults, parallelism=1)
        assert rt.net.stats["store.dropped"] > 10 and rt.net.stats["store.duplicated"] > 10
        assert rt.summary().state_digest == t_rt.summary().state_digest, model
        assert sorted(out) == sorted(t_out), model


def test_without_resending_lost_updates_stay_lost(records):
    """The same lossy links with retransmission off: the state diverges, so the
    test above would catch a broken resend."""
    t_rt, _ = run(records, "T", parallelism=1)
    chain = load_spec(PAPER)
    faults = {"store": LinkModel(latency="uniform:5:60", drop=0.05, timeout_us=300)}
    rt = SimRuntime(chain, model="EO+C+NA", batch_size=64, store=MemoryStore(), pacer=Pacer("multiplier", 1),
                    network=faults)
    for inst in (i for insts in rt.instances.values() for i in insts):
        inst.client.retransmit = False
    rt.run(records)
    assert rt.summary().state_digest != t_rt.summary().state_digest


def test_data_links_stay_fifo_under_latency():
    net = Network({"data": LinkModel(latency="uniform:0:500")}, seed=3)
    times = [net.data_arrival(("root", 0), vt) for vt in range(0, 100_000, 1000)]
    assert times == sorted(times)
    assert any(t > vt for t, vt in zip(times, range(0, 100_000, 1000), strict=True))


def test_the_same_seed_draws_the_same_faults(records):
    faults = {"store": LinkModel(latency="uniform:5:60", drop=0.05, duplicate=0.05, reorder=0.05)}
    a, out_a = run(records, "EO+C+NA", faults, seed=4)
    b, out_b = run(records, "EO+C+NA", faults, seed=4)
    c, _ = run(records, "EO+C+NA", faults, seed=5)
    assert a.net.describe() == b.net.describe() != c.net.describe()
    assert out_a == out_b


def test_no_network_model_delivers_at_once(records):
    """chc run's path: nothing configured, every request answered when sent."""
    rt, _ = run(records, "EO+C+NA")
    assert rt.net.instant and not rt.net.queue and rt.net.sent == 0


def test_scripted_faults_never_touch_fifo_links():
    """An untargeted drop or partition hits store messages only: commit reports
    travel on a FIFO connection (docs/coe.md)."""
    net = Network({"store": LinkModel(latency="const:1")})
    net.scripted.append(["drop", None, 3, 0])
    net.partitions.append((None, 10**12))
    got = []
    net.send("commits", "root", 0, lambda: got.append("commit"))
    net.send("store", "nat[0]", 0, lambda: got.append("store"))
    while net.run_next():
        pass
    assert got == ["commit"]
    assert net.stats["store.partitioned"] == 1 and not net.stats["commits.dropped"]


def test_a_moved_flows_timers_move_with_it(records):
    """§5.1: a timer armed by a flow fires at the instance the flow moved to (the
    port-scan detector's timeout must see the answer the new instance processes)."""
    from chc.packet import Packet

    chain = load_spec(PAPER).with_parallelism(2)
    rt = SimRuntime(chain, model="EO", batch_size=64, store=MemoryStore(), pacer=Pacer("multiplier", 1))
    old, new = rt.instances["portscan"]
    pkt = next(p for p in (Packet(d, ts, i) for i, (ts, d) in enumerate(records)) if p.l3)
    old.ctx.packet = pkt
    old.ctx.set_timer(10**18, "flow timeout")
    old.ctx.packet = None
    old.ctx.set_timer(10**18, "no flow")        # armed outside a packet: stays
    rt.move("portscan", 0, 1, 1.0)
    assert [t[2] for t in new.ctx._timers] == ["flow timeout"]
    assert [t[2] for t in old.ctx._timers] == ["no flow"]


def test_a_reply_of_a_failed_store_still_on_the_wire_is_void():
    """§5.4: once the store's failure is detected (its epoch moves on), a reply it sent
    before it died and that is still on the wire is dropped on arrival: recovery read
    the instances' logs without it, and the client asks the failover store again."""
    from chc.core.store import ObjectKey, Op
    from chc.runtime.simnet import StoreLink, StoreNode

    net = Network({"store": LinkModel(latency="const:10")})
    node = StoreNode(net, MemoryStore())
    got: list = []
    link = StoreLink(net, node, "lb[0]")
    link.reply = lambda rid, reply: got.append(reply)
    op = Op("incr", ObjectKey("lb", "active", 0), (1,), client="lb/0", seq=1, default=0)
    for epoch_moves in (False, True):
        node.request(link, 1, [op])
        if epoch_moves:
            node.epoch += 1             # StoreFailover._detected
        while net.run_next():
            pass
    assert got == [[1]]
