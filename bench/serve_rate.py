"""What ``chc serve``'s real-time loop costs, against ``chc run`` on the same packets.

One process, one run, the §7.1 chain (examples/paper_chain.yaml, model EO+C+NA,
memory store) over the first N packets of the LAN capture:

1. baseline: ``SimRuntime.run`` at top speed over the capture read as it goes
   (what ``chc run --topspeed -c N`` does);
2. ``chc serve``'s loop (:class:`chc.serve.Server` over a :class:`~chc.serve.Replay`)
   with a rate far above what the chain can take, so it runs flat out: the
   loop's own cost (pacing, one observer sample a second) shows as the ratio;
3. the same with the Prometheus collector and the dashboard attached (and one
   scrape of each a second from a thread, as a Prometheus server and an open
   page would);
4. the loop at half of (2)'s rate for a few seconds: the latency from a
   packet's scheduled arrival to its output (mean and max of the samples).

Usage: python bench/serve_rate.py [--packets N] [--half-load-seconds S] [--rounds R]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

CHAIN = ROOT / "examples" / "paper_chain.yaml"
CAPTURE = ROOT / "traces" / "pathspider" / "lan-2012.pcap.gz"


def baseline(chain, n: int) -> float:
    """``chc run --topspeed -c N``: the capture read as it is run, as the CLI does."""
    from chc.capture import open_capture
    from chc.feed import Feed
    from chc.linktypes import adapter_for
    from chc.runtime.pacing import Pacer
    from chc.runtime.sim import SimRuntime

    rt = SimRuntime(chain, model="EO+C+NA", pacer=Pacer("topspeed"))
    started = time.perf_counter()
    with open_capture(CAPTURE) as reader:
        rt.run(Feed(reader, adapter_for(reader.linktype), count=n))
    return n / (time.perf_counter() - started)


def served(chain, n: int, rate: float, watch: bool, duration: float | None = None) -> tuple[float, list]:
    from chc.runtime.sim import SimRuntime
    from chc.serve import Replay, Server

    replay = Replay(str(CAPTURE), rate=rate, loop=True)
    rt = SimRuntime(chain, model="EO+C+NA", pacer=replay.pacer)
    server = Server(rt, replay, 256, count=None if duration else n, duration=duration)
    samples: list = []
    server.on_sample.append(samples.append)
    closers, stop = [], threading.Event()
    if watch:
        from chc.dashboard import Dashboard
        from chc.metrics import LiveMetrics

        metrics = LiveMetrics(server.observer, {})
        metrics.serve("127.0.0.1", 0)
        board = Dashboard(server.observer, "bench", "127.0.0.1", 0)
        server.on_batch.append(metrics.batch)
        server.on_sample.append(board.publish)
        urls = [f"http://127.0.0.1:{metrics.server.server_port}/metrics", f"http://127.0.0.1:{board.port}/state"]

        def scrape() -> None:
            while not stop.wait(1.0):
                for url in urls:
                    urllib.request.urlopen(url, timeout=5).read()
        threading.Thread(target=scrape, daemon=True).start()
        closers = [metrics.close, board.close]
    started = time.perf_counter()
    server.loop()
    seconds = time.perf_counter() - started
    stop.set()
    for close in closers:
        close()
    replay.close()
    return server.entered / seconds, samples


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=30000)
    ap.add_argument("--half-load-seconds", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    from chc.spec import load_spec

    chain = load_spec(CHAIN)
    runs: dict[str, list[float]] = {"run": [], "serve": [], "serve+watch": []}
    for _ in range(args.rounds):            # interleaved, so a load change hits all three alike
        runs["run"].append(baseline(chain, args.packets))
        runs["serve"].append(served(chain, args.packets, 1e9, False)[0])
        runs["serve+watch"].append(served(chain, args.packets, 1e9, True)[0])
    med = {k: statistics.median(v) for k, v in runs.items()}
    print(f"paper chain, EO+C+NA, memory store, {args.packets:,} packets of the LAN capture, "
          f"median of {args.rounds} rounds")
    print(f"{'loop':<34}{'packets/s':>12}{'ratio':>8}")
    print(f"{'chc run --topspeed (baseline)':<34}{med['run']:>12,.0f}{1:>8.2f}")
    print(f"{'chc serve, flat out':<34}{med['serve']:>12,.0f}{med['serve'] / med['run']:>8.2f}")
    print(f"{'  + metrics + dashboard, scraped':<34}{med['serve+watch']:>12,.0f}"
          f"{med['serve+watch'] / med['run']:>8.2f}")
    rate = med["serve"] / 2
    _, samples = served(chain, 0, rate, True, duration=args.half_load_seconds)
    lat = [s["latency_ms"] for s in samples if s["latency_ms"]]
    mean, worst = statistics.mean(m["mean"] for m in lat), max(m["max"] for m in lat)
    print(f"at half load ({rate:,.0f} packets/s, {args.half_load_seconds:g} s, watched): latency from "
          f"scheduled arrival to output, mean of the per-second means {mean:.2f} ms, max {worst:.1f} ms")
    return {"pps": med, "half_load": {"rate": rate, "latency_mean_ms": mean, "latency_max_ms": worst}}


if __name__ == "__main__":
    main()
