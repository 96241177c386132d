// The same package as a CommonJS consumer resolves it (the `require` condition's .d.cts files).
import herald = require("herald-client");

const client = new herald.HeraldClient({ url: "ws://127.0.0.1:8000/ws", token: "jwt" });
const sub = client.subscribe<{ note: { text: string } }>("news:1");
sub.on("note", (data) => {
  const text: string = data.text;
  void text;
});
// @ts-expect-error: not an event of this channel
sub.on("other", () => {});
