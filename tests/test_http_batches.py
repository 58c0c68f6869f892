"""The batch-reading API against a real server in the embedded mode (projections caught up
in the request after each append): state, visibility, positions, lineage, waits."""

from __future__ import annotations

from tests.conftest import assert_problem
from tests.helpers import declared, event, received, registered, shipped, unique


def test_batch_state_follows_posts_and_carries_the_position(live_server, keys):
    batch, ref = unique(), unique("S")
    posted = live_server.request("POST", "/v1/events", keys["maker"], json={"events": [
        registered(batch, "100"), declared(batch), shipped(batch, ref, keys["importer_id"], "40")]})
    position = posted.json()["receipts"][-1]["position"]
    answer = live_server.request("GET", f"/v1/batches/{batch}?min_position={position}", keys["maker"])
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert int(answer.headers["X-Ledger-Position"]) == body["as_of_position"] >= position
    assert body["holdings"] == [{"party_id": keys["maker_id"], "mass_kg": "60"}] and body["mass_kg"] == "100"
    assert [s["shipment_ref"] for s in body["open_shipments"]] == [ref]
    assert len(body["declarations"]) == 1
    live_server.request("POST", "/v1/events", keys["importer"], json=received(batch, ref, "40"))
    body = live_server.request("GET", f"/v1/batches/{batch}", keys["importer"]).json()
    assert {h["party_id"] for h in body["holdings"]} == {keys["maker_id"], keys["importer_id"]}
    assert body["open_shipments"] == []


def test_invisible_and_unknown_batches_answer_404_alike(live_server, keys):
    batch = unique()
    live_server.request("POST", "/v1/events", keys["maker"], json=registered(batch))
    for path in (f"/v1/batches/{batch}", f"/v1/batches/{batch}/events", f"/v1/batches/{batch}/lineage"):
        hidden = assert_problem(live_server.request("GET", path, keys["stranger"]), 404)
        missing = assert_problem(live_server.request("GET", path.replace(batch, "NO-SUCH-BATCH"), keys["stranger"]), 404)
        assert hidden["title"] == missing["title"]
        assert live_server.request("GET", path, keys["auditor"]).status_code == 200
    assert_problem(live_server.request("GET", f"/v1/batches/{batch}"), 401)


def test_a_batch_id_with_slashes_is_addressed_in_every_batch_path(live_server, keys):
    """SPEC 2 allows `/` in a batch id (a GS1 lot URN, say); each batch path must still find it."""
    batch, ref = f"urn:epc:id/{unique('LOT')}/7", unique("S")
    posted = live_server.request("POST", "/v1/events", keys["maker"], json={"events": [
        registered(batch, "100"), declared(batch), shipped(batch, ref, keys["importer_id"], "40")]})
    assert posted.status_code == 201, posted.text
    position = posted.json()["receipts"][-1]["position"]
    state = live_server.request("GET", f"/v1/batches/{batch}?min_position={position}", keys["maker"])
    assert state.status_code == 200, state.text
    assert state.json()["batch_id"] == batch and state.json()["mass_kg"] == "100"
    encoded = live_server.request("GET", f"/v1/batches/{batch.replace('/', '%2F')}", keys["maker"])
    assert encoded.status_code == 200 and encoded.json()["batch_id"] == batch
    stream = live_server.request("GET", f"/v1/batches/{batch}/events", keys["maker"]).json()
    assert [e["batch_id"] for e in stream["items"]] == [batch] * 3
    assert live_server.request("GET", f"/v1/batches/{batch}/provenance", keys["maker"]).json()["batch_id"] == batch
    assert batch in {n["batch_id"] for n in live_server.request("GET", f"/v1/batches/{batch}/lineage",
                                                                 keys["maker"]).json()["nodes"]}
    assert live_server.request("GET", f"/v1/batches/{batch}/diversion", keys["regulator"]).json()["batch_id"] == batch
    assert_problem(live_server.request("GET", f"/v1/batches/{batch}", keys["stranger"]), 404)


def test_min_position_beyond_the_log_answers_503_with_retry_after(live_server, keys):
    batch = unique()
    live_server.request("POST", "/v1/events", keys["maker"], json=registered(batch))
    response = live_server.request("GET", f"/v1/batches/{batch}?min_position=999999999", keys["maker"])
    assert_problem(response, 503)
    assert response.headers["Retry-After"]


def test_batch_list_is_for_regulators_and_auditors(live_server, keys):
    batch = unique()
    live_server.request("POST", "/v1/events", keys["maker"], json=registered(batch, origin="AU"))
    assert_problem(live_server.request("GET", "/v1/batches", keys["maker"]), 403)
    found = live_server.request("GET", f"/v1/batches?country=AU&holder={keys['maker_id']}&limit=1000",
                                keys["regulator"]).json()
    assert batch in {item["batch_id"] for item in found["items"]}
    assert all(item["origin_country"] == "AU" for item in found["items"])
    assert live_server.request("GET", "/v1/batches?country=AU", keys["auditor"]).status_code == 200


def test_lineage_and_the_stream(live_server, keys):
    magnet, child, motor = unique(), unique("C"), unique("M")
    live_server.request("POST", "/v1/events", keys["maker"], json={"events": [
        registered(magnet, "10"), event("batch.split", magnet, {"children": [{"batch_id": child, "mass_kg": "10"}]}),
        event("batch.transformed", motor, {"inputs": [{"batch_id": child, "mass_kg": "2"}], "product": "motor",
                                           "mass_kg": "50"})]})
    up = live_server.request("GET", f"/v1/batches/{motor}/lineage?direction=up", keys["maker"]).json()
    assert {(e["parent"], e["child"], e["fraction"]) for e in up["edges"]} == {
        (magnet, child, "1"), (child, motor, "0.04")}
    assert_problem(live_server.request("GET", f"/v1/batches/{magnet}/lineage?direction=down", keys["maker"]), 403)
    down = live_server.request("GET", f"/v1/batches/{magnet}/lineage?direction=down&depth=1", keys["auditor"]).json()
    assert {n["batch_id"] for n in down["nodes"]} == {magnet, child}
    stream = live_server.request("GET", f"/v1/batches/{magnet}/events", keys["maker"]).json()
    assert [e["type"] for e in stream["items"]] == ["batch.registered", "batch.split"] and stream["next"] is None
    first = live_server.request("GET", f"/v1/batches/{magnet}/events?limit=1", keys["maker"]).json()
    rest = live_server.request("GET", f"/v1/batches/{magnet}/events?after={first['next']}", keys["maker"]).json()
    assert [e["version"] for e in first["items"] + rest["items"]] == [1, 2]
    # A split child exists before anything happens in its own stream.
    child_stream = live_server.request("GET", f"/v1/batches/{child}/events", keys["maker"])
    assert child_stream.status_code == 200 and child_stream.json()["items"] == []


def test_provenance_over_http(live_server, keys):
    magnet, motor = unique(), unique("M")
    live_server.request("POST", "/v1/events", keys["maker"], json={"events": [
        registered(magnet, "10"), declared(magnet),
        event("batch.transformed", motor, {"inputs": [{"batch_id": magnet, "mass_kg": "5"}], "product": "motor",
                                           "mass_kg": "50"})]})
    answer = live_server.request("GET", f"/v1/batches/{motor}/provenance", keys["maker"])
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["controlled_fraction"] == "0.1" and len(body["governing_declarations"]) == 1
    assert int(answer.headers["X-Ledger-Position"]) == body["as_of_position"]
    assert all("from" in period for period in body["custody_chain"])
    assert_problem(live_server.request("GET", f"/v1/batches/{motor}/provenance", keys["stranger"]), 404)
