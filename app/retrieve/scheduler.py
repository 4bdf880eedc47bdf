"""Which job runs next, and which running job gives way: pure, no I/O, no asyncio.

One priority queue over the stack: the image on screen first, then stages by priority and order,
then images nearest to the one on screen. Each image runs its stages in order, one at a time.
"""

from __future__ import annotations

import heapq
from typing import Iterable, Sequence

__all__ = ["Scheduler"]


class Scheduler:
    def __init__(self, stage_priorities: Sequence[int]) -> None:
        self.priorities = tuple(stage_priorities)
        self.current = 0
        self.pending: dict[int, list[int]] = {}  # image -> stage positions still to run, in order
        self.running: set[int] = set()
        self._heap: list[tuple[tuple, int, int]] = []

    def key(self, index: int, stage_pos: int) -> tuple:
        return (0 if index == self.current else 1, self.priorities[stage_pos], stage_pos,
                abs(index - self.current), index)

    def queue(self, index: int, stage_positions: Iterable[int]) -> bool:
        """Replace the image's pending stages; True if any."""
        todo = list(stage_positions)
        if not todo:
            self.pending.pop(index, None)
            return False
        self.pending[index] = todo
        self._push(index)
        return True

    def put_back(self, index: int, stage_pos: int) -> None:
        """A stage that gave way runs again before the image's others."""
        self.pending.setdefault(index, []).insert(0, stage_pos)

    def drop(self, index: int) -> None:
        self.pending.pop(index, None)

    def set_current(self, index: int) -> None:
        self.current = index
        self._heap = [(self.key(i, p[0]), i, p[0]) for i, p in self.pending.items()
                      if p and i not in self.running]
        heapq.heapify(self._heap)

    def take(self) -> tuple[int, int] | None:
        """The next (image, stage position) to run, marked running; None if nothing can start."""
        while self._heap:
            key, i, pos = heapq.heappop(self._heap)
            todo = self.pending.get(i)
            if not todo or todo[0] != pos or i in self.running or key != self.key(i, pos):
                continue  # stale entry
            todo.pop(0)
            if not todo:
                del self.pending[i]
            self.running.add(i)
            return i, pos
        return None

    def take_along(self, indices: Iterable[int], stage_pos: int) -> list[int]:
        """Of these images, those whose next stage is ``stage_pos`` and that may start, marked
        running with it (frames that go in one request with the job just taken)."""
        taken = []
        for i in indices:
            todo = self.pending.get(i)
            if not todo or todo[0] != stage_pos or i in self.running:
                continue
            todo.pop(0)
            if not todo:
                del self.pending[i]
            self.running.add(i)
            taken.append(i)
        return taken

    def park(self, index: int, stage_pos: int) -> None:
        """A job just taken that must wait (its frame goes in a list the server may refuse): back
        in the queue but not taken again until ``unpark``."""
        self.running.discard(index)
        self.pending.setdefault(index, []).insert(0, stage_pos)

    def unpark(self, indices: Iterable[int]) -> None:
        for index in indices:
            self._push(index)

    def done(self, index: int) -> None:
        """The image's job ended: its next stage (if any) may run."""
        self.running.discard(index)
        self._push(index)

    @property
    def idle(self) -> bool:
        return not self.pending and not self.running

    def victim(self, running: Iterable[tuple[int, int]]) -> int | None:
        """Of the running (image, stage) jobs, the one that should give way to the image on
        screen waiting for a slot: the one that matters least, if it matters less than it."""
        todo = self.pending.get(self.current)
        if not todo or self.current in self.running:
            return None
        jobs = list(running)
        if not jobs:
            return None
        index, pos = max(jobs, key=lambda job: self.key(*job))
        return index if self.key(index, pos) > self.key(self.current, todo[0]) else None

    def _push(self, index: int) -> None:
        todo = self.pending.get(index)
        if todo and index not in self.running:
            heapq.heappush(self._heap, (self.key(index, todo[0]), index, todo[0]))
