"""The ledger's components wired together once, for the API, the CLI and the workers alike."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from sqlalchemy import Engine

from ledger.audits import Audits, Diversion
from ledger.checkpoints import Checkpoints, Signer
from ledger.config import ConfigError, Settings
from ledger.db import make_engine, upgrade
from ledger.events import Clock, utc_now
from ledger.parties import Party, PartyRegistry
from ledger.projections import ALL, ProjectionEngine
from ledger.projections.findings import Findings
from ledger.projections.views import Views
from ledger.store import EventStore


@dataclass
class Ledger:
    settings: Settings
    engine: Engine
    store: EventStore
    parties: PartyRegistry
    projections: ProjectionEngine
    views: Views
    clock: Clock = field(default=utc_now)

    @classmethod
    def open(cls, settings: Settings | None = None, clock: Clock = utc_now, migrate: bool = False) -> Ledger:
        settings = settings or Settings.from_env()
        engine = make_engine(settings.database_url)
        if migrate:
            upgrade(engine)
        parties = PartyRegistry(engine, clock)
        store = EventStore(engine, clock, on_revoked_keys=parties.forget)
        projections = ProjectionEngine(engine, store, [*(projection() for projection in ALL),
                                                       Findings(settings.rule_config())], clock,
                                       flush_events=settings.rebuild_flush_events)
        return cls(settings, engine, store, parties, projections, Views(engine), clock)

    @cached_property
    def diversion(self) -> Diversion:
        return Diversion(self.engine, self.projections, self.settings.rule_config(), self.clock)

    @cached_property
    def audits(self) -> Audits:
        return Audits(self.engine, self.projections, self.diversion, self.clock)

    @cached_property
    def checkpoints(self) -> Checkpoints:
        """Opened on first use: it reads, or creates, the signing key."""
        signer = Signer.from_file(self.settings.signing_key_path, self.settings.origin)
        return Checkpoints(self.engine, signer, self.settings.origin, self.clock)

    def scheduled_auditor(self) -> Party | None:
        """The auditor account scheduled audits run under (SPEC 1): LEDGER_AUDIT_PARTY, or
        else the first auditor by id; None when no auditor is registered."""
        name = self.settings.audit_party
        if name is None:
            return next(iter(self.parties.list(limit=1, role="auditor")), None)
        party = self.parties.get(name)
        if party is None or party.role != "auditor":
            raise ConfigError(f"LEDGER_AUDIT_PARTY names {name!r}, which is not a registered auditor")
        return party

    def close(self) -> None:
        self.store.close()
        self.engine.dispose()
