"""The production WSGI server: granian, embedded so that `magledger serve` needs nothing else.

granian reads and writes HTTP in Rust, outside the interpreter lock: /healthz cost 212-215 µs
of server CPU a request under it against 368-413 under gunicorn's gthread worker, and one-event
posts 1.29-1.30 ms against 1.58-1.63 (measured on 2026-12-04, 8 clients, two workers each).
"""

from __future__ import annotations

import gc
import os
import socket
import tempfile
import threading
import time

from granian.constants import Interfaces
from granian.server import Server

from ledger.config import Settings
from ledger.logs import config as log_config

GRACEFUL_SECONDS = 30
"""How long a stopping worker may take to finish the requests it holds before it is killed."""
GC_YOUNG_THRESHOLD = 10_000


class ConnectionRotation:
    """WSGI middleware that now and then answers with `Connection: close`, so that the
    client opens a new connection, which the kernel hands to one of the worker processes
    (each listens on the port itself). A keep-alive connection stays with the process that
    accepted it, so a few clients' long-lived connections could all end up on one process,
    bound by its interpreter lock while the other idles (one-event posts from 8 clients once
    split 45.7 CPU-seconds against 10.2 between two workers).

    A process closes one connection every `CONNECTION_SECONDS` divided by the requests it
    has in flight. Clients that wait for each answer have one request in flight per
    connection, so a process closes connections in proportion to those it holds, and one
    holding more than its share loses them faster than the kernel's draw gives them back:
    the split evens out (the kernel itself does not know which process is busy). Each
    connection lasts about `CONNECTION_SECONDS`; reconnecting on loopback costs far less
    than a request."""

    CONNECTION_SECONDS = 0.5

    def __init__(self, app, clock=time.monotonic):
        self.app = app
        self.clock = clock
        self._lock = threading.Lock()
        self._in_flight = 0
        self._last_close = clock()

    def __call__(self, environ, start_response):
        with self._lock:
            self._in_flight += 1
            now = self.clock()
            close = now - self._last_close >= self.CONNECTION_SECONDS / self._in_flight
            if close:
                self._last_close = now
        try:
            if not close:
                return self.app(environ, start_response)

            def closing(status, headers, exc_info=None):
                return start_response(status, [*headers, ("Connection", "close")], exc_info)

            return self.app(environ, closing)
        finally:
            with self._lock:
                self._in_flight -= 1


def wsgi_app():
    """Built in each worker process (granian loads it by name, as a factory), from the
    environment that `magledger serve` checked before it started the server.

    The cycle collector is set for a server's work, which makes few cycles and many objects:
    what the process holds once the app is built (modules, schemas, table metadata: about
    130,000 objects) lives as long as the process and is moved out of the collector's sight
    (`gc.freeze`), and the youngest generation is collected every `GC_YOUNG_THRESHOLD` new
    containers instead of 700. Measured over 80 500-event posts to two workers (two runs of
    each): 0.38-0.48 s of collections in the workers before, 0.13-0.18 s after, of about
    3.7 s of their CPU."""
    from api import create_app

    app = ConnectionRotation(create_app(settings=Settings.from_env()))
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    return app


class PortInUse(OSError):
    """Something already listens on the address `magledger serve` was asked to use."""


def refuse_a_port_in_use(host: str, port: int) -> None:
    """granian's workers listen with SO_REUSEPORT, with which a second server started on a
    port already served would listen beside the first, without a word, and take part of its
    connections. A plain bind fails while anything listens there."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise PortInUse(error.errno, f"cannot listen on {host}:{port}: {error.strerror}") from None


def run(settings: Settings, host: str, port: int, workers: int, threads: int) -> None:
    # Metrics counted in each worker process are added up at scrape time from files here.
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="magledger-metrics-")
    Server(
        "ledger.server:wsgi_app",
        factory=True,
        address=host,
        port=port,
        interface=Interfaces.WSGI,
        workers=workers,
        blocking_threads=threads,
        websockets=False,
        workers_kill_timeout=GRACEFUL_SECONDS,
        log_dictconfig=log_config(settings.log_format),
    ).serve()
