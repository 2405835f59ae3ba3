"""The proc runtime's scaling pause (§5.1): scale-outs with and without warm spares.

Usage: python bench/proc_pause.py [--packets N] [--changes K] [--repeats R] [--json FILE]

The §7.1 chain over the first N packets of the bundled LAN capture (read into
memory first), model EO+C+NA, default store, batch 64, with K changes at even
packet intervals: a scale-out then a scale-in of the NAT, then of the port-scan
detector, and so on.  Each change's ``pause_s`` is from the event until every
process has acknowledged it (input is held meanwhile; docs/proc.md, "Scaling
over processes").  With warm spares (the default) a scale-out's new instance is
a process started ahead of need (``procworker.spare``); without, it is started
at the scale-out.  The two configurations alternate, repeat by repeat, on the
same records; medians over every change of a kind in every repeat, and the
ratio spares / no spares of the same run.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from _common import print_ratios, write_json  # noqa: E402


def _events(packets: int, changes: int) -> list:
    from chc.scenario import Event
    kinds = [("scale-out", "nat"), ("scale-in", "nat"), ("scale-out", "portscan"), ("scale-in", "portscan")]
    step = packets // (changes + 1)
    return [Event(a, t, {}, at_packet=step * (k + 1)) for k, (a, t) in zip(range(changes), itertools.cycle(kinds))]


def _run(records: list, changes: int, spares: bool) -> dict:
    from chc.runtime.proc import ProcRuntime
    from chc.spec import load_spec

    rt = ProcRuntime(load_spec(ROOT / "examples/paper_chain.yaml"), model="EO+C+NA", batch_size=64,
                     events=_events(len(records), changes), spares=spares)
    t0 = time.perf_counter()
    rt.run(records)
    wall = time.perf_counter() - t0
    s = rt.summary()
    pauses: dict[str, list[float]] = {"scale-out": [], "scale-in": [], "new instance": []}
    for e in s.events:
        if e["kind"] in pauses:
            pauses[e["kind"]].append(e["pause_s"])
        if "start_s" in e:
            pauses["new instance"].append(e["start_s"])
    took = [e.get("spare") for e in s.events if e["kind"] == "scale-out"]
    return {"wall_s": wall, "pause_s": pauses, "spares_taken": sum(map(bool, took)), "scale_outs": len(took),
            "packets": s.packets_in}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/proc_pause.py", description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=30_000, help="packets of the LAN capture (default: 30,000)")
    ap.add_argument("--changes", type=int, default=8, help="scale-outs and scale-ins, alternating (default: 8)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    if args.packets < 100 or args.changes < 1 or args.repeats < 1:
        ap.error("--packets >= 100, --changes >= 1 and --repeats >= 1")
    from chc.capture import open_capture

    with open_capture(str(ROOT / "traces/pathspider/lan-2012.pcap.gz")) as reader:
        records = list(itertools.islice(reader, args.packets))
    runs: dict[str, list[dict]] = {"spares": [], "no spares": []}
    for rep in range(args.repeats):
        for name in runs:
            res = _run(records, args.changes, name == "spares")
            runs[name].append(res)
            outs = ", ".join(f"{p * 1000:.0f}" for p in res["pause_s"]["scale-out"])
            print(f"repeat {rep + 1}: {name:9} scale-out pauses [{outs}] ms, "
                  f"{res['spares_taken']}/{res['scale_outs']} from a spare, {res['wall_s']:.2f} s", flush=True)
    kinds = ("scale-out", "scale-in", "new instance")
    med = {name: {kind: statistics.median(p for r in rs for p in r["pause_s"][kind]) * 1000 for kind in kinds}
           for name, rs in runs.items()}
    ratios = {f"{kind}, spares / no spares": med["spares"][kind] / med["no spares"][kind] for kind in kinds}
    print(f"\n{'median (ms)':<12}{'scale-out':>10}{'scale-in':>10}{'new instance':>14}   ({args.repeats} repeats, "
          f"{len(records):,} packets, {args.changes} changes, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f})")
    for name, m in med.items():
        print(f"{name:<12}{m['scale-out']:>10.0f}{m['scale-in']:>10.0f}{m['new instance']:>14.0f}")
    print_ratios(ratios)
    write_json(args.json, {"packets": len(records), "changes": args.changes, "repeats": args.repeats,
                           "cores": os.cpu_count(), "median_ms": med, "ratios": ratios, "runs": runs,
                           "load_avg": os.getloadavg()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
