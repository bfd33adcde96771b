"""The trace replayer: a recorded Asterisk session served again, byte for byte."""

from __future__ import annotations

import asyncio
import time

import pytest

from cti.ami.protocol import Parser
from cti.errors import AmiProtocolError
from cti.sim.replay import AgiReplayer, Recording, TraceReplayer, rewrite_action_id


async def read_all(reader: asyncio.StreamReader, quiet: float = 0.3) -> bytes:
    """Everything the server sends until it has been silent for ``quiet`` seconds."""
    data = b""
    while True:
        try:
            chunk = await asyncio.wait_for(reader.read(1 << 20), quiet)
        except asyncio.TimeoutError:
            return data
        if not chunk:
            return data
        data += chunk


def action(name: str, **headers: str) -> bytes:
    lines = [f"Action: {name}"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.fixture
async def replayer(traces_dir):
    servers: list[TraceReplayer] = []

    async def make(name: str, speed: float = 0) -> TraceReplayer:
        server = TraceReplayer(traces_dir / f"{name}.ami.raw", speed=speed)
        await server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.stop()


async def test_replay_sends_banner_login_with_clients_actionid_then_the_recording(
        traces_dir, replayer):
    server = await replayer("inbound_answered")
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(action("Login", ActionID="my-login-7", Username="cti", Secret="anything"))
    await server.wait_done(5)
    received = await read_all(reader)
    writer.close()

    raw = (traces_dir / "inbound_answered.ami.raw").read_bytes()
    banner, rest = raw.split(b"\r\n", 1)
    blocks = [b + b"\r\n\r\n" for b in rest.split(b"\r\n\r\n")[:-1]]
    assert blocks[0].startswith(b"Response: Success\r\nActionID: login-1\r\n")
    expected = (banner + b"\r\n" + blocks[0].replace(b"login-1", b"my-login-7")
                + b"".join(blocks[1:]))
    assert received == expected
    assert len(Parser().feed(received)) == 218


async def test_replay_answers_ping_and_an_empty_channel_list(replayer):
    server = await replayer("login_md5", speed=1.0)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(action("Ping", ActionID="too-early"))
    writer.write(action("Login", ActionID="l", Username="cti", Secret="x"))
    writer.write(action("CoreShowChannels", ActionID="csc-9"))
    writer.write(action("Ping", ActionID="p-9"))
    msgs = Parser().feed(await read_all(reader))
    writer.close()

    by_id = {}
    for m in msgs:
        by_id.setdefault(m.action_id, []).append(m)
    assert by_id["too-early"][0]["Message"] == "Permission denied"
    assert [m.name for m in by_id["csc-9"]] == ["Success", "CoreShowChannelsComplete"]
    assert by_id["csc-9"][1]["ListItems"] == "0"
    # the recording's own Ping (ping-1) went to our first Ping after login
    assert [m.name for m in by_id["p-9"]] == ["Success"]
    assert by_id["p-9"][0]["Ping"] == "Pong"
    assert "ping-1" not in by_id


async def test_replay_gives_the_recorded_reply_of_an_action_the_client_also_sends(replayer):
    server = await replayer("inbound_answered")
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(action("Login", ActionID="l-1", Username="cti", Secret="x")
                 + action("Originate", ActionID="orig-77", Channel="Local/5550100@from-pstn",
                          Context="caller-sim", Exten="hold", Priority="1", Async="true"))
    await server.wait_done(5)
    msgs = Parser().feed(await read_all(reader))
    writer.close()

    queued = [m for m in msgs if m.kind.name == "RESPONSE" and m.action_id == "orig-77"]
    outcome = [m for m in msgs if m.name == "OriginateResponse"]
    assert [m["Message"] for m in queued] == ["Originate successfully queued"]
    assert [m.action_id for m in outcome] == ["orig-77"]
    assert not [m for m in msgs if m.action_id == "in-answered-1"]


async def test_replay_keeps_the_recorded_pace_divided_by_speed(replayer):
    server = await replayer("inbound_answered", speed=10.0)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    started = time.monotonic()
    writer.write(action("Login", ActionID="l", Username="cti", Secret="x"))
    await server.wait_done(10)
    elapsed = time.monotonic() - started
    writer.close()

    # the last recorded message came 7.02 s after the login answer
    assert elapsed >= 0.6


def test_recording_without_banner_is_refused(tmp_path):
    bad = tmp_path / "bad.ami.raw"
    bad.write_bytes(b"Response: Success\r\n\r\n")
    with pytest.raises(AmiProtocolError, match="banner"):
        Recording.load(bad)


def test_rewrite_action_id_touches_only_that_header():
    block = b"Event: OriginateResponse\r\nActionID: in-1\r\nChannel: ActionID-x\r\n\r\n"
    assert rewrite_action_id(block, "mine") == \
        b"Event: OriginateResponse\r\nActionID: mine\r\nChannel: ActionID-x\r\n\r\n"


async def test_agi_replayer_plays_asterisks_side_of_the_recorded_session(traces_dir):
    received: list[bytes] = []

    async def fastagi(reader, writer):
        env = b""
        while (line := await reader.readline()) not in (b"\n", b""):
            env += line
        received.append(env)
        for command in ("GET VARIABLE CALLERID(name)", "GET VARIABLE NOT_RECORDED",
                        'SET VARIABLE CTI_QUEUE "vip"'):
            writer.write(command.encode() + b"\n")
            await writer.drain()
            received.append(await reader.readline())
        writer.close()

    server = await asyncio.start_server(fastagi, "127.0.0.1", 0)
    player = AgiReplayer(traces_dir / "inbound_answered.agi.jsonl")
    commands = await player.play("127.0.0.1", server.sockets[0].getsockname()[1])
    server.close()

    raw = (traces_dir / "inbound_answered.agi.raw").read_bytes()
    assert received[0] + b"\n" == raw[:raw.index(b"\n\n") + 2]
    assert received[0].endswith(b"agi_arg_1: 5550100\n")
    assert received[1:] == [b"200 result=1 (Alice Smith)\n", b"200 result=0\n",
                            b"200 result=1\n"]
    assert commands == ["GET VARIABLE CALLERID(name)", "GET VARIABLE NOT_RECORDED",
                        'SET VARIABLE CTI_QUEUE "vip"']
