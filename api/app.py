"""Application factory."""

from __future__ import annotations

from flask import Flask

from api import limits, metrics, problems, tracing
from api.openapi import METRICS, LedgerApi
from api.routes import audits, batches, events, health, parties
from api.routes import ledger as ledger_routes
from ledger.config import Settings
from ledger.errors import Unavailable
from ledger.events import DATA_SCHEMAS, Envelope
from ledger.services import Ledger


def create_app(ledger: Ledger | None = None, settings: Settings | None = None) -> Flask:
    ledger = ledger or Ledger.open(settings)
    app = Flask("magledger")
    app.config.update(
        API_TITLE="magledger",
        API_VERSION="1",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="docs",
        OPENAPI_SWAGGER_UI_URL="https://cdn.jsdelivr.net/npm/swagger-ui-dist/",
        MAX_CONTENT_LENGTH=ledger.settings.max_body_bytes,
        API_SPEC_OPTIONS={
            "info": {"description": "Tamper-evident custody ledger for rare-earth permanent magnets."},
            "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
            "security": [{"bearer": []}],
        },
    )
    app.extensions["magledger"] = ledger
    api = LedgerApi(app)
    api.spec.components.schema("Event", schema=Envelope)
    for event_type, schema in DATA_SCHEMAS.items():
        api.spec.components.schema(_schema_name(event_type), schema=type(schema))
    api.register_blueprint(health.blp)
    api.register_blueprint(parties.blp)
    api.register_blueprint(events.blp)
    api.register_blueprint(batches.blp)
    api.register_blueprint(ledger_routes.blp)
    api.register_blueprint(audits.blp)
    app.extensions["magledger_after_append"] = _after_append(ledger)
    app.extensions["magledger_run_audit"] = _audit_runner(ledger)
    tracing.install(app)
    problems.install(app)
    limits.install(app, ledger.settings)
    metrics.install(app, ledger)
    api.document_route("metrics", METRICS)
    return app


def _after_append(ledger: Ledger):
    """With Redis, ask the workers to catch the projections up; without it (the embedded
    mode), catch them up in the request, after the commit."""
    if ledger.settings.redis_url:
        from workers.runner import CatchUpNotifier

        return CatchUpNotifier(ledger.settings, list(ledger.projections.projections))
    return ledger.projections.catch_up


def _audit_runner(ledger: Ledger):
    """With Redis, a worker runs the audit; without it, the request does."""
    if ledger.settings.redis_url:
        from redis import RedisError

        from workers.runner import enqueue_audit

        def enqueue(audit_id: str) -> None:
            try:
                enqueue_audit(ledger.settings, audit_id)
            except RedisError as error:
                ledger.audits.fail(audit_id, f"could not be queued: {error}")
                raise Unavailable("The audit could not be queued: the job queue is unreachable. "
                                  "Retry later.") from None

        return enqueue
    return ledger.audits.run


def _schema_name(event_type: str) -> str:
    return "Data" + "".join(part.capitalize() for part in event_type.replace(".", "_").split("_"))
