// TEMPORARY stand-in for app/ui/render.mjs (the GPU helper's WebGL2 renderer, see
// helpers' CONTRACT.md) with the same interface, drawing on a 2D canvas. Deleted once render.mjs is
// in this checkout (boot.mjs imports render.mjs first and this only when that is missing).
//
// Grey levels equal app/render.py exactly: the same float32 arithmetic (Math.fround at each step,
// as numpy does with float32 arrays and Python scalars) and round-half-to-even.
const rint = (x) => {
  const r = Math.round(x);
  return (Math.abs(x % 1) === 0.5 && r % 2 !== 0) ? r - 1 : r;
};

function greyOf(value, view) {
  const f = Math.fround;
  const modality = f(f(value * f(view.slope ?? 1)) + f(view.intercept ?? 0));
  const c = view.center, w = view.width;
  let grey;
  if (w > 1) {
    grey = rint(f(f(f(f(modality - f(c - 0.5)) / f(w - 1)) + 0.5) * 255));
    grey = grey < 0 ? 0 : grey > 255 ? 255 : grey;
  } else {
    grey = modality > f(c - 0.5) ? 255 : 0;
  }
  return (!!view.invert !== !!view.monochrome1) ? 255 - grey : grey;
}

const ARRAYS = { uint8: Uint8Array, int8: Int8Array, uint16: Uint16Array, int16: Int16Array,
                 float32: Float32Array };

export function createRenderer(canvas, options = {}) {
  const images = new Map();  // key -> {values, rows, columns, samples, bytes}
  const scratch = document.createElement("canvas");
  let scratchKey = null;
  let cssW = canvas.clientWidth || canvas.width, cssH = canvas.clientHeight || canvas.height, dpr = 1;

  function rgbaOf(image, view) {
    const n = image.rows * image.columns;
    const out = new Uint32Array(n);
    const v = image.values;
    if (image.samples === 3) {
      const inv = view.invert ? 255 : 0;
      for (let i = 0, j = 0; i < n; i++, j += 3) {
        out[i] = 0xff000000 | ((v[j + 2] ^ inv) << 16) | ((v[j + 1] ^ inv) << 8) | (v[j] ^ inv);
      }
      return out;
    }
    if (image.values.BYTES_PER_ELEMENT <= 2 && !(v instanceof Float32Array)) {
      const lutSize = v.BYTES_PER_ELEMENT === 1 ? 256 : 65536;
      const signed = v instanceof Int8Array || v instanceof Int16Array;
      const lut = new Uint32Array(lutSize);
      for (let s = 0; s < lutSize; s++) {
        const value = signed && s >= lutSize / 2 ? s - lutSize : s;
        lut[s] = 0xff000000 | (greyOf(value, view) * 0x010101);
      }
      const raw = v.BYTES_PER_ELEMENT === 1 ? new Uint8Array(v.buffer, v.byteOffset, n)
        : new Uint16Array(v.buffer, v.byteOffset, n);
      for (let i = 0; i < n; i++) out[i] = lut[raw[i]];
      return out;
    }
    for (let i = 0; i < n; i++) out[i] = 0xff000000 | (greyOf(v[i], view) * 0x010101);
    return out;
  }

  const renderer = {
    kind: "2d",
    upload(key, image) {
      const Type = ARRAYS[image.dtype] || Uint8Array;
      images.set(key, { values: new Type(image.buffer), rows: image.rows, columns: image.columns,
                        samples: image.samples || 1, bytes: image.buffer.byteLength });
    },
    has(key) { return images.has(key); },
    drop(key) { images.delete(key); if (scratchKey && scratchKey.startsWith(key + "#")) scratchKey = null; },
    clear() {
      const ctx = canvas.getContext("2d");
      ctx.setTransform(1, 0, 0, 1, 0, 0);
      ctx.fillStyle = "#000";
      ctx.fillRect(0, 0, canvas.width, canvas.height);
    },
    resize(width, height, ratio) {
      cssW = width; cssH = height; dpr = ratio || 1;
      const w = Math.max(1, Math.round(width * dpr)), h = Math.max(1, Math.round(height * dpr));
      if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
    },
    draw(key, view) {
      const image = images.get(key);
      renderer.clear();
      if (!image) return;
      const lutKey = `${key}#${view.center},${view.width},${view.slope},${view.intercept},${!!view.invert},${!!view.monochrome1}`;
      if (lutKey !== scratchKey) {
        const rgba = rgbaOf(image, view);
        scratch.width = image.columns; scratch.height = image.rows;
        scratch.getContext("2d").putImageData(
          new ImageData(new Uint8ClampedArray(rgba.buffer), image.columns, image.rows), 0, 0);
        scratchKey = lutKey;
      }
      const width = canvas.width, height = canvas.height;
      const fullW = view.fullColumns || image.columns, fullH = (view.fullRows || image.rows) * (view.aspect || 1);
      const scale = Math.min(width / fullW, height / fullH) * (view.zoom || 1);
      const drawW = fullW * scale, drawH = fullH * scale;
      const x = (width - drawW) / 2 + (view.panX || 0) * dpr, y = (height - drawH) / 2 + (view.panY || 0) * dpr;
      const ctx = canvas.getContext("2d");
      ctx.imageSmoothingEnabled = view.smooth !== false;
      ctx.drawImage(scratch, 0, 0, image.columns, image.rows, x, y, drawW, drawH);
    },
    bytesHeld() { let n = 0; for (const im of images.values()) n += im.bytes; return n; },
    readPixels() {
      return canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
    },
  };
  return renderer;
}
