"""What to fetch and what a result is worth: pure rules over the config, the stack and a body.

No I/O and no clock: which alternate a stage reads, which strategy fetches it, which resolution
level a first range should hold, which complete level is worth a decode, the quality status of a
decoded image, and whether a later stage could still improve an image (if not, it is final).
"""

from __future__ import annotations

import enum
import dataclasses
from urllib.parse import urlencode, urlsplit

from ..codecs import DecodeError, PixelFormat, codec_for
from ..config import ImageQualityStatus, RetrieveConfig, RetrieveOptions, RetrieveStage
from ..readers.codestream import ResolutionComplete
from ..study import Alternate, Stack, StackImage
from ..transport.errors import ProtocolError
from .body import PREFIX_DECODABLE, FrameBody
from .events import Refinement

__all__ = ["FetchKind", "Policy", "frame_request_url"]

Q = ImageQualityStatus


class FetchKind(enum.Enum):
    """Cornerstone's two request methods (``getPixelData``) plus the plain one."""

    WHOLE = "whole"  # one request for the whole frame, decoded at the end
    STREAM = "stream"  # one request, levels decoded as they complete
    RANGES = "ranges"  # rangeIndex >= 0: chunkSize bytes, extended to the end of a level


def frame_request_url(frame_url: str, options: RetrieveOptions) -> str:
    """framesPath replaces the last ``/frames/``; urlArguments are appended as a query."""
    url = frame_url
    if options.frames_path:
        path = "/" + options.frames_path.strip("/") + "/"
        i = url.rfind("/frames/")
        if i >= 0:
            url = url[:i] + path + url[i + len("/frames/"):]
    if options.url_arguments:
        url += ("&" if "?" in url else "?") + urlencode(options.url_arguments)
    return url


def syntax_is_lossy(syntax: str | None) -> bool:
    try:
        return bool(syntax) and codec_for(syntax).lossy
    except DecodeError:
        return False


class Policy:
    def __init__(self, config: RetrieveConfig, stack: Stack, viewport: tuple[int, int] | None) -> None:
        self.config = config
        self.stack = stack
        self.viewport = viewport  # (rows, columns) in device pixels

    def check_url(self, url: str) -> None:
        """Refuse a frame URL (a BulkDataURI, a redirect) outside the study's origin and
        ``allowedOrigins``: the image fails naming the host, nothing is asked of it."""
        if not self.config.allows_url(url, self.stack.series_url):
            host = urlsplit(url).netloc or url
            raise ProtocolError(f"{url}: host {host} is not the study's origin; "
                                f"add its origin to allowedOrigins to load images from it")

    # -- what a stage reads -----------------------------------------------------------------
    def options(self, stage: RetrieveStage, image: StackImage) -> RetrieveOptions:
        return self.config.options_for(stage.retrieve_type, image.transfer_syntax)

    def alternate(self, options: RetrieveOptions) -> Alternate | None:
        if not options.frames_path:
            return None
        return self.stack.alternates.get("/" + options.frames_path.strip("/") + "/")

    def syntax_of(self, image: StackImage, options: RetrieveOptions) -> str:
        """The transfer syntax the stage's encoding is expected in."""
        alt = self.alternate(options)
        return alt.transfer_syntax if alt is not None and alt.transfer_syntax else image.transfer_syntax

    def pixel_format(self, image: StackImage, body: FrameBody, options: RetrieveOptions) -> PixelFormat:
        """The image's pixel format, with the size of this encoding (thumbnails are smaller)."""
        fmt = image.fmt
        if body.header is not None:
            size: tuple[int, int] | None = (body.header.siz.height, body.header.siz.width)
        else:
            jpeg = body.jpeg_header(scans=False)
            size = jpeg.size if jpeg is not None else None
            alt = self.alternate(options)
            if size is None and alt is not None and alt.rows and alt.columns:
                size = (alt.rows, alt.columns)
        if size is not None and size != (fmt.rows, fmt.columns):
            fmt = dataclasses.replace(fmt, rows=size[0], columns=size[1], number_of_frames=1)
        return fmt

    @staticmethod
    def fetch_kind(options: RetrieveOptions) -> FetchKind:
        if options.range_index is not None and options.range_index >= 0:
            return FetchKind.RANGES
        return FetchKind.STREAM if options.streaming else FetchKind.WHOLE

    # -- what a result is worth -------------------------------------------------------------
    def target_status(self, image: StackImage, options: RetrieveOptions) -> ImageQualityStatus:
        """The best status a stage can reach: its configured one, lowered for a thumbnail or a
        lossy alternate, and never above LOSSY for a lossy transfer syntax."""
        status = options.final_status
        alt = self.alternate(options)
        if status == Q.FULL_RESOLUTION and alt is not None:
            if alt.thumbnail:
                status = Q.SUBRESOLUTION
            elif alt.lossy:
                status = Q.LOSSY
        if status == Q.FULL_RESOLUTION and syntax_is_lossy(self.syntax_of(image, options)):
            status = Q.LOSSY
        return status

    def status_of(self, image: StackImage, options: RetrieveOptions, syntax: str, rows: int, columns: int,
                  *, partial: bool, stream_lossless: bool | None = None) -> ImageQualityStatus:
        """The status of a decoded image: partial data is ``partial_status``; a whole frame is what
        its stage can reach, lower when smaller than the image; lossy or not as the stream says
        (JPEG-LS NEAR, the JPEG process) where it says, else as its transfer syntax is labelled."""
        if partial:
            return options.partial_status
        status = self.target_status(image, options)
        if stream_lossless and status == Q.LOSSY and options.final_status == Q.FULL_RESOLUTION:
            alt = self.alternate(options)
            status = Q.SUBRESOLUTION if alt is not None and alt.thumbnail else Q.FULL_RESOLUTION
        if (rows, columns) != (image.rows, image.columns) and status > Q.SUBRESOLUTION:
            status = Q.SUBRESOLUTION
        lossy = syntax_is_lossy(syntax) if stream_lossless is None else not stream_lossless
        if status == Q.FULL_RESOLUTION and lossy:
            status = Q.LOSSY
        return status

    def stage_can_improve(self, image: StackImage, stage: RetrieveStage, rank: tuple[int, int]) -> bool:
        target = self.target_status(image, self.options(stage, image))
        return (int(target), image.rows * image.columns) > rank

    def later_stage_improves(self, image: StackImage, stage_pos: int, rank: tuple[int, int],
                             requested: bool, count: int) -> bool:
        """Whether a stage after ``stage_pos`` could still beat ``rank``: if none, it is final."""
        if not requested:
            return False
        for stage in self.config.stages[stage_pos + 1:]:
            if stage.selects(image.index, count) and self.stage_can_improve(image, stage, rank):
                return True
        return False

    # -- which levels -----------------------------------------------------------------------
    @staticmethod
    def level_allowed(level: ResolutionComplete, options: RetrieveOptions, body: FrameBody) -> bool:
        """A level short of the whole image, within ``decodeLevel`` (0: any, decoded at full size)."""
        cap = options.decode_level_cap
        return (level.reduce >= 1 and (cap == 0 or level.reduce <= cap) and not body.partial_failed
                and body.resolved_syntax in PREFIX_DECODABLE)

    @staticmethod
    def partial_reduce(level: ResolutionComplete, options: RetrieveOptions) -> int:
        """Levels skipped when decoding a level prefix: its own, or none for ``decodeLevel`` 0
        (Cornerstone decodes partial data at full size; the result is LOSSY, not smaller)."""
        return 0 if options.decode_level_cap == 0 else level.reduce

    def fills_viewport(self, rows: int, columns: int) -> bool:
        if self.viewport is None:
            return False
        vr, vc = self.viewport
        return rows >= vr or columns >= vc

    def wanted_level(self, body: FrameBody, options: RetrieveOptions, chunk_end: int) -> ResolutionComplete | None:
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
        allowed = [lv for lv in levels if self.level_allowed(lv, options, body)]  # ascending size
        if not allowed:
            return None
        inside = [lv for lv in allowed if (body.level_file_end(lv.level) or 0) <= chunk_end]
        target = inside[-1] if inside else allowed[0]
        if any(done.level >= target.level for done in body.levels):
            return None
        return target

    def best_partial_level(self, body: FrameBody, shown: Refinement | None,
                           options: RetrieveOptions) -> ResolutionComplete | None:
        """The newest complete level worth a decode: allowed, larger than what is shown."""
        if shown is not None:
            if shown.status > Q.SUBRESOLUTION:
                return None
            if body.levels and self.fills_viewport(shown.rows, shown.columns):
                return None  # beyond the viewport a partial level adds nothing before the final
        # a replica of a neighbour (nearbyFrames) is not this image: any real level beats it
        real = shown is not None and shown.status >= Q.SUBRESOLUTION
        area = shown.rows * shown.columns if real else 0
        for level in reversed(body.levels):
            if not self.level_allowed(level, options, body):
                continue
            return level if level.rows * level.columns > area else None
        return None
