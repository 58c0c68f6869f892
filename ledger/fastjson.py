"""JSON on the hot paths: the rows an append or a catch-up writes, and the data and effects
a rebuild reads back, a million at a time.

orjson decodes about four times and encodes about ten times faster than the standard
library. It reads integers beyond 64 bits as floats, which cannot reach it here: validation
bounds integers in event data to 2**53 - 1 and masses to 10**18 mg. Encoding falls back to
the standard library for what orjson refuses (such as those integers), so nothing is lost.
"""

from __future__ import annotations

import json

import orjson

loads = orjson.loads


def dumps(value) -> str:
    """Compact JSON text, non-ASCII characters kept as they are."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
