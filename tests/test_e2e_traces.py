"""End to end: recorded Asterisk 22 sessions through real sockets into the daemon.

Each test serves a recorded ``*.ami.raw`` on an AMI port (TraceReplayer), plays
the recorded FastAGI sessions into the daemon's FastAGI port at the moment the
recording shows ``AGIExecStart`` (Asterisk's dialplan waits there too), keeps
agents connected on the pop websocket, and checks what the daemon produced:
call records, the routes it set over FastAGI, and the pops each agent got.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
import websockets

from cti.config import Settings
from cti.daemon import Daemon
from cti.sim.replay import AgiReplayer, TraceReplayer

AGENTS = ("1001", "1002", "1003", "1004")


class AgentSocket:
    """One agent's console: collects every message it receives."""

    def __init__(self, agent: str) -> None:
        self.agent = agent
        self.messages: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()

    async def connect(self, url: str) -> None:
        self._task = asyncio.create_task(self._run(url))
        await asyncio.wait_for(self.ready.wait(), 5)

    async def _run(self, url: str) -> None:
        async with websockets.connect(url) as ws:
            await ws.send(orjson.dumps({"type": "auth", "agent": self.agent,
                                        "token": f"demo-{self.agent}"}).decode())
            async for frame in ws:
                msg = orjson.loads(frame)
                self.messages.append(msg)
                if msg["type"] == "snapshot":
                    self.ready.set()

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == kind]


async def run_trace(traces: Path, name: str, tmp_path: Path, *, speed: float = 10.0,
                    expect_records: int = 1) -> tuple[Daemon, list[dict[str, Any]],
                                                       dict[str, AgentSocket], list[list[str]]]:
    """Replay one recorded scenario into a fresh daemon; return what came out."""
    agi_path = traces / f"{name}.agi.jsonl"
    agi = AgiReplayer(agi_path) if agi_path.exists() else None
    gate = asyncio.Event()
    seen_agi: set[bytes] = set()
    agi_commands: list[list[str]] = []
    daemon: Daemon | None = None

    async def before_block(block: bytes) -> None:
        await gate.wait()
        if agi is None or not block.startswith(b"Event: AGIExecStart"):
            return
        uid = next(line for line in block.split(b"\r\n") if line.startswith(b"Uniqueid: "))
        if uid in seen_agi:
            return
        seen_agi.add(uid)
        assert daemon is not None
        session = len(seen_agi) - 1
        agi_commands.append(await agi.play("127.0.0.1", daemon.agi.port, session=session))

    replayer = TraceReplayer(traces / f"{name}.ami.raw", speed=speed, before_block=before_block)
    await replayer.start()
    settings = Settings().model_copy(update={
        "ami": Settings().ami.model_copy(update={"port": replayer.port, "ping_interval": 30.0,
                                                 "fully_booted_timeout": 0.5}),
        "agi": Settings().agi.model_copy(update={"port": 0}),
        "pops": Settings().pops.model_copy(update={"port": 0}),
        "http": Settings().http.model_copy(update={"port": 0}),
        "crm": Settings().crm.model_copy(update={"path": tmp_path / "crm.sqlite3",
                                                 "seed_demo": True}),
        "store": Settings().store.model_copy(update={"path": tmp_path / "cti.sqlite3"}),
    })
    daemon = Daemon(settings)
    sockets = {a: AgentSocket(a) for a in AGENTS}
    try:
        await daemon.start()
        for sock in sockets.values():
            await sock.connect(f"ws://127.0.0.1:{daemon.pops.port}/")
        await asyncio.wait_for(daemon.resynced.wait(), 5)
        gate.set()
        await replayer.wait_done(timeout=30)
        for _ in range(100):  # the last events are being processed and stored
            if await daemon.store.count() >= expect_records and not daemon.tracker.live_calls():
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        records = await daemon.store.calls(limit=1000)
    finally:
        for sock in sockets.values():
            await sock.close()
        await daemon.stop()
        await replayer.stop()
    return daemon, records, sockets, agi_commands


def pops_for(sock: AgentSocket, call_id: str) -> list[dict[str, Any]]:
    return [m for m in sock.messages if m.get("call_id") == call_id]


def profile_seen(messages: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The customer profile an agent ended up seeing for a call (pop or later update)."""
    for m in reversed(messages):
        if m.get("customer"):
            return m["customer"]
    return None


async def test_inbound_answered_routes_to_vip_and_pops_agent_1001(
        traces_dir: Path, tmp_path: Path) -> None:
    _, records, socks, agi = await run_trace(traces_dir, "inbound_answered", tmp_path)

    assert 'SET VARIABLE CTI_QUEUE "vip"' in agi[0]
    assert 'SET VARIABLE CTI_CUSTOMER_ID "CUST-1001"' in agi[0]
    [rec] = records
    assert rec["call_id"] == "1796302636.0"
    assert (rec["outcome"], rec["queue"], rec["agent"]) == ("answered", "vip", "1001")
    assert rec["caller_num"] == "+15551230001" and rec["caller_name"] == "Alice Smith"
    assert rec["route"]["queue"] == "vip" and rec["route"]["customer_id"] == "CUST-1001"
    assert rec["wait_time"] == pytest.approx(1, abs=0.6)
    assert rec["talk_time"] == pytest.approx(4, abs=1)

    mine = pops_for(socks["1001"], "1796302636.0")
    assert [m["type"] for m in mine].count("pop") == 1
    assert profile_seen(mine)["customer_id"] == "CUST-1001"
    assert any(m.get("state") == "connected" for m in mine)
    for other in ("1002", "1003", "1004"):
        assert pops_for(socks[other], "1796302636.0") == []


async def test_inbound_abandoned_is_abandoned_after_its_wait(traces_dir: Path,
                                                             tmp_path: Path) -> None:
    _, records, socks, _ = await run_trace(traces_dir, "inbound_abandoned", tmp_path)

    [rec] = records
    assert (rec["outcome"], rec["queue"]) == ("abandoned", "general")
    assert rec["agent"] is None and rec["talk_time"] in (None, 0)
    assert rec["wait_time"] == pytest.approx(3, abs=0.6)
    mine = pops_for(socks["1002"], rec["call_id"])
    assert [m["type"] for m in mine].count("pop") == 1
    assert mine[-1]["type"] == "pop_close"


async def test_call_without_fastagi_gets_default_queue_and_a_full_pop(
        traces_dir: Path, tmp_path: Path) -> None:
    _, records, socks, agi = await run_trace(traces_dir, "inbound_no_agi", tmp_path, speed=5)

    assert agi == []
    [rec] = records
    assert (rec["outcome"], rec["queue"], rec["agent"]) == ("answered", "general", "1003")
    assert rec["route"] is None  # the dialplan's fallback chose the queue, not us
    mine = pops_for(socks["1003"], rec["call_id"])
    assert [m["type"] for m in mine].count("pop") == 1
    assert profile_seen(mine)["customer_id"] == "CUST-1003"


async def test_blind_transfer_keeps_one_call_and_the_customer(traces_dir: Path,
                                                              tmp_path: Path) -> None:
    _, records, socks, _ = await run_trace(traces_dir, "blind_transfer", tmp_path, speed=20)

    [rec] = records
    assert rec["agents"] == ["1001", "1004"] and rec["agent"] == "1004"
    assert rec["caller_num"] == "+15551230020" and rec["caller_name"] == "Grace Transfer"
    assert rec["outcome"] == "answered"
    first = pops_for(socks["1001"], rec["call_id"])
    second = pops_for(socks["1004"], rec["call_id"])
    assert [m["type"] for m in first].count("pop") == 1
    assert any(m.get("state") == "transferred" for m in first)
    [pop] = [m for m in second if m["type"] == "pop"]
    assert pop["caller"]["number"] == "+15551230020"
    assert profile_seen(second)["customer_id"] == "CUST-1020"


async def test_burst_of_20_calls_gives_20_records_and_no_pop_twice(traces_dir: Path,
                                                                  tmp_path: Path) -> None:
    _, records, socks, agi = await run_trace(traces_dir, "burst", tmp_path, speed=20,
                                             expect_records=20)

    assert len(agi) == 20
    assert len(records) == 20 and len({r["call_id"] for r in records}) == 20
    assert Counter(r["outcome"] for r in records) == {"answered": 20}
    queues = Counter(r["route"]["queue"] for r in records)
    assert queues == {"vip": 4, "complaints": 4, "general": 12}
    for sock in socks.values():
        per_call = Counter(m["call_id"] for m in sock.of_type("pop"))
        assert all(n == 1 for n in per_call.values()), (sock.agent, per_call)
    popped = {m["call_id"] for s in socks.values() for m in s.of_type("pop")}
    assert popped == {r["call_id"] for r in records}


async def test_callbacks_are_recorded_as_outbound_calls(traces_dir: Path,
                                                        tmp_path: Path) -> None:
    _, records, socks, _ = await run_trace(traces_dir, "callback_answered", tmp_path,
                                           speed=20, expect_records=2)

    by_id = {r["call_id"]: r for r in records}
    assert set(by_id) == {"1796302682.26", "cti-cb-0002"}
    for rec in by_id.values():
        assert rec["direction"] == "outbound"
        assert rec["agent"] == "1001" and rec["outcome"] == "answered"


async def test_failed_callbacks_do_not_become_answered_calls(traces_dir: Path,
                                                             tmp_path: Path) -> None:
    _, records, _, _ = await run_trace(traces_dir, "callback_failed", tmp_path, speed=20,
                                       expect_records=4)

    # Without our own dialer's ActionIDs, "outbound" is known from the root channel's
    # context (calls.outbound_contexts = callbacks); the no-such-context one is not.
    outbound = {r["call_id"] for r in records if r["direction"] == "outbound"}
    assert outbound == {"1796302693.34", "1796302693.36", "1796302698.40"}
    assert records and all(r["outcome"] == "failed" for r in records)
    assert all(r["agent"] is None for r in records)


async def test_actions_session_call_ends_abandoned_in_overflow(traces_dir: Path,
                                                               tmp_path: Path) -> None:
    _, records, _, agi = await run_trace(traces_dir, "actions", tmp_path, speed=20)

    assert 'SET VARIABLE CTI_QUEUE "overflow"' in agi[0]
    [rec] = records
    assert (rec["queue"], rec["outcome"]) == ("overflow", "abandoned")
    assert rec["caller_name"] == "Judy Live"


def call_traces() -> list[str]:
    """Every recorded session with calls in it (new recordings are picked up as they come)."""
    from conftest import SHARED

    names = sorted(p.name.removesuffix(".ami.raw")
                   for p in (SHARED / "traces").glob("*.ami.raw"))
    return [n for n in names if not n.startswith("login_")]  # no calls: test_ami_client.py


@pytest.mark.parametrize("name", call_traces())
async def test_any_recorded_session_ends_every_call_records_it_and_closes_every_pop(
        traces_dir: Path, tmp_path: Path, name: str) -> None:
    raw = (traces_dir / f"{name}.ami.raw").read_bytes()
    has_calls = b"Event: Newchannel" in raw
    daemon, records, socks, agi = await run_trace(traces_dir, name, tmp_path, speed=20,
                                                  expect_records=1 if has_calls else 0)

    # the recording ends with every channel hung up: nothing may stay "live"
    assert daemon.tracker.live_calls() == []
    assert bool(records) == has_calls
    for rec in records:
        assert rec["outcome"] in ("answered", "abandoned", "no_agent", "failed"), rec
        assert (rec["outcome"] == "answered") == bool(rec["agents"]), rec
        assert rec["caller_num"] is None or rec["caller_num"].lstrip("+").isdigit(), rec
    # every FastAGI session of the recording was routed in time
    for commands in agi:
        assert any(c.startswith("SET VARIABLE CTI_QUEUE ") for c in commands), commands
    # no agent is left with an open card, and nobody got a pop for a call they never rang
    recorded = {r["call_id"]: r for r in records}
    for agent, sock in socks.items():
        by_call: dict[str, list[str]] = {}
        for m in sock.messages:
            if m.get("call_id"):
                by_call.setdefault(m["call_id"], []).append(m["type"])
        for call_id, kinds in by_call.items():
            assert kinds[-1] == "pop_close", (agent, call_id, kinds)
            legs = recorded[call_id]["legs"] if call_id in recorded else []
            assert any(leg["agent"] == agent for leg in legs), (agent, call_id)
