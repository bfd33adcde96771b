"""A caching, de-duplicating, circuit-breaking wrapper around any :class:`Crm`.

Theory of operation (case 19: a slow CRM must never hold a caller in silence).

* One lookup per number at a time. The first caller of :meth:`CachedCrm.lookup`
  starts a task that asks the inner CRM; later callers for the same number await
  that same task. Each caller waits through :func:`asyncio.shield`, so a caller
  whose own budget runs out (the FastAGI handler's ``asyncio.timeout``) is cancelled
  alone: the shared lookup goes on, the other waiters still get it, and its result
  still fills the cache -- the screen pop can be sent when the CRM answers.
* Answers are cached per number: ``found``/``ambiguous`` for ``ttl`` seconds,
  ``not_found`` for ``negative_ttl`` seconds. :meth:`peek` reads the cache without
  I/O. Errors are never cached.
* After ``breaker_failures`` consecutive failures the breaker opens: lookups raise
  :class:`~cti.errors.CrmUnavailable` at once, for ``breaker_reset`` seconds. Then one
  probe lookup is let through (half-open): success closes the breaker, failure opens
  it again for another ``breaker_reset``.

Everything here runs on the event loop thread; no locks are needed.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cti.crm.base import Crm, LookupResult
from cti.errors import CrmError, CrmTimeout, CrmUnavailable
from cti.log import get_logger, mask_text

log = get_logger(__name__)


class BreakerState(enum.IntEnum):
    CLOSED = 0       # lookups go through
    OPEN = 1         # lookups fail fast
    HALF_OPEN = 2    # one probe lookup is in flight


@dataclass(slots=True)
class _Entry:
    result: LookupResult
    expires: float


class CachedCrm:
    """Wrap ``inner`` with a per-number cache, lookup de-duplication and a breaker.

    ``lookup_timeout`` (optional) bounds one shared inner lookup; when it expires the
    lookup fails with :class:`CrmTimeout` and counts as a breaker failure. Without it
    a hung CRM is only bounded by each caller's own budget. ``clock`` returns seconds
    (monotonic); tests pass a fake one.
    """

    def __init__(self, inner: Crm, ttl: float, negative_ttl: float, breaker_failures: int,
                 breaker_reset: float, clock: Callable[[], float] = time.monotonic, *,
                 lookup_timeout: float | None = None, max_entries: int = 10_000) -> None:
        self.inner = inner
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.breaker_failures = breaker_failures
        self.breaker_reset = breaker_reset
        self.lookup_timeout = lookup_timeout
        self.max_entries = max_entries
        self._clock = clock
        self._cache: dict[str, _Entry] = {}
        self._inflight: dict[str, asyncio.Task[LookupResult]] = {}
        self._failures = 0
        self._state = BreakerState.CLOSED
        self._opened_at = 0.0

    @property
    def breaker_state(self) -> BreakerState:
        """The breaker as a caller would find it now (OPEN turns HALF_OPEN when due)."""
        if self._state is BreakerState.OPEN and self._reset_due():
            return BreakerState.HALF_OPEN
        return self._state

    # --- Crm interface ---------------------------------------------------------

    async def lookup(self, number: str) -> LookupResult:
        """The cached answer for ``number``, or the inner CRM's (shared with other callers).

        Raises :class:`CrmUnavailable` while the breaker is open, and whatever
        :class:`CrmError` the inner lookup raised. Cancelling the caller never
        cancels the shared lookup.
        """
        cached = self.peek(number)
        if cached is not None:
            return cached

        task = self._inflight.get(number)
        if task is None:
            self._admit(number)
            task = asyncio.create_task(self._fetch(number), name=f"crm-lookup:{number}")
            task.add_done_callback(functools.partial(self._forget, number))
            self._inflight[number] = task
        return await asyncio.shield(task)

    async def log_call(self, record: dict[str, Any]) -> None:
        """Pass through, then drop cached answers that show this customer's old history."""
        await self.inner.log_call(record)
        customer_id = record.get("customer_id")
        if customer_id:
            stale = [n for n, e in self._cache.items()
                     if any(c.customer_id == customer_id for c in e.result.matches)]
            for number in stale:
                del self._cache[number]

    async def close(self) -> None:
        """Cancel lookups still in flight and close the inner CRM."""
        for task in list(self._inflight.values()):
            task.cancel()
        self._inflight.clear()
        await self.inner.close()

    # --- cache ---------------------------------------------------------------------

    def peek(self, number: str) -> LookupResult | None:
        """The cached, unexpired answer for ``number`` or None; never does I/O."""
        entry = self._cache.get(number)
        if entry is None:
            return None
        if self._clock() >= entry.expires:
            del self._cache[number]
            return None
        return entry.result

    def invalidate(self, number: str | None = None) -> None:
        """Forget the cached answer for ``number`` (every answer if None)."""
        if number is None:
            self._cache.clear()
        else:
            self._cache.pop(number, None)

    def _store(self, number: str, result: LookupResult) -> None:
        if result.status in ("found", "ambiguous"):
            ttl = self.ttl
        elif result.status == "not_found":
            ttl = self.negative_ttl
        else:
            return
        if ttl <= 0:
            return
        self._cache.pop(number, None)
        self._cache[number] = _Entry(result, self._clock() + ttl)
        while len(self._cache) > self.max_entries:
            # dicts keep insertion order: the first key is the oldest entry.
            del self._cache[next(iter(self._cache))]

    # --- shared lookups and the breaker ------------------------------------------

    async def _fetch(self, number: str) -> LookupResult:
        try:
            result = await self._ask(number)
        except asyncio.CancelledError:
            # Only close() cancels a shared lookup; it says nothing about CRM health,
            # but a half-open probe must not leave the breaker stuck half-open.
            if self._state is BreakerState.HALF_OPEN:
                self._state = BreakerState.OPEN
            raise
        except Exception as exc:
            self._failed(mask_text(repr(exc)))
            if isinstance(exc, CrmError):
                raise
            raise CrmError(f"CRM lookup failed: {exc!r}") from exc
        self._succeeded()
        self._store(number, result)
        return result

    async def _ask(self, number: str) -> LookupResult:
        if self.lookup_timeout is None:
            return await self.inner.lookup(number)
        try:
            async with asyncio.timeout(self.lookup_timeout):
                return await self.inner.lookup(number)
        except TimeoutError:
            raise CrmTimeout(f"CRM lookup got no answer within {self.lookup_timeout} s") from None

    def _forget(self, number: str, task: asyncio.Task[LookupResult]) -> None:
        if self._inflight.get(number) is task:
            del self._inflight[number]
        # Nobody may be awaiting any more (every caller timed out): retrieve the
        # exception so asyncio does not report it as never retrieved.
        if not task.cancelled():
            task.exception()

    def _reset_due(self) -> bool:
        return self._clock() - self._opened_at >= self.breaker_reset

    def _admit(self, number: str) -> None:
        """Let a new inner lookup start, or raise CrmUnavailable if the breaker forbids."""
        if self._state is BreakerState.CLOSED:
            return
        if self._state is BreakerState.OPEN and self._reset_due():
            self._state = BreakerState.HALF_OPEN
            log.info("crm breaker half-open: probing", failures=self._failures)
            return
        retry_in = max(0.0, self.breaker_reset - (self._clock() - self._opened_at))
        why = ("a probe lookup is in flight" if self._state is BreakerState.HALF_OPEN
               else f"retry in {retry_in:.1f} s")
        raise CrmUnavailable(f"CRM circuit breaker open after {self._failures} consecutive "
                             f"failures ({why})")

    def _failed(self, why: str) -> None:
        self._failures += 1
        reopen = self._state is BreakerState.HALF_OPEN
        if reopen or (self._state is BreakerState.CLOSED
                      and self._failures >= self.breaker_failures):
            self._state = BreakerState.OPEN
            self._opened_at = self._clock()
            log.warning("crm breaker open", failures=self._failures, error=why,
                        reset_s=self.breaker_reset)

    def _succeeded(self) -> None:
        if self._state is not BreakerState.CLOSED:
            log.info("crm breaker closed", after_failures=self._failures)
        self._state = BreakerState.CLOSED
        self._failures = 0
