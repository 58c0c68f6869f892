"""The Merkle tree's stored subtrees and the signed checkpoints, both append-only; the tree
of a log recorded before this revision is built here from its leaf hashes.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TABLES = ("merkle_nodes", "checkpoints")
BACKFILL_CHUNK = 20_000


def _append_only_postgres(table: str) -> str:
    return f"""
CREATE TRIGGER {table}_no_update_or_delete BEFORE UPDATE OR DELETE ON {table}
    FOR EACH ROW EXECUTE FUNCTION {table}_append_only();
CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION {table}_append_only();
"""


def upgrade() -> None:
    op.create_table(
        "merkle_nodes",
        sa.Column("node", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_table(
        "checkpoints",
        sa.Column("tree_size", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("root_hash", sa.String(64), nullable=False),
        sa.Column("origin", sa.String(255), nullable=False),
        sa.Column("timestamp", sa.BigInteger, nullable=False),
        sa.Column("key_id", sa.String(8), primary_key=True),
        sa.Column("note", sa.Text, nullable=False),
    )
    _backfill(op.get_bind())
    postgres = op.get_bind().dialect.name == "postgresql"
    for table in TABLES:
        if postgres:
            op.execute(f"""CREATE FUNCTION {table}_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '{table} is append-only: % is refused', TG_OP USING ERRCODE = 'restrict_violation';
END $$;""")
            op.execute(_append_only_postgres(table))
        else:
            for verb in ("UPDATE", "DELETE"):
                op.execute(f"""CREATE TRIGGER {table}_no_{verb.lower()} BEFORE {verb} ON {table}
                   BEGIN SELECT RAISE(ABORT, '{table} is append-only: {verb} is refused'); END""")


def _backfill(conn) -> None:
    from ledger.merkle import CompactRange, node_rows
    from ledger.schema import events, merkle_nodes

    tree, after = CompactRange(), 0
    while True:
        rows = conn.execute(sa.select(events.c.position, events.c.leaf_hash).where(events.c.position > after)
                            .order_by(events.c.position).limit(BACKFILL_CHUNK)).all()
        if not rows:
            return
        completed = tree.extend(bytes.fromhex(leaf) for _, leaf in rows)
        if completed:
            conn.execute(sa.insert(merkle_nodes), node_rows(completed))
        after = rows[-1].position


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for table in TABLES:
        if postgres:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}")
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_update_or_delete ON {table}")
            op.execute(f"DROP FUNCTION IF EXISTS {table}_append_only()")
        op.drop_table(table)
