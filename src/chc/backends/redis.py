"""The ``redis`` store backend: CHC's store on one or more Redis 7 servers.

Theory of operation
-------------------
A request's ops for one server are *one* call of the server-side function
``chc_batch`` of the Redis Functions library ``chc`` (``redis_functions.lua``,
loaded with FUNCTION LOAD REPLACE when a :class:`RedisStore` connects).  In that
one atomic server step it does, op by op and in request order, what
:class:`chc.core.store.StoreEngine` does for an op: the client-sequence dedup
(exactly-once, §4.3), the per-flow ownership check, the clock-log check and
record (§5.3), the operation itself (Table 2, or a custom operation), the commit
report (§5.4) and the callbacks to subscribed clients.  The conformance suite
(``tests/test_store_conformance.py``) runs the same tests against this backend
and the in-process ``memory`` one.

Why one call per request, and why this encoding: a function call and each
``redis.call`` inside it cost more than the work of a get/set/incr (profiled with
``INFO commandstats`` and callgrind, docs/benchmarks.md).  So a batch's ops travel as
*one* binary argument (per op a fixed head that one ``struct.unpack`` reads, then its
strings: one Redis argument per op field cost more server time than the op), the
batch reads what it needs with one variadic command each (HMGET of the ops'
clock-log fields, MGET of the values of get/incr ops), applies get/set/incr of
string values on a per-call cache, and writes back with one MSET, one HSET of
clock-log records, one SET of their pruning index (a string, not a list item per
record), one APPEND of commit reports (the client's own text when every op it
lists was applied, the usual case) and one HSET of sequence marks.  Every other op
(lists, cas, apply, custom, coalesced increments) reads and writes Redis directly
after the cache is written back.  The reply is one msgpack array (an element per
op), which the client decodes in one C call, or not at all for a non-blocking
request, whose acknowledgement needs only to know that no op was refused.

Requests.  ``execute(ops)`` sends each server touched its pipeline (uploads of
big defaults, then the one ``chc_batch`` call), to all servers before reading
any reply: one round trip (``round_trips`` counts one per ``execute``).  If an
op is refused for ownership (:class:`OwnershipError`) or anything but what it is,
the first such refusal in op order is raised after the whole request ran (the
later ops of that request have been applied; retransmitting them is harmless:
their seqs are recorded).  Ops refused for what they are (a value msgpack cannot
carry, refused before sending; ``CHCERR`` from the server: an increment of a
non-number...) are raised together as :class:`~chc.core.store.Refused` after the
request ran, as the memory store does.

Non-blocking requests (EO+C+NA, §4.3).  ``submit(ops, on_ack)`` sends a
request and returns without reading its reply; replies are read as they
arrive (at the next request, without waiting), and before any blocking request
on that connection, whose replies come after them (one connection per server:
Redis answers in order).  A request is acknowledged (``on_ack(highest seq)``)
when every server it went to answered without refusing an op for ownership, and
every request sent before it was acknowledged (acknowledgements are cumulative;
ops refused for what they are come with it: ``on_ack(seq, refused)``); the client
library keeps un-ACKed ops and resends them ahead of its next request
(go-back-N), but an op still in flight on a healthy connection is not put on
the wire again: TCP delivers it ahead of the new request.  When a connection
breaks, its unanswered requests are not acknowledged and the client's resend
carries them again; the clock log and sequence marks make that exactly-once.
``settle`` waits for the last replies at the end of input; ``wait`` for all.

Failures.  An unreachable server at start raises :class:`StoreUnavailable`
naming its (password-redacted) address.  Mid-run, a failed request is retried
with backoff (12 tries, about 9.5 s); past that the store raises
:class:`StoreLost` and every later call does at once: the run cannot go on
without its state (store failover, with checkpoints and TS, runs where a
scenario crashes the store: :mod:`chc.backends.redis_checkpoint`; a run keeps
neither otherwise), and the runtime stops with that one line instead of
dropping packet after packet.  A fresh store (a run's first)
writes an epoch key into its namespace and every ``chc_batch`` checks it, as do
``objects()`` reads: a server that restarted empty or was flushed is never
written or read as if it still held the run's state (:class:`StoreLost`).

Namespaces and leases.  A run's keys are all under its namespace; a fresh
store takes the namespace's lease (a key with a 60 s expiry, renewed every 10 s
by requests, deleted at ``close``) before it deletes the namespace's old keys,
so a second run on a namespace in use is refused and nothing of the first is
touched.  Security: ``redis://:PASSWORD@``, ``redis://USER:PASSWORD@`` (ACL)
and ``rediss://`` (TLS; CA, client certificate and key as options); a missing
or wrong password is a one-line :class:`StoreError`.

Encoding.  Keys live in the store's namespace (``namespace`` + ``:``, default
``chc:``; nothing outside it is read, written or deleted).  Object key:
``<ns>:k:`` + vertex + ``:`` + object + ``:`` + msgpack(scope key) (``%`` and
``:`` in names are %-escaped).  A value is one msgpack string
(``use_bin_type=True``), decoded with ``raw=False, use_list=False``: tuples,
bytes, str, ints, floats, None, bools and dicts round trip; a Python list
stored with ``set`` comes back as a tuple.  A list object (push/pop, or
``declare`` with a list/tuple/range) is a Redis list of msgpack items and reads
back as a Python list (``get``, ``objects``; a ``deque`` from ``subscribe`` and
callbacks, which seed caches).  ``incr`` keeps ints ints and floats floats,
exactly for integers up to 2**53 (Lua numbers are doubles; the store refuses
beyond).  Values msgpack cannot carry (sets, ints beyond 64 bits, arbitrary
objects) are refused (:class:`~chc.core.store.UnstorableValue`) before their op is
sent; the request's other ops go.

Sharding.  With several servers each object lives on exactly one,
``zlib.crc32(k) % n``: for per-flow objects ``k`` is the full object key; for
shared (cross-flow) objects it is ``<ns>:k:`` + vertex + ``:`` + object, so every
key of one object family is on one server and a custom op over counters of one
family (``argmin_incr``) is one atomic step.  A custom op whose ObjectKey
arguments span servers is refused.  Client-sequence dedup state is per server:
each server sees the subsequence of a client's ops addressed to it, still in
increasing seq order.  Commit reports of several servers are returned server by
server.  Every key of a server's shard starts with that server's prefix: the
namespace's (``<ns>:``) on plain servers; on a Redis Cluster
(:mod:`chc.backends.redis_cluster`, one shard per primary) the namespace's plus the
shard's hash tag (``<ns>:{T}:``), so the shard is one slot.  Each function call
declares one key of its shard: a cluster node that does not serve it answers
``MOVED`` before running anything (``_redirected``), and a plain redis:// URL of a
cluster node is refused at start.

Notifications.  Callbacks and ownership handovers are published on a channel
per client; one pub/sub connection per server listens for the clients that
called ``subscribe``/``take`` through this store.  ``notifications(client)``
first PINGs each pub/sub connection and reads up to the PONG, so every
notification caused by an already acknowledged update is delivered (as with the
memory store), without waiting otherwise.

TS (§5.4 store failover).  Once ``keep_ts`` has set the namespace's ``ts`` key,
``chc_batch`` keeps per client the stamp of its last applied shared-state update
(hash ``t``) and sends TS with every reply carrying a value of shared state (ext 4,
decoded to :class:`~chc.core.recovery.Stamped`), as a
:class:`~chc.core.recovery.RecoverableEngine` does.

Pre-images (§5.4 NF failover).  Once ``keep_preimages`` has set the namespace's
``pre`` key (the runtime does when a scenario can crash an instance), ``chc_batch``
records, for each tagged update it applies (and each counter an ``argmin_incr`` may
change), the object's value before the first update of that clock: in one hash per
server, ordered by (batch, index), pruned by ``chc_prune`` with the clock log.  The
batch reads the switch with the epoch (one MGET): off, it costs nothing.
``objects_at(vertex, replayed)`` gives what :meth:`StoreEngine.objects_at` gives: the
vertex's objects with, per object, the value before the first (in its server's
application order) update of any replayed clock; shards are read one by one, as
``objects`` does.

Retransmission is exactly-once for ops with a seq (the client library always
sets one) and for tagged updates; a retransmitted update whose tag is still in
the clock log gets its recorded result, and one refused for what it is is refused
again until its clock is pruned, as from the memory engine (see
:mod:`chc.core.store`).  A Redis restart keeps every acknowledged update if the
server runs with
``appendonly yes`` and ``appendfsync always`` (the test fixtures start it so):
the reply is sent after the AOF write.  The dedup state (highest seq per
client), clock logs, owners and the function library live in Redis too, so a
request retransmitted after the reconnect is not applied twice.  Notifications
published while a pub/sub connection is down are lost (a callback cache may
then be stale until the next update of that object).  The dedup cannot be
turned off here: ``dedup`` is always True (``--break no-dedup`` needs the
memory store).

A run needs an empty namespace: client ids are ``vertex/instance`` with seqs
from 1, so another run's dedup state would make this run's ops look like
retransmissions (a fresh store clears its namespace; a warning is issued when a
store that is not fresh finds CHC state).
Custom operations (``register``) and value operations (``apply``; the Lua
chunks of :func:`chc.nf.value_op`, added to the library when the store connects
or on first use) live in the ``chc`` library that every :class:`RedisStore`
loads (FUNCTION LOAD REPLACE) when it connects: a process must register its
custom ops itself.  Lua has one number type: a value op's new value keeps the
number types of the value it replaces; other integral results come back as
floats when the value or an argument held a float, else as ints (a Lua chunk
can say which with ``CHC.float(x)`` / ``CHC.int(x)``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import select
import socket
import ssl
import struct
import threading
import time
import urllib.parse
import uuid
import warnings
import zlib
from collections import deque
from collections.abc import Callable, Hashable
from itertools import chain
from pathlib import Path
from types import MappingProxyType
from typing import Any

import msgpack
from redis.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..core.client import StoreLost, StoreUnavailable
from ..core.recovery import Stamp, Stamped
from ..core.store import CLOCK_BITS, CustomOp, ObjectKey, Op, OwnershipError, Refused, StoreError, UnstorableValue
from ..nf import VALUE_OPS

try:                                    # the C reply parser, when installed (not required)
    import hiredis
except ImportError:                     # pragma: no cover - depends on the environment
    hiredis = None

LIBRARY = (Path(__file__).with_name("redis_functions.lua")).read_text(encoding="utf-8")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_KEY_CACHE_MAX = 100_000
_NETWORK_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)
_MAX_BACKOFF = 1.0         # seconds: the default 12 tries span about 9.5 s of outage
# A custom or value operation's block in the library: kind, name, length of the block that follows.
_OP_HEADER = re.compile(r"\n-- chc-op (custom|value) ([A-Za-z_][A-Za-z0-9_]*) (\d+)\n")
_LEASE_MS = 60_000         # a run's hold on its namespace lapses this long after it stops renewing
_LEASE_RENEW = 10.0        # seconds between renewals (during requests)
_PASSWORD = re.compile(r"(rediss?(?:-cluster)?://)([^:@/]*):[^@/]*@")
_NAMESPACE = re.compile(r"[A-Za-z0-9_.\-]{1,64}\Z")
# Error replies of a server not ready yet, or of a cluster slot being migrated (ASK: the shard's
# keys are split between two nodes until the migration ends) or of a cluster that lost a node.
_RETRY_LATER = ("LOADING", "MASTERDOWN", "TRYAGAIN", "ASK ", "CLUSTERDOWN")
_BIG_DEFAULT = 64           # list defaults longer than this are sent by reference

_pack = msgpack.Packer(use_bin_type=True).pack


PIPELINE_WINDOW = 64        # non-blocking requests in flight before submit waits for their replies


class NamespaceInUse(StoreError):
    """A fresh store's namespace is leased by another run (``holder``).  The message says
    what to do: wait, or ``hint`` (another namespace or database; a caller that picks the
    database itself, as ``chc check --jobs`` does, says its own)."""

    def __init__(self, url: str, namespace: str, holder: str,
                 hint: str = "choose another namespace (--namespace NAME) or database (redis://HOST:PORT/DB)"
                 ) -> None:
        self.url, self.namespace, self.holder = url, namespace, holder
        super().__init__(f"{url}: namespace {namespace!r} is in use by another run ({holder}); wait for it to "
                         f"end (its lease expires {_LEASE_MS // 1000} s after it stops), or {hint}")

    def hinting(self, hint: str) -> NamespaceInUse:
        """The same refusal with another ``hint``."""
        return NamespaceInUse(self.url, self.namespace, self.holder, hint)


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, use_list=False, strict_map_key=False)


def _encode(value: Any, what: str = "value") -> bytes:
    try:
        return _pack(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise UnstorableValue(f"the redis store cannot hold {what} {value!r}: {exc}", what, value,
                              _unpackable(value)) from None


def _unpackable(value: Any) -> Any:
    """The innermost part of ``value`` msgpack cannot carry (None: it can)."""
    try:
        _pack(value)
        return None
    except (TypeError, ValueError, OverflowError):
        pass
    parts = (list(value.keys()) + list(value.values()) if isinstance(value, dict)
             else list(value) if isinstance(value, (list, tuple)) else [])
    return next((bad for bad in map(_unpackable, parts) if bad is not None), value)


def _esc(name: str) -> bytes:
    return name.replace("%", "%25").replace(":", "%3A").encode()


def _unesc(raw: bytes) -> str:
    return raw.decode().replace("%3A", ":").replace("%25", "%")


def _glob_escape(raw: bytes) -> bytes:
    return re.sub(rb"([*?\[\]\\])", rb"\\\1", raw)


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if "refused" in text.lower():
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"no such host ({exc.strerror})"
    if isinstance(exc, ssl.SSLError) or "handshake" in text.lower():
        return f"TLS failed ({text}); is the server speaking TLS? (rediss:// is for TLS, redis:// for plain)"
    return text


def _bulk(arg: Any) -> bytes:
    if isinstance(arg, bytes):
        b = arg
    elif isinstance(arg, str):
        b = arg.encode()
    else:
        b = b"%d" % arg
    return b"$%d\r\n%s\r\n" % (len(b), b)


def _command(*args: Any) -> bytes:
    """One command in RESP."""
    return b"*%d\r\n" % len(args) + b"".join(map(_bulk, args))


# One key declared (the shard's epoch key): a cluster node answers MOVED for a shard it does
# not serve, before anything runs, instead of failing inside the function.
_BATCH_HEAD = b"$5\r\nFCALL\r\n$9\r\nchc_batch\r\n$1\r\n1\r\n"
# op code -> its number in a chc_batch call (CODES in redis_functions.lua)
_CODE_NUM = {c: i + 1 for i, c in enumerate(("get", "set", "incr", "incr_many", "push", "pop", "cas", "delete",
                                             "custom", "apply"))}
# An op's head in a chc_batch call (HEAD in redis_functions.lua): code, flags (1 = per-flow),
# client index, seq, XOR id, lengths of the instance, tag, key, default and four operands.
_HEAD = struct.Struct(">BBHdIBBIIIIII").pack
_ABSENT = object()          # reply element of a get of an absent object (ext 2)
_REFUSED = object()         # reply element of a refused op (ext 3; its error follows)


def _reply_values(blob: bytes) -> tuple[list, bool]:
    """A ``chc_batch`` reply's elements (one msgpack array; see redis_functions.lua) and
    whether any of them is special (absent, refused): then the caller looks at each."""
    special: list[int] = []

    def ext(code: int, data: bytes) -> Any:
        special.append(code)
        if code == 1:
            return list(_unpack(data))          # a list object's contents
        if code == 4:                           # §5.4 a reply with TS (keep_ts): TS text, then the reply
            parts = msgpack.Unpacker(raw=False, use_list=False, strict_map_key=False, ext_hook=ext)
            parts.feed(data)
            ts = _ts(next(parts))
            result = next(parts)
            # (a list object's contents as the engine holds them: the roll forward may start
            # from this value, and push/pop need a deque; a value is never a list here)
            return Stamped(deque(result) if result.__class__ is list else result, ts)
        return _ABSENT if code == 2 else _REFUSED

    values = msgpack.unpackb(blob, raw=False, use_list=False, strict_map_key=False, ext_hook=ext)
    return list(values), bool(special)


def _untag(tagged: bytes, lists: type = list) -> Any:
    """A tagged value ("V" + msgpack, or "L" + a list object's items as a msgpack array;
    see redis_functions.lua) as a value, a list object's contents as ``lists``."""
    value = _unpack(tagged[1:])
    return lists(value) if tagged[:1] == b"L" else value


def _ts(text: str) -> MappingProxyType:
    """TS as ``chc_batch`` sends it ("wire-client clock seq" lines) by client id."""
    ts = {}
    for line in text.splitlines():
        wire, clock, seq = line.rsplit(" ", 2)
        ts[wire.partition("|")[2]] = Stamp(int(clock), int(seq))
    return MappingProxyType(ts)


class _Connection:
    """A minimal RESP2 connection (pipelined sends, replies read from one buffer).

    redis-py's connection costs more per round trip than the server spends on an
    op (without hiredis); this one is a few lines and does what the store needs.
    Replies are parsed by hiredis when it is installed, else in Python.  Error
    replies are returned as ResponseError objects, not raised.
    """

    def __init__(self, params: dict, connect_timeout: float, timeout: float, url: str = "") -> None:
        if params.get("path"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(connect_timeout)
            sock.connect(params["path"])
        else:
            sock = socket.create_connection((params.get("host") or "127.0.0.1", int(params.get("port") or 6379)),
                                            timeout=connect_timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        tls = params.get("tls")
        if tls is not None:
            sock = _tls_context(tls, url).wrap_socket(sock, server_hostname=params.get("host") or "127.0.0.1")
        sock.settimeout(timeout)
        self.sock = sock
        self.buf = b""
        self.pos = 0
        self.parser = hiredis.Reader(replyError=ResponseError) if hiredis is not None else None
        setup = []
        if params.get("password"):
            setup.append(_command("AUTH", *([params["username"]] if params.get("username") else []),
                                  params["password"]))
        if params.get("db"):
            setup.append(_command("SELECT", int(params["db"])))
        # PING: a server that wants a password says so here, before the first real command
        # (whose big arguments an unauthenticated connection gets a "Protocol error" for).
        setup.append(_command("PING"))
        self.send(b"".join(setup))
        for r in self.read(len(setup)):
            if isinstance(r, ResponseError):
                self.close()
                raise StoreError(f"{url}: {_auth_text(str(r))}")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        data = self.sock.recv(262144)
        if not data:
            raise RedisConnectionError("connection closed by the server")
        self.buf = self.buf[self.pos:] + data if self.pos < len(self.buf) else data
        self.pos = 0

    def _line(self) -> bytes:
        while True:
            i = self.buf.find(b"\r\n", self.pos)
            if i >= 0:
                line = self.buf[self.pos:i]
                self.pos = i + 2
                return line
            self._fill()

    def reply(self) -> Any:
        parser = self.parser
        if parser is not None:
            while True:
                r = parser.gets()
                if r is not False:
                    return r
                data = self.sock.recv(262144)
                if not data:
                    raise RedisConnectionError("connection closed by the server")
                parser.feed(data)
        line = self._line()
        t = line[:1]
        if t == b"$":
            n = int(line[1:])
            if n < 0:
                return None
            while len(self.buf) < self.pos + n + 2:
                self._fill()
            data = self.buf[self.pos:self.pos + n]
            self.pos += n + 2
            return data
        if t == b"*":
            n = int(line[1:])
            return None if n < 0 else [self.reply() for _ in range(n)]
        if t == b":":
            return int(line[1:])
        if t == b"+":
            return line[1:]
        if t == b"-":
            return ResponseError(line[1:].decode("utf-8", "replace"))
        raise RedisConnectionError(f"protocol error: unexpected reply {line[:40]!r}")

    def read(self, n: int) -> list[Any]:
        return [self.reply() for _ in range(n)]

    def readable(self) -> bool:
        if self.pos < len(self.buf):
            return True
        if self.parser is not None and self.parser.has_data():
            return True
        try:
            return bool(select.select([self.sock], [], [], 0)[0]) or \
                (isinstance(self.sock, ssl.SSLSocket) and self.sock.pending() > 0)
        except (OSError, ValueError):
            return True                     # the read will tell what is wrong

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def redact(url: str) -> str:
    """``url`` without its password (``redis://:***@host``), for messages and summaries."""
    return _PASSWORD.sub(r"\1\2:***@", url)


def _auth_text(reply: str) -> str:
    """A one-line explanation of a refused AUTH/PING."""
    low = reply.lower()
    if "wrongpass" in low or "invalid password" in low or "invalid username-password" in low:
        return "authentication failed: wrong user name or password"
    if "noauth" in low or "authentication required" in low or "unauthenticated" in low:
        return ("authentication required: the server wants a password "
                "(redis://:PASSWORD@HOST:PORT, or redis://USER:PASSWORD@HOST:PORT for an ACL user)")
    return reply


def _tls_context(tls: dict, url: str) -> ssl.SSLContext:
    try:
        ctx = ssl.create_default_context(cafile=tls.get("ca") or None)
        if tls.get("cert"):
            ctx.load_cert_chain(tls["cert"], tls.get("key") or None)
    except (OSError, ssl.SSLError) as exc:
        raise StoreError(f"{url}: TLS setup: {exc}") from None
    return ctx


class _Server:
    """One Redis server: a command connection and, once needed, a pub/sub one."""

    def __init__(self, url: str, connect_timeout: float, timeout: float, tls: dict | None = None,
                 prefix: bytes = b"chc:", sharded: bool = False) -> None:
        self.url = redact(url)                  # what messages and summaries show
        # The key prefix of this server's shard: the namespace's, plus a hash tag on a cluster
        # (every key of the shard in one slot, see redis_cluster.py).
        self.prefix = prefix
        self.prefix_bulk = _bulk(prefix)
        self.epoch_key_bulk = _bulk(prefix + b"epoch")
        # Sharded pub/sub (SSUBSCRIBE/SPUBLISH) on a cluster: a plain PUBLISH reaches every node.
        self.sharded = sharded
        if url.startswith("rediss://"):
            url = "redis://" + url[len("rediss://"):]
            query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
            tls = {"ca": query.get("ssl_ca_certs") or (tls or {}).get("ca"),
                   "cert": query.get("ssl_certfile") or (tls or {}).get("cert"),
                   "key": query.get("ssl_keyfile") or (tls or {}).get("key")}
            url = url.split("?", 1)[0]
        elif not url.startswith(("redis://", "unix://")):
            raise StoreError(f"{self.url}: not a redis:// or rediss:// URL")
        else:
            tls = None
        try:
            self.params = parse_url(url)
        except ValueError as exc:
            raise StoreError(f"{self.url}: {exc}") from None
        path = urllib.parse.urlsplit(url).path.strip("/")
        if url.startswith("redis://") and path and not path.isdigit():
            # (redis-py reads a path that is not a number as database 0, silently)
            raise StoreError(f"{self.url}: the path must be a database number (redis://HOST:PORT/DB), "
                             f"not {path!r}")
        self.params["tls"] = tls
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.db = int(self.params.get("db") or 0)
        self.conn: _Connection | None = None
        self.pending: deque = deque()        # submitted requests' replies still to read, in order
        self.lock = threading.RLock()
        self.pubsub: _Connection | None = None
        self.channels: set[bytes] = set()
        self.dropped: set[bytes] = set()     # sharded channels the node unsubscribed (their slot moved)
        self.plock = threading.RLock()

    def _connect(self) -> _Connection:
        return _Connection(self.params, self.connect_timeout, self.timeout, self.url)

    def reset(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def send(self, data: bytes) -> None:
        if self.conn is None:
            self.conn = self._connect()
        self.conn.send(data)

    def read(self, n: int) -> list[Any]:
        assert self.conn is not None
        return self.conn.read(n)

    def readable(self) -> bool:
        """A reply has (started to) come in: reading it will not wait on the server."""
        return self.conn is not None and self.conn.readable()

    # -- pub/sub --------------------------------------------------------------------
    def pubsub_connection(self, sink: list) -> _Connection:
        if self.pubsub is None:
            conn = self._connect()
            for ch in self.channels:
                conn.send(_command(self._subscribe, ch))
                self._await(conn, self._subscribe_kind, ch, sink)
            self.pubsub = conn
        return self.pubsub

    def reset_pubsub(self) -> None:
        if self.pubsub is not None:
            self.pubsub.close()
            self.pubsub = None

    @property
    def _subscribe(self) -> str:
        return "SSUBSCRIBE" if self.sharded else "SUBSCRIBE"

    @property
    def _subscribe_kind(self) -> bytes:
        return b"ssubscribe" if self.sharded else b"subscribe"

    def _await(self, conn: _Connection, kind: bytes, channel: bytes | None, sink: list) -> None:
        """Read pub/sub replies up to the ``kind`` one; published messages go to ``sink``."""
        while True:
            msg = conn.reply()
            if isinstance(msg, ResponseError):
                raise StoreError(f"redis pub/sub: {msg}")
            if not isinstance(msg, list):
                msg = [b"pong", msg]
            if msg[0] in (b"message", b"smessage"):
                sink.append((msg[1], msg[2]))
                continue
            if msg[0] == b"sunsubscribe" and kind != b"sunsubscribe":
                self.dropped.add(msg[1])        # a cluster node gave the slot away: see notifications()
                continue
            if msg[0] == kind and (channel is None or msg[1] == channel):
                return

    def subscribe(self, channel: bytes, sink: list) -> None:
        with self.plock:
            if channel in self.channels:
                return
            self.channels.add(channel)
            if self.pubsub is None:
                self.pubsub_connection(sink)      # subscribes every channel, this one included
                return
            try:
                self.pubsub.send(_command(self._subscribe, channel))
                self._await(self.pubsub, self._subscribe_kind, channel, sink)
            except _NETWORK_ERRORS:
                self.reset_pubsub()
                self.pubsub_connection(sink)

    def drain(self, sink: list) -> None:
        """Every message published before now (PING, then read up to the PONG)."""
        with self.plock:
            if not self.channels:
                return
            for attempt in range(2):
                try:
                    conn = self.pubsub_connection(sink)
                    conn.send(_command("PING"))
                    self._await(conn, b"pong", None, sink)
                    return
                except _NETWORK_ERRORS:
                    self.reset_pubsub()
                    if attempt:
                        return              # best effort: callbacks refresh caches only

    def close(self) -> None:
        self.reset()
        self.reset_pubsub()


class _Request:
    """A submitted (non-blocking) request: acknowledged once every server it went to answered."""

    __slots__ = ("ops", "seq", "on_ack", "left", "uploading", "failed", "done", "refused", "where", "refusals")

    def __init__(self, ops: list[Op], seq: int, on_ack: Callable[..., None], counts: dict[int, int],
                 uploading: set, where: list, refusals: list) -> None:
        self.ops = ops
        self.seq = seq
        self.on_ack = on_ack
        self.left = dict(counts)            # server -> ops it answers
        self.uploading = uploading
        self.failed = False
        self.done = not counts              # (every op refused before sending: nothing to answer)
        self.refused = False
        self.where = where                  # each op's (server, index in its batch), None: refused here
        self.refusals = refusals            # (op, error) refused for what they are: with the ack

    def answer(self, store: RedisStore, srv: int, out: Any) -> None:
        self.left.pop(srv)
        for digest in [d for s, d in self.uploading if s == srv]:
            store._uploaded[srv].add(digest)
        if isinstance(out, ResponseError):
            store._batch_refused(srv, str(out))
            self.refused = True
        for e in out[1:] if not isinstance(out, ResponseError) else ():
            i, _, raw = e.partition(b" ")
            text = raw.decode("utf-8", "replace")
            store._check_half_run(srv, text)
            if _refused_for_itself(text):
                # Refused for what it is (a non-number incremented...): final, the others ran;
                # the acknowledgement carries it to the client (on_ack(seq, refusals)).
                op = self.ops[self.where.index((srv, int(i) - 1))]
                self.refusals.append((op, store._error(op, ResponseError(text))))
            else:
                # Any other refusal (ownership): not acknowledged, as the simulated store does;
                # the client sends it again and the store answers it as a retransmission.
                self.refused = True
        if not self.left and not self.failed:
            self.done = True                # (acknowledged in request order: RedisStore._ack_in_order)

    def acknowledge(self) -> None:
        if self.refusals:
            self.on_ack(self.seq, self.refusals)
        else:
            self.on_ack(self.seq)


class RedisStore:
    """CHC's store on Redis (see the module docstring); the interface of MemoryStore."""

    name = "redis"

    def __init__(self, urls: list[str] | str, *, attempts: int = 12, backoff: float = 0.1,
                 connect_timeout: float = 2.0, timeout: float = 30.0, fresh: bool = False,
                 namespace: str = "chc", lease: bool | None = None, tls_ca: str | None = None,
                 tls_cert: str | None = None, tls_key: str | None = None) -> None:
        """``fresh``: this store starts a run: it takes the namespace's lease (refused while
        another run holds it; ``lease`` says otherwise), deletes the namespace's keys and
        writes a new epoch.  Every store of the run checks the epoch on each request, so
        one that restarted empty is noticed (:class:`StoreLost`).  ``tls_*``: CA bundle,
        client certificate and key for ``rediss://`` servers (the URL's ``ssl_ca_certs``,
        ``ssl_certfile``, ``ssl_keyfile`` query options win)."""
        if isinstance(urls, str):
            urls = urls.split(",")
        urls = [u.strip() for u in urls if u.strip()]
        if not urls:
            raise StoreError("the redis store needs at least one redis://HOST:PORT[/DB] address")
        if not _NAMESPACE.match(namespace):
            raise StoreError(f"namespace {namespace!r}: use 1 to 64 of the characters A-Z a-z 0-9 _ . -")
        self.namespace = namespace
        self.prefix = namespace.encode() + b":"
        self.attempts = max(1, attempts)
        self.backoff = backoff
        tls = {"ca": tls_ca, "cert": tls_cert, "key": tls_key}
        self._tls = tls
        self._timeouts = (connect_timeout, timeout)
        self.servers = [_Server(u, connect_timeout, timeout, tls, p, self.cluster)
                        for u, p in zip(urls, self._shard_prefixes(len(urls)), strict=True)]
        self.urls = [srv.url for srv in self.servers]       # passwords redacted
        self.n = len(self.servers)
        self.round_trips = 0
        self.ops = 0
        self.sent_ops = 0                   # ops put on the wire (resends of in-flight or applied ops left out)
        self.customs: dict[str, str] = {}
        self.value_ops: dict[str, str] = {name: v.lua for name, v in VALUE_OPS.items()
                                          if v.lua and _NAME.match(name)}
        self._keys: dict[ObjectKey, tuple[bytes, int, int, int]] = {}   # rkey, server, per-flow flag, len
        self._wire: dict[tuple[str, int], bytes] = {}   # (client id, db) -> wire id
        self._big: dict[tuple[type, int], list[tuple]] = {}         # big defaults: (copy, digest, msgpack)
        self._big_ids: dict[int, tuple] = {}
        self._uploaded: list[set[bytes]] = [set() for _ in self.servers]
        self._clients: dict[bytes, tuple[str, int]] = {}  # channel -> client id, server
        self._listening: set[str] = set()             # clients whose channels are subscribed
        self._watched: dict[bytes, ObjectKey] = {}    # redis key -> ObjectKey (subscribe/take)
        self._inbox: dict[str, list[tuple]] = {}
        self._inbox_lock = threading.Lock()
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}".encode()
        self.epoch = b""
        self._epoch_bulk = _bulk(b"")
        self._running = False               # set once connected: later failures are fatal (StoreLost)
        # Called while a retry backs off and before each round trip: a proc worker's
        # heartbeats go on, so a store that is gone reads as that (StoreLost), not as a
        # worker hung for its retry budget, and a long scan is no hang either.
        self.waiting: Callable[[], None] | None = None
        self._inflight: dict[tuple[str, int], _Request] = {}     # (client, seq) of submitted, unanswered ops
        self._inflight_reqs: deque[_Request] = deque()
        self.window = PIPELINE_WINDOW
        self._lost = ""
        self.down = False                   # the sim's store crash (§5.4 store failover): requests are lost
        self._lease = fresh if lease is None else lease
        self._lease_due = 0.0
        used = False
        for i in range(self.n):
            if not self.cluster:
                self._not_a_cluster_node(i)
        if self.n > 1 and not self.cluster:
            self._each_server_once()
        for i in range(self.n):
            try:
                self._load_library(i, attempts=min(self.attempts, 3))
            except StoreUnavailable:
                raise
            except StoreError as exc:
                if "unknown command" in str(exc).lower():
                    raise StoreError(f"{self.servers[i].url}: the redis store needs Redis 7 or later "
                                     f"(Redis Functions): {exc}") from None
                raise
            if self._lease:
                self._take_lease(i)
            if fresh:
                self._clear(i)
                p = self.servers[i].prefix
                self._call(i, [("SET", p + b"epoch", self.token), ("SET", p + b"lease", self.token, "PX", _LEASE_MS)])
            used = used or bool(self._call(i, [("EXISTS", self.servers[i].prefix + b"q")], attempts=1)[0])
        if fresh:
            self.epoch = self.token
        else:
            self.epoch = self._call(0, [("GET", self.servers[0].prefix + b"epoch")])[0] or b""
        self._epoch_bulk = _bulk(self.epoch)
        self._running = True
        self._lease_due = time.monotonic() + _LEASE_RENEW
        # (a process joining a run whose lease another holds, a proc runtime's scale-out or
        # failover, finds the run's own state there: no warning)
        if used and not (lease is False and not fresh):
            warnings.warn(f"{self.describe()}: the store already holds CHC state (client sequence numbers of "
                          "an earlier run); ops of clients with the same ids count as retransmissions - "
                          "use an empty database for a new run", RuntimeWarning, stacklevel=2)

    # -- shards (a cluster store overrides these) --------------------------------------------
    cluster = False               # a RedisClusterStore: shards carry hash tags, pub/sub is sharded
    # Taking callbacks is a round trip (notifications: PING on the pub/sub connection): the
    # store client takes them before each batch, not after every request (core.client).
    callbacks_per_batch = True

    def _shard_prefixes(self, n: int) -> list[bytes]:
        """The key prefix of each server's shard: the namespace's on plain servers."""
        return [self.prefix] * n

    def _not_a_cluster_node(self, i: int) -> None:
        """Refuse a Redis Cluster node given as redis://: its keys must be in its own slots,
        and only the cluster store places them so (before loading a library that would
        replace a cluster run's there)."""
        info = self._round_trip({i: [_command("INFO", "cluster")]}, attempts=min(self.attempts, 3))[i][0]
        if isinstance(info, bytes) and b"cluster_enabled:1" in info:     # (an ACL may refuse INFO)
            raise StoreError(f"{self.servers[i].url} is a Redis Cluster node: use --store redis-cluster://HOST:PORT")

    def _each_server_once(self) -> None:
        """Refuse a server named twice (``localhost`` and ``127.0.0.1``, or one URL twice):
        its two shards would be one keyspace, and the run's state silently wrong."""
        seen: dict[tuple[bytes, int], int] = {}
        for i, srv in enumerate(self.servers):
            info = self._round_trip({i: [_command("INFO", "server")]}, attempts=min(self.attempts, 3))[i][0]
            run_id = re.search(rb"run_id:(\w+)", info) if isinstance(info, bytes) else None
            if run_id is None:
                continue                    # (an ACL may refuse INFO: nothing to compare)
            first = seen.setdefault((run_id.group(1), srv.db), i)
            if first != i:
                raise StoreError(f"{srv.url} is the server of {self.servers[first].url} again (database "
                                 f"{srv.db} of one Redis server): name each server once")

    def _redirected(self, i: int, text: str) -> None:
        """Server ``i`` answered MOVED: a plain redis:// server is a cluster node."""
        raise StoreError(f"{self.servers[i].url} is a Redis Cluster node (it answered {text.split(' ', 1)[0]}): "
                         "use --store redis-cluster://HOST:PORT")

    @property
    def dedup(self) -> bool:
        """Retransmitted ops are always recognised here (§4.3, §5.3)."""
        return True

    @dedup.setter
    def dedup(self, on: bool) -> None:
        if not on:
            raise StoreError("turning the store's dedup off (--break no-dedup) is for the memory store only: "
                             "the redis store's Lua function always deduplicates")

    def _take_lease(self, i: int) -> None:
        """Hold (or renew) the namespace's lease on server ``i``; refused while another run holds it."""
        p = self.servers[i].prefix
        holder = self._call(i, [("FCALL", "chc_lease", 1, p + b"lease", p, self.token, _LEASE_MS)])[0]
        if holder != b"ok":
            raise NamespaceInUse(self.servers[i].url, self.namespace, holder.decode(errors="replace"))

    def renew_lease(self) -> None:
        """Renew the namespace's lease if it is due: for a holder that makes no requests
        while other processes work in its namespace (the proc runtime's coordinator)."""
        if self._lease and time.monotonic() >= self._lease_due:
            self._renew()

    def _renew(self) -> None:
        self._lease_due = time.monotonic() + _LEASE_RENEW
        for i in range(self.n):
            self._take_lease(i)

    def _clear(self, i: int) -> int:
        """Delete every key of this store's namespace on server ``i`` (of every shard
        prefix, on a cluster node); other keys stay."""
        cursor, n = b"0", 0
        match = _glob_escape(self.prefix) + b"*"
        while True:
            cursor, keys = self._call(i, [("SCAN", cursor, "MATCH", match, "COUNT", 1000)], attempts=1)[0]
            if keys:
                # a cluster node refuses a command over several slots: one key per UNLINK there
                self._call(i, [("UNLINK", k) for k in keys] if self.cluster else [("UNLINK", *keys)], attempts=1)
                n += len(keys)
            if cursor in (b"0", 0, "0"):
                return n

    # -- transport ------------------------------------------------------------------------
    def _library(self, loaded: str = "") -> str:
        """The ``chc`` library with this store's custom and value operations, and those of
        ``loaded`` (the library the server has: another run's on the same server, whose
        operations a plain REPLACE would take away from it mid-run).  Each operation is one
        block behind a header naming it and its length (``_OP_HEADER``)."""
        blocks: dict[tuple[str, str], str] = {}
        if loaded.startswith(LIBRARY):
            for m in _OP_HEADER.finditer(loaded, len(LIBRARY)):
                blocks[(m[1], m[2])] = loaded[m.end():m.end() + int(m[3])]
        for name, body in self.customs.items():
            blocks[("custom", name)] = f"CUSTOM['{name}'] = function(op)\n{body}\nend\n"
        for name, body in self.value_ops.items():
            blocks[("value", name)] = f"VALUE_OPS['{name}'] = function(value, args)\n{body}\nend\n"
        parts = [LIBRARY]
        if self.cluster:
            parts.append("\nPUBLISH = 'SPUBLISH'\n")
        for (kind, name), block in blocks.items():
            parts.append(f"\n-- chc-op {kind} {name} {len(block)}\n{block}")
        return "".join(parts)

    def _load_library(self, i: int, attempts: int | None = None) -> None:
        """FUNCTION LOAD REPLACE on server ``i``, keeping the operations another run loaded
        there (:meth:`_library`).  (Two runs loading at the same moment can still miss each
        other's newest operation: the read and the load are two commands.)"""
        listed = self._call(i, [("FUNCTION", "LIST", "LIBRARYNAME", "chc", "WITHCODE")], attempts=attempts)[0]
        loaded = ""
        for lib in listed or ():
            fields = dict(zip(lib[::2], lib[1::2], strict=True))
            if fields.get(b"library_name") == b"chc":
                code = fields.get(b"library_code") or b""
                loaded = code.decode() if isinstance(code, bytes) else code
        self._call(i, [("FUNCTION", "LOAD", "REPLACE", self._library(loaded))], attempts=attempts)

    def _reload(self) -> None:
        for i in range(self.n):
            self._load_library(i)

    def _load_value_op(self, name: str) -> None:
        """Add a value operation (chc.nf.value_op) to the library, from its Lua chunk."""
        vop = VALUE_OPS.get(name)
        if vop is None or not isinstance(name, str) or not _NAME.match(name):
            return                              # the store refuses it: unknown value operation
        if not vop.lua:
            raise StoreError(f"value operation {name!r} has no Lua chunk: the redis store runs value "
                             "operations inside Redis (chc.nf.value_op(name, lua=...))")
        self.value_ops[name] = vop.lua
        try:
            self._reload()
        except StoreError as exc:
            del self.value_ops[name]
            self._reload()
            raise StoreError(f"value operation {name!r}: its Lua chunk does not load: {exc}") from None

    def _unavailable(self, server: _Server, exc: BaseException) -> StoreUnavailable:
        # (a URL without a port means Redis's 6379: said, as the user may not know it)
        port = "" if urllib.parse.urlsplit(server.url).port or server.url.startswith("unix:") else \
            f" (port {server.params.get('port', 6379)}, the default)"
        return StoreUnavailable(f"{server.url}: {_reason(exc)}{port}")

    def _round_trip(self, groups: dict[int, list[bytes]], attempts: int | None = None) -> dict[int, list]:
        """Send each server its (RESP-encoded) commands, to all servers before reading any
        reply; retry the failed servers' parts."""
        attempts = self.attempts if attempts is None else attempts
        if self._lost:
            raise StoreLost(self._lost)
        if self.waiting is not None:
            # (a proc worker's heartbeats go on through long scans too: an NF failover's
            # objects_at is hundreds of round trips, and the store server in front of Redis
            # that ran one under load went 6.2 s without a beat and was killed as hung)
            self.waiting()
        self._drain(block=True, servers=groups)     # replies of submitted requests come first
        t0 = time.monotonic()
        order = sorted(groups)
        locks = [self.servers[i].lock for i in order]
        for lock in locks:
            lock.acquire()
        try:
            replies: dict[int, list] = {}
            pending = order
            tries = 0
            while True:
                failed: dict[int, BaseException] = {}
                sent = []
                for i in pending:
                    try:
                        self.servers[i].send(b"".join(groups[i]))
                        sent.append(i)
                    except _NETWORK_ERRORS as exc:
                        failed[i] = exc
                        self.servers[i].reset()
                for i in sent:
                    try:
                        out = self.servers[i].read(len(groups[i]))
                    except _NETWORK_ERRORS as exc:
                        failed[i] = exc
                        self.servers[i].reset()
                        continue
                    moved = next((r for r in out if isinstance(r, ResponseError)
                                  and str(r).startswith("MOVED ")), None)
                    if moved is not None:
                        # Nothing of this request ran there (every key of a shard is in one
                        # slot): follow the slot (or refuse, see _redirected) and send again.
                        self._redirected(i, str(moved))
                        failed[i] = RedisConnectionError(str(moved))
                        continue
                    busy = next((r for r in out if isinstance(r, ResponseError)
                                 and str(r).startswith(_RETRY_LATER)), None)
                    if busy is not None:
                        # A restarted server still loading its data refuses every command: none
                        # of this request was applied there; send it again.
                        failed[i] = RedisConnectionError(str(busy))
                        continue
                    if any(isinstance(r, ResponseError) and "function not found" in str(r).lower()
                           for r in out):
                        # The library is gone (a restart without persistence): nothing of this
                        # request was applied there; load it and send again.
                        self._uploaded[i].clear()
                        try:
                            self.servers[i].send(_command("FUNCTION", "LOAD", "REPLACE", self._library()))
                            self.servers[i].read(1)
                        except _NETWORK_ERRORS as exc:
                            self.servers[i].reset()
                            exc2: BaseException = exc
                        else:
                            exc2 = ConnectionError("function library reloaded")
                        failed[i] = exc2
                        continue
                    replies[i] = out
                if not failed:
                    return replies
                tries += 1
                if tries >= attempts:
                    i, exc = next(iter(failed.items()))
                    if self._running:
                        # Mid-run, past the retry budget: the run cannot go on without its state
                        # (no checkpoints kept here), so stop now rather than drop packet after packet.
                        self._lost = (f"{self.servers[i].url}: {_reason(exc)}: the store is unreachable "
                                      f"(gave up after {tries} tries over {time.monotonic() - t0:.1f} s); "
                                      "the run cannot continue without its state")
                        raise StoreLost(self._lost)
                    raise self._unavailable(self.servers[i], exc)
                self._back_off(min(self.backoff * (2 ** (tries - 1)), _MAX_BACKOFF))
                pending = sorted(failed)
        finally:
            for lock in reversed(locks):
                lock.release()

    def _back_off(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while True:
            if self.waiting is not None:
                self.waiting()
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.1))

    def _call(self, i: int, commands: list[tuple], attempts: int | None = None) -> list:
        out = self._round_trip({i: [_command(*c) for c in commands]}, attempts)[i]
        for r in out:
            if isinstance(r, ResponseError):
                raise StoreError(f"{self.servers[i].url}: {_clean(r)}")
        return out

    def _call_all(self, command: Callable[[bytes], tuple]) -> dict[int, list]:
        """``command(shard prefix)`` on every server, in one round trip; their replies per server."""
        return self._checked(self._round_trip({i: [_command(*command(srv.prefix))]
                                               for i, srv in enumerate(self.servers)}))

    # -- addressing -----------------------------------------------------------------------
    def _locate(self, key: ObjectKey) -> tuple[bytes, int, int, int]:
        ent = self._keys.get(key)
        if ent is None:
            if len(self._keys) > _KEY_CACHE_MAX:
                self._keys.clear()
            family = self.prefix + b"k:" + _esc(key.vertex) + b":" + _esc(key.obj)
            rkey = family + b":" + _encode(key.key, "the scope key")
            if self.n == 1:
                srv = 0
            else:
                srv = zlib.crc32(rkey if key.per_flow else family) % self.n
            if self.servers[srv].prefix != self.prefix:          # a cluster shard's hash tag
                rkey = self.servers[srv].prefix + rkey[len(self.prefix):]
            ent = self._keys[key] = (rkey, srv, 1 if key.per_flow else 0, len(rkey))
        return ent

    def server_of(self, key: ObjectKey) -> int:
        """Index of the server holding ``key`` (see the module docstring)."""
        return self._locate(key)[1]

    def _wire_id(self, client: str, srv: int) -> bytes:
        """The client's id on the wire: db-qualified, as pub/sub channels are server-wide."""
        db = self.servers[srv].db
        w = self._wire.get((client, db))
        if w is None:
            w = self._wire[(client, db)] = f"{db}|{client}".encode()
        return w

    def _key_of(self, rkey: bytes, srv: int) -> ObjectKey:
        key = self._watched.get(rkey)
        if key is not None:
            return key
        vertex, obj, scope = rkey[len(self.servers[srv].prefix) + 2:].split(b":", 2)
        return ObjectKey(_unesc(vertex), _unesc(obj), _unpack(scope))

    # -- operations -----------------------------------------------------------------------
    def _default(self, default: Any, srv: int, pre: list[bytes], uploading: set) -> bytes:
        """The default argument: inline, or for a big list default (the NAT's port pool) a
        reference to a copy stored once per server (``<namespace>:d:<sha1>``), uploaded by a command
        added to ``pre`` (and known to be there once the request succeeds).  Python-equal
        big defaults share one stored copy."""
        if not isinstance(default, (list, tuple)) or len(default) <= _BIG_DEFAULT:
            return _encode(default, "the default")
        ent = self._big_ids.get(id(default))
        if ent is None or ent[0] is not default:
            ent = None
            memo = self._big.setdefault((type(default), len(default)), [])
            for cand in memo:
                if cand[0] == default:
                    ent = cand
                    break
            if ent is None:
                packed = _encode(default, "the default")
                ent = (type(default)(default), hashlib.sha1(packed).hexdigest().encode(), packed)
                if len(memo) >= 4:
                    memo.pop(0)
                memo.append(ent)
            if isinstance(default, tuple):
                if len(self._big_ids) > 64:
                    self._big_ids.clear()
                self._big_ids[id(default)] = (default, ent[1], ent[2])
        digest = ent[1]
        if digest not in self._uploaded[srv] and (srv, digest) not in uploading:
            pre.append(_command("SET", self.servers[srv].prefix + b"d:" + digest, ent[2]))
            uploading.add((srv, digest))
        return b"\xc1" + digest

    def _operands(self, op: Op, srv: int, pre: list[bytes], uploading: set) -> tuple[bytes, tuple]:
        """``op``'s default and operands as a ``chc_batch`` call carries them (msgpack, or text
        for incr_many's tags); commands that must precede the batch go to ``pre`` (uploads of
        big defaults)."""
        code = op.code
        args = op.args
        if code == "get":
            return b"", ()
        if code == "set":
            return b"", (_encode(args[0]),)
        if code == "incr":
            return _encode(op.default or 0, "the default"), (_encode(args[0]),)
        if code == "incr_many":
            # §4.3 coalesced increments: tags "clock:n ..." and commit reports "clock:n xor ..."
            # (§5.4, XOR id 0: none) as text, each made by one formatting call (clocks exceed
            # Lua's 2^53, so they stay text).
            inc = args[0]
            m = len(inc.clocks)
            tags = (b"%d:%d " * m) % tuple(chain.from_iterable(zip(inc.clocks, inc.ns, strict=True)))
            xors = inc.xor_ids
            if all(xors):
                reports = (b"%d:%d %d " * m) % tuple(chain.from_iterable(zip(inc.clocks, inc.ns, xors, strict=True)))
            else:
                reports = b"".join([b"%d:%d %d " % t for t in zip(inc.clocks, inc.ns, xors, strict=True) if t[2]])
            return _encode(op.default or 0, "the default"), (_encode(inc.total), tags, _encode(inc.amounts), reports)
        # (the operands first: an op refused for them uploads no default)
        if code == "push":
            extra: tuple = (_encode(args[0]),)
        elif code in ("pop", "delete"):
            extra = ()
        elif code == "cas":
            expected, new = args
            extra = (_encode(expected), _encode(new))
        elif code == "apply":
            name = args[0]
            if name not in self.value_ops:
                self._load_value_op(name)
            extra = (str(name).encode(), _encode(args[1:], "the arguments"))
        elif code == "custom":
            name = args[0]
            keys: set[int] = set()
            payload = _encode(self._replace_keys(args[1:], keys), "the arguments")
            if keys - {srv}:
                raise StoreError(f"custom operation {name!r}: its objects are on different servers "
                                 f"({self.describe()}); keys of one shared object family share a server")
            extra = (str(name).encode(), payload)
        else:
            raise StoreError(f"unknown operation {code!r}")
        return self._default(op.default, srv, pre, uploading), extra

    def _replace_keys(self, value: Any, servers: set[int]) -> Any:
        if isinstance(value, ObjectKey):
            rkey, srv, *_ = self._locate(value)
            servers.add(srv)
            return rkey
        if isinstance(value, (list, tuple)):
            return [self._replace_keys(v, servers) for v in value]
        if isinstance(value, range):
            return list(value)
        return value

    def _encode(self, ops: list[Op]) -> tuple[dict[int, list[bytes]], list, dict[int, int], set, list]:
        """``ops`` as one pipeline per server (uploads of big defaults, then one ``chc_batch``
        call whose ops are one binary argument, see HEAD in redis_functions.lua): the
        pipelines, each op's (server, index in its batch), the ops per server, the big
        defaults the request uploads, and the (op, error) pairs of the ops refused here, for
        a value the store cannot hold (:class:`UnstorableValue`; their ``where`` is None,
        the others go)."""
        if self._lease and time.monotonic() >= self._lease_due:
            self._renew()
        batches: dict[int, list] = {}      # server -> [clients, parts, ops, pre, least clock, reports]
        where = []
        uploading: set[tuple[int, bytes]] = set()
        keys = self._keys
        head = _HEAD
        refused: list = []
        for op in ops:
            ent = keys.get(op.key)
            num = _CODE_NUM.get(op.code)
            if num is None:
                raise StoreError(f"unknown operation {op.code!r}")
            try:
                if ent is None:
                    ent = self._locate(op.key)
                rkey, srv, flags, klen = ent
                b = batches.get(srv)
                pre = [] if b is None else b[3]
                default, extra = self._operands(op, srv, pre, uploading)
            except UnstorableValue as exc:
                refused.append((op, exc))
                where.append(None)
                continue
            if b is None:
                b = batches[srv] = [{}, [], 0, pre, None, []]
            clients = b[0]
            ci = clients.get(op.client)
            if ci is None:
                ci = clients[op.client] = len(clients)
            tag = op.tag
            if num == 4:                    # incr_many logs its tags itself
                t = b""
                inc = op.args[0]
                least = min(inc.clocks) if inc.clocks else None
            elif tag is None:
                t = b""
                least = None
            else:
                t = b"%d:%d " % tag          # with the key after it: the op's clock-log field
                least = tag[0]
                if op.xor_id:
                    b[5].append(b"%s%d " % (t, op.xor_id))     # §5.4 its commit report
            if least is not None and (b[4] is None or least < b[4]):
                b[4] = least
            inst = b"" if op.instance is None else b"%d" % op.instance
            n = len(extra)
            try:
                hdr = head(num, flags, ci, op.seq, op.xor_id, len(inst), len(t), klen, len(default),
                           len(extra[0]) if n else 0, len(extra[1]) if n > 1 else 0,
                           len(extra[2]) if n > 2 else 0, len(extra[3]) if n > 3 else 0)
            except struct.error as exc:
                raise StoreError(f"the redis store cannot carry {op!r}: {exc}") from None
            where.append((srv, b[2]))
            b[2] += 1
            b[1].extend((hdr, inst, t, rkey, default, *extra))
        groups = {}
        for srv, (clients, parts, _, pre, least, reports) in batches.items():
            server = self.servers[srv]
            wires = [self._wire_id(c, srv) for c in clients]
            blob = b"".join(parts)
            clock = b"" if least is None else b"%d" % least
            groups[srv] = [*pre, b"".join((b"*%d\r\n" % (11 + len(wires)), _BATCH_HEAD, server.epoch_key_bulk,
                                            server.prefix_bulk, self._epoch_bulk, _bulk(clock),
                                            _bulk(b"".join(reports)), _bulk(len(reports)), _bulk(len(wires)),
                                            *map(_bulk, wires), b"$%d\r\n" % len(blob), blob, b"\r\n"))]
        return groups, where, {srv: b[2] for srv, b in batches.items()}, uploading, refused

    def _batch_refused(self, srv: int, text: str) -> None:
        """The whole ``chc_batch`` call was refused (nothing of it ran, or it was cut short)."""
        if text.startswith("CHCEPOCH"):
            self._check_epoch()
        elif text.startswith("MOVED "):         # nothing ran: the next request goes to the slot's node
            self._redirected(srv, text)
        else:
            self._check_half_run(srv, text)

    def _split(self, srv: int, out: Any, n: int) -> tuple[list[Any], bool]:
        """The ``n`` per-op replies in a ``chc_batch`` reply (ResponseError for a refused op),
        and whether any is special (absent, a list, refused)."""
        if isinstance(out, ResponseError):          # the whole batch refused
            self._batch_refused(srv, str(out))
            return [out] * n, True
        got, special = _reply_values(out[0])
        for e in out[1:]:
            i, _, text = e.partition(b" ")
            got[int(i) - 1] = err = ResponseError(text.decode("utf-8", "replace"))
            self._check_half_run(srv, str(err))
        return got, special or len(out) > 1

    def _check_half_run(self, srv: int, text: str) -> None:
        """A cluster node refused a key inside a running batch (its slot is being migrated, or
        the cluster went down meanwhile): the ops before it were applied, its clock-log records
        and sequence marks are not.  Retransmitting could apply updates twice, so the run
        stops here (:class:`StoreLost`) rather than go on with state it cannot vouch for."""
        if "Script attempted to" in text and any(w in text for w in ("non local key", "same slot",
                                                                      "cluster is down")):
            self._lost = (f"{self.servers[srv].url}: a request was cut short by the cluster ({_clean_text(text)}): "
                          "a slot of this run's state moved or the cluster went down while it ran; the run "
                          "cannot continue on half-applied state")
            raise StoreLost(self._lost)

    def execute(self, ops: list[Op]) -> list[Any]:
        """Apply ``ops`` in order: one ``chc_batch`` call per server touched, sent to every
        server before any reply is read (one round trip); return their results.  An op
        the client sends again (go-back-N) whose own non-blocking request was answered
        meanwhile, and applied, is not sent a second time: its result is None (the
        callers read only their fresh ops' results; a wrapper that logs replies, the
        recovery WAL, is never put around a store whose client submits)."""
        self.round_trips += 1
        if self.down:
            raise StoreUnavailable(f"{self.urls[0]}: crashed")
        self.ops += len(ops)
        if not ops:
            return []
        if self._inflight:
            return self._execute_after_inflight(ops)
        return self._execute(ops)

    def _execute_after_inflight(self, ops: list[Op]) -> list[Any]:
        # The blocking request waits for every submitted reply before it is sent anyway
        # (_round_trip), so reading them first costs nothing; an op they acknowledged
        # would only be sent again to be suppressed by its sequence number (the NAT's
        # every prefetch carried its previous batch's updates a second time: measured,
        # half of its client time on Redis and a third of the server's).
        held = self._inflight
        reqs = [held.get((op.client, op.seq)) if op.seq else None for op in ops]
        self._drain(block=True)
        keep = [r is None or not r.done or r.refused for r in reqs]
        if all(keep):
            return self._execute(ops)
        sent = [op for op, k in zip(ops, keep, strict=True) if k]
        try:
            got = iter(self._execute(sent) if sent else ())
        except Refused as exc:
            got = iter(exc.results)
            exc.results = [next(got) if k else None for k in keep]
            raise
        return [next(got) if k else None for k in keep]

    def _execute(self, ops: list[Op]) -> list[Any]:
        self.sent_ops += len(ops)
        groups, where, counts, uploading, refused = self._encode(ops)
        per = self._round_trip(groups) if groups else {}
        for srv, digest in uploading:
            self._uploaded[srv].add(digest)
        replies = {srv: self._split(srv, out[-1], counts[srv]) for srv, out in per.items()}
        if len(replies) == 1 and not refused:
            results, special = next(iter(replies.values()))     # one server: in op order
            if not special:
                return results
        else:
            results = [None if w is None else replies[w[0]][0][w[1]] for w in where]
        error: Exception | None = None
        early = len(refused)                # refused before sending
        for i, (op, reply) in enumerate(zip(ops, results, strict=True)):
            if reply is _ABSENT:
                results[i] = op.default
            elif reply.__class__ is Stamped and reply.result is _ABSENT:
                results[i] = Stamped(op.default, reply.ts)
            elif reply is _REFUSED or reply.__class__ is ResponseError:
                if "CHCNODEF" in str(reply):
                    self._uploaded[where[i][0]].clear()         # the server lost its data
                err = self._error(op, reply)
                if _refused_for_itself(_clean(reply)):
                    refused.append((op, err))                   # for what it is: the others ran
                elif error is None:
                    error = err
                results[i] = None
        if error is not None:
            raise error
        if refused:
            if 0 < early < len(refused):    # both kinds: in request order
                order = {id(op): i for i, op in enumerate(ops)}
                refused.sort(key=lambda r: order[id(r[0])])
            raise Refused(refused, results)
        return results

    # -- non-blocking requests (EO+C+NA) ---------------------------------------------------
    def submit(self, ops: list[Op], on_ack: Callable[[int], None]) -> None:
        """A non-blocking request: sent now, not waited for; ``on_ack(highest seq)`` once its
        reply arrives (replies are read as they come in, at the next request, and before any
        blocking one).  An op that is still in flight on a healthy connection (the client
        resends every un-ACKed op, go-back-N) is not sent again: TCP delivers it ahead of
        this request, so the reply to this request acknowledges it too.  A request whose
        connection fails is not acknowledged; the client sends its ops again."""
        self.round_trips += 1
        self.ops += len(ops)
        self._drain(block=False)
        fresh = []
        for op in ops:
            if op.seq and (op.client, op.seq) in self._inflight:
                continue
            fresh.append(op)
        if not fresh:
            return                          # all in flight: their own replies acknowledge them
        self.sent_ops += len(fresh)
        groups, where, counts, uploading, refused = self._encode(fresh)
        req = _Request(fresh, ops[-1].seq, on_ack, counts, uploading, where, refused)
        for srv in sorted(groups):
            server = self.servers[srv]
            with server.lock:
                try:
                    server.send(b"".join(groups[srv]))
                except _NETWORK_ERRORS:
                    self._broken(srv)
                    req.failed = True
                    break
                server.pending.append((req, srv, len(groups[srv])))
        if req.failed:
            # A connection failed: wait for this request after all, with the blocking path's
            # retries, so that a server gone for good ends the run within its retry budget
            # (StoreLost) instead of every later request failing quietly.  All of ``ops``
            # goes (go-back-N): what was in flight on the broken connection is lost with it,
            # and this request's acknowledgement covers it.
            self._drain(block=True)
            groups, where, counts, uploading, refused = self._encode(ops)
            per = self._round_trip(groups) if groups else {}
            retry = _Request(ops, ops[-1].seq, on_ack, counts, uploading, where, refused)
            for srv, out in per.items():
                retry.answer(self, srv, out[-1])
            if retry.done and not retry.refused:
                retry.acknowledge()
            return
        for op in fresh:
            if op.seq:
                self._inflight[op.client, op.seq] = req
        self._inflight_reqs.append(req)
        if req.done:
            self._ack_in_order()            # (all refused before sending: acknowledged in order)
        if len(self._inflight_reqs) > self.window:
            # Flow control: a client faster than the server would otherwise queue
            # requests (and their un-ACKed ops) without bound.
            self._drain(block=True)

    def _broken(self, srv: int) -> None:
        """Server ``srv``'s connection failed: its pending requests will never be answered."""
        server = self.servers[srv]
        server.reset()
        for req, _, _ in server.pending:
            req.failed = True
        server.pending.clear()
        self._ack_in_order()

    def _ack_in_order(self) -> None:
        """Acknowledge the answered requests in the order they were sent: an acknowledgement
        is cumulative (§4.3 go-back-N: every op up to its seq), so one must not cover an
        earlier request a server has not answered yet (with two shards a later request can
        be answered first; the earlier one's op was lost when its connection then broke).
        A failed request ends the order: its ops and those of every request behind it go
        again with the client's next request (none is skipped as in flight meanwhile)."""
        reqs = self._inflight_reqs
        while reqs:
            head = reqs[0]
            if head.failed:
                reqs.clear()
                self._inflight.clear()
                return
            if not head.done:
                return
            reqs.popleft()
            for op in head.ops:
                self._inflight.pop((op.client, op.seq), None)
            if not head.refused:
                head.acknowledge()

    def _drain(self, block: bool, servers: Any = None) -> None:
        """Read the replies of submitted requests: all of them (``block``), or those already
        arriving.  Acknowledges the requests answered on every server they went to."""
        for srv in (range(self.n) if servers is None else servers):
            server = self.servers[srv]
            if not server.pending:
                continue
            with server.lock:
                while server.pending:
                    if not block and not server.readable():
                        break
                    req, _, n = server.pending[0]
                    try:
                        out = server.read(n)
                    except _NETWORK_ERRORS:
                        self._broken(srv)
                        break
                    server.pending.popleft()
                    req.answer(self, srv, out[-1])
        self._ack_in_order()

    def wait(self) -> None:
        """Block until every submitted request is answered (acknowledged or failed)."""
        self._drain(block=True)

    def settle(self, resend: Callable[[], bool]) -> None:
        """End of input: every submitted request answered; what is still un-ACKed (a failed
        connection's) sent again until acknowledged (``resend()``: False when nothing is)."""
        for _ in range(self.attempts):
            self._drain(block=True)
            if not resend():
                return
        self._drain(block=True)
        if resend():
            raise StoreLost(f"{self.describe()}: updates still unacknowledged after {self.attempts} tries; "
                            "the run cannot continue")

    def _error(self, op: Op, reply: ResponseError) -> StoreError:
        text = _clean(reply)
        k = op.key
        if text.startswith("CHCOWN "):
            owner = text[7:]
            return OwnershipError(f"{k.vertex}.{k.obj}[{k.key!r}] is owned by instance {owner}; "
                                  f"instance {op.instance} may not update it")
        if _refused_for_itself(text):
            return StoreError(f"{k.vertex}.{k.obj}[{k.key!r}]: {text.split('CHCERR ', 1)[1]}")
        url = self.servers[self._locate(k)[1]].url
        return StoreError(f"{url}: {op.code} on {k.vertex}.{k.obj}[{k.key!r}]: {text}")

    # -- notifications --------------------------------------------------------------------
    def _listen(self, client: str) -> None:
        """Subscribe the client's channel on every server (before anything can be published)."""
        for i, server in enumerate(self.servers):
            channel = server.prefix + b"n:" + self._wire_id(client, i)
            if channel in server.channels:
                continue
            self._clients[channel] = (client, i)
            self._listening.add(client)
            sink: list = []
            try:
                server.subscribe(channel, sink)
            except _NETWORK_ERRORS as exc:
                raise self._unavailable(server, exc) from None
            self._route(sink)

    def _route(self, messages: list[tuple[bytes, bytes]]) -> None:
        if not messages:
            return
        with self._inbox_lock:
            for channel, data in messages:
                got = self._clients.get(channel)
                if got is None:
                    continue
                client, srv = got
                n = int.from_bytes(data[1:5], "big")
                rkey = data[5:5 + n]
                rest = data[5 + n:]
                key = self._key_of(rkey, srv)
                if data[:1] == b"U":
                    msg: tuple = ("update", key, _untag(rest, deque))
                else:
                    msg = ("owned", key, int(rest))
                self._inbox.setdefault(client, []).append(msg)

    def notifications(self, client: str) -> list[tuple]:
        """Callbacks and ownership changes for ``client`` so far (never waits for new ones)."""
        if client not in self._listening:
            return []
        for server in self.servers:
            sink: list = []
            server.drain(sink)
            self._route(sink)
            if server.dropped:
                self._subscriptions_lost(server)
        with self._inbox_lock:
            return self._inbox.pop(client, [])

    def _subscriptions_lost(self, server: _Server) -> None:
        """A cluster slot with subscribed objects moved: what was published there between the
        move and a subscription on the new node is lost, so caches could be stale unnoticed."""
        self._lost = (f"{server.url}: a cluster slot of this run's state, with subscribed objects, moved to another "
                      "node while the run went on: callbacks published meanwhile may be lost; the run cannot "
                      "continue (do not reshard a running chain's slots)")
        raise StoreLost(self._lost)

    def subscribe(self, key: ObjectKey, client: str) -> Any:
        """Callbacks for ``key`` to ``client`` from now on; returns the current value."""
        self.round_trips += 1
        rkey, srv, *_ = self._locate(key)
        self._watched[rkey] = key
        self._listen(client)
        reply = self._call(srv, [("FCALL", "chc_subscribe", 1, rkey, self.servers[srv].prefix,
                                  self._wire_id(client, srv))])[0]
        if reply is None:
            return None
        return _untag(reply, deque)

    # -- objects, ownership ---------------------------------------------------------------
    def declare(self, key: ObjectKey, initial: Any) -> None:
        """Create an object with its initial value unless it exists (idempotent)."""
        rkey, srv, *_ = self._locate(key)
        p = self.servers[srv].prefix
        if isinstance(initial, (list, tuple, range)):
            cmd = ("FCALL", "chc_declare", 1, rkey, p, "L", *[_encode(v) for v in initial])
        else:
            cmd = ("FCALL", "chc_declare", 1, rkey, p, "V", _encode(initial))
        self._call(srv, [cmd])

    def register(self, name: str, fn: CustomOp, lua: str | None = None) -> None:
        """Load a custom operation: ``lua`` is the body of ``function(op)`` run in the store.

        ``fn`` is the in-process version (memory store); Redis needs the Lua body.  In the
        body: ``op.key`` (the object's Redis key), ``op.args`` (the op's arguments after the
        name, ObjectKeys as Redis keys; arrays are tables with ``n``), ``op.default``,
        ``op.client``, ``op.instance``, and the helpers ``CHC.read(key)``,
        ``CHC.write(key, value)``, ``CHC.read_number(key)`` -> value, isfloat,
        ``CHC.write_number(key, n, isfloat)``, ``CHC.read_raw``/``CHC.write_raw`` (msgpack
        strings), ``CHC.encode``/``CHC.decode``.  The returned Lua value is the result:
        integral numbers come back as ints (``CHC.float(x)`` makes one a float), ASCII
        strings as str, other strings as bytes.
        """
        if not lua:
            raise StoreError(f"custom operation {name!r}: the redis store runs custom operations inside "
                             "Redis and needs their Lua body: register(name, fn, lua='...')")
        if not _NAME.match(name):
            raise StoreError(f"custom operation {name!r}: the name must be an identifier")
        previous = self.customs.get(name)
        self.customs[name] = lua
        try:
            self._reload()
        except StoreError as exc:
            if previous is None:
                del self.customs[name]
            else:
                self.customs[name] = previous
            self._reload()
            raise StoreError(f"custom operation {name!r} does not load: {exc}") from None

    def release(self, key: ObjectKey, instance: int) -> None:
        """The owner gives up ``key``; the first waiting instance gets it and is notified."""
        rkey, srv, *_ = self._locate(key)
        try:
            self._call(srv, [("FCALL", "chc_release", 1, rkey, self.servers[srv].prefix, str(instance))])
        except StoreError as exc:
            if "CHCOWN" in str(exc):
                raise OwnershipError(f"instance {instance} cannot release an object it does not own") from None
            raise

    def release_instance(self, vertex: str, instance: int) -> int:
        """Handover (§5.1 step 5): ``instance`` of ``vertex`` gives up every per-flow
        object it owns (owner keys found with SCAN, released one by one)."""
        me = str(instance).encode()
        n = 0
        for srv in range(self.n):
            p = self.servers[srv].prefix
            okeys = p + b"o:"
            pattern = _glob_escape(okeys + _esc(vertex)) + b":*"
            cursor: Any = b"0"
            while True:
                cursor, keys = self._call(srv, [("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)])[0]
                if keys:
                    owners = self._call(srv, [("GET", k) for k in keys])
                    mine = [k for k, o in zip(keys, owners, strict=True) if o == me]
                    if mine:
                        self._call(srv, [("FCALL", "chc_release", 1, p + b"k:" + k[len(okeys):], p, str(instance))
                                         for k in mine])
                        n += len(mine)
                if cursor in (b"0", 0, "0"):
                    break
        return n

    def take(self, key: ObjectKey, client: str, instance: int) -> bool:
        """Become the owner now (True) or queue for it and be notified (False)."""
        rkey, srv, *_ = self._locate(key)
        self._watched[rkey] = key
        self._listen(client)
        reply = self._call(srv, [("FCALL", "chc_take", 1, rkey, self.servers[srv].prefix,
                                  self._wire_id(client, srv), str(instance))])[0]
        return reply == b"1"

    def prune_below(self, clock: int) -> int:
        """Forget clock-log entries of clocks < ``clock`` that ``clock``'s root stamped
        (each root prunes its own: core.store; the entries of one request that hold
        clocks of several roots go once the lowest root is past them); returns how many."""
        base = int(clock) >> CLOCK_BITS << CLOCK_BITS
        return sum(int(r[0]) for r in self._call_all(lambda p: ("FCALL", "chc_prune", 1, p + b"lz", p,
                                                                int(clock), base)).values())

    def commits(self, root: int | None = None) -> list[tuple[int, int]]:
        """Drain the commit reports ``(clock, xor id)`` (server by server); ``root``: only
        that root's (each root of a proc run pulls its own), the others' stay."""
        extra = () if root is None else (root,)
        per = self._call_all(lambda p: ("FCALL", "chc_commits", 1, p + b"c", p, *extra))
        out = []
        for i in range(self.n):
            words = per[i][0].split()               # "clock:n xor" pairs
            for j in range(0, len(words), 2):
                out.append((int(words[j].partition(b":")[0]), int(words[j + 1])))
        return out

    def _checked(self, per: dict[int, list]) -> dict[int, list]:
        for i, out in per.items():
            for r in out:
                if isinstance(r, ResponseError):
                    raise StoreError(f"{self.servers[i].url}: {_clean(r)}")
        return per

    def _check_epoch(self) -> None:
        """Raise :class:`StoreLost` if a server no longer holds this run's epoch."""
        if not self.epoch:
            return
        for i in range(self.n):
            if self._call(i, [("GET", self.servers[i].prefix + b"epoch")])[0] != self.epoch:
                raise StoreLost(f"{self.servers[i].url}: the store lost this run's state (namespace "
                                f"{self.namespace!r} has another epoch or none: the server restarted empty "
                                "or was flushed); the run cannot continue on it")

    def objects(self, vertex: str) -> dict[str, dict[Hashable, Any]]:
        """Every stored object of ``vertex`` as {object name: {key: value}}."""
        self._check_epoch()
        out: dict[str, dict[Hashable, Any]] = {}
        for i in range(self.n):
            prefix = self.servers[i].prefix + b"k:" + _esc(vertex) + b":"
            match = _glob_escape(prefix) + b"*"
            cursor = 0
            while True:
                cursor, keys = self._call(i, [("SCAN", cursor, "MATCH", match, "COUNT", 1000)])[0]
                cursor = int(cursor)
                keys = [k for k in keys if k.count(b":", len(prefix)) >= 1]
                if keys:
                    values = self._call(i, [("FCALL_RO", "chc_peek_many", len(keys), *keys)])[0]
                    for k, v in zip(keys, values, strict=True):
                        if v is None:
                            continue                  # deleted meanwhile
                        obj, _, scope = k[len(prefix):].partition(b":")
                        out.setdefault(_unesc(obj), {})[_unpack(scope)] = _untag(v)
                if cursor == 0:
                    break
        return out

    # -- NF failover (§5.4) ----------------------------------------------------------------
    def keep_preimages(self) -> None:
        """Record pre-images from now on (what NF failover needs, see :meth:`objects_at`):
        sets the namespace's ``pre`` key on every server, which ``chc_batch`` reads with the
        epoch (so every store of the run records them, and a batch without them costs
        nothing more)."""
        self._call_all(lambda p: ("SET", p + b"pre", b"1"))

    def unreachable(self) -> str:
        """'' when every server answers a PING (retried as any request), else why not."""
        try:
            for i in range(self.n):
                self._call(i, [("PING",)])
        except StoreError as exc:       # (StoreLost, StoreUnavailable: subclasses)
            return str(exc)
        return ""

    def keep_ts(self) -> None:
        """Keep TS from now on (§5.4 store failover, :mod:`chc.backends.redis_checkpoint`):
        ``chc_batch`` then records, per client, the stamp of its last shared-state update
        and returns TS with every reply that carries a value of shared state
        (:class:`~chc.core.recovery.Stamped`, as a :class:`~chc.core.recovery.RecoverableEngine`
        does).  Off, a batch reads the switch with the epoch and pays nothing more."""
        self._call_all(lambda p: ("SET", p + b"ts", b"1"))

    def objects_at(self, vertex: str, replayed: set[int]) -> dict[str, dict[Hashable, Any]]:
        """``vertex``'s objects as they were before the first update made by any of the
        ``replayed`` clocks, as :meth:`chc.core.store.StoreEngine.objects_at`: per object,
        the pre-image of the first of those clocks in the order its server applied them
        (an object absent then is left out).  Needs :meth:`keep_preimages`."""
        out = self.objects(vertex)
        for i in range(self.n):
            prefix = self.servers[i].prefix + b"k:" + _esc(vertex) + b":"
            match = b"* " + _glob_escape(prefix) + b"*"
            first: dict[bytes, bytes] = {}
            cursor = 0
            while True:
                cursor, items = self._call(i, [("HSCAN", self.servers[i].prefix + b"p", cursor, "MATCH", match,
                                                "COUNT", 1000)])[0]
                cursor = int(cursor)
                for j in range(0, len(items), 2):
                    clock, _, k = items[j].partition(b" ")
                    if not k.startswith(prefix) or int(clock) not in replayed:
                        continue
                    raw = items[j + 1]          # order (8 bytes, big-endian: compares as bytes), value
                    got = first.get(k)
                    if got is None or raw[:8] < got[:8]:
                        first[k] = raw
                if cursor == 0:
                    break
            for k, raw in first.items():
                v = raw[8:]
                obj, _, scope = k[len(prefix):].partition(b":")
                name, key = _unesc(obj), _unpack(scope)
                if v[:1] == b"A":
                    out.get(name, {}).pop(key, None)
                else:
                    out.setdefault(name, {})[key] = _untag(v)
        return out

    # -- lifecycle ------------------------------------------------------------------------
    def close(self) -> None:
        """Give up the namespace's lease (if held) and the connections."""
        if self._lease:
            self._lease = False
            for i in range(self.n):
                with contextlib.suppress(StoreError):
                    p = self.servers[i].prefix
                    self._call(i, [("FCALL", "chc_unlease", 1, p + b"lease", p, self.token)], attempts=1)
        for server in self.servers:
            server.close()

    def describe(self) -> str:
        """The store as the user named it (passwords redacted): every server of it."""
        return ",".join(self.urls)

    def __repr__(self) -> str:
        return f"RedisStore({self.urls!r})"


def _refused_for_itself(text: str) -> bool:
    """An op the server refused for what it is (``fail`` in the library: CHCERR, which a
    refusal raised inside the batch's protected call carries behind ``ERR ``)."""
    return text.startswith(("CHCERR ", "ERR CHCERR "))


def _clean(exc: ResponseError) -> str:
    """The server's error text without the script location Redis appends."""
    return _clean_text(str(exc))


def _clean_text(text: str) -> str:
    cut = text.find(" script: ")
    return text[:cut] if cut >= 0 else text


__all__ = ["NamespaceInUse", "RedisStore"]
