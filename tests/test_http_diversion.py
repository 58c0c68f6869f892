"""Verdicts, findings and audits over HTTP against a real server in the embedded mode."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

from tests.conftest import assert_problem
from tests.helpers import declared, received, registered, shipped, unique


def recent(raw: dict, hours: int) -> dict:
    """The server judges open shipments at its real clock: keep these within the window."""
    moment = datetime.now(UTC) - timedelta(days=2) + timedelta(hours=hours)
    return {**raw, "occurred_at": moment.strftime("%Y-%m-%dT%H:%M:%SZ")}


def diverted_lot(live_server, keys) -> tuple[str, dict]:
    """A lot licensed for India, shipped to India and re-shipped to the United States."""
    lot, ref, ref2 = unique("LOT"), unique("BL"), unique("BL")
    live_server.request("POST", "/v1/events", keys["maker"], json={"events": [
        recent(registered(lot, "100"), 0), recent(declared(lot, ("IN",)), 1),
        recent(shipped(lot, ref, keys["importer_id"], "100"), 2)]})
    live_server.request("POST", "/v1/events", keys["importer"], json=recent(received(lot, ref, "100"), 3))
    answer = live_server.request("POST", "/v1/events", keys["importer"],
                                 json=recent(shipped(lot, ref2, keys["stranger_id"], "40"), 4))
    return lot, answer.json()["receipts"][0]


def test_the_diversion_verdict_and_its_evidence(live_server, keys):
    lot, receipt = diverted_lot(live_server, keys)
    answer = live_server.request("GET", f"/v1/batches/{lot}/diversion?min_position={receipt['position']}",
                                 keys["regulator"])
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["verdict"] == "diverted" and body["diverted"] is True
    assert int(answer.headers["X-Ledger-Position"]) == body["as_of_position"] >= receipt["position"]
    [finding] = body["findings"]
    assert finding["rule"] == "destination_not_permitted" and finding["category"] == "diversion"
    assert finding["licence_id"] == "LIC-1" and receipt["event_id"] in finding["evidence"]
    state = live_server.request("GET", f"/v1/batches/{lot}", keys["maker"]).json()
    assert state["verdict"] == "diverted" and state["diverted"] is True


def test_a_clean_batch_is_clear(live_server, keys):
    lot = unique("LOT")
    live_server.request("POST", "/v1/events", keys["maker"], json={"events": [registered(lot), declared(lot)]})
    assert live_server.request("GET", f"/v1/batches/{lot}/diversion", keys["auditor"]).json()["verdict"] == "clear"


def test_only_regulators_and_auditors_read_diversion_findings_and_audits(live_server, keys):
    lot, _ = diverted_lot(live_server, keys)
    for path in (f"/v1/batches/{lot}/diversion", "/v1/findings", "/v1/audits"):
        for role in ("maker", "importer", "admin"):
            assert_problem(live_server.request("GET", path, keys[role]), 403)
        assert_problem(live_server.request("GET", path), 401)
    for role in ("maker", "admin"):
        assert_problem(live_server.request("POST", "/v1/audits", keys[role], json={"scope": "full"}), 403)
    assert_problem(live_server.request("GET", "/v1/batches/NO-SUCH-LOT/diversion", keys["auditor"]), 404)


def test_findings_filter_by_rule_batch_and_position(live_server, keys):
    lot, receipt = diverted_lot(live_server, keys)
    body = live_server.request("GET", f"/v1/findings?batch_id={lot}", keys["auditor"]).json()
    assert [f["rule"] for f in body["items"]] == ["destination_not_permitted"]
    assert body["as_of_position"] >= receipt["position"]
    by_rule = live_server.request("GET", "/v1/findings?rule=destination_not_permitted&limit=1000",
                                  keys["auditor"]).json()["items"]
    assert lot in {f["batch_id"] for f in by_rule} and {f["rule"] for f in by_rule} == {"destination_not_permitted"}
    later = live_server.request("GET", f"/v1/findings?batch_id={lot}&after={receipt['position']}",
                                keys["auditor"]).json()
    assert later["items"] == []
    assert_problem(live_server.request("GET", "/v1/findings?category=nonsense", keys["auditor"]), 422, "category")


def test_an_audit_runs_in_the_request_and_answers_as_json_and_csv(live_server, keys):
    lot, _ = diverted_lot(live_server, keys)
    started = live_server.request("POST", "/v1/audits", keys["auditor"], json={"scope": "full"})
    assert started.status_code == 202, started.text
    audit = started.json()
    assert audit["status"] == "finished" and audit["scope"] == "full"
    assert lot in audit["diverted_batches"] and audit["counts"]["destination_not_permitted"] >= 1
    again = live_server.request("POST", "/v1/audits", keys["regulator"], json={"scope": "incremental"}).json()
    assert again["previous_audit_id"] == audit["audit_id"] and again["new_findings"] == []
    assert again["counts"] == audit["counts"]
    fetched = live_server.request("GET", f"/v1/audits/{audit['audit_id']}", keys["regulator"]).json()
    assert fetched["audit_id"] == audit["audit_id"] and fetched["as_of_position"] == audit["as_of_position"]
    as_csv = live_server.request("GET", f"/v1/audits/{audit['audit_id']}", keys["regulator"],
                                 headers={"Accept": "text/csv"})
    assert as_csv.headers["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert len(rows) == audit["findings_total"] and any(r["batch_id"] == lot for r in rows)
    listed = live_server.request("GET", "/v1/audits?limit=1", keys["auditor"]).json()
    assert listed["items"][0]["audit_id"] == again["audit_id"] and listed["next"]
    older = live_server.request("GET", f"/v1/audits?limit=1&cursor={listed['next']}", keys["auditor"]).json()
    assert older["items"][0]["audit_id"] == audit["audit_id"]
    assert_problem(live_server.request("GET", "/v1/audits/no-such-audit", keys["auditor"]), 404)
    assert_problem(live_server.request("POST", "/v1/audits", keys["auditor"], json={"scope": "partial"}), 422, "scope")


def test_batches_filter_by_verdict(live_server, keys):
    lot, _ = diverted_lot(live_server, keys)
    clean = unique("LOT")
    live_server.request("POST", "/v1/events", keys["maker"], json={"events": [registered(clean), declared(clean)]})

    def first(verdict: str, near: str) -> str | None:
        answer = live_server.request("GET", f"/v1/batches?verdict={verdict}&limit=1&cursor={near[:-1]}",
                                     keys["auditor"])
        assert answer.status_code == 200, answer.text
        items = answer.json()["items"]
        return items[0]["batch_id"] if items else None

    assert first("diverted", lot) == lot
    assert first("clear", lot) != lot
    assert first("clear", clean) == clean
    assert first("diverted", clean) != clean
    assert_problem(live_server.request("GET", "/v1/batches?verdict=bad", keys["auditor"]), 422, "verdict")


def test_findings_wait_for_min_position_and_refuse_one_beyond_the_log(live_server, keys):
    lot, receipt = diverted_lot(live_server, keys)
    answer = live_server.request("GET", f"/v1/findings?batch_id={lot}&min_position={receipt['position']}",
                                 keys["auditor"])
    assert answer.status_code == 200, answer.text
    assert int(answer.headers["X-Ledger-Position"]) >= receipt["position"]
    assert [f["rule"] for f in answer.json()["items"]] == ["destination_not_permitted"]
    beyond = live_server.request("GET", f"/v1/findings?min_position={receipt['position'] + 10**6}", keys["auditor"])
    assert_problem(beyond, 503)
    assert beyond.headers["Retry-After"]
