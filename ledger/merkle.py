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

from sqlalchemy import Connection, Executable, bindparam, text

EMPTY_ROOT = hashlib.sha256(b"").digest()
Node = tuple[int, int]
"""(level, index): the perfect subtree over leaves [index * 2**level, (index + 1) * 2**level)."""
NodeRows = Callable[[list[int], list[int]], Iterable[tuple[int, str]]]
"""Given leaf positions and inner node numbers, the stored (in-order number, hex hash) rows."""


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
    found = load_nodes(nodes_on(conn), wanted)
    return compute(lambda level, index: found[(level, index)])


def root(conn: Connection, size: int) -> bytes:
    return _fetched(lambda node: _root(size, node), conn)


def inclusion_proof(conn: Connection, index: int, size: int) -> tuple[bytes, list[bytes]]:
    """The leaf's hash and its audit path in the tree of `size` leaves."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of {size}")
    return _fetched(lambda node: (node(0, index), _inclusion(index, 0, size, node)), conn)


def consistency_proof(conn: Connection, first: int, second: int) -> list[bytes]:
    if not 0 < first <= second:
        raise ValueError(f"no consistency proof from {first} to {second}")
    return _fetched(lambda node: _consistency(first, 0, second, True, node), conn)


def compact_range(rows: NodeRows, size: int) -> CompactRange:
    """The right edge of the stored tree of `size` leaves."""
    nodes = CompactRange.peak_nodes(size)
    found = load_nodes(rows, nodes)
    return CompactRange(size, [found[node] for node in nodes])


def in_order(level: int, index: int) -> int:
    """A subtree's number in the in-order walk of the whole tree: leaf i is 2i, and the node
    over leaves [i * 2**level, (i + 1) * 2**level) sits between its two halves. Unique across
    levels, so one integer keys every stored node."""
    return (index << (level + 1)) + (1 << level) - 1


# Written as SQL: proofs are a hot read path, and building the statement with SQLAlchemy's
# expressions cost more than running it.
_NODES = text(
    "SELECT (position - 1) * 2, leaf_hash FROM events WHERE position IN :leaves "
    "UNION ALL SELECT node, hash FROM merkle_nodes WHERE node IN :inner",
).bindparams(bindparam("leaves", expanding=True), bindparam("inner", expanding=True))
_NODES_POSTGRES = ("SELECT (position - 1) * 2, leaf_hash FROM events WHERE position = ANY(%(leaves)s) "
                   "UNION ALL SELECT node, hash FROM merkle_nodes WHERE node = ANY(%(inner)s)")
RIGHT_EDGE_POSTGRES = "SELECT node, hash FROM magledger_right_edge()"
"""The right edge of the tree at the log's head, in one statement sent with the log's lock: the
peaks of the tree (`CompactRange.peak_nodes`) as `in_order` numbers them, by a function
(migration 0007) whose plan the session keeps."""


def nodes_on(conn: Connection) -> NodeRows:
    if conn.dialect.name == "postgresql":
        return lambda leaves, inner: conn.exec_driver_sql(_NODES_POSTGRES, {"leaves": leaves, "inner": inner}).all()
    return nodes_via(lambda statement: conn.execute(statement).all())


def nodes_via(rows: Callable[[Executable], Sequence[tuple]]) -> NodeRows:
    """Node rows through any runner of SQLAlchemy statements."""
    return lambda leaves, inner: rows(_NODES.bindparams(leaves=leaves, inner=inner))


def right_edge(recorder, size: int) -> CompactRange:
    """The stored tree's right edge at `size`, on the append path: from the rows that came
    with the log's lock when they are of that size (PostgreSQL), else by a query of its own."""
    fetched = recorder.edge_at_lock
    if fetched is not None and fetched[0] == size:
        return compact_range(lambda _leaves, _inner: fetched[1], size)
    return compact_range(nodes_in(recorder), size)


def nodes_in(recorder) -> NodeRows:
    """Node rows on the append path's recorder, inside its transaction's pipeline. On
    PostgreSQL by fixed SQL on the driver's cursor: compiling `_NODES` with its expanding
    lists cost 270 µs of CPU each time another process had appended (profiled)."""
    if recorder.conn.dialect.name == "postgresql":
        return lambda leaves, inner: recorder.driver_rows(_NODES_POSTGRES, {"leaves": leaves, "inner": inner})
    return nodes_via(recorder.rows)


def load_nodes(rows: NodeRows, nodes: Iterable[Node]) -> dict[Node, bytes]:
    """Stored subtree hashes, in one query: level 0 from the log's leaf hashes, the rest from
    `merkle_nodes`."""
    wanted = {in_order(level, index): (level, index) for level, index in set(nodes)}
    if not wanted:
        return {}
    leaves = [index + 1 for level, index in wanted.values() if level == 0]
    inner = [number for number, (level, _) in wanted.items() if level > 0]
    found = {wanted[number]: bytes.fromhex(value)
             for number, value in rows(leaves, inner) if number in wanted}
    if len(found) < len(wanted):
        raise LookupError(f"the tree has no stored node {min(set(wanted.values()) - found.keys())}")
    return found


def node_rows(completed: Iterable[tuple[int, int, bytes]]) -> list[dict]:
    return [{"node": in_order(level, index), "hash": value.hex()} for level, index, value in completed]
