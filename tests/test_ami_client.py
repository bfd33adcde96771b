"""cti.ami.client against a scriptable fake AMI server on 127.0.0.1 (port 0).

The fake server answers with the recorded Asterisk 22 bytes (shared/traces) and the
public cases (shared/cases 09, 10) wherever they exist; only the ActionIDs are
rewritten to the ones the client chose.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from casefiles import case_blocks
import structlog

from cti.ami.client import AmiClient, AmiState, backoff_delay, md5_key
from cti.ami.protocol import Kind, Message, Parser
from cti.config import AmiSettings
from cti.errors import AmiActionError, AmiConnectionLost, AmiProtocolError, AmiTimeout

BANNER = b"Asterisk Call Manager/11.0.0\r\n"
FULLY_BOOTED = b"Event: FullyBooted\r\nPrivilege: system,all\r\nStatus: Fully Booted\r\n\r\n"
# case 09, steps 1 and 3
AUTH_FAILED = "Response: Error\r\nActionID: {}\r\nMessage: Authentication failed\r\n\r\n"
SHUTDOWN = b"Event: Shutdown\r\nPrivilege: system,all\r\nShutdown: Cleanly\r\nRestart: True\r\n\r\n"
LOGIN_OK = "Response: Success\r\nActionID: {}\r\nMessage: Authentication accepted\r\n\r\n"
PONG = "Response: Success\r\nActionID: {}\r\nPing: Pong\r\nTimestamp: 1796302799.664589\r\n\r\n"
SECRET = "s3cr3t-never-logged"


# --- shared material ---------------------------------------------------------------------


class Trace:
    """A recorded session: its actions and, per recorded ActionID, what came back."""

    def __init__(self, traces_dir: Path, name: str) -> None:
        self.raw = (traces_dir / f"{name}.ami.raw").read_bytes()
        self.entries = [json.loads(line) for line in
                        (traces_dir / f"{name}.ami.jsonl").read_text().splitlines()]
        self.replies: dict[str, list[str]] = {}
        for entry in self.entries:
            if entry["dir"] != "in":
                continue
            ids = [v for k, v in entry["headers"] if k.lower() == "actionid"]
            if ids:
                self.replies.setdefault(ids[0], []).append(entry["raw"])

    def action(self, name: str) -> dict[str, str]:
        entry = next(e for e in self.entries if e["dir"] == "out" and e["name"] == name)
        return dict(entry["headers"])

    def reply(self, recorded_id: str, new_id: str) -> bytes:
        """Every message recorded for ``recorded_id``, re-addressed to ``new_id``."""
        old, new = f"ActionID: {recorded_id}\r\n", f"ActionID: {new_id}\r\n"
        return "".join(raw.replace(old, new) for raw in self.replies[recorded_id]).encode()

    def message(self, seq: int) -> dict[str, Any]:
        return next(e for e in self.entries if e["seq"] == seq)


# --- the fake server ---------------------------------------------------------------------


class FakeConn:
    """One accepted connection: read the client's actions, write scripted bytes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.parser = Parser(expect_banner=False)
        self.actions: list[Message] = []
        self._queued: list[Message] = []
        self.mute = False                # stop answering, keep the socket open
        self.booted_at: float | None = None

    async def action(self, timeout: float = 3.0) -> Message:
        """The client's next action; EOFError when the client closed."""
        while not self._queued:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                raise EOFError
            self._queued += self.parser.feed(data)
        msg = self._queued.pop(0)
        assert msg.kind is Kind.ACTION, msg
        self.actions.append(msg)
        return msg

    def send(self, data: bytes | str) -> None:
        self.writer.write(data.encode() if isinstance(data, str) else data)

    async def login(self, *, boot_delay: float | None = 0.0) -> Message:
        """Banner, accept the Login, then FullyBooted after ``boot_delay`` (None: never)."""
        self.send(BANNER)
        login = await self.action()
        assert login.name == "Login", f"first action was {login.name}, expected Login"
        self.send(LOGIN_OK.format(login.action_id))
        if boot_delay is not None:
            await asyncio.sleep(boot_delay)
            self.booted_at = asyncio.get_running_loop().time()
            self.send(FULLY_BOOTED)
        return login

    async def serve(self, on_action: Callable[[FakeConn, Message], Awaitable[None]]
                    | None = None) -> None:
        """Answer Pings (unless muted) and hand every other action to ``on_action``."""
        while True:
            action = await self.action(timeout=30)
            if self.mute:
                continue
            if action.name == "Ping":
                self.send(PONG.format(action.action_id))
            elif action.name == "Logoff":
                self.send(f"Response: Goodbye\r\nActionID: {action.action_id}\r\n"
                          "Message: Thanks for all the fish.\r\n\r\n")
                return
            elif on_action is not None:
                await on_action(self, action)

    def count(self, name: str) -> int:
        return sum(a.name == name for a in self.actions)


class FakeAmi:
    """``asyncio.start_server`` on 127.0.0.1; ``handler(conn)`` scripts each connection."""

    def __init__(self, handler: Callable[[FakeConn], Awaitable[None]]) -> None:
        self.handler = handler
        self.conns: list[FakeConn] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def pause(self) -> None:
        """Refuse connections (Asterisk down) and drop the open ones."""
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        for conn in self.conns:
            conn.writer.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = FakeConn(reader, writer)
        self.conns.append(conn)
        self._tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            await self.handler(conn)
        except (EOFError, ConnectionError, asyncio.TimeoutError):
            pass
        finally:
            writer.close()

    def count(self, name: str) -> int:
        return sum(conn.count(name) for conn in self.conns)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in self._tasks:
            task.cancel()
        for conn in self.conns:
            conn.writer.close()


@contextlib.asynccontextmanager
async def fake_ami(handler: Callable[[FakeConn], Awaitable[None]]) -> AsyncIterator[FakeAmi]:
    server = FakeAmi(handler)
    await server.listen()
    try:
        yield server
    finally:
        await server.close()


async def normal(conn: FakeConn) -> None:
    await conn.login()
    await conn.serve()


def make_settings(port: int, **overrides: Any) -> AmiSettings:
    values: dict[str, Any] = dict(
        host="127.0.0.1", port=port, secret=SECRET, connect_timeout=1.0, action_timeout=1.0,
        ping_interval=5.0, ping_timeout=1.0, fully_booted_timeout=0.5, backoff_initial=0.05,
        backoff_max=0.2, auth_backoff_initial=0.1, auth_backoff_max=1.0)
    values.update(overrides)
    return AmiSettings(**values)


class Recorder:
    """Collects what the client reports through its callbacks."""

    def __init__(self) -> None:
        self.events: list[Message] = []
        self.connected_at: list[float] = []
        self.disconnects: list[str] = []

    def on_event(self, msg: Message) -> None:
        self.events.append(msg)

    async def on_connected(self) -> None:
        self.connected_at.append(asyncio.get_running_loop().time())

    def on_disconnected(self, reason: str) -> None:
        self.disconnects.append(reason)

    def named(self, name: str) -> list[Message]:
        return [m for m in self.events if m.name == name]


@contextlib.asynccontextmanager
async def ami_client(settings: AmiSettings, **kwargs: Any,
                     ) -> AsyncIterator[tuple[AmiClient, Recorder]]:
    rec = Recorder()
    client = AmiClient(settings, on_event=rec.on_event, on_connected=rec.on_connected,
                       on_disconnected=rec.on_disconnected, **kwargs)
    await client.start()
    try:
        yield client, rec
    finally:
        await client.stop()


async def until(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


def free_port() -> int:
    """A port nobody listens on (connecting to it is refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- pure pieces -------------------------------------------------------------------------


def test_md5_key_matches_the_recorded_login(traces_dir: Path) -> None:
    trace = Trace(traces_dir, "login_md5")
    challenge = trace.message(3)
    assert dict(challenge["headers"])["Challenge"] == "163529790"

    key = md5_key("163529790", "ctisecret")

    assert key == "671dae1d5958e274099c4336cdcd10e5" == trace.action("Login")["Key"]


def test_backoff_delays_grow_to_the_cap_with_jitter() -> None:
    lows = [backoff_delay(n, 0.5, 30.0, rnd=lambda: 0.0) for n in range(10)]
    highs = [backoff_delay(n, 0.5, 30.0, rnd=lambda: 1.0) for n in range(10)]

    assert lows[:4] == [0.25, 0.5, 1.0, 2.0]
    assert highs[:4] == [0.5, 1.0, 2.0, 4.0]
    assert highs[-1] == 30.0 and lows[-1] == 15.0
    # the shortest next gap is never shorter than the longest previous one below the cap
    assert all(lows[n + 1] >= highs[n] for n in range(5))


def test_default_instance_ids_differ_per_client_and_carry_the_pid() -> None:
    clients = [AmiClient(make_settings(1), on_event=lambda m: None) for _ in range(3)]

    ids = {c.instance_id for c in clients}
    action_ids = [clients[0].next_action_id() for _ in range(1000)]

    assert len(ids) == 3
    assert all(str(os.getpid()) in i for i in ids)
    assert len(set(action_ids)) == 1000
    assert action_ids[0] == f"{clients[0].instance_id}-1"


async def test_send_action_while_not_connected_fails_at_once() -> None:
    client = AmiClient(make_settings(free_port()), on_event=lambda m: None)

    with pytest.raises(AmiConnectionLost, match="Ping: not connected"):
        await client.send_action("Ping")
    with pytest.raises(AmiTimeout, match="not connected within 0.05s"):
        await client.wait_connected(0.05)


# --- login -------------------------------------------------------------------------------


async def test_plain_login_sends_nothing_before_the_banner_and_login_first(
        traces_dir: Path) -> None:
    trace = Trace(traces_dir, "actions")
    first_bytes: list[bytes] = []

    async def handler(conn: FakeConn) -> None:
        # anything the client writes before the banner would be read here
        with contextlib.suppress(asyncio.TimeoutError):
            first_bytes.append(await asyncio.wait_for(conn.reader.read(100), 0.2))
        conn.send(BANNER)
        login = await conn.action()
        conn.send(trace.reply("login-1", login.action_id))
        conn.send(b"".join(trace.message(seq)["raw"].encode() for seq in (4, 5)))
        await conn.serve()

    with structlog.testing.capture_logs() as logs:
        async with fake_ami(handler) as server, \
                ami_client(make_settings(server.port, ping_interval=0.1)) as (client, rec):
            await client.wait_connected(2)
            await until(lambda: server.count("Ping") >= 1)
            connected_state = client.status.as_dict()["state"]

    assert first_bytes == []
    login = server.conns[0].actions[0]
    assert login.name == "Login"
    assert [(k, v) for k, v in login.pairs if k != "ActionID"] == [
        ("Action", "Login"), ("Username", "cti"), ("Secret", SECRET), ("Events", "on")]
    status = client.status
    assert (status.banner, status.version, status.connects) == (
        "Asterisk Call Manager/11.0.0", "11.0.0", 1)
    assert status.endpoint == f"127.0.0.1:{server.port}"
    assert (connected_state, status.state) == ("connected", AmiState.DISCONNECTED)  # stopped
    assert [m.name for m in rec.events[:2]] == ["FullyBooted", "SuccessfulAuth"]
    assert any(entry["event"] == "ami connected" for entry in logs)
    assert any(entry["event"] == "ami action" and entry["action"] == "Login" for entry in logs)
    assert SECRET not in repr(logs)


async def test_md5_login_replays_the_recorded_session(traces_dir: Path) -> None:
    trace = Trace(traces_dir, "login_md5")
    recorded_ids = {"Challenge": "challenge-1", "Login": "login-md5-1", "Ping": "ping-1",
                    "Logoff": "logoff-1"}

    async def handler(conn: FakeConn) -> None:
        conn.send(trace.raw[:trace.raw.index(b"\r\n") + 2])  # the recorded banner
        while True:
            action = await conn.action()
            conn.send(trace.reply(recorded_ids[action.name], action.action_id))

    async with fake_ami(handler) as server:
        settings = make_settings(server.port, auth="md5", secret="ctisecret",
                                 fully_booted_timeout=0.1, ping_interval=0.1)
        with structlog.testing.capture_logs() as logs:
            async with ami_client(settings) as (client, rec):
                await client.wait_connected(2)  # no FullyBooted: Events off in the trace
                await until(lambda: server.count("Ping") >= 1)
                assert client.connected
                assert rec.connected_at

    challenge, login = server.conns[0].actions[:2]
    assert challenge.name == "Challenge" and challenge["AuthType"] == "MD5"
    assert login.name == "Login"
    assert login["Key"] == trace.action("Login")["Key"] == "671dae1d5958e274099c4336cdcd10e5"
    assert login["AuthType"] == "MD5" and "Secret" not in login
    assert server.count("Logoff") == 1  # stop() logs off politely
    assert "ctisecret" not in repr(logs)
    assert "671dae1d5958e274099c4336cdcd10e5" not in repr(logs)


async def test_recorded_wrong_secret_is_an_auth_failure_not_confused_by_other_replies(
        traces_dir: Path) -> None:
    trace = Trace(traces_dir, "login_failed")

    async def handler(conn: FakeConn) -> None:
        conn.send(BANNER)
        login = await conn.action()
        # the recorded "Permission denied" (for someone else's ActionID), then our refusal
        conn.send(trace.reply("ping-unauth-1", "ping-unauth-1"))
        conn.send(trace.reply("login-bad-1", login.action_id))
        # Asterisk closes after a refused login

    async with fake_ami(handler) as server, \
            ami_client(make_settings(server.port)) as (client, rec):
        await until(lambda: client.status.state is AmiState.AUTH_FAILED)
        status = client.status

    assert "Authentication failed" in (status.last_error or "")
    assert status.auth_failures >= 1 and status.connects == 0
    assert all([a.name for a in conn.actions] == ["Login"] for conn in server.conns)
    assert rec.connected_at == [] and rec.disconnects == []


async def test_a_rejecting_server_sees_few_attempts_with_growing_gaps() -> None:
    loop = asyncio.get_running_loop()
    attempts: list[float] = []

    async def handler(conn: FakeConn) -> None:  # case 09 step 1, for every attempt
        attempts.append(loop.time())
        conn.send(BANNER)
        login = await conn.action()
        conn.send(AUTH_FAILED.format(login.action_id))

    settings_kw = dict(auth_backoff_initial=0.1, auth_backoff_max=1.6, backoff_initial=0.01,
                       backoff_max=0.02)
    with structlog.testing.capture_logs() as logs:
        async with fake_ami(handler) as server, \
                ami_client(make_settings(server.port, **settings_kw)) as (client, rec):
            await asyncio.sleep(2.0)
            status = client.status

    gaps = [b - a for a, b in zip(attempts, attempts[1:])]
    # 0, +0.05..0.1, +0.1..0.2, +0.2..0.4, +0.4..0.8, +0.8..1.6: at most 6 in 2 s
    assert 4 <= len(attempts) <= 6, gaps
    assert all(later >= earlier * 0.9 for earlier, later in zip(gaps, gaps[1:])), gaps
    assert gaps[-1] >= 3 * gaps[0], gaps
    assert status.state is AmiState.AUTH_FAILED
    assert status.auth_failures >= len(attempts) - 1
    refused = [entry for entry in logs if entry["event"] == "ami login refused"]
    assert len(refused) >= len(attempts) - 1
    assert SECRET not in repr(logs)


# --- case 09: restart, FullyBooted, half-open link -----------------------------------------


async def test_case09_login_failure_restart_and_half_open_link() -> None:
    mode = {"now": "reject"}
    loop = asyncio.get_running_loop()

    async def handler(conn: FakeConn) -> None:
        current = mode["now"]
        if current == "reject":
            conn.send(BANNER)
            login = await conn.action()
            conn.send(AUTH_FAILED.format(login.action_id))
            return
        await conn.login(boot_delay=0.3 if current == "slow-boot" else 0.0)
        await conn.serve()

    async with fake_ami(handler) as server:
        settings = make_settings(server.port, auth_backoff_initial=0.1, auth_backoff_max=0.4,
                                 ping_interval=0.2, ping_timeout=0.2, fully_booted_timeout=2.0)
        async with ami_client(settings) as (client, rec):
            # 1. wrong secret: a few slow attempts, status says why
            await asyncio.sleep(0.6)
            assert client.status.state is AmiState.AUTH_FAILED
            assert 2 <= len(server.conns) <= 5

            # 2. credentials fixed: login, FullyBooted, on_connected once
            mode["now"] = "normal"
            await client.wait_connected(2)
            await until(lambda: len(rec.connected_at) == 1)
            assert client.status.auth_failures == 0

            # 3. Shutdown while an Originate is pending: it fails at once
            originate = asyncio.create_task(client.send_action("Originate", {
                "Channel": "Local/101@from-internal", "Context": "from-internal",
                "Exten": "5550000001", "Priority": 1, "Async": True}, timeout=5))
            await until(lambda: server.count("Originate") == 1)
            live = server.conns[-1]
            live.send(SHUTDOWN)
            with pytest.raises(AmiConnectionLost, match="shut down"):
                await asyncio.wait_for(originate, 0.5)
            await server.pause()
            await until(lambda: rec.disconnects)
            assert "Shutdown: Cleanly" in rec.disconnects[0]
            assert rec.named("Shutdown")
            assert not client.connected

            # 4. Asterisk back after a pause; FullyBooted comes late
            await asyncio.sleep(0.3)
            mode["now"] = "slow-boot"
            await server.listen()
            await until(lambda: len(rec.connected_at) == 2, timeout=3)
            booted_at = server.conns[-1].booted_at
            assert booted_at is not None and rec.connected_at[1] >= booted_at
            assert server.count("Originate") == 1  # never re-sent
            server.conns[-1].send(b"Event: UserEvent\r\nUserEvent: Marker\r\n\r\n")
            await until(lambda: rec.named("UserEvent"))
            await asyncio.sleep(0.05)
            assert len(rec.named("UserEvent")) == 1  # one handler, not one per connect

            # 5. half-open link: no data, no FIN; the ping watchdog reconnects
            mode["now"] = "normal"
            silent_since = loop.time()
            server.conns[-1].mute = True
            await until(lambda: len(rec.connected_at) == 3, timeout=3)
            assert loop.time() - silent_since < 1.5
            assert "no reply to Ping" in rec.disconnects[-1]
            assert client.status.connects == 3


async def test_on_connected_waits_at_most_fully_booted_timeout() -> None:
    async def handler(conn: FakeConn) -> None:
        await conn.login(boot_delay=None)  # FullyBooted never comes
        await conn.serve()

    loop = asyncio.get_running_loop()
    async with fake_ami(handler) as server:
        started = loop.time()
        async with ami_client(make_settings(server.port, fully_booted_timeout=0.3)) as (
                client, rec):
            await until(lambda: rec.connected_at)
            assert client.connected

    assert 0.3 <= rec.connected_at[0] - started < 1.0


async def test_one_ping_timer_per_connection_across_reconnects() -> None:
    async def handler(conn: FakeConn) -> None:
        await conn.login()
        if len(server.conns) <= 2:
            await asyncio.sleep(0.15)  # the first two links drop soon after login
            return
        await conn.serve()

    async with fake_ami(handler) as server, \
            ami_client(make_settings(server.port, ping_interval=0.1)) as (client, rec):
        await until(lambda: len(rec.connected_at) == 3)
        third = server.conns[2]
        before = third.count("Ping")
        await asyncio.sleep(0.55)
        pings = third.count("Ping") - before

    assert 3 <= pings <= 7  # ~5; a leaked timer per old link would give 10 or 15
    assert all(conn.actions[0].name == "Login" for conn in server.conns)
    assert len(rec.disconnects) == 3  # two drops + stop()


async def test_failover_to_backup_when_primary_refuses() -> None:
    async with fake_ami(normal) as backup:
        settings = make_settings(free_port(), backup=f"127.0.0.1:{backup.port}")
        async with ami_client(settings) as (client, rec):
            await client.wait_connected(2)
            assert client.status.endpoint == f"127.0.0.1:{backup.port}"
            response = await client.send_action("Ping")
            assert response["Ping"] == "Pong"


async def test_failover_to_backup_when_primary_accepts_but_never_sends_a_banner() -> None:
    async def silent(conn: FakeConn) -> None:
        await asyncio.sleep(5)

    async with fake_ami(silent) as primary, fake_ami(normal) as backup:
        settings = make_settings(primary.port, backup=f"127.0.0.1:{backup.port}",
                                 connect_timeout=0.2)
        async with ami_client(settings) as (client, rec):
            await client.wait_connected(2)
            assert client.status.endpoint == f"127.0.0.1:{backup.port}"
    assert primary.conns and not primary.conns[0].actions  # nothing sent before a banner


# --- case 10: correlation ----------------------------------------------------------------


async def test_case10_replies_in_reverse_order_reach_the_right_callers(cases_dir: Path) -> None:
    sent_block, reply_block = case_blocks(cases_dir, "10")

    async def handler(conn: FakeConn) -> None:
        await conn.login()
        first, second = await conn.action(), await conn.action()
        by_exten = {a["Exten"]: a.action_id for a in (first, second)}
        replies = b"".join(reply_block)
        replies = replies.replace(b"<id1>", by_exten["5550000001"].encode())
        replies = replies.replace(b"<id2>", by_exten["5550000002"].encode())
        conn.send(replies)
        await conn.serve()

    def originate(sent: bytes) -> list[tuple[str, str]]:
        msg = Parser(expect_banner=False).feed(sent)[0]
        return [(k, v) for k, v in msg.pairs if k not in ("Action", "ActionID")]

    with structlog.testing.capture_logs() as logs:
        async with fake_ami(handler) as server, \
                ami_client(make_settings(server.port)) as (client, rec):
            await client.wait_connected(2)
            r1, r2 = await asyncio.gather(
                client.send_action("Originate", originate(sent_block[0])),
                client.send_action("Originate", originate(sent_block[1])))
            await until(lambda: len(rec.named("OriginateResponse")) == 2)
            await asyncio.sleep(0.05)  # let the reply without ActionID arrive too

    sent = {a["Exten"]: a.action_id for a in server.conns[0].actions if a.name == "Originate"}
    assert r1.action_id == sent["5550000001"] and r2.action_id == sent["5550000002"]
    assert r1.action_id != r2.action_id
    assert all(aid.startswith(f"{client.instance_id}-") for aid in sent.values())
    results = [(m.kind, m.action_id, m["Response"]) for m in rec.named("OriginateResponse")]
    assert results == [(Kind.EVENT, sent["5550000002"], "Failure"),
                       (Kind.EVENT, sent["5550000001"], "Success")]
    assert all(m.kind is Kind.EVENT for m in rec.events)
    orphans = [entry for entry in logs if entry["event"] == "ami orphaned response"]
    assert len(orphans) == 1 and orphans[0]["message"] == "Events On"


async def test_reply_without_actionid_resolves_only_a_single_pending_action(
        cases_dir: Path) -> None:
    events_on = case_blocks(cases_dir, "10")[1][-1]  # "Response: Success / Events On"

    async def answer_without_id(conn: FakeConn, action: Message) -> None:
        conn.send(events_on)

    async def handler(conn: FakeConn) -> None:
        await conn.login()
        await conn.serve(answer_without_id)

    async with fake_ami(handler) as server, \
            ami_client(make_settings(server.port)) as (client, rec):
        await client.wait_connected(2)
        alone = await client.send_action("Events", {"EventMask": "on"})
        assert alone["Message"] == "Events On"

        # two pending: two replies without ActionID match neither, both time out
        with pytest.raises(AmiTimeout) as err:
            await asyncio.gather(
                client.send_action("Events", {"EventMask": "on"}, timeout=0.3,
                                   action_id="ev-a"),
                client.send_action("Events", {"EventMask": "on"}, timeout=0.3,
                                   action_id="ev-b"))
    assert "Events" in str(err.value) and "ev-a" in str(err.value)


async def test_caller_supplied_actionid_is_used_exactly_and_never_duplicated(
        traces_dir: Path) -> None:
    trace = Trace(traces_dir, "actions")
    answered = asyncio.Event()

    async def reply(conn: FakeConn, action: Message) -> None:
        await answered.wait()
        conn.send(trace.reply("in-live-1", action.action_id))  # response + OriginateResponse

    async def handler(conn: FakeConn) -> None:
        await conn.login()
        await conn.serve(reply)

    async with fake_ami(handler) as server, \
            ami_client(make_settings(server.port)) as (client, rec):
        await client.wait_connected(2)
        first = asyncio.create_task(client.send_action(
            "Originate", {"actionid": "crm-cb-42", "Channel": "Local/1@x", "Async": True}))
        await until(lambda: server.count("Originate") == 1)
        with pytest.raises(AmiProtocolError, match="crm-cb-42"):
            await client.send_action("Originate", {"Channel": "Local/2@x"},
                                     action_id="crm-cb-42")
        answered.set()
        response = await first
        await until(lambda: rec.named("OriginateResponse"))

    assert server.conns[0].actions[1].action_id == "crm-cb-42"
    assert server.count("Originate") == 1
    assert response.action_id == "crm-cb-42" and response["Message"].startswith("Originate")
    [event] = rec.named("OriginateResponse")
    assert event.action_id == "crm-cb-42" and event["Response"] == "Success"


# --- actions, lists, commands ------------------------------------------------------------


def without_id(msg: Message) -> list[tuple[str, str]]:
    return [(k, v) for k, v in msg.pairs if k != "ActionID"]


def trace_server(trace: Trace, answers: list[str], extra: dict[int, bytes] | None = None,
                 ) -> Callable[[FakeConn], Awaitable[None]]:
    """Answer the client's actions, in order, with the recorded replies of ``answers``.

    ``extra[n]`` is written just after the n-th message of a reply (a live event
    interleaved with list items).
    """
    queue = list(answers)

    async def reply(conn: FakeConn, action: Message) -> None:
        data = trace.reply(queue.pop(0), action.action_id)
        messages = [m + b"\r\n\r\n" for m in data.split(b"\r\n\r\n")[:-1]]
        for n, message in enumerate(messages):
            conn.send(message)
            if extra and n in extra:
                conn.send(extra[n])

    async def handler(conn: FakeConn) -> None:
        await conn.login()
        await conn.serve(reply)

    return handler


async def test_send_list_collects_recorded_items_while_live_events_flow(
        traces_dir: Path) -> None:
    trace = Trace(traces_dir, "actions")
    live = trace.message(146)["raw"].encode()  # a VarSet from the same session
    handler = trace_server(trace, ["csc-1", "qstatus-all-1", "csc-empty-1"], extra={1: live})

    async with fake_ami(handler) as server, \
            ami_client(make_settings(server.port)) as (client, rec):
        await client.wait_connected(2)
        rec.events.clear()
        channels = await client.send_list("CoreShowChannels")
        queues = await client.send_list("QueueStatus")
        empty = await client.send_list("CoreShowChannels")

    for (response, items), recorded in zip((channels, queues, empty),
                                           ("csc-1", "qstatus-all-1", "csc-empty-1")):
        expected = [Parser(expect_banner=False).feed(raw.encode())[0]
                    for raw in trace.replies[recorded]]
        assert response["EventList"] == "start"
        assert [m.name for m in items] == [m.name for m in expected[1:-1]]
        assert [without_id(m) for m in items] == [without_id(m) for m in expected[1:-1]]
        assert all(m.action_id == response.action_id for m in items)
        assert int(expected[-1]["ListItems"]) == len(items)
    assert [m.name for m in channels[1]] == ["CoreShowChannel", "CoreShowChannel"]
    assert len(queues[1]) == 13 and empty[1] == []
    # list items and their Complete events never reach on_event; live events do
    assert [m.name for m in rec.events] == ["VarSet"] * 3


async def test_list_that_times_out_keeps_its_late_items_away_from_on_event(
        traces_dir: Path) -> None:
    trace = Trace(traces_dir, "actions")

    async def late(conn: FakeConn, action: Message) -> None:
        await asyncio.sleep(0.3)
        conn.send(trace.reply("csc-1", action.action_id))
        conn.send(b"Event: UserEvent\r\nUserEvent: After\r\n\r\n")

    async def handler(conn: FakeConn) -> None:
        await conn.login()
        await conn.serve(late)

    async with fake_ami(handler) as server, \
            ami_client(make_settings(server.port)) as (client, rec):
        await client.wait_connected(2)
        with pytest.raises(AmiTimeout, match=r"CoreShowChannels \(ActionID .*complete list"):
            await client.send_list("CoreShowChannels", timeout=0.1)
        await until(lambda: rec.named("UserEvent"))

    assert not rec.named("CoreShowChannel") and not rec.named("CoreShowChannelsComplete")


async def test_command_returns_lines_in_modern_and_legacy_formats(
        traces_dir: Path, cases_dir: Path) -> None:
    trace = Trace(traces_dir, "actions")
    legacy = case_blocks(cases_dir, "03")[2][0].decode()  # Follows with blank lines, cmd-4
    trace.replies["cmd-4"] = [legacy]
    handler = trace_server(trace, ["cmd-channels-1", "cmd-queue-1", "cmd-4", "cmd-bad-1"])

    async with fake_ami(handler) as server, \
            ami_client(make_settings(server.port)) as (client, rec):
        await client.wait_connected(2)
        channels = await client.command("core show channels")
        queue = await client.command("queue show overflow")
        old = await client.command("queue show")
        with pytest.raises(AmiActionError, match="No such command") as err:
            await client.command("no such cli command")

    def recorded_output(action_id: str) -> list[str]:
        return [v for k, v in trace.message(next(
            e["seq"] for e in trace.entries if e["dir"] == "in"
            and ["ActionID", action_id] in e["headers"]))["headers"] if k == "Output"]

    assert channels == recorded_output("cmd-channels-1") and channels[3] == "2 active channels"
    assert queue == recorded_output("cmd-queue-1") and queue[-1] == ""
    assert len(old) == 8 and old[1:4] == ["   No Members", "   No Callers", ""]
    assert err.value.response.output == recorded_output("cmd-bad-1")
    assert [a["Command"] for a in server.conns[0].actions if a.name == "Command"] == [
        "core show channels", "queue show overflow", "queue show", "no such cli command"]


async def test_error_response_raises_with_the_message_unless_check_is_off(
        traces_dir: Path) -> None:
    trace = Trace(traces_dir, "actions")
    handler = trace_server(trace, ["getvar-nochan-1", "getvar-nochan-1", "getvar-1"])

    async with fake_ami(handler) as server, \
            ami_client(make_settings(server.port)) as (client, rec):
        await client.wait_connected(2)
        with pytest.raises(AmiActionError, match=r"Getvar \(ActionID .*\) failed: No such "
                                                 r"channel") as err:
            await client.send_action("Getvar", {"Channel": "Local/nope", "Variable": "X"})
        unchecked = await client.send_action("Getvar", {"Variable": "X"}, check=False)
        ok = await client.send_action("Getvar", {"Variable": "CTI_QUEUE"})

    assert err.value.response["Message"] == "No such channel"
    assert unchecked.name == "Error"
    assert (ok["Variable"], ok["Value"]) == ("CTI_QUEUE", "overflow")  # as recorded


async def test_unanswered_action_times_out_naming_action_and_actionid() -> None:
    async def handler(conn: FakeConn) -> None:
        await conn.login()
        await conn.serve(lambda conn, action: asyncio.sleep(0))  # never answers

    async with fake_ami(handler) as server, \
            ami_client(make_settings(server.port, action_timeout=0.2)) as (client, rec):
        await client.wait_connected(2)
        with pytest.raises(AmiTimeout, match=r"QueueAdd \(ActionID x-1\).*0\.2s"):
            await client.send_action("QueueAdd", {"Queue": "vip"}, action_id="x-1")
        assert client.connected  # a slow action is not a dead link


async def test_bad_bytes_and_a_failing_handler_do_not_stop_the_reader() -> None:
    async def handler(conn: FakeConn) -> None:
        await conn.login()
        conn.send(b"\xff\xfe garbage without colon\r\n\r\n")
        conn.send(b"Event: Boom\r\nCallerIDName: \xd0\r\n\r\n")
        conn.send(b"Event: Newchannel\r\nUniqueid: 1.1\r\n\r\n")
        await conn.serve()

    rec_events: list[str] = []

    def on_event(msg: Message) -> None:
        rec_events.append(msg.name)
        if msg.name == "Boom":
            raise RuntimeError("handler bug")

    async with fake_ami(handler) as server:
        client = AmiClient(make_settings(server.port), on_event=on_event)
        await client.start()
        try:
            await until(lambda: "Newchannel" in rec_events)
            assert client.connected
            assert (await client.send_action("Ping"))["Ping"] == "Pong"
        finally:
            await client.stop()

    assert rec_events == ["FullyBooted", "Boom", "Newchannel"]
    assert len(server.conns) == 1
