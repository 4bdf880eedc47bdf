// Test harness for app/ui/render.mjs: tests/test_render_gl.py drives it through window.harness.
import { createRenderer, greyTable } from "../../app/ui/render.mjs";

const views = new Map(); // name -> {canvas, renderer}

function decode(base64) {
  const text = atob(base64);
  const bytes = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
  return bytes.buffer;
}

function encode(bytes) {
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(text);
}

function open(name, mode, width, height, dpr = 1) {
  const canvas = document.createElement("canvas");
  document.body.append(canvas);
  const renderer = createRenderer(canvas, { mode });
  renderer.resize(width, height, dpr);
  views.set(name, { canvas, renderer });
  return renderer.kind;
}

function upload(name, key, base64, image) {
  views.get(name).renderer.upload(key, { ...image, buffer: decode(base64) });
  return views.get(name).renderer.bytesHeld();
}

function draw(name, key, view) {
  const { renderer } = views.get(name);
  renderer.draw(key, view);
  return encode(renderer.readPixels());
}

function call(name, method, ...args) {
  try {
    const value = views.get(name).renderer[method](...args);
    return { value: value instanceof Uint8ClampedArray ? encode(value) : value };
  } catch (error) {
    return { error: String(error.message || error) };
  }
}

/** W/L drag on a rows x columns uint16 ramp: draws per second, each finished before the next. */
function dragRate(mode, rows, columns, width, height, seconds) {
  const name = `drag-${mode}`;
  open(name, mode, width, height);
  const { renderer, canvas } = views.get(name);
  const ramp = new Uint16Array(rows * columns);
  for (let i = 0; i < ramp.length; i++) ramp[i] = (i * 7) & 0x0fff;
  renderer.upload("big", { buffer: ramp.buffer, rows, columns, dtype: "uint16", samples: 1 });
  const gl = renderer.kind === "webgl2" ? canvas.getContext("webgl2") : null;
  const probe = new Uint8Array(4);
  const finish = () => gl ? gl.readPixels(0, 0, 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, probe)
    : renderer.context.getImageData(0, 0, 1, 1);
  const times = [];
  const start = performance.now();
  for (let frame = 0; performance.now() - start < seconds * 1000; frame++) {
    const t0 = performance.now();
    renderer.draw("big", { center: 1000 + (frame % 200) * 10, width: 500 + (frame % 37) * 40 });
    finish();
    times.push(performance.now() - t0);
  }
  const total = performance.now() - start;
  times.sort((a, b) => a - b);
  const tableStart = performance.now();
  for (let i = 0; i < 50; i++) greyTable("uint16", { center: 32768 + i, width: 65536 }); // worst case
  const tableMs = (performance.now() - tableStart) / 50;
  renderer.drop("big");
  return { kind: renderer.kind, updates: times.length, perSecond: times.length / (total / 1000),
           p50: times[Math.floor(times.length / 2)], p95: times[Math.floor(times.length * 0.95)],
           tableMs };
}

/** greyTable's levels for one view, as base64. */
function table(dtype, view) {
  return encode(greyTable(dtype, view));
}

/** Lose (then, with restore, get back) the WebGL context, as a GPU reset would. */
const loseContext = new Map(); // name -> the extension, which a lost context no longer hands out
function context(name, restore) {
  const { canvas } = views.get(name);
  if (!restore) loseContext.set(name, canvas.getContext("webgl2").getExtension("WEBGL_lose_context"));
  const event = restore ? "webglcontextrestored" : "webglcontextlost";
  const done = new Promise((resolve) => canvas.addEventListener(event, resolve, { once: true }));
  if (restore) loseContext.get(name).restoreContext(); else loseContext.get(name).loseContext();
  return done.then(() => event);
}

window.harness = { open, upload, draw, call, dragRate, table, context };
document.documentElement.dataset.ready = "1";
