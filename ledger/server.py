"""The production WSGI server: gunicorn, embedded so that `magledger serve` needs nothing else."""

from __future__ import annotations

import os
import tempfile
import time

from gunicorn.app.base import BaseApplication
from gunicorn.workers.gthread import ThreadWorker

from ledger.config import Settings
from ledger.logs import config as log_config


class _Gunicorn(BaseApplication):
    def __init__(self, settings: Settings, options: dict):
        self.settings = settings
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        from api import create_app

        return create_app(settings=self.settings)


class RebalancingWorker(ThreadWorker):
    """gthread, with each keep-alive connection closed after an answer (`Connection: close`)
    once it has served for `CONNECTION_SECONDS`. A connection stays with the worker process
    that accepted it, so a few clients' long-lived connections could all end up on one
    process, bound by its interpreter lock while the other idles (one-event posts from 8
    clients: 45.7 CPU-seconds on one worker, 10.2 on the other). The client opens a closed
    connection again, and whichever process is quicker to accept it, the less busy one,
    takes it. Written against gunicorn 27's `ThreadWorker.handle_request` and
    `Request.force_close` (the dependency is held to that release)."""

    CONNECTION_SECONDS = 1.0

    def handle_request(self, req, conn):
        now = time.monotonic()
        since = getattr(conn, "serving_since", None)
        if since is None:
            conn.serving_since = now
        elif now - since >= self.CONNECTION_SECONDS:
            req.force_close()
        return super().handle_request(req, conn)


def _process_exited(server, worker) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def run(settings: Settings, host: str, port: int, workers: int, threads: int) -> None:
    # Metrics counted in each worker process are added up at scrape time from files here.
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="magledger-metrics-")
    _Gunicorn(settings, {
        "child_exit": _process_exited,
        "bind": f"{host}:{port}",
        "workers": workers,
        "threads": threads,
        "worker_class": "ledger.server.RebalancingWorker",
        "graceful_timeout": 30,
        "timeout": 60,
        "keepalive": 5,
        "logconfig_dict": log_config(settings.log_format),
    }).run()
