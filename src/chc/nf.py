"""The NF API: a vertex program declares its state objects and processes packets.

Theory of operation
-------------------
An NF is a subclass of :class:`NF`.  It *declares* its state as class attributes
(:class:`Counter`, :class:`Value`, :class:`List`, :class:`Map`), each with a
scope (which header fields key it, §4.1), an access pattern (Table 1) and an
initial value.  When the framework creates an instance it binds every declaration
to a concrete handle chosen by the state model (``T``: a local dict; the
externalized models plug in the store client here), and stores the handle on the
instance under the same name.  NF code therefore reads and updates state only
through ``self.<object>.<op>(...)`` with the operations of Table 2 (get, set,
incr/decr, push/pop, compare-and-update), and the very same code runs unchanged
against any backend.

``process(pkt, ctx)`` returns the packet to forward (possibly rewritten),
``None`` to drop it, or a list or tuple of packets; alerts go through ``ctx.alert``.
``ctx`` also carries the packet's logical clock (§5.2) and timestamp, and a timer
service owned by the framework (fired in timestamp order before the packet whose
timestamp passes the deadline, and at end of input), so an NF needs no private
state outside its declarations.

Operator configuration is a dataclass ``Config`` nested in the NF class; the chain
spec's ``config:`` mapping is checked against it field by field (see
:func:`build_config`).
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import heapq
import typing
import zlib
from collections.abc import Callable, Hashable
from typing import Any, ClassVar

from .packet import TCP_ACK, TCP_RST, TCP_SYN, Packet, flow_key

# -- scopes (§4.1) -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Scope:
    """The header fields that key a state object (§4.1).

    ``key(pkt)`` gives the object key for a packet; ``partition(pkt)`` gives the
    bytes the upstream splitter hashes so that every packet touching the same
    object reaches the same instance.  ``rank`` orders scopes from fine (0) to
    coarse; ``per_flow`` selects the Table 1 column; ``joins_flows``: both
    directions of every connection get one partition key, so partitioning on it
    keeps each per-flow (5-tuple) object on one instance.
    """

    name: str
    rank: int
    per_flow: bool
    key: Callable[[Packet], Hashable]
    partition: Callable[[Packet], bytes]
    joins_flows: bool = False


def _is_response(p: Packet) -> bool:
    # A SYN-ACK or an RST answers a connection attempt made by the destination.
    f = p.flags
    return bool(f & TCP_RST) or (f & (TCP_SYN | TCP_ACK)) == (TCP_SYN | TCP_ACK)


def _initiator(p: Packet) -> bytes:
    return p.dst if _is_response(p) else p.src


# Keys are bytes (packet.flow_key): they cache their hash, where a tuple key cost
# the NAT a seventh of its time in dict lookups (issue 7 profile); one object
# serves the splitter and the state alike.
FLOW = Scope("5-tuple", 0, True, flow_key, flow_key, joins_flows=True)
SRC_IP = Scope("src-ip", 2, False, lambda p: p.src, lambda p: p.src)
DST_IP = Scope("dst-ip", 2, False, lambda p: p.dst, lambda p: p.dst)
# The host that initiated the connection a packet belongs to, as far as one
# packet tells (responses are attributed to their destination).  Used by
# detectors that keep per-host state about connection attempts.
INITIATOR = Scope("initiator-ip", 2, False, _initiator, _initiator)
GLOBAL = Scope("global", 9, False, lambda p: None, lambda p: b"", joins_flows=True)

SCOPES = {s.name: s for s in (FLOW, SRC_IP, DST_IP, INITIATOR, GLOBAL)}


def stable_hash(data: bytes) -> int:
    """Process-independent hash for partitioning (Python's hash() is salted)."""
    return zlib.crc32(data)


class Access(enum.Enum):
    """Access patterns of Table 1."""

    WRITE_MOSTLY = "write-mostly"      # write mostly, read rarely
    READ_HEAVY = "read-heavy"          # write rarely, read mostly
    READ_WRITE = "read-write-often"    # write/read often


# -- offloaded value operations (§4.3 "developers can load custom operations") -----


@dataclasses.dataclass(frozen=True)
class ValueOp:
    """A read-modify-write on one state value, run atomically wherever the value
    lives: in the instance (model T, cached objects) or in the store (offloaded).

    ``fn(value, *args) -> (new value, result)`` must be deterministic.  ``lua`` is
    the same function for the Redis backend: a Lua chunk that receives ``value``
    and ``args`` and returns ``new, result``.
    """

    name: str
    fn: Callable[..., tuple[Any, Any]]
    lua: str | None = None


VALUE_OPS: dict[str, ValueOp] = {}


def wrong_return(res: object) -> TypeError:
    """The NF's error when ``process`` returned something it may not: it may return the
    packet, ``None``, or a list or tuple of packets (docs/nf-api.md).  The physical
    instances and the COE reference both say it so."""
    text = repr(res)
    text = text if len(text) <= 60 else text[:57] + "..."
    return TypeError(f"process() returned {type(res).__name__} {text}: expected the packet, None, or a list or "
                     "tuple of packets")


def least_loaded(loads: list, weights: list | tuple | None = None) -> int:
    """Index of the least loaded counter (first on ties): the load balancer's choice.

    With ``weights``, weighted least-connections: the least ``loads[i] / weights[i]``
    among positive weights, compared by cross-multiplication so that the choice is
    exact and the same in every place that makes it (instance, store engine, Redis
    function, COE reference).  A weight of 0 takes no new connection (draining);
    None when every weight is 0."""
    if weights is None:
        return loads.index(min(loads))
    best = None
    for i, (v, w) in enumerate(zip(loads, weights, strict=True)):
        if w > 0 and (best is None or v * weights[best] < loads[best] * w):
            best = i
    return best


def value_op(name: str, lua: str | None = None) -> Callable:
    """Register a function as an offloadable value operation (usable as
    ``self.<object>.apply(name, *args, key=...)`` in NF code)."""
    def register(fn: Callable[..., tuple[Any, Any]]) -> Callable[..., tuple[Any, Any]]:
        VALUE_OPS[name] = ValueOp(name, fn, lua)
        return fn
    return register


# -- state declarations ----------------------------------------------------------


EQUIVALENCES = ("exact", "multiset")


class StateObject:
    """Declaration of one state object family of an NF (Table 4).

    ``init`` is the initial value of every key, or a callable taking the NF's
    config and returning it (e.g. the NAT's port list from its port range).
    Mutable initial values are copied per key.
    """

    kind: ClassVar[str] = "value"

    def __init__(self, scope: Scope, access: Access, init: Any = None, doc: str = "",
                 equivalence: str = "exact") -> None:
        if equivalence not in EQUIVALENCES:
            raise ValueError(f"equivalence must be one of {', '.join(EQUIVALENCES)}")
        self.scope = scope
        self.access = access
        self.init = init
        self.doc = doc
        # How the COE checker compares this object's final value with the logical
        # chain's: "exact", or "multiset" for a list whose order carries no meaning
        # (the NAT's free ports: concurrent releases may push them in any order).
        self.equivalence = equivalence
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def initial(self, config: Any) -> Any:
        return self.init(config) if callable(self.init) else copy.deepcopy(self.init)

    def __repr__(self) -> str:
        return f"<{self.kind} {self.name} scope={self.scope.name} access={self.access.value}>"


class Counter(StateObject):
    kind = "counter"

    def __init__(self, scope: Scope, access: Access, init: int = 0, doc: str = "") -> None:
        super().__init__(scope, access, init, doc)


class Value(StateObject):
    kind = "value"


class List(StateObject):
    kind = "list"

    def __init__(self, scope: Scope, access: Access, init: Any = (), doc: str = "",
                 equivalence: str = "exact") -> None:
        super().__init__(scope, access, init, doc, equivalence)

    def initial(self, config: Any) -> list:
        return list(super().initial(config))


class Map(StateObject):
    kind = "map"

    def __init__(self, scope: Scope, access: Access, init: Any = None, doc: str = "") -> None:
        super().__init__(scope, access, init, doc)

    def initial(self, config: Any) -> dict:
        v = super().initial(config)
        return {} if v is None else dict(v)


# -- context ---------------------------------------------------------------------


@dataclasses.dataclass
class Alert:
    vertex: str
    instance: int
    kind: str
    host: str
    packet_index: int
    clock: int
    detail: dict = dataclasses.field(default_factory=dict)

    def as_json(self) -> dict:
        out = {"vertex": self.vertex, "instance": self.instance, "kind": self.kind,
               "host": self.host, "packet_index": self.packet_index, "clock": self.clock}
        if self.detail:
            out["detail"] = self.detail
        return out


class Context:
    """What an NF sees besides the packet: clock, time, alerts, timers."""

    __slots__ = ("vertex", "instance", "clock", "packet_clock", "now", "index", "alerts",
                 "_timers", "_timer_seq", "_armed", "_parent", "packet", "partition")

    def __init__(self, vertex: str, instance: int) -> None:
        self.vertex = vertex
        self.instance = instance
        self.clock = 0          # §5.2 logical clock of the packet being processed
        self.packet_clock = 0   # the same, even when NFs are shown arrival order (checker)
        self.now = 0            # its capture timestamp (ns)
        self.index = 0          # its position in the input
        self.alerts: list[Alert] = []
        self._timers: list = []
        self._timer_seq = 0
        # Timers armed by the packet (or timer) being processed, and the tag base of
        # the timer being fired (0 in a packet): a timer's clock-log tags derive from
        # the packet that armed it, not from this instance's history, so a failover
        # instance that re-arms it by replay tags its updates the same (§5.4).
        self._armed = 0
        self._parent = 0
        # The packet being processed and the vertex's partition function, which
        # gives the packet's partition fields at every scope of the vertex's ladder
        # (a tuple): a timer remembers them, so a handover moves it with the flow
        # that armed it, even after the scope was refined (§4.1, §5.1); None in a
        # timer or where nothing moves.
        self.packet: Any = None
        self.partition: Any = None

    def alert(self, kind: str, host: str, **detail: Any) -> None:
        """Raise an alert about ``host`` (a string, e.g. ``ip_str(pkt.src)``); ``detail``
        values are plain data (None, bool, int, float, str, and lists, tuples and
        str-keyed dicts of them): an alert goes into the summary's JSON and over the
        proc runtime's wire.  Anything else is the NF's error, raised here (a set or an
        object of the NF's own ended the run with json's traceback at the summary)."""
        if not isinstance(host, str) or (detail and not _plain(detail)):
            raise TypeError(_alert_refused(kind, host, detail))
        self.alerts.append(Alert(self.vertex, self.instance, kind, host, self.index,
                                 self.clock, detail))

    def set_timer(self, deadline_ns: int, key: Hashable) -> None:
        """Call ``nf.on_timer(key, ctx)`` once input time reaches ``deadline_ns``."""
        self._timer_seq += 1
        self._armed += 1
        part = None
        if self.partition is not None and self.packet is not None:
            part = self.partition(self.packet)
        base = self._armed if not self._parent else zlib.crc32(b"%d/%d" % (self._parent, self._armed)) & 0xFFFFF or 1
        # (deadline, arming order, key, clock the NF sees, input index, partition
        # fields per ladder rung, clock-log tag base, the arming packet's clock)
        heapq.heappush(self._timers, (deadline_ns, self._timer_seq, key, self.clock, self.index, part, base,
                                      self.packet_clock))


# -- the NF base class -------------------------------------------------------------


class NF:
    """Base class of vertex programs.  Subclasses declare state and ``process``."""

    #: name used as ``nf:`` in chain specs, and in summaries and messages (default: the class name)
    kind: ClassVar[str] = ""
    _kind_default: ClassVar[str] = ""     # the class name a kind-less class got as its kind
    #: operator configuration schema; override with a dataclass
    Config: ClassVar[type] = type("Config", (), {})

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # (an NF without one showed an empty name: "NF '' takes no config"); a subclass
        # of such an NF is named by its own class, not its parent's
        if "kind" not in cls.__dict__ and (not cls.kind or cls.kind == cls._kind_default):
            cls.kind = cls._kind_default = cls.__name__

    def __init__(self, config: Any) -> None:
        self.config = config

    @classmethod
    def state_objects(cls) -> dict[str, StateObject]:
        out: dict[str, StateObject] = {}
        for klass in reversed(cls.__mro__):
            for name, value in vars(klass).items():
                if isinstance(value, StateObject):
                    out[name] = value
        return out

    @classmethod
    def scopes(cls) -> list[Scope]:
        """``.scope()`` of §4.1: the vertex's scopes, finest first."""
        return sorted({o.scope for o in cls.state_objects().values()}, key=lambda s: s.rank)

    @classmethod
    def partition_scope(cls) -> Scope:
        """The scope the upstream splitter partitions on.

        §4.1 starts from the coarsest scope and refines until load is even; with
        no load information yet we take the coarsest non-global scope that keeps
        every per-flow object on one instance (cross-flow objects of a finer or
        another scope are shared through the store, R3); an NF may override it.
        A per-host scope does not qualify when the NF has per-flow state: the two
        directions of a connection have different source (and destination)
        addresses, and partitioning on one split each connection's per-flow
        objects over two instances (a new user's trial: a per-flow value wrong
        for 5,590 of 6,024 connections, no error).
        """
        scopes = [s for s in cls.scopes() if s is not GLOBAL]
        if any(s.per_flow for s in scopes):
            # (a per-flow scope of the NF's own keeps its own objects together)
            scopes = [s for s in scopes if s.joins_flows or s.per_flow]
        return scopes[-1] if scopes else FLOW

    @classmethod
    def partition_scopes(cls) -> list[Scope]:
        """The scopes a splitter may partition on, coarsest first: ``partition_scope()``,
        then the NF's finer declared scopes, to refine to while load is uneven (§4.1)."""
        first = cls.partition_scope()
        finer = [s for s in cls.scopes() if s is not GLOBAL and s.rank < first.rank]
        return [first] + sorted(finer, key=lambda s: -s.rank)

    def process(self, pkt: Packet, ctx: Context) -> Packet | list[Packet] | None:
        raise NotImplementedError

    #: Optional hint, a method ``reads_flow_state(pkt) -> bool``: whether ``process``
    #: will read this packet's per-flow state.  The externalized models load the
    #: per-flow state of a whole batch in one request (§4.3) and leave out the
    #: packets it says no to; a wrong "no" costs one blocking read, never correctness.
    reads_flow_state: ClassVar[Callable[[Any, Packet], bool] | None] = None

    def on_timer(self, key: Hashable, ctx: Context) -> None:
        """A timer set with ``ctx.set_timer`` has expired."""

    @classmethod
    def control(cls, action: str, params: dict, current: Callable[[str], Any], config: Any
                ) -> dict[str, Any]:
        """An operator's change to this NF's cross-flow state while it runs (a
        scenario action such as ``set-backends``): the new values, by object name,
        computed from ``params`` and ``current(name)`` (the object's value now).
        The framework writes them where the state lives (the store, whose
        callbacks refresh every instance's cached copy; or each instance in model
        ``T``), and the COE reference calls the same method on its own state.
        Bad params raise :class:`ConfigError` naming the field."""
        raise ConfigError("do", f"the {cls.kind or cls.__name__} NF has no operator control {action!r}")


# -- config validation ---------------------------------------------------------------


class ConfigError(ValueError):
    """Bad NF configuration: ``ConfigError(message)``, or ``ConfigError(field, message)``
    naming the offending key (an NF's ``Config.__post_init__`` or ``validate()`` may raise
    either; a new user's ``ConfigError('msg')`` failed on this signature itself)."""

    def __init__(self, field: str, message: str | None = None) -> None:
        if message is None:
            field, message = "", field
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


def _plain(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` is plain data an alert can carry (see Context.alert)."""
    if value is None or isinstance(value, (int, float, str)):       # (bool is an int; numpy floats are floats)
        return True
    if depth > 16:
        return False
    if isinstance(value, (list, tuple)):
        return all(_plain(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v, depth + 1) for k, v in value.items())
    return False


def _alert_refused(kind: str, host: Any, detail: dict) -> str:
    if not isinstance(host, str):
        return f"alert {kind!r}: the host is {type(host).__name__} {host!r:.60}, expected a string (ip_str(...))"
    name, bad = next((k, v) for k, v in detail.items() if not _plain(v))
    return (f"alert {kind!r}: {name}={type(bad).__name__} {bad!r:.60} is not plain data (None, bool, int, float, "
            "str, and lists, tuples and str-keyed dicts of them): an alert goes into the summary's JSON")


_SCALARS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _check_types(schema: type, raw: dict, where: str) -> None:
    """Options annotated ``int``, ``float``, ``bool`` or ``str`` get a value of that type
    (YAML's ``abc``, ``3.5`` or ``true`` for an ``int`` ran on, wrong); other
    annotations are the NF's ``validate`` to check."""
    try:
        hints = typing.get_type_hints(schema)
    except Exception:           # (an annotation that does not resolve: nothing to check by)
        return
    for name, value in raw.items():
        want = hints.get(name)
        if want not in _SCALARS:
            continue
        ok = (isinstance(value, bool) if want is bool else
              isinstance(value, (int, float)) and not isinstance(value, bool) if want is float else
              isinstance(value, want) and not isinstance(value, bool))
        if not ok:
            raise ConfigError(f"{where}.{name}", f"expected {_SCALARS[want]}, got {value!r}")


def build_config(nf_cls: type[NF], raw: Any, where: str) -> Any:
    """Check ``raw`` (a mapping from the spec) against ``nf_cls.Config``."""
    schema = nf_cls.Config
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(where, f"must be a mapping, got {type(raw).__name__}")
    if not dataclasses.is_dataclass(schema):
        if raw:
            raise ConfigError(where, f"NF '{nf_cls.kind}' takes no config")
        return None
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key in raw:
        if key not in fields:
            raise ConfigError(f"{where}.{key}", f"unknown option (known: {', '.join(sorted(fields))})")
    for f in fields.values():
        if f.name not in raw and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}.{f.name}", "required option missing")
    _check_types(schema, raw, where)
    try:
        cfg = schema(**raw)
    except ConfigError as exc:          # from the NF's __post_init__
        raise ConfigError(f"{where}.{exc.field}" if exc.field else where, exc.message) from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(where, str(exc)) from None
    check = getattr(cfg, "validate", None)
    if check is not None:
        try:
            check()
        except ConfigError as exc:
            raise ConfigError(f"{where}.{exc.field}" if exc.field else where, exc.message) from None
        except ValueError as exc:
            raise ConfigError(where, str(exc)) from None
    return cfg
