"""Do PACKET_MMAP rings pay for ``chc run --live``?  Per-frame cost of the
AF_PACKET receive path beside the chain's own per-frame cost, in one run.

A ring (PACKET_RX_RING) saves the receive path's system call and copy per frame;
it cannot save more than that path costs.  This script measures, as root, in a
namespace of its own with one veth pair: (1) the receive loop of
:class:`chc.live.LivePort` over N frames already queued on the socket, (2) the
same frames read from its TPACKET_V2 RX ring (status word, length and offset
unpacked, frame copied out, slot handed back), (3) the
send loop, (4) the passthrough chain's ``step`` over the same frames (the
cheapest chain there is).  It prints them in µs per frame and what the ring
would save of a live frame's total.

Usage: sudo python bench/live_io.py [--frames N] [--size BYTES]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=20000)
    ap.add_argument("--size", type=int, default=1514)
    args = ap.parse_args()
    if os.environ.get("CHC_LIVE_IO_NS") is None:
        if os.geteuid() != 0:
            print("bench/live_io.py needs root (a network namespace, AF_PACKET)", file=sys.stderr)
            return 2
        ns = f"chcio{os.getpid()}"
        subprocess.run(["ip", "netns", "add", ns], check=True)
        try:
            for cmd in (["ip", "link", "set", "lo", "up"],
                        ["ip", "link", "add", "io0", "type", "veth", "peer", "name", "io1"],
                        ["ip", "link", "set", "io0", "up"], ["ip", "link", "set", "io1", "up"]):
                subprocess.run(["ip", "netns", "exec", ns, *cmd], check=True)
            env = {**os.environ, "CHC_LIVE_IO_NS": ns}
            return subprocess.run(["ip", "netns", "exec", ns, sys.executable, __file__, *sys.argv[1:]],
                                  env=env).returncode
        finally:
            subprocess.run(["ip", "netns", "del", ns])
    return measure(args.frames, args.size)


def measure(n: int, size: int) -> int:
    from chc.live import LivePort, LiveRuntime
    from chc.packet import Packet
    from chc.spec import load_spec

    sys.path.insert(0, str(ROOT / "tests"))
    from frames import udp

    payload = bytes(size - 42)
    frame = udp("10.0.1.1", "10.0.2.10", 40000, 9, payload)
    tx, rx, ring = LivePort("io0"), LivePort("io1", ring=False), LivePort("io1")
    assert ring.ring is not None, "no PACKET_RX_RING here"
    sent_at = time.perf_counter()
    for _ in range(n // 1000):
        tx.send_batch([frame] * 1000)
    send_us = (time.perf_counter() - sent_at) / n * 1e6
    time.sleep(0.2)
    got, recv_us = _drain(rx)
    in_ring, ring_us = _drain(ring)
    rt = LiveRuntime(load_spec(ROOT / "examples" / "passthrough.yaml"))
    pkts_frames = [frame] * n
    started = time.perf_counter()
    for i in range(0, n, 256):
        rt.step([Packet(f, 0, i + j) for j, f in enumerate(pkts_frames[i:i + 256])])
    chain_us = (time.perf_counter() - started) / n * 1e6
    total = recv_us + send_us + chain_us
    print(f"{n:,} frames of {size} B sent; {got:,} received by recv, {in_ring:,} by the ring "
          f"(the rest overflowed the buffer)")
    print(f"receive: recv {recv_us:.2f} µs/frame, RX ring {ring_us:.2f} µs/frame; send {send_us:.2f} µs/frame; "
          f"passthrough chain {chain_us:.2f} µs/frame")
    print(f"an RX ring would save {(recv_us - ring_us) / total:.0%} of a passthrough frame's cost")
    return 0


def _drain(port) -> tuple[int, float]:
    """Read what ``port`` holds: frames read, µs per frame."""
    got = 0
    started = time.perf_counter()
    while True:
        frames = port.recv_batch(256)
        if not frames:
            break
        got += len(frames)
    return got, (time.perf_counter() - started) / max(got, 1) * 1e6


if __name__ == "__main__":
    sys.exit(main())
