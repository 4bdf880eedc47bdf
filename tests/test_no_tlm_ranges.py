"""Byte ranges over an HTJ2K stream without TLM (what the Static DICOMweb toolkit and AWS
HealthImaging serve): when the first ``chunkSize`` holds no allowed level, the range reads on
until the packet headers show one complete, closes there, and the final fetches only the rest."""

from __future__ import annotations

import numpy as np
import pytest

from app.codecs import HTJ2K_LOSSLESS_RPCL
from app.config import ImageQualityStatus as Q
from app.config import RetrieveConfig
from app.engine import ImageFailed, Refinement
from helpers import Site, htj2k_frame, image_pixels, run_mock
from htj2k_helpers import level_ends, one_tile_part

CHUNK = 512


def tiny_ranges(chunk: int) -> RetrieveConfig:
    return RetrieveConfig.from_json({
        "stages": [{"id": "fast", "retrieveType": "fast"}, {"id": "final", "retrieveType": "final"}],
        "retrieveOptions": {"fast": {"rangeIndex": 0, "initialChunkSize": chunk, "chunkSize": chunk,
                                     "decodeLevel": 2},
                            "final": {"rangeIndex": -1}},
    })


@pytest.fixture(scope="module")
def no_tlm_site():
    site = Site()
    for i in range(2):
        pixels = image_pixels(256, 256, seed=i)
        site.add_frame(i, pixels, one_tile_part(htj2k_frame(pixels)), HTJ2K_LOSSLESS_RPCL)
    return site


def test_a_first_range_without_tlm_reads_on_to_a_level(no_tlm_site):
    site = no_tlm_site
    body = site.files[next(iter(site.files))][0]
    codestream_at = body.index(b"\xff\x4f\xff\x51")
    levels = level_ends(body[codestream_at:])
    allowed = [lv for lv in levels if 1 <= lv.reduce <= 2]
    assert codestream_at + allowed[0].end_offset > CHUNK, "the first chunk must hold no allowed level"

    events, engine, transport = run_mock(site, tiny_ranges(CHUNK), concurrency=1)
    assert not [e for e in events if isinstance(e, ImageFailed)]
    for i, pixels in enumerate(site.pixels):
        refs = [e for e in events if isinstance(e, Refinement) and e.index == i]
        assert refs[0].stage_id == "fast", "the reduced level must come from the first range's stage"
        assert refs[0].status == Q.SUBRESOLUTION and not refs[0].final and refs[0].reduce in (1, 2)
        assert refs[-1].final and refs[-1].status == Q.FULL_RESOLUTION
        np.testing.assert_array_equal(refs[-1].pixels, pixels)
        # no byte fetched twice: each request starts where the previous one stopped
        asked = [r.byte_range for r in transport.requests if f"/1.2.3.4.{i + 1}/frames/" in r.url]
        assert asked[0] == (0, CHUNK - 1) and asked[1][0] == CHUNK and asked[1][1] is None
        assert len(asked) == 3 and CHUNK < asked[2][0] < len(body) and asked[2][1] is None
