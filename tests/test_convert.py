"""app.convert: real DICOM files in, a static DICOMweb tree out, every frame of every alternate checked."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import imagecodecs
import numpy
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames
from pydicom.uid import generate_uid

from app import convert as convert_module
from app.codecs import PixelFormat, codec_for, decode_frame
from app.convert import ALTERNATES, convert, main

PROJECT = Path(__file__).resolve().parent.parent

SOURCES = [
    "CT_small.dcm",            # signed 16-bit, explicit VR
    "MR_small.dcm",            # signed 16-bit, same study as JPEG2000.dcm
    "JPEG2000.dcm",            # JPEG 2000 signed
    "SC_rgb_rle_2frame.dcm",   # RGB, RLE, multi-frame
    "examples_ybr_color.dcm",  # JPEG baseline YBR_FULL_422, 30 frames
    "image_dfl.dcm",           # deflated, 8-bit
    "examples_overlay.dcm",    # 12 of 16 bits stored
    "liver_1frame.dcm",        # 1-bit
]


def source_frames(path: Path) -> tuple[PixelFormat, list[numpy.ndarray], pydicom.Dataset]:
    """Reference pixels of a source file, one array per frame."""
    ds = pydicom.dcmread(path)
    fmt = PixelFormat.from_dataset(ds)
    transfer_syntax = str(ds.file_meta.TransferSyntaxUID)
    if codec_for(transfer_syntax).media_type == "application/octet-stream":
        length = fmt.frame_length
        frames = [ds.PixelData[i * length : (i + 1) * length] for i in range(fmt.number_of_frames)]
    else:
        frames = list(generate_frames(ds.PixelData, number_of_frames=fmt.number_of_frames))
    pixels = [decode_frame(frame, transfer_syntax, fmt) for frame in frames]
    if transfer_syntax in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.5"):
        reference = ds.pixel_array  # pydicom's own decoder agrees
        reference = reference if fmt.number_of_frames > 1 else reference[None]
        numpy.testing.assert_array_equal(numpy.stack(pixels), reference)
    return fmt, pixels, ds


def block_mean(image: numpy.ndarray, factor: int) -> numpy.ndarray:
    """Area average written differently from app.codecs.area_mean: pad with NaN, nanmean."""
    rows, columns = image.shape[:2]
    out_rows, out_columns = math.ceil(rows / factor), math.ceil(columns / factor)
    padded = numpy.full((out_rows * factor, out_columns * factor) + image.shape[2:], numpy.nan)
    padded[:rows, :columns] = image
    blocks = padded.reshape(out_rows, factor, out_columns, factor, *image.shape[2:])
    return numpy.nanmean(blocks, axis=(1, 3))


def frame_file(folder: Path, number: int, manifest: dict) -> Path:
    """Frame ``number`` of a frames folder: ``{n}.mht`` in multipart trees, ``{n}`` in raw ones."""
    return folder / (f"{number}.mht" if manifest["framing"] == "multipart" else str(number))


def read_frame_file(path: Path, manifest: dict, alternate: str) -> bytes:
    data = path.read_bytes()
    if manifest["framing"] == "raw":
        return data
    boundary = manifest["boundary"].encode()
    entry = manifest["alternates"][alternate]
    head = (b"--" + boundary + b"\r\nContent-Type: " + entry["mediaType"].encode() + b";transfer-syntax="
            + entry["transferSyntaxUID"].encode() + b"\r\nContent-Digest: sha-256=:")
    tail = b"\r\n--" + boundary + b"--"
    assert data.startswith(head), data[:160]
    assert data.endswith(tail)
    digest_end = data.index(b":\r\n\r\n", len(head))
    codestream = data[digest_end + 5 : -len(tail)]
    # the part's Content-Digest is the SHA-256 of exactly the codestream
    assert base64.b64decode(data[len(head) : digest_end]) == hashlib.sha256(codestream).digest()
    return codestream


def read_json(path: Path):
    plain = json.loads(path.read_bytes())
    zipped = json.loads(gzip.decompress(path.with_name(path.name + ".gz").read_bytes()))
    assert plain == zipped
    return plain


def codestream_segments(codestream: bytes) -> dict:
    """Main header markers, COD fields and the tile-parts (walked by Psot, not by searching)."""
    assert codestream[:2] == b"\xff\x4f"
    position, markers, cod, siz = 2, [], None, None
    while True:
        marker = int.from_bytes(codestream[position : position + 2], "big")
        if marker == 0xFF90:
            break
        length = int.from_bytes(codestream[position + 2 : position + 4], "big")
        body = codestream[position + 4 : position + 2 + length]
        markers.append(marker)
        if marker == 0xFF52:
            cod = {"order": body[1], "layers": int.from_bytes(body[2:4], "big"), "levels": body[5]}
        if marker == 0xFF51:
            siz = {"columns": int.from_bytes(body[2:6], "big"), "rows": int.from_bytes(body[6:10], "big")}
        position += 2 + length
    tile_parts = []
    while codestream[position : position + 2] == b"\xff\x90":
        psot = int.from_bytes(codestream[position + 6 : position + 10], "big")
        tile_parts.append({"tile": int.from_bytes(codestream[position + 4 : position + 6], "big"),
                           "index": codestream[position + 10], "count": codestream[position + 11], "length": psot})
        position += psot
    assert codestream[position : position + 2] == b"\xff\xd9", "EOC after the last tile-part"
    return {"markers": markers, "cod": cod, "siz": siz, "tile_parts": tile_parts}


def check_tree(out: Path, source_paths: list[Path], lossy_quality: float = convert_module.DEFAULT_LOSSY_QUALITY):
    """Every frame of every alternate of every source decodes and matches the source."""
    manifest = json.loads((out / "dicomweb.json").read_text())
    assert manifest["version"] == 1
    studies = read_json(out / "studies" / "index.json")
    study_uids = {study["0020000D"]["Value"][0] for study in studies}
    step = convert_module.lossy_step(lossy_quality)
    checked = 0
    for path in source_paths:
        fmt, pixels, ds = source_frames(path)
        study, series, sop = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
        assert study in study_uids
        series_dir = out / "studies" / study / "series" / series
        metadata = {item["00080018"]["Value"][0]: item for item in read_json(series_dir / "metadata")}
        assert sop in metadata
        obj = metadata[sop]
        assert obj["7FE00010"] == {"vr": "OB", "BulkDataURI": f"instances/{sop}/frames"}
        assert obj["00083002"]["Value"] == ["1.2.840.10008.1.2.4.202"]
        meta_fmt = PixelFormat.from_dicom_json(obj)
        assert (meta_fmt.rows, meta_fmt.columns, meta_fmt.number_of_frames) == (fmt.rows, fmt.columns,
                                                                                 fmt.number_of_frames)
        instances = read_json(series_dir / "index.json")
        assert sop in {item["00080018"]["Value"][0] for item in instances}
        assert read_json(series_dir / "instances" / "index.json") == instances
        series_index = read_json(out / "studies" / study / "series" / "index.json")
        assert series in {item["0020000E"]["Value"][0] for item in series_index}
        alternates = json.loads((series_dir / "alternates.json").read_text())
        for name, entry in alternates.items():
            scale = entry["scale"]
            alt_fmt = PixelFormat(**{**meta_fmt.__dict__, "rows": math.ceil(fmt.rows / scale),
                                     "columns": math.ceil(fmt.columns / scale)})
            assert (entry["rows"], entry["columns"]) == (alt_fmt.rows, alt_fmt.columns) or len(metadata) > 1
            for number, source in enumerate(pixels, 1):
                codestream = read_frame_file(frame_file(series_dir / "instances" / sop / name, number, manifest),
                                             manifest, name)
                decoded = decode_frame(codestream, entry["transferSyntaxUID"], alt_fmt)
                expected = source if scale == 1 else block_mean(source, scale)
                assert decoded.shape == expected.shape, (path.name, name)
                if entry["lossy"]:
                    error = numpy.abs(decoded.astype(float) - expected)
                    assert error.max() <= 4 * step + 1, (path.name, name, error.max())
                elif scale == 1:
                    numpy.testing.assert_array_equal(decoded, expected, err_msg=f"{path.name} {name}")
                else:
                    # lossless on the reduced image: equal to the area mean up to rounding
                    assert numpy.abs(decoded.astype(float) - expected).max() <= 0.5 + 1e-9, (path.name, name)
                if entry["transferSyntaxUID"] == "1.2.840.10008.1.2.4.202":
                    check_rpcl(codestream, alt_fmt.rows, alt_fmt.columns, entry["resolutionLevels"])
                checked += 1
    return checked


def check_rpcl(codestream: bytes, rows: int, columns: int, levels: int) -> None:
    info = codestream_segments(codestream)
    assert info["siz"] == {"rows": rows, "columns": columns}
    assert info["cod"]["order"] == 2, "RPCL progression"
    assert info["cod"]["levels"] == levels
    assert 0xFF55 in info["markers"], "TLM marker in the main header"
    assert math.ceil(max(rows, columns) / 2**levels) <= 64, "lowest resolution <= 64 px"
    parts = info["tile_parts"]
    assert len(parts) == levels + 1, "one tile-part per resolution"
    assert [part["index"] for part in parts] == list(range(levels + 1))
    assert {part["count"] for part in parts} <= {0, levels + 1}
    assert {part["tile"] for part in parts} == {0}


@pytest.fixture(scope="module")
def source_paths() -> list[Path]:
    return [Path(get_testdata_file(name)) for name in SOURCES]


@pytest.fixture(scope="module")
def tree(tmp_path_factory, source_paths):
    out = tmp_path_factory.mktemp("tree") / "dicomweb"
    summary = convert(source_paths, out, quiet=True)
    assert summary.ok, summary.failures
    return out, summary


def test_every_alternate_of_every_frame_decodes_and_matches(tree, source_paths):
    out, summary = tree
    frames = sum(PixelFormat.from_dataset(pydicom.dcmread(path)).number_of_frames for path in source_paths)
    assert summary.frames == frames
    assert summary.files_converted == len(source_paths)
    assert set(summary.bytes_by_alternate) == set(ALTERNATES)
    assert check_tree(out, source_paths) == frames * len(ALTERNATES)


def test_manifest_and_tree_layout(tree):
    out, summary = tree
    manifest = json.loads((out / "dicomweb.json").read_text())
    assert manifest["framing"] == "multipart" and manifest["boundary"] == summary.boundary
    frames = manifest["alternates"]["frames"]
    assert frames["contentType"] == f'multipart/related; type="image/jphc"; boundary={summary.boundary}'
    assert manifest["frameSuffix"] == ".mht" and manifest["converterVersion"] == convert_module.CONVERTER_VERSION
    frame_names = {p.name for p in out.rglob("*") if p.is_file() and p.parent.name in ALTERNATES}
    assert frame_names and all(name.endswith(".mht") and name[:-4].isdigit() for name in frame_names)
    for relative in ("studies/index.json", "studies/index.json.gz"):
        assert (out / relative).is_file()
    for study in (out / "studies").iterdir():
        if study.is_dir():
            assert (study / "index.json.gz").is_file() and (study / "series" / "index.json.gz").is_file()
            entry = read_json(study / "index.json")[0]
            count = sum(item["00201209"]["Value"][0] for item in read_json(study / "series" / "index.json"))
            assert entry["00201208"]["Value"] == [count]
    assert not list(out.rglob("*.tmp"))


def test_colour_metadata_says_rgb(tree):
    out, _ = tree
    ds = pydicom.dcmread(get_testdata_file("examples_ybr_color.dcm"))
    series_dir = out / "studies" / ds.StudyInstanceUID / "series" / ds.SeriesInstanceUID
    obj = read_json(series_dir / "metadata")[0]
    assert obj["00280004"]["Value"] == ["RGB"]
    assert obj["00280006"]["Value"] == [0]


def test_thumbnail_is_an_area_average_not_decimation(tree):
    out, _ = tree
    path = Path(get_testdata_file("CT_small.dcm"))
    fmt, pixels, ds = source_frames(path)
    series_dir = out / "studies" / ds.StudyInstanceUID / "series" / ds.SeriesInstanceUID
    manifest = json.loads((out / "dicomweb.json").read_text())
    codestream = read_frame_file(series_dir / "instances" / ds.SOPInstanceUID / "jlsThumbnail" / "1.mht",
                                 manifest, "jlsThumbnail")
    thumb_fmt = PixelFormat(**{**fmt.__dict__, "rows": 32, "columns": 32})
    thumbnail = decode_frame(codestream, "1.2.840.10008.1.2.4.80", thumb_fmt)
    assert thumbnail.shape == (32, 32)
    decimated = pixels[0][::4, ::4]
    mean = block_mean(pixels[0], 4)
    assert numpy.abs(thumbnail - mean).max() <= 0.5
    assert numpy.abs(decimated - mean).max() > 10  # the two differ on this image


def test_raw_framing(tmp_path):
    path = Path(get_testdata_file("CT_small.dcm"))
    out = tmp_path / "raw"
    summary = convert([path], out, alternates="htj2k,jls", raw=True, quiet=True)
    assert summary.ok and summary.alternates == ("frames", "jls")
    manifest = json.loads((out / "dicomweb.json").read_text())
    assert manifest["framing"] == "raw"
    assert manifest["alternates"]["frames"]["contentType"].startswith("image/jphc")
    ds = pydicom.dcmread(path)
    instance = out / "studies" / ds.StudyInstanceUID / "series" / ds.SeriesInstanceUID / "instances" / ds.SOPInstanceUID
    assert (instance / "frames" / "1").read_bytes()[:2] == b"\xff\x4f"
    assert (instance / "jls" / "1").read_bytes()[:2] == b"\xff\xd8"
    assert not (instance / "lossy").exists() and not list(instance.rglob("*.mht"))
    check_tree(out, [path])
    with pytest.raises(convert_module.ConversionError, match="framing"):
        convert([path], out, quiet=True)  # a multipart run into a raw tree is refused


def make_bad_inputs(folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.txt").write_text("not a DICOM file\n")
    no_pixels = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del no_pixels.PixelData
    no_pixels.save_as(folder / "no_pixels.dcm")
    broken = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    broken.SOPInstanceUID = generate_uid()
    broken.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.80"
    broken.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8\xff\xf7" + bytes(range(256)) * 4])
    broken["PixelData"].VR = "OB"
    broken.save_as(folder / "undecodable.dcm", enforce_file_format=True)
    return {"no_pixels.dcm": "no pixel data", "undecodable.dcm": "JPEG-LS"}


def test_bad_inputs_are_reported_and_the_rest_converted(tmp_path):
    bad = make_bad_inputs(tmp_path / "in")
    good = Path(get_testdata_file("MR_small.dcm"))
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "app.convert", str(tmp_path / "in"), str(good), "-o", str(out),
         "--alternates", "jlsThumbnail"],
        cwd=PROJECT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1, result.stderr
    for name, reason in bad.items():
        lines = [line for line in result.stderr.splitlines() if name in line and "FAILED" in line]
        assert lines and reason in lines[0], (name, result.stderr)
    assert any("skipped" in line and "notes.txt: not a DICOM file" in line for line in result.stderr.splitlines())
    assert "files: 1 converted, 2 failed, 1 skipped" in result.stdout
    assert "jlsThumbnail" in result.stdout
    check_tree(out, [good])


def test_cli_exit_status_zero_when_all_converted(tmp_path):
    good = Path(get_testdata_file("CT_small.dcm"))
    assert main([str(good), "-o", str(tmp_path / "out"), "--quiet", "--alternates", "none"]) == 0
    assert main([str(good), "-o", str(tmp_path / "out"), "--alternates", "bogus"]) == 2


def test_rerun_after_interruption_completes_the_tree(tmp_path, monkeypatch):
    source = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    inputs = []
    series = generate_uid()
    for number in range(1, 5):  # a 4-instance series
        source.SOPInstanceUID = generate_uid()
        source.file_meta.MediaStorageSOPInstanceUID = source.SOPInstanceUID
        source.SeriesInstanceUID = series
        source.InstanceNumber = number
        path = tmp_path / "in" / f"ct{number}.dcm"
        path.parent.mkdir(exist_ok=True)
        source.save_as(path)
        inputs.append(path)
    out = tmp_path / "out"

    calls = {"n": 0}
    real_write = convert_module.write_atomic

    def interrupted_write(path, chunks):
        if path.parent.name not in ALTERNATES:
            return real_write(path, chunks)
        calls["n"] += 1
        if calls["n"] == 7:  # the second instance's second frame file, half written
            chunks = list(chunks) if not isinstance(chunks, bytes) else [chunks]

            def exploding():
                yield chunks[0]
                raise KeyboardInterrupt

            return real_write(path, exploding())
        return real_write(path, chunks)

    monkeypatch.setattr(convert_module, "write_atomic", interrupted_write)
    with pytest.raises(KeyboardInterrupt):
        convert(inputs, out, quiet=True)
    monkeypatch.setattr(convert_module, "write_atomic", real_write)

    assert not list(out.rglob("*.tmp")), "no temporary file left behind"
    series_dir = out / "studies" / source.StudyInstanceUID / "series" / series
    metadata = read_json(series_dir / "metadata")
    assert len(metadata) == 1, "only the completed instance is in the metadata"
    for frame in (series_dir / "instances").rglob("*"):
        if frame.is_file() and frame.parent.name in ALTERNATES:
            read_frame_file(frame, json.loads((out / "dicomweb.json").read_text()), frame.parent.name)

    boundary = json.loads((out / "dicomweb.json").read_text())["boundary"]
    summary = convert(inputs, out, quiet=True)
    assert summary.ok and summary.boundary == boundary, "a re-run keeps the tree's boundary"
    assert len(read_json(series_dir / "metadata")) == 4
    assert check_tree(out, inputs) == 4 * len(ALTERNATES)

    # a later run with another series merges into the studies index
    other = Path(get_testdata_file("MR_small.dcm"))
    convert([other], out, alternates="none", quiet=True)
    studies = {item["0020000D"]["Value"][0] for item in read_json(out / "studies" / "index.json")}
    assert studies == {source.StudyInstanceUID, pydicom.dcmread(other).StudyInstanceUID}
    assert len(read_json(series_dir / "metadata")) == 4


def test_progress_lines_per_frame(tmp_path):
    import io

    stream = io.StringIO()
    path = Path(get_testdata_file("SC_rgb_rle_2frame.dcm"))
    convert([path], tmp_path / "out", alternates="none", progress_stream=stream)
    lines = stream.getvalue().splitlines()
    assert lines == [line for line in lines if "SC_rgb_rle_2frame.dcm frame" in line] and len(lines) == 2


# -- the real radiograph ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def radiograph() -> Path:
    """cat.dcm from deid-data, downloaded (once, cached) by tools/demo_data.py; the shared demo tree
    is only read here, never converted again (another converter version must not rewrite it)."""
    from tools.demo_data import SOURCES, download, extract

    source = next(s for s in SOURCES if s.key == "radiograph")
    try:
        archive = download(source, PROJECT / ".cache" / "downloads")
        paths = extract(source, archive, PROJECT / ".cache" / "demo" / source.key) if archive else []
    except (RuntimeError, OSError) as exc:  # no registry reachable: nothing to test against
        pytest.skip(f"demo data unavailable: {exc}")
    if not paths:
        pytest.skip("radiograph not downloaded")
    return Path(paths[0])


def test_radiograph_converts_and_round_trips(radiograph, tmp_path):
    summary = convert([radiograph], tmp_path / "out", quiet=True)  # its speed: python -m app bench
    assert summary.ok
    print("\n" + summary.table())
    assert check_tree(tmp_path / "out", [radiograph]) == len(ALTERNATES)
    alternates = json.loads(next((tmp_path / "out").rglob("alternates.json")).read_text())
    assert (alternates["frames"]["rows"], alternates["frames"]["columns"]) == (2614, 3072)
    assert alternates["frames"]["resolutionLevels"] == 6  # 3072 / 2^6 = 48 <= 64 < 96
    assert (alternates["jlsThumbnail"]["rows"], alternates["jlsThumbnail"]["columns"]) == (654, 768)


def test_demo_tree_lists_the_demo_series(radiograph):
    out = PROJECT / "static" / "dicomweb"
    if not (out / "demo.json").is_file():
        pytest.skip("no demo tree laid out (tools/demo_data.py)")
    demos = json.loads((out / "demo.json").read_text())
    names = [demo["name"] for demo in demos]
    assert "Radiograph 3072x2614 (DX)" in names
    for demo in demos:
        assert demo["url"] == f"/dicomweb/studies/{demo['studyInstanceUID']}/series/{demo['seriesInstanceUID']}"
        series_dir = out / "studies" / demo["studyInstanceUID"] / "series" / demo["seriesInstanceUID"]
        assert (series_dir / "metadata.gz").is_file() and (series_dir / "alternates.json").is_file()


def test_metadata_merged_in_batches(tmp_path, monkeypatch):
    source = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    source.SeriesInstanceUID = generate_uid()
    inputs = []
    for number in (3, 1, 5, 2, 4):
        source.SOPInstanceUID = generate_uid()
        source.InstanceNumber = number
        path = tmp_path / f"mr{number}.dcm"
        source.save_as(path)
        inputs.append(path)
    monkeypatch.setattr(convert_module._PendingMetadata.__init__, "__defaults__", (2, 10.0))
    summary = convert(inputs, tmp_path / "out", alternates="none", quiet=True)
    assert summary.ok
    series_dir = tmp_path / "out" / "studies" / source.StudyInstanceUID / "series" / source.SeriesInstanceUID
    metadata = read_json(series_dir / "metadata")
    assert [item["00200013"]["Value"][0] for item in metadata] == [1, 2, 3, 4, 5]
    assert len(read_json(series_dir / "index.json")) == 5


# -- hostile and odd inputs (issue 14 items 1 and 7) ------------------------------------------------


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


@pytest.mark.parametrize("keyword,value", [
    ("StudyInstanceUID", "../../../../escape"),
    ("SeriesInstanceUID", "1.2/../../../escape"),
    ("SOPInstanceUID", "ABSOLUTE"),  # replaced by an absolute path under tmp_path below
    ("SOPInstanceUID", "1..2"),
])
def test_only_valid_uids_become_paths(tmp_path, keyword, value):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    if value == "ABSOLUTE":
        value = str(tmp_path / "y")
    setattr(ds, keyword, value)
    deep = tmp_path / "a" / "b" / "c" / "d"
    deep.mkdir(parents=True)
    ds.save_as(deep / "hostile.dcm")
    good = Path(get_testdata_file("MR_small.dcm"))
    before = files_under(tmp_path)
    out = deep / "out"
    result = subprocess.run([sys.executable, "-m", "app.convert", str(deep / "hostile.dcm"), str(good), "-o", str(out),
                             "--alternates", "none", "-q"], cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if "FAILED" in line]
    assert "hostile.dcm" in line and f"{keyword} " in line and "is not a valid DICOM UID" in line
    created = {p for p in files_under(tmp_path) - before if not p.is_relative_to(out)}
    assert created == set(), "nothing written outside -o"
    assert not (tmp_path / "y").exists() and not list(tmp_path.rglob("escape"))
    check_tree(out, [good])


def test_every_per_file_error_is_reported_and_the_run_goes_on(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    source = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    (folder / "truncated.dcm").write_bytes(source[: len(source) // 2])
    deflated = Path(get_testdata_file("image_dfl.dcm")).read_bytes()
    start = deflated.index(b"1.2.840.10008.1.2.1.99") + 40
    (folder / "bad_deflate.dcm").write_bytes(deflated[:start] + b"\x00garbage" * 50)  # zlib error
    shutil.copy(get_testdata_file("DICOMDIR"), folder / "media.dir")
    (folder / "README.txt").write_text("scans from the archive\n")
    good = folder / "good.dcm"
    shutil.copy(get_testdata_file("MR_small.dcm"), good)
    out = tmp_path / "out"
    summary = convert([folder], out, alternates="none", quiet=True, progress_stream=__import__("io").StringIO())
    failed = {f.path.name: f.reason for f in summary.failures}
    skipped = {f.path.name: f.reason for f in summary.skipped}
    assert skipped == {"README.txt": "not a DICOM file", "media.dir": "a DICOMDIR (media directory), not an image"}
    assert set(failed) == {"truncated.dcm", "bad_deflate.dcm"}, failed
    assert all(reason for reason in failed.values())
    assert [r.path.name for r in summary.instances] == ["good.dcm"] and not summary.ok
    # a second run over a folder that now holds the tree itself converts the same, skipping the tree
    again = convert([tmp_path], out, alternates="none", quiet=True, progress_stream=__import__("io").StringIO())
    assert not any(f.path.is_relative_to(out) for f in again.failures + again.skipped)


def test_only_non_dicom_files_skipped_exit_zero(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("hello")
    shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "in" / "ct.dcm")
    assert main([str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--alternates", "none", "-q"]) == 0


# -- thumbnails ------------------------------------------------------------------------------------


def test_rendered_thumbnails_per_instance_and_series(tmp_path):
    from app.readers.jpeg import read_jpeg_header

    source = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    series = generate_uid()
    inputs = []
    for number in range(1, 5):
        source.SOPInstanceUID = generate_uid()
        source.SeriesInstanceUID = series
        source.InstanceNumber = number
        source.WindowCenter, source.WindowWidth = 40 + 300 * number, 400  # each instance looks different
        path = tmp_path / "in" / f"ct{number}.dcm"
        path.parent.mkdir(exist_ok=True)
        source.save_as(path)
        inputs.append((number, source.SOPInstanceUID, path))
    out = tmp_path / "out"
    assert convert([p for _, _, p in reversed(inputs)], out, alternates="none", quiet=True).ok
    series_dir = out / "studies" / source.StudyInstanceUID / "series" / series
    thumbs = {}
    for number, sop, _ in inputs:
        data = (series_dir / "instances" / sop / "thumbnail").read_bytes()
        header = read_jpeg_header(data)
        assert header.sof == 0xC0 and header.precision == 8 and header.components == 1  # baseline: any browser
        assert max(header.size) <= 128
        thumbs[number] = imagecodecs.jpeg8_decode(data)
        assert thumbs[number].shape == (128, 128) and int(thumbs[number].max()) - int(thumbs[number].min()) > 50
    assert len({t.tobytes() for t in thumbs.values()}) == 4
    middle = (series_dir / "thumbnail").read_bytes()  # the middle image of the series (number 3 of 1..4)
    assert middle == (series_dir / "instances" / inputs[2][1] / "thumbnail").read_bytes()


def test_thumbnail_pixels_window_monochrome1_and_size():
    from app.thumbnails import thumbnail_pixels

    ramp = numpy.tile(numpy.arange(1000, dtype=numpy.uint16), (300, 1))
    fmt = PixelFormat(rows=300, columns=1000, bits_stored=12)
    grey = thumbnail_pixels(ramp, fmt, [(500, 200)])
    assert grey.shape == (38, 125) and grey.dtype == numpy.uint8
    assert grey[0, 0] == 0 and grey[0, -1] == 255 and 0 < grey[0, 62] < 255
    inverted = thumbnail_pixels(ramp, PixelFormat(**{**fmt.__dict__, "photometric_interpretation": "MONOCHROME1"}),
                                [(500, 200)])
    numpy.testing.assert_array_equal(inverted, 255 - grey)
    auto = thumbnail_pixels(ramp, fmt)  # no window: the image's range
    assert auto.min() == 0 and auto.max() == 255
    rgb = thumbnail_pixels(numpy.full((10, 20, 3), 200, numpy.uint8), fmt)
    assert rgb.shape == (10, 20, 3) and (rgb == 200).all()


def test_a_tree_in_the_old_layout_is_upgraded_by_a_rerun(tmp_path):
    """Trees written before the suffix hold frames/1: a re-run writes frames/1.mht and removes frames/1."""
    path = Path(get_testdata_file("CT_small.dcm"))
    out = tmp_path / "out"
    assert convert([path], out, alternates="jls", quiet=True).ok
    ds = pydicom.dcmread(path)
    instance = out / "studies" / ds.StudyInstanceUID / "series" / ds.SeriesInstanceUID / "instances" / ds.SOPInstanceUID
    for folder in ("frames", "jls"):  # make it an old tree: frames/1, no frameSuffix in the manifest
        (instance / folder / "1.mht").rename(instance / folder / "1")
    manifest = json.loads((out / "dicomweb.json").read_text())
    del manifest["frameSuffix"]
    (out / "dicomweb.json").write_text(json.dumps(manifest))
    assert convert([path], out, alternates="jls", quiet=True).ok
    assert sorted(p.name for p in (instance / "jls").iterdir()) == ["1.mht"]
    assert json.loads((out / "dicomweb.json").read_text())["boundary"] == manifest["boundary"]
    check_tree(out, [path])


def test_a_bounded_converter_fuzz_run_has_no_crash_and_writes_nothing_outside(tmp_path):
    """tools/fuzz.py --converter: mutated P10 files, each batch in its own converter process."""
    result = subprocess.run([sys.executable, "tools/fuzz.py", "--converter", "--seconds", "4", "--seed", "3",
                             "--batch", "10", "--save", str(tmp_path)],
                            cwd=PROJECT, capture_output=True, text=True, timeout=300)
    report = json.loads(result.stdout)
    assert result.returncode == 0, report["problems"]
    assert report["cases"] >= 10 and set(report["outcomes"]) <= {"converted", "failed", "skipped"}
    assert sum(report["outcomes"].values()) == report["cases"]
