"""Latency of GET /v1/batches/{id}/provenance over HTTP on PostgreSQL.

Builds 100,000 batches in chains ten levels deep (a registered lot, then nine
transformations, each output held by the same party), brings the projections up, starts
`magledger serve`, and asks for the provenance of random batches from 8 concurrent clients,
printing p50 and p95 in the same run. Run:

    python -m bench.read [--url postgresql://postgres@127.0.0.1:5432/postgres] [--batches 100000]
"""

from __future__ import annotations

import argparse
import http.client
import random
import statistics
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy import text

from bench.ingest import recreate_database, start_server
from bench.reference import run_concurrently
from ledger.config import Settings
from ledger.events import parse_event
from ledger.services import Ledger

DEPTH = 10


def chain(index: int) -> list[dict]:
    """A registered lot and nine products, each made from the one before."""
    tag = uuid.uuid4().hex[:10]
    ids = [f"C{index}-{tag}-{level}" for level in range(DEPTH)]

    def event(type_, batch_id, data):
        return {"event_id": str(uuid.uuid4()), "type": type_, "batch_id": batch_id,
                "occurred_at": "2026-10-02T08:00:00+08:00", "data": data}

    events = [event("batch.registered", ids[0], {"material": "NdFeB", "mass_kg": "100", "origin_country": "CN"}),
              event("enduse.declared", ids[0], {"licence_id": f"L-{index}", "permitted_countries": ["IN"],
                                                "end_use": "motors"})]
    for level in range(1, DEPTH):
        events.append(event("batch.transformed", ids[level], {
            "inputs": [{"batch_id": ids[level - 1], "mass_kg": "1"}], "product": f"assembly level {level}",
            "mass_kg": "10"}))
    return events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--batches", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--reuse", action="store_true", help="query the batches already in magledger_read")
    args = parser.parse_args()
    if args.reuse:
        database_url = args.url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + "/magledger_read"
    else:
        database_url = recreate_database(args.url, "magledger_read")
    ledger = Ledger.open(Settings.from_env({"DATABASE_URL": database_url}), migrate=True)
    if args.reuse:
        key = ledger.parties.issue_key("bench-maker")
    else:
        maker, key = ledger.parties.register("bench-maker", "Bench Maker", "CN", "partner")
        now = datetime.now(UTC)
        chains = args.batches // DEPTH
        print(f"writing {chains:,} chains of {DEPTH} batches")
        for first in range(0, chains, 40):
            events = [e for i in range(first, min(first + 40, chains)) for e in chain(i)]
            ledger.store.append(maker, [parse_event(e, now) for e in events], is_batch=True)
    ledger.projections.catch_up()
    with ledger.engine.connect() as conn:
        # What autovacuum would have done by now; it is off on this machine's PostgreSQL.
        conn.execute(text("ANALYZE"))
        conn.commit()
        ids = [row[0] for row in conn.execute(text("SELECT batch_id FROM pj_batches"))]
    ledger.close()
    print(f"{len(ids):,} batches projected; querying provenance of random ones over HTTP, 8 clients")
    process, base = start_server(database_url, Path.cwd())
    parts = urlsplit(base)
    latencies: list[float] = []
    try:
        def client(count: int):
            connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
            headers = {"Authorization": f"Bearer {key.api_key}"}
            for _ in range(count):
                batch_id = random.choice(ids)
                started = time.perf_counter()
                connection.request("GET", f"/v1/batches/{batch_id}/provenance", headers=headers)
                response = connection.getresponse()
                response.read()
                latencies.append(time.perf_counter() - started)
                if response.status != 200:
                    raise RuntimeError(f"provenance answered {response.status}")

        client(200)
        latencies.clear()
        client(args.requests // 4)
        report("1 client", latencies)
        latencies.clear()
        run_concurrently([lambda: client(args.requests // 8)] * 8)
    finally:
        process.terminate()
        process.wait(timeout=30)
    report("8 concurrent clients", latencies)


def report(label: str, latencies: list[float]) -> None:
    latencies = sorted(latencies)
    p50 = statistics.median(latencies) * 1000
    p95 = latencies[int(len(latencies) * 0.95)] * 1000
    print(f"  provenance, {label}: p50 {p50:.1f} ms, p95 {p95:.1f} ms over {len(latencies):,} requests"
          f"  (target p95 <= 20 ms: {'met' if p95 <= 20 else 'NOT met'})")


if __name__ == "__main__":
    main()
