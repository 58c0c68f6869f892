import logging

from flask import current_app
from sqlalchemy.exc import SQLAlchemyError

from api.routes import Blueprint
from api.schemas import Health, Readiness

blp = Blueprint("health", __name__, description="Liveness and readiness")
log = logging.getLogger("magledger.api")


@blp.route("/healthz")
@blp.response(200, Health)
@blp.doc(security=[])
def healthz():
    """The process is up (it does not check the database; /readyz does)."""
    return {"status": "ok"}


@blp.route("/readyz")
@blp.response(200, Readiness)
@blp.alt_response(503, schema=Readiness, description="The database is not reachable.",
                  headers={"Retry-After": {"description": "seconds", "schema": {"type": "integer"}}})
@blp.doc(security=[])
def readyz():
    """Whether this process can serve: the database answers (else 503). Redis, when it is
    configured, and how far the projections are behind the log are reported but not failed
    on: appends still work without them, so a load balancer should keep sending traffic. A
    Redis that does not answer makes the status `degraded`."""
    ledger = current_app.extensions["magledger"]
    checks, body = {}, {}
    try:
        head = ledger.store.last_position()
        body["projection_lag"] = max(head - ledger.projections.position(), 0)
        body["head"] = head
        checks["database"] = "ok"
    except SQLAlchemyError as error:
        log.warning("readiness: database unreachable: %s", error)
        checks["database"] = "unreachable"
    if ledger.settings.redis_url:
        from redis import RedisError

        from workers.runner import connect

        try:
            connect(ledger.settings).ping()
            checks["redis"] = "ok"
        except RedisError as error:
            log.warning("readiness: redis unreachable: %s", error)
            checks["redis"] = "unreachable"
    if checks["database"] != "ok":
        return {"status": "not ready", "checks": checks, **body}, 503, {"Retry-After": "1"}
    status = "ready" if all(state == "ok" for state in checks.values()) else "degraded"
    return {"status": status, "checks": checks, **body}, 200
