"""Shared fixtures: private ``redis-server`` processes and a store per backend.

Redis-backed tests need ``redis-server`` (Redis 7) on PATH.  Without it they are
skipped, unless the environment variable ``CI`` is set (``CI=true``): then they
fail, so CI cannot pass without exercising the Redis backend.

``redis-cluster`` stores run on a private 3-node Redis Cluster (``redis_cluster``: three
``redis-server --cluster-enabled yes`` joined by ``redis-cli --cluster create``, no
replicas), which also needs ``redis-cli``.

Servers run with ``--appendonly yes --appendfsync always`` (an acknowledged
update is on disk before the reply, so it survives a kill -9), in a directory on
tmpfs when there is one (fsync is then cheap; a process kill keeps the page
cache either way).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

STORES = ["memory", "redis", "redis-2shards", "redis-cluster"]


def _ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _unavailable(msg: str) -> None:
    if _ci():
        pytest.fail(f"CI is set and {msg}", pytrace=False)
    pytest.skip(msg)


def require_redis_server() -> str:
    """Path of a Redis 7+ redis-server, or skip (fail under CI) with the reason."""
    path = shutil.which("redis-server")
    if path is None:
        _unavailable("redis-server (Redis 7) is not on PATH: install it (e.g. apt-get install redis-server) "
                     "to run the Redis backend tests")
    version = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
    match = re.search(r"v=(\d+)\.", version)
    if match is None or int(match.group(1)) < 7:
        _unavailable(f"{path} is not Redis 7 or later ({version.strip()!r}); the Redis backend needs "
                     "Redis Functions")
    return path


def _free_port() -> int:
    """A free port for a private server (below the ephemeral range: chc.bench.stores)."""
    from chc.bench.stores import free_ports
    return free_ports(1)[0]


class RedisProcess:
    """One private redis-server: start, kill -9, restart on the same port and directory."""

    def __init__(self, binary: str, directory: Path, extra: list[str] | None = None,
                 client: dict | None = None, tls: bool = False) -> None:
        self.binary = binary
        self.dir = directory
        self.port = _free_port()
        self.proc: subprocess.Popen | None = None
        self.log = directory / "redis.log"
        self.extra = extra or []            # more redis-server options (a password, TLS files)
        self.client = client or {}          # what redis-py needs to PING it
        self.tls = tls                      # TLS only: the port is --tls-port, plain TCP is off

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, *(["--port", "0", "--tls-port", str(self.port)] if self.tls else
                                ["--port", str(self.port)]),
                 "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.dir),
                 "--daemonize", "no", *self.extra],
                stdout=log, stderr=subprocess.STDOUT)
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> None:
        import redis

        deadline = time.monotonic() + timeout
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5, **self.client)
        try:
            while True:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server on port {self.port} exited: "
                                       f"{self.log.read_text(errors='replace')[-2000:]}")
                try:
                    if client.ping():
                        return
                except redis.exceptions.RedisError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {self.port} did not answer PING in {timeout} s")
                time.sleep(0.02)
        finally:
            client.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()                  # SIGKILL: no shutdown, no final AOF flush
            self.proc.wait(10)
        self.proc = None

    def flush(self) -> None:
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, **self.client)
        try:
            client.flushall()
            client.function_flush()
        finally:
            client.close()


def _base_dir() -> str | None:
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


@pytest.fixture(scope="session")
def redis_servers() -> Iterator[list[RedisProcess]]:
    """Two private redis-server processes for the whole session."""
    binary = require_redis_server()
    base = tempfile.mkdtemp(prefix="chc-redis-", dir=_base_dir())
    servers = [RedisProcess(binary, Path(base) / f"s{i}") for i in range(2)]
    try:
        for s in servers:
            s.start()
        yield servers
    finally:
        for s in servers:
            s.kill()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def redis_urls(redis_servers) -> list[str]:
    """URLs of the two session servers, flushed (data and functions) for this test."""
    for s in redis_servers:
        s.flush()
    return [s.url for s in redis_servers]


CLUSTER_NODES = 3


class RedisCluster:
    """A private Redis Cluster of ``n`` primaries on loopback (no replicas)."""

    def __init__(self, binary: str, directory: Path, n: int = CLUSTER_NODES, password: str | None = None) -> None:
        from chc.bench.stores import cluster_options, free_ports

        self.cli = shutil.which("redis-cli")
        if self.cli is None:
            _unavailable("redis-cli is not on PATH (it comes with redis-server, e.g. apt-get install "
                         "redis-server): the Redis Cluster tests need it to create the cluster")
        self.password = password
        auth = ["--requirepass", password, "--masterauth", password] if password else []
        self.nodes = [RedisProcess(binary, directory / f"n{i}", client={"password": password} if password else None)
                      for i in range(n)]
        # every node's port and bus port distinct, and none an outgoing connection may take
        # (a node whose bus port was taken meanwhile exited at start: CI runs' one error)
        ports = free_ports(2 * n)
        for node, port, bus in zip(self.nodes, ports[:n], ports[n:], strict=True):
            node.port = port
            node.extra = [*cluster_options(port, bus), *auth]

    @property
    def url(self) -> str:
        return f"redis-cluster://127.0.0.1:{self.nodes[0].port}"

    def start(self) -> None:
        from chc.bench.stores import form_cluster

        for node in self.nodes:
            node.start()
        assert self.cli is not None
        form_cluster(self.cli, [n.port for n in self.nodes], password=self.password)

    def flush(self) -> None:
        for node in self.nodes:
            node.flush()

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()


def _private(kind: Any, prefix: str, **kw: Any) -> Iterator[Any]:
    """A private server (``RedisProcess``) or cluster (``RedisCluster``) in a fresh
    directory, killed and removed after."""
    binary = require_redis_server()
    base = tempfile.mkdtemp(prefix=prefix, dir=_base_dir())
    server = kind(binary, Path(base), **kw)
    try:
        server.start()
        yield server
    finally:
        server.kill()
        shutil.rmtree(base, ignore_errors=True)


def _cluster(prefix: str, password: str | None = None) -> Iterator[RedisCluster]:
    yield from _private(RedisCluster, prefix, password=password)


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """A private 3-node Redis Cluster for the whole session."""
    yield from _cluster("chc-redis-cluster-")


@pytest.fixture
def dedicated_cluster() -> Iterator[RedisCluster]:
    """A Redis Cluster of this test alone (a node may be killed)."""
    yield from _cluster("chc-redis-cluster-own-")


@pytest.fixture
def protected_cluster() -> Iterator[RedisCluster]:
    """A Redis Cluster of this test alone whose nodes want the password ``cluster-pw``."""
    yield from _cluster("chc-redis-cluster-pw-", password="cluster-pw")


@pytest.fixture
def dedicated_redis() -> Iterator[RedisProcess]:
    """A redis-server of this test alone (it may be killed and restarted)."""
    yield from _private(RedisProcess, "chc-redis-own-")


def make_store(kind: str, urls: list[str] | None = None, **options):
    if kind == "memory":
        from chc.backends.memory import MemoryStore
        return MemoryStore()
    assert urls is not None
    if kind == "redis-cluster":
        from chc.backends.redis_cluster import RedisClusterStore
        return RedisClusterStore(urls, **options)
    from chc.backends.redis import RedisStore
    return RedisStore(urls[:1] if kind == "redis" else urls[:2], **options)


def store_servers(request, kind: str) -> tuple[list[RedisProcess], list[str]]:
    """The private servers behind a store kind (not flushed) and the URLs make_store takes."""
    if kind == "memory":
        return [], []
    if kind == "redis-cluster":
        cluster = request.getfixturevalue("redis_cluster")
        return cluster.nodes, [cluster.url]
    servers = request.getfixturevalue("redis_servers")
    return servers, [s.url for s in servers]


@pytest.fixture(params=STORES)
def store_kind(request) -> str:
    return request.param


@pytest.fixture
def store(request, store_kind):
    """A fresh backend of each kind: memory, redis (1 server), redis-2shards, redis-cluster."""
    servers, urls = store_servers(request, store_kind)
    for s in servers:
        s.flush()
    backend = make_store(store_kind, urls)
    try:
        yield backend
    finally:
        backend.close()


@pytest.fixture
def connect():
    """Another connection to a store: a new RedisStore on the same servers (memory: the
    same object, as there is nothing to connect to).  Closed at the end of the test."""
    made = []

    def factory(first):
        if first.name == "memory":
            return first
        s = type(first)(first.urls)            # RedisStore or RedisClusterStore
        made.append(s)
        return s

    yield factory
    for s in made:
        s.close()


def _devnull_is_device() -> bool:
    try:
        return stat.S_ISCHR(os.stat(os.devnull).st_mode)
    except OSError:
        return False


@pytest.fixture(autouse=True)
def _devnull_stays_a_device() -> Iterator[None]:
    """Tests run as root: a rename over /dev/null makes it a regular file for every later
    test and tool (CI once failed so, far from the cause).  The test that does it fails
    here, named, and /dev/null is made again so that the rest of the run is not affected."""
    before = _devnull_is_device()
    yield
    if before and not _devnull_is_device():
        with contextlib.suppress(OSError):
            os.unlink(os.devnull)
            os.mknod(os.devnull, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
            os.chmod(os.devnull, 0o666)
        pytest.fail(f"this test replaced {os.devnull} with a regular file", pytrace=False)
