"""The PBX simulator against the real Asterisk 22 recordings.

A simulated call must tell a client the same story as the recorded call: the
same call events in the same order, on the same kind of channels, with the
same queue/member headers and Linkedid relations. CEL, VarSet, Newexten,
DeviceStateChange, Cdr and QueueMemberStatus are noise for that comparison
(they are present, but their exact interleaving is not a contract).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from pathlib import Path

import pytest

from cti.ami.protocol import Message, Parser
from cti.sim.events import (
    SCENARIOS,
    Agent,
    CallParams,
    Ids,
    Originate,
    assign_agents,
    build_call,
)
from cti.sim.pbx import PbxSimulator

NOISE = {"CEL", "VarSet", "Newexten", "DeviceStateChange", "Cdr", "QueueMemberStatus"}
CHANNEL = re.compile(r"^Local/[^@;]+@[\w-]+-[0-9a-f]{8};[12]$")
UNIQUEID = re.compile(r"^\d+\.\d+$")

# scenario -> (trace, Linkedid of the call in it, the Originate's ActionID)
RECORDED = {
    "inbound_answered": ("inbound_answered", "1796302636.0", "in-answered-1"),
    "inbound_abandoned": ("inbound_abandoned", "1796302643.4", "in-abandon-1"),
    "inbound_no_agi": ("inbound_no_agi", "1796302656.10", "in-noagi-1"),
    "blind_transfer": ("blind_transfer", "1796302700.42", "in-bx-1"),
    "ring_no_answer": ("burst", "1796302757.72", "burst-01"),
}


# --- helpers ---------------------------------------------------------------------


def trace_events(traces_dir: Path, trace: str) -> list[Message]:
    """The recorded incoming events, parsed from the raw bytes."""
    raw = (traces_dir / f"{trace}.ami.raw").read_bytes()
    return [m for m in Parser().feed(raw) if m.name and m.kind.name == "EVENT"]


def of_call(events: list[Message], linkedid: str) -> list[Message]:
    """The call-relevant events of one call (a trace may interleave many)."""
    bridges = {m.get("BridgeUniqueid") for m in events
               if m.name == "BridgeEnter" and m.get("Linkedid") == linkedid}
    out = []
    for m in events:
        if m.name in NOISE or m.action_id is not None and m.name != "OriginateResponse":
            continue   # noise, or an answer to an action (CoreShowChannel ...)
        linked = any(k.lower().endswith("linkedid") and v == linkedid for k, v in m.pairs)
        if linked or (m.name == "OriginateResponse" and m.get("Uniqueid") == linkedid) \
                or (m.name.startswith("Bridge") and m.get("BridgeUniqueid") in bridges):
            out.append(m)
    return out


def signature(events: list[Message], linkedid: str) -> list[tuple]:
    """Event names plus the headers a call tracker relies on, channels as roles."""
    roles: dict[str, str] = {}
    counters: dict[str, int] = {}

    def role(chan: str | None) -> str | None:
        if not chan or not CHANNEL.match(chan):
            return chan
        pair, half = chan[:-2], chan[-1]
        context = pair.split("@")[1].rsplit("-", 1)[0]
        if pair not in roles:
            roles[pair] = f"{context}#{counters.setdefault(context, 0)}"
            counters[context] += 1
        return f"{roles[pair]};{half}"

    sig = []
    for m in events:
        sig.append((m.name, role(m.get("Channel")), role(m.get("DestChannel")),
                    m.get("ChannelStateDesc"), m.get("Queue"), m.get("Interface"),
                    m.get("MemberName"), m.get("DialStatus"), m.get("Cause"),
                    m.get("Linkedid") == linkedid if "Linkedid" in m else None,
                    m.get("DestLinkedid") == linkedid if "DestLinkedid" in m else None))
    return sig


def recorded_agi_commands(traces_dir: Path, trace: str, uniqueid: str) -> list[str]:
    path = traces_dir / f"{trace}.agi.jsonl"
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if dict(row["env"]).get("agi_uniqueid") == uniqueid:
            return [e["line"] for e in row["exchanges"] if e["dir"] == "out"]
    raise AssertionError(f"no FastAGI session for {uniqueid} in {path}")


def recorded_call(traces_dir: Path, scenario: str):
    trace, linkedid, action_id = RECORDED[scenario]
    events = of_call(trace_events(traces_dir, trace), linkedid)
    first = next(m for m in events if m.name == "NewCallerid")
    agents = []
    for m in events:
        if m.name == "AgentCalled" and m.get("Interface") not in [a.interface for a in agents]:
            agents.append(Agent(m["Interface"].split("@")[0][6:], m["MemberName"]))
    queue = next(m["Queue"] for m in events if m.name == "QueueCallerJoin")
    caller_leg = next(m["Uniqueid"] for m in events
                      if m.name == "Newchannel" and m["Channel"].endswith(";2"))
    commands = None
    if scenario != "inbound_no_agi":
        commands = recorded_agi_commands(traces_dir, trace, caller_leg)
    return events, linkedid, action_id, first, agents, queue, commands


def to_wire(timed) -> list[Message]:
    """Serialise the simulator's messages and parse them back like a client would."""
    data = b"Asterisk Call Manager/11.0.0\r\n" + b"".join(
        m.to_text().encode() for _, m in timed)
    return Parser().feed(data)


def first_linkedid(events: list[Message]) -> str:
    return next(m["Uniqueid"] for m in events if m.name == "Newchannel")


# --- pure: event sequences ---------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_simulated_call_tells_the_recorded_story(traces_dir, scenario):
    events, linkedid, action_id, caller, agents, queue, commands = \
        recorded_call(traces_dir, scenario)
    slots = [[a] for a in agents]
    if scenario == "ring_no_answer":
        assert [a.id for a in agents] == ["2001", "3001", "1004"]
    timed = build_call(scenario, CallParams(number=caller["CallerIDNum"],
                                            name=caller["CallerIDName"]),
                       agents=slots, ids=Ids(), start=1_800_000_000.0, queue=queue,
                       agi_commands=commands, originate=Originate(action_id))
    sim = to_wire(timed)
    sim_linkedid = first_linkedid(sim)

    expected = signature(events, linkedid)
    got = signature(of_call(sim, sim_linkedid), sim_linkedid)
    assert len(got) == len(expected), f"{scenario}: {len(got)} call events, " \
                                      f"recorded {len(expected)}"
    for i, (want, have) in enumerate(zip(expected, got)):
        assert have == want, f"{scenario}: event #{i} differs"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_leg_is_named_like_asterisk_and_hung_up(scenario):
    sim = to_wire(build_call(scenario, ids=Ids(7, 0x2a), start=1_800_000_000.0))
    linkedid = first_linkedid(sim)
    assert linkedid == "1800000000.7"
    created, hung_up = set(), set()
    for m in sim:
        if "Channel" in m and m.name not in ("OriginateResponse",):
            assert CHANNEL.match(m["Channel"]), m["Channel"]
        if "Uniqueid" in m:
            assert UNIQUEID.match(m["Uniqueid"]), m["Uniqueid"]
        if "Linkedid" in m and m.name != "Newexten":
            assert m["Linkedid"] == linkedid, m
        if m.name == "Newchannel":
            created.add(m["Channel"])
        if m.name == "Hangup":
            hung_up.add(m["Channel"])
    assert created and created == hung_up
    assert any(c.startswith("Local/5550100@from-pstn-0000002a;1") for c in created)


def test_ring_all_rings_every_member_and_cancels_the_ones_who_lost():
    bob, carol = Agent("1002", "Agent Bob"), Agent("1003", "Agent Carol")
    sim = to_wire(build_call("inbound_answered", agents=[[bob, carol]], queue="general"))
    called = [m["MemberName"] for m in sim if m.name == "AgentCalled"]
    connected = [m["MemberName"] for m in sim if m.name == "AgentConnect"]
    carol_leg = next(m["DestChannel"] for m in sim
                     if m.name == "AgentCalled" and m["MemberName"] == "Agent Carol")
    carol_ends = [m["DialStatus"] for m in sim
                  if m.name == "DialEnd" and m.get("DestChannel") == carol_leg]
    names = [m.name for m in sim]

    assert called == ["Agent Bob", "Agent Carol"]
    assert connected == ["Agent Bob"]
    assert set(carol_ends) == {"CANCEL"}
    # Carol's legs are gone before Bob's conversation is bridged
    carol_hangup = max(i for i, m in enumerate(sim)
                       if m.name == "Hangup" and m["Channel"].startswith(carol_leg[:-2]))
    assert carol_hangup < names.index("BridgeEnter")


def test_abandoned_call_with_nobody_free_waits_alone_then_abandons():
    sim = to_wire(build_call("inbound_abandoned", CallParams(hold=6), agents=[[]]))
    names = [m.name for m in sim]
    abandon = next(m for m in sim if m.name == "QueueCallerAbandon")

    assert "AgentCalled" not in names and "DialBegin" in names  # only the caller's own dial
    assert names.index("QueueCallerJoin") < names.index("QueueCallerAbandon") \
        < names.index("QueueCallerLeave")
    assert abandon["HoldTime"] in ("5", "6")
    assert not any(m.get("Channel", "").startswith("Local/100") for m in sim)


def test_talk_and_ring_seconds_stretch_the_recorded_pauses():
    timed = build_call("inbound_answered", CallParams(ring=4.0, talk=20.0), queue="vip")
    t, at = 0.0, {}
    for delay, m in timed:
        t += delay
        at.setdefault(m.name, t)
        if m.name == "AgentComplete":
            complete = m
    assert at["AgentConnect"] - at["AgentCalled"] == pytest.approx(4.0, abs=0.05)
    assert at["AgentComplete"] - at["AgentConnect"] == pytest.approx(20.0, abs=0.05)
    assert complete["TalkTime"] in ("19", "20", "21")


def test_assign_agents_skips_busy_members_and_degrades_when_nobody_can_answer():
    general = [Agent("1002", "Agent Bob"), Agent("1003", "Agent Carol")]
    complaints = [Agent("2001", "Agent NoAnswer"), Agent("3001", "Agent Busy"),
                  Agent("1004", "Agent Dave")]

    assert assign_agents("inbound_answered", general, busy={"1002"}) == \
        ("inbound_answered", [[general[1]]])
    assert assign_agents("inbound_answered", general, busy={"1002", "1003"}) == \
        ("inbound_abandoned", [[]])
    assert assign_agents("ring_no_answer", complaints) == \
        ("ring_no_answer", [[complaints[0]], [complaints[1]], [complaints[2]]])
    # a busy (3xxx) member never rings in a ring-all; a no-answer one does
    assert assign_agents("inbound_answered", complaints) == \
        ("inbound_answered", [[complaints[2], complaints[0]]])


# --- AMI server over real sockets ----------------------------------------------------


class AmiClient:
    """A bare AMI client: bytes out, parsed messages in."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer
        self.parser = Parser()
        self.messages: list[Message] = []

    @classmethod
    async def connect(cls, port: int) -> AmiClient:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    def send(self, action: str, **headers: str) -> None:
        lines = [f"Action: {action}"] + [f"{k}: {v}" for k, v in headers.items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())

    async def until(self, pred, timeout: float = 5.0) -> Message:
        async def wait():
            while True:
                for m in self.messages:
                    if pred(m):
                        return m
                data = await self.reader.read(65536)
                if not data:
                    raise ConnectionError("AMI server closed the connection")
                self.messages += self.parser.feed(data)
        return await asyncio.wait_for(wait(), timeout)

    async def closed(self, timeout: float = 3.0) -> bool:
        async def drain():
            while await self.reader.read(65536):
                pass
        await asyncio.wait_for(drain(), timeout)
        return True

    async def login(self, **extra: str) -> Message:
        self.send("Login", ActionID="login-1", Username="cti", Secret="ctisecret", **extra)
        return await self.until(lambda m: m.action_id == "login-1")

    def close(self) -> None:
        self.writer.close()


@pytest.fixture
async def sim():
    pbx = PbxSimulator(agi_url=None, speed=20, seed=7, auth_fail_delay=0.2)
    await pbx.start()
    yield pbx
    await pbx.stop()


async def test_login_plain_ping_and_logoff_like_asterisk(sim):
    client = await AmiClient.connect(sim.ami_port)
    login = await client.login()
    booted = await client.until(lambda m: m.name == "FullyBooted")
    client.send("Ping", ActionID="ping-1")
    pong = await client.until(lambda m: m.action_id == "ping-1")
    client.send("Logoff", ActionID="bye-1")
    bye = await client.until(lambda m: m.action_id == "bye-1")

    assert client.parser.banner == "Asterisk Call Manager/11.0.0"
    assert (login.name, login["Message"]) == ("Success", "Authentication accepted")
    assert booted["Status"] == "Fully Booted"
    assert pong["Ping"] == "Pong" and float(pong["Timestamp"]) > 1e9
    assert (bye.name, bye["Message"]) == ("Goodbye", "Thanks for all the fish.")
    assert await client.closed()


async def test_md5_login_answers_the_challenge_math_and_events_off_sends_none(sim):
    client = await AmiClient.connect(sim.ami_port)
    client.send("Challenge", ActionID="ch-1", AuthType="MD5")
    challenge = (await client.until(lambda m: m.action_id == "ch-1"))["Challenge"]
    key = hashlib.md5((challenge + "ctisecret").encode()).hexdigest()
    client.send("Login", ActionID="md5-1", AuthType="MD5", Username="cti", Key=key,
                Events="off")
    login = await client.until(lambda m: m.action_id == "md5-1")
    client.send("Ping", ActionID="ping-1")
    await client.until(lambda m: m.action_id == "ping-1")

    assert re.fullmatch(r"\d{9}", challenge)
    assert login.name == "Success"
    assert not [m for m in client.messages if m.kind.name == "EVENT"]
    client.close()


async def test_wrong_secret_is_refused_and_the_connection_closed(sim):
    client = await AmiClient.connect(sim.ami_port)
    client.send("Ping", ActionID="early-1")
    early = await client.until(lambda m: m.action_id == "early-1")
    client.send("Login", ActionID="bad-1", Username="cti", Secret="wrong-secret")
    bad = await client.until(lambda m: m.action_id == "bad-1")

    assert (early.name, early["Message"]) == ("Error", "Permission denied")
    assert (bad.name, bad["Message"]) == ("Error", "Authentication failed")
    assert await client.closed()
    assert sim.stats["login_failures"] == 1


async def test_unknown_action_gets_asterisks_error_text(sim):
    client = await AmiClient.connect(sim.ami_port)
    await client.login()
    client.send("NoSuchAction", ActionID="bad-action-1")
    reply = await client.until(lambda m: m.action_id == "bad-action-1")

    assert reply.name == "Error"
    assert reply["Message"] == ("Invalid/unknown command: NoSuchAction. "
                                "Use Action: ListCommands to show available commands.")
    client.close()


async def tiny_fastagi(queue: str, commands: list[str] | None = None):
    """A FastAGI server that records the env and routes every call to ``queue``."""
    sessions: list[dict] = []
    commands = commands or ["GET VARIABLE CALLERID(name)", f'SET VARIABLE CTI_QUEUE "{queue}"',
                            'VERBOSE "routed" 1']

    async def handle(reader, writer):
        env = {}
        while (line := (await reader.readline()).decode()) not in ("\n", ""):
            key, _, value = line.rstrip("\n").partition(": ")
            env[key] = value
        replies = []
        for command in commands:
            writer.write(command.encode() + b"\n")
            await writer.drain()
            replies.append((await reader.readline()).decode().rstrip("\n"))
        sessions.append({"env": env, "replies": replies})
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, sessions


async def test_lab_originate_plays_the_recorded_call_and_routes_by_fastagi(traces_dir):
    events, linkedid, _, _, _, _, commands = recorded_call(traces_dir, "inbound_answered")
    agi, sessions = await tiny_fastagi("vip", commands)
    port = agi.sockets[0].getsockname()[1]
    pbx = PbxSimulator(agi_url=f"agi://127.0.0.1:{port}/route", speed=20, seed=3)
    await pbx.start()
    try:
        client = await AmiClient.connect(pbx.ami_port)
        await client.login()
        # the very Originate the recording client sent to the lab
        sent = Parser(expect_banner=False).feed(
            (traces_dir / "inbound_answered.ami.sent").read_bytes())
        originate = next(m for m in sent if m.name == "Originate")
        client.writer.write(originate.to_text().encode())
        await client.until(lambda m: m.name == "AgentConnect")
        client.send("CoreShowChannels", ActionID="csc-1")
        done = await client.until(lambda m: m.name == "CoreShowChannelsComplete")
        await client.until(lambda m: m.name == "Hangup" and m["Channel"].endswith(
            "from-pstn-00000000;1"))
        client.close()
    finally:
        await pbx.stop()
        agi.close()

    listed = [m for m in client.messages if m.name == "CoreShowChannel"]
    sim_linkedid = first_linkedid(client.messages)
    env = sessions[0]["env"]
    caller_leg = next(m for m in client.messages
                      if m.name == "Newchannel" and m["Channel"].endswith(";2"))

    assert done["ListItems"] == str(len(listed)) == "4"
    assert {m["Linkedid"] for m in listed} == {sim_linkedid}
    assert all(m.action_id == "csc-1" for m in listed)
    assert env["agi_uniqueid"] == caller_leg["Uniqueid"] != sim_linkedid
    assert env["agi_channel"] == caller_leg["Channel"]
    assert (env["agi_callerid"], env["agi_calleridname"]) == ("+15551230001", "Alice Smith")
    assert env["agi_request"] == f"agi://127.0.0.1:{port}/route"
    assert sessions[0]["replies"][0] == "200 result=1 (Alice Smith)"
    assert signature(of_call(client.messages, sim_linkedid), sim_linkedid) == \
        signature(events, linkedid)


async def test_call_goes_to_the_queue_fastagi_chose(traces_dir):
    agi, sessions = await tiny_fastagi("general")
    port = agi.sockets[0].getsockname()[1]
    pbx = PbxSimulator(agi_url=f"agi://127.0.0.1:{port}/route", speed=20, seed=5)
    await pbx.start()
    try:
        client = await AmiClient.connect(pbx.ami_port)
        await client.login()
        linkedid = pbx.place_call("inbound_answered", "+15551230002", "Bob Jones")
        await pbx.wait_idle(5)
        await client.until(lambda m: m.name == "Hangup" and m["Linkedid"] == linkedid
                           and m["Channel"].endswith("from-pstn-00000000;1"))
        client.close()
    finally:
        await pbx.stop()
        agi.close()

    msgs = client.messages
    join = next(m for m in msgs if m.name == "QueueCallerJoin")
    called = [m["Interface"] for m in msgs if m.name == "AgentCalled"]
    queue_var = next(m for m in msgs if m.name == "VarSet" and m["Variable"] == "CTI_QUEUE")

    assert sessions[0]["env"]["agi_callerid"] == "+15551230002"
    assert join["Queue"] == "general" == queue_var["Value"]
    assert called == ["Local/1002@agents/n", "Local/1003@agents/n"]


async def test_unreachable_fastagi_takes_the_failure_path_to_general():
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    dead_port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    pbx = PbxSimulator(agi_url=f"agi://127.0.0.1:{dead_port}/route", speed=20, seed=9)
    await pbx.start()
    try:
        client = await AmiClient.connect(pbx.ami_port)
        await client.login()
        pbx.place_call("inbound_answered")
        join = await client.until(lambda m: m.name == "QueueCallerJoin")
        status = next(m for m in client.messages
                      if m.name == "VarSet" and m["Variable"] == "AGISTATUS")
        client.close()
    finally:
        await pbx.stop()

    assert status["Value"] == "FAILURE"
    assert join["Queue"] == "general"
    assert not [m for m in client.messages if m.name == "AGIExecStart"]
    assert pbx.stats["agi_failures"] == 1


async def test_callback_originates_answer_busy_or_ring_out_by_number_prefix(sim):
    client = await AmiClient.connect(sim.ami_port)
    await client.login()
    for aid, number in (("cb-ok", "15551230004"), ("cb-busy", "95551230005"),
                        ("cb-na", "85551230006")):
        client.send("Originate", ActionID=aid, Channel=f"Local/{number}@callbacks",
                    Context="callback-agent", Exten="1001", Priority="1",
                    CallerID='"ACME Support" <+15550009999>', Timeout="2000", Async="true",
                    Variable="CALLBACK_ID=CB-1")
    results = {}
    for aid in ("cb-ok", "cb-busy", "cb-na"):
        queued = await client.until(lambda m, a=aid: m.action_id == a and m.kind.name
                                    == "RESPONSE")
        assert queued["Message"] == "Originate successfully queued"
        results[aid] = await client.until(
            lambda m, a=aid: m.name == "OriginateResponse" and m.action_id == a)
    user = await client.until(lambda m: m.name == "UserEvent")
    client.close()

    assert (results["cb-ok"]["Response"], results["cb-ok"]["Reason"]) == ("Success", "4")
    assert (results["cb-busy"]["Response"], results["cb-busy"]["Reason"]) == ("Failure", "5")
    assert (results["cb-na"]["Response"], results["cb-na"]["Reason"]) == ("Failure", "3")
    assert results["cb-busy"]["Uniqueid"] == "<unknown>"
    assert user["UserEvent"] == "CallbackAnswered"
