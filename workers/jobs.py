"""RQ jobs: each opens the ledger once per worker process and calls one core function."""

from __future__ import annotations

import logging
from functools import cache

from ledger.config import Settings
from ledger.services import Ledger
from workers import runner

log = logging.getLogger("magledger.worker")


@cache
def _ledger() -> Ledger:
    return Ledger.open(Settings.from_env())


def catch_up(name: str) -> int:
    """Bring one projection up to the head of the log; returns the events applied."""
    ledger = _ledger()
    # Cleared before the work, so an append arriving meanwhile schedules another run.
    runner.connect(ledger.settings).delete(runner.pending_key(name))
    return ledger.projections.catch_up([name])


def catch_up_all() -> int:
    """The periodic safety net: nothing waits forever on a lost job, and a rebuild whose
    worker died is finished from its checkpoints."""
    projections = _ledger().projections
    applied = projections.catch_up()
    projections.resume_rebuilds()
    return applied


def build(targets: dict[str, int]) -> int:
    """Fold one group of a rebuild's generations up to the head, without serving them (the
    rebuild's last job switches them all); returns how many were still building."""
    return len(_ledger().projections.build(targets))


def finish_rebuild(targets: dict[str, int]) -> dict[str, int]:
    """Build these generations (started by whoever asked) up to the head and serve them."""
    return _ledger().projections.finish_rebuild(targets)


def make_checkpoint() -> int:
    """Sign a tree head at the end of the log (none new if the log has not grown)."""
    return _ledger().checkpoints.make().tree_size


def run_audit(audit_id: str) -> str:
    return _ledger().audits.run(audit_id)["status"]


def scheduled_audit() -> str | None:
    """The periodic incremental audit (LEDGER_AUDIT_CRON), requested under an auditor's
    account as SPEC 1 has it: LEDGER_AUDIT_PARTY, or else the first auditor by id. With no
    auditor registered there is nobody to audit for: the job says so and does nothing."""
    ledger = _ledger()
    auditor = ledger.scheduled_auditor()
    if auditor is None:
        log.warning("scheduled audit skipped: no auditor party is registered (magledger party add ... --role auditor)")
        return None
    return ledger.audits.run(ledger.audits.request("incremental", auditor.party_id)["audit_id"])["audit_id"]
