"""Stragglers over real processes (§5.3): what a clone of a slowed instance buys on proc.

Usage: python bench/proc_straggler.py [--packets N] [--repeats R] [--seed S] [--json FILE]

The §7.1 chain over the first N packets of the bundled LAN capture (read into
memory first), model EO+C+NA, default store, batch 64, one instance per vertex,
with the events of ``examples/scenarios/proc-straggler.yaml`` (nat[0] and
portscan[0] slowed, each cloned; trojan[0] slowed and sped up), against the same
slow-downs without the clones, and no events at all: three configurations,
alternating repeat by repeat on the same records.  Per run: wall time, the
seconds the kept processes slept (``slept_s`` of the instances' final reports; a
stopped straggler's are lost with it), and per clone pair what was kept and how
far behind the straggler was when the pair was resolved (``clock_clone -
clock_straggler``, in clocks: input packets) after how long side by side.
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

SCENARIO = ROOT / "examples/scenarios/proc-straggler.yaml"


def _run(records: list, events: list, seed: int) -> dict:
    from chc.runtime.proc import ProcRuntime
    from chc.spec import load_spec

    rt = ProcRuntime(load_spec(ROOT / "examples/paper_chain.yaml"), model="EO+C+NA", batch_size=64, events=events,
                     seed=seed)
    t0 = time.perf_counter()
    rt.run(records)
    wall = time.perf_counter() - t0
    s = rt.summary()
    pairs = [{"vertex": e["vertex"], "kept": e["kept"], "behind": e["clock_clone"] - e["clock_straggler"],
              "side_by_side_s": e["side_by_side_s"], "packet": e["packet"]}
             for e in s.events if e["kind"] == "clone-resolved"]
    return {"wall_s": wall, "digest": s.state_digest, "pairs": pairs,
            "slept_s": {n: r.get("slept_s", 0) for n, r in rt.reported.items() if r.get("slept_s")}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/proc_straggler.py", description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=6000, help="packets of the LAN capture (default: 6,000)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0, help="the slow-downs' draws (default 0)")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    if args.packets < 3000 or args.repeats < 1:
        ap.error("--packets >= 3000 (the scenario's events run to packet 2,600) and --repeats >= 1")
    from chc.capture import open_capture
    from chc.scenario import load_scenario

    with open_capture(str(ROOT / "traces/pathspider/lan-2012.pcap.gz")) as reader:
        records = list(itertools.islice(reader, args.packets))
    events = load_scenario(SCENARIO).events
    configs = {"slowed + clones": events, "slowed, no clone": [e for e in events if e.action != "clone"],
               "no events": []}
    runs: dict[str, list[dict]] = {name: [] for name in configs}
    for rep in range(args.repeats):
        for name, evs in configs.items():
            res = _run(records, evs, args.seed)
            runs[name].append(res)
            pairs = "; ".join(f"{p['vertex']} kept {p['kept']}, straggler {p['behind']} behind after "
                              f"{p['side_by_side_s']:.2f} s" for p in res["pairs"])
            print(f"repeat {rep + 1}: {name:17} {res['wall_s']:6.2f} s  {pairs}", flush=True)
    med = {name: statistics.median(r["wall_s"] for r in rs) for name, rs in runs.items()}
    digests = {r["digest"] for rs in runs.values() for r in rs}
    print(f"\nmedian wall time ({args.repeats} repeats, {len(records):,} packets, seed {args.seed}, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}); "
          f"{'one state digest' if len(digests) == 1 else f'{len(digests)} state digests'}")
    for name, m in med.items():
        print(f"{name:<18}{m:8.2f} s")
    ratios = {"slowed + clones / slowed, no clone": med["slowed + clones"] / med["slowed, no clone"],
              "slowed + clones / no events": med["slowed + clones"] / med["no events"]}
    print_ratios(ratios)
    write_json(args.json, {"packets": len(records), "repeats": args.repeats, "seed": args.seed,
                           "cores": os.cpu_count(), "median_wall_s": med, "ratios": ratios, "runs": runs,
                           "digests": len(digests), "load_avg": os.getloadavg()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
