// Type-level tests through the package's exports map, as an ES module consumer sees it: the
// event map types each handler's data, and wrong names or types do not compile.
import { HeraldClient, HeraldError, type Publication, type StreamPosition } from "herald-client";

interface MachineEvents {
  TELEMETRY: { t: number; rpm: number };
  ALERT: { level: "low" | "high" };
}

const client = new HeraldClient({ url: "ws://127.0.0.1:8000/ws", token: async () => "jwt" });
const machine = client.subscribe<MachineEvents>("machine:42");

machine.on("TELEMETRY", (data, publication) => {
  const t: number = data.t;
  const p: Publication<{ t: number; rpm: number }> = publication;
  void t, p;
});
machine.on("ALERT", (data) => {
  const level: "low" | "high" = data.level;
  void level;
});
// @ts-expect-error: not an event of this channel
machine.on("NOPE", () => {});
// @ts-expect-error: the data of TELEMETRY has no `level`
machine.on("TELEMETRY", (data) => data.level);

const sent: Promise<StreamPosition> = machine.publish("ALERT", { level: "high" });
// @ts-expect-error: wrong data for ALERT
machine.publish("ALERT", { level: "medium" });
void sent;

client.on("disconnected", (info) => {
  const code: number = info.code;
  const again: boolean = info.reconnect;
  void code, again;
});
client.on("state", (state) => {
  // @ts-expect-error: not a state
  if (state === "reconnecting") return;
});
const error = new HeraldError("forbidden", "no");
const code: string = error.code;
void code;
