"""A bounded fuzz run: random mutations of real frame files and metadata through the readers and
the decode path, for a given number of seconds; prints what happened.

    python tools/fuzz.py [--seconds 30] [--seed 1] [--root static/dicomweb] [--save DIR]
    python tools/fuzz.py --converter [--seconds 30] [--seed 1] [--save DIR]

Each case takes one real file (a frame file: multipart or raw codestream; or a series metadata
document), mutates it (bit flips, truncation, insertions, deletions, 16/32-bit overwrites, splices
of another file) and runs it through what the engine runs it through, fed in random chunks:

- frames: MultipartReader -> CodestreamScanner -> the engine's whole-codestream check ->
  decode_frame (the image size taken from SIZ, as the engine does);
- metadata: dicomjson.loads -> study.stack_from_metadata.

Outcomes: ``ok``, ``rejected`` (a documented error: MultipartError, CodestreamError, DecodeError,
DiscoveryError, ValueError), ``silent`` (a mutated frame passed every check and decoded to other
pixels than the original: a wrong image nothing can detect without a checksum), ``crash`` (any
other exception) and ``slow`` (a case over --case-seconds). Crashes and slow cases are saved
under --save for replay. A case stuck inside a C decoder cannot be interrupted: after four times
--case-seconds the run exits (status 1, Python traceback on stderr); a decoder that segfaults ends
the run too (status -11/139). Either way --save/last-case.bin and last-case.json hold the input. Exit status 1 when there was a crash or a slow case.

``--converter`` fuzzes ``python -m app.convert`` instead: mutated DICOM Part 10 files (pydicom's
test files as seeds), a batch at a time, each batch in its own converter process so that a crash
is counted, not fatal; a crashing batch is run again file by file to name the input. Outcomes per
file: ``converted``, ``failed`` (reported by the converter, the run went on), ``skipped`` (not
DICOM), ``crash`` (the process died or no summary), ``slow`` (over the batch timeout), and
``escaped`` (a file written outside ``-o``). Exit status 1 on any crash, slow or escaped case.
"""

from __future__ import annotations

import argparse
import collections
import faulthandler
import json
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
if str(PROJECT) not in sys.path:
    sys.path.insert(0, str(PROJECT))

from app import dicomjson as dj  # noqa: E402
from app.codecs import DecodeError, PixelFormat, decode_frame  # noqa: E402
from app.readers.codestream import CodestreamError, CodestreamScanner, MainHeader  # noqa: E402
from app.readers.multipart import MultipartError, MultipartReader, PartData, PartHeaders, parse_media_type  # noqa: E402
from app.study import DiscoveryError, stack_from_metadata  # noqa: E402

EXPECTED = (MultipartError, CodestreamError, DecodeError, DiscoveryError, ValueError)
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"


class CaseTimeout(Exception):
    pass


def mutate(data: bytes, rng: random.Random, other: bytes) -> tuple[bytes, str]:
    b = bytearray(data)
    done = []
    for _ in range(rng.choice((1, 1, 1, 2, 3, 8))):
        if not b:
            break
        i = rng.randrange(len(b))
        kind = rng.choice(("flip", "flip", "truncate", "insert", "delete", "set16", "set32", "splice", "zero"))
        if kind == "flip":
            b[i] ^= 1 << rng.randrange(8)
        elif kind == "truncate":
            del b[i:]
        elif kind == "insert":
            b[i:i] = rng.randbytes(rng.choice((1, 2, 4, 64)))
        elif kind == "delete":
            del b[i : i + rng.choice((1, 2, 4, 64, 1024))]
        elif kind == "set16" and i + 2 <= len(b):
            b[i : i + 2] = rng.choice((b"\xff\xff", b"\x00\x00", b"\xff\xd9", b"\xff\x90", rng.randbytes(2)))
        elif kind == "set32" and i + 4 <= len(b):
            b[i : i + 4] = rng.choice((b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", rng.randbytes(4)))
        elif kind == "splice" and other:
            j = rng.randrange(len(other))
            b[i:] = other[j : j + rng.randrange(1, 4096)]
        elif kind == "zero":
            b[i : i + 256] = bytes(len(b[i : i + 256]))
        done.append(f"{kind}@{i}")
    return bytes(b), " ".join(done)


def chunks(data: bytes, rng: random.Random) -> list[bytes]:
    cuts = sorted(rng.randrange(len(data) + 1) for _ in range(rng.randrange(0, 6))) if data else []
    points = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(points, points[1:]) if b > a]


def frame_case(data: bytes, rng: random.Random, reference: dict) -> str:
    """The engine's path for one frame file; returns "ok" or "silent" (raises on rejection)."""
    pixels = frame_pixels(data, rng)
    original = reference.get("pixels")
    if original is not None and (original.shape != pixels.shape or (original != pixels).any()):
        return "silent"
    return "ok"


def frame_pixels(data: bytes, rng: random.Random):
    """Multipart reader -> codestream scanner -> whole-codestream check -> decode, as the engine."""
    is_multipart = data.lstrip(b"\r\n")[:2] == b"--"
    codestream = bytearray()
    syntax = HTJ2K_LOSSLESS
    if is_multipart:
        reader = MultipartReader(None)
        parts = 0
        for chunk in chunks(data, rng):
            for event in reader.feed(chunk):
                if isinstance(event, PartHeaders):
                    parts += 1
                    ts = parse_media_type(event.content_type)[1].get("transfer-syntax")
                    syntax = ts or syntax
                elif isinstance(event, PartData) and parts == 1:
                    codestream += event.data
        reader.close()
    else:
        codestream += data
    scanner = CodestreamScanner()
    header = None
    for chunk in chunks(bytes(codestream), rng):
        for event in scanner.feed(chunk):
            if isinstance(event, MainHeader):
                header = event
    scanner.close()
    if header is None:
        raise CodestreamError("no main header")
    if not scanner.complete:
        raise DecodeError("codestream truncated (the engine refuses it as final)")
    siz = header.siz
    fmt = PixelFormat(siz.height, siz.width, samples_per_pixel=siz.components,
                      bits_allocated=8 if siz.precision <= 8 else 16, bits_stored=siz.precision,
                      pixel_representation=int(siz.signed))
    return decode_frame(bytes(codestream), syntax, fmt)


def metadata_case(data: bytes, rng: random.Random, reference: dict) -> str:
    stack_from_metadata(dj.loads(data), "http://127.0.0.1/dicomweb/studies/1/series/2")
    return "ok"


def load_inputs(root: Path, limit: int) -> tuple[list[tuple[str, Path, bytes, dict]], list[bytes]]:
    frames = sorted(p for p in root.rglob("*") if p.is_file() and p.parent.name in ("frames", "lossy", "htj2kThumbnail")
                    and p.name.removesuffix(".mht").isdigit())
    metadata = sorted(p for p in root.rglob("metadata*") if p.is_file())
    cases = []
    for path in frames[:limit]:
        data = path.read_bytes()
        try:
            cases.append(("frame", path, data, {"pixels": frame_pixels(data, random.Random(0))}))
        except EXPECTED:
            continue  # a frame the fuzz path cannot read unmutated (another codec): not a seed
    for path in metadata[:limit]:
        cases.append(("metadata", path, path.read_bytes(), {}))
    return cases, [c[2] for c in cases]


# -- the converter ---------------------------------------------------------------------------------

CONVERTER_SEEDS = ("CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "SC_rgb_rle.dcm", "JPEG2000.dcm",
                   "image_dfl.dcm", "SC_rgb_jpeg_dcmtk.dcm", "JPEGLSNearLossless_16.dcm", "liver_1frame.dcm")
_FILE_LINE = re.compile(r"^(FAILED|skipped) (.+?): ")


def _convert_batch(files: list[Path], out: Path, timeout: float) -> tuple[str, dict[str, str]]:
    """Run the converter on ``files`` in a process of its own: ("done" | "crash" | "slow", outcome per name)."""
    command = [sys.executable, "-m", "app.convert", *map(str, files), "-o", str(out), "--alternates", "jls", "-q"]
    try:
        result = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "slow", {}
    if result.returncode not in (0, 1) or "files:" not in result.stdout:
        return "crash", {"_stderr": result.stderr[-400:], "_rc": str(result.returncode)}
    outcomes = {f.name: "converted" for f in files}
    for line in result.stderr.splitlines():
        match = _FILE_LINE.match(line)
        if match:
            outcomes[Path(match.group(2)).name] = "failed" if match.group(1) == "FAILED" else "skipped"
    return "done", outcomes


def _escaped(work: Path) -> list[str]:
    """Files the converter wrote anywhere but its input and output folders."""
    return [str(p) for p in work.rglob("*") if p.is_file() and not (p.is_relative_to(work / "in")
                                                                    or p.is_relative_to(work / "out"))]


def converter_main(args: argparse.Namespace) -> int:
    from pydicom.data import get_testdata_file

    seeds = [Path(get_testdata_file(name)) for name in CONVERTER_SEEDS]
    corpus = [p.read_bytes() for p in seeds if p is not None]
    rng = random.Random(args.seed)
    outcomes: collections.Counter[str] = collections.Counter()
    problems: list[dict] = []
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < args.seconds:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            (work / "in").mkdir()
            files, how = [], {}
            for i in range(args.batch):
                mutated, how[f"case{i}.dcm"] = mutate(rng.choice(corpus), rng, rng.choice(corpus))
                files.append(work / "in" / f"case{i}.dcm")
                files[-1].write_bytes(mutated)
            status, got = _convert_batch(files, work / "out", args.case_seconds * args.batch)
            if status != "done":  # find the input: each file again, alone
                got = {}
                for path in files:
                    alone, one = _convert_batch([path], work / "out1", args.case_seconds * 4)
                    got[path.name] = one.get(path.name, "converted") if alone == "done" else alone
                    if alone != "done":
                        problems.append({"mutation": how[path.name], "outcome": alone, **one})
                        if args.save:
                            args.save.mkdir(parents=True, exist_ok=True)
                            (args.save / f"convert-{alone}-{n}.dcm").write_bytes(path.read_bytes())
            for name, outcome in got.items():
                outcomes[outcome] += 1
            escaped = _escaped(work)
            if escaped:
                outcomes["escaped"] += len(escaped)
                problems.append({"outcome": "escaped", "files": escaped[:5]})
            n += len(files)
    report = {"seconds": round(time.perf_counter() - start, 1), "seed": args.seed, "mode": "converter",
              "seeds": [p.name for p in seeds], "cases": n, "outcomes": dict(outcomes), "problems": problems[:20]}
    print(json.dumps(report, indent=2))
    return 1 if outcomes["crash"] or outcomes["slow"] or outcomes["escaped"] else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="how long to run (default 30)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--root", type=Path, default=PROJECT / "static" / "dicomweb",
                        help="a static DICOMweb tree to take real files from")
    parser.add_argument("--limit", type=int, default=40, help="most files of each kind to use")
    parser.add_argument("--case-seconds", type=float, default=5.0, help="a case slower than this is reported")
    parser.add_argument("--save", type=Path, default=None, help="folder for crashing / slow inputs")
    parser.add_argument("--converter", action="store_true", help="fuzz the converter with mutated DICOM files")
    parser.add_argument("--batch", type=int, default=16, help="converter: files per converter process")
    args = parser.parse_args(argv)
    if args.converter:
        return converter_main(args)

    faulthandler.enable()  # a segfault in a decoder prints where it happened
    swallowed = collections.Counter()
    sys.unraisablehook = lambda u: swallowed.update([type(u.exc_value).__name__])  # OpenJPH's noise
    cases, corpus = load_inputs(args.root, args.limit)
    if not cases:
        print(f"no frame files or metadata under {args.root}", file=sys.stderr)
        return 2
    rng = random.Random(args.seed)
    outcomes: collections.Counter[str] = collections.Counter()
    by_kind: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    errors: collections.Counter[str] = collections.Counter()
    problems = []

    def expire(*_):
        raise CaseTimeout()

    signal.signal(signal.SIGALRM, expire)
    start = time.perf_counter()
    n = 0
    while time.perf_counter() - start < args.seconds:
        kind, path, data, ref = rng.choice(cases)
        mutated, how = mutate(data, rng, rng.choice(corpus))
        run = frame_case if kind == "frame" else metadata_case
        if args.save:  # a decoder stuck in C never returns to Python: leave the input behind first
            args.save.mkdir(parents=True, exist_ok=True)
            (args.save / "last-case.bin").write_bytes(mutated)
            (args.save / "last-case.json").write_text(json.dumps({"file": str(path), "mutation": how}))
        faulthandler.dump_traceback_later(args.case_seconds * 4, exit=True)
        signal.setitimer(signal.ITIMER_REAL, args.case_seconds)
        try:
            outcome = run(mutated, random.Random(n), ref)
        except EXPECTED as exc:
            outcome = "rejected"
            errors[f"{type(exc).__name__}: {str(exc)[:60]}"] += 1
        except CaseTimeout:
            outcome = "slow"
        except Exception as exc:  # noqa: BLE001 - that is what a fuzz run looks for
            outcome = "crash"
            problems.append({"file": str(path), "mutation": how, "error": f"{type(exc).__name__}: {exc}",
                             "trace": traceback.format_exc(limit=4)})
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            faulthandler.cancel_dump_traceback_later()
        if outcome in ("crash", "slow") and args.save:
            args.save.mkdir(parents=True, exist_ok=True)
            (args.save / f"{outcome}-{n}.bin").write_bytes(mutated)
        if outcome == "slow":
            problems.append({"file": str(path), "mutation": how, "error": "slow"})
        outcomes[outcome] += 1
        by_kind[kind][outcome] += 1
        n += 1

    report = {
        "seconds": round(time.perf_counter() - start, 1),
        "seed": args.seed,
        "inputs": {k: sum(1 for c in cases if c[0] == k) for k in ("frame", "metadata")},
        "cases": n,
        "outcomes": dict(outcomes),
        "by_kind": {k: dict(v) for k, v in by_kind.items()},
        "top_rejections": dict(errors.most_common(12)),
        "decoder_messages_swallowed": dict(swallowed),
        "problems": problems[:20],
    }
    print(json.dumps(report, indent=2))
    return 1 if outcomes["crash"] or outcomes["slow"] else 0


if __name__ == "__main__":
    sys.exit(main())
