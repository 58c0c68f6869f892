"""What the route modules share: flask-smorest's Blueprint with one difference, reading a
JSON body (its size limit and malformed JSON as problems), and the `min_position` wait."""

from __future__ import annotations

import flask_smorest
from flask import current_app, request
from webargs import core
from webargs.flaskparser import FlaskParser
from werkzeug.exceptions import RequestEntityTooLarge

from ledger.errors import Invalid, Unavailable
from ledger.events import loads


class _Parser(FlaskParser):
    """Malformed JSON is a 422 problem, as on POST /v1/events (SPEC 3.3), not webargs' 400."""

    def load_json(self, req, schema):
        body = request_body(cache=True)
        if not req.is_json or not body:
            return core.missing
        return parse_json(body)


def parse_json(body: bytes):
    """A body as JSON with exact decimals; malformed JSON is a 422 problem naming `_schema`."""
    try:
        return loads(body)
    except ValueError as error:
        raise Invalid(f"The body is not valid JSON: {error}", {"_schema": ["malformed JSON"]}) from None


def request_body(cache: bool = False) -> bytes:
    """The request's body. werkzeug refuses a declared length over MAX_CONTENT_LENGTH (413)
    but cuts a body sent in chunks (no Content-Length) at the limit without a word, and the
    cut body would then be judged as malformed JSON (422); one that goes on past the limit is
    refused here as too large."""
    body = request.get_data(cache=cache)
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if (request.content_length is None and limit is not None and len(body) >= limit
            and request.environ["wsgi.input"].read(1)):
        raise RequestEntityTooLarge()
    return body


class Blueprint(flask_smorest.Blueprint):
    ARGUMENTS_PARSER = _Parser()


MIN_POSITION_WAIT_SECONDS = 5


def wait_for_projections(min_position: int | None) -> None:
    """`min_position` (SPEC 4): wait up to 5 s for the projections to reach it. A position
    beyond the log's head, which no receipt has given, is answered at once rather than
    holding a server thread 5 s."""
    if not min_position:
        return
    ledger = current_app.extensions["magledger"]
    head = ledger.store.last_position()
    if min_position > head:
        raise Unavailable(f"The log ends at position {head}; position {min_position} is not in it yet.")
    if not ledger.projections.wait_for(min_position, MIN_POSITION_WAIT_SECONDS):
        raise Unavailable(f"The projections have not reached position {min_position} yet; retry shortly.")
