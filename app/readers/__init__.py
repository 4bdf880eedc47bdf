"""Sans-I/O protocol readers: bytes in, events out; no sockets, no event loop."""

from .codestream import (
    Cod,
    CodestreamComplete,
    CodestreamError,
    CodestreamScanner,
    MainHeader,
    ResolutionComplete,
    Siz,
)
from .multipart import (
    MultipartEnd,
    MultipartError,
    MultipartReader,
    PartData,
    PartEnd,
    PartHeaders,
    boundary_from_content_type,
    parse_media_type,
)

__all__ = [
    "Cod",
    "CodestreamComplete",
    "CodestreamError",
    "CodestreamScanner",
    "MainHeader",
    "ResolutionComplete",
    "Siz",
    "MultipartEnd",
    "MultipartError",
    "MultipartReader",
    "PartData",
    "PartEnd",
    "PartHeaders",
    "boundary_from_content_type",
    "parse_media_type",
]
