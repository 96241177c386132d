// A page whose client waits a long time before reconnecting, so that the test can show that
// the browser's `online` and `visibilitychange` events bring it back at once.
import { HeraldClient, type DisconnectInfo } from "herald-client";

// Every backoff delay drawn near the top of its window: about a minute.
Math.random = () => 0.99;

const params = new URLSearchParams(location.search);
const client = new HeraldClient({ url: params.get("ws")!, token: params.get("token")!, backoff: { base: 60000, cap: 60000 } });
const page = window as unknown as { lastDrop?: DisconnectInfo };
client.on("disconnected", (info) => (page.lastDrop = info));
client.on("state", (state) => document.body.setAttribute("data-state", state));
client.connect();
