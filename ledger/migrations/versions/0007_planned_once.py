"""PostgreSQL functions for two statements that every append and every request run, so that
their plans are made once per session instead of at every execution.

Connections plan every statement with its parameters (`plan_cache_mode=force_custom_plan`,
ledger.db), and the append path sends its statements as simple queries, which are planned
each time anyway. Planning was most of what these two cost the server: the right edge of the
Merkle tree (a join over generate_series, sent with the log's lock whenever another process
has moved the head) 300 µs of CPU against 110 as a function; the key check 140-160 against
105-115 (measured). PL/pgSQL keeps the plans of its statements for the session; the key
check's function lets PostgreSQL choose a generic plan for its look-up (`plan_cache_mode =
auto`), which, by primary key on two small tables, is not worse than a custom one.

Revision ID: 0007
Revises: 0006
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

RIGHT_EDGE = """
CREATE FUNCTION magledger_right_edge() RETURNS TABLE(node bigint, hash varchar)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    -- The peaks of the tree of `last_position` leaves, numbered in order (ledger.merkle):
    -- a peak at level 0 is the last leaf, one at level l > 0 is node
    -- (((n >> l) - 1) << (l + 1)) + (1 << l) - 1.
    RETURN QUERY
    SELECT (e.position - 1) * 2, e.leaf_hash FROM log_head h JOIN events e ON e.position = h.last_position
    WHERE h.id = 1 AND h.last_position & 1 = 1
    UNION ALL
    SELECT m.node, m.hash FROM log_head h CROSS JOIN generate_series(1, 62) AS l(level)
    JOIN merkle_nodes m ON m.node = (((h.last_position >> l.level) - 1) << (l.level + 1)) + (1::bigint << l.level) - 1
    WHERE h.id = 1 AND (h.last_position >> l.level) & 1 = 1;
END
$$
"""

API_KEY = """
CREATE FUNCTION magledger_api_key(wanted varchar)
RETURNS TABLE(secret_hash varchar, revoked_at varchar, party_id varchar, name varchar, country varchar,
              role varchar)
LANGUAGE plpgsql STABLE SET plan_cache_mode = auto AS $$
BEGIN
    RETURN QUERY
    SELECT k.secret_hash, k.revoked_at, p.party_id, p.name, p.country, p.role
    FROM api_keys k JOIN parties p ON p.party_id = k.party_id WHERE k.key_id = wanted;
END
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(RIGHT_EDGE)
        op.execute(API_KEY)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS magledger_api_key(varchar)")
        op.execute("DROP FUNCTION IF EXISTS magledger_right_edge()")
