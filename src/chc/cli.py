"""Command line: ``chc run`` runs a chain spec over a capture.

Exit codes (docs/cli.md): 0 success; 1 an internal error (``chc check``: a seed
diverged); 2 bad input (capture, chain spec, options), with a one-line message
on stderr; 3 the capture stopped early (truncated or corrupt) and the summary is
partial, unless ``--allow-partial``; 130 interrupted (Ctrl-C; ``chc run`` first
finishes and reports what it processed); 141 standard output was closed (a
pipe into ``head``), as for a tool killed by SIGPIPE.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import select
import signal
import stat
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TextIO

from . import LOG_FORMAT, __version__
from .backends import namespace_of, open_store
from .backends.redis import redact
from .bench import cmd_bench, register_bench
from .bpf import compile_filter
from .capture import STDIN, CaptureError, CaptureReader, CaptureWriter, looks_like_a_capture, open_capture
from .cliargs import EXIT_INTERRUPTED, EXIT_PARTIAL, OutputPath, UsageError, int_at_least
from .core.client import MODELS
from .core.store import StoreError
from .feed import Feed, capture_summary, stop_on_interrupt
from .linktypes import adapter_for
from .outfiles import ClobberError, OutputPathError, Outputs, check_outputs, refuse_clobber
from .runtime.errors import ProcFailure
from .runtime.pacing import Pacer
from .runtime.sim import DEFAULT_BATCH, SimRuntime
from .scenario import ScenarioError
from .spec import MAX_PARALLELISM, SpecError, load_spec
from .summary import StateValueError
from .trace.cli import cmd_trace, register_trace

EXIT_CLOSED_STDOUT = 141  # 128 + SIGPIPE, as a shell reports `tool | head`
HEARTBEAT_MS = 500        # --runtime proc: --heartbeat's default
MISSES = 10               # --runtime proc: --misses' default


_positive = int_at_least(1)
_natural = int_at_least(0)
_parallelism = int_at_least(1, MAX_PARALLELISM, "the parallelism limit")


class _Parser(argparse.ArgumentParser):
    """argparse with its errors as every other error of chc: one line, exit 2 (it printed
    its usage block first), naming where the options are listed."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"chc: error: {message} (see {self.prog} -h)\n")


def _subcommand(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The innermost (sub)command parser ``args`` went through (``chc trace inspect``)."""
    for dest in ("command", "trace_command"):
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction) and a.dest == dest]
        chosen = getattr(args, dest, None)
        if not actions or chosen not in actions[0].choices:
            break
        parser = actions[0].choices[chosen]
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="chc",
        description="chc: chains of stateful network functions that keep chain output "
                    "equivalence (CHC, NSDI 2019).")
    parser.add_argument("--version", action="version", version=f"chc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser(
        "run", help="run a chain over a capture and print a summary",
        description="Run the chain of CHAIN (a YAML chain spec) over CAPTURE (pcap, pcapng, "
                    "optionally gzip-compressed) in the deterministic sim runtime (or --runtime proc: "
                    "a process per root and NF instance), write the chain's output packets to --out, "
                    "and print a summary of packets, drops, per-vertex counts and alerts.")
    run.add_argument("chain", metavar="CHAIN", help="chain spec (YAML), e.g. examples/paper_chain.yaml")
    run.add_argument("capture", metavar="CAPTURE", nargs="?",
                     help="input capture: .pcap, .pcapng, optionally .gz; '-' reads standard input "
                          "(not with --live)")
    run.add_argument("--live", metavar="IN_IF:OUT_IF",
                     help="no capture: run the chain on live interfaces, frames from IN_IF leave on "
                          "OUT_IF and replies from OUT_IF go back through the chain to IN_IF "
                          "(a bump in the wire; docs/live.md)")
    run.add_argument("--duration", type=float, metavar="S",
                     help="with --live: stop after S seconds (also stopped by -c, SIGTERM, Ctrl-C)")
    run.add_argument("--metrics-port", metavar="[ADDR:]PORT",
                     help="with --live: serve Prometheus metrics on PORT (127.0.0.1 unless ADDR is given)")
    run.set_defaults(rate=None, loop=False, dashboard_port=None, status=None, scenario=None)
    run.add_argument("--out", action=OutputPath, metavar="OUT",
                     help="write the chain's output packets here (.pcap, .pcapng, optionally .gz; '-' is "
                          "pcap on standard output, and the summary then goes to stderr); the input's "
                          "link type is kept")
    run.add_argument("--filter", metavar="EXPR",
                     help="only packets matching this BPF expression (tcpdump syntax, e.g. 'tcp port 80') "
                          "enter the chain")
    # (--packets: chc check's name of -c, which a new user gave chc run and was refused)
    run.add_argument("-c", "--count", "--packets", type=_positive, metavar="N",
                     help="stop after N packets have entered the chain (after --filter)")
    run.add_argument("--allow-partial", action="store_true",
                     help="exit 0, not 3, when the capture stops early (truncated or corrupt); the "
                          "summary says so either way")
    _outputs_and_state(run)
    pace = run.add_argument_group("pacing and timing (virtual time; tcpreplay's conventions)")
    how = pace.add_mutually_exclusive_group()
    how.add_argument("--multiplier", type=float, metavar="X",
                     help="replay X times faster than the capture's timestamps (default: 1)")
    how.add_argument("--pps", type=float, metavar="N", help="replay at N packets per second")
    how.add_argument("--mbps", type=float, metavar="N", help="replay at N Mbit/s")
    how.add_argument("--topspeed", action="store_true", help="every packet available at once")
    pace.add_argument("--delay", action="append", default=[], metavar="VERTEX[i]=DIST",
                      help="per-packet processing delay of a vertex's instances (or instance i): "
                           "uniform:LOW:HIGH, const:X or exp:MEAN in microseconds; repeatable")
    pace.add_argument("--seed", type=int, default=0, help="seed of the delay distributions (default: 0)")
    _runtime_args(run, "sim: one deterministic process (default); proc: every root and NF instance in "
                       "its own OS process, ZeroMQ between them (docs/proc.md); ray: proc's processes "
                       "each in a Ray actor (the [ray] extra)")
    run.add_argument("--ray-pin", action="append", default=[], metavar="VERTEX[I]=RESOURCE",
                     help="--runtime ray: run instance I of VERTEX on a node with custom resource RESOURCE "
                          "(default: instances in turn over the alive nodes); repeatable")
    run.add_argument("--kill", action="append", default=[], metavar="VERTEX[I]@N",
                     help="--runtime proc: SIGKILL the process of instance I of VERTEX (root[R]: root R; store: "
                          "the store server) once N input packets have been fed (VERTEX[I]@change:K: during the "
                          "K-th scaling change; store@change:K too); a failover process takes over "
                          "(§5.4, docs/proc.md); VERTEX[I]~@N: the clone of its running clone pair (§5.3); "
                          "manager:VERTEX@N: VERTEX's manager process, started again; repeatable")
    run.add_argument("--failover", action="store_true",
                     help="--runtime proc: recover NF instance, root and store server processes that die "
                          "(implied by --kill)")
    _heartbeat_args(run)
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("-q", "--quiet", action="store_true", help="no summary on stdout")
    srv = sub.add_parser(
        "serve", help="run a chain until stopped: a capture replayed in real time, or live ports",
        description="Run the chain of CHAIN in real time until SIGTERM, Ctrl-C or --duration: over CAPTURE "
                    "replayed at --rate packets/s (at its own timestamps without it), once or in a --loop, "
                    "or over two live interfaces (--live; docs/live.md). Stopping drains the chain, flushes "
                    "the store and prints the summary of chc run. --metrics-port serves Prometheus metrics, "
                    "--dashboard-port a live web dashboard.")
    srv.add_argument("chain", metavar="CHAIN", help="chain spec (YAML), e.g. examples/portscan.yaml")
    src = srv.add_mutually_exclusive_group(required=True)
    src.add_argument("--capture", metavar="FILE", help="replay this capture (.pcap, .pcapng, optionally .gz)")
    src.add_argument("--live", metavar="IN_IF:OUT_IF",
                     help="frames from IN_IF cross the chain to OUT_IF, replies cross it back (as root)")
    srv.add_argument("--rate", type=float, metavar="PPS",
                     help="with --capture: replay at PPS packets per second (default: at the capture's timestamps)")
    srv.add_argument("--loop", action="store_true",
                     help="with --capture: replay it over and over (timestamps shifted to keep increasing)")
    srv.add_argument("--scenario", metavar="FILE",
                     help="with --capture: what happens to the chain meanwhile (crashes, slowdowns, scaling; "
                          "docs/coe.md): the scenario's parallelism, delays, network, packet log, seed and "
                          "events apply; its model, store, batch size and pacing do not (--runtime proc: its "
                          "scaling, clone, slow and crash events, a crash a real kill, a slow a real sleep, and "
                          "its parallelism; docs/proc.md)")
    srv.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    srv.add_argument("-c", "--count", "--packets", type=_positive, metavar="N",
                     help="stop after N packets have entered")
    srv.add_argument("--metrics-port", metavar="[ADDR:]PORT",
                     help="serve Prometheus metrics on PORT (127.0.0.1 unless ADDR is given)")
    srv.add_argument("--dashboard-port", metavar="[ADDR:]PORT",
                     help="serve the live dashboard on PORT (127.0.0.1 unless ADDR is given)")
    srv.add_argument("--status", type=float, metavar="S",
                     help="a status line on stderr every S seconds (default: every second on a terminal; 0: none)")
    _runtime_args(srv, "sim: one process, in real time (default); proc: every root and NF instance in its own "
                       "OS process (docs/proc.md); ray: proc's processes in Ray actors")
    srv.add_argument("--kill", action="append", default=[], metavar="VERTEX[I]@N",
                     help="--runtime proc: SIGKILL instance I of VERTEX (root[R]: root R; store: the store "
                          "server) once N packets have entered (VERTEX[I]@change:K: during the K-th scaling "
                          "change); a failover process takes over (§5.4); VERTEX[I]~@N: the clone of its "
                          "running clone pair (§5.3); manager:VERTEX@N: VERTEX's manager process, started "
                          "again; repeatable")
    srv.add_argument("--failover", action="store_true",
                     help="--runtime proc: recover NF instance, root and store server processes that die "
                          "(implied by --kill)")
    _heartbeat_args(srv)
    _outputs_and_state(srv)
    srv.add_argument("-q", "--quiet", action="store_true", help="no summary on stdout")
    srv.set_defaults(out=None, filter=None, seed=0, delay=[])
    register_trace(sub)
    register_bench(sub)
    chk = sub.add_parser(
        "check", help="check chain output equivalence (COE) over seeded scenario variants",
        description="Run the physical chain of CHAIN under SCENARIO (parallelism, delays, network "
                    "faults, events, model, store) on CAPTURE, run the logical chain (one instance per "
                    "vertex, no delays, input order) on the same input following the store's "
                    "serialization, and compare outputs, per-flow order, alerts, final state, the "
                    "store's answers and the packet log; report the first divergence. Each seed picks "
                    "what the scenario leaves open (parallelism 1-4, model, batch size, store) and "
                    "seeds delays and faults; a failing seed reproduces exactly with --seed. Exit 0 "
                    "if every seed passes, 1 if any diverges or crashed without recovery, 2 on bad "
                    "input or when nothing was checked, 3 when a --break was never caught or the "
                    "capture stopped early (truncated: the packets before were checked, PARTIAL).")
    chk.add_argument("chain", metavar="CHAIN", nargs="?", help="chain spec (YAML)")
    chk.add_argument("scenario", metavar="SCENARIO", nargs="?",
                     help="scenario (YAML), e.g. examples/scenarios/faults.yaml")
    chk.add_argument("capture", metavar="CAPTURE", nargs="?", help="input capture")
    which = chk.add_mutually_exclusive_group()
    which.add_argument("--seeds", type=_positive, default=10, metavar="N", help="run seeds 0..N-1 (default: 10)")
    which.add_argument("--seed", type=int, metavar="S", help="run only seed S (reproduce a failure)")
    chk.add_argument("--first-seed", type=_natural, default=0, metavar="S",
                     help="with --seeds N: run seeds S..S+N-1 (a long hunt in ranges; default: 0)")
    chk.add_argument("--jobs", "-j", type=_positive, default=1, metavar="J",
                     help="run seeds in J parallel processes (default: 1); with Redis, worker k uses "
                          "database k of each --store server; sim only (proc and ray run a seed's "
                          "components in processes of their own, one seed at a time)")
    chk.add_argument("--break", dest="breaks", action="append", default=[], metavar="NAME",
                     help="switch a mechanism off (or corrupt one compared thing) in the physical run to "
                          "test the checker; see --list-breaks")
    chk.add_argument("--list-breaks", action="store_true", help="list the --break switches and exit")
    chk.add_argument("--store", action="append", default=[], metavar="URL",
                     help="stores seeds may use (default: memory); repeat to add redis://HOST:PORT")
    chk.add_argument("--namespace", metavar="NAME",
                     help="Redis key namespace every seed starts fresh (default: chc), on each worker's "
                          "database; a check touches no key outside it, and one on a namespace in use is refused")
    chk.add_argument("-c", "--packets", type=_positive, metavar="N",
                     help="use only the first N packets of CAPTURE (-c as in chc run)")
    chk.add_argument("--save-failures", action=OutputPath, kind="append", metavar="FILE",
                     help="append failing seeds to FILE (YAML) to keep them as regression cases")
    chk.add_argument("--json", action=OutputPath, metavar="FILE", help="write every seed's verdict as JSON")
    _runtime_args(chk, "the physical run's runtime: sim (default), proc (a process per root, instance and "
                       "store server; of scenario events the scaling, clone, slow and crash ones; docs/proc.md) "
                       "or ray (proc's "
                       "processes in actors of a Ray cluster, --ray-address)")
    chk.add_argument("--checkpoint-ms", type=float, default=None, metavar="MS",
                     help="--runtime proc or ray with a kill of the store server (--kill store@N, random draws, "
                          "a scenario's crash of the store): its checkpoint interval (default 100)")
    chk.add_argument("--kill", action="append", metavar="random[:K]|during|VERTEX[I]@N[,...]",
                     help="--runtime proc or ray: each seed SIGKILLs NF instance, root or store server processes, a "
                          "failover process takes over each (§5.4) and the run is checked; 'random': an instance, "
                          "root or the store server and an input packet (middle 80%%) drawn per seed, 'random:K' K "
                          "of them (different processes); VERTEX[I]@N: instance I of VERTEX (root[R]: root R; "
                          "store: the store server) once N input packets have been fed, several comma-separated; "
                          "'during': an instance, root or the store server killed during one of the seed's "
                          "scaling changes, both drawn (VERTEX[I]@change:K: during the K-th) (docs/proc.md)")
    return parser


def _heartbeat_args(p: argparse.ArgumentParser) -> None:
    """``--heartbeat`` and ``--misses``: how the proc runtime finds a worker that hangs."""
    # (defaults None: given on --runtime sim, they are refused; _proc_runtime's defaults)
    p.add_argument("--heartbeat", type=float, default=None, metavar="MS",
                   help="--runtime proc: every worker sends a heartbeat every MS ms (default 500; 0: none)")
    p.add_argument("--misses", type=_positive, default=None, metavar="N",
                   help="--runtime proc: a worker silent for N heartbeats hangs: it is killed, then failed over "
                        "(--failover, --kill) or the run stops (default 10)")
    p.add_argument("--checkpoint-ms", type=float, default=None, metavar="MS",
                   help="--runtime proc with --failover or --kill store@N: the store server checkpoints every MS ms, "
                        "so that its failover rolls forward from there (§5.4; default 100)")


def _runtime_args(p: argparse.ArgumentParser, what: str) -> None:
    """``--runtime`` and ``--ray-address``, as ``chc run`` and ``chc check`` take them."""
    p.add_argument("--runtime", choices=("sim", "proc", "ray"), default="sim", help=what)
    p.add_argument("--ray-address", default="auto", metavar="ADDR",
                   help="--runtime ray: the Ray cluster to join (default: auto, the running one)")


def _outputs_and_state(p: argparse.ArgumentParser) -> None:
    """The options ``chc run`` and ``chc serve`` share: outputs, state model and store,
    batching, parallelism, metadata."""
    p.add_argument("--summary-json", action=OutputPath, metavar="FILE",
                   help="write the summary as JSON (see docs/summary.md)")
    p.add_argument("--state-json", action=OutputPath, metavar="FILE",
                   help="write every NF's final logical state as JSON")
    p.add_argument("--model", choices=MODELS, default="EO+C+NA",
                     help="state model: T local state; EO externalized, offloaded ops; EO+C plus "
                          "caching; EO+C+NA plus non-blocking ops (default: %(default)s)")
    p.add_argument("--store", default="memory", metavar="URL",
                     help="state store: 'memory' (in-process), redis://[[USER]:PASSWORD@]HOST:PORT[/DB]"
                          "[,redis://...] (objects sharded over the servers; rediss:// for TLS) or "
                          "redis-cluster://[[USER]:PASSWORD@]HOST:PORT (any node of a Redis Cluster; objects "
                          "sharded over its primaries); default: %(default)s")
    p.add_argument("--namespace", metavar="NAME",
                     help="Redis key namespace of this run (default: the chain's name); a run touches no "
                          "key outside it, and a second run on a namespace in use is refused")
    p.add_argument("--store-ca", metavar="FILE", help="rediss://: CA certificate(s) to verify the server")
    p.add_argument("--store-cert", metavar="FILE", help="rediss://: client certificate")
    p.add_argument("--store-key", metavar="FILE", help="rediss://: client certificate's key")
    p.add_argument("--batch-size", type=_positive, default=DEFAULT_BATCH, metavar="N",
                     help="packets per batch on the data path (default: %(default)s); "
                          "results do not depend on it")
    p.add_argument("--parallelism", type=_parallelism, metavar="N",
                     help=f"override every vertex's parallelism with N instances (1-{MAX_PARALLELISM})")
    p.add_argument("--no-scaling", action="store_true",
                     help="ignore the spec's scaling policies: every vertex keeps its parallelism")
    meta = p.add_argument_group("metadata (§5, §7.2)")
    meta.add_argument("--packet-log", choices=("local", "store", "off"), default="local",
                      help="where roots log packets until the chain is done with them (default: local)")
    meta.add_argument("--log-limit", type=int_at_least(0), default=1_000_000, metavar="N",
                      help="drop new input while N packets are logged; 0 = no limit (default: %(default)s)")
    meta.add_argument("--clock-persist", type=_positive, default=1000, metavar="N",
                      help="persist each root's clock every N packets (default: %(default)s)")


def cmd_check(args: argparse.Namespace) -> int:
    from . import checkrun

    if args.list_breaks:
        print(checkrun.list_breaks())
        return 0
    missing = [n for n in ("chain", "scenario", "capture") if getattr(args, n) is None]
    if missing == ["capture"] and looks_like_a_capture(args.scenario):
        raise UsageError(f"check needs CHAIN SCENARIO CAPTURE (missing: SCENARIO; {args.scenario} is a capture: "
                         "the scenario comes between the chain and the capture, e.g. "
                         "examples/scenarios/parallel.yaml)")
    if missing:
        raise UsageError(f"check needs CHAIN SCENARIO CAPTURE (missing: {', '.join(missing).upper()})")
    unknown = [b for b in args.breaks if b not in checkrun.BREAKS]
    if unknown:
        raise UsageError(f"--break {unknown[0]}: unknown (known: {', '.join(checkrun.BREAKS)})")
    try:
        if args.runtime == "ray":
            from .runtime import procray
            if not procray.available():
                raise UsageError(procray.EXTRA)
        elif args.ray_address != "auto":
            raise UsageError("--ray-address is for --runtime ray")
        if args.first_seed and args.seed is not None:
            raise ValueError("--first-seed goes with --seeds, not --seed")
        seeds = [args.seed] if args.seed is not None else list(range(args.first_seed, args.first_seed + args.seeds))
        checkrun.check_jobs(args.jobs, len(seeds), args.store or ["memory"], args.runtime)
        if args.namespace is not None and all(url == "memory" for url in args.store or ["memory"]):
            print("chc: warning: --namespace names a Redis store's keys: not used with the memory store",
                  file=sys.stderr)
        job = checkrun.Job.load(args.chain, args.scenario, args.capture, args.packets,
                                args.store or ["memory"], tuple(args.breaks), args.runtime, _one_kill(args.kill),
                                args.ray_address, args.checkpoint_ms,
                                "chc" if args.namespace is None else args.namespace)
        if args.runtime in ("proc", "ray"):
            refused = checkrun.proc_refusal(job.scenario, seeds, list(job.chain.vertices), len(job.records),
                                            job.stores, job.breaks, job.kill,
                                            any(v.scaling is not None for v in job.chain.vertices.values()))
            if refused:
                raise ValueError(refused)
        # flushed: a long hunt logged to a file shows each seed's verdict as it is known
        report = checkrun.run_seeds(job, seeds, args.jobs, functools.partial(print, flush=True))
    except (ValueError, checkrun.NothingChecked) as exc:
        raise UsageError(str(exc)) from None
    print(report.summary_line())
    if args.json:
        _write_json(args.json, report.as_json())
    if args.save_failures and report.failures():
        try:
            checkrun.save_failures(args.save_failures, job, report.failures())
        except OSError as exc:
            raise UsageError(f"{args.save_failures}: cannot write ({exc.strerror or exc})") from None
    return report.exit_code()


def _runtime_options(args: argparse.Namespace) -> None:
    """Options of another runtime than ``--runtime``'s, refused in one line as chc check
    refuses them (chc run and serve accepted them and did nothing)."""
    if args.runtime != "ray":
        given = [name for name, on in (("--ray-address", args.ray_address != "auto"),
                                       ("--ray-pin", getattr(args, "ray_pin", None))) if on]
        if given:
            raise UsageError(f"{given[0]} is for --runtime ray")
    if args.runtime == "sim":
        given = [(name, knob) for name, value, knob in (("--heartbeat", args.heartbeat, "heartbeat_us"),
                                                        ("--misses", args.misses, "misses")) if value is not None]
        if given:
            raise UsageError(f"{given[0][0]} is for --runtime proc (with sim, a scenario's crash event takes "
                             f"{given[0][1]})")


def cmd_run(args: argparse.Namespace) -> int:
    _runtime_options(args)
    if args.live is not None:
        _check_live(args)
    elif args.capture is None:
        raise UsageError("run needs CAPTURE (or --live IN_IF:OUT_IF)")
    elif args.duration is not None or args.metrics_port is not None:
        raise UsageError(f"{'--duration' if args.duration is not None else '--metrics-port'} is for --live")
    if args.live is not None:
        return cmd_serve(args)          # the same loop as chc serve --live
    return _with_chain(args, lambda chain, store: _run(args, chain, store))


def cmd_serve(args: argparse.Namespace) -> int:
    """``chc serve`` (and ``chc run --live``): :func:`chc.serve.serve`."""
    from .serve import Options, scenario_options, serve

    if args.live is None and args.capture is None:
        raise UsageError("serve needs --capture FILE or --live IN_IF:OUT_IF")
    _runtime_options(args)
    if args.live is not None:
        given = [name for name, on in (("--rate", args.rate is not None), ("--loop", args.loop),
                                       ("--scenario", args.scenario is not None)) if on]
        if given:
            raise UsageError(f"--live takes no {given[0]} (it reads the interfaces, at their own pace)")

    if args.runtime == "sim" and (args.kill or args.failover):
        raise UsageError("--kill and --failover are for --runtime proc (with sim, a --scenario's crash events)")
    if args.runtime == "sim" and args.checkpoint_ms is not None:
        raise UsageError("--checkpoint-ms is for --runtime proc, with --failover or --kill store@N (with sim, "
                         "a --scenario's crash of the store takes checkpoint_ms)")

    def go(chain: Any, store: Any) -> int:
        if args.runtime != "sim":
            events: list = []
            seed = 0
            if args.scenario is not None:   # §5.1 its scaling events, at input packets (docs/proc.md)
                from .runtime.procscale import scenario_refusal
                from .scenario import load_scenario
                refused = scenario_refusal(load_scenario(args.scenario), args.scenario)
                if refused:                 # (each event proc cannot run, with its file)
                    raise UsageError(refused)
                chain, more = scenario_options(args.scenario, chain, args.capture,
                                               keep_parallelism=bool(args.parallelism))
                events, seed = more["events"], more["seed"]
            opts = Options(chain, live=args.live, capture=args.capture, rate=args.rate, loop=args.loop,
                           duration=args.duration, count=args.count, metrics=args.metrics_port,
                           dashboard=args.dashboard_port, status=args.status, summary_json=args.summary_json,
                           state_json=args.state_json, quiet=args.quiet, batch_size=args.batch_size,
                           model=args.model)
            try:
                proc = _proc_runtime(args, chain, store, events, seed)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            if args.model == "T":
                _warn_split_state(chain)
            return serve(opts, {}, _write_json, proc)
        more: dict[str, Any] = {"seed": args.seed, "log_mode": args.packet_log}
        if args.scenario is not None:
            chain, more = scenario_options(args.scenario, chain, args.capture, keep_parallelism=bool(args.parallelism))
        if args.model == "T":
            _warn_split_state(chain)        # (chc serve, chc run --live: a serve's chain as chc run's)
        opts = Options(chain, live=args.live, capture=args.capture, rate=args.rate, loop=args.loop,
                       duration=args.duration, count=args.count, metrics=args.metrics_port,
                       dashboard=args.dashboard_port, status=args.status, summary_json=args.summary_json,
                       state_json=args.state_json, quiet=args.quiet, batch_size=args.batch_size, model=args.model)
        return serve(opts, {"model": args.model, "batch_size": args.batch_size, "store": store,
                            "log_limit": max(args.log_limit, 0), "persist_every": args.clock_persist, **more},
                     _write_json)
    return _with_chain(args, go)


def _namespace(args: argparse.Namespace, chain: Any) -> str:
    """The Redis key namespace: --namespace as given (an empty one is refused by the
    store), else the chain's name's."""
    return namespace_of(chain.name) if args.namespace is None else args.namespace


def _with_chain(args: argparse.Namespace, body: Callable[[Any, Any], int]) -> int:
    """``body(chain, store)`` with the chain of ``args`` (``--parallelism``,
    ``--no-scaling`` applied) and its store, closed after."""
    chain = load_spec(args.chain)
    if args.parallelism:
        chain = chain.with_parallelism(args.parallelism)
    if args.no_scaling:
        chain = chain.without_scaling()
    _refuse_clobber(args)
    store = None
    if args.model == "T" and (args.store != "memory" or args.namespace is not None):
        # (T keeps each NF's state inside its instances: the store, even an unreachable one, is
        # never opened; said, not refused, since T is the baseline the others are timed against)
        print(f"chc: warning: model T keeps state inside the instances: --store {redact(args.store)} "
              f"{'and --namespace are' if args.namespace is not None else 'is'} not used", file=sys.stderr)
    elif args.store == "memory" and args.namespace is not None:
        print("chc: warning: --namespace names a Redis store's keys: not used with the memory store",
              file=sys.stderr)
    _warn_unused(args)
    if args.model != "T":
        try:
            store = open_store(args.store, namespace=_namespace(args, chain),
                               tls_ca=args.store_ca, tls_cert=args.store_cert, tls_key=args.store_key)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    try:
        return body(chain, store)
    finally:
        if store is not None:
            store.close()           # gives up the namespace's lease at once


def _warn_unused(args: argparse.Namespace) -> None:
    """Options this run does not use, said (a new user's --store-ca with a plain redis:// URL,
    --log-limit with --packet-log off, were taken without a word)."""
    tls = [o for o, v in (("--store-ca", args.store_ca), ("--store-cert", args.store_cert),
                          ("--store-key", args.store_key)) if v is not None]
    if tls and args.model != "T" and not str(args.store).startswith("rediss"):
        print(f"chc: warning: {', '.join(tls)} {'is' if len(tls) == 1 else 'are'} for a TLS store "
              f"(rediss://): not used with --store {redact(args.store)}", file=sys.stderr)
    if getattr(args, "packet_log", None) == "off" and args.log_limit != 1_000_000:
        print("chc: warning: --log-limit bounds the packet log: not used with --packet-log off", file=sys.stderr)


def _warn_split_state(chain: Any) -> None:
    """chc run and serve: model T with several instances of a vertex that has cross-flow state: each instance
    keeps its own copy, so the results are not one NF's (a new user's scan went unreported
    with --parallelism 3); said, not refused, as T is the baseline the others are timed against."""
    split = [f"{v.name} ({', '.join(objs)})" for v in chain.vertices.values()
             if (v.parallelism > 1 or (v.scaling is not None and v.scaling.max > 1))
             and (objs := v.cross_flow_objects())]
    if split:
        print(f"chc: warning: model T keeps a copy of each instance's cross-flow state, so with several "
              f"instances of {'; '.join(split)} the results are not one NF's: use an external model "
              f"(EO, EO+C, EO+C+NA) or parallelism 1 (docs/chain-spec.md)", file=sys.stderr)


def _run(args: argparse.Namespace, chain: Any, store: Any) -> int:
    with open_capture(args.capture) as reader:
        feed = _feed(args, reader)
        try:
            if args.runtime in ("proc", "ray"):
                runtime = _proc_runtime(args, chain, store)
            else:
                if getattr(args, "kill", None) or getattr(args, "failover", False):
                    raise UsageError("--kill and --failover are for --runtime proc (with sim, a scenario's crash "
                                     "events: chc check)")
                if args.checkpoint_ms is not None:
                    raise UsageError("--checkpoint-ms is for --runtime proc, with --failover or --kill store@N "
                                     "(with sim, a scenario's crash of the store takes checkpoint_ms)")
                runtime = SimRuntime(chain, model=args.model, batch_size=args.batch_size, store=store,
                                     pacer=_pacer(args), delays=_delays(args.delay), seed=args.seed,
                                     log_mode=args.packet_log, log_limit=max(args.log_limit, 0),
                                     persist_every=args.clock_persist)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if args.model == "T":
            _warn_split_state(chain)        # (once the runtime took the chain: not before a refusal)
        outputs = Outputs()
        with outputs.transaction():
            _run_feed(args, runtime, feed, outputs)
            summary = runtime.summary()
            summary.capture = _capture_summary(args, feed)
            if reader.stop_reason:
                summary.mark_partial(f"the capture stopped early at byte {reader.stop_offset:,} "
                                     f"({reader.stop_reason})")
            if feed.stopped_by == "interrupt":
                summary.mark_partial(f"interrupted after {feed.read:,} packets read")
            if args.summary_json:
                _write_json(args.summary_json, summary.as_json(), outputs)
            if args.state_json and summary.state_error is None:
                from .summary import canonical
                _write_json(args.state_json, canonical(runtime.logical_state(), flows=True), outputs)
    if not args.quiet:
        # With the packets on stdout, the summary goes where tcpdump puts its counts.
        print(summary.render(), file=sys.stderr if args.out == STDIN else sys.stdout)
    if summary.state_error is not None:
        raise StateValueError(summary.state_error)
    if feed.stopped_by == "interrupt":
        return EXIT_INTERRUPTED
    return EXIT_PARTIAL if reader.stop_reason and not args.allow_partial else 0


def _proc_runtime(args: argparse.Namespace, chain: Any, store: Any, events: list | None = None,
                  seed: int = 0) -> Any:
    """``--runtime proc`` (docs/proc.md): what only the sim has is refused; ``events``: a
    scenario's events (``chc serve --scenario``), ``seed`` its seed (its slow-downs' draws)."""
    from .runtime.proc import ProcRuntime, parse_kill

    sim_only = [name for name, on in (("--delay", getattr(args, "delay", None)),
                                      ("--multiplier", getattr(args, "multiplier", None) is not None),
                                      ("--pps", getattr(args, "pps", None) is not None),
                                      ("--mbps", getattr(args, "mbps", None) is not None)) if on]
    if sim_only:
        raise UsageError(f"{sim_only[0]} is for --runtime sim (virtual time); --runtime proc runs at top speed")
    # (a scenario's scale-outs add instances a --kill may name, as chc check allows)
    grown = {e.vertex for e in events or () if e.action == "scale-out"}
    named = chain.with_room(grown) if grown else chain
    kills = [parse_kill(k, named) for k in getattr(args, "kill", [])]
    cls: Any = ProcRuntime
    extra: dict[str, Any] = {}
    if getattr(args, "runtime", "proc") == "ray":
        from .runtime import procray
        if not procray.available():
            raise UsageError(procray.EXTRA)
        cls = procray.RayRuntime
        extra = {"address": args.ray_address,
                 "pins": dict(procray.parse_pin(p) for p in getattr(args, "ray_pin", []))}
    rt = cls(chain, model=args.model, batch_size=args.batch_size, store=store, store_url=args.store,
             namespace=_namespace(args, chain),
             tls={"tls_ca": args.store_ca, "tls_cert": args.store_cert, "tls_key": args.store_key},
             log_mode=args.packet_log, log_limit=max(args.log_limit, 0),
             persist_every=args.clock_persist, write_out=bool(args.out), kills=kills,
             failover=getattr(args, "failover", False),
             heartbeat_s=(HEARTBEAT_MS if args.heartbeat is None else args.heartbeat) / 1000,
             misses=MISSES if args.misses is None else args.misses, checkpoint_ms=args.checkpoint_ms,
             events=events or (), seed=seed, **extra)
    if args.checkpoint_ms is not None and rt.no_checkpoints:
        # (refused, as the other options that would do nothing here: it was accepted silently)
        raise UsageError(f"--checkpoint-ms: {rt.no_checkpoints}")
    return rt


def _check_live(args: argparse.Namespace) -> None:
    """--live reads interfaces: the capture-only options make no sense with it."""
    if args.runtime != "sim":
        raise UsageError(f"--live runs on --runtime sim only (not on {args.runtime} yet)")
    given = [name for name, on in (("CAPTURE", args.capture is not None), ("--out", args.out),
                                   ("--filter", args.filter), ("--delay", args.delay),
                                   ("--multiplier", args.multiplier), ("--pps", args.pps),
                                   ("--mbps", args.mbps), ("--topspeed", args.topspeed)) if on]
    if given:
        raise UsageError(f"--live takes no {given[0]} (it reads the interfaces, at their own pace)")


def _refuse_clobber(args: argparse.Namespace) -> None:
    """Refuse, before any work, outputs that would destroy an input or each other."""
    try:
        refuse_clobber({"--out": args.out, "--summary-json": args.summary_json, "--state-json": args.state_json},
                       {"capture": args.capture, "chain spec": args.chain} if args.capture else
                       {"chain spec": args.chain})
    except ClobberError as exc:
        raise UsageError(str(exc)) from None
    if args.out == STDIN and sys.stdout.isatty():
        raise UsageError("--out -: standard output is a terminal; pipe it (| tshark -r -) or redirect it")


def _feed(args: argparse.Namespace, reader: CaptureReader) -> Feed:
    try:
        adapter = adapter_for(reader.linktype)
        match = compile_filter(args.filter, reader.linktype) if args.filter else None
    except ValueError as exc:       # FilterError is one
        raise UsageError(f"{args.capture}: {exc}") from None
    return Feed(reader, adapter, match, args.count)


def _run_feed(args: argparse.Namespace, runtime: SimRuntime, feed: Feed, outputs: Outputs) -> None:
    """Run the chain over the feed, the output packets into --out (in ``outputs``)."""
    reader = feed.reader
    writer = None
    if args.out:
        stream = None if args.out == STDIN else outputs.open(args.out)
        writer = CaptureWriter(args.out, linktype=reader.linktype, nanosecond=reader.nanosecond, stream=stream)
    emit = None
    if writer is not None:
        back = feed.adapter.from_ether if feed.adapter is not None else bytes

        def emit(packets):
            writer.write_many((p.ts, back(p.data)) for p in packets)
    progress = None if args.no_progress or args.quiet else Progress(reader, _size(args.capture))
    try:
        with stop_on_interrupt(feed):
            runtime.run(feed, emit=emit, progress=None if progress is None else progress.update)
        if writer is not None:
            writer.close()
    finally:
        if progress is not None:
            progress.close()


def _size(path: str) -> int | None:
    """The capture's size in bytes if it is a regular file (not a pipe)."""
    if path == STDIN:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) and st.st_size else None


def _capture_summary(args: argparse.Namespace, feed: Feed) -> dict[str, Any]:
    return capture_summary(args.capture, feed.reader, args.filter, feed.filtered_out, args.count)


def _pacer(args: argparse.Namespace) -> Pacer:
    if args.topspeed:
        return Pacer("topspeed")
    for mode in ("pps", "mbps", "multiplier"):
        value = getattr(args, mode)
        if value is not None:
            return Pacer(mode, value)
    return Pacer("multiplier", 1.0)


def _delays(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        target, sep, spec = item.partition("=")
        if not sep or not target or not spec:
            raise UsageError(f"--delay {item!r}: expected VERTEX=DIST or VERTEX[i]=DIST")
        out[target] = spec
    return out


class Progress:
    """A progress bar on stderr: percentage, rate and time left when the capture's
    size is known (a file), packets and packets/s otherwise (a pipe)."""

    def __init__(self, reader: CaptureReader, size: int | None, file: TextIO | None = None,
                 disable: bool | None = None) -> None:
        from tqdm import tqdm
        # disable=None: only on a terminal, so logs, pipes and CI stay clean.
        common = {"desc": "chc run", "disable": disable, "leave": False, "mininterval": 0.5,
                  "file": sys.stderr if file is None else file}
        self._reader = reader
        self._by_bytes = size is not None and reader.position is not None
        self.packets = 0
        if self._by_bytes:
            self.bar = tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024, **common)
        else:
            self.bar = tqdm(unit=" pkt", unit_scale=True, **common)

    def update(self, packets: int) -> None:
        """``packets`` more have entered the chain."""
        self.packets += packets
        bar = self.bar
        if not self._by_bytes:
            bar.update(packets)
            return
        position = self._reader.position
        if position is not None and position > bar.n:
            elapsed = bar.format_dict["elapsed"]
            rate = f", {self.packets / elapsed:,.0f} pkt/s" if elapsed > 0 else ""
            bar.set_postfix_str(f"{self.packets:,} pkt{rate}", refresh=False)
            bar.update(position - bar.n)

    def close(self) -> None:
        self.bar.close()


def _write_json(path: str, data, outputs: Outputs | None = None) -> None:
    """Write ``data`` as JSON to ``path``: renamed into place with ``outputs``, or
    at once if none is given; a failed write leaves no half file."""
    if outputs is None:
        with Outputs().transaction() as own:
            _write_json(path, data, own)
        return
    try:
        fh = outputs.open(path)
        fh.write(json.dumps(data, indent=2, sort_keys=False).encode() + b"\n")
    except OSError as exc:
        raise UsageError(f"{path}: cannot write ({exc.strerror or exc})") from None


COMMANDS = {"run": cmd_run, "serve": cmd_serve, "check": cmd_check, "trace": cmd_trace, "bench": cmd_bench}


def _one_kill(kills: list[str] | None) -> str:
    """chc check's --kill, given once; explicit kills given twice are joined (a second
    --kill silently replaced the first: a new user's trial)."""
    if not kills:
        return ""
    if len(kills) > 1:
        drawn = [k for k in kills if k.split(":")[0] in ("random", "during")]
        if drawn:
            raise UsageError(f"--kill {drawn[0]} draws the kills itself: give it alone, not with another --kill "
                             f"(explicit kills go in one --kill, comma-separated)")
    return ",".join(kills)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:                           # (named by the (sub)command they were given to)
        _subcommand(parser, args).error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT)
    if not args.command:
        parser.print_help()
        return 2
    try:
        # (before any work: a bad --out found after the run threw the whole run away)
        check_outputs(_subcommand(parser, args), args)
        return COMMANDS[args.command](args)
    except (CaptureError, SpecError, UsageError, StoreError, ScenarioError, StateValueError,
            OutputPathError) as exc:
        print(f"chc: error: {exc}", file=sys.stderr)
        return 2
    except ProcFailure as exc:          # a proc worker died: no recovery there yet
        print(f"chc: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("chc: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        if not _stdout_closed():
            raise           # another pipe or socket (a store connection): a real error
        _silence_stdout()
        return EXIT_CLOSED_STDOUT


def finished(code: int) -> None:
    """The ``chc`` process's command has returned ``code`` (its report out): a SIGTERM or
    SIGINT while the interpreter exits (``timeout``'s second SIGTERM, a process-group
    kill) ends it at once with that code; it made it 143 or 130.  (Not ignored: an exit
    that hangs can still be stopped.)  Called by the process's entry points only, never
    by an in-process caller of :func:`main`."""
    def now(signum: int, frame: Any) -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):    # (a closed pipe, a flush the signal interrupted)
                stream.flush()
        os._exit(code)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, now)


def _stdout_closed() -> bool:
    """Has the reader of standard output gone away (``chc ... | head -1``)?"""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), 0)     # a closed pipe's writer always sees POLLERR
        return any(events & select.POLLERR for _fd, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):   # not a file descriptor: not the pipe that broke
        return False


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush of what is
    still buffered does not report the closed pipe again (Python's documented way)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


if __name__ == "__main__":
    code = main()
    finished(code)
    sys.exit(code)
