// Verify that every symbol a wasm side module imports can be resolved when it
// is loaded into Pyodide.
//
// Usage: node check_imports.mjs PYODIDE_ASM_WASM DIR_OR_SO...
//
// A side module's "env.*" and "GOT.*" imports are resolved by emscripten's
// dynamic linker from the main module's exports, the JS library functions the
// main module imports, or the side module's own exports.  Anything else is a
// "Dynamic linking error: cannot resolve symbol" at call time, which aborts
// Pyodide.  meson's has_function() checks cannot see this (side modules link
// with undefined symbols allowed), so check the finished binaries instead.
// Exit code 1 if any symbol is unresolvable.
import { readFileSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";

const [mainWasm, ...targets] = process.argv.slice(2);
if (!mainWasm || !targets.length) {
  console.error("usage: node check_imports.mjs PYODIDE_ASM_WASM DIR_OR_SO...");
  process.exit(2);
}
const main = new WebAssembly.Module(readFileSync(mainWasm));
const provided = new Set(WebAssembly.Module.exports(main).map((e) => e.name));
for (const i of WebAssembly.Module.imports(main)) if (i.module === "env") provided.add(i.name);
// set up by the dynamic linker itself for every side module
const linker = new Set(["memory", "__indirect_function_table", "__memory_base",
  "__table_base", "__stack_pointer", "__c_longjmp", "__cpp_exception"]);

function* walk(p) {
  if (statSync(p).isDirectory()) {
    for (const f of readdirSync(p).sort()) yield* walk(join(p, f));
  } else if (p.endsWith(".so")) yield p;
}

let bad = 0, n = 0;
for (const t of targets) {
  for (const so of walk(t)) {
    n++;
    const m = new WebAssembly.Module(readFileSync(so));
    const own = new Set(WebAssembly.Module.exports(m).map((e) => e.name));
    const missing = WebAssembly.Module.imports(m)
      .filter((i) => (i.module === "env" || i.module.startsWith("GOT.")) &&
        !linker.has(i.name) && !provided.has(i.name) && !own.has(i.name))
      .map((i) => `${i.module}.${i.name}`);
    if (missing.length) {
      bad++;
      console.log(`UNRESOLVED in ${so}: ${missing.join(" ")}`);
    }
  }
}
console.log(`${n} side modules checked against ${mainWasm}: ${bad ? bad + " with unresolved symbols" : "all imports resolvable"}`);
process.exit(bad ? 1 : 0);
