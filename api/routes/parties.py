from flask import current_app

from api.auth import requires
from api.openapi import ERROR
from api.routes import Blueprint
from api.schemas import IssuedKey, PageArgs, PartyIn, PartyOut, PartyPage, RegisteredParty
from ledger.errors import NotFound

blp = Blueprint("parties", __name__, url_prefix="/v1/parties", description="Parties and their API keys")


def _registry():
    return current_app.extensions["magledger"].parties


@blp.route("", methods=["POST"])
@requires("admin")
@blp.arguments(PartyIn)
@blp.response(201, RegisteredParty)
@blp.alt_response(409, response=ERROR[409])
def register(body):
    """Register a party (admin). The answer holds its first API key, shown only this once."""
    party, key = _registry().register(body["party_id"], body["name"], body["country"], body["role"])
    return {**party.as_dict(), "key_id": key.key_id, "api_key": key.api_key}


@blp.route("", methods=["GET"])
@requires()
@blp.arguments(PageArgs, location="query")
@blp.response(200, PartyPage)
def directory(args):
    """The party directory: id, name, country and role of every party."""
    found = _registry().list(after=args["cursor"], limit=args["limit"])
    return {"items": [p.as_dict() for p in found],
            "next": found[-1].party_id if len(found) == args["limit"] else None}


@blp.route("/<party_id>", methods=["GET"])
@requires()
@blp.response(200, PartyOut)
def get_party(party_id):
    party = _registry().get(party_id)
    if party is None:
        raise NotFound(f"No party {party_id!r}.")
    return party.as_dict()


@blp.route("/<party_id>/keys", methods=["POST"])
@requires("admin")
@blp.response(201, IssuedKey)
def issue_key(party_id):
    """Issue another key for a party (admin); shown only this once."""
    return vars(_registry().issue_key(party_id))


@blp.route("/<party_id>/keys/<key_id>", methods=["DELETE"])
@requires("admin")
@blp.response(204)
def revoke_key(party_id, key_id):
    """Revoke a key (admin): it stops working at once."""
    _registry().revoke_key(party_id, key_id)
