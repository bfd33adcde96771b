"""What the connector needs from a CRM, as plain data and one interface.

The embedded SQLite CRM (:mod:`cti.crm.sqlite`) implements :class:`Crm`; so can
an adapter for a real CRM. Callers never see a backend's own types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(slots=True)
class Ticket:
    ticket_id: str
    subject: str
    status: str              # open | pending | closed
    is_complaint: bool
    product: str | None
    created_at: str          # ISO 8601
    updated_at: str

    def as_dict(self) -> dict[str, Any]:
        return {"ticket_id": self.ticket_id, "subject": self.subject, "status": self.status,
                "is_complaint": self.is_complaint, "product": self.product,
                "created_at": self.created_at, "updated_at": self.updated_at}


@dataclass(slots=True)
class Interaction:
    """One past contact (call, email, visit) from the service history."""

    at: str                  # ISO 8601
    channel: str             # call | email | chat | visit
    direction: str           # inbound | outbound
    summary: str
    outcome: str | None = None
    agent: str | None = None
    satisfaction: int | None = None  # 1..5 if surveyed

    def as_dict(self) -> dict[str, Any]:
        return {"at": self.at, "channel": self.channel, "direction": self.direction,
                "summary": self.summary, "outcome": self.outcome, "agent": self.agent,
                "satisfaction": self.satisfaction}


@dataclass(slots=True)
class Article:
    article_id: str
    product: str
    title: str
    url: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"article_id": self.article_id, "product": self.product, "title": self.title,
                "url": self.url}


@dataclass(slots=True)
class Customer:
    """A CRM match for a phone number, with everything a pop shows."""

    customer_id: str
    name: str
    segment: str                         # gold | silver | standard ...
    tags: list[str] = field(default_factory=list)       # vip, churn_risk, complainer ...
    phones: list[str] = field(default_factory=list)     # E.164
    email: str | None = None
    company: str | None = None
    timezone: str | None = None          # IANA, for calling windows
    language: str | None = None
    do_not_call: bool = False
    products: list[str] = field(default_factory=list)
    history: list[Interaction] = field(default_factory=list)   # last 3 months, newest first
    open_tickets: list[Ticket] = field(default_factory=list)
    recent_complaints: list[Ticket] = field(default_factory=list)  # last 3 months, any status
    articles: list[Article] = field(default_factory=list)      # for the customer's products
    satisfaction: float | None = None    # average of recent scores

    @property
    def flags(self) -> list[str]:
        """Derived warnings for the agent: open complaint, unresolved, churn risk."""
        out = []
        if any(t.is_complaint for t in self.open_tickets):
            out.append("open_complaint")
        if self.open_tickets:
            out.append("unresolved")
        for tag in ("vip", "churn_risk", "complainer"):
            if tag in self.tags:
                out.append(tag)
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "customer_id": self.customer_id, "name": self.name, "segment": self.segment,
            "tags": list(self.tags), "flags": self.flags, "phones": list(self.phones),
            "email": self.email, "company": self.company, "timezone": self.timezone,
            "language": self.language, "do_not_call": self.do_not_call,
            "products": list(self.products),
            "history": [h.as_dict() for h in self.history],
            "open_tickets": [t.as_dict() for t in self.open_tickets],
            "recent_complaints": [t.as_dict() for t in self.recent_complaints],
            "articles": [a.as_dict() for a in self.articles],
            "satisfaction": self.satisfaction,
        }


@dataclass(slots=True)
class LookupResult:
    """What a lookup by number found.

    ``matches`` is ranked best first. Several matches mean the number is shared
    (ambiguous); a caller must not pretend there is one customer then.
    """

    number: str | None                   # normalised form used (E.164 or short number)
    matches: list[Customer] = field(default_factory=list)
    # found | ambiguous | not_found | no_number | error | timeout
    status: str = "not_found"

    @property
    def customer(self) -> Customer | None:
        """The customer if exactly one matched."""
        return self.matches[0] if len(self.matches) == 1 else None

    def as_dict(self) -> dict[str, Any]:
        return {"number": self.number, "status": self.status,
                "matches": [c.as_dict() for c in self.matches]}


class Crm(Protocol):
    """A CRM backend. All methods are coroutines and may raise CrmError."""

    async def lookup(self, number: str) -> LookupResult:
        """Customers owning ``number`` (already normalised by :mod:`cti.crm.phone`)."""
        ...

    async def log_call(self, record: dict[str, Any]) -> None:
        """Write a finished call record back (idempotent on ``call_id``)."""
        ...

    async def close(self) -> None:
        ...
