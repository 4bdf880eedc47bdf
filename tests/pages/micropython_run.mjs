// Runs Python code under MicroPython's WebAssembly port (the one PyScript's "mpy" uses) in Node:
//   node micropython_run.mjs <micropython.mjs> <project root> <module path>... < code.py
// Each module path (e.g. app/ui/gestures.py) is copied into MicroPython's file system.
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { pathToFileURL } from "node:url";

const [runtime, root, ...modules] = process.argv.slice(2);
const { loadMicroPython } = await import(pathToFileURL(runtime).href);
const mp = await loadMicroPython({ stdout: (line) => console.log(line),
                                   stderr: (line) => console.error(line) });
const made = new Set();
for (const module of modules) {
  let folder = "";
  for (const part of dirname(module).split("/")) {
    folder += "/" + part;
    if (!made.has(folder)) {
      mp.FS.mkdir(folder);
      mp.FS.writeFile(folder + "/__init__.py", "");
      made.add(folder);
    }
  }
  mp.FS.writeFile("/" + module, readFileSync(join(root, module), "utf8"));
}
try {
  mp.runPython(readFileSync(0, "utf8"));
} catch (error) {
  console.error(String(error.message || error));
  process.exit(1);
}
