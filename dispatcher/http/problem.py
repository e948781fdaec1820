"""RFC 9457 problem details: every error the API answers is `application/problem+json`."""

from __future__ import annotations

from typing import Annotated

import msgspec
from aiohttp import web

from .views import json_response

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


class ProblemError(msgspec.Struct):
    detail: str
    pointer: Annotated[
        str,
        msgspec.Meta(description="where: a JSON pointer into the body, or ?name of a parameter"),
    ]


class Problem(msgspec.Struct):
    """RFC 9457 problem details: every error the API answers is one."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[ProblemError] | msgspec.UnsetType = msgspec.UNSET


def problem(
    status: int,
    detail: str,
    *,
    pointer: str | None = None,
    retry_after: float | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body = Problem("about:blank", _TITLES.get(status, "Error"), status, detail)
    if pointer is not None:
        body.errors = [ProblemError(detail, pointer)]
    out_headers = dict(headers or {})
    if retry_after is not None:
        out_headers["Retry-After"] = str(max(1, int(retry_after + 0.999)))
    return json_response(body, status, out_headers, CONTENT_TYPE)
