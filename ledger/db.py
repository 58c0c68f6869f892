"""Engines and migrations for the two databases the ledger runs on."""

from __future__ import annotations

import functools
import threading
import weakref

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.sql import Select


def make_engine(url: str, pool_size: int = 10) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(connection):
            # A writer must hold SQLite's write lock from its first read, or two writers
            # that both read the log head deadlock on upgrade; readers begin deferred.
            immediate = connection.get_execution_options().get("sqlite_immediate", False)
            connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    return _postgres_engine(url, pool_size)


def _postgres_engine(url, pool_size: int, **options) -> Engine:
    # Plan every execution with its parameters: a cached generic plan made while a table
    # was small keeps choosing sequential scans long after the table has grown.
    # No JIT compilation: every statement here is short, and where sequential scans are
    # priced out (`prefer_index_lookups`) a scan of the few rows of `parties` costs more
    # than `jit_above_cost`; it was compiled at every catch-up step, 10 ms (100 ms the first
    # time) for a query that runs in 0.5.
    # No pre-ping: it costs a round trip per checkout. A connection found dead raises a
    # disconnect error, SQLAlchemy then replaces the whole pool, and the caller answers 503.
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size,
                         connect_args={"options": "-c plan_cache_mode=force_custom_plan -c jit=off"}, **options)


# SQLSTATEs of a database that is up but cannot write: a read-only transaction, a standby.
_READ_ONLY = {"25006"}


def unavailable(error: DBAPIError) -> bool:
    """Whether the database could not take the work now (down, restarting, refusing
    connections, read-only, full), rather than refusing it: the caller may retry later."""
    if isinstance(error, OperationalError | InterfaceError) or error.connection_invalidated:
        return True
    return getattr(error.orig, "sqlstate", None) in _READ_ONLY


def writer(engine: Engine) -> Engine:
    """The same engine, with transactions that take SQLite's write lock at BEGIN."""
    return engine.execution_options(sqlite_immediate=True)


def reader(engine: Engine) -> Engine:
    """An engine for single-statement reads. On PostgreSQL it has a pool of its own whose
    connections stay in autocommit: no BEGIN and ROLLBACK round trips around a look-up, and
    no switching a shared connection into autocommit and back at each checkout, which cost
    70 µs of CPU a statement (236 against 168, the key check, measured). Made once per
    engine, and disposed with it."""
    if engine.dialect.name != "postgresql":
        return engine
    with _READERS_LOCK:
        reads = _READERS.get(engine)
        if reads is None:
            reads = _READERS[engine] = _postgres_engine(engine.url, engine.pool.size(), isolation_level="AUTOCOMMIT")
            event.listen(engine, "engine_disposed", lambda _engine: reads.dispose())
    return reads


_READERS: weakref.WeakKeyDictionary[Engine, Engine] = weakref.WeakKeyDictionary()
_READERS_LOCK = threading.Lock()


def first_row(engine: Engine, statement: Select, params: dict) -> tuple | None:
    """The first row of a statement built once, run on the driver's cursor: for the look-up
    that every request makes (the key check), whose execution through SQLAlchemy took 120 µs
    of CPU against 64 (measured on PostgreSQL). Driver errors are raised as SQLAlchemy's, and
    after a lost connection the pool is replaced, as SQLAlchemy itself does."""
    sql, order = _driver_sql(statement, engine.dialect)
    args = tuple(params[name] for name in order) if order is not None else params
    with engine.connect() as conn:
        dbapi_connection = conn.connection.dbapi_connection
        try:
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute(sql, args)
                return cursor.fetchone()
            finally:
                cursor.close()
        except engine.dialect.loaded_dbapi.Error as error:
            lost = replace_if_lost(engine, conn, error)
            raise DBAPIError.instance(sql, args, error, engine.dialect.loaded_dbapi.Error,
                                      connection_invalidated=lost) from error


def replace_if_lost(engine: Engine, conn: Connection, error: BaseException) -> bool:
    """After a driver error on a connection used past SQLAlchemy's execution: when the error
    says the server is gone, invalidate the connection and replace the pool's others too
    (sessions are cut together: a restart, a failover, an operator), as SQLAlchemy does when
    it meets a lost connection itself. Returns whether it was lost."""
    lost = engine.dialect.is_disconnect(error, conn.connection.dbapi_connection, None)
    if lost:
        conn.invalidate(error)
        engine.dispose(close=False)
    return lost


@functools.cache
def _driver_sql(statement: Select, dialect: Dialect) -> tuple[str, tuple[str, ...] | None]:
    """The statement's SQL for the driver, and the order of its parameters where the driver
    takes them by position (SQLite); None where it takes them by name (psycopg)."""
    compiled = statement.compile(dialect=dialect)
    return str(compiled), tuple(compiled.positiontup) if compiled.positional else None


def snapshot(engine: Engine) -> Engine:
    """The same engine for reads that must see one state of the database from their first
    statement to their last: REPEATABLE READ on PostgreSQL; a read transaction on SQLite
    (WAL) already is one. Use it with `begin()`."""
    if engine.dialect.name == "postgresql":
        return engine.execution_options(isolation_level="REPEATABLE READ")
    return engine


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", "ledger:migrations")
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply every pending migration, or those up to `revision` (idempotent)."""
    command.upgrade(alembic_config(engine), revision)
