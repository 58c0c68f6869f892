"""Database access for the append path, one recorder per database behind one interface.

The generic recorder speaks SQLAlchemy Core and serves SQLite. PostgreSQL's recorder sends
what that server does fastest: the lock and every look-up together in one round trip (the
look-ups run as one statement after the lock, so they see everything committed before it),
and every write of a group commit as one statement (data-modifying CTEs, each table's rows
sent as one JSON parameter and expanded by json_populate_recordset, which costs the client
one orjson encoding per table), with the COMMIT in the same round trip. A group commit
costs at most two round trips, and one when it needs no look-up. How the statements travel
depends on the group's size (`PostgresRecorder.transaction`).
"""

from __future__ import annotations

import contextlib
import functools
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import psycopg
from psycopg.adapt import Transformer
from psycopg.errors import error_from_result
from psycopg.generators import execute
from psycopg.pq import ExecStatus, TransactionStatus
from sqlalchemy import Connection, Executable, select, update
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError

from ledger import fastjson, merkle
from ledger.schema import api_keys, log_head, metadata

CHUNK = 900
CONFLICT_STATES = ("23505", "40P01", "40001", "55P03")
"""Unique violation, deadlock, serialization failure, lock not available: another writer
got there first."""
Lookup = tuple[str, str, Iterable]
"""(table, column, keys): the rows of `table` whose `column` is one of `keys`."""


@dataclass(frozen=True)
class Write:
    """Rows for one table: plain inserts, or upserts on `keys` that overwrite `updates`."""

    table: str
    rows: Sequence[dict]
    keys: tuple[str, ...] = ()
    updates: tuple[str, ...] = ()

    @property
    def conflict(self) -> str:
        if not self.keys:
            return ""
        action = ("DO UPDATE SET " + ", ".join(f"{n} = EXCLUDED.{n}" for n in self.updates)) if self.updates \
            else "DO NOTHING"
        return f"ON CONFLICT ({', '.join(self.keys)}) {action}"


class WriteConflict(Exception):
    """Another writer took a key that this write assumed free; retry under the lock."""


class KeysRevoked(Exception):
    """API keys that the transaction was to act for have been revoked: nothing is written."""

    def __init__(self, key_ids: Sequence[str]):
        super().__init__(f"revoked API keys: {', '.join(key_ids)}")
        self.key_ids = frozenset(key_ids)


REVOKED_STATE = "28000"
"""Invalid authorization specification: raised by `magledger_refuse_keys` (migration 0008),
with the revoked key ids, comma-separated, as its detail."""
_REFUSE_REVOKED_KEYS = ("SELECT magledger_refuse_keys(string_agg(key_id, ',' ORDER BY key_id)) FROM api_keys "
                        "WHERE key_id = ANY(string_to_array(%s, ',')) AND revoked_at IS NOT NULL HAVING count(*) > 0")


class SqlRecorder:
    def __init__(self, conn: Connection):
        self.conn = conn
        self.edge_at_lock: tuple[int, list[tuple]] | None = None
        """The head and the Merkle tree's right-edge rows `lock_and_select` fetched with the
        lock, where it does (PostgreSQL)."""

    def lock_and_select(self, lookups: Sequence[Lookup]) -> tuple[int, list[list[dict]]]:
        """Take the log's lock (held until commit), then run the look-ups; returns the
        last position and each look-up's rows."""
        query = select(log_head.c.last_position).where(log_head.c.id == 1).with_for_update()
        return self.conn.execute(query).scalar_one(), self.select_many(lookups)

    def select_many(self, lookups: Sequence[Lookup]) -> list[list[dict]]:
        return [self._select_in(*lookup) for lookup in lookups]

    def require_live_keys(self, key_ids: Sequence[str]) -> None:
        """Raise KeysRevoked, inside the transaction, if any of these keys has been revoked:
        a key revoked before this statement cannot act in the transaction; one revoked after
        it acted before its revocation."""
        if not key_ids:
            return
        query = select(api_keys.c.key_id).where(api_keys.c.key_id.in_(key_ids), api_keys.c.revoked_at.is_not(None))
        revoked = sorted(key_id for (key_id,) in self.conn.execute(query))
        if revoked:
            raise KeysRevoked(revoked)

    def select_in(self, table: str, column: str, keys: Iterable) -> list[dict]:
        return self.select_many([(table, column, keys)])[0]

    def _select_in(self, table: str, column: str, keys: Iterable, generation: int | None = None) -> list[dict]:
        keys = list(keys)
        target = metadata.tables[table]
        found: list[dict] = []
        for start in range(0, len(keys), CHUNK):
            query = select(target).where(target.c[column].in_(keys[start:start + CHUNK]))
            if generation is not None:
                query = query.where(target.c.generation == generation)
            found.extend(dict(row._mapping) for row in self.conn.execute(query))
        return found

    def select_generation(self, table: str, generation: int, column: str, keys: Iterable) -> list[dict]:
        """A projection's rows of one generation whose `column` is one of `keys`."""
        return self._select_in(table, column, keys, generation)

    def rows(self, query: Executable) -> list[tuple]:
        """Any other query's rows, on the append path's connection."""
        return [tuple(row) for row in self.conn.execute(query)]

    def write(self, writes: Sequence[Write], head: int | None = None) -> None:
        """Apply every write, then move the log head to `head` (when given)."""
        try:
            self._write(writes, head)
        except IntegrityError as error:
            raise WriteConflict(str(error.orig)) from error

    def _write(self, writes: Sequence[Write], head: int | None) -> None:
        for item in writes:
            if not item.rows:
                continue
            statement = sqlite.insert(metadata.tables[item.table])
            if item.updates:
                statement = statement.on_conflict_do_update(
                    index_elements=list(item.keys), set_={n: statement.excluded[n] for n in item.updates})
            elif item.keys:
                statement = statement.on_conflict_do_nothing()
            self.conn.execute(statement, list(item.rows))
        if head is not None:
            self.conn.execute(update(log_head).where(log_head.c.id == 1).values(last_position=head))

    def insert_new(self, writes: Sequence[Write]) -> None:
        """Plain inserts of many rows no other writer can hold (a generation being built)."""
        self.write(writes)

    def transaction(self, streamed: bool = False):
        """A transaction on the recorder's connection: committed at the end of the block,
        rolled back if it raises. `streamed`: writes will be sent while the caller goes on."""
        return self.conn.begin()

    def use_for_appends(self) -> None:
        """Set up the connection the append leader keeps between groups."""
        self.prefer_index_lookups(session=True)

    def prefer_index_lookups(self, session: bool = False) -> None:
        """Keep key look-ups on their indexes even when the planner's statistics are stale."""

    def refresh_statistics(self, tables: Iterable[str]) -> list[str]:
        """Bring the planner's statistics of these tables up to date where they are missing
        or stale; returns the tables analyzed. SQLite plans these look-ups well without."""
        return []


class PostgresRecorder(SqlRecorder):
    def __init__(self, conn: Connection):
        super().__init__(conn)
        self.raw = conn.connection.driver_connection
        self._queued: list[str] | None = None
        """In a transaction that is not streamed: statements bound and waiting for the next
        round trip."""
        self._binder: psycopg.ClientCursor | None = None

    def lock_and_select(self, lookups: Sequence[Lookup]) -> tuple[int, list[list[dict]]]:
        """Also fetches the Merkle tree's right edge at the head, in the same round trip: a
        writer that takes the lock has usually found the head moved by another process, and
        then needs it (`edge_at_lock`)."""
        if self._queued is not None:
            lookups = _listed(lookups)
            select = _select_query(lookups)
            lock, edge, *found = self._send("SELECT last_position FROM log_head WHERE id = 1 FOR UPDATE",
                                            merkle.RIGHT_EDGE_POSTGRES, *([self._bind(*select)] if select else []))
            self.edge_at_lock = (lock[0][0], edge)
            return lock[0][0], _select_answer(lookups, found[0][0] if found else None)
        with self.pipelined():
            lock = self.raw.cursor()
            lock.execute("SELECT last_position FROM log_head WHERE id = 1 FOR UPDATE")
            edge = self.raw.cursor()
            edge.execute(merkle.RIGHT_EDGE_POSTGRES)
            found = self._queue_select(lookups)
            head = lock.fetchone()[0]
            self.edge_at_lock = (head, edge.fetchall())
            return head, found()

    def use_for_appends(self) -> None:
        """Also no server-side prepared statements on this connection. A large group's
        transaction runs in psycopg's pipeline mode. When the server fails one of its
        statements (another writer holds the lock or took the positions), it skips those
        behind it, and psycopg 3.3 can keep in its cache a statement it asked the server to
        prepare among them: the connection's next run of that statement fails ("prepared
        statement "_pg3_2" does not exist"; once a 500 to a post in bench/ingest). The
        statements are planned at every run anyway (`plan_cache_mode=force_custom_plan`);
        preparing only saved parsing them."""
        self.raw.prepare_threshold = None
        super().use_for_appends()

    def lock_without_waiting(self) -> None:
        """Ask for the log's lock (held until commit); the transaction fails at once,
        without waiting, if another writer holds it."""
        if self._queued is not None:
            self._queued.append("SELECT 1 FROM log_head WHERE id = 1 FOR UPDATE NOWAIT")
            return
        with _translated():
            self.raw.cursor().execute("SELECT 1 FROM log_head WHERE id = 1 FOR UPDATE NOWAIT")

    def require_live_keys(self, key_ids: Sequence[str]) -> None:
        """Sent with the group's other statements, so that the check costs no round trip of its
        own; only a revoked key calls the function that fails the transaction (migration 0008)."""
        if not key_ids:
            return
        params = (",".join(key_ids),)
        if self._queued is not None:
            self._queued.append(self._bind(_REFUSE_REVOKED_KEYS, params))
            return
        with _translated():
            self.raw.cursor().execute(_REFUSE_REVOKED_KEYS, params)

    def select_many(self, lookups: Sequence[Lookup]) -> list[list[dict]]:
        if not any(keys for _, _, keys in lookups):
            return [[] for _ in lookups]
        if self._queued is not None:
            lookups = _listed(lookups)
            (found,) = self._send(self._bind(*_select_query(lookups)))
            return _select_answer(lookups, found[0])
        with self.pipelined():
            return self._queue_select(lookups)()

    def prefer_index_lookups(self, session: bool = False) -> None:
        """Every statement of the append and catch-up paths is a look-up by key. Without
        statistics (a new or fast-growing table before autovacuum has analyzed it, or a server
        with autovacuum off) PostgreSQL may plan a sequential scan for `= ANY(...)`; measured
        here, that made look-ups 60 times slower on a million-event log."""
        scope = "SESSION" if session else "LOCAL"
        with _translated(), self.raw.cursor() as cursor:
            cursor.execute(f"SET {scope} enable_seqscan = off")

    def refresh_statistics(self, tables: Iterable[str]) -> list[str]:
        """ANALYZE the tables that have never been analyzed or have changed by more than a
        tenth since (autovacuum's own measure), as PostgreSQL advises after a bulk load.

        Measured on a 200,000-event log never analyzed (autovacuum off), the rebuild's
        look-ups of events by batch up to a position took 38 ms per 500 batches on the
        position index instead of 4 ms on the batch index; and a rebuild's switch makes
        every projection table's statistics describe the generation it retired."""
        with _translated(), self.raw.cursor() as cursor:
            cursor.execute("SELECT relname FROM pg_stat_user_tables WHERE relname = ANY(%s) AND "
                           "(coalesce(last_analyze, last_autoanalyze) IS NULL AND n_live_tup > 0 "
                           "OR n_mod_since_analyze > 50 + 0.1 * n_live_tup) ORDER BY relname",
                           (sorted(tables),))
            stale = [name for (name,) in cursor.fetchall()]
            for name in stale:
                cursor.execute(f'ANALYZE "{name}"')
        return stale

    def rows(self, query: Executable) -> list[tuple]:
        """On the driver's cursor, which works inside a pipeline (SQLAlchemy's result does not)."""
        compiled = query.compile(dialect=self.conn.dialect, compile_kwargs={"render_postcompile": True})
        return self.driver_rows(str(compiled), compiled.params)

    def driver_rows(self, sql: str, params: dict | Sequence) -> list[tuple]:
        """Rows of SQL written for psycopg, on the driver's cursor (inside a pipeline too):
        nothing to compile, and psycopg prepares a statement it sees again. In a small
        group's transaction, bound and sent with the statements queued before it."""
        if self._queued is not None:
            return self._send(self._bind(sql, params))[0]
        with _translated(), self.raw.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall()

    def select_generation(self, table: str, generation: int, column: str, keys: Iterable) -> list[dict]:
        keys = list(keys)
        if not keys:
            return []
        names = [c.name for c in metadata.tables[table].columns]
        with _translated(), self.raw.cursor() as cursor:
            cursor.execute(f"SELECT {', '.join(names)} FROM {table} WHERE generation = %s AND {column} = ANY(%s)",
                           (generation, keys))
            return [dict(zip(names, row)) for row in cursor.fetchall()]

    def _queue_select(self, lookups: Sequence[Lookup]):
        """Send every look-up as one statement (a JSON array per look-up); returns a function
        that reads the answer."""
        lookups = _listed(lookups)
        select = _select_query(lookups)
        if select is None:
            return lambda: [[] for _ in lookups]
        cursor = self.raw.cursor()
        cursor.execute(*select)
        return lambda: _select_answer(lookups, cursor.fetchone())

    def _write(self, writes: Sequence[Write], head: int | None) -> None:
        present = [item for item in writes if item.rows]
        if not present and head is None:
            return
        shape = tuple((item.table, tuple(item.rows[0]), item.conflict) for item in present)
        params = [fastjson.dumps(item.rows) for item in present]
        if head is not None:
            params.append(head)
        if self._queued is not None:
            self._queued.append(self._bind(_write_statement(shape, head is not None), params))
            return
        with _translated():
            self.raw.cursor().execute(_write_statement(shape, head is not None), params)

    def insert_new(self, writes: Sequence[Write]) -> None:
        """By COPY: measured here, 143,000 projection rows a second against 56,000 through
        the one-statement upsert of `write`."""
        with _translated(), self.raw.cursor() as cursor:
            for item in writes:
                if not item.rows:
                    continue
                names = list(item.rows[0])
                values = operator.itemgetter(*names)
                with cursor.copy(f"COPY {item.table} ({', '.join(names)}) FROM STDIN") as copy:
                    for row in item.rows:
                        copy.write_row(values(row))

    @contextlib.contextmanager
    def pipelined(self):
        with _translated(), self.raw.pipeline():
            yield

    @contextlib.contextmanager
    def transaction(self, streamed: bool = False):
        """The append path's transaction, on a connection in the driver's autocommit mode:
        BEGIN and COMMIT travel with the statements.

        Not `streamed`, the statements are bound on the client and sent as one simple query
        (several statements in one message) whenever the caller needs an answer, and with the
        COMMIT: a group that needs no look-up costs one round trip. Measured, a transaction of
        a lock, an insert and a COMMIT cost the client 91-100 µs of CPU so, against 397-432
        through psycopg's pipeline mode, and the server 250 against 367 µs.

        `streamed` (a large group), in psycopg's pipeline mode: each part of the writes goes
        to the server as soon as it is decided, and the server inserts it while the caller
        decides the next. After an error the statements queued behind the one that failed
        are drained first: psycopg refuses a rollback while their answers are pending."""
        try:
            if streamed:
                with _translated(), self.raw.pipeline() as pipeline:
                    try:
                        self.raw.execute("BEGIN")
                        yield
                        self.raw.execute("COMMIT")
                    except BaseException:
                        with contextlib.suppress(psycopg.Error):
                            pipeline.sync()
                        raise
            else:
                self._queued = ["BEGIN"]
                yield
                self._send("COMMIT")
        except BaseException:
            self._queued = None
            if self.raw.info.transaction_status in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
                with contextlib.suppress(psycopg.Error):
                    self.raw.execute("ROLLBACK")
            raise
        finally:
            self._queued = None

    def _bind(self, sql: str, params: dict | Sequence) -> str:
        """SQL with its parameters written in as literals, for a simple query."""
        if self._binder is None:
            self._binder = psycopg.ClientCursor(self.raw)
        return self._binder.mogrify(sql, params)

    def _send(self, *last: str) -> list[list[tuple] | None]:
        """The queued statements and `last` in one round trip; the rows of each of `last`.

        Sent on the driver's libpq connection rather than through a cursor: the statements
        are already bound, so the cursor's work (parsing the text for placeholders, counting
        it for preparation, describing each result) was all overhead. Counted by callgrind,
        a one-event append cost the client 978,000 instructions through a cursor and 814,000
        this way."""
        statements, self._queued = [*self._queued, *last], []
        encoding = self.raw.info.encoding
        with _translated(), self.raw.lock:
            self.raw.pgconn.send_query(";\n".join(statements).encode(encoding))
            results = self.raw.wait(execute(self.raw.pgconn))
            for result in results:
                if result.status == ExecStatus.FATAL_ERROR:
                    raise error_from_result(result, encoding=encoding)
        rows: list[list[tuple] | None] = []
        for result in results[len(results) - len(last):]:
            if result.status == ExecStatus.TUPLES_OK:
                loader = Transformer(self.raw)
                loader.set_pgresult(result)
                rows.append(loader.load_rows(0, result.ntuples, tuple))
            else:
                rows.append(None)
        return rows


@contextlib.contextmanager
def _translated():
    """Raise driver errors as SQLAlchemy's, as if the statements had gone through it."""
    try:
        yield
    except DBAPIError as error:
        _raise_known(error.orig, error)
        raise
    except psycopg.Error as error:
        _raise_known(error, error)
        raise DBAPIError.instance(None, None, error, psycopg.Error) from error


def _raise_known(error: BaseException, cause: BaseException) -> None:
    """Raise a driver error that the append path decides on as its own exception."""
    state = getattr(error, "sqlstate", None)
    if state in CONFLICT_STATES:
        raise WriteConflict(str(error)) from cause
    if state == REVOKED_STATE:
        raise KeysRevoked((error.diag.message_detail or "").split(",")) from cause


def _listed(lookups: Sequence[Lookup]) -> list[Lookup]:
    return [(table, column, list(keys)) for table, column, keys in lookups]


def _select_query(lookups: Sequence[Lookup]) -> tuple[str, list] | None:
    """The statement and parameters of every look-up that has keys, as one statement."""
    wanted = tuple((table, column) for table, column, keys in lookups if keys)
    return (_select_json(wanted), [keys for _, _, keys in lookups if keys]) if wanted else None


def _select_answer(lookups: Sequence[Lookup], row: tuple | None) -> list[list[dict]]:
    """Each look-up's rows from the one row `_select_query`'s statement answers."""
    found = iter(row or ())
    return [next(found) if keys else [] for _, _, keys in lookups]


@functools.cache
def _select_json(wanted: tuple[tuple[str, str], ...]) -> str:
    parts = []
    for table, column in wanted:
        names = ", ".join(c.name for c in metadata.tables[table].columns)
        parts.append(f"(SELECT coalesce(json_agg(t), '[]') FROM (SELECT {names} FROM {table} "
                     f"WHERE {column} = ANY(%s)) t)")
    return "SELECT " + ", ".join(parts)


@functools.cache
def _write_statement(shape: tuple[tuple[str, tuple[str, ...], str], ...], moves_head: bool = True) -> str:
    """One statement for a whole group commit: a data-modifying CTE per table."""
    ctes = []
    for index, (table, names, conflict) in enumerate(shape):
        columns = ", ".join(names)
        ctes.append(f"w{index} AS (INSERT INTO {table} ({columns}) "
                    f"SELECT {columns} FROM json_populate_recordset(NULL::{table}, %s::json) {conflict})")
    last = "UPDATE log_head SET last_position = %s WHERE id = 1" if moves_head else "SELECT 1"
    return f"WITH {', '.join(ctes)} {last}" if ctes else last


def recorder_for(conn: Connection) -> SqlRecorder:
    return PostgresRecorder(conn) if conn.dialect.name == "postgresql" else SqlRecorder(conn)
