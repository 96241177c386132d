// A plain page in headless Chromium receives a publication and shows it.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { Herald, token } from "../harness.mjs";
import { launchBrowser, servePages } from "./browser.mjs";

let server, pages, browser;
before(async () => {
  server = await Herald.start();
  pages = await servePages({ vanilla: new URL("./pages/vanilla.ts", import.meta.url).pathname });
  browser = await launchBrowser();
});
after(async () => {
  await browser?.close();
  await pages?.close();
  await server?.close();
});

test("a page built with the SDK shows a publication in the DOM", async () => {
  const page = await browser.newPage();
  const query = new URLSearchParams({ ws: server.ws, token: token("reader"), channel: "news:1" });
  await page.goto(`${pages.base}/vanilla.html?${query}`);
  await page.waitForSelector("body[data-subscribed=yes]", { state: "attached" });
  await server.publish("news:1", { text: "bunker 3 is low" }, "note");
  await page.waitForSelector("#feed li");
  assert.equal(await page.textContent("#feed li"), "bunker 3 is low");
  assert.equal(await page.getAttribute("body", "data-state"), "connected");
  await page.close();
});
