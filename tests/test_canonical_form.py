"""The canonical form of events is RFC 8785: checked against the test's own encoder and
against the `rfc8785` package, for random envelopes of the shapes the ledger stores."""

from __future__ import annotations

import hashlib

import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.events import canonical_bytes, canonical_envelope, compute_leaf_hash
from tests.jcs import canonicalize

text = st.text(st.characters(exclude_categories=["Cs"]), max_size=30)
scalars = st.one_of(text, st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1), st.booleans())
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.from_regex(r"[a-z_]{1,12}", fullmatch=True), inner, max_size=4)),
    max_leaves=20)


@given(st.dictionaries(st.from_regex(r"[a-z_]{1,16}", fullmatch=True), json_values, max_size=10))
@settings(max_examples=300)
def test_canonical_bytes_agree_with_two_independent_jcs_encoders(envelope):
    ours = canonical_bytes(envelope)
    assert ours == canonicalize(envelope)
    assert ours == rfc8785.dumps(envelope)


def test_the_leaf_hash_is_sha256_of_zero_byte_and_canonical_form():
    envelope = {"event_id": "e", "type": "batch.registered", "data": {"mass_kg": "250", "note": "é\n\"x\""},
                "position": 1, "version": 1}
    expected = hashlib.sha256(b"\x00" + canonicalize(envelope)).hexdigest()
    assert compute_leaf_hash(envelope) == expected


def test_known_answer_from_rfc8785_sorting_and_escaping():
    assert canonicalize({"b": [1, "\u20ac", "\x1f"], "a": {"z": True, "y": None}}) == (
        '{"a":{"y":null,"z":true},"b":[1,"\u20ac","\\u001f"]}'.encode())
    # UTF-16 order puts a supplementary character (a surrogate pair, D83D...) before U+FB33.
    assert canonicalize({"\ufb33": 1, "\U0001F600": 2, "\r": 3}) == '{"\\r":3,"\U0001F600":2,"\ufb33":1}'.encode()
    assert canonicalize([1e21, 1.5e-7, 0.0, -0.0, 333333333.3333333]) == b"[1e+21,1.5e-7,0,0,333333333.3333333]"


@given(
    data=st.dictionaries(st.from_regex(r"[a-z_]{1,16}", fullmatch=True), json_values, max_size=6),
    batch_id=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,40}", fullmatch=True),
    actor=st.from_regex(r"[a-z0-9][a-z0-9._-]{1,20}", fullmatch=True),
    position=st.integers(min_value=1, max_value=2**53 - 1),
    version=st.integers(min_value=1, max_value=2**31),
)
@settings(max_examples=200)
def test_assembled_envelopes_are_exactly_rfc8785(data, batch_id, actor, position, version):
    parts = {"actor": actor, "batch_id": batch_id, "event_id": "6f1c2e4a-3b7d-4c51-9a0e-2d8f9b7c1a10",
             "occurred_at": "2026-10-02T00:00:00.5Z", "position": position, "recorded_at": "2026-10-02T00:00:01Z",
             "type": "batch.registered", "version": version}
    assembled = canonical_envelope(**parts, data_json=canonical_bytes(data).decode())
    assert assembled == canonicalize({**parts, "data": data})


def test_integers_beyond_53_bits_still_get_their_exact_digits():
    """orjson refuses them under its strict-integer option; the standard library writes them."""
    assert canonical_bytes({"b": 2**60, "a": [-(2**63)]}) == b'{"a":[-9223372036854775808],"b":1152921504606846976}'
