"""Store backends behind one interface (``execute`` a list of ops = one round trip).

``memory``: the store engine in-process (the embedded default).
``redis``: one or more Redis 7 servers, each op a server-side function.
"""

from __future__ import annotations

from typing import Any


def open_store(url: str, fresh: bool = True) -> Any:
    """``memory`` or ``redis://HOST:PORT[/DB][,redis://...]`` -> a backend.

    ``fresh``: a run starts from empty state, so CHC's keys left in Redis by an
    earlier run (state, client sequence numbers, logs) are deleted first; other
    keys of the database are left alone."""
    if url == "memory":
        from .memory import MemoryStore
        return MemoryStore()
    if url.startswith("redis://"):
        from .redis import RedisStore
        return RedisStore(url.split(","), fresh=fresh)
    raise ValueError(f"unknown store {url!r}: use 'memory' or 'redis://HOST:PORT[/DB][,redis://...]'")
