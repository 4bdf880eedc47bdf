"""Each image's place in the load, as one explicit state machine (h11 ``_state`` style).

An image is IDLE until requested, QUEUED while stages wait for a slot, RUNNING while a job works
on it, GIVING_WAY while its job is being cancelled for the image on screen, and ends FINAL (no
stage can improve it) or FAILED (no stage could make it final); CANCELLED when no longer wanted.
Every change goes through ``ImageState.apply`` and the one table below, so an impossible change
(a start while running, a preemption of a queued image) raises instead of corrupting flags.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field
from typing import Iterator, Sequence

from ..study import StackImage
from .body import FrameBody
from .events import Refinement

__all__ = ["Phase", "Change", "TRANSITIONS", "FirstRequest", "ImageState", "ImageStates", "Job", "StateError"]


class Phase(enum.Enum):
    IDLE = "idle"
    QUEUED = "queued"
    RUNNING = "running"
    GIVING_WAY = "giving way"
    FINAL = "final"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def __repr__(self) -> str:
        return self.name


class Change(enum.Enum):
    REQUEST = "request"  # stages to run were queued
    START = "start"  # a job took a slot
    PREEMPT = "preempt"  # its job is asked to give way to the image on screen
    GAVE_WAY = "gave way"  # the job stopped; its stage runs again later
    STAGE_END = "stage end"  # a stage ended, more are queued
    FINISH_FINAL = "finish final"  # the last stage ended with a final image
    FINISH_FAILED = "finish failed"  # the last stage ended without one
    CANCEL = "cancel"
    FORGET = "forget"  # everything held was dropped

    def __repr__(self) -> str:
        return self.name


P, C = Phase, Change
_ANY_TIME = {C.CANCEL: P.CANCELLED, C.FORGET: P.IDLE}
TRANSITIONS: dict[Phase, dict[Change, Phase]] = {
    P.IDLE: {C.REQUEST: P.QUEUED, **_ANY_TIME},
    P.QUEUED: {C.REQUEST: P.QUEUED, C.START: P.RUNNING, C.FINISH_FINAL: P.FINAL, C.FINISH_FAILED: P.FAILED,
               **_ANY_TIME},
    P.RUNNING: {C.REQUEST: P.RUNNING, C.PREEMPT: P.GIVING_WAY, C.STAGE_END: P.QUEUED,
                C.FINISH_FINAL: P.FINAL, C.FINISH_FAILED: P.FAILED, **_ANY_TIME},
    P.GIVING_WAY: {C.REQUEST: P.GIVING_WAY, C.GAVE_WAY: P.QUEUED, C.STAGE_END: P.QUEUED,
                   C.FINISH_FINAL: P.FINAL, C.FINISH_FAILED: P.FAILED, **_ANY_TIME},
    P.FINAL: {C.REQUEST: P.QUEUED, **_ANY_TIME},
    P.FAILED: {C.REQUEST: P.QUEUED, **_ANY_TIME},
    P.CANCELLED: {C.REQUEST: P.QUEUED, C.CANCEL: P.CANCELLED, C.FORGET: P.IDLE},
}
"""phase -> change -> next phase; a change missing from a phase's row is a bug (StateError)."""


class StateError(RuntimeError):
    """A change the table does not allow in the current phase."""


@dataclass(eq=False)
class Job:
    """One stage of one image on a slot; ``live`` goes False when its results no longer count."""

    index: int
    stage_pos: int
    task: asyncio.Task | None = None
    live: bool = True


@dataclass
class ImageState:
    image: StackImage
    phase: Phase = Phase.IDLE
    job: Job | None = None  # the job holding a slot for it (kept until its task has ended)
    t0: float | None = None
    bytes_received: int = 0
    best: Refinement | None = None
    bodies: dict[str, FrameBody] = field(default_factory=dict)
    stages_done: set[int] = field(default_factory=set)
    failures: int = 0  # ImageFailed events reported since it was last requested

    def t_ms(self, clock) -> float:
        """Milliseconds since this image's first request (its events' time stamps)."""
        if self.t0 is None:
            self.t0 = clock()
        return round((clock() - self.t0) * 1000.0, 3)

    def drop_bodies(self) -> None:
        """Let go of every frame body held (their bytes leave the budget's running total)."""
        for body in self.bodies.values():
            body.release()
        self.bodies.clear()

    def drop_body(self, url: str) -> None:
        body = self.bodies.pop(url, None)
        if body is not None:
            body.release()

    def apply(self, change: Change) -> Phase:
        try:
            self.phase = TRANSITIONS[self.phase][change]
        except KeyError:
            raise StateError(f"image {self.image.index}: {change!r} while {self.phase!r}") from None
        return self.phase

    @property
    def wanted(self) -> bool:
        return self.phase not in (Phase.CANCELLED, Phase.IDLE)

    @property
    def busy(self) -> bool:
        """A job still holds a slot for it (perhaps one being cancelled)."""
        return self.job is not None

    @property
    def final(self) -> bool:
        return self.best is not None and self.best.final

    @property
    def best_rank(self) -> tuple[int, int]:
        return self.best.rank if self.best is not None else (0, 0)


class ImageStates:
    """Each image's ImageState, made the first time it is asked for: the request for the image on
    screen goes out before a 1000-image stack has built the others'. Iteration yields the states
    made so far, in index order (an image never asked for is IDLE and holds nothing)."""

    def __init__(self, images: Sequence[StackImage]) -> None:
        self._images = images
        self._made: list[ImageState | None] = [None] * len(images)
        self.count = 0  # states made so far

    def __len__(self) -> int:
        return len(self._made)

    def __getitem__(self, index: int) -> ImageState:
        st = self._made[index]  # IndexError as a list's (negative indices count from the end)
        if st is None:
            st = self._made[index] = ImageState(self._images[index])
            self.count += 1
        return st

    def __iter__(self) -> Iterator[ImageState]:
        return iter([st for st in self._made if st is not None])


class FirstRequest:
    """Whether a run's first request has gone out: the rest of its plan waits for it; and whether
    the image on screen is answered (its first result, or its failure): the other images'
    requests wait for that (a head start, bounded), and so does what else the page asks of the
    server (the study's series list). Starting a request costs the page's worker ~1 ms of Python:
    23 of them between the first bytes of the image on screen and its decode delayed it by 26 ms.
    Each run has its own."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._shown = asyncio.Event()

    def new_run(self) -> None:
        old, self._event = self._event, asyncio.Event()
        old.set()  # whoever waited on an earlier run's moves on to this one's
        self._shown.set()
        self._shown = asyncio.Event()

    def went_out(self) -> None:
        self._event.set()

    def shown(self) -> None:
        """The image on screen is answered (or failed, or its job ended): the others may start."""
        self._shown.set()

    async def answered(self, seconds: float) -> None:
        """Until the image on screen is answered, at most ``seconds`` (without ending the head start)."""
        try:
            await asyncio.wait_for(asyncio.shield(self._shown.wait()), seconds)
        except TimeoutError:
            pass

    async def head_start(self, seconds: float) -> None:
        """Until the image on screen is answered, at most ``seconds``."""
        if not self._shown.is_set():
            try:
                await asyncio.wait_for(self._shown.wait(), seconds)
            except TimeoutError:
                pass
            self._shown.set()

    async def wait(self) -> None:
        while True:
            event = self._event
            await event.wait()
            if event is self._event:
                return
