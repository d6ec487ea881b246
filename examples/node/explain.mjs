// Explains one PNG photo with a graph built by `camexport build`, using onnxruntime-node.
//
//   node explain.mjs GRAPH.onnx PHOTO.png OUT_PREFIX
//
// Writes OUT_PREFIX.npy (the heatmap, float32 [H, W] in [0, 1], at the graph's input size),
// OUT_PREFIX.png (the heatmap as a grey image) and OUT_PREFIX.json (top-1 label, probability, class
// explained); prints the top-1 label. The graph's own metadata (camexport.* props) gives the labels,
// the input size and, for a float32 graph, the mean and std; a `--input uint8` graph takes the pixels as
// they are. A photo of another size is resized (bilinear, shorter side to camexport.resize_size) and
// centre-cropped here; Pillow's filters differ slightly, so feed a crop of the graph's size to compare
// with Python exactly.
import fs from "node:fs";
import path from "node:path";
import ort from "onnxruntime-node";
import pngjs from "pngjs";

const { PNG } = pngjs;

// The camexport graph contract this program reads (README: "The graph contract"; camexport/contract.py).
const CONTRACTS = ["1", "2"]; // 2: target_class required ([1] or [batch], -1 = top-1); 1: it had a default

function fail(message) {
  console.error(`explain.mjs: error: ${message}`);
  process.exit(2);
}

// --- the graph's metadata: ModelProto field 14 (metadata_props), read straight from the protobuf ---
function readVarint(buffer, offset) {
  let value = 0n;
  let shift = 0n;
  for (;;) {
    const byte = buffer[offset++];
    if (byte === undefined) throw new Error("truncated protobuf");
    value |= BigInt(byte & 0x7f) << shift;
    if ((byte & 0x80) === 0) return [value, offset];
    shift += 7n;
  }
}

function fields(buffer, start, end, onField) {
  let offset = start;
  while (offset < end) {
    let key;
    [key, offset] = readVarint(buffer, offset);
    const number = Number(key >> 3n);
    const wire = Number(key & 7n);
    if (wire === 0) {
      [, offset] = readVarint(buffer, offset);
    } else if (wire === 1) {
      offset += 8;
    } else if (wire === 5) {
      offset += 4;
    } else if (wire === 2) {
      let length;
      [length, offset] = readVarint(buffer, offset);
      const next = offset + Number(length);
      onField(number, offset, next);
      offset = next;
    } else {
      throw new Error(`unsupported protobuf wire type ${wire}`);
    }
  }
}

function camexportMetadata(file) {
  const buffer = fs.readFileSync(file);
  const metadata = {};
  fields(buffer, 0, buffer.length, (number, start, end) => {
    if (number !== 14) return;
    let key = "";
    let value = "";
    fields(buffer, start, end, (inner, s, e) => {
      if (inner === 1) key = buffer.toString("utf8", s, e);
      if (inner === 2) value = buffer.toString("utf8", s, e);
    });
    metadata[key] = value;
  });
  if (!("camexport.version" in metadata)) fail(`${file}: not a graph built by camexport (no camexport.* metadata)`);
  const contract = metadata["camexport.contract"] ?? "1"; // graphs from before the key follow contract 1
  if (!CONTRACTS.includes(contract)) {
    fail(`${file}: the graph follows camexport graph contract '${contract}', this program reads contracts ${CONTRACTS.join(" and ")}; rebuild the graph`);
  }
  return {
    labels: JSON.parse(metadata["camexport.labels"]),
    mean: JSON.parse(metadata["camexport.mean"]),
    std: JSON.parse(metadata["camexport.std"]),
    size: JSON.parse(metadata["camexport.image_size"]),
    resize: JSON.parse(metadata["camexport.resize_size"] ?? "0"),
    input: metadata["camexport.input"] ?? "float32",
  };
}

// --- the photo: RGB pixels at the graph's size ---
function bilinear(rgba, width, height, outWidth, outHeight) {
  const out = new Uint8Array(outWidth * outHeight * 3);
  for (let y = 0; y < outHeight; y++) {
    const sy = Math.min(Math.max((y + 0.5) * (height / outHeight) - 0.5, 0), height - 1);
    const y0 = Math.floor(sy);
    const y1 = Math.min(y0 + 1, height - 1);
    const fy = sy - y0;
    for (let x = 0; x < outWidth; x++) {
      const sx = Math.min(Math.max((x + 0.5) * (width / outWidth) - 0.5, 0), width - 1);
      const x0 = Math.floor(sx);
      const x1 = Math.min(x0 + 1, width - 1);
      const fx = sx - x0;
      for (let c = 0; c < 3; c++) {
        const at = (xx, yy) => rgba[(yy * width + xx) * 4 + c];
        const top = at(x0, y0) * (1 - fx) + at(x1, y0) * fx;
        const bottom = at(x0, y1) * (1 - fx) + at(x1, y1) * fx;
        out[(y * outWidth + x) * 3 + c] = Math.round(top * (1 - fy) + bottom * fy);
      }
    }
  }
  return out;
}

function photoPixels(file, [height, width], resizeSize) {
  let png;
  try {
    png = PNG.sync.read(fs.readFileSync(file));
  } catch (error) {
    fail(`${file}: not a readable PNG (${error.message})`);
  }
  if (png.width === width && png.height === height) {
    return bilinear(png.data, png.width, png.height, width, height); // same size: an exact copy
  }
  const scale = (resizeSize || Math.max(height, width)) / Math.min(png.width, png.height);
  const resizedWidth = Math.max(1, Math.round(png.width * scale));
  const resizedHeight = Math.max(1, Math.round(png.height * scale));
  const resized = bilinear(png.data, png.width, png.height, resizedWidth, resizedHeight);
  const left = Math.round((resizedWidth - width) / 2);
  const top = Math.round((resizedHeight - height) / 2);
  const out = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const sx = x + left;
      const sy = y + top;
      if (sx < 0 || sy < 0 || sx >= resizedWidth || sy >= resizedHeight) continue; // outside: black
      for (let c = 0; c < 3; c++) out[(y * width + x) * 3 + c] = resized[(sy * resizedWidth + sx) * 3 + c];
    }
  }
  return out;
}

function imageTensor(pixels, meta) {
  const [height, width] = meta.size;
  if (meta.input === "uint8") return new ort.Tensor("uint8", pixels, [1, height, width, 3]);
  const data = new Float32Array(3 * height * width);
  for (let i = 0; i < height * width; i++) {
    for (let c = 0; c < 3; c++) data[c * height * width + i] = (pixels[i * 3 + c] / 255 - meta.mean[c]) / meta.std[c];
  }
  return new ort.Tensor("float32", data, [1, 3, height, width]);
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
  const png = new PNG({ width, height });
  for (let i = 0; i < width * height; i++) {
    const v = Math.round(Math.min(Math.max(data[i], 0), 1) * 255);
    png.data.set([v, v, v, 255], i * 4);
  }
  fs.writeFileSync(file, PNG.sync.write(png));
}

async function main() {
  const [graph, photo, prefix] = process.argv.slice(2);
  if (!graph || !photo || !prefix) fail("usage: node explain.mjs GRAPH.onnx PHOTO.png OUT_PREFIX");
  if (!fs.existsSync(graph)) fail(`${graph}: no such graph; build one with 'camexport build'`);
  const meta = camexportMetadata(graph);
  const pixels = photoPixels(photo, meta.size, meta.resize);
  const session = await ort.InferenceSession.create(graph);
  const topOne = new ort.Tensor("int64", BigInt64Array.from([-1n]), [1]); // -1: explain the top-1 class
  const outputs = await session.run({ image: imageTensor(pixels, meta), target_class: topOne });
  const logits = Array.from(outputs.logits.data);
  const top = logits.indexOf(Math.max(...logits));
  const sum = logits.reduce((acc, v) => acc + Math.exp(v - logits[top]), 0);
  const explained = Number(outputs.class_index.data[0]);
  const heatmap = outputs.heatmap.data;
  fs.mkdirSync(path.dirname(path.resolve(prefix)), { recursive: true });
  writeNpy(`${prefix}.npy`, heatmap, meta.size);
  writeGreyPng(`${prefix}.png`, heatmap, meta.size);
  const result = { label: meta.labels[top], class_index: top, probability: 1 / sum, explained: meta.labels[explained] };
  fs.writeFileSync(`${prefix}.json`, JSON.stringify(result) + "\n");
  console.log(`${path.basename(photo)}: ${result.label} (${result.probability.toFixed(2)}); heatmap -> ${prefix}.npy`);
}

main().catch((error) => fail(error.message.split("\n")[0]));
