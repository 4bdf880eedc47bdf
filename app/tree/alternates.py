"""``alternates.json``: which encodings of a series' frames sit beside ``frames/`` (one per folder).

Written by the converter, read by discovery (and so by the engine, which picks a retrieve stage's
``framesPath`` from it). The reader is tolerant: a mapping name -> entry or a list of entries,
``path`` / ``framesPath`` / ``name`` for the folder, camelCase or snake_case fields, because trees
made by other tools describe the same thing with other spellings.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping

__all__ = ["Alternate", "parse_alternates", "alternates_json", "frames_path"]


def frames_path(name: str) -> str:
    """The normalised key of a frames folder: ``"jlsThumbnail"`` -> ``"/jlsThumbnail/"``."""
    return "/" + str(name).strip("/") + "/"


@dataclass(frozen=True)
class Alternate:
    """One frames folder of an instance: which encoding of the pixels it holds, at which scale.

    The first fields keep the order discovery's ``Alternate`` had (path, rows, columns, syntax,
    lossy, thumbnail); ``name`` may be given as a framesPath (``"/jls/"``).
    """

    name: str  # folder name: "frames", "jls", "jlsThumbnail", ...
    rows: int | None = None  # of the series' first instance at this scale
    columns: int | None = None
    transfer_syntax: str | None = None
    lossy: bool | None = None
    thumbnail: bool = False  # a reduced image: never the final one
    media_type: str | None = None
    scale: int = 1  # each side is ceil(full / scale)
    resolution_levels: int | None = None  # JPEG 2000 family: decomposition levels + 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", str(self.name).strip("/"))

    @property
    def frames_path(self) -> str:
        return frames_path(self.name)

    def part_content_type(self) -> str:
        """The Content-Type of the part in a frame file: ``image/jls;transfer-syntax=...``."""
        return f"{self.media_type};transfer-syntax={self.transfer_syntax}"

    def sized(self, rows: int, columns: int) -> Alternate:
        """This entry for a full-size image of rows x columns."""
        return replace(self, rows=-(-rows // self.scale), columns=-(-columns // self.scale))

    def to_json(self) -> dict:
        entry: dict[str, Any] = {"path": self.name, "transferSyntaxUID": self.transfer_syntax,
                                 "mediaType": self.media_type, "lossy": bool(self.lossy), "scale": self.scale}
        if self.rows is not None and self.columns is not None:
            entry["rows"], entry["columns"] = self.rows, self.columns
        if self.resolution_levels is not None:
            entry["resolutionLevels"] = self.resolution_levels
        return entry


def _number(entry: Mapping, *names: str) -> int | None:
    for name in names:
        value = entry.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return int(value)
    return None


def _entry(key: str | None, entry: Mapping) -> Alternate | None:
    name = entry.get("framesPath") or entry.get("path") or entry.get("name") or key
    if not name or not str(name).strip("/"):
        return None
    ts = entry.get("transferSyntaxUID") or entry.get("transferSyntax") or entry.get("transfer_syntax")
    lossy = entry.get("lossy")
    media = entry.get("mediaType") or entry.get("media_type")
    scale = max(1, _number(entry, "scale") or 1)
    return Alternate(
        name=str(name).strip("/"), transfer_syntax=str(ts) if ts else None, media_type=str(media) if media else None,
        lossy=bool(lossy) if lossy is not None else None, scale=scale,
        rows=_number(entry, "rows", "Rows"), columns=_number(entry, "columns", "Columns", "cols"),
        resolution_levels=_number(entry, "resolutionLevels", "resolution_levels"),
        thumbnail=bool(entry.get("thumbnail", False)) or scale > 1)


def parse_alternates(doc: object) -> dict[str, Alternate]:
    """A list of entries or a mapping name -> entry (optionally under "alternates"); keys are framesPath."""
    if isinstance(doc, dict) and isinstance(doc.get("alternates"), (list, dict)):
        doc = doc["alternates"]
    if isinstance(doc, dict):
        pairs = [(str(k), v) for k, v in doc.items() if isinstance(v, dict)]
    elif isinstance(doc, list):
        pairs = [(None, v) for v in doc if isinstance(v, dict)]
    else:
        pairs = []
    out: dict[str, Alternate] = {}
    for key, value in pairs:
        alternate = _entry(key, value)
        if alternate is not None:
            out[alternate.frames_path] = alternate
    return out


def alternates_json(alternates: Mapping[str, Alternate] | list[Alternate]) -> dict:
    """The ``alternates.json`` document: folder name -> entry, in the given order."""
    values = alternates.values() if isinstance(alternates, Mapping) else alternates
    return {alternate.name: alternate.to_json() for alternate in values}
