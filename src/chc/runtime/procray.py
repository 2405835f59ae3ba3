"""The ``ray`` runtime: the ``proc`` runtime's workers placed on a Ray cluster.

Theory of operation
-------------------
:class:`RayRuntime` is :class:`~chc.runtime.proc.ProcRuntime` with two things
changed, at its seam (``_address``, ``_context``): where the mailboxes are, and
what starts a worker.  Everything else (the workers' main loops, the messages,
the drain, §5.4 NF failover) is the proc runtime's.

Placement.  Each worker (root, NF instance, store server, a failover instance)
runs inside its own Ray actor: the actor's process *is* the worker's process,
its one call (``run``) is the worker's main loop, and it returns when the
worker ends.  Packets never go through Ray (an actor call costs about 0.27 ms):
ZeroMQ carries them as in ``proc``, over ``tcp://`` (the nodes need not share
a filesystem for ``ipc://``), each mailbox at an address every worker derives
from the plan (:meth:`~chc.runtime.procworker.Plan.address`): its node's address
(Ray's ``NodeManagerAddress``, the one given to ``ray start --node-ip-address``)
and a port (:meth:`~chc.runtime.procworker.Plan.slot`).  So placement is decided
before anything starts (:func:`placement`): roots, the store server and the vertex
managers on the coordinator's node (they talk to it most); NF instances spread over
the alive nodes in turn (the coordinator's last), or pinned with ``--ray-pin
VERTEX[I]=RESOURCE`` to a node that has that custom resource; an instance's k-th
failover on the k-th next node of that ring (another machine when there is one).
Each actor is placed on its node with hard node affinity.  A failover whose node
is gone goes on round the ring to the next alive one: the generations it skips
are fenced everywhere as if they had failed (a receiver takes a generation's
frames once the one before it is fenced); no alive node at all stops the run
with one line, and so does an instance a scale-out adds on a node that is gone.

Failures.  Actors are created with ``max_restarts=0`` and their call with
``max_task_retries=0``: Ray restarts nothing; CHC's recovery decides.  The
proc runtime waits on each worker's *sentinel*, a file descriptor that becomes
readable when the process ends; here it is the read end of a pipe whose write
end a watcher thread closes when the actor's ``run`` ObjectRef resolves: with
the worker's return (it ended), its exception, or ``RayActorError`` (the actor
died: killed, its process gone, or its node removed).  So a dead actor is
detected from Ray itself, and is failed over (``--failover``) or stops the run
exactly as a dead process does.

No orphans.  A worker whose ``run`` returned is killed (its actor would
otherwise idle on); at the end every actor still alive is killed.  The actors
are not detached: if the coordinator dies, Ray kills them with their owner.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import socket
import threading
from collections.abc import Callable
from typing import Any

from .errors import ProcFailure
from .proc import ProcRuntime
from .procworker import Plan, on_ring

# Ray reads this at import; a node must not bind the machine's other address (docs/proc.md).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
try:
    import ray
    from ray.exceptions import RayActorError
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
except ImportError:         # the [ray] extra: chc run --runtime ray says so (exit 2)
    ray = None

EXTRA = "--runtime ray needs Ray: pip install -e '.[ray]'"
HOST = "127.0.0.1"          # this machine's default: every node on loopback (docs/proc.md)
GENERATIONS = 4             # port blocks checked free: the workers and 3 failover generations


def available() -> bool:
    return ray is not None


class _Host:
    """The Ray actor that owns a worker's process (made remote in :func:`_host_class`)."""

    def node(self) -> tuple[str, int]:
        return ray.get_runtime_context().get_node_id(), os.getpid()

    def run(self, target: Callable, args: tuple) -> int:
        target(*args)
        return 0


_HOST: Any = None


def _host_class() -> Any:
    global _HOST
    if _HOST is None:
        _HOST = ray.remote(_Host)
    return _HOST


class RayProcess:
    """A worker in a Ray actor, as :class:`multiprocessing.Process` looks to the
    coordinator: ``start``, ``sentinel``, ``join``, ``is_alive``, ``kill``, ``pid``."""

    def __init__(self, watcher: _Watcher, name: str, node: str, target: Callable, args: tuple) -> None:
        self.name = name
        self._watcher = watcher
        self._node = node
        self._target, self._args = target, args
        self.exitcode: int | None = None
        self.how = "is running"
        self._done = threading.Event()
        self.sentinel, self._w = os.pipe()

    def start(self) -> None:
        opts: dict[str, Any] = {"num_cpus": 0, "max_restarts": 0, "max_task_retries": 0,
                                "name": None}
        # Hard: the worker's mailbox is at its node's address (Plan.address).
        opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(self._node, soft=False)
        self.actor = _host_class().options(**opts).remote()
        self._where = self.actor.node.remote()          # runs first: the actor's node and pid
        self.ref = self.actor.run.remote(self._target, self._args)
        self._watcher.add(self)

    def placed(self, timeout: float = 60) -> tuple[str, int] | None:
        """The actor's (node id, pid), once it has started; None if it never did."""
        try:
            return ray.get(self._where, timeout=timeout)
        except Exception:       # noqa: BLE001 - died or never placed: no pid to show
            return None

    @property
    def pid(self) -> int | None:
        where = self.placed(5)
        return None if where is None else where[1]

    def ended(self, how: str, code: int) -> None:
        """The watcher saw ``run`` resolve: the sentinel becomes readable (§5.4: the
        failure detection the coordinator's failover starts from)."""
        self.how, self.exitcode = how, code
        self._done.set()
        os.close(self._w)
        with contextlib.suppress(Exception):    # already dead
            ray.kill(self.actor, no_restart=True)       # a returned worker's actor would idle on

    def join(self, timeout: float | None = None) -> None:
        self._done.wait(timeout)

    def is_alive(self) -> bool:
        return not self._done.is_set()

    def kill(self) -> None:
        ray.kill(self.actor, no_restart=True)


class _Watcher:
    """One thread that waits on every worker's ``run`` ObjectRef."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[Any, RayProcess] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="chc ray watcher", daemon=True)
        self._thread.start()

    def add(self, p: RayProcess) -> None:
        with self._lock:
            self._running[p.ref] = p

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                refs = list(self._running)
            if not refs:
                self._stop.wait(0.05)
                continue
            done, _ = ray.wait(refs, num_returns=1, timeout=0.1)
            for ref in done:
                with self._lock:
                    p = self._running.pop(ref)
                p.ended(*_outcome(ref))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def _outcome(ref: Any) -> tuple[str, int]:
    try:
        return "exited with code 0", ray.get(ref)
    except RayActorError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"lost its Ray actor ({first[:160]})", -9
    except Exception as exc:    # noqa: BLE001 - the worker's own error (it also told the coordinator)
        return f"failed in its Ray actor ({type(exc).__name__})", 1


class RayContext:
    """What :meth:`ProcRuntime._launch` starts workers with: ``Process(target, args, name)``,
    each on the node :func:`placement` chose for it."""

    def __init__(self, home: str, ring: list[str], starts: dict[str, int]) -> None:
        self.home = home                # the coordinator's node: roots, store server, managers
        self.ring = ring                # node ids, aligned with Plan.ring
        self.starts = starts
        self.watcher = _Watcher()
        self.started: list[RayProcess] = []

    def node_of(self, worker: str) -> str:
        return on_ring(worker, self.starts, self.ring) or self.home

    def placeable(self, worker: str) -> bool:
        """Whether the node ``worker`` is placed on is alive (a failover skips a gone one)."""
        return self.node_of(worker) in _alive()

    def Process(self, target: Callable, args: tuple, name: str, daemon: bool = True) -> RayProcess:  # noqa: N802
        worker = name.removeprefix("chc ")
        node = self.node_of(worker)
        if node not in _alive():
            # A failover got here only after going round the ring (ProcRuntime._failure); an
            # instance a scale-out starts (or its warm spare) is placed before the run
            why = (", and so is every other node of the ring (an instance's failovers go round the nodes "
                   "alive at the start)" if "#" in worker else
                   " (instances are placed on the nodes alive at the start, those a scale-out adds too; "
                   "only a failover goes on round the ring)")
            raise ProcFailure(f"ray runtime: {worker} is placed on node {node[:12]}, which is gone{why}")
        p = RayProcess(self.watcher, worker, node, target, args)
        self.started.append(p)
        return p

    def close(self) -> None:
        for p in self.started:
            if p.is_alive():
                p.kill()
        for p in self.started:
            p.join(10)
        self.watcher.close()


def _alive() -> dict[str, dict]:
    return {n["NodeID"]: n for n in ray.nodes() if n["Alive"]}


def placement(instances: list[str], nodes: dict[str, dict], home: str,
              pins: dict[str, str]) -> tuple[list[str], dict[str, int]]:
    """Where NF instances run (module doc): the ring of alive node ids (sorted, the
    coordinator's ``home`` last) and each instance's index in it.  ``nodes`` are Ray's
    node records by id; ``pins`` maps an instance to a custom resource its node has."""
    ring = sorted(nodes, key=lambda n: (n == home, n))
    starts, turn, pinned = {}, 0, {}
    for name in instances:
        resource = pins.get(name)
        if resource is None:
            starts[name] = turn % len(ring)
            turn += 1
            continue
        having = [i for i, n in enumerate(ring) if nodes[n].get("Resources", {}).get(resource, 0) > 0]
        if not having:
            raise ProcFailure(f"ray runtime: --ray-pin {name}: no alive node has the resource {resource!r}")
        starts[name] = having[pinned.get(resource, 0) % len(having)]      # round the nodes that have it
        pinned[resource] = pinned.get(resource, 0) + 1
    return ring, starts


def _host_port(address: str) -> tuple[str, str]:
    """``[ray://]HOST:PORT`` as (host, port); ("", address) when it has no port (``auto``)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    return host.strip("[]"), port


def _reachable(address: str, timeout_s: float = 5.0) -> None:
    """A ``HOST:PORT`` with nothing listening is one line now: ``ray.init`` retried it for
    over five minutes (measured) before it gave up."""
    host, port = _host_port(address)
    if not host or not port.isdigit():
        return                              # auto, or a form ray.init judges itself
    try:
        socket.create_connection((host, int(port)), timeout_s).close()
    except OSError as exc:
        raise ProcFailure(f"ray runtime: cannot connect to Ray at {address!r}: {exc.strerror or exc} "
                          "(is a Ray head node running there? ray start --head)") from None


def _node_ip(address: str) -> str:
    """This machine's address towards the cluster's head (what the driver gives Ray as its
    node's address): the source address the kernel picks for a UDP socket connected there
    (no packet is sent).  ``auto`` reads the running cluster's address; loopback when
    unknown (this machine's rule: no node binds another address)."""
    if address in ("", "auto"):
        try:        # (a private helper of Ray's: what ray.init does with "auto")
            from ray._private.services import canonicalize_bootstrap_address_or_die
            address = canonicalize_bootstrap_address_or_die("auto")
        except Exception:   # noqa: BLE001 - no cluster running: ray.init says so
            return HOST
    host = _host_port(address)[0] or address
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((host, 9))
            return s.getsockname()[0]
    except OSError:
        return HOST


class RayRuntime(ProcRuntime):
    """``chc run --runtime ray --ray-address ADDR``: the proc runtime on a Ray cluster."""

    name = "ray"

    def __init__(self, *args: Any, address: str = "auto", pins: dict[str, str] | None = None,
                 **kwargs: Any) -> None:
        if ray is None:
            raise ValueError(EXTRA)
        super().__init__(*args, **kwargs)
        self.address = address
        self.pins = dict(pins or {})
        self.placement: dict[str, str] = {}         # worker -> the Ray node id it ran on
        self._owns_ray = False
        self.rayctx: RayContext | None = None

    def _address(self, plan: Plan) -> None:
        """Placement (module doc), decided before anything starts: every worker derives
        every mailbox's address from the plan."""
        self._connect()
        nodes, home = _alive(), ray.get_runtime_context().get_node_id()
        instances = [n for n in plan.mailboxes() if not n.startswith("@")]
        ring, starts = placement(instances, nodes, home, self.pins)
        plan.host = nodes[home]["NodeManagerAddress"]
        plan.ring = tuple(nodes[n]["NodeManagerAddress"] for n in ring)
        plan.starts = starts
        plan.base_port = _free_ports(plan.host, len(plan.mailboxes()) * GENERATIONS)
        self.rayctx = RayContext(home, ring, starts)

    def _connect(self) -> None:
        if ray.is_initialized():
            return
        _reachable(self.address)
        try:
            ray.init(address=self.address, _node_ip_address=_node_ip(self.address), logging_level="ERROR",
                     log_to_driver=True, configure_logging=True)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ProcFailure(f"ray runtime: cannot connect to Ray at {self.address!r}: "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        self._owns_ray = True

    def _context(self) -> RayContext:
        assert self.rayctx is not None      # (made by _address, which runs first)
        return self.rayctx

    def _stop(self) -> None:
        try:
            if self.rayctx is not None:
                for p in self.rayctx.started:
                    where = p.placed(1)
                    if where is not None:
                        self.placement[p.name] = where[0]
            super()._stop()
            if self.rayctx is not None:
                self.rayctx.close()
        finally:
            if self._owns_ray:
                ray.shutdown()
                self._owns_ray = False


def parse_pin(text: str) -> tuple[str, str]:
    """``VERTEX[I]=RESOURCE`` (``VERTEX=RESOURCE``: instance 0) as ``("vertex.i", resource)``."""
    m = re.fullmatch(r"([\w.-]+)(?:\[(\d+)\])?=([\w.-]+)", text.strip())
    if m is None:
        raise ValueError(f"--ray-pin {text!r}: expected VERTEX[I]=RESOURCE, e.g. nat[0]=node-b")
    return f"{m.group(1)}.{int(m.group(2) or 0)}", m.group(3)


def _ephemeral_low(default: int = 32768) -> int:
    """The lowest port the kernel hands out to outgoing connections."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return default


def _free_ports(host: str, n: int, tries: int = 50) -> int:
    """A base port with ``n`` consecutive ports free on ``host`` (this machine's) now, below the
    ephemeral range: a block in it was free when checked, but every connection the run
    opens (ZeroMQ's, Ray's) takes a local port from that range, and a failover's mailbox,
    bound later, then found its port taken ("Address already in use", seen in the tests)."""
    rng = random.Random()
    top = min(_ephemeral_low(), 60000) - n
    for _ in range(tries):
        base = rng.randrange(10000, max(top, 10001))
        socks = []
        try:
            for port in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind((host, port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise ProcFailure(f"ray runtime: no {n} consecutive free ports on {host}")
