"""Replays of the real Asterisk 22 recordings through the parser and the call tracker."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from cti.ami.protocol import Parser
from cti.calls.agents import AgentDirectory, channel_base
from cti.calls.model import Call, CallUpdate, Change, Direction, LegState, Outcome
from cti.calls.tracker import CallTracker
from cti.config import Settings

TRACES = sorted(p.name[: -len(".ami.raw")]
                for p in (Path(__file__).resolve().parents[2] / "shared" / "traces")
                .glob("*.ami.raw"))


@dataclass
class Replay:
    tracker: CallTracker
    updates: list[CallUpdate]
    per_event: list[list[CallUpdate]]

    def ended(self) -> list[Call]:
        return [u.call for u in self.updates if u.change is Change.ENDED]

    def changes(self, change: Change) -> list[CallUpdate]:
        return [u for u in self.updates if u.change is change]


def replay(traces_dir: Path, name: str, mark_originates: bool = False) -> Replay:
    """Feed NAME.ami.raw through Parser in 1 KiB reads; the jsonl ``t`` is the clock."""
    lines = [json.loads(line) for line in (traces_dir / f"{name}.ami.jsonl").open()]
    received = [line for line in lines if line["dir"] == "in" and line["kind"] != "banner"]
    raw = (traces_dir / f"{name}.ami.raw").read_bytes()
    parser = Parser()
    messages = []
    for i in range(0, len(raw), 1024):
        messages.extend(parser.feed(raw[i:i + 1024]))
    assert len(messages) == len(received), f"{name}: parser and jsonl disagree"

    settings = Settings()
    tracker = CallTracker(AgentDirectory.from_settings(settings.agents),
                          settings.calls.outbound_contexts)
    if mark_originates:  # what the callback service does before sending each Originate
        for line in lines:
            if line["dir"] == "out" and line["name"] == "Originate":
                headers = dict(line["headers"])
                tracker.mark_originate(headers["ActionID"], headers.get("Channel"))
    updates: list[CallUpdate] = []
    per_event: list[list[CallUpdate]] = []
    for msg, line in zip(messages, received, strict=True):
        assert msg.name == line["name"]
        got = tracker.handle(msg, line["t"])
        per_event.append(got)
        updates.extend(got)
    return Replay(tracker, updates, per_event)


@pytest.mark.parametrize("name", TRACES)
def test_every_trace_replays_and_ends_every_call_it_started(traces_dir: Path, name: str) -> None:
    result = replay(traces_dir, name, mark_originates=name.startswith("callback"))

    started = {u.call.call_id for u in result.changes(Change.STARTED)}
    assert {c.call_id for c in result.ended()} == started
    assert result.tracker.live_calls() == []
    assert all(c.outcome is not None and c.ended_at is not None for c in result.ended())


@pytest.mark.parametrize("name", TRACES)
def test_ringing_is_never_reported_for_a_local_half_or_the_customer(
        traces_dir: Path, name: str) -> None:
    result = replay(traces_dir, name, mark_originates=name.startswith("callback"))

    for update in result.changes(Change.AGENT_RINGING):
        leg, call = update.leg, update.call
        assert leg is not None and leg.agent is not None
        assert not leg.channel.endswith(";2")
        assert leg.uniqueid not in (call.call_id, call.customer_uniqueid)
        assert channel_base(leg.channel) != channel_base(call.customer_channel or "")


def test_inbound_answered_is_one_call_answered_by_1001_in_vip(traces_dir: Path) -> None:
    result = replay(traces_dir, "inbound_answered")

    [call] = result.ended()
    assert len(result.changes(Change.STARTED)) == 1
    assert call.outcome is Outcome.ANSWERED
    assert call.direction is Direction.INBOUND
    assert (call.agent, call.agents, call.queue) == ("1001", ["1001"], "vip")
    assert (call.caller_num, call.caller_name) == ("+15551230001", "Alice Smith")
    assert call.wait_time == 1.0  # AgentConnect HoldTime, not the wall clock (1.003 s)
    assert call.talk_time == pytest.approx(4.0, abs=0.2)
    assert call.hangup_cause == 16
    assert call.call_id == "1796302636.0"  # the Linkedid, not a leg's Uniqueid
    assert [u.change for u in result.updates] == [
        Change.STARTED, Change.CALLER_KNOWN, Change.QUEUED, Change.AGENT_RINGING,
        Change.AGENT_CONNECTED, Change.AGENT_DONE, Change.ENDED]


def test_inbound_abandoned_ends_abandoned_with_asterisks_hold_time(traces_dir: Path) -> None:
    result = replay(traces_dir, "inbound_abandoned")

    [call] = result.ended()
    assert call.outcome is Outcome.ABANDONED
    assert (call.queue, call.wait_time, call.agent) == ("general", 3.0, None)
    [leg] = call.legs
    assert (leg.agent, leg.answer_at) == ("1002", None)
    assert leg.state is LegState.CANCELLED
    [ring_end] = result.changes(Change.AGENT_RING_ENDED)
    assert ring_end.leg is leg


def test_the_repeated_dial_end_of_the_abandoned_trace_changes_nothing(traces_dir: Path) -> None:
    lines = [json.loads(x) for x in (traces_dir / "inbound_abandoned.ami.jsonl").open()]
    received = [x for x in lines if x["dir"] == "in" and x["kind"] != "banner"]
    result = replay(traces_dir, "inbound_abandoned")

    dial_ends = [i for i, x in enumerate(received) if x["name"] == "DialEnd"
                 and dict(x["headers"]).get("DialStatus") == "CANCEL"]
    assert len(dial_ends) == 2 and received[dial_ends[0]]["raw"] == received[dial_ends[1]]["raw"]
    assert len(result.per_event[dial_ends[0]]) == 1
    assert result.per_event[dial_ends[1]] == []


def test_inbound_without_agi_is_answered_by_1003_in_general(traces_dir: Path) -> None:
    result = replay(traces_dir, "inbound_no_agi")

    [call] = result.ended()
    assert (call.outcome, call.agent, call.queue) == (Outcome.ANSWERED, "1003", "general")
    assert call.caller_num == "+15551230003"
    assert call.route is None


def test_blind_transfer_keeps_one_call_and_the_customer(traces_dir: Path) -> None:
    result = replay(traces_dir, "blind_transfer")

    [call] = result.ended()
    assert len(result.changes(Change.STARTED)) == 1
    assert call.outcome is Outcome.ANSWERED
    assert (call.agents, call.agent) == (["1001", "1004"], "1004")
    assert call.queues == ["vip", "supervisor"]
    assert (call.caller_num, call.caller_name) == ("+15551230020", "Grace Transfer")
    assert call.talk_time == pytest.approx(10.0)  # AgentComplete TalkTime 2 + 8

    first, second = call.legs
    assert (first.agent, first.state) == ("1001", LegState.TRANSFERRED)
    assert (second.agent, second.state) == ("1004", LegState.COMPLETED)
    [transferred] = result.changes(Change.TRANSFERRED)
    assert transferred.leg is first
    assert call.transfers[0]["kind"] == "blind" and call.transfers[0]["to_agent"] == "1004"
    done = [u.leg for u in result.changes(Change.AGENT_DONE)]
    assert done == [first, second]
    rings = Counter(u.leg.uniqueid for u in result.changes(Change.AGENT_RINGING))
    assert sorted(rings.values()) == [1, 1] and len(rings) == 2


def test_burst_gives_twenty_answered_calls_and_one_ring_per_leg(traces_dir: Path) -> None:
    result = replay(traces_dir, "burst")

    ended = result.ended()
    assert len(ended) == 20 and len({c.call_id for c in ended}) == 20
    assert all(c.outcome is Outcome.ANSWERED for c in ended)
    assert all(c.caller_num and c.caller_num.startswith("+1555123") for c in ended)
    rings = Counter((u.call.call_id, u.leg.uniqueid) for u in result.changes(Change.AGENT_RINGING))
    assert max(rings.values()) == 1
    # every leg that rang and was not answered was reported closed, once
    rang = {key for key in rings}
    closed = Counter((u.call.call_id, u.leg.uniqueid)
                     for u in result.changes(Change.AGENT_RING_ENDED))
    answered = {(u.call.call_id, u.leg.uniqueid) for u in result.changes(Change.AGENT_CONNECTED)}
    assert set(closed) | answered == rang and max(closed.values()) == 1
    # the complaints queue rings 2001 (no answer) and 3001 (busy) before 1004
    complaints = [c for c in ended if c.queue == "complaints"]
    assert complaints
    for call in complaints:
        assert [(leg.agent, leg.state) for leg in call.legs][-1] == ("1004", LegState.COMPLETED)
        assert ("2001", LegState.NO_ANSWER) in [(leg.agent, leg.state) for leg in call.legs]
        assert ("3001", LegState.BUSY) in [(leg.agent, leg.state) for leg in call.legs]


def test_callback_answered_gives_outbound_calls_answered_by_1001(traces_dir: Path) -> None:
    result = replay(traces_dir, "callback_answered", mark_originates=True)

    calls = result.ended()
    assert [c.action_id for c in calls] == ["cb-ok-1", "cb-ok-2"]
    assert calls[1].call_id == "cti-cb-0002"  # the preset ChannelId
    for call in calls:
        assert call.direction is Direction.OUTBOUND
        assert (call.outcome, call.agent) == (Outcome.ANSWERED, "1001")
        # the customer is who we dialled, not our own outgoing caller id
        assert call.caller_num == call.dialed and call.caller_num.startswith("1555123")


def test_callback_failed_gives_failed_outbound_calls_and_no_junk(traces_dir: Path) -> None:
    result = replay(traces_dir, "callback_failed", mark_originates=True)

    calls = {c.action_id: c for c in result.ended()}
    # the bad technology created no channel and so no call; the others failed
    assert set(calls) == {"cb-busy-1", "cb-noanswer-1", "cb-nocontext-1", "cb-busy-sync-1"}
    for call in calls.values():
        assert (call.direction, call.outcome, call.agent) == (
            Direction.OUTBOUND, Outcome.FAILED, None)
    assert calls["cb-busy-1"].hangup_cause == 17
    assert calls["cb-noanswer-1"].hangup_cause == 19


def test_callback_failed_without_marks_still_creates_no_junk(traces_dir: Path) -> None:
    result = replay(traces_dir, "callback_failed")

    # only the calls whose channels existed; the callbacks context makes them outbound
    outbound = [c for c in result.ended() if c.direction is Direction.OUTBOUND]
    assert len(outbound) == 3 and all(c.outcome is Outcome.FAILED for c in result.ended())


def test_actions_live_call_hung_up_by_ami_ends_abandoned_in_overflow(traces_dir: Path) -> None:
    result = replay(traces_dir, "actions")

    [call] = result.ended()
    assert (call.caller_num, call.caller_name) == ("+15551230010", "Judy Live")
    assert (call.outcome, call.queue, call.wait_time) == (Outcome.ABANDONED, "overflow", 1.0)
    assert call.hangup_cause == 16
