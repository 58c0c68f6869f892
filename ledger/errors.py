"""Domain errors. Each maps to one HTTP status in the API and one exit status in the CLI."""

from __future__ import annotations


class LedgerError(Exception):
    status = 400
    title = "Bad request"

    def __init__(self, detail: str, errors: dict[str, list[str]] | None = None):
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or {}

    def prefixed(self, prefix: str) -> LedgerError:
        """The same error with every field name placed under `prefix` (an item of a batch post)."""
        clone = type(self)(self.detail, {f"{prefix}.{k}": v for k, v in self.errors.items()})
        return clone


class Invalid(LedgerError):
    status = 422
    title = "Unprocessable request"


class Unauthenticated(LedgerError):
    status = 401
    title = "Unauthenticated"


class Forbidden(LedgerError):
    status = 403
    title = "Forbidden"


class NotFound(LedgerError):
    status = 404
    title = "Not found"


class Conflict(LedgerError):
    status = 409
    title = "Conflict"


class TooLarge(LedgerError):
    status = 413
    title = "Payload too large"


class Unavailable(LedgerError):
    status = 503
    title = "Service unavailable"
