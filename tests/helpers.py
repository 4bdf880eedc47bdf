"""Helpers shared by the tests (h11 ``tests/helpers.py`` style): byte splitting for property
tests, engine settings from short keyword arguments, a small CT series, and two fake loopback
servers: ``OddServer`` (a static server that bends Range rules) and ``ScriptedServer`` (a static
server whose answers for one image's frames follow a script)."""

from __future__ import annotations

import gzip
import re
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

from app.engine import RetrievePolicy

__all__ = ["stored_file", "stored_frames", "split", "engine_options", "ct_series", "Behaviour", "OddServer", "Action", "Script",
           "ScriptedServer", "ScriptedHandler"]


def stored_file(root: Path, rel: str) -> Path:
    """The file a static server answers ``rel`` with: as named, the toolkit's ``{n}.mht``, or ``.gz``."""
    for name in (rel, rel + ".mht", rel + ".gz"):
        if (root / name).is_file():
            return root / name
    return root / rel


def stored_frames(root: Path, pattern: str) -> list[Path]:
    """Frame files matching ``pattern`` (ending in ``/{n}``) in either layout: ``{n}`` or ``{n}.mht``."""
    return sorted(root.glob(pattern)) + sorted(root.glob(pattern + ".mht"))


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (taken modulo its length + 1); empty pieces kept."""
    cuts = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for c in cuts + [len(data)]:
        pieces.append(data[last:c])
        last = c
    return pieces


def engine_options(**kwargs) -> dict:
    """RetrieveEngine keyword arguments from short ones: RetrievePolicy fields (and
    ``low_speed=(bytes, seconds)``) go into ``policy``; the rest (viewport, on_event) pass on."""
    fields = set(RetrievePolicy.__dataclass_fields__)
    if "low_speed" in kwargs:
        kwargs["low_speed_bytes"], kwargs["low_speed_seconds"] = kwargs.pop("low_speed")
    settings = {k: kwargs.pop(k) for k in list(kwargs) if k in fields}
    return {"policy": RetrievePolicy(**settings), **kwargs}


def ct_series(folder: Path, count: int, *, series_uid: str | None = None):
    """``count`` copies of pydicom's CT_small as one series (new UIDs, positions along z);
    returns (paths, the dataset as last written)."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    source = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    series = series_uid or generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number in range(1, count + 1):
        source.SOPInstanceUID = generate_uid()
        source.file_meta.MediaStorageSOPInstanceUID = source.SOPInstanceUID
        source.SeriesInstanceUID = series
        source.InstanceNumber = number
        source.ImagePositionPatient = [0, 0, number]
        path = folder / f"ct{number}.dcm"
        source.save_as(path)
        paths.append(path)
    return paths, source


def tree_file(root: Path, request_path: str) -> tuple[str, Path]:
    """(URL path, file) of a request under ``/dicomweb`` in a converted tree (either frame layout)."""
    path = request_path.split("?")[0]
    return path, stored_file(root, path.removeprefix("/dicomweb").lstrip("/"))


def frame_content_type(data: bytes) -> str:
    """The Content-Type a DICOMweb server gives a stored frame file (multipart if it is one)."""
    if data.startswith(b"--"):
        boundary = data[2: data.index(b"\r\n")].decode()
        return f'multipart/related; type="application/octet-stream"; boundary={boundary}'
    return "application/octet-stream"


class QuietHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive, no Nagle delay, no log lines."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args) -> None:
        pass

    def _head(self, status: int, headers: dict) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()


# -- OddServer -------------------------------------------------------------------------------------


class Behaviour:
    def __init__(self, **kw) -> None:
        self.ignore_range = False  # always 200 with the whole file
        self.full_after_first_range = False  # 206 for the first Range request of a file, then 200
        self.no_content_range = False  # 206 without Content-Range
        self.delay = 0.0  # seconds per 16 KB
        self.missing: set[str] = set()  # path fragments answered with 404
        self.__dict__.update(kw)


class _OddHandler(QuietHandler):

    def do_GET(self) -> None:  # noqa: N802
        srv = self.server
        b: Behaviour = srv.behaviour
        path, file = tree_file(srv.root, self.path)
        entry = {"path": path, "status": 404, "range": self.headers.get("Range"), "bytes_sent": 0, "aborted": False}
        srv.log.append(entry)
        if any(m in path for m in b.missing) or not file.is_file():
            self._head(404, {"Content-Length": "0"})
            return
        data = file.read_bytes()
        ctype = frame_content_type(data)
        rng = self.headers.get("Range")
        status, start, end = 200, 0, len(data) - 1
        m = re.match(r"bytes=(\d+)-(\d*)$", rng or "")
        honour = m and not b.ignore_range and not (b.full_after_first_range and srv.ranges_seen.get(path))
        if m:
            srv.ranges_seen[path] = srv.ranges_seen.get(path, 0) + 1
        headers = {"Content-Type": ctype, "Accept-Ranges": "bytes"}
        if honour:
            start = int(m.group(1))
            end = min(int(m.group(2)) if m.group(2) else len(data) - 1, len(data) - 1)
            if start >= len(data):
                entry["status"] = 416
                self._head(416, {"Content-Range": f"bytes */{len(data)}", "Content-Length": "0"})
                return
            status = 206
            if not b.no_content_range:
                headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        body = data[start : end + 1]
        headers["Content-Length"] = str(len(body))
        entry["status"] = status
        self._head(status, headers)
        try:
            for i in range(0, len(body), 16384):
                if b.delay:
                    time.sleep(b.delay)
                self.wfile.write(body[i : i + 16384])
                entry["bytes_sent"] += len(body[i : i + 16384])
        except (BrokenPipeError, ConnectionResetError):
            entry["aborted"] = True
            self.close_connection = True



class OddServer:
    def __init__(self, root: Path, behaviour: Behaviour) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _OddHandler)
        self.httpd.daemon_threads = True
        self.httpd.root = root
        self.httpd.behaviour = behaviour
        self.httpd.log = []
        self.httpd.ranges_seen = {}
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/dicomweb"

    @property
    def log(self) -> list[dict]:
        return self.httpd.log

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# -- ScriptedServer ----------------------------------------------------------------------------------


class Action:
    """What the server does with one frame request (None: answer it properly)."""

    def __init__(self, kind: str, **kw) -> None:
        self.kind = kind
        self.__dict__.update(kw)


Script = Callable[[str, int, str | None], Action | None]  # (path, nth request of it, Range) -> action


class ScriptedHandler(QuietHandler):

    def do_GET(self) -> None:  # noqa: N802
        srv = self.server
        path, file = tree_file(srv.root, self.path)
        rng = self.headers.get("Range")
        with srv.lock:
            srv.counts[path] = n = srv.counts.get(path, 0) + 1
            srv.log.append({"path": path, "range": rng, "n": n})
        if not file.is_file():
            return self._send(404, b"", {})
        data = file.read_bytes()
        ctype = frame_content_type(data)
        action = srv.script(path, n, rng) if "/frames/" in path and f"/{srv.hit_sop}/" in path else None
        try:
            self._act(action, data, ctype, rng)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _act(self, a: Action | None, data: bytes, ctype: str, rng: str | None) -> None:
        kind = a.kind if a else "ok"
        if kind == "status":
            return self._send(a.status, b"server trouble\n", {"Content-Type": "text/plain", **a.headers})
        if kind == "cut":  # promise the whole file, send part of it, hang up
            self._head(200, {"Content-Type": ctype, "Content-Length": str(len(data))})
            self.wfile.write(data[: a.after])
            self.wfile.flush()
            self.close_connection = True
            return
        if kind == "reset":  # promise the whole file, send part of it, then a TCP reset (RST)
            self._head(200, {"Content-Type": ctype, "Content-Length": str(len(data))})
            self.wfile.write(data[: a.after])
            self.wfile.flush()
            time.sleep(0.05)  # the bytes go out before the reset
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return
        if kind == "twice_length":  # Content-Length: n, n (as two headers), part of the body, close
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: a.after])
            self.wfile.flush()
            self.close_connection = True
            return
        if kind == "trickle":  # a few bytes, then silence longer than the client's read timeout
            self._head(200, {"Content-Type": ctype, "Content-Length": str(len(data))})
            for i in range(0, min(len(data), 3 * a.step), a.step):
                self.wfile.write(data[i : i + a.step])
                self.wfile.flush()
                time.sleep(a.pause)
            self.close_connection = True
            return
        if kind == "stall":  # headers, then nothing at all
            self._head(200, {"Content-Type": ctype, "Content-Length": str(len(data))})
            self.wfile.flush()
            time.sleep(a.pause)
            self.close_connection = True
            return
        if kind == "drip":  # the whole body, a few bytes at a time, each well inside the read timeout
            self._head(200, {"Content-Type": ctype, "Content-Length": str(len(data))})
            for i in range(0, len(data), a.step):
                self.wfile.write(data[i : i + a.step])
                self.wfile.flush()
                time.sleep(a.pause)
            return
        if kind == "content_range":  # 206 with a Content-Range that lies about the start
            return self._send(206, data, {"Content-Type": ctype, "Content-Range": a.value.format(size=len(data))})
        if kind == "gzip_ranges":  # stored gzip-compressed, sent encoded, Range over the stored bytes
            return self._ranged(gzip.compress(data), rng, {"Content-Type": ctype, "Content-Encoding": "gzip"})
        if kind == "gzip":
            return self._send(200, gzip.compress(data), {"Content-Type": ctype, "Content-Encoding": "gzip"})
        if kind == "ctype":
            return self._send(200, data, {"Content-Type": a.value})
        if kind == "encoding":  # a Content-Encoding the client never asked for
            return self._send(200, data, {"Content-Type": ctype, "Content-Encoding": a.value})
        if kind == "body":  # another body, properly framed
            return self._send(200, a.make(data), {"Content-Type": ctype})
        if kind == "split":  # a good prefix, a pause, then another tail
            body = a.make(data)
            self._head(200, {"Content-Type": ctype, "Content-Length": str(len(body))})
            self.wfile.write(body[: a.at])
            self.wfile.flush()
            time.sleep(a.pause)
            self.wfile.write(body[a.at :])
            return
        if kind == "endless":  # a chunked body that never ends
            self._head(200, {"Content-Type": ctype, "Transfer-Encoding": "chunked"})
            block = data[: a.block] or b"x" * a.block
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))
            self.close_connection = True
            return
        if kind == "full":  # ignore Range
            return self._send(200, data, {"Content-Type": ctype})
        self._ranged(data, rng, {"Content-Type": ctype})

    def _ranged(self, data: bytes, rng: str | None, headers: dict) -> None:
        """200, or 206/416 for a ``bytes=a-b`` Range over ``data``."""
        m = re.match(r"bytes=(\d+)-(\d*)$", rng or "")
        if not m:
            return self._send(200, data, headers)
        start = int(m.group(1))
        end = min(int(m.group(2)) if m.group(2) else len(data) - 1, len(data) - 1)
        if start >= len(data):
            return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
        return self._send(206, data[start: end + 1], {**headers, "Content-Range": f"bytes {start}-{end}/{len(data)}"})


    def _send(self, status: int, body: bytes, headers: dict) -> None:
        self._head(status, {**headers, "Content-Length": str(len(body))})
        self.wfile.write(body)


class ScriptedServer:
    def __init__(self, root: Path, hit_sop: str, script: Script) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), ScriptedHandler)
        self.httpd.daemon_threads = True
        self.httpd.root = root
        self.httpd.hit_sop = hit_sop
        self.httpd.script = script
        self.httpd.counts = {}
        self.httpd.log = []
        self.httpd.lock = threading.Lock()
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/dicomweb"

    def hits(self) -> list[dict]:
        return [e for e in self.httpd.log if f"/{self.httpd.hit_sop}/" in e["path"] and "/frames/" in e["path"]]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# -- a DICOMweb site in memory, for MockTransport ------------------------------------------------------

BASE = "http://mock.test/dicomweb/studies/1.2.3/series/1.2.3.4"


def image_pixels(rows: int = 256, columns: int = 256, seed: int = 0, dtype="<u2"):
    """A smooth image with noise (so every resolution level carries bytes)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:columns]
    top = 255 if np.dtype(dtype).itemsize == 1 else 4000
    base = (x * 3 + y * 5 + seed * 17) % top
    return (base + rng.integers(0, 16, (rows, columns))).clip(0, top).astype(dtype)


def htj2k_frame(pixels) -> bytes:
    """A lossless RPCL HTJ2K codestream with TLM, as the converter writes it."""
    from app.convert import _htj2k_lossless

    return bytes(_htj2k_lossless(pixels).codestream)


def multipart_frame(data: bytes, syntax: str, boundary: str = "B0UNDARY") -> tuple[bytes, str]:
    """A single-part multipart/related body (bytes, Content-Type) as DICOMweb serves frames."""
    head = f"--{boundary}\r\nContent-Type: application/octet-stream; transfer-syntax={syntax}\r\n\r\n"
    body = head.encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="application/octet-stream"; boundary={boundary}'


def instance_json(sop: str, number: int, rows: int, columns: int, syntax: str, bits: int = 16) -> dict:
    def el(vr, *values):
        return {"vr": vr, "Value": list(values)}

    return {
        "0020000D": el("UI", "1.2.3"), "0020000E": el("UI", "1.2.3.4"), "00080018": el("UI", sop),
        "00280010": el("US", rows), "00280011": el("US", columns), "00280100": el("US", bits),
        "00280101": el("US", bits), "00280103": el("US", 0), "00280002": el("US", 1),
        "00280004": el("CS", "MONOCHROME2"), "00200013": el("IS", number),
        "00200032": el("DS", 0, 0, number), "00200037": el("DS", 1, 0, 0, 0, 1, 0),
        "00083002": el("UI", syntax), "7FE00010": {"vr": "OB", "BulkDataURI": f"instances/{sop}/frames"},
    }


class Site:
    """Frames (and JSON documents) by URL, answered like a static server; ``script(request, n)``
    may answer instead (n: how many times that URL was asked for, from 1)."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, str, dict]] = {}
        self.counts: dict[str, int] = {}
        self.script = None
        self.pixels: list = []
        self.metadata: list[dict] = []

    def add_frame(self, index: int, pixels, data: bytes, syntax: str, *, multipart: bool = True) -> str:
        sop = f"1.2.3.4.{index + 1}"
        url = f"{BASE}/instances/{sop}/frames/1"
        body, ctype = multipart_frame(data, syntax) if multipart else (data, "application/octet-stream")
        self.files[url] = (body, ctype, {})
        self.pixels.append(pixels)
        self.metadata.append(instance_json(sop, index + 1, *pixels.shape[:2], syntax, pixels.dtype.itemsize * 8))
        return url

    def stack(self):
        from app.study import stack_from_metadata

        return stack_from_metadata(self.metadata, BASE)

    def handler(self, request):
        from app.transport.mock import MockResponse, serve_bytes

        url = request.url.split("?")[0]
        n = self.counts[url] = self.counts.get(url, 0) + 1
        if self.script is not None:
            answer = self.script(request, n)
            if answer is not None:
                return answer
        if url not in self.files:
            return MockResponse(404, {"content-length": "0"})
        body, ctype, headers = self.files[url]
        return serve_bytes(request, body, ctype, headers=headers)

    def transport(self):
        from app.transport.mock import MockTransport

        return MockTransport(self.handler)


def run_mock(site: "Site", config, *, transport=None, control=None, indices=None, **options):
    """Run a RetrieveEngine over ``site`` with a MockTransport; (events, engine, transport)."""
    import asyncio

    from app.engine import RetrieveEngine

    transport = transport or site.transport()

    async def main():
        engine = RetrieveEngine(site.stack(), config, transport, **engine_options(**options))
        events = []
        async for event in engine.run(indices):
            events.append(event)
            if control is not None:
                control(engine, event)
        return events, engine

    events, engine = asyncio.run(asyncio.wait_for(main(), 30))
    return events, engine, transport
