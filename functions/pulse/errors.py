"""The one error hierarchy. Mapped to HTTP in exactly one place: pulse.web.problems.

Validation errors name the field and are collected, so a client sees every
problem with its input at once.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str
    index: int | None = None

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"field": self.field, "error": f"{self.field}: {self.message}"}
        if self.index is not None:
            out["index"] = self.index
        return out


class PulseError(Exception):
    status = 500
    title = "Internal error"
    slug = "internal"

    def __init__(self, detail: str = "", errors: list[FieldError] | None = None) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.errors = errors or []
        # Extension members of the problem document (RFC 9457 section 3.2).
        self.extensions: dict[str, object] = {}


class InvalidInput(PulseError):
    status = 400
    title = "Invalid input"
    slug = "invalid-input"

    @classmethod
    def field(cls, field: str, message: str) -> InvalidInput:
        return cls(f"{field}: {message}", [FieldError(field, message)])


class Unauthorized(PulseError):
    status = 401
    title = "Unauthorized"
    slug = "unauthorized"


class Forbidden(PulseError):
    status = 403
    title = "Forbidden"
    slug = "forbidden"


class NotFound(PulseError):
    status = 404
    title = "Not found"
    slug = "not-found"


class Conflict(PulseError):
    status = 409
    title = "Conflict"
    slug = "conflict"


class PayloadTooLarge(PulseError):
    status = 413
    title = "Payload too large"
    slug = "payload-too-large"


class UnsupportedMediaType(PulseError):
    status = 415
    title = "Unsupported media type"
    slug = "unsupported-media-type"


class RateLimited(PulseError):
    status = 429
    title = "Too many requests"
    slug = "rate-limited"

    def __init__(self, detail: str = "", retry_after_s: int = 1) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class Unavailable(PulseError):
    """A dependency cannot take the work now; the client should retry. The
    detail names the dependency only; what it said (addresses, its own error
    text) travels as the ``__cause__``, which is logged and never answered."""

    status = 503
    title = "Service unavailable"
    slug = "unavailable"

    def __init__(self, detail: str = "", retry_after_s: int = 2) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


def public_reason(exc: BaseException) -> str:
    """What a client may read about a failure: Pulse's own detail for a 503
    (which names the dependency, never its address), else nothing specific."""
    if isinstance(exc, Unavailable):
        return exc.detail
    return "internal error"
