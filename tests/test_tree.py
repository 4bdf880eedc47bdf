"""app.tree: the static tree's schema, one model for the converter, discovery, serve.py and the page."""

from __future__ import annotations

import hashlib

import pytest

from app.readers import MultipartReader, PartData, PartHeaders
from app.tree import (
    Alternate,
    DemoEntry,
    TreeManifest,
    alternates_json,
    content_digest,
    frame_file_name,
    frame_file_names,
    frame_part_chunks,
    parse_alternates,
    parse_content_digest,
    parse_demo_list,
    sniff_frame_content_type,
)

JLS = "1.2.840.10008.1.2.4.80"


def test_alternates_round_trip_through_json():
    written = [Alternate("frames", 2614, 3072, "1.2.840.10008.1.2.4.202", False, media_type="image/jphc",
                         resolution_levels=6),
               Alternate("jlsThumbnail", transfer_syntax=JLS, media_type="image/jls", lossy=False, scale=4,
                         thumbnail=True).sized(2614, 3072)]
    doc = alternates_json(written)
    assert doc["jlsThumbnail"] == {"path": "jlsThumbnail", "transferSyntaxUID": JLS, "mediaType": "image/jls",
                                   "lossy": False, "scale": 4, "rows": 654, "columns": 768}
    read = parse_alternates(doc)
    assert list(read) == ["/frames/", "/jlsThumbnail/"]
    assert read["/frames/"] == written[0] and read["/jlsThumbnail/"] == written[1]
    assert read["/jlsThumbnail/"].frames_path == "/jlsThumbnail/"
    assert Alternate("/jls/", 64, 64, JLS, False) == Alternate("jls", rows=64, columns=64, transfer_syntax=JLS,
                                                               lossy=False)  # discovery's old positional order


def test_alternates_reader_is_tolerant_of_other_tools_spellings():
    read = parse_alternates({"alternates": [
        {"framesPath": "/jls/", "transferSyntax": JLS, "Rows": 10, "cols": 12},
        {"name": "thumb", "transfer_syntax": JLS, "thumbnail": True},
        {"path": "/"}, "not an entry", {"lossy": True}]})
    assert set(read) == {"/jls/", "/thumb/"}
    assert (read["/jls/"].rows, read["/jls/"].columns, read["/jls/"].thumbnail) == (10, 12, False)
    assert read["/thumb/"].thumbnail and read["/thumb/"].scale == 1
    assert parse_alternates("junk") == {} and parse_alternates(None) == {}


@pytest.mark.parametrize("cut", [1, 7, 40, 100, 130])
def test_frame_file_parses_back_with_its_digest_at_any_split(cut):
    codestream = bytes(range(256)) * 3
    boundary = "DICOMwebBoundaryabc"
    body = b"".join(frame_part_chunks(codestream, f"image/jls;transfer-syntax={JLS}", boundary))
    reader = MultipartReader(boundary)
    events = reader.feed(body[:cut]) + reader.feed(body[cut:]) + reader.close()
    headers = next(e for e in events if isinstance(e, PartHeaders))
    data = b"".join(bytes(e.data) for e in events if isinstance(e, PartData))
    assert data == codestream
    assert parse_content_digest(dict(headers.headers)["content-digest"]) == hashlib.sha256(codestream).digest()
    assert sniff_frame_content_type(body[:512]) == (
        f'multipart/related; type="image/jls"; boundary={boundary}; transfer-syntax={JLS}')


def test_a_boundary_inside_the_codestream_is_refused_and_digests_parse_strictly():
    with pytest.raises(ValueError, match="boundary"):
        frame_part_chunks(b"xx--B--", "image/jls", "B")
    assert parse_content_digest(content_digest(b"x")) == hashlib.sha256(b"x").digest()
    assert parse_content_digest("sha-256=:bm90IDMyIGJ5dGVz:") is None and parse_content_digest(None) is None


def test_frame_names_and_sniffing_raw_codestreams():
    assert frame_file_name(3) == "3.mht" and frame_file_name(3, multipart=False) == "3"
    assert frame_file_names(1) == ("1.mht", "1.mht.gz", "1")
    assert sniff_frame_content_type(b"\xff\xd8\xff\xf7\x00") == "image/jls"
    assert sniff_frame_content_type(b"\xff\x4f\xff\x51\x00") == "image/j2c"
    assert sniff_frame_content_type(b"\x00\x01") == "application/octet-stream"


def test_manifest_keeps_old_trees_layout_and_types_frames():
    old = TreeManifest.from_json({"version": 1, "framing": "multipart", "boundary": "B"})
    assert old.frame_file_name(1) == "1"  # written before the suffix: stays as it is
    new = TreeManifest.new()
    assert new.frame_file_name(1) == "1.mht" and new.boundary.startswith("DICOMwebBoundary")
    assert TreeManifest.new(raw=True).frame_file_name(1) == "1"
    jls = Alternate("jls", transfer_syntax=JLS, media_type="image/jls")
    doc = new.to_json({"jls": jls}, converterVersion="3")
    assert doc["frameSuffix"] == ".mht" and doc["converterVersion"] == "3"
    assert doc["alternates"]["jls"]["contentType"] == f'multipart/related; type="image/jls"; boundary={new.boundary}'
    assert TreeManifest.from_json(doc) == new
    for bad in ({}, {"boundary": "B", "framing": "zip"}, []):
        with pytest.raises(ValueError):
            TreeManifest.from_json(bad)


def test_demo_list():
    entry = DemoEntry("MR", "1.2", "1.2.3", "/dicomweb/studies/1.2/series/1.2.3", 20)
    assert parse_demo_list([entry.to_json(), {"name": "no url"}, 5]) == [entry]
    assert parse_demo_list({"not": "a list"}) == []
