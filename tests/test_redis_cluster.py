"""The Redis Cluster store beyond the conformance suite (which runs on it too): where the
keys go, wrong addresses, a slot that moves (MOVED, ASK, a batch cut short), a failover,
and a node that goes away.  Clusters are private 3-node ones on loopback (tests/conftest.py).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from chc.core.client import StoreLost, StoreUnavailable
from chc.core.store import ObjectKey, Op, StoreError

pytest.importorskip("redis")

from redis.crc import key_slot  # noqa: E402

from chc.backends.redis_cluster import RedisClusterStore  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _clients(cluster):
    import redis

    return [redis.Redis(host="127.0.0.1", port=n.port) for n in cluster.nodes]


def _flows(store, shard: int, n: int) -> list[ObjectKey]:
    """``n`` per-flow keys on ``shard``."""
    out, i = [], 0
    while len(out) < n:
        k = ObjectKey("nat", "mapping", (i, 80), per_flow=True)
        if store.server_of(k) == shard:
            out.append(k)
        i += 1
    return out


def _slot(store, shard: int) -> int:
    p = store.servers[shard].prefix
    return key_slot(p[p.index(b"{") + 1:p.index(b"}")])


def _migrate(cluster, slot: int, src: int, dst: int, keys: list[bytes] | None = None, finish: bool = True) -> None:
    """Move ``slot`` from node ``src`` to ``dst`` as ``redis-cli --cluster reshard`` does: mark it
    migrating/importing, MIGRATE its keys (``keys``: only those), then assign it to ``dst``."""
    clients = _clients(cluster)
    try:
        ids = [c.execute_command("CLUSTER", "MYID") for c in clients]
        clients[dst].execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[src])
        clients[src].execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[dst])
        if keys is None:
            keys = clients[src].execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100_000)
        if keys:
            clients[src].execute_command("MIGRATE", "127.0.0.1", cluster.nodes[dst].port, "", 0, 5000,
                                         "KEYS", *keys)
        if finish:
            for c in clients:
                c.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[dst])
    finally:
        for c in clients:
            c.close()


def _node_of(store, cluster, shard: int) -> int:
    port = int(store.servers[shard].params["port"])
    return next(i for i, n in enumerate(cluster.nodes) if n.port == port)


@pytest.fixture
def cluster(redis_cluster):
    redis_cluster.flush()
    return redis_cluster


def test_one_shard_per_primary_each_in_one_slot_of_its_node(cluster):
    s = RedisClusterStore(cluster.url, fresh=True)
    try:
        assert s.n == 3 and s.describe() == f"{cluster.url} (3 primaries)"
        assert sorted(int(srv.params["port"]) for srv in s.servers) == sorted(n.port for n in cluster.nodes)
        keys = [ObjectKey("nat", "mapping", (i, 80), per_flow=True) for i in range(60)]
        s.execute([Op("incr", k, (1,), "nat/0", i + 1, instance=1, tag=(i + 1, 1), xor_id=5)
                   for i, k in enumerate(keys)])
        assert {s.server_of(k) for k in keys} == {0, 1, 2}          # objects spread over the primaries
        clients = _clients(cluster)
        try:
            for shard in range(3):
                slot = _slot(s, shard)
                node = clients[_node_of(s, cluster, shard)]
                stored = node.keys("chc:*")
                # every key this run wrote on that node (objects, owners, clock log, marks,
                # commit reports, epoch) is in the shard's one slot
                assert stored and {key_slot(k) for k in stored} == {slot}
                assert node.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == len(stored)
        finally:
            for c in clients:
                c.close()
    finally:
        s.close()


def test_wrong_addresses_are_one_line_errors(cluster, redis_urls):
    with pytest.raises(StoreUnavailable, match=r"^redis-cluster://127.0.0.1:1: connection refused$"):
        RedisClusterStore("redis-cluster://127.0.0.1:1", connect_timeout=0.5)
    plain = redis_urls[0].replace("redis://", "redis-cluster://")
    with pytest.raises(StoreError, match="not a Redis Cluster node .*use redis://"):
        RedisClusterStore(plain)
    from chc.backends.redis import RedisStore

    node = f"redis://127.0.0.1:{cluster.nodes[1].port}"
    with pytest.raises(StoreError, match="is a Redis Cluster node: use --store redis-cluster://"):
        RedisStore(node, fresh=True)
    with pytest.raises(StoreError, match="not a redis-cluster://"):
        RedisClusterStore(redis_urls[0])


@pytest.mark.parametrize("target", ["unreachable", "plain"])
def test_cli_wrong_cluster_url_exits_2_with_one_line(tmp_path, capsys, redis_urls, target):
    from chc.cli import main

    url = "redis-cluster://127.0.0.1:1" if target == "unreachable" else \
        redis_urls[0].replace("redis://", "redis-cluster://")
    code = main(["run", str(ROOT / "examples/paper_chain.yaml"), str(ROOT / "traces/scans/nmap-syn-scan.pcap"),
                 "--model", "EO", "--out", str(tmp_path / "o.pcap"), "--no-progress", "-q", "--store", url])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0 and err.startswith("chc: error: redis-cluster://127.0.0.1:"), err


def test_a_migrated_slot_is_followed_with_its_state(dedicated_cluster):
    s = RedisClusterStore(dedicated_cluster.url, fresh=True)
    try:
        keys = _flows(s, 0, 5)
        ops = [Op("incr", k, (1,), "nat/0", i + 1, instance=1, tag=(i + 1, 1), xor_id=9) for i, k in enumerate(keys)]
        assert s.execute(ops) == [1] * 5
        src = _node_of(s, dedicated_cluster, 0)
        dst = (src + 1) % 3
        _migrate(dedicated_cluster, _slot(s, 0), src, dst)
        # the retransmitted ops are recognised (the dedup marks and the clock log moved along),
        # a new one is applied, and the shard's requests now go to the new node
        more = Op("incr", keys[0], (1,), "nat/0", 6, instance=1, tag=(6, 1), xor_id=9)
        assert s.execute([*ops, more]) == [1, 1, 1, 1, 1, 2]
        assert int(s.servers[0].params["port"]) == dedicated_cluster.nodes[dst].port
        assert s.execute([Op("get", k) for k in keys]) == [2, 1, 1, 1, 1]
        # a non-blocking request follows too
        acks: list[int] = []
        s.submit([Op("incr", keys[1], (1,), "nat/0", 7, instance=1, tag=(7, 1))], acks.append)
        s.wait()
        assert acks == [7] and s.execute([Op("get", keys[1])]) == [2]
        # an ownership refusal still holds: the owner key moved with the object
        with pytest.raises(StoreError, match="owned by instance 1"):
            s.execute([Op("set", keys[2], (0,), "nat/1", 1, instance=2)])
    finally:
        s.close()


def test_a_slot_being_migrated_is_retried_until_the_migration_ends(dedicated_cluster):
    s = RedisClusterStore(dedicated_cluster.url, fresh=True, backoff=0.05)
    try:
        key = _flows(s, 0, 1)[0]
        s.execute([Op("incr", key, (1,), "nat/0", 1, instance=1, tag=(1, 1))])
        src = _node_of(s, dedicated_cluster, 0)
        dst = (src + 1) % 3
        _migrate(dedicated_cluster, _slot(s, 0), src, dst, finish=False)     # keys moved, slot not yet
        ids = []
        for c in _clients(dedicated_cluster):
            ids.append(c.execute_command("CLUSTER", "MYID"))
            c.close()

        def finish() -> None:
            for c in _clients(dedicated_cluster):
                c.execute_command("CLUSTER", "SETSLOT", _slot(s, 0), "NODE", ids[dst])
                c.close()

        timer = threading.Timer(0.5, finish)        # the source answers ASK until then
        timer.start()
        try:
            assert s.execute([Op("incr", key, (1,), "nat/0", 2, instance=1, tag=(2, 1))]) == [2]
        finally:
            timer.join()
    finally:
        s.close()


def test_a_batch_cut_short_by_a_migration_stops_the_run(dedicated_cluster):
    s = RedisClusterStore(dedicated_cluster.url, fresh=True)
    try:
        a, b = _flows(s, 0, 2)
        s.execute([Op("incr", a, (1,), "nat/0", 1, instance=1), Op("incr", b, (1,), "nat/0", 2, instance=1)])
        src = _node_of(s, dedicated_cluster, 0)
        # only b's object has moved: the batch runs on the source (its declared key is there)
        # and meets b inside the node
        _migrate(dedicated_cluster, _slot(s, 0), src, (src + 1) % 3, keys=[s._locate(b)[0]], finish=False)
        with pytest.raises(StoreLost, match="cut short by the cluster .*cannot continue") as got:
            s.execute([Op("incr", a, (1,), "nat/0", 3, instance=1), Op("incr", b, (1,), "nat/0", 4, instance=1)])
        assert "\n" not in str(got.value)
        with pytest.raises(StoreLost):                      # and every later call at once
            s.execute([Op("get", a)])
    finally:
        s.close()


def test_a_moved_slot_with_subscribers_stops_the_run(dedicated_cluster):
    s = RedisClusterStore(dedicated_cluster.url, fresh=True)
    watcher = RedisClusterStore(dedicated_cluster.url)
    try:
        key = ObjectKey("lb", "load", None)
        shard = s.server_of(key)
        watcher.subscribe(key, "lb/1")
        s.execute([Op("incr", key, (1,), "lb/0", 1)])
        assert watcher.notifications("lb/1") == [("update", key, 1)]
        src = _node_of(s, dedicated_cluster, shard)
        _migrate(dedicated_cluster, _slot(s, shard), src, (src + 1) % 3)
        s.execute([Op("incr", key, (1,), "lb/0", 2)])        # published on the new node
        with pytest.raises(StoreLost, match="subscribed objects, moved"):
            watcher.notifications("lb/1")
    finally:
        watcher.close()
        s.close()


def test_a_failover_is_not_followed(cluster, monkeypatch):
    """MOVED to another node while the old one is no longer an online primary: a replica took
    over, and asynchronous replication may have lost acknowledged updates."""
    s = RedisClusterStore(cluster.url, fresh=True)
    try:
        old = s.servers[0]
        primaries, online = s._discover()
        gone = (old.params["host"], int(old.params["port"]))
        monkeypatch.setattr(s, "_discover", lambda: (primaries, online - {gone}))
        with pytest.raises(StoreLost, match="no longer a primary; .*failover"):
            s._redirected(0, f"MOVED {_slot(s, 0)} 127.0.0.1:{s.servers[1].params['port']}")
    finally:
        s.close()


def test_a_node_that_goes_away_stops_the_run_with_one_line(dedicated_cluster):
    s = RedisClusterStore(dedicated_cluster.url, fresh=True, attempts=3, backoff=0.02)
    try:
        keys = [_flows(s, shard, 1)[0] for shard in range(3)]
        s.execute([Op("incr", k, (1,), "nat/0", i + 1, instance=1) for i, k in enumerate(keys)])
        victim = _node_of(s, dedicated_cluster, 2)
        dedicated_cluster.nodes[victim].kill()
        with pytest.raises(StoreLost) as got:
            s.execute([Op("incr", k, (1,), "nat/0", i + 4, instance=1) for i, k in enumerate(keys)])
        text = str(got.value)
        assert "\n" not in text
        assert text.startswith(f"redis://127.0.0.1:{dedicated_cluster.nodes[victim].port}: connection refused: "
                               "the store is unreachable"), text
    finally:
        s.close()


def test_a_cluster_that_wants_a_password(protected_cluster):
    base = protected_cluster.url[len("redis-cluster://"):]
    s = RedisClusterStore(f"redis-cluster://:cluster-pw@{base}", fresh=True)
    watcher = RedisClusterStore(f"redis-cluster://:cluster-pw@{base}")
    try:
        assert s.describe() == f"redis-cluster://:***@{base} (3 primaries)"
        assert all(srv.url.startswith("redis://:***@127.0.0.1:") for srv in s.servers)
        key = ObjectKey("lb", "load", None)
        watcher.subscribe(key, "lb/1")
        keys = [key, *[ObjectKey("nat", "n", (i,), per_flow=True) for i in range(9)]]
        assert s.execute([Op("incr", k, (1,), "nat/0", i + 1) for i, k in enumerate(keys)]) == [1] * 10
        assert watcher.notifications("lb/1") == [("update", key, 1)]
    finally:
        watcher.close()
        s.close()
    with pytest.raises(StoreError, match=r"^redis-cluster://127.0.0.1:\d+: authentication required"):
        RedisClusterStore(protected_cluster.url)
    with pytest.raises(StoreError, match=r"^redis-cluster://:\*\*\*@127.0.0.1:\d+: authentication failed"):
        RedisClusterStore(f"redis-cluster://:nope@{base}")


def test_a_request_is_one_function_call_per_primary(cluster):
    """Ops are batched per node: a request over every shard is one chc_batch call on each
    primary (INFO commandstats), sent to all before any reply is read (one round trip)."""
    s = RedisClusterStore(cluster.url, fresh=True)
    clients = _clients(cluster)
    try:
        keys = [ObjectKey("nat", "mapping", (i, 80), per_flow=True) for i in range(60)]
        for c in clients:
            c.config_resetstat()
        before = s.round_trips
        s.execute([Op("incr", k, (1,), "nat/0", i + 1, instance=1, tag=(i + 1, 1)) for i, k in enumerate(keys)])
        assert s.round_trips == before + 1
        calls = [c.info("commandstats").get("cmdstat_fcall", {}).get("calls", 0) for c in clients]
        assert calls == [1, 1, 1]
    finally:
        for c in clients:
            c.close()
        s.close()


def test_a_fresh_run_clears_its_namespace_on_every_node_and_nothing_else(cluster):
    import redis

    c = redis.RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)
    try:
        mine = [f"chc:{{{i}}}:stale" for i in range(30)]     # an earlier layout's keys, on every node
        for k in [*mine, "chco-other", "user:{chc}:x"]:
            c.set(k, b"1")
        s = RedisClusterStore(cluster.url, fresh=True)
        s.close()
        assert not any(c.exists(k) for k in mine)
        assert c.exists("chco-other") and c.exists("user:{chc}:x")
    finally:
        c.close()


def test_the_proc_runtime_on_a_cluster_directly_and_with_a_kill_checked(cluster, tmp_path, capsys, monkeypatch):
    """``--runtime proc --store redis-cluster://``: each process's own cluster
    connection gives the sim's digest; with a kill under ``chc check`` the store server
    in front of the cluster keeps what NF failover needs, and the seed passes."""
    from chc.cli import main
    monkeypatch.chdir(ROOT)
    chain, lan = "examples/paper_chain.yaml", "traces/pathspider/lan-2012.pcap.gz"
    digests = []
    for extra in (["--runtime", "proc", "--store", cluster.url], []):
        out = tmp_path / f"s{len(digests)}.json"
        assert main(["run", chain, lan, "-c", "1000", "--model", "EO+C+NA", "--no-progress", "-q",
                     "--summary-json", str(out), *extra]) == 0
        digests.append(json.loads(out.read_text())["state_digest"])
    assert digests[0] == digests[1]
    assert main(["check", "--runtime", "proc", chain, "examples/scenarios/parallel.yaml", lan, "--packets", "1500",
                 "--seed", "6", "--kill", "nat[0]@700", "--store", cluster.url]) == 0
    assert "failover nat.0#1 replayed" in capsys.readouterr().out
