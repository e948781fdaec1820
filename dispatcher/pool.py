"""A worker pool: claims jobs of one pool from the store and delivers them through its sink.

    store ──claim (batched)──▶ window (bounded deque) ──▶ N workers ──▶ sink.deliver
                                                           │ token bucket, pause, timeout
                                                           ▼
                                                  acker (batched complete)

Only a bounded window of claimed jobs lives in memory; the backlog stays in the store. A
feeder task refills the window when it runs low and sleeps, when nothing is ready, until new
work is announced (`notify`) or the next scheduled job is due. A watchdog cancels attempts
that outlive the pool's timeout, which costs nothing per message (unlike one timer each).
Rate, burst, concurrency and pause change at run time without restarting anything.

The pool protects its receiver through its gate (gate.py): a circuit breaker, the hold a
Retry-After asks for, and an adaptive concurrency limit. While the gate is shut the feeder
claims nothing and hands the window back, and no attempt starts, so messages wait without
spending attempts; workers above the effective limit park until it grows.

Both clocks are passed in, as the policies take theirs: `clock` (wall time) for schedules and
attempt timestamps, `monotonic` for what is measured (the pace, rate tokens, an attempt's
duration and timeout), so a test moves time by hand instead of sleeping. The waits themselves
(for a token, the watchdog's poll) run on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import random as _random
import time
from collections import deque
from collections.abc import Callable

from .acker import Acker
from .circuit import PASS, REFUSED, CircuitState
from .config import PoolConfig
from .errors import DeliveryError, StoreError
from .gate import Gate
from .message import Attempt, Completion, Job, Outcome
from .middleware import Chain
from .ratelimit import TokenBucket
from .retry import decide
from .sinks.base import Attempting, Sink, current_attempt
from .stores.base import Store

log = logging.getLogger("dispatcher.pool")

MAX_ERROR_LENGTH = 1000
_IDLE_POLL = 5.0  # seconds; a safety net: new work is normally announced by notify()
#: a full window holds about this much work at the pool's current pace
_WINDOW_SECONDS = 0.1
_MAX_WINDOW = 4096


def clean_error(text: str) -> str:
    """An attempt's error as storable text: bounded, and valid UTF-8 even when an exception
    carried lone surrogates (a file name decoded with surrogateescape, say), which no JSON
    encoder or database driver would accept."""
    if len(text) > MAX_ERROR_LENGTH:
        text = text[:MAX_ERROR_LENGTH] + "…"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class _Worker(Attempting):
    """One worker task; `job` (Attempting's) is the job it attempts, read by log records."""

    __slots__ = ("index", "started", "task", "timed_out")

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index
        self.task: asyncio.Task[None] | None = None
        self.started: float | None = None  # monotonic start of the running attempt
        self.timed_out = False


class Pool:
    def __init__(
        self,
        name: str,
        config: PoolConfig,
        store: Store,
        sink: Sink,
        acker: Acker,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        random: Callable[[], float] = _random.random,
        chain: Chain | None = None,
        on_circuit: Callable[[str, CircuitState, str], None] | None = None,
        on_failure: Callable[[Completion], None] | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self._store = store
        self._sink = sink
        self._acker = acker
        self._clock = clock  # wall time: schedules, attempt timestamps
        self._monotonic = monotonic  # durations: pacing, rate tokens, attempt timeouts
        self._random = random
        # None when no middleware has a hook: an attempt then makes no observer call at all
        # (not even Chain.__bool__, a Python call).
        self._chain = chain if chain else None
        self._on_failure = on_failure  # a failed attempt, while it is current (its log line)
        # Live settings (the API and console change these).
        self.rate: float | None = config.rate
        self.burst: int = config.effective_burst
        self.concurrency: int = config.concurrency
        self.paused = False
        # Live state, read by stats and metrics.
        self.busy = 0
        self.rate_wait_seconds = 0.0
        self._bucket = TokenBucket(self.rate, self.burst, monotonic())
        # Receiver protection: circuit breaker, Retry-After hold, adaptive limit (gate.py).
        self.gate = Gate(name, config, monotonic, moved=self._gate_moved, on_circuit=on_circuit)
        self._window: deque[Job] = deque()
        self._promised = 0  # window room offered to enqueues not yet answered (offer())
        self._releases: set[asyncio.Task[None]] = set()
        self._started = 0  # jobs taken from the window since the last claim
        self._paced_at = monotonic()
        self._workers: dict[int, _Worker] = {}
        self._stopping = False
        self._generation = 0  # bumped by notify(); tells the feeder its "nothing ready" is stale
        self._maybe_ready = True
        self._next_at: float | None = None
        self._claims_failing = False
        self._feeder: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._feed = asyncio.Event()
        self._wake = asyncio.Event()
        self._throttle_changed = asyncio.Event()
        self._size_window()

    # --- sizes ---------------------------------------------------------------------------
    def _size_window(self) -> None:
        # At least enough claimed jobs to keep every worker busy through one claim round
        # trip. A fast pool gets more (_pace_window): the store answers a claim after the
        # write group in front of it, and a window that runs dry meanwhile idles the
        # workers. Plain attributes, not properties: workers read them once per message.
        self._min_window = min(1024, max(64, 8 * self.concurrency))
        self._resize_window(self._min_window)

    def _resize_window(self, size: int) -> None:
        self.window_size = size
        self._low_water = size // 2

    def _pace_window(self) -> None:
        """Size the window to about _WINDOW_SECONDS of work at the pace jobs were started
        since the last claim: bigger claims when the pool is fast, never more than that
        much work (and so delay for a later, higher-priority message) held in memory."""
        now = self._monotonic()
        elapsed = now - self._paced_at
        if elapsed > 0.0:
            pace = self._started / elapsed
            self._resize_window(
                min(_MAX_WINDOW, max(self._min_window, int(pace * _WINDOW_SECONDS)))
            )
        self._started = 0
        self._paced_at = now

    # --- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        self._store.hand_off(self.name, self)
        self._feeder = asyncio.create_task(self._feed_loop(), name=f"pool:{self.name}:feeder")
        self._watchdog = asyncio.create_task(self._watch(), name=f"pool:{self.name}:watchdog")
        self._spawn_workers()

    def _spawn_workers(self) -> None:
        for index in range(self.concurrency):
            worker = self._workers.get(index)
            if worker is None or worker.task is None or worker.task.done():
                worker = _Worker(index)
                worker.task = asyncio.create_task(
                    self._work(worker), name=f"pool:{self.name}:worker:{index}"
                )
                self._workers[index] = worker

    async def stop_claiming(self) -> None:
        """Drain, step one: claim nothing more and hand the window back to the store."""
        self._stopping = True
        self._wake.set()
        self._feed.set()
        self._wake_throttled()
        self.gate.signal()
        if self._feeder is not None:
            # Let the feeder finish rather than cancel it: a claim it is awaiting may already
            # be committed, and only the feeder can hand those jobs back (it does, since
            # _stopping is set). Cancel only if the store does not answer in time.
            try:
                async with asyncio.timeout(5.0):
                    await asyncio.gather(self._feeder, return_exceptions=True)
            except TimeoutError:
                self._feeder.cancel()
                await asyncio.gather(self._feeder, return_exceptions=True)
        await self._release_window()

    async def wait_idle(self, timeout: float) -> bool:
        """Drain, step two: let running attempts finish. False if some outlived `timeout`."""
        tasks = [w.task for w in self._workers.values() if w.task is not None]
        if not tasks:
            return True
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        return not pending

    async def abort(self) -> list[Job]:
        """Drain, step three: cancel what still runs; answer the jobs it abandoned."""
        tasks = [w.task for w in self._workers.values() if w.task is not None]
        if self._watchdog is not None:
            tasks.append(self._watchdog)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        abandoned = [w.job for w in self._workers.values() if w.job is not None]
        # Jobs a worker put back after the window was released (it was waiting for a token).
        abandoned.extend(self._window)
        self._window.clear()
        return abandoned

    # --- live settings -------------------------------------------------------------------
    async def set_paused(self, paused: bool) -> None:
        if paused == self.paused:
            return
        self.paused = paused
        if paused:
            self._wake_throttled()
            await asyncio.sleep(0)  # let workers waiting for a token put their job back
            await self._release_window()
        else:
            self.notify()
            self._wake.set()

    def configure(self, *, rate: float | None, burst: int, concurrency: int) -> None:
        self.rate, self.burst = rate, burst
        self._bucket.configure(rate, burst, self._monotonic())
        self._store.share_rate(self.name, rate, burst)
        self._wake_throttled()
        if concurrency != self.concurrency:
            self.concurrency = concurrency
            self.gate.configure(concurrency)  # the ceiling of an adaptive limit
            self._size_window()
            self._spawn_workers()  # more workers now; surplus ones exit after their attempt
            self._wake.set()
            self.notify()

    def _wake_throttled(self) -> None:
        """Wake workers waiting for a rate token: the throttle changed, or we pause or stop."""
        self._throttle_changed.set()
        self._throttle_changed = asyncio.Event()

    @property
    def limit(self) -> int:
        """The effective concurrency: `concurrency`, or below it while adaptive."""
        return self.gate.limit

    @property
    def circuit_state(self) -> int:
        """0 closed, 1 half-open, 2 open (dispatcher_pool_circuit_state)."""
        return self.gate.breaker.state

    @property
    def circuit_opened(self) -> int:
        """Times the circuit opened since start (dispatcher_circuit_opened_total)."""
        return self.gate.breaker.opened

    def _gate_moved(self) -> None:
        self._feed.set()  # shut: the feeder hands the window back; open: it claims again
        self._wake.set()

    def notify(self, at: float | None = None) -> None:
        """New work: now (enqueue, replay) or at a future time (a scheduled retry)."""
        if at is None or at <= self._clock():
            self._generation += 1
            self._maybe_ready = True
            if len(self._window) > self._low_water:
                # Nothing for the feeder to do yet: the worker that takes the window down
                # to low water wakes it (it reads _maybe_ready). Every commit notifies, and
                # a wasted wake costs the loop a timer and a turn of the feed loop.
                return
        elif self._next_at is None or at < self._next_at:
            self._next_at = at  # the feeder's sleep may be too long now: wake it
        if not self.paused:  # resuming notifies
            self._feed.set()

    # --- handoff: new jobs straight into the window (stores.base.Handoff) ------------------
    def offer(self, most: int) -> int:
        """Room for up to `most` new jobs that an enqueue may hand over claimed, sparing the
        store the claim that would read them back: what the window lacks, unless the pool
        takes nothing now (paused, stopping, its gate shut)."""
        if self.paused or self._stopping:
            return 0
        gate = self.gate
        if gate.gated and gate.wait(self._monotonic()) > 0.0:
            return 0
        room = min(most, self.window_size - len(self._window) - self._promised)
        if room <= 0:
            return 0
        self._promised += room
        return room

    def receive(self, jobs: list[Job], offered: int) -> None:
        self._promised -= offered
        if not jobs:
            return
        self._window.extend(jobs)
        if self._stopping:
            return  # stopping hands the window back itself (abort)
        if self.paused:  # paused since the offer: these are not ours to start
            task = asyncio.create_task(self._release_window())
            self._releases.add(task)
            task.add_done_callback(self._releases.discard)
            return
        self._wake.set()

    # --- feeder --------------------------------------------------------------------------
    async def _release_window(self) -> None:
        if not self._window:
            return
        jobs = list(self._window)
        self._window.clear()
        await self._release(jobs)

    async def _release(self, jobs: list[Job]) -> None:
        try:
            await self._store.release(jobs)
        except Exception:
            # Still CLAIMED in the store: the next start requeues them. Nothing is lost, and
            # the feeder (our caller, often) must live on.
            log.exception("pool %s could not release %d jobs", self.name, len(jobs))
            return
        if not (self.paused or self._stopping):
            # Resumed while the release was on its way: a claim may already have come back
            # short and put the feeder to sleep, yet these jobs are ready again.
            self.notify()

    async def _feed_loop(self) -> None:
        while not self._stopping:
            now = self._clock()
            if self._next_at is not None and self._next_at <= now:
                self._next_at = None
                self._maybe_ready = True
            if self.gate.gated and not self.paused:
                wait = self.gate.wait(self._monotonic())
                if wait > 0.0:  # open or held: claim nothing, and hand back what we hold
                    await self._release_window()
                    await self._sleep_until_fed(now, wait)
                    continue
            if self.paused or not self._maybe_ready or len(self._window) > self._low_water:
                await self._sleep_until_fed(now)
                continue
            self._pace_window()
            want = self.window_size - len(self._window)
            if want <= 0:  # the pace shrank the window below what it holds: let it drain
                await self._sleep_until_fed(now)
                continue
            generation = self._generation
            try:
                claim = await self._store.claim(self.name, want, now)
            except StoreError as exc:
                # The store is away (a lost connection): one line when it goes, not a
                # traceback a second; /readyz and the API's 503s say the rest.
                if not self._claims_failing:
                    log.warning("pool %s cannot claim (retrying every 1s): %s", self.name, exc)
                self._claims_failing = True
                await asyncio.sleep(1.0)
                continue
            except Exception:
                # Whatever else the store raised, the feeder is this pool's only source of
                # work: if it died, the pool would stall until a restart. Log and try again.
                log.exception("pool %s could not claim; retrying in 1s", self.name)
                await asyncio.sleep(1.0)
                continue
            if self._claims_failing:
                log.warning("pool %s claims again", self.name)
                self._claims_failing = False
            if self.paused or self._stopping:
                if claim.jobs:
                    await self._release(claim.jobs)
                continue
            if claim.jobs:
                self._window.extend(claim.jobs)
                self._wake.set()
            if claim.next_at is not None and (
                self._next_at is None or claim.next_at < self._next_at
            ):
                self._next_at = claim.next_at
            if len(claim.jobs) < want and generation == self._generation:
                self._maybe_ready = False

    async def _sleep_until_fed(self, now: float, limit: float = _IDLE_POLL) -> None:
        timeout = min(_IDLE_POLL, limit)
        if self._next_at is not None:
            timeout = min(timeout, max(0.0, self._next_at - now))
        self._feed.clear()
        try:
            async with asyncio.timeout(timeout):
                await self._feed.wait()
        except TimeoutError:
            self._maybe_ready = True  # the poll: look again even without a notify

    # --- workers -------------------------------------------------------------------------
    async def _work(self, worker: _Worker) -> None:
        current_attempt.set(worker)  # this task's own context: log records read worker.job
        window = self._window
        gate = self.gate
        while True:
            if self._stopping or worker.index >= self.concurrency:
                return
            if worker.index >= gate.limit:  # parked above the adaptive limit
                await gate.parked()
                continue
            if self.paused or not window:
                self._wake.clear()
                await self._wake.wait()
                continue
            job = window.popleft()
            self._started += 1
            if len(window) <= self._low_water and self._maybe_ready:
                self._feed.set()
                # Yield once so the feeder sends its claim while we work on this job.
                await asyncio.sleep(0)
                if self.paused or self._stopping:
                    window.appendleft(job)  # paused meanwhile: the job is not ours to start
                    continue
            if self.rate is not None and not await self._take_token():
                window.appendleft(job)  # paused or stopping while we waited for a token
                continue
            ticket = PASS
            if gate.gated:
                ticket = gate.admit()
                if ticket == REFUSED:  # open, held, or the probes are out
                    window.appendleft(job)
                    await gate.turned_away()
                    continue
            await self._attempt(worker, job, ticket)

    async def _take_token(self) -> bool:
        monotonic = self._monotonic
        while True:
            wait = self._bucket.take(monotonic())
            if wait <= 0.0:
                return True
            started = monotonic()
            changed = self._throttle_changed
            try:
                async with asyncio.timeout(wait):
                    await changed.wait()
            except TimeoutError:
                self.rate_wait_seconds += monotonic() - started
                return not (self.paused or self._stopping)
            self.rate_wait_seconds += monotonic() - started
            if self.paused or self._stopping or self.rate is None:
                return not (self.paused or self._stopping)
            # The throttle changed while we waited: ask the reconfigured bucket again.

    async def _attempt(self, worker: _Worker, job: Job, ticket: int) -> None:
        n = job.attempts + 1
        worker.job = job  # before the middleware: their log records name the attempt too
        chain = self._chain
        states = chain.before(job, n) if chain is not None else None
        started_at = self._clock()
        error: str | None = None
        retryable = True
        overloaded = False
        retry_after: float | None = None
        worker.timed_out = False
        self.busy += 1
        worker.started = start = self._monotonic()
        try:
            await self._sink.deliver(job, n)
            outcome = Outcome.SUCCESS
        except asyncio.CancelledError:
            if not worker.timed_out:
                raise  # shutdown: abort() releases worker.job
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            outcome = Outcome.TIMEOUT
            error = f"timed out after {self.config.timeout:g}s"
        except DeliveryError as exc:
            outcome = Outcome.FAILURE
            error = exc.detail or type(exc).__name__
            retryable = exc.retryable
            retry_after = exc.retry_after
            if exc.overloaded:
                overloaded = True
                if retry_after is not None:
                    retry_after = self.gate.hold_for(retry_after)
        except Exception as exc:  # a sink must never kill its worker
            outcome = Outcome.FAILURE
            error = f"{type(exc).__name__}: {exc}"
        finally:
            worker.started = None
            self.busy -= 1
        if worker.timed_out and outcome is not Outcome.TIMEOUT:
            # The sink swallowed our cancellation; it still overran, and the task must not
            # carry a stale cancel request into its next attempt.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                task.uncancel()
            outcome = Outcome.TIMEOUT
            error = f"timed out after {self.config.timeout:g}s"
        end = self._monotonic()
        duration = end - start
        gate = self.gate
        if gate.breaker_on or gate.adaptive is not None:
            gate.after(
                ticket,
                start,
                end,
                retryable and outcome is not Outcome.SUCCESS,
                overloaded or outcome is Outcome.TIMEOUT,
                self.busy + 1,
            )
        if error is not None:
            error = clean_error(error)
        attempt = Attempt(n, started_at, duration, outcome, error)
        if outcome is Outcome.SUCCESS:
            completion = Completion(job, attempt)
        else:
            retry_at, dead = decide(
                self.config.retry, n, retryable, self._clock(), self._random, retry_after
            )
            completion = Completion(job, attempt, retry_at, dead)
            if self._on_failure is not None:
                self._failed(self._on_failure, completion)
        if chain is not None and states is not None:
            chain.after(completion, states)
        self._acker.add(completion)
        worker.job = None  # only now: a failure's log line and after_attempt name the attempt

    def _failed(self, hook: Callable[[Completion], None], completion: Completion) -> None:
        try:
            hook(completion)
        except Exception:  # an observer never breaks a delivery
            log.exception("pool %s: the failed-attempt hook failed", self.name)

    # --- timeouts ------------------------------------------------------------------------
    async def _watch(self) -> None:
        """Cancel attempts that outlive the timeout; checks a few times per timeout span."""
        while True:
            timeout = self.config.timeout
            await asyncio.sleep(min(0.25, max(0.005, timeout / 20)))
            now = self._monotonic()
            for worker in list(self._workers.values()):
                started = worker.started
                if started is not None and not worker.timed_out and now - started >= timeout:
                    worker.timed_out = True
                    if worker.task is not None:
                        worker.task.cancel()
