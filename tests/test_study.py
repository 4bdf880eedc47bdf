"""Discovery and stack building: URL forms, static trees (plain and gzip), ordering, multi-frame."""

from __future__ import annotations

import asyncio
import base64
import gzip
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from app.config import preset
from app.convert import convert
from app.engine import Refinement, RetrieveEngine
from app.study import DiscoveryError, discover, parse_alternates, stack_from_metadata
from app.transport.native import NativeTransport


def el(vr, *values):
    return {"vr": vr, "Value": list(values)}


def instance(sop, number=None, pos=None, iop=(1, 0, 0, 0, 1, 0), **extra):
    obj = {
        "0020000D": el("UI", "1.2.3"),
        "0020000E": el("UI", "1.2.3.4"),
        "00080018": el("UI", sop),
        "00280010": el("US", 4),
        "00280011": el("US", 2),
        "00280100": el("US", 16),
        "00280101": el("US", 12),
        "00280103": el("US", 0),
        "00280030": el("DS", 0.5, 0.25),
        "00281050": el("DS", 100, 40),
        "00281051": el("DS", 400, 80),
        "00083002": el("UI", "1.2.840.10008.1.2.4.202"),
        "7FE00010": {"vr": "OB", "BulkDataURI": f"instances/{sop}/frames"},
    }
    if number is not None:
        obj["00200013"] = el("IS", number)
    if pos is not None:
        obj["00200032"] = el("DS", *pos)
        obj["00200037"] = el("DS", *iop)
    obj.update(extra)
    return obj


def test_slices_are_ordered_along_the_normal_not_by_instance_number():
    meta = [instance("1.9.1", 1, (0, 0, 10)), instance("1.9.2", 2, (0, 0, -5)), instance("1.9.3", 3, (0, 0, 2.5))]
    stack = stack_from_metadata(meta, "http://h/dicomweb/studies/1.2.3/series/1.2.3.4/")
    assert [im.sop_instance_uid for im in stack.images] == ["1.9.2", "1.9.3", "1.9.1"]
    assert [im.index for im in stack.images] == [0, 1, 2]
    im = stack.images[0]
    assert im.frame_url == "http://h/dicomweb/studies/1.2.3/series/1.2.3.4/instances/1.9.2/frames/1"
    assert im.transfer_syntax == "1.2.840.10008.1.2.4.202"
    assert (im.rows, im.columns, im.fmt.bits_stored) == (4, 2, 12)
    assert im.pixel_spacing == (0.5, 0.25) and im.windows == ((100, 400), (40, 80))


def test_oblique_orientation_projects_on_the_normal():
    iop = (0, 1, 0, 0, 0, -1)  # sagittal: normal along -x
    meta = [instance("1.9.1", 1, (1, 0, 0), iop), instance("1.9.2", 2, (3, 0, 0), iop), instance("1.9.3", 3, (2, 0, 0), iop)]
    assert [im.sop_instance_uid for im in stack_from_metadata(meta, "http://h/s").images] == ["1.9.2", "1.9.3", "1.9.1"]


def test_without_positions_instance_number_orders():
    meta = [instance("1.9.24", 3), instance("1.9.25", 1), instance("1.9.26", 2), {"00080018": el("UI", "1.9.77")}]
    assert [im.sop_instance_uid for im in stack_from_metadata(meta, "http://h/s").images] == ["1.9.25", "1.9.26", "1.9.24"]


def test_multiframe_instances_become_one_item_per_frame():
    per_frame = [{"00209113": el("SQ", {"00200032": el("DS", 0, 0, z)})} for z in (3, 1, 2)]
    obj = instance("1.9.99", 1, None, **{"00280008": el("IS", 3), "52009230": el("SQ", *per_frame)})
    obj["52009229"] = el("SQ", {"00209116": el("SQ", {"00200037": el("DS", 1, 0, 0, 0, 1, 0)})})
    stack = stack_from_metadata([obj], "http://h/s")
    assert [im.frame for im in stack.images] == [2, 3, 1]
    assert stack.images[0].frame_url == "http://h/s/instances/1.9.99/frames/2"


def test_absolute_bulkdata_uri_and_missing_one():
    a = instance("1.9.1", 1)
    a["7FE00010"] = {"vr": "OB", "BulkDataURI": "https://other.example/wado/studies/1/series/2/instances/1.9.1/frames"}
    b = instance("1.9.2", 2)
    del b["7FE00010"]
    stack = stack_from_metadata([a, b], "http://h/s")
    assert stack.images[0].frame_url == "https://other.example/wado/studies/1/series/2/instances/1.9.1/frames/1"
    assert stack.images[1].frame_url == "http://h/s/instances/1.9.2/frames/1"


def test_inline_binary_images_load_without_requests():
    pixels = np.arange(8, dtype="<u2").reshape(4, 2)
    obj = instance("1.9.9", 1)
    obj["00083002"] = el("UI", "1.2.840.10008.1.2.1")
    obj["7FE00010"] = {"vr": "OW", "InlineBinary": base64.b64encode(pixels.tobytes()).decode()}
    stack = stack_from_metadata([obj], "http://h/s")

    class NoNetwork:
        async def get(self, *a, **k):
            raise AssertionError("no request expected")

        async def aclose(self):
            pass

    async def main():
        return [e async for e in RetrieveEngine(stack, preset("single"), NoNetwork()).run()]

    (ref,) = asyncio.run(main())
    assert isinstance(ref, Refinement) and ref.final
    np.testing.assert_array_equal(ref.pixels, pixels)


def test_alternates_sidecar():
    alts = parse_alternates({
        "frames": {"path": "frames", "transferSyntaxUID": "1.2.840.10008.1.2.4.202", "lossy": False, "scale": 1,
                   "rows": 2614, "columns": 3072},
        "jlsThumbnail": {"path": "jlsThumbnail", "transferSyntaxUID": "1.2.840.10008.1.2.4.80", "lossy": False,
                         "scale": 4, "rows": 654, "columns": 768},
        "lossy": {"path": "lossy", "transferSyntaxUID": "1.2.840.10008.1.2.4.203", "lossy": True, "scale": 1},
    })
    assert alts["/jlsThumbnail/"].thumbnail and (alts["/jlsThumbnail/"].rows, alts["/jlsThumbnail/"].columns) == (654, 768)
    assert alts["/lossy/"].lossy and not alts["/frames/"].thumbnail


# -- discovery over HTTP -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tree")
    files = [get_testdata_file("CT_small.dcm"), get_testdata_file("MR_small.dcm")]
    assert not convert(files, out, "jls", quiet=True).failures
    return out


def uids(tree: Path) -> list[tuple[str, str]]:
    return [(st.name, se.name) for st in (tree / "studies").iterdir() if st.is_dir()
            for se in (st / "series").iterdir() if se.is_dir()]


def run(coro):
    async def main():
        transport = NativeTransport()
        try:
            return await coro(transport)
        finally:
            await transport.aclose()

    return asyncio.run(main())


async def discover_all(transport, url, **kwargs):
    """discover, then the alternates (which discovery itself never waits for)."""
    stack = await discover(transport, url, **kwargs)
    await stack.alternates_loaded()
    return stack


def test_every_url_form_finds_the_series(tree, serve_dir):
    server = serve_dir(tree)
    base = server.url + "/dicomweb"
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    st, se = ct.StudyInstanceUID, ct.SeriesInstanceUID
    for url in (
        f"{base}/studies/{st}/series/{se}",
        f"{base}/studies/{st}/series/{se}/",
        f"{base}/studies/{st}/series/{se}/metadata",
        f"{base}/studies/{st}",
    ):
        stack = run(lambda t: discover_all(t, url))
        assert stack.series_uid == se and len(stack) == 1, url
        assert stack.images[0].frame_url.startswith(f"{base}/studies/{st}/series/{se}/instances/")
        assert "/jls/" in stack.alternates
    stack = run(lambda t: discover(t, base, series_uid=se))
    assert stack.series_uid == se
    assert run(lambda t: discover(t, base)).series_uid in {s for _, s in uids(tree)}


class _Recording:
    """A real NativeTransport that notes when each request starts and when its body is read."""

    def __init__(self, transport, log):
        self.transport, self.log = transport, log

    async def get(self, url, **kwargs):
        name = url.rsplit("/", 1)[-1]
        self.log.append(("start", name))
        resp = await self.transport.get(url, **kwargs)
        log, chunks = self.log, resp.chunks

        async def recorded():
            async for chunk in chunks():
                yield chunk
            log.append(("end", name))

        resp.chunks = recorded
        return resp

    async def aclose(self):
        await self.transport.aclose()


def test_metadata_and_alternates_are_asked_for_together(tree, serve_dir):
    """One round trip before the first frame request, not two."""
    server = serve_dir(tree)
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    url = f"{server.url}/dicomweb/studies/{ct.StudyInstanceUID}/series/{ct.SeriesInstanceUID}"
    log: list[tuple[str, str]] = []
    stack = run(lambda t: discover_all(_Recording(t, log), url))
    assert "/jls/" in stack.alternates and len(stack) == 1
    assert log.index(("start", "alternates.json")) < log.index(("end", "metadata")), log


class _GzipOnly(BaseHTTPRequestHandler):
    """Serves only the ``.gz`` files of a tree, as bytes without Content-Encoding."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802
        rel = self.path.removeprefix("/dicomweb/")
        path = self.server.root / rel
        if path.name.endswith(".gz") and path.is_file():
            body, status = path.read_bytes(), 200
        else:
            body, status = b"", 404
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.mark.servers
def test_static_tree_with_gzip_files_only(tree):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _GzipOnly)
    httpd.root = tree
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{httpd.server_address[1]}/dicomweb"
        stack = run(lambda t: discover(t, base))
        assert len(stack) == 1 and stack.images[0].rows > 0
        assert gzip.decompress((tree / "studies" / "index.json.gz").read_bytes())  # really gzip
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_nothing_there_is_a_clear_error(tmp_path, serve_dir):
    (tmp_path / "studies").mkdir()
    server = serve_dir(tmp_path)
    with pytest.raises(DiscoveryError, match="no studies"):
        run(lambda t: discover(t, server.url + "/dicomweb"))
    with pytest.raises(DiscoveryError):
        run(lambda t: discover(t, server.url + "/dicomweb/studies/1.2/series/3.4"))


def test_patient_study_and_series_text_come_from_the_metadata(tree, serve_dir):
    from app.study import dicom_date, person_name

    server = serve_dir(tree)
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    stack = run(lambda t: discover(t, f"{server.url}/dicomweb/studies/{ct.StudyInstanceUID}/series/{ct.SeriesInstanceUID}"))
    assert stack.patient_name == str(ct.PatientName) and stack.patient_id == ct.PatientID
    assert stack.study_date == ct.StudyDate and stack.modality == ct.Modality
    assert stack.series_number == ct.SeriesNumber
    assert person_name("Doe^John^A^Dr") == "Doe, John A Dr"
    assert person_name("Doe") == "Doe" and person_name("^John") == "John" and person_name(None) == ""
    assert person_name("Yamada^Tarou=山田^太郎") == "Yamada, Tarou"  # the alphabetic group
    assert dicom_date("20040826") == "2004-08-26" and dicom_date("2004") == "2004" and dicom_date(None) == ""


def test_instances_whose_uids_are_not_uids_never_become_urls():
    """A hostile server's SOP UID (``../../x``, ``/tmp/y``) never builds a frame URL; the rest loads."""
    good, climbing, absolute = instance("1.9.1", 1), instance("../../x", 2), instance("/tmp/y", 3)
    del climbing["7FE00010"], absolute["7FE00010"]  # the URL would be built from the SOP UID
    stack = stack_from_metadata([climbing, good, absolute], "http://h/s")
    assert [im.sop_instance_uid for im in stack.images] == ["1.9.1"]
    assert all("/../" not in im.frame_url and "/tmp/" not in im.frame_url for im in stack.images)
    with pytest.raises(DiscoveryError, match="invalid UIDs"):
        stack_from_metadata([climbing, absolute], "http://h/s")
    bad_series = instance("1.9.2", 1, **{"0020000E": el("UI", "1.2/../../3")})
    with pytest.raises(DiscoveryError, match="invalid UIDs"):
        stack_from_metadata([bad_series], "http://h/s")
