// Hooks for end-to-end tests, the bench and users' scripts (window.pyApp), and the small JS helpers
// the MicroPython UI uses to build JS objects (it hands over JSON text; no object crosses as a proxy).
const engine = () => window.engine;
const ui = () => window.viewerUi;  // set by app/ui/glue.py: heldBuffer(index), heldSummary()

async function sha256Hex(buffer) {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", buffer));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

window.pyApp = {
  // fetch + decode a frame in the worker with the viewer's codecs: JSON {sha256, rows, columns, dtype, decode_ms}
  decodeFrame: (url, fmtJson) => engine().call("decodeFrame", url, fmtJson),
  importCheck: () => engine().call("importCheck"),
  // sha256 of the stored values the page holds for a stack image (little-endian), or null
  async pixelsSha256(index) {
    const buffer = ui() && ui().heldBuffer(Number(index));
    return buffer ? sha256Hex(buffer) : null;
  },
  // the worker's wasm heap and the decoded pixels the page holds (JSON)
  async memoryUsage() {
    const worker = JSON.parse(await engine().call("memoryUsage"));
    const held = ui() ? JSON.parse(ui().heldSummary()) : {};
    return JSON.stringify(Object.assign(worker, held));
  },
  // a known 16-bit ramp through the real renderer (2D path) on a canvas; tests read it back
  async drawPattern(canvasId) {
    const { createRenderer } = await window.rendererModule;
    const canvas = document.getElementById(canvasId);
    const renderer = createRenderer(canvas, { mode: "2d" });
    const ramp = new Uint16Array(64 * 256);
    for (let i = 0; i < ramp.length; i++) ramp[i] = (i % 256) * 16;  // 0..4080
    renderer.resize(256, 64, 1);
    renderer.upload("pattern", { buffer: ramp.buffer, rows: 64, columns: 256, dtype: "uint16", samples: 1 });
    renderer.draw("pattern", { center: 2048, width: 4096, fullRows: 64, fullColumns: 256, smooth: false });
    return JSON.stringify({ rows: 64, columns: 256 });
  },
  // RGBA of the viewport as drawn, base64 (the WebGL canvas has no 2D context to read from)
  canvasPixels() {
    const r = window.viewerRenderer;
    if (!r) return null;
    const data = r.readPixels();
    let s = "";
    for (let i = 0; i < data.length; i += 0x8000) s += String.fromCharCode.apply(null, data.subarray(i, i + 0x8000));
    const canvas = document.getElementById("canvas");
    return [canvas.width, canvas.height, btoa(s)];
  },
};

// ---- helpers for app/ui/glue.py ---------------------------------------------------------------
window.pageLog = {
  render(json) {  // one renderLog entry, pushed when the image it describes is on the canvas (or not drawn)
    window.renderLog.push(JSON.parse(json));
  },
  draw(index, current, status, sop) {
    const log = window.drawLog;
    log.push([index, current, status, sop]);
    if (log.length > 2000) log.splice(0, log.length - 2000);
  },
};
window.jsObject = (json) => JSON.parse(json);
// a 2D drawing as one call: ops = [["r", fill, x, y, w, h] | ["t", fill, text, x, y] | ["f", font]]
window.drawOps = (canvas, json) => {
  const ctx = canvas.getContext("2d");
  for (const op of JSON.parse(json)) {
    if (op[0] === "r") { ctx.fillStyle = op[1]; ctx.fillRect(op[2], op[3], op[4], op[5]); }
    else if (op[0] === "t") { ctx.fillStyle = op[1]; ctx.fillText(op[2], op[3], op[4]); }
    else if (op[0] === "f") ctx.font = op[1];
  }
};

// The renderer's mode for the viewport: ?render=2d|webgl2 if given; else WebGL2, unless it runs on
// a software rasterizer (SwiftShader, llvmpipe: no GPU), where the 2D canvas is much faster (a
// 1280x660 WebGL draw measured ~800 ms there, the 2D path a few ms for the 20-slice MR).
window.renderMode = function () {
  const asked = new URLSearchParams(location.search).get("render");
  if (asked === "2d" || asked === "webgl2") return asked;
  try {
    const gl = document.createElement("canvas").getContext("webgl2");
    const info = gl && gl.getExtension("WEBGL_debug_renderer_info");
    const name = info ? String(gl.getParameter(info.UNMASKED_RENDERER_WEBGL)) : "";
    if (gl) gl.getExtension("WEBGL_lose_context")?.loseContext();
    return /swiftshader|llvmpipe|software/i.test(name) ? "2d" : "auto";
  } catch (e) {
    return "auto";
  }
};
