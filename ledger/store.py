"""The append-only event store.

Global order (SPEC 3.5). Positions are taken from the single `log_head` row: a group of
events takes head+1, head+2, ... and moves the head in the same transaction. Either the
group holds the row's lock from its first read (the locked path, and always on SQLite), or
it is written without the lock in one statement whose positions collide on the log's
primary key with any other writer's (the unlocked path, PostgreSQL, tried first). Either
way no two transactions can write the same positions, a transaction can only take
positions above a committed head, and so positions have no gaps (a rolled-back attempt
takes its positions back with it) and commit in order: a reader that has seen position N
can never later see a smaller one.

Throughput. A serialized commit per event would cap ingest at one fsync per event, so
concurrent appends in one process share a transaction (group commit): the first caller to
find no commit in progress becomes the leader, takes every queued post, decides each one
in memory against `CustodyState` (a rejected post is undone from the state and answered
with its error; the others are not affected), writes the survivors, and commits once.

On PostgreSQL a group of more than `PART_EVENTS` events is sent in parts of that size as
they are decided (psycopg's pipeline mode does not wait for each part's answer), so the
server inserts one part while the leader decides the next: a large group costs about the
larger of the two, not their sum. A post rejected after some of its rows were sent cannot
be taken back alone, so the group is then rolled back and decided again with nothing sent
before the end. A smaller group is sent whole, with its COMMIT, in one simple query.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from sqlalchemy import Connection, Engine, and_, bindparam, func, select
from sqlalchemy.exc import DBAPIError

from ledger import collector, custody, fastjson, merkle
from ledger.custody import CustodyState, LoggedEvent
from ledger.db import reader, replace_if_lost, unavailable, writer
from ledger.errors import Conflict, Invalid, LedgerError, Unauthenticated, Unavailable
from ledger.events import Clock, NewEvent, RecordedEvent, canonical_envelope, format_time, leaf_hash, utc_now
from ledger.parties import Party
from ledger.recorders import KeysRevoked, Write, WriteConflict, recorder_for
from ledger.schema import batch_access, batches, events, log_head

MAX_GROUP_EVENTS = 5000
PART_EVENTS = 100
"""Events per part sent while the rest of a group is decided (PostgreSQL)."""
CONTENDED_GROUPS = 20
"""After another writer beat the unlocked path, this many groups take the lock first."""
GATHER_SECONDS = 0.0002


class _Recheck(WriteConflict):
    """Not a conflict with another writer: a rejection to be decided again with look-ups,
    and with nothing sent before the group is decided."""


@dataclass
class AppendResult:
    receipts: list[dict]
    created: bool
    """False when every event was already in the log (an idempotent replay)."""


@dataclass
class _Post:
    actor: Party
    events: list[NewEvent]
    is_batch: bool
    done: bool = False
    result: AppendResult | None = None
    error: BaseException | None = None
    digests: list[str] = field(default_factory=list)
    key_id: str | None = None

    def outcome(self) -> AppendResult:
        if self.error is not None:
            raise self.error
        return self.result


class EventStore:
    def __init__(self, engine: Engine, clock: Clock = utc_now, keep_tree: bool = True,
                 on_revoked_keys: Callable[[Iterable[str]], None] | None = None):
        """`keep_tree=False` leaves the Merkle tree behind the log: only for measuring what
        keeping it costs (bench/merkle); such a log cannot give proofs. `on_revoked_keys` is
        told of the keys an append found revoked (`append`'s `key_id`)."""
        self.engine = engine
        self.on_revoked_keys = on_revoked_keys
        self.keep_tree = keep_tree
        self.clock = clock
        self._writer = writer(engine)
        self._reads = reader(engine)
        self._cond = threading.Condition()
        self._last_group_size = 0
        self._queue: deque[_Post] = deque()
        self._leading = False
        self._sends_parts = engine.dialect.name == "postgresql"
        self._conn: Connection | None = None
        self._contended = 0
        self._state = CustodyState()
        self._tree: merkle.CompactRange | None = None
        self._grown_tree: merkle.CompactRange | None = None

    # --- appending -----------------------------------------------------------------------

    def append(self, actor: Party, new_events: list[NewEvent], is_batch: bool = False,
               key_id: str | None = None) -> AppendResult:
        """Append one post atomically: every event is written, or none and an error is raised.

        `is_batch` names fields in errors as `events.<i>.<field>`, the way the poster sent them.
        `key_id`: the API key the post came with, when the caller has not checked whether it
        is revoked: the transaction that would write the post checks it, and the post is
        refused (Unauthenticated) if it is.
        """
        # Work that needs no lock is done here, in the caller's thread, not by the leader.
        post = _Post(actor, list(new_events), is_batch, key_id=key_id)
        post.digests = [event.content_digest(actor.party_id) for event in post.events]
        with self._cond:
            self._queue.append(post)
            while not post.done and self._leading:
                self._cond.wait()
            if post.done:
                return post.outcome()
            self._leading = True
        try:
            while not post.done:
                self._gather()
                with self._cond:
                    group = self._take_group()
                    self._last_group_size = len(group)
                with collector.paused():
                    self._commit_group(group)
                with self._cond:
                    self._cond.notify_all()
        finally:
            with self._cond:
                self._leading = False
                self._cond.notify_all()
        return post.outcome()

    def _gather(self) -> None:
        """When posts have been arriving together, give the next ones a moment to join.

        Writers that just got their receipts come straight back with their next post; a
        fraction of a millisecond lets them share this commit instead of waiting for the
        next one (PostgreSQL's commit_delay, one level up).
        """
        if self._last_group_size > 1 and len(self._queue) < self._last_group_size:
            time.sleep(GATHER_SECONDS)

    def _take_group(self) -> list[_Post]:
        first = self._queue.popleft()
        return [first, *self._take_queued(len(first.events), MAX_GROUP_EVENTS)]

    def _take_queued(self, count: int, limit: int) -> list[_Post]:
        """Queued posts, oldest first, as long as their events keep `count` within `limit`."""
        taken = []
        while self._queue and count + len(self._queue[0].events) <= limit:
            post = self._queue.popleft()
            taken.append(post)
            count += len(post.events)
        return taken

    def _connection(self) -> Connection:
        """The leader's connection, kept between groups (only one leader runs at a time)."""
        if self._conn is None:
            # Kept before it is set up, so that a connection found dead here is discarded
            # like one found dead later.
            self._conn = conn = self._writer.connect()
            if self._sends_parts:
                # The recorder sends BEGIN and COMMIT itself, with the statements between.
                conn.execution_options(isolation_level="AUTOCOMMIT")
            recorder_for(conn).use_for_appends()
            if conn.in_transaction():
                conn.commit()
        return self._conn

    def _drop_connection(self, error: DBAPIError | None = None) -> None:
        """Close the leader's connection. After a database `error` (the server may be gone)
        it is discarded without the pool's rollback, which would fail on a lost connection and
        log it as an error, and with the pool's other connections if the server is gone. So is
        a connection the driver already knows to be lost (the server went away between a
        conflict and this drop, seen in the PostgreSQL restart test)."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if conn.invalidated:
                pass
            elif error is not None:
                if not replace_if_lost(self.engine, conn, error.orig):
                    conn.invalidate()
            elif getattr(conn.connection.driver_connection, "broken", False):
                conn.invalidate()
            conn.close()
        except DBAPIError:
            pass

    def _commit_group(self, group: list[_Post]) -> None:
        try:
            try:
                if self._contended == 0 and self._state.head is not None and self._sends_parts:
                    self._commit_unlocked(group)
                else:
                    self._contended = max(self._contended - 1, 0)
                    self._commit_locked(group, optimistic=True, send_parts=self._sends_parts_of(group))
            except WriteConflict as conflict:
                rejected = isinstance(conflict, _Recheck)
                if not rejected:
                    self._contended = CONTENDED_GROUPS
                    self._drop_connection()
                try:
                    self._commit_locked(group, optimistic=False,
                                        send_parts=self._sends_parts_of(group) and not rejected)
                except _Recheck:
                    self._commit_locked(group, optimistic=False, send_parts=False)
        except KeysRevoked as revoked:
            checked = {post.key_id for post in group if post.key_id is not None}
            refused_keys = revoked.key_ids & checked or checked
            self._finish([post for post in group if post.key_id in refused_keys],
                         Unauthenticated("The API key has been revoked."))
            if self.on_revoked_keys is not None:
                self.on_revoked_keys(refused_keys)
            rest = [post for post in group if post.key_id not in refused_keys]
            if rest:
                self._commit_group(rest)
        except LedgerError as error:
            self._finish(group, error)
        except DBAPIError as error:
            self._drop_connection(error)
            if len(group) > 1:
                for post in group:
                    self._commit_group([post])
            else:
                self._finish(group, _database_error(error))
        except BaseException as error:
            self._drop_connection()
            self._finish(group, error)
            raise

    def _sends_parts_of(self, group: list[_Post]) -> bool:
        """Whether a group is large enough to send in parts while it is decided."""
        return self._sends_parts and sum(len(post.events) for post in group) > PART_EVENTS

    def close(self) -> None:
        with self._cond:
            self._drop_connection()

    @staticmethod
    def _finish(group: list[_Post], error: BaseException) -> None:
        for post in group:
            post.error, post.result, post.done = error, None, True

    def _commit_locked(self, group: list[_Post], optimistic: bool, send_parts: bool) -> None:
        """Lock the log head, look up what the cache lacks, decide, write, commit."""
        state = self._state
        recorder = recorder_for(self._connection())
        state.begin(recorder)
        try:
            with recorder.transaction(streamed=send_parts):
                head = state.lock_and_prefetch([(post.actor, post.events) for post in group], optimistic)
                if not send_parts:
                    self._join_waiting(group, state, optimistic)
                recorder.require_live_keys(_unchecked_keys(group))
                decided, position = self._decide_and_write(group, state, recorder, head, optimistic, send_parts)
        except BaseException:
            state.reset()
            raise
        self._settle(decided, position)

    def _join_waiting(self, group: list[_Post], state: CustodyState, optimistic: bool) -> None:
        """Add to a small group, now that it holds the log's lock, the posts queued while it
        waited for the lock (another process was committing): each would otherwise wait for
        this commit and then pay for a transaction of its own. The group stays small enough
        to be sent whole. The group's list is extended in place, before their look-ups, so
        that every outcome and retry of the group covers them, a failed look-up included."""
        with self._cond:
            joining = self._take_queued(sum(len(post.events) for post in group), PART_EVENTS)
            group.extend(joining)
        if joining:
            state.prefetch_more([(post.actor, post.events) for post in joining], optimistic)

    def _commit_unlocked(self, group: list[_Post]) -> None:
        """PostgreSQL's fast path: trust the cache, and wait for nobody.

        The group is decided against the cached state at the cached head, and the lock, the
        writes and the COMMIT travel in one round trip. If another writer has moved the head
        since this cache last committed, the positions this group takes already exist (or
        are being written), so the insert fails on the log's primary key; if another writer
        holds the lock (asked for without waiting, so that two writers never wait on each
        other), taking it fails. Either way nothing is committed and the caller retries
        under the lock, so commit order is still position order.
        """
        state = self._state
        recorder = recorder_for(self._connection())
        state.begin(recorder)
        try:
            send_parts = self._sends_parts_of(group)
            with recorder.transaction(streamed=send_parts):
                recorder.lock_without_waiting()
                recorder.require_live_keys(_unchecked_keys(group))
                head = state.prefetch([(post.actor, post.events) for post in group])
                decided, position = self._decide_and_write(group, state, recorder, head, optimistic=True,
                                                           send_parts=send_parts)
        except BaseException:
            state.reset()
            raise
        self._settle(decided, position)

    def _decide_and_write(self, group: list[_Post], state: CustodyState, recorder, head: int, optimistic: bool,
                          send_parts: bool):
        """Decide each post in order and write the accepted ones; returns the outcomes and the
        new head. A rejected post is undone from the state alone.

        A rejection decided while new ids were assumed absent may be wrong (an event_id
        assumed new may be a replay), so in that case the whole group is decided again with
        every id looked up.
        """
        decided: list[tuple[_Post, AppendResult | LedgerError]] = []
        recorded_at = format_time(self.clock())
        self._grown_tree = None
        rows = _GroupRows(recorder, head, self._growing_tree(recorder, head), PART_EVENTS if send_parts else None)
        for post in group:
            mark = state.mark()
            first = rows.position + 1
            try:
                result = self._decide(post, state, rows, recorded_at)
            except LedgerError as error:
                if optimistic:
                    raise _Recheck("a rejection decided on assumed-absent ids is checked again") from error
                state.rollback(mark)
                rows.take_back(first)
                decided.append((post, error))
                continue
            decided.append((post, result))
        if rows.position > head:
            rows.finish(state.writes())
        self._grown_tree = rows.tree
        return decided, rows.position

    def _growing_tree(self, recorder, head: int) -> merkle.CompactRange | None:
        """A copy of the tree's right edge at `head` (kept from the last commit, or read again
        when another process has written since), to grow with this group's leaves."""
        if not self.keep_tree:
            return None
        if self._tree is None or self._tree.size != head:
            self._tree = merkle.right_edge(recorder, head)
        return self._tree.copy()

    def _settle(self, decided: list[tuple[_Post, AppendResult | LedgerError]], position: int) -> None:
        self._state.committed(position)
        if self._grown_tree is not None and self._grown_tree.size == position:
            self._tree, self._grown_tree = self._grown_tree, None
        for post, outcome in decided:
            if isinstance(outcome, LedgerError):
                post.error = outcome
            else:
                post.result = outcome
            post.done = True

    def _decide(self, post: _Post, state: CustodyState, rows: _GroupRows, recorded_at: str) -> AppendResult:
        receipts, seen, first = [], set(), rows.position
        for index, event in enumerate(post.events):
            try:
                receipt, row = self._decide_one(post, index, state, rows.position, recorded_at, seen)
            except LedgerError as error:
                raise error.prefixed(f"events.{index}") if post.is_batch else error
            receipts.append(receipt)
            if row is not None:
                rows.add(row)
        return AppendResult(receipts, created=rows.position > first)

    def _decide_one(self, post: _Post, index: int, state: CustodyState, position: int,
                    recorded_at: str, seen: set[str]) -> tuple[dict, dict | None]:
        actor, event, digests = post.actor, post.events[index], post.digests
        if event.event_id in seen:
            raise Invalid("The same event_id appears twice in this post.", {"event_id": ["repeated in this post"]})
        seen.add(event.event_id)
        digest = digests[index]
        logged = state.event(event.event_id)
        if logged is not None:
            if logged.content_digest != digest:
                raise Conflict(f"Event {event.event_id} is already in the log with other content.",
                               {"event_id": ["already used for another event"]})
            return logged.receipt, None
        if event.expected_version is not None:
            current = state.batch(event.batch_id)
            version = current.version if current else 0
            if version != event.expected_version:
                raise Conflict(f"Stream {event.batch_id!r} is at version {version}, "
                               f"not {event.expected_version}.", {"expected_version": [f"stream is at {version}"]})
        effects = custody.apply(event, actor, state)
        batch = state.batch(event.batch_id)
        version = batch.version + 1
        state.put_batch(batch.with_version(version))
        position += 1
        leaf = leaf_hash(canonical_envelope(
            actor=actor.party_id, batch_id=event.batch_id, data_json=event.data_json, event_id=event.event_id,
            occurred_at=event.occurred_at, position=position, recorded_at=recorded_at, type=event.type,
            version=version))
        receipt = {"event_id": event.event_id, "position": position, "version": version,
                   "recorded_at": recorded_at, "leaf_hash": leaf}
        state.remember_event(LoggedEvent(event.event_id, event.batch_id, event.type, actor.party_id,
                                         digest, receipt, effects))
        row = {
            "position": position, "event_id": event.event_id, "type": event.type,
            "batch_id": event.batch_id, "version": version, "actor": actor.party_id,
            "occurred_at": event.occurred_at, "recorded_at": recorded_at, "data": event.data_json,
            "leaf_hash": leaf, "content_digest": digest, "effects": fastjson.dumps(effects),
        }
        return receipt, row

    # --- reading -------------------------------------------------------------------------

    def last_position(self) -> int:
        with self._reads.connect() as conn:
            return conn.execute(select(log_head.c.last_position).where(log_head.c.id == 1)).scalar_one()

    def get(self, event_id: str, visible_to: Party | None = None) -> RecordedEvent | None:
        """One event, or None when it does not exist or `visible_to` (a partner) may not see it."""
        as_partner = visible_to is not None and visible_to.role == "partner"
        with self._reads.connect() as conn:
            row = conn.execute(_EVENT_AS_PARTNER if as_partner else _EVENT,
                               {"event_id": event_id, "party_id": visible_to.party_id if as_partner else None}).first()
        return _recorded(row) if row else None

    def feed(self, after: int = 0, limit: int = 100, batch_id: str | None = None,
             event_type: str | None = None, visible_to: Party | None = None) -> list[RecordedEvent]:
        """Events after a position, in position order, optionally for one batch or type."""
        return [_recorded(row) for row in self._feed_rows(after, limit, batch_id, event_type, visible_to)]

    def _feed_rows(self, after: int, limit: int, batch_id: str | None = None, event_type: str | None = None,
                   visible_to: Party | None = None) -> list:
        query = select(*_ENVELOPE_COLUMNS).where(events.c.position > after)
        if batch_id is not None:
            query = query.where(events.c.batch_id == batch_id)
        if event_type is not None:
            query = query.where(events.c.type == event_type)
        query = _visible(query, visible_to).order_by(events.c.position).limit(limit)
        with self._reads.connect() as conn:
            return conn.execute(query).all()

    def effects_after(self, conn: Connection, after: int, limit: int,
                      until: int | None = None) -> list[tuple[RecordedEvent, dict]]:
        """Events after a position with the custody effects the append path computed for
        them, read on the caller's connection (a projection's transaction)."""
        query = select(*_ENVELOPE_COLUMNS, events.c.effects).where(events.c.position > after)
        if until is not None:
            query = query.where(events.c.position <= until)
        # On the driver's cursor, past SQLAlchemy's result rows: 16-20 µs an event read and
        # decoded, against 18-22 (measured on a million-event log; fetching alone is 5).
        rows = recorder_for(conn).rows(query.order_by(events.c.position).limit(limit))
        return [(_recorded(row), fastjson.loads(row[-1])) for row in rows]

    def stream(self, batch_id: str, after_version: int = 0, limit: int = 1000) -> list[RecordedEvent]:
        query = (select(*_ENVELOPE_COLUMNS)
                 .where(events.c.batch_id == batch_id, events.c.version > after_version)
                 .order_by(events.c.version).limit(limit))
        with self._reads.connect() as conn:
            return [_recorded(row) for row in conn.execute(query)]

    def iter_all(self, chunk: int = 10000) -> Iterator[RecordedEvent]:
        """Every event in position order. Each row is decoded as it is yielded, so a row that
        cannot be (a tampered log) raises ValueError at its own place in the sequence."""
        after = 0
        while True:
            page = self._feed_rows(after, chunk)
            for row in page:
                yield _recorded(row)
            if len(page) < chunk:
                return
            after = page[-1].position

    def can_see(self, party: Party, batch_id: str) -> bool:
        """Whether the batch exists and the party may read it (SPEC 1): an unknown batch and
        an invisible one get the same answer."""
        query = _VISIBLE_BATCH if party.role == "partner" else _BATCH
        with self._reads.connect() as conn:
            return conn.execute(query, {"batch_id": batch_id, "party_id": party.party_id}).first() is not None

    def count(self) -> int:
        with self._reads.connect() as conn:
            return conn.execute(select(func.count()).select_from(events)).scalar_one()


def _unchecked_keys(group: list[_Post]) -> list[str]:
    """The keys whose revocation the group's transaction checks."""
    return sorted({post.key_id for post in group if post.key_id is not None})


class _GroupRows:
    """The event rows of one group commit and the Merkle nodes they complete, sent to the
    database a part at a time (every `part_size` events, or all at `finish` when None)."""

    def __init__(self, recorder, head: int, tree: merkle.CompactRange | None, part_size: int | None):
        self.recorder, self.tree, self.part_size = recorder, tree, part_size
        self.position = head
        self.sent = head
        self.pending: list[dict] = []

    def add(self, row: dict) -> None:
        self.pending.append(row)
        self.position = row["position"]
        if self.part_size is not None and len(self.pending) >= self.part_size:
            self.recorder.write(self._part())

    def take_back(self, first: int) -> None:
        """Forget the rows from position `first` on (a rejected post's), if none was sent."""
        if first <= self.sent:
            raise _Recheck("a post rejected after some of its rows were sent is decided again")
        del self.pending[first - self.sent - 1:]
        self.position = first - 1

    def finish(self, state_writes: list[Write]) -> None:
        """The last part, the rows of the state tables, and the new head, in one statement."""
        self.recorder.write([*self._part(), *state_writes], head=self.position)

    def _part(self) -> list[Write]:
        rows, self.pending, self.sent = self.pending, [], self.position
        if self.tree is None:
            return [Write("events", rows)]
        completed = self.tree.extend(bytes.fromhex(row["leaf_hash"]) for row in rows)
        return [Write("events", rows), Write("merkle_nodes", merkle.node_rows(completed))]


_ENVELOPE_COLUMNS = (events.c.event_id, events.c.type, events.c.batch_id, events.c.actor, events.c.occurred_at,
                     events.c.recorded_at, events.c.position, events.c.version, events.c.data, events.c.leaf_hash)


def _visible(query, party: Party | None):
    if party is None or party.role != "partner":
        return query
    return query.join(batch_access, and_(batch_access.c.batch_id == events.c.batch_id,
                                         batch_access.c.party_id == party.party_id))


# Built once: every authenticated read runs these, and building a statement per call cost
# about as much as running it.
_EVENT = select(*_ENVELOPE_COLUMNS).where(events.c.event_id == bindparam("event_id"))
_EVENT_AS_PARTNER = _EVENT.join(batch_access, and_(batch_access.c.batch_id == events.c.batch_id,
                                                   batch_access.c.party_id == bindparam("party_id")))
_BATCH = select(batches.c.batch_id).where(batches.c.batch_id == bindparam("batch_id"))
_VISIBLE_BATCH = select(batch_access.c.batch_id).where(batch_access.c.party_id == bindparam("party_id"),
                                                       batch_access.c.batch_id == bindparam("batch_id"))


def _recorded(row) -> RecordedEvent:
    """A row selected with `_ENVELOPE_COLUMNS` first; read by position, which costs a third
    of reading by name when a rebuild reads millions of rows."""
    event_id, type_, batch_id, actor, occurred_at, recorded_at, position, version, data, leaf_hash = row[:10]
    return RecordedEvent(event_id, type_, batch_id, actor, occurred_at, recorded_at, position, version,
                         fastjson.loads(data), leaf_hash)


def _database_error(error: DBAPIError) -> LedgerError:
    if unavailable(error):
        return Unavailable("The database is not reachable. Retry later: a post retried with the same event_id is "
                           "recorded once.")
    return error
