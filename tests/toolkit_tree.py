"""Test helper: static DICOMweb trees in the layout the Static DICOMweb toolkit (mkdicomweb 1.7.6) writes.

Made from our converter's output, then rewritten as the toolkit writes it: frames as ``{n}.mht``
single-part bodies with boundary ``BOUNDARY_<uuid>`` and only a ``Content-Type`` part header,
uncompressed frames as ``{n}.mht.gz``, metadata only as ``metadata.gz``, QIDO answers only as
``index.json.gz``, no ``alternates.json`` and no ``dicomweb.json``. The toolkit itself cannot be
installed from npm (an unpublished dependency), so the tests make its layout themselves.
"""

from __future__ import annotations

import gzip
import json
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom

from app.convert import convert
from app.readers.multipart import MultipartReader, PartData, PartHeaders

EXPLICIT_LE = "1.2.840.10008.1.2.1"
AVAILABLE_TS = "00083002"


@dataclass
class ToolkitTree:
    root: Path
    series: dict[str, Path] = field(default_factory=dict)
    """SeriesInstanceUID -> series folder."""
    pixels: dict[str, np.ndarray] = field(default_factory=dict)
    """SOPInstanceUID -> the source's stored values (what a final image must equal)."""

    def url_path(self, series_uid: str) -> str:
        return "/" + self.series[series_uid].relative_to(self.root).as_posix()


def split_frame(data: bytes) -> tuple[dict[str, str], bytes]:
    """(part headers, part bytes) of a single-part multipart frame file."""
    headers: dict[str, str] = {}
    body = bytearray()
    for event in MultipartReader().feed(data):
        if isinstance(event, PartHeaders):
            headers = {k.lower(): v for k, v in event.headers.items()}
        elif isinstance(event, PartData):
            body += event.data
    return headers, bytes(body)


def mht(content_type: str, payload: bytes) -> bytes:
    """A frame body as the toolkit writes it: one part, one header, boundary BOUNDARY_<uuid>."""
    boundary = f"BOUNDARY_{uuid.uuid4()}".encode()
    return (b"--" + boundary + b"\r\nContent-Type: " + content_type.encode() + b"\r\n\r\n"
            + payload + b"\r\n--" + boundary + b"--")


def make_toolkit_tree(out: Path, sources: list[Path], *, uncompressed: set[str] = frozenset(),
                      alternates: str = "") -> ToolkitTree:
    """Convert ``sources`` and rewrite the tree in the toolkit's layout.

    Instances whose SOPInstanceUID is in ``uncompressed`` get native little-endian frames
    (``.mht.gz``) and AvailableTransferSyntaxUID 1.2.840.10008.1.2.1, as the toolkit stores them.
    """
    staging = out.with_name(out.name + "-ours")
    convert(sources, staging, alternates, quiet=True)
    shutil.copytree(staging, out)
    tree = ToolkitTree(out)
    for source in sources:
        ds = pydicom.dcmread(source)
        tree.pixels[ds.SOPInstanceUID] = ds.pixel_array
    for folder in sorted(out.glob("studies/*/series/*")):
        if folder.parent.name == "series" and folder.is_dir():
            _rewrite_series(folder, tree, uncompressed)
    for name in ("dicomweb.json", "demo.json"):
        (out / name).unlink(missing_ok=True)
    for plain in list(out.rglob("index.json")):
        plain.unlink()
    for index in list(out.rglob("stack.json")):  # our converter's stack index: the toolkit writes none
        index.unlink()
    return tree


def _rewrite_series(folder: Path, tree: ToolkitTree, uncompressed: set[str]) -> None:
    metadata = json.loads((folder / "metadata").read_text())
    for instance in metadata:
        sop = instance["00080018"]["Value"][0]
        native = sop in uncompressed
        if native:
            instance[AVAILABLE_TS] = {"vr": "UI", "Value": [EXPLICIT_LE]}
        for frame in sorted((folder / "instances" / sop).glob("*/[0-9]*")):
            headers, payload = split_frame(frame.read_bytes())
            base = frame.name.removesuffix(".mht")  # our converter writes {n}.mht already (older trees {n})
            if native and frame.parent.name == "frames":
                stored = np.ascontiguousarray(tree.pixels[sop], tree.pixels[sop].dtype.newbyteorder("<"))
                body = mht(f"application/octet-stream;transfer-syntax={EXPLICIT_LE}", stored.tobytes())
                written = frame.with_name(base + ".mht.gz")
                written.write_bytes(gzip.compress(body, mtime=0))
            else:
                written = frame.with_name(base + ".mht")
                written.write_bytes(mht(headers["content-type"], payload))
            if written != frame:
                frame.unlink()
        tree.series[instance["0020000E"]["Value"][0]] = folder
    (folder / "metadata.gz").write_bytes(gzip.compress(json.dumps(metadata).encode(), mtime=0))
    for name in ("metadata", "metadata.json", "alternates.json", "alternates.json.gz"):
        (folder / name).unlink(missing_ok=True)
