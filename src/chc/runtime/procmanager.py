"""Vertex managers as processes of the ``proc`` runtime (§3, §4.1).

Theory of operation
-------------------
A vertex whose chain spec has a ``scaling:`` policy gets a manager process of
its own (``@manager.nat``), around the sans-I/O
:class:`~chc.core.manager.ReportingManager`.  It owns the vertex's load
statistics and the policy; it owns no packet and no state, so losing it loses
no correctness, only decisions (the coordinator starts another, which counts
from then on).

It takes, on its mailbox:

- ``load`` from each instance of the vertex, after a batch about four times an
  interval of input time: ``[instance, packets processed, queued, busy ns, input
  time reached, generation]``, cumulative (a failover, §5.4, is a later
  generation);
- ``groups`` from every process that splits packets to the vertex (roots,
  upstream instances), as often: packets per flow group since its last one
  (§4.1: a rebalance moves the hottest groups; one group too hot for that
  refines);

and from the coordinator (the framework manager) ``shape`` (the vertex's active
instances, scope and whether a finer one is left, after every change of the
vertex, after each of this manager's decisions was carried out or refused, and
when it starts; an interval starts afresh there) and ``bye``.  It sends the coordinator ``ready``,
heartbeats, ``decide`` (the policy's decisions with the interval's load and
flow-group counts; one at a time: it decides again once told the new shape) and
``policy-error``.  The coordinator carries a decision out as a scenario event
of the same action at the next input packet it feeds (:mod:`procscale`), with
``by: manager`` and the policy's reason.

Time is input time (the capture's timestamps), as for the sim's managers at
top speed: an interval ends when every active instance has reported a packet
past it (or ``QUIET_INTERVALS`` later: instances lag one another by their queues),
so the policy's packets/s are per second of input, not of this machine's speed.
"""

from __future__ import annotations

import logging
import traceback

import zmq

from ..core.manager import ReportingManager
from .procio import Guard, worker_guard
from .procworker import COORDINATOR, Plan, instance_name, manager_name
from .wire import Kind, Mailbox, WireError, dealer, decode, encode, fields

log = logging.getLogger("chc.proc")


def main(plan: Plan, vertex: str, restarted: bool = False) -> None:
    """A vertex manager's process; errors reach the coordinator as one line."""
    me = manager_name(vertex)
    guard = worker_guard(me)
    ctx = zmq.Context()
    coordinator = dealer(ctx, plan.address(COORDINATOR), me)
    try:
        ManagerWorker(plan, ctx, vertex, guard, coordinator, restarted).run()
    except Exception as exc:            # the coordinator shows it and stops the run
        log.debug("%s failed:\n%s", me, traceback.format_exc())
        guard.send(coordinator, encode(Kind.CONTROL, ["error", f"{me}: {type(exc).__name__}: {exc}"]))
        coordinator.close(1000)
    finally:
        ctx.destroy(linger=1000)


class ManagerWorker:
    def __init__(self, plan: Plan, ctx: zmq.Context, vertex: str, guard: Guard, coordinator: zmq.Socket,
                 restarted: bool = False) -> None:
        self.vertex = vertex
        self.guard = guard
        self.coordinator = coordinator
        fm = plan.flowmaps()[vertex]
        width = plan.width(vertex)
        active = [i for i in range(width) if instance_name(vertex, i) not in plan.retired]
        self.desk = ReportingManager(vertex, plan.chain.vertices[vertex].scaling.loaded(), active, fm.scope.name,
                                     fm.level + 1 < len(fm.ladder), restarted)
        self.box = Mailbox(ctx, plan.address(manager_name(vertex)), manager_name(vertex))
        self.bye = False
        if plan.heartbeat_s:
            guard.heartbeat(plan.heartbeat_s, encode(Kind.CONTROL, ["hb", None]), coordinator)

    def run(self) -> None:
        self._tell("ready", None)
        poller = zmq.Poller()
        poller.register(self.box.sock, zmq.POLLIN)
        poller.register(self.coordinator, zmq.POLLIN)
        while not self.bye:
            events = self.guard.poll(poller, 1000)
            if events.get(self.coordinator):
                self._from_coordinator()
            if events.get(self.box.sock):
                self._reports()
                self._decide()

    def _reports(self) -> None:
        desk = self.desk
        for _, (what, body) in self.box.messages(Kind.CONTROL, 2, "report", limit=4096):
            if what == "load":
                desk.load(*body)
            elif what == "groups":
                desk.groups(body)

    def _decide(self) -> None:
        try:
            due = self.desk.due()
        except Exception as exc:        # operator code: report it, keep the vertex as it is
            self._tell("policy-error", [self.vertex, f"{type(exc).__name__}: {exc}"])
            return
        if due is None:
            return
        _, decisions, counts = due
        if decisions:
            self._tell("decide", [self.vertex, [[d.action, d.instance, d.reason] for d in decisions], counts])

    def _from_coordinator(self) -> None:
        while True:
            try:
                frame = self.coordinator.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                what, body = fields(decode(frame)[1], 2, "control")
            except WireError as exc:
                log.warning("%s: a bad control message: %s", manager_name(self.vertex), exc)
                continue
            if what == "bye":
                self.bye = True
            elif what == "shape":
                self.desk.shape(*body)

    def _tell(self, what: str, body: object) -> None:
        self.guard.send(self.coordinator, encode(Kind.CONTROL, [what, body]))
