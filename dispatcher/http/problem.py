"""RFC 9457 problem details: every error the API answers is `application/problem+json`."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

CONTENT_TYPE = "application/problem+json"

_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def problem(
    status: int,
    detail: str,
    *,
    pointer: str | None = None,
    retry_after: float | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> web.Response:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if pointer is not None:
        body["errors"] = [{"detail": detail, "pointer": pointer}]
    body.update(extra)
    out_headers = dict(headers or {})
    if retry_after is not None:
        out_headers["Retry-After"] = str(max(1, int(retry_after + 0.999)))
    return web.Response(
        status=status,
        body=msgspec.json.encode(body),
        content_type=CONTENT_TYPE,
        headers=out_headers,
    )
