"""The run summary: a stable JSON contract, a readable text form, the state digest.

JSON keys (``chc run --summary-json``), stable for scripts:

``chain``, ``model``, ``packets_in``, ``packets_out``, ``dropped``, ``malformed``,
``non_ip``, ``bypassed``, ``nf_errors``, ``elapsed_s``, ``pps``,
``vertices`` (name -> ``nf``, ``instances``, ``packets_in``, ``packets_out``,
``dropped``, ``alerts``), ``alerts`` (list of ``vertex``, ``instance``, ``kind``,
``host``, ``packet_index``, ``clock`` and optional ``detail``),
``state_digest`` (SHA-256 of every NF's final logical state in canonical form),
``capture`` (``path``, ``format``, ``linktype``, ``truncated``, ``reason``, ``offset``,
``warnings``, ``filter``, ``filtered_out``, ``count``), ``partial`` and
``partial_reasons`` (the run saw only part of its input: a capture that stopped
early, or Ctrl-C),
``runtime`` (``sim`` or ``proc``), ``store`` (``backend``, ``model``, ``blocking_ops``, ``nonblocking_ops``,
``cache_hits``, ``round_trips``), ``log`` (``mode``, ``roots``, ``logged``,
``deleted``, ``remaining``, ``dropped_overflow``).

Logical state: per vertex and object, the union over instances of every key
whose value differs from the object's initial value.  In model ``T`` a shared
(cross-flow) object exists once per instance; when instances disagree on a key
the logical value is the list of per-instance values, which makes the
non-equivalence of ``T`` with parallelism > 1 visible in the digest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from .packet import describe_flow, ip_str


def canonical(value: Any, flows: bool = False) -> Any:
    """JSON-able canonical form: addresses printable, tuples as lists, maps sorted.
    ``flows``: connection keys (``chc.nf.FLOW``'s) as ``10.0.0.1:1234 <-> ...`` rather
    than hex (``--state-json``: for people; the digest keeps the hex)."""
    if isinstance(value, (bytes, bytearray)):
        if len(value) in (4, 16):
            return ip_str(bytes(value))
        if flows and len(value) in (13, 37):
            return describe_flow(bytes(value))
        return bytes(value).hex()
    if isinstance(value, (list, tuple)):
        return [canonical(v, flows) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {k: canonical(value[k], flows) for k in sorted(value)}
        items = [(canonical(k, flows), canonical(v, flows)) for k, v in value.items()]
        return [list(kv) for kv in sorted(items, key=lambda kv: json.dumps(kv[0], sort_keys=True))]
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (set, frozenset)):
        return sorted((canonical(v, flows) for v in value), key=lambda v: json.dumps(v, sort_keys=True))
    return value


def merge_states(per_instance: list[dict[str, dict]]) -> dict[str, dict]:
    """Logical state of one vertex from its instances' states (see module doc)."""
    merged: dict[str, dict] = {}
    for state in per_instance:
        for obj, entries in state.items():
            dst = merged.setdefault(obj, {})
            for key, value in entries.items():
                dst.setdefault(key, []).append(value)
    return {obj: {k: vs[0] if all(v == vs[0] for v in vs) else vs for k, vs in entries.items()}
            for obj, entries in merged.items() if entries}


class StateValueError(ValueError):
    """An NF's state holds a value chc cannot compare, digest or store."""


def state_digest(logical: dict[str, dict[str, dict]]) -> str:
    try:
        blob = json.dumps(canonical(logical), sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError):
        raise StateValueError(_unserializable(logical)) from None
    return hashlib.sha256(blob.encode()).hexdigest()


def _unserializable(logical: dict[str, dict[str, dict]]) -> str:
    """Which value of which object could not be digested (the rare path: searched for)."""
    for vertex, objects in logical.items():
        for obj, entries in objects.items():
            for key, value in (entries.items() if isinstance(entries, dict) else [(None, entries)]):
                bad = _innermost(value)
                if bad is not None:
                    at = "" if key is None else f"[{canonical(key)!r}]"
                    inside = "" if bad is value else f" inside its {type(value).__name__}"
                    return (f"{vertex}.{obj}{at} holds a {type(bad).__name__}{inside} ({bad!r:.60}), which chc "
                            "cannot compare or store: state values are None, bool, int, float, str, bytes, and "
                            "lists, tuples, dicts and sets of them (docs/nf-api.md)")
    return "the chain's state holds a value chc cannot compare or store (docs/nf-api.md)"


REDIS_VALUES = "None, bool, int (64 bits), float, str, bytes, and lists, tuples and dicts of them"


def unstorable_error(key: Any, error: Any, store: str, why: str = "") -> str:
    """``state_error`` for a value the ``store`` refused to hold (``error``, an
    :class:`~chc.core.store.UnstorableValue`, of an update of the object at ``key``, an
    ObjectKey; ``why``: what refused it and what it takes, if not the store): named as a
    value chc cannot digest is."""
    at = f"{key.vertex}.{key.obj}" + ("" if key.key is None else f"[{canonical(key.key)!r}]")
    value, part = error.value, error.part
    inside = "" if part is value else f" inside its {type(value).__name__}"
    held = "holds" if error.what == "value" else f"was updated with {error.what} holding"
    why = why or f"the {store} store cannot hold: its values are {REDIS_VALUES}"
    return f"{at} {held} a {type(part).__name__}{inside} ({part!r:.60}), which {why} (docs/nf-api.md)"


def _innermost(value: Any) -> Any:
    """The innermost part of ``value`` chc cannot digest (None: it can)."""
    try:
        json.dumps(canonical(value))
        return None
    except (TypeError, ValueError):
        pass
    parts = (list(value.keys()) + list(value.values()) if isinstance(value, dict)
             else list(value) if isinstance(value, (list, tuple, set, frozenset)) else [])
    return next((bad for bad in map(_innermost, parts) if bad is not None), value)


@dataclasses.dataclass
class Summary:
    chain: str
    model: str
    packets_in: int = 0
    packets_out: int = 0
    dropped: int = 0
    malformed: int = 0
    non_ip: int = 0
    bypassed: int = 0
    nf_errors: int = 0
    elapsed_s: float = 0.0
    vertices: dict[str, dict] = dataclasses.field(default_factory=dict)
    alerts: list[dict] = dataclasses.field(default_factory=list)
    state_digest: str = ""
    state_error: str | None = None      # why there is no digest (a value chc cannot digest)
    capture: dict = dataclasses.field(default_factory=dict)
    store: dict = dataclasses.field(default_factory=dict)
    log: dict = dataclasses.field(default_factory=dict)
    errors: list[str] = dataclasses.field(default_factory=list)
    events: list[dict] = dataclasses.field(default_factory=list)   # scaling and moves (§5.1)
    partial: bool = False
    runtime: str = "sim"            # which runtime ran the chain (sim, proc)
    partial_reasons: list[str] = dataclasses.field(default_factory=list)

    def mark_partial(self, reason: str) -> None:
        """The run processed only part of its input, for ``reason``."""
        self.partial = True
        self.partial_reasons.append(reason)

    @property
    def pps(self) -> float:
        return self.packets_in / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def digest_state(self, logical: dict[str, dict[str, dict]]) -> None:
        """``state_digest`` of the run's logical state; or, when the state holds a value chc
        cannot digest, ``state_error`` saying which (the rest of the summary still stands)."""
        try:
            self.state_digest = state_digest(logical)
        except StateValueError as exc:
            self.state_digest, self.state_error = "", str(exc)

    def no_state(self, reason: str) -> None:
        """No digest: the store refused a state value (``reason``: which); the first reason stands."""
        if self.state_error is None:
            self.state_digest, self.state_error = "", reason

    def as_json(self) -> dict:
        out = dataclasses.asdict(self)
        out["pps"] = round(self.pps, 1)
        out["elapsed_s"] = round(self.elapsed_s, 6)
        return out

    def _render_scaling(self) -> list[str]:
        """Per scaled vertex: its instance counts over time, scope and imbalance."""
        out = []
        for name, v in self.vertices.items():
            sizes = v.get("sizes") or []
            if len(sizes) < 2 and "imbalance" not in v:
                continue
            line = f"  {name}: instances {' -> '.join(map(str, sizes))}, scope {v['scope']}"
            if "imbalance" in v:
                line += f", imbalance {v['imbalance']:.2f} (peak {v['peak_imbalance']:.2f})"
            out.append(line)
        errors: dict[str, list[str]] = {}
        for e in self.events:
            if e["kind"] == "policy-error":
                errors.setdefault(e["vertex"], []).append(e.get("error", ""))
        # (a policy that failed at every interval left the vertex at its size with no word: a trial)
        out += [f"  {v}: its policy failed {len(errs)} time{'s' if len(errs) > 1 else ''}, the vertex kept its "
                f"size; first: {errs[0]}" for v, errs in errors.items()]
        if not out:
            return out
        changes = [e for e in self.events if "barrier_clock" in e]      # the proc runtime's (one per change)
        if changes:
            n = len(changes)
            head = (f"scaling: {n} change{'s' * (n != 1)}, {sum(e['handed_over'] for e in changes)} hand-overs, "
                    f"input paused {sum(e['pause_s'] for e in changes):.2f} s")
        else:
            moves = [e for e in self.events if e["kind"] == "move"]
            head = (f"scaling: {len(moves)} handovers, "
                    f"{sum(e.get('buffered', 0) for e in moves):,} packets buffered meanwhile")
        return ["", head, *out]

    def _render_failovers(self) -> list[str]:
        """The proc runtime's failovers (§5.4): what failed, how, and what recovery did."""
        out = []
        skipped = [f"  {e['process']}: {e['reason']}" for e in self.events if e["kind"] == "kill-skipped"]
        for e in self.events:
            if "failover_process" not in e:
                continue
            what = (f"re-executed {e['re_executed']:,} logged updates from checkpoint {e['checkpoint']}"
                    if e["kind"] == "store-failover" else
                    e["interrupted"] if "interrupted" in e else
                    f"replayed {e.get('replayed', 0):,} packets")
            asked = e.get("kill_asked_at")
            at = (f" (the kill named {asked:,}: kills land between the coordinator's input batches)"
                  if isinstance(asked, int) else "")
            out.append(f"  {e['process']} {e['how']} at input packet {e.get('killed_at_packet', e['packet']):,}{at}: "
                       f"{e['failover_process']} took over, {what}"
                       + (f", recovery {e['recovery_s'] * 1000:.0f} ms" if "recovery_s" in e else ""))
        return ((["", f"failovers ({len(out)}):", *out] if out else [])
                + (["", f"kills not done ({len(skipped)}):", *skipped] if skipped else []))

    def render(self) -> str:
        """Human-readable summary for the terminal."""
        lines = [f"PARTIAL: {reason}" for reason in self.partial_reasons] + [
            f"chain {self.chain!r} (model {self.model}"
            f"{'' if self.runtime == 'sim' else f', runtime {self.runtime}'}): {self.packets_in:,} "
            f"packet{'' if self.packets_in == 1 else 's'} in, "
            f"{self.packets_out:,} out, {self.dropped:,} dropped, {self.malformed:,} malformed, "
            f"{self.non_ip:,} non-IP",
            f"{self.elapsed_s:.2f} s, {self.pps:,.0f} packets/s",
            "",
            f"  {'vertex':<14}{'nf':<10}{'inst':>5}{'in':>12}{'out':>12}{'dropped':>10}{'alerts':>8}",
        ]
        for name, v in self.vertices.items():
            lines.append(f"  {name:<14}{v['nf']:<10}{v['instances']:>5}{v['packets_in']:>12,}"
                         f"{v['packets_out']:>12,}{v['dropped']:>10,}{v['alerts']:>8,}")
        lines += self._render_scaling()
        lines += self._render_failovers()
        if self.alerts:
            from .core.root import clock_text  # (here: the reference imports this module, never core)
            lines += ["", f"alerts ({len(self.alerts)}):"]
            shown = self.alerts[:20]
            for a in shown:
                # (a root's id is in its clocks' high bits: root 1's show as 1:seq, not 2^48 + seq)
                lines.append(f"  clock {clock_text(a['clock'], grouped=True):>10}  {a['vertex']:<12}"
                             f"{a['kind']:<22}{a['host']}")
            if len(self.alerts) > len(shown):
                lines.append(f"  ... {len(self.alerts) - len(shown)} more (see --summary-json)")
        if self.nf_errors:
            lines += ["", f"NF errors: {self.nf_errors:,} packets dropped or updates refused; first: {self.errors[0]}"]
        for w in self.capture.get("warnings", []):
            lines.append(f"warning: {w}")
        st = self.store
        if st and st.get("backend") != "local":
            rt = st["round_trips"] / self.packets_in if self.packets_in else 0.0
            lines += ["", f"store {st['backend']}: {st['blocking_ops']:,} blocking ops, "
                          f"{st['nonblocking_ops']:,} non-blocking, {st['cache_hits']:,} cache hits, "
                          f"{st['round_trips']:,} round trips ({rt:.3f} per packet)"]
        lg = self.log
        if lg:
            lines.append(f"packet log ({lg['mode']}): {lg['logged']:,} logged, {lg['deleted']:,} deleted, "
                         f"{lg['remaining']:,} remaining, {lg['dropped_overflow']:,} dropped on overflow")
        lines += ["", f"state digest {self.state_digest}" if self.state_error is None
                  else "state digest unavailable: the state holds a value chc cannot digest or store (below)"]
        return "\n".join(lines)
