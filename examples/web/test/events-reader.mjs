// Opens the events page (examples/web/src/events.html) in Debian's headless Chromium and waits until
// its EventSource has received COUNT records, then prints what it received as JSON:
//   {"received": [[partition, offset], ...], "opens": N}
//
//   node test/events-reader.mjs 'http://HOST/events.html?route=/kafka&topic=T&from=earliest' COUNT
//
// Run by tests/scale_out.rs, which kills gateways under it: the browser reconnects on its own with
// Last-Event-ID.
import { chromium } from "playwright-core";

const [url, count] = process.argv.slice(2);
if (!url || !count) {
  console.error("usage: node test/events-reader.mjs PAGE_URL COUNT");
  process.exit(2);
}
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"],
});
try {
  const page = await browser.newPage();
  await page.goto(url);
  await page.waitForFunction((n) => (window.received?.length ?? 0) >= n, Number(count), {
    timeout: 90_000,
    polling: 100,
  });
  // A little longer: anything repeated after the last expected record shows up too.
  await page.waitForTimeout(500);
  const received = await page.evaluate(() => window.received);
  const opens = Number(await page.textContent("#opens"));
  console.log(JSON.stringify({ received, opens }));
} catch (error) {
  console.error(`events-reader: ${error.message}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
