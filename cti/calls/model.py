"""Calls, agent legs, states and outcomes as plain data. No I/O.

A *call* is everything Asterisk ties together with one ``Linkedid``: the
customer's channel, the Local ``;1``/``;2`` plumbing, every agent leg that rang,
and the legs a transfer added. Its id (``call_id``) is the Linkedid, which is
also the Uniqueid of the call's oldest channel.

Only :mod:`cti.calls.tracker` changes these objects; everyone else reads them
or the :class:`CallUpdate` notes the tracker returns.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class CallState(enum.IntEnum):
    """Where a call is in its life. Values only grow, except TRANSFERRING."""

    ARRIVED = 1        # first channel seen
    ROUTING = 2        # in the dialplan / FastAGI route
    QUEUED = 3         # waiting in a queue
    AGENT_RINGING = 4  # at least one agent's phone rings
    CONNECTED = 5      # customer talks to an agent
    TRANSFERRING = 6   # agent left, customer on the way to another agent/queue
    ENDED = 7


class Direction(str, enum.Enum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"


class Outcome(str, enum.Enum):
    """How a finished call ended, from the contact centre's point of view."""

    ANSWERED = "answered"    # an agent talked to the customer
    ABANDONED = "abandoned"  # customer hung up while queued / ringing
    NO_AGENT = "no_agent"    # left the queue unanswered (timeout, empty queue)
    FAILED = "failed"        # never reached the queue / dialplan failure / outbound not reached


class LegState(str, enum.Enum):
    RINGING = "ringing"
    CONNECTED = "connected"
    NO_ANSWER = "no_answer"          # rang, not answered (RingNoAnswer, timeout)
    ANSWERED_ELSEWHERE = "answered_elsewhere"  # ring-all: another agent took it
    CANCELLED = "cancelled"          # caller left while it rang
    BUSY = "busy"
    TRANSFERRED = "transferred"      # agent handed the customer on
    COMPLETED = "completed"          # talked, then hung up


@dataclass(slots=True)
class AgentLeg:
    """One attempt to reach one agent for this call."""

    agent: str | None          # agent id from the directory ("1001"), None if unknown
    interface: str             # queue member interface or device ("Local/1001@agents/n")
    member_name: str | None
    channel: str               # the leg's channel ("Local/1001@agents-00000001;1")
    uniqueid: str
    queue: str | None
    state: LegState = LegState.RINGING
    ring_at: float | None = None
    answer_at: float | None = None
    end_at: float | None = None

    @property
    def active(self) -> bool:
        return self.state in (LegState.RINGING, LegState.CONNECTED)

    def as_dict(self) -> dict[str, Any]:
        return {
            "agent": self.agent, "interface": self.interface, "member_name": self.member_name,
            "channel": self.channel, "uniqueid": self.uniqueid, "queue": self.queue,
            "state": self.state.value, "ring_at": self.ring_at, "answer_at": self.answer_at,
            "end_at": self.end_at,
        }


@dataclass(slots=True)
class Route:
    """What the FastAGI route decided for a call (or the default)."""

    queue: str
    priority: int
    segment: str
    customer_id: str | None
    reason: str                   # human-readable why, e.g. "segment gold -> vip"
    source: str = "agi"           # agi | default | dialplan

    def as_dict(self) -> dict[str, Any]:
        return {"queue": self.queue, "priority": self.priority, "segment": self.segment,
                "customer_id": self.customer_id, "reason": self.reason, "source": self.source}


@dataclass(slots=True)
class Call:
    """One call, keyed by Linkedid."""

    call_id: str                       # Linkedid
    started_at: float
    direction: Direction = Direction.INBOUND
    state: CallState = CallState.ARRIVED
    caller_num: str | None = None      # customer's number as Asterisk gave it (None = withheld)
    caller_name: str | None = None
    customer_channel: str | None = None
    customer_uniqueid: str | None = None
    dialed: str | None = None          # DID / dialled extension
    route: Route | None = None
    queue: str | None = None           # last queue joined
    queues: list[str] = field(default_factory=list)
    queued_at: float | None = None
    answered_at: float | None = None
    ended_at: float | None = None
    wait_time: float | None = None     # seconds from queue join to answer / abandon
    talk_time: float | None = None     # seconds connected to agents
    outcome: Outcome | None = None
    hangup_cause: int | None = None
    agent: str | None = None           # agent currently (or last) owning the customer
    agents: list[str] = field(default_factory=list)  # every agent who talked, in order
    legs: list[AgentLeg] = field(default_factory=list)
    transfers: list[dict[str, Any]] = field(default_factory=list)
    action_id: str | None = None       # for originated calls: the Originate ActionID

    @property
    def live(self) -> bool:
        return self.state != CallState.ENDED

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready record (call records, ``cti calls --json``, the API)."""
        return {
            "call_id": self.call_id, "direction": self.direction.value,
            "state": self.state.name.lower(), "caller_num": self.caller_num,
            "caller_name": self.caller_name, "customer_channel": self.customer_channel,
            "customer_uniqueid": self.customer_uniqueid, "dialed": self.dialed,
            "route": self.route.as_dict() if self.route else None,
            "queue": self.queue, "queues": list(self.queues),
            "started_at": self.started_at, "queued_at": self.queued_at,
            "answered_at": self.answered_at, "ended_at": self.ended_at,
            "wait_time": self.wait_time, "talk_time": self.talk_time,
            "outcome": self.outcome.value if self.outcome else None,
            "hangup_cause": self.hangup_cause, "agent": self.agent, "agents": list(self.agents),
            "legs": [leg.as_dict() for leg in self.legs], "transfers": list(self.transfers),
            "action_id": self.action_id,
        }


class Change(str, enum.Enum):
    """What just happened to a call; the tracker returns these, in order."""

    STARTED = "started"                  # new call (first channel seen)
    CALLER_KNOWN = "caller_known"        # caller number/name first known or changed
    ROUTED = "routed"                    # a Route was attached
    QUEUED = "queued"                    # joined a queue
    AGENT_RINGING = "agent_ringing"      # leg rings (pop!)
    AGENT_CONNECTED = "agent_connected"  # leg answered
    AGENT_RING_ENDED = "agent_ring_ended"  # leg stopped ringing unanswered (see leg.state)
    TRANSFERRED = "transferred"          # customer handed from leg to another target
    AGENT_DONE = "agent_done"            # connected leg finished (hang up / transfer)
    ENDED = "ended"                      # call over; outcome set


@dataclass(slots=True)
class CallUpdate:
    change: Change
    call: Call
    leg: AgentLeg | None = None
