// Exact cosine search over the recipe vectors, and the re-ranking the Python SDK does
// (malm/edge_index/rerank.py, malm/sdk/retriever.py: `_rank`).

export function float16ToFloat32(src: Uint16Array): Float32Array {
  const out = new Float32Array(src.length);
  const table = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, m = h & 0x3ff;
    table[h] = e === 0 ? s * m * 2 ** -24 : e === 31 ? (m ? NaN : s * Infinity) : s * (1 + m / 1024) * 2 ** (e - 15);
  }
  for (let i = 0; i < src.length; i++) out[i] = table[src[i]];
  return out;
}

export function l2normalize(x: Float32Array): Float32Array {
  let n = 0;
  for (let i = 0; i < x.length; i++) n += x[i] * x[i];
  // malm.vectors.l2_normalize: x / max(||x||, eps)
  const norm = Math.max(Math.fround(Math.sqrt(n)), 1e-12);
  return x.map((v) => Math.fround(v / norm));
}

export interface Scored {
  row: number;
  score: number;
}

/** The k best rows by cosine (vectors are unit rows), best first; ties by lower label, as Python's exact path. */
export function topK(vectors: Float32Array, dim: number, q: Float32Array, k: number, skip: Uint8Array | null,
  labels: Int32Array): Scored[] {
  const n = vectors.length / dim;
  const best: Scored[] = [];
  let worst = -Infinity;
  for (let r = 0; r < n; r++) {
    if (skip && skip[r]) continue;
    let s = 0;
    const o = r * dim;
    for (let d = 0; d < dim; d++) s += vectors[o + d] * q[d];
    s = Math.fround(s);
    if (best.length >= k && s < worst) continue;
    best.push({ row: r, score: s });
    if (best.length > k * 4 + 16) {
      best.sort((a, b) => b.score - a.score || labels[a.row] - labels[b.row]);
      best.length = k;
      worst = best[k - 1].score;
    }
  }
  best.sort((a, b) => b.score - a.score || labels[a.row] - labels[b.row]);
  return best.slice(0, k);
}

/** Unit rows of `x` ([n, dim]) as malm.edge_index.rerank._unit: x / max(||x||, 1e-12), in float32. */
export function unitRows(x: Float32Array, dim: number): Float32Array {
  const out = new Float32Array(x.length);
  for (let o = 0; o < x.length; o += dim) {
    let n = 0;
    for (let d = 0; d < dim; d++) n += x[o + d] * x[o + d];
    const norm = Math.max(Math.fround(Math.sqrt(n)), 1e-12);
    for (let d = 0; d < dim; d++) out[o + d] = Math.fround(x[o + d] / norm);
  }
  return out;
}

function dot(a: Float32Array, ao: number, b: Float32Array, bo: number, dim: number): number {
  // Four partial sums: V8 keeps them in registers and overlaps the multiplies (about 2x a plain loop).
  let s0 = 0, s1 = 0, s2 = 0, s3 = 0, d = 0;
  for (; d + 3 < dim; d += 4) {
    s0 += a[ao + d] * b[bo + d];
    s1 += a[ao + d + 1] * b[bo + d + 1];
    s2 += a[ao + d + 2] * b[bo + d + 2];
    s3 += a[ao + d + 3] * b[bo + d + 3];
  }
  for (; d < dim; d++) s0 += a[ao + d] * b[bo + d];
  return s0 + s1 + s2 + s3;
}

/**
 * Mean over the photo's patches of the best cosine among each recipe's tokens; 0 for no tokens.
 * `unitRecipes`: the recipes' token rows are already unit rows (the client normalises the bundle's once at load).
 */
export function lateInteraction(image: Float32Array, dim: number, recipes: Float32Array[], unitRecipes = false): Float32Array {
  const img = unitRows(image, dim);
  const p = img.length / dim;
  const out = new Float32Array(recipes.length);
  recipes.forEach((tok, i) => {
    const s = tok.length / dim;
    if (s === 0) return;
    const t = unitRecipes ? tok : unitRows(tok, dim);
    let total = 0;
    for (let a = 0; a < p; a++) {
      let best = -Infinity;
      for (let b = 0; b < s; b++) {
        const v = dot(img, a * dim, t, b * dim, dim);
        if (v > best) best = v;
      }
      total += Math.fround(best);
    }
    out[i] = total / p;
  });
  return out;
}

/** (1 - w) * global + w * local in float32, as malm.edge_index.rerank.fuse. */
export function fuse(global: Float32Array, local: Float32Array, weight: number): Float32Array {
  const f = Math.fround, w = f(weight), w1 = f(1 - weight);
  return global.map((g, i) => f(f(w1 * g) + f(w * local[i])));
}
