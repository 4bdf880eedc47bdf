"""The tree's own files: ``dicomweb.json`` (how frame files are framed) and ``demo.json`` (series list).

``dicomweb.json`` at a tree's root tells a server how to answer for a frame file::

    {"version": 1, "framing": "multipart" | "raw", "boundary": "...", "frameSuffix": ".mht",
     "alternates": {"frames": {"transferSyntaxUID": "...", "mediaType": "image/jphc",
                               "contentType": "multipart/related; type=\\"image/jphc\\"; boundary=..."}, ...}}

``contentType`` is the exact Content-Type header to send with a frame file of that alternate.
``demo.json`` lists series a viewer may open first: ``[{"name", "studyInstanceUID",
"seriesInstanceUID", "url", "instances"}]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from .alternates import Alternate
from .framing import FRAME_SUFFIX, frame_file_name, multipart_content_type, new_boundary

__all__ = ["TreeManifest", "DemoEntry", "parse_demo_list", "demo_list_json", "MANIFEST_VERSION"]

MANIFEST_VERSION = 1
FRAMINGS = ("multipart", "raw")


@dataclass(frozen=True)
class TreeManifest:
    boundary: str
    framing: str = "multipart"  # "multipart" | "raw"
    frame_suffix: str = FRAME_SUFFIX  # "" for trees written before frames had a suffix

    @classmethod
    def new(cls, *, raw: bool = False, frame_suffix: str = FRAME_SUFFIX) -> TreeManifest:
        """A new tree's manifest; raw trees hold bare codestreams named ``{n}``."""
        return cls(new_boundary(), "raw" if raw else "multipart", "" if raw else frame_suffix)

    @classmethod
    def from_json(cls, doc: object) -> TreeManifest:
        """From a ``dicomweb.json`` document; ValueError when it is not one."""
        if not isinstance(doc, dict) or not isinstance(doc.get("boundary"), str):
            raise ValueError("dicomweb.json has no boundary")
        framing = doc.get("framing", "multipart")
        if framing not in FRAMINGS:
            raise ValueError(f"dicomweb.json framing {framing!r} is not one of {', '.join(FRAMINGS)}")
        suffix = doc.get("frameSuffix", "")  # absent: a tree from before the suffix
        return cls(doc["boundary"], framing, suffix if isinstance(suffix, str) else "")

    @property
    def multipart(self) -> bool:
        return self.framing == "multipart"

    def frame_file_name(self, number: int) -> str:
        """``1.mht`` in trees written with the suffix, else ``1`` (older trees keep their layout)."""
        if not self.multipart or not self.frame_suffix:
            return str(number)
        return frame_file_name(number)

    def content_type(self, alternate: Alternate) -> str:
        if not self.multipart:
            return f"{alternate.media_type}; transfer-syntax={alternate.transfer_syntax}"
        return multipart_content_type(alternate.media_type or "application/octet-stream", self.boundary)

    def to_json(self, alternates: Mapping[str, Alternate], **extra: object) -> dict:
        doc: dict = {"version": MANIFEST_VERSION, "framing": self.framing, "boundary": self.boundary,
                     "frameSuffix": self.frame_suffix}
        doc.update(extra)
        doc["alternates"] = {
            name: {"transferSyntaxUID": alternate.transfer_syntax, "mediaType": alternate.media_type,
                   "contentType": self.content_type(alternate)}
            for name, alternate in alternates.items()}
        return doc


@dataclass(frozen=True)
class DemoEntry:
    name: str
    study_uid: str
    series_uid: str
    url: str  # "/dicomweb/studies/{st}/series/{se}"
    instances: int

    def to_json(self) -> dict:
        return {"name": self.name, "studyInstanceUID": self.study_uid, "seriesInstanceUID": self.series_uid,
                "url": self.url, "instances": self.instances}


def parse_demo_list(doc: object) -> list[DemoEntry]:
    """The entries of a ``demo.json`` document that have a URL; others are skipped."""
    out = []
    for item in doc if isinstance(doc, list) else []:
        if isinstance(item, dict) and isinstance(item.get("url"), str):
            instances = item.get("instances", 1)
            out.append(DemoEntry(str(item.get("name", "")), str(item.get("studyInstanceUID", "")),
                                 str(item.get("seriesInstanceUID", "")), item["url"],
                                 int(instances) if isinstance(instances, (int, float)) else 1))
    return out


def demo_list_json(entries: list[DemoEntry]) -> list[dict]:
    return [entry.to_json() for entry in entries]
