"""The bench's results as values: one load's raw record, the rows derived from runs, the whole result.

``BenchResult.to_json`` writes what ``benchmark.json`` has always held; ``from_json`` reads it back so
``--render`` can recompute the derived rows from the raw runs after a change of the report.
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass, field
from typing import Any, Sequence

from .profiles import MODES, PROFILE_LABELS, PROFILES, floor_ms

__all__ = ["Stats", "PageMemory", "LoadRun", "ModeRow", "StackRow", "ColdStart", "Transfer", "Decode", "Machine",
           "ImageInfo", "Target", "BenchResult"]

_REPLICAS = ("ADJACENT_REPLICATE", "FAR_REPLICATE")


@dataclass(frozen=True)
class Stats:
    median: float
    min: float
    max: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float | None]) -> Stats | None:
        """Median, range and count of the values that were measured (None = not measured)."""
        vals = [float(v) for v in values if v is not None]
        if not vals:
            return None
        return cls(statistics.median(vals), min(vals), max(vals), len(vals))


def _from_fields(cls: type, data: dict) -> Any:
    """A dataclass from its JSON dict: Stats-typed fields from their dicts, unknown keys ignored."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        if isinstance(f.type, str) and f.type.startswith("Stats") and isinstance(value, dict):
            value = Stats(**value)
        kwargs[f.name] = value
    return cls(**kwargs)


@dataclass(frozen=True)
class PageMemory:
    """What the viewer holds at one moment, in bytes, each part read where it lives:

    * ``page_js_heap`` / ``worker_js_heap``: used JS heap of the page and of the engine's worker
      (CDP ``Runtime.getHeapUsage``, ``usedSize``);
    * ``page_buffers`` / ``worker_buffers``: their ArrayBuffer backing stores, outside the JS heap
      (``backingStorageSize``): on the page, the decoded pixels it holds (the 2D renderer draws
      from views of them) and the RGBA of the last images painted;
    * ``wasm_heap``: the worker's wasm memory (Pyodide: Python objects, numpy arrays, the engine's
      pixels and frame bytes); it never shrinks, so it is the high-water mark;
    * ``renderer_extra``: what the renderer holds beyond those buffers: with WebGL2
      ``renderer.bytesHeld()`` (a texture per image, the grey table), on the 2D path
      ``bytesHeld()`` minus the pixels (its painted surfaces and table).

    ``held_pixels`` / ``held_images``: the decoded pixels the page's budget counts (one copy)."""

    page_js_heap: int = 0
    page_buffers: int = 0
    worker_js_heap: int = 0
    worker_buffers: int = 0
    wasm_heap: int = 0
    renderer_extra: int = 0
    held_pixels: int = 0
    held_images: int = 0
    renderer: str = ""

    @property
    def total(self) -> int:
        return (self.page_js_heap + self.page_buffers + self.worker_js_heap + self.worker_buffers
                + self.wasm_heap + self.renderer_extra)

    def mb(self) -> float:
        return round(self.total / (1 << 20), 1)

    def raw(self) -> dict:
        return dataclasses.asdict(self) | {"total": self.total}

    @classmethod
    def from_raw(cls, raw: dict) -> PageMemory:
        return _from_fields(cls, raw)


@dataclass
class LoadRun:
    """One load: the renderLog-shaped entries and what the server sent during it."""

    log: list[dict]
    t_click: float | None
    t_loading: float | None
    count: int | None = None
    bytes_frames: int = 0
    bytes_total: int = 0
    frame_requests: int = 0
    longest_task_ms: float | None = None
    long_tasks_ms: float | None = None
    memory: dict | None = None  # {"baseline": PageMemory.raw(), "peak": ...} when sampled
    retries: int = 0  # requests the engine asked again (the page's retryLog): a stall shows here

    def raw(self) -> dict:
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "log" and v is not None}
        return out | {"renderLog": self.log}

    @classmethod
    def from_raw(cls, raw: dict) -> LoadRun:
        return _from_fields(cls, {**raw, "log": raw["renderLog"]})

    def click_to_request_ms(self) -> float | None:
        """Click -> the first image's first frame request: page wiring, imports, metadata discovery."""
        e = next((e for e in self.log if e["index"] == 0), None)
        if e is None or e.get("bench_now") is None or self.t_click is None:
            return None
        return e["bench_now"] - self.t_click - e["image_t_ms"]


@dataclass(frozen=True)
class _Single:
    """First drawn and final entries of image 0 in one run."""

    first: dict | None
    final: dict | None
    since_click_first: float | None
    since_click_final: float | None
    refinements: int
    decode_total_ms: float

    @classmethod
    def of(cls, run: LoadRun) -> _Single:
        log = run.log
        first = next((e for e in log if e["index"] == 0 and e.get("drawn")), None)
        final = next((e for e in log if e["index"] == 0 and e.get("final")), None)

        def since_click(e: dict | None) -> float | None:
            if e is None or run.t_click is None or e.get("bench_now") is None:
                return None
            return e["bench_now"] - run.t_click

        return cls(first, final, since_click(first), since_click(final),
                   len([e for e in log if e["index"] == 0]),
                   sum(e.get("decode_ms") or 0 for e in log if e["index"] == 0))

    def get(self, which: str, key: str) -> Any:
        entry = self.first if which == "first" else self.final
        return entry[key] if entry else None

    def size(self, which: str) -> str | None:
        entry = self.first if which == "first" else self.final
        return f"{entry['columns']}x{entry['rows']}" if entry else None


@dataclass
class ModeRow:
    """One retrieve mode on one network profile, over all its runs."""

    mode: str
    type: str
    profile: str
    network: str
    size: int | None
    runs: int
    first_image_ms: Stats | None = None
    first_click_ms: Stats | None = None
    final_image_ms: Stats | None = None
    final_click_ms: Stats | None = None
    final_decode_ms: Stats | None = None
    first_decode_ms: Stats | None = None
    decode_total_ms: Stats | None = None
    progressive: bool = False
    first_size: str | None = None
    first_bytes: Stats | None = None
    final_size: str | None = None
    final_status: str | None = None
    bytes_moved: Stats | None = None
    bytes_all: Stats | None = None
    frame_requests: Stats | None = None
    bytes_ratio: float | None = None
    click_to_request_ms: Stats | None = None
    longest_task_ms: Stats | None = None
    long_tasks_ms: Stats | None = None
    first_floor_ms: Stats | None = None
    first_floor_ratio: Stats | None = None
    final_floor_ms: Stats | None = None
    final_floor_ratio: Stats | None = None
    raw: list[dict] = field(default_factory=list)

    @classmethod
    def from_runs(cls, mode: str, profile: str, runs: list[LoadRun], files: dict[str, int]) -> ModeRow:
        label, final_path, _first_path = MODES[mode]
        per = [_Single.of(r) for r in runs]
        lossless = files.get(final_path)
        moved = Stats.of([r.bytes_frames for r in runs])
        ff = [(floor_ms(profile, p.get("first", "bytes"), p.get("first", "decode_ms")), p.get("first", "image_t_ms"))
              for p in per if p.first is not None]
        fl = [(floor_ms(profile, p.get("final", "bytes"), p.get("final", "decode_ms")), p.get("final", "image_t_ms"))
              for p in per if p.final is not None]
        return cls(
            mode=mode, type=label, profile=profile, network=PROFILE_LABELS[profile], size=lossless, runs=len(runs),
            first_image_ms=Stats.of([p.get("first", "image_t_ms") for p in per]),
            first_click_ms=Stats.of([p.since_click_first for p in per]),
            final_image_ms=Stats.of([p.get("final", "image_t_ms") for p in per]),
            final_click_ms=Stats.of([p.since_click_final for p in per]),
            final_decode_ms=Stats.of([p.get("final", "decode_ms") for p in per]),
            first_decode_ms=Stats.of([p.get("first", "decode_ms") for p in per]),
            decode_total_ms=Stats.of([p.decode_total_ms for p in per]),
            progressive=any(p.get("first", "status") not in (None, "FULL_RESOLUTION") for p in per),
            first_size=per[0].size("first"), first_bytes=Stats.of([p.get("first", "bytes") for p in per]),
            final_size=per[0].size("final"), final_status=per[0].get("final", "status"),
            bytes_moved=moved, bytes_all=Stats.of([r.bytes_total for r in runs]),
            frame_requests=Stats.of([r.frame_requests for r in runs]),
            bytes_ratio=(moved.median / lossless) if (lossless and moved) else None,
            click_to_request_ms=Stats.of([r.click_to_request_ms() for r in runs]),
            longest_task_ms=Stats.of([r.longest_task_ms for r in runs]),
            long_tasks_ms=Stats.of([r.long_tasks_ms for r in runs]),
            first_floor_ms=Stats.of([f for f, _ in ff]), first_floor_ratio=Stats.of([t / f for f, t in ff if f > 0]),
            final_floor_ms=Stats.of([f for f, _ in fl]), final_floor_ratio=Stats.of([t / f for f, t in fl if f > 0]),
            raw=[r.raw() for r in runs])

    def load_runs(self) -> list[LoadRun]:
        return [LoadRun.from_raw(r) for r in self.raw]


@dataclass(frozen=True)
class _StackTimes:
    """When every slice showed something, its own data, its lossless image (one run)."""

    all_something_ms: float | None
    all_own_ms: float | None
    all_lossless_ms: float | None
    slices_shown: int
    slices_lossless: int

    @classmethod
    def of(cls, run: LoadRun, count: int) -> _StackTimes:
        first: dict[int, float] = {}
        own: dict[int, float] = {}
        final: dict[int, float] = {}
        for e in run.log:
            clicked = run.t_click is not None and e.get("bench_now") is not None
            t = (e["bench_now"] - run.t_click) if clicked else e["t_ms"]
            first.setdefault(e["index"], t)
            if e["status"] not in _REPLICAS:
                own.setdefault(e["index"], t)
            if e.get("final"):
                final.setdefault(e["index"], t)

        def every(times: dict[int, float]) -> float | None:
            return max(times.values()) if len(times) == count else None

        return cls(every(first), every(own), every(final), len(first), len(final))


@dataclass
class StackRow:
    """The 20-slice stack under one preset and profile."""

    preset: str
    profile: str
    network: str
    slices: int
    all_something_ms: Stats | None = None
    all_own_ms: Stats | None = None
    all_lossless_ms: Stats | None = None
    bytes_moved: Stats | None = None
    lossless_bytes: int = 0
    frame_requests: Stats | None = None
    floor_lossless_ms: float | None = None
    raw: list[dict] = field(default_factory=list)

    @classmethod
    def from_runs(cls, preset: str, profile: str, runs: list[LoadRun], count: int, lossless: int) -> StackRow:
        per = [_StackTimes.of(r, count) for r in runs]
        return cls(
            preset=preset, profile=profile, network=PROFILE_LABELS[profile], slices=count,
            all_something_ms=Stats.of([p.all_something_ms for p in per]),
            all_own_ms=Stats.of([p.all_own_ms for p in per]),
            all_lossless_ms=Stats.of([p.all_lossless_ms for p in per]),
            bytes_moved=Stats.of([r.bytes_frames for r in runs]), lossless_bytes=lossless,
            frame_requests=Stats.of([r.frame_requests for r in runs]),
            floor_lossless_ms=floor_ms(profile, lossless, 0.0) if PROFILES[profile] else None,
            raw=[{"slices_shown": p.slices_shown, "slices_lossless": p.slices_lossless} | r.raw()
                 for p, r in zip(per, runs)])


@dataclass
class ColdStart:
    ready_noload_ms: Stats | None = None
    ready_ms: Stats | None = None
    first_image_ms: Stats | None = None
    python_imports_ms: Stats | None = None
    runtime_downloaded_ms: Stats | None = None
    python_start_ms: Stats | None = None
    warm_ready_ms: Stats | None = None
    raw: dict = field(default_factory=dict)


@dataclass
class Transfer:
    """Plain JavaScript fetch of one request under the emulation: the floor any page can reach."""

    ms: Stats | None
    bytes: int
    first_bytes_ms: Stats | None
    floor_ms: float


@dataclass
class Decode:
    native: dict[str, Stats | None]
    browser: dict[str, Stats | None] | None = None
    ratio: dict[str, float] | None = None


@dataclass
class Machine:
    python: str
    platform: str
    cpus: int | None
    loadavg_start: list[float] | None
    chromium: str | None = None
    loadavg_end: list[float] | None = None


@dataclass
class ImageInfo:
    name: str
    files: dict[str, int]  # frames path name -> size on disk of frame 1


@dataclass
class Target:
    target: str
    value: Any
    met: bool | None
    detail: str = ""


@dataclass
class BenchResult:
    engine: str
    runs: int
    profiles: dict[str, dict[str, float] | None]
    modes: list[str]
    started: str
    machine: Machine
    image: ImageInfo
    rows: list[ModeRow] = field(default_factory=list)
    stack: list[StackRow] = field(default_factory=list)
    cold_start: ColdStart | None = None
    transfer: dict[str, dict[str, Transfer]] | None = None
    decode: Decode | None = None
    elapsed_s: float | None = None
    command: str | None = None
    targets: list[Target] = field(default_factory=list)

    def row(self, mode: str, profile: str) -> ModeRow | None:
        return next((r for r in self.rows if r.mode == mode and r.profile == profile), None)

    def to_json(self) -> dict:
        """The ``benchmark.json`` shape: absent parts are left out, as before the types."""
        out = dataclasses.asdict(self)
        for key in ("cold_start", "transfer", "decode", "elapsed_s", "command"):
            if out[key] is None:
                del out[key]
        if out["machine"]["chromium"] is None:
            del out["machine"]["chromium"]
        if out.get("decode"):
            out["decode"] = {k: v for k, v in out["decode"].items() if v is not None}
        return out

    @classmethod
    def from_json(cls, data: dict) -> BenchResult:
        def stats_map(d: dict | None) -> dict | None:
            return None if d is None else {k: v and Stats(**v) for k, v in d.items()}

        dec = data.get("decode")
        transfer = data.get("transfer")
        return cls(
            engine=data["engine"], runs=data["runs"], profiles=data["profiles"], modes=data["modes"],
            started=data["started"], machine=_from_fields(Machine, data["machine"]),
            image=ImageInfo(**data["image"]),
            rows=[_from_fields(ModeRow, r) for r in data["rows"]],
            stack=[_from_fields(StackRow, s) for s in data.get("stack", [])],
            cold_start=_from_fields(ColdStart, data["cold_start"]) if data.get("cold_start") else None,
            transfer=None if transfer is None else {p: {n: _from_fields(Transfer, t) for n, t in reqs.items()}
                                                    for p, reqs in transfer.items()},
            decode=None if dec is None else Decode(stats_map(dec["native"]), stats_map(dec.get("browser")),
                                                   dec.get("ratio")),
            elapsed_s=data.get("elapsed_s"), command=data.get("command"),
            targets=[Target(**t) for t in data.get("targets", [])])
