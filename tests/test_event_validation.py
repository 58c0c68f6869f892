"""Validation of the nine event types (SPEC 3.1-3.3): what is rejected with 422, and the
normal form that accepted events are stored in."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError, fields

from ledger.errors import Invalid, TooLarge
from ledger.events import (
    ENVELOPE,
    EVENT_TYPES,
    Mass,
    Text,
    _mass_by_decimal,
    _percent,
    _percent_by_decimal,
    format_time,
    loads,
    mass_to_mg,
    mg_to_mass,
    parse_event,
    parse_post,
)
from tests.helpers import event, registered

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)

VALID_DATA = {
    "batch.registered": {"material": "NdFeB", "mass_kg": "1000", "origin_country": "CN", "units": 40,
                         "composition": {"Nd": "29.5", "Dy": 4}, "hs_code": "8505.11"},
    "enduse.declared": {"licence_id": "L-1", "permitted_countries": ["IN"], "end_use": "motors",
                        "permitted_end_users": ["pune-motors"], "licensed_mass_kg": "500",
                        "valid_until": "2027-12-31", "issuing_authority": "MOFCOM", "humanitarian": False},
    "custody.shipped": {"shipment_ref": "BL-1", "to_party": "pune-motors", "mass_kg": "250",
                        "destination_country": "IN", "carrier": "Maersk"},
    "custody.received": {"shipment_ref": "BL-1", "mass_kg": "250"},
    "batch.split": {"children": [{"batch_id": "C-1", "mass_kg": "10"}, {"batch_id": "C-2", "mass_kg": "5"}]},
    "batch.transformed": {"inputs": [{"batch_id": "M-1", "mass_kg": "2"}], "product": "motor", "mass_kg": "100",
                          "units": 10},
    "custody.exported": {"to_country": "US", "customs_ref": "CUS-1", "consignee": "Acme", "mass_kg": "1"},
    "batch.consumed": {"mass_kg": "1", "disposition": "recycled", "note": "scrap"},
    "event.voided": {"voided_event_id": "6f1c2e4a-3b7d-4c51-9a0e-2d8f9b7c1a10", "reason": "incorrect_data",
                     "corrective_event_id": "7f1c2e4a-3b7d-4c51-9a0e-2d8f9b7c1a10"},
}


def errors_of(raw) -> dict:
    with pytest.raises(Invalid) as caught:
        parse_event(raw, NOW)
    return caught.value.errors


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_every_type_accepts_its_full_data(event_type):
    parsed = parse_event(event(event_type, "B-1", VALID_DATA[event_type]), NOW)
    assert parsed.type == event_type


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_every_type_rejects_unknown_fields_and_missing_required_ones(event_type):
    errors = errors_of(event(event_type, "B-1", {"surprise": 1}))
    assert errors["data.surprise"] == ["is not allowed here"]
    assert any(name.startswith("data.") and name != "data.surprise" for name in errors)


@pytest.mark.parametrize("mass, message", [
    ("0", "greater than zero"), ("-1", "greater than zero"), (0, "greater than zero"),
    ("1.0000001", "at most 6 decimal places"), ("1e3", "plain decimal"), ("abc", "plain decimal"),
    (True, "decimal number"), (None, "Field may not be null"), ("NaN", "plain decimal"),
])
def test_bad_masses_are_rejected(mass, message):
    errors = errors_of(registered("B-1", mass=mass))
    assert any(message in text for text in errors["data.mass_kg"]), errors


@pytest.mark.parametrize("sent, stored", [("250.000", "250"), ("0.50", "0.5"), ("1.000001", "1.000001"),
                                          ("007", "7"), ("1E+3", None)])
def test_masses_are_stored_in_shortest_exact_form(sent, stored):
    raw = registered("B-1")
    if stored is None:
        raw["data"]["mass_kg"] = loads('{"m": 1E+3}')["m"]
        stored = "1000"
    else:
        raw["data"]["mass_kg"] = sent
    assert parse_event(raw, NOW).data["mass_kg"] == stored


def test_a_mass_sent_as_a_json_number_stays_exact():
    body = loads('{"m": 2.675001}')
    raw = registered("B-1")
    raw["data"]["mass_kg"] = body["m"]
    assert parse_event(raw, NOW).data["mass_kg"] == "2.675001"
    assert mass_to_mg("0.000001") == 1 and mg_to_mass(1) == "0.000001" and mg_to_mass(2_500_000) == "2.5"


def test_composition_names_each_bad_element_and_share_and_normalizes_the_good_ones():
    raw = registered("B-1")
    raw["data"]["composition"] = {"nd": "1", "Nd": "100.5", "Dy": None, "Fe": "1.0000001", "B": True, "Co": "2"}
    assert errors_of(raw) == {
        "data.composition.nd.key": ["must be an element symbol"],
        "data.composition.Nd.value": ["must be a percentage between 0 and 100"],
        "data.composition.Dy.value": ["Field may not be null."],
        "data.composition.Fe.value": ["must have at most 6 decimal places"],
        "data.composition.B.value": ["must be a percentage between 0 and 100"],
    }
    raw["data"]["composition"] = ["Nd"]
    assert errors_of(raw) == {"data.composition": ["Not a valid mapping type."]}
    raw["data"]["composition"] = {"Nd": "029.50", "Dy": 4, "B": loads('{"b": 0.10}')["b"], "Fe": "0"}
    assert parse_event(raw, NOW).data["composition"] == {"Nd": "29.5", "Dy": "4", "B": "0.1", "Fe": "0"}


@pytest.mark.parametrize("country", ["in", "IND", "XX", "", 12])
def test_bad_country_codes_are_rejected(country):
    raw = registered("B-1")
    raw["data"]["origin_country"] = country
    assert "data.origin_country" in errors_of(raw)


@pytest.mark.parametrize("occurred", ["2026-10-02T08:00:00", "2026-10-02 08:00:00Z", "2026-13-02T08:00:00Z",
                                      "2026-10-02T08:00:00.1234567Z", "2026-10-02T08:00:00+25:00", "yesterday"])
def test_occurred_at_must_be_rfc3339_with_offset(occurred):
    assert "occurred_at" in errors_of(registered("B-1", occurred_at=occurred))


def test_occurred_at_is_normalized_to_utc():
    parsed = parse_event(registered("B-1", occurred_at="2026-10-02T08:00:00.250+08:00"), NOW)
    assert parsed.occurred_at == "2026-10-02T00:00:00.250000Z"
    assert parse_event(registered("B-1", occurred_at="2026-10-02T08:00:00z"), NOW).occurred_at == "2026-10-02T08:00:00Z"
    assert format_time(datetime(2026, 1, 1, tzinfo=UTC)) == "2026-01-01T00:00:00Z"


def test_more_than_five_minutes_in_the_future_is_rejected_but_less_is_not():
    assert parse_event(registered("B-1", occurred_at="2026-11-01T12:04:59Z"), NOW)
    assert errors_of(registered("B-1", occurred_at="2026-11-01T12:05:01Z"))["occurred_at"] == [
        "must not be more than 5 minutes in the future"]


def test_envelope_errors_name_every_bad_field_at_once():
    raw = {"event_id": "not-a-uuid", "type": "batch.registered", "batch_id": " bad id",
           "occurred_at": "nope", "expected_version": -1,
           "data": {"material": "", "mass_kg": "-5", "origin_country": "ZZ"}}
    errors = errors_of(raw)
    assert {"event_id", "batch_id", "occurred_at", "expected_version", "data.material", "data.mass_kg",
            "data.origin_country"} <= set(errors)


def test_unknown_type_and_non_object_bodies_are_rejected():
    assert "type" in errors_of(event("batch.stolen", "B-1", {}))
    assert "_schema" in errors_of(["not", "an", "object"])
    assert "data" in errors_of({**registered("B-1"), "data": "text"})


def test_split_children_and_transform_inputs_must_be_distinct():
    raw = event("batch.split", "B-1", {"children": [{"batch_id": "C", "mass_kg": "1"}, {"batch_id": "C", "mass_kg": "2"}]})
    assert "data.children" in errors_of(raw)
    raw = event("batch.transformed", "O-1", {"inputs": [], "product": "motor", "mass_kg": "1"})
    assert "data.inputs" in errors_of(raw)


def test_lone_surrogates_are_rejected():
    raw = registered("B-1")
    raw["data"]["material"] = "bad \ud800 text"
    assert "data.material" in errors_of(raw)


def test_nul_characters_are_rejected_and_the_text_of_an_escaped_nul_is_kept():
    raw = registered("B-1")
    raw["data"]["material"] = "NdFeB\x00N52"
    assert errors_of(raw) == {"data.material": ["must be valid Unicode text without NUL characters"]}
    raw["data"]["material"] = "NdFeB \\u0000 N52"  # a backslash and five characters, no NUL
    parsed = parse_event(raw, NOW)
    assert parsed.data["material"] == "NdFeB \\u0000 N52"
    assert json.loads(parsed.data_json)["material"] == "NdFeB \\u0000 N52"


def test_batch_posts_name_fields_by_index_and_are_bounded():
    good, bad = registered("B-1"), registered("B-2", mass="0")
    with pytest.raises(Invalid) as caught:
        parse_post({"events": [good, bad]}, NOW)
    assert list(caught.value.errors) == ["events.1.data.mass_kg"]
    with pytest.raises(TooLarge):
        parse_post({"events": [good] * 1001}, NOW)
    with pytest.raises(Invalid):
        parse_post({"events": []}, NOW)


def test_humanitarian_must_be_a_real_boolean():
    raw = event("enduse.declared", "B-1", {**VALID_DATA["enduse.declared"], "humanitarian": "yes"})
    assert "data.humanitarian" in errors_of(raw)


DECIMAL_TEXTS = st.from_regex(r"-?[0-9]{1,14}(\.[0-9]{0,8})?", fullmatch=True)
NUMBERS = st.one_of(DECIMAL_TEXTS, st.integers(-10, 10**13), st.decimals(allow_nan=False, places=7), st.booleans(),
                    st.sampled_from(["1e3", " 5", "5 ", "+5", ".5", "5.", "NaN", "Infinity", "", "١٢", "1٢", "٢", "1.٥"]))


def _answer(function, value):
    try:
        return function(value)
    except ValidationError as error:
        return error.messages


@settings(max_examples=2000, deadline=None)
@given(NUMBERS)
def test_values_in_normal_form_are_taken_as_they_are_and_all_others_the_long_way(value):
    """A mass or percentage already in its normal form skips the decimal arithmetic, a plain
    int and a plain str skip marshmallow's type checks: whatever the short way answers must be
    what the long way answers, for every value either way may meet."""
    assert _answer(_percent, value) == _answer(_percent_by_decimal, value), value
    mass = Mass()
    assert _answer(lambda v: mass._deserialize(v, "mass_kg", {}), value) == _answer(_mass_by_decimal, value), value
    for raw in (value, str(value)):
        assert _answer(Text().deserialize, raw) == _answer(fields.String().deserialize, raw), raw
    whole = ENVELOPE.fields["expected_version"]
    if isinstance(value, bool):
        assert _answer(whole.deserialize, value) == ["must be a whole number"]
    else:
        plain = fields.Integer(strict=True, allow_none=True, validate=whole.validators)
        assert _answer(whole.deserialize, value) == _answer(plain.deserialize, value), value


# --- the quick load agrees with marshmallow's ------------------------------------------------

ODD_VALUES = [None, "", " ", 0, -1, 1.5, True, False, [], {}, "0", "-1", "1e3", "250.1234567", "x" * 201, "IN", "in",
              "ZZ", "2026-10-02T08:00:00+08:00", "2026-10-02", "2026-13-02T08:00:00Z", "NaN", "B-1\n", "a\x00b",
              "\ud800", "6f1c2e4a-3b7d-4c51-9a0e-2d8f9b7c1A10", 2**53, 2**60, ["IN"], ["IN", 1], {"Nd": "101"},
              {"nd": "1"}, {"Nd": None}, "8505.11", "did_not_occur", "recycled", "pune-motors"]


def _variant(draw, base: dict) -> dict:
    changed = dict(base)
    for key in draw(st.lists(st.sampled_from([*base, "extra"]), max_size=3)):
        action = draw(st.sampled_from(["replace", "drop"]))
        if action == "drop":
            changed.pop(key, None)
        else:
            changed[key] = draw(st.sampled_from(ODD_VALUES))
    return changed


@st.composite
def envelopes_and_data(draw):
    event_type = draw(st.sampled_from(EVENT_TYPES))
    raw = event(event_type, "B-1", dict(VALID_DATA[event_type]))
    return _variant(draw, raw), event_type, _variant(draw, VALID_DATA[event_type])


@settings(max_examples=400, deadline=None)
@given(envelopes_and_data())
def test_the_quick_load_answers_as_marshmallow_does_or_leaves_it_to_marshmallow(sample):
    """`events.load` takes a shortcut for values that pass: whatever the shortcut answers
    must be what the schema's own load answers, and a value the schema refuses must never
    pass it."""
    from marshmallow import ValidationError

    from ledger.events import _PASSING_LOADS, DATA_SCHEMAS, ENVELOPE

    envelope, event_type, data = sample
    for schema, raw in ((ENVELOPE, envelope), (DATA_SCHEMAS[event_type], data)):
        try:
            expected = schema.load(raw)
        except ValidationError:
            expected = None
        quick = _PASSING_LOADS[schema](raw)
        assert quick is None or quick == expected, (raw, quick, expected)


@pytest.mark.parametrize("event_type", [t for t in EVENT_TYPES if t not in ("batch.split", "batch.transformed")])
def test_the_quick_load_takes_valid_events_of_every_type_without_marshmallow(event_type):
    """Split and transformation data have schema-level checks (distinct batches) and always
    go through marshmallow; every other type, and the envelope, takes the quick way."""
    from ledger.events import _PASSING_LOADS, DATA_SCHEMAS, ENVELOPE

    raw = event(event_type, "B-1", dict(VALID_DATA[event_type]))
    assert _PASSING_LOADS[ENVELOPE](raw) == ENVELOPE.load(raw)
    assert _PASSING_LOADS[DATA_SCHEMAS[event_type]](raw["data"]) == DATA_SCHEMAS[event_type].load(raw["data"])
