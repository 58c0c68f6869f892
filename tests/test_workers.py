"""Projections kept by real RQ workers against a real Redis, and what survives a dead Redis
or a worker killed with SIGKILL (SPEC 6)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import redis
from rq import Queue
from rq.job import Job

from ledger.config import ConfigError
from ledger.services import Ledger
from tests.conftest import magledger, settings_for, start_server, stop_server
from tests.helpers import declared, parties, post, registered, shipped, unique
from workers.runner import QUEUE_NAME, CatchUpNotifier


def start_worker(env: dict, log_path) -> subprocess.Popen:
    with open(log_path, "a") as log:
        return subprocess.Popen([sys.executable, "-m", "ledger.cli", "worker"], env={**os.environ, **env},
                                stdout=log, stderr=subprocess.STDOUT)


def read_once_caught_up(server, path: str, key: str, timeout: float = 90):
    """Read as a partner does: a 503 carries Retry-After, so ask again until the worker,
    which may still be starting on a loaded CI machine, has caught up."""
    deadline = time.monotonic() + timeout
    while True:
        answer = server.request("GET", path, key)
        if answer.status_code != 503 or time.monotonic() > deadline:
            return answer
        assert "Retry-After" in answer.headers
        time.sleep(0.5)


def wait_until(predicate, timeout: float = 30, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def test_a_worker_catches_projections_up_after_posts(postgres_url, private_redis, tmp_path):
    server = start_server(postgres_url, tmp_path / "server.log", {"REDIS_URL": private_redis.url})
    worker = start_worker(server.env, tmp_path / "worker.log")
    try:
        key = server.add_party("maker-co", "CN")
        batch = unique()
        receipts = server.request("POST", "/v1/events", key, json={"events": [registered(batch), declared(batch)]})
        position = receipts.json()["receipts"][-1]["position"]
        answer = read_once_caught_up(server, f"/v1/batches/{batch}?min_position={position}", key)
        assert answer.status_code == 200, answer.text + (tmp_path / "worker.log").read_text()
        assert int(answer.headers["X-Ledger-Position"]) >= position
        assert len(answer.json()["declarations"]) == 1
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        stop_server(server)


def test_posts_succeed_while_redis_is_down_and_projections_converge_after(postgres_url, private_redis, tmp_path):
    server = start_server(postgres_url, tmp_path / "server.log", {"REDIS_URL": private_redis.url})
    worker = None
    try:
        key = server.add_party("maker-co", "CN")
        private_redis.stop()
        batches = [unique() for _ in range(20)]
        for batch in batches:
            response = server.request("POST", "/v1/events", key, json=registered(batch))
            assert response.status_code == 201, response.text
        private_redis.start()
        worker = start_worker(server.env, tmp_path / "worker.log")
        # The next append after Redis returns asks for a catch-up of everything behind it.
        last = server.request("POST", "/v1/events", key, json=registered(unique())).json()["receipts"][0]["position"]
        answer = read_once_caught_up(server, f"/v1/batches/{batches[0]}?min_position={last}", key)
        assert answer.status_code == 200, answer.text + (tmp_path / "worker.log").read_text()
        ledger = Ledger.open(settings_for(postgres_url))
        assert ledger.projections.position() == ledger.store.last_position() == last
        ledger.close()
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=30)
        stop_server(server)


def test_a_post_does_not_wait_on_a_redis_that_never_answers(postgres_url, tmp_path):
    """The catch-up is asked for by a thread of the server's own, so a Redis that accepts
    connections and never answers (each ask waits out the client's 5 s timeout) does not
    hold up the posts. The rate limiter, which does ask Redis in the request, is off."""
    with socket.create_server(("127.0.0.1", 0), backlog=64) as silent:
        server = start_server(postgres_url, tmp_path / "server.log",
                              {"REDIS_URL": f"redis://127.0.0.1:{silent.getsockname()[1]}/0", "LEDGER_RATE_LIMIT": "off"})
        try:
            key = server.add_party("maker-co", "CN")
            started = time.monotonic()
            for _ in range(3):
                response = server.request("POST", "/v1/events", key, json=registered(unique()))
                assert response.status_code == 201, response.text
            assert time.monotonic() - started < 5
        finally:
            stop_server(server)


def test_a_catch_up_that_could_not_be_asked_for_is_asked_for_when_redis_returns(private_redis):
    """The notifier's thread retries a failed ask on its own: the appends made while Redis
    was down are caught up without waiting for the next append."""
    notifier = CatchUpNotifier(settings_for("sqlite://", REDIS_URL=private_redis.url), ["holdings", "findings"])
    notifier.RETRY_SECONDS = 0.1
    private_redis.stop()
    notifier()
    assert wait_until(lambda: notifier.failures > 0, timeout=10)
    private_redis.start()
    jobs = Queue(QUEUE_NAME, connection=redis.Redis.from_url(private_redis.url))
    assert wait_until(lambda: len(jobs.job_ids) == 2, timeout=10)
    assert sorted(job_id.rsplit("-", 1)[0] for job_id in jobs.job_ids) == ["catch-up-findings", "catch-up-holdings"]
    assert wait_until(lambda: notifier.failures == 0, timeout=10)


def start_worker_group(env: dict, log_path, *command: str) -> subprocess.Popen:
    """A `magledger` process in a session of its own, so that a signal to its group reaches it
    and nothing of the test's (RQ's work horse has a group of its own: see
    `kill_with_its_work_horses`)."""
    with open(log_path, "a") as log:
        return subprocess.Popen([sys.executable, "-m", "ledger.cli", *command], env={**os.environ, **env},
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def kill_with_its_work_horses(worker: subprocess.Popen) -> None:
    """SIGKILL to the worker's process group and to the group of every process under it, as a
    crashed machine would: RQ's work horse moves into a group of its own (`os.setpgrp`), so
    killing the worker's group alone left the job running to its end."""
    groups = {worker.pid}
    for pid in _descendants(worker.pid):
        with contextlib.suppress(ProcessLookupError):
            groups.add(os.getpgid(pid))
    groups.discard(os.getpgrp())
    for group in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
    worker.wait()


def _descendants(pid: int) -> list[int]:
    table = subprocess.run(["ps", "-A", "-o", "pid=,ppid="], capture_output=True, text=True, check=True).stdout
    children: dict[int, list[int]] = {}
    for line in table.splitlines():
        child, parent = map(int, line.split())
        children.setdefault(parent, []).append(child)
    found, frontier = [], [pid]
    while frontier:
        frontier = [child for parent in frontier for child in children.get(parent, ())]
        found += frontier
    return found


def test_a_worker_killed_mid_rebuild_is_resumed_and_matches_a_rebuild_from_scratch(postgres_url, private_redis,
                                                                                    tmp_path):
    ledger = Ledger.open(settings_for(postgres_url))
    cast = parties(ledger)
    for start in range(0, 50_000, 500):
        raws = [registered(f"K-{start + i}", "10") for i in range(250)]
        raws += [declared(f"K-{start + i}") for i in range(250)]
        post(ledger, cast["maker"], *raws)
    assert ledger.store.last_position() == 50_000
    ledger.projections.catch_up()
    expected = ledger.projections.digest("batch_state")

    # A rebuild holds its rows in memory between checkpoints; here they are 5,000 events apart.
    env = {"DATABASE_URL": postgres_url, "REDIS_URL": private_redis.url, "LEDGER_REBUILD_FLUSH_EVENTS": "5000"}
    worker = start_worker_group(env, tmp_path / "worker.log", "worker")
    scheduler = None
    try:
        queued = json.loads(magledger("projections", "rebuild", "batch_state", "--queue", env=env).stdout)
        generation = queued["projections"]["batch_state"]

        def building_position():
            row = ledger.projections._state("batch_state", "building")
            return row.position if row else 0

        # Polled often: the whole build takes about a second on a fast machine.
        assert wait_until(lambda: building_position() >= 5_000, timeout=120, interval=0.01), \
            (tmp_path / "worker.log").read_text()
        kill_with_its_work_horses(worker)
        time.sleep(1)
        interrupted = ledger.projections._state("batch_state", "building")
        assert interrupted is not None and interrupted.generation == generation
        assert 0 < interrupted.position < 50_000
        time.sleep(1)
        still = ledger.projections._state("batch_state", "building")
        assert still is not None and still.position == interrupted.position, "the rebuild went on after its worker died"
        assert ledger.projections.digest("batch_state") == expected, "readers still see the serving generation"

        # A new worker and the scheduler's periodic catch-up finish the same generation.
        worker = start_worker_group(env, tmp_path / "worker.log", "worker")
        scheduler = start_worker_group(env, tmp_path / "scheduler.log", "scheduler")
        assert wait_until(lambda: ledger.projections._status("batch_state", generation) == "serving", timeout=180), \
            (tmp_path / "worker.log").read_text()
        assert ledger.projections._state("batch_state", "building") is None
        assert ledger.projections.digest("batch_state") == expected
    finally:
        for process in (worker, scheduler):
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=30)
        ledger.close()


def test_an_interrupted_rebuild_resumes_its_own_generation_from_the_command_line(postgres_url, tmp_path):
    ledger = Ledger.open(settings_for(postgres_url))
    cast = parties(ledger)
    post(ledger, cast["maker"], *[registered(f"C-{i}", "10") for i in range(200)])
    ledger.projections.catch_up()
    expected = ledger.projections.digest("batch_state")
    started = ledger.projections.start_rebuild(["batch_state"])
    result = magledger("projections", "rebuild", "batch_state", env={"DATABASE_URL": postgres_url})
    assert json.loads(result.stdout)["projections"] == started
    assert ledger.projections._status("batch_state", started["batch_state"]) == "serving"
    assert ledger.projections.digest("batch_state") == expected
    ledger.close()


def ledger_with_a_diversion(postgres_url: str) -> tuple[Ledger, dict[str, str]]:
    """A declared lot shipped to the United States, projections caught up; returns the ledger
    and each projection's digest (so `findings` has a row to rebuild)."""
    ledger = Ledger.open(settings_for(postgres_url))
    cast = parties(ledger)
    lot = unique("LOT")
    post(ledger, cast["maker"], registered(lot, "100"), declared(lot, ("IN",)),
         shipped(lot, unique("BL"), "detroit-motors", "10"))
    ledger.projections.catch_up()
    return ledger, {name: ledger.projections.digest(name) for name in ledger.projections.projections}


def test_the_command_line_rebuilds_every_projection_in_two_processes(postgres_url):
    ledger, expected = ledger_with_a_diversion(postgres_url)
    result = magledger("projections", "rebuild", "--processes", "2", env={"DATABASE_URL": postgres_url})
    printed = json.loads(result.stdout)
    assert set(printed["projections"]) == set(expected) and printed["events"] == 3
    assert {name: ledger.projections.digest(name) for name in expected} == expected
    assert ledger.diversion.findings(limit=10)[0]
    ledger.close()


def test_a_queued_rebuild_is_folded_by_two_workers_at_once_then_switched(postgres_url, private_redis, tmp_path):
    from rq.job import Job

    from workers.runner import QUEUE_NAME

    ledger, expected = ledger_with_a_diversion(postgres_url)
    env = {"DATABASE_URL": postgres_url, "REDIS_URL": private_redis.url}
    queued = json.loads(magledger("projections", "rebuild", "--queue", "--processes", "2", env=env).stdout)
    connection = redis.Redis.from_url(private_redis.url)
    waiting = Queue(QUEUE_NAME, connection=connection)
    builds = [Job.fetch(job_id, connection=connection) for job_id in waiting.job_ids]
    assert [job.func_name for job in builds] == ["workers.jobs.build"] * 2
    assert [list(job.args[0]) for job in builds] == ledger.projections.rebuild_groups(ledger.projections.projections, 2)
    switch = Job.fetch(queued["job_id"], connection=connection)
    assert switch.get_status() == "deferred" and sorted(switch.dependency_ids) == sorted(job.id for job in builds)
    workers = [start_worker_group(env, tmp_path / "worker.log", "worker") for _ in range(2)]
    try:
        assert wait_until(lambda: switch.get_status(refresh=True) == "finished", timeout=120), \
            (tmp_path / "worker.log").read_text()
        assert all(job.get_status(refresh=True) == "finished" for job in builds)
        assert all(ledger.projections._status(name, generation) == "serving"
                   for name, generation in queued["projections"].items())
        assert {name: ledger.projections.digest(name) for name in expected} == expected
    finally:
        for worker in workers:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(timeout=30)
        ledger.close()


def test_a_worker_signs_the_scheduled_checkpoint(postgres_url, private_redis, tmp_path):
    from rq import Queue

    from workers import jobs
    from workers.runner import QUEUE_NAME

    env = {"DATABASE_URL": postgres_url, "REDIS_URL": private_redis.url,
           "LEDGER_SIGNING_KEY": str(tmp_path / "signing.key")}
    ledger = Ledger.open(settings_for(postgres_url, LEDGER_SIGNING_KEY=env["LEDGER_SIGNING_KEY"]))
    cast = parties(ledger)
    post(ledger, cast["maker"], *[registered(unique()) for _ in range(3)])
    assert ledger.checkpoints.latest() is None
    # What the scheduler enqueues on LEDGER_CHECKPOINT_CRON.
    Queue(QUEUE_NAME, connection=redis.Redis.from_url(private_redis.url)).enqueue(jobs.make_checkpoint)
    magledger("worker", "--burst", env=env, timeout=120)
    signed = ledger.checkpoints.latest()
    assert signed is not None and signed.tree_size == 3
    assert signed.root_hash == ledger.checkpoints.make().root_hash
    ledger.close()


def test_an_audit_requested_over_http_is_run_by_a_worker(postgres_url, private_redis, tmp_path):
    server = start_server(postgres_url, tmp_path / "server.log", {"REDIS_URL": private_redis.url})
    worker = start_worker(server.env, tmp_path / "worker.log")
    try:
        auditor = server.add_party("audit-co", "IN", "auditor")
        started = server.request("POST", "/v1/audits", auditor, json={"scope": "full"})
        assert started.status_code == 202 and started.json()["status"] in ("queued", "running", "finished")
        audit_id = started.json()["audit_id"]

        def finished():
            return server.request("GET", f"/v1/audits/{audit_id}", auditor).json()["status"] == "finished"

        assert wait_until(finished, timeout=60), (tmp_path / "worker.log").read_text()
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        stop_server(server)


def test_an_audit_that_fails_while_the_database_is_down_is_retried_and_finishes(private_postgres, private_redis,
                                                                                 tmp_path):
    postgres = private_postgres
    server = start_server(postgres.create_database("ledger"), tmp_path / "server.log", {"REDIS_URL": private_redis.url})
    worker = None
    try:
        auditor = server.add_party("audit-co", "IN", "auditor")
        audit_id = server.request("POST", "/v1/audits", auditor, json={"scope": "full"}).json()["audit_id"]
        postgres.stop("fast")
        worker = start_worker(server.env, tmp_path / "worker.log")
        job = Job.fetch(f"audit-{audit_id}", connection=redis.Redis.from_url(private_redis.url))
        assert wait_until(lambda: job.get_status(refresh=True) == "scheduled", timeout=60), \
            (tmp_path / "worker.log").read_text()
        postgres.start()

        def finished():
            answer = server.request("GET", f"/v1/audits/{audit_id}", auditor)
            return answer.status_code == 200 and answer.json()["status"] == "finished"

        assert wait_until(finished, timeout=90), (tmp_path / "worker.log").read_text()
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=30)
        stop_server(server)


def test_readyz_reports_a_dead_redis_as_degraded_but_stays_in_service(postgres_url, private_redis, tmp_path):
    server = start_server(postgres_url, tmp_path / "server.log", {"REDIS_URL": private_redis.url})
    try:
        ready = server.request("GET", "/readyz")
        assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "redis": "ok"}
        assert ready.json()["status"] == "ready"
        private_redis.stop()
        down = server.request("GET", "/readyz")
        assert down.status_code == 200, down.text
        assert down.json()["status"] == "degraded" and down.json()["checks"]["redis"] == "unreachable"
    finally:
        stop_server(server)


def test_an_audit_that_cannot_be_queued_answers_503_and_is_marked_failed(postgres_url, private_redis, tmp_path):
    server = start_server(postgres_url, tmp_path / "server.log", {"REDIS_URL": private_redis.url})
    try:
        auditor = server.add_party("audit-co", "IN", "auditor")
        private_redis.stop()
        answer = server.request("POST", "/v1/audits", auditor, json={"scope": "full"})
        assert answer.status_code == 503 and answer.headers["Retry-After"], answer.text
        [audit] = server.request("GET", "/v1/audits", auditor).json()["items"]
        assert audit["status"] == "failed" and "could not be queued" in audit["error"]
    finally:
        stop_server(server)


def test_scheduled_audits_run_under_an_auditor_account(ledger):
    assert ledger.scheduled_auditor() is None
    ledger.parties.register("zeta-audit", "Zeta Audit", "IN", "auditor")
    ledger.parties.register("alpha-audit", "Alpha Audit", "IN", "auditor")
    ledger.parties.register("maker-co", "Maker", "CN", "partner")
    assert ledger.scheduled_auditor().party_id == "alpha-audit"
    ledger.settings = replace(ledger.settings, audit_party="zeta-audit")
    assert ledger.scheduled_auditor().party_id == "zeta-audit"
    ledger.settings = replace(ledger.settings, audit_party="maker-co")
    with pytest.raises(ConfigError, match="LEDGER_AUDIT_PARTY"):
        ledger.scheduled_auditor()


def test_the_scheduled_audit_job_is_requested_by_the_auditor(postgres_url, private_redis, tmp_path):
    env = {"DATABASE_URL": postgres_url, "REDIS_URL": private_redis.url,
           "LEDGER_SIGNING_KEY": str(tmp_path / "signing.key")}
    magledger("party", "add", "audit-co", "--name", "Audit Co", "--country", "IN", "--role", "auditor", env=env)
    from workers import jobs

    Queue("magledger", connection=redis.Redis.from_url(private_redis.url)).enqueue(jobs.scheduled_audit)
    magledger("worker", "--burst", env=env)
    ledger = Ledger.open(settings_for(postgres_url))
    try:
        [audit] = ledger.audits.list()
        assert audit["requested_by"] == "audit-co" and audit["status"] == "finished"
    finally:
        ledger.close()
