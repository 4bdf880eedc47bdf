"""What a frame answer may be, tied to what the metadata declares.

A login page, an SPA fallback or a JSON error answered with 200 is not a frame: its bytes must
never be decoded as raw pixels and shown as the lossless final image (native pixel data of any
length but the declared one is refused by the codec itself, codecs._decode_native). And a frame's bytes are
held in memory as they arrive, so a body larger than any encoding of the declared image could be
is refused instead of held (an endless part body would otherwise grow to the transfer budget).
"""

from __future__ import annotations

from ..codecs import PixelFormat
from ..readers.multipart import parse_media_type
from ..transport.errors import ProtocolError

__all__ = ["check_frame_content_type", "frame_byte_cap", "FRAME_SLACK_FACTOR", "FRAME_SLACK_BYTES"]

# the worst lossless codec expands noise by ~10 % (JPEG-LS, HTJ2K; RLE < 1 %); twice the native
# size plus room for part headers, JPEG 2000 markers and a JFIF thumbnail is never a real frame
FRAME_SLACK_FACTOR = 2
FRAME_SLACK_BYTES = 256 * 1024


def check_frame_content_type(url: str, content_type: str | None) -> None:
    """A frame answer is multipart/related, image/* or application/octet-stream (or untyped, then
    judged by its bytes); anything else (text/html, application/json, ...) is refused by name.
    Not retried: the server would answer the same."""
    if not content_type or not content_type.strip():
        return
    media, _ = parse_media_type(content_type)
    if media in ("multipart/related", "application/octet-stream") or media.startswith("image/"):
        return
    raise ProtocolError(f"{url}: the server answered {media or content_type!r}, not a frame "
                        "(multipart/related, image/* or application/octet-stream)")


def frame_byte_cap(fmt: PixelFormat, budget: int) -> int:
    """Most bytes one frame resource may hold: a small multiple of the declared native size, and
    never more than the policy's ``max_frame_bytes``."""
    declared = max(fmt.frame_length, fmt.decoded_bytes)  # one frame (1-bit data: a byte a pixel)
    return min(budget, FRAME_SLACK_FACTOR * declared + FRAME_SLACK_BYTES)
