// The page: a camexport graph (picked, dropped, or named by ?graph=URL) and a photo in; the top-5 classes and the
// heatmap's overlay out, or for a detector graph every detection (its box, label and score) and, for the one picked
// in the list, its own heatmap. onnxruntime-web runs the graph: WebGPU where the browser offers it, else WebAssembly
// (threaded when the page is cross-origin isolated). Every failure is shown on the page as one line.
import * as ort from "./node_modules/onnxruntime-web/dist/ort.all.min.mjs";
import { decode as decodePng } from "fast-png"; // mapped to ./node_modules by index.html's import map
import decodeJpeg from "./node_modules/@jsquash/jpeg/decode.js";
import { channelsOf, colourise, detectionsOf, geometry, imageInput, readMetadata, TAB10, toPixels, topK } from "./camexport.mjs";
import { cmykCodec, decodeImage, sniff } from "./decode.mjs";

const $ = (id) => document.getElementById(id);
ort.env.wasm.wasmPaths = new URL("./node_modules/onnxruntime-web/dist/", import.meta.url).href;
ort.env.wasm.numThreads = self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
ort.env.logLevel = "error";

const state = { session: null, meta: null, backend: null };
// What the page showed last, for scripts that drive it (tests/e2e/test_web.py): the numbers behind the pixels; and
// the page's decoder, which those scripts compare with Python's on the fixtures (tests/image_fixtures.py).
window.camexport = { ready: false, result: null, error: null, decode: decodeUrl };

// PNG and JPEG are decoded to the bytes Python decodes (decode.mjs); libvips (13 MB of WebAssembly) is fetched only
// for a CMYK JPEG.
const codecs = {
  png: (bytes) => decodePng(bytes),
  jpeg: (bytes) => decodeJpeg(bytes),
  cmyk: cmykCodec(async () => (await import("./node_modules/wasm-vips/lib/vips-es6.js")).default({ dynamicLibraries: [] })),
};

async function decodeUrl(url) {
  const response = await fetch(url);
  const image = await decodeImage(new Uint8Array(await response.arrayBuffer()), url.split("/").pop(), codecs);
  return { width: image.width, height: image.height, rgba: Array.from(image.rgba) };
}

function status(text) {
  $("status").textContent = text;
}

function fail(message) {
  window.camexport.error = message;
  $("error").textContent = message;
  $("error").classList.add("shown");
  status("");
}

function clearError() {
  window.camexport.error = null;
  $("error").classList.remove("shown");
}

async function createSession(bytes) {
  const backends = "gpu" in navigator ? ["webgpu", "wasm"] : ["wasm"];
  let lastError;
  for (const backend of backends) {
    try {
      return { session: await ort.InferenceSession.create(bytes, { executionProviders: [backend] }), backend };
    } catch (error) {
      lastError = error; // WebGPU offered but unusable (no adapter, an op it lacks): WebAssembly next
    }
  }
  throw lastError;
}

async function loadGraph(bytes, name) {
  clearError();
  $("result").classList.remove("shown");
  state.session = null;
  const meta = readMetadata(bytes, name); // throws a one-line Error for a file that is not a camexport graph
  status(`Loading ${name}…`);
  let created;
  try {
    created = await createSession(bytes);
  } catch (error) {
    throw new Error(`${name}: onnxruntime-web cannot load it (${String(error.message ?? error).split("\n")[0]})`);
  }
  Object.assign(state, { session: created.session, backend: created.backend, meta });
  const [h, w] = meta.size;
  const found = meta.detection
    ? `, up to ${meta.detection.max_detections} detections over ${meta.detection.score_threshold}` : "";
  $("graph-info").textContent = `${meta.model}, ${meta.method}, ${w}×${h} ${meta.input} input, ${meta.labels.length} classes${found}` +
    (meta.randomWeights ? " — random weights: its labels mean nothing" : "");
  status(`Graph ready (${created.backend}). Pick a photo.`);
}

// A photo → {bitmap (to draw), rgba, width, height}. PNG and JPEG as Python decodes them (decode.mjs); any other
// format (WebP, GIF, BMP) by the browser, whose decoding Python's may not match.
async function decode(file) {
  const bytes = new Uint8Array(await file.arrayBuffer());
  const fourBands = channelsOf(state.meta) === 4;
  if (sniff(bytes)) {
    const image = await decodeImage(bytes, file.name, codecs, fourBands);
    if (fourBands && image.bands !== 4) {
      throw new Error(`${file.name}: the photo has ${image.bands} band(s), the graph takes 4 channels; pick a four-band (RGBA) PNG`);
    }
    const pixels = new ImageData(new Uint8ClampedArray(image.rgba), image.width, image.height);
    return { bitmap: await createImageBitmap(pixels), rgba: image.rgba, width: image.width, height: image.height };
  }
  try {
    const bitmap = await createImageBitmap(new Blob([bytes]), { colorSpaceConversion: "none", premultiplyAlpha: "none" });
    const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
    const context = canvas.getContext("2d", { willReadFrequently: true });
    context.drawImage(bitmap, 0, 0);
    const rgba = new Uint8Array(context.getImageData(0, 0, bitmap.width, bitmap.height).data.buffer);
    return { bitmap, rgba, width: bitmap.width, height: bitmap.height };
  } catch {
    throw new Error(`${file.name}: not an image this browser can decode; pick a JPEG, PNG, WebP, GIF or BMP photo`);
  }
}

async function explain(file) {
  clearError();
  if (!state.session) throw new Error("no graph loaded yet; pick a .onnx graph written by 'camexport build' first");
  status(`Explaining ${file.name}…`);
  const { bitmap, rgba, width, height } = await decode(file);
  const meta = state.meta;
  const pixels = toPixels(rgba, width, height, meta);
  const input = imageInput(pixels, meta);
  const started = performance.now();
  const outputs = await state.session.run({
    image: new ort.Tensor(input.type, input.data, input.dims),
    target_class: new ort.Tensor("int64", BigInt64Array.from([-1n]), [1]), // -1: each image's top-1 class
  });
  const seconds = (performance.now() - started) / 1000;
  $("timing").textContent = `graph run ${(seconds * 1000).toFixed(0)} ms on ${state.backend}`;
  if (meta.task === "detection") {
    const found = detectionsOf(outputs, meta, width, height);
    showDetections(bitmap, found, found.length ? 0 : -1);
    const listed = found.map(({ slot, classIndex, label, score, box, heatmap }) => ({ slot, classIndex, label, score, box, heatmap: Array.from(heatmap) }));
    window.camexport.result = { file: file.name, detections: listed, backend: state.backend };
  } else {
    const top = topK(outputs.logits.data, meta.labels, 5);
    const explained = Number(outputs.class_index.data[0]);
    const heatmap = outputs.heatmap.data;
    show(bitmap, heatmap, top, meta.labels[explained]);
    window.camexport.result = { file: file.name, top, explained, heatmap: Array.from(heatmap), backend: state.backend };
  }
  status(`${file.name}: ${bitmap.width}×${bitmap.height}, explained in ${seconds.toFixed(2)} s (${state.backend}).`);
}

// The photo, with the heatmap (jet, alpha 0.5) over the part of it the network saw (the centre crop); returns the
// canvas's context and its scale from the photo's pixels.
function drawOverlay(bitmap, heatmap) {
  const meta = state.meta;
  const [h, w] = meta.size;
  const scale = Math.min(1, 640 / Math.max(bitmap.width, bitmap.height));
  const canvas = $("overlay");
  canvas.width = Math.round(bitmap.width * scale);
  canvas.height = Math.round(bitmap.height * scale);
  const context = canvas.getContext("2d");
  context.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  const colours = new OffscreenCanvas(w, h);
  colours.getContext("2d").putImageData(new ImageData(colourise(heatmap), w, h), 0, 0);
  const { size, box } = geometry(bitmap.width, bitmap.height, meta);
  const sx = (bitmap.width / size[0]) * scale;
  const sy = (bitmap.height / size[1]) * scale;
  context.save();
  context.beginPath();
  context.rect(0, 0, canvas.width, canvas.height);
  context.clip();
  context.globalAlpha = 0.5;
  context.drawImage(colours, box[0] * sx, box[1] * sy, w * sx, h * sy);
  context.restore();
  return { context, scale };
}

function show(bitmap, heatmap, top, explainedLabel) {
  drawOverlay(bitmap, heatmap);
  $("explained").textContent = explainedLabel;
  $("list-title").textContent = "Top 5";
  $("top5").replaceChildren(
    ...top.map(({ label, probability }) => {
      const item = document.createElement("li");
      item.textContent = `${label} — ${(probability * 100).toFixed(1)} %`;
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.style.width = `${Math.max(2, probability * 120)}px`;
      item.append(bar);
      return item;
    }),
  );
  $("result").classList.add("shown");
}

// Every detection's box (its slot's tab10 colour, as camexport explain draws it) and caption; the picked one's
// heatmap under them (none picked: -1, no detection). Clicking a detection in the list picks it.
function showDetections(bitmap, found, picked) {
  const [h, w] = state.meta.size;
  const { context, scale } = drawOverlay(bitmap, picked >= 0 ? found[picked].heatmap : new Float32Array(h * w));
  const line = Math.max(2, Math.round(Math.max(context.canvas.width, context.canvas.height) / 250));
  context.font = `${Math.max(12, Math.round(Math.max(context.canvas.width, context.canvas.height) / 40))}px system-ui, sans-serif`;
  found.forEach(({ slot, label, score, box }, i) => {
    const colour = `rgb(${TAB10[slot % TAB10.length].join(",")})`;
    const [x1, y1, x2, y2] = box.map((v) => v * scale);
    context.strokeStyle = colour;
    context.lineWidth = i === picked ? 2 * line : line;
    context.strokeRect(x1, y1, x2 - x1, y2 - y1);
    const caption = `${label} ${score.toFixed(2)}`;
    const height = parseInt(context.font, 10) + line;
    const top = y1 - height >= 0 ? y1 - height : y1;
    context.fillStyle = colour;
    context.fillRect(x1, top, context.measureText(caption).width + 2 * line, height);
    context.fillStyle = "white";
    context.fillText(caption, x1 + line, top + height - line);
  });
  $("explained").textContent = picked >= 0 ? `detection ${found[picked].slot}: ${found[picked].label}` : "no detection over the threshold";
  $("list-title").textContent = `Detections (${found.length}) — pick one for its heatmap`;
  $("top5").replaceChildren(
    ...found.map(({ slot, label, score }, i) => {
      const item = document.createElement("li");
      item.textContent = `${label} — ${score.toFixed(2)}`;
      item.className = i === picked ? "detection picked" : "detection";
      item.style.borderLeftColor = `rgb(${TAB10[slot % TAB10.length].join(",")})`;
      item.addEventListener("click", () => showDetections(bitmap, found, i));
      return item;
    }),
  );
  $("result").classList.add("shown");
}

async function guarded(action) {
  try {
    await action();
  } catch (error) {
    fail(String(error.message ?? error).split("\n")[0]);
  }
}

function onFile(input, drop, handle) {
  input.addEventListener("change", () => input.files[0] && guarded(() => handle(input.files[0])));
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (file) guarded(() => handle(file));
  });
}

async function graphFile(file) {
  await loadGraph(new Uint8Array(await file.arrayBuffer()), file.name);
}

async function start() {
  onFile($("graph-file"), $("graph-drop"), graphFile);
  onFile($("photo-file"), $("photo-drop"), explain);
  const url = new URLSearchParams(location.search).get("graph");
  if (url) {
    status(`Fetching ${url}…`);
    const response = await fetch(url);
    if (!response.ok) throw new Error(`${url}: HTTP ${response.status}; check the ?graph= address`);
    await loadGraph(new Uint8Array(await response.arrayBuffer()), url.split("/").pop());
  } else {
    status("Pick a camexport graph (.onnx).");
  }
}

guarded(start).finally(() => {
  window.camexport.ready = true;
});
