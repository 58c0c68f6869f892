"""How far target (b) is from reach, and what a redesign of the write side could win: the
store's 500-event appends with fewer tables written, against the reference, in one run.

Target (b) of the event-log issue asks for 3x the eventsourcing Application's 500-per-
transaction figure. An append writes five kinds of rows per event: the event, its Merkle
nodes, and the batch, holding and visibility rows that keep standing exact in the append
transaction. Each variant below leaves some of them out of the write statements and appends
the same registrations otherwise exactly as the store does (deciding, hashing, the lock, the
head, the commit):

    as built                   every row
    no Merkle nodes            the store's own `keep_tree=False`
    event and visibility rows  no Merkle nodes, no batch or holding rows
    event rows only            no Merkle nodes, no state rows
    no rows                    BEGIN, the lock, the head and COMMIT only: the store's own work

Only "as built" leaves a usable ledger; the others are measurements, on databases of their
own. Every round runs each variant and the reference once, in an order that alternates, and
the ratios are to that round's reference. PostgreSQL's CPU is every server process's (the
backend, the WAL writer, the checkpointer), read from /proc, so this runs on Linux.

    python -m bench.ceiling [--url postgresql://postgres@127.0.0.1:5432/postgres] [--events 10000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from unittest import mock

import psycopg

from bench import reference
from bench.ingest import processes_cpu, recreate_database, registration
from ledger.config import Settings
from ledger.events import parse_event
from ledger.recorders import PostgresRecorder
from ledger.services import Ledger

PER_APPEND = 500
TARGET = 3.0
REFERENCE_DB = "magledger_ceiling_reference"


@dataclass(frozen=True)
class Variant:
    label: str
    tables: frozenset[str] | None
    """The tables written; None for all."""
    keep_tree: bool = False


VARIANTS = (
    Variant("as built", None, keep_tree=True),
    Variant("no Merkle nodes", None),
    Variant("event and visibility rows", frozenset({"events", "batch_access"})),
    Variant("event rows only", frozenset({"events"})),
    Variant("no rows", frozenset()),
)


@contextmanager
def writing_only(tables: frozenset[str]):
    """The store's writes with every other table's rows left out."""
    write = PostgresRecorder._write

    def filtered(recorder, writes, head):
        return write(recorder, [item for item in writes if item.table in tables], head)

    with mock.patch.object(PostgresRecorder, "_write", filtered):
        yield


def drop_databases(admin_url: str, names: list[str]) -> None:
    """The variants' logs are not ledgers anyone should keep."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        for name in names:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def postgres_cpu() -> float:
    """CPU seconds used so far by every PostgreSQL process on this machine."""
    return sum(processes_cpu(lambda name, _parent: name.startswith("postgres")).values())


@dataclass
class Measured:
    rate: float
    client_us: float
    postgres_us: float


def timed(run: Callable[[], None], events: int) -> Measured:
    reference.settle_heap()
    postgres, client, started = postgres_cpu(), time.process_time(), time.perf_counter()
    run()
    elapsed = time.perf_counter() - started
    return Measured(events / elapsed, (time.process_time() - client) / events * 1e6,
                    (postgres_cpu() - postgres) / events * 1e6)


class Store:
    """One variant's ledger, on a database of its own, appending fresh registrations."""

    def __init__(self, admin_url: str, variant: Variant, index: int):
        self.variant = variant
        self.database = f"magledger_ceiling_{index}"
        url = recreate_database(admin_url, self.database)
        self.ledger = Ledger.open(Settings.from_env({"DATABASE_URL": url}), migrate=True)
        self.ledger.store.keep_tree = variant.keep_tree
        self.actor, _key = self.ledger.parties.register("bench-maker", "Bench Maker", "CN", "partner")
        self.appended = 0

    def measure(self, count: int) -> Measured:
        now = datetime.now(UTC)
        events = [parse_event(registration(self.appended + i), now) for i in range(count)]
        self.appended += count

        def append_all() -> None:
            for start in range(0, count, PER_APPEND):
                self.ledger.store.append(self.actor, events[start:start + PER_APPEND], is_batch=True)

        tables = self.variant.tables
        with writing_only(tables) if tables is not None else nullcontext():
            return timed(append_all, count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="an admin connection; the benchmark creates its own databases")
    parser.add_argument("--events", type=int, default=10_000, help="events per variant and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"magledger (b) ceiling: {PER_APPEND} events per append, {args.events:,} events per variant and round, "
          f"{args.rounds} rounds")
    stores = [Store(args.url, variant, index) for index, variant in enumerate(VARIANTS)]
    reference_url = recreate_database(args.url, REFERENCE_DB)
    results: dict[str, list[Measured]] = {variant.label: [] for variant in VARIANTS}
    references: list[float] = []
    try:
        for number in range(args.rounds):
            print(f"round {number + 1} of {args.rounds}", flush=True)
            order = stores if number % 2 == 0 else stores[::-1]
            if number % 2:
                references.append(reference.eventsourcing_application(reference_url, args.events, threads=1,
                                                                      per_txn=PER_APPEND))
            for store in order:
                measured = store.measure(args.events)
                results[store.variant.label].append(measured)
                print(f"  {store.variant.label:<28} {measured.rate:>9,.0f} events/s", flush=True)
            if number % 2 == 0:
                references.append(reference.eventsourcing_application(reference_url, args.events, threads=1,
                                                                      per_txn=PER_APPEND))
            print(f"  {'reference Application':<28} {references[-1]:>9,.0f} events/s", flush=True)
    finally:
        for store in stores:
            store.ledger.close()
        drop_databases(args.url, [store.database for store in stores] + [REFERENCE_DB])
    print(f"medians; ratios to each round's reference (Application, {PER_APPEND} per transaction: "
          f"{statistics.median(references):,.0f} events/s), target (b) {TARGET:g}x")
    print(f"  {'variant':<28} {'events/s':>9} {'ratio':>7}  {'client µs':>9} {'PostgreSQL µs':>13}  rounds' ratios")
    for label, measured in results.items():
        ratios = [m.rate / r for m, r in zip(measured, references)]
        print(f"  {label:<28} {statistics.median(m.rate for m in measured):>9,.0f} {statistics.median(ratios):>6.2f}x"
              f"  {statistics.median(m.client_us for m in measured):>9.1f} "
              f"{statistics.median(m.postgres_us for m in measured):>13.1f}  "
              f"({', '.join(f'{ratio:.2f}' for ratio in ratios)})")
    print("  (client and PostgreSQL: CPU an event)")


if __name__ == "__main__":
    main()
