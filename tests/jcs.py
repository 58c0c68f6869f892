"""An independent RFC 8785 (JSON Canonicalization Scheme) encoder, written from the RFC for
the tests: it shares no code with the ledger's serializer."""

from __future__ import annotations

import math


def canonicalize(value) -> bytes:
    return _encode(value).encode("utf-8")


def _encode(value) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return _number(float(value)) if abs(value) > 2**53 else str(value)
    if isinstance(value, float):
        return _number(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list):
        return "[" + ",".join(_encode(item) for item in value) + "]"
    if isinstance(value, dict):
        # RFC 8785 3.2.3: sort by the UTF-16 code units of the keys.
        keys = sorted(value, key=lambda k: k.encode("utf-16-be"))
        return "{" + ",".join(_string(k) + ":" + _encode(value[k]) for k in keys) + "}"
    raise TypeError(f"not JSON: {type(value).__name__}")


_SHORT = {0x08: "\\b", 0x09: "\\t", 0x0A: "\\n", 0x0C: "\\f", 0x0D: "\\r", 0x22: '\\"', 0x5C: "\\\\"}


def _string(text: str) -> str:
    out = ['"']
    for char in text:
        code = ord(char)
        if code in _SHORT:
            out.append(_SHORT[code])
        elif code < 0x20:
            out.append(f"\\u{code:04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def _number(number: float) -> str:
    """ECMAScript Number.prototype.toString, as RFC 8785 3.2.2.3 requires."""
    if math.isnan(number) or math.isinf(number):
        raise ValueError("NaN and Infinity are not JSON")
    if number == 0:
        return "0"
    if number.is_integer() and abs(number) < 1e21:
        return str(int(number))
    text = repr(number)
    mantissa, _, exponent = text.partition("e")
    if not exponent:
        return text
    exp = int(exponent)
    digits = mantissa.replace(".", "").replace("-", "")
    sign = "-" if number < 0 else ""
    if len(digits) > 1:
        return f"{sign}{digits[0]}.{digits[1:]}e{'+' if exp > 0 else '-'}{abs(exp)}"
    return f"{sign}{digits}e{'+' if exp > 0 else '-'}{abs(exp)}"
