"""Retrieve configuration: Cornerstone3D shapes load, bad input names its JSON path."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.config import (
    CORNERSTONE_IGNORED_KEYS,
    PRESET_DESCRIPTIONS,
    PRESETS,
    ConfigError,
    ImageQualityStatus,
    NearbyFrame,
    RetrieveConfig,
    RetrieveOptions,
    RetrieveStage,
    parse_config,
    preset,
)

HTJ2K_PRIVATE = "3.2.840.10008.1.2.4.96"
HTJ2K_RPCL = "1.2.840.10008.1.2.4.202"


# ---------------------------------------------------------------- presets


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_loads_and_round_trips(name: str) -> None:
    config = preset(name)
    assert RetrieveConfig.from_json(config.to_json()) == config
    assert parse_config(json.dumps(config.to_json())) == config
    assert PRESET_DESCRIPTIONS[name]


def test_presets_and_descriptions_match() -> None:
    assert set(PRESETS) == set(PRESET_DESCRIPTIONS)
    assert {"single", "sequential", "interleaved", "jls", "jlsReduced", "htj2k",
            "htj2kByteRange", "nonProgressive", "interleavedStack"} <= set(PRESETS)


def test_unknown_preset_lists_known_names() -> None:
    with pytest.raises(ConfigError) as caught:
        preset("jlsReducd")
    assert caught.value.path == "$"
    assert "jlsReduced" in caught.value.message and "htj2k" in caught.value.message


def test_stage_sets_match_cornerstone_source() -> None:
    assert [(s.id, s.retrieve_type) for s in preset("single").stages] == [("initialImages", "single")]
    assert [(s.id, s.retrieve_type) for s in preset("sequential").stages] == [
        ("lossySequential", "singleFast"),
        ("finalSequential", "singleFinal"),
    ]
    interleaved = preset("interleaved").stages
    assert [(s.id, s.retrieve_type, s.decimate, s.offset, s.priority, s.request_type) for s in interleaved] == [
        ("initialImages", "default", 1, 0, 5, "thumbnail"),
        ("quarterThumb", "multipleFast", 4, 3, 6, "thumbnail"),
        ("halfThumb", "multipleFast", 4, 1, 7, "thumbnail"),
        ("quarterFull", "multipleFinal", 4, 2, 8, "thumbnail"),
        ("halfFull", "multipleFinal", 4, 0, 9, "thumbnail"),
        ("threeQuarterFull", "multipleFinal", 4, 1, 10, "thumbnail"),
        ("finalFull", "multipleFinal", 4, 3, 11, "thumbnail"),
        ("errorRetrieve", "default", 1, 0, -5, "interaction"),
    ]
    assert interleaved[0].positions == (0.5, 0, -1)
    assert interleaved[1].nearby_frames == (
        NearbyFrame(-1, ImageQualityStatus.ADJACENT_REPLICATE),
        NearbyFrame(1, ImageQualityStatus.ADJACENT_REPLICATE),
        NearbyFrame(2, ImageQualityStatus.FAR_REPLICATE),
    )
    assert interleaved[3].nearby_frames is None


def test_published_modes() -> None:
    assert preset("jls").options_for("single").frames_path == "/jls/"
    reduced = preset("jlsReduced")
    fast = reduced.options_for("singleFast", "1.2.840.10008.1.2.4.80")
    assert fast.frames_path == "/jlsThumbnail/"
    assert fast.image_quality_status is ImageQualityStatus.SUBRESOLUTION
    assert reduced.options_for("singleFinal").frames_path == "/jls/"
    assert reduced.options_for("singleFinal").final_status is ImageQualityStatus.FULL_RESOLUTION
    htj2k = preset("htj2k").options_for("single", HTJ2K_RPCL)
    assert htj2k.streaming and htj2k.frames_path is None and htj2k.range_index is None
    ours = preset("htj2kRangeThenStream")
    assert ours.options_for("singleFast") == RetrieveOptions(range_index=0, chunk_size=131072, decode_level=3)
    assert ours.options_for("singleFinal") == RetrieveOptions(range_index=-1, streaming=True)
    plain = preset("nonProgressive").options_for("single")
    assert not plain.streaming and plain.range_index is None and plain.frames_path is None
    stack = preset("interleavedStack")
    assert stack.stages == preset("interleaved").stages
    assert stack.options_for("multipleFast").range_index == 0
    assert stack.options_for("multipleFinal").range_index == -1


# ---------------------------------------------------------------- Cornerstone examples


# Written by hand from packages/docs/docs/concepts/progressive-loading/*.md and
# packages/core/examples/stackProgressive/index.ts (enum references replaced by their values).
CORNERSTONE_EXAMPLES = {
    "retrieve-configuration: single streaming": """
        {"stages": [{"id": "initialImages", "retrieveType": "single"}],
         "retrieveOptions": {"single": {"streaming": true}}}""",
    "stackProgressive: streaming without stages": """
        {"retrieveOptions": {"single": {"streaming": true}}}""",
    "stackProgressive: byte range 2 stages": """
        {"stages": [{"id": "lossySequential", "retrieveType": "singleFast"},
                    {"id": "finalSequential", "retrieveType": "singleFinal"}],
         "retrieveOptions": {"singleFast": {"rangeIndex": 0, "decodeLevel": 3},
                             "singleFinal": {"rangeIndex": -1}}}""",
    "advance: positions": """
        {"stages": [{"id": "initialImages", "positions": [0.5, 0, -1], "retrieveType": "initial"}]}""",
    "advance: decimate passes with priority": """
        {"stages": [
          {"id": "initialImages", "positions": [0.5, 0, -1], "retrieveType": "initial"},
          {"id": "initialPass", "decimate": 2, "offset": 0, "retrieveType": "fast",
           "priority": 2, "requestType": "prefetch",
           "nearbyFrames": [{"offset": 1, "imageQualityStatus": 3}]},
          {"id": "secondPass", "decimate": 2, "offset": 1, "retrieveType": "fast",
           "priority": 3, "requestType": "prefetch"}]}""",
    "advance: urlArguments": """
        {"retrieveOptions": {
          "default": {"urlArguments": "accept=image/jhc", "rangeIndex": -1},
          "multipleFast": {"urlArguments": "accept=image/jhc", "rangeIndex": 0, "decodeLevel": 0}}}""",
    "advance: JPIP": """
        {"retrieveOptions": {"default": {"imageQualityStatus": 6, "framesPath": "/jpip?target=",
                                         "urlArguments": "fsiz=128,128"}}}""",
    "non-htj2k: JLS thumbnails (keyed by default)": """
        {"retrieveOptions": {
          "default": {"default": {"framesPath": "/jls/"}},
          "singleFast": {"default": {"imageQualityStatus": 6, "framesPath": "/jlsThumbnail/"}}}}""",
    "stackProgressive example: HTJ2K bytes": """
        {"stages": [{"id": "lossySequential", "retrieveType": "singleFast"},
                    {"id": "lossySequentialFailure", "retrieveType": "singleFastFailure"},
                    {"id": "lossyMiddle", "retrieveType": "singleMiddle"},
                    {"id": "lossyMiddleFailure", "retrieveType": "singleMiddleFailure"},
                    {"id": "finalSequential", "retrieveType": "singleFinal"}],
         "retrieveOptions": {
           "singleFast": {"decodeLevel": 2, "chunkSize": 131072, "rangeIndex": 0},
           "singleFastFailure": {"decodeLevel": 3, "rangeIndex": 0},
           "singleMiddle": {"decodeLevel": 0, "rangeIndex": 10},
           "singleMiddleFailure": {"decodeLevel": 1, "rangeIndex": 10},
           "singleFinal": {"rangeIndex": -1}}}""",
    "stackProgressive example: HTJ2K lossy": """
        {"stages": [{"id": "lossySequential", "retrieveType": "singleFast"},
                    {"id": "finalSequential", "retrieveType": "singleFinal"}],
         "retrieveOptions": {"singleFast": {"imageQualityStatus": 7, "framesPath": "/lossy/",
                                            "streaming": true}}}""",
    "older stackProgressive: status and streamingDecode": """
        {"stages": [{"id": "lossySequential", "retrieveType": "singleFast"},
                    {"id": "finalSequential", "retrieveType": "singleFinal"}],
         "retrieveOptions": {"singleFast": {"status": 6, "framesPath": "/htj2kThumbnail/",
                                            "streaming": true, "streamingDecode": true},
                             "singleFinal": {}}}""",
    "older dicom-image-loader defaults": """
        {"retrieveOptions": {"default": {
          "3.2.840.10008.1.2.4.96": {"streaming": true},
          "default": {"streaming": false}}}}""",
}


@pytest.mark.parametrize("name", sorted(CORNERSTONE_EXAMPLES))
def test_cornerstone_examples_load(name: str) -> None:
    config = parse_config(CORNERSTONE_EXAMPLES[name])
    assert RetrieveConfig.from_json(config.to_json()) == config


def test_cornerstone_example_values() -> None:
    config = parse_config(CORNERSTONE_EXAMPLES["advance: urlArguments"])
    assert config.options_for("multipleFast").url_arguments == {"accept": "image/jhc"}
    assert config.options_for("multipleFast").decode_level == 0
    assert config.options_for("anything").range_index == -1
    jpip = parse_config(CORNERSTONE_EXAMPLES["advance: JPIP"]).options_for("default")
    assert jpip.url_arguments == {"fsiz": "128,128"}
    assert jpip.frames_path == "/jpip?target="
    assert RetrieveConfig.from_json(parse_config(CORNERSTONE_EXAMPLES["advance: JPIP"]).to_json()) \
        .options_for("default").url_arguments == {"fsiz": "128,128"}
    bytes_example = parse_config(CORNERSTONE_EXAMPLES["stackProgressive example: HTJ2K bytes"])
    assert bytes_example.options_for("singleFast").chunk_size == 131072
    assert bytes_example.options_for("singleMiddle").range_index == 10


def test_ignored_cornerstone_keys_are_listed_and_accepted() -> None:
    assert "streamingDecode" in CORNERSTONE_IGNORED_KEYS["options"]
    for key in CORNERSTONE_IGNORED_KEYS["options"]:
        config = RetrieveConfig.from_json({"retrieveOptions": {"single": {key: 1, "streaming": True}}})
        assert config.options_for("single") == RetrieveOptions(streaming=True)
        assert len(config.warnings) == 1 and key in config.warnings[0]
    RetrieveConfig.from_json({"create": None})
    RetrieveConfig.from_json({"stages": [{"id": "a", "nearbyFrames": [{"offset": 1, "linearOffset": 2}]}]})


# ---------------------------------------------------------------- legacy shape


LEGACY = (
    '{"retrieveOptions": {"default": {"3.2.840.10008.1.2.4.96": {"streaming": false}}, '
    '"singleFast": {"default": {"status": "SUBRESOLUTION", "framesPath": "/jlsThumbnail/"}}}}'
)


def test_legacy_shape_loads_as_written() -> None:
    config = parse_config(LEGACY)
    assert [s.id for s in config.stages] == ["lossySequential", "finalSequential"]
    fast = config.options_for("singleFast", HTJ2K_PRIVATE)
    assert fast == RetrieveOptions(frames_path="/jlsThumbnail/", image_quality_status=ImageQualityStatus.SUBRESOLUTION)
    assert config.options_for("singleFinal", HTJ2K_PRIVATE) == RetrieveOptions(streaming=False)
    assert config.options_for("singleFinal", HTJ2K_RPCL) == RetrieveOptions()
    assert RetrieveConfig.from_json(config.to_json()) == config
    keyed = config.to_json()["retrieveOptions"]["default"]
    assert set(keyed) == {HTJ2K_PRIVATE}


@pytest.mark.parametrize("status", ["SUBRESOLUTION", "subresolution", 6, 6.0])
def test_status_as_name_or_number(status: object) -> None:
    for key in ("status", "imageQualityStatus"):
        config = RetrieveConfig.from_json({"retrieveOptions": {"x": {key: status}}})
        assert config.options_for("x").image_quality_status is ImageQualityStatus.SUBRESOLUTION


def test_stage_inference() -> None:
    def ids(options: dict) -> list[str]:
        return [s.id for s in RetrieveConfig.from_json({"retrieveOptions": options}).stages]

    assert ids({"singleFinal": {}}) == ["lossySequential", "finalSequential"]
    assert ids({"multipleFast": {}})[:2] == ["initialImages", "quarterThumb"]
    assert ids({"single": {"streaming": True}}) == ["initialImages"]
    assert ids({}) == ["initialImages"]
    assert RetrieveConfig.from_json({}).stages == preset("single").stages


# ---------------------------------------------------------------- options_for


def test_options_for_precedence() -> None:
    a, b, c, d = (RetrieveOptions(decode_level=n) for n in range(4))
    config = RetrieveConfig(
        stages=preset("single").stages,
        retrieve_options={
            "fast": {HTJ2K_RPCL: a, "default": b},
            "default": {HTJ2K_PRIVATE: c, "default": d},
        },
    )
    assert config.options_for("fast", HTJ2K_RPCL) is a
    assert config.options_for("fast", HTJ2K_PRIVATE) is b
    assert config.options_for("fast") is b
    assert config.options_for("other", HTJ2K_PRIVATE) is c
    assert config.options_for("other", HTJ2K_RPCL) is d
    assert config.options_for("other") is d

    no_defaults = RetrieveConfig(stages=(), retrieve_options={"fast": {HTJ2K_RPCL: a}})
    assert no_defaults.options_for("fast", HTJ2K_PRIVATE) == RetrieveOptions()
    assert no_defaults.options_for("other") == RetrieveOptions()
    unknown = RetrieveConfig(stages=(), retrieve_options={"fast": {"unknown": a, "default": b}})
    assert unknown.options_for("fast") is a
    assert unknown.options_for("fast", HTJ2K_RPCL) is b


def test_option_defaults_match_cornerstone() -> None:
    options = RetrieveOptions()
    assert options.chunk_size == options.initial_chunk_size == 131072  # 5.14's retrieveDefaults
    assert options.partial_status is ImageQualityStatus.SUBRESOLUTION
    assert RetrieveOptions(decode_level=0).partial_status is ImageQualityStatus.LOSSY
    assert options.decode_level_cap == 4
    assert options.final_status is ImageQualityStatus.FULL_RESOLUTION
    stage = RetrieveStage(id="x")
    assert (stage.retrieve_type, stage.decimate, stage.offset, stage.priority, stage.request_type) == (
        "default", 1, 0, -5, "interaction")


# ---------------------------------------------------------------- errors


BAD = [
    ([], "$", "expected an object"),
    ({"stages": {}}, "$.stages", "expected an array"),
    ({"stages": []}, "$.stages", "at least one stage"),
    ({"stages": [{}]}, "$.stages[0]", "missing 'id'"),
    ({"stages": [{"id": 3}]}, "$.stages[0].id", "expected a string"),
    ({"stages": [{"id": "a"}, {"id": "b", "decimate": 0}]}, "$.stages[1].decimate", ">= 1"),
    ({"stages": [{"id": "a", "decimate": -4}]}, "$.stages[0].decimate", ">= 1"),
    ({"stages": [{"id": "a", "decimate": 2.5}]}, "$.stages[0].decimate", "integer"),
    ({"stages": [{"id": "a", "decimate": "4"}]}, "$.stages[0].decimate", "integer"),
    ({"stages": [{"id": "a", "decimate": True}]}, "$.stages[0].decimate", "integer"),
    ({"stages": [{"id": "a", "offset": -1}]}, "$.stages[0].offset", ">= 0"),
    ({"stages": [{"id": "a", "priority": "high"}]}, "$.stages[0].priority", "integer"),
    ({"stages": [{"id": "a", "requestType": "urgent"}]}, "$.stages[0].requestType", "prefetch"),
    ({"stages": [{"id": "a", "positions": 0.5}]}, "$.stages[0].positions", "array"),
    ({"stages": [{"id": "a", "positions": [0, "1"]}]}, "$.stages[0].positions[1]", "number"),
    ({"stages": [{"id": "a", "positions": [1.5]}]}, "$.stages[0].positions[0]", "fractions"),
    ({"stages": [{"id": "a", "positions": [-0.5]}]}, "$.stages[0].positions[0]", "fractions"),
    ({"stages": [{"id": "a", "nearbyFrames": [{"status": 3}]}]}, "$.stages[0].nearbyFrames[0]", "offset"),
    ({"stages": [{"id": "a", "nearbyFrames": [{"offset": 1, "imageQualityStatus": 2}]}]},
     "$.stages[0].nearbyFrames[0].imageQualityStatus", "unknown status"),
    ({"retrieveOptions": []}, "$.retrieveOptions", "expected an object"),
    ({"retrieveOptions": {"single": True}}, "$.retrieveOptions.single", "expected an object"),
    ({"retrieveOptions": {"single": {"streaming": "yes"}}}, "$.retrieveOptions.single.streaming", "true or false"),
    ({"retrieveOptions": {"single": {"streaming": 1}}}, "$.retrieveOptions.single.streaming", "true or false"),
    ({"retrieveOptions": {"single": {"framesPath": "jls/"}}}, "$.retrieveOptions.single.framesPath", "start with"),
    ({"retrieveOptions": {"single": {"framesPath": "/jls"}}}, "$.retrieveOptions.single.framesPath", "end with"),
    ({"retrieveOptions": {"single": {"framesPath": "/../secret/"}}}, "$.retrieveOptions.single.framesPath", ".."),
    ({"retrieveOptions": {"single": {"framesPath": "/%2e%2e/secret/"}}}, "$.retrieveOptions.single.framesPath", ".."),
    ({"retrieveOptions": {"single": {"framesPath": "https://evil.example/x/"}}},
     "$.retrieveOptions.single.framesPath", "not a URL"),
    ({"retrieveOptions": {"single": {"framesPath": "//evil.example/x/"}}},
     "$.retrieveOptions.single.framesPath", "not a URL"),
    ({"retrieveOptions": {"single": {"framesPath": 3}}}, "$.retrieveOptions.single.framesPath", "string"),
    ({"retrieveOptions": {"single": {"rangeIndex": -2}}}, "$.retrieveOptions.single.rangeIndex", ">= -1"),
    ({"retrieveOptions": {"single": {"chunkSize": 0}}}, "$.retrieveOptions.single.chunkSize", ">= 1"),
    ({"retrieveOptions": {"single": {"decodeLevel": 11}}}, "$.retrieveOptions.single.decodeLevel", "<= 10"),
    ({"retrieveOptions": {"single": {"decodeLevel": -1}}}, "$.retrieveOptions.single.decodeLevel", ">= 0"),
    ({"retrieveOptions": {"single": {"imageQualityStatus": "BEST"}}},
     "$.retrieveOptions.single.imageQualityStatus", "SUBRESOLUTION (6)"),
    ({"retrieveOptions": {"single": {"status": 9}}}, "$.retrieveOptions.single.status", "unknown status"),
    ({"retrieveOptions": {"single": {"status": 6, "imageQualityStatus": 6}}},
     "$.retrieveOptions.single.status", "not both"),
    ({"retrieveOptions": {"single": {"urlArguments": 5}}}, "$.retrieveOptions.single.urlArguments", "string"),
    ({"retrieveOptions": {"single": {"urlArguments": "a=1&a=2"}}}, "$.retrieveOptions.single.urlArguments", "twice"),
    ({"retrieveOptions": {"default": {HTJ2K_PRIVATE: {"streaming": 1}}}},
     '$.retrieveOptions.default["3.2.840.10008.1.2.4.96"].streaming', "true or false"),
    ({"retrieveOptions": {"default": {"default": {}, "streaming": True}}},
     "$.retrieveOptions.default.streaming", "mixes option"),
]


@pytest.mark.parametrize(("obj", "path", "fragment"), BAD, ids=[b[1] + " " + b[2] for b in BAD])
def test_config_errors_name_the_path(obj: object, path: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        RetrieveConfig.from_json(obj)
    assert caught.value.path == path
    assert fragment in caught.value.message
    assert str(caught.value) == f"{path}: {caught.value.message}"
    assert isinstance(caught.value, ValueError)


UNUSED = [
    ({"stage": []}, "$.stage", "did you mean 'stages'"),
    ({"stages": [{"id": "a", "retrieveTyp": "x"}]}, "$.stages[0].retrieveTyp", "did you mean 'retrieveType'"),
    ({"retrieveOptions": {"single": {"framePath": "/jls/"}}}, "$.retrieveOptions.single.framePath",
     "did you mean 'framesPath'"),
    ({"retrieveOptions": {"single": {"streamingDecode": True}}}, "$.retrieveOptions.single.streamingDecode",
     "older Cornerstone option"),
    ({"retrieveOptions": {"f": {"rangeIndex": 0, "minChunkSize": 9}}}, "$.retrieveOptions.f.minChunkSize",
     "read only when streaming"),
    ({"stages": [{"id": "a", "nearbyFrames": [{"offset": 1, "linearOffset": 2}]}]},
     "$.stages[0].nearbyFrames[0].linearOffset", "not used"),
]


@pytest.mark.parametrize(("obj", "path", "fragment"), UNUSED, ids=[u[1] for u in UNUSED])
def test_keys_we_do_not_use_warn_instead_of_failing(obj: object, path: str, fragment: str) -> None:
    config = RetrieveConfig.from_json(obj)
    (warning,) = config.warnings
    assert warning.startswith(path + ":") and fragment in warning


def test_every_option_cornerstone_5_14_reads_is_honoured_without_a_warning() -> None:
    """@cornerstonejs/dicom-image-loader 5.14 reads these from retrieveOptions (getPixelData,
    rangeRequest, streamRequest, loadImage, getImageQualityStatus)."""
    stream = RetrieveConfig.from_json({"retrieveOptions": {"single": {
        "streaming": True, "initialChunkSize": 32768, "minChunkSize": 65536, "msBetweenDecode": 0,
        "decodeLevel": 0, "framesPath": "/lossy/", "urlArguments": "a=1", "imageQualityStatus": 7}}})
    assert stream.warnings == ()
    options = stream.options_for("single")
    assert (options.initial_chunk_size, options.chunk_size, options.ms_between_decode) == (32768, 65536, 0)
    assert options.partial_status is ImageQualityStatus.LOSSY and options.final_status is ImageQualityStatus.LOSSY
    ranged = RetrieveConfig.from_json({"retrieveOptions": {"fast": {
        "rangeIndex": 5, "initialChunkSize": 16384, "chunkSize": 262144}}}).options_for("fast")
    # 5.14: range n ends at initialChunkSize + n * chunkSize
    assert (ranged.range_end(0), ranged.range_end(5)) == (16384, 16384 + 5 * 262144)
    assert RetrieveConfig.from_json({"retrieveOptions": {"s": {"minChunkSize": 1000, "chunkSize": 2000,
                                                               "streaming": True}}}) \
        .options_for("s").chunk_size == 2000
    for key in ("initialChunkSize", "chunkSize", "minChunkSize", "msBetweenDecode"):
        with pytest.raises(ConfigError) as caught:
            RetrieveConfig.from_json({"retrieveOptions": {"s": {key: "big"}}})
        assert caught.value.path == f"$.retrieveOptions.s.{key}"
    with pytest.raises(ConfigError):
        RetrieveConfig.from_json({"retrieveOptions": {"s": {"initialChunkSize": 0}}})


def test_presets_named_like_cornerstone_rows_ask_for_their_bytes() -> None:
    """Cornerstone's byte-range row: 64 KB, then the rest in one request (no streaming)."""
    theirs = preset("htj2kByteRange")
    fast, final = theirs.options_for("singleFast"), theirs.options_for("singleFinal")
    assert fast.range_index == 0 and fast.range_end(0) == 65536 and fast.chunk_size == 65536
    assert final == RetrieveOptions(range_index=-1)
    assert [s.retrieve_type for s in theirs.stages] == ["singleFast", "singleFinal"]
    assert preset("htj2k").options_for("single") == RetrieveOptions(streaming=True)
    assert preset("nonProgressive").options_for("single") == RetrieveOptions()


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('{"stages": [', "line 1 column 13"),
        ('{\n  "stages": [\n    {"id": "a",}\n  ]\n}', "line 3 column 16"),
        ("", "line 1 column 1"),
        ("{'stages': []}", "line 1 column 2"),
    ],
)
def test_invalid_json_reports_line_and_column(text: str, where: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert caught.value.path == "$"
    assert caught.value.message.startswith(f"invalid JSON at {where}: ")


def test_json_text_is_never_evaluated() -> None:
    for text in ('{"retrieveOptions": {"x": {"chunkSize": NaN}}}', "__import__('os')", '{"a": 1, "a": 2}'):
        with pytest.raises(ConfigError) as caught:
            parse_config(text)
        assert caught.value.path == "$"


# ---------------------------------------------------------------- stage selection


def test_decimate_and_offset() -> None:
    stage = RetrieveStage(id="q", decimate=4, offset=1)
    assert stage.indices(13) == [1, 5, 9]  # Cornerstone's doc comment: [0...12] -> 1, 5, 9
    assert [i for i in range(13) if stage.selects(i, 13)] == [1, 5, 9]
    assert RetrieveStage(id="all").indices(3) == [0, 1, 2]
    assert RetrieveStage(id="late", decimate=2, offset=5).indices(4) == []
    assert RetrieveStage(id="all").indices(0) == []
    assert not stage.selects(-3, 13) and not stage.selects(13, 13)


def test_positions_as_cornerstone_maps_them() -> None:
    stage = RetrieveStage(id="initial", positions=(0.5, 0, -1))
    assert stage.indices(100) == [49, 0, 99]  # floor((100 - 1) * 0.5)
    assert stage.indices(101) == [50, 0, 100]
    assert stage.indices(1) == [0]
    assert stage.indices(2) == [0, 1]
    assert stage.selects(49, 100) and stage.selects(99, 100) and not stage.selects(50, 100)
    absolute = RetrieveStage(id="abs", positions=(3, 1, -2, 0.25))
    assert absolute.indices(10) == [3, 1, 8, 2]
    assert absolute.indices(2) == [1, 0]  # 3 and -2 fall outside a 2-image stack
    assert not absolute.selects(3, 2)


def test_positions_win_over_decimate() -> None:
    stage = RetrieveConfig.from_json(
        {"stages": [{"id": "p", "positions": [0, -1], "decimate": 2, "offset": 1}]}
    ).stages[0]
    assert stage.indices(5) == [0, 4]


def test_interleaved_covers_every_slice_with_finals() -> None:
    stages = preset("interleaved").stages
    count = 37
    finals = set()
    for stage in stages:
        if stage.retrieve_type == "multipleFinal":
            finals.update(stage.indices(count))
    assert finals == set(range(count))
    fast = set()
    for stage in stages:
        if stage.retrieve_type == "multipleFast":
            for index in stage.indices(count):
                fast.add(index)
                fast.update(index + f.offset for f in stage.nearby_frames if 0 <= index + f.offset < count)
    assert fast == set(range(count))  # every slice shows something before the finals


# ---------------------------------------------------------------- property: round trip

_names = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x2FF), min_size=1, max_size=8)
_uid = st.lists(st.integers(0, 99999), min_size=2, max_size=8).map(lambda xs: ".".join(map(str, xs)))
_frames = st.from_regex(r"\A/[a-zA-Z0-9_-]{1,12}(/[a-zA-Z0-9_-]{1,12})?/\Z")
_status = st.sampled_from(list(ImageQualityStatus))

_options = st.builds(
    RetrieveOptions,
    frames_path=st.none() | _frames,
    url_arguments=st.none() | st.dictionaries(_names, st.text(max_size=8), min_size=1, max_size=3),
    streaming=st.booleans(),
    range_index=st.none() | st.integers(-1, 50),
    chunk_size=st.integers(1, 1 << 24),
    decode_level=st.none() | st.integers(0, 10),
    image_quality_status=st.none() | _status,
)
_by_syntax = st.one_of(
    st.builds(lambda o: {"default": o}, _options),
    st.dictionaries(st.just("default") | st.just("unknown") | _uid, _options, min_size=1, max_size=3),
)
_position = st.one_of(
    st.integers(-50, 50),
    st.floats(0, 1, exclude_max=True, allow_nan=False).filter(lambda x: x != 0),
)
_nearby = st.builds(NearbyFrame, offset=st.integers(-4, 4), image_quality_status=st.none() | _status)
_stage = st.builds(
    RetrieveStage,
    id=_names,
    retrieve_type=_names,
    positions=st.none() | st.lists(_position, max_size=4).map(tuple),
    decimate=st.integers(1, 16),
    offset=st.integers(0, 16),
    priority=st.integers(-20, 20),
    request_type=st.sampled_from(["interaction", "thumbnail", "prefetch", "compute"]),
    nearby_frames=st.none() | st.lists(_nearby, max_size=3).map(tuple),
)
_config = st.builds(
    RetrieveConfig,
    stages=st.lists(_stage, min_size=1, max_size=5).map(tuple),
    retrieve_options=st.dictionaries(_names, _by_syntax, max_size=4),
)


@settings(max_examples=300, deadline=None)
@given(_config)
def test_round_trip_of_generated_configs(config: RetrieveConfig) -> None:
    data = config.to_json()
    assert RetrieveConfig.from_json(data) == config
    assert parse_config(json.dumps(data)) == config


@settings(max_examples=200, deadline=None)
@given(_stage, st.integers(0, 60))
def test_selects_agrees_with_indices(stage: RetrieveStage, count: int) -> None:
    chosen = stage.indices(count)
    assert len(chosen) == len(set(chosen))
    assert all(0 <= i < count for i in chosen)
    assert {i for i in range(count) if stage.selects(i, count)} == set(chosen)


def test_allowed_origins_keep_redirects_and_bulk_data_on_the_study_origin() -> None:
    """Issue 14 item 14: another host only when configured."""
    study = "https://pacs.example/dicomweb/studies/1.2"
    plain = RetrieveConfig.from_json({})
    assert plain.allows_url("https://pacs.example:443/other/frames/1", study)
    assert not plain.allows_url("https://cdn.example/frames/1", study)
    assert not plain.allows_url("http://pacs.example/frames/1", study)  # another scheme is another origin
    assert not plain.allows_url("/relative/frames/1", study)  # callers resolve URLs first
    config = parse_config('{"allowedOrigins": ["https://CDN.example/", "http://10.0.0.5:8042"]}')
    assert config.warnings == ()
    assert config.allowed_origins == ("https://cdn.example", "http://10.0.0.5:8042")
    assert config.allows_url("https://cdn.example/bulk/7", study)
    assert not config.allows_url("https://cdn.example:8443/bulk/7", study)
    assert RetrieveConfig.from_json(config.to_json()) == config
    assert RetrieveConfig.from_json({"allowedOrigins": ["*"]}).allows_url("http://any.example/x", study)
    for bad, where in (({"allowedOrigins": "https://cdn.example"}, "$.allowedOrigins"),
                       ({"allowedOrigins": ["https://cdn.example/path"]}, "$.allowedOrigins[0]"),
                       ({"allowedOrigins": ["ftp://cdn.example"]}, "$.allowedOrigins[0]"),
                       ({"allowedOrigins": [3]}, "$.allowedOrigins[0]")):
        with pytest.raises(ConfigError) as caught:
            RetrieveConfig.from_json(bad)
        assert caught.value.path == where
