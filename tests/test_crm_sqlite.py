"""The embedded SQLite CRM: matching (case 20), the demo data behind the traces, history."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cti.config import Settings
from cti.crm.demo import seed_demo
from cti.crm.phone import normalise
from cti.crm.sqlite import SqliteCrm
from cti.errors import CrmError, CrmUnavailable
from cti.routing.rules import decide

CONTACT_REGION = {1: "CN", 2: "US", 3: "US", 4: "DE"}   # a contact's own country, if any


def case20_contacts(cases_dir: Path) -> dict[int, list[tuple[str, str]]]:
    """The CRM fixture table of case 20: id -> [(kind, raw)]."""
    text = (cases_dir / "20-phone-format-normalisation.md").read_text(encoding="utf-8")
    contacts = {}
    for row in re.findall(r"^\| (\d+) \| [^|]+ \| ([^|]+) \|$", text, re.M):
        phones = []
        for part in row[1].split(","):
            found = re.fullmatch(r"\s*(?:(\w+) )?`([^`]*)`\s*", part)
            kind, raw = (found.group(1) or "phone", found.group(2)) if found else ("phone", "")
            phones.append((kind, raw))
        contacts[int(row[0])] = phones
    return contacts


async def case20_crm(tmp_path: Path, cases_dir: Path, home: str) -> SqliteCrm:
    crm = SqliteCrm(tmp_path / f"case20-{home}.sqlite3", home)
    await crm.open()
    for cid, phones in case20_contacts(cases_dir).items():
        crm.upsert_customer(f"C{cid}", f"contact {cid}", phones=phones,
                            region=CONTACT_REGION.get(cid))
    return crm


async def caller_lookup(crm: SqliteCrm, raw: str, home: str) -> list[str]:
    number = normalise(raw, home)
    if not number.usable:
        return []
    return [c.customer_id for c in (await crm.lookup(number.value)).matches]


def test_case20_fixture_table_is_read_as_expected(cases_dir: Path) -> None:
    contacts = case20_contacts(cases_dir)
    assert contacts[2] == [("phone", "(555) 123-4567"), ("mobile", "+1 555 123 4568")]
    assert contacts[4][1] == ("fax", "030/1234568")
    assert contacts[7] == [("phone", "sdfasdf"), ("phone", "n/a"), ("phone", "")]
    assert sorted(contacts) == [1, 2, 3, 4, 5, 6, 7]


# caller id -> contacts found with home region US, CN, DE
CASE20 = {
    "13800138000": ([], [1], []),
    "+8613800138000": ([1], [1], [1]),
    "008613800138000": ([1], [1], [1]),
    "5551234567": ([2, 3], [], []),
    "15551234567": ([2, 3], [], []),
    "+15551234567": ([2, 3], [2, 3], [2, 3]),
    "+1 (555) 123-4568": ([2], [2], [2]),
    "0301234567": ([], [], [4]),
    "+49301234567": ([4], [4], [4]),
    "4930 1234567": ([], [], [4]),
    "12345": ([5], [5], [5]),
}


@pytest.mark.parametrize("index, home", [(0, "US"), (1, "CN"), (2, "DE")])
async def test_case20_every_incoming_number_finds_the_expected_contacts(
        tmp_path: Path, cases_dir: Path, index: int, home: str) -> None:
    crm = await case20_crm(tmp_path, cases_dir, home)
    try:
        for raw, expected in CASE20.items():
            found = await caller_lookup(crm, raw, home)
            assert sorted(found) == [f"C{i}" for i in expected[index]], (raw, home)
    finally:
        await crm.close()


async def test_case20_shared_number_is_ambiguous_with_both_contacts(
        tmp_path: Path, cases_dir: Path) -> None:
    crm = await case20_crm(tmp_path, cases_dir, "US")
    result = await crm.lookup(normalise("5551234567", "US").value)
    await crm.close()

    assert result.status == "ambiguous"
    assert result.customer is None
    assert {c.customer_id for c in result.matches} == {"C2", "C3"}


async def test_case20_junk_values_are_kept_raw_and_never_match(
        tmp_path: Path, cases_dir: Path) -> None:
    crm = await case20_crm(tmp_path, cases_dir, "US")
    stored = crm.phones_of("C7")
    for raw in ("sdfasdf", "n/a", "", "na", "0"):
        assert (await crm.lookup(raw)).status == "no_number"
    await crm.close()

    assert [(raw, value) for _, raw, value in stored] == [
        ("sdfasdf", None), ("n/a", None), ("", None)]


async def test_case20_short_number_matches_only_the_exact_short_contact(
        tmp_path: Path, cases_dir: Path) -> None:
    crm = await case20_crm(tmp_path, cases_dir, "DE")
    short = await crm.lookup("12345")
    long = await crm.lookup("+4912345")
    await crm.close()

    assert [c.customer_id for c in short.matches] == ["C5"]
    assert [c.customer_id for c in long.matches] == ["C6"]


async def test_a_contact_without_its_own_region_is_read_with_the_crm_region(
        tmp_path: Path) -> None:
    # The Odoo trap of case 20: a US tenant stores a bare Chinese mobile as +1...
    crm = SqliteCrm(tmp_path / "crm.sqlite3", "US")
    crm.upsert_customer("C1", "Zhang Wei", phones=["138-0013-8000"])
    crm.upsert_customer("C2", "Zhang Wei (fixed)", phones=["138-0013-8000"], region="CN")
    found = await crm.lookup("+8613800138000")
    await crm.close()

    assert [c.customer_id for c in found.matches] == ["C2"]


async def test_personal_line_ranks_before_a_fax_and_recent_contact_first(
        tmp_path: Path) -> None:
    crm = SqliteCrm(tmp_path / "crm.sqlite3", "US")
    crm.upsert_customer("A-FAX", "Fax owner", phones=[("fax", "+1 212 555 0100")])
    crm.upsert_customer("B-OLD", "Old contact", phones=[("phone", "212-555-0100")])
    crm.upsert_customer("C-NEW", "New contact", phones=[("mobile", "(212) 555-0100")])
    now = datetime.now(UTC)
    crm.add_interaction("B-OLD", now - timedelta(days=30), "old call")
    crm.add_interaction("C-NEW", now - timedelta(days=1), "recent call")
    result = await crm.lookup("+12125550100")
    await crm.close()

    assert [c.customer_id for c in result.matches] == ["C-NEW", "B-OLD", "A-FAX"]


# --- the demo data reproduces the routing recorded in the traces -----------------------


def trace_routes(traces_dir: Path) -> list[tuple[str, dict[str, str]]]:
    """(agi_callerid, {CTI_* variable: value}) for every recorded FastAGI session."""
    sessions = []
    for path in sorted(traces_dir.glob("*.agi.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            session = json.loads(line)
            env = dict(session["env"])
            sets = dict(re.findall(r'^SET VARIABLE (CTI_\w+) "([^"]*)"$',
                                   "\n".join(x["line"] for x in session["exchanges"]
                                             if x["dir"] == "out"), re.M))
            sessions.append((env["agi_callerid"], sets))
    return sessions


async def test_every_trace_caller_is_routed_as_recorded_with_the_demo_data(
        tmp_path: Path, traces_dir: Path) -> None:
    # the callers the demo data was written for (new recordings may bring others)
    known = {"+15551230001", "+15551230002", "+15551230010", "+15551230020",
             *(f"+1555123{1000 + i}" for i in range(20))}
    sessions = [(caller, sets) for caller, sets in trace_routes(traces_dir) if caller in known]
    assert {caller for caller, _ in sessions} == known
    crm = SqliteCrm(tmp_path / "demo.sqlite3", "US")
    assert await crm.is_empty()
    await seed_demo(crm)
    routing = Settings().routing

    for caller, recorded in sessions:
        result = await crm.lookup(normalise(caller, "US").value)
        assert result.status == "found", caller
        route = decide(result, routing)
        assert result.customer.customer_id == recorded["CTI_CUSTOMER_ID"]
        assert result.customer.segment == recorded["CTI_SEGMENT"]
        assert (route.queue, str(route.priority)) == (
            recorded["CTI_QUEUE"], recorded["CTI_PRIORITY"]), caller
    await crm.close()


async def test_demo_seed_is_rich_and_safe_to_run_twice(tmp_path: Path) -> None:
    crm = SqliteCrm(tmp_path / "demo.sqlite3", "US")
    first = await seed_demo(crm)
    again = await seed_demo(crm)
    count = await crm.customer_count()
    alice = (await crm.lookup("+15551230001")).customer
    zhang = (await crm.lookup(normalise("13800138000", "CN").value)).customer
    household = await crm.lookup("+12065550150")
    berlin_fax = await crm.lookup(normalise("030 1234568", "DE").value)
    await crm.close()

    assert first == again == count >= 30
    assert alice.timezone == "America/New_York" and alice.products == ["Fibre 1G", "TV Plus"]
    assert len(alice.history) == 3 and alice.satisfaction == 4.5
    assert {a.product for a in alice.articles} == {"Fibre 1G", "TV Plus"}
    assert len(alice.articles) >= 4
    assert zhang.name == "Zhang Wei" and zhang.timezone == "Asia/Shanghai"
    assert household.status == "ambiguous"
    assert berlin_fax.customer.company == "Berlin GmbH"


# --- history, tickets, articles ---------------------------------------------------------


async def test_history_window_drops_old_interactions_and_orders_newest_first(
        tmp_path: Path) -> None:
    now = datetime(2025, 6, 30, 12, 0, tzinfo=UTC)
    crm = SqliteCrm(tmp_path / "crm.sqlite3", "US", history_days=90, now=lambda: now)
    crm.upsert_customer("C1", "Ann", phones=["+1 212 555 0101"], products=["Fibre 1G"])
    crm.add_interaction("C1", now - timedelta(days=100), "too old", satisfaction=1)
    crm.add_interaction("C1", now - timedelta(days=89), "oldest kept", satisfaction=5)
    crm.add_interaction("C1", now - timedelta(days=2), "newest", satisfaction=4)
    crm.add_interaction("C1", now - timedelta(days=40), "middle", channel="email")
    customer = (await crm.lookup("+12125550101")).customer
    await crm.close()

    assert [h.summary for h in customer.history] == ["newest", "middle", "oldest kept"]
    assert customer.history[1].channel == "email"
    assert customer.satisfaction == 4.5     # the 100-day-old 1 is outside the window


async def test_tickets_complaints_and_articles_fill_the_customer(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    crm = SqliteCrm(tmp_path / "crm.sqlite3", "US")
    crm.upsert_customer("C1", "Ann", phones=["+1 212 555 0101"], tags=["churn_risk"],
                        products=["TV Plus"], do_not_call=True)
    crm.add_article("KB-1", "TV Plus", "Rescan channels")
    crm.add_article("KB-2", "Fibre 1G", "Restart router")
    crm.add_ticket("C1", "No signal", ticket_id="T1", status="open", is_complaint=True,
                   created_at=now - timedelta(days=3))
    crm.add_ticket("C1", "Invoice copy", ticket_id="T2", status="pending",
                   created_at=now - timedelta(days=1))
    crm.add_ticket("C1", "Old complaint", ticket_id="T3", status="closed",
                   is_complaint=True, created_at=now - timedelta(days=120))
    crm.add_ticket("C1", "Recent complaint", ticket_id="T4", status="closed",
                   is_complaint=True, created_at=now - timedelta(days=20))
    customer = (await crm.lookup("+12125550101")).customer
    await crm.close()

    assert [t.ticket_id for t in customer.open_tickets] == ["T2", "T1"]
    assert [t.ticket_id for t in customer.recent_complaints] == ["T1", "T4"]
    assert [a.article_id for a in customer.articles] == ["KB-1"]
    assert customer.flags == ["open_complaint", "unresolved", "churn_risk"]
    assert customer.do_not_call is True


async def test_bad_ticket_status_is_refused_naming_it(tmp_path: Path) -> None:
    crm = SqliteCrm(tmp_path / "crm.sqlite3", "US")
    crm.upsert_customer("C1", "Ann", phones=["+1 212 555 0101"])
    with pytest.raises(CrmError, match="'solved'"):
        crm.add_ticket("C1", "x", status="solved")
    await crm.close()


# --- log_call ------------------------------------------------------------------------


async def test_log_call_is_idempotent_on_call_id(tmp_path: Path) -> None:
    crm = SqliteCrm(tmp_path / "crm.sqlite3", "US")
    crm.upsert_customer("C1", "Ann", phones=["+1 212 555 0101"])
    record = {"call_id": "1796302636.0", "started_at": datetime.now(UTC).timestamp(),
              "direction": "inbound", "queue": "vip", "agent": "1001", "outcome": "answered",
              "talk_time": 3.2, "route": {"customer_id": "C1"}}
    await crm.log_call(record)
    await crm.log_call(record)
    await crm.log_call({**record, "outcome": "transferred"})
    history = (await crm.lookup("+12125550101")).customer.history
    await crm.close()

    assert len(history) == 1
    assert history[0].outcome == "transferred"
    assert history[0].summary == "inbound call, queue vip, agent 1001, transferred, talk 3 s"


async def test_log_call_without_route_finds_the_single_owner_of_the_caller_number(
        tmp_path: Path) -> None:
    crm = SqliteCrm(tmp_path / "crm.sqlite3", "US")
    crm.upsert_customer("C1", "Ann", phones=["+1 212 555 0101"])
    crm.upsert_customer("C2", "Bo", phones=["+1 212 555 0199"])
    crm.upsert_customer("C3", "Cy", phones=["+1 212 555 0199"])
    written = [crm.log_call_sync({"call_id": "a", "caller_num": "2125550101", "route": None}),
               crm.log_call_sync({"call_id": "b", "caller_num": "2125550199"}),   # shared
               crm.log_call_sync({"call_id": "c", "caller_num": "anonymous"}),
               crm.log_call_sync({"call_id": "d", "customer_id": "NOPE"})]
    await crm.close()

    assert written == [True, False, False, False]


async def test_log_call_without_call_id_is_refused(tmp_path: Path) -> None:
    crm = SqliteCrm(tmp_path / "crm.sqlite3", "US")
    with pytest.raises(CrmError, match="call_id"):
        await crm.log_call({"customer_id": "C1"})
    await crm.close()


# --- the event loop and the lifecycle --------------------------------------------------


async def test_queries_run_on_the_crm_worker_thread_not_the_loop(tmp_path: Path) -> None:
    crm = SqliteCrm(tmp_path / "crm.sqlite3", "US")
    crm.upsert_customer("C1", "Ann", phones=["+1 212 555 0101"])
    threads = []
    real = crm.lookup_sync

    def spy(number: str):
        threads.append(threading.current_thread())
        return real(number)

    crm.lookup_sync = spy  # type: ignore[method-assign]
    results = await asyncio.gather(*(crm.lookup("+12125550101") for _ in range(5)))
    await crm.close()

    assert all(r.status == "found" for r in results)
    assert len({t.ident for t in threads}) == 1
    assert threads[0] is not threading.current_thread()
    assert threads[0].name.startswith("crm-sqlite")


async def test_closed_crm_raises_crm_unavailable(tmp_path: Path) -> None:
    crm = SqliteCrm(tmp_path / "crm.sqlite3", "US")
    await crm.open()
    await crm.close()
    with pytest.raises(CrmUnavailable):
        await crm.lookup("+12125550101")
    with pytest.raises(CrmUnavailable):
        crm.upsert_customer("C1", "Ann")


async def test_data_survives_reopening_the_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "crm.sqlite3"
    crm = SqliteCrm(path, "US")
    crm.upsert_customer("C1", "Ann", phones=["+1 212 555 0101"])
    await crm.close()
    again = SqliteCrm(path, "US")
    found = await again.lookup("+12125550101")
    await again.close()

    assert found.customer.name == "Ann"


def test_unopenable_database_is_crm_unavailable_naming_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    crm = SqliteCrm(blocker / "crm.sqlite3", "US")
    with pytest.raises(CrmUnavailable, match="crm.sqlite3"):
        crm.open_sync()
