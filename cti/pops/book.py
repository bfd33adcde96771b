"""Who gets which screen pop, as plain data. No asyncio, no sockets.

Theory of operation
-------------------
The call tracker turns AMI events into :class:`~cti.calls.model.CallUpdate` notes.
:class:`PopBook` turns those notes into messages for agents: ``apply(update)``
returns ``(agent_id, message)`` pairs and the pop server sends each message to
every socket of that agent, and to nobody else.

* A pop belongs to one (agent, call). It opens when that agent's phone rings for
  the call (or, with no ringing seen, when the agent is connected to it), and it
  closes when the agent's ringing stops, the agent hands the customer on, or the
  call ends. Local ``;1``/``;2`` plumbing never reaches this module: the tracker
  only reports agent legs.
* A second ringing leg for the same agent (two devices, two queues) updates the
  existing pop; the pop closes only when the agent has no active leg left.
* The CRM profile arrives later through :meth:`PopBook.set_profile`; a pop never
  waits for it (``match: "pending"`` until then).
* ``seq`` counts the call messages sent to one agent (all their tabs see the same
  numbers); ``version`` counts the changes of one call. Clients drop a message
  whose ``seq`` they have seen or whose ``version`` is older than what they show.

Everything that changes pop state lives in this file. Messages are built once
and shared: treat them as read-only.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cti.calls.model import AgentLeg, Call, CallUpdate, Change, LegState
from cti.crm.base import Customer, LookupResult
from cti.crm.phone import is_withheld
from cti.log import get_logger

log = get_logger(__name__)

Pair = tuple[str, dict[str, Any]]

FLAG_NAMES = ("open_complaint", "unresolved", "vip", "churn_risk", "complainer")

# LookupResult.status -> the pop's match status, when the matches do not decide it.
_MATCH_BY_STATUS = {"not_found": "not_found", "no_number": "withheld", "error": "error",
                    "timeout": "error", "found": "not_found", "ambiguous": "not_found"}

# Fields of Customer.as_dict() that a pop carries at top level instead (articles capped).
_PROMOTED = ("history", "open_tickets", "articles")


class PopState(str, enum.Enum):
    """The state an agent's pop shows. Only RINGING and CONNECTED are open."""

    RINGING = "ringing"
    CONNECTED = "connected"
    ANSWERED_ELSEWHERE = "answered_elsewhere"  # ring-all: another agent took the call
    NO_ANSWER = "no_answer"
    CANCELLED = "cancelled"                    # the caller left while it rang
    BUSY = "busy"
    TRANSFERRED = "transferred"                # this agent handed the customer on
    ENDED = "ended"                            # call over (or this agent hung up)
    EXPIRED = "expired"                        # the daemon forgot the call

    @property
    def open(self) -> bool:
        return self in (PopState.RINGING, PopState.CONNECTED)


# How a leg that stopped ringing closes its agent's pop.
_RING_END_STATE = {
    LegState.ANSWERED_ELSEWHERE: PopState.ANSWERED_ELSEWHERE,
    LegState.NO_ANSWER: PopState.NO_ANSWER,
    LegState.CANCELLED: PopState.CANCELLED,
    LegState.BUSY: PopState.BUSY,
}


@dataclass(slots=True)
class _Pop:
    """One agent's pop for one call."""

    agent: str
    state: PopState
    legs: set[str]                 # Uniqueids of this agent's legs that still ring or talk
    queue: str | None
    rang_at: float | None
    connected_at: float | None = None
    transferred_from: str | None = None


@dataclass(slots=True)
class _CallPops:
    """What the book knows about one call, and the pops it has open."""

    call_id: str
    caller: dict[str, Any]
    route: dict[str, Any] | None
    queue: str | None
    lookup: LookupResult | None = None
    lookup_failed: bool = False    # set_profile(call_id, None): the lookup gave up
    transferred_from: str | None = None
    version: int = 0
    pops: dict[str, _Pop] = field(default_factory=dict)
    # Built on first use, dropped when caller/route/profile change (hot path: ring-all).
    profile_part: dict[str, Any] | None = None
    body: dict[str, Any] | None = None


def _caller_of(call: Call) -> dict[str, Any]:
    number = (call.caller_num or "").strip()
    withheld = not any(c.isdigit() for c in number)
    name = (call.caller_name or "").strip()
    if is_withheld(name):
        name = ""
    return {"number": None if withheld else number, "name": name or None, "withheld": withheld}


def _route_of(call: Call) -> dict[str, Any] | None:
    r = call.route
    if r is None:
        return None
    return {"queue": r.queue, "priority": r.priority, "segment": r.segment, "reason": r.reason}


def _no_flags() -> dict[str, bool]:
    return dict.fromkeys(FLAG_NAMES, False)


class PopBook:
    """Decides which agent gets which pop, and builds the messages.

    Feed every :class:`CallUpdate` to :meth:`apply` (before starting the CRM
    lookup for it), the lookup's outcome to :meth:`set_profile`, and hand the
    returned pairs to :meth:`cti.pops.server.PopServer.publish`. Nothing raises
    on odd input: an update for an unknown agent or call yields no messages.
    """

    def __init__(self, articles_per_pop: int = 5) -> None:
        if articles_per_pop < 0:
            raise ValueError(f"articles_per_pop={articles_per_pop!r}: expected 0 or more")
        self.articles_per_pop = articles_per_pop
        self._calls: dict[str, _CallPops] = {}
        self._by_agent: dict[str, dict[str, _Pop]] = {}   # agent -> call_id -> open pop
        self._seq: dict[str, int] = {}
        # The whole reaction to the tracker, on one screen.
        self._handlers: dict[Change, Callable[[_CallPops, CallUpdate], list[Pair]]] = {
            Change.STARTED: self._on_info,
            Change.QUEUED: self._on_info,
            Change.CALLER_KNOWN: self._on_caller,
            Change.ROUTED: self._on_route,
            Change.AGENT_RINGING: self._on_ringing,
            Change.AGENT_CONNECTED: self._on_connected,
            Change.AGENT_RING_ENDED: self._on_ring_ended,
            Change.TRANSFERRED: self._on_transferred,
            Change.AGENT_DONE: self._on_agent_done,
        }

    # --- public API ---------------------------------------------------------

    def apply(self, update: CallUpdate) -> list[Pair]:
        """Messages caused by one tracker update, in the order to send them."""
        call = update.call
        ctx = self._calls.get(call.call_id)
        if update.change is Change.ENDED or not call.live:
            # A late note about a finished call must not reopen a pop.
            return self._end(ctx) if ctx is not None else []

        if ctx is None:
            ctx = _CallPops(call_id=call.call_id, caller=_caller_of(call),
                            route=_route_of(call), queue=call.queue)
            self._calls[call.call_id] = ctx
        handler = self._handlers.get(update.change)
        return handler(ctx, update) if handler else []

    def set_profile(self, call_id: str, lookup: LookupResult | None) -> list[Pair]:
        """Attach the CRM lookup (``None`` = it failed) and update every open pop in place.

        An unknown or finished call is ignored, so a slow lookup cannot
        resurrect a pop.
        """
        ctx = self._calls.get(call_id)
        if ctx is None:
            return []
        ctx.lookup = lookup
        ctx.lookup_failed = lookup is None
        ctx.profile_part = ctx.body = None
        if not ctx.pops:
            return []
        version = self._bump(ctx)
        profile = self._profile_part(ctx)
        return [(pop.agent, self._update_msg(ctx, pop, "profile", version, profile))
                for pop in ctx.pops.values()]

    def snapshot(self, agent_id: str) -> dict[str, Any]:
        """The agent's open pops, for a (re)connecting client.

        ``seq`` is the agent's latest call-message number: every message with a
        higher ``seq`` comes after this snapshot.
        """
        pops = []
        for call_id, pop in self._by_agent.get(agent_id, {}).items():
            ctx = self._calls[call_id]
            item = self._pop_fields(ctx, pop, ctx.version)
            pops.append(item)
        return {"type": "snapshot", "seq": self._seq.get(agent_id, 0), "agent": agent_id,
                "pops": pops}

    def forget(self, call_id: str) -> list[Pair]:
        """Drop a call (the daemon expired it); close its still-open pops (reason ``expired``)."""
        ctx = self._calls.get(call_id)
        if ctx is None:
            return []
        return self._end(ctx, PopState.EXPIRED)

    def current_seq(self, agent_id: str) -> int:
        """The ``seq`` of the last call message built for ``agent_id`` (0 if none)."""
        return self._seq.get(agent_id, 0)

    def open_pops(self, agent_id: str | None = None) -> int:
        """How many pops are open, for one agent or in total (metrics, tests)."""
        if agent_id is not None:
            return len(self._by_agent.get(agent_id, ()))
        return sum(len(p) for p in self._by_agent.values())

    @property
    def live_calls(self) -> int:
        return len(self._calls)

    # --- handlers: one per Change ---------------------------------------------

    def _on_info(self, ctx: _CallPops, update: CallUpdate) -> list[Pair]:
        ctx.queue = update.call.queue or ctx.queue
        return []

    def _on_caller(self, ctx: _CallPops, update: CallUpdate) -> list[Pair]:
        caller = _caller_of(update.call)
        if caller == ctx.caller:
            return []
        if caller["number"] != ctx.caller["number"]:
            # A profile found for the old number says nothing about the new one.
            ctx.lookup, ctx.lookup_failed = None, False
            ctx.profile_part = None
        ctx.caller, ctx.body = caller, None
        if not ctx.pops:
            return []
        version = self._bump(ctx)
        extra = {"caller": caller, **self._profile_part(ctx)}
        return [(pop.agent, self._update_msg(ctx, pop, "caller", version, extra))
                for pop in ctx.pops.values()]

    def _on_route(self, ctx: _CallPops, update: CallUpdate) -> list[Pair]:
        route = _route_of(update.call)
        ctx.queue = update.call.queue or ctx.queue
        if route == ctx.route:
            return []
        ctx.route, ctx.body = route, None
        if not ctx.pops:
            return []
        version = self._bump(ctx)
        return [(pop.agent, self._update_msg(ctx, pop, "route", version, {"route": route}))
                for pop in ctx.pops.values()]

    def _on_ringing(self, ctx: _CallPops, update: CallUpdate) -> list[Pair]:
        leg = update.leg
        if leg is None or not leg.agent:
            log.debug("pop skipped: ringing leg without agent", call_id=ctx.call_id,
                      channel=leg.channel if leg else None)
            return []
        pop = ctx.pops.get(leg.agent)
        if pop is None:
            pop = self._open(ctx, leg, PopState.RINGING, update.call)
            return [(pop.agent, self._pop_msg(ctx, pop, self._bump(ctx)))]
        if leg.uniqueid in pop.legs or pop.state is not PopState.RINGING:
            # Same leg again (AMI repeats events), or already talking: nothing new to show.
            pop.legs.add(leg.uniqueid)
            return []
        pop.legs.add(leg.uniqueid)
        pop.queue = leg.queue or pop.queue
        return [(pop.agent, self._update_msg(ctx, pop, "ringing", self._bump(ctx),
                                             {"queue": pop.queue}))]

    def _on_connected(self, ctx: _CallPops, update: CallUpdate) -> list[Pair]:
        leg = update.leg
        if leg is None or not leg.agent:
            return []
        pop = ctx.pops.get(leg.agent)
        if pop is None:
            # No ringing seen (attended transfer target, originated callback): pop now.
            pop = self._open(ctx, leg, PopState.CONNECTED, update.call)
            return [(pop.agent, self._pop_msg(ctx, pop, self._bump(ctx)))]
        pop.legs.add(leg.uniqueid)
        if pop.state is PopState.CONNECTED:
            return []
        pop.state = PopState.CONNECTED
        pop.connected_at = leg.answer_at
        return [(pop.agent, self._update_msg(ctx, pop, "connected", self._bump(ctx),
                                             {"connected_at": pop.connected_at}))]

    def _on_ring_ended(self, ctx: _CallPops, update: CallUpdate) -> list[Pair]:
        leg = update.leg
        pop = ctx.pops.get(leg.agent) if leg is not None and leg.agent else None
        if pop is None:
            return []
        pop.legs.discard(leg.uniqueid)
        if pop.state is not PopState.RINGING or pop.legs:
            # Another leg of the same agent still rings, or the agent already answered
            # on another device: this leg's end changes nothing the agent sees.
            return []
        state = _RING_END_STATE.get(leg.state, PopState.NO_ANSWER)
        return self._close(ctx, [pop], state, self._bump(ctx))

    def _on_transferred(self, ctx: _CallPops, update: CallUpdate) -> list[Pair]:
        leg = update.leg
        if leg is not None and leg.agent:
            leaving = [ctx.pops[leg.agent]] if leg.agent in ctx.pops else []
            ctx.transferred_from = leg.agent
        else:
            # No transferer named: whoever was talking and has no active leg left.
            active = {lg.uniqueid for lg in update.call.legs if lg.active}
            leaving = [p for p in ctx.pops.values()
                       if p.state is PopState.CONNECTED and not (p.legs & active)]
            if leaving:
                ctx.transferred_from = leaving[0].agent
        if not leaving:
            return []
        return self._close(ctx, leaving, PopState.TRANSFERRED, self._bump(ctx))

    def _on_agent_done(self, ctx: _CallPops, update: CallUpdate) -> list[Pair]:
        leg = update.leg
        pop = ctx.pops.get(leg.agent) if leg is not None and leg.agent else None
        if pop is None:
            return []
        pop.legs.discard(leg.uniqueid)
        if pop.legs:
            return []
        if leg.state is LegState.TRANSFERRED:
            ctx.transferred_from = leg.agent
            state = PopState.TRANSFERRED
        else:
            state = PopState.ENDED
        return self._close(ctx, [pop], state, self._bump(ctx))

    def _end(self, ctx: _CallPops, state: PopState = PopState.ENDED) -> list[Pair]:
        del self._calls[ctx.call_id]
        if not ctx.pops:
            return []
        return self._close(ctx, list(ctx.pops.values()), state, self._bump(ctx))

    # --- state changes ----------------------------------------------------------

    def _open(self, ctx: _CallPops, leg: AgentLeg, state: PopState, call: Call) -> _Pop:
        assert leg.agent
        pop = _Pop(agent=leg.agent, state=state, legs={leg.uniqueid},
                   queue=leg.queue or call.queue or ctx.queue, rang_at=leg.ring_at,
                   transferred_from=ctx.transferred_from)
        if state is PopState.CONNECTED:
            pop.connected_at = leg.answer_at
        ctx.pops[pop.agent] = pop
        self._by_agent.setdefault(pop.agent, {})[ctx.call_id] = pop
        return pop

    def _close(self, ctx: _CallPops, pops: list[_Pop], state: PopState,
               version: int) -> list[Pair]:
        """Final ``pop_update`` (so the UI can say why) then ``pop_close``, per pop."""
        out: list[Pair] = []
        for pop in pops:
            pop.state = state
            out.append((pop.agent, self._update_msg(ctx, pop, state.value, version, None)))
            out.append((pop.agent, {"type": "pop_close", "seq": self._next_seq(pop.agent),
                                    "call_id": ctx.call_id, "version": version,
                                    "reason": state.value}))
            del ctx.pops[pop.agent]
            mine = self._by_agent.get(pop.agent)
            if mine is not None:
                mine.pop(ctx.call_id, None)
                if not mine:
                    del self._by_agent[pop.agent]
        return out

    def _bump(self, ctx: _CallPops) -> int:
        ctx.version += 1
        return ctx.version

    def _next_seq(self, agent: str) -> int:
        seq = self._seq.get(agent, 0) + 1
        self._seq[agent] = seq
        return seq

    # --- message building -------------------------------------------------------

    def _pop_msg(self, ctx: _CallPops, pop: _Pop, version: int) -> dict[str, Any]:
        return {"type": "pop", "seq": self._next_seq(pop.agent),
                **self._pop_fields(ctx, pop, version)}

    def _pop_fields(self, ctx: _CallPops, pop: _Pop, version: int) -> dict[str, Any]:
        head = {"call_id": ctx.call_id, "version": version, "state": pop.state.value,
                "queue": pop.queue, "rang_at": pop.rang_at, "connected_at": pop.connected_at,
                "transferred_from": pop.transferred_from}
        return {**head, **self._body(ctx)}

    def _update_msg(self, ctx: _CallPops, pop: _Pop, what: str, version: int,
                    extra: dict[str, Any] | None) -> dict[str, Any]:
        msg = {"type": "pop_update", "seq": self._next_seq(pop.agent), "call_id": ctx.call_id,
               "version": version, "update": what, "state": pop.state.value}
        if extra:
            msg.update(extra)
        return msg

    def _body(self, ctx: _CallPops) -> dict[str, Any]:
        """The part of a pop every agent of the call shares; built once per change."""
        if ctx.body is None:
            ctx.body = {"caller": ctx.caller, "route": ctx.route, **self._profile_part(ctx)}
        return ctx.body

    def _profile_part(self, ctx: _CallPops) -> dict[str, Any]:
        if ctx.profile_part is None:
            ctx.profile_part = self._build_profile(ctx)
        return ctx.profile_part

    def _build_profile(self, ctx: _CallPops) -> dict[str, Any]:
        lookup = ctx.lookup
        part: dict[str, Any] = {"customer": None, "match": "pending", "candidates": [],
                                "history": [], "open_tickets": [], "flags": _no_flags(),
                                "articles": []}
        if lookup is None:
            if ctx.caller["withheld"]:
                part["match"] = "withheld"      # no lookup will come; search manually
            elif ctx.lookup_failed:
                part["match"] = "error"
            return part

        customer = lookup.customer
        if customer is not None:
            part.update(self._customer_fields(customer))
            part["match"] = "found"
        elif len(lookup.matches) > 1:
            # A shared number: show who it could be, never pick one.
            part["match"] = "ambiguous"
            part["candidates"] = [
                {"customer_id": c.customer_id, "name": c.name, "segment": c.segment,
                 "company": c.company, "flags": c.flags} for c in lookup.matches]
        else:
            part["match"] = ("withheld" if ctx.caller["withheld"]
                             else _MATCH_BY_STATUS.get(lookup.status, "error"))
        return part

    def _customer_fields(self, customer: Customer) -> dict[str, Any]:
        full = customer.as_dict()
        for key in _PROMOTED:
            del full[key]
        flags = set(customer.flags)
        return {"customer": full,
                "history": [h.as_dict() for h in customer.history],
                "open_tickets": [t.as_dict() for t in customer.open_tickets],
                "flags": {name: name in flags for name in FLAG_NAMES},
                "articles": [a.as_dict() for a in customer.articles[:self.articles_per_pop]]}
