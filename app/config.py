"""Retrieve configuration in Cornerstone3D's shape: stages, retrieve options, presets.

Users paste configurations written for Cornerstone3D's progressive loader, so the JSON
vocabulary (``stages``, ``retrieveType``, ``retrieveOptions``, ``framesPath``, ``rangeIndex``,
``chunkSize``, ``decodeLevel``, ``imageQualityStatus`` ...) and its defaults follow
Cornerstone3D (``packages/core/src/types/IRetrieveConfiguration.ts``,
``packages/core/src/loaders/ProgressiveRetrieveImages.ts`` and
``packages/core/src/loaders/configuration/*``). Both option shapes load: the current one
(options directly under the retrieve type) and the older dicom-image-loader one (options
keyed by transfer syntax UID or ``"default"`` under the retrieve type, ``status`` for
``imageQualityStatus``).

Validation is strict so a typo fails loudly with a JSON path instead of silently falling
back to a full retrieve. Pure standard library: runs unchanged under Pyodide.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode

__all__ = [
    "CORNERSTONE_IGNORED_KEYS",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_INITIAL_CHUNK_SIZE",
    "DEFAULT_DECODE_LEVEL",
    "DEFAULT_PRIORITY",
    "DEFAULT_REQUEST_TYPE",
    "ConfigError",
    "ConfigWarnings",
    "ImageQualityStatus",
    "NearbyFrame",
    "PRESETS",
    "PRESET_DESCRIPTIONS",
    "REQUEST_TYPES",
    "RetrieveConfig",
    "RetrieveOptions",
    "RetrieveStage",
    "opening_index",
    "origin_of",
    "parse_config",
    "preset",
]


class ImageQualityStatus(IntEnum):
    """Quality of a delivered image; higher replaces lower, never the reverse (Cornerstone's values)."""

    FAR_REPLICATE = 1
    ADJACENT_REPLICATE = 3
    SUBRESOLUTION = 6
    LOSSY = 7
    FULL_RESOLUTION = 8


DEFAULT_INITIAL_CHUNK_SIZE = 131072
"""Bytes of range 0 (and before a stream's first decode) without ``initialChunkSize`` (Cornerstone 5.14)."""

DEFAULT_CHUNK_SIZE = 131072
"""Bytes each range after the first adds (and between stream decodes) without ``chunkSize`` (5.14)."""

DEFAULT_DECODE_LEVEL = 4
"""Cap on resolution levels skipped for a partial decode when ``decodeLevel`` is absent."""

DEFAULT_PRIORITY = -5
"""Queue priority of a stage without ``priority`` (lower runs first)."""

REQUEST_TYPES = ("interaction", "thumbnail", "prefetch", "compute")
"""Cornerstone's RequestType values: the queue a stage's requests go to."""

DEFAULT_REQUEST_TYPE = "interaction"
"""Cornerstone queues a stage without ``requestType`` as an interaction request."""

MAX_DECODE_LEVEL = 10
"""JPEG 2000 allows at most 32 decompositions; more than 10 is never useful for a display."""

CORNERSTONE_IGNORED_KEYS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        # `create` is a JS factory for a custom loader; it cannot be JSON and has no meaning here.
        "config": frozenset({"create"}),
        # Option names of older Cornerstone releases that 5.14 no longer reads.
        "options": frozenset(
            {"partialStatus", "streamingDecode", "range", "initialBytes", "totalRangesToFetch"}
        ),
        # Older NearbyFrames field: average of two neighbours; we only replicate.
        "nearbyFrame": frozenset({"linearOffset"}),
    }
)
"""Keys Cornerstone3D knew that this viewer accepts with a warning and does not use, per object kind."""

_UID = re.compile(r"^[0-9]+(\.[0-9]+)+$")
_IDENTIFIER = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$]*$")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_QUERY_TAIL = re.compile(r"\?[A-Za-z0-9_.~-]+=$")
# Transfer syntax keys that are not UIDs: "default" and Cornerstone's "unknown" (no syntax known).
_SYNTAX_WORDS = ("default", "unknown")


class ConfigWarnings(list):
    """Notes about keys a configuration holds that this viewer does not use (never fatal)."""

    def unused(self, path: str, key: str, allowed: set[str], known: frozenset[str]) -> None:
        if key in known:
            self.append(f"{_child(path, key)}: {key!r} is an older Cornerstone option; accepted and not used")
            return
        hint = difflib.get_close_matches(key, sorted(allowed), n=1)
        did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
        self.append(f"{_child(path, key)}: unknown key {key!r} ignored{did_you_mean}")


class ConfigError(ValueError):
    """A configuration problem at a JSON path, so the UI can point at the offending value."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


@dataclass(frozen=True)
class RetrieveOptions:
    """How one request is made and what its result counts as.

    Cornerstone's precedence applies: ``range_index`` set means byte-range requests (then
    ``streaming`` is not consulted); otherwise ``streaming`` decodes while the body arrives.
    """

    frames_path: str | None = None
    """Replaces ``/frames/`` in the frame URL, e.g. ``/jlsThumbnail/`` for an alternate encoding."""
    url_arguments: dict[str, str] | None = None
    """Extra query arguments (Cornerstone writes them as a string, ``accept=image/jhc``)."""
    streaming: bool = False
    """Read the body as a stream and decode as resolution levels complete."""
    range_index: int | None = None
    """None: no Range header; 0, 1, ...: fetch up to ``range_end(n)``; -1: the rest."""
    initial_chunk_size: int = DEFAULT_INITIAL_CHUNK_SIZE
    """Bytes of range 0; streaming: bytes held before the first partial decode."""
    chunk_size: int = DEFAULT_CHUNK_SIZE
    """Bytes each later range adds; streaming: bytes between partial decodes."""
    decode_level: int | None = None
    """Cap on resolution levels skipped when decoding partial data (None: Cornerstone's 4)."""
    ms_between_decode: int | None = None
    """Streaming: least milliseconds between two partial decodes of one image (None: engine's own)."""
    image_quality_status: ImageQualityStatus | None = None
    """Status of the complete result (None: FULL_RESOLUTION); partial data: ``partial_status``."""

    def range_end(self, index: int) -> int:
        """Exclusive end of range ``index`` >= 0: ``initialChunkSize + index * chunkSize`` (5.14)."""
        return self.initial_chunk_size + index * self.chunk_size

    @property
    def partial_status(self) -> ImageQualityStatus:
        """Status of an image decoded from part of the bytes: ``decodeLevel`` 0 means full size, LOSSY."""
        return ImageQualityStatus.LOSSY if self.decode_level == 0 else ImageQualityStatus.SUBRESOLUTION

    @property
    def final_status(self) -> ImageQualityStatus:
        """Status once all bytes of this request are in: a lossy alternate is never 'full'."""
        return self.image_quality_status or ImageQualityStatus.FULL_RESOLUTION

    @property
    def decode_level_cap(self) -> int:
        """The effective cap, so callers need not know Cornerstone's default."""
        return DEFAULT_DECODE_LEVEL if self.decode_level is None else self.decode_level


@dataclass(frozen=True)
class NearbyFrame:
    """Copy a fetched image to the slice at ``offset`` until that slice arrives itself."""

    offset: int
    image_quality_status: ImageQualityStatus | None = None


@dataclass(frozen=True)
class RetrieveStage:
    """One pass over the stack: which images, with which retrieve type, in which queue."""

    id: str
    retrieve_type: str = "default"
    positions: tuple[float, ...] | None = None
    """Negative: from the end (-1 last); in [0, 1): fraction of (count - 1), floored; else index."""
    decimate: int = 1
    offset: int = 0
    priority: int = DEFAULT_PRIORITY
    request_type: str = DEFAULT_REQUEST_TYPE
    nearby_frames: tuple[NearbyFrame, ...] | None = None

    def indices(self, count: int) -> list[int]:
        """Images this stage requests, in Cornerstone's order.

        Positions win over decimate/offset as in Cornerstone. Unlike Cornerstone (which
        throws), a position outside a short stack is skipped, and a repeated index is kept
        once: a second request for the same image in one stage can only be discarded.
        """
        if count <= 0:
            return []
        if self.positions is None:
            return list(range(self.offset, count, self.decimate))
        seen: list[int] = []
        for position in self.positions:
            index = _position_index(position, count)
            if 0 <= index < count and index not in seen:
                seen.append(index)
        return seen

    def selects(self, index: int, count: int) -> bool:
        """Whether image ``index`` of a stack of ``count`` is requested by this stage."""
        if not 0 <= index < count:
            return False
        if self.positions is None:
            return index >= self.offset and (index - self.offset) % self.decimate == 0
        return any(_position_index(p, count) == index for p in self.positions)


def opening_index(count: int) -> int:
    """The slice a stack opens at: stage position 0.5 (Cornerstone's middle, and what a page
    running Cornerstone passes to setStack), so the first image streamed in full is the one shown."""
    return _position_index(0.5, count) if count > 0 else 0


def _position_index(position: float, count: int) -> int:
    """Cornerstone's mapping: negative from the end, [0, 1) relative to the last index."""
    if position < 0:
        return count + int(position)
    if position < 1:
        return math.floor((count - 1) * position)
    return int(position)


@dataclass(frozen=True)
class RetrieveConfig:
    """Stages plus options per retrieve type and transfer syntax: everything a load needs."""

    stages: tuple[RetrieveStage, ...]
    retrieve_options: Mapping[str, Mapping[str, RetrieveOptions]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    """Retrieve type -> ("default" | transfer syntax UID) -> options."""
    allowed_origins: tuple[str, ...] = ()
    """Origins besides the study's own that redirects and BulkDataURIs may lead to (``*``: any).

    Not a Cornerstone key: our own, so a study cannot silently send the viewer to another host.
    """
    warnings: tuple[str, ...] = field(default=(), compare=False)
    """Keys given that this viewer does not use, one line each with its JSON path."""

    def allows_url(self, url: str, study_url: str) -> bool:
        """May a redirect or BulkDataURI of the study at ``study_url`` lead to ``url``?"""
        target = origin_of(url)
        return target is not None and (
            target == origin_of(study_url) or "*" in self.allowed_origins or target in self.allowed_origins
        )

    def options_for(self, retrieve_type: str, transfer_syntax: str | None = None) -> RetrieveOptions:
        """Options for a request: type+syntax, type+default, default+syntax, default+default.

        A missing syntax is looked up as Cornerstone's ``"unknown"``.
        """
        syntax = transfer_syntax or "unknown"
        for type_key in (retrieve_type, "default"):
            by_syntax = self.retrieve_options.get(type_key)
            if by_syntax is None:
                continue
            for syntax_key in (syntax, "default"):
                found = by_syntax.get(syntax_key)
                if found is not None:
                    return found
        return RetrieveOptions()

    def to_json(self) -> dict:
        """Cornerstone's camelCase shape; options are flat unless keyed by transfer syntax."""
        options: dict[str, Any] = {}
        for retrieve_type, by_syntax in self.retrieve_options.items():
            if list(by_syntax) == ["default"]:
                options[retrieve_type] = _options_to_json(by_syntax["default"])
            else:
                options[retrieve_type] = {
                    syntax: _options_to_json(opts) for syntax, opts in by_syntax.items()
                }
        out = {
            "stages": [_stage_to_json(stage) for stage in self.stages],
            "retrieveOptions": options,
        }
        if self.allowed_origins:
            out["allowedOrigins"] = list(self.allowed_origins)
        return out

    @classmethod
    def from_json(cls, obj: object) -> RetrieveConfig:
        """Validate a parsed JSON value; raises ConfigError naming the JSON path."""
        top = _object(obj, "$")
        notes = ConfigWarnings()
        _check_keys(top, "$", {"stages", "retrieveOptions", "allowedOrigins"}, CORNERSTONE_IGNORED_KEYS["config"],
                    notes)
        options = _parse_retrieve_options(top.get("retrieveOptions"), "$.retrieveOptions", notes)
        if "stages" in top:
            stages = _parse_stages(top["stages"], "$.stages", notes)
        else:
            stages = _infer_stages(options)
        origins = _origins(top.get("allowedOrigins"), "$.allowedOrigins")
        return cls(stages=stages, retrieve_options=options, allowed_origins=origins, warnings=tuple(notes))


# ---------------------------------------------------------------- parsing helpers

_ORIGIN = re.compile(r"^(https?)://([a-z0-9.-]+|\[[0-9a-f:.]+\])(?::([0-9]{1,5}))?$")
_URL_ORIGIN = re.compile(r"^(https?)://([^/?#@]+)", re.I)


def origin_of(url: str) -> str | None:
    """``scheme://host[:port]`` of an absolute http(s) URL, default ports dropped; else None."""
    match = _URL_ORIGIN.match(url.strip())
    if not match:
        return None
    scheme, host = match.group(1).lower(), match.group(2).lower()
    default = ":443" if scheme == "https" else ":80"
    return f"{scheme}://{host.removesuffix(default)}"


def _origins(value: object, path: str) -> tuple[str, ...]:
    """An array of origins (``https://host[:port]``, no path) or ``"*"``."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError(path, f"expected an array of origins, got {_kind(value)}")
    result = []
    for i, item in enumerate(value):
        text = _string(item, _child(path, i)).strip().lower().rstrip("/")
        if text != "*" and not _ORIGIN.match(text):
            raise ConfigError(_child(path, i), f"expected an origin like 'https://host:port' (no path), got {item!r}")
        result.append(text if text == "*" else origin_of(text))
    return tuple(result)


def _child(path: str, key: str | int) -> str:
    """JSON path of a member; UIDs and other non-identifiers go in brackets."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    if _IDENTIFIER.match(key):
        return f"{path}.{key}"
    return f"{path}[{json.dumps(key)}]"


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _object(value: object, path: str) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(path, f"expected an object, got {_kind(value)}")
    for key in value:
        if not isinstance(key, str):
            raise ConfigError(path, f"object keys must be strings, got {key!r}")
    return value


def _check_keys(obj: dict, path: str, allowed: set[str], known: frozenset[str], notes: ConfigWarnings) -> None:
    """Keys outside ``allowed`` are noted, never fatal: a newer Cornerstone may add options."""
    for key in obj:
        if key not in allowed:
            notes.unused(path, key, allowed, known)


def _integer(value: object, path: str, low: int | None = None, high: int | None = None) -> int:
    """JSON numbers are doubles: accept 4 and 4.0, refuse 4.5, booleans and strings."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(path, f"expected an integer, got {_kind(value)}")
    if isinstance(value, float):
        if not value.is_integer():
            raise ConfigError(path, f"expected an integer, got {value!r}")
        value = int(value)
    if low is not None and value < low:
        raise ConfigError(path, f"must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ConfigError(path, f"must be <= {high}, got {value}")
    return value


def _boolean(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(path, f"expected true or false, got {_kind(value)}")
    return value


def _string(value: object, path: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(path, f"expected a string, got {_kind(value)}")
    return value


def _status(value: object, path: str) -> ImageQualityStatus:
    """A status as Cornerstone's enum name ("SUBRESOLUTION") or number (6)."""
    names = ", ".join(f"{s.name} ({s.value})" for s in ImageQualityStatus)
    if isinstance(value, str):
        try:
            return ImageQualityStatus[value.strip().upper()]
        except KeyError:
            raise ConfigError(path, f"unknown status {value!r}; one of {names}") from None
    number = _integer(value, path)
    try:
        return ImageQualityStatus(number)
    except ValueError:
        raise ConfigError(path, f"unknown status {number}; one of {names}") from None


def _frames_path(value: object, path: str) -> str:
    """A path that replaces ``/frames/``; never a URL, never climbing out of the instance."""
    text = _string(value, path)
    if _SCHEME.match(text) or text.startswith("//"):
        raise ConfigError(path, f"must be a path like '/jls/', not a URL: {text!r}")
    if not text.startswith("/"):
        raise ConfigError(path, f"must start with '/': {text!r}")
    if ".." in unquote(text.split("?")[0]).split("/"):
        raise ConfigError(path, f"must not contain '..': {text!r}")
    if "\\" in text or any(ord(c) < 0x20 for c in text):
        raise ConfigError(path, f"must not contain backslashes or control characters: {text!r}")
    # Cornerstone's JPIP example ('/jpip?target=') puts the frame number in a query value.
    if not (text.endswith("/") or _QUERY_TAIL.search(text)):
        raise ConfigError(path, f"must end with '/' (or '?name=' for a query target): {text!r}")
    return text


def _url_arguments(value: object, path: str) -> dict[str, str] | None:
    """Cornerstone's 'a=1&b=2' string, or an object of strings."""
    if isinstance(value, dict):
        result: dict[str, str] = {}
        for key, item in value.items():
            if not key:
                raise ConfigError(path, "argument names must not be empty")
            result[key] = _string(item, _child(path, key))
        return result or None
    text = _string(value, path)
    try:
        pairs = parse_qsl(text.lstrip("?&"), keep_blank_values=True, strict_parsing=bool(text.strip("?&")))
    except ValueError:
        raise ConfigError(path, f"expected 'name=value&...', got {text!r}") from None
    result = {}
    for key, item in pairs:
        if key in result:
            raise ConfigError(path, f"argument {key!r} appears twice")
        result[key] = item
    return result or None


_OPTION_KEYS = {  # every retrieve option @cornerstonejs/dicom-image-loader 5.14 reads, plus `status`
    "framesPath",
    "urlArguments",
    "streaming",
    "rangeIndex",
    "initialChunkSize",
    "chunkSize",
    "minChunkSize",
    "decodeLevel",
    "msBetweenDecode",
    "imageQualityStatus",
    "status",
}


def _parse_options(value: object, path: str, notes: ConfigWarnings) -> RetrieveOptions:
    obj = _object(value, path)
    _check_keys(obj, path, _OPTION_KEYS, CORNERSTONE_IGNORED_KEYS["options"], notes)
    if "status" in obj and "imageQualityStatus" in obj:
        raise ConfigError(_child(path, "status"), "give either 'status' or 'imageQualityStatus', not both")
    kwargs: dict[str, Any] = {}
    if obj.get("framesPath") is not None:
        kwargs["frames_path"] = _frames_path(obj["framesPath"], _child(path, "framesPath"))
    if obj.get("urlArguments") is not None:
        kwargs["url_arguments"] = _url_arguments(obj["urlArguments"], _child(path, "urlArguments"))
    if "streaming" in obj:
        kwargs["streaming"] = _boolean(obj["streaming"], _child(path, "streaming"))
    if obj.get("rangeIndex") is not None:
        kwargs["range_index"] = _integer(obj["rangeIndex"], _child(path, "rangeIndex"), low=-1)
    kwargs.update(_chunk_sizes(obj, path, kwargs.get("range_index"), notes))
    if obj.get("decodeLevel") is not None:
        kwargs["decode_level"] = _integer(
            obj["decodeLevel"], _child(path, "decodeLevel"), low=0, high=MAX_DECODE_LEVEL
        )
    if obj.get("msBetweenDecode") is not None:
        kwargs["ms_between_decode"] = _integer(obj["msBetweenDecode"], _child(path, "msBetweenDecode"), low=0)
    for key in ("imageQualityStatus", "status"):
        if obj.get(key) is not None:
            kwargs["image_quality_status"] = _status(obj[key], _child(path, key))
    return RetrieveOptions(**kwargs)


def _chunk_sizes(obj: dict, path: str, range_index: int | None, notes: ConfigWarnings) -> dict[str, int]:
    """``initialChunkSize``, ``chunkSize`` and 5.14's reading of ``minChunkSize``.

    Cornerstone's stream reader takes ``chunkSize`` or else ``minChunkSize``; its range reader
    never reads ``minChunkSize``, so under ``rangeIndex`` it is noted as unused.
    """
    out: dict[str, int] = {}
    for key, name in (("initialChunkSize", "initial_chunk_size"), ("chunkSize", "chunk_size"),
                      ("minChunkSize", "min_chunk_size")):
        if obj.get(key) is not None:
            out[name] = _integer(obj[key], _child(path, key), low=1)
    minimum = out.pop("min_chunk_size", None)
    if minimum is not None:
        if range_index is not None:
            notes.append(f"{_child(path, 'minChunkSize')}: read only when streaming; a byte-range request uses chunkSize")
        elif "chunk_size" not in out:
            out["chunk_size"] = minimum
    return out


def _is_syntax_key(key: str) -> bool:
    return key in _SYNTAX_WORDS or bool(_UID.match(key))


def _parse_retrieve_options(
    value: object, path: str, notes: ConfigWarnings
) -> Mapping[str, Mapping[str, RetrieveOptions]]:
    if value is None:
        return MappingProxyType({})
    obj = _object(value, path)
    result: dict[str, Mapping[str, RetrieveOptions]] = {}
    for retrieve_type, entry in obj.items():
        type_path = _child(path, retrieve_type)
        if not retrieve_type:
            raise ConfigError(type_path, "retrieve type must not be empty")
        inner = _object(entry, type_path)
        syntax_keys = [k for k in inner if _is_syntax_key(k)]
        if not syntax_keys:
            result[retrieve_type] = MappingProxyType({"default": _parse_options(inner, type_path, notes)})
            continue
        # Older shape: options keyed by transfer syntax UID or "default".
        by_syntax: dict[str, RetrieveOptions] = {}
        for key, options in inner.items():
            key_path = _child(type_path, key)
            if not _is_syntax_key(key):
                raise ConfigError(
                    key_path,
                    f"mixes option {key!r} with transfer syntax keys; under a retrieve type give "
                    "either options directly or objects keyed by 'default' / transfer syntax UID",
                )
            by_syntax[key] = _parse_options(options, key_path, notes)
        result[retrieve_type] = MappingProxyType(by_syntax)
    return MappingProxyType(result)


_STAGE_KEYS = {
    "id",
    "retrieveType",
    "positions",
    "decimate",
    "offset",
    "priority",
    "requestType",
    "nearbyFrames",
}


def _parse_stages(value: object, path: str, notes: ConfigWarnings) -> tuple[RetrieveStage, ...]:
    if not isinstance(value, list):
        raise ConfigError(path, f"expected an array of stages, got {_kind(value)}")
    if not value:
        raise ConfigError(path, "needs at least one stage (an empty list loads nothing)")
    return tuple(_parse_stage(item, _child(path, i), notes) for i, item in enumerate(value))


def _parse_stage(value: object, path: str, notes: ConfigWarnings) -> RetrieveStage:
    obj = _object(value, path)
    _check_keys(obj, path, _STAGE_KEYS, frozenset(), notes)
    if "id" not in obj:
        raise ConfigError(path, "missing 'id' (names the stage in progress events)")
    stage_id = _string(obj["id"], _child(path, "id"))
    if not stage_id:
        raise ConfigError(_child(path, "id"), "must not be empty")
    kwargs: dict[str, Any] = {"id": stage_id}
    if obj.get("retrieveType") is not None:
        retrieve_type = _string(obj["retrieveType"], _child(path, "retrieveType"))
        if not retrieve_type:
            raise ConfigError(_child(path, "retrieveType"), "must not be empty")
        kwargs["retrieve_type"] = retrieve_type
    if obj.get("positions") is not None:
        kwargs["positions"] = _parse_positions(obj["positions"], _child(path, "positions"))
    if obj.get("decimate") is not None:
        kwargs["decimate"] = _integer(obj["decimate"], _child(path, "decimate"), low=1)
    if obj.get("offset") is not None:
        kwargs["offset"] = _integer(obj["offset"], _child(path, "offset"), low=0)
    if obj.get("priority") is not None:
        kwargs["priority"] = _integer(obj["priority"], _child(path, "priority"))
    if obj.get("requestType") is not None:
        request_type = _string(obj["requestType"], _child(path, "requestType"))
        if request_type.lower() not in REQUEST_TYPES:
            raise ConfigError(
                _child(path, "requestType"),
                f"unknown request type {request_type!r}; one of {', '.join(REQUEST_TYPES)}",
            )
        kwargs["request_type"] = request_type.lower()
    if obj.get("nearbyFrames") is not None:
        kwargs["nearby_frames"] = _parse_nearby(obj["nearbyFrames"], _child(path, "nearbyFrames"), notes)
    return RetrieveStage(**kwargs)


def _parse_positions(value: object, path: str) -> tuple[float, ...]:
    if not isinstance(value, list):
        raise ConfigError(path, f"expected an array of numbers, got {_kind(value)}")
    result: list[float] = []
    for i, item in enumerate(value):
        item_path = _child(path, i)
        if isinstance(item, bool) or not isinstance(item, (int, float)) or not math.isfinite(item):
            raise ConfigError(item_path, f"expected a number, got {_kind(item)}")
        # Cornerstone indexes with the value itself outside [0, 1): a fraction there selects nothing.
        if (item < 0 or item >= 1) and not float(item).is_integer():
            raise ConfigError(
                item_path,
                f"{item!r}: only values in [0, 1) may be fractions; others are indexes (negative from the end)",
            )
        result.append(_number(item))
    return tuple(result)


def _parse_nearby(value: object, path: str, notes: ConfigWarnings) -> tuple[NearbyFrame, ...]:
    if not isinstance(value, list):
        raise ConfigError(path, f"expected an array, got {_kind(value)}")
    frames: list[NearbyFrame] = []
    for i, item in enumerate(value):
        item_path = _child(path, i)
        obj = _object(item, item_path)
        _check_keys(
            obj, item_path, {"offset", "imageQualityStatus", "status"}, CORNERSTONE_IGNORED_KEYS["nearbyFrame"], notes
        )
        if "offset" not in obj:
            raise ConfigError(item_path, "missing 'offset'")
        if "status" in obj and "imageQualityStatus" in obj:
            raise ConfigError(_child(item_path, "status"), "give either 'status' or 'imageQualityStatus', not both")
        status = None
        for key in ("imageQualityStatus", "status"):
            if obj.get(key) is not None:
                status = _status(obj[key], _child(item_path, key))
        frames.append(NearbyFrame(offset=_integer(obj["offset"], _child(item_path, "offset")), image_quality_status=status))
    return tuple(frames)


def _infer_stages(options: Mapping[str, Mapping[str, RetrieveOptions]]) -> tuple[RetrieveStage, ...]:
    """No stages given: pick the stage set whose retrieve types the options name."""
    if options.keys() & {"singleFast", "singleFinal"}:
        name = "sequential"
    elif options.keys() & {"multipleFast", "multipleFinal"}:
        name = "interleaved"
    else:
        name = "single"
    return _parse_stages(_STAGE_SETS[name], "$.stages", ConfigWarnings())


# ---------------------------------------------------------------- serialising


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def _options_to_json(options: RetrieveOptions) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if options.frames_path is not None:
        out["framesPath"] = options.frames_path
    if options.url_arguments:
        out["urlArguments"] = urlencode(options.url_arguments, quote_via=quote, safe=",/:")
    if options.streaming:
        out["streaming"] = True
    if options.range_index is not None:
        out["rangeIndex"] = options.range_index
    if options.initial_chunk_size != DEFAULT_INITIAL_CHUNK_SIZE:
        out["initialChunkSize"] = options.initial_chunk_size
    if options.chunk_size != DEFAULT_CHUNK_SIZE:
        out["chunkSize"] = options.chunk_size
    if options.ms_between_decode is not None:
        out["msBetweenDecode"] = options.ms_between_decode
    if options.decode_level is not None:
        out["decodeLevel"] = options.decode_level
    if options.image_quality_status is not None:
        out["imageQualityStatus"] = int(options.image_quality_status)
    return out


def _stage_to_json(stage: RetrieveStage) -> dict[str, Any]:
    out: dict[str, Any] = {"id": stage.id}
    if stage.retrieve_type != "default":
        out["retrieveType"] = stage.retrieve_type
    if stage.positions is not None:
        out["positions"] = [_number(p) for p in stage.positions]
    if stage.decimate != 1:
        out["decimate"] = stage.decimate
    if stage.offset != 0:
        out["offset"] = stage.offset
    if stage.priority != DEFAULT_PRIORITY:
        out["priority"] = stage.priority
    if stage.request_type != DEFAULT_REQUEST_TYPE:
        out["requestType"] = stage.request_type
    if stage.nearby_frames is not None:
        out["nearbyFrames"] = [
            {"offset": f.offset}
            | ({} if f.image_quality_status is None else {"imageQualityStatus": int(f.image_quality_status)})
            for f in stage.nearby_frames
        ]
    return out


# ---------------------------------------------------------------- entry points


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ConfigError("$", f"duplicate key {key!r}: the later value would silently win")
        result[key] = value
    return result


def parse_config(text: str) -> RetrieveConfig:
    """Load a pasted JSON configuration (json.loads, never eval)."""
    try:
        obj = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_reject_constant)
    except json.JSONDecodeError as error:
        raise ConfigError("$", f"invalid JSON at line {error.lineno} column {error.colno}: {error.msg}") from None
    except ValueError as error:
        if isinstance(error, ConfigError):
            raise
        raise ConfigError("$", f"invalid JSON: {error}") from None
    return RetrieveConfig.from_json(obj)


# Cornerstone3D's stage sets, same ids, decimate/offset/priority/requestType as its source
# (packages/core/src/loaders/configuration/{single,sequential,interleaved}Retrieve.ts).
_NEARBY = [
    {"offset": -1, "imageQualityStatus": int(ImageQualityStatus.ADJACENT_REPLICATE)},
    {"offset": 1, "imageQualityStatus": int(ImageQualityStatus.ADJACENT_REPLICATE)},
    {"offset": 2, "imageQualityStatus": int(ImageQualityStatus.FAR_REPLICATE)},
]

_STAGE_SETS: dict[str, list[dict[str, Any]]] = {
    "single": [{"id": "initialImages", "retrieveType": "single"}],
    "sequential": [
        {"id": "lossySequential", "retrieveType": "singleFast"},
        {"id": "finalSequential", "retrieveType": "singleFinal"},
    ],
    "interleaved": [
        {
            "id": "initialImages",
            "positions": [0.5, 0, -1],
            "retrieveType": "default",
            "requestType": "thumbnail",
            "priority": 5,
            "nearbyFrames": _NEARBY,
        },
        {"id": "quarterThumb", "decimate": 4, "offset": 3, "requestType": "thumbnail",
         "retrieveType": "multipleFast", "priority": 6, "nearbyFrames": _NEARBY},
        {"id": "halfThumb", "decimate": 4, "offset": 1, "priority": 7, "requestType": "thumbnail",
         "retrieveType": "multipleFast", "nearbyFrames": _NEARBY},
        {"id": "quarterFull", "decimate": 4, "offset": 2, "priority": 8, "requestType": "thumbnail",
         "retrieveType": "multipleFinal"},
        {"id": "halfFull", "decimate": 4, "offset": 0, "priority": 9, "requestType": "thumbnail",
         "retrieveType": "multipleFinal"},
        {"id": "threeQuarterFull", "decimate": 4, "offset": 1, "priority": 10, "requestType": "thumbnail",
         "retrieveType": "multipleFinal"},
        {"id": "finalFull", "decimate": 4, "offset": 3, "priority": 11, "requestType": "thumbnail",
         "retrieveType": "multipleFinal"},
        # Back to a plain retrieve for images whose earlier requests failed.
        {"id": "errorRetrieve"},
    ],
}

_SUB = int(ImageQualityStatus.SUBRESOLUTION)

# Ours for stacks: the interleaved set with only the image on screen (position 0.5) streamed in
# full first; the first and last slices come as fast ranges like the others. In a browser a
# streamed 190 KB frame holds one of HTTP/1.1's six connections ~100 ms on "4g", so three of them
# left three connections for the small ranges every slice shows first. No ``halfThumb``: every
# 4th slice's range (quarterThumb) with its nearby copies already shows every slice; the second
# set of ranges only turned copies into the slices' own 64-px levels, and its 44 requests (174
# slices) cost the engine's thread ~7 ms each in the page while the link waited for the finals.
_PREVIEW_STAGES: list[dict[str, Any]] = [
    {**_STAGE_SETS["interleaved"][0], "positions": [0.5]},
    {**_STAGE_SETS["interleaved"][0], "id": "stackEnds", "positions": [0, -1], "retrieveType": "multipleFast"},
    *(stage for stage in _STAGE_SETS["interleaved"][1:] if stage["id"] != "halfThumb"),
]

PRESETS: dict[str, dict] = {
    "single": {"stages": _STAGE_SETS["single"]},
    "sequential": {"stages": _STAGE_SETS["sequential"]},
    "interleaved": {"stages": _STAGE_SETS["interleaved"]},
    "jls": {
        "stages": _STAGE_SETS["single"],
        "retrieveOptions": {"default": {"framesPath": "/jls/"}},
    },
    "jlsReduced": {
        "stages": _STAGE_SETS["sequential"],
        "retrieveOptions": {
            "singleFast": {"imageQualityStatus": _SUB, "framesPath": "/jlsThumbnail/"},
            "singleFinal": {"framesPath": "/jls/"},
        },
    },
    "htj2k": {
        "stages": _STAGE_SETS["single"],
        "retrieveOptions": {"single": {"streaming": True}},
    },
    # Cornerstone's "HTJ2K Byte Range" row: 64 KB, then the rest in one (not streamed) request.
    # chunkSize is given too so an engine reading only chunkSize asks for the same bytes.
    "htj2kByteRange": {
        "stages": _STAGE_SETS["sequential"],
        "retrieveOptions": {
            "singleFast": {"rangeIndex": 0, "initialChunkSize": 65536, "chunkSize": 65536},
            "singleFinal": {"rangeIndex": -1},
        },
    },
    # Ours: 128 KB (to the end of a whole level, at most 3 levels down), then the rest streamed.
    "htj2kRangeThenStream": {
        "stages": _STAGE_SETS["sequential"],
        "retrieveOptions": {
            "singleFast": {"rangeIndex": 0, "initialChunkSize": 131072, "chunkSize": 131072, "decodeLevel": 3},
            "singleFinal": {"rangeIndex": -1, "streaming": True},
        },
    },
    "nonProgressive": {
        "stages": _STAGE_SETS["single"],
        "retrieveOptions": {"default": {"streaming": False}},
    },
    "interleavedStack": {
        "stages": _STAGE_SETS["interleaved"],
        "retrieveOptions": {
            "default": {"rangeIndex": -1},
            "multipleFast": {"rangeIndex": 0, "initialChunkSize": 65536, "chunkSize": 65536, "decodeLevel": 3},
            "multipleFinal": {"rangeIndex": -1},
        },
    },
    # Ours for stacks: _PREVIEW_STAGES with 12 KB first ranges. That holds the 64-px level of a
    # 512x512 CT or a 256x256 MR as our converter writes them (it ends at ~9.2 KB, 16-bit), so every
    # slice shows something after 12 KB per fast slice instead of 64 KB; the rest of each frame comes
    # by one Range request later (no byte twice). The image on screen is streamed by level: it shows
    # before its whole frame is in. 174-slice CT, "4g", side-by-side bench (219 requests; 262 with
    # halfThumb): every slice visible 627 ms (interleavedStack: 1180), lossless 9.38 s (halfThumb:
    # 9.57; plain-fetch floor 9.11): while the small ranges run the link is half used, the engine's
    # thread busy with their answers.
    "interleavedPreview": {
        "stages": _PREVIEW_STAGES,
        "retrieveOptions": {
            "default": {"rangeIndex": -1, "streaming": True},  # the image on screen shows by levels
            "multipleFast": {"rangeIndex": 0, "initialChunkSize": 12288, "chunkSize": 12288, "decodeLevel": 3},
            "multipleFinal": {"rangeIndex": -1},
        },
    },
}
"""Named configurations in the JSON shape users would paste; ``preset`` validates them."""

PRESET_DESCRIPTIONS: dict[str, str] = {
    "single": "Cornerstone's single stage set: every image once, retrieve type 'single' (options fall back to 'default').",
    "sequential": "Cornerstone's sequential stage set: every image as 'singleFast', then again as 'singleFinal' unless already full.",
    "interleaved": "Cornerstone's interleaved stage set: middle/first/last, then every 4th slice fast (offsets 3, 1) copied to neighbours, then finals.",
    "jls": "One request per image for the lossless JPEG-LS alternate under /jls/; nothing shows until it is complete.",
    "jlsReduced": "JPEG-LS thumbnail (1/4 size each way) from /jlsThumbnail/ shown as SUBRESOLUTION, then the full JPEG-LS from /jls/.",
    "htj2k": "One streamed HTJ2K request from /frames/; decoded as resolution levels arrive (SUBRESOLUTION while partial), full at the end.",
    "htj2kByteRange": "Cornerstone's byte-range row: the first 64 KB of the HTJ2K frame (Range) as SUBRESOLUTION, then the rest in one Range request.",
    "htj2kRangeThenStream": "First 128 KB of the HTJ2K frame (Range, decode level capped at 3; extended to the end of a level if it holds no whole one) as SUBRESOLUTION, then one streamed Range request for the rest.",
    "nonProgressive": "One complete request per image from /frames/, no streaming or ranges: the image appears only when fully decoded.",
    "interleavedStack": "Interleaved over the stack: middle/first/last in full, 64 KB HTJ2K ranges of every 4th slice copied to neighbours, then the rest of every slice.",
    "interleavedPreview": "interleavedStack with 12 KB first ranges (the 64-px level of a 512x512 CT or 256x256 MR) of every 4th slice shown at its neighbours (no halfThumb), only the image on screen streamed in full first: every slice shows something sooner; the rest of each frame by Range.",
}
"""One line per preset for the UI."""


def preset(name: str) -> RetrieveConfig:
    """A named configuration, validated like a pasted one."""
    if name not in PRESETS:
        raise ConfigError("$", f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return RetrieveConfig.from_json(PRESETS[name])
