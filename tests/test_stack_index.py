"""The series' stack index (``stack.json``): its reader (round trip, refusals, any JSON), the stack
it rebuilds (the metadata's, field for field), the converter writing it (one run, incremental,
``--reindex``), and discovery using it over a MockTransport: asked with the metadata, the first
frame request out before the metadata is read, nothing delivered before the metadata agrees, a
disagreement ending in one message and the metadata's stack, no index = the old path."""

from __future__ import annotations

import asyncio
import copy
import io
import json
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.bench.discovery import SERIES_URL, synthetic_metadata
from app.codecs import EXPLICIT_VR_LITTLE_ENDIAN
from app.config import preset
from app.convert import convert, read_json_pair, write_missing_stack_indexes
from app.convert_pool import main as convert_main
from app.engine import ImageFailed, Refinement, RequestStarted
from app.study import IndexMismatch, Stack, discover, index_disagreement, index_of_stack, stack_from_index, stack_from_metadata
from app.transport.mock import MockResponse
from app.tree.stack_index import (IMAGE_FIELDS, STACK_INDEX_NAME, SeriesIdentity, StackIndex, parse_stack_index,
                                  stack_index_bytes)
from app.viewer_engine import StackReplaced, open_stack
from helpers import BASE, Site, ct_series, image_pixels

# -- the reader -------------------------------------------------------------------------------------

uids = st.lists(st.integers(0, 10**9), min_size=1, max_size=4).map(lambda parts: "1.2." + ".".join(map(str, parts)))
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
counts = st.integers(0, 2**16)
formats = st.tuples(counts, counts, counts, counts, counts, counts, st.sampled_from(["MONOCHROME2", "RGB"]),
                    counts, st.integers(1, 50), finite, finite)
images = st.tuples(uids, st.integers(1, 50), st.sampled_from(["1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.1"]),
                   formats, st.none() | st.tuples(finite, finite), st.lists(st.tuples(finite, finite), max_size=3).map(tuple),
                   st.none() | st.integers(-2**31, 2**31), st.none() | st.tuples(finite, finite, finite))
identities = st.builds(SeriesIdentity, uids, uids, st.none() | st.text(max_size=8), st.none() | st.text(max_size=8),
                       st.none() | st.text(max_size=8), st.none() | st.just("20260101"), st.none() | st.text(max_size=8),
                       st.none() | st.text(max_size=8), st.none() | st.integers(0, 999))


@settings(max_examples=60, deadline=None)
@given(identities, st.lists(images, min_size=1, max_size=12))
def test_an_index_reads_back_as_written(identity, rows):
    written = StackIndex.from_images(identity, rows)
    read = parse_stack_index(json.loads(stack_index_bytes(written)))
    assert read.series == identity and read.count == len(rows)
    columns = [list(read.column(name)) for name in IMAGE_FIELDS]
    assert [tuple(values) for values in zip(*columns)] == [tuple(row) for row in rows]
    assert "sop" in read.each  # never "same", even for one image


def valid_doc() -> dict:
    stack = stack_from_metadata(json.loads(synthetic_metadata(4)), SERIES_URL)
    return json.loads(stack_index_bytes(index_of_stack(stack)))


def _set(path: list, value):
    def change(doc):
        target = doc
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return change


def _drop(path: list):
    def change(doc):
        target = doc
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]
    return change


BREAKAGES = {
    "version 2": _set(["stackIndex"], 2),
    "no version": _drop(["stackIndex"]),
    "count off": _set(["images"], 5),
    "count zero": _set(["images"], 0),
    "count bool": _set(["images"], True),
    "sop once": lambda d: d["same"].update(sop=d["each"].pop("sop")[0]),
    "field twice": lambda d: d["each"].update(frame=[1, 1, 1, 1]),
    "field missing": _drop(["same", "frame"]),
    "unknown field": _set(["same", "colour"], 1),
    "bad sop": lambda d: d["each"]["sop"].__setitem__(2, "../../etc"),
    "short column": lambda d: d["each"]["sop"].pop(),
    "frame zero": _set(["same", "frame"], 0),
    "frame bool": _set(["same", "frame"], True),
    "format short": lambda d: d["same"]["format"].pop(),
    "format text rows": lambda d: d["same"]["format"].__setitem__(0, "256"),
    "spacing one": _set(["same", "spacing"], [1.0]),
    "position text": lambda d: d["each"]["position"].__setitem__(0, "here"),
    "window nan": _set(["same", "windows"], [[float("nan"), 1.0]]),
    "series uid": _set(["series", "seriesInstanceUID"], "1.2.x"),
    "series number text": _set(["series", "seriesNumber"], "3"),
    "patient number": _set(["series", "patientName"], 7),
    "not an object": lambda d: d.clear(),
}


@pytest.mark.parametrize("name", sorted(BREAKAGES))
def test_a_broken_index_is_refused_with_a_clear_message(name):
    doc = valid_doc()
    parse_stack_index(copy.deepcopy(doc))  # the unbroken one reads
    BREAKAGES[name](doc)
    with pytest.raises(ValueError, match="stack index"):
        parse_stack_index(doc)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | finite | st.text(max_size=6),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                                       max_size=4), max_leaves=20)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["stackIndex", "images", "series", "same", "each"]), json_values)
def test_any_json_in_any_place_is_read_or_refused_never_a_crash(key, value):
    doc = valid_doc()
    doc[key] = value
    try:
        parse_stack_index(doc)
    except ValueError:
        pass


# -- the stack it rebuilds ------------------------------------------------------------------------------


def through_index(metadata: list) -> tuple:
    stack = stack_from_metadata(metadata, SERIES_URL)
    index = index_of_stack(stack)
    return stack_from_index(parse_stack_index(json.loads(stack_index_bytes(index))), SERIES_URL), stack


def test_the_index_rebuilds_the_metadatas_stack_field_for_field():
    docs = json.loads(synthetic_metadata(30))
    for i, doc in enumerate(docs):  # per-instance rescale and windows, one of another size
        doc["00281052"] = {"vr": "DS", "Value": [-1024.0 + (i % 3)]}
        doc["00281050"] = {"vr": "DS", "Value": [40.0 + i]}
    docs[5]["00280010"] = {"vr": "US", "Value": [128]}
    ours, theirs = through_index(docs)
    assert ours.images == theirs.images and index_disagreement(ours, theirs) is None
    assert [im.index for im in ours.images] == list(range(30))
    assert ours.images[0].frame_url == f"{SERIES_URL}/instances/{ours.images[0].sop_instance_uid}/frames/1"
    index = index_of_stack(theirs)
    assert {"sop", "position", "format", "windows"} <= set(index.each) and "transferSyntax" in index.same


def test_multiframe_and_unordered_series_round_trip():
    docs = json.loads(synthetic_metadata(3))
    for doc in docs:
        del doc["00200032"], doc["00200037"]  # no geometry: ordered by instance number
    docs[1]["00280008"] = {"vr": "IS", "Value": [4]}
    ours, theirs = through_index(docs)
    assert len(theirs) == 6 and ours.images == theirs.images
    assert [im.frame for im in ours.images if im.sop_instance_uid == docs[1]["00080018"]["Value"][0]] == [1, 2, 3, 4]


def test_inline_pixel_data_gets_no_index():
    docs = json.loads(synthetic_metadata(2))
    for doc in docs:
        doc["00280010"] = doc["00280011"] = {"vr": "US", "Value": [2]}
        doc["7FE00010"] = {"vr": "OW", "InlineBinary": "AAAAAAAAAAA="}
    assert index_of_stack(stack_from_metadata(docs, SERIES_URL)) is None


@pytest.mark.parametrize("change, words", [
    (lambda d: d[0]["00100020"].update(Value=["other"]), "patient id"),
    (lambda d: d[3]["00200032"].update(Value=[0.0, 0.0, 999.0]), "image"),
    (lambda d: d[0]["00080018"].update(Value=["2.25.99"]), "image"),
    (lambda d: d.pop(), "20 images in the index, 19 in the metadata"),
])
def test_a_disagreement_is_named_in_words(change, words):
    docs = json.loads(synthetic_metadata(20))
    ours = through_index(docs)[0]
    change(docs)
    difference = index_disagreement(ours, stack_from_metadata(docs, SERIES_URL))
    assert difference and words in difference


# -- discovery over a MockTransport ------------------------------------------------------------------


def site_with(count: int = 6, *, index_from=None, index_bytes: bytes | None = None) -> Site:
    """Native 8x8 frames, their metadata, and a stack.json made from ``index_from`` (a metadata list,
    default the site's own) or given as bytes."""
    site = Site()
    for i in range(count):
        pixels = image_pixels(8, 8, seed=i)
        site.add_frame(i, pixels, pixels.tobytes(), EXPLICIT_VR_LITTLE_ENDIAN)
    site.files[f"{BASE}/metadata"] = (json.dumps(site.metadata).encode(), "application/dicom+json", {})
    if index_bytes is None and index_from is not False:
        index_bytes = stack_index_bytes(index_of_stack(stack_from_metadata(index_from or site.metadata, BASE)))
    if index_bytes is not None:
        site.files[f"{BASE}/{STACK_INDEX_NAME}"] = (index_bytes, "application/json", {})
    return site


KEPT: list = []  # loaders kept open by load(keep=True)


def load(site: Site, *, gate: asyncio.Event | None = None, log: list | None = None, prepare=None,
         keep: bool = False):
    """open_stack + run over the site; (stack, delivered events, engine-level events, transport)."""
    log = log if log is not None else []
    transport = site.transport()
    handler = transport.handler

    async def logged(request):
        name = request.url.rsplit("/", 1)[-1]
        log.append(("ask", request.url.removeprefix(BASE + "/")))
        if name == "metadata" and gate is not None:
            await gate.wait()
        answer = handler(request)
        if name == "metadata" and isinstance(answer, MockResponse) and answer.status == 200:
            pieces = answer.body

            async def read():
                log.append(("metadata read",))
                for piece in pieces:
                    yield piece
            answer.body = read()
        return answer

    transport.handler = logged

    async def main():
        stack, loader = await open_stack(BASE, preset("single"), transport=transport)
        loader.prepare = prepare
        engine_events = []
        loader.engine.on_event = lambda e: (engine_events.append(e), log.append(("engine", type(e).__name__)))
        delivered = []

        def on_event(event):
            delivered.append(event)
            log.append(("delivered", type(event).__name__))
            if isinstance(event, StackReplaced) and event.stack is not None:
                loader.engine.on_event = lambda e: log.append(("engine", type(e).__name__))

        try:
            await loader.run(len(stack) // 2, on_event)
        finally:
            if keep:
                KEPT.append(loader)
            else:
                await loader.aclose()
        return stack, delivered, engine_events

    return (*asyncio.run(asyncio.wait_for(main(), 30)), transport)


def test_with_an_index_the_first_frame_request_goes_out_before_the_metadata_is_read():
    log: list = []
    stack, delivered, _, transport = load(site_with(), log=log)
    assert stack.work.source == "index" and stack.work.check_ms > 0
    asked = [entry[1] for entry in log if entry[0] == "ask"]
    assert asked[0] == STACK_INDEX_NAME and "metadata" in asked[:4]
    first_frame = next(i for i, entry in enumerate(log) if entry[0] == "ask" and "/frames/" in entry[1])
    assert first_frame < log.index(("metadata read",))
    assert sorted(e.index for e in delivered if isinstance(e, Refinement) and e.final) == list(range(6))
    assert not any(isinstance(e, StackReplaced) for e in delivered)


def test_nothing_is_delivered_before_the_metadata_agrees():
    """The frames are answered and decoded while the metadata waits: nothing leaves the loader."""
    gate = asyncio.Event()
    log: list = []
    site = site_with()

    async def release_once_decoded():
        while ("engine", "Refinement") not in log:
            await asyncio.sleep(0.001)
        for _ in range(50):
            await asyncio.sleep(0)
        log.append(("released",))
        gate.set()

    original = site.handler

    def handler(request):
        if request.url.endswith("/frames/1") and not any(e == ("started",) for e in log):
            log.append(("started",))
            asyncio.ensure_future(release_once_decoded())
        return original(request)

    site.handler = handler
    _, delivered, engine_events, _ = load(site, gate=gate, log=log)
    assert any(isinstance(e, Refinement) for e in engine_events)
    released = log.index(("released",))
    assert ("engine", "Refinement") in log[:released]
    assert not [entry for entry in log[:released] if entry[0] == "delivered"]
    assert sum(isinstance(e, Refinement) and e.final for e in delivered) == 6


def lying_index_site() -> tuple[Site, Stack]:
    """A site whose stack.json has the first slice moved to the end; and the metadata's stack."""
    other = copy.deepcopy(site_with().metadata)
    other[0]["00200032"] = {"vr": "DS", "Value": [0, 0, 100]}
    site = site_with(index_from=other)
    return site, stack_from_metadata(site.metadata, BASE)


def test_an_index_that_disagrees_ends_in_one_message_and_the_metadatas_stack():
    site, truth = lying_index_site()
    _, delivered, _, _ = load(site)
    assert isinstance(delivered[0], StackReplaced)  # before anything else
    assert "disagrees with its metadata: image 1: sop instance uid" in delivered[0].message
    assert delivered[0].stack.images == truth.images
    assert sum(isinstance(e, StackReplaced) for e in delivered) == 1
    refinements = [e for e in delivered if isinstance(e, Refinement)]
    assert sorted(e.index for e in refinements if e.final) == list(range(6))
    assert all(e.sop_instance_uid == truth.images[e.index].sop_instance_uid for e in refinements)


def test_the_stack_that_replaces_an_index_is_prepared_before_it_loads():
    """The worker installs pydicom there when the metadata names a syntax only it decodes."""
    site = site_with()
    other = copy.deepcopy(site.metadata)
    other[2]["00083002"] = {"vr": "UI", "Value": ["1.2.840.10008.1.2.4.202"]}
    site = site_with(index_from=other)
    log: list = []

    async def prepare(stack):
        log.append(("prepared", stack.images[2].transfer_syntax))
        await asyncio.sleep(0)

    _, delivered, _, _ = load(site, log=log, prepare=prepare)
    prepared = log.index(("prepared", EXPLICIT_VR_LITTLE_ENDIAN))
    assert [e for e in log[:prepared] if e[0] == "delivered"] == [("delivered", "StackReplaced")]
    assert sum(isinstance(e, Refinement) and e.final for e in delivered) == 6


def test_an_index_without_readable_metadata_shows_nothing():
    site = site_with()
    del site.files[f"{BASE}/metadata"]
    _, delivered, engine_events, _ = load(site, keep=True)
    assert [type(e) for e in delivered] == [StackReplaced]
    assert delivered[0].stack is None and "could not be read" in delivered[0].message
    assert any(isinstance(e, RequestStarted) for e in engine_events)  # it had asked: nothing shown
    loader = KEPT[-1]
    assert loader.pending() == []  # the worker's loop never runs the unconfirmed stack again
    asyncio.run(loader.run(0, delivered.append))
    assert [type(e) for e in delivered] == [StackReplaced]


def cli_load(site: Site, out: io.StringIO) -> tuple:
    """``python -m app load`` over the site: (stack, images final, its JSON lines)."""
    from app.cli import load as cli_load_stack

    stack, _, final = asyncio.run(asyncio.wait_for(
        cli_load_stack(BASE, preset("single"), transport=site.transport(), out=out, err=io.StringIO()), 30))
    return stack, final, [json.loads(line) for line in out.getvalue().splitlines()]


def test_the_cli_loads_from_the_index_and_says_so_once_the_metadata_agrees():
    stack, final, lines = cli_load(site_with(), io.StringIO())
    assert stack.work.source == "index"
    assert lines[0]["event"] == "StackReady" and lines[0]["images"] == 6
    assert final == 6 and lines[-1] == {**lines[-1], "event": "LoadSummary", "final": 6}


def test_the_cli_writes_nothing_of_an_index_that_disagrees():
    site, truth = lying_index_site()
    stack, final, lines = cli_load(site, io.StringIO())
    assert [line["event"] for line in lines[:2]] == ["StackReplaced", "StackReady"]
    assert "disagrees with its metadata" in lines[0]["message"]
    refinements = [line for line in lines if line["event"] == "Refinement"]
    assert refinements and all(line["sop_instance_uid"] == truth.images[line["index"]].sop_instance_uid
                               for line in refinements)
    assert final == 6 and stack.images == truth.images


def test_the_cli_ends_in_one_message_when_an_index_has_no_readable_metadata():
    site = site_with()
    del site.files[f"{BASE}/metadata"]
    out = io.StringIO()
    with pytest.raises(IndexMismatch, match="could not be read"):
        cli_load(site, out)
    assert [json.loads(line)["event"] for line in out.getvalue().splitlines()] == ["StackReplaced"]


def test_without_an_index_discovery_is_as_before():
    log: list = []
    stack, delivered, _, _ = load(site_with(index_from=False), log=log)
    assert stack.work.source == "metadata" and stack.index_check is None
    first_frame = next(i for i, entry in enumerate(log) if entry[0] == "ask" and "/frames/" in entry[1])
    assert log.index(("metadata read",)) < first_frame
    assert sum(isinstance(e, Refinement) and e.final for e in delivered) == 6


def test_a_refused_index_falls_back_to_the_metadata_and_says_why():
    doc = json.loads(stack_index_bytes(index_of_stack(stack_from_metadata(site_with().metadata, BASE))))
    doc["stackIndex"] = 99
    stack, delivered, _, _ = load(site_with(index_bytes=json.dumps(doc).encode()))
    assert stack.work.source == "metadata" and "version 99" in stack.work.index_note
    assert not any(isinstance(e, (StackReplaced, ImageFailed)) for e in delivered)


def test_plain_discovery_never_asks_for_the_index():
    """The command line and tests call discover() without provisional: the metadata's stack only."""
    site = site_with()
    transport = site.transport()
    stack = asyncio.run(discover(transport, BASE))
    assert stack.index_check is None and stack.work.source == "metadata"
    assert not any(r.url.endswith(STACK_INDEX_NAME) for r in transport.requests)


# -- the converter ----------------------------------------------------------------------------------


def series_dirs(out):
    return sorted(p for p in out.glob("studies/*/series/*") if p.is_dir())


def test_the_converter_writes_the_index_and_keeps_it_right_when_a_series_grows(tmp_path):
    paths, _ = ct_series(tmp_path / "src", 4, series_uid="1.2.826.0.1.3680043.8.498.1")
    convert(paths[:2], tmp_path / "grown", quiet=True)
    convert(paths[2:], tmp_path / "grown", quiet=True)
    convert(paths, tmp_path / "once", quiet=True)
    (grown,), (once,) = series_dirs(tmp_path / "grown"), series_dirs(tmp_path / "once")
    assert (grown / STACK_INDEX_NAME).read_bytes() == (once / STACK_INDEX_NAME).read_bytes()
    index = parse_stack_index(json.loads((grown / STACK_INDEX_NAME).read_bytes()))
    metadata_stack = stack_from_metadata(read_json_pair(grown / "metadata", []), "http://x/series")
    assert index.count == 4
    assert index_disagreement(stack_from_index(index, "http://x/series"), metadata_stack) is None


def test_reindex_writes_only_the_missing_index_files(tmp_path, capsys):
    paths, _ = ct_series(tmp_path / "src", 3)
    out = tmp_path / "tree"
    convert(paths, out, quiet=True)
    (series,) = series_dirs(out)
    written = (series / STACK_INDEX_NAME).read_bytes()
    (series / STACK_INDEX_NAME).unlink()
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert convert_main(["--reindex", "-o", str(out)]) == 0
    assert "1 stack index file(s) written" in capsys.readouterr().out
    assert (series / STACK_INDEX_NAME).read_bytes() == written
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != STACK_INDEX_NAME} == before
    assert write_missing_stack_indexes(out) == 0  # idempotent
    assert convert_main(["--reindex", "-o", str(tmp_path / "nothing")]) == 2


def test_the_tree_check_names_an_index_that_disagrees_or_is_broken(tmp_path):
    from app.check import check

    paths, _ = ct_series(tmp_path / "src", 3)
    out = tmp_path / "tree"
    convert(paths, out, "none", quiet=True)
    (series,) = series_dirs(out)
    assert not asyncio.run(check(str(out))).defects
    doc = json.loads((series / STACK_INDEX_NAME).read_bytes())
    doc["each"]["position"].reverse()
    (series / STACK_INDEX_NAME).write_text(json.dumps(doc))
    (finding,) = asyncio.run(check(str(out))).defects
    assert finding.rule == "stack-index" and "disagrees with the metadata: image 1: position" in finding.message
    (series / STACK_INDEX_NAME).write_text('{"stackIndex": 2}')
    (finding,) = asyncio.run(check(str(out))).defects
    assert finding.rule == "stack-index" and "version 2" in finding.message


def test_a_run_without_inputs_or_reindex_is_a_usage_error(tmp_path):
    with pytest.raises(SystemExit):
        convert_main(["-o", str(tmp_path)])


# -- a real tree through serve.py on loopback ----------------------------------------------------------


def test_a_converted_tree_loads_from_its_index_through_serve_py(tmp_path, serve_dir):
    """The converter's tree over HTTP: the stack from stack.json, every image final and named as the
    metadata names it; then the same tree with an index of another order: one message, the
    metadata's stack, every image final again."""
    from app.transport.native import NativeTransport

    paths, ds = ct_series(tmp_path / "src", 5)
    out = tmp_path / "tree"
    assert not convert(paths, out, "jls", quiet=True).failures
    (series,) = series_dirs(out)
    server = serve_dir(out)
    url = f"{server.url}/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
    truth = stack_from_metadata(read_json_pair(series / "metadata", []), url)

    def load_over_http():
        async def main():
            stack, loader = await open_stack(url, preset("htj2k"), transport=NativeTransport())
            delivered = []
            try:
                await loader.run(2, delivered.append)
            finally:
                await loader.aclose()
            return stack, delivered
        return asyncio.run(asyncio.wait_for(main(), 60))

    stack, delivered = load_over_http()
    assert stack.work.source == "index" and stack.images == truth.images
    finals = [e for e in delivered if isinstance(e, Refinement) and e.final]
    assert sorted(e.index for e in finals) == list(range(5))
    assert all(e.sop_instance_uid == truth.images[e.index].sop_instance_uid for e in finals)
    assert not any(isinstance(e, (StackReplaced, ImageFailed)) for e in delivered)

    doc = json.loads((series / STACK_INDEX_NAME).read_bytes())
    doc["each"]["sop"].reverse()
    (series / STACK_INDEX_NAME).write_text(json.dumps(doc))
    stack, delivered = load_over_http()
    assert stack.work.source == "index" and isinstance(delivered[0], StackReplaced)
    assert delivered[0].stack.images == truth.images and "disagrees" in delivered[0].message
    finals = [e for e in delivered if isinstance(e, Refinement) and e.final]
    assert sorted(e.index for e in finals) == list(range(5))
    assert all(e.sop_instance_uid == truth.images[e.index].sop_instance_uid for e in finals)


def test_the_bench_reports_the_index_rows_for_each_count():
    from app.bench.discovery import index_rows, render_index

    rows = index_rows((20, 50), repeat=1)
    assert [(r.instances, r.index_bytes > 0, r.check_ms > 0) for r in rows] == [(20, True, True), (50, True, True)]
    assert render_index(rows).count("\n") == 3


# -- the page (Chromium) ------------------------------------------------------------------------------


def test_the_page_shows_nothing_of_a_wrong_index_and_loads_the_metadatas_stack(page, demo_data, runtime,
                                                                                serve_dir, tmp_path):
    """The MR's stack.json names another patient and the slices in reverse order; its metadata is
    held back 1.5 s while its frames answer at once. Nothing is drawn or named meanwhile; then one
    message, and every draw is the slice the metadata puts at that index, under its patient."""
    import shutil
    import threading
    import time
    from urllib.parse import quote

    import serve
    from conftest import wait_for_app_state
    from test_viewer import demo_entry, open_viewer

    mr = demo_entry(demo_data, "MR")
    tree = tmp_path / "tree"
    shutil.copytree(demo_data, tree, copy_function=os.link)
    series = tree / mr["url"].removeprefix("/dicomweb/")
    truth = stack_from_metadata(read_json_pair(series / "metadata", []), "http://x" + mr["url"])
    doc = json.loads((series / STACK_INDEX_NAME).read_bytes())
    doc["series"]["patientName"] = "Wrong^Patient"
    doc["each"]["sop"].reverse()
    (series / STACK_INDEX_NAME).unlink()  # a hard link to the shared demo tree: never written through
    (series / STACK_INDEX_NAME).write_text(json.dumps(doc))
    held = threading.Event()

    class HeldMetadata(serve.Handler):
        def do_GET(self):  # noqa: N802 (stdlib name)
            if self.path.split("?")[0].endswith(mr["url"] + "/metadata"):
                held.wait(1.5)
            return super().do_GET()

    live = serve_dir(tree)
    live.server.RequestHandlerClass = HeldMetadata
    p = page.page
    open_viewer(page, live.url, "?noload=1", state=("ready",))
    p.evaluate("(u) => { document.getElementById('url').value = u; }", mr["url"])
    p.click("#load")
    started = time.monotonic()
    p.wait_for_timeout(1000)
    if time.monotonic() - started < 1.4:  # still held: nothing of the index may be out
        assert p.evaluate("window.drawLog.length") == 0
        assert "Wrong" not in p.inner_text("#study-info") and "Wrong" not in p.inner_text("body")
    held.set()
    wait_for_app_state(page, ("idle",), 60_000)
    errors = p.inner_text("#errors")
    assert "disagrees with its metadata" in errors and "Traceback" not in errors
    draws = p.evaluate("Array.from(window.drawLog, e => Array.from(e))")
    assert draws and all(d[3] == truth.images[d[0]].sop_instance_uid for d in draws)
    assert "Wrong" not in p.inner_text("#study-info")
    assert not p.query_selector_all(".py-error")


def test_the_page_fails_cleanly_when_an_index_has_no_readable_metadata(page, demo_data, runtime, serve_dir,
                                                                        tmp_path):
    """stack.json answers, the metadata does not: one error, nothing drawn, the page in its error state."""
    import shutil

    from conftest import wait_for_app_state
    from test_viewer import demo_entry, open_viewer

    mr = demo_entry(demo_data, "MR")
    tree = tmp_path / "tree"
    shutil.copytree(demo_data, tree, copy_function=os.link)
    series = tree / mr["url"].removeprefix("/dicomweb/")
    for name in ("metadata", "metadata.gz"):
        (series / name).unlink()  # unlinks this copy's hard link only
    live = serve_dir(tree)
    p = page.page
    open_viewer(page, live.url, "?noload=1", state=("ready",))
    p.evaluate("(u) => { document.getElementById('url').value = u; }", mr["url"])
    p.click("#load")
    wait_for_app_state(page, ("error",), 60_000)
    p.wait_for_timeout(500)  # nothing more comes: no "opened", no "done" turning it idle
    assert p.evaluate("document.documentElement.dataset.app") == "error"
    errors = p.inner_text("#errors")
    assert "no series metadata" in errors and "Traceback" not in errors and len(errors.splitlines()) == 1
    assert p.evaluate("window.drawLog.length") == 0
    assert p.inner_text("#study-info") == ""
    assert not p.query_selector_all(".py-error")
