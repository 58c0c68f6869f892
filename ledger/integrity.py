"""Exporting the log, and checking a log against a signed checkpoint without trusting
whoever holds it (SPEC 8, `magledger export` and `magledger verify`).

An export is JSON lines: a header `{"magledger_export": 1, "checkpoint": {...}}` naming the
checkpoint it was cut at, then every event up to that tree size, each exactly as
`GET /v1/events/{id}` returns it. `verify` recomputes, for each event in position order, its
canonical form and leaf hash, folds the leaves into the Merkle tree, and compares the root
with the checkpoint, whose signature it checks first. It stops at the first position that
disagrees: a missing or extra position (an event deleted, inserted or moved), or content
that no longer hashes to its leaf hash (an event altered).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from ledger.checkpoints import Checkpoint, Verifier, open_note
from ledger.events import canonical_bytes
from ledger.merkle import CompactRange
from ledger.store import EventStore

EXPORT_FORMAT = 1


@dataclass(frozen=True)
class Outcome:
    ok: bool
    tree_size: int
    checked: int
    position: int | None = None
    """The first position that disagrees, when one can be named."""
    problem: str | None = None

    def describe(self) -> dict:
        return {"ok": self.ok, "tree_size": self.tree_size, "checked": self.checked, "position": self.position,
                "problem": self.problem}


def export_log(store: EventStore, checkpoint: Checkpoint, out: IO[str],
               on_progress: Callable[[int], None] | None = None) -> int:
    """Write the header and the events 1..checkpoint.tree_size; returns the events written."""
    out.write(json.dumps({"magledger_export": EXPORT_FORMAT, "checkpoint": checkpoint.describe()}) + "\n")
    written = 0
    for event in store.iter_all():
        if event.position > checkpoint.tree_size:
            break
        out.write(json.dumps(event.envelope(), ensure_ascii=False, separators=(",", ":")) + "\n")
        written += 1
        if on_progress:
            on_progress(1)
    return written


def read_export(lines: Iterable[str]) -> tuple[dict, Iterator[dict]]:
    """The export's header and its events, parsed as they are read."""
    lines = iter(lines)
    try:
        header = json.loads(next(lines))
    except (StopIteration, ValueError):
        raise ValueError("not a magledger export: the first line is not a JSON header") from None
    if not isinstance(header, dict) or header.get("magledger_export") != EXPORT_FORMAT:
        raise ValueError("not a magledger export: the header lacks magledger_export: 1")
    return header, (json.loads(line) for line in lines if line.strip())


def load_checkpoint(text: str, verifier: Verifier) -> Checkpoint:
    """A checkpoint from a signed note, or from JSON holding one in `note` (the answer of
    GET /v1/ledger/checkpoint); only its signature is trusted, never the JSON's fields."""
    stripped = text.lstrip()
    if stripped.startswith("{"):
        text = json.loads(stripped)["note"]
    return open_note(text, verifier)


def verify_log(envelopes: Iterable[dict[str, Any]], checkpoint: Checkpoint,
               on_progress: Callable[[int], None] | None = None) -> Outcome:
    """Check events in position order against a checkpoint (already verified by its key)."""
    size = checkpoint.tree_size
    tree = CompactRange()
    remaining = iter(envelopes)
    while tree.size < size:
        expected = tree.size + 1
        try:
            envelope = next(remaining)
        except StopIteration:
            break
        except ValueError:
            return Outcome(False, size, tree.size, expected, f"the event at position {expected} is not valid JSON")
        position = envelope.get("position") if isinstance(envelope, dict) else None
        if position != expected:
            # A row that says it was recorded at N is the log's event N, so the log already
            # disagrees at N if that comes first (an event inserted before it, or two swapped).
            first = min(expected, position) if isinstance(position, int) and position > 0 else expected
            return Outcome(False, size, tree.size, first,
                           f"position {expected} holds the event recorded at {position!r}: "
                           "an event was deleted, inserted or moved")
        leaf = _leaf(envelope)
        if leaf is None:
            return Outcome(False, size, tree.size, expected, f"position {expected} is not a valid event")
        if leaf.hex() != envelope.get("leaf_hash"):
            if expected > 1 and _leaf({**envelope, "position": expected - 1}).hex() == envelope.get("leaf_hash"):
                return Outcome(False, size, tree.size, expected - 1,
                               f"the event at position {expected} was recorded at {expected - 1}: "
                               f"an event was inserted at {expected - 1}")
            return Outcome(False, size, tree.size, expected,
                           f"the event at position {expected} does not hash to its leaf hash: it was altered "
                           "or moved")
        tree.append(leaf)
        if on_progress:
            on_progress(1)
    if tree.size < size:
        return Outcome(False, size, tree.size, tree.size + 1,
                       f"the checkpoint covers {size} events but the log ends at {tree.size}")
    if tree.root() != checkpoint.root_hash:
        return Outcome(False, size, tree.size, None,
                       f"the events' Merkle root {tree.root().hex()} is not the checkpoint's "
                       f"{checkpoint.root_hash.hex()}: leaf hashes were rewritten")
    return Outcome(True, size, tree.size)


def _leaf(envelope: dict[str, Any]) -> bytes | None:
    content = {key: value for key, value in envelope.items() if key != "leaf_hash"}
    try:
        return hashlib.sha256(b"\x00" + canonical_bytes(content)).digest()
    except (TypeError, ValueError):
        return None


def stored_envelopes(store: EventStore) -> Iterator[dict[str, Any]]:
    return (event.envelope() for event in store.iter_all())
