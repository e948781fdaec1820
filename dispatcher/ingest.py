"""Wire format of ingest: read a body within limits and turn it into validated `Publish`
values. Malformed bytes are a 400; well-formed JSON that breaks the schema is a 422 whose
problem names the field with a JSON pointer. Nothing here touches the store."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Annotated

import msgspec
from aiohttp import web

from .dispatcher import Publish
from .errors import InvalidMessage, Rejected
from .routing import MAX_TAG_LENGTH, is_valid_tag

MAX_DELAY = 366 * 86_400.0  # a year; longer is almost surely a unit mistake (ms for s)
MAX_HEADERS = 64
MESSAGE_ID = re.compile(r"^[A-Za-z0-9._:~@+=-]{1,128}$")
HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}$")
TRACEPARENT = re.compile(r"^00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}$")
_BAD_HEADER_VALUE = re.compile(r"[\r\n\x00]")


class BadRequest(Rejected):
    """400: the body is not parseable (bad JSON, bad UTF-8...)."""

    status = 400
    reason = "invalid"


class TooLarge(Rejected):
    status = 413
    reason = "too_large"


class MessageIn(msgspec.Struct, forbid_unknown_fields=True):
    tag: str
    payload: msgspec.Raw
    id: str | None = None
    priority: Annotated[int, msgspec.Meta(ge=-(2**31), le=2**31 - 1)] = 0
    delay: float = 0.0
    headers: dict[str, str] = {}


_single = msgspec.json.Decoder(MessageIn)


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole body, refusing (413) as soon as it is known to exceed `limit`: from
    Content-Length before reading anything, or while reading a chunked body."""
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge(f"the body is {request.content_length} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(65536):
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"the body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def decode_single(body: bytes, headers: Mapping[str, str]) -> Publish:
    try:
        item = _single.decode(body)
    except msgspec.ValidationError as exc:
        detail, pointer = _schema_problem(exc)
        raise InvalidMessage(detail, pointer=pointer) from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    key = headers.get("Idempotency-Key")
    if key is not None and item.id is None:
        item.id = key
    trace = headers.get("traceparent")
    return to_publish(item, "", trace if trace and TRACEPARENT.match(trace) else None)


def to_publish(item: MessageIn, prefix: str, trace: str | None) -> Publish:
    """Check the rules msgspec's types cannot express; `prefix` is the item's JSON pointer."""
    if not item.tag:
        raise InvalidMessage("tag is empty", pointer=f"{prefix}/tag")
    if len(item.tag) > MAX_TAG_LENGTH:
        raise InvalidMessage(
            f"tag is longer than {MAX_TAG_LENGTH} characters", pointer=f"{prefix}/tag"
        )
    if not is_valid_tag(item.tag):
        raise InvalidMessage(
            "tag must be dot-separated tokens of [A-Za-z0-9_:-]", pointer=f"{prefix}/tag"
        )
    if item.id is not None and not MESSAGE_ID.match(item.id):
        raise InvalidMessage("id must be 1 to 128 of [A-Za-z0-9._:~@+=-]", pointer=f"{prefix}/id")
    if not math.isfinite(item.delay) or not 0 <= item.delay <= MAX_DELAY:
        raise InvalidMessage(
            f"delay must be between 0 and {MAX_DELAY:g} seconds", pointer=f"{prefix}/delay"
        )
    if len(item.headers) > MAX_HEADERS:
        raise InvalidMessage(f"at most {MAX_HEADERS} headers", pointer=f"{prefix}/headers")
    headers: dict[str, str] = {}
    for name, value in item.headers.items():
        where = f"{prefix}/headers/{_escape(name)}"
        if not HEADER_NAME.match(name):
            raise InvalidMessage("header names are HTTP tokens", pointer=where)
        if _BAD_HEADER_VALUE.search(value):
            raise InvalidMessage("header values may not hold CR, LF or NUL", pointer=where)
        headers[name.lower()] = value
    return Publish(
        tag=item.tag,
        payload=bytes(item.payload),
        id=item.id,
        priority=item.priority,
        delay=item.delay,
        headers=headers,
        trace=trace,
    )


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


_AT = re.compile(r"^(?P<problem>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)


def _schema_problem(exc: msgspec.ValidationError) -> tuple[str, str | None]:
    """msgspec's 'Expected `int`, got `str` - at `$.priority`' as (detail, '/priority')."""
    match = _AT.match(str(exc))
    assert match is not None  # the pattern matches any text
    problem = match["problem"].replace("`", "")
    path = match["path"]
    if path is None:
        missing = re.match(r"Object missing required field (\S+)", problem)
        return problem, f"/{missing[1]}" if missing else ""
    pointer = re.sub(r"\[(\d+)\]", r"/\1", path).replace(".", "/")
    unknown = re.match(r"Object contains unknown field (\S+)", problem)
    if unknown:
        pointer = f"{pointer}/{unknown[1]}"
    return problem, pointer
