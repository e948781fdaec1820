"""`dispatcher serve`: API, workers and console on one event loop, drained on SIGTERM/SIGINT.

Shutdown order: stop accepting (ingest and /readyz answer 503), let running attempts finish
within server.grace_period, leave the rest in the store, close the listener, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys

from aiohttp import web

from .app import create_app
from .auth import Authenticator
from .config import Settings
from .demo import generate_traffic
from .dispatcher import Dispatcher
from .http import malformed

log = logging.getLogger("dispatcher.server")


async def serve(settings: Settings, *, demo_traffic: float = 0.0) -> int:
    tune_process()
    dispatcher = Dispatcher(settings)
    authenticator = Authenticator(settings.auth, os.environ)
    app = create_app(settings, dispatcher=dispatcher, authenticator=authenticator)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=5.0)
    await runner.setup()  # starts the dispatcher (cleanup context)
    tune_gc()
    site = web.TCPSite(runner, settings.server.host, settings.server.port, backlog=1024)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await site.start()
    # The banner says "ready": the signal handlers are in place before anyone reads it.
    _banner(settings, runner, authenticator)

    traffic: asyncio.Task[None] | None = None
    if demo_traffic > 0:
        traffic = asyncio.create_task(
            generate_traffic(dispatcher, demo_traffic), name="demo:traffic"
        )
    try:
        await stop.wait()
    finally:
        log.info("signal received: draining (grace period %gs)", settings.server.grace_period)
        if traffic is not None:
            traffic.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await traffic
        await dispatcher.stop()
        await runner.cleanup()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("stopped cleanly")
    return 0


#: The GIL switch interval while serving. The SQLite writer gives the GIL up at every
#: statement and must win it back from the event loop, which keeps it, when busy, until the
#: interval has passed: 5 ms by default, paid many times per write group. Engine bench, 4
#: interleaved runs each: 5 ms 23.2k msg/s, 1 ms 23.4k, 0.2 ms 25.1k. The price: ~10% more
#: CPU per single-message HTTP request (more switches), which stays above its target.
GIL_SWITCH_INTERVAL = 0.0002


def tune_process() -> None:
    """What `dispatcher serve` changes for the whole process, before it builds anything; the
    library never does (a program that embeds the Dispatcher is left alone):
    - requests aiohttp's parser refuses are answered as problem+json (http/malformed.py);
    - the GIL switch interval is shortened (never lengthened) to GIL_SWITCH_INTERVAL."""
    malformed.install()
    if sys.getswitchinterval() > GIL_SWITCH_INTERVAL:
        sys.setswitchinterval(GIL_SWITCH_INTERVAL)


#: Collect the young generation after this many net container allocations, not 700. A
#: 1000-message batch keeps thousands of rows and structs alive until its commit, so the
#: default ran several collections per batch, each scanning objects about to be freed anyway;
#: 10,000 is above what a busy server holds in flight, so such passes become rare.
GC_YOUNG_THRESHOLD = 10_000


def tune_gc() -> None:
    """Once the server has started: freeze what start-up built (modules, config, the app,
    metric children), so that full collections skip it, and collect the young generation
    less often. Batch ingest measured 0.37 s of collections per 4 s of load before, ~0 after;
    garbage cycles are still collected, only later."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def _banner(settings: Settings, runner: web.AppRunner, auth: Authenticator) -> None:
    addresses = [a for a in runner.addresses if isinstance(a, tuple)]
    host, port = (addresses[0][0], addresses[0][1]) if addresses else ("?", 0)
    shown_host = f"[{host}]" if ":" in str(host) else host
    base = f"http://{shown_host}:{port}"
    lines = [
        f"dispatcher listening on {base}  (store: {settings.store.url.split('://')[0]})",
        f"  API:      {base}/v1/messages",
        f"  metrics:  {base}/metrics",
        f"  console:  {base}/console/login",
    ]
    if auth.generated_token:
        lines.append(
            f"  token:    {auth.generated_token}   (admin; generated: auth.tokens is empty)"
        )
    elif auth.disabled:
        lines.append("  auth:     disabled (loopback only)")
    print("\n".join(lines), flush=True)
    sys.stdout.flush()
