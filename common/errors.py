"""The error taxonomy shared by the services: each class says its HTTP status and retriability."""

from __future__ import annotations


class AppError(Exception):
    """Base class: ``http_status`` is what the HTTP edge answers, ``retriable`` whether to retry."""

    http_status = 500
    retriable = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(AppError):
    """Malformed input: a bad number, an unknown id, a rule of the API broken. Nothing changed."""

    http_status = 400


class NotFound(BadRequest):
    """An unknown id. The API answers 400 for these, like any other bad request."""


class Refused(BadRequest):
    """A valid request the current state refuses (not enough stock or credit, order paid)."""


class RequestIdReused(BadRequest):
    """The request's X-Request-Id (its idempotency key) already did something else to this
    entity: a retry asks for the same thing, so this is another request under a used key."""

    def __init__(self, entity: str) -> None:
        super().__init__(f"this X-Request-Id was already used for another request on {entity}")


class Unavailable(AppError):
    """A dependency (Redis, the broker) did not answer in time; the effect did not happen."""

    http_status = 503
    retriable = True
