"""Who is calling, and what their role lets them do (SPEC 1)."""

from __future__ import annotations

from functools import wraps

from flask import current_app, g, request

from ledger.errors import Forbidden
from ledger.parties import Party


def current_party() -> Party:
    if "party" not in g:
        header = request.headers.get("Authorization", "")
        scheme, _, key = header.partition(" ")
        g.party = current_app.extensions["magledger"].parties.authenticate(
            key.strip() if scheme.lower() == "bearer" else None)
    return g.party


def requires(*roles: str):
    """Authenticate the caller; with roles given, refuse (403) any other role."""
    def decorate(view):
        @wraps(view)
        def wrapper(*args, **kwargs):
            party = current_party()
            if roles and party.role not in roles:
                raise Forbidden(f"A {party.role} may not do this; it needs the role {' or '.join(roles)}.")
            return view(*args, **kwargs)
        return wrapper
    return decorate
