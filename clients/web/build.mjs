// Build clients/web: dist/malm-web.js (ES module, onnxruntime-web's JS inside, split per backend) and
// dist/ort/ (the onnxruntime-web WASM runtime files it loads). `npm ci && npm run build`.
import { build } from "esbuild";
import { cpSync, mkdirSync, rmSync } from "node:fs";

const out = process.argv[2] ?? "dist";
rmSync(out, { recursive: true, force: true });
await build({
  entryPoints: { "malm-web": "src/index.ts" },
  bundle: true,
  format: "esm",
  splitting: true,
  minify: true,
  sourcemap: true,
  target: "es2022",
  outdir: out,
  // Load the .wasm runtime from ort/ (cached by the app's service worker) instead of inlining it.
  conditions: ["onnxruntime-web-use-extern-wasm"],
  chunkNames: "chunks/[name]",
  logLevel: "warning",
});
mkdirSync(`${out}/ort`, { recursive: true });
for (const name of ["ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm",
  "ort-wasm-simd-threaded.asyncify.mjs", "ort-wasm-simd-threaded.asyncify.wasm"]) {
  cpSync(`node_modules/onnxruntime-web/dist/${name}`, `${out}/ort/${name}`);
}
console.log(`built ${out}/malm-web.js and ${out}/ort/`);
