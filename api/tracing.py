"""Request ids and the request log: every answer carries `X-Request-ID` (the caller's own,
when it sends a sane one), every log line written while answering names it, and each
request ends with one log line: method, route, status, time taken and the calling party."""

from __future__ import annotations

import logging
import re
import time
import uuid

from flask import Flask, g, request

from ledger import logs

log = logging.getLogger("magledger.access")

HEADER = "X-Request-ID"
_ACCEPTED = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_QUIET = ("/healthz", "/readyz", "/metrics")


def elapsed() -> float:
    """Seconds since this request began."""
    return time.perf_counter() - g.request_started


def install(app: Flask) -> None:
    @app.before_request
    def _begin():
        g.request_started = time.perf_counter()
        offered = request.headers.get(HEADER, "")
        g.request_id = offered if _ACCEPTED.fullmatch(offered) else uuid.uuid4().hex
        g.request_id_token = logs.request_id.set(g.request_id)

    @app.after_request
    def _end(response):
        if "request_id" not in g:
            return response
        response.headers[HEADER] = g.request_id
        party = g.get("party")
        log.log(logging.DEBUG if request.path in _QUIET else logging.INFO,
                "%s %s %s", request.method, request.path, response.status_code,
                extra={"method": request.method, "path": request.path,
                       "route": request.url_rule.rule if request.url_rule is not None else None,
                       "status": response.status_code, "duration_ms": round(elapsed() * 1000, 2),
                       "party_id": party.party_id if party is not None else None,
                       "remote_addr": request.remote_addr})
        return response

    @app.teardown_request
    def _forget(_error):
        token = g.pop("request_id_token", None)
        if token is not None:
            logs.request_id.reset(token)
