"""Queries over the serving projections, for the read API.

Each query runs in one snapshot (a REPEATABLE READ transaction on PostgreSQL, a read
transaction on SQLite) that first reads which generation of each projection is serving and
how far it has got, so an answer never mixes generations and states its `as_of_position`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import Connection, Engine, and_, select

from ledger.db import snapshot
from ledger.events import mg_to_mass
from ledger.schema import (
    parties,
    pj_batches,
    pj_declarations,
    pj_holdings,
    pj_lineage,
    pj_shares,
    pj_shipments,
    projection_state,
)


@dataclass(frozen=True)
class Snapshot:
    conn: Connection
    generations: dict[str, int]
    as_of_position: int

    def generation(self, name: str) -> int:
        return self.generations.get(name, 0)


class Views:
    def __init__(self, engine: Engine):
        self.engine = snapshot(engine)

    @contextmanager
    def snapshot(self) -> Iterator[Snapshot]:
        with self.engine.begin() as conn:
            rows = conn.execute(select(projection_state.c.name, projection_state.c.generation,
                                       projection_state.c.position)
                                .where(projection_state.c.status == "serving")).all()
            yield Snapshot(conn, {r.name: r.generation for r in rows},
                           min((r.position for r in rows), default=0))

    # --- batches -------------------------------------------------------------------------

    def batch(self, batch_id: str, de_minimis: Decimal) -> dict | None:
        """The state of one batch (SPEC 4), or None if the projections do not know it."""
        with self.snapshot() as snap:
            gen = snap.generation("batch_state")
            row = snap.conn.execute(select(pj_batches).where(pj_batches.c.generation == gen,
                                                             pj_batches.c.batch_id == batch_id)).first()
            if row is None:
                return None
            holdings = snap.conn.execute(
                select(pj_holdings.c.party_id, pj_holdings.c.mass_mg)
                .where(pj_holdings.c.generation == gen, pj_holdings.c.batch_id == batch_id,
                       pj_holdings.c.mass_mg != 0)
                .order_by(pj_holdings.c.party_id)).all()
            shipments = snap.conn.execute(
                select(pj_shipments).where(pj_shipments.c.generation == snap.generation("shipments"),
                                           pj_shipments.c.batch_id == batch_id, pj_shipments.c.status == "open")
                .order_by(pj_shipments.c.shipment_ref)).all()
            _, shares = self._upstream(snap, batch_id)
            return {
                "batch_id": row.batch_id, "kind": row.kind, "material": row.material,
                "origin_country": row.origin_country, "registrant": row.registrant,
                "initial_mass_kg": mg_to_mass(row.initial_mass_mg), "mass_kg": mg_to_mass(row.current_mass_mg),
                "status": "active" if row.current_mass_mg > 0 else "depleted",
                "holdings": [{"party_id": h.party_id, "mass_kg": mg_to_mass(h.mass_mg)} for h in holdings],
                "open_shipments": [_shipment(s) for s in shipments],
                "declarations": self._governing(snap, batch_id, shares, de_minimis),
                "as_of_position": snap.as_of_position,
            }

    def batches(self, holder: str | None = None, country: str | None = None, after: str | None = None,
                limit: int = 100) -> tuple[list[dict], int]:
        """Batches by id, optionally those a party holds or those of one origin country."""
        with self.snapshot() as snap:
            gen = snap.generation("batch_state")
            query = select(pj_batches).where(pj_batches.c.generation == gen)
            if holder is not None:
                query = query.join(pj_holdings, and_(
                    pj_holdings.c.generation == gen, pj_holdings.c.batch_id == pj_batches.c.batch_id,
                    pj_holdings.c.party_id == holder, pj_holdings.c.mass_mg > 0))
            if country is not None:
                query = query.where(pj_batches.c.origin_country == country)
            if after is not None:
                query = query.where(pj_batches.c.batch_id > after)
            rows = snap.conn.execute(query.order_by(pj_batches.c.batch_id).limit(limit)).all()
            return [{"batch_id": r.batch_id, "kind": r.kind, "material": r.material,
                     "origin_country": r.origin_country, "mass_kg": mg_to_mass(r.current_mass_mg)}
                    for r in rows], snap.as_of_position

    # --- lineage -------------------------------------------------------------------------

    def lineage(self, batch_id: str, direction: str = "both", depth: int = 10) -> dict | None:
        """`{nodes, edges, as_of_position}` around a batch, `depth` steps up and/or down."""
        with self.snapshot() as snap:
            gen = snap.generation("lineage")
            batch_gen = snap.generation("batch_state")
            if snap.conn.execute(select(pj_batches.c.batch_id).where(
                    pj_batches.c.generation == batch_gen, pj_batches.c.batch_id == batch_id)).first() is None:
                return None
            depths = {batch_id: 0}
            edges: dict[tuple[str, str], dict] = {}
            for going, near, far in (("up", pj_lineage.c.child, pj_lineage.c.parent),
                                     ("down", pj_lineage.c.parent, pj_lineage.c.child)):
                if direction not in (going, "both"):
                    continue
                frontier, step = [batch_id], 0
                while frontier and step < depth:
                    step += 1
                    rows = snap.conn.execute(select(pj_lineage).where(
                        pj_lineage.c.generation == gen, near.in_(frontier), pj_lineage.c.voided.is_(False))).all()
                    frontier = []
                    for row in rows:
                        edges[(row.parent, row.child)] = _edge(row)
                        other = row.parent if going == "up" else row.child
                        if other not in depths:
                            depths[other] = -step if going == "up" else step
                            frontier.append(other)
            nodes = snap.conn.execute(select(pj_batches).where(
                pj_batches.c.generation == batch_gen, pj_batches.c.batch_id.in_(list(depths)))).all()
            return {
                "nodes": sorted(({"batch_id": n.batch_id, "material": n.material,
                                  "mass_kg": mg_to_mass(n.current_mass_mg), "depth": depths[n.batch_id]}
                                 for n in nodes), key=lambda n: (n["depth"], n["batch_id"])),
                "edges": sorted(edges.values(), key=lambda e: (e["parent"], e["child"])),
                "as_of_position": snap.as_of_position,
            }


    # --- provenance ----------------------------------------------------------------------

    def provenance(self, batch_id: str, de_minimis: Decimal) -> dict | None:
        """Where a batch came from (SPEC 4): its upstream lineage to the origin batches with
        each ancestor's share in it, the custody chain of it and its ancestors, and the
        declarations that govern it (its own, and those of ancestors whose share is at least
        the de minimis threshold)."""
        with self.snapshot() as snap:
            batch_gen = snap.generation("batch_state")
            if snap.conn.execute(select(pj_batches.c.batch_id).where(
                    pj_batches.c.generation == batch_gen, pj_batches.c.batch_id == batch_id)).first() is None:
                return None
            edges, shares = self._upstream(snap, batch_id)
            seen = set(shares)
            batches = {r.batch_id: r for r in snap.conn.execute(select(pj_batches).where(
                pj_batches.c.generation == batch_gen, pj_batches.c.batch_id.in_(list(seen))))}
            shipments = snap.conn.execute(select(pj_shipments).where(
                pj_shipments.c.generation == snap.generation("shipments"), pj_shipments.c.batch_id.in_(list(seen)),
                pj_shipments.c.status != "voided")).all()
            countries = dict(snap.conn.execute(select(parties.c.party_id, parties.c.country)).all())
            controlled = sum((shares[b] for b, row in batches.items() if row.kind == "registered"), Decimal(0))
            return {
                "batch_id": batch_id,
                "controlled_fraction": _decimal(controlled),
                "controlled": controlled >= de_minimis,
                "upstream": sorted(({
                    "batch_id": b, "kind": row.kind, "material": row.material, "origin_country": row.origin_country,
                    "mass_kg": mg_to_mass(row.initial_mass_mg), "share": _decimal(shares[b]),
                    "origin": row.kind == "registered"} for b, row in batches.items()),
                    key=lambda node: (node["batch_id"] != batch_id, node["batch_id"])),
                "edges": sorted((_edge(e) for e in edges), key=lambda e: (e["parent"], e["child"])),
                "custody_chain": custody_chain(batches.values(), shipments, countries),
                "governing_declarations": self._governing(snap, batch_id, shares, de_minimis),
                "as_of_position": snap.as_of_position,
            }


    @staticmethod
    def _upstream(snap: Snapshot, batch_id: str) -> tuple[list, dict[str, Decimal]]:
        """The share of each ancestor in a batch, from the shares projection (the batch itself
        has share 1), and the live lineage edges among them."""
        shares = {batch_id: Decimal(1)}
        shares.update({r.ancestor: Decimal(r.share) for r in snap.conn.execute(select(pj_shares).where(
            pj_shares.c.generation == snap.generation("shares"), pj_shares.c.batch_id == batch_id))})
        edges = snap.conn.execute(select(pj_lineage).where(
            pj_lineage.c.generation == snap.generation("lineage"), pj_lineage.c.child.in_(list(shares)),
            pj_lineage.c.voided.is_(False))).all()
        return edges, shares

    @staticmethod
    def _governing(snap: Snapshot, batch_id: str, shares: dict[str, Decimal], de_minimis: Decimal) -> list[dict]:
        """Declarations that govern a batch (SPEC 2): its own, and those of every ancestor
        whose share in it is at least the de minimis threshold; voided ones do not."""
        rows = snap.conn.execute(select(pj_declarations).where(
            pj_declarations.c.generation == snap.generation("batch_state"),
            pj_declarations.c.batch_id.in_(list(shares)), pj_declarations.c.voided_by.is_(None))
            .order_by(pj_declarations.c.position)).all()
        return [{"event_id": d.event_id, "batch_id": d.batch_id, "position": d.position,
                 "share": _decimal(shares[d.batch_id]), **json.loads(d.data)}
                for d in rows if d.batch_id == batch_id or shares[d.batch_id] >= de_minimis]


def custody_chain(batches, shipments, countries: dict[str, str]) -> list[dict]:
    """Who had each batch, in which country, from when to when (until that party shipped
    it on), and the events that say so."""
    by_batch: dict[str, list] = {}
    for shipment in shipments:
        by_batch.setdefault(shipment.batch_id, []).append(shipment)
    periods: list[dict] = []
    for batch in batches:
        outgoing = sorted(by_batch.get(batch.batch_id, ()), key=lambda s: (s.shipped_at, s.shipment_ref))

        def until(party: str, since: str | None, outgoing=outgoing) -> str | None:
            return next((s.shipped_at for s in outgoing if s.from_party == party and since and s.shipped_at >= since),
                        None)

        country = batch.origin_country if batch.kind == "registered" else countries.get(batch.created_by)
        periods.append({"batch_id": batch.batch_id, "party": batch.created_by, "country": country,
                         "from": batch.created_at, "to": until(batch.created_by, batch.created_at),
                         "event_ids": [batch.created_event_id]})
        for shipment in outgoing:
            holder = shipment.received_by or shipment.to_party
            periods.append({"batch_id": batch.batch_id, "party": holder, "country": shipment.destination_country,
                            "from": shipment.received_at, "to": until(holder, shipment.received_at),
                            "shipment_ref": shipment.shipment_ref, "shipped_at": shipment.shipped_at,
                            "event_ids": [e for e in (shipment.shipped_event_id, shipment.received_event_id) if e]})
    return sorted(periods, key=lambda p: (p["batch_id"], p["from"] or p.get("shipped_at") or ""))


def _decimal(value: Decimal) -> str:
    return format(value.normalize(), "f") if value else "0"


def _shipment(row) -> dict:
    return {"shipment_ref": row.shipment_ref, "from_party": row.from_party, "to_party": row.to_party,
            "destination_country": row.destination_country, "mass_kg": mg_to_mass(row.mass_mg),
            "shipped_event_id": row.shipped_event_id, "shipped_at": row.shipped_at}


def _edge(row) -> dict:
    """An edge's fraction is the parent's mass in the child over the child's mass (SPEC 2),
    as an exact decimal string (1 for a split child)."""
    fraction = Decimal(row.mass_mg) / Decimal(row.child_mass_mg) if row.child_mass_mg else Decimal(0)
    return {"parent": row.parent, "child": row.child, "mass_kg": mg_to_mass(row.mass_mg),
            "fraction": _decimal(fraction), "event_id": row.event_id}
