"""Converter: DICOM files -> a static DICOMweb tree with progressive alternates.

    python -m app.convert INPUT... -o OUT [--alternates jls,jlsThumbnail,lossy,htj2kThumbnail]
                                         [--lossy-quality 70] [--raw] [--quiet]

The tree follows the Static DICOMweb toolkit (mkdicomweb) layout. Every JSON file is written twice:
gzipped (``index.json.gz``, ``metadata.gz``, what the toolkit writes; a server must send it with
``Content-Encoding: gzip``) and plain (``index.json``, ``metadata``; for servers that cannot
negotiate encodings). Both hold the same DICOM JSON.

    OUT/dicomweb.json                                 manifest (below)
    OUT/studies/index.json[.gz]                       QIDO studies
    OUT/studies/{st}/index.json[.gz]                  QIDO this study (one-element array)
    OUT/studies/{st}/series/index.json[.gz]           QIDO series of the study
    OUT/studies/{st}/series/{se}/index.json[.gz]      QIDO instances of the series
    OUT/studies/{st}/series/{se}/instances/index.json[.gz]   the same (URL .../instances)
    OUT/studies/{st}/series/{se}/metadata[.gz]        series metadata (DICOM JSON array)
    OUT/studies/{st}/series/{se}/alternates.json      what each frames directory holds (below)
    OUT/studies/{st}/series/{se}/thumbnail            rendered 8-bit JPEG of the series' middle image
    OUT/studies/{st}/series/{se}/instances/{sop}/thumbnail              ... of the instance's first frame
    OUT/studies/{st}/series/{se}/instances/{sop}/{alternate}/{n}.mht    frame n (1-based)

The URL of frame n stays ``.../{alternate}/{n}``: a server maps it to ``{n}.mht`` (the toolkit's
name, typed by suffix on any static host) or, in trees written before, to ``{n}``. ``--raw`` trees
hold bare codestreams named ``{n}``. Thumbnails are at most 128 pixels a side, windowed with the
image's first default window (``app/thumbnails.py``).

Series metadata: PixelData is ``{"vr": "OB", "BulkDataURI": "instances/{sop}/frames"}`` (relative
to the series), AvailableTransferSyntaxUID (0008,3002) names what ``frames/`` holds (HTJ2K
Lossless RPCL). Colour images are stored as RGB (PhotometricInterpretation "RGB", planar 0)
whatever the source's photometric interpretation; other attributes are copied from the source.

Alternates, each a sibling directory of ``frames/`` in the instance directory:

    frames          HTJ2K Lossless RPCL .202: RPCL, TLM, one tile-part per resolution,
                    lowest resolution <= 64 px (always written; option name "htj2k")
    jls             JPEG-LS lossless .80
    jlsThumbnail    JPEG-LS lossless .80 of the image area-averaged 4x per side
    lossy           HTJ2K .203, irreversible, quantisation step 2^((100 - Q) / 10) stored units
    htj2kThumbnail  HTJ2K Lossless RPCL .202 of the 4x area-averaged image

A reduced image is ceil(Rows / 4) x ceil(Columns / 4); each output pixel is the rounded mean of
its 4x4 block (of the pixels that exist, at the right and bottom edges).

``alternates.json`` (per series; keys are directory names, so a viewer's framesPath is
``/{key}/`` in place of ``/frames/``)::

    {"frames": {"path": "frames", "transferSyntaxUID": "1.2.840.10008.1.2.4.202",
                "mediaType": "image/jphc", "lossy": false, "scale": 1,
                "rows": 2614, "columns": 3072, "resolutionLevels": 6},
     "jlsThumbnail": {"path": "jlsThumbnail", "transferSyntaxUID": "1.2.840.10008.1.2.4.80",
                "mediaType": "image/jls", "lossy": false, "scale": 4, "rows": 654, "columns": 768},
     ...}

rows / columns are those of the series' first instance; for any instance they are
ceil(Rows / scale) x ceil(Columns / scale). Pixel attributes other than the size are those of
the series metadata.

Frame files are single-part multipart/related bodies as the toolkit writes them, plus an RFC 9530
Content-Digest part header, with one boundary per tree, chosen when the tree is created and kept on
re-runs; ``dicomweb.json`` at the root tells a server how they are framed. Both formats are defined
in ``app/tree`` (``framing.py``, ``manifest.py``), the one place the converter, discovery and
serve.py take them from.

Files are written to a temporary name in the same directory and then renamed, so an interrupted
run never leaves a half-written file. Converted instances are merged into the series metadata
and the QIDO indexes (with what the tree already holds) every 64 instances or 10 seconds, at the
end of a run and when a run is interrupted; the metadata lists only instances whose frames are all
written, and a re-run completes or updates a tree.

A file that fails (damaged, undecodable, a UID that is not a valid DICOM UID and so cannot be a
folder name) is reported and the run goes on; a file that is not a DICOM image (a README, a
DICOMDIR, the tree's own files) is skipped with a notice. The exit status is 1 only when a DICOM
file failed; an output that cannot be written stops the run with one message (status 2).
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import imagecodecs
import numpy

from app.codecs import DecodeError, PixelFormat, area_mean, codec_for, decode_frame, native_frames
from app.readers.codestream import CodestreamError, CodestreamScanner, MainHeader
from app.thumbnails import render_thumbnail
from app.study import DiscoveryError, index_of_stack, stack_from_metadata
from app.tree import FRAME_SUFFIX, Alternate, TreeManifest, frame_file_names, frame_part_chunks
from app.tree.stack_index import STACK_INDEX_NAME, stack_index_bytes
from app.uids import HTJ2K, HTJ2K_LOSSLESS_RPCL, JPEG_LS_LOSSLESS, InvalidUID, check_uid

CONVERTER_VERSION = "3"  # 3: frames/{n}.mht and thumbnails; tools/demo_data.py re-converts the demo tree on a change
NEW_TREE_FRAME_SUFFIX = FRAME_SUFFIX  # frame files written from now on: frames/1.mht
THUMBNAIL_SCALE = 4
THUMBNAIL_NAME = "thumbnail"  # rendered 8-bit JPEG per instance and per series (the toolkit's name)
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # a DICOMDIR's SOP class
LOWEST_RESOLUTION = 64
DEFAULT_LOSSY_QUALITY = 70.0


class ConversionError(Exception):
    """One input file could not be converted; the message says why."""


class NotDicom(ConversionError):
    """An input that is not a DICOM image file (a README, a DICOMDIR, a tree's own files): skipped."""


class OutputError(ConversionError):
    """The output cannot be written (read-only, full disk): the run stops with one message."""


# -- alternates -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncodeSettings:
    lossy_quality: float = DEFAULT_LOSSY_QUALITY


@dataclass(frozen=True)
class EncodedFrame:
    codestream: bytes
    rows: int
    columns: int
    resolution_levels: int | None = None


@dataclass(frozen=True)
class AlternateEncoder:
    """One frames folder the converter writes: its schema entry and how to encode a frame for it."""

    spec: Alternate
    encode: Callable[["FrameImage", PixelFormat, EncodeSettings], EncodedFrame]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def transfer_syntax(self) -> str:
        return self.spec.transfer_syntax or ""

    @property
    def media_type(self) -> str:
        return self.spec.media_type or ""

    @property
    def lossy(self) -> bool:
        return bool(self.spec.lossy)

    @property
    def scale(self) -> int:
        return self.spec.scale

    def part_content_type(self) -> str:
        return self.spec.part_content_type()


class FrameImage:
    """The decoded stored pixels of one frame, and its area-averaged reductions, each made once."""

    def __init__(self, pixels: numpy.ndarray):
        self.pixels = pixels
        self._reduced: dict[int, numpy.ndarray] = {}

    def reduced(self, scale: int) -> numpy.ndarray:
        if scale == 1:
            return self.pixels
        if scale not in self._reduced:
            self._reduced[scale] = area_mean(self.pixels, scale)
        return self._reduced[scale]


def resolution_levels_for(rows: int, columns: int, lowest: int = LOWEST_RESOLUTION) -> int:
    """Wavelet decompositions so the lowest resolution is at most `lowest` pixels a side (>= 1)."""
    largest = max(rows, columns, 1)
    if largest <= lowest:
        return 1
    return max(1, math.ceil(math.log2(largest / lowest)))


def _unsigned_for_jls(pixels: numpy.ndarray, fmt: PixelFormat) -> numpy.ndarray:
    """CharLS takes unsigned samples only: signed data goes in as its BitsStored bit pattern."""
    if pixels.dtype.kind != "i":
        return pixels
    unsigned = pixels.view(pixels.dtype.str.replace("i", "u"))
    bits = fmt.bits_stored
    if bits >= unsigned.dtype.itemsize * 8:
        return unsigned
    return unsigned & numpy.asarray((1 << bits) - 1, dtype=unsigned.dtype)


def _check_encodable(pixels: numpy.ndarray) -> None:
    if pixels.dtype.itemsize > 2:
        raise ConversionError(f"{pixels.dtype.itemsize * 8}-bit samples: the encoders take 8 or 16 bits")


def _htj2k_lossless(pixels: numpy.ndarray) -> EncodedFrame:
    _check_encodable(pixels)
    rows, columns = pixels.shape[:2]
    levels = resolution_levels_for(rows, columns)
    codestream = imagecodecs.htj2k_encode(
        numpy.ascontiguousarray(pixels),
        reversible=True,
        tlm=True,
        tilepart=1,
        resolutions=levels,
        **_colour_options(pixels),
    )
    check_rpcl_codestream(codestream, levels)
    return EncodedFrame(bytes(codestream), rows, columns, levels)


def _colour_options(pixels: numpy.ndarray) -> dict[str, Any]:
    # No multi-component transform: the codestream holds R, G, B, matching PhotometricInterpretation RGB.
    return {"rgb": False, "planar": False} if pixels.ndim == 3 else {}


def _encode_frames(image: FrameImage, fmt: PixelFormat, settings: EncodeSettings) -> EncodedFrame:
    return _htj2k_lossless(image.pixels)


def _encode_htj2k_thumbnail(image: FrameImage, fmt: PixelFormat, settings: EncodeSettings) -> EncodedFrame:
    return _htj2k_lossless(image.reduced(THUMBNAIL_SCALE))


def _jls(pixels: numpy.ndarray, fmt: PixelFormat) -> EncodedFrame:
    _check_encodable(pixels)
    rows, columns = pixels.shape[:2]
    codestream = imagecodecs.jpegls_encode(numpy.ascontiguousarray(_unsigned_for_jls(pixels, fmt)))
    return EncodedFrame(bytes(codestream), rows, columns)


def _encode_jls(image: FrameImage, fmt: PixelFormat, settings: EncodeSettings) -> EncodedFrame:
    return _jls(image.pixels, fmt)


def _encode_jls_thumbnail(image: FrameImage, fmt: PixelFormat, settings: EncodeSettings) -> EncodedFrame:
    return _jls(image.reduced(THUMBNAIL_SCALE), fmt)


def lossy_step(quality: float) -> float:
    """Quantisation step in stored-value units for a quality 1..100 (each 10 points halves it)."""
    if not 0 < quality <= 100:
        raise ValueError("lossy quality must be in (0, 100]")
    return 2.0 ** ((100.0 - quality) / 10.0)


def _encode_lossy(image: FrameImage, fmt: PixelFormat, settings: EncodeSettings) -> EncodedFrame:
    pixels = image.pixels
    _check_encodable(pixels)
    rows, columns = pixels.shape[:2]
    levels = resolution_levels_for(rows, columns)
    # OpenJPH's step is relative to the container's full range (2^8 or 2^16).
    step = lossy_step(settings.lossy_quality) / float(1 << (pixels.dtype.itemsize * 8))
    codestream = imagecodecs.htj2k_encode(
        numpy.ascontiguousarray(pixels),
        step,
        reversible=False,
        tlm=True,
        tilepart=1,
        resolutions=levels,
        **_colour_options(pixels),
    )
    return EncodedFrame(bytes(codestream), rows, columns, levels)


def _encoder(name: str, syntax: str, media: str, lossy: bool, scale: int, encode) -> AlternateEncoder:
    spec = Alternate(name, transfer_syntax=syntax, media_type=media, lossy=lossy, scale=scale, thumbnail=scale > 1)
    return AlternateEncoder(spec, encode)


ALTERNATES: dict[str, AlternateEncoder] = {
    alternate.name: alternate
    for alternate in (
        _encoder("frames", HTJ2K_LOSSLESS_RPCL, "image/jphc", False, 1, _encode_frames),
        _encoder("jls", JPEG_LS_LOSSLESS, "image/jls", False, 1, _encode_jls),
        _encoder("jlsThumbnail", JPEG_LS_LOSSLESS, "image/jls", False, THUMBNAIL_SCALE, _encode_jls_thumbnail),
        _encoder("lossy", HTJ2K, "image/jphc", True, 1, _encode_lossy),
        _encoder("htj2kThumbnail", HTJ2K_LOSSLESS_RPCL, "image/jphc", False, THUMBNAIL_SCALE,
                 _encode_htj2k_thumbnail),
    )
}
ALTERNATE_ALIASES = {"htj2k": "frames"}
DEFAULT_ALTERNATES = tuple(ALTERNATES)


def alternate_names(names: Iterable[str] | str | None) -> tuple[str, ...]:
    """Alternate directory names from option values; `frames` is always included, first."""
    if names is None:
        return DEFAULT_ALTERNATES
    if isinstance(names, str):
        names = names.split(",")
    chosen = ["frames"]
    for raw in names:
        name = raw.strip()
        if not name or name == "none":
            continue
        if name == "all":
            return DEFAULT_ALTERNATES
        name = ALTERNATE_ALIASES.get(name, name)
        if name not in ALTERNATES:
            raise ValueError(f"unknown alternate {raw!r}; choose from htj2k, {', '.join(list(ALTERNATES)[1:])}")
        if name not in chosen:
            chosen.append(name)
    return tuple(chosen)


# -- codestream check -----------------------------------------------------------------------------


def read_main_header(codestream: bytes) -> MainHeader:
    """The main header (SIZ, COD, TLM) by the viewer's own codestream reader; ValueError if none."""
    scanner = CodestreamScanner()
    view = memoryview(codestream)
    for start in range(0, len(view), 1 << 16):
        scanner.feed(view[start : start + (1 << 16)])
        if scanner.header is not None:
            return scanner.header
    raise CodestreamError("no complete main header")


def check_rpcl_codestream(codestream: bytes, levels: int) -> None:
    header = read_main_header(codestream)
    order, decompositions = header.cod.progression_name, header.cod.decompositions
    if order != "RPCL" or header.tlm is None or decompositions != levels:
        raise ConversionError(f"HTJ2K encoder wrote {order}, {decompositions} levels, TLM "
                              f"{'present' if header.tlm is not None else 'absent'}: .202 needs RPCL, TLM and "
                              f"{levels} levels")


# -- tree writing ---------------------------------------------------------------------------------


def write_atomic(path: Path, chunks: bytes | Sequence[bytes]) -> int:
    """Write to a temporary name in the same directory, then rename; returns the size."""
    if isinstance(chunks, (bytes, bytearray, memoryview)):
        chunks = [chunks]
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    size = 0
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
                size += len(chunk)
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return size


def write_frame_file(folder: Path, number: int, manifest: TreeManifest, chunks: Sequence[bytes]) -> int:
    """Frame ``number`` under the tree's current name (``1.mht``), removing a stale other-named copy."""
    name = manifest.frame_file_name(number)
    size = write_atomic(folder / name, chunks)
    for other in frame_file_names(number):
        if other != name:
            (folder / other).unlink(missing_ok=True)
    return size


def remove_stale_temporaries(out: Path) -> int:
    """Delete ``.NAME.<pid>.tmp`` files left by a run that was killed (no ``finally`` ran then)."""
    removed = 0
    if not out.is_dir():
        return removed
    for temporary in out.rglob(".*.tmp"):
        pid_text = temporary.name.rsplit(".", 2)[-2]
        if pid_text.isdigit() and int(pid_text) != os.getpid() and not _process_alive(int(pid_text)):
            temporary.unlink(missing_ok=True)
            removed += 1
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists but not ours: leave its files alone
    return True


def write_json_pair(path: Path, value: Any) -> None:
    """`path` plain and `path`.gz (for `metadata`) or `index.json` + `index.json.gz`."""
    data = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    write_atomic(path, data)
    write_atomic(path.with_name(path.name + ".gz"), gzip.compress(data, compresslevel=6, mtime=0))


def read_json_pair(path: Path, default: Any) -> Any:
    for candidate, opener in ((path, open), (path.with_name(path.name + ".gz"), gzip.open)):
        if candidate.exists():
            try:
                with opener(candidate, "rb") as handle:
                    return json.loads(handle.read())
            except (OSError, ValueError):
                continue
    return default


def open_manifest(out: Path, raw: bool) -> TreeManifest:
    """The tree's ``dicomweb.json``: kept (boundary, framing, frame names) when the tree exists."""
    framing = "raw" if raw else "multipart"
    existing = read_json_pair(out / "dicomweb.json", None) if (out / "dicomweb.json").exists() else None
    if existing:
        try:
            manifest = TreeManifest.from_json(existing)
        except ValueError as exc:
            raise ConversionError(f"{out}/dicomweb.json: {exc}") from exc
        if manifest.multipart:  # frames written from now on take the current name (servers read both)
            manifest = replace(manifest, frame_suffix=NEW_TREE_FRAME_SUFFIX)
        if manifest.framing != framing:
            raise ConversionError(
                f"{out} holds {manifest.framing} frame files; convert with the same framing or to a new tree"
            )
    else:
        manifest = TreeManifest.new(raw=raw, frame_suffix=NEW_TREE_FRAME_SUFFIX)
    out.mkdir(parents=True, exist_ok=True)
    doc = manifest.to_json({name: alternate.spec for name, alternate in ALTERNATES.items()},
                           converterVersion=CONVERTER_VERSION,
                           metadata={"gzip": ["index.json.gz", "metadata.gz"], "plain": ["index.json", "metadata"]})
    write_atomic(out / "dicomweb.json", json.dumps(doc, indent=2).encode() + b"\n")
    return manifest


def frame_file_chunks(manifest: TreeManifest, alternate: AlternateEncoder, codestream: bytes) -> list[bytes]:
    if not manifest.multipart:
        return [codestream]
    try:
        return frame_part_chunks(codestream, alternate.part_content_type(), manifest.boundary)
    except ValueError as exc:
        raise ConversionError(str(exc)) from exc


# -- DICOM JSON -----------------------------------------------------------------------------------


def _element(vr: str, *values: Any) -> dict:
    return {"vr": vr, "Value": list(values)} if values and values[0] not in (None, "") else {"vr": vr}


def _first(obj: dict, tag: str, default: Any = None) -> Any:
    values = (obj.get(tag) or {}).get("Value")
    return values[0] if values else default


_BULK_TAGS = ("7FE00010", "7FE00008", "7FE00009")


def instance_json(ds: Any, sop_uid: str, fmt: PixelFormat) -> dict:
    """DICOM JSON of one instance, pixel data replaced by its relative BulkDataURI."""
    import pydicom

    trimmed = pydicom.Dataset(ds)  # shallow copy of the top level
    for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if keyword in trimmed:
            del trimmed[keyword]
    obj = trimmed.to_json_dict(bulk_data_threshold=sys.maxsize, suppress_invalid_tags=True)
    for tag in _BULK_TAGS:
        obj.pop(tag, None)
    if fmt.is_colour:
        obj["00280004"] = _element("CS", "RGB")
        obj["00280006"] = _element("US", 0)
    obj["00083002"] = _element("UI", HTJ2K_LOSSLESS_RPCL)
    obj["7FE00010"] = {"vr": "OB", "BulkDataURI": f"instances/{sop_uid}/frames"}
    return dict(sorted(obj.items()))


_STUDY_TAGS = ("00080020", "00080030", "00080050", "00080090", "00081030", "00100010", "00100020",
               "00100030", "00100040", "0020000D", "00200010")
_SERIES_TAGS = ("00080021", "00080031", "00080060", "0008103E", "0020000D", "0020000E", "00200011")
_INSTANCE_TAGS = ("00080016", "00080018", "00083002", "0020000D", "0020000E", "00200013", "00280008",
                  "00280010", "00280011", "00280100")


def _pick(obj: dict, tags: Iterable[str]) -> dict:
    return {tag: obj[tag] for tag in tags if tag in obj}


def _instance_sort_key(obj: dict) -> tuple:
    number = _first(obj, "00200013")
    try:
        number = int(number)
    except (TypeError, ValueError):
        number = sys.maxsize
    return (number, str(_first(obj, "00080018", "")))


def _series_dir(out: Path, study: str, series: str) -> Path:
    return out / "studies" / study / "series" / series


def commit_series(out: Path, study: str, series: str, converted: list[tuple[dict, dict[str, dict]]]) -> None:
    """Merge converted instances (DICOM JSON, alternate entries) into one series' files."""
    series_dir = _series_dir(out, study, series)
    metadata = {_first(item, "00080018"): item for item in read_json_pair(series_dir / "metadata", [])}
    known = read_json_pair(series_dir / "alternates.json", {})
    for obj, _ in converted:
        metadata[_first(obj, "00080018")] = obj
    instances = sorted(metadata.values(), key=_instance_sort_key)
    (series_dir / STACK_INDEX_NAME).unlink(missing_ok=True)  # never an index older than its metadata
    write_json_pair(series_dir / "metadata", instances)
    write_stack_index(series_dir, instances)

    for _, alternates in converted:
        known.update(alternates)
    first_rows, first_columns = int(_first(instances[0], "00280010", 0)), int(_first(instances[0], "00280011", 0))
    for entry in known.values():  # sizes of the series' first instance
        scale = int(entry.get("scale", 1))
        entry["rows"], entry["columns"] = -(-first_rows // scale), -(-first_columns // scale)
    write_atomic(series_dir / "alternates.json", json.dumps(known, indent=2).encode() + b"\n")

    middle = series_dir / "instances" / str(_first(instances[len(instances) // 2], "00080018")) / THUMBNAIL_NAME
    if middle.is_file():  # the series' thumbnail is its middle image's, as the toolkit picks it
        write_atomic(series_dir / THUMBNAIL_NAME, middle.read_bytes())

    instance_index = [_pick(item, _INSTANCE_TAGS) for item in instances]
    write_json_pair(series_dir / "index.json", instance_index)
    write_json_pair(series_dir / "instances" / "index.json", instance_index)


def write_stack_index(series_dir: Path, instances: list[dict]) -> bool:
    """The series' ``stack.json`` (app/tree/stack_index.py) from its metadata, the same stack
    discovery builds from it; none for a series no index can describe (pixel data inline)."""
    try:
        index = index_of_stack(stack_from_metadata(instances, "series"))
    except DiscoveryError:
        index = None
    if index is None:
        (series_dir / STACK_INDEX_NAME).unlink(missing_ok=True)
        return False
    write_atomic(series_dir / STACK_INDEX_NAME, stack_index_bytes(index))
    return True


def write_missing_stack_indexes(out: Path) -> int:
    """``stack.json`` for each series of an existing tree that has metadata and no index (trees
    converted before the index existed); nothing else is written. Returns how many were written."""
    written = 0
    for series_dir in sorted(Path(out).glob("studies/*/series/*")):
        if (series_dir / STACK_INDEX_NAME).exists() or not series_dir.is_dir():
            continue
        instances = read_json_pair(series_dir / "metadata", [])
        if instances and write_stack_index(series_dir, instances):
            written += 1
    return written


def rebuild_study_indexes(out: Path, study: str) -> None:
    study_dir = out / "studies" / study
    series_entries = []
    modalities: list[str] = []
    instance_count = 0
    study_source: dict = {}
    for series_dir in sorted(path for path in (study_dir / "series").iterdir() if path.is_dir()):
        instances = read_json_pair(series_dir / "metadata", [])
        if not instances:
            continue
        first = instances[0]
        study_source = study_source or first
        entry = _pick(first, _SERIES_TAGS)
        entry["00201209"] = _element("IS", len(instances))
        series_entries.append(entry)
        modality = _first(first, "00080060")
        if modality and modality not in modalities:
            modalities.append(modality)
        instance_count += len(instances)
    series_entries.sort(key=lambda item: (_first(item, "00200011") is None, _first(item, "00200011") or 0,
                                          _first(item, "0020000E")))
    write_json_pair(study_dir / "series" / "index.json", series_entries)
    study_entry = _pick(study_source, _STUDY_TAGS)
    study_entry["00080061"] = _element("CS", *modalities)
    study_entry["00201206"] = _element("IS", len(series_entries))
    study_entry["00201208"] = _element("IS", instance_count)
    write_json_pair(study_dir / "index.json", [dict(sorted(study_entry.items()))])


def rebuild_studies_index(out: Path) -> None:
    studies = []
    root = out / "studies"
    for study_dir in sorted(path for path in root.iterdir() if path.is_dir()):
        studies.extend(read_json_pair(study_dir / "index.json", []))
    write_json_pair(root / "index.json", studies)


# -- conversion -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    path: Path
    reason: str


@dataclass(frozen=True)
class InstanceRecord:
    path: Path
    study_uid: str
    series_uid: str
    sop_uid: str
    frames: int
    rows: int
    columns: int


@dataclass
class ConversionSummary:
    out: Path
    alternates: tuple[str, ...]
    framing: str
    boundary: str
    instances: list[InstanceRecord] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    skipped: list[Failure] = field(default_factory=list)  # not DICOM image files: a notice, not a failure
    frames: int = 0
    bytes_by_alternate: dict[str, int] = field(default_factory=dict)
    seconds_by_alternate: dict[str, float] = field(default_factory=dict)
    decode_seconds: float = 0.0
    seconds: float = 0.0

    @property
    def files_converted(self) -> int:
        return len(self.instances)

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def series(self) -> list[tuple[str, str]]:
        """(study, series) pairs in the order first converted."""
        seen: dict[tuple[str, str], None] = {}
        for record in self.instances:
            seen.setdefault((record.study_uid, record.series_uid), None)
        return list(seen)

    def table(self) -> str:
        lines = [f"{'alternate':<16} {'syntax':<24} {'frames':>7} {'bytes':>14} {'encode s':>9}"]
        for name in self.alternates:
            alternate = ALTERNATES[name]
            lines.append(
                f"{name:<16} {alternate.transfer_syntax:<24} {self.frames:>7} "
                f"{self.bytes_by_alternate.get(name, 0):>14,} {self.seconds_by_alternate.get(name, 0.0):>9.2f}"
            )
        lines.append(
            f"files: {self.files_converted} converted, {len(self.failures)} failed, {len(self.skipped)} skipped; "
            f"frames: {self.frames}; "
            f"decode {self.decode_seconds:.2f} s; total {self.seconds:.2f} s; framing {self.framing}"
        )
        return "\n".join(lines)


class _PendingMetadata:
    """Converted instances not yet merged into the tree's JSON; merged in batches.

    Merging after every file would rewrite a series' metadata once per instance (quadratic for
    large series); a batch is merged every 64 instances or 10 seconds, and at the end of a run.
    """

    def __init__(self, out: Path, batch: int = 64, seconds: float = 10.0):
        self.out = out
        self.batch = batch
        self.seconds = seconds
        self.items: dict[tuple[str, str], list[tuple[dict, dict[str, dict]]]] = {}
        self.count = 0
        self.since = time.monotonic()

    def add(self, record: InstanceRecord, obj: dict, entries: dict[str, dict]) -> None:
        self.items.setdefault((record.study_uid, record.series_uid), []).append((obj, entries))
        self.count += 1
        if self.count >= self.batch or time.monotonic() - self.since >= self.seconds:
            self.flush()

    def flush(self) -> None:
        studies = []
        for (study, series), converted in self.items.items():
            commit_series(self.out, study, series, converted)
            if study not in studies:
                studies.append(study)
        for study in studies:
            rebuild_study_indexes(self.out, study)
        if studies:
            rebuild_studies_index(self.out)
        self.items.clear()
        self.count = 0
        self.since = time.monotonic()


def iter_input_files(inputs: Iterable[Path], exclude: Path | None = None) -> Iterator[Path]:
    """Files of the inputs, folders walked in name order; the output tree (``exclude``) left out."""
    skip = exclude.resolve() if exclude is not None else None
    for path in inputs:
        path = Path(path)
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                if skip is not None and child.resolve().is_relative_to(skip):
                    continue
                if child.is_file() and not child.name.startswith(".") and child.name != "DICOMDIR":
                    yield child
        else:
            yield path


class Progress:
    """One line per frame on stderr; a redrawn bar when stderr is a terminal."""

    def __init__(self, total_files: int, stream=None, quiet: bool = False):
        self.stream = stream or sys.stderr
        self.total = total_files
        self.quiet = quiet
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def frame(self, file_index: int, path: Path, frame: int, frames: int, seconds: float) -> None:
        if self.quiet:
            return
        done = (file_index - 1 + frame / frames) / max(1, self.total)
        if self.tty:
            bar = "#" * int(done * 30)
            self.stream.write(
                f"\r[{bar:<30}] {file_index}/{self.total} {path.name[:40]} frame {frame}/{frames} {seconds * 1000:.0f} ms\x1b[K"
            )
        else:
            self.stream.write(
                f"[{file_index}/{self.total}] {path.name} frame {frame}/{frames} {seconds * 1000:.0f} ms\n"
            )
        self.stream.flush()

    def failure(self, path: Path, reason: str) -> None:
        self.stream.write(("\n" if self.tty and not self.quiet else "") + f"FAILED {path}: {reason}\n")
        self.stream.flush()

    def skipped(self, path: Path, reason: str) -> None:
        self.stream.write(("\n" if self.tty and not self.quiet else "") + f"skipped {path}: {reason}\n")
        self.stream.flush()

    def done(self) -> None:
        if self.tty and not self.quiet:
            self.stream.write("\n")
            self.stream.flush()


def convert(
    inputs: Sequence[Path | str],
    out: Path | str,
    alternates: Iterable[str] | str | None = None,
    *,
    lossy_quality: float = DEFAULT_LOSSY_QUALITY,
    raw: bool = False,
    quiet: bool = False,
    progress_stream=None,
) -> ConversionSummary:
    """Convert DICOM files and folders into the static DICOMweb tree at `out` (see the module doc)."""
    started = time.perf_counter()
    out = Path(out)
    names = alternate_names(alternates)
    settings = EncodeSettings(lossy_quality=lossy_quality)
    lossy_step(lossy_quality)  # validate early
    manifest = open_manifest(out, raw)
    remove_stale_temporaries(out)
    summary = ConversionSummary(out, names, manifest.framing, manifest.boundary)
    files = list(iter_input_files((Path(path) for path in inputs), exclude=out))
    progress = Progress(len(files), progress_stream, quiet)
    pending = _PendingMetadata(out)
    try:
        for index, path in enumerate(files, 1):
            try:
                record, obj, entries = _convert_file(path, index, out, names, settings, manifest, summary, progress)
            except NotDicom as exc:
                summary.skipped.append(Failure(path, str(exc)))
                progress.skipped(path, str(exc))
                continue
            except OutputError:
                raise
            except Exception as exc:  # noqa: BLE001 - one bad file never stops the run: it is that file's failure
                reason = _reason(exc)
                summary.failures.append(Failure(path, reason))
                progress.failure(path, reason)
                continue
            summary.instances.append(record)
            pending.add(record, obj, entries)
    finally:
        pending.flush()  # also on KeyboardInterrupt: completed instances reach the metadata
        progress.done()
    summary.seconds = time.perf_counter() - started
    return summary


def convert_one_file(path: Path, out: Path, names: tuple[str, ...], settings: EncodeSettings,
                     manifest: TreeManifest) -> tuple[ConversionSummary, tuple[dict, dict[str, dict]] | None]:
    """One file apart from a run (a pool worker): its frames written, its statistics, and its DICOM
    JSON and alternate entries for the caller to merge into the tree (None when it failed)."""
    summary = ConversionSummary(out, names, manifest.framing, manifest.boundary)
    try:
        record, obj, entries = _convert_file(path, 1, out, names, settings, manifest, summary, Progress(1, quiet=True))
    except NotDicom as exc:
        summary.skipped.append(Failure(path, str(exc)))
        return summary, None
    except OutputError:
        raise
    except Exception as exc:  # noqa: BLE001 - as in a serial run: any error is this file's failure
        summary.failures.append(Failure(path, _reason(exc)))
        return summary, None
    summary.instances.append(record)
    return summary, (obj, entries)


def _read_dataset(path: Path) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError as exc:
        raise NotDicom("not a DICOM file") from exc
    except OSError as exc:
        raise ConversionError(f"cannot read the file: {exc.strerror or exc}") from exc
    except Exception as exc:  # noqa: BLE001 - pydicom raises zlib, struct, KeyError, ValueError... on damage
        raise ConversionError(f"unreadable DICOM file ({type(exc).__name__}: {exc})") from exc
    media_class = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "") or "")
    if media_class == MEDIA_STORAGE_DIRECTORY:
        raise NotDicom("a DICOMDIR (media directory), not an image")
    if "PixelData" not in ds:
        raise ConversionError("no pixel data")
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        if not str(ds.get(keyword) or "").strip():
            raise ConversionError(f"no {keyword}")
    transfer_syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if not transfer_syntax:
        raise ConversionError("no transfer syntax in the file meta information")
    return ds


def _reason(exc: BaseException) -> str:
    """One line for a file's failure: our own errors as they are, others with their type."""
    if isinstance(exc, (ConversionError, DecodeError)):
        return str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _uids(ds: Any) -> tuple[str, str, str]:
    """Study, series and SOP instance UIDs: path components, so only valid DICOM UIDs pass."""
    out = []
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        try:
            out.append(check_uid(str(ds.get(keyword)).strip(), keyword))
        except InvalidUID as exc:
            raise ConversionError(f"{exc}: it would be a folder name in the tree") from exc
    return out[0], out[1], out[2]


def _windows(ds: Any) -> tuple[tuple[float, float], ...]:
    """The default VOI windows (center, width) of a dataset; none when absent or unreadable."""
    def values(keyword: str) -> list[float]:
        raw = ds.get(keyword)
        items = list(raw) if isinstance(raw, Sequence) and not isinstance(raw, str) else [raw]
        try:
            return [float(v) for v in items if v not in (None, "")]
        except (TypeError, ValueError):
            return []

    return tuple((c, w) for c, w in zip(values("WindowCenter"), values("WindowWidth")) if w > 0)


def _frames_of(ds: Any, transfer_syntax: str, fmt: PixelFormat) -> Iterator[bytes | memoryview]:
    if codec_for(transfer_syntax).media_type == "application/octet-stream":  # native
        yield from native_frames(ds.PixelData, fmt)
        return
    from pydicom.encaps import generate_frames

    yield from generate_frames(ds.PixelData, number_of_frames=fmt.number_of_frames)


def _convert_file(
    path: Path,
    file_index: int,
    out: Path,
    names: tuple[str, ...],
    settings: EncodeSettings,
    manifest: TreeManifest,
    summary: ConversionSummary,
    progress: Progress,
) -> tuple[InstanceRecord, dict, dict[str, dict]]:
    ds = _read_dataset(path)
    transfer_syntax = str(ds.file_meta.TransferSyntaxUID)
    codec_for(transfer_syntax)
    fmt = PixelFormat.from_dataset(ds)
    if fmt.rows <= 0 or fmt.columns <= 0:
        raise ConversionError(f"invalid image size {fmt.rows}x{fmt.columns}")
    study, series, sop = _uids(ds)
    instance_dir = _series_dir(out, study, series) / "instances" / sop
    entries: dict[str, dict] = {}
    count = 0
    for number, frame in enumerate(_frames_of(ds, transfer_syntax, fmt), 1):
        frame_started = time.perf_counter()
        image = FrameImage(decode_frame(frame, transfer_syntax, fmt))
        summary.decode_seconds += time.perf_counter() - frame_started
        if number == 1:  # the instance's rendered preview, from its first frame
            write_atomic(instance_dir / THUMBNAIL_NAME, render_thumbnail(image.pixels, fmt, _windows(ds)))
        for name in names:
            alternate = ALTERNATES[name]
            encode_started = time.perf_counter()
            encoded = alternate.encode(image, fmt, settings)
            size = write_frame_file(instance_dir / name, number, manifest,
                                    frame_file_chunks(manifest, alternate, encoded.codestream))
            summary.seconds_by_alternate[name] = summary.seconds_by_alternate.get(name, 0.0) + (
                time.perf_counter() - encode_started
            )
            summary.bytes_by_alternate[name] = summary.bytes_by_alternate.get(name, 0) + size
            if name not in entries:
                entries[name] = _alternate_entry(alternate, encoded)
        count += 1
        summary.frames += 1
        progress.frame(file_index, path, number, fmt.number_of_frames, time.perf_counter() - frame_started)
    if count != fmt.number_of_frames:
        raise ConversionError(f"{count} frames found, NumberOfFrames is {fmt.number_of_frames}")
    return InstanceRecord(path, study, series, sop, count, fmt.rows, fmt.columns), instance_json(ds, sop, fmt), entries


def _alternate_entry(alternate: AlternateEncoder, encoded: EncodedFrame) -> dict:
    return replace(alternate.spec, rows=encoded.rows, columns=encoded.columns,
                   resolution_levels=encoded.resolution_levels).to_json()


# -- command line ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m app.convert",
        description="Convert DICOM files or folders into a static DICOMweb tree with progressive alternates.",
    )
    parser.add_argument("inputs", nargs="*", type=Path, metavar="INPUT", help="DICOM files or folders")
    parser.add_argument("-o", "--out", type=Path, required=True, help="root of the static DICOMweb tree")
    parser.add_argument(
        "--alternates",
        default="all",
        help="comma list of htj2k (frames/, always written), jls, jlsThumbnail, lossy, htj2kThumbnail; "
        "'all' (default) or 'none'",
    )
    parser.add_argument("--lossy-quality", type=float, default=DEFAULT_LOSSY_QUALITY,
                        help="1..100; quantisation step 2^((100-Q)/10) stored units (default %(default)s)")
    parser.add_argument("--raw", action="store_true", help="write bare codestreams instead of multipart bodies")
    parser.add_argument("-q", "--quiet", action="store_true", help="no per-frame progress")
    parser.add_argument("--reindex", action="store_true",
                        help="only write the stack index (stack.json) of each series of OUT that has none")
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    args = parser.parse_args(argv)
    if not args.inputs and not args.reindex:
        parser.error("the following arguments are required: INPUT")
    return args


def reindex(out: Path) -> int:
    """``--reindex``: the missing stack indexes of an existing tree written, nothing else."""
    if not (Path(out) / "studies").is_dir():
        print(f"error: {out} holds no studies/ folder", file=sys.stderr)
        return 2
    print(f"{write_missing_stack_indexes(out)} stack index file(s) written under {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
    if args.reindex:
        return reindex(args.out)
    try:
        summary = convert(args.inputs, args.out, args.alternates, lossy_quality=args.lossy_quality,
                          raw=args.raw, quiet=args.quiet)
    except (ConversionError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary.table())
    for failure in summary.failures:
        print(f"failed: {failure.path}: {failure.reason}", file=sys.stderr)
    return 0 if summary.ok else 1  # skipped non-DICOM files are notices, not failures


if __name__ == "__main__":
    sys.exit(main())
