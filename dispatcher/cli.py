"""The command line: `dispatcher serve`, `dispatcher check-config`, `dispatcher init` and
`dispatcher bench` (the README's "Command line")."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

import yaml

from .config import Settings, load_settings, redacted
from .demo import DEMO_CONFIG
from .errors import ConfigError, StoreError
from .observe import logs
from .observe.tracing import configure_sdk
from .starter import starter
from .version import __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dispatcher", description="An observability-first message dispatcher."
    )
    parser.add_argument("--version", action="version", version=f"dispatcher {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the API, the workers and the console")
    serve.add_argument("--config", metavar="FILE", help="YAML config (default: the demo)")
    serve.add_argument("--host", help="override server.host")
    serve.add_argument("--port", type=int, help="override server.port")
    serve.add_argument(
        "--no-demo-traffic", action="store_true", help="with no config: generate no messages"
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    serve.add_argument(
        "--log-format",
        choices=list(logs.FORMATTERS),
        help="text lines for a person or JSON lines (default: text on a terminal, else JSON)",
    )
    check = sub.add_parser("check-config", help="validate a config and print it, redacted")
    check.add_argument("file", metavar="FILE")
    init = sub.add_parser("init", help="write a commented starter config (never overwrites)")
    init.add_argument("file", metavar="FILE", nargs="?", default="dispatcher.yaml")
    bench = sub.add_parser(
        "bench", help="measure what this machine sustains, on a temporary store (~20 s)"
    )
    bench.add_argument(
        "--seconds", type=float, default=20.0, help="about how long to run (default 20)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check-config":
        return _check_config(args.file)
    if args.command == "init":
        return _init(args.file)
    if args.command == "bench":
        from .bench import run  # the HTTP app and its load generator: only when asked

        run(args.seconds)
        return 0
    return _serve(args)


def _check_config(path: str) -> int:
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        print(f"{path}: error: {exc}", file=sys.stderr)
        return 2
    print(yaml.safe_dump(redacted(settings), sort_keys=False), end="")
    return 0


def _init(path: str) -> int:
    text = starter(path)
    try:
        with open(path, "x", encoding="utf-8") as file:  # "x": never overwrite
            file.write(text)
    except FileExistsError:
        print(f"{path}: error: the file exists; not overwritten", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{path}: error: cannot write: {exc.strerror}", file=sys.stderr)
        return 1
    print(f"wrote {path}; check it with `dispatcher check-config {path}`")
    return 0


def _load(args: argparse.Namespace) -> Settings:
    """File (or the demo), then DISPATCHER_* variables, then --host/--port: the last wins."""
    cli: dict[str, object] = {}
    if args.host is not None:
        cli["host"] = args.host
    if args.port is not None:
        cli["port"] = args.port
    overrides = {"server": cli} if cli else None
    if args.config:
        return load_settings(args.config, overrides=overrides)
    return load_settings(base=DEMO_CONFIG, overrides=overrides)


def _serve(args: argparse.Namespace) -> int:
    output = logs.configure(args.log_level, log_format=args.log_format)
    try:
        try:
            settings = _load(args)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        traffic = 0.0 if args.no_demo_traffic else settings.demo.traffic
        # Before the Dispatcher exists: it picks up the global tracer provider when built.
        shutdown_tracing = configure_sdk(os.environ)
        from .server import serve

        try:
            return asyncio.run(serve(settings, demo_traffic=traffic))
        except ConfigError as exc:  # found only when the store is built (store.url)
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except StoreError as exc:  # e.g. a data directory that cannot be written
            print(f"error: cannot open the store: {exc}", file=sys.stderr)
            return 1
        finally:
            if shutdown_tracing is not None:
                shutdown_tracing()
    finally:
        output.stop()
