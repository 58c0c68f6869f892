"""A generation's rows as a projection reads and writes them while it catches up.

A rebuild starts a generation from nothing, so nearly every look-up it makes (is there a
row for this new batch yet?) finds nothing, and on a million-event log those index probes
were a quarter of the rebuild's time. While one process builds a generation from position 0,
the engine keeps a copy of every row the generation holds (`RowCache`): look-ups are
answered from it, and writes are held in it and reach the database together, mostly as
new rows loaded by COPY, in the transaction that moves the checkpoint every
`FLUSH_EVENTS` (and when the build reaches the head). The committed rows and checkpoint
are always a whole state; the copy is that state plus the events applied since.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from sqlalchemy import Connection, delete, tuple_

from ledger.recorders import CHUNK, Write, recorder_for
from ledger.schema import metadata

CACHE_ROWS = 3_000_000
"""Above this many rows, a rebuild drops its copy and reads from the database instead. A
rebuild of all four custody projections over 1,000,000 events holds about 2,600,000 rows,
and the process then peaked at 2.0 GB resident (measured)."""


class Memory(Protocol):
    """What a projection keeps between the steps of a build from position 0. The engine
    moves `position` on as events are applied to it and `committed` as the checkpoint is
    written; they differ while it `holds_writes` back."""

    position: int
    committed: int
    holds_writes: bool

    @property
    def full(self) -> bool:
        """Grown past what the process should hold: the engine then lets it go, and the
        build reads from the database."""


class RowCache:
    """Every row of one generation, by primary key, with an index for each column looked up
    by; as of `position`, with the rows written and deleted since `committed` held back until
    `pending()` hands them over."""

    holds_writes = True

    def __init__(self, position: int = 0):
        self.position = self.committed = position
        self.size = 0
        self._rows: dict[str, dict[tuple, dict]] = {}
        self._indexes: dict[str, dict[str, dict[object, set[tuple]]]] = {}
        self._new: dict[str, dict[tuple, None]] = {}
        """Rows not in the database yet, in the order they were made."""
        self._changed: dict[str, dict[tuple, Write]] = {}
        """Rows in the database changed since, with the write that changed them."""
        self._deleted: dict[str, set[tuple]] = {}
        """Rows in the database deleted since."""

    @property
    def full(self) -> bool:
        return self.size > CACHE_ROWS

    def select(self, table: str, column: str, keys: Iterable) -> list[dict]:
        index = self._index(table, column)
        rows = self._rows.get(table, {})
        return [dict(rows[pk]) for key in set(keys) for pk in index.get(key, ())]

    def write(self, item: Write) -> None:
        table_rows = self._rows.setdefault(item.table, {})
        indexes = self._indexes.get(item.table, {})
        key_of = _key_getter(item.table)
        new, changed = self._new.setdefault(item.table, {}), self._changed.setdefault(item.table, {})
        held = len(table_rows)
        for row in item.rows:
            pk = key_of(row)
            current = table_rows.get(pk)
            if current is None:
                table_rows[pk] = current = dict(row)
                new[pk] = None
                for column, index in indexes.items():
                    if (same := index.get(current[column])) is None:
                        index[current[column]] = {pk}
                    else:
                        same.add(pk)
            elif not item.keys:
                raise ValueError(f"{item.table}: a plain insert of a row that exists, {pk}")
            else:
                for column in item.updates:
                    if column in indexes and current[column] != row[column]:
                        indexes[column][current[column]].discard(pk)
                        indexes[column].setdefault(row[column], set()).add(pk)
                    current[column] = row[column]
                if item.updates and pk not in new:
                    changed[pk] = item
        self.size += len(table_rows) - held

    def delete(self, table: str, column: str, keys: Iterable) -> int:
        """Removes the rows whose `column` is one of `keys`; returns how many there were."""
        table_rows = self._rows.get(table, {})
        new, changed = self._new.get(table, {}), self._changed.get(table, {})
        doomed = [pk for key in set(keys) for pk in self._index(table, column).get(key, ())]
        for pk in doomed:
            row = table_rows.pop(pk)
            for name, index in self._indexes.get(table, {}).items():
                index[row[name]].discard(pk)
            changed.pop(pk, None)
            if pk in new:
                del new[pk]
            else:
                self._deleted.setdefault(table, set()).add(pk)
        self.size -= len(doomed)
        return len(doomed)

    def pending(self) -> tuple[dict[str, list[tuple]], list[Write]]:
        """What the database lacks, and forgets it: the primary keys of rows to delete, then
        the writes (plain inserts of new rows, upserts of changed ones)."""
        deleted = {table: sorted(pks) for table, pks in self._deleted.items() if pks}
        writes = []
        for table, pks in self._new.items():
            if pks:
                rows = self._rows[table]
                # In key order, each insert lands beside the last on the primary key's index
                # (a new generation's keys all sort after the old one's): loading 260,000
                # share edges ran at 84,000-108,000 rows/s against 53,000-66,000 unsorted.
                # Every key starts with the one generation, so the column after it orders
                # them well enough, at a third of the cost of comparing whole keys.
                writes.append(Write(table, [rows[pk] for pk in sorted(pks, key=_after_generation)]))
        for table, changed in self._changed.items():
            by_kind: dict[tuple, list[dict]] = {}
            for pk, item in changed.items():
                by_kind.setdefault((item.keys, item.updates), []).append(self._rows[table][pk])
            writes.extend(Write(table, rows, keys, updates) for (keys, updates), rows in by_kind.items())
        self._new, self._changed, self._deleted = {}, {}, {}
        return deleted, writes

    def _index(self, table: str, column: str) -> dict[object, set[tuple]]:
        indexes = self._indexes.setdefault(table, {})
        if column not in indexes:
            index: dict[object, set[tuple]] = {}
            for pk, row in self._rows.get(table, {}).items():
                index.setdefault(row[column], set()).add(pk)
            indexes[column] = index
        return indexes[column]


class GenerationRows:
    """What `Projection.apply` reads and writes: one generation's rows, on the catch-up's
    connection, answered from a `RowCache` when the engine keeps one, with whatever else
    the projection keeps in `memory` during a build from position 0."""

    def __init__(self, conn: Connection, generation: int, memory: Memory | None = None):
        self.conn = conn
        self.generation = generation
        self.memory = memory
        self.cache = memory if isinstance(memory, RowCache) else None
        self._recorder = recorder_for(conn)

    def select(self, table: str, column: str, keys: Iterable) -> list[dict]:
        """The generation's rows of `table` whose `column` is one of `keys`."""
        if self.cache is not None:
            return self.cache.select(table, column, keys)
        return self._recorder.select_generation(table, self.generation, column, keys)

    def write(self, writes: Sequence[Write]) -> None:
        if self.cache is None:
            self._recorder.write(writes)
            return
        for item in writes:
            self.cache.write(item)

    def delete(self, table: str, column: str, keys: Iterable) -> None:
        keys = sorted(set(keys))
        if self.cache is None:
            self._delete_stored(table, column, keys)
        else:
            self.cache.delete(table, column, keys)

    def flush(self) -> None:
        """Write what the `RowCache` holds back, in the step's transaction."""
        if self.cache is None:
            return
        deleted, writes = self.cache.pending()
        for table, pks in deleted.items():
            target = metadata.tables[table]
            key = tuple_(*target.primary_key.columns)
            for start in range(0, len(pks), CHUNK):
                self.conn.execute(delete(target).where(key.in_(pks[start:start + CHUNK])))
        self._recorder.insert_new([item for item in writes if not item.keys])
        self._recorder.write([item for item in writes if item.keys])

    def _delete_stored(self, table: str, column: str, keys: list) -> None:
        target = metadata.tables[table]
        for start in range(0, len(keys), CHUNK):
            self.conn.execute(delete(target).where(target.c.generation == self.generation,
                                                   target.c[column].in_(keys[start:start + CHUNK])))


_after_generation = operator.itemgetter(1)


@functools.cache
def _key_getter(table: str) -> Callable[[dict], tuple]:
    """A row's primary key, as a tuple (every projection table's key has two columns or more)."""
    return operator.itemgetter(*(c.name for c in metadata.tables[table].primary_key.columns))
