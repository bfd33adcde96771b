"""Prometheus metrics, one registry per daemon (tests run several daemons)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.ami_events = Counter("cti_ami_events", "AMI messages received", registry=r)
        self.ami_connects = Counter("cti_ami_connects", "AMI logins that succeeded", registry=r)
        self.ami_up = Gauge("cti_ami_up", "1 while the AMI session is logged in", registry=r)
        self.calls_live = Gauge("cti_calls_live", "Calls in progress", registry=r)
        self.calls_ended = Counter("cti_calls_ended", "Finished calls by outcome", ["outcome"],
                                   registry=r)
        self.routes = Counter("cti_routes", "FastAGI route decisions", ["queue", "source"],
                              registry=r)
        self.crm_lookup = Histogram(
            "cti_crm_lookup_seconds", "CRM lookup time", registry=r,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.3, 1.0, 3.0))
        self.crm_errors = Counter("cti_crm_errors", "CRM lookups that failed", registry=r)
        self.pops_sent = Counter("cti_pops_sent", "Pop messages published to agents", registry=r)
        self.outbox_pending = Gauge("cti_outbox_pending", "CRM write-backs not yet delivered",
                                    registry=r)
