"""A simulated Asterisk 22: an AMI server plus a FastAGI client, for demos and tests.

:class:`PbxSimulator` listens like Asterisk's manager interface (banner,
Login plain or MD5, Events, Ping, Logoff, CoreShowChannels, Status,
QueueStatus, QueueSummary, Command, Originate, Getvar/Setvar, Hangup ...)
and plays simulated calls whose events come from the recorded lab calls
(:mod:`cti.sim.events`). For each inbound call it connects to the daemon's
FastAGI port exactly when Asterisk would (the ``AGI()`` step of the lab
dialplan), sends the environment block, answers the commands and routes the
call to the ``CTI_QUEUE`` it was given; with no FastAGI listener the call
takes the lab's ``AGISTATUS=FAILURE`` path to queue ``general``.

Usage::

    sim = PbxSimulator(agi_url="agi://127.0.0.1:4573/route", rate=0.5, speed=2)
    await sim.start()            # sim.ami_port is the listening port
    linkedid = sim.place_call("inbound_answered", "+15551230001", "Alice Smith")
    sim.start_calls()            # or: a Poisson stream of calls at ``rate`` per second
    ...
    await sim.stop()

Times in the call scripts are simulated seconds; ``speed`` compresses them
(speed=10 plays a 3 s talk in 0.3 s). The FastAGI exchange runs in real time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from urllib.parse import urlsplit

from cti.ami.protocol import Kind, Message, Parser
from cti.log import get_logger, mask_text
from cti.sim.events import (
    LAB_QUEUES,
    SCENARIOS,
    TRANSFER_QUEUE,
    Agent,
    CallParams,
    CallScript,
    Ids,
    Originate,
    Route,
    Timed,
    assign_agents,
    parse_set_variable,
    recorded_route,
)
from cti.sim.state import PbxState

log = get_logger(__name__)

BANNER = b"Asterisk Call Manager/11.0.0\r\n"
DEFAULT_MIX = {"inbound_answered": 0.55, "inbound_abandoned": 0.15, "ring_no_answer": 0.1,
               "blind_transfer": 0.1, "inbound_no_agi": 0.1}
# Callers as a PSTN delivers them (E.164): most are customers of the demo CRM
# (cti/crm/demo.py), a few are strangers so the pop also shows "unknown caller".
DEFAULT_CUSTOMERS = [
    ("+15551230001", "Alice Smith"), ("+15551230002", "Bob Jones"),
    ("+15551230010", "Judy Live"), ("+15551230020", "Grace Transfer"),
    ("+15551231001", "Burst Caller 01"), ("+15551231006", "Burst Caller 06"),
    ("+8613800138000", "Zhang Wei"), ("+861065529988", "Li Na"),
    ("+12125550142", "Maria Garcia"), ("+13125550123", "Tom Becker"),
    ("+16465550199", "Victor Stern"), ("+49301234567", "Jonas Weber"),
    ("+14155550110", "Nora Quiet"), ("+15551230003", "Carol NoAGI"),
    ("+442071838750", "Oliver Brown"), ("+33142685300", "Élodie Martin"),
    # gold customers route to queue vip, i.e. to agent 1001, the demo's console agent
    ("+15551231000", "Burst Caller 00"), ("+15551231005", "Burst Caller 05"),
    ("+15551231010", "Burst Caller 10"), ("+15551231015", "Burst Caller 15"),
]
# where a call goes when no FastAGI URL is configured: like the lab route script would
_DEFAULT_QUEUE = {"inbound_answered": "vip", "inbound_abandoned": "general",
                  "ring_no_answer": "complaints", "blind_transfer": "vip"}
_AGI_CONNECT_TIMEOUT = 2.0
_AGI_COMMAND_TIMEOUT = 30.0
WRITE_TIMEOUT = 5.0     # seconds a client may stop reading (manager.conf writetimeout)
_HIGH_WATER = 1 << 20   # bytes queued for a client before the simulator waits for it
_BATCH = 0.002          # messages closer than this (real seconds) go out in one write

_LIST_COMMANDS = [
    ("Challenge", "Generate Challenge for MD5 Auth.", "<none>"),
    ("Command", "Execute Asterisk CLI Command.", "command,all"),
    ("CoreSettings", "Show PBX core settings (version etc).", "system,reporting,all"),
    ("CoreShowChannels", "List currently active channels.", "system,reporting,all"),
    ("CoreStatus", "Show PBX core status variables.", "system,reporting,all"),
    ("Events", "Control Event Flow.", "<none>"),
    ("Getvar", "Gets a channel variable or function value.", "call,reporting,all"),
    ("Hangup", "Hangup channel.", "system,call,all"),
    ("ListCommands", "List available manager commands.", "<none>"),
    ("Login", "Login Manager.", "<none>"),
    ("Logoff", "Logoff Manager.", "<none>"),
    ("Originate", "Originate a call.", "originate,all"),
    ("Ping", "Keepalive command.", "<none>"),
    ("QueueAdd", "Add interface to queue.", "agent,all"),
    ("QueuePause", "Makes a queue member temporarily unavailable.", "agent,all"),
    ("QueueRemove", "Remove interface from queue.", "agent,all"),
    ("QueueStatus", "Show queue status.", "<none>"),
    ("QueueSummary", "Show queue summary.", "<none>"),
    ("Setvar", "Sets a channel variable or function value.", "call,all"),
    ("Status", "List channel status.", "system,call,reporting,all"),
    ("UserEvent", "Send an arbitrary event.", "user,all"),
]


def _response(status: str, action_id: str | None, *pairs: tuple[str, str]) -> Message:
    head = [("Response", status)]
    if action_id is not None:
        head.append(("ActionID", action_id))
    return Message(Kind.RESPONSE, status, None, head + list(pairs))


def _event(name: str, *pairs: tuple[str, str]) -> Message:
    return Message(Kind.EVENT, name, None, [("Event", name)] + list(pairs))


def _bytes(messages: Iterable[Message]) -> bytes:
    return "".join(m.to_text() for m in messages).encode("utf-8")


def _tv(epoch: float | None = None) -> str:
    dt = datetime.fromtimestamp(time.time() if epoch is None else epoch, timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}+0000"


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def parse_callerid(value: str | None) -> tuple[str, str]:
    """``"Alice Smith" <+1555...>`` -> ``("+1555...", "Alice Smith")``."""
    if not value:
        return "", ""
    m = re.match(r'^\s*(?:"([^"]*)"|([^<]*?))\s*<([^>]*)>\s*$', value)
    if m:
        return m.group(3), (m.group(1) if m.group(1) is not None else m.group(2) or "")
    return value.strip(), ""


class _Session:
    """One AMI client connection."""

    _ids = 0

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _Session._ids += 1
        self.id = f"0x{0x7f5e00000000 + _Session._ids * 0x10:x}"
        self.reader = reader
        self.writer = writer
        self.user: str | None = None
        self.events = False
        self.challenge: str | None = None
        self.started = time.time()
        peer = writer.get_extra_info("peername") or ("?", 0)
        local = writer.get_extra_info("sockname") or ("?", 0)
        self.remote = f"IPV4/TCP/{peer[0]}/{peer[1]}"
        self.local = f"IPV4/TCP/{local[0]}/{local[1]}"
        self.closed = False

    def send(self, *messages: Message) -> None:
        if not self.closed:
            self.writer.write(_bytes(messages))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.writer.close()


class _Call:
    """A running simulated call: its task, its agents and its script."""

    def __init__(self, script: CallScript, task: asyncio.Task | None = None) -> None:
        self.script = script
        self.task = task
        self.agents: list[Agent] = []
        self.scenario = script.scenario


class PbxSimulator:
    """The simulated Asterisk; see the module docstring. Start with :meth:`start`."""

    def __init__(self, host: str = "127.0.0.1", ami_port: int = 0, *, username: str = "cti",
                 secret: str = "ctisecret",
                 agi_url: str | None = "agi://127.0.0.1:4573/route", rate: float = 0.2,
                 speed: float = 1.0, scenario_mix: dict[str, float] | None = None,
                 customers: Sequence[tuple[str, str]] | None = None, seed: int | None = None,
                 did: str = "5550100", queues: dict[str, Sequence[Agent]] | None = None,
                 call_params: CallParams | None = None, auth_fail_delay: float = 1.0) -> None:
        if rate <= 0:
            raise ValueError(f"simulator rate must be > 0 calls/s, got {rate!r}")
        if speed <= 0:
            raise ValueError(f"simulator speed must be > 0, got {speed!r}")
        mix = dict(scenario_mix or DEFAULT_MIX)
        unknown = set(mix) - set(SCENARIOS)
        if unknown or not mix or sum(mix.values()) <= 0:
            raise ValueError(f"scenario_mix {mix!r}: expected positive weights for "
                             f"{', '.join(SCENARIOS)}")
        self.host = host
        self.username = username
        self.secret = secret
        self.agi_url = agi_url
        self.rate = rate
        self.speed = speed
        self.mix = mix
        self.customers = list(customers or DEFAULT_CUSTOMERS)
        self.did = did
        self.call_params = call_params or CallParams(did=did)
        self.auth_fail_delay = auth_fail_delay
        self.stats: dict[str, int] = {
            "sessions": 0, "logins": 0, "login_failures": 0, "calls_started": 0,
            "calls_completed": 0, "events_sent": 0, "agi_sessions": 0, "agi_failures": 0,
            "originates": 0,
        }
        self.scenario_counts: dict[str, int] = {}
        self.state = PbxState(queues if queues is not None else LAB_QUEUES)
        self._port = ami_port
        self._rng = random.Random(seed)
        self._ids = Ids()
        self._server: asyncio.AbstractServer | None = None
        self._sessions: set[_Session] = set()
        self._session_tasks: set[asyncio.Task] = set()
        self._calls: dict[str, _Call] = {}
        self._busy: dict[str, int] = {}
        self._generator: asyncio.Task | None = None
        self._started = time.time()
        self._login_time = int(self._started)
        self._idle = asyncio.Event()
        self._idle.set()
        self._agent_freed = asyncio.Event()

    # -- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        """Listen for AMI clients; :attr:`ami_port` is valid afterwards."""
        self._server = await asyncio.start_server(self._serve, self.host, self._port)
        self._port = self._server.sockets[0].getsockname()[1]
        self._idle = asyncio.Event()
        self._idle.set()
        log.info("sim.started", host=self.host, ami_port=self._port, agi_url=self.agi_url,
                 rate=self.rate, speed=self.speed)

    @property
    def ami_port(self) -> int:
        return self._port

    async def stop(self) -> None:
        """Stop calls, close every client connection and the listening socket."""
        if self._generator:
            self._generator.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._generator
            self._generator = None
        tasks = [c.task for c in self._calls.values() if c.task]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for session in list(self._sessions):
            session.close()
        if self._server:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None
        for task in list(self._session_tasks):
            task.cancel()
        log.info("sim.stopped", **self.stats)

    def start_calls(self) -> None:
        """Start the stream of random calls: Poisson arrivals at :attr:`rate` per second."""
        if self._generator is None or self._generator.done():
            self._generator = asyncio.get_running_loop().create_task(self._generate())

    def stop_calls(self) -> None:
        if self._generator:
            self._generator.cancel()
            self._generator = None

    async def wait_idle(self, timeout: float | None = None) -> None:
        """Wait until no simulated call is running (raises TimeoutError)."""
        await asyncio.wait_for(self._idle.wait(), timeout)

    @property
    def active_calls(self) -> int:
        return len(self._calls)

    # -- calls ------------------------------------------------------------------------

    def place_call(self, scenario: str = "inbound_answered", number: str | None = None,
                   name: str | None = None, *, params: CallParams | None = None,
                   agents: Sequence[Sequence[Agent]] | None = None) -> str:
        """Start one inbound call now; returns its Linkedid.

        ``params`` overrides the simulator's call parameters; ``agents`` forces
        the agents per slot instead of choosing free queue members. Raises
        ValueError for an unknown scenario.
        """
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown inbound scenario {scenario!r}; expected one of "
                             f"{', '.join(SCENARIOS)}")
        p = params or self.call_params
        if number is not None or name is not None:
            p = replace(p, number=number if number is not None else p.number,
                        name=name if name is not None else p.name)
        return self._start_inbound(scenario, p, agents=agents)

    def _start_inbound(self, scenario: str, params: CallParams, *,
                       agents: Sequence[Sequence[Agent]] | None = None,
                       originate: Originate | None = None) -> str:
        script = CallScript(scenario, params, ids=self._ids, start=time.time(),
                            originate=originate, agi_url=self.agi_url or "",
                            login_time=self._login_time, rng=self._rng)
        call = _Call(script)
        linkedid = script.linkedid
        self._calls[linkedid] = call
        self._idle.clear()
        self.stats["calls_started"] += 1
        call.task = asyncio.get_running_loop().create_task(
            self._run_inbound(call, agents), name=f"sim-call-{linkedid}")
        log.info("sim.call_started", call_id=linkedid, scenario=scenario,
                 caller=params.number)
        return linkedid

    async def _run_inbound(self, call: _Call,
                           forced: Sequence[Sequence[Agent]] | None) -> None:
        script = call.script
        linkedid = script.linkedid
        try:
            await self._play(script.head())
            if call.scenario == "inbound_no_agi" or not script.has_agi:
                route = Route.failed()
            elif self.agi_url:
                route = await self._agi(script)
            else:
                queue = _DEFAULT_QUEUE.get(call.scenario, "general")
                route = await self._canned_agi(script, queue)
            script.set_route(route)
            await self._play(script.queued(at=self._elapsed(script)))
            scenario, slots = await self._wait_for_agents(call, route.queue, forced)
            if scenario != script.scenario:
                script.switch(scenario)
            script.set_agents(slots)
            call.scenario = scenario
            call.agents = script.agents()
            for agent in call.agents:
                self._busy[agent.id] = self._busy.get(agent.id, 0) + 1
            await self._play(script.tail(at=self._elapsed(script)))
            self.stats["calls_completed"] += 1
            self.scenario_counts[scenario] = self.scenario_counts.get(scenario, 0) + 1
            log.info("sim.call_ended", call_id=linkedid, scenario=scenario, queue=route.queue)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("sim.call_failed", call_id=linkedid, scenario=call.scenario)
        finally:
            self._end_call(linkedid)

    def _elapsed(self, script: CallScript) -> float:
        """Simulated seconds since the call began (the real FastAGI time included)."""
        return (time.time() - script.start) * self.speed

    async def _wait_for_agents(self, call: _Call, queue: str,
                               forced: Sequence[Sequence[Agent]] | None
                               ) -> tuple[str, list[list[Agent]]]:
        """Choose the agents; while nobody can answer, the caller waits on hold.

        The caller gives up at its ``hold`` time: the call then becomes an
        abandoned one.
        """
        while True:
            scenario, slots = self._choose_agents(call.scenario, queue, forced)
            if scenario == call.scenario or forced is not None:
                return scenario, slots
            patience = (call.script.params.hold - self._elapsed(call.script)) / self.speed
            if patience <= 0:
                return scenario, slots
            freed = self._agent_freed
            try:
                await asyncio.wait_for(freed.wait(), patience)
            except asyncio.TimeoutError:
                return self._choose_agents(call.scenario, queue, forced)

    def _end_call(self, linkedid: str) -> None:
        call = self._calls.pop(linkedid, None)
        if call and call.agents:
            for agent in call.agents:
                left = self._busy.get(agent.id, 1) - 1
                if left > 0:
                    self._busy[agent.id] = left
                else:
                    self._busy.pop(agent.id, None)
            freed, self._agent_freed = self._agent_freed, asyncio.Event()
            freed.set()
        if not self._calls:
            self._idle.set()

    def _choose_agents(self, scenario: str, queue: str,
                       forced: Sequence[Sequence[Agent]] | None
                       ) -> tuple[str, list[list[Agent]]]:
        if forced is not None:
            return scenario, [list(s) for s in forced]
        unavailable = set(self._busy) | self.state.paused_ids()
        return assign_agents(scenario, self.state.members(queue),
                             self.state.members(TRANSFER_QUEUE), unavailable)

    async def _generate(self) -> None:
        names = list(self.mix)
        weights = [self.mix[n] for n in names]
        while True:
            await asyncio.sleep(self._rng.expovariate(self.rate) / self.speed)
            scenario = self._rng.choices(names, weights)[0]
            number, name = self._rng.choice(self.customers)
            base = self.call_params
            params = replace(base, number=number, name=name,
                             ring=round(base.ring * self._rng.uniform(0.5, 2.0), 2),
                             talk=round(base.talk * self._rng.uniform(0.7, 3.0), 2))
            if scenario == "inbound_abandoned":
                params = replace(params, hold=round(self._rng.uniform(3.0, 8.0), 2))
            try:
                self._start_inbound(scenario, params)
            except Exception:
                log.exception("sim.call_not_started", scenario=scenario)

    # -- FastAGI (the simulator is Asterisk's side: the client) ------------------------

    async def _agi(self, script: CallScript) -> Route:
        url = urlsplit(self.agi_url or "")
        host, port = url.hostname or "127.0.0.1", url.port or 4573
        call_id = script.linkedid
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port), _AGI_CONNECT_TIMEOUT)
        except (OSError, asyncio.TimeoutError) as exc:
            self.stats["agi_failures"] += 1
            log.warning("sim.agi_unreachable", call_id=call_id, url=self.agi_url,
                        error=str(exc) or type(exc).__name__)
            return Route.failed()
        self.stats["agi_sessions"] += 1
        variables: dict[str, str] = {}
        status = "SUCCESS"
        try:
            writer.write(script.agi_env())
            await writer.drain()
            while True:
                try:
                    line = await asyncio.wait_for(reader.readline(), _AGI_COMMAND_TIMEOUT)
                except asyncio.TimeoutError:
                    log.warning("sim.agi_timeout", call_id=call_id)
                    break
                if not line:
                    break   # the script closed the socket: AGI() returns SUCCESS
                command = line.decode("utf-8", "replace").strip()
                if not command:
                    continue
                await self._broadcast([script.agi_command(command)])
                code, reply = self._agi_reply(script, command, variables)
                writer.write(f"{code} {reply}\n".encode())
                await writer.drain()
                result = "Success" if code == 200 else "Invalid or unknown command"
                await self._broadcast(script.agi_result(command, code, result))
                if command.upper() == "HANGUP":
                    status = "HANGUP"
                    break
        except (ConnectionError, OSError) as exc:
            log.warning("sim.agi_connection_lost", call_id=call_id, error=str(exc))
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        log.info("sim.agi_done", call_id=call_id, queue=variables.get("CTI_QUEUE", ""))
        return Route(status, variables)

    def _agi_reply(self, script: CallScript, command: str,
                   variables: dict[str, str]) -> tuple[int, str]:
        var = parse_set_variable(command)
        if var is not None:
            variables[var[0]] = var[1]
            return 200, "result=1"
        words = command.split()
        verb = " ".join(words[:2]).upper()
        if verb in ("GET VARIABLE", "GET FULL") and len(words) >= 3:
            name = words[2].strip('"')
            if verb == "GET FULL":
                name = name.removeprefix("${").removesuffix("}")
            p = script.params
            known = {"CALLERID(name)": p.name, "CALLERID(num)": p.number,
                     "CALLERID(all)": f'"{p.name}" <{p.number}>', "INBOUND_DID": p.did,
                     "CHANNEL": script.caller_channel(), "UNIQUEID": script.caller_uniqueid()}
            known.update(variables)
            if name in known:
                return 200, f"result=1 ({known[name]})"
            return 200, "result=0"
        first = words[0].upper() if words else ""
        if first in ("VERBOSE", "NOOP", "SET", "EXEC", "ANSWER", "HANGUP", "DATABASE",
                     "STREAM", "WAIT", "SAY"):
            return 200, "result=1" if first in ("VERBOSE", "SET", "HANGUP") else "result=0"
        if verb == "CHANNEL STATUS":
            return 200, "result=6"
        return 510, "Invalid or unknown command"

    async def _canned_agi(self, script: CallScript, queue: str) -> Route:
        """No FastAGI URL configured: play the exchange the lab's script had."""
        variables: dict[str, str] = {}
        for command, _ in recorded_route(script.scenario, queue):
            var = parse_set_variable(command)
            if var:
                variables[var[0]] = var[1]
            await self._broadcast([script.agi_command(command)] + script.agi_result(command))
        return Route("SUCCESS", variables)

    # -- playing events ----------------------------------------------------------------

    async def _play(self, timed: Sequence[Timed]) -> None:
        loop = asyncio.get_running_loop()
        batch: list[Message] = []
        deadline = loop.time()
        for delay, msg in timed:
            if delay > 0:
                deadline += delay / self.speed
                wait = deadline - loop.time()
                if wait > _BATCH:
                    if batch:
                        await self._broadcast(batch)
                        batch = []
                    await asyncio.sleep(wait)
            batch.append(msg)
        if batch:
            await self._broadcast(batch)

    async def _broadcast(self, messages: Sequence[Message]) -> None:
        """Send events to every logged-in session with events on (after updating state)."""
        if not messages:
            return
        for msg in messages:
            self.state.apply(msg)
        data = _bytes(messages)
        self.stats["events_sent"] += len(messages)
        targets = [s for s in self._sessions if s.user and s.events and not s.closed]
        for session in targets:
            session.writer.write(data)
        # a slow reader slows the whole simulation down (nothing is dropped), but one
        # that stops reading is cut off after WRITE_TIMEOUT, like Asterisk's writetimeout
        stalled = [s for s in targets
                   if s.writer.transport.get_write_buffer_size() > _HIGH_WATER]
        if stalled:
            results = await asyncio.gather(*(self._drain(s) for s in stalled))
            for session, ok in zip(stalled, results):
                if not ok and not session.closed:
                    log.warning("sim.client_too_slow", session=session.id)
                    session.close()

    @staticmethod
    async def _drain(session: _Session) -> bool:
        try:
            await asyncio.wait_for(session.writer.drain(), WRITE_TIMEOUT)
            return True
        except (asyncio.TimeoutError, ConnectionError, OSError):
            return False

    # -- AMI sessions -------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = _Session(reader, writer)
        task = asyncio.current_task()
        if task:
            self._session_tasks.add(task)
        self._sessions.add(session)
        self.stats["sessions"] += 1
        parser = Parser(expect_banner=False)
        try:
            writer.write(BANNER)
            while not session.closed:
                data = await reader.read(65536)
                if not data:
                    break
                for msg in parser.feed(data):
                    await self._action(session, msg)
                    if session.closed:
                        break
        except (ConnectionError, OSError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            self._sessions.discard(session)
            session.close()
            if task:
                self._session_tasks.discard(task)

    async def _action(self, session: _Session, msg: Message) -> None:
        action_id = msg.get("ActionID")
        name = msg.get("Action")
        if name is None:
            session.send(_response("Error", action_id, ("Message", "Missing action in request")))
            return
        key = name.lower()
        if session.user is None and key not in ("login", "challenge", "logoff"):
            session.send(_response("Error", action_id, ("Message", "Permission denied")))
            return
        handler = self._handlers().get(key)
        if handler is None:
            session.send(_response("Error", action_id, (
                "Message", f"Invalid/unknown command: {name}. Use Action: ListCommands to "
                           "show available commands.")))
            if session.events:
                session.send(self._security_event(session, "RequestBadFormat", "Error",
                                                  ("RequestType", f"Action: {name}")))
            return
        await handler(session, msg, action_id)

    def _handlers(self) -> dict[str, Callable]:
        return {
            "login": self._login, "challenge": self._challenge, "logoff": self._logoff,
            "ping": self._ping, "events": self._events, "corestatus": self._core_status,
            "coresettings": self._core_settings, "coreshowchannels": self._core_show_channels,
            "status": self._status, "queuestatus": self._queue_status,
            "queuesummary": self._queue_summary, "command": self._command,
            "originate": self._originate, "getvar": self._getvar, "setvar": self._setvar,
            "hangup": self._hangup, "userevent": self._user_event,
            "queueadd": self._queue_add, "queueremove": self._queue_remove,
            "queuepause": self._queue_pause, "listcommands": self._list_commands,
        }

    def _security_event(self, session: _Session, name: str, severity: str,
                        *extra: tuple[str, str]) -> Message:
        """A security event; AccountID sits where Asterisk 22 puts it for that event."""
        account = ("AccountID", session.user or self.username)
        head = [("Privilege", "security,all"), ("EventTV", _tv()), ("Severity", severity),
                ("Service", "AMI"), ("EventVersion", "1")]
        where = [("SessionID", session.id), ("LocalAddress", session.local),
                 ("RemoteAddress", session.remote)]
        if name == "SuccessfulAuth":
            pairs = head + [account] + where + list(extra) + [("SessionTV", _tv(session.started))]
        else:
            pairs = head + where + list(extra) + [("SessionTV", _tv(session.started)), account]
        return _event(name, *pairs)

    async def _login(self, session: _Session, msg: Message, action_id: str | None) -> None:
        user = msg.get("Username", "")
        if msg.get("AuthType", "").lower() == "md5":
            expected = hashlib.md5(((session.challenge or "") + self.secret).encode()).hexdigest()
            ok = session.challenge is not None and msg.get("Key", "").lower() == expected
        else:
            ok = msg.get("Secret") == self.secret
        if not ok or user != self.username:
            self.stats["login_failures"] += 1
            log.warning("sim.login_failed", session=session.id, user=user)
            # Asterisk answers a failed login after about a second, then hangs up
            await asyncio.sleep(self.auth_fail_delay / self.speed)
            session.send(_response("Error", action_id, ("Message", "Authentication failed")))
            await asyncio.sleep(0)
            session.close()
            return
        session.user = user
        session.events = _events_on(msg.get("Events", "on"))
        self.stats["logins"] += 1
        session.send(_response("Success", action_id, ("Message", "Authentication accepted")))
        if session.events:
            uptime = str(int(time.time() - self._started))
            session.send(
                _event("FullyBooted", ("Privilege", "system,all"), ("Uptime", uptime),
                       ("LastReload", uptime), ("Status", "Fully Booted")),
                self._security_event(session, "SuccessfulAuth", "Informational",
                                     ("UsingPassword", "0")))
        log.info("sim.login", session=session.id, user=user, events=session.events)

    async def _challenge(self, session: _Session, msg: Message, action_id: str | None) -> None:
        if msg.get("AuthType", "").lower() != "md5":
            session.send(_response("Error", action_id, ("Message", "Must specify AuthType")))
            return
        session.challenge = str(self._rng.randrange(100_000_000, 999_999_999))
        session.send(_response("Success", action_id, ("Challenge", session.challenge)))

    async def _logoff(self, session: _Session, msg: Message, action_id: str | None) -> None:
        session.send(_response("Goodbye", action_id, ("Message", "Thanks for all the fish.")))
        session.close()

    async def _ping(self, session: _Session, msg: Message, action_id: str | None) -> None:
        session.send(_response("Success", action_id, ("Ping", "Pong"),
                               ("Timestamp", f"{time.time():.6f}")))

    async def _events(self, session: _Session, msg: Message, action_id: str | None) -> None:
        session.events = _events_on(msg.get("EventMask", "on"))
        session.send(_response("Success", action_id,
                               ("Events", "On" if session.events else "Off")))

    async def _core_status(self, session: _Session, msg: Message, action_id: str | None) -> None:
        started = datetime.fromtimestamp(self._started, timezone.utc)
        session.send(_response(
            "Success", action_id, ("CoreStartupDate", started.strftime("%Y-%m-%d")),
            ("CoreStartupTime", started.strftime("%H:%M:%S")),
            ("CoreReloadDate", started.strftime("%Y-%m-%d")),
            ("CoreReloadTime", started.strftime("%H:%M:%S")),
            ("CoreCurrentCalls", str(len(self._calls))),
            ("CoreProcessedCalls", str(self.state.processed_calls))))

    async def _core_settings(self, session: _Session, msg: Message,
                             action_id: str | None) -> None:
        session.send(_response(
            "Success", action_id, ("AMIversion", "11.0.0"), ("AsteriskVersion", "22.10.1"),
            ("SystemName", ""), ("CoreMaxCalls", "500"), ("CoreMaxLoadAvg", "0.000000"),
            ("CoreRunUser", ""), ("CoreRunGroup", ""), ("CoreMaxFilehandles", "0"),
            ("CoreRealTimeEnabled", "Yes"), ("CoreCDRenabled", "Yes"),
            ("CoreHTTPenabled", "No"), ("SoundsSearchCustomDir", "No")))

    async def _core_show_channels(self, session: _Session, msg: Message,
                                  action_id: str | None) -> None:
        now = time.time()
        items = []
        for chan in self.state.channels():
            pairs = [("Event", "CoreShowChannel")]
            if action_id is not None:
                pairs.append(("ActionID", action_id))
            pairs += chan.pairs()
            pairs += [("Application", chan.application), ("ApplicationData", chan.data),
                      ("Duration", _duration(now - chan.created)), ("BridgeId", chan.bridge)]
            items.append(Message(Kind.EVENT, "CoreShowChannel", None, pairs))
        self._send_list(session, action_id, "Channels will follow", items,
                        "CoreShowChannelsComplete")

    def _send_list(self, session: _Session, action_id: str | None, message: str,
                   items: list[Message], complete: str, *extra: tuple[str, str]) -> None:
        done = [("Event", complete)]
        if action_id is not None:
            done.append(("ActionID", action_id))
        done += [("EventList", "Complete"), ("ListItems", str(len(items))), *extra]
        session.send(_response("Success", action_id, ("EventList", "start"),
                               ("Message", message)),
                     *items, Message(Kind.EVENT, complete, None, done))

    async def _status(self, session: _Session, msg: Message, action_id: str | None) -> None:
        wanted = msg.get("Channel")
        channels = self.state.channels()
        if wanted:
            channels = [c for c in channels if c.name == wanted]
            if not channels:
                session.send(_response("Error", action_id, ("Message", "No such channel")))
                return
        variables = [v.strip() for v in (msg.get("Variables") or "").split(",") if v.strip()]
        now = time.time()
        items = []
        for chan in channels:
            snap = chan.snapshot
            pairs = [("Event", "Status"), ("Privilege", "Call")] + chan.pairs() + [
                ("Type", "Local"), ("DNID", ""),
                ("EffectiveConnectedLineNum", snap.get("ConnectedLineNum", "")),
                ("EffectiveConnectedLineName", snap.get("ConnectedLineName", "")),
                ("TimeToHangup", "0"), ("BridgeID", chan.bridge),
                ("Application", chan.application), ("Data", chan.data),
                ("Nativeformats", "(slin)"), ("Readformat", "slin"), ("Readtrans", ""),
                ("Writeformat", "slin"), ("Writetrans", ""), ("Callgroup", "0"),
                ("Pickupgroup", "0"), ("Seconds", str(int(now - chan.created)))]
            pairs += [("Variable", f"{v}={chan.variables.get(v, '')}") for v in variables]
            if action_id is not None:
                pairs.append(("ActionID", action_id))
            items.append(Message(Kind.EVENT, "Status", None, pairs))
        self._send_list(session, action_id, "Channel status will follow", items,
                        "StatusComplete", ("Items", str(len(items))))

    def _queue_names(self, wanted: str | None) -> list[str]:
        names = list(self.state.queues)
        return [q for q in names if q == wanted] if wanted else names

    async def _queue_status(self, session: _Session, msg: Message,
                            action_id: str | None) -> None:
        aid = [("ActionID", action_id)] if action_id is not None else []
        now = time.time()
        items = []
        for queue in self._queue_names(msg.get("Queue")):
            callers = self.state.queue_callers(queue)
            totals = self.state.queue_totals(queue)
            done = totals["completed"]
            items.append(_event(
                "QueueParams", ("Queue", queue), ("Max", "0"),
                ("Strategy", "ringall"), ("Calls", str(len(callers))),
                ("Holdtime", str(totals["hold"] // done if done else 0)),
                ("TalkTime", str(totals["talk"] // done if done else 0)),
                ("Completed", str(done)), ("Abandoned", "0"), ("ServiceLevel", "30"),
                ("ServicelevelPerf", "100.0" if done else "0.0"),
                ("ServicelevelPerf2", "100.0"), ("Weight", "0"), *aid))
            for agent in self.state.members(queue):
                stats = self.state.member(queue, agent.interface)
                in_call = agent.id in self._busy
                items.append(_event(
                    "QueueMember", ("Queue", queue), ("Name", agent.name),
                    ("Location", agent.interface), ("StateInterface", agent.interface),
                    ("Membership", "static"), ("Penalty", "0"),
                    ("CallsTaken", str(stats.calls_taken)), ("LastCall", str(stats.last_call)),
                    ("LastPause", str(stats.last_pause)), ("LoginTime", str(self._login_time)),
                    ("InCall", "1" if in_call else "0"), ("Status", "2" if in_call else "1"),
                    ("Paused", "1" if stats.paused else "0"),
                    ("PausedReason", stats.paused_reason), ("Wrapuptime", "0"), *aid))
            for pos, caller in enumerate(callers, 1):
                items.append(_event(
                    "QueueEntry", ("Queue", queue), ("Position", str(pos)),
                    ("Channel", caller.channel), ("Uniqueid", caller.uniqueid),
                    ("CallerIDNum", caller.cid_num), ("CallerIDName", caller.cid_name),
                    ("ConnectedLineNum", caller.cid_num), ("ConnectedLineName", caller.cid_name),
                    ("Wait", str(int(now - caller.joined))), ("Priority", "0"), *aid))
        self._send_list(session, action_id, "Queue status will follow", items,
                        "QueueStatusComplete")

    async def _queue_summary(self, session: _Session, msg: Message,
                             action_id: str | None) -> None:
        aid = [("ActionID", action_id)] if action_id is not None else []
        now = time.time()
        items = []
        for queue in self._queue_names(msg.get("Queue")):
            members = self.state.members(queue)
            callers = self.state.queue_callers(queue)
            totals = self.state.queue_totals(queue)
            done = totals["completed"]
            free = [a for a in members if a.id not in self._busy
                    and not self.state.member(queue, a.interface).paused]
            longest = max((int(now - c.joined) for c in callers), default=0)
            items.append(_event(
                "QueueSummary", ("Queue", queue), ("LoggedIn", str(len(members))),
                ("Available", str(len(free))), ("Callers", str(len(callers))),
                ("HoldTime", str(totals["hold"] // done if done else 0)),
                ("TalkTime", str(totals["talk"] // done if done else 0)),
                ("LongestHoldTime", str(longest)), *aid))
        self._send_list(session, action_id, "Queue summary will follow", items,
                        "QueueSummaryComplete")

    async def _command(self, session: _Session, msg: Message, action_id: str | None) -> None:
        command = " ".join((msg.get("Command") or "").split())
        lines = self._cli(command)
        if lines is None:
            words = command.split()
            hint = " ".join(words[:2])
            session.send(_response(
                "Error", action_id, ("Message", "Command output follows"),
                ("Output", f"No such command '{command}' (type 'core show help {hint}' "
                           "for other possible commands)")))
            return
        session.send(_response("Success", action_id, ("Message", "Command output follows"),
                               *[("Output", line) for line in lines]))

    def _cli(self, command: str) -> list[str] | None:
        if command == "core show channels":
            lines = [f"{'Channel':<64} {'Location':<32} {'State':<7} {'Application(Data)':<30}"]
            for chan in self.state.channels():
                snap = chan.snapshot
                where = f"{snap.get('Exten', '')}@{snap.get('Context', '')}:" \
                        f"{snap.get('Priority', '')}"
                app = f"{chan.application}({chan.data})"
                lines.append(f"{chan.name:<64} {where:<32} "
                              f"{snap.get('ChannelStateDesc', ''):<7} {app:<30}")
            n = len(self.state.channels())
            lines += [f"{n} active channels",
                      f"{len(self._calls)} of 500 max active calls "
                      f"({len(self._calls) / 5:5.2f}% of capacity)",
                      f"{self.state.processed_calls} calls processed"]
            return lines
        if command == "core show version":
            return ["Asterisk 22.10.1 (cti simulator)"]
        if command.startswith("queue show"):
            wanted = command[len("queue show"):].strip() or None
            lines = []
            for queue in self._queue_names(wanted):
                callers = self.state.queue_callers(queue)
                lines.append(f"{queue} has {len(callers)} calls (max unlimited) in 'ringall' "
                             "strategy (0s holdtime, 0s talktime), W:0, C:0, A:0, SL:0.0%, "
                             "SL2:100.0% within 30s")
                members = self.state.members(queue)
                lines.append("   Members: " if members else "   No Members")
                for agent in members:
                    state = "In use" if agent.id in self._busy else "Not in use"
                    lines.append(f"      {agent.name} ({agent.interface}) with penalty 0 "
                                 f"(realtime) ({state})")
                lines.append("   Callers: " if callers else "   No Callers")
                for pos, caller in enumerate(callers, 1):
                    lines.append(f"      {pos}. {caller.channel} (wait: 0:00, prio: 0)")
                lines.append("")
            return lines if lines else None
        return None

    async def _getvar(self, session: _Session, msg: Message, action_id: str | None) -> None:
        name = msg.get("Variable") or ""
        chan_name = msg.get("Channel")
        if chan_name:
            chan = self.state.channel(chan_name)
            if chan is None:
                session.send(_response("Error", action_id, ("Message", "No such channel")))
                return
            special = {"CALLERID(num)": chan.snapshot.get("CallerIDNum", ""),
                       "CALLERID(name)": chan.snapshot.get("CallerIDName", ""),
                       "UNIQUEID": chan.snapshot.get("Uniqueid", ""),
                       "CHANNEL": chan.name}
            value = special.get(name, chan.variables.get(name, ""))
        else:
            value = self.state.globals.get(name, "")
        session.send(_response("Success", action_id, ("Variable", name), ("Value", value)))

    async def _setvar(self, session: _Session, msg: Message, action_id: str | None) -> None:
        name = msg.get("Variable")
        if not name:
            session.send(_response("Error", action_id, ("Message", "No variable specified")))
            return
        chan_name = msg.get("Channel")
        value = msg.get("Value") or ""
        if chan_name:
            chan = self.state.channel(chan_name)
            if chan is None:
                session.send(_response("Error", action_id, ("Message", "No such channel")))
                return
            chan.variables[name] = value
        else:
            self.state.globals[name] = value
        session.send(_response("Success", action_id, ("Message", "Variable Set")))

    async def _hangup(self, session: _Session, msg: Message, action_id: str | None) -> None:
        chan_name = msg.get("Channel") or ""
        chan = self.state.channel(chan_name)
        if chan is None:
            session.send(_response("Error", action_id, ("Message", "No such channel")))
            return
        cause = msg.get("Cause") or "16"
        session.send(_response("Success", action_id, ("Message", "Channel Hungup")))
        linkedid = chan.snapshot.get("Linkedid", "")
        call = self._calls.get(linkedid)
        if call and call.task:
            call.task.cancel()
        # the call's channels go away together: Local pairs hang up both halves
        victims = [c for c in self.state.channels() if c.snapshot.get("Linkedid") == linkedid]
        out = []
        for c in victims:
            pairs = [("Privilege", "call,all")] + c.pairs()
            out.append(_event("SoftHangupRequest", *pairs, ("Cause", cause)))
            out.append(_event("Hangup", *pairs, ("Cause", cause),
                              ("Cause-txt", "Normal Clearing" if cause == "16" else "Unknown")))
        await self._broadcast(out)
        log.info("sim.hangup", call_id=linkedid, channel=chan_name)

    async def _user_event(self, session: _Session, msg: Message, action_id: str | None) -> None:
        session.send(_response("Success", action_id, ("Message", "Event Sent")))
        pairs = [("Privilege", "user,all"), ("UserEvent", msg.get("UserEvent") or "")]
        if action_id is not None:
            pairs.append(("ActionID", action_id))
        pairs += [(k, v) for k, v in msg.pairs
                  if k.lower() not in ("action", "actionid", "userevent")]
        await self._broadcast([_event("UserEvent", *pairs)])

    async def _queue_add(self, session: _Session, msg: Message, action_id: str | None) -> None:
        queue, iface = msg.get("Queue"), msg.get("Interface") or ""
        if not queue or not iface:
            session.send(_response("Error", action_id, (
                "Message", "'Queue' and 'Interface' not specified.")))
            return
        agent_id = iface.split("@")[0].split("/")[-1]
        agent = Agent(agent_id, msg.get("MemberName") or iface)
        if queue not in self.state.queues:
            session.send(_response("Error", action_id, ("Message", "Unable to add interface: "
                                                                   "No such queue")))
        elif not self.state.add_member(queue, agent, _truthy(msg.get("Paused"))):
            session.send(_response("Error", action_id, (
                "Message", "Unable to add interface: Already there")))
        else:
            session.send(_response("Success", action_id,
                                   ("Message", "Added interface to queue")))

    async def _queue_remove(self, session: _Session, msg: Message,
                            action_id: str | None) -> None:
        if self.state.remove_member(msg.get("Queue") or "", msg.get("Interface") or ""):
            session.send(_response("Success", action_id,
                                   ("Message", "Removed interface from queue")))
        else:
            session.send(_response("Error", action_id, (
                "Message", "Unable to remove interface: Not there")))

    async def _queue_pause(self, session: _Session, msg: Message,
                           action_id: str | None) -> None:
        paused = _truthy(msg.get("Paused"))
        queue = msg.get("Queue")
        if self.state.pause(msg.get("Interface") or "", paused, msg.get("Reason") or "",
                            [queue] if queue else None):
            word = "paused" if paused else "unpaused"
            session.send(_response("Success", action_id,
                                   ("Message", f"Interface {word} successfully")))
        else:
            session.send(_response("Error", action_id, (
                "Message", "Interface not found")))

    async def _list_commands(self, session: _Session, msg: Message,
                             action_id: str | None) -> None:
        session.send(_response("Success", action_id, *[
            (name, f"{text}  (Priv: {priv})") for name, text, priv in _LIST_COMMANDS]))

    # -- Originate -------------------------------------------------------------------------

    async def _originate(self, session: _Session, msg: Message, action_id: str | None) -> None:
        channel = msg.get("Channel")
        if not channel:
            session.send(_response("Error", action_id, ("Message", "Channel not specified")))
            return
        self.stats["originates"] += 1
        is_async = _truthy(msg.get("Async"))
        context, exten = msg.get("Context") or "", msg.get("Exten") or ""
        orig = Originate(action_id or "", context, exten, msg.get("ChannelId"),
                         msg.get("OtherChannelId"))
        # one Variable header per variable, or several joined by commas
        pairs = [p for v in msg.get_all("Variable") for p in v.split(",") if "=" in p]
        variables = {k.strip().lstrip("_"): v for k, _, v in (p.partition("=") for p in pairs)}
        cid_num, cid_name = parse_callerid(msg.get("CallerID"))
        m = re.fullmatch(r"Local/([^@]+)@([^/]+)(?:/n)?", channel)
        # the channel is Local/<dialled number>@context: mask it like any number
        log.info("sim.originate", action_id=action_id, channel=mask_text(channel), context=context)
        if m is None:
            # bad technology: refused before any channel exists
            if not is_async:
                session.send(_response("Error", action_id, ("Message", "Originate failed")))
                return
            session.send(_response("Success", action_id,
                                   ("Message", "Originate successfully queued")))
            await self._broadcast([_event(
                "OriginateResponse", ("Privilege", "call,all"), ("ActionID", action_id or ""),
                ("Response", "Failure"), ("Channel", channel), ("Context", context),
                ("Exten", exten), ("Reason", "0"), ("Uniqueid", "<unknown>"),
                ("CallerIDNum", "<unknown>"), ("CallerIDName", "<unknown>"))])
            return
        number, dial_context = m.group(1), m.group(2)
        base = self.call_params
        if dial_context == "from-pstn":
            params = replace(base, number=cid_num or base.number, name=cid_name or base.name,
                             did=number, hold=_num(variables.get("CALLER_HOLD"), 60.0),
                             talk=_num(variables.get("AGENT_TALK"), base.talk))
            scenario = "inbound_abandoned" if variables.get("AGENT_MODE") == "noanswer" \
                else "inbound_answered"
            session.send(_response("Success", action_id,
                                   ("Message", "Originate successfully queued")))
            self._start_inbound(scenario, params, originate=orig)
            return
        if dial_context == "callbacks":
            scenario = {"9": "callback_busy", "8": "callback_noanswer"}.get(
                number[:1], "callback_answered")
        else:
            scenario = "originate_no_context"
        params = replace(base, number=number, cid_num=cid_num, cid_name=cid_name,
                         talk=_num(variables.get("CALLBACK_TALK"), base.talk),
                         callback_id=variables.get("CALLBACK_ID", ""),
                         originate_timeout=_num(msg.get("Timeout"), 30000.0) / 1000.0)
        if not is_async and scenario != "callback_answered":
            session.send(_response("Error", action_id, ("Message", "Originate failed")))
        else:
            session.send(_response("Success", action_id,
                                   ("Message", "Originate successfully queued")))
        agents: list[list[Agent]] = []
        if scenario == "callback_answered":
            agent = exten if context == "callback-agent" and exten.isdigit() else None
            agents = [[Agent(agent, "")] if agent else []]
        script = CallScript(scenario, params, ids=self._ids, start=time.time(),
                            originate=orig if is_async else None, login_time=self._login_time,
                            rng=self._rng, context=dial_context)
        script.set_agents(agents)
        call = _Call(script)
        linkedid = script.linkedid
        self._calls[linkedid] = call
        self._idle.clear()
        call.agents = script.agents()
        call.task = asyncio.get_running_loop().create_task(self._run_script(call))

    async def _run_script(self, call: _Call) -> None:
        linkedid = call.script.linkedid
        try:
            await self._play(call.script.head())
            await self._play(call.script.tail())
            self.scenario_counts[call.scenario] = self.scenario_counts.get(call.scenario, 0) + 1
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("sim.originate_failed", call_id=linkedid)
        finally:
            self._end_call(linkedid)


def _events_on(value: str | None) -> bool:
    return (value or "on").strip().lower() not in ("off", "no", "false", "0", "")


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("true", "yes", "1", "on")


def _num(value: str | None, default: float) -> float:
    try:
        return float(value) if value not in (None, "") else default
    except ValueError:
        return default
