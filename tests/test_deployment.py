"""What can be checked of the deployment here, where Docker does not run: the compose file's
shape, and that every service's command exists and answers --help."""

from __future__ import annotations

from pathlib import Path

import redis
import yaml

from tests.conftest import magledger, service_missing

ROOT = Path(__file__).resolve().parent.parent


def test_compose_defines_the_stack_and_every_command_answers_help():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "api", "worker", "scheduler"} <= set(services)
    for name in ("api", "worker", "scheduler"):
        command = services[name]["command"]
        assert command[0] == "magledger"
        assert services[name]["environment"]["DATABASE_URL"].startswith("postgresql://")
        assert services[name]["environment"]["REDIS_URL"].startswith("redis://")
        verbs = [word for word in command[1:] if not word.startswith("-")][:1]
        result = magledger(*verbs, "--help", env={})
        assert result.returncode == 0, result.stderr
    for name in ("postgres", "redis", "api"):
        assert "healthcheck" in services[name]
    for name in ("postgres", "redis", "api", "worker", "scheduler"):
        assert services[name]["restart"] == "unless-stopped"
    assert set(compose["volumes"]) == {"postgres-data", "redis-data", "ledger-keys"}
    assert (ROOT / "Dockerfile").exists()


def test_worker_needs_redis_url_and_runs_against_a_real_redis(tmp_path):
    assert magledger("worker", env={}, check=False).returncode == 2
    try:
        redis.Redis.from_url("redis://127.0.0.1:6379/15", socket_connect_timeout=2).ping()
    except redis.RedisError as error:
        service_missing("Redis", error)
    result = magledger("worker", "--burst", env={"REDIS_URL": "redis://127.0.0.1:6379/15",
                                                  "DATABASE_URL": f"sqlite:///{tmp_path}/w.db"})
    assert "Listening on magledger" in result.stderr + result.stdout
