"""Fixtures: fresh databases on SQLite and PostgreSQL, an injectable clock, live servers.

A test that needs PostgreSQL or Redis skips when the service is absent, unless
LEDGER_REQUIRE_SERVICES=1 (CI sets it), which turns every such skip into a failure.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import requests

from ledger.config import Settings
from ledger.db import make_engine, upgrade
from ledger.services import Ledger
from tests.services import PrivatePostgres, PrivateRedis, free_port

REQUIRE_SERVICES = os.environ.get("LEDGER_REQUIRE_SERVICES") == "1"
POSTGRES_ADMIN = os.environ.get("TEST_POSTGRES_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
_counter = itertools.count()


def service_missing(what: str, why: object) -> None:
    message = f"{what} is not available: {why}"
    if REQUIRE_SERVICES:
        pytest.fail(message + " (LEDGER_REQUIRE_SERVICES=1 forbids skipping)", pytrace=False)
    pytest.skip(message)


class Clock:
    """A clock the tests move by hand."""

    def __init__(self, now: datetime | None = None):
        self.now = now or datetime(2026, 11, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta) -> None:
        self.now += timedelta(**delta)


def _sqlalchemy_url(conninfo: str, dbname: str) -> str:
    base = conninfo.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{base}/{dbname}"


@pytest.fixture(scope="session")
def postgres_template():
    """A migrated template database; each test clones it, which takes milliseconds."""
    try:
        admin = psycopg.connect(POSTGRES_ADMIN, autocommit=True, connect_timeout=3)
    except psycopg.Error as error:
        service_missing("PostgreSQL", error)
    name = f"ml_template_{os.getpid()}"
    admin.execute(f"DROP DATABASE IF EXISTS {name}")
    admin.execute(f"CREATE DATABASE {name}")
    engine = make_engine(_sqlalchemy_url(POSTGRES_ADMIN, name))
    upgrade(engine)
    engine.dispose()
    yield admin, name
    admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.close()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()
    return path


def fresh_postgres(postgres_template) -> tuple[str, callable]:
    admin, template = postgres_template
    name = f"ml_test_{os.getpid()}_{next(_counter)}"
    admin.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
    return _sqlalchemy_url(POSTGRES_ADMIN, name), lambda: admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def fresh_sqlite(sqlite_template: Path, directory: Path) -> str:
    path = directory / f"ledger-{next(_counter)}.db"
    shutil.copy(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        yield fresh_sqlite(request.getfixturevalue("sqlite_template"), tmp_path)
    else:
        url, drop = fresh_postgres(request.getfixturevalue("postgres_template"))
        yield url
        drop()


@pytest.fixture
def postgres_url(request):
    url, drop = fresh_postgres(request.getfixturevalue("postgres_template"))
    yield url
    drop()


@pytest.fixture
def private_redis(tmp_path):
    """A redis-server of the test's own, which it may kill and start again."""
    if PrivateRedis.missing():
        service_missing("redis-server", PrivateRedis.missing())
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def private_postgres():
    """A PostgreSQL cluster of the test's own, which it may stop and restart."""
    if PrivatePostgres.missing():
        service_missing("a private PostgreSQL", PrivatePostgres.missing())
    server = PrivatePostgres()
    server.start()
    yield server
    server.destroy()


@pytest.fixture
def clock() -> Clock:
    return Clock()


TEST_SIGNING_KEY = os.path.join(tempfile.mkdtemp(prefix="magledger-test-"), "signing.key")


def settings_for(url: str, **overrides) -> Settings:
    env = {"DATABASE_URL": url, "LEDGER_SIGNING_KEY": TEST_SIGNING_KEY, **overrides}
    return Settings.from_env(env)


@pytest.fixture
def ledger(database_url, clock):
    opened = Ledger.open(settings_for(database_url), clock=clock)
    yield opened
    opened.close()


# --- live servers ------------------------------------------------------------------------


def magledger(*args: str, env: dict, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run the CLI as a user would: a subprocess of the installed entry point."""
    return subprocess.run([sys.executable, "-m", "ledger.cli", *args], env={**os.environ, **env},
                          capture_output=True, text=True, check=check, timeout=timeout)


class LiveServer:
    IDLE_SECONDS = 2.0
    """Well below the server's idle timeout (30 s): a pooled connection idle for longer is not reused.
    Reusing one at the moment the server closes it is a race that HTTP allows (the request is
    reset unanswered); a test waiting on CLI subprocesses between two requests hit it."""

    def __init__(self, url: str, database_url: str, env: dict, process: subprocess.Popen, log_path: Path):
        self.url = url
        self.log_path = log_path
        self.database_url = database_url
        self.env = env
        self.process = process
        self.session = requests.Session()
        self._last_request = time.monotonic()

    def add_party(self, party_id: str, country: str = "IN", role: str = "partner") -> str:
        import json

        result = magledger("party", "add", party_id, "--name", party_id.title(), "--country", country,
                           "--role", role, env=self.env)
        return json.loads(result.stdout)["api_key"]

    def request(self, method: str, path: str, key: str | None = None, **kwargs) -> requests.Response:
        headers = kwargs.pop("headers", {})
        if key:
            headers["Authorization"] = f"Bearer {key}"
        if time.monotonic() - self._last_request > self.IDLE_SECONDS:
            self.session.close()
        try:
            return self.session.request(method, self.url + path, headers=headers, timeout=30, **kwargs)
        finally:
            self._last_request = time.monotonic()


def start_server(database_url: str, log_path: Path, extra_env: dict | None = None, workers: int = 2) -> LiveServer:
    port = free_port()
    env = {"DATABASE_URL": database_url, "LEDGER_SIGNING_KEY": str(log_path.parent / "signing.key"),
           **(extra_env or {})}
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "ledger.cli", "serve", "--port", str(port), "--workers", str(workers)],
            env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}: {log_path.read_text()}")
        try:
            if requests.get(url + "/healthz", timeout=1).status_code == 200:
                return LiveServer(url, database_url, env, process, log_path)
        except (requests.ConnectionError, requests.Timeout):
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"server did not start: {log_path.read_text()}")


def stop_server(server: LiveServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def live_server(request, tmp_path_factory):
    """One real `magledger serve` process per database for the session; tests use fresh ids."""
    directory = tmp_path_factory.mktemp(f"server-{request.param}")
    drop = None
    if request.param == "sqlite":
        database_url = fresh_sqlite(request.getfixturevalue("sqlite_template"), directory)
    else:
        database_url, drop = fresh_postgres(request.getfixturevalue("postgres_template"))
    server = start_server(database_url, directory / "server.log")
    yield server
    stop_server(server)
    if drop:
        drop()


@pytest.fixture(scope="module")
def keys(live_server):
    """A key per role on the live server, with party ids unique to the test module."""
    suffix = uuid.uuid4().hex[:6]
    names = {"maker": ("CN", "partner"), "importer": ("IN", "partner"), "stranger": ("US", "partner"),
             "regulator": ("CN", "regulator"), "auditor": ("IN", "auditor"), "admin": ("IN", "admin")}
    found = {}
    for short, (country, role) in names.items():
        party_id = f"{short}-{suffix}"
        found[short] = live_server.add_party(party_id, country, role)
        found[short + "_id"] = party_id
    return found


def assert_problem(response, status: int, *fields: str) -> dict:
    """An RFC 9457 problem with this status, naming at least these fields."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["title"] and body["detail"]
    for field in fields:
        assert field in body.get("errors", {}), body
    return body
