"""Standing (SPEC 3.2) and the custody state behind it: who holds what after each event type,
who may void, what a void undoes, and who can see which batches (SPEC 1)."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from ledger.errors import Conflict, Forbidden, Invalid
from tests.helpers import declared, event, parties, post, received, registered, shipped, unique


@pytest.fixture
def cast(ledger):
    return parties(ledger)


def holdings(ledger, batch_id: str) -> dict[str, int]:
    with ledger.engine.connect() as conn:
        rows = conn.execute(text("SELECT party_id, mass_mg FROM holdings WHERE batch_id = :b AND mass_mg != 0"),
                            {"b": batch_id})
        return dict(rows.all())


def kg(value: str) -> int:
    return int(float(value) * 1_000_000)


def test_split_moves_mass_to_children_held_by_the_actor(ledger, cast):
    parent, a, b = unique(), unique("C"), unique("C")
    post(ledger, cast["maker"], registered(parent, "100"),
         event("batch.split", parent, {"children": [{"batch_id": a, "mass_kg": "60"}, {"batch_id": b, "mass_kg": "40"}]}))
    assert holdings(ledger, parent) == {}
    assert holdings(ledger, a) == {"baotou-magnets": kg("60")} and holdings(ledger, b) == {"baotou-magnets": kg("40")}
    # The children are batches: the holder may ship them, and nobody may register them again.
    post(ledger, cast["maker"], shipped(a, unique("S"), "mumbai-imports", "60"))
    with pytest.raises(Conflict):
        post(ledger, cast["maker"], registered(b))


def test_transform_consumes_inputs_and_creates_the_output(ledger, cast):
    magnet, ref, motor = unique(), unique("S"), unique("M")
    post(ledger, cast["maker"], registered(magnet, "10"), shipped(magnet, ref, "pune-motors", "10"))
    post(ledger, cast["motors"], received(magnet, ref, "10"))
    post(ledger, cast["motors"], event("batch.transformed", motor, {
        "inputs": [{"batch_id": magnet, "mass_kg": "4"}], "product": "traction motor", "mass_kg": "200"}))
    assert holdings(ledger, magnet) == {"pune-motors": kg("6")}
    assert holdings(ledger, motor) == {"pune-motors": kg("200")}
    assert [e.version for e in ledger.store.stream(motor)] == [1]


def test_the_registrant_keeps_standing_until_the_mass_is_gone(ledger, cast):
    batch, ref = unique(), unique("S")
    post(ledger, cast["maker"], registered(batch, "10"), shipped(batch, ref, "mumbai-imports", "10"))
    assert holdings(ledger, batch) == {}
    # The producer holds nothing, but the mass (in transit) is not gone: it may still declare.
    post(ledger, cast["maker"], declared(batch))
    post(ledger, cast["importer"], received(batch, ref, "10"))
    post(ledger, cast["importer"], event("batch.consumed", batch, {"mass_kg": "10", "disposition": "consumed"}))
    with pytest.raises(Forbidden):
        post(ledger, cast["maker"], declared(batch, licence_id="L-late"))


def test_a_receipt_by_a_non_consignee_is_recorded_and_gives_it_custody(ledger, cast):
    batch, ref = unique(), unique("S")
    post(ledger, cast["maker"], registered(batch, "10"), shipped(batch, ref, "mumbai-imports", "10"))
    post(ledger, cast["stranger"], received(batch, ref, "9.5"))
    assert holdings(ledger, batch) == {"detroit-motors": kg("9.5")}
    assert ledger.store.can_see(cast["stranger"], batch)


def test_shipping_more_than_one_holds_is_recorded_not_rejected(ledger, cast):
    batch = unique()
    post(ledger, cast["maker"], registered(batch, "10"), shipped(batch, unique("S"), "mumbai-imports", "15"))
    assert holdings(ledger, batch) == {"baotou-magnets": -kg("5")}


def test_export_without_a_mass_takes_the_whole_holding(ledger, cast):
    batch = unique()
    post(ledger, cast["maker"], registered(batch, "10"),
         event("custody.exported", batch, {"to_country": "US", "customs_ref": "C-1"}))
    assert holdings(ledger, batch) == {}


def test_a_regulator_may_declare_on_any_batch_but_not_move_it(ledger, cast):
    batch = unique()
    post(ledger, cast["maker"], registered(batch))
    post(ledger, cast["regulator"], declared(batch))
    with pytest.raises(Forbidden):
        post(ledger, cast["regulator"], event("batch.consumed", batch, {"mass_kg": "1", "disposition": "consumed"}))


# --- voids ---------------------------------------------------------------------------------


def void(batch_id: str, target: str, reason: str = "did_not_occur") -> dict:
    return event("event.voided", batch_id, {"voided_event_id": target, "reason": reason})


def test_voiding_a_shipment_restores_the_holding_and_closes_the_shipment(ledger, cast):
    batch, ref = unique(), unique("S")
    ship = shipped(batch, ref, "mumbai-imports", "4")
    post(ledger, cast["maker"], registered(batch, "10"), ship)
    post(ledger, cast["maker"], void(batch, ship["event_id"]))
    assert holdings(ledger, batch) == {"baotou-magnets": kg("10")}
    with pytest.raises(Invalid):
        post(ledger, cast["importer"], received(batch, ref, "4"))
    with pytest.raises(Conflict):
        post(ledger, cast["maker"], shipped(batch, ref, "mumbai-imports", "4"))


def test_voiding_a_receipt_reopens_its_shipment(ledger, cast):
    batch, ref = unique(), unique("S")
    post(ledger, cast["maker"], registered(batch, "10"), shipped(batch, ref, "mumbai-imports", "10"))
    receipt = received(batch, ref, "10")
    post(ledger, cast["importer"], receipt)
    post(ledger, cast["importer"], void(batch, receipt["event_id"], "incorrect_data"))
    assert holdings(ledger, batch) == {}
    post(ledger, cast["importer"], received(batch, ref, "9.9"))
    assert holdings(ledger, batch) == {"mumbai-imports": kg("9.9")}


def test_who_may_void_and_what_cannot_be_voided(ledger, cast):
    batch, other = unique(), unique()
    register = registered(batch, "10")
    post(ledger, cast["maker"], register, registered(other))
    post(ledger, cast["maker"], shipped(batch, unique("S"), "mumbai-imports", "1"))
    with pytest.raises(Forbidden):
        post(ledger, cast["importer"], void(batch, register["event_id"]))
    with pytest.raises(Invalid) as unknown:
        post(ledger, cast["maker"], void(batch, "00000000-0000-4000-8000-000000000000"))
    assert "data.voided_event_id" in unknown.value.errors
    with pytest.raises(Invalid):
        post(ledger, cast["maker"], void(other, register["event_id"]))
    first = void(batch, register["event_id"])
    post(ledger, cast["regulator"], first)
    with pytest.raises(Conflict):
        post(ledger, cast["maker"], void(batch, register["event_id"]))
    with pytest.raises(Invalid):
        post(ledger, cast["regulator"], void(batch, first["event_id"]))
    assert holdings(ledger, batch) == {"baotou-magnets": -kg("1")}


# --- visibility ----------------------------------------------------------------------------


def test_a_consignee_sees_the_batch_and_everything_upstream_but_not_siblings(ledger, cast):
    magnet, half, other_half, ref, motor = unique(), unique("H"), unique("H"), unique("S"), unique("M")
    post(ledger, cast["maker"], registered(magnet, "10"), event("batch.split", magnet, {"children": [
        {"batch_id": half, "mass_kg": "5"}, {"batch_id": other_half, "mass_kg": "5"}]}),
        shipped(half, ref, "pune-motors", "5"))
    # A consignee may read the batch and its upstream provenance (SPEC 1), before receipt too.
    assert ledger.store.can_see(cast["motors"], half) and ledger.store.can_see(cast["motors"], magnet)
    assert not ledger.store.can_see(cast["stranger"], half)
    post(ledger, cast["motors"], received(half, ref, "5"))
    post(ledger, cast["motors"], event("batch.transformed", motor, {
        "inputs": [{"batch_id": half, "mass_kg": "5"}], "product": "motor", "mass_kg": "100"}))
    assert ledger.store.can_see(cast["motors"], motor)
    assert not ledger.store.can_see(cast["motors"], other_half), "a sibling is not upstream"
    assert not ledger.store.can_see(cast["stranger"], motor)
    assert ledger.store.can_see(cast["auditor"], motor) and ledger.store.can_see(cast["regulator"], motor)
    seen = {e.batch_id for e in ledger.store.feed(limit=1000, visible_to=cast["motors"])}
    assert seen == {magnet, half, motor}
