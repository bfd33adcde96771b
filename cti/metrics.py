"""Prometheus metrics, one registry per daemon (tests run several daemons)."""

from __future__ import annotations

import gc
import time
from typing import Any

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
        self.gc_pause = Histogram(
            "cti_gc_pause_seconds", "Garbage collector pauses (they delay every pop)",
            ["generation"], registry=r, buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25))
        self.outbox_pending = Gauge("cti_outbox_pending", "CRM write-backs not yet delivered",
                                    registry=r)

    def watch_gc(self) -> None:
        """Time every collection (``gc.callbacks``); call :meth:`unwatch_gc` to stop."""
        started = [0.0]

        def callback(phase: str, info: dict[str, Any]) -> None:
            if phase == "start":
                started[0] = time.perf_counter()
            else:
                self.gc_pause.labels(str(info["generation"])).observe(
                    time.perf_counter() - started[0])

        self._gc_callback = callback
        gc.callbacks.append(callback)

    def unwatch_gc(self) -> None:
        callback = getattr(self, "_gc_callback", None)
        if callback in gc.callbacks:
            gc.callbacks.remove(callback)
