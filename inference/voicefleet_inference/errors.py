"""Domain errors of the inference core: what went wrong, never how HTTP says it.

The scheduler, the engines' callers and the request decoders raise these; the server
(``server/errors.py``) is the one place that turns them into status codes and error
bodies, and the router can map the same errors its own way. ``code`` is a stable,
machine-readable name; ``retry_after_s`` is set where waiting and retrying can help.

::

    ServiceError
    ├── InvalidRequest        a parameter is missing, mistyped or out of range
    ├── Unauthorized          the pod requires a bearer token the request did not carry
    ├── PayloadTooLarge       the request is larger than any valid one could be
    ├── QueueFull             the bounded queue is full (retry_after_s set)
    ├── Unavailable           this replica cannot take requests now (retry_after_s set)
    │   ├── NotReady          the model is loading, or every worker died
    │   ├── Draining          shutting down, finishing accepted work
    │   └── ShuttingDown      accepted, but the drain grace ran out before it ran
    ├── RequestTimeout        queue wait plus synthesis exceeded the request timeout
    ├── SynthesisFailed       the engine failed
    └── ClientDisconnected    the client went away before its answer was ready
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "ClientDisconnected",
    "Draining",
    "InvalidRequest",
    "NotReady",
    "PayloadTooLarge",
    "QueueFull",
    "RequestTimeout",
    "ServiceError",
    "ShuttingDown",
    "SynthesisFailed",
    "Unauthorized",
    "Unavailable",
]


class ServiceError(Exception):
    """Base of every error the core reports deliberately; subclasses fix the code."""

    default_code: ClassVar[str] = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.default_code
        self.retry_after_s = retry_after_s


class InvalidRequest(ServiceError):
    """A parameter is missing, mistyped, out of range or unsupported; ``param`` names it."""

    default_code = "invalid_value"


class Unauthorized(ServiceError):
    """No bearer token, or a wrong one, where the server requires one (``auth_token``)."""

    default_code = "unauthorized"


class PayloadTooLarge(ServiceError):
    """The request body is larger than any valid request could be."""

    default_code = "payload_too_large"


class QueueFull(ServiceError):
    """The bounded queue is full; ``retry_after_s`` is the queued work divided by workers."""

    default_code = "queue_full"


class Unavailable(ServiceError):
    """This replica cannot take requests now; another replica (or a retry) can."""

    default_code = "unavailable"


class NotReady(Unavailable):
    """The model is still loading, or every engine worker died."""

    default_code = "not_ready"


class Draining(Unavailable):
    """The server got SIGTERM and is finishing accepted work before it exits."""

    default_code = "draining"


class ShuttingDown(Unavailable):
    """The request was accepted but the drain grace ran out before it ran."""

    default_code = "shutdown"


class RequestTimeout(ServiceError):
    """Queue wait plus synthesis took longer than the request timeout."""

    default_code = "timeout"


class SynthesisFailed(ServiceError):
    """The engine failed. Never turned into a success with silence."""

    default_code = "synthesis_failed"


class ClientDisconnected(ServiceError):
    """The client went away before its answer was ready (counted, never answered)."""

    default_code = "client_disconnected"
