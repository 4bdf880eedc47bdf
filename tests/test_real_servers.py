"""End to end against real servers started for the test, on 127.0.0.1 only.

* ``orthanc``: Debian's Orthanc with its DICOMweb plugin (``/dicom-web/``), loaded with the demo
  DICOM files as they are (Explicit VR Little Endian) and as JPEG-LS and HTJ2K (.202) encapsulated
  copies; the engine loads them through QIDO-RS, series metadata and WADO-RS frames
  (``transfer-syntax=*``), in CPython and in the page, behind ``deploy/nginx/orthanc-proxy.conf``
  (one origin for the app and Orthanc: Orthanc sends no CORS headers).
* ``nginx``: ``deploy/nginx/static-dicomweb.conf`` serving the app and the converted demo tree.

Servers come from ``bash tools/install_servers.sh``. A server that cannot start FAILS the test with
its log (never a skip). Final pixels are compared with the source files' stored values.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from conftest import PROJECT, wait_for_app_state
from helpers import stored_file

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
PLUGINS = Path("/usr/share/orthanc/plugins")
DEMO = PROJECT / ".cache" / "demo"
DEPLOY = PROJECT / "deploy" / "nginx"
ACCEPT_ANY = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
RADIOGRAPH_STUDY = "1.3.51.0.7.3365391312.43587.56128.48966.50782.31553.14805"
MR_STUDY = "0.0.0.0.2.8811.20010413115754.12432"
HTJ2K_RPCL = "1.2.840.10008.1.2.4.202"
JPEG_LS = "1.2.840.10008.1.2.4.80"


# -- helpers ----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Proc:
    """A server subprocess with its log file; ``fail`` ends the test with the log."""

    name: str
    popen: subprocess.Popen
    log: Path
    extra_logs: list = field(default_factory=list)

    def text(self) -> str:
        parts = []
        for path in [self.log, *self.extra_logs]:
            if Path(path).exists():
                parts.append(f"--- {path} ---\n" + Path(path).read_text(errors="replace")[-6000:])
        return "\n".join(parts)

    def fail(self, why: str):
        pytest.fail(f"{self.name}: {why}\n{self.text()}", pytrace=False)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)


def start(name: str, argv: list[str], log: Path, ready_url: str, *, extra_logs=(), timeout=30.0) -> Proc:
    if not Path(argv[0]).exists():
        pytest.fail(f"{argv[0]} is missing: run `bash tools/install_servers.sh`", pytrace=False)
    out = open(log, "wb")
    proc = Proc(name, subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL),
                log, list(extra_logs))
    deadline = time.monotonic() + timeout
    while True:
        if proc.popen.poll() is not None:
            proc.fail(f"exited with {proc.popen.returncode} before answering {ready_url}")
        try:
            with urllib.request.urlopen(ready_url, timeout=2) as resp:
                resp.read()
                return proc
        except urllib.error.HTTPError:
            return proc  # it answers HTTP: up
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.stop()
            proc.fail(f"no answer at {ready_url} within {timeout:.0f} s")
        time.sleep(0.1)


def http(url: str, *, headers=None, method="GET", data=None):
    """(status, headers, body) without raising on HTTP errors."""
    req = urllib.request.Request(url, headers=headers or {}, method=method, data=data)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def render(template: Path, out: Path, **values: str) -> Path:
    text = template.read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    assert "@" not in "".join(l for l in text.splitlines() if not l.lstrip().startswith("#")), \
        f"{template.name}: placeholder left"
    out.write_text(text)
    return out


def start_nginx(prefix: Path, template: Path, port: int, **values: str) -> Proc:
    for sub in ("logs", "tmp"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    conf = render(template, prefix / "nginx.conf", LISTEN=f"127.0.0.1:{port}", **values)
    return start("nginx", [NGINX, "-p", str(prefix), "-c", str(conf)], prefix / "stdout.log",
                 f"http://127.0.0.1:{port}/index.html", extra_logs=[prefix / "logs" / "error.log"])


def cli_load(url: str, config: str, timeout=120) -> tuple[int, list[dict], str]:
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "app", "load", url, "--config", config],
                          cwd=PROJECT, capture_output=True, text=True, timeout=timeout)
    wall = (time.perf_counter() - t0) * 1000
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return done.returncode, events, done.stderr + f"\n(wall {wall:.0f} ms)"


def finals(events: list[dict]) -> dict[str, dict]:
    return {e["sop_instance_uid"]: e for e in events if e["event"] == "Refinement" and e["final"]}


def stored_sha(ds) -> str:
    """sha256 of the source's stored values, masked to BitsStored, in the dtype the codecs give."""
    bits, signed = int(ds.BitsStored), int(ds.PixelRepresentation) == 1
    raw = np.frombuffer(ds.PixelData, dtype="<i2" if signed else "<u2").reshape(ds.Rows, ds.Columns)
    if signed:
        shift = 16 - bits
        values = (raw << shift) >> shift if shift else raw
    else:
        values = raw & ((1 << bits) - 1)
    return hashlib.sha256(np.ascontiguousarray(values, values.dtype.newbyteorder("<")).tobytes()).hexdigest()


# -- Orthanc -------------------------------------------------------------------------------------------


@dataclass
class OrthancSeries:
    study: str
    series: str
    transfer_syntax: str
    expected: dict  # SOPInstanceUID -> sha256 of the source's stored values


@dataclass
class OrthancServer:
    proc: Proc
    url: str  # http://127.0.0.1:PORT
    series: dict  # (name, variant) -> OrthancSeries
    upload_ms: float


def encoded_variants(path: Path, variants: tuple[str, ...]):
    """The source file as stored, and encapsulated JPEG-LS / HTJ2K copies (new series/SOP UIDs)."""
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import generate_uid

    from app.codecs import PixelFormat, decode_frame
    from app.convert import ALTERNATES, EncodeSettings, FrameImage

    source = pydicom.dcmread(path)
    sha = stored_sha(source)
    for variant in variants:
        ds = pydicom.dcmread(path)
        if variant == "native":  # the file exactly as it is
            yield variant, ds, sha, path.read_bytes()
            continue
        for tag in [t for t in ds.keys() if t.group == 0]:  # stray command elements
            del ds[tag]
        fmt = PixelFormat.from_dataset(ds)
        pixels = decode_frame(ds.PixelData, ds.file_meta.TransferSyntaxUID, fmt)
        alternate = ALTERNATES[variant]  # frames = HTJ2K .202 RPCL+TLM, jls = JPEG-LS lossless
        encoded = alternate.encode(FrameImage(pixels), fmt, EncodeSettings())
        ds.PixelData = encapsulate([encoded.codestream])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = alternate.transfer_syntax
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=[str(source.SeriesInstanceUID), variant])
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[str(source.SOPInstanceUID), variant])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesDescription = f"{source.get('SeriesDescription', '')} {variant}".strip()
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        yield variant, ds, sha, buf.getvalue()


def orthanc_config(tmp: Path, port: int) -> Path:
    storage = tmp / "storage"
    storage.mkdir()
    config = {
        "Name": "viewer-test",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "HttpPort": port,
        "RemoteAccessAllowed": False,  # loopback clients only
        "AuthenticationEnabled": False,
        "DicomServerEnabled": False,  # no DICOM port
        "DicomPort": free_port(),
        "HttpCompressionEnabled": False,  # never gzip frames (nginx also asks for identity)
        "StorageCompression": False,
        "Plugins": [str(PLUGINS / "libOrthancDicomWeb.so"), str(PLUGINS / "libOrthancGdcm.so")],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False,
                     "StudiesMetadata": "Full", "SeriesMetadata": "Full"},
    }
    path = tmp / "orthanc.json"
    path.write_text(json.dumps(config, indent=2))
    return path


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("orthanc")
    port = free_port()
    conf = orthanc_config(tmp, port)
    proc = start("Orthanc", [ORTHANC, str(conf)], tmp / "orthanc.log",
                 f"http://127.0.0.1:{port}/system")
    url = f"http://127.0.0.1:{port}"
    try:
        status, _, body = http(url + "/plugins")
        if status != 200 or "dicom-web" not in body.decode():
            proc.fail(f"DICOMweb plugin not loaded: /plugins -> {status} {body[:200]!r}")
        series: dict = {}
        t0 = time.perf_counter()
        sources = [(DEMO / "radiograph", "radiograph", ("native", "jls", "frames")),
                   (DEMO / "mr-stack", "mr", ("native", "jls"))]
        for folder, name, variants in sources:
            for path in sorted(folder.glob("*.dcm")):
                for variant, ds, sha, blob in encoded_variants(path, variants):
                    status, _, body = http(url + "/instances", method="POST", data=blob,
                                           headers={"Content-Type": "application/dicom"})
                    if status != 200:
                        proc.fail(f"upload of {path.name} ({variant}) -> HTTP {status}: {body[:300]!r}")
                    entry = series.setdefault((name, variant), OrthancSeries(
                        str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID),
                        str(ds.file_meta.TransferSyntaxUID), {}))
                    entry.expected[str(ds.SOPInstanceUID)] = sha
        upload_ms = (time.perf_counter() - t0) * 1000
        yield OrthancServer(proc, url, series, upload_ms)
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def orthanc_proxy(orthanc, runtime, tmp_path_factory):
    """nginx in front of Orthanc and the app: one origin (deploy/nginx/orthanc-proxy.conf)."""
    port = free_port()
    proc = start_nginx(tmp_path_factory.mktemp("nginx-orthanc"), DEPLOY / "orthanc-proxy.conf", port,
                       APP_ROOT=str(PROJECT), ORTHANC=orthanc.url.split("//")[1])
    try:
        yield f"http://127.0.0.1:{port}", proc
    finally:
        proc.stop()


def series_url(base: str, entry: OrthancSeries) -> str:
    return f"{base}/dicom-web/studies/{entry.study}/series/{entry.series}"


@pytest.mark.orthanc
def test_orthanc_qido_and_metadata_discovery(orthanc):
    """QIDO-RS lists the study and its series; discovery picks the largest series, orders the stack."""
    import asyncio

    from app.study import discover
    from app.transport import default_transport

    async def run():
        transport = default_transport()
        try:
            root = await discover(transport, orthanc.url + "/dicom-web")
            mr = await discover(transport, f"{orthanc.url}/dicom-web/studies/{MR_STUDY}")
            return root, mr
        finally:
            await transport.aclose()

    root, mr = asyncio.run(run())
    assert root.images and root.series_url.startswith(orthanc.url + "/dicom-web/studies/")
    assert len(mr) == 20 and mr.study_uid == MR_STUDY
    positions = [img.position for img in mr.images]
    assert all(positions)
    assert positions in (sorted(positions, key=lambda p: p[2]), sorted(positions, key=lambda p: -p[2]))
    status, headers, _ = http(f"{orthanc.url}/dicom-web/studies?StudyInstanceUID={MR_STUDY}",
                              headers={"Accept": "application/dicom+json"})
    assert status == 200 and headers["Content-Type"].startswith("application/dicom+json")


@pytest.mark.orthanc
@pytest.mark.parametrize("name,variant", [("radiograph", "native"), ("radiograph", "jls"),
                                          ("mr", "native"), ("mr", "jls")])
def test_orthanc_cli_final_pixels_match_source(orthanc, name, variant):
    entry = orthanc.series[(name, variant)]
    url = series_url(orthanc.url, entry)
    rc, events, err = cli_load(url, "nonProgressive")
    got = finals(events)
    assert rc == 0, f"{url}: exit {rc}\n{err}\n{events[-3:]}"
    assert {sop: e["sha256"] for sop, e in got.items()} == entry.expected
    # Orthanc says which syntax it sent in the part's Content-Type: the stored one (no transcoding)
    assert {e["transfer_syntax"] for e in got.values()} == {entry.transfer_syntax}
    last = max(e["t_ms"] for e in got.values())
    print(f"orthanc {name}/{variant}: {len(got)} images final in {last:.0f} ms {err.strip()}")


@pytest.mark.orthanc
def test_orthanc_htj2k_is_refused_not_misdrawn(orthanc):
    """Debian's Orthanc 1.10.1 (DCMTK 3.6.7) does not know the HTJ2K UIDs: it stores the file but
    answers WADO-RS frames with transfer-syntax=* by HTTP 500 ("Unsupported transfer syntax"). The
    viewer must report the image as failed, never show wrong pixels. (Without an Accept header
    Orthanc sends the HTJ2K codestream labelled 1.2.840.10008.1.2.1: the engine always asks with
    transfer-syntax=*.) When Orthanc learns HTJ2K this test fails: then require the sha instead."""
    entry = orthanc.series[("radiograph", "frames")]
    url = series_url(orthanc.url, entry)
    rc, events, err = cli_load(url, "htj2k")
    assert rc != 0
    assert not [e for e in events if e["event"] == "Refinement"]
    failed = [e for e in events if e["event"] == "ImageFailed"]
    assert failed and "HTTP 500" in failed[0]["message"], events[-3:]
    assert "Unsupported transfer syntax: 1.2.840.10008.1.2.4.202" in orthanc.proc.log.read_text(errors="replace")


@pytest.mark.orthanc
def test_orthanc_range_streaming_and_compression(orthanc, orthanc_proxy):
    """Orthanc ignores Range (200, whole frame) and gzips nothing with this config; nginx in front
    answers the same Range with 206 + Content-Range cut from Orthanc's body."""
    proxy, _ = orthanc_proxy
    entry = orthanc.series[("radiograph", "jls")]
    sop = next(iter(entry.expected))
    path = f"/dicom-web/studies/{entry.study}/series/{entry.series}/instances/{sop}/frames/1"
    headers = {"Accept": ACCEPT_ANY, "Range": "bytes=0-65535", "Accept-Encoding": "gzip"}
    status, h, body = http(orthanc.url + path, headers=headers)
    assert status == 200 and "Content-Range" not in h and "Content-Encoding" not in h
    whole = len(body)
    assert 'type="image/jls; transfer-syntax=1.2.840.10008.1.2.4.80"' in h["Content-Type"]
    status, h, body = http(proxy + path, headers=headers)
    assert status == 206 and h["Content-Range"] == f"bytes 0-65535/{whole}" and len(body) == 65536
    assert "Content-Encoding" not in h
    status, h, rest = http(proxy + path, headers={**headers, "Range": "bytes=65536-"})
    assert status == 206 and len(rest) == whole - 65536


@pytest.mark.orthanc
def test_orthanc_cli_through_nginx_proxy(orthanc, orthanc_proxy):
    proxy, _ = orthanc_proxy
    for key in (("mr", "jls"), ("radiograph", "jls")):
        entry = orthanc.series[key]
        rc, events, err = cli_load(series_url(proxy, entry), "single")
        assert rc == 0, f"{err}\n{events[-3:]}"
        assert {sop: e["sha256"] for sop, e in finals(events).items()} == entry.expected


@pytest.mark.orthanc
@pytest.mark.browser
def test_orthanc_page_through_nginx_proxy(orthanc, orthanc_proxy, page):
    """The page, served by nginx beside the proxied Orthanc, loads the MR stack (JPEG-LS) and the
    radiograph (as stored) to their final images, and decodes a frame bit-exactly."""
    proxy, nginx = orthanc_proxy
    for key, config in ((("mr", "jls"), "nonProgressive"), (("radiograph", "native"), "nonProgressive")):
        entry = orthanc.series[key]
        url = f"/dicom-web/studies/{entry.study}/series/{entry.series}"
        t0 = time.perf_counter()
        page.page.goto(f"{proxy}/index.html?url={url}&config={config}")
        wait_for_app_state(page, ("idle",), timeout_ms=90_000)
        log = page.page.evaluate("window.renderLog")
        final = {e["index"] for e in log if e["final"]}
        assert final == set(range(len(entry.expected))), log[-3:]
        print(f"page via nginx+orthanc {key}: idle after {(time.perf_counter() - t0) * 1000:.0f} ms "
              f"(incl. boot), last final at {max(e['t_ms'] for e in log if e['final']):.0f} ms")
        assert page.errors == []
    access = (nginx.log.parent / "logs" / "access.log").read_text()
    assert "/dicom-web/studies/" in access and "/frames/1" in access


# -- nginx static hosting ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def static_nginx(runtime, demo_data, tmp_path_factory):
    manifest = json.loads((demo_data / "dicomweb.json").read_text())
    port = free_port()
    proc = start_nginx(tmp_path_factory.mktemp("nginx-static"), DEPLOY / "static-dicomweb.conf", port,
                       APP_ROOT=str(PROJECT), DATA_ROOT=str(demo_data), BOUNDARY=manifest["boundary"], MHT_TYPES="")
    try:
        yield f"http://127.0.0.1:{port}", proc, manifest
    finally:
        proc.stop()


def demo_entry(demo_data: Path, needle: str) -> dict:
    return next(s for s in json.loads((demo_data / "demo.json").read_text()) if needle in s["name"])


def first_instance_dir(demo_data: Path, entry: dict) -> Path:
    series = demo_data / entry["url"].removeprefix("/dicomweb/")
    return next(p for p in sorted((series / "instances").iterdir()) if p.is_dir())


@pytest.mark.nginx
def test_static_nginx_types_ranges_cors_gzip(static_nginx, demo_data):
    base, _, manifest = static_nginx
    entry = demo_entry(demo_data, "MR")
    instance = first_instance_dir(demo_data, entry)
    rel = "/dicomweb/" + str(instance.relative_to(demo_data))
    gz = {"Accept-Encoding": "gzip"}
    # every alternate's frame files get the Content-Type dicomweb.json names, never gzip
    for name, alt in manifest["alternates"].items():
        if not stored_file(instance / name, "1").is_file():
            continue
        status, h, body = http(f"{base}{rel}/{name}/1", headers={**gz, "Accept": ACCEPT_ANY})
        assert status == 200 and h["Content-Type"] == alt["contentType"], name
        assert "Content-Encoding" not in h and body == stored_file(instance / name, "1").read_bytes()
    # Range: 206 + Content-Range, readable cross-origin
    size = stored_file(instance / "frames", "1").stat().st_size
    status, h, body = http(f"{base}{rel}/frames/1", headers={"Range": "bytes=10-", "Origin": "http://x.test"})
    assert status == 206 and h["Content-Range"] == f"bytes 10-{size - 1}/{size}" and len(body) == size - 10
    assert h["Access-Control-Allow-Origin"] == "*"
    assert "Content-Range" in h["Access-Control-Expose-Headers"] and "Content-Length" in h["Access-Control-Expose-Headers"]
    status, h, _ = http(f"{base}{rel}/frames/1", method="OPTIONS",
                        headers={"Origin": "http://x.test", "Access-Control-Request-Method": "GET",
                                 "Access-Control-Request-Headers": "accept, range"})
    assert status == 204 and "Range" in h["Access-Control-Allow-Headers"]
    # QIDO directories and metadata: DICOM JSON, stored .gz twin when gzip is accepted
    series = entry["url"]
    for path in ("/dicomweb/studies", f"/dicomweb/studies/{MR_STUDY}/series", series + "/metadata",
                 f"/dicomweb/studies/{MR_STUDY}/series/", series + "/instances"):
        status, h, body = http(base + path, headers=gz)
        assert status == 200 and h["Content-Type"] == "application/dicom+json", path
        assert h.get("Content-Encoding") == "gzip", path
        import gzip as gzip_module
        assert isinstance(json.loads(gzip_module.decompress(body)), list)
        status, h, body = http(base + path)
        assert status == 200 and "Content-Encoding" not in h and isinstance(json.loads(body), list), path
    # runtime: wasm type, gzip for runtime assets
    status, h, _ = http(base + "/static/pyodide/pyodide.asm.wasm", headers=gz)
    assert status == 200 and h["Content-Type"] == "application/wasm" and h.get("Content-Encoding") == "gzip"
    status, h, _ = http(base + "/static/pyodide/pyodide.asm.mjs", headers=gz)
    assert h["Content-Type"].startswith("text/javascript") and h.get("Content-Encoding") == "gzip"
    # nothing else of the project folder
    for path in ("/serve.py", "/.git/config", "/tests/conftest.py", "/dicomweb/../serve.py"):
        assert http(base + path)[0] in (400, 403, 404), path


@pytest.mark.nginx
@pytest.mark.parametrize("config", ["htj2k", "htj2kByteRange", "jlsReduced"])
def test_static_nginx_cli_final_pixels_match_source(static_nginx, demo_data, config):
    import pydicom

    base, proc, _ = static_nginx
    entry = demo_entry(demo_data, "3072")
    source = pydicom.dcmread(DEMO / "radiograph" / "cat.dcm")
    rc, events, err = cli_load(base + entry["url"], config)
    assert rc == 0, f"{err}\n{events[-3:]}"
    refinements = [e for e in events if e["event"] == "Refinement"]
    final = refinements[-1]
    assert final["final"] and final["sha256"] == stored_sha(source)
    assert len(refinements) >= 2, "no progressive image before the final one"
    statuses = {e["status"] for e in events if e["event"] == "FirstBytes"}
    if config == "htj2kByteRange":
        assert statuses == {206}
    print(f"nginx static {config}: first {refinements[0]['t_ms']:.0f} ms "
          f"({refinements[0]['columns']}x{refinements[0]['rows']}), final {final['t_ms']:.0f} ms {err.strip()}")


@pytest.mark.nginx
@pytest.mark.browser
@pytest.mark.parametrize("config", ["htj2kByteRange", "htj2k"])
def test_static_nginx_page_streams_and_ranges(static_nginx, demo_data, page, config):
    """A fresh browser context per mode (a second load would come from the HTTP cache)."""
    import pydicom

    base, proc, _ = static_nginx
    access = proc.log.parent / "logs" / "access.log"
    source = pydicom.dcmread(DEMO / "radiograph" / "cat.dcm")
    entry = demo_entry(demo_data, "3072")
    before = access.read_text() if access.exists() else ""
    t0 = time.perf_counter()
    page.page.goto(f"{base}/index.html?url={entry['url']}&config={config}")
    wait_for_app_state(page, ("idle",), timeout_ms=90_000)
    log = page.page.evaluate("window.renderLog")
    assert log and log[-1]["final"] and (log[-1]["rows"], log[-1]["columns"]) == (source.Rows, source.Columns)
    assert len(log) >= 2 and log[0]["status"] != log[-1]["status"], log
    print(f"page via nginx static {config}: idle after {(time.perf_counter() - t0) * 1000:.0f} ms "
          f"(incl. boot), first {log[0]['t_ms']:.0f} ms {log[0]['columns']}x{log[0]['rows']}, "
          f"final {log[-1]['t_ms']:.0f} ms")
    new = access.read_text()[len(before):]
    frame_lines = [line for line in new.splitlines() if "/frames/1 " in line]
    assert frame_lines, new[-2000:]
    if config == "htj2kByteRange":
        assert len(frame_lines) >= 2 and all('" 206 ' in line for line in frame_lines), frame_lines
    # the page decodes the lossless frame from nginx bit-exactly
    sop = source.SOPInstanceUID
    fmt = {"rows": int(source.Rows), "columns": int(source.Columns), "bits_allocated": 16,
           "bits_stored": int(source.BitsStored), "pixel_representation": 0,
           "photometric_interpretation": str(source.PhotometricInterpretation),
           "transfer_syntax": HTJ2K_RPCL}
    got = json.loads(page.page.evaluate("([u, f]) => window.pyApp.decodeFrame(u, f)",
                                        [f"{base}{entry['url']}/instances/{sop}/frames/1", json.dumps(fmt)]))
    assert got["sha256"] == stored_sha(source)
    assert page.errors == []
