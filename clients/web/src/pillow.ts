// Pillow's image operations that malm.preprocess uses, ported to the integer arithmetic Pillow does
// (libImaging/Resample.c, AlphaComposite.c, Geometry.c), so the browser computes the same pixels.
//
// Images here are packed RGB: { width, height, data: Uint8Array of width * height * 3 }.

export interface Rgb {
  width: number;
  height: number;
  data: Uint8Array;
}

export type Interpolation = "nearest" | "bilinear" | "bicubic" | "lanczos";

interface Filter {
  support: number;
  f: (x: number) => number;
}

function sinc(x: number): number {
  if (x === 0.0) return 1.0;
  x = x * Math.PI;
  return Math.sin(x) / x;
}

const FILTERS: Record<Exclude<Interpolation, "nearest">, Filter> = {
  bilinear: { support: 1.0, f: (x) => { if (x < 0.0) x = -x; return x < 1.0 ? 1.0 - x : 0.0; } },
  bicubic: {
    support: 2.0,
    f: (x) => {
      const a = -0.5;
      if (x < 0.0) x = -x;
      if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
      if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
      return 0.0;
    },
  },
  lanczos: { support: 3.0, f: (x) => (-3.0 <= x && x < 3.0 ? sinc(x) * sinc(x / 3) : 0.0) },
};

const PRECISION_BITS = 32 - 8 - 2;
const ONE = 1 << PRECISION_BITS;

interface Coeffs {
  ksize: number;
  bounds: Int32Array; // [xmin, count] per output pixel
  kk: Int32Array; // fixed-point weights, ksize per output pixel
}

// precompute_coeffs + normalize_coeffs_8bpc
function coefficients(inSize: number, in0: number, in1: number, outSize: number, filter: Filter): Coeffs {
  const scale = (in1 - in0) / outSize;
  const filterscale = scale < 1.0 ? 1.0 : scale;
  const support = filter.support * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const kk = new Int32Array(outSize * ksize);
  const k = new Float64Array(ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = in0 + (xx + 0.5) * scale;
    const ss = 1.0 / filterscale;
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    let ww = 0.0;
    for (let x = 0; x < xmax; x++) {
      const w = filter.f((x + xmin - center + 0.5) * ss);
      k[x] = w;
      ww += w;
    }
    for (let x = 0; x < ksize; x++) {
      let w = x < xmax ? (ww !== 0.0 ? k[x] / ww : k[x]) : 0;
      kk[xx * ksize + x] = w < 0 ? Math.trunc(-0.5 + w * ONE) : Math.trunc(0.5 + w * ONE);
      w = 0;
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { ksize, bounds, kk };
}

function clip8(v: number): number {
  if (v >= ONE * 256) return 255;
  if (v <= 0) return 0;
  return Math.floor(v / ONE);
}

function horizontal(src: Rgb, yFirst: number, rows: number, outW: number, c: Coeffs): Rgb {
  const out = new Uint8Array(outW * rows * 3);
  const { ksize, bounds, kk } = c;
  const half = 1 << (PRECISION_BITS - 1);
  for (let yy = 0; yy < rows; yy++) {
    const rowIn = (yy + yFirst) * src.width * 3;
    for (let xx = 0; xx < outW; xx++) {
      const xmin = bounds[xx * 2], n = bounds[xx * 2 + 1], kb = xx * ksize;
      let s0 = half, s1 = half, s2 = half;
      for (let x = 0; x < n; x++) {
        const p = rowIn + (x + xmin) * 3, w = kk[kb + x];
        s0 += src.data[p] * w;
        s1 += src.data[p + 1] * w;
        s2 += src.data[p + 2] * w;
      }
      const o = (yy * outW + xx) * 3;
      out[o] = clip8(s0);
      out[o + 1] = clip8(s1);
      out[o + 2] = clip8(s2);
    }
  }
  return { width: outW, height: rows, data: out };
}

function vertical(src: Rgb, outH: number, c: Coeffs, shift: number): Rgb {
  const w = src.width;
  const out = new Uint8Array(w * outH * 3);
  const { ksize, bounds, kk } = c;
  const half = 1 << (PRECISION_BITS - 1);
  for (let yy = 0; yy < outH; yy++) {
    const ymin = bounds[yy * 2] - shift, n = bounds[yy * 2 + 1], kb = yy * ksize;
    for (let xx = 0; xx < w; xx++) {
      let s0 = half, s1 = half, s2 = half;
      for (let y = 0; y < n; y++) {
        const p = ((y + ymin) * w + xx) * 3, k = kk[kb + y];
        s0 += src.data[p] * k;
        s1 += src.data[p + 1] * k;
        s2 += src.data[p + 2] * k;
      }
      const o = (yy * w + xx) * 3;
      out[o] = clip8(s0);
      out[o + 1] = clip8(s1);
      out[o + 2] = clip8(s2);
    }
  }
  return { width: w, height: outH, data: out };
}

// ImagingScaleAffine (Image.resize with NEAREST): source pixel of each output pixel, in doubles as Pillow.
function nearest(src: Rgb, outW: number, outH: number): Rgb {
  const out = new Uint8Array(outW * outH * 3);
  const ax = src.width / outW, ay = src.height / outH;
  const coord = (v: number) => (v < 0.0 ? -1 : Math.trunc(v));
  const xin = new Int32Array(outW);
  let xo = ax * 0.5;
  for (let x = 0; x < outW; x++, xo += ax) xin[x] = Math.min(Math.max(coord(xo), 0), src.width - 1);
  let yo = ay * 0.5;
  for (let y = 0; y < outH; y++, yo += ay) {
    const yi = Math.min(Math.max(coord(yo), 0), src.height - 1);
    for (let x = 0; x < outW; x++) {
      const p = (yi * src.width + xin[x]) * 3, o = (y * outW + x) * 3;
      out[o] = src.data[p];
      out[o + 1] = src.data[p + 1];
      out[o + 2] = src.data[p + 2];
    }
  }
  return { width: outW, height: outH, data: out };
}

/** `Image.resize((w, h), filter)` of an RGB image (box = the whole image, no reducing_gap). */
export function resize(src: Rgb, outW: number, outH: number, interpolation: Interpolation): Rgb {
  if (outW === src.width && outH === src.height) return src;
  if (interpolation === "nearest") return nearest(src, outW, outH);
  const filter = FILTERS[interpolation];
  if (!filter) throw new Error(`preprocess: unknown interpolation ${String(interpolation)}`);
  const needH = outW !== src.width, needV = outH !== src.height;
  const horiz = coefficients(src.width, 0, src.width, outW, filter);
  const vert = coefficients(src.height, 0, src.height, outH, filter);
  // Only the source rows the vertical pass reads go through the horizontal pass (as Pillow does).
  const yFirst = vert.bounds[0];
  const yLast = vert.bounds[outH * 2 - 2] + vert.bounds[outH * 2 - 1];
  let img = src;
  let shift = 0;
  if (needH) {
    img = horizontal(src, yFirst, yLast - yFirst, outW, horiz);
    shift = yFirst;
  }
  if (needV) img = vertical(img, outH, vert, shift);
  return img;
}

/** `Image.alpha_composite(background, rgba).convert("RGB")`: Pillow's fixed-point blend over an opaque colour. */
export function compositeOn(rgba: Uint8ClampedArray | Uint8Array, width: number, height: number,
  background: number[] = [255, 255, 255]): Rgb {
  const n = width * height;
  const out = new Uint8Array(n * 3);
  const PB = 7;
  for (let i = 0; i < n; i++) {
    const a = rgba[i * 4 + 3];
    if (a === 255) {
      out[i * 3] = rgba[i * 4];
      out[i * 3 + 1] = rgba[i * 4 + 1];
      out[i * 3 + 2] = rgba[i * 4 + 2];
      continue;
    }
    if (a === 0) {
      out[i * 3] = background[0];
      out[i * 3 + 1] = background[1];
      out[i * 3 + 2] = background[2];
      continue;
    }
    const blend = 255 * (255 - a);
    const outa255 = a * 255 + blend;
    const coef1 = Math.trunc((a * 255 * 255 * (1 << PB)) / outa255);
    const coef2 = 255 * (1 << PB) - coef1;
    for (let ch = 0; ch < 3; ch++) {
      const t = rgba[i * 4 + ch] * coef1 + background[ch] * coef2 + (0x80 << PB);
      out[i * 3 + ch] = ((((t >> 8) + t) >> 8) >> PB) & 255;
    }
  }
  return { width, height, data: out };
}

export function crop(src: Rgb, left: number, top: number, w: number, h: number): Rgb {
  const out = new Uint8Array(w * h * 3);
  for (let y = 0; y < h; y++) {
    const from = ((top + y) * src.width + left) * 3;
    out.set(src.data.subarray(from, from + w * 3), y * w * 3);
  }
  return { width: w, height: h, data: out };
}

/** Python's round(): half to even. */
export function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}
