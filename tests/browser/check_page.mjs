// Opens a gridtsne web page from the file system in headless Chromium and reports what a user would see.
//   node check_page.mjs '{"page": "/abs/index.html", "cells": [3, 7], "screenshot": "/abs/shot.png"}'
// Optional: "zoomSteps": press + that often first; "pointAt": the cell to hover for the screenshot.
// Prints one JSON object: console errors, the label shown on hovering each cell, the link to the original
// in the details panel that a click opens.
import { chromium } from "playwright-core";

const job = JSON.parse(process.argv[2]);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"],
});
const report = { errors: [], hovers: [], opened: null, tilesLoaded: 0, firstTilesMs: null };
try {
  const page = await browser.newPage({ viewport: { width: job.width || 1000, height: job.height || 700 } });
  page.on("console", (message) => { if (message.type() === "error") report.errors.push(message.text()); });
  page.on("pageerror", (error) => report.errors.push(String(error)));
  page.on("requestfailed", (request) => report.errors.push("failed to load " + request.url()));
  const started = Date.now();
  await page.goto("file://" + job.page, { waitUntil: "load" });
  await page.waitForFunction(() => window.gridtsneView && window.gridtsneView.tilesLoaded() > 1,
                             null, { timeout: 10000 });
  report.firstTilesMs = Date.now() - started;  // from opening the page to the mosaic on screen
  for (let step = 0; step < (job.zoomSteps || 0); step++) await page.keyboard.press("+");
  await page.waitForTimeout(300);
  for (const cell of job.cells) {
    const at = await page.evaluate((c) => window.gridtsneView.cellCentre(c), cell);
    await page.mouse.move(at.x, at.y);
    await page.waitForTimeout(50);
    report.hovers.push({
      cell,
      hoveredCell: await page.evaluate(() => window.gridtsneView.hoveredCell()),
      name: await page.textContent("#name"),
      labelShown: await page.isVisible("#label"),
    });
  }
  if (job.cells.length) {
    const at = await page.evaluate((c) => window.gridtsneView.cellCentre(c), job.cells[0]);
    await page.mouse.click(at.x, at.y);  // opens the details panel, whose link goes to the original
    await page.waitForSelector("#panel.open", { timeout: 5000 });
    report.opened = await page.evaluate(() => document.getElementById("p-open").href);
    report.panelName = await page.textContent("#p-name");
    await page.mouse.move(2, 2);
  }
  if (job.pointAt !== undefined) {
    const at = await page.evaluate((c) => window.gridtsneView.cellCentre(c), job.pointAt);
    await page.mouse.move(at.x, at.y);
  }
  await page.waitForTimeout(300);
  report.tilesLoaded = await page.evaluate(() => window.gridtsneView.tilesLoaded());
  if (job.screenshot) await page.screenshot({ path: job.screenshot });
} finally {
  await browser.close();
}
console.log(JSON.stringify(report));
