"""Property: for random custody histories (diversions, over-shipments, receipts by others,
events that occurred out of order, voids), the findings kept incrementally, in random step
sizes, equal those of a rebuild, and equal those of a full audit and an incremental one."""

from __future__ import annotations

import random
import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.errors import LedgerError
from ledger.services import Ledger
from tests.conftest import Clock, fresh_sqlite, settings_for
from tests.helpers import declared, event, parties, post, received, registered, shipped

OPERATIONS = ["register", "declare", "ship", "receive", "split", "transform", "export", "void"]
RECEIVERS = ["mumbai-imports", "pune-motors", "detroit-motors"]


def day(rng: random.Random) -> str:
    return f"2026-10-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:00:00+05:30"


def perform(ledger, cast, rng: random.Random, operation: str, world: dict) -> None:
    lots, shipments, done = world["lots"], world["shipments"], world["events"]
    lot = rng.choice(lots) if lots else None
    mass = str(rng.choice([1, 5, 10, 40, 100, 101]))
    if operation == "register" or lot is None:
        raw = {**registered(f"L-{uuid.uuid4().hex[:8]}", "100"), "occurred_at": day(rng)}
        actor = "maker"
    elif operation == "declare":
        extra = rng.choice([{}, {"humanitarian": True}, {"permitted_end_users": ["pune-motors"]},
                            {"licensed_mass_kg": "50"}, {"valid_until": "2026-10-15"}])
        raw, actor = declared(lot, tuple(rng.sample(["IN", "US", "DE"], rng.randint(1, 2))), **extra), "maker"
    elif operation == "ship":
        ref = f"S-{uuid.uuid4().hex[:8]}"
        raw, actor = shipped(lot, ref, rng.choice(RECEIVERS), mass), "maker"
        shipments.append((lot, ref, raw["data"]["to_party"]))
    elif operation == "receive" and shipments:
        batch, ref, consignee = rng.choice(shipments)
        receiver = consignee if rng.random() < 0.7 else rng.choice(["mumbai-imports", "pune-motors"])
        raw, actor = received(batch, ref, rng.choice([mass, "10", "9.9"])), receiver
    elif operation == "split":
        children = [{"batch_id": f"{lot}-{i}-{uuid.uuid4().hex[:4]}", "mass_kg": rng.choice(["30", "60"])}
                    for i in range(2)]
        raw, actor = event("batch.split", lot, {"children": children}), "maker"
        world["new"] = [c["batch_id"] for c in children]
    elif operation == "transform":
        product = f"P-{uuid.uuid4().hex[:8]}"
        raw, actor = event("batch.transformed", product, {"inputs": [{"batch_id": lot, "mass_kg": mass}],
                                                          "product": "motor", "mass_kg": rng.choice(["200", "90000"])}), "maker"
        world["new"] = [product]
    elif operation == "export":
        raw, actor = event("custody.exported", lot, {"to_country": rng.choice(["IN", "US"]), "customs_ref": "C",
                                                     "mass_kg": mass}), "maker"
    elif operation == "void" and done:
        target = rng.choice(done)
        raw, actor = event("event.voided", target["batch_id"], {"voided_event_id": target["event_id"],
                                                                 "reason": "did_not_occur"}), "maker"
    else:
        return
    raw = {**raw, "occurred_at": day(rng)}
    party = cast[actor] if actor in cast else next(p for p in cast.values() if p.party_id == actor)
    try:
        post(ledger, party, raw)
    except LedgerError:
        world.pop("new", None)
        return
    if raw["type"] == "batch.registered":
        lots.append(raw["batch_id"])
    lots.extend(world.pop("new", []))
    if actor == "maker" and raw["type"] != "event.voided":
        done.append(raw)


def standing_ids(ledger) -> set[str]:
    found, _ = ledger.diversion.findings(limit=100_000)
    return {f.finding_id for f in found if f.rule != "unreceived_shipment"}


@given(st.lists(st.tuples(st.sampled_from(OPERATIONS), st.integers(min_value=1, max_value=4)), min_size=3,
                max_size=30), st.integers(min_value=0, max_value=10_000))
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_incremental_findings_equal_a_rebuild_and_both_audits(sqlite_template, tmp_path, plan, seed):
    clock = Clock()
    ledger = Ledger.open(settings_for(fresh_sqlite(sqlite_template, tmp_path)), clock=clock)
    cast = parties(ledger)
    rng = random.Random(seed)
    world = {"lots": [], "shipments": [], "events": []}
    for operation, step in plan:
        perform(ledger, cast, rng, operation, world)
        ledger.projections.batch_size = step
        ledger.projections.catch_up()
    incremental = standing_ids(ledger)
    ledger.projections.rebuild(["findings"])
    assert standing_ids(ledger) == incremental
    audits = ledger.audits
    by_scope = {scope: audits.run(audits.request(scope, "audit-co")["audit_id"]) for scope in ("incremental", "full")}
    stored = {scope: {f["finding_id"]: f["rule"] for f in audits.findings_of(report["audit_id"])}
              for scope, report in by_scope.items()}
    assert stored["incremental"] == stored["full"]
    assert {i for i, rule in stored["full"].items() if rule != "unreceived_shipment"} == incremental
    assert by_scope["incremental"]["counts"] == by_scope["full"]["counts"]
    ledger.close()
