/**
 * One error type for everything the SDK rejects with. `code` is the server's error code
 * (`forbidden`, `not_found`, `rate_limited`, ...; docs/protocol.md lists them) or one of the
 * client's own: `timeout` (no answer in time), `disconnected` (the link dropped before the
 * answer came), `closed` (the client was closed), `unsubscribed` (the subscription ended).
 */
export class HeraldError extends Error {
  constructor(
    readonly code: string,
    message: string,
    /** HTTP status, for errors from the HTTP API. */
    readonly status?: number,
  ) {
    super(message);
    this.name = "HeraldError";
  }
}
