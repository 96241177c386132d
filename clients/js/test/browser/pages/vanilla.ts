// A page built with the SDK: shows each publication of one channel in the DOM.
import { HeraldClient } from "herald-client";

const params = new URLSearchParams(location.search);
const client = new HeraldClient({ url: params.get("ws")!, token: params.get("token")! });
const feed = client.subscribe<{ note: { text: string } }>(params.get("channel")!);
const list = document.createElement("ul");
list.id = "feed";
document.getElementById("app")!.append(list);
feed.on("note", (data) => {
  const item = document.createElement("li");
  item.textContent = data.text;
  list.append(item);
});
feed.onSubscribed(() => document.body.setAttribute("data-subscribed", "yes"));
client.on("state", (state) => document.body.setAttribute("data-state", state));
client.connect();
