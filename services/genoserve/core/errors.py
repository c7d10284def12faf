"""One exception hierarchy for the whole package.

Every error carries the name of its gRPC status code (a plain string, so that family code stays
free of gRPC); the API layer maps it to a status in one interceptor. Raise with ``from`` to keep
the cause.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Characters of a client's value quoted in an error (``quoted``); the rest is counted, not echoed.
QUOTED_CHARS = 64
#: Bytes (UTF-8) of an error message sent to a client (``clipped``): gRPC sends the message twice
#: in its trailing metadata (``grpc-message``, percent-encoded, and inside
#: ``grpc-status-details-bin``), and a client refuses metadata over 8 KiB as RESOURCE_EXHAUSTED,
#: which would hide the real status.
MAX_MESSAGE_BYTES = 1024


def quoted(value: str, limit: int = QUOTED_CHARS) -> str:
    """``repr(value)``, or for a value longer than ``limit`` characters the repr of its first
    ``limit`` and how long it is: for error messages that name a client's value (an id, a name),
    so that a megabyte id does not come back as a megabyte message."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"


def clipped(text: str, limit: int = MAX_MESSAGE_BYTES) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes (at a character boundary), saying how much
    was left out."""
    data = text.encode("utf-8", errors="replace")
    if len(data) <= limit:
        return text
    note = f" ... ({len(text)} characters in all)"
    head = data[: max(0, limit - len(note.encode()))].decode("utf-8", errors="ignore")
    return head + note


@dataclass(frozen=True)
class FieldViolation:
    """One broken rule on one field, as in ``google.rpc.BadRequest.FieldViolation``."""

    field: str
    description: str


class GenoserveError(Exception):
    """Base of every error genoserve raises on purpose. Unexpected errors are INTERNAL."""

    code: str = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(GenoserveError):
    """The request (or one of its items) breaks a rule; ``violations`` name field and rule."""

    code = "INVALID_ARGUMENT"

    def __init__(self, message: str, violations: list[FieldViolation] | None = None) -> None:
        super().__init__(message)
        self.violations = list(violations or [])

    @classmethod
    def field(cls, field: str, rule: str) -> InvalidArgument:
        """One violation: ``field`` broke ``rule``; the message says both."""
        return cls(f"{field}: {rule}", [FieldViolation(field, rule)])


class NotFound(GenoserveError):
    code = "NOT_FOUND"


class AlreadyExists(GenoserveError):
    code = "ALREADY_EXISTS"


class FailedPrecondition(GenoserveError):
    code = "FAILED_PRECONDITION"


class ResourceExhausted(GenoserveError):
    """A bounded queue is full; the client should back off and retry."""

    code = "RESOURCE_EXHAUSTED"


class DeadlineExceeded(GenoserveError):
    """The client's deadline passed before the work was computed."""

    code = "DEADLINE_EXCEEDED"


class Unavailable(GenoserveError):
    """Not ready (models loading) or shutting down; safe to retry elsewhere."""

    code = "UNAVAILABLE"


class Unauthenticated(GenoserveError):
    code = "UNAUTHENTICATED"


class PermissionDenied(GenoserveError):
    code = "PERMISSION_DENIED"


class Cancelled(GenoserveError):
    code = "CANCELLED"


class ModelLoadError(GenoserveError):
    """A model in the repository cannot be served; the message is the reason shown to operators."""

    code = "FAILED_PRECONDITION"


class InternalError(GenoserveError):
    """An invariant broke inside genoserve; clients see a generic message, the cause is logged."""

    code = "INTERNAL"
