"""Demo customers for the embedded CRM (all names and numbers are fake).

The first group reproduces the routing recorded in ``shared/traces/*.agi.jsonl`` with
the default rules of :mod:`cti.config`: every caller there is a customer here with
the same customer id and segment, and with exactly the tags and open complaints
that send them to the recorded queue (vip, complaints, overflow or general).

The second group makes the pop worth looking at: Chinese and German numbers stored
the way people type them, a customer with a phone and a mobile, a household line
shared by two customers (an ambiguous match), a churn risk, a complainer, a
do-not-call customer, tickets open and closed, three months of service history with
satisfaction scores, and knowledge articles for every product.

Dates are relative to ``now`` so the 90-day windows always have something in them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from cti.crm.sqlite import SqliteCrm
from cti.log import get_logger

log = get_logger(__name__)

FIBRE, MOBILE, TV = "Fibre 1G", "Mobile Unlimited", "TV Plus"

ARTICLES = [
    ("KB-F1", FIBRE, "Restarting the fibre router (ONT) safely"),
    ("KB-F2", FIBRE, "Why Wi-Fi speed is lower than the 1 Gbit/s line speed"),
    ("KB-F3", FIBRE, "Planned maintenance windows and outage map"),
    ("KB-M1", MOBILE, "Roaming: countries and data included"),
    ("KB-M2", MOBILE, "Unblocking a SIM with the PUK code"),
    ("KB-M3", MOBILE, "Fair-use policy explained"),
    ("KB-T1", TV, "Pairing a second set-top box"),
    ("KB-T2", TV, "Channels missing: running a channel rescan"),
]

# (days ago, channel, direction, summary, outcome, agent, satisfaction)
History = Sequence[tuple[int, str, str, str, str | None, str | None, int | None]]


async def seed_demo(crm: SqliteCrm, now: datetime | None = None) -> int:
    """Load the demo data on the CRM's worker thread; returns the customer count.

    Safe to run twice (customers are upserted, tickets and history have fixed ids).
    Raises :class:`~cti.errors.CrmError` if the database fails.
    """
    return await crm.run_blocking(seed_demo_sync, crm, now)


def seed_demo_sync(crm: SqliteCrm, now: datetime | None = None) -> int:
    """Blocking body of :func:`seed_demo` (for scripts without an event loop)."""
    now = now or datetime.now(UTC)
    for article_id, product, title in ARTICLES:
        crm.add_article(article_id, product, title,
                        url=f"https://kb.example.com/{article_id.lower()}")

    count = _trace_customers(crm, now) + _showcase_customers(crm, now)
    log.info("demo crm seeded", customers=count, db=crm.path)
    return count


def _history(crm: SqliteCrm, customer_id: str, now: datetime, entries: History) -> None:
    for n, (days, channel, direction, summary, outcome, agent, score) in enumerate(entries):
        crm.add_interaction(customer_id, now - timedelta(days=days, hours=n), summary,
                            channel=channel, direction=direction, outcome=outcome,
                            agent=agent, satisfaction=score,
                            call_id=f"demo-{customer_id}-{n}")


def _ticket(crm: SqliteCrm, customer_id: str, now: datetime, ticket_id: str, subject: str,
            status: str, days_ago: int, product: str | None,
            complaint: bool = False) -> None:
    created = now - timedelta(days=days_ago)
    updated = created + timedelta(days=min(days_ago, 2)) if status == "closed" else created
    crm.add_ticket(customer_id, subject, ticket_id=ticket_id, status=status,
                   is_complaint=complaint, product=product, created_at=created,
                   updated_at=updated)


def _trace_customers(crm: SqliteCrm, now: datetime) -> int:
    """The callers of the recorded traces, shaped to route as recorded."""
    crm.upsert_customer("CUST-1001", "Alice Smith", segment="gold",
                        phones=[("phone", "+1 555 123 0001")], email="alice.smith@example.com",
                        timezone="America/New_York", language="en", products=[FIBRE, TV])
    _history(crm, "CUST-1001", now, [
        (4, "call", "inbound", "Second set-top box not pairing; walked through KB-T1",
         "resolved", "1001", 5),
        (33, "email", "outbound", "Sent upgrade offer for TV Plus sports pack", None, "1002",
         None),
        (61, "call", "inbound", "Router restarts at night; firmware pushed", "resolved", "1003",
         4),
        (120, "call", "inbound", "Moved house: new fibre install booked", "resolved", "1001", 5),
    ])
    _ticket(crm, "CUST-1001", now, "T-1001-1", "Install second TV Plus box", "pending", 4, TV)
    _ticket(crm, "CUST-1001", now, "T-1001-2", "Router firmware crash", "closed", 61, FIBRE)

    crm.upsert_customer("CUST-1002", "Bob Jones", segment="standard",
                        phones=[("mobile", "(555) 123-0002")], email="bob.jones@example.com",
                        timezone="America/Chicago", language="en", products=[MOBILE])
    _history(crm, "CUST-1002", now, [
        (12, "call", "inbound", "Disputed roaming charges in Mexico; credit applied",
         "resolved", "1002", 3),
        (75, "chat", "inbound", "Asked how to check data balance", "resolved", None, 4),
    ])
    _ticket(crm, "CUST-1002", now, "T-1002-1", "Roaming charges disputed", "closed", 12,
            MOBILE, complaint=True)

    crm.upsert_customer("CUST-1010", "Judy Live", segment="standard",
                        phones=[("phone", "+15551230010")], email="judy.live@example.com",
                        timezone="America/Denver", language="en", tags=["overflow"],
                        products=[FIBRE])
    _history(crm, "CUST-1010", now, [
        (20, "call", "inbound", "Speed test below 500 Mbit/s over Wi-Fi; explained KB-F2",
         "resolved", "1003", 4),
    ])

    crm.upsert_customer("CUST-1020", "Grace Transfer", segment="gold",
                        phones=[("phone", "555.123.0020")], email="grace@transfer.example.com",
                        company="Transfer & Co", timezone="America/Los_Angeles", language="en",
                        products=[FIBRE, MOBILE])
    _history(crm, "CUST-1020", now, [
        (9, "call", "inbound", "Asked for the supervisor about contract renewal",
         "transferred", "1001", 4),
        (40, "visit", "inbound", "Shop visit: added two Mobile Unlimited lines", None, None, 5),
    ])

    # inbound_no_agi: never passed FastAGI, so her pop comes from the lookup on first sight
    crm.upsert_customer("CUST-1003", "Carol NoAGI", segment="silver",
                        phones=[("phone", "+1 (555) 123-0003")], email="carol@example.com",
                        timezone="America/New_York", language="en", tags=["churn_risk"],
                        products=[MOBILE, TV])
    _history(crm, "CUST-1003", now, [
        (6, "call", "inbound", "Wants to cancel TV Plus: price went up", "escalated", "1002", 2),
        (50, "email", "inbound", "Asked for a retention offer", None, None, None),
    ])
    _ticket(crm, "CUST-1003", now, "T-1003-1", "TV Plus price increase", "open", 6, TV)

    # callback_answered: customers the callback campaign dials (low satisfaction scores)
    for cid, name, number, days in (("CUST-1004", "Dan Callback", "+15551230004", 2),
                                    ("CUST-1014", "Erin Callback", "+15551230014", 5)):
        crm.upsert_customer(cid, name, segment="standard", phones=[("mobile", number)],
                            timezone="America/New_York", language="en", products=[FIBRE])
        _history(crm, cid, now, [(days, "call", "inbound", "Fibre outage, slow fix",
                                  "unresolved", "1003", 1)])

    for i in range(20):
        _burst_caller(crm, now, i)
    return 7 + 20


def _burst_caller(crm: SqliteCrm, now: datetime, i: int) -> None:
    """Burst Caller 00..19: every 5th gold (vip), the next one with an open complaint."""
    customer_id = f"CUST-{2000 + i}"
    segment = "gold" if i % 5 == 0 else "standard"
    crm.upsert_customer(customer_id, f"Burst Caller {i:02d}", segment=segment,
                        phones=[("mobile", f"+1555123{1000 + i}")],
                        timezone="America/New_York", language="en", products=[MOBILE])
    _history(crm, customer_id, now, [
        (3 + i, "call", "inbound", "Checked data balance and renewal date", "resolved",
         "1001" if i % 2 else "1002", 3 + i % 3),
    ])
    if i % 5 == 1:
        _ticket(crm, customer_id, now, f"T-{2000 + i}-1", "Calls drop at home every evening",
                "open", 2 + i % 7, MOBILE, complaint=True)


def _showcase_customers(crm: SqliteCrm, now: datetime) -> int:
    """Customers that show off normalisation, ambiguity and the pop's warnings."""
    crm.upsert_customer("CUST-3001", "Zhang Wei", segment="standard", region="CN",
                        phones=[("mobile", "138-0013-8000")], email="zhang.wei@example.cn",
                        timezone="Asia/Shanghai", language="zh", products=[MOBILE])
    _history(crm, "CUST-3001", now, [
        (15, "call", "inbound", "International roaming activation before trip", "resolved",
         "1004", 5),
    ])

    crm.upsert_customer("CUST-3002", "Li Na", segment="gold", region="CN",
                        phones=[("phone", "(010) 6552-9988")], company="Na Trading Ltd",
                        timezone="Asia/Shanghai", language="zh", products=[FIBRE])

    crm.upsert_customer("CUST-3003", "Maria Garcia", segment="silver",
                        phones=[("phone", "(212) 555-0142"), ("mobile", "+1 917 555 0177")],
                        email="maria.garcia@example.com", timezone="America/New_York",
                        language="es", products=[FIBRE, MOBILE, TV])
    _history(crm, "CUST-3003", now, [
        (6, "call", "outbound", "Callback: confirmed technician visit", "connected", "1002",
         None),
        (7, "call", "inbound", "No internet since storm; technician booked", "escalated",
         "1003", 3),
        (50, "email", "inbound", "Asked for paper invoices", "resolved", None, 4),
    ])
    _ticket(crm, "CUST-3003", now, "T-3003-1", "Fibre down after storm", "open", 7, FIBRE)

    crm.upsert_customer("CUST-3004", "Tom Becker", segment="standard", tags=["churn_risk"],
                        phones=[("phone", "312-555-0123")], email="tom.becker@example.com",
                        timezone="America/Chicago", language="en", products=[TV])
    _history(crm, "CUST-3004", now, [
        (10, "call", "inbound", "Asked for cancellation terms; competitor offer cheaper",
         "retention offer made", "1004", 2),
        (38, "call", "inbound", "Channels missing after update; rescan fixed it", "resolved",
         "1001", 2),
        (85, "chat", "inbound", "Price increase complaint", "explained", None, 1),
    ])
    _ticket(crm, "CUST-3004", now, "T-3004-1", "Price increase not announced", "closed", 85,
            TV, complaint=True)

    crm.upsert_customer("CUST-3005", "Victor Stern", segment="standard", tags=["complainer"],
                        phones=[("mobile", "+1 (646) 555-0199")], timezone="America/New_York",
                        language="en", products=[MOBILE, FIBRE])
    _history(crm, "CUST-3005", now, [
        (1, "call", "inbound", "Billed twice for last month; ticket opened", "escalated",
         "1002", 1),
        (44, "call", "inbound", "Complained about hold time", "resolved", "1003", 2),
    ])
    _ticket(crm, "CUST-3005", now, "T-3005-1", "Billed twice for last month", "open", 1,
            MOBILE, complaint=True)
    _ticket(crm, "CUST-3005", now, "T-3005-2", "Hold time over 20 minutes", "closed", 44,
            None, complaint=True)

    crm.upsert_customer("CUST-3006", "Jonas Weber", segment="platinum", region="DE",
                        phones=[("phone", "+49 30 1234567"), ("fax", "030/1234568")],
                        email="j.weber@berlin-gmbh.example.de", company="Berlin GmbH",
                        timezone="Europe/Berlin", language="de", products=[FIBRE])
    _history(crm, "CUST-3006", now, [
        (25, "call", "inbound", "Static IP for the office line", "resolved", "1004", 5),
    ])

    crm.upsert_customer("CUST-3007", "Nora Quiet", segment="standard", do_not_call=True,
                        phones=[("phone", "+1 415 555 0110")], timezone="America/Los_Angeles",
                        language="en", products=[TV])

    # One household landline on two customers: a lookup must say "ambiguous".
    for customer_id, name in (("CUST-3008", "Ken Park"), ("CUST-3009", "Mina Park")):
        crm.upsert_customer(customer_id, name, segment="standard",
                            phones=[("home", "(206) 555-0150")], timezone="America/Los_Angeles",
                            language="en", products=[FIBRE])
    _history(crm, "CUST-3009", now, [
        (18, "call", "inbound", "Moved the fibre box to the living room", "resolved", "1001",
         4),
    ])
    return 9
