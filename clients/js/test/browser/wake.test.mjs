// A client waiting out a long backoff delay reconnects at once when the browser says the device
// is back online, or that a hidden tab became visible.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { Herald, token } from "../harness.mjs";
import { launchBrowser, servePages } from "./browser.mjs";

let server, pages, browser;
before(async () => {
  server = await Herald.start();
  pages = await servePages({ wake: new URL("./pages/wake.ts", import.meta.url).pathname });
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
  await pages?.close();
  await server?.close();
});

async function dropAndWait(page) {
  await server.stop("SIGKILL");
  await page.waitForSelector("body[data-state=disconnected]", { state: "attached" });
  const delay = await page.evaluate(() => window.lastDrop.delay);
  assert.ok(delay > 30000, `the next attempt is ${delay} ms away`);
  await server.restart({ downMs: 0 });
}

test("online and visibilitychange cut a long backoff short", async () => {
  const page = await browser.newPage();
  const query = new URLSearchParams({ ws: server.ws, token: token("wakeful") });
  await page.goto(`${pages.base}/wake.html?${query}`);
  await page.waitForSelector("body[data-state=connected]", { state: "attached" });

  await dropAndWait(page);
  await page.evaluate(() => window.dispatchEvent(new Event("online")));
  await page.waitForSelector("body[data-state=connected]", { state: "attached", timeout: 3000 });

  await dropAndWait(page);
  await page.evaluate(() => {
    Object.defineProperty(document, "visibilityState", { value: "visible", configurable: true });
    document.dispatchEvent(new Event("visibilitychange"));
  });
  await page.waitForSelector("body[data-state=connected]", { state: "attached", timeout: 3000 });
  await page.close();
});
