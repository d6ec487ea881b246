// Drives the page in a real browser (Debian's chromium, headless, through playwright-core; no browser download):
//
//   node drive.mjs PAGE_URL PHOTO OUT.json [SCREENSHOT.png|-] [--tour]
//   node drive.mjs PAGE_URL --decode OUT.json URL...
//
// Opens the page, waits for its graph (?graph=...), picks PHOTO in the photo input as a person would (unless the
// graph failed), waits for
// the answer or the error, and writes what the page showed: the top-5 text, the explained class, the error
// line, the heatmap numbers behind the overlay (window.camexport) and the overlay itself (a PNG data URL); for a
// detector graph it then clicks the second detection in the list and adds what the page showed then (picked). With
// --tour (a classifier), it then picks the same photo again, clicks the second of the top 5, types the third's label,
// switches to the graph's second method (if it has one), sets opacity 0.3 and viridis, and downloads the overlay,
// recording each view (tour). With --decode, it decodes each image URL
// (relative to the page) with the page's own decoder and writes {URL: {width, height, rgba}}. Set CHROMIUM to
// another browser binary.
import fs from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";

const tourFlag = process.argv.includes("--tour") ? "--tour" : null;
const [url, photo, out, screenshot] = process.argv.slice(2).filter((arg) => arg !== "--tour");
if (!url || !photo || !out) {
  console.error("usage: node drive.mjs PAGE_URL PHOTO OUT.json [SCREENSHOT.png|-] [--tour]");
  process.exit(2);
}

// What the page shows now: the list, the class explained, the error, the numbers behind the overlay, the canvas.
const shownNow = (page) => page.evaluate(() => ({
  top5: [...document.querySelectorAll("#top5 li")].map((li) => li.textContent),
  explained: document.querySelector("#explained").textContent,
  methodShown: document.querySelector("#method-shown").textContent,
  graphInfo: document.querySelector("#graph-info").textContent,
  backendInfo: document.querySelector("#backend-info").textContent,
  backends: [...document.querySelectorAll("#backend option")].map((o) => ({ value: o.value, disabled: o.disabled })),
  timing: document.querySelector("#timing").textContent,
  error: document.querySelector("#error").classList.contains("shown") ? document.querySelector("#error").textContent : null,
  status: document.querySelector("#status").textContent,
  result: window.camexport.result,
  isolated: self.crossOriginIsolated,
  canvas: document.querySelector("#overlay").toDataURL("image/png"),
}));

// Does one thing as a person would and waits for the graph to have run again (or the page to show an error).
async function step(page, action) {
  const runs = await page.evaluate(() => window.camexport.runs);
  await action();
  await page.waitForFunction((n) => window.camexport.runs > n || window.camexport.error, runs, { timeout: 120_000 });
  return shownNow(page);
}

// --tour: every control of a classifier's page once, each step's view recorded.
async function tour(page, photoFile, folder) {
  const views = {};
  views.repicked = await step(page, () => page.setInputFiles("#photo-file", photoFile));
  views.clicked = await step(page, () => page.click("#top5 li:nth-child(2)"));
  const third = await page.evaluate(() => window.camexport.result.top[2].label);
  views.typed = await step(page, async () => {
    await page.fill("#class-input", third.toUpperCase());
    await page.press("#class-input", "Enter");
  });
  const methods = await page.$$eval("#method option", (options) => options.map((o) => o.value));
  if (methods.length > 1) {
    await page.selectOption("#method", methods[1]);
    views.method = await shownNow(page);
  }
  await page.fill("#alpha", "0.3"); // a range input takes fill() and fires input
  await page.selectOption("#colormap", "viridis");
  views.styled = await shownNow(page);
  const [download] = await Promise.all([page.waitForEvent("download"), page.click("#download")]);
  views.download = { name: download.suggestedFilename(), path: `${folder}/${download.suggestedFilename()}` };
  await download.saveAs(views.download.path);
  fs.writeFileSync(`${folder}/notes.onnx`, "these are notes, not a graph");
  await page.setInputFiles("#graph-file", `${folder}/notes.onnx`); // a graph refused: nothing of the old one stays
  await page.waitForFunction(() => window.camexport.error, null, { timeout: 60_000 });
  views.rejected = { ...(await shownNow(page)), resultShown: await page.isVisible("#result") };
  return views;
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-dev-shm-usage"], // root in CI needs --no-sandbox
  headless: true,
});
try {
  const page = await browser.newPage({ viewport: { width: 1000, height: 720 }, acceptDownloads: true });
  const console_ = [];
  page.on("console", (message) => message.type() === "error" && console_.push(message.text()));
  page.on("pageerror", (error) => console_.push(String(error)));
  await page.goto(url);
  await page.waitForFunction(() => window.camexport?.ready, null, { timeout: 120_000 });
  if (photo === "--decode") {
    const decoded = {};
    for (const image of process.argv.slice(5)) {
      decoded[image] = await page.evaluate((address) => window.camexport.decode(address).catch((e) => ({ error: e.message })), image);
    }
    fs.writeFileSync(out, JSON.stringify({ decoded, console: console_ }));
    await browser.close();
    process.exit(0);
  }
  if (!(await page.evaluate(() => window.camexport.error))) {
    await page.setInputFiles("#photo-file", photo); // unless the graph itself failed: then that error stands
  }
  await page.waitForFunction(() => window.camexport.result || window.camexport.error, null, { timeout: 120_000 });
  const shown = await shownNow(page);
  if (tourFlag === "--tour" && !shown.error) shown.tour = await tour(page, photo, path.dirname(path.resolve(out)));
  const detections = await page.$$("#top5 li.detection");
  if (detections.length > 1) { // a detector graph: pick the second detection, as a person would, and see it shown
    await detections[1].click();
    Object.assign(shown, await page.evaluate(() => ({
      picked: { explained: document.querySelector("#explained").textContent, canvas: document.querySelector("#overlay").toDataURL("image/png") },
    })));
  }
  if (screenshot && screenshot !== "-") await page.screenshot({ path: screenshot, fullPage: true });
  fs.writeFileSync(out, JSON.stringify({ ...shown, console: console_ }));
} finally {
  await browser.close();
}
