"""Trojan detector (De Carli, Sommer, Jha 2014; CHC §2.1 R4, Figure 2).

A host is infected when it (1) opens an SSH connection, then (2) downloads an
HTML, ZIP or EXE file over FTP, then (3) generates IRC activity, in that order.
"In that order" means the order in which the packets entered the chain, so each
step is recorded with the packet's logical clock (§5.2), not its arrival time at
this NF: the detector is right however late or reordered its copies arrive (R4).

Steps, from packets the host sends:

* SSH: a SYN to one of ``ssh_ports``;
* FTP download: an FTP ``RETR name`` on a control connection (``ftp_ports``)
  whose file name ends in one of ``ftp_extensions``;
* IRC: a SYN to one of ``irc_ports`` or an IRC ``NICK``/``USER``/``JOIN``
  command sent to one.

State (Table 4): ``steps``, per host, cross-flow, write/read often:
``(first SSH clock, FTP download clocks, IRC clocks, alerted)``.  The alarm
condition "some SSH < some FTP < some IRC" is evaluated on clocks, and the alert
carries the clock of the earliest IRC step completing the sequence.
"""

from __future__ import annotations

import dataclasses

from ..nf import NF, SRC_IP, Access, ConfigError, Context, Value
from ..packet import PROTO_TCP, TCP_ACK, TCP_SYN, Packet, ip_str

_SSH, _FTP, _IRC = 0, 1, 2
_IRC_COMMANDS = (b"NICK ", b"USER ", b"JOIN ")
_INIT = (None, (), (), False)


@dataclasses.dataclass
class TrojanConfig:
    ssh_ports: list = dataclasses.field(default_factory=lambda: [22])
    ftp_ports: list = dataclasses.field(default_factory=lambda: [21])
    irc_ports: list = dataclasses.field(default_factory=lambda: [*range(6660, 6670), 6697, 7000])
    ftp_extensions: list = dataclasses.field(default_factory=lambda: [".html", ".htm", ".zip", ".exe"])

    def validate(self) -> None:
        for name in ("ssh_ports", "ftp_ports", "irc_ports"):
            v = getattr(self, name)
            if not isinstance(v, list) or not all(isinstance(p, int) and 0 < p < 65536 for p in v):
                raise ConfigError(name, f"expected a list of port numbers, got {v!r}")
        exts = self.ftp_extensions
        if not isinstance(exts, list) or not all(isinstance(e, str) and e for e in exts):
            raise ConfigError("ftp_extensions", f"expected a list of file name endings, got {exts!r}")


def completion_clock(ssh: int | None, ftp: tuple, irc: tuple) -> int | None:
    """Clock of the earliest IRC step that completes SSH < FTP < IRC, if any."""
    if ssh is None:
        return None
    ftp_after = [f for f in ftp if f > ssh]
    if not ftp_after:
        return None
    first_ftp = min(ftp_after)
    later_irc = [i for i in irc if i > first_ftp]
    return min(later_irc) if later_irc else None


class TrojanDetector(NF):
    kind = "trojan"
    Config = TrojanConfig

    steps = Value(SRC_IP, Access.READ_WRITE, init=_INIT,
                  doc="per host: (first SSH clock, FTP download clocks, IRC clocks, alerted)")

    def __init__(self, config: TrojanConfig) -> None:
        super().__init__(config)
        self.ssh_ports = frozenset(config.ssh_ports)
        self.ftp_ports = frozenset(config.ftp_ports)
        self.irc_ports = frozenset(config.irc_ports)
        self.ftp_exts = tuple(e.lower().encode() for e in config.ftp_extensions)

    def classify(self, pkt: Packet) -> int | None:
        """Which Trojan step, if any, this packet is."""
        if pkt.proto != PROTO_TCP:
            return None
        dport = pkt.dport
        syn = pkt.flags & (TCP_SYN | TCP_ACK) == TCP_SYN
        if dport in self.ssh_ports:
            return _SSH if syn else None
        if dport in self.irc_ports:
            if syn or bytes(pkt.payload[:5]) in _IRC_COMMANDS:
                return _IRC
            return None
        if dport in self.ftp_ports and pkt.payload_off < pkt.ip_end:
            line = bytes(pkt.payload).split(b"\r\n", 1)[0].rstrip()
            if line[:5].upper() == b"RETR " and line.lower().endswith(self.ftp_exts):
                return _FTP
        return None

    def process(self, pkt: Packet, ctx: Context) -> Packet:
        step = self.classify(pkt)
        if step is not None:
            self._record(pkt.src, step, ctx)
        return pkt

    def _record(self, host: bytes, step: int, ctx: Context) -> None:
        ssh, ftp, irc, alerted = self.steps.get(host)
        clock = ctx.clock
        if step == _SSH:
            if ssh is not None and ssh <= clock:
                return
            ssh = clock
        elif step == _FTP:
            ftp = tuple(sorted((*ftp, clock)))
        else:
            irc = tuple(sorted((*irc, clock)))
        done = None if alerted else completion_clock(ssh, ftp, irc)
        self.steps.set((ssh, ftp, irc, alerted or done is not None), host)
        if done is not None:
            # The alert belongs to the IRC step that completed the sequence, which
            # may have arrived before the packet that revealed it (R4): stamp it
            # with that step's clock, as the in-order chain would.
            arrival = ctx.clock
            ctx.clock = done
            try:
                ctx.alert("trojan", ip_str(host), clock=done)
            finally:
                ctx.clock = arrival
