// The WatchRevocations stream that keeps the validation cache coherent: one per client, on
// its shared connection, reopened with jittered backoff after it ends.
import { Code } from "@connectrpc/connect";
import { setTimeout as sleep } from "node:timers/promises";
import type { ValidationCache, ValidationCacheEvent, ValidationCacheOptions } from "./cache.js";
import { codeOf, toSessionServiceError } from "./errors.js";
import type { RevocationEvent } from "./gen/barazo/session/v1/session_pb.js";

/** Opens one WatchRevocations stream, ended by `signal`. */
export type OpenFeed = (signal: AbortSignal) => AsyncIterable<RevocationEvent>;

/**
 * Codes after which the feed is not asked again: the service has no feed (the memory store:
 * `FAILED_PRECONDITION`), does not know the RPC (`UNIMPLEMENTED`, an older
 * service), or its policy refuses this caller the stream (`PERMISSION_DENIED`,
 * `UNAUTHENTICATED`: asking every few seconds would only fill the service's log). Anything
 * else (the service or its Valkey restarting, the stream cap) is retried.
 */
const permanent = new Set<Code>([Code.FailedPrecondition, Code.Unimplemented, Code.PermissionDenied, Code.Unauthenticated]);

/** The feed of one client's cache. */
export class RevocationFeed {
  private readonly abort = new AbortController();
  private unsupportedCode: string | undefined;
  private stopped = false;
  /** Ends the stream open now, if any. */
  private current: AbortController | undefined;
  /** The stream was ended by `moveOff`: reopen at once, not after a backoff. */
  private moving = false;

  constructor(
    private readonly cache: ValidationCache,
    private readonly open: OpenFeed,
    private readonly options: ValidationCacheOptions,
  ) {
    void this.run();
  }

  /** The code that turned the cache off for good, if one did. */
  get unsupported(): string | undefined {
    return this.unsupportedCode;
  }

  /** Ends the stream and stops reconnecting; the cache stops answering. */
  close(): void {
    this.stopped = true;
    this.cache.reset(false);
    this.abort.abort();
  }

  /**
   * The connection carrying the stream is closing (the service sent GOAWAY: it is shutting
   * down): end the stream now and open a new one, which the connection manager puts on a new
   * connection, instead of holding the old one (and the service's drain) open. Answers are
   * not reused in between, as after any end of the stream.
   */
  moveOff(): void {
    if (this.current === undefined || this.stopped) return;
    this.moving = true;
    this.current.abort();
  }

  private emit(event: ValidationCacheEvent): void {
    try {
      this.options.onEvent?.(event);
    } catch {
      // A broken observer must not break coherence.
    }
  }

  private async run(): Promise<void> {
    const initial = Math.max(1, this.options.reconnect?.initialBackoffMs ?? 100);
    const cap = Math.max(initial, this.options.reconnect?.maxBackoffMs ?? 5000);
    let failures = 0;
    while (!this.stopped) {
      let code = "ok";
      const stream = new AbortController();
      const end = () => stream.abort();
      this.abort.signal.addEventListener("abort", end);
      this.current = stream;
      this.moving = false;
      let delivered = false;
      try {
        for await (const message of this.open(stream.signal)) {
          const event = message.event;
          switch (event.case) {
            case "reset":
              this.cache.reset(true);
              failures = 0;
              delivered = true;
              this.emit({ type: "reset" });
              break;
            case "accessTokenHash":
              this.cache.dropHash(event.value);
              this.emit({ type: "accessTokenHash", hash: event.value });
              break;
            case "sessionKey":
              this.cache.dropSession(event.value);
              this.emit({ type: "sessionKey", sessionKey: event.value });
              break;
            default:
              // An event this client does not know (a newer service): it may mean a
              // revocation, so everything cached is dropped (a reset's effect; reuse goes on
              // only if it already had).
              this.cache.reset(this.cache.live);
          }
        }
        // The service ended the stream without a status error (e.g. its graceful
        // shutdown): the end of the stream all the same.
      } catch (error) {
        code = toSessionServiceError("WatchRevocations", error).code;
        if (!this.stopped && !this.moving && permanent.has(codeOf(error))) {
          this.cache.reset(false);
          this.unsupportedCode = code;
          this.emit({ type: "unsupported", code });
          return;
        }
      } finally {
        this.abort.signal.removeEventListener("abort", end);
        this.current = undefined;
      }
      // Fail closed: no reuse until a new stream has delivered its first reset.
      this.cache.reset(false);
      if (this.stopped) return;
      if (this.moving) {
        this.emit({ type: "down", code: "goaway" });
        // At once, unless this stream never got going (then the usual backoff: no loop
        // against a service that closes every connection straight away).
        if (delivered) continue;
      } else {
        this.emit({ type: "down", code });
      }
      failures++;
      const backoff = Math.random() * Math.min(cap, initial * 2 ** Math.min(failures - 1, 20));
      try {
        await sleep(backoff, undefined, { signal: this.abort.signal });
      } catch {
        return; // closed while waiting
      }
    }
  }
}
