"""What the simulated PBX looks like right now, read back from the events it sent. No I/O.

The simulator never keeps a second model of its calls: every event it
broadcasts goes through :meth:`PbxState.apply` first, so CoreShowChannels,
Status, QueueStatus, Getvar and ``core show channels`` answer from exactly the
channels, bridges, variables and queue callers the clients were told about.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cti.ami.protocol import Message
from cti.sim.events import SNAPSHOT_KEYS, Agent

# events that change nothing here are skipped without looking at their headers
_WATCHED = frozenset({
    "Newchannel", "Hangup", "Newstate", "Newexten", "NewCallerid", "NewConnectedLine",
    "BridgeEnter", "BridgeLeave", "VarSet", "QueueCallerJoin", "QueueCallerLeave",
    "AgentComplete",
})


@dataclass
class Channel:
    """A live channel: its last snapshot, dialplan application, bridge and variables."""

    snapshot: dict[str, str]
    created: float
    application: str = ""
    data: str = ""
    bridge: str = ""
    variables: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.snapshot["Channel"]

    def pairs(self) -> list[tuple[str, str]]:
        """The 14 snapshot headers, in Asterisk's order."""
        return [(k, self.snapshot.get(k, "")) for k in SNAPSHOT_KEYS]


@dataclass
class QueueCaller:
    channel: str
    uniqueid: str
    cid_num: str
    cid_name: str
    joined: float


@dataclass
class MemberStats:
    calls_taken: int = 0
    last_call: int = 0
    paused: bool = False
    paused_reason: str = ""
    last_pause: int = 0


class PbxState:
    """Channels, queue callers and member counters of the simulated PBX.

    Feed every outgoing event to :meth:`apply`; query with :meth:`channels`,
    :meth:`channel`, :meth:`queue_callers`. ``queues`` is the member table
    (queue -> agents); :meth:`add_member` / :meth:`remove_member` change it.
    """

    def __init__(self, queues: dict[str, Sequence[Agent]], clock=time.time) -> None:
        self.queues: dict[str, list[Agent]] = {q: list(m) for q, m in queues.items()}
        self.globals: dict[str, str] = {}
        self.processed_calls = 0
        self._clock = clock
        self._channels: dict[str, Channel] = {}
        self._callers: dict[str, list[QueueCaller]] = {}
        self._members: dict[tuple[str, str], MemberStats] = {}
        self._queue_totals: dict[str, dict[str, int]] = {}

    # -- events in --------------------------------------------------------------

    def apply(self, msg: Message) -> None:
        """Update the state from one event the simulator is about to send."""
        name = msg.name
        if name not in _WATCHED:
            return
        chan_name = msg.get("Channel")
        if name == "Newchannel":
            self._channels[chan_name] = Channel(_snapshot(msg), self._clock())
            return
        chan = self._channels.get(chan_name) if chan_name else None
        if name == "Hangup":
            self._channels.pop(chan_name, None)
            for callers in self._callers.values():
                callers[:] = [c for c in callers if c.channel != chan_name]
            if chan_name and chan_name.endswith(";1") and "@from-pstn-" in chan_name:
                self.processed_calls += 1
            return
        if name == "QueueCallerJoin":
            self._callers.setdefault(msg.get("Queue", ""), []).append(QueueCaller(
                chan_name or "", msg.get("Uniqueid", ""), msg.get("CallerIDNum", ""),
                msg.get("CallerIDName", ""), self._clock()))
        elif name == "QueueCallerLeave":
            callers = self._callers.get(msg.get("Queue", ""), [])
            callers[:] = [c for c in callers if c.channel != chan_name]
        elif name == "AgentComplete":
            stats = self.member(msg.get("Queue", ""), msg.get("Interface", ""))
            stats.calls_taken += 1
            stats.last_call = int(self._clock())
            totals = self._queue_totals.setdefault(msg.get("Queue", ""),
                                                   {"completed": 0, "talk": 0, "hold": 0})
            totals["completed"] += 1
            totals["talk"] += int(msg.get("TalkTime", "0") or 0)
            totals["hold"] += int(msg.get("HoldTime", "0") or 0)
        if chan is None:
            return
        if name in ("Newstate", "Newexten", "NewCallerid", "NewConnectedLine", "VarSet",
                    "BridgeEnter", "BridgeLeave"):
            chan.snapshot.update(_snapshot(msg))
        if name == "Newexten":
            chan.application = msg.get("Application", "")
            chan.data = msg.get("AppData", "")
        elif name == "BridgeEnter":
            chan.bridge = msg.get("BridgeUniqueid", "")
        elif name == "BridgeLeave":
            chan.bridge = ""
        elif name == "VarSet":
            chan.variables[msg.get("Variable", "").lstrip("_")] = msg.get("Value", "")

    # -- queries ---------------------------------------------------------------------

    def channels(self) -> list[Channel]:
        return list(self._channels.values())

    def channel(self, name: str) -> Channel | None:
        return self._channels.get(name)

    def queue_callers(self, queue: str) -> list[QueueCaller]:
        return list(self._callers.get(queue, []))

    def queue_totals(self, queue: str) -> dict[str, int]:
        return self._queue_totals.get(queue, {"completed": 0, "talk": 0, "hold": 0})

    def member(self, queue: str, interface: str) -> MemberStats:
        return self._members.setdefault((queue, interface), MemberStats())

    def members(self, queue: str) -> list[Agent]:
        return list(self.queues.get(queue, []))

    def add_member(self, queue: str, agent: Agent, paused: bool = False) -> bool:
        members = self.queues.setdefault(queue, [])
        if any(a.interface == agent.interface for a in members):
            return False
        members.append(agent)
        self.member(queue, agent.interface).paused = paused
        return True

    def remove_member(self, queue: str, interface: str) -> bool:
        members = self.queues.get(queue, [])
        kept = [a for a in members if a.interface != interface]
        if len(kept) == len(members):
            return False
        self.queues[queue] = kept
        return True

    def pause(self, interface: str, paused: bool, reason: str = "",
              queues: Iterable[str] | None = None) -> bool:
        found = False
        for queue in (queues or list(self.queues)):
            if any(a.interface == interface for a in self.queues.get(queue, [])):
                stats = self.member(queue, interface)
                stats.paused = paused
                stats.paused_reason = reason if paused else ""
                stats.last_pause = int(self._clock()) if paused else stats.last_pause
                found = True
        return found

    def paused_ids(self) -> set[str]:
        """Agents paused in every queue they belong to: never rung."""
        out = set()
        for (queue, iface), stats in self._members.items():
            if stats.paused:
                out.add(iface.split("@")[0].removeprefix("Local/"))
        return out


def _snapshot(msg: Message) -> dict[str, str]:
    snap = {}
    for key in SNAPSHOT_KEYS:
        value = msg.get(key)
        if value is not None:
            snap[key] = value
    return snap
