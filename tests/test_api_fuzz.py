"""Schemathesis against a live server's own /openapi.json, on SQLite and PostgreSQL: every
operation, fuzzed within a bounded number of examples, answers without a server error and
exactly as documented (status code, content type, headers, body schema).

The only 5xx allowed is the documented 503 with Retry-After of a read that asked for a
`min_position` the projections have not reached (SPEC 4). Path and query ids are drawn now
and then from a small seeded custody chain, so the answers about real batches, events,
parties and audits are checked too, not only the 404s of random ids.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.helpers import declared, event, received, registered, shipped, unique

MAX_EXAMPLES = 60


def no_server_error_but_a_documented_wait(ctx, response, case):
    """not_a_server_error, allowing only the 503 of a `min_position` wait, with Retry-After."""
    if response.status_code == 503 and "min_position" in (case.query or {}) and response.headers.get("retry-after"):
        return None
    return not_a_server_error(ctx, response, case)


CHECKS = [no_server_error_but_a_documented_wait, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]


def callers_for(operation) -> list[str | None]:
    """Whose key each operation is fuzzed with: the role that gets past its role check, a
    partner (whose reads are filtered by what it may see), and no key at all."""
    method, path = operation.method.upper(), operation.path
    if path.startswith("/v1/parties") and method != "GET":
        fitting = "admin"
    elif path == "/v1/ledger/checkpoints":
        fitting = "auditor"
    elif path == "/v1/events" and method == "POST":
        fitting = "maker"
    else:
        fitting = "regulator"
    return [fitting, "maker", None]


def post(live_server, key: str, path: str, body: dict) -> dict:
    response = live_server.request("POST", path, key, json=body)
    assert response.status_code in (201, 202), response.text
    return response.json()


@pytest.fixture(scope="module")
def seeded(live_server, keys) -> dict[str, list[str]]:
    """A lot declared for India, received there, split, made into a motor and exported to
    the United States (a diversion), then audited and checkpointed: ids by parameter name."""
    lot, child, rest, motor, ref = unique("LOT"), unique("CH"), unique("CH"), unique("MOTOR"), unique("BL")
    receipts = post(live_server, keys["maker"], "/v1/events", {"events": [
        registered(lot, "1000"), declared(lot, ("IN",)), shipped(lot, ref, keys["importer_id"], "400")]})["receipts"]
    receipts += post(live_server, keys["importer"], "/v1/events", {"events": [
        received(lot, ref, "400"),
        event("batch.split", lot, {"children": [{"batch_id": child, "mass_kg": "300"},
                                                {"batch_id": rest, "mass_kg": "100"}]}),
        event("batch.transformed", motor, {"inputs": [{"batch_id": child, "mass_kg": "300"}],
                                           "product": "traction motor", "mass_kg": "1500"}),
        event("custody.exported", motor, {"to_country": "US", "customs_ref": unique("CUS")}),
    ]})["receipts"]
    audit = post(live_server, keys["regulator"], "/v1/audits", {"scope": "full"})
    post(live_server, keys["admin"], "/v1/ledger/checkpoints", {})
    return {"batch_id": [lot, child, rest, motor], "event_id": [r["event_id"] for r in receipts],
            "party_id": [keys[f"{role}_id"] for role in ("maker", "importer", "regulator")],
            "audit_id": [audit["audit_id"]]}


@pytest.fixture(scope="module")
def api_schema(live_server, seeded):
    schema = schemathesis.openapi.from_url(live_server.url + "/openapi.json")

    def now_and_then_seeded(context, values: dict | None):
        known = {name: st.sampled_from(seeded[name]) for name in values or () if name in seeded}
        if not known:
            return st.just(values)
        return st.one_of(st.just(values), st.fixed_dictionaries({name: known.get(name, st.just(value))
                                                                for name, value in values.items()}))

    schema.hook("flatmap_path_parameters")(now_and_then_seeded)
    schema.hook("flatmap_query")(now_and_then_seeded)
    return schema


def fuzz(operation, keys: dict) -> None:
    """Valid and invalid requests alike must be answered as documented."""
    cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))

    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(cases, st.sampled_from(callers_for(operation)))
    def answers_as_documented(case, caller):
        case.call_and_validate(headers={"Authorization": f"Bearer {keys[caller]}"} if caller else {}, checks=CHECKS)

    answers_as_documented()


def test_every_operation_answers_as_documented(api_schema, keys, subtests):
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 25, [operation.label for operation in operations]
    for operation in operations:
        with subtests.test(operation.label):
            fuzz(operation, keys)
