"""Fetch strategies: one attempt object per image and stage (Cornerstone's ``getPixelData`` split
into a streamed request and range requests, each its own class; byte ranges are in ``ranges``).

An attempt holds what every step needs (the image's state, the stage, its options, the frame body)
so no step takes ten arguments. ``StreamAttempt`` asks for the whole frame (or, with rangeIndex -1,
the rest of it) and, when streaming, decodes levels as they complete; ``RangeAttempt`` asks for
``initialChunkSize`` + n ``chunkSize`` bytes and extends the request to the end of a level.

Failures: a retryable TransportError (5xx/429, a lost or cut transfer, a stall) is tried again
(``RetrievePolicy.retries``) from the first byte not held; anything else fails the stage at once.
A frame served with a Content-Encoding (gzip) is never continued by Range: the server's offsets
count encoded bytes while both transports hand over decoded ones, so the rest comes as one whole
request (and later images of the load skip ranges: ``RetrieveEngine.frames_encoded``).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, AsyncIterator, Callable
from urllib.parse import urljoin

from ..config import DEFAULT_CHUNK_SIZE, DEFAULT_INITIAL_CHUNK_SIZE, RetrieveOptions, RetrieveStage
from ..readers.codestream import ResolutionComplete
from ..transport.base import ContentRange, Response, parse_content_range
from ..transport.errors import ProtocolError, StatusError, TransportError, retry_after_seconds
from ..transport.limits import SpeedWatch, head_within, paced
from .body import FrameBody
from .events import FirstBytes, RequestFinished, RequestRetried, RequestStarted
from .limits import check_frame_content_type, frame_byte_cap
from .policy import frame_request_url
from .settings import ACCEPT_ANY, MAX_REDIRECTS, REDIRECT_STATUSES
from .state import ImageState, Job

if TYPE_CHECKING:  # the engine drives attempts; attempts call back into it
    from .engine import RetrieveEngine

__all__ = ["Attempt", "InlineAttempt", "StreamAttempt", "WholeAttempt", "Superseded"]

ByteRange = tuple[int, int | None]


def _given(value: int, default: int) -> int:
    """A streaming byte threshold: 0 (none) when the configuration left it at its default."""
    return 0 if value == default else value


class Superseded(Exception):
    """The job's results no longer count (the image was cancelled or loaded again)."""


class Attempt:
    """One stage of one image: fetch what it needs, then decode what it holds."""

    def __init__(self, engine: "RetrieveEngine", st: ImageState, job: Job, stage: RetrieveStage,
                 options: RetrieveOptions, body: FrameBody | None = None) -> None:
        self.engine = engine
        self.settings = engine.policy
        self.st = st
        self.job = job
        self.stage = stage
        self.options = options
        if body is None:  # what earlier stages left of this frame resource, or a new one
            url = frame_request_url(st.image.frame_url, options)
            body = st.bodies.get(url)
            if body is None:
                body = st.bodies[url] = FrameBody(url, engine.rules.syntax_of(st.image, options),
                                                  engine.budget.held)
        self.body = body
        self.last_partial: float | None = None  # clock of the last partial decode while streaming
        self.last_partial_bytes = 0  # bytes held at that decode
        # memory tied to the data, and one deadline for all of this stage's requests and retries
        self.byte_cap = frame_byte_cap(st.image.fmt, self.settings.max_frame_bytes)
        self.watch = SpeedWatch(self.settings.transfer_limits, body.url, engine.clock)

    # -- the stage ---------------------------------------------------------------------------
    async def run(self) -> None:
        body = self.body
        if not body.decodable_complete:
            await self.fetch_frame()
        self.check()
        if body.decodable_complete:
            self.engine.decode(self, reduce=0, end=None)
            self.st.drop_body(body.url)  # the frame is decoded: its bytes are no longer needed
            await asyncio.sleep(0)
        elif self.options.range_index is not None or self.options.streaming:
            level = self.engine.rules.best_partial_level(body, self.st.best, self.options)
            if level is not None:
                self.decode_partial(level)

    async def fetch_frame(self) -> None:
        raise NotImplementedError

    def decode_partial(self, level: ResolutionComplete) -> None:
        """Decode the prefix up to a complete level (at full size under ``decodeLevel`` 0)."""
        self.engine.decode(self, reduce=self.engine.rules.partial_reduce(level, self.options), end=level.end_offset)

    def check(self) -> None:
        if not self.job.live:
            raise Superseded()

    def t_ms(self) -> float:
        return self.st.t_ms(self.engine.clock)

    def emit(self, event) -> None:
        self.engine.emit(event)

    # -- requests with retries ---------------------------------------------------------------
    async def fetch(self, want_end: int | None, *, streaming: bool,
                    on_chunk: Callable[[], bool] | None = None, stop: Callable[[], bool] | None = None) -> None:
        """Bring the body up to ``want_end`` (exclusive; None: the whole file) from what it holds;
        ``stop`` (asked after each chunk) ends the transfer early, the rest left for later."""
        retries = self.settings.retries
        for attempt in range(retries + 1):
            self.watch.restart_window()
            try:
                self.watch.check_deadline()
                return await self.fetch_once(want_end, streaming=streaming, on_chunk=on_chunk, stop=stop)
            except TransportError as exc:
                if not exc.retryable:
                    raise
                if attempt == retries:
                    tries = f" (after {attempt + 1} attempts)" if attempt else ""
                    raise TransportError(f"{exc}{tries}") from exc
                delay = self.settings.retry_delay(attempt, exc.retry_after)
                self.emit(RequestRetried(self.st.image.index, self.stage.id, self.body.url, attempt + 1,
                                         str(exc) or type(exc).__name__, delay, self.t_ms()))
                await asyncio.sleep(delay)
                self.check()

    def _span(self, want_end: int | None) -> tuple[int, int | None, ByteRange | None] | None:
        """(start, end, byte range) of the next request; None when nothing is missing."""
        body = self.body
        if body.encoded and body.file_offset:
            body.reset()  # no Range over encoded bytes: the whole file again, in one request
            body.encoded = True
            want_end = None
        start = body.file_offset
        if body.total is not None and want_end is not None:
            want_end = min(want_end, body.total)
        if want_end is not None and start >= want_end:
            return None
        whole = start == 0 and want_end is None
        return start, want_end, None if whole else (start, None if want_end is None else want_end - 1)

    async def fetch_once(self, want_end: int | None, *, streaming: bool,
                         on_chunk: Callable[[], bool] | None = None, stop: Callable[[], bool] | None = None) -> None:
        span = self._span(want_end)
        if span is None:
            return
        start, want_end, byte_range = span
        body, stage, index = self.body, self.stage, self.st.image.index
        self.emit(RequestStarted(index, stage.id, body.url, byte_range, self.t_ms()))
        try:
            resp = await self.get(byte_range)
        except TransportError:
            self.emit(RequestFinished(index, stage.id, body.url, 0, 0, self.t_ms()))
            raise
        except asyncio.CancelledError:  # before the answer came: the request still ends, cancelled
            self.emit(RequestFinished(index, stage.id, body.url, 0, 0, self.t_ms(), True))
            raise
        received, cancelled = [0], False
        try:
            self.check()
            self.emit(FirstBytes(index, stage.id, body.url, resp.status, self.t_ms()))
            whole = self._accept(resp, byte_range, start)
            if whole is None:
                return  # 416 past the end: everything is held
            self._note_encoding(resp, 0)
            stopped = await self._read(resp, received, whole=whole, streaming=streaming,
                                       on_chunk=on_chunk if resp.status == 206 and not whole else None,
                                       stop=stop if resp.status == 206 else None)
            if stopped:
                return  # closed early on purpose: the body is not at its end
            if whole or want_end is None:  # a 200, the last range, or an open-ended one: all is in
                body.total = body.file_offset
                body.end_of_file()
            elif body.total is not None and body.file_offset >= body.total:
                body.end_of_file()
        except (asyncio.CancelledError, Superseded):
            cancelled = True
            raise
        finally:
            await resp.aclose()
            self.emit(RequestFinished(index, stage.id, body.url, resp.status, received[0], self.t_ms(),
                                      cancelled))

    def _accept(self, resp: Response, byte_range: ByteRange | None, start: int) -> bool | None:
        """Check the answer's status against what was asked: True if it holds the rest of the
        file, False if only the range, None if there is nothing more (416 past the end)."""
        body, status = self.body, resp.status
        cr = parse_content_range(resp.headers.get("content-range"))
        whole = False
        if status == 416:
            if byte_range is not None and start > 0 and (cr is None or cr.total is None or cr.total <= start):
                body.total = start  # nothing more to fetch: we hold the whole file
                body.end_of_file()
                return None
            raise StatusError(416, body.url, detail=f" (range {byte_range})")
        if status == 200:
            if start > 0:
                body.reset()  # the server ignored Range: this body replaces the partial copy
            whole = True
        elif status == 206:
            whole = self._accept_206(cr, byte_range, start)
        else:
            raise StatusError(status, body.url, retry_after=retry_after_seconds(resp.headers.get("retry-after")))
        check_frame_content_type(body.url, resp.headers.get("content-type"))
        body.set_content_type(resp.headers.get("content-type"))
        return whole

    def _accept_206(self, cr: ContentRange | None, byte_range: ByteRange | None, start: int) -> bool:
        body = self.body
        if cr is None:
            return byte_range is None
        if cr.start != start:
            if cr.start != 0:
                raise ProtocolError(f"{body.url}: asked for bytes from {start}, got {cr.start}")
            body.reset()
        if cr.total is not None:
            body.total = cr.total
        return cr.total is not None and cr.end + 1 >= cr.total

    def _note_encoding(self, resp: Response, received: int) -> None:
        """A Content-Encoded answer (or, where the browser hides the header, more decoded bytes
        than the range held) means file offsets are not ours to count: no more ranges for it."""
        if self.body.encoded:
            return
        encoding = resp.headers.get("content-encoding", "").strip().lower()
        cr = parse_content_range(resp.headers.get("content-range")) if resp.status == 206 else None
        grew = cr is not None and received > cr.end - cr.start + 1
        if encoding not in ("", "identity") or grew:
            self.body.encoded = True
            self.engine.frames_encoded = True

    async def _read(self, resp: Response, received: list[int], *, whole: bool, streaming: bool,
                    on_chunk: Callable[[], bool] | None, stop: Callable[[], bool] | None = None) -> bool:
        """Feed the answer's chunks to the body; True if ``stop`` ended the transfer early."""
        body, st = self.body, self.st
        whole_only = not streaming and on_chunk is None and stop is None
        async for chunk in self.chunks(resp, whole=whole_only):
            self.check()
            n = len(chunk)
            received[0] += n
            st.bytes_received += n
            if resp.status == 206:
                self._note_encoding(resp, received[0])
            self.check_cap(body.file_offset + n)
            body.feed(chunk)
            if on_chunk is not None and on_chunk():
                await asyncio.sleep(0)  # let the request it started go out now
            if stop is not None and not body.decodable_complete and stop():
                return True
            if streaming and body.levels and not body.decodable_complete and self._decode_due():
                level = self.engine.rules.best_partial_level(body, st.best, self.options)
                if level is not None:
                    self.decode_partial(level)
                    self.last_partial, self.last_partial_bytes = self.engine.clock(), body.file_offset
                    await asyncio.sleep(0)
        return False

    def _decode_due(self) -> bool:
        """Cornerstone's stream reader: the first partial decode once ``initialChunkSize`` bytes
        are held, later ones ``chunkSize`` bytes and ``msBetweenDecode`` ms apart.

        A size equal to its default counts as not given (RetrieveOptions cannot tell them apart):
        then each level is decoded as soon as it completes, as our streaming presets do.
        """
        opts, held = self.options, self.body.file_offset
        if self.last_partial is None:
            return held >= _given(opts.initial_chunk_size, DEFAULT_INITIAL_CHUNK_SIZE)
        if held - self.last_partial_bytes < _given(opts.chunk_size, DEFAULT_CHUNK_SIZE):
            return False
        gap = opts.ms_between_decode
        return not gap or (self.engine.clock() - self.last_partial) * 1000 >= gap

    def check_cap(self, end: int) -> None:
        """Refuse a frame resource larger than any encoding of the declared image."""
        if end > self.byte_cap:
            fmt = self.st.image.fmt
            raise ProtocolError(f"{self.body.url}: more than {self.byte_cap} bytes for one frame "
                                f"(a {fmt.rows}x{fmt.columns} image of {fmt.bits_allocated}-bit samples)")

    def chunks(self, resp: Response, watch: SpeedWatch | None = None, *, whole: bool = False) -> AsyncIterator[bytes]:
        """The body's chunks under the low-speed rule and the stage's deadline (the browser's
        fetch has no read timeout of its own); ``whole``: nothing is done before the end."""
        return paced(resp, watch or self.watch, whole=whole)

    async def get(self, byte_range: ByteRange | None) -> Response:
        """transport.get, with the low-speed time as the deadline for the answer's headers.

        Every URL asked for, redirected to (a 3xx with Location: NativeTransport does not follow)
        or answered from (``response.url``: the browser's fetch follows by itself) must be one the
        configuration allows for this study, so neither a BulkDataURI nor a redirect sends the
        viewer to another host unless ``allowedOrigins`` says so.
        """
        url = self.body.url
        for _ in range(MAX_REDIRECTS + 1):
            self.engine.check_url(url)
            resp = await head_within(self.engine.transport, url, self.watch.wait_seconds(),
                                     headers={"Accept": ACCEPT_ANY}, byte_range=byte_range,
                                     priority="high" if self.st.image.index == self.engine.current else "low")
            location = resp.headers.get("location") if resp.status in REDIRECT_STATUSES else None
            try:
                self.engine.check_url(resp.url or url)
            except TransportError:
                await resp.aclose()
                raise
            if not location:
                return resp
            await resp.aclose()
            url = urljoin(url, location.strip())
        raise ProtocolError(f"{self.body.url}: more than {MAX_REDIRECTS} redirects")


class InlineAttempt(Attempt):
    """Pixel data that came inline in the metadata (InlineBinary): nothing to fetch."""

    def __init__(self, engine: "RetrieveEngine", st: ImageState, job: Job, stage: RetrieveStage) -> None:
        image = st.image
        body = FrameBody(image.frame_url, image.transfer_syntax)
        body.syntax = image.transfer_syntax
        body.data += image.inline_data or b""
        body.complete = True
        super().__init__(engine, st, job, stage, RetrieveOptions(), body)

    async def fetch_frame(self) -> None:
        return None


class StreamAttempt(Attempt):
    """The whole frame, or (rangeIndex -1) the rest of it, in one request; streamed when asked,
    so the levels between what is held and the final one show as they complete."""

    def __init__(self, *args, streaming: bool | None = None) -> None:
        super().__init__(*args)
        self.streaming = self.options.streaming if streaming is None else streaming

    async def fetch_frame(self) -> None:
        await self.fetch(None, streaming=self.streaming)


class WholeAttempt(StreamAttempt):
    """One request for the whole frame (or, rangeIndex -1, the rest of it), decoded once all is in."""

    def __init__(self, *args) -> None:
        super().__init__(*args, streaming=False)
