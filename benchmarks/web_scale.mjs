// The browser half of benchmarks/web_scale.py: opens a gridtsne web page from the file system in
// headless Chromium and measures what a user waits for. Not a test: it reports, it does not judge.
//   node benchmarks/web_scale.mjs '{"page": "/abs/index.html", "queries": ["flower"], "loads": 3}'
// Needs playwright-core from tests/browser (npm ci --prefix tests/browser) and Chromium at
// /usr/bin/chromium (or $CHROMIUM). Prints one JSON object.
//
// Nothing here needs a hook in the page: an init script (run before the page's own scripts) notes
// when data.js assigned window.GRIDTSNE, when the first pyramid tile went onto a canvas
// (CanvasRenderingContext2D.drawImage of an image from tiles/), and how long the page's own
// requestAnimationFrame callbacks (its draws) take.
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";

const require = createRequire(new URL("../tests/browser/package.json", import.meta.url));
const { chromium } = require("playwright-core");

const job = JSON.parse(process.argv[2]);
const viewport = { width: job.width || 1280, height: job.height || 800 };
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"],
});

function instrument() {
  const bench = (window.__bench = { dataAt: null, firstTileAt: null, recording: false, work: [] });
  let data;
  Object.defineProperty(window, "GRIDTSNE", {
    configurable: true,
    get() { return data; },
    set(value) { data = value; if (bench.dataAt === null) bench.dataAt = performance.now(); },
  });
  const drawImage = CanvasRenderingContext2D.prototype.drawImage;
  CanvasRenderingContext2D.prototype.drawImage = function (image, ...rest) {
    if (bench.firstTileAt === null && image instanceof HTMLImageElement && /\/tiles\//.test(image.src)) {
      bench.firstTileAt = performance.now();
    }
    return drawImage.call(this, image, ...rest);
  };
  const raf = window.requestAnimationFrame.bind(window);
  bench.raf = raf;  // the benchmark's own frame callbacks go straight to the browser
  window.requestAnimationFrame = (callback) => raf((time) => {
    const started = performance.now();
    try { callback(time); } finally {
      if (bench.recording) bench.work.push([time, performance.now() - started]);
    }
  });
}

const quantile = (values, q) => {
  if (!values.length) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)];
};
const round = (v, digits = 1) => (v === null || v === undefined ? null : Number(v.toFixed(digits)));

async function openPage(context, errors) {
  const page = await context.newPage();
  await page.addInitScript(instrument);
  page.on("pageerror", (error) => errors.push(String(error)));
  page.on("console", (message) => { if (message.type() === "error") errors.push(message.text()); });
  const started = Date.now();
  await page.goto("file://" + job.page, { waitUntil: "commit" });
  await page.waitForFunction(() => window.__bench && window.__bench.firstTileAt !== null, null,
                             { timeout: 120000, polling: 50 });
  const wallMs = Date.now() - started;
  const timing = await page.evaluate(() => {
    const nav = performance.getEntriesByType("navigation")[0];
    return { firstTileMs: window.__bench.firstTileAt, dataJsMs: window.__bench.dataAt,
             domContentLoadedMs: nav.domContentLoadedEventEnd, loadMs: nav.loadEventEnd };
  });
  return { page, timing: { ...timing, wallMs } };
}

// Renderer processes (and the GPU process) of this browser, by CDP, and their memory from /proc.
async function processes() {
  const cdp = await browser.newBrowserCDPSession();
  const info = await cdp.send("SystemInfo.getProcessInfo");
  await cdp.detach();
  const out = [];
  for (const p of info.processInfo) {
    if (p.type !== "renderer" && p.type !== "GPU" && p.type !== "gpu-process") continue;
    let status;
    try { status = readFileSync(`/proc/${p.id}/status`, "utf-8"); } catch { continue; }
    const kb = (field) => Number((new RegExp(`^${field}:\\s+(\\d+)`, "m").exec(status) || [0, 0])[1]);
    out.push({ type: p.type, pid: p.id, cpuSeconds: round(p.cpuTime, 2),
               rssMiB: round(kb("VmRSS") / 1024), peakMiB: round(kb("VmHWM") / 1024) });
  }
  return out.sort((a, b) => b.cpuSeconds - a.cpuSeconds);  // the page's renderer first: it worked most
}

const report = { page: job.page, viewport, errors: [], loads: [] };
try {
  // First picture: each load in a fresh context (no memory cache; the OS file cache is warm).
  for (let i = 0; i < (job.loads || 3); i++) {
    const context = await browser.newContext({ viewport });
    const { timing } = await openPage(context, report.errors);
    report.loads.push(Object.fromEntries(Object.entries(timing).map(([k, v]) => [k, round(v)])));
    await context.close();
  }
  const firsts = report.loads.map((l) => l.firstTileMs);
  report.firstTileMs = { median: quantile(firsts, 0.5), max: Math.max(...firsts) };

  const context = await browser.newContext({ viewport });
  const { page } = await openPage(context, report.errors);
  await page.waitForTimeout(500);
  report.count = await page.evaluate(() => window.GRIDTSNE.count);

  // Search: from the input event (dispatched as typing would) to the match count shown, and to the
  // end of the frame that redraws the map. The first query of a page builds the index of names.
  report.search = [];
  for (const query of job.queries || []) {
    const times = [];
    for (let i = 0; i < (job.searchRepeats || 5); i++) {
      times.push(await page.evaluate(async (q) => {
        const frame = () => new Promise((resolve) => window.__bench.raf(resolve));
        const box = document.getElementById("search"), count = document.getElementById("count");
        const shown = () => !count.hidden && count.textContent !== "";
        box.value = ""; box.dispatchEvent(new Event("input", { bubbles: true }));
        await frame(); await frame();
        const started = performance.now();
        box.value = q; box.dispatchEvent(new Event("input", { bubbles: true }));
        let countAt = shown() ? performance.now() : null;
        await frame();  // runs after the page's own frame callback of this frame: its redraw
        const drawnAt = performance.now();
        while (countAt === null) { await frame(); if (shown()) countAt = performance.now(); }
        return { countMs: countAt - started, redrawnMs: drawnAt - started, text: count.textContent };
      }, query));
    }
    const warm = times.slice(1);
    report.search.push({
      query, shown: times[0].text,
      firstCountMs: round(times[0].countMs), firstRedrawnMs: round(times[0].redrawnMs),
      countMs: round(quantile(warm.map((t) => t.countMs), 0.5)),
      redrawnMs: round(quantile(warm.map((t) => t.redrawnMs), 0.5)),
      worstRedrawnMs: round(Math.max(...times.map((t) => t.redrawnMs))),
    });
  }
  await page.evaluate(() => {
    const box = document.getElementById("search");
    box.value = ""; box.dispatchEvent(new Event("input", { bubbles: true })); box.blur();
  });

  // Pan and zoom, with the mouse as a person would (wheel, drag), every frame's timestamp recorded.
  const centre = { x: viewport.width / 2, y: viewport.height / 2 };
  await page.keyboard.press("0");
  await page.waitForTimeout(500);
  await page.evaluate(() => {
    const bench = window.__bench;
    bench.frames = []; bench.work = []; bench.recording = true;
    const loop = (t) => { if (!bench.recording) return; bench.frames.push(t); bench.raf(loop); };
    bench.raf(loop);
  });
  const cellPx = () => page.evaluate(() => window.gridtsneView.state().cellPx);
  const steps = Math.max(1, Math.ceil(Math.log(128 / await cellPx()) / 0.2));  // to 1:1, 0.2 a notch
  const wheel = async (dy, n) => {
    for (let i = 0; i < n; i++) { await page.mouse.wheel(0, dy); await page.waitForTimeout(16); }
  };
  const drag = async (dx, dy, moves) => {
    await page.mouse.move(centre.x, centre.y);
    await page.mouse.down();
    for (let i = 1; i <= moves; i++) {
      await page.mouse.move(centre.x + (dx * i) / moves, centre.y + (dy * i) / moves);
      await page.waitForTimeout(8);
    }
    await page.mouse.up();
  };
  await page.mouse.move(centre.x, centre.y);
  await wheel(-100, steps);                        // fit -> full size (128 px cells)
  report.zoomedCellPx = round(await cellPx());
  for (const [dx, dy] of [[-1000, 0], [0, -600], [1000, 0], [0, 600]]) await drag(dx, dy, 100);
  await wheel(100, Math.ceil(steps / 2));          // halfway out: many small cells
  for (const [dx, dy] of [[-1000, 0], [0, -600], [1000, 0], [0, 600]]) await drag(dx, dy, 100);
  await wheel(100, steps);                         // out past fit, and in again
  await wheel(-100, steps);
  await page.waitForTimeout(300);
  const recorded = await page.evaluate(() => {
    const bench = window.__bench;
    bench.recording = false;
    return { frames: bench.frames, work: bench.work };
  });
  const intervals = recorded.frames.slice(1).map((t, i) => t - recorded.frames[i]);
  const perFrame = new Map();
  for (const [time, ms] of recorded.work) perFrame.set(time, (perFrame.get(time) || 0) + ms);
  const work = [...perFrame.values()];
  report.frames = {
    frames: intervals.length,
    medianMs: round(quantile(intervals, 0.5)), p99Ms: round(quantile(intervals, 0.99)),
    maxMs: round(Math.max(...intervals)),
    over20ms: intervals.filter((v) => v > 20).length,
    drawFrames: work.length,
    drawMedianMs: round(quantile(work, 0.5), 2), drawP99Ms: round(quantile(work, 0.99), 2),
    drawMaxMs: round(Math.max(...work), 2),
  };
  report.tilesLoaded = await page.evaluate(() => window.gridtsneView.tilesLoaded());

  // Memory: the renderer's resident memory now and at its peak (/proc), and the JS heap (CDP).
  const session = await context.newCDPSession(page);
  await session.send("Performance.enable");
  const metrics = Object.fromEntries((await session.send("Performance.getMetrics")).metrics
    .map((m) => [m.name, m.value]));
  report.memory = {
    jsHeapUsedMiB: round(metrics.JSHeapUsedSize / 2 ** 20), jsHeapTotalMiB: round(metrics.JSHeapTotalSize / 2 ** 20),
    processes: await processes(),
  };
  if (job.screenshot) await page.screenshot({ path: job.screenshot });
  await context.close();
} finally {
  await browser.close();
}
console.log(JSON.stringify(report));
