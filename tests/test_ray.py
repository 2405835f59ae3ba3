"""``--runtime ray``: the proc runtime's workers in Ray actors on a 2-node local cluster.

The cluster (``ray.cluster_utils.Cluster``, both nodes on 127.0.0.1, one module
fixture, always shut down) has a custom resource per node, ``node-a`` (the head,
where the coordinator connects) and ``node-b``.  A run must give the sim's state
digest, packet counts and alerts with its NF instances spread over both nodes,
and leave no actor and no process behind; an actor killed through Ray is
detected from Ray (its ObjectRef) and failed over; removing the node that hosts
an NF instance fails that instance over to the surviving node.
"""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

import pytest

from chc.capture import open_capture
from chc.cli import main
from chc.runtime import procray
from chc.runtime.proc import Kill
from chc.runtime.procworker import Plan
from chc.runtime.sim import SimRuntime
from chc.spec import load_spec
from procpace import held

ROOT = Path(__file__).resolve().parent.parent

# one pytest-xdist worker runs them all: one Ray cluster (a module fixture), not one a worker
pytestmark = pytest.mark.xdist_group("ray")
LAN = ROOT / "traces/pathspider/lan-2012.pcap.gz"
SCAN = ROOT / "traces/scans/nmap-syn-scan.pcap"
PAPER = ROOT / "examples/paper_chain.yaml"
MODEL = "EO+C+NA"
needs_ray = pytest.mark.skipif(not procray.available(),
                               reason="ray is not installed (pip install -e '.[ray]'): --runtime ray untested")


def _records(path: Path, n: int | None = None) -> list[tuple[int, bytes]]:
    with open_capture(str(path)) as reader:
        return list(itertools.islice(reader, n))


def test_without_ray_runtime_ray_is_one_line_exit_2(monkeypatch, capsys):
    monkeypatch.setattr(procray, "ray", None)
    rc = main(["run", "--runtime", "ray", str(PAPER), str(LAN), "-c", "10", "-q", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and ".[ray]" in err


@needs_ray
def test_a_ray_address_with_nothing_there_is_one_line_at_once(capsys):
    import socket
    with socket.socket() as s:              # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    rc = main(["run", "--runtime", "ray", "--ray-address", f"127.0.0.1:{port}", str(PAPER), str(LAN), "-c", "10",
               "-q", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err.count("\n") == 0 and "cannot connect to Ray at" in err and "refused" in err
    assert time.monotonic() - t0 < 30       # (ray.init alone retried for over five minutes)


def test_placement_rings_instances_and_sends_failovers_to_the_next_node():
    nodes = {"n1": {"Resources": {"node-b": 1, "edge": 1}}, "n2": {"Resources": {"edge": 1}},
             "home": {"Resources": {"node-a": 1}}}
    ring, starts = procray.placement(["nat.0", "nat.1", "lb.0", "lb.1", "pass.0", "pass.1"], nodes, "home",
                                     {"lb.1": "node-a", "pass.0": "edge", "pass.1": "edge"})
    assert ring == ["n1", "n2", "home"]                     # the coordinator's node last
    assert starts == {"nat.0": 0, "nat.1": 1, "lb.0": 2, "lb.1": 2,
                      "pass.0": 0, "pass.1": 1}             # pinned to one resource: round its nodes
    plan = Plan("", load_spec(str(PAPER)), MODEL, 256, (), host="10.0.0.9", base_port=30000,
                ring=("10.0.0.1", "10.0.0.2", "10.0.0.9"), starts={"nat.0": 0})
    assert plan.address("nat.0").startswith("tcp://10.0.0.1:")
    assert plan.address("nat.0#1").startswith("tcp://10.0.0.2:")         # a failover: the next node
    assert plan.address("nat.0#3").startswith("tcp://10.0.0.1:")         # round the ring
    assert plan.address("@root.0").startswith("tcp://10.0.0.9:")         # the coordinator's node
    with pytest.raises(procray.ProcFailure, match="no alive node has the resource 'node-x'"):
        procray.placement(["nat.0"], nodes, "home", {"nat.0": "node-x"})


def test_an_instance_placed_on_a_gone_node_says_whether_it_went_round_the_ring(monkeypatch):
    """A failover goes round the ring past gone nodes (ProcRuntime._failure), so one that
    meets a gone node has found no alive one; a scale-out's instance (generation 0) is
    placed before the run and goes nowhere else: it said "and so is every other node of
    the ring" too, which was not so (node a was alive)."""
    monkeypatch.setattr(procray, "_alive", lambda: {"node-a": {}})
    ctx = procray.RayContext("node-a", ["node-b", "node-a"], {"nat.0": 0, "nat.1": 0})
    try:
        with pytest.raises(procray.ProcFailure) as exc:
            ctx.Process(print, (), "chc nat.1")
        assert str(exc.value) == ("ray runtime: nat.1 is placed on node node-b, which is gone (instances are "
                                  "placed on the nodes alive at the start, those a scale-out adds too; only a "
                                  "failover goes on round the ring)")
        with pytest.raises(procray.ProcFailure, match="which is gone, and so is every other node of the ring"):
            ctx.Process(print, (), "chc nat.0#2")
        assert ctx.placeable("nat.0#1") and not ctx.placeable("nat.0#2")
    finally:
        ctx.watcher.close()


def test_tcp_mailboxes_get_distinct_ports_per_generation():
    plan = Plan("", load_spec(str(PAPER)), MODEL, 256, (), host="127.0.0.1", base_port=30000)
    names = plan.mailboxes()
    addresses = {plan.address(n) for n in names} | {plan.address(n + "#1") for n in names if not n.startswith("@")}
    assert len(addresses) == len(names) + 4 and all(a.startswith("tcp://127.0.0.1:") for a in addresses)
    assert plan.address("nat.0#1") == f"tcp://127.0.0.1:{30000 + names.index('nat.0') + len(names)}"


@pytest.fixture(scope="module")
def cluster():
    if not procray.available():
        pytest.skip("ray is not installed (pip install -e '.[ray]'): --runtime ray untested")
    import ray
    from ray.cluster_utils import Cluster
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1",
                                                      "resources": {"node-a": 100}})
    try:
        # Node b on another loopback address: its workers bind there, as on another machine.
        b = c.add_node(num_cpus=1, node_ip_address="127.0.0.2", resources={"node-b": 100})
        c.wait_for_nodes()
        ray.init(address=c.address, _node_ip_address="127.0.0.1", logging_level="ERROR")
        ids = {n["Resources"].get("node-a") and "a" or "b": n["NodeID"] for n in ray.nodes() if n["Alive"]}
        yield c, b, ids
    finally:
        ray.shutdown()
        c.shutdown()


@pytest.fixture(scope="module")
def mixed():
    return _records(SCAN) + _records(LAN, 2000)


def _sim(records):
    rt = SimRuntime(load_spec(str(PAPER)), model=MODEL)
    rt.run(records)
    return rt.summary()


def _assert_like_sim(s, sim) -> None:
    assert s.runtime == "ray"
    assert s.state_digest == sim.state_digest
    assert (s.packets_in, s.packets_out, s.dropped, s.malformed, s.non_ip) == \
        (sim.packets_in, sim.packets_out, sim.dropped, sim.malformed, sim.non_ip)
    assert s.alerts == sim.alerts
    per = ("packets_in", "packets_out", "dropped", "alerts")
    assert {n: {k: v[k] for k in per} for n, v in s.vertices.items()} == \
        {n: {k: v[k] for k in per} for n, v in sim.vertices.items()}


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _nothing_left(rt) -> None:
    """No actor of the run alive in Ray's table, no worker process on this machine."""
    import ray
    from ray._private.state import actors  # the GCS's actor table (list_actors needs the dashboard)
    hosts = [a for a in actors().values() if a["ActorClassName"].endswith("_Host")]
    assert hosts and {a["State"] for a in hosts} == {"DEAD"}
    pids = [p for p in rt.pids.values() if p is not None]
    assert len(pids) == len(rt.pids)
    deadline = time.monotonic() + 20         # ray.kill is asynchronous: the raylet ends the process
    while any(_running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_running(pid) for pid in pids)
    assert ray.is_initialized()         # the test's connection: the runtime left it alone


@needs_ray
def test_ray_run_matches_sim_spread_over_both_nodes(cluster, mixed):
    _, _, ids = cluster
    sim = _sim(mixed)
    assert sim.alerts and sim.dropped       # the comparison covers both
    rt = procray.RayRuntime(load_spec(str(PAPER)), model=MODEL, pins={"trojan.0": "node-b"})
    rt.run(mixed)
    _assert_like_sim(rt.summary(), sim)
    instances = {n: node for n, node in rt.placement.items() if not n.startswith("@")}
    assert set(instances) == {"nat.0", "portscan.0", "lb.0", "trojan.0"}
    assert set(instances.values()) == {ids["a"], ids["b"]}
    assert instances["trojan.0"] == ids["b"]                        # the pin
    assert rt.placement["@root.0"] == rt.placement["@store"] == ids["a"]   # the coordinator's node
    _mailboxes_on_their_nodes(rt, ids)
    _nothing_left(rt)


NODE_IPS = {"a": "127.0.0.1", "b": "127.0.0.2"}


def _mailboxes_on_their_nodes(rt, ids) -> None:
    """Every worker's mailbox is at the address of the node its actor ran on (on other
    machines, a mailbox elsewhere would be unreachable; here every loopback address works)."""
    ip = {ids[k]: v for k, v in NODE_IPS.items()}
    assert {name: rt.plan.host_of(name) for name in rt.placement} == \
        {name: ip[node] for name, node in rt.placement.items()}
    assert "127.0.0.2" in {rt.plan.host_of(name) for name in rt.placement}


@pytest.fixture(scope="module")
def lan():
    return _records(LAN, 6000)


@pytest.fixture(scope="module")
def lan_sim(lan):
    return _sim(lan)


def _failed_over(s, sim, vertex: str) -> dict:
    (event,) = s.events
    assert event["kind"] == "failover" and event["process"] == f"{vertex}.0"
    assert event["failover_process"] == f"{vertex}.0#1"
    assert event["how"].startswith("lost its Ray actor")       # seen from Ray, not from a process sentinel
    _assert_like_sim(s, sim)
    return event


@needs_ray
def test_an_actor_killed_through_ray_fails_over(cluster, lan, lan_sim):
    """``--kill nat[0]@4000`` on Ray is ``ray.kill`` of nat.0's actor: its run
    ObjectRef raises RayActorError, and the proc runtime's NF failover takes over."""
    rt = procray.RayRuntime(load_spec(str(PAPER)), model=MODEL, kills=[Kill("nat", 0, 4000)])
    rt.run(held(rt, lan, "nat.0", 3000))
    event = _failed_over(rt.summary(), lan_sim, "nat")
    assert event["replayed"] > 0
    _nothing_left(rt)


@needs_ray
def test_a_roots_actor_killed_through_ray_fails_over(cluster, lan, lan_sim):
    """``--kill root[0]@3000`` on Ray: the failover root (an actor on the coordinator's
    node) stamps the kept input again, with the same results as the sim."""
    rt = procray.RayRuntime(load_spec(str(PAPER)), model=MODEL, kills=[Kill("root", 0, 3000)])
    rt.run(lan)
    s = rt.summary()
    (event,) = s.events
    assert event["kind"] == "root-failover" and event["failover_process"] == "@root.0#1"
    assert event["how"].startswith("lost its Ray actor") and event["replayed"] > 0
    _assert_like_sim(s, lan_sim)
    _nothing_left(rt)


@needs_ray
def test_the_store_servers_actor_killed_through_ray_fails_over(cluster, lan, lan_sim):
    """``--kill store@3000`` on Ray: a failover store server (an actor too) starts from the
    checkpoint rolled forward from the instances' logs, with the same results as the sim."""
    rt = procray.RayRuntime(load_spec(str(PAPER)), model=MODEL, kills=[Kill("store", 0, 3000)])
    rt.run(held(rt, lan, "nat.0", 3000))
    s = rt.summary()
    (event,) = s.events
    assert event["kind"] == "store-failover" and event["failover_process"] == "@store#1"
    assert event["how"].startswith("lost its Ray actor")
    _assert_like_sim(s, lan_sim)
    _nothing_left(rt)


def _check_one_seed(cluster, capsys, scenario: str, packets: int, seed: int, kill: str) -> str:
    """``chc check --runtime ray`` of one seed on the cluster: it passes; its output."""
    c, _, _ = cluster
    rc = main(["check", "--runtime", "ray", "--ray-address", c.address, str(PAPER),
               str(ROOT / "examples/scenarios" / scenario), str(LAN), "--packets", str(packets), "--seed", str(seed),
               "--kill", kill])
    out = capsys.readouterr().out
    assert rc == 0, out
    return out


@needs_ray
def test_check_on_ray_judges_a_killed_instance_with_the_oracle(cluster, capsys):
    """``chc check --runtime ray``: the proc check (the store server's serialization,
    the COE oracle) on the cluster's actors, with a random SIGKILL per seed."""
    out = _check_one_seed(cluster, capsys, "parallel.yaml", 1500, 2, "random")
    assert "1 of 1 seeds passed" in out and "kill lb[2]@1028" in out and "killed lb[2] (lb.2) at input packet" in out


@needs_ray
def test_check_on_ray_scales_and_fails_over_during_a_change(cluster, capsys):
    """§5.1 on Ray: a scale-out's new instance is an actor too, at a port set aside from
    the start (``Plan.room``); the scale scenario with a kill during a change passes."""
    out = _check_one_seed(cluster, capsys, "scale.yaml", 3000, 10, "during")
    # (seed 10: nat starts with one instance; nat.1, a scale-out's actor, dies during change 5)
    assert "1 of 1 seeds passed" in out and "kill nat[1]@change:5" in out, out
    assert "killed nat[1] (nat.1) at input packet" in out and "during change 5" in out, out


def test_check_ray_options_are_one_line(capsys):
    argv = ["check", str(PAPER), str(ROOT / "examples/scenarios/parallel.yaml"), str(LAN), "--packets", "50"]
    assert main([*argv, "--ray-address", "127.0.0.1:1"]) == 2
    assert capsys.readouterr().err.strip() == "chc: error: --ray-address is for --runtime ray"
    assert main([*argv, "--runtime", "ray", "--jobs", "2", "--seeds", "2"]) == 2
    # (without Ray installed, that is what the one line says first)
    assert ("--runtime ray seeds run one at a time" if procray.available() else procray.EXTRA) \
        in capsys.readouterr().err


def test_removing_the_node_of_an_instance_fails_it_over(cluster, lan, lan_sim):
    """portscan.0 alone on node b; node b is removed mid-run: portscan fails over to
    node a.  Then nat.0 (on node a) is killed: its first failover's node (b) is gone,
    so the failover goes on round the ring to node a as nat.0#2, nat.0#1 fenced in its
    place (runs last: the cluster has one node afterwards)."""
    c, b, ids = cluster
    pins = {"nat.0": "node-a", "lb.0": "node-a", "trojan.0": "node-a", "portscan.0": "node-b"}
    rt = procray.RayRuntime(load_spec(str(PAPER)), model=MODEL, pins=pins, failover=True,
                            kills=[Kill("nat", 0, 5000)])
    removed = []

    def progress(_n: int) -> None:
        if not removed and rt.fed >= 3000:
            removed.append(rt.fed)
            c.remove_node(b)

    rt.run(lan, progress=progress)
    assert removed
    s = rt.summary()
    lost, killed = s.events
    assert (lost["process"], lost["failover_process"], lost.get("skipped")) == ("portscan.0", "portscan.0#1", None)
    assert (killed["process"], killed["failover_process"], killed["skipped"]) == ("nat.0", "nat.0#2", ["nat.0#1"])
    _assert_like_sim(s, lan_sim)
    assert rt.placement["portscan.0"] == ids["b"] and rt.placement["portscan.0#1"] == ids["a"]
    assert rt.placement["nat.0"] == ids["a"] and rt.placement["nat.0#2"] == ids["a"]
    _mailboxes_on_their_nodes(rt, ids)
    _nothing_left(rt)


@needs_ray
def test_ray_runs_the_vertex_managers_as_actors(cluster, tmp_path):
    """examples/autoscale.yaml on the cluster: each vertex manager is an actor of its own,
    they scale the detectors out, and the state is the unscaled sim run's."""
    from chc.trace.gen import generate, resolve_profile
    path = tmp_path / "rise.pcap"
    generate(str(path), resolve_profile("trace1", 24000, 240, shape=(1, 6, 1)), seed=3)
    records = _records(path)
    chain = load_spec(str(ROOT / "examples/autoscale.yaml"))
    sim = SimRuntime(chain.without_scaling(), model=MODEL)
    sim.run(records)
    rt = procray.RayRuntime(chain, model=MODEL)
    rt.run(records)
    s = rt.summary()
    assert {"@manager.portscan", "@manager.trojan"} <= set(rt.placement)
    assert any(e.get("by") == "manager" and e["kind"] == "scale-out" for e in s.events)
    assert s.state_digest == sim.summary().state_digest and s.packets_in == 24000
    _nothing_left(rt)
