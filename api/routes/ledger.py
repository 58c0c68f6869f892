from flask import current_app

from api.auth import READERS, current_party, requires
from api.openapi import ERROR
from api.routes import Blueprint
from api.schemas import (
    CheckpointOut,
    ConsistencyArgs,
    ConsistencyProof,
    InclusionArgs,
    InclusionProof,
    PublicKey,
)
from ledger.errors import NotFound

blp = Blueprint("ledger", __name__, url_prefix="/v1/ledger",
                description="Tamper evidence: signed tree heads and RFC 9162 proofs")


def _checkpoints():
    return current_app.extensions["magledger"].checkpoints


@blp.route("/checkpoint", methods=["GET"])
@requires()
@blp.response(200, CheckpointOut)
def checkpoint():
    """The latest signed tree head; signed anew first when the log has grown and the latest
    is more than a few seconds old."""
    return _checkpoints().current().describe()


@blp.route("/checkpoints", methods=["POST"])
@requires("admin", "auditor")
@blp.response(201, CheckpointOut)
def make_checkpoint():
    """Sign a tree head at the current end of the log now."""
    return _checkpoints().make().describe()


@blp.route("/public-key", methods=["GET"])
@blp.doc(security=[])
@blp.response(200, PublicKey)
def public_key():
    """The Ed25519 key that signs tree heads, with its note verifier key string."""
    return _checkpoints().signer.verifier.describe()


@blp.route("/proofs/inclusion", methods=["GET"])
@requires(*READERS)
@blp.arguments(InclusionArgs, location="query")
@blp.response(200, InclusionProof)
@blp.alt_response(404, response=ERROR[404])
def inclusion(args):
    """The audit path of one event (RFC 9162 2.1.3); partners only for events they may see."""
    ledger = current_app.extensions["magledger"]
    event = ledger.store.get(args["event_id"].lower(), visible_to=current_party())
    if event is None:
        raise NotFound(f"Event {args['event_id']!r} not found.")
    return ledger.checkpoints.inclusion(event.position, args["tree_size"])


@blp.route("/proofs/consistency", methods=["GET"])
@requires()
@blp.arguments(ConsistencyArgs, location="query")
@blp.response(200, ConsistencyProof)
def consistency(args):
    """The proof that an earlier tree is a prefix of a later one (RFC 9162 2.1.4)."""
    return _checkpoints().consistency(args["first"], args["second"])
