"""``stack.json``: a series' stack index, what the viewer needs to plan and ask for frames.

Parsing a series' DICOM JSON metadata is the largest cost before the first frame request (a
1000-instance document is ~1.7 MB of nested objects: 60-120 ms of Pyodide's json.loads). The
index holds only what a stack needs, in stack order, as columns: it parses in a few ms, so the first
frame request leaves before the metadata is parsed. The metadata stays the source of truth: a
viewer checks the index against it before drawing anything (app/study.py), and a tree without an
index (another tool's, an older one) is read from its metadata as before.

Format (version 1), written by the converter next to ``metadata``::

    {"stackIndex": 1, "images": N,
     "series": {"studyInstanceUID": "...", "seriesInstanceUID": "...", "modality": "CT",
                "patientName": "...", "patientId": "...", "studyDate": "YYYYMMDD",
                "studyDescription": "...", "seriesDescription": "...", "seriesNumber": 3},
     "same": {"transferSyntax": "1.2.840.10008.1.2.4.202", "format": [...], ...},
     "each": {"sop": ["1.2...", ...], "position": [[x, y, z], ...], ...}}

Every image field is in ``same`` (one value for all images) or ``each`` (N values, in stack order):

    sop             SOP Instance UID (always in ``each``)
    frame           1-based frame number in its instance
    transferSyntax  of the ``frames/`` files
    format          [rows, columns, samplesPerPixel, bitsAllocated, bitsStored, pixelRepresentation,
                     photometricInterpretation, planarConfiguration, numberOfFrames, rescaleSlope,
                     rescaleIntercept]
    spacing         [row spacing, column spacing] in mm, or null
    windows         [[center, width], ...]
    number          InstanceNumber, or null
    position        ImagePositionPatient [x, y, z] of the frame, or null

Frame n of an image is at ``{series}/instances/{sop}/frames/{n}``: a series whose pixel data is
elsewhere (another BulkDataURI, inline) gets no index. Pure Python, no I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import repeat
from typing import Any, Callable, Iterable, Mapping, Sequence

from ..uids import valid_uid

__all__ = ["STACK_INDEX_NAME", "STACK_INDEX_VERSION", "IMAGE_FIELDS", "SeriesIdentity", "StackIndex",
           "parse_stack_index", "stack_index_bytes"]

STACK_INDEX_NAME = "stack.json"
STACK_INDEX_VERSION = 1
MAX_INDEX_IMAGES = 100_000  # as discovery's MAX_STACK_IMAGES: more is a broken or hostile index
IMAGE_FIELDS = ("sop", "frame", "transferSyntax", "format", "spacing", "windows", "number", "position")
_ALWAYS_EACH = ("sop",)
_FORMAT_TYPES = (int, int, int, int, int, int, str, int, int, float, float)


@dataclass(frozen=True)
class SeriesIdentity:
    """Who and what the series is: the overlay's names, once for the series."""

    study_uid: str
    series_uid: str
    modality: str | None = None
    patient_name: str | None = None
    patient_id: str | None = None
    study_date: str | None = None
    study_description: str | None = None
    series_description: str | None = None
    series_number: int | None = None


# SeriesIdentity field -> JSON name
_IDENTITY_NAMES = {"study_uid": "studyInstanceUID", "series_uid": "seriesInstanceUID", "modality": "modality",
                   "patient_name": "patientName", "patient_id": "patientId", "study_date": "studyDate",
                   "study_description": "studyDescription", "series_description": "seriesDescription",
                   "series_number": "seriesNumber"}


@dataclass(frozen=True)
class StackIndex:
    """A parsed (or to be written) index: the series once, each image field as one value or a column."""

    series: SeriesIdentity
    count: int
    same: Mapping[str, Any]
    each: Mapping[str, Sequence[Any]]

    def column(self, name: str) -> Iterable[Any]:
        """The field's ``count`` values, in stack order."""
        return self.each[name] if name in self.each else repeat(self.same[name], self.count)

    @classmethod
    def from_images(cls, series: SeriesIdentity, images: Sequence[Sequence[Any]]) -> StackIndex:
        """From one tuple per image, fields in IMAGE_FIELDS order; a field all images agree on once."""
        same, each = {}, {}
        for i, name in enumerate(IMAGE_FIELDS):
            values = [image[i] for image in images]
            if name not in _ALWAYS_EACH and values and values.count(values[0]) == len(values):
                same[name] = values[0]
            else:
                each[name] = values
        return cls(series, len(images), same, each)

    def to_json(self) -> dict:
        identity = {json_name: getattr(self.series, name) for name, json_name in _IDENTITY_NAMES.items()}
        return {"stackIndex": STACK_INDEX_VERSION, "images": self.count, "series": identity,
                "same": dict(self.same), "each": {name: list(values) for name, values in self.each.items()}}


def stack_index_bytes(index: StackIndex) -> bytes:
    """The file's bytes: compact JSON, UTF-8."""
    return json.dumps(index.to_json(), separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def parse_stack_index(doc: object) -> StackIndex:
    """A parsed ``stack.json`` document checked field by field; ValueError names what is wrong."""
    if not isinstance(doc, dict):
        raise ValueError("stack index: not a JSON object")
    version = doc.get("stackIndex")
    if version != STACK_INDEX_VERSION:
        raise ValueError(f"stack index version {version!r}: this viewer reads version {STACK_INDEX_VERSION}")
    count = doc.get("images")
    if not _is_int(count) or not 0 < count <= MAX_INDEX_IMAGES:
        raise ValueError(f"stack index: images {count!r} is not a count of 1 to {MAX_INDEX_IMAGES}")
    same, each = doc.get("same"), doc.get("each")
    if not isinstance(same, dict) or not isinstance(each, dict):
        raise ValueError("stack index: same and each must be JSON objects")
    unknown = (set(same) | set(each)) - set(IMAGE_FIELDS)
    if unknown:
        raise ValueError(f"stack index: unknown image field {sorted(unknown)[0]!r}")
    parsed_same, parsed_each = {}, {}
    for name in IMAGE_FIELDS:
        check = _FIELD_CHECKS[name]
        if (name in same) == (name in each) or (name in _ALWAYS_EACH and name in same):
            raise ValueError(f"stack index: {name} must be in exactly one of same and each")
        try:
            if name in same:
                parsed_same[name] = check(same[name])
            else:
                values = each[name]
                if not isinstance(values, list) or len(values) != count:
                    raise ValueError(f"not a list of {count} values")
                parsed_each[name] = [check(value) for value in values]
        except (ValueError, TypeError) as exc:
            raise ValueError(f"stack index: {name}: {exc}") from None
    return StackIndex(_identity(doc.get("series")), count, parsed_same, parsed_each)


def _identity(doc: object) -> SeriesIdentity:
    if not isinstance(doc, dict):
        raise ValueError("stack index: series must be a JSON object")
    values = {}
    for name, json_name in _IDENTITY_NAMES.items():
        value = doc.get(json_name)
        if name in ("study_uid", "series_uid"):
            if not isinstance(value, str) or not valid_uid(value):
                raise ValueError(f"stack index: series {json_name} {str(value)[:80]!r} is not a UID")
        elif name == "series_number":
            if value is not None and not _is_int(value):
                raise ValueError(f"stack index: series {json_name} {value!r} is not an integer")
        elif value is not None and not isinstance(value, str):
            raise ValueError(f"stack index: series {json_name} {value!r} is not text")
        values[name] = value
    return SeriesIdentity(**values)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ValueError(f"{value!r} is not a number")
    return float(value)


def _numbers(value: object, length: int) -> tuple[float, ...]:
    if not isinstance(value, list) or len(value) != length:
        raise ValueError(f"{str(value)[:80]} is not a list of {length} numbers")
    return tuple(map(_number, value))


def _uid(value: object) -> str:
    if not isinstance(value, str) or not valid_uid(value):
        raise ValueError(f"{str(value)[:80]!r} is not a UID")
    return value


def _frame(value: object) -> int:
    if not _is_int(value) or value < 1:
        raise ValueError(f"{value!r} is not a frame number")
    return value


def _format(value: object) -> tuple:
    if not isinstance(value, list) or len(value) != len(_FORMAT_TYPES):
        raise ValueError(f"{str(value)[:80]} is not a list of {len(_FORMAT_TYPES)} pixel format values")
    out = []
    for kind, item in zip(_FORMAT_TYPES, value):
        if kind is float:
            out.append(_number(item))
        elif kind is int and (not _is_int(item) or item < 0):
            raise ValueError(f"{str(value)[:80]}: {item!r} is not a count")
        elif kind is str and not isinstance(item, str):
            raise ValueError(f"{str(value)[:80]}: {item!r} is not text")
        else:
            out.append(item)
    return tuple(out)


def _optional(check: Callable[[object], Any]) -> Callable[[object], Any]:
    return lambda value: None if value is None else check(value)


def _windows(value: object) -> tuple[tuple[float, float], ...]:
    if not isinstance(value, list):
        raise ValueError(f"{str(value)[:80]} is not a list of windows")
    return tuple(_numbers(window, 2) for window in value)


def _integer(value: object) -> int:
    if not _is_int(value):
        raise ValueError(f"{value!r} is not an integer")
    return value


_FIELD_CHECKS: dict[str, Callable[[object], Any]] = {
    "sop": _uid, "frame": _frame, "transferSyntax": _uid, "format": _format,
    "spacing": _optional(lambda v: _numbers(v, 2)), "windows": _windows, "number": _optional(_integer),
    "position": _optional(lambda v: _numbers(v, 3)),
}
