"""Faults an operator will meet (issue 6): PostgreSQL restarted under load, a database that
refuses writes. The ledger answers a clean 503 with Retry-After meanwhile, never a 500, and
afterwards holds each acknowledged event exactly once, in a log that still verifies."""

from __future__ import annotations

import threading
import time
from collections import Counter

import psycopg
import requests

from tests.conftest import POSTGRES_ADMIN, magledger, start_server, stop_server
from tests.helpers import registered, unique

CLIENTS = 6
EVENTS_PER_CLIENT = 40


class Client:
    """A partner's integration that does what a 503 asks: wait Retry-After, post the same
    event again."""

    def __init__(self, base_url: str, key: str):
        self.base_url = base_url
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {key}"
        self.statuses: Counter = Counter()
        self.acknowledged: dict[str, int] = {}
        self.surprises: list[str] = []

    def post_until_acknowledged(self, event: dict, deadline: float) -> None:
        while time.monotonic() < deadline:
            try:
                response = self.session.post(self.base_url + "/v1/events", json=event, timeout=30)
            except requests.ConnectionError:
                self.statuses["connection error"] += 1
                time.sleep(0.2)
                continue
            self.statuses[response.status_code] += 1
            if response.status_code in (200, 201):
                self.acknowledged[event["event_id"]] = response.json()["receipts"][0]["position"]
                return
            if response.status_code == 503 and "Retry-After" in response.headers \
                    and response.headers["Content-Type"].startswith("application/problem+json"):
                time.sleep(min(int(response.headers["Retry-After"]), 1))
                continue
            self.surprises.append(f"{response.status_code} {response.headers} {response.text}")
            return
        self.surprises.append(f"not acknowledged before the deadline: {event['event_id']}")


def test_a_postgresql_restart_while_posts_flow_loses_no_acknowledged_event_and_duplicates_none(
        private_postgres, tmp_path):
    database_url = private_postgres.create_database("ledger")
    server = start_server(database_url, tmp_path / "server.log")
    try:
        key = server.add_party("maker-co", "CN")
        clients = [Client(server.url, key) for _ in range(CLIENTS)]
        events = [[registered(unique()) for _ in range(EVENTS_PER_CLIENT)] for _ in clients]
        deadline = time.monotonic() + 120

        def run(client: Client, mine: list[dict]) -> None:
            for event in mine:
                client.post_until_acknowledged(event, deadline)

        threads = [threading.Thread(target=run, args=pair) for pair in zip(clients, events, strict=True)]
        for thread in threads:
            thread.start()
        while sum(len(client.acknowledged) for client in clients) < CLIENTS * EVENTS_PER_CLIENT // 3:
            time.sleep(0.05)
        private_postgres.stop("fast")
        time.sleep(1.5)
        assert requests.get(server.url + "/readyz", timeout=10).status_code == 503
        assert requests.get(server.url + "/healthz", timeout=10).status_code == 200
        private_postgres.start()
        for thread in threads:
            thread.join(timeout=150)

        statuses = sum((client.statuses for client in clients), Counter())
        assert [surprise for client in clients for surprise in client.surprises] == []
        assert statuses[503] > 0, f"the restart was not felt by any client: {statuses}"
        assert set(statuses) <= {200, 201, 503, "connection error"}, statuses
        sent = {event["event_id"] for mine in events for event in mine}
        acknowledged = {event_id: position for client in clients for event_id, position in client.acknowledged.items()}
        assert set(acknowledged) == sent

        with psycopg.connect(database_url.replace("postgresql+psycopg", "postgresql")) as conn:
            rows = conn.execute("SELECT position, event_id::text FROM events ORDER BY position").fetchall()
        assert [position for position, _ in rows] == list(range(1, len(rows) + 1))
        assert sorted(event_id for _, event_id in rows) == sorted(sent)
        assert {event_id: position for position, event_id in rows} == acknowledged
        magledger("checkpoint", env=server.env)
        verified = magledger("verify", env=server.env, check=False, timeout=120)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert "Traceback" not in (tmp_path / "server.log").read_text()
    finally:
        stop_server(server)


def _terminate_sessions(admin: psycopg.Connection, database: str) -> None:
    admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> "
                  "pg_backend_pid()", (database,))


def _post_after_reconnect(server, key: str, event: dict, workers: int = 2) -> requests.Response:
    """After sessions were cut, each server process may meet a dead pooled connection once
    for the key check and once for the append (a 503 each, and the server reconnects); the
    answer after those shows how the database itself answers."""
    for _ in range(2 * workers):
        response = server.request("POST", "/v1/events", key, json=event)
        if response.status_code != 503:
            return response
    return server.request("POST", "/v1/events", key, json=event)


def test_a_read_only_database_answers_posts_with_503_and_reads_still_work(postgres_url, tmp_path):
    database = postgres_url.rsplit("/", 1)[1]
    server = start_server(postgres_url, tmp_path / "server.log")
    admin = psycopg.connect(POSTGRES_ADMIN, autocommit=True)
    try:
        key = server.add_party("maker-co", "CN")
        first = registered(unique())
        assert server.request("POST", "/v1/events", key, json=first).status_code == 201

        admin.execute(f"ALTER DATABASE {database} SET default_transaction_read_only = on")
        _terminate_sessions(admin, database)
        refused = _post_after_reconnect(server, key, registered(unique()))
        assert refused.status_code == 503, refused.text
        assert refused.headers["Retry-After"]
        assert refused.headers["Content-Type"].startswith("application/problem+json")
        read = server.request("GET", f"/v1/events/{first['event_id']}", key)
        assert read.status_code == 200, read.text

        admin.execute(f"ALTER DATABASE {database} RESET default_transaction_read_only")
        _terminate_sessions(admin, database)
        again = _post_after_reconnect(server, key, registered(unique()))
        assert again.status_code == 201, again.text
        assert again.json()["receipts"][0]["position"] == 2
        assert "Traceback" not in (tmp_path / "server.log").read_text()
    finally:
        admin.execute(f"ALTER DATABASE {database} RESET default_transaction_read_only")
        admin.close()
        stop_server(server)


def test_after_its_sessions_are_cut_the_store_answers_503_once_then_writes(postgres_url, clock):
    """A lost connection on the append path replaces the write pool's other connections too:
    they were cut with it, and each would otherwise cost a post its own 503."""
    from ledger.errors import Unavailable
    from ledger.services import Ledger
    from tests.conftest import settings_for
    from tests.helpers import parties, post

    database = postgres_url.rsplit("/", 1)[1]
    opened = Ledger.open(settings_for(postgres_url), clock=clock)
    admin = psycopg.connect(POSTGRES_ADMIN, autocommit=True)
    try:
        maker = parties(opened)["maker"]
        post(opened, maker, registered(unique()))
        held = [opened.engine.connect() for _ in range(3)]  # the pool keeps several connections
        for conn in held:
            conn.close()
        _terminate_sessions(admin, database)
        outcomes = []
        for _ in range(3):
            try:
                post(opened, maker, registered(unique()))
                outcomes.append("written")
            except Unavailable:
                outcomes.append("503")
        assert outcomes == ["503", "written", "written"]
    finally:
        admin.close()
        opened.close()
