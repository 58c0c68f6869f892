"""The ledger's components wired together once, for the API, the CLI and the workers alike."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from sqlalchemy import Engine

from ledger.audits import Audits, Diversion
from ledger.checkpoints import Checkpoints, Signer
from ledger.config import Settings
from ledger.db import make_engine, upgrade
from ledger.events import Clock, utc_now
from ledger.parties import PartyRegistry
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
        store = EventStore(engine, clock)
        projections = ProjectionEngine(engine, store, [*(projection() for projection in ALL),
                                                       Findings(settings.rule_config())], clock)
        return cls(settings, engine, store, PartyRegistry(engine, clock), projections, Views(engine), clock)

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

    def close(self) -> None:
        self.store.close()
        self.engine.dispose()
