"""Database access for the append path, one recorder per database behind one interface.

The generic recorder speaks SQLAlchemy Core and serves SQLite. PostgreSQL's recorder
overrides the bulk operations with what that server does fastest: COPY for the log,
one multi-row statement per upsert, and `= ANY(array)` look-ups, so that a group
commit of thousands of events costs a handful of round trips.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence

from sqlalchemy import BigInteger, Connection, Integer, String, Table, Text, insert, select, update
from sqlalchemy.dialects import sqlite

from ledger.schema import log_head, metadata

CHUNK = 900


class SqlRecorder:
    def __init__(self, conn: Connection):
        self.conn = conn

    def lock_head(self) -> int:
        """Take the log's lock (held until commit) and return the last position."""
        query = select(log_head.c.last_position).where(log_head.c.id == 1).with_for_update()
        return self.conn.execute(query).scalar_one()

    def set_head(self, position: int) -> None:
        self.conn.execute(update(log_head).where(log_head.c.id == 1).values(last_position=position))

    def select_in(self, table: str, column: str, keys: Iterable) -> list[dict]:
        keys = list(keys)
        found: list[dict] = []
        target: Table = metadata.tables[table]
        for start in range(0, len(keys), CHUNK):
            chunk = keys[start:start + CHUNK]
            rows = self.conn.execute(select(target).where(target.c[column].in_(chunk)))
            found.extend(dict(row._mapping) for row in rows)
        return found

    def select_many(self, requests: Sequence[tuple[str, str, Iterable]]) -> list[list[dict]]:
        """Several `select_in` look-ups; a recorder may send them together."""
        return [self.select_in(*request) for request in requests]

    def lock_and_select(self, requests: Sequence[tuple[str, str, Iterable]]) -> tuple[int, list[list[dict]]]:
        """`lock_head`, then `select_many`: the look-ups see the state under the lock."""
        return self.lock_head(), self.select_many(requests)

    def pipelined(self):
        """A block whose statements the recorder may send together (results are not read)."""
        return contextlib.nullcontext()

    def insert(self, table: str, rows: Sequence[dict]) -> None:
        if rows:
            self.conn.execute(insert(metadata.tables[table]), list(rows))

    def upsert(self, table: str, keys: Sequence[str], updates: Sequence[str], rows: Sequence[dict]) -> None:
        """Insert rows, or on a key conflict overwrite `updates` (nothing if empty)."""
        if not rows:
            return
        statement = sqlite.insert(metadata.tables[table])
        if updates:
            statement = statement.on_conflict_do_update(
                index_elements=list(keys), set_={name: statement.excluded[name] for name in updates})
        else:
            statement = statement.on_conflict_do_nothing()
        self.conn.execute(statement, list(rows))


class PostgresRecorder(SqlRecorder):
    def __init__(self, conn: Connection):
        super().__init__(conn)
        self.raw = conn.connection.driver_connection

    def lock_head(self) -> int:
        with self.raw.cursor() as cursor:
            cursor.execute("SELECT last_position FROM log_head WHERE id = 1 FOR UPDATE")
            return cursor.fetchone()[0]

    def set_head(self, position: int) -> None:
        with self.raw.cursor() as cursor:
            cursor.execute("UPDATE log_head SET last_position = %s WHERE id = 1", (position,))

    def select_in(self, table: str, column: str, keys: Iterable) -> list[dict]:
        return self.select_many([(table, column, keys)])[0]

    def select_many(self, requests: Sequence[tuple[str, str, Iterable]]) -> list[list[dict]]:
        return self.lock_and_select(requests, lock=False)[1]

    def lock_and_select(self, requests: Sequence[tuple[str, str, Iterable]],
                        lock: bool = True) -> tuple[int, list[list[dict]]]:
        """The lock and all look-ups in one round trip, through psycopg's pipeline mode."""
        queued = []
        with self.raw.pipeline():
            if lock:
                head_cursor = self.raw.cursor()
                head_cursor.execute("SELECT last_position FROM log_head WHERE id = 1 FOR UPDATE")
            for table, column, keys in requests:
                keys = list(keys)
                names = [c.name for c in metadata.tables[table].columns]
                if not keys:
                    queued.append((names, None))
                    continue
                cursor = self.raw.cursor()
                cursor.execute(f"SELECT {', '.join(names)} FROM {table} WHERE {column} = ANY(%s)", (keys,))
                queued.append((names, cursor))
            head = head_cursor.fetchone()[0] if lock else 0
            results = []
            for names, cursor in queued:
                results.append([] if cursor is None else [dict(zip(names, row)) for row in cursor.fetchall()])
        return head, results

    def pipelined(self):
        return self.raw.pipeline()

    def insert(self, table: str, rows: Sequence[dict]) -> None:
        self._insert(table, rows, "")

    def upsert(self, table: str, keys: Sequence[str], updates: Sequence[str], rows: Sequence[dict]) -> None:
        if updates:
            action = "DO UPDATE SET " + ", ".join(f"{name} = EXCLUDED.{name}" for name in updates)
        else:
            action = "DO NOTHING"
        self._insert(table, rows, f"ON CONFLICT ({', '.join(keys)}) {action}")

    def _insert(self, table: str, rows: Sequence[dict], conflict: str) -> None:
        """One statement for any number of rows: each column travels as one array."""
        if not rows:
            return
        columns = metadata.tables[table].columns
        names = list(rows[0])
        arrays = ", ".join(f"%b::{_ARRAY_TYPES[type(columns[name].type)]}" for name in names)
        with self.raw.cursor() as cursor:
            cursor.execute(f"INSERT INTO {table} ({', '.join(names)}) SELECT * FROM unnest({arrays}) {conflict}",
                           [[row[name] for row in rows] for name in names])


_ARRAY_TYPES = {String: "text[]", Text: "text[]", BigInteger: "bigint[]", Integer: "integer[]"}


def recorder_for(conn: Connection) -> SqlRecorder:
    return PostgresRecorder(conn) if conn.dialect.name == "postgresql" else SqlRecorder(conn)
