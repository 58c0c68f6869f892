"""The cycle collector kept out of bulk work that makes no cycles.

CPython runs its cycle collector every 700 new containers, and every so often a full pass
walks every object the process holds. A group commit or a projection step allocates tens
of thousands of rows, receipts and cache entries that form no cycles and live until the
work is done, so the collector only slows it down (Mercurial's `util.nogc` keeps it out of
its parsers for the same reason). Collection resumes when the last paused piece of work
ends; the collector's on/off switch is process-wide, so pauses are counted, and a collector
that was off before stays off.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

_lock = threading.Lock()
_pauses = 0
_enabled_before = True


@contextlib.contextmanager
def paused() -> Iterator[None]:
    global _pauses, _enabled_before
    with _lock:
        if _pauses == 0:
            _enabled_before = gc.isenabled()
            gc.disable()
        _pauses += 1
    try:
        yield
    finally:
        with _lock:
            _pauses -= 1
            if _pauses == 0 and _enabled_before:
                gc.enable()
