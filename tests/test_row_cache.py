"""The in-memory copy of a generation's rows that a rebuild reads instead of the database."""

from __future__ import annotations

import pytest

from ledger.projections.rows import RowCache
from ledger.recorders import Write


def holding(batch_id, party_id, mass):
    return {"generation": 2, "batch_id": batch_id, "party_id": party_id, "mass_mg": mass}


def test_looks_rows_up_by_any_column_and_answers_copies():
    cache = RowCache()
    cache.write(Write("pj_holdings", [holding("A", "maker", 5), holding("A", "importer", 3), holding("B", "maker", 1)]))
    assert sorted(r["party_id"] for r in cache.select("pj_holdings", "batch_id", ["A"])) == ["importer", "maker"]
    assert sorted(r["batch_id"] for r in cache.select("pj_holdings", "party_id", ["maker", "nobody"])) == ["A", "B"]
    cache.select("pj_holdings", "batch_id", ["B"])[0]["mass_mg"] = 99
    assert cache.select("pj_holdings", "batch_id", ["B"])[0]["mass_mg"] == 1
    assert cache.size == 3


def test_an_upsert_overwrites_only_its_update_columns_and_keeps_the_indexes_true():
    cache = RowCache()
    cache.select("pj_shipments", "status", [])
    first = {"generation": 2, "shipment_ref": "S1", "batch_id": "A", "status": "open", "received_mg": None}
    cache.write(Write("pj_shipments", [first]))
    later = dict(first, batch_id="ignored", status="received", received_mg=7)
    cache.write(Write("pj_shipments", [later], ("generation", "shipment_ref"), ("status", "received_mg")))
    [row] = cache.select("pj_shipments", "shipment_ref", ["S1"])
    assert (row["batch_id"], row["status"], row["received_mg"]) == ("A", "received", 7)
    assert cache.select("pj_shipments", "status", ["open"]) == []
    assert [r["shipment_ref"] for r in cache.select("pj_shipments", "status", ["received"])] == ["S1"]
    cache.write(Write("pj_shipments", [dict(first, status="void")], ("generation", "shipment_ref")))
    assert cache.select("pj_shipments", "shipment_ref", ["S1"])[0]["status"] == "received", "DO NOTHING"


def test_a_plain_insert_of_an_existing_row_is_refused_as_the_database_would():
    cache = RowCache()
    cache.write(Write("pj_holdings", [holding("A", "maker", 5)]))
    with pytest.raises(ValueError, match="exists"):
        cache.write(Write("pj_holdings", [holding("A", "maker", 6)]))


def test_deleting_removes_rows_from_every_index():
    cache = RowCache()
    cache.write(Write("pj_holdings", [holding("A", "maker", 5), holding("B", "maker", 1)]))
    cache.select("pj_holdings", "party_id", ["maker"])
    assert cache.delete("pj_holdings", "batch_id", ["A", "unknown"]) == 1
    assert [r["batch_id"] for r in cache.select("pj_holdings", "party_id", ["maker"])] == ["B"]
    assert cache.delete("pj_holdings", "batch_id", ["A"]) == 0
    assert cache.size == 1


def test_holds_back_what_the_database_lacks_and_hands_it_over_once():
    cache = RowCache()
    cache.write(Write("pj_holdings", [holding("A", "maker", 5), holding("B", "maker", 1)]))
    deleted, writes = cache.pending()
    assert deleted == {}
    assert [(w.table, w.keys, [r["batch_id"] for r in w.rows]) for w in writes] == [("pj_holdings", (), ["A", "B"])]
    assert cache.pending() == ({}, [])
    keys, updates = ("generation", "batch_id", "party_id"), ("mass_mg",)
    cache.write(Write("pj_holdings", [holding("A", "maker", 7), holding("C", "maker", 2)], keys, updates))
    cache.delete("pj_holdings", "batch_id", ["B"])
    deleted, writes = cache.pending()
    assert deleted == {"pj_holdings": [(2, "B", "maker")]}
    assert [(w.keys, w.updates, [(r["batch_id"], r["mass_mg"]) for r in w.rows]) for w in writes] == [
        ((), (), [("C", 2)]), (keys, updates, [("A", 7)])]


def test_a_row_made_and_removed_between_two_hand_overs_never_reaches_the_database():
    cache = RowCache()
    cache.write(Write("pj_holdings", [holding("A", "maker", 5)]))
    cache.pending()
    cache.delete("pj_holdings", "batch_id", ["A"])
    cache.write(Write("pj_holdings", [holding("A", "maker", 6), holding("B", "maker", 1)]))
    cache.delete("pj_holdings", "batch_id", ["B"])
    deleted, writes = cache.pending()
    assert deleted == {"pj_holdings": [(2, "A", "maker")]}, "the stored A goes, the new A replaces it"
    assert [[(r["batch_id"], r["mass_mg"]) for r in w.rows] for w in writes] == [[("A", 6)]]
