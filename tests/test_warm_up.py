"""The synthetic load a page's worker runs in idle time (app/warm_up.py): it must take the paths a
real load takes (ranges, streamed levels, several stages, multipart parts with digests) and end
with every slice final, without a byte from the network."""

import asyncio
import json

import numpy as np
import pytest

from app.config import preset
from app.engine import ImageFailed, Refinement, RequestStarted
from app.study import stack_from_metadata
from app.warm_up import WARM_UP_SERIES_URL, WARM_UP_SLICES, warm_up_document, warm_up_load


@pytest.mark.parametrize("name", ["interleavedPreview", "htj2k", "interleavedStack"])
def test_the_synthetic_load_ends_with_every_slice_final(name):
    events = []
    results = asyncio.run(asyncio.wait_for(warm_up_load(preset(name), on_event=events.append), 60))
    finals = {e.index for e in events if isinstance(e, Refinement) and e.final}
    assert finals == set(range(WARM_UP_SLICES))
    assert not [e for e in events if isinstance(e, ImageFailed)]
    assert results == sum(isinstance(e, Refinement) for e in events) > WARM_UP_SLICES  # partial ones first
    urls = [e.url for e in events if isinstance(e, RequestStarted)]
    assert urls and all(u.startswith(WARM_UP_SERIES_URL + "/instances/") for u in urls)
    pixels = next(e.pixels for e in events if isinstance(e, Refinement) and e.final)
    assert pixels.shape == (256, 256) and int(np.ptp(pixels)) > 0


def test_the_interleaved_preview_warm_up_takes_ranges_and_streamed_levels():
    events = []
    asyncio.run(asyncio.wait_for(warm_up_load(preset("interleavedPreview"), on_event=events.append), 60))
    partial = {(e.index, e.columns) for e in events if isinstance(e, Refinement) and not e.final}
    assert any(columns < 256 for _, columns in partial)  # reduced levels shown before the finals


def test_the_synthetic_metadata_is_a_stack_in_slice_order():
    stack = stack_from_metadata(json.loads(warm_up_document(5)), WARM_UP_SERIES_URL)
    assert [im.sop_instance_uid for im in stack.images] == [f"2.25.{100 + i}" for i in range(5)]
    assert stack.images[0].fmt.rows == 256
