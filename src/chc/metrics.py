"""Prometheus metrics of a running chain (``chc serve`` / ``chc run --live`` with
``--metrics-port P``).

Theory of operation
-------------------
The counters already exist: every instance counts its packets in, out and
dropped and keeps its input queue, every port its frames; the
:class:`~chc.observe.Observer` of the run samples the rest once a second on the
loop's thread (rates, alerts and scaling / clone / recovery events by kind, the
store's round trips).  :class:`LiveMetrics` exposes both through a
``prometheus_client`` collector that reads them when Prometheus scrapes (on the
HTTP server's thread; it only reads integers, lengths and the observer's latest
figures, which the loop's thread replaces whole), so the data path pays nothing
for them but one histogram observation per batch (:meth:`LiveMetrics.batch`) and
one per instance batch (:meth:`LiveMetrics.instance_batch`, timed by the runtime
around the instance's ``run``).

A vertex's mirror (the reverse direction, :mod:`chc.live`) is reported under
the vertex's name with ``direction="reverse"``.

Metrics: ``chc_instance_packets_in_total``, ``chc_instance_packets_out_total``,
``chc_instance_dropped_total``, ``chc_instance_queue_length``,
``chc_instance_packets_per_second``, ``chc_instance_batch_seconds`` (histogram
of an instance's processing time per batch; labels ``vertex``, ``instance``,
``direction``); ``chc_batch_processing_seconds`` (histogram);
``chc_alerts_total`` (``vertex``, ``kind``); ``chc_events_total`` (``kind``:
``scale-out``, ``move``, ``clone``, ``failover``, ...); ``chc_packet_log_size``;
``chc_store_round_trips_total``, ``chc_store_ops_total`` (``kind``: ``blocking``,
``nonblocking``), ``chc_store_cache_hits_total``;
``chc_port_frames_received_total``, ``chc_port_frames_sent_total``,
``chc_port_send_errors_total`` (``side``, ``interface``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .cliargs import parse_listen
from .observe import Observer

__all__ = ["LiveMetrics", "parse_listen"]

_LABELS = ["vertex", "instance", "direction"]
_BUCKETS = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)


class LiveMetrics(Collector):
    """The metrics of one running chain (see module doc); ``ports`` maps a side to
    its :class:`~chc.live.LivePort` (none for a replay)."""

    def __init__(self, observer: Observer, ports: dict[str, Any]) -> None:
        self.observer = observer
        self.runtime = observer.runtime
        self.ports = ports
        self.registry = CollectorRegistry()
        self.batch_seconds = Histogram("chc_batch_processing_seconds",
                                       "time to push one batch of frames through the chain",
                                       buckets=_BUCKETS, registry=self.registry)
        self.instance_seconds = Histogram("chc_instance_batch_seconds",
                                          "time an instance took to process one batch of its input",
                                          labelnames=_LABELS, buckets=_BUCKETS, registry=self.registry)
        self._children: dict[tuple[str, int], Any] = {}
        self.runtime.on_instance_batch = self.instance_batch
        self.registry.register(self)
        self.server: Any = None

    def serve(self, addr: str, port: int) -> None:
        self.server, _thread = start_http_server(port, addr, registry=self.registry)

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def batch(self, seconds: float) -> None:
        """The loop pushed one batch through the chain in ``seconds``."""
        self.batch_seconds.observe(seconds)

    def instance_batch(self, name: str, instance: int, packets: int, seconds: float) -> None:
        """``name[instance]`` processed a batch of ``packets`` in ``seconds``."""
        child = self._children.get((name, instance))
        if child is None:
            mirrors = getattr(self.runtime, "mirrors", {})
            vertex, direction = (mirrors[name], "reverse") if name in mirrors else (name, "forward")
            child = self._children[(name, instance)] = self.instance_seconds.labels(
                vertex, str(instance), direction)
        child.observe(seconds)

    # -- the scrape's side ----------------------------------------------------------------
    def _instances(self) -> Iterator[tuple[str, str, str, Any]]:
        for (v, i, d), inst, _state in self.observer.instances():
            yield v, i, d, inst

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
                                 "packets into an instance per second, over the observer's last interval",
                                 labels=_LABELS)
        obs = self.observer
        rates = obs.rates
        for v, i, d, inst in self._instances():
            labels = [v, i, d]
            for attr, fam in fams.items():
                fam.add_metric(labels, getattr(inst, attr))
            queue.add_metric(labels, len(inst.queue))
            rate.add_metric(labels, rates.get((v, i, d), 0.0))
        yield from fams.values()
        yield queue
        yield rate
        alerts = CounterMetricFamily("chc_alerts", "alerts raised, by vertex and kind", labels=["vertex", "kind"])
        for (vertex, kind), n in list(obs.alert_counts.items()):
            alerts.add_metric([vertex, kind], n)
        yield alerts
        events = CounterMetricFamily("chc_events", "scaling, move, clone and recovery events of the runtime, "
                                     "by kind", labels=["kind"])
        for kind, n in list(obs.event_counts.items()):
            events.add_metric([kind], n)
        yield events
        log = GaugeMetricFamily("chc_packet_log_size", "packets logged at the roots, not yet done")
        log.add_metric([], sum(len(r.log) for r in self.runtime.roots))
        yield log
        yield from self._store()
        names = [("received", "frames received from an interface"), ("sent", "frames sent on an interface"),
                 ("send_errors", "frames that could not be sent")]
        for key, doc in names:
            fam = CounterMetricFamily(f"chc_port_frames_{key}" if key != "send_errors" else "chc_port_send_errors",
                                      doc, labels=["side", "interface"])
            for side, port in self.ports.items():
                fam.add_metric([side, port.name], getattr(port, key))
            yield fam

    def _store(self) -> Iterator[Any]:
        """The store's figures as of the observer's latest sample (nothing before the first)."""
        latest = self.observer.latest
        if latest is None:
            return
        st = latest["store"]
        trips = CounterMetricFamily("chc_store_round_trips", "requests to the store (a pipelined batch is one)")
        trips.add_metric([], st["round_trips"])
        ops = CounterMetricFamily("chc_store_ops", "store operations of the instances' clients, by kind",
                                  labels=["kind"])
        ops.add_metric(["blocking"], st["blocking_ops"])
        ops.add_metric(["nonblocking"], st["nonblocking_ops"])
        hits = CounterMetricFamily("chc_store_cache_hits", "state reads answered by a client's cache (Table 1)")
        hits.add_metric([], st["cache_hits"])
        yield from (trips, ops, hits)
