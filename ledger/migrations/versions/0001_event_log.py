"""The event log, parties and keys, and the write-side state.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

APPEND_ONLY_POSTGRES = """
CREATE FUNCTION events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the event log is append-only: % on events is refused', TG_OP
        USING ERRCODE = 'restrict_violation';
END $$;
CREATE TRIGGER events_no_update_or_delete BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_append_only();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_append_only();
"""

APPEND_ONLY_SQLITE = [
    """CREATE TRIGGER events_no_update BEFORE UPDATE ON events
       BEGIN SELECT RAISE(ABORT, 'the event log is append-only: UPDATE on events is refused'); END""",
    """CREATE TRIGGER events_no_delete BEFORE DELETE ON events
       BEGIN SELECT RAISE(ABORT, 'the event log is append-only: DELETE on events is refused'); END""",
]


def upgrade() -> None:
    op.create_table(
        "parties",
        sa.Column("party_id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("country", sa.String(2), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("created_at", sa.String(32), nullable=False),
    )
    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.String(32), primary_key=True),
        sa.Column("party_id", sa.String(64), sa.ForeignKey("parties.party_id"), nullable=False, index=True),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.String(32), nullable=False),
        sa.Column("revoked_at", sa.String(32)),
    )
    op.create_table(
        "events",
        sa.Column("position", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("event_id", sa.String(36), nullable=False, unique=True),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("batch_id", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("occurred_at", sa.String(32), nullable=False),
        sa.Column("recorded_at", sa.String(32), nullable=False),
        sa.Column("data", sa.Text, nullable=False),
        sa.Column("leaf_hash", sa.String(64), nullable=False),
        sa.Column("content_digest", sa.String(64), nullable=False),
        sa.Column("effects", sa.Text, nullable=False),
        sa.UniqueConstraint("batch_id", "version", name="uq_events_stream_version"),
    )
    op.create_index("ix_events_type_position", "events", ["type", "position"])
    op.create_table(
        "log_head",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("last_position", sa.BigInteger, nullable=False),
    )
    op.bulk_insert(sa.table("log_head", sa.column("id"), sa.column("last_position")),
                   [{"id": 1, "last_position": 0}])
    op.create_table(
        "batches",
        sa.Column("batch_id", sa.String(128), primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("origin", sa.String(16), nullable=False),
        sa.Column("registrant", sa.String(64)),
        sa.Column("material", sa.String(200)),
        sa.Column("origin_country", sa.String(2)),
        sa.Column("remaining_mg", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "holdings",
        sa.Column("batch_id", sa.String(128), primary_key=True),
        sa.Column("party_id", sa.String(64), primary_key=True),
        sa.Column("mass_mg", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "shipments",
        sa.Column("shipment_ref", sa.String(128), primary_key=True),
        sa.Column("batch_id", sa.String(128), nullable=False),
        sa.Column("from_party", sa.String(64), nullable=False),
        sa.Column("to_party", sa.String(64), nullable=False),
        sa.Column("mass_mg", sa.BigInteger, nullable=False),
        sa.Column("destination_country", sa.String(2), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("shipped_event_id", sa.String(36), nullable=False),
    )
    op.create_table(
        "lineage",
        sa.Column("parent", sa.String(128), primary_key=True),
        sa.Column("child", sa.String(128), primary_key=True),
        sa.Column("mass_mg", sa.BigInteger, nullable=False),
        sa.Column("event_id", sa.String(36), nullable=False),
    )
    op.create_index("ix_lineage_child", "lineage", ["child"])
    op.create_table(
        "batch_access",
        sa.Column("batch_id", sa.String(128), primary_key=True),
        sa.Column("party_id", sa.String(64), primary_key=True),
    )
    op.create_index("ix_batch_access_party", "batch_access", ["party_id", "batch_id"])
    op.create_table(
        "voids",
        sa.Column("voided_event_id", sa.String(36), primary_key=True),
        sa.Column("void_event_id", sa.String(36), nullable=False),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(APPEND_ONLY_POSTGRES)
    else:
        for statement in APPEND_ONLY_SQLITE:
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS events_no_truncate ON events")
        op.execute("DROP TRIGGER IF EXISTS events_no_update_or_delete ON events")
        op.execute("DROP FUNCTION IF EXISTS events_append_only()")
    for name in ("voids", "batch_access", "lineage", "shipments", "holdings", "batches", "log_head",
                 "events", "api_keys", "parties"):
        op.drop_table(name)
