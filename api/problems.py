"""RFC 9457 problem details for every error the API answers."""

from __future__ import annotations

import logging

from flask import Flask, jsonify
from sqlalchemy.exc import DBAPIError
from werkzeug.exceptions import HTTPException

from ledger.db import unavailable
from ledger.errors import LedgerError

log = logging.getLogger("magledger.api")

PROBLEM = "application/problem+json"


def problem(status: int, title: str, detail: str, errors: dict | None = None, headers: dict | None = None):
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    if errors:
        body["errors"] = errors
    response = jsonify(body)
    response.status_code = status
    response.mimetype = PROBLEM
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def install(app: Flask) -> None:
    @app.errorhandler(LedgerError)
    def ledger_error(error: LedgerError):
        headers = {"Retry-After": "1"} if error.status == 503 else None
        if error.status == 401:
            headers = {"WWW-Authenticate": 'Bearer realm="magledger"'}
        return problem(error.status, error.title, error.detail, error.errors, headers)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        if error.response is not None:
            return error.response
        errors = None
        messages = getattr(error, "data", {}).get("messages") if hasattr(error, "data") else None
        if messages:
            errors = _flatten({location: fields for location, fields in messages.items()})
        detail = error.description or error.name
        if error.code == 413:
            detail = "The request body is larger than the limit."
        return problem(error.code or 500, error.name, detail, errors)

    @app.errorhandler(DBAPIError)
    def database_error(error: DBAPIError):
        if not unavailable(error):
            return unexpected(error)
        # The database is down, restarting, read-only or full. A post whose connection broke
        # while committing may have been recorded; its retry answers the original receipt.
        log.warning("database unavailable: %s", error.orig)
        return problem(503, "Service Unavailable", "The database cannot take this request now. Retry later: a post "
                       "retried with the same event_id is recorded once.", headers={"Retry-After": "1"})

    @app.errorhandler(Exception)
    def unexpected(error: Exception):
        log.exception("unhandled error")
        return problem(500, "Internal Server Error", "The server failed to answer; the error was logged.")


def _flatten(messages: dict, prefix: str = "") -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key, value in messages.items():
        name = f"{prefix}{key}" if key not in ("json", "query", "_schema") else prefix.rstrip(".")
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}." if name else ""))
        else:
            out.setdefault(name or "_schema", []).extend(str(v) for v in value)
    return out
