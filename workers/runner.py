"""The RQ side of the ledger: the queue, the worker process, the scheduler, and the
notifier that asks for projection catch-ups after appends."""

from __future__ import annotations

import logging
import multiprocessing.util
import os
import threading
import time
import uuid

from redis import Redis, RedisError
from rq import Queue, Retry, Worker
from rq.cron import CronScheduler
from rq.job import Dependency

from ledger.config import Settings

QUEUE_NAME = "magledger"
PENDING_SECONDS = 60
CATCH_UP_INTERVAL_SECONDS = 30
# A catch-up after a long outage, or a rebuild of a large log, takes far longer than RQ's
# default 180 s; work done before a timeout is committed all the same.
LONG_JOB_TIMEOUT_SECONDS = 6 * 3600

log = logging.getLogger("magledger.workers")


def connect(settings: Settings) -> Redis:
    return Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=5)


def queue(settings: Settings, connection: Redis | None = None) -> Queue:
    return Queue(QUEUE_NAME, connection=connection or connect(settings))


def pending_key(name: str) -> str:
    return f"magledger:catch-up-pending:{name}"


def run_worker(settings: Settings, burst: bool = False) -> bool:
    """Work the queue until stopped (SIGTERM finishes the current job first) or, in burst
    mode, until it is empty."""
    connection = connect(settings)
    # The worker's scheduler moves due retries (jobs failed with a Retry interval) back onto
    # the queue; without one running somewhere, a retry with an interval never happens. RQ
    # keeps one such scheduler active per queue, however many workers run.
    return Worker([queue(settings, connection)], connection=connection).work(burst=burst, with_scheduler=True)


def run_scheduler(settings: Settings) -> None:
    """RQ's cron scheduler: the periodic catch-up of every projection, checkpoints, audits."""
    from workers import jobs

    scheduler = CronScheduler(connection=connect(settings))
    scheduler.register(jobs.catch_up_all, QUEUE_NAME, interval=CATCH_UP_INTERVAL_SECONDS,
                       job_timeout=LONG_JOB_TIMEOUT_SECONDS)
    scheduler.register(jobs.make_checkpoint, QUEUE_NAME, cron=settings.checkpoint_cron)
    scheduler.register(jobs.scheduled_audit, QUEUE_NAME, cron=settings.audit_cron, job_timeout=LONG_JOB_TIMEOUT_SECONDS)
    scheduler.start()


def enqueue_rebuild(settings: Settings, groups: list[dict[str, int]]) -> str:
    """Ask the workers to build these generations and serve them; returns the id of the job
    that switches them, done when the rebuild is. With several groups, each is built by a job
    of its own, so that as many workers fold at once, and the switch waits for all of them
    (it runs even if one failed for good, and then finishes that group's fold itself). A job
    retried after its worker died resumes the same generations."""
    from workers import jobs

    target = queue(settings)
    options = {"job_timeout": LONG_JOB_TIMEOUT_SECONDS, "retry": Retry(max=3, interval=[5, 30, 120]),
               "result_ttl": 86400, "failure_ttl": 86400}
    builds = [target.enqueue(jobs.build, group, job_id=f"build-{uuid.uuid4().hex[:12]}", **options)
              for group in groups] if len(groups) > 1 else []
    targets = {name: generation for group in groups for name, generation in group.items()}
    job = target.enqueue(jobs.finish_rebuild, targets, job_id=f"rebuild-{uuid.uuid4().hex[:12]}",
                         depends_on=Dependency(builds, allow_failure=True) if builds else None, **options)
    return job.id


def enqueue_audit(settings: Settings, audit_id: str) -> str:
    from workers import jobs

    # An audit only reads until it stores its report, so a retry after its worker died (or a
    # database outage) simply judges again.
    job = queue(settings).enqueue(jobs.run_audit, audit_id, job_id=f"audit-{audit_id}",
                                  job_timeout=LONG_JOB_TIMEOUT_SECONDS, retry=Retry(max=3, interval=[5, 30, 120]),
                                  result_ttl=86400, failure_ttl=86400)
    return job.id


class CatchUpNotifier:
    """After an append, one catch-up job per projection, deduplicated: a job is enqueued
    only if none is pending (a Redis key set with NX, cleared when the job starts).

    The asking is done by a thread of the process's own, not by the request: a post never
    waits on Redis (a slow or unreachable one included), and the appends committed within
    `SHARE_SECONDS` of an ask share the next one: an ask cost 197-274 µs of CPU, raising the
    flag 4-5 (measured in one process). Every append is followed by an ask that starts after
    its commit, because the thread clears its flag before it asks.
    """

    SHARE_SECONDS = 0.05
    """The least time between two asks: a projection learns of an append at most this much later."""
    RETRY_SECONDS = 1.0
    """After a failed ask, the pause before the next: Redis is down, and the periodic
    catch-up covers what is committed meanwhile."""

    def __init__(self, settings: Settings, names: list[str]):
        self.settings = settings
        self.names = names
        self.connection = connect(settings)
        self.failures = 0
        self._wanted = threading.Event()
        self._starting = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        # At exit, in the main process (atexit) and in a server's worker process, which
        # multiprocessing ends without running atexit handlers.
        multiprocessing.util.Finalize(None, self.flush, exitpriority=10)

    def __call__(self) -> None:
        self._wanted.set()
        if self._pid != os.getpid() or not self._thread.is_alive():
            self._start()

    def _start(self) -> None:
        """Started on first use, in the process that appends: a thread started before a
        server forks its workers would not exist in them. (The Redis client itself opens
        new connections in a forked process.)"""
        with self._starting:
            if self._pid == os.getpid() and self._thread.is_alive():
                return
            self._thread = threading.Thread(target=self._run, name="catch-up-notifier", daemon=True)
            self._pid = os.getpid()
            self._thread.start()

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            if self.ask():
                time.sleep(self.SHARE_SECONDS)
            else:
                self._wanted.set()
                time.sleep(self.RETRY_SECONDS)

    def flush(self) -> None:
        """Ask now if an append has not been followed by an ask yet (at exit)."""
        if self._wanted.is_set():
            self._wanted.clear()
            self.ask()

    def ask(self) -> bool:
        """Enqueue a catch-up of each projection that has none pending; False if Redis failed."""
        from workers import jobs

        try:
            with self.connection.pipeline() as pipe:
                for name in self.names:
                    pipe.set(pending_key(name), "1", nx=True, ex=PENDING_SECONDS)
                fresh = pipe.execute()
            target = queue(self.settings, self.connection)
            for name, is_new in zip(self.names, fresh):
                if is_new:
                    target.enqueue(jobs.catch_up, name, job_id=f"catch-up-{name}-{uuid.uuid4().hex[:12]}",
                                   job_timeout=LONG_JOB_TIMEOUT_SECONDS,
                                   retry=Retry(max=3, interval=[1, 5, 15]), result_ttl=60, failure_ttl=86400)
        except RedisError as error:
            # The append is committed; the periodic catch-up will bring the projections up.
            self.failures += 1
            if self.failures == 1:
                log.warning("could not enqueue projection catch-up, retrying every %s s: %s", self.RETRY_SECONDS, error)
            return False
        if self.failures:
            log.info("enqueued projection catch-up again after %s failed tries", self.failures)
            self.failures = 0
        return True
