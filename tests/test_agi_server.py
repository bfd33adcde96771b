"""FastAGI server and the route script over real sockets.

A fake Asterisk connects, sends an environment block byte for byte as recorded in
shared/traces (or given in cases 16, 18 and 19), and answers the commands it gets.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import re
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

import cti.agi.server as server_mod
import cti.routing.service as service_mod
from cti.agi.protocol import AgiReply
from cti.agi.server import AgiServer, AgiSession
from cti.calls.model import Route
from cti.config import AgiSettings, Settings
from cti.crm.base import Customer, LookupResult, Ticket
from cti.errors import AgiHangup, CrmUnavailable
from cti.log import mask_number
from cti.routing.service import RouteService

OK = b"200 result=1\n"

# -- fakes ----------------------------------------------------------------------------


class FakeLog:
    """Stands in for the structlog logger of the server and the route service."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict[str, Any]]] = []

    def _record(level: str) -> Callable[..., None]:  # type: ignore[misc]
        def method(self: FakeLog, event: str, **kw: Any) -> None:
            self.records.append((level, event, kw))
        return method

    debug = _record("debug")
    info = _record("info")
    warning = _record("warning")
    error = _record("error")
    exception = _record("exception")
    critical = _record("critical")

    def at(self, *levels: str) -> list[str]:
        return [event for level, event, _ in self.records if level in levels]

    @property
    def problems(self) -> list[str]:
        return self.at("warning", "error", "exception", "critical")


@pytest.fixture
def logs(monkeypatch: pytest.MonkeyPatch) -> FakeLog:
    fake = FakeLog()
    monkeypatch.setattr(server_mod, "log", fake)
    monkeypatch.setattr(service_mod, "log", fake)
    return fake


def _ticket() -> Ticket:
    return Ticket(ticket_id="T-1", subject="late install", status="open", is_complaint=True,
                  product=None, created_at="2026-01-01T00:00:00Z",
                  updated_at="2026-01-01T00:00:00Z")


class FakeCrm:
    """Knows the callers of the lab traces (routing as recorded there)."""

    def __init__(self) -> None:
        self.customers: dict[str, Customer] = {}
        self.looked_up: list[str] = []

        def add(number: str, cid: str, segment: str = "standard", tags: tuple = (),
                complaint: bool = False) -> None:
            self.customers[number] = Customer(
                customer_id=cid, name=cid, segment=segment, tags=list(tags),
                phones=[number], open_tickets=[_ticket()] if complaint else [])

        add("+15551230001", "CUST-1001", "gold")             # Alice Smith -> vip
        add("+15551230002", "CUST-1002")                     # Bob Jones -> general
        add("+15551230010", "CUST-1010", tags=("overflow",))  # Judy Live -> overflow
        add("+15551230020", "CUST-1020", "gold")             # Grace Transfer -> vip
        for i in range(20):                                  # burst callers
            add(f"+1555123{1000 + i}", f"CUST-{2000 + i}",
                "gold" if i % 5 == 0 else "standard", complaint=(i % 5 == 1))

    async def lookup(self, number: str) -> LookupResult:
        self.looked_up.append(number)
        await asyncio.sleep(0)
        if number in self.customers:
            return LookupResult(number=number, matches=[self.customers[number]], status="found")
        return LookupResult(number=number, status="not_found")

    async def log_call(self, record: dict[str, Any]) -> None:
        pass

    async def close(self) -> None:
        pass


class BadCrm(FakeCrm):
    """Case 19: a CRM that hangs, fails or talks nonsense."""

    def __init__(self, behaviour: str) -> None:
        super().__init__()
        self.behaviour = behaviour
        self.cancelled = False

    async def lookup(self, number: str) -> Any:
        self.looked_up.append(number)
        if self.behaviour == "slow":
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                self.cancelled = True
                raise
        if self.behaviour == "unavailable":
            raise CrmUnavailable("CRM answered HTTP 500")
        if self.behaviour == "crash":
            raise ValueError("malformed JSON at line 1")
        if self.behaviour == "garbage":
            return {"id": 42}
        if self.behaviour == "garbage-matches":
            junk: list[Any] = ["CUST-1"]
            return LookupResult(number=number, matches=junk, status="found")
        raise AssertionError(self.behaviour)


# -- inputs from the shared folder ----------------------------------------------------


def _sessions(traces_dir: Path) -> list[tuple[str, dict]]:
    out = []
    for path in sorted(traces_dir.glob("*.agi.jsonl")):
        for line in path.read_text().splitlines():
            session = json.loads(line)
            out.append((f"{path.name.split('.')[0]}-{session['session']}", session))
    return out


_TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces"
_SESSION_IDS = [name for name, _ in _sessions(_TRACES)] if _TRACES.is_dir() else []


def env_bytes(session: dict) -> bytes:
    """The environment block exactly as Asterisk sent it in the recording."""
    head, sep, _ = session["raw_in"].encode().partition(b"\n\n")
    assert sep, "recorded session has no complete environment"
    return head + sep


def recorded_sets(session: dict) -> dict[str, str]:
    sets = {}
    for exchange in session["exchanges"]:
        m = re.fullmatch(r'SET VARIABLE (\S+) "(.*)"', exchange["line"])
        if exchange["dir"] == "out" and m:
            sets[m.group(1)] = m.group(2)
    return sets


def recorded_answers(session: dict) -> Callable[[str, int], bytes]:
    """Answer GET VARIABLE as recorded, everything else with ``200 result=1``."""
    replies = {}
    exchanges = session["exchanges"]
    for out, reply in zip(exchanges, exchanges[1:]):
        if out["dir"] == "out" and reply["dir"] == "in":
            replies[out["line"]] = reply["line"].encode() + b"\n"

    def answer(command: str, index: int) -> bytes:
        if command.startswith("GET VARIABLE") and command in replies:
            return replies[command]
        return OK
    return answer


@pytest.fixture(scope="module")
def case18_env(cases_dir: Path) -> bytes:
    text = (cases_dir / "18-agi-env-script-args-encoding.md").read_text()
    start = text.index("```", text.index("## Minimal replay input"))
    block = text[start + 3:text.index("```", start + 3)].strip("\n").split("\n")
    return b"".join(codecs.escape_decode(line.encode("ascii"))[0] for line in block)


@pytest.fixture(scope="module")
def case19_env(case18_env: bytes) -> bytes:
    """Case 19 step 1: the case 18 environment with caller 5550000001."""
    return re.sub(rb"agi_callerid: [^\n]*", b"agi_callerid: 5550000001", case18_env)


@pytest.fixture
def trace_env(traces_dir: Path) -> bytes:
    return env_bytes(dict(_sessions(traces_dir))["inbound_answered-1"])


# -- the fake Asterisk side -----------------------------------------------------------


Answer = Callable[[str, int], bytes]


async def asterisk(port: int, env: bytes, answer: Answer = lambda c, i: OK, *,
                   segment: int | None = None, after_eof: bytes = b"") -> list[str]:
    """Connect, send ``env``, answer every command; return the commands in order."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if segment:
            writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP,
                                                       socket.TCP_NODELAY, 1)
            for i in range(0, len(env), segment):
                writer.write(env[i:i + segment])
                await writer.drain()
                await asyncio.sleep(0)
        else:
            writer.write(env)
        commands: list[str] = []
        while True:
            try:
                line = await asyncio.wait_for(reader.readline(), 5)
            except ConnectionResetError:     # closed with our bytes unread: a refusal
                break
            if not line:
                break
            commands.append(line.decode().rstrip("\n"))
            writer.write(answer(commands[-1], len(commands) - 1))
            await writer.drain()
        if after_eof:
            # Asterisk writing a late HANGUP to a socket the server has closed.
            try:
                writer.write(after_eof)
                await writer.drain()
            except ConnectionError:
                pass
        return commands
    finally:
        writer.close()


def scripted(*replies: bytes) -> Answer:
    return lambda command, index: replies[index] if index < len(replies) else OK


def sets_of(commands: list[str]) -> dict[str, str]:
    out = {}
    for command in commands:
        if m := re.fullmatch(r'SET VARIABLE (\S+) "(.*)"', command):
            out[m.group(1)] = m.group(2)
    return out


class Stack:
    """A RouteService behind an AgiServer on an ephemeral port."""

    def __init__(self, crm: Any, budget_ms: int = 2000, **server_kw: Any) -> None:
        self.crm = crm
        self.routed: list[tuple[str, Route, LookupResult | None]] = []
        settings = Settings(agi=AgiSettings(lookup_budget_ms=budget_ms))
        self.service = RouteService(crm, settings,
                                    on_route=lambda *a: self.routed.append(a))
        handlers = server_kw.pop("handlers", None) or {"route": self.service.agi_route,
                                                       "crm/lookup": self.service.agi_route}
        self.server = AgiServer("127.0.0.1", 0, handlers, **server_kw)

    async def __aenter__(self) -> Stack:
        await self.server.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.server.stop()
        await self.service.close()

    @property
    def port(self) -> int:
        return self.server.port


async def until(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    async with Stack(FakeCrm()) as running:
        yield running


# -- trace replays --------------------------------------------------------------------


@pytest.mark.parametrize("name", _SESSION_IDS)
async def test_trace_session_gets_the_recorded_route(name: str, traces_dir: Path,
                                                     stack: Stack, logs: FakeLog) -> None:
    session = dict(_sessions(traces_dir))[name]
    env = dict(session["env"])

    commands = await asterisk(stack.port, env_bytes(session), recorded_answers(session))

    ours = sets_of(commands)
    number = env["agi_callerid"]
    if number not in FakeCrm().customers:
        # a recording whose caller this CRM does not know: the default route, in time
        assert (ours["CTI_QUEUE"], ours["CTI_CUSTOMER_ID"]) == ("general", "")
        assert commands[-1].startswith('VERBOSE "CTI route for ')
        return
    for var in ("CTI_QUEUE", "CTI_SEGMENT", "CTI_PRIORITY", "CTI_CUSTOMER_ID"):
        assert ours[var] == recorded_sets(session)[var], var
    assert ours["CTI_ROUTE_REASON"].startswith(ours["CTI_CUSTOMER_ID"])
    assert commands[-1] == (f'VERBOSE "CTI route for {mask_number(number)}: '
                            f'{ours["CTI_QUEUE"]}" 1')
    assert number not in "\n".join(commands)          # masked towards Asterisk too
    [(uniqueid, route, lookup)] = stack.routed
    assert uniqueid == env["agi_uniqueid"]
    assert route.customer_id == ours["CTI_CUSTOMER_ID"]
    assert lookup is not None and lookup.status == "found"
    assert logs.problems == []


async def test_burst_sessions_are_served_concurrently(traces_dir: Path, stack: Stack) -> None:
    burst = [s for name, s in _sessions(traces_dir) if name.startswith("burst-")]
    assert len(burst) == 20

    results = await asyncio.gather(*(asterisk(stack.port, env_bytes(s), recorded_answers(s))
                                     for s in burst))

    for session, commands in zip(burst, results):
        assert sets_of(commands)["CTI_QUEUE"] == recorded_sets(session)["CTI_QUEUE"]
    assert sorted(u for u, _, _ in stack.routed) == sorted(
        dict(s["env"])["agi_uniqueid"] for s in burst)
    assert stack.server.active == 0


async def test_environment_in_one_byte_segments_is_served(trace_env: bytes,
                                                          stack: Stack) -> None:
    commands = await asterisk(stack.port, trace_env, segment=1)

    assert sets_of(commands)["CTI_QUEUE"] == "vip"


async def test_withheld_caller_is_asked_from_the_channel(trace_env: bytes,
                                                         stack: Stack) -> None:
    env = trace_env.replace(b"agi_callerid: +15551230001", b"agi_callerid: unknown")

    commands = await asterisk(stack.port, env, scripted(b"200 result=1 (+15551230001)\n"))

    assert commands[0] == "GET VARIABLE CALLERID(num)"
    assert sets_of(commands)["CTI_CUSTOMER_ID"] == "CUST-1001"


async def test_no_caller_number_anywhere_gives_the_default_route(trace_env: bytes,
                                                                 stack: Stack) -> None:
    env = trace_env.replace(b"agi_callerid: +15551230001", b"agi_callerid: unknown")

    commands = await asterisk(stack.port, env, scripted(b"200 result=0\n"))

    assert sets_of(commands) == {
        "CTI_QUEUE": "general", "CTI_SEGMENT": "unknown", "CTI_PRIORITY": "0",
        "CTI_CUSTOMER_ID": "", "CTI_ROUTE_REASON": "no usable caller number: default route"}
    assert commands[-1] == 'VERBOSE "CTI route for unknown caller: general" 1'
    assert stack.crm.looked_up == []


async def test_demo_crm_reproduces_every_recorded_route(traces_dir: Path,
                                                         tmp_path: Path) -> None:
    from cti.crm.cache import CachedCrm
    from cti.crm.demo import seed_demo
    from cti.crm.sqlite import SqliteCrm

    backend = SqliteCrm(tmp_path / "crm.sqlite3", "US")
    await backend.open()
    await seed_demo(backend)
    crm = CachedCrm(backend, ttl=60, negative_ttl=20, breaker_failures=5, breaker_reset=30)
    try:
        async with Stack(crm) as running:
            for name, session in _sessions(traces_dir):
                commands = await asterisk(running.port, env_bytes(session),
                                          recorded_answers(session))
                ours, recorded = sets_of(commands), recorded_sets(session)
                assert {k: ours[k] for k in recorded} == recorded, name
    finally:
        await crm.close()


# -- case 19: slow or broken CRM ------------------------------------------------------


@pytest.mark.parametrize(("behaviour", "reason"), [
    ("slow", "CRM lookup timed out after 100 ms: default route"),
    ("unavailable", "CRM lookup failed (CrmUnavailable: CRM answered HTTP 500)"),
    ("crash", "CRM lookup failed (ValueError: malformed JSON"),
    ("garbage", "CRM returned dict, expected LookupResult"),
    ("garbage-matches", "matches that are not customers"),
])
async def test_case19_bad_crm_gives_the_default_route_within_budget(
        behaviour: str, reason: str, case19_env: bytes, logs: FakeLog) -> None:
    async with Stack(BadCrm(behaviour), budget_ms=100) as running:
        started = time.monotonic()
        commands = await asterisk(running.port, case19_env)
        elapsed = time.monotonic() - started

        assert elapsed < 0.1 + 2.0          # not the CRM's 30 s
        sets = sets_of(commands)
        assert (sets["CTI_QUEUE"], sets["CTI_SEGMENT"], sets["CTI_PRIORITY"],
                sets["CTI_CUSTOMER_ID"]) == ("general", "unknown", "0", "")
        assert reason in sets["CTI_ROUTE_REASON"]
        assert running.crm.looked_up == ["+15550000001"]
        [(_, route, lookup)] = running.routed
        assert (route.source, lookup) == ("default", None)
        assert logs.at("error", "exception", "critical") == []
        if behaviour == "slow":
            # The lookup goes on in the background to fill the cache; close() ends it.
            assert not running.crm.cancelled
    assert running.crm.cancelled is (behaviour == "slow")


# -- connections that never become requests -------------------------------------------


async def test_connect_then_close_frees_the_slot_and_others_are_served(
        trace_env: bytes, stack: Stack, logs: FakeLog) -> None:
    for payload in (b"", trace_env[:40]):
        _, writer = await asyncio.open_connection("127.0.0.1", stack.port)
        writer.write(payload)
        writer.close()

    commands = await asterisk(stack.port, trace_env)
    await until(lambda: stack.server.active == 0)

    assert sets_of(commands)["CTI_QUEUE"] == "vip"
    assert logs.at("debug").count("agi connection closed without a request") == 1
    assert logs.at("info").count("agi connection closed inside the environment") == 1
    assert logs.problems == []


async def test_silent_connection_is_closed_after_header_timeout_while_others_are_served(
        trace_env: bytes, logs: FakeLog) -> None:
    async with Stack(FakeCrm(), header_timeout=0.5) as running:
        silent_reader, silent_writer = await asyncio.open_connection("127.0.0.1", running.port)
        started = time.monotonic()

        commands = await asterisk(running.port, trace_env)
        served_while_silent = not silent_reader.at_eof()
        closed = await asyncio.wait_for(silent_reader.read(), 3)
        silent_writer.close()

        assert sets_of(commands)["CTI_QUEUE"] == "vip"
        assert served_while_silent
        assert closed == b""
        assert 0.4 < time.monotonic() - started < 3
        assert logs.at("info").count("agi environment not received in time") == 1
        await until(lambda: running.server.active == 0)


async def test_sessions_over_max_sessions_are_closed_at_once(trace_env: bytes,
                                                             logs: FakeLog) -> None:
    async with Stack(FakeCrm(), max_sessions=1, header_timeout=5) as running:
        _, holder = await asyncio.open_connection("127.0.0.1", running.port)
        await until(lambda: running.server.active == 1)

        refused = await asterisk(running.port, trace_env)
        holder.close()
        await until(lambda: running.server.active == 0)
        served = await asterisk(running.port, trace_env)

    assert refused == []
    assert sets_of(served)["CTI_QUEUE"] == "vip"
    assert "agi session refused: too many sessions" in logs.at("warning")


# -- scripts ----------------------------------------------------------------------------


async def test_unknown_script_gets_a_verbose_and_a_clean_close(trace_env: bytes,
                                                               stack: Stack,
                                                               logs: FakeLog) -> None:
    env = trace_env.replace(b"agi_network_script: route", b"agi_network_script: nope")

    commands = await asterisk(stack.port, env)

    assert commands == ['VERBOSE "CTI: no FastAGI script \'nope\' here; continuing" 1']
    assert stack.routed == []
    assert logs.at("warning") == ["agi request for an unknown script"]


async def test_request_without_script_gets_a_verbose_and_a_clean_close(case18_env: bytes,
                                                                       stack: Stack) -> None:
    env = re.sub(rb"agi_network_script: [^\n]*\n", b"", case18_env)
    env = re.sub(rb"agi_request: [^\n]*", b"agi_request: agi://127.0.0.1:4573", env)

    commands = await asterisk(stack.port, env)

    assert commands == ['VERBOSE "CTI: no FastAGI script \'(none)\' here; continuing" 1']


async def test_case18_script_with_query_routes_by_path(case18_env: bytes,
                                                       stack: Stack) -> None:
    commands = await asterisk(stack.port, case18_env)

    # Routed to the "crm/lookup" handler; caller 13800138000 read with region US.
    assert stack.crm.looked_up == ["+13800138000"]
    assert sets_of(commands)["CTI_QUEUE"] == "general"


# -- case 16: hangups on the reply stream -----------------------------------------------


class Recorder:
    """A handler running fixed commands and noting each reply or error."""

    def __init__(self, *commands: str) -> None:
        self.commands = commands
        self.outcomes: list[AgiReply | str] = []
        self.hangups = 0
        self.hung_up_after: list[bool] = []

    async def __call__(self, session: AgiSession) -> None:
        session.on_hangup = lambda s: setattr(self, "hangups", self.hangups + 1)
        for command in self.commands:
            try:
                self.outcomes.append(await session.command(command))
            except AgiHangup as exc:
                self.outcomes.append(f"AgiHangup: {exc}")
            self.hung_up_after.append(session.hung_up)


async def test_case16_hangup_line_keeps_replies_paired_and_511_ends_cleanly(
        trace_env: bytes, logs: FakeLog) -> None:
    handler = Recorder("ANSWER", 'SET VARIABLE CRM_CONTACT_ID "42"', "GET VARIABLE CRM_CALL_ID",
                       'EXEC Playback "thanks"')
    dead = b"511 Command Not Permitted on a dead channel\n"
    async with Stack(FakeCrm(), handlers=handler) as running:
        sent = await asterisk(running.port, trace_env,
                              scripted(b"200 result=0\n", b"HANGUP\n200 result=1\n", dead, dead))

    assert sent == list(handler.commands[:3])          # EXEC is not sent after the hangup
    answer, set_var, get_var, exec_ = handler.outcomes
    assert answer == AgiReply(200, "0")
    assert set_var == AgiReply(200, "1", hangup=True)
    assert get_var.startswith("AgiHangup: GET VARIABLE: Asterisk answered 511")
    assert exec_ == "AgiHangup: EXEC: not sent, the channel has hung up"
    assert handler.hung_up_after == [False, True, True, True]
    assert handler.hangups == 1
    assert logs.problems == []


@pytest.mark.parametrize(("commands", "stream", "expected"), [
    (["SET VARIABLE A \"1\"", "GET VARIABLE B"],
     [b"HANGUP200 result=1\n", b"200 result=1 (b)\n"],
     [AgiReply(200, "1", hangup=True), AgiReply(200, "1", "b")]),
    (["GOSUB sub s 1", "NOOP"],
     [b"100 result=0 Trying...\n200 result=0\n", b"200 result=0\n"],
     [AgiReply(200, "0"), AgiReply(200, "0")]),
    (["RECORD FILE /tmp/x wav # 1000", "STREAM FILE beep \"\""],
     [b"200 result=-1 (hangup) endpos=25280\n"],
     [AgiReply(200, "-1", "hangup", hangup=True, extra={"endpos": "25280"}),
      "AgiHangup: STREAM FILE: not sent, the channel has hung up"]),
], ids=["hangup-glued", "gosub-trying", "record-hangup-result"])
async def test_case16_reply_variants(commands: list[str], stream: list[bytes],
                                     expected: list, trace_env: bytes, logs: FakeLog) -> None:
    handler = Recorder(*commands)
    async with Stack(FakeCrm(), handlers=handler) as running:
        await asterisk(running.port, trace_env, scripted(*stream))

    assert handler.outcomes == expected
    assert handler.hangups == int(any(getattr(o, "hangup", False) for o in expected))
    assert logs.problems == []


async def test_late_hangup_after_close_is_harmless(trace_env: bytes, stack: Stack,
                                                   logs: FakeLog) -> None:
    first = await asterisk(stack.port, trace_env, after_eof=b"HANGUP\n")
    second = await asterisk(stack.port, trace_env)

    assert sets_of(first) == sets_of(second)
    assert logs.problems == []


async def test_511_during_route_ends_the_handler_without_error_logs(
        trace_env: bytes, stack: Stack, logs: FakeLog) -> None:
    commands = await asterisk(stack.port, trace_env,
                              scripted(b"511 Command Not Permitted on a dead channel\n"))

    assert commands == ['SET VARIABLE CTI_QUEUE "vip"']
    assert "agi session ended by hangup" in logs.at("debug")
    assert logs.problems == []
    assert len(stack.routed) == 1                   # the decision still reached the daemon


async def test_asterisk_closing_mid_route_is_a_hangup_not_an_error(
        trace_env: bytes, stack: Stack, logs: FakeLog) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    writer.write(trace_env)
    first = await asyncio.wait_for(reader.readline(), 5)
    writer.transport.abort()                        # a reset, as when Asterisk dies

    await until(lambda: stack.server.active == 0)
    assert first.startswith(b"SET VARIABLE CTI_QUEUE")
    assert logs.problems == []


async def test_no_reply_in_time_fails_the_session_and_closes_it(trace_env: bytes,
                                                                logs: FakeLog) -> None:
    handler = Recorder("ANSWER", "NOOP")
    async with Stack(FakeCrm(), handlers=handler, command_timeout=0.2) as running:
        reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
        writer.write(trace_env)
        assert await asyncio.wait_for(reader.readline(), 5) == b"ANSWER\n"
        closed = await asyncio.wait_for(reader.read(), 3)    # we never answer
        writer.close()

    assert closed == b""
    assert handler.outcomes == []
    assert logs.at("warning") == ["agi session failed"]


async def test_stop_cancels_sessions_that_outlive_the_grace(trace_env: bytes) -> None:
    handler_started = asyncio.Event()

    async def forever(session: AgiSession) -> None:
        handler_started.set()
        await asyncio.sleep(30)

    server = AgiServer("127.0.0.1", 0, forever)
    await server.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(trace_env)
    await asyncio.wait_for(handler_started.wait(), 5)

    await asyncio.wait_for(server.stop(grace=0.1), 3)

    assert await asyncio.wait_for(reader.read(), 3) == b""
    assert server.active == 0
    writer.close()
