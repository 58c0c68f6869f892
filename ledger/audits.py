"""Verdicts, findings and audits (SPEC 2, 5 and 7).

Standing findings come from the `findings` projection; `unreceived_shipment`, the one rule
that depends on the time of asking, is judged at that time from the open shipments. A
verdict of batch B covers B and every descendant in which B's share is at least the de
minimis threshold, and counts a diversion only under a declaration that governs B.

An audit judges the rules as of one log position and the audit's time, stores its report
and findings, and diffs them against the previous finished audit. `incremental` brings the
findings projection up to the head (it re-judges only the batches touched since) and reads
it; `full` judges every batch again through the same rules and loader. Both give the same
findings.
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections import Counter
from decimal import Decimal

from sqlalchemy import Connection, Engine, and_, func, insert, select, update

from ledger.db import reader, snapshot, writer
from ledger.errors import Invalid, NotFound
from ledger.events import Clock, format_time, utc_now
from ledger.projections.engine import ProjectionEngine
from ledger.projections.findings import FactSource, finding_from_row, rows_in, serving_generations
from ledger.rules import Finding, RuleConfig, unreceived_shipments
from ledger.schema import audits, batches, events, pj_declarations, pj_findings, pj_shares, shipments

SCOPES = ("incremental", "full")
CSV_COLUMNS = ("finding_id", "rule", "category", "severity", "batch_id", "licence_id", "declaration_id", "position",
               "evidence", "message")


class Diversion:
    """Findings and verdicts, read from the serving findings projection."""

    def __init__(self, engine: Engine, projections: ProjectionEngine, config: RuleConfig, clock: Clock = utc_now):
        self.engine = engine
        self.projections = projections
        self.config = config
        self.clock = clock
        # A verdict reads several projections; a switch between two of its statements must
        # not leave it reading a generation that was just deleted.
        self._snapshots = snapshot(engine)

    def verdict(self, batch_id: str) -> dict:
        with self._snapshots.begin() as conn:
            generations = serving_generations(conn)
            position = self.projections.positions().get("findings", 0)
            shares = self._shares_of(conn, generations, batch_id)
            covered = [batch_id, *(d for d, s in self._descendants(conn, generations, batch_id).items()
                                   if s >= self.config.de_minimis)]
            findings = self.standing(conn, generations, covered) + self.unreceived(conn, covered)
            governing = {row.event_id for row in conn.execute(select(pj_declarations.c.event_id).where(
                pj_declarations.c.generation == generations.get("batch_state", 0),
                pj_declarations.c.batch_id.in_([batch_id, *(a for a, s in shares.items()
                                                            if s >= self.config.de_minimis)]),
                pj_declarations.c.voided_by.is_(None)))}
        return verdict_of(batch_id, findings, governing, position)

    def with_verdict(self, batch_ids: list[str], verdict: str) -> list[str]:
        """Those of `batch_ids` whose verdict is `verdict`. Only a batch with a finding against
        it, against a descendant, or on an open shipment of either can be other than clear,
        so the full verdict is computed for those alone."""
        if not batch_ids:
            return []
        with self._snapshots.begin() as conn:
            generations = serving_generations(conn)
            found = set(conn.execute(select(pj_findings.c.batch_id).where(
                pj_findings.c.generation == generations.get("findings", 0),
                pj_findings.c.batch_id.in_(batch_ids))).scalars())
            found |= set(conn.execute(select(shipments.c.batch_id).where(
                shipments.c.status == "open", shipments.c.batch_id.in_(batch_ids))).scalars())
            downstream = conn.execute(select(pj_shares.c.ancestor, pj_shares.c.batch_id, pj_shares.c.share).where(
                pj_shares.c.generation == generations.get("shares", 0), pj_shares.c.ancestor.in_(batch_ids))).all()
            marked = {r.batch_id for r in downstream if Decimal(r.share) >= self.config.de_minimis}
            if marked:
                marked = set(conn.execute(select(pj_findings.c.batch_id).where(
                    pj_findings.c.generation == generations.get("findings", 0),
                    pj_findings.c.batch_id.in_(marked))).scalars()) | set(conn.execute(
                    select(shipments.c.batch_id).where(shipments.c.status == "open",
                                                       shipments.c.batch_id.in_(marked))).scalars())
            found |= {r.ancestor for r in downstream if r.batch_id in marked
                      and Decimal(r.share) >= self.config.de_minimis}
        verdicts = {b: self.verdict(b)["verdict"] for b in found}
        return [b for b in batch_ids if verdicts.get(b, "clear") == verdict]

    def findings(self, rule: str | None = None, category: str | None = None, batch_id: str | None = None,
                 after: int = 0, limit: int = 100) -> tuple[list[Finding], int]:
        """Standing findings in position order (then id), after a position; the time-based
        ones are judged now and listed with the position of the shipment. A page holds at
        least `limit` findings when there are that many, and never splits a position."""
        with self._snapshots.begin() as conn:
            generations = serving_generations(conn)
            query = select(pj_findings).where(pj_findings.c.generation == generations.get("findings", 0),
                                              pj_findings.c.position > after)
            if rule is not None:
                query = query.where(pj_findings.c.rule == rule)
            if category is not None:
                query = query.where(pj_findings.c.category == category)
            if batch_id is not None:
                query = query.where(pj_findings.c.batch_id == batch_id)
            found = [finding_from_row(r) for r in conn.execute(
                query.order_by(pj_findings.c.position, pj_findings.c.finding_id).limit(limit))]
            if rule in (None, "unreceived_shipment") and category in (None, "integrity"):
                found += [f for f in self.unreceived(conn, [batch_id] if batch_id else None) if f.position > after]
            found.sort(key=lambda f: (f.position, f.finding_id))
            if len(found) >= limit:
                # A full page ends with every finding of its last position, so that `after` set
                # to that position loses none (one event can break several rules).
                last = found[limit - 1].position
                kept = {f.finding_id: f for f in found if f.position <= last}
                for row in conn.execute(query.where(pj_findings.c.position == last)):
                    kept.setdefault(row.finding_id, finding_from_row(row))
                found = sorted(kept.values(), key=lambda f: (f.position, f.finding_id))
        return found, self.projections.positions().get("findings", 0)

    def counts(self) -> dict[str, int]:
        """Standing findings of the projection by rule (the time-based rule excluded)."""
        with self._snapshots.begin() as conn:
            generation = serving_generations(conn).get("findings", 0)
            return dict(conn.execute(select(pj_findings.c.rule, func.count())
                                     .where(pj_findings.c.generation == generation)
                                     .group_by(pj_findings.c.rule)).all())

    def unreceived(self, conn: Connection, batch_ids: list[str] | None = None) -> list[Finding]:
        query = (select(shipments.c.batch_id, shipments.c.shipment_ref, shipments.c.shipped_event_id,
                        events.c.occurred_at, events.c.position)
                 .join(events, events.c.event_id == shipments.c.shipped_event_id)
                 .where(shipments.c.status == "open"))
        if batch_ids is not None:
            query = query.where(shipments.c.batch_id.in_(batch_ids))
        return unreceived_shipments(conn.execute(query).all(), self.clock(), self.config)

    @staticmethod
    def standing(conn: Connection, generations: dict[str, int], batch_ids: list[str] | None = None) -> list[Finding]:
        """The projection's findings, of some batches or of all."""
        query = select(pj_findings).where(pj_findings.c.generation == generations.get("findings", 0))
        if batch_ids is not None:
            query = query.where(pj_findings.c.batch_id.in_(batch_ids))
        return [finding_from_row(r) for r in conn.execute(query)]

    @staticmethod
    def _shares_of(conn: Connection, generations: dict[str, int], batch_id: str) -> dict[str, Decimal]:
        return {r.ancestor: Decimal(r.share) for r in conn.execute(select(pj_shares.c.ancestor, pj_shares.c.share)
                .where(pj_shares.c.generation == generations.get("shares", 0), pj_shares.c.batch_id == batch_id))}

    @staticmethod
    def _descendants(conn: Connection, generations: dict[str, int], batch_id: str) -> dict[str, Decimal]:
        return {r.batch_id: Decimal(r.share) for r in conn.execute(select(pj_shares.c.batch_id, pj_shares.c.share)
                .where(pj_shares.c.generation == generations.get("shares", 0), pj_shares.c.ancestor == batch_id))}


def verdict_of(batch_id: str, findings: list[Finding], governing: set[str], position: int) -> dict:
    """`diverted` if a diversion finding stands under a declaration that governs the batch;
    else `at_risk` if an integrity or compliance finding stands; else `clear` (SPEC 2)."""
    diverted = [f for f in findings if f.category == "diversion" and f.declaration_id in governing]
    at_risk = any(f.category in ("integrity", "compliance") for f in findings)
    verdict = "diverted" if diverted else "at_risk" if at_risk else "clear"
    return {"batch_id": batch_id, "verdict": verdict, "diverted": bool(diverted),
            "findings": [f.describe() for f in sorted(findings, key=lambda f: (f.position, f.finding_id))],
            "as_of_position": position}


class Audits:
    def __init__(self, engine: Engine, projections: ProjectionEngine, diversion: Diversion, clock: Clock = utc_now):
        self.engine = engine
        self.projections = projections
        self.diversion = diversion
        self.config = diversion.config
        self.clock = clock
        self._writer = writer(engine)
        self._reads = reader(engine)
        self._snapshots = snapshot(engine)

    def request(self, scope: str, requested_by: str) -> dict:
        if scope not in SCOPES:
            raise Invalid(f"An audit's scope is one of {', '.join(SCOPES)}.", {"scope": [f"must be one of {SCOPES}"]})
        audit_id = str(uuid.uuid4())
        with self._writer.begin() as conn:
            conn.execute(insert(audits).values(audit_id=audit_id, scope=scope, status="queued",
                                               requested_by=requested_by, requested_at=format_time(self.clock())))
        return self.get(audit_id)

    def run(self, audit_id: str) -> dict:
        """Judge, store the report and its diff against the previous finished audit."""
        audit = self._row(audit_id)
        started = format_time(self.clock())
        self._update(audit_id, status="running", started_at=started)
        try:
            self.projections.catch_up(["findings"])
            with self._snapshots.begin() as conn:
                position = self.projections.positions()["findings"]
                previous = self._previous(conn, started)
                if audit.scope == "full":
                    every = [b for (b,) in conn.execute(select(batches.c.batch_id))]
                    source = FactSource(conn, self.config)
                    found = list(source.judge(every, position))
                    checked = len(every)
                else:
                    found = Diversion.standing(conn, serving_generations(conn))
                    since = previous.as_of_position if previous is not None else 0
                    checked = conn.execute(select(func.count(func.distinct(events.c.batch_id))).where(
                        events.c.position > since, events.c.position <= position)).scalar_one()
                found += self.diversion.unreceived(conn)
                diverted = self._diverted_batches(conn, found)
            report, findings = self._report(audit, started, position, checked, found, diverted, previous)
            self._update(audit_id, status="finished", finished_at=report["finished_at"], as_of_position=position,
                         report=json.dumps(report), findings=json.dumps(findings))
        except Exception as error:
            self.fail(audit_id, str(error))
            raise
        return self.get(audit_id)

    def _report(self, audit, started: str, position: int, checked: int, found: list[Finding], diverted: list[str],
                previous) -> tuple[dict, list[dict]]:
        findings = sorted((f.describe() for f in {f.finding_id: f for f in found}.values()),
                          key=lambda f: (f["position"], f["finding_id"]))
        before = {f["finding_id"]: f for f in json.loads(previous.findings)} if previous is not None else {}
        now = {f["finding_id"]: f for f in findings}
        report = {
            "audit_id": audit.audit_id, "scope": audit.scope, "status": "finished", "requested_by": audit.requested_by,
            "started_at": started, "finished_at": format_time(self.clock()), "as_of_position": position,
            "batches_checked": checked, "counts": dict(sorted(Counter(f["rule"] for f in findings).items())),
            "findings_total": len(findings), "diverted_batches": diverted,
            "previous_audit_id": previous.audit_id if previous is not None else None,
            "new_findings": [f for i, f in now.items() if i not in before],
            "resolved_findings": [f for i, f in before.items() if i not in now],
        }
        return report, findings

    def _diverted_batches(self, conn: Connection, found: list[Finding]) -> list[str]:
        """The batches whose verdict a standing diversion makes `diverted`: the batch it stands
        against and every ancestor of it (with a share of at least de minimis) that the
        declaration governs. In bulk: an audit may carry thousands of diversions."""
        generations = serving_generations(conn)
        threshold = self.config.de_minimis
        diversions = [f for f in found if f.category == "diversion" and f.declaration_id is not None]
        if not diversions:
            return []
        declared = dict(rows_in(conn, select(pj_declarations.c.event_id, pj_declarations.c.batch_id).where(
            pj_declarations.c.generation == generations.get("batch_state", 0)), pj_declarations.c.event_id,
            {f.declaration_id for f in diversions}))
        shares: dict[tuple[str, str], Decimal] = {}
        shares_query = select(pj_shares.c.batch_id, pj_shares.c.ancestor, pj_shares.c.share).where(
            pj_shares.c.generation == generations.get("shares", 0))
        for batch_id, ancestor, share in rows_in(conn, shares_query, pj_shares.c.batch_id,
                                                  {f.batch_id for f in diversions}):
            shares[(batch_id, ancestor)] = Decimal(share)
        candidates = {f.batch_id: [f.batch_id, *(a for (b, a), s in shares.items() if b == f.batch_id and s >= threshold)]
                      for f in diversions}
        everyone = {c for group in candidates.values() for c in group}
        for batch_id, ancestor, share in rows_in(conn, shares_query.where(
                pj_shares.c.ancestor.in_(set(declared.values()))), pj_shares.c.batch_id, everyone):
            shares[(batch_id, ancestor)] = Decimal(share)
        diverted = set()
        for finding in diversions:
            origin = declared.get(finding.declaration_id)
            for candidate in candidates[finding.batch_id]:
                if candidate == origin or shares.get((candidate, origin), Decimal(0)) >= threshold:
                    diverted.add(candidate)
        return sorted(diverted)

    # --- reading -------------------------------------------------------------------------

    def get(self, audit_id: str) -> dict:
        return _described(self._row(audit_id))

    def fail(self, audit_id: str, reason: str) -> None:
        """An audit that failed, or could not be queued; the reason is kept with it."""
        self._update(audit_id, status="failed", finished_at=format_time(self.clock()), error=reason)

    def list(self, after: str | None = None, limit: int = 100) -> list[dict]:
        """Newest first: `after` is the requested_at/audit_id cursor of the last one seen."""
        query = select(audits)
        if after:
            stamp, _, audit_id = after.partition("|")
            query = query.where((audits.c.requested_at < stamp)
                                | and_(audits.c.requested_at == stamp, audits.c.audit_id < audit_id))
        with self._reads.connect() as conn:
            rows = conn.execute(query.order_by(audits.c.requested_at.desc(), audits.c.audit_id.desc())
                                .limit(limit)).all()
        return [self.summary(_described(row)) | {"cursor": f"{row.requested_at}|{row.audit_id}"} for row in rows]

    @staticmethod
    def summary(report: dict) -> dict:
        return {key: value for key, value in report.items() if key not in ("new_findings", "resolved_findings")}

    def findings_of(self, audit_id: str) -> list[dict]:
        """Every finding an audit reported, in position order."""
        return json.loads(self._row(audit_id).findings or "[]")

    def findings_csv(self, audit_id: str) -> str:
        out = io.StringIO()
        writer_ = csv.writer(out)
        writer_.writerow(CSV_COLUMNS)
        for finding in self.findings_of(audit_id):
            writer_.writerow([" ".join(finding[c]) if c == "evidence" else finding[c] for c in CSV_COLUMNS])
        return out.getvalue()

    def _row(self, audit_id: str):
        with self._reads.connect() as conn:
            row = conn.execute(select(audits).where(audits.c.audit_id == audit_id)).first()
        if row is None:
            raise NotFound(f"Audit {audit_id!r} not found.")
        return row

    def _previous(self, conn: Connection, before: str):
        return conn.execute(select(audits).where(audits.c.status == "finished", audits.c.started_at <= before)
                            .order_by(audits.c.started_at.desc(), audits.c.audit_id.desc()).limit(1)).first()

    def _update(self, audit_id: str, **values) -> None:
        with self._writer.begin() as conn:
            conn.execute(update(audits).where(audits.c.audit_id == audit_id).values(**values))




def _described(row) -> dict:
    """A finished audit's stored report, or what is known of one queued, running or failed."""
    if row.report:
        return json.loads(row.report)
    return {"audit_id": row.audit_id, "scope": row.scope, "status": row.status, "requested_by": row.requested_by,
            "started_at": row.started_at, "finished_at": row.finished_at, "as_of_position": row.as_of_position,
            "error": row.error}
