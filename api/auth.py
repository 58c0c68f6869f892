"""Who is calling, and what their role lets them do (SPEC 1)."""

from __future__ import annotations

from functools import wraps

from flask import current_app, g, request

from ledger.errors import Forbidden
from ledger.parties import Credential, Party

READERS = ("partner", "regulator", "auditor")
"""The roles that read custody data; an admin registers parties and issues keys, nothing else (SPEC 1)."""


def current_party() -> Party:
    if "party" not in g:
        g.party = _registry().authenticate(bearer_key())
    return g.party


def current_credential() -> Credential:
    """The caller's party and key id, without a look-up when this process has verified the
    key before; whether the key has been revoked since is left to the append's transaction
    (`EventStore.append`'s `key_id`): for the routes that append, and only those."""
    if "credential" not in g:
        g.credential = _registry().identify(bearer_key())
        g.party = g.credential.party
    return g.credential


def confirm_not_revoked() -> None:
    """Before a refusal decided without the append (a malformed or invalid post), check that
    the key of a `current_credential` has not been revoked: a revoked key gets 401 first."""
    if "credential" in g:
        _registry().authenticate(bearer_key())


def _registry():
    return current_app.extensions["magledger"].parties


def bearer_key() -> str | None:
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    return key.strip() if scheme.lower() == "bearer" else None


def requires(*roles: str, revocation_checked_by_append: bool = False):
    """Authenticate the caller; with roles given, refuse (403) any other role. The view
    keeps `roles`, from which the OpenAPI document lists its 401 and 403 (api.openapi).
    `revocation_checked_by_append`: the view appends with the key's id (`current_credential`)."""
    identify = (lambda: current_credential().party) if revocation_checked_by_append else current_party

    def decorate(view):
        @wraps(view)
        def wrapper(*args, **kwargs):
            party = identify()
            if roles and party.role not in roles:
                raise Forbidden(f"A {party.role} may not do this; it needs the role {' or '.join(roles)}.")
            return view(*args, **kwargs)
        wrapper.roles = roles
        return wrapper
    return decorate
