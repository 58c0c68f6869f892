"""The nine event types, their validation, and the canonical form of a recorded event.

Validation turns what a poster sent into a `NewEvent` whose values are already in the
normal form the log stores (UTC times, masses as shortest decimal strings), so that the
same event posted twice compares equal and the stored envelope hashes the same everywhere.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Any

import iso3166
import orjson
from marshmallow import RAISE, Schema, ValidationError, fields, missing, validate, validates_schema
from marshmallow.decorators import POST_LOAD, PRE_LOAD, VALIDATES, VALIDATES_SCHEMA

from ledger.errors import Invalid, TooLarge

BATCH_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
PARTY_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{1,63}$")
REFERENCE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/#-]{0,127}$")
RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))?([Zz]|[+-]\d{2}:\d{2})$"
)
CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
ELEMENT = re.compile(r"^[A-Z][a-z]?$")
HS_CODE = re.compile(r"^[0-9]{4}(\.?[0-9]{2}){0,3}$")

MASS_PLACES = 6
MAX_MASS_KG = Decimal(1000000000000)
PLAIN_MASS = re.compile(r"[1-9][0-9]{0,11}(\.[0-9]{0,5}[1-9])?|0\.[0-9]{0,5}[1-9]")
"""A mass already in its normal form and in range: above zero, below MAX_MASS_KG, at most
MASS_PLACES places, no leading or trailing zeros. Such a text is its own normalized value."""
PLAIN_PERCENT = re.compile(r"[1-9]?[0-9](\.[0-9]{0,5}[1-9])?")
"""The same for a percentage below 100."""
FUTURE_SKEW = timedelta(minutes=5)
COUNTRY_CODES = frozenset(iso3166.countries_by_alpha2)
MAX_SAFE_INTEGER = 2**53 - 1


# --- values ------------------------------------------------------------------------------


def format_mass(value: Decimal) -> str:
    """Shortest exact decimal string: 250.000 -> "250", 0.50 -> "0.5"."""
    return format(value.normalize(), "f")


def mass_to_mg(mass: str) -> int:
    """Kilograms (decimal string, at most 6 places) to whole milligrams, for exact sums."""
    return int(Decimal(mass).scaleb(MASS_PLACES))


def mg_to_mass(mg: int) -> str:
    return format_mass(Decimal(mg).scaleb(-MASS_PLACES)) if mg else "0"


def format_time(moment: datetime) -> str:
    """UTC as YYYY-MM-DDTHH:MM:SS[.ffffff]Z, the fraction only when it is not zero (SPEC 3.6)."""
    moment = moment.astimezone(UTC)
    text = moment.replace(tzinfo=None, microsecond=0).isoformat()  # strftime's %Y does not pad years below 1000
    if moment.microsecond:
        text += f".{moment.microsecond:06d}"
    return text + "Z"


def parse_time(text: str) -> datetime:
    """Strict RFC 3339 with an offset; raises ValueError on anything else."""
    match = RFC3339.fullmatch(text)
    if not match:
        raise ValueError("must be an RFC 3339 date-time with an offset, e.g. 2026-10-02T08:00:00+08:00")
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    micro = int(fraction.ljust(6, "0")) if fraction else 0
    moment = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), micro,
                      tzinfo=_zone(offset))
    try:
        moment.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of range: in UTC it falls outside the years 1 to 9999") from None
    return moment


@functools.lru_cache(maxsize=1024)
def _zone(offset: str) -> timezone:
    """The zone of an RFC 3339 offset, made once per offset: posts carry few distinct ones,
    and making it was a third of parsing a time."""
    if offset in ("Z", "z"):
        return UTC
    hours, minutes = int(offset[1:3]), int(offset[4:6])
    if hours > 23 or minutes > 59:
        raise ValueError("has an invalid UTC offset")
    return timezone((1 if offset[0] == "+" else -1) * timedelta(hours=hours, minutes=minutes))


# --- marshmallow fields ------------------------------------------------------------------


class Mass(fields.Field):
    """A positive mass in kilograms, from a JSON string or number, normalized to a decimal string."""

    def _deserialize(self, value, attr, data, **kwargs):
        if type(value) is str and PLAIN_MASS.fullmatch(value):
            return value
        return _mass_by_decimal(value)


def _mass_by_decimal(value) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, Decimal)):
        raise ValidationError("must be a decimal number of kilograms, as a string or number")
    if isinstance(value, str) and not re.fullmatch(r"-?\d+(\.\d+)?", value):
        raise ValidationError("must be a plain decimal such as \"250.5\"")
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise ValidationError("must be a decimal number") from None
    if not amount.is_finite() or amount <= 0:
        raise ValidationError("must be greater than zero")
    if amount > MAX_MASS_KG:
        raise ValidationError(f"must be at most {MAX_MASS_KG} kg")
    if amount.normalize().as_tuple().exponent < -MASS_PLACES:
        raise ValidationError(f"must have at most {MASS_PLACES} decimal places")
    return format_mass(amount)


def _percent(value) -> str:
    """A share of 0 to 100 percent, normalized like a mass."""
    if type(value) is str and PLAIN_PERCENT.fullmatch(value):
        return value
    return _percent_by_decimal(value)


def _percent_by_decimal(value) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, Decimal)):
        raise ValidationError("must be a percentage between 0 and 100")
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise ValidationError("must be a percentage between 0 and 100") from None
    if not amount.is_finite() or not (0 <= amount <= 100):
        raise ValidationError("must be a percentage between 0 and 100")
    amount = amount.normalize()
    if amount.as_tuple().exponent < -MASS_PLACES:
        raise ValidationError(f"must have at most {MASS_PLACES} decimal places")
    return format(amount, "f")


class Percent(fields.Field):
    def _deserialize(self, value, attr, data, **kwargs):
        return _percent(value)


class Composition(fields.Dict):
    """Element symbol -> percent. Declared as a Dict of keys and values for the OpenAPI
    document, checked in one pass: the generic Dict field, which deserializes every key and
    value through a field of its own, was half of a registration's validation (21 of 38 µs)."""

    NOT_AN_ELEMENT = "must be an element symbol"

    def __init__(self, **kwargs):
        super().__init__(keys=fields.String(validate=FullMatch(ELEMENT, error=self.NOT_AN_ELEMENT)),
                         values=Percent(), **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, Mapping):
            raise self.make_error("invalid")
        result, errors = {}, {}
        for key, share in value.items():
            if not isinstance(key, str) or ELEMENT.fullmatch(key) is None:
                errors.setdefault(key, {})["key"] = [self.NOT_AN_ELEMENT]
            if share is None:
                errors.setdefault(key, {})["value"] = ["Field may not be null."]
                continue
            try:
                result[key] = _percent(share)
            except ValidationError as error:
                errors.setdefault(key, {})["value"] = error.messages
        if errors:
            raise ValidationError(errors, valid_data=result)
        return result


class Text(fields.String):
    """A string field. A value of type str is taken as it is: marshmallow's own String also
    takes bytes and str subclasses, and costs half a microsecond a field to find out."""

    def _deserialize(self, value, attr, data, **kwargs):
        if type(value) is str:
            return value
        return super()._deserialize(value, attr, data, **kwargs)


class Country(Text):
    def _deserialize(self, value, attr, data, **kwargs):
        code = super()._deserialize(value, attr, data, **kwargs)
        if code not in COUNTRY_CODES:
            raise ValidationError("must be an ISO 3166-1 alpha-2 country code in upper case, e.g. IN")
        return code


class Timestamp(Text):
    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs)
        try:
            return format_time(parse_time(text))
        except ValueError as error:
            raise ValidationError(str(error)) from None


class CalendarDate(Text):
    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs)
        try:
            if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
                raise ValueError
            return date.fromisoformat(text).isoformat()
        except ValueError:
            raise ValidationError("must be a date, YYYY-MM-DD") from None


class EventId(Text):
    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs)
        if CANONICAL_UUID.fullmatch(text):
            return text
        try:
            return str(uuid.UUID(text))
        except ValueError:
            raise ValidationError("must be a UUID") from None


class WholeNumber(fields.Integer):
    def __init__(self, minimum: int = 0, **kwargs):
        super().__init__(strict=True, validate=validate.Range(min=minimum, max=MAX_SAFE_INTEGER), **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        if type(value) is int:
            return value  # marshmallow's own check of a plain int asks an abstract base class, at 1 µs
        if isinstance(value, bool):
            raise ValidationError("must be a whole number")
        return super()._deserialize(value, attr, data, **kwargs)


def _text(max_length: int = 200, **kwargs) -> Text:
    return Text(validate=validate.Length(min=1, max=max_length), **kwargs)


class FullMatch(validate.Regexp):
    """The whole value must match: `$` alone also matches before a final newline, which would
    let "B-1\n" through as a batch id, raw into the canonical form."""

    def __call__(self, value: str) -> str:
        if self.regex.fullmatch(value) is None:
            raise ValidationError(self._format_error(value))
        return value


def _matching(pattern: re.Pattern, what: str, **kwargs) -> Text:
    return Text(validate=FullMatch(pattern, error=f"must be {what}"), **kwargs)


def _batch_id(**kwargs):
    return _matching(BATCH_ID, "a batch id (letters, digits and ._:/-, at most 128)", **kwargs)


def _party_id(**kwargs):
    return _matching(PARTY_ID, "a party id (lower-case slug)", **kwargs)


def _reference(**kwargs):
    return _matching(REFERENCE, "a reference (letters, digits and ._:/#-, at most 128)", **kwargs)


# --- data schemas, one per event type ----------------------------------------------------


class _Strict(Schema):
    class Meta:
        unknown = RAISE


class Registered(_Strict):
    material = _text(required=True)
    mass_kg = Mass(required=True)
    origin_country = Country(required=True)
    units = WholeNumber(minimum=1)
    composition = Composition()
    hs_code = _matching(HS_CODE, "an HS code such as 8505.11")


class EnduseDeclared(_Strict):
    licence_id = _text(128, required=True)
    permitted_countries = fields.List(Country(), required=True, validate=validate.Length(min=1, max=250))
    end_use = _text(500, required=True)
    permitted_end_users = fields.List(_party_id(), validate=validate.Length(min=1, max=1000))
    licensed_mass_kg = Mass()
    valid_until = CalendarDate()
    issuing_authority = _text()
    humanitarian = fields.Boolean(truthy={True}, falsy={False})


class Shipped(_Strict):
    shipment_ref = _reference(required=True)
    to_party = _party_id(required=True)
    mass_kg = Mass(required=True)
    destination_country = Country()
    carrier = _text()


class Received(_Strict):
    shipment_ref = _reference(required=True)
    mass_kg = Mass(required=True)


class BatchPortion(_Strict):
    batch_id = _batch_id(required=True)
    mass_kg = Mass(required=True)


def _distinct_batches(portions: list[dict], field: str) -> None:
    seen = [p["batch_id"] for p in portions]
    if len(set(seen)) != len(seen):
        raise ValidationError({field: ["must not name the same batch twice"]})


class Split(_Strict):
    children = fields.List(fields.Nested(BatchPortion), required=True, validate=validate.Length(min=1, max=1000))

    @validates_schema
    def _children_distinct(self, data, **kwargs):
        _distinct_batches(data["children"], "children")


class Transformed(_Strict):
    inputs = fields.List(fields.Nested(BatchPortion), required=True, validate=validate.Length(min=1, max=1000))
    product = _text(required=True)
    mass_kg = Mass(required=True)
    units = WholeNumber(minimum=1)

    @validates_schema
    def _inputs_distinct(self, data, **kwargs):
        _distinct_batches(data["inputs"], "inputs")


class Exported(_Strict):
    to_country = Country(required=True)
    customs_ref = _reference(required=True)
    consignee = _text()
    mass_kg = Mass()


class Consumed(_Strict):
    mass_kg = Mass(required=True)
    disposition = Text(required=True, validate=validate.OneOf(["consumed", "destroyed", "recycled"]))
    note = _text(1000)


class Voided(_Strict):
    voided_event_id = EventId(required=True)
    reason = Text(required=True, validate=validate.OneOf(["did_not_occur", "incorrect_data"]))
    corrective_event_id = EventId()


DATA_SCHEMAS: dict[str, Schema] = {
    "batch.registered": Registered(),
    "enduse.declared": EnduseDeclared(),
    "custody.shipped": Shipped(),
    "custody.received": Received(),
    "batch.split": Split(),
    "batch.transformed": Transformed(),
    "custody.exported": Exported(),
    "batch.consumed": Consumed(),
    "event.voided": Voided(),
}
EVENT_TYPES = tuple(DATA_SCHEMAS)


class Envelope(_Strict):
    event_id = EventId(required=True)
    type = Text(required=True, validate=validate.OneOf(EVENT_TYPES))
    batch_id = _batch_id(required=True)
    occurred_at = Timestamp(required=True)
    expected_version = WholeNumber(minimum=0, allow_none=True)
    data = fields.Dict(required=True)


ENVELOPE = Envelope()


def _passing_load(schema: Schema) -> Callable[[Any], dict | None]:
    """`schema.load` for values that pass it: the same fields' own deserialization and
    validators, without the framework around them, which was most of validating an event
    (marshmallow builds an error store, a closure per field and an `And` of each field's
    validators at every value). Returns None at the first doubt, and the caller then runs
    `schema.load` itself, which names every error as before. A schema with hooks, or fields
    whose options this does not follow, always goes to `schema.load`."""
    hooks = type(schema).resolve_hooks()
    plain = schema.unknown == RAISE and not any(hooks.get(tag) for tag in (PRE_LOAD, POST_LOAD, VALIDATES,
                                                                           VALIDATES_SCHEMA))
    loaded = list(schema.load_fields.items())
    for name, field in loaded:
        plain = plain and (field.data_key is None and field.attribute is None and field.load_default is missing
                           and not field.pre_load and not field.post_load and "." not in name)
    if not plain:
        return lambda raw: None
    names = frozenset(name for name, _ in loaded)

    def load(raw: Any) -> dict | None:
        if not isinstance(raw, dict) or not names.issuperset(raw):
            return None
        result = {}
        for name, field in loaded:
            value = raw.get(name, missing)
            if value is missing:
                if field.required:
                    return None
                continue
            if value is None:
                if not field.allow_none:
                    return None
            else:
                try:
                    value = field._deserialize(value, name, raw)
                    for validator in field.validators:
                        validator(value)
                except ValidationError:
                    return None
            result[name] = value
        return result
    return load


_PASSING_LOADS = {schema: _passing_load(schema) for schema in (ENVELOPE, *DATA_SCHEMAS.values())}


def load(schema: Schema, raw: Any) -> dict:
    """`schema.load(raw)`, the quicker way when `raw` passes (`_passing_load`)."""
    result = _PASSING_LOADS[schema](raw)
    return result if result is not None else schema.load(raw)


# --- the events themselves ---------------------------------------------------------------


@dataclass(frozen=True)
class NewEvent:
    """A validated event as posted, before the log gives it an actor, position and version."""

    event_id: str
    type: str
    batch_id: str
    occurred_at: str
    data: dict
    data_json: str
    """`data` in its canonical form, as the log stores and hashes it."""
    expected_version: int | None = None

    def content_digest(self, actor: str) -> str:
        """What idempotency compares: the same event_id must come with the same content."""
        content = (f'{{"actor":"{actor}","batch_id":"{self.batch_id}","data":{self.data_json},'
                   f'"occurred_at":"{self.occurred_at}","type":"{self.type}"}}')
        return hashlib.sha256(content.encode("utf-8")).hexdigest()


@dataclass(slots=True)
class RecordedEvent:
    """An event as the log holds it. Not frozen: a rebuild makes millions, and a frozen
    dataclass takes five times as long to construct (3.1 against 0.6 µs, measured)."""

    event_id: str
    type: str
    batch_id: str
    actor: str
    occurred_at: str
    recorded_at: str
    position: int
    version: int
    data: dict
    leaf_hash: str

    def envelope(self) -> dict[str, Any]:
        """Exactly what GET /v1/events/{id} returns; without leaf_hash it is the canonical form."""
        return {
            "event_id": self.event_id, "type": self.type, "batch_id": self.batch_id, "actor": self.actor,
            "occurred_at": self.occurred_at, "recorded_at": self.recorded_at, "position": self.position,
            "version": self.version, "data": self.data, "leaf_hash": self.leaf_hash,
        }

    def receipt(self) -> dict[str, Any]:
        return {"event_id": self.event_id, "position": self.position, "version": self.version,
                "recorded_at": self.recorded_at, "leaf_hash": self.leaf_hash}


def canonical_bytes(value: Any) -> bytes:
    """RFC 8785 (JCS) serialization of the values events are made of.

    Envelopes hold only strings, whole numbers below 2**53, booleans, lists and objects with
    ASCII keys (validation guarantees it), and for those JCS is exactly sorted keys, no
    white space and minimal escaping. orjson writes that form several times faster than the
    standard library; the standard library takes what orjson refuses (integers beyond 53
    bits, which validation keeps out of event data). The tests check both against an
    independent JCS encoder.
    """
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_STRICT_INTEGER)
    except TypeError:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False).encode("utf-8")


def canonical_envelope(*, actor: str, batch_id: str, data_json: str, event_id: str, occurred_at: str,
                       position: int, recorded_at: str, type: str, version: int) -> bytes:
    """The canonical form of a stored envelope, assembled from its parts in JCS key order.

    Every string here except `data` is restricted by validation to characters that JCS
    writes as they are (ids, slugs, UUIDs, fixed-format times), and `data_json` is already
    canonical, so plain assembly is exactly RFC 8785; the tests check it against an
    independent encoder.
    """
    return (f'{{"actor":"{actor}","batch_id":"{batch_id}","data":{data_json},"event_id":"{event_id}",'
            f'"occurred_at":"{occurred_at}","position":{position},"recorded_at":"{recorded_at}",'
            f'"type":"{type}","version":{version}}}').encode()


def leaf_hash(canonical: bytes) -> str:
    """RFC 9162 leaf hash: SHA-256(0x00 || canonical bytes), hex."""
    return hashlib.sha256(b"\x00" + canonical).hexdigest()


def compute_leaf_hash(envelope_without_hash: dict) -> str:
    return leaf_hash(canonical_bytes(envelope_without_hash))


# --- parsing posts -----------------------------------------------------------------------


def parse_event(raw: Any, now: datetime) -> NewEvent:
    """Validate one posted event; Invalid names every bad field (data fields as data.x)."""
    if not isinstance(raw, dict):
        raise Invalid("An event must be a JSON object.", {"_schema": ["must be a JSON object"]})
    errors: dict[str, list[str]] = {}
    try:
        envelope = load(ENVELOPE, raw)
    except ValidationError as error:
        _flatten(error.messages, "", errors)
        envelope = None
    data_schema = DATA_SCHEMAS.get(raw.get("type")) if isinstance(raw.get("type"), str) else None
    data = None
    if data_schema is not None and isinstance(raw.get("data"), dict):
        try:
            data = load(data_schema, raw["data"])
        except ValidationError as error:
            _flatten(error.messages, "data.", errors)
    if envelope is not None and data is not None:
        # Already normalized by the Timestamp field, so the standard library's parser reads it.
        if datetime.fromisoformat(envelope["occurred_at"]) > now + FUTURE_SKEW:
            errors["occurred_at"] = ["must not be more than 5 minutes in the future"]
        data_json = _storable_json(data)
        if data_json is None:
            _check_strings(data, "data.", errors)
    if errors:
        raise Invalid("The event is invalid; see errors for each field.", errors)
    return NewEvent(
        event_id=envelope["event_id"], type=envelope["type"], batch_id=envelope["batch_id"],
        occurred_at=envelope["occurred_at"], data=data,
        data_json=data_json if data_json is not None else canonical_bytes(data).decode("utf-8"),
        expected_version=envelope.get("expected_version"),
    )


def parse_post(body: Any, now: datetime, max_events: int = 1000) -> tuple[list[NewEvent], bool]:
    """One event, or {"events": [...]}; returns the events and whether the post was a batch."""
    if isinstance(body, dict) and set(body) == {"events"}:
        items = body["events"]
        if not isinstance(items, list) or not items:
            raise Invalid("events must be a non-empty list.", {"events": ["must be a non-empty list"]})
        if len(items) > max_events:
            raise TooLarge(f"A post may hold at most {max_events} events; this one holds {len(items)}.")
        parsed, errors = [], {}
        for index, item in enumerate(items):
            try:
                parsed.append(parse_event(item, now))
            except Invalid as error:
                errors.update(error.prefixed(f"events.{index}").errors)
        if errors:
            raise Invalid("Some events are invalid; nothing was written.", errors)
        return parsed, True
    return [parse_event(body, now)], False


def loads(body: bytes | str) -> Any:
    """JSON with exact decimals: a mass sent as a number must never pass through a float."""
    def reject_constant(name):
        raise ValueError(f"{name} is not JSON")

    try:
        return json.loads(body, parse_float=Decimal, parse_constant=reject_constant)
    except RecursionError:
        raise ValueError("it is nested too deeply") from None


def storable_text(value: str) -> bool:
    """Whether every database can store the text: lone surrogates have no UTF-8 form (so no
    canonical bytes), and PostgreSQL refuses NUL characters."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in value


def _storable_json(data: dict) -> str | None:
    """The canonical form of `data`, or None when a string in it may not be storable text,
    which `_check_strings` then names: one encoding of the whole instead of a check of every
    string, which took a tenth of validating a registration. JSON writes a NUL as \\u0000
    (also found, harmlessly, after an escaped backslash), and a lone surrogate has no UTF-8."""
    try:
        text = canonical_bytes(data).decode("utf-8")
    except UnicodeEncodeError:
        return None
    return None if "\\u0000" in text else text


def _check_strings(value: Any, path: str, errors: dict) -> None:
    if isinstance(value, str):
        if not storable_text(value):
            errors.setdefault(path.rstrip("."), []).append("must be valid Unicode text without NUL characters")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_strings(item, f"{path}{key}.", errors)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_strings(item, f"{path}{index}.", errors)


def _flatten(messages: Any, prefix: str, out: dict[str, list[str]]) -> None:
    if isinstance(messages, dict):
        for key, value in messages.items():
            if key == "_schema":
                _flatten(value, prefix or "_schema", out)
            else:
                _flatten(value, f"{prefix}{key}." if not isinstance(value, list) else f"{prefix}{key}", out)
    elif isinstance(messages, list):
        name = prefix.rstrip(".") or "_schema"
        for message in messages:
            if isinstance(message, (dict, list)):
                _flatten(message, prefix, out)
            else:
                out.setdefault(name, []).append(_plain(str(message)))


def _plain(message: str) -> str:
    return "is not allowed here" if message == "Unknown field." else message


Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)
