"""The command line as a user runs it: subprocesses, JSON output, exit statuses."""

from __future__ import annotations

import json

from ledger.db import make_engine
from ledger.parties import PartyRegistry
from tests.conftest import magledger


def test_db_upgrade_then_party_add_prints_a_working_key(database_url):
    env = {"DATABASE_URL": database_url}
    assert magledger("db", "upgrade", env=env).returncode == 0
    result = magledger("party", "add", "pune-motors", "--name", "Pune Motors", "--country", "IN",
                       "--role", "partner", env=env)
    printed = json.loads(result.stdout)
    assert printed["party_id"] == "pune-motors" and printed["api_key"].startswith("mlk_")
    engine = make_engine(database_url.replace("postgresql://", "postgresql+psycopg://"))
    assert PartyRegistry(engine).authenticate(printed["api_key"]).country == "IN"
    engine.dispose()


def test_party_add_refuses_duplicates_and_bad_values(database_url):
    env = {"DATABASE_URL": database_url}
    magledger("party", "add", "acme-co", "--name", "Acme", "--country", "IN", "--role", "partner", env=env)
    again = magledger("party", "add", "acme-co", "--name", "Acme", "--country", "IN", "--role", "partner",
                      env=env, check=False)
    assert again.returncode == 1 and "already exists" in again.stderr
    bad = magledger("party", "add", "Bad Id", "--name", "X", "--country", "XX", "--role", "partner",
                    env=env, check=False)
    assert bad.returncode == 2 and "country" in bad.stderr and "party_id" in bad.stderr


def test_bad_usage_and_bad_configuration_exit_2_naming_the_problem(tmp_path):
    assert magledger("party", "add", "x", env={}, check=False).returncode == 2
    assert magledger("party", "add", "acme", "--name", "A", "--country", "IN", "--role", "emperor",
                     env={}, check=False).returncode == 2
    result = magledger("db", "upgrade", env={"DATABASE_URL": f"sqlite:///{tmp_path}/x.db",
                                             "LEDGER_DE_MINIMIS": "lots"}, check=False)
    assert result.returncode == 2 and "LEDGER_DE_MINIMIS" in result.stderr
    queued = magledger("projections", "rebuild", "--queue", env={"DATABASE_URL": f"sqlite:///{tmp_path}/x.db"},
                       check=False)
    assert queued.returncode == 2 and "REDIS_URL" in queued.stderr
    unknown = magledger("projections", "rebuild", "nonsense", env={"DATABASE_URL": f"sqlite:///{tmp_path}/x.db"},
                        check=False)
    assert unknown.returncode == 2 and "nonsense" in unknown.stderr


def test_every_command_has_help():
    for command in (["--help"], ["serve", "--help"], ["db", "upgrade", "--help"], ["party", "add", "--help"],
                    ["worker", "--help"], ["scheduler", "--help"], ["projections", "rebuild", "--help"],
                    ["projections", "status", "--help"], ["audit", "--help"], ["demo", "--help"],
                    ["checkpoint", "--help"], ["export", "--help"], ["verify", "--help"]):
        result = magledger(*command, env={})
        assert result.returncode == 0 and "Usage" in result.stdout


def test_demo_tells_the_story_and_audit_reports_it(tmp_path):
    env = {"DATABASE_URL": f"sqlite:///{tmp_path}/demo.db", "LEDGER_SIGNING_KEY": str(tmp_path / "key")}
    story = magledger("demo", env=env, timeout=120).stdout
    lines = {line.split()[0]: line.split()[1] for line in story.splitlines()
             if line.startswith(("CN-BTM-", "IN-PTM-", "IN-CHA-"))}
    verdicts = sorted(lines.items())
    assert [v for b, v in verdicts if b.startswith("IN-CHA-CAR")] == ["clear"], story
    assert [v for b, v in verdicts if b.startswith("IN-PTM-MOTORS")] == ["diverted"], story
    assert sorted(v for b, v in verdicts if b.startswith("CN-BTM-")) == ["clear", "diverted", "diverted", "diverted"]
    assert "destination_not_permitted    2" in story

    report = json.loads(magledger("audit", env=env).stdout)
    assert report["scope"] == "incremental" and report["status"] == "finished"
    assert report["counts"]["destination_not_permitted"] == 2 and len(report["diverted_batches"]) == 4
    full = json.loads(magledger("audit", "--full", env=env).stdout)
    assert full["counts"] == report["counts"] and full["new_findings"] == [] == full["resolved_findings"]
    rows = magledger("audit", "--format", "csv", env=env).stdout.splitlines()
    assert rows[0].startswith("finding_id,rule,category") and len(rows) == 1 + full["findings_total"]
