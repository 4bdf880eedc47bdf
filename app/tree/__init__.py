"""The static DICOMweb tree's schema in one place: what each file of a tree holds and how it is framed.

Used by the converter (writes trees), discovery (reads ``alternates.json``), serve.py (answers
``frames/{n}`` with the right file and Content-Type) and the page. Pure Python, no I/O.
"""

from __future__ import annotations

from .alternates import Alternate, alternates_json, frames_path, parse_alternates
from .framing import (
    FRAME_SUFFIX,
    content_digest,
    frame_file_name,
    frame_file_names,
    frame_part_chunks,
    multipart_content_type,
    new_boundary,
    parse_content_digest,
    sniff_frame_content_type,
)
from .manifest import MANIFEST_VERSION, DemoEntry, TreeManifest, demo_list_json, parse_demo_list

__all__ = [
    "Alternate", "parse_alternates", "alternates_json", "frames_path",
    "FRAME_SUFFIX", "frame_file_name", "frame_file_names", "new_boundary", "multipart_content_type",
    "frame_part_chunks", "content_digest", "parse_content_digest", "sniff_frame_content_type",
    "TreeManifest", "DemoEntry", "parse_demo_list", "demo_list_json", "MANIFEST_VERSION",
]
