"""The ``chc trace`` subcommands: gen, inspect, merge, rewrite, trojan, scan.

Theory of operation
-------------------
:func:`register_trace` adds a ``trace`` command with its own subcommands to the
``chc`` parser; :func:`cmd_trace` dispatches to them.  Every subcommand is a
thin wrapper over a library function of :mod:`chc.trace` (so tests and scripts
can call the same code); bad arguments become the CLI's one-line usage error
(exit code 2), capture problems its capture error.  Progress bars go to stderr
and only show on a terminal (tqdm ``disable=None``).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..capture import EARLY_STOP_OBSERVERS, CaptureError
from ..cliargs import EXIT_PARTIAL, OutputPath, UsageError, int_at_least

__all__ = ["cmd_trace", "register_trace"]


_positive_int = int_at_least(1)
_nonneg_int = int_at_least(0)


def _share(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


def _csv(values: list[str] | None) -> list[str]:
    return [x.strip() for v in values or [] for x in v.split(",") if x.strip()]


def register_trace(sub: Any) -> None:
    """Add ``chc trace ...`` to the subparsers ``sub`` of the ``chc`` parser."""
    from .trojan import DEFAULT_BACKGROUND

    trace = sub.add_parser("trace", help="generate, inspect and build captures (chc trace -h)",
                           description="Trace toolkit: synthetic paper-scale traces, capture statistics, "
                                       "merging and rewriting, Trojan and port-scan scenarios with ground truth.")
    tsub = trace.add_subparsers(dest="trace_command", metavar="SUBCOMMAND")

    g = tsub.add_parser("gen", help="write a synthetic trace with the statistics of the paper's Trace1/Trace2",
                        description="Write a synthetic trace (deterministic by --seed, streamed to disk) "
                                    "with the packets, connections and median packet size of a profile: "
                                    "trace1 = 3.8M packets, 1.7K connections, median 368 B; trace2 = 6.4M "
                                    "packets, 199K connections, median 1434 B.")
    g.add_argument("--profile", choices=("trace1", "trace2"), default="trace2", help="default: %(default)s")
    g.add_argument("--packets", type=_positive_int, metavar="N", help="number of packets (overrides the profile)")
    g.add_argument("--connections", type=_positive_int, help="number of connections (overrides the profile)")
    g.add_argument("--scale", type=_positive_float, default=1.0,
                   help="scale packets and connections (and duration) of the profile; default 1")
    g.add_argument("--shape", type=_shape, default=(), metavar="W,W,...",
                   help="rate over time: relative rates of equal slices of the trace's duration, e.g. "
                        "1,4,1 rises to 4x and falls back (connections start at that rate); default: constant")
    g.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    g.add_argument("--nanosecond", action="store_true", help="nanosecond timestamps (default: microsecond)")
    g.add_argument("-o", "--out", required=True, action=OutputPath, metavar="OUT",
                   help="output capture: .pcap or .pcapng, optionally .gz")
    g.add_argument("--json", action="store_true", help="print the summary as JSON")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")

    i = tsub.add_parser("inspect", help="packets, flows, hosts, sizes, protocols of a capture",
                        description="Statistics of a capture: packets, flows (bidirectional 5-tuples), hosts, "
                                    "frame size percentiles (p5/p25/p50/p75/p95), protocol mix, duration, "
                                    "malformed and non-IP counts.")
    i.add_argument("capture", metavar="FILE", help="capture: .pcap, .pcapng, optionally .gz")
    i.add_argument("--json", action="store_true", help="print JSON instead of text")
    i.add_argument("--no-progress", action="store_true", help="no progress bar")

    m = tsub.add_parser("merge", help="merge captures by timestamp, optionally time-shifted",
                        description="Merge captures by timestamp into one.  --shift INPUT=OFFSET moves one "
                                    "input in time (INPUT: the path as given, its file name, or its 1-based "
                                    "position; OFFSET like +1.5s, -200ms, 30us, 12ns).")
    m.add_argument("inputs", nargs="+", metavar="INPUT")
    m.add_argument("-o", "--out", required=True, action=OutputPath, metavar="OUT")
    m.add_argument("--shift", action="append", metavar="INPUT=OFFSET", help="repeatable")
    m.add_argument("--align", action="store_true",
                   help="first shift every input to start when the first input starts")

    r = tsub.add_parser("rewrite", help="rewrite IP addresses (checksums updated)",
                        description="Copy a capture, mapping source and destination addresses "
                                    "(RFC 1624 incremental checksum updates).")
    r.add_argument("capture", metavar="FILE")
    r.add_argument("-o", "--out", required=True, action=OutputPath, metavar="OUT")
    r.add_argument("--map", action="append", required=True, metavar="OLD=NEW", help="repeatable")
    r.add_argument("--fix-checksums", action="store_true",
                   help="also recompute checksums that were already wrong in the input (NIC offload)")

    t = tsub.add_parser("trojan", help="plant SSH -> FTP download -> IRC sequences (ground truth JSON)",
                        description="Plant the Trojan sequence of real Zeek sessions (SSH, FTP RETR "
                                    "NOTEPAD.EXE with its data connection, IRC) into a background capture, "
                                    "one internal host per instance, and write the ground truth.")
    t.add_argument("background", nargs="?", default=str(DEFAULT_BACKGROUND), metavar="BACKGROUND",
                   help="background capture (default: the bundled lan-2012.pcap.gz)")
    t.add_argument("-o", "--out", required=True, action=OutputPath, metavar="OUT")
    where = t.add_mutually_exclusive_group()
    where.add_argument("--count", type=_positive_int, help="number of instances, evenly spread (default 1)")
    where.add_argument("--at", action="append", metavar="POSITIONS",
                       help="background packet indices before which each instance's SSH SYN goes "
                            "(comma-separated, repeatable)")
    t.add_argument("--host", action="append", metavar="IP",
                   help="infected host(s), in instance order (comma-separated, repeatable; default: "
                        "unused addresses x.y.200.N of the background's main private /16)")
    t.add_argument("--gap-packets", type=_nonneg_int, default=100, metavar="K",
                   help="background packets between two steps (default: %(default)s)")
    t.add_argument("--spread", type=_positive_int, default=1, metavar="D",
                   help="background packets between two packets of a session (default: %(default)s)")
    t.add_argument("--ftp-file", default="NOTEPAD.EXE", help="the RETR of pe_pe.pcap to use (default: %(default)s)")
    t.add_argument("--truth", required=True, action=OutputPath, metavar="TRUTH.json",
                   help="write the ground truth here")

    s = tsub.add_parser("scan", help="plant TCP SYN scans (ground truth JSON)",
                        description="Plant TCP SYN scans from new internal hosts against hosts of a background "
                                    "capture and write the ground truth (scanner hosts).")
    s.add_argument("background", nargs="?", default=str(DEFAULT_BACKGROUND), metavar="BACKGROUND")
    s.add_argument("-o", "--out", required=True, action=OutputPath, metavar="OUT")
    s.add_argument("--scanners", type=_positive_int, default=1, metavar="N", help="default: %(default)s")
    s.add_argument("--ports", default="1-1024", help="ports to probe, e.g. 1-1024 or 22,80,443 (default: %(default)s)")
    s.add_argument("--targets", type=_positive_int, default=8, metavar="N",
                   help="background hosts each scanner probes (default: %(default)s)")
    s.add_argument("--rate", type=_positive_float, default=100.0, metavar="PPS",
                   help="probes per second per scanner (default: %(default)s)")
    s.add_argument("--answered", type=_share, default=0.1,
                   help="share of probes answered by SYN-ACK (default: %(default)s)")
    s.add_argument("--silent", type=_share, default=0.5,
                   help="share of the other probes left unanswered; the rest get an RST (default: %(default)s)")
    s.add_argument("--host", action="append", metavar="IP", help="scanner address(es) (comma-separated)")
    s.add_argument("--start", type=float, metavar="SECONDS",
                   help="start the first scan this long after the background's first packet "
                        "(default: scans evenly spread over the background)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--any-order", action="store_true",
                   help="keep the first probing order drawn even if TRW would not flag the scanner "
                        "(default: redraw the order, never which ports are open)")
    s.add_argument("--truth", required=True, action=OutputPath, metavar="TRUTH.json",
                   help="write the ground truth here")


def _bar(args: argparse.Namespace, desc: str, total: int | None = None, unit: str = " pkt"):
    if getattr(args, "no_progress", False):
        return None
    from tqdm import tqdm
    return tqdm(total=total, unit=unit, unit_scale=True, desc=desc, disable=None, leave=False,
                mininterval=0.5, file=sys.stderr)


def _write_json(path: str, data: Any) -> None:
    try:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2)
            fh.write("\n")
    except OSError as exc:
        raise UsageError(f"{path}: cannot write ({exc.strerror or exc})") from None


def _shape(text: str) -> tuple[float, ...]:
    try:
        shape = tuple(float(w) for w in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers such as 1,4,1, got {text!r}") from None
    if any(not w >= 0 or w == float("inf") for w in shape) or not sum(shape) > 0:
        raise argparse.ArgumentTypeError(f"relative rates must be finite, >= 0 and not all 0, got {text!r}")
    return shape


def _gen(args: argparse.Namespace) -> int:
    from .gen import generate, resolve_profile
    try:
        profile = resolve_profile(args.profile, args.packets, args.connections, args.scale, args.shape)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    bar = _bar(args, f"chc trace gen {profile.name}", total=profile.packets)
    try:
        summary = generate(args.out, profile, seed=args.seed, nanosecond=args.nanosecond,
                           progress=None if bar is None else bar.update)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    finally:
        if bar is not None:
            bar.close()
    summary["output"] = args.out
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{args.out}: {summary['packets']:,} packets, {summary['connections']:,} connections "
              f"(profile {summary['profile']}, seed {summary['seed']}) in {summary['elapsed_s']:.1f} s "
              f"({summary['pps']:,} packets/s)")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from .stats import inspect_capture, render
    bar = _bar(args, "chc trace inspect")
    try:
        stats = inspect_capture(args.capture, progress=None if bar is None else bar.update)
    finally:
        if bar is not None:
            bar.close()
    print(json.dumps(stats, indent=2) if args.json else render(stats))
    return 0


def _merge(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .ops import merge_captures, parse_offset
    shifts = [0] * len(args.inputs)
    for spec in args.shift or []:
        name, sep, off = spec.rpartition("=")
        if not sep:
            raise UsageError(f"--shift {spec!r}: expected INPUT=OFFSET")
        hits = [k for k, p in enumerate(args.inputs) if name in (p, Path(p).name, str(k + 1))]
        if len(hits) != 1:
            raise UsageError(f"--shift {spec!r}: {name!r} names {'no' if not hits else 'more than one'} input")
        try:
            shifts[hits[0]] += parse_offset(off)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    res = merge_captures(args.inputs, args.out, shifts, align=args.align)
    n = len(args.inputs)
    print(f"{args.out}: {res['packets']:,} packets from {n} input{'' if n == 1 else 's'}")
    return 0


def _rewrite(args: argparse.Namespace) -> int:
    from .ops import parse_address_map, rewrite_capture
    try:
        mapping = parse_address_map(args.map)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    res = rewrite_capture(args.capture, args.out, mapping, fix=args.fix_checksums)
    print(f"{args.out}: {res['packets']:,} packets, {res['rewritten']:,} rewritten, "
          f"{res['checksums_fixed']:,} checksums fixed")
    return 0


def _trojan(args: argparse.Namespace) -> int:
    from .trojan import ZEEK, load_sessions, plant_trojans
    positions = None
    if args.at:
        try:
            positions = [int(x) for x in _csv(args.at)]
        except ValueError:
            raise UsageError(f"--at: expected comma-separated packet indices, got {args.at!r}") from None
    try:
        sessions = load_sessions(ZEEK / "ssh_single-conn.pcap", ZEEK / "pe_pe.pcap", ZEEK / "irc-basic.pcap",
                                 ftp_file=args.ftp_file)
        truth = plant_trojans(args.background, args.out, count=args.count, positions=positions,
                              hosts=_csv(args.host) or None, gap=args.gap_packets, spread=args.spread,
                              sessions=sessions)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    _write_json(args.truth, truth)
    print(f"{args.out}: {truth['packets']:,} packets ({truth['planted_packets']:,} planted), "
          f"{len(truth['instances'])} Trojan instance(s), expected alerts: "
          + ", ".join(f"{a['host']}@{a['clock']}" for a in truth["expected_alerts"]))
    return 0


def _scan(args: argparse.Namespace) -> int:
    from .scan import plant_scans
    try:
        truth = plant_scans(args.background, args.out, scanners=args.scanners, ports=args.ports, rate=args.rate,
                            answered=args.answered, silent=args.silent, targets=args.targets,
                            hosts=_csv(args.host) or None, start_s=args.start, seed=args.seed,
                            ensure_flagged=not args.any_order)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    _write_json(args.truth, truth)
    if truth["targets_available"] < truth["targets_asked"]:
        print(f"chc: warning: --targets {truth['targets_asked']}: the background has {truth['targets_available']} "
              "hosts to scan; each scanner probes those", file=sys.stderr)
    missed = [x["host"] for x in truth["scanners"] if not x["trw_flagged"]]
    print(f"{args.out}: {truth['packets']:,} packets ({truth['planted_packets']:,} planted), "
          f"{len(truth['scanners'])} scanner(s): {', '.join(x['host'] for x in truth['scanners'])}")
    if missed:
        print(f"chc: warning: TRW will not flag {', '.join(missed)} with these parameters "
              "(see trw_flagged in the truth file)", file=sys.stderr)
    return 0


_SUBCOMMANDS = {"gen": _gen, "inspect": _inspect, "merge": _merge, "rewrite": _rewrite,
                "trojan": _trojan, "scan": _scan}


def _sources(args: argparse.Namespace) -> list[str]:
    """The input captures a subcommand was given."""
    sources = [*(getattr(args, "inputs", None) or []), getattr(args, "capture", None),
               getattr(args, "background", None)]
    return [p for p in sources if p]


def _refuse_clobber(args: argparse.Namespace) -> None:
    """An output (-o, --truth) must not be an input capture or the other output:
    ``chc trace rewrite in.pcap -o in.pcap`` would read what it is overwriting."""
    from ..outfiles import ClobberError, refuse_clobber
    try:
        refuse_clobber({"-o": getattr(args, "out", None), "--truth": getattr(args, "truth", None)},
                       {f"input {k + 1}": path for k, path in enumerate(_sources(args))})
    except ClobberError as exc:
        raise UsageError(str(exc)) from None


def _refuse_what_it_cannot_do(args: argparse.Namespace) -> None:
    """A capture written to a terminal; an input that is not Ethernet: the tools parse
    Ethernet frames (on raw IP ``inspect`` counted no IPv4 and ``trojan`` wrote
    Ethernet frames into a raw-IP file, exit 0), where ``chc run`` adapts the others."""
    from ..capture import LINKTYPE_ETHERNET, open_capture
    from ..linktypes import LINK_NAMES
    if getattr(args, "out", None) == "-" and sys.stdout.isatty():
        raise UsageError("-o -: standard output is a terminal; pipe it (| tshark -r -) or redirect it")
    for path in (p for p in _sources(args) if p != "-"):
        with open_capture(path) as reader:
            if reader.linktype != LINKTYPE_ETHERNET:
                kind = LINK_NAMES.get(reader.linktype, "")
                raise UsageError(f"{path}: link type {reader.linktype}{f' ({kind})' if kind else ''}: chc trace "
                                 "reads Ethernet captures only (chc run reads this one)")


def cmd_trace(args: argparse.Namespace) -> int:
    """Run ``chc trace SUBCOMMAND``."""
    name = getattr(args, "trace_command", None)
    if not name:
        raise UsageError("chc trace: choose a subcommand: " + ", ".join(_SUBCOMMANDS) + " (chc trace -h)")
    _refuse_clobber(args)
    _refuse_what_it_cannot_do(args)
    early: list[tuple[str, str]] = []

    def observe(path: str, reason: str) -> None:
        early.append((path, reason))
    EARLY_STOP_OBSERVERS.append(observe)
    try:
        code = _SUBCOMMANDS[name](args)
    except (CaptureError, BrokenPipeError):
        raise                           # (a closed pipe: chc's main exits as chc run does)
    except OSError as exc:
        raise UsageError(f"{getattr(exc, 'filename', None) or 'output'}: {exc.strerror or exc}") from None
    finally:
        EARLY_STOP_OBSERVERS.remove(observe)
    if early and code == 0:
        # As chc run: never a silent success on part of the input (cli.md, exit codes).
        path, reason = early[0]
        print(f"chc trace {name}: {path} stopped early ({reason}): the result covers the part before it "
              f"(exit {EXIT_PARTIAL})", file=sys.stderr)
        return EXIT_PARTIAL
    return code
