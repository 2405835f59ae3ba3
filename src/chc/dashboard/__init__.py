"""The live dashboard of ``chc serve --dashboard-port P``.

Theory of operation
-------------------
A small ASGI application (Starlette) served by uvicorn on a thread of its own,
so the chain's loop never waits for a browser.  The loop's thread publishes each
:class:`~chc.observe.Observer` sample (once a second) into a :class:`Dashboard`,
which keeps, under a lock, the chain's graph, the throughput and latency series
of the last ten minutes, the latest sample (per-instance rates and queues) and
the latest alerts and events; nothing on the server's side touches the runtime.

The page (``static/index.html``, ``dashboard.js``) opens ``/events``, a
Server-Sent Events stream: first an ``init`` event with everything kept, then a
``sample`` event per new sample, and an ``end`` event when the run stops.  SSE,
not WebSocket: the data flows one way, EventSource reconnects by itself, and it
needs no extra server package.  ``/state`` returns the same as ``init`` as JSON
(for scripts and tests).  The charts are uPlot (MIT, 51 KB, vendored in
``static/vendor`` with its licence: no CDN, the page needs nothing from the
internet); the chain's graph is a few SVG boxes drawn by the page itself.

The listening socket is bound here, before the thread starts, so a port in use
is an ``OSError`` the caller reports in one line.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..observe import Observer, Sample, dumps, graph

__all__ = ["Dashboard"]

STATIC = Path(__file__).resolve().parent / "static"
HISTORY = 600               # samples of the series kept (ten minutes at one a second)
POLL_S = 0.2                # how often a stream looks for a new sample
KEEPALIVE_S = 15.0


def _point(s: Sample) -> list:
    lat = s["latency_ms"]
    return [s["time"], s["pps_in"], s["pps_out"], lat and lat["mean"], lat and lat["max"]]


class Dashboard:
    """The samples a page is shown, and the server that shows them (see module doc)."""

    def __init__(self, observer: Observer, title: str, addr: str, port: int,
                 alerts: int = 50, events: int = 100) -> None:
        self.title = title
        self.graph = graph(observer.runtime)
        self._lock = threading.Lock()
        self._series: deque[list] = deque(maxlen=HISTORY)
        self._alerts: deque[dict] = deque(maxlen=alerts)
        self._events: deque[dict] = deque(maxlen=events)
        self._latest: Sample | None = None
        self._pending: deque[tuple[int, Sample]] = deque(maxlen=64)   # for streams that fell behind
        self.seq = 0
        self.closed = False
        family, kind, proto, _, where = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM,
                                                           flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(where)
            sock.listen(64)
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(app(self), log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]},
                                       name="chc-dashboard", daemon=True)
        self.thread.start()

    # -- the loop's side -----------------------------------------------------------------
    def publish(self, sample: Sample) -> None:
        with self._lock:
            self.seq += 1
            self._latest = sample
            self._series.append(_point(sample))
            stamp = {"time": sample["time"]}
            self._alerts.extend({**a, **stamp} for a in sample["alerts"])
            self._events.extend({**e, **stamp} for e in sample["events"])
            self._pending.append((self.seq, sample))

    def close(self) -> None:
        """Streams send ``end`` and close; the server stops."""
        self.closed = True          # each stream sends ``end`` within POLL_S; uvicorn waits for them
        self.server.should_exit = True
        self.thread.join(timeout=5)

    # -- the server's side ---------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        with self._lock:
            return {"title": self.title, "graph": self.graph, "seq": self.seq, "series": list(self._series),
                    "latest": self._latest, "alerts": list(self._alerts), "events": list(self._events),
                    "running": not self.closed}

    def since(self, seq: int) -> tuple[int, list[Sample]]:
        """Samples published after ``seq`` (those still kept), and the newest seq."""
        with self._lock:
            return self.seq, [s for n, s in self._pending if n > seq]

    async def stream(self) -> AsyncIterator[str]:
        state = self.state()
        seq = state["seq"]
        yield f"event: init\ndata: {json.dumps(state, separators=(',', ':'))}\n\n"
        quiet = 0.0
        while True:
            closed = self.closed
            seq, fresh = self.since(seq)
            for s in fresh:
                yield f"event: sample\ndata: {dumps(s)}\n\n"
            if closed:
                yield "event: end\ndata: {}\n\n"
                return
            quiet = 0.0 if fresh else quiet + POLL_S
            if quiet >= KEEPALIVE_S:        # a comment line keeps proxies from closing the stream
                quiet = 0.0
                yield ": keep-alive\n\n"
            await asyncio.sleep(POLL_S)


def app(board: Dashboard) -> Starlette:
    async def index(request: Request) -> FileResponse:
        return FileResponse(STATIC / "index.html")

    async def events(request: Request) -> StreamingResponse:
        return StreamingResponse(board.stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def state(request: Request) -> JSONResponse:
        return JSONResponse(board.state())

    return Starlette(routes=[Route("/", index), Route("/events", events), Route("/state", state),
                             Mount("/static", StaticFiles(directory=STATIC), name="static")])
