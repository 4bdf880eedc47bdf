"""``python -m app check``: exit 0 on a good tree, exit 1 naming each defect on trees that have it."""

from __future__ import annotations

import asyncio
import functools
import gzip
import json
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from app.check import check, jpegls_near, split_frame
from toolkit_tree import make_toolkit_tree, mht

PROJECT = Path(__file__).resolve().parent.parent
CT = Path(get_testdata_file("CT_small.dcm"))
MR = Path(get_testdata_file("MR_small.dcm"))
AVAILABLE_TS = "00083002"


def app_check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app", "check", *args], cwd=PROJECT, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    from app.convert import convert

    out = tmp_path_factory.mktemp("check") / "good"
    convert([CT, MR], out, "jls,jlsThumbnail", quiet=True)
    return out


@pytest.fixture
def tree(good, tmp_path) -> Path:
    copy = tmp_path / "tree"
    shutil.copytree(good, copy)
    return copy


def ct_instance(tree: Path) -> Path:
    sop = pydicom.dcmread(CT).SOPInstanceUID
    return next(tree.glob(f"studies/*/series/*/instances/{sop}"))


def run_check(target, **kwargs):
    return asyncio.run(check(str(target), **kwargs))


def defects(report) -> list[str]:
    return [f.line() for f in report.defects]


def rewrite_codestream(frame: Path, edit) -> None:
    """Replace a frame's codestream by edit(codestream); the part keeps only its Content-Type."""
    headers, payload = split_frame(frame.read_bytes(), None)
    frame.write_bytes(mht(headers["content-type"], edit(bytearray(payload))))


def marker_at(cs: bytearray, marker: int) -> int:
    pos = 2
    while True:
        (found, length) = struct.unpack_from(">HH", cs, pos)
        if found == marker:
            return pos
        assert found != 0xFF90, f"no marker {marker:04X} in the main header"
        pos += 2 + length


def set_cod(offset: int, value: int):
    """COD: +5 progression order, +9 decompositions, +13 wavelet (1 = reversible 5/3)."""
    def edit(cs: bytearray) -> bytes:
        cs[marker_at(cs, 0xFF52) + offset] = value
        return bytes(cs)
    return edit


def strip_tlm(cs: bytearray) -> bytes:
    at = marker_at(cs, 0xFF55)
    (length,) = struct.unpack_from(">H", cs, at + 2)
    return bytes(cs[:at] + cs[at + 2 + length:])


def one_tile_part(cs: bytearray) -> bytes:
    """The toolkit's layout: all packets of the (single) tile in ONE tile-part, no TLM."""
    cs = bytearray(strip_tlm(cs))
    first = pos = marker_at(cs, 0xFF90)
    data = bytearray()
    while cs[pos:pos + 2] == b"\xff\x90":
        (psot,) = struct.unpack_from(">I", cs, pos + 6)
        sod = cs.index(b"\xff\x93", pos + 12)
        data += cs[sod + 2:pos + psot]
        pos += psot
    sot = b"\xff\x90" + struct.pack(">HHIBB", 10, 0, 14 + len(data), 0, 1)
    return bytes(cs[:first] + sot + b"\xff\x93" + data + b"\xff\xd9")


# ---------------------------------------------------------------- good trees


def test_a_good_tree_passes_with_exit_0(good):
    result = app_check(str(good))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 defect(s)" in result.stdout and "2 series" in result.stdout
    assert "frames carry a Content-Digest" in result.stdout


def test_a_good_tree_served_with_cors_passes(good, serve_dir):
    live = serve_dir(good, cors=("http://viewer.example",))
    report = run_check(live.url + "/dicomweb", origin="http://viewer.example")
    assert defects(report) == [] and report.series == 2 and report.frames > 2


def test_a_toolkit_layout_tree_passes_and_unreachable_levels_are_noted(tmp_path):
    tree = make_toolkit_tree(tmp_path / "toolkit", [CT])
    for frame in tree.root.glob("studies/*/series/*/instances/*/frames/1.mht"):
        headers, payload = split_frame(frame.read_bytes(), None)
        # the toolkit's own HTJ2K: .201, RPCL, no TLM
        frame.write_bytes(mht(headers["content-type"].replace("4.202", "4.201"), one_tile_part(bytearray(payload))))
    folder = next(iter(tree.series.values()))
    meta = json.loads(gzip.decompress((folder / "metadata.gz").read_bytes()))
    meta[0][AVAILABLE_TS]["Value"] = ["1.2.840.10008.1.2.4.201"]
    (folder / "metadata.gz").write_bytes(gzip.compress(json.dumps(meta).encode()))
    result = app_check(str(tree.root))
    assert result.returncode == 0, result.stdout
    # the merged stream still decodes to the source's pixels: the helper made a valid .201 stream
    (frame,) = tree.root.glob("studies/*/series/*/instances/*/frames/1.mht")
    pixels = imagecodecs.jpeg2k_decode(split_frame(frame.read_bytes(), None)[1])
    np.testing.assert_array_equal(pixels, pydicom.dcmread(CT).pixel_array)
    assert "[levels]" not in result.stdout  # one tile-part, no TLM: levels found from packet headers
    # a stream whose levels cannot be found before its end (here: labelled PCRL) is noted, not failed
    rewrite_codestream(frame, set_cod(5, 3))
    result = app_check(str(tree.root))
    assert result.returncode == 0, result.stdout
    assert "[levels]" in result.stdout and "PCRL, no TLM" in result.stdout


# ---------------------------------------------------------------- defects, one per tree


@pytest.mark.parametrize(("edit", "named"), [
    (strip_tlm, "labelled .202 but has no TLM marker"),
    (set_cod(5, 0), "labelled .202 but progression order is LRCP"),
    (set_cod(9, 0), "labelled .202 but its lowest level is 128x128 (> 64 px)"),
    (set_cod(13, 0), "(lossless) but coded with the irreversible 9/7 wavelet"),
], ids=["no-tlm", "lrcp", "lowest-level", "irreversible"])
def test_htj2k_label_against_the_stream(tree, edit, named):
    rewrite_codestream(ct_instance(tree) / "frames" / "1.mht", edit)
    result = app_check(str(tree))
    assert result.returncode == 1
    lines = [line for line in result.stdout.splitlines() if line.startswith("DEFECT")]
    assert len(lines) == 1 and "[htj2k-label]" in lines[0] and named in lines[0], result.stdout


def test_metadata_label_that_differs_from_the_part(tree):
    folder = ct_instance(tree).parent.parent
    meta = json.loads((folder / "metadata").read_text())
    meta[0][AVAILABLE_TS]["Value"] = ["1.2.840.10008.1.2.4.201"]
    (folder / "metadata").write_text(json.dumps(meta))
    (folder / "metadata.gz").write_bytes(gzip.compress(json.dumps(meta).encode()))
    (folder / "stack.json").unlink()  # the metadata edited by hand: its stack index would disagree
    (line,) = defects(run_check(tree))
    assert "[label]" in line and "transfer-syntax=1.2.840.10008.1.2.4.202" in line and "4.201" in line


def test_a_missing_alternate_frame(tree):
    (ct_instance(tree) / "jlsThumbnail" / "1.mht").unlink()
    (line,) = defects(run_check(tree))
    assert "[alternate]" in line and "jlsThumbnail" in line and "missing" in line


def test_alternates_inconsistent_with_their_description(tree):
    series = ct_instance(tree).parent.parent
    described = json.loads((series / "alternates.json").read_text())
    described["jls"]["transferSyntaxUID"] = "1.2.840.10008.1.2.4.81"
    described["jlsThumbnail"]["rows"] = 64
    (series / "alternates.json").write_text(json.dumps(described))
    (series / "alternates.json.gz").unlink(missing_ok=True)
    found = defects(run_check(tree))
    assert any("[label]" in d and "/jls/" in d and "4.81" in d for d in found), found
    assert any("[size]" in d and "/jlsThumbnail/" in d and "expected 32x64" in d for d in found), found
    assert len(found) == 2


def test_jpegls_near_against_its_label(tree):
    frame = ct_instance(tree) / "jls" / "1.mht"
    headers, payload = split_frame(frame.read_bytes(), None)
    stored = pydicom.dcmread(CT).pixel_array.astype(np.int32)
    near = bytes(imagecodecs.jpegls_encode((stored - stored.min()).astype(np.uint16), level=2))
    assert jpegls_near(near) == 2 and jpegls_near(payload) == 0
    frame.write_bytes(mht(headers["content-type"], near))
    (line,) = defects(run_check(tree))
    assert "[jpegls-near]" in line and "labelled .80 (lossless) but NEAR=2" in line


def test_a_frame_whose_digest_does_not_match(tree):
    frame = ct_instance(tree) / "frames" / "1.mht"
    data = bytearray(frame.read_bytes())
    data[-200] ^= 0x01  # inside the codestream's last tile-part
    frame.write_bytes(bytes(data))
    (line,) = defects(run_check(tree))
    assert "[digest]" in line and "does not match" in line


# ---------------------------------------------------------------- what a browser needs


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_a_plain_static_host_lacks_types_and_ranges(tree):
    """python's http.server: frames typed application/octet-stream, no Range support.

    Served in the older extension-less layout (``frames/1``), which such a host finds but cannot type."""
    for stored in tree.glob("studies/*/series/*/instances/*/*/*.mht"):
        stored.rename(stored.with_suffix(""))
    good = tree
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(good)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        series = ct_instance(good).parent.parent.relative_to(good).as_posix()
        result = app_check(f"http://127.0.0.1:{server.server_address[1]}/{series}")
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 1
    found = [line for line in result.stdout.splitlines() if line.startswith("DEFECT")]
    assert any("[content-type]" in d and "application/octet-stream" in d for d in found), result.stdout
    assert any("[range]" in d and "answered 200" in d for d in found), result.stdout


def test_cors_for_the_viewer_origin(good, serve_dir):
    live = serve_dir(good)  # same-origin only by default
    report = run_check(live.url + "/dicomweb", origin="http://viewer.example")
    assert defects(report) and all("[cors]" in d and "http://viewer.example" in d for d in defects(report))
    same_origin = run_check(live.url + "/dicomweb")
    assert defects(same_origin) == [] and any(f.rule == "cors" for f in same_origin.findings)


def test_not_a_tree_is_exit_2_and_an_empty_one_exit_1(tmp_path):
    assert app_check(str(tmp_path / "nope")).returncode == 2
    empty = app_check(str(tmp_path))
    assert empty.returncode == 1 and "[qido]" in empty.stdout


def test_a_json_document_that_stops_arriving_is_named_not_waited_on():
    """check's JSON probe is under the same give-up rules as discovery: a server that sends the
    head and a few bytes, then nothing, gets one line (no bytes for N s), not a hang."""
    from app.check import probe_json
    from app.transport.limits import TransferLimits
    from app.transport.mock import MockResponse, MockTransport

    async def trickle():
        yield b'[{"0020000D": '
        await asyncio.sleep(30)

    transport = MockTransport(lambda req: MockResponse(200, {"content-type": "application/dicom+json"}, trickle()))
    probe = asyncio.run(asyncio.wait_for(
        probe_json(transport, "http://127.0.0.1:1/studies", limits=TransferLimits(1024, 0.2, 5.0)), 10))
    assert probe.cause and "no bytes for 0.2 s" in probe.cause, probe.cause
