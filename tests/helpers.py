"""Builders for events and parties used across the tests."""

from __future__ import annotations

import uuid

from ledger.events import parse_post

OCCURRED = "2026-10-02T08:00:00+08:00"


def unique(prefix: str = "B") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def event(type_: str, batch_id: str, data: dict, **envelope) -> dict:
    return {"event_id": str(uuid.uuid4()), "type": type_, "batch_id": batch_id,
            "occurred_at": envelope.pop("occurred_at", OCCURRED), "data": data, **envelope}


def registered(batch_id: str, mass: str = "1000", origin: str = "CN", **envelope) -> dict:
    return event("batch.registered", batch_id, {"material": "NdFeB N52", "mass_kg": mass,
                                                "origin_country": origin}, **envelope)


def shipped(batch_id: str, ref: str, to_party: str, mass: str, **data) -> dict:
    return event("custody.shipped", batch_id, {"shipment_ref": ref, "to_party": to_party, "mass_kg": mass, **data})


def received(batch_id: str, ref: str, mass: str) -> dict:
    return event("custody.received", batch_id, {"shipment_ref": ref, "mass_kg": mass})


def declared(batch_id: str, countries=("IN",), **data) -> dict:
    return event("enduse.declared", batch_id, {"licence_id": "LIC-1", "permitted_countries": list(countries),
                                               "end_use": "domestic automotive motors", **data})


def post(ledger, actor, *raw_events, batch: bool | None = None, key_id: str | None = None):
    """Validate and append as the API does; a batch post when several events are given."""
    body = {"events": list(raw_events)} if (batch or len(raw_events) > 1) else raw_events[0]
    new_events, is_batch = parse_post(body, ledger.store.clock())
    return ledger.store.append(actor, new_events, is_batch, key_id=key_id)


def parties(ledger):
    """The cast of SPEC 0, registered in `ledger`; returns Party objects by short name."""
    cast = {
        "maker": ("baotou-magnets", "CN", "partner"),
        "importer": ("mumbai-imports", "IN", "partner"),
        "motors": ("pune-motors", "IN", "partner"),
        "stranger": ("detroit-motors", "US", "partner"),
        "regulator": ("mofcom", "CN", "regulator"),
        "auditor": ("audit-co", "IN", "auditor"),
        "admin": ("ops-admin", "IN", "admin"),
    }
    found = {}
    for short, (party_id, country, role) in cast.items():
        party, _key = ledger.parties.register(party_id, party_id.title(), country, role)
        found[short] = party
    return found
