/**
 * herald-client/server: the backend's client for Herald's HTTP API (docs/configuration.md,
 * "HTTP API"), for Node >= 18, Bun, Deno and workers, over the platform's `fetch`.
 *
 * ```ts
 * const herald = new HeraldServer({ url: "http://127.0.0.1:8000", apiKey: process.env.HERALD_API_KEY! });
 * await herald.publish("machine:42", "TELEMETRY", { t: 21.5 });
 * ```
 *
 * A request that may not have reached the server (a network error, a timeout) or that the server
 * could not take on now (429, 5xx) is retried with backoff and full jitter; any other error is
 * the caller's to fix and is not. Retrying a publish is only safe because every publish carries
 * an idempotency key, generated once when the caller gives none and sent again with each retry:
 * a first attempt that was stored but whose answer was lost then answers the retry with its own
 * position, and the publication is not doubled.
 *
 * Errors reject with `HeraldError`: the server's code, message and status; `timeout` when no
 * answer came in time; `disconnected` when the request failed on the network; `bad_response`
 * when a successful answer is not JSON.
 */
import { backoffDelay, type BackoffOptions } from "./backoff.js";
import { HeraldError } from "./errors.js";
import type { HistoryResult, PresenceResult, StreamPosition } from "./protocol.js";

export { HeraldError } from "./errors.js";
export type { BackoffOptions } from "./backoff.js";
export type { HistoryResult, PresenceEntry, PresenceResult, Publication, StreamPosition } from "./protocol.js";

/** The part of `fetch` the client uses, so that any implementation (or a test double) fits. */
export type FetchLike = (
  url: string,
  init: { method: string; headers: Record<string, string>; body?: string; signal: AbortSignal },
) => Promise<{ status: number; ok: boolean; text(): Promise<string> }>;

export interface ServerOptions {
  /** Herald's base URL, for example `http://127.0.0.1:8000`. */
  url: string;
  /** One of the server's `api.keys`. */
  apiKey: string;
  /** Milliseconds one attempt may take, answer body included (default 10000). */
  timeout?: number;
  /** Retries after the first attempt (default 3). */
  retries?: number;
  /** Delays between attempts (default: a 250 ms first window, at most 5 s); `attempts` is unused. */
  backoff?: BackoffOptions;
  /** A `fetch` implementation, where the platform has none or the application wraps it. */
  fetch?: FetchLike;
}

export interface PublishOptions {
  /**
   * Makes a publish safe to repeat: the same key to the same channel within the server's
   * `api.idempotency_window` answers the first position and publishes nothing. Generated when
   * left out, so that the client's own retries never double a publication.
   */
  idempotencyKey?: string;
}

/** One publication of a batch. */
export interface BatchPublication extends PublishOptions {
  channel: string;
  event?: string;
  data: unknown;
}

/** One channel's outcome in a broadcast or batch: its position, or why it was refused. */
export type PublishResult =
  | ({ channel: string; error?: undefined } & StreamPosition)
  | { channel: string; error: { code: string; message: string } };

export interface ChannelInfo {
  channel: string;
  /** Subscribers on the node asked. */
  subscribers: number;
}

export interface UserInfo {
  user: string;
  online: boolean;
  /** The user's connections on every node. */
  connections: number;
}

/** One node's figures in `stats()`; `node` has a few more than the entries of `nodes`. */
export interface NodeStats {
  name: string;
  connections: number;
  users: number;
  subscriptions: number;
  messages_in: number;
  messages_out: number;
  uptime_s: number;
  channels?: number;
  deliveries_queued?: number;
  slow_consumers?: number;
  events?: number;
  queued_bytes?: number;
}

export interface Stats {
  engine: string;
  node: NodeStats;
  nodes: NodeStats[];
  cluster: { nodes: number; connections: number; users: number };
}

/** The codes of the protocol's error table, for error answers whose body is not Herald's. */
const CODE_OF_STATUS: Record<number, string> = {
  400: "bad_request",
  401: "unauthorized",
  403: "forbidden",
  404: "not_found",
  405: "method_not_allowed",
  409: "limit_exceeded",
  413: "too_large",
  429: "rate_limited",
  500: "internal",
  503: "unavailable",
};

export class HeraldServer {
  private readonly base: string;
  private readonly timeout: number;
  private readonly retries: number;
  private readonly backoff: BackoffOptions;
  private readonly fetch: FetchLike;

  constructor(private readonly options: ServerOptions) {
    this.base = options.url.replace(/\/+$/, "");
    this.timeout = options.timeout ?? 10000;
    this.retries = options.retries ?? 3;
    this.backoff = { base: 250, cap: 5000, ...options.backoff };
    const fetch = options.fetch ?? (globalThis as { fetch?: FetchLike }).fetch;
    if (!fetch) throw new Error("no fetch on this platform: pass one as options.fetch");
    this.fetch = fetch;
  }

  /** Publishes to one channel; resolves with the publication's place in the channel's stream. */
  publish(channel: string, event: string | undefined, data: unknown, options: PublishOptions = {}): Promise<StreamPosition> {
    const idempotency_key = options.idempotencyKey ?? newKey();
    return this.request("POST", "/api/publish", { channel, event, data, idempotency_key });
  }

  /**
   * Publishes the same data to each channel, separately and in order. One key covers every
   * channel (keys are per channel), so a retry publishes only where the first attempt did not.
   */
  async broadcast(channels: string[], event: string | undefined, data: unknown, options: PublishOptions = {}): Promise<PublishResult[]> {
    const idempotency_key = options.idempotencyKey ?? newKey();
    const body = { channels, event, data, idempotency_key };
    return (await this.request<{ results: PublishResult[] }>("POST", "/api/broadcast", body)).results;
  }

  /** Several publications in one request; one result each, in order. */
  async batch(publications: BatchPublication[]): Promise<PublishResult[]> {
    const items = publications.map((p) => ({
      channel: p.channel,
      event: p.event,
      data: p.data,
      idempotency_key: p.idempotencyKey ?? newKey(),
    }));
    return (await this.request<{ results: PublishResult[] }>("POST", "/api/batch", { publications: items })).results;
  }

  /** Who is in the channel now, across the cluster; `countsOnly` leaves out the list. */
  presence(channel: string, options: { countsOnly?: boolean } = {}): Promise<PresenceResult> {
    const query = options.countsOnly ? "?counts_only=true" : "";
    return this.request("GET", `/api/channels/${encodeURIComponent(channel)}/presence${query}`);
  }

  /**
   * A page of the channel's history: the newest `limit` (default and at most 1000), or up to
   * `limit` after the offset `since` (checked against `epoch` when given).
   */
  async history<T = unknown>(channel: string, options: { since?: number; epoch?: string; limit?: number } = {}): Promise<HistoryResult<T>> {
    const query = new URLSearchParams();
    if (options.since !== undefined) query.set("since", String(options.since));
    if (options.epoch !== undefined) query.set("epoch", options.epoch);
    if (options.limit !== undefined) query.set("limit", String(options.limit));
    const search = query.toString();
    const path = `/api/channels/${encodeURIComponent(channel)}/history${search ? `?${search}` : ""}`;
    const result = await this.request<HistoryResult<T>>("GET", path);
    for (const p of result.publications) p.epoch = result.epoch;
    return result;
  }

  /** Closes every connection of the user with 4013; `reconnect: false` asks clients to stay away. */
  async disconnect(user: string, options: { reconnect?: boolean } = {}): Promise<void> {
    await this.request("POST", "/api/disconnect", { user, reconnect: options.reconnect });
  }

  /** Unsubscribes each of the user's connections from the channel. */
  async unsubscribe(user: string, channel: string): Promise<void> {
    await this.request("POST", "/api/unsubscribe", { user, channel });
  }

  /** Whether the user is online, and with how many connections, on every node. */
  user(user: string): Promise<UserInfo> {
    return this.request("GET", `/api/users/${encodeURIComponent(user)}`);
  }

  /** The channels with subscribers on the node asked, whose names start with `prefix`. */
  async channels(prefix = ""): Promise<ChannelInfo[]> {
    const query = prefix ? `?prefix=${encodeURIComponent(prefix)}` : "";
    return (await this.request<{ channels: ChannelInfo[] }>("GET", `/api/channels${query}`)).channels;
  }

  /** The node's and the cluster's figures. */
  stats(): Promise<Stats> {
    return this.request("GET", "/api/stats");
  }

  // ----- requests -----

  /** Sends a request, retrying what may succeed later; the body is the same on every attempt. */
  private async request<T>(method: "GET" | "POST", path: string, body?: unknown): Promise<T> {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.attempt<T>(method, path, payload);
      } catch (error) {
        if (!(error instanceof HeraldError) || !retryable(error) || attempt >= this.retries) throw error;
      }
      await new Promise((resume) => setTimeout(resume, backoffDelay(attempt, this.backoff)));
    }
  }

  private async attempt<T>(method: string, path: string, body: string | undefined): Promise<T> {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), this.timeout);
    const headers: Record<string, string> = { authorization: `Bearer ${this.options.apiKey}` };
    if (body !== undefined) headers["content-type"] = "application/json";
    let status: number;
    let text: string;
    try {
      // Called unbound: a browser's `fetch` refuses any `this` but the global object.
      const fetch = this.fetch;
      const response = await fetch(this.base + path, { method, headers, body, signal: controller.signal });
      status = response.status;
      text = await response.text();
    } catch (error) {
      if (controller.signal.aborted)
        throw new HeraldError("timeout", `no answer to ${method} ${path} within ${this.timeout} ms`);
      throw new HeraldError("disconnected", `${method} ${path} failed: ${describe(error)}`);
    } finally {
      clearTimeout(timer);
    }
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch {
      json = undefined;
    }
    if (status >= 200 && status < 300) {
      if (json === undefined) throw new HeraldError("bad_response", `${method} ${path}: the answer is not JSON`, status);
      return json as T;
    }
    const error = (json as { error?: { code?: unknown; message?: unknown } } | undefined)?.error;
    if (typeof error?.code === "string")
      throw new HeraldError(error.code, typeof error.message === "string" ? error.message : error.code, status);
    // Not Herald's error body: something between the client and Herald answered.
    const code = CODE_OF_STATUS[status] ?? (status >= 500 ? "unavailable" : "bad_request");
    throw new HeraldError(code, `${method} ${path}: HTTP ${status} ${text.slice(0, 200)}`.trim(), status);
  }
}

/** Whether an error may go away by itself: no answer at all, a rate limit, a server fault. */
function retryable(error: HeraldError): boolean {
  return error.status === undefined || error.status === 429 || error.status >= 500;
}

/** A fresh idempotency key: a random UUID, or 128 random bits where there is no `randomUUID`. */
function newKey(): string {
  const crypto = (globalThis as { crypto?: { randomUUID?: () => string } }).crypto;
  if (crypto?.randomUUID) return crypto.randomUUID();
  // Node 18 has no global `crypto`. A key only has to differ from the others sent to the same
  // channel within the server's idempotency window, which 128 bits of Math.random do.
  let key = "";
  for (let i = 0; i < 4; i++) key += Math.floor(Math.random() * 2 ** 32).toString(16).padStart(8, "0");
  return key;
}

function describe(error: unknown): string {
  const cause = (error as { cause?: unknown } | null)?.cause;
  const message = error instanceof Error ? error.message : String(error);
  return cause instanceof Error ? `${message} (${cause.message})` : message;
}
