"""The log as an RFC 9162 Merkle tree (SPEC 8), kept incrementally.

Leaves are the events' leaf hashes in position order (leaf index = position - 1). Every
perfect subtree, once complete, never changes, so the tree is stored as those subtrees'
hashes: level 0 is the `leaf_hash` column of the log itself, and each higher level is a row
of `merkle_nodes` written in the same transaction as the events that completed it. An
append of k events writes about k nodes and reads none (the right edge of the tree, its
compact range, is kept in memory); the root of any size, and any inclusion or consistency
proof, is then a fold over O(log n) stored nodes, fetched in one query.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

from sqlalchemy import Connection, Select, and_, or_, select

from ledger.schema import events, merkle_nodes

EMPTY_ROOT = hashlib.sha256(b"").digest()
Node = tuple[int, int]
"""(level, index): the perfect subtree over leaves [index * 2**level, (index + 1) * 2**level)."""
Rows = Callable[[Select], Sequence[tuple]]
"""Runs a query, on a plain connection or on the append path's recorder."""


def rows_of(conn: Connection) -> Rows:
    return lambda query: conn.execute(query).all()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(size: int) -> int:
    """The largest power of two smaller than `size` (RFC 9162 2.1.1's k)."""
    return 1 << ((size - 1).bit_length() - 1)


class CompactRange:
    """The perfect subtrees that cover leaves [0, size), largest first: all a tree needs to
    take more leaves and to give its root."""

    def __init__(self, size: int = 0, peaks: Sequence[bytes] = ()):
        if len(peaks) != size.bit_count():
            raise ValueError(f"a tree of {size} leaves has {size.bit_count()} peaks, not {len(peaks)}")
        self.size = size
        self.peaks = list(peaks)

    @staticmethod
    def peak_nodes(size: int) -> list[Node]:
        """The (level, index) of each peak of a tree of `size` leaves, largest first."""
        return [(level, (size >> level) - 1) for level in range(size.bit_length() - 1, -1, -1) if size >> level & 1]

    def copy(self) -> CompactRange:
        return CompactRange(self.size, self.peaks)

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Add one leaf; returns the (level, index, hash) of every subtree it completed."""
        completed = []
        self.peaks.append(leaf)
        level, index = 0, self.size
        while index & 1:
            right = self.peaks.pop()
            parent = node_hash(self.peaks.pop(), right)
            self.peaks.append(parent)
            level, index = level + 1, index >> 1
            completed.append((level, index, parent))
        self.size += 1
        return completed

    def extend(self, leaves: Iterable[bytes]) -> list[tuple[int, int, bytes]]:
        completed = []
        for leaf in leaves:
            completed.extend(self.append(leaf))
        return completed

    def root(self) -> bytes:
        if not self.peaks:
            return EMPTY_ROOT
        root = self.peaks[-1]
        for peak in reversed(self.peaks[:-1]):
            root = node_hash(peak, root)
        return root


# --- proofs over stored nodes ------------------------------------------------------------
#
# Each function is written once against `node(level, index) -> bytes`. It runs first with a
# node source that only records what it was asked for, then with the fetched hashes, so a
# proof costs one query whatever its length.


def _subtree(start: int, end: int, node: Callable[[int, int], bytes]) -> bytes:
    """MTH(D[start:end]) from the perfect subtrees that make it up."""
    size = end - start
    if size & (size - 1) == 0 and start % size == 0:
        level = size.bit_length() - 1
        return node(level, start >> level)
    k = _split(size)
    return node_hash(_subtree(start, start + k, node), _subtree(start + k, end, node))


def _root(size: int, node) -> bytes:
    return _subtree(0, size, node) if size else EMPTY_ROOT


def _inclusion(index: int, start: int, end: int, node) -> list[bytes]:
    """PATH(m, D[start:end]) of RFC 9162 2.1.3.1."""
    if end - start == 1:
        return []
    k = _split(end - start)
    if index < start + k:
        return [*_inclusion(index, start, start + k, node), _subtree(start + k, end, node)]
    return [*_inclusion(index, start + k, end, node), _subtree(start, start + k, node)]


def _consistency(first: int, start: int, end: int, whole: bool, node) -> list[bytes]:
    """SUBPROOF(m, D[start:end], b) of RFC 9162 2.1.4.1, with m counted from `start`."""
    if first == end - start:
        return [] if whole else [_subtree(start, end, node)]
    k = _split(end - start)
    if first <= k:
        return [*_consistency(first, start, start + k, whole, node), _subtree(start + k, end, node)]
    return [*_consistency(first - k, start + k, end, False, node), _subtree(start, start + k, node)]


def _fetched(compute: Callable[[Callable[[int, int], bytes]], object], conn: Connection):
    """Run `compute` once to learn the nodes it needs, fetch them in one query, run it again."""
    wanted: set[Node] = set()

    def record(level: int, index: int) -> bytes:
        wanted.add((level, index))
        return EMPTY_ROOT

    compute(record)
    found = load_nodes(rows_of(conn), wanted)
    return compute(lambda level, index: found[(level, index)])


def root(conn: Connection, size: int) -> bytes:
    return _fetched(lambda node: _root(size, node), conn)


def inclusion_proof(conn: Connection, index: int, size: int) -> list[bytes]:
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of {size}")
    return _fetched(lambda node: _inclusion(index, 0, size, node), conn)


def consistency_proof(conn: Connection, first: int, second: int) -> list[bytes]:
    if not 0 < first <= second:
        raise ValueError(f"no consistency proof from {first} to {second}")
    return _fetched(lambda node: _consistency(first, 0, second, True, node), conn)


def compact_range(rows: Rows, size: int) -> CompactRange:
    """The right edge of the stored tree of `size` leaves."""
    nodes = CompactRange.peak_nodes(size)
    found = load_nodes(rows, nodes)
    return CompactRange(size, [found[node] for node in nodes])


def load_nodes(rows: Rows, nodes: Iterable[Node]) -> dict[Node, bytes]:
    """Stored subtree hashes: level 0 from the log's leaf hashes, the rest from `merkle_nodes`."""
    nodes = set(nodes)
    leaves = [index + 1 for level, index in nodes if level == 0]
    inner = [node for node in nodes if node[0] > 0]
    found: dict[Node, bytes] = {}
    if leaves:
        found.update({(0, position - 1): bytes.fromhex(leaf) for position, leaf in
                      rows(select(events.c.position, events.c.leaf_hash).where(events.c.position.in_(leaves)))})
    if inner:
        # OR of key pairs: a row-value IN list does not use the primary key on PostgreSQL.
        condition = or_(*(and_(merkle_nodes.c.level == level, merkle_nodes.c.idx == index) for level, index in inner))
        found.update({(level, index): bytes.fromhex(value) for level, index, value in
                      rows(select(merkle_nodes.c.level, merkle_nodes.c.idx, merkle_nodes.c.hash).where(condition))})
    missing = nodes - found.keys()
    if missing:
        raise LookupError(f"the tree has no stored node {min(missing)}")
    return found


def node_rows(completed: Iterable[tuple[int, int, bytes]]) -> list[dict]:
    return [{"level": level, "idx": index, "hash": value.hex()} for level, index, value in completed]
