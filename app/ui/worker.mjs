// The engine's thread: Pyodide with numpy and imagecodecs, the retrieve engine and every decode.
// The page's main thread only draws; it talks to this worker by messages, and decoded pixels come
// back as transferred ArrayBuffers (moved, not copied element by element).
//
// Start-up: the page's first message ("init") names the study files worth asking for at once
// (a ?url= series' metadata and alternates.json); they are fetched while Pyodide loads and the
// engine's own fetch of the same URL takes that response (one request each), like a preload.
import { loadPyodide } from "../../static/pyodide/pyodide.mjs";
import { parseShipping } from "./shipping.mjs";

const base = new URL("../../", import.meta.url);
const epoch = () => performance.timeOrigin + performance.now();  // comparable with the page's clock
const queue = [];     // messages that arrive before Python is up
let handler = null;   // app/worker.py's handle(message)
const preloaded = new Map();
const nativeFetch = globalThis.fetch.bind(globalThis);

function hasRange(init) {
  const headers = init && init.headers;
  if (!headers) return false;
  if (typeof headers.has === "function") return headers.has("range");
  return Object.keys(headers).some((k) => k.toLowerCase() === "range");
}

// The engine's fetch: a preloaded answer is handed over once, for a plain GET of the same URL.
globalThis.fetch = (input, init) => {
  if (typeof input === "string" && preloaded.has(input) && !hasRange(init)
      && (!init || !init.method || init.method === "GET")) {
    const answer = preloaded.get(input);
    preloaded.delete(input);
    return answer;
  }
  return nativeFetch(input, init);
};

function post(message, transfer) {
  postMessage(message, transfer || []);
}

self.onmessage = (event) => {
  const message = event.data;
  if (message && message.type === "init") {
    for (const href of message.preload || []) {
      const url = new URL(href, message.href).href;
      const answer = nativeFetch(url, { mode: "cors" });
      answer.catch(() => {});  // a failed preload is the engine's to report when it asks itself
      preloaded.set(url, answer);
    }
    return;
  }
  if (handler) handler(message); else queue.push(message);
};

async function start() {
  post({ type: "boot", stage: "runtime", t: epoch() });
  const shipping = parseShipping(await (await nativeFetch(new URL("pyscript.toml", base))).text());
  const pyodide = await loadPyodide({ indexURL: new URL("static/pyodide/", base).href,
                                      packageCacheDir: undefined, fullStdLib: false });
  post({ type: "boot", stage: "python", t: epoch() });
  await pyodide.loadPackage(shipping.packages.map((p) => new URL(p, base).href),
                            { messageCallback: () => {}, errorCallback: (m) => console.warn(m) });
  const files = await Promise.all(shipping.files.map(async ([src, dst]) => {
    const response = await nativeFetch(new URL(src, base));
    if (!response.ok) throw new Error(`${src}: HTTP ${response.status}`);
    return [dst, new Uint8Array(await response.arrayBuffer())];
  }));
  for (const [dst, bytes] of files) {
    const path = "/home/pyodide/" + dst.replace(/^\.\//, "");
    pyodide.FS.mkdirTree(path.slice(0, path.lastIndexOf("/")));
    pyodide.FS.writeFile(path, bytes);
  }
  post({ type: "boot", stage: "packages", t: epoch() });
  const worker = pyodide.pyimport("app.worker");
  handler = await worker.start(post, epoch, new URL(shipping.lazy.pydicom, base).href);
  // when the last runtime file had arrived (the page's resource timing does not see the worker's)
  const runtime = performance.getEntriesByType("resource")
    .filter((e) => /\/static\/(pyodide|wheels)\//.test(e.name)).map((e) => e.responseEnd);
  post({ type: "boot", stage: "downloaded", t: performance.timeOrigin + Math.max(0, ...runtime) });
  post({ type: "boot", stage: "ready", t: epoch() });
  for (const message of queue.splice(0)) handler(message);
}

start().catch((error) => post({ type: "fatal", message: String(error && error.message || error) }));
