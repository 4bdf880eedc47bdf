// The engine's thread: Pyodide with numpy and imagecodecs, the retrieve engine and every decode.
// The page's main thread only draws; it talks to this worker by messages, and decoded pixels come
// back as transferred ArrayBuffers (moved, not copied element by element).
//
// Start-up: the page's first message ("init") hands over the port to the network worker, which
// already fetches the study files worth asking for at once (a ?url= series' metadata and
// alternates.json) while Pyodide loads: the engine's own request for the same URL takes that
// response (one request each), like a preload.
import { loadPyodide } from "../../static/pyodide/pyodide.mjs";
import { parseShipping } from "./shipping.mjs";

const base = new URL("../../", import.meta.url);
const HOME = "/home/pyodide/";          // where the app's files go (set-up compiles for this path)
const APP_PYC = "static/app-pyc/";   // + sourcesKey(files) + ".zip"
const epoch = () => performance.timeOrigin + performance.now();  // comparable with the page's clock
const queue = [];     // messages that arrive before Python is up
let handler = null;   // app/worker.py's handle(message)
let report = null;    // () => how the app's modules were loaded (bytecodeReport)
const nativeFetch = globalThis.fetch.bind(globalThis);

// The engine's requests run in their own worker (app/ui/net-worker.mjs running app/ui/net.mjs,
// started by the page, which hands this worker a port to it in "init"): app/transport/browser.py
// sends it operations as JSON text and listens to its events.
let netPort = null;
let netListener = null;
const netBacklog = [];
globalThis.engineNet = {
  send(text) { netPort.postMessage(text); },
  listen(callback) {
    netListener = callback;
    for (const data of netBacklog.splice(0)) callback(data);
  },
};

function post(message, transfer) {
  postMessage(message, transfer || []);
}

self.onmessage = (event) => {
  const message = event.data;
  if (message && message.type === "init") {
    netPort = message.net;
    netPort.onmessage = (event) => {
      if (netListener) netListener(event.data); else netBacklog.push(event.data);
    };
    return;
  }
  if (message && message.type === "call" && message.name === "bytecodeReport") {
    post({ type: "reply", id: message.id, value: report ? JSON.stringify(report()) : null });
    return;
  }
  if (handler) handler(message); else queue.push(message);
};

// The app's own files, asked for while the wheels load: each [path in the worker, bytes].
function fetchFiles(shipping) {
  return Promise.all(shipping.files.map(async ([src, dst]) => {
    const response = await nativeFetch(new URL(src, base));
    if (!response.ok) throw new Error(`${src}: HTTP ${response.status}`);
    return [dst.replace(/^\.\//, ""), new Uint8Array(await response.arrayBuffer())];
  }));
}

// Set-up's compiled twins of exactly these files (tools/setup_runtime.py ensure_app_bytecode),
// named by sourcesKey: checked hash-based pycs in __pycache__, used by the interpreter only while
// the source beside them is the one they came from. None for these sources (set-up not run since
// an edit) is fine: everything compiles from source, as before.
async function fetchBytecode(key) {
  try {
    const response = await nativeFetch(new URL(`${APP_PYC}${key}.zip`, base));
    return response.ok ? await response.arrayBuffer() : null;
  } catch {
    return null;
  }
}

const CRC_TABLE = Uint32Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(bytes, crc) {
  let c = ~crc >>> 0;
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xFF] ^ (c >>> 8);
  return ~c >>> 0;
}

// The same key as set-up's app_key: CRC-32 over each "path NUL size NUL bytes", in list order.
function sourcesKey(files) {
  const text = new TextEncoder();
  let crc = 0;
  for (const [dst, bytes] of files) {
    if (!dst.endsWith(".py")) continue;
    crc = crc32(bytes, crc32(text.encode(`${dst}\0${bytes.length}\0`), crc));
  }
  return crc.toString(16).padStart(8, "0");
}

// Which app modules the interpreter had to compile from source (tests ask, see bytecodeReport).
const WATCH_COMPILES = `
import importlib.machinery as machinery
compiled = []
_source_to_code = machinery.SourceFileLoader.source_to_code
def _watched(self, data, path, *args, **kwargs):
    if str(path).startswith("${HOME}app/"):
        compiled.append(str(path)[${HOME.length}:])
    return _source_to_code(self, data, path, *args, **kwargs)
machinery.SourceFileLoader.source_to_code = _watched
`;

function install(pyodide, files, bytecode, key) {
  for (const [dst, bytes] of files) {
    const path = HOME + dst;
    pyodide.FS.mkdirTree(path.slice(0, path.lastIndexOf("/")));
    pyodide.FS.writeFile(path, bytes);
  }
  if (bytecode) pyodide.unpackArchive(bytecode, "zip", { extractDir: HOME });
  const watch = pyodide.globals.get("dict")();
  pyodide.runPython(WATCH_COMPILES, { globals: watch });
  return () => {
    const compiled = watch.get("compiled").toJs();
    const loaded = pyodide.runPython(
      "import sys\nsorted(m for m in sys.modules if m == 'app' or m.startswith('app.'))").toJs();
    return { key, bytecode: bytecode ? "present" : "absent", modules: loaded.length, compiled };
  };
}

async function start() {
  post({ type: "boot", stage: "runtime", t: epoch() });
  const shipping = parseShipping(await (await nativeFetch(new URL("pyscript.toml", base))).text());
  const pyodide = await loadPyodide({ indexURL: new URL("static/pyodide/", base).href,
                                      packageCacheDir: undefined, fullStdLib: false });
  post({ type: "boot", stage: "python", t: epoch() });
  // asked for while the wheels load and unpack, not before: the interpreter's own downloads
  // come first on the few connections a browser opens to one server
  const files = fetchFiles(shipping);
  const key = files.then(sourcesKey, () => null);  // a failed file is reported when awaited
  const bytecode = key.then((k) => k && fetchBytecode(k));
  await pyodide.loadPackage(shipping.packages.map((p) => new URL(p, base).href),
                            { messageCallback: () => {}, errorCallback: (m) => console.warn(m) });
  report = install(pyodide, await files, await bytecode, await key);
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
