// herald-client/vue in headless Chromium, against the real server: components mount and unmount
// a hundred times and leave no subscription and no handler behind; components on one channel
// share one subscription; a channel given as a getter is switched; a publication reaches the
// DOM; presence follows joins and leaves.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { Herald, token, eventually } from "../harness.mjs";
import { launchBrowser, servePages } from "./browser.mjs";

const CHANNEL = "chat:vue1";
const OTHER_CHANNEL = "chat:vue2";
const PRESENCE = "chat:vue-presence";

let server, pages, browser, page;
/**
 * Uncaught errors, console errors and Vue's warnings on the page: every test ends with none.
 * Chromium's own line for the favicon the test server does not have is expected.
 */
const problems = [];

before(async () => {
  // 200 subscribes and unsubscribes in a few seconds are over the default command rate.
  server = await Herald.start({ limits: "commands_per_minute = 100000\ncommands_burst = 1000" });
  pages = await servePages({ vue: new URL("./pages/vue.ts", import.meta.url).pathname });
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
    if (message.location().url.endsWith("/favicon.ico")) return;
    if (message.type() === "error" || message.text().startsWith("[Vue warn]")) problems.push(`console: ${message.text()}`);
  });
  const query = new URLSearchParams({ ws: server.ws, token: token("reader"), channel: CHANNEL });
  await page.goto(`${pages.base}/vue.html?${query}`);
  await page.waitForSelector("body[data-page=ready]", { state: "attached" });
  return page;
}

const show = (count) => page.evaluate((n) => window.harness.show(n), count);
const report = () => page.evaluate(() => window.harness.report());
const texts = (selector) => page.$$eval(selector, (items) => items.map((item) => item.textContent));

test("a mounted component shows a publication; two share one subscription; the state is connected", async () => {
  await page.waitForFunction(() => document.querySelector("#state")?.textContent === "connected");
  const one = await show(1);
  assert.deepEqual(
    { subscriptions: one.subscriptions, state: one.state, handlers: one.handlers, subscribe: one.subscribe },
    { subscriptions: [CHANNEL], state: "subscribed", handlers: 1, subscribe: 1 },
  );
  assert.equal(await server.subscribers(CHANNEL), 1);
  await server.publish(CHANNEL, { text: "hello" }, "msg");
  await page.waitForSelector(".chat li");
  assert.deepEqual(await texts(".chat li"), ["hello"]);

  assert.ok(await page.evaluate(() => window.harness.mark()));
  const two = await show(2);
  assert.deepEqual({ subscriptions: two.subscriptions, handlers: two.handlers, subscribe: two.subscribe }, { subscriptions: [CHANNEL], handlers: 2, subscribe: 1 });
  assert.equal(await server.subscribers(CHANNEL), 1);
  await server.publish(CHANNEL, { text: "to both" }, "msg");
  await page.waitForFunction(() => document.querySelectorAll(".chat li").length === 3);
  assert.deepEqual(await texts(".chat li"), ["hello", "to both", "to both"]);

  // The second one leaving does not end the first one's subscription.
  const back = await show(1);
  assert.deepEqual({ subscriptions: back.subscriptions, state: back.state, handlers: back.handlers }, { subscriptions: [CHANNEL], state: "subscribed", handlers: 1 });
  assert.equal((await page.evaluate(() => window.harness.marked())).same, true, "the same subscription");
  await server.publish(CHANNEL, { text: "to the one left" }, "msg");
  await page.waitForFunction(() => document.querySelectorAll(".chat li").length === 3);
  assert.deepEqual(await texts(".chat li"), ["hello", "to both", "to the one left"]);

  const gone = await show(0);
  assert.deepEqual({ subscriptions: gone.subscriptions, unsubscribe: gone.unsubscribe }, { subscriptions: [], unsubscribe: 1 });
  assert.deepEqual(await page.evaluate(() => window.harness.marked()), { same: false, state: "unsubscribed", handlers: 0 });
  await eventually(async () => (await server.subscribers(CHANNEL)) === 0, { what: "the unsubscribe" });
  assert.deepEqual(problems, []);
});

test("a channel given as a getter: a new value lets the old channel go and subscribes the new one", async () => {
  await show(2);
  assert.ok(await page.evaluate(() => window.harness.mark()));
  const switched = await page.evaluate((channel) => window.harness.setChannel(channel), OTHER_CHANNEL);
  assert.deepEqual({ subscriptions: switched.subscriptions, handlers: switched.handlers }, { subscriptions: [OTHER_CHANNEL], handlers: 2 });
  await eventually(async () => (await server.subscribers(CHANNEL)) === 0, { what: "the old channel's unsubscribe" });
  assert.equal(await server.subscribers(OTHER_CHANNEL), 1);
  await server.publish(CHANNEL, { text: "not for us" }, "msg");
  await server.publish(OTHER_CHANNEL, { text: "switched" }, "msg");
  await page.waitForFunction(() => document.querySelectorAll(".chat li").length === 2);
  assert.deepEqual(await texts(".chat li"), ["switched", "switched"]);

  await page.evaluate((channel) => window.harness.setChannel(channel), CHANNEL);
  assert.deepEqual((await show(0)).subscriptions, []);
  await eventually(async () => (await server.subscribers(OTHER_CHANNEL)) === 0, { what: "the unsubscribe" });
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

test("usePresence follows joins and leaves", async () => {
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

  await page.evaluate(() => window.harness.showPresence(null));
  await eventually(async () => (await server.subscribers(PRESENCE)) === 0, { what: "the presence subscription to end" });
  assert.deepEqual((await report()).subscriptions, []);
  assert.deepEqual(problems, []);
});

test("useHerald finds the client of provideHerald, and says what is missing without one", async () => {
  assert.equal(await page.evaluate(() => window.harness.provided()), "connected");
  assert.match(await page.evaluate(() => window.harness.orphan()), /^useHerald: no Herald client here/);
  assert.deepEqual(problems, []);
});
