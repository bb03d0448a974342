// Build clients/web: dist/malm-web.js (ES module, onnxruntime-web's JS inside, split per backend) and
// dist/ort/ (the onnxruntime-web WASM runtime files it loads), and a copy in the cooking assistant's web
// app (examples/cooking_assistant/web/lib). `npm ci && npm run build`.
import { build } from "esbuild";
import { cpSync, mkdirSync, readdirSync, rmSync, writeFileSync } from "node:fs";

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
// What the offline app's service worker caches (source maps left out).
const files = readdirSync(out, { recursive: true, withFileTypes: true })
  .filter((d) => d.isFile() && !d.name.endsWith(".map"))
  .map((d) => `${d.parentPath ?? d.path}/${d.name}`.slice(out.length + 1).replaceAll("\\", "/"))
  .filter((f) => f !== "files.json" && !f.includes("asyncify"));
writeFileSync(`${out}/files.json`, JSON.stringify(files.sort(), null, 1));
// The cooking assistant's web app serves the client from lib/ (git-ignored).
const app = "../../examples/cooking_assistant/web/lib";
rmSync(app, { recursive: true, force: true });
cpSync(out, app, { recursive: true });
console.log(`built ${out}/malm-web.js and ${out}/ort/, copied to ${app}`);
