// First script of the page (a module file: the page's Content-Security-Policy allows no inline
// script). It sets the page state hooks, starts the engine's worker at once (Pyodide downloads and
// compiles while MicroPython starts the UI), and keeps the worker's messages until the UI takes them.
const root = document.documentElement;
window.renderLog = [];
window.retryLog = [];  // the current load's retries (JSON text each): requests asked again
window.drawLog = [];  // [image index, index on screen, status, SOP instance UID] per draw (last 2000)
window.appTimings = { navigationStart: performance.timeOrigin };

window.appFail = function (message) {
  root.dataset.app = "error";
  const box = document.getElementById("errors");
  if (box) {
    const item = document.createElement("div");
    item.className = "error";
    item.textContent = message;   // text, never HTML
    box.appendChild(item);
  }
  const status = document.getElementById("status");
  if (status) status.textContent = "Error";
};
const booting = () => root.dataset.app === "booting";
window.addEventListener("error", (e) => { if (booting()) window.appFail("Start-up failed: " + e.message); });
window.addEventListener("unhandledrejection", (e) => {
  if (booting()) window.appFail("Start-up failed: " + (e.reason && e.reason.message || e.reason));
});
window.addEventListener("py:error", (e) => window.appFail("The page's Python failed to start: "
  + (e.detail && e.detail.message || "see console")));
setTimeout(() => { if (booting()) window.appFail("Start-up timed out after 120 s"); }, 120000);

// PyScript writes any uncaught Python error into the page as a .py-error block; the UI catches its
// errors itself, and this removes any that still slip through (the console keeps the details).
new MutationObserver((records) => {
  for (const r of records) for (const n of r.addedNodes) {
    if (n.nodeType === 1 && n.classList.contains("py-error")) {
      console.error("python:", n.textContent);
      n.remove();
    }
  }
}).observe(document.documentElement, { childList: true, subtree: true });

// Small screens start with the sidebar drawer closed: the image takes the screen (☰ opens it).
if (window.innerWidth < 900) document.body.classList.add("drawer-closed");

// ---- the engine's worker ---------------------------------------------------------------------
const params = new URLSearchParams(location.search);
const studyUrl = params.get("url") || "";
const preload = [];
if (!params.has("noload") && /^(https?:\/\/|\/)[^\s]*\/series\/[^/?#]+\/?$/.test(studyUrl)) {
  const base = studyUrl.replace(/\/$/, "");
  preload.push(base + "/metadata", base + "/alternates.json");
}
// First pixels before the runtime is ready: the tree's rendered thumbnail of a ?url= series,
// badged PREVIEW (never taken for a diagnostic image); the UI removes it at its first real draw.
if (preload.length) {
  const preview = document.getElementById("preview");
  preview.addEventListener("load", () => {
    if (preview.dataset.retired) return;
    preview.hidden = false;
    window.appTimings.previewMs = performance.now();
    const badge = document.createElement("span");
    badge.className = "badge PREVIEW";
    badge.textContent = "PREVIEW";
    document.getElementById("overlay-tr").replaceChildren(badge);
  }, { once: true });
  preview.dataset.url = studyUrl.replace(/\/$/, "");
  preview.src = preview.dataset.url + "/thumbnail";
}
const STARTING = { runtime: "Starting: loading Python…", python: "Starting: installing numpy and imagecodecs…",
                   packages: "Starting: loading the viewer…" };

const worker = new Worker(new URL("./worker.mjs", import.meta.url), { type: "module" });
const early = [];
let listener = null;
const calls = new Map();
let nextCall = 1;
const toPage = (t) => t - performance.timeOrigin;  // the worker's epoch ms to the page's clock

worker.onmessage = (event) => {
  const m = event.data;
  if (m.type === "boot") {
    window.appTimings["worker_" + m.stage + "Ms"] = toPage(m.t);
    if (m.stage === "python") window.appTimings.pythonStartMs = toPage(m.t);
    // the app's modules imported and started in the worker (app.worker: numpy, imagecodecs, engine)
    if (m.stage === "ready" && window.appTimings.worker_packagesMs !== undefined) {
      window.appTimings.pythonImportsMs = toPage(m.t) - window.appTimings.worker_packagesMs;
    }
    const status = document.getElementById("status");
    if (status && booting() && STARTING[m.stage]) status.textContent = STARTING[m.stage];
  } else if (m.type === "fatal") {
    window.appFail("The engine could not start: " + m.message);
    return;
  } else if (m.type === "opened" && m.work) {
    window.appTimings.discovery = m.work;  // the worker's own figures (the benchmark reads them)
  } else if (m.type === "reply") {
    const pending = calls.get(m.id);
    calls.delete(m.id);
    if (pending) { if ("error" in m) pending.reject(new Error(m.error)); else pending.resolve(m.value); }
    return;
  }
  if (listener) deliver(m); else early.push(m);
};
// The UI gets each message as JSON text (MicroPython parses it into real dicts) plus the message
// itself, whose ArrayBuffer goes on to the renderer without ever entering Python.
// A result's "replicas" (nearbyFrames: the same pixels shown at other slices, badged) come in its
// message, one buffer for all: each is handed on as a message of its own, sharing that buffer.
// A message the worker sent as JSON text already ("opened": a field per image) goes on as that
// text: no structured copy of its nested objects, no stringify on this thread.
function deliver(m) {
  const replicas = m.replicas;
  if (replicas) delete m.replicas;
  deliverOne(m);
  for (const replica of replicas || []) deliverOne(Object.assign({}, m, replica));
}
function deliverOne(m) {
  const buffer = m.buffer;
  if (buffer) { delete m.buffer; m.nbytes = buffer.byteLength; }
  const text = typeof m.json === "string" ? m.json : JSON.stringify(m);
  if (buffer) m.buffer = buffer;
  listener(m.type, text, m);
}
worker.onerror = (e) => window.appFail("The engine's worker failed: " + (e.message || "see console"));
// the engine's requests run in a worker of their own (app/ui/net-worker.mjs): fetch() and body
// streams off the Python thread; the engine talks to it over a port of its own
const netWorker = new Worker(new URL("./net-worker.mjs", import.meta.url), { type: "module" });
netWorker.onerror = (e) => window.appFail("The engine's network worker failed: " + (e.message || "see console"));
const netChannel = new MessageChannel();
netWorker.postMessage({ port: netChannel.port1 }, [netChannel.port1]);
const preloads = preload.map((href) => ["preload", new URL(href, location.href).href]);
if (preloads.length) netWorker.postMessage(JSON.stringify(preloads));
worker.postMessage({ type: "init", href: location.href, net: netChannel.port2 }, [netChannel.port2]);

// ---- what the UI (app/ui/glue.py) uses -----------------------------------------------------
window.engine = {
  send(message, transfer) { worker.postMessage(message, transfer || []); },
  listen(fn) { listener = fn; for (const m of early.splice(0)) deliver(m); },
  call(name, ...args) {  // a request/reply to app/worker.py: a promise
    const id = nextCall++;
    return new Promise((resolve, reject) => {
      calls.set(id, { resolve, reject });
      worker.postMessage({ type: "call", id, name, args });
    });
  },
};
// the demo studies serve.py lists (the series menu); none is not an error
window.demoList = fetch("./dicomweb/demo.json").then((r) => (r.ok ? r.json() : [])).catch(() => []);
// the renderer (WebGL2, or a 2D canvas where WebGL2 is missing): loaded beside the interpreter
window.rendererModule = import("./render.mjs");
// hooks.mjs (the UI's JS helpers and the test hooks) is the page's second module script
