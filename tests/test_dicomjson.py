"""dicomjson.check_shape against the rule it implements, byte by byte: outside strings (a backslash
and the byte after it never count), every ``[``/``{`` is a container and one level deeper, every
``]``/``}`` one level up, every comma one more value. Any bytes, valid JSON or not, are refused
exactly when the rule says so, with the same message, across the scan's blocks too."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app import dicomjson as dj
from app.bench.discovery import synthetic_metadata

SETTINGS = settings(derandomize=True, max_examples=400, deadline=None)


def rule(raw: bytes) -> str | None:
    """The refusal check_shape must give (containers first, then values, then depth), or None."""
    text = re.sub(rb"\\.", b"", raw, flags=re.S)
    containers = values = depth = deepest = 0
    in_string = False
    for byte in text:
        if byte == ord('"'):
            in_string = not in_string
        elif in_string:
            continue
        elif byte in b"[{":
            containers += 1
            depth += 1
            deepest = max(deepest, depth)
        elif byte in b"]}":
            depth -= 1
        elif byte == ord(","):
            values += 1
    if containers > dj.MAX_JSON_CONTAINERS:
        return f"JSON with more than {dj.MAX_JSON_CONTAINERS} objects and arrays"
    if values > dj.MAX_JSON_VALUES:
        return f"JSON with more than {dj.MAX_JSON_VALUES} values"
    if deepest > dj.MAX_JSON_DEPTH:
        return f"JSON nested more than {dj.MAX_JSON_DEPTH} levels deep"
    return None


def refusal(raw: bytes) -> str | None:
    try:
        dj.check_shape(raw)
    except dj.JsonRefused as exc:
        return str(exc)
    return None


SHAPES = st.binary(max_size=0) | st.lists(st.sampled_from(list(b'[]{}",\\a: ')), max_size=120).map(bytes)


@pytest.fixture
def small_limits(monkeypatch):
    """Limits a few bytes can reach (the documents the rule is checked on are short)."""
    monkeypatch.setattr(dj, "MAX_JSON_CONTAINERS", 7)
    monkeypatch.setattr(dj, "MAX_JSON_VALUES", 11)
    monkeypatch.setattr(dj, "MAX_JSON_DEPTH", 5)


@SETTINGS
@given(raw=SHAPES)
def test_any_bytes_are_refused_exactly_as_the_rule_says(raw):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dj, "MAX_JSON_CONTAINERS", 7)
        patch.setattr(dj, "MAX_JSON_VALUES", 11)
        patch.setattr(dj, "MAX_JSON_DEPTH", 5)
        assert refusal(raw) == rule(raw)


def test_the_rule_holds_across_the_scans_blocks(small_limits, monkeypatch):
    monkeypatch.setattr(dj, "_SCAN_BLOCK", 16)  # strings and nesting that cross a block's end
    cases = [b'["' + b"[" * 40 + b'"]', b"[" * 5 + b'"' + b"]" * 30 + b'"' + b"]" * 5, b"[" * 6 + b"]" * 6,
             b'{"a":' * 5 + b"1" + b"}" * 5, b'["\\"' + b"[" * 20 + b'"]', b"[1" + b",1" * 11 + b"]",
             b"[" + b"[]," * 7 + b"[]]", b'"' * 33 + b"[" * 6,
             b"[" * 8, b"{[" * 4, b"[[]" * 3, b"," * 12, b"," * 11, b"[" * 7]  # as short as the limits allow
    for raw in cases:
        assert refusal(raw) == rule(raw), raw


def test_real_metadata_passes_and_the_limits_refuse_with_their_messages():
    raw = synthetic_metadata(1000)
    assert refusal(raw) is None and len(json.loads(raw)) == 1000
    assert refusal(b"[" * 65 + b"]" * 65) == "JSON nested more than 64 levels deep"
    assert refusal(b"[" * 64 + b"]" * 64) is None
    assert refusal(b'["' + b"[" * 100 + b'"]') is None  # brackets inside a string do not nest
    many = b"[" + b"[]," * dj.MAX_JSON_CONTAINERS + b"[]]"  # over the count: the long path counts
    assert refusal(many) == f"JSON with more than {dj.MAX_JSON_CONTAINERS} objects and arrays"


def test_first_value_conversions_are_the_tag_readers():
    obj = {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^J"}]}, "00200013": {"vr": "IS", "Value": ["7"]},
           "0020000d": {"vr": "UI", "Value": [" 1.2 "]}, "00280030": {"vr": "DS", "Value": [None]},
           "00281050": {"vr": "DS", "Value": "40"}, "00280010": {"vr": "US", "Value": [2.9]}}
    assert dj.text(obj, "00100010") == "Doe^J" and dj.text(obj, "0020000D") == "1.2"
    assert dj.integer(obj, "00200013") == 7 and dj.number(obj, "00200013") == 7.0
    assert dj.integer(obj, "00280010") == 2  # as float first, then truncated
    assert dj.text(obj, "00280030", "x") == "x" and dj.number(obj, "00281050", -1.0) == -1.0  # None; not a list
    assert dj.first(obj, "00200013") == "7" and dj.first(obj, "00080018") is None
    assert dj.as_text(12) == "12" and dj.as_number("x", 3.0) == 3.0 and dj.as_integer(None, 5) == 5
