"""R2 experiment (§7.2 "Cross-instance state transfers"): moving 4,000 NAT flows
to a new instance, CHC's handover against an OpenNF-style loss-free move.

Theory of operation
-------------------
Both systems start from the same state: one NAT instance has processed the
opening packets of ``2 * flows`` connections (so it owns their per-flow
mappings), and half of them, ``flows``, move to a second instance while their
packets keep coming.  Only the *move operation* is timed, as in the paper (its
0.071 ms vs 2.5 ms); draining the old instance's queue up to the ``last`` mark is
the same work in both and left out.

* **CHC** (§5.1, Figure 4, model EO+C+NA on the in-process memory store): the
  old instance flushes its cached operations and gives up ownership of its
  per-flow objects (:meth:`chc.core.client.StoreClient.hand_over`: one
  pipelined flush, one ownership update at the store); the new instance's first
  update of a moved flow's mapping makes it the owner.  No state moves.  (The
  store releases every per-flow object the old instance owns, here ``2 * flows``:
  a key does not say which flow group it belongs to; see ``hand_over``.)  Timed:
  the wall time of ``hand_over`` (measured) plus two store round trips.
* **OpenNF** (loss-free move, Gember-Jacobson et al. 2014), emulated with the
  same NAT code in model ``T`` (state inside the NF, as OpenNF's NFs keep it):
  the controller asks the old instance for the moved flows' state, which sends
  each flow's state as one message (serialized: measured), deletes it, and the
  controller installs each at the new instance (deserialized and set: measured);
  meanwhile the moved flows' packets are buffered at the controller and released
  to the new instance afterwards.  Timed: the measured extraction, serialization,
  deserialization and installation of every flow, plus three round trips
  (get-state request, put-state acknowledgement, forwarding update) and the
  state bytes at ``--gbps``.

Round trips cost ``--rtt-us`` in both (default 10 µs, one rack).  Every
measured part is the best of ``--rounds`` runs (the machine is shared).

Per-packet latency of the moved flows.  Packets of the moved flows arrive
evenly spaced from the move's start, at ``--load`` (default 0.5) of the slower
new instance's measured capacity, the same rate for both; during the move they wait in
the handover buffer (CHC) or at the controller (OpenNF, plus one round trip to
reach the new instance); then the new instance serves them FIFO at its measured
per-packet cost (EO+C+NA for CHC, T for OpenNF).  The percentiles are over the
packets that arrive in a window of twice the longer move, computed in virtual
time from those measured costs.
"""

from __future__ import annotations

import argparse
import gc
import json
import pickle
import struct
import time
from typing import Any

from ..backends.memory import MemoryStore
from ..core.instance import Instance
from ..nf import build_config
from ..nfs import NAT
from ..packet import Packet, flow_key
from .harness import percentile, progress, save_plot

NAT_CFG = {"external_ip": "198.51.100.7", "internal": ["10.0.0.0/8"], "port_range": [1024, 65535]}
SERVER = bytes([203, 0, 113, 1])
PERCENTILES = (50, 90, 99)


def _csum(data: bytes) -> int:
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def tcp_frame(src: bytes, dst: bytes, sport: int, dport: int, flags: int, payload: bytes = b"") -> bytes:
    """An Ethernet/IPv4/TCP frame (IP checksum set; the TCP checksum left 0)."""
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 65535, 0, 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
    return b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00" + ip + tcp


def flow_frames(n: int, flags: int, payload: bytes = b"") -> list[bytes]:
    """One packet of each of ``n`` connections from distinct internal clients."""
    return [tcp_frame(bytes([10, 1 + i // 65536 % 250, i // 256 % 256, i % 256]), SERVER,
                      10000 + i % 50000, 80, flags, payload) for i in range(n)]


def _packets(frames: list[bytes], start: int) -> list[Packet]:
    return [Packet(f, (start + i) * 1000, start + i) for i, f in enumerate(frames)]


def _run(inst: Instance, pkts: list[Packet], batch: int = 256) -> float:
    """Process ``pkts`` in batches; wall seconds."""
    t = time.perf_counter()
    for i in range(0, len(pkts), batch):
        inst.run(pkts[i:i + batch])
    return time.perf_counter() - t


def _cfg() -> Any:
    return build_config(NAT, NAT_CFG, "config")


def chc_round(flows: int) -> dict[str, float]:
    """One CHC move: (hand_over wall s, per-packet cost of the new instance s)."""
    store = MemoryStore()
    cfg = _cfg()
    old = Instance("nat", 0, NAT, cfg, "EO+C+NA", store, exclusive=False)
    new = Instance("nat", 1, NAT, cfg, "EO+C+NA", store, exclusive=False)
    _run(old, _packets(flow_frames(2 * flows, 0x02), 0))            # SYNs: 2 * flows mappings
    data = flow_frames(2 * flows, 0x10, b"x" * 64)
    _run(old, _packets(data, 2 * flows))                            # under load: cached updates pending
    old.client.flush()
    # The last batch's updates are queued again, as under load: what the handover must flush.
    old.run(_packets(data[:256], 4 * flows))
    gc.collect()
    gc.disable()                    # a collection inside the timed region is noise, not the move
    t = time.perf_counter()
    old.hand_over()                                                 # Figure 4 step 5
    handover = time.perf_counter() - t
    gc.enable()
    moved = _packets(data[:flows], 5 * flows)
    per_packet = _run(new, moved) / len(moved)                      # steps 6-7: new owner, buffer drained
    return {"handover_s": handover, "per_packet_s": per_packet}


def opennf_round(flows: int) -> dict[str, float]:
    """One OpenNF-style move of ``flows`` flows' state between model-T instances."""
    cfg = _cfg()
    old = Instance("nat", 0, NAT, cfg, "T")
    new = Instance("nat", 1, NAT, cfg, "T")
    _run(old, _packets(flow_frames(2 * flows, 0x02), 0))
    data = flow_frames(2 * flows, 0x10, b"x" * 64)
    _run(old, _packets(data, 2 * flows))
    moved_keys = [flow_key(Packet(f, 0, 0)) for f in data[:flows]]
    mapping_old = old.objects["mapping"]
    mapping_new = new.objects["mapping"]
    gc.collect()
    gc.disable()
    t = time.perf_counter()
    # getPerflow at the old instance: each flow's state is one message (serialized), then deleted.
    messages = [pickle.dumps((k, mapping_old.get(k))) for k in moved_keys]
    for k in moved_keys:
        mapping_old.delete(k)
    extract = time.perf_counter() - t
    t = time.perf_counter()
    # putPerflow at the new instance: each message deserialized and installed.
    for m in messages:
        k, v = pickle.loads(m)
        mapping_new.set(v, k)
    install = time.perf_counter() - t
    gc.enable()
    moved = _packets(data[:flows], 5 * flows)
    per_packet = _run(new, moved) / len(moved)
    # Shared state (the port pool, counters) is not per-flow: OpenNF would copy or share it
    # apart; the NAT's ports stay allocated at the old instance (the same in CHC's store).
    return {"extract_s": extract, "install_s": install, "bytes": sum(len(m) for m in messages),
            "messages": len(messages), "per_packet_s": per_packet}


def latencies(move_s: float, per_packet_s: float, pps: float, window_s: float, extra_s: float = 0.0) -> list[float]:
    """Virtual-time FIFO: packets of the moved flows arrive every 1/pps from the move's
    start; none is served before the move ends (+ ``extra_s``); then one per ``per_packet_s``."""
    out = []
    free = move_s + extra_s
    n = int(window_s * pps)
    for i in range(n):
        arrival = i / pps
        start = max(arrival if arrival >= move_s else free, free)
        free = start + per_packet_s
        out.append(free - arrival)
    return out


def _pcts(vals: list[float]) -> dict[str, float]:
    s = sorted(vals)
    return {f"p{q}_us": round(percentile(s, q) * 1e6, 2) for q in PERCENTILES}


def measure(flows: int = 4000, rounds: int = 5, rtt_us: float = 10.0, gbps: float = 10.0,
            load: float = 0.5) -> dict[str, Any]:
    """Both moves, best of ``rounds`` for every measured part; the report dict."""
    rtt = rtt_us / 1e6
    chc = [chc_round(flows) for _ in range(rounds)]
    onf = [opennf_round(flows) for _ in range(rounds)]
    handover = min(r["handover_s"] for r in chc)
    chc_pp = min(r["per_packet_s"] for r in chc)
    extract = min(r["extract_s"] for r in onf)
    install = min(r["install_s"] for r in onf)
    onf_pp = min(r["per_packet_s"] for r in onf)
    nbytes = onf[0]["bytes"]
    chc_s = handover + 2 * rtt
    onf_s = extract + install + 3 * rtt + nbytes * 8 / (gbps * 1e9)
    window = 2 * max(chc_s, onf_s)
    pps = load / max(chc_pp, onf_pp)
    lat_chc = latencies(chc_s, chc_pp, pps, window)
    lat_onf = latencies(onf_s, onf_pp, pps, window, extra_s=rtt / 2)   # controller -> new instance
    return {
        "flows_moved": flows,
        "chc_ms": round(chc_s * 1e3, 4),
        "opennf_ms": round(onf_s * 1e3, 4),
        "ratio": round(onf_s / chc_s, 2),
        "paper": {"chc_ms": 0.071, "opennf_ms": 2.5, "ratio": 35},
        "parts": {
            "chc_handover_wall_ms": round(handover * 1e3, 4), "chc_round_trips": 2,
            "opennf_extract_wall_ms": round(extract * 1e3, 4), "opennf_install_wall_ms": round(install * 1e3, 4),
            "opennf_state_bytes": nbytes, "opennf_messages": onf[0]["messages"], "opennf_round_trips": 3,
            "rtt_us": rtt_us, "gbps": gbps,
        },
        "per_packet_us": {"chc_new_instance": round(chc_pp * 1e6, 3), "opennf_new_instance": round(onf_pp * 1e6, 3)},
        "moved_flow_latency": {"pps": round(pps), "load": load, "window_ms": round(window * 1e3, 4),
                               "chc": _pcts(lat_chc), "opennf": _pcts(lat_onf)},
        "rounds": rounds,
        "_series": {"chc": lat_chc, "opennf": lat_onf, "pps": pps},
    }


def plot(res: dict, outdir: str) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    a.bar(["CHC", "OpenNF-style"], [res["chc_ms"], res["opennf_ms"]], color=["tab:blue", "tab:orange"])
    a.set_ylabel("move time (ms)")
    a.set_title(f"R2: moving {res['flows_moved']:,} NAT flows ({res['ratio']}x)")
    series = res["_series"]
    for name, color in (("chc", "tab:blue"), ("opennf", "tab:orange")):
        lat = series[name]
        b.plot([i / series["pps"] * 1e3 for i in range(len(lat))], [v * 1e6 for v in lat], color=color,
               label="CHC" if name == "chc" else "OpenNF-style")
    b.set_xlabel("arrival after the move starts (ms)")
    b.set_ylabel("moved flows' per-packet latency (µs)")
    b.legend()
    return save_plot(fig, outdir, "r2_move.png")


def common_arguments(ap: argparse.ArgumentParser, png: str) -> None:
    """The options R2 and R3 share: rounds, the round-trip model, JSON and PNG output."""
    ap.add_argument("--rounds", type=int, default=5, help="runs per measured part; the best counts (default 5)")
    ap.add_argument("--rtt-us", type=float, default=10.0, help="one control/store round trip (default 10 µs)")
    output_arguments(ap, png)


def output_arguments(ap: argparse.ArgumentParser, png: str) -> None:
    """``--json FILE`` and ``--png DIR`` (the results and the plot ``png``)."""
    ap.add_argument("--json", metavar="FILE", help="write the results as JSON")
    ap.add_argument("--png", metavar="DIR", help=f"write {png} into DIR")


def write_outputs(res: dict, args: argparse.Namespace, plot_fn: Any) -> None:
    """The plot (when matplotlib is there) and the JSON file, as asked."""
    if args.png:
        try:
            print(f"plot: {plot_fn(res, args.png)}")
        except ImportError:
            print("no plot: matplotlib is not installed (pip install matplotlib)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({k: v for k, v in res.items() if not k.startswith("_")}, f, indent=2)
            f.write("\n")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description="R2: move 4,000 NAT flows, CHC vs an OpenNF-style move")
    ap.add_argument("--flows", type=int, default=4000, help="flows moved (default 4000)")
    ap.add_argument("--gbps", type=float, default=10.0, help="controller link for state bytes (default 10)")
    ap.add_argument("--load", type=float, default=0.5,
                    help="moved flows' packet rate, as a fraction of the new instance's capacity (default 0.5)")
    common_arguments(ap, "r2_move.png")
    args = ap.parse_args(argv)
    if args.flows < 1 or args.rounds < 1 or args.rtt_us < 0 or args.gbps <= 0 or not 0 < args.load < 1:
        ap.error("--flows and --rounds at least 1, --rtt-us >= 0, --gbps positive, 0 < --load < 1")
    progress(f"R2: moving {args.flows:,} flows, {args.rounds} rounds per system ...")
    res = measure(args.flows, args.rounds, args.rtt_us, args.gbps, args.load)
    lat = res["moved_flow_latency"]
    print(f"R2 move of {res['flows_moved']:,} NAT flows (best of {res['rounds']}; round trip {args.rtt_us:g} µs)")
    print(f"  CHC handover      {res['chc_ms']:>9.4f} ms   (paper 0.071 ms)")
    print(f"  OpenNF-style move {res['opennf_ms']:>9.4f} ms   (paper 2.5 ms)")
    print(f"  ratio             {res['ratio']:>9.2f} x    (paper 35x)")
    for name in ("chc", "opennf"):
        p = lat[name]
        print(f"  moved flows' latency {name:<7} " + "  ".join(f"p{q} {p[f'p{q}_us']:.1f} µs" for q in PERCENTILES))
    write_outputs(res, args, plot)
    return {k: v for k, v in res.items() if not k.startswith("_")}
