"""R3 experiment (§7.2 "Cross-instance state sharing", Figure 11): NAT instances
sharing strongly consistent state, CHC against an OpenNF-style share.

Theory of operation
-------------------
``k`` NAT instances (2 to 4) share the NAT's cross-flow objects: the free-port
pool (popped on every new connection, pushed back on close) and the packet
counters (incremented on every packet).  Every update must be applied once, in
one global order.  Each instance gets the packets of a disjoint set of
connections (as a splitter would send them).

* **CHC** (§4.3): model EO+C+NA on one in-process memory store; the objects are
  shared, so nothing cross-flow is cached (``exclusive=False``): the counters'
  increments are non-blocking (queued, sent once per batch, never waited for),
  the port pop is a blocking offloaded op; the store serializes all instances'
  operations.  Per packet: the measured wall time per packet of the ``k``
  instances (interleaved batch by batch on one store), plus one ``--rtt-us``
  round trip per blocking operation, spread over the packets.
* **OpenNF** (strong consistency for shared state, Gember-Jacobson et al. 2014):
  every packet goes to the controller, which sends it to every instance; each
  instance processes it against its own copy of the shared state (model ``T``,
  so all copies agree) and acknowledges; the next packet is released only after
  all have.  Per packet: the NF's event to the controller and its reply (one
  round trip), the controller's copies out and the acknowledgements back (one
  round trip, the instances working in parallel), the measured per-packet
  processing of model ``T``, and the measured cost of serializing one copy per
  instance.

Both use the same NAT code, packets and ``--rtt-us`` (default 10 µs).  Every
measured part is the best of ``--rounds`` runs.  Queueing behind the
one-packet-at-a-time release (which caps OpenNF's throughput at 1 / that time)
is left out: the numbers are per-packet service times at low load.
"""

from __future__ import annotations

import argparse
import gc
import pickle
import time
from typing import Any

from ..backends.memory import MemoryStore
from ..core.instance import Instance
from ..nfs import NAT
from ..packet import Packet
from .harness import progress, save_plot
from .r2_move import _cfg, common_arguments, flow_frames, write_outputs

BATCH = 64


def workload(flows: int, per_flow: int) -> list[list[bytes]]:
    """``per_flow`` packets of each of ``flows`` connections: a SYN, data, a FIN each way."""
    syn = flow_frames(flows, 0x02)
    data = flow_frames(flows, 0x10, b"x" * 64)
    fin = flow_frames(flows, 0x11)
    return [[syn[i]] + [data[i]] * max(0, per_flow - 2) + [fin[i]] for i in range(flows)]


def _streams(conns: list[list[bytes]], k: int) -> list[list[Packet]]:
    """Instance j gets connections j, j+k, ...; each connection's packets in order,
    connections interleaved (round robin) as they would arrive."""
    out = []
    idx = 0
    for j in range(k):
        mine = conns[j::k]
        seq = []
        for step in range(max(len(c) for c in mine)):
            for c in mine:
                if step < len(c):
                    seq.append(Packet(c[step], idx * 1000, idx))
                    idx += 1
        out.append(seq)
    return out


def chc_round(conns: list[list[bytes]], k: int) -> dict[str, float]:
    store = MemoryStore()
    cfg = _cfg()
    insts = [Instance("nat", j, NAT, cfg, "EO+C+NA", store, exclusive=False) for j in range(k)]
    streams = _streams(conns, k)
    n = sum(len(s) for s in streams)
    gc.collect()
    gc.disable()
    t = time.perf_counter()
    for start in range(0, max(len(s) for s in streams), BATCH):
        for inst, s in zip(insts, streams, strict=True):
            if start < len(s):
                inst.run(s[start:start + BATCH])
    for inst in insts:
        inst.client.settle()
    wall = time.perf_counter() - t
    gc.enable()
    blocking = sum(i.client.blocking_ops for i in insts)
    total = store.engine.data.get(next(key for key in store.engine.data if key.obj == "packets"))
    if total != n:
        raise AssertionError(f"shared counter {total} after {n} packets: an update was lost")
    return {"per_packet_s": wall / n, "blocking_per_packet": blocking / n}


def opennf_round(conns: list[list[bytes]], k: int) -> dict[str, float]:
    cfg = _cfg()
    insts = [Instance("nat", j, NAT, cfg, "T") for j in range(k)]
    pkts = [p for s in _streams(conns, 1) for p in s][: 20000]
    gc.collect()
    gc.disable()
    t = time.perf_counter()
    for p in pkts:
        wire = p.data
        for inst in insts:
            copy = pickle.loads(pickle.dumps(bytes(wire)))      # one message per instance
            inst.run([Packet(copy, p.ts, p.index)])
    wall = time.perf_counter() - t
    gc.enable()
    # The instances work in parallel in OpenNF: one instance's processing per packet.
    t = time.perf_counter()
    for p in pkts:
        pickle.loads(pickle.dumps(bytes(p.data)))
    ser = (time.perf_counter() - t) / len(pkts)
    processing = (wall / len(pkts) - k * ser) / k
    if any(i.objects["packets"].get() != len(pkts) for i in insts):
        raise AssertionError("the instances' copies of the shared counter disagree")
    return {"processing_s": processing, "serialize_s": ser}


def measure(ks: tuple[int, ...] = (2, 3, 4), flows: int = 2000, per_flow: int = 6, rounds: int = 5,
            rtt_us: float = 10.0) -> dict[str, Any]:
    conns = workload(flows, per_flow)
    rtt = rtt_us / 1e6
    rows = {}
    for k in ks:
        chc = [chc_round(conns, k) for _ in range(rounds)]
        onf = [opennf_round(conns, k) for _ in range(rounds)]
        chc_pp = min(r["per_packet_s"] for r in chc)
        blocking = chc[0]["blocking_per_packet"]
        chc_s = chc_pp + blocking * rtt
        proc = min(r["processing_s"] for r in onf)
        ser = min(r["serialize_s"] for r in onf)
        onf_s = 2 * rtt + proc + k * ser
        rows[str(k)] = {
            "chc_us": round(chc_s * 1e6, 3), "opennf_us": round(onf_s * 1e6, 3),
            "reduction": round(1 - chc_s / onf_s, 4),
            "parts": {"chc_wall_per_packet_us": round(chc_pp * 1e6, 3),
                      "chc_blocking_ops_per_packet": round(blocking, 4),
                      "opennf_processing_us": round(proc * 1e6, 3), "opennf_serialize_us": round(ser * 1e6, 3),
                      "opennf_round_trips": 2},
        }
    return {"instances": rows, "rtt_us": rtt_us, "rounds": rounds, "packets": flows * per_flow,
            "paper": {"chc_us": 1.8, "opennf_us": 166, "reduction": 0.99}}


def plot(res: dict, outdir: str) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ks = list(res["instances"])
    fig, ax = plt.subplots(figsize=(6, 3.8))
    x = range(len(ks))
    ax.bar([i - 0.2 for i in x], [res["instances"][k]["chc_us"] for k in ks], 0.4, label="CHC")
    ax.bar([i + 0.2 for i in x], [res["instances"][k]["opennf_us"] for k in ks], 0.4, label="OpenNF-style")
    ax.set_xticks(list(x), [f"{k} instances" for k in ks])
    ax.set_ylabel("per-packet time (µs)")
    ax.set_title("R3: strongly consistent shared NAT state")
    ax.legend()
    return save_plot(fig, outdir, "r3_share.png")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description="R3: shared state across NAT instances, CHC vs an OpenNF-style share")
    ap.add_argument("--instances", default="2,3,4", help="instance counts (default 2,3,4)")
    ap.add_argument("--flows", type=int, default=2000, help="connections (default 2000)")
    common_arguments(ap, "r3_share.png")
    args = ap.parse_args(argv)
    try:
        ks = tuple(int(x) for x in args.instances.split(","))
    except ValueError:
        ap.error(f"--instances: a comma-separated list of integers, got {args.instances!r}")
    if not ks or any(not 2 <= k <= 8 for k in ks) or args.flows < 8 or args.rounds < 1 or args.rtt_us < 0:
        ap.error("--instances between 2 and 8, --flows at least 8, --rounds at least 1, --rtt-us >= 0")
    progress(f"R3: {args.flows:,} connections, instances {ks}, {args.rounds} rounds per cell ...")
    res = measure(ks, args.flows, 6, args.rounds, args.rtt_us)
    print(f"R3 shared NAT state, per packet (best of {args.rounds}; round trip {args.rtt_us:g} µs)")
    print(f"{'instances':<11}{'CHC µs':>10}{'OpenNF µs':>12}{'reduction':>11}")
    for k, row in res["instances"].items():
        print(f"{k:<11}{row['chc_us']:>10.2f}{row['opennf_us']:>12.2f}{row['reduction']:>10.1%}")
    print("paper (50% load): CHC 1.8 µs, OpenNF 166 µs, 99% lower")
    write_outputs(res, args, plot)
    return res
