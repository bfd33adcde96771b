"""Local state in SQLite: finished call records and the CRM outbox.

A finished call is written once, with its CRM write-back queued in the same
transaction (the *outbox*), so a crash between the two cannot lose the
write-back. :class:`CallStore` runs every query on one worker thread: the
event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson

_SCHEMA = """
CREATE TABLE IF NOT EXISTS call_records (
    call_id     TEXT PRIMARY KEY,
    started_at  REAL NOT NULL,
    ended_at    REAL,
    direction   TEXT NOT NULL,
    outcome     TEXT,
    queue       TEXT,
    agent       TEXT,
    caller_num  TEXT,
    customer_id TEXT,
    record      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS call_records_started ON call_records(started_at);
CREATE TABLE IF NOT EXISTS outbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    kind        TEXT NOT NULL,
    key         TEXT NOT NULL,
    payload     TEXT NOT NULL,
    created_at  REAL NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT,
    done_at     REAL,
    UNIQUE(kind, key)
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox(done_at, id);
"""


class CallStore:
    """Call records and outbox. Open with :meth:`open`, then use the coroutines."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cti-store")
        self._db: sqlite3.Connection | None = None

    # -- lifecycle -----------------------------------------------------------

    async def open(self) -> None:
        await self._run(self._open)

    def _open(self) -> None:
        if str(self.path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        self._db = db

    async def close(self) -> None:
        if self._db is not None:
            await self._run(self._db.close)
            self._db = None
        self._pool.shutdown(wait=True)

    async def _run(self, fn: Any, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, fn, *args)

    # -- call records ----------------------------------------------------------

    async def save_call(self, record: dict[str, Any], *, outbox: bool = True) -> None:
        """Store a finished call (idempotent on call_id) and queue its CRM write-back."""
        await self._run(self._save_call, record, outbox)

    def _save_call(self, record: dict[str, Any], outbox: bool) -> None:
        assert self._db is not None
        route = record.get("route") or {}
        payload = orjson.dumps(record).decode()
        with _transaction(self._db):
            self._db.execute(
                "INSERT OR REPLACE INTO call_records (call_id, started_at, ended_at, direction,"
                " outcome, queue, agent, caller_num, customer_id, record)"
                " VALUES (?,?,?,?,?,?,?,?,?,?)",
                (record["call_id"], record["started_at"], record.get("ended_at"),
                 record.get("direction", "inbound"), record.get("outcome"), record.get("queue"),
                 record.get("agent"), record.get("caller_num"), route.get("customer_id"),
                 payload))
            if outbox:
                self._db.execute(
                    "INSERT OR IGNORE INTO outbox (kind, key, payload, created_at)"
                    " VALUES ('call_record', ?, ?, ?)",
                    (record["call_id"], payload, time.time()))

    async def calls(self, limit: int = 50, since: float | None = None) -> list[dict[str, Any]]:
        """Finished calls, newest first."""
        return await self._run(self._calls, limit, since)

    def _calls(self, limit: int, since: float | None) -> list[dict[str, Any]]:
        assert self._db is not None
        sql = "SELECT record FROM call_records"
        args: tuple[Any, ...] = ()
        if since is not None:
            sql += " WHERE started_at >= ?"
            args = (since,)
        sql += " ORDER BY started_at DESC LIMIT ?"
        rows = self._db.execute(sql, (*args, limit)).fetchall()
        return [orjson.loads(r[0]) for r in rows]

    async def call(self, call_id: str) -> dict[str, Any] | None:
        rows = await self._run(lambda: self._db.execute(  # type: ignore[union-attr]
            "SELECT record FROM call_records WHERE call_id = ?", (call_id,)).fetchall())
        return orjson.loads(rows[0][0]) if rows else None

    async def count(self) -> int:
        return await self._run(lambda: self._db.execute(  # type: ignore[union-attr]
            "SELECT count(*) FROM call_records").fetchone()[0])

    # -- outbox ----------------------------------------------------------------

    async def pending(self, limit: int = 100) -> list[tuple[int, str, dict[str, Any]]]:
        """Outbox items not yet delivered, oldest first: (id, kind, payload)."""
        rows = await self._run(lambda: self._db.execute(  # type: ignore[union-attr]
            "SELECT id, kind, payload FROM outbox WHERE done_at IS NULL ORDER BY id LIMIT ?",
            (limit,)).fetchall())
        return [(r[0], r[1], orjson.loads(r[2])) for r in rows]

    async def mark_done(self, item_id: int) -> None:
        await self._run(lambda: self._db.execute(  # type: ignore[union-attr]
            "UPDATE outbox SET done_at = ? WHERE id = ?", (time.time(), item_id)))

    async def mark_failed(self, item_id: int, error: str) -> None:
        await self._run(lambda: self._db.execute(  # type: ignore[union-attr]
            "UPDATE outbox SET attempts = attempts + 1, last_error = ? WHERE id = ?",
            (error[:500], item_id)))


class _transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
