/**
 * The shapes of Herald's native protocol, as the server sends them (docs/protocol.md is the
 * reference). Only what a client reads is typed here; the SDK builds commands itself.
 */

/** A position in a channel's stream: the offset of a publication within an epoch. */
export interface StreamPosition {
  offset: number;
  epoch: string;
}

/** Who published, when a client did (set by the server, never by the publisher). */
export interface PublisherInfo {
  user: string;
  client: string;
}

/** A publication as the application sees it: the server's `message` frame plus its epoch. */
export interface Publication<T = unknown> {
  channel: string;
  event?: string;
  data: T;
  offset: number;
  epoch: string;
  /** Unix milliseconds when the server accepted it. */
  ts: number;
  from?: PublisherInfo;
}

/** One connection in a channel's presence. */
export interface PresenceEntry {
  user: string;
  client: string;
  /** Unix milliseconds when it subscribed. */
  joined_at: number;
}

export interface PresenceResult {
  channel: string;
  users: number;
  connections: number;
  /** Left out when asked with `countsOnly`. */
  clients?: PresenceEntry[];
}

export interface HistoryResult<T = unknown> {
  channel: string;
  offset: number;
  epoch: string;
  /** Only when asked with `since`: false when history no longer holds everything after it. */
  recovered?: boolean;
  publications: Publication<T>[];
}

/** A `join` or `leave` frame: another connection entered or left the channel's presence. */
export interface PresenceEvent {
  channel: string;
  user: string;
  client: string;
}

/** A `typing` frame: another connection's user is typing in the channel. */
export interface TypingEvent {
  channel: string;
  user: string;
}

/** Any frame the server sends; fields depend on `type`. */
export interface ServerFrame {
  type: string;
  id?: number | string;
  [field: string]: unknown;
}
