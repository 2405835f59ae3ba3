"""Stores a benchmark runs on: the in-process memory store and Redis.

Theory of operation
-------------------
A :class:`StoreSpec` names a store and opens a fresh one for every run, so every
run starts from empty state.  Redis: ``--redis URL[,URL]`` uses those servers
(only CHC's keys are cleared); otherwise :class:`PrivateRedis` starts a
``redis-server`` of this benchmark alone (two for the sharded store test) on
free loopback ports with ``--save "" --appendonly no`` and stops it at the end.
"""

from __future__ import annotations

import dataclasses
import os
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
    name: str                        # memory | redis | redis-2shards
    urls: list[str] | None = None
    packet_cap: int | None = None    # cells on this store use at most this many packets

    def open(self, fresh: bool = True) -> Any:
        if self.name == "memory":
            return MemoryStore()
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    """``n`` redis-server processes of this benchmark alone, on free loopback ports."""

    def __init__(self, binary: str, n: int) -> None:
        self.dir = tempfile.mkdtemp(prefix="chc-bench-redis-")
        self.procs: list[subprocess.Popen] = []
        self.urls: list[str] = []
        try:
            for i in range(n):
                port = _free_port()
                log = open(os.path.join(self.dir, f"redis-{i}.log"), "wb")  # noqa: SIM115 - owned by the process
                proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                         "--appendonly", "no", "--dir", self.dir, "--daemonize", "no"],
                                        stdout=log, stderr=subprocess.STDOUT)
                log.close()
                self.procs.append(proc)
                self.urls.append(f"redis://127.0.0.1:{port}")
                self._wait(port, proc)
        except Exception:
            self.close()
            raise

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
