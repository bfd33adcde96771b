"""The daemon: the one place that knows every part and wires them together.

Data flows one way::

    AMI bytes -> AmiClient -> CallTracker -> CallUpdates -> PopBook -> PopServer
                                                        \\-> CallStore (+ outbox -> CRM)
    FastAGI -> AgiServer -> RouteService -> CRM (cached)   (route -> tracker, profile -> pops)

Nothing in here parses protocols or decides routes; it moves results between
the parts and owns their lifetimes.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from tenacity import AsyncRetrying, wait_exponential

from cti.agi.server import AgiServer
from cti.ami.client import AmiClient
from cti.ami.protocol import Message
from cti.calls.agents import AgentDirectory
from cti.calls.model import Call, CallUpdate, Change, Route
from cti.calls.tracker import CallTracker
from cti.config import Settings
from cti.crm.base import LookupResult
from cti.crm.cache import CachedCrm
from cti.crm.sqlite import SqliteCrm
from cti.errors import CtiError
from cti.log import get_logger
from cti.metrics import Metrics
from cti.pops.book import PopBook
from cti.pops.server import PopServer
from cti.routing.service import RouteService
from cti.store import CallStore

log = get_logger(__name__)

PROFILE_TIMEOUT = 3.0     # a pop's profile may arrive late, but not forever
OUTBOX_INTERVAL = 1.0
# Fewer, not longer, collections: every pause delays every pop in flight
# (1 000 agent sockets make a large heap). Python's default is (700, 10, 10).
GC_THRESHOLDS = (20_000, 20, 10)


@dataclass
class Endpoints:
    """Where a running daemon listens (ports resolved when 0 was configured)."""

    ami: str
    agi: str
    pops: str
    http: str
    console: str


class Daemon:
    """Build with settings, then ``await start()`` … ``await stop()``."""

    def __init__(self, settings: Settings, *, with_simulator: bool = False) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.store = CallStore(settings.store.path)
        self.crm_backend = SqliteCrm(settings.crm.path, settings.crm.default_region,
                                     history_days=settings.crm.history_days)
        self.crm = CachedCrm(self.crm_backend, ttl=settings.crm.cache_ttl,
                             negative_ttl=settings.crm.negative_ttl,
                             breaker_failures=settings.crm.breaker_failures,
                             breaker_reset=settings.crm.breaker_reset)
        self.directory = AgentDirectory.from_settings(settings.agents)
        self.tracker = CallTracker(self.directory, settings.calls.outbound_contexts)
        self.book = PopBook(settings.pops.articles_per_pop)
        self.pops = PopServer(settings.pops, settings.agents, self.book)
        self.routes = RouteService(self.crm, settings, on_route=self._on_route)
        self.agi = AgiServer(settings.agi.host, settings.agi.port, {"route": self.routes.agi_route},
                             header_timeout=settings.agi.header_timeout,
                             max_sessions=settings.agi.max_sessions)
        self.simulator: Any = None
        self._with_simulator = with_simulator
        self.ami: AmiClient | None = None
        self.http: Any = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._records: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._stopping = False
        self.resynced = asyncio.Event()   # set after each rebuild from CoreShowChannels

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> Endpoints:
        s = self.settings
        problems = config_problems(s)
        if problems:
            raise CtiError("; ".join(problems))
        await self.store.open()
        await self.crm_backend.open()
        if s.crm.seed_demo and await self.crm_backend.is_empty():
            from cti.crm.demo import seed_demo

            await seed_demo(self.crm_backend)
            log.info("seeded the embedded CRM with demo customers", path=str(s.crm.path))
        await _listen("screen pops", "pops.port / CTI_POPS_PORT", s.pops.host, s.pops.port,
                      self.pops.start())
        await _listen("FastAGI", "agi.port / CTI_AGI_PORT", s.agi.host, s.agi.port,
                      self.agi.start())

        ami_settings = s.ami
        if self._with_simulator:
            from cti.sim.pbx import PbxSimulator

            self.simulator = PbxSimulator(
                host=s.sim.host, ami_port=s.sim.port, username=s.ami.username,
                secret=s.ami.secret.get_secret_value(),
                agi_url=f"agi://{s.agi.host}:{self.agi.port}/route",
                rate=s.sim.rate, speed=s.sim.speed, seed=s.sim.seed)
            await _listen("the PBX simulator's AMI", "--ami-port / CTI_SIM_PORT", s.sim.host,
                          s.sim.port, self.simulator.start())
            ami_settings = s.ami.model_copy(update={"host": s.sim.host,
                                                   "port": self.simulator.ami_port,
                                                   "backup": None})
        self.ami = AmiClient(ami_settings, on_event=self._on_ami_event,
                             on_connected=self._on_ami_connected,
                             on_disconnected=self._on_ami_disconnected)
        await self.ami.start()

        from cti.api import start_http

        self.http = await _listen("the admin API", "http.port / CTI_HTTP_PORT", s.http.host,
                                  s.http.port, start_http(self, s.http.host, s.http.port))
        self._spawn(self._record_writer(), "record-writer")
        self._spawn(self._outbox_worker(), "outbox")
        if self.simulator is not None:
            self.simulator.start_calls()
        # Objects made at start-up (settings, templates, seed data) live for good: keep
        # them out of the collector's generations so a full collection stays short.
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        self.metrics.watch_gc()
        eps = self.endpoints()
        log.info("daemon started", ami=eps.ami, agi=eps.agi, pops=eps.pops, http=eps.http)
        return eps

    def endpoints(self) -> Endpoints:
        s = self.settings
        ami = (f"{s.sim.host}:{self.simulator.ami_port} (PBX simulator)" if self.simulator
               else ", ".join(str(e) for e in s.ami.endpoints))
        http = f"http://{s.http.host}:{self.http.port}" if self.http else "-"
        pops = f"ws://{s.pops.host}:{self.pops.port}/"
        first = s.agents[0] if s.agents else None
        console = (f"{http}/console?agent={first.id}&ws={quote(pops, safe='')}" if first
                   else f"{http}/console")
        return Endpoints(ami=ami, agi=f"agi://{s.agi.host}:{self.agi.port}/route",
                         pops=pops, http=http, console=console)

    async def stop(self) -> None:
        """Stop every part that started (also after a failed :meth:`start`)."""
        self._stopping = True
        self.metrics.unwatch_gc()
        parts = [self.simulator, self.ami, self.agi, self.pops, self.http]
        for part in parts:
            if part is None:
                continue
            try:
                await part.stop()
            except Exception:  # keep stopping the others; say which one failed
                log.exception("error while stopping a part", part=type(part).__name__)
        await self._records.put(None)   # let the writer drain what was accepted
        for task in list(self._tasks):
            if task.get_name() != "record-writer":
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.routes.close()
        await self.crm.close()
        await self.store.close()
        log.info("daemon stopped")

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- AMI in ------------------------------------------------------------------

    def _on_ami_event(self, msg: Message) -> None:
        self.metrics.ami_events.inc()
        try:
            updates = self.tracker.handle(msg, time.time())
        except Exception:  # one bad event must never stop the stream
            log.exception("call tracker failed on an AMI event", event=msg.name)
            return
        if updates:
            self._dispatch(updates)

    async def _on_ami_connected(self) -> None:
        self.metrics.ami_connects.inc()
        self.metrics.ami_up.set(1)
        assert self.ami is not None
        mark = self.tracker.resync_mark()
        try:
            _, items = await self.ami.send_list("CoreShowChannels")
        except CtiError as exc:
            log.warning("could not rebuild live calls after connect", error=str(exc))
            return
        updates = self.tracker.rebuild(items, time.time(), mark)
        log.info("live calls rebuilt from CoreShowChannels", channels=len(items),
                 calls=len(self.tracker.live_calls()))
        self._dispatch(updates)
        self.resynced.set()

    def _on_ami_disconnected(self, reason: str) -> None:
        self.metrics.ami_up.set(0)

    # -- call updates out --------------------------------------------------------

    def _dispatch(self, updates: list[CallUpdate]) -> None:
        live_changed = False
        for update in updates:
            pairs = self.book.apply(update)
            if pairs:
                self.pops.publish(pairs)
                self.metrics.pops_sent.inc(len(pairs))
            change = update.change
            if change is Change.CALLER_KNOWN:
                self._want_profile(update.call)
            elif change is Change.STARTED:
                live_changed = True
            elif change is Change.ENDED:
                live_changed = True
                self._records.put_nowait(update.call.as_dict())
                self.pops.publish(self.book.forget(update.call.call_id))
                outcome = update.call.outcome.value if update.call.outcome else "unknown"
                self.metrics.calls_ended.labels(outcome).inc()
        if live_changed:  # only STARTED and ENDED change the live count; spare the hot path
            self.metrics.calls_live.set(len(self.tracker.live_calls()))

    def _on_route(self, uniqueid: str, route: Route, lookup: LookupResult | None) -> None:
        self.metrics.routes.labels(route.queue, route.source).inc()
        updates = self.tracker.attach_route(uniqueid, route, time.time())
        self._dispatch(updates)
        for update in updates:
            if update.change is Change.ROUTED and lookup is not None:
                self.pops.publish(self.book.set_profile(update.call.call_id, lookup))

    def _want_profile(self, call: Call) -> None:
        """Look the caller up on first sight, so even a call with no route gets a full pop."""
        number = self.routes.normalise(call.caller_num)
        if not number.usable or number.value is None:
            self.pops.publish(self.book.set_profile(
                call.call_id, LookupResult(number=None, status="no_number")))
            return
        cached = self.crm.peek(number.value)
        if cached is not None:
            self.pops.publish(self.book.set_profile(call.call_id, cached))
            return
        self._spawn(self._fetch_profile(call.call_id, number.value), f"profile-{call.call_id}")

    async def _fetch_profile(self, call_id: str, number: str) -> None:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(PROFILE_TIMEOUT):
                result = await self.crm.lookup(number)
        except (CtiError, TimeoutError) as exc:
            self.metrics.crm_errors.inc()
            log.warning("CRM lookup for a pop failed", call_id=call_id, error=str(exc) or "timeout")
            result = LookupResult(number=number, status="error")
        self.metrics.crm_lookup.observe(time.perf_counter() - started)
        if not self._stopping:
            self.pops.publish(self.book.set_profile(call_id, result))

    # -- records and CRM write-back ------------------------------------------------

    async def _record_writer(self) -> None:
        while True:
            record = await self._records.get()
            if record is None:
                return
            # A record is never dropped: a failing store (disk full, locked file) is
            # retried with backoff, while later records wait behind it in order.
            retrying = AsyncRetrying(
                wait=wait_exponential(multiplier=0.5, max=30),
                stop=lambda state: self._stopping and state.attempt_number >= 3,
                before_sleep=lambda state: log.warning(
                    "could not store a call record; retrying", call_id=record["call_id"],
                    error=str(state.outcome.exception()) if state.outcome else None),
                reraise=True)
            try:
                async for attempt in retrying:
                    with attempt:
                        await self.store.save_call(record)
            except Exception:
                log.exception("call record lost at shutdown", call_id=record["call_id"])
                continue
            log.info("call record stored", call_id=record["call_id"],
                     outcome=record.get("outcome"), agent=record.get("agent"))

    async def _outbox_worker(self) -> None:
        delay = OUTBOX_INTERVAL
        while True:
            await asyncio.sleep(delay)
            items = await self.store.pending()
            self.metrics.outbox_pending.set(len(items))
            delay = OUTBOX_INTERVAL
            for item_id, kind, payload in items:
                try:
                    await self.crm_backend.log_call(payload)
                except Exception as exc:  # keep it queued; retry later, slower
                    await self.store.mark_failed(item_id, str(exc))
                    log.warning("CRM write-back failed; will retry", call_id=payload.get("call_id"),
                                error=str(exc))
                    delay = min(60.0, delay * 4)
                    break
                await self.store.mark_done(item_id)

    # -- queries (API, CLI) ----------------------------------------------------------

    def live_calls(self) -> list[dict[str, Any]]:
        return [c.as_dict() for c in self.tracker.live_calls()]

    def status(self) -> dict[str, Any]:
        ami_status = self.ami.status if self.ami is not None else None
        return {
            "ami": _plain(ami_status),
            "calls_live": len(self.tracker.live_calls()),
            "agents_connected": sorted(self.pops.connected_agents()),
            "endpoints": self.endpoints().__dict__,
        }


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def config_problems(settings: Settings) -> list[str]:
    """Settings that load but must not run: demo pop tokens reachable from the network."""
    problems = []
    demo = [a.id for a in settings.agents if a.token.get_secret_value().startswith("demo-")]
    if demo and settings.pops.host not in LOOPBACK:
        problems.append(
            f"agents {', '.join(demo)} still use the demo pop tokens while pops.host is "
            f"{settings.pops.host!r}: set a token per [[agents]] entry")
    return problems


async def _listen(what: str, setting: str, host: str, port: int, starting: Any) -> Any:
    """Await a server start; a port in use becomes a CtiError naming the setting."""
    try:
        return await starting
    except OSError as exc:
        raise CtiError(f"cannot listen for {what} on {host}:{port}: "
                       f"{exc.strerror or exc}; choose another port ({setting})") from None


def _plain(obj: Any) -> Any:
    if obj is None:
        return None
    if hasattr(obj, "as_dict"):
        return obj.as_dict()
    if hasattr(obj, "__dataclass_fields__"):
        return {k: _plain(getattr(obj, k)) for k in obj.__dataclass_fields__}
    if hasattr(obj, "value"):
        return obj.value
    return obj if isinstance(obj, (str, int, float, bool, list, dict)) else str(obj)


async def run_forever(daemon: Daemon) -> None:
    """Start, print nothing, and run until cancelled (Ctrl-C)."""
    await daemon.start()
    try:
        await asyncio.Event().wait()
    finally:
        with contextlib.suppress(Exception):
            await daemon.stop()
