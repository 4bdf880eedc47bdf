"""The load path run once on a synthetic series before the first real load (the page's worker).

A fresh wasm instance runs Python in V8's baseline code until its hot functions are compiled
again, and a call stays in the code it began in: the first load of a page kept the worker's
thread busy ~560 ms for a 20-slice MR, the same load again ~135 ms. ``warm_up_load`` runs
discovery, planning, byte ranges, streamed levels, multipart parts, digests and decodes on a few
synthetic slices served from memory (``serve_bytes``, no network), so a page pays that cost while
it waits for the user. ``warm_up_document`` is the synthetic series' metadata (the discovery
warm-up parses a longer one). Pure Python: it runs in CPython too (tests).
"""

from __future__ import annotations

import json
from typing import Callable

import numpy

from .config import RetrieveConfig, opening_index
from .engine import Refinement
from .study import index_of_stack, stack_from_metadata
from .transport.mock import MockRequest, MockResponse, MockTransport, serve_bytes
from .tree.framing import frame_part_chunks, multipart_content_type, new_boundary
from .tree.stack_index import STACK_INDEX_NAME, stack_index_bytes
from .uids import HTJ2K_LOSSLESS_RPCL
from .viewer_engine import open_stack, run_stack

__all__ = ["WARM_UP_SERIES_URL", "warm_up_document", "warm_up_load"]

WARM_UP_SERIES_URL = "http://warm-up.invalid/dicomweb/studies/2.25.1/series/2.25.2"
WARM_UP_SIZE = 256  # rows and columns of the synthetic slices (3 resolution levels)
WARM_UP_SLICES = 8
HTJ2K_MEDIA_TYPE = "image/jphc"


def warm_up_document(count: int, size: int = WARM_UP_SIZE) -> bytes:
    """``count`` instances shaped like the converter's metadata, one slice apart along z."""
    shared = {"00080060": ["CS", "CT"], "00083002": ["UI", HTJ2K_LOSSLESS_RPCL], "00280002": ["US", 1],
              "00280004": ["CS", "MONOCHROME2"], "00280010": ["US", size], "00280011": ["US", size],
              "00280030": ["DS", 0.5, 0.5], "00280100": ["US", 16], "00280101": ["US", 12],
              "00280103": ["US", 0], "00200037": ["DS", 1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
              "00281050": ["DS", 40.0], "00281051": ["DS", 400.0], "0020000D": ["UI", "2.25.1"],
              "0020000E": ["UI", "2.25.2"]}
    instances = []
    for i in range(count):
        own = {**shared, "00080018": ["UI", f"2.25.{100 + i}"], "00200013": ["IS", i + 1],
               "00200032": ["DS", -100.5, -80.25, i * 0.625]}
        instance = {tag: {"vr": vr, "Value": list(value)} for tag, (vr, *value) in own.items()}
        instance["7FE00010"] = {"vr": "OB", "BulkDataURI": f"instances/2.25.{100 + i}/frames"}
        instances.append(instance)
    return json.dumps(instances).encode()


def _frame_file(size: int, boundary: str) -> bytes:
    """A slice as the converter writes it: RPCL HTJ2K with TLM, a tile-part per level, multipart."""
    import imagecodecs

    # noise: a frame of ~100 KB whose levels need ranges and stream batches of their own, as real ones do
    tile = numpy.random.default_rng(1).integers(0, 4096, (size, size), dtype=numpy.uint16)
    codestream = bytes(imagecodecs.htj2k_encode(tile, reversible=True, tlm=True, tilepart=1, resolutions=3))
    return b"".join(frame_part_chunks(codestream, f'{HTJ2K_MEDIA_TYPE}; transfer-syntax={HTJ2K_LOSSLESS_RPCL}',
                                      boundary))


def _handler(count: int, size: int) -> Callable[[MockRequest], MockResponse]:
    boundary = new_boundary()
    metadata = warm_up_document(count, size)
    frame = _frame_file(size, boundary)
    frame_type = multipart_content_type(HTJ2K_MEDIA_TYPE, boundary, HTJ2K_LOSSLESS_RPCL)

    index = stack_index_bytes(index_of_stack(stack_from_metadata(json.loads(metadata), WARM_UP_SERIES_URL)))

    def handler(request: MockRequest) -> MockResponse:
        if request.url == f"{WARM_UP_SERIES_URL}/metadata":
            return serve_bytes(request, metadata, "application/dicom+json")
        if request.url == f"{WARM_UP_SERIES_URL}/{STACK_INDEX_NAME}":  # the stack index's path too
            return serve_bytes(request, index, "application/json")
        if "/frames/" in request.url:
            return serve_bytes(request, frame, frame_type, chunk=4096)
        return MockResponse(404)

    return handler


async def warm_up_load(config: RetrieveConfig, *, count: int = WARM_UP_SLICES, size: int = WARM_UP_SIZE,
                       on_event: Callable[[object], None] | None = None) -> int:
    """Load the synthetic series under ``config``; the number of results (each slice ends final)."""
    transport = MockTransport(_handler(count, size))
    stack, loader = await open_stack(WARM_UP_SERIES_URL, config, transport=transport)
    results = 0

    def seen(event: object) -> None:
        nonlocal results
        results += isinstance(event, Refinement)
        if on_event is not None:
            on_event(event)

    try:
        await run_stack(loader, opening_index(len(stack.images)), seen)
    finally:
        await loader.aclose()
    return results
