"""Projection rebuild throughput on PostgreSQL, against a raw SELECT of the same rows.

Builds a log of custody stories (registration, declaration, split, shipment, receipt,
transformation) through the store, then rebuilds every projection from position 0 and
reads the same rows with a plain SELECT in the same run (the read limit). The rebuild is the
one `magledger projections rebuild` runs: independent projections fold in processes of
their own, one per CPU at most. Run:

    python -m bench.rebuild [--url postgresql://postgres@127.0.0.1:5432/postgres] [--events 1000000]
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from datetime import UTC, datetime

import psycopg

from bench.ingest import recreate_database
from ledger.config import Settings
from ledger.events import parse_event
from ledger.services import Ledger

STORY_EVENTS = 8


def story(index: int) -> tuple[list[dict], list[dict]]:
    """Eight events of one magnet lot: the maker's, then the importer's."""
    tag = uuid.uuid4().hex[:12]
    lot, part_a, part_b, motor = f"LOT-{tag}", f"LOT-{tag}-A", f"LOT-{tag}-B", f"MOT-{tag}"
    ref = f"BL-{tag}"

    def event(type_, batch_id, data):
        return {"event_id": str(uuid.uuid4()), "type": type_, "batch_id": batch_id,
                "occurred_at": "2026-10-02T08:00:00+08:00", "data": data}

    maker = [
        event("batch.registered", lot, {"material": "NdFeB N52", "mass_kg": "1000", "origin_country": "CN"}),
        event("enduse.declared", lot, {"licence_id": f"L-{index}", "permitted_countries": ["IN"],
                                       "end_use": "domestic motors"}),
        event("batch.split", lot, {"children": [{"batch_id": part_a, "mass_kg": "600"},
                                                {"batch_id": part_b, "mass_kg": "400"}]}),
        event("custody.shipped", part_a, {"shipment_ref": ref, "to_party": "bench-importer", "mass_kg": "600"}),
        event("batch.consumed", part_b, {"mass_kg": "400", "disposition": "recycled"}),
    ]
    importer = [
        event("custody.received", part_a, {"shipment_ref": ref, "mass_kg": "599.5"}),
        event("batch.transformed", motor, {"inputs": [{"batch_id": part_a, "mass_kg": "12"}],
                                           "product": "traction motor", "mass_kg": "300"}),
        event("custody.exported", motor, {"to_country": "IN", "customs_ref": f"C-{tag}", "mass_kg": "300"}),
    ]
    return maker, importer


def build_log(ledger: Ledger, events: int) -> None:
    maker, _ = ledger.parties.register("bench-maker", "Bench Maker", "CN", "partner")
    importer, _ = ledger.parties.register("bench-importer", "Bench Importer", "IN", "partner")
    now = datetime.now(UTC)
    stories = events // STORY_EVENTS
    started = time.perf_counter()
    for first in range(0, stories, 60):
        pairs = [story(i) for i in range(first, min(first + 60, stories))]
        ledger.store.append(maker, [parse_event(e, now) for m, _ in pairs for e in m], is_batch=True)
        ledger.store.append(importer, [parse_event(e, now) for _, i in pairs for e in i], is_batch=True)
        done = (first + len(pairs)) * STORY_EVENTS
        if done % 100_000 < 60 * STORY_EVENTS:
            print(f"  {done:>9,} events written ({done / (time.perf_counter() - started):,.0f}/s)", flush=True)


def vacuum_projections(url: str) -> None:
    """Reclaim the rows earlier rebuilds retired, so that a rebuild of a reused log loads into
    tables like a fresh one's: with autovacuum off (as on the benchmark's machine) they stay
    dead, and six rebuilds left each table 0.8-2.5 GB, slowing the next ones."""
    started = time.perf_counter()
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        tables = [name for (name,) in conn.execute(
            "SELECT relname FROM pg_stat_user_tables WHERE relname LIKE 'pj%' AND n_dead_tup > 0")]
        for name in tables:
            conn.execute(f'VACUUM "{name}"')
    print(f"  vacuumed {len(tables)} projection tables first ({time.perf_counter() - started:.1f} s, not timed)")


def raw_select(url: str) -> tuple[int, float]:
    """Every event row, in position order, through a server-side cursor: the read limit."""
    started = time.perf_counter()
    rows = 0
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn, \
            conn.cursor(name="all_events") as cursor:
        cursor.itersize = 5000
        cursor.execute("SELECT * FROM events ORDER BY position")
        for _ in cursor:
            rows += 1
    return rows, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--reuse", action="store_true", help="rebuild the log already in magledger_rebuild")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1,
                        help="as `magledger projections rebuild --processes` (1: everything in this process)")
    args = parser.parse_args()
    if args.reuse:
        parts = args.url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
        database_url = f"{parts}/magledger_rebuild"
    else:
        database_url = recreate_database(args.url, "magledger_rebuild")
    ledger = Ledger.open(Settings.from_env({"DATABASE_URL": database_url}), migrate=True)
    if not args.reuse:
        print(f"writing about {args.events:,} events through the store")
        build_log(ledger, args.events)
    head = ledger.store.last_position()
    if min(ledger.projections.positions().values()) < head:
        # A rebuild builds beside serving generations; first bring those up (a catch-up).
        started = time.perf_counter()
        ledger.projections.catch_up()
        seconds = time.perf_counter() - started
        print(f"  catch-up of every projection first    {head / seconds:>10,.0f} events/s  ({seconds:.1f} s)")
    if args.reuse:
        vacuum_projections(database_url)
    groups = ledger.projections.parallel_groups(dict.fromkeys(ledger.projections.projections, 0), args.processes)
    print(f"rebuilding every projection over {head:,} events, in {min(args.processes, len(groups))} process(es): "
          + " | ".join(", ".join(group) for group in groups))
    started = time.perf_counter()
    ledger.projections.rebuild(processes=args.processes)
    rebuild_seconds = time.perf_counter() - started
    rows, select_seconds = raw_select(database_url)
    assert rows == head
    rebuild_rate, select_rate = head / rebuild_seconds, rows / select_seconds
    print(f"  rebuild, all projections              {rebuild_rate:>10,.0f} events/s  ({rebuild_seconds:.1f} s)")
    print(f"  raw SELECT of the same rows            {select_rate:>10,.0f} events/s  ({select_seconds:.1f} s)")
    print(f"  rebuild / raw SELECT                   {rebuild_rate / select_rate:>10.3f}x")
    print(f"  target >= 20,000 events/s: {'met' if rebuild_rate >= 20_000 else 'NOT met'}")
    ledger.close()


if __name__ == "__main__":
    main()
