"""What a running chain is doing, sampled: the numbers behind ``chc serve``'s status
line, its Prometheus metrics and its dashboard.

Theory of operation
-------------------
The runtime already counts what a watcher wants: every instance its packets in,
out and dropped, its input queue and its alerts; every root its packet log; the
runtime's ``events_log`` every scale-out, move, clone and failover (§3, §5).
An :class:`Observer` reads them on the loop's own thread, between batches, so it
never sees the runtime half-way through a step and needs no lock:

* after every batch, :meth:`Observer.batch` records the batch's processing time
  and its packets' latency (wall time from a packet's arrival -- its scheduled
  time in a replay, its receipt on a port -- to the end of the batch that took
  it through the chain);
* every ``interval`` seconds, :meth:`Observer.sample` turns the counters into a
  :data:`Sample`, a JSON-ready dict: per-instance packets/s over the interval
  (differences of the counters), throughput in and out, latency mean and max
  over the interval, queue lengths, the packet log, the store's round trips, and
  the alerts and events that appeared since the previous sample.

Consumers take samples and never touch the runtime: the status line formats
one (:func:`status_line`), the dashboard publishes them, the Prometheus
collector reads :attr:`Observer.rates` and the alert and event counts.  The data
path pays one call per batch.

A live run's mirror vertices (the reverse direction, :mod:`chc.live`) are
reported under their vertex's name with ``direction: "reverse"``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from typing import Any

__all__ = ["Observer", "Sample", "dumps", "graph", "status_line"]

Sample = dict[str, Any]
Key = tuple[str, str, str]          # vertex, instance, direction


def _jsonable(value: Any) -> Any:
    """Events carry virtual times (inf after a drain) and the odd tuple: make them JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


def graph(runtime: Any) -> dict[str, Any]:
    """The logical chain the runtime runs, for drawing: vertices with their NF,
    column (longest path from the root) and whether they are off-path; edges on
    the path and off-path taps.  A live run's mirrors are left out (they share
    their vertex's box)."""
    mirrors = getattr(runtime, "mirrors", {})
    vs = {n: v for n, v in runtime.chain.vertices.items() if n not in mirrors}
    edges = [{"from": "root", "to": e, "kind": "edge"} for e in runtime.chain.entries if e in vs]
    for name, v in vs.items():
        edges += [{"from": name, "to": s, "kind": "edge"} for s in v.successors if s in vs]
        edges += [{"from": name, "to": t, "kind": "tap"} for t in v.taps_in + v.taps_out if t in vs]
    column = {"root": 0}
    for _ in range(len(vs) + 1):                # longest path; vertices are few
        for e in edges:
            if e["from"] in column:
                column[e["to"]] = max(column.get(e["to"], 0), column[e["from"]] + 1)
    return {"chain": runtime.chain.name, "model": runtime.model,
            "vertices": [{"name": n, "nf": v.nf.kind, "offpath": v.offpath, "column": column.get(n, 1)}
                         for n, v in vs.items()],
            "edges": edges}


class Observer:
    """Samples of one running chain (see module doc)."""

    def __init__(self, runtime: Any, interval: float = 1.0, now: float | None = None) -> None:
        self.runtime = runtime
        self.interval = interval
        self.started = time.monotonic() if now is None else now
        self.next_at = self.started + interval
        self.alert_counts: dict[tuple[str, str], int] = {}     # (vertex, kind) -> alerts
        self.event_counts: dict[str, int] = {}                 # kind -> events
        self.rates: dict[Key, float] = {}                      # packets in per second, last interval
        self.latest: Sample | None = None
        self._seen_alerts: dict[int, int] = {}                 # id(ctx) -> alerts already taken
        self._seen_events = 0
        self._last_t = self.started
        self._last_counts = self._packets_in()
        self._last_in = self._entered()
        self._last_out = runtime.packets_out
        self._lat_sum = 0.0
        self._lat_n = 0
        self._lat_max = 0.0
        self.batches = 0

    # -- the loop's side ---------------------------------------------------------------
    def batch(self, frames: int, latency_sum: float, latency_max: float) -> None:
        """A batch of ``frames`` went through the chain; their latencies (s) summed and max."""
        self.batches += 1
        self._lat_sum += latency_sum
        self._lat_n += frames
        self._lat_max = max(self._lat_max, latency_max)

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def sample(self, now: float | None = None) -> Sample:
        """The counters since the last sample (see module doc); also kept as ``latest``."""
        now = time.monotonic() if now is None else now
        rt = self.runtime
        span = max(now - self._last_t, 1e-9)
        counts = self._packets_in()
        before = self._last_counts
        self.rates = {k: (v - before.get(k, 0)) / span for k, v in counts.items()}
        entered, out = self._entered(), rt.packets_out
        instances = []
        for key, inst, state in self.instances():
            instances.append({"vertex": key[0], "instance": int(key[1]), "direction": key[2], "state": state,
                              "packets_in": inst.packets_in, "packets_out": inst.packets_out,
                              "dropped": inst.dropped, "queue": len(inst.queue),
                              "pps": round(self.rates.get(key, 0.0), 1)})
        alerts = self._new_alerts()
        events = self._new_events()
        store = rt.store_stats()
        sample: Sample = {
            "t": round(now - self.started, 3), "time": time.time(),
            "packets_in": entered, "packets_out": out, "dropped": self._dropped(),
            "pps_in": round((entered - self._last_in) / span, 1),
            "pps_out": round((out - self._last_out) / span, 1),
            "latency_ms": ({"mean": round(1e3 * self._lat_sum / self._lat_n, 3),
                            "max": round(1e3 * self._lat_max, 3)} if self._lat_n else None),
            "log": sum(len(r.log) for r in rt.roots),
            "store": {k: store[k] for k in ("round_trips", "blocking_ops", "nonblocking_ops", "cache_hits")},
            "alerts_total": sum(self.alert_counts.values()),
            "instances": instances, "alerts": alerts, "events": events,
        }
        self._last_t, self._last_counts, self._last_in, self._last_out = now, counts, entered, out
        self._lat_sum, self._lat_n, self._lat_max = 0.0, 0, 0.0
        while self.next_at <= now:
            self.next_at += self.interval
        self.latest = sample
        return sample

    # -- reading the runtime -------------------------------------------------------------
    def instances(self) -> Iterator[tuple[Key, Any, str]]:
        rt = self.runtime
        mirrors = getattr(rt, "mirrors", {})
        retired, retiring, dead = rt.retired, rt.retiring, rt.dead
        for name, insts in rt.instances.items():
            vertex, direction = (mirrors[name], "reverse") if name in mirrors else (name, "forward")
            for inst in insts:
                ident = (name, inst.instance_id)
                state = ("dead" if ident in dead else "retired" if ident in retired
                         else "retiring" if ident in retiring else "active")
                yield (vertex, str(inst.instance_id), direction), inst, state

    def _packets_in(self) -> dict[Key, int]:
        return {k: inst.packets_in for k, inst, _ in self.instances()}

    def _entered(self) -> int:
        return sum(r.packets_in for r in self.runtime.roots)

    def _dropped(self) -> int:
        rt = self.runtime
        vertices = rt.chain.vertices
        return sum(r.dropped for r in rt.roots) + sum(
            i.dropped for name, insts in rt.instances.items() if not vertices[name].offpath for i in insts)

    def _new_alerts(self) -> list[dict]:
        out = []
        for _key, inst, _state in self.instances():
            alerts = inst.ctx.alerts
            seen = min(self._seen_alerts.get(id(inst.ctx), 0), len(alerts))   # a clone pair may take some back
            for a in alerts[seen:]:
                self.alert_counts[(a.vertex, a.kind)] = self.alert_counts.get((a.vertex, a.kind), 0) + 1
                out.append(_jsonable(a.as_json()))
            self._seen_alerts[id(inst.ctx)] = len(alerts)
        out.sort(key=lambda a: a["clock"])
        return out

    def _new_events(self) -> list[dict]:
        log = self.runtime.events_log
        fresh = log[self._seen_events:]
        self._seen_events = len(log)
        for e in fresh:
            self.event_counts[e["kind"]] = self.event_counts.get(e["kind"], 0) + 1
        return [_jsonable(e) for e in fresh]


def status_line(s: Sample) -> str:
    """One line for stderr: time, totals, rates, queues, latency, alerts."""
    lat = s["latency_ms"]
    queued = sum(i["queue"] for i in s["instances"])
    active = sum(i["state"] == "active" and i["direction"] == "forward" for i in s["instances"])
    return (f"chc serve: {s['t']:,.0f} s, {s['packets_in']:,} in ({s['pps_in']:,.0f}/s), "
            f"{s['packets_out']:,} out, {s['dropped']:,} dropped, instances {active}, queued {queued:,}, "
            f"log {s['log']:,}, latency {'-' if lat is None else format(lat['mean'], '.2f')} ms, "
            f"{s['alerts_total']:,} alert{'' if s['alerts_total'] == 1 else 's'}")


def dumps(sample: Sample) -> str:
    """A sample as compact JSON (the dashboard's wire format)."""
    return json.dumps(sample, separators=(",", ":"))
