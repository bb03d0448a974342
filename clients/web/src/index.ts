// malm in the browser: photo in, recipes out, from a web bundle (`malm bundle web`), offline once fetched.
//
//   import { Retriever } from "./malm-web.js";
//   const r = await Retriever.load("bundle/");
//   const hits = await r.search(file, { k: 5, excludeIngredients: ["peanut"] });
//
// Same answers as the Python SDK's `Retriever` (malm/sdk/retriever.py) with the same image variant:
// preprocessing is Pillow's arithmetic (pillow.ts), search is exact over the float16/int8 vectors, and
// re-ranking fuses the local score exactly as Python does.

import type * as OrtTypes from "onnxruntime-web";
import { BundleError, IntegrityError, type WebManifest, WebBundle } from "./bundle.js";
import { ImageError, type PhotoInput, preprocess } from "./preprocess.js";
import { float16ToFloat32, fuse, l2normalize, lateInteraction, type Scored, topK, unitRows } from "./search.js";
import { encodeRecipe, ingredientNames, nameWords, tokenize, cleanText, Vocabulary } from "./text.js";

export { BundleError, cleanText, encodeRecipe, ImageError, IntegrityError, lateInteraction, nameWords, preprocess, tokenize, unitRows,
  topK, Vocabulary, WebBundle };
export type { PhotoInput, WebManifest };

type Ort = typeof OrtTypes;
export type Backend = "auto" | "wasm" | "webgpu";

export interface LoadOptions {
  /** Where onnxruntime-web's .wasm/.mjs files are served (default: `ort/` beside this script). */
  wasmPaths?: string;
  /** "wasm" (default), "webgpu", or "auto": WebGPU when the browser has a hardware adapter. */
  backend?: Backend;
  /** WASM threads (needs cross-origin isolation for > 1; default 1). */
  threads?: number;
  /** Image variant to run, e.g. "image_int8" (default: the bundle's default_encoder). */
  encoder?: string;
  /** onnxruntime-web's graph optimisation level (default "all"). */
  graphOptimization?: "disabled" | "basic" | "extended" | "all";
}

export interface SearchOptions {
  k?: number;
  rerank?: boolean;
  excludeIngredients?: string[];
}

export interface Hit {
  rank: number;
  recipe_id: string;
  title: string;
  score: number;
  ingredients: string[];
  instructions: string[];
  url: string;
}

export interface NewRecipe {
  title: string;
  ingredients: string[];
  instructions?: string[];
  url?: string;
  id?: string;
}

export interface Timings {
  decode_ms: number;
  encode_ms: number;
  search_ms: number;
  rerank_ms: number;
}

interface RecipeRow {
  label: number;
  id: string;
  title: string;
  ingredients: string[];
  instructions: string[];
  url: string;
  names: string[];
}

interface Rerank {
  kind: "late_interaction" | "matching_head";
  weight: number;
  candidates: number;
  dim: number;
  tokens: Float32Array;
  offsets: Uint32Array; // grows when recipes are added (they own no token rows)
  head: OrtTypes.InferenceSession | null;
  takesPatches: boolean;
  imageTokens: number | null;
}

const ortModules: Partial<Record<"wasm" | "webgpu", Promise<Ort>>> = {};

function scriptBase(): string {
  try {
    return new URL(".", import.meta.url).href;
  } catch {
    return "./";
  }
}

async function loadOrt(backend: "wasm" | "webgpu", opts: LoadOptions): Promise<Ort> {
  ortModules[backend] ??= (backend === "webgpu" ? import("onnxruntime-web/webgpu") : import("onnxruntime-web/wasm")) as Promise<Ort>;
  const ort = await ortModules[backend]!;
  ort.env.wasm.wasmPaths = opts.wasmPaths ?? `${scriptBase()}ort/`;
  ort.env.wasm.numThreads = opts.threads ?? 1;
  ort.env.logLevel = "error";
  return ort;
}

async function pickBackend(wanted: Backend): Promise<"wasm" | "webgpu"> {
  if (wanted !== "auto") return wanted;
  const gpu = (navigator as Navigator & { gpu?: { requestAdapter(): Promise<{ info?: { isFallbackAdapter?: boolean } } | null> } }).gpu;
  if (!gpu) return "wasm";
  try {
    const adapter = await gpu.requestAdapter();
    return adapter && !adapter.info?.isFallbackAdapter ? "webgpu" : "wasm";
  } catch {
    return "wasm";
  }
}

interface RecipeEncoder {
  session: OrtTypes.InferenceSession;
  vocab: Vocabulary;
}

export class Retriever {
  private excludedCache = new Map<string, Uint8Array>();
  private recipeEncoder: Promise<RecipeEncoder> | null = null;

  private constructor(
    readonly bundle: WebBundle,
    private readonly ort: Ort,
    private readonly session: OrtTypes.InferenceSession,
    readonly encoder: string,
    readonly backend: "wasm" | "webgpu",
    private vectors: Float32Array,
    private readonly recipes: RecipeRow[],
    private labels: Int32Array,
    private readonly rerankData: Rerank | null,
    readonly loadMs: number,
  ) {}

  /** Fetch the web bundle at `url`, check every file's sha256, and start the image encoder. */
  static async load(url: string, opts: LoadOptions = {}): Promise<Retriever> {
    const t0 = performance.now();
    const bundle = await WebBundle.open(url);
    const m = bundle.manifest;
    const name = opts.encoder ?? m.default_encoder;
    const entry = m.encoders[name];
    if (!entry) throw new BundleError(`web bundle ${bundle.base}: no encoder ${name} (has ${Object.keys(m.encoders).join(", ")})`);
    const backend = await pickBackend(opts.backend ?? "wasm");
    const ortP = loadOrt(backend, opts);
    // The encoder session (which also fetches and compiles the WASM runtime) starts as soon as its file is
    // verified, while the vectors and records are fetched and hashed.
    const sessionP = Promise.all([ortP, bundle.file(entry.file)])
      .then(([ort, model]) => createSession(ort, model, backend, `${bundle.base}${entry.file}`, opts.graphOptimization));
    const [session, vecBytes, scaleBytes, recipeBytes] = await Promise.all([sessionP, bundle.file(m.vectors.file),
      m.vectors.scales ? bundle.file(m.vectors.scales) : Promise.resolve(null), bundle.file(m.recipes.file)]);
    const ort = await ortP;
    const vectors = decodeVectors(m, vecBytes, scaleBytes, bundle.base);
    const recipes = JSON.parse(new TextDecoder().decode(recipeBytes)) as RecipeRow[];
    if (!Array.isArray(recipes) || recipes.length !== m.vectors.count) {
      throw new BundleError(`web bundle ${bundle.base}: recipes.json has ${recipes.length} records, vectors ${m.vectors.count}`);
    }
    const labels = Int32Array.from(recipes, (r) => r.label);
    const rerank = m.rerank && entry.tokens ? await loadRerank(ort, bundle, backend) : null;
    return new Retriever(bundle, ort, session, name, backend, vectors, recipes, labels, rerank, performance.now() - t0);
  }

  get size(): number {
    return this.recipes.length;
  }

  /** Whether the web bundle carries a recipe encoder (and its vocabulary) to add recipes here. */
  get canAdd(): boolean {
    return this.bundle.manifest.recipe_encoder !== undefined;
  }

  /** Token ids of a recipe as the Python SDK's tokenizer gives them (malm.text.encode_recipe). */
  async tokenizeRecipe(r: NewRecipe): Promise<{ title: Int32Array; ingredients: Int32Array; instructions: Int32Array }> {
    const enc = await this.loadRecipeEncoder();
    return encodeRecipe(r.title, r.ingredients, r.instructions ?? [], enc.vocab, this.bundle.manifest.recipe_encoder!.limits);
  }

  /** The recipe's L2-normalised embedding by the bundle's recipe encoder. */
  async embedRecipe(r: NewRecipe): Promise<Float32Array> {
    const enc = await this.loadRecipeEncoder();
    const lim = this.bundle.manifest.recipe_encoder!.limits;
    const ids = await this.tokenizeRecipe(r);
    const T = this.ort.Tensor;
    const i64 = (a: Int32Array) => BigInt64Array.from(a, (v) => BigInt(v));
    const out = await enc.session.run({
      title: new T("int64", i64(ids.title), [1, lim.max_title_tokens]),
      ingredients: new T("int64", i64(ids.ingredients), [1, lim.max_ingredients, lim.max_tokens]),
      instructions: new T("int64", i64(ids.instructions), [1, lim.max_instructions, lim.max_tokens]),
    }, ["embedding"]);
    return l2normalize(Float32Array.from(out.embedding.data as Float32Array));
  }

  /**
   * Add recipes to this retriever (in memory: a reload starts from the web bundle again). They are searched
   * and filtered like the bundle's own; without recipe tokens, re-ranking keeps their global score.
   */
  async addRecipes(records: NewRecipe[]): Promise<string[]> {
    if (!this.canAdd) throw new BundleError(`web bundle ${this.bundle.base}: has no recipe encoder to add recipes with`);
    const units = new Set(this.bundle.manifest.names?.units ?? []);
    const dim = this.bundle.manifest.embedding.dim;
    const ids: string[] = [];
    for (const r of records) {
      if (!r.title?.trim() || !r.ingredients?.some((i) => i.trim())) throw new Error("a recipe needs a title and ingredients");
      const emb = await this.embedRecipe(r);
      const grown = new Float32Array(this.vectors.length + dim);
      grown.set(this.vectors);
      grown.set(emb, this.vectors.length);
      this.vectors = grown;
      const label = this.recipes.reduce((m, x) => Math.max(m, x.label), -1) + 1;
      const id = r.id ?? `user-${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;
      this.recipes.push({ label, id, title: r.title.trim(), ingredients: r.ingredients.filter((i) => i.trim()),
        instructions: (r.instructions ?? []).filter((s) => s.trim()), url: r.url ?? "",
        names: ingredientNames(r.ingredients, units) });
      this.labels = Int32Array.from(this.recipes, (x) => x.label);
      if (this.rerankData) {
        const o = this.rerankData.offsets;
        const grownOffsets = new Uint32Array(o.length + 1);
        grownOffsets.set(o);
        grownOffsets[o.length] = o[o.length - 1];
        this.rerankData.offsets = grownOffsets;
      }
      ids.push(id);
    }
    this.excludedCache.clear();
    return ids;
  }

  private loadRecipeEncoder(): Promise<RecipeEncoder> {
    const re = this.bundle.manifest.recipe_encoder;
    if (!re) return Promise.reject(new BundleError(`web bundle ${this.bundle.base}: has no recipe encoder`));
    this.recipeEncoder ??= (async () => {
      const [model, vocab] = await Promise.all([this.bundle.file(re.file), this.bundle.file(re.vocab)]);
      const words = (JSON.parse(new TextDecoder().decode(vocab)) as { words: string[] }).words;
      return { session: await createSession(this.ort, model, "wasm", `${this.bundle.base}${re.file}`),
        vocab: new Vocabulary(words) };
    })();
    return this.recipeEncoder;
  }

  get canRerank(): boolean {
    return this.rerankData !== null;
  }

  info(): Record<string, unknown> {
    const m = this.bundle.manifest;
    return {
      bundle: this.bundle.base, recipes: this.recipes.length, dim: m.embedding.dim, encoder: this.encoder,
      precision: m.encoders[this.encoder].precision, backend: this.backend, vectors: m.vectors.dtype,
      rerank: this.canRerank, can_add: this.canAdd, rerank_kind: m.rerank?.kind ?? null, rerank_default: m.rerank?.default ?? false,
      malm_version: m.malm_version, created: m.created, source_manifest_sha256: m.source?.manifest_sha256 ?? null,
      verification: { mode: "full", files: Object.keys(this.bundle.fetched).length, bytes: sum(Object.values(this.bundle.fetched)) },
      load_ms: Math.round(this.loadMs),
    };
  }

  /** L2-normalised embedding [dim] of a photo (and the patch tokens when `tokens`). */
  async embed(photo: PhotoInput, tokens = false): Promise<{ embedding: Float32Array; tokens: Float32Array | null; tokenShape: number[] | null; decodeMs: number; encodeMs: number }> {
    const cfg = this.bundle.manifest.preprocess;
    const t0 = performance.now();
    const pixels = await preprocess(photo, cfg);
    const t1 = performance.now();
    const input = new this.ort.Tensor("float32", pixels, [1, 3, cfg.size, cfg.size]);
    const names = tokens ? ["embedding", "tokens"] : ["embedding"];
    const out = await this.session.run({ image: input }, names);
    const emb = l2normalize(out.embedding.data as Float32Array);
    const tok = tokens ? (out.tokens.data as Float32Array) : null;
    return { embedding: emb, tokens: tok, tokenShape: tokens ? out.tokens.dims.slice(1) as number[] : null,
      decodeMs: t1 - t0, encodeMs: performance.now() - t1 };
  }

  /** The top-k recipes for one photo. Rejects with ImageError when the photo cannot be read. */
  async search(photo: PhotoInput, opts: SearchOptions = {}): Promise<Hit[]> {
    return (await this.searchTimed(photo, opts)).hits;
  }

  async searchTimed(photo: PhotoInput, opts: SearchOptions = {}): Promise<{ hits: Hit[]; timings: Timings }> {
    const k = opts.k ?? 10;
    if (!Number.isInteger(k) || k < 1) throw new Error(`k must be >= 1, got ${k}`);
    const rerank = opts.rerank ?? false;
    if (rerank && !this.rerankData) {
      throw new Error("this web bundle has no re-ranking data (or its image encoder gives no tokens); search without rerank");
    }
    const skip = this.excluded(opts.excludeIngredients ?? []);
    const e = await this.embed(photo, rerank);
    const t0 = performance.now();
    const rr = rerank ? this.rerankData : null;
    const nCand = rr ? Math.max(k, rr.candidates) : k;
    let found = topK(this.vectors, this.bundle.manifest.embedding.dim, e.embedding, nCand, skip, this.labels);
    const t1 = performance.now();
    if (rr && e.tokens && e.tokenShape && found.length) found = await this.rerankHits(rr, e.tokens, e.tokenShape, found);
    const t2 = performance.now();
    const hits = found.slice(0, k).map((f, i) => {
      const r = this.recipes[f.row];
      return { rank: i + 1, recipe_id: r.id, title: r.title, score: f.score, ingredients: r.ingredients,
        instructions: r.instructions, url: r.url };
    });
    return { hits, timings: { decode_ms: e.decodeMs, encode_ms: e.encodeMs, search_ms: t1 - t0, rerank_ms: t2 - t1 } };
  }

  /** Rows whose ingredient names contain any of `terms` (malm.edge_index.store.labels_with_ingredient). */
  private excluded(terms: string[]): Uint8Array | null {
    if (!terms.length) return null;
    const skip = new Uint8Array(this.recipes.length);
    for (const term of terms) {
      let rows = this.excludedCache.get(term);
      if (!rows) {
        const words = nameWords(term);
        if (!words.length) throw new Error(`ingredient filter ${JSON.stringify(term)}: no words to match`);
        const phrase = ` ${words.join(" ")} `;
        rows = new Uint8Array(this.recipes.length);
        this.recipes.forEach((r, i) => {
          if (words.length === 1) {
            rows![i] = r.names.some((n) => n.split(" ").includes(words[0])) ? 1 : 0;
          } else {
            rows![i] = r.names.some((n) => ` ${n} `.includes(phrase)) ? 1 : 0;
          }
        });
        this.excludedCache.set(term, rows);
      }
      for (let i = 0; i < rows.length; i++) skip[i] |= rows[i];
    }
    return skip;
  }

  private async rerankHits(rr: Rerank, tokens: Float32Array, shape: number[], found: Scored[]): Promise<Scored[]> {
    const per = found.map((f) => rr.tokens.subarray(rr.offsets[f.row] * rr.dim, rr.offsets[f.row + 1] * rr.dim));
    const global = Float32Array.from(found, (f) => f.score);
    let local: Float32Array;
    if (rr.kind === "late_interaction") {
      if (shape[1] !== rr.dim) throw new Error(`image tokens have width ${shape[1]}, the bundle's recipe tokens ${rr.dim}: re-ranking cannot compare them`);
      local = lateInteraction(tokens, rr.dim, per, true);
    } else {
      local = await this.headScores(rr, tokens, shape, per);
    }
    // Recipes without token features keep their global score instead of a local 0.
    local = local.map((v, i) => (per[i].length > 0 ? v : global[i]));
    const fused = fuse(global, local, rr.weight);
    const order = found.map((_, i) => i).sort((a, b) => fused[b] - fused[a] || a - b); // stable
    return order.map((i) => ({ row: found[i].row, score: fused[i] }));
  }

  private async headScores(rr: Rerank, tokens: Float32Array, shape: number[], per: Float32Array[]): Promise<Float32Array> {
    const [p, wi] = shape;
    let img = tokens, nTok = p;
    if (!rr.takesPatches && (rr.imageTokens === null || rr.imageTokens === p + 1)) {
      // The head reads [CLS] + patches; the encoder gives patches only: their mean stands in for [CLS].
      img = new Float32Array((p + 1) * wi);
      for (let a = 0; a < p; a++) for (let d = 0; d < wi; d++) img[d] += tokens[a * wi + d];
      for (let d = 0; d < wi; d++) img[d] = Math.fround(img[d] / p);
      img.set(tokens, wi);
      nTok = p + 1;
    }
    if (rr.imageTokens !== null && rr.imageTokens !== nTok) {
      throw new Error(`matching head expects ${rr.imageTokens} image tokens, the image encoder gives ${p}`);
    }
    const n = per.length, s = Math.max(1, ...per.map((t) => t.length / rr.dim));
    const image = new Float32Array(n * nTok * wi);
    for (let i = 0; i < n; i++) image.set(img, i * nTok * wi);
    const rec = new Float32Array(n * s * rr.dim);
    const mask = new Uint8Array(n * s);
    per.forEach((t, i) => {
      rec.set(t, i * s * rr.dim);
      mask.fill(1, i * s, i * s + t.length / rr.dim);
    });
    const T = this.ort.Tensor;
    const out = await rr.head!.run({ image_tokens: new T("float32", image, [n, nTok, wi]),
      recipe_tokens: new T("float32", rec, [n, s, rr.dim]), recipe_mask: new T("bool", mask, [n, s]) }, ["score"]);
    return Float32Array.from(out.score.data as Float32Array);
  }
}

async function createSession(ort: Ort, model: ArrayBuffer, backend: "wasm" | "webgpu", name: string,
  level: LoadOptions["graphOptimization"] = "all"): Promise<OrtTypes.InferenceSession> {
  try {
    return await ort.InferenceSession.create(new Uint8Array(model), {
      executionProviders: backend === "webgpu" ? ["webgpu", "wasm"] : ["wasm"], graphOptimizationLevel: level,
    });
  } catch (e) {
    throw new BundleError(`model ${name}: onnxruntime-web cannot load it (${String(e)})`);
  }
}

function decodeVectors(m: WebManifest, data: ArrayBuffer, scales: ArrayBuffer | null, base: string): Float32Array {
  const { count, dim, dtype } = m.vectors;
  const need = count * dim * (dtype === "float16" ? 2 : 1);
  if (data.byteLength !== need) throw new BundleError(`web bundle ${base}: vectors file has ${data.byteLength} bytes, expected ${need}`);
  if (dtype === "float16") return float16ToFloat32(new Uint16Array(data));
  if (!scales || scales.byteLength !== count * 4) throw new BundleError(`web bundle ${base}: int8 vectors need ${count} float32 scales`);
  const q = new Int8Array(data), s = new Float32Array(scales), out = new Float32Array(count * dim);
  for (let r = 0; r < count; r++) for (let d = 0; d < dim; d++) out[r * dim + d] = q[r * dim + d] * s[r];
  return out;
}

async function loadRerank(ort: Ort, bundle: WebBundle, backend: "wasm" | "webgpu"): Promise<Rerank> {
  const rs = bundle.manifest.rerank!;
  const [tok, off, head] = await Promise.all([bundle.file(rs.tokens), bundle.file(rs.offsets),
    rs.model ? bundle.file(rs.model) : Promise.resolve(null)]);
  const offsets = new Uint32Array(off);
  // Late interaction compares unit rows: normalise the recipes' once here, not per query (same float32 values).
  const raw = float16ToFloat32(new Uint16Array(tok));
  const tokens = rs.kind === "late_interaction" ? unitRows(raw, rs.dim) : raw;
  if (offsets.length !== bundle.manifest.vectors.count + 1 || offsets[offsets.length - 1] * rs.dim !== tokens.length) {
    throw new BundleError(`web bundle ${bundle.base}: re-rank offsets do not match the token rows`);
  }
  return { kind: rs.kind, weight: rs.weight, candidates: rs.candidates, dim: rs.dim, tokens, offsets,
    head: head ? await createSession(ort, head, backend, `${bundle.base}${rs.model}`) : null,
    takesPatches: rs.takes_patches ?? false, imageTokens: rs.image_tokens ?? null };
}

function sum(xs: number[]): number {
  return xs.reduce((a, b) => a + b, 0);
}
