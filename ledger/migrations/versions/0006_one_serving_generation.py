"""At most one serving and one building generation per projection, kept by the database: two
processes that both found none serving (the first catch-ups of a new ledger, say) each
created one, and readers then had two generations to choose from.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

STATUSES = ("serving", "building")


def upgrade() -> None:
    for status in STATUSES:
        # Of duplicates made before this revision, the latest generation stays.
        op.execute(sa.text(
            "UPDATE projection_state SET status = 'retired' WHERE status = :status AND generation < "
            "(SELECT max(p.generation) FROM projection_state p WHERE p.name = projection_state.name "
            "AND p.status = :status)").bindparams(status=status))
        op.create_index(f"uq_projection_state_{status}", "projection_state", ["name"], unique=True,
                        postgresql_where=sa.text(f"status = '{status}'"),
                        sqlite_where=sa.text(f"status = '{status}'"))


def downgrade() -> None:
    for status in STATUSES:
        op.drop_index(f"uq_projection_state_{status}", "projection_state")
