"""The claim books: which jobs each pool holds, kept by the writer in memory rather than
on disk, and the undo log that takes a rolled-back request's changes to them back."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence


class Delta(dict[str, list[int]]):
    """What one request changes in the writer's memory. pool -> [queued, claimed, dead]
    counter changes, applied once the transaction commits; and `undo`, the inverses of the
    changes it made to the claim books, which take effect at once (a later request of the
    same group must see them) and are run backwards if the request is rolled back."""

    __slots__ = ("undo",)

    def __init__(self) -> None:
        super().__init__()
        self.undo: list[Callable[[], None]] = []


Cursor = tuple[int, float, int]  # (priority, available_at, jid): a place in jobs_ready


def undo_all(deltas: Sequence[Delta]) -> None:
    """Take back the claim-book changes of rolled-back requests, latest first."""
    for delta in reversed(deltas):
        for step in reversed(delta.undo):
            step()


class Claims:
    """One pool's claimed jobs, kept by the writer in memory rather than on disk.

    A claimed job stays `state = 0` in its row: marking it would rewrite the row and its
    jobs_ready entry on every claim, and a crash turns every claim back into a ready job
    anyway. A new job handed straight to its pool (Store.hand_off) is written `state = 1`
    instead, and so never enters jobs_ready at all; a release writes it back to 0.

    `held` holds the claimed jids; `cursor` is the jobs_ready key of the last job looked
    at, so the next claim reads on from there instead of past every held job again.
    Anything written into the ready set ahead of the cursor (a release, a promotion, a
    replay, an enqueue that sorts first) clears it, and the next claim starts again from the
    head of the index. `future_at` is the latest time a job became ready at (written, promoted,
    replayed or released): a claim made with an earlier `now` may not see it, so it must
    not leave a cursor past it.

    Every change happens at once, under the store's lock (the reader looks at `held`), and
    answers its inverse for the request's undo log. A finished job moves from `held` to
    `leaving` until its outcome commits: until then its row still reads ready, and the
    reader must go on calling it claimed (see SqliteStore._r_get_message)."""

    __slots__ = ("cursor", "future_at", "held", "leaving", "lock", "ready_gen")

    def __init__(self, lock: threading.Lock) -> None:
        self.held: set[int] = set()
        self.leaving: set[int] = set()
        self.cursor: Cursor | None = None
        self.future_at = 0.0
        self.lock = lock
        #: bumped whenever jobs become ready, or scheduled, other than by an enqueue (a
        #: release, a promotion, a replay, a retry): the store's tail of the pool's queue,
        #: and what it knows of the next scheduled time, are stale then
        self.ready_gen = 0

    def _set(
        self, add: Sequence[int], remove: Sequence[int], cursor: Cursor | None
    ) -> tuple[set[int], Callable[[], None]]:
        with self.lock:
            before = self.cursor
            added = set(add).difference(self.held)
            removed = self.held.intersection(remove)
            self.held.update(added)
            self.held.difference_update(removed)
            self.cursor = cursor

        def undo() -> None:
            with self.lock:
                self.held.difference_update(added)
                self.held.update(removed)
                self.cursor = before

        return added, undo

    def claimed(
        self, jids: Sequence[int], cursor: Cursor | None
    ) -> tuple[set[int], Callable[[], None]]:
        """Hold `jids`: answers those held now (one the store claimed from its tail
        meanwhile is not claimed twice) and the undo."""
        return self._set(jids, (), cursor)

    def take_from_tail(self, jids: Sequence[int]) -> set[int]:
        """Hold `jids` outside any write (claims from the store's tail); answers those held
        now (one a claim of the file took meanwhile is not taken twice)."""
        with self.lock:
            added = set(jids).difference(self.held)
            self.held |= added
        return added

    def handed(self, jids: Sequence[int]) -> Callable[[], None]:
        """New jobs written claimed (state 1) for the pool's window: held, and never in
        jobs_ready, so the cursor stays where it is."""
        return self._set(jids, (), self.cursor)[1]

    def finished(self, jids: Sequence[int]) -> tuple[set[int], Callable[[], None]]:
        """Outcomes of `jids` are being written: those held (not released meanwhile) move
        to `leaving`. Answers them and the undo."""
        with self.lock:
            done = self.held.intersection(jids)
            self.held -= done
            self.leaving |= done

        def undo() -> None:
            with self.lock:
                self.leaving -= done
                self.held |= done

        return done, undo

    def in_flight(self, jid: int) -> bool:
        """Claimed, or finished by a write not yet committed (call under the lock)."""
        return jid in self.held or jid in self.leaving

    def released(self, jids: Sequence[int], latest: float) -> Callable[[], None]:
        """`jids` are ready again, the last of them due at `latest`."""
        return self._made_ready(jids, latest)

    def rewind(self, latest: float) -> Callable[[], None]:
        """Jobs were made ready ahead of the cursor (a replay), the last due at `latest`."""
        return self._made_ready((), latest)

    def _made_ready(self, release: Sequence[int], latest: float) -> Callable[[], None]:
        # They may sort anywhere, so the next claim starts from the head; and one made with
        # an earlier `now` must not leave its cursor past them (future_at), or they would
        # never be read again.
        self.readied()
        before = self.future_at
        self.future_at = max(before, latest)
        undo_set = self._set((), release, None)[1]

        def undo() -> None:
            undo_set()
            self.future_at = before

        return undo

    def give_back(self, jids: Sequence[int]) -> None:
        """Un-hold jobs taken from the tail that their claim could not hand out: ready
        again, which a tail begun meanwhile does not hold (so its claims ask the file)."""
        with self.lock:
            self.held.difference_update(jids)
            self.ready_gen += 1

    def readied(self) -> None:
        """Jobs became ready other than by an enqueue. Never undone: a generation moved in
        vain only sends the next claim to the file."""
        with self.lock:
            self.ready_gen += 1

    def arrived(self, priority: int, earliest: float, latest: float) -> Callable[[], None]:
        """Ready jobs were written: the first sorts at (priority, earliest) or later (their
        jids are new, higher than any the cursor has seen), the last is due at `latest`."""
        before = self.future_at
        self.future_at = max(before, latest)
        c = self.cursor
        ahead = c is not None and (priority > c[0] or (priority == c[0] and earliest < c[1]))
        undo_cursor = self._set((), (), None if ahead else c)[1]

        def undo() -> None:
            undo_cursor()
            self.future_at = before

        return undo


class ClaimBooks(dict[str, Claims]):
    """Every pool's Claims, sharing the store's lock (the reader looks in)."""

    __slots__ = ("lock",)

    def __init__(self, lock: threading.Lock) -> None:
        super().__init__()
        self.lock = lock

    def of(self, pool: str) -> Claims:
        """The pool's books, opened on first use."""
        books = self.get(pool)
        if books is None:
            books = self[pool] = Claims(self.lock)
        return books
