"""CloudEvents 1.0 over HTTP, on the ingest endpoints: structured mode
(`application/cloudevents+json`), binary mode (`ce-*` headers, the body is the data) and
batched mode (`application/cloudevents-batch+json`).

Mapping onto a message: `type` is the tag; `source` and `id` together are the dedup key, so
the message id is a digest of both (`ce_` + 40 hex digits: the same event from the same
source is accepted once, the same id from two sources twice); `data` is the payload (a JSON
value as its bytes, a string as its UTF-8 text, `data_base64` decoded); `datacontenttype`
becomes the delivery's content type; every other attribute, `id` and `source` included,
travels as a `ce-<name>` header, so a webhook receives the event in binary mode (values
percent-encoded as the HTTP binding says: space, `"`, `%` and anything outside printable
ASCII; binary-mode headers are decoded on the way in).
`traceparent` (an extension in structured mode, `ce-traceparent` or `traceparent` in binary
mode) is the creation trace context.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar
from urllib.parse import quote, unquote

import msgspec

from ..errors import InvalidMessage
from ..message import Publish
from ..tags import MAX_TAG_LENGTH, TAG
from .ingest import (
    MAX_HEADER_VALUE,
    TRACEPARENT,
    check_batch_size,
    check_json,
    check_payload_depth,
    check_tag,
    trace_of,
)

STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
SPECVERSION = "1.0"
_NAME = re.compile(r"^[a-z0-9]{1,20}$")
_Text = Annotated[str, msgspec.Meta(min_length=1)]


class CloudEvent(msgspec.Struct):
    """A CloudEvent in structured mode. `type` is the tag; `source` and `id` together are
    the dedup key. Other attributes (extensions) are strings, integers or booleans and
    travel as `ce-` headers."""

    # Events are read attribute by attribute (`_from_structured`: extensions are open-ended),
    # so this struct decodes nothing. It is the events' schema, and names the required
    # attributes, in the order they are checked.
    SCHEMA_EXTRA: ClassVar[dict[str, object]] = {
        "additionalProperties": {"type": ["string", "integer", "boolean"]}
    }

    id: _Text
    source: _Text
    specversion: Annotated[str, msgspec.Meta(extra_json_schema={"const": SPECVERSION})]
    type: Annotated[str, msgspec.Meta(max_length=MAX_TAG_LENGTH, pattern=TAG.pattern)]
    datacontenttype: str | msgspec.UnsetType = msgspec.UNSET
    data: Any = msgspec.UNSET
    data_base64: str | msgspec.UnsetType = msgspec.UNSET


_REQUIRED = tuple(f.encode_name for f in msgspec.structs.fields(CloudEvent) if f.required)
_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"%')
_decode_event = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode
_decode_events = msgspec.json.Decoder(list[dict[str, msgspec.Raw]]).decode
_decode_attr = msgspec.json.Decoder(str | int | bool).decode
_decode_str = msgspec.json.Decoder(str).decode


def is_json_type(content_type: str | None) -> bool:
    if not content_type:
        return True
    base = content_type.split(";", 1)[0].strip().lower()
    return base == "application/json" or base.endswith("+json") or base == "text/json"


def message_id(source: str, event_id: str) -> str:
    digest = hashlib.sha256(f"{source}\x00{event_id}".encode("utf-8", "surrogatepass"))
    return "ce_" + digest.hexdigest()[:40]


def decode_structured(body: bytes, headers: Mapping[str, str]) -> Publish:
    check_json(body, depth=False)
    try:
        event = _decode_event(body)
    except msgspec.ValidationError:
        raise InvalidMessage("a structured CloudEvent is a JSON object", pointer="") from None
    return _from_structured(event, "", trace_of(headers), depth=1)


def decode_batch(body: bytes, headers: Mapping[str, str]) -> list[Publish]:
    check_json(body, depth=False)
    try:
        events = _decode_events(body)
    except msgspec.ValidationError:
        raise InvalidMessage("a CloudEvents batch is an array of event objects") from None
    check_batch_size(len(events))
    trace = trace_of(headers)
    return [_from_structured(e, f"/{i}", trace, depth=2) for i, e in enumerate(events)]


def _from_structured(
    event: dict[str, msgspec.Raw], prefix: str, trace: str | None, *, depth: int
) -> Publish:
    attrs: dict[str, str] = {}
    for name, raw in event.items():
        if name in ("data", "data_base64"):
            continue
        where = f"{prefix}/{name}"
        if not _NAME.match(name):
            raise InvalidMessage("attribute names are 1 to 20 of [a-z0-9]", pointer=where)
        try:
            value = _decode_attr(raw)
        except msgspec.ValidationError:
            raise InvalidMessage(
                "attribute values are strings, integers or booleans", pointer=where
            ) from None
        attrs[name] = _text(value)
    content_type = attrs.get("datacontenttype")
    payload = b""
    if "data" in event and "data_base64" in event:
        raise InvalidMessage("give data or data_base64, not both", pointer=f"{prefix}/data")
    if "data" in event:
        data = bytes(event["data"])
        check_payload_depth(data, depth, f"{prefix}/data")
        if is_json_type(content_type):
            payload = data
        else:
            try:
                payload = _decode_str(data).encode("utf-8")
            except msgspec.ValidationError:
                raise InvalidMessage(
                    f"data of type {content_type} must be a JSON string", pointer=f"{prefix}/data"
                ) from None
    elif "data_base64" in event:
        try:
            payload = base64.b64decode(_decode_str(event["data_base64"]), validate=True)
        except (msgspec.ValidationError, binascii.Error, ValueError):
            raise InvalidMessage(
                "data_base64 must be a base64 string", pointer=f"{prefix}/data_base64"
            ) from None
    own_trace = attrs.get("traceparent")
    if own_trace is not None and TRACEPARENT.match(own_trace):
        trace = own_trace
    return _publish(attrs, payload, prefix, trace)


def decode_binary(body: bytes, headers: Mapping[str, str]) -> Publish:
    """Binary mode: attributes in `ce-*` headers, the body is the data, as it is."""
    attrs: dict[str, str] = {}
    for name, value in headers.items():
        lower = name.lower()
        if not lower.startswith("ce-"):
            continue
        attr = lower[3:]
        if not _NAME.match(attr):
            raise InvalidMessage(
                "attribute names are 1 to 20 of [a-z0-9]", pointer=f"/headers/{name}"
            )
        try:
            attrs[attr] = unquote(value, errors="strict")
        except UnicodeDecodeError:
            raise InvalidMessage(
                "percent-encoding of something not UTF-8", pointer=f"/headers/{name}"
            ) from None
    content_type = headers.get("Content-Type")
    if content_type:
        attrs["datacontenttype"] = content_type
    if body and is_json_type(content_type):
        check_json(body)
    trace = attrs.get("traceparent") or headers.get("traceparent")
    valid = trace if trace and TRACEPARENT.match(trace) else None
    return _publish(attrs, body, "/headers/ce-", valid)


def _publish(attrs: dict[str, str], payload: bytes, prefix: str, trace: str | None) -> Publish:
    sep = "" if prefix.endswith("-") else "/"
    for name in _REQUIRED:
        if not attrs.get(name):
            where = f"{prefix}{sep}{name}"
            raise InvalidMessage(f"{name} is required and non-empty", pointer=where)
    if attrs["specversion"] != SPECVERSION:
        raise InvalidMessage(
            f"specversion must be {SPECVERSION}", pointer=f"{prefix}{sep}specversion"
        )
    check_tag(attrs["type"], f"{prefix}{sep}type")
    headers: dict[str, str] = {}
    for name, value in attrs.items():
        encoded = quote(value, safe=_SAFE, errors="surrogatepass")
        if len(encoded) > MAX_HEADER_VALUE:
            raise InvalidMessage(
                f"attribute values are at most {MAX_HEADER_VALUE} characters (encoded)",
                pointer=f"{prefix}{sep}{name}",
            )
        if name == "datacontenttype":
            headers["content-type"] = encoded
        elif name != "traceparent":
            headers[f"ce-{name}"] = encoded
    return Publish(
        tag=attrs["type"],
        payload=payload,
        id=message_id(attrs["source"], attrs["id"]),
        headers=headers,
        trace=trace,
    )


def _text(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
