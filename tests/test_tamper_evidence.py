"""Tamper evidence (SPEC 8): the RFC 9162 tree and its proofs, checked by a verifier written
here from the RFC's algorithms; checkpoints, checked by a signed-note verifier written here
from the C2SP note format; and `magledger verify` catching each kind of tampering."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
from functools import cache
from types import SimpleNamespace

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import text

from ledger import merkle
from ledger.checkpoints import BadCheckpoint, Signer, checkpoint_body
from ledger.db import make_engine, upgrade
from ledger.events import compute_leaf_hash
from ledger.integrity import export_log, load_checkpoint, read_export, verify_log
from ledger.parties import PartyRegistry
from ledger.services import Ledger
from ledger.store import EventStore
from tests.conftest import assert_problem, magledger, settings_for
from tests.helpers import parties, post, registered, unique

# --- RFC 9162, written again from the RFC's text ------------------------------------------


def rfc_hash(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def mth(leaves: tuple[bytes, ...]) -> bytes:
    """MTH(D[n]) of section 2.1.1, over leaf hashes."""
    if not leaves:
        return rfc_hash(b"")
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return rfc_hash(b"\x01" + mth(leaves[:k]) + mth(leaves[k:]))


def verify_inclusion(index: int, size: int, leaf: bytes, path: list[bytes], root: bytes) -> bool:
    """Section 2.1.3.2."""
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = rfc_hash(b"\x01" + p + r)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = rfc_hash(b"\x01" + r + p)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and r == root


def verify_consistency(first: int, second: int, first_root: bytes, second_root: bytes, proof: list[bytes]) -> bool:
    """Section 2.1.4.2."""
    if first == second:
        return not proof and first_root == second_root
    if first & (first - 1) == 0:
        proof = [first_root, *proof]
    if not proof:
        return False
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = rfc_hash(b"\x01" + c + fr)
            sr = rfc_hash(b"\x01" + c + sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = rfc_hash(b"\x01" + sr + c)
        fn, sn = fn >> 1, sn >> 1
    return fr == first_root and sr == second_root and sn == 0


# --- C2SP signed notes, written again from the format -------------------------------------


def open_note_independently(note: str, name: str, public_key: bytes) -> list[str]:
    """The body lines of a note that carries a valid Ed25519 signature by (name, key)."""
    body, _, signatures = note.partition("\n\n")
    body += "\n"
    key_id = hashlib.sha256(name.encode() + b"\n\x01" + public_key).digest()[:4]
    for line in signatures.splitlines():
        dash, signer, encoded = line.split(" ")
        blob = base64.b64decode(encoded)
        if dash == "\u2014" and signer == name and blob[:4] == key_id:
            Ed25519PublicKey.from_public_bytes(public_key).verify(blob[4:], body.encode())
            return body.splitlines()
    raise AssertionError("no signature by the key")


def flipped(value: bytes) -> bytes:
    return bytes([value[0] ^ 1]) + value[1:]


def leaves_of(ledger: Ledger) -> tuple[bytes, ...]:
    return tuple(bytes.fromhex(event.leaf_hash) for event in ledger.store.iter_all())


def post_in_groups(ledger, actor, sizes):
    for size in sizes:
        post(ledger, actor, *[registered(unique(), "10") for _ in range(size)], batch=True)


# --- the tree ----------------------------------------------------------------------------


def test_roots_and_every_proof_up_to_64_leaves_verify_independently(ledger):
    cast = parties(ledger)
    post_in_groups(ledger, cast["maker"], [1, 1, 2, 3, 1, 8, 5, 1, 16, 7, 3, 1, 9, 6])
    leaves = leaves_of(ledger)
    assert len(leaves) == 64
    root_of = cache(lambda n: mth(leaves[:n]))
    with ledger.engine.connect() as conn:
        assert merkle.root(conn, 0) == rfc_hash(b"")
        for size in range(1, 65):
            root = root_of(size)
            assert merkle.root(conn, size) == root, size
            for index in range(size):
                leaf, path = merkle.inclusion_proof(conn, index, size)
                assert leaf == leaves[index]
                assert verify_inclusion(index, size, leaves[index], path, root), (index, size)
                assert not verify_inclusion(index, size, flipped(leaves[index]), path, root)
                assert not verify_inclusion(index, size, leaves[index], path, flipped(root))
            for first in range(1, size + 1):
                proof = merkle.consistency_proof(conn, first, size)
                assert verify_consistency(first, size, root_of(first), root, proof), (first, size)
                assert not verify_consistency(first, size, flipped(root_of(first)), root, proof)
                assert not verify_consistency(first, size, root_of(first), flipped(root), proof)


def test_two_processes_appending_in_turn_keep_one_tree(database_url, clock):
    first = Ledger.open(settings_for(database_url), clock=clock)
    second = Ledger.open(settings_for(database_url), clock=clock)
    cast = parties(first)
    for turn in range(9):
        writer = first if turn % 2 == 0 else second
        post_in_groups(writer, cast["maker"], [turn % 3 + 1])
    leaves = leaves_of(first)
    with first.engine.connect() as conn:
        for size in range(1, len(leaves) + 1):
            assert merkle.root(conn, size) == mth(leaves[:size])
    first.close()
    second.close()


def test_the_right_edge_sent_with_the_lock_is_the_stored_trees_at_every_size(postgres_url, clock):
    """On PostgreSQL a writer that takes the log's lock gets the tree's right edge in the
    same round trip, computed in SQL from the head; it must be the edge the stored nodes
    give, whatever the size's peaks."""
    from ledger.recorders import recorder_for

    ledger = Ledger.open(settings_for(postgres_url), clock=clock)
    cast = parties(ledger)
    for size in [1, 1, 2, 1, 3, 8, 1, 5, 16, 1, 7, 2, 33, 1]:
        post_in_groups(ledger, cast["maker"], [size])
        with ledger.engine.connect() as conn:
            recorder = recorder_for(conn)
            with recorder.transaction():
                head, _found = recorder.lock_and_select([])
                assert recorder.edge_at_lock[0] == head
                sent = merkle.right_edge(recorder, head)
            stored = merkle.compact_range(merkle.nodes_on(conn), head)
        assert (sent.size, sent.peaks) == (stored.size, stored.peaks) and len(sent.peaks) == head.bit_count()
    ledger.close()


def test_the_migration_builds_the_tree_of_a_log_recorded_before_it(tmp_path, clock):
    engine = make_engine(f"sqlite:///{tmp_path}/old.db")
    upgrade(engine, "0003")
    older = SimpleNamespace(store=EventStore(engine, clock, keep_tree=False), parties=PartyRegistry(engine, clock))
    cast = parties(older)
    post_in_groups(older, cast["maker"], [3, 7, 1, 12])
    upgrade(engine)
    leaves = leaves_of(older)
    with engine.connect() as conn:
        assert [merkle.root(conn, n) for n in range(1, 24)] == [mth(leaves[:n]) for n in range(1, 24)]
    engine.dispose()


# --- checkpoints and proofs over HTTP ----------------------------------------------------


def test_checkpoints_are_signed_notes_that_an_independent_verifier_accepts(live_server, keys):
    key = live_server.request("GET", "/v1/ledger/public-key", None).json()
    public = base64.b64decode(key["public_key"])
    assert len(public) == 32
    assert key["key_id"] == hashlib.sha256(key["key_name"].encode() + b"\n\x01" + public).digest()[:4].hex()
    algorithm_and_key = base64.b64encode(b"\x01" + public).decode()
    assert key["vkey"] == f"{key['key_name']}+{key['key_id']}+{algorithm_and_key}"

    live_server.request("POST", "/v1/events", keys["maker"], json=registered(unique()))
    made = live_server.request("POST", "/v1/ledger/checkpoints", keys["auditor"])
    assert made.status_code == 201, made.text
    latest = live_server.request("GET", "/v1/ledger/checkpoint", keys["maker"]).json()
    assert latest["tree_size"] >= made.json()["tree_size"] >= 1
    origin, size, root, timestamp = open_note_independently(latest["note"], key["key_name"], public)
    assert origin == latest["origin"] and int(size) == latest["tree_size"]
    assert base64.b64decode(root).hex() == latest["root_hash"]
    assert timestamp == f"timestamp {latest['timestamp']}"
    forged = latest["note"].replace(f"\n{size}\n", f"\n{int(size) + 1}\n")
    with pytest.raises(InvalidSignature):
        open_note_independently(forged, key["key_name"], public)

    leaves = []
    after = 0
    while len(leaves) < latest["tree_size"]:
        page = live_server.request("GET", f"/v1/events?after={after}&limit=1000", keys["auditor"]).json()["items"]
        leaves += [bytes.fromhex(e["leaf_hash"]) for e in page]
        after = page[-1]["position"]
    assert mth(tuple(leaves[:latest["tree_size"]])).hex() == latest["root_hash"]


def test_only_admins_and_auditors_may_ask_for_a_checkpoint(live_server, keys):
    for role in ("maker", "regulator"):
        assert_problem(live_server.request("POST", "/v1/ledger/checkpoints", keys[role]), 403)
    assert_problem(live_server.request("POST", "/v1/ledger/checkpoints", None), 401)
    assert_problem(live_server.request("GET", "/v1/ledger/checkpoint", None), 401)
    assert live_server.request("POST", "/v1/ledger/checkpoints", keys["admin"]).status_code == 201


def test_inclusion_and_consistency_proofs_over_http_verify_against_checkpoints(live_server, keys):
    mine = live_server.request("POST", "/v1/events", keys["maker"], json=registered(unique())).json()["receipts"][0]
    before = live_server.request("POST", "/v1/ledger/checkpoints", keys["auditor"]).json()
    live_server.request("POST", "/v1/events", keys["stranger"],
                        json={"events": [registered(unique()) for _ in range(5)]})
    after = live_server.request("POST", "/v1/ledger/checkpoints", keys["auditor"]).json()

    proof = live_server.request("GET", f"/v1/ledger/proofs/inclusion?event_id={mine['event_id']}"
                                       f"&tree_size={after['tree_size']}", keys["maker"])
    assert proof.status_code == 200, proof.text
    body = proof.json()
    assert body["leaf_index"] == mine["position"] - 1 and body["leaf_hash"] == mine["leaf_hash"]
    assert verify_inclusion(body["leaf_index"], after["tree_size"], bytes.fromhex(mine["leaf_hash"]),
                            [bytes.fromhex(h) for h in body["audit_path"]], bytes.fromhex(after["root_hash"]))

    consistency = live_server.request("GET", f"/v1/ledger/proofs/consistency?first={before['tree_size']}"
                                             f"&second={after['tree_size']}", keys["maker"]).json()
    assert consistency["first"] == before["tree_size"] and consistency["second"] == after["tree_size"]
    assert verify_consistency(before["tree_size"], after["tree_size"], bytes.fromhex(before["root_hash"]),
                              bytes.fromhex(after["root_hash"]), [bytes.fromhex(h) for h in consistency["proof"]])

    # A partner gets no proof for an event of a batch it may not see, exactly as for none.
    assert_problem(live_server.request("GET", f"/v1/ledger/proofs/inclusion?event_id={mine['event_id']}",
                                       keys["stranger"]), 404)
    assert_problem(live_server.request("GET", "/v1/ledger/proofs/inclusion?event_id=nope", keys["auditor"]), 404)
    assert_problem(live_server.request("GET", f"/v1/ledger/proofs/inclusion?event_id={mine['event_id']}"
                                              f"&tree_size={mine['position'] - 1}", keys["maker"]), 422, "tree_size")
    assert_problem(live_server.request("GET", f"/v1/ledger/proofs/inclusion?event_id={mine['event_id']}"
                                              "&tree_size=999999999", keys["maker"]), 422, "tree_size")
    assert_problem(live_server.request("GET", f"/v1/ledger/proofs/consistency?first={after['tree_size']}"
                                              f"&second={before['tree_size']}", keys["maker"]), 422, "first")
    assert_problem(live_server.request("GET", "/v1/ledger/proofs/consistency?first=0", keys["maker"]), 422, "first")
    assert_problem(live_server.request("GET", "/v1/ledger/proofs/consistency?first=1", None), 401)


# --- verify, and tampering ---------------------------------------------------------------


def _drop_triggers(engine) -> None:
    """What an attacker with the database's owner account can do."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("DROP TRIGGER events_no_update_or_delete ON events"))
        else:
            conn.execute(text("DROP TRIGGER events_no_update"))
            conn.execute(text("DROP TRIGGER events_no_delete"))


def _move(conn, source: int, target: int) -> None:
    conn.execute(text("UPDATE events SET position = :target WHERE position = :source"),
                 {"source": source, "target": target})


def _insert_forged_at(conn, ledger, position: int) -> None:
    """Shift every later event up by one and put a well-formed event, with its own correct
    leaf hash, in the gap."""
    last = conn.execute(text("SELECT max(position) FROM events")).scalar()
    for moving in range(last, position - 1, -1):
        _move(conn, moving, moving + 1)
    model = ledger.store.get(ledger.store.feed(after=position - 1, limit=1)[0].event_id)
    forged = {**model.envelope(), "event_id": "00000000-0000-4000-8000-000000000000", "position": position,
              "batch_id": "FORGED-1", "version": 1}
    forged.pop("leaf_hash")
    conn.execute(text("INSERT INTO events (position, event_id, type, batch_id, version, actor, occurred_at, "
                      "recorded_at, data, leaf_hash, content_digest, effects) VALUES (:position, :event_id, "
                      ":type, :batch_id, 1, :actor, :occurred_at, :recorded_at, :data, :leaf, 'x', '{}')"),
                 {**forged, "data": json.dumps(forged["data"]), "leaf": compute_leaf_hash(forged)})


TAMPERING = {
    "altered": lambda conn, ledger: conn.execute(text(
        "UPDATE events SET data = replace(data, '\"mass_kg\":\"10\"', '\"mass_kg\":\"11\"') WHERE position = 5")),
    "deleted": lambda conn, ledger: conn.execute(text("DELETE FROM events WHERE position = 5")),
    "inserted": lambda conn, ledger: _insert_forged_at(conn, ledger, 5),
    "swapped": lambda conn, ledger: (_move(conn, 5, -5), _move(conn, 9, 5), _move(conn, -5, 9)),
}


@pytest.fixture
def signed_log(database_url, clock, tmp_path):
    """A log of 12 events and a checkpoint over it, with the key in a file of the test's own."""
    env = {"DATABASE_URL": database_url, "LEDGER_SIGNING_KEY": str(tmp_path / "signing.key")}
    ledger = Ledger.open(settings_for(database_url, LEDGER_SIGNING_KEY=env["LEDGER_SIGNING_KEY"]), clock=clock)
    cast = parties(ledger)
    post_in_groups(ledger, cast["maker"], [4, 1, 7])
    checkpoint = json.loads(magledger("checkpoint", env=env).stdout)
    assert checkpoint["tree_size"] == 12
    yield ledger, env
    ledger.close()


def test_verify_passes_an_untouched_database_and_its_export(signed_log, tmp_path):
    ledger, env = signed_log
    result = magledger("verify", env=env)
    assert json.loads(result.stdout) == {"ok": True, "tree_size": 12, "checked": 12, "position": None,
                                         "problem": None}
    magledger("export", "--out", str(tmp_path / "log.jsonl"), env=env)
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert len(lines) == 13 and json.loads(lines[0])["checkpoint"]["tree_size"] == 12
    vkey = ledger.checkpoints.signer.verifier.vkey
    result = magledger("verify", "--export", str(tmp_path / "log.jsonl"), "--key", vkey,
                       env={"DATABASE_URL": "sqlite:///" + str(tmp_path / "unused.db"),
                            "LEDGER_SIGNING_KEY": str(tmp_path / "absent.key")})
    assert json.loads(result.stdout)["ok"] is True


@pytest.mark.parametrize(("tampering", "position"), [("altered", 5), ("deleted", 5), ("inserted", 5),
                                                      ("swapped", 5)])
def test_verify_names_the_first_tampered_position_in_the_database(signed_log, tampering, position):
    ledger, env = signed_log
    _drop_triggers(ledger.engine)
    with ledger.engine.begin() as conn:
        TAMPERING[tampering](conn, ledger)
    result = magledger("verify", env=env, check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["ok"] is False and outcome["position"] == position, outcome


def test_verify_catches_leaf_hashes_rewritten_to_match_by_the_root(signed_log):
    ledger, env = signed_log
    _drop_triggers(ledger.engine)
    event = ledger.store.feed(after=6, limit=1)[0]
    altered = {**event.envelope(), "data": {**event.data, "mass_kg": "11"}}
    altered.pop("leaf_hash")
    with ledger.engine.begin() as conn:
        conn.execute(text("UPDATE events SET data = :data, leaf_hash = :leaf WHERE position = 7"),
                     {"data": json.dumps(altered["data"]), "leaf": compute_leaf_hash(altered)})
    result = magledger("verify", env=env, check=False)
    assert result.returncode == 1
    assert "root" in json.loads(result.stdout)["problem"]


def _export_lines(ledger) -> list[str]:
    out = io.StringIO()
    export_log(ledger.store, ledger.checkpoints.latest(), out)
    return out.getvalue().splitlines()


def _verify_lines(ledger, lines):
    header, envelopes = read_export(lines)
    signed = load_checkpoint(header["checkpoint"]["note"], ledger.checkpoints.signer.verifier)
    return verify_log(envelopes, signed)


def test_verify_names_the_first_tampered_position_in_an_export(signed_log):
    ledger, _ = signed_log
    lines = _export_lines(ledger)
    assert _verify_lines(ledger, lines).ok
    altered = lines.copy()
    altered[5] = altered[5].replace('"mass_kg":"10"', '"mass_kg":"11"')
    deleted = lines[:5] + lines[6:]
    forged = json.loads(lines[5]) | {"event_id": "00000000-0000-4000-8000-000000000000", "batch_id": "FORGED-1"}
    forged["leaf_hash"] = compute_leaf_hash({k: v for k, v in forged.items() if k != "leaf_hash"})
    inserted = [*lines[:5], json.dumps(forged), *lines[5:]]
    swapped = lines.copy()
    swapped[5], swapped[9] = lines[9], lines[5]
    broken = lines.copy()
    broken[5] = broken[5][:-3]
    for name, tampered in [("altered", altered), ("deleted", deleted), ("inserted", inserted),
                           ("swapped", swapped), ("broken", broken)]:
        outcome = _verify_lines(ledger, tampered)
        assert (outcome.ok, outcome.position) == (False, 5), (name, outcome)
    truncated = _verify_lines(ledger, lines[:-1])
    assert (truncated.ok, truncated.position) == (False, 12)


def test_a_checkpoint_signed_with_another_key_is_rejected(signed_log, tmp_path):
    ledger, env = signed_log
    stranger = Signer("stranger", Ed25519PrivateKey.generate())
    result = magledger("verify", "--key", stranger.verifier.vkey, env=env, check=False)
    assert result.returncode == 1 and "no signature by stranger" in json.loads(result.stdout)["problem"]

    # The same name and checkpoint, signed by another key: the ledger's key does not accept it.
    impostor = Signer(ledger.checkpoints.signer.name, Ed25519PrivateKey.generate())
    latest = ledger.checkpoints.latest()
    (tmp_path / "forged.note").write_text(
        impostor.sign(checkpoint_body(latest.origin, latest.tree_size, latest.root_hash, latest.timestamp)))
    result = magledger("verify", "--checkpoint", str(tmp_path / "forged.note"), env=env, check=False)
    assert result.returncode == 1, result.stdout
    with pytest.raises(BadCheckpoint):
        load_checkpoint((tmp_path / "forged.note").read_text(), ledger.checkpoints.signer.verifier)


def test_the_signing_key_is_created_once_with_mode_0600(tmp_path):
    path = tmp_path / "key"
    first = Signer.from_file(str(path), "origin")
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    assert Signer.from_file(str(path), "origin").verifier == first.verifier
    assert [p.name for p in tmp_path.iterdir()] == ["key"]


def test_the_current_checkpoint_is_signed_anew_only_when_the_log_grew_and_it_is_not_fresh(ledger, clock):
    cast = parties(ledger)
    post_in_groups(ledger, cast["maker"], [3])
    first = ledger.checkpoints.current()
    assert first.tree_size == 3
    assert ledger.checkpoints.make() == first, "the same size is never signed twice"
    post_in_groups(ledger, cast["maker"], [2])
    clock.advance(seconds=ledger.checkpoints.FRESH_SECONDS - 1)
    assert ledger.checkpoints.current() == first
    clock.advance(seconds=1)
    second = ledger.checkpoints.current()
    assert second.tree_size == 5 and second.timestamp == int(clock().timestamp())
    clock.advance(hours=1)
    assert ledger.checkpoints.current() == second, "an old checkpoint of the whole log is current"
    assert ledger.checkpoints.latest() == second


def test_a_new_signing_key_signs_its_own_checkpoints(database_url, clock, tmp_path):
    first = Ledger.open(settings_for(database_url, LEDGER_SIGNING_KEY=str(tmp_path / "old.key")), clock=clock)
    post_in_groups(first, parties(first)["maker"], [4])
    old = first.checkpoints.make()
    second = Ledger.open(settings_for(database_url, LEDGER_SIGNING_KEY=str(tmp_path / "new.key")), clock=clock)
    new = second.checkpoints.make()
    assert (new.tree_size, new.root_hash) == (old.tree_size, old.root_hash) and new.note != old.note
    assert load_checkpoint(new.note, second.checkpoints.signer.verifier).tree_size == 4
    assert second.checkpoints.latest() == new and first.checkpoints.latest() == old
    first.close()
    second.close()
