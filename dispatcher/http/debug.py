"""`GET /debug/tasks`: the goroutine dump of asyncio (admin scope).

Like Go's `pprof/goroutine?debug=1`, tasks with identical stacks are grouped with a count,
largest group first, so 64 idle workers of a pool are one entry and the odd task stuck
somewhere else stands out. `?format=json` answers `{tasks: [{name, state, waiting_on,
stack}]}`, one entry per task.

`Task.get_stack()` shows only the outermost frame of a suspended coroutine, so the stack is
read by following the chain of awaited coroutines (`cr_await`) down to what the task waits
on. Frames are read on the loop (they change as tasks run); source lines are looked up in a
thread, because linecache reads files.
"""

from __future__ import annotations

import asyncio
import linecache
import sys
import types
from typing import Any

import msgspec
from aiohttp import web

from .views import json_response

MAX_FRAMES = 64

Frame = tuple[str, int, str]  # filename, line, function


class TaskInfo(msgspec.Struct):
    name: str
    state: str  # running, pending or cancelling
    waiting_on: str | None
    stack: list[str]


class TaskList(msgspec.Struct):
    tasks: list[TaskInfo]


def _running_frames(task: asyncio.Task[Any]) -> list[Frame]:
    """The task asking for the dump is running: its stack is the live Python stack."""
    coro = task.get_coro()
    outermost = coro.cr_frame if isinstance(coro, types.CoroutineType) else None
    frames: list[Frame] = []
    frame: types.FrameType | None = sys._getframe(2)
    while frame is not None and len(frames) < MAX_FRAMES:
        frames.append((frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_qualname))
        if frame is outermost:
            break
        frame = frame.f_back
    frames.reverse()
    return frames


def _frames(task: asyncio.Task[Any]) -> tuple[list[Frame], str | None]:
    """Outermost first, down to the innermost awaited coroutine; and what that one awaits."""
    if task is asyncio.current_task():
        return _running_frames(task), None
    frames: list[Frame] = []
    awaited: object = task.get_coro()
    while awaited is not None and len(frames) < MAX_FRAMES:
        if isinstance(awaited, types.CoroutineType):
            frame, nxt = awaited.cr_frame, awaited.cr_await
        elif isinstance(awaited, types.GeneratorType):
            frame, nxt = awaited.gi_frame, awaited.gi_yieldfrom
        else:
            break
        if frame is None:
            break
        code = frame.f_code
        frames.append((code.co_filename, frame.f_lineno, code.co_qualname))
        awaited = nxt
    # What the innermost coroutine waits on: asyncio keeps it as the task's waiter future.
    waiter = getattr(task, "_fut_waiter", None)
    waiting_on = None
    if frames:
        waiting_on = frames[-1][2]
        if waiter is not None:
            waiting_on = f"{waiting_on} ({type(waiter).__name__})"
    return frames, waiting_on


def _render_frame(frame: Frame) -> str:
    filename, line, function = frame
    source = linecache.getline(filename, line).strip()
    return f"{filename}:{line} {function}" + (f"  {source}" if source else "")


def snapshot() -> list[tuple[str, str, str | None, list[Frame]]]:
    """Every live task of the running loop: name, state, what it waits on, frames."""
    current = asyncio.current_task()
    out = []
    for task in asyncio.all_tasks():
        state = "running" if task is current else ("cancelling" if task.cancelling() else "pending")
        frames, waiting_on = _frames(task)
        out.append((task.get_name(), state, waiting_on, frames))
    out.sort(key=lambda t: t[0])
    return out


def render_json(tasks: list[tuple[str, str, str | None, list[Frame]]]) -> TaskList:
    return TaskList(
        [
            TaskInfo(name, state, waiting, [_render_frame(f) for f in frames])
            for name, state, waiting, frames in tasks
        ]
    )


def render_text(tasks: list[tuple[str, str, str | None, list[Frame]]]) -> str:
    groups: dict[tuple[Frame, ...], list[tuple[str, str, str | None]]] = {}
    for name, state, waiting, frames in tasks:
        groups.setdefault(tuple(frames), []).append((name, state, waiting))
    lines = [f"task profile: total {len(tasks)}", ""]
    for stack, members in sorted(groups.items(), key=lambda g: (-len(g[1]), g[1][0][0])):
        states = sorted({state for _, state, _ in members})
        lines.append(f"{len(members)} @ {', '.join(states)}")
        waiting = members[0][2]
        if waiting:
            lines.append(f"# waiting on {waiting}")
        lines.append("# names: " + " ".join(name for name, _, _ in members))
        lines.extend(f"#\t{_render_frame(f)}" for f in stack)
        lines.append("")
    return "\n".join(lines)


async def tasks(request: web.Request) -> web.Response:
    taken = snapshot()
    if request.query.get("format") == "json":
        return json_response(await asyncio.to_thread(render_json, taken))
    text = await asyncio.to_thread(render_text, taken)
    return web.Response(text=text, content_type="text/plain")
