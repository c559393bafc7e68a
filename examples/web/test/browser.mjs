// Drives the demo page in Debian's headless Chromium as a person would, and saves screenshots.
//
//   node test/browser.mjs http://127.0.0.1:9080/ OUTPUT_DIR
//
// The page must be served through a gateway whose /kafka route allows topic "demo" (fed with
// records while this runs) and refuses topic "secret". Exits 0 when every check passes; prints
// what failed and saves failure.png otherwise. Run by tests/browser_demo.rs.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const [url, out = "."] = process.argv.slice(2);
if (!url) {
  console.error("usage: node test/browser.mjs PAGE_URL [OUTPUT_DIR]");
  process.exit(2);
}
mkdirSync(out, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
const page = await browser.newPage({ viewport: { width: 1200, height: 800 } });
const consoleErrors = [];
page.on("console", (m) => m.type() === "error" && consoleErrors.push(m.text()));
page.on("pageerror", (e) => consoleErrors.push(String(e)));

const rows = () => page.locator("#messages tbody tr[data-offset]").count();
/** Offsets of partition `p`'s rows, newest first. */
const offsets = (p = "0") =>
  page.$$eval(`#messages tbody tr[data-partition="${p}"]`, (trs) => trs.map((tr) => Number(tr.dataset.offset)));
const check = (ok, what) => {
  if (!ok) throw new Error(what);
  console.log(`ok: ${what}`);
};

try {
  await page.goto(url);
  await page.waitForFunction(() => document.querySelectorAll("#messages tbody tr[data-offset]").length >= 3, null, {
    timeout: 20_000,
  });
  check((await page.textContent("#status")) === "live", "the page is live and shows messages");
  const hwm = Number(await page.textContent("#hwm"));
  check(hwm >= 3, `the high watermarks are shown (${hwm})`);
  check(!Number.isNaN(Number(await page.textContent("#lag"))), "the lag is shown");
  const partitions = await page.$$eval("#partition option", (o) => o.map((x) => x.value));
  check(partitions.join(",") === "all,0,1", `the partition picker lists the topic's partitions (${partitions})`);
  // One subscription reads both partitions, each caught up once with the history.
  await page.waitForSelector("#caughtup:not([hidden])", { timeout: 10_000 });
  check(/Caught up at/.test(await page.textContent("#caughtup")), "the caught-up moment is shown");
  check((await page.locator("#messages tbody tr.caught-up").count()) === 1, "one caught-up marker in the table");
  const lags = await page.textContent("#lags");
  check(/p0: \d+ behind ✓/.test(lags) && /p1: 0 behind ✓/.test(lags), `per-partition lag from the pushes (${lags})`);
  const other = await page.$$eval('#messages tbody tr[data-partition="1"] td', (tds) => tds.map((td) => td.textContent));
  check(other[4] === "other partition", `the other partition's record is there (${other})`);
  const first = await page.$$eval('#messages tbody tr[data-partition="0"][data-offset="0"] td', (tds) =>
    tds.map((td) => td.textContent),
  );
  check(
    first[1] === "0" && first[3] === "k" && first[4] === "demo-0" && first[5] === "n=x",
    `from earliest partition 0 starts at offset 0 with its key, value and headers (${first})`,
  );
  await page.screenshot({ path: join(out, "demo-live.png"), fullPage: true });
  // The README's picture (docs/demo-page.png) is this one.
  await page.screenshot({ path: join(out, "demo-page.png"), clip: { x: 50, y: 0, width: 1100, height: 640 } });

  // Pause: nothing new arrives; resume: it flows again from where it stopped.
  await page.click("#pause");
  await page.waitForTimeout(600);
  const paused = await rows();
  await page.waitForTimeout(1500);
  check((await rows()) === paused, "no rows arrive while paused");
  check((await page.textContent("#status")) === "paused", "the status says paused");
  await page.click("#pause");
  await page.waitForFunction((n) => document.querySelectorAll("#messages tbody tr[data-offset]").length > n, paused, {
    timeout: 10_000,
  });
  const afterResume = await offsets();
  const sorted = [...afterResume].sort((a, b) => b - a);
  check(
    afterResume.every((o, i) => o === sorted[i]) && new Set(afterResume).size === afterResume.length,
    "after resume the rows continue without gaps or repeats",
  );
  check(afterResume[0] - afterResume[afterResume.length - 1] === afterResume.length - 1, "offsets are contiguous");

  // Start from an offset, in partition 0.
  await page.selectOption("#partition", "0");
  await page.selectOption("#from", "offset");
  await page.fill("#offset", "2");
  await page.click("#start");
  await page.waitForFunction(
    () => {
      const trs = document.querySelectorAll("#messages tbody tr[data-offset]");
      return trs.length >= 2 && trs[trs.length - 1].dataset.offset === "2";
    },
    null,
    { timeout: 10_000 },
  );
  check(true, "start from offset 2 shows offset 2 first");

  // Start from latest: nothing old, only what arrives next.
  const hwm0 = Number(await page.textContent("#hwm"));
  await page.selectOption("#from", "latest");
  await page.click("#start");
  await page.waitForFunction(() => document.querySelectorAll("#messages tbody tr[data-offset]").length >= 1, null, {
    timeout: 10_000,
  });
  const latest = await offsets();
  check(latest[latest.length - 1] >= hwm0, `start from latest skips history (first ${latest.at(-1)} >= ${hwm0})`);

  // A topic the route does not allow: a clear error naming the class.
  await page.fill("#topic", "secret");
  await page.selectOption("#from", "earliest");
  await page.click("#start");
  await page.waitForSelector("#error:not([hidden])", { timeout: 10_000 });
  const code = await page.getAttribute("#error", "data-code");
  const message = await page.textContent("#error");
  check(code === "3" && /Not allowed/.test(message), `a forbidden topic is explained (${message})`);
  check((await page.textContent("#status")) === "stopped", "the page stops instead of retrying a refusal");
  await page.screenshot({ path: join(out, "demo-forbidden.png"), fullPage: true });

  // "Resume where I left off": two windows in one consumer group split the topic's two
  // partitions; closing one hands its partition to the other at once (the gateway leaves the
  // group for it); a third window goes on where the group's commits say.
  const group = `page-${Date.now()}`;
  const groupUrl = new URL(`?resume=1&group=${group}`, url).toString();
  const windowA = await browser.newPage({ viewport: { width: 1200, height: 800 } });
  const windowB = await browser.newPage({ viewport: { width: 1200, height: 800 } });
  for (const w of [windowA, windowB]) {
    w.on("console", (m) => m.type() === "error" && consoleErrors.push(m.text()));
    w.on("pageerror", (e) => consoleErrors.push(String(e)));
  }
  const assigned = (w) => w.getAttribute("#member", "data-partitions");
  const waitAssigned = (w, want) =>
    w.waitForFunction((want) => document.getElementById("member").dataset.partitions === want, want, { timeout: 20_000 });
  await windowA.goto(groupUrl);
  await waitAssigned(windowA, "0,1");
  check(/Group "page-\d+"/.test(await windowA.textContent("#member")), "one window alone reads both partitions as a group member");
  await windowB.goto(groupUrl);
  await windowB.waitForFunction(() => /^\d$/.test(document.getElementById("member").dataset.partitions ?? ""), null, { timeout: 20_000 });
  await windowA.waitForFunction(() => /^\d$/.test(document.getElementById("member").dataset.partitions ?? ""), null, { timeout: 20_000 });
  const [a, b] = [await assigned(windowA), await assigned(windowB)];
  check(a !== b && [a, b].sort().join(",") === "0,1", `two windows split the partitions (${a} | ${b})`);
  await windowA.screenshot({ path: join(out, "demo-group-a.png"), fullPage: true });
  await windowB.screenshot({ path: join(out, "demo-group-b.png"), fullPage: true });
  const handedAt = Date.now();
  await windowB.close();
  await waitAssigned(windowA, "0,1");
  check(true, `closing one window hands its partition to the other (${Date.now() - handedAt} ms)`);
  // Pause (leaves the group), then a new window in the same group starts where the commits are.
  await windowA.waitForFunction(() => (window.streamgateDemo.committed?.[0] ?? 0) > 0, null, { timeout: 10_000 });
  await windowA.click("#pause");
  await windowA.waitForTimeout(1000);
  const shownA = await windowA.$$eval('#messages tbody tr[data-partition="0"]', (trs) => trs.map((tr) => Number(tr.dataset.offset)));
  const committedA = await windowA.evaluate(() => window.streamgateDemo.committed[0]);
  const lastA = Math.max(...shownA);
  await windowA.close();
  const windowC = await browser.newPage({ viewport: { width: 1200, height: 800 } });
  windowC.on("pageerror", (e) => consoleErrors.push(String(e)));
  await windowC.goto(groupUrl);
  await windowC.waitForSelector('#messages tbody tr[data-partition="0"]', { timeout: 20_000 });
  const firstC = Math.min(
    ...(await windowC.$$eval('#messages tbody tr[data-partition="0"]', (trs) => trs.map((tr) => Number(tr.dataset.offset)))),
  );
  check(
    firstC >= committedA && firstC <= lastA + 1,
    `a new window resumes where the group left off: offset ${firstC}, after the last commit (${committedA}) and no later than the first unshown (${lastA + 1})`,
  );
  await windowC.close();

  // The same topic through the browser's own EventSource. The route ends streams every 2 s: the
  // browser reconnects with Last-Event-ID, and the records go on with no gap and no repeat.
  await page.goto(new URL("events.html?route=/events-kafka&topic=demo&from=earliest", url).toString());
  await page.waitForFunction(() => Number(document.getElementById("opens").textContent) >= 3, null, {
    timeout: 20_000,
  });
  const received = await page.evaluate(() => window.received);
  const p0 = received.filter(([p]) => p === 0).map(([, o]) => o);
  check(p0.length > 10 && p0.every((o, i) => o === i), `EventSource: partition 0 is 0..${p0.length - 1} across 2 reconnects, nothing lost or repeated`);
  check(received.filter(([p]) => p === 1).length === 1, "EventSource: partition 1's one record, once");
  check((await page.textContent("#caught")) === "0, 1", "EventSource: both partitions caught up");
  await page.screenshot({ path: join(out, "demo-events.png"), fullPage: true });

  check(consoleErrors.length === 0, `no errors in the browser console (${consoleErrors.join("; ")})`);
  console.log(`screenshots in ${out}`);
} catch (error) {
  console.error(`FAILED: ${error.message}`);
  await page.screenshot({ path: join(out, "failure.png"), fullPage: true }).catch(() => {});
  await browser.close();
  process.exit(1);
}
await browser.close();
