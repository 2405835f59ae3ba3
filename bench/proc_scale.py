"""The proc runtime on this machine: a NAT vertex with 1 and 2 instances, and the
§7.1 chain end to end, next to the sim runtime measured in the same run.

Usage: python bench/proc_scale.py [--packets N] [--repeats R] [--batch-size B] [--json FILE]

Every configuration runs on the same records (the first N packets of the bundled
LAN capture, read into memory first, so reading the capture is not measured), in
model EO+C+NA on the default store (the sim: in-process; proc: the store server
process).  Configurations are interleaved repeat by repeat and the median is
reported, because this machine is shared and its load changes.  For proc runs,
``pps`` counts the whole run (process start-up included) and ``pps_steady``
leaves out the start-up (until every worker is ready); ``cpu_s`` is the CPU time
each process used.  Ratios are against baselines of the same run: the NAT with
2 instances against 1 (the issue's goal: >= 1.6x on 2 cores), proc against sim.
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

NAT_CONFIG = {"external_ip": "198.51.100.7", "internal": ["10.64.0.0/16"], "port_range": [20000, 59999],
              "unsolicited": "pass"}


def _chains(spec_mod, load_spec):
    nat = {"name": "nat", "vertices": {"nat": {"nf": "nat", "config": NAT_CONFIG}}, "edges": []}
    return {
        "nat": spec_mod.parse_spec(nat),
        "nat x2": spec_mod.parse_spec({**nat, "vertices": {"nat": {"nf": "nat", "parallelism": 2,
                                                                   "config": NAT_CONFIG}}}),
        "chain": load_spec(ROOT / "examples/paper_chain.yaml"),
    }


def _run(runtime: str, chain, records, batch: int) -> dict:
    from chc.backends.memory import MemoryStore
    from chc.runtime.proc import ProcRuntime
    from chc.runtime.sim import SimRuntime

    t0 = time.perf_counter()
    if runtime == "sim":
        rt = SimRuntime(chain, model="EO+C+NA", batch_size=batch, store=MemoryStore())
        rt.run(records)
        wall = time.perf_counter() - t0
        s = rt.summary()
        return {"wall_s": wall, "pps": s.packets_in / wall, "pps_steady": s.packets_in / wall,
                "digest": s.state_digest, "packets": s.packets_in}
    rt = ProcRuntime(chain, model="EO+C+NA", batch_size=batch)
    rt.run(records)
    wall = time.perf_counter() - t0
    s = rt.summary()
    cpu = {name: round(rep.get("cpu_s", 0.0), 3) for name, rep in rt.reported.items()}
    cpu["@store"] = round(rt.store_stats.get("cpu_s", 0.0), 3)
    return {"wall_s": wall, "startup_s": rt.startup_s, "pps": s.packets_in / wall,
            "pps_steady": s.packets_in / (wall - rt.startup_s), "digest": s.state_digest,
            "packets": s.packets_in, "cpu_s": cpu}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/proc_scale.py", description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=62_781, help="packets of the LAN capture (default: all)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    from chc import spec as spec_mod
    from chc.capture import open_capture
    from chc.spec import load_spec

    with open_capture(str(ROOT / "traces/pathspider/lan-2012.pcap.gz")) as reader:
        records = list(itertools.islice(reader, args.packets))
    chains = _chains(spec_mod, load_spec)
    configs = [("sim", "nat"), ("proc", "nat"), ("proc", "nat x2"), ("sim", "chain"), ("proc", "chain")]
    runs: dict[str, list[dict]] = {f"{r} {c}": [] for r, c in configs}
    for rep in range(args.repeats):
        for runtime, name in configs:
            res = _run(runtime, chains[name], records, args.batch_size)
            runs[f"{runtime} {name}"].append(res)
            print(f"repeat {rep + 1}: {runtime:4} {name:7} {res['pps']:9,.0f} pps ({res['pps_steady']:9,.0f} "
                  f"steady), {res['wall_s']:.2f} s", flush=True)
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("pps", "pps_steady", "wall_s")}
           for k, v in runs.items()}
    ratios = {
        "proc nat x2 / proc nat": med["proc nat x2"]["pps_steady"] / med["proc nat"]["pps_steady"],
        "proc nat / sim nat": med["proc nat"]["pps_steady"] / med["sim nat"]["pps"],
        "proc chain / sim chain": med["proc chain"]["pps_steady"] / med["sim chain"]["pps"],
        "proc chain / sim chain (with start-up)": med["proc chain"]["pps"] / med["sim chain"]["pps"],
    }
    digests = {k: sorted({r["digest"] for r in v}) for k, v in runs.items()}
    print(f"\n{'configuration':<16}{'pps':>10}{'pps steady':>12}{'wall s':>9}   (median of {args.repeats}, "
          f"{len(records):,} packets, {os.cpu_count()} cores)")
    for k, m in med.items():
        print(f"{k:<16}{m['pps']:>10,.0f}{m['pps_steady']:>12,.0f}{m['wall_s']:>9.2f}")
    print_ratios(ratios)
    print(f"\nsame digest, sim and proc chain: {digests['sim chain'] == digests['proc chain']}; "
          f"NAT x1 and sim: {digests['sim nat'] == digests['proc nat']}")
    write_json(args.json, {"packets": len(records), "repeats": args.repeats, "cores": os.cpu_count(),
                           "median": med, "ratios": ratios, "digests": digests, "runs": runs,
                           "load_avg": os.getloadavg()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
