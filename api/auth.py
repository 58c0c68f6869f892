"""Who is calling, and what their role lets them do (SPEC 1)."""

from __future__ import annotations

from functools import wraps

from flask import current_app, g, request

from ledger.errors import Forbidden
from ledger.parties import Party

READERS = ("partner", "regulator", "auditor")
"""The roles that read custody data; an admin registers parties and issues keys, nothing else (SPEC 1)."""


def current_party() -> Party:
    if "party" not in g:
        header = request.headers.get("Authorization", "")
        scheme, _, key = header.partition(" ")
        g.party = current_app.extensions["magledger"].parties.authenticate(
            key.strip() if scheme.lower() == "bearer" else None)
    return g.party


def requires(*roles: str):
    """Authenticate the caller; with roles given, refuse (403) any other role. The view
    keeps `roles`, from which the OpenAPI document lists its 401 and 403 (api.openapi)."""
    def decorate(view):
        @wraps(view)
        def wrapper(*args, **kwargs):
            party = current_party()
            if roles and party.role not in roles:
                raise Forbidden(f"A {party.role} may not do this; it needs the role {' or '.join(roles)}.")
            return view(*args, **kwargs)
        wrapper.roles = roles
        return wrapper
    return decorate
