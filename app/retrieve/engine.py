"""RetrieveEngine: the facade that runs a load. It owns the event loop side (workers, tasks,
cancellation) and delegates every decision: the Scheduler picks jobs, the Policy judges results,
ImageState keeps each image's phase, attempts fetch, the Budget bounds memory."""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator, Callable, Iterable

from ..config import RetrieveConfig, RetrieveOptions, RetrieveStage
from ..study import Stack
from ..transport.base import Transport
from .batch import FrameBatching
from .budget import Budget
from .events import EngineEvent, ImageFailed, Refinement, failure_message, RequestStarted
from .fetch import Attempt, InlineAttempt, StreamAttempt, Superseded, WholeAttempt
from .nearby import replicas
from .policy import FetchKind, Policy
from .ranges import RangeAttempt
from .refine import decode_pixels, scaled_spacing
from .scheduler import Scheduler
from .settings import RetrievePolicy
from .state import Change, FirstRequest, ImageState, ImageStates, Job, Phase

__all__ = ["RetrieveEngine"]

_END = object()  # in the event queue: the run is over


class RetrieveEngine:
    """Load a stack progressively; events through ``run()`` (async iterator) and/or ``on_event``."""

    def __init__(self, stack: Stack, config: RetrieveConfig, transport: Transport, *,
                 policy: RetrievePolicy = RetrievePolicy(), viewport: tuple[int, int] | None = None,
                 on_event: Callable[[EngineEvent], None] | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.stack = stack
        self.config = config
        self.transport = transport
        self.policy = policy
        self.rules = Policy(config, stack, viewport)
        self.on_event = on_event
        self.clock = clock
        self.scheduler = Scheduler([stage.priority for stage in config.stages])
        self.budget = Budget(policy.cache_bytes)
        self._states = ImageStates(stack.images)  # made as images are asked for
        self._queue: asyncio.Queue | None = None
        self._wake: asyncio.Event | None = None
        self._drained: asyncio.Event | None = None  # run() has handed out all but a few events
        self._preempt_handle: asyncio.Handle | None = None
        self._requested: set[int] = set()
        self.first_request = FirstRequest()
        self._planning = False  # the rest of a run's plan is still to be built
        self._touched: set[int] = set()  # images asked about while it was
        self.frames_encoded = False  # the server sends frames Content-Encoded: no byte ranges
        self.batching = FrameBatching(self)  # frames of one instance in one request (frames/1,2,3)

    # -- public control ----------------------------------------------------------------------
    @property
    def viewport(self) -> tuple[int, int] | None:
        return self.rules.viewport

    @property
    def current(self) -> int:
        return self.scheduler.current

    def set_current(self, index: int) -> None:
        """The image on screen: its jobs go first; the others are ordered by distance to it."""
        self.scheduler.set_current(max(0, min(index, len(self._states) - 1)))
        if self._preempt_handle is not None:
            self._preempt_handle.cancel()
            self._preempt_handle = None
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # not loading yet: the first jobs follow the new order anyway
        if self.policy.preempt_delay <= 0:
            self._preempt()
        else:
            self._preempt_handle = loop.call_later(self.policy.preempt_delay, self._preempt)

    def _preempt(self) -> None:
        """Scrolled onto an image that waits while every slot is taken: the running job that
        matters least gives way. Its transfer is cancelled, what it received is kept, and it
        resumes from the first byte not held when its turn comes again."""
        self._preempt_handle = None
        if len(self.scheduler.running) < self.policy.concurrency:
            return
        running = [(st.job.index, st.job.stage_pos) for st in self._states
                   if st.phase is Phase.RUNNING and st.job is not None and st.job.task is not None
                   and not st.job.task.done()]
        victim = self.scheduler.victim(running)
        if victim is not None:
            st = self._states[victim]
            st.apply(Change.PREEMPT)
            st.job.task.cancel()

    def cancel(self, indices: Iterable[int]) -> None:
        """Stop loading these images: pending jobs dropped, transfers cancelled, results ignored."""
        for i in indices:
            st = self._states[i]
            if self._planning:
                self._touched.add(i)
            st.apply(Change.CANCEL)
            self.scheduler.drop(i)
            if st.job is not None:
                st.job.live = False
                if st.job.task is not None and not st.job.task.done():
                    st.job.task.cancel()
            st.drop_bodies()
        if self._wake:
            self._wake.set()

    def forget(self, indices: Iterable[int]) -> None:
        """Drop everything held for these images (pixels, bytes, stages done): the page evicted
        them to stay within its memory budget. ``request`` (or a new ``run``) loads them again."""
        indices = list(indices)
        self.cancel(indices)
        for i in indices:
            st = self._states[i]
            st.best = None
            st.stages_done.clear()
            self.budget.forget(i)
            st.apply(Change.FORGET)

    def pending(self) -> list[int]:
        """Images with stages still to run (requested, not running)."""
        return sorted(i for i, todo in self.scheduler.pending.items() if todo and self._states[i].wanted)

    def request(self, indices: Iterable[int]) -> None:
        """(Re)queue images: stages not yet done for them are scheduled again."""
        n = len(self._states)
        for i in indices:
            st = self._states[i]
            if self._planning:
                self._touched.add(i)
            self._requested.add(i)
            todo = [pos for pos, stage in enumerate(self.config.stages)
                    if pos not in st.stages_done and stage.selects(i, n)]
            if st.phase in (Phase.IDLE, Phase.CANCELLED, Phase.FINAL, Phase.FAILED):
                st.failures = 0
            if todo or not st.wanted:
                st.apply(Change.REQUEST)
            if not self.scheduler.queue(i, todo):
                self._settle(st)
        if self._wake:
            self._wake.set()

    async def aclose(self) -> None:
        """Stop everything: pending jobs dropped, transfers cancelled (the transport stays open)."""
        self.cancel([st.image.index for st in self._states])
        tasks = [st.job.task for st in self._states
                 if st.job is not None and st.job.task is not None and not st.job.task.done()]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def best(self, index: int) -> Refinement | None:
        return self._states[index].best

    def reached_final(self, index: int) -> bool:
        return self._states[index].final

    def phase(self, index: int) -> Phase:
        return self._states[index].phase

    @property
    def held_bytes(self) -> int:
        return self.budget.held_bytes

    # -- running -----------------------------------------------------------------------------
    async def run(self, indices: Iterable[int] | None = None) -> AsyncIterator[EngineEvent]:
        """Load the given images (default: the whole stack) through all stages; yield events.
        The image on screen is planned and asked for before the others (see ``_plan_rest``)."""
        self._queue = asyncio.Queue()
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self.first_request.new_run()
        wanted = range(len(self._states)) if indices is None else list(indices)
        self._requested, self._touched = set(), set()
        first = [self.current] if self.current in wanted else []
        self.request(first)
        if not first:
            self.first_request.went_out()
        if not self.scheduler.pending.get(self.current):
            self.first_request.shown()  # nothing to wait for: the image on screen has no job here
        self._planning = True
        runner = asyncio.ensure_future(self._run_workers([i for i in wanted if i != self.current]))
        # the end of the run comes through the queue, after every event before it: one await per
        # event and no task per event (each asyncio step costs ~0.1 ms under Pyodide)
        runner.add_done_callback(lambda _: self._queue.put_nowait(_END))
        try:
            while True:
                event = await self._queue.get()
                if self._queue.qsize() <= self.policy.concurrency:
                    self._drained.set()
                if event is _END:
                    runner.result()
                    return
                yield event
        finally:
            self.first_request.went_out()  # nothing more is coming: no one waits for it
            self.first_request.shown()
            if not runner.done():
                runner.cancel()
                for st in self._states:
                    if st.job is not None and st.job.task is not None and not st.job.task.done():
                        st.job.task.cancel()
                try:
                    await runner
                except (asyncio.CancelledError, Exception):
                    pass

    async def _run_workers(self, rest: list[int]) -> None:
        """Start a job whenever a slot is free and the scheduler has one: a task per job and one
        waiter (this loop), not ``concurrency`` idle workers all woken by every job's end (under
        Pyodide each wake-up is a loop step: ~1000 of them for a 20-slice stack)."""
        running: set[asyncio.Task] = set()
        planner = asyncio.ensure_future(self._plan_rest(rest))
        try:
            while True:
                while self._queue is not None and self._queue.qsize() > self.policy.concurrency:
                    # events run() has not handed out hold their pixels, out of the budget's reach:
                    # let the reader catch up before more work (a fast server otherwise fills memory)
                    self._drained.clear()
                    await self._drained.wait()
                self._wake.clear()  # before looking: a job ending from here on wakes the wait below
                for task in [t for t in running if t.done()]:
                    running.discard(task)
                    if not task.cancelled() and task.exception() is not None:
                        raise task.exception()
                taken = self.scheduler.take() if len(running) < self.policy.concurrency else None
                if taken is not None:
                    self._start(taken, running)
                    await self.first_request.head_start(self.policy.first_image_head_start)
                    continue
                if not running and self.scheduler.idle and not self._planning:
                    return
                await self._wake.wait()
        finally:
            for task in (planner, *running):
                task.cancel()

    async def _plan_rest(self, rest: list[int]) -> None:
        """Plan the images after the one on screen, once its first request is out (or its job
        ended, or waits for alternates.json): the other workers wait until the whole plan is in,
        so jobs are taken in the order a plan made all at once gives. An image asked for in the
        meantime (requested, cancelled, forgotten) keeps what it was asked."""
        try:
            await self.first_request.wait()
            self.request([i for i in rest if i not in self._touched])
        finally:
            self._planning = False
            self._wake.set()

    def _start(self, taken: tuple[int, int], running: set) -> None:
        jobs = []
        for index in self.batching.group(*taken):  # frames going in one request hold its one slot
            st = self._states[index]
            job = st.job = Job(index, taken[1])
            st.apply(Change.START)
            job.task = asyncio.ensure_future(self._run_job(st, job))
            # a callback, not a finally in the job: a task cancelled before its first step never runs
            job.task.add_done_callback(lambda task, st=st, job=job: self._job_done(st, job, task))
            jobs.append(job)
        if jobs:  # (none: its frame waits for the server's answer to a first frame list)
            running.add(self.batching.launch(jobs, self._wake.set) or jobs[0].task)

    def _job_done(self, st: ImageState, job: Job, task: asyncio.Task) -> None:
        gave_way = not task.cancelled() and task.exception() is None and bool(task.result())
        self._end_job(st, job, gave_way)
        self._wake.set()

    async def _run_job(self, st: ImageState, job: Job) -> bool:
        """One stage of one image; True if it gave way to the image on screen (not done)."""
        stage = self.config.stages[job.stage_pos]
        image = st.image
        try:
            if st.best is not None and not self.rules.stage_can_improve(image, stage, st.best_rank):
                return False  # already as good as this stage can make it
            if image.inline_data is not None:
                await InlineAttempt(self, st, job, stage).run()
                return False
            options = self.rules.options(stage, image)
            if options.frames_path:
                if self.stack.pending_alternates is not None and not self.stack.pending_alternates.done():
                    self.first_request.went_out()  # waiting on the network already
                await self.stack.alternates_loaded()
            await self._attempt(st, job, stage, options).run()
        except asyncio.CancelledError:
            if st.phase is Phase.GIVING_WAY and job.live:
                return True  # asked to by _preempt: not an error, and the stage is not done
            raise
        except Superseded:
            pass
        except Exception as exc:  # one bad image never stops the stack
            if job.live:
                self._fail(st, stage, failure_message(exc))
        return False

    def _attempt(self, st: ImageState, job: Job, stage: RetrieveStage, options: RetrieveOptions) -> Attempt:
        kind = self.rules.fetch_kind(options)
        if kind is FetchKind.RANGES and not self.frames_encoded:
            return RangeAttempt(self, st, job, stage, options)
        if kind is FetchKind.RANGES:  # no ranges over Content-Encoded frames: stream them whole
            return StreamAttempt(self, st, job, stage, options, streaming=True)
        if kind is FetchKind.STREAM:
            return StreamAttempt(self, st, job, stage, options)
        return self.batching.attempt(st, job, stage, options) or WholeAttempt(self, st, job, stage, options)

    def _end_job(self, st: ImageState, job: Job, gave_way: bool) -> None:
        st.job = None
        self.first_request.went_out()
        if job.index == self.current:
            self.first_request.shown()
        if job.live:
            if gave_way:
                self.scheduler.put_back(job.index, job.stage_pos)  # its turn comes again
                st.apply(Change.GAVE_WAY)
            else:
                st.stages_done.add(job.stage_pos)
                if self.scheduler.pending.get(job.index):
                    st.apply(Change.STAGE_END)
                else:
                    self._finish(st, self.config.stages[job.stage_pos])
        else:
            self._settle(st)
        self.scheduler.done(job.index)
        self.budget.trim(self._states, st, self.current)

    def _settle(self, st: ImageState) -> None:
        """Requested again with no stage left to run (and no job): it is what it already was."""
        if st.phase is Phase.QUEUED and not st.busy and not self.scheduler.pending.get(st.image.index):
            st.apply(Change.FINISH_FINAL if st.final else Change.FINISH_FAILED)

    def _finish(self, st: ImageState, stage: RetrieveStage) -> None:
        """The image's last stage ended: final, or failed with a message (never silently neither)."""
        if st.final:
            st.apply(Change.FINISH_FINAL)
            return
        if not st.failures:
            best = st.best
            held = (f"the best image is {best.status.name} {best.columns}x{best.rows}"
                    if best is not None else "no image was decoded")
            self._fail(st, stage, f"no stage could make the image final: {held}")
        st.apply(Change.FINISH_FAILED)

    def _fail(self, st: ImageState, stage: RetrieveStage, message: str) -> None:
        image = st.image
        st.failures += 1
        self.emit(ImageFailed(image.index, image.sop_instance_uid, image.frame, stage.id, message, st.t_ms(self.clock)))

    # -- events ------------------------------------------------------------------------------
    def emit(self, event: EngineEvent) -> None:
        if isinstance(event, RequestStarted):
            self.first_request.went_out()
        elif event.index == self.current and isinstance(event, (Refinement, ImageFailed)):
            self.first_request.shown()  # answered: the others may start
        if self._queue is not None:
            self._queue.put_nowait(event)
        if self.on_event is not None:
            self.on_event(event)

    def check_url(self, url: str) -> None:
        self.rules.check_url(url)

    # -- decoding ----------------------------------------------------------------------------
    def decode(self, attempt: Attempt, *, reduce: int, end: int | None) -> None:
        """Decode what the attempt's body holds (a level prefix, or all of it) and report it if
        it beats what is shown; a whole codestream is checked before it can become final."""
        attempt.check()
        st, body, options, image = attempt.st, attempt.body, attempt.options, attempt.st.image
        syntax = body.resolved_syntax
        t = self.clock()
        pixels = decode_pixels(body, self.rules.pixel_format(image, body, options), reduce=reduce, end=end)
        if pixels is None:
            return  # this decoder cannot read prefixes: wait for the whole frame
        decode_ms = round((self.clock() - t) * 1000.0, 3)
        rows, columns = pixels.shape[:2]
        status = self.rules.status_of(image, options, syntax, rows, columns, partial=end is not None,
                                      stream_lossless=body.stream_lossless if end is None else None)
        rank = (int(status), rows * columns)
        if st.best is not None and rank <= st.best_rank:
            return  # never replace a better (or equal) result
        final = end is None and not self.rules.later_stage_improves(
            image, attempt.job.stage_pos, rank, image.index in self._requested, len(self._states))
        ref = Refinement(
            index=image.index, sop_instance_uid=image.sop_instance_uid, frame=image.frame,
            stage_id=attempt.stage.id, status=status, rows=rows, columns=columns,
            pixel_spacing=scaled_spacing(image, rows, columns),
            bytes_received=st.bytes_received, t_ms=st.t_ms(self.clock), decode_ms=decode_ms, final=final,
            pixels=pixels, transfer_syntax=syntax, reduce=reduce, url=body.url,
        )
        st.best = ref
        self.budget.remember(self._states, image.index, pixels.nbytes, self.current)
        self.emit(ref)
        for copy in replicas(ref, attempt.stage, self._states, self._requested):
            self.emit(copy)

