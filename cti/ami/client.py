"""The asyncio AMI session: login, actions with timeouts, lists, ping, reconnect, failover.

Theory of operation
-------------------
:class:`AmiClient` owns one *supervisor* task. The supervisor opens one
:class:`_Link` at a time (primary endpoint first, then the backup), runs it until
it dies, and then waits a backoff delay before the next round. Everything that is
tied to one TCP connection lives on its link: the parser, the pending actions, the
reader task, the single ping watchdog and the ``on_connected`` task. When a link
dies, every one of those dies with it: pending actions fail at once with
:class:`~cti.errors.AmiConnectionLost`, and nothing is ever re-sent on the next
link (an Originate sent twice is a customer called twice).

One session goes: TCP connect -> banner -> Login (plain, or MD5 challenge) ->
wait for ``FullyBooted`` (bounded by ``fully_booted_timeout``) -> CONNECTED ->
``on_connected()``. Nothing is written before the banner, and no action other
than Challenge/Login is written before the Login response.

Incoming messages are routed by kind, never by order: an ``Event:`` goes to
``on_event`` (even ``OriginateResponse``, which carries ``Response:``) unless it is
an item of a list this client asked for; a ``Response:`` resolves the pending
action with the same ActionID. A response without ActionID is given to the one
action waiting for a response, and only if there is exactly one.

Failures are classified: a refused Login is :class:`~cti.errors.AmiAuthError`
and is retried slowly (``auth_backoff_*``) so a wrong secret never turns into a
connection storm (or a fail2ban ban); anything else is a network failure,
retried with exponential backoff and jitter (``backoff_*``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import hashlib
import itertools
import os
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from cti.ami.protocol import HeaderValue, Kind, Message, Parser, build_action
from cti.config import AmiSettings, Endpoint
from cti.errors import (
    AmiActionError,
    AmiAuthError,
    AmiConnectionLost,
    AmiError,
    AmiProtocolError,
    AmiTimeout,
)
from cti.log import SECRET_KEYS, get_logger

log = get_logger(__name__)

Headers = Mapping[str, HeaderValue] | Iterable[tuple[str, HeaderValue]]

_READ_SIZE = 65536
_STOPPED = "client stopped"


class AmiState(enum.StrEnum):
    """Where the session is. Only CONNECTED accepts :meth:`AmiClient.send_action`.

    String values, so health checks and JSON show ``"connected"``, not a number.
    """

    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"          # TCP connect and banner
    AUTHENTICATING = "authenticating"  # Login sent; then waiting for FullyBooted
    CONNECTED = "connected"
    AUTH_FAILED = "auth_failed"        # the last Login was refused; kept while retrying


@dataclasses.dataclass(frozen=True)
class AmiStatus:
    """A snapshot for health checks and logs; never holds the secret."""

    state: AmiState = AmiState.DISCONNECTED
    endpoint: str | None = None
    banner: str | None = None          # "Asterisk Call Manager/11.0.0"
    version: str | None = None         # "11.0.0"
    last_error: str | None = None
    connects: int = 0                  # sessions that reached CONNECTED
    auth_failures: int = 0             # refused logins since the last success
    since: float = 0.0                 # wall-clock time of the last state change

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for a health endpoint (``state`` as its string value)."""
        data = dataclasses.asdict(self)
        data["state"] = self.state.value
        return data


def md5_key(challenge: str, secret: str) -> str:
    """The ``Key`` of an MD5 Login: hex md5 of the challenge followed by the secret."""
    return hashlib.md5((challenge + secret).encode("utf-8")).hexdigest()


def backoff_delay(attempt: int, initial: float, maximum: float,
                  rnd: Callable[[], float] = random.random) -> float:
    """Delay before retry number ``attempt`` (0-based): exponential, "equal jitter".

    The bound doubles each attempt up to ``maximum``; the delay is drawn from
    ``[bound/2, bound]``, so clients spread out yet each gap is at least as long
    as the previous one.
    """
    bound = min(maximum, initial * (2 ** min(attempt, 62)))
    return bound / 2 + rnd() * bound / 2


def default_instance_id() -> str:
    """Random part + pid: unique across processes and hosts, short in logs."""
    return f"{uuid.uuid4().hex[:8]}.{os.getpid()}"


@dataclasses.dataclass(eq=False)
class _Pending:
    name: str
    action_id: str
    future: asyncio.Future[Any]
    collect: bool = False                 # a list action: wait for its ...Complete event
    response: Message | None = None
    items: list[Message] = dataclasses.field(default_factory=list)


class _Link:
    """One TCP connection and everything that must die with it."""

    def __init__(self, endpoint: Endpoint, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.endpoint = endpoint
        self.reader = reader
        self.writer = writer
        self.parser = Parser(expect_banner=True)
        self.pending: dict[str, _Pending] = {}
        self.abandoned_lists: set[str] = set()   # timed-out lists: drop their late items
        self.banner_seen = asyncio.Event()
        self.booted = asyncio.Event()
        self.closed = asyncio.Event()
        self.reason = ""
        self.last_rx = asyncio.get_running_loop().time()
        self.tasks: list[asyncio.Task[Any]] = []

    def close(self, reason: str) -> None:
        """Close once: fail every pending action with ``reason``; never raises."""
        if self.closed.is_set():
            return
        self.reason = reason
        self.closed.set()
        with contextlib.suppress(Exception):
            self.writer.close()
        error = AmiConnectionLost(f"AMI link to {self.endpoint} lost: {reason}")
        for pending in self.pending.values():
            if not pending.future.done():
                pending.future.set_exception(error)
        self.pending.clear()


class AmiClient:
    """An AMI session that keeps itself connected.

    Call :meth:`start`, then optionally :meth:`wait_connected`; use
    :meth:`send_action`, :meth:`send_list` and :meth:`command` while connected;
    call :meth:`stop` at the end. Events go to ``on_event`` (called in the reader
    task: keep it quick, never block). ``on_connected`` runs after every
    (re)connect, once Asterisk is fully booted: resynchronise state there.
    ``on_disconnected(reason)`` is called when a connected session ends.
    """

    def __init__(self, settings: AmiSettings, *,
                 on_event: Callable[[Message], None],
                 on_connected: Callable[[], Awaitable[None]] | None = None,
                 on_disconnected: Callable[[str], None] | None = None,
                 instance_id: str | None = None) -> None:
        self._settings = settings
        self._on_event = on_event
        self._on_connected = on_connected
        self._on_disconnected = on_disconnected
        self.instance_id = instance_id or default_instance_id()
        self._counter = itertools.count(1)
        self._status = AmiStatus(since=time.time())
        self._link: _Link | None = None          # set only while CONNECTED
        self._connected = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Start connecting in the background and return at once (idempotent)."""
        if self._supervisor is None or self._supervisor.done():
            self._supervisor = asyncio.create_task(self._supervise(), name="ami-supervisor")

    async def stop(self) -> None:
        """Log off if connected, close the link, fail pending actions; idempotent."""
        link = self._link
        if link is not None and not link.closed.is_set():
            with contextlib.suppress(AmiError, OSError):
                await self._request(link, "Logoff", (),
                                    timeout=min(1.0, self._settings.action_timeout))
            link.close(_STOPPED)
        task, self._supervisor = self._supervisor, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until CONNECTED. Raises :class:`AmiTimeout` naming the last error."""
        try:
            async with asyncio.timeout(timeout):
                await self._connected.wait()
        except TimeoutError:
            status = self._status
            raise AmiTimeout(
                f"AMI not connected within {timeout:g}s (state {status.state.value}, "
                f"last error: {status.last_error or 'none'})") from None

    @property
    def status(self) -> AmiStatus:
        """The current :class:`AmiStatus` snapshot."""
        return self._status

    @property
    def connected(self) -> bool:
        """True while actions can be sent (logged in and past FullyBooted)."""
        return self._status.state is AmiState.CONNECTED

    def next_action_id(self) -> str:
        """A fresh ``<instance_id>-<n>``; never repeats within this process."""
        return f"{self.instance_id}-{next(self._counter)}"

    # -- actions -------------------------------------------------------------------

    async def send_action(self, name: str, headers: Headers = (), *,
                          timeout: float | None = None, action_id: str | None = None,
                          check: bool = True) -> Message:
        """Send one action and return its response.

        ``action_id`` (or an ``ActionID`` header) is used exactly as given;
        otherwise one is generated. Raises :class:`AmiConnectionLost` if not
        connected or if the link drops before the response (the action is not
        re-sent), :class:`AmiTimeout` after ``timeout`` (default
        ``action_timeout``), :class:`AmiActionError` on ``Response: Error`` when
        ``check``, and :class:`AmiProtocolError` for a header that cannot be sent.
        """
        link = self._require_link(name)
        pairs, given = _take_action_id(headers, action_id)
        action_id = given or self.next_action_id()
        response = await self._request(link, name, pairs, timeout=timeout,
                                       action_id=action_id)
        if check and _is_error(response):
            raise _action_error(name, action_id, response)
        return response

    async def send_list(self, name: str, headers: Headers = (), *,
                        timeout: float | None = None, action_id: str | None = None,
                        ) -> tuple[Message, list[Message]]:
        """Send a list action (CoreShowChannels, QueueStatus ...); return its items.

        Returns ``(response, items)``: the item events that carry this ActionID,
        in order, without the closing ``...Complete`` event. Items never reach
        ``on_event``; live events keep flowing meanwhile. ``timeout`` covers the
        whole list. Raises like :meth:`send_action` (``Response: Error`` always
        raises :class:`AmiActionError`).
        """
        link = self._require_link(name)
        return await self._request(link, name, headers, timeout=timeout,
                                   action_id=action_id, collect=True)

    async def command(self, cli: str, *, timeout: float | None = None) -> list[str]:
        """Run a CLI command; return its output lines (modern and legacy formats).

        Raises :class:`AmiActionError` on ``Response: Error``; the output is kept
        in ``error.response.output``.
        """
        response = await self.send_action("Command", [("Command", cli)], timeout=timeout,
                                           check=False)
        if _is_error(response):
            detail = response.output[0] if response.output else response.get("Message")
            raise AmiActionError(f"AMI command {cli!r} failed: {detail}", response=response)
        return response.output

    def _require_link(self, name: str) -> _Link:
        link = self._link
        if link is None or link.closed.is_set():
            status = self._status
            raise AmiConnectionLost(
                f"cannot send AMI action {name}: not connected "
                f"(state {status.state.value}, last error: {status.last_error or 'none'})")
        return link

    async def _request(self, link: _Link, name: str, headers: Headers, *,
                       timeout: float | None = None, action_id: str | None = None,
                       collect: bool = False) -> Any:
        """Write one action on ``link`` and wait for its response (or list)."""
        if link.closed.is_set():
            raise AmiConnectionLost(f"AMI link to {link.endpoint} lost: {link.reason}")
        pairs, action_id = _take_action_id(headers, action_id)
        action_id = action_id or self.next_action_id()
        if action_id in link.pending:
            raise AmiProtocolError(f"ActionID {action_id!r} is already pending on this link; "
                                   "expected a unique ActionID per action")
        data = build_action(name, action_id, pairs)  # raises before anything is registered
        timeout = self._settings.action_timeout if timeout is None else timeout

        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        # a failure nobody awaits any more (caller cancelled) must not warn at exit
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        pending = _Pending(name, action_id, future, collect=collect)
        link.pending[action_id] = pending
        log.debug("ami action", action=name, action_id=action_id,
                  headers=_masked(pairs), endpoint=str(link.endpoint))
        try:
            async with asyncio.timeout(timeout):
                link.writer.write(data)
                await link.writer.drain()
                return await future
        except TimeoutError:
            if collect:
                link.abandoned_lists.add(action_id)
            raise AmiTimeout(f"AMI action {name} (ActionID {action_id}) got no "
                             f"{'complete list' if collect else 'response'} within "
                             f"{timeout:g}s") from None
        except OSError as exc:
            link.close(f"write failed: {exc}")
            raise AmiConnectionLost(f"AMI action {name} (ActionID {action_id}) not sent: "
                                    f"link to {link.endpoint} lost ({exc})") from None
        finally:
            if link.pending.get(action_id) is pending:
                del link.pending[action_id]

    # -- incoming ------------------------------------------------------------------

    async def _read_loop(self, link: _Link) -> None:
        reason = "connection closed by Asterisk"
        loop = asyncio.get_running_loop()
        try:
            while True:
                data = await link.reader.read(_READ_SIZE)
                if not data:
                    break
                link.last_rx = loop.time()
                for msg in link.parser.feed(data):
                    try:
                        self._dispatch(link, msg)
                    except Exception:  # one bad message or handler must not kill the link
                        log.exception("ami message handling failed", message=msg.name,
                                      action_id=msg.action_id)
                if not link.banner_seen.is_set() and link.parser.banner is not None:
                    link.banner_seen.set()
        except OSError as exc:
            reason = f"read failed: {exc}"
        except Exception as exc:  # a parser bug: log it, reconnect, lose nothing silently
            log.exception("ami reader crashed", endpoint=str(link.endpoint))
            reason = f"reader crashed: {exc!r}"
        link.close(reason)

    def _dispatch(self, link: _Link, msg: Message) -> None:
        if not link.banner_seen.is_set():
            link.banner_seen.set()  # a server without banner: its first message counts
        if msg.kind is Kind.EVENT:
            self._handle_event(link, msg)
        elif msg.kind is Kind.RESPONSE:
            self._handle_response(link, msg)
        else:
            log.debug("ami message ignored", kind=msg.kind.name, pairs=len(msg.pairs))

    def _handle_event(self, link: _Link, msg: Message) -> None:
        action_id = msg.action_id
        if action_id is not None:
            pending = link.pending.get(action_id)
            if pending is not None and pending.collect:
                if _is_list_end(msg):
                    if not pending.future.done():
                        pending.future.set_result((pending.response or msg, pending.items))
                else:
                    pending.items.append(msg)
                return
            if action_id in link.abandoned_lists:
                if _is_list_end(msg):
                    link.abandoned_lists.discard(action_id)
                return

        name = msg.name
        if name == "FullyBooted":
            link.booted.set()
        try:
            self._on_event(msg)
        except Exception:
            log.exception("ami on_event handler failed", event_name=name)
        if name == "Shutdown":
            link.close(f"Asterisk shut down (Shutdown: {msg.get('Shutdown')}, "
                       f"Restart: {msg.get('Restart')})")

    def _handle_response(self, link: _Link, msg: Message) -> None:
        action_id = msg.action_id
        if action_id is None:
            waiting = [p for p in link.pending.values() if p.response is None]
            if len(waiting) != 1:
                log.warning("ami orphaned response", response=msg.name,
                            message=msg.get("Message"), waiting=len(waiting))
                return
            pending = waiting[0]
        else:
            found = link.pending.get(action_id)
            if found is None:
                log.debug("ami response for no pending action", action_id=action_id,
                          response=msg.name)
                return
            pending = found
        if pending.response is not None or pending.future.done():
            log.debug("ami duplicate response", action_id=pending.action_id)
            return
        pending.response = msg
        if not pending.collect:
            pending.future.set_result(msg)
        elif _is_error(msg):
            pending.future.set_exception(_action_error(pending.name, pending.action_id, msg))

    # -- session -------------------------------------------------------------------

    def _set_status(self, **changes: Any) -> None:
        if (self._status.state is AmiState.AUTH_FAILED
                and changes.get("state") in (AmiState.CONNECTING, AmiState.AUTHENTICATING)):
            # a retry in progress does not hide the refusal from health checks
            del changes["state"]
        if "state" in changes and changes["state"] is not self._status.state:
            changes.setdefault("since", time.time())
        self._status = dataclasses.replace(self._status, **changes)

    async def _supervise(self) -> None:
        settings = self._settings
        net_failures = 0
        try:
            while True:
                auth_refused = False
                for endpoint in settings.endpoints:
                    try:
                        lasted = await self._session(endpoint)
                    except AmiAuthError as exc:
                        auth_refused = True
                        self._set_status(state=AmiState.AUTH_FAILED, last_error=str(exc),
                                         auth_failures=self._status.auth_failures + 1)
                        break  # the same credentials would be refused by the backup too
                    except (OSError, AmiError) as exc:
                        reason = _describe(exc)
                        self._set_status(state=AmiState.DISCONNECTED, last_error=reason)
                        log.warning("ami connect failed", endpoint=str(endpoint),
                                    reason=reason)
                        continue  # next endpoint at once
                    # a session that stayed up longer than the longest backoff resets it;
                    # one that drops right after login keeps backing off
                    net_failures = 0 if lasted >= settings.backoff_max else net_failures + 1
                    break
                else:
                    net_failures += 1

                if auth_refused:
                    delay = backoff_delay(self._status.auth_failures - 1,
                                          settings.auth_backoff_initial,
                                          settings.auth_backoff_max)
                    log.warning("ami login refused", user=settings.username,
                                reason=self._status.last_error, retry_in=round(delay, 2))
                else:
                    delay = backoff_delay(max(net_failures - 1, 0), settings.backoff_initial,
                                          settings.backoff_max)
                    log.info("ami reconnecting", retry_in=round(delay, 2))
                await asyncio.sleep(delay)
        finally:
            self._set_status(state=AmiState.DISCONNECTED)

    async def _session(self, endpoint: Endpoint) -> float:
        """Run one connection until it ends; return how long it was CONNECTED.

        Raises if the session never got CONNECTED (AmiAuthError for a refused login).
        """
        settings = self._settings
        self._set_status(state=AmiState.CONNECTING, endpoint=str(endpoint))
        log.debug("ami connecting", endpoint=str(endpoint))
        try:
            async with asyncio.timeout(settings.connect_timeout):
                reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
        except TimeoutError:
            raise AmiConnectionLost(f"TCP connect to {endpoint} timed out after "
                                    f"{settings.connect_timeout:g}s") from None
        link = _Link(endpoint, reader, writer)
        link.tasks.append(asyncio.create_task(self._read_loop(link), name="ami-reader"))
        connected_at: float | None = None
        loop = asyncio.get_running_loop()
        try:
            wait = settings.connect_timeout
            if not await _wait_or_closed(link, link.banner_seen, wait):
                raise AmiProtocolError(_not_reached(link, "no AMI banner", wait))
            banner = link.parser.banner
            self._set_status(state=AmiState.AUTHENTICATING, banner=banner,
                             version=banner.rpartition("/")[2] if banner else None)

            await self._login(link)
            link.tasks.append(asyncio.create_task(self._watchdog(link), name="ami-ping"))
            booted = await _wait_or_closed(link, link.booted, settings.fully_booted_timeout)
            if link.closed.is_set():
                raise AmiConnectionLost(f"link to {endpoint} lost after login: {link.reason}")

            connected_at = loop.time()
            self._link = link
            self._set_status(state=AmiState.CONNECTED, last_error=None, auth_failures=0,
                             connects=self._status.connects + 1)
            self._connected.set()
            log.info("ami connected", endpoint=str(endpoint), banner=banner,
                     auth=settings.auth, fully_booted=booted, connects=self._status.connects)
            if self._on_connected is not None:
                link.tasks.append(asyncio.create_task(self._run_on_connected(),
                                                      name="ami-on-connected"))
            await link.closed.wait()
            return loop.time() - connected_at
        except asyncio.CancelledError:
            link.close(_STOPPED)
            raise
        finally:
            link.close(link.reason or "session ended")
            self._link = None
            self._connected.clear()
            for task in link.tasks:
                task.cancel()
            await asyncio.gather(*link.tasks, return_exceptions=True)
            if connected_at is not None:
                lasted = loop.time() - connected_at
                self._set_status(state=AmiState.DISCONNECTED, last_error=link.reason)
                level = log.info if link.reason == _STOPPED else log.warning
                level("ami disconnected", endpoint=str(endpoint), reason=link.reason,
                      connected_for=round(lasted, 1))
                if self._on_disconnected is not None:
                    try:
                        self._on_disconnected(link.reason)
                    except Exception:
                        log.exception("ami on_disconnected handler failed")

    async def _login(self, link: _Link) -> None:
        settings = self._settings
        secret = settings.secret.get_secret_value()
        headers: list[tuple[str, HeaderValue]] = [("Username", settings.username)]
        if settings.auth == "md5":
            challenge = await self._request(link, "Challenge", [("AuthType", "MD5")])
            if _is_error(challenge) or not challenge.get("Challenge"):
                raise AmiAuthError(f"AMI MD5 challenge refused by {link.endpoint}: "
                                   f"{challenge.get('Message') or 'no Challenge header'}")
            headers = [("AuthType", "MD5"), *headers,
                       ("Key", md5_key(challenge["Challenge"], secret))]
        else:
            headers.append(("Secret", secret))
        headers.append(("Events", "on"))
        response = await self._request(link, "Login", headers)
        if _is_error(response):
            raise AmiAuthError(f"AMI login as {settings.username!r} refused by "
                               f"{link.endpoint}: {response.get('Message') or 'Response: Error'}")

    async def _watchdog(self, link: _Link) -> None:
        """The one keep-alive of a link: Ping every interval, close on silence."""
        settings = self._settings
        loop = asyncio.get_running_loop()
        while not link.closed.is_set():
            await asyncio.sleep(settings.ping_interval)
            try:
                await self._request(link, "Ping", (), timeout=settings.ping_timeout)
            except AmiTimeout:
                silent = loop.time() - link.last_rx
                link.close(f"no reply to Ping within {settings.ping_timeout:g}s "
                           f"(no bytes for {silent:.1f}s)")
                return
            except AmiError:
                return

    async def _run_on_connected(self) -> None:
        assert self._on_connected is not None
        try:
            await self._on_connected()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("ami on_connected handler failed")


# --- helpers ---------------------------------------------------------------------------


async def _wait_or_closed(link: _Link, event: asyncio.Event, timeout: float) -> bool:
    """Wait for ``event``; False on timeout or if the link closed first."""
    if event.is_set():
        return True
    waiters = [asyncio.create_task(event.wait()), asyncio.create_task(link.closed.wait())]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
    return event.is_set() and not link.closed.is_set()


def _not_reached(link: _Link, what: str, timeout: float) -> str:
    if link.closed.is_set():
        return f"{what} from {link.endpoint}: {link.reason}"
    return f"{what} from {link.endpoint} within {timeout:g}s"


def _take_action_id(headers: Headers, action_id: str | None,
                    ) -> tuple[list[tuple[str, HeaderValue]], str | None]:
    """Split a caller's ``ActionID`` header (any case) out of ``headers``."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    pairs: list[tuple[str, HeaderValue]] = []
    for key, value in items:
        if key.lower() == "actionid":
            given = str(value)
            if action_id is not None and action_id != given:
                raise AmiProtocolError(f"two ActionIDs given ({action_id!r} and {given!r}); "
                                       "expected one")
            action_id = given
        else:
            pairs.append((key, value))
    return pairs, action_id


def _masked(pairs: list[tuple[str, HeaderValue]]) -> list[tuple[str, Any]]:
    return [(k, "***" if k.lower() in SECRET_KEYS else v) for k, v in pairs]


def _is_error(msg: Message) -> bool:
    return msg.kind is Kind.RESPONSE and msg.name.lower() == "error"


def _is_list_end(msg: Message) -> bool:
    eventlist = msg.get("EventList")
    if eventlist is not None:
        return eventlist.lower() == "complete"
    return msg.name.lower().endswith("complete")


def _action_error(name: str, action_id: str, response: Message) -> AmiActionError:
    return AmiActionError(f"AMI action {name} (ActionID {action_id}) failed: "
                          f"{response.get('Message') or 'Response: Error'}", response=response)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, AmiError) else f"{type(exc).__name__}: {text}"
