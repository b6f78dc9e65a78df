// What a caller can configure, with the defaults and why they are what they are.
import type { Interceptor } from "@connectrpc/connect";
import type { ValidationCacheOptions } from "./cache.js";
import type { RefreshRetryOptions, RetryOptions } from "./retry.js";

/** The RPCs of `barazo.session.v1.SessionService`, by their client method names. */
export type SessionRpc =
  | "createSession"
  | "validateAccessToken"
  | "refreshSession"
  | "deleteSession"
  | "deleteAllSessionsForDid"
  | "listSessions"
  | "revokeSession"
  | "revokeOtherSessions"
  | "updateHandle";

/** TLS to the service. PEM contents (not paths), as strings or buffers. */
export interface TlsOptions {
  /** CA bundle the service's certificate must chain to; default: Node's system roots. */
  ca?: string | Buffer;
  /** This caller's certificate chain, for mTLS (with `key`). */
  cert?: string | Buffer;
  /** The private key of `cert`. */
  key?: string | Buffer;
  /** The name the service's certificate must carry, when not the address's host. */
  serverName?: string;
}

/** HTTP/2 keepalive of the shared connection. */
export interface KeepaliveOptions {
  /**
   * PING after this long without data on a connection with calls in flight. Default 30 000 ms
   * (the server's own interval); 5000 ms with `validationCache` (its stream is always in flight).
   */
  intervalMs?: number;
  /**
   * A PING not answered within this closes the connection; the next call opens a new one.
   * Default 10 000 ms; 5000 ms with `validationCache`.
   */
  timeoutMs?: number;
  /** Close a connection no call has used for this long. Default 15 minutes. */
  idleTimeoutMs?: number;
}

/** Options of `createSessionClient`. Only `address` is required. */
export interface SessionClientOptions {
  /**
   * The service: `host:port` (plaintext, or TLS when `tls` is set), or a URL
   * `http://host:port` / `https://host:port`.
   */
  address: string;
  /** TLS (`true`: system roots, no client certificate) or mTLS settings. */
  tls?: boolean | TlsOptions;
  /** A service key, sent as `authorization: Bearer <key>` with every call. */
  serviceKey?: string;
  /**
   * Deadline of each call, in milliseconds, covering every retry. Defaults:
   * `validateAccessToken` 200 ms (it runs on every authenticated request; the service answers
   * in about a millisecond, and its own store timeout is 500 ms), every other call 2000 ms
   * (cluster-mode writes take several store round trips).
   */
  timeoutMs?: Partial<Record<SessionRpc, number>>;
  /**
   * Retries of calls that are safe to repeat (reads and revocations; never `createSession`;
   * `refreshSession` has its own, `refreshRetry`) after `UNAVAILABLE` or `RESOURCE_EXHAUSTED`, with full-jitter
   * exponential backoff, inside the call's deadline. `false` turns them off.
   */
  retry?: RetryOptions | false;
  /**
   * Repeats of `refreshSession` with the same cookie after `DEADLINE_EXCEEDED`,
   * `UNAVAILABLE` or `RESOURCE_EXHAUSTED`, each with the whole refresh deadline, all started
   * within `withinMs` (default 5000) of the first: a lost answer may hide a refresh that
   * rotated the cookie, and only a repeat within the service's reuse grace gets its
   * successor instead of reading as a stolen cookie later. `false` turns them off.
   */
  refreshRetry?: RefreshRetryOptions | false;
  /** HTTP/2 keepalive of the one shared connection. */
  keepalive?: KeepaliveOptions;
  /**
   * With `@opentelemetry/api` installed: a CLIENT span per call and W3C `traceparent` sent
   * from the active context. Default true; `false`: neither. Without the package nothing is
   * done.
   */
  tracing?: boolean;
  /**
   * A local cache of `validateAccessToken`'s valid answers, kept coherent by the service's
   * `WatchRevocations` feed (one stream on the shared connection): a token validated before
   * is answered from memory, with no network call, while the stream is open and after its
   * first reset, until an event names the token or its session, a reset, the stream's end,
   * or the token's expiry. While the stream is not live every validation asks the service.
   * On by default (`true` or omitted: the default settings; an object: your settings);
   * `false` turns it off. With a service that has no feed (the memory store) it turns
   * itself off (`cacheState()`).
   */
  validationCache?: boolean | ValidationCacheOptions;
  /**
   * The `validateAccessToken` calls made in one event-loop turn (and not answered by the
   * cache) go to the service as one `ValidateAccessTokens` call, at most 1000 tokens each;
   * every caller still gets its own answer or error. The turn ends once its promise jobs and
   * `nextTick` callbacks have run, before any I/O or timer, so a lone call is not held back.
   * On by default; `false` sends one `ValidateAccessToken` call per validation. Against a
   * service without the batch RPC (`UNIMPLEMENTED`) the client falls back to single calls for
   * good.
   */
  batching?: boolean;
  /**
   * Connect interceptors run around every call (after the service key and trace headers are
   * set), also around the cache's revocation stream: e.g. to count or time calls.
   */
  interceptors?: Interceptor[];
}

/** Default deadlines (see `SessionClientOptions.timeoutMs`). */
export const defaultTimeoutMs: Record<SessionRpc, number> = {
  createSession: 2000,
  validateAccessToken: 200,
  refreshSession: 2000,
  deleteSession: 2000,
  deleteAllSessionsForDid: 2000,
  listSessions: 2000,
  revokeSession: 2000,
  revokeOtherSessions: 2000,
  updateHandle: 2000,
};

/**
 * Which calls are retried. Reads are safe. Revocations are idempotent: repeating one ends
 * the same sessions (only the count or flag of the answer may then be lower, since the lost
 * first attempt already did the work). Create is not: each attempt mints a new session,
 * so a retry after a lost answer leaves one nobody holds. Refresh is repeated by its own
 * rule (`withRefreshRetries`): only with the same cookie, within the reuse grace.
 */
export const retrySafe: Record<SessionRpc, boolean> = {
  createSession: false,
  validateAccessToken: true,
  refreshSession: false,
  deleteSession: true,
  deleteAllSessionsForDid: true,
  listSessions: true,
  revokeSession: true,
  revokeOtherSessions: true,
  // Idempotent: the same handle again renames nothing more.
  updateHandle: true,
};
