"""The paper's four NFs (Table 4) run on one instance each, fed crafted frames."""

from __future__ import annotations

import itertools

import pytest

from chc.core.instance import Instance
from chc.nf import INITIATOR, build_config
from chc.nfs import NAT, LoadBalancer, PortScanDetector, TrojanDetector
from chc.nfs.portscan import HOST_PAIR
from chc.packet import Packet, ip_bytes, ipv4_header_ok, l4_checksum_ok
from frames import (
    ACK,
    FIN_ACK,
    PSH_ACK,
    RST,
    RST_ACK,
    SYN,
    SYN_ACK,
    arp,
    icmp_echo,
    packets,
    reparse,
    tcp,
    udp,
)

# -- helpers ------------------------------------------------------------------------


def make(nf_cls, config: dict) -> Instance:
    return Instance(nf_cls.kind, 0, nf_cls, build_config(nf_cls, config, "config"))


def run_one(inst: Instance, frame: bytes, index: int = 0, ts: int | None = None) -> Packet | None:
    """Run one frame; return the single output packet or None if dropped."""
    out = inst.run([Packet(frame, index * 1000 if ts is None else ts, index)])
    assert len(out) <= 1
    return out[0] if out else None


class Feeder:
    """Feeds frames one at a time with increasing index/clock and timestamps."""

    def __init__(self, inst: Instance, step_ns: int = 1000) -> None:
        self.inst = inst
        self.index = 0
        self.step_ns = step_ns

    def __call__(self, frame: bytes, ts: int | None = None) -> Packet | None:
        i = self.index
        self.index += 1
        return run_one(self.inst, frame, i, i * self.step_ns if ts is None else ts)


def assert_valid(pkt: Packet) -> Packet:
    """Re-parse the wire bytes and verify both checksums from scratch."""
    p = reparse(pkt)
    assert p.malformed is None
    assert ipv4_header_ok(p)
    assert l4_checksum_ok(p) is True
    return p


def ip(text: str) -> bytes:
    return ip_bytes(text)


def batching_outputs(nf_cls, config: dict, frames: list[bytes], batch: int,
                     timestamps: list[int] | None = None):
    inst = make(nf_cls, config)
    pkts = packets(frames)
    if timestamps is not None:
        for p, ts in zip(pkts, timestamps, strict=True):
            p.ts = ts
    out: list[Packet] = []
    for i in range(0, len(pkts), batch):
        out += inst.run(pkts[i:i + batch])
    inst.finish()
    return ([(p.index, bytes(p.data)) for p in out], [a.as_json() for a in inst.ctx.alerts], inst.state(),
            inst.dropped)


def assert_batching_invariant(nf_cls, config: dict, frames: list[bytes], timestamps: list[int] | None = None):
    whole = batching_outputs(nf_cls, config, frames, len(frames), timestamps)
    for size in (1, 7):
        assert batching_outputs(nf_cls, config, frames, size, timestamps) == whole
    return whole


# -- NAT ----------------------------------------------------------------------------

EXT = "198.51.100.1"
NAT_CFG = {"external_ip": EXT, "internal": ["10.0.0.0/8"], "port_range": [5000, 5009]}
H1, H2 = "10.0.0.5", "10.0.0.6"
R1, R2 = "203.0.113.9", "203.0.113.10"


def nat(**over) -> Instance:
    return make(NAT, {**NAT_CFG, **over})


def pool(inst: Instance) -> list[int]:
    return list(inst.objects["ports"].get())


def test_nat_outbound_syn_gets_external_ip_and_first_port():
    inst = nat()
    frame = tcp(H1, R1, 40000, 80, SYN)
    out = run_one(inst, frame)
    p = assert_valid(out)
    assert (p.src, p.sport, p.dst, p.dport) == (ip(EXT), 5000, ip(R1), 80)
    assert len(p.data) == len(frame)
    assert bytes(p.data[54:]) == frame[54:]
    assert pool(inst)[0] == 5001 and len(pool(inst)) == 9
    assert inst.state()["mapping"] == {flow_key(H1, R1, 40000, 80): (5000, 0)}


def test_nat_reply_and_both_directions_use_one_port():
    inst = nat()
    feed = Feeder(inst)
    syn = assert_valid(feed(tcp(H1, R1, 40000, 80, SYN)))
    synack = assert_valid(feed(tcp(R1, H1, 80, 40000, SYN_ACK, seq=7, ack=1001)))
    ack = assert_valid(feed(tcp(H1, R1, 40000, 80, ACK, seq=1001, ack=8)))
    data = assert_valid(feed(tcp(H1, R1, 40000, 80, PSH_ACK, b"GET / HTTP/1.0\r\n\r\n", seq=1001, ack=8)))
    resp = assert_valid(feed(tcp(R1, H1, 80, 40000, PSH_ACK, b"HTTP/1.0 200 OK\r\n\r\nodd", seq=8, ack=1019)))
    assert (synack.src, synack.sport, synack.dst, synack.dport) == (ip(R1), 80, ip(EXT), 5000)
    assert (resp.src, resp.sport, resp.dst, resp.dport) == (ip(R1), 80, ip(EXT), 5000)
    for p in (syn, ack, data):
        assert (p.src, p.sport, p.dst, p.dport) == (ip(EXT), 5000, ip(R1), 80)
    assert bytes(resp.payload) == b"HTTP/1.0 200 OK\r\n\r\nodd"
    assert len(pool(inst)) == 9             # one port for the whole connection


def test_nat_two_connections_get_different_ports():
    inst = nat()
    feed = Feeder(inst)
    a = feed(tcp(H1, R1, 40000, 80, SYN))
    b = feed(tcp(H2, R1, 40000, 80, SYN))
    c = feed(tcp(H1, R1, 40001, 80, SYN))
    assert [a.sport, b.sport, c.sport] == [5000, 5001, 5002]
    rb = feed(tcp(R1, H2, 80, 40000, SYN_ACK))
    ra = feed(tcp(R1, H1, 80, 40000, SYN_ACK))
    rc = feed(tcp(R1, H1, 80, 40001, SYN_ACK))
    assert [ra.dport, rb.dport, rc.dport] == [5000, 5001, 5002]
    assert {ra.dst, rb.dst, rc.dst} == {ip(EXT)}


@pytest.mark.parametrize("closer", ["rst-out", "rst-in", "fin-out-first", "fin-in-first"])
def test_nat_closed_port_returns_to_pool_tail_and_new_syn_gets_new_port(closer):
    inst = nat()
    feed = Feeder(inst)
    assert feed(tcp(H1, R1, 40000, 80, SYN)).sport == 5000
    feed(tcp(R1, H1, 80, 40000, SYN_ACK))
    assert feed(tcp(H2, R1, 40000, 80, SYN)).sport == 5001
    assert pool(inst) == list(range(5002, 5010))
    if closer == "rst-out":
        assert feed(tcp(H1, R1, 40000, 80, RST)).sport == 5000
    elif closer == "rst-in":
        assert feed(tcp(R1, H1, 80, 40000, RST_ACK)).dport == 5000
    else:
        out_first = closer == "fin-out-first"
        first = tcp(H1, R1, 40000, 80, FIN_ACK) if out_first else tcp(R1, H1, 80, 40000, FIN_ACK)
        second = tcp(R1, H1, 80, 40000, FIN_ACK) if out_first else tcp(H1, R1, 40000, 80, FIN_ACK)
        feed(first)
        feed(first)                          # a retransmitted FIN is still one side
        assert pool(inst) == list(range(5002, 5010))     # half-closed: port still in use
        p = feed(second)
        assert 5000 in (p.sport, p.dport)
        last = feed(tcp(H1, R1, 40000, 80, ACK) if out_first else tcp(R1, H1, 80, 40000, ACK))
        assert 5000 in (last.sport, last.dport)           # final ACK of the same connection
    assert pool(inst) == [*range(5002, 5010), 5000]
    assert inst.state()["ports"] == {None: [*range(5002, 5010), 5000]}
    # the same 5-tuple opened again: a fresh port from the head of the pool
    again = feed(tcp(H1, R1, 40000, 80, SYN))
    assert again.sport == 5002
    assert feed(tcp(R1, H1, 80, 40000, SYN_ACK)).dport == 5002
    assert pool(inst) == [*range(5003, 5010), 5000]
    key = flow_key(H1, R1, 40000, 80)
    assert inst.state()["mapping"][key] == (5002, 0)
    # an RST closes the new connection (5002 goes back); a second RST pushes nothing
    feed(tcp(H1, R1, 40000, 80, RST))
    feed(tcp(R1, H1, 80, 40000, RST))
    assert pool(inst) == [*range(5003, 5010), 5000, 5002]


def test_nat_pool_order_is_fifo_over_many_connections():
    inst = nat(port_range=[7000, 7002])
    feed = Feeder(inst)
    ports = []
    for i in range(7):
        ports.append(feed(tcp(H1, R1, 41000 + i, 80, SYN)).sport)
        feed(tcp(H1, R1, 41000 + i, 80, RST))
    assert ports == [7000, 7001, 7002, 7000, 7001, 7002, 7000]


@pytest.mark.parametrize("src,dst", [(H1, H2), (R1, R2)])
def test_nat_internal_to_internal_and_external_to_external_pass_unchanged(src, dst):
    inst = nat(unsolicited="drop")
    frames = [tcp(src, dst, 40000, 80, SYN), tcp(dst, src, 80, 40000, SYN_ACK),
              udp(src, dst, 5353, 53, b"q"), tcp(src, dst, 40000, 80, RST)]
    for i, f in enumerate(frames):
        out = run_one(inst, f, i)
        assert out is not None and bytes(out.data) == f
    assert inst.state()["mapping"] == {}
    assert pool(inst) == list(range(5000, 5010))


def test_nat_unsolicited_inbound_drop():
    inst = nat(unsolicited="drop")
    assert run_one(inst, tcp(R1, H1, 80, 40000, SYN)) is None
    assert run_one(inst, udp(R1, H1, 53, 5353, b"x"), 1) is None
    assert inst.dropped == 2
    assert inst.state()["mapping"] == {}
    assert pool(inst) == list(range(5000, 5010))
    assert inst.state()["packets"] == {None: 2}


def test_nat_unsolicited_inbound_pass_unchanged():
    inst = nat(unsolicited="pass")
    frame = tcp(R1, H1, 80, 40000, SYN)
    out = run_one(inst, frame)
    assert out is not None and bytes(out.data) == frame
    assert inst.dropped == 0
    # The connection opened from outside is recorded as untranslated (port 0) ...
    assert list(inst.state()["mapping"].values()) == [(0, 0)]
    # ... so the internal host's answer passes unchanged too and takes no port.
    answer = tcp(H1, R1, 40000, 80, SYN_ACK)
    out = run_one(inst, answer, 1)
    assert out is not None and bytes(out.data) == answer
    assert pool(inst) == list(range(5000, 5010))


def test_nat_pool_exhaustion_drops_third_connection_with_alert():
    inst = nat(port_range=[6000, 6001])
    feed = Feeder(inst)
    assert feed(tcp(H1, R1, 40000, 80, SYN)).sport == 6000
    assert feed(tcp(H1, R1, 40001, 80, SYN)).sport == 6001
    assert feed(tcp("10.0.0.7", R1, 40002, 80, SYN)) is None
    assert inst.dropped == 1
    [alert] = inst.ctx.alerts
    assert (alert.kind, alert.host, alert.packet_index, alert.clock) == ("nat-ports-exhausted", "10.0.0.7", 2, 2)
    assert pool(inst) == []
    # freeing a port lets the retried SYN through on that port
    feed(tcp(R1, H1, 80, 40000, RST_ACK))
    assert feed(tcp("10.0.0.7", R1, 40002, 80, SYN)).sport == 6000
    assert len(inst.ctx.alerts) == 1


def test_nat_counters_count_every_packet():
    inst = nat(unsolicited="drop", port_range=[6000, 6000])
    frames = [
        tcp(H1, R1, 40000, 80, SYN),                # translated
        tcp(R1, H1, 80, 40000, SYN_ACK),            # translated
        udp(H1, R1, 5353, 53, b"query"),            # exhausted: dropped, still counted
        icmp_echo(H1, R1),                          # not TCP/UDP: passes
        tcp(R2, H2, 80, 1234, SYN),                 # unsolicited: dropped
        tcp(H1, H2, 1, 2, ACK),                     # internal: passes
        udp(R1, R2, 1, 2),                          # external: passes
    ]
    out = inst.run(packets(frames))
    assert len(out) == 5 and inst.dropped == 2
    st = inst.state()
    assert st["packets"] == {None: 7}
    assert st["tcp_packets"] == {None: 4}
    assert inst.objects["packets"].get() == 7 and inst.objects["tcp_packets"].get() == 4


def test_nat_udp_translation_and_checksums():
    inst = nat()
    feed = Feeder(inst)
    q = assert_valid(feed(udp(H1, R1, 5353, 53, b"odd-length-query")))
    r = assert_valid(feed(udp(R1, H1, 53, 5353, b"answer")))
    assert (q.src, q.sport) == (ip(EXT), 5000)
    assert (r.dst, r.dport) == (ip(EXT), 5000)
    # UDP/IPv4 without checksum keeps checksum 0 (not "fixed" into a wrong one)
    z = feed(udp(H1, R1, 5354, 53, b"zz", with_checksum=False))
    zp = reparse(z)
    assert zp.sport == 5001 and ipv4_header_ok(zp)
    assert bytes(zp.data[40:42]) == b"\0\0"


def test_nat_checksums_verify_for_many_rewrites():
    inst = nat(port_range=[1024, 65535])
    feed = Feeder(inst)
    for i in range(40):
        host = f"10.{i}.{255 - i}.{i * 3 % 256}"
        remote = f"203.0.{i}.{(i * 7) % 256}"
        payload = bytes(range(i))
        a = assert_valid(feed(tcp(host, remote, 1024 + i * 997 % 60000, 443, PSH_ACK, payload, seq=i * 12345)))
        b = assert_valid(feed(tcp(remote, host, 443, 1024 + i * 997 % 60000, PSH_ACK, payload[::-1])))
        assert a.sport == b.dport == 1024 + i
        assert a.src == b.dst == ip(EXT)


def test_nat_non_ip_traffic_untouched_but_counted():
    inst = nat()
    frame = arp()
    out = run_one(inst, frame)
    assert out is not None and bytes(out.data) == frame
    assert inst.state()["packets"] == {None: 1}


def test_nat_batching_invariant():
    frames = []
    for i in range(12):
        h = H1 if i % 2 else H2
        frames += [tcp(h, R1, 40000 + i, 80, SYN), tcp(R1, h, 80, 40000 + i, SYN_ACK),
                   tcp(h, R1, 40000 + i, 80, PSH_ACK, b"x" * i)]
        if i % 3 == 0:
            frames += [tcp(h, R1, 40000 + i, 80, FIN_ACK), tcp(R1, h, 80, 40000 + i, FIN_ACK)]
        if i % 4 == 1:
            frames += [tcp(R1, h, 80, 40000 + i, RST)]
    frames += [tcp(R2, H1, 1, 2, SYN), udp(H1, R2, 7, 7, b"u")]
    out, alerts, state, dropped = assert_batching_invariant(NAT, {**NAT_CFG, "port_range": [5000, 5004],
                                                                  "unsolicited": "drop"}, frames)
    assert alerts and all(a["kind"] == "nat-ports-exhausted" for a in alerts)
    assert dropped > 0 and len(out) + dropped == len(frames)


# -- Portscan (TRW) -------------------------------------------------------------------

TRW_CFG = {"theta0": 0.8, "theta1": 0.2, "eta0": 0.01, "eta1": 99.0, "timeout_s": 5.0}
SCANNER = "10.0.0.66"
SEC = 1_000_000_000


def target(i: int) -> str:
    return f"10.0.1.{i + 1}"


def portscan(**over) -> Instance:
    return make(PortScanDetector, {**TRW_CFG, **over})


def lam(inst: Instance, host: str = SCANNER) -> float:
    """Lambda from the host's record (successes, failures, verdict)."""
    s, f, _ = inst.objects["likelihood"].get(ip(host))
    return (0.2 / 0.8) ** s * (0.8 / 0.2) ** f


def test_portscan_partitions_on_host_pair():
    # Both directions of a connection, its pending record and the pair's
    # first-contact record live at one instance; the per-host likelihood is
    # shared and updated by one atomic value op.
    scope = PortScanDetector.partition_scope()
    assert scope is HOST_PAIR and scope is not INITIATOR
    a, b = tcp(H1, R1, 40000, 80, SYN), tcp(R1, H1, 80, 40000, SYN_ACK)
    c = tcp(H1, R1, 40001, 443, ACK)
    keys = {scope.partition(Packet(f)) for f in (a, b, c)}
    assert len(keys) == 1


def test_portscan_flagged_after_exactly_four_failures():
    inst = portscan()
    feed = Feeder(inst)
    for i in range(3):
        feed(tcp(SCANNER, target(i), 30000 + i, 80, SYN))
        feed(tcp(target(i), SCANNER, 80, 30000 + i, RST_ACK))
    assert inst.ctx.alerts == []
    assert lam(inst) == pytest.approx(64.0)
    feed(tcp(SCANNER, target(3), 30003, 80, SYN))
    assert inst.ctx.alerts == []
    rst_index = feed.index
    feed(tcp(target(3), SCANNER, 80, 30003, RST_ACK))
    [alert] = inst.ctx.alerts
    assert alert.kind == "portscan" and alert.host == SCANNER
    assert alert.clock == rst_index and alert.packet_index == rst_index
    assert alert.detail["likelihood"] == pytest.approx(256.0)
    assert lam(inst) == pytest.approx(256.0)
    assert inst.state()["pending"] == {}


def test_portscan_repeated_failures_to_one_destination_count_once():
    inst = portscan()
    feed = Feeder(inst)
    for i in range(6):                                  # same destination, different ports
        feed(tcp(SCANNER, target(0), 30000 + i, 22 + i, SYN))
        feed(tcp(target(0), SCANNER, 22 + i, 30000 + i, RST_ACK))
    assert lam(inst) == pytest.approx(4.0)
    assert inst.ctx.alerts == []
    for i in range(1, 4):
        feed(tcp(SCANNER, target(i), 31000 + i, 80, SYN))
        feed(tcp(target(i), SCANNER, 80, 31000 + i, RST_ACK))
    assert [a.kind for a in inst.ctx.alerts] == ["portscan"]
    assert inst.ctx.alerts[0].clock == feed.index - 1


def test_portscan_successes_clear_host_for_good():
    inst = portscan()
    feed = Feeder(inst)
    for i in range(4):
        feed(tcp(SCANNER, target(i), 30000 + i, 80, SYN))
        feed(tcp(target(i), SCANNER, 80, 30000 + i, SYN_ACK))
    assert lam(inst) == pytest.approx(0.25 ** 4)
    for i in range(4, 20):
        assert feed(tcp(SCANNER, target(i), 30000 + i, 80, SYN)) is not None
        feed(tcp(target(i), SCANNER, 80, 30000 + i, RST_ACK))
    assert inst.ctx.alerts == []
    assert lam(inst) == pytest.approx(0.25 ** 4)
    assert inst.dropped == 0


def test_portscan_three_successes_do_not_clear():
    inst = portscan()
    feed = Feeder(inst)
    for i in range(3):
        feed(tcp(SCANNER, target(i), 30000 + i, 80, SYN))
        feed(tcp(target(i), SCANNER, 80, 30000 + i, SYN_ACK))
    assert lam(inst) == pytest.approx(1 / 64)           # > eta0: still undecided
    for i in range(3, 9):
        feed(tcp(SCANNER, target(i), 30000 + i, 80, SYN))
        feed(tcp(target(i), SCANNER, 80, 30000 + i, RST_ACK))
    assert lam(inst) == pytest.approx(4 ** 6 / 64) and inst.ctx.alerts == []
    feed(tcp(SCANNER, target(9), 30009, 80, SYN))
    feed(tcp(target(9), SCANNER, 80, 30009, RST_ACK))   # 7th failure: 4**7 / 64 = 256
    [alert] = inst.ctx.alerts
    assert alert.clock == feed.index - 1
    assert lam(inst) == pytest.approx(256.0)


def test_portscan_unanswered_syns_fail_by_timeout():
    inst = portscan()
    syn_ts = [0, 1 * SEC, 2 * SEC, 3 * SEC]
    syns = [Packet(tcp(SCANNER, target(i), 30000 + i, 80, SYN), syn_ts[i], i) for i in range(4)]
    assert len(inst.run(syns)) == 4
    assert inst.ctx.alerts == []
    # just before the 4th deadline: three timeouts have fired
    other = "10.0.0.9"
    inst.run([Packet(tcp(other, target(9), 1, 80, SYN), 8 * SEC - 1, 4)])
    assert lam(inst) == pytest.approx(64.0)
    assert inst.ctx.alerts == []
    # a SYN-ACK after the timeout is not a success any more
    inst.run([Packet(tcp(target(0), SCANNER, 80, 30000, SYN_ACK), 8 * SEC - 1, 5)])
    assert lam(inst) == pytest.approx(64.0)
    # at the 4th deadline the timer fires before the packet is processed
    inst.run([Packet(tcp(other, target(8), 2, 80, ACK), 8 * SEC, 6)])
    [alert] = inst.ctx.alerts
    assert (alert.kind, alert.host) == ("portscan", SCANNER)
    assert alert.clock == 3 and alert.packet_index == 3         # the SYN that armed the timer
    assert inst.state()["pending"] == {flow_key(other, target(9), 1, 80): (8 * SEC - 1, ip(other))}


def flow_key(src: str, dst: str, sport: int, dport: int) -> bytes:
    a, b = ip(src) + sport.to_bytes(2, "big"), ip(dst) + dport.to_bytes(2, "big")
    return (a + b if a <= b else b + a) + b"\x06"


def test_portscan_answer_before_timeout_is_not_a_failure():
    inst = portscan()
    inst.run([Packet(tcp(SCANNER, target(0), 30000, 80, SYN), 0, 0),
              Packet(tcp(target(0), SCANNER, 80, 30000, SYN_ACK), 5 * SEC - 1, 1)])
    inst.finish()
    assert lam(inst) == pytest.approx(0.25)


def test_portscan_unanswered_syns_fail_at_finish():
    inst = portscan()
    inst.run([Packet(tcp(SCANNER, target(i), 30000 + i, 80, SYN), i, i) for i in range(4)])
    assert inst.ctx.alerts == [] and lam(inst) == 1.0
    inst.finish()
    [alert] = inst.ctx.alerts
    assert (alert.kind, alert.host, alert.clock) == ("portscan", SCANNER, 3)
    assert lam(inst) == pytest.approx(256.0)
    assert inst.state()["pending"] == {}


def test_portscan_flagged_host_is_blocked_others_pass():
    inst = portscan()
    feed = Feeder(inst)
    for i in range(4):
        feed(tcp(SCANNER, target(i), 30000 + i, 80, SYN))
        feed(tcp(target(i), SCANNER, 80, 30000 + i, RST_ACK))
    assert len(inst.ctx.alerts) == 1 and inst.dropped == 0
    assert feed(tcp(SCANNER, target(10), 30010, 80, SYN)) is None
    assert feed(tcp(SCANNER, target(0), 30000, 80, ACK)) is None
    assert feed(udp(SCANNER, target(1), 53, 53, b"x")) is None
    assert feed(tcp("10.0.0.9", target(0), 1234, 80, SYN)) is not None
    assert feed(tcp(target(0), "10.0.0.9", 80, 1234, SYN_ACK)) is not None
    assert feed(tcp(target(5), SCANNER, 80, 30005, ACK)) is not None     # traffic *to* it passes
    assert inst.dropped == 3
    assert len(inst.ctx.alerts) == 1
    assert lam(inst, "10.0.0.9") == pytest.approx(0.25)


def test_portscan_no_block_option_passes_everything():
    inst = portscan(block=False)
    feed = Feeder(inst)
    for i in range(5):
        feed(tcp(SCANNER, target(i), 30000 + i, 80, SYN))
        feed(tcp(target(i), SCANNER, 80, 30000 + i, RST_ACK))
    assert len(inst.ctx.alerts) == 1
    assert feed(tcp(SCANNER, target(10), 30010, 80, SYN)) is not None
    assert inst.dropped == 0


def test_portscan_batching_invariant():
    frames, ts = [], []
    t = 0
    for i in range(12):
        host = f"10.0.0.{60 + i % 3}"
        frames.append(tcp(host, target(i), 30000 + i, 80, SYN))
        ts.append(t)
        t += SEC // 2
        if i % 3 == 1:
            frames.append(tcp(target(i), host, 80, 30000 + i, RST_ACK))
        elif i % 3 == 2:
            frames.append(tcp(target(i), host, 80, 30000 + i, SYN_ACK))
        else:
            frames.append(tcp(host, target(i), 30000 + i, 80, ACK))     # unanswered: times out
        ts.append(t)
        t += 2 * SEC
    # both flagged hosts send once more (blocked); .60's last timeout fired at t = 27.5 s
    frames += [tcp("10.0.0.60", target(50), 1, 80, SYN), tcp("10.0.0.61", target(51), 1, 80, SYN)]
    ts += [t, t + 1]
    out, alerts, state, dropped = assert_batching_invariant(PortScanDetector, TRW_CFG, frames, ts)
    # .61: 4th RST (i = 10, index 21); .60: 4th timeout, armed by the SYN of i = 9 (index 18)
    assert [(a["host"], a["clock"]) for a in alerts] == [("10.0.0.61", 21), ("10.0.0.60", 18)]
    assert dropped == 2 and len(out) == len(frames) - 2


# -- Trojan -------------------------------------------------------------------------

HOST = "10.0.0.5"


def ssh(host: str = HOST) -> bytes:
    return tcp(host, "10.9.9.1", 50000, 22, SYN)


def ftp(host: str = HOST, name: bytes = b"x.exe") -> bytes:
    return tcp(host, "10.9.9.2", 50001, 21, PSH_ACK, b"RETR " + name + b"\r\n")


def irc(host: str = HOST) -> bytes:
    return tcp(host, "10.9.9.3", 50002, 6667, SYN)


def irc_nick(host: str = HOST) -> bytes:
    return tcp(host, "10.9.9.3", 50003, 6667, PSH_ACK, b"NICK bot\r\n")


def trojan() -> Instance:
    return make(TrojanDetector, {})


def test_trojan_in_order_raises_one_alert():
    inst = trojan()
    out = inst.run(packets([ssh(), ftp(), irc(), irc(), irc_nick()]))
    assert len(out) == 5                                  # off-path detector: never drops
    [alert] = inst.ctx.alerts
    assert (alert.kind, alert.host, alert.clock, alert.packet_index) == ("trojan", HOST, 2, 2)


def test_trojan_nick_payload_counts_as_irc():
    inst = trojan()
    inst.run(packets([ssh(), ftp(name=b"page.HTML"), irc_nick()]))
    assert [(a.kind, a.host, a.clock) for a in inst.ctx.alerts] == [("trojan", HOST, 2)]


@pytest.mark.parametrize("order", [o for o in itertools.permutations("SFI") if o != ("S", "F", "I")])
def test_trojan_other_orders_raise_nothing(order):
    step = {"S": ssh(), "F": ftp(), "I": irc()}
    inst = trojan()
    inst.run(packets([step[s] for s in order]))
    assert inst.ctx.alerts == []


def test_trojan_ftp_of_other_file_types_does_not_count():
    inst = trojan()
    inst.run(packets([ssh(), ftp(name=b"notes.txt"), ftp(name=b"x.exe.txt"), irc(),
                      tcp(HOST, "10.9.9.2", 50001, 21, PSH_ACK, b"STOR y.exe\r\n"), irc()]))
    assert inst.ctx.alerts == []


def test_trojan_steps_from_different_hosts_do_not_combine():
    inst = trojan()
    inst.run(packets([ssh("10.0.0.1"), ftp("10.0.0.2"), irc("10.0.0.3"),
                      ssh("10.0.0.4"), ftp("10.0.0.4"), irc("10.0.0.1")]))
    assert inst.ctx.alerts == []
    inst.run(packets([irc("10.0.0.4")], start_index=6))
    assert [(a.host, a.clock) for a in inst.ctx.alerts] == [("10.0.0.4", 6)]


@pytest.mark.parametrize("arrival", list(itertools.permutations(range(3))))
@pytest.mark.parametrize("clocks", list(itertools.permutations((100, 200, 300))))
def test_trojan_uses_packet_clock_not_arrival_order(arrival, clocks):
    steps = packets([ssh(), ftp(), irc()])
    for p, c in zip(steps, clocks, strict=True):
        p.clock = c
    inst = trojan()
    inst.run([steps[i] for i in arrival])
    ssh_c, ftp_c, irc_c = clocks
    if ssh_c < ftp_c < irc_c:
        [alert] = inst.ctx.alerts
        assert (alert.kind, alert.host) == ("trojan", HOST)
        assert alert.clock == irc_c
        assert alert.detail.get("clock", irc_c) == irc_c
    else:
        assert inst.ctx.alerts == []


def test_trojan_batching_invariant():
    frames = [ssh("10.0.0.1"), ftp("10.0.0.2"), ssh("10.0.0.2"), ftp("10.0.0.1"),
              irc("10.0.0.3"), irc_nick("10.0.0.1"), ftp("10.0.0.2"), irc("10.0.0.2"), irc("10.0.0.1")]
    out, alerts, state, dropped = assert_batching_invariant(TrojanDetector, {}, frames)
    assert [(a["host"], a["clock"]) for a in alerts] == [("10.0.0.1", 5), ("10.0.0.2", 7)]
    assert dropped == 0 and len(out) == len(frames)


# -- Load balancer --------------------------------------------------------------------

VIP = "192.0.2.10"
BACKENDS = ["10.1.0.1", "10.1.0.2", "10.1.0.3"]
LB_CFG = {"vip": VIP, "backends": BACKENDS}
CLIENT = "198.51.100.7"


def lb(**over) -> Instance:
    return make(LoadBalancer, {**LB_CFG, **over})


def test_lb_least_loaded_assignment_and_reuse_after_close():
    inst = lb()
    feed = Feeder(inst)
    dsts = [assert_valid(feed(tcp(CLIENT, VIP, 40000 + i, 80, SYN))).dst for i in range(3)]
    assert dsts == [ip(b) for b in BACKENDS]
    assert inst.state()["active"] == {0: 1, 1: 1, 2: 1}
    # close the connection on backend 1 with both FINs
    feed(tcp(CLIENT, VIP, 40001, 80, FIN_ACK))
    assert inst.state()["active"] == {0: 1, 1: 1, 2: 1}
    feed(tcp(VIP, CLIENT, 80, 40001, FIN_ACK))
    assert inst.objects["active"].get(1) == 0
    assert feed(tcp(CLIENT, VIP, 40003, 80, SYN)).dst == ip(BACKENDS[1])
    # all equal again: ties go to the first listed backend
    assert feed(tcp(CLIENT, VIP, 40004, 80, SYN)).dst == ip(BACKENDS[0])
    # an RST closes too; a mid-connection packet keeps its backend
    feed(tcp(VIP, CLIENT, 80, 40002, RST))
    assert feed(tcp(CLIENT, VIP, 40000, 80, ACK)).dst == ip(BACKENDS[0])
    assert [inst.objects["active"].get(i) for i in range(3)] == [2, 1, 0]
    assert feed(tcp(CLIENT, VIP, 40005, 80, SYN)).dst == ip(BACKENDS[2])


def test_lb_reply_leaves_with_backend_source():
    inst = lb()
    feed = Feeder(inst)
    feed(tcp(CLIENT, VIP, 40000, 80, SYN))
    feed(tcp(CLIENT, VIP, 40001, 80, SYN))
    r = assert_valid(feed(tcp(VIP, CLIENT, 80, 40001, SYN_ACK)))
    assert (r.src, r.sport, r.dst, r.dport) == (ip(BACKENDS[1]), 80, ip(CLIENT), 40001)
    d = assert_valid(feed(tcp(VIP, CLIENT, 80, 40000, PSH_ACK, b"hello!!")))
    assert (d.src, d.dst) == (ip(BACKENDS[0]), ip(CLIENT))
    q = assert_valid(feed(tcp(CLIENT, VIP, 40001, 80, PSH_ACK, b"GET")))
    assert (q.src, q.sport, q.dst, q.dport) == (ip(CLIENT), 40001, ip(BACKENDS[1]), 80)


def test_lb_byte_counter_counts_both_directions():
    inst = lb()
    feed = Feeder(inst)
    frames0 = [tcp(CLIENT, VIP, 40000, 80, SYN), tcp(VIP, CLIENT, 80, 40000, SYN_ACK),
               tcp(CLIENT, VIP, 40000, 80, PSH_ACK, b"x" * 100), tcp(VIP, CLIENT, 80, 40000, PSH_ACK, b"y" * 333)]
    frames1 = [tcp(CLIENT, VIP, 40001, 80, SYN), tcp(VIP, CLIENT, 80, 40001, SYN_ACK, b"z")]
    for f in [frames0[0], frames1[0], *frames0[1:], frames1[1]]:
        feed(f)
    assert inst.state()["bytes"] == {0: sum(map(len, frames0)), 1: sum(map(len, frames1))}
    # traffic the LB doesn't balance isn't counted
    feed(tcp(CLIENT, "192.0.2.11", 1, 80, SYN))
    feed(tcp(VIP, CLIENT, 80, 49999, SYN_ACK))                     # reply of an unknown connection
    assert inst.state()["bytes"] == {0: sum(map(len, frames0)), 1: sum(map(len, frames1))}


def test_lb_non_vip_traffic_unchanged():
    inst = lb()
    frames = [tcp(CLIENT, "192.0.2.11", 1, 80, SYN), tcp(BACKENDS[0], CLIENT, 80, 1, SYN_ACK),
              udp(CLIENT, "8.8.8.8", 5353, 53, b"q"), icmp_echo(CLIENT, "192.0.2.11"),
              tcp(VIP, CLIENT, 80, 49999, SYN_ACK)]
    out = inst.run(packets(frames))
    assert [bytes(p.data) for p in out] == frames
    assert inst.state() == {"active": {}, "bytes": {}, "mapping": {}, "pool": {}}


def test_lb_port_filter():
    inst = lb(port=80)
    frames = [tcp(CLIENT, VIP, 40000, 443, SYN), tcp(VIP, CLIENT, 443, 40000, SYN_ACK),
              udp(CLIENT, VIP, 40000, 53, b"q")]
    out = inst.run(packets(frames))
    assert [bytes(p.data) for p in out] == frames
    assert inst.state()["mapping"] == {}
    p = run_one(inst, tcp(CLIENT, VIP, 40001, 80, SYN), 3)
    assert p.dst == ip(BACKENDS[0])
    r = run_one(inst, tcp(VIP, CLIENT, 80, 40001, SYN_ACK), 4)
    assert r.src == ip(BACKENDS[0])
    assert inst.state()["active"] == {0: 1}


def test_lb_udp_balanced_with_checksums():
    inst = lb()
    a = assert_valid(run_one(inst, udp(CLIENT, VIP, 5000, 53, b"query")))
    b = assert_valid(run_one(inst, udp(CLIENT, VIP, 5001, 53, b"query2"), 1))
    c = assert_valid(run_one(inst, udp(VIP, CLIENT, 53, 5001, b"resp"), 2))
    assert (a.dst, b.dst, c.src) == (ip(BACKENDS[0]), ip(BACKENDS[1]), ip(BACKENDS[1]))


def test_lb_batching_invariant():
    frames = []
    for i in range(10):
        frames += [tcp(CLIENT, VIP, 40000 + i, 80, SYN), tcp(VIP, CLIENT, 80, 40000 + i, SYN_ACK),
                   tcp(CLIENT, VIP, 40000 + i, 80, PSH_ACK, b"q" * i)]
        if i % 2:
            frames += [tcp(CLIENT, VIP, 40000 + i, 80, FIN_ACK), tcp(VIP, CLIENT, 80, 40000 + i, FIN_ACK)]
    out, alerts, state, dropped = assert_batching_invariant(LoadBalancer, LB_CFG, frames)
    assert alerts == [] and dropped == 0
    assert sum(state["active"].values()) == 5
    assert sum(state["bytes"].values()) == sum(map(len, frames))
