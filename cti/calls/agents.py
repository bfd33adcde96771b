"""Which agent a queue member, device or channel belongs to. No I/O.

Asterisk names one agent's phone in several ways: the queue member interface
(``Local/1001@agents/n``), the ``MemberName`` (``Agent Alice``), and the channel
of each call to it (``Local/1001@agents-00000001;1``, ``PJSIP/1001-00000006``).
:class:`AgentDirectory` turns any of them into the agent id from the settings.

Channel names are reduced to the interface they were made from before the
lookup: the ``;1``/``;2`` half of a Local channel, the ``-XXXXXXXX`` counter
Asterisk appends, and the ``/n`` style options of a Local interface are
dropped, and everything is compared case-insensitively.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

_HEX = frozenset("0123456789abcdef")


class _AgentSettingsLike(Protocol):
    id: str
    name: str
    interfaces: list[str]
    member_names: list[str]


@dataclass(frozen=True, slots=True)
class Agent:
    """One agent as the call model sees it (no pop token: that stays in the settings)."""

    id: str
    name: str = ""
    interfaces: tuple[str, ...] = ()
    member_names: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "interfaces": list(self.interfaces),
                "member_names": list(self.member_names)}


def _from_settings(agent: _AgentSettingsLike) -> Agent:
    return Agent(id=agent.id, name=agent.name, interfaces=tuple(agent.interfaces),
                 member_names=tuple(agent.member_names))


def interface_key(interface: str) -> str:
    """``Local/1001@agents/n`` -> ``local/1001@agents``; ``PJSIP/1001`` -> ``pjsip/1001``."""
    key = interface.strip().lower()
    if key.startswith("local/"):
        at = key.find("@")
        slash = key.find("/", at + 1) if at >= 0 else -1
        if slash >= 0:
            key = key[:slash]  # Local channel options (/n, /j, /m, /b)
    return key


def channel_base(channel: str) -> str:
    """A channel name without its Local ``;1``/``;2`` half: the leg both halves share."""
    if len(channel) > 2 and channel[-2] == ";" and channel[-1] in "12":
        return channel[:-2]
    return channel


def channel_interfaces(channel: str) -> tuple[str, ...]:
    """Keys a channel name may match, most specific first.

    ``PJSIP/1001-0000000a`` -> (``pjsip/1001-0000000a``, ``pjsip/1001``). The
    full name comes first so an interface whose own name ends in ``-<hex>``
    still matches when it is passed as a channel.
    """
    base = channel_base(channel.strip()).lower()
    dash = base.rfind("-")
    slash = base.find("/")
    if dash > slash >= 0 and dash + 1 < len(base) and set(base[dash + 1:]) <= _HEX:
        return base, base[:dash]
    return (base,)


class AgentDirectory:
    """Agent ids by interface, member name and channel.

    Build it with :meth:`from_settings` (the daemon) or from :class:`Agent`
    entries (tests), then call :meth:`resolve`. Raises :class:`ValueError`
    if two agents claim the same interface or member name, since a pop would
    otherwise go to whichever was listed last.
    """

    def __init__(self, entries: Iterable[Agent | _AgentSettingsLike]) -> None:
        self._agents: dict[str, Agent] = {}
        self._by_interface: dict[str, tuple[str, str]] = {}  # key -> (agent id, interface)
        self._by_member: dict[str, str] = {}
        for entry in entries:
            agent = entry if isinstance(entry, Agent) else _from_settings(entry)
            self._agents[agent.id] = agent
            for interface in agent.interfaces:
                self._claim(self._by_interface, interface_key(interface),
                            (agent.id, interface), f"interface {interface!r}")
            for member in agent.member_names:
                self._claim(self._by_member, member.strip().lower(), agent.id,
                            f"member name {member!r}")

    @staticmethod
    def _claim(table: dict[str, Any], key: str, value: Any, what: str) -> None:
        old = table.get(key)
        new_id = value[0] if isinstance(value, tuple) else value
        if old is not None:
            old_id = old[0] if isinstance(old, tuple) else old
            if old_id != new_id:
                raise ValueError(f"{what} is listed for agents {old_id!r} and {new_id!r}; "
                                 "expected each interface and member name to name one agent")
        table[key] = value

    @classmethod
    def from_settings(cls, agents: Iterable[_AgentSettingsLike]) -> AgentDirectory:
        """From ``Settings().agents`` (:class:`cti.config.AgentSettings`)."""
        return cls(_from_settings(a) for a in agents)

    def resolve(self, interface: str | None = None, member_name: str | None = None,
                channel: str | None = None) -> str | None:
        """The agent id behind any of the given names, or None.

        The interface wins over the member name, which wins over the channel.
        """
        if interface:
            hit = self._by_interface.get(interface_key(interface))
            if hit is not None:
                return hit[0]
        if member_name:
            agent = self._by_member.get(member_name.strip().lower())
            if agent is not None:
                return agent
        if channel:
            hit = self.match_channel(channel)
            if hit is not None:
                return hit[0]
        return None

    def match_channel(self, channel: str) -> tuple[str, str] | None:
        """``(agent id, configured interface)`` for a channel name, or None."""
        by_interface = self._by_interface
        for key in channel_interfaces(channel):
            hit = by_interface.get(key)
            if hit is not None:
                return hit
        return None

    def get(self, agent_id: str) -> Agent | None:
        return self._agents.get(agent_id)

    def __contains__(self, agent_id: object) -> bool:
        return agent_id in self._agents

    def __len__(self) -> int:
        return len(self._agents)

    def agents_list(self) -> list[dict[str, Any]]:
        """Every agent as plain data, sorted by id (the pop server's agent list)."""
        return [self._agents[k].as_dict() for k in sorted(self._agents)]
