"""Reference ingest throughput figures to compare magledger's event store against.

Each benchmark drops and recreates its own schema in the database it is given,
times only the ingest (connections, tables and payloads are prepared first),
checks afterwards that exactly ``n`` rows arrived, and returns events/second.
"""

from __future__ import annotations

import argparse
import gc
import json
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import psycopg
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from psycopg import sql

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
DEFAULT_EVENTS = 20_000

RECORDER_SCHEMA = "ref_es_recorder"
RECORDER_TABLE = "stored_events"
APPLICATION_SCHEMA = "ref_es_application"
RAW_SCHEMA = "ref_raw"
RAW_TABLE = "events"
EVENT_TYPE = "BatchRegistered"
EVENT_TOPIC = "bench.reference:Batch.Registered"

T = TypeVar("T")


def batch_fields(i: int) -> dict[str, str]:
    """Registration details of one magnet batch, about 300 bytes as JSON."""
    return {
        "batch_ref": f"NDFEB-{i:010d}",
        "material": "sintered NdFeB N52, grain-boundary diffused Dy",
        "mass_kg": f"{125 + (i % 1000) / 8:.3f}",
        "origin_country": "AU",
        "supplier": "Example Rare Earth Magnets Pty Ltd",
        "mine_site": "Mount Weld concentrator, Western Australia",
        "certificate_no": f"CERT-{i:08d}-RE",
        "coating": "Ni-Cu-Ni",
    }


def batch_json(i: int) -> str:
    return json.dumps(batch_fields(i), separators=(",", ":"))


class Batch(Aggregate):
    """Magnet batch; registering one records a single ``Registered`` event."""

    @event("Registered")
    def __init__(
        self,
        batch_ref: str,
        material: str,
        mass_kg: str,
        origin_country: str,
        supplier: str,
        mine_site: str,
        certificate_no: str,
        coating: str,
    ) -> None:
        self.batch_ref = batch_ref
        self.material = material
        self.mass_kg = mass_kg
        self.origin_country = origin_country
        self.supplier = supplier
        self.mine_site = mine_site
        self.certificate_no = certificate_no
        self.coating = coating


class BatchRegistry(Application):
    """The application a Python team would write to record batch registrations.

    Its events table is ``batchregistry_events`` (application name, lowercased).
    """


def _conninfo(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def _connection_params(url: str) -> dict[str, str]:
    """Connection settings as eventsourcing wants them (it takes no URL)."""
    parts = urlsplit(_conninfo(url))
    return {
        "dbname": unquote(parts.path.lstrip("/")),
        "host": parts.hostname or "127.0.0.1",
        "port": str(parts.port or 5432),
        "user": unquote(parts.username or "postgres"),
        "password": unquote(parts.password or ""),
    }


def _recreate_schema(conninfo: str, schema: str) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
        )
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))


def _check_row_count(conninfo: str, schema: str, table: str, expected: int) -> None:
    """Fail loudly rather than report a rate for rows that never reached PostgreSQL."""
    query = sql.SQL("SELECT count(*) FROM {}.{}").format(
        sql.Identifier(schema), sql.Identifier(table)
    )
    with psycopg.connect(conninfo) as conn:
        row = conn.execute(query).fetchone()
    count = row[0] if row else 0
    if count != expected:
        msg = f"{schema}.{table} holds {count} rows, expected {expected}"
        raise RuntimeError(msg)


def _shares(items: Sequence[T], parts: int) -> list[Sequence[T]]:
    return [items[k::parts] for k in range(parts)]


def _chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[k : k + size] for k in range(0, len(items), size)]


def settle_heap() -> None:
    """Before a clock starts: collect, then keep what already exists (the prepared inputs,
    the modules) out of the cycle collector's later passes, as a server does with
    gc.freeze() after loading its application. Every scenario starts this way, so each pays
    the collector only for what it allocates while timed."""
    gc.collect()
    gc.freeze()


def run_concurrently(work: Sequence[Callable[[], Any]]) -> float:
    """Start every callable in its own thread at the same moment; return wall seconds."""
    settle_heap()
    barrier = threading.Barrier(len(work) + 1)
    errors: list[BaseException] = []

    def run(job: Callable[[], Any]) -> None:
        barrier.wait()
        try:
            job()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(job,)) for job in work]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return elapsed


def eventsourcing_recorder(
    url: str, n: int, threads: int = 8, per_txn: int = 1
) -> float:
    """The library's PostgreSQL ApplicationRecorder fed ready-made StoredEvents.

    Isolates its insert path: each insert_events call is one transaction that
    takes an EXCLUSIVE table lock, NOTIFYs and inserts via unnest() of a
    composite-type array, so concurrent writers are serialised by design.
    """
    conninfo = _conninfo(url)
    _recreate_schema(conninfo, RECORDER_SCHEMA)
    events = [
        StoredEvent(
            originator_id=uuid.uuid4(),
            originator_version=1,
            topic=EVENT_TOPIC,
            state=batch_json(i).encode(),
        )
        for i in range(n)
    ]
    datastore = PostgresDatastore(
        **_connection_params(url), pool_size=threads, schema=RECORDER_SCHEMA
    )
    try:
        recorder = PostgresApplicationRecorder(
            datastore, events_table_name=RECORDER_TABLE
        )
        recorder.create_table()
        datastore.pool.wait()

        def insert(share: Sequence[StoredEvent]) -> None:
            for chunk in _chunks(share, per_txn):
                recorder.insert_events(chunk)

        elapsed = run_concurrently(
            [partial(insert, share) for share in _shares(events, threads)]
        )
    finally:
        datastore.close()
    _check_row_count(conninfo, RECORDER_SCHEMA, RECORDER_TABLE, n)
    return n / elapsed


def eventsourcing_application(
    url: str, n: int, threads: int = 8, per_txn: int = 1
) -> float:
    """The high-level path: create Batch aggregates and ``app.save()`` them.

    Timing includes building the aggregates and mapping/serialising their
    events, since that is the cost an application using the library pays.
    """
    conninfo = _conninfo(url)
    _recreate_schema(conninfo, APPLICATION_SCHEMA)
    params = _connection_params(url)
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": params["dbname"],
        "POSTGRES_HOST": params["host"],
        "POSTGRES_PORT": params["port"],
        "POSTGRES_USER": params["user"],
        "POSTGRES_PASSWORD": params["password"],
        "POSTGRES_SCHEMA": APPLICATION_SCHEMA,
        "POSTGRES_POOL_SIZE": str(threads),
        "POSTGRES_MAX_OVERFLOW": str(threads),
    }
    app = BatchRegistry(env=env)
    try:
        if not isinstance(app.recorder, PostgresApplicationRecorder):
            msg = f"expected PostgreSQL persistence, got {type(app.recorder).__name__}"
            raise TypeError(msg)
        table = app.recorder.events_table_name
        app.recorder.datastore.pool.wait()

        def register(indexes: Sequence[int]) -> None:
            for chunk in _chunks(indexes, per_txn):
                app.save(*(Batch(**batch_fields(i)) for i in chunk))

        elapsed = run_concurrently(
            [partial(register, share) for share in _shares(range(n), threads)]
        )
    finally:
        app.close()
    _check_row_count(conninfo, APPLICATION_SCHEMA, table, n)
    return n / elapsed


def _recreate_raw_table(conninfo: str) -> None:
    _recreate_schema(conninfo, RAW_SCHEMA)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "CREATE TABLE {}.{} ("
                " id bigserial PRIMARY KEY,"
                " stream_id uuid NOT NULL,"
                " type text NOT NULL,"
                " data jsonb NOT NULL)"
            ).format(sql.Identifier(RAW_SCHEMA), sql.Identifier(RAW_TABLE))
        )


def _raw_rows(n: int) -> list[tuple[uuid.UUID, str, str]]:
    return [(uuid.uuid4(), EVENT_TYPE, batch_json(i)) for i in range(n)]


def raw_insert_commit(url: str, n: int, threads: int = 8) -> float:
    """Ceiling for durable one-event transactions: INSERT + COMMIT per row.

    Each thread owns a connection, so this measures round trips plus WAL
    flushes (group commit permitting), with no library overhead at all.
    """
    conninfo = _conninfo(url)
    _recreate_raw_table(conninfo)
    rows = _raw_rows(n)
    insert = sql.SQL("INSERT INTO {}.{} (stream_id, type, data) VALUES (%s, %s, %s)")
    insert = insert.format(sql.Identifier(RAW_SCHEMA), sql.Identifier(RAW_TABLE))
    connections = [psycopg.connect(conninfo) for _ in range(threads)]
    try:

        def insert_each(conn: psycopg.Connection, share: Sequence[tuple]) -> None:
            with conn.cursor() as cur:
                for row in share:
                    cur.execute(insert, row)
                    conn.commit()

        elapsed = run_concurrently(
            [
                partial(insert_each, conn, share)
                for conn, share in zip(connections, _shares(rows, threads))
            ]
        )
    finally:
        for conn in connections:
            conn.close()
    _check_row_count(conninfo, RAW_SCHEMA, RAW_TABLE, n)
    return n / elapsed


def raw_copy(url: str, n: int) -> float:
    """The machine's bulk-load ceiling: all n rows by COPY in one transaction."""
    conninfo = _conninfo(url)
    _recreate_raw_table(conninfo)
    rows = _raw_rows(n)
    copy_sql = sql.SQL("COPY {}.{} (stream_id, type, data) FROM STDIN").format(
        sql.Identifier(RAW_SCHEMA), sql.Identifier(RAW_TABLE)
    )
    with psycopg.connect(conninfo) as conn:
        settle_heap()
        started = time.perf_counter()
        with conn.cursor() as cur, cur.copy(copy_sql) as copy:
            for row in rows:
                copy.write_row(row)
        conn.commit()
        elapsed = time.perf_counter() - started
    _check_row_count(conninfo, RAW_SCHEMA, RAW_TABLE, n)
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--events", type=int, default=DEFAULT_EVENTS)
    args = parser.parse_args()
    url, n = args.url, args.events

    scenarios: list[tuple[str, Callable[[], float]]] = [
        ("eventsourcing recorder, 1/txn, 8 threads",
         lambda: eventsourcing_recorder(url, n, threads=8, per_txn=1)),
        ("eventsourcing recorder, 500/txn, 1 thread",
         lambda: eventsourcing_recorder(url, n, threads=1, per_txn=500)),
        ("eventsourcing recorder, 500/txn, 8 threads",
         lambda: eventsourcing_recorder(url, n, threads=8, per_txn=500)),
        ("eventsourcing application, 1/txn, 8 threads",
         lambda: eventsourcing_application(url, n, threads=8, per_txn=1)),
        ("eventsourcing application, 500/txn, 1 thread",
         lambda: eventsourcing_application(url, n, threads=1, per_txn=500)),
        ("eventsourcing application, 500/txn, 8 threads",
         lambda: eventsourcing_application(url, n, threads=8, per_txn=500)),
        ("raw psycopg INSERT+COMMIT, 8 threads",
         lambda: raw_insert_commit(url, n, threads=8)),
        ("raw psycopg COPY, 1 transaction",
         lambda: raw_copy(url, n)),
    ]  # fmt: skip
    print(f"{n} events per scenario against {url}")
    for label, run in scenarios:
        print(f"{label:<48} {run():>10,.0f} events/s", flush=True)


if __name__ == "__main__":
    main()
