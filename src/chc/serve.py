"""Long-running mode: ``chc serve CHAIN``, and the loop of ``chc run --live``.

Theory of operation
-------------------
A :class:`Server` runs a chain on the ``sim`` runtime in real time until it is
stopped.  Its input comes from a *source*:

* :class:`Replay` replays a capture at ``--rate`` packets/s (or at the pace of
  its own timestamps), once or, with ``--loop``, over and over.  Each pass's
  timestamps are shifted past the previous pass's last one by one mean
  inter-arrival time, so the packets' time, which NF timers go by, keeps
  increasing, and each packet takes the next input index, so the roots' logical
  clocks do too (§5).  A packet's arrival is its virtual time from the pacer
  (tcpreplay's conventions, :mod:`chc.runtime.pacing`), counted from the start
  of the run; the loop hands it to the chain once the wall clock reaches it.
* :class:`chc.live.Ports`: two interfaces (a bump in the wire), frames as they
  arrive.

The loop (:meth:`Server.loop`) takes what the source has ready (at most
``--batch-size`` frames), pushes it through the runtime as one batch with
:meth:`~chc.runtime.sim.SimRuntime.feed` (vertex managers act at their interval
boundaries, as in ``chc run``), and hands the output back to the source (ports
send it; a replay only counts it).  With nothing ready it waits for the source
at most 0.2 s, so a stop request, the deadline and the observer's sampling are
never later than that.  A chain slower than a replay's schedule gets full
batches and a growing latency; the replay never skips packets.

Stopping.  SIGTERM, Ctrl-C (SIGINT), ``--duration``, ``-c`` and the end of a
capture replayed once only set a flag, which the loop reads between batches, so
no batch is cut in half; a second signal aborts at once.  Then the input stops
(a replay reads no more, ports are no longer read), the runtime drains (every
queue processed, every timer fired) and every store client settles (each update
sent and acknowledged, so the store holds the final state), and the summary is
the one ``chc run`` prints and writes, its ``capture`` section saying what the
input was and what stopped it.  Once it is out, SIGTERM and SIGINT are ignored, and
while the process exits they end it with its own exit code (:func:`chc.cli.finished`):
a late one (``timeout``'s second, a process-group kill) made the exit code 143 or 130.

Watching.  An :class:`~chc.observe.Observer` samples the runtime once a
second; the samples feed the status line on stderr (``--status``), the
dashboard (``--dashboard-port``, :mod:`chc.dashboard`) and the Prometheus
metrics (``--metrics-port``, :mod:`chc.metrics`).

On the proc runtime (``--runtime proc`` or ``ray``, docs/proc.md) the chain
runs in worker processes and the coordinator is this process: a
:class:`ProcServer` is the replay as the coordinator's input, the records as
they fall due and, when none is due, a ``None`` that makes the coordinator send
what it holds (so a slow replay is not held back by a part-filled batch) and
look after its workers (a death is failed over with ``--kill``/``--failover``).
The same stops end the input; the coordinator then drains the chain as at the
end of ``chc run``.  Its status line counts what entered; the observer's
per-instance figures live in the workers, so the dashboard and the metrics are
the sim's only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import signal
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TextIO

from .capture import STDIN, open_capture
from .cliargs import EXIT_INTERRUPTED, EXIT_PARTIAL, UsageError, parse_listen
from .feed import Feed, capture_summary
from .linktypes import adapter_for
from .observe import Observer, Sample, status_line
from .packet import Packet
from .runtime.pacing import Pacer
from .runtime.sim import SimRuntime
from .spec import Chain
from .summary import StateValueError, canonical

__all__ = ["Options", "Replay", "Server", "Source", "serve"]

WAIT_S = 0.2                # longest wait for input: how late a stop or a sample can be
SAME_STOP_S = 1.0           # a second SIGTERM this soon after the first is the same stop (timeout(1))


class Source(Protocol):
    """Where a server's frames come from and where its output goes."""

    exhausted: bool                 # no frame will ever come again (a capture replayed once)

    def take(self, limit: int, index: int, t0_ns: int) -> tuple[list[Packet], int, int]:
        """Up to ``limit`` frames ready now, as packets numbered from ``index``; with
        the earliest arrival and the sum of arrivals (monotonic ns) for latency."""
        ...

    def wait(self, timeout: float, elapsed_ns: int) -> None:
        """Return when a frame may be ready, or after ``timeout`` seconds."""
        ...

    def emit(self, out: list[Packet]) -> None:
        """The chain's output packets."""
        ...

    def describe(self, stopped_by: str | None) -> dict[str, Any]:
        """The summary's ``capture`` section."""
        ...

    def report(self) -> list[str]:
        """Lines printed after the summary."""
        ...

    def close(self) -> None:
        ...


class Replay:
    """A capture replayed in real time, once or in a loop (see module doc)."""

    def __init__(self, path: str, rate: float | None = None, loop: bool = False, count: int | None = None) -> None:
        if path == STDIN:
            raise UsageError("serve --capture: needs a file (a pipe cannot be replayed in a loop or paced)")
        self.path = path
        self.rate = rate
        self.loop = loop
        self.count = count
        self.pacer = Pacer("pps", rate) if rate is not None else Pacer("multiplier", 1.0)
        self.passes = 0             # passes started
        self.offset = 0             # ns added to this pass's timestamps
        self.reader: Any = None
        self.early: Any = None      # the reader of a pass that stopped early (truncated, corrupt)
        self.exhausted = False
        self._once = _Once()
        logging.getLogger("chc.capture").addFilter(self._once)
        self._records = self._passes()
        self._next = self._peek()
        if self._next is None:
            raise UsageError(f"{path}: no packets to replay")

    def _passes(self) -> Iterator[tuple[int, bytes]]:
        while True:
            with open_capture(self.path) as reader:
                self.reader = reader
                self.passes += 1
                try:
                    feed = Feed(reader, adapter_for(reader.linktype))
                except ValueError as exc:
                    raise UsageError(f"{self.path}: {exc}") from None
                first = last = None
                for ts, data in feed:
                    if first is None:
                        first = last = ts
                    elif ts > last:
                        last = ts
                    yield ts + self.offset, data
            if reader.stop_reason is not None and self.early is None:
                self.early = reader
            if not self.loop or first is None:
                return
            # The next pass starts one mean inter-arrival after this one's latest packet.
            gap = (last - first) // (feed.fed - 1) if feed.fed > 1 else 1_000_000
            self.offset += last - first + max(gap, 1)

    def _peek(self) -> tuple[int, bytes, int] | None:
        rec = next(self._records, None)
        if rec is None:
            self.exhausted = True
            return None
        ts, data = rec
        return ts, data, self.pacer.arrival(ts, len(data))

    def take(self, limit: int, index: int, t0_ns: int) -> tuple[list[Packet], int, int]:
        now = time.monotonic_ns() - t0_ns
        out: list[Packet] = []
        arrivals = 0
        nxt = self._next
        while nxt is not None and len(out) < limit and nxt[2] <= now:
            ts, data, vt = nxt
            p = Packet(data, ts, index + len(out))
            p.vt = vt
            out.append(p)
            arrivals += vt
            nxt = self._peek()
        self._next = nxt
        if not out:
            return out, 0, 0
        return out, t0_ns + out[0].vt, arrivals + t0_ns * len(out)

    def wait(self, timeout: float, elapsed_ns: int) -> None:
        if self._next is not None:
            timeout = min(timeout, (self._next[2] - elapsed_ns) / 1e9)
        if timeout > 0:
            time.sleep(timeout)

    def emit(self, out: list[Packet]) -> None:
        pass                        # the runtime counts them; a replay sends nowhere

    def describe(self, stopped_by: str | None) -> dict[str, Any]:
        out = capture_summary(self.path, self.early or self.reader, count=self.count)
        out["replay"] = {"rate": self.rate, "loop": self.loop, "passes": self.passes, "stopped_by": stopped_by}
        return out

    def report(self) -> list[str]:
        return []

    def close(self) -> None:
        self._records.close()       # the open capture's file
        logging.getLogger("chc.capture").removeFilter(self._once)


class _Once(logging.Filter):
    """Each capture warning once: a looped capture would repeat its own every pass."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if msg in self.seen:
            return False
        self.seen.add(msg)
        return True


@dataclasses.dataclass
class Options:
    """What ``chc serve`` and ``chc run --live`` ask of a server."""

    chain: Chain
    live: str | None = None
    capture: str | None = None
    rate: float | None = None
    loop: bool = False
    duration: float | None = None
    count: int | None = None
    metrics: str | None = None
    dashboard: str | None = None
    status: float | None = None     # seconds between status lines; None: every second on a terminal
    summary_json: str | None = None
    state_json: str | None = None
    quiet: bool = False
    batch_size: int = 256
    model: str = "EO+C+NA"

    def check(self) -> None:
        if self.duration is not None and not (self.duration > 0 and math.isfinite(self.duration)):
            raise UsageError(f"--duration {self.duration}: expected a positive number of seconds")
        if self.rate is not None and not (self.rate > 0 and math.isfinite(self.rate)):
            raise UsageError(f"--rate {self.rate}: expected a positive number of packets per second")
        if self.status is not None and not (self.status >= 0 and math.isfinite(self.status)):
            raise UsageError(f"--status {self.status}: expected seconds between status lines (0: none)")
        listens = {}
        for option, value in (("--metrics-port", self.metrics), ("--dashboard-port", self.dashboard)):
            if value is not None:
                try:
                    listens[option] = parse_listen(value, option)
                except ValueError as exc:
                    raise UsageError(str(exc)) from None
        if len(listens) == 2 and len(set(listens.values())) == 1:
            raise UsageError(f"--metrics-port and --dashboard-port: both {self.metrics}: give each its own port "
                             "(it said 'Address already in use')")


class _Stops:
    """What stops a server: SIGINT, SIGTERM, its deadline, its count, its source's end;
    and what it takes from its source."""

    stopped_by: str | None = None
    stopped_at = 0.0
    done = False                # the report is out (or an error on its way): signals are ignored
    source: Source
    batch_size: int
    count: int | None
    entered: int

    def _due(self, t0: int, now: float, deadline: float | None) -> tuple[list[Packet], int, int] | None:
        """The packets due now (``Source.take``), counted in; None when the loop stops."""
        if deadline is not None and now >= deadline:
            self.stop("duration")
            return None
        limit = self.batch_size if self.count is None else min(self.batch_size, self.count - self.entered)
        pkts, first, arrivals = self.source.take(limit, self.entered, t0)
        if not pkts and self.source.exhausted:
            self.stop("end")
            return None
        self.entered += len(pkts)
        if self.count is not None and self.entered >= self.count:
            self.stop("count")
        return pkts, first, arrivals

    def stop(self, why: str) -> None:
        if self.stopped_by is None:
            self.stopped_by = why
            self.stopped_at = time.monotonic()

    def _signalled(self, why: str) -> None:
        """A stop signal: the first stops the loop, one after it has stopped (a second one,
        or the first once the input ended by itself: the drain) aborts (KeyboardInterrupt).
        A SIGTERM within ``SAME_STOP_S`` of a SIGTERM stop is the same stop: ``timeout``
        and process-group kills deliver it twice (a new user's trial: the second aborted
        the drain and the summary was lost).  Once the server is done (its summary out)
        a signal is ignored: it could only change the exit code."""
        if self.done:
            return                          # (the summary is out: it would only change the exit code)
        if self.stopped_by is None:
            self.stop(why)
        elif not (why == "terminate" == self.stopped_by and time.monotonic() - self.stopped_at < SAME_STOP_S):
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def signals(self) -> Iterator[None]:
        """SIGINT and SIGTERM stop the loop (:meth:`_signalled`)."""
        def handler(signum: int, frame: Any, why: str) -> None:
            self._signalled(why)
        previous = {sig: signal.signal(sig, lambda s, f, why=why: handler(s, f, why))
                    for sig, why in ((signal.SIGINT, "interrupt"), (signal.SIGTERM, "terminate"))}
        try:
            yield
        finally:
            for sig, h in previous.items():
                signal.signal(sig, h)


class Server(_Stops):
    """The real-time loop over one source (see module doc)."""

    def __init__(self, runtime: SimRuntime, source: Source, batch_size: int, count: int | None = None,
                 duration: float | None = None, interval: float = 1.0) -> None:
        self.runtime = runtime
        self.source = source
        self.batch_size = batch_size
        self.count = count
        self.duration = duration
        self.observer = Observer(runtime, interval)
        self.on_sample: list[Callable[[Sample], None]] = []
        self.on_batch: list[Callable[[float], None]] = []      # processing seconds of a batch
        self.entered = 0

    def _sample(self, now: float | None = None) -> None:
        s = self.observer.sample(now)
        for sink in self.on_sample:
            sink(s)

    def loop(self) -> None:
        rt, src, obs = self.runtime, self.source, self.observer
        started = time.perf_counter()
        t0 = time.monotonic_ns()
        deadline = None if self.duration is None else time.monotonic() + self.duration
        while self.stopped_by is None:
            now = time.monotonic()
            if obs.due(now):
                self._sample(now)
            due = self._due(t0, now, deadline)
            if due is None:
                break
            pkts, first, arrivals = due
            if not pkts:
                wait = min(WAIT_S, obs.next_at - now, WAIT_S if deadline is None else deadline - now)
                src.wait(wait, time.monotonic_ns() - t0)
                continue
            tick = time.perf_counter()
            rt.feed(pkts, src.emit)
            seconds = time.perf_counter() - tick
            done = time.monotonic_ns()
            obs.batch(len(pkts), (done * len(pkts) - arrivals) / 1e9, (done - first) / 1e9)
            for hook in self.on_batch:
                hook(seconds)
        src.emit(rt.drain())
        rt.elapsed += time.perf_counter() - started
        self._sample()              # the final figures, drain included


class ProcServer(_Stops):
    """A replay as the proc runtime's input (see module doc): iterate it for the records,
    each as it falls due, and ``None`` whenever none is."""

    def __init__(self, source: Replay, batch_size: int, count: int | None = None, duration: float | None = None,
                 status: float = 0, stream: TextIO = sys.stderr) -> None:
        self.source = source
        self.batch_size = batch_size
        self.count = count
        self.duration = duration
        self.status = status
        self.stream = stream
        self.entered = 0
        self.started = 0.0
        self._shown = (0.0, 0)          # the last status line's time and count (the start's first)

    def __iter__(self) -> Iterator[tuple[int, bytes] | None]:
        src = self.source
        self.started = time.monotonic()
        self._shown = (self.started, 0)
        t0 = time.monotonic_ns()
        deadline = None if self.duration is None else self.started + self.duration
        while self.stopped_by is None:
            now = time.monotonic()
            if self.status and now - self._shown[0] >= self.status:
                self._status(now)
            due = self._due(t0, now, deadline)
            if due is None:
                break
            for p in due[0]:
                yield p.ts, bytes(p.data)
            yield None          # (nothing more due now: the coordinator sends what it holds)
            if not due[0]:
                wait = WAIT_S if deadline is None else min(WAIT_S, deadline - now)
                src.wait(wait, time.monotonic_ns() - t0)

    def interrupt(self) -> None:
        """The proc runtime's SIGTERM: a stop, one after it aborts (as the handlers here)."""
        self._signalled("terminate")

    def _status(self, now: float) -> None:
        then, before = self._shown
        rate = (self.entered - before) / (now - then)
        self._shown = (now, self.entered)
        self.stream.write(f"chc serve: {now - self.started:,.0f} s, {self.entered:,} in ({rate:,.0f}/s)\n")
        self.stream.flush()


class StatusLine:
    """The status on stderr: rewritten in place on a terminal, a line each otherwise."""

    def __init__(self, every: float, stream: TextIO) -> None:
        self.every = every
        self.stream = stream
        self.tty = stream.isatty()
        self.next_t = 0.0
        self.shown = False

    def __call__(self, s: Sample) -> None:
        if s["t"] + 1e-6 < self.next_t:
            return
        self.next_t = s["t"] + self.every
        line = status_line(s)
        if self.tty:
            self.stream.write("\r" + line + "\x1b[K")
            self.shown = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def _metrics(listen: str, server: Server, ports: dict[str, Any]) -> Any:
    """Serve Prometheus metrics on ``listen`` ([ADDR:]PORT) for the run's life."""
    try:
        from .metrics import LiveMetrics
    except ImportError:
        raise UsageError("--metrics-port needs prometheus-client (pip install 'chc[serve]')") from None
    addr, port = parse_listen(listen)
    metrics = LiveMetrics(server.observer, ports)
    try:
        metrics.serve(addr, port)
    except OSError as exc:
        raise UsageError(f"--metrics-port {listen}: {exc.strerror or exc}") from None
    server.on_batch.append(metrics.batch)
    return metrics


def _dashboard(listen: str, server: Server, title: str) -> Any:
    try:
        from .dashboard import Dashboard
    except ImportError:
        raise UsageError("--dashboard-port needs starlette and uvicorn (pip install 'chc[serve]')") from None
    addr, port = parse_listen(listen, "--dashboard-port")
    try:
        board = Dashboard(server.observer, title, addr, port)
    except OSError as exc:
        raise UsageError(f"--dashboard-port {listen}: {exc.strerror or exc}") from None
    server.on_sample.append(board.publish)
    return board


def _source(opts: Options, runtime_kwargs: dict[str, Any]) -> tuple[SimRuntime, Source, str]:
    """The runtime and the source of ``opts``, and the banner line."""
    chain = opts.chain
    if opts.live is not None:
        from .live import LiveRuntime, Ports
        try:
            rt: SimRuntime = LiveRuntime(chain, **runtime_kwargs)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        ports = Ports.open(rt, opts.live)
        return rt, ports, (f"chc: live: {ports.inside.name} <-> {ports.outside.name}, chain {chain.name!r} "
                           f"(model {opts.model}); Ctrl-C stops")
    assert opts.capture is not None
    replay = Replay(opts.capture, opts.rate, opts.loop, opts.count)
    try:
        rt = SimRuntime(chain, pacer=replay.pacer, **runtime_kwargs)
    except ValueError as exc:
        replay.close()
        raise UsageError(str(exc)) from None
    pace = "at its timestamps" if opts.rate is None else f"at {opts.rate:,g} packets/s"
    return rt, replay, (f"chc: serve: {opts.capture} {pace}{', in a loop' if opts.loop else ''}, "
                        f"chain {chain.name!r} (model {opts.model}); Ctrl-C stops")


def scenario_options(path: str, chain: Chain, capture: str, keep_parallelism: bool = False
                     ) -> tuple[Chain, dict[str, Any]]:
    """``--scenario``: the chain with the scenario's parallelism (unless
    ``--parallelism`` was given) and the runtime's keyword arguments for its
    delays, network, packet log, seed and events (its ``random:`` events drawn
    by its seed over one pass of the capture)."""
    from .scenario import ScenarioError, load_scenario

    sc = load_scenario(path)
    if sc.parallelism is not None and not keep_parallelism:
        chain = chain.with_parallelism(sc.parallelism)
    vertices = list(chain.vertices)
    try:
        sc.check_targets(vertices, chain)       # (its roots, its NFs' controls: as chc check)
    except ScenarioError as exc:
        raise ScenarioError(f"{path}: {exc}") from None
    n = 0
    if sc.random is not None:
        with open_capture(capture) as reader:
            n = sum(1 for _ in reader)
    return chain, {"delays": sc.expand_delays(vertices), "seed": sc.seed, "network": sc.network,
                   "log_mode": sc.packet_log, "events": sc.events_for(sc.seed, vertices, n)}


def serve(opts: Options, runtime_kwargs: dict[str, Any], write_json: Callable[[str, Any], None],
          proc: Any = None) -> int:
    """Run ``opts.chain`` until stopped (see module doc); the caller opened the store
    and built the runtime's other keyword arguments, or (``proc``) the proc runtime."""
    opts.check()
    if proc is not None:
        return _serve_proc(opts, proc, write_json)
    rt, source, banner = _source(opts, runtime_kwargs)
    server = Server(rt, source, opts.batch_size, opts.count, opts.duration)
    with server.signals():      # (through the report: timeout(1)'s second SIGTERM may come after the drain)
        try:
            return _serve(opts, rt, source, banner, server, write_json)
        finally:
            server.done = True


def _serve(opts: Options, rt: Any, source: Source, banner: str, server: Server,
           write_json: Callable[[str, Any], None]) -> int:
    closers: list[Callable[[], None]] = []
    status = None
    try:
        urls = []
        if opts.metrics is not None:
            metrics = _metrics(opts.metrics, server, getattr(source, "by_side", {}))
            closers.append(metrics.close)
            urls.append(f"chc: metrics at http://{_host(opts.metrics)}/metrics")
        if opts.dashboard is not None:
            board = _dashboard(opts.dashboard, server, f"{opts.chain.name} ({opts.model})")
            closers.append(board.close)
            urls.append(f"chc: dashboard at http://{_host(opts.dashboard)}/")
        every = opts.status if opts.status is not None else (1.0 if sys.stderr.isatty() and not opts.quiet else 0)
        if every:
            status = StatusLine(every, sys.stderr)
            server.on_sample.append(status)
        print("\n".join([banner, *urls]), file=sys.stderr, flush=True)
        server.loop()
    finally:
        if status is not None:
            status.close()
        for close in reversed(closers):
            close()
        lines = source.report()
        capture = source.describe(server.stopped_by)
        source.close()
    return _report(opts, rt, capture, write_json, lines, server.stopped_by)


def _report(opts: Options, rt: Any, capture: dict[str, Any], write_json: Callable[[str, Any], None],
            lines: list[str], stopped_by: str | None) -> int:
    """The end of a server: the summary printed and written, its exit code."""
    summary = rt.summary()
    summary.capture = capture
    if capture.get("truncated"):
        summary.mark_partial(f"the capture stopped early at byte {capture['offset']:,} ({capture['reason']})")
    if opts.summary_json:
        write_json(opts.summary_json, summary.as_json())
    if opts.state_json and summary.state_error is None:
        write_json(opts.state_json, canonical(rt.logical_state(), flows=True))
    if not opts.quiet:
        print("\n".join([summary.render(), *lines, f"stopped by {_stopped_by(opts, stopped_by)}"]))
    if summary.state_error is not None:
        raise StateValueError(summary.state_error)
    if stopped_by == "interrupt":
        return EXIT_INTERRUPTED
    return EXIT_PARTIAL if capture.get("truncated") else 0     # (as chc run's)


def _stopped_by(opts: Options, why: str | None) -> str:
    """The summary's last line: what ended the server (the JSON's ``capture.*.stopped_by``)."""
    if why == "duration":
        return f"--duration {opts.duration:g} s"
    if why == "count":
        return f"-c {opts.count:,} packets"
    return {"interrupt": "Ctrl-C (SIGINT): input stopped, queues drained",
            "terminate": "SIGTERM: input stopped, queues drained",
            "end": "the end of its input"}.get(why or "", why or "an error")


def _serve_proc(opts: Options, rt: Any, write_json: Callable[[str, Any], None]) -> int:
    """``chc serve --runtime proc``: a replay through the proc runtime (module doc)."""
    if opts.live is not None:
        raise UsageError("--live is for --runtime sim (live ports are not built on the proc runtime yet)")
    given = [name for name, on in (("--metrics-port", opts.metrics is not None),
                                   ("--dashboard-port", opts.dashboard is not None)) if on]
    if given:
        raise UsageError(f"{given[0]} is for --runtime sim (the proc runtime's figures live in its workers)")
    assert opts.capture is not None
    source = Replay(opts.capture, opts.rate, opts.loop, opts.count)
    every = opts.status if opts.status is not None else (1.0 if sys.stderr.isatty() and not opts.quiet else 0)
    server = ProcServer(source, opts.batch_size, opts.count, opts.duration, every)
    pace = "at its timestamps" if opts.rate is None else f"at {opts.rate:,g} packets/s"
    print(f"chc: serve: {opts.capture} {pace}{', in a loop' if opts.loop else ''}, chain {opts.chain.name!r} "
          f"(model {opts.model}, runtime {rt.name}); Ctrl-C stops", file=sys.stderr, flush=True)
    with server.signals():      # (through the report, as serve's)
        try:
            try:
                rt.run(server)
            finally:
                capture = source.describe(server.stopped_by)
                source.close()
            return _report(opts, rt, capture, write_json, [], server.stopped_by)
        finally:
            server.done = True


def _host(listen: str) -> str:
    addr, port = parse_listen(listen)
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"
