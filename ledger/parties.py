"""Parties and their API keys (SPEC 1).

A key is `mlk_<key_id>_<secret>`: the key id finds the row, the secret is checked against a
SHA-256 hash in constant time. Secrets carry 256 bits of entropy, so a fast hash is enough;
the secret itself is never stored and is shown only once, when issued.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from sqlalchemy import Engine, bindparam, func, insert, literal_column, select, update
from sqlalchemy.exc import IntegrityError

from ledger.db import first_row, reader
from ledger.errors import Conflict, Invalid, NotFound, Unauthenticated
from ledger.events import COUNTRY_CODES, PARTY_ID, Clock, format_time, storable_text, utc_now
from ledger.schema import api_keys, parties

ROLES = ("partner", "regulator", "auditor", "admin")
KEY_PATTERN = re.compile(r"^mlk_([A-Za-z0-9]{16})_([A-Za-z0-9_-]{43})$")
MAX_VERIFIED_KEYS = 10_000
"""Verified keys a process remembers (`PartyRegistry.identify`); past this, it starts again."""


@dataclass(frozen=True)
class Party:
    party_id: str
    name: str
    country: str
    role: str

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Credential:
    """A verified key's party, with the key id by which its revocation is checked."""

    key_id: str
    party: Party


@dataclass(frozen=True)
class IssuedKey:
    key_id: str
    party_id: str
    api_key: str
    created_at: str


def validate_party(party_id: str, name: str, country: str, role: str) -> None:
    errors: dict[str, list[str]] = {}
    if not isinstance(party_id, str) or not PARTY_ID.fullmatch(party_id):
        errors["party_id"] = ["must be a lower-case slug: ^[a-z0-9][a-z0-9._-]{1,63}$"]
    if not isinstance(name, str) or not 1 <= len(name) <= 200 or not storable_text(name):
        errors["name"] = ["must be 1 to 200 characters of valid Unicode text without NUL characters"]
    if country not in COUNTRY_CODES:
        errors["country"] = ["must be an ISO 3166-1 alpha-2 country code in upper case"]
    if role not in ROLES:
        errors["role"] = [f"must be one of {', '.join(ROLES)}"]
    if errors:
        raise Invalid("The party is invalid; see errors for each field.", errors)


def _hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class PartyRegistry:
    def __init__(self, engine: Engine, clock: Clock = utc_now):
        self.engine = engine
        self.reads = reader(engine)
        self.clock = clock
        self._key_and_party = _KEY_AND_PARTY_POSTGRES if engine.dialect.name == "postgresql" else _KEY_AND_PARTY
        self._verified: dict[str, tuple[str, Party]] = {}
        """key id -> (secret hash, party) of keys this process has found valid and not revoked.
        Neither ever changes; only revocation does, which `identify`'s caller checks."""

    def register(self, party_id: str, name: str, country: str, role: str) -> tuple[Party, IssuedKey]:
        """Create a party and its first key, in one transaction."""
        validate_party(party_id, name, country, role)
        party = Party(party_id, name, country, role)
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(parties).values(**party.as_dict(), created_at=self._now()))
                key = self._issue(conn, party_id)
        except IntegrityError:
            raise Conflict(f"Party {party_id!r} already exists.", {"party_id": ["already exists"]}) from None
        return party, key

    def get(self, party_id: str) -> Party | None:
        with self.reads.connect() as conn:
            row = conn.execute(select(parties).where(parties.c.party_id == party_id)).first()
        return _party(row) if row else None

    def list(self, after: str | None = None, limit: int = 100, role: str | None = None) -> list[Party]:
        query = select(parties).order_by(parties.c.party_id).limit(limit)
        if after:
            query = query.where(parties.c.party_id > after)
        if role:
            query = query.where(parties.c.role == role)
        with self.reads.connect() as conn:
            return [_party(row) for row in conn.execute(query)]

    def issue_key(self, party_id: str) -> IssuedKey:
        with self.engine.begin() as conn:
            if conn.execute(select(parties.c.party_id).where(parties.c.party_id == party_id)).first() is None:
                raise NotFound(f"No party {party_id!r}.")
            return self._issue(conn, party_id)

    def revoke_key(self, party_id: str, key_id: str) -> None:
        with self.engine.begin() as conn:
            result = conn.execute(
                update(api_keys)
                .where(api_keys.c.key_id == key_id, api_keys.c.party_id == party_id,
                       api_keys.c.revoked_at.is_(None))
                .values(revoked_at=self._now())
            )
            if result.rowcount == 0:
                exists = conn.execute(select(api_keys.c.key_id).where(
                    api_keys.c.key_id == key_id, api_keys.c.party_id == party_id)).first()
                if exists is None:
                    raise NotFound(f"Party {party_id!r} has no key {key_id!r}.")
        self.forget([key_id])

    def authenticate(self, api_key: str | None) -> Party:
        """The party a bearer key belongs to; Unauthenticated for no, unknown or revoked keys."""
        return self._look_up(*_parsed(api_key))

    def _look_up(self, key_id: str, secret: str) -> Party:
        """The key's party from the database, remembered for `identify` once found valid."""
        row = first_row(self.reads, self._key_and_party, {"key_id": key_id})
        expected = row[0] if row else _hash_secret("no such key")
        if not hmac.compare_digest(expected, _hash_secret(secret)) or row is None:
            raise Unauthenticated("The API key is not valid.")
        secret_hash, revoked_at, party_id, name, country, role = row
        if revoked_at is not None:
            raise Unauthenticated("The API key has been revoked.")
        party = Party(party_id, name, country, role)
        if len(self._verified) >= MAX_VERIFIED_KEYS:
            self._verified.clear()
        self._verified[key_id] = (secret_hash, party)
        return party

    def identify(self, api_key: str | None) -> Credential:
        """The party of a bearer key, without a look-up when this process has verified the
        key before: then whether it has been revoked since is NOT checked, and the caller
        must check it where it acts (`EventStore.append`'s `key_id`, in the transaction that
        writes). Unauthenticated for no, unknown or invalid keys, and for keys found revoked."""
        key_id, secret = _parsed(api_key)
        known = self._verified.get(key_id)
        if known is None:
            return Credential(key_id, self._look_up(key_id, secret))
        secret_hash, party = known
        if not hmac.compare_digest(secret_hash, _hash_secret(secret)):
            raise Unauthenticated("The API key is not valid.")
        return Credential(key_id, party)

    def forget(self, key_ids: Iterable[str]) -> None:
        """Keys found revoked: `identify` looks them up again, and refuses them."""
        for key_id in key_ids:
            self._verified.pop(key_id, None)

    def _issue(self, conn, party_id: str) -> IssuedKey:
        key_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        created_at = self._now()
        conn.execute(insert(api_keys).values(key_id=key_id, party_id=party_id,
                                             secret_hash=_hash_secret(secret), created_at=created_at))
        return IssuedKey(key_id, party_id, f"mlk_{key_id}_{secret}", created_at)

    def _now(self) -> str:
        return format_time(self.clock())


# Built once: every request runs it.
_KEY_AND_PARTY = (select(api_keys.c.secret_hash, api_keys.c.revoked_at, parties.c.party_id, parties.c.name,
                          parties.c.country, parties.c.role)
                  .join(parties, parties.c.party_id == api_keys.c.party_id)
                  .where(api_keys.c.key_id == bindparam("key_id")))
_KEY_AND_PARTY_POSTGRES = select(literal_column("*")).select_from(func.magledger_api_key(bindparam("key_id")))
"""The same look-up through its function (migration 0007), whose plan the session keeps."""


def _parsed(api_key: str | None) -> tuple[str, str]:
    """A bearer key's id and secret."""
    if not api_key:
        raise Unauthenticated("An API key is required: send Authorization: Bearer <key>.")
    match = KEY_PATTERN.fullmatch(api_key)
    if not match:
        raise Unauthenticated("The API key is not valid.")
    return match.group(1), match.group(2)


def _party(row) -> Party:
    return Party(row.party_id, row.name, row.country, row.role)
