"""Live ports (``chc run --live``): the reverse path through NAT and LB, and
end-to-end runs between network namespaces.

The namespace tests build, per test, three namespaces of their own (names carry
this process's id, so parallel runs never meet):

    cli (10.0.1.1, 10.0.1.2) --veth-- mid: chc on in0:out0 --veth-- srv (10.0.2.10, 10.0.2.11)

chc runs inside ``mid`` bridging ``in0`` (inside) and ``out0`` (outside); the
two sides share one Ethernet segment through it.  Nothing owns the NAT's external
address 10.0.2.200 or the LB's VIP 10.0.2.100, so each side has a permanent
neighbour entry for the one it sends to (docs/live.md).  The server namespace
owns 10.0.3.0/24 as a local route, so a sweep of it is answered with RSTs.
Offloads are off on every veth end: AF_PACKET would otherwise see GSO
super-frames and partial checksums.  Traffic never leaves these namespaces.

They need root and ip, ethtool, curl, nmap, iperf3: skipped without them (under
CI=true a missing tool fails, as .ci/run installs them).  No timing is in any
pass/fail condition; the iperf3 figures are printed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from chc.live import LiveRuntime, mirrored
from chc.packet import Packet, ip_bytes, ipv4_header_ok, l4_checksum_ok
from chc.spec import load_spec
from conftest import _unavailable
from frames import ACK, FIN_ACK, SYN, SYN_ACK, tcp, udp
from frames import arp as arp_frame

ROOT = Path(__file__).resolve().parent.parent
NAT_LB = ROOT / "examples" / "live_nat_lb.yaml"
PORTSCAN = ROOT / "examples" / "portscan.yaml"
PASS = ROOT / "examples" / "passthrough.yaml"
TOOLS = ("ip", "ethtool", "curl", "nmap", "iperf3")


# -- the reverse path, no namespaces --------------------------------------------------

def _run(rt: LiveRuntime, frames: list[bytes], reverse: set[int], start: int, later_ns: int = 0) -> list[Packet]:
    pkts = [Packet(f, later_ns + 1_000_000 * (start + i), start + i) for i, f in enumerate(frames)]
    rt.reverse = {start + i for i in reverse}
    return rt.step(pkts)


def _valid(p: Packet) -> bool:
    q = Packet(bytes(p.data))
    return ipv4_header_ok(q) and l4_checksum_ok(q) is True


@pytest.mark.parametrize("model", ["T", "EO+C+NA"])
def test_a_reply_crosses_lb_then_nat_and_leaves_as_the_client_expects(model):
    rt = LiveRuntime(load_spec(NAT_LB), model=model)
    out = _run(rt, [tcp("10.0.1.1", "10.0.2.100", 40000, 8080, SYN)], set(), 0)
    assert len(out) == 1 and _valid(out[0])
    syn = Packet(bytes(out[0].data))
    assert syn.src == ip_bytes("10.0.2.200") and syn.dst == ip_bytes("10.0.2.10") and syn.dport == 8080
    eport = syn.sport
    # The backend answers the NAT's external address; the reply enters from the outside.
    out = _run(rt, [tcp("10.0.2.10", "10.0.2.200", 8080, eport, SYN_ACK)], {0}, 1)
    assert len(out) == 1 and _valid(out[0])
    back = Packet(bytes(out[0].data))
    assert (back.src, back.sport, back.dst, back.dport) == (ip_bytes("10.0.2.100"), 8080, ip_bytes("10.0.1.1"), 40000)
    # The same connection goes on to the same backend and port.
    out = _run(rt, [tcp("10.0.1.1", "10.0.2.100", 40000, 8080, ACK)], set(), 2)
    ack = Packet(bytes(out[0].data))
    assert (ack.src, ack.sport, ack.dst) == (ip_bytes("10.0.2.200"), eport, ip_bytes("10.0.2.10"))
    s = rt.summary()
    assert list(s.vertices) == ["nat", "lb"] and s.vertices["nat"]["packets_in"] == 3
    assert s.packets_in == 3 and s.packets_out == 3 and s.dropped == 0


@pytest.mark.parametrize("closer", ["client", "server"])
def test_a_closed_connection_gives_back_its_port_and_its_last_ack_still_crosses(closer):
    rt = LiveRuntime(load_spec(NAT_LB))
    out = _run(rt, [tcp("10.0.1.1", "10.0.2.100", 40000, 8080, SYN)], set(), 0)
    eport = Packet(bytes(out[0].data)).sport
    c_fin = tcp("10.0.1.1", "10.0.2.100", 40000, 8080, FIN_ACK)
    s_fin = tcp("10.0.2.10", "10.0.2.200", 8080, eport, FIN_ACK)
    first, second = (c_fin, s_fin) if closer == "client" else (s_fin, c_fin)
    rev = {0} if closer == "server" else {1}
    out = _run(rt, [tcp("10.0.2.10", "10.0.2.200", 8080, eport, SYN_ACK)], {0}, 1)
    out += _run(rt, [first, second], rev, 2)
    # The last ACK comes after both FINs, from the side that closed first: the outside
    # entry was deleted at the second FIN, so the server's was dropped as unsolicited
    # and the client retransmitted its FIN for seconds (found on a live wire).
    last_ack = (tcp("10.0.2.10", "10.0.2.200", 8080, eport, ACK) if closer == "client"
                else tcp("10.0.1.1", "10.0.2.100", 40000, 8080, ACK))
    acked = _run(rt, [last_ack], {0} if closer == "client" else set(), 4)
    assert len(acked) == 1 and _valid(acked[0])
    back = Packet(bytes(acked[0].data))
    if closer == "client":
        assert (back.src, back.sport, back.dst, back.dport) == (ip_bytes("10.0.2.100"), 8080,
                                                                ip_bytes("10.0.1.1"), 40000)
    else:
        assert (back.src, back.sport, back.dst) == (ip_bytes("10.0.2.200"), eport, ip_bytes("10.0.2.10"))
    assert len(out) == 3 and all(_valid(p) for p in out)
    state = rt.logical_state()
    nat, lb = state["nat"], state["lb"]
    assert sorted(nat["ports"][None]) == list(range(20000, 30000))      # the port is back
    assert all(v == 0 for v in lb.get("active", {}).values())
    # Both sides' entries stay, closed, for a TIME_WAIT (docs/live.md)
    assert len(lb["mapping"]) == 2 and len(nat["mapping"]) == 2
    assert rt.summary().dropped == 0


@pytest.mark.parametrize("model", ["T", "EO", "EO+C+NA"])
def test_a_closed_connection_is_forgotten_after_its_time_wait(model):
    """Until its TIME_WAIT (120 s of input time) is over a closed connection's FIN sent
    again still crosses; after it the backend's packets to it are no longer translated
    (the LB's entries go, found expired by that packet) and the NAT drops them as
    unsolicited (they reached the inside host for ever before)."""
    rt = LiveRuntime(load_spec(NAT_LB), model=model)
    eport = Packet(bytes(_run(rt, [tcp("10.0.1.1", "10.0.2.100", 40000, 8080, SYN)], set(), 0)[0].data)).sport
    s_fin = tcp("10.0.2.10", "10.0.2.200", 8080, eport, FIN_ACK)
    _run(rt, [tcp("10.0.2.10", "10.0.2.200", 8080, eport, SYN_ACK)], {0}, 1)
    _run(rt, [tcp("10.0.1.1", "10.0.2.100", 40000, 8080, FIN_ACK), s_fin], {1}, 2)
    again = _run(rt, [s_fin], {0}, 4, later_ns=119 * 10**9)         # within the TIME_WAIT
    assert len(again) == 1 and Packet(bytes(again[0].data)).dst == ip_bytes("10.0.1.1")
    stray = tcp("10.0.2.10", "10.0.2.200", 8080, eport, ACK)
    assert _run(rt, [stray], {0}, 5, later_ns=121 * 10**9) == []
    state = rt.logical_state()
    assert not state["lb"].get("mapping")
    assert sorted(state["nat"]["ports"][None]) == list(range(20000, 30000))
    assert rt.summary().dropped == 1


def _nat_alone(tmp_path: Path, ports: str = "[20000, 29999]") -> LiveRuntime:
    spec = tmp_path / "nat.yaml"
    spec.write_text(NAT_LB.read_text().split("  lb:\n", 1)[0].replace("[20000, 29999]", ports)
                    + "edges: []\n")
    return LiveRuntime(load_spec(spec))


def test_the_nat_forgets_a_closed_connection_after_its_time_wait(tmp_path):
    """The packet that finds a closed connection's entries expired deletes both; it is
    unsolicited (unsolicited: drop)."""
    rt = _nat_alone(tmp_path)
    eport = Packet(bytes(_run(rt, [tcp("10.0.1.1", "10.0.2.10", 40000, 8080, SYN)], set(), 0)[0].data)).sport
    _run(rt, [tcp("10.0.2.10", "10.0.2.200", 8080, eport, SYN_ACK)], {0}, 1)
    _run(rt, [tcp("10.0.1.1", "10.0.2.10", 40000, 8080, FIN_ACK),
              tcp("10.0.2.10", "10.0.2.200", 8080, eport, FIN_ACK)], {1}, 2)
    assert len(rt.logical_state()["nat"]["mapping"]) == 2
    assert _run(rt, [tcp("10.0.2.10", "10.0.2.200", 8080, eport, ACK)], {0}, 4, later_ns=121 * 10**9) == []
    assert not rt.logical_state()["nat"].get("mapping") and rt.summary().dropped == 1


def test_a_new_connection_on_the_same_5_tuple_keeps_its_entries_past_the_old_time_wait(tmp_path):
    rt = _nat_alone(tmp_path)
    syn = tcp("10.0.1.1", "10.0.2.10", 40000, 8080, SYN)
    old = Packet(bytes(_run(rt, [syn], set(), 0)[0].data)).sport
    _run(rt, [tcp("10.0.2.10", "10.0.2.200", 8080, old, SYN_ACK)], {0}, 1)
    _run(rt, [tcp("10.0.1.1", "10.0.2.10", 40000, 8080, FIN_ACK),
              tcp("10.0.2.10", "10.0.2.200", 8080, old, FIN_ACK)], {1}, 2)
    new = Packet(bytes(_run(rt, [syn], set(), 4, later_ns=10**9)[0].data)).sport     # the client reconnects
    assert new != old
    # the old port's outside entry is stale: its packet is unsolicited (and the entry goes)
    assert _run(rt, [tcp("10.0.2.10", "10.0.2.200", 8080, old, ACK)], {0}, 5, later_ns=2 * 10**9) == []
    out = _run(rt, [tcp("10.0.2.10", "10.0.2.200", 8080, new, ACK)], {0}, 6, later_ns=130 * 10**9)
    assert len(out) == 1 and Packet(bytes(out[0].data)).dst == ip_bytes("10.0.1.1")
    assert len(rt.logical_state()["nat"]["mapping"]) == 2       # the new connection's two entries


def test_a_reopened_connection_on_the_same_port_has_a_time_wait_of_its_own(tmp_path):
    """A pool of one port: the client's next connection gets the old one's port and 5-tuple.
    It closes later than the first, and its own TIME_WAIT counts (a timer of the first
    connection's deleted the second's entries early: found by a review)."""
    rt = _nat_alone(tmp_path, "[20000, 20000]")
    syn = tcp("10.0.1.1", "10.0.2.10", 40000, 8080, SYN)
    s_fin = tcp("10.0.2.10", "10.0.2.200", 8080, 20000, FIN_ACK)
    c_fin = tcp("10.0.1.1", "10.0.2.10", 40000, 8080, FIN_ACK)
    for start, at in ((0, 0), (10, 10**9)):         # open, answer, close: at 0 s, then at 1 s
        assert Packet(bytes(_run(rt, [syn], set(), start, later_ns=at)[0].data)).sport == 20000
        _run(rt, [tcp("10.0.2.10", "10.0.2.200", 8080, 20000, SYN_ACK)], {0}, start + 1, later_ns=at)
        _run(rt, [c_fin, s_fin], {1}, start + 2, later_ns=at)
    again = _run(rt, [s_fin], {0}, 20, later_ns=120_500_000_000)     # past the first's, in the second's
    assert len(again) == 1 and Packet(bytes(again[0].data)).dst == ip_bytes("10.0.1.1")
    assert len(rt.logical_state()["nat"]["mapping"]) == 2


@pytest.mark.parametrize("nf, base", [("nat", {"external_ip": "10.0.2.200"}),
                                      ("lb", {"vip": "10.0.2.100", "backends": ["10.0.2.10"]})])
@pytest.mark.parametrize("bad", [0, -1, "120", True, float("inf"), float("nan")])
def test_a_time_wait_must_be_a_positive_number_of_seconds(nf, base, bad):
    from chc.nf import ConfigError, build_config
    from chc.nfs import REGISTRY

    with pytest.raises(ConfigError, match="time_wait_s: expected a number"):
        build_config(REGISTRY[nf], {**base, "time_wait_s": bad}, "config")
    assert build_config(REGISTRY[nf], {**base, "time_wait_s": 0.5}, "config").time_wait_s == 0.5
