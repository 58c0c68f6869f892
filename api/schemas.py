"""Marshmallow schemas of the HTTP bodies, for parsing requests and documenting answers.

Event payloads are validated by the core (ledger.events); their schemas are registered in
the OpenAPI document from there rather than written again here.
"""

import re

from marshmallow import Schema, fields, validate

from ledger.events import BATCH_ID, EVENT_TYPES, MAX_SAFE_INTEGER, PARTY_ID, FullMatch
from ledger.parties import ROLES
from ledger.rules import CATEGORIES

COUNTRY = re.compile(r"^[A-Z]{2}$")
NO_CONTROL_CHARACTERS = re.compile(r"^[^\x00-\x1f\x7f]+$")
"""Ids that are looked up as given: no id holds one, and PostgreSQL refuses NUL."""
MAX_VERSION = 2**31 - 1
"""Stream versions are 32-bit integers in the log's schema."""
AUDIT_CURSOR = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z\|[0-9a-f-]{36}$")


def _whole(minimum: int = 0, **kwargs) -> fields.Integer:
    """A position, version or tree size: bounded like every number in the log, so that no
    value reaches the database that its integer columns cannot hold."""
    return fields.Integer(validate=validate.Range(min=minimum, max=MAX_SAFE_INTEGER), **kwargs)


def _limit() -> fields.Integer:
    return fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))


def _id(pattern: re.Pattern, what: str, **kwargs) -> fields.String:
    """An id the way the ledger writes it; any other value could only match nothing."""
    return fields.String(validate=FullMatch(pattern, error=f"must be {what}"), **kwargs)


class PartyIn(Schema):
    party_id = _id(PARTY_ID, "a lower-case slug", required=True)
    name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    country = _id(COUNTRY, "an ISO 3166-1 alpha-2 code in upper case", required=True)
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
    limit = _limit()
    cursor = _id(PARTY_ID, "a party id (the last one seen)", load_default=None)


class FeedArgs(Schema):
    after = _whole(load_default=0)
    limit = _limit()
    batch_id = _id(BATCH_ID, "a batch id", load_default=None)
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


class Readiness(Schema):
    status = fields.String(required=True, metadata={"description": "ready, degraded (Redis unreachable: appends "
                                                                    "work, projections wait) or not ready"})
    checks = fields.Dict(keys=fields.String(), values=fields.String(), required=True)
    head = fields.Integer()
    projection_lag = fields.Integer(metadata={"description": "events the slowest projection is behind"})


class BatchArgs(Schema):
    min_position = _whole(load_default=None)


class StreamArgs(Schema):
    after = fields.Integer(load_default=0, validate=validate.Range(min=0, max=MAX_VERSION),
                           metadata={"description": "the last version already read"})
    limit = _limit()


class BatchListArgs(BatchArgs):
    holder = _id(PARTY_ID, "a party id", load_default=None)
    country = _id(COUNTRY, "an ISO 3166-1 alpha-2 code in upper case", load_default=None)
    verdict = fields.String(load_default=None, validate=validate.OneOf(["clear", "at_risk", "diverted"]))
    cursor = _id(BATCH_ID, "a batch id (the last one seen)", load_default=None)
    limit = _limit()


class LineageArgs(BatchArgs):
    direction = fields.String(load_default="up", validate=validate.OneOf(["up", "down", "both"]))
    depth = fields.Integer(load_default=10, validate=validate.Range(min=1, max=50))


class Holding(Schema):
    party_id = fields.String(required=True)
    mass_kg = fields.String(required=True)


class OpenShipment(Schema):
    shipment_ref = fields.String(required=True)
    from_party = fields.String(required=True)
    to_party = fields.String(required=True)
    destination_country = fields.String(required=True)
    mass_kg = fields.String(required=True)
    shipped_event_id = fields.String(required=True)
    shipped_at = fields.String(required=True)


class BatchState(Schema):
    batch_id = fields.String(required=True)
    kind = fields.String(required=True, metadata={"description": "registered, split or transformed"})
    material = fields.String(allow_none=True)
    origin_country = fields.String(allow_none=True)
    registrant = fields.String(allow_none=True)
    initial_mass_kg = fields.String(required=True)
    mass_kg = fields.String(required=True, metadata={"description": "held plus in transit"})
    status = fields.String(required=True)
    holdings = fields.List(fields.Nested(Holding), required=True)
    open_shipments = fields.List(fields.Nested(OpenShipment), required=True)
    declarations = fields.List(fields.Dict(), required=True,
                               metadata={"description": "end-use declarations recorded on this batch"})
    verdict = fields.String(required=True, metadata={"description": "clear, at_risk or diverted (SPEC 2)"})
    diverted = fields.Boolean(required=True)
    as_of_position = fields.Integer(required=True)


class BatchSummary(Schema):
    batch_id = fields.String(required=True)
    kind = fields.String(required=True)
    material = fields.String(allow_none=True)
    origin_country = fields.String(allow_none=True)
    mass_kg = fields.String(required=True)


class BatchPage(Schema):
    items = fields.List(fields.Nested(BatchSummary), required=True)
    next = fields.String(allow_none=True, required=True)
    as_of_position = fields.Integer(required=True)


class LineageNode(Schema):
    batch_id = fields.String(required=True)
    material = fields.String(allow_none=True)
    mass_kg = fields.String(required=True)
    depth = fields.Integer(required=True, metadata={"description": "negative upstream, positive downstream"})


class LineageEdge(Schema):
    parent = fields.String(required=True)
    child = fields.String(required=True)
    mass_kg = fields.String(required=True)
    fraction = fields.String(required=True)
    event_id = fields.String(required=True)


class LineageView(Schema):
    nodes = fields.List(fields.Nested(LineageNode), required=True)
    edges = fields.List(fields.Nested(LineageEdge), required=True)
    as_of_position = fields.Integer(required=True)


class UpstreamBatch(Schema):
    batch_id = fields.String(required=True)
    kind = fields.String(required=True)
    material = fields.String(allow_none=True)
    origin_country = fields.String(allow_none=True)
    mass_kg = fields.String(required=True)
    share = fields.String(required=True, metadata={"description": "the share of this batch's material in the batch"})
    origin = fields.Boolean(required=True, metadata={"description": "a registered (origin) batch"})


class CustodyPeriod(Schema):
    batch_id = fields.String(required=True)
    party = fields.String(required=True)
    country = fields.String(allow_none=True)
    from_ = fields.String(allow_none=True, attribute="from", data_key="from")
    to = fields.String(allow_none=True)
    shipment_ref = fields.String()
    shipped_at = fields.String()
    event_ids = fields.List(fields.String(), required=True)


class Provenance(Schema):
    batch_id = fields.String(required=True)
    controlled_fraction = fields.String(required=True)
    controlled = fields.Boolean(required=True)
    upstream = fields.List(fields.Nested(UpstreamBatch), required=True)
    edges = fields.List(fields.Nested(LineageEdge), required=True)
    custody_chain = fields.List(fields.Nested(CustodyPeriod), required=True)
    governing_declarations = fields.List(fields.Dict(), required=True)
    as_of_position = fields.Integer(required=True)


class CheckpointOut(Schema):
    origin = fields.String(required=True)
    tree_size = fields.Integer(required=True)
    root_hash = fields.String(required=True, metadata={"description": "hex"})
    timestamp = fields.Integer(required=True, metadata={"description": "unix seconds"})
    note = fields.String(required=True, metadata={"description": "the C2SP tlog-checkpoint signed note"})


class PublicKey(Schema):
    key_name = fields.String(required=True)
    key_id = fields.String(required=True, metadata={"description": "hex of the note key id's 4 bytes"})
    public_key = fields.String(required=True, metadata={"description": "base64 of the 32 raw Ed25519 bytes"})
    vkey = fields.String(required=True, metadata={"description": "the note verifier key string"})


class InclusionArgs(Schema):
    event_id = _id(NO_CONTROL_CHARACTERS, "an event id", required=True)
    tree_size = _whole(1, load_default=None, metadata={"description": "default: the latest checkpoint's"})


class InclusionProof(Schema):
    leaf_index = fields.Integer(required=True, metadata={"description": "position - 1"})
    tree_size = fields.Integer(required=True)
    leaf_hash = fields.String(required=True)
    audit_path = fields.List(fields.String(), required=True)


class ConsistencyArgs(Schema):
    first = _whole(1, required=True)
    second = _whole(1, load_default=None, metadata={"description": "default: the latest checkpoint's tree size"})


class ConsistencyProof(Schema):
    first = fields.Integer(required=True)
    second = fields.Integer(required=True)
    proof = fields.List(fields.String(), required=True)


class FindingOut(Schema):
    finding_id = fields.String(required=True)
    rule = fields.String(required=True)
    category = fields.String(required=True)
    severity = fields.String(required=True)
    batch_id = fields.String(required=True)
    licence_id = fields.String(allow_none=True)
    declaration_id = fields.String(allow_none=True)
    message = fields.String(required=True)
    evidence = fields.List(fields.String(), required=True)
    position = fields.Integer(required=True)


class Verdict(Schema):
    batch_id = fields.String(required=True)
    verdict = fields.String(required=True)
    diverted = fields.Boolean(required=True)
    findings = fields.List(fields.Nested(FindingOut), required=True)
    as_of_position = fields.Integer(required=True)


class FindingArgs(Schema):
    rule = fields.String(load_default=None, validate=validate.OneOf(tuple(CATEGORIES)))
    category = fields.String(load_default=None, validate=validate.OneOf(tuple(dict.fromkeys(CATEGORIES.values()))))
    batch_id = _id(BATCH_ID, "a batch id", load_default=None)
    after = _whole(load_default=0)
    limit = _limit()
    min_position = _whole(load_default=None)


class FindingPage(Schema):
    items = fields.List(fields.Nested(FindingOut), required=True)
    next = fields.Integer(allow_none=True, metadata={"description": "pass as `after` for the next page"})
    as_of_position = fields.Integer(required=True)


class AuditIn(Schema):
    scope = fields.String(load_default="incremental", validate=validate.OneOf(("incremental", "full")))


class AuditOut(Schema):
    audit_id = fields.String(required=True)
    scope = fields.String(required=True)
    status = fields.String(required=True, metadata={"description": "queued, running, finished or failed"})
    requested_by = fields.String()
    started_at = fields.String(allow_none=True)
    finished_at = fields.String(allow_none=True)
    as_of_position = fields.Integer(allow_none=True)
    batches_checked = fields.Integer()
    counts = fields.Dict(keys=fields.String(), values=fields.Integer())
    findings_total = fields.Integer()
    diverted_batches = fields.List(fields.String())
    previous_audit_id = fields.String(allow_none=True)
    new_findings = fields.List(fields.Nested(FindingOut))
    resolved_findings = fields.List(fields.Nested(FindingOut))
    error = fields.String(allow_none=True)
    cursor = fields.String()


class AuditListArgs(Schema):
    cursor = _id(AUDIT_CURSOR, "the `cursor` of the last audit seen", load_default=None)
    limit = _limit()


class AuditPage(Schema):
    items = fields.List(fields.Nested(AuditOut), required=True)
    next = fields.String(allow_none=True)
