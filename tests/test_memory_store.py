"""The memory store's own parts; its semantics are the contract suite's."""

from __future__ import annotations

import heapq
import random

from dispatcher.stores.memory import _ReadyQueue


def test_ready_queue_pops_in_the_order_a_heap_would() -> None:
    rng = random.Random(7)
    queue, oracle = _ReadyQueue(), []
    clock, key = 0.0, 0
    for _ in range(5000):
        if rng.random() < 0.6 or not oracle:
            key += 1
            clock += rng.choice((0.0, 0.001))
            # Mostly in order; now and then a higher priority or an older time.
            priority = -rng.choice((0, 0, 0, 0, 1, 5))
            at = clock - rng.choice((0.0, 0.0, 0.0, 10.0))
            entry = (priority, at, key)
            queue.push(entry)
            heapq.heappush(oracle, entry)
        else:
            assert queue.pop() == heapq.heappop(oracle)
        assert len(queue) == len(oracle)
    assert [queue.pop() for _ in range(len(queue))] == sorted(oracle)
    assert queue.pop() is None
