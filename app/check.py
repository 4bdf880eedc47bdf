"""``python -m app check TREE_OR_URL``: is a static DICOMweb tree or server fit for progressive loading?

One line per finding, each naming its rule; exit status 1 when any defect (not a note) is found,
so CI can gate on it. Checks: HTJ2K label against the stream (``.202`` needs RPCL, TLM and a
lowest level of at most 64 px; lossless labels need the reversible wavelet), reduced levels
reachable before the end of each frame, alternates present and consistent with their
description and the metadata, JPEG-LS NEAR against its label, Content-Digest coverage, the stack
index (``stack.json``) against the metadata, and (for a
URL) the Content-Type, Range and CORS answers a browser needs. Read-only: the codestream reader
and the codecs are used as they are.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gzip
import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence
from urllib.parse import urlsplit

from . import dicomjson as dj
from .codecs import (HTJ2K, HTJ2K_LOSSLESS, HTJ2K_LOSSLESS_RPCL, HTJ2K_PRIVATE, JPEG_LS_LOSSLESS,
                     JPEG_LS_NEAR_LOSSLESS, DecodeError, stream_header)
from .dicomjson import Tag
from .readers.codestream import CodestreamError, CodestreamScanner, MainHeader, ResolutionComplete
from .readers.multipart import MultipartError, MultipartReader, PartData, PartHeaders, boundary_from_content_type
from .transport import Transport, TransportError
from .transport.base import parse_content_digest
from .transport.limits import JSON_LIMITS, LimitedTransport, TransferLimits
from .study import DiscoveryError, index_disagreement, stack_from_index, stack_from_metadata
from .tree.stack_index import STACK_INDEX_NAME, parse_stack_index

__all__ = ["Finding", "Report", "JsonProbe", "check", "probe_json", "main"]

HTJ2K_SYNTAXES = (HTJ2K_LOSSLESS, HTJ2K_LOSSLESS_RPCL, HTJ2K, HTJ2K_PRIVATE)
LOSSLESS_HTJ2K = (HTJ2K_LOSSLESS, HTJ2K_LOSSLESS_RPCL)
MAX_LOWEST_LEVEL = 64  # PS3.5 A.4.12: the lowest resolution of a .202 stream is at most 64 px
FRAME_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
ALTERNATE_GUESSES = ("jls", "jlsThumbnail", "lossy", "htj2kThumbnail", "jhc", "htj2k")
MAX_BODY = 1 << 30
PROBE_ORIGIN = "http://check.invalid"


@dataclass(frozen=True)
class Finding:
    """One result: a defect fails the check, a note does not."""

    rule: str
    where: str
    message: str
    defect: bool = True

    def line(self) -> str:
        return f"{'DEFECT' if self.defect else 'note'} [{self.rule}] {self.where}: {self.message}"


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    series: int = 0
    frames: int = 0
    digests: int = 0

    @property
    def defects(self) -> list[Finding]:
        return [f for f in self.findings if f.defect]

    def add(self, rule: str, where: str, message: str, defect: bool = True) -> None:
        self.findings.append(Finding(rule, where, message, defect))


@dataclass(frozen=True)
class JsonProbe:
    """What one GET of a JSON document gave: ``cause`` is None when a usable document arrived."""

    url: str
    cause: str | None
    document: object = None


async def probe_json(transport: Transport, url: str, *, limit: int = dj.MAX_JSON_BYTES,
                     limits: TransferLimits = JSON_LIMITS) -> JsonProbe:
    """GET ``url`` and say exactly why it is not a usable JSON document, if it is not.

    Names the HTTP status, a redirect (never followed), a transport failure (timeout, reset),
    a body over ``limit``, a gzip bomb, JSON nested too deeply, or text that is not JSON.
    """
    if not isinstance(transport, LimitedTransport):  # a server that trickles is named, never waited on
        transport = LimitedTransport(transport, limits)
    try:
        resp = await transport.get(url, headers={"Accept": "application/dicom+json, application/json"})
    except TransportError as exc:
        return JsonProbe(url, f"request failed: {exc}")
    body = bytearray()
    try:
        if 300 <= resp.status < 400:
            where = resp.headers.get("location", "?")
            return JsonProbe(url, f"redirected (HTTP {resp.status}) to {where}: redirects are not followed")
        if resp.status != 200:
            return JsonProbe(url, f"HTTP {resp.status}")
        async for chunk in resp.chunks():
            body += chunk
            if len(body) > limit:
                return JsonProbe(url, f"body larger than {limit} bytes")
    except TransportError as exc:
        return JsonProbe(url, f"body failed after {len(body)} bytes: {exc}")
    finally:
        await resp.aclose()
    try:
        document = dj.loads(body)
    except ValueError as exc:
        text = str(exc)
        if "inflates to more than" in text:
            return JsonProbe(url, f"gzip bomb: {text}")
        if "nested too deeply" in text:
            return JsonProbe(url, f"JSON nested too deeply ({len(body)} bytes)")
        return JsonProbe(url, f"not JSON: {text[:120]}")
    if not isinstance(document, list):
        return JsonProbe(url, f"not a DICOM JSON array (a JSON {type(document).__name__})")
    return JsonProbe(url, None, document)


# ---------------------------------------------------------------- where the bytes come from


@dataclass(frozen=True)
class Fetched:
    status: int
    headers: dict[str, str]
    body: bytes
    where: str


class TreeSource:
    """A tree on disk, resolved as serve.py resolves URLs (the toolkit's suffixes too)."""

    http = False

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    async def get(self, rel: str, headers: dict[str, str] | None = None,
                  byte_range: tuple[int, int | None] | None = None) -> Fetched:
        path = self.root.joinpath(*[p for p in rel.split("/") if p])
        names = (path, path.with_name(path.name + ".mht"), path.with_name(path.name + ".mht.gz"),
                 path.with_name(path.name + ".gz"), path / "index.json", path / "index.json.gz")
        for candidate in names:
            if candidate.is_file() and candidate.resolve().is_relative_to(self.root):
                body = candidate.read_bytes()
                if candidate.name.endswith(".gz"):
                    body = dj.maybe_gunzip(body)
                return Fetched(200, {}, body, str(candidate))
        return Fetched(404, {}, b"", str(path))

    async def json(self, rel: str, extra: Sequence[str] = ()) -> tuple[object, str | None]:
        """(document, None) or (None, cause)."""
        fetched = await self.get(rel)
        if fetched.status != 200:
            return None, "no such file"
        try:
            return dj.loads(fetched.body), None
        except ValueError as exc:
            return None, f"not JSON: {exc}"

    def alternate_names(self, instance_rel: str) -> list[str]:
        folder = self.root.joinpath(*instance_rel.split("/"))
        return sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name != "frames") \
            if folder.is_dir() else []


class HttpSource:
    """A DICOMweb server or a statically hosted tree, over the CLI's transport."""

    http = True

    def __init__(self, base: str, transport: Transport) -> None:
        self.base = base.rstrip("/")
        self.transport = transport

    def url(self, rel: str) -> str:
        return f"{self.base}/{rel}" if rel else self.base

    async def get(self, rel: str, headers: dict[str, str] | None = None,
                  byte_range: tuple[int, int | None] | None = None) -> Fetched:
        url = self.url(rel)
        try:
            resp = await self.transport.get(url, headers=headers, byte_range=byte_range)
        except TransportError as exc:
            return Fetched(0, {}, str(exc).encode(), url)
        body = bytearray()
        try:
            async for chunk in resp.chunks():
                body += chunk
                if len(body) > MAX_BODY:
                    break
        except TransportError as exc:
            return Fetched(0, resp.headers, str(exc).encode(), url)
        finally:
            await resp.aclose()
        return Fetched(resp.status, resp.headers, bytes(body), url)

    async def json(self, rel: str, extra: Sequence[str] = ()) -> tuple[object, str | None]:
        causes = []
        for candidate in (rel, *extra):
            probe = await probe_json(self.transport, self.url(candidate))
            if probe.cause is None:
                return probe.document, None
            causes.append(f"{candidate.rsplit('/', 1)[-1] or candidate}: {probe.cause}")
        return None, "; ".join(causes)

    def alternate_names(self, instance_rel: str) -> list[str]:
        return list(ALTERNATE_GUESSES)


Source = TreeSource | HttpSource


# ---------------------------------------------------------------- frames


@dataclass(frozen=True)
class FrameExpectation:
    """What the metadata and an alternate's description say a frame should be."""

    label: str | None
    rows: int | None
    columns: int | None
    lossless: bool | None = None


def split_frame(body: bytes, content_type: str | None) -> tuple[dict[str, str], bytes]:
    """(part headers, payload) of a single-part multipart body, or ({}, body) for a bare stream."""
    if not body.lstrip(b"\r\n").startswith(b"--"):
        return {}, body
    headers: dict[str, str] = {}
    payload = bytearray()
    for event in MultipartReader(boundary_from_content_type(content_type)).feed(body):
        if isinstance(event, PartHeaders) and not headers:
            headers = dict(event.headers)
        elif isinstance(event, PartData):
            payload += event.data
    return headers, bytes(payload)


def _syntax_param(content_type: str) -> str | None:
    for param in content_type.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "transfer-syntax":
            return value.strip().strip('"') or None
    return None


def check_frame(report: Report, where: str, body: bytes, content_type: str | None,
                expect: FrameExpectation) -> None:
    """Label, digest, size and codec-specific rules for one frame body."""
    report.frames += 1
    try:
        headers, payload = split_frame(body, content_type)
    except MultipartError as exc:
        return report.add("multipart", where, f"not a readable multipart body: {exc}")
    part_type = headers.get("content-type", "")
    stored = _syntax_param(part_type)
    if stored and expect.label and stored != expect.label:
        report.add("label", where, f"part says transfer-syntax={stored}, the metadata/alternate says {expect.label}")
    syntax = stored or expect.label
    _check_digest(report, where, headers, payload)
    try:
        header = stream_header(payload)
    except DecodeError:  # malformed JPEG markers: the decode check names it
        header = None
    size = (header.rows, header.columns) if header else None
    if size and expect.rows and expect.columns and size != (expect.rows, expect.columns):
        report.add("size", where, f"stream is {size[1]}x{size[0]}, expected {expect.columns}x{expect.rows}")
    if syntax in HTJ2K_SYNTAXES:
        check_htj2k(report, where, payload, syntax)
    elif syntax in (JPEG_LS_LOSSLESS, JPEG_LS_NEAR_LOSSLESS):
        check_jpegls(report, where, payload, syntax, expect.lossless)


def _check_digest(report: Report, where: str, headers: dict[str, str], payload: bytes) -> None:
    digest = parse_content_digest(headers.get("content-digest"))
    if digest is None:
        return
    algorithm, expected = digest
    report.digests += 1
    if hashlib.new(algorithm.replace("-", ""), payload).digest() != expected:
        report.add("digest", where, f"Content-Digest {algorithm} does not match the part's bytes")


def check_htj2k(report: Report, where: str, payload: bytes, syntax: str) -> None:
    """The label's promises against the main header and the tile-parts."""
    scanner = CodestreamScanner()
    try:
        events = scanner.feed(payload) + scanner.close()
    except CodestreamError as exc:
        return report.add("codestream", where, f"labelled {syntax} but not a readable codestream: {exc}")
    header = next((e for e in events if isinstance(e, MainHeader)), None)
    if header is None:
        return report.add("codestream", where, f"labelled {syntax} but no main header")
    if b"\xff\x50" not in payload[: header.length]:
        report.add("htj2k-label", where, f"labelled {syntax} (HTJ2K) but the stream has no CAP marker (plain JPEG 2000)")
    if syntax in LOSSLESS_HTJ2K and not header.cod.reversible:
        report.add("htj2k-label", where, f"labelled {syntax} (lossless) but coded with the irreversible 9/7 wavelet")
    lowest = header.size_at(header.cod.decompositions)
    if syntax == HTJ2K_LOSSLESS_RPCL:
        if header.cod.progression_name != "RPCL":
            report.add("htj2k-label", where, f"labelled .202 but progression order is {header.cod.progression_name}")
        if header.tlm is None:
            report.add("htj2k-label", where, "labelled .202 but has no TLM marker")
        if max(lowest) > MAX_LOWEST_LEVEL:
            report.add("htj2k-label", where, f"labelled .202 but its lowest level is {lowest[1]}x{lowest[0]} "
                                             f"(> {MAX_LOWEST_LEVEL} px)")
    early = [e for e in events if isinstance(e, ResolutionComplete) and e.end_offset < len(payload)]
    if header.cod.decompositions and not early:
        report.add("levels", where, f"no reduced level reachable before the end ({header.cod.progression_name}, "
                                    f"{'no ' if header.tlm is None else ''}TLM): the image shows only when complete",
                   defect=False)


def jpegls_near(payload: bytes) -> int | None:
    """NEAR of the first scan (SOS after SOF55), or None when the stream is not JPEG-LS."""
    i, seen_sof = 2, False
    if payload[:2] != b"\xff\xd8":
        return None
    while i + 4 <= len(payload):
        if payload[i] != 0xFF:
            return None
        marker = payload[i + 1]
        if marker == 0xFF:
            i += 1
            continue
        length = (payload[i + 2] << 8) | payload[i + 3]
        seen_sof |= marker == 0xF7
        if marker == 0xDA:
            components = payload[i + 4] if i + 4 < len(payload) else 0
            near_at = i + 5 + 2 * components
            return payload[near_at] if seen_sof and near_at < len(payload) else None
        i += 2 + length
    return None


def check_jpegls(report: Report, where: str, payload: bytes, syntax: str, lossless: bool | None) -> None:
    near = jpegls_near(payload)
    if near is None:
        return report.add("jpegls", where, f"labelled {syntax} (JPEG-LS) but no JPEG-LS scan header found")
    if syntax == JPEG_LS_LOSSLESS and near:
        report.add("jpegls-near", where, f"labelled .80 (lossless) but NEAR={near}")
    elif lossless and near:
        report.add("jpegls-near", where, f"described as lossless but NEAR={near}")
    elif syntax == JPEG_LS_NEAR_LOSSLESS and near == 0:
        report.add("jpegls-near", where, "labelled .81 (near-lossless) with NEAR=0: lossless content; viewers "
                                         "that trust the label show it as lossy", defect=False)


# ---------------------------------------------------------------- a browser's view of the answers


async def check_http_frame(report: Report, source: HttpSource, rel: str, origin: str | None) -> None:
    """Content-Type, Range and CORS answers for one frame URL, as a browser would need them."""
    where = source.url(rel)
    plain = await source.get(rel, headers={"Accept": FRAME_ACCEPT})
    ctype = plain.headers.get("content-type", "")
    if plain.body.lstrip(b"\r\n").startswith(b"--") and not ctype.lower().startswith("multipart/related"):
        report.add("content-type", where, f"a multipart body served as {ctype or 'no Content-Type'!r}: "
                                          "viewers that trust the type draw wrong pixels")
    ranged = await source.get(rel, headers={"Accept": FRAME_ACCEPT}, byte_range=(0, 99))
    if ranged.status != 206 or "content-range" not in ranged.headers:
        report.add("range", where, f"Range bytes=0-99 answered {ranged.status} without Content-Range: "
                                   "byte-range retrieval cannot work")
    asked = origin or PROBE_ORIGIN
    cors = await source.get(rel, headers={"Accept": FRAME_ACCEPT, "Origin": asked}, byte_range=(0, 99))
    allowed = cors.headers.get("access-control-allow-origin")
    if allowed not in ("*", asked):
        report.add("cors", where, f"no Access-Control-Allow-Origin for {asked}: "
                                  + ("a viewer there cannot read it" if origin else "same-origin viewers only"),
                   defect=origin is not None)
        return
    exposed = {h.strip().lower() for h in cors.headers.get("access-control-expose-headers", "").split(",")}
    if not exposed & {"*", "content-range"}:
        report.add("cors", where, "Content-Range is not in Access-Control-Expose-Headers: a browser cannot "
                                  "read how long the frame is")


# ---------------------------------------------------------------- the walk


def _uid(value: object) -> str | None:
    """A UID usable as a path component (digits and dots only), else None."""
    text = str(value or "")
    return text if text and len(text) <= 64 and all(p.isdigit() for p in text.split(".")) else None


async def _series_paths(source: Source, rel: str, report: Report) -> list[str]:
    """Series folders under the target: itself, a study's series, or every study's series."""
    parts = [p for p in urlsplit(rel).path.split("/") if p] if source.http else []
    if len(parts) >= 2 and parts[-2] == "series":
        return [""]
    if len(parts) >= 2 and parts[-2] == "studies":
        studies = [""]
    else:
        doc, cause = await source.json("studies", ["studies/index.json", "studies/index.json.gz"])
        if not isinstance(doc, list):
            report.add("qido", source_where(source, "studies"), f"no study list ({cause or 'not a JSON array'})")
            return []
        studies = [f"studies/{uid}" for uid in (_uid(dj.text(s, Tag.STUDY_INSTANCE_UID)) for s in doc
                                                 if isinstance(s, dict)) if uid]
    found = []
    for study in studies:
        series_rel = f"{study}/series".lstrip("/")
        doc, cause = await source.json(series_rel, [f"{series_rel}/index.json", f"{series_rel}/index.json.gz"])
        if not isinstance(doc, list):
            report.add("qido", source_where(source, series_rel), f"no series list ({cause or 'not a JSON array'})")
            continue
        found += [f"{series_rel}/{uid}" for uid in (_uid(dj.text(s, Tag.SERIES_INSTANCE_UID)) for s in doc
                                                     if isinstance(s, dict)) if uid]
    return found


def source_where(source: Source, rel: str) -> str:
    return source.url(rel) if isinstance(source, HttpSource) else str(source.root / rel)


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p.strip("/"))


def _alternates(doc: object) -> dict[str, dict]:
    """name -> description from an alternates.json (ours), 'frames' excluded."""
    if isinstance(doc, dict) and isinstance(doc.get("alternates"), dict):
        doc = doc["alternates"]
    if not isinstance(doc, dict):
        return {}
    return {str(v.get("path") or k).strip("/"): v for k, v in doc.items()
            if isinstance(v, dict) and str(v.get("path") or k).strip("/") != "frames"}


async def check_series(source: Source, rel: str, report: Report, *, origin: str | None,
                       max_instances: int) -> None:
    report.series += 1
    metadata, cause = await source.json(_join(rel, "metadata"), [_join(rel, "metadata.gz"), _join(rel, "metadata.json")])
    if not isinstance(metadata, list):
        return report.add("metadata", source_where(source, _join(rel, "metadata")),
                          f"no series metadata ({cause or 'not a DICOM JSON array'})")
    await check_stack_index(source, rel, report, metadata)
    described, _ = await source.json(_join(rel, "alternates.json"))
    alternates = _alternates(described)
    names: list[str] | None = list(alternates) or None
    for index, instance in enumerate(metadata[:max_instances]):
        sop = _uid(dj.text(instance, Tag.SOP_INSTANCE_UID)) if isinstance(instance, dict) else None
        if sop is None:
            report.add("metadata", source_where(source, rel), f"instance {index + 1} has no usable SOPInstanceUID")
            continue
        base = _join(rel, "instances", sop)
        label = dj.text(instance, Tag.AVAILABLE_TRANSFER_SYNTAX_UID) or dj.text(instance, Tag.TRANSFER_SYNTAX_UID)
        rows, columns = dj.integer(instance, Tag.ROWS), dj.integer(instance, Tag.COLUMNS)
        frame = await source.get(_join(base, "frames", "1"), headers={"Accept": FRAME_ACCEPT})
        if frame.status != 200:
            report.add("frame", frame.where, f"frame 1 missing (HTTP {frame.status or 'failure'})")
            continue
        check_frame(report, frame.where, frame.body, frame.headers.get("content-type"),
                    FrameExpectation(label, rows, columns))
        if index == 0 and isinstance(source, HttpSource):
            await check_http_frame(report, source, _join(base, "frames", "1"), origin)
        if names is None:  # no description: what the first instance has is what all must have
            names = [n for n in source.alternate_names(base)
                     if (await source.get(_join(base, n, "1"), headers={"Accept": FRAME_ACCEPT})).status == 200]
        for name in names:
            await _check_alternate(source, report, _join(base, name, "1"), alternates.get(name, {}),
                                   label, rows, columns)


async def check_stack_index(source: Source, rel: str, report: Report, metadata: list) -> None:
    """The series' ``stack.json``, when it has one (it is optional): readable, and the stack its
    metadata gives (a viewer that finds it otherwise loads from the metadata, a step later)."""
    fetched = await source.get(_join(rel, STACK_INDEX_NAME))
    if fetched.status in (404, 410):
        return
    url = "http://check.invalid/series"
    if fetched.status != 200:
        return report.add("stack-index", fetched.where, f"HTTP {fetched.status or 'failure'}")
    try:
        difference = index_disagreement(stack_from_index(parse_stack_index(dj.loads(fetched.body)), url),
                                         stack_from_metadata(metadata, url))
    except (ValueError, DiscoveryError) as exc:
        return report.add("stack-index", fetched.where, str(exc))
    if difference:
        report.add("stack-index", fetched.where, f"disagrees with the metadata: {difference}")


async def _check_alternate(source: Source, report: Report, rel: str, entry: dict, label: str | None,
                           rows: int | None, columns: int | None) -> None:
    alt = await source.get(rel, headers={"Accept": FRAME_ACCEPT})
    if alt.status != 200:
        return report.add("alternate", alt.where, f"alternate frame missing (HTTP {alt.status or 'failure'})")
    syntax = entry.get("transferSyntaxUID")
    lossy = entry.get("lossy")
    scale = entry.get("scale") if isinstance(entry.get("scale"), int) else None
    alt_rows = entry.get("rows") or (rows if scale == 1 else None)
    alt_columns = entry.get("columns") or (columns if scale == 1 else None)
    check_frame(report, alt.where, alt.body, alt.headers.get("content-type"),
                FrameExpectation(syntax, alt_rows, alt_columns, None if lossy is None else not lossy))


async def check(target: str, *, origin: str | None = None, transport: Transport | None = None,
                max_instances: int = 200) -> Report:
    """Walk a tree (folder) or server (URL) and report what a progressive viewer would trip on."""
    report = Report()
    if target.startswith(("http://", "https://")):
        from .transport import default_transport

        own = transport is None
        transport = transport or default_transport()
        source: Source = HttpSource(target, transport)
    else:
        own = False
        source = TreeSource(Path(target))
    try:
        for rel in await _series_paths(source, target, report):
            await check_series(source, rel, report, origin=origin, max_instances=max_instances)
    finally:
        if own:
            await transport.aclose()
    if report.frames:
        report.add("digest", str(target), f"{report.digests} of {report.frames} frames carry a Content-Digest",
                   defect=False)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app check",
                                     description="Conformance report for a static DICOMweb tree or server.")
    parser.add_argument("target", help="a tree folder, or a DICOMweb root / study / series URL")
    parser.add_argument("--origin", help="origin of the viewer that will read it (CORS becomes a defect)")
    parser.add_argument("--max-instances", type=int, default=200, help="instances checked per series")
    args = parser.parse_args(argv)
    if not args.target.startswith(("http://", "https://")) and not Path(args.target).is_dir():
        print(f"error: {args.target} is neither a folder nor an http(s) URL", file=sys.stderr)
        return 2
    report = asyncio.run(check(args.target, origin=args.origin, max_instances=args.max_instances))
    for finding in report.findings:
        print(finding.line())
    defects = len(report.defects)
    print(f"{defects} defect(s), {len(report.findings) - defects} note(s); "
          f"{report.series} series, {report.frames} frames checked")
    if not report.series:
        return 1
    return 1 if defects else 0
