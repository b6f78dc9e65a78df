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

/** A ConnectError for a call made after `close()`. */
export function closedError(): ConnectError {
  return new ConnectError(closedMessage, Code.Canceled);
}
