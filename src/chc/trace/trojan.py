"""Plant the Trojan sequence SSH -> FTP download -> IRC into a background capture (``chc trace trojan``).

Theory of operation
-------------------
*Sessions.*  Three real sessions from Zeek's test traces are loaded and parsed:
the SSH connection of ``ssh_single-conn.pcap``; from ``pe_pe.pcap`` the FTP
control connection that sends ``RETR NOTEPAD.EXE`` plus that transfer's data
connection (found from the last ``227 Entering Passive Mode`` reply before the
command); the IRC session of ``irc-basic.pcap``.  The packet of each session
that *is* the Trojan step is found with :meth:`chc.nfs.trojan.TrojanDetector.classify`
itself -- the SSH SYN, the ``RETR`` of the chosen file, the first IRC packet
(its SYN) -- so the ground truth uses the detector's own definition.

*Addresses.*  Per planted instance, the client address of all three sessions
becomes one internal host (by default distinct unused addresses of
``x.y.200.0/24`` in the background's most common private /16, e.g.
10.64.200.1, .2 ... for lan-2012, skipping any address the background uses), the
servers become external addresses (TEST-NET-3 by default).  Addresses are
changed with :func:`chc.packet.rewrite_src`/:func:`~chc.packet.rewrite_dst`
(incremental checksum updates); the FTP server's address inside the PASV reply
is rewritten too when the new text has the same length (so TCP sequence
numbers stay valid); frames whose checksum was already wrong in the source
capture (NIC offload) or whose payload changed get both checksums recomputed.
Ethernet addresses are set to a per-host MAC and a gateway MAC.

*Retiming.*  An instance is planted at a background position ``P`` (the index of
the background packet before which its SSH SYN goes).  Each session is laid
out around its step packet: packet ``j`` of a session whose step is packet
``s`` goes before background packet ``A + (j - s) * spread``, where the step
anchor ``A`` is ``P`` for SSH, ``P + gap`` for FTP and ``P + 2 * gap`` for IRC
(clamped to the capture).  So the three steps are ``gap`` background packets
apart (plus the planted packets in between) while every session keeps its own
packet order; sessions of one instance overlap in time (part of the FTP login
may come before the SSH SYN, which the detector does not care about).  A
planted packet takes the timestamp of the background packet before it, so the
output stays in time order.  With lan-2012 (74 B frames on average) a 10 Gbit/s
replay sends ~13 Mpps, so the default gap of 100 puts the steps ~10-20 us
apart: a downstream delay of 50-100 us reorders them.

*Ground truth.*  While writing, every planted packet's output index (= its
logical clock in a single-root chain: clocks start at 0 and count every input
frame) is known.  The truth file lists per instance the host, the servers, the
index of each step packet, and the alert the detector must raise: every
planted packet is classified with the detector's ``classify`` and the alert
clock is computed with :func:`chc.nfs.trojan.completion_clock` per host.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..capture import CaptureError, CaptureWriter, open_capture
from ..nfs.trojan import TrojanConfig, TrojanDetector, completion_clock
from ..packet import PROTO_TCP, Packet, ip_bytes, ip_str, rewrite_dst, rewrite_src
from .ops import checksums_ok, fix_checksums

__all__ = ["DEFAULT_SERVERS", "Session", "default_sessions", "load_sessions", "plant_trojans"]

_REPO = Path(__file__).resolve().parents[3]
ZEEK = _REPO / "traces" / "zeek"
DEFAULT_BACKGROUND = _REPO / "traces" / "pathspider" / "lan-2012.pcap.gz"
DEFAULT_SERVERS = {"ssh": "203.0.113.22", "ftp": "203.0.113.21", "irc": "203.0.113.67"}
_STEP = {"ssh": 0, "ftp": 1, "irc": 2}
_RANK = ("ssh", "ftp", "irc")
_GATEWAY_MAC = bytes.fromhex("02000000fffe")
_PASV = re.compile(rb"\((\d+),(\d+),(\d+),(\d+),(\d+),(\d+)\)")


@dataclass
class Session:
    """One real session: its packets (in capture order), client, server(s), step packet."""

    name: str
    source: str
    packets: list[Packet]
    client: bytes
    servers: list[bytes]
    step: int                   # index in ``packets`` of the Trojan step packet
    detail: dict = field(default_factory=dict)


def _read(path: Path) -> list[Packet]:
    with open_capture(path) as reader:
        return [Packet(data, ts, i) for i, (ts, data) in enumerate(reader)]


def _first_step(packets: list[Packet], step: int, detector: TrojanDetector) -> int:
    for j, p in enumerate(packets):
        if detector.classify(p) == step:
            return j
    raise CaptureError(f"no {_RANK[step].upper()} step packet in the session")


def load_sessions(ssh: str | os.PathLike[str], ftp: str | os.PathLike[str], irc: str | os.PathLike[str],
                  ftp_file: str = "NOTEPAD.EXE") -> dict[str, Session]:
    """Load the three sessions (see the module docstring)."""
    det = TrojanDetector(TrojanConfig())
    out: dict[str, Session] = {}
    # SSH: the whole capture; its client is the SYN's source.
    pk = [p for p in _read(Path(ssh)) if p.is_ip]
    j = _first_step(pk, _STEP["ssh"], det)
    out["ssh"] = Session("ssh", os.fspath(ssh), pk, pk[j].src, [pk[j].dst], j)
    # FTP: the control connection carrying RETR <ftp_file>, and that file's data connection.
    allp = [p for p in _read(Path(ftp)) if p.is_ip and p.proto == PROTO_TCP]
    retr = None
    for p in allp:
        if p.dport in det.ftp_ports and p.payload_off < p.ip_end:
            line = bytes(p.payload).split(b"\r\n", 1)[0].strip()
            if line.upper() == b"RETR " + ftp_file.upper().encode():
                retr = p
                break
    if retr is None:
        raise CaptureError(f"{ftp}: no 'RETR {ftp_file}' command found")
    client, server, cport, sport = retr.src, retr.dst, retr.sport, retr.dport

    def control(p: Packet) -> bool:
        return {(p.src, p.sport), (p.dst, p.dport)} == {(client, cport), (server, sport)}

    data_port = None
    for p in allp:
        if p is retr:
            break
        if control(p) and p.src == server:
            m = _PASV.search(bytes(p.payload))
            if m and bytes(p.payload).startswith(b"227"):
                data_port = int(m.group(5)) * 256 + int(m.group(6))
    if data_port is None:
        raise CaptureError(f"{ftp}: no passive-mode reply before 'RETR {ftp_file}'")
    pk = [p for p in allp if control(p) or (server, data_port) in ((p.src, p.sport), (p.dst, p.dport))]
    j = next(k for k, p in enumerate(pk) if p is retr)
    if det.classify(pk[j]) != _STEP["ftp"]:
        raise CaptureError(f"{ftp}: 'RETR {ftp_file}' is not a download the Trojan detector counts "
                           f"(extensions {', '.join(TrojanConfig().ftp_extensions)})")
    out["ftp"] = Session("ftp", os.fspath(ftp), pk, client, [server], j,
                         {"file": ftp_file, "control_port": sport, "data_port": data_port})
    # IRC: the whole capture; the first IRC step (the SYN to port 6667).
    pk = [p for p in _read(Path(irc)) if p.is_ip]
    j = _first_step(pk, _STEP["irc"], det)
    out["irc"] = Session("irc", os.fspath(irc), pk, pk[j].src, [pk[j].dst], j)
    for s in out.values():
        s.detail["packets"] = len(s.packets)
        s.detail["step_packet"] = s.step
    return out


def default_sessions() -> dict[str, Session]:
    return load_sessions(ZEEK / "ssh_single-conn.pcap", ZEEK / "pe_pe.pcap", ZEEK / "irc-basic.pcap")


# -- background --------------------------------------------------------------------------

def _scan_background(path: str) -> tuple[int, set[bytes]]:
    n = 0
    used: set[bytes] = set()
    with open_capture(path) as reader:
        for i, (ts, data) in enumerate(reader):
            n += 1
            p = Packet(data, ts, i)
            if p.is_ip:
                used.add(p.src)
                used.add(p.dst)
    return n, used


def default_hosts(used: set[bytes], count: int, third: int = 200) -> list[bytes]:
    """``count`` unused addresses from x.y.<third>.0/24 on, in the background's most common private /16."""
    counts: dict[bytes, int] = {}
    for a in used:
        if len(a) == 4 and ipaddress.IPv4Address(a).is_private:
            counts[a[:2]] = counts.get(a[:2], 0) + 1
    prefix = max(sorted(counts), key=counts.__getitem__) if counts else bytes((10, 99))
    out: list[bytes] = []
    for c in range(third, 256):
        for last in range(1, 255):
            a = prefix + bytes((c, last))
            if a not in used:
                out.append(a)
                if len(out) == count:
                    return out
    raise ValueError("no unused internal addresses left for the planted hosts")


def _mac(host: bytes) -> bytes:
    return b"\x02\x00" + host[-4:]


def _comma(addr: bytes) -> bytes:
    return ",".join(str(b) for b in addr).encode()


def _instance_packets(sessions: dict[str, Session], host: bytes, servers: dict[str, bytes]) -> dict[str, list[Packet]]:
    """Copies of the sessions' packets, readdressed to ``host`` and ``servers``, checksums valid."""
    out: dict[str, list[Packet]] = {}
    for name, s in sessions.items():
        mapping = {s.client: host, **{srv: servers[name] for srv in s.servers}}
        old_comma = [_comma(srv) for srv in s.servers]
        pk = []
        for p in s.packets:
            q = Packet(bytearray(p.data), p.ts, p.index)
            was_ok = checksums_ok(q)
            if q.src in mapping:
                rewrite_src(q, mapping[q.src])
            if q.dst in mapping:
                rewrite_dst(q, mapping[q.dst])
            changed = False
            if name == "ftp" and q.payload_off < q.ip_end and bytes(q.payload).startswith(b"227"):
                for old in old_comma:
                    new = _comma(servers[name])
                    body = bytes(q.data[q.payload_off:q.ip_end])
                    if old in body and len(new) == len(old):
                        q.data[q.payload_off:q.ip_end] = body.replace(old, new)
                        changed = True
            from_client = q.src == host
            q.data[0:12] = (_GATEWAY_MAC + _mac(host)) if from_client else (_mac(host) + _GATEWAY_MAC)
            if changed or not was_ok:
                fix_checksums(q)
            if not checksums_ok(q):           # pragma: no cover - defensive
                raise CaptureError(f"{s.source}: frame {p.index}: checksum still wrong after rewriting")
            pk.append(q)
        out[name] = pk
    return out


# -- planting ------------------------------------------------------------------------------

def plant_trojans(background: str | os.PathLike[str], out: str | os.PathLike[str], *,
                  count: int | None = None, positions: Sequence[int] | None = None,
                  hosts: Sequence[str] | None = None, servers: dict[str, str] | None = None,
                  gap: int = 100, spread: int = 1, sessions: dict[str, Session] | None = None,
                  progress: Callable[[int], object] | None = None) -> dict:
    """Write ``background`` with Trojan instances planted into ``out``; return the ground truth."""
    background = os.fspath(background)
    if gap < 0 or spread < 1:
        raise ValueError("gap must be >= 0 and spread >= 1")
    sessions = sessions or default_sessions()
    total_bg, used = _scan_background(background)
    if positions is None:
        n = 1 if count is None else count
        if n < 1:
            raise ValueError("count must be at least 1")
        positions = [(2 * i + 1) * total_bg // (2 * n) for i in range(n)]
    positions = list(positions)
    for pos in positions:
        if not 0 <= pos <= total_bg:
            raise ValueError(f"position {pos} is outside the background (0..{total_bg})")
    if hosts:
        host_addrs = [ip_bytes(h) for h in hosts]
        if any(len(h) != 4 for h in host_addrs):
            raise ValueError("planted hosts must be IPv4 addresses")
        host_addrs = [host_addrs[i % len(host_addrs)] for i in range(len(positions))]
    else:
        host_addrs = default_hosts(used, len(positions))
    srv = {k: ip_bytes(v) for k, v in {**DEFAULT_SERVERS, **(servers or {})}.items()}
    if any(len(v) != 4 for v in srv.values()):
        raise ValueError("server addresses must be IPv4")

    # planted: (anchor, instance, session rank, j, packet, is_step)
    planted: list[tuple[int, int, int, int, Packet, bool]] = []
    for inst, (pos, host) in enumerate(zip(positions, host_addrs, strict=True)):
        pk = _instance_packets(sessions, host, srv)
        for rank, name in enumerate(_RANK):
            s = sessions[name]
            anchor0 = pos + rank * gap
            for j, p in enumerate(pk[name]):
                a = min(total_bg, max(0, anchor0 + (j - s.step) * spread))
                planted.append((a, inst, rank, j, p, j == s.step))
    planted.sort(key=lambda x: x[:4])

    det = TrojanDetector(TrojanConfig())
    steps_of_host: dict[bytes, list[list[int]]] = {}
    inst_steps: list[dict[str, int]] = [{} for _ in positions]
    inst_span: list[list[int]] = [[-1, -1, 0] for _ in positions]
    idx = 0
    k = 0
    with open_capture(background) as reader:
        writer = CaptureWriter(out, linktype=reader.linktype, nanosecond=reader.nanosecond)
        with writer:
            prev_ts = None

            def emit_planted(upto: int, ts: int) -> None:
                nonlocal k, idx
                while k < len(planted) and planted[k][0] <= upto:
                    _a, inst, rank, _j, p, is_step = planted[k]
                    writer.write(ts, bytes(p.data))
                    if is_step:
                        inst_steps[inst][_RANK[rank]] = idx
                    step = det.classify(p)
                    if step is not None:
                        steps_of_host.setdefault(p.src, [[], [], []])[step].append(idx)
                    span = inst_span[inst]
                    if span[0] < 0:
                        span[0] = idx
                    span[1] = idx
                    span[2] += 1
                    idx += 1
                    k += 1

            for b, (ts, data) in enumerate(reader):
                emit_planted(b, ts if prev_ts is None else prev_ts)
                writer.write(ts, data)
                idx += 1
                prev_ts = ts
                if progress is not None and not b % 4096:
                    progress(b)
            emit_planted(total_bg, prev_ts if prev_ts is not None else 0)
    # Background steps of the planted hosts would change the expected alerts: there are
    # none, since the hosts are unused there (or chosen by the user: then we still count).
    expected: list[dict] = []
    for host, (ssh, ftp, irc) in steps_of_host.items():
        clock = completion_clock(min(ssh) if ssh else None, tuple(ftp), tuple(irc))
        if clock is not None:
            expected.append({"host": ip_str(host), "clock": clock})
    expected.sort(key=lambda a: a["clock"])
    instances = []
    for inst, (pos, host) in enumerate(zip(positions, host_addrs, strict=True)):
        st = inst_steps[inst]
        alert = next((a["clock"] for a in expected if a["host"] == ip_str(host) and a["clock"] == st["irc"]), None)
        instances.append({
            "host": ip_str(host),
            "position": pos,
            "servers": {k2: ip_str(v) for k2, v in srv.items()},
            "steps": {name: st[name] for name in _RANK},
            "alert_clock": alert,
            "first_index": inst_span[inst][0],
            "last_index": inst_span[inst][1],
            "packets": inst_span[inst][2],
        })
    return {
        "scenario": "trojan",
        "background": background,
        "output": os.fspath(out),
        "packets": idx,
        "background_packets": total_bg,
        "planted_packets": len(planted),
        "gap_packets": gap,
        "spread": spread,
        "clock": "input packet index, 0-based (= logical clock of a single-root chain)",
        "sessions": {name: {"source": s.source, **s.detail} for name, s in sessions.items()},
        "instances": instances,
        "expected_alerts": expected,
    }
