"""Scenarios: what happens to the physical chain during a sim run.

A scenario (YAML, or the same data in Python) sets the run's dynamics:
parallelism per vertex, state model and store, batch size, input pacing,
per-instance delay distributions, a seed, and timed events::

    name: parallel
    parallelism: 3                  # every vertex, or {vertex: n}
    model: EO+C+NA                  # T | EO | EO+C | EO+C+NA
    store: memory                   # or redis://HOST:PORT[,...], redis-cluster://HOST:PORT
    packet_log: store               # local (default) | store: the roots' packet log (§5.4)
    batch_size: 64
    pacing: {mbps: 10000}           # {multiplier: X} | {pps: N} | {mbps: N} | topspeed
    delays: {"*": "uniform:50:100"} # vertex, vertex[i] or "*" -> distribution (µs)
    seed: 7
    network:                        # simulated links (chc.runtime.simnet), µs
      store: {latency: "uniform:5:50", drop: 0.01, duplicate: 0.01, reorder: 0.02}
      data: {latency: "uniform:1:10"}         # FIFO: latency only
      commits: {latency: "uniform:1:100"}     # FIFO: latency only
    events:
      - {at: {packets: 20000}, do: slow, target: "nat[1]", delay: "uniform:200:400"}
      - {at: {time_us: 9000}, do: speed-up, target: "nat[1]"}
      - {at: {packets: 500}, do: partition, target: "nat[0]", duration_us: 2000}
      - {at: {packets: 900}, do: drop, target: "portscan", count: 3}
      - {at: {packets: 1200}, do: crash, target: "nat[1]", heartbeat_us: 20, misses: 3}
    random:                         # more events, drawn by each seed
      events: 8
      actions: [scale-out, scale-in, move, refine, clone, crash]   # default: scale-out, scale-in, move
      vertices: [nat, portscan]     # default: every vertex; ``store``, ``root[i]``: their crash
      between: {packets: [200, 3000]}                # default: the whole input

``vertex[i]`` names logical instance ``i`` (one the chain started with or a
scale-out added), whichever instance serves it now: after ``nat[0]`` failed over,
its failover instance, on either runtime (:mod:`chc.runtime.sim`'s theory of
operation).  An event that cannot apply is logged refused or ignored with why.

Events fire before the input packet they name (``packets``: its index;
``time_us``: the first packet arriving at or after that virtual time), so a run
with events is as deterministic and batch-size independent as one without.
An event is ``{at, do, target, ...parameters}``; the actions live in
:data:`chc.runtime.sim.ACTIONS` (``slow``, ``speed-up``; store-link faults
``drop``, ``duplicate``, ``delay``, ``partition``; ``crash`` an NF instance,
failed over after ``misses`` missed heartbeats, §5.4; elasticity ``scale-out``,
``scale-in``, ``move``, ``refine``; ``clone`` a straggler, §5.3), so later ones
are new entries of that table with their own parameters, not a new format.
"""

from __future__ import annotations

import dataclasses
import os
import random
from typing import Any

from .core.client import MODELS
from .runtime.pacing import Delay, Pacer
from .runtime.simnet import LinkModel, parse_network
from .spec import MAX_PARALLELISM, SpecError, read_yaml


class ScenarioError(ValueError):
    """An invalid scenario; the message names the offending field."""


@dataclasses.dataclass
class Event:
    action: str
    target: str | None = None
    params: dict = dataclasses.field(default_factory=dict)
    at_packet: int | None = None
    at_time_ns: int | None = None

    @property
    def vertex(self) -> str:
        """The vertex the target names (``nat`` of ``nat[1]``; "" without a target)."""
        return (self.target or "").partition("[")[0]


#: Actions a scenario's ``random:`` block may draw.
RANDOM_ACTIONS = ("scale-out", "scale-in", "move", "refine", "clone", "crash")
_CLONE_FOR = (0, 20, 200)       # input packets a drawn clone runs beside its straggler at least
_FRACTIONS = (0.1, 0.25, 0.5, 1.0)


def _is_root(name: str) -> bool:
    return name.startswith("root[") and name.endswith("]") and name[5:-1].isdigit()


# What an event may target besides a chain's vertex (``nat``, ``nat[1]``): a crash the
# store or a root (§5.4); a store-link fault every link (``*``, or no target).
_CRASH_TARGETS = "root[R], store"
_LINKS = "* (every store link)"
_OTHER_TARGETS = {"crash": _CRASH_TARGETS, "drop": _LINKS, "duplicate": _LINKS, "delay": _LINKS, "partition": _LINKS}


def _not_a_target(target: str, vertices: list[str], roots: int | None, others: str,
                  instance: bool = True) -> str | None:
    """Why ``target`` (an event's, or a ``random.vertices`` name) is no target here; None
    if it is one.  ``others``: what the action takes besides a vertex (``vertex[i]`` too
    if ``instance``; its index is the runtime's to judge: a scale-out may add it)."""
    name = target.partition("[")[0] if instance else target
    if name in vertices:
        index = target[len(name):]
        if index and not (index[0] == "[" and index[-1] == "]" and index[1:-1].isdigit()):
            # (the runtime said "'nat[x]': expected nat[N] ...", with no file; 'nat[' was all of nat)
            return f"{target!r}: an instance is {name}[N] with a number N"
        return None
    if target == "*" and "*" in others:
        return None
    known = f"(vertices: {', '.join(vertices)}{'; ' + others if others else ''})"
    if target == "store" or target.startswith("root["):
        if others != _CRASH_TARGETS:
            return f"{target!r}: only a crash targets the store or a root {known}"
        if target == "store":
            return None
        if not _is_root(target):
            return f"{target!r}: a root is root[R] {known}"
        if roots is not None and int(target[5:-1]) >= roots:
            return f"{target!r}: the chain has roots 0-{roots - 1}"
        return None
    if target == "*":
        return f"'*' (every store link) is the target of a store-link fault only {known}"
    return f"unknown vertex {name!r}{f' in {target!r}' if name != target else ''} {known}"


@dataclasses.dataclass
class RandomEvents:
    """``random:``: ``events`` more events per seed, at packets drawn in ``between``."""

    events: int
    actions: tuple[str, ...] = ("scale-out", "scale-in", "move")
    vertices: tuple[str, ...] | None = None
    between: tuple[int, int] | None = None

    def check(self, vertices: list[str], roots: int | None = None) -> None:
        """Every name of ``vertices:`` is a vertex of the chain, a root or the store."""
        for v in self.vertices or ():
            why = _not_a_target(v, vertices, roots, _CRASH_TARGETS, instance=False)
            if why is not None:
                raise ScenarioError(f"random.vertices: {why}")

    def draw(self, seed: int, vertices: list[str], n_packets: int) -> list[Event]:
        """The seed's events (the same for the same seed, chain and input length)."""
        self.check(vertices)
        rng = random.Random(f"{seed}/random-events")
        lo, hi = self.between or (0, n_packets)
        hi = max(lo + 1, min(hi, n_packets))
        out = []
        for _ in range(self.events):
            action = rng.choice(self.actions)
            vertex = rng.choice(self.vertices or vertices)
            params = {"pick": rng.randrange(1 << 16), "fraction": rng.choice(_FRACTIONS)} if action == "move" else {}
            if action == "clone":       # §5.3: the vertex's instance furthest behind
                params = {"for_packets": rng.choice(_CLONE_FOR)}
            elif action == "crash":     # §5.4: one of the vertex's active instances
                params = {"pick": rng.randrange(1 << 16)}
            if vertex == "store" or _is_root(vertex):   # §5.4: these can only crash (and fail over)
                action, params = "crash", {}
            out.append(Event(action, vertex, params, at_packet=rng.randrange(lo, hi)))
        return out


@dataclasses.dataclass
class Scenario:
    name: str = "scenario"
    parallelism: int | dict[str, int] | None = None
    model: str | None = None
    store: str | None = None
    batch_size: int | None = None
    pacing: tuple[str, float] | None = None     # (mode, value); a fresh Pacer per run
    delays: dict[str, str] = dataclasses.field(default_factory=dict)
    seed: int = 0
    network: dict[str, LinkModel] = dataclasses.field(default_factory=dict)
    events: list[Event] = dataclasses.field(default_factory=list)
    random: RandomEvents | None = None
    packet_log: str = "local"       # local | store: where roots keep the packet log (§5.4)
    source: str = ""                # the file it was read from ("" if built in code): for messages

    def events_for(self, seed: int, vertices: list[str], n_packets: int) -> list[Event]:
        """The scenario's events and those the seed draws."""
        drawn = self.random.draw(seed, vertices, n_packets) if self.random else []
        return self.events + drawn

    def check_targets(self, vertices: list[str], chain: Any = None) -> None:
        """Every event's target is one its action takes: a vertex of the chain (``nat``,
        ``nat[1]``), a root (``root[R]``) or the store for a crash, ``*`` for a
        store-link fault; every name in ``random.vertices``, ``parallelism`` and
        ``delays`` is one too.  With ``chain`` (the :class:`chc.spec.Chain`), a root's
        number is checked against its roots, the parallelism against its scaling
        policies and each operator control's parameters against its NF.  A mistake is
        named with its field before anything runs (it was "unknown vertex 'trojn' in
        'trojn'", or "unknown vertex 'store'" for a scale-out of the store, from
        whichever runtime met it first: no file, no event; a parallelism of no vertex
        was ignored)."""
        roots = None if chain is None else chain.roots
        for i, ev in enumerate(self.events):
            why = None if ev.target is None else \
                _not_a_target(ev.target, vertices, roots, _OTHER_TARGETS.get(ev.action, ""))
            if why is not None:
                raise ScenarioError(f"events[{i}].target: {why}")
        if self.random is not None:
            self.random.check(vertices, roots)
        # (a typo here was ignored, or failed in the runtime with no file and no field)
        for name in self.parallelism if isinstance(self.parallelism, dict) else ():
            why = _not_a_target(name, vertices, None, "", instance=False)
            if why is not None:
                raise ScenarioError(f"parallelism.{name}: {why}")
        for target in self.delays:
            why = None if target == "*" else _not_a_target(target, vertices, None, "")
            if why is not None:
                raise ScenarioError(f"delays.{target}: {why}")
        if chain is not None:
            from types import SimpleNamespace

            from .runtime import control
            try:
                if self.parallelism is not None:
                    chain.with_parallelism(self.parallelism)        # (against a vertex's scaling policy)
            except SpecError as exc:
                raise ScenarioError(f"parallelism: {exc}") from None
            for i, ev in enumerate(self.events):
                if ev.action in control.CONTROLS:
                    try:
                        control.resolve(SimpleNamespace(chain=chain), ev)
                    except ValueError as exc:
                        raise ScenarioError(f"events[{i}]: {exc}") from None

    def pacer(self) -> Pacer:
        """A new pacer for one run (pacers keep state: the first timestamp seen)."""
        return Pacer(*self.pacing) if self.pacing else Pacer("multiplier", 1.0)

    def expand_delays(self, vertices: list[str]) -> dict[str, str]:
        """``*`` -> every vertex; explicit entries win."""
        out = {v: self.delays["*"] for v in vertices} if "*" in self.delays else {}
        out.update({k: v for k, v in self.delays.items() if k != "*"})
        return out


def load_scenario(path: str | os.PathLike) -> Scenario:
    raw = read_yaml(path, ScenarioError)
    try:
        sc = parse_scenario(raw if raw is not None else {})
    except ScenarioError as exc:
        raise ScenarioError(f"{path}: {exc}") from None
    sc.source = str(path)
    return sc


_FIELDS = ("name", "parallelism", "model", "store", "batch_size", "pacing", "delays", "seed", "network", "events",
           "random", "packet_log")


def parse_scenario(raw: Any) -> Scenario:
    if not isinstance(raw, dict):
        raise ScenarioError("a scenario is a mapping")
    if "vertices" in raw:
        raise ScenarioError("a chain spec (it has vertices), given where the scenario goes: chc check CHAIN "
                            "SCENARIO CAPTURE (e.g. examples/scenarios/parallel.yaml)")
    for key in raw:
        if key not in _FIELDS:
            raise ScenarioError(f"{key}: unknown field (known: {', '.join(_FIELDS)})")
    sc = Scenario(name=str(raw.get("name", "scenario")))
    sc.parallelism = _parallelism(raw.get("parallelism"))
    model = raw.get("model")
    if model is not None and model not in MODELS:
        raise ScenarioError(f"model: expected one of {', '.join(MODELS)}, got {model!r}")
    sc.model = model
    store = raw.get("store")
    if store is not None and not (store == "memory" or (isinstance(store, str)
                                                         and store.startswith(("redis://", "redis-cluster://")))):
        raise ScenarioError(f"store: expected 'memory', redis://HOST:PORT or redis-cluster://HOST:PORT, got {store!r}")
    sc.store = store
    bs = raw.get("batch_size")
    if bs is not None and (not isinstance(bs, int) or isinstance(bs, bool) or bs < 1):
        raise ScenarioError(f"batch_size: must be a positive integer, got {bs!r}")
    sc.batch_size = bs
    sc.pacing = _pacing(raw.get("pacing"))
    sc.delays = _delays(raw.get("delays"))
    seed = raw.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ScenarioError(f"seed: must be an integer, got {seed!r}")
    sc.seed = seed
    sc.network = parse_network(raw.get("network"), ScenarioError)
    sc.events = [_event(e, f"events[{i}]") for i, e in enumerate(raw.get("events") or [])]
    sc.random = _random(raw.get("random"))
    log = raw.get("packet_log", "local")
    if log not in ("local", "store"):
        raise ScenarioError(f"packet_log: expected local or store, got {log!r}")
    sc.packet_log = log
    return sc


def _random(raw: Any) -> RandomEvents | None:
    if raw is None:
        return None
    known = ("events", "actions", "vertices", "between")
    if not isinstance(raw, dict) or "events" not in raw:
        raise ScenarioError("random: a mapping {events: N, actions: [...], vertices: [...], "
                            "between: {packets: [A, B]}}")
    for key in raw:
        if key not in known:
            raise ScenarioError(f"random.{key}: unknown field (known: {', '.join(known)})")
    n = raw["events"]
    if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= 10_000:
        raise ScenarioError(f"random.events: an integer from 0 to 10000, got {n!r}")
    out = RandomEvents(n)
    actions = raw.get("actions", list(out.actions))
    if not isinstance(actions, list) or not actions or any(a not in RANDOM_ACTIONS for a in actions):
        raise ScenarioError(f"random.actions: a non-empty list of {', '.join(RANDOM_ACTIONS)}, got {actions!r}")
    out.actions = tuple(actions)
    vertices = raw.get("vertices")
    if vertices is not None:
        if not isinstance(vertices, list) or not vertices or not all(isinstance(v, str) for v in vertices):
            raise ScenarioError(f"random.vertices: a non-empty list of vertex names, got {vertices!r}")
        out.vertices = tuple(vertices)
    between = raw.get("between")
    if between is not None:
        span = between.get("packets") if isinstance(between, dict) and set(between) == {"packets"} else None
        if not (isinstance(span, list) and len(span) == 2 and all(isinstance(x, int) and not isinstance(x, bool)
                                                                  and x >= 0 for x in span) and span[0] < span[1]):
            raise ScenarioError(f"random.between: {{packets: [FIRST, LAST]}} with 0 <= FIRST < LAST, got {between!r}")
        out.between = (span[0], span[1])
    return out


def _parallelism(raw: Any) -> int | dict[str, int] | None:
    def ok(n: Any) -> bool:
        return isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= MAX_PARALLELISM
    if raw is None:
        return None
    if ok(raw):
        return raw
    if isinstance(raw, dict) and all(isinstance(k, str) and ok(v) for k, v in raw.items()):
        return dict(raw)
    raise ScenarioError(f"parallelism: an integer from 1 to {MAX_PARALLELISM} (the parallelism limit) "
                        f"or {{vertex: n}}, got {raw!r}")


def _pacing(raw: Any) -> tuple[str, float] | None:
    if raw is None:
        return None
    if raw == "topspeed":
        return ("topspeed", 0.0)
    if isinstance(raw, dict) and len(raw) == 1:
        (mode, value), = raw.items()
        try:
            Pacer(mode, float(value))
        except (ValueError, TypeError) as exc:
            raise ScenarioError(f"pacing.{mode}: {exc}") from None
        return (mode, float(value))
    raise ScenarioError(f"pacing: topspeed or one of {{multiplier|pps|mbps: N}}, got {raw!r}")


def _delays(raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ScenarioError("delays: a mapping of vertex (or vertex[i], or *) -> distribution")
    for target, spec in raw.items():
        try:
            Delay(str(spec), 0, str(target))
        except ValueError as exc:
            raise ScenarioError(f"delays.{target}: {exc}") from None
    return {str(k): str(v) for k, v in raw.items()}


def _event(raw: Any, where: str) -> Event:
    from .runtime.sim import ACTIONS

    if not isinstance(raw, dict) or "do" not in raw or "at" not in raw:
        raise ScenarioError(f"{where}: an event is {{at: {{packets|time_us: N}}, do: ACTION, ...}}")
    action = raw["do"]
    if action not in ACTIONS:
        raise ScenarioError(f"{where}.do: unknown action {action!r} (known: {', '.join(sorted(ACTIONS))})")
    at = raw["at"]
    target = raw.get("target")
    if target is not None and not isinstance(target, str):
        # (a number or a list met str methods in the checks: a traceback)
        raise ScenarioError(f"{where}.target: a name (vertex, vertex[i], root[R], store or *), got {target!r}")
    ev = Event(action, target, {k: v for k, v in raw.items() if k not in ("at", "do", "target")})
    if (isinstance(at, dict) and set(at) == {"packets"} and isinstance(at["packets"], int)
            and not isinstance(at["packets"], bool) and at["packets"] >= 0):
        ev.at_packet = at["packets"]
    elif isinstance(at, dict) and set(at) == {"time_us"} and isinstance(at["time_us"], (int, float)):
        ev.at_time_ns = int(at["time_us"] * 1000)
    else:
        raise ScenarioError(f"{where}.at: expected {{packets: N}} or {{time_us: T}}, got {at!r}")
    check = ACTIONS[action].check
    try:
        check(ev)
    except ValueError as exc:
        raise ScenarioError(f"{where}: {exc}") from None
    return ev
