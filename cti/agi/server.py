"""The FastAGI server: accepts Asterisk's connections and runs one handler each.

Thin asyncio layer over :mod:`cti.agi.protocol`: it moves bytes between the
socket and the readers, pairs each command with its reply, and guarantees the
two things Asterisk depends on:

* the dialplan is never left hanging: the environment must arrive within
  ``header_timeout``, every command has a reply timeout, and the socket is
  closed when the handler returns, whatever happened;
* a hangup is an ordinary event. ``HANGUP`` notices, ``511`` replies, a reset
  or a closed socket from Asterisk end the handler with :class:`AgiHangup`,
  logged at DEBUG, never as an error.

Usage::

    server = AgiServer("127.0.0.1", 4573, {"route": service.agi_route})
    await server.start()
    ...
    await server.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import replace
from collections.abc import Awaitable, Callable, Mapping

from cti.agi.protocol import (
    HANGUP,
    AgiReply,
    AgiRequest,
    EnvReader,
    ReplyReader,
    command_verb,
    encode_command,
    get_variable_command,
    is_dead_safe,
    set_variable_command,
    verbose_command,
)
from cti.errors import AgiError, AgiHangup, AgiProtocolError
from cti.log import get_logger

log = get_logger(__name__)

Handler = Callable[["AgiSession"], Awaitable[None]]
HangupHook = Callable[["AgiSession"], None]

_READ_SIZE = 4096


class AgiSession:
    """One FastAGI conversation, after the environment has been read.

    Handlers call :meth:`command` (or :meth:`set_variable`,
    :meth:`get_variable`, :meth:`verbose`) one at a time; the server closes the
    socket when the handler returns. ``hung_up`` turns true when Asterisk says
    the channel is gone; ``on_hangup`` (if set) is called once at that moment.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 request: AgiRequest, *, rest: bytes = b"", command_timeout: float = 5.0,
                 peer: str = "") -> None:
        self.request = request
        self.peer = peer
        self.hung_up = False
        self.on_hangup: HangupHook | None = None
        self._reader = reader
        self._writer = writer
        self._replies = ReplyReader()
        self._pending: deque[object] = deque()
        self._command_timeout = command_timeout
        self._lock = asyncio.Lock()
        self._broken: str | None = None   # why the stream is out of step
        self._closed_by_peer = False
        if rest:
            self._pending.extend(self._replies.feed(rest))

    @property
    def uniqueid(self) -> str | None:
        return self.request.uniqueid

    async def command(self, text: str, *, timeout: float | None = None) -> AgiReply:
        """Send one command line and return its final reply.

        Raises AgiHangup when the channel is gone (``511``, or a channel-affecting
        command after a hangup is known: it is then not sent at all), when
        Asterisk closes or resets the connection; AgiProtocolError for a bad
        command, a junk reply or ``510``/``520``; AgiError when no reply arrives
        within the command timeout (the session is unusable afterwards).
        """
        data = encode_command(text)
        verb = command_verb(text)
        async with self._lock:
            if self._broken:
                raise AgiError(f"{verb}: not sent, the FastAGI session is unusable "
                               f"({self._broken})")
            if self.hung_up and not is_dead_safe(text):
                raise AgiHangup(f"{verb}: not sent, the channel has hung up")
            limit = self._command_timeout if timeout is None else timeout
            try:
                async with asyncio.timeout(limit):
                    await self._send(data, verb)
                    reply = await self._read_reply(verb)
            except TimeoutError:
                self._broken = f"no reply to {verb} within {limit:g} s"
                raise AgiError(f"{verb}: no reply from Asterisk within {limit:g} s") from None
            except AgiProtocolError as exc:
                self._broken = str(exc)
                raise

        if reply.hangup:
            self._mark_hung_up(verb)
        if reply.code == 511:
            raise AgiHangup(f"{verb}: Asterisk answered 511, the channel is dead")
        if reply.code in (510, 520):
            raise AgiProtocolError(f"{verb}: Asterisk rejected the command: {reply.code} "
                                   f"{reply.text}")
        log.debug("agi reply", uniqueid=self.uniqueid, verb=verb, code=reply.code,
                  result=reply.result)
        return reply

    async def set_variable(self, name: str, value: str | int) -> AgiReply:
        """``SET VARIABLE name "value"``; raises like :meth:`command`."""
        return await self.command(set_variable_command(name, str(value)))

    async def get_variable(self, name: str, *, timeout: float | None = None) -> str | None:
        """The variable's value, or None when it is not set; raises like :meth:`command`."""
        reply = await self.command(get_variable_command(name), timeout=timeout)
        return reply.data if reply.result == "1" else None

    async def verbose(self, message: str, level: int = 1) -> AgiReply:
        """Write ``message`` to the Asterisk console/log at verbosity ``level``."""
        return await self.command(verbose_command(message, level))

    # -- internals ---------------------------------------------------------

    async def _send(self, data: bytes, verb: str) -> None:
        if self._closed_by_peer:
            raise AgiHangup(f"{verb}: not sent, Asterisk closed the connection")
        try:
            self._writer.write(data)
            await self._writer.drain()
        except (ConnectionError, OSError) as exc:
            self._peer_gone()
            raise AgiHangup(f"{verb}: connection lost while sending ({exc!r})") from None

    async def _read_reply(self, verb: str) -> AgiReply:
        hangup_seen = False
        while True:
            while self._pending:
                item = self._pending.popleft()
                if item is HANGUP:
                    # Not the reply: note it and keep reading, so replies stay paired.
                    hangup_seen = True
                    self._mark_hung_up(verb)
                    continue
                assert isinstance(item, AgiReply)
                if not item.final:
                    continue
                return replace(item, hangup=True) if hangup_seen else item
            try:
                data = await self._reader.read(_READ_SIZE)
            except (ConnectionError, OSError) as exc:
                self._peer_gone()
                raise AgiHangup(f"{verb}: connection lost waiting for the reply "
                                f"({exc!r})") from None
            if not data:
                self._peer_gone()
                raise AgiHangup(f"{verb}: Asterisk closed the connection before replying")
            self._pending.extend(self._replies.feed(data))

    def _peer_gone(self) -> None:
        self._closed_by_peer = True
        self._mark_hung_up("connection closed")

    def _mark_hung_up(self, during: str) -> None:
        if self.hung_up:
            return
        self.hung_up = True
        log.debug("agi channel hung up", uniqueid=self.uniqueid, during=during)
        if self.on_hangup is not None:
            try:
                self.on_hangup(self)
            except Exception:  # a hook's bug must not break the reply pairing
                log.exception("agi on_hangup hook failed", uniqueid=self.uniqueid)


class AgiServer:
    """Listens for FastAGI connections and dispatches them by script name.

    ``handlers`` maps a script (``route`` for ``agi://host:4573/route``) to a
    coroutine function taking an :class:`AgiSession`; a single coroutine
    function handles every script. A request for an unknown script gets a
    ``VERBOSE`` line and is closed, so the dialplan carries on.

    Call :meth:`start`, read :attr:`port`, and :meth:`stop` at the end.
    """

    def __init__(self, host: str, port: int, handlers: Mapping[str, Handler] | Handler, *,
                 header_timeout: float = 2.0, max_sessions: int = 500,
                 command_timeout: float = 5.0) -> None:
        self.host = host
        self._port = port
        self._handlers = handlers
        self._header_timeout = header_timeout
        self._max_sessions = max_sessions
        self._command_timeout = command_timeout
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._refused = 0

    @property
    def port(self) -> int:
        """The port really listened on (the kernel's choice when 0 was given)."""
        if self._server is not None and self._server.sockets:
            return int(self._server.sockets[0].getsockname()[1])
        return self._port

    @property
    def active(self) -> int:
        """Connections being served right now (environment read or handler running)."""
        return len(self._tasks)

    async def start(self) -> None:
        """Bind and listen; raises OSError when the address is taken."""
        self._server = await asyncio.start_server(self._on_connect, self.host, self._port)
        log.info("agi server listening", host=self.host, port=self.port)

    async def stop(self, grace: float = 1.0) -> None:
        """Stop listening, give running sessions ``grace`` seconds, cancel the rest."""
        if self._server is None:
            return
        self._server.close()
        tasks = set(self._tasks)
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=grace)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=grace)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), grace)
        self._server = None
        log.info("agi server stopped")

    async def __aenter__(self) -> AgiServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def handler_for(self, script: str | None) -> Handler | None:
        if callable(self._handlers):
            return self._handlers
        return self._handlers.get(script) if script is not None else None

    # -- one connection ----------------------------------------------------

    async def _on_connect(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        peer = _peer_name(writer)
        if len(self._tasks) >= self._max_sessions:
            # Closing at once gives AGISTATUS=FAILURE; the dialplan's default applies.
            self._refused += 1
            log.warning("agi session refused: too many sessions", peer=peer,
                        max_sessions=self._max_sessions, refused=self._refused)
            await _close(writer)
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve(reader, writer, peer)
        except asyncio.CancelledError:
            # Only stop() cancels these tasks. Ending normally keeps asyncio 3.11's
            # connection callback from logging the cancellation as an error.
            log.debug("agi session cancelled by server stop", peer=peer)
        finally:
            self._tasks.discard(task)
            await _close(writer)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     peer: str) -> None:
        env = EnvReader()
        try:
            async with asyncio.timeout(self._header_timeout):
                request = None
                while request is None:
                    data = await reader.read(_READ_SIZE)
                    if not data:
                        if env.started:
                            log.info("agi connection closed inside the environment", peer=peer)
                        else:
                            log.debug("agi connection closed without a request", peer=peer)
                        return
                    request = env.feed(data)
        except TimeoutError:
            log.info("agi environment not received in time", peer=peer,
                     timeout=self._header_timeout, partial=env.started)
            return
        except AgiProtocolError as exc:
            log.warning("agi bad environment", peer=peer, error=str(exc))
            return
        except (ConnectionError, OSError) as exc:
            log.debug("agi connection lost before the request", peer=peer, error=repr(exc))
            return

        session = AgiSession(reader, writer, request, rest=env.rest,
                             command_timeout=self._command_timeout, peer=peer)
        uid = request.uniqueid
        handler = self.handler_for(request.script)
        if handler is None:
            await self._unknown_script(session)
            return

        log.debug("agi session start", uniqueid=uid, script=request.script, peer=peer)
        try:
            await handler(session)
        except AgiHangup as exc:
            log.debug("agi session ended by hangup", uniqueid=uid, detail=str(exc))
        except AgiProtocolError as exc:
            log.warning("agi protocol error", uniqueid=uid, script=request.script,
                        error=str(exc))
        except AgiError as exc:
            log.warning("agi session failed", uniqueid=uid, script=request.script,
                        error=str(exc))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("agi handler crashed", uniqueid=uid, script=request.script)
        else:
            log.debug("agi session end", uniqueid=uid, script=request.script)

    async def _unknown_script(self, session: AgiSession) -> None:
        script = session.request.script
        log.warning("agi request for an unknown script", uniqueid=session.uniqueid,
                    script=script, request=session.request.get("request"))
        shown = script if script is not None else "(none)"
        with contextlib.suppress(AgiError):
            await session.verbose(f"CTI: no FastAGI script {shown!r} here; continuing", 1)


def _peer_name(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)


async def _close(writer: asyncio.StreamWriter) -> None:
    """Close the socket; a reset or a late HANGUP from Asterisk is not an error."""
    writer.close()
    with contextlib.suppress(ConnectionError, OSError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), 1.0)
