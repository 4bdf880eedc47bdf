#!/usr/bin/env node
// Run tools/runtime/slim.py inside Pyodide itself (Node >= 20), so the bytecode it writes comes
// from the very interpreter the page runs. Called by tools/setup_runtime.py:
//
//   node tools/runtime/compile.mjs PYODIDE_DIR WORK_DIR
//
// WORK_DIR is mounted at /work; it holds job.json (what slim.py is to do) and the zips.

import { readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const [pyodideDir, workDir] = process.argv.slice(2).map((p) => resolve(p));
if (!pyodideDir || !workDir) {
  console.error("usage: node compile.mjs PYODIDE_DIR WORK_DIR");
  process.exit(2);
}
const { loadPyodide } = await import(pathToFileURL(join(pyodideDir, "pyodide.mjs")).href);
// A fixed hash seed keeps set and frozenset constants in the same order from run to run.
const py = await loadPyodide({ indexURL: pyodideDir + "/", env: { PYTHONHASHSEED: "0" } });
py.FS.mkdirTree("/work");
py.FS.mount(py.FS.filesystems.NODEFS, { root: workDir }, "/work");
const here = fileURLToPath(new URL(".", import.meta.url));
py.globals.set("__name__", "__slim__");
try {
  py.runPython(readFileSync(join(here, "slim.py"), "utf8"));
  py.runPython("main('/work/job.json')");
} catch (err) {
  console.error(String(err));
  process.exit(1);
}
