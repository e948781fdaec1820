"""Wire format of ingest: read a body within limits and turn it into validated `Publish`
values. Malformed bytes are a 400; well-formed JSON that breaks the schema is a 422 whose
problem names the field with a JSON pointer (in a batch, under the item's index). Nothing
here touches the store. CloudEvents live in `cloudevent.py`.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import math
import re
from collections.abc import Mapping
from typing import Annotated

import msgspec
from aiohttp import web

from .. import strictjson
from ..errors import BadRequest, InvalidMessage, RequestTimeout, TooLarge, field_problem
from ..message import Publish
from ..tags import MAX_TAG_LENGTH, TAG, is_valid_tag

MAX_BATCH = 1000
MAX_DELAY = 366 * 86_400.0  # a year; longer is almost surely a unit mistake (ms for s)
MAX_HEADERS = 64
MAX_HEADER_VALUE = 4096
MAX_IDEMPOTENCY_KEY = 255
MESSAGE_ID = re.compile(r"^[A-Za-z0-9._:~@+=-]{1,128}$")
HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}$")
TRACEPARENT = re.compile(r"^00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}$")
# Control characters (CR, LF and NUL among them) may not travel on into webhook headers.
BAD_HEADER_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _schema_only(**schema: object) -> msgspec.Meta:
    """A rule that `to_publish` checks, for the schema only: the check says what is wrong
    in words of its own, and skips the work where it can (tags are cached)."""
    return msgspec.Meta(extra_json_schema=schema)


class MessageIn(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """One message to publish."""

    # gc=False: a thousand of these per batch would each count towards a GC pass, and
    # their fields (strings, bytes, a dict of strings) can never form a cycle.
    tag: Annotated[str, _schema_only(pattern=TAG.pattern, maxLength=MAX_TAG_LENGTH)]
    payload: Annotated[
        msgspec.Raw, msgspec.Meta(description="any JSON value; delivered as these bytes")
    ]
    id: Annotated[str, _schema_only(pattern=MESSAGE_ID.pattern)] | None = None
    priority: Annotated[int, msgspec.Meta(ge=-(2**31), le=2**31 - 1)] = 0
    delay: Annotated[
        float,
        msgspec.Meta(description="seconds before the first delivery"),
        _schema_only(minimum=0, maximum=MAX_DELAY),
    ] = 0.0
    headers: Annotated[
        dict[
            Annotated[str, _schema_only(pattern=HEADER_NAME.pattern)],
            Annotated[str, _schema_only(maxLength=MAX_HEADER_VALUE)],
        ],
        _schema_only(maxProperties=MAX_HEADERS),
    ] = {}


_single = msgspec.json.Decoder(MessageIn)
_batch = msgspec.json.Decoder(list[MessageIn])
# Producers send few distinct tags, over and over: a dict hit costs a quarter of the regex.
_known_tag = functools.lru_cache(maxsize=4096)(is_valid_tag)


async def read_body(request: web.Request, limit: int, timeout: float) -> bytes:
    """The whole body, refusing (413) as soon as it is known to exceed `limit`: from
    Content-Length before reading anything, or while reading a chunked body. A body that
    trickles in for longer than `timeout` seconds is cut off (408); other requests go on."""
    length = request.content_length
    if length is not None and length > limit:
        raise TooLarge(f"the body is {length} bytes; the limit is {limit}")
    # A small body usually came in the same packet as the headers: take what is buffered
    # and skip the timeout and iterator machinery when that is all of it.
    first = request.content.read_nowait()
    if length is not None and len(first) == length:
        return first
    chunks: list[bytes] = [first] if first else []
    size = len(first)
    if size > limit:
        raise TooLarge(f"the body exceeds the limit of {limit} bytes")
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.content.iter_chunked(65536):
                size += len(chunk)
                if size > limit:
                    raise TooLarge(f"the body exceeds the limit of {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestTimeout(f"the body did not arrive within {timeout:g} s") from None
    return b"".join(chunks)


def check_json(body: bytes, *, depth: bool = True) -> None:
    try:
        strictjson.check(body, depth=depth)
    except strictjson.JsonError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None


def decode_single(body: bytes, headers: Mapping[str, str]) -> Publish:
    check_json(body, depth=False)
    try:
        item = _single.decode(body)
    except msgspec.ValidationError as exc:
        raise schema_error(exc) from None
    except msgspec.DecodeError as exc:  # pragma: no cover - check_json saw it first
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    key = headers.get("Idempotency-Key")
    if key is not None:
        key_id = idempotency_id(key)
        if item.id is not None and item.id != key_id:
            raise InvalidMessage("id and the Idempotency-Key header differ", pointer="/id")
        item.id = key_id
    return to_publish(item, None, trace_of(headers), depth=1)


def decode_batch(body: bytes, headers: Mapping[str, str]) -> list[Publish]:
    check_json(body, depth=False)
    if "Idempotency-Key" in headers:
        raise InvalidMessage("Idempotency-Key applies to one message; give batch items an id")
    try:
        items = _batch.decode(body)
    except msgspec.ValidationError as exc:
        raise schema_error(exc) from None
    except msgspec.DecodeError as exc:  # pragma: no cover - check_json saw it first
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    check_batch_size(len(items))
    trace = trace_of(headers)
    return [to_publish(item, i, trace, depth=2) for i, item in enumerate(items)]


def check_batch_size(n: int) -> None:
    if n > MAX_BATCH:
        raise TooLarge(f"a batch holds at most {MAX_BATCH} messages, not {n}")
    if n == 0:
        raise InvalidMessage("a batch holds at least one message", pointer="")


def idempotency_id(key: str) -> str:
    """The message id an Idempotency-Key stands for: the key itself when it is a valid id,
    else a digest of it (so any printable key of up to 255 characters works)."""
    if not key or len(key) > MAX_IDEMPOTENCY_KEY or BAD_HEADER_VALUE.search(key):
        raise BadRequest(
            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters",
            pointer="/headers/Idempotency-Key",
        )
    if MESSAGE_ID.match(key):
        return key
    return "idem_" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:40]


def trace_of(headers: Mapping[str, str]) -> str | None:
    trace = headers.get("traceparent")
    # An invalid traceparent is ignored, as W3C Trace Context says, not refused.
    return trace if trace and TRACEPARENT.match(trace) else None


def check_tag(tag: str, pointer: str) -> None:
    if not tag:
        raise InvalidMessage("tag is empty", pointer=pointer)
    if len(tag) > MAX_TAG_LENGTH:
        raise InvalidMessage(f"tag is longer than {MAX_TAG_LENGTH} characters", pointer=pointer)
    if not is_valid_tag(tag):
        raise InvalidMessage("tag must be dot-separated tokens of [A-Za-z0-9_:-]", pointer=pointer)


def check_payload_depth(payload: bytes, depth: int, pointer: str) -> None:
    """The payload sits `depth` levels deep in the document; the whole may nest 64 deep."""
    try:
        strictjson.check_payload_depth(payload, depth)
    except strictjson.JsonError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}", pointer=pointer) from None


def to_publish(item: MessageIn, index: int | None, trace: str | None, *, depth: int) -> Publish:
    """Check the rules msgspec's types cannot express; `index` is the item's place in a
    batch (None: a single message). The JSON pointers of problems are only built for one."""
    if not _known_tag(item.tag):
        check_tag(item.tag, f"{_prefix(index)}/tag")
    payload = bytes(item.payload)
    # check_payload_depth's own first test, so that the common case builds no pointer; a
    # payload with fewer bytes than the brackets it would need is not even counted
    room = strictjson.MAX_DEPTH - depth
    if len(payload) > room and payload.count(b"{") + payload.count(b"[") > room:
        check_payload_depth(payload, depth, f"{_prefix(index)}/payload")
    if item.id is not None and not MESSAGE_ID.match(item.id):
        raise InvalidMessage(
            "id must be 1 to 128 of [A-Za-z0-9._:~@+=-]", pointer=f"{_prefix(index)}/id"
        )
    delay = item.delay
    if delay and (not math.isfinite(delay) or not 0 <= delay <= MAX_DELAY):  # NaN is truthy
        raise InvalidMessage(
            f"delay must be between 0 and {MAX_DELAY:g} seconds",
            pointer=f"{_prefix(index)}/delay",
        )
    return Publish(
        tag=item.tag,
        payload=payload,
        id=item.id,
        priority=item.priority,
        delay=item.delay,
        headers=check_headers(item.headers, f"{_prefix(index)}/headers") if item.headers else {},
        trace=trace,
    )


def _prefix(index: int | None) -> str:
    return "" if index is None else f"/{index}"


def check_headers(headers: Mapping[str, str], prefix: str) -> dict[str, str]:
    if len(headers) > MAX_HEADERS:
        raise InvalidMessage(f"at most {MAX_HEADERS} headers", pointer=prefix)
    out: dict[str, str] = {}
    for name, value in headers.items():
        where = f"{prefix}/{escape_pointer(name)}"
        if not HEADER_NAME.match(name):
            raise InvalidMessage("header names are HTTP tokens", pointer=where)
        if BAD_HEADER_VALUE.search(value):
            raise InvalidMessage("header values may not hold control characters", pointer=where)
        if len(value) > MAX_HEADER_VALUE:
            raise InvalidMessage(f"header values are at most {MAX_HEADER_VALUE}", pointer=where)
        out[name.lower()] = value
    return out


def escape_pointer(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def schema_error(exc: msgspec.ValidationError) -> InvalidMessage:
    """msgspec's 'Expected `int`, got `str` - at `$.priority`' as a 422 naming '/priority'."""
    detail, pointer = schema_problem(exc, "")
    return InvalidMessage(detail, pointer=pointer)


def schema_problem(exc: msgspec.ValidationError, prefix: str) -> tuple[str, str]:
    """msgspec's 'Expected `int`, got `str` - at `$.priority`' as (detail, '/priority')."""
    found = field_problem(exc)
    return found.problem, prefix + "".join(f"/{escape_pointer(step)}" for step in found.path)
