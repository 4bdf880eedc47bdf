"""The codestream scanner: levels are reported exactly when their tile-parts have arrived."""

from __future__ import annotations

import functools

import imagecodecs
import numpy as np
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file

from app.readers.codestream import (
    CodestreamComplete,
    CodestreamError,
    CodestreamScanner,
    MainHeader,
    ResolutionComplete,
)
from helpers import split
from htj2k_helpers import scan


@functools.cache
def pixels() -> np.ndarray:
    return pydicom.dcmread(get_testdata_file("CT_small.dcm")).pixel_array


@functools.cache
def encoded(tlm: bool, tilepart: int, tile: tuple[int, int] | None = None) -> bytes:
    kw = {"tile": tile} if tile else {}
    return bytes(imagecodecs.htj2k_encode(pixels(), reversible=True, resolutions=5, tlm=tlm, tilepart=tilepart, **kw))


VARIANTS = [(True, 1, None), (False, 1, None), (True, 0, None), (False, 0, None), (True, 1, (64, 64)), (False, 1, (64, 64))]


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(VARIANTS), st.lists(st.integers(0, 20000), max_size=20))
def test_any_split_gives_the_same_events(variant, cuts):
    cs = encoded(*variant)
    assert scan(split(cs, cuts)) == scan([cs])


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_reported_level_decodes_bit_exactly_from_its_prefix(variant):
    cs = encoded(*variant)
    events = scan([cs[i : i + 97] for i in range(0, len(cs), 97)])
    header = events[0]
    assert isinstance(header, MainHeader) and header.siz.width == 128
    levels = [e for e in events if isinstance(e, ResolutionComplete)]
    assert isinstance(events[-1], CodestreamComplete) and events[-1].end_offset == len(cs)
    # one tile-part per level, or one tile whose packet headers say where levels end
    progressive = variant[1] == 1 or variant[2] is None
    assert [e.level for e in levels] == (list(range(6)) if progressive else [5])
    for e in levels:
        prefix = cs[: e.end_offset]
        got = imagecodecs.htj2k_decode(prefix, skipres=e.reduce) if e.reduce else imagecodecs.htj2k_decode(prefix)
        want = imagecodecs.htj2k_decode(cs, skipres=e.reduce) if e.reduce else pixels()
        assert got.shape == (e.rows, e.columns)
        np.testing.assert_array_equal(got, want)


def test_level_reported_only_when_its_last_byte_arrives():
    cs = encoded(True, 1)
    s = CodestreamScanner()
    header = s.feed(cs[:200])[0]
    ends = header.level_end_offsets()
    assert ends is not None and len(ends) == 6
    s2 = CodestreamScanner()
    s2.feed(cs[: ends[2] - 1])
    assert [e.level for e in s2.feed(cs[ends[2] - 1 : ends[2]]) if isinstance(e, ResolutionComplete)] == [2]


def test_lengths_from_sot_match_tlm():
    with_tlm = [e.end_offset - e_hdr for e, e_hdr in _ends(encoded(True, 1))]
    without = [e.end_offset - e_hdr for e, e_hdr in _ends(encoded(False, 1))]
    assert with_tlm == without


def _ends(cs):
    events = scan([cs])
    h = events[0]
    return [(e, h.length) for e in events if isinstance(e, ResolutionComplete)]


def test_open_ended_last_tile_part_completes_on_close():
    cs = bytearray(encoded(False, 0))
    sot = cs.index(b"\xff\x90")
    cs[sot + 6 : sot + 10] = b"\x00\x00\x00\x00"  # Psot = 0: runs to EOC
    events = scan([bytes(cs[:500]), bytes(cs[500:])])
    assert isinstance(events[-1], CodestreamComplete)


def test_garbage_is_an_error():
    with pytest.raises(CodestreamError):
        CodestreamScanner().feed(b"GIF89a....")
    cs = encoded(True, 1)
    bad = cs[:-2] + b"\xff\x52"
    with pytest.raises(CodestreamError):
        scan([bad])


@pytest.mark.parametrize("order", [0, 3, 4])  # LRCP, PCRL, CPRL: a prefix is not a resolution level
def test_other_progression_orders_complete_only_at_the_end(order):
    cs = bytearray(encoded(True, 1))
    cod = cs.index(b"\xff\x52")
    cs[cod + 5] = order
    events = scan([bytes(cs[i : i + 500]) for i in range(0, len(cs), 500)])
    levels = [e for e in events if isinstance(e, ResolutionComplete)]
    assert [(e.level, e.reduce, e.end_offset) for e in levels] == [(5, 0, len(cs))]
    assert events[0].level_end_offsets() is None
