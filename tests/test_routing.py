"""Routing rules: what decide() makes of a lookup, one row per situation."""

from __future__ import annotations

import asyncio

import pytest

from cti.calls.model import Route
from cti.config import RouteRule, RoutingSettings, Settings
from cti.crm.base import Customer, LookupResult, Ticket
from cti.routing.rules import decide, evaluate
from cti.routing.service import RouteService

SETTINGS = RoutingSettings()   # rules vip (gold/platinum, tag vip), open-complaint, overflow


def _complaint() -> Ticket:
    return Ticket(ticket_id="T-1", subject="broken", status="open", is_complaint=True,
                  product=None, created_at="2026-01-01T00:00:00Z",
                  updated_at="2026-01-01T00:00:00Z")


def customer(cid: str, segment: str = "standard", tags: list[str] | None = None,
             complaint: bool = False) -> Customer:
    return Customer(customer_id=cid, name=cid, segment=segment, tags=tags or [],
                    open_tickets=[_complaint()] if complaint else [])


def found(*matches: Customer) -> LookupResult:
    status = "found" if len(matches) == 1 else "ambiguous"
    return LookupResult(number="+15551230001", matches=list(matches), status=status)


DEFAULT = ("general", 0, "unknown", None, "default")

CASES = [
    # (label, lookup, (queue, priority, segment, customer_id, source), reason must contain)
    ("gold segment -> vip", found(customer("CUST-1001", "gold")),
     ("vip", 5, "gold", "CUST-1001", "agi"), "CUST-1001 segment gold matched rule 'vip'"),
    ("vip tag -> vip", found(customer("CUST-7", "silver", ["vip"])),
     ("vip", 5, "silver", "CUST-7", "agi"), "tag vip matched rule 'vip'"),
    ("open complaint flag -> complaints", found(customer("CUST-2001", complaint=True)),
     ("complaints", 0, "standard", "CUST-2001", "agi"),
     "flag open_complaint matched rule 'open-complaint'"),
    ("overflow tag -> overflow", found(customer("CUST-1010", tags=["overflow"])),
     ("overflow", 0, "standard", "CUST-1010", "agi"), "tag overflow matched rule 'overflow'"),
    ("first matching rule wins", found(customer("CUST-9", "gold", ["overflow"], True)),
     ("vip", 5, "gold", "CUST-9", "agi"), "rule 'vip'"),
    ("known, no rule -> known queue", found(customer("CUST-1002")),
     ("general", 0, "standard", "CUST-1002", "agi"), "matched no rule"),
    ("not found -> default", LookupResult(number="+15550000001", status="not_found"),
     DEFAULT, "caller not in the CRM: default route"),
    ("no number -> default", LookupResult(number=None, status="no_number"),
     DEFAULT, "no usable caller number"),
    ("crm error -> default", LookupResult(number="+1555", status="error"),
     DEFAULT, "CRM lookup failed"),
    ("timeout status -> default", LookupResult(number="+1555", status="timeout"),
     DEFAULT, "timed out"),
    ("found without matches -> default", LookupResult(number="+1555", status="found"),
     DEFAULT, "not in the CRM"),
    ("shared number, all gold -> vip without customer",
     found(customer("CUST-1", "gold"), customer("CUST-2", "gold")),
     ("vip", 5, "gold", None, "agi"), "shared by 2 customers (CUST-1, CUST-2), all matched"),
    ("shared number, same rule, different segments",
     found(customer("CUST-1", "gold"), customer("CUST-2", "silver", ["vip"])),
     ("vip", 5, "unknown", None, "agi"), "all matched rule 'vip'"),
    ("shared number, no rule for anyone -> known queue",
     found(customer("CUST-1"), customer("CUST-2"), customer("CUST-3")),
     ("general", 0, "standard", None, "agi"), "none matched a rule"),
    ("shared number, rules disagree -> default",
     found(customer("CUST-1", "gold"), customer("CUST-2")),
     DEFAULT, "rules disagree (none, vip): default route"),
]


@pytest.mark.parametrize(("lookup", "expected", "reason"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decide(lookup: LookupResult, expected: tuple, reason: str) -> None:
    route = decide(lookup, SETTINGS)

    assert (route.queue, route.priority, route.segment, route.customer_id,
            route.source) == expected
    assert reason in route.reason


def test_no_lookup_uses_the_given_reason() -> None:
    route = decide(None, SETTINGS,
                   reason_if_none="CRM lookup timed out after 300 ms: default route")

    assert route == Route(queue="general", priority=0, segment="unknown", customer_id=None,
                          reason="CRM lookup timed out after 300 ms: default route",
                          source="default")


def test_configured_queues_and_rules_are_used() -> None:
    settings = RoutingSettings(
        default_queue="lobby", default_priority=1, known_queue="members",
        unknown_segment="anon",
        rules=[RouteRule(name="churn", queue="retention", priority=9, flags=["churn_risk"])])

    assert decide(found(customer("C1", tags=["churn_risk"])), settings).queue == "retention"
    assert decide(found(customer("C2", "gold")), settings).queue == "members"
    unknown = decide(LookupResult(number=None, status="not_found"), settings)
    assert (unknown.queue, unknown.priority, unknown.segment) == ("lobby", 1, "anon")


def test_rule_matches_on_any_of_segment_tag_or_flag_and_says_what_is_missing() -> None:
    checks = evaluate(customer("CUST-1", "silver", ["churn_risk"]), SETTINGS.rules)

    assert [(c.rule, c.matched) for c in checks] == [
        ("vip", False), ("open-complaint", False), ("overflow", False)]
    assert checks[0].why == "needs segment in ['gold', 'platinum'] or tag in ['vip']"


# -- RouteService without sockets -------------------------------------------------------


class GatedCrm:
    """A CRM whose answer waits for the test to open the gate."""

    def __init__(self, customers: dict[str, Customer]) -> None:
        self.customers = customers
        self.gate = asyncio.Event()
        self.answered: list[str] = []

    async def lookup(self, number: str) -> LookupResult:
        await self.gate.wait()
        self.answered.append(number)
        matches = [self.customers[number]] if number in self.customers else []
        return LookupResult(number=number, matches=matches,
                            status="found" if matches else "not_found")


async def test_lookup_past_the_budget_gives_default_and_finishes_in_background() -> None:
    crm = GatedCrm({"+15551230001": customer("CUST-1001", "gold")})
    service = RouteService(crm, Settings())

    route, lookup = await service.decide_for("+15551230001", budget_s=0.05)
    crm.gate.set()
    await asyncio.sleep(0.01)

    assert (route.queue, route.customer_id, lookup) == ("general", None, None)
    assert route.reason == "CRM lookup timed out after 50 ms: default route"
    assert crm.answered == ["+15551230001"]       # not cancelled: it fills the cache
    await service.close()


async def test_national_number_is_normalised_before_the_lookup() -> None:
    crm = GatedCrm({"+15551230001": customer("CUST-1001", "gold")})
    crm.gate.set()
    service = RouteService(crm, Settings())

    route, lookup = await service.decide_for("(555) 123-0001", budget_s=1.0)

    assert crm.answered == ["+15551230001"]
    assert (route.queue, route.customer_id) == ("vip", "CUST-1001")
    assert lookup is not None and lookup.status == "found"


async def test_explain_shows_number_matches_rule_checks_and_decision() -> None:
    crm = GatedCrm({"+8613800138000": customer("CUST-1", "gold")})
    crm.gate.set()

    text = await RouteService(crm, Settings()).explain("+8613800138000")

    assert "normalised: +8613800138000 (e164)" in text
    assert "crm:        found, 1 match(es)" in text
    assert "rule 'vip': match (segment gold)" in text
    assert "rule 'overflow': no (needs tag in ['overflow'])" in text
    assert "route:      queue=vip priority=5 segment=gold customer_id=CUST-1 source=agi" in text
    assert text.endswith("reason:     CUST-1 segment gold matched rule 'vip'")


async def test_explain_withheld_number_makes_no_lookup() -> None:
    crm = GatedCrm({})

    text = await RouteService(crm, Settings()).explain("anonymous")

    assert "normalised: none (withheld)" in text
    assert "no usable caller number: default route" in text
    assert crm.answered == []
