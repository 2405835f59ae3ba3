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

from chc.live import LivePort, LiveRuntime, mirrored
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

# one pytest-xdist worker runs them all: they listen on fixed ports (9464, 8765)
pytestmark = pytest.mark.xdist_group("live")


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


def test_unsolicited_and_non_ip_frames_from_the_outside():
    rt = LiveRuntime(load_spec(NAT_LB))
    # No connection uses port 20001: the NAT (unsolicited: drop) drops it; ARP passes.
    out = _run(rt, [tcp("10.0.2.10", "10.0.2.200", 8080, 20001, SYN_ACK), arp_frame()], {0, 1}, 0)
    assert [len(p.data) for p in out] == [len(arp_frame())]
    assert rt.summary().dropped == 1


def test_live_refuses_chains_it_cannot_run_both_ways(tmp_path):
    from chc.cliargs import UsageError
    with pytest.raises(UsageError, match="not a path"):
        mirrored(load_spec(ROOT / "examples" / "paper_chain.yaml"))
    spec = tmp_path / "c.yaml"
    spec.write_text(NAT_LB.read_text().replace("      wire: true\n", "", 1))
    with pytest.raises(UsageError, match="wire: true"):
        mirrored(load_spec(spec))
    with pytest.raises(UsageError, match="one"):
        mirrored(load_spec(NAT_LB).with_parallelism(2))


def _chc(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "chc.cli", *args], capture_output=True, text=True,
                          timeout=60, **kw)


def test_metrics_options_are_checked():
    res = _chc("run", str(PASS), "x.pcap", "--metrics-port", "9464")
    assert res.returncode == 2 and "--metrics-port is for --live" in res.stderr
    from chc.metrics import parse_listen
    assert parse_listen("9464") == ("127.0.0.1", 9464)
    assert parse_listen("0.0.0.0:80") == ("0.0.0.0", 80)
    with pytest.raises(ValueError):
        parse_listen("70000")


def test_a_missing_interface_is_a_one_line_error():
    res = _chc("run", str(PASS), "--live", "chcnosuch0:chcnosuch1")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == ["chc: error: --live: no interface 'chcnosuch0'"]
    res = _chc("run", str(PASS), "x.pcap", "--live", "a:b")
    assert res.returncode == 2 and "--live takes no CAPTURE" in res.stderr


def test_an_interface_that_is_not_ethernet_is_a_one_line_error():
    """Loopback was accepted and its frames taken for Ethernet (found by a new-user trial)."""
    res = _chc("run", str(PASS), "--live", "lo:chcnosuch1")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "chc: error: --live lo: not an Ethernet interface (link type 772); a bump in the wire needs two "
        "Ethernet interfaces (a veth pair, a NIC)"]


def test_no_permission_is_a_one_line_error():
    cmd = [sys.executable, "-m", "chc.cli", "run", str(PASS), "--live", "lo:lo2"]
    if os.geteuid() == 0:
        if shutil.which("capsh") is None:
            pytest.skip("as root, needs capsh to drop CAP_NET_RAW")
        cmd = ["capsh", "--drop=cap_net_raw", "--", "-c", shlex.join(cmd)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "chc: error: --live lo: no permission for AF_PACKET sockets (run as root or with CAP_NET_RAW)"]


# -- namespaces -------------------------------------------------------------------------

def _sh(*cmd: str, ns: str | None = None, check: bool = True, **kw) -> subprocess.CompletedProcess:
    full = (["ip", "netns", "exec", ns] if ns else []) + list(cmd)
    res = subprocess.run(full, capture_output=True, text=True, timeout=kw.pop("timeout", 60), **kw)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(full)}: exit {res.returncode}: {res.stderr.strip()}")
    return res


class Net:
    """The three namespaces (see the module doc); ``close`` removes them."""

    def __init__(self) -> None:
        tag = f"chc{os.getpid() % 100000}"
        self.cli, self.mid, self.srv = f"{tag}c", f"{tag}m", f"{tag}s"
        self.made: list[str] = []
        for ns in (self.cli, self.mid, self.srv):
            _sh("ip", "netns", "add", ns)
            self.made.append(ns)
            _sh("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", ns=ns)
            _sh("sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1", ns=ns)
            _sh("ip", "link", "set", "lo", "up", ns=ns)
        _sh("ip", "-n", self.mid, "link", "add", "in0", "type", "veth", "peer", "name", "cli0", "netns", self.cli)
        _sh("ip", "-n", self.mid, "link", "add", "out0", "type", "veth", "peer", "name", "srv0", "netns", self.srv)
        for ns, dev in ((self.mid, "in0"), (self.mid, "out0"), (self.cli, "cli0"), (self.srv, "srv0")):
            # AF_PACKET must see wire-sized frames with whole checksums.
            _sh("ethtool", "-K", dev, "tx", "off", "rx", "off", "tso", "off", "gso", "off", "gro", "off", ns=ns)
            _sh("ip", "link", "set", dev, "up", ns=ns)
        c, s = self.cli, self.srv
        _sh("ip", "addr", "add", "10.0.1.1/24", "dev", "cli0", ns=c)
        _sh("ip", "addr", "add", "10.0.1.2/24", "dev", "cli0", ns=c)
        _sh("ip", "route", "add", "10.0.2.0/24", "dev", "cli0", ns=c)
        _sh("ip", "route", "add", "10.0.3.0/24", "via", "10.0.2.10", "dev", "cli0", ns=c)
        _sh("ip", "addr", "add", "10.0.2.10/24", "dev", "srv0", ns=s)
        _sh("ip", "addr", "add", "10.0.2.11/24", "dev", "srv0", ns=s)
        _sh("ip", "route", "add", "10.0.1.0/24", "dev", "srv0", ns=s)
        _sh("ip", "route", "add", "local", "10.0.3.0/24", "dev", "lo", ns=s)
        cli_mac, srv_mac = self.mac(c, "cli0"), self.mac(s, "srv0")
        _sh("ip", "neigh", "replace", "10.0.2.100", "lladdr", srv_mac, "dev", "cli0", "nud", "permanent", ns=c)
        _sh("ip", "neigh", "replace", "10.0.2.200", "lladdr", cli_mac, "dev", "srv0", "nud", "permanent", ns=s)
        self.procs: list[subprocess.Popen] = []

    @staticmethod
    def mac(ns: str, dev: str) -> str:
        info = json.loads(_sh("ip", "-j", "link", "show", dev, ns=ns).stdout)
        return info[0]["address"]

    def spawn(self, ns: str, *cmd: str, **kw) -> subprocess.Popen:
        p = subprocess.Popen(["ip", "netns", "exec", ns, *cmd], **kw)
        self.procs.append(p)
        return p

    def bridge(self, on: bool) -> None:
        """Plain kernel forwarding between the two sides (the iperf3 baseline)."""
        if on:
            _sh("ip", "link", "add", "br0", "type", "bridge", ns=self.mid)
            for dev in ("in0", "out0"):
                _sh("ip", "link", "set", dev, "master", "br0", ns=self.mid)
            _sh("ip", "link", "set", "br0", "up", ns=self.mid)
        else:
            _sh("ip", "link", "del", "br0", ns=self.mid)

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            with contextlib.suppress(Exception):
                p.wait(5)
        for ns in self.made:
            _sh("ip", "netns", "del", ns, check=False)


@pytest.fixture
def net() -> Iterator[Net]:
    if os.geteuid() != 0:
        pytest.skip("namespace tests need root (ip netns, AF_PACKET)")
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        _unavailable(f"namespace tests need {', '.join(missing)} (apt-get install iproute2 ethtool curl nmap iperf3)")
    n = None
    try:
        n = Net()
        yield n
    finally:
        if n is not None:
            n.close()
        else:   # a half-built topology
            tag = f"chc{os.getpid() % 100000}"
            for suffix in "cms":
                _sh("ip", "netns", "del", tag + suffix, check=False)


class Chc:
    """``chc run CHAIN --live in0:out0`` (or ``chc serve``) in the middle namespace."""

    def __init__(self, net: Net, chain: Path, tmp: Path, *more: str, command: str = "run") -> None:
        self.summary_path = tmp / "summary.json"
        self.proc = net.spawn(net.mid, sys.executable, "-m", "chc.cli", command, str(chain), "--live", "in0:out0",
                              "--duration", "120", "--summary-json", str(self.summary_path), *more,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
        line = self.proc.stderr.readline()
        assert line.startswith("chc: live:"), line + self.proc.stderr.read()

    def stop(self, sig: int = signal.SIGTERM, code: int = 0) -> tuple[dict, str]:
        self.proc.send_signal(sig)
        out, err = self.proc.communicate(timeout=30)
        assert self.proc.returncode == code, err
        return json.loads(self.summary_path.read_text()), out


@pytest.mark.parametrize("command", ["run", "serve"])
def test_ctrl_c_drains_and_prints_the_summary(net, tmp_path, command):
    more = ("--dashboard-port", "8765") if command == "serve" else ()
    chc = Chc(net, PASS, tmp_path, *more, command=command)
    # Three datagrams to a closed port: ARP, then each answered by an ICMP error.
    _sh(sys.executable, "-c", "import socket, time\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "for _ in range(3): s.sendto(b'x', ('10.0.2.10', 9)); time.sleep(0.2)", ns=net.cli)
    if command == "serve":
        # The dashboard sees both directions of the one vertex once a sample is taken.
        time.sleep(1.5)
        state = json.loads(_sh("curl", "-sS", "--fail", "--max-time", "10", "http://127.0.0.1:8765/state",
                               ns=net.mid).stdout)
        assert [v["name"] for v in state["graph"]["vertices"]] == ["pass"]
        seen = {(i["direction"], i["packets_in"] > 0) for i in state["latest"]["instances"]}
        assert seen == {("forward", True), ("reverse", True)}
    summary, text = chc.stop(signal.SIGINT, 130)
    assert summary["packets_out"] == summary["packets_in"] >= 5 and summary["dropped"] == 0
    assert summary["capture"]["live"]["stopped_by"] == "interrupt"
    assert "chain 'passthrough'" in text and "live outside out0:" in text


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_curl_through_nat_and_lb_is_byte_identical(net, tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    sizes = {"empty": 0, "one": 1, "small": 1500, "mid": 100_000, "big": 3_000_000}
    for name, size in sizes.items():
        (www / name).write_bytes(os.urandom(size))
    with open(tmp_path / "http.log", "w") as log:   # the server keeps its own descriptor
        net.spawn(net.srv, sys.executable, "-m", "http.server", "8080", "--bind", "0.0.0.0",
                  "--directory", str(www), stdout=log, stderr=log)
    chc = Chc(net, NAT_LB, tmp_path)
    _wait_listening(net, net.srv, 8080)
    for name in sizes:
        got = tmp_path / f"got-{name}"
        res = _sh("curl", "-sS", "--fail", "--max-time", "20", "--interface", "10.0.1.1", "-o", str(got),
                  f"http://10.0.2.100:8080/{name}", ns=net.cli, check=False)
        assert res.returncode == 0, f"{name}: {res.stderr}"
        assert _sha(got) == _sha(www / name), name
    summary, text = chc.stop()
    seen = [line.split()[0] for line in (tmp_path / "http.log").read_text().splitlines() if '"GET' in line]
    assert len(seen) == len(sizes) and set(seen) == {"10.0.2.200"}, seen
    assert summary["nf_errors"] == 0 and summary["vertices"]["lb"]["packets_in"] > 0
    assert "chain 'live-nat-lb'" in text


def _www(net: Net, tmp_path: Path, size: int) -> Path:
    """A web server on the first backend address serving one file ``f`` of ``size`` random bytes."""
    www = tmp_path / "www"
    www.mkdir()
    (www / "f").write_bytes(os.urandom(size))
    net.spawn(net.srv, sys.executable, "-m", "http.server", "8080", "--bind", "10.0.2.10",
              "--directory", str(www), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return www


def test_a_syn_sweep_is_flagged_and_the_scanner_blocked(net, tmp_path):
    www = _www(net, tmp_path, 50_000)
    chc = Chc(net, PORTSCAN, tmp_path, "--metrics-port", "9464")
    _wait_listening(net, net.srv, 8080)
    # First contacts with 20 hosts, each answered by an RST: TRW flags after four.
    _sh("nmap", "-sS", "-Pn", "-n", "--send-ip", "-S", "10.0.1.1", "-e", "cli0", "-p", "80",
        "--max-retries", "0", "10.0.3.1-20", ns=net.cli, timeout=60)
    blocked = _sh("curl", "-sS", "--max-time", "3", "--interface", "10.0.1.1", "-o", "/dev/null",
                  "http://10.0.2.10:8080/f", ns=net.cli, check=False)
    other = tmp_path / "other"
    ok = _sh("curl", "-sS", "--fail", "--max-time", "20", "--interface", "10.0.1.2", "-o", str(other),
             "http://10.0.2.10:8080/f", ns=net.cli, check=False)
    scraped = _sh("curl", "-sS", "--fail", "--max-time", "10", "http://127.0.0.1:9464/metrics", ns=net.mid).stdout
    summary, _ = chc.stop()
    _check_metrics(scraped, summary)
    assert [(a["kind"], a["host"]) for a in summary["alerts"]] == [("portscan", "10.0.1.1")]
    assert blocked.returncode != 0, "the flagged scanner still got through"
    assert ok.returncode == 0, ok.stderr
    assert _sha(other) == _sha(www / "f")
    assert summary["vertices"]["portscan"]["dropped"] > 0


_TAG_SNIFFER = """
import socket, struct, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind(("srv0", 3))
s.setsockopt(263, 8, 1)                 # PACKET_AUXDATA: the tag the kernel took off
s.settimeout(20)
print("ready", flush=True)
while True:
    data, anc, _, _ = s.recvmsg(65536, 1024)
    if data[12:14] != b"\\x08\\x00" or data[36:38] != (9999).to_bytes(2, "big"):
        continue
    tags = [struct.unpack("IIIHHHH", cd[:20]) for level, kind, cd in anc if (level, kind) == (263, 8)]
    status, tci = (tags[0][0], tags[0][5]) if tags else (0, 0)
    print(f"vlan {tci & 0xfff}" if status & 16 else "untagged", flush=True)
    break
"""


def test_vlan_tags_cross_the_wire(net, tmp_path):
    # The kernel hands AF_PACKET a frame's 802.1Q tag apart from its bytes (both
    # where chc reads and where the sniffer does); chc must put it back on.
    sniffer = net.spawn(net.srv, sys.executable, "-c", _TAG_SNIFFER, stdout=subprocess.PIPE, text=True)
    assert sniffer.stdout.readline().strip() == "ready"
    chc = Chc(net, PASS, tmp_path)
    plain = udp("10.0.1.1", "10.0.2.10", 40000, 9999, b"tagged")
    frame = bytes.fromhex(Net.mac(net.srv, "srv0").replace(":", "")) + plain[6:12] + b"\x81\x00\x00\x0a" + plain[12:]
    _sh(sys.executable, "-c", "import socket, sys\n"
        "s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n"
        "s.bind(('cli0', 0))\n"
        "s.send(bytes.fromhex(sys.argv[1]))", frame.hex(), ns=net.cli)
    out, _ = sniffer.communicate(timeout=30)
    summary, _ = chc.stop()
    assert out.strip() == "vlan 10"
    assert summary["packets_in"] == summary["packets_out"] >= 1
    assert summary["capture"]["live"]["inside"]["rx_ring"]


def _check_metrics(text: str, summary: dict) -> None:
    """The Prometheus scrape of the sweep run: its alerts, both directions, drops."""
    from prometheus_client.parser import text_string_to_metric_families

    samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    assert samples[("chc_alerts_total", (("kind", "portscan"), ("vertex", "portscan")))] == 1

    def inst(name: str, direction: str) -> float:
        return samples[(name, (("direction", direction), ("instance", "0"), ("vertex", "portscan")))]
    for direction in ("forward", "reverse"):
        assert inst("chc_instance_packets_in_total", direction) > 0
        assert inst("chc_instance_queue_length", direction) == 0
        assert ("chc_instance_packets_per_second", (("direction", direction), ("instance", "0"),
                                                   ("vertex", "portscan"))) in samples
    assert inst("chc_instance_dropped_total", "forward") > 0        # the blocked scanner's SYNs
    # Scraped before the last frames: at most what the summary counts.
    assert inst("chc_instance_packets_in_total", "forward") + inst("chc_instance_packets_in_total", "reverse") \
        <= summary["vertices"]["portscan"]["packets_in"]
    assert samples[("chc_batch_processing_seconds_count", ())] > 0
    assert samples[("chc_port_frames_received_total", (("interface", "in0"), ("side", "inside")))] > 0


def _iperf(net: Net, size: str) -> dict:
    server = net.spawn(net.srv, "iperf3", "-s", "-1", "-B", "10.0.2.10", "-J",
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_listening(net, net.srv, 5201)
    res = _sh("iperf3", "-c", "10.0.2.10", "-B", "10.0.1.1", "-n", size, "-J", ns=net.cli, timeout=120)
    server.communicate(timeout=30)
    return json.loads(res.stdout)["end"]


def test_iperf3_through_the_chain_beside_kernel_forwarding(net, tmp_path):
    www = _www(net, tmp_path, 8_000_000)
    net.bridge(True)
    kernel = _iperf(net, "20M")
    net.bridge(False)
    chc = Chc(net, PASS, tmp_path)
    chain = _iperf(net, "20M")
    # iperf3's receiver stops counting at the end-of-test message, which may pass
    # data still in flight; so the bytes are compared on a download of 8 MB.
    got = tmp_path / "got"
    res = _sh("curl", "-sS", "--fail", "--max-time", "60", "-o", str(got), "http://10.0.2.10:8080/f",
              ns=net.cli, check=False)
    summary, _ = chc.stop()
    assert res.returncode == 0, res.stderr
    assert _sha(got) == _sha(www / "f")
    for end in (kernel, chain):
        assert end["sum_sent"]["bytes"] >= 20 * 1024 * 1024     # whole 128 KiB blocks
        assert 0 < end["sum_received"]["bytes"] <= end["sum_sent"]["bytes"]
    k, c = kernel["sum_received"]["bits_per_second"], chain["sum_received"]["bits_per_second"]
    print(f"\niperf3 TCP, 20 MiB: kernel bridge {k / 1e6:,.0f} Mbit/s, chc passthrough {c / 1e6:,.1f} Mbit/s "
          f"({c / k:.3f} of kernel); chc {summary['packets_in']:,} frames in, {summary['pps']:,.0f} frames/s")


def _wait_listening(net: Net, ns: str, port: int) -> None:
    for _ in range(200):
        res = _sh("ss", "-Hltn", f"sport = :{port}", ns=ns, check=False)
        if res.stdout.strip():
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port} in {ns}")


@pytest.mark.parametrize("nf, base", [("nat", {"external_ip": "10.0.2.200"}),
                                      ("lb", {"vip": "10.0.2.100", "backends": ["10.0.2.10"]})])
@pytest.mark.parametrize("bad", [0, -1, "120", True, float("inf"), float("nan")])
def test_a_time_wait_must_be_a_positive_number_of_seconds(nf, base, bad):
    from chc.nf import ConfigError, build_config
    from chc.nfs import REGISTRY

    with pytest.raises(ConfigError, match="time_wait_s: expected a number"):
        build_config(REGISTRY[nf], {**base, "time_wait_s": bad}, "config")
    assert build_config(REGISTRY[nf], {**base, "time_wait_s": 0.5}, "config").time_wait_s == 0.5


def test_a_down_interface_and_offloads_on_are_said_at_the_start(caplog):
    """Both made a run that passed nothing (or frames cut short) with no word but a counter
    in the final summary (a new user's trial): veths have their offloads on by default."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and ip (a veth pair in this namespace)")
    a, b = f"chcw{os.getpid() % 10000}a", f"chcw{os.getpid() % 10000}b"
    _sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
    try:
        _sh("ip", "link", "set", b, "up")           # a stays down; both keep the default offloads
        caplog.set_level("WARNING", logger="chc.live")
        for name in (a, b):
            LivePort(name).close()
        # One interface, two chc processes: the second is refused (both forwarded every frame).
        from chc.cliargs import UsageError
        first = LivePort(b)
        try:
            with pytest.raises(UsageError, match=f"--live {b}: another chc \\(pid {os.getpid()}\\) is bridging"):
                LivePort(b)
        finally:
            first.close()
        LivePort(b).close()                        # free again once closed
        said = [r.getMessage() for r in caplog.records]
        assert any(m.startswith(f"--live {a}: the interface is down") for m in said), said
        assert not any(m.startswith(f"--live {b}: the interface is down") for m in said), said
        # b is up, but its peer (a) is down: no carrier, nothing passes either (a review)
        assert any(m.startswith(f"--live {b}: no carrier") for m in said), said
        assert any(m.startswith(f"--live {b}: offloads on (") and "ethtool -K" in m for m in said), said
        if shutil.which("ethtool"):
            _sh("ethtool", "-K", b, "tx", "off", "rx", "off", "tso", "off", "gso", "off", "gro", "off")
            caplog.clear()
            LivePort(b).close()
            assert not [r for r in caplog.records if "offloads on" in r.getMessage()]
    finally:
        _sh("ip", "link", "del", a, check=False)


def test_a_live_pair_with_a_third_name_is_refused():
    """--live in0:out0:x ran on out0 and was reported as out0:x (a new user's trial)."""
    from chc.cliargs import UsageError
    from chc.live import _ifpair

    assert _ifpair("in0:out0") == ("in0", "out0")
    with pytest.raises(UsageError, match="expected IN_IF:OUT_IF"):
        _ifpair("in0:out0:x")
