"""Routing at call time: caller number -> CRM lookup under a budget -> Route.

The FastAGI handler :meth:`RouteService.agi_route` runs while the caller waits
in the dialplan, so everything it does is bounded (case 19):

* the CRM lookup gets ``agi.lookup_budget_ms``; when the budget runs out the
  caller gets the default route at once, and the lookup is *not* cancelled: it
  carries on in the background (bounded by ``background_timeout``) so its
  answer fills the CRM cache for the screen pop and the next call;
* every CRM failure (exception, nonsense answer) is a default route, never a
  dead channel;
* screen pops and CRM writes are not done here: ``on_route`` hands the
  decision to the daemon, which does them on its own time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from cti.agi.server import AgiSession
from cti.calls.model import Route
from cti.config import Settings
from cti.crm.base import Crm, Customer, LookupResult
from cti.crm.phone import Number, normalise
from cti.errors import AgiError
from cti.log import get_logger, mask_number, mask_text
from cti.routing.rules import decide, evaluate

log = get_logger(__name__)

OnRoute = Callable[[str, Route, LookupResult | None], None]

REASON_MAX = 120          # CTI_ROUTE_REASON is for humans reading the CDR / console
CALLERID_TIMEOUT = 1.0    # the GET VARIABLE CALLERID(num) fallback
EXPLAIN_TIMEOUT = 10.0    # `cti route` is interactive; the live budget does not apply


class RouteService:
    """Decides routes for callers; :meth:`agi_route` is the FastAGI ``route`` script.

    ``crm`` is usually a :class:`~cti.crm.cache.CachedCrm`. ``on_route(uniqueid,
    route, lookup)`` is called once per routed call, synchronously, so it must
    not block; ``lookup`` is None when the CRM did not answer in time or failed.
    Call :meth:`close` on shutdown to cancel background lookups.
    """

    def __init__(self, crm: Crm, settings: Settings, on_route: OnRoute | None = None, *,
                 background_timeout: float = 10.0) -> None:
        self._crm = crm
        self._settings = settings
        self._on_route = on_route
        self._background_timeout = background_timeout
        self._lookups: set[asyncio.Task[Any]] = set()

    def normalise(self, number: str | None) -> Number:
        crm = self._settings.crm
        return normalise(number, crm.default_region, crm.min_digits)

    async def decide_for(self, number: str | None, *,
                         budget_s: float) -> tuple[Route, LookupResult | None]:
        """The route for caller ``number``, decided within ``budget_s`` seconds.

        Returns the route and the lookup it was based on (None on CRM timeout or
        failure: the route is then the default one). Never raises a CRM error.
        """
        routing = self._settings.routing
        parsed = self.normalise(number)
        if not parsed.usable or parsed.value is None:
            lookup = LookupResult(number=None, status="no_number")
            return decide(lookup, routing), lookup

        task = asyncio.create_task(self._bounded_lookup(parsed.value))
        self._lookups.add(task)
        task.add_done_callback(self._lookup_done)
        # asyncio.wait, unlike wait_for, leaves the task running when time is up.
        done, _ = await asyncio.wait({task}, timeout=budget_s)
        if not done:
            ms = round(budget_s * 1000)
            return decide(None, routing,
                          reason_if_none=f"CRM lookup timed out after {ms} ms: default route"), None

        problem = _problem(task)
        if problem is not None:
            problem = mask_text(problem)
            log.warning("crm lookup failed, default route", number=parsed.value, error=problem)
            return decide(None, routing, reason_if_none=f"CRM lookup failed ({problem}): "
                                                        "default route"), None
        lookup = task.result()
        return decide(lookup, routing), lookup

    async def agi_route(self, session: AgiSession) -> None:
        """FastAGI ``route``: set CTI_QUEUE, CTI_PRIORITY, CTI_SEGMENT, CTI_CUSTOMER_ID
        and CTI_ROUTE_REASON on the channel, then VERBOSE the decision.

        Raises AgiHangup / AgiError from the session (the server logs them);
        CRM trouble never raises, it gives the default route.
        """
        started = time.perf_counter()
        request = session.request
        uniqueid = request.uniqueid or ""
        number = request.callerid
        if number is None and not session.hung_up:
            number = await self._callerid_from_channel(session)

        budget = self._settings.agi.lookup_budget_ms / 1000
        route, lookup = await self.decide_for(number, budget_s=budget)
        if self._on_route is not None:
            try:
                self._on_route(uniqueid, route, lookup)
            except Exception:  # the daemon's bookkeeping must not cost the caller a route
                log.exception("on_route hook failed", uniqueid=uniqueid)

        if session.hung_up:
            log.info("agi route decided after hangup", uniqueid=uniqueid, queue=route.queue)
            return
        await session.set_variable("CTI_QUEUE", route.queue)
        await session.set_variable("CTI_SEGMENT", route.segment)
        await session.set_variable("CTI_PRIORITY", str(route.priority))
        await session.set_variable("CTI_CUSTOMER_ID", route.customer_id or "")
        await session.set_variable("CTI_ROUTE_REASON", _short(route.reason))
        shown = mask_number(number) if number else "unknown caller"
        await session.verbose(f"CTI route for {shown}: {route.queue}", 1)
        log.info("agi route", uniqueid=uniqueid, caller=number or "", queue=route.queue,
                 priority=route.priority, customer_id=route.customer_id, reason=route.reason,
                 ms=round((time.perf_counter() - started) * 1000, 1))

    async def explain(self, number: str) -> str:
        """What ``cti route NUMBER`` prints: normalised number, CRM matches, rule
        evaluation and the final decision. Waits up to EXPLAIN_TIMEOUT for the CRM.
        """
        parsed = self.normalise(number)
        lines = [f"number:     {number!r}"]
        if not parsed.usable:
            lines.append(f"normalised: none ({parsed.reason or 'no usable number'})")
        else:
            lines.append(f"normalised: {parsed.value} ({parsed.kind})")
        route, lookup = await self.decide_for(number, budget_s=EXPLAIN_TIMEOUT)
        if lookup is None:
            lines.append("crm:        no answer (see reason)")
        else:
            lines.append(f"crm:        {lookup.status}, {len(lookup.matches)} match(es)")
            rules = self._settings.routing.rules
            for customer in lookup.matches:
                lines.append(f"  {customer.customer_id} {customer.name!r} segment="
                             f"{customer.segment} tags={customer.tags} flags={customer.flags}")
                for check in evaluate(customer, rules):
                    mark = "match" if check.matched else "no"
                    lines.append(f"    rule {check.rule!r}: {mark} ({check.why})")
        lines.append(f"route:      queue={route.queue} priority={route.priority} "
                     f"segment={route.segment} customer_id={route.customer_id or '-'} "
                     f"source={route.source}")
        lines.append(f"reason:     {route.reason}")
        return "\n".join(lines)

    async def close(self) -> None:
        """Cancel lookups still running in the background."""
        tasks = list(self._lookups)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- internals ---------------------------------------------------------

    async def _bounded_lookup(self, number: str) -> LookupResult:
        async with asyncio.timeout(self._background_timeout):
            return await self._crm.lookup(number)

    def _lookup_done(self, task: asyncio.Task[Any]) -> None:
        self._lookups.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Retrieved here so a late failure is logged once, not "never retrieved".
            log.debug("background crm lookup failed", error=repr(task.exception()))

    async def _callerid_from_channel(self, session: AgiSession) -> str | None:
        """Ask the channel for CALLERID(num) when the environment had none."""
        try:
            value = await session.get_variable("CALLERID(num)", timeout=CALLERID_TIMEOUT)
        except AgiError as exc:
            # Route as an unknown caller; a session that is really broken fails on
            # the next command anyway.
            log.debug("CALLERID(num) not available", uniqueid=session.uniqueid, error=str(exc))
            return None
        return value or None


def _problem(task: asyncio.Task[Any]) -> str | None:
    """Why a finished lookup task is unusable, or None if its result is sound."""
    if task.cancelled():
        return "cancelled"
    exc = task.exception()
    if isinstance(exc, TimeoutError):
        return "no answer in the background limit"
    if exc is not None:
        return f"{type(exc).__name__}: {exc}"[:200]
    result = task.result()
    if not isinstance(result, LookupResult):
        return f"CRM returned {type(result).__name__}, expected LookupResult"
    if not all(isinstance(c, Customer) for c in result.matches):
        return "CRM returned matches that are not customers"
    return None


def _short(reason: str) -> str:
    text = mask_text(reason)
    return text if len(text) <= REASON_MAX else text[:REASON_MAX - 3] + "..."
