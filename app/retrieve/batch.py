"""Frames of one multi-frame instance in one request: PS3.18 Retrieve Frames ``frames/1,2,3``.

A multi-frame instance (enhanced CT/MR, cine) otherwise costs one request per frame. When the
scheduler starts a stage that fetches whole frames (not byte ranges, not streamed levels) for a
frame whose siblings wait for the same stage, up to ``RetrievePolicy.frames_per_request`` of them
(and ``frames_request_bytes`` of declared frame data) go in one request. Its multipart answer is
split as it arrives, each part fed to a FrameBody of its own; each image's job then decodes it
exactly as a single-frame answer (``BatchedAttempt``), so events, digests and failures are the same.

A part goes to its image as soon as its Content-Location names that frame (Orthanc and serve.py
send one); without one, only once the answer ended with as many parts as frames asked, so a server
that answers other frames than asked never puts one image's pixels under another's name. A frame
whose part did not come (cut answer, server error) is fetched alone, with its own retries. A list
refused (a 4xx other than 401/403, a redirect, an answer that is not multipart or has another
number of parts, a part naming another frame) makes the rest of the load ask one frame a request.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable
from urllib.parse import unquote, urlsplit

from ..config import RetrieveOptions, RetrieveStage
from ..readers.multipart import (
    MultipartError,
    MultipartReader,
    PartData,
    PartEnd,
    PartHeaders,
    boundary_from_content_type,
    parse_media_type,
)
from ..transport.errors import ProtocolError, TransportError
from ..transport.limits import SpeedWatch, head_within, paced
from .body import FrameBody
from .events import FirstBytes, RequestFinished, RequestStarted
from .fetch import WholeAttempt
from .limits import frame_byte_cap
from .policy import FetchKind, frame_request_url
from .settings import ACCEPT_ANY, DEFAULT_CONCURRENCY
from .state import ImageState, Job

if TYPE_CHECKING:
    from .engine import RetrieveEngine

__all__ = ["FrameBatching", "FrameBatch", "BatchedAttempt", "ListRefused"]

_FRAME_NUMBER = re.compile(r"/frames/(\d+)$")
_AUTH_STATUSES = frozenset({401, 403})  # a single request would be refused the same way


class ListRefused(Exception):
    """The server does not answer frame lists (as asked): one frame a request from now on."""


def frame_number(frame_url: str) -> int | None:
    """The frame number of a ``.../frames/{n}`` URL; None for any other (a BulkDataURI)."""
    match = _FRAME_NUMBER.search(frame_url)
    return int(match.group(1)) if match else None


@dataclass(eq=False)
class FramePart:
    """One frame of a batched request: its image, where its part stands, what became of it."""

    st: ImageState
    number: int
    url: str  # the single-frame URL: the body's, so events name the frame as a single answer would
    cap: int  # most bytes its part may hold (limits.frame_byte_cap)
    body: FrameBody | None = None
    named: bool = False  # its part's Content-Location named this frame
    failed: Exception | None = None
    outcome: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    def settle(self, body: FrameBody | None, error: Exception | None = None) -> None:
        """Hand the part to its image (a body holding the whole frame), or None: fetch it alone."""
        if self.outcome.done():
            return
        if error is not None:
            self.outcome.set_exception(error)
            self.outcome.exception()  # seen: a job that never asks does not warn at exit
        else:
            self.outcome.set_result(body)


class FrameBatching:
    """Which waiting frames join a job's request, and whether this server takes frame lists."""

    def __init__(self, engine: "RetrieveEngine") -> None:
        self.engine = engine
        self.refused = False  # a list was refused: one frame a request for the rest of the load
        # a list was answered: until then one list is out at a time and the other frames that
        # could join one wait for its answer (``parked``), so a server that refuses lists sees
        # one, not one per connection, and one that takes them gets lists for all
        self.accepted = False
        self.parked: list[int] = []
        self._wake: Callable[[], None] = lambda: None
        self._siblings: dict[str, list[int]] | None = None  # SOP instance -> its frames' images
        self._inflight: dict[int, FrameBatch] = {}  # image -> the unfinished batch bringing its frame

    def group(self, index: int, stage_pos: int) -> list[int]:
        """The images whose frames go in the job's request: [index] alone, or it and siblings
        waiting for the same stage, nearest to the image on screen first (taken from the queue)."""
        engine, policy = self.engine, self.engine.policy
        if self.refused or policy.frames_per_request < 2 or not self._batchable(index, stage_pos):
            return [index]
        sop = engine.stack.images[index].sop_instance_uid
        siblings = self._instances().get(sop, ())
        if len(siblings) < 2:
            return [index]
        scheduler = engine.scheduler
        if self._inflight and not self.accepted:
            if index == scheduler.current:
                return [index]  # the image on screen never waits on a list's fate
            scheduler.park(index, stage_pos)
            self.parked.append(index)
            return []
        waiting = sorted((i for i in siblings if i != index and (scheduler.pending.get(i) or [None])[0] == stage_pos
                          and i not in scheduler.running), key=lambda i: scheduler.key(i, stage_pos))
        # spread over the connections (a browser opens six to a host; more requests only queue
        # there): 30 frames go 5 a request, not 16 + 14 on two connections while four idle
        connections = min(policy.concurrency, DEFAULT_CONCURRENCY)
        most = min(policy.frames_per_request, max(2, -(-len(siblings) // connections)))
        room = policy.frames_request_bytes - engine.stack.images[index].fmt.frame_length
        chosen: list[int] = []
        for i in waiting:
            if len(chosen) + 1 >= most:
                break
            size = engine.stack.images[i].fmt.frame_length
            if size > room or not self._batchable(i, stage_pos):
                continue
            room -= size
            chosen.append(i)
        return [index, *scheduler.take_along(chosen, stage_pos)]

    def _batchable(self, index: int, stage_pos: int) -> bool:
        """A frame of a multi-frame instance that this stage fetches whole, nothing of it held."""
        engine = self.engine
        st, stage = engine._states[index], engine.config.stages[stage_pos]
        image = st.image
        if index in self._inflight or image.inline_data is not None or frame_number(image.frame_url) is None:
            return False
        options = engine.rules.options(stage, image)
        if engine.rules.fetch_kind(options) is not FetchKind.WHOLE:
            return False
        if st.best is not None and not engine.rules.stage_can_improve(image, stage, st.best_rank):
            return False
        held = st.bodies.get(frame_request_url(image.frame_url, options))
        return held is None or held.file_offset == 0

    def _instances(self) -> dict[str, list[int]]:
        if self._siblings is None:
            siblings: dict[str, list[int]] = {}
            for image in self.engine.stack.images:
                siblings.setdefault(image.sop_instance_uid, []).append(image.index)
            self._siblings = {sop: found for sop, found in siblings.items() if len(found) > 1}
        return self._siblings

    def launch(self, jobs: list[Job], on_end: Callable[[], None]) -> asyncio.Task | None:
        """Start the request of a group of two or more jobs (``on_end`` when it has ended: its
        slot is free); None for a job alone."""
        if len(jobs) < 2:
            return None
        batch = FrameBatch(self, [self.engine._states[job.index] for job in jobs], jobs[0].stage_pos)
        for job in jobs:
            self._inflight[job.index] = batch
        self._wake = on_end
        batch.task = asyncio.ensure_future(batch.run())
        batch.task.add_done_callback(lambda _: on_end())
        return batch.task

    def unpark(self) -> None:
        """The server answered a list (or the list ended): the frames waiting may go, in lists
        or alone."""
        if self.parked:
            parked, self.parked = self.parked, []
            self.engine.scheduler.unpark(parked)
            self._wake()

    def attempt(self, st: ImageState, job: Job, stage: RetrieveStage,
                options: RetrieveOptions) -> "BatchedAttempt | None":
        """The attempt of a job whose frame an unfinished batch brings (None: not one)."""
        batch = self._inflight.get(job.index)
        if batch is None or batch.stage is not stage:
            return None  # (a frame asked again for another stage meanwhile is fetched alone)
        return BatchedAttempt(self.engine, st, job, stage, options, batch=batch)

    def finished(self, batch: "FrameBatch") -> None:
        for part in batch.parts:
            if self._inflight.get(part.st.image.index) is batch:
                del self._inflight[part.st.image.index]


class FrameBatch:
    """One ``frames/a,b,c`` request and the parts it brings; runs as its own task (one slot)."""

    def __init__(self, batching: FrameBatching, states: list[ImageState], stage_pos: int) -> None:
        engine = batching.engine
        self.batching = batching
        self.engine = engine
        self.stage = engine.config.stages[stage_pos]
        self.options = engine.rules.options(self.stage, states[0].image)
        self.parts = [FramePart(st, frame_number(st.image.frame_url) or 0,
                                frame_request_url(st.image.frame_url, self.options),
                                frame_byte_cap(st.image.fmt, engine.policy.max_frame_bytes)) for st in states]
        self._by_index = {part.st.image.index: part for part in self.parts}
        first = states[0].image.frame_url
        listed = first[:_FRAME_NUMBER.search(first).start(1)] + ",".join(str(p.number) for p in self.parts)
        self.url = frame_request_url(listed, self.options)
        self.watch = SpeedWatch(engine.policy.transfer_limits, self.url, engine.clock)
        self.task: asyncio.Task | None = None
        self._current = -1  # the part being read

    async def delivery(self, index: int) -> FrameBody | None:
        """The body holding image ``index``'s whole frame, or None: fetch it alone."""
        return await asyncio.shield(self._by_index[index].outcome)

    async def run(self) -> None:
        try:
            await self._fetch()
        except ListRefused:
            self.batching.refused = True
        except (TransportError, MultipartError):
            pass  # a lost or cut answer: the frames not yet handed over are fetched alone
        except Exception:  # noqa: BLE001 - one batch never stops the stack: its frames go alone
            pass
        finally:
            for part in self.parts:
                part.settle(None)
            self.batching.finished(self)
            self.batching.unpark()

    async def _fetch(self) -> None:
        engine, leader = self.engine, self.parts[0].st
        if self.options.frames_path:
            await engine.stack.alternates_loaded()
        for part in self.parts:
            part.st.t_ms(engine.clock)  # each frame's clock starts with the request that brings it
        engine.check_url(self.url)
        engine.emit(RequestStarted(leader.image.index, self.stage.id, self.url, None, leader.t_ms(engine.clock)))
        received, status, cancelled = [0], 0, False
        try:
            resp = await head_within(engine.transport, self.url, self.watch.wait_seconds(),
                                     headers={"Accept": ACCEPT_ANY},
                                     priority="high" if leader.image.index == engine.current else "low")
        except asyncio.CancelledError:
            engine.emit(RequestFinished(leader.image.index, self.stage.id, self.url, 0, 0, leader.t_ms(engine.clock), True))
            raise
        except TransportError:
            engine.emit(RequestFinished(leader.image.index, self.stage.id, self.url, 0, 0, leader.t_ms(engine.clock)))
            raise
        try:
            status = resp.status
            engine.emit(FirstBytes(leader.image.index, self.stage.id, self.url, status, leader.t_ms(engine.clock)))
            reader = self._accept(resp)
            await self._read(resp, reader, received)
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            await resp.aclose()
            engine.emit(RequestFinished(leader.image.index, self.stage.id, self.url, status, received[0],
                                        leader.t_ms(engine.clock), cancelled))

    def _accept(self, resp) -> MultipartReader:
        """A multipart/related 200 from the study's origin; anything else ends the batch."""
        if resp.status in _AUTH_STATUSES or resp.status == 429 or resp.status >= 500:
            raise TransportError(f"{self.url}: HTTP {resp.status}")  # its frames go alone
        if resp.status != 200:
            raise ListRefused(f"{self.url}: HTTP {resp.status}")
        self.engine.check_url(resp.url or self.url)
        content_type = resp.headers.get("content-type") or ""
        media, _ = parse_media_type(content_type)
        if media != "multipart/related":
            raise ListRefused(f"{self.url}: answered {media or 'untyped'}, not multipart/related")
        self.batching.accepted = True
        self.batching.unpark()
        return MultipartReader(boundary_from_content_type(content_type))

    async def _read(self, resp, reader: MultipartReader, received: list[int]) -> None:
        # no answer longer than its frames may be (each part is capped too, as it arrives)
        async for chunk in paced(resp, self.watch, max_bytes=sum(part.cap for part in self.parts)):
            received[0] += len(chunk)
            for event in reader.feed(chunk):
                self._on(event)
            if not any(part.st.wanted for part in self.parts if not part.outcome.done()):
                return  # no frame still to come is wanted: the rest of the answer is not read
        reader.close()
        if self._current + 1 != len(self.parts):
            raise ListRefused(f"{self.url}: {self._current + 1} parts for {len(self.parts)} frames")
        for part in self.parts:  # the count is right: parts that named no frame are theirs
            if part.body is not None and part.failed is None:
                part.settle(part.body)

    def _on(self, event) -> None:
        if isinstance(event, PartHeaders):
            self._current += 1
            if self._current >= len(self.parts):
                raise ListRefused(f"{self.url}: more parts than the {len(self.parts)} frames asked")
            self._start_part(self.parts[self._current], event.headers)
            return
        if self._current < 0 or self._current >= len(self.parts):
            return
        part = self.parts[self._current]
        if isinstance(event, PartData) and part.failed is None:
            self._feed(part, event.data)
        elif isinstance(event, PartEnd) and part.failed is None:
            part.body.end_of_file()
            part.body.total = part.body.file_offset
            if part.named:
                part.settle(part.body)

    def _start_part(self, part: FramePart, headers: dict[str, str]) -> None:
        location = headers.get("content-location")
        if location:
            segments = unquote(urlsplit(location).path).rstrip("/").split("/")
            if segments[-1] != str(part.number) or part.st.image.sop_instance_uid not in segments:
                raise ListRefused(f"{self.url}: part {self._current + 1} is {location}, not frame {part.number}")
            part.named = True
        syntax = self.engine.rules.syntax_of(part.st.image, self.options)
        part.body = FrameBody(part.url, syntax)  # counted in the budget once its image takes it
        part.body.start_part(headers)

    def _feed(self, part: FramePart, data) -> None:
        n = len(data)
        part.st.bytes_received += n
        if part.body.file_offset + n > part.cap:
            fmt = part.st.image.fmt
            part.failed = ProtocolError(f"{part.url}: more than {part.cap} bytes for one frame "
                                        f"(a {fmt.rows}x{fmt.columns} image of {fmt.bits_allocated}-bit samples)")
            part.body = None
            part.settle(None, part.failed)
            return
        part.body.feed(data)


class BatchedAttempt(WholeAttempt):
    """A job whose frame comes in a batched request: it waits for its part, then decodes it as
    a single answer; a frame the batch did not bring is fetched alone."""

    def __init__(self, *args, batch: FrameBatch) -> None:
        super().__init__(*args)
        self.batch = batch

    async def run(self) -> None:
        body = await self.batch.delivery(self.st.image.index)
        self.check()
        if body is not None:
            self.st.drop_body(body.url)
            self.st.bodies[body.url] = self.body = body
            body.count_in(self.engine.budget.held)
        await super().run()
