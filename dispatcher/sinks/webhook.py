"""The webhook sink: one POST per attempt, signed per Standard Webhooks.

The body is the payload bytes exactly as the producer sent them. Headers, later ones winning:
the configured static headers, the message's CloudEvents attributes (``ce-*``), the content
type, then the headers of the delivery contract (``webhook-*``, ``dispatcher-*``,
``traceparent``), which nothing configured or sent by a producer can override.

Outcome: 2xx success; 408, 429 and 5xx retried (``Retry-After`` honoured); 3xx (redirects are
never followed) and other 4xx permanent; connection and DNS errors retried; a target the SSRF
guard refuses permanent. The sink never retries by itself. A 429 or 503 is the receiver
saying it is overloaded (`Overloaded`): the sink only says so, with its Retry-After, and the
pool decides what that means for the pool as a whole (a hold, a lower concurrency).
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Callable

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from ..config import WebhookSinkConfig
from ..errors import ConfigError, Overloaded, Permanent, Retry
from ..message import Job, Message
from ..signing import Signer
from ..ssrf import AddressRefused, ip_literal
from .base import Sink, current_traceparent
from .context import SinkContext

ERROR_TEXT_CHARS = 200
_KEEP_BYTES = 2048  # of a response body, for the error text
_DRAIN_BYTES = 65536  # read up to this much so the connection can be reused
_RETRY_STATUSES = frozenset({408, 429})
_OVERLOADED_STATUSES = frozenset({429, 503})
_PROTECTED = ("webhook-", "dispatcher-")


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After value (delta-seconds or HTTP-date); None if absent
    or unreadable; a date in the past gives 0."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # an HTTP-date is always GMT
            return None
        seconds = when.timestamp() - now
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _clean(value: str) -> bool:
    return "\r" not in value and "\n" not in value and "\0" not in value


class WebhookSink(Sink):
    kind = "webhook"

    def __init__(
        self,
        pool: str,
        config: WebhookSinkConfig,
        ctx: SinkContext,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.pool = pool
        self._url = URL(config.url)
        self._ctx = ctx
        self._clock = clock
        try:
            self._signer = Signer(config.secret) if config.secret else None
        except ValueError as exc:
            raise ConfigError(f"pools.{pool}.sink.secret", str(exc)) from None
        self._static = CIMultiDict(
            (k, v) for k, v in config.headers.items() if not k.lower().startswith(_PROTECTED)
        )
        literal = ip_literal(self._url.raw_host)
        self._refused: str | None = None
        if literal is not None and not ctx.guard.allows(literal):
            self._refused = str(AddressRefused(str(literal)))

    def __repr__(self) -> str:
        return f"WebhookSink(pool={self.pool!r})"  # the URL and secret may hold credentials

    def traceparent(self, message: Message) -> str | None:
        """The traceparent to send: the live span's if the tracing middleware set one."""
        return current_traceparent.get() or message.trace

    def headers(self, job: Job, attempt: int, timestamp: int) -> CIMultiDict[str]:
        message = job.message
        headers = self._static.copy()
        content_type = self._static.get("content-type", "application/json")
        for name, value in message.headers.items():
            lower = name.lower()
            if lower == "content-type":
                if _clean(value):
                    content_type = value
            elif lower.startswith("ce-") and _clean(value):
                headers[lower] = value
        headers["content-type"] = content_type
        headers["webhook-id"] = message.id
        headers["webhook-timestamp"] = str(timestamp)
        if self._signer is not None:
            headers["webhook-signature"] = self._signer.sign(message.id, timestamp, message.payload)
        headers["dispatcher-tag"] = message.tag
        headers["dispatcher-attempt"] = str(attempt)
        traceparent = self.traceparent(message)
        if traceparent and _clean(traceparent):
            headers["traceparent"] = traceparent
        else:
            headers.popall("traceparent", None)
        return headers

    async def deliver(self, job: Job, attempt: int) -> None:
        if self._refused is not None:
            raise Permanent(self._refused)
        headers = self.headers(job, attempt, int(self._clock()))
        session = self._ctx.session()
        try:
            async with session.post(
                self._url,
                data=job.message.payload,
                headers=headers,
                allow_redirects=False,
            ) as response:
                status = response.status
                if 200 <= status < 300:
                    await _drain(response)
                    return
                head = await _drain(response)
                retry_after_header = response.headers.get("Retry-After")
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, AddressRefused):
                raise Permanent(str(exc.os_error)) from None
            raise Retry(f"connection failed: {exc}") from None
        except aiohttp.InvalidURL as exc:
            raise Permanent(f"invalid webhook URL: {exc}") from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise Retry(
                f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            ) from None
        text = head.decode("utf-8", "replace")[:ERROR_TEXT_CHARS].strip()
        error = f"HTTP {status}: {text}" if text else f"HTTP {status}"
        if 300 <= status < 400:
            raise Permanent(f"HTTP {status}: redirect not followed (3xx)")
        if status in _RETRY_STATUSES or status >= 500:
            retry_after = parse_retry_after(retry_after_header, self._clock())
            signal = Overloaded if status in _OVERLOADED_STATUSES else Retry
            raise signal(error, retry_after=retry_after)
        raise Permanent(error)


async def _drain(response: aiohttp.ClientResponse) -> bytes:
    """Read a small body to its end so the connection goes back to the pool (a larger one is
    dropped with its connection); answer its first bytes for error text."""
    head = bytearray()
    total = 0
    while total <= _DRAIN_BYTES:
        chunk = await response.content.read(_DRAIN_BYTES)
        if not chunk:
            break
        total += len(chunk)
        if len(head) < _KEEP_BYTES:
            head += chunk[: _KEEP_BYTES - len(head)]
    return bytes(head)
