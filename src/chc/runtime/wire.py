"""What the ``proc`` runtime's processes say to each other, and how it is framed.

Theory of operation
-------------------
Every message is one ZeroMQ frame: a version byte (:data:`VERSION`), a kind
byte (:class:`Kind`) and a msgpack body.  A receiver that gets a frame with
another version, an unknown kind, a body that does not decode, or a body of
the wrong shape for its kind raises :class:`WireError`; the runtime then drops
the sender (see :class:`Mailbox`) and logs it, and goes on with the others.

Values travel exactly: msgpack carries ints, floats, str, bytes, lists, dicts
and None natively, and the few Python types the store and NF state hold besides
(tuples, the store's :class:`~chc.core.store.ObjectKey`, :class:`Op` and
:class:`Increments`, deques, sets, a reply stamped with TS for store failover) are msgpack extension types, rebuilt only
as those types (never by a generic loader such as pickle, which would run
whatever a hostile peer sends).  A value of any other type is refused on the
sending side (:class:`TypeError`); a store op holding one is refused for what it
is before its request is sent (:func:`sendable`: an :class:`UnsendableValue`, as
the Redis store refuses a value it cannot hold), and the request's other ops go.

Packets travel as ``[frame bytes, ts, index, clock, xor vector, marks]`` and
are parsed again by the receiver: the parse is a function of the bytes, so the
receiver sees the fields the sender saw (and a rewritten header its new
fields).

Mailboxes.  Each process receives on ZeroMQ ROUTER sockets bound on ``ipc://``
endpoints in a private directory (mode 0700); peers connect DEALER sockets
whose identity is their name.  A ROUTER says who sent each frame, so a peer
that sends garbage, or that is not one the receiver expects, is banned by its
identity: its later frames are discarded unread.  (ZeroMQ cannot close one
peer's connection from the bound side; a banned peer is disconnected in
effect.)  The handshake itself is ZeroMQ's: bytes that are not ZMTP never reach
the runtime.
"""

from __future__ import annotations

import enum
import logging
from collections import deque
from collections.abc import Iterator
from typing import Any

import msgpack
import zmq

from ..core.recovery import Stamp, Stamped
from ..core.store import Increments, ObjectKey, Op, UnstorableValue
from ..packet import Packet

VERSION = 1
log = logging.getLogger("chc.proc")


class WireError(Exception):
    """A frame that is not a message of this runtime (the sender is dropped)."""


class Kind(enum.IntEnum):
    DATA = 1        # packets between root and instances (and watermarks, end of input)
    REPORT = 2      # forks and ends of packet copies, to the root that stamped them (§5, §5.4)
    CALL = 3        # a store request (method, arguments)
    REPLY = 4       # its answer
    INPUT = 5       # capture records, coordinator -> root
    CONTROL = 6     # coordinator <-> worker: start, finish, stats, output packets


_KINDS = frozenset(int(k) for k in Kind)

# extension type codes
_TUPLE, _KEY, _OP, _INCS, _DEQUE, _SET, _FROZENSET, _STAMPED = range(1, 9)


def _default(obj: Any) -> Any:
    # (Nested values are packed by packb: the shared top-level Packer is not re-entrant.)
    cls = obj.__class__
    if cls is tuple:
        return msgpack.ExtType(_TUPLE, _nested(list(obj)))
    if cls is ObjectKey:
        return msgpack.ExtType(_KEY, _nested(list(obj)))
    if cls is Op:
        return msgpack.ExtType(_OP, _nested([getattr(obj, n) for n in Op.__slots__]))
    if cls is Increments:
        return msgpack.ExtType(_INCS, _nested([obj.total, obj.clocks, obj.ns, obj.amounts, obj.xor_ids]))
    if cls is deque:
        return msgpack.ExtType(_DEQUE, _nested(list(obj)))
    if cls is set:
        return msgpack.ExtType(_SET, _nested(list(obj)))
    if cls is frozenset:
        return msgpack.ExtType(_FROZENSET, _nested(list(obj)))
    if cls is Stamped:          # §5.4 a reply with the TS the store returned with it
        return msgpack.ExtType(_STAMPED, _nested([obj.result, [[c, s.clock, s.seq] for c, s in obj.ts.items()]]))
    raise TypeError(f"the proc runtime cannot send a {cls.__name__}")


def _ext(code: int, data: bytes) -> Any:
    items = _unpack(data)
    if items.__class__ is not list:
        raise ValueError("extension payload is not a list")
    if code == _TUPLE:
        return tuple(items)
    if code == _KEY:
        vertex, obj, key, per_flow = items
        return ObjectKey(str(vertex), str(obj), key, bool(per_flow))
    if code == _OP:
        code_, key, args, client, seq, instance, tag, xor_id, default = items
        return Op(code_, key, args, client, seq, instance, tag, xor_id, default)
    if code == _INCS:
        inc = Increments()
        inc.total, inc.clocks, inc.ns, inc.amounts, inc.xor_ids = items
        return inc
    if code == _DEQUE:
        return deque(items)
    if code == _SET:
        return set(items)
    if code == _FROZENSET:
        return frozenset(items)
    if code == _STAMPED:
        result, ts = items
        return Stamped(result, {str(c): Stamp(int(clock), int(seq)) for c, clock, seq in ts})
    raise ValueError(f"unknown extension type {code}")


def _nested(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True, strict_types=True, default=_default)


_pack = msgpack.Packer(use_bin_type=True, strict_types=True, default=_default).pack


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_ext)


def encode(kind: Kind, body: Any) -> bytes:
    """One frame: version, kind, msgpack body."""
    return bytes((VERSION, kind)) + _pack(body)


def decode(frame: bytes) -> tuple[int, Any]:
    """``(kind, body)`` of a frame; :class:`WireError` if it is not one of ours."""
    if len(frame) < 3:
        raise WireError(f"a {len(frame)}-byte frame is too short")
    if frame[0] != VERSION:
        raise WireError(f"wire version {frame[0]}, expected {VERSION}")
    kind = frame[1]
    if kind not in _KINDS:
        raise WireError(f"unknown message kind {kind}")
    try:
        return kind, _unpack(memoryview(frame)[2:])
    except Exception as exc:        # any decoding failure: the peer is not speaking our protocol
        raise WireError(f"undecodable {Kind(kind).name} body ({type(exc).__name__}: {exc})") from None


def fields(body: Any, n: int, what: str) -> list:
    """``body`` as a list of ``n`` fields, or :class:`WireError`."""
    if body.__class__ is not list or len(body) != n:
        raise WireError(f"malformed {what} message")
    return body


# -- store ops ----------------------------------------------------------------------------
# An op is a flat row (no extension types for its own fields: a store request carries
# hundreds of them, and each extension value costs a Python call on both sides).

def op_rows(ops: list[Op]) -> list[list]:
    rows = []
    for op in ops:
        k, tag = op.key, op.tag
        rows.append([op.code, k.vertex, k.obj, k.key, k.per_flow, list(op.args), op.client, op.seq, op.instance,
                     -1 if tag is None else tag[0], 0 if tag is None else tag[1], op.xor_id, op.default])
    return rows


def rows_ops(rows: Any) -> list[Op]:
    """Ops from their rows; :class:`WireError` if a row is not one."""
    if rows.__class__ is not list:
        raise WireError("malformed op list")
    new = ObjectKey.__new__
    ops = []
    try:
        for code, vertex, obj, key, per_flow, args, client, seq, instance, clock, n, xor_id, default in rows:
            if (code.__class__ is not str or vertex.__class__ is not str or obj.__class__ is not str
                    or args.__class__ is not list or seq.__class__ is not int or clock.__class__ is not int):
                raise TypeError("field types")
            ops.append(Op(code, new(ObjectKey, vertex, obj, key, per_flow is True), tuple(args), client, seq,
                          instance, None if clock < 0 else (clock, n), xor_id, default))
    except (TypeError, ValueError) as exc:
        raise WireError(f"malformed op ({exc})") from None
    return ops


# What a store op's values may be to travel (docs/nf-api.md): what the default store server
# can hold (it holds whatever arrives; Redis, behind it or not, holds no sets).
SENDABLE = "None, bool, int (64 bits), float, str, bytes, and lists, tuples, dicts and sets of them"
_CANNOT = (TypeError, ValueError, OverflowError)    # what msgpack raises for a value it cannot pack


class UnsendableValue(UnstorableValue):
    """A store op's value the wire cannot carry (an object of the NF's own class, an int
    beyond 64 bits): refused before its request is sent, as final as any refusal."""


def unsendable(value: Any) -> Any:
    """The innermost part of ``value`` the wire cannot carry (None: it can)."""
    try:
        _nested(value)
        return None
    except _CANNOT:
        pass
    parts = (list(value.keys()) + list(value.values()) if isinstance(value, dict)
             else list(value) if isinstance(value, (list, tuple, set, frozenset, deque)) else [])
    return next((bad for bad in map(unsendable, parts) if bad is not None), value)


def _unsendable_op(op: Op) -> UnsendableValue | None:
    """Why ``op`` cannot travel (named as the Redis store names what it cannot hold), or None."""
    try:
        _nested(op_rows([op]))
        return None
    except _CANNOT:
        pass
    args = op.args
    parts = ([("the arguments", args[1:])] if op.code in ("apply", "custom")
             else [("value", a) for a in args])
    for what, value in [*parts, ("the default", op.default), ("the scope key", op.key.key)]:
        part = unsendable(value)
        if part is not None:
            return UnsendableValue(f"the proc runtime cannot send {what} {value!r:.200} to its store "
                                   f"(a {type(part).__name__})", what, value, part)
    return UnsendableValue(f"the proc runtime cannot send {op.code} on {op.key!r} to its store",
                           "the arguments", args)


def sendable(ops: list[Op]) -> tuple[list[Op], list[tuple[Op, UnsendableValue]]]:
    """``ops`` split into those the wire carries and (op, error) of those it cannot (the
    rare path: a request that did not encode)."""
    keep, refused = [], []
    for op in ops:
        err = _unsendable_op(op)
        if err is None:
            keep.append(op)
        else:
            refused.append((op, err))
    return keep, refused


# -- packets ------------------------------------------------------------------------------

def pack_packets(pkts: list[Packet]) -> list[list]:
    return [[bytes(p.data), p.ts, p.index, p.clock, p.xor, p.marks] for p in pkts]


def unpack_packets(rows: Any) -> list[Packet]:
    """Packets from their wire rows (re-parsed from their bytes)."""
    if rows.__class__ is not list:
        raise WireError("malformed packet batch")
    out = []
    try:
        for data, ts, index, clock, xor, marks in rows:
            if data.__class__ is not bytes:
                raise TypeError("frame is not bytes")
            p = Packet(data, ts, index)
            p.clock = clock
            p.xor = xor
            p.marks = marks
            out.append(p)
    except (TypeError, ValueError) as exc:
        raise WireError(f"malformed packet in batch ({exc})") from None
    return out


# -- sockets -------------------------------------------------------------------------------

def endpoint(directory: str, name: str) -> str:
    """The ``ipc://`` address of mailbox ``name`` in the run's private directory."""
    return f"ipc://{directory}/{name.replace('/', '.')}"


def tcp_endpoint(host: str, port: int) -> str:
    """A ``tcp://`` address (``--runtime ray``: the workers need not share a filesystem)."""
    return f"tcp://{host}:{port}"


class Mailbox:
    """A bound ROUTER socket: frames from named peers; garbage bans its sender (logged)."""

    def __init__(self, ctx: zmq.Context, address: str, owner: str, expected: set[bytes] | None = None,
                 hwm: int = 0) -> None:
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.RCVHWM, hwm)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(address)
        self.owner = owner
        self.expected = expected            # None: any peer (a failover generation counts as its peer)
        self.banned: set[bytes] = set()
        self.rejected = 0                   # frames discarded (garbage, banned or unknown peers)
        # §5.4 failed peers: what they sent and is read after the fence is dropped (their
        # failover sends it again); a failover's frames wait until its predecessor is fenced.
        self.fenced: set[bytes] = set()
        self.late = 0                       # frames of fenced peers dropped
        self.held: dict[bytes, deque] = {}
        self.released: deque = deque()

    def recv(self, flags: int = 0) -> tuple[bytes, int, Any] | None:
        """The next frame as ``(peer, kind, body)``; None when it was discarded (or held)."""
        if self.released:
            return self.released.popleft()
        parts = self.sock.recv_multipart(flags, copy=True)
        peer = parts[0]
        if peer in self.banned:
            self.rejected += 1
            return None
        if peer in self.fenced:
            self.late += 1
            return None
        try:
            if len(parts) != 2:
                raise WireError(f"{len(parts) - 1} frames in one message, expected 1")
            if self.expected is not None and logical(peer) not in self.expected:
                raise WireError("not a peer of this process")
            kind, body = decode(parts[1])
        except WireError as exc:
            self.ban(peer, str(exc))
            return None
        if GENERATION in peer and is_generation(peer) and previous(peer) not in self.fenced:
            self.held.setdefault(peer, deque()).append((peer, kind, body))
            return None
        return peer, kind, body

    def fence(self, peer: bytes) -> None:
        """§5.4 ``peer`` failed: nothing more of it is taken; its failover's frames may come."""
        self.fenced.add(peer)
        for successor in [p for p in self.held if previous(p) == peer]:
            self.released.extend(self.held.pop(successor))

    def messages(self, kind: Kind, n: int, what: str, limit: int | None = None) -> Iterator[tuple[bytes, list]]:
        """Without waiting, the frames of ``kind`` that have arrived (at most ``limit``),
        as ``(peer, its n body fields)``; a frame of another kind or shape bans its sender."""
        while limit is None or limit > 0:
            try:
                msg = self.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if limit is not None:
                limit -= 1
            if msg is None:
                continue
            peer, got, body = msg
            try:
                if got != kind:
                    raise WireError(f"a {Kind(got).name} message on the {what} mailbox")
                parts = fields(body, n, what)
            except WireError as exc:
                self.ban(peer, str(exc))
                continue
            yield peer, parts

    def ban(self, peer: bytes, why: str) -> None:
        self.rejected += 1
        if peer not in self.banned:
            self.banned.add(peer)
            log.warning("%s: dropped peer %r: %s", self.owner, peer[:40], why)

    def reply(self, peer: bytes, frame: bytes) -> None:
        self.sock.send_multipart([peer, frame])

    def close(self, linger: int = 0) -> None:
        """Close; ``linger`` ms for what is still unsent (a last reply) to leave."""
        self.sock.close(linger)


GENERATION = b"#"      # "nat.0#2": the second failover process of logical instance nat.0
# §5.3 a clone of process P is ``P~k`` (the k-th clone of its logical instance): not a
# generation (receivers never hold its frames for a predecessor's fence); kept, it is the
# base of its own failover generations (``nat.0~1#1``), so ``previous`` stays right.
CLONE = b"~"


def logical(peer: bytes) -> bytes:
    """The logical name of a peer (a failover process or a clone speaks for its logical instance)."""
    return peer.split(GENERATION, 1)[0].split(CLONE, 1)[0]


def is_generation(peer: bytes) -> bool:
    """Whether ``peer`` is a failover generation (``nat.0#1``, ``nat.0~1#2``; not a clone ``nat.0#1~1``)."""
    _, sep, g = peer.rpartition(GENERATION)
    return bool(sep) and g.isdigit()


def previous(peer: bytes) -> bytes:
    """The process a failover generation replaced."""
    base, _, g = peer.rpartition(GENERATION)
    return base if g == b"1" else base + GENERATION + str(int(g) - 1).encode()


def generation_name(name: str, generation: int) -> str:
    return name if generation == 0 else f"{name}#{generation}"


class Marks:
    """Duplicate suppression by *through* (§5.4): every message an instance sends after
    a batch carries the highest clock of that batch; a failover re-sends what it
    replays, and a receiver takes from a failover generation only what goes past what
    it already has from that logical sender."""

    def __init__(self) -> None:
        self.mark: dict[bytes, int] = {}

    def fresh(self, peer: bytes, through: int) -> bool:
        name = logical(peer)
        seen = self.mark.get(name, -1)
        if through > seen:
            self.mark[name] = through
            return True
        return name == peer         # the first generation's messages are never duplicates


def dealer(ctx: zmq.Context, address: str, identity: str, hwm: int = 0) -> zmq.Socket:
    """A DEALER socket named ``identity`` connected to the mailbox at ``address``."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, identity.encode())
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    return sock
