"""The ``redis-cluster`` store backend: CHC's store on a Redis 7 Cluster.

Theory of operation
-------------------
``redis-cluster://[[USER]:PASSWORD@]HOST:PORT[,redis-cluster://...]`` names any node(s) of
the cluster.  :class:`RedisClusterStore` asks the first node that answers for the slot map
(``CLUSTER SHARDS``), then *is* the sharded :class:`~chc.backends.redis.RedisStore` with one
shard per primary: everything the sharded store does per server (one ``chc_batch`` call per
server per request, sent to all before reading any reply; non-blocking requests;
notifications; the epoch, lease and namespace) it does per primary here, unchanged.

Hash tags.  A shard's keys all carry one hash tag in their prefix,
``<namespace>:{T}:`` (the namespace's own prefix plus ``{T}:``), where ``T`` is the
smallest decimal number whose slot (CRC16 of ``T`` mod 16384) that primary serves.  So an
object, its owner, waiters and subscribers, the clock log its updates are recorded in, the
pre-images, the client-sequence marks and the commit reports of its shard are in one slot:
one ``chc_batch`` call touches one slot only, as Redis Cluster requires of a script, and the
functions run unchanged.  Objects spread over the shards as over the servers of the sharded
store (CRC32 of the key, or of the object family for shared objects, modulo the shards),
so over the primaries; a shard is one slot, so resharding moves a shard as a whole.
Notifications use sharded pub/sub (``SPUBLISH`` in the functions, ``SSUBSCRIBE`` on the
shard's node), whose channels carry the shard's tag: a plain ``PUBLISH`` would reach every
node of the cluster.  The function library is loaded on every primary.

Redirections and failures.  Every batch declares one key of its shard, so a node that no
longer serves the shard's slot answers ``MOVED`` before running anything.  Then the slot
map is read again: if the previous node is still an online primary (the slot was
migrated: ``MIGRATE`` moves keys with their values, so the shard's state is whole on the
new node) requests follow the slot there; if it is not (a replica took over: Redis
replicates asynchronously, so updates the old primary acknowledged may be missing) the
store stops with :class:`StoreLost` instead of going on with state that may have lost
acknowledged updates.  A shard with subscriptions is not followed either (nor is a
subscriber's channel that the old node dropped, ``sunsubscribe``): callbacks published
on the new node before a new subscription would be lost, and caches stale unnoticed.
While a slot is being migrated its keys are on two nodes (``ASK``): requests are
retried until the migration ends, as ``CLUSTERDOWN`` (a node failed and the cluster
noticed) and ``TRYAGAIN`` are; a batch cut short inside a node (a key of it moved
meanwhile) stops the run (see ``RedisStore._check_half_run``).  A node that goes away
is a server that goes away: its requests are retried with backoff, then
:class:`StoreLost` names it.  An unreachable or non-cluster address at start is a one-line
:class:`StoreError` (the CLI exits 2).
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Any

from redis.connection import parse_url
from redis.crc import key_slot
from redis.exceptions import ResponseError

from ..core.client import StoreLost, StoreUnavailable
from ..core.store import StoreError
from .redis import _NETWORK_ERRORS, RedisStore, _clean_text, _command, _Connection, _reason, _Server, redact

SCHEME = "redis-cluster://"
SLOTS = 16384


@dataclass
class _Primary:
    host: str
    port: int
    slots: list[tuple[int, int]]         # inclusive ranges

    def serves(self, slot: int) -> bool:
        return any(lo <= slot <= hi for lo, hi in self.slots)


def _pairs(flat: list) -> dict[bytes, Any]:
    return {flat[i]: flat[i + 1] for i in range(0, len(flat) - 1, 2)}


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def parse_shards(reply: list, seed_host: str) -> tuple[list[_Primary], set[tuple[str, int]]]:
    """``CLUSTER SHARDS`` (RESP2) -> the primaries serving slots (ordered by their first slot)
    and the addresses of every online primary (those without slots too)."""
    primaries, online = [], set()
    for shard in reply:
        d = _pairs(shard)
        flat = [int(x) for x in d.get(b"slots") or []]
        ranges = [(flat[j], flat[j + 1]) for j in range(0, len(flat) - 1, 2)]
        for node in d.get(b"nodes") or []:
            n = _pairs(node)
            if n.get(b"role") != b"master" or n.get(b"health") != b"online":
                continue
            host = _text(n.get(b"endpoint") or b"")
            if host in ("", "?"):
                host = _text(n.get(b"ip") or b"") or seed_host
            addr = (host, int(n[b"port"]))
            online.add(addr)
            if ranges:
                primaries.append(_Primary(addr[0], addr[1], ranges))
    primaries.sort(key=lambda p: min(lo for lo, _ in p.slots))
    return primaries, online


def shard_tag(primary: _Primary) -> bytes:
    """The smallest decimal number whose hash slot ``primary`` serves (its shard's hash tag)."""
    i = 0
    while not primary.serves(key_slot(b"%d" % i)):
        i += 1
    return b"%d" % i


class RedisClusterStore(RedisStore):
    """CHC's store on a Redis Cluster: the sharded Redis store, one shard per primary."""

    cluster = True

    def __init__(self, urls: list[str] | str, **options: Any) -> None:
        if isinstance(urls, str):
            urls = urls.split(",")
        seeds = [u.strip() for u in urls if u.strip()]
        if not seeds:
            raise StoreError(f"the redis-cluster store needs a node address: {SCHEME}HOST:PORT")
        for u in seeds:
            if not u.startswith(SCHEME):
                raise StoreError(f"{redact(u)}: not a {SCHEME}HOST:PORT address")
        self._seeds = seeds
        self._timeouts = (options.get("connect_timeout", 2.0), options.get("timeout", 30.0))
        primaries, _ = self._discover()
        self._tags = [shard_tag(p) for p in primaries]
        super().__init__([self._node_url(p.host, p.port) for p in primaries], **options)
        self.urls = [redact(u) for u in seeds]

    # -- the slot map ---------------------------------------------------------------------
    def _node_url(self, host: str, port: int) -> str:
        """A node's redis:// URL with the seed's credentials."""
        userinfo = urllib.parse.urlsplit(self._seeds[0]).netloc.rpartition("@")[0]
        host = f"[{host}]" if ":" in host else host
        return f"redis://{userinfo + '@' if userinfo else ''}{host}:{port}"

    def _discover(self) -> tuple[list[_Primary], set[tuple[str, int]]]:
        """The slot map from the first seed (then the known nodes) that answers."""
        candidates = ["redis://" + s[len(SCHEME):] for s in self._seeds]
        candidates += [self._node_url(s.params["host"], int(s.params["port"])) for s in getattr(self, "servers", [])]
        failure: tuple[str, BaseException] | None = None
        for url in candidates:
            shown = redact(url.replace("redis://", SCHEME, 1))
            try:
                params = parse_url(url)
            except ValueError as exc:
                raise StoreError(f"{shown}: {exc}") from None
            params["tls"] = None
            try:
                conn = _Connection(params, *self._timeouts, url=shown)
                try:
                    conn.send(_command("CLUSTER", "SHARDS"))
                    reply = conn.read(1)[0]
                finally:
                    conn.close()
            except _NETWORK_ERRORS as exc:
                failure = failure or (shown, exc)
                continue
            if isinstance(reply, ResponseError):
                text = _clean_text(str(reply))
                if "cluster support disabled" in text:
                    raise StoreError(f"{shown}: not a Redis Cluster node (cluster support disabled): "
                                     "use redis://HOST:PORT")
                raise StoreError(f"{shown}: CLUSTER SHARDS: {text}")
            primaries, online = parse_shards(reply, params.get("host") or "127.0.0.1")
            served = sum(hi - lo + 1 for p in primaries for lo, hi in p.slots)
            if served != SLOTS:
                raise StoreError(f"{shown}: the cluster serves {served} of {SLOTS} slots (cluster_state is "
                                 "not ok: a node is down, or the cluster was not created)")
            return primaries, online
        assert failure is not None
        raise StoreUnavailable(f"{failure[0]}: {_reason(failure[1])}")

    def _shard_prefixes(self, n: int) -> list[bytes]:
        return [self.prefix + b"{" + tag + b"}:" for tag in self._tags]

    def _redirected(self, i: int, text: str) -> None:
        """Shard ``i``'s slot is served by another node (``MOVED slot host:port``): follow it
        if the slot was migrated, stop (:class:`StoreLost`) if its primary failed over."""
        parts = text.split()
        host, _, port = parts[2].rpartition(":") if len(parts) >= 3 else ("", "", "0")
        old = self.servers[i]
        if (old.params.get("host"), int(old.params.get("port") or 0)) == (host, int(port)):
            return                                  # already followed
        try:
            _, online = self._discover()
        except StoreError as exc:
            self._lost = f"{old.url}: moved to {host}:{port}, and the slot map is unreadable: {exc}"
            raise StoreLost(self._lost) from None
        if (old.params.get("host"), int(old.params.get("port") or 0)) not in online:
            self._lost = (f"{old.url}: no longer a primary; its shard is now served by {host}:{port} (a "
                          "failover): Redis replicates asynchronously, so updates the old primary acknowledged "
                          "may be missing there; the run cannot continue")
            raise StoreLost(self._lost)
        if old.channels:
            self._subscriptions_lost(old)
        self._broken(i)                             # its unanswered requests are sent again
        old.reset_pubsub()
        new = _Server(self._node_url(host, int(port)), *self._timeouts, self._tls, old.prefix, True)
        new.lock, new.plock = old.lock, old.plock
        self.servers[i] = new
        self._uploaded[i].clear()
        try:
            new.send(_command("FUNCTION", "LOAD", "REPLACE", self._library()))
            reply = new.read(1)[0]
        except _NETWORK_ERRORS:
            new.reset()                             # the retries of the request find out
            return
        if isinstance(reply, ResponseError):
            raise StoreError(f"{new.url}: FUNCTION LOAD: {_clean_text(str(reply))}")

    def describe(self) -> str:
        return f"{self.urls[0]} ({self.n} primaries)"

    def __repr__(self) -> str:
        return f"RedisClusterStore({self.urls!r})"


__all__ = ["RedisClusterStore", "parse_shards", "shard_tag"]
