"""The findings projection and the stored audits.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pj_findings",
        sa.Column("generation", sa.Integer, primary_key=True),
        sa.Column("finding_id", sa.String(24), primary_key=True),
        sa.Column("batch_id", sa.String(128), nullable=False),
        sa.Column("rule", sa.String(40), nullable=False),
        sa.Column("category", sa.String(16), nullable=False),
        sa.Column("severity", sa.String(8), nullable=False),
        sa.Column("licence_id", sa.String(200)),
        sa.Column("declaration_id", sa.String(36)),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("evidence", sa.Text, nullable=False),
        sa.Column("position", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_pj_findings_batch", "pj_findings", ["generation", "batch_id"])
    op.create_index("ix_pj_findings_rule", "pj_findings", ["generation", "rule", "position"])
    op.create_index("ix_pj_shares_ancestor", "pj_shares", ["generation", "ancestor"])
    op.create_index("ix_shipments_batch", "shipments", ["batch_id", "status"])
    op.create_table(
        "audits",
        sa.Column("audit_id", sa.String(36), primary_key=True),
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("requested_by", sa.String(64), nullable=False),
        sa.Column("requested_at", sa.String(32), nullable=False),
        sa.Column("started_at", sa.String(32)),
        sa.Column("finished_at", sa.String(32)),
        sa.Column("as_of_position", sa.BigInteger),
        sa.Column("report", sa.Text),
        sa.Column("findings", sa.Text),
        sa.Column("error", sa.Text),
    )


def downgrade() -> None:
    op.drop_table("audits")
    op.drop_index("ix_pj_shares_ancestor", "pj_shares")
    op.drop_index("ix_shipments_batch", "shipments")
    op.drop_table("pj_findings")
