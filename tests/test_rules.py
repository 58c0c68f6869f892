"""Each diversion rule of SPEC 5: a history where it fires, and one where it nearly fires but
must not. Findings are read as the API reads them: the findings projection, caught up."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.conftest import Clock
from tests.helpers import declared, event, parties, post, received, registered, shipped, unique


@pytest.fixture
def clock() -> Clock:
    """Three weeks after the helpers' default occurred_at (2026-10-02), so that shipments
    left open are not yet overdue unless a test moves the clock."""
    return Clock(datetime(2026, 10, 20, 12, 0, tzinfo=UTC))


@pytest.fixture
def cast(ledger):
    return parties(ledger)


def on(raw: dict, days: int) -> dict:
    return {**raw, "occurred_at": at(days)}


def rules_on(ledger, batch_id: str | None = None) -> list[str]:
    ledger.projections.catch_up()
    found, _ = ledger.diversion.findings(batch_id=batch_id, limit=1000)
    return sorted(f.rule for f in found)


def at(days: int) -> str:
    """An occurred_at `days` after 2026-10-01."""
    return f"2026-10-{1 + days:02d}T08:00:00+00:00"


def licensed_lot(ledger, cast, mass="1000", **declaration):
    lot = unique("LOT")
    post(ledger, cast["maker"], registered(lot, mass, occurred_at=at(0)), on(declared(lot, ("IN",), **declaration), 0))
    return lot


def test_destination_not_permitted_fires_outside_the_licence_but_not_back_to_the_origin(ledger, cast):
    lot = licensed_lot(ledger, cast)
    post(ledger, cast["maker"], shipped(lot, unique("BL"), "detroit-motors", "100"))
    assert rules_on(ledger, lot) == ["destination_not_permitted"]
    home = licensed_lot(ledger, cast)
    post(ledger, cast["maker"], shipped(home, unique("BL"), "mumbai-imports", "100"),
         shipped(home, unique("BL"), "mofcom", "100"))
    assert rules_on(ledger, home) == [], "India is permitted, and China is the origin"


def test_a_humanitarian_declaration_turns_the_breach_into_information(ledger, cast):
    lot = licensed_lot(ledger, cast, humanitarian=True)
    post(ledger, cast["maker"], shipped(lot, unique("BL"), "detroit-motors", "100"))
    assert rules_on(ledger, lot) == ["humanitarian_exemption"]
    assert ledger.diversion.verdict(lot)["verdict"] == "clear"


def test_end_user_not_permitted_fires_for_another_user_only(ledger, cast):
    lot = licensed_lot(ledger, cast, permitted_end_users=["pune-motors"])
    ref, ref2 = unique("BL"), unique("BL")
    post(ledger, cast["maker"], shipped(lot, ref, "mumbai-imports", "500"), shipped(lot, ref2, "pune-motors", "500"))
    post(ledger, cast["importer"], received(lot, ref, "500"))
    post(ledger, cast["motors"], received(lot, ref2, "500"))
    post(ledger, cast["motors"], event("batch.consumed", lot, {"mass_kg": "500", "disposition": "consumed"}))
    assert rules_on(ledger, lot) == []
    post(ledger, cast["importer"], event("batch.consumed", lot, {"mass_kg": "500", "disposition": "consumed"}))
    assert rules_on(ledger, lot) == ["end_user_not_permitted"]


def test_receiver_mismatch_fires_unless_the_consignee_receives(ledger, cast):
    lot, other = licensed_lot(ledger, cast), licensed_lot(ledger, cast)
    ref, ref2 = unique("BL"), unique("BL")
    post(ledger, cast["maker"], shipped(lot, ref, "mumbai-imports", "100"), shipped(other, ref2, "mumbai-imports", "100"))
    post(ledger, cast["motors"], received(lot, ref, "100"))
    post(ledger, cast["importer"], received(other, ref2, "100"))
    assert rules_on(ledger, lot) == ["receiver_mismatch"]
    assert rules_on(ledger, other) == []


def test_mass_imbalance_fires_only_beyond_the_tolerance(ledger, cast):
    # 1000 kg registered: the tolerance is 0.5% of it plus 0.001 kg, so 1005.001 kg out is allowed.
    within, beyond = licensed_lot(ledger, cast), licensed_lot(ledger, cast)
    post(ledger, cast["maker"], shipped(within, unique("BL"), "mumbai-imports", "1005.001"))
    post(ledger, cast["maker"], shipped(beyond, unique("BL"), "mumbai-imports", "1005.002"))
    assert rules_on(ledger, within) == []
    assert rules_on(ledger, beyond) == ["mass_imbalance"]


def test_split_children_above_the_parent_are_a_mass_imbalance(ledger, cast):
    lot = licensed_lot(ledger, cast, mass="100")
    post(ledger, cast["maker"], event("batch.split", lot, {"children": [
        {"batch_id": unique("C"), "mass_kg": "60"}, {"batch_id": unique("C"), "mass_kg": "50"}]}))
    assert rules_on(ledger, lot) == ["mass_imbalance"]


def test_transit_loss_fires_only_beyond_the_tolerance(ledger, cast):
    lost, kept = licensed_lot(ledger, cast), licensed_lot(ledger, cast)
    ref, ref2 = unique("BL"), unique("BL")
    post(ledger, cast["maker"], shipped(lost, ref, "mumbai-imports", "1000"), shipped(kept, ref2, "mumbai-imports", "1000"))
    post(ledger, cast["importer"], received(lost, ref, "994.998"))
    post(ledger, cast["importer"], received(kept, ref2, "994.999"))
    assert rules_on(ledger, lost) == ["transit_loss"]
    assert rules_on(ledger, kept) == []


def test_an_unreceived_shipment_is_judged_at_the_time_of_asking(ledger, cast, clock):
    lot, received_lot = licensed_lot(ledger, cast), licensed_lot(ledger, cast)
    ref = unique("BL")
    post(ledger, cast["maker"], on(shipped(lot, unique("BL"), "mumbai-imports", "10"), 1),
         on(shipped(received_lot, ref, "mumbai-imports", "10"), 1))
    post(ledger, cast["importer"], on(received(received_lot, ref, "10"), 2))
    clock.now = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)
    assert rules_on(ledger, lot) == [], "open exactly 30 days is not more than the window"
    clock.advance(minutes=1)
    assert rules_on(ledger, lot) == ["unreceived_shipment"]
    assert rules_on(ledger, received_lot) == []


def test_chronology_fires_for_a_receipt_before_its_shipment_and_a_use_before_registration(ledger, cast):
    lot, fine = unique("LOT"), unique("LOT")
    ref, ref2 = unique("BL"), unique("BL")
    post(ledger, cast["maker"], registered(lot, occurred_at=at(5)), registered(fine, occurred_at=at(5)),
         on(declared(lot, ("IN",)), 5), on(declared(fine, ("IN",)), 5))
    post(ledger, cast["maker"], on(shipped(lot, ref, "mumbai-imports", "10"), 4),
         on(shipped(fine, ref2, "mumbai-imports", "10"), 6))
    post(ledger, cast["importer"], on(received(lot, ref, "10"), 6), on(received(fine, ref2, "10"), 6))
    assert rules_on(ledger, lot) == ["chronology"], "shipped before it was registered"
    late = unique("LOT")
    ref3 = unique("BL")
    post(ledger, cast["maker"], registered(late, occurred_at=at(5)), on(declared(late, ("IN",)), 5))
    post(ledger, cast["maker"], on(shipped(late, ref3, "mumbai-imports", "10"), 7))
    post(ledger, cast["importer"], on(received(late, ref3, "10"), 6))
    assert rules_on(ledger, late) == ["chronology"], "received before it was shipped"
    assert rules_on(ledger, fine) == []


def test_licensed_quantity_is_exceeded_only_by_what_leaves_the_origin_country_beyond_it(ledger, cast):
    lot = licensed_lot(ledger, cast, mass="1500", licensed_mass_kg="1000")
    post(ledger, cast["maker"], shipped(lot, unique("BL"), "mumbai-imports", "1000"),
         shipped(lot, unique("BL"), "mofcom", "400"))
    assert rules_on(ledger, lot) == [], "exactly the licensed mass left China; the rest stayed"
    post(ledger, cast["maker"], shipped(lot, unique("BL"), "mumbai-imports", "0.001"))
    assert rules_on(ledger, lot) == ["licensed_quantity_exceeded"]


def test_a_use_after_the_declaration_expired_is_flagged(ledger, cast):
    lot = licensed_lot(ledger, cast, valid_until="2026-10-05")
    post(ledger, cast["maker"], on(shipped(lot, unique("BL"), "mumbai-imports", "10"), 4))
    assert rules_on(ledger, lot) == [], "on the last valid day"
    post(ledger, cast["maker"], on(shipped(lot, unique("BL"), "mumbai-imports", "10"), 5))
    assert rules_on(ledger, lot) == ["declaration_expired"]


def test_undeclared_cross_border_fires_for_a_controlled_batch_leaving_its_country(ledger, cast):
    lot, home = unique("LOT"), unique("LOT")
    post(ledger, cast["maker"], registered(lot), registered(home))
    post(ledger, cast["maker"], shipped(lot, unique("BL"), "mumbai-imports", "10"),
         shipped(home, unique("BL"), "mofcom", "10"))
    assert rules_on(ledger, lot) == ["undeclared_cross_border"]
    assert rules_on(ledger, home) == []


@pytest.mark.parametrize(("magnet_kg", "governed"), [("1", True), ("0.999", False)])
def test_governance_holds_exactly_at_the_de_minimis_share(ledger, cast, magnet_kg, governed):
    """A product that is exactly 0.1% magnet is governed by the magnets' licence; 0.0999% is not."""
    lot = licensed_lot(ledger, cast)
    ref = unique("BL")
    post(ledger, cast["maker"], shipped(lot, ref, "pune-motors", "1000"))
    post(ledger, cast["motors"], received(lot, ref, "1000"))
    product = unique("CAR")
    post(ledger, cast["motors"], event("batch.transformed", product, {
        "inputs": [{"batch_id": lot, "mass_kg": magnet_kg}], "product": "car", "mass_kg": "1000"}))
    post(ledger, cast["motors"], event("custody.exported", product, {"to_country": "US", "customs_ref": unique("SB")}))
    assert rules_on(ledger, product) == (["destination_not_permitted"] if governed else [])
    assert ledger.diversion.verdict(lot)["verdict"] == ("diverted" if governed else "clear")
    assert ledger.diversion.with_verdict([lot, product], "diverted") == ([lot, product] if governed else [])
    assert ledger.diversion.with_verdict([lot, product], "clear") == ([] if governed else [lot, product])


def test_voiding_the_event_a_finding_rests_on_withdraws_it(ledger, cast):
    lot = licensed_lot(ledger, cast)
    ship = shipped(lot, unique("BL"), "detroit-motors", "100")
    post(ledger, cast["maker"], ship)
    assert rules_on(ledger, lot) == ["destination_not_permitted"]
    post(ledger, cast["maker"], event("event.voided", lot, {"voided_event_id": ship["event_id"],
                                                            "reason": "did_not_occur"}))
    assert rules_on(ledger, lot) == []


def test_voiding_the_declaration_withdraws_its_findings_downstream(ledger, cast):
    lot = unique("LOT")
    declaration = declared(lot, ("IN",))
    post(ledger, cast["maker"], registered(lot), declaration)
    child = unique("C")
    post(ledger, cast["maker"], event("batch.split", lot, {"children": [{"batch_id": child, "mass_kg": "1000"}]}))
    post(ledger, cast["maker"], shipped(child, unique("BL"), "detroit-motors", "1000"))
    assert rules_on(ledger, child) == ["destination_not_permitted"]
    assert ledger.diversion.verdict(lot)["verdict"] == "diverted"
    post(ledger, cast["regulator"], event("event.voided", lot, {"voided_event_id": declaration["event_id"],
                                                                "reason": "incorrect_data"}))
    assert rules_on(ledger, child) == ["undeclared_cross_border"]
    assert ledger.diversion.verdict(lot)["verdict"] == "at_risk"


def test_a_verdict_counts_a_diversion_only_under_a_declaration_that_governs_the_batch(ledger, cast):
    """A licence on a child does not govern its parent: the parent stays clear."""
    lot, child = unique("LOT"), unique("C")
    post(ledger, cast["maker"], registered(lot))
    post(ledger, cast["maker"], event("batch.split", lot, {"children": [{"batch_id": child, "mass_kg": "1000"}]}))
    post(ledger, cast["maker"], declared(child, ("IN",)))
    post(ledger, cast["maker"], shipped(child, unique("BL"), "detroit-motors", "1000"))
    ledger.projections.catch_up()
    assert ledger.diversion.verdict(child)["verdict"] == "diverted"
    parent = ledger.diversion.verdict(lot)
    assert parent["verdict"] == "clear" and [f["rule"] for f in parent["findings"]] == ["destination_not_permitted"]


def test_audits_report_counts_diverted_batches_and_the_diff_against_the_previous(ledger, cast, clock):
    lot = licensed_lot(ledger, cast)
    ship = shipped(lot, unique("BL"), "detroit-motors", "100")
    post(ledger, cast["maker"], ship)
    first = ledger.audits.run(ledger.audits.request("incremental", "audit-co")["audit_id"])
    assert first["status"] == "finished" and first["counts"] == {"destination_not_permitted": 1}
    assert first["diverted_batches"] == [lot]
    assert ledger.diversion.counts() == {"destination_not_permitted": 1}
    assert [f["rule"] for f in first["new_findings"]] == ["destination_not_permitted"]
    clock.advance(minutes=1)
    post(ledger, cast["maker"], event("event.voided", lot, {"voided_event_id": ship["event_id"],
                                                            "reason": "did_not_occur"}))
    second = ledger.audits.run(ledger.audits.request("full", "audit-co")["audit_id"])
    assert second["previous_audit_id"] == first["audit_id"]
    assert second["counts"] == {} and second["new_findings"] == []
    assert [f["rule"] for f in second["resolved_findings"]] == ["destination_not_permitted"]
    csv_text = ledger.audits.findings_csv(first["audit_id"])
    assert csv_text.splitlines()[0].startswith("finding_id,rule,category") and len(csv_text.splitlines()) == 2


def test_a_page_of_findings_never_splits_one_position(ledger, cast):
    """Two licences broken by one shipment: both findings share its position."""
    lot = licensed_lot(ledger, cast)
    post(ledger, cast["maker"], declared(lot, ("IN",), licence_id="LIC-2"))
    ship = shipped(lot, unique("BL"), "detroit-motors", "10")
    post(ledger, cast["maker"], ship)
    post(ledger, cast["maker"], shipped(lot, unique("BL"), "detroit-motors", "10"))
    ledger.projections.catch_up()
    first, _ = ledger.diversion.findings(batch_id=lot, limit=1)
    assert sorted(f.licence_id for f in first) == ["LIC-1", "LIC-2"]
    assert len({f.position for f in first}) == 1 and ship["event_id"] in first[0].evidence
    rest, _ = ledger.diversion.findings(batch_id=lot, after=first[0].position, limit=1)
    assert len(rest) == 2 and all(f.position > first[0].position for f in rest)
