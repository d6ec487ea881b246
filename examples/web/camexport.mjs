// The camexport graph contract in JavaScript, for any JavaScript runtime (the browser page and the Node.js
// example both use it): the graph's metadata read from its protobuf, the photo resized and centre-cropped
// exactly as Pillow does it in Python (same filters, same fixed-point arithmetic, so that the pixels fed to
// the graph are the Python session's, byte for byte), the graph's input tensor, the top-k classes, a detection
// graph's detections placed on the photo, matplotlib's colormaps (heatmaps) and tab10 (boxes), and the overlay
// `camexport explain` writes, in its arithmetic.
import { COLORMAPS } from "./colormaps.mjs";

export { COLORMAPS };

// The graph contracts this code reads, per task (docs/contract.md; camexport/contract.py).
// classification: 2: target_class is a required input ([1] or [batch], -1 = top-1); 1: it had a default.
// detection: 4: boxes, scores, labels, and a heatmap per detection slot [N, M, H, W].
export const CONTRACTS = { classification: ["1", "2"], detection: ["4"] };

// --- the graph's metadata: ModelProto field 14 (metadata_props), read straight from the protobuf ---
function readVarint(bytes, offset) {
  let value = 0;
  let scale = 1;
  for (;;) {
    const byte = bytes[offset++];
    if (byte === undefined) throw new Error("truncated protobuf");
    value += (byte & 0x7f) * scale; // lengths and keys fit a double exactly
    if ((byte & 0x80) === 0) return [value, offset];
    scale *= 128;
  }
}

function fields(bytes, start, end, onField) {
  let offset = start;
  while (offset < end) {
    let key;
    [key, offset] = readVarint(bytes, offset);
    const number = Math.floor(key / 8);
    const wire = key % 8;
    if (wire === 0) {
      [, offset] = readVarint(bytes, offset);
    } else if (wire === 1) {
      offset += 8;
    } else if (wire === 5) {
      offset += 4;
    } else if (wire === 2) {
      let length;
      [length, offset] = readVarint(bytes, offset);
      onField(number, offset, offset + length);
      offset += length;
    } else {
      throw new Error(`unsupported protobuf wire type ${wire}`);
    }
  }
}

/** The camexport.* metadata of a graph's bytes, typed; throws an Error naming the problem and the fix. */
export function readMetadata(bytes, name = "the graph") {
  const text = new TextDecoder();
  const props = {};
  try {
    fields(bytes, 0, bytes.length, (number, start, end) => {
      if (number !== 14) return;
      let key = "";
      let value = "";
      fields(bytes, start, end, (inner, s, e) => {
        if (inner === 1) key = text.decode(bytes.subarray(s, e));
        if (inner === 2) value = text.decode(bytes.subarray(s, e));
      });
      props[key] = value;
    });
  } catch (error) {
    throw new Error(`${name}: not an ONNX graph (${error.message}); pick a .onnx file written by 'camexport build'`);
  }
  if (!("camexport.version" in props)) {
    throw new Error(`${name}: not a graph built by camexport (no camexport.* metadata); build one with 'camexport build'`);
  }
  const task = props["camexport.task"] ?? "classification";
  if (!(task in CONTRACTS)) {
    throw new Error(`${name}: a ${task} graph; this program explains classifier and detector graphs: explain it with 'camexport explain' or 'camexport serve'`);
  }
  const contract = props["camexport.contract"] ?? "1"; // graphs from before the key follow contract 1
  if (!CONTRACTS[task].includes(contract)) {
    throw new Error(`${name}: the graph follows camexport graph contract '${contract}', this program reads ${task} contracts ${CONTRACTS[task].join(" and ")}; use the page and Node example of the camexport that built it, or rebuild it with this one's 'camexport build'`);
  }
  if (props["camexport.preprocessing_known"] === "false") {
    throw new Error(`${name}: built from an ONNX file without --mean/--std, so how an image becomes its input is unknown; rebuild it with --mean and --std (those the file's model was trained with)`);
  }
  const size = JSON.parse(props["camexport.image_size"]);
  return {
    contract,
    task,
    detection: task === "detection" ? JSON.parse(props["camexport.detection"]) : null,
    model: props["camexport.model"],
    methods: (props["camexport.method"] ?? "").split(","), // the first is the plain heatmap output
    method: (props["camexport.method"] ?? "").split(",")[0],
    labels: JSON.parse(props["camexport.labels"]),
    mean: JSON.parse(props["camexport.mean"]),
    std: JSON.parse(props["camexport.std"]),
    size, // [height, width]
    resize: JSON.parse(props["camexport.resize_size"] ?? String(Math.max(...size))),
    interpolation: props["camexport.interpolation"] ?? "bilinear",
    input: props["camexport.input"] ?? "float32",
    randomWeights: JSON.parse(props["camexport.random_weights"] ?? "false"),
  };
}

// --- the photo: Pillow's resize (ImagingResample) and crop, in the same integer arithmetic ---
function sinc(x) {
  if (x === 0) return 1;
  const px = Math.PI * x;
  return Math.sin(px) / px;
}

const FILTERS = {
  bilinear: { support: 1, weight: (x) => (Math.abs(x) < 1 ? 1 - Math.abs(x) : 0) },
  bicubic: {
    support: 2,
    weight(x) {
      const a = -0.5;
      x = Math.abs(x);
      if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
      if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
      return 0;
    },
  },
  lanczos: { support: 3, weight: (x) => (Math.abs(x) < 3 ? sinc(x) * sinc(x / 3) : 0) },
};
const PRECISION_BITS = 32 - 8 - 2;

// Per output pixel: the first input pixel, how many, and their fixed-point weights (Pillow's precompute_coeffs
// and normalize_coeffs_8bpc), as flat typed arrays: taps o's weights are weights[o·width .. o·width + counts[o]).
function coefficients(inSize, outSize, filter, fixedPoint = true) {
  const scale = inSize / outSize;
  const filterScale = Math.max(scale, 1);
  const support = filter.support * filterScale;
  const ss = 1 / filterScale; // multiplied, not divided: Pillow's doubles exactly
  const width = Math.ceil(support) * 2 + 1;
  const firsts = new Int32Array(outSize);
  const counts = new Int32Array(outSize);
  const weights = new Float64Array(outSize * width);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const first = Math.max(Math.trunc(center - support + 0.5), 0);
    const count = Math.min(Math.trunc(center + support + 0.5), inSize) - first;
    let total = 0;
    for (let x = 0; x < count; x++) {
      const w = filter.weight((x + first - center + 0.5) * ss);
      weights[xx * width + x] = w;
      total += w;
    }
    for (let x = 0; x < count; x++) {
      const k = total !== 0 ? weights[xx * width + x] / total : weights[xx * width + x];
      weights[xx * width + x] = !fixedPoint ? k : Math.trunc(k < 0 ? -0.5 + k * 2 ** PRECISION_BITS : 0.5 + k * 2 ** PRECISION_BITS);
    }
    firsts[xx] = first;
    counts[xx] = count;
  }
  return { firsts, counts, weights, width };
}

const SCALE_DOWN = 2 ** -PRECISION_BITS;

function clip8(sum) {
  const value = Math.floor(sum * SCALE_DOWN);
  return value < 0 ? 0 : value > 255 ? 255 : value;
}

// One pass of the separable filter along x (horizontal) or y, on interleaved 8-bit channels, in Pillow's fixed
// point (ImagingResampleHorizontal_8bpc / Vertical_8bpc): sums of integers below 2^53, so doubles hold them exactly.
function pass(src, width, height, channels, outSize, filter, horizontal) {
  if (!horizontal) return verticalPass(src, width, height, channels, outSize, filter);
  const { firsts, counts, weights, width: taps } = coefficients(horizontal ? width : height, outSize, filter);
  const outWidth = horizontal ? outSize : width;
  const outHeight = horizontal ? height : outSize;
  const out = new Uint8Array(outWidth * outHeight * channels);
  const step = horizontal ? channels : width * channels; // from one tap's pixel to the next's
  const half = 2 ** (PRECISION_BITS - 1);
  for (let y = 0; y < outHeight; y++) {
    for (let x = 0; x < outWidth; x++) {
      const o = horizontal ? x : y;
      const first = firsts[o];
      const count = counts[o];
      const base = o * taps;
      const start = horizontal ? (y * width + first) * channels : (first * width + x) * channels;
      const to = (y * outWidth + x) * channels;
      if (channels === 3) { // the common case, its three sums in one loop
        let r = half;
        let g = half;
        let b = half;
        for (let i = 0, at = start; i < count; i++, at += step) {
          const w = weights[base + i];
          r += src[at] * w;
          g += src[at + 1] * w;
          b += src[at + 2] * w;
        }
        out[to] = clip8(r);
        out[to + 1] = clip8(g);
        out[to + 2] = clip8(b);
        continue;
      }
      for (let c = 0; c < channels; c++) {
        let sum = half;
        for (let i = 0, at = start + c; i < count; i++, at += step) sum += src[at] * weights[base + i];
        out[to + c] = clip8(sum);
      }
    }
  }
  return out;
}

// The vertical pass row by row (each output row a weighted sum of whole input rows, in memory order): the same
// sums as pass() in the same order of taps, so the same bytes.
function verticalPass(src, width, height, channels, outSize, filter) {
  const { firsts, counts, weights, width: taps } = coefficients(height, outSize, filter);
  const row = width * channels;
  const out = new Uint8Array(row * outSize);
  const sums = new Float64Array(row);
  for (let y = 0; y < outSize; y++) {
    sums.fill(2 ** (PRECISION_BITS - 1));
    for (let i = 0; i < counts[y]; i++) {
      const w = weights[y * taps + i];
      const from = (firsts[y] + i) * row;
      for (let x = 0; x < row; x++) sums[x] += src[from + x] * w;
    }
    for (let x = 0; x < row; x++) out[y * row + x] = clip8(sums[x]);
  }
  return out;
}

function roundHalfEven(value) {
  const floor = Math.floor(value);
  const diff = value - floor;
  if (diff !== 0.5) return Math.round(value);
  return floor % 2 === 0 ? floor : floor + 1;
}

/** Resized size and crop box (Preprocessing.geometry in camexport/contract.py, Python's rounding). */
export function geometry(width, height, meta) {
  const scale = meta.resize / Math.min(width, height);
  const size = [Math.max(1, roundHalfEven(width * scale)), Math.max(1, roundHalfEven(height * scale))];
  const [cropH, cropW] = meta.size;
  const left = roundHalfEven((size[0] - cropW) / 2);
  const top = roundHalfEven((size[1] - cropH) / 2);
  return { size, box: [left, top, left + cropW, top + cropH] };
}

/** The region of a width x height photo the network sees, [left, top, right, bottom] in its pixels (may reach
 * outside it): Preprocessing.crop_box in camexport/contract.py. */
export function cropBox(width, height, meta) {
  const { size, box } = geometry(width, height, meta);
  const [sx, sy] = [width / size[0], height / size[1]];
  return [box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy];
}

/** The graph's channel count: 3 for RGB, 1 for grayscale, 4 for four-band images (the mean's length). */
export function channelsOf(meta) {
  return meta.mean.length;
}

// RGBA bytes → the graph's channels, as Pillow converts: RGB drops alpha, L is ITU-R 601-2 luma in Pillow's
// fixed point ((19595 R + 38470 G + 7471 B + 2^15) >> 16), four bands are taken as they are.
function bands(rgba, count, channels) {
  if (channels === 4) return rgba;
  const out = new Uint8Array(count * channels);
  if (channels === 1) {
    for (let i = 0, j = 0; i < count; i++, j += 4) out[i] = (rgba[j] * 19595 + rgba[j + 1] * 38470 + rgba[j + 2] * 7471 + 0x8000) >> 16;
    return out;
  }
  for (let i = 0, j = 0, k = 0; i < count; i++, j += 4, k += 3) {
    out[k] = rgba[j];
    out[k + 1] = rgba[j + 1];
    out[k + 2] = rgba[j + 2];
  }
  return out;
}

// Pillow 13 (python-pillow/Pillow#9549, "if height is scaled down significantly more than width, resize
// vertically first") resizes some photos along y first; the order changes the rounding between the two 8-bit passes.
// Its rule is not documented; read off Pillow 13.0 by comparing both orders with it over random sizes: a photo more
// than twice as tall as wide whose rows shrink goes y first, except within a row or two of 2:1 (300 x 603, 400 x
// 801, 257 x 642 go x first), where this port may differ from Pillow by 1 in a few pixels.
function verticalFirst(width, height, size) {
  return height > 2 * width && size[1] < height;
}

/** RGBA pixels of a photo → the graph's uint8 [H, W, C] crop, as camexport.runtime.preprocess.to_pixels. */
export function toPixels(rgba, width, height, meta) {
  const filter = FILTERS[meta.interpolation];
  if (!filter) throw new Error(`interpolation '${meta.interpolation}' is not supported here; use a bilinear, bicubic or lanczos graph`);
  const channels = channelsOf(meta);
  if (![1, 3, 4].includes(channels)) throw new Error(`the graph takes ${channels}-channel images, which no image file holds`);
  let image = bands(rgba, width * height, channels);
  const { size, box } = geometry(width, height, meta);
  if (verticalFirst(width, height, size)) {
    if (size[1] !== height) image = pass(image, width, height, channels, size[1], filter, false);
    if (size[0] !== width) image = pass(image, width, size[1], channels, size[0], filter, true);
  } else {
    if (size[0] !== width) image = pass(image, width, height, channels, size[0], filter, true);
    if (size[1] !== height) image = pass(image, size[0], height, channels, size[1], filter, false);
  }
  const [cropH, cropW] = meta.size;
  const out = new Uint8Array(cropW * cropH * channels); // outside the resized photo: zeros, as Pillow's crop
  for (let y = 0; y < cropH; y++) {
    const sy = y + box[1];
    if (sy < 0 || sy >= size[1]) continue;
    for (let x = 0; x < cropW; x++) {
      const sx = x + box[0];
      const from = (sy * size[0] + sx) * channels;
      if (sx >= 0 && sx < size[0]) out.set(image.subarray(from, from + channels), (y * cropW + x) * channels);
    }
  }
  return out;
}

/** The graph's image input: uint8 [1, H, W, C] as it is, or float32 [1, C, H, W] normalised by the metadata. */
export function imageInput(pixels, meta) {
  const [height, width] = meta.size;
  const channels = channelsOf(meta);
  if (meta.input === "uint8") return { type: "uint8", data: pixels, dims: [1, height, width, channels] };
  const data = new Float32Array(channels * height * width);
  for (let i = 0; i < height * width; i++) {
    for (let c = 0; c < channels; c++) {
      data[c * height * width + i] = (pixels[i * channels + c] / 255 - meta.mean[c]) / meta.std[c];
    }
  }
  return { type: "float32", data, dims: [1, channels, height, width] };
}

/** The k most probable classes: [{index, label, probability}], from logits (softmax in float64). */
export function topK(logits, labels, k = 5) {
  const values = Array.from(logits);
  const peak = Math.max(...values);
  const exps = values.map((v) => Math.exp(v - peak));
  const total = exps.reduce((a, b) => a + b, 0);
  return exps
    .map((e, index) => ({ index, label: labels[index], probability: e / total }))
    .sort((a, b) => b.probability - a.probability || a.index - b.index)
    .slice(0, k);
}

/** Where a box (x1, y1, x2, y2) of the network input lies in a width x height photo (the input is the photo's
 * centre crop, resized): camexport.runtime.session.box_on_photo, rounded to 0.01 pixel as there. */
export function boxOnPhoto(box, width, height, meta) {
  const [left, top, right, bottom] = cropBox(width, height, meta);
  const [inH, inW] = meta.size;
  const sx = (right - left) / inW;
  const sy = (bottom - top) / inH;
  const placed = [left + box[0] * sx, top + box[1] * sy, left + box[2] * sx, top + box[3] * sy];
  return placed.map((v) => Math.round(v * 100) / 100);
}

/** A class given as an index or a label (any case) → its index, −1 for "-1" (each image's top-1); throws an Error
 * naming the mistake and the fix (CamSession.class_index in camexport/runtime/session.py). */
export function classIndex(wanted, labels) {
  const text = String(wanted).trim();
  if (/^-?\d+$/.test(text)) {
    const index = Number(text);
    if (index < -1 || index >= labels.length) throw new Error(`class ${index}: out of range; the graph has classes 0..${labels.length - 1}`);
    return index;
  }
  const index = labels.findIndex((name) => name.toLowerCase() === text.toLowerCase());
  if (index >= 0) return index;
  const close = labels.filter((name) => name.toLowerCase().includes(text.toLowerCase())).slice(0, 3);
  const hint = close.length ? `did you mean ${close.map((c) => `'${c}'`).join(", ")}?` : "pass an index instead";
  throw new Error(`class '${text}': not a label of this graph; ${hint}`);
}

/** The output holding `method`'s heatmaps: `heatmap` in a graph of one method, else `heatmap_<method>`
 * (GraphSpec.heatmap_of in camexport/contract.py). */
export function heatmapOutput(meta, method = meta.methods[0]) {
  return meta.methods.length > 1 ? `heatmap_${method}` : "heatmap";
}

/** A detection graph's detections of image n: [{slot, classIndex, label, score, box (on the photo), inputBox (in the
 * network input's pixels), heatmap}], the filled slots only (an empty one has label -1), best first; heatmap is the
 * slot's [H·W] map at the input's size, by `method` (default: the graph's first). */
export function detectionsOf(outputs, meta, width, height, n = 0, method = meta.methods[0]) {
  const maps = outputs[heatmapOutput(meta, method)];
  const slots = outputs.scores.dims[1];
  const [h, w] = meta.size;
  const found = [];
  for (let slot = 0; slot < slots; slot++) {
    const classIndex = Number(outputs.labels.data[n * slots + slot]);
    if (classIndex < 0) continue;
    const box = Array.from(outputs.boxes.data.subarray((n * slots + slot) * 4, (n * slots + slot + 1) * 4));
    const heatmap = maps.data.subarray((n * slots + slot) * h * w, (n * slots + slot + 1) * h * w);
    const score = outputs.scores.data[n * slots + slot];
    const label = meta.labels[classIndex];
    found.push({ slot, classIndex, label, score, box: boxOnPhoto(box, width, height, meta), inputBox: box, heatmap });
  }
  return found;
}

// matplotlib's tab10 (camexport.runtime.visualize.draw_boxes: a detection's colour is its slot's).
export const TAB10 = [[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189], [140, 86, 75],
  [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207]];

/** Draws a box (x1, y1, x2, y2 in the photo's pixels) on RGB bytes in place: its slot's tab10 colour, an outline
 * drawn inwards two pixels wide per 500 of the longer side, as camexport's draw_boxes (without the caption). */
export function drawBox(rgb, width, height, box, slot) {
  const line = Math.max(2, Math.round(Math.max(width, height) / 250));
  const colour = TAB10[slot % TAB10.length];
  const [x1, y1, x2, y2] = box.map((v, k) => Math.min(Math.max(Math.round(v), 0), (k % 2 ? height : width) - 1));
  for (let y = y1; y <= y2; y++) {
    for (let x = x1; x <= x2; x++) {
      if (x - x1 < line || x2 - x < line || y - y1 < line || y2 - y < line) rgb.set(colour, (y * width + x) * 3);
    }
  }
}

/** A heatmap [H·W] in [0, 1] as RGBA bytes (alpha 255) through a colormap's palette (colormaps.mjs): the colour of
 * byte floor(256·h), clipped to 0..255, as camexport.runtime.visualize.colourise. */
export function colourise(heatmap, colormap = "jet") {
  const palette = paletteOf(colormap);
  const out = new Uint8ClampedArray(heatmap.length * 4);
  for (let i = 0; i < heatmap.length; i++) {
    const q = 3 * quantise(heatmap[i]);
    out[i * 4] = palette[q];
    out[i * 4 + 1] = palette[q + 1];
    out[i * 4 + 2] = palette[q + 2];
    out[i * 4 + 3] = 255;
  }
  return out;
}

function paletteOf(colormap) {
  const palette = COLORMAPS[colormap];
  if (!palette) throw new Error(`colormap '${colormap}' is not known here; use one of ${Object.keys(COLORMAPS).join(", ")}`);
  return palette;
}

// floor(256·h) in float32, clipped to 0..255 (NaN: 0), as numpy computes it in colourise.
function quantise(h) {
  const q = Math.fround(h * 256);
  return q >= 255 ? 255 : q > 0 ? Math.trunc(q) : 0;
}

// --- the overlay on the photo: camexport.runtime.visualize.overlay_on_photo, in the same arithmetic ---

// Pillow's resize of a float32 ("F") image along one axis (ImagingResampleHorizontal/Vertical_32bpc): double
// weights normalised to sum 1, sums in doubles, stored as float32.
function floatPass(src, width, height, outSize, filter, horizontal) {
  const { firsts, counts, weights, width: taps } = coefficients(horizontal ? width : height, outSize, filter, false);
  const outWidth = horizontal ? outSize : width;
  const outHeight = horizontal ? height : outSize;
  const out = new Float32Array(outWidth * outHeight);
  for (let y = 0; y < outHeight; y++) {
    for (let x = 0; x < outWidth; x++) {
      const o = horizontal ? x : y;
      const start = horizontal ? y * width + firsts[o] : firsts[o] * width + x;
      const step = horizontal ? 1 : width;
      let sum = 0;
      for (let i = 0, at = start; i < counts[o]; i++, at += step) sum += src[at] * weights[o * taps + i];
      out[y * outWidth + x] = sum;
    }
  }
  return out;
}

/** The part of a width x height photo the network saw, as a box [left, top, right, bottom] in its pixels, and the
 * heatmap [H·W] resized (bilinear, Pillow's float arithmetic) onto it, clipped to [0, 1]: placed_heatmap of
 * camexport/runtime/preprocess.py. */
export function placedHeatmap(heatmap, meta, width, height) {
  const [left, top, right, bottom] = cropBox(width, height, meta);
  const [boxW, boxH] = [Math.max(1, roundHalfEven(right - left)), Math.max(1, roundHalfEven(bottom - top))];
  const [x0, y0] = [roundHalfEven(left), roundHalfEven(top)];
  const [dstX, dstY] = [Math.max(0, x0), Math.max(0, y0)];
  const w = Math.max(0, Math.min(width - dstX, boxW - (dstX - x0)));
  const h = Math.max(0, Math.min(height - dstY, boxH - (dstY - y0)));
  const [inH, inW] = meta.size;
  let values = Float32Array.from(heatmap);
  if (boxW !== inW) values = floatPass(values, inW, inH, boxW, FILTERS.bilinear, true);
  if (boxH !== inH) values = floatPass(values, boxW, inH, boxH, FILTERS.bilinear, false);
  const placed = new Float32Array(w * h);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const v = values[(y + dstY - y0) * boxW + x + dstX - x0];
      placed[y * w + x] = v < 0 ? 0 : v > 1 ? 1 : v;
    }
  }
  return { box: [dstX, dstY, dstX + w, dstY + h], values: placed };
}

/** The photo (RGBA bytes, width x height; for a 1-channel graph its luma, as Python converts it) as RGB bytes with
 * the heatmap in `colormap` blended over the part the network saw, (1 − alpha)·photo + alpha·colour as Pillow's Image.blend rounds it (float32, truncated): the
 * overlay `camexport explain` writes (overlay_on_photo), byte for byte. */
export function overlayOnPhoto(rgba, width, height, heatmap, meta, { alpha = 0.5, colormap = "jet" } = {}) {
  const palette = paletteOf(colormap);
  const a = Math.fround(alpha);
  const out = new Uint8Array(width * height * 3);
  const grey = channelsOf(meta) === 1 ? bands(rgba, width * height, 1) : null; // the photo Python sees: luma
  for (let i = 0, j = 0; i < width * height; i++, j += 4) {
    out[i * 3] = grey ? grey[i] : rgba[j];
    out[i * 3 + 1] = grey ? grey[i] : rgba[j + 1];
    out[i * 3 + 2] = grey ? grey[i] : rgba[j + 2];
  }
  const { box, values } = placedHeatmap(heatmap, meta, width, height);
  const w = box[2] - box[0];
  for (let y = box[1]; y < box[3]; y++) {
    for (let x = box[0]; x < box[2]; x++) {
      const q = 3 * quantise(values[(y - box[1]) * w + x - box[0]]);
      const at = (y * width + x) * 3;
      for (let c = 0; c < 3; c++) {
        const p = out[at + c];
        out[at + c] = Math.trunc(Math.fround(p + Math.fround(a * (palette[q + c] - p))));
      }
    }
  }
  return out;
}
