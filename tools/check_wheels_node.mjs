#!/usr/bin/env node
// Check the Pyodide wheels without a browser (Node >= 20).
//
// Loads the npm `pyodide` package, installs our numpy wheel and the
// imagecodecs wasm wheel with pyodide.loadPackage("file:///..."), then runs
// Python that checks numpy basics and that imagecodecs' HTJ2K, JPEG-LS and
// JPEG 2000 codecs round-trip 16-bit images exactly.  Exit code 0 = all passed.
//
// Usage:
//   node tools/check_wheels_node.mjs [--pyodide DIR] [--numpy WHL] [--imagecodecs WHL]
// or the environment variables PYODIDE_DIR, NUMPY_WHEEL, IMAGECODECS_WHEEL.
// Defaults (relative to the repository root; .cache/ is git-ignored):
//   --pyodide      .cache/node/node_modules/pyodide
//                  (cd .cache/node && npm install pyodide@314.0.7)
//   --numpy        tools/wheels/numpy-2.4.6-cp314-cp314-pyemscripten_2026_0_wasm32.whl
//   --imagecodecs  .cache/wheels/imagecodecs-2026.10.10-cp312-abi3-pyemscripten_2026_0_wasm32.whl
//                  (pip download --no-deps --only-binary=:all: --platform
//                   pyemscripten_2026_0_wasm32 --python-version 3.14 --implementation cp
//                   --abi cp314 imagecodecs==2026.10.10 -d .cache/wheels)
// If tools/wheels/SHA256SUMS lists the numpy wheel, its sha256 is verified first.

import { createHash } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { basename, dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { parseArgs } from "node:util";

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const { values: opt } = parseArgs({
  options: {
    pyodide: { type: "string" },
    numpy: { type: "string" },
    imagecodecs: { type: "string" },
  },
});
const pyodideDir = resolve(
  opt.pyodide ?? process.env.PYODIDE_DIR ?? join(REPO, ".cache/node/node_modules/pyodide"),
);
const numpyWhl = resolve(
  opt.numpy ?? process.env.NUMPY_WHEEL ??
    join(REPO, "tools/wheels/numpy-2.4.6-cp314-cp314-pyemscripten_2026_0_wasm32.whl"),
);
const imagecodecsWhl = resolve(
  opt.imagecodecs ?? process.env.IMAGECODECS_WHEEL ??
    join(REPO, ".cache/wheels/imagecodecs-2026.10.10-cp312-abi3-pyemscripten_2026_0_wasm32.whl"),
);

function fail(msg) {
  console.error(`FAIL: ${msg}`);
  process.exit(1);
}
for (const [what, p] of [
  ["pyodide package (pyodide.mjs)", join(pyodideDir, "pyodide.mjs")],
  ["numpy wheel", numpyWhl],
  ["imagecodecs wheel", imagecodecsWhl],
]) {
  if (!existsSync(p)) fail(`${what} not found: ${p}`);
}

const sha256 = (p) => createHash("sha256").update(readFileSync(p)).digest("hex");
const sums = join(dirname(numpyWhl), "SHA256SUMS");
if (existsSync(sums)) {
  const line = readFileSync(sums, "utf8").split("\n")
    .find((l) => l.trim().endsWith(`  ${basename(numpyWhl)}`));
  if (line) {
    const want = line.split(/\s+/)[0];
    const got = sha256(numpyWhl);
    if (got !== want) fail(`sha256 of ${basename(numpyWhl)} is ${got}, SHA256SUMS says ${want}`);
    console.log(`sha256 ok: ${basename(numpyWhl)} ${got}`);
  }
}

const t0 = performance.now();
const { loadPyodide } = await import(pathToFileURL(join(pyodideDir, "pyodide.mjs")).href);
const pyodide = await loadPyodide({ indexURL: pyodideDir + "/", stdout: console.log, stderr: console.error });
const t1 = performance.now();
console.log(`pyodide ${pyodide.version} started in ${((t1 - t0) / 1000).toFixed(2)} s (${pyodideDir})`);

const loadErrors = [];
for (const whl of [numpyWhl, imagecodecsWhl]) {
  await pyodide.loadPackage(pathToFileURL(whl).href, {
    messageCallback: (m) => console.log(`  ${m}`),
    errorCallback: (m) => { loadErrors.push(m); console.error(`  ${m}`); },
  });
}
const t2 = performance.now();
if (loadErrors.length) fail(`loadPackage reported errors: ${loadErrors.join("; ")}`);
console.log(`wheels loaded in ${((t2 - t1) / 1000).toFixed(2)} s`);

const PY = String.raw`
import sys, time, traceback
results = []

def check(name, fn):
    t = time.perf_counter()
    try:
        detail = fn()
        ok = True
    except Exception as e:
        ok, detail = False, f"{type(e).__name__}: {e}"
        traceback.print_exc()
    ms = (time.perf_counter() - t) * 1000
    results.append(ok)
    print(f"{'PASS' if ok else 'FAIL'} {name} ({ms:.0f} ms){': ' + str(detail) if detail else ''}")

import numpy as np
print("python", sys.version.split()[0], "| platform", sys.platform, "| numpy", np.__version__, "from", np.__file__)

def numpy_basics():
    assert np.__version__ == "2.4.6", np.__version__
    assert np.dtype(np.intp).itemsize == 4          # wasm32
    assert np.dtype(np.longdouble).itemsize == 16
    assert np.finfo(np.longdouble).nmant == 112      # IEEE quad
    a = np.arange(12, dtype=np.float64).reshape(3, 4)
    assert a.sum() == 66 and a.T.shape == (4, 3)
    assert (a @ a.T)[2, 2] == 8**2 + 9**2 + 10**2 + 11**2
    assert np.array_equal(np.sort(np.array([3, 1, 2], np.uint16)), [1, 2, 3])
    assert np.einsum("ij,ij->", a, a) == (a * a).sum()
    u = np.array([65535], np.uint16)
    assert (u + np.uint16(1))[0] == 0                 # wraps
    assert np.allclose(np.sin(np.pi / 2), 1.0) and np.isnan(np.float32("nan"))
    assert str(np.datetime64("2026-01-01") + np.timedelta64(1, "D")) == "2026-01-02"
    assert np.strings.upper(np.array(["dicom"], dtype=np.dtypes.StringDType()))[0] == "DICOM"
    b = np.frombuffer(bytes(range(8)), dtype="<u2")
    assert b.tolist() == [256, 770, 1284, 1798] and b.byteswap().tolist()[0] == 1
    big = np.ones(1_000_000)                         # > 256 KiB: temporary elision path
    assert ((big + 1) * 2 - 3).sum() == 1_000_000
    return f"intp={np.dtype(np.intp).itemsize}B"

def numpy_linalg_fft_random():
    rng = np.random.default_rng(12345)
    m = rng.standard_normal((64, 64))
    x = rng.standard_normal(64)
    assert np.allclose(m @ np.linalg.solve(m, x), x)
    assert np.allclose(np.linalg.inv(m) @ m, np.eye(64), atol=1e-9)
    w = np.linalg.eigvalsh(m + m.T)
    assert np.all(np.diff(w) >= 0)
    s = rng.standard_normal(1000)
    assert np.allclose(np.fft.irfft(np.fft.rfft(s), 1000), s)
    assert np.random.default_rng(1).integers(0, 1000, 3).tolist() == np.random.default_rng(1).integers(0, 1000, 3).tolist()
    img = rng.integers(0, 4096, (256, 256), dtype=np.uint16)
    lo, hi = np.percentile(img, [1, 99])
    win = np.clip((img.astype(np.float32) - lo) / (hi - lo) * 255, 0, 255).astype(np.uint8)
    assert win.dtype == np.uint8 and win.max() == 255 and win.min() == 0
    return ""

check("numpy basics", numpy_basics)
check("numpy linalg/fft/random", numpy_linalg_fft_random)

import imagecodecs
print("imagecodecs", imagecodecs.__version__)

def images():
    y, x = np.mgrid[0:512, 0:512]
    grad12 = ((x * 4 + y * 4) // 2).astype(np.uint16)           # smooth, 0..4088
    noise = np.random.default_rng(0).integers(-3, 4, grad12.shape)
    grad12 = np.clip(grad12 + noise, 0, 4095).astype(np.uint16)
    assert grad12.max() < 4096
    full16 = ((x * 128 + y * 127) % 65536).astype(np.uint16)    # all 16 bits used
    full16[0, 0], full16[-1, -1] = 0, 65535
    return {"gradient 512x512 12-bit": (grad12, 12), "ramp 512x512 16-bit": (full16, 16)}

codecs = {
    "htj2k": (lambda a, b: imagecodecs.htj2k_encode(a, reversible=True, bitspersample=b),
              imagecodecs.htj2k_decode),
    "jpegls": (lambda a, b: imagecodecs.jpegls_encode(a, level=0, bitspersample=b),
               imagecodecs.jpegls_decode),
    "jpeg2k": (lambda a, b: imagecodecs.jpeg2k_encode(a, reversible=True, bitspersample=b),
               imagecodecs.jpeg2k_decode),
}

for cname, (enc, dec) in codecs.items():
    for iname, (img, bits) in images().items():
        def roundtrip(enc=enc, dec=dec, img=img, bits=bits):
            data = bytes(enc(img, bits))
            out = dec(data)
            assert out.dtype == np.uint16, out.dtype
            assert out.shape == img.shape, out.shape
            if not np.array_equal(out, img):
                diff = np.abs(out.astype(np.int32) - img)
                raise AssertionError(f"not exact: max |diff| {diff.max()}, {np.count_nonzero(diff)} pixels differ")
            return f"{len(data)} bytes, ratio {img.nbytes / len(data):.2f}"
        check(f"{cname} round-trip {iname}", roundtrip)

n_fail = results.count(False)
print(f"{len(results) - n_fail}/{len(results)} checks passed")
n_fail
`;

let nFail;
try {
  nFail = await pyodide.runPythonAsync(PY);
} catch (e) {
  fail(`python raised: ${e}`);
}
console.log(`total ${((performance.now() - t0) / 1000).toFixed(2)} s`);
if (nFail !== 0) fail(`${nFail} check(s) failed`);
console.log("OK");
