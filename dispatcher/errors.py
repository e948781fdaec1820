"""The one exception tree of the dispatcher.

    DispatcherError
     ├── ConfigError            a setting was refused; carries the dotted path of the key
     ├── Rejected               a request was refused, nothing changed (maps to an HTTP status)
     │    ├── BadRequest        400: an unparseable body (bad JSON or UTF-8) or query
     │    ├── RequestTimeout    408: the body trickled in for longer than allowed
     │    ├── TooLarge          413: the body exceeds server.max_body_bytes
     │    ├── InvalidMessage    422: valid JSON that breaks the schema
     │    ├── Unroutable        422: no route matches the tag
     │    ├── IdConflict        422: an id reused within the dedup window for other content
     │    ├── BacklogFull       429: a target pool's backlog reached max_backlog
     │    └── Unavailable       503: store down, disk nearly full, or draining
     ├── NotFound               an unknown pool or message
     ├── StoreError             the store failed (I/O, corruption, connection); HTTP 503
     │    └── PartlyDone        a bulk operation failed after committing some of its chunks
     └── DeliveryError          raised by a sink to classify a failed attempt
          ├── Retry             retry later (optionally not before `retry_after`)
          │    └── Overloaded   the receiver is overloaded (429, 503): the pool backs off
          └── Permanent         never retry: straight to the DLQ

"Retry later" and "reject now" are signals, separate from real failures: any other exception
a sink raises is a retryable failure with its text recorded as the attempt's error.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import msgspec


class DispatcherError(Exception):
    """Base of every error the dispatcher raises on purpose."""


class ConfigError(DispatcherError):
    """A configuration value was refused. `path` names the key (`pools.email.rate`)."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}" if path else problem)
        self.path = path
        self.problem = problem


class Rejected(DispatcherError):
    """Ingest refused a message; nothing was stored."""

    status = 400
    reason = "invalid"  # the `reason` label of dispatcher_messages_rejected_total
    retry_after: float | None = None

    def __init__(self, detail: str, *, pointer: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.pointer = pointer


class BadRequest(Rejected):
    status = 400
    reason = "invalid"


class RequestTimeout(Rejected):
    status = 408
    reason = "invalid"


class TooLarge(Rejected):
    status = 413
    reason = "too_large"


class InvalidMessage(Rejected):
    status = 422
    reason = "invalid"


class Unroutable(Rejected):
    status = 422
    reason = "unroutable"


class IdConflict(Rejected):
    """A producer-given id (or Idempotency-Key) seen within the dedup window came back with
    a different tag or payload. `index` is the item's position in its batch."""

    status = 422
    reason = "invalid"

    def __init__(self, message_id: str, index: int = 0) -> None:
        super().__init__(
            f"id {message_id!r} was used within the dedup window for a different tag or payload"
        )
        self.message_id = message_id
        self.index = index


class BacklogFull(Rejected):
    status = 429
    reason = "backlog_full"

    def __init__(self, pool: str, limit: int, retry_after: float = 1.0) -> None:
        super().__init__(f"pool {pool!r} has reached its max_backlog of {limit}")
        self.pool = pool
        self.retry_after = retry_after


class Unavailable(Rejected):
    status = 503
    reason = "unavailable"

    def __init__(self, detail: str, retry_after: float = 5.0) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class NotFound(DispatcherError):
    """An unknown pool or message id."""


class StoreError(DispatcherError):
    """The store could not do what was asked (I/O error, lost connection)."""


class PartlyDone(StoreError):
    """A bulk operation (DLQ replay or purge) that runs as several commits failed after
    some of them: `done` counts what was committed, per pool, so callers can account for
    it (backlog reservations, metrics, the audit log) before passing the failure on."""

    def __init__(self, cause: StoreError, done: dict[str, int]) -> None:
        super().__init__(f"{cause} (after {sum(done.values())} were done)")
        self.done = done


class DeliveryError(DispatcherError):
    """Raised by a sink (or a python handler) to say how an attempt failed."""

    retryable = True
    overloaded = False  # the receiver's problem, not the message's (see Overloaded)

    def __init__(self, detail: str = "", *, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after


class Retry(DeliveryError):
    """Try again later; `retry_after` (seconds) overrides the computed backoff when longer."""


class Overloaded(Retry):
    """The receiver says it has too much to do (a 429 or a 503). Not only this message's
    business: with `retry_after` the whole pool holds until then (up to the pool's
    `circuit.max_hold`), and an adaptive pool lowers its concurrency."""

    overloaded = True


class Permanent(DeliveryError):
    """The attempt can never succeed (a 4xx, a malformed payload): dead-letter at once."""

    retryable = False


class FieldProblem(NamedTuple):
    """A msgspec validation error taken apart, for callers that word it their own way
    (config: `pools.email.retry.max_attempts: ...`; the API: a JSON pointer)."""

    path: tuple[str, ...]  # keys and list indexes down to the offending field
    problem: str  # msgspec's words without backticks: "Expected int, got str"
    kind: str  # "unknown" (a field not in the schema), "missing" or "invalid"


_AT = re.compile(r"^(?P<problem>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_STEP = re.compile(r"\.([^.\[]+)|\[([^\]]+)\]")
_FIELD = re.compile(r"^Object (contains unknown|missing required) field `([^`]+)`")


def field_problem(exc: msgspec.ValidationError) -> FieldProblem:
    match = _AT.match(str(exc))
    assert match is not None  # the pattern matches any text
    path = tuple(a or b for a, b in _STEP.findall(match["path"] or ""))
    field = _FIELD.match(match["problem"])
    kind = "invalid"
    if field:  # name the field itself, not the object holding it
        kind = "unknown" if field[1] == "contains unknown" else "missing"
        path = (*path, field[2])
    return FieldProblem(path, match["problem"].replace("`", ""), kind)
