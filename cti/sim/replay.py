"""Serve a recorded Asterisk session again: AMI from ``*.ami.raw``, FastAGI from ``*.agi.jsonl``.

:class:`TraceReplayer` is an AMI server that plays one recorded session to
each client that connects: the banner, a Login answer carrying the client's
own ActionID, then every recorded message byte for byte, paced by the
recorded times (from the ``.ami.jsonl`` beside the raw file) divided by
``speed``. When the client sends an action the recording also sent (same
name, same order), the recorded reply is rewritten to the client's ActionID;
Ping, CoreShowChannels (empty), Status/QueueStatus (empty), Events and Logoff
are answered live so a real client can run against it.

:class:`AgiReplayer` plays Asterisk's side of a recorded FastAGI session
against a FastAGI server: the exact environment bytes, then the recorded
reply to each ``GET VARIABLE`` and ``200 result=1`` to anything else.

``cti replay FILE.ami.raw`` calls :func:`serve_replay`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from cti.ami.protocol import Kind, Message, Parser
from cti.errors import AgiProtocolError, AmiProtocolError
from cti.log import get_logger

log = get_logger(__name__)

_ACTION_ID = re.compile(rb"^(ActionID: )(.*?)(\r)$", re.I | re.M)
_TERMINATOR = b"\r\n\r\n"


@dataclass
class Recording:
    """A recorded AMI session: what the server sent and what the client asked."""

    banner: bytes
    blocks: list[bytes]                 # each message with its blank-line terminator
    times: list[float] | None           # recorded arrival time per block, if known
    actions: list[tuple[str, str]]      # (action name, ActionID) the client sent, in order
    action_ids: list[str | None] = field(default_factory=list)   # ActionID per block
    is_response: list[bool] = field(default_factory=list)

    @classmethod
    def load(cls, raw_path: str | Path) -> Recording:
        """Read ``NAME.ami.raw`` (+ ``NAME.ami.jsonl`` or ``NAME.ami.sent`` beside it).

        Raises AmiProtocolError when the file has no banner line.
        """
        raw_path = Path(raw_path)
        data = raw_path.read_bytes()
        nl = data.find(b"\n")
        if nl < 0 or not data.startswith(b"Asterisk Call Manager/"):
            raise AmiProtocolError(f"{raw_path}: expected an AMI recording starting with the "
                                   "'Asterisk Call Manager/' banner")
        banner, body = data[:nl + 1], data[nl + 1:]
        blocks = [b + _TERMINATOR for b in body.split(_TERMINATOR)[:-1]]
        stem = raw_path.name.removesuffix(".raw")
        times = None
        actions: list[tuple[str, str]] = []
        jsonl = raw_path.with_name(stem + ".jsonl")
        sent = raw_path.with_name(stem + ".sent")
        if jsonl.exists():
            rows = [json.loads(line) for line in jsonl.read_text("utf-8").splitlines() if line]
            incoming = [r["t"] for r in rows if r["dir"] == "in"]
            if len(incoming) == len(blocks) + 1:   # + the banner
                times = incoming[1:]
            else:
                log.warning("replay.timing_ignored", file=str(jsonl),
                            messages=len(blocks), timed=len(incoming) - 1)
            for r in rows:
                if r["dir"] == "out":
                    aid = next((v for k, v in r["headers"] if k.lower() == "actionid"), "")
                    actions.append((r["name"], aid))
        elif sent.exists():
            for msg in Parser(expect_banner=False).feed(sent.read_bytes()):
                actions.append((msg.get("Action", ""), msg.get("ActionID", "")))
        rec = cls(banner, blocks, times, actions)
        for block in blocks:
            m = _ACTION_ID.search(block)
            rec.action_ids.append(m.group(2).decode("utf-8", "replace") if m else None)
            rec.is_response.append(block[:9].lower() == b"response:")
        return rec

    def reply_index(self, action_id: str) -> int | None:
        """Index of the recorded response to the recorded action ``action_id``."""
        for i, (aid, resp) in enumerate(zip(self.action_ids, self.is_response)):
            if resp and aid == action_id:
                return i
        return None


def rewrite_action_id(block: bytes, new_id: str) -> bytes:
    """The same message with its ``ActionID`` header set to ``new_id``."""
    return _ACTION_ID.sub(lambda m: m.group(1) + new_id.encode() + m.group(3), block, count=1)


class _Client:
    """One connection being replayed to."""

    def __init__(self, rec: Recording, writer: asyncio.StreamWriter) -> None:
        self.rec = rec
        self.writer = writer
        self.ids: dict[str, str] = {}           # recorded ActionID -> client's
        self.used: set[int] = set()             # recorded actions already matched
        self.sent_upto = -1                     # last block index streamed
        self.logged_in = asyncio.Event()
        self.login_index: int | None = None
        self.closed = False

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.writer.write(data)

    def render(self, i: int) -> bytes:
        block = self.rec.blocks[i]
        aid = self.rec.action_ids[i]
        if aid is not None and aid in self.ids:
            return rewrite_action_id(block, self.ids[aid])
        return block


class TraceReplayer:
    """Serve one recorded ``*.ami.raw`` to every client that connects.

    ``await start()``, read :attr:`port`, ``await wait_done()`` (the first
    client got every recorded message), ``await stop()``. ``speed`` divides the
    recorded pauses; 0 or ``inf`` streams as fast as the socket takes it.
    """

    def __init__(self, raw_path: str | Path, host: str = "127.0.0.1", port: int = 0,
                 speed: float = 1.0,
                 before_block: Callable[[bytes], Awaitable[None]] | None = None) -> None:
        """``before_block`` is awaited before each recorded message is sent, after the
        earlier ones reached the socket: a test uses it to play the FastAGI session
        at the moment Asterisk ran ``AGI()`` (the dialplan waits for it there too)."""
        if speed < 0:
            raise ValueError(f"replay speed must be >= 0, got {speed!r}")
        self.path = Path(raw_path)
        self.recording = Recording.load(self.path)
        self.host = host
        self.speed = speed
        self.before_block = before_block
        self._port = port
        self._server: asyncio.AbstractServer | None = None
        self._done = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self._clients: set[_Client] = set()
        self.clients_served = 0

    async def start(self) -> None:
        self._done = asyncio.Event()
        self._server = await asyncio.start_server(self._serve, self.host, self._port)
        self._port = self._server.sockets[0].getsockname()[1]
        log.info("replay.started", file=str(self.path), port=self._port,
                 messages=len(self.recording.blocks), speed=self.speed)

    @property
    def port(self) -> int:
        return self._port

    async def wait_done(self, timeout: float | None = None) -> None:
        """Wait until a client has received the whole recording (raises TimeoutError)."""
        await asyncio.wait_for(self._done.wait(), timeout)

    async def stop(self) -> None:
        for client in list(self._clients):
            client.closed = True
            client.writer.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None

    # -- one client --------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = _Client(self.recording, writer)
        self._clients.add(client)
        task = asyncio.current_task()
        if task:
            self._tasks.add(task)
        streamer: asyncio.Task | None = None
        try:
            client.write(self.recording.banner)
            streamer = asyncio.get_running_loop().create_task(self._stream(client))
            parser = Parser(expect_banner=False)
            while not client.closed:
                data = await reader.read(65536)
                if not data:
                    break
                for msg in parser.feed(data):
                    self._action(client, msg)
                    if client.closed:
                        break
                await writer.drain()
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass
        finally:
            if streamer:
                streamer.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await streamer
            client.closed = True
            writer.close()
            self._clients.discard(client)
            if task:
                self._tasks.discard(task)

    def _action(self, client: _Client, msg: Message) -> None:
        if msg.kind != Kind.ACTION:
            return
        name, aid = msg.name, msg.get("ActionID")
        key = name.lower()
        rec = self.recording
        if key == "challenge":
            client.write(_reply("Success", aid, ("Challenge", "424242424")))
            return
        if key == "login" and not client.logged_in.is_set():
            recorded = next(((i, a) for i, (n, a) in enumerate(rec.actions)
                             if n.lower() == "login"), None)
            index = rec.reply_index(recorded[1]) if recorded and recorded[1] else None
            if recorded:
                client.used.add(recorded[0])
                if aid is not None:
                    client.ids[recorded[1]] = aid
            if index is not None:
                client.login_index = index
                block = rec.blocks[index]
                client.write(rewrite_action_id(block, aid) if aid is not None else block)
                client.sent_upto = max(client.sent_upto, index)
                if block.startswith(b"Response: Error"):
                    client.closed = True
                    client.writer.close()
                    return
            else:
                client.write(_reply("Success", aid, ("Message", "Authentication accepted")))
            client.logged_in.set()
            return
        if not client.logged_in.is_set():
            client.write(_reply("Error", aid, ("Message", "Permission denied")))
            return
        # an action the recording also made: its recorded reply becomes this one's.
        # Not CoreShowChannels: a client sends it on connect to rebuild its calls, and
        # must not wait for the recording to reach the point where it was sent.
        for i, (n, raid) in enumerate(rec.actions):
            if key == "coreshowchannels":
                break
            if i in client.used or n.lower() != key or not raid:
                continue
            client.used.add(i)
            if aid is not None:
                client.ids[raid] = aid
            index = rec.reply_index(raid)
            if index is not None and index <= client.sent_upto:
                client.write(client.render(index))   # its time has passed: answer now
            return
        if key == "ping":
            client.write(_reply("Success", aid, ("Ping", "Pong"),
                                ("Timestamp", f"{time.time():.6f}")))
        elif key == "logoff":
            client.write(_reply("Goodbye", aid, ("Message", "Thanks for all the fish.")))
            client.closed = True
            client.writer.close()
        elif key in ("coreshowchannels", "status", "queuestatus"):
            done = {"coreshowchannels": "CoreShowChannelsComplete", "status": "StatusComplete",
                    "queuestatus": "QueueStatusComplete"}[key]
            client.write(_reply("Success", aid, ("EventList", "start"),
                                ("Message", "Channels will follow")))
            pairs = [("Event", done)] + ([("ActionID", aid)] if aid is not None else [])
            pairs += [("EventList", "Complete"), ("ListItems", "0")]
            client.write(Message(Kind.EVENT, done, None, pairs).to_text().encode())
        elif key == "events":
            client.write(_reply("Success", aid, ("Events", "On")))
        else:
            client.write(_reply("Error", aid, ("Message",
                                               f"{name} is not available in a trace replay")))

    async def _stream(self, client: _Client) -> None:
        rec = self.recording
        await client.logged_in.wait()
        loop = asyncio.get_running_loop()
        fast = self.speed == 0 or math.isinf(self.speed)
        base_t = rec.times[client.login_index] if rec.times and client.login_index is not None \
            else (rec.times[0] if rec.times else 0.0)
        started = loop.time()
        for i in range(len(rec.blocks)):
            if client.closed:
                return
            if i == client.login_index:
                continue
            if not fast and rec.times:
                wait = started + (rec.times[i] - base_t) / self.speed - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
            if self.before_block is not None:
                await client.writer.drain()
                await self.before_block(rec.blocks[i])
            client.write(client.render(i))
            client.sent_upto = max(client.sent_upto, i)
            if client.writer.transport.get_write_buffer_size() > 1 << 20:
                await client.writer.drain()
        with contextlib.suppress(ConnectionError, OSError):
            await client.writer.drain()
        self.clients_served += 1
        self._done.set()
        log.info("replay.done", file=str(self.path), messages=len(rec.blocks))


def _reply(status: str, action_id: str | None, *pairs: tuple[str, str]) -> bytes:
    head = [("Response", status)] + ([("ActionID", action_id)] if action_id is not None else [])
    return Message(Kind.RESPONSE, status, None, head + list(pairs)).to_text().encode()


async def serve_replay(path: str | Path, host: str = "127.0.0.1", port: int = 0,
                       speed: float = 1.0) -> int:
    """Serve ``path`` until a client has received all of it; prints the port first.

    Returns the number of recorded messages. Raises AmiProtocolError for a file
    that is not an AMI recording.
    """
    replayer = TraceReplayer(path, host, port, speed)
    await replayer.start()
    print(f"replaying {path} on {host}:{replayer.port} (speed {speed})", flush=True)
    try:
        await replayer.wait_done()
        await asyncio.sleep(0.2)    # let the client read the tail before the socket goes
    finally:
        await replayer.stop()
    return len(replayer.recording.blocks)


# --- FastAGI ------------------------------------------------------------------------


@dataclass
class AgiSession:
    """One recorded FastAGI session: the env bytes and the replies to commands."""

    env: bytes
    replies: dict[str, str]      # command line -> recorded reply line
    commands: list[str]          # what the recorded server sent, in order


class AgiReplayer:
    """Play Asterisk's side of recorded FastAGI sessions against a FastAGI server.

    ``AgiReplayer(path)`` loads every session of a ``*.agi.jsonl``;
    ``await play(host, port, session=0)`` returns the commands the server sent.
    Raises AgiProtocolError for a file without sessions.
    """

    def __init__(self, jsonl_path: str | Path) -> None:
        self.path = Path(jsonl_path)
        self.sessions: list[AgiSession] = []
        for line in self.path.read_text("utf-8").splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            raw_in = row["raw_in"]
            end = raw_in.find("\n\n")
            if end < 0:
                raise AgiProtocolError(f"{self.path}: session {row.get('session')} has no "
                                       "blank line after its environment")
            replies: dict[str, str] = {}
            commands: list[str] = []
            pending: str | None = None
            for ex in row["exchanges"]:
                if ex["dir"] == "out":
                    pending = ex["line"]
                    commands.append(pending)
                elif pending is not None:
                    replies.setdefault(pending, ex["line"])
                    pending = None
            self.sessions.append(AgiSession(raw_in[:end + 2].encode("utf-8"), replies,
                                            commands))
        if not self.sessions:
            raise AgiProtocolError(f"{self.path}: no FastAGI session recorded")

    async def play(self, host: str, port: int, session: int = 0,
                   timeout: float = 5.0) -> list[str]:
        """Connect, send the env, answer until the server hangs up; return its commands.

        Raises OSError if the server is unreachable and TimeoutError if it
        neither sends a command nor closes within ``timeout`` seconds.
        """
        rec = self.sessions[session]
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        commands: list[str] = []
        try:
            writer.write(rec.env)
            await writer.drain()
            while True:
                line = await asyncio.wait_for(reader.readline(), timeout)
                if not line:
                    break
                command = line.decode("utf-8", "replace").rstrip("\r\n")
                if not command:
                    continue
                commands.append(command)
                writer.write((_agi_reply(rec, command) + "\n").encode("utf-8"))
                await writer.drain()
                if command.strip().upper() == "HANGUP":
                    break
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        return commands


def _agi_reply(rec: AgiSession, command: str) -> str:
    if command.upper().startswith("GET "):
        return rec.replies.get(command, "200 result=0")
    return "200 result=1"
