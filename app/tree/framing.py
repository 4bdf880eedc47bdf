"""Frame files of a static tree: the single-part multipart/related body, its digest, file names.

A frame file is what a DICOMweb server answers for ``.../frames/{n}``, stored once::

    --{boundary}\\r\\nContent-Type: image/jphc;transfer-syntax=1.2.840.10008.1.2.4.202\\r\\n
    Content-Digest: sha-256=:<base64 of the codestream's SHA-256>:\\r\\n\\r\\n
    <codestream>\\r\\n--{boundary}--

(the Static DICOMweb toolkit's layout, plus the RFC 9530 digest that lets a viewer refuse bytes
corrupted on disk or on the way). Such files are named ``{n}.mht`` so that any static host types
them by suffix; a bare codestream (``--raw`` trees) keeps the name ``{n}``. Servers map the URL
``frames/{n}`` to whichever exists (``frame_file_names``).
"""

from __future__ import annotations

import base64
import hashlib
import re
import uuid

__all__ = [
    "FRAME_SUFFIX",
    "frame_file_name",
    "frame_file_names",
    "new_boundary",
    "multipart_content_type",
    "frame_part_chunks",
    "content_digest",
    "parse_content_digest",
    "sniff_frame_content_type",
]

FRAME_SUFFIX = ".mht"  # what mkdicomweb writes; S3, CDNs and nginx type it as multipart by suffix
_DIGEST = re.compile(r"sha-256=:([A-Za-z0-9+/=]+):")
_TS_PARAM = re.compile(r"transfer-syntax\s*=\s*\"?([0-9.]+)")


def frame_file_name(number: int, *, multipart: bool = True) -> str:
    """File name of frame ``number`` (1-based) in a frames folder."""
    return f"{number}{FRAME_SUFFIX}" if multipart else str(number)


def frame_file_names(number: int | str) -> tuple[str, ...]:
    """The file names that may hold frame ``number``, in the order a server should try them."""
    return (f"{number}{FRAME_SUFFIX}", f"{number}{FRAME_SUFFIX}.gz", str(number))


def new_boundary() -> str:
    """A boundary no codestream will contain by chance (128 random bits)."""
    return f"DICOMwebBoundary{uuid.uuid4().hex}"


def multipart_content_type(media_type: str, boundary: str, transfer_syntax: str | None = None) -> str:
    """The response Content-Type for a stored multipart frame file."""
    out = f'multipart/related; type="{media_type}"; boundary={boundary}'
    return out + (f"; transfer-syntax={transfer_syntax}" if transfer_syntax else "")


def content_digest(data: bytes | bytearray | memoryview) -> str:
    """RFC 9530 ``Content-Digest`` value of ``data`` (sha-256)."""
    return "sha-256=:" + base64.b64encode(hashlib.sha256(data).digest()).decode("ascii") + ":"


def parse_content_digest(value: str | None) -> bytes | None:
    """The sha-256 digest a ``Content-Digest`` header carries, None when it carries none."""
    match = _DIGEST.search(value or "")
    if not match:
        return None
    try:
        digest = base64.b64decode(match.group(1), validate=True)
    except ValueError:
        return None
    return digest if len(digest) == 32 else None


def frame_part_chunks(codestream: bytes, part_content_type: str, boundary: str) -> list[bytes]:
    """The chunks of one frame file (head, codestream, tail): written without joining them."""
    marker = boundary.encode("ascii")
    if marker in codestream:  # astronomically unlikely with a random 128-bit boundary
        raise ValueError("boundary string occurs inside a codestream")
    head = (b"--" + marker + b"\r\nContent-Type: " + part_content_type.encode("ascii")
            + b"\r\nContent-Digest: " + content_digest(codestream).encode("ascii") + b"\r\n\r\n")
    return [head, codestream, b"\r\n--" + marker + b"--"]


def sniff_frame_content_type(head: bytes) -> str:
    """Content-Type for a stored frame file from its first bytes (a multipart body or a codestream)."""
    if head.startswith(b"--"):
        first, _, rest = head.partition(b"\r\n")
        boundary = first[2:].decode("latin-1").strip()
        part_type = "application/octet-stream"
        for line in rest.split(b"\r\n"):
            if not line:
                break
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-type":
                part_type = value.strip()
        media, _, params = part_type.partition(";")
        ts = _TS_PARAM.search(params)
        return multipart_content_type(media.strip(), boundary, ts.group(1) if ts else None)
    if head.startswith(b"\xff\x4f\xff\x51"):
        return "image/jphc" if b"\xff\x50" in head[:256] else "image/j2c"
    if head.startswith(b"\xff\xd8\xff\xf7"):
        return "image/jls"
    if head.startswith(b"\xff\xd8"):
        return "image/jpeg"
    return "application/octet-stream"
