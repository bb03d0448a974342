// malm.preprocess.preprocess in the browser: decode (EXIF orientation applied) → RGB (alpha on white)
// → limit aspect → resize the shorter side (Pillow's filter, fixed point) → center crop → normalise.
//
// Decoding: createImageBitmap with no colour management and no premultiplication, read back through an
// OffscreenCanvas at 1:1 (no scaling in the canvas). Chromium's JPEG decoder is libjpeg-turbo as Pillow's,
// and the pixels are identical (tests/test_web_client.py). Semi-transparent pixels pass through the canvas's
// premultiplied storage and may differ by a rounding step.

import { compositeOn, crop, type Interpolation, resize, type Rgb, roundHalfEven } from "./pillow.js";

export interface PreprocessConfig {
  size: number;
  resize: number;
  crop: string;
  mean: number[];
  std: number[];
  interpolation: Interpolation;
  max_pixels: number;
  // Written by newer exporters (docs/bundle-format.md); the defaults are what older bundles mean.
  exif_orientation?: boolean; // default true
  alpha_background?: number[]; // default white
  max_aspect?: number; // default 4.0
  jpeg_draft?: boolean; // default true
}

export class ImageError extends Error {
  override name = "ImageError";
}

export type PhotoInput = Blob | ArrayBuffer | Uint8Array | ImageData;

const DRAFT_SCALES = [8, 4, 2];

interface JpegHeader {
  width: number;
  height: number;
  orientation: number; // EXIF 1..8 (1 when absent)
}

/** Width, height and EXIF orientation from a JPEG's markers (null if it is not a JPEG). */
export function jpegHeader(b: Uint8Array): JpegHeader | null {
  if (b.length < 4 || b[0] !== 0xff || b[1] !== 0xd8) return null;
  let orientation = 1;
  let i = 2;
  while (i + 4 <= b.length) {
    if (b[i] !== 0xff) return null;
    const marker = b[i + 1];
    if (marker === 0xff) { i++; continue; }
    const len = (b[i + 2] << 8) | b[i + 3];
    if (marker === 0xe1 && len >= 16) orientation = exifOrientation(b, i + 4, len - 2) ?? orientation;
    const sof = marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc;
    if (sof && i + 9 <= b.length) {
      return { height: (b[i + 5] << 8) | b[i + 6], width: (b[i + 7] << 8) | b[i + 8], orientation };
    }
    i += 2 + len;
  }
  return null;
}

function exifOrientation(b: Uint8Array, start: number, len: number): number | null {
  const s = String.fromCharCode(...b.subarray(start, start + 6));
  if (s !== "Exif\0\0") return null;
  const t = start + 6, end = Math.min(start + len, b.length);
  const le = b[t] === 0x49;
  const u16 = (o: number) => (le ? b[o] | (b[o + 1] << 8) : (b[o] << 8) | b[o + 1]);
  const u32 = (o: number) => (le ? u16(o) + u16(o + 2) * 65536 : u16(o) * 65536 + u16(o + 2));
  const ifd = t + u32(t + 4);
  if (ifd + 2 > end) return null;
  const n = u16(ifd);
  for (let k = 0; k < n; k++) {
    const e = ifd + 2 + k * 12;
    if (e + 12 > end) return null;
    if (u16(e) === 0x0112) return u16(e + 8);
  }
  return null;
}

/** malm.preprocess.draft_scale: the JPEG DCT scale Python decodes a large photo at (1 = none). */
export function draftScale(width: number, height: number, minSide: number): number {
  if (minSide <= 0) return 1;
  for (const s of DRAFT_SCALES) {
    if (width % s === 0 && height % s === 0 && Math.floor(Math.min(width, height) / s) >= minSide) return s;
  }
  return 1;
}

async function toBytes(photo: Blob | ArrayBuffer | Uint8Array): Promise<Uint8Array> {
  if (photo instanceof Uint8Array) return photo;
  if (photo instanceof ArrayBuffer) return new Uint8Array(photo);
  return new Uint8Array(await photo.arrayBuffer());
}

/** Pillow's ImageOps.exif_transpose of an RGB image for EXIF orientation 2..8 (1: unchanged). */
export function exifTranspose(src: Rgb, orientation: number): Rgb {
  if (orientation < 2 || orientation > 8) return src;
  const W = src.width, H = src.height;
  const swap = orientation >= 5;
  const ow = swap ? H : W, oh = swap ? W : H;
  const out = new Uint8Array(src.data.length);
  for (let y = 0; y < oh; y++) {
    for (let x = 0; x < ow; x++) {
      let sx: number, sy: number;
      switch (orientation) {
        case 2: sx = W - 1 - x; sy = y; break; // FLIP_LEFT_RIGHT
        case 3: sx = W - 1 - x; sy = H - 1 - y; break; // ROTATE_180
        case 4: sx = x; sy = H - 1 - y; break; // FLIP_TOP_BOTTOM
        case 5: sx = y; sy = x; break; // TRANSPOSE
        case 6: sx = y; sy = H - 1 - x; break; // ROTATE_270
        case 7: sx = W - 1 - y; sy = H - 1 - x; break; // TRANSVERSE
        default: sx = W - 1 - y; sy = x; // 8: ROTATE_90
      }
      const o = (y * ow + x) * 3, p = (sy * W + sx) * 3;
      out[o] = src.data[p];
      out[o + 1] = src.data[p + 1];
      out[o + 2] = src.data[p + 2];
    }
  }
  return { width: ow, height: oh, data: out };
}

const RGB_FRAMES = new Set(["RGBA", "RGBX", "BGRA", "BGRX"]);

/**
 * A JPEG through WebCodecs' ImageDecoder, asked for the size Python's draft decodes at: Chromium then lets
 * libjpeg-turbo scale in the DCT domain, as Pillow's `draft` does (same pixels, tested), and skips the
 * full-size decode. Null where the browser has no ImageDecoder or gives a YUV frame (then: createImageBitmap).
 */
async function decodeJpeg(bytes: Uint8Array, head: JpegHeader, scale: number, cfg: PreprocessConfig): Promise<Rgb | null> {
  const Decoder = (globalThis as { ImageDecoder?: new (init: object) => { decode(): Promise<{ image: VideoFrame }>; close(): void } }).ImageDecoder;
  if (!Decoder) return null;
  const w = head.width / scale, h = head.height / scale;
  let decoder: InstanceType<typeof Decoder> | null = null;
  let frame: VideoFrame | null = null;
  try {
    decoder = new Decoder({ data: bytes, type: "image/jpeg", desiredWidth: w, desiredHeight: h,
      colorSpaceConversion: "none", preferAnimation: false });
    frame = (await decoder.decode()).image;
    // The frame holds the pixels as stored (a frame's rotation/flip only describe how to show them): the EXIF
    // orientation is applied below, as Pillow's exif_transpose.
    if (!frame.format || !RGB_FRAMES.has(frame.format) || frame.codedWidth !== w || frame.codedHeight !== h) {
      return null;
    }
    const rgba = new Uint8Array(w * h * 4);
    await frame.copyTo(rgba, { format: "RGBA" } as VideoFrameCopyToOptions);
    const rgb = compositeOn(rgba.map((v, i) => (i % 4 === 3 ? 255 : v)), w, h, cfg.alpha_background);
    return (cfg.exif_orientation ?? true) ? exifTranspose(rgb, head.orientation) : rgb;
  } catch {
    return null;
  } finally {
    frame?.close();
    decoder?.close();
  }
}

/** Decode a photo to RGB, upright. A JPEG Python would decode at 1/2..1/8 (draft) is decoded at that size too. */
export async function decode(photo: PhotoInput, cfg: PreprocessConfig): Promise<Rgb> {
  if (typeof ImageData !== "undefined" && photo instanceof ImageData) {
    checkPixels(photo.width, photo.height, cfg.max_pixels);
    return compositeOn(photo.data, photo.width, photo.height, cfg.alpha_background);
  }
  const bytes = await toBytes(photo as Blob | ArrayBuffer | Uint8Array);
  const head = jpegHeader(bytes.subarray(0, Math.min(bytes.length, 1 << 17)));
  if (head) checkPixels(head.width, head.height, cfg.max_pixels);
  const exif = cfg.exif_orientation ?? true;
  const scale = head && (cfg.jpeg_draft ?? true) ? draftScale(head.width, head.height, cfg.resize) : 1;
  if (head) {
    const rgb = await decodeJpeg(bytes, head, scale, cfg);
    if (rgb) return rgb;
  }
  const opts: ImageBitmapOptions = { imageOrientation: exif ? "from-image" : "none", colorSpaceConversion: "none",
    premultiplyAlpha: "none" };
  if (head && scale > 1) {
    // No ImageDecoder: a full decode resized to the draft size by a box-like filter (close to, not equal to,
    // libjpeg's DCT scaling).
    const swap = exif && head.orientation >= 5 && head.orientation <= 8;
    const w = head.width / scale, h = head.height / scale;
    opts.resizeWidth = swap ? h : w;
    opts.resizeHeight = swap ? w : h;
    opts.resizeQuality = "medium";
  }
  let bitmap: ImageBitmap;
  try {
    bitmap = await createImageBitmap(new Blob([bytes as BlobPart]), opts);
  } catch (e) {
    throw new ImageError(`image <${bytes.length} bytes>: not a recognized image format, or it cannot be decoded (${String(e)})`);
  }
  try {
    checkPixels(bitmap.width, bitmap.height, cfg.max_pixels);
    const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
    const ctx = canvas.getContext("2d", { willReadFrequently: true, colorSpace: "srgb" });
    if (!ctx) throw new ImageError("image: no 2D canvas to read the decoded pixels from");
    ctx.drawImage(bitmap, 0, 0);
    const data = ctx.getImageData(0, 0, bitmap.width, bitmap.height, { colorSpace: "srgb" });
    return compositeOn(data.data, data.width, data.height, cfg.alpha_background);
  } finally {
    bitmap.close();
  }
}

function checkPixels(w: number, h: number, max: number): void {
  if (w <= 0 || h <= 0) throw new ImageError(`image: empty (${w}x${h})`);
  if (w * h > max) throw new ImageError(`image: ${w}x${h} = ${w * h} pixels is above the limit of ${max}`);
}

/** malm.preprocess.limit_aspect */
export function limitAspect(img: Rgb, maxAspect = 4.0): Rgb {
  const { width: w, height: h } = img;
  const short = Math.min(w, h), long = Math.max(w, h);
  if (long <= short * maxAspect) return img;
  const keep = Math.max(1, roundHalfEven(short * maxAspect));
  const off = Math.floor((long - keep) / 2);
  return w > h ? crop(img, off, 0, keep, h) : crop(img, 0, off, w, keep);
}

/** malm.preprocess.resize_shorter */
export function resizeShorter(img: Rgb, side: number, interpolation: Interpolation): Rgb {
  const { width: w, height: h } = img;
  if (Math.min(w, h) === side) return img;
  const [nw, nh] = w <= h ? [side, Math.max(side, roundHalfEven((h * side) / w))]
    : [Math.max(side, roundHalfEven((w * side) / h)), side];
  return resize(img, nw, nh, interpolation);
}

/** RGB → the encoder's input: center crop, [3, size, size] float32, (x / 255 - mean) / std in float32. */
export function toTensor(rgb: Rgb, cfg: PreprocessConfig): Float32Array {
  const img = resizeShorter(limitAspect(rgb, cfg.max_aspect ?? 4.0), cfg.resize, cfg.interpolation);
  const left = Math.floor((img.width - cfg.size) / 2), top = Math.floor((img.height - cfg.size) / 2);
  const s = cfg.size, plane = s * s;
  const out = new Float32Array(3 * plane);
  const f = Math.fround;
  const mean = cfg.mean.map(f), std = cfg.std.map(f);
  for (let y = 0; y < s; y++) {
    for (let x = 0; x < s; x++) {
      const p = ((top + y) * img.width + left + x) * 3;
      for (let c = 0; c < 3; c++) out[c * plane + y * s + x] = f(f(f(img.data[p + c] / 255) - mean[c]) / std[c]);
    }
  }
  return out;
}

export async function preprocess(photo: PhotoInput, cfg: PreprocessConfig): Promise<Float32Array> {
  if (cfg.crop !== "center") throw new ImageError(`preprocess: unknown crop ${cfg.crop}`);
  return toTensor(await decode(photo, cfg), cfg);
}
