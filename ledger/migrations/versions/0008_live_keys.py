"""A PostgreSQL function that fails an append's transaction when the keys it acts for have
been revoked (`EventStore.append`'s `key_id`).

A server process remembers the keys it has verified, so that a post does not look its key
up in a round trip of its own; whether a key has been revoked since is checked where the
post acts, by a look-up sent with the group's other statements (`PostgresRecorder.
require_live_keys`), which calls this function only when it finds a revoked key. It raises
SQLSTATE 28000 (invalid authorization specification) with the revoked key ids,
comma-separated, as its detail.

Revision ID: 0008
Revises: 0007
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

REFUSE_KEYS = """
CREATE FUNCTION magledger_refuse_keys(revoked text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'revoked API keys: %', revoked USING ERRCODE = '28000', DETAIL = revoked;
END
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(REFUSE_KEYS)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS magledger_refuse_keys(text)")
