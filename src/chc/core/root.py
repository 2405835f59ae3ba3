"""Root: the chain's entry; stamps logical clocks and screens unusable frames.

Theory of operation
-------------------
The root (§4.1, §5) receives every input frame.  It gives each packet a unique,
increasing logical clock with the root id in the high bits (§5: clocks of
different roots never collide, and the root that owns a clock is found from the
clock alone), and applies the chain's input policies to frames no NF can use:
malformed frames (``malformed: drop|pass``) and non-IP frames
(``non_ip: pass|drop``).  A frame that "passes" bypasses the NFs and leaves the
chain unchanged; a dropped one is only counted.  Everything else goes to the
splitter in front of the entry vertex.

Input: a batch of packets.  Output: (packets for the entry vertex, packets that
bypass the chain).  No I/O.  Later: packet log, deletes with the XOR check
(§5.4), clock persistence (§7.2).
"""

from __future__ import annotations

from ..packet import Packet

CLOCK_BITS = 48          # per-root sequence space; the root id sits above it


class Root:
    __slots__ = ("root_id", "next_seq", "drop_malformed", "drop_non_ip",
                 "packets_in", "malformed", "non_ip", "dropped", "bypassed")

    def __init__(self, root_id: int = 0, policies: dict[str, str] | None = None) -> None:
        policies = policies or {}
        self.root_id = root_id
        self.next_seq = 0
        self.drop_malformed = policies.get("malformed", "drop") == "drop"
        self.drop_non_ip = policies.get("non_ip", "pass") == "drop"
        self.packets_in = 0
        self.malformed = 0
        self.non_ip = 0
        self.dropped = 0
        self.bypassed = 0

    def ingest(self, batch: list[Packet]) -> tuple[list[Packet], list[Packet]]:
        """Stamp clocks (§5); return (to the entry vertex, bypassing the chain)."""
        base = self.root_id << CLOCK_BITS
        seq = self.next_seq
        admitted: list[Packet] = []
        bypass: list[Packet] = []
        for pkt in batch:
            pkt.clock = base | seq
            seq += 1
            if pkt.malformed is not None:
                self.malformed += 1
                if self.drop_malformed:
                    self.dropped += 1
                else:
                    bypass.append(pkt)
            elif not pkt.l3:
                self.non_ip += 1
                if self.drop_non_ip:
                    self.dropped += 1
                else:
                    bypass.append(pkt)
            else:
                admitted.append(pkt)
        self.packets_in += len(batch)
        self.next_seq = seq
        self.bypassed += len(bypass)
        return admitted, bypass
