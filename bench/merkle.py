"""What tamper evidence costs, on PostgreSQL, in one run.

1. Ingest through the store, 500 events per append, with the Merkle tree kept in the append
   transaction and without it (`keep_tree=False`), alternating rounds on two databases.
2. Inclusion proofs over HTTP at --events events (default 1,000,000): p50 and p95 from one
   client, against GET /v1/events/{id} on the same server (one indexed row, the same stack).
3. `magledger verify --export` of that log, against reading and parsing the export's lines.

    python -m bench.merkle [--url postgresql://postgres@127.0.0.1:5432/postgres] [--events 1000000] [--reuse]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy import text

from bench.ingest import recreate_database, registration, start_server
from ledger.config import Settings
from ledger.events import parse_event
from ledger.services import Ledger
from ledger.store import EventStore

PER_APPEND = 500
ROUND_EVENTS = 25_000
ROUNDS = 4
LOG_DB = "magledger_merkle"
BARE_DB = "magledger_merkle_bare"


def open_ledger(database_url: str, keep_tree: bool, workdir: Path) -> Ledger:
    ledger = Ledger.open(Settings.from_env({"DATABASE_URL": database_url,
                                            "LEDGER_SIGNING_KEY": str(workdir / "bench-signing.key")}), migrate=True)
    if not keep_tree:
        ledger.store = EventStore(ledger.engine, keep_tree=False)
    return ledger


def ingest(ledger: Ledger, actor, count: int) -> float:
    now = datetime.now(UTC)
    events = [parse_event(registration(i), now) for i in range(count)]
    started = time.perf_counter()
    for start in range(0, count, PER_APPEND):
        ledger.store.append(actor, events[start:start + PER_APPEND], is_batch=True)
    return count / (time.perf_counter() - started)


def percentiles(latencies: list[float]) -> tuple[float, float]:
    ordered = sorted(latencies)
    return statistics.median(ordered) * 1000, ordered[int(len(ordered) * 0.95)] * 1000


def timed_requests(base: str, key: str, paths: list[str]) -> list[float]:
    parts = urlsplit(base)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    headers = {"Authorization": f"Bearer {key}"}
    latencies = []
    for path in paths:
        started = time.perf_counter()
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        response.read()
        latencies.append(time.perf_counter() - started)
        if response.status != 200:
            raise RuntimeError(f"{path} answered {response.status}")
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--reuse", action="store_true", help=f"skip part 1 and use the log already in {LOG_DB}")
    args = parser.parse_args()
    # Kept between runs: a --reuse run must sign with the key the log's checkpoints were made with.
    workdir = Path(tempfile.gettempdir()) / "bench-merkle"
    workdir.mkdir(exist_ok=True)
    base_url = args.url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")

    if args.reuse:
        ledger = open_ledger(f"{base_url}/{LOG_DB}", True, workdir)
        actor = ledger.parties.get("bench-maker")
    else:
        ledger = open_ledger(recreate_database(args.url, LOG_DB), True, workdir)
        bare = open_ledger(recreate_database(args.url, BARE_DB), False, workdir)
        actor, _ = ledger.parties.register("bench-maker", "Bench Maker", "CN", "partner")
        bare.parties.register("bench-maker", "Bench Maker", "CN", "partner")
        print(f"1. ingest, {PER_APPEND} events per append, {ROUNDS} alternating rounds of {ROUND_EVENTS:,} events")
        with_tree, without_tree = [], []
        for round_ in range(ROUNDS):
            # Each round runs both, in alternating order, so drift in the machine's state
            # (the WAL, the page cache, the other core) falls on both alike.
            if round_ % 2:
                without_tree.append(ingest(bare, actor, ROUND_EVENTS))
                with_tree.append(ingest(ledger, actor, ROUND_EVENTS))
            else:
                with_tree.append(ingest(ledger, actor, ROUND_EVENTS))
                without_tree.append(ingest(bare, actor, ROUND_EVENTS))
        bare.close()
        kept, bare_rate = statistics.median(with_tree), statistics.median(without_tree)
        cost = 1 - statistics.median(w / b for w, b in zip(with_tree, without_tree))
        print(f"  with the tree     {kept:>9,.0f} events/s  (rounds: {', '.join(f'{r:,.0f}' for r in with_tree)})")
        print(f"  without the tree  {bare_rate:>9,.0f} events/s  (rounds: {', '.join(f'{r:,.0f}' for r in without_tree)})")
        print(f"  with / without    {1 - cost:>9.3f}x (median of the rounds' ratios): the tree costs {cost:.1%} "
              f"(target <= 15%: {'met' if cost <= 0.15 else 'NOT met'})")

    head = ledger.store.last_position()
    if head < args.events:
        print(f"  writing {args.events - head:,} more events to reach {args.events:,}")
        ingest(ledger, actor, args.events - head)
    with ledger.engine.connect() as conn:
        conn.execute(text("ANALYZE"))  # what autovacuum would have done; it is off on this machine
        conn.commit()
    head = ledger.store.last_position()
    checkpoint = ledger.checkpoints.make()
    sample = random.Random(7).sample(range(1, head + 1), args.requests)
    event_ids = {position: ledger.store.feed(after=position - 1, limit=1)[0].event_id for position in sample}
    key = ledger.parties.issue_key("bench-maker").api_key
    core = []
    for position in sample:
        started = time.perf_counter()
        found = ledger.store.get(event_ids[position])
        ledger.checkpoints.inclusion(found.position, checkpoint.tree_size)
        core.append(time.perf_counter() - started)
    ledger.close()

    print(f"2. inclusion proofs at {head:,} events over HTTP, 1 client, {args.requests:,} random events")
    database_url = f"{base_url}/{LOG_DB}"
    process, base = start_server(database_url, workdir)
    try:
        timed_requests(base, key, [f"/v1/events/{event_ids[p]}" for p in sample[:200]])
        reads = timed_requests(base, key, [f"/v1/events/{event_ids[p]}" for p in sample])
        proofs = timed_requests(base, key, [f"/v1/ledger/proofs/inclusion?event_id={event_ids[p]}"
                                            f"&tree_size={checkpoint.tree_size}" for p in sample])
    finally:
        process.terminate()
        process.wait(timeout=30)
    (proof_p50, proof_p95), (read_p50, read_p95) = percentiles(proofs), percentiles(reads)
    print(f"  inclusion proof      p50 {proof_p50:5.2f} ms  p95 {proof_p95:5.2f} ms  "
          f"(target p95 <= 5 ms: {'met' if proof_p95 <= 5 else 'NOT met'})")
    print(f"  GET /v1/events/{{id}}  p50 {read_p50:5.2f} ms  p95 {read_p95:5.2f} ms  "
          f"(proof / event read at p95: {proof_p95 / read_p95:.2f}x)")
    core_p50, core_p95 = percentiles(core)
    print(f"  in the core (event look-up and proof, no HTTP)  p50 {core_p50:5.2f} ms  p95 {core_p95:5.2f} ms")

    print(f"3. verify an export of {head:,} events")
    env = {**os.environ, "DATABASE_URL": database_url, "LEDGER_SIGNING_KEY": str(workdir / "bench-signing.key")}
    export = workdir / "log.jsonl"
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ledger.cli", "export", "--out", str(export)], env=env, check=True,
                   stderr=subprocess.DEVNULL)
    export_seconds = time.perf_counter() - started
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "ledger.cli", "verify", "--export", str(export)], env=env,
                            capture_output=True, text=True, check=False)
    verify_seconds = time.perf_counter() - started
    outcome = json.loads(result.stdout)
    started = time.perf_counter()
    with open(export, encoding="utf-8") as lines:
        parsed = sum(1 for line in lines if json.loads(line))
    parse_seconds = time.perf_counter() - started
    print(f"  export               {export_seconds:6.1f} s")
    print(f"  verify --export      {verify_seconds:6.1f} s  ok={outcome['ok']} checked={outcome['checked']:,} "
          f"(target <= 60 s: {'met' if verify_seconds <= 60 and outcome['ok'] else 'NOT met'})")
    print(f"  read + parse only    {parse_seconds:6.1f} s  ({parsed - 1:,} events; verify / parse: "
          f"{verify_seconds / parse_seconds:.2f}x)")
    export.unlink()


if __name__ == "__main__":
    main()
