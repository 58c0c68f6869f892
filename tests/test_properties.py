"""Property: for any mix of valid and invalid posts, the log holds exactly the valid ones,
in the order they were accepted, with positions 1..n and per-stream versions 1..k."""

from __future__ import annotations

import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.errors import LedgerError
from ledger.services import Ledger
from tests.conftest import fresh_sqlite, settings_for
from tests.helpers import declared, event, post, registered, shipped

BATCHES = ["B-1", "B-2", "B-3"]

actions = st.lists(st.tuples(
    st.sampled_from(["register", "declare", "ship", "bad-mass", "unknown-batch", "wrong-version", "replay",
                     "stranger-declares", "batch-with-bad-tail"]),
    st.sampled_from(BATCHES),
), min_size=1, max_size=25)


@given(actions)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_the_log_holds_exactly_the_valid_posts_in_order(sqlite_template, tmp_path, plan):
    ledger = Ledger.open(settings_for(fresh_sqlite(sqlite_template, tmp_path)))
    maker, _ = ledger.parties.register(f"maker-{uuid.uuid4().hex[:6]}", "Maker", "CN", "partner")
    stranger, _ = ledger.parties.register(f"other-{uuid.uuid4().hex[:6]}", "Other", "US", "partner")
    prefix = uuid.uuid4().hex[:6]
    accepted: list[str] = []
    posted: list[dict] = []
    for action, name in plan:
        batch = f"{prefix}-{name}"
        if action == "register":
            raws = [registered(batch)]
        elif action == "declare":
            raws = [declared(batch)]
        elif action == "ship":
            raws = [shipped(batch, f"S-{uuid.uuid4().hex[:8]}", stranger.party_id, "1")]
        elif action == "bad-mass":
            raws = [registered(batch, mass="0")]
        elif action == "unknown-batch":
            raws = [declared(f"{batch}-missing")]
        elif action == "wrong-version":
            raws = [{**declared(batch), "expected_version": 999}]
        elif action == "replay":
            raws = [posted[-1]] if posted else [event("no.such.type", batch, {})]
        elif action == "stranger-declares":
            raws = [declared(batch)]
        else:
            raws = [declared(batch), declared(f"{batch}-missing")]
        actor = stranger if action == "stranger-declares" else maker
        try:
            result = post(ledger, actor, *raws)
        except LedgerError:
            continue
        for raw, receipt in zip(raws, result.receipts):
            if raw["event_id"] not in accepted:
                accepted.append(raw["event_id"])
        posted.extend(raws)
    log = list(ledger.store.iter_all())
    assert [e.event_id for e in log] == accepted
    assert [e.position for e in log] == list(range(1, len(log) + 1))
    for name in BATCHES:
        versions = [e.version for e in log if e.batch_id == f"{prefix}-{name}"]
        assert versions == list(range(1, len(versions) + 1))
    ledger.close()
