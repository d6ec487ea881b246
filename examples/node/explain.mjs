// Explains photos (JPEG or PNG, or folders of them) with a graph built by `camexport build`, using onnxruntime-node,
// into the files `camexport explain` writes:
//
//   node explain.mjs GRAPH.onnx PHOTO... [--out DIR] [--class LABEL|INDEX] [--top K] [--method NAME]
//                    [--alpha A] [--colormap NAME] [--save-heatmap] [--overwrite]
//
// Per photo: DIR/<stem>_cam.png, the photo with the heatmap in the colormap over the part the network saw, byte for
// byte the overlay `camexport explain --format png` writes (a detector graph: the largest of the detections' maps
// and every box in its slot's tab10 colour, and DIR/<stem>_det<slot>_cam.png per detection: its own map and box;
// the boxes without their captions); with --save-heatmap DIR/<stem>_heatmap.npy (float32 [height, width] at the
// photo's size, 0 outside the crop; a detector's [detections, height, width]). For the run: DIR/predictions.jsonl,
// one JSON line per photo (per detection for a detector graph) with the fields and rounding of Python's. A photo
// that cannot be read is named on stderr and the others go on (exit 1); a usage mistake exits 2 and writes nothing.
//
// The graph's own metadata (camexport.* props) gives the labels, the input size, resize and interpolation and, for a
// float32 graph, the mean and std. The photo is decoded to the bytes Python decodes (../web/decode.mjs), resized and
// centre-cropped exactly as Pillow does it (../web/camexport.mjs), so the heatmap is Python's.
import fs from "node:fs";
import path from "node:path";
import { parseArgs } from "node:util";
import ort from "onnxruntime-node";
import { encode as encodePng } from "fast-png";
import {
  channelsOf, classIndex, COLORMAPS, detectionsOf, drawBox, heatmapOutput, imageInput, placedHeatmap, overlayOnPhoto, readMetadata,
  toPixels, topK,
} from "../web/camexport.mjs";
import { decodeImage } from "../web/decode.mjs";
import { nodeCodecs } from "./codecs.mjs";

const USAGE = "usage: node explain.mjs GRAPH.onnx PHOTO... [--out DIR] [--class LABEL|INDEX] [--top K] [--method NAME] [--alpha A] [--colormap NAME] [--save-heatmap] [--overwrite]";
const IMAGE_SUFFIXES = new Set([".jpg", ".jpeg", ".png"]);

class UserError extends Error {}

// The shared modules throw plain Errors for what a user can mend (a file that is not a graph or a photo, a class not
// in the graph); anything else (a TypeError, a RangeError) is a bug, exit 1.
function isUserError(error) {
  return error instanceof UserError || error?.constructor === Error;
}

function fail(message, code = 2) {
  console.error(`explain.mjs: error: ${message}`);
  process.exit(code);
}

// --- the command line ---
function options() {
  let parsed;
  try {
    parsed = parseArgs({
      allowPositionals: true,
      options: {
        out: { type: "string", default: "explained" },
        class: { type: "string" },
        top: { type: "string", default: "5" },
        "top-k": { type: "string" },
        method: { type: "string" },
        alpha: { type: "string", default: "0.5" },
        colormap: { type: "string", default: "jet" },
        "save-heatmap": { type: "boolean", default: false },
        overwrite: { type: "boolean", default: false },
        help: { type: "boolean", short: "h", default: false },
      },
    });
  } catch (error) {
    throw new UserError(`${error.message.split("\n")[0]}; ${USAGE}`);
  }
  const { values, positionals } = parsed;
  if (values.help) {
    console.log(USAGE);
    process.exit(0);
  }
  const [graph, ...photos] = positionals;
  if (!graph || photos.length === 0) throw new UserError(USAGE);
  return { graph, photos, ...values, top: whole("--top", values["top-k"] ?? values.top), alpha: share(values.alpha) };
}

function whole(flag, text) {
  const value = Number(text);
  if (!Number.isInteger(value) || value < 1) throw new UserError(`${flag} ${text}: give a whole number of classes, 1 or more`);
  return value;
}

function share(text) {
  const value = Number(text);
  if (!(value >= 0 && value <= 1)) throw new UserError(`--alpha ${text}: give the overlay's opacity in [0, 1]`);
  return value;
}

// The photo files: each file as given, each folder's JPEG and PNG files in name order.
function photoFiles(paths) {
  const files = [];
  for (const given of paths) {
    if (!fs.existsSync(given)) throw new UserError(`${given}: no such file or folder`);
    if (!fs.statSync(given).isDirectory()) {
      files.push(path.normalize(given)); // as Python's str(Path(...)) writes it: ./a.jpg is a.jpg
      continue;
    }
    const inside = fs.readdirSync(given, { withFileTypes: true })
      .filter((entry) => entry.isFile() && IMAGE_SUFFIXES.has(path.extname(entry.name).toLowerCase()))
      .map((entry) => entry.name)
      .sort();
    files.push(...inside.map((name) => path.join(given, name)));
  }
  if (files.length === 0) throw new UserError(`${paths.join(", ")}: no JPEG or PNG photo there; pass photo files or folders holding them`);
  return files;
}

// --- the graph ---
async function openGraph(file, args) {
  if (!fs.existsSync(file)) throw new UserError(`${file}: no such graph; build one with 'camexport build'`);
  const meta = readMetadata(new Uint8Array(fs.readFileSync(file)), file);
  const method = args.method ?? meta.methods[0];
  if (!meta.methods.includes(method)) throw new UserError(`--method ${method}: not in this graph; it has ${meta.methods.join(", ")}`);
  if (!(args.colormap in COLORMAPS)) throw new UserError(`--colormap ${args.colormap}: not known here; use one of ${Object.keys(COLORMAPS).join(", ")}`);
  const target = args.class === undefined ? -1 : classIndex(args.class, meta.labels);
  const session = await ort.InferenceSession.create(file);
  return { session, meta, target, method, heatmap: heatmapOutput(meta, method) };
}

// --- one photo ---
async function explainPhoto(graph, file, codecs) {
  const { meta, session } = graph;
  const fourBands = channelsOf(meta) === 4;
  const image = await decodeImage(new Uint8Array(fs.readFileSync(file)), file, codecs, fourBands);
  if (fourBands && image.bands !== 4) {
    throw new UserError(`${file}: the photo has ${image.bands} band(s), the graph takes 4 channels; pass a four-band (RGBA) PNG`);
  }
  const input = imageInput(toPixels(image.rgba, image.width, image.height, meta), meta);
  const outputs = await session.run({
    image: new ort.Tensor(input.type, input.data, input.dims),
    target_class: new ort.Tensor("int64", BigInt64Array.from([BigInt(graph.target)]), [1]),
  });
  return { image, outputs };
}

// Probabilities and scores as Python's records round them (Record.of: 6 decimals).
const round6 = (p) => Math.round(p * 1e6) / 1e6;

// A classifier's record: the explained class, its probability and the top K, rounded to 6 decimals as Python's.
function classified(graph, outputs, top) {
  const probabilities = topK(outputs.logits.data, graph.meta.labels, graph.meta.labels.length);
  const explained = Number(outputs.class_index.data[0]);
  return {
    class_index: explained,
    label: graph.meta.labels[explained],
    probability: round6(probabilities.find((p) => p.index === explained).probability),
    top: probabilities.slice(0, top).map(({ index, label, probability }) => ({ index, label, probability: round6(probability) })),
  };
}

// --- files, each written whole or not at all ---
function writeAtomically(file, bytes) {
  const staged = `${file}.${process.pid}.part`;
  try {
    fs.writeFileSync(staged, bytes);
    fs.renameSync(staged, file);
  } finally {
    fs.rmSync(staged, { force: true });
  }
}

function npy(data, shape) {
  let header = `{'descr': '<f4', 'fortran_order': False, 'shape': (${shape.join(", ")}${shape.length === 1 ? "," : ""}), }`;
  header += " ".repeat(63 - ((header.length + 10) % 64)) + "\n";
  const prefix = Buffer.alloc(10);
  prefix.write("\x93NUMPY", 0, "latin1");
  prefix[6] = 1;
  prefix.writeUInt16LE(header.length, 8);
  return Buffer.concat([prefix, Buffer.from(header, "latin1"), Buffer.from(data.buffer, data.byteOffset, data.byteLength)]);
}

function png(rgb, width, height) {
  return encodePng({ width, height, data: rgb, channels: 3, depth: 8 });
}

// The heatmap on the whole photo: its placed part, 0 elsewhere (heatmap_to_original in Python).
function onPhoto(heatmap, meta, width, height) {
  const { box, values } = placedHeatmap(heatmap, meta, width, height);
  const canvas = new Float32Array(width * height);
  const w = box[2] - box[0];
  for (let y = box[1]; y < box[3]; y++) canvas.set(values.subarray((y - box[1]) * w, (y - box[1] + 1) * w), y * width + box[0]);
  return canvas;
}

// A classifier's files and its JSON line.
function classifierFiles(run, graph, file, stem, { image, outputs }) {
  const { width, height, rgba } = image;
  const heatmap = outputs[graph.heatmap].data;
  const overlay = path.join(run.out, `${stem}_cam.png`);
  writeAtomically(overlay, png(overlayOnPhoto(rgba, width, height, heatmap, graph.meta, run.style), width, height));
  const record = { image: file, overlay, ...classified(graph, outputs, run.top) };
  if (run.saveHeatmap) {
    record.heatmap = path.join(run.out, `${stem}_heatmap.npy`);
    writeAtomically(record.heatmap, npy(onPhoto(heatmap, graph.meta, width, height), [height, width]));
  }
  console.log(`${file}: ${record.top[0].label} (${record.top[0].probability.toFixed(2)}); explained '${record.label}' -> ${overlay}`);
  return [record];
}

// A detector's files (the image's overlay with every box, one per detection) and its JSON lines, one per detection.
function detectorFiles(run, graph, file, stem, { image, outputs }) {
  const { width, height, rgba } = image;
  const { meta } = graph;
  const found = detectionsOf(outputs, meta, width, height, 0, graph.method);
  const [h, w] = meta.size;
  const largest = new Float32Array(h * w);
  for (const d of found) for (let i = 0; i < h * w; i++) largest[i] = Math.max(largest[i], d.heatmap[i]);
  const drawn = (heatmap, boxes) => {
    const rgb = overlayOnPhoto(rgba, width, height, heatmap, meta, run.style);
    for (const d of boxes) drawBox(rgb, width, height, d.box, d.slot);
    return png(rgb, width, height);
  };
  const overlay = path.join(run.out, `${stem}_cam.png`);
  writeAtomically(overlay, drawn(largest, found));
  const heatmapFile = run.saveHeatmap ? { heatmap: path.join(run.out, `${stem}_heatmap.npy`) } : {};
  if (run.saveHeatmap) {
    const stacked = new Float32Array(found.length * width * height);
    found.forEach((d, i) => stacked.set(onPhoto(d.heatmap, meta, width, height), i * width * height));
    writeAtomically(heatmapFile.heatmap, npy(stacked, [found.length, height, width]));
  }
  const said = found.map((d) => `${d.label} ${d.score.toFixed(2)}`).join(", ") || "no detection over the threshold";
  console.log(`${file}: ${said} -> ${overlay}`);
  if (found.length === 0) return [{ image: file, detection: null, box: null, class_index: -1, label: "", score: 0, overlay: null, image_overlay: overlay, ...heatmapFile }];
  return found.map((d) => {
    const own = path.join(run.out, `${stem}_det${d.slot}_cam.png`);
    writeAtomically(own, drawn(d.heatmap, [d]));
    return { image: file, detection: d.slot, box: d.box, class_index: d.classIndex, label: d.label, score: round6(d.score), overlay: own, image_overlay: overlay, ...heatmapFile };
  });
}

// A stem no other photo of this run has: photo, photo-2, photo-3...
function uniqueStem(file, taken) {
  const base = path.basename(file, path.extname(file));
  let stem = base;
  for (let n = 2; taken.has(stem); n++) stem = `${base}-${n}`;
  taken.add(stem);
  return stem;
}

// --- the run: predictions.jsonl staged beside the old one, moved over it at the end (or at Ctrl-C / SIGTERM) ---
function startRun(args) {
  const predictions = path.join(args.out, "predictions.jsonl");
  if (fs.existsSync(predictions) && !args.overwrite) {
    throw new UserError(`${predictions}: an earlier run is there; pass another --out, or --overwrite to replace it`);
  }
  fs.mkdirSync(args.out, { recursive: true });
  sweepStaged(args.out);
  const staged = `${predictions}.${process.pid}.part`;
  fs.writeFileSync(staged, "");
  const run = { out: args.out, top: args.top, saveHeatmap: args["save-heatmap"], style: { alpha: args.alpha, colormap: args.colormap } };
  return Object.assign(run, { predictions, staged, explained: 0, failed: 0, replaces: fs.existsSync(predictions) });
}

// Removes what a run killed outright (SIGKILL: no handler runs) left staged in `folder`: files NAME.PID.part whose
// process is gone. The file they were to replace, if any, is whole.
function sweepStaged(folder) {
  for (const name of fs.readdirSync(folder)) {
    const match = /\.(\d+)\.part$/.exec(name);
    if (match && !alive(Number(match[1]))) fs.rmSync(path.join(folder, name), { force: true });
  }
}

function alive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return error.code === "EPERM"; // someone else's process
  }
}

// Ends the run: a finished run's lines replace the old file; an interrupted one keeps the old file if there was
// one (nothing written earlier is lost), else keeps the lines of the photos it finished.
function finish(run, interrupted) {
  if (interrupted && run.replaces) fs.rmSync(run.staged, { force: true });
  else fs.renameSync(run.staged, run.predictions);
}

// Each photo in turn; one that cannot be read or explained is named on stderr and the rest go on.
async function explainAll(run, graph, files, codecs) {
  const taken = new Set();
  const write = graph.meta.task === "detection" ? detectorFiles : classifierFiles;
  for (const file of files) {
    try {
      const records = write(run, graph, file, uniqueStem(file, taken), await explainPhoto(graph, file, codecs));
      fs.appendFileSync(run.staged, records.map((r) => JSON.stringify(r) + "\n").join(""));
      run.explained++;
    } catch (error) {
      if (!isUserError(error)) throw error;
      console.error(`error: ${error.message.split("\n")[0]}`);
      run.failed++;
    }
  }
}

async function main() {
  const args = options();
  const graph = await openGraph(args.graph, args);
  const files = photoFiles(args.photos);
  const codecs = await nodeCodecs();
  const run = startRun(args);
  const stop = (signal, code) => () => {
    finish(run, true);
    console.error(`explain.mjs: ${signal}: stopped after ${run.explained} photo(s); ${run.replaces ? "the earlier predictions.jsonl is kept" : `their lines are in ${run.predictions}`}`);
    process.exit(code);
  };
  process.on("SIGINT", stop("interrupted", 130));
  process.on("SIGTERM", stop("terminated", 143));
  try {
    await explainAll(run, graph, files, codecs);
  } catch (error) {
    finish(run, true); // a bug, not a photo: the lines written so far (or the earlier file) are kept all the same
    throw error;
  }
  finish(run, false);
  console.log(`explained ${run.explained} photo(s), ${run.failed} failed; overlays in ${run.out}/, predictions: ${run.predictions}`);
  process.exit(run.failed ? 1 : 0);
}

main().catch((error) => fail(error.message.split("\n")[0], isUserError(error) ? 2 : 1));
