"""One conformance suite for every store backend: memory, redis, redis on 2 shards, a Redis Cluster.

The store engine (:mod:`chc.core.store`) is the reference semantics; the Redis
backend implements them as server-side functions and must give the same
results, values and notifications for the same op sequences (§4.3, §5.3).
Tests that only make sense for Redis (unreachable servers, restarts,
sharding, Lua limits) are at the end; the last test runs the paper's chain end
to end on Redis and compares it with model T.
"""

from __future__ import annotations

import json
import math
import threading
from collections import deque
from itertools import islice
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chc.core.client import StoreLost, StoreUnavailable
from chc.core.store import CLOCK_BITS, Increments, ObjectKey, Op, OwnershipError, Refused, StoreError
from chc.nf import value_op
from conftest import make_store, store_servers

ROOT = Path(__file__).resolve().parent.parent

COUNTER = ObjectKey("nat", "packets", None)
VALUE = ObjectKey("lb", "mapping", (b"\x0a\x00\x00\x01", 80), per_flow=True)
LIST = ObjectKey("nat", "ports", None)


def run(store, *ops: Op) -> list:
    return store.execute(list(ops))


def get(store, key: ObjectKey, default=None):
    return store.execute([Op("get", key, default=default)])[0]


def seqs(client: str):
    """Ops with increasing seqs for ``client`` (as the client library issues them)."""
    n = 0

    def make(code: str, key: ObjectKey, args: tuple = (), **kw) -> Op:
        nonlocal n
        n += 1
        return Op(code, key, args, client, n, **kw)
    return make


def typed_equal(a, b) -> bool:
    """Equal and of the same types all the way down (1 != 1.0 != True here)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, tuple):
        return len(a) == len(b) and all(typed_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(typed_equal(a[k], b[k]) for k in a)
    if isinstance(a, float):
        return repr(a) == repr(b)
    return a == b


# -- Table 2 operations ---------------------------------------------------------------------


def test_backend_interface(store):
    assert store.name in ("memory", "redis")
    assert isinstance(store.describe(), str) and store.describe()
    before = store.round_trips
    assert run(store) == []
    assert run(store, Op("get", COUNTER), Op("get", VALUE), Op("get", LIST)) == [None, None, None]
    assert store.round_trips == before + 2          # one per execute, whatever the servers
    if store.name == "redis":
        assert store.describe().startswith(("redis://127.0.0.1:", "redis-cluster://127.0.0.1:"))
        assert store.describe().count(",") == len(store.urls) - 1      # every server named


def test_get_absent_returns_the_default(store):
    marker = object()
    assert get(store, COUNTER) is None
    assert get(store, COUNTER, default=7) == 7
    assert get(store, COUNTER, default=marker) is marker     # any object, even one msgpack can't carry
    assert get(store, VALUE, default=(0, "open")) == (0, "open")
    assert store.objects("nat") == {}


def test_set_get_delete(store):
    assert run(store, Op("set", VALUE, ((2, "open"),), instance=1)) == [None]
    assert get(store, VALUE) == (2, "open")
    assert run(store, Op("set", VALUE, (None,), instance=1)) == [None]
    assert get(store, VALUE, default="absent") is None       # a stored None is not absent
    assert run(store, Op("delete", VALUE, instance=1)) == [None]
    assert get(store, VALUE, default="absent") == "absent"
    assert run(store, Op("delete", VALUE, instance=1)) == [None]    # deleting nothing is fine


def test_incr_and_defaults(store):
    assert run(store, Op("incr", COUNTER, (1,))) == [1]                     # absent, no default: 0
    assert run(store, Op("incr", COUNTER, (-3,))) == [-2]
    fresh = ObjectKey("nat", "tcp", None)
    assert run(store, Op("incr", fresh, (2,), default=40)) == [42]          # absent: the default
    assert run(store, Op("incr", fresh, (2,), default=40)) == [44]          # present: the default is ignored
    f = ObjectKey("portscan", "likelihood", b"\x0a\x00\x00\x02")
    r = run(store, Op("incr", f, (0.5,), default=1.0), Op("incr", f, (2,), default=1.0))
    assert typed_equal(r[0], 1.5) and typed_equal(r[1], 3.5)
    z = ObjectKey("portscan", "z", None)
    r = run(store, Op("incr", z, (1,), default=0.0))      # `default or 0`: a zero float default is int 0
    assert typed_equal(r[0], 1)
    b = ObjectKey("portscan", "b", None)
    run(store, Op("set", b, (True,)))
    assert typed_equal(run(store, Op("incr", b, (1,)))[0], 2)                # True + 1 == 2
    assert typed_equal(get(store, f), 3.5)


def test_list_fifo(store):
    assert run(store, Op("push", LIST, ("a",)), Op("push", LIST, (b"b",)), Op("push", LIST, ((1, 2),))) == [1, 2, 3]
    assert list(get(store, LIST)) == ["a", b"b", (1, 2)]
    assert run(store, Op("pop", LIST), Op("pop", LIST)) == ["a", b"b"]     # head first
    assert run(store, Op("push", LIST, ("c",))) == [2]                      # tail
    assert run(store, Op("pop", LIST), Op("pop", LIST)) == [(1, 2), "c"]
    assert run(store, Op("pop", LIST)) == [None]                            # empty
    # An emptied list object stays (empty), it is not absent.
    assert list(get(store, LIST, default="absent")) == []
    assert {k: list(v) for k, v in store.objects("nat")["ports"].items()} == {None: []}


def test_list_ops_on_absent_start_from_the_default(store):
    a = ObjectKey("nat", "pool", 1)
    b = ObjectKey("nat", "pool", 2)
    c = ObjectKey("nat", "pool", 3)
    assert run(store, Op("push", a, (9,), default=[1, 2])) == [3]
    assert list(get(store, a)) == [1, 2, 9]
    assert run(store, Op("pop", b, default=[7, 8])) == [7]
    assert list(get(store, b)) == [8]
    assert run(store, Op("pop", c, default=None)) == [None]
    assert list(get(store, c, default="absent")) == []
    big = list(range(20000, 60000))                  # the NAT's port pool: sent once, then by reference
    d = ObjectKey("nat", "pool", 4)
    e = ObjectKey("nat", "pool", 5)
    assert run(store, Op("pop", d, default=list(big)), Op("pop", d, default=list(big)),
               Op("pop", e, default=list(big))) == [20000, 20001, 20000]
    assert run(store, Op("pop", d, default=list(big))) == [20002]
    assert len(get(store, e)) == 39999


def test_push_pop_on_a_value_is_refused(store):
    run(store, Op("set", COUNTER, (5,)))
    with pytest.raises(StoreError, match="non-list"):
        run(store, Op("push", COUNTER, (1,)))
    with pytest.raises(StoreError, match="non-list"):
        run(store, Op("pop", COUNTER))
    assert get(store, COUNTER) == 5


def test_declare(store):
    store.declare(LIST, list(range(5000, 5005)))
    store.declare(LIST, [1])                                  # idempotent: exists already
    assert run(store, Op("pop", LIST)) == [5000]
    assert list(get(store, LIST)) == [5001, 5002, 5003, 5004]
    store.declare(COUNTER, 10)
    store.declare(COUNTER, 99)
    assert run(store, Op("incr", COUNTER, (1,))) == [11]
    empty = ObjectKey("nat", "empty", None)
    store.declare(empty, ())
    assert run(store, Op("pop", empty), Op("push", empty, ("x",))) == [None, 1]
    big = ObjectKey("nat", "big", None)
    store.declare(big, range(20000, 60000))
    assert run(store, Op("pop", big), Op("pop", big)) == [20000, 20001]
    assert len(store.objects("nat")["big"][None]) == 39998


def test_cas(store):
    key = ObjectKey("trojan", "steps", b"\x0a\x00\x00\x03")
    # absent: compared with the default
    assert run(store, Op("cas", key, ((0, 0), (1, 0)), default=(0, 0))) == [True]
    assert run(store, Op("cas", key, ((0, 0), (2, 0)), default=(0, 0))) == [False]
    assert get(store, key) == (1, 0)
    assert run(store, Op("cas", key, ((1, 0), (1, 1)))) == [True]
    assert get(store, key) == (1, 1)
    # Python equality: 1 == 1.0 == True, dict order does not matter, str != bytes
    n = ObjectKey("trojan", "n", None)
    run(store, Op("set", n, (1,)))
    assert run(store, Op("cas", n, (1.0, 2))) == [True]
    assert run(store, Op("cas", n, (True, 3))) == [False]                   # it is 2 now
    assert run(store, Op("cas", n, (2.0, {"a": 1, "b": 2}))) == [True]
    assert run(store, Op("cas", n, ({"b": 2, "a": 1}, "s"))) == [True]
    assert run(store, Op("cas", n, (b"s", "t"))) == [False]
    assert run(store, Op("cas", n, ("s", None))) == [True]
    assert run(store, Op("cas", n, (None, 0.5))) == [True]
    assert typed_equal(get(store, n), 0.5)
    absent = ObjectKey("trojan", "absent", None)
    assert run(store, Op("cas", absent, (None, 1))) == [True]              # absent, default None
    run(store, Op("push", LIST, (1,)))
    assert run(store, Op("cas", LIST, ([1], 5))) == [False]                # a list object never equals


# -- custom operations ----------------------------------------------------------------------------


def test_argmin_incr(store):
    keys = [ObjectKey("lb", "active", i) for i in range(3)]
    op_key = ObjectKey("lb", "active", None)
    run(store, Op("set", keys[0], (2,)), Op("set", keys[1], (1,)))         # keys[2] absent: 0
    picks = [run(store, Op("custom", op_key, ("argmin_incr", keys)))[0] for _ in range(5)]
    assert picks == [2, 1, 2, 0, 1]                                        # least, first on ties
    assert [get(store, k) for k in keys] == [3, 3, 2]


def test_weighted_argmin_incr(store):
    """Weighted least-connections: least count / weight among positive weights, exact
    (cross-multiplied), first on ties; no positive weight answers None, changes nothing."""
    keys = [ObjectKey("lb", "active", i) for i in range(3)]
    op_key = ObjectKey("lb", "active", None)
    picks = [run(store, Op("custom", op_key, ("argmin_incr", keys, [1, 3, 0])))[0] for _ in range(8)]
    assert picks == [0, 1, 1, 1, 0, 1, 1, 1]
    assert [get(store, k) for k in keys] == [2, 6, None]
    assert run(store, Op("custom", op_key, ("argmin_incr", keys, [0, 0, 0])))[0] is None
    assert [get(store, k) for k in keys] == [2, 6, None]


def _scale(engine, op):
    value = engine.data.get(op.key, op.default or 1) * op.args[0]
    engine.data[op.key] = value
    return value


SCALE_LUA = """
local v = CHC.read(op.key)
if v == nil then v = op.default or 1 end
v = v * op.args[1]
CHC.write(op.key, v)
return v
"""


def test_registered_custom_op(store):
    store.register("scale", _scale, lua=SCALE_LUA)
    key = ObjectKey("lb", "weight", 1)
    assert run(store, Op("custom", key, ("scale", 3))) == [3]              # absent: 1 * 3
    assert run(store, Op("custom", key, ("scale", 5)), Op("get", key)) == [15, 15]
    other = ObjectKey("lb", "weight", 2)
    assert run(store, Op("custom", other, ("scale", 2), default=10)) == [20]
    with pytest.raises(StoreError, match="unknown custom operation 'nope'"):
        run(store, Op("custom", key, ("nope",)))


def test_register_without_lua(store):
    if store.name == "memory":
        store.register("scale", _scale)            # the memory store runs the Python function
        assert run(store, Op("custom", COUNTER, ("scale", 4))) == [4]
    else:
        with pytest.raises(StoreError, match="Lua body"):
            store.register("scale", _scale)


@value_op("conformance_mul_add", lua="""
local v = value or 0
local n = v * args[1] + args[2]
if n > 100 then return v, nil end
return n, n - v
""")
def _mul_add(value, k, d):
    v = 0 if value is None else value
    n = v * k + d
    if n > 100:
        return v, None
    return n, n - v


@value_op("conformance_no_lua")
def _no_lua(value):
    return value, None


def test_value_operations(store):
    key = ObjectKey("portscan", "likelihood", b"\x0a\x00\x00\x09")

    def apply(*args, default=None):
        return run(store, Op("apply", key, ("conformance_mul_add", *args), default=default))[0]

    assert apply(2, 3) == (3, 3)                      # absent, default None: 0 * 2 + 3
    assert apply(2, 3) == (9, 6)
    r = apply(0.5, 0)
    assert typed_equal(r, (4.5, -4.5))
    r = apply(2, 0)
    assert typed_equal(r, (9.0, 4.5))                 # a float value stays float (9.0, not 9)
    r = apply(20, 0)
    assert typed_equal(r, (9.0, None))                # refused by the op: unchanged
    assert typed_equal(get(store, key), 9.0)
    other = ObjectKey("portscan", "likelihood", b"\x0a\x00\x00\x0a")
    r = run(store, Op("apply", other, ("conformance_mul_add", 3, 0), default=1.0))[0]
    assert typed_equal(r, (3.0, 2.0))                 # absent: the (float) default
    with pytest.raises(StoreError, match="unknown value operation 'nope'"):
        run(store, Op("apply", key, ("nope", 1)))
    if store.name == "redis":
        with pytest.raises(StoreError, match="no Lua chunk"):
            run(store, Op("apply", key, ("conformance_no_lua",)))


# -- ownership (§4.3, §5.1) -------------------------------------------------------------------------


def test_per_flow_ownership(store):
    assert run(store, Op("set", VALUE, ((0, "open"),), instance=1)) == [None]      # 1 becomes the owner
    with pytest.raises(OwnershipError, match="owned by instance 1") as err:
        run(store, Op("set", VALUE, ((1, "open"),), instance=2))
    assert "instance 2 may not update it" in str(err.value)
    assert get(store, VALUE) == (0, "open")                                     # reads are not owned
    assert run(store, Op("incr", ObjectKey("lb", "mapping", 7, per_flow=True), (1,), instance=2)) == [1]
    with pytest.raises(OwnershipError):
        store.release(VALUE, 2)
    store.release(VALUE, 1)
    assert store.take(VALUE, "lb/2", 2) is True
    assert run(store, Op("set", VALUE, ((1, "open"),), instance=2)) == [None]
    with pytest.raises(OwnershipError, match="owned by instance 2"):
        run(store, Op("delete", VALUE, instance=1))


def test_a_logged_duplicate_from_another_instance_is_answered_and_takes_no_ownership(store):
    # §5.1 with §5.4: a failover replays updates of flows that have moved to another
    # instance since; the store has them (clock log): answered, not refused, and the key
    # stays free for whoever writes it next (refused, it was resent with every request)
    key = ObjectKey("lb", "mapping", 9, per_flow=True)
    assert run(store, Op("incr", key, (3,), instance=1, tag=(7, 1))) == [3]
    store.release_instance("lb", 1)                                  # 1 hands the flow over
    assert run(store, Op("incr", key, (3,), instance=1, tag=(7, 1))) == [3]   # the duplicate
    assert run(store, Op("incr", key, (4,), instance=2, tag=(9, 1))) == [7]   # 2 takes it
    assert run(store, Op("incr", key, (3,), instance=1, tag=(7, 1))) == [3]   # from a non-owner
    with pytest.raises(OwnershipError, match="owned by instance 2"):
        run(store, Op("incr", key, (1,), instance=1, tag=(10, 1)))          # a new update is not


def test_release_take_notifies_the_waiting_client(store, connect):
    other = connect(store)                        # the waiting instance's own connection
    run(store, Op("set", VALUE, ((0, "open"),), instance=1))
    assert store.take(VALUE, "lb/1", 1) is True    # the owner already
    assert other.take(VALUE, "lb/2", 2) is False   # queued
    assert other.notifications("lb/2") == []
    store.release(VALUE, 1)
    assert other.notifications("lb/2") == [("owned", VALUE, 2)]
    assert other.notifications("lb/2") == []
    assert run(other, Op("set", VALUE, ((5, "closed"),), instance=2)) == [None]
    with pytest.raises(OwnershipError, match="owned by instance 2"):
        run(store, Op("set", VALUE, ((6, "closed"),), instance=1))


# -- callbacks (Table 1) ---------------------------------------------------------------------------------


def test_callbacks_reach_other_subscribers_not_the_issuer(store, connect):
    key = ObjectKey("portscan", "likelihood", b"\x0a\x00\x00\x05")
    a, b = store, connect(store)
    assert a.subscribe(key, "portscan/0") is None                 # absent
    run(a, Op("set", key, (2.0,), client="portscan/0", seq=1))
    assert b.subscribe(key, "portscan/1") == 2.0                  # the current value
    run(a, Op("incr", key, (0.5,), client="portscan/0", seq=2))
    run(b, Op("incr", key, (1,), client="portscan/1", seq=1))
    assert a.notifications("portscan/0") == [("update", key, 3.5)]             # b's update only
    assert b.notifications("portscan/1") == [("update", key, 2.5)]             # a's update only
    assert b.notifications("portscan/1") == []
    assert a.notifications("nobody") == []
    # list objects: the value is the whole list
    run(a, Op("push", LIST, (1,), client="nat/0", seq=1))
    b.subscribe(LIST, "nat/1")
    run(a, Op("push", LIST, (2,), client="nat/0", seq=2))
    [(kind, k, v)] = b.notifications("nat/1")
    assert (kind, k, list(v)) == ("update", LIST, [1, 2])


# -- exactly-once per client (§4.3) -----------------------------------------------------------------------


def test_retransmissions_are_not_applied_twice(store):
    first = [Op("incr", COUNTER, (1,), "nat/0", 1), Op("incr", COUNTER, (10,), "nat/0", 2)]
    assert store.execute(first) == [1, 11]
    assert store.execute(first) == [None, None]                   # acknowledged, not applied
    assert store.execute(first + [Op("incr", COUNTER, (100,), "nat/0", 3)]) == [None, None, 111]
    assert store.execute([Op("incr", COUNTER, (1,), "nat/0", 2)]) == [None]      # older seq
    assert store.execute([Op("get", COUNTER, (), "nat/0", 3)]) == [111]          # a resent read is answered
    assert store.execute([Op("incr", COUNTER, (1,), "nat/1", 1)]) == [112]       # another client
    assert store.execute([Op("incr", COUNTER, (1,)), Op("incr", COUNTER, (1,))]) == [113, 114]  # seq 0: no dedup
    assert get(store, COUNTER) == 114


def test_release_instance_gives_up_every_per_flow_object_of_one_instance(store):
    """A handover (§5.1 step 5): instance 1 of nat gives up all its per-flow objects,
    and only those: another instance may then update them, not instance 2's."""
    a = ObjectKey("nat", "mapping", b"flow-a", True)
    b = ObjectKey("nat", "mapping", b"flow-b", True)
    c = ObjectKey("nat", "mapping", b"flow-c", True)
    other = ObjectKey("lb", "mapping", b"flow-a", True)
    run(store, Op("set", a, (1,), instance=1), Op("set", b, (2,), instance=1), Op("set", c, (3,), instance=2),
        Op("set", other, (4,), instance=1))
    assert store.release_instance("nat", 1) == 2
    run(store, Op("set", a, (10,), instance=3), Op("set", b, (20,), instance=3))
    with pytest.raises(OwnershipError):
        run(store, Op("set", c, (30,), instance=3))
    with pytest.raises(OwnershipError):
        run(store, Op("set", other, (40,), instance=3))
    assert (get(store, a), get(store, b), get(store, c)) == (10, 20, 3)


def test_a_refused_op_consumes_its_seq(store):
    run(store, Op("set", VALUE, (1,), instance=1))
    with pytest.raises(OwnershipError):
        run(store, Op("set", VALUE, (2,), "lb/2", 1, instance=2))
    assert run(store, Op("set", VALUE, (2,), "lb/2", 1, instance=2)) == [None]   # retransmission: acknowledged
    assert get(store, VALUE) == 1


# -- clock log (§5.3) -----------------------------------------------------------------------------------------


def test_clock_log_emulates_duplicate_updates(store):
    assert run(store, Op("incr", COUNTER, (5,), tag=(7, 1))) == [5]
    assert run(store, Op("incr", COUNTER, (5,), tag=(7, 1))) == [5]       # replayed: the recorded result
    assert get(store, COUNTER) == 5
    assert run(store, Op("incr", COUNTER, (5,), tag=(7, 2))) == [10]      # another update of packet 7
    assert run(store, Op("incr", COUNTER, (5,), tag=(8, 1))) == [15]
    # the log is per object: the same tag on another object applies
    assert run(store, Op("incr", ObjectKey("nat", "tcp", None), (1,), tag=(7, 1))) == [1]
    # a clone (another client) replaying packet 7 is suppressed too
    assert run(store, Op("incr", COUNTER, (5,), "nat/9", 1, tag=(7, 2))) == [10]
    # every kind of update is emulated, with its own recorded result
    assert run(store, Op("push", LIST, ("x",), tag=(7, 3)), Op("push", LIST, ("x",), tag=(7, 3))) == [1, 1]
    assert run(store, Op("pop", LIST, tag=(7, 4)), Op("pop", LIST, tag=(7, 4))) == ["x", "x"]
    assert list(get(store, LIST)) == []
    assert get(store, COUNTER) == 15


def test_prune_below(store):
    # (clocks in the order updates arrive: the memory engine prunes its log front to back)
    run(store, Op("incr", COUNTER, (1,), tag=(3, 1)), Op("incr", ObjectKey("nat", "tcp", None), (1,), tag=(4, 1)),
        Op("incr", COUNTER, (1,), tag=(7, 1)))
    assert store.prune_below(5) == 2                                      # (3,1) and (4,1)
    assert store.prune_below(5) == 0
    assert run(store, Op("incr", COUNTER, (1,), tag=(3, 1))) == [3]       # forgotten: applies again
    assert run(store, Op("incr", COUNTER, (1,), tag=(7, 1))) == [2]       # still recorded
    assert store.prune_below(100) == 2
    assert run(store, Op("incr", COUNTER, (1,), tag=(7, 1))) == [4]


def test_each_root_prunes_its_own_clocks(store):
    """Clocks carry their root's id in the high bits (§5): one root's floor says nothing
    of the other's packets, so root 1 pruning below its clock 5 keeps every entry of
    root 0 (whose clocks are all lower), and root 0 pruning keeps root 1's."""
    r1 = 1 << CLOCK_BITS
    for k, clock in enumerate((3, r1 + 2, r1 + 7, 9), 1):    # (a request each: Redis indexes a request's
        assert run(store, Op("incr", COUNTER, (1,), tag=(clock, 1))) == [k]     # entries together)
    assert store.prune_below(r1 + 5) == 1                                 # root 1's (r1+2,1) only
    assert run(store, Op("incr", COUNTER, (1,), tag=(3, 1))) == [1]       # root 0's: still recorded
    assert run(store, Op("incr", COUNTER, (1,), tag=(r1 + 2, 1))) == [5]  # forgotten: applies again
    assert store.prune_below(5) == 1                                      # root 0's (3,1)
    assert run(store, Op("incr", COUNTER, (1,), tag=(r1 + 7, 1))) == [3]  # root 1's above its floor
    assert run(store, Op("incr", COUNTER, (1,), tag=(9, 1))) == [4]
    assert store.prune_below(10) + store.prune_below(r1 + 10) == 3
    assert run(store, Op("incr", COUNTER, (1,), tag=(9, 1))) == [6]


def test_coalesced_increments_of_two_roots_go_when_both_are_done(store):
    """One batch's incr_many may hold clocks of both roots: each increment's entry stays
    until its own root is past it."""
    r1 = 1 << CLOCK_BITS
    run(store, Op("incr_many", COUNTER, increments((4, 1, 1, 0), (r1 + 4, 1, 1, 0))))
    store.prune_below(r1 + 9)
    run(store, Op("incr", COUNTER, (1,), tag=(4, 1)))
    assert get(store, COUNTER) == 2                                       # root 0's: emulated
    store.prune_below(9)
    run(store, Op("incr", COUNTER, (1,), tag=(4, 1)))
    assert get(store, COUNTER) == 3                                       # now forgotten: applied


def test_commit_reports(store):
    run(store,
        Op("incr", COUNTER, (1,), tag=(7, 1), xor_id=0xA1),
        Op("incr", COUNTER, (1,), tag=(7, 1), xor_id=0xA1),              # emulated: no report
        Op("set", VALUE, (1,), tag=(8, 1), xor_id=0xB2, instance=1),
        Op("incr", COUNTER, (1,), tag=(9, 1)),                            # xor id 0: no report
        Op("incr", COUNTER, (1,), xor_id=0xC3))                           # no tag: no report
    assert sorted(store.commits()) == [(7, 0xA1), (8, 0xB2)]
    assert store.commits() == []                                          # drained


def test_each_root_drains_its_own_commit_reports(store):
    """Roots of one chain share the store; each pulls the reports of its own clocks."""
    r1 = 1 << CLOCK_BITS
    run(store, Op("incr", COUNTER, (1,), tag=(7, 1), xor_id=0xA1), Op("incr", COUNTER, (1,), tag=(r1 + 3, 1),
                                                                         xor_id=0xB2))
    assert store.commits(1) == [(r1 + 3, 0xB2)]
    run(store, Op("incr", COUNTER, (1,), tag=(r1 + 4, 1), xor_id=0xC3))
    assert store.commits(0) == [(7, 0xA1)]
    assert store.commits(0) == []
    assert store.commits(1) == [(r1 + 4, 0xC3)]


def increments(*items: tuple[int, int, int, int]) -> tuple[Increments]:
    """``incr_many`` arguments from (clock, n, by, xor id) items."""
    inc = Increments()
    for item in items:
        inc.add(*item)
    return (inc,)


def test_coalesced_increments(store):
    """§4.3 incr_many: one addition, yet per increment a clock-log entry and a commit."""
    assert run(store, Op("incr_many", COUNTER, increments((5, 1, 2, 0xA1), (9, 1, 3, 0), (10, 2, 1, 0xB2)),
                         default=100)) == [106]
    assert sorted(store.commits()) == [(5, 0xA1), (10, 0xB2)]
    # each increment is in the clock log: a replayed one alone is emulated ...
    assert run(store, Op("incr", COUNTER, (3,), tag=(9, 1))) == [106]
    # ... and in a later incr_many it is left out of the sum and not reported again
    assert run(store, Op("incr_many", COUNTER, increments((9, 1, 3, 0), (11, 1, 4, 0xC3), (5, 1, 2, 0xA1)))) == [110]
    assert store.commits() == [(11, 0xC3)]
    assert get(store, COUNTER) == 110
    assert store.prune_below(12) == 4                                      # (5,1) (9,1) (10,2) (11,1)
    assert run(store, Op("incr_many", COUNTER, increments((9, 1, 3, 0)))) == [113]   # forgotten: applies
    big = (1 << 62) + 5                                                   # the root id sits up high
    assert run(store, Op("incr_many", COUNTER, increments((big, 1, 1, 0xD4), (big, 2, 1, 0xE5)))) == [115]
    assert store.commits() == [(big, 0xD4), (big, 0xE5)]
    assert run(store, Op("incr_many", COUNTER, increments((big, 2, 1, 0xE5)))) == [115]


def test_coalesced_increments_on_a_list_are_refused(store):
    store.declare(LIST, [1])
    with pytest.raises(StoreError, match="incr"):
        run(store, Op("incr_many", LIST, increments((1, 1, 1, 0))))


def test_incr_on_a_list_is_refused_and_leaves_it_a_list(store):
    store.declare(LIST, [1, 2])
    fresh = [ObjectKey("nat", "fresh", i) for i in range(3)]
    # one request: new counters (absent) and a list object; the list must not be taken for absent
    with pytest.raises(StoreError, match="incr"):
        run(store, *[Op("incr", k, (1,)) for k in fresh], Op("incr", LIST, (1,)))
    assert list(get(store, LIST)) == [1, 2]
    assert [get(store, k) for k in fresh] == [1, 1, 1]
    with pytest.raises(StoreError, match="incr"):
        run(store, Op("incr", LIST, (1,)))
    assert list(get(store, LIST)) == [1, 2]


# -- requests ---------------------------------------------------------------------------------------------------


def test_a_request_is_applied_in_order(store):
    make = seqs("nat/0")
    r = store.execute([make("incr", COUNTER, (1,)), make("incr", COUNTER, (1,)), make("get", COUNTER),
                       make("set", COUNTER, (40,)), make("incr", COUNTER, (2,)), make("get", COUNTER),
                       make("push", LIST, (1,)), make("get", LIST)])
    assert r[:6] == [1, 2, 2, None, 42, 42]
    assert list(r[7]) == [1]
    # non-blocking ops queued ahead of a blocking read (EO+C+NA): the read sees them all
    ops = [make("incr", ObjectKey("nat", "k", i), (i,)) for i in range(50)] + \
          [make("set", VALUE, ("v",), instance=1), make("get", ObjectKey("nat", "k", 49))]
    assert store.execute(ops)[-1] == 49


def test_refusals_name_the_first_failing_op(store):
    run(store, Op("set", VALUE, (1,), instance=1))
    with pytest.raises(OwnershipError, match="owned by instance 1"):
        run(store, Op("incr", COUNTER, (1,)), Op("set", VALUE, (2,), instance=2))
    assert get(store, COUNTER) == 1                          # the ops before it were applied


def test_concurrent_clients_lose_no_update(store, connect):
    connections = [connect(store) for _ in range(4)]
    errors = []

    def worker(i: int, s) -> None:
        try:
            for seq in range(1, 501):
                s.execute([Op("incr", COUNTER, (1,), f"nat/{i}", seq)])
        except Exception as exc:       # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i, s)) for i, s in enumerate(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert get(store, COUNTER) == 2000


# -- retransmission on a lossy network: exactly once (§4.3) with the clock log (§5.3) -------------------------
# A client resends every unacknowledged op, in seq order, ahead of each new request; a request or its
# reply may be lost, duplicated, delayed or reordered on the way.


def test_a_blocking_update_retransmitted_after_its_reply_was_lost_gets_its_result(store):
    """A blocking update applied whose reply was lost: the retransmission gets the result the
    lost reply carried (recorded in the clock log, §5.3) and changes nothing: a popped port
    is not lost, a cas or value operation is not applied twice."""
    make = seqs("nat/0")
    steps = ObjectKey("trojan", "steps", b"\x0a\x00\x00\x03")
    score = ObjectKey("portscan", "likelihood", b"\x0a\x00\x00\x07")
    pop = make("pop", LIST, default=[20000, 20001], tag=(3, 1), xor_id=0xA1)
    cas = make("cas", steps, ((0, 0), (1, 0)), default=(0, 0), tag=(3, 2), xor_id=0xA2)
    apply = make("apply", score, ("conformance_mul_add", 2, 3), tag=(3, 3), xor_id=0xA3)
    for op, want in ((pop, 20000), (cas, True), (apply, (3, 3))):
        assert run(store, op) == [want]                     # applied; the reply is lost
        assert run(store, op) == [want]                     # the retransmission: the same result
    assert run(store, pop, cas, apply) == [20000, True, (3, 3)]     # a late copy of an older request
    assert list(get(store, LIST)) == [20001]
    assert get(store, steps) == (1, 0)
    assert get(store, score) == 3
    assert sorted(store.commits()) == [(3, 0xA1), (3, 0xA2), (3, 0xA3)]
    assert run(store, make("pop", LIST, default=[20000, 20001], tag=(4, 1))) == [20001]


def test_a_read_resent_after_its_reply_was_lost_is_answered_again(store):
    """A blocking read whose reply was lost is resent with the same seq: the store answers
    it again (with the value now), it is not taken for an acknowledged duplicate."""
    make = seqs("lb/0")
    key = ObjectKey("lb", "active", 1)
    read = make("get", key, default=0)
    assert run(store, make("incr", key, (2,), default=0, tag=(5, 1))) == [2]
    assert run(store, read) == [2]                          # applied; the reply is lost
    assert run(store, read) == [2]                          # the resend: answered, not None


def test_a_retransmitted_incr_many_adds_once(store):
    """§4.3 coalesced increments resent after a lost reply, as the same object (the in-process
    simulation resends it) or as an equal copy (what a network delivers): added once, each
    commit reported once, and the recorded counter value returned."""
    make = seqs("nat/0")
    items = ((5, 1, 2, 0xA1), (6, 1, 3, 0), (7, 1, 1, 0xB2))
    op = make("incr_many", COUNTER, increments(*items), default=100, tag=(5, 1))
    assert run(store, op) == [106]
    assert run(store, op) == [106]                                      # the same object
    assert run(store, op.replace(args=increments(*items))) == [106]     # an equal copy
    later = make("incr", COUNTER, (1,), tag=(8, 1))
    assert run(store, op, later) == [106, 107]
    assert run(store, op, later) == [106, 107]
    assert get(store, COUNTER) == 107
    assert sorted(store.commits()) == [(5, 0xA1), (7, 0xB2)]
    # Without a seq only the clock log knows it again: the same object is emulated all the same.
    again = Op("incr_many", COUNTER, increments((9, 1, 5, 0xC3), (9, 2, 5, 0xC4)))
    assert run(store, again) == [117]
    assert run(store, again) == [117]
    assert get(store, COUNTER) == 117
    assert sorted(store.commits()) == [(9, 0xC3), (9, 0xC4)]


def test_an_acknowledged_retransmission_whose_tag_was_pruned_is_not_applied(store):
    """A copy of a request that arrives after the root pruned its clocks (§5.3): its seqs are
    at or below the client's high-water mark, so it was applied and acknowledged: not applied
    again, result None.  An op whose tag is still in the log still gets its result."""
    make = seqs("nat/0")
    a = make("incr", COUNTER, (5,), tag=(3, 1), xor_id=0xA1)
    b = make("incr_many", COUNTER, increments((4, 1, 10, 0xA2), (5, 1, 20, 0xA3)), tag=(4, 1))
    c = make("push", LIST, ("x",), tag=(7, 1), xor_id=0xA4)
    assert run(store, a, b, c) == [5, 35, 1]
    assert store.prune_below(6) == 3                                    # (3,1) (4,1) (5,1)
    assert run(store, a, b, c) == [None, None, 1]
    assert store.prune_below(8) == 1
    assert run(store, a, b, c) == [None, None, None]
    assert get(store, COUNTER) == 35
    assert list(get(store, LIST)) == ["x"]
    assert sorted(store.commits()) == [(3, 0xA1), (4, 0xA2), (5, 0xA3), (7, 0xA4)]


def test_a_request_resending_applied_ops_applies_only_its_new_ones(store):
    """Ops applied before (the reply was lost) ahead of new ones in one request: the old ones
    get their recorded results (None when untagged) and change nothing; the new ones apply."""
    make = seqs("nat/0")
    sent = [make("incr", COUNTER, (1,), tag=(1, 1), xor_id=0x11),
            make("incr_many", COUNTER, increments((1, 2, 2, 0x12), (2, 1, 4, 0x21)), tag=(1, 2)),
            make("push", LIST, ("a",), tag=(2, 2), xor_id=0x22),
            make("set", VALUE, ("v",), instance=1)]                     # untagged
    assert store.execute(sent) == [1, 7, 1, None]                      # the reply is lost
    new = [make("pop", LIST, tag=(3, 1), xor_id=0x31), make("incr", COUNTER, (10,), tag=(3, 2), xor_id=0x32)]
    assert store.execute(sent + new) == [1, 7, 1, None, "a", 17]
    assert get(store, COUNTER) == 17
    assert list(get(store, LIST)) == []
    assert get(store, VALUE) == "v"
    assert sorted(store.commits()) == [(1, 0x11), (1, 0x12), (2, 0x21), (2, 0x22), (3, 0x31), (3, 0x32)]


def test_dedup_off_applies_every_copy(store):
    """``dedup = False`` (the checker's ``--break no-dedup``; memory store only): every copy of
    an op is applied, whatever its seq or clock-log tag, and still recorded and reported."""
    if store.name != "memory":
        assert store.dedup is True
        with pytest.raises(StoreError, match="memory store only"):
            store.dedup = False
        assert store.dedup is True
        return
    assert store.dedup is True and store.engine.dedup is True
    store.dedup = False
    assert store.engine.dedup is False
    make = seqs("nat/0")
    a = make("incr", COUNTER, (1,), tag=(1, 1), xor_id=0xA1)
    b = make("incr_many", COUNTER, increments((1, 2, 2, 0xA2), (2, 1, 4, 0xB1)), tag=(1, 2))
    c = make("pop", LIST, default=[7, 8], tag=(2, 2), xor_id=0xB2)
    assert run(store, a, b, c) == [1, 7, 7]
    assert run(store, a, b, c) == [8, 14, 8]                        # the same seqs: applied again
    assert run(store, Op("incr", COUNTER, (1,), tag=(1, 1))) == [15]     # a recorded tag: applied again
    assert sorted(store.commits()) == sorted([(1, 0xA1), (1, 0xA2), (2, 0xB1), (2, 0xB2)] * 2)
    store.dedup = True
    assert run(store, a, b, c) == [15, 14, 8]                       # the results recorded last
    assert get(store, COUNTER) == 15


CHOICE = ObjectKey("lb", "choice", None)
NET_STEPS = st.one_of(
    st.tuples(st.just("issue"), st.integers(0, 1), st.sampled_from(["incr", "incr_many", "push", "pop", "cas"]),
              st.integers(0, 3)),
    # the last item: whether the root prunes the clocks done once a reply is accepted
    st.tuples(st.just("send"), st.integers(0, 1),
              st.sampled_from(["deliver", "lose-request", "lose-reply", "duplicate", "delay"]), st.booleans()),
    st.tuples(st.just("arrive"), st.integers(0, 7), st.sampled_from(["reply", "lose-reply"]), st.booleans()),
)


class _Reference:
    """What the store must end with: each distinct op applied once, in first-arrival order."""

    def __init__(self) -> None:
        self.counter = 0
        self.items: deque = deque()
        self.choice = 0
        self.results: dict[tuple[str, int], object] = {}

    def arrive(self, op: Op) -> None:
        if (op.client, op.seq) not in self.results:
            self.results[(op.client, op.seq)] = self._apply(op)

    def _apply(self, op: Op) -> object:
        if op.code == "incr":
            self.counter += op.args[0]
            return self.counter
        if op.code == "incr_many":
            self.counter += op.args[0].total
            return self.counter
        if op.code == "push":
            self.items.append(op.args[0])
            return len(self.items)
        if op.code == "pop":
            return self.items.popleft() if self.items else None
        expected, new = op.args
        if self.choice != expected:
            return False
        self.choice = new
        return True


def _lossy_network_run(store, steps: list[tuple]) -> None:
    """Two clients' tagged ops over a network that loses, duplicates, delays and reorders
    requests and replies; each client resends its unacknowledged ops ahead of each request."""
    ref = _Reference()
    pending: list[list[Op]] = [[], []]
    seq = [0, 0]
    clock = 1
    commits: list[tuple[int, int]] = []
    held: list[tuple[int, list[Op]]] = []           # delayed requests
    sent: list[tuple[int, list[Op]]] = []           # every request sent

    def deliver(who: int, request: list[Op], reply: bool, prune: bool = False) -> None:
        for op in request:
            ref.arrive(op)
        results = store.execute(request)
        if reply:
            for op, r in zip(request, results, strict=True):
                if op in pending[who]:               # (a late reply of an acknowledged op is ignored)
                    assert r == ref.results[(op.client, op.seq)], op
            pending[who] = [op for op in pending[who] if op not in request]
            if prune:
                # §5.3: the root prunes the clocks done in the whole chain (every update acknowledged).
                store.prune_below(min([op.tag[0] for ops in pending for op in ops], default=clock))

    for step, who, what, arg in steps:
        prune = step != "issue" and bool(arg)
        if step == "issue":
            seq[who] += 1
            client = f"nf/{who}"
            tag = (clock, 1)
            if what == "incr_many":
                inc = Increments()
                for i in range(arg + 1):
                    inc.add(clock + i, 1, i + 1, clock + i)
                    commits.append((clock + i, clock + i))
                op = Op("incr_many", COUNTER, (inc,), client, seq[who], tag=tag)
                clock += arg
            else:
                args = {"incr": (arg + 1,), "push": (who * 1000 + seq[who],), "pop": (),
                        "cas": (arg % 2, arg // 2 + 1)}[what]
                key = {"incr": COUNTER, "push": LIST, "pop": LIST, "cas": CHOICE}[what]
                op = Op(what, key, args, client, seq[who], tag=tag, xor_id=clock,
                        default=0 if what == "cas" else None)
                commits.append((clock, clock))
            clock += 1
            pending[who].append(op)
        elif step == "send" and pending[who]:
            request = list(pending[who])
            sent.append((who, request))
            if what == "deliver":
                deliver(who, request, True, prune)
            elif what == "lose-reply":
                deliver(who, request, False)
            elif what == "duplicate":
                deliver(who, request, False)
                deliver(who, request, True, prune)
            elif what == "delay":
                held.append((who, request))
        elif step == "arrive" and held:
            deliver(*held.pop(who % len(held)), what == "reply", prune)
    for who, request in held:
        deliver(who, request, True)
    for who in (0, 1):
        if pending[who]:
            deliver(who, list(pending[who]), True)
        assert pending[who] == []
    # Late copies of every request sent arrive once more, before and after the root prunes all.
    for who, request in sent:
        deliver(who, request, False)
    store.prune_below(clock)
    for who, request in sent:
        deliver(who, request, False)
    assert get(store, COUNTER, default=0) == ref.counter
    assert list(get(store, LIST, default=())) == list(ref.items)
    assert get(store, CHOICE, default=0) == ref.choice
    assert sorted(store.commits()) == sorted(commits)


def test_a_lossy_network_applies_each_op_once_in_first_arrival_order(store_kind, request):
    """Property: under any interleaving of sends, losses, duplicates, delays and retransmissions
    of two clients' tagged ops, the store ends as if each distinct op were applied once in
    first-arrival order, every reply a client accepts carries that op's result, and every
    update's commit is reported once (§4.3, §5.3, §5.4)."""
    servers, urls = store_servers(request, store_kind)

    @settings(max_examples=200 if store_kind == "memory" else 40, deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(NET_STEPS, max_size=60))
    def check(steps: list[tuple]) -> None:
        for s in servers:
            s.flush()
        backend = make_store(store_kind, urls)
        try:
            _lossy_network_run(backend, steps)
        finally:
            backend.close()

    check()


# -- values ---------------------------------------------------------------------------------------------------------

VALUES = [0, -1, 255, -33, 2**31, 2**53 + 1, 2**63 - 1, -2**63, 2**64 - 1, 1.5, -0.0, 1e300, math.inf,
          None, True, False, "text", "ünïcödé", "", b"", b"\x00\xff\r\n", (1, 2), (),
          ((1, b"a"), ("x", (None, 2.5, (True,)))), {"a": 1, "b": (1, 2)}, {(1, 2): b"x", 3: None},
          (b"\x0a\x00\x00\x01", 20000, "open"), "x" * 100_000]


@pytest.mark.parametrize("value", VALUES, ids=lambda v: repr(v)[:24])
def test_values_round_trip(store, value):
    run(store, Op("set", VALUE, (value,), instance=1))
    assert typed_equal(get(store, VALUE), value)
    assert typed_equal(store.objects("lb")["mapping"][VALUE.key], value)


def test_list_items_round_trip(store):
    items = [v for v in VALUES if not isinstance(v, dict)]
    for v in items:
        run(store, Op("push", LIST, (v,)))
    stored = get(store, LIST)
    assert len(stored) == len(items) and all(typed_equal(a, b) for a, b in zip(stored, items, strict=True))
    for v in items:
        assert typed_equal(run(store, Op("pop", LIST))[0], v)


def test_objects_by_vertex_and_scope_key(store):
    scope_keys = [None, 0, 5, "str", b"\x0a\x00\x00\x01", (b"\x0a\x00\x00\x01", 80), ((b"a", 1), (b"b", 2), 6)]
    for i, k in enumerate(scope_keys):
        run(store, Op("set", ObjectKey("a", "obj", k), (i,)))
    run(store, Op("set", ObjectKey("a", "other", None), ("x",)))
    run(store, Op("set", ObjectKey("a:b", "obj", None), ("not a",)))     # another vertex
    run(store, Op("set", ObjectKey("ab", "obj", None), ("not a",)))
    run(store, Op("push", ObjectKey("a", "lst", 1), ("y",)))
    objs = store.objects("a")
    assert objs["obj"] == {k: i for i, k in enumerate(scope_keys)}
    assert objs["other"] == {None: "x"}
    assert {k: list(v) for k, v in objs["lst"].items()} == {1: ["y"]}
    assert set(objs) == {"obj", "other", "lst"}
    assert store.objects("a:b") == {"obj": {None: "not a"}}
    assert store.objects("nothing") == {}


# -- pre-images (§5.4 NF failover) ----------------------------------------------------------------------------


def tagged(code: str, key: ObjectKey, args: tuple = (), clock: int = 0, n: int = 1, **kw) -> Op:
    """An update as a packet's processing sends it: tagged (clock, n) (§5.3)."""
    return Op(code, key, args, tag=(clock, n), **kw)


def test_objects_at_is_the_current_state_unless_preimages_are_kept(store):
    run(store, tagged("incr", COUNTER, (1,), 1), tagged("incr", COUNTER, (1,), 2))
    assert store.objects_at("nat", {1, 2}) == store.objects("nat") == {"packets": {None: 2}}


def test_preimages_give_the_state_before_the_replayed_clocks(store):
    """The case of test_recovery.py, on every backend: a per-flow counter, three packets."""
    store.keep_preimages()
    k = ObjectKey("v", "count", b"f", True)
    for clock in (1, 2, 3):
        run(store, Op("incr", k, (1,), "c", clock, 0, (clock, 1), 5, 0))
    assert store.objects("v")["count"][b"f"] == 3
    assert store.objects_at("v", {2, 3})["count"][b"f"] == 1     # before clock 2's update
    assert b"f" not in store.objects_at("v", {1, 3}).get("count", {})     # absent before clock 1
    store.prune_below(3)                # clocks 1 and 2 are done in the whole chain
    assert store.objects_at("v", {3})["count"][b"f"] == 2
    assert store.objects_at("v", {1, 2})["count"][b"f"] == 3     # pruned: nothing to go back to


def test_a_preimage_is_the_value_before_the_first_update_of_its_clock(store):
    """Per object, the first update of a clock counts, in the store's order (not the
    clocks' order); an emulated duplicate or an untagged update records nothing; in one
    request the later ops see the earlier ones' effects (the batch cache on Redis)."""
    store.keep_preimages()
    run(store, tagged("set", COUNTER, (10,), 9), tagged("incr", COUNTER, (1,), 9, 2),
        tagged("incr", COUNTER, (1,), 4), tagged("incr", COUNTER, (1,), 9, 2))    # the last: emulated
    run(store, tagged("incr", COUNTER, (5,), 9, 3))              # clock 9 again, another request
    run(store, Op("incr", COUNTER, (100,)))                      # untagged: no pre-image
    run(store, tagged("incr", COUNTER, (1,), 6))
    assert get(store, COUNTER) == 118
    at = store.objects_at
    assert at("nat", {9}) == at("nat", {4, 9}) == {"packets": {}}     # absent before 9, applied first
    assert at("nat", {4}) == {"packets": {None: 11}}
    assert at("nat", {4, 6}) == {"packets": {None: 11}}
    assert at("nat", {6}) == {"packets": {None: 117}}
    assert at("nat", {7, 8}) == {"packets": {None: 118}}         # clocks that updated nothing


def test_preimages_of_list_objects(store):
    store.keep_preimages()
    pool = ObjectKey("nat", "pool", None)
    run(store, tagged("pop", pool, (), 1, default=[1, 2, 3]))             # absent: from the default
    run(store, tagged("push", pool, ("x",), 2), tagged("pop", pool, (), 2, 2))
    run(store, tagged("pop", pool, (), 3), tagged("pop", pool, (), 4))    # now empty (still a list)
    run(store, tagged("pop", pool, (), 5), tagged("push", pool, ("y",), 6))
    assert list(get(store, pool)) == ["y"]
    at = store.objects_at
    assert at("nat", {1}).get("pool", {}) == {}
    assert at("nat", {2, 3}) == {"pool": {None: [2, 3]}}
    assert at("nat", {3}) == {"pool": {None: [3, "x"]}}
    assert at("nat", {4}) == {"pool": {None: ["x"]}}
    assert at("nat", {5, 6}) == {"pool": {None: []}}              # an empty list object
    assert at("nat", {6}) == {"pool": {None: []}}


def test_preimages_of_argmin_incr_cover_every_counter(store):
    store.keep_preimages()
    keys = [ObjectKey("lb", "active", i) for i in range(3)]
    op_key = ObjectKey("lb", "active", None)
    run(store, Op("set", keys[0], (2,)), Op("set", keys[1], (1,)))         # keys[2] absent: 0
    picks = [run(store, tagged("custom", op_key, ("argmin_incr", keys), clock))[0] for clock in (1, 2, 3)]
    assert picks == [2, 1, 2]
    assert store.objects_at("lb", {1, 2, 3}) == {"active": {0: 2, 1: 1}}
    assert store.objects_at("lb", {2}) == {"active": {0: 2, 1: 1, 2: 1}}
    assert store.objects_at("lb", {3}) == {"active": {0: 2, 1: 2, 2: 1}}
    assert store.objects("lb") == {"active": {0: 2, 1: 2, 2: 2}}


def test_preimages_of_per_flow_objects_and_deletion(store):
    store.keep_preimages()
    run(store, tagged("set", VALUE, ("a",), 1, instance=1), tagged("set", VALUE, ("b",), 2, instance=1))
    with pytest.raises(OwnershipError):
        run(store, tagged("set", VALUE, ("z",), 3, instance=2))         # refused: no pre-image
    run(store, tagged("delete", VALUE, (), 4, instance=1))
    run(store, tagged("cas", VALUE, (None, "c"), 5, instance=1))
    run(store, tagged("delete", VALUE, (), 6, instance=1))
    at = store.objects_at
    assert at("lb", {1}).get("mapping", {}) == {}
    assert at("lb", {2, 4}) == {"mapping": {VALUE.key: "a"}}
    assert at("lb", {3, 4}) == {"mapping": {VALUE.key: "b"}}               # 3 changed nothing
    assert at("lb", {5}).get("mapping", {}) == {}                         # deleted by 4
    assert at("lb", {6}) == {"mapping": {VALUE.key: "c"}}                 # deleted now, back as it was
    assert store.objects("lb") == {}


def test_preimages_with_a_subscriber_and_over_shards(store, connect):
    """Objects with callbacks (Redis: the batch's uncached path) and many per-flow
    objects (on two shards: both servers), in one request each."""
    store.keep_preimages()
    other = connect(store)
    watched = ObjectKey("nat", "watched", None)
    other.subscribe(watched, "nat/1")
    flows = [ObjectKey("nat", "mapping", (i, 80), per_flow=True) for i in range(20)]
    run(store, *[tagged("set", k, (i,), 1, instance=1) for i, k in enumerate(flows)],
        tagged("incr", watched, (1,), 1), tagged("incr", watched, (1,), 2))
    run(store, *[tagged("incr", k, (1,), 2, instance=1) for k in flows], tagged("incr", watched, (1,), 3))
    run(store, *[tagged("incr", k, (1,), 3, instance=1) for k in flows[::2]])
    assert store.objects_at("nat", {2, 3}) == {"mapping": {k.key: i for i, k in enumerate(flows)},
                                              "watched": {None: 1}}
    assert store.objects_at("nat", {3}) == {"mapping": {k.key: i + 1 for i, k in enumerate(flows)},
                                           "watched": {None: 2}}
    assert store.objects_at("nat", {1}) == {"mapping": {}, "watched": {}}      # all absent before 1


def test_pruning_forgets_preimages_with_the_clock_log(store):
    store.keep_preimages()
    keys = [ObjectKey("lb", "active", i) for i in range(2)]
    # (clocks in the order updates arrive: the memory engine prunes its log front to back)
    run(store, tagged("incr", COUNTER, (1,), 3),
        tagged("custom", ObjectKey("lb", "active", None), ("argmin_incr", keys), 4),
        tagged("incr", COUNTER, (1,), 5))
    run(store, tagged("incr", COUNTER, (1,), 7))
    assert store.prune_below(5) == 2                                      # (3,1) and (4,1)
    assert store.objects_at("nat", {3, 5}) == {"packets": {None: 1}}      # 3 forgotten, 5 kept
    assert store.objects_at("nat", {7}) == {"packets": {None: 2}}
    assert store.prune_below(100) == 2
    assert store.objects_at("nat", {5, 7}) == {"packets": {None: 3}}
    if store.name == "redis":                                             # nothing left behind
        for i in range(store.n):
            p = store.servers[i].prefix
            assert store._call(i, [("HLEN", p + b"p"), ("ZCARD", p + b"lz")]) == [0, 0]


# -- Redis only: sharding, limits, failures ----------------------------------------------------------------------------


def _redis_only(store):
    if store.name != "redis":
        pytest.skip("Redis backend behaviour")


def test_sharding(store):
    _redis_only(store)
    n = store.n
    family = [ObjectKey("portscan", "likelihood", bytes([10, 0, 0, i])) for i in range(40)]
    assert len({store.server_of(k) for k in family}) == 1         # a shared family is on one server
    flows = [ObjectKey("nat", "mapping", (i, 80), per_flow=True) for i in range(40)]
    assert len({store.server_of(k) for k in flows}) == n          # per-flow objects spread
    if n > 1:
        a = next(k for k in flows if store.server_of(k) == 0)
        b = next(k for k in flows if store.server_of(k) == 1)
        with pytest.raises(StoreError, match="different servers"):
            run(store, Op("custom", a, ("argmin_incr", [a, b]), instance=1))
        # one request over both servers: one round trip, results in op order
        before = store.round_trips
        assert run(store, Op("incr", a, (1,), instance=1), Op("incr", b, (2,), instance=1),
                   Op("get", a), Op("get", b)) == [1, 2, 1, 2]
        assert store.round_trips == before + 1


def test_incr_beyond_2_53_is_refused_not_rounded(store):
    _redis_only(store)
    run(store, Op("set", COUNTER, (2**53 - 1,)))
    assert run(store, Op("incr", COUNTER, (-1,))) == [2**53 - 2]
    with pytest.raises(StoreError, match="2\\^53"):
        run(store, Op("incr", COUNTER, (10,)))
    run(store, Op("set", COUNTER, (2**60,)))
    with pytest.raises(StoreError, match="2\\^53"):
        run(store, Op("incr", COUNTER, (1,)))
    assert get(store, COUNTER) == 2**60


def test_values_msgpack_cannot_carry_are_refused(store):
    _redis_only(store)
    with pytest.raises(StoreError, match="cannot hold"):
        run(store, Op("set", COUNTER, ({1, 2},)))
    with pytest.raises(StoreError, match="cannot hold"):
        run(store, Op("set", COUNTER, (2**70,)))


def test_an_op_refused_for_what_it_is_leaves_the_rest_of_its_request_applied(store):
    """Refused (an increment of a non-number; on Redis also a value msgpack cannot carry,
    refused before sending) names every such op after the whole request ran, with the
    others' results: the memory store stopped at the first and lost the ops behind it
    (a non-blocking batch's updates of other packets: never applied, never resent)."""
    word = ObjectKey("nat", "word", None)
    run(store, Op("set", word, ("many",)))
    make = seqs("nat/0")
    ops = [make("incr", COUNTER, (1,), tag=(5, 1), xor_id=0xA1), make("incr", word, (1,), tag=(5, 2), xor_id=0xA2),
           make("incr", COUNTER, (1,), tag=(6, 1), xor_id=0xB1), make("get", COUNTER)]
    if store.name == "redis":
        ops.insert(3, make("set", VALUE, ({1, 2},), tag=(6, 2), xor_id=0xB2, instance=0))
    with pytest.raises(Refused) as err:
        run(store, *ops)
    refused = [op for op, _ in err.value.refused]
    assert refused == [ops[1]] + ([ops[3]] if store.name == "redis" else [])
    assert "non-number" in str(err.value.refused[0][1]) and str(err.value) == str(err.value.refused[0][1])
    assert err.value.results[:3] == [1, None, 2] and err.value.results[-1] == 2
    assert get(store, COUNTER) == 2 and get(store, word) == "many" and get(store, VALUE) is None
    assert sorted(store.commits()) == [(5, 0xA1), (6, 0xB1)]        # a refused update never commits
    # Resent (its reply lost), each is refused again and the rest answered as before
    # (nothing applied twice); the client notes a refusal once, whichever reply it is in.
    with pytest.raises(Refused) as again:
        run(store, *ops)
    assert [op for op, _ in again.value.refused] == refused and again.value.results == err.value.results
    assert get(store, COUNTER) == 2 and store.commits() == []
    store.prune_below(7)            # their clocks done: the refusals go with the clock log
    sendable = [op for op in ops if op.code != "set"]
    assert run(store, *sendable) == [None] * (len(sendable) - 1) + [2]


def test_a_non_blocking_request_acknowledges_its_refusals(store):
    """submit: the refused ops come with the acknowledgement (``on_ack(seq, refused)``),
    the others applied; a request whose every op is refused before sending is
    acknowledged all the same (it was never acknowledged: the client resent it for good)."""
    _redis_only(store)
    acks: list = []
    make = seqs("nat/0")
    word = ObjectKey("nat", "word", None)
    run(store, Op("set", word, ("many",)))
    ops = [make("incr", COUNTER, (1,), tag=(5, 1)), make("incr", word, (1,), tag=(5, 2)),
           make("set", VALUE, (frozenset(),), tag=(5, 3), instance=0)]
    store.submit(ops, lambda seq, refused=(): acks.append((seq, [op for op, _ in refused])))
    store.wait()
    assert acks == [(3, [ops[2], ops[1]])] or acks == [(3, [ops[1], ops[2]])]
    assert get(store, COUNTER) == 1
    alone = [make("set", VALUE, (frozenset(),), tag=(6, 1), instance=0)]
    store.submit(alone, lambda seq, refused=(): acks.append((seq, [op for op, _ in refused])))
    store.wait()
    assert acks[-1] == (4, alone)


def test_a_lost_function_library_is_reloaded(store, store_kind, request):
    _redis_only(store)
    import redis

    run(store, Op("incr", COUNTER, (1,), "nat/0", 1))
    for s in store_servers(request, store_kind)[0]:
        r = redis.Redis(host="127.0.0.1", port=s.port)
        r.function_flush()                      # as after a restart without persistence
        r.close()
    assert run(store, Op("incr", COUNTER, (1,), "nat/0", 2), Op("get", COUNTER, (), "nat/0", 3)) == [2, 2]


def test_unreachable_store_at_construction():
    pytest.importorskip("redis")
    from chc.backends.redis import RedisStore

    with pytest.raises(StoreUnavailable, match=r"redis://127\.0\.0\.1:1: connection refused"):
        RedisStore(["redis://127.0.0.1:1"], attempts=2, backoff=0.01)


def test_one_server_named_twice_is_refused(redis_urls, capsys):
    """Its two shards would be one keyspace: the chain's state came out wrong, exit 0 (a
    new-user trial).  Two databases of one server are two keyspaces: accepted."""
    from chc.backends.redis import RedisStore
    from chc.cli import main

    url = redis_urls[0]
    alias = url.replace("127.0.0.1", "localhost")
    for twice in ([url, url], [url, alias]):
        with pytest.raises(StoreError, match="is the server of .* again .*name each server once"):
            RedisStore(twice)
    RedisStore([url + "/1", alias + "/2"]).close()
    with pytest.raises(StoreError, match="the path must be a database number"):
        RedisStore([url + "/abc"])
    lan = str(Path(__file__).resolve().parent.parent / "traces/pathspider/lan-2012.pcap.gz")
    spec = str(Path(__file__).resolve().parent.parent / "examples/paper_chain.yaml")
    assert main(["run", spec, lan, "--store", f"{url},{alias}", "-c", "10", "-q"]) == 2
    assert "name each server once" in capsys.readouterr().err


def test_open_store_url(redis_urls):
    from chc.backends import open_store

    s = open_store(",".join(redis_urls))
    try:
        assert s.name == "redis" and s.describe() == ",".join(redis_urls)
        assert s.execute([Op("incr", COUNTER, (1,))]) == [1]
    finally:
        s.close()
    s = open_store(redis_urls[0] + "/3")                         # another DB of the same server
    try:
        assert s.execute([Op("get", COUNTER)]) == [None]
    finally:
        s.close()


def test_unreachable_mid_run(dedicated_redis):
    from chc.backends.redis import RedisStore

    s = RedisStore([dedicated_redis.url], attempts=3, backoff=0.02)
    try:
        assert s.execute([Op("incr", COUNTER, (1,), "nat/0", 1)]) == [1]
        dedicated_redis.kill()
        # mid-run, past the retry budget: fatal (the run cannot go on without its state)
        with pytest.raises(StoreLost, match=f"{dedicated_redis.url}: connection refused: the store is unreachable"):
            s.execute([Op("incr", COUNTER, (1,), "nat/0", 2)])
        with pytest.raises(StoreLost):
            s.execute([Op("get", COUNTER)])                 # at once: no second wait
    finally:
        s.close()


def test_restart_keeps_acknowledged_updates_and_dedup(dedicated_redis):
    from chc.backends.redis import RedisStore

    s = RedisStore([dedicated_redis.url], attempts=40, backoff=0.05)    # ~35 s: a loaded machine restarts slowly
    try:
        ops = [Op("incr", COUNTER, (1,), "nat/0", seq, tag=(seq, 1)) for seq in range(1, 11)]
        for op in ops:
            s.execute([op])                                     # each one acknowledged
        dedicated_redis.kill()                                  # kill -9: nothing flushed at exit
        restart = threading.Timer(0.3, dedicated_redis.start)   # back while execute retries
        restart.start()
        try:
            # retransmitted: not applied again, and the clock log kept their results (§5.3)
            assert s.execute(ops[4:]) == [5, 6, 7, 8, 9, 10]
        finally:
            restart.join()
        assert s.execute([Op("get", COUNTER)]) == [10]
        assert s.execute([Op("incr", COUNTER, (1,), "nat/0", 11)]) == [11]
        dedicated_redis.kill()
        dedicated_redis.start()
        assert s.execute([Op("get", COUNTER)]) == [11]
    finally:
        s.close()


# -- end to end: the paper's chain on Redis gives model T's output -----------------------------------------------------

E2E_PACKETS = 6000
SCAN = ROOT / "traces/scans/nmap-syn-scan.pcap"


@pytest.fixture(scope="module")
def lan_head(tmp_path_factory):
    """``lan_head(n)``: a capture of the first n packets of the LAN trace (the whole one
    takes minutes in model EO)."""
    from chc.capture import CaptureWriter, open_capture

    made: dict[int, str] = {}

    def make(n: int) -> str:
        if n not in made:
            path = tmp_path_factory.mktemp("e2e") / f"lan-head-{n}.pcap"
            with open_capture(ROOT / "traces/pathspider/lan-2012.pcap.gz") as reader:
                writer = CaptureWriter(path, nanosecond=reader.nanosecond)
                writer.write_many(islice(iter(reader), n))
                writer.close()
            made[n] = str(path)
        return made[n]
    return make


def _chc_run(tmp_path, capture: str, model: str, store: str | None, name: str,
             *extra: str) -> tuple[bytes, dict]:
    from chc.cli import main

    out, summary = tmp_path / f"{name}.pcap", tmp_path / f"{name}.json"
    args = ["run", str(ROOT / "examples/paper_chain.yaml"), capture, "--model", model, "--out", str(out),
            "--summary-json", str(summary), "--no-progress", "-q", *extra]
    if store is not None:
        args += ["--store", store]
    assert main(args) == 0
    return out.read_bytes(), json.loads(summary.read_text())


def _same_run(got: tuple[bytes, dict], want: tuple[bytes, dict], what: str) -> None:
    out, summary = got
    assert summary["store"]["backend"].startswith(("redis://", "redis-cluster://")), what
    assert summary["store"]["round_trips"] > 0, what
    assert summary["nf_errors"] == 0, (what, summary.get("errors"))
    assert out == want[0], f"{what}: output packets differ"
    assert summary["state_digest"] == want[1]["state_digest"], f"{what}: final state differs"
    assert summary["packets_out"] == want[1]["packets_out"], what
    assert summary["alerts"] == want[1]["alerts"], what


def test_paper_chain_on_redis_matches_model_t(tmp_path, redis_servers, lan_head):
    small_lan = lan_head(E2E_PACKETS)
    want = _chc_run(tmp_path, small_lan, "T", None, "t")
    assert want[1]["packets_in"] == E2E_PACKETS
    for shards in (1, 2):
        url = ",".join(s.url for s in redis_servers[:shards])
        for model in ("EO", "EO+C+NA"):
            for s in redis_servers:
                s.flush()                       # a run needs an empty store
            got = _chc_run(tmp_path, small_lan, model, url, f"{model}-{shards}")
            _same_run(got, want, f"{model} on {shards} Redis shard(s)")


def test_scan_alerts_on_redis_match_model_t(tmp_path, redis_servers):
    """The portscan detector's offloaded TRW steps (a Lua value op) raise T's alerts."""
    if not SCAN.exists():
        pytest.skip(f"{SCAN} is not there")
    want = _chc_run(tmp_path, str(SCAN), "T", None, "t")
    assert want[1]["alerts"], "the scan trace should raise an alert"
    for s in redis_servers:
        s.flush()
    got = _chc_run(tmp_path, str(SCAN), "EO", ",".join(s.url for s in redis_servers), "eo")
    _same_run(got, want, "EO on 2 Redis shards")


@pytest.mark.parametrize("kind", ["redis-2shards", "redis-cluster"])
def test_parallel_chain_on_redis_matches_the_memory_store(tmp_path, request, kind, lan_head):
    """Two instances per vertex share state through the store (callbacks, ownership): the
    same output, alerts and state digest on 2 Redis shards and on a 3-node Redis Cluster
    (``chc run --store redis-cluster://HOST:PORT``) as on the in-process store."""
    small_lan = lan_head(E2E_PACKETS // 2)
    servers, urls = store_servers(request, kind)
    for model in ("EO+C", "EO+C+NA"):
        want = _chc_run(tmp_path, small_lan, model, "memory", f"mem-{model}", "--parallelism", "2")
        for s in servers:
            s.flush()
        got = _chc_run(tmp_path, small_lan, model, ",".join(urls), f"redis-{model}", "--parallelism", "2")
        _same_run(got, want, f"{model} with 2 instances per vertex on {kind}")


def test_deque_is_what_callbacks_seed_caches_with(store):
    """subscribe and callbacks hand list objects over as deques (a cache pops at the head)."""
    run(store, Op("push", LIST, (1,)))
    v = store.subscribe(LIST, "nat/1")
    assert isinstance(v, deque) and list(v) == [1]


# -- Redis only: non-blocking requests (EO+C+NA over a real socket) ---------------------------------------------------


def test_submit_does_not_wait_and_acks_on_reply(store):
    _redis_only(store)
    acks: list[int] = []
    ops = [Op("incr", COUNTER, (1,), "nat/0", seq, tag=(seq, 1)) for seq in range(1, 4)]
    store.submit(ops, acks.append)
    assert any(s.pending for s in store.servers)        # sent, reply not read yet
    assert acks == []
    store.wait()
    assert acks == [3] and not any(s.pending for s in store.servers)
    assert get(store, COUNTER) == 3


def test_submit_waits_once_its_pipeline_window_is_full(store):
    """Flow control: at most ``window`` non-blocking requests in flight; the next one
    reads the replies first (a client faster than the server queued without bound)."""
    _redis_only(store)
    store.window = 3
    acks: list[int] = []
    for seq in range(1, 11):
        store.submit([Op("incr", COUNTER, (1,), "nat/0", seq, tag=(seq, 1))], acks.append)
        assert len(store._inflight_reqs) <= 3
    assert acks and acks == sorted(acks)                # replies read on the way, in order
    store.wait()
    assert acks[-1] == 10 and get(store, COUNTER) == 10


def test_submit_sends_an_in_flight_op_once(store, store_kind, request):
    _redis_only(store)
    import redis

    acks: list[int] = []
    first = [Op("incr", COUNTER, (1,), "nat/0", 1, tag=(1, 1))]
    second = [Op("incr", COUNTER, (2,), "nat/0", 2, tag=(2, 1))]
    side = [redis.Redis(host="127.0.0.1", port=s.port) for s in store_servers(request, store_kind)[0]]
    for r in side:
        r.client_pause(60_000, all=False)           # writes wait until unpaused: surely in flight
    try:
        store.submit(first, acks.append)
        store.submit(first + second, acks.append)   # go-back-N resends the un-ACKed first op
        assert store.sent_ops == 2                  # ... which is still in flight: not sent again
    finally:
        for r in side:
            r.client_unpause()
            r.close()
    store.wait()
    assert acks == [1, 2] and get(store, COUNTER) == 3


def test_a_blocking_request_leaves_out_what_an_answered_request_applied(store):
    """go-back-N puts every un-ACKed op in front of a blocking request; one whose own
    non-blocking request was answered before it went out is not sent again (it was half
    of what the NAT sent to Redis, each suppressed there by its sequence number)."""
    _redis_only(store)
    acks: list[int] = []
    ops = [Op("incr", COUNTER, (1,), "nat/0", seq, tag=(seq, 1)) for seq in range(1, 4)]
    store.submit(ops, acks.append)
    sent = store.sent_ops
    assert store.execute([*ops, Op("get", COUNTER)]) == [None, None, None, 3]
    assert store.sent_ops == sent + 1 and acks == [3]


def test_a_blocking_request_resends_a_refused_update(store):
    """An in-flight update that its own reply refused (ownership) is not acknowledged:
    the blocking request that carries it again sends it (and the store answers it as the
    retransmission it is: not applied)."""
    _redis_only(store)
    run(store, Op("set", VALUE, (1,), instance=1))
    acks: list[int] = []
    theirs = Op("set", VALUE, (2,), "nat/2", 1, instance=2)
    store.submit([theirs], acks.append)
    sent = store.sent_ops
    store.execute([theirs, Op("get", COUNTER, default=0)])
    assert store.sent_ops == sent + 2 and acks == []
    assert get(store, VALUE) == 1


def test_an_ack_never_covers_an_earlier_request_a_server_has_not_answered(store, store_kind, request):
    """Two shards: request A goes to both, B (after it) to the second only.  B answered
    first acknowledged every op up to its own, A's on the first server too; when that
    server's connection then broke, A's op there was never sent again: lost (found by
    a review).  Acknowledgements now come in request order."""
    if store_kind != "redis-2shards":
        pytest.skip("two plain servers: one answers, the other holds its request")
    import redis

    k0, k1 = (next(ObjectKey("nat", f"count{i}", None) for i in range(100)
                   if store.server_of(ObjectKey("nat", f"count{i}", None)) == srv) for srv in (0, 1))
    servers, _ = store_servers(request, store_kind)
    held = redis.Redis(host="127.0.0.1", port=servers[0].port)
    acks: list[int] = []
    a = [Op("incr", k0, (1,), "nat/0", 1, tag=(1, 1)), Op("incr", k1, (1,), "nat/0", 2, tag=(1, 2))]
    b = [Op("incr", k1, (1,), "nat/0", 3, tag=(2, 1))]
    held.client_pause(60_000, all=False)        # the first server holds A's part
    try:
        store.submit(a, acks.append)
        store.submit(a + b, acks.append)        # go-back-N: A's ops in front, still in flight
        store._drain(block=True, servers=[1])   # the second server answered A's part and B
        assert acks == []                       # B answered, A not: nothing acknowledged yet
        held.client_kill_filter(_type="normal", skipme=True)     # A's connection breaks
    finally:
        held.client_unpause()
        held.close()
    store.wait()
    assert acks == []                           # A failed: neither is acknowledged
    store.submit(a + b, acks.append)            # the client resends every un-ACKed op
    store.wait()
    assert acks == [3] and get(store, k0) == 1 and get(store, k1) == 2


def test_submit_over_a_broken_connection_is_resent_exactly_once(dedicated_redis):
    import redis

    from chc.backends.redis import RedisStore

    s = RedisStore([dedicated_redis.url], attempts=5, backoff=0.02)
    try:
        acks: list[int] = []
        ops = [Op("incr", COUNTER, (1,), "nat/0", seq, tag=(seq, 1)) for seq in range(1, 6)]
        r = redis.Redis(host="127.0.0.1", port=dedicated_redis.port)
        r.client_pause(60_000, all=False)       # the request waits in the server ...
        s.submit(ops[:3], acks.append)
        r.client_kill_filter(_type="normal", skipme=True)  # ... when the store's connection drops
        r.client_unpause()
        r.close()
        s.wait()                                # its replies never come: not acknowledged
        assert acks == []
        s.submit(ops, acks.append)              # the client resends everything un-ACKed
        s.wait()
        assert acks == [5]
        assert s.execute([Op("get", COUNTER)]) == [5]     # applied exactly once each
    finally:
        s.close()


def test_the_pure_python_reply_parser(redis_urls, monkeypatch):
    """hiredis parses replies when installed (the test extra installs it); the Python
    parser is the fallback: requests, non-blocking requests and notifications through it."""
    import chc.backends.redis as backend

    monkeypatch.setattr(backend, "hiredis", None)
    s = backend.RedisStore(redis_urls[:1])
    try:
        assert s.servers[0]._connect().parser is None
        s.subscribe(COUNTER, "lb/1")
        acks: list[int] = []
        s.submit([Op("incr", COUNTER, (2,), "nat/0", 1, tag=(1, 1)), Op("push", LIST, ("a",), "nat/0", 2)],
                 acks.append)
        s.wait()
        assert acks == [2]
        assert s.execute([Op("get", COUNTER), Op("get", LIST), Op("get", VALUE, default="d")]) == [2, ["a"], "d"]
        assert s.notifications("lb/1") == [("update", COUNTER, 2)]
        with pytest.raises(OwnershipError):
            s.execute([Op("set", VALUE, (1,), instance=1), Op("set", VALUE, (2,), instance=2)])
    finally:
        s.close()
