"""Signed tree heads (SPEC 8): C2SP `tlog-checkpoint` signed notes over the Merkle root.

A checkpoint's body is the origin line, the tree size, the base64 root hash and a
`timestamp <unix seconds>` line; it carries one Ed25519 note signature, so the
transparency-log ecosystem's note verifiers accept it. The signing key is created on first
start at `LEDGER_SIGNING_KEY` (mode 0600) and its private half never leaves that file.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import Engine, bindparam, insert, select, true
from sqlalchemy.exc import IntegrityError

from ledger import merkle
from ledger.db import reader, writer
from ledger.errors import Invalid
from ledger.events import Clock, utc_now
from ledger.schema import checkpoints, log_head

ED25519 = b"\x01"
SIGNATURE_DASH = "\u2014"


class BadCheckpoint(ValueError):
    """A note that is malformed, or not signed by the key it is checked against."""


def key_id(name: str, public_key: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + ED25519 + public_key).digest()[:4]


@dataclass(frozen=True)
class Verifier:
    """A note verifier key: the name, and the raw Ed25519 public key."""

    name: str
    public_key: bytes

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, self.public_key)

    @property
    def vkey(self) -> str:
        return f"{self.name}+{self.key_id.hex()}+{base64.b64encode(ED25519 + self.public_key).decode()}"

    @classmethod
    def parse(cls, vkey: str) -> Verifier:
        """Read a `name+keyid+base64(alg || key)` verifier key string."""
        try:
            name, hex_id, encoded = vkey.strip().split("+", 2)
            raw = base64.b64decode(encoded, validate=True)
        except ValueError:
            raise BadCheckpoint("not a note verifier key (name+keyid+key)") from None
        if raw[:1] != ED25519 or len(raw) != 33:
            raise BadCheckpoint("the verifier key is not an Ed25519 key")
        verifier = cls(name, raw[1:])
        if verifier.key_id.hex() != hex_id.lower():
            raise BadCheckpoint("the verifier key's id does not match its name and key")
        return verifier

    def describe(self) -> dict:
        return {"key_name": self.name, "key_id": self.key_id.hex(),
                "public_key": base64.b64encode(self.public_key).decode(), "vkey": self.vkey}


class Signer:
    def __init__(self, name: str, private_key: Ed25519PrivateKey):
        self.name = name
        self._key = private_key
        raw = private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.verifier = Verifier(name, raw)

    @classmethod
    def from_file(cls, path: str, name: str) -> Signer:
        """The key at `path`, created there (mode 0600) if absent. The new file appears whole
        or not at all (written aside, then linked into place), so processes starting
        together all end up with the one key."""
        if not os.path.exists(path):
            pem = Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
            aside = f"{path}.{os.getpid()}.new"
            descriptor = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(pem)
            try:
                os.link(aside, path)
            except FileExistsError:
                pass
            finally:
                os.unlink(aside)
        with open(path, "rb") as handle:
            key = serialization.load_pem_private_key(handle.read(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise TypeError(f"the signing key at {path} is not an Ed25519 key")
        return cls(name, key)

    def sign(self, body: str) -> str:
        """The signed note: the body, a blank line, and this key's signature line."""
        signature = self._key.sign(body.encode())
        encoded = base64.b64encode(self.verifier.key_id + signature).decode()
        return f"{body}\n{SIGNATURE_DASH} {self.name} {encoded}\n"


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    tree_size: int
    root_hash: bytes
    timestamp: int
    note: str

    def describe(self) -> dict:
        return {"origin": self.origin, "tree_size": self.tree_size, "root_hash": self.root_hash.hex(),
                "timestamp": self.timestamp, "note": self.note}


def checkpoint_body(origin: str, tree_size: int, root_hash: bytes, timestamp: int) -> str:
    return f"{origin}\n{tree_size}\n{base64.b64encode(root_hash).decode()}\ntimestamp {timestamp}\n"


def open_note(note: str, verifier: Verifier) -> Checkpoint:
    """The checkpoint in a signed note, once the verifier's signature on it checks out."""
    body, separator, signatures = note.partition("\n\n")
    if not separator or not body:
        raise BadCheckpoint("not a signed note: no blank line between body and signatures")
    body += "\n"
    lines = body.splitlines()
    if len(lines) < 3 or not lines[1].isdigit():
        raise BadCheckpoint("the note's body is not a checkpoint (origin, tree size, root hash)")
    for line in signatures.splitlines():
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != SIGNATURE_DASH or parts[1] != verifier.name:
            continue
        try:
            raw = base64.b64decode(parts[2], validate=True)
        except ValueError:
            continue
        if raw[:4] != verifier.key_id:
            continue
        try:
            Ed25519PublicKey.from_public_bytes(verifier.public_key).verify(raw[4:], body.encode())
        except InvalidSignature:
            raise BadCheckpoint(f"the signature by {verifier.name} does not verify") from None
        timestamps = [int(line.split(" ", 1)[1]) for line in lines[3:]
                      if line.startswith("timestamp ") and line.split(" ", 1)[1].isdigit()]
        return Checkpoint(lines[0], int(lines[1]), base64.b64decode(lines[2]), timestamps[0] if timestamps else 0,
                          note)
    raise BadCheckpoint(f"the note carries no signature by {verifier.name} ({verifier.key_id.hex()})")


class Checkpoints:
    """Making, storing and reading the log's signed tree heads."""

    FRESH_SECONDS = 10
    """`current()` signs a new checkpoint only when the latest is older than this."""

    def __init__(self, engine: Engine, signer: Signer, origin: str, clock: Clock = utc_now):
        self.signer = signer
        self.origin = origin
        self.clock = clock
        self._writer = writer(engine)
        self._reads = reader(engine)
        self._largest_signed = 0
        self._key_id = signer.verifier.key_id.hex()

    def make(self) -> Checkpoint:
        """Sign the tree at the current head (or answer the stored checkpoint of that size)."""
        with self._reads.connect() as conn:
            size = conn.execute(select(log_head.c.last_position)).scalar_one()
            existing = self._at(conn, size, self._key_id)
            if existing is not None:
                return existing
            root = merkle.root(conn, size)
        timestamp = int(self.clock().timestamp())
        note = self.signer.sign(checkpoint_body(self.origin, size, root, timestamp))
        try:
            with self._writer.begin() as conn:
                if (existing := self._at(conn, size, self._key_id)) is not None:
                    return existing
                conn.execute(insert(checkpoints).values(tree_size=size, root_hash=root.hex(), origin=self.origin,
                                                        timestamp=timestamp, key_id=self._key_id, note=note))
        except IntegrityError:
            # Another process signed this size at the same moment: serve the stored one.
            with self._reads.connect() as conn:
                return self._at(conn, size, self._key_id)
        return Checkpoint(self.origin, size, root, timestamp, note)

    def latest(self) -> Checkpoint | None:
        with self._reads.connect() as conn:
            row = conn.execute(_LATEST_OF_KEY, {"key_id": self._key_id}).first()
        return _checkpoint(row) if row else None

    def current(self) -> Checkpoint:
        """The latest checkpoint, or a new one when the log has grown since it was signed
        and it is more than FRESH_SECONDS old. One query when nothing needs signing."""
        with self._reads.connect() as conn:
            row = conn.execute(_HEAD_AND_LATEST, {"key_id": self._key_id}).first()
        if row.tree_size is not None and (
                row.tree_size == row.last_position
                or int(self.clock().timestamp()) - row.timestamp < self.FRESH_SECONDS):
            return self._seen(_checkpoint(row))
        return self._seen(self.make())

    def _seen(self, checkpoint: Checkpoint) -> Checkpoint:
        self._largest_signed = max(self._largest_signed, checkpoint.tree_size)
        return checkpoint

    # --- proofs (RFC 9162 2.1.3 and 2.1.4), for tree sizes up to the latest checkpoint ------

    def inclusion(self, position: int, tree_size: int | None = None) -> dict:
        """The audit path of the event at `position` in the tree of `tree_size` leaves
        (default: the current checkpoint's)."""
        size = self._size_within_checkpoint(tree_size, "tree_size")
        if position > size:
            raise Invalid(f"The event at position {position} is not in the tree of size {size}; ask for a proof "
                          "against a later checkpoint.", {"tree_size": [f"must be at least {position}"]})
        with self._reads.connect() as conn:
            leaf, path = merkle.inclusion_proof(conn, position - 1, size)
        return {"leaf_index": position - 1, "tree_size": size, "leaf_hash": leaf.hex(),
                "audit_path": [node.hex() for node in path]}

    def consistency(self, first: int, second: int | None = None) -> dict:
        """The proof that the tree of `first` leaves is a prefix of the tree of `second`
        (default: the current checkpoint's)."""
        second = self._size_within_checkpoint(second, "second")
        if not 1 <= first <= second:
            raise Invalid(f"A consistency proof needs 1 <= first <= second ({second}).",
                          {"first": [f"must be between 1 and {second}"]})
        with self._reads.connect() as conn:
            proof = merkle.consistency_proof(conn, first, second)
        return {"first": first, "second": second, "proof": [node.hex() for node in proof]}

    def _size_within_checkpoint(self, size: int | None, field: str) -> int:
        # A size within one checkpoint seen before is within the latest: checkpoints only grow.
        if size is not None and 1 <= size <= self._largest_signed:
            return size
        signed = self.current().tree_size
        if size is None:
            return signed
        if not 1 <= size <= signed:
            raise Invalid(f"Proofs are served for tree sizes from 1 to the latest checkpoint's, {signed}.",
                          {field: [f"must be between 1 and {signed}"]})
        return size

    @staticmethod
    def _at(conn, size: int, key_id: str) -> Checkpoint | None:
        row = conn.execute(select(checkpoints).where(checkpoints.c.tree_size == size,
                                                     checkpoints.c.key_id == key_id)).first()
        return _checkpoint(row) if row else None


# Checkpoints are kept per signing key: after a key change, the new key signs its own.
_LATEST_OF_KEY = (select(checkpoints).where(checkpoints.c.key_id == bindparam("key_id"))
                  .order_by(checkpoints.c.tree_size.desc()).limit(1))
_LATEST = _LATEST_OF_KEY.subquery()
_HEAD_AND_LATEST = select(log_head.c.last_position, _LATEST).select_from(log_head.outerjoin(_LATEST, true()))


def _checkpoint(row) -> Checkpoint:
    return Checkpoint(row.origin, row.tree_size, bytes.fromhex(row.root_hash), row.timestamp, row.note)
