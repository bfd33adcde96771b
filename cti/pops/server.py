"""The agent websocket: authenticates agents and fans their pops out to their sockets.

The daemon calls :meth:`PopServer.publish` with the pairs :class:`~cti.pops.book.PopBook`
returns; each message goes to every socket of its agent and to no one else.
Wire format and close codes: ``README.md, "Screen pop messages"``.

Each connection has a bounded send queue drained by its own task, so a socket
that stops reading only ever hurts itself: when its queue is full (or one send is
stuck longer than the heartbeat timeout) it is closed with 1013 and the agent's
console reconnects and gets a snapshot. Dead peers are found by websocket pings
(``heartbeat_interval`` / ``heartbeat_timeout``).
"""

from __future__ import annotations

import asyncio
import enum
import hmac
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from cti.config import AgentSettings, PopSettings
from cti.log import get_logger
from cti.pops.book import PopBook

log = get_logger(__name__)

PROTOCOL_VERSION = 1
MAX_BAD_FRAMES = 10           # invalid frames tolerated per connection before 1008
MAX_CLIENT_FRAME = 16 * 1024  # agents send tiny JSON objects
WS_PATHS = ("/", "/agent")
CONSOLE_PATHS = ("/console", "/console.html")
CONSOLE_FILE = Path(__file__).with_name("static") / "console.html"


class CloseCode(enum.IntEnum):
    """Close codes this server uses (README, "Screen pop messages": what a client does)."""

    GOING_AWAY = 1001         # server stopping: reconnect with backoff
    POLICY_VIOLATION = 1008   # auth failed / auth timeout / too many invalid frames: don't retry
    TRY_AGAIN_LATER = 1013    # server full, or this socket fell behind: reconnect with backoff
    REPLACED = 4000           # a newer socket of the same agent took this one's place


@dataclass(slots=True)
class PopCounters:
    """Monotonic counters for metrics; read with :meth:`as_dict`."""

    accepted: int = 0            # websocket handshakes completed
    rejected_full: int = 0       # over max_connections
    auth_ok: int = 0
    auth_failed: int = 0         # bad token, unknown agent, or first frame not an auth
    auth_timeout: int = 0
    replaced: int = 0            # closed because the agent opened more than max_per_agent
    slow_closed: int = 0         # send queue full or a send stalled
    bad_frames: int = 0
    bad_frame_closes: int = 0
    published: int = 0           # messages handed to publish()
    unrouted: int = 0            # ... for an agent with no open socket (dropped)
    frames_sent: int = 0         # websocket frames written, all sockets
    closed: int = 0              # connections finished, any reason

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class _CloseAfter:
    """Queued behind pending messages: close the socket once they are written."""

    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str) -> None:
        self.code, self.reason = code, reason


class _Conn:
    """One authenticated socket of one agent."""

    __slots__ = ("ws", "agent", "queue", "wake", "sender", "closing", "bad", "peer")

    def __init__(self, ws: ServerConnection, agent: str) -> None:
        self.ws = ws
        self.agent = agent
        self.queue: deque[bytes | _CloseAfter] = deque()
        self.wake = asyncio.Event()
        self.sender: asyncio.Task[None] | None = None
        self.closing = False
        self.bad = 0
        self.peer = _peer(ws)


def _peer(ws: ServerConnection) -> str:
    addr = ws.remote_address
    return f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)


def _error(code: str, message: str, seq: int = 0) -> dict[str, Any]:
    return {"type": "error", "seq": seq, "code": code, "message": message}


def _parse(frame: str | bytes) -> tuple[dict[str, Any] | None, tuple[str, str] | None]:
    """A client frame as a JSON object, or (error code, explanation)."""
    if isinstance(frame, bytes):
        return None, ("binary_frame", "binary frames are not accepted; send JSON text frames")
    try:
        msg = orjson.loads(frame)
    except orjson.JSONDecodeError as exc:
        return None, ("bad_json", f"frame is not valid JSON ({exc.msg} at char {exc.pos})")
    if not isinstance(msg, dict):
        return None, ("bad_message", f"expected a JSON object, got {type(msg).__name__}")
    if not isinstance(msg.get("type"), str):
        return None, ("bad_message", "message has no string field 'type'")
    return msg, None


class PopServer:
    """Websocket server for agent consoles.

    Create it, ``await start()`` (then :attr:`port` is the bound port), call
    :meth:`publish` from the event loop for every batch of book messages, and
    ``await stop()`` at shutdown. :meth:`start` raises ``OSError`` if the port
    is taken.
    """

    def __init__(self, settings: PopSettings, agents: list[AgentSettings],
                 book: PopBook) -> None:
        self.settings = settings
        self.book = book
        self._agents = {a.id: a for a in agents}
        self.counters = PopCounters()
        self._server: Server | None = None
        self._sockets: set[ServerConnection] = set()      # every open socket, authed or not
        self._by_agent: dict[str, list[_Conn]] = {}       # oldest first
        self._tasks: set[asyncio.Task[None]] = set()
        # A send that cannot progress for this long means the peer stopped reading.
        self._stall_timeout = settings.heartbeat_interval + settings.heartbeat_timeout
        self._close_timeout = min(settings.heartbeat_timeout, 5.0)
        self._console: bytes | None = None

    # --- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        """Listen on ``settings.host:settings.port`` (port 0 = any free port)."""
        s = self.settings
        self._server = await serve(
            self._handle, s.host, s.port,
            process_request=self._process_request,
            ping_interval=s.heartbeat_interval, ping_timeout=s.heartbeat_timeout,
            close_timeout=self._close_timeout,
            max_size=MAX_CLIENT_FRAME,
            # Per-socket deflate would cost CPU for every copy of a fanned-out pop.
            compression=None,
        )
        log.info("pop server listening", host=s.host, port=self.port,
                 agents=len(self._agents))

    @property
    def port(self) -> int:
        """The bound TCP port (after :meth:`start`)."""
        if self._server is None:
            raise RuntimeError("PopServer.port read before start()")
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Close every socket with 1001 and stop listening; returns when all are gone."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close(close_connections=False)
        closing = [self._shut(ws, CloseCode.GOING_AWAY, "server shutting down")
                   for ws in list(self._sockets)]
        await asyncio.gather(*closing, return_exceptions=True)
        await server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        log.info("pop server stopped")

    # --- publishing -------------------------------------------------------------

    def publish(self, pairs: list[tuple[str, dict[str, Any]]]) -> None:
        """Queue each message for every socket of its agent. Never blocks, never raises.

        A message is serialised once and the same bytes go to every tab of the agent;
        an agent with no open socket simply misses it (the snapshot catches up).
        """
        counters = self.counters
        for agent, message in pairs:
            counters.published += 1
            conns = self._by_agent.get(agent)
            if not conns:
                counters.unrouted += 1
                continue
            data = orjson.dumps(message)
            for conn in tuple(conns):    # _push may drop a slow socket from the list
                self._push(conn, data)

    def connected_agents(self) -> dict[str, int]:
        """Agent id -> number of authenticated open sockets."""
        return {agent: len(conns) for agent, conns in self._by_agent.items()}

    @property
    def connection_count(self) -> int:
        """Every open socket, authenticated or not (leak check, metrics gauge)."""
        return len(self._sockets)

    # --- one connection ------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path in CONSOLE_PATHS:
            return self._console_response(connection)
        if path not in WS_PATHS:
            return connection.respond(404, f"no such path {path!r}; the pop websocket is at "
                                           "/ or /agent, the console at /console\n")
        return None

    def _console_response(self, connection: ServerConnection) -> Response:
        if self._console is None:
            self._console = CONSOLE_FILE.read_bytes()
        response = connection.respond(200, "")
        response.body = self._console
        del response.headers["Content-Type"]
        del response.headers["Content-Length"]
        response.headers["Content-Type"] = "text/html; charset=utf-8"
        response.headers["Content-Length"] = str(len(self._console))
        return response

    async def _handle(self, ws: ServerConnection) -> None:
        self._sockets.add(ws)
        self.counters.accepted += 1
        try:
            if len(self._sockets) > self.settings.max_connections:
                self.counters.rejected_full += 1
                log.warning("pop connection rejected: server full", peer=_peer(ws),
                            max_connections=self.settings.max_connections)
                await self._shut(ws, CloseCode.TRY_AGAIN_LATER,
                                 f"server full (max_connections="
                                 f"{self.settings.max_connections}); retry later")
                return
            agent = await self._authenticate(ws)
            if agent is None:
                return
            conn = self._register(ws, agent)
            try:
                await self._read_loop(conn)
            finally:
                self._release(conn)
        finally:
            self._sockets.discard(ws)
            self.counters.closed += 1

    async def _authenticate(self, ws: ServerConnection) -> str | None:
        """The agent id if the first frame is a valid auth; otherwise close and None."""
        try:
            async with asyncio.timeout(self.settings.auth_timeout):
                frame = await ws.recv()
        except TimeoutError:
            self.counters.auth_timeout += 1
            log.info("pop auth timeout", peer=_peer(ws))
            why = f"no auth frame within {self.settings.auth_timeout:g} s"
            await self._shut(ws, CloseCode.POLICY_VIOLATION, f"auth timeout: {why}",
                             _error("auth_timeout", why + '; send {"type":"auth",...} first'))
            return None
        except ConnectionClosed:
            return None

        msg, problem = _parse(frame)
        if problem is None and msg is not None and msg["type"] != "auth":
            problem = ("auth_required", f"first message must be type 'auth', got {msg['type']!r}")
        if problem is None and msg is not None:
            agent, token = msg.get("agent"), msg.get("token")
            if isinstance(agent, int) and not isinstance(agent, bool):
                agent = str(agent)
            if not isinstance(agent, str) or not isinstance(token, str):
                problem = ("bad_message", "auth needs string fields 'agent' and 'token'")
            elif not self._token_ok(agent, token):
                self.counters.auth_failed += 1
                log.warning("pop auth failed", agent=agent, peer=_peer(ws))
                await self._shut(ws, CloseCode.POLICY_VIOLATION, "authentication failed",
                                 _error("auth_failed", "unknown agent or wrong token"))
                return None
            else:
                self.counters.auth_ok += 1
                return agent
        assert problem is not None
        self.counters.auth_failed += 1
        log.info("pop auth refused", peer=_peer(ws), reason=problem[0])
        await self._shut(ws, CloseCode.POLICY_VIOLATION, f"expected auth: {problem[0]}",
                         _error(*problem))
        return None

    def _token_ok(self, agent: str, token: str) -> bool:
        known = self._agents.get(agent)
        expected = known.token.get_secret_value() if known else ""
        # Compare even for unknown agents so timing does not reveal which ids exist.
        same = hmac.compare_digest(token.encode(), (expected or "\0").encode())
        return bool(known and expected and same)

    def _register(self, ws: ServerConnection, agent: str) -> _Conn:
        conns = self._by_agent.setdefault(agent, [])
        # Newest wins: after a laptop sleeps its old socket lingers until the heartbeat
        # times out; refusing the new one would lock the agent out until then.
        while len(conns) >= self.settings.max_per_agent:
            self.counters.replaced += 1
            self._drop(conns[0], CloseCode.REPLACED,
                       f"replaced by a newer connection (max_per_agent="
                       f"{self.settings.max_per_agent})", flush=True)
        conn = _Conn(ws, agent)
        conns.append(conn)

        # Same synchronous step as joining the fan-out: nothing published can fall
        # between the snapshot and the live messages.
        known = self._agents.get(agent)
        hello = {"type": "hello", "seq": self.book.current_seq(agent), "agent": agent,
                 "name": known.name if known else "", "protocol": PROTOCOL_VERSION,
                 "heartbeat_interval": self.settings.heartbeat_interval,
                 "server_time": time.time()}
        # Straight into the queue: even send_queue=1 must not drop a socket on arrival.
        conn.queue.append(orjson.dumps(hello))
        conn.queue.append(orjson.dumps(self.book.snapshot(agent)))
        conn.sender = asyncio.create_task(self._send_loop(conn))
        log.info("pop agent connected", agent=agent, peer=conn.peer, sockets=len(conns))
        return conn

    async def _read_loop(self, conn: _Conn) -> None:
        try:
            async for frame in conn.ws:
                if conn.closing:
                    continue     # a close is on its way; ignore the rest
                self._on_frame(conn, frame)
        except ConnectionClosed:
            pass

    def _on_frame(self, conn: _Conn, frame: str | bytes) -> None:
        msg, problem = _parse(frame)
        if problem is not None:
            self._bad_frame(conn, *problem)
            return
        assert msg is not None
        kind = msg["type"]
        seq = self.book.current_seq(conn.agent)
        if kind == "ping":
            pong = {"type": "pong", "seq": seq, "id": msg.get("id"), "server_time": time.time()}
            self._push(conn, orjson.dumps(pong))
        elif kind == "snapshot":
            # A tab back from sleep may not trust its socket state (case 22): resync.
            self._push(conn, orjson.dumps(self.book.snapshot(conn.agent)))
        elif kind == "auth":
            self._bad_frame(conn, "already_authenticated", "this socket is already authenticated")
        else:
            self._bad_frame(conn, "unknown_type",
                            f"unknown message type {kind!r}; expected ping or snapshot")

    def _bad_frame(self, conn: _Conn, code: str, message: str) -> None:
        self.counters.bad_frames += 1
        conn.bad += 1
        log.debug("pop invalid frame", agent=conn.agent, peer=conn.peer, code=code)
        self._push(conn, orjson.dumps(_error(code, message, self.book.current_seq(conn.agent))))
        if conn.bad > MAX_BAD_FRAMES:
            self.counters.bad_frame_closes += 1
            log.warning("pop socket closed: too many invalid frames", agent=conn.agent,
                        peer=conn.peer)
            self._drop(conn, CloseCode.POLICY_VIOLATION,
                       f"too many invalid frames (more than {MAX_BAD_FRAMES})", flush=True)

    # --- sending -----------------------------------------------------------------

    def _push(self, conn: _Conn, data: bytes) -> None:
        if conn.closing:
            return
        if len(conn.queue) >= self.settings.send_queue:
            self.counters.slow_closed += 1
            log.warning("pop socket closed: send queue full", agent=conn.agent, peer=conn.peer,
                        send_queue=self.settings.send_queue)
            self._drop(conn, CloseCode.TRY_AGAIN_LATER,
                       "send queue full: reconnect for a snapshot", flush=False)
            return
        conn.queue.append(data)
        conn.wake.set()

    async def _send_loop(self, conn: _Conn) -> None:
        ws, queue = conn.ws, conn.queue
        try:
            while True:
                if not queue:
                    conn.wake.clear()
                    await conn.wake.wait()
                    continue
                item = queue.popleft()
                if isinstance(item, _CloseAfter):
                    await self._shut(ws, item.code, item.reason)
                    return
                async with asyncio.timeout(self._stall_timeout):
                    await ws.send(item, text=True)
                self.counters.frames_sent += 1
        except ConnectionClosed:
            pass
        except TimeoutError:
            self.counters.slow_closed += 1
            log.warning("pop socket closed: send stalled", agent=conn.agent, peer=conn.peer,
                        seconds=self._stall_timeout)
            self._drop(conn, CloseCode.TRY_AGAIN_LATER, "send stalled: reconnect for a snapshot",
                       flush=False)

    def _drop(self, conn: _Conn, code: int, reason: str, *, flush: bool) -> None:
        """Take ``conn`` out of the fan-out now and close it.

        ``flush``: write what is queued first (errors before a policy close);
        otherwise (a socket that fell behind) discard it and close at once.
        """
        if conn.closing:
            return
        conn.closing = True
        self._unlink(conn)
        if flush:
            conn.queue.append(_CloseAfter(code, reason))
            conn.wake.set()
            return
        conn.queue.clear()
        if conn.sender is not None and conn.sender is not asyncio.current_task():
            conn.sender.cancel()
        self._spawn(self._shut(conn.ws, code, reason))

    def _release(self, conn: _Conn) -> None:
        """The socket is gone: forget it (called once, when its handler ends)."""
        conn.closing = True
        self._unlink(conn)
        conn.queue.clear()
        if conn.sender is not None and not conn.sender.done():
            conn.sender.cancel()
        log.info("pop agent disconnected", agent=conn.agent, peer=conn.peer,
                 code=conn.ws.close_code, reason=conn.ws.close_reason)

    def _unlink(self, conn: _Conn) -> None:
        conns = self._by_agent.get(conn.agent)
        if conns is None or conn not in conns:
            return
        conns.remove(conn)
        if not conns:
            del self._by_agent[conn.agent]

    async def _shut(self, ws: ServerConnection, code: int, reason: str,
                    error: dict[str, Any] | None = None) -> None:
        """Send ``error`` (if any) and close; abort the TCP connection if the peer stalls.

        websockets' own close() can wait forever for a peer whose receive window is
        full, hence the outer timeout.
        """
        try:
            async with asyncio.timeout(self._close_timeout):
                if error is not None:
                    await ws.send(orjson.dumps(error), text=True)
                await ws.close(code, reason)
        except (TimeoutError, ConnectionClosed):
            pass
        finally:
            if ws.state is not State.CLOSED:
                ws.transport.abort()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
