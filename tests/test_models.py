"""The same NF code in four state models (T, EO, EO+C, EO+C+NA) gives the same
output bytes, alerts and final state (issue: external store and client library)."""

from __future__ import annotations

import collections
import itertools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chc.backends.memory import MemoryStore
from chc.capture import open_capture
from chc.core.client import (
    CachedObject,
    CallbackObject,
    CoalescedObject,
    RemoteObject,
    StoreClient,
    StoreUnavailable,
)
from chc.core.state import LocalObject
from chc.core.store import ObjectKey
from chc.nf import FLOW, GLOBAL, Access, Counter, Value
from chc.nfs import NAT
from chc.packet import Packet, ip_bytes
from chc.runtime.sim import SimRuntime
from chc.spec import load_spec, parse_spec
from conftest import make_store, store_servers

ROOT = Path(__file__).resolve().parent.parent
CHAIN = ROOT / "examples/paper_chain.yaml"
LAN = ROOT / "traces/pathspider/lan-2012.pcap.gz"
CAPTURES = sorted(str(p) for p in (ROOT / "traces").rglob("*.pcap*") if "garbage" not in p.name)
MODELS = ("T", "EO", "EO+C", "EO+C+NA")


def run_chain(chain, records, model, store=None, batch_size=64):
    rt = SimRuntime(chain, model=model, batch_size=batch_size, store=store)
    out: list[bytes] = []
    rt.run(records, emit=lambda pkts: out.extend(bytes(p.data) for p in pkts))
    s = rt.summary()
    return out, s.alerts, s.state_digest, rt


def first(path, n):
    return list(itertools.islice(open_capture(path), n))


@pytest.mark.parametrize("capture", CAPTURES, ids=lambda p: Path(p).name)
def test_every_model_gives_identical_results(capture):
    chain = load_spec(CHAIN)
    records = first(capture, 20000)
    reference = run_chain(chain, records, "T")[:3]
    for model in MODELS[1:]:
        assert run_chain(chain, records, model)[:3] == reference, model


@pytest.mark.parametrize("kind", ["redis-2shards", "redis-cluster"])
@pytest.mark.parametrize("capture", CAPTURES, ids=lambda p: Path(p).name)
def test_every_model_gives_identical_results_on_redis(capture, kind, request):
    """The same on a real Redis (two shards; a 3-node Redis Cluster): output bytes, alerts, digest."""
    chain = load_spec(CHAIN)
    records = first(capture, 3000)
    reference = run_chain(chain, records, "T")[:3]
    _, urls = store_servers(request, kind)
    for model in MODELS[1:]:
        store = make_store(kind, urls, fresh=True)
        try:
            assert run_chain(chain, records, model, store)[:3] == reference, model
        finally:
            store.close()


NAT_ONLY = {"vertices": {"nat": {"nf": "nat", "config": {
    "external_ip": "198.51.100.7", "internal": ["10.64.0.0/16"], "port_range": [20000, 59999]}}}}


def test_round_trips_per_packet_follow_the_paper():
    """§7.1: the NAT needs 3 round trips per packet in EO (mapping read and two
    counter updates) and about 0 in EO+C+NA (one pipelined request per batch)."""
    chain = parse_spec(NAT_ONLY)
    records = first(LAN, 5000)
    per_packet = {}
    for model in MODELS[1:]:
        store = MemoryStore()
        run_chain(chain, records, model, store, batch_size=256)
        per_packet[model] = store.round_trips / len(records)
    assert 2.5 < per_packet["EO"] < 3.5
    assert 1.5 < per_packet["EO+C"] < 2.5       # the mapping is cached, the counters are not
    assert per_packet["EO+C+NA"] < 0.1


def test_table1_strategy_per_object():
    def handles(model, exclusive=True):
        client = StoreClient(MemoryStore(), "nat", 0, model, exclusive)
        cfg = chain.vertices["nat"].config
        return {name: type(client.bind(d, cfg)) for name, d in NAT.state_objects().items()}

    chain = parse_spec(NAT_ONLY)
    assert set(handles("EO").values()) == {RemoteObject}
    c = handles("EO+C+NA")
    # write mostly: no cache; in EO+C+NA increments coalesce per batch
    assert c["packets"] is CoalescedObject and c["tcp_packets"] is CoalescedObject
    assert handles("EO+C")["packets"] is RemoteObject
    assert c["mapping"] is CachedObject                                         # per-flow: cached
    assert c["ports"] is CachedObject                                           # shared, sole user: cached
    assert handles("EO+C+NA", exclusive=False)["ports"] is RemoteObject         # shared by several: offloaded
    assert CallbackObject.__mro__[1] is CachedObject


def test_lost_requests_are_retransmitted():
    """EO+C+NA never waits for ACKs; a request that never reached the store is
    sent again with the next one, so no update is lost."""
    chain = load_spec(CHAIN)
    records = first(LAN, 8000)
    reference = run_chain(chain, records, "T")[:3]
    store = FlakyStore(every=5)
    assert run_chain(chain, records, "EO+C+NA", store)[:3] == reference
    assert store.dropped_requests > 20


def test_without_retransmission_updates_are_lost():
    """The same run with retransmission switched off loses updates: the state
    digest diverges, so the test above would catch a broken mechanism."""
    chain = load_spec(CHAIN)
    records = first(LAN, 8000)
    reference = run_chain(chain, records, "T")[2]
    rt = SimRuntime(chain, model="EO+C+NA", batch_size=64, store=FlakyStore(every=5))
    for inst in (i for insts in rt.instances.values() for i in insts):
        inst.client.retransmit = False
    rt.run(records)
    assert rt.summary().state_digest != reference


class FlakyStore(MemoryStore):
    """Loses every n-th non-blocking request before it reaches the engine."""

    def __init__(self, every: int) -> None:
        super().__init__()
        self.every = every
        self.calls = 0

    def execute(self, ops):
        self.calls += 1
        if self.calls % self.every == 0 and all(op.code != "get" for op in ops):
            self.fail_next(1)
        return super().execute(ops)


# -- §4.3 coalescing of write-mostly increments (EO+C+NA) ------------------------------------


class RecordingStore(MemoryStore):
    """Remembers every request's ops; ``lose_ack`` applies the next n requests
    but reports them failed (an acknowledgement lost on the way back)."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[list] = []
        self.lose_ack = 0

    def execute(self, ops):
        self.requests.append([op.code for op in ops])
        results = super().execute(ops)
        if self.lose_ack:
            self.lose_ack -= 1
            raise StoreUnavailable("ack lost")
        return results

    def value(self, key):
        return self.engine.data.get(ObjectKey("v", "hits", key, False))


def write_mostly_counter(store):
    decl = Counter(GLOBAL, Access.WRITE_MOSTLY)
    decl.name = "hits"
    client = StoreClient(store, "v", 0, "EO+C+NA")
    return client, client.bind(decl, None)


class _CountingTakes(MemoryStore):
    """Counts the client's takes of callbacks (on Redis each is a round trip)."""

    def __init__(self, per_batch: bool) -> None:
        super().__init__()
        self.takes = 0
        self.callbacks_per_batch = per_batch

    def notifications(self, client):
        self.takes += 1
        return super().notifications(client)


def test_where_a_take_of_callbacks_is_a_round_trip_the_client_takes_them_once_a_batch():
    """A cached read-heavy object is refreshed by callbacks; on Redis the client took them
    after every request, each a PING round trip (a fifth of the LB's time): there, only
    before each batch (poll); elsewhere after every request as before."""
    decl = Value(GLOBAL, Access.READ_HEAVY)
    decl.name = "pool"
    takes = {}
    for per_batch in (False, True):
        store = _CountingTakes(per_batch)
        client = StoreClient(store, "lb", 0, "EO+C+NA", exclusive=False)
        pool = client.bind(decl, None)
        assert isinstance(pool, CallbackObject) and pool.get() is None     # subscribed
        client.poll()                                   # before a batch
        client.begin_packet(1)
        client.call(client.op("incr", ObjectKey("lb", "active", 0), (1,)))     # a blocking request
        client.send(client.op("incr", ObjectKey("lb", "active", 1), (1,)))
        client.flush()                                  # a non-blocking one
        takes[per_batch] = store.takes
    assert takes == {False: 3, True: 1}


def test_a_batch_of_increments_is_one_op_per_key():
    """The NAT's two write-mostly counters cost one store op each per batch,
    not one per packet, with the same final state as model T."""
    chain = parse_spec(NAT_ONLY)
    records = first(LAN, 3000)
    store = RecordingStore()
    _, _, digest, _ = run_chain(chain, records, "EO+C+NA", store, batch_size=256)
    assert digest == run_chain(chain, records, "T")[2]
    assert max(r.count("incr_many") for r in store.requests) == 2     # packets, tcp_packets
    assert sum(r.count("incr_many") for r in store.requests) < 3000 // 50      # ~2 per batch
    assert sum(r.count("incr") for r in store.requests) == 0
    assert store.engine.data[ObjectKey("nat", "packets", None, False)] > 2900


def test_increments_never_move_past_another_op_on_their_key():
    store = RecordingStore()
    client, hits = write_mostly_counter(store)
    client.begin_packet(1)
    hits.incr(5)
    hits.set(100)                       # closes the open incr_many of this key
    hits.incr(1)
    hits.incr(2, key="other")
    hits.incr(1)
    client.begin_packet(2)
    hits.incr(1, key="other")
    client.flush()
    assert store.requests == [["incr_many", "set", "incr_many", "incr_many"]]
    assert (store.value(None), store.value("other")) == (102, 3)


def test_no_increment_joins_an_op_already_sent():
    """A request whose acknowledgement is lost is retransmitted (and deduplicated
    by the store); increments issued after it go in a new op, or they would be
    deduplicated away with it."""
    store = RecordingStore()
    client, hits = write_mostly_counter(store)
    client.begin_packet(1)
    hits.incr(1)
    hits.incr(1)
    store.lose_ack = 1
    client.flush()                      # applied, but the client does not know
    client.begin_packet(2)
    hits.incr(1)
    client.flush()
    assert store.requests[-1] == ["incr_many", "incr_many"]
    assert store.value(None) == 3


def test_coalesced_increments_keep_their_xor_ids():
    """§5.4: the commit reports of a coalesced op XOR to each packet's vector."""
    store = MemoryStore()
    client, hits = write_mostly_counter(store)
    vectors = {}
    for clock in (7, 8):
        client.begin_packet(clock)
        hits.incr(1)
        hits.incr(4, key="b")
        hits.incr(2)
        vectors[clock] = client.packet_xor
    client.flush()
    reported: dict[int, int] = collections.defaultdict(int)
    for clock, xor_id in store.commits():
        reported[clock] ^= xor_id
    assert reported == vectors and all(vectors.values())


def test_the_lb_prefetches_only_the_vips_flows():
    """§4.3 batch prefetch with the NF's reads_flow_state hint: the LB loads the
    mappings of the VIP's connections only, not of every flow passing by."""
    lb_only = {"vertices": {"lb": {"nf": "lb", "config": {
        "vip": "10.151.119.2", "port": 10050, "backends": ["10.151.119.11", "10.151.119.12"]}}}}
    chain = parse_spec(lb_only)
    records = first(LAN, 4000)
    store = RecordingStore()
    out, _, digest, _ = run_chain(chain, records, "EO+C+NA", store, batch_size=256)
    assert (out, digest) == tuple(run_chain(chain, records, "T")[i] for i in (0, 2))
    vip = ip_bytes("10.151.119.2")
    pkts = [Packet(data) for _, data in records]
    flows = {FLOW.key(p) for p in pkts if p.is_ip}
    vip_flows = {FLOW.key(p) for p in pkts if p.is_ip and vip in (p.src, p.dst)}
    reads = sum(r.count("get") for r in store.requests)     # + the 2 backends' load counters
    assert 0 < reads <= len(vip_flows) + 2 < len(flows)     # without the hint: 405


class LossyStore(RecordingStore):
    """Requests are lost on the way in (never applied) or their acknowledgement on
    the way back (applied, reported failed), as the test schedules."""

    def __init__(self) -> None:
        super().__init__()
        self.next_faults: list[str] = []

    def execute(self, ops):
        fault = self.next_faults.pop(0) if self.next_faults else None
        if fault == "request":
            self.fail_next(1)
        results = super().execute(ops)
        if fault == "ack":
            raise StoreUnavailable("ack lost")
        return results


ACTIONS = st.one_of(
    st.tuples(st.just("incr"), st.sampled_from([None, "a", "b"]), st.integers(1, 5)),
    st.tuples(st.just("set"), st.sampled_from([None, "a", "b"]), st.integers(0, 100)),
    st.tuples(st.just("delete"), st.sampled_from([None, "a", "b"]), st.just(0)),
    st.tuples(st.sampled_from(["packet", "flush", "lose-request", "lose-ack"]), st.none(), st.just(0)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(ACTIONS, max_size=60))
def test_coalescing_keeps_order_state_and_commits(actions):
    """§4.3 coalescing under lost requests and lost acknowledgements: the store
    ends with model T's values, and each packet's commit reports XOR to its
    vector (§5.4), exactly once."""
    store = LossyStore()
    client, hits = write_mostly_counter(store)
    local = LocalObject(hits.decl, None)
    clock, vectors = 1, {}
    client.begin_packet(clock)
    for what, key, arg in actions:
        if what == "incr":
            hits.incr(arg, key)
            local.incr(arg, key)
        elif what == "set":
            hits.set(arg, key)
            local.set(arg, key)
        elif what == "delete":
            hits.delete(key)
            local.delete(key)
        elif what == "packet":
            vectors[clock] = client.packet_xor
            clock += 1
            client.begin_packet(clock)
        elif what == "flush":
            client.flush()
        else:
            store.next_faults.append(what.removeprefix("lose-"))
    vectors[clock] = client.packet_xor
    store.next_faults.clear()
    client.settle()
    assert client.pending == [] and client.unacked == []
    for key in (None, "a", "b"):
        assert store.value(key) == local.values.get(key), key
    reported: dict[int, int] = collections.defaultdict(int)
    for c, xor_id in store.commits():
        reported[c] ^= xor_id
    assert {c: v for c, v in reported.items() if v} == {c: v for c, v in vectors.items() if v}


@pytest.mark.parametrize("model", ["T", "EO", "EO+C", "EO+C+NA"])
def test_a_write_mostly_incr_returns_none_in_every_model_and_in_the_reference(model):
    """Table 1: write-mostly updates are blind (non-blocking in the externalized models), so an
    NF using incr's new value acted in T and not in EO (a new user's per-source counter raised
    3 alerts in T and none elsewhere).  Every model, and the COE reference, returns None; a
    read-write counter still returns its value."""
    from chc.reference import RefObject

    for access, expect in ((Access.WRITE_MOSTLY, None), (Access.READ_WRITE, 3)):
        decl = Counter(GLOBAL, access)
        decl.name = "hits"
        if model == "T":
            handle = LocalObject(decl, None)
        else:
            handle = StoreClient(MemoryStore(), "v", 0, model).bind(decl, None)
        handle.incr(2)
        assert handle.incr(1) == expect, (model, access)
        assert handle.decr(0) == expect, (model, access)
        ref = RefObject(decl, None)
        ref.incr(2)
        assert ref.incr(1) == expect, access
