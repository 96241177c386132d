/**
 * herald-client: the browser and Node client for Herald's WebSocket protocol.
 *
 * ```ts
 * const client = new HeraldClient({ url: "wss://rt.example.com/ws", token: () => fetchToken() });
 * const machine = client.subscribe<{ TELEMETRY: { t: number } }>("machine:42");
 * machine.on("TELEMETRY", (data) => render(data.t));
 * client.connect();
 * ```
 */
export { HeraldClient, ClientCode } from "./client.js";
export type {
  ClientOptions,
  ConnectedInfo,
  ConnectionState,
  DisconnectInfo,
  TokenSource,
  WebSocketConstructor,
  WebSocketLike,
} from "./client.js";
export { Subscription } from "./subscription.js";
export type { EventMap, UntypedEvents, SubscribeOptions, SubscribedInfo, SubscriptionState, UnsubscribedInfo } from "./subscription.js";
export { HeraldError } from "./errors.js";
export { backoffDelay } from "./backoff.js";
export type { BackoffOptions } from "./backoff.js";
export type {
  HistoryResult,
  PresenceEntry,
  PresenceEvent,
  PresenceResult,
  Publication,
  PublisherInfo,
  StreamPosition,
  TypingEvent,
} from "./protocol.js";
