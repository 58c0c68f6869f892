"""The API's OpenAPI conventions: errors are RFC 9457 problems (`application/problem+json`),
not flask-smorest's default error schema, and there is no catch-all `default` response, so
every status an operation can answer is listed on it.

The statuses that follow from cross-cutting code are added here from that code, so they
cannot drift from it: 401 and 503 on every operation behind `requires` (authenticating reads
the database), 403 where `requires` names roles, 404 on every operation with a path
parameter, 413 on every operation with a request body, 429 on every /v1 operation (the
per-key rate limit) and 414 on every operation (the HTTP server's limit on the request target).
`@blp.arguments` documents its own 422. Anything else a route can answer is documented on
the route, with `@blp.alt_response(status, response=ERROR[status])`.
"""

from __future__ import annotations

from http import HTTPStatus

from apispec import BasePlugin
from flask import Flask
from flask_smorest import Api
from marshmallow import Schema, fields
from werkzeug.routing import BaseConverter

from api.problems import PROBLEM
from ledger.events import CalendarDate, EventId, Timestamp

RETRY_AFTER = {"description": "Seconds to wait before asking again.", "required": True,
               "schema": {"type": "integer", "minimum": 1}}


def _problem(description: str, headers: dict | None = None) -> dict:
    response = {"description": description, "content": {PROBLEM: {"schema": "Problem"}}}
    return response | {"headers": headers} if headers else response


ERROR_RESPONSES = {
    401: _problem("No API key, or an unknown or revoked one.",
                  {"WWW-Authenticate": {"description": "Bearer", "required": True, "schema": {"type": "string"}}}),
    403: _problem("The caller's role, or its standing on the batch, does not allow this."),
    404: _problem("Not found, or not visible to the caller (both answer alike)."),
    409: _problem("Conflicts with the log: the id exists, the event_id was used for other content, or the stream "
                  "is not at `expected_version`."),
    413: _problem("The body is over the size limit, or holds more events than a post may."),
    414: {"description": "The request target (path and query) is longer than the HTTP server accepts "
                         "(65,534 bytes); the server itself answers, with an empty body."},
    422: _problem("Invalid parameters or body; `errors` names each bad field."),
    429: _problem("The API key has used its request budget.", {"Retry-After": RETRY_AFTER}),
    503: _problem("The database or the job queue cannot take the request now (a post retried with the same "
                  "event_id is recorded once), or the projections have not reached `min_position` within 5 s.",
                  {"Retry-After": RETRY_AFTER}),
}
ERROR = {status: HTTPStatus(status).name for status in ERROR_RESPONSES}
"""Response component names by status; flask-smorest's own names, so `@blp.arguments`'s 422
refers to the problem."""


METRICS = {"get": {
    "summary": "Prometheus metrics", "tags": ["health"], "security": [],
    "responses": {"200": {"description": "The Prometheus text exposition format.",
                          "content": {"text/plain": {"schema": {"type": "string"}}}}},
}}


class Problem(Schema):
    """RFC 9457 problem details."""

    type = fields.String(required=True, metadata={"description": "always about:blank: the status says it all"})
    title = fields.String(required=True)
    status = fields.Integer(required=True)
    detail = fields.String(required=True)
    errors = fields.Dict(keys=fields.String(), values=fields.List(fields.String()),
                         metadata={"description": "messages by field, e.g. `data.mass_kg`, `events.3.batch_id`"})


class PathSegment(BaseConverter):
    """Every path parameter: no id the ledger writes holds a control character, and PostgreSQL
    refuses NUL, so a path with one is not found instead of failing in the database."""

    regex = r"[^/\x00-\x1f\x7f]+"


class LedgerApi(Api):
    """flask-smorest's Api answering errors as problems, with `PathSegment` path parameters.
    Create it before registering any blueprint."""

    ERROR_SCHEMA = Problem
    DEFAULT_ERROR_RESPONSE_NAME = None

    def __init__(self, app: Flask):
        app.url_map.converters["default"] = PathSegment
        super().__init__(app, spec_kwargs={"extra_plugins": [_CrossCuttingErrors(app)]})
        self.register_converter(PathSegment, lambda converter: {"type": "string", "pattern": f"^{PathSegment.regex}$"})
        self.register_field(EventId, "string", "uuid")
        self.register_field(Timestamp, "string", "date-time")
        self.register_field(CalendarDate, "string", "date")
        for status, response in ERROR_RESPONSES.items():
            # Lazy, as flask-smorest registers its own: this replaces those, and only the
            # statuses some operation refers to appear in the document.
            self.spec.components.response(ERROR[status], response, lazy=True)

    def document_route(self, endpoint: str, operations: dict) -> None:
        """Document a plain Flask route: flask-smorest documents only its blueprints' routes."""
        self.spec.path(rule=next(self._app.url_map.iter_rules(endpoint)), operations=operations)


class _CrossCuttingErrors(BasePlugin):
    def __init__(self, app: Flask):
        self.app = app

    def operation_helper(self, path=None, operations=None, **kwargs):
        view = self.app.view_functions[kwargs["rule"].endpoint]
        roles = getattr(view, "roles", None)
        for operation in operations.values():
            statuses = [414]
            if roles is not None:
                statuses += [401, 503] + ([403] if roles else [])
            if "{" in path:
                statuses.append(404)
            if "requestBody" in operation:
                statuses.append(413)
            if path.startswith("/v1/"):
                statuses.append(429)
            responses = operation.setdefault("responses", {})
            for status in statuses:
                if status not in responses and str(status) not in responses:
                    responses[status] = ERROR[status]
