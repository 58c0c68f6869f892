"""The HTTP API against a real `magledger serve` process (granian), on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from urllib.parse import urlsplit

import pytest

from ledger.db import make_engine
from ledger.parties import PartyRegistry
from ledger.server import ConnectionRotation
from tests.conftest import TEST_SIGNING_KEY, assert_problem, fresh_sqlite, magledger
from tests.helpers import declared, event, received, registered, shipped, unique
from tests.jcs import canonicalize

PROBLEM = "application/problem+json"


def test_post_then_read_back_and_recompute_the_leaf_hash_independently(live_server, keys):
    batch = unique()
    response = live_server.request("POST", "/v1/events", keys["maker"], json=registered(batch, "250.000"))
    assert response.status_code == 201, response.text
    receipt = response.json()["receipts"][0]
    assert set(receipt) == {"event_id", "position", "version", "recorded_at", "leaf_hash"}
    stored = live_server.request("GET", f"/v1/events/{receipt['event_id']}", keys["maker"]).json()
    assert stored["data"]["mass_kg"] == "250" and stored["actor"] == keys["maker_id"]
    assert stored["occurred_at"] == "2026-10-02T00:00:00Z" and stored["recorded_at"].endswith("Z")
    leaf = stored.pop("leaf_hash")
    assert leaf == receipt["leaf_hash"] == hashlib.sha256(b"\x00" + canonicalize(stored)).hexdigest()


def test_every_leaf_hash_in_the_feed_recomputes(live_server, keys):
    batch = unique()
    importer = keys["importer_id"]
    body = {"events": [registered(batch, "100.5"), declared(batch, humanitarian=True, valid_until="2027-01-31"),
                       shipped(batch, unique("S"), importer, "50.25", carrier="Ünïcode \"Carrier\"\n")]}
    assert live_server.request("POST", "/v1/events", keys["maker"], json=body).status_code == 201
    items = live_server.request("GET", f"/v1/events?batch_id={batch}", keys["regulator"]).json()["items"]
    assert len(items) == 3
    for item in items:
        leaf = item.pop("leaf_hash")
        assert leaf == hashlib.sha256(b"\x00" + canonicalize(item)).hexdigest()


def test_masses_sent_as_json_numbers_are_exact(live_server, keys):
    batch = unique()
    raw = json.dumps(registered(batch, "X")).replace('"X"', "0.300001")
    response = live_server.request("POST", "/v1/events", keys["maker"], data=raw,
                                   headers={"Content-Type": "application/json"})
    assert response.status_code == 201, response.text
    event_id = response.json()["receipts"][0]["event_id"]
    assert live_server.request("GET", f"/v1/events/{event_id}", keys["maker"]).json()["data"]["mass_kg"] == "0.300001"


def test_idempotent_replay_answers_200_with_the_original_receipt(live_server, keys):
    raw = registered(unique())
    first = live_server.request("POST", "/v1/events", keys["maker"], json=raw)
    again = live_server.request("POST", "/v1/events", keys["maker"], json=raw)
    assert first.status_code == 201 and again.status_code == 200
    assert again.json() == first.json()
    changed = {**raw, "data": {**raw["data"], "mass_kg": "1"}}
    assert_problem(live_server.request("POST", "/v1/events", keys["maker"], json=changed), 409, "event_id")


@pytest.mark.parametrize("body, fields", [
    ("{not json", ["_schema"]),
    (json.dumps(event("batch.stolen", "B-1", {})), ["type"]),
    (json.dumps(registered("B-1", mass="-1")), ["data.mass_kg"]),
    (json.dumps(registered("B-1", mass="1.1234567")), ["data.mass_kg"]),
    (json.dumps(registered("B-1", origin="ZZ")), ["data.origin_country"]),
    (json.dumps(registered("B-1", occurred_at="2999-01-01T00:00:00Z")), ["occurred_at"]),
    (json.dumps({"events": [registered("B-1"), registered("B-2", mass="0")]}), ["events.1.data.mass_kg"]),
    (json.dumps({"type": "batch.registered"}), ["event_id", "batch_id", "occurred_at", "data"]),
])
def test_422_problems_name_every_bad_field(live_server, keys, body, fields):
    response = live_server.request("POST", "/v1/events", keys["maker"], data=body,
                                   headers={"Content-Type": "application/json"})
    assert_problem(response, 422, *fields)


def test_401_for_missing_unknown_and_revoked_keys(live_server, keys):
    assert_problem(live_server.request("GET", "/v1/events"), 401)
    assert_problem(live_server.request("GET", "/v1/events", "mlk_0123456789abcdef_" + "x" * 43), 401)
    assert_problem(live_server.request("GET", "/v1/events", headers={"Authorization": "Basic abc"}), 401)
    party_id = f"revokee-{uuid.uuid4().hex[:6]}"
    created = live_server.request("POST", "/v1/parties", keys["admin"],
                                  json={"party_id": party_id, "name": "Revokee", "country": "IN", "role": "partner"})
    assert created.status_code == 201, created.text
    key, key_id = created.json()["api_key"], created.json()["key_id"]
    assert live_server.request("GET", "/v1/events", key).status_code == 200
    second = live_server.request("POST", f"/v1/parties/{party_id}/keys", keys["admin"])
    assert second.status_code == 201 and second.json()["api_key"] != key
    assert live_server.request("DELETE", f"/v1/parties/{party_id}/keys/{key_id}", keys["admin"]).status_code == 204
    assert_problem(live_server.request("GET", "/v1/events", key), 401)
    assert live_server.request("GET", "/v1/events", second.json()["api_key"]).status_code == 200
    assert_problem(live_server.request("DELETE", f"/v1/parties/{party_id}/keys/nope", keys["admin"]), 404)


def test_401_at_once_for_a_key_revoked_while_the_server_processes_remember_it(live_server, keys):
    """The server's processes have verified the key; it is then revoked by another process
    (here the core's API on the same database). Every post with it is refused from then on,
    valid or not, and none is written."""
    party_id = f"revokee-{uuid.uuid4().hex[:6]}"
    created = live_server.request("POST", "/v1/parties", keys["admin"],
                                  json={"party_id": party_id, "name": "Revokee", "country": "CN", "role": "partner"})
    key, key_id = created.json()["api_key"], created.json()["key_id"]

    def post_anew(**kwargs):
        live_server.session.close()  # a new connection, which either server process may take
        return live_server.request("POST", "/v1/events", key, **kwargs)

    for _ in range(12):
        assert post_anew(json=registered(unique())).status_code == 201
    engine = make_engine(live_server.database_url)
    try:
        PartyRegistry(engine).revoke_key(party_id, key_id)
    finally:
        engine.dispose()
    refused = [registered(unique()) for _ in range(12)]
    for raw in refused:
        assert_problem(post_anew(json=raw), 401)
        assert_problem(post_anew(json={"type": "batch.registered"}), 401)
        assert_problem(post_anew(data=b"{not json", headers={"Content-Type": "application/json"}), 401)
    for raw in refused:
        assert_problem(live_server.request("GET", f"/v1/events/{raw['event_id']}", keys["regulator"]), 404)


def test_403_for_roles_and_standing(live_server, keys):
    batch = unique()
    live_server.request("POST", "/v1/events", keys["maker"], json=registered(batch))
    for role in ("auditor", "admin"):
        assert_problem(live_server.request("POST", "/v1/events", keys[role], json=registered(unique())), 403)
    assert_problem(live_server.request("POST", "/v1/events", keys["regulator"], json=registered(unique())), 403)
    assert live_server.request("POST", "/v1/events", keys["regulator"], json=declared(batch)).status_code == 201
    party = {"party_id": f"p-{uuid.uuid4().hex[:6]}", "name": "P", "country": "IN", "role": "partner"}
    for role in ("maker", "regulator", "auditor"):
        assert_problem(live_server.request("POST", "/v1/parties", keys[role], json=party), 403)
        assert_problem(live_server.request("POST", f"/v1/parties/{keys['maker_id']}/keys", keys[role]), 403)


def test_404_and_409_over_http(live_server, keys):
    batch = unique()
    assert_problem(live_server.request("POST", "/v1/events", keys["maker"],
                                       json=shipped("NOPE-1", "S-1", keys["importer_id"], "1")), 404, "batch_id")
    live_server.request("POST", "/v1/events", keys["maker"], json=registered(batch))
    assert_problem(live_server.request("POST", "/v1/events", keys["stranger"],
                                       json=declared(batch)), 404, "batch_id")
    assert_problem(live_server.request("POST", "/v1/events", keys["maker"], json=registered(batch)), 409, "batch_id")
    assert_problem(live_server.request("GET", f"/v1/events/{uuid.uuid4()}", keys["maker"]), 404)
    assert_problem(live_server.request("GET", "/v1/parties/nobody-at-all", keys["maker"]), 404)
    dup = {"party_id": keys["maker_id"], "name": "Again", "country": "CN", "role": "partner"}
    assert_problem(live_server.request("POST", "/v1/parties", keys["admin"], json=dup), 409, "party_id")
    bad = {"party_id": "Bad Id", "name": "", "country": "XX", "role": "king"}
    assert_problem(live_server.request("POST", "/v1/parties", keys["admin"], json=bad), 422, "role")


def test_413_for_large_bodies_and_too_many_events(live_server, keys):
    huge = json.dumps(registered(unique())) + " " * (1024 * 1024)
    assert_problem(live_server.request("POST", "/v1/events", keys["maker"], data=huge,
                                       headers={"Content-Type": "application/json"}), 413)
    many = {"events": [registered(unique()) for _ in range(1001)]}
    assert_problem(live_server.request("POST", "/v1/events", keys["maker"], json=many), 413)


def test_413_for_a_body_sent_in_chunks_past_the_limit(live_server, keys):
    """Without a Content-Length the limit can only be found by reading; a body cut at the
    limit must not be judged as if it were the whole (a 422 for malformed JSON)."""
    def chunks(body: bytes):
        for start in range(0, len(body), 65536):
            yield body[start:start + 65536]

    huge = (json.dumps(registered(unique())) + " " * (1024 * 1024)).encode()
    for path, key in (("/v1/events", keys["maker"]), ("/v1/parties", keys["admin"])):
        answer = live_server.request("POST", path, key, data=chunks(huge), headers={"Content-Type": "application/json"})
        assert_problem(answer, 413)
    fits = json.dumps(registered(unique())).encode()
    answer = live_server.request("POST", "/v1/events", keys["maker"], data=chunks(fits),
                                 headers={"Content-Type": "application/json"})
    assert answer.status_code == 201, answer.text


def test_partners_see_only_their_batches_in_the_feed_and_by_id(live_server, keys):
    mine, theirs, ref = unique(), unique(), unique("S")
    live_server.request("POST", "/v1/events", keys["maker"], json={"events": [
        registered(mine), registered(theirs), shipped(mine, ref, keys["importer_id"], "10")]})
    receipt = live_server.request("POST", "/v1/events", keys["importer"], json=received(mine, ref, "10")).json()

    def batches_seen(key):
        seen, after = set(), 0
        while True:
            page = live_server.request("GET", f"/v1/events?after={after}&limit=1000", key).json()
            seen |= {item["batch_id"] for item in page["items"]}
            if page["next"] is None:
                return seen
            after = page["next"]

    assert mine in batches_seen(keys["importer"]) and theirs not in batches_seen(keys["importer"])
    assert not {mine, theirs} & batches_seen(keys["stranger"])
    assert {mine, theirs} <= batches_seen(keys["auditor"])
    event_id = receipt["receipts"][0]["event_id"]
    assert live_server.request("GET", f"/v1/events/{event_id}", keys["stranger"]).status_code == 404
    assert live_server.request("GET", f"/v1/events/{event_id}", keys["regulator"]).status_code == 200


def test_feed_pages_in_position_order_with_filters(live_server, keys):
    batch = unique()
    live_server.request("POST", "/v1/events", keys["maker"], json={"events": [
        registered(batch), declared(batch), declared(batch, licence_id="L-2")]})
    page = live_server.request("GET", f"/v1/events?batch_id={batch}&limit=2", keys["maker"]).json()
    assert [i["version"] for i in page["items"]] == [1, 2] and page["next"] == page["items"][1]["position"]
    rest = live_server.request("GET", f"/v1/events?batch_id={batch}&after={page['next']}", keys["maker"]).json()
    assert [i["version"] for i in rest["items"]] == [3] and rest["next"] is None
    typed = live_server.request("GET", f"/v1/events?batch_id={batch}&type=enduse.declared", keys["maker"]).json()
    assert len(typed["items"]) == 2
    assert_problem(live_server.request("GET", "/v1/events?limit=5000", keys["maker"]), 422, "limit")
    assert_problem(live_server.request("GET", "/v1/events?type=nonsense", keys["maker"]), 422, "type")


def test_directory_health_and_openapi(live_server, keys):
    directory = live_server.request("GET", "/v1/parties?limit=1000", keys["stranger"]).json()
    assert {keys["maker_id"], keys["admin_id"]} <= {p["party_id"] for p in directory["items"]}
    assert set(directory["items"][0]) == {"party_id", "name", "country", "role"}
    one = live_server.request("GET", f"/v1/parties/{keys['maker_id']}", keys["stranger"]).json()
    assert one == {"party_id": keys["maker_id"], "name": keys["maker_id"].title(), "country": "CN", "role": "partner"}
    assert live_server.request("GET", "/healthz").json() == {"status": "ok"}
    spec = live_server.request("GET", "/openapi.json").json()
    assert {"/v1/events", "/v1/events/{event_id}", "/v1/parties"} <= set(spec["paths"])
    assert "DataBatchRegistered" in spec["components"]["schemas"]
    assert live_server.request("GET", "/docs").status_code == 200


def test_keep_alive_connections_are_closed_now_and_then_and_the_client_goes_on(live_server, keys):
    """So that clients' long-lived connections spread over the worker processes again and
    again, the server answers `Connection: close` now and then (ledger.server.ConnectionRotation)."""
    address = urlsplit(live_server.url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
    answers = closes = 0
    started = time.monotonic()
    while time.monotonic() - started < 2.5:
        connection.request("GET", "/v1/parties/" + keys["maker_id"], headers={"Authorization": f"Bearer {keys['maker']}"})
        response = connection.getresponse()
        response.read()
        assert response.status == 200
        answers += 1
        closes += response.getheader("Connection") == "close"
    connection.close()
    assert closes >= 2 and answers > 10 * closes


def test_a_server_process_freezes_what_its_app_holds_and_collects_young_objects_less_often(sqlite_template, tmp_path):
    """Each worker process builds its app through ledger.server.wsgi_app, which sets the cycle
    collector for a server's work; run in a process of its own, as a worker would."""
    url = fresh_sqlite(sqlite_template, tmp_path)
    probe = ("import gc; from ledger.server import GC_YOUNG_THRESHOLD, wsgi_app; wsgi_app(); "
             "print(gc.get_threshold()[0] == GC_YOUNG_THRESHOLD, gc.get_freeze_count())")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True,
                          env={**os.environ, "DATABASE_URL": url, "LEDGER_SIGNING_KEY": TEST_SIGNING_KEY})
    young_threshold_set, frozen = done.stdout.split()
    assert young_threshold_set == "True" and int(frozen) > 10_000


def test_a_process_closes_connections_in_proportion_to_the_requests_it_has_in_flight():
    """One close every CONNECTION_SECONDS divided by the requests in flight: a process holding
    more connections sheds them faster, which evens out the split between processes."""
    now = [0.0]
    held = threading.Event()
    entered = threading.Semaphore(0)

    def app(environ, start_response):
        if environ.get("hold"):
            entered.release()
            held.wait(10)
        start_response("200 OK", [])
        return [b""]

    rotation = ConnectionRotation(app, clock=lambda: now[0])

    def closes_over(calls: int) -> int:
        closed = 0
        for _ in range(calls):
            now[0] += 0.3 * ConnectionRotation.CONNECTION_SECONDS
            answer: dict = {}
            rotation({}, lambda status, headers, exc_info=None, answer=answer: answer.update(headers=headers))
            closed += ("Connection", "close") in answer["headers"]
        return closed

    assert closes_over(12) == 3
    others = [threading.Thread(target=rotation, args=({"hold": True}, lambda *args: None)) for _ in range(3)]
    for thread in others:
        thread.start()
        assert entered.acquire(timeout=10)
    assert closes_over(12) == 12
    held.set()
    for thread in others:
        thread.join(10)
    assert closes_over(12) == 3


def test_a_second_server_on_a_port_already_served_refuses_to_start(live_server):
    """granian listens with SO_REUSEPORT, beside which a second server would otherwise start
    silently and take part of the first one's connections."""
    port = str(urlsplit(live_server.url).port)
    started = magledger("serve", "--port", port, env=live_server.env, check=False, timeout=30)
    assert started.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in started.stderr
    assert live_server.request("GET", "/healthz").status_code == 200


def test_readyz_checks_the_database_and_reports_projection_lag(live_server):
    answer = live_server.request("GET", "/readyz")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["status"] == "ready" and body["checks"] == {"database": "ok"}
    assert body["head"] >= 0 and body["projection_lag"] == 0


def test_metrics_count_requests_across_processes_and_read_the_ledger(live_server, keys):
    for _ in range(6):
        live_server.request("GET", "/healthz")
    live_server.request("POST", "/v1/events", keys["maker"], json=registered(unique()))
    answer = live_server.request("GET", "/metrics")
    assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("text/plain")
    lines = answer.text.splitlines()

    def value(prefix: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(prefix))

    assert value('magledger_http_requests_total{method="GET",route="/healthz",status="200"}') >= 6
    assert value('magledger_http_requests_total{method="POST",route="/v1/events",status="201"}') >= 1
    assert value("magledger_append_seconds_count") >= 1
    assert value("magledger_log_head ") >= 1
    assert 'magledger_projection_lag{projection="findings"} 0.0' in lines
    assert "# TYPE magledger_findings gauge" in lines
