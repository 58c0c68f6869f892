"""Configuration read once from the environment (SPEC 10).

Bad values stop start-up with a message that names the variable, so an operator
never runs a ledger with a silently defaulted threshold.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from ledger.projections.engine import FLUSH_EVENTS

DEFAULT_RATE_LIMIT = "6000/minute"


class ConfigError(ValueError):
    """A configuration variable has a value the ledger cannot run with."""


@dataclass(frozen=True)
class Settings:
    database_url: str
    redis_url: str | None
    signing_key_path: str
    origin: str
    de_minimis: Decimal
    mass_tolerance: Decimal
    transit_window_days: int
    audit_cron: str
    checkpoint_cron: str = "* * * * *"
    max_body_bytes: int = 1024 * 1024
    max_events_per_post: int = 1000
    rate_limit: str | None = DEFAULT_RATE_LIMIT
    log_format: str = "json"
    audit_party: str | None = None
    rebuild_flush_events: int = FLUSH_EVENTS

    def rule_config(self):
        from ledger.rules import RuleConfig

        return RuleConfig(self.de_minimis, self.mass_tolerance, self.transit_window_days)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        database_url = env.get("DATABASE_URL") or "sqlite:///" + os.path.abspath("magledger.db")
        if "://" not in database_url:
            raise ConfigError(f"DATABASE_URL must be a database URL, got {database_url!r}")
        if database_url.startswith(("postgres://", "postgresql://")):
            database_url = "postgresql+psycopg://" + database_url.split("://", 1)[1]
        if not database_url.startswith(("sqlite:", "postgresql+psycopg:")):
            raise ConfigError("DATABASE_URL must be a sqlite:/// or postgresql:// URL")
        redis_url = env.get("REDIS_URL") or None
        if redis_url is not None and not redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(f"REDIS_URL must be a redis:// URL, got {redis_url!r}")
        return cls(
            database_url=database_url,
            redis_url=redis_url,
            signing_key_path=env.get("LEDGER_SIGNING_KEY") or os.path.abspath("magledger-signing.key"),
            origin=env.get("LEDGER_ORIGIN") or f"magledger/{socket.gethostname()}",
            de_minimis=_fraction(env, "LEDGER_DE_MINIMIS", "0.001"),
            mass_tolerance=_fraction(env, "LEDGER_MASS_TOLERANCE", "0.005"),
            transit_window_days=_positive_int(env, "LEDGER_TRANSIT_WINDOW_DAYS", "30"),
            audit_cron=_cron(env, "LEDGER_AUDIT_CRON", "0 2 * * *"),
            checkpoint_cron=_cron(env, "LEDGER_CHECKPOINT_CRON", "* * * * *"),
            rate_limit=_rate_limit(env, "LEDGER_RATE_LIMIT", DEFAULT_RATE_LIMIT),
            log_format=_choice(env, "LEDGER_LOG_FORMAT", "json", ("json", "text")),
            audit_party=env.get("LEDGER_AUDIT_PARTY") or None,
            rebuild_flush_events=_positive_int(env, "LEDGER_REBUILD_FLUSH_EVENTS", str(FLUSH_EVENTS)),
        )


def _fraction(env: Mapping[str, str], name: str, default: str) -> Decimal:
    raw = env.get(name) or default
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise ConfigError(f"{name} must be a decimal number between 0 and 1, got {raw!r}") from None
    if not value.is_finite() or not (0 <= value < 1):
        raise ConfigError(f"{name} must be a decimal number between 0 and 1, got {raw!r}")
    return value


def _positive_int(env: Mapping[str, str], name: str, default: str) -> int:
    raw = env.get(name) or default
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"{name} must be a whole number of at least 1, got {raw!r}")
    return int(raw)


def _cron(env: Mapping[str, str], name: str, default: str) -> str:
    raw = (env.get(name) or default).strip()
    if len(raw.split()) != 5:
        raise ConfigError(f"{name} must be a five-field cron expression, got {raw!r}")
    return raw


def _rate_limit(env: Mapping[str, str], name: str, default: str) -> str | None:
    """A per-key budget in Flask-Limiter's notation ("6000/minute", "50/second;2000/hour"),
    or "off"."""
    from limits import parse_many

    raw = (env.get(name) or default).strip()
    if raw.lower() == "off":
        return None
    try:
        parse_many(raw)
    except ValueError:
        raise ConfigError(f'{name} must be a rate such as "6000/minute", or "off", got {raw!r}') from None
    return raw


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = (env.get(name) or default).strip().lower()
    if raw not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return raw
