"""The dispatcher against Celery, Dramatiq, RQ, huey, arq and taskiq on the same machine, in
the same invocation: `python -m tests.bench.peers.run` (see run.py). Not collected by pytest
(no test_ files) and not installed by .ci/run: the peers come with the `bench` extra."""
