"""Who holds what: the write-side state, standing (SPEC 3.2) and the reject rules (SPEC 3.3).

`CustodyState` is read from and written to the database inside the store's append
transaction, under the log's lock, so every standing decision sees exactly the events
before it. Business anomalies (shipping more than one holds, a receipt by someone else)
are recorded, never rejected: holdings are signed sums and the rules judge them later.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from ledger import fastjson
from ledger.errors import Conflict, Forbidden, Invalid, NotFound
from ledger.events import NewEvent, mass_to_mg
from ledger.parties import Party
from ledger.recorders import SqlRecorder, Write

REGULATOR_TYPES = frozenset({"enduse.declared", "event.voided"})
NEW_STREAM_TYPES = frozenset({"batch.registered", "batch.transformed"})


@dataclass(frozen=True, slots=True)
class Batch:
    batch_id: str
    version: int
    origin: str
    registrant: str | None
    material: str | None
    origin_country: str | None
    remaining_mg: int

    def as_row(self) -> dict:
        return {"batch_id": self.batch_id, "version": self.version, "origin": self.origin,
                "registrant": self.registrant, "material": self.material,
                "origin_country": self.origin_country, "remaining_mg": self.remaining_mg}

    # dataclasses.replace() is general and slow; these two run for nearly every event.
    def with_version(self, version: int) -> Batch:
        return Batch(self.batch_id, version, self.origin, self.registrant, self.material,
                     self.origin_country, self.remaining_mg)

    def with_remaining(self, remaining_mg: int) -> Batch:
        return Batch(self.batch_id, self.version, self.origin, self.registrant, self.material,
                     self.origin_country, remaining_mg)


@dataclass(frozen=True)
class Shipment:
    shipment_ref: str
    batch_id: str
    from_party: str
    to_party: str
    mass_mg: int
    destination_country: str
    status: str
    shipped_event_id: str


@dataclass(frozen=True)
class LoggedEvent:
    """What the append path needs to know of an event already in the log."""

    event_id: str
    batch_id: str
    type: str
    actor: str
    content_digest: str
    receipt: dict
    effects: dict


_ABSENT = object()
_NONE = (None, _ABSENT)
"""What a batch was before this transaction when the transaction creates it."""


def _logged_event(row: dict) -> LoggedEvent:
    receipt = {name: row[name] for name in ("event_id", "position", "version", "recorded_at", "leaf_hash")}
    return LoggedEvent(row["event_id"], row["batch_id"], row["type"], row["actor"], row["content_digest"],
                       receipt, fastjson.loads(row["effects"]))


class CustodyState:
    """The write-side tables as the append leader sees them, cached between transactions.

    Rows are loaded on first use (or prefetched for a whole group), changed in memory with
    an undo journal so that one rejected post leaves no trace, and written back through
    `writes`: each row whose value differs from the one it had when this transaction first
    touched it (which is the database's, since the cache holds only committed values).

    The cache stays valid from one group commit to the next only while nobody else has
    written: every write to these tables happens under the log's lock in a transaction that
    moves `log_head`, so a head that differs from the one this cache last committed means
    another process wrote, and the cache is dropped. Ids that a post creates (new events,
    batches) are assumed absent without a look-up when `optimistic`; the unique constraints
    check that assumption at insert, and a violation makes the store retry the group with
    every id looked up.
    """

    MAX_CACHED = 200_000

    def __init__(self):
        self.recorder: SqlRecorder | None = None
        self.head: int | None = None
        self.reset()

    def reset(self) -> None:
        names = ("batch", "holding", "shipment", "event", "void", "party", "access", "parents")
        self._tables: dict[str, dict] = {name: {} for name in names}
        self._before: dict[str, dict] = {name: {} for name in names}
        self._journal: list[tuple[str, Any, Any]] = []
        self._assumed: list[tuple[str, Any]] = []
        self.new_lineage: list[dict] = []
        self.head = None

    def begin(self, recorder: SqlRecorder) -> None:
        self.recorder = recorder

    def committed(self, head: int) -> None:
        """The transaction committed: what was written is now what the database holds."""
        for before in self._before.values():
            before.clear()
        for table, key in self._assumed:
            if self._tables[table].get(key, True) is None:
                self._tables[table].pop(key, None)
        self._assumed.clear()
        # Events are looked up again when replayed or voided; caching every one appended
        # would only feed the garbage collector.
        for table in ("event", "void"):
            self._tables[table].clear()
        self._journal.clear()
        self.new_lineage = []
        self.recorder = None
        self.head = head
        if sum(len(rows) for rows in self._tables.values()) > self.MAX_CACHED:
            self.reset()
            self.head = head

    # --- loading -------------------------------------------------------------------------

    def lock_and_prefetch(self, posts: list[tuple[Party, list[NewEvent]]], optimistic: bool) -> int:
        """Take the log's lock and load the rows a group of posts needs that the cache lacks,
        in one round trip where the database allows; returns the last position."""
        lookups = self._plan(posts, optimistic)
        head, found = self.recorder.lock_and_select(list(lookups.values()))
        if head != self.head:
            self.reset()
            lookups = self._plan(posts, optimistic)
            found = self.recorder.select_many(list(lookups.values()))
        self._absorb_all(lookups, found)
        self.head = head
        return head

    def prefetch(self, posts: list[tuple[Party, list[NewEvent]]]) -> int:
        """Load what the cache lacks without the lock, trusting the cached head; returns it.

        For the store's unlocked path: if another writer has moved the head since, the
        group's positions collide with that writer's on the log's primary key and nothing
        decided from this cache is written.
        """
        self.prefetch_more(posts, optimistic=True)
        return self.head

    def prefetch_more(self, posts: list[tuple[Party, list[NewEvent]]], optimistic: bool) -> None:
        """Load what more posts need that the cache lacks, in a transaction already begun."""
        lookups = self._plan(posts, optimistic)
        self._absorb_all(lookups, self.recorder.select_many(list(lookups.values())))

    def _absorb_all(self, lookups: dict[str, tuple], found: list[list[dict]]) -> None:
        results = dict(zip(lookups, found))
        self._absorb_batches(lookups["batch"][2], results["batch"])
        self._absorb_holdings(lookups["holding"][2], results["holding"])
        self._absorb_shipments(lookups["shipment"][2], results["shipment"])
        self._absorb_events(lookups["event"][2], results["event"])
        self._absorb_voids(lookups["void"][2], results["void"])
        self._absorb_parties(lookups["party"][2], results["party"])
        self._absorb_access(lookups["access"][2], results["access"])
        self._absorb_parents(lookups["parents"][2], results["parents"])

    def _plan(self, posts: list[tuple[Party, list[NewEvent]]], optimistic: bool) -> dict[str, tuple]:
        """The look-ups a group needs, given what is cached and what may be assumed absent."""
        existing, granted, targets, refs, party_ids = (set() for _ in range(5))
        created_batches, created_events = set(), set()
        for actor, new_events in posts:
            self._tables["party"].setdefault(actor.party_id, actor)
            for event in new_events:
                data = event.data
                created_events.add(event.event_id)
                if event.type in NEW_STREAM_TYPES:
                    created_batches.add(event.batch_id)
                else:
                    existing.add(event.batch_id)
                if event.type in ("custody.shipped", "custody.received"):
                    granted.add(event.batch_id)
                    refs.add(data["shipment_ref"])
                created_batches.update(p["batch_id"] for p in data.get("children", ()))
                existing.update(p["batch_id"] for p in data.get("inputs", ()))
                if "to_party" in data:
                    party_ids.add(data["to_party"])
                party_ids.update(data.get("permitted_end_users", ()))
                if "voided_event_id" in data:
                    targets.add(data["voided_event_id"])
        if optimistic:
            self._assume_absent(created_batches - existing, created_events - targets)
        unloaded = [b for b in existing if ("*loaded*", b) not in self._tables["holding"]]
        unseen = [b for b in existing if ("*loaded*", b) not in self._tables["access"]]
        return {
            "batch": ("batches", "batch_id", self._missing("batch", existing | created_batches)),
            "holding": ("holdings", "batch_id", unloaded),
            "shipment": ("shipments", "shipment_ref", self._missing("shipment", refs)),
            "event": ("events", "event_id", self._missing("event", targets | created_events)),
            "void": ("voids", "voided_event_id", self._missing("void", targets)),
            "party": ("parties", "party_id", self._missing("party", party_ids)),
            "access": ("batch_access", "batch_id", unseen),
            "parents": ("lineage", "child", self._missing("parents", granted)),
        }

    def _missing(self, table: str, keys: Iterable) -> list:
        rows = self._tables[table]
        return [key for key in keys if key not in rows]

    def _assume_absent(self, batch_ids: Iterable[str], event_ids: Iterable[str]) -> None:
        for batch_id in self._missing("batch", batch_ids):
            self._seed("batch", batch_id, None)
            self._assumed.append(("batch", batch_id))
        for event_id in self._missing("event", event_ids):
            self._seed("event", event_id, None)
            self._assumed.append(("event", event_id))

    def _absorb(self, table: str, keys: Iterable, rows: list[dict], column: str, make) -> None:
        found = {row[column]: make(row) for row in rows}
        for key in keys:
            if key not in self._tables[table]:
                self._seed(table, key, found.get(key))

    def _absorb_batches(self, ids, rows) -> None:
        self._absorb("batch", ids, rows, "batch_id", lambda row: Batch(**row))

    def _absorb_shipments(self, refs, rows) -> None:
        self._absorb("shipment", refs, rows, "shipment_ref", lambda row: Shipment(**row))

    def _absorb_parties(self, ids, rows) -> None:
        self._absorb("party", ids, rows, "party_id",
                     lambda row: Party(row["party_id"], row["name"], row["country"], row["role"]))

    def _absorb_events(self, ids, rows) -> None:
        self._absorb("event", ids, rows, "event_id", _logged_event)

    def _absorb_voids(self, ids, rows) -> None:
        self._absorb("void", ids, rows, "voided_event_id", lambda row: row["void_event_id"])

    def _absorb_holdings(self, batch_ids, rows) -> None:
        fresh = [i for i in batch_ids if ("*loaded*", i) not in self._tables["holding"]]
        wanted = set(fresh)
        for row in rows:
            if row["batch_id"] in wanted:
                self._seed("holding", (row["batch_id"], row["party_id"]), row["mass_mg"])
        for batch_id in fresh:
            self._tables["holding"][("*loaded*", batch_id)] = True

    def _absorb_access(self, batch_ids, rows) -> None:
        fresh = [i for i in batch_ids if ("*loaded*", i) not in self._tables["access"]]
        wanted = set(fresh)
        for row in rows:
            if row["batch_id"] in wanted:
                self._seed("access", (row["party_id"], row["batch_id"]), True)
        for batch_id in fresh:
            self._tables["access"][("*loaded*", batch_id)] = True

    def _absorb_parents(self, batch_ids, rows) -> None:
        found: dict[str, list[str]] = {}
        for row in rows:
            found.setdefault(row["child"], []).append(row["parent"])
        for batch_id in batch_ids:
            if batch_id not in self._tables["parents"]:
                self._seed("parents", batch_id, tuple(found.get(batch_id, ())))

    def _load_batches(self, ids) -> None:
        self._absorb_batches(ids, self.recorder.select_in("batches", "batch_id", ids))

    def _load_shipments(self, refs) -> None:
        self._absorb_shipments(refs, self.recorder.select_in("shipments", "shipment_ref", refs))

    def _load_parties(self, ids) -> None:
        self._absorb_parties(ids, self.recorder.select_in("parties", "party_id", ids))

    def _load_events(self, ids) -> None:
        self._absorb_events(ids, self.recorder.select_in("events", "event_id", ids))

    def _load_voids(self, ids) -> None:
        self._absorb_voids(ids, self.recorder.select_in("voids", "voided_event_id", ids))

    def _load_holdings(self, batch_ids) -> None:
        self._absorb_holdings(batch_ids, self.recorder.select_in("holdings", "batch_id", batch_ids))

    def _load_access(self, batch_ids) -> None:
        self._absorb_access(batch_ids, self.recorder.select_in("batch_access", "batch_id", batch_ids))

    def _load_parents(self, batch_ids) -> None:
        self._absorb_parents(batch_ids, self.recorder.select_in("lineage", "child", batch_ids))

    def _seed(self, table: str, key, value) -> None:
        self._tables[table][key] = value

    def _get(self, table: str, key, loader: Callable[[], None]):
        rows = self._tables[table]
        if key not in rows:
            loader()
        return rows.get(key)

    # --- reading -------------------------------------------------------------------------

    def batch(self, batch_id: str) -> Batch | None:
        return self._get("batch", batch_id, lambda: self._load_batches([batch_id]))

    def holding(self, batch_id: str, party_id: str) -> int:
        if ("*loaded*", batch_id) not in self._tables["holding"]:
            self._load_holdings([batch_id])
        return self._tables["holding"].get((batch_id, party_id), 0)

    def shipment(self, ref: str) -> Shipment | None:
        return self._get("shipment", ref, lambda: self._load_shipments([ref]))

    def event(self, event_id: str) -> LoggedEvent | None:
        return self._get("event", event_id, lambda: self._load_events([event_id]))

    def void_of(self, event_id: str) -> str | None:
        return self._get("void", event_id, lambda: self._load_voids([event_id]))

    def party(self, party_id: str) -> Party | None:
        return self._get("party", party_id, lambda: self._load_parties([party_id]))

    def can_see(self, party_id: str, batch_id: str) -> bool:
        if ("*loaded*", batch_id) not in self._tables["access"]:
            self._load_access([batch_id])
        return bool(self._tables["access"].get((party_id, batch_id)))

    def parents(self, batch_id: str) -> list[str]:
        return list(self._get("parents", batch_id, lambda: self._load_parents([batch_id])))

    def is_holder(self, batch: Batch, party_id: str) -> bool:
        """SPEC 3.2: holds more than zero, or registered it and its mass is not yet gone."""
        return self.holding(batch.batch_id, party_id) > 0 or (
            batch.registrant == party_id and batch.remaining_mg > 0)

    # --- changing ------------------------------------------------------------------------

    def _set(self, table: str, key, value) -> None:
        rows = self._tables[table]
        old = rows.get(key, _ABSENT)
        self._journal.append((table, key, old))
        before = self._before[table]
        if key not in before:
            before[key] = old
        rows[key] = value

    def put_batch(self, batch: Batch) -> None:
        self._set("batch", batch.batch_id, batch)

    def create_batch(self, batch: Batch) -> None:
        """A batch new to the ledger: no parents yet, and nobody holds or can see it yet."""
        self.put_batch(batch)
        self._set("parents", batch.batch_id, ())
        self._set("access", ("*loaded*", batch.batch_id), True)
        self._set("holding", ("*loaded*", batch.batch_id), True)

    def add_holding(self, batch_id: str, party_id: str, delta_mg: int) -> None:
        self._set("holding", (batch_id, party_id), self.holding(batch_id, party_id) + delta_mg)

    def add_remaining(self, batch_id: str, delta_mg: int) -> None:
        batch = self.batch(batch_id)
        self.put_batch(batch.with_remaining(batch.remaining_mg + delta_mg))

    def put_shipment(self, shipment: Shipment) -> None:
        self._set("shipment", shipment.shipment_ref, shipment)

    def remember_event(self, logged: LoggedEvent) -> None:
        self._set("event", logged.event_id, logged)

    def mark_voided(self, event_id: str, void_event_id: str) -> None:
        self._set("void", event_id, void_event_id)

    def add_parent(self, parent: str, child: str, mass_mg: int, event_id: str) -> None:
        self._set("parents", child, tuple(self._tables["parents"].get(child, ())) + (parent,))
        self._journal.append(("lineage", len(self.new_lineage), None))
        self.new_lineage.append({"parent": parent, "child": child, "mass_mg": mass_mg, "event_id": event_id})

    def grant(self, party_id: str, batch_id: str) -> None:
        """Let a party see a batch and, with it, every batch upstream of it (SPEC 1)."""
        pending = [batch_id]
        while pending:
            current = pending.pop()
            if self.can_see(party_id, current):
                continue
            self._set("access", (party_id, current), True)
            pending.extend(self.parents(current))

    def mark(self) -> int:
        return len(self._journal)

    def rollback(self, mark: int) -> None:
        while len(self._journal) > mark:
            table, key, old = self._journal.pop()
            if table == "lineage":
                del self.new_lineage[key:]
            elif old is _ABSENT:
                self._tables[table].pop(key, None)
            else:
                self._tables[table][key] = old

    # --- writing back --------------------------------------------------------------------

    def writes(self) -> list[Write]:
        """Every changed row, for the store to write in its append transaction.

        Batches new to the ledger are plain inserts, so that a batch wrongly assumed absent
        fails on its primary key instead of being overwritten.
        """
        batches = self._changed("batch")
        before = self._before["batch"]
        created = {key for key, b in batches.items() if before[key] in _NONE}
        holdings = [{"batch_id": b, "party_id": p, "mass_mg": m} for (b, p), m in self._changed("holding").items()]
        access = [{"party_id": p, "batch_id": b} for (p, b) in self._changed("access")]
        return [
            Write("batches", [batches[key].as_row() for key in created]),
            Write("batches", [b.as_row() for key, b in batches.items() if key not in created],
                  ("batch_id",), ("version", "remaining_mg")),
            # A new batch's rows of the other tables are new too, and a plain insert costs
            # the server less than an upsert; if the batch was wrongly assumed absent, its
            # own insert fails the whole transaction first.
            Write("holdings", [row for row in holdings if row["batch_id"] in created]),
            Write("holdings", [row for row in holdings if row["batch_id"] not in created],
                  ("batch_id", "party_id"), ("mass_mg",)),
            Write("shipments", [vars(s) for s in self._changed("shipment").values()], ("shipment_ref",), ("status",)),
            Write("batch_access", [row for row in access if row["batch_id"] in created]),
            Write("batch_access", [row for row in access if row["batch_id"] not in created],
                  ("party_id", "batch_id")),
            Write("voids", [{"voided_event_id": e, "void_event_id": v} for e, v in self._changed("void").items()]),
            Write("lineage", self.new_lineage),
        ]

    def _changed(self, table: str) -> dict:
        rows = self._tables[table]
        changed = {}
        for key, old in self._before[table].items():
            value = rows.get(key)
            if value is not None and old != value and not (isinstance(key, tuple) and key[0] == "*loaded*"):
                changed[key] = value
        return changed


# --- standing and effects ------------------------------------------------------------------


def check_role(actor: Party, event: NewEvent) -> None:
    if actor.role == "partner":
        return
    if actor.role == "regulator" and event.type in REGULATOR_TYPES:
        return
    raise Forbidden(f"A {actor.role} may not post {event.type} events.")


def apply(event: NewEvent, actor: Party, state: CustodyState) -> dict:
    """Check standing and references for one event and change the state; return its effects.

    The effects (holding and remaining-mass deltas, shipment transitions) are stored with the
    event so that a void reverses exactly what the event did.
    """
    check_role(actor, event)
    effects = Effects()
    batch = state.batch(event.batch_id)
    if event.type in NEW_STREAM_TYPES:
        if batch is not None:
            raise Conflict(f"Batch {event.batch_id!r} already exists.", {"batch_id": ["already exists"]})
    else:
        if batch is None or not _visible(state, actor, event):
            raise NotFound(f"Batch {event.batch_id!r} not found.", {"batch_id": ["not found"]})
    APPLY[event.type](event, actor, state, batch, effects)
    return effects.as_dict()


def _visible(state: CustodyState, actor: Party, event: NewEvent) -> bool:
    return actor.role != "partner" or event.type == "custody.received" or state.can_see(
        actor.party_id, event.batch_id)


def _require_holder(state: CustodyState, batch: Batch, actor: Party, field: str = "batch_id") -> None:
    if actor.role == "partner" and not state.is_holder(batch, actor.party_id):
        raise Forbidden(f"{actor.party_id} does not hold batch {batch.batch_id!r}.",
                        {field: ["the actor does not hold this batch"]})


class Effects:
    def __init__(self):
        self.holdings: list[list] = []
        self.remaining: list[list] = []
        self.shipment: list | None = None

    def move(self, state: CustodyState, batch_id: str, party_id: str, delta_mg: int) -> None:
        state.add_holding(batch_id, party_id, delta_mg)
        self.holdings.append([batch_id, party_id, delta_mg])

    def change_remaining(self, state: CustodyState, batch_id: str, delta_mg: int) -> None:
        state.add_remaining(batch_id, delta_mg)
        self.remaining.append([batch_id, delta_mg])

    def as_dict(self) -> dict:
        effects: dict[str, Any] = {"holdings": self.holdings, "remaining": self.remaining}
        if self.shipment:
            effects["shipment"] = self.shipment
        return effects


def _new_batch(state: CustodyState, batch_id: str, origin: str, version: int, *, registrant=None,
               material=None, origin_country=None) -> None:
    state.create_batch(Batch(batch_id, version, origin, registrant, material, origin_country, 0))


def _registered(event, actor, state, batch, effects):
    data = event.data
    mass = mass_to_mg(data["mass_kg"])
    _new_batch(state, event.batch_id, "registered", 0, registrant=actor.party_id,
               material=data["material"], origin_country=data["origin_country"])
    effects.move(state, event.batch_id, actor.party_id, mass)
    effects.change_remaining(state, event.batch_id, mass)
    state.grant(actor.party_id, event.batch_id)


def _declared(event, actor, state, batch, effects):
    _require_holder(state, batch, actor)
    unknown = [f"data.permitted_end_users.{i}" for i, party_id in
               enumerate(event.data.get("permitted_end_users", ())) if state.party(party_id) is None]
    if unknown:
        raise Invalid("A permitted end user is not a registered party.", {f: ["unknown party"] for f in unknown})


def _shipped(event, actor, state, batch, effects):
    data = event.data
    _require_holder(state, batch, actor)
    consignee = state.party(data["to_party"])
    if consignee is None:
        raise Invalid(f"No party {data['to_party']!r}.", {"data.to_party": ["unknown party"]})
    if state.shipment(data["shipment_ref"]) is not None:
        raise Conflict(f"Shipment {data['shipment_ref']!r} already exists.",
                       {"data.shipment_ref": ["already used"]})
    mass = mass_to_mg(data["mass_kg"])
    state.put_shipment(Shipment(data["shipment_ref"], event.batch_id, actor.party_id, consignee.party_id, mass,
                                data.get("destination_country", consignee.country), "open", event.event_id))
    effects.shipment = [data["shipment_ref"], "open"]
    effects.move(state, event.batch_id, actor.party_id, -mass)
    state.grant(consignee.party_id, event.batch_id)


def _received(event, actor, state, batch, effects):
    data = event.data
    shipment = state.shipment(data["shipment_ref"])
    if shipment is None or shipment.status == "voided":
        raise Invalid(f"No shipment {data['shipment_ref']!r}.", {"data.shipment_ref": ["unknown shipment"]})
    if shipment.batch_id != event.batch_id:
        # Named without the other batch: the receiver may not be allowed to see it.
        raise Invalid(f"Shipment {shipment.shipment_ref!r} does not carry batch {event.batch_id!r}.",
                      {"data.shipment_ref": ["is not a shipment of this batch"]})
    if shipment.status != "open":
        raise Conflict(f"Shipment {shipment.shipment_ref!r} has already been received.",
                       {"data.shipment_ref": ["already received"]})
    mass = mass_to_mg(data["mass_kg"])
    state.put_shipment(replace(shipment, status="received"))
    effects.shipment = [shipment.shipment_ref, "received"]
    effects.move(state, event.batch_id, actor.party_id, mass)
    effects.change_remaining(state, event.batch_id, mass - shipment.mass_mg)
    state.grant(actor.party_id, event.batch_id)


def _split(event, actor, state, batch, effects):
    _require_holder(state, batch, actor)
    taken = 0
    for index, child in enumerate(event.data["children"]):
        child_id = child["batch_id"]
        if child_id == batch.batch_id or state.batch(child_id) is not None:
            raise Conflict(f"Batch {child_id!r} already exists.",
                           {f"data.children.{index}.batch_id": ["already exists"]})
        mass = mass_to_mg(child["mass_kg"])
        taken += mass
        _new_batch(state, child_id, "split", 0, material=batch.material, origin_country=batch.origin_country)
        state.add_parent(batch.batch_id, child_id, mass, event.event_id)
        effects.move(state, child_id, actor.party_id, mass)
        effects.change_remaining(state, child_id, mass)
        state.grant(actor.party_id, child_id)
    effects.move(state, batch.batch_id, actor.party_id, -taken)
    effects.change_remaining(state, batch.batch_id, -taken)


def _transformed(event, actor, state, batch, effects):
    data = event.data
    for index, portion in enumerate(data["inputs"]):
        field = f"data.inputs.{index}.batch_id"
        source = state.batch(portion["batch_id"])
        if source is None or (actor.role == "partner" and not state.can_see(actor.party_id, source.batch_id)):
            raise NotFound(f"Batch {portion['batch_id']!r} not found.", {field: ["not found"]})
        _require_holder(state, source, actor, field)
    output = mass_to_mg(data["mass_kg"])
    _new_batch(state, event.batch_id, "transformed", 0, material=data["product"], origin_country=actor.country)
    effects.move(state, event.batch_id, actor.party_id, output)
    effects.change_remaining(state, event.batch_id, output)
    for portion in data["inputs"]:
        mass = mass_to_mg(portion["mass_kg"])
        state.add_parent(portion["batch_id"], event.batch_id, mass, event.event_id)
        effects.move(state, portion["batch_id"], actor.party_id, -mass)
        effects.change_remaining(state, portion["batch_id"], -mass)
    state.grant(actor.party_id, event.batch_id)


def _exported(event, actor, state, batch, effects):
    _require_holder(state, batch, actor)
    if "mass_kg" in event.data:
        mass = mass_to_mg(event.data["mass_kg"])
    else:
        mass = max(state.holding(batch.batch_id, actor.party_id), 0)
    effects.move(state, batch.batch_id, actor.party_id, -mass)
    effects.change_remaining(state, batch.batch_id, -mass)


def _consumed(event, actor, state, batch, effects):
    _require_holder(state, batch, actor)
    mass = mass_to_mg(event.data["mass_kg"])
    effects.move(state, batch.batch_id, actor.party_id, -mass)
    effects.change_remaining(state, batch.batch_id, -mass)


def _voided(event, actor, state, batch, effects):
    target_id = event.data["voided_event_id"]
    target = state.event(target_id)
    field = "data.voided_event_id"
    if target is None or (actor.role == "partner" and not state.can_see(actor.party_id, target.batch_id)):
        # An event of a batch the actor may not see is answered as one that does not exist.
        raise Invalid(f"No event {target_id!r}.", {field: ["unknown event"]})
    if target.batch_id != event.batch_id:
        raise Invalid(f"Event {target_id!r} belongs to batch {target.batch_id!r}.",
                      {field: [f"is an event of batch {target.batch_id}"]})
    if target.type == "event.voided":
        raise Invalid("A void cannot itself be voided.", {field: ["is a void"]})
    if actor.role != "regulator" and target.actor != actor.party_id:
        raise Forbidden("Only the event's actor or a regulator may void it.",
                        {field: ["was posted by another party"]})
    if state.void_of(target_id) is not None:
        raise Conflict(f"Event {target_id!r} is already voided.", {field: ["already voided"]})
    state.mark_voided(target_id, event.event_id)
    for batch_id, party_id, delta in target.effects["holdings"]:
        effects.move(state, batch_id, party_id, -delta)
    for batch_id, delta in target.effects["remaining"]:
        effects.change_remaining(state, batch_id, -delta)
    if "shipment" in target.effects:
        ref, status = target.effects["shipment"]
        shipment = state.shipment(ref)
        undone = "voided" if status == "open" else "open"
        state.put_shipment(replace(shipment, status=undone))
        effects.shipment = [ref, undone]


APPLY: dict[str, Callable] = {
    "batch.registered": _registered,
    "enduse.declared": _declared,
    "custody.shipped": _shipped,
    "custody.received": _received,
    "batch.split": _split,
    "batch.transformed": _transformed,
    "custody.exported": _exported,
    "batch.consumed": _consumed,
    "event.voided": _voided,
}
