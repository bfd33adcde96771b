"""Admin API, metrics and the agent console, served by aiohttp on loopback.

Routes: ``/`` (redirect to the console), ``/console``, ``/healthz``,
``/metrics`` (Prometheus), ``/api/status``, ``/api/calls`` (``?live=1`` for
calls in progress, ``?limit=N``), ``/api/calls/{call_id}``,
``/api/route/{number}`` (what the FastAGI route would decide now).
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

if TYPE_CHECKING:
    from cti.daemon import Daemon


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


class HttpApi:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.app = web.Application()
        self.app.add_routes([
            web.get("/", self.index),
            web.get("/console", self.console),
            web.get("/favicon.ico", self.favicon),
            web.get("/healthz", self.healthz),
            web.get("/metrics", self.metrics),
            web.get("/api/status", self.status),
            web.get("/api/calls", self.calls),
            web.get("/api/calls/{call_id}", self.call),
            web.get("/api/route/{number}", self.route),
        ])
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server  # the bound socket tells the real port when 0 was asked
        self.port = server.sockets[0].getsockname()[1] if server and server.sockets else port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def index(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/console")

    async def console(self, request: web.Request) -> web.Response:
        page = resources.files("cti.pops").joinpath("static/console.html").read_text("utf-8")
        return web.Response(text=page, content_type="text/html")

    async def favicon(self, request: web.Request) -> web.Response:
        return web.Response(status=204)  # browsers ask for it; a 404 is console noise

    async def healthz(self, request: web.Request) -> web.Response:
        ami = self.daemon.ami
        up = bool(ami is not None and getattr(ami.status, "state", None) is not None
                  and str(getattr(ami.status.state, "value", ami.status.state)) == "connected")
        return _json({"ok": True, "ami_connected": up}, 200)

    async def metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.daemon.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def status(self, request: web.Request) -> web.Response:
        return _json(self.daemon.status())

    async def calls(self, request: web.Request) -> web.Response:
        if request.query.get("live") in ("1", "true", "yes"):
            return _json(self.daemon.live_calls())
        try:
            limit = int(request.query.get("limit", "50"))
        except ValueError:
            return _json({"error": f"limit {request.query['limit']!r} is not an integer"}, 400)
        return _json(await self.daemon.store.calls(limit=max(1, min(limit, 1000))))

    async def call(self, request: web.Request) -> web.Response:
        call_id = request.match_info["call_id"]
        live = self.daemon.tracker.get(call_id)
        if live is not None:
            return _json(live.as_dict())
        record = await self.daemon.store.call(call_id)
        if record is None:
            return _json({"error": f"no call {call_id!r}"}, 404)
        return _json(record)

    async def route(self, request: web.Request) -> web.Response:
        text = await self.daemon.routes.explain(request.match_info["number"])
        return web.Response(text=text, content_type="text/plain")


async def start_http(daemon: Daemon, host: str, port: int) -> HttpApi:
    api = HttpApi(daemon)
    await api.start(host, port)
    return api
