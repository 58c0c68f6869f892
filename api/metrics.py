"""Prometheus metrics (`/metrics`): requests by route and status and append latency, counted
in each server process; the log head, projection lag, queue depth and findings by rule, read
from the database and Redis when scraped, so every process answers the same.

Under `magledger serve` with several processes, counters live in PROMETHEUS_MULTIPROC_DIR
(set by the server before it forks) and every scrape adds up all processes.
"""

from __future__ import annotations

import functools
import logging
import os

from flask import Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy.exc import SQLAlchemyError

from api import tracing
from ledger.services import Ledger

log = logging.getLogger("magledger.api")

REQUESTS = Counter("magledger_http_requests", "HTTP requests answered", ["method", "route", "status"])
LATENCY = Histogram("magledger_http_request_seconds", "Time to answer an HTTP request", ["method", "route"])
APPENDS = Histogram("magledger_append_seconds", "Time to append one post to the log (validation excluded)",
                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))


@functools.lru_cache(maxsize=1024)
def _series(method: str, route: str, status: int) -> tuple:
    """The request counter and latency histogram of one method, route and status, looked up
    once: through `labels` (its lock and label checks) at every request they cost 27,000 of a
    one-event post's 2.2 million instructions in the server process (callgrind)."""
    return REQUESTS.labels(method, route, str(status)), LATENCY.labels(method, route)


class LedgerCollector:
    """Figures read at scrape time."""

    def __init__(self, ledger: Ledger):
        self.ledger = ledger

    def collect(self):
        try:
            head = self.ledger.store.last_position()
            positions = self.ledger.projections.positions()
            findings = self.ledger.diversion.counts()
        except SQLAlchemyError as error:
            log.warning("metrics: database unreachable: %s", error)
            return
        yield GaugeMetricFamily("magledger_log_head", "Position of the last event in the log", value=head)
        lag = GaugeMetricFamily("magledger_projection_lag", "Events a projection is behind the log",
                                labels=["projection"])
        for name, position in positions.items():
            lag.add_metric([name], max(head - position, 0))
        yield lag
        by_rule = GaugeMetricFamily("magledger_findings", "Standing findings by rule (time-independent rules)",
                                    labels=["rule"])
        for rule, count in findings.items():
            by_rule.add_metric([rule], count)
        yield by_rule
        if self.ledger.settings.redis_url:
            from redis import RedisError

            from workers.runner import queue

            try:
                depth = len(queue(self.ledger.settings))
            except RedisError as error:
                log.warning("metrics: redis unreachable: %s", error)
                return
            yield GaugeMetricFamily("magledger_queue_depth", "Jobs waiting on the RQ queue", value=depth)


def install(app: Flask, ledger: Ledger) -> None:
    collector = LedgerCollector(ledger)

    @app.after_request
    def _count(response):
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        counter, latency = _series(request.method, route, response.status_code)
        counter.inc()
        if "request_started" in g:
            latency.observe(tracing.elapsed())
        return response

    @app.get("/metrics")
    def metrics():
        registry = CollectorRegistry()
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            multiprocess.MultiProcessCollector(registry)
        else:
            for metric in (REQUESTS, LATENCY, APPENDS):
                registry.register(metric)
        registry.register(collector)
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
