"""AMI events -> calls. Pure: no asyncio, no sockets, no SQLite.

Theory of operation
-------------------
A *call* is keyed by the Linkedid of its channels (``call_id``). Every channel
seen is filed under the call that owns it, by Uniqueid; later events find their
call through that channel first and through their ``Linkedid`` only when the
channel is new. So a channel keeps its call even if Asterisk later reports it
with another Linkedid (attended transfers).

The *customer leg* is the call's root channel (``Uniqueid == Linkedid``) folded
with its Local partner: ``Local/x@from-pstn-0001;1`` and ``;2`` are one leg
because they share a name without the ``;1``/``;2``. ``customer_channel`` names
the half that runs the dialplan (``;2``) or the root itself (``PJSIP/trunk-…``).
A call whose root channel is an agent's own device (an agent calling a
colleague, the consult leg of an attended transfer) is *internal*: it is
tracked, so a transfer can move its legs into the customer's call, but it
produces no updates unless an Originate marked by :meth:`mark_originate`
turns out to have started it.

An *agent leg* is one attempt to reach one agent: the channel a queue or Dial
rang (``DestChannel``), folded with its Local partner and with any device that
channel dialled in turn (``Local/1001@agents;2`` -> ``PJSIP/1001-…``). AgentCalled
and DialBegin for the same channel meet in the same leg, so each ring attempt
gives exactly one AGENT_RINGING.

Every handler is idempotent: a repeated event (DialEnd arrives twice) finds the
leg or call already in the state it asks for and returns nothing. Events that
lack the headers a handler needs are ignored. Everything that changes a call
lives in this file; the event -> handler table is in ``CallTracker.__init__``.

A call ends when the last of its channels hangs up. Its outcome, in order:
ANSWERED if an agent leg connected; FAILED for an outbound call whose customer
never answered; ABANDONED after QueueCallerAbandon or when the customer hung up
while queued or while an agent's phone rang; NO_AGENT if it queued or rang but
left unanswered (queue timeout, Dial NOANSWER); FAILED otherwise.

Limits
------
* A Linkedid whose call ended is never reopened: channels that appear for it
  later (we missed a Newchannel and saw all known channels hang up) are ignored.
* A Redirect of a *connected* customer is seen as a transfer only when the
  customer then joins a queue; otherwise the agent leg just completes.
* An agent calling a customer straight from their phone (no Originate marked)
  is an internal call and gets no pop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from cti.ami.protocol import Message, is_empty_value
from cti.calls.agents import AgentDirectory, channel_base, channel_interfaces, interface_key
from cti.calls.model import (
    AgentLeg,
    Call,
    CallState,
    CallUpdate,
    Change,
    Direction,
    LegState,
    Outcome,
    Route,
)
from cti.crm.phone import is_withheld
from cti.log import get_logger

log = get_logger(__name__)

_NUMBER_CHARS = frozenset("+0123456789 -().#*")

# DialEnd DialStatus -> how a ringing leg ended (CANCEL depends on why; see _on_dial_end).
_DIAL_END = {"NOANSWER": LegState.NO_ANSWER, "BUSY": LegState.BUSY,
             "CONGESTION": LegState.BUSY, "CHANUNAVAIL": LegState.NO_ANSWER}

_GONE_MAX = 20_000     # remembered hung-up channels / ended calls (no resurrection)
_PENDING_MAX = 10_000  # routes and originates waiting for their channel
_PENDING_TTL = 300.0   # seconds a route may wait for its channel


def usable_caller_id(num: str | None, min_digits: int = 3) -> str | None:
    """The caller number if it can identify someone, else None (withheld/unknown).

    None for empty, ``<unknown>``, ``anonymous``, ``restricted``, ``private``,
    ``unavailable`` and the like, for text (``INTERNATIONAL``) and for fewer
    than ``min_digits`` digits (``0``, ``-1``, ``+``). The number is returned
    stripped but otherwise as Asterisk gave it; normalising is the CRM's job.
    """
    if num is None:
        return None
    text = num.strip()
    if is_withheld(text) or not set(text) <= _NUMBER_CHARS:
        return None
    if sum(c.isdigit() for c in text) < min_digits:
        return None
    return text


def usable_caller_name(name: str | None) -> str | None:
    """The caller name, or None for the spellings of "no name"."""
    if name is None:
        return None
    text = name.strip()
    return None if is_withheld(text) else text


def _value(msg: Message, key: str) -> str | None:
    """A header with Asterisk's "no value" spellings turned into None."""
    value = msg.get(key)
    return None if is_empty_value(value) else value


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _duration(text: str | None) -> float:
    """CoreShowChannel ``Duration: 00:01:02`` -> 62.0 (0 if unreadable)."""
    if not text:
        return 0.0
    total = 0.0
    for part in text.split(":"):
        if not part.isdigit():
            return 0.0
        total = total * 60 + int(part)
    return total


@dataclass(slots=True, eq=False)
class _Track:
    """The tracker's private bookkeeping for one call."""

    call: Call
    visible: bool = True
    live: dict[str, str] = field(default_factory=dict)       # Uniqueid -> channel name
    customer: set[str] = field(default_factory=set)          # Uniqueids of the customer leg
    customer_base: str | None = None
    root_agent: str | None = None                            # internal call: whose device
    legs_by_uid: dict[str, AgentLeg] = field(default_factory=dict)
    legs_by_base: dict[str, AgentLeg] = field(default_factory=dict)
    leg_uids: dict[int, list[str]] = field(default_factory=dict)  # id(leg) -> Uniqueids
    announced: set[int] = field(default_factory=set)         # id(leg) of legs reported
    talk: dict[int, float] = field(default_factory=dict)     # id(leg) -> AgentComplete TalkTime
    picked_up: set[int] = field(default_factory=set)         # id(leg): DialEnd ANSWER seen
    in_queue: bool = False
    left_queue: bool = False   # QueueCallerLeave without abandon (timeout, empty queue)
    abandoned: bool = False
    customer_gone: bool = False
    customer_answered: bool = False  # outbound: the customer picked up
    customer_left_at: float | None = None


Handler = Callable[[Message, float], list[CallUpdate]]


class CallTracker:
    """Turns AMI events into :class:`Call` objects and :class:`CallUpdate` notes.

    Feed every AMI event to :meth:`handle` with its receipt time; after an AMI
    (re)connect feed the CoreShowChannel items to :meth:`rebuild`; report
    FastAGI routes with :meth:`attach_route` and the ActionIDs of Originates
    you send with :meth:`mark_originate`. Each returns the updates it caused,
    in order. Nothing here raises on odd input: unknown, repeated or malformed
    events are ignored. Ended calls leave the live table right after their
    ENDED update (store them from that update).
    """

    def __init__(self, directory: AgentDirectory, outbound_contexts: Iterable[str] = (),
                 min_digits: int = 3) -> None:
        self.directory = directory
        self.outbound_contexts = frozenset(c.lower() for c in outbound_contexts)
        self.min_digits = min_digits
        self._calls: dict[str, _Track] = {}
        self._owner: dict[str, _Track] = {}         # live Uniqueid -> its call
        self._filed: dict[str, int] = {}            # live Uniqueid -> when filed (counter)
        self._filings = 0
        self._bridges: dict[str, set[str]] = {}     # BridgeUniqueid -> Uniqueids in it
        self._bridge_of: dict[str, str] = {}
        self._gone: dict[str, None] = {}            # hung-up Uniqueids and ended call ids
        self._routes: dict[str, tuple[Route, float]] = {}  # Uniqueid -> route not yet applied
        self._originates: dict[str, None] = {}      # ActionIDs of our Originates
        self._originated: dict[str, str] = {}       # Uniqueid -> ActionID, channel not seen yet
        self._dials: dict[str, str] = {}            # Originate dial string key -> ActionID
        self._dial_of: dict[str, str] = {}          # ActionID -> dial string key
        # The whole reaction to Asterisk, on one screen.
        self._handlers: dict[str, Handler] = {
            "Newchannel": self._on_new_channel,
            "NewCallerid": self._on_new_callerid,
            "AGIExecStart": self._on_agi_exec,
            "QueueCallerJoin": self._on_queue_join,
            "QueueCallerLeave": self._on_queue_leave,
            "QueueCallerAbandon": self._on_queue_abandon,
            "AgentCalled": self._on_agent_called,
            "AgentConnect": self._on_agent_connect,
            "AgentRingNoAnswer": self._on_agent_ring_no_answer,
            "AgentComplete": self._on_agent_complete,
            "DialBegin": self._on_dial_begin,
            "DialEnd": self._on_dial_end,
            "BridgeEnter": self._on_bridge_enter,
            "BridgeLeave": self._on_bridge_leave,
            "BlindTransfer": self._on_blind_transfer,
            "AttendedTransfer": self._on_attended_transfer,
            "OriginateResponse": self._on_originate_response,
            "Hangup": self._on_hangup,
        }
        self.interesting: frozenset[str] = frozenset(self._handlers)

    # -- public API ------------------------------------------------------------

    def handle(self, msg: Message, now: float) -> list[CallUpdate]:
        """Apply one AMI event; returns the updates it caused (usually none)."""
        # Hot path: most events (CEL, VarSet, Newexten ...) stop here, before any
        # header is split out of the message.
        handler = self._handlers.get(msg.name)
        if handler is None:
            return []
        return handler(msg, now)

    def mark_originate(self, action_id: str, channel: str | None = None) -> None:
        """Remember an Originate we sent: its call will be OUTBOUND and carry ``action_id``.

        Call it before sending the action. With the Originate's ``channel`` (the
        dial string, e.g. ``Local/15551230004@callbacks``) the call is recognised
        from its first channel on, even when the Originate fails and the
        OriginateResponse arrives after its channels are gone; without it, from
        the OriginateResponse.
        """
        self._originates[action_id] = None
        _trim(self._originates, _PENDING_MAX)
        if channel:
            self._dials[interface_key(channel)] = action_id
            _trim(self._dials, _PENDING_MAX)
            self._dial_of[action_id] = interface_key(channel)
            _trim(self._dial_of, _PENDING_MAX)

    def attach_route(self, uniqueid: str, route: Route, now: float) -> list[CallUpdate]:
        """Attach a FastAGI route to the call of channel ``uniqueid`` (``agi_uniqueid``).

        If that channel is not known yet the route waits for it (up to a few
        minutes) and is applied when it appears. Returns ROUTED when applied.
        """
        track = self._owner.get(uniqueid)
        if track is None:
            self._routes[uniqueid] = (route, now)
            self._expire_routes(now)
            return []
        out: list[CallUpdate] = []
        self._apply_route(track, route, out)
        return out

    def resync_mark(self) -> int:
        """Call right before sending CoreShowChannels; pass the result to :meth:`rebuild`."""
        return self._filings

    def rebuild(self, channels: list[Message], now: float,
                mark: int | None = None) -> list[CallUpdate]:
        """Re-sync the live table with a CoreShowChannels snapshot after an AMI (re)connect.

        * A known channel missing from the snapshot hung up while we were away:
          it is dropped as if its Hangup had arrived. Only channels filed before
          ``mark`` (see :meth:`resync_mark`) can be dropped: one whose Newchannel
          raced the snapshot is newer than it, not gone. A call none of whose
          channels remain ends (outcome from what was seen: answered if an
          agent connected, abandoned if it was queued or ringing, else failed).
        * Known calls keep their state; channels new to them are added.
        * Unknown Linkedids become new calls: QUEUED if the customer channel
          runs ``Queue`` (queue from ApplicationData), an agent channel that
          shares a BridgeId with the customer is a CONNECTED leg, any other
          agent channel a RINGING leg. Start time comes from ``Duration``;
          the queue join time is not in the snapshot, so it is set to ``now``.
        """
        out: list[CallUpdate] = []
        items = [m for m in channels if _value(m, "Uniqueid") and _value(m, "Channel")]
        present = {m["Uniqueid"] for m in items}

        filed = self._filed
        limit = self._filings if mark is None else mark
        for track in list(self._calls.values()):
            for uid in [u for u in track.live
                        if u not in present and filed.get(u, 0) <= limit]:
                self._drop_channel(track, uid, None, now, out)

        by_call: dict[str, list[Message]] = {}
        for m in items:
            track = self._owner.get(m["Uniqueid"])
            call_id = track.call.call_id if track is not None else (
                _value(m, "Linkedid") or m["Uniqueid"])
            by_call.setdefault(call_id, []).append(m)
        for call_id, group in by_call.items():
            if any(m["Uniqueid"] not in self._owner for m in group):
                self._rebuild_call(call_id, group, now, out)
        return out

    def live_calls(self) -> list[Call]:
        """Calls in progress (internal agent-to-agent calls excluded), oldest first."""
        return [t.call for t in self._calls.values() if t.visible]

    def get(self, call_id: str) -> Call | None:
        """A live call by its id (Linkedid), or None."""
        track = self._calls.get(call_id)
        return track.call if track is not None and track.visible else None

    def calls_for_agent(self, agent_id: str) -> list[tuple[Call, AgentLeg]]:
        """The agent's ringing and connected legs, with their calls (pop snapshots)."""
        return [(t.call, leg) for t in self._calls.values() if t.visible
                for leg in t.call.legs if leg.agent == agent_id and leg.active]

    # -- channels and calls ----------------------------------------------------

    def _track_for(self, msg: Message, now: float, out: list[CallUpdate],
                   create: bool = True) -> tuple[_Track | None, str | None]:
        """The call of the event's own channel (``Uniqueid``), filing the channel if new."""
        uid = msg.get("Uniqueid")
        if not uid:
            return None, None
        track = self._owner.get(uid)
        if track is not None:
            return track, uid
        name = msg.get("Channel")
        call_id = msg.get("Linkedid")
        if not name or not call_id or uid in self._gone:
            return None, uid
        track = self._calls.get(call_id)
        if track is None:
            if not create or call_id in self._gone:
                return None, uid
            track = self._open(call_id, uid, name, msg, now, out)
            return track, uid
        self._add_channel(track, uid, name, now, out, msg)
        return track, uid

    def _open(self, call_id: str, uid: str, name: str, msg: Message | None, now: float,
              out: list[CallUpdate], outbound_to: str | None = None) -> _Track:
        """A new call; ``outbound_to`` (the dialled number, maybe "") makes it OUTBOUND."""
        track = _Track(call=Call(call_id=call_id, started_at=now))
        if outbound_to is not None:
            track.call.direction = Direction.OUTBOUND
            track.call.dialed = outbound_to or None
        self._calls[call_id] = track
        if uid == call_id:
            root_agent = self.directory.resolve(channel=name)
            if root_agent is not None:
                track.visible = False
                track.root_agent = root_agent
        if self._dials:
            for key in channel_interfaces(name):
                action_id = self._dials.pop(key, None)
                if action_id is not None:
                    track.call.direction = Direction.OUTBOUND
                    track.call.action_id = action_id
                    break
        if track.visible:
            out.append(CallUpdate(Change.STARTED, track.call))
        self._add_channel(track, uid, name, now, out, msg)
        if msg is not None and uid in track.customer:
            self._caller(track, msg, out)  # tracking may start on any event of the call
        return track

    def _add_channel(self, track: _Track, uid: str, name: str, now: float,
                     out: list[CallUpdate], msg: Message | None = None) -> None:
        """File a channel under a call; the root and its Local partner are the customer."""
        if uid in self._owner or uid in self._gone:
            return
        base = channel_base(name)
        track.live[uid] = name
        self._owner[uid] = track
        self._filings += 1
        self._filed[uid] = self._filings
        if track.root_agent is None and (uid == track.call.call_id or base == track.customer_base):
            self._add_customer(track, uid, name, msg)
        else:
            leg = track.legs_by_base.get(base)
            if leg is not None:
                self._alias(track, leg, uid, base)
        if self._routes:
            pending = self._routes.pop(uid, None)
            if pending is not None:
                self._apply_route(track, pending[0], out)
        if self._originated:
            action_id = self._originated.pop(uid, None)
            if action_id is not None:
                self._mark_outbound(track, action_id, None, now, out)

    def _add_customer(self, track: _Track, uid: str, name: str, msg: Message | None) -> None:
        call = track.call
        first = not track.customer
        track.customer.add(uid)
        track.customer_base = channel_base(name)
        if first or name.endswith(";2"):
            # the ;2 half runs the dialplan: it joins queues and gets transferred
            call.customer_channel, call.customer_uniqueid = name, uid
        if first and msg is not None and msg.name == "Newchannel":
            # where the call entered the PBX; later events show wherever it is now
            context = (msg.get("Context") or "").lower()
            exten = _value(msg, "Exten")
            if context in self.outbound_contexts:
                call.direction = Direction.OUTBOUND
            if exten and exten != "s":
                call.dialed = exten

    def _ensure_customer(self, track: _Track, uid: str, name: str | None) -> None:
        """Queue events name the caller: adopt it when the root channel was never seen."""
        if not track.customer and track.root_agent is None and name \
                and uid not in track.legs_by_uid:
            self._add_customer(track, uid, name, None)

    def _caller(self, track: _Track, msg: Message, out: list[CallUpdate]) -> None:
        """Caller number/name from the customer leg; CALLER_KNOWN when first usable or changed."""
        call = track.call
        if call.direction is Direction.OUTBOUND:
            # an outbound customer leg shows our own caller id; the customer is what we dialled
            num, name = usable_caller_id(call.dialed, self.min_digits), None
        else:
            num = usable_caller_id(msg.get("CallerIDNum"), self.min_digits)
            name = usable_caller_name(msg.get("CallerIDName"))
        if num is None:
            num = call.caller_num  # a later "<unknown>" does not withdraw a known number
        if name is None or name == num:
            name = call.caller_name
        if num == call.caller_num and name == call.caller_name:
            return
        call.caller_num, call.caller_name = num, name
        if num is not None and track.visible:
            out.append(CallUpdate(Change.CALLER_KNOWN, call))

    def _drop_channel(self, track: _Track, uid: str, cause: int | None, now: float,
                      out: list[CallUpdate]) -> None:
        """A channel of the call is gone (Hangup, or missing after a reconnect)."""
        self._owner.pop(uid, None)
        self._filed.pop(uid, None)
        track.live.pop(uid, None)
        self._gone[uid] = None
        _trim(self._gone, _GONE_MAX)
        bridge = self._bridge_of.pop(uid, None)
        if bridge is not None:
            self._leave_bridge(bridge, uid)
        call = track.call

        if uid in track.customer:
            if cause is not None and not call.hangup_cause:
                call.hangup_cause = cause
            if not track.customer_gone:
                track.customer_gone = True
                track.customer_left_at = now
                ringing = any(lg.state is LegState.RINGING and id(lg) in track.announced
                              for lg in call.legs)
                if call.answered_at is None and (track.in_queue or ringing):
                    track.abandoned = True

        leg = track.legs_by_uid.get(uid)
        if leg is not None and leg.active:
            # a leg lasts while any of its channels does (Local pairs may optimise away)
            if not any(u in track.live for u in track.leg_uids.get(id(leg), ())):
                if leg.state is LegState.CONNECTED:
                    self._end_leg(track, leg, LegState.COMPLETED, now, out)
                else:
                    self._end_leg(track, leg, self._unanswered_state(track, leg), now, out)

        if not track.live:
            self._finish(track, now, out)

    def _finish(self, track: _Track, now: float, out: list[CallUpdate]) -> None:
        """The last channel hung up: settle legs, outcome and times; emit ENDED."""
        call = track.call
        track.customer_gone = True
        for leg in call.legs:
            if leg.state is LegState.CONNECTED:
                self._end_leg(track, leg, LegState.COMPLETED, now, out)
            elif leg.state is LegState.RINGING:
                self._end_leg(track, leg, self._unanswered_state(track, leg), now, out)

        call.state = CallState.ENDED
        call.ended_at = now
        if call.answered_at is not None:
            call.outcome = Outcome.ANSWERED
        elif call.direction is Direction.OUTBOUND and not track.customer_answered:
            call.outcome = Outcome.FAILED  # the customer was never reached
        elif track.abandoned:
            call.outcome = Outcome.ABANDONED
        elif track.left_queue or call.queued_at is not None or track.announced:
            call.outcome = Outcome.NO_AGENT
        else:
            call.outcome = Outcome.FAILED
        if call.wait_time is None and call.outcome is not Outcome.FAILED:
            begin = call.queued_at if call.queued_at is not None else call.started_at
            call.wait_time = round(max(0.0, (track.customer_left_at or now) - begin), 3)
        talk = 0.0
        talked = False
        for leg in call.legs:
            if leg.answer_at is None:
                continue
            talked = True
            reported = track.talk.get(id(leg))
            talk += reported if reported is not None else (leg.end_at or now) - leg.answer_at
        call.talk_time = round(talk, 3) if talked else None

        del self._calls[call.call_id]
        self._gone[call.call_id] = None
        _trim(self._gone, _GONE_MAX)
        for uid in list(track.live):
            self._owner.pop(uid, None)
            self._filed.pop(uid, None)
        if track.visible:
            out.append(CallUpdate(Change.ENDED, call))
            log.debug("call ended", call_id=call.call_id, outcome=call.outcome.value,
                      agent=call.agent)

    # -- agent legs ------------------------------------------------------------

    def _leg_for(self, track: _Track, uid: str | None, name: str | None) -> AgentLeg | None:
        leg = track.legs_by_uid.get(uid) if uid else None
        if leg is None and name:
            leg = track.legs_by_base.get(channel_base(name))
        return leg

    def _new_leg(self, track: _Track, uid: str, name: str, now: float, agent: str | None,
                 interface: str | None, member_name: str | None, queue: str | None) -> AgentLeg:
        leg = AgentLeg(agent=agent, interface=interface or channel_base(name),
                       member_name=member_name, channel=name, uniqueid=uid, queue=queue,
                       ring_at=now)
        track.call.legs.append(leg)
        track.leg_uids[id(leg)] = []
        base = channel_base(name)
        track.legs_by_base[base] = leg
        self._alias(track, leg, uid, base)
        # the other Local half may already be filed under the call
        for other, other_name in track.live.items():
            if other != uid and channel_base(other_name) == base:
                self._alias(track, leg, other, base)
        return leg

    def _alias(self, track: _Track, leg: AgentLeg, uid: str, base: str | None = None) -> None:
        """File one more channel (Local half, dialled device) under an agent leg."""
        if track.legs_by_uid.get(uid) is leg:
            return
        track.legs_by_uid[uid] = leg
        track.leg_uids.setdefault(id(leg), []).append(uid)
        if base is not None:
            track.legs_by_base.setdefault(base, leg)

    def _announce(self, track: _Track, leg: AgentLeg, out: list[CallUpdate]) -> None:
        """AGENT_RINGING, once per leg, as soon as a ringing leg has a known agent."""
        if leg.agent is None or id(leg) in track.announced or leg.state is not LegState.RINGING:
            return
        track.announced.add(id(leg))
        call = track.call
        if call.state < CallState.AGENT_RINGING or call.state is CallState.TRANSFERRING:
            call.state = CallState.AGENT_RINGING
        if track.visible:
            out.append(CallUpdate(Change.AGENT_RINGING, call, leg))

    def _connect(self, track: _Track, leg: AgentLeg, now: float, out: list[CallUpdate],
                 hold: int | None = None) -> None:
        """A leg answered: it owns the customer unless another agent still talks to them."""
        call = track.call
        if leg.state is not LegState.RINGING:
            if leg.state is LegState.CONNECTED and hold is not None and call.wait_time is None:
                call.wait_time = float(hold)
            return
        consult = any(lg.state is LegState.CONNECTED for lg in call.legs)
        leg.state = LegState.CONNECTED
        leg.answer_at = now
        track.in_queue = False
        if leg.agent is not None:
            track.announced.add(id(leg))
            if track.visible:
                out.append(CallUpdate(Change.AGENT_CONNECTED, call, leg))
        if consult:
            return  # a colleague consulted during an attended transfer; owner unchanged
        self._take_over(track, leg, now, hold)
        for other in call.legs:
            if other is not leg and other.state is LegState.RINGING:
                self._end_leg(track, other, LegState.ANSWERED_ELSEWHERE, now, out)

    def _take_over(self, track: _Track, leg: AgentLeg, now: float, hold: int | None) -> None:
        call = track.call
        call.state = CallState.CONNECTED
        if leg.agent is not None:
            call.agent = leg.agent
            if leg.agent not in call.agents:
                call.agents.append(leg.agent)
            if call.transfers and call.transfers[-1].get("to_agent") is None:
                call.transfers[-1]["to_agent"] = leg.agent
        if call.answered_at is None:
            call.answered_at = now
            if hold is not None:
                call.wait_time = float(hold)
            else:
                begin = call.queued_at if call.queued_at is not None else call.started_at
                call.wait_time = round(max(0.0, now - begin), 3)

    def _end_leg(self, track: _Track, leg: AgentLeg, state: LegState, now: float,
                 out: list[CallUpdate]) -> None:
        if not leg.active:
            return
        was = leg.state
        leg.state = state
        leg.end_at = now
        if id(leg) not in track.announced or not track.visible:
            return
        call = track.call
        if was is LegState.RINGING:
            out.append(CallUpdate(Change.AGENT_RING_ENDED, call, leg))
        else:
            if state is LegState.TRANSFERRED:
                out.append(CallUpdate(Change.TRANSFERRED, call, leg))
            out.append(CallUpdate(Change.AGENT_DONE, call, leg))

    def _unanswered_state(self, track: _Track, leg: AgentLeg) -> LegState:
        """Why a ringing leg stopped when no status says it."""
        if any(lg is not leg and lg.state is LegState.CONNECTED for lg in track.call.legs):
            return LegState.ANSWERED_ELSEWHERE
        if track.customer_gone or track.abandoned:
            return LegState.CANCELLED
        return LegState.NO_ANSWER

    def _transfer_away(self, track: _Track, leg: AgentLeg, now: float, kind: str,
                       target: str | None, out: list[CallUpdate]) -> None:
        """The agent on ``leg`` handed the customer on: TRANSFERRED + AGENT_DONE."""
        if leg.state is not LegState.CONNECTED:
            return
        call = track.call
        call.transfers.append({"kind": kind, "at": now, "from_agent": leg.agent,
                               "from_channel": leg.channel, "target": target,
                               "to_agent": None})
        call.state = CallState.TRANSFERRING
        self._end_leg(track, leg, LegState.TRANSFERRED, now, out)
        log.debug("call transferred", call_id=call.call_id, kind=kind, from_agent=leg.agent)
        for other in call.legs:
            if other.state is LegState.CONNECTED:  # the consulted colleague takes over
                self._take_over(track, other, now, None)
                break

    # -- handlers: channels ----------------------------------------------------

    def _on_new_channel(self, msg: Message, now: float) -> list[CallUpdate]:
        out: list[CallUpdate] = []
        track, uid = self._track_for(msg, now, out)
        if track is not None and uid in track.customer:
            self._caller(track, msg, out)
        return out

    def _on_new_callerid(self, msg: Message, now: float) -> list[CallUpdate]:
        out: list[CallUpdate] = []
        track, uid = self._track_for(msg, now, out)
        if track is not None and uid in track.customer:
            self._caller(track, msg, out)
        return out

    def _on_agi_exec(self, msg: Message, now: float) -> list[CallUpdate]:
        out: list[CallUpdate] = []
        track, uid = self._track_for(msg, now, out)
        if track is not None and uid in track.customer and track.call.state < CallState.ROUTING:
            track.call.state = CallState.ROUTING
        return out

    def _on_hangup(self, msg: Message, now: float) -> list[CallUpdate]:
        uid = msg.get("Uniqueid")
        track = self._owner.get(uid) if uid else None
        if track is None:
            return []
        out: list[CallUpdate] = []
        self._drop_channel(track, uid, _int(msg.get("Cause")), now, out)
        return out

    # -- handlers: queues ------------------------------------------------------

    def _on_queue_join(self, msg: Message, now: float) -> list[CallUpdate]:
        out: list[CallUpdate] = []
        track, uid = self._track_for(msg, now, out)
        queue = msg.get("Queue")
        if track is None or not queue:
            return out
        self._ensure_customer(track, uid, msg.get("Channel"))
        call = track.call
        if track.in_queue and call.queue == queue:
            return out  # repeated event
        for leg in call.legs:
            # the customer left its agent for a queue without a transfer event (Redirect)
            if leg.state is LegState.CONNECTED:
                self._transfer_away(track, leg, now, "redirect", queue, out)
        call.queue = queue
        call.queues.append(queue)
        if call.queued_at is None:
            call.queued_at = now
        track.in_queue, track.left_queue = True, False
        if call.state < CallState.QUEUED or call.state is CallState.TRANSFERRING:
            call.state = CallState.QUEUED
        if track.visible:
            out.append(CallUpdate(Change.QUEUED, call))
        return out

    def _on_queue_leave(self, msg: Message, now: float) -> list[CallUpdate]:
        out: list[CallUpdate] = []
        track, _ = self._track_for(msg, now, out, create=False)
        if track is not None and track.in_queue:
            track.in_queue = False
            # without an abandon first, nobody took it: timeout or empty queue (unless
            # AgentConnect follows, which it does right after this event when answered)
            track.left_queue = not track.abandoned
        return out

    def _on_queue_abandon(self, msg: Message, now: float) -> list[CallUpdate]:
        out: list[CallUpdate] = []
        track, _ = self._track_for(msg, now, out, create=False)
        if track is None or track.call.answered_at is not None:
            return out
        track.abandoned = True
        track.in_queue = False
        track.customer_gone = True
        if track.customer_left_at is None:
            track.customer_left_at = now
        hold = _int(msg.get("HoldTime"))
        if hold is not None:
            track.call.wait_time = float(hold)
        for leg in track.call.legs:
            if leg.state is LegState.RINGING:
                self._end_leg(track, leg, LegState.CANCELLED, now, out)
        return out

    def _member_leg(self, track: _Track, msg: Message, now: float,
                    out: list[CallUpdate]) -> AgentLeg | None:
        """The leg a queue event's member (Dest* / Interface / MemberName) is about."""
        dest_uid, dest = msg.get("DestUniqueid"), msg.get("DestChannel")
        leg = self._leg_for(track, dest_uid, dest)
        if leg is None and dest_uid and dest and dest_uid not in self._gone:
            if dest_uid not in self._owner:
                self._add_channel(track, dest_uid, dest, now, out)
            agent = self.directory.resolve(msg.get("Interface"), msg.get("MemberName"), dest)
            leg = self._new_leg(track, dest_uid, dest, now, agent, msg.get("Interface"),
                                msg.get("MemberName"), msg.get("Queue"))
        return leg

    def _queue_member_event(self, msg: Message, now: float,
                            out: list[CallUpdate]) -> tuple[_Track | None, AgentLeg | None]:
        """Call and member leg of an AgentCalled / AgentConnect (the caller is the customer)."""
        track, uid = self._track_for(msg, now, out)
        if track is None:
            return None, None
        self._ensure_customer(track, uid, msg.get("Channel"))
        return track, self._member_leg(track, msg, now, out)

    def _on_agent_called(self, msg: Message, now: float) -> list[CallUpdate]:
        out: list[CallUpdate] = []
        track, leg = self._queue_member_event(msg, now, out)
        if track is None or leg is None:
            return out
        # DialBegin may have made the leg first: add what only the queue knows
        leg.queue = msg.get("Queue") or leg.queue
        leg.member_name = msg.get("MemberName") or leg.member_name
        interface = msg.get("Interface")
        if interface:
            leg.interface = interface
        if leg.agent is None:
            leg.agent = self.directory.resolve(interface, leg.member_name)
        self._announce(track, leg, out)
        return out

    def _on_agent_connect(self, msg: Message, now: float) -> list[CallUpdate]:
        out: list[CallUpdate] = []
        track, leg = self._queue_member_event(msg, now, out)
        if track is None or leg is None:
            return out
        leg.queue = msg.get("Queue") or leg.queue
        self._connect(track, leg, now, out, _int(msg.get("HoldTime")))
        return out

    def _on_agent_ring_no_answer(self, msg: Message, now: float) -> list[CallUpdate]:
        out: list[CallUpdate] = []
        track, _ = self._track_for(msg, now, out, create=False)
        if track is None:
            return out
        leg = self._leg_for(track, msg.get("DestUniqueid"), msg.get("DestChannel"))
        if leg is not None:
            self._end_leg(track, leg, LegState.NO_ANSWER, now, out)
        return out

    def _on_agent_complete(self, msg: Message, now: float) -> list[CallUpdate]:
        out: list[CallUpdate] = []
        track, _ = self._track_for(msg, now, out, create=False)
        agent = self.directory.resolve(msg.get("Interface"), msg.get("MemberName"),
                                       msg.get("DestChannel"))
        if track is None:
            track = self._calls.get(msg.get("Linkedid") or "") or self._call_of_agent(agent)
            if track is None:
                return out
        leg = self._leg_for(track, msg.get("DestUniqueid"), msg.get("DestChannel"))
        if leg is None and agent is not None:
            # After a Redirect AgentComplete names no channel: take the agent's talking leg.
            talked = [lg for lg in track.call.legs if lg.agent == agent and lg.answer_at]
            talked.sort(key=lambda lg: (lg.state is LegState.CONNECTED, lg.answer_at or 0))
            leg = talked[-1] if talked else None
        if leg is None:
            return out
        talk = _int(msg.get("TalkTime"))
        if talk is not None:
            track.talk[id(leg)] = float(talk)
        if leg.state is not LegState.CONNECTED:
            return out  # its hangup or a transfer event ended it already
        if (msg.get("Reason") or "").lower() == "transfer":
            self._transfer_away(track, leg, now, "transfer", None, out)
        else:
            self._end_leg(track, leg, LegState.COMPLETED, now, out)
        return out

    def _call_of_agent(self, agent: str | None) -> _Track | None:
        if agent is None:
            return None
        for track in self._calls.values():
            for leg in track.call.legs:
                if leg.agent == agent and leg.answer_at is not None \
                        and id(leg) not in track.talk:
                    return track
        return None

    # -- handlers: dialling and bridges ----------------------------------------

    def _on_dial_begin(self, msg: Message, now: float) -> list[CallUpdate]:
        dest_uid, dest = msg.get("DestUniqueid"), msg.get("DestChannel")
        if not dest_uid or not dest:
            return []
        out: list[CallUpdate] = []
        track, uid = self._track_for(msg, now, out)
        if track is None:
            # Originate dials with no source channel: the call is the destination's.
            track = self._owner.get(dest_uid)
            call_id = msg.get("DestLinkedid")
            if track is None and call_id and dest_uid not in self._gone:
                track = self._calls.get(call_id)
                if track is None and call_id not in self._gone:
                    track = self._open(call_id, dest_uid, dest, None, now, out)
            if track is None:
                return out
            uid = None
        self._add_channel(track, dest_uid, dest, now, out)
        if dest_uid in track.customer:
            return out  # Originate reaching the customer, not an agent

        source = self._leg_for(track, uid, msg.get("Channel")) if uid else None
        if source is not None and not track.customer and track.visible \
                and self.directory.match_channel(dest) is None:
            # an agent-first Originate: the agent now dials the customer
            self._add_customer(track, dest_uid, dest, None)
            return out
        if source is not None:
            # A Local member (or forward) dials the device: still the same ring attempt.
            self._alias(track, source, dest_uid, channel_base(dest))
            if source.agent is None:
                source.agent = self.directory.resolve(channel=dest)
                self._announce(track, source, out)
            return out
        if uid is not None and track.visible:
            self._ensure_customer(track, uid, msg.get("Channel"))

        leg = self._leg_for(track, dest_uid, dest)
        if leg is not None:
            return out  # AgentCalled came first: same leg
        hit = self.directory.match_channel(dest)
        if hit is None and not dest.startswith("Local/"):
            return out  # a trunk or other non-agent destination
        agent, interface = hit if hit is not None else (None, None)
        leg = self._new_leg(track, dest_uid, dest, now, agent, interface, None, None)
        self._announce(track, leg, out)
        return out

    def _on_dial_end(self, msg: Message, now: float) -> list[CallUpdate]:
        dest_uid = msg.get("DestUniqueid")
        track = self._owner.get(dest_uid) if dest_uid else None
        if track is None:
            uid = msg.get("Uniqueid")
            track = self._owner.get(uid) if uid else None
        if track is None:
            return []
        status = (msg.get("DialStatus") or "").upper()
        if dest_uid in track.customer:
            if status == "ANSWER":
                self._customer_answered(track, msg, now)
            return []
        leg = self._leg_for(track, dest_uid, msg.get("DestChannel"))
        if leg is None or not leg.active:
            return []  # not an agent leg, or a repeated DialEnd
        out: list[CallUpdate] = []
        if status == "ANSWER":
            if leg.queue is None:
                self._connect(track, leg, now, out)
            else:
                # queue legs connect on AgentConnect (it has HoldTime); the queue cancels
                # the other ringing members before that
                track.picked_up.add(id(leg))
        elif status == "CANCEL":
            # the caller left, or ring-all: another agent answered
            self._end_leg(track, leg, self._cancel_state(track, leg), now, out)
        elif status in _DIAL_END:
            self._end_leg(track, leg, _DIAL_END[status], now, out)
        elif status:
            self._end_leg(track, leg, LegState.NO_ANSWER, now, out)
        return out

    def _customer_answered(self, track: _Track, msg: Message, now: float) -> None:
        """An Originate or an agent reached the customer (outbound calls)."""
        track.customer_answered = True
        call = track.call
        if call.answered_at is None:
            talking = next((lg for lg in call.legs if lg.state is LegState.CONNECTED), None)
            if talking is not None:  # agent-first: the agent was already on the line
                self._take_over(track, talking, now, None)

    @staticmethod
    def _cancel_state(track: _Track, leg: AgentLeg) -> LegState:
        if any(lg is not leg and (lg.state is LegState.CONNECTED or id(lg) in track.picked_up)
               for lg in track.call.legs):
            return LegState.ANSWERED_ELSEWHERE
        return LegState.CANCELLED

    def _on_bridge_enter(self, msg: Message, now: float) -> list[CallUpdate]:
        bridge = msg.get("BridgeUniqueid")
        if not bridge:
            return []
        out: list[CallUpdate] = []
        track, uid = self._track_for(msg, now, out)
        if track is None or uid is None:
            return out
        old = self._bridge_of.get(uid)
        if old is not None and old != bridge:
            self._leave_bridge(old, uid)
        members = self._bridges.setdefault(bridge, set())
        members.add(uid)
        self._bridge_of[uid] = bridge
        if track.root_agent is not None:
            return out

        if uid in track.customer:
            others = [u for u in members if u != uid and self._owner.get(u) is track]
        elif track.customer & members:
            others = [uid]
        else:
            return out
        for other in others:
            leg = track.legs_by_uid.get(other)
            if leg is None:
                # joined us without a ring we saw (tracking started mid-call, pickup)
                name = track.live.get(other)
                hit = self.directory.match_channel(name) if name else None
                if hit is None:
                    continue
                leg = self._new_leg(track, other, name, now, hit[0], hit[1], None, None)
            self._connect(track, leg, now, out)
        return out

    def _on_bridge_leave(self, msg: Message, now: float) -> list[CallUpdate]:
        uid, bridge = msg.get("Uniqueid"), msg.get("BridgeUniqueid")
        if uid and bridge and self._bridge_of.get(uid) == bridge:
            del self._bridge_of[uid]
            self._leave_bridge(bridge, uid)
        return []

    def _leave_bridge(self, bridge: str, uid: str) -> None:
        members = self._bridges.get(bridge)
        if members is not None:
            members.discard(uid)
            if not members:
                del self._bridges[bridge]

    # -- handlers: transfers ---------------------------------------------------

    def _on_blind_transfer(self, msg: Message, now: float) -> list[CallUpdate]:
        if (msg.get("Result") or "Success").lower() != "success":
            return []
        transferer = msg.get("TransfererUniqueid")
        transferee = msg.get("TransfereeUniqueid")
        track = self._owner.get(transferer or "") or self._owner.get(transferee or "")
        if track is None:
            return []
        leg = self._leg_for(track, transferer, msg.get("TransfererChannel"))
        if leg is None:
            return []
        out: list[CallUpdate] = []
        exten, context = msg.get("Extension"), msg.get("Context")
        target = f"{exten}@{context}" if exten and context else exten
        self._transfer_away(track, leg, now, "blind", target, out)
        return out

    def _on_attended_transfer(self, msg: Message, now: float) -> list[CallUpdate]:
        """Find the customer by channel identity, never by Orig/Second order (case 14)."""
        if (msg.get("Result") or "Success").lower() != "success":
            return []
        parties = [(msg.get("TransfereeUniqueid"), msg.get("TransfereeChannel")),
                   (msg.get("TransferTargetUniqueid"), msg.get("TransferTargetChannel"))]
        customer = None
        for uid, _ in parties:
            track = self._owner.get(uid or "")
            if track is not None and uid in track.customer and track.visible:
                customer = (uid, track)
        if customer is None:
            return []
        cust_uid, track = customer
        out: list[CallUpdate] = []

        transferers = [msg.get("OrigTransfererUniqueid"), msg.get("SecondTransfererUniqueid")]
        for uid in transferers:
            leg = track.legs_by_uid.get(uid or "")
            if leg is not None and leg.state is LegState.CONNECTED:
                target = next((n for u, n in parties if u != cust_uid and n), None)
                self._transfer_away(track, leg, now, "attended", target, out)
                break

        for uid, name in parties:
            if uid and name and uid != cust_uid:
                self._adopt(track, uid, name, now, out)
        return out

    def _adopt(self, track: _Track, uid: str, name: str, now: float,
               out: list[CallUpdate]) -> None:
        """Move the transfer target (and its agent leg) into the customer's call."""
        source = self._owner.get(uid)
        moved: AgentLeg | None = None
        if source is not None and source is not track:
            moved = source.legs_by_uid.get(uid)
            uids = list(source.leg_uids.get(id(moved), ())) if moved is not None else [uid]
            if moved is not None:
                source.call.legs.remove(moved)
                source.leg_uids.pop(id(moved), None)
                for base, lg in list(source.legs_by_base.items()):
                    if lg is moved:
                        del source.legs_by_base[base]
                track.call.legs.append(moved)
                track.leg_uids[id(moved)] = []
                track.legs_by_base[channel_base(moved.channel)] = moved
            for u in uids:
                chan = source.live.pop(u, None)
                source.legs_by_uid.pop(u, None)
                if chan is None:
                    continue
                track.live[u] = chan
                self._owner[u] = track
                if moved is not None:
                    self._alias(track, moved, u, channel_base(chan))
            if not source.live:
                self._finish(source, now, out)
        elif source is None:
            self._add_channel(track, uid, name, now, out)
        leg = moved or track.legs_by_uid.get(uid)
        if leg is None:
            hit = self.directory.match_channel(name)
            if hit is None:
                return
            leg = self._new_leg(track, uid, name, now, hit[0], hit[1], None, None)
            leg.state = LegState.RINGING
        if leg.state is LegState.CONNECTED and id(leg) not in track.announced:
            # answered the consult call: now the customer's agent
            leg.state = LegState.RINGING
            self._connect(track, leg, leg.answer_at or now, out)
        elif leg.state is LegState.CONNECTED:
            self._take_over(track, leg, now, None)
        else:
            self._announce(track, leg, out)

    # -- handlers: originates and routes ----------------------------------------

    def _on_originate_response(self, msg: Message, now: float) -> list[CallUpdate]:
        action_id = msg.get("ActionID")
        if not action_id or action_id not in self._originates:
            return []
        del self._originates[action_id]
        key = self._dial_of.pop(action_id, None)
        if key is not None and self._dials.get(key) == action_id:
            del self._dials[key]  # no channel matched it; none will now
        out: list[CallUpdate] = []
        uid = _value(msg, "Uniqueid")
        if uid:
            track = self._owner.get(uid) or self._calls.get(uid)
            if track is not None and track.call.action_id not in (None, action_id):
                return out  # the dial string matched another Originate's call first
            if track is None:
                self._originated[uid] = action_id  # its channel shows up later
                _trim(self._originated, _PENDING_MAX)
            else:
                self._mark_outbound(track, action_id, msg, now, out)
            return out
        # Failed: Channel is the dial string. Tag the call it left behind, if any.
        dial = msg.get("Channel")
        if not dial:
            return out
        key = interface_key(dial)
        for track in reversed(list(self._calls.values())):
            channel = track.call.customer_channel
            if track.call.action_id is None and channel and key in channel_interfaces(channel):
                track.call.direction = Direction.OUTBOUND
                track.call.action_id = action_id
                break
        return out

    def _mark_outbound(self, track: _Track, action_id: str, msg: Message | None, now: float,
                       out: list[CallUpdate]) -> None:
        call = track.call
        call.direction = Direction.OUTBOUND
        call.action_id = action_id
        if track.visible:
            return
        # An Originate that rang an agent's phone first: the customer call of a callback.
        track.visible = True
        exten = _value(msg, "Exten") if msg is not None else None
        call.dialed = exten or call.dialed
        call.caller_num = usable_caller_id(call.dialed, self.min_digits)
        out.append(CallUpdate(Change.STARTED, call))
        if call.caller_num is not None:
            out.append(CallUpdate(Change.CALLER_KNOWN, call))
        root_uid = call.call_id
        name = track.live.get(root_uid)
        if track.root_agent is not None and name is not None:
            # the agent answered (that is what a successful OriginateResponse means);
            # the call is answered when the customer they dial answers
            hit = self.directory.match_channel(name)
            leg = self._new_leg(track, root_uid, name, call.started_at, track.root_agent,
                                hit[1] if hit else None, None, None)
            leg.state, leg.answer_at = LegState.CONNECTED, now
            track.announced.add(id(leg))
            call.agent = leg.agent
            call.agents.append(track.root_agent)
            out.append(CallUpdate(Change.AGENT_CONNECTED, call, leg))
        track.root_agent = None

    def _apply_route(self, track: _Track, route: Route, out: list[CallUpdate]) -> None:
        call = track.call
        call.route = route
        if call.state < CallState.ROUTING:
            call.state = CallState.ROUTING
        if track.visible:
            out.append(CallUpdate(Change.ROUTED, call))

    def _expire_routes(self, now: float) -> None:
        routes = self._routes
        while routes:
            uid = next(iter(routes))
            if len(routes) <= _PENDING_MAX and now - routes[uid][1] <= _PENDING_TTL:
                break
            del routes[uid]

    # -- rebuild ---------------------------------------------------------------

    def _rebuild_call(self, call_id: str, items: list[Message], now: float,
                      out: list[CallUpdate]) -> None:
        """Add a snapshot's unknown channels to their call, opening it if new."""
        track = self._calls.get(call_id)
        fresh = track is None
        if track is None:
            if call_id in self._gone:
                return
            # open the call on its root channel, else on the queued caller, else on
            # any channel that is not an agent's
            items.sort(key=lambda m: (m["Uniqueid"] != call_id,
                                      (m.get("Application") or "") != "Queue",
                                      self.directory.match_channel(m["Channel"]) is not None))
            first = items[0]
            # a channel still in an outbound context runs the dialled number (its Exten)
            outbound = next((m for m in items
                             if (m.get("Context") or "").lower() in self.outbound_contexts), None)
            dialed = (_value(outbound, "Exten") or "") if outbound is not None else None
            track = self._open(call_id, first["Uniqueid"], first["Channel"], first, now, out,
                               dialed)
            track.call.started_at = now - _duration(first.get("Duration"))
            if not track.customer and track.root_agent is None:
                self._add_customer(track, first["Uniqueid"], first["Channel"], first)
        new = [m for m in items if m["Uniqueid"] not in self._owner]
        for m in new:
            self._add_channel(track, m["Uniqueid"], m["Channel"], now, out, m)
        call = track.call
        if fresh and track.customer:
            root = next((m for m in items if m["Uniqueid"] in track.customer), None)
            if root is not None:
                self._caller(track, root, out)
            for m in items:
                queue = (m.get("ApplicationData") or "").split(",")[0]
                if m["Uniqueid"] in track.customer and m.get("Application") == "Queue" \
                        and queue:
                    call.queue, call.queues, call.queued_at = queue, [queue], now
                    track.in_queue = True
                    call.state = CallState.QUEUED
                    if track.visible:
                        out.append(CallUpdate(Change.QUEUED, call))
                    break

        # an agent channel sharing a bridge with the customer talks to them
        bridges = {m.get("BridgeId") for m in items if m["Uniqueid"] in track.customer}
        bridges.discard(None)
        bridges.discard("")
        legs: list[AgentLeg] = []
        for m in new:
            uid, name = m["Uniqueid"], m["Channel"]
            if uid in track.customer or uid in track.legs_by_uid:
                continue
            hit = self.directory.match_channel(name)
            if hit is not None:
                legs.append(self._new_leg(track, uid, name, now, hit[0], hit[1], None,
                                          call.queue if track.in_queue else None))
        for leg in legs:
            uids = track.leg_uids.get(id(leg), ())
            if any(m.get("BridgeId") in bridges for m in items if m["Uniqueid"] in uids):
                self._connect(track, leg, now, out)
            else:
                self._announce(track, leg, out)


def _trim(table: dict[str, object], limit: int) -> None:
    """Forget the oldest entries of an insertion-ordered dict beyond ``limit``."""
    while len(table) > limit:
        del table[next(iter(table))]
