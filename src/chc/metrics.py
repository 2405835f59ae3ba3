"""Prometheus metrics of a live run (``chc run --live ... --metrics-port P``).

Theory of operation
-------------------
The counters a live run needs already exist: every instance counts its packets
in, out and dropped, keeps its input queue and its alerts, every root its
packet log, every port its frames.  :class:`LiveMetrics` exposes them through
a ``prometheus_client`` collector that reads them when Prometheus scrapes (on
the HTTP server's thread; it only reads integers and lengths, which the
runtime's thread changes between batches), so the data path pays nothing for
them.  What only the loop knows is recorded by :meth:`LiveMetrics.batch`, once
per batch: the batch's processing time (a histogram), the instances' packet
rates (packets in over the last second or more, a gauge), and alerts by kind.

A vertex's mirror (the reverse direction, :mod:`chc.live`) is reported under
the vertex's name with ``direction="reverse"``.

Metrics: ``chc_instance_packets_in_total``, ``chc_instance_packets_out_total``,
``chc_instance_dropped_total``, ``chc_instance_queue_length``,
``chc_instance_packets_per_second`` (labels ``vertex``, ``instance``,
``direction``); ``chc_batch_processing_seconds`` (histogram);
``chc_alerts_total`` (``vertex``, ``kind``); ``chc_packet_log_size``;
``chc_port_frames_received_total``, ``chc_port_frames_sent_total``,
``chc_port_send_errors_total`` (``side``, ``interface``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["LiveMetrics", "parse_listen"]

_LABELS = ["vertex", "instance", "direction"]
_BUCKETS = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)


def parse_listen(text: str) -> tuple[str, int]:
    """``PORT`` (on 127.0.0.1) or ``ADDR:PORT``; ValueError otherwise."""
    addr, _, port = text.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--metrics-port {text!r}: expected PORT or ADDR:PORT")
    return addr.strip("[]") or "127.0.0.1", int(port)


class LiveMetrics(Collector):
    """The metrics of one live run (see module doc)."""

    def __init__(self, runtime: Any, ports: dict[str, Any]) -> None:
        self.runtime = runtime
        self.ports = ports
        self.registry = CollectorRegistry()
        self.batch_seconds = Histogram("chc_batch_processing_seconds",
                                       "time to push one batch of frames through the chain",
                                       buckets=_BUCKETS, registry=self.registry)
        self.alerts = Counter("chc_alerts", "alerts raised, by vertex and kind", ["vertex", "kind"],
                              registry=self.registry)
        self.registry.register(self)
        self._seen: dict[int, int] = {}             # id(ctx) -> alerts already counted
        self._rates: dict[tuple[str, str, str], float] = {}
        self._last = (time.monotonic(), self._packets_in())
        self.server: Any = None

    def serve(self, addr: str, port: int) -> None:
        self.server, _thread = start_http_server(port, addr, registry=self.registry)

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    # -- the loop's side -----------------------------------------------------------------
    def batch(self, frames: int, seconds: float) -> None:
        """One batch of ``frames`` took ``seconds``; count new alerts, update rates."""
        self.batch_seconds.observe(seconds)
        for inst in self._instances():
            alerts = inst[3].ctx.alerts
            seen = self._seen.get(id(inst[3].ctx), 0)
            for a in alerts[seen:]:
                self.alerts.labels(a.vertex, a.kind).inc()
            self._seen[id(inst[3].ctx)] = len(alerts)
        now = time.monotonic()
        then, before = self._last
        if now - then >= 1.0:
            counts = self._packets_in()
            self._rates = {k: (v - before.get(k, 0)) / (now - then) for k, v in counts.items()}
            self._last = (now, counts)

    # -- the scrape's side ----------------------------------------------------------------
    def _instances(self) -> Iterator[tuple[str, str, str, Any]]:
        rt = self.runtime
        mirrors = getattr(rt, "mirrors", {})
        for name, insts in rt.instances.items():
            vertex, direction = (mirrors[name], "reverse") if name in mirrors else (name, "forward")
            for inst in insts:
                yield vertex, str(inst.instance_id), direction, inst

    def _packets_in(self) -> dict[tuple[str, str, str], int]:
        return {(v, i, d): inst.packets_in for v, i, d, inst in self._instances()}

    def describe(self) -> Iterable[Any]:
        return []                                   # read at every scrape, nothing fixed

    def collect(self) -> Iterable[Any]:
        fams = {
            "packets_in": CounterMetricFamily("chc_instance_packets_in", "packets into an instance", labels=_LABELS),
            "packets_out": CounterMetricFamily("chc_instance_packets_out", "packets out of an instance",
                                               labels=_LABELS),
            "dropped": CounterMetricFamily("chc_instance_dropped", "packets an instance dropped", labels=_LABELS),
        }
        queue = GaugeMetricFamily("chc_instance_queue_length", "packets waiting in an instance's input queue",
                                  labels=_LABELS)
        rate = GaugeMetricFamily("chc_instance_packets_per_second",
                                 "packets into an instance per second, over the last second or more",
                                 labels=_LABELS)
        rates = self._rates
        for v, i, d, inst in self._instances():
            labels = [v, i, d]
            for attr, fam in fams.items():
                fam.add_metric(labels, getattr(inst, attr))
            queue.add_metric(labels, len(inst.queue))
            rate.add_metric(labels, rates.get((v, i, d), 0.0))
        yield from fams.values()
        yield queue
        yield rate
        log = GaugeMetricFamily("chc_packet_log_size", "packets logged at the roots, not yet done")
        log.add_metric([], sum(len(r.log) for r in self.runtime.roots))
        yield log
        names = [("received", "frames received from an interface"), ("sent", "frames sent on an interface"),
                 ("send_errors", "frames that could not be sent")]
        for key, doc in names:
            fam = CounterMetricFamily(f"chc_port_frames_{key}" if key != "send_errors" else "chc_port_send_errors",
                                      doc, labels=["side", "interface"])
            for side, port in self.ports.items():
                fam.add_metric([side, port.name], getattr(port, key))
            yield fam
