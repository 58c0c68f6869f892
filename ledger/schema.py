"""Tables. The event log is the truth; the other tables are the write-side state that the
store keeps current in the same transaction as each append, so that standing is exact."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

metadata = MetaData()

parties = Table(
    "parties", metadata,
    Column("party_id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("country", String(2), nullable=False),
    Column("role", String(16), nullable=False),
    Column("created_at", String(32), nullable=False),
)

api_keys = Table(
    "api_keys", metadata,
    Column("key_id", String(32), primary_key=True),
    Column("party_id", String(64), ForeignKey("parties.party_id"), nullable=False, index=True),
    Column("secret_hash", String(64), nullable=False),
    Column("created_at", String(32), nullable=False),
    Column("revoked_at", String(32)),
)

events = Table(
    "events", metadata,
    Column("position", BigInteger, primary_key=True, autoincrement=False),
    Column("event_id", String(36), nullable=False, unique=True),
    Column("type", String(32), nullable=False),
    Column("batch_id", String(128), nullable=False),
    Column("version", Integer, nullable=False),
    Column("actor", String(64), nullable=False),
    Column("occurred_at", String(32), nullable=False),
    Column("recorded_at", String(32), nullable=False),
    Column("data", Text, nullable=False),
    Column("leaf_hash", String(64), nullable=False),
    Column("content_digest", String(64), nullable=False),
    Column("effects", Text, nullable=False),
    UniqueConstraint("batch_id", "version", name="uq_events_stream_version"),
    Index("ix_events_type_position", "type", "position"),
)

log_head = Table(
    "log_head", metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("last_position", BigInteger, nullable=False),
)

batches = Table(
    "batches", metadata,
    Column("batch_id", String(128), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("origin", String(16), nullable=False),
    Column("registrant", String(64)),
    Column("material", String(200)),
    Column("origin_country", String(2)),
    Column("remaining_mg", BigInteger, nullable=False),
)

holdings = Table(
    "holdings", metadata,
    Column("batch_id", String(128), primary_key=True),
    Column("party_id", String(64), primary_key=True),
    Column("mass_mg", BigInteger, nullable=False),
)

shipments = Table(
    "shipments", metadata,
    Column("shipment_ref", String(128), primary_key=True),
    Column("batch_id", String(128), nullable=False),
    Column("from_party", String(64), nullable=False),
    Column("to_party", String(64), nullable=False),
    Column("mass_mg", BigInteger, nullable=False),
    Column("destination_country", String(2), nullable=False),
    Column("status", String(16), nullable=False),
    Column("shipped_event_id", String(36), nullable=False),
    Index("ix_shipments_batch", "batch_id", "status"),
)

lineage = Table(
    "lineage", metadata,
    Column("parent", String(128), primary_key=True),
    Column("child", String(128), primary_key=True),
    Column("mass_mg", BigInteger, nullable=False),
    Column("event_id", String(36), nullable=False),
    Index("ix_lineage_child", "child"),
)

batch_access = Table(
    "batch_access", metadata,
    Column("batch_id", String(128), primary_key=True),
    Column("party_id", String(64), primary_key=True),
    Index("ix_batch_access_party", "party_id", "batch_id"),
)

voids = Table(
    "voids", metadata,
    Column("voided_event_id", String(36), primary_key=True),
    Column("void_event_id", String(36), nullable=False),
)

# --- projections: every table is keyed by the generation that built it ----------------------

projection_state = Table(
    "projection_state", metadata,
    Column("name", String(64), primary_key=True),
    Column("generation", Integer, primary_key=True),
    Column("version", Integer, nullable=False),
    Column("position", BigInteger, nullable=False),
    Column("status", String(16), nullable=False),
    Column("updated_at", String(32), nullable=False),
    *(Index(f"uq_projection_state_{status}", "name", unique=True, postgresql_where=text(f"status = '{status}'"),
            sqlite_where=text(f"status = '{status}'")) for status in ("serving", "building")),
)

pj_batches = Table(
    "pj_batches", metadata,
    Column("generation", Integer, primary_key=True),
    Column("batch_id", String(128), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("material", String(200)),
    Column("origin_country", String(2)),
    Column("registrant", String(64)),
    Column("created_by", String(64), nullable=False),
    Column("created_at", String(32), nullable=False),
    Column("created_event_id", String(36), nullable=False),
    Column("initial_mass_mg", BigInteger, nullable=False),
    Column("current_mass_mg", BigInteger, nullable=False),
    Column("created_position", BigInteger, nullable=False),
    Column("updated_position", BigInteger, nullable=False),
    Index("ix_pj_batches_origin", "generation", "origin_country"),
)

pj_holdings = Table(
    "pj_holdings", metadata,
    Column("generation", Integer, primary_key=True),
    Column("batch_id", String(128), primary_key=True),
    Column("party_id", String(64), primary_key=True),
    Column("mass_mg", BigInteger, nullable=False),
    Index("ix_pj_holdings_party", "generation", "party_id"),
)

pj_declarations = Table(
    "pj_declarations", metadata,
    Column("generation", Integer, primary_key=True),
    Column("event_id", String(36), primary_key=True),
    Column("batch_id", String(128), nullable=False),
    Column("position", BigInteger, nullable=False),
    Column("data", Text, nullable=False),
    Column("voided_by", String(36)),
    Index("ix_pj_declarations_batch", "generation", "batch_id"),
)

pj_shipments = Table(
    "pj_shipments", metadata,
    Column("generation", Integer, primary_key=True),
    Column("shipment_ref", String(128), primary_key=True),
    Column("batch_id", String(128), nullable=False),
    Column("from_party", String(64), nullable=False),
    Column("to_party", String(64), nullable=False),
    Column("destination_country", String(2), nullable=False),
    Column("mass_mg", BigInteger, nullable=False),
    Column("received_mg", BigInteger),
    Column("received_by", String(64)),
    Column("status", String(16), nullable=False),
    Column("shipped_event_id", String(36), nullable=False),
    Column("received_event_id", String(36)),
    Column("shipped_at", String(32), nullable=False),
    Column("received_at", String(32)),
    Index("ix_pj_shipments_batch", "generation", "batch_id"),
)

pj_lineage = Table(
    "pj_lineage", metadata,
    Column("generation", Integer, primary_key=True),
    Column("parent", String(128), primary_key=True),
    Column("child", String(128), primary_key=True),
    Column("mass_mg", BigInteger, nullable=False),
    Column("child_mass_mg", BigInteger, nullable=False),
    Column("event_id", String(36), nullable=False),
    Column("position", BigInteger, nullable=False),
    Column("voided", Boolean, nullable=False),
    Index("ix_pj_lineage_child", "generation", "child"),
)

pj_shares = Table(
    "pj_shares", metadata,
    Column("generation", Integer, primary_key=True),
    Column("batch_id", String(128), primary_key=True),
    Column("ancestor", String(128), primary_key=True),
    Column("share", String(64), nullable=False),
    Index("ix_pj_shares_ancestor", "generation", "ancestor"),
)

pj_share_edges = Table(
    "pj_share_edges", metadata,
    Column("generation", Integer, primary_key=True),
    Column("child", String(128), primary_key=True),
    Column("parent", String(128), primary_key=True),
    Column("fraction", String(64), nullable=False),
    Column("event_id", String(36), nullable=False),
    Column("voided", Boolean, nullable=False),
    Index("ix_pj_share_edges_parent", "generation", "parent"),
    Index("ix_pj_share_edges_event", "generation", "event_id"),
)

merkle_nodes = Table(
    "merkle_nodes", metadata,
    # The subtree's in-order number (ledger.merkle.in_order): one key for level and index.
    Column("node", BigInteger, primary_key=True, autoincrement=False),
    Column("hash", String(64), nullable=False),
)

checkpoints = Table(
    "checkpoints", metadata,
    Column("tree_size", BigInteger, primary_key=True, autoincrement=False),
    Column("root_hash", String(64), nullable=False),
    Column("origin", String(255), nullable=False),
    Column("timestamp", BigInteger, nullable=False),
    Column("key_id", String(8), primary_key=True),
    Column("note", Text, nullable=False),
)

pj_findings = Table(
    "pj_findings", metadata,
    Column("generation", Integer, primary_key=True),
    Column("finding_id", String(24), primary_key=True),
    Column("batch_id", String(128), nullable=False),
    Column("rule", String(40), nullable=False),
    Column("category", String(16), nullable=False),
    Column("severity", String(8), nullable=False),
    Column("licence_id", String(200)),
    Column("declaration_id", String(36)),
    Column("message", Text, nullable=False),
    Column("evidence", Text, nullable=False),
    Column("position", BigInteger, nullable=False),
    Index("ix_pj_findings_batch", "generation", "batch_id"),
    Index("ix_pj_findings_rule", "generation", "rule", "position"),
)

audits = Table(
    "audits", metadata,
    Column("audit_id", String(36), primary_key=True),
    Column("scope", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("requested_by", String(64), nullable=False),
    Column("requested_at", String(32), nullable=False),
    Column("started_at", String(32)),
    Column("finished_at", String(32)),
    Column("as_of_position", BigInteger),
    Column("report", Text),
    Column("findings", Text),
    Column("error", Text),
)
