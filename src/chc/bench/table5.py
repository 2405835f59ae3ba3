"""Table 5 (§7.3 "Straggler mitigation"): duplicate packets and duplicate state
updates a straggler's clone would cause, with CHC's suppression off and on.

Theory of operation
-------------------
The chain is the paper's: a NAT followed by a port-scan detector, one instance
each, in the ``sim`` runtime on the in-process memory store (model ``EO+C+NA``).
Every instance serves a packet in ``uniform:LO:HI`` µs of virtual time (default
5-20); the NAT is a *straggler* from the first packet: as the paper says, an
extra random 3-10 µs per packet, i.e. its delay is ``uniform:LO+3:HI+10``.

*Load* is the offered packet rate relative to the NAT's normal capacity: the
input is paced at ``load x 1e6 / mean_service_us`` packets/s (``--pacing pps``),
where ``mean_service_us = (LO + HI) / 2`` is the mean of the normal delay.  At
30% and 50% load the straggler (mean ``(LO+HI)/2 + 6.5`` µs) still keeps up on
average but builds queues in bursts, so the clone has packets in transit to
replay.

At ``--clone-at`` input packets the NAT straggler is cloned (``do: clone``,
§5.3) and the pair runs side by side for ``--for-ms`` of virtual time (default
1 s, so more packets pass the pair at the higher load, as in the paper, whose
counts grow with load); then the faster copy is kept.  The same run is done
twice, with the ``no-dup-suppression`` break's switches (outputs of both copies
delivered, the store applying both copies' updates) and without.  Counted from
the ``clone-resolved`` event: output packets of the slower copy, i.e. *duplicate
packets reaching the port-scan detector*, and *duplicate state updates*
(suppression on: updates the store answered from its clock log instead of
applying them; off: updates it applied a second time).  Reported as
``duplicates_reaching_portscan`` and ``duplicate_state_updates``: with
suppression these must be 0 and without they must be > 0, which the script
asserts (``suppressed`` shows what suppression removed).  Also the clone's
catch-up: ``catch_up_us``, from its start to the end of its replay of packets in
transit (virtual time; ``null`` when the straggler had none queued), and
``backlog_us``, the work the straggler had accepted and not yet finished when it
was cloned, which the clone's output waits out (it must not overtake it).

The input is a generated trace (``chc trace gen`` profile ``trace1``) so that
the rate is the pacer's alone; the numbers are counts, not timings, and the
same arguments give the same numbers.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
from pathlib import Path
from typing import Any

from ..backends.memory import MemoryStore
from ..capture import open_capture
from ..runtime.pacing import Pacer
from ..runtime.sim import SimRuntime
from ..scenario import parse_scenario
from ..spec import parse_spec
from ..trace.gen import generate, resolve_profile

PAPER = {"30%": {"duplicate_packets": 13768, "duplicate_updates": 233},
         "50%": {"duplicate_packets": 34351, "duplicate_updates": 545}}


def chain_spec() -> dict[str, Any]:
    """NAT -> portscan, as in §7.3 (addresses of the generated traces)."""
    return {"name": "table5",
            "vertices": {
                "nat": {"nf": "nat", "config": {"external_ip": "198.51.100.7", "internal": ["10.20.0.0/16"],
                                                "port_range": [20000, 59999], "unsolicited": "pass"}},
                "portscan": {"nf": "portscan",
                             "config": {"theta0": 0.8, "theta1": 0.2, "eta0": 0.01, "eta1": 99, "timeout_s": 5}}},
            "edges": ["nat -> portscan"]}


def run_once(records: list, load: float, lo: float, hi: float, clone_at: int, for_us: float,
             suppression: bool, model: str = "EO+C+NA") -> dict[str, Any]:
    """One run; the clone's ``clone-resolved`` counts."""
    chain = parse_spec(chain_spec())
    pps = load * 1e6 / ((lo + hi) / 2)
    # §7.3: the straggler NAT takes an extra random 3-10 µs per packet.
    sc = parse_scenario({"events": [{"at": {"packets": clone_at}, "do": "clone", "target": "nat[0]",
                                     "for_us": for_us}]})
    rt = SimRuntime(chain, model=model, store=MemoryStore(), pacer=Pacer("pps", pps),
                    delays={"nat[0]": f"uniform:{lo + 3:g}:{hi + 10:g}", "portscan[0]": f"uniform:{lo:g}:{hi:g}"},
                    seed=0, events=sc.events_for(0, list(chain.vertices), len(records)))
    engine = rt.store.engine
    if not suppression:             # the no-dup-suppression break's switches (chc.coe)
        rt.dup_suppression = False
        engine.emulate = False
    # Measured at the detector itself: every clock it is given a second time is a duplicate.
    seen: set[int] = set()
    dups = [0]
    deliver = rt._deliver

    def counted(src: tuple, inst: Any, pkts: list) -> None:
        if inst.vertex == "portscan":
            for p in pkts:
                if p.clock in seen:
                    dups[0] += 1
                seen.add(p.clock)
        deliver(src, inst, pkts)
    rt._deliver = counted           # type: ignore[method-assign]
    rt.run(records)
    [done] = [e for e in rt.events_log if e["kind"] == "clone-resolved"]
    counts = done["duplicates_suppressed" if suppression else "duplicates_delivered"]
    outputs = counts["outputs"] + counts["drops"]
    row = {"pps": round(pps), "kept": done["kept"], "replayed": done["replayed"],
           "in_transit": done["in_transit"], "catch_up_us": None if done["catch_up_ns"] is None
           else round(done["catch_up_ns"] / 1000, 1), "backlog_us": round(done["backlog_ns"] / 1000, 1),
           "side_by_side_us": round(done["side_by_side_ns"] / 1000, 1)}
    row.update(duplicates_reaching_portscan=dups[0], duplicate_state_updates=engine.reapplied)
    if suppression:
        row["suppressed"] = {"packets": outputs, "updates": counts["updates"]}
    return row


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--packets", type=int, default=100_000)
    ap.add_argument("--connections", type=int, default=2_000)
    ap.add_argument("--loads", default="0.3,0.5", help="offered rate / the NAT's normal capacity")
    ap.add_argument("--delay-us", default="5:20", help="LO:HI of every instance's normal delay")
    ap.add_argument("--clone-at", type=int, default=None, help="input packet (default: packets / 4)")
    ap.add_argument("--for-ms", type=float, default=1000.0,
                    help="virtual time the pair runs side by side (default 1000)")
    ap.add_argument("--model", default="EO+C+NA")
    ap.add_argument("--json", help="write the result here")
    args = ap.parse_args(argv)
    lo, hi = (float(x) for x in args.delay_us.split(":"))
    clone_at = args.clone_at if args.clone_at is not None else args.packets // 4
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t5.pcap"
        generate(str(path), resolve_profile("trace1", args.packets, args.connections), seed=5)
        records = list(itertools.islice(open_capture(path), args.packets))
    res: dict[str, Any] = {"packets": len(records), "delay_us": [lo, hi], "straggler_extra_us": [3, 10],
                           "clone_at": clone_at, "for_ms": args.for_ms, "model": args.model,
                           "paper": PAPER, "loads": {}}
    for load in (float(x) for x in args.loads.split(",")):
        off = run_once(records, load, lo, hi, clone_at, args.for_ms * 1000, False, args.model)
        on = run_once(records, load, lo, hi, clone_at, args.for_ms * 1000, True, args.model)
        # The paper's claim (§7.3): without suppression duplicates get through; with it, none.
        assert off["duplicates_reaching_portscan"] > 0 and off["duplicate_state_updates"] > 0, off
        assert on["duplicates_reaching_portscan"] == 0 and on["duplicate_state_updates"] == 0, on
        res["loads"][f"{load:.0%}"] = {"without_suppression": off, "with_suppression": on}
    text = json.dumps(res, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n")
    else:
        print(text)
    return res
