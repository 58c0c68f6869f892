"""The shares projection: each ancestor's share in every batch, and its own copy of the edges.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pj_shares",
        sa.Column("generation", sa.Integer, primary_key=True),
        sa.Column("batch_id", sa.String(128), primary_key=True),
        sa.Column("ancestor", sa.String(128), primary_key=True),
        sa.Column("share", sa.String(64), nullable=False),
    )
    op.create_table(
        "pj_share_edges",
        sa.Column("generation", sa.Integer, primary_key=True),
        sa.Column("child", sa.String(128), primary_key=True),
        sa.Column("parent", sa.String(128), primary_key=True),
        sa.Column("fraction", sa.String(64), nullable=False),
        sa.Column("event_id", sa.String(36), nullable=False),
        sa.Column("voided", sa.Boolean, nullable=False),
    )
    op.create_index("ix_pj_share_edges_parent", "pj_share_edges", ["generation", "parent"])
    op.create_index("ix_pj_share_edges_event", "pj_share_edges", ["generation", "event_id"])


def downgrade() -> None:
    op.drop_table("pj_share_edges")
    op.drop_table("pj_shares")
