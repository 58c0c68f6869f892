from flask import Response, current_app, request

from api.auth import current_party, requires
from api.routes import Blueprint, wait_for_projections
from api.schemas import AuditIn, AuditListArgs, AuditOut, AuditPage, FindingArgs, FindingPage

blp = Blueprint("audits", __name__, url_prefix="/v1", description="Findings and diversion audits")


def _ledger():
    return current_app.extensions["magledger"]


@blp.route("/findings", methods=["GET"])
@requires("regulator", "auditor")
@blp.arguments(FindingArgs, location="query")
@blp.response(200, FindingPage)
def findings(args):
    """Standing findings in position order; `unreceived_shipment` is judged now. A page never
    splits the findings of one position, so it may hold a few more than `limit`."""
    wait_for_projections(args["min_position"])
    items, position = _ledger().diversion.findings(args["rule"], args["category"], args["batch_id"], args["after"],
                                                   args["limit"])
    body = {"items": [f.describe() for f in items],
            "next": items[-1].position if len(items) >= args["limit"] else None, "as_of_position": position}
    return body, 200, {"X-Ledger-Position": str(position)}


@blp.route("/audits", methods=["POST"])
@requires("regulator", "auditor")
@blp.arguments(AuditIn)
@blp.response(202, AuditOut)
def start_audit(args):
    """Queue an audit; a worker runs it (or this request, in the embedded mode)."""
    ledger = _ledger()
    audit = ledger.audits.request(args["scope"], current_party().party_id)
    current_app.extensions["magledger_run_audit"](audit["audit_id"])
    return ledger.audits.get(audit["audit_id"])


@blp.route("/audits", methods=["GET"])
@requires("regulator", "auditor")
@blp.arguments(AuditListArgs, location="query")
@blp.response(200, AuditPage)
def list_audits(args):
    """Audits, newest first, without their finding lists."""
    items = _ledger().audits.list(args["cursor"], args["limit"])
    return {"items": items, "next": items[-1]["cursor"] if len(items) == args["limit"] else None}


@blp.route("/audits/<audit_id>", methods=["GET"])
@requires("regulator", "auditor")
@blp.response(200, AuditOut)
@blp.alt_response(200, description="With `Accept: text/csv`: the audit's findings as CSV.",
                  content_type="text/csv", schema={"type": "string"})
def get_audit(audit_id):
    """An audit's report; `Accept: text/csv` gives its findings as CSV."""
    ledger = _ledger()
    if request.accept_mimetypes.best_match(["application/json", "text/csv"]) == "text/csv":
        return Response(ledger.audits.findings_csv(audit_id), mimetype="text/csv")
    return ledger.audits.get(audit_id)
