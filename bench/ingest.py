"""Ingest throughput of magledger on PostgreSQL, against the references, in one run.

(a) the store's API, one event per append call, 8 threads
(b) the store's API, 500 events per append call
(c) the eventsourcing library 9.5: its Application (the path a Python team would write)
    and its bare recorder, 1 event per transaction with 8 threads and 500 per transaction
(d) raw psycopg: INSERT + COMMIT per event with 8 threads, and COPY (the machine's limit)
(e) over HTTP against `magledger serve`: one event per request from 8 concurrent clients,
    and 500-event requests from 8 concurrent clients

The references run again after (e), and (e)'s ratios are to their mean before and after it:
(e) comes minutes after them, and this machine's speed drifts by up to 2x in minutes.

Events for (a) and (b) are validated before the clock starts, as the references build their
stored events before theirs; validation's own rate is printed too. Every clock starts on a
settled heap (`reference.settle_heap`), so that no scenario pays the cycle collector for
objects an earlier one left alive. Run:

    python -m bench.ingest [--url postgresql://postgres@127.0.0.1:5432/postgres] [--events 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import psycopg

from bench import reference
from ledger.config import Settings
from ledger.events import NewEvent, parse_event
from ledger.services import Ledger

BENCH_DB = "magledger_bench"
REFERENCE_DB = "magledger_bench_reference"


def registration(index: int) -> dict:
    """A batch registration of about 300 bytes as stored, like the references' payloads."""
    return {
        "event_id": str(uuid.uuid4()), "type": "batch.registered", "batch_id": f"CN-BTM-{uuid.uuid4().hex}",
        "occurred_at": "2026-10-02T08:00:00+08:00",
        "data": {"material": "sintered NdFeB N52, grain-boundary diffused Dy", "mass_kg": f"{125 + index % 1000 / 8}",
                 "origin_country": "CN", "hs_code": "8505.11", "units": 4000,
                 "composition": {"Nd": "29.5", "Dy": "4.2", "Fe": "65.3", "B": "1"}},
    }


def recreate_database(admin_url: str, name: str) -> str:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    parts = urlsplit(admin_url)
    return f"postgresql+psycopg://{parts.netloc}/{name}"


def store_one_per_call(ledger: Ledger, actor, events: list[NewEvent], threads: int = 8) -> float:
    shares = [events[i::threads] for i in range(threads)]
    elapsed = reference.run_concurrently([lambda share=share: [ledger.store.append(actor, [e]) for e in share] for share in shares])
    return len(events) / elapsed


def store_per_call(ledger: Ledger, actor, events: list[NewEvent], size: int = 500) -> float:
    reference.settle_heap()
    started = time.perf_counter()
    for start in range(0, len(events), size):
        ledger.store.append(actor, events[start:start + size], is_batch=True)
    return len(events) / (time.perf_counter() - started)


class KeepAlive:
    """One HTTP/1.1 keep-alive connection that sends a request whole and reads its answer to
    the end by Content-Length (what the server sends), opening a new connection after an
    answer that says `Connection: close`.

    The load generator shares the machine's two cores with the server and PostgreSQL, so it
    should take as little of them as it can: `http.client` took 313-368 µs of CPU a one-event
    post, this 118-121 (measured against the same server)."""

    def __init__(self, host: str, port: int):
        self.address = (host, port)
        self.sock: socket.socket | None = None
        self.pending = b""

    def exchange(self, request: bytes) -> tuple[int, bytes]:
        if self.sock is None:
            self.sock = socket.create_connection(self.address, timeout=120)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.pending = b""
        self.sock.sendall(request)
        received = self.pending
        while (end := received.find(b"\r\n\r\n")) < 0:
            received += self._read()
        status_line, *lines = received[:end].decode("latin-1").split("\r\n")
        headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
        if "transfer-encoding" in headers:
            raise RuntimeError("answers sent in chunks are not read here")
        total = end + 4 + int(headers.get("content-length", 0))
        while len(received) < total:
            received += self._read()
        body, self.pending = received[end + 4:total], received[total:]
        if headers.get("connection", "").lower() == "close":
            self.close()
        return int(status_line.split(" ", 2)[1]), body

    def _read(self) -> bytes:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection inside an answer")
        return chunk

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def http_clients(base_url: str, key: str, bodies: list[bytes], events_per_body: int, clients: int = 8,
                 method: str = "POST", path: str = "/v1/events", status: int = 201) -> float:
    """Items per second from `clients` keep-alive connections sending `bodies` between them."""
    parts = urlsplit(base_url)
    head = (f"{method} {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\n")
    shares = [[(head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body for body in bodies[i::clients]]
              for i in range(clients)]

    def client(requests: list[bytes]):
        connection = KeepAlive(parts.hostname, parts.port)
        for request in requests:
            answered, body = connection.exchange(request)
            if answered != status:
                raise RuntimeError(f"{method} {path} answered {answered}: {body[:300]!r}")
        connection.close()

    elapsed = reference.run_concurrently([lambda requests=requests: client(requests) for requests in shares])
    return len(bodies) * events_per_body / elapsed


def start_server(database_url: str, workdir: Path, workers: int = 2,
                 redis_url: str | None = None) -> tuple[subprocess.Popen, str]:
    port = 18000 + os.getpid() % 1000
    # Benchmarks measure the ledger, not the per-key budget that production keeps.
    env = {**os.environ, "DATABASE_URL": database_url, "LEDGER_SIGNING_KEY": str(workdir / "bench-signing.key"),
           "LEDGER_RATE_LIMIT": "off"}
    if redis_url:
        env["REDIS_URL"] = redis_url
    log = open(workdir / "bench-server.log", "w")  # noqa: SIM115 - the server keeps it for its lifetime
    process = subprocess.Popen([sys.executable, "-m", "ledger.cli", "serve", "--port", str(port), "--workers", str(workers)],
                               env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            connection.request("GET", "/healthz")
            if connection.getresponse().status == 200:
                return process, url
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("the server did not start; see bench-server.log")


def processes_cpu(chosen: Callable[[str, int], bool]) -> dict[int, float]:
    """CPU seconds used so far (Linux) by each process that `chosen(name, parent_pid)` picks."""
    used = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text.rpartition(")")[2].split()
        if chosen(text[text.find("(") + 1:text.rfind(")")], int(fields[1])):
            used[int(stat.parent.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return used


def workers_cpu(server: subprocess.Popen) -> dict[int, float]:
    """CPU seconds each of the server's worker processes has used so far, to show how the
    clients' connections fell between them: a worker holding most of them is bound by its
    own interpreter lock while the other idles."""
    return processes_cpu(lambda _name, parent: parent == server.pid)


def print_split(before: dict[int, float], after: dict[int, float]) -> None:
    split = [after[pid] - before.get(pid, 0.0) for pid in sorted(after)]
    if split:
        print("    CPU seconds by server worker: " + ", ".join(f"{seconds:.1f}" for seconds in split), flush=True)


def print_server_errors(log: Path) -> None:
    """The server's error lines (with their tracebacks), so that a failed request leaves its
    cause in the benchmark's own output, not only in a log the next run overwrites."""
    lines = [line for line in log.read_text(errors="replace").splitlines() if '"level": "ERROR"' in line]
    print(f"the server logged {len(lines)} error(s) in {log}" + (", the first:" if lines else ""), file=sys.stderr)
    for line in lines[:3]:
        print(line, file=sys.stderr)


REFERENCES = ("(c) eventsourcing Application, 1 per txn, 8 threads", "(c) eventsourcing Application, 500 per txn, 1 thread",
              "(c) eventsourcing recorder, 1 per txn, 8 threads", "(c) eventsourcing recorder, 500 per txn, 1 thread")
AFTER_E, AROUND_E = ", after (e)", ", mean around (e)"
"""(e) runs minutes after the references, and this machine's speed drifts by up to 2x in
minutes: its ratios are to the mean of the references measured before and after it."""

TARGETS = [
    # (label, ours, reference, target)
    ("(a) / Application 1 per txn", "(a) store, 1 event per append, 8 threads",
     "(c) eventsourcing Application, 1 per txn, 8 threads", 2),
    ("(a) / recorder 1 per txn", "(a) store, 1 event per append, 8 threads",
     "(c) eventsourcing recorder, 1 per txn, 8 threads", 2),
    ("(b) / Application 500 per txn", "(b) store, 500 events per append, 1 thread",
     "(c) eventsourcing Application, 500 per txn, 1 thread", 3),
    ("(b) / recorder 500 per txn", "(b) store, 500 events per append, 1 thread",
     "(c) eventsourcing recorder, 500 per txn, 1 thread", 3),
    ("(e) 1 per request / Application 1 per txn", "(e) HTTP, 1 event per request, 8 clients",
     "(c) eventsourcing Application, 1 per txn, 8 threads" + AROUND_E, 1),
    ("(e) 1 per request / recorder 1 per txn", "(e) HTTP, 1 event per request, 8 clients",
     "(c) eventsourcing recorder, 1 per txn, 8 threads" + AROUND_E, 1),
    ("(e) 500 per request / Application 500 per txn", "(e) HTTP, 500 events per request, 8 clients",
     "(c) eventsourcing Application, 500 per txn, 1 thread" + AROUND_E, 1),
    ("(e) 500 per request / recorder 500 per txn", "(e) HTTP, 500 events per request, 8 clients",
     "(c) eventsourcing recorder, 500 per txn, 1 thread" + AROUND_E, 1),
    ("(a) / raw INSERT + COMMIT", "(a) store, 1 event per append, 8 threads", "(d) raw INSERT + COMMIT, 8 threads",
     None),
    ("(b) / raw COPY", "(b) store, 500 events per append, 1 thread", "(d) raw COPY, one transaction", None),
]
"""Each ratio the issue sets a target for, from figures measured in the same round."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="an admin connection; the benchmark creates its own databases")
    parser.add_argument("--events", type=int, default=20_000, help="events per scenario")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/14",
                        help="REDIS_URL for the server in (e), so that projections are not caught up in "
                             "the request (the production setting); empty for the embedded mode")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every scenario this many times, one round after another, and give the "
                             "verdicts on the median of the rounds' ratios: this machine's speed drifts by "
                             "up to 2x within minutes, so one round's ratios can land far from the rest")
    args = parser.parse_args()
    print(f"magledger ingest benchmark, {args.events:,} events per scenario, "
          f"PostgreSQL at {urlsplit(args.url).netloc}")
    rounds = []
    for number in range(1, args.rounds + 1):
        if args.rounds > 1:
            print(f"round {number} of {args.rounds}", flush=True)
        rounds.append(measure(args))
        print_ratios(rounds[-1])
    if args.rounds > 1:
        print(f"median of {args.rounds} rounds' ratios (each round's in brackets)")
        for label, ours, reference_label, target in TARGETS:
            ratios = [figures[ours] / figures[reference_label] for figures in rounds]
            median = statistics.median(ratios)
            print(f"  {label:<50} {median:6.2f}x  {_verdict(median, target):<16} "
                  f"({', '.join(f'{ratio:.2f}' for ratio in ratios)})")


def print_ratios(figures: dict[str, float]) -> None:
    print("ratios (target in brackets)")
    for label, ours, reference_label, target in TARGETS:
        value = figures[ours] / figures[reference_label]
        print(f"  {label:<50} {value:6.2f}x  {_verdict(value, target)}")


def _verdict(value: float, target: float | None) -> str:
    return "" if target is None else f"[>= {target}x] " + ("met" if value >= target else "NOT met")


def references(url: str, n: int, record: Callable[[str, float], None], suffix: str = "") -> None:
    application_1, application_500, recorder_1, recorder_500 = (label + suffix for label in REFERENCES)
    record(application_1, reference.eventsourcing_application(url, n, threads=8, per_txn=1))
    record(application_500, reference.eventsourcing_application(url, n, threads=1, per_txn=500))
    record(recorder_1, reference.eventsourcing_recorder(url, n, threads=8, per_txn=1))
    record(recorder_500, reference.eventsourcing_recorder(url, n, threads=1, per_txn=500))


def measure(args) -> dict[str, float]:
    """One round of every scenario, on databases created for it; returns events/s by label."""
    n = args.events
    workdir = Path.cwd()
    figures: dict[str, float] = {}

    def record(label: str, value: float) -> None:
        figures[label] = value
        print(f"  {label:<66} {value:>10,.0f} events/s", flush=True)

    database_url = recreate_database(args.url, BENCH_DB)
    ledger = Ledger.open(Settings.from_env({"DATABASE_URL": database_url}), migrate=True)
    actor, _key = ledger.parties.register("bench-maker", "Bench Maker", "CN", "partner")
    now = datetime.now(UTC)

    raw = [registration(i) for i in range(n)]
    started = time.perf_counter()
    one = [parse_event(r, now) for r in raw]
    record("validation (parse_event, one thread)", n / (time.perf_counter() - started))
    print("(a) and (b): the store's API")
    record("(a) store, 1 event per append, 8 threads", store_one_per_call(ledger, actor, one))
    record("(b) store, 500 events per append, 1 thread",
           store_per_call(ledger, actor, [parse_event(registration(i), now) for i in range(n)]))
    ledger.close()

    print("(c) eventsourcing 9.5 (reference)")
    reference_url = recreate_database(args.url, REFERENCE_DB)
    references(reference_url, n, record)
    print("(d) raw psycopg (the machine's limit)")
    record("(d) raw INSERT + COMMIT, 8 threads", reference.raw_insert_commit(reference_url, n, threads=8))
    record("(d) raw COPY, one transaction", reference.raw_copy(reference_url, n))

    print("(e) over HTTP, `magledger serve` with 2 workers x 8 threads, projections left to RQ workers")
    http_url = recreate_database(args.url, BENCH_DB)
    ledger = Ledger.open(Settings.from_env({"DATABASE_URL": http_url}), migrate=True)
    _actor, key = ledger.parties.register("bench-maker", "Bench Maker", "CN", "partner")
    ledger.close()
    process, base = start_server(http_url, workdir, redis_url=args.redis or None)
    try:
        singles = [json.dumps(registration(i)).encode() for i in range(n)]
        before = workers_cpu(process)
        record("(e) HTTP, 1 event per request, 8 clients", http_clients(base, key.api_key, singles, 1))
        print_split(before, workers_cpu(process))
        batches = [json.dumps({"events": [registration(i * 500 + j) for j in range(500)]}).encode()
                   for i in range(max(n // 500, 8))]
        before = workers_cpu(process)
        record("(e) HTTP, 500 events per request, 8 clients", http_clients(base, key.api_key, batches, 500))
        print_split(before, workers_cpu(process))
        print("(e) the HTTP stack's own ceiling on this machine, for context (requests/s)")
        record("GET /healthz (no database), 8 clients",
               http_clients(base, key.api_key, [b""] * n, 1, method="GET", path="/healthz", status=200))
        record("GET /v1/parties/{id} (key check + one query), 8 clients",
               http_clients(base, key.api_key, [b""] * n, 1, method="GET", path="/v1/parties/bench-maker",
                            status=200))
    except RuntimeError:
        print_server_errors(workdir / "bench-server.log")
        raise
    finally:
        process.terminate()
        process.wait(timeout=30)

    print("(c) the references again, so that (e) is compared with their mean before and after it")
    references(reference_url, n, record, AFTER_E)
    for label in REFERENCES:
        figures[label + AROUND_E] = (figures[label] + figures[label + AFTER_E]) / 2
    return figures


if __name__ == "__main__":
    main()
