// The decoders ../web/decode.mjs takes, as Node.js loads them: fast-png, mozjpeg in WebAssembly (@jsquash/jpeg)
// and, for a CMYK JPEG only, libvips in WebAssembly (wasm-vips, started on first use).
import fs from "node:fs";
import { decode as decodePng } from "fast-png";
import decodeJpeg, { init as initJpeg } from "@jsquash/jpeg/decode.js";

import { cmykCodec } from "../web/decode.mjs";

const wasm = new URL("./node_modules/@jsquash/jpeg/codec/dec/mozjpeg_dec.wasm", import.meta.url);

export async function nodeCodecs() {
  await initJpeg(await WebAssembly.compile(fs.readFileSync(wasm)));
  return {
    png: (bytes) => decodePng(bytes),
    jpeg: (bytes) => decodeJpeg(bytes),
    cmyk: cmykCodec(async () => (await import("wasm-vips")).default({ dynamicLibraries: [] })),
  };
}
