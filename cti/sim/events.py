"""Simulated calls as AMI event sequences, built from the recorded lab calls. No I/O.

Theory of operation
-------------------
``templates/lab22.json`` holds, per scenario, one real call recorded on Asterisk
22.10.1 (see ``make_templates.py``): every event in its original order with its
original headers, the values that change from call to call replaced by
``%{name}`` placeholders, and the pauses of the call (ring, talk ...) labelled.
A :class:`CallScript` renders one template into ``(delay, Message)`` pairs:

* placeholders are filled from the call's parameters (caller, DID, queue,
  agents), from its legs (Channel names ``Local/<exten>@<context>-<8 hex>;1|2``
  and Uniqueids ``<epoch>.<n>`` allocated by a shared :class:`Ids`; the
  Linkedid is the Uniqueid of the ``;1`` caller leg), and from the clock
  (CEL/Cdr times, HoldTime, TalkTime, RingTime, QUEUEWAIT ...);
* each labelled pause is stretched to the call's ring/talk/hold seconds;
* agent *slots* (``a0``, ``a1`` ...: the member legs of the recorded call) are
  filled with the agents chosen for this call: a slot may be dropped (no
  agent), or rung on several members at once (ring-all): the member's events
  are repeated per agent, and the members that lose the race get the
  cancellation events Asterisk sent in the recorded abandoned call.

A call is rendered in two parts around its FastAGI request, because the
queue (and so the agents) is only known after the AGI script answered:
:meth:`CallScript.head` (up to the ``AGI()`` Newexten), then one
:meth:`CallScript.agi_command` per command, then :meth:`CallScript.tail`.
:func:`build_call` does all three at once for tests and offline use.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from importlib import resources

from cti.ami.protocol import Kind, Message

SNAPSHOT_KEYS = ["Channel", "ChannelState", "ChannelStateDesc", "CallerIDNum", "CallerIDName",
                 "ConnectedLineNum", "ConnectedLineName", "Language", "AccountCode", "Context",
                 "Exten", "Priority", "Uniqueid", "Linkedid"]
CEL_KEYS = ["EventName", "AccountCode", "CallerIDnum", "CallerIDname", "CallerIDani",
            "CallerIDrdnis", "CallerIDdnid", "Exten", "Context", "Channel", "Application",
            "AppData", "EventTime", "AMAFlags", "UniqueID", "LinkedID", "Userfield", "Peer",
            "PeerAccount", "Extra"]
STATE_DESC = {"0": "Down", "1": "Rsrvd", "2": "OffHook", "3": "Dialing", "4": "Ring",
              "5": "Ringing", "6": "Up", "7": "Busy", "8": "Dialing Offhook", "9": "Pre-ring",
              "10": "Unknown"}

SCENARIOS = ("inbound_answered", "inbound_abandoned", "ring_no_answer", "blind_transfer",
             "inbound_no_agi")
CALLBACK_SCENARIOS = ("callback_answered", "callback_busy", "callback_noanswer",
                      "originate_no_context")

# How each scenario fills its agent slots (see CallScript):
#   answer   first agent answers; further agents ring with it and are cancelled
#   ring     every agent rings; nobody answers
#   one      exactly one agent (rings out)
#   optional zero or one agent
SLOT_MODES: dict[str, tuple[str, ...]] = {
    "inbound_answered": ("answer",),
    "inbound_no_agi": ("answer",),
    "inbound_abandoned": ("ring",),
    "ring_no_answer": ("one", "optional", "answer"),
    "blind_transfer": ("answer", "answer"),
    "callback_answered": ("optional",),
    "callback_busy": (),
    "callback_noanswer": (),
    "originate_no_context": (),
}

Timed = tuple[float, Message]
_PLACEHOLDER = re.compile(r"%\{([^}]+)\}")


# --- inputs -------------------------------------------------------------------


@dataclass(frozen=True)
class Agent:
    """A queue member as the lab defines it: ``Local/<id>@agents/n`` with a MemberName."""

    id: str
    name: str

    @property
    def interface(self) -> str:
        return f"Local/{self.id}@agents/n"

    @property
    def behaviour(self) -> str:
        """The lab's convention: 2xxx never answer, 3xxx are busy, others answer."""
        return {"2": "noanswer", "3": "busy"}.get(self.id[:1], "answer")


# The lab's queues.conf (+ the realtime "general" queue), member order kept.
LAB_QUEUES: dict[str, list[Agent]] = {
    "vip": [Agent("1001", "Agent Alice")],
    "general": [Agent("1002", "Agent Bob"), Agent("1003", "Agent Carol")],
    "complaints": [Agent("2001", "Agent NoAnswer"), Agent("3001", "Agent Busy"),
                   Agent("1004", "Agent Dave")],
    "supervisor": [Agent("1004", "Supervisor Dave")],
    "overflow": [],
}
FALLBACK_QUEUE = "general"   # the lab dialplan's queue when CTI_QUEUE is empty
TRANSFER_QUEUE = "supervisor"


@dataclass(frozen=True)
class CallParams:
    """What varies between simulated calls. Times are seconds of simulated time."""

    number: str = "+15551230001"     # caller ID number (inbound) / dialled number (callback)
    name: str = "Alice Smith"        # caller ID name (inbound)
    cid_num: str = ""                # callbacks: the caller ID the customer sees
    cid_name: str = ""
    did: str = "5550100"
    ring: float = 1.0                # how long the answering agent rings
    talk: float = 3.0                # agent answer -> hang-up
    hold: float = 30.0               # the caller hangs up this long after the call began
    transfer_after: float = 1.5      # blind_transfer: agent answer -> transfer
    ring_timeout: float = 5.0        # queue member timeout (AgentRingNoAnswer)
    retry: float = 1.0               # queue retry after a member rang out
    originate_timeout: float = 30.0  # callback_noanswer: the Originate's Timeout
    callback_id: str = ""


@dataclass(frozen=True)
class Originate:
    """The AMI Originate that started the call; adds OriginateResponse events."""

    action_id: str
    context: str = "caller-sim"
    exten: str = "hold"
    channel_id: str | None = None
    other_channel_id: str | None = None


@dataclass(frozen=True)
class Route:
    """What the FastAGI script decided (or not: ``agistatus`` FAILURE)."""

    agistatus: str = "SUCCESS"
    variables: dict[str, str] = field(default_factory=dict)

    @property
    def queue(self) -> str:
        return self.variables.get("CTI_QUEUE") or FALLBACK_QUEUE

    @classmethod
    def failed(cls) -> Route:
        return cls("FAILURE", {})


class Ids:
    """Uniqueid and Local channel counters shared by every call of one simulated PBX."""

    def __init__(self, uid: int = 0, local: int = 0) -> None:
        self._uid = uid
        self._local = local

    def uniqueid(self, at: float) -> str:
        n = self._uid
        self._uid += 1
        return f"{int(at)}.{n}"

    def local(self) -> str:
        n = self._local
        self._local = (n + 1) & 0xFFFFFFFF
        return f"{n:08x}"


# --- templates --------------------------------------------------------------------


class _Value:
    """A header value with placeholders, split once at load time."""

    __slots__ = ("pieces",)

    def __init__(self, text: str) -> None:
        pieces: list[tuple[bool, str]] = []
        pos = 0
        for m in _PLACEHOLDER.finditer(text):
            if m.start() > pos:
                pieces.append((False, text[pos:m.start()]))
            pieces.append((True, m.group(1)))
            pos = m.end()
        if pos < len(text):
            pieces.append((False, text[pos:]))
        self.pieces = pieces

    def keys(self) -> Iterable[str]:
        return (p for is_key, p in self.pieces if is_key)


def _compile(text: str) -> str | _Value:
    return _Value(text) if "%{" in text else text


@dataclass
class _Msg:
    step: float | str            # seconds after the previous message, or a pause label
    name: str
    parts: list                  # compiled: ("kv", k, v) / ("snap", prefix, role, vals) / ...
    slots: frozenset[int]        # agent slots the message mentions
    segment: int = 0
    anchor: str = ""             # "answer:<slot>" for the DialEnd ANSWER of a member


@dataclass
class _Template:
    name: str
    messages: list[_Msg]
    recorded: dict[str, str]
    slots: list[dict[str, str]]


@lru_cache(maxsize=1)
def _document() -> dict:
    text = resources.files("cti.sim").joinpath("templates/lab22.json").read_text("utf-8")
    return json.loads(text)


def privilege(event: str) -> str:
    return _document()["privilege"].get(event, "call,all")


# a placeholder about agent slot k: "a0.id", "ch:a0.1", "=ringtime:a0", "=cdr_start:a0.2"
_SLOT_KEY = re.compile(r"(?:^|:)a(\d+)(?:\.|$)")


@lru_cache(maxsize=None)
def template(name: str) -> _Template:
    """The compiled template of a scenario; raises KeyError naming known ones."""
    doc = _document()
    if name not in doc["scenarios"]:
        raise KeyError(f"unknown simulator scenario {name!r}; expected one of "
                       f"{', '.join(doc['scenarios'])}")
    raw = doc["scenarios"][name]
    last: dict[str, list[str]] = {}
    messages: list[_Msg] = []
    segment = 0
    for step, event, parts in raw["messages"]:
        if isinstance(step, str):
            segment += 1
        compiled = []
        keys: list[str] = []
        for part in parts:
            if part[0] == "@":
                prefix, role = part[1], part[2]
                if len(part) == 3:
                    vals = last[role]
                else:
                    vals = last[role] = part[3:]
                cvals = [_compile(v) for v in vals]
                compiled.append(("snap", prefix, role, cvals))
                keys.append(f"ch:{role}")
                keys += [k for v in cvals if isinstance(v, _Value) for k in v.keys()]
            elif part[0] == "CEL" and len(part) == 15:
                cvals = [_compile(v) for v in part[1:]]
                compiled.append(("cel", cvals))
                keys.append(f"ch:{part[9]}")
                keys += [k for v in cvals if isinstance(v, _Value) for k in v.keys()]
            else:
                value = _compile(part[1])
                compiled.append(("kv", part[0], value))
                if isinstance(value, _Value):
                    keys += list(value.keys())
        slots = frozenset(int(m.group(1)) for k in keys for m in [_SLOT_KEY.search(k)] if m)
        msg = _Msg(step, event, compiled, slots, segment)
        if event == "DialEnd" and _dialstatus(parts) == "ANSWER" and slots:
            msg.anchor = f"answer:{min(slots)}"
        messages.append(msg)
    return _Template(name, messages, raw["recorded"], raw["slots"])


def _dialstatus(parts: list) -> str | None:
    for part in parts:
        if part[0] == "DialStatus":
            return part[1]
    return None


@lru_cache(maxsize=1)
def _cancel_fragment() -> list[_Msg]:
    """What a ringing member gets when the caller is gone (recorded abandoned call)."""
    tpl = template("inbound_abandoned")
    last_segment = tpl.messages[-1].segment
    return [m for m in tpl.messages if m.segment == last_segment and 0 in m.slots]


def agi_env_template() -> list[tuple[str, str | _Value]]:
    return [(k, _compile(v)) for k, v in _document()["agi_env"]]


# --- rendering --------------------------------------------------------------------


@dataclass
class _Leg:
    channel: str
    uniqueid: str
    created: float
    answered: float | None = None


class _Member:
    """One agent rung in one slot: its own Local pair and ring start."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.legs: dict[str, _Leg] = {}
        self.called: float | None = None


class CallScript:
    """One simulated call of a scenario, rendered step by step.

    The order of calls: :meth:`head`; if :attr:`has_agi`, per FastAGI command
    :meth:`agi_command` then :meth:`agi_result`; :meth:`set_route` with what
    the script decided; optionally :meth:`queued` (the caller waits on hold)
    and :meth:`switch` (another tail, e.g. abandoned when nobody is free);
    :meth:`set_agents`; :meth:`tail`. The render methods return
    ``(delay_seconds, Message)`` pairs, the delay counted from the previous
    message. Raises KeyError for an unknown scenario and ValueError for agents
    that do not fit the scenario's slots.
    """

    def __init__(self, scenario: str, params: CallParams | None = None, *, ids: Ids,
                 start: float | None = None, originate: Originate | None = None,
                 agi_url: str = "agi://127.0.0.1:4573/route", login_time: int | None = None,
                 rng: random.Random | None = None, context: str | None = None) -> None:
        self.scenario = scenario
        self.template = template(scenario)
        self.params = params or CallParams()
        self.ids = ids
        self.start = time.time() if start is None else start
        self.originate = originate
        self.rng = rng or random.Random()
        self.route = Route()
        self._legs: dict[str, _Leg] = {}
        self._slots: list[list[_Member]] = []
        self._pos = 0
        self._now = 0.0
        self._join: float | None = None
        self._connect: float | None = None
        self._holdtime = "0"
        self._agi_cmd = ""
        recorded = self.template.recorded
        self.context = context or recorded.get("context", "from-pstn")
        inbound = self.context == "from-pstn"
        p = self.params
        script = agi_url.split("/", 3)[3] if agi_url.count("/") >= 3 else ""
        self._static: dict[str, str] = {
            "cnum": p.number if inbound else p.cid_num,
            "cname": p.name if inbound else p.cid_name,
            "did": p.did,
            "number": p.number,
            "agi_url": agi_url,
            "agi_script": script,
            "threadid": str(self.rng.randrange(139_000_000_000_000, 140_999_999_999_999)),
            "hold_s": _secs(p.hold),
            "talk_s": _secs(p.talk),
            "ring_s": _secs(p.ring),
            "login_time": str(login_time if login_time is not None else int(self.start)),
            "action_id": originate.action_id if originate else "",
            "orig_context": originate.context if originate else "",
            "orig_exten": originate.exten if originate else "",
            "callback_id": p.callback_id,
            "bridge1": _uuid(self.rng),
            "bridge2": _uuid(self.rng),
        }
        self.set_route(self.route)
        if originate and originate.channel_id:
            self._legs["C1"] = _Leg("", originate.channel_id, 0.0)
            self._legs["C2"] = _Leg("", originate.other_channel_id
                                    or f"{originate.channel_id};2", 0.0)
        self._agi_idx = next((i for i, m in enumerate(self.template.messages)
                              if m.name == "AGI"), None)
        self._split = self._find_split()

    # -- public ------------------------------------------------------------------

    @property
    def has_agi(self) -> bool:
        """True when the dialplan runs AGI() and the caller waits for its answer."""
        return self._agi_idx is not None

    @property
    def linkedid(self) -> str:
        return self._role_leg("C1", {}).uniqueid

    def caller_channel(self) -> str:
        """The ``;2`` caller leg: the channel FastAGI runs on."""
        return self._role_leg("C2", {}).channel

    def caller_uniqueid(self) -> str:
        """Uniqueid of the ``;2`` caller leg (``agi_uniqueid``)."""
        return self._role_leg("C2", {}).uniqueid

    def set_route(self, route: Route) -> None:
        """What FastAGI decided: fills AGISTATUS, CTI_* and the queue of the tail."""
        self.route = route
        v = route.variables
        prio = v.get("CTI_PRIORITY", "")
        self._static.update({
            "agistatus": route.agistatus,
            "cti_queue": v.get("CTI_QUEUE", ""),
            "cti_segment": v.get("CTI_SEGMENT", ""),
            "cti_priority": prio,
            "cti_customer_id": v.get("CTI_CUSTOMER_ID", ""),
            "queue_prio": prio if prio else "0",
            "queue": route.queue,
            "queue2": TRANSFER_QUEUE,
        })

    def set_agents(self, slots: Sequence[Sequence[Agent]]) -> None:
        """Agents per slot (see SLOT_MODES); raises ValueError if they do not fit."""
        modes = SLOT_MODES[self.scenario]
        if len(slots) != len(modes):
            raise ValueError(f"scenario {self.scenario} has {len(modes)} agent slot(s) "
                             f"({', '.join(modes) or 'none'}), got {len(slots)}")
        for k, (mode, agents) in enumerate(zip(modes, slots)):
            if mode == "one" and len(agents) != 1:
                raise ValueError(f"slot {k} of {self.scenario} takes exactly one agent")
            if mode == "optional" and len(agents) > 1:
                raise ValueError(f"slot {k} of {self.scenario} takes at most one agent")
            if mode == "answer" and not agents:
                raise ValueError(f"slot {k} of {self.scenario} needs an answering agent")
        self._slots = [[_Member(a) for a in agents] for agents in slots]

    def head(self) -> list[Timed]:
        """Messages from the first one up to the dialplan's ``AGI()`` step."""
        return self._render(self._split)

    def agi_env(self) -> bytes:
        """The FastAGI environment block Asterisk sends (LF line ends, blank line)."""
        lines = [f"{k}: {self._value(v, {})}" for k, v in agi_env_template()]
        return ("\n".join(lines) + "\n\n").encode("utf-8")

    def agi_command(self, command: str) -> Message:
        """The AGIExecStart Asterisk sends when a FastAGI command arrives."""
        self._agi_cmd = str(self.rng.randrange(100_000_000, 2_147_483_647))
        return _event("AGIExecStart", self._agi_base() + [("CommandId", self._agi_cmd),
                                                          ("Command", command)])

    def agi_result(self, command: str, code: int = 200,
                   result: str = "Success") -> list[Message]:
        """[VarSet for SET VARIABLE] + AGIExecEnd, sent once the command was answered."""
        base = self._agi_base()
        out: list[Message] = []
        var = parse_set_variable(command) if code == 200 else None
        if var is not None:
            out.append(_event("VarSet", base + [("Variable", var[0]), ("Value", var[1])]))
        out.append(_event("AGIExecEnd", base + [
            ("CommandId", self._agi_cmd), ("Command", command), ("ResultCode", str(code)),
            ("Result", result)]))
        return out

    def _agi_base(self) -> list[tuple[str, str]]:
        if self._agi_idx is None:
            raise ValueError(f"scenario {self.scenario} runs no FastAGI script")
        return self._pairs(self.template.messages[self._agi_idx].parts[0], {})

    def queued(self, at: float | None = None) -> list[Timed]:
        """From the FastAGI step until the caller is in the queue (MusicOnHoldStart).

        Optional: call it between the AGI exchange and :meth:`tail` to wait
        for a free agent while the caller hears music on hold. ``at`` is as in
        :meth:`tail`.
        """
        if at is not None:
            self._now = max(self._now, at)
        return self._render(self._queued_index(self.template))

    def switch(self, scenario: str) -> None:
        """Continue the call as another inbound scenario (same head, other tail).

        Used when the agents the queue has free cannot play the planned
        scenario. Call it after :meth:`head` or :meth:`queued`, before
        :meth:`tail`; raises ValueError later than that.
        """
        tpl = template(scenario)
        agi_idx = next((i for i, m in enumerate(tpl.messages) if m.name == "AGI"), None)
        queued = self._queued_index(self.template)
        if self._pos <= self._split:
            at_queue = False
        elif self._pos == queued:
            at_queue = True
        else:
            raise ValueError(f"call already past its queue entry; cannot become {scenario}")
        self.scenario = scenario
        self.template = tpl
        self._agi_idx = agi_idx
        self._split = self._find_split()
        self._pos = self._queued_index(tpl) if at_queue else self._split

    def _queued_index(self, tpl: _Template) -> int:
        """Index just after the first MusicOnHoldStart: the caller waits in the queue."""
        for i, m in enumerate(tpl.messages):
            if m.name == "MusicOnHoldStart":
                return i + 1
        return self._split

    def tail(self, at: float | None = None) -> list[Timed]:
        """The rest of the call; ``at`` = seconds since the call began (AGI time included)."""
        if at is not None:
            self._now = max(self._now, at)
        return self._render(len(self.template.messages))

    def agents(self) -> list[Agent]:
        """Every agent of the call (all slots), to mark them busy while it lasts."""
        return [m.agent for members in self._slots for m in members]

    # -- internals ---------------------------------------------------------------

    def _find_split(self) -> int:
        msgs = self.template.messages
        if self._agi_idx is not None:
            return self._agi_idx
        for i, m in enumerate(msgs):   # no AGI exchange: stop after the AGI() step anyway
            if m.name == "Newexten" and any(p[0] == "kv" and p[1] == "Application"
                                            and p[2] == "AGI" for p in m.parts):
                return i + 1
        return len(msgs)

    def _gap(self, label: str) -> float:
        p = self.params
        settle = min(0.5, p.talk)
        return {
            "agi": 0.5,
            "ring": p.ring,
            "ring2": p.ring,
            "settle": settle,
            "talk": max(0.0, p.talk - settle),
            "talk1": max(0.0, p.transfer_after - settle),
            "hold": max(0.05, p.hold - self._now),
            "rna": p.ring_timeout,
            "retry": p.retry,
            "cb_ring": 1.0,
            "cb_talk": max(0.1, p.talk - p.ring - settle),
            "originate_timeout": p.originate_timeout,
        }[label]

    def _step(self, m: _Msg) -> float:
        return self._gap(m.step) if isinstance(m.step, str) else m.step

    def _render(self, stop: int) -> list[Timed]:
        """Render template messages up to ``stop``, expanding agent slots."""
        msgs = self.template.messages
        out: list[Timed] = []
        pending = 0.0      # delay of dropped messages, carried to the next one
        while self._pos < stop:
            m = msgs[self._pos]
            if m.name == "AGI" or (m.name == "OriginateResponse" and self.originate is None):
                pending += self._step(m) if m.name != "AGI" else m.step
                self._pos += 1
                continue
            if not m.slots:
                pending = self._emit(out, self._step(m) + pending, m, {})
                self._pos += 1
                continue
            # a run: consecutive messages about the same agent slot in one segment
            k = min(m.slots)
            end = self._pos
            while (end < stop and msgs[end].slots and min(msgs[end].slots) == k
                   and msgs[end].segment == m.segment and msgs[end].name != "AGI"):
                end += 1
            run = msgs[self._pos:end]
            self._pos = end
            members = self._slots[k] if k < len(self._slots) else []
            if not members:
                pending += sum(self._step(x) for x in run)
                continue
            for n, member in enumerate(self._rung(k, m.segment, members)):
                for x in run:
                    step = self._step(x) if (n == 0 or x is not run[0]) else 0.0
                    pending = self._emit(out, step + pending, x, {k: member})
                    if x.anchor == f"answer:{k}" and n == 0:
                        for loser in members[1:]:
                            for y in _cancel_fragment():
                                self._emit(out, 0.0, y, {0: loser})
        return out

    def _rung(self, k: int, segment: int, members: list[_Member]) -> list[_Member]:
        """Which members of slot ``k`` a run of messages in ``segment`` is about."""
        mode = SLOT_MODES[self.scenario][k]
        if mode == "ring":
            return members
        if mode == "answer" and segment == self._ring_segment(k):
            return members
        return members[:1]

    def _ring_segment(self, k: int) -> int:
        for m in self.template.messages:
            if m.name == "AgentCalled" and k in m.slots:
                return m.segment
        return -1

    def _emit(self, out: list[Timed], delay: float, m: _Msg,
              slotmap: dict[int, _Member]) -> float:
        self._now += delay
        out.append((delay, self._message(m, slotmap)))
        return 0.0

    def _message(self, m: _Msg, slotmap: dict[int, _Member]) -> Message:
        self._observe(m, slotmap)
        pairs: list[tuple[str, str]] = [("Event", m.name), ("Privilege", privilege(m.name))]
        for part in m.parts:
            pairs += self._pairs(part, slotmap)
        return Message(Kind.EVENT, m.name, None, pairs)

    def _observe(self, m: _Msg, slotmap: dict[int, _Member]) -> None:
        """Clock bookkeeping the computed headers need (join, ring start, answer)."""
        now = self._now
        if m.name == "QueueCallerJoin":
            self._join = now
        elif m.name == "AgentCalled":
            for member in slotmap.values():
                member.called = now
        elif m.name == "AgentConnect":
            self._connect = now
            self._holdtime = str(self._secs(now) - self._secs(self._join or now))
        elif m.name == "Newstate":
            snap = m.parts[0]
            if snap[0] == "snap" and snap[3][0] == "6":
                leg = self._role_leg(snap[2], slotmap)
                if leg.answered is None:
                    leg.answered = now

    def _pairs(self, part: tuple, slotmap: dict[int, _Member]) -> list[tuple[str, str]]:
        kind = part[0]
        if kind == "kv":
            return [(part[1], self._value(part[2], slotmap))]
        if kind == "snap":
            _, prefix, role, vals = part
            leg = self._role_leg(role, slotmap)
            v = [self._value(x, slotmap) for x in vals]
            return [(prefix + "Channel", leg.channel), (prefix + "ChannelState", v[0]),
                    (prefix + "ChannelStateDesc", STATE_DESC.get(v[0], "Unknown")),
                    (prefix + "CallerIDNum", v[1]), (prefix + "CallerIDName", v[2]),
                    (prefix + "ConnectedLineNum", v[3]), (prefix + "ConnectedLineName", v[4]),
                    (prefix + "Language", "en"), (prefix + "AccountCode", ""),
                    (prefix + "Context", v[5]), (prefix + "Exten", v[6]),
                    (prefix + "Priority", v[7]), (prefix + "Uniqueid", leg.uniqueid),
                    (prefix + "Linkedid", self.linkedid)]
        # CEL
        vals = part[1]
        v = [self._value(x, slotmap) for x in vals]
        leg = self._role_leg(vals[8], slotmap)
        return [("EventName", v[0]), ("AccountCode", ""), ("CallerIDnum", v[1]),
                ("CallerIDname", v[2]), ("CallerIDani", v[3]), ("CallerIDrdnis", v[4]),
                ("CallerIDdnid", v[5]), ("Exten", v[6]), ("Context", v[7]),
                ("Channel", leg.channel), ("Application", v[9]), ("AppData", v[10]),
                ("EventTime", self._clock("time", None, slotmap)), ("AMAFlags", v[11]),
                ("UniqueID", leg.uniqueid), ("LinkedID", self.linkedid), ("Userfield", ""),
                ("Peer", v[12]), ("PeerAccount", ""), ("Extra", v[13])]

    def _value(self, value: str | _Value, slotmap: dict[int, _Member]) -> str:
        if isinstance(value, str):
            return value
        out = []
        for is_key, piece in value.pieces:
            out.append(self._resolve(piece, slotmap) if is_key else piece)
        return "".join(out)

    def _resolve(self, key: str, slotmap: dict[int, _Member]) -> str:
        if key in self._static:
            return self._static[key]
        if key.startswith("ch:"):
            return self._role_leg(key[3:], slotmap).channel
        if key.startswith("uid:"):
            return self._role_leg(key[4:], slotmap).uniqueid
        if key.startswith("="):
            expr, _, arg = key[1:].partition(":")
            return self._clock(expr, arg or None, slotmap)
        if key.startswith("a") and "." in key:
            slot, _, attr = key[1:].partition(".")
            member = self._member(int(slot), slotmap)
            return member.agent.id if attr == "id" else member.agent.name
        raise KeyError(f"template placeholder %{{{key}}} has no value in {self.scenario}")

    def _member(self, slot: int, slotmap: dict[int, _Member]) -> _Member:
        if slot in slotmap:
            return slotmap[slot]
        if slot < len(self._slots) and self._slots[slot]:
            return self._slots[slot][0]
        raise ValueError(f"scenario {self.scenario} needs an agent in slot {slot}")

    def _role_leg(self, role: str, slotmap: dict[int, _Member]) -> _Leg:
        if role.startswith("a"):
            slot, _, half = role[1:].partition(".")
            member = self._member(int(slot), slotmap)
            if half not in member.legs:
                self._new_pair(member.legs, member.agent.id, "agents")
            return member.legs[half]
        if role not in self._legs or not self._legs[role].channel:
            preset = {r: leg.uniqueid for r, leg in self._legs.items()}
            exten = self.params.did if self.context == "from-pstn" else self.params.number
            pair: dict[str, _Leg] = {}
            self._new_pair(pair, exten, self.context)
            for half, r in (("1", "C1"), ("2", "C2")):
                leg = pair[half]
                if r in preset:
                    leg.uniqueid = preset[r]
                self._legs[r] = leg
        return self._legs[role]

    def _new_pair(self, legs: dict[str, _Leg], exten: str, context: str) -> None:
        suffix = self.ids.local()
        at = self.start + self._now
        for half in ("1", "2"):
            legs[half] = _Leg(f"Local/{exten}@{context}-{suffix};{half}",
                              self.ids.uniqueid(at), self._now)

    def _secs(self, t: float) -> int:
        return int(self.start + t)

    def _clock(self, expr: str, arg: str | None, slotmap: dict[int, _Member]) -> str:
        now = self._now
        if expr == "time":
            return _fmt(self.start + now)
        if expr == "epoch":
            return str(self._secs(now))
        if expr == "holdtime":
            if self._connect is not None and self._join is not None and \
                    self._connect >= self._join:
                return self._holdtime
            return str(self._secs(now) - self._secs(self._join or now))
        if expr == "holdtime_ms":
            return str(1000 * int(self._clock("holdtime", None, slotmap)))
        if expr in ("ringtime", "ringtime_ms"):
            member = self._member(int(arg[1:]), slotmap)
            called = member.called if member.called is not None else now
            if expr == "ringtime":
                return str(self._secs(now) - self._secs(called))
            return str(round((now - called) * 1000))
        if expr == "talktime":
            return str(self._secs(now) - self._secs(self._connect or now))
        if expr in ("answered", "answered_ms"):
            if self._connect is None:
                return "0"
            if expr == "answered":
                return str(self._secs(now) - self._secs(self._connect))
            return str(round((now - self._connect) * 1000))
        leg = self._role_leg(arg, slotmap) if arg else None
        if expr == "dialed":
            return str(self._secs(now) - self._secs(leg.created))
        if expr == "dialed_ms":
            return str(round((now - leg.created) * 1000))
        if expr == "cdr_start":
            return _fmt(self.start + leg.created)
        if expr == "cdr_answer":
            return _fmt(self.start + leg.answered) if leg.answered is not None else ""
        if expr == "cdr_duration":
            return str(self._secs(now) - self._secs(leg.created))
        if expr == "cdr_billsec":
            if leg.answered is None:
                return "0"
            return str(self._secs(now) - self._secs(leg.answered))
        raise KeyError(f"unknown clock expression {expr!r} in {self.scenario}")


# --- helpers ----------------------------------------------------------------------


def _event(name: str, pairs: list[tuple[str, str]]) -> Message:
    return Message(Kind.EVENT, name, None,
                   [("Event", name), ("Privilege", privilege(name))] + pairs)


def _fmt(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _secs(seconds: float) -> str:
    return str(max(0, round(seconds)))


def _uuid(rng: random.Random) -> str:
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) % 4]}{h[17:20]}-{h[20:]}"


_SET_VAR = re.compile(r'^SET\s+VARIABLE\s+(\S+)\s+(?:"((?:[^"\\]|\\.)*)"|(\S+))', re.I)


def parse_set_variable(command: str) -> tuple[str, str] | None:
    """``SET VARIABLE NAME "value"`` -> ``(NAME, value)``; None for other commands."""
    m = _SET_VAR.match(command.strip())
    if not m:
        return None
    value = m.group(2) if m.group(2) is not None else m.group(3)
    return m.group(1), re.sub(r"\\(.)", r"\1", value)


def assign_agents(scenario: str, queue_members: Sequence[Agent],
                  transfer_members: Sequence[Agent] = (),
                  busy: Iterable[str] = ()) -> tuple[str, list[list[Agent]]]:
    """Pick the agents of one call; returns ``(scenario, slots)``.

    Members listed in ``busy`` (agent ids already on a call) are skipped, as
    ``ringinuse=no`` would. When the scenario cannot happen with the members
    left (nobody free to answer), the call degrades to ``inbound_abandoned``:
    the caller waits, whoever is free rings, the caller hangs up.
    """
    taken = set(busy)
    free = [a for a in queue_members if a.id not in taken]
    ringable = [a for a in free if a.behaviour != "busy"]
    answerers = [a for a in free if a.behaviour == "answer"]
    abandoned = ("inbound_abandoned", [ringable])
    if scenario in ("inbound_answered", "inbound_no_agi"):
        if not answerers:
            return abandoned
        first = answerers[0]
        return scenario, [[first] + [a for a in ringable if a != first]]
    if scenario == "inbound_abandoned":
        return abandoned
    if scenario == "ring_no_answer":
        if not free:
            return abandoned
        rna = next((a for a in free if a.behaviour == "noanswer"), free[0])
        busy_one = [a for a in free if a.behaviour == "busy"][:1]
        answer = next((a for a in answerers if a != rna), rna if rna in answerers else None)
        if answer is None:
            return abandoned
        return scenario, [[rna], busy_one, [answer]]
    if scenario == "blind_transfer":
        if not answerers:
            return abandoned
        first = answerers[0]
        sup = next((a for a in transfer_members
                    if a.id not in taken and a.id != first.id and a.behaviour == "answer"),
                   None)
        if sup is None:
            return "inbound_answered", [[first]]
        return scenario, [[first], [sup]]
    raise KeyError(f"unknown inbound scenario {scenario!r}; expected one of {SCENARIOS}")


def recorded_route(scenario: str, queue: str) -> list[tuple[str, str]]:
    """The FastAGI exchange the lab's route script had, for a call sent to ``queue``."""
    segment, prio = {"vip": ("gold", "5"), "complaints": ("standard", "0")}.get(
        queue, ("standard", "0"))
    return [("GET VARIABLE CALLERID(name)", ""),
            (f'SET VARIABLE CTI_QUEUE "{queue}"', ""),
            (f'SET VARIABLE CTI_SEGMENT "{segment}"', ""),
            (f'SET VARIABLE CTI_PRIORITY "{prio}"', ""),
            ('SET VARIABLE CTI_CUSTOMER_ID "CUST-0000"', ""),
            (f'VERBOSE "CTI route for caller: {queue}" 1', "")]


def build_call(scenario: str, params: CallParams | None = None, *,
               agents: Sequence[Sequence[Agent]] | None = None, ids: Ids | None = None,
               start: float | None = None, queue: str | None = None,
               agi_commands: Sequence[str] | None = None, originate: Originate | None = None,
               rng: random.Random | None = None) -> list[Timed]:
    """A whole call at once: head, an AGI exchange routing to ``queue``, tail.

    ``agents`` defaults to the members of the recorded call; ``queue`` to the
    recorded queue; ``agi_commands`` to the lab route script's commands for that
    queue. Raises KeyError / ValueError like :class:`CallScript`.
    """
    tpl = template(scenario)
    script = CallScript(scenario, params, ids=ids or Ids(), start=start, originate=originate,
                        rng=rng)
    if agents is None:
        agents = [[Agent(s["id"], s.get("name", ""))] for s in tpl.slots]
        if scenario == "callback_answered":
            agents = [[Agent(tpl.slots[0]["id"], "")]] if tpl.slots else [[]]
    if queue is None:
        queue = next((s["queue"] for s in tpl.slots if "queue" in s), FALLBACK_QUEUE)
    script.set_agents(agents)
    out = script.head()
    if script.has_agi:
        commands = agi_commands if agi_commands is not None else [
            c for c, _ in recorded_route(scenario, queue)]
        variables: dict[str, str] = {}
        for command in commands:
            out.append((0.0, script.agi_command(command)))
            out += [(0.0, m) for m in script.agi_result(command)]
            var = parse_set_variable(command)
            if var:
                variables[var[0]] = var[1]
        script.set_route(Route("SUCCESS", variables))
    elif scenario == "inbound_no_agi":
        script.set_route(Route.failed())
    out += script.tail()
    return out
