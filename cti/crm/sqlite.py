"""The embedded CRM: customers, their numbers, tickets, history and articles in SQLite.

Theory of operation. Every number is normalised once, when it is written
(:func:`cti.crm.phone.normalise` with the customer's own region, else the CRM's
region), and stored beside the raw text the human typed. A lookup is then one indexed
equality on the normalised value; junk values are kept raw with a NULL value, so
they are visible to people and never match anything.

One SQLite connection in WAL mode serves everything, behind a lock. The coroutines
(``open``, ``lookup``, ``log_call``, ``is_empty``, ``close`` ...) run their queries on
one dedicated worker thread, so the event loop never waits on the disk. The blocking
methods (``*_sync``, ``upsert_customer``, ``add_ticket`` ...) are the bodies of those
coroutines and the tools of seeding and imports: call them off the event loop, e.g.
through :meth:`SqliteCrm.run_blocking`.

Every :class:`sqlite3.Error` leaves as :class:`~cti.errors.CrmError` naming the
database file and the operation; a write that fails is rolled back whole.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from uuid import uuid4

from cti.crm.base import Article, Customer, Interaction, LookupResult, Ticket
from cti.crm.phone import check_region, normalise
from cti.errors import CrmError, CrmUnavailable
from cti.log import get_logger

log = get_logger(__name__)
T = TypeVar("T")

SCHEMA_VERSION = 1
TICKET_STATUSES = ("open", "pending", "closed")
# Which of a customer's numbers is the better evidence of "this is who calls":
# a personal line beats a switchboard, a fax almost never rings an agent.
PHONE_KIND_RANK = {"mobile": 0, "phone": 0, "main": 0, "home": 1, "work": 1, "other": 2,
                   "fax": 3}
PhoneInput = str | tuple[str, str]     # "raw" or ("kind", "raw")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS customers (
    customer_id  TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    segment      TEXT NOT NULL DEFAULT 'standard',
    email        TEXT,
    company      TEXT,
    timezone     TEXT,
    language     TEXT,
    region       TEXT,               -- ISO 3166 region its national numbers belong to
    do_not_call  INTEGER NOT NULL DEFAULT 0,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS phones (
    id           INTEGER PRIMARY KEY,
    customer_id  TEXT NOT NULL REFERENCES customers(customer_id) ON DELETE CASCADE,
    kind         TEXT NOT NULL DEFAULT 'phone',     -- phone | mobile | fax | work ...
    raw          TEXT NOT NULL,                     -- as typed
    value        TEXT,                              -- +E164 or short digits; NULL = junk
    value_kind   TEXT NOT NULL                      -- e164 | short | none
);
CREATE INDEX IF NOT EXISTS phones_by_value ON phones(value);
CREATE INDEX IF NOT EXISTS phones_by_customer ON phones(customer_id);
CREATE TABLE IF NOT EXISTS tags (
    customer_id  TEXT NOT NULL REFERENCES customers(customer_id) ON DELETE CASCADE,
    tag          TEXT NOT NULL,
    PRIMARY KEY (customer_id, tag)
);
CREATE TABLE IF NOT EXISTS products (
    name         TEXT PRIMARY KEY
);
CREATE TABLE IF NOT EXISTS customer_products (
    customer_id  TEXT NOT NULL REFERENCES customers(customer_id) ON DELETE CASCADE,
    product      TEXT NOT NULL REFERENCES products(name),
    PRIMARY KEY (customer_id, product)
);
CREATE TABLE IF NOT EXISTS tickets (
    ticket_id    TEXT PRIMARY KEY,
    customer_id  TEXT NOT NULL REFERENCES customers(customer_id) ON DELETE CASCADE,
    subject      TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('open', 'pending', 'closed')),
    is_complaint INTEGER NOT NULL DEFAULT 0,
    product      TEXT,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS tickets_by_customer ON tickets(customer_id, status);
CREATE TABLE IF NOT EXISTS interactions (
    id           INTEGER PRIMARY KEY,
    customer_id  TEXT NOT NULL REFERENCES customers(customer_id) ON DELETE CASCADE,
    at           TEXT NOT NULL,                     -- ISO 8601 UTC, sortable as text
    channel      TEXT NOT NULL,                     -- call | email | chat | visit
    direction    TEXT NOT NULL,                     -- inbound | outbound
    summary      TEXT NOT NULL,
    outcome      TEXT,
    agent        TEXT,
    satisfaction INTEGER CHECK (satisfaction BETWEEN 1 AND 5),
    call_id      TEXT UNIQUE                        -- set when written by log_call
);
CREATE INDEX IF NOT EXISTS interactions_by_customer ON interactions(customer_id, at);
CREATE TABLE IF NOT EXISTS articles (
    article_id   TEXT PRIMARY KEY,
    product      TEXT NOT NULL,
    title        TEXT NOT NULL,
    url          TEXT
);
CREATE INDEX IF NOT EXISTS articles_by_product ON articles(product);
"""


def iso(value: datetime | float | int | str | None, default: datetime | None = None) -> str:
    """A timestamp as sortable ISO 8601 UTC text (``2025-01-31T09:00:00+00:00``).

    Accepts an aware or naive (taken as UTC) datetime, epoch seconds or ISO text.
    Raises :class:`CrmError` naming a value it cannot read.
    """
    if value is None or value == "":
        if default is None:
            raise CrmError("timestamp is missing: expected ISO 8601 text or epoch seconds")
        value = default
    if isinstance(value, (int, float)):
        value = datetime.fromtimestamp(value, UTC)
    elif isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise CrmError(f"timestamp {value!r} is not ISO 8601") from None
    if not isinstance(value, datetime):
        raise CrmError(f"timestamp {value!r} is not a datetime, ISO text or epoch seconds")
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="seconds")


class SqliteCrm:
    """The embedded CRM, implementing :class:`cti.crm.base.Crm`.

    ``region`` is the ISO 3166 region national numbers belong to unless a customer
    has its own; ``history_days`` bounds the service history a lookup returns (and
    ``complaint_days`` the recent complaints). Construction does no I/O: ``await
    open()`` (or any first use) opens the file and creates the schema; ``await
    close()`` when done. Raises :class:`CrmUnavailable` if the file cannot be opened.
    """

    def __init__(self, path: Path | str, region: str, history_days: int = 90, *,
                 complaint_days: int = 90, history_limit: int = 50,
                 now: Callable[[], datetime] | None = None) -> None:
        self.path = str(path)
        self.region = check_region(region)
        self.history_days = history_days
        self.complaint_days = complaint_days
        self.history_limit = history_limit
        self._now = now or (lambda: datetime.now(UTC))
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crm-sqlite")

    # --- coroutines: the Crm interface and the daemon's lifecycle --------------------

    async def open(self) -> None:
        """Open the database and create missing tables (idempotent)."""
        await self.run_blocking(self.open_sync)

    async def lookup(self, number: str) -> LookupResult:
        """Customers owning ``number`` (``+E164`` or a short number), best match first.

        Status is ``found`` (one), ``ambiguous`` (several, all returned ranked),
        ``not_found`` or ``no_number`` (nothing usable was passed; no query made).
        Raises :class:`CrmError` if the database fails.
        """
        return await self.run_blocking(self.lookup_sync, number)

    async def log_call(self, record: dict[str, Any]) -> None:
        """Write a finished call into the customer's history; see :meth:`log_call_sync`."""
        await self.run_blocking(self.log_call_sync, record)

    async def get_customer(self, customer_id: str) -> Customer | None:
        """One customer by id, filled like a lookup match, or None."""
        return await self.run_blocking(self.get_customer_sync, customer_id)

    async def is_empty(self) -> bool:
        """True when there is no customer yet (the daemon then seeds the demo)."""
        return await self.run_blocking(self.customer_count_sync) == 0

    async def customer_count(self) -> int:
        return await self.run_blocking(self.customer_count_sync)

    async def close(self) -> None:
        """Close the database after queued queries finish; later calls raise CrmUnavailable."""
        if not self._closed:
            await self.run_blocking(self.close_sync)
        self._executor.shutdown(wait=False)

    async def run_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the CRM's worker thread (seeding, imports, queries)."""
        if self._closed:
            raise CrmUnavailable(f"CRM database {self.path!r} is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    # --- connection and transactions -------------------------------------------------

    def open_sync(self) -> None:
        """Blocking body of :meth:`open`."""
        with self._lock:
            if self._closed:
                raise CrmUnavailable(f"CRM database {self.path!r} is closed")
            if self._conn is not None:
                return
            conn = None
            try:
                if self.path != ":memory:":
                    Path(self.path).parent.mkdir(parents=True, exist_ok=True)
                # One connection shared by the worker thread and the blocking helpers;
                # the RLock serialises them, so check_same_thread can be off.
                conn = sqlite3.connect(self.path, timeout=5.0, isolation_level=None,
                                       check_same_thread=False)
                conn.row_factory = sqlite3.Row
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("PRAGMA foreign_keys=ON")
                conn.executescript(_SCHEMA)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            except (sqlite3.Error, OSError) as exc:
                if conn is not None:
                    conn.close()
                raise CrmUnavailable(f"cannot open CRM database {self.path!r}: {exc}") from exc
            self._conn = conn
            log.debug("crm database open", db=self.path, region=self.region)

    create_schema = open_sync    # the schema is created (if missing) when opening

    def close_sync(self) -> None:
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    @contextmanager
    def _tx(self, what: str, write: bool = False) -> Iterator[sqlite3.Connection]:
        """One transaction: a consistent snapshot for reads, all-or-nothing for writes."""
        with self._lock:
            if self._conn is None:
                self.open_sync()
            conn = self._conn
            assert conn is not None
            try:
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    with suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise CrmError(f"CRM database {self.path!r}: {what} failed: {exc}") from exc
                raise

    # --- blocking bodies (run on the worker thread, or directly by seeding/imports) --

    def customer_count_sync(self) -> int:
        with self._tx("count customers") as conn:
            return conn.execute("SELECT COUNT(*) FROM customers").fetchone()[0]

    def lookup_sync(self, number: str) -> LookupResult:
        """Blocking body of :meth:`lookup`."""
        # Callers pass normalised numbers; normalising again is idempotent for
        # those and rescues a raw caller ID passed by mistake.
        num = normalise(number, self.region, min_digits=1)
        if not num.usable:
            return LookupResult(number=None, status="no_number")

        with self._tx("lookup") as conn:
            rows = conn.execute(
                "SELECT p.customer_id, p.kind,"
                " (SELECT MAX(at) FROM interactions i WHERE i.customer_id = p.customer_id)"
                "   AS last_at"
                " FROM phones p WHERE p.value = ?", (num.value,)).fetchall()
            best: dict[str, tuple[int, str]] = {}
            for row in rows:
                rank = PHONE_KIND_RANK.get(row["kind"], 2)
                old = best.get(row["customer_id"])
                if old is None or rank < old[0]:
                    best[row["customer_id"]] = (rank, row["last_at"] or "")
            # Best phone kind first, then whoever was in touch most recently
            # (stable sorts, applied from the least to the most important key).
            order = sorted(best)
            order.sort(key=lambda cid: best[cid][1], reverse=True)
            order.sort(key=lambda cid: best[cid][0])
            matches = [self._load_customer(conn, cid) for cid in order]

        status = "not_found" if not matches else "found" if len(matches) == 1 else "ambiguous"
        log.debug("crm lookup", number=num.value, status=status,
                  customers=[c.customer_id for c in matches])
        return LookupResult(number=num.value, matches=matches, status=status)

    def get_customer_sync(self, customer_id: str) -> Customer | None:
        with self._tx("read customer") as conn:
            return self._load_customer(conn, customer_id)

    def _load_customer(self, conn: sqlite3.Connection, customer_id: str) -> Customer | None:
        row = conn.execute("SELECT * FROM customers WHERE customer_id = ?",
                           (customer_id,)).fetchone()
        if row is None:
            return None
        now = self._now()
        history_since = iso(now - timedelta(days=self.history_days))
        complaints_since = iso(now - timedelta(days=self.complaint_days))

        phones = conn.execute(
            "SELECT kind, value FROM phones WHERE customer_id = ? AND value IS NOT NULL"
            " ORDER BY id", (customer_id,)).fetchall()
        phone_values = [p["value"] for p in sorted(
            phones, key=lambda p: PHONE_KIND_RANK.get(p["kind"], 2))]
        tags = [r[0] for r in conn.execute(
            "SELECT tag FROM tags WHERE customer_id = ? ORDER BY tag", (customer_id,))]
        products = [r[0] for r in conn.execute(
            "SELECT product FROM customer_products WHERE customer_id = ? ORDER BY product",
            (customer_id,))]
        history = [_interaction(r) for r in conn.execute(
            "SELECT * FROM interactions WHERE customer_id = ? AND at >= ?"
            " ORDER BY at DESC, id DESC LIMIT ?",
            (customer_id, history_since, self.history_limit))]
        satisfaction = conn.execute(
            "SELECT AVG(satisfaction) FROM interactions"
            " WHERE customer_id = ? AND at >= ? AND satisfaction IS NOT NULL",
            (customer_id, history_since)).fetchone()[0]
        open_tickets = [_ticket(r) for r in conn.execute(
            "SELECT * FROM tickets WHERE customer_id = ? AND status != 'closed'"
            " ORDER BY updated_at DESC, ticket_id", (customer_id,))]
        complaints = [_ticket(r) for r in conn.execute(
            "SELECT * FROM tickets WHERE customer_id = ? AND is_complaint = 1"
            " AND created_at >= ? ORDER BY created_at DESC, ticket_id",
            (customer_id, complaints_since))]
        articles: list[Article] = []
        if products:
            marks = ",".join("?" * len(products))
            articles = [Article(r["article_id"], r["product"], r["title"], r["url"])
                        for r in conn.execute(
                            f"SELECT * FROM articles WHERE product IN ({marks})"
                            " ORDER BY product, article_id", products)]

        return Customer(
            customer_id=row["customer_id"], name=row["name"], segment=row["segment"],
            tags=tags, phones=phone_values, email=row["email"], company=row["company"],
            timezone=row["timezone"], language=row["language"],
            do_not_call=bool(row["do_not_call"]), products=products, history=history,
            open_tickets=open_tickets, recent_complaints=complaints, articles=articles,
            satisfaction=round(satisfaction, 2) if satisfaction is not None else None,
        )

    def log_call_sync(self, record: dict[str, Any]) -> bool:
        """Write a call record into the customer's history, once per ``call_id``.

        Takes a call record as the call store keeps it (``Call.as_dict()``): the
        customer is ``customer_id``, else ``route.customer_id``, else the one customer
        owning ``caller_num`` (nothing is written for an unknown or shared number).
        Also reads ``started_at``, ``direction``, ``outcome``, ``agent``, ``queue``,
        ``talk_time``, ``summary`` and ``satisfaction``. Logging the same call again
        updates its row instead of adding one. Returns True if a row was written;
        raises :class:`CrmError` for a record without ``call_id``.
        """
        call_id = record.get("call_id")
        if not call_id:
            raise CrmError(f"call record without call_id (keys: {sorted(record)}): "
                           "cannot write it idempotently")
        customer_id = record.get("customer_id") or (record.get("route") or {}).get("customer_id")
        if not customer_id and record.get("caller_num"):
            # The route may have missed the CRM (timeout): the history still belongs
            # to the caller, if the number names exactly one customer.
            owner = self.lookup_sync(record["caller_num"]).customer
            customer_id = owner.customer_id if owner else None
        if not customer_id:
            return False

        at = iso(record.get("started_at") or record.get("at"), default=self._now())
        direction = record.get("direction") or "inbound"
        outcome = record.get("outcome")
        agent = record.get("agent") or record.get("agent_id")
        summary = record.get("summary") or _call_summary(record, direction, outcome, agent)

        with self._tx("log call", write=True) as conn:
            known = conn.execute("SELECT 1 FROM customers WHERE customer_id = ?",
                                 (customer_id,)).fetchone()
            if not known:
                log.warning("call log for unknown customer skipped", call_id=call_id,
                            customer_id=customer_id)
                return False
            conn.execute(
                "INSERT INTO interactions (customer_id, at, channel, direction, summary,"
                " outcome, agent, satisfaction, call_id) VALUES (?, ?, 'call', ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(call_id) DO UPDATE SET customer_id = excluded.customer_id,"
                " at = excluded.at, direction = excluded.direction,"
                " summary = excluded.summary, outcome = excluded.outcome,"
                " agent = excluded.agent,"
                " satisfaction = COALESCE(excluded.satisfaction, interactions.satisfaction)",
                (customer_id, at, direction, summary, outcome, agent,
                 record.get("satisfaction"), call_id))
        log.debug("call logged to crm", call_id=call_id, customer_id=customer_id)
        return True

    # --- seeding and import helpers (blocking) ---------------------------------------

    def upsert_customer(self, customer_id: str, name: str, *, segment: str = "standard",
                        phones: Iterable[PhoneInput] = (), email: str | None = None,
                        company: str | None = None, timezone: str | None = None,
                        language: str | None = None, region: str | None = None,
                        do_not_call: bool = False, tags: Iterable[str] = (),
                        products: Iterable[str] = ()) -> bool:
        """Create or replace a customer's identity, numbers, tags and products.

        Tickets and history are kept. Each phone is ``"raw"`` or ``("kind", "raw")``
        and is normalised with ``region`` (else the CRM's region); unusable ones are
        stored raw and never match. One transaction. Returns True if created.
        """
        region = check_region(region) if region else None
        phone_rows = []
        for phone in phones:
            kind, raw = phone if isinstance(phone, tuple) else ("phone", phone)
            num = normalise(raw, region or self.region)
            phone_rows.append((customer_id, kind, raw, num.value, num.kind))
        now = iso(self._now())

        with self._tx(f"write customer {customer_id!r}", write=True) as conn:
            created = conn.execute("SELECT 1 FROM customers WHERE customer_id = ?",
                                   (customer_id,)).fetchone() is None
            conn.execute(
                "INSERT INTO customers (customer_id, name, segment, email, company, timezone,"
                " language, region, do_not_call, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(customer_id) DO UPDATE SET name = excluded.name,"
                " segment = excluded.segment, email = excluded.email,"
                " company = excluded.company, timezone = excluded.timezone,"
                " language = excluded.language, region = excluded.region,"
                " do_not_call = excluded.do_not_call, updated_at = excluded.updated_at",
                (customer_id, name, segment, email, company, timezone, language, region,
                 int(do_not_call), now, now))
            for table in ("phones", "tags", "customer_products"):
                conn.execute(f"DELETE FROM {table} WHERE customer_id = ?", (customer_id,))
            conn.executemany("INSERT INTO phones (customer_id, kind, raw, value, value_kind)"
                             " VALUES (?, ?, ?, ?, ?)", phone_rows)
            conn.executemany("INSERT OR IGNORE INTO tags (customer_id, tag) VALUES (?, ?)",
                             [(customer_id, t) for t in tags])
            products = list(dict.fromkeys(products))
            conn.executemany("INSERT OR IGNORE INTO products (name) VALUES (?)",
                             [(p,) for p in products])
            conn.executemany("INSERT INTO customer_products (customer_id, product)"
                             " VALUES (?, ?)", [(customer_id, p) for p in products])
        return created

    def add_article(self, article_id: str, product: str, title: str,
                    url: str | None = None) -> None:
        """Create or replace a knowledge article shown to agents for ``product``."""
        with self._tx(f"add article {article_id!r}", write=True) as conn:
            conn.execute("INSERT OR REPLACE INTO articles (article_id, product, title, url)"
                         " VALUES (?, ?, ?, ?)", (article_id, product, title, url))

    def add_ticket(self, customer_id: str, subject: str, *, ticket_id: str | None = None,
                   status: str = "open", is_complaint: bool = False,
                   product: str | None = None, created_at: datetime | str | None = None,
                   updated_at: datetime | str | None = None) -> str:
        """Create or replace a ticket; returns its id. Raises CrmError for a bad status."""
        if status not in TICKET_STATUSES:
            raise CrmError(f"ticket status {status!r}: expected one of {TICKET_STATUSES}")
        ticket_id = ticket_id or f"T-{uuid4().hex[:10]}"
        created = iso(created_at, default=self._now())
        updated = iso(updated_at, default=datetime.fromisoformat(created))
        with self._tx(f"add ticket {ticket_id!r}", write=True) as conn:
            conn.execute(
                "INSERT OR REPLACE INTO tickets (ticket_id, customer_id, subject, status,"
                " is_complaint, product, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (ticket_id, customer_id, subject, status, int(is_complaint), product,
                 created, updated))
        return ticket_id

    def add_interaction(self, customer_id: str, at: datetime | str, summary: str, *,
                        channel: str = "call", direction: str = "inbound",
                        outcome: str | None = None, agent: str | None = None,
                        satisfaction: int | None = None, call_id: str | None = None) -> None:
        """Add one entry to a customer's service history (once per non-empty ``call_id``)."""
        with self._tx(f"add interaction for {customer_id!r}", write=True) as conn:
            conn.execute(
                "INSERT INTO interactions (customer_id, at, channel, direction, summary,"
                " outcome, agent, satisfaction, call_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(call_id) DO NOTHING",
                (customer_id, iso(at), channel, direction, summary, outcome, agent,
                 satisfaction, call_id))

    def phones_of(self, customer_id: str) -> list[tuple[str, str, str | None]]:
        """``(kind, raw, normalised value)`` of every stored number, junk included."""
        with self._tx(f"read phones of {customer_id!r}") as conn:
            return [(r["kind"], r["raw"], r["value"]) for r in conn.execute(
                "SELECT kind, raw, value FROM phones WHERE customer_id = ? ORDER BY id",
                (customer_id,))]


def _ticket(row: sqlite3.Row) -> Ticket:
    return Ticket(ticket_id=row["ticket_id"], subject=row["subject"], status=row["status"],
                  is_complaint=bool(row["is_complaint"]), product=row["product"],
                  created_at=row["created_at"], updated_at=row["updated_at"])


def _interaction(row: sqlite3.Row) -> Interaction:
    return Interaction(at=row["at"], channel=row["channel"], direction=row["direction"],
                       summary=row["summary"], outcome=row["outcome"], agent=row["agent"],
                       satisfaction=row["satisfaction"])


def _call_summary(record: dict[str, Any], direction: str, outcome: str | None,
                  agent: str | None) -> str:
    parts = [f"{direction} call"]
    if record.get("queue"):
        parts.append(f"queue {record['queue']}")
    if agent:
        parts.append(f"agent {agent}")
    if outcome:
        parts.append(str(outcome))
    if record.get("talk_time") is not None:
        parts.append(f"talk {round(record['talk_time'])} s")
    return ", ".join(parts)
