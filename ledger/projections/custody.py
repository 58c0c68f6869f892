"""Batch state, shipments and lineage, folded from the log.

Holding and remaining-mass changes are not recomputed here: the append path stores, with
every event, the custody effects it computed when it judged standing (a void stores the
reversal), and these projections add them up. One place decides what an event does to
custody; the read side asks it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from decimal import Decimal

from sqlalchemy import Connection, select

from ledger.events import RecordedEvent, mass_to_mg
from ledger.projections.engine import Projection
from ledger.projections.rows import GenerationRows
from ledger.recorders import Write
from ledger.schema import (
    parties,
    pj_batches,
    pj_declarations,
    pj_holdings,
    pj_lineage,
    pj_share_edges,
    pj_shares,
    pj_shipments,
)


def _countries(conn: Connection, party_ids: Iterable[str]) -> dict[str, str]:
    ids = list(set(party_ids))
    if not ids:
        return {}
    return dict(conn.execute(select(parties.c.party_id, parties.c.country).where(parties.c.party_id.in_(ids))).all())


def _load(rows: GenerationRows, table, key_columns: list[str], keys: Iterable[tuple]) -> dict:
    """Rows of one generation by key, looked up by the key's first column (an index prefix)
    and filtered here: a row-value IN list would not use the index."""
    wanted = set(keys)
    found_rows = rows.select(table.name, key_columns[0], {key[0] for key in wanted})
    found: dict = {}
    for row in found_rows:
        key = tuple(row[name] for name in key_columns)
        if key in wanted:
            found[key] = row
    return found


_CREATES = frozenset({"batch.registered", "batch.split", "batch.transformed"})


class BatchState(Projection):
    """Per batch: kind, material, origin, initial and current mass, holdings by party, and
    the end-use declarations recorded on it (with the void that withdrew one, if any)."""

    name = "batch_state"
    version = 1
    rebuild_cost = 36
    tables = (pj_batches, pj_holdings, pj_declarations)

    def apply(self, rows: GenerationRows, events: list[tuple[RecordedEvent, dict]]) -> None:
        generation = rows.generation
        touched_batches, touched_holdings = set(), set()
        for event, effects in events:
            touched_batches.add(event.batch_id)
            touched_batches.update(p["batch_id"] for p in event.data.get("children", ()))
            touched_batches.update(b for b, _ in effects.get("remaining", ()))
            touched_holdings.update((b, p) for b, p, _ in effects.get("holdings", ()))
        batches = {k[0]: v for k, v in _load(rows, pj_batches, ["batch_id"],
                                               [(b,) for b in touched_batches]).items()}
        holdings = {k: v for k, v in _load(rows, pj_holdings, ["batch_id", "party_id"],
                                           touched_holdings).items()}
        countries = _countries(rows.conn, [e.actor for e, _ in events if e.type == "batch.transformed"])
        declarations: dict[str, dict] = {}
        voided = [e.data["voided_event_id"] for e, _ in events if e.type == "event.voided"]
        if voided:
            declarations.update({k[0]: v for k, v in _load(rows, pj_declarations, ["event_id"],
                                                            [(v,) for v in voided]).items()})
        for event, effects in events:
            if event.type in _CREATES:
                self._create_batches(event, batches, countries, generation)
            if event.type == "enduse.declared":
                declarations[event.event_id] = {
                    "generation": generation, "event_id": event.event_id, "batch_id": event.batch_id,
                    "position": event.position, "data": json.dumps(event.data, sort_keys=True), "voided_by": None}
            elif event.type == "event.voided" and event.data["voided_event_id"] in declarations:
                declarations[event.data["voided_event_id"]]["voided_by"] = event.event_id
            for batch_id, party_id, delta in effects.get("holdings", ()):
                row = holdings.setdefault((batch_id, party_id), {"generation": generation, "batch_id": batch_id,
                                                                 "party_id": party_id, "mass_mg": 0})
                row["mass_mg"] += delta
            if (own := batches.get(event.batch_id)) is not None:
                own["updated_position"] = event.position
            for batch_id, delta in effects.get("remaining", ()):
                batch = batches[batch_id]
                batch["current_mass_mg"] += delta
                batch["updated_position"] = event.position
        rows.write([
            Write("pj_batches", list(batches.values()), ("generation", "batch_id"),
                  ("current_mass_mg", "updated_position")),
            Write("pj_holdings", list(holdings.values()), ("generation", "batch_id", "party_id"), ("mass_mg",)),
            Write("pj_declarations", list(declarations.values()), ("generation", "event_id"), ("voided_by",)),
        ])

    @staticmethod
    def _create_batches(event: RecordedEvent, batches: dict, countries: dict, generation: int) -> None:
        def new(batch_id, kind, material, origin_country, registrant, mass):
            batches.setdefault(batch_id, {
                "generation": generation, "batch_id": batch_id, "kind": kind, "material": material,
                "origin_country": origin_country, "registrant": registrant, "created_by": event.actor,
                "created_at": event.occurred_at, "created_event_id": event.event_id, "initial_mass_mg": mass,
                "current_mass_mg": 0, "created_position": event.position, "updated_position": event.position})

        data = event.data
        if event.type == "batch.registered":
            new(event.batch_id, "registered", data["material"], data["origin_country"], event.actor,
                mass_to_mg(data["mass_kg"]))
        elif event.type == "batch.split" and event.batch_id in batches:
            parent = batches[event.batch_id]
            for child in data["children"]:
                new(child["batch_id"], "split", parent["material"], parent["origin_country"], None,
                    mass_to_mg(child["mass_kg"]))
        elif event.type == "batch.transformed":
            new(event.batch_id, "transformed", data["product"], countries.get(event.actor), None,
                mass_to_mg(data["mass_kg"]))


class Shipments(Projection):
    """Every shipment: who sent what to whom and where, and its receipt, if any."""

    name = "shipments"
    version = 1
    rebuild_cost = 5
    tables = (pj_shipments,)

    def apply(self, rows: GenerationRows, events: list[tuple[RecordedEvent, dict]]) -> None:
        generation = rows.generation
        refs = {e.data["shipment_ref"] for e, _ in events if "shipment_ref" in e.data}
        refs |= {fx["shipment"][0] for _, fx in events if "shipment" in fx}
        if not refs:
            return
        shipments = {k[0]: v for k, v in _load(rows, pj_shipments, ["shipment_ref"],
                                                 [(r,) for r in refs]).items()}
        countries = _countries(rows.conn, [e.data["to_party"] for e, _ in events if e.type == "custody.shipped"])
        for event, effects in events:
            data = event.data
            if event.type == "custody.shipped":
                shipments[data["shipment_ref"]] = {
                    "generation": generation, "shipment_ref": data["shipment_ref"], "batch_id": event.batch_id,
                    "from_party": event.actor, "to_party": data["to_party"],
                    "destination_country": data.get("destination_country") or countries.get(data["to_party"], ""),
                    "mass_mg": mass_to_mg(data["mass_kg"]), "received_mg": None, "received_by": None,
                    "status": "open", "shipped_event_id": event.event_id, "received_event_id": None,
                    "shipped_at": event.occurred_at, "received_at": None}
            elif event.type == "custody.received":
                shipments[data["shipment_ref"]].update(
                    status="received", received_mg=mass_to_mg(data["mass_kg"]), received_by=event.actor,
                    received_event_id=event.event_id, received_at=event.occurred_at)
            elif event.type == "event.voided" and "shipment" in effects:
                ref, status = effects["shipment"]
                shipments[ref]["status"] = status
                if status == "open":
                    shipments[ref].update(received_mg=None, received_by=None, received_event_id=None, received_at=None)
        rows.write([Write(
            "pj_shipments", list(shipments.values()), ("generation", "shipment_ref"),
            ("status", "received_mg", "received_by", "received_event_id", "received_at"))])


class Lineage(Projection):
    """Parent -> child edges made by splits and transformations, with the parent's mass that
    went into the child and the child's mass (their ratio is the edge's fraction)."""

    name = "lineage"
    version = 1
    rebuild_cost = 8
    tables = (pj_lineage,)

    def apply(self, rows: GenerationRows, events: list[tuple[RecordedEvent, dict]]) -> None:
        generation = rows.generation
        edges: dict[tuple[str, str], dict] = {}
        voided = {e.data["voided_event_id"] for e, _ in events if e.type == "event.voided"}
        if voided:
            for row in rows.select("pj_lineage", "event_id", voided):
                edges[(row["parent"], row["child"])] = row
        for event, _ in events:
            data = event.data
            if event.type == "batch.split":
                for child in data["children"]:
                    mass = mass_to_mg(child["mass_kg"])
                    edges[(event.batch_id, child["batch_id"])] = self._edge(
                        generation, event, event.batch_id, child["batch_id"], mass, mass)
            elif event.type == "batch.transformed":
                output = mass_to_mg(data["mass_kg"])
                for portion in data["inputs"]:
                    edges[(portion["batch_id"], event.batch_id)] = self._edge(
                        generation, event, portion["batch_id"], event.batch_id, mass_to_mg(portion["mass_kg"]), output)
            elif event.type == "event.voided":
                for edge in edges.values():
                    if edge["event_id"] == data["voided_event_id"]:
                        edge["voided"] = True
        rows.write([Write("pj_lineage", list(edges.values()), ("generation", "parent", "child"), ("voided",))])

    @staticmethod
    def _edge(generation, event, parent, child, mass, child_mass) -> dict:
        return {"generation": generation, "parent": parent, "child": child, "mass_mg": mass,
                "child_mass_mg": child_mass, "event_id": event.event_id, "position": event.position, "voided": False}


class Shares(Projection):
    """For every batch made by a split or transformation, the share of each of its ancestors
    in it (SPEC 2): over every lineage path from the ancestor, the product of the edge
    fractions, summed; exact decimals to 28 significant digits.

    A child's shares are derived when it is made, from its parents' shares. A voided split
    or transformation changes them for the child and every batch made from it since, so
    those are derived again, parents first, from their remaining live edges. The projection
    keeps its own copy of the edges so that it depends on no other projection's progress."""

    name = "shares"
    version = 1
    rebuild_cost = 22
    tables = (pj_shares, pj_share_edges)

    def apply(self, rows: GenerationRows, events: list[tuple[RecordedEvent, dict]]) -> None:
        state = _ShareState(rows)
        state.load_shares([e.batch_id for e, _ in events if e.type == "batch.split"]
                          + [p["batch_id"] for e, _ in events if e.type == "batch.transformed" for p in e.data["inputs"]])
        for event, _ in events:
            data = event.data
            if event.type == "batch.split":
                for child in data["children"]:
                    state.make(child["batch_id"], [(event.batch_id, Decimal(1), event.event_id)])
            elif event.type == "batch.transformed":
                output = Decimal(mass_to_mg(data["mass_kg"]))
                state.make(event.batch_id, [(p["batch_id"], Decimal(mass_to_mg(p["mass_kg"])) / output, event.event_id)
                                            for p in data["inputs"]])
            elif event.type == "event.voided":
                state.void(data["voided_event_id"])
        state.write()


class _ShareState:
    """The shares and edges one batch of events touches, loaded on demand."""

    def __init__(self, rows: GenerationRows):
        self.rows, self.generation = rows, rows.generation
        self.shares: dict[str, dict[str, Decimal]] = {}
        self.parents: dict[str, list[dict]] = {}
        self.changed_shares: set[str] = set()
        self.changed_edges: dict[tuple[str, str], dict] = {}

    def load_shares(self, batch_ids: Iterable[str]) -> None:
        missing = [b for b in set(batch_ids) if b not in self.shares]
        for batch_id in missing:
            self.shares[batch_id] = {}
        for row in self.rows.select("pj_shares", "batch_id", missing):
            self.shares[row["batch_id"]][row["ancestor"]] = Decimal(row["share"])

    def _load_parents(self, batch_id: str) -> list[dict]:
        if batch_id not in self.parents:
            self.parents[batch_id] = self.rows.select("pj_share_edges", "child", [batch_id])
        return self.parents[batch_id]

    def make(self, child: str, parents: list[tuple[str, Decimal, str]]) -> None:
        edges = [{"generation": self.generation, "child": child, "parent": parent, "fraction": str(fraction),
                  "event_id": event_id, "voided": False} for parent, fraction, event_id in parents]
        self.parents[child] = edges
        for edge in edges:
            self.changed_edges[(child, edge["parent"])] = edge
        self._derive(child)

    def _derive(self, child: str) -> None:
        live = [e for e in self._load_parents(child) if not e["voided"]]
        self.load_shares(e["parent"] for e in live)
        result: dict[str, Decimal] = {}
        for edge in live:
            fraction = Decimal(edge["fraction"])
            result[edge["parent"]] = result.get(edge["parent"], Decimal(0)) + fraction
            for ancestor, share in self.shares[edge["parent"]].items():
                result[ancestor] = result.get(ancestor, Decimal(0)) + fraction * share
        self.shares[child] = result
        self.changed_shares.add(child)

    def void(self, event_id: str) -> None:
        edges = [e for e in self.rows.select("pj_share_edges", "event_id", [event_id])]
        edges += [e for e in self.changed_edges.values() if e["event_id"] == event_id]
        for edge in edges:
            for known in self._load_parents(edge["child"]):
                if known["event_id"] == event_id:
                    known["voided"] = True
                    self.changed_edges[(known["child"], known["parent"])] = known
        for batch_id in self._descendants(sorted({e["child"] for e in edges})):
            self._derive(batch_id)

    def _descendants(self, roots: list[str]) -> list[str]:
        """The roots and every batch made from them, each after all its parents among them."""
        order: list[str] = []
        frontier = list(roots)
        while frontier:
            order.extend(frontier)
            rows = self.rows.select("pj_share_edges", "parent", frontier)
            rows += [e for e in self.changed_edges.values() if e["parent"] in frontier]
            frontier = sorted({r["child"] for r in rows})
        seen, result = set(), []
        for batch_id in reversed(order):
            if batch_id not in seen:
                seen.add(batch_id)
                result.append(batch_id)
        return list(reversed(result))

    def write(self) -> None:
        self.rows.delete("pj_shares", "batch_id", self.changed_shares)
        self.rows.write([
            Write("pj_shares", [{"generation": self.generation, "batch_id": b, "ancestor": a, "share": str(v)}
                                for b in sorted(self.changed_shares) for a, v in sorted(self.shares[b].items())]),
            Write("pj_share_edges", list(self.changed_edges.values()), ("generation", "child", "parent"), ("voided",)),
        ])


ALL = (BatchState, Shipments, Lineage, Shares)
