"""Call records and the CRM outbox survive restarts and are written once."""

from __future__ import annotations

from pathlib import Path

from cti.store import CallStore


def record(call_id: str, started: float, outcome: str = "answered") -> dict:
    return {"call_id": call_id, "started_at": started, "ended_at": started + 10,
            "direction": "inbound", "outcome": outcome, "queue": "vip", "agent": "1001",
            "caller_num": "+15551230001", "route": {"customer_id": "CUST-1001"}}


async def test_saving_twice_keeps_one_record_and_one_outbox_item(tmp_path: Path) -> None:
    store = CallStore(tmp_path / "cti.sqlite3")
    await store.open()
    await store.save_call(record("L1", 100.0))
    await store.save_call(record("L1", 100.0, outcome="abandoned"))
    assert await store.count() == 1
    assert (await store.call("L1"))["outcome"] == "abandoned"
    pending = await store.pending()
    assert [(kind, payload["call_id"]) for _, kind, payload in pending] == [("call_record", "L1")]
    await store.close()


async def test_records_are_listed_newest_first_and_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "cti.sqlite3"
    store = CallStore(path)
    await store.open()
    for i in range(3):
        await store.save_call(record(f"L{i}", 100.0 + i))
    await store.close()

    again = CallStore(path)
    await again.open()
    assert [r["call_id"] for r in await again.calls()] == ["L2", "L1", "L0"]
    assert [r["call_id"] for r in await again.calls(since=101.0)] == ["L2", "L1"]
    await again.close()


async def test_outbox_item_stays_pending_until_marked_done(tmp_path: Path) -> None:
    store = CallStore(tmp_path / "cti.sqlite3")
    await store.open()
    await store.save_call(record("L1", 1.0))
    await store.save_call(record("L2", 2.0))
    (first_id, _, _), _ = await store.pending()
    await store.mark_failed(first_id, "CRM down")
    assert len(await store.pending()) == 2
    await store.mark_done(first_id)
    assert [p["call_id"] for _, _, p in await store.pending()] == ["L2"]
    await store.close()
