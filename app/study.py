"""Study discovery and stack building: URL -> series metadata -> ordered frames.

Accepts a DICOMweb root, a study URL (``.../studies/{st}``), a series URL
(``.../studies/{st}/series/{se}``) or a metadata URL, served by a live DICOMweb server or a static
tree (``index.json``/``metadata`` with or without ``.gz``). Instances are ordered along the slice
normal (ImagePositionPatient projected on the cross product of ImageOrientationPatient), else by
InstanceNumber; multi-frame instances become one stack item per frame.

With ``provisional``, a series' stack index (``stack.json``, app/tree/stack_index.py) is asked for
with the metadata: a stack built from it is returned at once (a few ms, against tens for the
metadata), with an IndexCheck that parses the metadata once started and says whether it describes
the same stack, field by field. Whoever runs such a stack shows nothing of it before that.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit, urlunsplit

from . import dicomjson as dj
from .codecs import MAX_FRAME_BYTES, PixelFormat
from .config import origin_of
from .dicomjson import Tag
from .transport.base import Response, Transport, TransportError
from .transport.limits import JSON_LIMITS, LimitedTransport, TransferLimits
from .tree import Alternate, parse_alternates
from .tree.stack_index import IMAGE_FIELDS, STACK_INDEX_NAME, SeriesIdentity, StackIndex, parse_stack_index
from .uids import EXPLICIT_VR_LITTLE_ENDIAN, valid_uid

__all__ = [
    "Alternate",
    "DiscoveryError",
    "DiscoveryWork",
    "IndexCheck",
    "IndexMismatch",
    "Stack",
    "StackImage",
    "discover",
    "fetch_json",
    "index_disagreement",
    "index_of_stack",
    "parse_alternates",
    "stack_from_index",
    "stack_from_metadata",
]

JSON_ACCEPT = "application/dicom+json, application/json;q=0.9, */*;q=0.1"
MAX_STACK_IMAGES = 100_000  # frames of one series; more is a broken or hostile metadata document
# freeing a parsed 1000-instance document takes ~7 ms in the page: done this much later, while the
# first frame is on its way, not before its request
FREE_DOCUMENT_AFTER_S = 1.0


class DiscoveryError(Exception):
    """The URL does not lead to a series with images."""


class RefusedDocument(DiscoveryError):
    """A document was refused for what it is (nested too deeply, too large, too many objects),
    not for being absent: its reason is reported instead of "not found"."""


class IndexMismatch(DiscoveryError):
    """The series' stack index disagrees with its metadata, or the metadata could not be read to
    check it. ``stack``: the metadata's own stack to go on with, when there is one."""

    def __init__(self, message: str, stack: "Stack | None" = None) -> None:
        super().__init__(message)
        self.stack = stack


@dataclass
class DiscoveryWork:
    """What discovery spent before the first frame request, the page's benchmark reads it: the
    bytes checked and parsed (the index's, else the metadata's), the stack built, and when it was
    ready (``time.perf_counter``); with an index, the metadata's check after the request."""

    parse_ms: float = 0.0
    stack_ms: float = 0.0
    ready_at: float = 0.0
    source: str = "metadata"  # or "index": what the stack was built from
    index_note: str = ""  # why an index that answered was not used
    check_ms: float = 0.0  # the metadata parsed, its stack built and compared with the index's
    first_request_at: float = 0.0  # set by whoever runs the stack (app/viewer_engine.py)

    def figures(self, describing_at: float, described_at: float, images: int) -> dict:
        """The figures as the worker reports them (ms); the first frame request was out when the
        "opened" message was begun, or at ``first_request_at`` when that was noted."""
        first = self.first_request_at or describing_at
        return {"parse_ms": round(self.parse_ms, 2), "stack_ms": round(self.stack_ms, 2),
                "to_first_request_ms": round((first - self.ready_at) * 1000.0, 2),
                "opened_ms": round((described_at - describing_at) * 1000.0, 2), "images": images,
                "source": self.source, "check_ms": round(self.check_ms, 2)}


@dataclass
class IndexCheck:
    """The check of a stack built from the series' index against the series' metadata: its
    requests are out with the index's, its parse waits for ``start()`` (the first frame request
    out), ``result`` is the metadata's stack when it agrees, else IndexMismatch."""

    go: asyncio.Event
    result: "asyncio.Future[Stack]"

    def start(self) -> None:
        self.go.set()

    def cancel(self) -> None:
        self.result.cancel()


@dataclass(frozen=True)
class StackImage:
    index: int
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    frame: int  # 1-based
    frame_url: str  # .../instances/{sop}/frames/{frame}
    transfer_syntax: str
    fmt: PixelFormat
    pixel_spacing: tuple[float, float] | None  # (row spacing, column spacing) in mm
    windows: tuple[tuple[float, float], ...] = ()  # (center, width) presets
    rescale_slope: float = 1.0
    rescale_intercept: float = 0.0
    photometric: str = "MONOCHROME2"
    instance_number: int | None = None
    position: tuple[float, float, float] | None = None
    inline_data: bytes | None = field(default=None, repr=False)  # InlineBinary pixel data (native)

    @property
    def rows(self) -> int:
        return self.fmt.rows

    @property
    def columns(self) -> int:
        return self.fmt.columns


@dataclass(frozen=True)
class Stack:
    study_uid: str
    series_uid: str
    series_url: str
    images: tuple[StackImage, ...]
    alternates: dict[str, Alternate] = field(default_factory=dict)
    modality: str | None = None
    patient_name: str | None = None  # PN as DICOM writes it (Family^Given); the page shows it as text
    patient_id: str | None = None
    study_date: str | None = None  # YYYYMMDD
    study_description: str | None = None
    series_description: str | None = None
    series_number: int | None = None
    # alternates.json still on its way: discovery never makes the first frame request wait on
    # an optional file; a stage that reads an alternate waits for it (alternates_loaded)
    pending_alternates: "asyncio.Future[dict[str, Alternate]] | None" = field(
        default=None, repr=False, compare=False)
    work: DiscoveryWork | None = field(default=None, repr=False, compare=False)
    # built from the series' stack index: provisional until the metadata agrees; nothing of it may
    # be shown before (app/viewer_engine.py holds the engine's events until then)
    index_check: IndexCheck | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.images)

    async def alternates_loaded(self) -> dict[str, Alternate]:
        """The alternates, once their answers are in (an unreadable sidecar counts as none)."""
        task = self.pending_alternates
        if task is not None:
            try:
                found = await asyncio.shield(task)
            except (DiscoveryError, TransportError):
                found = {}
            for key, alt in found.items():
                self.alternates.setdefault(key, alt)
        return self.alternates


async def fetch_json(transport: Transport, url: str, *, limits: TransferLimits = JSON_LIMITS) -> object | None:
    """GET a JSON document (gzip by magic bytes); None for 404/204 and friends.

    The transfer is under ``limits`` (unless the transport already applies some: discover's
    does); an error answer's body is never read (it may be endless); the JSON body is collected
    up to dicomjson.MAX_JSON_BYTES and checked for nesting and size before it is parsed."""
    if not isinstance(transport, LimitedTransport):
        transport = LimitedTransport(transport, limits)
    return (await _json_or_cause(transport, url))[0]


async def _json_or_cause(transport: Transport, url: str, answer: "asyncio.Future[Response] | None" = None,
                         work: DiscoveryWork | None = None) -> tuple[object | None, str]:
    """The document, or None and why there is none (an HTTP status, an empty body).

    An answer that is there but unusable (a redirect, not JSON) raises DiscoveryError, one refused
    for what it is (too large, nested too deeply) RefusedDocument; none at all TransportError.
    Redirects are not followed (NativeTransport); one the browser followed to another origin is
    refused, as frames are. ``answer``: the request, when it was already made; ``work`` counts the
    parse.
    """
    resp = await (answer if answer is not None else transport.get(url, headers={"Accept": JSON_ACCEPT}))
    try:
        if resp.url and origin_of(resp.url) != origin_of(url):
            raise DiscoveryError(f"GET {url}: redirected to another origin ({resp.url})")
        if 300 <= resp.status < 400:
            where = resp.headers.get("location", "?")
            raise DiscoveryError(f"GET {url}: redirected (HTTP {resp.status}) to {where}: redirects are not followed")
        if resp.status in (204, 404, 410) or (resp.status >= 400 and resp.status != 500):
            return None, f"HTTP {resp.status}"
        if resp.status != 200:
            raise DiscoveryError(f"GET {url}: HTTP {resp.status}")
        body = bytearray()
        async for chunk in resp.chunks():
            body += chunk
            if len(body) > dj.MAX_JSON_BYTES:
                raise RefusedDocument(f"GET {url}: more than {dj.MAX_JSON_BYTES} bytes of JSON")
    finally:
        await resp.aclose()
    if not body.strip():
        return None, "empty body"
    started = time.perf_counter()
    try:
        return dj.loads(body), ""
    except dj.JsonRefused as exc:
        raise RefusedDocument(f"GET {url}: {exc}") from exc
    except (ValueError, OSError) as exc:
        raise DiscoveryError(f"GET {url}: not JSON ({exc})") from exc
    finally:
        if work is not None:
            work.parse_ms += (time.perf_counter() - started) * 1000.0


async def _first_json(transport: Transport, urls: list[str], *, missing: str | None = None,
                      parallel: bool = False, work: DiscoveryWork | None = None) -> tuple[str, object] | None:
    """The first of the candidate URLs that answers JSON.

    ``parallel``: all are asked for at once (a missing first name costs no round trip), and still
    taken in order; the answers not read are closed unread.

    When none does, a network failure, timeout or refused document (too large, nested too deeply)
    is raised: its reason matters more than "not found". Else, with ``missing``, a DiscoveryError
    '<missing>: <each URL's cause>' (a 404, a redirect, not JSON), so the user sees why, not just
    that; without it, None.
    """
    asked = [asyncio.ensure_future(transport.get(url, headers={"Accept": JSON_ACCEPT})) if parallel else None
             for url in urls]
    try:
        return await _first_answer(transport, urls, asked, missing, work)
    finally:
        await _drop(asked)


async def _first_answer(transport: Transport, urls: list[str], asked: list, missing: str | None,
                        work: DiscoveryWork | None = None) -> tuple[str, object] | None:
    causes: list[str] = []
    failures: list[Exception] = []
    for i, url in enumerate(urls):
        answer, asked[i] = asked[i], None  # read (and closed) here, not dropped
        try:
            doc, cause = await _json_or_cause(transport, url, answer, work)
        except (TransportError, RefusedDocument) as exc:
            failures.append(exc)
            doc, cause = None, str(exc)
        except DiscoveryError as exc:
            doc, cause = None, str(exc)
        if doc is not None:
            return url, doc
        causes.append(f"{url.rsplit('/', 1)[-1]}: {cause.removeprefix(f'GET {url}: ')}")
    if failures:  # alone: "not found" would hide it (the page words a message by what it names)
        raise DiscoveryError(str(failures[0])) from failures[0]
    if missing is not None:
        raise DiscoveryError(f"{missing}: " + "; ".join(causes))
    return None


async def _drop(asked: list) -> None:
    """Requests made in parallel and not read: cancelled, or their answers closed unread."""
    for task in asked:
        if task is None:
            continue
        if not task.done():
            task.cancel()
        elif not task.cancelled() and task.exception() is None:
            await task.result().aclose()


def _strip(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), parts.query, ""))


def _path_segments(url: str) -> list[str]:
    return [s for s in urlsplit(url).path.split("/") if s]


async def discover(transport: Transport, url: str, *, series_uid: str | None = None,
                   limits: TransferLimits = JSON_LIMITS, provisional: bool = False) -> Stack:
    """Find the series the URL names (or the first/best one under it) and build its stack.

    Every document is fetched under ``limits`` (the frames' low-speed rule, a deadline).
    ``provisional``: a series' stack index (``stack.json``) is asked for with its metadata and,
    when it answers, the stack is built from it at once; the caller must then start and await
    ``stack.index_check`` before showing anything of it (app/viewer_engine.py does)."""
    if not isinstance(transport, LimitedTransport):
        transport = LimitedTransport(transport, limits)
    url = _strip(url)
    segs = _path_segments(url)
    if segs and segs[-1] in ("metadata", "metadata.gz", "metadata.json"):
        return await _load_series(transport, url.rsplit("/", 1)[0], [url])
    if len(segs) >= 2 and segs[-2] == "series":
        return await _load_series(transport, url, provisional=provisional)
    if len(segs) >= 2 and segs[-2] == "studies":
        return await _load_study(transport, url, series_uid, provisional)
    if segs and segs[-1] == "studies":
        url = url.rsplit("/", 1)[0]
    # a DICOMweb root: list studies
    found = await _first_json(
        transport, [f"{url}/studies", f"{url}/studies/index.json", f"{url}/studies/index.json.gz"],
        missing=f"no studies found under {url}",
    )
    if found is None or not isinstance(found[1], list) or not found[1]:
        raise DiscoveryError(f"no studies found under {url}")
    last_error: Exception | None = None
    for study in found[1]:
        st = dj.text(study, Tag.STUDY_INSTANCE_UID)
        if not valid_uid(st):
            continue  # never a URL segment: a UID that is not one (../, /, ...) could leave the tree
        try:
            return await _load_study(transport, f"{url}/studies/{st}", series_uid, provisional)
        except DiscoveryError as exc:
            last_error = exc
    raise DiscoveryError(f"no series with images under {url}" + (f" ({last_error})" if last_error else ""))


async def _load_study(transport: Transport, study_url: str, series_uid: str | None,
                      provisional: bool = False) -> Stack:
    if series_uid:
        return await _load_series(transport, f"{study_url}/series/{series_uid}", provisional=provisional)
    found = await _first_json(
        transport,
        [f"{study_url}/series", f"{study_url}/series/index.json", f"{study_url}/series/index.json.gz"],
        missing=f"no series found under {study_url}",
    )
    if found is None or not isinstance(found[1], list) or not found[1]:
        raise DiscoveryError(f"no series found under {study_url}")
    candidates = []
    for i, series in enumerate(found[1]):
        se = dj.text(series, Tag.SERIES_INSTANCE_UID)
        if valid_uid(se):  # never a URL segment otherwise
            count = dj.integer(series, Tag.NUMBER_OF_SERIES_RELATED_INSTANCES, 0) or 0
            candidates.append((-count, i, se))
    last_error: Exception | None = None
    for _, _, se in sorted(candidates):  # the largest series first: most likely the stack wanted
        try:
            return await _load_series(transport, f"{study_url}/series/{se}", provisional=provisional)
        except DiscoveryError as exc:
            last_error = exc
    raise DiscoveryError(f"no series with images under {study_url}" + (f" ({last_error})" if last_error else ""))


async def _load_series(transport: Transport, series_url: str, metadata_urls: list[str] | None = None,
                       provisional: bool = False) -> Stack:
    # alternates.json(.gz) are asked for at the same time as the metadata and never waited for
    # here: the first frame request follows the metadata's answer (a stage that reads an
    # alternate waits for them, see Stack.alternates_loaded)
    alternates = asyncio.ensure_future(_alternates(transport, series_url))
    urls = metadata_urls or [f"{series_url}/metadata", f"{series_url}/metadata.gz", f"{series_url}/metadata.json"]
    work = DiscoveryWork()
    asked: list = []
    try:
        if provisional and metadata_urls is None:
            index = asyncio.ensure_future(_index_stack(transport, series_url, work))
            asked = [asyncio.ensure_future(transport.get(url, headers={"Accept": JSON_ACCEPT})) for url in urls]
            stack = await index
            if stack is not None:
                check = IndexCheck(asyncio.Event(), asyncio.Future())
                check.result = asyncio.ensure_future(_checked(stack, transport, urls, asked, check.go, work))
                return dataclasses.replace(stack, pending_alternates=alternates, work=work, index_check=check)
        found = await _metadata(transport, urls, asked, work)
        started = time.perf_counter()
        stack = stack_from_metadata(found[1], series_url)
    except BaseException:
        alternates.cancel()
        await _drop(asked)
        raise
    asyncio.get_running_loop().call_later(FREE_DOCUMENT_AFTER_S, _hold, found)
    work.ready_at = time.perf_counter()
    work.stack_ms = (work.ready_at - started) * 1000.0
    return dataclasses.replace(stack, pending_alternates=alternates, work=work)


async def _metadata(transport: Transport, urls: list[str], asked: list, work: DiscoveryWork) -> tuple[str, object]:
    """The series metadata: the first of ``urls`` that answers JSON (``asked``: their requests,
    already made; else all are made now)."""
    if not asked:
        asked[:] = [asyncio.ensure_future(transport.get(url, headers={"Accept": JSON_ACCEPT})) for url in urls]
    try:
        found = await _first_answer(transport, urls, asked, f"no series metadata at {urls[0]}", work)
    finally:
        await _drop(asked)
    assert found is not None
    return found


async def _index_stack(transport: Transport, series_url: str, work: DiscoveryWork) -> Stack | None:
    """The stack from the series' index; None when there is none or it is refused (its reason in
    ``work.index_note``): the metadata's stack then, as without an index."""
    url = f"{series_url}/{STACK_INDEX_NAME}"
    try:
        doc, _ = await _json_or_cause(transport, url, None, work)
        if doc is None:
            return None
        started = time.perf_counter()
        stack = stack_from_index(parse_stack_index(doc), series_url)
    except (DiscoveryError, TransportError, ValueError) as exc:
        work.index_note, work.parse_ms = str(exc), 0.0
        return None
    work.ready_at = time.perf_counter()
    work.stack_ms = (work.ready_at - started) * 1000.0
    work.source = "index"
    return stack


async def _checked(provisional: Stack, transport: Transport, urls: list[str], asked: list, go: asyncio.Event,
                   work: DiscoveryWork) -> Stack:
    """The metadata's stack, once ``go`` is set and it agrees with the index's; else IndexMismatch."""
    parsed = DiscoveryWork()
    try:
        await go.wait()
        found = await _metadata(transport, urls, asked, parsed)
        started = time.perf_counter()
        stack = stack_from_metadata(found[1], provisional.series_url)
    except (DiscoveryError, TransportError) as exc:
        raise IndexMismatch(f"the series metadata could not be read to check the stack index: {exc}") from None
    finally:
        await _drop(asked)
    asyncio.get_running_loop().call_later(FREE_DOCUMENT_AFTER_S, _hold, found)
    difference = index_disagreement(provisional, stack)
    work.check_ms = parsed.parse_ms + (time.perf_counter() - started) * 1000.0
    if difference:
        raise IndexMismatch(f"the series' stack index ({STACK_INDEX_NAME}) disagrees with its metadata: "
                            f"{difference}; the metadata's stack is used", stack)
    return stack


async def _alternates(transport: Transport, series_url: str) -> dict[str, Alternate]:
    """Both names asked for at once; the plain one wins when both answer."""
    names = [f"{series_url}/alternates.json", f"{series_url}/alternates.json.gz"]
    answers = await asyncio.gather(*(_first_json(transport, [url]) for url in names), return_exceptions=True)
    for found in answers:
        if found is not None and not isinstance(found, BaseException):
            return parse_alternates(found[1])
    return {}


def _hold(_document: object) -> None:
    """Nothing: the timer holding its argument until it fires is the point."""


def _normal(iop: list[float] | None) -> tuple[float, float, float] | None:
    if not iop or len(iop) != 6:
        return None
    r, c = iop[:3], iop[3:]
    n = (r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0])
    norm = math.sqrt(sum(x * x for x in n))
    return None if norm < 1e-6 else (n[0] / norm, n[1] / norm, n[2] / norm)


def _frame_item(groups: list[dict], shared: list[dict], seq_tag: str, tag: str) -> list[float] | None:
    for source in (groups, shared):
        for group in source:
            for item in dj.sequence(group, seq_tag):
                v = dj.floats(item, tag)
                if v:
                    return v
    return None


def _frames_base(instance: dict, series_url: str, sop: str) -> str:
    """Frames URL without the frame number; BulkDataURI relative to the series directory."""
    uri = dj.bulk_data_uri(instance, Tag.PIXEL_DATA)
    if uri:
        if uri == f"instances/{sop}/frames":  # what trees and servers write: no URL parsing needed
            return f"{series_url}/{uri}"
        absolute = urljoin(series_url + "/", uri)
        path = urlsplit(absolute).path.rstrip("/")
        if path.endswith("/frames"):
            return absolute.rstrip("/")
        if "/frames/" in path + "/":
            return absolute[: absolute.rindex("/frames") + len("/frames")]
    return f"{series_url}/instances/{sop}/frames"


def stack_from_metadata(metadata: object, series_url: str, alternates: dict[str, Alternate] | None = None) -> Stack:
    """Order the instances of a series metadata document into a stack of frames.

    An instance whose UIDs are not DICOM UIDs is left out (they become URL segments and the
    identity of what is drawn); the error says so when nothing else is left. One pass over the
    instances; what they share (pixel format, orientation, UID checks) is worked out once.
    """
    if isinstance(metadata, dict):
        metadata = [metadata]
    if not isinstance(metadata, list):
        raise DiscoveryError("series metadata is not a DICOM JSON array")
    series_url = _strip(series_url)
    reader = _SeriesReader(series_url)
    for instance in metadata:
        if isinstance(instance, dict):
            reader.read(instance)
    items, refused = reader.items, reader.refused
    if not items:
        why = f" ({len(refused)} instance(s) with invalid UIDs left out, e.g. {refused[0]!r})" if refused else ""
        raise DiscoveryError(f"series {series_url} has no images{why}")
    study_uid, series_uid, modality = reader.study_uid, reader.series_uid, reader.modality
    images = tuple(_stack_image(i, it, study_uid, series_uid) for i, it in enumerate(_in_stack_order(items)))
    first = next((i for i in metadata if isinstance(i, dict)), {})
    return Stack(study_uid or "", series_uid or "", series_url, images, dict(alternates or {}), modality,
                 patient_name=dj.text(first, Tag.PATIENT_NAME), patient_id=dj.text(first, Tag.PATIENT_ID),
                 study_date=dj.text(first, Tag.STUDY_DATE),
                 study_description=dj.text(first, Tag.STUDY_DESCRIPTION),
                 series_description=dj.text(first, Tag.SERIES_DESCRIPTION),
                 series_number=dj.integer(first, Tag.SERIES_NUMBER))


@dataclass(slots=True)
class _Item:
    """One frame on its way into the stack: what ordering and drawing need."""

    sop: str
    frame: int
    url: str
    ts: str
    fmt: PixelFormat
    spacing: tuple[float, float] | None
    windows: tuple[tuple[float, float], ...]
    number: int | None
    pos: tuple[float, ...] | None
    normal: tuple[float, float, float] | None
    inline: bytes | None


# the elements that decide an instance's pixel format, syntax, spacing, orientation, windows and
# functional groups: equal elements give equal values, so a series computes them once, not per
# instance. Keys of digits only, so ``dict.get`` finds what ``dj.element`` would (no case variants).
_SHARED_TAGS = ("00280010", "00280011", "00280002", "00280100", "00280101", "00280103", "00280004",
                "00280006", "00280008", "00281053", "00281052", Tag.AVAILABLE_TRANSFER_SYNTAX_UID,
                Tag.TRANSFER_SYNTAX_UID, Tag.PIXEL_SPACING, Tag.IMAGER_PIXEL_SPACING,
                Tag.IMAGE_ORIENTATION_PATIENT, Tag.WINDOW_CENTER, Tag.WINDOW_WIDTH,
                Tag.SHARED_FUNCTIONAL_GROUPS, Tag.PER_FRAME_FUNCTIONAL_GROUPS)


@dataclass(frozen=True, slots=True)
class _Shared:
    """What the elements of _SHARED_TAGS say about an instance."""

    fmt: PixelFormat
    ts: str
    spacing: list[float] | None
    iop: list[float] | None
    normal: tuple[float, float, float] | None
    windows: tuple[tuple[float, float], ...]
    per_frame: list[dict]

    @classmethod
    def read(cls, instance: dict) -> _Shared:
        ts = (dj.text(instance, Tag.AVAILABLE_TRANSFER_SYNTAX_UID) or dj.text(instance, Tag.TRANSFER_SYNTAX_UID)
              or EXPLICIT_VR_LITTLE_ENDIAN)
        shared = dj.sequence(instance, Tag.SHARED_FUNCTIONAL_GROUPS)
        spacing = (dj.floats(instance, Tag.PIXEL_SPACING)
                   or _frame_item([], shared, Tag.PIXEL_MEASURES_SEQUENCE, Tag.PIXEL_SPACING)
                   or dj.floats(instance, Tag.IMAGER_PIXEL_SPACING))
        iop = (dj.floats(instance, Tag.IMAGE_ORIENTATION_PATIENT)
               or _frame_item([], shared, Tag.PLANE_ORIENTATION_SEQUENCE, Tag.IMAGE_ORIENTATION_PATIENT))
        centers = dj.floats(instance, Tag.WINDOW_CENTER) or []
        widths = dj.floats(instance, Tag.WINDOW_WIDTH) or []
        windows = tuple((c, w) for c, w in zip(centers, widths) if w > 0)
        return cls(PixelFormat.from_dicom_json(instance), ts, spacing, iop, _normal(iop), windows,
                   dj.sequence(instance, Tag.PER_FRAME_FUNCTIONAL_GROUPS))


class _SeriesReader:
    """Reads the instances of one series in one pass; what consecutive instances share (pixel
    format, orientation, windows) is computed and checked once, and each UID is checked once.
    Per instance it reads what differs: UIDs, number, position, pixel data reference."""

    def __init__(self, series_url: str) -> None:
        self.series_url = series_url
        self.items: list[_Item] = []
        self.refused: list[str] = []  # SOP Instance UIDs (shortened) of instances left out
        self.study_uid: str | None = None
        self.series_uid: str | None = None
        self.modality: str | None = None
        self._elements: list | None = None
        self._shared: _Shared | None = None
        self._valid: set[str] = set()

    def read(self, instance: dict) -> None:
        """One instance's frames onto the stack, unless it is no image or its UIDs are no UIDs."""
        first, as_text = dj.first, dj.as_text
        sop = as_text(first(instance, Tag.SOP_INSTANCE_UID))
        if not sop or not dj.as_integer(first(instance, Tag.ROWS)):
            return  # not an image (SR, presentation state, ...)
        study = as_text(first(instance, Tag.STUDY_INSTANCE_UID))
        series = as_text(first(instance, Tag.SERIES_INSTANCE_UID))
        if not self.valid_uids((sop, study, series)):
            self.refused.append(sop[:80])
            return
        self.study_uid = self.study_uid or study
        self.series_uid = self.series_uid or series
        if not self.modality:
            self.modality = as_text(first(instance, Tag.MODALITY))
        self.frames(instance, sop)

    def valid_uids(self, uids: tuple[str | None, ...]) -> bool:
        for uid in uids:
            if uid is not None and uid not in self._valid:
                if not valid_uid(uid):
                    return False
                self._valid.add(uid)
        return True

    def shared(self, instance: dict, sop: str) -> _Shared:
        """What the instance shares with the one before, or worked out (and its frame checked
        against the budget) when an element of _SHARED_TAGS differs."""
        elements = list(map(instance.get, _SHARED_TAGS))
        if self._shared is None or elements != self._elements:
            shared = _Shared.read(instance)
            fmt = shared.fmt
            if fmt.decoded_bytes > MAX_FRAME_BYTES:
                raise DiscoveryError(f"instance {sop}: a {fmt.rows}x{fmt.columns} frame needs {fmt.decoded_bytes} "
                                     f"bytes, over the {MAX_FRAME_BYTES}-byte budget")
            self._elements, self._shared = elements, shared
        return self._shared

    def frames(self, instance: dict, sop: str) -> None:
        """The frames of one image instance onto the stack, with what ordering and drawing need."""
        shared = self.shared(instance, sop)
        fmt = shared.fmt
        frames, per_frame = fmt.number_of_frames, shared.per_frame
        if len(self.items) + frames > MAX_STACK_IMAGES:
            raise DiscoveryError(f"instance {sop}: {frames} frames take the series over "
                                 f"{MAX_STACK_IMAGES} images")
        base = _frames_base(instance, self.series_url, sop)
        try:
            inline = dj.inline_binary(instance, Tag.PIXEL_DATA)
        except ValueError as exc:
            raise DiscoveryError(f"instance {sop}: {exc}") from exc
        number = dj.as_integer(dj.first(instance, Tag.INSTANCE_NUMBER))
        ts, windows, n = shared.ts, shared.windows, fmt.frame_length
        for frame in range(1, frames + 1):
            pos = dj.floats(instance, Tag.IMAGE_POSITION_PATIENT) if frames == 1 else None
            spacing, normal = shared.spacing, shared.normal
            if frame <= len(per_frame):  # enhanced multi-frame: each frame may have its own plane
                groups = [per_frame[frame - 1]]
                pos = _frame_item(groups, [], Tag.PLANE_POSITION_SEQUENCE, Tag.IMAGE_POSITION_PATIENT) or pos
                f_iop = _frame_item(groups, [], Tag.PLANE_ORIENTATION_SEQUENCE, Tag.IMAGE_ORIENTATION_PATIENT)
                normal = _normal(f_iop) if f_iop else normal
                spacing = _frame_item(groups, [], Tag.PIXEL_MEASURES_SEQUENCE, Tag.PIXEL_SPACING) or spacing
            data = None if inline is None else inline[(frame - 1) * n : frame * n]
            self.items.append(_Item(sop, frame, f"{base}/{frame}", ts, fmt, _pair(spacing), windows, number,
                                    tuple(pos[:3]) if pos and len(pos) >= 3 else None, normal, data))


def _pair(spacing: list[float] | None) -> tuple[float, float] | None:
    return (spacing[0], spacing[1]) if spacing and len(spacing) >= 2 else None


def _in_stack_order(items: list[_Item]) -> list[_Item]:
    """Along the slice normal when every frame has a position on one normal, else by number."""
    normals = {it.normal for it in items}
    if len(items) > 1 and len(normals) == 1 and None not in normals and all(it.pos for it in items):
        (n,) = normals
        nx, ny, nz = n
        key = lambda it: (it.pos[0] * nx + it.pos[1] * ny + it.pos[2] * nz, it.number or 0, it.frame)  # noqa: E731
    else:
        key = lambda it: (it.number if it.number is not None else 1 << 31, it.frame, it.sop)  # noqa: E731
    return sorted(items, key=key)


def _stack_image(index: int, it: _Item, study_uid: str | None, series_uid: str | None) -> StackImage:
    """The frozen StackImage, its fields filled as copy and pickle fill them: its generated
    ``__init__`` sets each of 16 fields through ``object.__setattr__`` (4-8 ms per 1000 images in
    the page's worker, before the first frame request)."""
    fmt = it.fmt
    return _frozen_image(
        index=index, study_uid=study_uid or "", series_uid=series_uid or "", sop_instance_uid=it.sop,
        frame=it.frame, frame_url=it.url, transfer_syntax=it.ts, fmt=fmt,
        pixel_spacing=it.spacing, windows=it.windows, rescale_slope=fmt.rescale_slope,
        rescale_intercept=fmt.rescale_intercept, photometric=fmt.photometric_interpretation,
        instance_number=it.number, position=it.pos, inline_data=it.inline,
    )


def _frozen_image(**fields: object) -> StackImage:
    image = object.__new__(StackImage)
    image.__dict__.update(fields)
    return image


# -- the series' stack index (app/tree/stack_index.py: the file's format) ---------------------------

_IDENTITY = ("study_uid", "series_uid", "modality", "patient_name", "patient_id", "study_date",
             "study_description", "series_description", "series_number")


def index_of_stack(stack: Stack) -> StackIndex | None:
    """The index of a stack, for the converter to write; None when the stack cannot be rebuilt
    from one (pixel data inline or at another URL than ``instances/{sop}/frames/{n}``)."""
    rows = []
    for im in stack.images:
        sop = im.sop_instance_uid
        if im.inline_data is not None or im.frame_url != f"{stack.series_url}/instances/{sop}/frames/{im.frame}":
            return None
        rows.append((sop, im.frame, im.transfer_syntax, dataclasses.astuple(im.fmt), im.pixel_spacing,
                     im.windows, im.instance_number, im.position))
    identity = SeriesIdentity(**{name: getattr(stack, name) for name in _IDENTITY})
    return StackIndex.from_images(identity, rows)


def stack_from_index(index: StackIndex, series_url: str) -> Stack:
    """The stack an index describes, the same as its metadata's (``index_disagreement`` checks):
    no reading of DICOM JSON, no ordering; one pixel format per distinct format."""
    series_url = _strip(series_url)
    ident = index.series
    formats: dict[tuple, PixelFormat] = {}
    images = []
    columns = (index.column(name) for name in IMAGE_FIELDS)
    for i, (sop, frame, ts, values, spacing, windows, number, pos) in enumerate(zip(*columns)):
        fmt = formats.get(values)
        if fmt is None:
            fmt = formats[values] = PixelFormat(*values)
            if fmt.decoded_bytes > MAX_FRAME_BYTES:
                raise DiscoveryError(f"instance {sop}: a {fmt.rows}x{fmt.columns} frame needs {fmt.decoded_bytes} "
                                     f"bytes, over the {MAX_FRAME_BYTES}-byte budget")
        images.append(_frozen_image(
            index=i, study_uid=ident.study_uid, series_uid=ident.series_uid, sop_instance_uid=sop, frame=frame,
            frame_url=f"{series_url}/instances/{sop}/frames/{frame}", transfer_syntax=ts, fmt=fmt,
            pixel_spacing=spacing, windows=windows, rescale_slope=fmt.rescale_slope,
            rescale_intercept=fmt.rescale_intercept, photometric=fmt.photometric_interpretation,
            instance_number=number, position=pos, inline_data=None))
    return Stack(ident.study_uid, ident.series_uid, series_url, tuple(images), {}, ident.modality,
                 patient_name=ident.patient_name, patient_id=ident.patient_id, study_date=ident.study_date,
                 study_description=ident.study_description, series_description=ident.series_description,
                 series_number=ident.series_number)


def index_disagreement(provisional: Stack, stack: Stack) -> str | None:
    """The first difference between a stack built from the index and the metadata's, in words;
    None when they are the same series, patient and images (every field, in the same order)."""
    for name in _IDENTITY:
        ours, theirs = getattr(provisional, name), getattr(stack, name)
        if ours != theirs:
            return f"{name.replace('_', ' ')} {str(ours)[:80]!r} in the index, {str(theirs)[:80]!r} in the metadata"
    if len(provisional.images) != len(stack.images):
        return f"{len(provisional.images)} images in the index, {len(stack.images)} in the metadata"
    if provisional.images == stack.images:
        return None
    for ours, theirs in zip(provisional.images, stack.images):
        if ours != theirs:
            name = next(f.name for f in dataclasses.fields(StackImage) if getattr(ours, f.name) != getattr(theirs, f.name))
            return (f"image {ours.index + 1}: {name.replace('_', ' ')} {str(getattr(ours, name))[:80]!r} in the index, "
                    f"{str(getattr(theirs, name))[:80]!r} in the metadata")
    return None


def person_name(pn: str | None) -> str:
    """DICOM PN ``Family^Given^Middle^Prefix^Suffix`` as "Family, Given Middle" (text, not parsed further)."""
    if not pn:
        return ""
    parts = [p.strip() for p in pn.split("=")[0].split("^")]
    family, rest = parts[0], " ".join(p for p in parts[1:] if p)
    return f"{family}, {rest}" if family and rest else family or rest


def dicom_date(da: str | None) -> str:
    """DICOM DA ``YYYYMMDD`` as ``YYYY-MM-DD``; anything else as it came."""
    if da and len(da) == 8 and da.isdigit():
        return f"{da[:4]}-{da[4:6]}-{da[6:]}"
    return da or ""
