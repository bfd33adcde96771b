"""The call tracker against the public cases (12, 14, 15) and its edge rules."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from cti.ami.protocol import Message, Parser
from cti.calls.agents import Agent, AgentDirectory
from cti.calls.model import CallState, CallUpdate, Change, Direction, LegState, Outcome, Route
from cti.calls.tracker import CallTracker, usable_caller_id, usable_caller_name
from cti.config import Settings

# Agents of the cases: FreePBX-style devices; 101 also has its Local queue member.
CASE_AGENTS = [
    Agent("101", "Agent One", ("PJSIP/101",), ("Agent One",)),
    Agent("102", "Agent Two", ("PJSIP/102",), ("Agent Two",)),
]


def case_events(cases_dir: Path, number: int) -> list[Message]:
    """The "Minimal replay input" block of a case, as parsed AMI messages."""
    [path] = cases_dir.glob(f"{number:02d}-*.md")
    block = path.read_text().split("## Minimal replay input", 1)[1].split("```")[1]
    wire = "".join(line.replace("\\r\\n", "\r\n") for line in block.splitlines()
                   if line.startswith("Event:"))
    return Parser(expect_banner=False).feed(wire.encode())


def events(text: str) -> list[Message]:
    """Hand-written events: one per paragraph, ``Key: value`` lines."""
    wire = "".join("\r\n".join(line.strip() for line in block.strip().splitlines()) + "\r\n\r\n"
                   for block in re.split(r"\n\s*\n", text.strip()))
    return Parser(expect_banner=False).feed(wire.encode())


def run(tracker: CallTracker, messages: list[Message], start: float = 100.0,
        step: float = 0.5) -> list[CallUpdate]:
    out: list[CallUpdate] = []
    for i, msg in enumerate(messages):
        out.extend(tracker.handle(msg, start + i * step))
    return out


def demo_tracker() -> CallTracker:
    settings = Settings()
    return CallTracker(AgentDirectory.from_settings(settings.agents),
                       settings.calls.outbound_contexts)


def trace_messages(traces_dir: Path, name: str) -> list[tuple[float, Message]]:
    lines = [json.loads(x) for x in (traces_dir / f"{name}.ami.jsonl").open()]
    received = [x for x in lines if x["dir"] == "in" and x["kind"] != "banner"]
    messages = Parser().feed((traces_dir / f"{name}.ami.raw").read_bytes())
    return [(line["t"], msg) for line, msg in zip(received, messages, strict=True)]


# --- the agent directory ----------------------------------------------------------

@pytest.mark.parametrize("channel", [
    "PJSIP/1001-00000006", "Local/1001@agents-00000001;1", "Local/1001@agents-0000000a;2",
    "local/1001@AGENTS-00000001;1", "PJSIP/1001",
])
def test_directory_resolves_channels_of_an_agent(channel: str) -> None:
    directory = AgentDirectory.from_settings(Settings().agents)

    assert directory.resolve(channel=channel) == "1001"


def test_directory_resolves_interface_and_member_name_and_not_strangers() -> None:
    directory = AgentDirectory.from_settings(Settings().agents)

    assert directory.resolve(interface="Local/1004@agents/n") == "1004"
    assert directory.resolve(member_name="supervisor dave") == "1004"
    assert directory.resolve(interface="Local/9999@agents/n", member_name="Agent Bob") == "1002"
    assert directory.resolve(channel="PJSIP/trunk-00000001") is None
    assert directory.resolve(channel="Local/5550100@from-pstn-00000000;2") is None
    assert directory.resolve() is None
    assert [a["id"] for a in directory.agents_list()] == [
        "1001", "1002", "1003", "1004", "2001", "3001"]
    assert "token" not in directory.agents_list()[0]


def test_directory_refuses_an_interface_listed_for_two_agents() -> None:
    with pytest.raises(ValueError, match=r"(?i)interface 'pjsip/7'.* agents '1' and '2'"):
        AgentDirectory([Agent("1", interfaces=("PJSIP/7",)), Agent("2", interfaces=("pjsip/7",))])


# --- case 12: Linkedid, Local halves, ring-all --------------------------------------

@pytest.mark.parametrize("with_local_member", [False, True],
                         ids=["device-only", "local-member-known"])
def test_case12_ring_all_pops_each_agent_once_and_withdraws_the_loser(
        cases_dir: Path, with_local_member: bool) -> None:
    agents = list(CASE_AGENTS)
    if with_local_member:
        agents[0] = Agent("101", "Agent One", ("PJSIP/101", "Local/101@from-queue/n"))
    tracker = CallTracker(AgentDirectory(agents))

    updates = run(tracker, case_events(cases_dir, 12))

    assert {u.call.call_id for u in updates} == {"1700000000.1"}
    rings = [u for u in updates if u.change is Change.AGENT_RINGING]
    assert sorted(u.leg.agent for u in rings) == ["101", "102"]
    assert all(";" not in u.leg.channel or u.leg.channel.endswith(";1") for u in rings)
    [connected] = [u for u in updates if u.change is Change.AGENT_CONNECTED]
    assert connected.leg.agent == "101"
    [withdrawn] = [u for u in updates if u.change is Change.AGENT_RING_ENDED]
    assert (withdrawn.leg.agent, withdrawn.leg.state) == ("102", LegState.ANSWERED_ELSEWHERE)
    call = tracker.get("1700000000.1")
    assert call is not None and len(call.legs) == 2
    assert (call.caller_num, call.caller_name) == ("5550000001", "ACME Corp")
    assert call.customer_channel == "PJSIP/trunk-00000001"
    assert (call.state, call.agent) == (CallState.CONNECTED, "101")
    assert [u.change for u in updates].count(Change.CALLER_KNOWN) == 1


def test_case12_dial_end_twice_is_idempotent(cases_dir: Path) -> None:
    tracker = CallTracker(AgentDirectory(CASE_AGENTS))
    messages = case_events(cases_dir, 12)
    run(tracker, messages)
    call = tracker.get("1700000000.1")
    assert call is not None
    before = call.as_dict()

    again = [tracker.handle(msg, 200.0) for msg in messages if msg.name == "DialEnd"]

    assert again == [[], []]
    assert call.as_dict() == before


def _queue_member_event(name: str, member: str, uid: str, extra: str = "") -> str:
    agent = {"1001": "Agent Alice", "1002": "Agent Bob"}[member]
    return f"""
        Event: {name}
        Channel: Local/5550100@from-pstn-00000000;2
        Uniqueid: 9.1
        Linkedid: 9.0
        DestChannel: Local/{member}@agents-0000000{uid[-1]};1
        DestUniqueid: {uid}
        DestLinkedid: 9.0
        Queue: sales
        Interface: Local/{member}@agents/n
        MemberName: {agent}
        {extra}
        """


def test_ring_all_queue_member_cancelled_before_agent_connect_was_answered_elsewhere() -> None:
    # app_queue: the winner's DialEnd ANSWER, then CANCEL for the others, then AgentConnect
    tracker = demo_tracker()
    text = """
        Event: Newchannel
        Channel: Local/5550100@from-pstn-00000000;1
        CallerIDNum: +15551230099
        CallerIDName: Ring All
        Context: from-pstn
        Exten: 5550100
        Uniqueid: 9.0
        Linkedid: 9.0

        Event: QueueCallerJoin
        Channel: Local/5550100@from-pstn-00000000;2
        Uniqueid: 9.1
        Linkedid: 9.0
        Queue: sales
        """ + "".join([
        _queue_member_event("AgentCalled", "1001", "9.2"),
        _queue_member_event("DialBegin", "1001", "9.2"),
        _queue_member_event("AgentCalled", "1002", "9.4"),
        _queue_member_event("DialBegin", "1002", "9.4"),
        _queue_member_event("DialEnd", "1001", "9.2", "DialStatus: ANSWER"),
        _queue_member_event("DialEnd", "1002", "9.4", "DialStatus: CANCEL"),
        _queue_member_event("AgentConnect", "1001", "9.2", "HoldTime: 2"),
    ])

    updates = run(tracker, events(text))

    assert [(u.change, u.leg.agent if u.leg else None) for u in updates] == [
        (Change.STARTED, None), (Change.CALLER_KNOWN, None), (Change.QUEUED, None),
        (Change.AGENT_RINGING, "1001"), (Change.AGENT_RINGING, "1002"),
        (Change.AGENT_RING_ENDED, "1002"), (Change.AGENT_CONNECTED, "1001")]
    assert updates[5].leg.state is LegState.ANSWERED_ELSEWHERE
    call = tracker.get("9.0")
    assert (call.agent, call.wait_time, call.queue) == ("1001", 2.0, "sales")


# --- case 14: transfers ------------------------------------------------------------

def test_case14_blind_transfer_moves_the_pop_to_102_with_the_customer(cases_dir: Path) -> None:
    tracker = CallTracker(AgentDirectory(CASE_AGENTS))

    updates = run(tracker, case_events(cases_dir, 14))

    call = tracker.get("1700000000.1")
    assert call is not None
    assert call.customer_uniqueid == "1700000000.1"
    assert (call.caller_num, call.caller_name) == ("5550000001", "ACME Corp")
    assert (call.agent, call.agents, call.state) == ("102", ["101", "102"], CallState.CONNECTED)
    changes = [(u.change, u.leg.agent if u.leg else None) for u in updates]
    assert changes == [
        (Change.STARTED, None), (Change.CALLER_KNOWN, None),
        (Change.AGENT_CONNECTED, "101"),  # tracking started with the bridge: no ring seen
        (Change.TRANSFERRED, "101"), (Change.AGENT_DONE, "101"),
        (Change.AGENT_RINGING, "102"), (Change.AGENT_CONNECTED, "102"),
    ]
    assert call.transfers[0]["kind"] == "blind"
    assert call.transfers[0]["target"] == "102@from-internal"
    assert call.transfers[0]["to_agent"] == "102"


ATTENDED_SETUP = """
Event: Newchannel
Channel: PJSIP/trunk-00000001
CallerIDNum: 5550000001
CallerIDName: ACME Corp
Context: from-trunk
Exten: 4000
Uniqueid: 1700000000.1
Linkedid: 1700000000.1

Event: Newchannel
Channel: PJSIP/101-00000002
CallerIDNum: 101
CallerIDName: Agent One
Uniqueid: 1700000000.2
Linkedid: 1700000000.1

Event: DialBegin
Channel: PJSIP/trunk-00000001
Uniqueid: 1700000000.1
Linkedid: 1700000000.1
DestChannel: PJSIP/101-00000002
DestUniqueid: 1700000000.2
DestLinkedid: 1700000000.1

Event: DialEnd
Channel: PJSIP/trunk-00000001
Uniqueid: 1700000000.1
Linkedid: 1700000000.1
DestChannel: PJSIP/101-00000002
DestUniqueid: 1700000000.2
DialStatus: ANSWER

Event: BridgeEnter
BridgeUniqueid: b-1
Channel: PJSIP/trunk-00000001
Uniqueid: 1700000000.1
Linkedid: 1700000000.1

Event: BridgeEnter
BridgeUniqueid: b-1
Channel: PJSIP/101-00000002
Uniqueid: 1700000000.2
Linkedid: 1700000000.1

Event: Newchannel
Channel: PJSIP/101-00000004
CallerIDNum: 101
CallerIDName: Agent One
Context: from-internal
Exten: 102
Uniqueid: 1700000000.5
Linkedid: 1700000000.5

Event: Newchannel
Channel: PJSIP/102-00000005
CallerIDNum: 102
ConnectedLineNum: 101
Uniqueid: 1700000000.6
Linkedid: 1700000000.5

Event: DialBegin
Channel: PJSIP/101-00000004
Uniqueid: 1700000000.5
Linkedid: 1700000000.5
DestChannel: PJSIP/102-00000005
DestUniqueid: 1700000000.6
DestLinkedid: 1700000000.5

Event: DialEnd
Channel: PJSIP/101-00000004
Uniqueid: 1700000000.5
Linkedid: 1700000000.5
DestChannel: PJSIP/102-00000005
DestUniqueid: 1700000000.6
DialStatus: ANSWER

Event: BridgeEnter
BridgeUniqueid: b-2
Channel: PJSIP/101-00000004
Uniqueid: 1700000000.5
Linkedid: 1700000000.5

Event: BridgeEnter
BridgeUniqueid: b-2
Channel: PJSIP/102-00000005
Uniqueid: 1700000000.6
Linkedid: 1700000000.5
"""

# Orig/Second follow the chronological order of the two calls, so either the
# customer is the Transferee (customer call first) or the TransferTarget.
ATTENDED_CUSTOMER_CALL_FIRST = """
Event: AttendedTransfer
Result: Success
OrigTransfererChannel: PJSIP/101-00000002
OrigTransfererUniqueid: 1700000000.2
OrigBridgeUniqueid: b-1
SecondTransfererChannel: PJSIP/101-00000004
SecondTransfererUniqueid: 1700000000.5
SecondBridgeUniqueid: b-2
TransfereeChannel: PJSIP/trunk-00000001
TransfereeUniqueid: 1700000000.1
TransfereeLinkedid: 1700000000.1
TransferTargetChannel: PJSIP/102-00000005
TransferTargetUniqueid: 1700000000.6
TransferTargetLinkedid: 1700000000.5
DestType: Bridge
DestBridgeUniqueid: b-1
IsExternal: No

Event: BridgeLeave
BridgeUniqueid: b-1
Channel: PJSIP/101-00000002
Uniqueid: 1700000000.2
Linkedid: 1700000000.1

Event: BridgeEnter
BridgeUniqueid: b-1
Channel: PJSIP/102-00000005
CallerIDNum: 102
ConnectedLineNum: 101
Uniqueid: 1700000000.6
Linkedid: 1700000000.5
"""

ATTENDED_CONSULT_CALL_FIRST = """
Event: AttendedTransfer
Result: Success
OrigTransfererChannel: PJSIP/101-00000004
OrigTransfererUniqueid: 1700000000.5
OrigBridgeUniqueid: b-2
SecondTransfererChannel: PJSIP/101-00000002
SecondTransfererUniqueid: 1700000000.2
SecondBridgeUniqueid: b-1
TransfereeChannel: PJSIP/102-00000005
TransfereeUniqueid: 1700000000.6
TransfereeLinkedid: 1700000000.5
TransferTargetChannel: PJSIP/trunk-00000001
TransferTargetUniqueid: 1700000000.1
TransferTargetLinkedid: 1700000000.1
DestType: Link
IsExternal: No

Event: BridgeLeave
BridgeUniqueid: b-2
Channel: PJSIP/101-00000004
Uniqueid: 1700000000.5
Linkedid: 1700000000.5

Event: BridgeEnter
BridgeUniqueid: b-2
Channel: PJSIP/trunk-00000001
CallerIDNum: 5550000001
Uniqueid: 1700000000.1
Linkedid: 1700000000.5
"""

ATTENDED_TEARDOWN = """
Event: Hangup
Channel: PJSIP/101-00000002
Uniqueid: 1700000000.2
Linkedid: 1700000000.1
Cause: 16

Event: Hangup
Channel: PJSIP/101-00000004
Uniqueid: 1700000000.5
Linkedid: 1700000000.5
Cause: 16

Event: Hangup
Channel: PJSIP/102-00000005
Uniqueid: 1700000000.6
Linkedid: 1700000000.5
Cause: 16

Event: Hangup
Channel: PJSIP/trunk-00000001
Uniqueid: 1700000000.1
Linkedid: 1700000000.5
Cause: 16
"""


@pytest.mark.parametrize("transfer", [ATTENDED_CUSTOMER_CALL_FIRST, ATTENDED_CONSULT_CALL_FIRST],
                         ids=["customer-call-first", "consult-call-first"])
def test_case14_attended_transfer_follows_the_customer_by_channel_identity(
        transfer: str) -> None:
    tracker = CallTracker(AgentDirectory(CASE_AGENTS))
    setup = run(tracker, events(ATTENDED_SETUP))
    # the consult call is between two agents: internal, never popped
    assert {u.call.call_id for u in setup} == {"1700000000.1"}
    assert tracker.get("1700000000.5") is None

    moved = run(tracker, events(transfer), start=200.0)
    ended = run(tracker, events(ATTENDED_TEARDOWN), start=300.0)

    assert [(u.change, u.leg.agent if u.leg else None) for u in moved] == [
        (Change.TRANSFERRED, "101"), (Change.AGENT_DONE, "101"),
        (Change.AGENT_CONNECTED, "102")]
    assert {u.call.call_id for u in moved + ended} == {"1700000000.1"}
    call = ended[-1].call
    assert ended[-1].change is Change.ENDED
    assert (call.outcome, call.agent, call.agents) == (Outcome.ANSWERED, "102", ["101", "102"])
    assert (call.caller_num, call.caller_name) == ("5550000001", "ACME Corp")
    assert call.transfers[0]["kind"] == "attended"
    assert call.transfers[0]["to_agent"] == "102"
    assert [(leg.agent, leg.state) for leg in call.legs] == [
        ("101", LegState.TRANSFERRED), ("102", LegState.COMPLETED)]
    assert tracker.live_calls() == []


def test_agent_complete_without_channel_headers_after_a_redirect_is_handled(
        traces_dir: Path) -> None:
    tracker = demo_tracker()
    trace = trace_messages(traces_dir, "inbound_answered")
    for t, msg in trace:
        if msg.name == "AgentComplete":
            break
        tracker.handle(msg, t)
    [call] = tracker.live_calls()
    # what Asterisk sends when the caller leg was redirected away: no Channel/Dest headers
    bare = events("""
        Event: AgentComplete
        Queue: vip
        Interface: Local/1001@agents/n
        MemberName: Agent Alice
        HoldTime: 1
        TalkTime: 7
        Reason: caller
        """)[0]

    updates = tracker.handle(bare, 6.0)

    assert [(u.change, u.leg.agent) for u in updates] == [(Change.AGENT_DONE, "1001")]
    assert call.legs[0].state is LegState.COMPLETED
    assert tracker.handle(bare, 6.5) == []


# --- case 15: caller id empty, anonymous, late -----------------------------------------

@pytest.mark.parametrize("raw", ["", "unknown", "Unknown", "<unknown>", "anonymous", "Anonymous",
                                 "restricted", "private", "unavailable", "0", "-1", "+", "   ",
                                 "INTERNATIONAL", None, "12"])
def test_usable_caller_id_rejects_every_spelling_of_no_number(raw: str | None) -> None:
    assert usable_caller_id(raw) is None


@pytest.mark.parametrize("raw", ["5550000001", "+15551230001", " 555 000 0001 ", "(555) 123-4567"])
def test_usable_caller_id_keeps_real_numbers(raw: str) -> None:
    assert usable_caller_id(raw) == raw.strip()


def test_usable_caller_name_drops_placeholders() -> None:
    assert [usable_caller_name(n) for n in ("Anonymous", "<unknown>", "", " Alice ")] == [
        None, None, None, "Alice"]


def test_case15_late_caller_id_is_known_once_and_withheld_calls_never(cases_dir: Path) -> None:
    tracker = CallTracker(AgentDirectory(CASE_AGENTS))
    messages = case_events(cases_dir, 15)

    first = tracker.handle(messages[0], 1.0)          # DAHDI Newchannel, empty caller id
    second = tracker.handle(messages[1], 3.0)         # NewCallerid 2 s later
    rest = run(tracker, messages[2:], start=4.0)

    assert [u.change for u in first] == [Change.STARTED]
    assert [u.change for u in second] == [Change.CALLER_KNOWN]
    assert second[0].call.call_id == "1700000000.84"
    assert second[0].call.caller_num == "5550000001"
    assert [u.change for u in rest] == [Change.STARTED] * 3
    for call_id in ("1700000000.90", "1700000000.91", "1700000000.92"):
        call = tracker.get(call_id)
        assert call is not None and call.caller_num is None
    assert tracker.get("1700000000.90").caller_name is None      # "Anonymous"
    assert tracker.get("1700000000.92").caller_name == "INTERNATIONAL"


def test_a_later_unknown_caller_id_does_not_withdraw_a_known_number(cases_dir: Path) -> None:
    tracker = CallTracker(AgentDirectory(CASE_AGENTS))
    messages = case_events(cases_dir, 15)
    run(tracker, messages[:2])
    blank = events("""
        Event: NewCallerid
        Channel: DAHDI/33-1
        CallerIDNum: <unknown>
        CallerIDName:
        Uniqueid: 1700000000.84
        Linkedid: 1700000000.84
        """)

    assert run(tracker, blank) == []
    assert tracker.get("1700000000.84").caller_num == "5550000001"


# --- robustness -----------------------------------------------------------------------

class _Untouchable(Message):
    """A message whose headers must not be read."""

    __slots__ = ()

    def get(self, key: str, default: str | None = None) -> str | None:
        raise AssertionError(f"header {key!r} of a {self.name} event was read")

    @property
    def pairs(self) -> list[tuple[str, str]]:
        raise AssertionError(f"headers of a {self.name} event were split")


@pytest.mark.parametrize("name", ["CEL", "VarSet", "Newexten", "DeviceStateChange", "Cdr",
                                  "RTCPSent", "SomethingNew"])
def test_uninteresting_events_are_dropped_before_any_header_is_read(name: str) -> None:
    tracker = demo_tracker()
    msg = _Untouchable.from_text(f"Event: {name}\r\nUniqueid: 1.1\r\nLinkedid: 1.1\r\n")

    assert name not in tracker.interesting
    assert tracker.handle(msg, 1.0) == []


@pytest.mark.parametrize("text", [
    "Event: Newchannel\nChannel: PJSIP/trunk-00000001\nUniqueid: 1.1",
    "Event: Newchannel\nChannel: PJSIP/trunk-00000001\nLinkedid: 1.1",
    "Event: Newchannel\nUniqueid: 1.1\nLinkedid: 1.1",
    "Event: DialBegin\nChannel: PJSIP/trunk-00000001\nUniqueid: 1.1\nLinkedid: 1.1",
    "Event: DialEnd\nDialStatus: ANSWER",
    "Event: Hangup\nChannel: PJSIP/trunk-00000001",
    "Event: AgentComplete\nQueue: vip",
    "Event: AgentConnect\nQueue: vip\nHoldTime: soon",
    "Event: QueueCallerJoin\nQueue: vip",
    "Event: BridgeEnter\nChannel: PJSIP/trunk-00000001",
    "Event: BlindTransfer\nResult: Success",
    "Event: AttendedTransfer\nResult: Success",
    "Event: OriginateResponse\nResponse: Failure\nUniqueid: <null>",
])
def test_events_missing_their_ids_are_ignored(text: str) -> None:
    tracker = demo_tracker()
    tracker.mark_originate("x")

    assert tracker.handle(Message.from_text(text.replace("\n", "\r\n")), 1.0) == []
    assert tracker.live_calls() == []


def test_a_hangup_for_an_ended_call_does_not_resurrect_it(traces_dir: Path) -> None:
    tracker = demo_tracker()
    trace = trace_messages(traces_dir, "inbound_answered")
    for t, msg in trace:
        tracker.handle(msg, t)
    assert tracker.live_calls() == []
    hangups = [msg for _, msg in trace if msg.name in ("Hangup", "NewCallerid", "BridgeEnter")]

    assert [tracker.handle(msg, 9.0) for msg in hangups] == [[]] * len(hangups)
    assert tracker.live_calls() == []


# --- routes -----------------------------------------------------------------------------

ROUTE = Route(queue="vip", priority=5, segment="gold", customer_id="CUST-1001",
              reason="segment gold -> vip")


def test_a_route_for_a_channel_not_seen_yet_is_applied_when_it_appears(
        traces_dir: Path) -> None:
    tracker = demo_tracker()
    # agi_uniqueid of the recorded FastAGI session: the ;2 leg, not the Linkedid
    [session] = [json.loads(x) for x in (traces_dir / "inbound_answered.agi.jsonl").open()]
    agi_uniqueid = dict(session["env"])["agi_uniqueid"]

    assert tracker.attach_route(agi_uniqueid, ROUTE, 0.0) == []
    updates = [(t, u) for t, msg in trace_messages(traces_dir, "inbound_answered")
               for u in tracker.handle(msg, t)]

    routed = [u for _, u in updates if u.change is Change.ROUTED]
    assert len(routed) == 1
    assert routed[0].call.call_id == "1796302636.0" != agi_uniqueid
    assert routed[0].call.route is ROUTE
    assert updates[-1][1].call.as_dict()["route"]["queue"] == "vip"


def test_a_route_for_a_known_channel_is_applied_at_once(traces_dir: Path) -> None:
    tracker = demo_tracker()
    for t, msg in trace_messages(traces_dir, "inbound_answered"):
        if msg.name == "QueueCallerJoin":
            break
        tracker.handle(msg, t)
    [call] = tracker.live_calls()
    assert call.state is CallState.ROUTING  # AGIExecStart on the customer leg

    updates = tracker.attach_route("1796302636.1", ROUTE, 0.6)

    assert [(u.change, u.call.call_id) for u in updates] == [(Change.ROUTED, call.call_id)]
    assert call.route is ROUTE


# --- rebuild after a reconnect ------------------------------------------------------------

def csc_items(traces_dir: Path) -> list[Message]:
    return [msg for _, msg in trace_messages(traces_dir, "actions")
            if msg.name == "CoreShowChannel" and msg.action_id == "csc-1"]


def test_rebuild_from_core_show_channels_recreates_the_queued_call(traces_dir: Path) -> None:
    tracker = demo_tracker()
    items = csc_items(traces_dir)
    assert len(items) == 2

    updates = tracker.rebuild(items, 1.012)

    assert [u.change for u in updates] == [Change.STARTED, Change.CALLER_KNOWN, Change.QUEUED]
    [call] = tracker.live_calls()
    assert call.call_id == "1796302794.166"
    assert (call.caller_num, call.caller_name) == ("+15551230010", "Judy Live")
    assert (call.state, call.queue) == (CallState.QUEUED, "overflow")
    assert call.customer_channel == "Local/5550100@from-pstn-00000053;2"
    assert call.started_at == pytest.approx(0.012)  # Duration 00:00:01
    # a second snapshot with the same channels changes nothing
    assert tracker.rebuild(items, 1.5) == []


def test_rebuilt_call_then_follows_live_events_to_abandoned(traces_dir: Path) -> None:
    tracker = demo_tracker()
    tracker.rebuild(csc_items(traces_dir), 1.012)

    updates = [u for t, msg in trace_messages(traces_dir, "actions") if t > 1.013
               for u in tracker.handle(msg, t)]

    assert [u.change for u in updates] == [Change.ENDED]
    assert updates[0].call.outcome is Outcome.ABANDONED


def test_rebuild_ends_calls_whose_channels_are_gone(traces_dir: Path) -> None:
    tracker = demo_tracker()
    for t, msg in trace_messages(traces_dir, "inbound_answered"):
        if msg.name == "AgentComplete":
            break
        tracker.handle(msg, t)
    [call] = tracker.live_calls()

    updates = tracker.rebuild([], 9.0)  # the empty snapshot: nothing is up any more

    assert [u.change for u in updates] == [Change.AGENT_DONE, Change.ENDED]
    assert (call.outcome, call.ended_at) == (Outcome.ANSWERED, 9.0)
    assert tracker.live_calls() == []


def test_rebuild_restores_a_connected_agent_leg_for_the_pop_snapshot() -> None:
    tracker = demo_tracker()
    items = events("""
        Event: CoreShowChannel
        Channel: Local/5550100@from-pstn-00000000;2
        CallerIDNum: +15551230001
        CallerIDName: Alice Smith
        Uniqueid: 1796302636.1
        Linkedid: 1796302636.0
        Application: Queue
        ApplicationData: vip,t,,,300
        Duration: 00:00:03
        BridgeId: 14fab0ba

        Event: CoreShowChannel
        Channel: Local/1001@agents-00000001;1
        CallerIDNum: +15551230001
        Uniqueid: 1796302636.2
        Linkedid: 1796302636.0
        Application: AppQueue
        ApplicationData: (Outgoing Line)
        Duration: 00:00:02
        BridgeId: 14fab0ba

        Event: CoreShowChannel
        Channel: Local/1001@agents-00000001;2
        CallerIDNum: +15551230001
        Uniqueid: 1796302636.3
        Linkedid: 1796302636.0
        Application: Wait
        ApplicationData: 3
        Duration: 00:00:02
        BridgeId:
        """)

    updates = tracker.rebuild(items, 50.0)

    assert Change.AGENT_CONNECTED in [u.change for u in updates]
    [(call, leg)] = tracker.calls_for_agent("1001")
    assert (call.call_id, call.caller_num, call.agent) == ("1796302636.0", "+15551230001", "1001")
    assert (leg.state, leg.channel) == (LegState.CONNECTED, "Local/1001@agents-00000001;1")
    assert len(call.legs) == 1


# --- outbound ----------------------------------------------------------------------------

def test_an_originate_that_rang_the_agent_first_becomes_a_visible_outbound_call() -> None:
    tracker = CallTracker(AgentDirectory(CASE_AGENTS))
    tracker.mark_originate("cb-1")
    before = run(tracker, events("""
        Event: Newchannel
        Channel: PJSIP/101-00000012
        CallerIDNum: 101
        Context: from-internal
        Exten: 5550000001
        Uniqueid: 1700000000.12
        Linkedid: 1700000000.12
        """))
    assert before == [] and tracker.live_calls() == []  # an agent's own call, so far

    updates = run(tracker, events("""
        Event: OriginateResponse
        ActionID: cb-1
        Response: Success
        Channel: PJSIP/101-00000012
        Context: from-internal
        Exten: 5550000001
        Reason: 4
        Uniqueid: 1700000000.12

        Event: DialBegin
        Channel: PJSIP/101-00000012
        Uniqueid: 1700000000.12
        Linkedid: 1700000000.12
        DestChannel: PJSIP/trunk-00000013
        DestUniqueid: 1700000000.13
        DestLinkedid: 1700000000.12

        Event: DialEnd
        Channel: PJSIP/101-00000012
        Uniqueid: 1700000000.12
        Linkedid: 1700000000.12
        DestChannel: PJSIP/trunk-00000013
        DestUniqueid: 1700000000.13
        DialStatus: ANSWER

        Event: Hangup
        Channel: PJSIP/trunk-00000013
        Uniqueid: 1700000000.13
        Linkedid: 1700000000.12
        Cause: 16

        Event: Hangup
        Channel: PJSIP/101-00000012
        Uniqueid: 1700000000.12
        Linkedid: 1700000000.12
        Cause: 16
        """))

    assert [u.change for u in updates] == [
        Change.STARTED, Change.CALLER_KNOWN, Change.AGENT_CONNECTED, Change.AGENT_DONE,
        Change.ENDED]
    call = updates[-1].call
    assert (call.direction, call.action_id, call.outcome) == (
        Direction.OUTBOUND, "cb-1", Outcome.ANSWERED)
    assert (call.caller_num, call.agent) == ("5550000001", "101")
    assert call.customer_channel == "PJSIP/trunk-00000013"


def test_an_unmarked_originate_response_changes_nothing(traces_dir: Path) -> None:
    tracker = demo_tracker()
    responses = [msg for _, msg in trace_messages(traces_dir, "callback_failed")
                 if msg.name == "OriginateResponse"]

    assert [tracker.handle(msg, 1.0) for msg in responses] == [[]] * len(responses)


def test_one_ringing_pop_per_leg_even_when_dial_begin_comes_first(traces_dir: Path) -> None:
    # Some Asterisk versions send DialBegin before AgentCalled: still one leg, one ring.
    trace = trace_messages(traces_dir, "inbound_answered")
    order = [msg for _, msg in trace]
    called = next(i for i, m in enumerate(order) if m.name == "AgentCalled")
    assert order[called + 1].name == "DialBegin"
    order[called], order[called + 1] = order[called + 1], order[called]
    tracker = demo_tracker()

    updates = [u for i, msg in enumerate(order) for u in tracker.handle(msg, trace[i][0])]

    rings = [u for u in updates if u.change is Change.AGENT_RINGING]
    assert len(rings) == 1
    assert (rings[0].leg.queue, rings[0].leg.member_name) == ("vip", "Agent Alice")
    assert Counter(u.change for u in updates)[Change.AGENT_CONNECTED] == 1


# --- outcomes without the events that usually decide them ------------------------------------

def test_agent_complete_reason_transfer_alone_marks_the_transfer(traces_dir: Path) -> None:
    tracker = demo_tracker()
    trace = [(t, m) for t, m in trace_messages(traces_dir, "blind_transfer")
             if m.name != "BlindTransfer"]

    updates = [u for t, msg in trace for u in tracker.handle(msg, t)]

    [transferred] = [u for u in updates if u.change is Change.TRANSFERRED]
    assert (transferred.leg.agent, transferred.leg.state) == ("1001", LegState.TRANSFERRED)
    call = updates[-1].call
    assert (call.outcome, call.agents) == (Outcome.ANSWERED, ["1001", "1004"])
    assert call.transfers[0]["kind"] == "transfer"


def test_caller_hanging_up_in_the_queue_is_abandoned_even_without_queue_caller_abandon(
        traces_dir: Path) -> None:
    tracker = demo_tracker()
    trace = [(t, m) for t, m in trace_messages(traces_dir, "inbound_abandoned")
             if m.name != "QueueCallerAbandon"]

    updates = [u for t, msg in trace for u in tracker.handle(msg, t)]

    call = updates[-1].call
    assert (updates[-1].change, call.outcome) == (Change.ENDED, Outcome.ABANDONED)
    assert call.wait_time == pytest.approx(4.009 - 0.513, abs=0.01)  # wall clock this time
    assert call.legs[0].state is LegState.CANCELLED


QUEUE_TIMEOUT = """
Event: Newchannel
Channel: PJSIP/trunk-00000001
CallerIDNum: 5550000001
Context: from-trunk
Exten: 4000
Uniqueid: 7.1
Linkedid: 7.1

Event: QueueCallerJoin
Channel: PJSIP/trunk-00000001
Uniqueid: 7.1
Linkedid: 7.1
Queue: overflow

Event: QueueCallerLeave
Channel: PJSIP/trunk-00000001
Uniqueid: 7.1
Linkedid: 7.1
Queue: overflow

Event: Hangup
Channel: PJSIP/trunk-00000001
Uniqueid: 7.1
Linkedid: 7.1
Cause: 16
"""


def test_leaving_the_queue_unanswered_then_hanging_up_is_no_agent() -> None:
    tracker = demo_tracker()

    updates = run(tracker, events(QUEUE_TIMEOUT), step=10.0)

    call = updates[-1].call
    assert (call.outcome, call.queue, call.hangup_cause) == (Outcome.NO_AGENT, "overflow", 16)
    assert call.wait_time == 20.0


def test_a_call_that_never_queued_or_rang_is_failed() -> None:
    tracker = demo_tracker()
    messages = [m for m in events(QUEUE_TIMEOUT) if not m.name.startswith("Queue")]

    updates = run(tracker, messages)

    assert updates[-1].call.outcome is Outcome.FAILED
    assert updates[-1].call.wait_time is None
