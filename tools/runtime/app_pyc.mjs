#!/usr/bin/env node
// Run tools/runtime/app_pyc.py inside Pyodide (Node >= 20), so the app's bytecode comes from the
// very interpreter the page runs. Called by tools/setup_runtime.py (ensure_app_bytecode):
//
//   node tools/runtime/app_pyc.mjs PYODIDE_DIR WORK_DIR
//
// WORK_DIR is mounted at /work and holds job.json; kept apart from compile.mjs, whose contents
// are part of the runtime's stamp.
import { readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const [pyodideDir, workDir] = process.argv.slice(2).map((p) => resolve(p));
const { loadPyodide } = await import(pathToFileURL(join(pyodideDir, "pyodide.mjs")).href);
const py = await loadPyodide({ indexURL: pyodideDir + "/", env: { PYTHONHASHSEED: "0" } });
py.FS.mkdirTree("/work");
py.FS.mount(py.FS.filesystems.NODEFS, { root: workDir }, "/work");
py.globals.set("__name__", "__app_pyc__");
try {
  py.runPython(readFileSync(join(fileURLToPath(new URL(".", import.meta.url)), "app_pyc.py"), "utf8"));
  py.runPython("main('/work/job.json')");
} catch (err) {
  console.error(String(err));
  process.exit(1);
}
