"""Large test stacks derived from the demo's real MR images, converted with every alternate.

    python tools/large_stacks.py [--only ct174,series1000] [--out static/dicomweb-large] [--force]

The demo downloads a real 20-slice 256x256 brain MR (``tools/demo_data.py``). From its volume
(slices ordered along the slice normal) this makes, with numpy only:

- ``ct174``: 174 slices 512x512, CT-like: the volume upsampled 2x in plane (bilinear) and
  resampled to 174 positions along the normal (linear), stored as 12-bit values with
  RescaleIntercept -1024 (air at -1024 HU), plus per-slice noise so no two slices are equal;
- ``series1000``: 1000 slices 256x256 at 0.5 mm, the volume swept back and forth along the normal;
- ``mr200``: 200 slices 256x256, MR-like: the volume resampled to 200 positions along the normal,
  16-bit magnitude values (x60) with noise of 1000 (about 1.6 % of the brightest tissue), so its
  lossless HTJ2K is ~22 MB, the size of the issue's 200-slice stack (``--peer`` stack rows).

Each slice is a new CT (MR Image Storage for ``mr200``) instance with real geometry: the source's
ImageOrientationPatient, ImagePositionPatient stepped along the normal, PixelSpacing,
SliceThickness / SpacingBetweenSlices, and new UUID-derived UIDs (``2.25.<uuid>``, stable across
runs). The DICOM files go to ``.cache/large/<name>/``, the converted tree (all alternates, on all
cores) to ``static/dicomweb-large`` (serve it with ``python serve.py --root static/dicomweb-large``).
A stamp per stack records the inputs and the converter version, so a second run returns at once.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import shutil
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy

if TYPE_CHECKING:
    import pydicom

PROJECT_ROOT = Path(__file__).resolve().parent.parent
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

GENERATOR_VERSION = "1"
UID_NAMESPACE = uuid.UUID("5d3b6c1e-7a0f-4c49-9d8e-1b2f3a4c5d6e")
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"


@dataclass(frozen=True)
class StackSpec:
    """What to derive: slice count and size, spacing along the normal, how the volume is swept."""

    name: str
    description: str
    slices: int
    size: int  # rows = columns
    spacing_mm: float | None  # None: the source's extent divided evenly
    sweep: bool  # back and forth through the source volume (more slices than it has)
    seed: int
    modality: str = "CT"  # MR: MR Image Storage, magnitude values, no rescale to HU
    gain: float = 2.0  # source values times this...
    noise: float = 6.0  # ...plus Gaussian noise of this sigma (stored values)
    bits_stored: int = 12


# fields added after the first stamps: written to a stamp only when not their default, so the
# stacks generated before them stay cached
_LATER_FIELDS = {"modality": "CT", "gain": 2.0, "noise": 6.0, "bits_stored": 12}

SPECS = {
    spec.name: spec for spec in (
        StackSpec("ct174", "CT-like 174 x 512x512", 174, 512, None, False, 174),
        StackSpec("series1000", "CT-like 1000 x 256x256", 1000, 256, 0.5, True, 1000),
        StackSpec("mr200", "MR-like 200 x 256x256", 200, 256, None, False, 200, "MR", 60.0, 1000.0, 16),
    )
}


@dataclass(frozen=True)
class LargeStack:
    """One generated, converted stack: where its DICOM files and its tree are, and its URL path."""

    name: str
    description: str
    slices: int
    rows: int
    columns: int
    study_uid: str
    series_uid: str
    source_dir: Path  # the generated DICOM files
    tree: Path  # the static DICOMweb root that holds it
    url: str  # relative to the server: /dicomweb/studies/{study}/series/{series}

    def source_files(self) -> list[Path]:
        return sorted(self.source_dir.glob("*.dcm"))


def log(message: str) -> None:
    print(f"large_stacks: {message}", file=sys.stderr, flush=True)


def stable_uid(*parts: object) -> str:
    """A valid UUID-derived DICOM UID (PS3.5 B.2), the same for the same parts."""
    return f"2.25.{uuid.uuid5(UID_NAMESPACE, '/'.join(map(str, parts))).int}"


@dataclass(frozen=True)
class SourceVolume:
    """The demo MR as a volume: slices ordered along the normal, and its geometry."""

    voxels: numpy.ndarray  # (slices, rows, columns) float32
    origin: numpy.ndarray  # ImagePositionPatient of slice 0
    orientation: tuple[float, ...]
    normal: numpy.ndarray
    step_mm: float  # distance between source slices
    pixel_spacing: tuple[float, float]
    patient: dict


def load_source(project_root: Path = PROJECT_ROOT) -> SourceVolume:
    """The demo MR slices (downloaded by tools/demo_data.py) as one volume, cached as .npz."""
    cache = project_root / ".cache" / "large" / "source-mr.npz"
    if cache.exists():
        with numpy.load(cache, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            return SourceVolume(data["voxels"], data["origin"], tuple(meta["orientation"]), data["normal"],
                                meta["step_mm"], tuple(meta["pixel_spacing"]), meta["patient"])
    from tools.demo_data import SOURCES, download, extract

    source = next(s for s in SOURCES if s.key == "mr-stack")
    archive = download(source, project_root / ".cache" / "downloads")
    if archive is None:
        raise RuntimeError("the demo MR stack could not be downloaded")
    volume = _read_volume(extract(source, archive, project_root / ".cache" / "demo" / source.key))
    cache.parent.mkdir(parents=True, exist_ok=True)
    meta = {"orientation": volume.orientation, "step_mm": volume.step_mm,
            "pixel_spacing": volume.pixel_spacing, "patient": volume.patient}
    temporary = cache.with_name(cache.name + ".part.npz")
    numpy.savez(temporary, voxels=volume.voxels, origin=volume.origin, normal=volume.normal,
                meta=json.dumps(meta))
    temporary.replace(cache)
    return volume


def _read_volume(files: Sequence[Path]) -> SourceVolume:
    import pydicom

    slices = [pydicom.dcmread(path) for path in files]
    orientation = tuple(float(v) for v in slices[0].ImageOrientationPatient)
    normal = numpy.cross(orientation[:3], orientation[3:])
    slices.sort(key=lambda ds: float(numpy.dot(normal, [float(v) for v in ds.ImagePositionPatient])))
    positions = numpy.array([[float(v) for v in ds.ImagePositionPatient] for ds in slices])
    steps = numpy.diff(positions @ normal)
    first = slices[0]
    patient = {key: str(first.get(key, "")) for key in ("PatientName", "PatientID", "PatientBirthDate",
                                                        "PatientSex")}
    return SourceVolume(numpy.stack([ds.pixel_array.astype(numpy.float32) for ds in slices]), positions[0],
                        orientation, normal, float(numpy.median(steps)),
                        tuple(float(v) for v in first.PixelSpacing), patient)


def _bilinear_2x(image: numpy.ndarray) -> numpy.ndarray:
    """Twice the size per side, bilinear, pixel centres aligned (edges clamped)."""
    def axis_weights(n: int) -> tuple[numpy.ndarray, numpy.ndarray, numpy.ndarray]:
        x = numpy.clip((numpy.arange(2 * n) + 0.5) / 2 - 0.5, 0, n - 1)
        low = numpy.floor(x).astype(numpy.intp)
        return low, numpy.minimum(low + 1, n - 1), (x - low).astype(numpy.float32)

    r0, r1, wr = axis_weights(image.shape[0])
    c0, c1, wc = axis_weights(image.shape[1])
    rows = image[r0] * (1 - wr)[:, None] + image[r1] * wr[:, None]
    return rows[:, c0] * (1 - wc) + rows[:, c1] * wc


def _resized(image: numpy.ndarray, size: int) -> numpy.ndarray:
    """`image` at size x size: doubled (bilinear) or halved (2x2 means) until it fits (powers of 2)."""
    while image.shape[0] < size:
        image = _bilinear_2x(image)
    while image.shape[0] > size:
        rows, columns = image.shape
        image = image.reshape(rows // 2, 2, columns // 2, 2).mean(axis=(1, 3))
    if image.shape != (size, size):
        raise ValueError(f"size {size} is not the source's size times a power of 2")
    return image


def _source_position(spec: StackSpec, volume: SourceVolume, index: int) -> float:
    """Where slice `index` samples the source volume, in source slice units (0 .. n-1)."""
    last = volume.voxels.shape[0] - 1
    if not spec.sweep:
        return index * last / max(1, spec.slices - 1)
    travelled = index * spec.spacing_mm / volume.step_mm  # back and forth: a triangle wave
    phase = travelled % (2 * last)
    return phase if phase <= last else 2 * last - phase


def _slice_pixels(spec: StackSpec, volume: SourceVolume, index: int, rng: numpy.random.Generator) -> numpy.ndarray:
    position = _source_position(spec, volume, index)
    low = int(numpy.floor(position))
    high = min(low + 1, volume.voxels.shape[0] - 1)
    weight = numpy.float32(position - low)
    image = volume.voxels[low] * (1 - weight) + volume.voxels[high] * weight
    image = _resized(image, spec.size)
    image = image * spec.gain + rng.normal(0.0, spec.noise, image.shape).astype(numpy.float32)
    if spec.modality == "MR":
        image = numpy.abs(image)  # a magnitude image: noise folds up at the background (Rician-like)
    return numpy.clip(numpy.rint(image), 0, (1 << spec.bits_stored) - 1).astype(numpy.uint16)


def _dataset(spec: StackSpec, volume: SourceVolume, index: int, pixels: numpy.ndarray, spacing: float):
    import pydicom
    from pydicom.dataset import FileMetaDataset

    ds = pydicom.Dataset()
    sop = stable_uid(spec.name, GENERATOR_VERSION, "instance", index)
    meta = FileMetaDataset()
    sop_class = MR_IMAGE_STORAGE if spec.modality == "MR" else CT_IMAGE_STORAGE
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = EXPLICIT_VR_LITTLE_ENDIAN
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop
    ds.StudyInstanceUID = stable_uid(spec.name, GENERATOR_VERSION, "study")
    ds.SeriesInstanceUID = stable_uid(spec.name, GENERATOR_VERSION, "series")
    ds.FrameOfReferenceUID = stable_uid(spec.name, GENERATOR_VERSION, "frame-of-reference")
    ds.Modality, ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = spec.modality, "1", 1, index + 1
    ds.StudyDate = ds.SeriesDate = "20260101"
    ds.StudyTime = ds.SeriesTime = "120000"
    ds.AccessionNumber = ""
    ds.StudyDescription = "Large stack (derived from the demo MR)"
    ds.SeriesDescription = spec.description
    for key, value in volume.patient.items():
        setattr(ds, key, value)
    in_plane = volume.pixel_spacing[0] * volume.voxels.shape[1] / spec.size
    ds.ImageOrientationPatient = [round(v, 6) for v in volume.orientation]
    ds.ImagePositionPatient = [round(float(v), 4) for v in volume.origin + volume.normal * spacing * index]
    ds.SliceLocation = round(float(numpy.dot(volume.origin, volume.normal) + spacing * index), 4)
    ds.PixelSpacing = [round(in_plane, 6), round(in_plane, 6)]
    ds.SliceThickness = ds.SpacingBetweenSlices = round(spacing, 4)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, spec.bits_stored, spec.bits_stored - 1
    ds.PixelRepresentation = 0
    if spec.modality == "MR":  # no Modality LUT: the stored values are the image's
        ds.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
        ds.ScanningSequence, ds.SequenceVariant, ds.MRAcquisitionType = "SE", "NONE", "2D"
        ds.WindowCenter, ds.WindowWidth = round(spec.gain * 400), round(spec.gain * 800)
    else:
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.WindowCenter, ds.WindowWidth = 0, 1600
    ds.PixelData = pixels.tobytes()
    return ds


def generate(spec: StackSpec, indices: Sequence[int] | None = None,
             project_root: Path = PROJECT_ROOT) -> Iterator[tuple[int, pydicom.Dataset]]:
    """The slices of `spec` (all, or the given indices in order) as datasets; the noise is drawn
    slice by slice from one seed, so slice i is the same whichever slices are asked for."""
    volume = load_source(project_root)
    spacing = spec.spacing_mm or volume.step_mm * (volume.voxels.shape[0] - 1) / max(1, spec.slices - 1)
    wanted = set(range(spec.slices) if indices is None else indices)
    rng = numpy.random.default_rng(spec.seed)
    for index in range(max(wanted, default=-1) + 1):
        pixels = _slice_pixels(spec, volume, index, rng)
        if index in wanted:
            yield index, _dataset(spec, volume, index, pixels, spacing)


def write_series(spec: StackSpec, dest: Path, project_root: Path = PROJECT_ROOT) -> list[Path]:
    """The DICOM files of `spec` in `dest` (written again from scratch)."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    paths = []
    for index, ds in generate(spec, project_root=project_root):
        path = dest / f"{index + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_archive(dest: Path, series: int = 8, slices: int = 22, size: int = 512,
                  project_root: Path = PROJECT_ROOT) -> list[Path]:
    """Several CT-like series (their own study each) under `dest`: an archive for the converter's
    throughput, where one task per series (Dask) can use every worker. Returns the folders."""
    folders = []
    for number in range(series):
        folder = dest / f"series-{number + 1:02d}"
        write_series(StackSpec(f"archive-{number + 1}-{slices}x{size}", f"archive series {number + 1}", slices,
                               size, 1.25, True, number), folder, project_root)
        folders.append(folder)
    return folders


def _stack(spec: StackSpec, source_dir: Path, tree: Path) -> LargeStack:
    study = stable_uid(spec.name, GENERATOR_VERSION, "study")
    series = stable_uid(spec.name, GENERATOR_VERSION, "series")
    return LargeStack(spec.name, spec.description, spec.slices, spec.size, spec.size, study, series,
                      source_dir, tree, f"/dicomweb/studies/{study}/series/{series}")


def _stamp(spec: StackSpec) -> dict:
    from app.convert import CONVERTER_VERSION
    from app.tree import FRAME_SUFFIX

    fields = {k: v for k, v in asdict(spec).items() if k not in _LATER_FIELDS or v != _LATER_FIELDS[k]}
    return {"generator": GENERATOR_VERSION, "converterVersion": CONVERTER_VERSION, "frameSuffix": FRAME_SUFFIX,
            "spec": fields}


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """One set-up at a time per tree (a test and the bench may ask together)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_large_stacks(names: Sequence[str] = tuple(SPECS), *, project_root: Path = PROJECT_ROOT,
                        out: Path | None = None, workers: int | None = None,
                        force: bool = False) -> dict[str, LargeStack]:
    """Generate and convert the named stacks once (cached); returns them by name."""
    project_root = Path(project_root)
    out = Path(out) if out is not None else project_root / "static" / "dicomweb-large"
    stacks = {}
    with _locked(out):
        for name in names:
            spec = SPECS[name]
            stack = _stack(spec, project_root / ".cache" / "large" / name, out)
            stamp_path = out / f".{name}-stamp.json"
            series_dir = out / stack.url.removeprefix("/dicomweb/")
            fresh = not force and stamp_path.exists() and (series_dir / "metadata").exists()
            if not (fresh and json.loads(stamp_path.read_text()) == _stamp(spec)):
                _build(spec, stack, stamp_path, project_root, workers)
            stacks[name] = stack
        from app.convert import write_missing_stack_indexes

        write_missing_stack_indexes(out)  # trees converted before stack.json existed
    return stacks


def _build(spec: StackSpec, stack: LargeStack, stamp_path: Path, project_root: Path, workers: int | None) -> None:
    from app.convert_pool import convert_parallel

    started = time.perf_counter()
    stamp_path.unlink(missing_ok=True)
    files = write_series(spec, stack.source_dir, project_root)
    log(f"{spec.name}: {len(files)} DICOM files in {time.perf_counter() - started:.1f} s; converting")
    series_dir = stack.tree / stack.url.removeprefix("/dicomweb/")
    if series_dir.exists():
        shutil.rmtree(series_dir)
    summary = convert_parallel([stack.source_dir], stack.tree, workers=workers, quiet=True)
    if summary.failures or summary.files_converted != spec.slices:
        raise RuntimeError(f"converting {spec.name} failed: {summary.failures[:3]}")
    stamp_path.write_text(json.dumps(_stamp(spec), indent=2) + "\n")
    log(f"{spec.name}: ready in {time.perf_counter() - started:.1f} s ({summary.frames} frames)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(SPECS), help=f"comma list of {', '.join(SPECS)}")
    parser.add_argument("--out", type=Path, help="tree root (default <project>/static/dicomweb-large)")
    parser.add_argument("--workers", type=int, help="converter processes (default: the cores)")
    parser.add_argument("--force", action="store_true", help="generate and convert again")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in names if name not in SPECS]
    if unknown:
        parser.error(f"unknown stack {unknown}; choose from {', '.join(SPECS)}")
    try:
        stacks = ensure_large_stacks(names, out=args.out, workers=args.workers, force=args.force)
    except RuntimeError as exc:
        log(f"error: {exc}")
        return 1
    for stack in stacks.values():
        print(f"{stack.name}: {stack.slices} x {stack.rows}x{stack.columns} {stack.url} (tree {stack.tree})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
