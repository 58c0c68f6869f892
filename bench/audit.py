"""Diversion audits on PostgreSQL at 100,000 batches and 1,000,000 events, in one run.

Each batch has a story of ten events: registered by a Chinese maker under a licence for
India, shipped twice to an Indian importer and received, then exported twice and partly
consumed by the importer. One batch in fifty has an export to the United States (a
diversion), and one in twenty arrives short (a transit loss). Measured:

1. a full audit (every batch judged again), against reading the same events with a raw SELECT;
2. an incremental audit after 1,000 new events;
3. GET /v1/batches/{id}/diversion over HTTP, 1 client, p50 and p95, against GET /v1/batches/{id}.

    python -m bench.audit [--url postgresql://postgres@127.0.0.1:5432/postgres] [--batches 100000] [--reuse]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import text

from bench.ingest import recreate_database, start_server
from bench.merkle import percentiles, timed_requests
from bench.rebuild import raw_select
from ledger.config import Settings
from ledger.events import format_time, parse_event
from ledger.services import Ledger

DATABASE = "magledger_audit"
EVENTS_PER_BATCH = 10
STORIES_PER_APPEND = 50


def story(index: int, start: datetime) -> tuple[list[dict], list[dict]]:
    """The maker's events and the importer's, for one batch."""
    lot = f"CN-{index:07d}-{uuid.uuid4().hex[:6]}"
    moment = [start]

    def event(type_, data):
        moment[0] += timedelta(hours=1)
        return {"event_id": str(uuid.uuid4()), "type": type_, "batch_id": lot,
                "occurred_at": format_time(moment[0]), "data": data}

    maker = [event("batch.registered", {"material": "NdFeB N52", "mass_kg": "100", "origin_country": "CN"}),
             event("enduse.declared", {"licence_id": f"L-{index}", "permitted_countries": ["IN"],
                                       "end_use": "domestic motors"})]
    importer = []
    for leg in range(2):
        ref = f"BL-{lot}-{leg}"
        maker.append(event("custody.shipped", {"shipment_ref": ref, "to_party": "bench-importer", "mass_kg": "20"}))
        got = "19" if index % 20 == 0 and leg == 0 else "20"
        importer.append(event("custody.received", {"shipment_ref": ref, "mass_kg": got}))
    for leg in range(2):
        country = "US" if index % 50 == 0 and leg == 1 else "IN"
        importer.append(event("custody.exported", {"to_country": country, "customs_ref": f"C-{lot}-{leg}",
                                                   "mass_kg": "5"}))
        importer.append(event("batch.consumed", {"mass_kg": "2", "disposition": "consumed"}))
    return maker, importer


def build(ledger: Ledger, batches: int) -> None:
    actors = {}
    for party_id, country in (("bench-maker", "CN"), ("bench-importer", "IN")):
        actors[party_id], _ = ledger.parties.register(party_id, party_id, country, "partner")
    now = datetime.now(UTC)
    start = now - timedelta(days=20)
    started = time.perf_counter()
    for first in range(0, batches, STORIES_PER_APPEND):
        stories = [story(i, start) for i in range(first, min(first + STORIES_PER_APPEND, batches))]
        ledger.store.append(actors["bench-maker"], [parse_event(e, now) for m, _ in stories for e in m], True)
        ledger.store.append(actors["bench-importer"], [parse_event(e, now) for _, i in stories for e in i], True)
        done = first + len(stories)
        if done % 10_000 == 0:
            rate = done * EVENTS_PER_BATCH / (time.perf_counter() - started)
            print(f"  {done:>7,} batches written ({rate:,.0f} events/s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--batches", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--reuse", action="store_true", help=f"audit the log already in {DATABASE}")
    args = parser.parse_args()
    workdir = Path(tempfile.gettempdir()) / "bench-audit"
    workdir.mkdir(exist_ok=True)
    if args.reuse:
        database_url = args.url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + "/" + DATABASE
    else:
        database_url = recreate_database(args.url, DATABASE)
    settings = Settings.from_env({"DATABASE_URL": database_url, "LEDGER_SIGNING_KEY": str(workdir / "signing.key")})
    ledger = Ledger.open(settings, migrate=True)
    if not args.reuse:
        print(f"writing {args.batches:,} batches of {EVENTS_PER_BATCH} events through the store")
        build(ledger, args.batches)
    started = time.perf_counter()
    ledger.projections.catch_up()
    print(f"  projections caught up in {time.perf_counter() - started:.1f} s")
    with ledger.engine.connect() as conn:
        conn.execute(text("ANALYZE"))  # what autovacuum would have done; it is off on this machine
        conn.commit()
    head = ledger.store.last_position()

    print(f"1. full audit at {head:,} events")
    started = time.perf_counter()
    full = ledger.audits.run(ledger.audits.request("full", "bench")["audit_id"])
    full_seconds = time.perf_counter() - started
    rows, select_seconds = raw_select(database_url)
    print(f"  full audit            {full_seconds:6.1f} s  ({full['batches_checked']:,} batches, "
          f"{full['findings_total']:,} findings: {full['counts']})  target <= 60 s: "
          f"{'met' if full_seconds <= 60 else 'NOT met'}")
    print(f"  raw SELECT of the log {select_seconds:6.1f} s  ({rows:,} rows; audit / SELECT: "
          f"{full_seconds / select_seconds:.1f}x)")

    print("2. incremental audit after 1,000 new events")
    ledger.audits.run(ledger.audits.request("incremental", "bench")["audit_id"])
    build_more(ledger, 100)
    started = time.perf_counter()
    incremental = ledger.audits.run(ledger.audits.request("incremental", "bench")["audit_id"])
    incremental_seconds = time.perf_counter() - started
    print(f"  incremental audit     {incremental_seconds:6.2f} s  ({incremental['batches_checked']:,} batches "
          f"touched, {len(incremental['new_findings'])} new findings)  target <= 2 s: "
          f"{'met' if incremental_seconds <= 2 else 'NOT met'}")

    print(f"3. GET /v1/batches/{{id}}/diversion over HTTP, 1 client, {args.requests:,} random batches")
    with ledger.engine.connect() as conn:
        ids = [row[0] for row in conn.execute(text("SELECT batch_id FROM batches"))]
    _, key = ledger.parties.register(f"bench-auditor-{uuid.uuid4().hex[:6]}", "Auditor", "IN", "auditor")
    ledger.close()
    sample = random.Random(5).sample(ids, args.requests)
    process, base = start_server(database_url, workdir)
    try:
        timed_requests(base, key.api_key, [f"/v1/batches/{b}/diversion" for b in sample[:200]])
        verdicts = timed_requests(base, key.api_key, [f"/v1/batches/{b}/diversion" for b in sample])
        states = timed_requests(base, key.api_key, [f"/v1/batches/{b}" for b in sample])
    finally:
        process.terminate()
        process.wait(timeout=30)
    (p50, p95), (state_p50, state_p95) = percentiles(verdicts), percentiles(states)
    print(f"  diversion             p50 {p50:5.2f} ms  p95 {p95:5.2f} ms  target p95 <= 20 ms: "
          f"{'met' if p95 <= 20 else 'NOT met'}")
    print(f"  GET /v1/batches/{{id}}  p50 {state_p50:5.2f} ms  p95 {state_p95:5.2f} ms  (diversion / state at p95: "
          f"{p95 / state_p95:.2f}x)")


def build_more(ledger: Ledger, batches: int) -> None:
    maker, importer = ledger.parties.get("bench-maker"), ledger.parties.get("bench-importer")
    now = datetime.now(UTC)
    base = 10_000_000 + random.randrange(1_000_000) * 100
    stories = [story(base + i, now - timedelta(days=1)) for i in range(batches)]
    ledger.store.append(maker, [parse_event(e, now) for m, _ in stories for e in m], True)
    ledger.store.append(importer, [parse_event(e, now) for _, i in stories for e in i], True)


if __name__ == "__main__":
    main()
