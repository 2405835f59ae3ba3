"""Live ports: ``chc serve CHAIN --live IN_IF:OUT_IF`` (or ``chc run ... --live``),
chc as a bump in the wire.

Theory of operation
-------------------
Two :class:`LivePort` objects, raw ``AF_PACKET`` sockets bound to ``IN_IF`` (the
inside: clients, the NAT's internal hosts) and ``OUT_IF`` (the outside: servers),
receive whole Ethernet frames in promiscuous mode.  :class:`Ports` makes them the
source of :mod:`chc.serve`'s real-time loop, which waits on both with ``select``
and, when either has frames, takes up to ``--batch-size`` from each
(non-blocking ``recv`` until the socket is empty), stamps them with the wall
clock, and pushes them as one batch through the ``sim`` runtime (real time
instead of virtual time: every packet is available at once, so the runtime's
results are those of ``--topspeed``).  Frames are read from a
PACKET_MMAP RX ring (TPACKET_V2) where the kernel gives one: bench/live_io.py
measured a frame read from it at a quarter to a half of a ``recvfrom_into``.  What the chain outputs is sent
on the other port than the frame came in on; what it drops is counted in the
summary as in ``chc run``.  Frames the sockets themselves send are never read
back: ``PACKET_IGNORE_OUTGOING`` where the kernel has it, and the packet type
(``PACKET_OUTGOING``) is checked in any case.

Direction.  A frame from ``IN_IF`` traverses the chain's vertices in order; a
frame from ``OUT_IF`` traverses them in reverse, the way a reply crosses the
middleboxes of a real path.  :class:`LiveRuntime` builds this from a linear chain
``v1 -> ... -> vn`` as one physical chain ``v1 -> ... -> vn`` plus mirror vertices
``vn~ -> ... -> v1~`` whose instances share their NF object and state handles with
the forward ones (same state, same store client; own input queue, counters and
timers), and routes each frame at the root to ``v1`` or ``vn~`` by the port it
came from.  Every frame of both directions gets its clock from the one root, so
NFs that order by clock (the Trojan detector) see one order.  An NF thus meets
a reply in exactly the form its own output had; the NAT and the load balancer
translate such replies with ``wire: true`` (:mod:`chc.nfs.nat`).  Their reply
entries are per-flow state keyed by the rewritten 5-tuple, which another
instance may own, so ``--live`` runs them with one instance.

Non-IP frames (ARP) pass unchanged when the chain's ``input.non_ip`` is ``pass``.
Stopping, the summary (that of ``chc run``, plus the ports' counters), metrics
and the dashboard are :mod:`chc.serve`'s, shared with a replayed capture.
"""

from __future__ import annotations

import array
import contextlib
import dataclasses
import fcntl
import logging
import mmap
import os
import select
import socket
import struct
import tempfile
import time
from typing import Any

from .cliargs import UsageError
from .packet import Packet
from .runtime.sim import SimRuntime
from .spec import Chain, Vertex
from .summary import Summary

__all__ = ["LivePort", "LiveRuntime", "PortError", "Ports", "mirrored"]

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_OUTGOING = 4
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
TPACKET_V2 = 1
TP_STATUS_USER = 1
TP_STATUS_VLAN_VALID = 1 << 4
TP_STATUS_VLAN_TPID_VALID = 1 << 6
ETH_P_8021Q = 0x8100
RING_BYTES = 8 << 20                # per port, as the socket buffer without a ring
# tp_status, tp_len, tp_snaplen, tp_mac, tp_net, tp_sec, tp_nsec, tp_vlan_tci, tp_vlan_tpid
_TPACKET2 = struct.Struct("IIIHHIIHH")
_TAG = struct.Struct("!HH")
_PKTTYPE_AT = 32 + 10               # sockaddr_ll.sll_pkttype, after the aligned header
PACKET_IGNORE_OUTGOING = 23         # Linux 4.20+
MAX_FRAME = 65536 + 64              # a GSO super-frame, should offloads be left on
MIRROR = "~"                        # not allowed in spec names, so never a clash
REWRITERS = ("nat", "lb")


ARPHRD_ETHER = 1           # an Ethernet interface's type in /sys/class/net/IF/type


def _link_type(ifname: str) -> int | None:
    """The interface's ARPHRD type, None when the system does not say."""
    try:
        with open(f"/sys/class/net/{ifname}/type") as fh:
            return int(fh.read())
    except (OSError, ValueError):
        return None


log = logging.getLogger("chc.live")

IFF_UP = 0x1
SIOCETHTOOL = 0x8946
# ethtool's legacy get commands (linux/ethtool.h): offloads that hand AF_PACKET frames
# bigger than the MTU (GRO, LRO) or leave them to be cut up / checksummed by the NIC
# (TSO, GSO, TX checksums)
_OFFLOADS = (("gro", 0x2B), ("tso", 0x1E), ("gso", 0x23), ("tx", 0x16))
ETHTOOL_GFLAGS, ETH_FLAG_LRO = 0x25, 1 << 15       # LRO is a flag, not a command of its own


def _is_up(ifname: str) -> bool | None:
    try:
        with open(f"/sys/class/net/{ifname}/flags") as fh:
            return bool(int(fh.read(), 16) & IFF_UP)
    except (OSError, ValueError):
        return None


def _has_carrier(ifname: str) -> bool | None:
    """Up but no link (a veth whose peer is down, a NIC without a cable): passes nothing."""
    try:
        with open(f"/sys/class/net/{ifname}/carrier") as fh:
            return fh.read().strip() == "1"
    except (OSError, ValueError):         # (reading carrier of a down interface fails: EINVAL)
        return None


def _ethtool(sock: socket.socket, ifname: str, cmd: int) -> int | None:
    """One ethtool get command's value (struct ethtool_value), None when refused."""
    value = array.array("I", [cmd, 0])
    addr, _ = value.buffer_info()
    ifreq = struct.pack("16sP", ifname.encode()[:15], addr)
    try:
        fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifreq)
    except OSError:
        return None
    return value[1]


def offloads_on(sock: socket.socket, ifname: str) -> list[str]:
    """The offloads of ``ifname`` that are on and that break a bump in the wire (docs/live.md)."""
    on = [name for name, cmd in _OFFLOADS if _ethtool(sock, ifname, cmd)]
    if (_ethtool(sock, ifname, ETHTOOL_GFLAGS) or 0) & ETH_FLAG_LRO:
        on.append("lro")
    return on


def _warn_setup(sock: socket.socket, ifname: str) -> None:
    """What makes a port pass nothing, or frames cut short, said at the start (a new
    user's trial: a down interface, and the offloads veths have on by default, each gave
    a run that forwarded nothing with no word but a counter in the final summary)."""
    if _is_up(ifname) is False:
        log.warning("--live %s: the interface is down: nothing passes until it is up (ip link set %s up)",
                    ifname, ifname)
    elif _has_carrier(ifname) is False:
        log.warning("--live %s: no carrier (no link: a veth whose peer is down, a cable out): nothing passes "
                    "until there is", ifname)
    on = offloads_on(sock, ifname)
    if on:
        log.warning("--live %s: offloads on (%s): frames bigger than the MTU reach the chain and are dropped "
                    "(oversize), or leave with checksums unfinished; turn them off: ethtool -K %s tx off rx off "
                    "tso off gso off gro off (docs/live.md, Offloads)", ifname, ", ".join(on), ifname)


class PortError(UsageError):
    """A live port cannot be opened (no such interface, no permission)."""


def _claim(ifname: str) -> Any:
    """An exclusive lock on ``ifname`` in this network namespace, held while the port is
    open: two chc processes on one interface both forwarded every frame, each packet
    twice (a new user's trial).  None where no lock can be made (then nothing is said)."""
    try:
        netns = os.stat("/proc/self/ns/net").st_ino
    except OSError:
        netns = 0
    directory = "/run/lock" if os.access("/run/lock", os.W_OK) else tempfile.gettempdir()
    path = os.path.join(directory, f"chc-live-{netns}-{ifname}.lock")
    try:
        fh = open(path, "a+")       # noqa: SIM115 - held open for the port's life
    except OSError:
        return None
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "another process"
        fh.close()
        raise PortError(f"--live {ifname}: another chc ({holder}) is bridging this interface; two would "
                        "forward every frame twice") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"pid {os.getpid()}")
    fh.flush()
    return fh


class LivePort:
    """One interface's raw Ethernet frames, read and written in batches."""

    def __init__(self, ifname: str, ring: bool = True) -> None:
        self.name = ifname
        self.received = 0
        self.sent = 0
        self.send_errors = 0
        self.outgoing_seen = 0          # own frames the kernel still showed us (old kernels)
        self.kernel_drops = 0           # frames the socket's buffer had no room for
        self.oversize = 0               # frames larger than a ring slot (offloads left on?)
        self.ring: mmap.mmap | None = None
        self._lock: Any = None
        try:
            index = socket.if_nametoindex(ifname)
        except OSError:
            raise PortError(f"--live: no interface {ifname!r}") from None
        try:
            # Protocol 0 until bound: an ETH_P_ALL socket would queue every
            # interface's frames between socket() and bind().
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        except PermissionError:
            raise PortError(f"--live {ifname}: no permission for AF_PACKET sockets "
                            f"(run as root or with CAP_NET_RAW)") from None
        kind = _link_type(ifname)
        if kind is not None and kind != ARPHRD_ETHER:
            # (the chain parses Ethernet frames: on loopback, type 772, the frames were
            # taken for Ethernet anyway and the chain saw nonsense)
            sock.close()
            raise PortError(f"--live {ifname}: not an Ethernet interface (link type {kind}); a bump in the "
                            "wire needs two Ethernet interfaces (a veth pair, a NIC)")
        _warn_setup(sock, ifname)
        try:
            if ring:
                self._map_ring(sock, ifname)
            sock.bind((ifname, ETH_P_ALL))
            mreq = struct.pack("iHH8s", index, PACKET_MR_PROMISC, 0, b"")
            sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
            with contextlib.suppress(OSError):     # older kernel: recv_batch checks the type
                sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            for opt in (getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF):
                try:
                    if opt is not None:
                        sock.setsockopt(socket.SOL_SOCKET, opt, 8 << 20)
                        break
                except OSError:
                    continue
        except OSError as exc:
            sock.close()
            raise PortError(f"--live {ifname}: {exc.strerror or exc}") from None
        try:
            self._lock = _claim(ifname)
        except PortError:
            sock.close()
            raise
        sock.setblocking(False)
        self.sock = sock
        self._buf = bytearray(MAX_FRAME)
        self._view = memoryview(self._buf)

    def _map_ring(self, sock: socket.socket, ifname: str) -> None:
        """A TPACKET_V2 RX ring (PACKET_MMAP; see the module doc for why).  Slots
        hold the MTU's frames; without the ring, recv_batch falls back to recv."""
        try:
            with open(f"/sys/class/net/{ifname}/mtu") as fh:
                mtu = int(fh.read())
        except (OSError, ValueError):
            mtu = 1500
        slot = 1 << (mtu + 14 + 4 + 32 + 20 + 16).bit_length()    # frame, VLAN tag, headers
        block = max(slot, 1 << 20)
        blocks = max(RING_BYTES // block, 1)
        try:
            sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
            sock.setsockopt(SOL_PACKET, PACKET_RX_RING, struct.pack("IIII", block, blocks, slot,
                                                                   block * blocks // slot))
            self.ring = mmap.mmap(sock.fileno(), block * blocks)
        except OSError:
            self.ring = None
            return
        self._slot = slot
        self._slots = block * blocks // slot
        self._next = 0
        self._ring_view = memoryview(self.ring)

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv_batch(self, limit: int) -> list[bytes]:
        """Up to ``limit`` frames that have arrived (none if nothing has)."""
        if self.ring is not None:
            return self._ring_batch(limit)
        out: list[bytes] = []
        recv = self.sock.recvfrom_into
        buf = self._buf
        view = self._view
        while len(out) < limit:
            try:
                size, addr = recv(buf)
            except (BlockingIOError, InterruptedError):
                break
            if addr[2] == PACKET_OUTGOING:
                self.outgoing_seen += 1
                continue
            # One reused buffer: recvfrom(MAX_FRAME) would allocate 64 KiB a frame.
            out.append(bytes(view[:size]))
        self.received += len(out)
        return out

    def _ring_batch(self, limit: int) -> list[bytes]:
        out: list[bytes] = []
        mem, view, unpack = self.ring, self._ring_view, _TPACKET2.unpack_from
        slot, slots, i = self._slot, self._slots, self._next
        while len(out) < limit:
            at = i * slot
            status, length, snap, mac, _net, _s, _ns, tci, tpid = unpack(mem, at)
            if not status & TP_STATUS_USER:
                break
            if mem[at + _PKTTYPE_AT] == PACKET_OUTGOING:
                self.outgoing_seen += 1
            elif snap < length:
                self.oversize += 1
                if self.oversize == 1:
                    log.warning("--live %s: a %d-byte frame, larger than a ring slot, dropped (offloads on? "
                                "ethtool -K %s gro off gso off tso off; docs/live.md)", self.name, length, self.name)
            elif status & TP_STATUS_VLAN_VALID:
                # The kernel took the 802.1Q tag off the frame (VLAN offload): put it
                # back, or a trunk's frames would leave untagged.
                if not status & TP_STATUS_VLAN_TPID_VALID:
                    tpid = ETH_P_8021Q
                start = at + mac
                out.append(b"".join((view[start:start + 12], _TAG.pack(tpid, tci), view[start + 12:start + snap])))
            else:
                out.append(bytes(view[at + mac:at + mac + snap]))
            mem[at:at + 4] = b"\0\0\0\0"          # the slot back to the kernel
            i = i + 1 if i + 1 < slots else 0
        self._next = i
        self.received += len(out)
        return out

    def send_batch(self, frames: list[bytes | bytearray]) -> None:
        send = self.sock.send
        for frame in frames:
            try:
                send(frame)
            except BlockingIOError:
                # The device queue is full: wait for room once, then give up on it.
                select.select([], [self.sock], [], 0.05)
                try:
                    send(frame)
                except OSError:
                    self.send_errors += 1
                    continue
            except OSError:             # EMSGSIZE (bigger than the MTU), ENETDOWN, ...
                self.send_errors += 1
                continue
            self.sent += 1

    def counters(self) -> dict[str, Any]:
        with contextlib.suppress(OSError):      # each read returns and resets the kernel's counts
            _, drops = struct.unpack("II", self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
            self.kernel_drops += drops
        return {"interface": self.name, "received": self.received, "sent": self.sent,
                "send_errors": self.send_errors, "kernel_drops": self.kernel_drops,
                "oversize": self.oversize, "rx_ring": self.ring is not None}

    def close(self) -> None:
        if self.ring is not None:
            self._ring_view.release()
            self.ring.close()
            self.ring = None
        self.sock.close()
        if self._lock is not None:
            self._lock.close()      # (releases the flock)
            self._lock = None


def mirrored(chain: Chain) -> tuple[Chain, dict[str, str]]:
    """The physical chain of a live run: ``chain`` and its mirror (see module doc);
    also ``{mirror name: vertex name}``."""
    vs = chain.vertices
    names = list(vs)
    bad = [v.name for v in vs.values() if v.taps_in or v.taps_out or v.offpath or len(v.successors) > 1]
    if len(chain.entries) != 1 or bad:
        raise UsageError(f"--live: chain {chain.name!r} is not a path (vertices in a row, no off-path "
                         f"taps or traffic classes); live mode sends replies through it in reverse")
    for v in vs.values():
        if v.nf.kind in REWRITERS:
            if v.parallelism > 1:
                raise UsageError(f"--live: vertex {v.name} ({v.nf.kind}) has {v.parallelism} instances; "
                                 f"live mode runs address-rewriting NFs with one (see docs/live.md)")
            if not getattr(v.config, "wire", False):
                raise UsageError(f"--live: vertex {v.name} ({v.nf.kind}) needs 'wire: true' in its config "
                                 f"to translate replies from the other side (see docs/live.md)")
    out: dict[str, Vertex] = dict(vs)
    mirrors: dict[str, str] = {}
    back = names[::-1]
    for i, name in enumerate(back):
        m = name + MIRROR
        mirrors[m] = name
        succ = [back[i + 1] + MIRROR] if i + 1 < len(back) else []
        out[m] = dataclasses.replace(vs[name], name=m, successors=succ, match=None)
    return Chain(chain.name, out, [names[0], names[-1] + MIRROR], dict(chain.policies), 1), mirrors


class LiveRuntime(SimRuntime):
    """The sim runtime over :func:`mirrored`'s chain: frames whose index is in
    ``reverse`` enter at the mirror (they came from the outside port)."""

    def __init__(self, chain: Chain, **kwargs: Any) -> None:
        physical, self.mirrors = mirrored(chain)
        super().__init__(physical, **kwargs)
        self.forward_entry, self.reverse_entry = physical.entries
        self.reverse: set[int] = set()
        for m, name in self.mirrors.items():
            for twin, inst in zip(self.instances[m], self.instances[name], strict=True):
                twin.nf, twin.objects, twin.client = inst.nf, inst.objects, inst.client
                twin.ctx.vertex = name          # alerts name the vertex, not its mirror

    def _classify(self, root: Any, admitted: list[Packet]) -> dict[str, list[Packet]]:
        reverse = self.reverse
        fwd = [p for p in admitted if p.index not in reverse]
        rev = [p for p in admitted if p.index in reverse] if reverse else []
        return {self.forward_entry: fwd, self.reverse_entry: rev}

    def logical_state(self) -> dict[str, dict]:
        return {k: v for k, v in super().logical_state().items() if k not in self.mirrors}

    def store_stats(self) -> dict:
        out = super().store_stats()
        for k in ("blocking_ops", "nonblocking_ops", "cache_hits"):
            out[k] //= 2                        # every client is shared by a vertex and its mirror
        return out

    def summary(self) -> Summary:
        s = super().summary()
        for m, name in self.mirrors.items():
            row = s.vertices.pop(m)
            dst = s.vertices[name]
            for k in ("packets_in", "packets_out", "dropped", "nf_errors", "alerts"):
                dst[k] += row[k]
        return s


class Ports:
    """The two ports of a live run as a :class:`chc.serve.Source`: frames from both,
    output sent on the port opposite to the one each frame came in on."""

    exhausted = False               # ports never run dry

    def __init__(self, runtime: LiveRuntime, inside: LivePort, outside: LivePort) -> None:
        self.runtime = runtime
        self.inside = inside
        self.outside = outside
        self.by_side = {"inside": inside, "outside": outside}      # the metrics' labels

    @classmethod
    def open(cls, runtime: LiveRuntime, pair: str) -> Ports:
        """The ports of ``--live IN_IF:OUT_IF``."""
        in_if, out_if = _ifpair(pair)
        inside = LivePort(in_if)
        try:
            outside = LivePort(out_if)
        except PortError:
            inside.close()
            raise
        return cls(runtime, inside, outside)

    def wait(self, timeout: float, elapsed_ns: int) -> None:
        if timeout > 0:
            select.select((self.inside, self.outside), [], [], timeout)

    def take(self, limit: int, index: int, t0_ns: int) -> tuple[list[Packet], int, int]:
        """Up to ``limit`` frames from each port (inside ones first), stamped with the
        wall clock; a frame from the outside enters at the mirror."""
        inside = self.inside.recv_batch(limit)
        outside = self.outside.recv_batch(limit)
        if not inside and not outside:
            return [], 0, 0
        now = time.time_ns()
        pkts = [Packet(f, now, index + i) for i, f in enumerate(inside)]
        base = index + len(inside)
        pkts += [Packet(f, now, base + i) for i, f in enumerate(outside)]
        self.runtime.reverse = set(range(base, base + len(outside)))
        arrived = time.monotonic_ns()
        return pkts, arrived, arrived * len(pkts)

    def emit(self, out: list[Packet]) -> None:
        """Output on the port opposite to the one each frame came in on."""
        if not out:
            return
        reverse = self.runtime.reverse
        to_in = [p.data for p in out if p.index in reverse]
        to_out = [p.data for p in out if p.index not in reverse] if reverse else [p.data for p in out]
        self.outside.send_batch(to_out)
        self.inside.send_batch(to_in)

    def describe(self, stopped_by: str | None) -> dict[str, Any]:
        return {"live": {"inside": self.inside.counters(), "outside": self.outside.counters(),
                         "stopped_by": stopped_by}}

    def report(self) -> list[str]:
        out = []
        for side, port in self.by_side.items():
            c = port.counters()
            out.append(f"live {side} {c['interface']}: {c['received']:,} frames received, {c['sent']:,} sent, "
                       f"{c['send_errors']:,} send errors, {c['kernel_drops']:,} dropped by the kernel "
                       f"(buffer full), {c['oversize']:,} oversize")
        return out

    def close(self) -> None:
        self.inside.close()
        self.outside.close()


def _ifpair(text: str) -> tuple[str, str]:
    a, sep, b = text.partition(":")
    if not sep or not a or not b or a == b or ":" in b:
        raise UsageError(f"--live {text!r}: expected IN_IF:OUT_IF, two different interfaces")
    return a, b
