"""Store backends behind one interface (``execute`` a list of ops = one round trip).

``memory``: the store engine in-process (the embedded default).
``redis``: one or more Redis 7 servers, a request's ops one server-side call per server.
``redis-cluster``: a Redis 7 Cluster, as ``redis`` with one shard per primary.
"""

from __future__ import annotations

import re
from typing import Any


def namespace_of(name: str) -> str:
    """A Redis key namespace from a chain name (the characters a namespace may hold)."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "-", name)[:64] or "chc"


def open_store(url: str, fresh: bool = True, namespace: str = "chc", **options: Any) -> Any:
    """``memory``, ``redis[s]://[[USER]:PASSWORD@]HOST:PORT[/DB][,...]`` or
    ``redis-cluster://[[USER]:PASSWORD@]HOST:PORT`` -> a backend.

    ``fresh``: a run starts from empty state, so the keys of ``namespace`` left in
    Redis by an earlier run (state, client sequence numbers, logs) are deleted
    first, after taking the namespace's lease (refused while another run holds
    it); keys outside the namespace are left alone.  ``options``: ``tls_ca``,
    ``tls_cert``, ``tls_key`` for rediss://."""
    if url == "memory":
        from .memory import MemoryStore
        return MemoryStore()
    if url.startswith("redis-cluster://"):
        from .redis_cluster import RedisClusterStore
        return RedisClusterStore(url.split(","), fresh=fresh, namespace=namespace, **options)
    if url.startswith(("redis://", "rediss://")):
        from .redis import RedisStore
        return RedisStore(url.split(","), fresh=fresh, namespace=namespace, **options)
    from .redis import redact
    raise ValueError(f"unknown store {redact(url)!r}: use 'memory', "
                     "'redis://[[USER]:PASSWORD@]HOST:PORT[/DB][,redis://...]' (rediss:// for TLS) or "
                     "'redis-cluster://[[USER]:PASSWORD@]HOST:PORT' (any node of a Redis Cluster)")
