"""HTTP ingest benchmark (issue 3). Prints numbers; asserts nothing.

    python -m tests.bench.bench_ingest [--seconds 5] [--concurrency 64] [--rounds 1]
        [--only single|batch] [--variants anonymous,ids,otel] [--store-url URL]

1. single: POST /v1/messages with 64 concurrent keep-alive clients (an aiohttp load
   generator in its own process) against a bare aiohttp handler that reads the body and
   answers 202, then against the dispatcher (SQLite, synchronous=FULL, or `--store-url`;
   its pool paused so only ingest runs), in the same run; requests per second of each, and
   the ratio. The dispatcher runs in each of `--variants`:
   - anonymous: messages without an id (the dispatcher makes one);
   - ids: every message with a producer id of its own (deduplicated, as users are advised);
   - otel: ids, and the OpenTelemetry SDK configured the way `dispatcher serve` does it,
     by OTEL_* variables: every span sampled (always_on), exported over OTLP/HTTP to a
     receiver on loopback (a process of its own that decodes each export and counts the
     spans, so spans the SDK dropped show as missing).
2. batch: POST /v1/messages/batch with 1000-message batches (4 in flight); messages/s
   accepted and committed.

Each server runs in a process of its own, on loopback only; every run is bounded in time.
With `--rounds N` the single test alternates bare and the variants N times (a noisy
machine drifts; alternating spreads the drift over all) and prints every round and medians.
Next to each rate is the server process's CPU time per request (user + system, from
/proc, Linux only): on a small machine the load generator competes for the same cores, so
CPU per request says more about the server than requests per second alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from aiohttp import web

TOKEN = "bench-token"
_SPANS = web.AppKey("spans", dict[str, int])
STORE_URL = "BENCH_STORE_URL"
MESSAGE = b'{"tag": "bench.click", "payload": {"user": 42, "event": "click", "path": "/home"}}'


def _settings(directory: str) -> Any:
    from ..factories import settings

    return settings(
        server={"host": "127.0.0.1", "port": 0},
        # --store-url (through the environment, to the server process): e.g. the Redis store
        store={
            "url": os.environ.get(STORE_URL) or f"sqlite:///{directory}/bench.db",
            "prefix": f"bench-ingest-{os.getpid()}",
            "min_free_bytes": 0,
        },
        auth={"tokens": [{"name": "bench", "token": TOKEN, "scopes": ["admin"]}]},
        pools={
            "bench": {
                "max_backlog": 100_000_000,
                "sink": {"type": "python", "handler": "tests.bench.handlers:noop"},
            }
        },
        routes=[{"match": "bench.>", "pools": ["bench"]}],
    )


async def _serve(kind: str) -> None:
    from aiohttp import web

    shutdown_tracing = None
    if kind == "bare":

        async def accept(request: web.Request) -> web.Response:
            await request.read()
            return web.json_response({"status": "queued"}, status=202)

        app = web.Application()
        app.router.add_post("/v1/messages", accept)
    elif kind == "receiver":
        app = _receiver()
    else:
        from dispatcher.app import create_app
        from dispatcher.observe.tracing import configure_sdk
        from dispatcher.server import tune_process

        tune_process()  # as `dispatcher serve` does before it builds the app
        shutdown_tracing = configure_sdk(os.environ)  # as the CLI does: OTEL_* variables
        directory = tempfile.mkdtemp(prefix="bench-ingest-")
        app = create_app(_settings(directory))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    if kind == "dispatcher":
        from dispatcher.server import tune_gc
        from dispatcher.state import DISPATCHER

        tune_gc()  # as `dispatcher serve` does once started

        await app[DISPATCHER].update_pool("bench", actor="bench", paused=True)
    print(runner.addresses[0][1], flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until closed
    if shutdown_tracing is not None:
        shutdown_tracing()  # flushes what is still queued to the receiver
    await runner.cleanup()
    if kind == "receiver":
        print(json.dumps(app[_SPANS]), flush=True)


def _receiver() -> Any:
    """An OTLP/HTTP trace receiver: decodes every export and counts its spans."""
    from aiohttp import web
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
        ExportTraceServiceResponse,
    )

    reply = ExportTraceServiceResponse().SerializeToString()

    async def export(request: web.Request) -> web.Response:
        body = ExportTraceServiceRequest.FromString(await request.read())
        counts = request.app[_SPANS]
        counts["exports"] += 1
        for resource in body.resource_spans:
            for scope in resource.scope_spans:
                counts["spans"] += len(scope.spans)
        return web.Response(body=reply, content_type="application/x-protobuf")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[_SPANS] = {"exports": 0, "spans": 0}
    app.router.add_post("/v1/traces", export)
    return app


async def _load(url: str, body: bytes, seconds: float, concurrency: int, ids: bool) -> None:
    import aiohttp

    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    done = 0
    errors = 0
    # With ids, each request's message has an id of its own: b'{"id": "<prefix><n>", ...'
    prefix = b'{"id": "' + os.urandom(6).hex().encode() + b"-"
    rest = b'", ' + body[1:]
    sent = 0
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        deadline = time.perf_counter() + seconds

        async def client() -> None:
            nonlocal done, errors, sent
            while time.perf_counter() < deadline:
                data = body
                if ids:
                    sent += 1
                    data = prefix + str(sent).encode() + rest
                async with session.post(url, data=data, headers=headers) as resp:
                    await resp.read()
                    if resp.status in (200, 202):
                        done += 1
                    else:
                        errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    print(json.dumps({"requests": done, "errors": errors, "seconds": elapsed}), flush=True)


def _server(kind: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.bench.bench_ingest", "_serve", kind],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    return proc, port


def _stop(proc: subprocess.Popen[str]) -> str:
    """Close the server's stdin (it shuts down) and return what it printed last."""
    assert proc.stdin is not None
    assert proc.stdout is not None
    proc.stdin.close()
    out = proc.stdout.read()
    proc.wait(60)
    return out


def _run_load(url: str, body: bytes, seconds: float, concurrency: int, ids: bool) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("wb", delete=False) as f:
        f.write(body)
    try:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "tests.bench.bench_ingest",
                "_load",
                url,
                f.name,
                str(seconds),
                str(concurrency),
                "ids" if ids else "anonymous",
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=True,
        ).stdout
    finally:
        os.unlink(f.name)
    result: dict[str, Any] = json.loads(out)
    return result


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process `pid` (all its threads) so far; None off Linux."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    # After the command name: state is field 3, utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Result:
    def __init__(self, rate: float, cpu_per_request: float | None) -> None:
        self.rate = rate
        self.cpu_per_request = cpu_per_request
        self.note = ""  # what else the run saw (spans exported)

    def __str__(self) -> str:
        cpu = "" if self.cpu_per_request is None else f", {self.cpu_per_request * 1e6:5.0f} µs CPU"
        return f"{self.rate:10,.0f} req/s{cpu}"


#: the dispatcher's variants of the single test: (producer ids, OpenTelemetry SDK)
VARIANTS = {"anonymous": (False, False), "ids": (True, False), "otel": (True, True)}


def _measure(
    kind: str,
    path: str,
    body: bytes,
    seconds: float,
    concurrency: int,
    *,
    ids: bool = False,
    otel: bool = False,
) -> Result:
    receiver = None
    env: dict[str, str] = {}
    if otel:
        receiver, receiver_port = _server("receiver")
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver_port}",
            "OTEL_TRACES_SAMPLER": "always_on",
            "OTEL_SERVICE_NAME": "dispatcher-bench",
        }
    proc, port = _server(kind, env)
    try:
        before = _cpu_seconds(proc.pid)
        r = _run_load(f"http://127.0.0.1:{port}{path}", body, seconds, concurrency, ids)
        after = _cpu_seconds(proc.pid)
    finally:
        _stop(proc)
        spans = json.loads(_stop(receiver).splitlines()[-1]) if receiver is not None else None
    if r["errors"]:
        print(f"  ({kind}: {r['errors']} error answers)")
    requests = int(r["requests"])
    cpu = None
    if before is not None and after is not None and requests:
        cpu = (after - before) / requests
    result = Result(requests / float(r["seconds"]), cpu)
    if spans is not None:
        # Two spans per request (SERVER, PRODUCER); error answers have their spans too.
        expected = 2 * (requests + int(r["errors"]))
        result.note = f" [{spans['spans']:,} of {expected:,} spans exported]"
    return result


def _median_cpu(results: list[Result]) -> float | None:
    cpus = [r.cpu_per_request for r in results if r.cpu_per_request is not None]
    return statistics.median(cpus) if cpus else None


def _median(results: list[Result]) -> Result:
    return Result(statistics.median(r.rate for r in results), _median_cpu(results))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_serve":
        asyncio.run(_serve(sys.argv[2]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "_load":
        with open(sys.argv[3], "rb") as f:
            body = f.read()
        ids = sys.argv[6] == "ids"
        asyncio.run(_load(sys.argv[2], body, float(sys.argv[4]), int(sys.argv[5]), ids))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--only", choices=("single", "batch"), help="run one of the two tests")
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"the dispatcher runs of the single test, comma-separated: {', '.join(VARIANTS)}",
    )
    parser.add_argument(
        "--store-url",
        help="the dispatcher's store.url (default: a temporary SQLite file); a redis:// "
        "server should be one of its own: the runs leave their keys there",
    )
    args = parser.parse_args()
    if args.store_url:
        os.environ[STORE_URL] = args.store_url  # the server processes inherit it
    args.variants = args.variants.split(",")
    if unknown := set(args.variants) - set(VARIANTS):
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")
    if args.only != "batch":
        _single(args)
    if args.only != "single":
        _batch(args)


def _single(args: argparse.Namespace) -> None:
    bares: list[Result] = []
    ours: dict[str, list[Result]] = {v: [] for v in args.variants}
    print(f"single ingest, {args.concurrency} keep-alive clients, {args.seconds:g} s each:")
    for n in range(args.rounds):
        bare = _measure("bare", "/v1/messages", MESSAGE, args.seconds, args.concurrency)
        bares.append(bare)
        line = [f"bare {bare}"]
        for variant in args.variants:
            ids, otel = VARIANTS[variant]
            our = _measure(
                "dispatcher",
                "/v1/messages",
                MESSAGE,
                args.seconds,
                args.concurrency,
                ids=ids,
                otel=otel,
            )
            ours[variant].append(our)
            line.append(f"{variant} {our} ({our.rate / bare.rate:.0%}){our.note}")
        if args.rounds > 1:
            print(f"  round {n + 1}: " + "; ".join(line))
    bare = _median(bares)
    median = " (medians)" if args.rounds > 1 else ""
    print(f"  bare aiohttp 202 handler:       {bare}{median}")
    for variant, results in ours.items():
        our = _median(results)
        label = f"dispatcher, {variant}:"
        notes = "".join(r.note for r in results) if args.rounds == 1 else ""
        print(f"  {label:31} {our}  ({our.rate / bare.rate:.0%} of bare){median}{notes}")


def _batch(args: argparse.Namespace) -> None:
    batch = b"[" + b",".join([MESSAGE] * 1000) + b"]"
    results = []
    for n in range(args.rounds):
        result = _measure("dispatcher", "/v1/messages/batch", batch, args.seconds, 4)
        results.append(result)
        if args.rounds > 1:
            print(f"  round {n + 1}: {_batch_line(result)}")
    label = " (medians)" if args.rounds > 1 else ""
    print(
        f"batch ingest, 1000-message batches, 4 in flight: {_batch_line(_median(results))}{label}"
    )


def _batch_line(result: Result) -> str:
    cpu = result.cpu_per_request
    per_message = "" if cpu is None else f" ({cpu * 1e3:.1f} µs server CPU per message)"
    return f"{result.rate * 1000:10,.0f} messages/s{per_message}"


if __name__ == "__main__":
    main()
