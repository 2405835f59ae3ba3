"""Input pacing and per-instance delays for the sim runtime's virtual time.

Pacing follows tcpreplay's conventions: by default packets enter at their
capture timestamps (``--multiplier 1``); ``--multiplier X`` replays X times
faster; ``--pps N`` and ``--mbps N`` replay at a fixed rate; ``--topspeed``
makes every packet available at once (virtual time 0).  Virtual times are
integer nanoseconds from the first packet and never go backwards (a capture
whose timestamps step back is held at the latest time seen, as a replayer would).

A delay model gives an instance a per-packet processing time drawn from a seeded
distribution (§7.3: a scrubber slowed by 50-100 µs per packet); written
``uniform:LOW:HIGH``, ``const:X`` or ``exp:MEAN``, all in microseconds.
"""

from __future__ import annotations

import random
import zlib


class Pacer:
    def __init__(self, mode: str = "multiplier", value: float = 1.0) -> None:
        if mode not in ("multiplier", "pps", "mbps", "topspeed"):
            raise ValueError(f"unknown pacing {mode!r}")
        if mode != "topspeed" and not value > 0:
            raise ValueError(f"--{mode} needs a positive number, got {value!r}")
        self.mode = mode
        self.value = value
        self.first_ts: int | None = None
        self.last = 0
        self.count = 0
        self.bits = 0

    def arrival(self, ts_ns: int, length: int) -> int:
        """Virtual arrival time (ns) of the next packet."""
        mode = self.mode
        if mode == "topspeed":
            return 0
        if mode == "multiplier":
            if self.first_ts is None:
                self.first_ts = ts_ns
            vt = int((ts_ns - self.first_ts) / self.value)
        elif mode == "pps":
            vt = int(self.count * 1e9 / self.value)
        else:
            vt = int(self.bits * 1e3 / self.value)     # bits / (Mbit/s) -> µs -> *1e3 ns
        self.count += 1
        self.bits += length * 8
        if vt < self.last:
            vt = self.last
        self.last = vt
        return vt

    def describe(self) -> str:
        return "top speed" if self.mode == "topspeed" else f"{self.mode} {self.value:g}"


class Delay:
    """Seeded per-packet processing delay of one instance (ns)."""

    def __init__(self, spec: str, seed: int, name: str) -> None:
        parts = spec.split(":")
        kind, args = parts[0], parts[1:]
        try:
            nums = [float(a) for a in args]
        except ValueError:
            raise ValueError(f"delay {spec!r}: parameters must be numbers (µs)") from None
        arity = {"uniform": 2, "const": 1, "exp": 1}
        if kind not in arity or len(nums) != arity[kind] or any(n < 0 for n in nums):
            raise ValueError(f"delay {spec!r}: expected uniform:LOW:HIGH, const:X or exp:MEAN (µs, >= 0)")
        if kind == "uniform" and nums[0] > nums[1]:
            raise ValueError(f"delay {spec!r}: LOW must not exceed HIGH")
        self.spec = spec
        self.kind = kind
        self.nums = [n * 1000.0 for n in nums]
        # Seeded by run seed and instance name, so a run is reproducible exactly.
        self.rng = random.Random(seed * 1_000_003 + zlib.crc32(name.encode()))

    def sample(self) -> int:
        k = self.kind
        if k == "uniform":
            return int(self.rng.uniform(self.nums[0], self.nums[1]))
        if k == "const":
            return int(self.nums[0])
        return int(self.rng.expovariate(1.0 / self.nums[0])) if self.nums[0] else 0
