"""Soak: mixed traffic from 16 clients against the whole stack, with faults injected midway.

Starts a PostgreSQL and a Redis of its own, `magledger serve` (2 processes, started as the
tests start it), `magledger worker` and `magledger scheduler` (restarted when they exit, as a
supervisor would), and runs 10,000
requests from 16 concurrent partners: single and batched registrations, declarations,
shipments and their receipts, reads with `min_position`, the feed, provenance, findings.
A third of the way in, PostgreSQL is restarted; two thirds in, Redis is killed (SIGKILL) and
started again a few seconds later. Clients do what the API asks: on 503 they wait Retry-After
and send the same post again.

It passes when every post was acknowledged, the log holds exactly the acknowledged events
(count and ids, positions without gaps, and `magledger verify` accepts it), the projections
reach the head and equal a rebuild from scratch, and no answer was a 5xx other than 503.
Exit status 0 on pass, 1 on fail. Run from the repository root:

    python -m bench.soak [--requests 10000] [--clients 16]
"""

from __future__ import annotations

import argparse
import os
import queue
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import psycopg
import requests

from ledger.config import Settings
from ledger.services import Ledger
from tests.conftest import magledger, start_server, stop_server
from tests.services import PrivatePostgres, PrivateRedis

OCCURRED = "2026-10-02T08:00:00+08:00"
COUNTRIES = ["IN", "DE", "JP", "US", "BR", "VN", "KR", "MX"]
DOCUMENTED_5XX = {503}


def event(type_: str, batch_id: str, data: dict) -> dict:
    return {"event_id": str(uuid.uuid4()), "type": type_, "batch_id": batch_id, "occurred_at": OCCURRED,
            "data": data}


class Supervised:
    """A `magledger` process restarted whenever it exits, until stopped."""

    def __init__(self, args: list[str], env: dict, log_path: Path):
        self.args, self.env, self.log_path = args, env, log_path
        self.restarts = 0
        self.process = self._spawn()
        self._stopping = False
        self._watch = threading.Thread(target=self._watch_loop, daemon=True)
        self._watch.start()

    def _spawn(self) -> subprocess.Popen:
        with open(self.log_path, "a") as log:
            return subprocess.Popen([sys.executable, "-m", "ledger.cli", *self.args], env=self.env, stdout=log,
                                    stderr=subprocess.STDOUT)

    def _watch_loop(self) -> None:
        while not self._stopping:
            if self.process.poll() is not None and not self._stopping:
                time.sleep(1)
                self.restarts += 1
                self.process = self._spawn()
            time.sleep(0.2)

    def stop(self) -> None:
        self._stopping = True
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


class Tally:
    """What the clients saw, shared between their threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.statuses: Counter = Counter()
        self.unavailable: Counter = Counter()
        self.by_kind: Counter = Counter()
        self.unexpected: list[str] = []
        self.acknowledged: dict[str, int] = {}
        self.latencies: list[float] = []
        self.retries = 0
        self.done = 0


class Partner(threading.Thread):
    def __init__(self, index: int, base: str, keys: dict, party_ids: list[str], inboxes: list[queue.Queue],
                 tally: Tally, budget: threading.Semaphore, seed: int):
        super().__init__(daemon=True)
        self.index, self.base, self.tally, self.budget = index, base, tally, budget
        self.party_ids, self.inboxes = party_ids, inboxes
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {keys[party_ids[index]]}"
        self.regulator = requests.Session()
        self.regulator.headers["Authorization"] = f"Bearer {keys['regulator']}"
        self.random = random.Random(seed)
        self.owned: dict[str, int] = {}
        self.posted: list[str] = []
        self.last_position = 0

    def run(self) -> None:
        kinds = ["register", "register_five", "declare", "ship", "receive", "read_batch", "feed", "provenance",
                 "read_event", "findings"]
        weights = [20, 6, 8, 12, 8, 14, 10, 8, 8, 6]
        while self.budget.acquire(blocking=False):
            kind = self.random.choices(kinds, weights)[0]
            getattr(self, kind)()
            with self.tally.lock:
                self.tally.by_kind[kind] += 1
                self.tally.done += 1

    # --- requests ------------------------------------------------------------------------

    def _send(self, session: requests.Session, method: str, path: str, **kwargs) -> requests.Response | None:
        started = time.perf_counter()
        try:
            response = session.request(method, self.base + path, timeout=60, **kwargs)
        except requests.ConnectionError:
            with self.tally.lock:
                self.tally.statuses["connection error"] += 1
            return None
        with self.tally.lock:
            self.tally.statuses[response.status_code] += 1
            if response.status_code == 503:
                self.tally.unavailable[method] += 1
            self.tally.latencies.append(time.perf_counter() - started)
            if response.status_code >= 500 and response.status_code not in DOCUMENTED_5XX:
                self.tally.unexpected.append(f"{method} {path}: {response.status_code} {response.text[:300]}")
            elif response.status_code == 503 and "Retry-After" not in response.headers:
                self.tally.unexpected.append(f"{method} {path}: 503 without Retry-After")
        return response

    def _post(self, events: list[dict]) -> bool:
        """Post until acknowledged, retrying the same events on 503 or a broken connection."""
        body = events[0] if len(events) == 1 else {"events": events}
        for _attempt in range(200):
            response = self._send(self.session, "POST", "/v1/events", json=body)
            if response is not None and response.status_code in (200, 201):
                receipts = response.json()["receipts"]
                with self.tally.lock:
                    for receipt in receipts:
                        self.tally.acknowledged[receipt["event_id"]] = receipt["position"]
                self.last_position = max(self.last_position, receipts[-1]["position"])
                self.posted.extend(receipt["event_id"] for receipt in receipts)
                return True
            if response is not None and response.status_code != 503:
                with self.tally.lock:
                    self.tally.unexpected.append(f"POST {events[0]['type']}: {response.status_code} {response.text}")
                return False
            with self.tally.lock:
                self.tally.retries += 1
            time.sleep(min(int(response.headers.get("Retry-After", 1)), 2) if response is not None else 0.5)
        with self.tally.lock:
            self.tally.unexpected.append(f"POST {events[0]['event_id']} never acknowledged")
        return False

    def _read(self, session: requests.Session, path: str) -> requests.Response | None:
        response = self._send(session, "GET", path)
        if response is not None and response.status_code not in (200, 503):
            with self.tally.lock:
                self.tally.unexpected.append(f"GET {path}: {response.status_code} {response.text[:300]}")
        return response

    def _some_batch(self) -> str | None:
        return self.random.choice(list(self.owned)) if self.owned else None

    def register(self) -> None:
        batch = f"S{self.index}-{uuid.uuid4().hex[:10]}"
        if self._post([event("batch.registered", batch, {"material": "NdFeB N52", "mass_kg": "1000",
                                                          "origin_country": "CN"})]):
            self.owned[batch] = 1000

    def register_five(self) -> None:
        batches = [f"S{self.index}-{uuid.uuid4().hex[:10]}" for _ in range(5)]
        if self._post([event("batch.registered", batch, {"material": "NdFeB N48", "mass_kg": "500",
                                                          "origin_country": "CN"}) for batch in batches]):
            self.owned.update(dict.fromkeys(batches, 500))

    def declare(self) -> None:
        batch = self._some_batch()
        if batch is None:
            return self.register()
        self._post([event("enduse.declared", batch, {"licence_id": f"LIC-{self.index}",
                                                     "permitted_countries": self.random.sample(COUNTRIES, 2),
                                                     "end_use": "domestic motors"})])

    def ship(self) -> None:
        batch = self._some_batch()
        if batch is None or self.owned[batch] < 10:
            return self.register()
        to = (self.index + 1 + self.random.randrange(len(self.party_ids) - 2)) % (len(self.party_ids) - 1)
        ref = f"SH-{uuid.uuid4().hex[:10]}"
        if self._post([event("custody.shipped", batch, {"shipment_ref": ref, "to_party": self.party_ids[to],
                                                        "mass_kg": "10"})]):
            self.owned[batch] -= 10
            self.inboxes[to].put((batch, ref))

    def receive(self) -> None:
        try:
            batch, ref = self.inboxes[self.index].get_nowait()
        except queue.Empty:
            return self.read_batch()
        self._post([event("custody.received", batch, {"shipment_ref": ref, "mass_kg": "10"})])

    def read_batch(self) -> None:
        batch = self._some_batch()
        if batch is not None:
            self._read(self.session, f"/v1/batches/{batch}?min_position={self.last_position}")

    def feed(self) -> None:
        self._read(self.session, "/v1/events?limit=50")

    def provenance(self) -> None:
        batch = self._some_batch()
        if batch is not None:
            self._read(self.session, f"/v1/batches/{batch}/provenance?min_position={self.last_position}")

    def read_event(self) -> None:
        if self.posted:
            self._read(self.session, f"/v1/events/{self.random.choice(self.posted)}")

    def findings(self) -> None:
        self._read(self.regulator, "/v1/findings?limit=50")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    for missing in (PrivatePostgres.missing(), PrivateRedis.missing()):
        if missing:
            print(f"cannot run: {missing}")
            return 2

    workdir = Path(tempfile.mkdtemp(prefix="magledger-soak-"))
    postgres, redis_server = PrivatePostgres(), PrivateRedis(workdir)
    postgres.start()
    try:
        redis_server.start()
        return soak(args, workdir, postgres, redis_server)
    finally:
        redis_server.stop()
        postgres.destroy()


def soak(args, workdir: Path, postgres: PrivatePostgres, redis_server: PrivateRedis) -> int:
    database_url = postgres.create_database("soak")
    server = start_server(database_url, workdir / "server.log", {"REDIS_URL": redis_server.url})
    env = {**os.environ, **server.env}
    worker = Supervised(["worker"], env, workdir / "worker.log")
    scheduler = Supervised(["scheduler"], env, workdir / "scheduler.log")
    print(f"soak: {args.requests} requests from {args.clients} clients; logs in {workdir}")
    try:
        party_ids = [f"partner-{i:02d}" for i in range(args.clients)] + ["regulator"]
        keys = {}
        for i, party_id in enumerate(party_ids):
            role = "regulator" if party_id == "regulator" else "partner"
            country = "CN" if role == "regulator" else ["CN", *COUNTRIES][i % (len(COUNTRIES) + 1)]
            keys[party_id] = server.add_party(party_id, country, role)
        inboxes = [queue.Queue() for _ in party_ids]
        tally = Tally()
        budget = threading.Semaphore(args.requests)
        clients = [Partner(i, server.url, keys, party_ids, inboxes, tally, budget, args.seed + i)
                   for i in range(args.clients)]
        started = time.monotonic()
        for client in clients:
            client.start()

        faults = []
        while tally.done < args.requests // 3:
            time.sleep(0.05)
        faults.append(f"PostgreSQL restarted (fast) after {tally.done} requests")
        postgres.stop("fast")
        time.sleep(3)
        postgres.start()
        while tally.done < 2 * args.requests // 3:
            time.sleep(0.05)
        faults.append(f"Redis killed (SIGKILL) after {tally.done} requests, restarted 5 s later")
        redis_server.stop()
        time.sleep(5)
        redis_server.start()
        for client in clients:
            client.join()
        elapsed = time.monotonic() - started

        converge_started = time.monotonic()
        settings = Settings.from_env({"DATABASE_URL": database_url, "LEDGER_SIGNING_KEY": env["LEDGER_SIGNING_KEY"]})
        ledger = Ledger.open(settings)
        head = ledger.store.last_position()
        converged = ledger.projections.wait_for(head, timeout=300)
        converge_seconds = time.monotonic() - converge_started
        serving = {name: ledger.projections.digest(name) for name in ledger.projections.projections}
        ledger.projections.rebuild()
        rebuilt = {name: ledger.projections.digest(name) for name in ledger.projections.projections}
        ledger.close()

        with psycopg.connect(database_url.replace("postgresql+psycopg", "postgresql")) as conn:
            rows = conn.execute("SELECT position, event_id::text FROM events ORDER BY position").fetchall()
        logged = {event_id: position for position, event_id in rows}
        gap_free = [position for position, _ in rows] == list(range(1, len(rows) + 1))
        magledger("checkpoint", env=server.env)
        verified = magledger("verify", env=server.env, check=False, timeout=600)

        latencies = sorted(tally.latencies)
        checks = {
            "no 5xx other than 503, every 503 with Retry-After": not [u for u in tally.unexpected if ": 5" in u],
            "no unexpected answer": not tally.unexpected,
            "log holds exactly the acknowledged events": logged == tally.acknowledged,
            "positions 1..N without gaps": gap_free,
            "magledger verify accepts the log": verified.returncode == 0,
            "projections reached the head": converged,
            "projections equal a rebuild from scratch": serving == rebuilt,
        }
        print(f"faults: {'; '.join(faults)}")
        print(f"requests: {tally.done} in {elapsed:.1f} s ({tally.done / elapsed:.0f}/s), "
              f"retried posts {tally.retries}, p50 {statistics.median(latencies) * 1000:.1f} ms, "
              f"p95 {latencies[int(len(latencies) * 0.95)] * 1000:.1f} ms")
        print(f"by kind: {dict(sorted(tally.by_kind.items()))}")
        print(f"answers: {dict(sorted(tally.statuses.items(), key=str))}; 503 by method: {dict(tally.unavailable)}")
        print(f"log: {len(rows)} events, acknowledged {len(tally.acknowledged)}; "
              f"projections converged {converge_seconds:.1f} s after the last request; "
              f"worker restarts {worker.restarts}, scheduler restarts {scheduler.restarts}")
        for check, ok in checks.items():
            print(f"  {'PASS' if ok else 'FAIL'}  {check}")
        for line in tally.unexpected[:20]:
            print(f"  unexpected: {line}")
        if verified.returncode != 0:
            print(verified.stdout + verified.stderr)
        return 0 if all(checks.values()) else 1
    finally:
        worker.stop()
        scheduler.stop()
        stop_server(server)


if __name__ == "__main__":
    sys.exit(main())
