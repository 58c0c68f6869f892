"""Projections: their generations and checkpoints, batch state, shipments and lineage.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "projection_state",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("generation", sa.Integer, primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("updated_at", sa.String(32), nullable=False),
    )
    op.create_table(
        "pj_batches",
        sa.Column("generation", sa.Integer, primary_key=True),
        sa.Column("batch_id", sa.String(128), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("material", sa.String(200)),
        sa.Column("origin_country", sa.String(2)),
        sa.Column("registrant", sa.String(64)),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("created_at", sa.String(32), nullable=False),
        sa.Column("created_event_id", sa.String(36), nullable=False),
        sa.Column("initial_mass_mg", sa.BigInteger, nullable=False),
        sa.Column("current_mass_mg", sa.BigInteger, nullable=False),
        sa.Column("created_position", sa.BigInteger, nullable=False),
        sa.Column("updated_position", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_pj_batches_origin", "pj_batches", ["generation", "origin_country"])
    op.create_table(
        "pj_holdings",
        sa.Column("generation", sa.Integer, primary_key=True),
        sa.Column("batch_id", sa.String(128), primary_key=True),
        sa.Column("party_id", sa.String(64), primary_key=True),
        sa.Column("mass_mg", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_pj_holdings_party", "pj_holdings", ["generation", "party_id"])
    op.create_table(
        "pj_declarations",
        sa.Column("generation", sa.Integer, primary_key=True),
        sa.Column("event_id", sa.String(36), primary_key=True),
        sa.Column("batch_id", sa.String(128), nullable=False),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("data", sa.Text, nullable=False),
        sa.Column("voided_by", sa.String(36)),
    )
    op.create_index("ix_pj_declarations_batch", "pj_declarations", ["generation", "batch_id"])
    op.create_table(
        "pj_shipments",
        sa.Column("generation", sa.Integer, primary_key=True),
        sa.Column("shipment_ref", sa.String(128), primary_key=True),
        sa.Column("batch_id", sa.String(128), nullable=False),
        sa.Column("from_party", sa.String(64), nullable=False),
        sa.Column("to_party", sa.String(64), nullable=False),
        sa.Column("destination_country", sa.String(2), nullable=False),
        sa.Column("mass_mg", sa.BigInteger, nullable=False),
        sa.Column("received_mg", sa.BigInteger),
        sa.Column("received_by", sa.String(64)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("shipped_event_id", sa.String(36), nullable=False),
        sa.Column("received_event_id", sa.String(36)),
        sa.Column("shipped_at", sa.String(32), nullable=False),
        sa.Column("received_at", sa.String(32)),
    )
    op.create_index("ix_pj_shipments_batch", "pj_shipments", ["generation", "batch_id"])
    op.create_table(
        "pj_lineage",
        sa.Column("generation", sa.Integer, primary_key=True),
        sa.Column("parent", sa.String(128), primary_key=True),
        sa.Column("child", sa.String(128), primary_key=True),
        sa.Column("mass_mg", sa.BigInteger, nullable=False),
        sa.Column("child_mass_mg", sa.BigInteger, nullable=False),
        sa.Column("event_id", sa.String(36), nullable=False),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("voided", sa.Boolean, nullable=False),
    )
    op.create_index("ix_pj_lineage_child", "pj_lineage", ["generation", "child"])


def downgrade() -> None:
    for name in ("pj_lineage", "pj_shipments", "pj_declarations", "pj_holdings", "pj_batches", "projection_state"):
        op.drop_table(name)
