// Image files → pixels exactly as camexport's Python side (camexport.runtime.preprocess.open_image, Pillow) decodes
// them, in the browser page and in Node.js: the same bytes, tested on one set of fixtures in all three
// (tests/image_fixtures.py). PNG with fast-png (every colour type and bit depth, palettes, transparency); JPEG with
// mozjpeg compiled to WebAssembly (@jsquash/jpeg: libjpeg-turbo's decoder, the one Pillow uses, so baseline and
// progressive JPEGs decode to the same bytes); a CMYK JPEG, which that decoder does not read, with libvips in
// WebAssembly (wasm-vips, loaded only for such a file). The decoders are passed in (each host imports its own), so
// this module has no imports. The rules, as docs/runtimes.md ("Decoding") states them:
// - 16-bit samples become their high byte (v >> 8), as Pillow reads 16-bit colour PNGs;
// - 1-, 2- and 4-bit grayscale is scaled to 0..255; a palette is looked up;
// - RGB (and grayscale) graphs drop alpha and a palette's transparency; CMYK becomes RGB by Pillow's formula;
// - the EXIF orientation (a JPEG's APP1, a PNG's eXIf chunk) is applied, as ImageOps.exif_transpose applies it.

/** "png", "jpeg", or null for any other file. */
export function sniff(bytes) {
  if (bytes.length >= 8 && bytes[0] === 0x89 && bytes[1] === 0x50 && bytes[2] === 0x4e && bytes[3] === 0x47) return "png";
  if (bytes.length >= 3 && bytes[0] === 0xff && bytes[1] === 0xd8 && bytes[2] === 0xff) return "jpeg";
  return null;
}

/**
 * Decodes a PNG or JPEG file's bytes to {width, height, rgba, bands}: rgba holds 4 bytes a pixel (alpha 255 where
 * the file has none; for a CMYK JPEG its four bands as they are when `fourBands`, else RGB by Pillow's formula),
 * upright as its EXIF orientation says; bands is the file's own band count (1 for grayscale or a palette, 2, 3 or
 * 4), by which a four-channel graph refuses a photo of fewer. `codecs`: {png(bytes) → fast-png's decode result,
 * jpeg(bytes) → Promise of {width, height, data} RGBA, cmyk(bytes) → Promise of {width, height, data} CMYK}.
 * Throws a one-line Error naming `name` for a file it cannot read.
 */
export async function decodeImage(bytes, name, codecs, fourBands = false) {
  const kind = sniff(bytes);
  if (!kind) throw new Error(`${name}: not a PNG or JPEG file; pass a PNG or JPEG photo`);
  const pixels = pixelCount(bytes, kind);
  if (pixels > MAX_PIXELS) { // refused before decoding, as Python refuses it (Pillow's MAX_IMAGE_PIXELS)
    throw new Error(`${name}: not a readable image (Image size (${pixels} pixels) exceeds limit of ${MAX_PIXELS} pixels: a decompression bomb?); downscale it first`);
  }
  let image;
  try {
    image = kind === "png" ? pngToRgba(codecs.png(bytes)) : await jpegToRgba(bytes, codecs, fourBands);
  } catch (error) {
    throw new Error(`${name}: not a readable image (${String(error.message ?? error).split("\n")[0]})`);
  }
  return { ...orient(image, orientation(bytes, kind)), bands: image.bands };
}

// Pillow's MAX_IMAGE_PIXELS: camexport refuses a photo over it before decoding (preprocess.open_unread).
export const MAX_PIXELS = 89478485;

// Width x height from the header (a PNG's IHDR, a JPEG's frame header), 0 where it cannot be read.
function pixelCount(bytes, kind) {
  if (kind === "png") {
    if (bytes.length < 24) return 0;
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    return view.getUint32(16) * view.getUint32(20);
  }
  const frame = frameHeader(bytes);
  return frame ? ((frame[1] << 8) | frame[2]) * ((frame[3] << 8) | frame[4]) : 0;
}

/** The `cmyk` codec: libvips (wasm-vips), started by `loadVips()` on the first CMYK JPEG, reads its four bands. */
export function cmykCodec(loadVips) {
  let vips = null;
  return async (bytes) => {
    vips ??= await loadVips();
    const image = vips.Image.newFromBuffer(bytes);
    return { width: image.width, height: image.height, data: image.writeToMemory() };
  };
}

async function jpegToRgba(bytes, codecs, fourBands) {
  if (frameComponents(bytes) === 4) {
    const { width, height, data } = await codecs.cmyk(bytes);
    return { width, height, rgba: fourBands ? new Uint8Array(data) : cmykToRgba(data), bands: 4 };
  }
  const decoded = await codecs.jpeg(bytes);
  const rgba = new Uint8Array(decoded.data.buffer, decoded.data.byteOffset, decoded.data.length);
  return { width: decoded.width, height: decoded.height, rgba, bands: frameComponents(bytes) === 1 ? 1 : 3 };
}

// Pillow's CMYK → RGB: (255 − k) − round((255 − k)·c / 255) per channel, rounding as its MULDIV255 does.
function cmykToRgba(cmyk) {
  const out = new Uint8Array(cmyk.length);
  for (let i = 0; i < cmyk.length; i += 4) {
    const nk = 255 - cmyk[i + 3];
    for (let c = 0; c < 3; c++) {
      const t = cmyk[i + c] * nk + 128;
      out[i + c] = nk - (((t >> 8) + t) >> 8);
    }
    out[i + 3] = 255;
  }
  return out;
}

// The JPEG's frame header (SOFn: precision, height, width, components...), or null.
function frameHeader(bytes) {
  for (const { marker, body } of jpegSegments(bytes)) {
    const frame = marker >= 0xc0 && marker <= 0xcf && ![0xc4, 0xc8, 0xcc].includes(marker);
    if (frame && body.length > 5) return body;
  }
  return null;
}

// The number of components in the JPEG's frame header, or 0.
function frameComponents(bytes) {
  return frameHeader(bytes)?.[5] ?? 0;
}

// A JPEG's marker segments before its image data: {marker, body}, body the bytes after the length.
function* jpegSegments(bytes) {
  let at = 2;
  while (at + 4 <= bytes.length && bytes[at] === 0xff && bytes[at + 1] !== 0xda) {
    const length = (bytes[at + 2] << 8) | bytes[at + 3];
    yield { marker: bytes[at + 1], body: bytes.subarray(at + 4, at + 2 + length) };
    at += 2 + length;
  }
}

// fast-png's result → RGBA bytes, by Pillow's rules (see the top of this file).
function pngToRgba(png) {
  const { width, height, depth, channels } = png;
  const samples = unpacked(png);
  const rgba = new Uint8Array(width * height * 4);
  const palette = png.palette;
  const alphas = png.transparency;
  for (let i = 0; i < width * height; i++) {
    const at = i * channels;
    let r, g, b, a = 255;
    if (palette) {
      const index = samples[at];
      [r, g, b] = palette[index] ?? [0, 0, 0];
      if (alphas && index < alphas.length) a = alphas[index];
    } else if (channels <= 2) {
      r = g = b = samples[at];
      if (channels === 2) a = samples[at + 1];
    } else {
      [r, g, b] = [samples[at], samples[at + 1], samples[at + 2]];
      if (channels === 4) a = samples[at + 3];
    }
    rgba.set([r, g, b, a], i * 4);
  }
  return { width, height, rgba, bands: palette ? 1 : channels };
}

// One byte a sample: 16-bit samples' high byte, 1/2/4-bit rows unpacked (grayscale scaled to 0..255, palette
// indices as they are).
function unpacked(png) {
  const { width, height, depth, channels, data } = png;
  if (depth === 8) return data;
  if (depth === 16) return Uint8Array.from(data, (v) => v >> 8);
  const scale = png.palette ? 1 : { 1: 255, 2: 85, 4: 17 }[depth];
  const perRow = Math.ceil((width * channels * depth) / 8);
  const out = new Uint8Array(width * height * channels);
  const mask = (1 << depth) - 1;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width * channels; x++) {
      const bit = x * depth;
      const byte = data[y * perRow + (bit >> 3)];
      out[y * width * channels + x] = ((byte >> (8 - depth - (bit & 7))) & mask) * scale;
    }
  }
  return out;
}

// The EXIF orientation (1..8) of a JPEG's APP1 or a PNG's eXIf chunk; 1 where there is none.
function orientation(bytes, kind) {
  const exif = kind === "jpeg" ? jpegExif(bytes) : pngExif(bytes);
  if (!exif) return 1;
  const little = exif[0] === 0x49;
  const u16 = (at) => (little ? exif[at] | (exif[at + 1] << 8) : (exif[at] << 8) | exif[at + 1]);
  const u32 = (at) => (little ? u16(at) + u16(at + 2) * 65536 : u16(at) * 65536 + u16(at + 2));
  if (exif.length < 8) return 1;
  const ifd = u32(4);
  if (ifd + 2 > exif.length) return 1;
  for (let entry = 0; entry < u16(ifd); entry++) {
    const at = ifd + 2 + entry * 12;
    if (at + 12 > exif.length) break;
    if (u16(at) === 0x0112) {
      const value = u16(at + 8);
      return value >= 1 && value <= 8 ? value : 1;
    }
  }
  return 1;
}

function jpegExif(bytes) {
  for (const { marker, body } of jpegSegments(bytes)) {
    if (marker === 0xe1 && String.fromCharCode(...body.subarray(0, 6)) === "Exif\0\0") return body.subarray(6);
  }
  return null;
}

function pngExif(bytes) {
  let at = 8;
  while (at + 8 <= bytes.length) {
    const length = ((bytes[at] << 24) >>> 0) + (bytes[at + 1] << 16) + (bytes[at + 2] << 8) + bytes[at + 3];
    const type = String.fromCharCode(...bytes.subarray(at + 4, at + 8));
    if (type === "eXIf") return bytes.subarray(at + 8, at + 8 + length);
    if (type === "IDAT" || type === "IEND") return null; // Pillow reads eXIf before the image data only
    at += 12 + length;
  }
  return null;
}

// The pixels turned upright as ImageOps.exif_transpose turns them: for each output pixel, its source pixel.
function orient(image, value) {
  const { width: w, height: h, rgba } = image;
  if (value === 1) return { width: w, height: h, rgba };
  const swapped = value >= 5;
  const [ow, oh] = swapped ? [h, w] : [w, h];
  const source = {
    2: (x, y) => [w - 1 - x, y],
    3: (x, y) => [w - 1 - x, h - 1 - y],
    4: (x, y) => [x, h - 1 - y],
    5: (x, y) => [y, x],
    6: (x, y) => [y, h - 1 - x],
    7: (x, y) => [w - 1 - y, h - 1 - x],
    8: (x, y) => [w - 1 - y, x],
  }[value];
  const out = new Uint8Array(ow * oh * 4);
  for (let y = 0; y < oh; y++) {
    for (let x = 0; x < ow; x++) {
      const [sx, sy] = source(x, y);
      out.set(rgba.subarray((sy * w + sx) * 4, (sy * w + sx) * 4 + 4), (y * ow + x) * 4);
    }
  }
  return { width: ow, height: oh, rgba: out };
}
