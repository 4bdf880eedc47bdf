// Bundles the Cornerstone3D peer page into one folder served as static files (no CDN):
//   node build.mjs OUT_DIR
// OUT_DIR/peer.html, peer.js (page), decodeImageFrameWorker.js (their decode worker, which
// peer.js finds next to itself through new URL(..., import.meta.url)), wasm/ (their codecs,
// found through the loader's wasmBasePath option).
import { build } from 'esbuild';
import { copyFileSync, mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const out = process.argv[2];
if (!out) {
  console.error('usage: node build.mjs OUT_DIR');
  process.exit(2);
}
const require = createRequire(join(here, 'package.json'));

// The emscripten codec glue has a Node.js branch that requires these; it never runs in a browser.
const nodeOnly = ['fs', 'path', 'crypto', 'module', 'worker_threads', 'ws'];
const common = {
  bundle: true,
  format: 'esm',
  platform: 'browser',
  target: 'es2022',
  minify: true,
  sourcemap: true,
  external: nodeOnly,
  alias: { url: './src/node-url.js' },
  logLevel: 'warning',
  absWorkingDir: here,
};

await build({ ...common, entryPoints: { peer: 'src/peer.js' }, outdir: out });
await build({
  ...common,
  entryPoints: {
    // not in the package's exports map: its own bundlers reach it by a relative URL
    decodeImageFrameWorker: join(dirname(require.resolve('@cornerstonejs/dicom-image-loader')), 'decodeImageFrameWorker.js'),
  },
  outdir: out,
});

mkdirSync(join(out, 'wasm'), { recursive: true });
const wasm = {
  'openjphjs.wasm': '@cornerstonejs/codec-openjph/wasm',
  'charlswasm_decode.wasm': '@cornerstonejs/codec-charls/decodewasm',
  'openjpegwasm_decode.wasm': '@cornerstonejs/codec-openjpeg/decodewasm',
  'libjpegturbowasm_decode.wasm': '@cornerstonejs/codec-libjpeg-turbo-8bit/decodewasm',
  'jpegxlwasm_decode.wasm': '@cornerstonejs/codec-libjxl/decodewasm',
};
for (const [name, spec] of Object.entries(wasm)) {
  copyFileSync(require.resolve(spec), join(out, 'wasm', name));
}
copyFileSync(join(here, 'src', 'peer.html'), join(out, 'peer.html'));
