"""Who may call what (issue 6): every endpoint against every kind of caller, on a real server.

SPEC 1 says what each role may do and SPEC 4 who may call each endpoint. A slip either way leaks
custody data that partners entrust to the ledger, or locks out the regulator who must judge it.
MATRIX states the whole policy as one table and test_the_access_matrix walks every cell of it;
every answer is also searched for the ids of batches and events its caller may not see. The tests
after it look at what a partner may read around its own batches (feed, lineage, provenance,
proofs, findings, error answers): none of it may name another partner's batch or event, and a
batch it may not see answers exactly as one that does not exist.
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import requests

from tests.conftest import LiveServer, assert_problem
from tests.helpers import declared, event, received, registered, shipped, unique

ANONYMOUS = ("no_key", "bearer_without_key", "key_under_basic_scheme", "unknown_key", "forged_secret", "revoked_key")
IDENTIFIED = ("holder", "former_holder", "consignee", "stranger", "regulator", "auditor", "admin")
"""`holder`, `former_holder` and `consignee` are partners who may see the target batch; the
`stranger` is a partner who may not."""


def new_partner(ids: dict) -> dict:
    return {"party_id": f"new-{uuid.uuid4().hex[:8]}", "name": "New", "country": "IN", "role": "partner"}


def new_batch(ids: dict) -> dict:
    return registered(unique("NEW"))


def declaration_on_target(ids: dict) -> dict:
    return declared(ids["batch"])


def shipment_of_target(ids: dict) -> dict:
    return shipped(ids["batch"], unique("BL"), ids["maker"], "0.001")


def incremental_audit(ids: dict) -> dict:
    return {"scope": "incremental"}


@dataclass(frozen=True)
class Row:
    method: str
    path: str
    statuses: tuple[int, ...]
    """One per IDENTIFIED caller; ANONYMOUS callers get 401, or 200 on a public row."""
    body: Callable[[dict], dict] | None = None
    public: bool = False

    def expected(self, caller: str) -> int:
        if caller in ANONYMOUS:
            return 200 if self.public else 401
        return self.statuses[IDENTIFIED.index(caller)]

    @property
    def label(self) -> str:
        return f"{self.method} {self.path}" + (f" ({self.body.__name__})" if self.body else "")


# One status per IDENTIFIED caller:
#                    holder former consignee stranger regulator auditor admin
EVERY_ROLE         = (200,   200,   200,      200,     200,      200,    200)
# The SPEC 4 table says "any" for the feed, but SPEC 1 gives an admin "register parties and issue
# keys; nothing else": an operator account reads no custody data, as a regulator would expect.
ANY_READER         = (200,   200,   200,      200,     200,      200,    403)
CUSTODY_DATA       = (200,   200,   200,      404,     200,      200,    403)
DOWNSTREAM         = (403,   403,   403,      404,     200,      200,    403)
OVERSIGHT          = (403,   403,   403,      403,     200,      200,    403)
AUDIT_START        = (403,   403,   403,      403,     202,      202,    403)
ADMIN_ISSUES       = (403,   403,   403,      403,     403,      403,    201)
ADMIN_REVOKES      = (403,   403,   403,      403,     403,      403,    204)
# Not in SPEC 4; signing a tree head reveals nothing, and the README gives it to admins and auditors.
CHECKPOINT_SIGNING = (403,   403,   403,      403,     403,      201,    201)
PARTNERS_POST      = (201,   201,   201,      201,     403,      403,    403)
HOLDER_OR_REGULATOR_POST = (201, 403, 403,    404,     201,      403,    403)
HOLDER_POSTS       = (201,   403,   403,      404,     403,      403,    403)

MATRIX = (
    Row("GET", "/healthz", EVERY_ROLE, public=True),
    Row("GET", "/readyz", EVERY_ROLE, public=True),
    Row("GET", "/metrics", EVERY_ROLE, public=True),
    Row("GET", "/openapi.json", EVERY_ROLE, public=True),
    Row("GET", "/docs", EVERY_ROLE, public=True),
    Row("GET", "/v1/ledger/public-key", EVERY_ROLE, public=True),
    Row("GET", "/v1/parties", EVERY_ROLE),
    Row("GET", "/v1/parties/{party}", EVERY_ROLE),
    Row("GET", "/v1/ledger/checkpoint", EVERY_ROLE),
    Row("GET", "/v1/ledger/proofs/consistency?first=1", EVERY_ROLE),
    Row("GET", "/v1/events", ANY_READER),
    Row("GET", "/v1/events?batch_id={batch}", ANY_READER),
    Row("GET", "/v1/events/{event}", CUSTODY_DATA),
    Row("GET", "/v1/ledger/proofs/inclusion?event_id={event}", CUSTODY_DATA),
    Row("GET", "/v1/batches/{batch}", CUSTODY_DATA),
    Row("GET", "/v1/batches/{batch}/events", CUSTODY_DATA),
    Row("GET", "/v1/batches/{batch}/provenance", CUSTODY_DATA),
    Row("GET", "/v1/batches/{batch}/lineage", CUSTODY_DATA),
    Row("GET", "/v1/batches/{batch}/lineage?direction=up", CUSTODY_DATA),
    Row("GET", "/v1/batches/{batch}/lineage?direction=down", DOWNSTREAM),
    Row("GET", "/v1/batches/{batch}/lineage?direction=both", DOWNSTREAM),
    Row("GET", "/v1/batches", OVERSIGHT),
    Row("GET", "/v1/batches/{batch}/diversion", OVERSIGHT),
    Row("GET", "/v1/findings", OVERSIGHT),
    Row("GET", "/v1/findings?batch_id={batch}", OVERSIGHT),
    Row("GET", "/v1/audits", OVERSIGHT),
    Row("GET", "/v1/audits/{audit}", OVERSIGHT),
    Row("POST", "/v1/audits", AUDIT_START, incremental_audit),
    Row("POST", "/v1/parties", ADMIN_ISSUES, new_partner),
    Row("POST", "/v1/parties/{party}/keys", ADMIN_ISSUES),
    Row("DELETE", "/v1/parties/{party}/keys/{key_id}", ADMIN_REVOKES),
    Row("POST", "/v1/ledger/checkpoints", CHECKPOINT_SIGNING),
    Row("POST", "/v1/events", PARTNERS_POST, new_batch),
    Row("POST", "/v1/events", HOLDER_OR_REGULATOR_POST, declaration_on_target),
    Row("POST", "/v1/events", HOLDER_POSTS, shipment_of_target),
)


@dataclass
class Scenario:
    server: LiveServer
    headers: dict[str, dict[str, str]]
    ids: dict[str, str]
    """What path templates and bodies name: the target batch and event, parties, keys, an audit."""
    hidden: dict[str, set[str]]
    """For each caller, the ids of the batches and events it must never be shown."""

    def call(self, caller: str, method: str, path: str, body: Callable[[dict], dict] | None = None,
             **override: str) -> requests.Response:
        ids = self.ids | override
        return self.server.request(method, path.format(**ids), headers=dict(self.headers[caller]),
                                   json=body(ids) if body else None)


def post(server: LiveServer, key: str, *events: dict) -> list[dict]:
    answer = server.request("POST", "/v1/events", key, json={"events": list(events)})
    assert answer.status_code == 201, answer.text
    return answer.json()["receipts"]


def transformed(output: str, source: str, mass_in: str, mass_out: str, product: str) -> dict:
    return event("batch.transformed", output, {"inputs": [{"batch_id": source, "mass_kg": mass_in}],
                                               "product": product, "mass_kg": mass_out})


def ids_of(batch: str, receipts: list[dict]) -> set[str]:
    return {batch} | {receipt["event_id"] for receipt in receipts}


@pytest.fixture(scope="module")
def scenario(live_server, keys) -> Scenario:
    """Two families of batches.

    LOT, the target of MATRIX: the maker ships half to a trader, who ships it all on to the
    importer (the trader becomes a former holder), and a tenth to a consignee who never receives
    it. The stranger has nothing to do with it.

    MAGNET, the stranger's window: the maker ships part to the stranger and part to the importer;
    the importer makes a MOTOR of it and ships that to a distributor, the stranger makes a GADGET.
    The stranger sees MAGNET and GADGET (whose ancestor belongs to the maker) but not MOTOR.
    """
    server, admin = live_server, keys["admin"]
    start = server.request("GET", "/readyz").json()["head"]
    party, key = {}, {}
    for short, country in (("trader", "IN"), ("consignee", "IN"), ("distributor", "AE"), ("keyring", "IN"),
                           ("revokee", "IN")):
        answer = server.request("POST", "/v1/parties", admin, json={
            "party_id": f"{short}-{uuid.uuid4().hex[:6]}", "name": short.title(), "country": country,
            "role": "partner"})
        assert answer.status_code == 201, answer.text
        party[short], key[short] = answer.json()["party_id"], answer.json()

    lot, to_trader, to_importer, to_consignee = unique("LOT"), unique("BL"), unique("BL"), unique("BL")
    lot_events = post(server, keys["maker"], registered(lot, "100"), shipped(lot, to_trader, party["trader"], "50"),
                      shipped(lot, to_consignee, party["consignee"], "10"))
    lot_events += post(server, key["trader"]["api_key"], received(lot, to_trader, "50"),
                       shipped(lot, to_importer, keys["importer_id"], "50"))
    lot_events += post(server, keys["importer"], received(lot, to_importer, "50"))

    magnet, motor, gadget = unique("MAGNET"), unique("MOTOR"), unique("GADGET")
    to_stranger, to_importer, to_distributor = unique("BL"), unique("BL"), unique("BL")
    magnet_events = post(server, keys["maker"], registered(magnet, "100"), declared(magnet, ("IN",)),
                         shipped(magnet, to_stranger, keys["stranger_id"], "30"),
                         shipped(magnet, to_importer, keys["importer_id"], "40"))
    magnet_events += post(server, keys["stranger"], received(magnet, to_stranger, "30"))
    magnet_events += post(server, keys["importer"], received(magnet, to_importer, "40"))
    motor_events = post(server, keys["importer"], transformed(motor, magnet, "20", "100", "motor"),
                        shipped(motor, to_distributor, party["distributor"], "100"))
    gadget_events = post(server, keys["stranger"], transformed(gadget, magnet, "10", "5", "sensor"))

    assert server.request("POST", "/v1/ledger/checkpoints", keys["auditor"]).status_code == 201
    audit = server.request("POST", "/v1/audits", keys["auditor"], json={"scope": "full"})
    assert audit.status_code == 202, audit.text
    revoked = server.request("POST", f"/v1/parties/{party['revokee']}/keys", admin).json()
    assert server.request("DELETE", f"/v1/parties/{party['revokee']}/keys/{revoked['key_id']}",
                          admin).status_code == 204

    bearer = {"holder": keys["importer"], "former_holder": key["trader"]["api_key"],
              "consignee": key["consignee"]["api_key"], "stranger": keys["stranger"],
              "regulator": keys["regulator"], "auditor": keys["auditor"], "admin": admin,
              "unknown_key": f"mlk_{secrets.token_hex(8)}_{secrets.token_urlsafe(32)}",
              "forged_secret": keys["regulator"][:21] + secrets.token_urlsafe(32),
              "revoked_key": revoked["api_key"]}
    headers = {caller: {"Authorization": f"Bearer {value}"} for caller, value in bearer.items()}
    headers |= {"no_key": {}, "bearer_without_key": {"Authorization": "Bearer "},
                "key_under_basic_scheme": {"Authorization": f"Basic {keys['regulator']}"}}

    lot_ids, magnet_ids = ids_of(lot, lot_events), ids_of(magnet, magnet_events)
    motor_ids, gadget_ids = ids_of(motor, motor_events), ids_of(gadget, gadget_events)
    everything = lot_ids | magnet_ids | motor_ids | gadget_ids
    hidden = {caller: everything for caller in ANONYMOUS + ("admin",)}
    hidden |= {"holder": gadget_ids, "former_holder": magnet_ids | motor_ids | gadget_ids,
               "consignee": magnet_ids | motor_ids | gadget_ids, "stranger": lot_ids | motor_ids,
               "regulator": set(), "auditor": set()}
    ids = {"batch": lot, "event": lot_events[0]["event_id"], "party": party["keyring"],
           "key_id": key["keyring"]["key_id"], "audit": audit.json()["audit_id"], "maker": keys["maker_id"],
           "start": str(start), "magnet": magnet, "motor": motor, "gadget": gadget,
           "motor_event": motor_events[0]["event_id"], "gadget_event": gadget_events[0]["event_id"]}
    return Scenario(server, headers, ids, hidden)


def assert_shows_none_of(response: requests.Response, hidden: set[str]) -> None:
    """No hidden id in the answer, apart from those the request itself named."""
    asked = response.request.url + (response.request.body or b"").decode()
    leaked = sorted(i for i in hidden if i in response.text and i not in asked)
    assert not leaked, f"{response.request.method} {response.request.path_url} names {leaked}: {response.text[:500]}"


@pytest.mark.parametrize("row, caller", [pytest.param(row, caller, id=f"{row.label} as {caller}")
                                         for row in MATRIX for caller in ANONYMOUS + IDENTIFIED])
def test_the_access_matrix(scenario, row, caller):
    response = scenario.call(caller, row.method, row.path, row.body)
    expected = row.expected(caller)
    assert response.status_code == expected, f"{row.label} as {caller}: {response.text[:500]}"
    if expected >= 400:
        assert_problem(response, expected)
    if expected == 401:
        assert response.headers["WWW-Authenticate"].startswith("Bearer ")
    assert_shows_none_of(response, scenario.hidden[caller])


def without(response: requests.Response, *ids: str) -> dict:
    text = response.text
    for value in ids:
        text = text.replace(value, "<id>")
    return json.loads(text)


@pytest.mark.parametrize("row", [pytest.param(row, id=row.label) for row in MATRIX if row.expected("stranger") == 404])
def test_an_invisible_batch_or_event_answers_exactly_as_one_that_does_not_exist(scenario, row):
    ghost = {"batch": unique("GHOST"), "event": str(uuid.uuid4())}
    invisible = scenario.call("stranger", row.method, row.path, row.body)
    missing = scenario.call("stranger", row.method, row.path, row.body, **ghost)
    assert_problem(invisible, 404)
    assert_problem(missing, 404)
    assert invisible.headers["Content-Type"] == missing.headers["Content-Type"]
    assert without(invisible, scenario.ids["batch"], scenario.ids["event"]) == without(missing, *ghost.values())


@dataclass(frozen=True)
class Probe:
    """What the stranger gets when it reads around MAGNET, the batch it shares with others."""
    path: str
    stranger: int
    regulator_sees: str | None = None
    """A scenario id that the regulator's answer names: proof that the stranger's could have."""
    stranger_sees: tuple[str, ...] = ()


PROBES = (
    Probe("/v1/events?after={start}&limit=1000", 200, regulator_sees="motor", stranger_sees=("magnet", "gadget")),
    Probe("/v1/events?batch_id={motor}", 200, regulator_sees="motor"),
    Probe("/v1/events?batch_id={magnet}&limit=1000", 200, stranger_sees=("magnet",)),
    Probe("/v1/events/{motor_event}", 404, regulator_sees="motor"),
    Probe("/v1/events/{gadget_event}", 200, stranger_sees=("gadget", "magnet")),
    Probe("/v1/ledger/proofs/inclusion?event_id={motor_event}", 404),
    Probe("/v1/batches/{magnet}", 200, stranger_sees=("magnet",)),
    Probe("/v1/batches/{magnet}/events", 200, stranger_sees=("magnet",)),
    Probe("/v1/batches/{magnet}/lineage?direction=up", 200, stranger_sees=("magnet",)),
    Probe("/v1/batches/{magnet}/lineage?direction=both", 403, regulator_sees="motor"),
    Probe("/v1/batches/{magnet}/lineage?direction=down", 403, regulator_sees="motor"),
    Probe("/v1/batches/{gadget}/lineage", 200, stranger_sees=("gadget", "magnet")),
    Probe("/v1/batches/{magnet}/provenance", 200, stranger_sees=("magnet",)),
    Probe("/v1/batches/{gadget}/provenance", 200, stranger_sees=("gadget", "magnet")),
    Probe("/v1/batches/{motor}", 404),
    Probe("/v1/batches/{motor}/provenance", 404),
    Probe("/v1/batches/{motor}/lineage", 404, regulator_sees="motor"),
    Probe("/v1/batches/{magnet}/diversion", 403, regulator_sees="motor"),
    Probe("/v1/findings?batch_id={motor}", 403, regulator_sees="motor"),
    Probe("/v1/findings?after={start}&limit=1000", 403, regulator_sees="motor"),
    Probe("/v1/audits/{audit}", 403, regulator_sees="motor"),
)


@pytest.mark.parametrize("probe", [pytest.param(probe, id=probe.path) for probe in PROBES])
def test_what_a_partner_reads_around_its_batches_never_names_another_partners(scenario, probe):
    mine = scenario.call("stranger", "GET", probe.path)
    assert mine.status_code == probe.stranger, mine.text[:500]
    assert_shows_none_of(mine, scenario.hidden["stranger"])
    for name in probe.stranger_sees:
        assert scenario.ids[name] in mine.text
    theirs = scenario.call("regulator", "GET", probe.path)
    assert theirs.status_code == 200, theirs.text[:500]
    if probe.regulator_sees:
        assert scenario.ids[probe.regulator_sees] in theirs.text


def test_voiding_another_partners_event_answers_as_for_an_event_that_does_not_exist(scenario):
    def void(caller: str, event_id: str) -> requests.Response:
        body = event("event.voided", scenario.ids["gadget"], {"voided_event_id": event_id, "reason": "did_not_occur"})
        return scenario.call(caller, "POST", "/v1/events", lambda ids: body)

    ghost = str(uuid.uuid4())
    invisible, missing = void("stranger", scenario.ids["motor_event"]), void("stranger", ghost)
    assert_problem(invisible, 422, "data.voided_event_id")
    assert_shows_none_of(invisible, scenario.hidden["stranger"] - {scenario.ids["motor_event"]})
    assert without(invisible, scenario.ids["motor_event"]) == without(missing, ghost)
    # A regulator may see the event, and is told which batch it belongs to.
    told = assert_problem(void("regulator", scenario.ids["motor_event"]), 422, "data.voided_event_id")
    assert scenario.ids["motor"] in json.dumps(told)


CHECKED_FIRST = (
    pytest.param("POST", "/v1/parties", {"party_id": "Bad Id", "role": "king"}, {"stranger": 403, "auditor": 403},
                 id="party with bad fields"),
    pytest.param("POST", "/v1/events", ["not an event"], {"auditor": 403, "admin": 403}, id="event that is a list"),
    pytest.param("POST", "/v1/audits", {"scope": "partial"}, {"stranger": 403, "admin": 403}, id="audit scope"),
    pytest.param("GET", "/v1/findings?category=nonsense", None, {"holder": 403, "admin": 403}, id="finding category"),
    pytest.param("GET", "/v1/events?limit=5000", None, {"admin": 403}, id="feed limit"),
)


@pytest.mark.parametrize("method, path, body, refusals", CHECKED_FIRST)
def test_the_caller_is_judged_before_the_request(scenario, method, path, body, refusals):
    """No key or a wrong role answers as such, whatever else is wrong with the request."""
    as_json = None if body is None else (lambda ids: body)
    for caller in ANONYMOUS:
        assert_problem(scenario.call(caller, method, path, as_json), 401)
    for caller, status in refusals.items():
        assert_problem(scenario.call(caller, method, path, as_json), status)
