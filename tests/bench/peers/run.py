"""The dispatcher against its peers, end to end, on this machine. Prints numbers; asserts
nothing; not part of the test suite.

    pip install -e '.[bench]'     # in a virtualenv of its own (see pyproject.toml)
    python -m tests.bench.peers.run [--rounds 3] [--jobs 20000] [--messages 100000]
        [--only dispatcher,huey,...] [--timeout 120] [--json bench-peers.json]

The same workload for each system: N no-op jobs (each carrying the same small JSON
payload) enqueued by one producer process as fast as the system's client allows, while
the system's workers drain them; end to end is N / (first enqueue to last job done).
- Celery, Dramatiq, RQ, huey, arq, taskiq: 2 worker processes each, with the settings
  their own docs recommend for throughput (each module's docstring says which), on a
  private redis-server started for the run on a free port in a temporary directory, with
  persistence off (nothing is fsynced: the most favourable setting for them).
- the dispatcher: `dispatcher serve` (one process) with durable SQLite (synchronous FULL),
  fed `--messages` messages in HTTP batches of 1,000 (see dispatcher_peer.py);
  dispatcher-redis: the same on the redis store, on the run's private server switched to
  `appendonly yes` (`appendfsync everysec`) for that run.
Each job is counted in its worker process and reported to the private Redis every 20 ms
(tally.py), so counting costs every system the same and needs no round trip per job.

Every run starts fresh: a new redis-server, new worker processes, a warm-up of 200 jobs
that must all finish before the clock starts. The systems take turns within each round, in
an order that rotates from round to round, so a busy spell on a shared machine spreads
over all of them. A run that has not finished within --timeout seconds stops there and its
rate counts the jobs done so far (marked in the table). Medians of the rounds are printed
as a table with the ratio of the dispatcher's end-to-end rate to each system's, and
everything (every round, the machine, the versions) is written as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from importlib import metadata
from typing import Any

from . import dispatcher_peer, tally

#: system -> (module, distribution whose version is reported)
SYSTEMS = {
    "dispatcher": ("dispatcher_peer", "dispatcher"),
    "dispatcher-redis": ("dispatcher_peer", "dispatcher"),
    "celery": ("celery_peer", "celery"),
    "dramatiq": ("dramatiq_peer", "dramatiq"),
    "rq": ("rq_peer", "rq"),
    "huey": ("huey_peer", "huey"),
    "arq": ("arq_peer", "arq"),
    "taskiq": ("taskiq_peer", "taskiq"),
}
#: the worker processes each peer runs (why these settings: each module's docstring).
#: {python} is this interpreter, {bin} its scripts, {module} the peer's module, {url} the
#: private Redis. The peer modules are imported by their own processes only, with
#: PEERS_REDIS_URL set: no default can ever point them at another Redis.
_CELERY = "{python} -m celery -A {module} worker --pool=prefork --concurrency=2"
_RQ = "{bin}/rq worker --url {url} --worker-class rq.worker.SimpleWorker --quiet peers"
_ARQ = "{bin}/arq {module}.WorkerSettings"
COMMANDS = {
    "celery": [f"{_CELERY} --without-gossip --without-mingle --without-heartbeat -l WARNING"],
    "dramatiq": ["{python} -m dramatiq {module} --processes 2 --threads 8"],
    "rq": [_RQ, _RQ],
    "huey": ["{bin}/huey_consumer {module}.huey -w 2 -k process -q"],
    "arq": [_ARQ, _ARQ],
    "taskiq": ["{bin}/taskiq worker {module}:broker --workers 2 --log-level WARNING"],
}
#: our own runs, each compared with every system in the table
DISPATCHERS = ("dispatcher", "dispatcher-redis")
PAYLOAD = {"user": 42, "event": "click", "path": "/home"}
WARM_UP = 200


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def private_redis(directory: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A redis-server of our own on a free loopback port, persistence off, its files in
    `directory`; stopped (SIGTERM, then killed) on the way out. Never the shared one."""
    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    port = _free_port()
    options = ["--bind", "127.0.0.1", "--dir", directory, "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(
        [server, "--port", str(port), *options],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import redis

        client = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0", proc
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen[Any], grace: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _cpu_of_tree(roots: list[int]) -> float:
    """User + system CPU seconds of these processes and all their descendants (Linux)."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    ticks = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / ticks
    wanted = set(roots)
    grew = True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in wanted} - wanted
        grew = bool(more)
        wanted |= more
    return sum(cpu.get(pid, 0.0) for pid in wanted)


def _produce(system: str, n: int, env: dict[str, str], timeout: float) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-m", "tests.bench.peers.run", "_produce", system, str(n)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{system} producer failed:\n{out.stderr[-3000:]}")
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _wait_for(client: Any, target: int, deadline: float) -> tuple[int, float]:
    while True:
        done, last = tally.read(client)
        if done >= target or time.time() > deadline:
            return done, last
        time.sleep(0.02)


def run_one(system: str, jobs: int, timeout: float) -> dict[str, Any]:
    """One fresh run of `system`: start it, warm it up, time `jobs` jobs end to end."""
    import redis

    with tempfile.TemporaryDirectory(prefix=f"peers-{system}-") as directory:  # noqa: SIM117
        with private_redis(directory) as (url, redis_proc):
            # The worker programs import the job from this checkout, wherever they live.
            path = os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))
            env = {**os.environ, "PEERS_REDIS_URL": url, "PYTHONUNBUFFERED": "1"}
            env["PYTHONPATH"] = path
            port = _free_port()
            env["PEERS_DISPATCHER_URL"] = f"http://127.0.0.1:{port}"
            client = redis.Redis.from_url(url)
            if system == "dispatcher-redis":
                client.config_set("appendonly", "yes")  # appendfsync stays everysec
            commands = _commands(system, url, directory, port)
            log = open(os.path.join(directory, "workers.log"), "wb")  # noqa: SIM115
            workers = [
                subprocess.Popen(c, env=env, stdout=log, stderr=subprocess.STDOUT) for c in commands
            ]
            try:
                if system in DISPATCHERS:
                    _wait_listening(port, workers[0], time.time() + 30)
                _produce(system, WARM_UP, env, 120)
                warm, _ = _wait_for(client, WARM_UP, time.time() + 60)
                if warm < WARM_UP:
                    raise RuntimeError(f"{system}: workers did not start ({_tail(directory)})")
                roots = [w.pid for w in workers] + [redis_proc.pid]
                cpu_before = _cpu_of_tree(roots)
                produced = _produce(system, jobs, env, timeout + 60)
                done, last = _wait_for(client, WARM_UP + jobs, produced["started"] + timeout)
                cpu = _cpu_of_tree(roots) - cpu_before
                finished = done >= WARM_UP + jobs
                end = last if finished else time.time()
            finally:
                for w in workers:
                    _stop(w)
                log.close()
    counted = done - WARM_UP
    return {
        "system": system,
        "jobs": jobs,
        "done": counted,
        "finished": finished,
        "enqueue_per_s": jobs / (produced["enqueued"] - produced["started"]),
        "end_to_end_per_s": counted / (end - produced["started"]),
        "cpu_us_per_job": cpu / max(counted, 1) * 1e6,
    }


def _commands(system: str, url: str, directory: str, port: int) -> list[list[str]]:
    if system in DISPATCHERS:
        store = url if system == "dispatcher-redis" else None
        return dispatcher_peer.workers(directory, port, store)
    fields = {
        "python": sys.executable,
        "bin": os.path.dirname(sys.executable),
        "module": f"tests.bench.peers.{SYSTEMS[system][0]}",
        "url": url,
    }
    return [c.format(**fields).split() for c in COMMANDS[system]]


def _wait_listening(port: int, proc: subprocess.Popen[bytes], deadline: float) -> None:
    while time.time() < deadline and proc.poll() is None:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.05)
    raise RuntimeError("the dispatcher did not start listening")


def _tail(directory: str) -> str:
    with open(os.path.join(directory, "workers.log"), "rb") as f:
        return f.read()[-2000:].decode(errors="replace")


def _producer_main(system: str, n: int) -> None:
    module = importlib.import_module(f"tests.bench.peers.{SYSTEMS[system][0]}")
    started = time.time()
    result = module.produce(n, PAYLOAD)
    if asyncio.iscoroutine(result):
        asyncio.run(result)
    print(json.dumps({"started": started, "enqueued": time.time()}), flush=True)


def machine() -> dict[str, Any]:
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for _, dist in SYSTEMS.values():
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    redis_version = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    ).stdout.split()
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "redis_server": next((v[2:] for v in redis_version if v.startswith("v=")), "?"),
        "versions": versions,
        "load_average": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_produce":
        _producer_main(argv[1], int(argv[2]))
        return
    parser = argparse.ArgumentParser(prog="python -m tests.bench.peers.run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs per peer run")
    parser.add_argument("--messages", type=int, default=100_000, help="dispatcher messages")
    parser.add_argument("--only", default=",".join(SYSTEMS), help="comma-separated systems")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per run")
    parser.add_argument("--json", default="bench-peers.json", help="where to write results")
    args = parser.parse_args(argv)
    systems = args.only.split(",")
    if unknown := set(systems) - set(SYSTEMS):
        parser.error(f"unknown systems: {', '.join(sorted(unknown))}")
    info = machine()
    print(
        f"{info['cpu']}, {info['cores']} cores, Python {info['python']}, "
        f"redis-server {info['redis_server']}; load average at start "
        + "/".join(f"{x:.2f}" for x in info["load_average"])
    )
    runs: list[dict[str, Any]] = []
    for r in range(args.rounds):
        order = systems[r % len(systems) :] + systems[: r % len(systems)]
        for system in order:
            n = args.messages if system in DISPATCHERS else args.jobs
            try:
                result = run_one(system, n, args.timeout)
            except Exception as exc:  # one system failing must not lose the others' runs
                print(f"  round {r + 1} {system}: failed: {exc}", flush=True)
                continue
            result["round"] = r + 1
            runs.append(result)
            mark = "" if result["finished"] else f" (timed out: {result['done']:,} done)"
            print(
                f"  round {r + 1} {system:10} enqueue {result['enqueue_per_s']:9,.0f}/s, "
                f"end to end {result['end_to_end_per_s']:9,.0f}/s, "
                f"{result['cpu_us_per_job']:6.0f} us CPU/job{mark}",
                flush=True,
            )
    medians = _medians(runs, systems)
    print(_table(medians, args.rounds))
    load = os.getloadavg()
    print("load average at end " + "/".join(f"{x:.2f}" for x in load))
    with open(args.json, "w") as f:
        json.dump(
            {
                "command": "python -m tests.bench.peers.run " + " ".join(argv),
                "machine": {**info, "load_average_end": load},
                "runs": runs,
                "medians": medians,
            },
            f,
            indent=2,
        )
    print(f"wrote {args.json}")


def _medians(runs: list[dict[str, Any]], systems: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for system in systems:
        mine = [r for r in runs if r["system"] == system]
        if not mine:
            continue
        out[system] = {
            key: statistics.median(r[key] for r in mine)
            for key in ("enqueue_per_s", "end_to_end_per_s", "cpu_us_per_job")
        }
        out[system]["runs"] = len(mine)
        out[system]["all_finished"] = all(r["finished"] for r in mine)
    for ours in DISPATCHERS:
        rate = out.get(ours, {}).get("end_to_end_per_s")
        for m in out.values():
            m[f"{ours}_ratio"] = rate / m["end_to_end_per_s"] if rate else None
    return out


def _table(medians: dict[str, dict[str, Any]], rounds: int) -> str:
    ours = [d for d in DISPATCHERS if d in medians]
    lines = [
        f"\nmedians of {rounds} rounds:",
        "| system | enqueue jobs/s | end-to-end jobs/s | CPU µs/job |"
        + "".join(f" {d} ÷ system |" for d in ours),
        "|---|---:|---:|---:|" + "---:|" * len(ours),
    ]
    ranked = sorted(medians.items(), key=lambda kv: -kv[1]["end_to_end_per_s"])
    for system, m in ranked:
        ratios = [m[f"{d}_ratio"] for d in ours]
        shown = ["—" if system in DISPATCHERS else f"{r:.1f}×" for r in ratios]  # noqa: RUF001
        timed_out = "" if m["all_finished"] else " (timed out)"
        lines.append(
            f"| {system}{timed_out} | {m['enqueue_per_s']:,.0f} | "
            f"{m['end_to_end_per_s']:,.0f} | {m['cpu_us_per_job']:,.0f} |"
            + "".join(f" {r} |" for r in shown)
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
