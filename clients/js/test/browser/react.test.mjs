// herald-client/react in headless Chromium, against the real server: components mount and
// unmount a hundred times under StrictMode and leave no subscription and no handler behind;
// components on one channel share one subscription; a publication reaches the DOM; presence
// follows joins, leaves and a reconnect.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { Herald, token, eventually } from "../harness.mjs";
import { launchBrowser, servePages } from "./browser.mjs";

const CHANNEL = "chat:react1";
const PRESENCE = "chat:react-presence";

let server, pages, browser, page;
/**
 * Uncaught errors and console errors on the page (React reports its warnings there): every test
 * ends with none. Chromium's own lines for a WebSocket that could not connect (while the server
 * is restarting) and for the favicon the test server does not have are expected.
 */
const problems = [];

before(async () => {
  // 200 subscribes and unsubscribes in a few seconds are over the default command rate.
  server = await Herald.start({ limits: "commands_per_minute = 100000\ncommands_burst = 1000" });
  pages = await servePages({ react: new URL("./pages/react.tsx", import.meta.url).pathname });
  browser = await launchBrowser();
  page = await open();
});
after(async () => {
  await browser?.close();
  await pages?.close();
  await server?.close();
});

async function open() {
  const page = await browser.newPage();
  page.on("pageerror", (error) => problems.push(`pageerror: ${error.message}`));
  page.on("console", (message) => {
    if (message.type() !== "error" || message.location().url.endsWith("/favicon.ico")) return;
    if (!/^WebSocket connection to .* failed/.test(message.text())) problems.push(`console: ${message.text()}`);
  });
  const query = new URLSearchParams({ ws: server.ws, token: token("reader"), channel: CHANNEL });
  await page.goto(`${pages.base}/react.html?${query}`);
  await page.waitForSelector("body[data-page=ready]", { state: "attached" });
  return page;
}

const show = (count) => page.evaluate((n) => window.harness.show(n), count);
const report = () => page.evaluate(() => window.harness.report());
const texts = (selector) => page.$$eval(selector, (items) => items.map((item) => item.textContent));

test("a mounted component shows a publication, with the newest handler, and the state is connected", async () => {
  await page.waitForFunction(() => document.querySelector("#state")?.textContent === "connected");
  const mounted = await show(1);
  assert.deepEqual(
    { subscriptions: mounted.subscriptions, state: mounted.state, handlers: mounted.handlers, subscribe: mounted.subscribe },
    { subscriptions: [CHANNEL], state: "subscribed", handlers: 1, subscribe: 1 },
    "one subscribe for StrictMode's double mount",
  );
  assert.equal(await server.subscribers(CHANNEL), 1);

  await server.publish(CHANNEL, { text: "hello" }, "msg");
  await page.waitForSelector(".chat li");
  assert.deepEqual(await texts(".chat li"), ["hello"]);

  // A new handler (it reads a new label) is called from then on, without a resubscribe.
  assert.ok(await page.evaluate(() => window.harness.mark()));
  await page.evaluate(() => window.harness.setLabel("b:"));
  await page.waitForFunction(() => document.querySelector(".chat") !== null); // rendered again
  await server.publish(CHANNEL, { text: "again" }, "msg");
  await page.waitForFunction(() => document.querySelectorAll(".chat li").length === 2);
  assert.deepEqual(await texts(".chat li"), ["hello", "b:again"]);
  const after = await report();
  assert.deepEqual({ subscribe: after.subscribe, unsubscribe: after.unsubscribe, handlers: after.handlers }, { subscribe: 1, unsubscribe: 0, handlers: 1 });
  assert.equal((await page.evaluate(() => window.harness.marked())).same, true);

  await page.evaluate(() => window.harness.setLabel(""));
  const gone = await show(0);
  assert.deepEqual({ subscriptions: gone.subscriptions, unsubscribe: gone.unsubscribe }, { subscriptions: [], unsubscribe: 1 });
  assert.deepEqual(await page.evaluate(() => window.harness.marked()), { same: false, state: "unsubscribed", handlers: 0 });
  await eventually(async () => (await server.subscribers(CHANNEL)) === 0, { what: "the unsubscribe" });
  assert.deepEqual(problems, []);
});

test("two components on one channel share one subscription; one leaving does not end it for the other", async () => {
  const two = await show(2);
  assert.deepEqual({ subscriptions: two.subscriptions, handlers: two.handlers }, { subscriptions: [CHANNEL], handlers: 2 });
  assert.ok(await page.evaluate(() => window.harness.mark()));
  assert.equal(await server.subscribers(CHANNEL), 1);
  await server.publish(CHANNEL, { text: "to both" }, "msg");
  await page.waitForFunction(() => document.querySelectorAll(".chat li").length === 2);
  assert.deepEqual(await texts(".chat li"), ["to both", "to both"]);

  const one = await show(1);
  assert.deepEqual({ subscriptions: one.subscriptions, state: one.state, handlers: one.handlers }, { subscriptions: [CHANNEL], state: "subscribed", handlers: 1 });
  assert.equal((await page.evaluate(() => window.harness.marked())).same, true, "the same subscription");
  assert.equal(await server.subscribers(CHANNEL), 1);
  await server.publish(CHANNEL, { text: "to the one left" }, "msg");
  await page.waitForFunction(() => document.querySelectorAll(".chat li").length === 2);
  assert.deepEqual(await texts(".chat li"), ["to both", "to the one left"]);

  assert.deepEqual((await show(0)).subscriptions, []);
  assert.deepEqual(await page.evaluate(() => window.harness.marked()), { same: false, state: "unsubscribed", handlers: 0 });
  await eventually(async () => (await server.subscribers(CHANNEL)) === 0, { what: "the unsubscribe" });
  assert.deepEqual(problems, []);
});

test("mounted and unmounted 100 times: one subscription while mounted, none and no handler afterwards", async () => {
  const start = await report();
  for (let i = 0; i < 100; i++) {
    // Every tenth time, two components at once.
    const count = i % 10 === 5 ? 2 : 1;
    const mounted = await show(count);
    assert.deepEqual(
      { subscriptions: mounted.subscriptions, state: mounted.state, handlers: mounted.handlers },
      { subscriptions: [CHANNEL], state: "subscribed", handlers: count },
      `mount ${i}`,
    );
    assert.equal(await server.subscribers(CHANNEL), 1, `subscribers while mounted (${i})`);
    if (i === 50) assert.ok(await page.evaluate(() => window.harness.mark()));
    const unmounted = await show(0);
    assert.deepEqual({ subscriptions: unmounted.subscriptions, handlers: unmounted.handlers }, { subscriptions: [], handlers: 0 }, `unmount ${i}`);
  }
  const end = await report();
  assert.equal(end.subscribe - start.subscribe, 100, "one subscribe per mount");
  assert.equal(end.unsubscribe - start.unsubscribe, 100, "one unsubscribe per unmount");
  assert.deepEqual(await page.evaluate(() => window.harness.marked()), { same: false, state: "unsubscribed", handlers: 0 });
  await eventually(async () => (await server.subscribers(CHANNEL)) === 0, { what: "no subscriber left" });
  assert.deepEqual(problems, []);
});

test("useHerald outside a HeraldProvider throws an error that says so", async () => {
  const other = await browser.newPage();
  const query = new URLSearchParams({ ws: server.ws, token: token("reader"), channel: CHANNEL });
  await other.goto(`${pages.base}/react.html?${query}`);
  await other.waitForSelector("body[data-page=ready]", { state: "attached" });
  const message = await other.evaluate(() => window.harness.orphan());
  assert.match(message, /^useHerald: no HeraldProvider above this component/);
  await other.close();
});

test("usePresence follows joins and leaves, and reads presence again after a reconnect", async () => {
  const shows = (connections, users) =>
    page.waitForSelector(`#presence[data-loading=false][data-connections="${connections}"]`, { state: "attached" }).then(async () => {
      assert.equal(await page.textContent("#presence"), users);
    });
  await page.evaluate((channel) => window.harness.showPresence(channel), PRESENCE);
  await shows(1, "reader");

  await page.evaluate(([channel, t]) => window.harness.join(channel, t), [PRESENCE, token("other")]);
  await shows(2, "other,reader");
  await page.evaluate(() => window.harness.leave());
  await shows(1, "reader");

  // The other connection comes back, then leaves while the server is down: no `leave` can tell
  // the page, only the presence read after its resubscribe (the restarted server has only it).
  await page.evaluate(([channel, t]) => window.harness.join(channel, t), [PRESENCE, token("other")]);
  await shows(2, "other,reader");
  await server.stop("SIGKILL");
  await page.evaluate(() => window.harness.leave());
  await server.restart({ downMs: 100 });
  await shows(1, "reader");
  await page.waitForFunction(() => document.querySelector("#state")?.textContent === "connected");

  await page.evaluate(() => window.harness.showPresence(null));
  await eventually(async () => (await server.subscribers(PRESENCE)) === 0, { what: "the presence subscription to end" });
  assert.deepEqual((await report()).subscriptions, []);
  assert.deepEqual(problems, []);
});
