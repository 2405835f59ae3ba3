"""Cost of logging per-flow updates in the write-ahead logs (§5.4 store failover).

Runs the paper chain (EO+C+NA, top speed, sim runtime) on the first packets of the
bundled LAN capture three ways, interleaved round by round in one process:

* ``base``: no store crash possible: no recoverable engine, no write-ahead log;
* ``shared-wal``: a store crash is possible (scheduled after the input ends, so
  it never happens) and the logs hold shared-state updates only, as before
  per-flow updates were logged;
* ``full-wal``: the same, with per-flow updates logged too (what runs now).

Prints the median CPU time per packet of each and the ratios to ``shared-wal``
and ``base`` measured in the same run, and the time spent in the logging itself
(``WriteAheadLog.log_sent``, timed around each call), which the whole run's time
on a loaded machine hides; and the CPU time of one checkpoint of the store the
last ``full-wal`` run left, with per-flow objects, owners, the whole clock log
and pre-images against the shared objects and their clock log only.

Usage: python bench/wal_cost.py [--packets 20000] [--rounds 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from pathlib import Path

from chc.capture import open_capture
from chc.core import recovery
from chc.core.store import UPDATES
from chc.runtime.pacing import Pacer
from chc.runtime.sim import SimRuntime
from chc.scenario import Event
from chc.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
_full_log_sent = recovery.WriteAheadLog.log_sent


def _shared_only(self, ops):
    """The write-ahead log as it was: per-flow updates counted, not kept."""
    for op in ops:
        if op.seq <= self.logged_seq:
            continue
        self.logged_seq = op.seq
        if op.code in UPDATES and not op.key.per_flow:
            self.updates.append(op)


_in_log = [0]


def _timed(fn):
    """``fn`` with the CPU time spent in it added up (the write-ahead logging itself)."""
    def log_sent(self, ops):
        t0 = time.perf_counter_ns()
        fn(self, ops)
        _in_log[0] += time.perf_counter_ns() - t0
    return log_sent


def _shared_checkpoint(engine) -> None:
    """What a checkpoint copied before per-flow objects, owners and pre-images were
    in it: the shared objects and their clock-log entries."""
    recovery._copy_data({k: v for k, v in engine.data.items() if not k.per_flow})
    {k: dict(v) for k, v in engine.clock_log.items() if not k.per_flow}
    tuple(e for e in engine.log_order if not e[1].per_flow)


def checkpoint_cost(rt, reps: int = 7) -> dict:
    """CPU time of one checkpoint of the store as the run left it, both ways (best of ``reps``)."""
    engine = rt.store.engine
    out = {}
    for name, fn in (("shared_only_ms", lambda: _shared_checkpoint(engine)), ("full_ms", engine.checkpoint)):
        best = None
        for _ in range(reps):
            t0 = time.process_time_ns()
            fn()
            t = time.process_time_ns() - t0
            best = t if best is None else min(best, t)
        out[name] = best / 1e6
    out["objects"] = len(engine.data)
    out["per_flow_objects"] = sum(k.per_flow for k in engine.data)
    out["full_over_shared"] = out["full_ms"] / out["shared_only_ms"]
    return out


def run(chain, records, variant: str) -> tuple[int, int, int]:
    recovery.WriteAheadLog.log_sent = _timed(_shared_only if variant == "shared-wal" else _full_log_sent)
    _in_log[0] = 0
    events = [] if variant == "base" else [Event("crash", "store", {}, at_packet=len(records) + 1)]
    rt = SimRuntime(chain, model="EO+C+NA", pacer=Pacer("topspeed", 0), events=events)
    t0 = time.process_time_ns()
    rt.run(records)
    cpu = time.process_time_ns() - t0
    logged = sum(len(i.client.backend.wal.flow_updates) for i in rt._all_instances()
                 if i.client is not None and hasattr(i.client.backend, "wal"))
    if variant == "full-wal":
        _last[0] = rt
    return cpu, logged, _in_log[0]


_last: list = [None]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json")
    args = ap.parse_args()
    chain = load_spec(ROOT / "examples/paper_chain.yaml")
    records = list(itertools.islice(open_capture(ROOT / "traces/pathspider/lan-2012.pcap.gz"), args.packets))
    variants = ("base", "shared-wal", "full-wal")
    times: dict[str, list[int]] = {v: [] for v in variants}
    in_log: dict[str, list[int]] = {v: [] for v in variants}
    logged = 0
    for r in range(args.rounds):
        for v in variants:
            cpu, n, wal_ns = run(chain, records, v)
            times[v].append(cpu)
            in_log[v].append(wal_ns)
            if v == "full-wal":
                logged = n
        print(f"round {r + 1}: " + ", ".join(f"{v} {times[v][-1] / len(records) / 1000:.2f} us/pkt" for v in variants))
    recovery.WriteAheadLog.log_sent = _full_log_sent
    med = {v: statistics.median(t) / len(records) / 1000 for v, t in times.items()}
    res = {"packets": len(records), "rounds": args.rounds, "us_per_packet": med,
           "full_over_shared": med["full-wal"] / med["shared-wal"], "full_over_base": med["full-wal"] / med["base"],
           "shared_over_base": med["shared-wal"] / med["base"],
           "per_flow_added_us_per_packet": med["full-wal"] - med["shared-wal"],
           "per_flow_entries_at_end": logged,
           "logging_us_per_packet": {v: statistics.median(t) / len(records) / 1000 for v, t in in_log.items()
                                     if v != "base"}}
    res["checkpoint"] = checkpoint_cost(_last[0])
    lg = res["logging_us_per_packet"]
    res["logging_full_over_shared"] = lg["full-wal"] / lg["shared-wal"]
    res["logging_added_us_per_packet"] = lg["full-wal"] - lg["shared-wal"]
    print(json.dumps(res, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
