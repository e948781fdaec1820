"""`dispatcher bench`: the self-test runs as a user runs it (shortened) and prints every
figure it promises, each a number; it leaves nothing behind in the working directory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
NUMBER = r"[0-9][0-9,]*(?:\.[0-9]+)?"


@pytest.mark.allow_blocking
@pytest.mark.slow
def test_bench_prints_what_this_machine_sustains(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-m", "dispatcher", "bench", "--seconds", "2"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "temporary SQLite store (synchronous FULL)" in out
    for figure in [
        rf"ingest, single messages .*: +{NUMBER} req/s",
        rf"ingest, batches of 1,000 .*: +{NUMBER} messages/s",
        rf"end to end, .*: +{NUMBER} messages/s",
        rf"latency, .*: p50 {NUMBER} ms, p99 {NUMBER} ms, p99\.9 {NUMBER} ms",
    ]:
        assert re.search(figure, out), (figure, out)
    assert "refused" not in out  # no request of the load was turned away
    assert "only" not in out  # every message of the end-to-end run was delivered
    assert list(tmp_path.iterdir()) == []


def test_bench_takes_a_duration(capsys: pytest.CaptureFixture[str]) -> None:
    from dispatcher.cli import main

    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    assert "--seconds" in capsys.readouterr().out
