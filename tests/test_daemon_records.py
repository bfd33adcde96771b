"""Finished calls are never dropped on their way to the call store."""

from __future__ import annotations

import asyncio
from pathlib import Path

from cti.config import Settings
from cti.daemon import Daemon


async def test_a_failing_store_is_retried_until_the_record_is_written(tmp_path: Path) -> None:
    settings = Settings().model_copy(update={
        "store": Settings().store.model_copy(update={"path": tmp_path / "cti.sqlite3"}),
        "crm": Settings().crm.model_copy(update={"path": tmp_path / "crm.sqlite3"}),
    })
    daemon = Daemon(settings)
    await daemon.store.open()
    real_save = daemon.store.save_call
    attempts = []

    async def flaky_save(record: dict, **kw: object) -> None:
        attempts.append(record["call_id"])
        if len(attempts) <= 2:
            raise OSError("database or disk is full")
        await real_save(record, **kw)

    daemon.store.save_call = flaky_save  # type: ignore[method-assign]
    writer = asyncio.create_task(daemon._record_writer())
    for call_id in ("L1", "L2"):
        daemon._records.put_nowait({"call_id": call_id, "started_at": 1.0, "outcome": "answered"})
    daemon._records.put_nowait(None)
    await asyncio.wait_for(writer, 10)

    assert attempts == ["L1", "L1", "L1", "L2"]
    assert {r["call_id"] for r in await daemon.store.calls()} == {"L1", "L2"}
    await daemon.store.close()
