from flask import current_app

from api.auth import READERS, current_party, requires
from api.openapi import ERROR
from api.routes import Blueprint, wait_for_projections
from api.schemas import (
    BatchArgs,
    BatchListArgs,
    BatchPage,
    BatchState,
    EventPage,
    LineageArgs,
    LineageView,
    Provenance,
    StreamArgs,
    Verdict,
)
from ledger.errors import Forbidden, NotFound

blp = Blueprint("batches", __name__, url_prefix="/v1/batches", description="Batches, from the projections")

VERDICT_SCAN_PAGE = 500


def _ledger():
    return current_app.extensions["magledger"]


def _visible(batch_id: str) -> None:
    """A batch the caller may not see answers exactly as one that does not exist."""
    if not _ledger().store.can_see(current_party(), batch_id):
        raise NotFound(f"Batch {batch_id!r} not found.")


def _answer(body: dict):
    return body, 200, {"X-Ledger-Position": str(body["as_of_position"])}


@blp.route("/<path:batch_id>", methods=["GET"])
@requires(*READERS)
@blp.arguments(BatchArgs, location="query")
@blp.response(200, BatchState)
def get_batch(args, batch_id):
    """A batch's state: material, masses, origin, holdings, open shipments, and the
    declarations governing it (its own and those of ancestors above the de minimis share)."""
    _visible(batch_id)
    wait_for_projections(args["min_position"])
    state = _ledger().views.batch(batch_id, _ledger().settings.de_minimis)
    if state is None:
        raise NotFound(f"Batch {batch_id!r} not found (the projections are at "
                       f"{_ledger().projections.position()}; retry with min_position if it is new).")
    verdict = _ledger().diversion.verdict(batch_id)
    return _answer(state | {"verdict": verdict["verdict"], "diverted": verdict["diverted"]})


@blp.route("", methods=["GET"])
@requires("regulator", "auditor")
@blp.arguments(BatchListArgs, location="query")
@blp.response(200, BatchPage)
def list_batches(args):
    """Batches, filtered by current holder, origin country or verdict (regulators and auditors)."""
    wait_for_projections(args["min_position"])
    ledger = _ledger()
    if args["verdict"] is None:
        items, position = ledger.views.batches(holder=args["holder"], country=args["country"],
                                               after=args["cursor"], limit=args["limit"])
    else:
        items, position, cursor = [], 0, args["cursor"]
        while len(items) < args["limit"]:
            page, position = ledger.views.batches(holder=args["holder"], country=args["country"], after=cursor,
                                                  limit=VERDICT_SCAN_PAGE)
            keep = set(ledger.diversion.with_verdict([b["batch_id"] for b in page], args["verdict"]))
            items += [b for b in page if b["batch_id"] in keep]
            if len(page) < VERDICT_SCAN_PAGE:
                break
            cursor = page[-1]["batch_id"]
        items = items[:args["limit"]]
    return _answer({"items": items, "next": items[-1]["batch_id"] if len(items) == args["limit"] else None,
                    "as_of_position": position})


@blp.route("/<path:batch_id>/events", methods=["GET"])
@requires(*READERS)
@blp.arguments(StreamArgs, location="query")
@blp.response(200, EventPage)
def batch_events(args, batch_id):
    """The batch's own stream in version order, paged by version (`after`, `next`). A batch
    made by a split has an empty stream until something happens to it."""
    _visible(batch_id)
    events = _ledger().store.stream(batch_id, after_version=args["after"], limit=args["limit"])
    position = _ledger().store.last_position()
    return ({"items": [e.envelope() for e in events],
             "next": events[-1].version if len(events) == args["limit"] else None},
            200, {"X-Ledger-Position": str(position)})


@blp.route("/<path:batch_id>/provenance", methods=["GET"])
@requires(*READERS)
@blp.arguments(BatchArgs, location="query")
@blp.response(200, Provenance)
def provenance(args, batch_id):
    """Upstream lineage to the origin batches with shares and controlled fraction, the
    custody chain, and the declarations that govern the batch."""
    _visible(batch_id)
    wait_for_projections(args["min_position"])
    view = _ledger().views.provenance(batch_id, _ledger().settings.de_minimis)
    if view is None:
        raise NotFound(f"Batch {batch_id!r} not found.")
    return _answer(view)


@blp.route("/<path:batch_id>/diversion", methods=["GET"])
@requires("regulator", "auditor")
@blp.arguments(BatchArgs, location="query")
@blp.response(200, Verdict)
def diversion(args, batch_id):
    """The verdict on a batch and on every descendant in which its share is at least the de
    minimis threshold, with the findings that stand against them."""
    _visible(batch_id)
    wait_for_projections(args["min_position"])
    return _answer(_ledger().diversion.verdict(batch_id))


@blp.route("/<path:batch_id>/lineage", methods=["GET"])
@requires(*READERS)
@blp.arguments(LineageArgs, location="query")
@blp.response(200, LineageView)
@blp.alt_response(403, response=ERROR[403])
def lineage(args, batch_id):
    """Parents and children around a batch; partners may look upstream only."""
    _visible(batch_id)
    if current_party().role == "partner" and args["direction"] != "up":
        raise Forbidden("Partners may read lineage upstream only (direction=up).")
    wait_for_projections(args["min_position"])
    view = _ledger().views.lineage(batch_id, args["direction"], args["depth"])
    if view is None:
        raise NotFound(f"Batch {batch_id!r} not found.")
    return _answer(view)
