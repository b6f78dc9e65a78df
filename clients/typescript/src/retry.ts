// Retries with jittered exponential backoff inside one overall deadline.
import { Code, ConnectError } from "@connectrpc/connect";
import { setTimeout as sleep } from "node:timers/promises";
import { closedMessage, codeOf } from "./errors.js";

/** How calls that are safe to retry are retried (see `SessionClientOptions.retry`). */
export interface RetryOptions {
  /** Attempts in all, the first included. Default 3. */
  maxAttempts?: number;
  /** The backoff before the second attempt is drawn from [0, this). Default 20 ms. */
  initialBackoffMs?: number;
  /** The backoff never exceeds this. Default 200 ms. */
  maxBackoffMs?: number;
}

/** Codes worth another attempt: the service or its store blinked, or it shed load. */
const retryable = new Set<Code>([Code.Unavailable, Code.ResourceExhausted]);

/**
 * Runs `attempt` until it succeeds, fails with a code not worth retrying, runs out of
 * attempts, or the deadline (`timeoutMs` from now, covering every attempt and backoff)
 * would pass. Each attempt gets what is left of the deadline as its own timeout.
 */
export async function withRetries<T>(
  attempt: (timeoutMs: number) => Promise<T>,
  timeoutMs: number,
  retry: RetryOptions | false,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  const maxAttempts = retry === false ? 1 : Math.max(1, retry.maxAttempts ?? 3);
  const initial = retry === false ? 0 : (retry.initialBackoffMs ?? 20);
  const cap = retry === false ? 0 : (retry.maxBackoffMs ?? 200);
  for (let n = 1; ; n++) {
    const left = deadline - Date.now();
    try {
      return await attempt(Math.max(1, left));
    } catch (error) {
      if (n >= maxAttempts || !retryable.has(codeOf(error))) {
        throw error;
      }
      // "Full jitter": many callers that failed together do not come back together.
      const backoff = Math.random() * Math.min(cap, initial * 2 ** (n - 1));
      if (Date.now() + backoff >= deadline) {
        throw error;
      }
      await sleep(backoff);
    }
  }
}

/**
 * How a refresh whose answer was lost is repeated (see `SessionClientOptions.refreshRetry`).
 * A refresh that timed out may still have run and rotated the cookie; the same cookie again
 * within the service's reuse grace gets the same successor, so the repeat is safe then, and
 * not repeating it leaves the browser with a cookie that reads as stolen once the grace ends.
 */
export interface RefreshRetryOptions {
  /** Attempts in all, the first included. Default 3. */
  maxAttempts?: number;
  /**
   * No attempt starts later than this after the first one. Default 5000 ms: half the
   * service's default `--refresh-reuse-grace` (10 s), so every repeat lands inside it. Keep
   * it below the grace the service runs with.
   */
  withinMs?: number;
}

/** Codes after which a refresh may or may not have run: repeated with the same cookie. */
const refreshRetryable = new Set<Code>([Code.DeadlineExceeded, Code.Unavailable, Code.ResourceExhausted]);

/**
 * Runs a refresh `attempt` until it answers, fails with a code that is an answer (NOT_FOUND)
 * or a caller's mistake, runs out of attempts, or the next attempt would start later than
 * `withinMs` after the first. Each attempt has the whole `timeoutMs`: unlike other calls, a
 * refresh that ran out of time must be repeated, not abandoned.
 */
export async function withRefreshRetries<T>(
  attempt: (timeoutMs: number) => Promise<T>,
  timeoutMs: number,
  retry: RefreshRetryOptions | false,
): Promise<T> {
  const started = Date.now();
  const maxAttempts = retry === false ? 1 : Math.max(1, retry.maxAttempts ?? 3);
  const withinMs = retry === false ? 0 : (retry.withinMs ?? 5000);
  for (let n = 1; ; n++) {
    try {
      return await attempt(timeoutMs);
    } catch (error) {
      if (n >= maxAttempts || !refreshRetryable.has(codeOf(error))) {
        throw error;
      }
      const backoff = Math.random() * Math.min(200, 20 * 2 ** (n - 1));
      if (Date.now() + backoff - started >= withinMs) {
        throw error;
      }
      await sleep(backoff);
    }
  }
}

/** A ConnectError for a call made after `close()`. */
export function closedError(): ConnectError {
  return new ConnectError(closedMessage, Code.Canceled);
}
