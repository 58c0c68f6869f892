"""What an operator relies on (issue 6): a per-key request budget shared by every server
process, request ids in answers and in JSON logs, and shutdowns that finish the work in hand."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import redis
import requests
from rq import Queue

from tests.conftest import start_server, stop_server
from tests.helpers import registered, unique


def _log_lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def test_each_key_has_one_budget_across_processes_and_a_dead_redis_refuses_nothing(postgres_url, private_redis,
                                                                                  tmp_path):
    server = start_server(postgres_url, tmp_path / "server.log",
                          {"REDIS_URL": private_redis.url, "LEDGER_RATE_LIMIT": "5/minute"}, workers=2)
    try:
        busy, other = server.add_party("busy-co", "CN"), server.add_party("other-co", "IN")
        # A connection per request, so that both server processes take some.
        answers = [requests.get(server.url + "/v1/parties", headers={"Authorization": f"Bearer {busy}"}, timeout=10)
                   for _ in range(10)]
        assert [answer.status_code for answer in answers] == [200] * 5 + [429] * 5
        refused = answers[-1]
        assert refused.headers["Content-Type"].startswith("application/problem+json")
        assert 1 <= int(refused.headers["Retry-After"]) <= 61
        assert "request budget" in refused.json()["detail"]
        assert server.request("GET", "/v1/parties", other).status_code == 200
        assert all(server.request("GET", "/healthz").status_code == 200 for _ in range(10))

        private_redis.stop()
        fresh = server.add_party("fresh-co", "IN")
        assert server.request("GET", "/v1/parties", fresh).status_code == 200
    finally:
        stop_server(server)


def test_without_redis_each_process_keeps_the_budget_in_memory(database_url, tmp_path):
    server = start_server(database_url, tmp_path / "server.log", {"LEDGER_RATE_LIMIT": "3/minute"}, workers=1)
    try:
        key = server.add_party("busy-co", "CN")
        statuses = [server.request("GET", "/v1/parties", key).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
    finally:
        stop_server(server)


def test_answers_carry_a_request_id_that_the_json_log_names(live_server, keys):
    given = live_server.request("GET", "/v1/parties", keys["maker"], headers={"X-Request-ID": "partner-trace-42"})
    assert given.headers["X-Request-ID"] == "partner-trace-42"
    made = live_server.request("GET", "/v1/parties", keys["maker"], headers={"X-Request-ID": "bad id\twith spaces"})
    assert made.headers["X-Request-ID"] != "bad id\twith spaces" and len(made.headers["X-Request-ID"]) == 32
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = [line for line in _log_lines(live_server.log_path) if line.get("request_id") == "partner-trace-42"]
        if lines:
            break
        time.sleep(0.1)
    assert lines, "no log line names the request id"
    access = lines[-1]
    assert access["logger"] == "magledger.access" and access["status"] == 200
    assert access["party_id"] == keys["maker_id"] and access["route"] == "/v1/parties"
    assert access["level"] == "INFO" and "time" in access and access["duration_ms"] >= 0


def test_sigterm_lets_the_server_finish_requests_in_flight_then_exit_0(postgres_url, private_redis, tmp_path):
    # With Redis configured and no worker running, the projections stay behind the log, so a
    # read with min_position waits its full 5 s: long enough to stop the server under it.
    server = start_server(postgres_url, tmp_path / "server.log", {"REDIS_URL": private_redis.url}, workers=1)
    key = server.add_party("maker-co", "CN")
    batch = unique()
    receipt = server.request("POST", "/v1/events", key, json=registered(batch)).json()["receipts"][0]
    answers: list[requests.Response] = []
    slow = threading.Thread(target=lambda: answers.append(
        server.request("GET", f"/v1/batches/{batch}?min_position={receipt['position']}", key)))
    slow.start()
    time.sleep(1)
    server.process.send_signal(signal.SIGTERM)
    slow.join(timeout=30)
    assert server.process.wait(timeout=40) == 0
    assert [answer.status_code for answer in answers] == [503]
    assert "have not reached position" in answers[0].json()["detail"] and answers[0].headers["Retry-After"]
    with pytest.raises(requests.ConnectionError):
        requests.get(server.url + "/healthz", timeout=2)


def test_sigterm_lets_a_worker_finish_its_job_then_exit_0(private_redis, tmp_path):
    env = {**os.environ, "REDIS_URL": private_redis.url, "DATABASE_URL": f"sqlite:///{tmp_path}/w.db"}
    with open(tmp_path / "worker.log", "w") as log:
        worker = subprocess.Popen([sys.executable, "-m", "ledger.cli", "worker"], env=env, stdout=log,
                                  stderr=subprocess.STDOUT)
    connection = redis.Redis.from_url(private_redis.url)
    job = Queue("magledger", connection=connection).enqueue("time.sleep", 3)
    deadline = time.monotonic() + 60
    while job.get_status(refresh=True) != "started" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.get_status() == "started", (tmp_path / "worker.log").read_text()
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0, (tmp_path / "worker.log").read_text()
    assert job.get_status(refresh=True) == "finished"
