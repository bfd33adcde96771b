"""CachedCrm: TTL and negative cache, one lookup per number, breaker, cancelled callers."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path
from typing import Any

import pytest

from cti.crm.base import Customer, LookupResult
from cti.crm.cache import BreakerState, CachedCrm
from cti.crm.demo import seed_demo
from cti.crm.sqlite import SqliteCrm
from cti.errors import CrmError, CrmTimeout, CrmUnavailable

KNOWN = "+15551230001"
UNKNOWN = "+15559999999"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeCrm:
    """Answers KNOWN with one customer, anything else with not_found; can hang or fail."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.gate: asyncio.Event | None = None
        self.error: Exception | None = None
        self.logged: list[dict[str, Any]] = []
        self.closed = False

    async def lookup(self, number: str) -> LookupResult:
        self.calls.append(number)
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        if number == KNOWN:
            return LookupResult(number, [Customer("CUST-1001", "Alice", "gold")], "found")
        return LookupResult(number, [], "not_found")

    async def log_call(self, record: dict[str, Any]) -> None:
        self.logged.append(record)

    async def close(self) -> None:
        self.closed = True


def cached(inner: FakeCrm, clock: Clock, **kw: Any) -> CachedCrm:
    options = {"ttl": 60.0, "negative_ttl": 20.0, "breaker_failures": 3,
               "breaker_reset": 30.0, **kw}
    return CachedCrm(inner, clock=clock, **options)


async def test_found_answer_is_served_from_cache_until_ttl_expires() -> None:
    inner, clock = FakeCrm(), Clock()
    crm = cached(inner, clock)

    first = await crm.lookup(KNOWN)
    clock.now += 59.9
    second = await crm.lookup(KNOWN)
    assert second is first and inner.calls == [KNOWN]

    clock.now += 0.2
    assert crm.peek(KNOWN) is None
    await crm.lookup(KNOWN)
    assert inner.calls == [KNOWN, KNOWN]


async def test_not_found_is_cached_for_the_shorter_negative_ttl() -> None:
    inner, clock = FakeCrm(), Clock()
    crm = cached(inner, clock)

    assert (await crm.lookup(UNKNOWN)).status == "not_found"
    clock.now += 19.0
    await crm.lookup(UNKNOWN)
    assert len(inner.calls) == 1
    clock.now += 1.0
    await crm.lookup(UNKNOWN)
    assert len(inner.calls) == 2


async def test_zero_ttl_disables_caching() -> None:
    inner, clock = FakeCrm(), Clock()
    crm = cached(inner, clock, ttl=0, negative_ttl=0)
    await crm.lookup(KNOWN)
    await crm.lookup(KNOWN)
    assert len(inner.calls) == 2 and crm.peek(KNOWN) is None


async def test_peek_does_no_io_and_invalidate_forgets() -> None:
    inner, clock = FakeCrm(), Clock()
    crm = cached(inner, clock)
    assert crm.peek(KNOWN) is None and inner.calls == []

    result = await crm.lookup(KNOWN)
    assert crm.peek(KNOWN) is result
    crm.invalidate(KNOWN)
    assert crm.peek(KNOWN) is None
    assert len(inner.calls) == 1


async def test_ten_concurrent_lookups_of_one_number_make_one_inner_call() -> None:
    inner, clock = FakeCrm(), Clock()
    inner.gate = asyncio.Event()
    crm = cached(inner, clock)

    waiters = [asyncio.create_task(crm.lookup(KNOWN)) for _ in range(10)]
    await asyncio.sleep(0)
    inner.gate.set()
    results = await asyncio.gather(*waiters)

    assert inner.calls == [KNOWN]
    assert all(r is results[0] for r in results)


async def test_cancelled_caller_does_not_cancel_the_shared_lookup_for_others() -> None:
    inner, clock = FakeCrm(), Clock()
    inner.gate = asyncio.Event()
    crm = cached(inner, clock)

    patient = asyncio.create_task(crm.lookup(KNOWN))
    with pytest.raises(TimeoutError):      # the FastAGI budget runs out for this caller
        await asyncio.wait_for(crm.lookup(KNOWN), timeout=0.01)
    assert not patient.done()

    inner.gate.set()
    assert (await patient).status == "found"
    assert inner.calls == [KNOWN]


async def test_late_answer_fills_the_cache_after_every_caller_gave_up() -> None:
    # case 19: the route went on without the CRM; the pop can still be sent later.
    inner, clock = FakeCrm(), Clock()
    inner.gate = asyncio.Event()
    crm = cached(inner, clock)

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(crm.lookup(KNOWN), timeout=0.01)
    assert crm.peek(KNOWN) is None

    inner.gate.set()
    for _ in range(100):
        if crm.peek(KNOWN) is not None:
            break
        await asyncio.sleep(0.001)
    assert crm.peek(KNOWN).customer.customer_id == "CUST-1001"
    assert inner.calls == [KNOWN]


async def test_late_failure_after_every_caller_gave_up_counts_and_is_retrieved() -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    inner, clock = FakeCrm(), Clock()
    inner.gate, inner.error = asyncio.Event(), CrmError("HTTP 500")
    crm = cached(inner, clock, breaker_failures=1)

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(crm.lookup(KNOWN), timeout=0.01)
    inner.gate.set()
    for _ in range(100):
        if crm.breaker_state is BreakerState.OPEN:
            break
        await asyncio.sleep(0.001)
    gc.collect()
    loop.set_exception_handler(None)

    assert crm.breaker_state is BreakerState.OPEN
    assert reported == []


async def test_errors_are_not_cached_and_plain_exceptions_become_crm_errors() -> None:
    inner, clock = FakeCrm(), Clock()
    crm = cached(inner, clock)
    inner.error = OSError("connection refused")
    with pytest.raises(CrmError, match="connection refused"):
        await crm.lookup(KNOWN)

    inner.error = None
    assert (await crm.lookup(KNOWN)).status == "found"
    assert len(inner.calls) == 2


async def test_breaker_opens_after_n_consecutive_failures_and_fails_fast() -> None:
    inner, clock = FakeCrm(), Clock()
    crm = cached(inner, clock, breaker_failures=3)
    inner.error = CrmError("HTTP 500")
    for n in range(3):
        with pytest.raises(CrmError, match="HTTP 500"):
            await crm.lookup(f"+1555000000{n}")
    assert crm.breaker_state is BreakerState.OPEN

    with pytest.raises(CrmUnavailable, match="3 consecutive failures"):
        await crm.lookup(KNOWN)
    assert len(inner.calls) == 3            # no call while open

    clock.now += 29.0
    with pytest.raises(CrmUnavailable):
        await crm.lookup(KNOWN)
    assert len(inner.calls) == 3


async def test_success_resets_the_failure_count() -> None:
    inner, clock = FakeCrm(), Clock()
    crm = cached(inner, clock, breaker_failures=2)
    inner.error = CrmError("boom")
    with pytest.raises(CrmError):
        await crm.lookup("+15550000001")
    inner.error = None
    await crm.lookup(KNOWN)
    inner.error = CrmError("boom")
    with pytest.raises(CrmError):
        await crm.lookup("+15550000002")
    assert crm.breaker_state is BreakerState.CLOSED


async def test_half_open_lets_one_probe_through_and_success_closes() -> None:
    inner, clock = FakeCrm(), Clock()
    crm = cached(inner, clock, breaker_failures=1)
    inner.error = CrmError("down")
    with pytest.raises(CrmError):
        await crm.lookup("+15550000001")
    clock.now += 30.0
    assert crm.breaker_state is BreakerState.HALF_OPEN

    inner.error, inner.gate = None, asyncio.Event()
    probe = asyncio.create_task(crm.lookup(KNOWN))
    await asyncio.sleep(0)
    with pytest.raises(CrmUnavailable, match="probe"):
        # a second number waits for the probe's verdict (the bound: fail, never hang)
        await asyncio.wait_for(crm.lookup(UNKNOWN), timeout=1.0)
    same_number = asyncio.create_task(crm.lookup(KNOWN))   # joins the probe instead
    inner.gate.set()

    assert (await probe).status == "found" and (await same_number).status == "found"
    assert crm.breaker_state is BreakerState.CLOSED
    assert inner.calls == ["+15550000001", KNOWN]
    assert (await crm.lookup(UNKNOWN)).status == "not_found"


async def test_failed_probe_reopens_the_breaker_for_another_reset_period() -> None:
    inner, clock = FakeCrm(), Clock()
    crm = cached(inner, clock, breaker_failures=2)
    inner.error = CrmError("down")
    for n in range(2):
        with pytest.raises(CrmError):
            await crm.lookup(f"+1555000000{n}")
    clock.now += 30.0
    with pytest.raises(CrmError, match="down"):
        await crm.lookup(KNOWN)              # the probe itself fails
    assert crm.breaker_state is BreakerState.OPEN

    clock.now += 29.0
    with pytest.raises(CrmUnavailable):
        await crm.lookup(KNOWN)
    assert len(inner.calls) == 3


async def test_fresh_cache_entries_are_served_while_the_breaker_is_open() -> None:
    inner, clock = FakeCrm(), Clock()
    crm = cached(inner, clock, breaker_failures=1)
    await crm.lookup(KNOWN)
    inner.error = CrmError("down")
    with pytest.raises(CrmError):
        await crm.lookup(UNKNOWN)
    assert crm.breaker_state is BreakerState.OPEN
    assert (await crm.lookup(KNOWN)).status == "found"


async def test_lookup_timeout_bounds_a_hung_crm_and_counts_as_a_failure() -> None:
    inner, clock = FakeCrm(), Clock()
    inner.gate = asyncio.Event()             # never set: the CRM hangs
    crm = cached(inner, clock, breaker_failures=1, lookup_timeout=0.02)
    with pytest.raises(CrmTimeout, match="0.02"):
        await crm.lookup(KNOWN)
    assert crm.breaker_state is BreakerState.OPEN


async def test_log_call_passes_through_and_drops_that_customers_cached_answers() -> None:
    inner, clock = FakeCrm(), Clock()
    crm = cached(inner, clock)
    await crm.lookup(KNOWN)
    await crm.lookup(UNKNOWN)
    record = {"call_id": "1.1", "customer_id": "CUST-1001"}
    await crm.log_call(record)

    assert inner.logged == [record]
    assert crm.peek(KNOWN) is None
    assert crm.peek(UNKNOWN) is not None


async def test_close_cancels_inflight_lookups_and_closes_the_inner_crm() -> None:
    inner, clock = FakeCrm(), Clock()
    inner.gate = asyncio.Event()
    crm = cached(inner, clock)
    waiter = asyncio.create_task(crm.lookup(KNOWN))
    await asyncio.sleep(0)
    await crm.close()

    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert inner.closed


async def test_cache_over_the_sqlite_crm_serves_the_demo_customer(tmp_path: Path) -> None:
    backend = SqliteCrm(tmp_path / "crm.sqlite3", "US")
    await seed_demo(backend)
    crm = CachedCrm(backend, ttl=60, negative_ttl=20, breaker_failures=5, breaker_reset=30)

    results = await asyncio.gather(*(crm.lookup("+15551231001") for _ in range(10)))
    cached_result = crm.peek("+15551231001")
    await crm.close()

    assert {r.customer.customer_id for r in results} == {"CUST-2001"}
    assert cached_result is results[0]
    assert "open_complaint" in cached_result.customer.flags
