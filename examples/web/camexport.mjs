// The camexport graph contract in JavaScript, for any JavaScript runtime (the browser page and the Node.js
// example both use it): the graph's metadata read from its protobuf, the photo resized and centre-cropped
// exactly as Pillow does it in Python (same filters, same fixed-point arithmetic, so that the pixels fed to
// the graph are the Python session's, byte for byte), the graph's input tensor, the top-k classes, a detection
// graph's detections placed on the photo, and matplotlib's jet (heatmaps) and tab10 (boxes) colours.

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
    throw new Error(`${name}: the graph follows camexport graph contract '${contract}', this program reads ${task} contracts ${CONTRACTS[task].join(" and ")}; rebuild the graph`);
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
// and normalize_coeffs_8bpc).
function coefficients(inSize, outSize, filter) {
  const scale = inSize / outSize;
  const filterScale = Math.max(scale, 1);
  const support = filter.support * filterScale;
  const ss = 1 / filterScale; // multiplied, not divided: Pillow's doubles exactly
  const taps = [];
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const first = Math.max(Math.trunc(center - support + 0.5), 0);
    const count = Math.min(Math.trunc(center + support + 0.5), inSize) - first;
    const weights = [];
    let total = 0;
    for (let x = 0; x < count; x++) {
      const w = filter.weight((x + first - center + 0.5) * ss);
      weights.push(w);
      total += w;
    }
    const fixed = weights.map((w) => {
      const k = total !== 0 ? w / total : w;
      return Math.trunc(k < 0 ? -0.5 + k * 2 ** PRECISION_BITS : 0.5 + k * 2 ** PRECISION_BITS);
    });
    taps.push({ first, fixed });
  }
  return taps;
}

function clip8(sum) {
  return Math.min(Math.max(Math.floor(sum / 2 ** PRECISION_BITS), 0), 255);
}

// One pass of the separable filter along x (horizontal) or y, on interleaved 8-bit channels.
function pass(src, width, height, channels, outSize, filter, horizontal) {
  const taps = coefficients(horizontal ? width : height, outSize, filter);
  const outWidth = horizontal ? outSize : width;
  const outHeight = horizontal ? height : outSize;
  const out = new Uint8Array(outWidth * outHeight * channels);
  for (let y = 0; y < outHeight; y++) {
    for (let x = 0; x < outWidth; x++) {
      const { first, fixed } = taps[horizontal ? x : y];
      for (let c = 0; c < channels; c++) {
        let sum = 2 ** (PRECISION_BITS - 1);
        for (let i = 0; i < fixed.length; i++) {
          const at = horizontal ? (y * width + first + i) * channels : ((first + i) * width + x) * channels;
          sum += src[at + c] * fixed[i];
        }
        out[(y * outWidth + x) * channels + c] = clip8(sum);
      }
    }
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

/** The graph's channel count: 3 for RGB, 1 for grayscale, 4 for four-band images (the mean's length). */
export function channelsOf(meta) {
  return meta.mean.length;
}

// RGBA bytes → the graph's channels, as Pillow converts: RGB drops alpha, L is ITU-R 601-2 luma in Pillow's
// fixed point ((19595 R + 38470 G + 7471 B + 2^15) >> 16), four bands are taken as they are.
function bands(rgba, count, channels) {
  if (channels === 4) return rgba;
  const out = new Uint8Array(count * channels);
  for (let i = 0; i < count; i++) {
    const [r, g, b] = rgba.subarray(i * 4, i * 4 + 3);
    if (channels === 1) out[i] = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16;
    else out.set([r, g, b], i * 3);
  }
  return out;
}

/** RGBA pixels of a photo → the graph's uint8 [H, W, C] crop, as camexport.runtime.preprocess.to_pixels. */
export function toPixels(rgba, width, height, meta) {
  const filter = FILTERS[meta.interpolation];
  if (!filter) throw new Error(`interpolation '${meta.interpolation}' is not supported here; use a bilinear, bicubic or lanczos graph`);
  const channels = channelsOf(meta);
  if (![1, 3, 4].includes(channels)) throw new Error(`the graph takes ${channels}-channel images, which no image file holds`);
  let image = bands(rgba, width * height, channels);
  const { size, box } = geometry(width, height, meta);
  if (size[0] !== width) image = pass(image, width, height, channels, size[0], filter, true);
  if (size[1] !== height) image = pass(image, size[0], height, channels, size[1], filter, false);
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
  const { size, box: crop } = geometry(width, height, meta);
  const [left, top, right, bottom] = [crop[0] * (width / size[0]), crop[1] * (height / size[1]), crop[2] * (width / size[0]), crop[3] * (height / size[1])];
  const [inH, inW] = meta.size;
  const sx = (right - left) / inW;
  const sy = (bottom - top) / inH;
  const placed = [left + box[0] * sx, top + box[1] * sy, left + box[2] * sx, top + box[3] * sy];
  return placed.map((v) => Math.round(v * 100) / 100);
}

/** A detection graph's detections of image n: [{slot, classIndex, label, score, box (on the photo), inputBox (in the
 * network input's pixels), heatmap}], the filled slots only (an empty one has label -1), best first; heatmap is the
 * slot's [H·W] map at the input's size. */
export function detectionsOf(outputs, meta, width, height, n = 0) {
  const slots = outputs.scores.dims[1];
  const [h, w] = meta.size;
  const found = [];
  for (let slot = 0; slot < slots; slot++) {
    const classIndex = Number(outputs.labels.data[n * slots + slot]);
    if (classIndex < 0) continue;
    const box = Array.from(outputs.boxes.data.subarray((n * slots + slot) * 4, (n * slots + slot + 1) * 4));
    const heatmap = outputs.heatmap.data.subarray((n * slots + slot) * h * w, (n * slots + slot + 1) * h * w);
    const score = outputs.scores.data[n * slots + slot];
    const label = meta.labels[classIndex];
    found.push({ slot, classIndex, label, score, box: boxOnPhoto(box, width, height, meta), inputBox: box, heatmap });
  }
  return found;
}

// matplotlib's tab10 (camexport.runtime.visualize.draw_boxes: a detection's colour is its slot's).
export const TAB10 = [[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189], [140, 86, 75],
  [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207]];

// matplotlib's jet (its segment data), sampled as camexport's 256-entry palette: colour of floor(256·h).
const JET = {
  r: [[0, 0], [0.35, 0], [0.66, 1], [0.89, 1], [1, 0.5]],
  g: [[0, 0], [0.125, 0], [0.375, 1], [0.64, 1], [0.91, 0], [1, 0]],
  b: [[0, 0.5], [0.11, 1], [0.34, 1], [0.65, 0], [1, 0]],
};

function segment(points, x) {
  for (let i = 1; i < points.length; i++) {
    const [x0, y0] = points[i - 1];
    const [x1, y1] = points[i];
    if (x <= x1) return y0 + ((y1 - y0) * (x - x0)) / (x1 - x0);
  }
  return points[points.length - 1][1];
}

export const JET_PALETTE = Array.from({ length: 256 }, (_, i) =>
  ["r", "g", "b"].map((c) => Math.round(segment(JET[c], i / 255) * 255)),
);

/** A heatmap [H·W] in [0, 1] as RGBA bytes through the jet palette (alpha 255). */
export function colourise(heatmap) {
  const out = new Uint8ClampedArray(heatmap.length * 4);
  for (let i = 0; i < heatmap.length; i++) {
    const [r, g, b] = JET_PALETTE[Math.min(255, Math.max(0, Math.floor(heatmap[i] * 256)))];
    out.set([r, g, b, 255], i * 4);
  }
  return out;
}
