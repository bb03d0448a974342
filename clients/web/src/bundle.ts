// A web bundle (`malm bundle web`): the manifest, and every file fetched then checked against its sha256.

export class IntegrityError extends Error {
  override name = "IntegrityError";
}

export class BundleError extends Error {
  override name = "BundleError";
}

export interface FileEntry {
  sha256: string;
  bytes: number;
}

export interface WebManifest {
  format: "malm-web-bundle";
  format_version: number;
  created: string;
  malm_version: string | null;
  preprocess: import("./preprocess.js").PreprocessConfig;
  embedding: { dim: number; metric: string };
  encoders: Record<string, { file: string; role: string; precision: string; tokens: boolean }>;
  default_encoder: string;
  vectors: { file: string; dtype: "float16" | "int8"; count: number; dim: number; scales?: string };
  recipes: { file: string; count: number };
  rerank?: {
    kind: "late_interaction" | "matching_head";
    weight: number;
    candidates: number;
    default: boolean;
    dim: number;
    tokens: string;
    offsets: string;
    model?: string;
    takes_patches?: boolean;
    image_tokens?: number | null;
  };
  source?: { manifest: string; manifest_sha256: string; signatures: string[] };
  recipe_encoder?: { file: string; precision: string; vocab: string; outputs: string[];
    limits: import("./text.js").TextLimits };
  names?: { units: string[] };
  files: Record<string, FileEntry>;
}

export const WEB_FORMAT = "malm-web-bundle";
export const WEB_FORMAT_VERSION = 1;

function hex(buf: ArrayBuffer): string {
  return Array.from(new Uint8Array(buf), (b) => b.toString(16).padStart(2, "0")).join("");
}

export class WebBundle {
  /** Bytes fetched so far, by file (what went over the wire is the server's compression of these). */
  readonly fetched: Record<string, number> = {};

  private constructor(readonly base: string, readonly manifest: WebManifest) {}

  static async open(url: string, init?: RequestInit): Promise<WebBundle> {
    const base = new URL(url.endsWith("/") ? url : `${url}/`, globalThis.location?.href).href;
    let res: Response;
    try {
      res = await fetch(`${base}manifest.json`, init);
    } catch (e) {
      throw new BundleError(`web bundle ${base}: manifest.json cannot be fetched (${String(e)})`);
    }
    if (!res.ok) throw new BundleError(`web bundle ${base}: manifest.json: HTTP ${res.status}`);
    let m: WebManifest;
    try {
      m = (await res.json()) as WebManifest;
    } catch (e) {
      throw new BundleError(`web bundle ${base}: manifest.json is not JSON (${String(e)})`);
    }
    validate(m, base);
    return new WebBundle(base, m);
  }

  /** The file's bytes, after its sha256 matched the manifest's; refuses an unlisted or tampered file. */
  async file(rel: string): Promise<ArrayBuffer> {
    const entry = this.manifest.files[rel];
    if (!entry) throw new IntegrityError(`web bundle ${this.base}: ${rel} is not listed (and hashed) in the manifest`);
    const res = await fetch(new URL(rel, this.base).href);
    if (!res.ok) throw new BundleError(`web bundle ${this.base}: ${rel}: HTTP ${res.status}`);
    const data = await res.arrayBuffer();
    if (data.byteLength !== entry.bytes) {
      throw new IntegrityError(`web bundle ${this.base}: ${rel} has ${data.byteLength} bytes, the manifest says ` +
        `${entry.bytes}: tampered or truncated, refusing it`);
    }
    const digest = hex(await crypto.subtle.digest("SHA-256", data));
    if (digest !== entry.sha256) {
      throw new IntegrityError(`web bundle ${this.base}: ${rel} sha256 ${digest} does not match the manifest ` +
        `(${entry.sha256}): tampered or corrupted, refusing it`);
    }
    this.fetched[rel] = data.byteLength;
    return data;
  }
}

function validate(m: WebManifest, base: string): void {
  const bad = (what: string) => new BundleError(`web bundle ${base}: ${what}`);
  if (!m || typeof m !== "object" || m.format !== WEB_FORMAT) throw bad("manifest.json is not a malm web bundle manifest");
  if (m.format_version !== WEB_FORMAT_VERSION) {
    throw bad(`format version ${String(m.format_version)} is not supported (expects ${WEB_FORMAT_VERSION})`);
  }
  if (!m.files || typeof m.files !== "object") throw bad("manifest has no 'files'");
  for (const [rel, e] of Object.entries(m.files)) {
    if (!e || !/^[0-9a-f]{64}$/.test(e.sha256) || !Number.isInteger(e.bytes) || e.bytes < 0) {
      throw bad(`manifest entry for ${rel} needs 'sha256' (64 hex digits) and 'bytes'`);
    }
    if (rel.startsWith("/") || rel.split("/").includes("..") || /^[a-z]+:/i.test(rel)) {
      throw bad(`manifest file ${rel} is outside the bundle`);
    }
  }
  const v = m.vectors;
  if (!v || !Number.isInteger(v.count) || !Number.isInteger(v.dim) || v.dim !== m.embedding?.dim) {
    throw bad("manifest 'vectors' is missing or disagrees with 'embedding.dim'");
  }
  if (v.dtype !== "float16" && v.dtype !== "int8") throw bad(`vectors dtype ${String(v.dtype)} is not float16 or int8`);
  if (!m.encoders?.[m.default_encoder]) throw bad(`default encoder ${m.default_encoder} is not in 'encoders'`);
  const p = m.preprocess;
  if (!p || !Number.isInteger(p.size) || !Number.isInteger(p.resize) || p.resize < p.size || p.size <= 0 ||
      p.mean?.length !== 3 || p.std?.length !== 3) {
    throw bad("bad preprocess config in the manifest");
  }
}
