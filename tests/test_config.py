"""Configuration (SPEC 10): defaults, and bad values that stop start-up naming the variable."""

from __future__ import annotations

import os
from decimal import Decimal

import pytest

from ledger.config import ConfigError, Settings


def test_defaults_give_an_embedded_sqlite_ledger(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = Settings.from_env({})
    assert settings.database_url == f"sqlite:///{os.path.join(str(tmp_path), 'magledger.db')}"
    assert settings.redis_url is None
    assert settings.de_minimis == Decimal("0.001") and settings.mass_tolerance == Decimal("0.005")
    assert settings.transit_window_days == 30 and settings.audit_cron == "0 2 * * *"
    assert settings.origin.startswith("magledger/")
    assert settings.rate_limit == "6000/minute" and settings.log_format == "json"
    assert settings.rebuild_flush_events == 100_000


def test_the_rate_limit_may_be_turned_off_or_combined():
    assert Settings.from_env({"LEDGER_RATE_LIMIT": "off"}).rate_limit is None
    assert Settings.from_env({"LEDGER_RATE_LIMIT": "50/second;2000/hour"}).rate_limit == "50/second;2000/hour"


def test_postgres_urls_get_the_psycopg_driver():
    settings = Settings.from_env({"DATABASE_URL": "postgresql://u@db:5432/ledger"})
    assert settings.database_url == "postgresql+psycopg://u@db:5432/ledger"


@pytest.mark.parametrize("name, value", [
    ("DATABASE_URL", "mysql://x"), ("DATABASE_URL", "nonsense"), ("REDIS_URL", "http://redis"),
    ("LEDGER_DE_MINIMIS", "2"), ("LEDGER_DE_MINIMIS", "abc"), ("LEDGER_MASS_TOLERANCE", "-0.1"),
    ("LEDGER_TRANSIT_WINDOW_DAYS", "0"), ("LEDGER_TRANSIT_WINDOW_DAYS", "ten"), ("LEDGER_AUDIT_CRON", "daily"),
    ("LEDGER_RATE_LIMIT", "fast"), ("LEDGER_RATE_LIMIT", "10/fortnight"), ("LEDGER_LOG_FORMAT", "xml"),
    ("LEDGER_REBUILD_FLUSH_EVENTS", "0"),
])
def test_bad_values_name_the_variable(name, value):
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})
