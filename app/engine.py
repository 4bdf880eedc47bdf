"""The progressive retrieve engine: stages over a stack, streaming and byte-range HTJ2K, alternates.

Driven by a RetrieveConfig (Cornerstone3D's vocabulary). For every (image, stage) it requests the
frame URL (``framesPath`` in place of ``/frames/``, ``urlArguments`` appended) and turns the bytes
into Refinement events:

- streaming: chunks go through the multipart reader and the codestream scanner; a partial decode
  runs only when a resolution level has completely arrived (the newest one, never one smaller
  than what is shown), then the lossless decode at the end;
- byte ranges: the first range is ``chunkSize`` bytes; if they hold no whole allowed level, a
  second range (asked for as soon as the TLM is in) ends exactly where the smallest allowed level
  does; a later stage asks for the rest from the first byte not held, so no byte is fetched
  twice, streamed if ``streaming`` (levels that fill the viewport show as they complete). A server that ignores Range
  (200) replaces what is held and counts as complete; 416 at the end of the file means complete;
- alternates (JPEG-LS thumbnail, lossy): a result never replaces a better one;
- failures: a 5xx/429 answer or a lost transfer is retried (``retries``, doubling back-off,
  Retry-After capped) and a cut transfer resumes from the first byte not held; a JPEG 2000
  codestream that ends before EOC or that the scanner rejects never becomes the final image.

Scheduling: one priority queue over the stack (the current image first, then stages in order,
nearest images first), bounded concurrency, per-image stage order, cancellation of images no
longer wanted (their transfers are cancelled and late results dropped), a memory budget over
decoded pixels. Decoding is synchronous and bounded (one level per decode); the engine yields to
the event loop after each decode.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import heapq
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable, Iterable
from urllib.parse import urlencode

import numpy

from .codecs import (
    HTJ2K,
    HTJ2K_LOSSLESS,
    HTJ2K_LOSSLESS_RPCL,
    HTJ2K_PRIVATE,
    MAX_FRAME_BYTES,
    DecodeError,
    PixelFormat,
    codec_for,
    decode_frame,
)
from .config import ImageQualityStatus, RetrieveConfig, RetrieveOptions, RetrieveStage
from .readers.codestream import (
    CodestreamComplete,
    CodestreamError,
    CodestreamScanner,
    MainHeader,
    ResolutionComplete,
)
from .readers.multipart import (
    MultipartEnd,
    MultipartError,
    MultipartReader,
    PartData,
    PartEnd,
    PartHeaders,
    boundary_from_content_type,
    parse_media_type,
)
from .study import Stack, StackImage
from .transport.base import (
    DIGEST_ALGORITHMS,
    ProtocolError,
    Transport,
    TransportError,
    parse_content_digest,
    parse_content_range,
)

__all__ = [
    "ACCEPT_ANY",
    "RetrieveEngine",
    "Refinement",
    "ImageFailed",
    "RequestStarted",
    "FirstBytes",
    "RequestFinished",
    "EngineEvent",
    "frame_request_url",
]

ACCEPT_ANY = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
DEFAULT_CONCURRENCY = 6
DEFAULT_CACHE_BYTES = 1 << 30
DEFAULT_RETRIES = 2  # further attempts after a 5xx/429 answer or a failed transfer
DEFAULT_RETRY_BACKOFF = 0.5  # seconds before the first retry; doubles each time
MAX_RETRY_AFTER = 5.0  # longest Retry-After honoured (seconds)
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
PREEMPT_DELAY = 0.2  # seconds
LOW_SPEED = (1024, 30.0)  # bytes, seconds: curl's --speed-limit / --speed-time, per transfer
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
# syntaxes whose decoder reads a prefix holding whole resolution levels (OpenJPH, skipres)
PREFIX_DECODABLE = frozenset({HTJ2K_LOSSLESS, HTJ2K_LOSSLESS_RPCL, HTJ2K, HTJ2K_PRIVATE})

_MEDIA_DEFAULT_SYNTAX = {
    "image/jphc": "1.2.840.10008.1.2.4.201",
    "image/jhc": "1.2.840.10008.1.2.4.201",
    "image/jls": "1.2.840.10008.1.2.4.80",
    "image/jp2": "1.2.840.10008.1.2.4.90",
    "image/jpx": "1.2.840.10008.1.2.4.92",
    "image/jpeg": "1.2.840.10008.1.2.4.50",
    "image/dicom-rle": "1.2.840.10008.1.2.5",
    "application/octet-stream": EXPLICIT_VR_LITTLE_ENDIAN,
}


# -- events --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Refinement:
    """A decoded image for a stack position, better than anything shown before for it."""

    index: int
    sop_instance_uid: str
    frame: int
    stage_id: str
    status: ImageQualityStatus
    rows: int
    columns: int
    pixel_spacing: tuple[float, float] | None  # scaled: a reduced image covers the same extent
    bytes_received: int  # frame bytes received for this image so far (all requests)
    t_ms: float  # since the image's first request
    decode_ms: float
    final: bool  # no later stage will improve this image
    pixels: numpy.ndarray = field(repr=False, compare=False)
    transfer_syntax: str
    reduce: int = 0  # resolution levels skipped (0 = full size of the encoding)
    url: str = ""


@dataclass(frozen=True)
class ImageFailed:
    index: int
    sop_instance_uid: str
    frame: int
    stage_id: str
    message: str
    t_ms: float = 0.0


@dataclass(frozen=True)
class RequestStarted:
    index: int
    stage_id: str
    url: str
    byte_range: tuple[int, int | None] | None
    t_ms: float


@dataclass(frozen=True)
class FirstBytes:
    index: int
    stage_id: str
    url: str
    status: int
    t_ms: float


@dataclass(frozen=True)
class RequestFinished:
    index: int
    stage_id: str
    url: str
    status: int
    bytes_received: int
    t_ms: float
    cancelled: bool = False


EngineEvent = Refinement | ImageFailed | RequestStarted | FirstBytes | RequestFinished


# -- URLs ----------------------------------------------------------------------------------------


def frame_request_url(frame_url: str, options: RetrieveOptions) -> str:
    """framesPath replaces the last ``/frames/``; urlArguments are appended as a query."""
    url = frame_url
    if options.frames_path:
        path = "/" + options.frames_path.strip("/") + "/"
        i = url.rfind("/frames/")
        if i >= 0:
            url = url[:i] + path + url[i + len("/frames/") :]
    if options.url_arguments:
        url += ("&" if "?" in url else "?") + urlencode(options.url_arguments)
    return url


# -- one frame resource's bytes --------------------------------------------------------------


class _FrameBody:
    """The bytes of one frame resource received so far, parsed as they arrive.

    File bytes (what the server stores, possibly a single-part multipart wrapper) go in; the frame
    bytes (codestream) accumulate in one bytearray; the scanner reports complete levels.
    """

    def __init__(self, url: str, fallback_syntax: str) -> None:
        self.url = url
        self.fallback_syntax = fallback_syntax
        self.file_offset = 0  # file bytes fed
        self.total: int | None = None  # file size when known (Content-Range / 200 end)
        self.data = bytearray()
        self.syntax: str | None = None
        self._content_type: str | None = None
        self._reader: MultipartReader | None = None
        self._mode: str | None = None  # "multipart" | "raw"
        self._sniff = bytearray()
        self._part_done = False
        self.scanner: CodestreamScanner | None = None
        self.header: MainHeader | None = None
        self.levels: list[ResolutionComplete] = []
        self.codestream_complete = False
        self.codestream_error: str | None = None  # the scanner's reason to reject the codestream
        self.complete = False
        self.partial_failed = False
        # the part's Content-Digest (the converter writes one), checked before the final decode;
        # hashed as the bytes arrive, so the check costs nothing when the last byte is in
        self.digest: tuple[str, bytes] | None = None
        self._hasher = None

    @property
    def data_offset(self) -> int | None:
        """File offset of the first frame byte (after part headers)."""
        if self._mode == "raw":
            return 0
        if self._reader is not None:
            return self._reader.part_data_offset
        return None

    def set_content_type(self, content_type: str | None) -> None:
        if self._content_type is None and content_type:
            self._content_type = content_type

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        if not chunk:
            return
        self.file_offset += len(chunk)
        if self._mode is None:
            self._sniff += chunk
            if len(self._sniff) < 2:
                return
            chunk, self._sniff = bytes(self._sniff), bytearray()
            ctype = self._content_type or ""
            boundary = boundary_from_content_type(ctype)
            if boundary is not None or chunk.lstrip(b"\r\n")[:2] == b"--":
                self._mode = "multipart"
                self._reader = MultipartReader(boundary)
            else:
                self._mode = "raw"
                self._set_syntax(ctype)
        if self._mode == "raw":
            self._add(chunk)
            return
        if self._part_done:
            self._reader.feed(chunk)
            return
        for event in self._reader.feed(chunk):
            if self._part_done:
                break
            if isinstance(event, PartHeaders):
                self._set_syntax(event.content_type or self._content_type or "")
                self.digest = parse_content_digest(event.headers.get("content-digest"))
                if self.digest is not None and not self.data:
                    self._hasher = hashlib.new(DIGEST_ALGORITHMS[self.digest[0]])
            elif isinstance(event, PartData):
                self._add(event.data)
            elif isinstance(event, (PartEnd, MultipartEnd)):
                self._part_done = True
                self.complete = True

    def end_of_file(self) -> None:
        """All of the file has been fed (a 200 body ended, or the last range reached the end)."""
        if self._mode == "raw" or self._mode is None:
            if self._sniff:
                sniff, self._sniff = bytes(self._sniff), bytearray()
                self._mode = "raw"
                self._set_syntax(self._content_type or "")
                self._add(sniff)
            self.complete = True
        elif not self._part_done and not self.codestream_complete:
            self._reader.close()  # raises MultipartError: the body ended inside the part
        if self.scanner is not None:
            try:
                self.scanner.close()
            except CodestreamError:
                pass

    def _set_syntax(self, content_type: str) -> None:
        media, params = parse_media_type(content_type) if content_type else ("", {})
        if media.startswith("multipart/"):
            media = params.get("type", "").lower()
        ts = params.get("transfer-syntax")
        if ts and ts != "*":
            self.syntax = ts
        elif media in _MEDIA_DEFAULT_SYNTAX and media != "application/octet-stream":
            self.syntax = self.fallback_syntax if _media_of(self.fallback_syntax) == media else _MEDIA_DEFAULT_SYNTAX[media]
        else:
            self.syntax = None  # generic type: decided from the bytes (resolved_syntax)

    @property
    def resolved_syntax(self) -> str:
        """The transfer syntax of the frame bytes: declared, else the expected one if the bytes
        look compressed (a raw static tree serves every frame as application/octet-stream)."""
        if self.syntax:
            return self.syntax
        looks_compressed = self.data[:2] in (b"\xff\x4f", b"\xff\xd8") or self.data[:4] == b"\x00\x00\x00\x0c"
        if looks_compressed or _media_of(self.fallback_syntax) == "application/octet-stream":
            return self.fallback_syntax
        return EXPLICIT_VR_LITTLE_ENDIAN

    def _add(self, data) -> None:
        if not len(data):
            return
        start = len(self.data)
        self.data += data
        if self._hasher is not None:
            self._hasher.update(data)
        if self.scanner is None and start == 0 and len(self.data) >= 2:
            if self.data[:2] == b"\xff\x4f":
                self.scanner = CodestreamScanner()
        if self.scanner is not None:
            try:
                events = self.scanner.feed(data)
            except CodestreamError as exc:
                self.scanner = None
                self.codestream_error = str(exc)
                return
            for e in events:
                if isinstance(e, MainHeader):
                    self.header = e
                elif isinstance(e, ResolutionComplete):
                    self.levels.append(e)
                elif isinstance(e, CodestreamComplete):
                    self.codestream_complete = True

    def check_whole_codestream(self) -> None:
        """A JPEG 2000 codestream cut short (or garbled past its headers) often decodes without an
        error to a wrong image: never let one through as the whole frame. Neither bytes that fail
        the Content-Digest of their part (a bit flip inside entropy-coded data decodes silently)."""
        if self.codestream_error is not None:
            raise DecodeError(f"corrupt codestream: {self.codestream_error}")
        if self.scanner is not None and not self.scanner.complete:
            raise DecodeError(f"codestream truncated: {len(self.data)} bytes end before its EOC marker")
        if self._hasher is not None and self._hasher.digest() != self.digest[1]:
            raise DecodeError(f"the frame's bytes do not match their Content-Digest ({self.digest[0]}): "
                              "corrupted on the server or on the way")

    @property
    def decodable_complete(self) -> bool:
        return self.complete or self.codestream_complete

    def level_file_end(self, level: int) -> int | None:
        """File offset (exclusive) where a level's last tile-part ends, from the TLM."""
        if self.header is None or self.data_offset is None:
            return None
        ends = self.header.level_end_offsets()
        if ends is None:
            return None
        return self.data_offset + ends[level]

    def reset(self) -> None:
        self.__init__(self.url, self.fallback_syntax)


# -- per-image state -----------------------------------------------------------------------------


@dataclass
class _ImageState:
    image: StackImage
    t0: float | None = None
    bytes_received: int = 0
    best: Refinement | None = None
    bodies: dict[str, _FrameBody] = field(default_factory=dict)
    stages_done: set[int] = field(default_factory=set)
    busy: bool = False
    wanted: bool = True
    generation: int = 0
    task: asyncio.Task | None = None
    job: "_Job | None" = None  # the job running for it, if any
    preempted: bool = False  # its running job was asked to give way to the image on screen
    failed: bool = False
    final: bool = False

    @property
    def best_rank(self) -> tuple[int, int]:
        b = self.best
        return (int(b.status), b.rows * b.columns) if b else (0, 0)


@dataclass(frozen=True)
class _Job:
    index: int
    stage_pos: int


class _Cancelled(Exception):
    pass


class _Retryable(TransportError):
    """A failure worth another attempt: a 5xx/429 answer, or the transport lost the transfer."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _retry_after(value: str | None) -> float | None:
    """Seconds of a Retry-After header given in seconds (an HTTP date counts as absent)."""
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


# -- the engine ----------------------------------------------------------------------------------


class RetrieveEngine:
    """Load a stack progressively; events through ``run()`` (async iterator) and/or ``on_event``."""

    def __init__(
        self,
        stack: Stack,
        config: RetrieveConfig,
        transport: Transport,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        viewport: tuple[int, int] | None = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        on_event: Callable[[EngineEvent], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
        retries: int = DEFAULT_RETRIES,
        retry_backoff: float = DEFAULT_RETRY_BACKOFF,
        max_retry_after: float = MAX_RETRY_AFTER,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        low_speed: tuple[int, float] = LOW_SPEED,
        preempt_delay: float = PREEMPT_DELAY,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if retries < 0 or retry_backoff < 0 or max_retry_after < 0:
            raise ValueError("retries, retry_backoff and max_retry_after must be >= 0")
        self.retries = retries
        self.max_frame_bytes = max_frame_bytes  # a frame resource larger than this is refused
        # fewer than low_speed[0] bytes in low_speed[1] seconds: the transfer is given up (and tried
        # again like a lost one); a trickle just under the transport's read timeout never ends otherwise
        self.low_speed_bytes, self.low_speed_seconds = low_speed
        # how long the image on screen may wait for a slot before a running job gives way: while
        # the user scrolls fast nothing is cancelled, only where they stop
        self.preempt_delay = preempt_delay
        self._preempt_handle: asyncio.Handle | None = None
        self.retry_backoff = retry_backoff
        self.max_retry_after = max_retry_after
        self.stack = stack
        self.config = config
        self.transport = transport
        self.concurrency = concurrency
        self.viewport = viewport  # (rows, columns) in device pixels
        self.cache_bytes = cache_bytes
        self.on_event = on_event
        self.clock = clock
        self.current = 0
        self._states = [_ImageState(im) for im in stack.images]
        # per image: stage positions still to run, in order; the heap holds each idle image's next one
        self._pending: dict[int, list[int]] = {}
        self._heap: list[tuple[tuple, int, int]] = []
        self._queue: asyncio.Queue | None = None
        self._wake: asyncio.Event | None = None
        self._running = 0
        self._lru: OrderedDict[int, int] = OrderedDict()  # index -> bytes of held pixels
        self._cached = 0
        self._requested: set[int] = set()

    # -- public control ----------------------------------------------------------------------
    def set_current(self, index: int) -> None:
        """The image on screen: its jobs go first; the others are ordered by distance to it."""
        self.current = max(0, min(index, len(self._states) - 1))
        self._rebuild_heap()
        if self._preempt_handle is not None:
            self._preempt_handle.cancel()
            self._preempt_handle = None
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # not loading yet: the first jobs follow the new order anyway
        if self.preempt_delay <= 0:
            self._preempt()
        else:
            self._preempt_handle = loop.call_later(self.preempt_delay, self._preempt)

    def _preempt(self) -> None:
        """Scrolled onto an image that waits while every slot is taken: the running job that
        matters least gives way. Its transfer is cancelled, what it received is kept, and it
        resumes from the first byte not held when its turn comes again (on a slow link the image
        on screen gets the bandwidth instead of sharing it with prefetches)."""
        self._preempt_handle = None
        pending = self._pending.get(self.current)
        cur = self._states[self.current]
        if cur.busy or not pending or not cur.wanted or self._running < self.concurrency:
            return
        running = [st for st in self._states if st.busy and st.job is not None and not st.preempted
                   and st.task is not None and not st.task.done()]
        if not running:
            return
        victim = max(running, key=lambda st: self._key(st.job.index, st.job.stage_pos))
        if self._key(victim.job.index, victim.job.stage_pos) <= self._key(self.current, pending[0]):
            return  # what runs matters more than what waits
        victim.preempted = True
        victim.task.cancel()

    def cancel(self, indices: Iterable[int]) -> None:
        """Stop loading these images: pending jobs dropped, transfers cancelled, results ignored."""
        for i in indices:
            st = self._states[i]
            st.wanted = False
            st.generation += 1
            self._pending.pop(i, None)
            if st.task is not None and not st.task.done():
                st.task.cancel()
            st.bodies.clear()
        if self._wake:
            self._wake.set()

    def forget(self, indices: Iterable[int]) -> None:
        """Drop everything held for these images (pixels, bytes, stages done): the page evicted
        them to stay within its memory budget. ``request`` (or a new ``run``) loads them again."""
        indices = list(indices)
        self.cancel(indices)
        for i in indices:
            st = self._states[i]
            st.best, st.final, st.failed = None, False, False
            st.stages_done.clear()
            self._cached -= self._lru.pop(i, 0)
            st.wanted = True

    def pending(self) -> list[int]:
        """Images with stages still to run (requested, not running)."""
        return sorted(i for i, todo in self._pending.items() if todo and self._states[i].wanted)

    def request(self, indices: Iterable[int]) -> None:
        """(Re)queue images: stages not yet done for them are scheduled again."""
        n = len(self._states)
        for i in indices:
            st = self._states[i]
            st.wanted = True
            self._requested.add(i)
            todo = [pos for pos, stage in enumerate(self.config.stages)
                    if pos not in st.stages_done and stage.selects(i, n)]
            if todo:
                self._pending[i] = todo
                self._push(i)
        if self._wake:
            self._wake.set()

    async def aclose(self) -> None:
        """Stop everything: pending jobs dropped, transfers cancelled (the transport stays open)."""
        self.cancel(range(len(self._states)))
        tasks = [st.task for st in self._states if st.task is not None and not st.task.done()]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def best(self, index: int) -> Refinement | None:
        return self._states[index].best

    # -- running -----------------------------------------------------------------------------
    async def run(self, indices: Iterable[int] | None = None) -> AsyncIterator[EngineEvent]:
        """Load the given images (default: the whole stack) through all stages; yield events."""
        self._queue = asyncio.Queue()
        self._wake = asyncio.Event()
        wanted = list(range(len(self._states))) if indices is None else list(indices)
        self._requested = set()
        self.request(wanted)
        runner = asyncio.ensure_future(self._run_workers())
        try:
            while True:
                getter = asyncio.ensure_future(self._queue.get())
                done, _ = await asyncio.wait({getter, runner}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    yield getter.result()
                    continue
                getter.cancel()
                while not self._queue.empty():
                    yield self._queue.get_nowait()
                runner.result()
                return
        finally:
            if not runner.done():
                runner.cancel()
                for st in self._states:
                    if st.task is not None and not st.task.done():
                        st.task.cancel()
                try:
                    await runner
                except (asyncio.CancelledError, Exception):
                    pass

    def reached_final(self, index: int) -> bool:
        return self._states[index].final

    async def _run_workers(self) -> None:
        workers = [asyncio.ensure_future(self._worker()) for _ in range(self.concurrency)]
        try:
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()

    async def _worker(self) -> None:
        while True:
            job = self._take_job()
            if job is None:
                if not self._pending and self._running == 0:
                    self._wake.set()
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            st = self._states[job.index]
            st.busy = True
            st.job = job
            st.preempted = False
            self._running += 1
            task = asyncio.ensure_future(self._run_job(job))
            st.task = task
            try:
                await task
            except asyncio.CancelledError:
                me = asyncio.current_task()
                if not task.cancelled() or (me is not None and me.cancelling()):
                    raise  # the worker itself is being cancelled
            finally:
                st.busy = False
                st.task = None
                st.job = None
                self._running -= 1
                self._push(job.index)  # its next stage, if any
                self._wake.set()

    def _take_job(self) -> _Job | None:
        while self._heap:
            key, i, pos = heapq.heappop(self._heap)
            pending = self._pending.get(i)
            st = self._states[i]
            if not pending or pending[0] != pos or st.busy or not st.wanted or key != self._key(i, pos):
                continue  # stale entry
            pending.pop(0)
            if not pending:
                del self._pending[i]
            return _Job(i, pos)
        return None

    def _push(self, index: int) -> None:
        pending = self._pending.get(index)
        if pending and not self._states[index].busy:
            heapq.heappush(self._heap, (self._key(index, pending[0]), index, pending[0]))

    def _rebuild_heap(self) -> None:
        self._heap = [(self._key(i, p[0]), i, p[0]) for i, p in self._pending.items()
                      if p and not self._states[i].busy]
        heapq.heapify(self._heap)

    def _key(self, index: int, stage_pos: int) -> tuple:
        stage = self.config.stages[stage_pos]
        return (0 if index == self.current else 1, stage.priority, stage_pos, abs(index - self.current), index)

    # -- events ------------------------------------------------------------------------------
    def _emit(self, event: EngineEvent) -> None:
        if self._queue is not None:
            self._queue.put_nowait(event)
        if self.on_event is not None:
            self.on_event(event)

    def _t_ms(self, st: _ImageState) -> float:
        if st.t0 is None:
            st.t0 = self.clock()
        return round((self.clock() - st.t0) * 1000.0, 3)

    # -- one job -----------------------------------------------------------------------------
    async def _run_job(self, job: _Job) -> None:
        st = self._states[job.index]
        stage = self.config.stages[job.stage_pos]
        image = st.image
        generation = st.generation
        options = self.config.options_for(stage.retrieve_type, image.transfer_syntax)
        gave_way = False
        try:
            target = self._target_status(image, options)
            if st.best is not None and st.best_rank >= (int(target), image.rows * image.columns):
                return  # already as good as this stage can make it
            if image.inline_data is not None:
                self._deliver_inline(st, stage, job.stage_pos, generation)
                return
            await self._retrieve(st, stage, job.stage_pos, options, generation)
        except asyncio.CancelledError:
            if not (st.preempted and st.wanted and st.generation == generation):
                raise
            gave_way = True  # asked to by _preempt: not an error, and the stage is not done
        except Exception as exc:  # one bad image never stops the stack
            if st.generation == generation and st.wanted:
                st.failed = True
                self._emit(ImageFailed(image.index, image.sop_instance_uid, image.frame, stage.id,
                                       _message(exc), self._t_ms(st)))
        finally:
            if gave_way:
                st.preempted = False
                self._pending.setdefault(job.index, []).insert(0, job.stage_pos)  # its turn comes again
            elif st.generation == generation:  # a cancelled stage is not a done one
                st.stages_done.add(job.stage_pos)
            self._trim(st)

    def _target_status(self, image: StackImage, options: RetrieveOptions) -> ImageQualityStatus:
        status = options.final_status
        alt = self._alternate(options)
        if status == ImageQualityStatus.FULL_RESOLUTION and alt is not None:
            if alt.thumbnail:
                status = ImageQualityStatus.SUBRESOLUTION
            elif alt.lossy:
                status = ImageQualityStatus.LOSSY
        return status

    def _alternate(self, options: RetrieveOptions):
        if not options.frames_path:
            return None
        return self.stack.alternates.get("/" + options.frames_path.strip("/") + "/")

    async def _retrieve(self, st: _ImageState, stage: RetrieveStage, stage_pos: int,
                        options: RetrieveOptions, generation: int) -> None:
        image = st.image
        url = frame_request_url(image.frame_url, options)
        alt = self._alternate(options)
        fallback = (alt.transfer_syntax if alt and alt.transfer_syntax else image.transfer_syntax)
        body = st.bodies.get(url)
        if body is None:
            body = st.bodies[url] = _FrameBody(url, fallback)
        ranged = options.range_index is not None
        if not body.decodable_complete:
            if ranged and options.range_index >= 0:
                await self._first_ranges(st, stage, stage_pos, body, options, generation)
            else:
                # the whole body, or (rangeIndex -1) the rest of it: streamed when asked, so the
                # levels between the first range and the final one can show as they complete
                await self._fetch(st, stage, stage_pos, body, None, options, generation,
                                  streaming=options.streaming)
        self._check(st, generation)
        if body.decodable_complete:
            self._decode_and_emit(st, stage, stage_pos, body, options, generation, reduce=0, end=None)
            st.bodies.pop(url, None)  # the frame is decoded: its bytes are no longer needed
            await asyncio.sleep(0)
        elif ranged or options.streaming:
            level = self._best_partial_level(body, st, options)
            if level is not None:
                self._decode_and_emit(st, stage, stage_pos, body, options, generation,
                                      reduce=level.reduce, end=level.end_offset)

    async def _first_ranges(self, st: _ImageState, stage: RetrieveStage, stage_pos: int, body: _FrameBody,
                            options: RetrieveOptions, generation: int) -> None:
        """``rangeIndex`` >= 0: ``chunkSize`` bytes, then on to the end of a level if needed.

        The second range is asked for as soon as the first one's main header (its TLM) says where
        that level ends, so its round trip overlaps the first transfer instead of following it.
        Whatever is still missing after that (no TLM in the first bytes, the early request failed
        or was answered oddly) is fetched the plain way, from the first byte not held.
        """
        want_end = options.chunk_size * (options.range_index + 1)
        ahead: dict = {}

        def on_chunk() -> bool:
            """Called by a range the server honours, after each chunk: True if it started one."""
            if "task" in ahead or body.header is None:
                return False
            level = self._wanted_level(body, options, want_end)
            end = body.level_file_end(level.level) if level is not None else None
            ahead["task"] = None
            if end is not None and end > want_end and not body.decodable_complete:
                ahead["task"] = asyncio.ensure_future(self._read_ahead(st, stage, body, want_end, end))
            return ahead["task"] is not None

        try:
            if body.file_offset < want_end:
                await self._fetch(st, stage, stage_pos, body, want_end, options, generation,
                                  streaming=False, on_chunk=on_chunk)
            task = ahead.get("task")
            if task is not None:
                try:
                    chunks, total = await task
                except (TransportError, DecodeError):
                    chunks, total = None, None
                self._check(st, generation)
                if chunks is not None and body.file_offset == want_end and not body.decodable_complete:
                    for chunk in chunks:
                        st.bytes_received += len(chunk)
                        body.feed(chunk)
                    if total is not None:
                        body.total = total
                        if body.file_offset >= total:
                            body.end_of_file()
        finally:
            task = ahead.get("task")
            if task is not None:
                if not task.done():
                    task.cancel()
                elif not task.cancelled():
                    task.exception()  # retrieved: a failed early range is not worth a warning
        level = self._wanted_level(body, options, want_end)
        if level is not None and not body.decodable_complete:
            end = body.level_file_end(level.level)
            if end is not None and end > body.file_offset:
                await self._fetch(st, stage, stage_pos, body, end, options, generation, streaming=False)

    async def _read_ahead(self, st: _ImageState, stage: RetrieveStage, body: _FrameBody,
                          start: int, end: int) -> tuple[list[bytes], int | None]:
        """Bytes ``start``..``end``-1 of body's URL, held aside until the body reaches ``start``.

        Anything but a 206 for exactly that start raises TransportError (the caller then fetches
        the plain way); one attempt only, no retries: the plain way has them.
        """
        image = st.image
        self._emit(RequestStarted(image.index, stage.id, body.url, (start, end - 1), self._t_ms(st)))
        chunks: list[bytes] = []
        received = 0
        status = 0
        cancelled = False
        resp = None
        try:
            resp = await self._get(body.url, (start, end - 1))
            status = resp.status
            self._emit(FirstBytes(image.index, stage.id, body.url, status, self._t_ms(st)))
            cr = parse_content_range(resp.headers.get("content-range"))
            if status != 206 or cr is None or cr.start != start:
                raise TransportError(f"{body.url}: the early range request got HTTP {status}")
            async for chunk in self._chunks(resp, body.url):
                received += len(chunk)
                if start + received > self.max_frame_bytes:
                    raise TransportError(f"{body.url}: more than {self.max_frame_bytes} bytes for one frame")
                chunks.append(bytes(chunk))
            return chunks, cr.total
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            if resp is not None:
                await resp.aclose()
            self._emit(RequestFinished(image.index, stage.id, body.url, status, received, self._t_ms(st),
                                       cancelled))

    def _check(self, st: _ImageState, generation: int) -> None:
        if st.generation != generation or not st.wanted:
            raise _Cancelled()

    # -- choosing levels ---------------------------------------------------------------------
    def _allowed(self, level: ResolutionComplete, options: RetrieveOptions, body: _FrameBody) -> bool:
        return (1 <= level.reduce <= options.decode_level_cap and not body.partial_failed
                and body.resolved_syntax in PREFIX_DECODABLE)

    def _fills_viewport(self, level: ResolutionComplete) -> bool:
        if self.viewport is None:
            return False
        vr, vc = self.viewport
        return level.rows >= vr or level.columns >= vc

    def _wanted_level(self, body: _FrameBody, options: RetrieveOptions,
                      chunk_end: int) -> ResolutionComplete | None:
        """For a first range: the level to hold exactly.

        The largest allowed level the ``chunkSize`` range holds whole; if it holds none, the
        smallest allowed level (so the range ends where a level does, not part way through one).
        Larger levels are the next stage's business: they cost more bytes before anything shows,
        and a streamed rest decodes them as they complete. None when the TLM does not say where
        levels end, or a level at least as large is already held.
        """
        h = body.header
        if h is None or body.level_file_end(0) is None:
            return None
        d = h.cod.decompositions
        levels = [ResolutionComplete(lv, d - lv, 0, *h.size_at(d - lv)) for lv in range(h.levels)]
        allowed = [lv for lv in levels if self._allowed(lv, options, body)]  # ascending size
        if not allowed:
            return None
        inside = [lv for lv in allowed if (body.level_file_end(lv.level) or 0) <= chunk_end]
        if inside:
            target = inside[-1]  # the chunk already holds a whole allowed level: no extension
        else:
            target = allowed[0]
        if any(done.level >= target.level for done in body.levels):
            return None
        return target

    def _best_partial_level(self, body: _FrameBody, st: _ImageState,
                            options: RetrieveOptions) -> ResolutionComplete | None:
        """The newest complete level worth a decode: allowed, larger than what is shown."""
        shown = st.best
        if shown is not None:
            if shown.status > ImageQualityStatus.SUBRESOLUTION:
                return None
            if self.viewport is not None and body.levels and self._fills_viewport(
                    ResolutionComplete(0, 0, 0, shown.rows, shown.columns)):
                return None  # beyond the viewport a partial level adds nothing before the final
        # a replica of a neighbour (nearbyFrames) is not this image: any real level beats it
        real = shown is not None and shown.status >= ImageQualityStatus.SUBRESOLUTION
        area = shown.rows * shown.columns if real else 0
        for level in reversed(body.levels):
            if not self._allowed(level, options, body):
                continue
            return level if level.rows * level.columns > area else None
        return None

    # -- fetching ----------------------------------------------------------------------------
    async def _fetch(self, st: _ImageState, stage: RetrieveStage, stage_pos: int, body: _FrameBody,
                     want_end: int | None,
                     options: RetrieveOptions, generation: int, *, streaming: bool,
                     on_chunk: Callable[[], bool] | None = None) -> None:
        """Bring body up to ``want_end`` (exclusive; None: the whole file) from what it holds.

        A 5xx/429 answer or a lost transfer is tried again (``retries`` times, backing off or
        waiting what Retry-After says); a transfer cut mid-body resumes from the first byte not held.
        """
        for attempt in range(self.retries + 1):
            try:
                return await self._fetch_once(st, stage, stage_pos, body, want_end, options, generation,
                                              streaming=streaming, on_chunk=on_chunk)
            except _Retryable as exc:
                if attempt == self.retries:
                    tries = f" (after {attempt + 1} attempts)" if attempt else ""
                    raise TransportError(f"{exc}{tries}") from exc
                delay = self.retry_backoff * (1 << attempt)
                if exc.retry_after is not None:
                    delay = min(exc.retry_after, self.max_retry_after)
                await asyncio.sleep(delay)
                self._check(st, generation)

    async def _fetch_once(self, st: _ImageState, stage: RetrieveStage, stage_pos: int, body: _FrameBody,
                          want_end: int | None,
                          options: RetrieveOptions, generation: int, *, streaming: bool,
                          on_chunk: Callable[[], bool] | None = None) -> None:
        image = st.image
        start = body.file_offset
        if body.total is not None and want_end is not None:
            want_end = min(want_end, body.total)
        if want_end is not None and start >= want_end:
            return
        byte_range = None if (start == 0 and want_end is None) else (start, None if want_end is None else want_end - 1)
        self._emit(RequestStarted(image.index, stage.id, body.url, byte_range, self._t_ms(st)))
        received = 0
        status = 0
        cancelled = False
        try:
            resp = await self._get(body.url, byte_range)
        except TransportError as exc:
            self._emit(RequestFinished(image.index, stage.id, body.url, 0, 0, self._t_ms(st)))
            raise _Retryable(str(exc)) from exc
        except asyncio.CancelledError:  # before the answer came: the request still ends, cancelled
            self._emit(RequestFinished(image.index, stage.id, body.url, 0, 0, self._t_ms(st), True))
            raise
        try:
            status = resp.status
            self._check(st, generation)
            self._emit(FirstBytes(image.index, stage.id, body.url, status, self._t_ms(st)))
            content_type = resp.headers.get("content-type")
            whole = False
            if status == 416:
                cr = parse_content_range(resp.headers.get("content-range"))
                if byte_range is not None and start > 0 and (cr is None or cr.total is None or cr.total <= start):
                    body.total = start  # nothing more to fetch: we hold the whole file
                    body.end_of_file()
                    return
                raise TransportError(f"HTTP 416 for {body.url} (range {byte_range})")
            if status == 200:
                if start > 0:
                    body.reset()  # the server ignored Range: this body replaces the partial copy
                whole = True
            elif status == 206:
                cr = parse_content_range(resp.headers.get("content-range"))
                if cr is not None:
                    if cr.start != start:
                        if cr.start != 0:
                            raise TransportError(f"{body.url}: asked for bytes from {start}, got {cr.start}")
                        body.reset()
                    if cr.total is not None:
                        body.total = cr.total
                    if cr.total is not None and cr.end + 1 >= cr.total:
                        whole = True
                elif byte_range is None:
                    whole = True
            elif status in RETRY_STATUSES:
                raise _Retryable(f"HTTP {status} for {body.url}", _retry_after(resp.headers.get("retry-after")))
            else:
                raise TransportError(f"HTTP {status} for {body.url}")
            body.set_content_type(content_type)
            window_start, window_bytes = self.clock(), 0
            async for chunk in self._chunks(resp, body.url):
                if st.generation != generation or not st.wanted:
                    raise _Cancelled()
                n = len(chunk)
                window_bytes += n
                now = self.clock()
                if now - window_start >= self.low_speed_seconds:
                    if window_bytes < self.low_speed_bytes:
                        raise _Retryable(f"{body.url}: fewer than {self.low_speed_bytes} bytes in "
                                         f"{self.low_speed_seconds:g} s")
                    window_start, window_bytes = now, 0
                received += n
                st.bytes_received += n
                if body.file_offset + n > self.max_frame_bytes:
                    raise TransportError(f"{body.url}: more than {self.max_frame_bytes} bytes for one frame")
                body.feed(chunk)
                if on_chunk is not None and status == 206 and not whole and on_chunk():
                    await asyncio.sleep(0)  # let the request it started go out now
                if streaming and body.levels and not body.decodable_complete:
                    level = self._best_partial_level(body, st, options)
                    if level is not None:
                        self._decode_and_emit(st, stage, stage_pos, body, options,
                                              generation, reduce=level.reduce, end=level.end_offset)
                        await asyncio.sleep(0)
            if whole or want_end is None:  # a 200, the last range, or an open-ended one: all is in
                body.total = body.file_offset
                body.end_of_file()
            elif body.total is not None and body.file_offset >= body.total:
                body.end_of_file()
        except (asyncio.CancelledError, _Cancelled):
            cancelled = True
            raise
        finally:
            await resp.aclose()
            self._emit(RequestFinished(image.index, stage.id, body.url, status, received, self._t_ms(st),
                                       cancelled))

    async def _chunks(self, resp, url: str) -> AsyncIterator[bytes]:
        """The body's chunks; the transport losing the transfer, or no byte arriving for the
        low-speed time (the browser's fetch has no read timeout of its own), is worth a retry."""
        chunks = resp.chunks().__aiter__()
        try:
            while True:
                try:
                    async with asyncio.timeout(self.low_speed_seconds):
                        chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    return
                except TimeoutError as exc:
                    raise _Retryable(f"{url}: no bytes for {self.low_speed_seconds:g} s") from exc
                yield chunk
        except (_Retryable, ProtocolError):
            raise  # a ProtocolError would come back the same: not worth another attempt
        except TransportError as exc:
            raise _Retryable(str(exc)) from exc
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _get(self, url: str, byte_range: tuple[int, int | None] | None):
        """transport.get, with the low-speed time as the deadline for the answer's headers."""
        try:
            async with asyncio.timeout(self.low_speed_seconds):
                return await self.transport.get(url, headers={"Accept": ACCEPT_ANY}, byte_range=byte_range)
        except TimeoutError as exc:
            raise TransportError(f"GET {url}: no answer in {self.low_speed_seconds:g} s") from exc

    # -- decoding ----------------------------------------------------------------------------
    def _decode_and_emit(self, st: _ImageState, stage: RetrieveStage, stage_pos: int, body: _FrameBody,
                         options: RetrieveOptions, generation: int, *, reduce: int, end: int | None) -> None:
        self._check(st, generation)
        image = st.image
        syntax = body.resolved_syntax
        fmt = self._format_for(image, body, options)
        t = self.clock()
        if end is None:
            body.check_whole_codestream()
        with memoryview(body.data) as view:
            part = view[:end] if end is not None else view
            try:
                pixels = decode_frame(part, syntax, fmt, reduce=reduce)
            except DecodeError:
                if reduce == 0:
                    raise
                body.partial_failed = True  # this decoder cannot read prefixes: wait for the whole frame
                return
            finally:
                part.release()
        decode_ms = round((self.clock() - t) * 1000.0, 3)
        rows, columns = pixels.shape[:2]
        partial = reduce > 0
        status = ImageQualityStatus.SUBRESOLUTION if partial else self._target_status(image, options)
        if not partial and (rows, columns) != (image.rows, image.columns) and status > ImageQualityStatus.SUBRESOLUTION:
            status = ImageQualityStatus.SUBRESOLUTION
        if status == ImageQualityStatus.FULL_RESOLUTION and codec_for(syntax).lossy:
            status = ImageQualityStatus.LOSSY  # a lossy transfer syntax is never full quality
        if st.best is not None and (int(status), rows * columns) <= st.best_rank:
            return  # never replace a better (or equal) result
        spacing = None
        if image.pixel_spacing is not None:
            spacing = (image.pixel_spacing[0] * image.rows / rows, image.pixel_spacing[1] * image.columns / columns)
        final = not partial and not self._later_stage_improves(st, stage_pos, status, rows * columns)
        ref = Refinement(
            index=image.index,
            sop_instance_uid=image.sop_instance_uid,
            frame=image.frame,
            stage_id=stage.id,
            status=status,
            rows=rows,
            columns=columns,
            pixel_spacing=spacing,
            bytes_received=st.bytes_received,
            t_ms=self._t_ms(st),
            decode_ms=decode_ms,
            final=final,
            pixels=pixels,
            transfer_syntax=syntax,
            reduce=reduce,
            url=body.url,
        )
        st.best = ref
        st.final = st.final or final
        self._remember(image.index, pixels.nbytes)
        self._emit(ref)
        if stage.nearby_frames:
            self._replicate(ref, stage)

    def _replicate(self, ref: Refinement, stage: RetrieveStage) -> None:
        """Show this image at nearby slices that have nothing better yet (Cornerstone's nearbyFrames)."""
        n = len(self._states)
        for nearby in stage.nearby_frames:
            i = ref.index + nearby.offset
            if not 0 <= i < n or i == ref.index:
                continue
            st = self._states[i]
            if not st.wanted or i not in self._requested:
                continue
            status = nearby.image_quality_status or ImageQualityStatus.ADJACENT_REPLICATE
            if st.best is not None and int(st.best.status) >= int(status):
                continue
            im = st.image
            spacing = None
            if im.pixel_spacing is not None:
                spacing = (im.pixel_spacing[0] * im.rows / ref.rows, im.pixel_spacing[1] * im.columns / ref.columns)
            copy = dataclasses.replace(
                ref, index=i, sop_instance_uid=im.sop_instance_uid, frame=im.frame, status=status,
                pixel_spacing=spacing, bytes_received=st.bytes_received, decode_ms=0.0,
                final=False, url="",
            )
            st.best = copy
            self._emit(copy)

    def _deliver_inline(self, st: _ImageState, stage: RetrieveStage, stage_pos: int, generation: int) -> None:
        image = st.image
        body = _FrameBody(image.frame_url, image.transfer_syntax)
        body.syntax = image.transfer_syntax
        body.data += image.inline_data
        body.complete = True
        st.t0 = st.t0 or self.clock()
        self._decode_and_emit(st, stage, stage_pos, body, RetrieveOptions(), generation, reduce=0, end=None)

    def _format_for(self, image: StackImage, body: _FrameBody, options: RetrieveOptions) -> PixelFormat:
        """The image's pixel format, with the size of this encoding (thumbnails are smaller)."""
        fmt = image.fmt
        size = None
        if body.header is not None:
            size = (body.header.siz.height, body.header.siz.width)
        else:
            size = _jpeg_size(body.data)
            if size is None:
                alt = self._alternate(options)
                if alt is not None and alt.rows and alt.columns:
                    size = (alt.rows, alt.columns)
        if size is not None and size != (fmt.rows, fmt.columns):
            fmt = dataclasses.replace(fmt, rows=size[0], columns=size[1], number_of_frames=1)
        return fmt

    def _later_stage_improves(self, st: _ImageState, stage_pos: int, status: ImageQualityStatus, area: int) -> bool:
        image = st.image
        n = len(self._states)
        for pos in range(stage_pos + 1, len(self.config.stages)):
            stage = self.config.stages[pos]
            if not stage.selects(image.index, n) or image.index not in self._requested:
                continue
            target = self._target_status(image, self.config.options_for(stage.retrieve_type, image.transfer_syntax))
            if (int(target), image.rows * image.columns) > (int(status), area):
                return True
        return False

    # -- memory ------------------------------------------------------------------------------
    def _remember(self, index: int, nbytes: int) -> None:
        self._cached += nbytes - self._lru.pop(index, 0)
        self._lru[index] = nbytes
        while self._cached > self.cache_bytes and len(self._lru) > 1:
            victim = max((i for i in self._lru if i != index), key=lambda i: abs(i - self.current), default=None)
            if victim is None:
                break
            self._cached -= self._lru.pop(victim)
            vst = self._states[victim]
            if vst.best is not None:
                vst.best = dataclasses.replace(vst.best, pixels=numpy.empty((0, 0), vst.best.pixels.dtype))

    def _trim(self, st: _ImageState) -> None:
        """After a job: drop the bytes of unwanted images; keep held bytes within the budget."""
        if not st.wanted:
            st.bodies.clear()
        over = self._cached + self.held_bytes - self.cache_bytes
        if over <= 0:
            return
        for other in sorted(self._states, key=lambda s: -abs(s.image.index - self.current)):
            if over <= 0:
                break
            if other.busy or not other.bodies:
                continue
            over -= sum(len(b.data) for b in other.bodies.values())
            other.bodies.clear()  # a later stage fetches this image again from the start

    @property
    def held_bytes(self) -> int:
        return sum(len(b.data) for s in self._states for b in s.bodies.values())


def _message(exc: BaseException) -> str:
    if isinstance(exc, _Cancelled):
        return "cancelled"
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, (DecodeError, TransportError, MultipartError)) else f"{type(exc).__name__}: {text}"


def _media_of(syntax: str) -> str | None:
    try:
        return codec_for(syntax).media_type
    except DecodeError:
        return None


def _jpeg_size(data: bytearray) -> tuple[int, int] | None:
    """(rows, columns) from the SOF of a JPEG / JPEG-LS stream, None if it is not one."""
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    n = len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        length = (data[i + 2] << 8) | data[i + 3]
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7):
            if i + 9 > n:
                return None
            rows = (data[i + 5] << 8) | data[i + 6]
            cols = (data[i + 7] << 8) | data[i + 8]
            return rows, cols
        i += 2 + length
    return None
