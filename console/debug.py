"""The admin's view of live asyncio tasks (the goroutine dump), inside the console session.

The API's /debug/tasks wants a bearer token a browser does not send, so admins get the same
dump here. Frames are read on the loop (they change as tasks run), source lines are looked
up in a thread (linecache reads files).
"""

from __future__ import annotations

import asyncio
import linecache

from aiohttp import web

from .core import render, require, route

MAX_FRAMES = 30  # per task, innermost kept


@route
async def tasks(request: web.Request) -> web.StreamResponse:
    require(request, "admin")
    current = asyncio.current_task()
    raw: list[tuple[str, str, list[tuple[str, int, str]]]] = []
    for task in asyncio.all_tasks():
        state = "current" if task is current else ("done" if task.done() else "pending")
        frames = [
            (f.f_code.co_filename, f.f_lineno, f.f_code.co_name)
            for f in task.get_stack(limit=MAX_FRAMES)
        ]
        raw.append((task.get_name(), state, frames))
    raw.sort(key=lambda t: t[0])
    dumped = await asyncio.to_thread(_with_source, raw)
    return render(request, "tasks.html", {"tasks": dumped})


def _with_source(
    raw: list[tuple[str, str, list[tuple[str, int, str]]]],
) -> list[tuple[str, str, str]]:
    out = []
    for name, state, frames in raw:
        lines = []
        for filename, lineno, func in frames:
            source = linecache.getline(filename, lineno).strip()
            lines.append(f'File "{filename}", line {lineno}, in {func}\n    {source}')
        out.append((name, state, "\n".join(lines)))
    return out
