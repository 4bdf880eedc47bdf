// What the engine's worker installs, read from pyscript.toml's [engine] tables: the one list of
// shipped files (tests/test_layout.py checks it against app/). Only the TOML that file uses is
// understood: [table] headers, "key" = "value" pairs and arrays of strings.
export function parseShipping(text) {
  const tables = {};
  let table = tables[""] = {};
  let array = null;
  for (const raw of text.split("\n")) {
    const line = raw.replace(/(^|\s)#.*$/, "").trim();
    if (!line) continue;
    if (array) {
      if (line.startsWith("]")) { array = null; continue; }
      array.push(...[...line.matchAll(/"([^"]*)"/g)].map((m) => m[1]));
      continue;
    }
    const header = line.match(/^\[([^\]]+)\]$/);
    if (header) { table = tables[header[1].trim()] = {}; continue; }
    const pair = line.match(/^"?([^"=]+?)"?\s*=\s*(.*)$/);
    if (!pair) throw new Error(`pyscript.toml: cannot read ${line}`);
    const [, key, value] = pair;
    if (value.startsWith("[")) {
      table[key] = array = [...value.matchAll(/"([^"]*)"/g)].map((m) => m[1]);
      if (value.endsWith("]")) array = null;
    } else {
      table[key] = value.replace(/^"|"$/g, "");
    }
  }
  const engine = tables.engine || {};
  return { packages: engine.packages || [], files: Object.entries(tables["engine.files"] || {}),
           lazy: { pydicom: engine.pydicom } };
}
