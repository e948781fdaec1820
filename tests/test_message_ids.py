"""Generated message ids: unique, time-ordered, and valid ids in the API's own grammar."""

from __future__ import annotations

from dispatcher.http.ingest import MESSAGE_ID
from dispatcher.message import IdGenerator


def test_many_equals_one_at_a_time_formatting() -> None:
    gen = IdGenerator()
    gen._counter = 4000  # so the batch crosses a 4096 boundary of the counter table
    ids = gen.many(200)
    prefix = ids[0][:20]
    assert ids == [f"{prefix}{n:06x}" for n in range(4000, 4200)]
    assert all(MESSAGE_ID.match(i) for i in ids)


def test_the_counter_wraps_at_24_bits_without_repeating_within_a_batch() -> None:
    gen = IdGenerator()
    gen._counter = 0xFFFFFF - 2
    ids = gen.many(6)
    assert [i[-6:] for i in ids] == ["fffffd", "fffffe", "ffffff", "000000", "000001", "000002"]
    assert gen()[-6:] == "000003"


def test_ids_are_unique_across_calls_and_sort_by_creation_time() -> None:
    gen = IdGenerator()
    ids = gen.many(5000) + [gen() for _ in range(100)] + gen.many(5000)
    assert len(set(ids)) == len(ids)
    assert [i[:12] for i in ids] == sorted(i[:12] for i in ids)  # the millisecond part
    assert IdGenerator().many(1)[0][12:20] != gen()[12:20]  # another process's node part
