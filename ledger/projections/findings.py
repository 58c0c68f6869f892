"""Findings as a projection, and the bulk loader that feeds the rules.

Each step of the log re-judges the batches its events touch (the event's own batch, the
batches a split or transformation made or consumed, and for a declaration or a void the
whole family around it, found through the write-side lineage), and replaces their findings.
A full audit judges every batch through the same loader, so both give the same findings.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import datetime
from decimal import Decimal

from sqlalchemy import Connection, Table, any_, literal, select
from sqlalchemy.dialects.postgresql import ARRAY

from ledger import fastjson
from ledger.events import parse_time
from ledger.projections.engine import Projection
from ledger.projections.rows import GenerationRows
from ledger.recorders import Write
from ledger.rules import Declaration, Event, Facts, Finding, RuleConfig, destination, judge
from ledger.schema import (
    batches,
    events,
    lineage,
    parties,
    pj_declarations,
    pj_findings,
    pj_shares,
    projection_state,
    voids,
)

CHUNK = 500


def serving_generations(conn: Connection) -> dict[str, int]:
    return dict(conn.execute(select(projection_state.c.name, projection_state.c.generation)
                             .where(projection_state.c.status == "serving")).all())


def serving(table: Table, name: str):
    """The rows of `table` in projection `name`'s serving generation, named in the statement
    that reads them: a switch may delete the retired generation between two statements of a
    transaction that is not one snapshot (a projection's step), never within one statement."""
    return table.c.generation == (select(projection_state.c.generation)
                                  .where(projection_state.c.name == name, projection_state.c.status == "serving")
                                  .scalar_subquery())


class FactSource:
    """Loads what the rules need for many batches at one log position, in bulk queries."""

    def __init__(self, conn: Connection, config: RuleConfig):
        self.conn = conn
        self.config = config
        self.countries = dict(conn.execute(select(parties.c.party_id, parties.c.country)).all())
        self._outbound: dict[str, list] = {}

    def judge(self, batch_ids: Iterable[str], position: int) -> Iterator[Finding]:
        ids = sorted(set(batch_ids))
        for start in range(0, len(ids), CHUNK):
            for facts in self.facts(ids[start:start + CHUNK], position).values():
                yield from judge(facts, self.config)

    def facts(self, batch_ids: list[str], position: int) -> dict[str, Facts]:
        edges = self._rows(select(lineage.c.parent, lineage.c.child, lineage.c.event_id), lineage.c.parent, batch_ids)
        edges += self._rows(select(lineage.c.parent, lineage.c.child, lineage.c.event_id), lineage.c.child, batch_ids)
        upto = select(*_EVENT_COLUMNS).where(events.c.position <= position)
        found = {row.event_id: row for row in self._rows(upto, events.c.batch_id, batch_ids)}
        extra = [e.event_id for e in edges if e.event_id not in found]
        found.update({row.event_id: row for row in self._rows(upto, events.c.event_id, extra)})
        voided = self.voided_in(batch_ids, position) | self.voided(extra, position)
        parsed = {i: _event(row) for i, row in found.items() if i not in voided and row.type != "event.voided"}
        shares: dict[str, dict[str, Decimal]] = {b: {} for b in batch_ids}
        for row in self._rows(select(pj_shares.c.batch_id, pj_shares.c.ancestor, pj_shares.c.share)
                              .where(serving(pj_shares, "shares")), pj_shares.c.batch_id,
                              batch_ids):
            shares[row.batch_id][row.ancestor] = Decimal(row.share)
        related = sorted({*batch_ids, *(a for s in shares.values() for a in s)})
        kinds = {r.batch_id: r for r in self._rows(select(batches.c.batch_id, batches.c.origin, batches.c.origin_country),
                                                   batches.c.batch_id, related)}
        declarations: dict[str, list[Declaration]] = {}
        for declaration in self.declarations(related, position, kinds):
            declarations.setdefault(declaration.batch_id, []).append(declaration)
        touching: dict[str, list[Event]] = {b: [] for b in batch_ids}
        for event in parsed.values():
            if event.batch_id in touching:
                touching[event.batch_id].append(event)
        for edge in edges:
            event = parsed.get(edge.event_id)
            for batch_id in (edge.parent, edge.child):
                if event is not None and batch_id in touching and event.batch_id != batch_id:
                    touching[batch_id].append(event)
        result = {}
        for batch_id in batch_ids:
            own = shares[batch_id]
            governing = sorted((d for source in (batch_id, *(a for a, share in own.items()
                                                             if share >= self.config.de_minimis))
                                for d in declarations.get(source, ())), key=lambda d: d.position)
            registered = sum((s for a, s in own.items() if a in kinds and kinds[a].origin == "registered"),
                             Decimal(1) if batch_id in kinds and kinds[batch_id].origin == "registered" else Decimal(0))
            history = sorted({e.event_id: e for e in touching[batch_id]}.values(), key=lambda e: e.position)
            result[batch_id] = Facts(batch_id, history, governing, registered, self.countries,
                                     lambda d, position=position: self.outbound(d, position))
        return result

    def voided_in(self, batch_ids: list[str], position: int) -> set[str]:
        """Events of these batches' streams voided by an event at or before `position`."""
        target, void = events.alias("target"), events.alias("void")
        rows = self._rows(select(voids.c.voided_event_id)
                          .join(target, target.c.event_id == voids.c.voided_event_id)
                          .join(void, void.c.event_id == voids.c.void_event_id)
                          .where(void.c.position <= position), target.c.batch_id, batch_ids)
        return {row.voided_event_id for row in rows}

    def voided(self, event_ids: list[str], position: int) -> set[str]:
        """Those of `event_ids` voided by an event at or before `position`."""
        rows = self._rows(select(voids.c.voided_event_id).join(events, events.c.event_id == voids.c.void_event_id)
                          .where(events.c.position <= position), voids.c.voided_event_id, event_ids)
        return {row.voided_event_id for row in rows}

    def declarations(self, batch_ids: list[str], position: int, kinds: dict) -> list[Declaration]:
        rows = self._rows(select(pj_declarations).where(serving(pj_declarations, "batch_state"),
                                                        pj_declarations.c.position <= position),
                          pj_declarations.c.batch_id, batch_ids)
        withdrawn = self.voided([row.event_id for row in rows if row.voided_by], position)
        return sorted((Declaration(row.event_id, row.batch_id, row.position,
                                   kinds[row.batch_id].origin_country if row.batch_id in kinds else None,
                                   json.loads(row.data))
                       for row in rows if row.event_id not in withdrawn), key=lambda d: d.position)

    def outbound(self, declaration: Declaration, position: int) -> list[tuple[Event, int]]:
        """Moves out of the declared batch's origin country (by a holder there, to anywhere
        else) after the declaration, across the batches it governs, each with the declared
        material's mass in it."""
        key = f"{declaration.event_id}@{position}"
        if key not in self._outbound:
            governed = {declaration.batch_id: Decimal(1)}
            governed.update({r.batch_id: Decimal(r.share) for r in self.conn.execute(
                select(pj_shares.c.batch_id, pj_shares.c.share).where(
                    serving(pj_shares, "shares"), pj_shares.c.ancestor == declaration.batch_id))
                if Decimal(r.share) >= self.config.de_minimis})
            rows = self._rows(select(*_EVENT_COLUMNS).where(events.c.type.in_(("custody.shipped", "custody.exported")),
                                     events.c.position > declaration.position, events.c.position <= position),
                              events.c.batch_id, list(governed))
            voided = self.voided([r.event_id for r in rows], position)
            moves = []
            for event in sorted((_event(r) for r in rows if r.event_id not in voided), key=lambda e: e.position):
                if destination(event, self.countries) == declaration.origin_country or \
                        self.countries.get(event.actor) != declaration.origin_country:
                    continue
                moved = sum(-delta for b, party, delta in event.effects.get("holdings", ())
                            if b == event.batch_id and party == event.actor and delta < 0)
                moves.append((event, int(Decimal(moved) * governed[event.batch_id])))
            self._outbound[key] = moves
        return self._outbound[key]

    def family(self, batch_ids: Iterable[str]) -> set[str]:
        """The batches and every batch up- or downstream of them, through every lineage edge
        ever recorded (voided ones too: a void changes what lies on both sides of it)."""
        seen, frontier = set(batch_ids), set(batch_ids)
        while frontier:
            nearby = self._rows(select(lineage.c.parent, lineage.c.child), lineage.c.parent, list(frontier))
            nearby += self._rows(select(lineage.c.parent, lineage.c.child), lineage.c.child, list(frontier))
            frontier = {b for row in nearby for b in (row.parent, row.child)} - seen
            seen |= frontier
        return seen

    def _rows(self, query, column, keys: list) -> list:
        return rows_in(self.conn, query, column, keys)


def rows_in(conn: Connection, query, column, keys: Iterable) -> list:
    """The query's rows whose `column` is one of `keys`, a chunk at a time."""
    keys, found = sorted(keys), []
    postgres = conn.dialect.name == "postgresql"
    for start in range(0, len(keys), CHUNK):
        part = keys[start:start + CHUNK]
        # One array parameter on PostgreSQL: an IN list of hundreds costs more to build than to run.
        condition = column == any_(literal(part, ARRAY(column.type))) if postgres else column.in_(part)
        found.extend(conn.execute(query.where(condition)).all())
    return found


_EVENT_COLUMNS = (events.c.event_id, events.c.type, events.c.batch_id, events.c.actor, events.c.occurred_at,
                  events.c.position, events.c.data, events.c.effects)


def _event(row) -> Event:
    data, effects = fastjson.loads(f"[{row.data},{row.effects}]")
    return Event(row.event_id, row.type, row.batch_id, row.actor, _occurred(row.occurred_at), row.position, data,
                 effects)


def _occurred(text: str) -> datetime:
    """occurred_at was validated as RFC 3339 when it was appended; the C parser reads all
    of it but the lower-case `t` and `z` that RFC 3339 also allows."""
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return parse_time(text)


def touched_batches(source: FactSource, new_events: Iterable) -> set[str]:
    """The batches whose findings the events may change."""
    touched, families = set(), set()
    for event in new_events:
        touched.add(event.batch_id)
        touched.update(part["batch_id"] for part in event.data.get("inputs", ()))
        touched.update(part["batch_id"] for part in event.data.get("children", ()))
        if event.type in ("enduse.declared", "event.voided"):
            families.add(event.batch_id)
    return touched | (source.family(families) if families else set())


class Findings(Projection):
    """Every standing finding of the rules that do not depend on the time of asking."""

    name = "findings"
    version = 1
    tables = (pj_findings,)
    requires = ("batch_state", "shares")
    reads_own_rows = False

    def __init__(self, config: RuleConfig | None = None):
        self.config = config or RuleConfig()

    def apply(self, rows: GenerationRows, new_events) -> None:
        source = FactSource(rows.conn, self.config)
        touched = sorted(touched_batches(source, (event for event, _ in new_events)))
        position = new_events[-1][0].position
        findings = {f.finding_id: finding_row(f, rows.generation) for f in source.judge(touched, position)}
        rows.delete("pj_findings", "batch_id", touched)
        rows.write([Write("pj_findings", list(findings.values()))])


def finding_row(finding: Finding, generation: int) -> dict:
    return {"generation": generation, "finding_id": finding.finding_id, "batch_id": finding.batch_id,
            "rule": finding.rule, "category": finding.category, "severity": finding.severity,
            "licence_id": finding.licence_id, "declaration_id": finding.declaration_id, "message": finding.message,
            "evidence": json.dumps(list(finding.evidence)), "position": finding.position}


def finding_from_row(row) -> Finding:
    return Finding(row.rule, row.batch_id, row.message, tuple(json.loads(row.evidence)), row.position,
                   row.licence_id, row.declaration_id)
