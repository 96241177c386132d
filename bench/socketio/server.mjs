// Socket.IO's own server (the `socket.io` package, in-memory adapter) with the routes
// herald-bench uses on Herald: POST /api/publish ({channel, event?, data}) and /api/batch
// ({publications: [...]}) emit to the channel's room as Herald's adapter does (the data, then
// {channel, offset}), GET /ready and GET /api/stats answer. Each client joins its personal room
// `user:<sub>` (the JWT's subject, read without verifying: this is a benchmark harness) and is
// greeted with `connected`; `subscribe` joins a room and acks.
//
//   PORT=8100 node server.mjs
import { createServer } from "node:http";
import { Server } from "socket.io";

const port = Number(process.env.PORT ?? 8100);
const offsets = new Map();

function publish({ channel, event, data }) {
  const offset = (offsets.get(channel) ?? 0) + 1;
  offsets.set(channel, offset);
  io.to(channel).emit(event ?? "message", data, { channel, offset });
  return { offset, epoch: "socketio" };
}

function readJson(req) {
  return new Promise((done, fail) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      try {
        done(JSON.parse(Buffer.concat(chunks).toString()));
      } catch (e) {
        fail(e);
      }
    });
  });
}

const http = createServer(async (req, res) => {
  const reply = (status, body) => {
    const text = JSON.stringify(body);
    res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
    res.end(text);
  };
  try {
    if (req.method === "POST" && req.url === "/api/publish") return reply(200, publish(await readJson(req)));
    if (req.method === "POST" && req.url === "/api/batch") {
      const { publications } = await readJson(req);
      return reply(200, { results: publications.map(publish) });
    }
    if (req.method === "GET" && req.url === "/ready") return reply(200, { status: "ready" });
    if (req.method === "GET" && req.url === "/api/stats") return reply(200, { node: { slow_consumers: 0 } });
  } catch (e) {
    return reply(400, { error: { code: "bad_request", message: String(e) } });
  }
  if (!req.url?.startsWith("/socket.io/")) reply(404, { error: { code: "not_found" } });
});

const io = new Server(http, { perMessageDeflate: false, maxHttpBufferSize: 65536 });
io.on("connection", (socket) => {
  const token = (socket.handshake.headers.authorization ?? "").replace(/^Bearer /, "") || socket.handshake.auth?.token || "";
  let user = "anonymous";
  try {
    user = JSON.parse(Buffer.from(token.split(".")[1], "base64url").toString()).sub;
  } catch {}
  socket.join(`user:${user}`);
  socket.emit("connected", { client: socket.id, user });
  socket.on("subscribe", (channel, ack) => {
    socket.join(channel);
    if (typeof ack === "function") ack({ ok: true, channel });
  });
});

http.listen(port, "127.0.0.1", () => console.log(`socket.io server on http://127.0.0.1:${port}`));
