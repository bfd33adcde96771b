"""Asterisk restarts mid-call: the daemon reconnects, rebuilds, and closes what is gone."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import websockets

from cti.config import Settings
from cti.daemon import Daemon
from cti.sim.events import CallParams
from cti.sim.pbx import PbxSimulator


async def eventually(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    for _ in range(int(timeout / 0.05)):
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached")


async def test_call_lost_in_an_asterisk_restart_is_ended_recorded_and_unpopped(
        tmp_path: Path) -> None:
    sim = PbxSimulator(ami_port=0, agi_url=None, rate=0.1, seed=5,
                       call_params=CallParams(ring=0.3, talk=30.0, hold=60.0))
    await sim.start()
    port = sim.ami_port
    base = Settings()
    settings = base.model_copy(update={
        "ami": base.ami.model_copy(update={"port": port, "backoff_initial": 0.05,
                                           "backoff_max": 0.2, "fully_booted_timeout": 0.2}),
        "agi": base.agi.model_copy(update={"port": 0}),
        "pops": base.pops.model_copy(update={"port": 0}),
        "http": base.http.model_copy(update={"port": 0}),
        "crm": base.crm.model_copy(update={"path": tmp_path / "crm.sqlite3", "seed_demo": True}),
        "store": base.store.model_copy(update={"path": tmp_path / "cti.sqlite3"}),
    })
    daemon = Daemon(settings)
    await daemon.start()
    messages: list[dict] = []
    restarted = None
    try:
        async with websockets.connect(f"ws://127.0.0.1:{daemon.pops.port}/") as ws:
            await ws.send(orjson.dumps({"type": "auth", "agent": "1001",
                                        "token": "demo-1001"}).decode())

            async def reader() -> None:
                async for frame in ws:
                    messages.append(orjson.loads(frame))

            reading = asyncio.create_task(reader())
            await asyncio.wait_for(daemon.resynced.wait(), 5)
            call_id = sim.place_call("inbound_answered", "+15551230001", "Alice Smith")

            async def connected() -> bool:
                call = daemon.tracker.get(call_id)
                return call is not None and call.agent == "1001" and call.answered_at is not None

            await eventually(connected)
            daemon.resynced.clear()
            await sim.stop()                       # Asterisk goes away, the call with it
            restarted = PbxSimulator(ami_port=port, agi_url=None, rate=0.1)
            await restarted.start()                # back, with no channels

            async def recorded() -> bool:
                return bool(await daemon.store.call(call_id))

            await eventually(recorded)
            await asyncio.sleep(0.2)
            reading.cancel()
        record = await daemon.store.call(call_id)
        assert record is not None
        assert record["outcome"] == "answered" and record["agent"] == "1001"
        assert daemon.tracker.get(call_id) is None
        mine = [m for m in messages if m.get("call_id") == call_id]
        assert [m["type"] for m in mine].count("pop") == 1
        assert mine[-1]["type"] == "pop_close", "the agent's card must not stay up"
        assert daemon.ami is not None and daemon.ami.status.connects >= 2
    finally:
        await daemon.stop()
        if restarted is not None:
            await restarted.stop()
