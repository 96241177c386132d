// A notification page built with the SSE helper: shows each publication of one channel in the
// DOM. Tokens come from the test (`freshToken`, exposed by Playwright), and every URL the page
// opens a stream with is kept in `window.opened`, so that the test can check how it resumed.
import { HeraldEventSource } from "herald-client/sse";

declare global {
  interface Window {
    freshToken(): Promise<string>;
    opened: string[];
  }
}

window.opened = [];
class RecordingEventSource extends EventSource {
  constructor(url: string) {
    super(url);
    window.opened.push(url);
  }
}

const params = new URLSearchParams(location.search);
const name = params.get("channel")!;
const stream = new HeraldEventSource({
  url: params.get("sse")!,
  channels: [name],
  token: () => window.freshToken(),
  EventSource: RecordingEventSource,
  backoff: { base: 100, cap: 200 },
});
const list = document.createElement("ul");
list.id = "feed";
document.getElementById("app")!.append(list);
const body = document.body.dataset;

const channel = stream.channel<{ note: { text: string } }>(name);
channel.on("note", (data, publication) => {
  const item = document.createElement("li");
  item.textContent = data.text;
  item.dataset.offset = String(publication.offset);
  list.append(item);
});
channel.onSubscribed((info) => {
  body.subscribed = String(Number(body.subscribed ?? 0) + 1);
  body.recovered = String(info.recovered);
});
stream.on("state", (state) => (body.state = state));
stream.on("disconnected", (info) => {
  body.drops = String(Number(body.drops ?? 0) + 1);
  body.code = String(info.code);
});
stream.connect();
