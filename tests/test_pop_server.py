"""PopServer with real websocket clients on 127.0.0.1 (case 22 and the protocol rules).

Clients are either ``websockets`` clients or a raw TCP socket driven by the sans-I/O
client protocol, for peers that stop reading or answering (a frozen laptop).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import orjson
import pytest
from pydantic import SecretStr
from websockets.asyncio.client import ClientConnection, connect
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State
from websockets.uri import parse_uri

from cti.calls.model import AgentLeg, Call, CallState, CallUpdate, Change, LegState
from cti.config import AgentSettings, PopSettings
from cti.pops.book import PopBook
from cti.pops.server import MAX_BAD_FRAMES, CloseCode, PopServer

AGENTS = [AgentSettings(id=i, name=f"Agent {i}", token=SecretStr(f"t-{i}"))
          for i in ("101", "102", "103")]
# Small heartbeats so dead peers are found fast; enough slack for a loaded CI machine.
FAST = dict(heartbeat_interval=0.2, heartbeat_timeout=0.4, auth_timeout=1.0)


# --- fixtures and helpers ----------------------------------------------------------------


async def started(**overrides) -> tuple[PopServer, PopBook]:
    settings = PopSettings(host="127.0.0.1", port=0, **{**FAST, **overrides})
    book = PopBook()
    server = PopServer(settings, AGENTS, book)
    await server.start()
    return server, book


@pytest.fixture
async def pops() -> AsyncIterator[tuple[PopServer, PopBook]]:
    server, book = await started()
    yield server, book
    await server.stop()
    assert server.connection_count == 0 and server.connected_agents() == {}


async def recv(ws: ClientConnection, timeout: float = 2.0) -> dict:
    async with asyncio.timeout(timeout):
        return orjson.loads(await ws.recv())


async def login(server: PopServer, agent: str, token: str | None = None,
                path: str = "/agent") -> tuple[ClientConnection, dict, dict]:
    ws = await connect(f"ws://127.0.0.1:{server.port}{path}")
    await ws.send(orjson.dumps({"type": "auth", "agent": agent,
                                "token": token or f"t-{agent}"}).decode())
    hello, snapshot = await recv(ws), await recv(ws)
    assert hello["type"] == "hello" and snapshot["type"] == "snapshot"
    return ws, hello, snapshot


async def until_closed(ws: ClientConnection, timeout: float = 3.0) -> tuple[int, str, list[dict]]:
    """Read until the server closes; return (code, reason, messages read before)."""
    got: list[dict] = []
    async with asyncio.timeout(timeout):
        try:
            while True:
                got.append(orjson.loads(await ws.recv()))
        except ConnectionClosed as exc:
            assert exc.rcvd is not None, "closed without a close frame"
            return exc.rcvd.code, exc.rcvd.reason, got


async def eventually(check, timeout: float = 3.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


class RawClient:
    """A websocket client over a bare socket that reads only when told to."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 proto: ClientProtocol) -> None:
        self.reader, self.writer, self.proto = reader, writer, proto

    @classmethod
    async def login(cls, port: int, agent: str, rcvbuf: int | None = None) -> RawClient:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            # Small receive window so the server's writes back up quickly.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=1024)
        proto = ClientProtocol(parse_uri(f"ws://127.0.0.1:{port}/agent"))
        proto.send_request(proto.connect())
        client = cls(reader, writer, proto)
        client.flush()
        while proto.state is State.CONNECTING:
            proto.receive_data(await reader.read(4096))
        assert proto.state is State.OPEN
        proto.send_text(orjson.dumps({"type": "auth", "agent": agent, "token": f"t-{agent}"}))
        client.flush()
        return client

    def flush(self) -> None:
        self.writer.write(b"".join(self.proto.data_to_send()))

    def abort(self) -> None:
        self.writer.transport.abort()


def make_call(call_id: str = "L1") -> Call:
    return Call(call_id=call_id, started_at=1.0, caller_num="5550000001", caller_name="ACME Corp")


def leg(agent: str, uniqueid: str) -> AgentLeg:
    return AgentLeg(agent=agent, interface=f"PJSIP/{agent}", member_name=None,
                    channel=f"PJSIP/{agent}-0001", uniqueid=uniqueid, queue="sales", ring_at=2.0)


# --- case 22 ---------------------------------------------------------------------------


async def test_case22_pop_reaches_only_the_rung_agents_sockets(pops):
    server, book = pops
    a, _, _ = await login(server, "101")
    c, _, _ = await login(server, "103")                # connected throughout, never rung
    call = make_call()
    server.publish(book.apply(CallUpdate(Change.AGENT_RINGING, call, leg("101", "u1"))))

    pop = await recv(a)
    assert (pop["type"], pop["call_id"], pop["caller"]["number"]) == ("pop", "L1", "5550000001")

    # Anything queued for C would arrive before the answer to this ping.
    await c.send('{"type": "ping", "id": 7}')
    pong = await recv(c)
    assert (pong["type"], pong["id"]) == ("pong", 7)
    assert server.counters.unrouted == 0
    await a.close()
    await c.close()


async def test_case22_reconnect_after_frozen_socket_gets_a_snapshot_without_the_ended_call(pops):
    server, book = pops
    frozen = await RawClient.login(server.port, "101")   # authenticates, then stops answering
    await eventually(lambda: server.connected_agents() == {"101": 1})
    call = make_call()
    call.legs = [leg("101", "u1"), leg("102", "u2")]
    server.publish(book.apply(CallUpdate(Change.AGENT_RINGING, call, call.legs[0])))
    server.publish(book.apply(CallUpdate(Change.AGENT_RINGING, call, call.legs[1])))

    # Meanwhile 102 answers, 101's ringing ends, the call hangs up.
    call.legs[1].state = LegState.CONNECTED
    server.publish(book.apply(CallUpdate(Change.AGENT_CONNECTED, call, call.legs[1])))
    call.legs[0].state = LegState.ANSWERED_ELSEWHERE
    server.publish(book.apply(CallUpdate(Change.AGENT_RING_ENDED, call, call.legs[0])))
    call.state = CallState.ENDED
    server.publish(book.apply(CallUpdate(Change.ENDED, call)))

    # The heartbeat finds the frozen socket and releases it.
    await eventually(lambda: server.connection_count == 0)
    assert server.connected_agents() == {}

    again, hello, snapshot = await login(server, "101")
    assert snapshot["pops"] == []                     # no stale ringing pop for L1
    assert snapshot["seq"] == hello["seq"] == book.current_seq("101") > 0
    frozen.abort()
    await again.close()


async def test_reconnect_while_a_call_still_rings_gets_it_in_the_snapshot(pops):
    server, book = pops
    call = make_call()
    server.publish(book.apply(CallUpdate(Change.AGENT_RINGING, call, leg("101", "u1"))))
    assert server.counters.unrouted == 1                # nobody was connected

    ws, _, snapshot = await login(server, "101")
    assert [(p["call_id"], p["state"]) for p in snapshot["pops"]] == [("L1", "ringing")]
    assert snapshot["pops"][0]["caller"]["name"] == "ACME Corp"
    await ws.close()


async def test_case22_two_tabs_of_one_agent_get_the_same_pops(pops):
    server, book = pops
    tab_a, _, _ = await login(server, "101")
    tab_b, _, _ = await login(server, "101", path="/")
    assert server.connected_agents() == {"101": 2}
    call = make_call()
    server.publish(book.apply(CallUpdate(Change.AGENT_RINGING, call, leg("101", "u1"))))
    server.publish(book.set_profile("L1", None))

    got_a = [await recv(tab_a), await recv(tab_a)]
    got_b = [await recv(tab_b), await recv(tab_b)]
    assert got_a == got_b
    assert [m["type"] for m in got_a] == ["pop", "pop_update"]
    await tab_a.close()
    await tab_b.close()


async def test_case22_vanished_clients_are_released_within_the_heartbeat_timeout(pops):
    server, _ = pops
    clients = [await login(server, agent) for agent in ("101", "102", "103") * 3]
    frozen = [await RawClient.login(server.port, "101") for _ in range(3)]
    await eventually(lambda: server.connection_count == 12)

    for ws, _, _ in clients:
        ws.transport.abort()                            # no closing handshake at all
    # Frozen peers keep TCP open but never answer pings: only the heartbeat finds them.
    await eventually(lambda: server.connection_count == 0)
    assert server.connected_agents() == {}
    assert server.counters.closed == 12
    for raw in frozen:
        raw.abort()


# --- slow readers --------------------------------------------------------------------


async def test_a_tab_that_never_reads_is_closed_without_delaying_the_other_tab():
    server, _ = await started(send_queue=8)
    try:
        fast, _, _ = await login(server, "101")
        slow = await RawClient.login(server.port, "101", rcvbuf=4096)
        await eventually(lambda: server.connected_agents() == {"101": 2})

        pad = "x" * 16_000
        received = []
        for n in range(1, 3000):
            server.publish([("101", {"type": "pop_update", "seq": n, "call_id": "L1",
                                     "version": n, "pad": pad})])
            # Functional bound, not a benchmark: each message must arrive while the
            # slow tab's queue is filling up.
            received.append((await recv(fast, timeout=2.0))["seq"])
            if server.counters.slow_closed:
                break

        assert server.counters.slow_closed == 1
        assert received == list(range(1, n + 1))        # nothing lost or reordered
        await eventually(lambda: server.connection_count == 1)
        assert server.connected_agents() == {"101": 1}

        server.publish([("101", {"type": "pop", "seq": n + 1, "call_id": "L2", "version": 1})])
        assert (await recv(fast))["call_id"] == "L2"
        slow.abort()
        await fast.close()
    finally:
        await server.stop()
    assert server.connection_count == 0


async def test_a_socket_whose_send_is_stuck_is_closed_after_the_heartbeat_window():
    # The queue never fills (few, big messages) but the peer stopped reading.
    server, _ = await started(send_queue=256)
    try:
        slow = await RawClient.login(server.port, "101", rcvbuf=4096)
        await eventually(lambda: server.connected_agents() == {"101": 1})
        pad = "y" * 32_000
        server.publish([("101", {"type": "pop_update", "seq": n, "pad": pad})
                        for n in range(200)])
        await eventually(lambda: server.counters.slow_closed == 1)
        await eventually(lambda: server.connection_count == 0)
        slow.abort()
    finally:
        await server.stop()


# --- authentication and bad input -------------------------------------------------------


@pytest.mark.parametrize("auth", [
    {"type": "auth", "agent": "101", "token": "wrong"},
    {"type": "auth", "agent": "999", "token": "t-999"},
    {"type": "auth", "agent": "101", "token": ""},
])
async def test_bad_credentials_are_closed_with_a_reason(pops, auth):
    server, _ = pops
    ws = await connect(f"ws://127.0.0.1:{server.port}/agent")
    await ws.send(orjson.dumps(auth).decode())
    code, reason, got = await until_closed(ws)
    assert (code, reason) == (CloseCode.POLICY_VIOLATION, "authentication failed")
    assert [(m["type"], m["code"]) for m in got] == [("error", "auth_failed")]
    assert server.counters.auth_failed == 1 and server.connected_agents() == {}


@pytest.mark.parametrize("first,code", [
    ("hello?", "bad_json"),
    ('{"type": "ping"}', "auth_required"),
    ('{"type": "auth", "agent": "101"}', "bad_message"),
    (b"\x00\x01", "binary_frame"),
])
async def test_first_frame_must_be_an_auth(pops, first, code):
    server, _ = pops
    ws = await connect(f"ws://127.0.0.1:{server.port}/")
    await ws.send(first)
    close_code, reason, got = await until_closed(ws)
    assert close_code == CloseCode.POLICY_VIOLATION and reason == f"expected auth: {code}"
    assert got[0]["code"] == code and got[0]["message"]


async def test_no_auth_frame_within_auth_timeout_closes():
    server, _ = await started(auth_timeout=0.3)
    try:
        ws = await connect(f"ws://127.0.0.1:{server.port}/agent")
        code, reason, got = await until_closed(ws)
        assert code == CloseCode.POLICY_VIOLATION and reason.startswith("auth timeout")
        assert got[0]["code"] == "auth_timeout"
        assert server.counters.auth_timeout == 1
        await eventually(lambda: server.connection_count == 0)
    finally:
        await server.stop()


async def test_garbage_frames_get_errors_then_a_1008_close_and_others_are_unaffected(pops):
    server, book = pops
    bad, _, _ = await login(server, "101")
    other, _, _ = await login(server, "102")
    garbage = ["not json", b"\x00binary", '{"type": "dance"}', "[1, 2]", '{"no": "type"}',
               '{"type": "auth", "agent": "101", "token": "t-101"}']
    expected = ["bad_json", "binary_frame", "unknown_type", "bad_message", "bad_message",
                "already_authenticated"]
    for frame in garbage:
        await bad.send(frame)
    assert [(await recv(bad))["code"] for _ in garbage] == expected

    for _ in range(MAX_BAD_FRAMES):
        await bad.send("{")
    code, reason, got = await until_closed(bad)
    assert code == CloseCode.POLICY_VIOLATION and "too many invalid frames" in reason
    assert len(got) == MAX_BAD_FRAMES + 1 - len(garbage)
    assert {m["code"] for m in got} == {"bad_json"}

    server.publish(book.apply(CallUpdate(Change.AGENT_RINGING, make_call(), leg("102", "u2"))))
    assert (await recv(other))["type"] == "pop"
    await other.close()


async def test_ping_gets_pong_and_snapshot_request_gets_a_snapshot(pops):
    server, book = pops
    ws, _, _ = await login(server, "101")
    server.publish(book.apply(CallUpdate(Change.AGENT_RINGING, make_call(), leg("101", "u1"))))
    pop = await recv(ws)
    await ws.send('{"type": "ping", "id": "abc"}')
    await ws.send('{"type": "snapshot"}')
    pong, snap = await recv(ws), await recv(ws)
    assert (pong["type"], pong["id"], pong["seq"]) == ("pong", "abc", pop["seq"])
    assert snap["type"] == "snapshot" and snap["pops"][0]["version"] == pop["version"]
    await ws.close()


# --- caps --------------------------------------------------------------------------------


async def test_more_tabs_than_max_per_agent_closes_the_oldest_with_4000():
    server, _ = await started(max_per_agent=2)
    try:
        oldest, _, _ = await login(server, "101")
        middle, _, _ = await login(server, "101")
        newest, _, _ = await login(server, "101")
        code, reason, _ = await until_closed(oldest)
        assert code == CloseCode.REPLACED and "max_per_agent=2" in reason
        assert server.connected_agents() == {"101": 2}
        assert middle.state is State.OPEN and newest.state is State.OPEN
        await middle.close()
        await newest.close()
    finally:
        await server.stop()


async def test_over_max_connections_is_rejected_with_1013():
    server, _ = await started(max_connections=2)
    try:
        one, _, _ = await login(server, "101")
        two, _, _ = await login(server, "102")
        three = await connect(f"ws://127.0.0.1:{server.port}/agent")
        code, reason, _ = await until_closed(three)
        assert code == CloseCode.TRY_AGAIN_LATER and "max_connections=2" in reason
        assert server.counters.rejected_full == 1
        await one.close()
        await eventually(lambda: server.connection_count == 1)
        four, _, _ = await login(server, "103")          # room again
        await two.close()
        await four.close()
    finally:
        await server.stop()


# --- HTTP side and shutdown ---------------------------------------------------------------


async def http_get(port: int, path: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    return data


async def test_console_page_is_served_and_unknown_paths_are_404(pops):
    server, _ = pops
    page = await http_get(server.port, "/console?agent=101")
    assert page.startswith(b"HTTP/1.1 200") and b"text/html" in page and b"<html" in page
    missing = await http_get(server.port, "/nope")
    assert missing.startswith(b"HTTP/1.1 404")


async def test_stop_closes_agents_with_1001():
    server, _ = await started()
    ws, _, _ = await login(server, "101")
    stopping = asyncio.create_task(server.stop())
    code, _, _ = await until_closed(ws)
    await stopping
    assert code == CloseCode.GOING_AWAY and server.connection_count == 0
