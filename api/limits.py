"""A request budget per API key (Flask-Limiter), so that one partner's runaway integration
cannot starve the others. With Redis configured, every server process counts against the
same budget; without it, each process counts its own. If Redis fails, requests are counted
in memory until it returns, never refused for it."""

from __future__ import annotations

import hashlib
import time

from flask import Flask, request
from flask_limiter import Limiter, RequestLimit
from flask_limiter.util import get_remote_address

from api.auth import bearer_key
from api.problems import problem
from ledger.config import Settings


def install(app: Flask, settings: Settings) -> Limiter | None:
    if not settings.rate_limit:
        return None
    return Limiter(
        _caller,
        app=app,
        default_limits=[settings.rate_limit],
        default_limits_exempt_when=lambda: not request.path.startswith("/v1/"),
        storage_uri=settings.redis_url or "memory://",
        storage_options={"socket_connect_timeout": 1, "socket_timeout": 1} if settings.redis_url else {},
        strategy="fixed-window",
        on_breach=_too_many_requests,
        swallow_errors=True,
        in_memory_fallback_enabled=True,
        key_prefix="magledger-limit",
    )


def _caller() -> str:
    """The key's digest (never the key itself, which would then sit in Redis), or the
    address of a caller without one."""
    key = bearer_key()
    if key:
        return "key:" + hashlib.sha256(key.encode()).hexdigest()[:32]
    return "addr:" + get_remote_address()


def _too_many_requests(breached: RequestLimit):
    wait = max(breached.reset_at - int(time.time()), 1)
    return problem(429, "Too Many Requests",
                   f"This API key has used its request budget ({breached.limit}); retry in {wait} s.",
                   headers={"Retry-After": str(wait)})
