"""Projections (SPEC 6) on SQLite and PostgreSQL: what they show, that rebuilding gives the
same rows as catching up, and that readers never see a half-built generation."""

from __future__ import annotations

import gc
import time
import weakref
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from ledger.projections import BatchState
from ledger.projections.findings import FactSource, read_serving_shares
from ledger.rules import RuleConfig
from ledger.schema import pj_shares, projection_state
from ledger.services import Ledger
from tests.conftest import fresh_sqlite, settings_for
from tests.helpers import declared, event, parties, post, received, registered, shipped, unique


def story(ledger, cast):
    """Magnets registered in China, declared for India, split, half shipped and received in
    India, part of it made into motors; returns the ids."""
    magnet, half, rest, ref, motor = unique("MAG"), unique("H"), unique("H"), unique("S"), unique("MOT")
    declaration = declared(magnet, countries=("IN",))
    post(ledger, cast["maker"], registered(magnet, "1000"), declaration,
         event("batch.split", magnet, {"children": [{"batch_id": half, "mass_kg": "400"},
                                                    {"batch_id": rest, "mass_kg": "600"}]}),
         shipped(half, ref, "pune-motors", "400"))
    post(ledger, cast["motors"], received(half, ref, "399.5"))
    post(ledger, cast["motors"], event("batch.transformed", motor, {
        "inputs": [{"batch_id": half, "mass_kg": "8"}], "product": "traction motor", "mass_kg": "400"}))
    return {"magnet": magnet, "half": half, "rest": rest, "ref": ref, "motor": motor,
            "declaration": declaration["event_id"]}


def void_the_making_of_a_motor_built_into_a_car(ledger, cast) -> None:
    """A story whose motor goes into a car, then the motor's transformation is voided: the
    car's shares must be derived again without it."""
    ids = story(ledger, cast)
    made = ledger.store.stream(ids["motor"])[0]
    post(ledger, cast["motors"], event("batch.transformed", unique("CAR"), {
        "inputs": [{"batch_id": ids["motor"], "mass_kg": "40"}], "product": "car", "mass_kg": "800"}))
    post(ledger, cast["motors"], event("event.voided", ids["motor"], {
        "voided_event_id": made.event_id, "reason": "did_not_occur"}))


def test_batch_state_shows_masses_holdings_shipments_and_declarations(ledger):
    cast = parties(ledger)
    ids = story(ledger, cast)
    ledger.projections.catch_up()
    magnet = ledger.views.batch(ids["magnet"], Decimal("0.001"))
    assert magnet["kind"] == "registered" and magnet["origin_country"] == "CN" and magnet["registrant"] == "baotou-magnets"
    assert magnet["initial_mass_kg"] == "1000" and magnet["mass_kg"] == "0" and magnet["status"] == "depleted"
    assert [d["licence_id"] for d in magnet["declarations"]] == ["LIC-1"]
    half = ledger.views.batch(ids["half"], Decimal("0.001"))
    assert half["kind"] == "split" and half["material"] == "NdFeB N52"
    assert [(d["batch_id"], d["share"]) for d in half["declarations"]] == [(ids["magnet"], "1")], \
        "the magnets' declaration governs the split child"
    assert half["holdings"] == [{"party_id": "pune-motors", "mass_kg": "391.5"}] and half["mass_kg"] == "391.5"
    motor = ledger.views.batch(ids["motor"], Decimal("0.001"))
    assert motor["kind"] == "transformed" and motor["origin_country"] == "IN" and motor["mass_kg"] == "400"
    assert motor["as_of_position"] == ledger.store.last_position()


def test_open_shipments_and_voids(ledger):
    cast = parties(ledger)
    batch, ref = unique(), unique("S")
    declaration = declared(batch)
    post(ledger, cast["maker"], registered(batch, "10"), declaration, shipped(batch, ref, "mumbai-imports", "4"))
    ledger.projections.catch_up()
    state = ledger.views.batch(batch, Decimal("0.001"))
    assert [s["shipment_ref"] for s in state["open_shipments"]] == [ref]
    assert state["open_shipments"][0]["destination_country"] == "IN"
    post(ledger, cast["maker"], event("event.voided", batch, {"voided_event_id": declaration["event_id"],
                                                             "reason": "incorrect_data"}))
    receipt = received(batch, ref, "4")
    post(ledger, cast["importer"], receipt)
    ledger.projections.catch_up()
    state = ledger.views.batch(batch, Decimal("0.001"))
    assert state["declarations"] == [] and state["open_shipments"] == []
    post(ledger, cast["importer"], event("event.voided", batch, {"voided_event_id": receipt["event_id"],
                                                                "reason": "did_not_occur"}))
    ledger.projections.catch_up()
    state = ledger.views.batch(batch, Decimal("0.001"))
    assert [s["shipment_ref"] for s in state["open_shipments"]] == [ref]
    assert state["holdings"] == [{"party_id": "baotou-magnets", "mass_kg": "6"}]


def test_lineage_up_and_down_with_fractions(ledger):
    cast = parties(ledger)
    ids = story(ledger, cast)
    ledger.projections.catch_up()
    up = ledger.views.lineage(ids["motor"], "up", 10)
    assert {(n["batch_id"], n["depth"]) for n in up["nodes"]} == {(ids["motor"], 0), (ids["half"], -1),
                                                                  (ids["magnet"], -2)}
    fractions = {(e["parent"], e["child"]): e["fraction"] for e in up["edges"]}
    assert fractions == {(ids["magnet"], ids["half"]): "1", (ids["half"], ids["motor"]): "0.02"}
    down = ledger.views.lineage(ids["magnet"], "down", 1)
    assert {n["batch_id"] for n in down["nodes"]} == {ids["magnet"], ids["half"], ids["rest"]}
    assert ledger.views.lineage("NO-SUCH", "up", 3) is None


def test_rebuild_gives_the_same_rows_and_readers_keep_the_serving_generation(ledger):
    cast = parties(ledger)
    ids = story(ledger, cast)
    ledger.projections.catch_up()
    digests = {name: ledger.projections.digest(name) for name in ledger.projections.projections}
    before = ledger.views.batch(ids["half"], Decimal("0.001"))
    # A rebuild that has applied only part of the log must not be visible to readers.
    engine = ledger.projections
    engine.batch_size = 2
    building = engine._create("batch_state", "building")
    engine._step([("batch_state", building)])
    assert ledger.views.batch(ids["half"], Decimal("0.001")) == before
    # Running the rebuild again resumes the interrupted generation, then switches over.
    assert engine.rebuild(["batch_state"]) == {"batch_state": building}
    assert ledger.views.batch(ids["half"], Decimal("0.001")) == before
    engine.rebuild()
    assert {name: engine.digest(name) for name in engine.projections} == digests


def test_a_rebuild_reads_the_database_again_once_another_process_has_advanced_its_generation(database_url, clock):
    first, second = (Ledger.open(settings_for(database_url), clock=clock) for _ in range(2))
    cast = parties(first)
    for _ in range(3):
        story(first, cast)
    first.projections.catch_up()
    digests = {name: first.projections.digest(name) for name in first.projections.projections}
    first.projections.batch_size = second.projections.batch_size = 3
    targets = first.projections.start_rebuild()
    interleaved = []

    def other_process_takes_some_steps(progress):
        if not interleaved:
            interleaved.append(second.projections._step(list(targets.items())))
            interleaved.append(second.projections._step(list(targets.items())))

    first.projections.finish_rebuild(targets, on_progress=other_process_takes_some_steps)
    assert all(step.applied for step in interleaved)
    assert {name: first.projections.digest(name) for name in first.projections.projections} == digests
    first.close()
    second.close()


def test_a_rebuild_splits_into_groups_of_even_cost_each_projection_in_one(ledger):
    engine = ledger.projections
    names = list(engine.projections)
    assert engine.rebuild_groups(names, 1) == [names]
    for processes in range(2, 8):
        groups = engine.rebuild_groups(names, processes)
        assert len(groups) == min(processes, len(names))
        assert sorted(name for group in groups for name in group) == sorted(names)
        assert all(group == [n for n in names if n in group] for group in groups), "kept in the engine's order"
    costs = [sum(engine.projections[n].rebuild_cost for n in group) for group in engine.rebuild_groups(names, 2)]
    total = sum(engine.projections[n].rebuild_cost for n in names)
    # No group carries more than half the work plus the largest single projection (LPT's bound).
    assert max(costs) <= total / 2 + max(engine.projections[n].rebuild_cost for n in names) / 2


def test_a_rebuild_split_across_processes_gives_the_rows_of_one_in_a_single_process(postgres_url, clock):
    """The projections fold in two processes, findings in one of them; the result must be
    what a single process builds, findings included."""
    ledger = Ledger.open(settings_for(postgres_url), clock=clock)
    cast = parties(ledger)
    for _ in range(3):
        ids = story(ledger, cast)
        # The motors leave India for the United States: a diversion of declared magnets.
        post(ledger, cast["motors"], event("custody.exported", ids["motor"], {"to_country": "US",
                                                                            "customs_ref": unique("SB")}))
    ledger.projections.catch_up()
    digests = {name: ledger.projections.digest(name) for name in ledger.projections.projections}
    assert ledger.diversion.findings(limit=100)[0], "the log must give findings for this test to mean anything"
    engine = ledger.projections
    engine.batch_size = 4
    groups = engine.rebuild_groups(engine.projections, 2)
    assert len(groups) == 2 and any("findings" in group and len(group) > 1 for group in groups)
    progress = []
    serving = engine.rebuild(processes=2, on_progress=progress.append)
    assert {name: engine.digest(name) for name in engine.projections} == digests
    assert all(engine._status(name, generation) == "serving" for name, generation in serving.items())
    # The other processes folded the whole log: this one applied nothing itself.
    assert progress and progress[-1].position == ledger.store.last_position()
    assert all(step.applied == 0 for step in progress)
    ledger.close()


def test_a_rebuild_before_anything_was_built_judges_with_the_shares_and_declarations(database_url, clock):
    """The findings read the serving rows of the shares and the declarations; on a ledger
    whose projections were never built there are none yet, and a rebuild must not judge
    without them (it once found no diversion here)."""
    ledger = Ledger.open(settings_for(database_url), clock=clock)
    cast = parties(ledger)
    ids = story(ledger, cast)
    post(ledger, cast["motors"], event("custody.exported", ids["motor"], {"to_country": "US",
                                                                        "customs_ref": unique("SB")}))
    serving = ledger.projections.rebuild()
    assert set(serving) == set(ledger.projections.projections)
    assert {f.rule for f in ledger.diversion.findings(limit=100)[0]} == {"destination_not_permitted"}
    digest = ledger.projections.digest("findings")
    ledger.projections.rebuild()
    assert ledger.projections.digest("findings") == digest
    ledger.close()


def test_a_findings_build_judges_what_arrives_after_the_shares_it_holds_with_the_shares_it_brings(ledger):
    """A build of the findings from position 0 reads the serving shares once, as of the
    position they had reached. Meanwhile a motor is made from declared magnets and exported
    to the United States, and the making of an earlier, exported motor is voided: the first
    is a diversion only through shares made after those held, the second no longer is one
    only through shares changed since."""
    cast = parties(ledger)
    ids = story(ledger, cast)
    post(ledger, cast["motors"], event("custody.exported", ids["motor"], {"to_country": "US", "customs_ref": unique("SB")}))
    story(ledger, cast)
    engine = ledger.projections
    engine.catch_up()
    assert _diverted(ledger, ids["motor"])
    engine.batch_size = 3
    position = ledger.store.last_position()
    new_motor, arrived = unique("MOT"), []

    def events_arrive(step):
        if arrived:
            return
        arrived.append(step.position)
        post(ledger, cast["motors"], event("batch.transformed", new_motor, {
            "inputs": [{"batch_id": ids["half"], "mass_kg": "4"}], "product": "traction motor", "mass_kg": "200"}))
        post(ledger, cast["motors"], event("custody.exported", new_motor, {"to_country": "US",
                                                                          "customs_ref": unique("SB")}))
        post(ledger, cast["motors"], event("event.voided", ids["motor"], {
            "voided_event_id": ledger.store.stream(ids["motor"])[0].event_id, "reason": "did_not_occur"}))
        engine.catch_up(["batch_state", "shares"])

    engine.rebuild(["findings"], on_progress=events_arrive)
    assert arrived[0] < position, "the events arrived in the middle of the build"
    assert _diverted(ledger, new_motor) and not _diverted(ledger, ids["motor"])
    rebuilt = engine.digest("findings")
    engine.rebuild(["findings"])
    assert engine.digest("findings") == rebuilt


def test_the_shares_a_findings_build_holds_are_those_its_steps_would_read(ledger):
    cast = parties(ledger)
    ids = story(ledger, cast)
    void_the_making_of_a_motor_built_into_a_car(ledger, cast)
    ledger.projections.catch_up()
    position = ledger.store.last_position()
    with ledger.engine.connect() as conn:
        held = read_serving_shares(conn)
        batches = [*(ids[k] for k in ("magnet", "half", "rest", "motor")),
                   *conn.execute(select(pj_shares.c.batch_id)).scalars()]
        read = FactSource(conn, RuleConfig()).shares(batches, position)
        assert held.position == position
        assert FactSource(conn, RuleConfig(), held=held).shares(batches, position) == read
        assert read[ids["motor"]] and not read[ids["magnet"]]
        assert read_serving_shares(conn, limit=1) is None, "more shares than it may hold"


def _diverted(ledger, batch_id: str) -> bool:
    return "destination_not_permitted" in {f.rule for f in ledger.diversion.findings(batch_id=batch_id)[0]}


def test_a_long_catch_up_first_refreshes_the_statistics_missing_or_stale(database_url, clock):
    ledger = Ledger.open(settings_for(database_url), clock=clock)
    cast = parties(ledger)
    story(ledger, cast)
    engine = ledger.projections
    engine.batch_size, engine.long_fold = 2, 3
    if ledger.engine.dialect.name == "sqlite":
        assert engine.refresh_statistics() == []
        engine.catch_up()
        return

    def analyzed_at(table):
        with ledger.engine.connect() as conn:
            return conn.exec_driver_sql("SELECT last_analyze FROM pg_stat_user_tables WHERE relname = %s",
                                        (table,)).scalar()

    # A server process reports its changes when it exits, or within seconds when idle.
    ledger.store.close()
    deadline = time.monotonic() + 30
    while not _live_rows(ledger, "events"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert analyzed_at("events") is None
    engine.catch_up()
    assert analyzed_at("events") is not None
    assert "events" not in engine.refresh_statistics()
    ledger.close()


def _live_rows(ledger, table: str) -> int:
    with ledger.engine.connect() as conn:
        return conn.exec_driver_sql("SELECT n_live_tup FROM pg_stat_user_tables WHERE relname = %s", (table,)).scalar()


def test_the_rules_read_the_generation_serving_when_they_read_not_one_named_before_a_switch(ledger):
    """A `findings` step reads the shares and declarations over several statements; a rebuild
    that switches between two of them deletes the generation it retired, and the step must
    then read the new one, not nothing."""
    cast = parties(ledger)
    ids = story(ledger, cast)
    ledger.projections.catch_up()
    position = ledger.store.last_position()
    with ledger.engine.connect() as conn:
        source = FactSource(conn, RuleConfig())
        before = source.facts([ids["motor"]], position)[ids["motor"]]
        conn.commit()
        ledger.projections.rebuild(["batch_state", "shares"])
        after = source.facts([ids["motor"]], position)[ids["motor"]]
    assert [d.event_id for d in before.declarations] == [ids["declaration"]]
    assert after.declarations == before.declarations
    assert after.controlled_share == before.controlled_share > 0


def test_a_rebuild_leaves_no_row_and_no_state_of_the_generations_it_retired(ledger):
    cast = parties(ledger)
    story(ledger, cast)
    ledger.projections.catch_up()
    engine = ledger.projections
    retired = {name: engine._state(name, "serving").generation for name in engine.projections}
    serving = engine.rebuild()
    with ledger.engine.connect() as conn:
        for name, projection in engine.projections.items():
            assert serving[name] != retired[name]
            for table in projection.tables:
                left = conn.execute(select(table.c.generation).where(table.c.generation == retired[name])).first()
                assert left is None, f"{table.name} keeps rows of {name}'s retired generation"
            assert conn.execute(select(projection_state.c.status).where(
                projection_state.c.name == name)).scalars().all() == ["serving"]


def test_a_build_from_position_0_keeps_the_collector_paused_between_its_steps_and_resumes_it(ledger):
    """A build keeps what it makes until it ends; the collection that ran whenever a step's
    own pause ended cost a tenth of a million-event rebuild."""
    cast = parties(ledger)
    for _ in range(3):
        post(ledger, cast["maker"], registered(unique("MAG"), "10"))
    engine = ledger.projections
    engine.catch_up()
    engine.batch_size = 1
    between_steps = []
    was = gc.isenabled()
    gc.enable()
    try:
        engine.rebuild(["batch_state"], on_progress=lambda step: between_steps.append(gc.isenabled()))
        assert len(between_steps) > 2 and not any(between_steps)
        assert gc.isenabled()
    finally:
        if not was:
            gc.disable()


def test_a_build_lets_go_of_every_memory_before_the_collector_resumes(ledger, monkeypatch):
    """Resumed with a memory still alive, the collector's first pass walked all of it: 2.2 s
    of a million-event build of the findings."""
    cast = parties(ledger)
    story(ledger, cast)
    engine = ledger.projections
    engine.catch_up()
    memories = []
    for projection in engine.projections.values():
        def remembered(make=projection.memory):
            memory = make()
            if memory is not None:
                memories.append(weakref.ref(memory))
            return memory
        monkeypatch.setattr(projection, "memory", remembered)
    alive_when_resumed = []
    enable = gc.enable
    monkeypatch.setattr(gc, "enable", lambda: (alive_when_resumed.append(
        [ref() is not None for ref in memories]), enable()))
    was = gc.isenabled()
    gc.enable()
    try:
        engine.rebuild()
    finally:
        if not was:
            gc.disable()
    assert len(memories) == len(engine.projections)
    assert alive_when_resumed and not any(any(alive) for alive in alive_when_resumed)


def test_two_processes_that_both_find_no_serving_generation_end_with_one(database_url, clock):
    """Two servers' first catch-ups after their first appends: each found nothing serving and
    made a generation; the database must keep one, and the second must serve the first's."""
    first, second = (Ledger.open(settings_for(database_url), clock=clock) for _ in range(2))
    made = first.projections._create("shares", "serving")
    assert second.projections._create("shares", "serving") == made
    building = first.projections._create("shares", "building")
    assert second.projections._create("shares", "building") == building
    with first.engine.connect() as conn:
        statuses = conn.execute(select(projection_state.c.status).where(projection_state.c.name == "shares")).scalars()
        assert sorted(statuses) == ["building", "serving"]
    first.close()
    second.close()


def test_a_changed_projection_version_is_rebuilt_before_it_serves(ledger):
    cast = parties(ledger)
    ids = story(ledger, cast)
    ledger.projections.catch_up()
    digest = ledger.projections.digest("batch_state")

    class NextBatchState(BatchState):
        version = BatchState.version + 1

    ledger.projections.projections["batch_state"] = NextBatchState()
    ledger.projections.catch_up(["batch_state"])
    assert ledger.projections.digest("batch_state") == digest
    assert ledger.views.batch(ids["motor"], Decimal("0.001"))["mass_kg"] == "400"


def test_a_voided_transformation_changes_the_shares_downstream(ledger):
    cast = parties(ledger)
    magnet, other, motor, vehicle = unique("MAG"), unique("OTH"), unique("MOT"), unique("CAR")
    post(ledger, cast["maker"], registered(magnet, "10"), registered(other, "100"))
    made = event("batch.transformed", motor, {"inputs": [{"batch_id": magnet, "mass_kg": "5"},
                                                         {"batch_id": other, "mass_kg": "45"}],
                                              "product": "motor", "mass_kg": "50"})
    post(ledger, cast["maker"], made)
    post(ledger, cast["maker"], event("batch.transformed", vehicle, {
        "inputs": [{"batch_id": motor, "mass_kg": "50"}], "product": "vehicle", "mass_kg": "500"}))
    ledger.projections.catch_up()

    def shares(batch_id):
        return {n["batch_id"]: n["share"] for n in ledger.views.provenance(batch_id, Decimal("0.001"))["upstream"]}

    assert shares(vehicle) == {vehicle: "1", motor: "0.1", magnet: "0.01", other: "0.09"}
    post(ledger, cast["maker"], event("event.voided", motor, {"voided_event_id": made["event_id"],
                                                             "reason": "incorrect_data"}))
    ledger.projections.catch_up()
    assert shares(motor) == {motor: "1"}
    assert shares(vehicle) == {vehicle: "1", motor: "0.1"}, "the vehicle no longer carries the magnets"
    digests = {name: ledger.projections.digest(name) for name in ledger.projections.projections}
    ledger.projections.rebuild()
    assert {name: ledger.projections.digest(name) for name in ledger.projections.projections} == digests


def test_a_rebuild_that_writes_at_every_event_redoes_shares_it_had_written(ledger):
    """A void re-derives shares the rebuild wrote at an earlier checkpoint: the rows held in
    memory must replace them in the database (deleted by primary key, then written again)."""
    cast = parties(ledger)
    void_the_making_of_a_motor_built_into_a_car(ledger, cast)
    ledger.projections.catch_up()
    digests = {name: ledger.projections.digest(name) for name in ledger.projections.projections}
    ledger.projections.batch_size = ledger.projections.flush_events = 1
    ledger.projections.rebuild()
    assert {name: ledger.projections.digest(name) for name in ledger.projections.projections} == digests


@given(st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=12), st.data())
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_catching_up_in_random_steps_equals_a_rebuild(sqlite_template, tmp_path, steps, data):
    ledger = Ledger.open(settings_for(fresh_sqlite(sqlite_template, tmp_path)))
    cast = parties(ledger)
    for size in steps:
        for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
            kind = data.draw(st.sampled_from(["story", "ship", "void-declaration", "void-transformation"]))
            if kind == "story":
                story(ledger, cast)
            elif kind == "void-transformation":
                void_the_making_of_a_motor_built_into_a_car(ledger, cast)
            elif kind == "ship":
                batch = unique()
                post(ledger, cast["maker"], registered(batch, "5"), shipped(batch, unique("S"), "pune-motors", "2"))
            else:
                batch = unique()
                declaration = declared(batch)
                post(ledger, cast["maker"], registered(batch, "5"), declaration)
                post(ledger, cast["regulator"], event("event.voided", batch, {
                    "voided_event_id": declaration["event_id"], "reason": "did_not_occur"}))
        ledger.projections.batch_size = size
        ledger.projections.catch_up()
    incremental = {name: ledger.projections.digest(name) for name in ledger.projections.projections}
    # The rebuild keeps its rows in memory across its steps, writing them back every few
    # steps; the catch-ups above read and write them in the database at every step.
    ledger.projections.batch_size = data.draw(st.integers(min_value=1, max_value=50))
    ledger.projections.flush_events = data.draw(st.integers(min_value=1, max_value=60))
    ledger.projections.rebuild()
    assert {name: ledger.projections.digest(name) for name in ledger.projections.projections} == incremental
    ledger.close()


def test_provenance_shares_custody_chain_and_governing_declarations(ledger):
    cast = parties(ledger)
    ids = story(ledger, cast)
    # A vehicle in which the motor is a tiny fraction: below de minimis, nothing governs it.
    vehicle = unique("CAR")
    post(ledger, cast["motors"], event("batch.transformed", vehicle, {
        "inputs": [{"batch_id": ids["motor"], "mass_kg": "1"}], "product": "vehicle", "mass_kg": "1500"}))
    ledger.projections.catch_up()
    motor = ledger.views.provenance(ids["motor"], Decimal("0.001"))
    shares = {node["batch_id"]: node["share"] for node in motor["upstream"]}
    assert shares == {ids["motor"]: "1", ids["half"]: "0.02", ids["magnet"]: "0.02"}
    assert motor["controlled_fraction"] == "0.02" and motor["controlled"] is True
    assert [d["event_id"] for d in motor["governing_declarations"]] == [ids["declaration"]]
    chain = [(p["batch_id"], p["party"], p["country"]) for p in motor["custody_chain"]]
    assert (ids["magnet"], "baotou-magnets", "CN") in chain and (ids["half"], "pune-motors", "IN") in chain
    receipt = next(p for p in motor["custody_chain"] if p["batch_id"] == ids["half"] and p["party"] == "pune-motors")
    assert len(receipt["event_ids"]) == 2 and receipt["from"] is not None
    car = ledger.views.provenance(vehicle, Decimal("0.001"))
    # 0.02 of the motor is magnet, and the motor is 1/1500 of the vehicle: about 0.0000133.
    assert Decimal(car["controlled_fraction"]) < Decimal("0.001") and car["controlled"] is False
    assert car["governing_declarations"] == []
