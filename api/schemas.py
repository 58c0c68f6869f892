"""Marshmallow schemas of the HTTP bodies, for parsing requests and documenting answers.

Event payloads are validated by the core (ledger.events); their schemas are registered in
the OpenAPI document from there rather than written again here.
"""

from marshmallow import Schema, fields, validate

from ledger.events import EVENT_TYPES
from ledger.parties import ROLES


class PartyIn(Schema):
    party_id = fields.String(required=True)
    name = fields.String(required=True)
    country = fields.String(required=True)
    role = fields.String(required=True, validate=validate.OneOf(ROLES))


class PartyOut(Schema):
    party_id = fields.String(required=True)
    name = fields.String(required=True)
    country = fields.String(required=True)
    role = fields.String(required=True)


class IssuedKey(Schema):
    key_id = fields.String(required=True)
    party_id = fields.String(required=True)
    api_key = fields.String(required=True, metadata={"description": "Shown once; store it now."})
    created_at = fields.String(required=True)


class RegisteredParty(PartyOut):
    key_id = fields.String(required=True)
    api_key = fields.String(required=True, metadata={"description": "Shown once; store it now."})


class PartyPage(Schema):
    items = fields.List(fields.Nested(PartyOut), required=True)
    next = fields.String(allow_none=True, required=True)


class PageArgs(Schema):
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))
    cursor = fields.String(load_default=None)


class FeedArgs(Schema):
    after = fields.Integer(load_default=0, validate=validate.Range(min=0))
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))
    batch_id = fields.String(load_default=None)
    type = fields.String(load_default=None, validate=validate.OneOf(EVENT_TYPES))


class Receipt(Schema):
    event_id = fields.String(required=True)
    position = fields.Integer(required=True)
    version = fields.Integer(required=True)
    recorded_at = fields.String(required=True)
    leaf_hash = fields.String(required=True)


class Receipts(Schema):
    receipts = fields.List(fields.Nested(Receipt), required=True)


class RecordedEvent(Schema):
    event_id = fields.String(required=True)
    type = fields.String(required=True)
    batch_id = fields.String(required=True)
    actor = fields.String(required=True)
    occurred_at = fields.String(required=True)
    recorded_at = fields.String(required=True)
    position = fields.Integer(required=True)
    version = fields.Integer(required=True)
    data = fields.Dict(required=True)
    leaf_hash = fields.String(required=True)


class EventPage(Schema):
    items = fields.List(fields.Nested(RecordedEvent), required=True)
    next = fields.Integer(allow_none=True, required=True)


class Health(Schema):
    status = fields.String(required=True)
