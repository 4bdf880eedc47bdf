"""``python -m app load URL``: run the progressive engine from the command line, one JSON line per event."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import enum
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Sequence, TextIO


from .config import PRESETS, ConfigError, RetrieveConfig, parse_config, preset
from .codecs import pixel_sha256
from .engine import DEFAULT_CONCURRENCY, EngineEvent, ImageFailed, Refinement, RequestStarted, RetrievePolicy
from .study import DiscoveryError, IndexMismatch, Stack, discover
from .transport import TransportError, default_transport
from .viewer_engine import StackLoader, StackReplaced

__all__ = ["main", "load", "pixel_sha256", "event_json"]


def event_json(event: EngineEvent) -> dict:
    out: dict = {"event": type(event).__name__}
    for f in dataclasses.fields(event):
        if f.name == "pixels":
            continue
        value = getattr(event, f.name)
        if isinstance(value, enum.Enum):
            value = value.name
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    if isinstance(event, Refinement):
        out["sha256"] = pixel_sha256(event.pixels)
    return out


def load_config(value: str | None) -> RetrieveConfig:
    if value is None:
        return preset("single")
    if value in PRESETS:
        return preset(value)
    path = Path(value)
    if not path.is_file():
        raise ConfigError("$", f"{value!r} is neither a preset ({', '.join(PRESETS)}) nor a file")
    return parse_config(path.read_text(encoding="utf-8"))


def report_failures(stack: Stack, requested: list[int], final: set[int], failures: dict[int, str],
                    err: TextIO) -> None:
    """One line per image that did not become final (its last failure), then a summary line."""
    missing = [i for i in requested if i not in final]
    if not missing:
        return
    for index in missing:
        image = stack.images[index]
        reason = failures.get(index, "did not reach its final stage (no error reported)")
        err.write(f"image {index + 1}/{len(stack)} {image.sop_instance_uid} frame {image.frame}: {reason}\n")
    err.write(f"{len(missing)} of {len(requested)} images failed; {len(requested) - len(missing)} final\n")


class _LoadLines:
    """A load's JSON lines: StackReady once its stack is confirmed (one built from the series' stack
    index only when the metadata agrees: nothing of it is written before), then the events."""

    def __init__(self, out: TextIO, t0: float, loader: StackLoader) -> None:
        self.out, self.t0, self.loader = out, t0, loader
        self.failures: dict[int, str] = {}
        self.requests = 0
        self.replaced = ""  # why the index's stack was replaced
        self.ready = False

    def t_ms(self) -> float:
        return round((time.perf_counter() - self.t0) * 1000, 3)

    def write(self, line: dict) -> None:
        self.out.write(json.dumps(line) + "\n")
        self.out.flush()

    def confirm(self, stack: Stack | None = None) -> None:
        if not self.ready:
            self.ready = True
            stack = stack or self.loader.stack
            self.write({"event": "StackReady", "study_uid": stack.study_uid, "series_uid": stack.series_uid,
                        "images": len(stack), "series_url": stack.series_url, "t_ms": self.t_ms()})

    def on_event(self, event) -> None:
        if isinstance(event, StackReplaced):  # the index lied: the metadata's stack loads instead
            self.failures.clear()
            self.requests, self.replaced = 0, event.message
            self.write({"event": "StackReplaced", "message": event.message,
                        "images": None if event.stack is None else len(event.stack)})
            if event.stack is not None:
                self.confirm(event.stack)
            return
        self.confirm()
        self.requests += isinstance(event, RequestStarted)
        if isinstance(event, ImageFailed):
            self.failures[event.index] = f"{event.message} (stage {event.stage_id})"
        self.write(event_json(event))


async def load(
    url: str,
    config: RetrieveConfig,
    *,
    series: str | None = None,
    images: int | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    viewport: tuple[int, int] | None = None,
    cache_mb: int | None = None,
    frames_per_request: int | None = None,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    transport=None,
) -> tuple[Stack, list[int], int]:
    """Discover the stack, load it, write JSON lines; returns (stack, requested, images final).

    Images that do not become final are named on ``err``, one line each, plus a summary. The
    last line on ``out`` is a ``LoadSummary``: images, finals and the frame requests made.
    """
    own = transport is None
    transport = transport or default_transport()
    try:
        t0 = time.perf_counter()
        # a series' stack index (stack.json) when it has one: the first frame request leaves before
        # the metadata is parsed; nothing is written until the metadata agrees (StackLoader)
        stack = await discover(transport, url, series_uid=series, provisional=True)  # DiscoveryError names each cause
        budget = {} if cache_mb is None else {"cache_bytes": cache_mb << 20}
        if frames_per_request is not None:
            budget["frames_per_request"] = frames_per_request
        loader = StackLoader(stack, config, transport, viewport,
                             policy=RetrievePolicy(concurrency=concurrency, **budget))
        wanted = (lambda n: list(range(n if images is None else min(images, n))))
        lines = _LoadLines(out, t0, loader)
        await loader.run(0, lines.on_event, wanted(len(stack)))
        if loader.refused:  # the index could not be confirmed and the metadata gives no stack
            raise IndexMismatch(lines.replaced or f"{stack.series_url}: its stack index was refused")
        lines.confirm()
        stack = loader.stack
        requested = wanted(len(stack))
        final = {i for i in requested if loader.engine.reached_final(i)}
        report_failures(stack, requested, final, lines.failures, err)
        lines.write({"event": "LoadSummary", "images": len(requested), "final": len(final),
                     "requests": lines.requests, "t_ms": lines.t_ms()})
        return stack, requested, len(final)
    finally:
        if own:
            await transport.aclose()


def _viewport(text: str) -> tuple[int, int]:
    try:
        rows, cols = text.lower().split("x")
        return int(rows), int(cols)
    except ValueError:
        raise argparse.ArgumentTypeError("viewport is ROWSxCOLUMNS, e.g. 900x1280") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app load", description="Load a DICOM stack progressively.")
    parser.add_argument("url", help="DICOMweb root, study, series or metadata URL (static trees too)")
    parser.add_argument("--config", help=f"preset ({', '.join(PRESETS)}) or a JSON file (Cornerstone3D shape)")
    parser.add_argument("--cache-mb", type=int, help="memory budget of decoded pixels and held bytes (MB)")
    parser.add_argument("--series", help="SeriesInstanceUID to load when the URL names a study or root")
    parser.add_argument("--images", type=int, help="load only the first N images of the stack")
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY, help="requests in flight")
    parser.add_argument("--frames-per-request", type=int, metavar="N",
                        help="frames of one multi-frame instance asked in one request (frames/1,2,3; "
                             "default 16; 1: one request per frame)")
    parser.add_argument("--viewport", type=_viewport, help="ROWSxCOLUMNS the image is shown in")
    parser.add_argument("--allow-origin", nargs="+", default=(), metavar="ORIGIN",
                        help="origins besides the study's that redirects and BulkDataURIs may lead to")
    parser.add_argument("--debug", action="store_true", help="tracebacks on errors")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        if args.allow_origin:
            extra = RetrieveConfig.from_json({"allowedOrigins": list(args.allow_origin)}).allowed_origins
            config = dataclasses.replace(config, allowed_origins=config.allowed_origins + extra)
        for warning in config.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        if args.images is not None and args.images < 1:
            raise ValueError("--images must be >= 1")
        _, requested, finals = asyncio.run(load(
            args.url, config, series=args.series, images=args.images,
            concurrency=args.concurrency, viewport=args.viewport, cache_mb=args.cache_mb,
            frames_per_request=args.frames_per_request,
        ))
    except KeyboardInterrupt:
        return 130
    except (ConfigError, DiscoveryError, TransportError, ValueError, OSError) as exc:
        if args.debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - one line for the user, traceback on request
        if args.debug:
            traceback.print_exc()
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0 if finals == len(requested) else 1
