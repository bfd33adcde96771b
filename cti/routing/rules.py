"""Customer -> queue and priority, and a one-line reason why. No I/O.

Theory of operation
-------------------
:func:`decide` turns what a CRM lookup found into a :class:`~cti.calls.model.Route`:

1. No usable answer (no lookup, no number, not found, CRM error or timeout):
   the *default route*: ``routing.default_queue`` / ``default_priority``,
   segment ``routing.unknown_segment``, no customer id.
2. One customer: the configured rules are tried in order; a rule matches when
   the customer's segment is in ``rule.segments``, or one of their tags is in
   ``rule.tags``, or one of their flags (:attr:`Customer.flags`) is in
   ``rule.flags``. The first match wins. No match: ``routing.known_queue`` with
   the customer's segment.
3. Several customers (a shared number): we do not know who is calling, so the
   route carries no customer id. If every match leads to the same outcome
   (same rule, or no rule for all) that outcome is used, because it does not
   depend on who of them it is; the segment is theirs if they share one, else
   ``unknown_segment``. If they disagree, the default route is used: picking
   one customer's privileges for an unknown caller would be a guess.

Rule-based routes have ``source="agi"``; default routes ``source="default"``.
"""

from __future__ import annotations

from dataclasses import dataclass

from cti.calls.model import Route
from cti.config import RouteRule, RoutingSettings
from cti.crm.base import Customer, LookupResult

_STATUS_REASONS = {
    "no_number": "no usable caller number",
    "not_found": "caller not in the CRM",
    "error": "CRM lookup failed",
    "timeout": "CRM lookup timed out",
}


@dataclass(frozen=True, slots=True)
class RuleCheck:
    """One rule tried against one customer, for explanations."""

    rule: str
    matched: bool
    why: str          # "segment gold", "tag overflow", "flag open_complaint" or what was missing


def check_rule(customer: Customer, rule: RouteRule) -> RuleCheck:
    """Whether ``rule`` matches ``customer``, and on what."""
    if customer.segment in rule.segments:
        return RuleCheck(rule.name, True, f"segment {customer.segment}")
    for tag in customer.tags:
        if tag in rule.tags:
            return RuleCheck(rule.name, True, f"tag {tag}")
    flags = customer.flags
    for flag in flags:
        if flag in rule.flags:
            return RuleCheck(rule.name, True, f"flag {flag}")
    wanted = [f"{what} in {values}" for what, values in
              (("segment", rule.segments), ("tag", rule.tags), ("flag", rule.flags)) if values]
    return RuleCheck(rule.name, False, "needs " + " or ".join(wanted))


def evaluate(customer: Customer, rules: list[RouteRule]) -> list[RuleCheck]:
    """Every rule tried against ``customer``, in order (for ``cti route``)."""
    return [check_rule(customer, rule) for rule in rules]


def first_match(customer: Customer,
                rules: list[RouteRule]) -> tuple[RouteRule, RuleCheck] | None:
    """The first rule matching ``customer`` and why, or None."""
    for rule in rules:
        check = check_rule(customer, rule)
        if check.matched:
            return rule, check
    return None


def default_route(settings: RoutingSettings, reason: str) -> Route:
    """The route for a caller we know nothing usable about."""
    return Route(queue=settings.default_queue, priority=settings.default_priority,
                 segment=settings.unknown_segment, customer_id=None, reason=reason,
                 source="default")


def _for_customer(customer: Customer, settings: RoutingSettings) -> Route:
    found = first_match(customer, settings.rules)
    if found is None:
        return Route(queue=settings.known_queue, priority=settings.default_priority,
                     segment=customer.segment, customer_id=customer.customer_id,
                     reason=f"{customer.customer_id} (segment {customer.segment}) matched no "
                            f"rule: known-customer queue {settings.known_queue}")
    rule, check = found
    return Route(queue=rule.queue, priority=rule.priority, segment=customer.segment,
                 customer_id=customer.customer_id,
                 reason=f"{customer.customer_id} {check.why} matched rule {rule.name!r}")


def _for_shared_number(matches: list[Customer], settings: RoutingSettings) -> Route:
    outcomes = [first_match(c, settings.rules) for c in matches]
    names = {found[0].name if found else None for found in outcomes}
    segments = {c.segment for c in matches}
    segment = segments.pop() if len(segments) == 1 else settings.unknown_segment
    ids = ", ".join(c.customer_id for c in matches)
    if len(names) > 1:
        shown = ", ".join(sorted(n or "none" for n in names))
        return default_route(settings, f"number shared by {len(matches)} customers ({ids}) "
                                       f"whose rules disagree ({shown}): default route")
    found = outcomes[0]
    if found is None:
        return Route(queue=settings.known_queue, priority=settings.default_priority,
                     segment=segment, customer_id=None,
                     reason=f"number shared by {len(matches)} customers ({ids}), none matched "
                            f"a rule: known-customer queue {settings.known_queue}")
    rule = found[0]
    return Route(queue=rule.queue, priority=rule.priority, segment=segment, customer_id=None,
                 reason=f"number shared by {len(matches)} customers ({ids}), all matched "
                        f"rule {rule.name!r}")


def decide(result: LookupResult | None, settings: RoutingSettings, *,
           reason_if_none: str = "no CRM lookup: default route") -> Route:
    """The route for a caller, given what the CRM lookup found (see module doc).

    Pass ``result=None`` when there is no usable lookup (timeout, error) and say
    why in ``reason_if_none``. Never raises.
    """
    if result is None:
        return default_route(settings, reason_if_none)
    if result.status in ("no_number", "error", "timeout"):
        return default_route(settings, f"{_STATUS_REASONS[result.status]}: default route")
    if not result.matches:
        return default_route(settings, f"{_STATUS_REASONS['not_found']}: default route")
    if len(result.matches) == 1:
        return _for_customer(result.matches[0], settings)
    return _for_shared_number(result.matches, settings)
