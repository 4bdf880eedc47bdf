// One image on a canvas: WebGL2 textures with a lookup table, or a 2D-canvas fallback.
//
// Window/level, invert, MONOCHROME1 and rescale become a grey-level table built here per change
// (256 or 65536 entries, float32 arithmetic step for step as app/render.py does it, so both paths
// give the CPU reference's grey levels exactly); zoom and pan are a destination rectangle. A W/L
// drag therefore costs one table build and one draw, never Python or numpy.
// No dependencies: the viewer's main thread imports this file as it is.
//
// Use (the contract in helpers/CONTRACT.md): createRenderer(canvas, {mode}) -> renderer with
// upload(key, image), has, drop, draw(key, view), clear, resize(cssW, cssH, dpr), bytesHeld,
// readPixels. WebGL2 keeps one integer texture per key (R16UI/R8UI, R32F, RGB8UI) and samples a
// 256x256 R8 grey table; the 2D path keeps the typed array and, for the last few images drawn,
// their RGBA for the current table, so zoom and pan only redraw. After a lost WebGL context
// has(key) is false for every key: upload again. Smooth drawing interpolates when magnifying.

const BYTES = { uint8: 1, int8: 1, uint16: 2, int16: 2, float32: 4 };
const LUT_SIDE = 256; // the 65536-entry table as a 256x256 texture: index = row * 256 + column
const BACKGROUND = [0, 0, 0];

// ---- shared rules: the DICOM linear VOI function and the image's place on the canvas ----

const f32 = Math.fround;

function roundHalfEven(x) {
  const r = Math.round(x);
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** Window and rescale as float32 constants, exactly the operands app/render.py's numpy sees. */
function windowTerms(view) {
  const center = Number(view.center);
  const width = Number(view.width) >= 1 ? Number(view.width) : 1; // render.Window's clamp
  const slope = view.slope === undefined ? 1 : Number(view.slope);
  const intercept = view.intercept === undefined ? 0 : Number(view.intercept);
  return {
    slope: f32(slope), intercept: f32(intercept),
    low: f32(center - 0.5), span: f32(width - 1), steep: !(width > 1),
    flip: Boolean(view.invert) !== Boolean(view.monochrome1),
  };
}

/** Grey level 0..255 of one stored value (PS3.3 C.11.2.1.2, then invert), float32 throughout. */
function greyOf(stored, t) {
  const modality = f32(f32(f32(stored) * t.slope) + t.intercept);
  let grey;
  if (t.steep) {
    grey = modality > t.low ? 255 : 0;
  } else {
    const scaled = f32(f32(f32(f32(modality - t.low) / t.span) + 0.5) * 255);
    grey = roundHalfEven(scaled);
    grey = grey > 0 ? (grey < 255 ? grey : 255) : 0; // NaN (float32 data only) becomes 0
  }
  return t.flip ? 255 - grey : grey;
}

/** Grey level per raw 8- or 16-bit pattern (signed types read as two's complement).
 * The VOI function is monotonic in the stored value (every float32 step is), so only the values
 * between the window's ends are computed; below and above them the table is filled. */
export function greyTable(dtype, view) {
  const t = windowTerms(view);
  const size = BYTES[dtype] === 1 ? 256 : 65536;
  const signed = dtype === "int8" || dtype === "int16";
  const lowest = signed ? -size / 2 : 0;
  const byValue = new Uint8Array(size); // byValue[v - lowest]
  const grey = (v) => greyOf(v, t);
  const first = grey(lowest);
  const last = grey(lowest + size - 1);
  const start = firstChange(grey, lowest, lowest + size - 1, first, 1);
  const end = firstChange(grey, lowest + size - 1, lowest, last, -1);
  byValue.fill(first, 0, start - lowest);
  for (let v = start; v <= end; v++) byValue[v - lowest] = grey(v);
  byValue.fill(last, Math.max(end + 1, start) - lowest);
  if (!signed) return byValue;
  const table = new Uint8Array(size);
  table.set(byValue.subarray(size / 2), 0); // 0 .. max at patterns 0 ..
  table.set(byValue.subarray(0, size / 2), size / 2); // min .. -1 at patterns size/2 ..
  return table;
}

/** Nearest value to ``from`` (walking by ``step`` towards ``to``) whose grey is not ``grey0``;
 * past ``to`` when there is none. Binary search: the grey level is monotonic in the value. */
function firstChange(grey, from, to, grey0, step) {
  let inside = from - step; // last value known to give grey0 (from gives it)
  let outside = to + step; // first value known not to (or past the end)
  while ((outside - inside) * step > 1) {
    const middle = inside + step * Math.floor(((outside - inside) * step) / 2);
    if (grey(middle) === grey0) inside = middle; else outside = middle;
  }
  return outside;
}

function tableKey(dtype, view) {
  const t = windowTerms(view);
  return [BYTES[dtype], dtype[0], t.slope, t.intercept, t.low, t.span, t.steep, t.flip].join("|");
}

/** Smooth drawing interpolates only where an image texel covers more than a device pixel. */
function magnifies(view, dest, image) {
  return view.smooth !== false && (dest.width > image.columns || dest.height > image.rows);
}

/** Destination rectangle in device pixels (top-left origin) of the FINAL image's geometry. */
export function placement(view, image, canvasWidth, canvasHeight, dpr) {
  const fullColumns = view.fullColumns || image.columns;
  const fullRows = view.fullRows || image.rows;
  const displayHeight = fullRows * (view.aspect > 0 ? view.aspect : 1);
  const fit = Math.min(canvasWidth / fullColumns, canvasHeight / displayHeight);
  const scale = fit * (view.zoom > 0 ? view.zoom : 1);
  const width = fullColumns * scale;
  const height = displayHeight * scale;
  return {
    x: (canvasWidth - width) / 2 + (Number(view.panX) || 0) * dpr,
    y: (canvasHeight - height) / 2 + (Number(view.panY) || 0) * dpr,
    width, height,
  };
}

function checkImage(image) {
  const { rows, columns, dtype } = image;
  const samples = image.samples || 1;
  if (!(dtype in BYTES)) throw new Error(`render: unknown dtype ${dtype}`);
  if (samples !== 1 && !(samples === 3 && dtype === "uint8")) {
    throw new Error(`render: ${samples} samples of ${dtype} (colour must be 3 x uint8)`);
  }
  if (!(rows > 0 && columns > 0)) throw new Error(`render: bad size ${rows}x${columns}`);
  const bytes = rows * columns * samples * BYTES[dtype];
  const buffer = image.buffer;
  const length = buffer && buffer.byteLength;
  if (!(length >= bytes)) throw new Error(`render: ${length} bytes for ${rows}x${columns}x${samples} ${dtype}`);
  return { rows, columns, dtype, samples, bytes };
}

function typedView(buffer, dtype, count, offset = 0) {
  const Type = { uint8: Uint8Array, int8: Uint8Array, uint16: Uint16Array, int16: Uint16Array,
                 float32: Float32Array }[dtype];
  return new Type(buffer, offset, count);
}

function rawView(image, info) {
  const buffer = ArrayBuffer.isView(image.buffer) ? image.buffer.buffer : image.buffer;
  const offset = ArrayBuffer.isView(image.buffer) ? image.buffer.byteOffset : 0;
  return typedView(buffer, info.dtype, info.rows * info.columns * info.samples, offset);
}

// ---- WebGL2 ----

// The image's destination rectangle only (the rest of the canvas is cleared, not shaded), with
// texel coordinates interpolated across it: 0 at one edge, the image's size at the other.
const VERTEX = `#version 300 es
uniform vec4 u_dest;      // x, y, width, height in device px, top-left origin
uniform vec2 u_canvas;
uniform ivec2 u_size;     // texels of the uploaded (maybe reduced) image
out vec2 v_texel;
void main() {
  vec2 corner = vec2(float(gl_VertexID & 1), float((gl_VertexID >> 1) & 1));
  v_texel = corner * vec2(u_size);
  vec2 clip = (u_dest.xy + corner * u_dest.zw) / u_canvas * 2.0 - 1.0;
  gl_Position = vec4(clip.x, -clip.y, 0.0, 1.0);
}`;

// colourAt(p) per kind of image; the rest (placement, nearest/bilinear) is shared.
const COLOUR_AT = {
  table: `uniform highp usampler2D u_image; uniform highp sampler2D u_lut;
    vec3 colourAt(ivec2 p) {
      uint v = texelFetch(u_image, p, 0).r;
      return vec3(texelFetch(u_lut, ivec2(int(v & 255u), int(v >> 8u)), 0).r);
    }`,
  float: `uniform highp sampler2D u_image; uniform vec4 u_window; uniform bool u_steep;
    // u_window: slope, intercept, center - 0.5, width - 1
    vec3 colourAt(ivec2 p) {
      float m = texelFetch(u_image, p, 0).r * u_window.x + u_window.y;
      float g = u_steep ? (m > u_window.z ? 255.0 : 0.0)
                        : clamp(roundEven(((m - u_window.z) / u_window.w + 0.5) * 255.0), 0.0, 255.0);
      return vec3(u_flip ? 255.0 - g : g) / 255.0;
    }`,
  rgb: `uniform highp usampler2D u_image;
    vec3 colourAt(ivec2 p) {
      vec3 c = vec3(texelFetch(u_image, p, 0).rgb);
      return (u_flip ? 255.0 - c : c) / 255.0;
    }`,
};

// Nearest texel, or bilinear between the grey levels of the four nearest (magnification only:
// on SwiftShader four lookups cost twice one, and minifying blurs nothing useful in).
const SAMPLE = {
  nearest: `outColour = vec4(colourAt(clamp(ivec2(v_texel), ivec2(0), u_size - 1)), 1.0);`,
  linear: `vec2 s = v_texel - 0.5;
  vec2 f = fract(s);
  ivec2 p0 = clamp(ivec2(floor(s)), ivec2(0), u_size - 1);
  ivec2 p1 = clamp(ivec2(floor(s)) + 1, ivec2(0), u_size - 1);
  vec3 top = mix(colourAt(p0), colourAt(ivec2(p1.x, p0.y)), f.x);
  vec3 bottom = mix(colourAt(ivec2(p0.x, p1.y)), colourAt(p1), f.x);
  outColour = vec4(mix(top, bottom, f.y), 1.0);`,
};

function fragmentSource(kind, filter) {
  return `#version 300 es
precision highp float; precision highp int;
uniform ivec2 u_size;
uniform bool u_flip;
in vec2 v_texel;
out vec4 outColour;
${COLOUR_AT[kind]}
void main() {
  ${SAMPLE[filter]}
}`;
}

function compile(gl, type, source) {
  const shader = gl.createShader(type);
  gl.shaderSource(shader, source);
  gl.compileShader(shader);
  if (!gl.getShaderParameter(shader, gl.COMPILE_STATUS)) {
    throw new Error(`render: shader: ${gl.getShaderInfoLog(shader)}`);
  }
  return shader;
}

function link(gl, kind, filter) {
  const program = gl.createProgram();
  gl.attachShader(program, compile(gl, gl.VERTEX_SHADER, VERTEX));
  gl.attachShader(program, compile(gl, gl.FRAGMENT_SHADER, fragmentSource(kind, filter)));
  gl.linkProgram(program);
  if (!gl.getProgramParameter(program, gl.LINK_STATUS)) {
    throw new Error(`render: program: ${gl.getProgramInfoLog(program)}`);
  }
  const uniforms = {};
  const count = gl.getProgramParameter(program, gl.ACTIVE_UNIFORMS);
  for (let i = 0; i < count; i++) {
    const name = gl.getActiveUniform(program, i).name;
    uniforms[name] = gl.getUniformLocation(program, name);
  }
  return { program, uniforms };
}

// internal format, format, type and shader kind per uploaded image
function textureFormat(gl, info) {
  if (info.samples === 3) return [gl.RGB8UI, gl.RGB_INTEGER, gl.UNSIGNED_BYTE, "rgb"];
  if (info.dtype === "float32") return [gl.R32F, gl.RED, gl.FLOAT, "float"];
  if (BYTES[info.dtype] === 1) return [gl.R8UI, gl.RED_INTEGER, gl.UNSIGNED_BYTE, "table"];
  return [gl.R16UI, gl.RED_INTEGER, gl.UNSIGNED_SHORT, "table"];
}

class GlRenderer {
  constructor(canvas, gl) {
    this.kind = "webgl2";
    this.canvas = canvas;
    this.gl = gl;
    this.dpr = 1;
    this.images = new Map();
    this.last = null;
    this.setUp();
    canvas.addEventListener("webglcontextlost", (event) => {
      event.preventDefault(); // textures are gone: has() says so and the viewer uploads again
      this.images.clear();
      this.last = null;
    });
    canvas.addEventListener("webglcontextrestored", () => this.setUp());
  }

  setUp() {
    const gl = this.gl;
    this.programs = {}; // linked on first use: each costs a round trip to the GPU process
    this.lut = gl.createTexture();
    gl.activeTexture(gl.TEXTURE1);
    gl.bindTexture(gl.TEXTURE_2D, this.lut);
    gl.texStorage2D(gl.TEXTURE_2D, 1, gl.R8, LUT_SIDE, LUT_SIDE);
    nearest(gl);
    this.lutKey = null;
    this.maxSize = gl.getParameter(gl.MAX_TEXTURE_SIZE);
    gl.disable(gl.BLEND);
    gl.disable(gl.DEPTH_TEST);
  }

  upload(key, image) {
    const info = checkImage(image);
    if (info.rows > this.maxSize || info.columns > this.maxSize) {
      throw new Error(`render: ${info.columns}x${info.rows} exceeds this GPU's ${this.maxSize} px`);
    }
    this.drop(key);
    const gl = this.gl;
    const [internal, format, type, kind] = textureFormat(gl, info);
    const texture = gl.createTexture();
    gl.activeTexture(gl.TEXTURE0);
    gl.bindTexture(gl.TEXTURE_2D, texture);
    gl.pixelStorei(gl.UNPACK_ALIGNMENT, 1);
    gl.texStorage2D(gl.TEXTURE_2D, 1, internal, info.columns, info.rows);
    gl.texSubImage2D(gl.TEXTURE_2D, 0, 0, 0, info.columns, info.rows, format, type,
                     rawView(image, info));
    nearest(gl);
    this.images.set(key, { ...info, texture, kind });
  }

  has(key) { return this.images.has(key); }

  drop(key) {
    const entry = this.images.get(key);
    if (!entry) return;
    this.gl.deleteTexture(entry.texture);
    this.images.delete(key);
    if (this.last && this.last.key === key) this.last = null;
  }

  draw(key, view) {
    const entry = this.images.get(key);
    if (!entry) throw new Error(`render: no image uploaded as ${key}`);
    const gl = this.gl;
    const { width, height } = this.canvas;
    const dest = placement(view, entry, width, height, this.dpr);
    const filter = magnifies(view, dest, entry) ? "linear" : "nearest";
    const name = `${entry.kind}|${filter}`;
    if (!this.programs[name]) this.programs[name] = link(gl, entry.kind, filter);
    const { program, uniforms } = this.programs[name];
    gl.useProgram(program);
    if (entry.kind === "table") this.useTable(entry.dtype, view, uniforms);
    if (entry.kind === "float") this.setWindow(view, uniforms);
    gl.activeTexture(gl.TEXTURE0);
    gl.bindTexture(gl.TEXTURE_2D, entry.texture);
    gl.uniform1i(uniforms.u_image, 0);
    gl.uniform4f(uniforms.u_dest, dest.x, dest.y, dest.width, dest.height);
    gl.uniform2f(uniforms.u_canvas, width, height);
    gl.uniform2i(uniforms.u_size, entry.columns, entry.rows);
    if (uniforms.u_flip) gl.uniform1i(uniforms.u_flip, windowTerms(view).flip ? 1 : 0);
    gl.viewport(0, 0, width, height);
    gl.clearColor(BACKGROUND[0], BACKGROUND[1], BACKGROUND[2], 1);
    gl.clear(gl.COLOR_BUFFER_BIT);
    gl.drawArrays(gl.TRIANGLE_STRIP, 0, 4);
    this.last = { key, view };
  }

  useTable(dtype, view, uniforms) {
    const gl = this.gl;
    const key = tableKey(dtype, view);
    gl.activeTexture(gl.TEXTURE1);
    gl.bindTexture(gl.TEXTURE_2D, this.lut);
    if (key !== this.lutKey) {
      const table = greyTable(dtype, view);
      const rows = table.length / LUT_SIDE;
      gl.pixelStorei(gl.UNPACK_ALIGNMENT, 1);
      gl.texSubImage2D(gl.TEXTURE_2D, 0, 0, 0, LUT_SIDE, rows, gl.RED, gl.UNSIGNED_BYTE, table);
      this.lutKey = key;
    }
    gl.uniform1i(uniforms.u_lut, 1);
  }

  setWindow(view, uniforms) {
    const t = windowTerms(view);
    this.gl.uniform4f(uniforms.u_window, t.slope, t.intercept, t.low, t.span);
    this.gl.uniform1i(uniforms.u_steep, t.steep ? 1 : 0);
  }

  clear() {
    const gl = this.gl;
    gl.viewport(0, 0, this.canvas.width, this.canvas.height);
    gl.clearColor(BACKGROUND[0], BACKGROUND[1], BACKGROUND[2], 1);
    gl.clear(gl.COLOR_BUFFER_BIT);
    this.last = null;
  }

  resize(cssWidth, cssHeight, dpr = 1) {
    resizeCanvas(this, cssWidth, cssHeight, dpr);
    if (this.last) this.draw(this.last.key, this.last.view); else this.clear();
  }

  bytesHeld() {
    let total = LUT_SIDE * LUT_SIDE;
    for (const entry of this.images.values()) total += entry.bytes;
    return total;
  }

  readPixels() {
    // The drawing buffer is not preserved after compositing: draw again, then read in this task.
    if (this.last) this.draw(this.last.key, this.last.view); else this.clear();
    const gl = this.gl;
    const { width, height } = this.canvas;
    const bottomUp = new Uint8Array(width * height * 4);
    gl.readPixels(0, 0, width, height, gl.RGBA, gl.UNSIGNED_BYTE, bottomUp);
    const out = new Uint8ClampedArray(bottomUp.length);
    const stride = width * 4;
    for (let row = 0; row < height; row++) {
      out.set(bottomUp.subarray((height - 1 - row) * stride, (height - row) * stride), row * stride);
    }
    return out;
  }
}

function nearest(gl) {
  gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MIN_FILTER, gl.NEAREST);
  gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MAG_FILTER, gl.NEAREST);
  gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_S, gl.CLAMP_TO_EDGE);
  gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_T, gl.CLAMP_TO_EDGE);
}

/** Device pixels for the canvas's CSS size; assigning a size blanks a canvas, so only on change. */
function resizeCanvas(renderer, cssWidth, cssHeight, dpr) {
  renderer.dpr = dpr > 0 ? dpr : 1;
  const width = Math.max(1, Math.round(cssWidth * renderer.dpr));
  const height = Math.max(1, Math.round(cssHeight * renderer.dpr));
  if (renderer.canvas.width !== width) renderer.canvas.width = width;
  if (renderer.canvas.height !== height) renderer.canvas.height = height;
}

// ---- 2D canvas ----

const OPAQUE = 0xff000000;
const PAINTED_KEEP = 4;

/** Packed little-endian RGBA words for a grey table (one word per stored pattern). */
function rgbaTable(grey) {
  const words = new Uint32Array(grey.length);
  for (let i = 0; i < grey.length; i++) words[i] = OPAQUE | (grey[i] * 0x010101);
  return words;
}

function makeSurface(width, height) {
  if (typeof OffscreenCanvas !== "undefined") return new OffscreenCanvas(width, height);
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  return canvas;
}

class CanvasRenderer {
  constructor(canvas) {
    this.kind = "2d";
    this.canvas = canvas;
    this.context = canvas.getContext("2d", { alpha: false });
    if (!this.context) throw new Error("render: this canvas has neither WebGL2 nor 2D");
    this.dpr = 1;
    this.images = new Map();
    this.words = null; // the last table as packed RGBA words
    this.painted = []; // keys whose RGBA is kept, oldest first (at most PAINTED_KEEP)
    this.last = null;
  }

  upload(key, image) {
    const info = checkImage(image);
    this.drop(key);
    this.images.set(key, { ...info, pixels: rawView(image, info), rgba: null, surface: null,
                           shownAs: null });
  }

  has(key) { return this.images.has(key); }

  drop(key) {
    this.images.delete(key);
    this.painted = this.painted.filter((k) => k !== key);
    if (this.last && this.last.key === key) this.last = null;
  }

  draw(key, view) {
    const entry = this.images.get(key);
    if (!entry) throw new Error(`render: no image uploaded as ${key}`);
    this.keepPainted(key);
    const { width, height } = this.canvas;
    const dest = placement(view, entry, width, height, this.dpr);
    const step = paintStep(entry, dest);
    const shownAs = entry.samples === 3 ? `rgb|${Boolean(view.invert)}`
      : entry.dtype === "float32" ? `f|${tableKey("float32", view)}` : `${tableKey(entry.dtype, view)}|${step}`;
    if (entry.shownAs !== shownAs) this.paint(entry, view, shownAs, step);
    const ctx = this.context;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = `rgb(${BACKGROUND.join(",")})`;
    ctx.fillRect(0, 0, width, height);
    ctx.imageSmoothingEnabled = magnifies(view, dest, entry);
    ctx.drawImage(entry.surface, dest.x, dest.y, dest.width, dest.height);
    this.last = { key, view };
  }

  /** The image's RGBA for this table, into its own surface: zoom and pan redraw it as it is.
   * ``step`` > 1: the middle pixel of each step x step block (see paintStep). */
  paint(entry, view, shownAs, step = 1) {
    const first = step >> 1; // the middle of each step x step block, where a nearest draw samples
    const columns = Math.ceil((entry.columns - first) / step);
    const rows = Math.ceil((entry.rows - first) / step);
    if (!entry.rgba || entry.rgba.width !== columns || entry.rgba.height !== rows) {
      entry.rgba = new ImageData(columns, rows);
      entry.surface = null;
    }
    const out = new Uint32Array(entry.rgba.data.buffer);
    const src = entry.pixels;
    if (entry.samples === 3) {
      fillColour(out, src, Boolean(view.invert));
    } else if (entry.dtype === "float32") {
      const t = windowTerms(view);
      for (let i = 0; i < out.length; i++) out[i] = OPAQUE | (greyOf(src[i], t) * 0x010101);
    } else {
      const table = this.table(entry.dtype, view, tableKey(entry.dtype, view));
      if (step === 1) {
        for (let i = 0; i < out.length; i++) out[i] = table[src[i]];
      } else {
        for (let row = 0, o = 0; row < rows; row++) {
          const start = (first + row * step) * entry.columns;
          for (let i = start + first, end = start + entry.columns; i < end; i += step) out[o++] = table[src[i]];
        }
      }
    }
    if (!entry.surface) entry.surface = makeSurface(columns, rows);
    entry.surface.getContext("2d").putImageData(entry.rgba, 0, 0);
    entry.shownAs = shownAs;
  }

  /** RGBA is kept for the few images drawn last (8 bytes a pixel): a series stays affordable. */
  keepPainted(key) {
    this.painted = this.painted.filter((k) => k !== key);
    this.painted.push(key);
    while (this.painted.length > PAINTED_KEEP) {
      const old = this.images.get(this.painted.shift());
      if (old) Object.assign(old, { rgba: null, surface: null, shownAs: null });
    }
  }

  table(dtype, view, key) {
    if (!this.words || this.words.key !== key) {
      this.words = { key, table: rgbaTable(greyTable(dtype, view)) }; // slices share one window
    }
    return this.words.table;
  }

  clear() {
    const ctx = this.context;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = `rgb(${BACKGROUND.join(",")})`;
    ctx.fillRect(0, 0, this.canvas.width, this.canvas.height);
    this.last = null;
  }

  resize(cssWidth, cssHeight, dpr = 1) {
    resizeCanvas(this, cssWidth, cssHeight, dpr);
    if (this.last) this.draw(this.last.key, this.last.view); else this.clear();
  }

  bytesHeld() {
    let total = 0;
    for (const entry of this.images.values()) {
      total += entry.bytes + (entry.surface ? entry.rgba.width * entry.rgba.height * 8 : 0);
    }
    return total + (this.words ? this.words.table.byteLength : 0);
  }

  readPixels() {
    const { width, height } = this.canvas;
    return this.context.getImageData(0, 0, width, height).data;
  }
}

/** Pixels per painted pixel, each way, for a grey image drawn minified (nearest, no smoothing):
 * at 1/step of its size or less on screen, one pixel of each step x step block is all a nearest
 * draw can show, so only those are mapped through the table. A 3072x2614 radiograph fitted into
 * ~650 px was an 8-million-pixel loop (~35 ms of the main thread at each new image or W/L); at
 * step 4, 0.5 M. */
function paintStep(entry, dest) {
  if (entry.samples === 3 || entry.dtype === "float32") return 1;
  const step = Math.floor(Math.min(entry.columns / dest.width, entry.rows / dest.height));
  return Number.isFinite(step) && step > 1 ? Math.min(step, entry.columns, entry.rows) : 1;
}

function fillColour(out, rgb, invert) {
  const flip = invert ? 255 : 0;
  for (let i = 0, j = 0; i < out.length; i++, j += 3) {
    out[i] = OPAQUE | ((rgb[j + 2] ^ flip) << 16) | ((rgb[j + 1] ^ flip) << 8) | (rgb[j] ^ flip);
  }
}

// ---- reduced copies: what the page keeps of a slice evicted from full resolution ----
const ARITHMETIC = { uint8: Uint8Array, int8: Int8Array, uint16: Uint16Array, int16: Int16Array,
                     float32: Float32Array };

/** The image averaged over whole factor x factor blocks, per sample, in its own dtype: a small
 * copy (rows/factor x columns/factor, at least 1x1) that upload() takes like any image. */
export function reduceImage(image, factor) {
  const info = checkImage(image);
  const rows = Math.max(1, Math.floor(info.rows / factor));
  const columns = Math.max(1, Math.floor(info.columns / factor));
  const fy = Math.min(factor, info.rows), fx = Math.min(factor, info.columns), n = info.samples;
  const Type = ARITHMETIC[info.dtype];
  const buffer = ArrayBuffer.isView(image.buffer) ? image.buffer.buffer : image.buffer;
  const offset = ArrayBuffer.isView(image.buffer) ? image.buffer.byteOffset : 0;
  const src = new Type(buffer, offset, info.rows * info.columns * n);
  const out = new Type(rows * columns * n);
  const area = fy * fx, round = info.dtype === "float32" ? (v) => v : Math.round;
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < columns; c++) {
      for (let s = 0; s < n; s++) {
        let sum = 0;
        for (let y = r * fy; y < r * fy + fy; y++) {
          for (let x = 0, i = (y * info.columns + c * fx) * n + s; x < fx; x++, i += n) sum += src[i];
        }
        out[(r * columns + c) * n + s] = round(sum / area);
      }
    }
  }
  return { buffer: out.buffer, rows, columns, dtype: info.dtype, samples: n };
}

// ---- entry point ----

/** A renderer for ``canvas``: options.mode "auto" (WebGL2, else 2D), "webgl2" or "2d". */
export function createRenderer(canvas, options = {}) {
  const renderer = makeRenderer(canvas, options.mode || "auto");
  renderer.reduceImage = reduceImage; // the page's main thread reaches it through its renderer
  return renderer;
}

function makeRenderer(canvas, mode) {
  if (mode !== "auto" && mode !== "webgl2" && mode !== "2d") throw new Error(`render: mode ${mode}?`);
  if (mode !== "2d") {
    const gl = canvas.getContext("webgl2", {
      alpha: false, antialias: false, depth: false, stencil: false, premultipliedAlpha: false,
      preserveDrawingBuffer: false, powerPreference: "high-performance",
    });
    if (gl) return new GlRenderer(canvas, gl);
    if (mode === "webgl2") throw new Error("render: WebGL2 is not available in this browser");
  }
  return new CanvasRenderer(canvas);
}
