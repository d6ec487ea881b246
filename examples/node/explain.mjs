// Explains one photo (PNG or JPEG) with a graph built by `camexport build`, using onnxruntime-node.
//
//   node explain.mjs GRAPH.onnx PHOTO OUT_PREFIX
//
// A classifier graph: writes OUT_PREFIX.npy (the heatmap, float32 [H, W] in [0, 1], at the graph's input size),
// OUT_PREFIX.png (the heatmap as a grey image) and OUT_PREFIX.json (top-1 label, probability, class
// explained); prints the top-1 label. A detector graph: OUT_PREFIX.json ({detections: [{slot, class_index, label,
// score, box}]}, boxes in the photo's pixels), OUT_PREFIX.npy (each detection's heatmap, float32 [D, H, W]),
// OUT_PREFIX.png (what the network saw, every box in its slot's tab10 colour over the largest of the heatmaps) and
// OUT_PREFIX_det<slot>.png (each detection's own heatmap and box); prints the detections. The graph's own metadata (camexport.* props) gives the labels,
// the input size, resize and interpolation and, for a float32 graph, the mean and std; a `--input uint8`
// graph takes the pixels as they are. The photo is resized (shorter side to camexport.resize_size, the
// graph's filter) and centre-cropped by ../web/camexport.mjs exactly as Pillow does it in Python, after
// ../web/decode.mjs has decoded it to the bytes Python decodes (EXIF orientation, 16-bit, palettes, CMYK).
import fs from "node:fs";
import path from "node:path";
import ort from "onnxruntime-node";
import { encode as encodePng } from "fast-png";
import { channelsOf, colourise, detectionsOf, imageInput, readMetadata, TAB10, toPixels, topK } from "../web/camexport.mjs";
import { decodeImage } from "../web/decode.mjs";
import { nodeCodecs } from "./codecs.mjs";

function fail(message) {
  console.error(`explain.mjs: error: ${message}`);
  process.exit(2);
}

// --- the graph's metadata and the photo's pixels: the contract's JavaScript, shared with the web page ---
function metadata(file) {
  try {
    return readMetadata(new Uint8Array(fs.readFileSync(file)), file);
  } catch (error) {
    fail(error.message);
  }
}

// The photo decoded (decode.mjs), resized and centre-cropped exactly as Pillow does it in Python (camexport.mjs).
async function photoPixels(file, meta) {
  if (!fs.existsSync(file)) fail(`${file}: no such file`);
  const fourBands = channelsOf(meta) === 4;
  let image;
  try {
    image = await decodeImage(new Uint8Array(fs.readFileSync(file)), file, await nodeCodecs(), fourBands);
  } catch (error) {
    fail(error.message);
  }
  if (fourBands && image.bands !== 4) {
    fail(`${file}: the photo has ${image.bands} band(s), the graph takes 4 channels; pass a four-band (RGBA) PNG`);
  }
  return { pixels: toPixels(image.rgba, image.width, image.height, meta), size: { width: image.width, height: image.height } };
}

function imageTensor(pixels, meta) {
  const { type, data, dims } = imageInput(pixels, meta);
  return new ort.Tensor(type, data, dims);
}

// --- outputs ---
function writeNpy(file, data, shape) {
  let header = `{'descr': '<f4', 'fortran_order': False, 'shape': (${shape.join(", ")}), }`;
  header += " ".repeat(63 - ((header.length + 10) % 64)) + "\n";
  const prefix = Buffer.alloc(10);
  prefix.write("\x93NUMPY", 0, "latin1");
  prefix[6] = 1;
  prefix[7] = 0;
  prefix.writeUInt16LE(header.length, 8);
  fs.writeFileSync(file, Buffer.concat([prefix, Buffer.from(header, "latin1"), Buffer.from(data.buffer, data.byteOffset, data.byteLength)]));
}

function writeGreyPng(file, data, [height, width]) {
  const grey = new Uint8Array(width * height);
  for (let i = 0; i < width * height; i++) grey[i] = Math.round(Math.min(Math.max(data[i], 0), 1) * 255);
  fs.writeFileSync(file, encodePng({ width, height, data: grey, channels: 1, depth: 8 }));
}

// What the network saw (the crop's RGB pixels), the heatmap in jet at alpha 0.5 over it (camexport's overlay), and
// each box's outline, two pixels wide, in its slot's colour.
function overlayPng(file, pixels, heatmap, detections, [height, width]) {
  const jet = colourise(heatmap);
  const rgb = new Uint8Array(width * height * 3);
  for (let i = 0; i < width * height; i++) {
    for (let c = 0; c < 3; c++) rgb[i * 3 + c] = Math.round(0.5 * pixels[i * 3 + c] + 0.5 * jet[i * 4 + c]);
  }
  for (const { inputBox, slot } of detections) {
    const [x1, y1, x2, y2] = inputBox.map((v, k) => Math.min(Math.max(Math.round(v), 0), (k % 2 ? height : width) - 1));
    for (let y = y1; y <= y2; y++) {
      for (let x = x1; x <= x2; x++) {
        const edge = x - x1 < 2 || x2 - x < 2 || y - y1 < 2 || y2 - y < 2;
        if (edge) rgb.set(TAB10[slot % TAB10.length], (y * width + x) * 3);
      }
    }
  }
  fs.writeFileSync(file, encodePng({ width, height, data: rgb, channels: 3, depth: 8 }));
}

async function explainDetections(outputs, meta, pixels, photo, size, prefix) {
  const found = detectionsOf(outputs, meta, size.width, size.height);
  const [h, w] = meta.size;
  const stacked = new Float32Array(found.length * h * w);
  found.forEach((d, i) => stacked.set(d.heatmap, i * h * w));
  writeNpy(`${prefix}.npy`, stacked, [found.length, h, w]);
  const largest = new Float32Array(h * w);
  for (const d of found) for (let i = 0; i < h * w; i++) largest[i] = Math.max(largest[i], d.heatmap[i]);
  overlayPng(`${prefix}.png`, pixels, largest, found, meta.size);
  for (const d of found) overlayPng(`${prefix}_det${d.slot}.png`, pixels, d.heatmap, [d], meta.size);
  const detections = found.map(({ slot, classIndex, label, score, box }) => ({ slot, class_index: classIndex, label, score, box }));
  fs.writeFileSync(`${prefix}.json`, JSON.stringify({ detections }) + "\n");
  const said = detections.map((d) => `${d.label} ${d.score.toFixed(2)}`).join(", ") || "no detection over the threshold";
  console.log(`${path.basename(photo)}: ${said} -> ${prefix}.json`);
}

async function main() {
  const [graph, photo, prefix] = process.argv.slice(2);
  if (!graph || !photo || !prefix) fail("usage: node explain.mjs GRAPH.onnx PHOTO OUT_PREFIX");
  if (!fs.existsSync(graph)) fail(`${graph}: no such graph; build one with 'camexport build'`);
  const meta = metadata(graph);
  const { pixels, size } = await photoPixels(photo, meta);
  const session = await ort.InferenceSession.create(graph);
  const topOne = new ort.Tensor("int64", BigInt64Array.from([-1n]), [1]); // -1: the top-1 class (every class)
  const outputs = await session.run({ image: imageTensor(pixels, meta), target_class: topOne });
  fs.mkdirSync(path.dirname(path.resolve(prefix)), { recursive: true });
  if (meta.task === "detection") return explainDetections(outputs, meta, pixels, photo, size, prefix);
  const [best] = topK(outputs.logits.data, meta.labels, 1);
  const explained = Number(outputs.class_index.data[0]);
  const heatmap = outputs.heatmap.data;
  writeNpy(`${prefix}.npy`, heatmap, meta.size);
  writeGreyPng(`${prefix}.png`, heatmap, meta.size);
  const result = { label: best.label, class_index: best.index, probability: best.probability, explained: meta.labels[explained] };
  fs.writeFileSync(`${prefix}.json`, JSON.stringify(result) + "\n");
  console.log(`${path.basename(photo)}: ${result.label} (${result.probability.toFixed(2)}); heatmap -> ${prefix}.npy`);
}

main().catch((error) => fail(error.message.split("\n")[0]));
