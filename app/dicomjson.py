"""DICOM JSON (PS3.18 F.2) helpers: tag access, BulkDataURI, InlineBinary, gzip-tolerant loading."""

from __future__ import annotations

import base64
import binascii
import json
import re
import zlib
from typing import Any

import numpy

__all__ = [
    "Tag",
    "element",
    "value",
    "values",
    "first",
    "as_text",
    "as_number",
    "as_integer",
    "text",
    "number",
    "integer",
    "floats",
    "sequence",
    "bulk_data_uri",
    "inline_binary",
    "loads",
    "maybe_gunzip",
    "MAX_JSON_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_JSON_CONTAINERS",
    "MAX_JSON_VALUES",
    "JsonRefused",
    "check_shape",
]

MAX_JSON_BYTES = 256 << 20  # most bytes a (gzip) DICOM JSON document may inflate to
# DICOM JSON nests 3 levels per sequence (element, Value list, item): 64 allows 20 nested
# sequences; Pyodide's parser overflows the browser's stack long before Python's recursion limit
MAX_JSON_DEPTH = 64
# objects + arrays, and values, in one document: each costs ~60-200 bytes once parsed, whatever
# its text costs ("{}" is 2 bytes), so these bound the parsed size (a 2,000-instance CT series
# has about 500,000 objects and arrays)
MAX_JSON_CONTAINERS = 2_000_000
MAX_JSON_VALUES = 8_000_000


class JsonRefused(ValueError):
    """The document is refused before parsing: nested too deeply or too many objects."""


class Tag:
    """Tags the viewer reads, as DICOM JSON keys."""

    TRANSFER_SYNTAX_UID = "00020010"
    STUDY_DATE = "00080020"
    STUDY_DESCRIPTION = "00081030"
    SERIES_DESCRIPTION = "0008103E"
    PATIENT_NAME = "00100010"
    PATIENT_ID = "00100020"
    SOP_CLASS_UID = "00080016"
    SOP_INSTANCE_UID = "00080018"
    MODALITY = "00080060"
    AVAILABLE_TRANSFER_SYNTAX_UID = "00083002"
    IMAGER_PIXEL_SPACING = "00181164"
    STUDY_INSTANCE_UID = "0020000D"
    SERIES_INSTANCE_UID = "0020000E"
    SERIES_NUMBER = "00200011"
    INSTANCE_NUMBER = "00200013"
    IMAGE_POSITION_PATIENT = "00200032"
    IMAGE_ORIENTATION_PATIENT = "00200037"
    NUMBER_OF_SERIES_RELATED_INSTANCES = "00201209"
    ROWS = "00280010"
    COLUMNS = "00280011"
    PIXEL_SPACING = "00280030"
    NUMBER_OF_FRAMES = "00280008"
    PHOTOMETRIC_INTERPRETATION = "00280004"
    WINDOW_CENTER = "00281050"
    WINDOW_WIDTH = "00281051"
    RESCALE_INTERCEPT = "00281052"
    RESCALE_SLOPE = "00281053"
    PIXEL_MEASURES_SEQUENCE = "00289110"
    PLANE_POSITION_SEQUENCE = "00209113"
    PLANE_ORIENTATION_SEQUENCE = "00209116"
    FRAME_VOI_LUT_SEQUENCE = "00289132"
    SHARED_FUNCTIONAL_GROUPS = "52009229"
    PER_FRAME_FUNCTIONAL_GROUPS = "52009230"
    PIXEL_DATA = "7FE00010"
    FLOAT_PIXEL_DATA = "7FE00008"
    DOUBLE_PIXEL_DATA = "7FE00009"


def element(obj: dict, tag: str) -> dict | None:
    """The element object of ``tag`` (keys in upper or lower case hex), None when absent."""
    el = obj.get(tag)
    if el is None:
        el = obj.get(tag.lower()) or obj.get(tag.upper())
    return el if isinstance(el, dict) else None


_element = element


def values(obj: dict, tag: str) -> list[Any]:
    el = obj.get(tag)  # the common case inline: discovery reads ~20 tags of every instance
    if el is None:
        el = obj.get(tag.lower()) or obj.get(tag.upper())
    if not isinstance(el, dict):
        return []
    v = el.get("Value")
    return v if isinstance(v, list) else []


def value(obj: dict, tag: str, default: Any = None) -> Any:
    v = values(obj, tag)
    return v[0] if v and v[0] is not None else default


def first(obj: dict, tag: str) -> Any:
    """The first value of ``tag`` (None when absent): what text, number and integer convert."""
    el = obj.get(tag)  # values() inline: discovery reads a few tags of every instance
    if el is None:
        el = obj.get(tag.lower()) or obj.get(tag.upper())
    if not isinstance(el, dict):
        return None
    v = el.get("Value")
    return v[0] if isinstance(v, list) and v else None


def as_text(v: Any, default: str | None = None) -> str | None:
    """A first value as text: strings stripped, a person name's Alphabetic group."""
    if v is None:
        return default
    if isinstance(v, str):
        return v.strip()
    if isinstance(v, dict):  # person name
        return v.get("Alphabetic", default)
    return str(v).strip()


def as_number(v: Any, default: float | None = None) -> float | None:
    """A first value as a float (DS and IS may arrive as numbers or strings)."""
    try:
        return float(v) if v is not None else default
    except (TypeError, ValueError):
        return default


def as_integer(v: Any, default: int | None = None) -> int | None:
    n = as_number(v)
    return int(n) if n is not None else default


def text(obj: dict, tag: str, default: str | None = None) -> str | None:
    return as_text(first(obj, tag), default)


def number(obj: dict, tag: str, default: float | None = None) -> float | None:
    return as_number(first(obj, tag), default)


def integer(obj: dict, tag: str, default: int | None = None) -> int | None:
    return as_integer(first(obj, tag), default)


def floats(obj: dict, tag: str) -> list[float] | None:
    """All values as floats (DS/FD may arrive as numbers or strings); None when absent or bad."""
    v = values(obj, tag)
    if not v:
        return None
    try:
        return [float(x) for x in v]
    except (TypeError, ValueError):
        return None


def sequence(obj: dict, tag: str) -> list[dict]:
    return [item for item in values(obj, tag) if isinstance(item, dict)]


def bulk_data_uri(obj: dict, tag: str) -> str | None:
    el = _element(obj, tag)
    uri = el.get("BulkDataURI") if el else None
    return str(uri) if uri else None


def inline_binary(obj: dict, tag: str) -> bytes | None:
    """The decoded InlineBinary of an element; ValueError when it is not base64."""
    el = _element(obj, tag)
    data = el.get("InlineBinary") if el else None
    if not data:
        return None
    if isinstance(data, list):
        data = "".join(str(item) for item in data)
    if not isinstance(data, str):
        raise ValueError(f"InlineBinary of {tag} is not a string")
    try:
        return base64.b64decode("".join(data.split()), validate=True)
    except binascii.Error as exc:
        raise ValueError(f"InlineBinary of {tag} is not base64: {exc}") from exc


def maybe_gunzip(data: bytes | bytearray | memoryview) -> bytes:
    """Static trees store ``.gz`` files that servers may send without Content-Encoding.

    A truncated or corrupt gzip stream is a ValueError.
    """
    data = bytes(data)
    while data[:2] == b"\x1f\x8b":
        data = _gunzip(data, MAX_JSON_BYTES)
    return data


def _gunzip(data: bytes, limit: int) -> bytes:
    """gzip members one after another, refusing more than ``limit`` bytes (a gzip bomb)."""
    out = bytearray()
    rest = data
    try:
        while rest:
            member = zlib.decompressobj(wbits=31)
            out += member.decompress(rest, limit + 1 - len(out))
            if len(out) > limit or member.unconsumed_tail:
                raise ValueError(f"gzip data inflates to more than {limit} bytes")
            if not member.eof:
                raise ValueError("bad gzip data: truncated")
            rest = member.unused_data.lstrip(b"\x00")
    except zlib.error as exc:
        raise ValueError(f"bad gzip data: {exc}") from exc
    return bytes(out)


_ESCAPE = re.compile(rb"\\.", re.S)
_NOT_STRUCTURE = bytes(sorted(set(range(256)) - set(b'"[]{},')))
_NOT_NESTING = bytes(sorted(set(range(256)) - set(b'"[]{}')))
# how a byte changes the nesting depth, as an int8 (a bytes.translate table: faster than numpy's take)
_STEPS = bytes(1 if b in b"[{" else 255 if b in b"]}" else 0 for b in range(256))
_SCAN_BLOCK = 1 << 20  # bytes per vectorised step: a few MB of temporaries at most
_QUOTE, _COMMA = ord('"'), ord(",")


def check_shape(raw: bytes) -> None:
    """Refuse a document nested deeper than MAX_JSON_DEPTH or holding more objects or values than
    the limits, before any parser sees it (vectorised: no Python loop over the bytes)."""
    text = _ESCAPE.sub(b"", raw) if b"\\" in raw else raw  # escapes only occur inside strings
    # a shorter document cannot hold more containers or values (a byte each) than the limits
    counting = len(text) > min(MAX_JSON_CONTAINERS, MAX_JSON_VALUES)
    kept = text.translate(None, _NOT_STRUCTURE if counting else _NOT_NESTING)
    marks = numpy.frombuffer(kept, numpy.uint8)
    moves = numpy.frombuffer(kept.translate(_STEPS), numpy.int8)
    containers = values = depth = 0
    in_string = 0
    for start in range(0, len(marks), _SCAN_BLOCK):
        block = marks[start:start + _SCAN_BLOCK]
        inside = numpy.cumsum((block == _QUOTE).view(numpy.int8), dtype=numpy.int32)
        inside += in_string
        inside &= 1  # 1 inside a string (its opening quote included), 0 outside
        in_string = int(inside[-1])
        outside = inside == 0
        steps = moves[start:start + _SCAN_BLOCK] * outside.view(numpy.int8)  # strings do not nest
        if counting:
            containers += int(numpy.count_nonzero(steps == 1))
            values += int(numpy.count_nonzero((block == _COMMA) & outside))
            if containers > MAX_JSON_CONTAINERS:
                raise JsonRefused(f"JSON with more than {MAX_JSON_CONTAINERS} objects and arrays")
            if values > MAX_JSON_VALUES:
                raise JsonRefused(f"JSON with more than {MAX_JSON_VALUES} values")
        levels = numpy.cumsum(steps, dtype=numpy.int32)
        levels += depth
        if levels.max() > MAX_JSON_DEPTH:
            raise JsonRefused(f"JSON nested more than {MAX_JSON_DEPTH} levels deep")
        depth = int(levels[-1])


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Parse DICOM JSON (gzip by magic bytes, BOM tolerated); ValueError when it is not JSON,
    JsonRefused (a ValueError) when its nesting or size is over the limits."""
    raw = data.encode("utf-8") if isinstance(data, str) else maybe_gunzip(data)
    check_shape(raw)
    if isinstance(raw, bytes):
        raw = raw.removeprefix(b"\xef\xbb\xbf").decode("utf-8")
    try:
        return json.loads(raw)
    except RecursionError as exc:  # "[[[[..." nested deeper than the parser goes
        raise ValueError("JSON nested too deeply") from exc
