"""Pass-through NF: forwards every packet unchanged, holds no state.

It measures the framework's own per-packet cost (root, queues, splitters) with no
NF work on top.
"""

from __future__ import annotations

from ..nf import NF, Context
from ..packet import Packet


class PassThrough(NF):
    kind = "pass"

    def process(self, pkt: Packet, ctx: Context) -> Packet:
        return pkt
