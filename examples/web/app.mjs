// The page: a camexport graph (picked, dropped, or named by ?graph=URL) and a photo in; the top-5 classes and the
// heatmap's overlay out, or for a detector graph every detection (its box, label and score) and, for the one picked
// in the list, its own heatmap. Any of the top 5 (or any label typed) can be explained instead of the top-1, any of
// the graph's methods shown, the overlay's opacity and colours changed and the overlay downloaded as a PNG (byte for
// byte what `camexport explain --format png` writes). onnxruntime-web runs the graph on the backend picked: the best
// available is WebGPU on a hardware adapter, else WebAssembly (threaded when the page is cross-origin isolated); a
// software WebGPU adapter is named as such. Every failure is shown on the page as one line.
import * as ort from "./node_modules/onnxruntime-web/dist/ort.all.min.mjs";
import { decode as decodePng } from "fast-png"; // mapped to ./node_modules by index.html's import map
import decodeJpeg from "./node_modules/@jsquash/jpeg/decode.js";
import {
  channelsOf, classIndex, COLORMAPS, colourise, detectionsOf, geometry, heatmapOutput, imageInput, overlayOnPhoto, readMetadata,
  TAB10, toPixels, topK,
} from "./camexport.mjs";
import { cmykCodec, decodeImage, sniff } from "./decode.mjs";

const $ = (id) => document.getElementById(id);
ort.env.wasm.wasmPaths = new URL("./node_modules/onnxruntime-web/dist/", import.meta.url).href;
ort.env.wasm.numThreads = self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
ort.env.logLevel = "error";

// The graph (its bytes, to load it again on another backend), the photo, the last run's outputs and what is shown.
const state = { bytes: null, name: null, session: null, meta: null, backend: null, photo: null, outputs: null, view: null, ticket: 0 };
// What the page showed last, for scripts that drive it (tests/e2e/test_web.py): the numbers behind the pixels; and
// the page's decoder, which those scripts compare with Python's on the fixtures (tests/image_fixtures.py).
window.camexport = { ready: false, result: null, error: null, runs: 0, decode: decodeUrl };

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

// --- the backend: what this browser offers, and a session on the one asked for ---
async function webgpuAdapter() {
  if (!("gpu" in navigator)) return null;
  try {
    const adapter = await navigator.gpu.requestAdapter();
    if (!adapter) return null;
    const info = adapter.info ?? {};
    return { software: Boolean(info.isFallbackAdapter ?? adapter.isFallbackAdapter), name: info.description || info.vendor || "" };
  } catch {
    return null;
  }
}

// The backends to try, in order, for the choice in the menu; "auto" skips a software WebGPU adapter (seconds a photo).
async function backendsFor(choice) {
  const gpu = await webgpuAdapter();
  if (choice === "webgpu" && !gpu) throw new Error("this browser offers no WebGPU adapter; pick WebAssembly or best available");
  if (choice === "webnn" && !("ml" in navigator)) throw new Error("this browser offers no WebNN; pick WebAssembly or best available");
  if (choice !== "auto") return { order: [choice], gpu };
  return { order: gpu && !gpu.software ? ["webgpu", "wasm"] : ["wasm"], gpu };
}

function describeBackend(backend, gpu) {
  if (backend === "webgpu" && gpu?.software) return "WebGPU on a software adapter (no GPU used: expect seconds a photo)";
  if (backend === "webgpu") return `WebGPU${gpu?.name ? ` (${gpu.name})` : ""}`;
  if (backend === "webnn") return "WebNN";
  const threads = ort.env.wasm.numThreads;
  const why = !self.crossOriginIsolated ? "; serve the page with serve.py for threads" : "";
  const skipped = gpu?.software ? "; WebGPU offers only a software adapter here" : gpu ? "" : "; no WebGPU here";
  return `WebAssembly on the CPU, ${threads} thread${threads > 1 ? "s" : ""}${why}${skipped}`;
}

async function createSession(bytes, choice) {
  const { order, gpu } = await backendsFor(choice);
  let lastError;
  for (const backend of order) {
    try {
      const session = await ort.InferenceSession.create(bytes, { executionProviders: [backend] });
      return { session, backend, described: describeBackend(backend, gpu) };
    } catch (error) {
      lastError = error; // WebGPU offered but unusable (an op it lacks): WebAssembly next
    }
  }
  throw lastError;
}

// --- the graph ---
function forgetGraph() {
  Object.assign(state, { bytes: null, name: null, session: null, meta: null, backend: null, outputs: null, view: null });
  $("result").classList.remove("shown");
  $("graph-info").textContent = "No graph loaded.";
  $("backend-info").textContent = "";
  window.camexport.result = null;
}

async function loadGraph(bytes, name) {
  clearError();
  const again = bytes === state.bytes; // the same graph on another backend: the photo shown is explained again
  forgetGraph(); // a graph refused below leaves nothing of the one before on screen
  if (!again) state.photo = null;
  const meta = readMetadata(bytes, name); // throws a one-line Error for a file that is not a camexport graph
  status(`Loading ${name}…`);
  let created;
  try {
    created = await createSession(bytes, $("backend").value);
  } catch (error) {
    Object.assign(state, { bytes, name }); // another backend can be picked for the same graph
    throw new Error(`${name}: onnxruntime-web cannot load it (${String(error.message ?? error).split("\n")[0]})`);
  }
  Object.assign(state, { bytes, name, session: created.session, backend: created.backend, meta });
  const [h, w] = meta.size;
  const found = meta.detection ? `, up to ${meta.detection.max_detections} detections over ${meta.detection.score_threshold}` : "";
  const methods = meta.methods.length > 1 ? `methods ${meta.methods.join(", ")}` : meta.method;
  $("graph-info").textContent = `${meta.model}, ${methods}, ${w}×${h} ${meta.input} input, ${meta.labels.length} classes${found}` +
    (meta.randomWeights ? " — random weights: its labels mean nothing" : "");
  $("backend-info").textContent = created.described;
  fillControls(meta);
  status(`Graph ready (${created.backend}). Pick a photo.`);
  if (state.photo) await runGraph(-1, {});
}

function fillControls(meta) {
  $("method").replaceChildren(...meta.methods.map((m) => new Option(m, m)));
  $("method-control").hidden = meta.methods.length < 2;
  $("labels").replaceChildren(...meta.labels.map((label) => new Option(label)));
  $("class-control").hidden = meta.task === "detection";
}

// --- the photo: {bitmap (to draw), rgba, width, height, name} ---
// PNG and JPEG as Python decodes them (decode.mjs); any other format (WebP, GIF, BMP) by the browser, whose decoding
// Python's may not match.
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

const since = (t) => performance.now() - t;

// A photo picked: decoded, resized and run. What is on screen changes only when its run is done; a photo that fails
// clears it; a photo picked while another is still being read or run wins (the older run is dropped).
async function explain(file) {
  clearError();
  if (!state.session) throw new Error("no graph loaded yet; pick a .onnx graph written by 'camexport build' first");
  status(`Explaining ${file.name}…`);
  const ticket = ++state.ticket;
  try {
    const started = performance.now();
    const photo = { ...(await decode(file)), name: file.name };
    const decoded = since(started);
    const t = performance.now();
    photo.pixels = toPixels(photo.rgba, photo.width, photo.height, state.meta);
    await runGraph(-1, { decode: decoded, resize: since(t) }, started, photo, ticket);
  } catch (error) {
    if (ticket === state.ticket) forgetResult();
    throw error;
  }
}

function forgetResult() {
  Object.assign(state, { photo: null, outputs: null, view: null });
  $("result").classList.remove("shown");
  window.camexport.result = null;
}

// Runs the graph on a photo's pixels for `target` (−1: its top-1; for a detector, a class filter) and shows it,
// unless a newer run has started meanwhile.
async function runGraph(target, timings, started = performance.now(), photo = state.photo, ticket = ++state.ticket) {
  const { meta, session } = state;
  const input = imageInput(photo.pixels, meta);
  const t = performance.now();
  const outputs = await session.run({
    image: new ort.Tensor(input.type, input.data, input.dims),
    target_class: new ort.Tensor("int64", BigInt64Array.from([BigInt(target)]), [1]),
  });
  if (ticket !== state.ticket || session !== state.session) return; // a newer photo, class or graph is on its way
  const graph = since(t);
  Object.assign(state, { photo, outputs, view: { picked: 0, method: $("method").value || meta.methods[0] } });
  const drawn = performance.now();
  render();
  const times = { ...timings, graph, draw: since(drawn), total: since(started) };
  $("timing").textContent = Object.entries(times).map(([stage, ms]) => `${stage} ${ms.toFixed(0)} ms`).join(" · ") + ` on ${state.backend}`;
  window.camexport.result = { ...window.camexport.result, timings: times };
  window.camexport.runs += 1;
  status(`${photo.name}: ${photo.width}×${photo.height}, explained in ${(times.total / 1000).toFixed(2)} s (${state.backend}).`);
}

// --- drawing ---
function style() {
  return { alpha: Number($("alpha").value), colormap: $("colormap").value };
}

function render() {
  const { meta, outputs, photo, view } = state;
  if (meta.task === "detection") {
    const found = detectionsOf(outputs, meta, photo.width, photo.height, 0, view.method);
    const picked = found.length ? Math.min(view.picked, found.length - 1) : -1;
    showDetections(photo.bitmap, found, picked);
    const listed = found.map(({ slot, classIndex, label, score, box, heatmap }) => ({ slot, classIndex, label, score, box, heatmap: Array.from(heatmap) }));
    window.camexport.result = { file: photo.name, detections: listed, backend: state.backend };
    return;
  }
  const top = topK(outputs.logits.data, meta.labels, 5);
  const explained = Number(outputs.class_index.data[0]);
  const heatmap = outputs[heatmapOutput(meta, view.method)].data;
  showClasses(photo.bitmap, heatmap, top, explained);
  window.camexport.result = { file: photo.name, top, explained, method: view.method, heatmap: Array.from(heatmap), backend: state.backend, ...style() };
}

// The photo, with the heatmap (the chosen colours and opacity) over the part of it the network saw (the centre
// crop); returns the canvas's context and its scale from the photo's pixels.
function drawOverlay(bitmap, heatmap) {
  const meta = state.meta;
  const [h, w] = meta.size;
  const scale = Math.min(1, 560 / Math.max(bitmap.width, bitmap.height));
  const canvas = $("overlay");
  canvas.width = Math.round(bitmap.width * scale);
  canvas.height = Math.round(bitmap.height * scale);
  const context = canvas.getContext("2d");
  context.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  const colours = new OffscreenCanvas(w, h);
  colours.getContext("2d").putImageData(new ImageData(colourise(heatmap, style().colormap), w, h), 0, 0);
  const { size, box } = geometry(bitmap.width, bitmap.height, meta);
  const sx = (bitmap.width / size[0]) * scale;
  const sy = (bitmap.height / size[1]) * scale;
  context.save();
  context.beginPath();
  context.rect(0, 0, canvas.width, canvas.height);
  context.clip();
  context.globalAlpha = style().alpha;
  context.drawImage(colours, box[0] * sx, box[1] * sy, w * sx, h * sy);
  context.restore();
  return { context, scale };
}

// The top 5, each a button that explains its class; the one explained is marked, and said with the method shown.
function showClasses(bitmap, heatmap, top, explained) {
  const { meta, view } = state;
  drawOverlay(bitmap, heatmap);
  $("explained").textContent = meta.labels[explained];
  $("method-shown").textContent = `(${view.method})`;
  $("list-title").textContent = "Top 5 — click one to explain it";
  $("top5").replaceChildren(
    ...top.map(({ index, label, probability }) => {
      const item = document.createElement("li");
      item.textContent = `${label} — ${(probability * 100).toFixed(1)} %`;
      item.className = index === explained ? "pickable current" : "pickable";
      item.tabIndex = 0;
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.style.width = `${Math.max(2, probability * 120)}px`;
      item.append(bar);
      const pick = () => guarded(() => runGraph(index, {}));
      item.addEventListener("click", pick);
      item.addEventListener("keydown", (event) => event.key === "Enter" && pick());
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
  $("method-shown").textContent = `(${state.view.method})`;
  $("list-title").textContent = `Detections (${found.length}) — pick one for its heatmap`;
  $("top5").replaceChildren(
    ...found.map(({ slot, label, score }, i) => {
      const item = document.createElement("li");
      item.textContent = `${label} — ${score.toFixed(2)}`;
      item.className = i === picked ? "detection picked" : "detection";
      item.style.borderLeftColor = `rgb(${TAB10[slot % TAB10.length].join(",")})`;
      item.addEventListener("click", () => {
        state.view.picked = i;
        render();
      });
      return item;
    }),
  );
  $("result").classList.add("shown");
}

// The overlay as a PNG file: a classifier's is overlayOnPhoto's (the photo at its own size, Python's bytes); a
// detector's is the canvas, with its boxes and captions.
async function downloadOverlay() {
  const { meta, outputs, photo, view } = state;
  let blob;
  if (meta.task === "detection") {
    blob = await new Promise((resolve) => $("overlay").toBlob(resolve, "image/png"));
  } else {
    const rgb = overlayOnPhoto(photo.rgba, photo.width, photo.height, outputs[heatmapOutput(meta, view.method)].data, meta, style());
    const rgba = new Uint8ClampedArray(photo.width * photo.height * 4);
    for (let i = 0, j = 0; i < rgb.length; i += 3, j += 4) { // no array per pixel: a photo can be 24 megapixels
      rgba[j] = rgb[i];
      rgba[j + 1] = rgb[i + 1];
      rgba[j + 2] = rgb[i + 2];
      rgba[j + 3] = 255;
    }
    const canvas = new OffscreenCanvas(photo.width, photo.height);
    canvas.getContext("2d").putImageData(new ImageData(rgba, photo.width, photo.height), 0, 0);
    blob = await canvas.convertToBlob({ type: "image/png" });
  }
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = `${photo.name.replace(/\.[^.]*$/, "")}_cam.png`;
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
}

async function explainTyped() {
  const text = $("class-input").value;
  if (!text.trim()) throw new Error("type a label (or a class index) to explain, e.g. one of the top 5");
  await runGraph(classIndex(text, state.meta.labels), {});
}

// --- events ---
async function guarded(action) {
  try {
    await action();
  } catch (error) {
    fail(String(error.message ?? error).split("\n")[0]);
  }
}

function onFile(input, drop, handle) {
  input.addEventListener("change", () => {
    const file = input.files[0];
    input.value = ""; // picking the same file again is a change too
    if (file) guarded(() => handle(file));
  });
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

function whenShown(action) {
  return () => state.outputs && guarded(async () => action());
}

// Backends this browser lacks stay in the menu, greyed out and saying so.
async function markBackends() {
  const missing = { webgpu: !(await webgpuAdapter()), webnn: !("ml" in navigator) };
  for (const option of $("backend").options) {
    if (!missing[option.value]) continue;
    option.disabled = true;
    option.textContent += " (not in this browser)";
  }
}

function onControls() {
  $("colormap").replaceChildren(...Object.keys(COLORMAPS).map((name) => new Option(name, name)));
  $("alpha").addEventListener("input", whenShown(render));
  $("colormap").addEventListener("change", whenShown(render));
  $("method").addEventListener("change", whenShown(() => {
    state.view.method = $("method").value;
    render();
  }));
  $("download").addEventListener("click", whenShown(downloadOverlay));
  $("class-go").addEventListener("click", whenShown(explainTyped));
  $("class-input").addEventListener("keydown", (event) => event.key === "Enter" && whenShown(explainTyped)());
  $("backend").addEventListener("change", () => state.bytes && guarded(() => loadGraph(state.bytes, state.name)));
}

// The graph at `url`, with its download's progress shown.
async function fetchGraph(url) {
  status(`Fetching ${url}…`);
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}; check the ?graph= address`);
  const total = Number(response.headers.get("content-length")) || 0;
  const reader = response.body.getReader();
  const chunks = [];
  let received = 0;
  $("progress").hidden = false;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    received += value.length;
    $("progress").value = total ? received / total : 0;
    const of = total ? ` of ${(total / 1e6).toFixed(1)} MB (${((100 * received) / total).toFixed(0)} %)` : " MB";
    status(`Fetching ${url}: ${(received / 1e6).toFixed(1)}${of}`);
  }
  $("progress").hidden = true;
  const bytes = new Uint8Array(received);
  chunks.reduce((at, chunk) => (bytes.set(chunk, at), at + chunk.length), 0);
  return bytes;
}

async function graphFile(file) {
  await loadGraph(new Uint8Array(await file.arrayBuffer()), file.name);
}

async function start() {
  onFile($("graph-file"), $("graph-drop"), graphFile);
  onFile($("photo-file"), $("photo-drop"), explain);
  onControls();
  await markBackends();
  const url = new URLSearchParams(location.search).get("graph");
  if (url) {
    await loadGraph(await fetchGraph(url), url.split("/").pop());
  } else {
    status("Pick a camexport graph (.onnx).");
  }
}

guarded(start).finally(() => {
  window.camexport.ready = true;
});
