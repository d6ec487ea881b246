// Drives the page in a real browser (Debian's chromium, headless, through playwright-core; no browser download):
//
//   node drive.mjs PAGE_URL PHOTO OUT.json [SCREENSHOT.png]
//   node drive.mjs PAGE_URL --decode OUT.json URL...
//
// Opens the page, waits for its graph (?graph=...), picks PHOTO in the photo input as a person would (unless the
// graph failed), waits for
// the answer or the error, and writes what the page showed: the top-5 text, the explained class, the error
// line, the heatmap numbers behind the overlay (window.camexport) and the overlay itself (a PNG data URL); for a
// detector graph it then clicks the second detection in the list and adds what the page showed then (picked). With --decode, it decodes each image URL
// (relative to the page) with the page's own decoder and writes {URL: {width, height, rgba}}. Set CHROMIUM to
// another browser binary.
import fs from "node:fs";
import { chromium } from "playwright-core";

const [url, photo, out, screenshot] = process.argv.slice(2);
if (!url || !photo || !out) {
  console.error("usage: node drive.mjs PAGE_URL PHOTO OUT.json [SCREENSHOT.png]");
  process.exit(2);
}
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-dev-shm-usage"], // root in CI needs --no-sandbox
  headless: true,
});
try {
  const page = await browser.newPage({ viewport: { width: 1000, height: 720 } });
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
  const shown = await page.evaluate(() => ({
    top5: [...document.querySelectorAll("#top5 li")].map((li) => li.textContent),
    explained: document.querySelector("#explained").textContent,
    error: document.querySelector("#error").classList.contains("shown") ? document.querySelector("#error").textContent : null,
    status: document.querySelector("#status").textContent,
    result: window.camexport.result,
    isolated: self.crossOriginIsolated,
    canvas: document.querySelector("#overlay").toDataURL("image/png"),
  }));
  const detections = await page.$$("#top5 li.detection");
  if (detections.length > 1) { // a detector graph: pick the second detection, as a person would, and see it shown
    await detections[1].click();
    Object.assign(shown, await page.evaluate(() => ({
      picked: { explained: document.querySelector("#explained").textContent, canvas: document.querySelector("#overlay").toDataURL("image/png") },
    })));
  }
  if (screenshot) await page.screenshot({ path: screenshot, fullPage: true });
  fs.writeFileSync(out, JSON.stringify({ ...shown, console: console_ }));
} finally {
  await browser.close();
}
