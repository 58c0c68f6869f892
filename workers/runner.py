"""The `magledger worker` process: an RQ worker on the ledger's queue."""

from __future__ import annotations

from redis import Redis
from rq import Queue, Worker

from ledger.config import Settings

QUEUE_NAME = "magledger"


def connect(settings: Settings) -> Redis:
    return Redis.from_url(settings.redis_url)


def queue(settings: Settings, connection: Redis | None = None) -> Queue:
    return Queue(QUEUE_NAME, connection=connection or connect(settings))


def run_worker(settings: Settings, burst: bool = False) -> bool:
    """Work the queue until stopped (SIGTERM finishes the current job first) or, in burst
    mode, until it is empty."""
    connection = connect(settings)
    return Worker([queue(settings, connection)], connection=connection).work(burst=burst)
