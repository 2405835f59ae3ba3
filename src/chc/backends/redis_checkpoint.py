"""Store instance failover on Redis (§5.4, Figure 7): a namespace to a checkpoint and back.

Theory of operation
-------------------
Store failover (:mod:`chc.runtime.storefailover`) works on the store engine's
format: a :class:`~chc.core.recovery.Checkpoint` in, :func:`~chc.core.recovery.recover`
rolls it forward with the instances' write-ahead logs, a
:class:`~chc.core.recovery.RecoverableEngine` out.  The memory store *is* such an
engine.  A Redis server holds the same state in its own encoding (see
:mod:`chc.backends.redis`), so this module translates, and nothing else:

- :func:`checkpoint` reads one server's namespace (objects, per-flow owners,
  subscriptions, TS, sequence marks, the clock log, pre-images) into a
  :class:`Checkpoint`.  TS exists there once :meth:`RedisStore.keep_ts` is on:
  ``chc_batch`` then keeps each client's stamp and returns TS with every reply
  that carries a value of shared state, as the engine does.
- :func:`wipe` is the crash: the server loses the namespace.
- :func:`restore` writes a recovered engine into the (empty) namespace, with the
  run's epoch (the lease :func:`wipe` kept), so the run's stores go on with it.

A round trip (engine -> Redis -> checkpoint) gives the engine's own checkpoint
back (``tests/test_store_failover.py``).  Limits: one server (with several, each
would be a store instance with its own TS and checkpoints; refused in the sim);
instances queued to take a per-flow object are not kept (the runtime holds a
store crash while a handover runs).  Costs: a checkpoint reads the whole
namespace (a SCAN and one ``chc_peek_many`` per thousand objects), so on Redis the
checkpoint interval is worth more than in memory.
"""

from __future__ import annotations

import struct
import weakref
from collections import deque
from collections.abc import Collection, Iterator
from typing import TYPE_CHECKING, Any

import msgpack

from ..core.recovery import Checkpoint, CheckpointImage, RecoverableEngine, Stamp, _AbsentToken, _checkpoint, _longer
from ..core.store import _ABSENT, CLOCK_BITS, ObjectKey, _Recorded
from .redis import _command, _glob_escape, _pack, _unpack, _untag

if TYPE_CHECKING:
    from .redis import RedisStore

# Object keys parsed by earlier checkpoints of a store (a checkpoint every 100 ms reads the same
# keys again: parsing them was a third of its time).
_PARSED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_PARSED_MAX = 1_000_000
_EMPTY_LIST = b"\xc1"           # a list object with no items (EMPTY in redis_functions.lua)
_SCAN = 1000


def _keys(store: RedisStore) -> Iterator[list[bytes]]:
    prefix = store.servers[0].prefix
    cursor: Any = 0
    while True:
        cursor, keys = store._call(0, [("SCAN", cursor, "MATCH", _glob_escape(prefix) + b"*", "COUNT", _SCAN)])[0]
        if keys:
            yield keys
        if int(cursor) == 0:
            return


def _element(raw: bytes) -> Any:
    """A reply element (a clock-log record) as the client sees it."""
    def ext(code: int, data: bytes) -> Any:
        return list(_unpack(data)) if code == 1 else None
    return msgpack.unpackb(raw, raw=False, use_list=False, strict_map_key=False, ext_hook=ext)


def _wire_element(result: Any) -> bytes:
    if result.__class__ is _Recorded:
        result = result.result
    if isinstance(result, (list, deque)):
        return msgpack.packb(msgpack.ExtType(1, _pack(list(result))))
    return _pack(result)


def _tagged(raw: bytes, lists: type = deque) -> Any:
    """A tagged value ("V"/"L"/"A", as chc_peek and pre-images hold it) in the engine's
    form: a list object as a deque, or in a pre-image as a list (``_private``'s copy)."""
    return _ABSENT if raw[:1] == b"A" else _untag(raw, lists)


def _client(wire: bytes) -> str:
    return wire.decode().partition("|")[2]


def per_flow_objects(chain: Any) -> frozenset[tuple[str, str]]:
    """The (vertex, object) names of ``chain``'s per-flow objects (its NFs' declarations)."""
    return frozenset((name, obj) for name, v in chain.vertices.items()
                     for obj, decl in v.nf.state_objects().items() if decl.scope.per_flow)


def checkpoint(store: RedisStore, number: int, per_flow: Collection[tuple[str, str]],
               preimage_limit: int = 0) -> Checkpoint:
    """The namespace of ``store``'s one server as checkpoint ``number`` (§5.4).
    ``per_flow``: the (vertex, object) names of per-flow objects (:func:`per_flow_objects`;
    a Redis key does not say it).  ``preimage_limit``: as
    :meth:`RecoverableEngine.checkpoint`'s (pre-images of longer containers are left out,
    named in ``unknown_before``, and not even read)."""
    return _checkpoint(*_parts(store, number, per_flow, preimage_limit))


def image(store: RedisStore, number: int, per_flow: Collection[tuple[str, str]],
          preimage_limit: int = 0) -> CheckpointImage:
    """:func:`checkpoint` as :meth:`RecoverableEngine.image` gives it (pickled at once)."""
    return CheckpointImage(_parts(store, number, per_flow, preimage_limit))


def _parts(store: RedisStore, number: int, per_flow: Collection[tuple[str, str]], preimage_limit: int) -> tuple:
    p = store.servers[0].prefix

    parsed = _PARSED.setdefault(store, {})
    if len(parsed) > _PARSED_MAX:
        parsed.clear()

    def key_of(k: bytes) -> ObjectKey:
        key = parsed.get(k)
        if key is None:
            key = store._key_of(k, 0)
            if (key.vertex, key.obj) in per_flow:
                key = key._replace(per_flow=True)
            parsed[k] = key
        return key

    objects: list[bytes] = []
    owners: list[bytes] = []
    subs: list[bytes] = []
    for keys in _keys(store):
        for k in keys:
            rest = k[len(p):]
            if rest.startswith(b"k:"):
                objects.append(k)
            elif rest.startswith(b"o:"):
                owners.append(k)
            elif rest.startswith(b"s:"):
                subs.append(k)
    data: dict[ObjectKey, Any] = {}
    long: set[bytes] = set()
    for i in range(0, len(objects), _SCAN):
        chunk = objects[i:i + _SCAN]
        for k, v in zip(chunk, store._call(0, [("FCALL_RO", "chc_peek_many", len(chunk), *chunk)])[0], strict=True):
            if v is not None:
                value = data[key_of(k)] = _tagged(v)
                if preimage_limit and _longer(value, preimage_limit):
                    long.add(k)
    owner = {}
    if owners:
        for k, v in zip(owners, store._call(0, [("GET", k) for k in owners]), strict=True):
            owner[key_of(p + b"k:" + k[len(p) + 2:])] = int(v)
    subscribers = {}
    if subs:
        for k, members in zip(subs, store._call(0, [("SMEMBERS", k) for k in subs]), strict=True):
            subscribers[key_of(p + b"k:" + k[len(p) + 2:])] = frozenset(map(_client, members))
    ts_raw, marks, log_raw, fields, switch = store._call(0, [("HGETALL", p + b"t"), ("HGETALL", p + b"q"),
                                                            ("HGETALL", p + b"l"), ("HKEYS", p + b"p"),
                                                            ("EXISTS", p + b"pre")])
    ts = {}
    for j in range(0, len(ts_raw), 2):
        clock, seq = ts_raw[j + 1].split()
        ts[_client(ts_raw[j])] = Stamp(int(clock), int(seq))
    applied_seq = {_client(marks[j]): int(marks[j + 1]) for j in range(0, len(marks), 2)}
    clock_log: dict[ObjectKey, dict[tuple[int, int], Any]] = {}
    order = []
    for j in range(0, len(log_raw), 2):
        tag_raw, _, k = log_raw[j].partition(b" ")
        clock, _, n = tag_raw.partition(b":")
        key, tag = key_of(k), (int(clock), int(n))
        clock_log.setdefault(key, {})[tag] = _element(log_raw[j + 1])
        order.append((tag[0], key, tag))
    order.sort(key=lambda e: e[0])
    # Pre-images: those of long containers are named, not read (the NAT's port pool, once per
    # clock that took a port).
    unknown: dict[ObjectKey, set[int]] = {}
    wanted = []
    for field in fields:
        clock, _, k = field.partition(b" ")
        if k in long:
            unknown.setdefault(key_of(k), set()).add(int(clock))
        else:
            wanted.append(field)
    images = []
    for i in range(0, len(wanted), _SCAN):
        chunk = wanted[i:i + _SCAN]
        raws = store._call(0, [("HMGET", p + b"p", *chunk)])[0]
        images += [(raw[:8], field, raw[8:]) for field, raw in zip(chunk, raws, strict=True) if raw is not None]
    images.sort()
    before: dict[ObjectKey, dict[int, Any]] = {}
    for _, field, raw in images:
        clock, _, k = field.partition(b" ")
        before.setdefault(key_of(k), {})[int(clock)] = _tagged(raw, list)
    users = set(applied_seq) | set(ts)
    if any(k.vertex == "root" for k in data):
        users.add("root")
    return (number, data, ts, applied_seq, clock_log, tuple(order), subscribers, frozenset(users), owner,
            {k: {c: _AbsentToken() if v is _ABSENT else v for c, v in b.items()} for k, b in before.items()},
            bool(switch), {k: frozenset(v) for k, v in unknown.items()})


def wipe(store: RedisStore) -> int:
    """The store server loses the namespace (a crash, §5.4): every key of it goes but the
    run's lease (the operator's hold on the namespace, not the store's state); how many."""
    lease = store.servers[0].prefix + b"lease"
    n = 0
    for keys in _keys(store):
        gone = [k for k in keys if k != lease]
        if gone:
            store._call(0, [("UNLINK", *gone)])
            n += len(gone)
    store._uploaded[0].clear()          # big defaults are uploaded again when next used
    return n


def _chunk(fields: list[bytes]) -> bytes:
    """A pruning index entry (chunk_of in redis_functions.lua)."""
    return struct.pack(f">I{len(fields)}I", len(fields), *map(len, fields)) + b"".join(fields)


def restore(store: RedisStore, engine: RecoverableEngine) -> int:
    """Write ``engine`` (a failover store's state) into ``store``'s empty namespace (see
    :func:`wipe`), with the run's epoch and the TS and pre-image switches; returns the
    number of objects written."""
    p = store.servers[0].prefix
    wire = store._wire_id
    cmds: list[tuple] = [("SET", p + b"epoch", store.epoch), ("SET", p + b"ts", b"1")]
    if engine.preimages:
        cmds.append(("SET", p + b"pre", b"1"))
    for key, value in engine.data.items():
        rkey = store._locate(key)[0]
        if isinstance(value, deque):
            cmds.append(("RPUSH", rkey, *map(_pack, value)) if value else ("SET", rkey, _EMPTY_LIST))
        else:
            cmds.append(("SET", rkey, _pack(value)))
    rest = len(p) + 2
    for key, inst in engine.owner.items():
        rkey = store._locate(key)[0]
        cmds.append(("SET", p + b"o:" + rkey[rest:], inst))
    for key, clients in engine.subscribers.items():
        if clients:
            rkey = store._locate(key)[0]
            cmds.append(("SADD", p + b"s:" + rkey[rest:], *(wire(c, 0) for c in clients)))
            cmds.append(("SADD", p + b"S", rkey))
    if engine.ts:
        cmds.append(("HSET", p + b"t", *[x for c, s in engine.ts.items() for x in (wire(c, 0), b"%d %d" % s)]))
    if engine.applied_seq:
        cmds.append(("HSET", p + b"q", *[x for c, s in engine.applied_seq.items() for x in (wire(c, 0), s)]))
    # The pruning index: a chunk per root (each root prunes its own clocks, chc_prune).
    batch = 0
    log: dict[int, list[bytes]] = {}
    for key, entries in engine.clock_log.items():
        rkey = store._locate(key)[0]
        for (clock, n), result in entries.items():
            log.setdefault(clock >> CLOCK_BITS, []).append(b"%d:%d %s" % (clock, n, rkey))
            log[clock >> CLOCK_BITS].append(_wire_element(result))
    for pairs in log.values():
        batch += 1
        fields = pairs[::2]
        low = min(int(f.partition(b":")[0]) for f in fields)
        cmds += [("HSET", p + b"l", *pairs), ("SET", p + b"lc:%d" % batch, _chunk(fields)),
                 ("ZADD", p + b"lz", low, p + b"lc:%d" % batch)]
    images: dict[int, tuple[list, list]] = {}
    order = 0
    for key, clocks in engine.before.items():
        rkey = store._locate(key)[0]
        for clock, value in clocks.items():
            field = b"%d %s" % (clock, rkey)
            if value is _ABSENT:
                tagged = b"A"
            elif isinstance(value, (list, deque)):
                tagged = b"L" + _pack(list(value))
            else:
                tagged = b"V" + _pack(value)
            pairs, members = images.setdefault(clock >> CLOCK_BITS, ([], []))
            # (ordered by (batch id, index) as chc_batch orders them: the engine's order, one
            # id for all; the pruning index has a chunk per root)
            order += 1
            pairs += [field, struct.pack(">II", batch + 1, order) + tagged]
            members += [b"%d" % clock, field]
    for pairs, members in images.values():
        batch += 1
        low = min(int(c) for c in members[::2])
        cmds += [("HSET", p + b"p", *pairs), ("RPUSH", p + b"pc:%d" % batch, *members),
                 ("ZADD", p + b"lz", low, p + b"pc:%d" % batch)]
    cmds.append(("SET", p + b"lseq", batch))
    for i in range(0, len(cmds), _SCAN):
        store._checked(store._round_trip({0: [_command(*c) for c in cmds[i:i + _SCAN]]}))
    return len(engine.data)
