/**
 * A minimal typed event emitter. A handler that throws does not stop the others or the client:
 * the error is reported the way the platform reports an uncaught one.
 */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type Handler = (...args: any[]) => void;

export class Emitter<Events extends { [K in keyof Events]: Handler }> {
  private handlers = new Map<keyof Events, Set<Handler>>();

  /** Adds a handler; the function returned removes it. */
  on<K extends keyof Events>(event: K, handler: Events[K]): () => void {
    let set = this.handlers.get(event);
    if (!set) this.handlers.set(event, (set = new Set()));
    set.add(handler);
    return () => this.off(event, handler);
  }

  off<K extends keyof Events>(event: K, handler: Events[K]): void {
    const set = this.handlers.get(event);
    if (set && set.delete(handler) && set.size === 0) this.handlers.delete(event);
  }

  /** Whether any handler is registered (for tests of leaks). */
  listenerCount(event?: keyof Events): number {
    if (event !== undefined) return this.handlers.get(event)?.size ?? 0;
    let n = 0;
    for (const set of this.handlers.values()) n += set.size;
    return n;
  }

  /** @internal Delivers an event to its handlers. */
  emit<K extends keyof Events>(event: K, ...args: Parameters<Events[K]>): void {
    const set = this.handlers.get(event);
    if (!set) return;
    for (const handler of [...set]) {
      try {
        handler(...args);
      } catch (error) {
        report(error);
      }
    }
  }
}

function report(error: unknown): void {
  const g = globalThis as { reportError?: (e: unknown) => void };
  if (typeof g.reportError === "function") g.reportError(error);
  else
    setTimeout(() => {
      throw error;
    });
}
