"""What an async Originate's result means for a callback. Pure: no I/O.

Asterisk reports an ``Async: true`` Originate twice: the action's own reply
(``Response: Success`` = *queued*, or ``Response: Error`` = refused at once,
e.g. ``Invalid channel`` / ``Originate failed``), then the ``OriginateResponse``
event with ``Response: Success|Failure`` and a ``Reason`` that is the last
control frame seen on the first leg (see ``shared/cases/11``):

====== ============================ ==========================================
Reason meaning                       outcome
====== ============================ ==========================================
4      answered                     ``agent_answered`` (the first leg only)
3      ringing when it timed out    ``no_answer``
5      busy                         ``busy``
8      congestion                   ``congestion``
0      never reached at all         ``failed_unreachable``
1      hung up before answer        ``failed_hangup``
other                               ``failed_other`` (raw code kept)
====== ============================ ==========================================

``Response: Failure`` always wins over a reason that looks like success, and
``<null>``, ``<unknown>`` and empty values mean "no value".
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from cti.ami.protocol import Kind, Message, is_empty_value


class OriginateOutcome(str, enum.Enum):
    AGENT_ANSWERED = "agent_answered"
    NO_ANSWER = "no_answer"
    BUSY = "busy"
    CONGESTION = "congestion"
    FAILED_UNREACHABLE = "failed_unreachable"
    FAILED_HANGUP = "failed_hangup"
    FAILED_OTHER = "failed_other"
    FAILED_INVALID_CHANNEL = "failed_invalid_channel"   # refused at once (Response: Error)
    TIMEOUT = "timeout"                                 # no OriginateResponse in time

    @property
    def reached(self) -> bool:
        return self is OriginateOutcome.AGENT_ANSWERED

    @property
    def retryable(self) -> bool:
        """Worth another attempt later (a campaign's retry rule decides when)."""
        return self in (OriginateOutcome.NO_ANSWER, OriginateOutcome.BUSY,
                        OriginateOutcome.CONGESTION, OriginateOutcome.TIMEOUT)


_BY_REASON = {
    4: OriginateOutcome.AGENT_ANSWERED,
    3: OriginateOutcome.NO_ANSWER,
    5: OriginateOutcome.BUSY,
    8: OriginateOutcome.CONGESTION,
    0: OriginateOutcome.FAILED_UNREACHABLE,
    1: OriginateOutcome.FAILED_HANGUP,
}


@dataclass(frozen=True, slots=True)
class OriginateResult:
    outcome: OriginateOutcome
    action_id: str | None
    reason: int | None          # raw Reason code, when Asterisk gave one
    uniqueid: str | None        # first leg's Uniqueid (= the call's Linkedid) if it exists
    channel: str | None
    message: str | None = None  # Asterisk's text for immediate refusals


def from_event(event: Message) -> OriginateResult:
    """Outcome of an ``OriginateResponse`` event.

    Raises ValueError naming the message if it is not an OriginateResponse.
    """
    if event.kind != Kind.EVENT or event.name.lower() != "originateresponse":
        raise ValueError(f"expected an OriginateResponse event, got {event.kind.name} "
                         f"{event.name!r}")
    raw = event.get("Reason")
    reason = int(raw) if raw is not None and raw.strip().lstrip("-").isdigit() else None
    outcome = _BY_REASON.get(reason, OriginateOutcome.FAILED_OTHER) if reason is not None \
        else OriginateOutcome.FAILED_OTHER
    failed = (event.get("Response") or "").lower() != "success"
    if failed and outcome is OriginateOutcome.AGENT_ANSWERED:
        outcome = OriginateOutcome.FAILED_OTHER
    if not failed and outcome is not OriginateOutcome.AGENT_ANSWERED:
        # Success with an odd reason: Asterisk says it was answered
        outcome = OriginateOutcome.AGENT_ANSWERED
    uniqueid = event.get("Uniqueid")
    channel = event.get("Channel")
    return OriginateResult(outcome, event.get("ActionID"), reason,
                           None if is_empty_value(uniqueid) else uniqueid,
                           None if is_empty_value(channel) else channel)


def from_reply(reply: Message) -> OriginateResult | None:
    """The action's own reply: ``None`` if queued (wait for the event), else the final result."""
    if (reply.get("Response") or "").lower() == "success":
        return None
    return OriginateResult(OriginateOutcome.FAILED_INVALID_CHANNEL, reply.get("ActionID"),
                           None, None, None, reply.get("Message"))


def timed_out(action_id: str) -> OriginateResult:
    """No OriginateResponse within the Originate's Timeout + margin (e.g. after a restart)."""
    return OriginateResult(OriginateOutcome.TIMEOUT, action_id, None, None, None)
