"""Byte-range requests (Cornerstone's ``rangeRequest``): the first ``chunkSize`` bytes, ended at a
resolution level, with the second range asked for while the first is still arriving."""

from __future__ import annotations

import asyncio

from ..transport.base import parse_content_range
from ..transport.errors import ProtocolError, TransportError
from ..config import ImageQualityStatus as Q
from ..readers.codestream import ResolutionComplete
from ..transport.limits import SpeedWatch
from .events import FirstBytes, RequestFinished, RequestStarted
from .fetch import Attempt

__all__ = ["RangeAttempt"]


class RangeAttempt(Attempt):
    """``rangeIndex`` >= 0: up to ``range_end`` (``initialChunkSize`` + n ``chunkSize``), then on
    to the end of a level if needed.

    The second range is asked for as soon as the first one's main header (its TLM) says where
    that level ends, so its round trip overlaps the first transfer instead of following it.
    Whatever is still missing after that (no TLM in the first bytes, the early request failed
    or was answered oddly) is fetched the plain way, from the first byte not held.
    """

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.want_end = self.options.range_end(self.options.range_index)  # initialChunkSize + n * chunkSize
        self.ahead: asyncio.Task | None = None
        self.ahead_asked = False

    async def fetch_frame(self) -> None:
        body = self.body
        try:
            if body.file_offset < self.want_end:
                await self.fetch(self.want_end, streaming=False, on_chunk=self._on_chunk)
            await self._take_ahead()
        finally:
            self._drop_ahead()
        if body.encoded:
            return  # no ranges over encoded bytes: a later stage asks for the whole frame
        level = self.engine.rules.wanted_level(body, self.options, self.want_end)
        if level is not None and not body.decodable_complete:
            end = body.level_file_end(level.level)
            if end is not None and end > body.file_offset:
                await self.fetch(end, streaming=False)
        elif self._level_end_unknown():
            # no TLM: where a level ends shows only once its packet headers are in, so read on
            # until the body holds an allowed level and close the transfer there
            await self.fetch(None, streaming=False, stop=self._holds_a_level)

    def _level_end_unknown(self) -> bool:
        """No TLM, a resolution-progressive stream, and no level worth showing in what is held."""
        body, rules, shown = self.body, self.engine.rules, self.st.best
        if body.decodable_complete or body.header is None or body.level_file_end(0) is not None:
            return False
        if body.scanner is None or not body.scanner.progressive:
            return False
        if shown is not None and shown.status > Q.SUBRESOLUTION:
            return False  # nothing partial can beat what is shown
        smallest_reduce = ResolutionComplete(0, 1, 0, 0, 0)  # could any level be decoded at all?
        return (rules.level_allowed(smallest_reduce, self.options, body)
                and rules.best_partial_level(body, shown, self.options) is None)

    def _holds_a_level(self) -> bool:
        return self.engine.rules.best_partial_level(self.body, self.st.best, self.options) is not None

    def _on_chunk(self) -> bool:
        """After each chunk of a range the server honours: True if it started the early range."""
        body = self.body
        if self.ahead_asked or body.header is None or body.encoded:
            return False
        self.ahead_asked = True
        level = self.engine.rules.wanted_level(body, self.options, self.want_end)
        end = body.level_file_end(level.level) if level is not None else None
        if end is not None and end > self.want_end and not body.decodable_complete:
            self.ahead = asyncio.ensure_future(self.read_ahead(self.want_end, end))
        return self.ahead is not None

    async def _take_ahead(self) -> None:
        """Feed the early range's bytes, if they came and the body reached where they start."""
        if self.ahead is None:
            return
        try:
            chunks, total = await self.ahead
        except (TransportError, ValueError):
            return
        self.check()
        body = self.body
        if body.file_offset != self.want_end or body.decodable_complete or body.encoded:
            return
        for chunk in chunks:
            self.st.bytes_received += len(chunk)
            body.feed(chunk)
        if total is not None:
            body.total = total
            if body.file_offset >= total:
                body.end_of_file()

    def _drop_ahead(self) -> None:
        task = self.ahead
        if task is None:
            return
        if not task.done():
            task.cancel()
        elif not task.cancelled():
            task.exception()  # retrieved: a failed early range is not worth a warning

    async def read_ahead(self, start: int, end: int) -> tuple[list[bytes], int | None]:
        """Bytes ``start``..``end``-1 of the frame, held aside until the body reaches ``start``.

        Anything but a 206 for exactly that start raises (the caller then fetches the plain way);
        one attempt only, no retries: the plain way has them.
        """
        body, stage, index = self.body, self.stage, self.st.image.index
        self.emit(RequestStarted(index, stage.id, body.url, (start, end - 1), self.t_ms()))
        chunks: list[bytes] = []
        received, status, cancelled, resp = 0, 0, False, None
        try:
            resp = await self.get((start, end - 1))
            status = resp.status
            self.emit(FirstBytes(index, stage.id, body.url, status, self.t_ms()))
            cr = parse_content_range(resp.headers.get("content-range"))
            if status != 206 or cr is None or cr.start != start:
                raise ProtocolError(f"{body.url}: the early range request got HTTP {status}")
            watch = SpeedWatch(self.watch.limits, body.url, self.watch.clock, self.watch.started)
            async for chunk in self.chunks(resp, watch):  # its own low-speed window, the same deadline
                received += len(chunk)
                self.check_cap(start + received)
                chunks.append(bytes(chunk))
            if received > end - start:
                raise ProtocolError(f"{body.url}: the early range came encoded")
            return chunks, cr.total
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            if resp is not None:
                await resp.aclose()
            self.emit(RequestFinished(index, stage.id, body.url, status, received, self.t_ms(), cancelled))
