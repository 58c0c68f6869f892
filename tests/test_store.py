"""The event store on SQLite and PostgreSQL: the reject table of SPEC 3.3 (each row writes
nothing), idempotency (3.4), concurrency, atomic batches, gap-free positions (3.5), and the
append-only triggers."""

from __future__ import annotations

import itertools
import threading
import time
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from ledger.errors import Conflict, Forbidden, Invalid, NotFound, TooLarge, Unauthenticated
from ledger.events import parse_post
from ledger.parties import PartyRegistry
from ledger.services import Ledger
from ledger.store import PART_EVENTS
from tests.conftest import Clock, fresh_postgres, fresh_sqlite, settings_for
from tests.helpers import declared, event, parties, post, received, registered, shipped, unique


@pytest.fixture
def cast(ledger):
    return parties(ledger)


def snapshot(ledger) -> tuple:
    """Everything an append can write, so a rejection can be shown to write nothing."""
    with ledger.engine.connect() as conn:
        return tuple(
            conn.execute(text(f"SELECT * FROM {table} ORDER BY 1, 2")).fetchall()
            for table in ("events", "log_head", "batches", "holdings", "shipments", "lineage", "batch_access", "voids")
        )


def rejected(ledger, error_type, actor, *raw_events):
    before = snapshot(ledger)
    with pytest.raises(error_type) as caught:
        post(ledger, actor, *raw_events)
    assert snapshot(ledger) == before, "a rejected post must write nothing"
    return caught.value


def post_at_once(ledger, actor, posts: dict[str, list[dict]], expected: type[Exception]) -> dict:
    """Each post from a thread of its own, released together so that they share group commits;
    returns each one's result, or its error of the expected kind."""
    results: dict = {}
    barrier = threading.Barrier(len(posts))

    def poster(name, raws):
        barrier.wait()
        try:
            results[name] = post(ledger, actor, *raws)
        except expected as error:
            results[name] = error

    threads = [threading.Thread(target=poster, args=item) for item in posts.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_a_registration_then_shipment_and_receipt_move_holdings(ledger, cast):
    batch = unique()
    first = post(ledger, cast["maker"], registered(batch, "1000"))
    assert first.created and first.receipts[0]["position"] == 1 and first.receipts[0]["version"] == 1
    post(ledger, cast["maker"], shipped(batch, "BL-1", "mumbai-imports", "250"))
    post(ledger, cast["importer"], received(batch, "BL-1", "249.5"))
    with ledger.engine.connect() as conn:
        held = dict(conn.execute(text("SELECT party_id, mass_mg FROM holdings WHERE batch_id = :b"), {"b": batch}).all())
    assert held == {"baotou-magnets": 750_000_000, "mumbai-imports": 249_500_000}
    assert [e.position for e in ledger.store.feed()] == [1, 2, 3]
    assert [e.version for e in ledger.store.stream(batch)] == [1, 2, 3]


# --- the reject table ---------------------------------------------------------------------


def test_401_for_no_unknown_or_revoked_keys(ledger, cast):
    party, key = ledger.parties.register("key-holder", "Key Holder", "IN", "partner")
    assert ledger.parties.authenticate(key.api_key) == party
    for bad in (None, "", "mlk_0000000000000000_" + "A" * 43, key.api_key[:-1] + "x", "Bearer nonsense"):
        with pytest.raises(Unauthenticated):
            ledger.parties.authenticate(bad)
    ledger.parties.revoke_key("key-holder", key.key_id)
    with pytest.raises(Unauthenticated, match="revoked"):
        ledger.parties.authenticate(key.api_key)


def test_a_key_remembered_as_valid_cannot_append_once_revoked_elsewhere(ledger, cast):
    """A process remembers the keys it has verified; a revocation made by another process
    is caught by the append's own transaction, for one event, for a replay, and for a post
    large enough to be sent in parts."""
    _party, key = ledger.parties.register("key-holder", "Key Holder", "CN", "partner")
    credential = ledger.parties.identify(key.api_key)
    replayed = registered(unique())
    post(ledger, credential.party, replayed, key_id=credential.key_id)
    PartyRegistry(ledger.engine).revoke_key("key-holder", key.key_id)
    assert ledger.parties.identify(key.api_key) == credential
    before = ledger.store.count()
    for raw in ([registered(unique())], [replayed], [registered(unique()) for _ in range(250)]):
        with pytest.raises(Unauthenticated, match="revoked"):
            post(ledger, credential.party, *raw, key_id=credential.key_id)
    assert ledger.store.count() == before
    with pytest.raises(Unauthenticated, match="revoked"):
        ledger.parties.identify(key.api_key)
    assert post(ledger, cast["maker"], registered(unique())).created


def test_a_revoked_key_in_a_group_commit_leaves_the_other_posts_written(ledger, cast):
    _party, key = ledger.parties.register("key-holder", "Key Holder", "CN", "partner")
    _party, live_key = ledger.parties.register("live-holder", "Live Holder", "CN", "partner")
    credential, live = ledger.parties.identify(key.api_key), ledger.parties.identify(live_key.api_key)
    PartyRegistry(ledger.engine).revoke_key("key-holder", key.key_id)
    before = ledger.store.count()
    start = threading.Barrier(8)
    outcomes: dict[int, object] = {}

    def poster(index: int) -> None:
        start.wait()
        for round_ in range(10):
            try:
                if index == 0:
                    post(ledger, credential.party, registered(unique()), key_id=credential.key_id)
                elif index % 2:
                    post(ledger, live.party, registered(unique()), key_id=live.key_id)
                else:
                    post(ledger, cast["maker"], registered(unique()))
                outcomes[index * 100 + round_] = "written"
            except Unauthenticated as error:
                outcomes[index * 100 + round_] = error

    threads = [threading.Thread(target=poster, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    refused = {n for n, outcome in outcomes.items() if outcome != "written"}
    assert refused == set(range(10))
    assert ledger.store.count() == before + 70
    assert [e.position for e in ledger.store.feed(after=before, limit=1000)] == list(range(before + 1, before + 71))


def test_an_unrevoked_key_appends_with_its_check_and_a_wrong_secret_is_refused_from_memory(ledger, cast):
    _party, key = ledger.parties.register("key-holder", "Key Holder", "CN", "partner")
    credential = ledger.parties.identify(key.api_key)
    assert post(ledger, credential.party, registered(unique()), key_id=credential.key_id).created
    with pytest.raises(Unauthenticated, match="not valid"):
        ledger.parties.identify(key.api_key[:-1] + ("A" if key.api_key[-1] != "A" else "B"))


@pytest.mark.parametrize("role, event_type", [("auditor", "batch.registered"), ("admin", "batch.registered"),
                                              ("regulator", "batch.registered"), ("regulator", "custody.shipped")])
def test_403_for_roles_that_may_not_post_this(ledger, cast, role, event_type):
    batch = unique()
    post(ledger, cast["maker"], registered(batch))
    raw = registered(unique()) if event_type == "batch.registered" else shipped(batch, "R-1", "pune-motors", "1")
    rejected(ledger, Forbidden, cast[role], raw)


def test_403_for_partners_without_standing(ledger, cast):
    batch = unique()
    post(ledger, cast["maker"], registered(batch), shipped(batch, "S-1", "mumbai-imports", "10"))
    # The consignee can see the batch but does not hold it until it receives it.
    rejected(ledger, Forbidden, cast["importer"], shipped(batch, "S-2", "pune-motors", "1"))
    rejected(ledger, Forbidden, cast["importer"], declared(batch))
    rejected(ledger, Forbidden, cast["importer"], event("batch.consumed", batch, {"mass_kg": "1", "disposition": "consumed"}))
    rejected(ledger, Forbidden, cast["importer"], event("batch.split", batch, {"children": [{"batch_id": unique(), "mass_kg": "1"}]}))
    rejected(ledger, Forbidden, cast["importer"], event("custody.exported", batch, {"to_country": "US", "customs_ref": "C-1"}))
    rejected(ledger, Forbidden, cast["importer"], event("batch.transformed", unique("O"), {
        "inputs": [{"batch_id": batch, "mass_kg": "1"}], "product": "motor", "mass_kg": "5"}))


def test_404_for_missing_or_invisible_batches(ledger, cast):
    rejected(ledger, NotFound, cast["maker"], shipped("NO-SUCH", "S-1", "pune-motors", "1"))
    other = unique()
    post(ledger, cast["maker"], registered(other))
    error = rejected(ledger, NotFound, cast["stranger"], shipped(other, "S-1", "pune-motors", "1"))
    assert "batch_id" in error.errors
    error = rejected(ledger, NotFound, cast["stranger"], event("batch.transformed", unique("O"), {
        "inputs": [{"batch_id": other, "mass_kg": "1"}], "product": "motor", "mass_kg": "5"}))
    assert list(error.errors) == ["data.inputs.0.batch_id"]


def test_422_for_unknown_parties_and_shipments_named_in_data(ledger, cast):
    batch = unique()
    post(ledger, cast["maker"], registered(batch), shipped(batch, "S-1", "mumbai-imports", "10"))
    assert "data.to_party" in rejected(ledger, Invalid, cast["maker"], shipped(batch, "S-2", "nobody-here", "1")).errors
    assert "data.shipment_ref" in rejected(ledger, Invalid, cast["importer"], received(batch, "S-404", "1")).errors
    error = rejected(ledger, Invalid, cast["maker"], declared(batch, permitted_end_users=["pune-motors", "ghost-co"]))
    assert list(error.errors) == ["data.permitted_end_users.1"]
    other = unique()
    post(ledger, cast["maker"], registered(other))
    wrong_batch = rejected(ledger, Invalid, cast["stranger"], received(other, "S-1", "10"))
    assert "data.shipment_ref" in wrong_batch.errors
    assert batch not in wrong_batch.detail + str(wrong_batch.errors), "the other batch's id must not leak"


def test_409_conflicts(ledger, cast):
    batch, child = unique(), unique()
    post(ledger, cast["maker"], registered(batch), shipped(batch, "S-1", "mumbai-imports", "10"),
         event("batch.split", batch, {"children": [{"batch_id": child, "mass_kg": "5"}]}))
    rejected(ledger, Conflict, cast["maker"], registered(batch))
    rejected(ledger, Conflict, cast["maker"], event("batch.split", batch, {"children": [{"batch_id": child, "mass_kg": "1"}]}))
    rejected(ledger, Conflict, cast["maker"], event("batch.transformed", child, {
        "inputs": [{"batch_id": batch, "mass_kg": "1"}], "product": "motor", "mass_kg": "5"}))
    rejected(ledger, Conflict, cast["maker"], shipped(batch, "S-1", "pune-motors", "1"))
    rejected(ledger, Conflict, cast["maker"], {**shipped(batch, "S-9", "pune-motors", "1"), "expected_version": 1})
    rejected(ledger, Conflict, cast["maker"], {**registered(unique()), "expected_version": 1})
    post(ledger, cast["importer"], received(batch, "S-1", "10"))
    rejected(ledger, Conflict, cast["importer"], received(batch, "S-1", "10"))


def test_409_for_the_same_event_id_with_other_content(ledger, cast):
    original = registered(unique(), "10")
    post(ledger, cast["maker"], original)
    rejected(ledger, Conflict, cast["maker"], {**original, "data": {**original["data"], "mass_kg": "11"}})
    rejected(ledger, Conflict, cast["importer"], original)


def test_413_for_more_than_1000_events(ledger, cast):
    with pytest.raises(TooLarge):
        parse_post({"events": [registered(unique()) for _ in range(1001)]}, ledger.store.clock())


def test_a_batch_post_is_atomic_and_names_the_failing_event(ledger, cast):
    batch = unique()
    error = rejected(ledger, NotFound, cast["maker"], registered(batch), shipped("NO-SUCH", "S-1", "pune-motors", "1"))
    assert list(error.errors) == ["events.1.batch_id"]
    assert ledger.store.count() == 0


def test_a_large_post_rejected_after_its_first_parts_were_sent_writes_nothing(ledger, cast):
    """On PostgreSQL the rows of a large post go to the server in parts while the rest is
    decided; a rejection after the first parts must still leave nothing behind."""
    post(ledger, cast["maker"], registered(unique()))
    head = ledger.store.last_position()
    bad_index = 2 * PART_EVENTS + 10
    raws = [registered(unique()) for _ in range(bad_index)] + [shipped("NO-SUCH", "S-1", "pune-motors", "1")]
    error = rejected(ledger, NotFound, cast["maker"], *raws)
    assert list(error.errors) == [f"events.{bad_index}.batch_id"]
    receipts = post(ledger, cast["maker"], *raws[:-1]).receipts
    assert [r["position"] for r in receipts] == list(range(head + 1, head + bad_index + 1))
    assert ledger.store.count() == head + bad_index


def test_a_large_rejected_post_does_not_fail_the_posts_grouped_with_it(ledger, cast):
    bad = [registered(unique()) for _ in range(PART_EVENTS + 5)] + [shipped("NO-SUCH", "S-1", "pune-motors", "1")]
    posts = {"bad": bad, **{f"good-{i}": [registered(unique()) for _ in range(PART_EVENTS + i)] for i in range(4)}}
    results = post_at_once(ledger, cast["maker"], posts, NotFound)
    assert isinstance(results["bad"], NotFound)
    assert all(results[f"good-{i}"].created for i in range(4))
    positions = sorted(r["position"] for i in range(4) for r in results[f"good-{i}"].receipts)
    assert positions == list(range(1, 4 * PART_EVENTS + 7)) == [e.position for e in ledger.store.iter_all()]


@pytest.fixture
def twin(request, database_url, tmp_path, clock):
    """A second ledger on a database of its own, of the same kind as `ledger`'s."""
    if database_url.startswith("sqlite"):
        (tmp_path / "twin").mkdir()
        url, drop = fresh_sqlite(request.getfixturevalue("sqlite_template"), tmp_path / "twin"), None
    else:
        url, drop = fresh_postgres(request.getfixturevalue("postgres_template"))
    opened = Ledger.open(settings_for(url), clock=clock)
    yield opened
    opened.close()
    if drop is not None:
        drop()


def state_tables(ledger) -> tuple:
    with ledger.engine.connect() as conn:
        return tuple(conn.execute(text(f"SELECT * FROM {table} ORDER BY 1, 2")).fetchall()
                     for table in ("batches", "holdings", "shipments", "lineage", "batch_access", "voids"))


def test_a_large_post_leaves_the_state_that_its_events_posted_one_at_a_time_leave(ledger, twin):
    """On PostgreSQL a large post is sent in parts while the rest is decided, and its later
    events change rows that its earlier parts' events changed (batches created in one part and
    shipped from or split again in another, their holdings, their lineage). The state tables
    must end as if every event had been posted alone."""
    older, parent, child_a, child_b = unique(), unique(), unique(), unique()

    def filler():
        return [registered(unique()) for _ in range(PART_EVENTS + 5)]

    posts = [
        ("maker", [registered(older, "500")]),
        ("maker", [registered(parent, "1000"), shipped(older, "S-1", "mumbai-imports", "100"),
                   event("batch.split", parent, {"children": [{"batch_id": child_a, "mass_kg": "300"}]}),
                   *filler(),
                   shipped(child_a, "S-2", "mumbai-imports", "250"), shipped(older, "S-3", "mumbai-imports", "50"),
                   event("batch.split", parent, {"children": [{"batch_id": child_b, "mass_kg": "200"}]}),
                   *filler(),
                   shipped(child_a, "S-4", "mumbai-imports", "50"), shipped(parent, "S-5", "mumbai-imports", "100")]),
        ("importer", [received(child_a, "S-2", "250"), received(older, "S-3", "50")]),
    ]
    cast, twin_cast = parties(ledger), parties(twin)
    for actor, raws in posts:
        post(ledger, cast[actor], *raws)
        for raw in raws:
            post(twin, twin_cast[actor], raw)
    assert state_tables(ledger) == state_tables(twin)
    with ledger.engine.connect() as conn:
        held = set(conn.execute(text("SELECT batch_id, party_id, mass_mg FROM holdings WHERE mass_mg > 0")))
    assert {(parent, "baotou-magnets", 400_000_000), (child_a, "mumbai-imports", 250_000_000),
            (child_b, "baotou-magnets", 200_000_000), (older, "baotou-magnets", 350_000_000)} <= held


def test_expected_version_zero_and_current_are_accepted(ledger, cast):
    batch = unique()
    post(ledger, cast["maker"], {**registered(batch), "expected_version": 0})
    post(ledger, cast["maker"], {**declared(batch), "expected_version": 1})
    assert [e.version for e in ledger.store.stream(batch)] == [1, 2]


# --- idempotency --------------------------------------------------------------------------


def test_replaying_an_event_returns_the_original_receipt_and_writes_nothing(ledger, cast, clock):
    original = registered(unique())
    first = post(ledger, cast["maker"], original)
    clock.advance(minutes=3)
    before = snapshot(ledger)
    again = post(ledger, cast["maker"], original)
    assert not again.created and again.receipts == first.receipts
    assert snapshot(ledger) == before
    # A replay inside a batch with new events: the old receipt, and the new event written.
    extra = declared(original["batch_id"])
    mixed = post(ledger, cast["maker"], original, extra)
    assert mixed.created and mixed.receipts[0] == first.receipts[0] and mixed.receipts[1]["position"] == 2


def test_the_same_event_twice_in_one_post_is_rejected(ledger, cast):
    one = registered(unique())
    assert list(rejected(ledger, Invalid, cast["maker"], one, one).errors) == ["events.1.event_id"]


# --- concurrency and order ----------------------------------------------------------------


def test_sixteen_threads_racing_on_one_stream_lose_nothing_and_write_nothing_twice(ledger, cast):
    batch = unique()
    post(ledger, cast["maker"], registered(batch, "100000"))
    outcomes: list = []
    barrier = threading.Barrier(16)

    def racer(index: int):
        barrier.wait()
        mine = []
        for round_ in range(5):
            plain = declared(batch, licence_id=f"L-{index}-{round_}")
            mine.append(("appended", plain["event_id"], post(ledger, cast["maker"], plain).receipts[0]["version"]))
            seen = len(ledger.store.stream(batch))
            guarded = {**declared(batch, licence_id=f"G-{index}-{round_}"), "expected_version": seen}
            try:
                version = post(ledger, cast["maker"], guarded).receipts[0]["version"]
                mine.append(("won", guarded["event_id"], version))
            except Conflict:
                mine.append(("lost", guarded["event_id"], seen + 1))
        outcomes.extend(mine)

    threads = [threading.Thread(target=racer, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stream = ledger.store.stream(batch)
    by_id = {e.event_id: e.version for e in stream}
    appended = [o for o in outcomes if o[0] == "appended"]
    won = [o for o in outcomes if o[0] == "won"]
    lost = [o for o in outcomes if o[0] == "lost"]
    assert len(appended) == 80 and all(by_id[o[1]] == o[2] for o in appended)
    assert won and all(by_id[o[1]] == o[2] for o in won)
    assert len({o[2] for o in won}) == len(won), "two racers won the same version"
    assert not [o for o in lost if o[1] in by_id], "a loser was written"
    assert [e.version for e in stream] == list(range(1, 2 + len(appended) + len(won)))
    assert [e.position for e in ledger.store.feed(limit=1000)] == list(range(1, len(stream) + 1))


def test_positions_stay_gap_free_across_rejected_attempts(ledger, cast):
    for index in range(6):
        post(ledger, cast["maker"], registered(f"GAP-{index}"))
        with pytest.raises(Conflict):
            post(ledger, cast["maker"], registered(f"GAP-{index}"))
    assert [e.position for e in ledger.store.feed()] == list(range(1, 7))
    assert ledger.store.last_position() == 6


# --- append-only in the database itself ---------------------------------------------------


@pytest.mark.parametrize("statement", ["UPDATE events SET actor = 'mallory'", "DELETE FROM events"])
def test_the_database_refuses_update_and_delete_of_events(ledger, cast, statement):
    post(ledger, cast["maker"], registered(unique()))
    with pytest.raises(DBAPIError, match="append-only"), ledger.engine.begin() as conn:
        conn.execute(text(statement))
    assert ledger.store.count() == 1 and ledger.store.feed()[0].actor == "baotou-magnets"


def test_postgres_refuses_truncate(postgres_url, clock):
    opened = Ledger.open(settings_for(postgres_url), clock=clock)
    with pytest.raises(DBAPIError, match="append-only"), opened.engine.begin() as conn:
        conn.execute(text("TRUNCATE events"))
    opened.close()


@pytest.mark.parametrize("session", [True, False], ids=["append leader", "catch-up step"])
def test_statements_kept_on_their_indexes_are_not_jit_compiled(postgres_url, clock, session):
    """With sequential scans priced out, a scan of a table with no useful index costs more
    than `jit_above_cost`: compiling it took 10-100 ms where it runs in 0.5."""
    from ledger.recorders import recorder_for

    opened = Ledger.open(settings_for(postgres_url), clock=clock)
    with opened.engine.connect() as conn:
        recorder_for(conn).prefer_index_lookups(session=session)
        plan = conn.execute(text("EXPLAIN (ANALYZE, FORMAT JSON) SELECT party_id, country FROM parties")).scalar()
    opened.close()
    assert plan[0]["Plan"]["Total Cost"] > 100_000  # PostgreSQL's default jit_above_cost
    assert "JIT" not in plan[0], plan[0].get("JIT")


def test_reads_run_in_autocommit_from_a_pool_that_closing_the_ledger_closes(postgres_url, clock):
    """Single-statement reads take connections kept in autocommit (no transaction opened
    around a look-up), from a pool of their own: closing the ledger must close it too."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    from ledger.db import reader

    watcher = create_engine(postgres_url, poolclass=NullPool)

    def backends() -> list[str]:
        with watcher.connect() as conn:
            return list(conn.execute(text("SELECT state FROM pg_stat_activity WHERE datname = current_database() "
                                          "AND pid <> pg_backend_pid()")).scalars())

    opened = Ledger.open(settings_for(postgres_url), clock=clock)
    _party, key = opened.parties.register("maker-co", "Maker", "CN", "partner")
    opened.parties.authenticate(key.api_key)
    with reader(opened.engine).connect() as conn:
        assert conn.connection.driver_connection.autocommit
    assert backends() and "idle in transaction" not in backends()
    opened.close()
    deadline = time.monotonic() + 10
    while backends() and time.monotonic() < deadline:  # a closed connection's backend exits on its own time
        time.sleep(0.05)
    assert backends() == []
    watcher.dispose()


def test_the_append_connection_goes_back_to_the_pool_out_of_autocommit(postgres_url, clock):
    """On PostgreSQL the append path runs on a connection in the driver's autocommit mode (it
    sends BEGIN and COMMIT with its statements). A connection it gives back must not take
    that mode to the next user of the pool, whose transaction would then commit statement by
    statement."""
    opened = Ledger.open(settings_for(postgres_url), clock=clock)
    try:
        post(opened, parties(opened)["maker"], registered(unique()))
        opened.store.close()
        held = [opened.engine.connect() for _ in range(opened.engine.pool.size())]
        modes = [conn.connection.driver_connection.autocommit for conn in held]
        for conn in held:
            conn.close()
        assert modes and not any(modes)
    finally:
        opened.close()


# --- several writers on one database (two server processes) --------------------------------


@pytest.fixture
def second(database_url, clock):
    """Another store on the same database, as a second API process would have."""
    opened = Ledger.open(settings_for(database_url), clock=clock)
    yield opened
    opened.close()


def test_writers_in_two_processes_see_each_others_writes(ledger, second, cast):
    batch = unique()
    post(ledger, cast["maker"], registered(batch, "100"))
    # The second store has never seen the batch: it must not assume it absent or stale.
    with pytest.raises(Conflict):
        post(second, cast["maker"], registered(batch))
    post(second, cast["maker"], shipped(batch, "S-1", "mumbai-imports", "40"))
    # The first store's cached holdings are stale now; shipping 70 more must see 60 left, and
    # standing must still hold (60 > 0), then the holding goes to -10 (recorded, not rejected).
    post(ledger, cast["maker"], shipped(batch, "S-2", "mumbai-imports", "70"))
    replay = registered(unique())
    first = post(second, cast["maker"], replay)
    assert post(ledger, cast["maker"], replay).receipts == first.receipts
    with ledger.engine.connect() as conn:
        held = conn.execute(text("SELECT mass_mg FROM holdings WHERE batch_id = :b AND party_id = 'baotou-magnets'"),
                            {"b": batch}).scalar_one()
    assert held == -10_000_000
    assert [e.position for e in ledger.store.feed()] == [1, 2, 3, 4]
    assert [e.version for e in second.store.stream(batch)] == [1, 2, 3]


def test_a_writer_that_finds_the_log_locked_by_another_waits_its_turn(postgres_url, clock):
    """While another connection holds the log's lock, a post on the fast path (the store has
    committed before, so its cache is warm) waits for it, then lands at the next position."""
    opened = Ledger.open(settings_for(postgres_url), clock=clock)
    cast = parties(opened)
    try:
        post(opened, cast["maker"], registered(unique()))
        done: dict = {}
        with opened.engine.connect() as other:
            other.execute(text("SELECT last_position FROM log_head WHERE id = 1 FOR UPDATE"))
            writer = threading.Thread(target=lambda: done.update(result=post(opened, cast["maker"],
                                                                             registered(unique()))))
            writer.start()
            writer.join(timeout=1.0)
            assert writer.is_alive(), "the post must wait for the other writer's lock"
            other.rollback()
        writer.join(timeout=30)
        assert done["result"].receipts[0]["position"] == 2
        assert [e.position for e in opened.store.feed()] == [1, 2]
    finally:
        opened.close()


class TickingClock(Clock):
    """A clock one second later at every reading: a group commit reads it once for its
    recorded_at, so receipts that share one came from one group."""

    def __call__(self):
        self.advance(seconds=1)
        return self.now


def test_posts_queued_while_a_group_waits_for_the_lock_join_that_group(postgres_url):
    """Another process holds the log's lock: the waiting group takes the posts that queued
    meanwhile into its own transaction, instead of leaving each to wait for this commit and
    then pay for one of its own. Each joined post is still decided on its own: a shipment
    sees the holding its batch had, and one of an unknown batch is refused alone."""
    opened = Ledger.open(settings_for(postgres_url), clock=TickingClock())
    cast = parties(opened)
    batch = unique()
    try:
        post(opened, cast["maker"], registered(batch, "100"))
        outcomes: dict[str, object] = {}

        def poster(name: str, raw: dict) -> threading.Thread:
            def run():
                try:
                    outcomes[name] = post(opened, cast["maker"], raw).receipts[0]
                except NotFound as error:
                    outcomes[name] = error
            thread = threading.Thread(target=run)
            thread.start()
            return thread

        with opened.engine.connect() as other:
            other.execute(text("SELECT last_position FROM log_head WHERE id = 1 FOR UPDATE"))
            threads = [poster("first", registered(unique()))]
            threads[0].join(timeout=1.0)
            assert threads[0].is_alive(), "the first post must wait for the other writer's lock"
            threads += [poster(f"new-{i}", registered(unique())) for i in range(2)]
            threads.append(poster("shipment", shipped(batch, "S-1", "mumbai-imports", "40")))
            threads.append(poster("unknown", shipped("NO-SUCH", "S-2", "mumbai-imports", "1")))
            deadline = time.monotonic() + 30
            while len(opened.store._queue) < 4 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert len(opened.store._queue) == 4, "the later posts must be queued behind the waiting group"
            other.rollback()
        for thread in threads:
            thread.join(timeout=30)
        assert isinstance(outcomes.pop("unknown"), NotFound)
        assert sorted(receipt["position"] for receipt in outcomes.values()) == [2, 3, 4, 5]
        assert {receipt["recorded_at"] for receipt in outcomes.values()} == {outcomes["first"]["recorded_at"]}
        assert [e.position for e in opened.store.feed()] == [1, 2, 3, 4, 5]
        with opened.engine.connect() as conn:
            held = dict(conn.execute(text("SELECT party_id, mass_mg FROM holdings WHERE batch_id = :b"),
                                     {"b": batch}).all())
        assert held == {"baotou-magnets": 60_000_000}
    finally:
        opened.close()


def test_a_large_post_rejected_after_losing_a_race_to_another_process_writes_nothing(ledger, second, cast):
    """Another process moved the head, so the first attempt fails on the log's positions and
    the post is decided again under the lock, sending its parts as it goes; its rejection
    after those parts is then decided once more with nothing sent."""
    post(ledger, cast["maker"], registered(unique()))
    post(second, cast["maker"], registered(unique()))
    raws = [registered(unique()) for _ in range(2 * PART_EVENTS + 10)] + [shipped("NO-SUCH", "S-1", "pune-motors", "1")]
    error = rejected(ledger, NotFound, cast["maker"], *raws)
    assert list(error.errors) == [f"events.{2 * PART_EVENTS + 10}.batch_id"]
    assert [r["position"] for r in post(ledger, cast["maker"], registered(unique())).receipts] == [3]


def test_a_wrong_assumption_in_one_post_does_not_fail_the_others_in_its_group(ledger, second, cast):
    taken = unique()
    post(second, cast["maker"], registered(taken))
    posts = {f"new-{i}": [registered(unique())] for i in range(5)}
    posts["taken"] = [registered(taken)]
    results = post_at_once(ledger, cast["maker"], posts, Conflict)
    assert isinstance(results["taken"], Conflict)
    assert all(results[f"new-{i}"].created for i in range(5))
    assert ledger.store.count() == 6


def waiting_on_locks(conn) -> int:
    return conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                             "AND wait_event_type = 'Lock'")).scalar_one()


@pytest.mark.parametrize("cause", ["another process moved the head", "another process holds the lock",
                                   "another process registered one of its batches"])
def test_a_large_post_that_loses_its_fast_path_is_decided_again_and_the_next_posts_are_written(
        postgres_url, clock, cause):
    """A large post on the fast path has sent parts of its writes when the server fails its
    transaction: another process took its positions (perhaps registering one of its batches),
    or holds the log's lock (asked for without waiting). It is decided again under the lock,
    and written whole, or refused whole when one of its batches was taken; the posts after it
    are written at the next positions."""
    first, other = (Ledger.open(settings_for(postgres_url), clock=clock) for _ in range(2))
    cast = parties(first)
    size = PART_EVENTS + 50

    def large_post(*raws):
        return post(first, cast["maker"], *(registered(unique()) for _ in range(size)), *raws)

    try:
        large_post()
        large_post()
        if cause == "another process moved the head":
            post(other, cast["maker"], registered(unique()))
            assert large_post().receipts[0]["position"] == 2 * size + 2
        elif cause == "another process holds the lock":
            done: dict = {}
            writer = threading.Thread(target=lambda: done.update(result=large_post()))
            with other.engine.connect() as holder:
                holder.execute(text("SELECT last_position FROM log_head WHERE id = 1 FOR UPDATE"))
                writer.start()
                deadline = time.monotonic() + 30
                while waiting_on_locks(holder) == 0 and writer.is_alive() and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert writer.is_alive(), "the post must wait for the other writer's lock"
                holder.rollback()
            writer.join(timeout=30)
            assert "result" in done, "the post that waited for the lock failed or never finished"
            assert done["result"].receipts[0]["position"] == 2 * size + 1
        else:
            taken = registered(unique())
            post(other, cast["maker"], taken)
            with pytest.raises(Conflict):
                large_post(dict(taken, event_id=str(uuid.uuid4())))
        written = first.store.count()
        for _ in range(3):
            assert [r["position"] for r in large_post().receipts] == list(range(written + 1, written + size + 1))
            written += size
        assert [event.position for event in first.store.feed(limit=10_000)] == list(range(1, written + 1))
    finally:
        first.close()
        other.close()


FRESH_NODES = itertools.count(1_000_000_000)
TAKEN_NODE = 999_999_999
STREAMED_STEPS = st.lists(st.sampled_from(["insert", "insert or skip", "look up", "insert a taken key"]),
                          min_size=1, max_size=8)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=st.lists(st.tuples(st.booleans(), STREAMED_STEPS), min_size=1, max_size=20))
def test_streamed_transactions_that_fail_leave_the_connection_usable(postgres_url, plan):
    """A large group's transaction runs in psycopg's pipeline mode, and the server fails it
    when another writer holds the log's lock or took a key first (the unlocked path).
    psycopg 3.3 could then keep in its cache a statement that it meant to prepare in that
    pipeline but that the server never prepared, and the connection's next run of it failed
    ("prepared statement "_pg3_2" does not exist", seen once in bench/ingest as a 500 to a
    500-event post). The store sets its connection up with `use_for_appends`. For any
    sequence of transactions, each fails exactly when it should, and each later one runs."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    from ledger.recorders import Write, WriteConflict, recorder_for

    def insert(node: int, keys: tuple[str, ...] = ()) -> Write:
        return Write("merkle_nodes", [{"node": node, "hash": "00" * 32}], keys)

    engine = create_engine(postgres_url, poolclass=NullPool)
    holder = engine.connect()
    try:
        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT")
            recorder = recorder_for(conn)
            recorder.use_for_appends()
            with recorder.transaction(streamed=True):
                recorder.write([insert(TAKEN_NODE, ("node",))])
            for held, steps in [*plan, (False, ["insert", "insert or skip", "look up"])]:
                fails = held or "insert a taken key" in steps
                if held:
                    holder.execute(text("SELECT 1 FROM log_head WHERE id = 1 FOR UPDATE"))
                try:
                    with recorder.transaction(streamed=True):
                        recorder.lock_without_waiting()
                        for step in steps:
                            if step == "look up":
                                recorder.select_many([("merkle_nodes", "node", [1, 2, 3])])
                            elif step == "insert a taken key":
                                recorder.write([insert(TAKEN_NODE)])
                            else:
                                recorder.write([insert(next(FRESH_NODES), ("node",) if step == "insert or skip" else ())])
                    assert not fails, "the transaction should have failed"
                except WriteConflict:
                    assert fails
                finally:
                    if held:
                        holder.rollback()
    finally:
        holder.close()
        engine.dispose()
