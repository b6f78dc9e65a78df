// The local validation cache: valid answers of validateAccessToken by the token's SHA-256,
// reused only as long as the service's WatchRevocations feed allows (its caller contract,
// docs/sessions.md, "Revocation feed"): while the stream is open and after its first reset; dropped on
// an event naming the token or its session, on a reset, on the stream's end, and at the
// token's expiry.
import * as crypto from "node:crypto";
import type { Session } from "./convert.js";

/** Options of the validation cache (`SessionClientOptions.validationCache`). */
export interface ValidationCacheOptions {
  /**
   * Most answers kept; when full, the oldest entry makes room. Default 10 000 (one per
   * access token presented to this process within a token's 15 minutes; about 0.9 KB of heap
   * each with a 100-byte User-Agent, so about 9 MiB at most). Only valid answers are cached, so unknown or random tokens never take a slot.
   */
  maxEntries?: number;
  /**
   * An entry stops being reused this long before its `accessTokenExpiresAt`, judged on this
   * process's clock (the service judges on Valkey's): room for a clock that runs a little
   * behind. Default 1000 ms.
   */
  expiryMarginMs?: number;
  /**
   * Reconnection of the feed after it ends: full-jitter exponential backoff from
   * `initialBackoffMs` (default 100), doubling, capped at `maxBackoffMs` (default 5000).
   */
  reconnect?: { initialBackoffMs?: number; maxBackoffMs?: number };
  /**
   * Called with each thing that happens to the cache (no token or session id in any):
   * for metrics, or to wait for a revocation in tests. Must not throw.
   */
  onEvent?: (event: ValidationCacheEvent) => void;
}

/**
 * What happened to the cache. `reset`: the feed said to drop everything (the first event of
 * each stream: from then on answers are reused); `accessTokenHash` / `sessionKey`: the
 * feed named a token (hex SHA-256) or a session to drop; `down`: the stream ended or could
 * not be opened (everything dropped, no reuse until the next stream's first reset), with
 * the gRPC `code` name, or `goaway` when the client ended it itself to move it off a
 * connection the service is closing (it reopens at once); `unsupported`: the service has no feed (`FAILED_PRECONDITION`: the
 * memory store; or it refused the stream for good), the cache is off for
 * this client.
 */
export type ValidationCacheEvent =
  | { type: "reset" }
  | { type: "accessTokenHash"; hash: string }
  | { type: "sessionKey"; sessionKey: string }
  | { type: "down"; code: string }
  | { type: "unsupported"; code: string };

/**
 * Where the cache stands (`SessionClient.cacheState()`): `off` (not enabled), `connecting`
 * (no stream, or no reset on it yet: every validation asks the service), `live` (answers
 * are reused), `unsupported` (the service has no feed: off for good; `code` says why),
 * `closed` (`close()` was called).
 */
export interface ValidationCacheState {
  /** See the interface's description. */
  state: "off" | "connecting" | "live" | "unsupported" | "closed";
  /** Answers held now (only reused while `live`). */
  entries: number;
  /** The gRPC code name that turned the cache off for good, with `unsupported`. */
  code?: string;
}

/**
 * Lowercase hex SHA-256, the name the feed gives an access token. Every validation hashes its
 * token (a cache hit is little more): the one-shot `crypto.hash` (Node 20.12+) takes a third
 * of the time of a Hash object; older Node 20 releases fall back to one.
 */
export const sha256Hex: (text: string) => string =
  typeof crypto.hash === "function"
    ? (text) => crypto.hash("sha256", text, "hex")
    : (text) => crypto.createHash("sha256").update(text).digest("hex");

interface Entry {
  session: Session;
  /** Epoch ms on this process's clock after which the entry is not reused. */
  until: number;
}

/** A copy, so a caller that changes an answer does not change the cached one. */
function copy(session: Session): Session {
  return { ...session, client: { ...session.client } };
}

/**
 * The cached answers and whether they may be reused. The feed (in client.ts) drives it
 * through `live`, `reset`, `dropHash` and `dropSession`.
 */
export class ValidationCache {
  private readonly entries = new Map<string, Entry>();
  /** sessionKey → the hashes cached for it, so a `sessionKey` event drops them all. */
  private readonly bySession = new Map<string, Set<string>>();
  /**
   * Moves on with every drop. A validation takes it before asking the service and inserts
   * only if it is unchanged: an answer read before an event must not outlive it.
   */
  private generationCounter = 0;
  private isLive = false;
  readonly maxEntries: number;
  private readonly marginMs: number;

  constructor(options: ValidationCacheOptions) {
    this.maxEntries = Math.max(1, Math.floor(options.maxEntries ?? 10_000));
    this.marginMs = Math.max(0, options.expiryMarginMs ?? 1000);
  }

  /** Whether answers are reused now. */
  get live(): boolean {
    return this.isLive;
  }

  /** How many answers are held. */
  get size(): number {
    return this.entries.size;
  }

  /** The cached answer for a token's hash, if live, held and not about to expire. */
  get(hash: string): Session | undefined {
    if (!this.isLive) return undefined;
    const entry = this.entries.get(hash);
    if (entry === undefined) return undefined;
    if (Date.now() >= entry.until) {
      this.remove(hash, entry);
      return undefined;
    }
    return copy(entry.session);
  }

  /** The generation to pass to `insert`, taken before the service is asked; undefined when not live. */
  generation(): number | undefined {
    return this.isLive ? this.generationCounter : undefined;
  }

  /** Caches a valid answer unless anything was dropped since `generation` was taken. */
  insert(hash: string, session: Session, generation: number): void {
    if (!this.isLive || generation !== this.generationCounter) return;
    const until = session.accessTokenExpiresAt - this.marginMs;
    if (Date.now() >= until) return;
    const held = this.entries.get(hash);
    if (held !== undefined) {
      this.remove(hash, held);
    } else if (this.entries.size >= this.maxEntries) {
      // Full: the oldest insertion makes room (a Map iterates in insertion order).
      const oldest = this.entries.entries().next().value;
      if (oldest !== undefined) this.remove(oldest[0], oldest[1]);
    }
    this.entries.set(hash, { session: copy(session), until });
    let hashes = this.bySession.get(session.sessionKey);
    if (hashes === undefined) {
      hashes = new Set();
      this.bySession.set(session.sessionKey, hashes);
    }
    hashes.add(hash);
  }

  /** Drops the answer for one token hash. */
  dropHash(hash: string): void {
    this.generationCounter++;
    const entry = this.entries.get(hash);
    if (entry !== undefined) this.remove(hash, entry);
  }

  /** Drops every answer of one session. */
  dropSession(sessionKey: string): void {
    this.generationCounter++;
    const hashes = this.bySession.get(sessionKey);
    if (hashes === undefined) return;
    this.bySession.delete(sessionKey);
    for (const hash of hashes) this.entries.delete(hash);
  }

  /** Drops every answer of one DID (this client's own revocations by DID). */
  dropDid(did: string): void {
    this.generationCounter++;
    for (const [hash, entry] of this.entries) {
      if (entry.session.did === did) this.remove(hash, entry);
    }
  }

  /** Drops everything; from now on answers are reused only if `live`. */
  reset(live: boolean): void {
    this.generationCounter++;
    this.entries.clear();
    this.bySession.clear();
    this.isLive = live;
  }

  private remove(hash: string, entry: Entry): void {
    this.entries.delete(hash);
    const hashes = this.bySession.get(entry.session.sessionKey);
    if (hashes === undefined) return;
    hashes.delete(hash);
    if (hashes.size === 0) this.bySession.delete(entry.session.sessionKey);
  }
}
