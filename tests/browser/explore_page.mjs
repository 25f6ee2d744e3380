// Uses a gridtsne web page as a person would, in headless Chromium, and reports what it saw.
//   node explore_page.mjs '{"page": "/abs/index.html", "search": "zebra", "keys": [...], ...}'
// Job fields (cells are row-major cell numbers of the grid):
//   hostile: cells whose names must show as text; search: a word that finds one photo;
//   similarOf: cells whose "more like this" to read; keys: arrow keys pressed from keyStart;
//   rectangle: [cornerCell, cornerCell]; lasso: points in cells [[col, row], ...]; screenshot: a path
//   (taken last, with the search on and the panel open on its first match, or on cell "shotOpen" with
//   the whole map beside it); viewport: [width, height] (1000 x 700);
//   folders: {toggle, queries, cells, shots, all: [firstCell, lastCell]}: switch a folder off, search, select;
//   labels: {toggle, queries, open}: the legend, a label switched off; regions: true: names at the whole map.
// Prints one JSON object.
import { readFileSync } from "node:fs";
import { chromium } from "playwright-core";

const job = JSON.parse(process.argv[2]);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"],
});
const report = { errors: [], requests: [] };
const state = (page) => page.evaluate(() => window.gridtsneView.state());
const centre = (page, cell) => page.evaluate((c) => window.gridtsneView.cellCentre(c), cell);

// Shift-drag a rectangle from a little outside one cell to a little outside another: a selection.
async function shiftDrag(page, firstCell, lastCell) {
  const a = await centre(page, firstCell), b = await centre(page, lastCell);
  await page.keyboard.down("Shift");
  await page.mouse.move(a.x - 5, a.y - 5);
  await page.mouse.down();
  await page.mouse.move(b.x + 5, b.y + 5, { steps: 6 });
  await page.mouse.up();
  await page.keyboard.up("Shift");
}
const settle = (page) => page.waitForFunction(() => !window.gridtsneView.state().flying, null, { timeout: 5000 })
  .then(() => page.waitForTimeout(50));

async function open(context, url) {
  const page = await context.newPage();
  page.on("console", (message) => { if (message.type() === "error") report.errors.push(message.text()); });
  page.on("pageerror", (error) => report.errors.push(String(error)));
  page.on("requestfailed", (request) => report.errors.push("failed to load " + request.url()));
  page.on("request", (request) => {
    const url = request.url();
    if (!url.startsWith("file://") && !url.startsWith("blob:") && !url.startsWith("data:")) report.requests.push(url);
  });
  await page.goto(url, { waitUntil: "load" });
  await page.waitForFunction(() => window.gridtsneView && window.gridtsneView.tilesLoaded() > 0, null,
                             { timeout: 10000 });
  return page;
}

async function click(page, cell) {
  const at = await centre(page, cell);
  await page.mouse.click(at.x, at.y);
  await page.waitForSelector("#panel.open", { timeout: 5000 });
}

async function readDownload(page, button) {
  const [download] = await Promise.all([page.waitForEvent("download", { timeout: 5000 }), page.click(button)]);
  return { name: download.suggestedFilename(), text: readFileSync(await download.path(), "utf-8") };
}

try {
  const [width, height] = job.viewport || [1000, 700];
  const context = await browser.newContext({ viewport: { width, height }, acceptDownloads: true });
  const page = await open(context, "file://" + job.page);

  // The whole map at first sight: below the toolbar, beside the open list of labels.
  report.initial = await page.evaluate(() => ({
    toolbarBottom: document.getElementById("top").getBoundingClientRect().bottom,
    groupsRight: document.getElementById("groups").hidden ? null
      : document.getElementById("groups").getBoundingClientRect().right,
    firstCell: window.gridtsneView.cellCentre(0), cellPx: window.gridtsneView.state().cellPx,
  }));

  // Hostile names: hover and open each; what shows must be the name itself, as text.
  report.hostile = [];
  for (const cell of job.hostile || []) {
    await page.keyboard.press("0");
    const at = await centre(page, cell);
    await page.mouse.move(at.x, at.y);
    await page.waitForTimeout(30);
    const label = await page.textContent("#name");
    await click(page, cell);
    report.hostile.push({
      cell, label,
      panel: await page.textContent("#p-name"),
      link: await page.evaluate(() => document.getElementById("p-open").href),
      elements: await page.evaluate(() => document.querySelectorAll("#p-name *, #label *:not(span):not(br):not(small)").length),
    });
    await page.keyboard.press("Escape");
  }
  report.scripts = await page.evaluate(() => Array.from(document.scripts, (s) => s.getAttribute("src")));
  report.pwned = await page.evaluate(() => window.pwned === true);

  // Search: "/" focuses the box; the count shows; Enter flies to the match and opens it.
  if (job.search) {
  await page.keyboard.press("0");
  await page.keyboard.press("/");
  report.searchFocused = await page.evaluate(() => document.activeElement.id === "search");
  await page.keyboard.type(job.search);
  report.searchCount = await page.textContent("#count");
  const before = await state(page);
  await page.keyboard.press("Enter");
  await settle(page);
  const after = await state(page);
  report.search = { matches: after.matches, opened: after.opened, cellPxBefore: before.cellPx, cellPxAfter: after.cellPx };
  if (after.opened) {
    const at = await centre(page, after.opened.cell);
    report.search.onScreenAt = at;
  }
  report.searchMulti = [];
  for (const query of job.multiSearch || []) {
    await page.fill("#search", query);
    report.searchMulti.push({ query, matches: (await state(page)).matches });
  }
  await page.fill("#search", "");
  await page.keyboard.press("Escape");  // leaves the box
  await page.evaluate(() => document.activeElement.blur());
  }

  // More like this: the panel's list, and a click on the first flies there and opens it.
  report.similar = [];
  for (const cell of job.similarOf || []) {
    await page.keyboard.press("0");
    await click(page, cell);
    await page.waitForFunction(() => window.gridtsneView.state().near !== null, null, { timeout: 5000 });
    const shown = await page.$$eval("#similar button", (buttons) => buttons.map((b) => b.title));
    report.similar.push({ cell, near: (await state(page)).near, shown });
  }
  if ((job.similarOf || []).length) {
    await page.click("#similar button >> nth=0");
    await settle(page);
    report.similarClicked = (await state(page)).opened;
  }

  // Keyboard: the arrows move the open photo along the grid.
  report.keys = [];
  if (job.keyStart !== undefined) {
    await page.keyboard.press("0");
    await click(page, job.keyStart);
    for (const key of job.keys) {
      await page.keyboard.press(key);
      await settle(page);
      report.keys.push((await state(page)).opened.cell);
    }
    await page.keyboard.press("Escape");
    report.closedByEscape = (await state(page)).opened === null;
  }

  // Select: Shift-drag a rectangle, download the list; Alt-drag a lasso.
  await page.keyboard.press("0");
  await page.waitForTimeout(50);
  if (job.rectangle) {
    await shiftDrag(page, job.rectangle[0], job.rectangle[1]);
    report.rectangle = {
      selected: (await state(page)).selected,
      count: await page.textContent("#selected"),
      txt: await readDownload(page, "#download-txt"),
      csv: await readDownload(page, "#download-csv"),
    };
  }
  if (job.lasso) {
    const geometry = await page.evaluate(() => {
      const a = window.gridtsneView.cellCentre(0), b = window.gridtsneView.cellCentre(1);
      const pitch = b.x - a.x;  // screen px per cell
      return { x0: a.x, y0: a.y, pitch };
    });
    // A lasso point (col, row) in cells, from the grid's corner: cell (0, 0)'s centre is at (0.5, 0.5)-ish.
    const at = ([col, row]) => ({ x: geometry.x0 + (col - 0.5) * geometry.pitch, y: geometry.y0 + (row - 0.5) * geometry.pitch });
    const points = job.lasso.map(at);
    await page.keyboard.down("Alt");
    await page.mouse.move(points[0].x, points[0].y);
    await page.mouse.down();
    for (const point of points.slice(1)) await page.mouse.move(point.x, point.y, { steps: 4 });
    await page.mouse.up();
    await page.keyboard.up("Alt");
    report.lasso = { selected: (await state(page)).selected, txt: await readDownload(page, "#download-txt") };
  }

  // Deep links: a link reopens the same view, photo, search and selection; back and forward move between views.
  if (job.link) {
    await page.keyboard.press("0");
    await page.fill("#search", job.search);
    await page.evaluate(() => document.activeElement.blur());
    await click(page, job.link.open);
    await page.mouse.move(900, 650);
    await page.mouse.wheel(0, -200);  // zoom in a little on a corner
    await page.waitForTimeout(400);   // the link follows the view after a pause
    const url = page.url();
    const here = await state(page);
    const again = await open(context, url);
    await again.waitForTimeout(200);
    report.link = { url, here, there: await state(again),
                    searchBox: await again.inputValue("#search"), panelName: await again.textContent("#p-name") };
    await again.close();
    await click(page, job.link.then);
    await page.goBack();
    await page.waitForTimeout(100);
    report.link.back = (await state(page)).opened;
    await page.goForward();
    await page.waitForTimeout(100);
    report.link.forward = (await state(page)).opened;
  }

  async function matchesOf(queries) {
    const found = {};
    for (const query of queries) {
      await page.fill("#search", query);
      found[query] = (await state(page)).matches;
    }
    await page.fill("#search", "");
    await page.evaluate(() => document.activeElement.blur());
    return found;
  }
  async function reset() {  // no open photo, no search, no selection
    await page.keyboard.press("Escape");
    await page.fill("#search", "");
    await page.evaluate(() => document.activeElement.blur());
    if (await page.isVisible("#clear")) await page.click("#clear");
  }
  async function selectAll(first, last) {
    await shiftDrag(page, first, last);
    const selected = (await state(page)).selected;
    await page.click("#clear");
    return selected;
  }

  // Folders: the list opens from the toolbar; a folder switched off is dimmed and left out of
  // search matches and selections; "all on" brings it back.
  if (job.folders) {
    await reset();
    await page.click("#groups-button");
    await page.keyboard.press("0");  // the whole map, beside the open list
    await page.waitForTimeout(400);
    const before = await state(page);
    const cells = {};
    for (const cell of job.folders.cells) cells[cell] = await centre(page, cell);
    await page.mouse.move(2, 690);  // no hover outline in the pictures
    await page.screenshot({ path: job.folders.shots[0] });
    const index = before.folders.findIndex((f) => f.name === job.folders.toggle);
    await page.click(`#folder-list li:nth-child(${index + 1}) button`);
    await page.mouse.move(2, 690);
    await page.waitForTimeout(200);
    await page.screenshot({ path: job.folders.shots[1] });
    const after = await state(page);
    report.folders = { before: before.folders, after: after.folders, off: after.off, cells,
                       pressed: await page.getAttribute(`#folder-list li:nth-child(${index + 1}) button`, "aria-pressed"),
                       matches: await matchesOf(job.folders.queries),
                       selected: await selectAll(job.folders.all[0], job.folders.all[1]) };
    await page.click("#all-on");
    report.folders.restored = (await state(page)).off;
    await page.click("#groups-button");
  }

  // Labels: the legend is open from the start, each label with its count and colour; a label
  // switched off is left out as a folder is.
  if (job.labels) {
    await reset();
    const first = await state(page);
    report.labels = {
      open: await page.isVisible("#groups"), colour: first.colour, legend: first.labels, folders: first.folders,
      button: await page.textContent("#groups-button"),
      width: await page.evaluate(() => document.getElementById("groups").getBoundingClientRect().width),
      markup: await page.evaluate(() => document.querySelectorAll("#groups .gname *").length),
      swatches: await page.$$eval("#label-list .swatch", (all) => all.map((i) => i.style.background)),
    };
    const index = first.labels.findIndex((l) => l.name === job.labels.toggle);
    await page.click(`#label-list li:nth-child(${index + 1}) button`);
    const after = await state(page);
    report.labels.off = after.off;
    report.labels.after = after.labels;
    report.labels.matches = await matchesOf(job.labels.queries);
    await page.click("#all-on");
    report.labels.restored = (await state(page)).off;
    await page.keyboard.press("0");
    await click(page, job.labels.open);
    report.labels.panel = await page.textContent("#p-label");
    await page.keyboard.press("Escape");
  }

  // Region names: on the whole map, never over one another; a click on one zooms to its region.
  if (job.regions) {
    await reset();
    await page.keyboard.press("0");
    await page.waitForTimeout(200);
    const whole = await state(page);
    report.regions = { names: whole.names, cellPx: whole.cellPx };
    if (whole.names.length) {
      await page.mouse.click(whole.names[0].x, whole.names[0].y);
      await settle(page);
      const after = await state(page);
      const [c0, r0, c1, r1] = whole.names[0].box;
      const cols = await page.evaluate(() => window.GRIDTSNE.cols);
      report.regions.after = {
        cellPx: after.cellPx, opened: after.opened, names: after.names,
        corners: [await centre(page, r0 * cols + c0), await centre(page, (r1 - 1) * cols + c1 - 1)],
      };
      await page.goBack();
      await page.waitForTimeout(200);
      report.regions.back = (await state(page)).cellPx;
    }
  }

  report.pwnedAtEnd = await page.evaluate(() => window.pwned === true);

  if (job.screenshot) {  // the panel open on the search's first match (or on cell "shotOpen")
    await page.keyboard.press("0");
    await page.fill("#search", job.search);
    if (job.shotOpen !== undefined) {  // opened on the whole map, then the map fitted beside the panel
      await page.evaluate(() => document.activeElement.blur());
      await click(page, job.shotOpen);
      await page.keyboard.press("0");
    } else {
      await page.press("#search", "Enter");
      await settle(page);
      await page.evaluate(() => document.activeElement.blur());
    }
    await page.waitForFunction(() => window.gridtsneView.state().near !== null, null, { timeout: 5000 });
    await page.mouse.move(2, height - 10);  // off the map: no name beside the pointer
    await page.waitForTimeout(300);
    await page.screenshot({ path: job.screenshot });
  }
} finally {
  await browser.close();
}
console.log(JSON.stringify(report));
