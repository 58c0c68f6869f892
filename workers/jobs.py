"""RQ jobs: each opens the ledger once per worker process and calls one core function."""

from __future__ import annotations

from functools import cache

from ledger.config import Settings
from ledger.services import Ledger
from workers import runner


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


def finish_rebuild(targets: dict[str, int]) -> dict[str, int]:
    """Build these generations (started by whoever asked) up to the head and serve them."""
    return _ledger().projections.finish_rebuild(targets)


def make_checkpoint() -> int:
    """Sign a tree head at the end of the log (none new if the log has not grown)."""
    return _ledger().checkpoints.make().tree_size


SCHEDULER = "scheduler"
"""The name scheduled audits are requested under; they run with an auditor's reach."""


def run_audit(audit_id: str) -> str:
    return _ledger().audits.run(audit_id)["status"]


def scheduled_audit() -> str:
    """The periodic incremental audit (LEDGER_AUDIT_CRON), under the scheduler's name."""
    audits = _ledger().audits
    return audits.run(audits.request("incremental", SCHEDULER)["audit_id"])["audit_id"]
