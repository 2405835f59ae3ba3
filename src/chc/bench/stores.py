"""Stores a benchmark runs on: the in-process memory store and Redis.

Theory of operation
-------------------
A :class:`StoreSpec` names a store and opens a fresh one for every run, so every
run starts from empty state.  Redis: ``--redis URL[,URL]`` uses those servers
(only CHC's keys are cleared); otherwise :class:`PrivateRedis` starts a
``redis-server`` of this benchmark alone (two for the sharded store test) on
free loopback ports with ``--save "" --appendonly no`` and stops it at the end.
``PrivateRedis(..., cluster=REDIS_CLI)`` starts them cluster-enabled and joins them
into one Redis Cluster (:func:`form_cluster`, also what the test suite's cluster uses).
"""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Any

from ..backends.memory import MemoryStore
from .harness import BenchError


@dataclasses.dataclass
class StoreSpec:
    name: str                        # memory | redis | redis-2shards | redis-cluster
    urls: list[str] | None = None
    packet_cap: int | None = None    # cells on this store use at most this many packets
    nodes: int | None = None         # redis-cluster: its primaries (the store's shards)

    @property
    def shards(self) -> int:
        return self.nodes or len(self.urls or [])

    def open(self, fresh: bool = True) -> Any:
        if self.name == "memory":
            return MemoryStore()
        if self.name == "redis-cluster":
            from ..backends.redis_cluster import RedisClusterStore
            return RedisClusterStore(list(self.urls or []), fresh=fresh)
        from ..backends.redis import RedisStore
        return RedisStore(list(self.urls or []), fresh=fresh)

    def describe(self) -> str:
        return "memory (in-process)" if self.name == "memory" else f"{self.name} {','.join(self.urls or [])}"


def redis_server_binary() -> str | None:
    """A redis-server of version 7 or later on PATH, else None."""
    path = shutil.which("redis-server")
    if path is None:
        return None
    try:
        text = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for part in text.split():
        if part.startswith("v="):
            try:
                return path if int(part[2:].split(".")[0]) >= 7 else None
            except ValueError:
                return None
    return None


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports free now, below the ephemeral range (a port taken from
    it, from a bind to port 0, was taken again by an outgoing connection before the server
    that was to listen there started: a private cluster node exited, a CI run's error)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.Random()
    ports: list[int] = []
    while len(ports) < n:
        port = rng.randrange(10000, max(low, 10001))
        if port in ports:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
    return ports


def _free_port() -> int:
    return free_ports(1)[0]


def cluster_options(port: int, bus: int | None = None) -> list[str]:
    """redis-server options of a node of a private Redis Cluster: its bus on ``bus`` (else
    another free port: by default port + 10000, beyond 65535 for many free ports), node
    timeout 2 s (a node that goes away is noticed soon)."""
    return ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
            "--cluster-port", str(bus or _free_port()), "--cluster-node-timeout", "2000"]


def form_cluster(cli: str, ports: list[int], timeout: float = 30.0, password: str | None = None) -> None:
    """Join the empty cluster-enabled servers on loopback ``ports`` into one Redis Cluster (no
    replicas, ``redis-cli --cluster create``); return once every node says cluster_state:ok
    (the nodes learn the slot map by gossip).  ``password``: the nodes' ``requirepass``."""
    import redis

    auth = ["-a", password, "--no-auth-warning"] if password else []
    done = subprocess.run([cli, *auth, "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports],
                           "--cluster-replicas", "0", "--cluster-yes"], capture_output=True, text=True,
                          timeout=timeout)
    if done.returncode != 0:
        raise BenchError(f"redis-cli --cluster create failed: {(done.stdout + done.stderr)[-2000:]}")
    deadline = time.monotonic() + timeout
    clients = [redis.Redis(host="127.0.0.1", port=p, socket_timeout=5, password=password) for p in ports]
    try:
        while True:
            try:
                if all(b"cluster_state:ok" in c.execute_command("CLUSTER", "INFO") for c in clients):
                    return
            except redis.exceptions.RedisError:
                pass
            if time.monotonic() > deadline:
                raise BenchError(f"the Redis Cluster on ports {ports} is not ok after {timeout:g} s")
            time.sleep(0.05)
    finally:
        for c in clients:
            c.close()


class PrivateRedis:
    """``n`` redis-server processes of this benchmark alone, on free loopback ports; with
    ``cluster`` (the redis-cli binary) one Redis Cluster of them (``cluster_url``)."""

    def __init__(self, binary: str, n: int, cluster: str | None = None) -> None:
        self.dir = tempfile.mkdtemp(prefix="chc-bench-redis-")
        self.procs: list[subprocess.Popen] = []
        self.urls: list[str] = []
        ports: list[int] = []
        try:
            for i in range(n):
                port = _free_port()
                log = open(os.path.join(self.dir, f"redis-{i}.log"), "wb")  # noqa: SIM115 - owned by the process
                proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                         "--appendonly", "no", "--dir", self.dir, "--daemonize", "no",
                                         *(cluster_options(port) if cluster else [])],
                                        stdout=log, stderr=subprocess.STDOUT)
                log.close()
                self.procs.append(proc)
                self.urls.append(f"redis://127.0.0.1:{port}")
                ports.append(port)
                self._wait(port, proc)
            if cluster:
                form_cluster(cluster, ports)
        except Exception:
            self.close()
            raise
        self.cluster_url = f"redis-cluster://127.0.0.1:{ports[0]}" if cluster and ports else None

    def _wait(self, port: int, proc: subprocess.Popen, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BenchError(f"redis-server on port {port} exited at start")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.02)
        raise BenchError(f"redis-server on port {port} did not answer PING in {timeout:g} s")

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
        self.procs = []
        shutil.rmtree(self.dir, ignore_errors=True)
