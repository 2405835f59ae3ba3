"""Metadata overhead (§7.2): the §7.1 chain without the packet log, with the log
held locally by the root, and with the log in the store, measured in one run.

Clocks and XOR vectors are always on (the root stamps every packet; instances
fold update ids into vectors); the log variants add logging, the completion
reports and the XOR check.  Each variant runs ``--repeat`` times, interleaved,
and the best time counts (least disturbed by other load).

    python bench/metadata_overhead.py [--json FILE] [--model EO+C+NA] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from chc.backends.memory import MemoryStore
from chc.capture import open_capture
from chc.runtime.sim import SimRuntime
from chc.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("off", "local", "store")


def once(chain, records, model: str, log_mode: str) -> float:
    rt = SimRuntime(chain, model=model, store=MemoryStore(), log_mode=log_mode)
    started = time.perf_counter()
    rt.run(records)
    took = time.perf_counter() - started
    if log_mode != "off":
        log = rt.summary().log
        assert log["remaining"] == 0, log
    return took


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--model", default="EO+C+NA")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--packets", type=int, default=0, help="use only the first N packets")
    ap.add_argument("--capture", default=str(ROOT / "traces/pathspider/lan-2012.pcap.gz"))
    args = ap.parse_args(argv)
    chain = load_spec(ROOT / "examples/paper_chain.yaml")
    records = list(open_capture(args.capture))
    if args.packets:
        records = records[:args.packets]
    best = {v: float("inf") for v in VARIANTS}
    for _ in range(args.repeat):
        for v in VARIANTS:
            best[v] = min(best[v], once(chain, records, args.model, v))
    n = len(records)
    base = best["off"]
    out = {"packets": n, "model": args.model, "variants": {}}
    print(f"§7.1 chain, model {args.model}, {n:,} packets (best of {args.repeat})")
    print(f"{'packet log':<12}{'pps':>12}{'us/packet':>12}{'overhead us':>13}{'ratio':>8}")
    for v in VARIANTS:
        t = best[v]
        row = {"pps": round(n / t, 1), "us_per_packet": round(t / n * 1e6, 3),
               "overhead_us": round((t - base) / n * 1e6, 3), "ratio_vs_off": round(t / base, 4)}
        out["variants"][v] = row
        print(f"{v:<12}{row['pps']:>12,.0f}{row['us_per_packet']:>12.2f}{row['overhead_us']:>13.2f}"
              f"{row['ratio_vs_off']:>8.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
