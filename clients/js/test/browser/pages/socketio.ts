// Seed 002's plant dashboard as its team wrote it: socket.io-client, unmodified, pointed at
// Herald. Shows each alarm of the site it subscribes to in the DOM.
import { io } from "socket.io-client";

const params = new URLSearchParams(location.search);
const socket = io(`${params.get("server")}/ws`, { auth: { token: params.get("token") } });
const list = document.createElement("ul");
list.id = "alarms";
document.getElementById("app")!.append(list);

socket.on("connected", () => {
  document.body.setAttribute("data-state", "connected");
  socket.emit("subscribe:site", { siteId: 1 });
});
socket.on("subscribed", () => document.body.setAttribute("data-subscribed", "yes"));
socket.on("alarm:new", (alarm: { title: string }) => {
  const item = document.createElement("li");
  item.textContent = alarm.title;
  list.append(item);
});
socket.io.engine.on("upgrade", (transport: { name: string }) =>
  document.body.setAttribute("data-transport", transport.name),
);
