"""Chain specs: the operator's logical chain, validated and compiled.

Theory of operation
-------------------
A chain spec (YAML, or the same structure as Python dicts) names the logical
chain's vertices (NF type, config, parallelism), the on-path edges between them,
and off-path edges (copies, e.g. the Trojan detector beside the NAT, §7.1).
:func:`load_spec` / :func:`parse_spec` check every field and raise
:class:`SpecError` naming the bad one (``vertices.nat.config.port_range: ...``).

:func:`compile_chain` turns the logical chain into the physical one (Figure 3b):
a root in front of the entry vertex, ``parallelism`` instances per vertex, and a
splitter after the root and after every instance that partitions traffic to the
next vertex's instances on that vertex's partition scope (§4.1).  The result is
a plain description; runtimes (``chc.runtime``) instantiate it.

Spec format::

    name: paper-chain
    input: {malformed: drop, non_ip: pass}     # policies for frames NFs can't use
    vertices:
      nat:      {nf: nat, parallelism: 1, config: {external_ip: 198.51.100.1}}
      portscan: {nf: portscan,                 # a vertex manager's policy (§3):
                 scaling: {out_above_pps: 5000, in_below_pps: 1000, min: 1, max: 4}}
      trojan:   {nf: trojan}
    edges:   ["nat -> portscan"]               # or [[nat, portscan]]
    offpath: [{from: nat, to: trojan, tap: input}]   # tap: input | output
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
import sys
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:       # the COE reference reads specs and must not load the manager
    from .core.manager import ScalingPolicy

from .nf import NF, ConfigError, Scope, build_config
from .nfs import REGISTRY

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
POLICIES = {"malformed": ("drop", "pass"), "non_ip": ("pass", "drop")}
#: Most instances of one vertex, in a spec, a scenario or ``--parallelism``.  The
#: sim runtime builds every instance and its queues up front, so an unchecked
#: 100,000 exhausted memory (issue 18); 64 is well past the paper's largest chain.
MAX_PARALLELISM = 64


class SpecError(ValueError):
    """An invalid chain spec; the message names the offending field."""


@dataclasses.dataclass
class Vertex:
    name: str
    nf: type[NF]
    config: Any
    parallelism: int
    successors: list[str] = dataclasses.field(default_factory=list)
    taps_in: list[str] = dataclasses.field(default_factory=list)    # off-path copies of input
    taps_out: list[str] = dataclasses.field(default_factory=list)   # off-path copies of output
    offpath: bool = False
    match: Any = None          # entry vertices: None (all), "other", or a port set
    scaling: ScalingPolicy | None = None   # the vertex manager's logic (§3)

    def accepts(self, pkt: Any) -> bool:
        """Does this entry vertex take ``pkt`` (its ``match``, any TCP/UDP port)?"""
        m = self.match
        return m is None or (m != "other" and (pkt.sport in m or pkt.dport in m))

    @property
    def partition(self) -> Scope:
        return self.nf.partition_scope()

    def cross_flow_objects(self) -> list[str]:
        """Its state objects that several instances reach (a coarser scope than the
        partition's, another of the same rank, or global): one object in the store, but
        a copy per instance in model T (R3)."""
        part = self.partition
        return [name for name, d in self.nf.state_objects().items()
                if not d.scope.per_flow and d.scope is not part and d.scope.rank >= part.rank]


@dataclasses.dataclass
class Chain:
    """The compiled (physical) chain description."""

    name: str
    vertices: dict[str, Vertex]          # in topological order
    entries: list[str]
    policies: dict[str, str]
    roots: int = 1

    @property
    def entry(self) -> str:
        return self.entries[0]

    def nf_modules(self) -> tuple[str, ...]:
        """The modules of the operators' own NFs (a process that runs their value
        operations, the proc runtime's store server, imports them too)."""
        return tuple(sorted({v.nf.__module__ for v in self.vertices.values()
                             if not v.nf.__module__.startswith("chc.")}))

    def without_scaling(self) -> Chain:
        """A copy whose vertices have no vertex-manager policy (fixed size)."""
        return dataclasses.replace(self, vertices={n: dataclasses.replace(v, scaling=None)
                                                   for n, v in self.vertices.items()})

    def with_room(self, names: Any = None) -> Chain:
        """A copy whose vertices ``names`` (all: None) have the most instances a chain may
        have: to name an instance a scale-out may add (a --kill), not to run."""
        return dataclasses.replace(self, vertices={
            n: dataclasses.replace(v, parallelism=MAX_PARALLELISM) if names is None or n in names else v
            for n, v in self.vertices.items()})

    def with_parallelism(self, parallelism: int | dict[str, int]) -> Chain:
        """A copy with other instance counts (all vertices, or by name)."""
        out = dataclasses.replace(self, vertices={})
        for name, v in self.vertices.items():
            p = parallelism.get(name, v.parallelism) if isinstance(parallelism, dict) else parallelism
            p = check_parallelism(p, f"{name}.parallelism")
            if v.scaling is not None and not v.scaling.min <= p <= v.scaling.max:
                # (as the spec's own parallelism: a start of 3 under max 2 ran 3 -> 2 -> 1 -> 2)
                raise SpecError(f"{name}.parallelism {p}: outside min..max ({v.scaling.min}..{v.scaling.max}) "
                                "of its scaling policy")
            out.vertices[name] = dataclasses.replace(v, parallelism=p)
        return out


def check_parallelism(value: Any, where: str) -> int:
    """``value`` if it is an instance count from 1 to :data:`MAX_PARALLELISM`, else SpecError."""
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_PARALLELISM:
        raise SpecError(f"{where}: must be an integer from 1 to {MAX_PARALLELISM} "
                        f"(the parallelism limit), got {value!r}")
    return value


class _UniqueKeys(yaml.SafeLoader):
    """YAML as ``safe_load`` reads it, but a key given twice in one mapping is an error:
    PyYAML keeps the last silently, so ``vertices: {a: {nf: pass}, a: {nf: nat}}`` ran
    one vertex ``a`` and reported the first copy's missing config (a new user's)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> Any:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue            # (<<: *base: its keys may be overridden; only explicit ones count)
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:       # an unhashable key: the base class says so
                break
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}, first at line {first.start_mark.line + 1}",
                    key_node.start_mark)
            seen[key] = key_node
        return super().construct_mapping(node, deep)


def read_yaml(path: str | os.PathLike, error: type[Exception]) -> Any:
    """A YAML file's data; ``error`` with a one-line message naming the file."""
    try:
        with open(path, encoding="utf-8") as fh:
            return yaml.load(fh, Loader=_UniqueKeys)     # (a SafeLoader)
    except OSError as exc:
        raise error(f"{path}: {exc.strerror or exc}") from None
    except yaml.MarkedYAMLError as exc:
        # PyYAML's marks are 0-based; editors and compilers count from 1.
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise error(f"{where}: not valid YAML ({exc.problem or exc.context or 'syntax error'})") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        from .capture import looks_like_a_capture
        if looks_like_a_capture(path):
            raise error(f"{path}: a capture, not YAML: the capture comes last (chc run CHAIN CAPTURE, "
                        "chc check CHAIN SCENARIO CAPTURE)") from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise error(f"{path}: not valid YAML ({first})") from None


def load_spec(path: str | os.PathLike) -> Chain:
    """Read, validate and compile a YAML chain spec (an operator's own NF module is
    looked for beside it too)."""
    raw = read_yaml(path, SpecError)
    try:
        return parse_spec(raw, os.path.dirname(os.path.abspath(path)))
    except SpecError as exc:
        raise SpecError(f"{path}: {exc}") from None


def parse_spec(raw: Any, home: str | None = None) -> Chain:
    """Validate a spec given as Python data and compile it; ``home``: where a relative
    ``nf: FILE.py:Class`` is, and a directory ``nf: module:Class`` is imported from too."""
    if not isinstance(raw, dict):
        raise SpecError("the spec must be a mapping with 'vertices' and 'edges'")
    known = {"name", "input", "vertices", "edges", "offpath", "roots"}
    for key in raw:
        if key not in known:
            raise SpecError(f"{key}: unknown top-level field (known: {', '.join(sorted(known))})")
    name = raw.get("name", "chain")
    if not isinstance(name, str):
        raise SpecError("name: must be a string")
    policies = _policies(raw.get("input"))
    vertices = _vertices(raw.get("vertices"), home)
    for src, dst in _edges(raw.get("edges"), vertices, "edges"):
        if dst in vertices[src].successors:
            raise SpecError(f"edges: duplicate edge {src} -> {dst}")
        vertices[src].successors.append(dst)
    _offpath(raw.get("offpath"), vertices)
    roots = raw.get("roots", 1)
    if not isinstance(roots, int) or isinstance(roots, bool) or not 1 <= roots <= 64:
        raise SpecError(f"roots: must be an integer from 1 to 64, got {roots!r}")
    chain = compile_chain(name, vertices, policies)
    chain.roots = roots
    return chain


def _policies(raw: Any) -> dict[str, str]:
    out = {k: v[0] for k, v in POLICIES.items()}
    if raw is None:
        return out
    if not isinstance(raw, dict):
        raise SpecError("input: must be a mapping of policies")
    for key, value in raw.items():
        if key not in POLICIES:
            raise SpecError(f"input.{key}: unknown policy (known: {', '.join(POLICIES)})")
        if value not in POLICIES[key]:
            raise SpecError(f"input.{key}: expected one of {', '.join(POLICIES[key])}, got {value!r}")
        out[key] = value
    return out


def _vertices(raw: Any, home: str | None = None) -> dict[str, Vertex]:
    if not isinstance(raw, dict) or not raw:
        raise SpecError("vertices: must be a non-empty mapping of vertex name -> {nf, config, parallelism}")
    out: dict[str, Vertex] = {}
    for name, body in raw.items():
        where = f"vertices.{name}"
        if not isinstance(name, str) or not _NAME.match(name):
            raise SpecError(f"{where}: vertex names are letters, digits, '_' and '-'")
        if not isinstance(body, dict):
            raise SpecError(f"{where}: must be a mapping with at least 'nf'")
        for key in body:
            if key not in ("nf", "config", "parallelism", "match", "scaling"):
                raise SpecError(f"{where}.{key}: unknown field (known: config, match, nf, parallelism, scaling)")
        if "nf" not in body:
            raise SpecError(f"{where}.nf: missing (the NF type; known: {', '.join(sorted(REGISTRY))}; "
                            f"or your own: {OWN_NF})")
        par = check_parallelism(body.get("parallelism", 1), f"{where}.parallelism")
        nf_cls = resolve_nf(body["nf"], f"{where}.nf", home)
        try:
            config = build_config(nf_cls, body.get("config"), f"{where}.config")
        except ConfigError as exc:
            raise SpecError(str(exc)) from None
        out[name] = Vertex(name, nf_cls, config, par, match=_match(body.get("match"), f"{where}.match"),
                           scaling=_scaling(body.get("scaling"), f"{where}.scaling", par))

    return out


OWN_NF = "module:Class or path/to/file.py:Class"


def resolve_nf(kind: Any, where: str, home: str | None = None) -> type[NF]:
    """A shipped NF by name, or an operator's: ``module:Class`` (importable, or a module
    beside the spec) or ``FILE.py:Class`` (relative to the spec).  Imported by module
    name, its directory put on ``sys.path``: the proc runtime's workers (which get the
    coordinator's ``sys.path``) import it again by the same name."""
    if isinstance(kind, str) and kind in REGISTRY:
        return REGISTRY[kind]
    if not isinstance(kind, str) or kind.count(":") != 1 or not all(kind.split(":")):
        raise SpecError(f"{where}: unknown NF {kind!r} (known: {', '.join(sorted(REGISTRY))}; "
                        f"or your own: {OWN_NF})")
    ref, attr = kind.split(":")
    path = None
    if ref.endswith(".py"):
        path = ref if os.path.isabs(ref) or home is None else os.path.join(home, ref)
        if not os.path.isfile(path):
            raise SpecError(f"{where}: {path}: no such file")
        _importable(os.path.dirname(os.path.abspath(path)))
        ref = os.path.basename(path)[:-3]
    elif home is not None:
        _importable(home)
    try:
        module = importlib.import_module(ref)
    except Exception as exc:        # an operator's module may fail in any way on import
        raise SpecError(f"{where}: cannot import {ref!r} ({type(exc).__name__}: {exc})") from None
    found = getattr(module, "__file__", None)
    if path is not None and (found is None or not os.path.samefile(found, path)):
        # (imported by its name, so another module of that name wins: one from Python or
        # an installed package, or another file of that name an earlier vertex named)
        raise SpecError(f"{where}: {path}: the module name {ref!r} is taken by {found or 'a built-in module'}; "
                        "rename the file")
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, NF)):
        raise SpecError(f"{where}: {kind} is not an NF class (a subclass of chc.nf.NF)"
                        if cls is not None else f"{where}: module {ref!r} has no {attr!r}")
    return cls


def _importable(directory: str) -> None:
    if directory not in sys.path:
        sys.path.append(directory)


def _scaling(raw: Any, where: str, parallelism: int) -> ScalingPolicy | None:
    if raw is None:
        return None
    from .core.manager import PolicyError, parse_policy
    try:
        policy = parse_policy(raw, where, MAX_PARALLELISM)
    except PolicyError as exc:
        raise SpecError(str(exc)) from None
    if not policy.min <= parallelism <= policy.max:
        raise SpecError(f"{where}: the vertex starts with {parallelism} instances, outside "
                        f"min..max ({policy.min}..{policy.max})")
    return policy


def _match(raw: Any, where: str) -> Any:
    """Traffic class of an entry vertex: ``other`` or ``{ports: [..]}``."""
    if raw is None or raw == "other":
        return raw
    if not isinstance(raw, dict) or set(raw) != {"ports"}:
        raise SpecError(f"{where}: expected 'other' or {{ports: [...]}}, got {raw!r}")
    ports = raw["ports"]
    if not isinstance(ports, list) or not ports or not all(
            isinstance(p, int) and not isinstance(p, bool) and 0 < p < 65536 for p in ports):
        raise SpecError(f"{where}.ports: expected a non-empty list of port numbers, got {ports!r}")
    return frozenset(ports)


def _edge(raw: Any, where: str) -> tuple[Any, Any]:
    if isinstance(raw, str) and "->" in raw:
        a, b = (s.strip() for s in raw.split("->", 1))
        return a, b
    if isinstance(raw, (list, tuple)) and len(raw) == 2:
        return raw[0], raw[1]
    if isinstance(raw, dict) and set(raw) - {"tap"} == {"from", "to"}:
        return raw["from"], raw["to"]
    raise SpecError(f"{where}: an edge is 'a -> b', [a, b] or {{from: a, to: b}}, got {raw!r}")


def _edges(raw: Any, vertices: dict[str, Vertex], field: str) -> list[tuple[str, str]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise SpecError(f"{field}: must be a list of edges")
    out = []
    for i, item in enumerate(raw):
        where = f"{field}[{i}]"
        src, dst = _edge(item, where)
        for end in (src, dst):
            if end not in vertices:
                raise SpecError(f"{where}: unknown vertex {end!r} (known: {', '.join(vertices)})")
        if src == dst:
            raise SpecError(f"{where}: a vertex cannot feed itself")
        out.append((src, dst))
    return out


def _offpath(raw: Any, vertices: dict[str, Vertex]) -> None:
    edges = _edges(raw, vertices, "offpath")
    for i, (src, dst) in enumerate(edges):
        tap = raw[i].get("tap", "output") if isinstance(raw[i], dict) else "output"
        if tap not in ("input", "output"):
            raise SpecError(f"offpath[{i}].tap: expected 'input' or 'output', got {tap!r}")
        target = vertices[dst]
        if target.successors:
            raise SpecError(f"offpath[{i}]: off-path vertex {dst!r} cannot have on-path successors")
        target.offpath = True
        (vertices[src].taps_in if tap == "input" else vertices[src].taps_out).append(dst)


def compile_chain(name: str, vertices: dict[str, Vertex], policies: dict[str, str]) -> Chain:
    """Check the graph and order it: one entry vertex, acyclic, off-path sinks."""
    _check_acyclic(vertices)
    fed = {d for v in vertices.values() for d in v.successors}
    for v in vertices.values():
        if v.offpath and v.name in fed:
            raise SpecError(f"vertices.{v.name}: is both on-path (an edge leads to it) and off-path")
    entries = [n for n, v in vertices.items() if n not in fed and not v.offpath]
    if not entries:
        raise SpecError("edges: the chain needs an entry vertex (one with no incoming edge), found none")
    _check_entries(vertices, entries)
    order = _topological(vertices, entries)
    unreachable = [n for n in vertices if n not in order]
    if unreachable:
        raise SpecError(f"vertices.{unreachable[0]}: not reachable from an entry vertex")
    return Chain(name, {n: vertices[n] for n in order}, entries, policies)


def _check_entries(vertices: dict[str, Vertex], entries: list[str]) -> None:
    """One entry, or several that split traffic by class (``match``), one of them
    ``other`` so that every packet enters the chain."""
    for n, v in vertices.items():
        if v.match is not None and n not in entries:
            raise SpecError(f"vertices.{n}.match: only entry vertices (no incoming edge) take a match")
    if len(entries) == 1:
        return
    loose = [n for n in entries if vertices[n].match is None]
    if loose:
        raise SpecError(f"vertices.{loose[0]}: several entry vertices ({', '.join(entries)}) need a "
                        f"'match' each, to split traffic between them")
    if not any(vertices[n].match == "other" for n in entries):
        raise SpecError(f"vertices.{entries[0]}.match: one entry vertex must match 'other' "
                        f"so that every packet enters the chain")


def _check_acyclic(vertices: dict[str, Vertex]) -> None:
    _topological(vertices, list(vertices))


def _topological(vertices: dict[str, Vertex], starts: list[str]) -> list[str]:
    """Vertices reachable from ``starts`` in topological order; SpecError on a cycle."""
    order: list[str] = []
    state: dict[str, int] = {}       # 1 = on the DFS stack, 2 = done

    def visit(n: str, path: list[str]) -> None:
        if state.get(n) == 2:
            return
        if state.get(n) == 1:
            cycle = " -> ".join(path[path.index(n):] + [n])
            raise SpecError(f"edges: cycle {cycle}")
        state[n] = 1
        v = vertices[n]
        for m in v.successors + v.taps_in + v.taps_out:
            visit(m, path + [n])
        state[n] = 2
        order.append(n)

    for start in starts:
        visit(start, [])
    return order[::-1]
