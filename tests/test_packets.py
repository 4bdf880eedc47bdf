"""Packet headers tell where each resolution level ends in a one-tile-part stream without TLM.

The reference is the TLM path: the converter's encoding (one tile-part per level, TLM) of the
same image. Its level ends come from markers alone, so the packet reader must agree with it byte
for byte on the packet data, under any chunking, and each reported prefix must decode to the same
pixels at its level.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from app.codecs import HTJ2K_LOSSLESS
from app.convert import ALTERNATES, frame_file_chunks, open_manifest
from app.readers import packets
from app.readers.codestream import CodestreamError, CodestreamScanner, ResolutionComplete
from helpers import split, stored_frames
from htj2k_helpers import level_ends, one_tile_part, packet_bytes_before, scan, tile_parts


def smooth_image(seed: int, rows: int, columns: int, channels: int, dtype: str) -> np.ndarray:
    """Something like an image: smooth ramps plus noise (pure noise has no resolution structure)."""
    rng = np.random.default_rng(seed)
    bits = 8 if dtype == "uint8" else 12
    shape = (rows, columns, channels) if channels > 1 else (rows, columns)
    walk = rng.normal(size=shape).cumsum(0).cumsum(1)
    noise = rng.integers(0, 4, size=shape)
    return ((walk * 7 + noise) % (1 << bits)).astype(dtype)


def converter_encoding(pixels: np.ndarray, levels: int, step: float | None = None) -> bytes:
    """As app/convert.py encodes: RPCL, TLM, one tile-part per resolution level (lossy with a step)."""
    rgb = {"rgb": False, "planar": False} if pixels.ndim == 3 else {}
    return bytes(imagecodecs.htj2k_encode(pixels, step, reversible=step is None, tlm=True, tilepart=1,
                                          resolutions=levels, **rgb))


def toolkit_encoding(pixels: np.ndarray, levels: int, step: float | None = None) -> bytes:
    """As the Static DICOMweb toolkit and HealthImaging serve: RPCL, one tile-part, no TLM."""
    rgb = {"rgb": False, "planar": False} if pixels.ndim == 3 else {}
    return bytes(imagecodecs.htj2k_encode(pixels, step, reversible=step is None, resolutions=levels, **rgb))


def decode(cs: bytes, reduce: int) -> np.ndarray:
    return imagecodecs.htj2k_decode(cs, skipres=reduce) if reduce else imagecodecs.htj2k_decode(cs)


def assert_same_levels(reference: bytes, other: bytes) -> list[ResolutionComplete]:
    """``other`` reports every level of ``reference``, at the same packet byte, decoding the same."""
    want, got = level_ends(reference), level_ends(other)
    assert [e.level for e in got] == [e.level for e in want] == list(range(len(want)))
    for w, g in zip(want, got):
        assert (g.reduce, g.rows, g.columns) == (w.reduce, w.rows, w.columns)
        assert packet_bytes_before(other, g.end_offset) == packet_bytes_before(reference, w.end_offset)
        pixels = decode(other[: g.end_offset], g.reduce)
        np.testing.assert_array_equal(pixels, decode(reference[: w.end_offset], w.reduce))
        # colour may come back planar; a 1-pixel axis squeezed
        assert (g.rows, g.columns) in (pixels.shape[:2], pixels.shape[1:3]) or 1 in (g.rows, g.columns)
    assert got[-1].end_offset == len(other) - 2  # the top level ends where EOC starts, as with TLM
    return got


# -- HTJ2K: the same image both ways ---------------------------------------------------------------

IMAGES = st.tuples(st.integers(0, 2**32 - 1), st.integers(1, 300), st.integers(1, 300), st.sampled_from([1, 3]),
                   st.sampled_from(["uint8", "uint16"]), st.integers(1, 6))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(IMAGES, st.lists(st.integers(0, 1 << 20), max_size=12))
def test_levels_agree_with_the_tlm_path_on_random_images(image, cuts):
    seed, rows, columns, channels, dtype, levels = image
    if channels == 3 and dtype == "uint16":
        dtype = "uint8"
    pixels = smooth_image(seed, rows, columns, channels, dtype)
    reference = converter_encoding(pixels, levels)
    assume(len(tile_parts(reference)) == levels + 1)  # the TLM path itself is progressive
    for other in (toolkit_encoding(pixels, levels), one_tile_part(reference)):
        assert len(tile_parts(other)) == 1 and b"\xff\x55" not in other[: tile_parts(other)[0][0]]
        assert_same_levels(reference, other)
        assert scan(split(other, cuts)) == scan([other])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 1 << 16), max_size=30))
def test_any_split_gives_the_same_events(cuts):
    cs = toolkit_encoding(smooth_image(7, 96, 130, 1, "uint16"), 4)
    assert scan(split(cs, cuts)) == scan([cs])


def test_every_one_byte_split_of_an_rgb_stream():
    cs = toolkit_encoding(smooth_image(3, 40, 37, 3, "uint8"), 3)
    whole = scan([cs])
    assert len([e for e in whole if isinstance(e, ResolutionComplete)]) == 4
    assert scan([cs[i : i + 1] for i in range(len(cs))]) == whole


def test_lossy_streams_too():
    pixels = smooth_image(11, 200, 150, 1, "uint16")
    reference = converter_encoding(pixels, 5, step=0.001)
    for other in (toolkit_encoding(pixels, 5, step=0.001), one_tile_part(reference)):
        assert_same_levels(reference, other)


def test_a_level_is_reported_when_its_last_byte_arrives_and_not_before():
    cs = toolkit_encoding(smooth_image(5, 256, 256, 1, "uint16"), 5)
    ends = [e.end_offset for e in level_ends(cs)]
    for level, end in enumerate(ends[:-1]):
        s = CodestreamScanner()
        before = [e.level for e in s.feed(cs[: end - 1]) if isinstance(e, ResolutionComplete)]
        after = [e.level for e in s.feed(cs[end - 1 : end]) if isinstance(e, ResolutionComplete)]
        assert before == list(range(level)) and after == [level]


PROJECT = Path(__file__).resolve().parent.parent


def test_a_tile_part_running_to_eoc_reports_its_lower_levels_early():
    cs = bytearray(toolkit_encoding(smooth_image(8, 200, 180, 1, "uint16"), 4))
    (sot, _, _), = tile_parts(bytes(cs))
    struct.pack_into(">I", cs, sot + 6, 0)  # Psot = 0: the tile-part runs to EOC
    known = level_ends(toolkit_encoding(smooth_image(8, 200, 180, 1, "uint16"), 4))
    s = CodestreamScanner()
    early = [e for e in s.feed(bytes(cs[:-2])) if isinstance(e, ResolutionComplete)]
    assert early == known[:-1]
    late = [e for e in s.feed(bytes(cs[-2:])) + s.close() if isinstance(e, ResolutionComplete)]
    assert [(e.level, e.end_offset) for e in late] == [(4, len(cs))]


@functools.cache
def radiograph_tlm() -> bytes:
    """The demo radiograph's frame as the converter stored it (3072x2614, 16-bit, 6 levels, TLM)."""
    root = PROJECT / "static" / "dicomweb"
    frames = stored_frames(root, "studies/1.3.51.0.7.3365391312*/series/*/instances/*/frames/1")
    if not frames:
        pytest.skip("demo tree not set up (tools/demo_data.py)")
    raw = frames[0].read_bytes()
    return raw[raw.index(b"\xff\x4f\xff\x51") : raw.rindex(b"\xff\xd9") + 2]


def test_the_radiograph_both_ways():
    reference = radiograph_tlm()
    pixels = imagecodecs.htj2k_decode(reference)
    assert pixels.shape == (2614, 3072)
    for other in (toolkit_encoding(pixels, 6), one_tile_part(reference)):
        got = assert_same_levels(reference, other)
        assert [(e.rows, e.columns) for e in got][:3] == [(41, 48), (82, 96), (164, 192)]
    np.testing.assert_array_equal(decode(toolkit_encoding(pixels, 6), 0), pixels)


# -- classic JPEG 2000 (Part 1 code-blocks), from OpenJPEG through glymur ------------------------


@functools.cache
def _glymur():
    glymur = pytest.importorskip("glymur")
    return glymur


def classic(pixels: np.ndarray, **kw) -> bytes:
    glymur = _glymur()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "x.j2k")
        glymur.Jp2k(path, data=pixels, **kw)
        with open(path, "rb") as f:
            return f.read()


def classic_decode(cs: bytes, reduce: int) -> np.ndarray:
    glymur = _glymur()
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "x.j2k")
        with open(path, "wb") as f:
            f.write(cs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return glymur.Jp2k(path)._read(rlevel=reduce) if reduce else glymur.Jp2k(path)[:]


def cut_after(cs: bytes, end: int) -> bytes:
    """A legal codestream of the packets before ``end``: its one tile-part ends there, then EOC."""
    out = bytearray(cs[:end]) + b"\xff\xd9"
    sot = out.index(b"\xff\x90")
    struct.pack_into(">I", out, sot + 6, end - sot)
    return bytes(out)


CLASSIC = [
    {"prog": "RPCL"},
    {"prog": "RLCP"},
    {"prog": "LRCP"},
    {"prog": "RPCL", "psizes": [(128, 128)], "cbsize": (32, 32)},
    {"prog": "RPCL", "psizes": [(64, 64), (32, 32)], "cbsize": (16, 16)},
    {"prog": "RLCP", "psizes": [(256, 128)], "cbsize": (64, 16)},
    {"prog": "RPCL", "modesw": 1},  # selective arithmetic coding bypass
    {"prog": "RPCL", "modesw": 4},  # terminate each pass
    {"prog": "RPCL", "modesw": 1 | 2 | 4 | 8 | 16 | 32, "psizes": [(64, 64)], "cbsize": (32, 32)},
]


@pytest.mark.parametrize("options", CLASSIC, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
@pytest.mark.parametrize("channels", [1, 3])
def test_classic_code_blocks_and_precincts(options, channels):
    pixels = smooth_image(channels, 300, 257, channels, "uint8" if channels == 3 else "uint16")
    cs = classic(pixels, numres=5, **options)
    got = level_ends(cs, chunk=777)
    assert [e.level for e in got] == list(range(5))
    assert scan(split(cs, [5, 300, 301, 4000, 4001, 9999])) == scan([cs])
    for e in got[:-1]:
        np.testing.assert_array_equal(classic_decode(cut_after(cs, e.end_offset), e.reduce),
                                      classic_decode(cs, e.reduce))


def test_sop_and_eph_markers_shift_each_packet_by_eight_bytes():
    pixels = smooth_image(2, 300, 257, 1, "uint16")
    options = {"prog": "RPCL", "psizes": [(64, 64), (32, 32)], "cbsize": (16, 16), "numres": 5}
    plain, marked = classic(pixels, **options), classic(pixels, sop=True, eph=True, **options)
    header = CodestreamScanner().feed(marked[:2000])[0]
    assert header.cod.sop and header.cod.eph
    coding = header.tile_coding()
    counts = [len(level) for level in packets.packet_plan(coding)]
    assert all(n > 1 for n in counts)  # several precincts per level
    for p, m in zip(level_ends(plain), level_ends(marked)):
        before = sum(counts[: p.level + 1])
        assert packet_bytes_before(marked, m.end_offset) - packet_bytes_before(plain, p.end_offset) == 8 * before
    assert scan(split(marked, [17, 1000, 1001, 1002])) == scan([marked])


# -- the reader on its own ----------------------------------------------------------------------


def _coding_and_packets(cs: bytes):
    header = CodestreamScanner().feed(cs)[0]
    (_, data, end), = tile_parts(cs)
    return header.tile_coding(), data, end


def test_walking_every_packet_ends_exactly_at_the_tile_part_end():
    for cs in (toolkit_encoding(smooth_image(1, 333, 222, 1, "uint16"), 5),
               toolkit_encoding(smooth_image(2, 64, 80, 3, "uint8"), 4)):
        coding, data, end = _coding_and_packets(cs)
        reader = packets.PacketReader(coding, data, end)
        events = reader.feed(cs[data:end])
        assert reader.done and events[-1] == packets.LevelEnd(coding.components[0].decompositions, end)


def test_errors_are_a_state():
    cs = toolkit_encoding(smooth_image(4, 128, 128, 1, "uint16"), 5)
    coding, data, end = _coding_and_packets(cs)
    reader = packets.PacketReader(coding, data, data + 3)  # a tile-part far too short
    with pytest.raises(packets.PacketError):
        reader.feed(cs[data:end])
    assert reader.state == "ERROR"
    with pytest.raises(packets.PacketError, match="after an error"):
        reader.feed(b"\x00")


def test_unsupported_layouts_are_refused_up_front():
    cs = toolkit_encoding(smooth_image(4, 64, 64, 1, "uint16"), 3)
    coding, _, _ = _coding_and_packets(cs)
    from dataclasses import replace

    for bad in (replace(coding, order="PCRL"), replace(coding, layers=2),
                replace(coding, components=(replace(coding.components[0], block_style=0xC0),))):
        with pytest.raises(packets.PacketError):
            packets.packet_plan(bad)


def test_a_corrupt_packet_header_only_stops_the_early_levels():
    cs = bytearray(toolkit_encoding(smooth_image(6, 256, 256, 1, "uint16"), 5))
    (_, data, end), = tile_parts(bytes(cs))
    cs[data : data + 40] = b"\xff" * 40  # the lowest levels' headers become nonsense
    s = CodestreamScanner()
    events = s.feed(bytes(cs)) + s.close()
    levels = [e for e in events if isinstance(e, ResolutionComplete)]
    assert [e.level for e in levels] == [5] and levels[0].end_offset == len(cs)
    assert s.packet_error


def test_a_tile_part_header_that_changes_the_coding_style_is_not_followed():
    cs = toolkit_encoding(smooth_image(6, 100, 100, 1, "uint16"), 4)
    (sot, data, end), = tile_parts(cs)
    main_cod = cs.index(b"\xff\x52")
    cod = cs[main_cod : main_cod + 2 + struct.unpack_from(">H", cs, main_cod + 2)[0]]
    out = bytearray(cs[: sot + 12] + cod + cs[sot + 12 :])
    struct.pack_into(">I", out, sot + 6, end - sot + len(cod))
    levels = level_ends(bytes(out))
    assert [e.level for e in levels] == [4]


def test_the_scanner_refuses_data_after_an_error():
    s = CodestreamScanner()
    with pytest.raises(CodestreamError):
        s.feed(b"GIF89a....")
    assert repr(s.state) == "ERROR"
    with pytest.raises(CodestreamError, match="after a codestream error"):
        s.feed(b"\xff\x4f")
    with pytest.raises(CodestreamError):
        s.close()


# -- the CLI, streaming a no-TLM tree of the radiograph from serve.py ------------------------------

RADIOGRAPH_SERIES = "1.3.51.0.7.2481275770.33884.26178.36453.11104.7622.4803"


def no_tlm_tree(demo_data: Path, out: Path) -> Path:
    """The demo radiograph's study as the toolkit would store it: its frame RPCL, one tile-part, no
    TLM, labelled .201. Everything else is hard-linked from the demo tree, never written through."""
    study = next(demo_data.glob("studies/*/series/" + RADIOGRAPH_SERIES)).parent.parent
    shutil.copytree(study, out / "studies" / study.name, copy_function=os.link)
    for name in ("dicomweb.json", "demo.json"):
        shutil.copyfile(demo_data / name, out / name)
    frame = stored_frames(out, "studies/*/series/*/instances/*/frames/1")[0]
    raw = frame.read_bytes()
    codestream = one_tile_part(raw[raw.index(b"\xff\x4f\xff\x51") : raw.rindex(b"\xff\xd9") + 2])
    frame.unlink()  # a hard link: replace it, never write into it
    frames = ALTERNATES["frames"]
    alternate = dataclasses.replace(frames, spec=dataclasses.replace(frames.spec, transfer_syntax=HTJ2K_LOSSLESS))
    frame.write_bytes(b"".join(frame_file_chunks(open_manifest(out, raw=False), alternate, codestream)))
    return out


def test_cli_streams_levels_of_a_no_tlm_radiograph_before_the_final(demo_data, serve_dir, tmp_path):
    tree = no_tlm_tree(demo_data, tmp_path / "tree")
    server = serve_dir(tree)
    meta = json.loads((tree / "demo.json").read_text())
    url = server.url + next(d for d in meta if d["seriesInstanceUID"] == RADIOGRAPH_SERIES)["url"]
    result = subprocess.run([sys.executable, "-m", "app", "load", url, "--config", "htj2k"], cwd=PROJECT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    refs = [e for e in map(json.loads, result.stdout.splitlines()) if e["event"] == "Refinement"]
    *partial, final = refs
    assert partial and all(r["status"] == "SUBRESOLUTION" and not r["final"] and r["reduce"] > 0 for r in partial)
    assert [r["reduce"] for r in partial] == sorted({r["reduce"] for r in partial}, reverse=True)
    assert all((r["rows"], r["columns"]) == SIZES[r["reduce"]] for r in partial)
    assert final["final"] and final["status"] == "FULL_RESOLUTION" and final["transfer_syntax"] == HTJ2K_LOSSLESS
    source = pydicom.dcmread(PROJECT / ".cache" / "demo" / "radiograph" / "cat.dcm").pixel_array
    assert final["sha256"] == hashlib.sha256(np.ascontiguousarray(source, "<u2").tobytes()).hexdigest()
    frame = stored_frames(tree, "studies/*/series/*/instances/*/frames/1")[0]
    assert final["bytes_received"] == frame.stat().st_size  # nothing fetched twice


SIZES = {r: ((2614 + (1 << r) - 1) >> r, (3072 + (1 << r) - 1) >> r) for r in range(7)}


def test_hostile_headers_are_refused_cheaply():
    cs = toolkit_encoding(smooth_image(4, 128, 128, 1, "uint16"), 5)
    coding, data, _ = _coding_and_packets(cs)
    endless = packets.PacketReader(coding, data)  # a tile-part to EOC of nothing but 0xFF
    with pytest.raises(packets.PacketError):
        for _ in range(100):
            endless.feed(b"\xff" * 4096)
    huge = dataclasses.replace(coding, x1=1 << 30, y1=1 << 30)  # a SIZ no real image has
    tiny = dataclasses.replace(coding.components[0], precincts=((1, 1),) * 6, block_exponents=(2, 2))
    for bad in (huge, dataclasses.replace(huge, components=(tiny,))):
        with pytest.raises(packets.PacketError, match="more than"):
            packets.packet_plan(bad, 4)


@pytest.mark.browser
def test_page_streams_levels_of_a_no_tlm_radiograph_before_the_final(page, runtime, demo_data, serve_dir, tmp_path):
    from test_viewer import FAST4G, open_viewer, render_log, source_sha256, throttle

    tree = no_tlm_tree(demo_data, tmp_path / "tree")
    server = serve_dir(tree)
    entry = next(d for d in json.loads((tree / "demo.json").read_text()) if d["seriesInstanceUID"] == RADIOGRAPH_SERIES)
    p = page.page
    open_viewer(page, server.url, "?noload=1", state=("ready",))
    throttle(p, FAST4G)
    p.fill("#url", entry["url"])
    p.click("#load")
    p.wait_for_function("window.renderLog.some(e => e.final)", timeout=90_000)
    log = render_log(p)
    *partial, final = log
    assert partial and all(e["status"] == "SUBRESOLUTION" and not e["final"] for e in partial)
    sizes = [e["columns"] for e in log]
    assert sizes == sorted(set(sizes)), "strictly increasing resolutions"
    assert final["final"] and (final["rows"], final["columns"]) == (2614, 3072)
    assert final["t_ms"] > partial[0]["t_ms"] + 500
    assert p.evaluate("window.pyApp.pixelsSha256(0)") == source_sha256("radiograph", "cat.dcm")


# -- HT codeword segments bit by bit (no encoder at hand writes refinement or placeholder passes) -


def stuffed(bits: str) -> bytes:
    """Packet-header bits as an encoder writes them: MSB first, a 0 stuffed after each 0xFF."""
    out, value, count, room = bytearray(), 0, 0, 8
    for b in bits:
        value, count = (value << 1) | int(b), count + 1
        if count == room:
            out.append(value)
            room, value, count = (7 if value == 0xFF else 8), 0, 0
    if count:
        out.append(value << (room - count))
    if out and out[-1] == 0xFF:
        out.append(0)
    return bytes(out)


ONE_BLOCK = "1" + "1" + "1"  # non-empty packet; the block is included; no zero bit-plane
PASSES = {1: "0", 2: "10", 3: "1100", 4: "1101", 6: "111100000"}


@pytest.mark.parametrize(("passes", "lengths", "body"), [
    (1, "0101", 5),  # Lblock 3 + 1 (one increment): cleanup in 4 bits
    (2, "0101" + "0011", 8),  # then SigProp alone: 4 bits
    (3, "0101" + "00011", 8),  # then SigProp + MagRef: Lblock + 1 bits
    (3, "0000" + "0", 0),  # placeholders only: a zero cleanup, one more zero bit (3 passes)
    (6, "000101" + "00011", 8),  # 3 placeholders + cleanup (Lblock + 2), 2 refinements (Lblock + 1)
])
def test_ht_segment_lengths(passes, lengths, body):
    bits = ONE_BLOCK + PASSES[passes] + "10" + lengths  # Lblock: one increment, to 4
    data = stuffed(bits)
    packet = packets._Packet(0, 0, ((1, 1),), True, packets.HT_BLOCKS)
    assert packets._read_packet(data, 0, len(data), len(data), packet, False, False) == (len(data), body)


def test_classic_passes_share_one_segment():
    data = stuffed(ONE_BLOCK + PASSES[3] + "10" + "01010")  # 3 passes: Lblock 4 + floor(log2 3) = 5 bits
    packet = packets._Packet(0, 0, ((1, 1),), False, 0)
    assert packets._read_packet(data, 0, len(data), len(data), packet, False, False) == (len(data), 10)


def test_a_tlm_that_lists_one_tile_part_still_finds_levels_from_packets():
    pixels = smooth_image(9, 150, 170, 1, "uint16")
    other = bytes(imagecodecs.htj2k_encode(pixels, reversible=True, resolutions=4, tlm=True))
    assert len(tile_parts(other)) == 1 and b"\xff\x55" in other[: tile_parts(other)[0][0]]
    assert_same_levels(converter_encoding(pixels, 4), other)
