"""Serve the viewer, its offline runtime and a static DICOMweb tree.

    python serve.py [--host 127.0.0.1] [--port 8000] [--root DATA_FOLDER] [--no-setup]

On first start it lays out the runtime under ``static/`` and builds the demo study (downloads are
cached in ``.cache/``). URL space:

    /                   index.html
    /pyscript.toml      the PyScript configuration
    /app/...            the Python package the page runs
    /static/...         Pyodide, PyScript and wheels
    /dicomweb/...       the data folder (``--root``; default static/dicomweb), a static DICOMweb tree

Static DICOMweb trees answer like a DICOMweb server: ``/dicomweb/studies`` is served from
``studies/index.json`` (or ``index.json.gz``), ``.../metadata`` from ``metadata`` or ``metadata.gz``.
Frame files get ``multipart/related; type=...; boundary=...`` read from their first bytes.
A list of frames (``frames/1,3,5``, PS3.18 Retrieve Frames) is one multipart/related answer with a
part per frame, in the order asked (``FrameList``). Single byte ranges, CORS, ETag/Last-Modified
with 304, gzip of text and runtime assets (never of a ranged response). Nothing outside the mounted folders is ever served, and directories are never listed.
Standard library only, so it starts before anything is installed.
"""

from __future__ import annotations

import argparse
import base64
import collections
import email.utils
import gzip
import hashlib
import ipaddress
import mimetypes
import os
import re
import subprocess
import sys
import threading
import time
import urllib.parse
import zlib
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PROJECT = Path(__file__).resolve().parent
if str(PROJECT) not in sys.path:  # imported as a module from elsewhere (tests, the bench)
    sys.path.insert(0, str(PROJECT))

from app.tree.framing import (  # noqa: E402 - the tree's one format rule
    multipart_content_type,
    new_boundary,
    sniff_frame_content_type,
)

DEFAULT_DATA = PROJECT / "static" / "dicomweb"

#: Types by suffix; set here, not from the machine's mime.types, so every host answers alike.
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".toml": "application/toml; charset=utf-8",
    ".py": "text/x-python; charset=utf-8",
    ".wasm": "application/wasm",
    ".zip": "application/zip",
    ".whl": "application/zip",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
    ".md": "text/plain; charset=utf-8",
    ".dcm": "application/dicom",
}
DICOM_JSON = "application/dicom+json"

#: Types worth compressing (runtime assets and JSON); frames and wheels are compressed already.
COMPRESSIBLE = ("text/", "application/json", "application/wasm", "application/toml",
                DICOM_JSON)

#: Names a DICOMweb path resolves to inside a static tree folder, in order of preference.
DICOMWEB_INDEX = ("index.json", "index.json.gz")

#: Suffixes tried, in order, for a data path with no file of its own: the Static DICOMweb
#: toolkit stores ``frames/1`` as ``1.mht`` (``1.mht.gz`` when uncompressed), ``metadata`` as
#: ``metadata.gz``.
STORED_SUFFIXES = (".mht", ".mht.gz", ".gz")

CORS_EXPOSE = {
    "Access-Control-Expose-Headers":
        "Content-Range, Content-Length, Content-Type, Content-Encoding, Accept-Ranges, ETag",
}
CORS_PREFLIGHT = {
    "Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
    "Access-Control-Allow-Headers":
        "Range, Accept, Accept-Encoding, If-None-Match, If-Modified-Since, If-Range, Authorization, Content-Type",
    "Access-Control-Max-Age": "600",
}

RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")
#: More digits than any file size has; longer numbers are "huge" without being parsed (4,300 and
#: more digits make int() raise).
RANGE_DIGITS = 18
#: Most bytes of a request body read (and dropped) on a GET before the connection is refused.
MAX_IGNORED_BODY = 64 * 1024
MAX_CONNECTIONS = 256
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

#: Sent with every answer.
SAFETY_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                  "X-Frame-Options": "DENY"}
#: Data answers are never run or framed, whatever a browser makes of them.
DATA_CSP = "default-src 'none'; frame-ancestors 'none'; sandbox"
_INLINE_SCRIPT = re.compile(rb"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", re.S | re.I)
SEND_BLOCK = 256 * 1024
GZIP_CACHE_LIMIT = 64 * 1024 * 1024
#: Larger files are gzip-compressed as a stream while sent, never held whole in memory.
GZIP_CACHE_ITEM_LIMIT = 4 * 1024 * 1024
#: Most frames one ``frames/1,2,3`` request may list (an enhanced CT has a few hundred).
MAX_LISTED_FRAMES = 512
#: Most bytes read from the front of a stored multipart frame file to find its part headers.
PART_HEAD_LIMIT = 64 * 1024


class Mounts:
    """Maps URL paths to files under a few roots, refusing anything that escapes them."""

    def __init__(self, project_root: Path, data_root: Path) -> None:
        self.project_root = project_root.resolve()
        self.data_root = data_root.resolve()
        self.files = {"/": self.project_root / "index.html",
                      "/index.html": self.project_root / "index.html",
                      "/pyscript.toml": self.project_root / "pyscript.toml"}
        self.dirs = (("/app/", self.project_root / "app"),
                     ("/static/", self.project_root / "static"),
                     ("/dicomweb/", self.data_root))

    def resolve(self, url_path: str) -> tuple[Path | None, bool]:
        """Return (file, in_data_tree) or (None, _) when the path is not servable."""
        try:
            return self._resolve(url_path)
        except (OSError, ValueError):  # a name too long for the file system, and the like
            return None, False

    def _resolve(self, url_path: str) -> tuple[Path | None, bool]:
        if url_path in self.files:
            return self.files[url_path], False
        if url_path == "/dicomweb":
            url_path = "/dicomweb/"
        for prefix, root in self.dirs:
            if not url_path.startswith(prefix):
                continue
            rel = url_path[len(prefix):]
            parts = [p for p in rel.split("/") if p]
            if any(p in (".", "..") or "\\" in p or "\x00" in p or ":" in p for p in parts):
                return None, False
            root = root.resolve()
            candidate = root.joinpath(*parts) if parts else root
            is_data = prefix == "/dicomweb/"
            if is_data and candidate.is_dir():
                candidate = next((candidate / n for n in DICOMWEB_INDEX if (candidate / n).is_file()),
                                 None)
                if candidate is None:
                    return None, False
            elif is_data and not candidate.exists():
                candidate = next((candidate.with_name(candidate.name + s) for s in STORED_SUFFIXES
                                  if candidate.with_name(candidate.name + s).is_file()), candidate)
            try:
                real = candidate.resolve(strict=True)
            except (FileNotFoundError, RuntimeError, OSError):
                return None, False
            if not real.is_file() or not real.is_relative_to(root):
                return None, False
            # the mount point's own name stays what the URL asked for (symlinks inside are resolved)
            return real, is_data
        return None, False


def frame_content_type(path: Path, stored_gzip: bool = False) -> str | None:
    """Content-Type of a frame file from its first bytes: a multipart body or a raw codestream.

    A multipart body's boundary is its first line (the toolkit writes one per file).
    """
    try:
        with (gzip.open(path, "rb") if stored_gzip else path.open("rb")) as fh:
            head = fh.read(512)
    except (OSError, EOFError, zlib.error):
        return None
    return sniff_frame_content_type(head)


def is_frame_name(name: str) -> bool:
    """A frame file's name in a frames folder (``1``, ``1.mht``), its stored ``.gz`` suffix off."""
    return name.isdigit() or (name.endswith(".mht") and name[:-4].isdigit())


def content_type_for(path: Path, in_data: bool) -> tuple[str, bool]:
    """Return (content type, stored gzip) for a file about to be served."""
    name = path.name
    stored_gzip = name.endswith(".gz")
    base = name[:-3] if stored_gzip else name
    if in_data:
        if base in ("metadata", "index.json"):
            return DICOM_JSON, stored_gzip
        if base == "thumbnail":  # the rendered 8-bit JPEG of an instance or series
            return "image/jpeg", stored_gzip
        if is_frame_name(base):  # frames/1, jls/1.mht ...
            return frame_content_type(path, stored_gzip) or "application/octet-stream", stored_gzip
    suffix = Path(base).suffix
    if base == "python_stdlib.zip":
        return "application/zip", stored_gzip
    ctype = CONTENT_TYPES.get(suffix) or mimetypes.guess_type(base)[0] or "application/octet-stream"
    return ctype, stored_gzip


class FrameListError(ValueError):
    """A frame list that cannot be answered: the status and one line saying why."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ListedFrame:
    """One part of a frame-list answer: its header lines and where its bytes lie in the file."""

    path: Path
    headers: bytes  # "Name: value\r\n" lines, Content-Location last
    start: int
    length: int
    content_type: str


@dataclass(frozen=True)
class FrameList:
    """The answer to ``frames/1,3,5``: one multipart/related body, a part per frame asked.

    A stored frame file that is itself a single-part multipart body (``{n}.mht``, the toolkit's
    layout) is not nested: its part (headers, Content-Digest included, and bytes) becomes a part
    of the answer, so each part is exactly what a single-frame answer wraps. A bare frame file
    becomes a part typed as its single answer is. Frames stored gzip-compressed (``.mht.gz``) are
    refused (400: ask for them one at a time). Duplicates are answered as asked, one part each.
    """

    parts: tuple[ListedFrame, ...]
    boundary: str

    @property
    def content_type(self) -> str:
        media = self.parts[0].content_type.partition(";")[0]
        syntaxes = {_transfer_syntax(p.content_type) for p in self.parts}
        syntax = syntaxes.pop() if len(syntaxes) == 1 else None
        return multipart_content_type(media.strip() or "application/octet-stream", self.boundary, syntax)

    def _delimiter(self, first: bool) -> bytes:
        return (b"" if first else b"\r\n") + b"--" + self.boundary.encode("ascii") + b"\r\n"

    @property
    def closing(self) -> bytes:
        return b"\r\n--" + self.boundary.encode("ascii") + b"--\r\n"

    def heads(self) -> list[bytes]:
        """The bytes before each part's data: delimiter and header lines."""
        return [self._delimiter(i == 0) + p.headers + b"\r\n" for i, p in enumerate(self.parts)]

    @property
    def length(self) -> int:
        return sum(len(h) + p.length for h, p in zip(self.heads(), self.parts)) + len(self.closing)


def _transfer_syntax(content_type: str) -> str | None:
    match = re.search(r"transfer-syntax\s*=\s*\"?([0-9.]+)", content_type)
    return match.group(1) if match else None


def parse_frame_numbers(text: str) -> list[int]:
    """``1,3,5`` -> [1, 3, 5]; FrameListError for anything else (no int() of huge numbers)."""
    items = text.split(",")
    if len(items) > MAX_LISTED_FRAMES:
        raise FrameListError(HTTPStatus.BAD_REQUEST, f"more than {MAX_LISTED_FRAMES} frames in one request")
    numbers = []
    for item in items:
        if not item.isascii() or not item.isdigit() or len(item) > 9 or int(item) < 1:
            raise FrameListError(HTTPStatus.BAD_REQUEST,
                                 f"frame list item {item[:20]!r} is not a frame number (1, 2, ...)")
        numbers.append(int(item))
    return numbers


def listed_frame(path: Path, url: str) -> ListedFrame:
    """Where the frame bytes of one stored frame file lie, and the header lines of its part."""
    ctype, stored_gzip = content_type_for(path, True)
    if stored_gzip:
        raise FrameListError(HTTPStatus.BAD_REQUEST,
                             f"{url} is stored gzip-compressed: ask for it alone")
    size = path.stat().st_size
    location = f"Content-Location: {urllib.parse.quote(url, safe='/,')}\r\n".encode("ascii")
    if not ctype.startswith("multipart/"):
        return ListedFrame(path, f"Content-Type: {ctype}\r\n".encode("latin-1") + location, 0, size, ctype)
    with path.open("rb") as fh:
        head = fh.read(PART_HEAD_LIMIT)
        first, _, rest = head.partition(b"\r\n")
        end = rest.find(b"\r\n\r\n")
        closing = b"\r\n" + first + b"--"
        fh.seek(max(0, size - len(closing) - 2))
        tail = fh.read()
    if end < 0 or not first.startswith(b"--") or not tail.rstrip(b"\r\n").endswith(closing):
        raise FrameListError(HTTPStatus.BAD_REQUEST, f"{url} is not stored as one part: ask for it alone")
    start = len(first) + 2 + end + 4
    length = size - start - (len(tail) - tail.rindex(closing))
    if length < 0:
        raise FrameListError(HTTPStatus.BAD_REQUEST, f"{url} is not stored as one part: ask for it alone")
    headers = [line for line in rest[:end].split(b"\r\n") if line and not line.lower().startswith(b"content-location:")]
    part_type = next((line.split(b":", 1)[1].strip().decode("latin-1") for line in headers
                      if line.lower().startswith(b"content-type:")), "application/octet-stream")
    return ListedFrame(path, b"".join(line + b"\r\n" for line in headers) + location, start, length, part_type)


def frame_list(mounts: Mounts, folder: str, numbers: list[int]) -> FrameList:
    """The frame-list answer for frames ``numbers`` of the frames folder at URL path ``folder``."""
    parts = []
    for number in numbers:
        url = f"{folder}/{number}"
        path, in_data = mounts.resolve(url)
        if path is None or not in_data or not is_frame_name(path.name.removesuffix(".gz")):
            raise FrameListError(HTTPStatus.NOT_FOUND, f"no frame {number} at {folder}")
        try:
            parts.append(listed_frame(path, url))
        except OSError:
            raise FrameListError(HTTPStatus.NOT_FOUND, f"no frame {number} at {folder}") from None
    return FrameList(tuple(parts), new_boundary())


def is_compressible(ctype: str, path: Path) -> bool:
    return ctype.startswith(COMPRESSIBLE) or path.name == "python_stdlib.zip"


class GzipCache:
    """gzip bodies made at request time, kept while the file is unchanged."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: collections.OrderedDict[tuple, bytes] = collections.OrderedDict()
        self._size = 0

    def get(self, path: Path, st: os.stat_result) -> bytes:
        key = (str(path), st.st_mtime_ns, st.st_size)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        body = gzip.compress(path.read_bytes(), compresslevel=6, mtime=0)
        with self._lock:
            self._items[key] = body
            self._size += len(body)
            while self._size > GZIP_CACHE_LIMIT and len(self._items) > 1:
                _, old = self._items.popitem(last=False)
                self._size -= len(old)
        return body


def _inflate(path: Path):
    """The decoded bytes of a stored gzip file, block by block."""
    inflater = zlib.decompressobj(wbits=31)
    with path.open("rb") as fh:
        while block := fh.read(SEND_BLOCK):
            # at most 64 x the block per step, so a gzip bomb cannot take memory either
            out = inflater.decompress(block, SEND_BLOCK * 64)
            yield out
            while inflater.unconsumed_tail:
                yield inflater.decompress(inflater.unconsumed_tail, SEND_BLOCK * 64)
    yield inflater.flush()


def _deflate(path: Path):
    """A file gzip-compressed block by block."""
    deflater = zlib.compressobj(6, zlib.DEFLATED, 31)
    with path.open("rb") as fh:
        while block := fh.read(SEND_BLOCK):
            yield deflater.compress(block)
    yield deflater.flush()


def app_csp(index_html: Path, connect: tuple[str, ...] = ()) -> str:
    """The page's Content-Security-Policy: own scripts, WebAssembly, inline scripts by hash only."""
    try:
        inline = _INLINE_SCRIPT.findall(index_html.read_bytes())
    except OSError:
        inline = []
    hashes = " ".join("'sha256-" + base64.b64encode(hashlib.sha256(body).digest()).decode() + "'"
                      for body in inline)
    return "; ".join([
        "default-src 'self'",
        # 'unsafe-eval': PyScript's core builds its worker hook functions with Function() at start
        # (core-*.js, even with no worker in use); Pyodide itself needs only 'wasm-unsafe-eval'.
        f"script-src 'self' 'wasm-unsafe-eval' 'unsafe-eval' {hashes}".strip(),
        "style-src 'self' 'unsafe-inline'",  # PyScript sets element styles; styles cannot run code
        "img-src 'self' data: blob:",
        # data:/blob: never leave the machine (the page decodes frames handed to it as data: URLs)
        "connect-src " + " ".join(("'self'", "data:", "blob:", *connect)),
        "worker-src 'self' blob:",
        "object-src 'none'", "base-uri 'none'", "form-action 'self'", "frame-ancestors 'none'",
    ])


def _digits(text: str) -> int | None:
    """A Range number, or None for one too long to be a byte offset (never int() of 4,300 digits)."""
    text = text.lstrip("0") or "0"
    return int(text) if len(text) <= RANGE_DIGITS else None


def parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """(start, end inclusive), "unsatisfiable", or None for no usable single range."""
    if not header:
        return None
    m = RANGE_RE.match(header.strip())
    if not m:
        return None  # multi-range or malformed: the whole body as 200 is allowed
    first, last = m.groups()
    if first == "" and last == "":
        return None
    huge = size + 1  # any number too long to parse is past every file
    if first == "":
        length = _digits(last)
        length = huge if length is None else length
        if length == 0:
            return "unsatisfiable"
        return max(0, size - length), size - 1
    start = _digits(first)
    end = None if last == "" else _digits(last)
    if start is not None and last != "" and end is not None and end < start:
        return None  # an invalid range is ignored: the whole body
    if start is None or start >= size:
        return "unsatisfiable"
    return start, size - 1 if last == "" else min(huge if end is None else end, size - 1)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.1"  # errors for unparseable request lines keep their status line
    server_version = "serve"
    timeout = 60  # a client silent this long loses its connection, others keep being served
    disable_nagle_algorithm = True  # headers and body go out at once, not 40 ms apart (delayed ACK)

    # -- plumbing ---------------------------------------------------------------------------------
    def log_message(self, format: str, *args) -> None:  # noqa: A002 (stdlib name)
        if self.server.verbose:
            super().log_message(format, *args)

    def _record(self, status: int, byte_range: str | None, sent: int) -> None:
        self.server.request_log.append({"path": self.path, "method": self.command, "status": status,
                                        "range": byte_range, "bytes_sent": sent,
                                        "time": time.time()})

    def send_response(self, code: int, message: str | None = None) -> None:
        """As the standard one, without the Server banner (no software versions)."""
        self.log_request(code)
        self.send_response_only(code, message)
        self.send_header("Date", self.date_time_string())

    def _cors(self) -> dict[str, str]:
        """CORS headers only for an Origin the server was told to allow (--cors)."""
        origin = self.headers.get("Origin")
        allowed = self.server.cors_origins
        if not origin or not allowed:
            return {}
        if "*" in allowed:
            return {"Access-Control-Allow-Origin": "*", **CORS_EXPOSE}
        if origin in allowed:
            return {"Access-Control-Allow-Origin": origin, **CORS_EXPOSE}
        return {}

    def _send_head(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in {**SAFETY_HEADERS, **self._cors(), **self.server.extra_headers, **headers}.items():
            self.send_header(name, value)
        self.end_headers()

    def _refused(self) -> bool:
        """Answer requests for another Host (DNS rebinding) and GETs with bodies; True if answered."""
        allowed = self.server.allowed_hosts
        host = (self.headers.get("Host") or "").strip().lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        name = name.strip("[]")
        if allowed is not None and name not in allowed:
            self.close_connection = True
            self._send_error(HTTPStatus.MISDIRECTED_REQUEST, "unknown Host")
            return True
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True  # a body we will not parse must not be read as a request
        length = self.headers.get("Content-Length")
        if length is not None:
            if not length.strip().isdigit() or int(length) > MAX_IGNORED_BODY:
                self.close_connection = True
                self._send_error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "no body expected")
                return True
            self.rfile.read(int(length))  # dropped, so the next request starts where it should
        return False

    def _send_error(self, status: HTTPStatus, message: str) -> None:
        body = f"{status.value} {status.phrase}: {message}\n".encode()
        self._send_head(status, {"Content-Type": "text/plain; charset=utf-8",
                                 "Content-Length": str(len(body)), "Cache-Control": "no-store"})
        if self.command != "HEAD":
            self.wfile.write(body)
        self._record(status, None, len(body))

    # -- methods ----------------------------------------------------------------------------------
    def do_OPTIONS(self) -> None:
        if self._refused():
            return
        preflight = CORS_PREFLIGHT if self._cors() else {}
        self._send_head(HTTPStatus.NO_CONTENT, {**preflight, "Content-Length": "0"})
        self._record(204, None, 0)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        if not self._refused():
            self._get()

    def _get(self) -> None:
        split = urllib.parse.urlsplit(self.path)
        try:
            url_path = urllib.parse.unquote(split.path, errors="strict")
        except UnicodeDecodeError:
            return self._send_error(HTTPStatus.BAD_REQUEST, "path is not valid UTF-8")
        if "%" in url_path and re.search(r"%[0-9a-fA-F]{2}", url_path):
            # double-encoded input ("%252e%252e") decodes to another escape: never decode twice
            return self._send_error(HTTPStatus.BAD_REQUEST, "path is encoded more than once")
        folder, _, last = url_path.rpartition("/")
        if "," in last and url_path.startswith("/dicomweb/"):
            return self._serve_frame_list(folder, last)
        path, in_data = self.server.mounts.resolve(url_path)
        if path is None:
            return self._send_error(HTTPStatus.NOT_FOUND, "no such file")
        try:
            st = path.stat()
        except OSError:
            return self._send_error(HTTPStatus.NOT_FOUND, "no such file")
        ctype, stored_gzip = content_type_for(path, in_data)
        if in_data:  # patient data: never in a shared cache, never run or framed
            policy = {"Cache-Control": "private, no-cache", "Content-Security-Policy": DATA_CSP}
        elif path == self.server.mounts.files["/index.html"]:  # the app (its inline scripts are hashed)
            policy = {"Content-Security-Policy": self.server.csp()}
        else:
            policy = {}
        self._serve_file(path, st, ctype, stored_gzip, policy)

    def _serve_file(self, path: Path, st: os.stat_result, ctype: str, stored_gzip: bool,
                    policy: dict[str, str]) -> None:
        accepts_gzip = "gzip" in (self.headers.get("Accept-Encoding") or "").lower()
        # a stored .gz goes out as it is (Content-Encoding: gzip, ranges on the stored bytes) to
        # clients that take gzip; it is never compressed again
        encoded = stored_gzip and accepts_gzip
        etag = f'"{st.st_mtime_ns:x}-{st.st_size:x}"'
        last_modified = email.utils.formatdate(st.st_mtime, usegmt=True)
        common = {"Content-Type": ctype, "Last-Modified": last_modified, "Accept-Ranges": "bytes",
                  "Cache-Control": "no-cache", **policy,
                  "Vary": "Origin, Accept-Encoding" if self.server.cors_origins else "Accept-Encoding"}
        if encoded:
            common["Content-Encoding"] = "gzip"
        if self._not_modified(etag, st, common):
            return None
        if stored_gzip and not accepts_gzip:
            return self._send_stream(_inflate(path), {**common, "ETag": etag[:-1] + '-id"'})
        range_header = self.headers.get("Range")
        if range_header and self.headers.get("If-Range") not in (None, etag, last_modified):
            range_header = None  # the client's partial copy is stale: send the whole file
        byte_range = parse_range(range_header, st.st_size)
        if byte_range == "unsatisfiable":
            self._send_head(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE,
                            {"Content-Range": f"bytes */{st.st_size}", "Content-Length": "0",
                             "Content-Type": ctype, **policy})
            return self._record(416, range_header, 0)
        if byte_range is not None:
            start, end = byte_range
            length = end - start + 1
            self._send_head(HTTPStatus.PARTIAL_CONTENT,
                            {**common, "ETag": etag, "Content-Length": str(length),
                             "Content-Range": f"bytes {start}-{end}/{st.st_size}"})
            sent = 0 if self.command == "HEAD" else self._copy(path, start, length)
            return self._record(206, range_header, sent)
        if encoded:
            return self._send_body_file(path, st, {**common, "ETag": etag})
        if accepts_gzip and is_compressible(ctype, path) and st.st_size > 512:
            return self._send_gzip(path, st, {**common, "ETag": etag[:-1] + '-gz"',
                                              "Content-Encoding": "gzip"})
        self._send_body_file(path, st, {**common, "ETag": etag})

    def _serve_frame_list(self, folder: str, numbers: str) -> None:
        """``frames/1,3,5``: a part per frame, in the order asked. A Range header is ignored
        (RFC 9110 allows it): the whole list is answered with 200, never a part of it."""
        try:
            answer = frame_list(self.server.mounts, folder, parse_frame_numbers(numbers))
        except FrameListError as exc:
            return self._send_error(exc.status, str(exc))
        self._send_head(HTTPStatus.OK, {"Content-Type": answer.content_type, "Content-Length": str(answer.length),
                                        "Cache-Control": "private, no-cache", "Content-Security-Policy": DATA_CSP})
        sent = 0
        if self.command != "HEAD":
            for head, part in zip(answer.heads(), answer.parts):
                try:
                    self.wfile.write(head)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True
                    break
                copied = self._copy(part.path, part.start, part.length)
                sent += len(head) + copied
                if copied < part.length:  # the file changed under us: the peer sees a cut body
                    self.close_connection = True
                    break
            else:
                try:
                    self.wfile.write(answer.closing)
                    sent += len(answer.closing)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True
        self._record(200, self.headers.get("Range"), sent)

    def _not_modified(self, etag: str, st: os.stat_result, common: dict[str, str]) -> bool:
        """Answer 304 when the client's copy is current; True if answered."""
        inm = self.headers.get("If-None-Match")
        fresh = False
        if inm is not None:
            tags = {t.strip().removeprefix("W/") for t in inm.split(",")}
            fresh = "*" in tags or bool({etag, etag[:-1] + '-gz"', etag[:-1] + '-id"'} & tags)
        elif self.headers.get("If-Modified-Since"):
            try:
                since = email.utils.parsedate_to_datetime(self.headers["If-Modified-Since"]).timestamp()
                fresh = int(st.st_mtime) <= since
            except (TypeError, ValueError, OverflowError):
                fresh = False
        if fresh:
            self._send_head(HTTPStatus.NOT_MODIFIED, {**common, "ETag": etag})
            self._record(304, None, 0)
        return fresh

    def _send_gzip(self, path: Path, st: os.stat_result, headers: dict[str, str]) -> None:
        """A precompressed twin, a cached small body, or (large files) a gzip stream: bounded memory."""
        pre = path.with_name(path.name + ".gz")
        if pre.is_file() and pre.stat().st_mtime >= st.st_mtime:
            return self._send_body_file(pre, pre.stat(), headers)
        if st.st_size <= GZIP_CACHE_ITEM_LIMIT:
            return self._send_bytes(self.server.gzip_cache.get(path, st), headers)
        self._send_stream(_deflate(path), headers)

    def _send_stream(self, blocks, headers: dict[str, str]) -> None:
        """A body of unknown length, chunked, produced block by block (never held whole)."""
        self._send_head(HTTPStatus.OK, {**headers, "Transfer-Encoding": "chunked"})
        sent = 0
        if self.command != "HEAD":
            try:
                for block in blocks:
                    if block:
                        self.wfile.write(b"%x\r\n%b\r\n" % (len(block), block))
                        sent += len(block)
                self.wfile.write(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True
            except (OSError, EOFError, zlib.error):
                self.close_connection = True  # a corrupt stored .gz: the peer sees a cut body
        self._record(200, None, sent)

    def _send_bytes(self, body: bytes, headers: dict[str, str]) -> None:
        self._send_head(HTTPStatus.OK, {**headers, "Content-Length": str(len(body))})
        if self.command != "HEAD":
            self.wfile.write(body)
        self._record(200, None, 0 if self.command == "HEAD" else len(body))

    def _send_body_file(self, path: Path, st: os.stat_result, headers: dict[str, str]) -> None:
        self._send_head(HTTPStatus.OK, {**headers, "Content-Length": str(st.st_size)})
        sent = 0 if self.command == "HEAD" else self._copy(path, 0, st.st_size)
        self._record(200, None, sent)

    def _copy(self, path: Path, start: int, length: int) -> int:
        sent = 0
        with path.open("rb") as fh:
            fh.seek(start)
            while sent < length:
                block = fh.read(min(SEND_BLOCK, length - sent))
                if not block:
                    break
                try:
                    self.wfile.write(block)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True
                    break
                sent += len(block)
        return sent


@dataclass(frozen=True)
class Policy:
    """Who may use the server: CORS origins, Host names, page connect-src, connection cap."""

    cors_origins: tuple[str, ...] = ()
    """Origins whose pages may read answers (``*`` for any); none: same-origin only."""
    allowed_hosts: frozenset[str] | None = None
    """Host header names answered; None: any (a non-loopback bind behind its own name)."""
    connect_src: tuple[str, ...] = ()
    """Other origins the page may fetch studies from (its CSP connect-src)."""
    max_connections: int = MAX_CONNECTIONS


def default_hosts(host: str, extra: tuple[str, ...] = ()) -> frozenset[str] | None:
    """Loopback binds answer loopback names only (DNS rebinding); others answer any Host."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host.lower() == "localhost"
    if not loopback:
        return frozenset(h.lower() for h in extra) or None
    return LOOPBACK_HOSTS | {host.lower()} | {h.lower() for h in extra}


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address, mounts: Mounts, *, verbose: bool = False,
                 extra_headers: dict[str, str] | None = None, policy: Policy | None = None) -> None:
        super().__init__(address, Handler)
        self.mounts = mounts
        self.verbose = verbose
        self.extra_headers = extra_headers or {}
        self.request_log: collections.deque[dict] = collections.deque(maxlen=100_000)
        self.gzip_cache = GzipCache()
        policy = policy or Policy(allowed_hosts=default_hosts(address[0]))
        self.cors_origins = policy.cors_origins
        self.allowed_hosts = policy.allowed_hosts
        self.connect_src = policy.connect_src
        self._slots = threading.BoundedSemaphore(policy.max_connections)
        self._csp: tuple[int, str] | None = None

    def csp(self) -> str:
        """The page's CSP, recomputed when index.html changes (its inline scripts' hashes)."""
        index = self.mounts.files["/index.html"]
        try:
            stamp = index.stat().st_mtime_ns
        except OSError:
            stamp = 0
        if self._csp is None or self._csp[0] != stamp:
            self._csp = (stamp, app_csp(index, self.connect_src))
        return self._csp[1]

    def process_request(self, request, client_address) -> None:
        """One thread per connection, at most ``max_connections``; beyond that a quick 503."""
        if not self._slots.acquire(blocking=False):
            try:
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n"
                                b"Content-Length: 0\r\nConnection: close\r\n\r\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"


def make_server(host: str = "127.0.0.1", port: int = 8000, *, project_root: Path = PROJECT,
                data_root: Path = DEFAULT_DATA, verbose: bool = False,
                isolate: bool = False, cors: tuple[str, ...] = (), allow_hosts: tuple[str, ...] = (),
                connect_src: tuple[str, ...] = (), max_connections: int = MAX_CONNECTIONS) -> Server:
    """A ready server (not yet serving): call ``serve_forever`` (in a thread for tests)."""
    policy = Policy(cors_origins=tuple(cors), allowed_hosts=default_hosts(host, tuple(allow_hosts)),
                    connect_src=tuple(connect_src), max_connections=max_connections)
    extra = {}
    if isolate:  # cross-origin isolation: lets a Python worker touch the DOM (SharedArrayBuffer)
        extra = {"Cross-Origin-Opener-Policy": "same-origin",
                 "Cross-Origin-Embedder-Policy": "require-corp",
                 "Cross-Origin-Resource-Policy": "cross-origin"}
    return Server((host, port), Mounts(project_root, data_root), verbose=verbose, extra_headers=extra,
                  policy=policy)


def ensure_python_packages() -> None:
    """Install the CPython packages the converter needs (numpy, pydicom, imagecodecs) if missing."""
    try:
        import imagecodecs  # noqa: F401
        import numpy  # noqa: F401
        import pydicom  # noqa: F401
    except ImportError:
        print("setup: installing Python packages from requirements.txt", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r",
                        str(PROJECT / "requirements.txt")], check=True)


def run_setup(data_root: Path) -> None:
    """First-start set-up: runtime under static/ and, for the default data folder, the demo study."""
    sys.path.insert(0, str(PROJECT))
    from tools.setup_runtime import ensure_runtime

    ensure_runtime()
    if data_root.resolve() == DEFAULT_DATA.resolve():
        ensure_python_packages()
        from tools.demo_data import ensure_demo_data

        ensure_demo_data(PROJECT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve the progressive DICOM viewer.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any free)")
    parser.add_argument("--root", type=Path, default=DEFAULT_DATA,
                        help="data folder served at /dicomweb/ (default: the demo study)")
    parser.add_argument("--no-setup", action="store_true", help="skip the first-start set-up")
    parser.add_argument("--isolate", action="store_true",
                        help="send COOP/COEP headers (cross-origin isolation)")
    parser.add_argument("--cors", nargs="+", default=(), metavar="ORIGIN",
                        help="let pages of these origins read the data (e.g. http://viewer.example; "
                             "'*' for any). Default: same origin only")
    parser.add_argument("--allow-host", nargs="+", default=(), metavar="NAME",
                        help="Host names to answer besides loopback ones (a loopback bind refuses others)")
    parser.add_argument("--connect-src", nargs="+", default=(), metavar="ORIGIN",
                        help="other DICOMweb origins the page may load studies from (its CSP)")
    parser.add_argument("--max-connections", type=int, default=MAX_CONNECTIONS,
                        help=f"connections served at once (default {MAX_CONNECTIONS}); more get 503")
    parser.add_argument("--verbose", "-v", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    if not args.no_setup:
        run_setup(args.root)
    server = make_server(args.host, args.port, data_root=args.root, verbose=args.verbose,
                         isolate=args.isolate, cors=tuple(args.cors), allow_hosts=tuple(args.allow_host),
                         connect_src=tuple(args.connect_src), max_connections=args.max_connections)
    print(f"Serving the viewer at {server.url}  (data: {args.root}; Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
