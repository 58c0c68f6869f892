import logging

from flask import Response, current_app
from sqlalchemy.exc import DBAPIError

from api.auth import READERS, confirm_not_revoked, current_credential, current_party, requires
from api.metrics import APPENDS
from api.openapi import ERROR
from api.routes import Blueprint, parse_json, request_body
from api.schemas import EventPage, FeedArgs, Receipts, RecordedEvent
from ledger import fastjson
from ledger.db import unavailable
from ledger.errors import NotFound
from ledger.events import parse_post

log = logging.getLogger("magledger.api")

blp = Blueprint("events", __name__, url_prefix="/v1/events", description="The append-only custody log")

POST_BODY = {
    "required": True,
    "content": {"application/json": {"schema": {
        "description": "One event, or {\"events\": [...]} (at most 1,000, written atomically). "
                       "`data` follows the Data* schema of the event's type.",
        "oneOf": [
            {"$ref": "#/components/schemas/Event"},
            {"type": "object", "required": ["events"], "additionalProperties": False, "properties": {
                "events": {"type": "array", "minItems": 1, "maxItems": 1000,
                           "items": {"$ref": "#/components/schemas/Event"}}}},
        ],
    }}},
}


def _ledger():
    return current_app.extensions["magledger"]


@blp.route("", methods=["POST"])
@requires("partner", "regulator", revocation_checked_by_append=True)
@blp.doc(requestBody=POST_BODY)
@blp.response(201, Receipts)
@blp.alt_response(200, schema=Receipts, description="Every event was already in the log (an idempotent replay).")
@blp.alt_response(404, response=ERROR[404])
@blp.alt_response(409, response=ERROR[409])
@blp.alt_response(422, response=ERROR[422])
def post_events():
    """Append one event or an atomic batch; replaying an event answers its original receipt."""
    ledger = _ledger()
    try:
        body = parse_json(request_body())
        new_events, is_batch = parse_post(body, ledger.store.clock(), ledger.settings.max_events_per_post)
    except Exception:
        confirm_not_revoked()
        raise
    credential = current_credential()
    with APPENDS.time():
        result = ledger.store.append(credential.party, new_events, is_batch, key_id=credential.key_id)
    if result.created:
        # The events are committed: the answer stays 201 whatever happens here, and the next
        # catch-up (the next append's, or the periodic one) brings the projections up.
        try:
            current_app.extensions["magledger_after_append"]()
        except Exception as error:
            if isinstance(error, DBAPIError) and unavailable(error):
                log.warning("projection catch-up after append failed: the database is unavailable: %s", error.orig)
            else:
                log.exception("projection catch-up after append failed")
    # Receipts are built by the store in their final form; passing them through the Receipts
    # schema (which documents them) cost 7% of a 500-event post's CPU.
    return Response(fastjson.dumps({"receipts": result.receipts}), 201 if result.created else 200,
                    mimetype="application/json")


@blp.route("", methods=["GET"])
@requires(*READERS)
@blp.arguments(FeedArgs, location="query")
@blp.response(200, EventPage)
def feed(args):
    """The log in position order; partners see only events of batches they may see."""
    page = _ledger().store.feed(after=args["after"], limit=args["limit"], batch_id=args["batch_id"],
                                event_type=args["type"], visible_to=current_party())
    return {"items": [e.envelope() for e in page],
            "next": page[-1].position if len(page) == args["limit"] else None}


@blp.route("/<event_id>", methods=["GET"])
@requires(*READERS)
@blp.response(200, RecordedEvent)
def get_event(event_id):
    """One event exactly as stored; its leaf hash can be recomputed from this answer."""
    event = _ledger().store.get(event_id.lower(), visible_to=current_party())
    if event is None:
        raise NotFound(f"No event {event_id!r}.")
    return event.envelope()
