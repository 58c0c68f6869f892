"""The projection engine (SPEC 6): named projections folded from the log in position order.

Each projection has generations. A generation's checkpoint (the last position it applied)
is a row of `projection_state`, written in the same transaction as the rows the events up
to it changed (every step of a catch-up; every `FLUSH_EVENTS` of a build from position 0,
which holds its writes in memory meanwhile), so a fold killed at any moment resumes without
losing or applying an event twice. Concurrent catch-ups of one generation serialize on that
row's lock; a build that finds the checkpoint moved by another process drops what it held
since and goes on from there.

Exactly one generation of a projection is `serving`; queries join it by name and status
in the same statement that reads the rows, so they never mix generations. A rebuild (or a
projection whose code version changed) builds a new `building` generation beside it from
position 0, and switches over in one transaction once it has caught up; the retired rows
are deleted afterwards. Because positions commit in order (SPEC 3.5), reading
`position > checkpoint` never skips an event.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, ThreadPoolExecutor, wait
from dataclasses import dataclass

from sqlalchemy import Engine, Table, and_, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from ledger import collector
from ledger.db import make_engine, reader, writer
from ledger.events import Clock, RecordedEvent, format_time, utc_now
from ledger.projections.rows import GenerationRows, Memory, RowCache
from ledger.recorders import recorder_for
from ledger.schema import log_head, metadata, projection_state
from ledger.store import EventStore

BATCH_SIZE = 5000
FLUSH_EVENTS = 100_000
"""How far a build from position 0 may run ahead of its checkpoint with its rows held in
memory (`Memory.holds_writes`): writing them once, mostly as new rows, costs a fraction of
writing each step's, and a build killed meanwhile repeats at most this many events."""
LONG_FOLD_EVENTS = 50_000
"""A fold further than this behind the head refreshes the planner's statistics first."""


class Projection:
    """A fold of the log into tables keyed by generation. Subclasses set `name`, `version`
    (bump it when `apply` changes, and the engine rebuilds) and `tables`."""

    name: str
    version: int
    tables: tuple[Table, ...]
    requires: tuple[str, ...] = ()
    """Projections whose serving rows `apply` reads: they are caught up in the same steps."""
    rebuild_cost: float = 1.0
    """Seconds a rebuild of the bench's 1,000,000-event log spends on this projection: its
    fold as timed, plus its part of the timed COPY by the rows it writes. What
    `rebuild_groups` balances."""

    def memory(self) -> Memory | None:
        """What a build from position 0 keeps between its steps (`rows.memory`), so that it
        reads less from the database; by default a copy of the generation's own rows, which
        `rows.select` then answers from."""
        return RowCache()

    def apply(self, rows: GenerationRows, events: list[tuple[RecordedEvent, dict]]) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class Progress:
    names: str
    position: int
    head: int
    applied: int


class ProjectionEngine:
    def __init__(self, engine: Engine, store: EventStore, projections: Iterable[Projection],
                 clock: Clock = utc_now, batch_size: int = BATCH_SIZE, long_fold: int = LONG_FOLD_EVENTS,
                 flush_events: int = FLUSH_EVENTS):
        self.engine = engine
        self.store = store
        self.projections = {p.name: p for p in projections}
        self.clock = clock
        self.batch_size = batch_size
        self.long_fold = long_fold
        self.flush_events = flush_events
        self._writer = writer(engine)
        self._reads = reader(engine)
        self._memories: dict[tuple[str, int], Memory] = {}
        """What the builds from position 0 in this process hold, valid while their checkpoint
        is still the one they last wrote."""

    # --- catching up ---------------------------------------------------------------------

    def catch_up(self, names: Iterable[str] | None = None) -> int:
        """Bring the serving generations up to the head, with what they require, in the same
        steps; returns the events read."""
        targets = [(name, self._serving_or_new(name)) for name in self._with_requirements(names or self.projections)]
        applied, refreshed = 0, False
        while (step := self._step(targets)).applied:
            applied += step.applied
            if not refreshed and step.head - step.position > self.long_fold:
                # A long way to go (a first build, a worker back from an outage).
                self.refresh_statistics()
                refreshed = True
        return applied

    def _step(self, targets: list[tuple[str, int]]) -> Progress:
        """Apply the next batch of events to each (projection, generation), each with its
        checkpoint, in one transaction; the batch is read once for all of them."""
        try:
            return self._apply_next(targets)
        except BaseException:
            # Rows written in memory by a transaction that did not commit are not the truth.
            for target in targets:
                self._memories.pop(target, None)
            raise

    def _apply_next(self, targets: list[tuple[str, int]]) -> Progress:
        with collector.paused(), self._writer.begin() as conn:
            recorder_for(conn).prefer_index_lookups()
            rows = conn.execute(select(projection_state.c.name, projection_state.c.generation,
                                       projection_state.c.position)
                                .where(or_(*(and_(projection_state.c.name == name,
                                                  projection_state.c.generation == generation)
                                             for name, generation in targets)))
                                # One lock order for every catch-up, whatever projections it names.
                                .order_by(projection_state.c.name, projection_state.c.generation)
                                .with_for_update()).all()
            committed = {(row.name, row.generation): row.position for row in rows}
            memories = {target: self._memory(*target, committed[target]) for target in targets}
            applied = {target: memory.position if memory is not None else committed[target]
                       for target, memory in memories.items()}
            start = min(applied.values())
            head = conn.execute(select(log_head.c.last_position)).scalar_one()
            batch = self.store.effects_after(conn, start, self.batch_size)
            last = batch[-1][0].position if batch else start
            caught_up = len(batch) < self.batch_size
            now = format_time(self.clock())
            # In the targets' order: a projection may read the rows of those before it.
            for target in targets:
                name, generation = target
                memory = memories[target]
                generation_rows = GenerationRows(conn, generation, memory)
                unseen = [item for item in batch if item[0].position > applied[target]]
                if unseen:
                    self.projections[name].apply(generation_rows, unseen)
                    applied[target] = last
                if applied[target] == committed[target]:
                    continue
                if memory is not None:
                    memory.position = applied[target]
                    if not (caught_up or memory.full or not memory.holds_writes
                            or applied[target] - committed[target] >= self.flush_events):
                        continue
                    generation_rows.flush()
                    memory.committed = applied[target]
                conn.execute(update(projection_state)
                             .where(projection_state.c.name == name, projection_state.c.generation == generation)
                             .values(position=applied[target], updated_at=now))
        return Progress(",".join(name for name, _ in targets), last, head, len(batch))

    def _memory(self, name: str, generation: int, position: int) -> Memory | None:
        """What this process holds of a generation it is building, if it still starts from
        what is committed (nobody else advanced it), and unless it has grown too big and holds
        nothing unwritten."""
        memory = self._memories.get((name, generation))
        if memory is not None and (memory.committed != position or memory.full and memory.position == position):
            del self._memories[(name, generation)]
            return None
        return memory

    def _with_requirements(self, names: Iterable[str]) -> list[str]:
        wanted = set(names)
        for name in list(wanted):
            wanted.update(self.projections[name].requires)
        return [name for name in self.projections if name in wanted]

    def _serving_or_new(self, name: str) -> int:
        """The serving generation; a projection never built starts serving at position 0,
        and one whose code version changed is rebuilt first."""
        projection = self.projections[name]
        row = self._state(name, "serving")
        if row is None:
            return self._create(name, "serving")
        if row.version != projection.version:
            return self.rebuild([name])[name]
        return row.generation

    # --- rebuilding ----------------------------------------------------------------------

    def rebuild(self, names: Iterable[str] | None = None,
                on_progress: Callable[[Progress], None] | None = None, processes: int = 1) -> dict[str, int]:
        """Build a new generation of each projection beside the serving one and switch each
        over once caught up. With `processes` above 1 (PostgreSQL only), the groups of
        `rebuild_groups` fold at the same time in processes of their own; this process then
        applies what arrived meanwhile and switches.

        A rebuild interrupted at any point resumes from its own checkpoints when called again.
        Returns the new serving generation of each projection.
        """
        names = list(names or self.projections)
        targets = self.start_rebuild(names)
        if processes > 1:
            self.build_in_processes(targets, processes, on_progress)
        self.finish_rebuild(targets, on_progress)
        return {name: self._state(name, "serving").generation for name in names}

    def rebuild_groups(self, names: Iterable[str], processes: int = 2) -> list[list[str]]:
        """How a rebuild splits across `processes`: the costliest projection first, each to
        the group with the least `rebuild_cost` so far, so that the groups end together (a
        process left folding alone uses one core of the machine). Every projection reads only
        the serving rows of others, and no generation switches before every group is done,
        so any split is independent; each group reads the log once for all its members."""
        names = list(names)
        groups: list[list[str]] = [[] for _ in range(max(1, min(processes, len(names))))]
        loads = [0.0] * len(groups)
        for name in sorted(names, key=lambda n: -self.projections[n].rebuild_cost):
            lightest = loads.index(min(loads))
            groups[lightest].append(name)
            loads[lightest] += self.projections[name].rebuild_cost
        order = list(self.projections)
        return [sorted(group, key=order.index) for group in groups if group]

    def parallel_groups(self, targets: dict[str, int], processes: int) -> list[dict[str, int]]:
        """The targets of a rebuild split into the groups that may fold at once; a single group
        when one process is asked for, or on SQLite, whose single writer would make them take
        turns."""
        if self.engine.dialect.name != "postgresql" or processes < 2:
            return [dict(targets)] if targets else []
        return [{name: targets[name] for name in group} for group in self.rebuild_groups(targets, processes)]

    def build_in_processes(self, targets: dict[str, int], processes: int,
                           on_progress: Callable[[Progress], None] | None = None) -> None:
        """Bring these building generations close to the head, each group of `rebuild_groups`
        in a process of its own, without switching. Does nothing on SQLite, whose single
        writer would make the processes take turns."""
        groups = self.parallel_groups(targets, processes)
        if len(groups) < 2:
            return
        self.refresh_statistics()  # once here, not by every process at once
        url = self.engine.url.render_as_string(hide_password=False)
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(processes, len(groups)), mp_context=context) as pool:
            futures = [pool.submit(_build_group, url, [self.projections[name] for name in group], group,
                                   self.batch_size, self.flush_events) for group in groups]
            while wait(futures, timeout=0.5, return_when=FIRST_EXCEPTION).not_done:
                if on_progress:
                    on_progress(self._building_progress(targets))
            for future in futures:
                future.result()

    def _building_progress(self, targets: dict[str, int]) -> Progress:
        head = self.store.last_position()
        with self._reads.connect() as conn:
            position = conn.execute(select(func.min(projection_state.c.position)).where(or_(*(
                and_(projection_state.c.name == name, projection_state.c.generation == generation)
                for name, generation in targets.items())))).scalar()
        return Progress(",".join(targets), position or 0, head, 0)

    def start_rebuild(self, names: Iterable[str] | None = None) -> dict[str, int]:
        """The building generation of each projection: the interrupted one if there is one of
        the current code version, else a new one at position 0.

        What the projections read (the serving rows of those they require, which are complete)
        is caught up first. A projection never built has nothing to be rebuilt beside: it is
        built here as its serving generation, with what it reads in the same steps, and gets
        no building one."""
        names = list(names or self.projections)
        unbuilt = [name for name in names if self._state(name, "serving") is None]
        required = {r for name in names for r in self.projections[name].requires} - set(names)
        if required or unbuilt:
            self.catch_up([*required, *unbuilt])
        targets = {}
        for name in names:
            if name in unbuilt:
                continue
            building = self._state(name, "building")
            resumable = building is not None and building.version == self.projections[name].version
            targets[name] = building.generation if resumable else self._create(name, "building")
        return targets

    def finish_rebuild(self, targets: dict[str, int],
                       on_progress: Callable[[Progress], None] | None = None) -> dict[str, int]:
        """Bring these building generations up to the head and switch to them. One that is
        no longer building (another process finished it) is left alone, so a retried job
        never starts a second rebuild."""
        switched = [name for name, generation in self.build(targets, on_progress) if self._switch(name, generation)]
        # Deleting a retired generation's millions of rows is the server's work, one core per
        # statement: on PostgreSQL each projection's on a connection of its own, at once
        # (SQLite has one writer).
        at_once = len(switched) if self.engine.dialect.name == "postgresql" else 1
        with ThreadPoolExecutor(max_workers=max(1, at_once)) as pool:
            list(pool.map(self._drop_retired, switched))
        return dict(targets)

    def build(self, targets: dict[str, int],
              on_progress: Callable[[Progress], None] | None = None) -> list[tuple[str, int]]:
        """Bring those of these generations still building up to the head, without switching;
        returns them."""
        states = {(name, generation): self._generation(name, generation) for name, generation in targets.items()}
        pending = [key for key, state in states.items() if state is not None and state.status == "building"]
        if pending and self.store.last_position() - min(states[key].position for key in pending) > self.long_fold:
            self.refresh_statistics()
        # Through a helper, so that no local of this frame keeps a memory alive after the
        # `finally` below lets it go.
        self._start_memories([key for key in pending if states[key].position == 0])
        # A build keeps most of what it makes until it ends; the collector's passes over
        # that growing heap after every step were a tenth of a million-event rebuild. What
        # it kept is let go before the collector resumes; while a local still held the last
        # memory, the collector's first pass walked its ten million objects, 2.2 s of a 35 s
        # build of the findings (timed by a `gc.callbacks` hook).
        with collector.paused():
            try:
                while pending:
                    step = self._step(pending)
                    if on_progress:
                        on_progress(step)
                    if step.applied == 0:
                        break
            finally:
                for key in pending:
                    self._memories.pop(key, None)
        return pending

    def _start_memories(self, keys: list[tuple[str, int]]) -> None:
        """A fresh memory for each of these generations building from position 0."""
        for name, generation in keys:
            memory = self.projections[name].memory()
            if memory is not None:
                self._memories[(name, generation)] = memory

    def refresh_statistics(self) -> list[str]:
        """Analyze the stale tables a fold reads (the log, the write-side state, every
        projection's rows); returns their names. A rebuild reads millions of rows by key, and
        a plan made without statistics can cost ten times the right one."""
        with self._reads.connect() as conn:
            return recorder_for(conn).refresh_statistics(metadata.tables)

    def resume_rebuilds(self) -> dict[str, int]:
        """Finish every rebuild that was interrupted (its process killed), from its own
        checkpoints. Safe beside a rebuild still running: steps serialize on the checkpoint
        rows, so the two share the work instead of repeating it."""
        interrupted = {name: row.generation for name in self.projections
                       if (row := self._state(name, "building")) is not None
                       and row.version == self.projections[name].version}
        return self.finish_rebuild(interrupted) if interrupted else {}

    def _switch(self, name: str, generation: int) -> bool:
        """Serve the new generation: under the serving row's lock, apply what arrived since
        the last step, then swap statuses in the same transaction. False if it was no longer
        building (another process switched it)."""
        projection = self.projections[name]
        with self._writer.begin() as conn:
            rows = conn.execute(select(projection_state).where(projection_state.c.name == name)
                                .with_for_update()).all()
            mine = next((r for r in rows if r.generation == generation), None)
            if mine is None or mine.status != "building":
                return False
            position = mine.position
            while batch := self.store.effects_after(conn, position, self.batch_size):
                projection.apply(GenerationRows(conn, generation), batch)
                position = batch[-1][0].position
            now = format_time(self.clock())
            conn.execute(update(projection_state)
                         .where(projection_state.c.name == name, projection_state.c.status == "serving")
                         .values(status="retired", updated_at=now))
            conn.execute(update(projection_state)
                         .where(projection_state.c.name == name, projection_state.c.generation == generation)
                         .values(status="serving", position=position, updated_at=now))
        return True

    def _drop_retired(self, name: str) -> None:
        projection = self.projections[name]
        with self._writer.begin() as conn:
            retired = conn.execute(select(projection_state.c.generation).where(
                projection_state.c.name == name, projection_state.c.status == "retired")).scalars().all()
            for generation in retired:
                for table in projection.tables:
                    conn.execute(delete(table).where(table.c.generation == generation))
                conn.execute(delete(projection_state).where(projection_state.c.name == name,
                                                            projection_state.c.generation == generation))

    def _create(self, name: str, status: str) -> int:
        """A new generation at position 0. Two processes creating the first serving generation
        at once collide on its key; the loser then serves the winner's."""
        try:
            return self._insert_generation(name, status)
        except IntegrityError:
            existing = self._state(name, status)
            if existing is None:
                raise
            return existing.generation

    def _insert_generation(self, name: str, status: str) -> int:
        with self._writer.begin() as conn:
            generation = (conn.execute(select(func.max(projection_state.c.generation))
                                       .where(projection_state.c.name == name)).scalar() or 0) + 1
            conn.execute(insert(projection_state).values(
                name=name, generation=generation, version=self.projections[name].version, position=0,
                status=status, updated_at=format_time(self.clock())))
        return generation

    def _status(self, name: str, generation: int) -> str | None:
        row = self._generation(name, generation)
        return row.status if row is not None else None

    def _generation(self, name: str, generation: int):
        with self._reads.connect() as conn:
            return conn.execute(select(projection_state).where(
                projection_state.c.name == name, projection_state.c.generation == generation)).first()

    def _state(self, name: str, status: str):
        with self._reads.connect() as conn:
            return conn.execute(select(projection_state).where(
                projection_state.c.name == name, projection_state.c.status == status)).first()

    # --- reading -------------------------------------------------------------------------

    def positions(self) -> dict[str, int]:
        """The position each serving projection has reached."""
        with self._reads.connect() as conn:
            rows = conn.execute(select(projection_state.c.name, projection_state.c.position)
                                .where(projection_state.c.status == "serving")).all()
        found = dict(rows)
        return {name: found.get(name, 0) for name in self.projections}

    def position(self) -> int:
        """The position every projection has reached (the least of them)."""
        return min(self.positions().values(), default=0)

    def wait_for(self, position: int, timeout: float, poll: float = 0.05) -> bool:
        """Whether every projection reaches `position` within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while self.position() < position:
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll)
        return True

    def digest(self, name: str) -> str:
        """SHA-256 over the serving generation's rows, for comparing two builds."""
        projection = self.projections[name]
        hasher = hashlib.sha256()
        with self._reads.connect() as conn:
            generation = conn.execute(select(projection_state.c.generation).where(
                projection_state.c.name == name, projection_state.c.status == "serving")).scalar()
            for table in projection.tables:
                columns = [c for c in table.columns if c.name != "generation"]
                keys = [c for c in table.primary_key.columns if c.name != "generation"]
                for row in conn.execute(select(*columns).where(table.c.generation == generation).order_by(*keys)):
                    hasher.update(json.dumps([table.name, *row], default=str).encode())
        return hasher.hexdigest()


def _build_group(url: str, projections: list[Projection], targets: dict[str, int], batch_size: int,
                 flush_events: int) -> None:
    """One group of a rebuild split across processes, in its own process and connections."""
    engine = make_engine(url)
    try:
        ProjectionEngine(engine, EventStore(engine), projections, batch_size=batch_size,
                         flush_events=flush_events).build(targets)
    finally:
        engine.dispose()
