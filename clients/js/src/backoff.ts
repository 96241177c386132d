/**
 * Reconnect delays: exponential backoff with full jitter. Attempt n waits a uniformly random
 * time in [0, min(cap, base * 2^n)), so clients dropped together (a deploy, a crashed node)
 * come back spread over the window instead of all at once.
 */
export interface BackoffOptions {
  /** First window in milliseconds (default 1000). */
  base?: number;
  /** Largest window in milliseconds (default 30000). */
  cap?: number;
  /** Failed attempts in a row before giving up with state `failed` (default: never give up). */
  attempts?: number;
}

export function backoffDelay(attempt: number, options: BackoffOptions = {}, random = Math.random): number {
  const base = options.base ?? 1000;
  const cap = options.cap ?? 30000;
  return Math.floor(random() * Math.min(cap, base * 2 ** Math.min(attempt, 30)));
}

/** A connection that lasted this long starts the reconnect attempts again (milliseconds). */
export const STABLE_MS = 10000;

/** Resolves as `f()` does, or rejects after `ms`: a token getter that hangs counts as failing. */
export function withTimeout<T>(f: () => T | Promise<T>, ms: number): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
    Promise.resolve()
      .then(f)
      .then(resolve, reject)
      .finally(() => clearTimeout(timer));
  });
}
