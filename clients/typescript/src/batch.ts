// Batched validation: the validateAccessToken calls made in one event-loop turn go to the
// service as one ValidateAccessTokens call. Each call through connect costs the caller's
// process far more CPU than the answer it carries (issue 20): one call for many tokens
// spreads that cost over them.
import { Code, ConnectError } from "@connectrpc/connect";
import type { Session } from "./convert.js";
import { codeOf } from "./errors.js";
import { sessionFromAnswer } from "./wire.js";

/** The most tokens the service takes in one ValidateAccessTokens call; more are split. */
export const maxBatchSize = 1000;

/** What the batcher needs from the client. */
export interface BatchCalls {
  /**
   * One ValidateAccessTokens call (traced, retried, inside the validation deadline): an
   * answer per token, in order, each as its ValidateAccessTokenResponse bytes (wire.ts). Throws the transport's error as it is (not yet typed), so
   * `UNIMPLEMENTED` can be told apart. `contexts`: each waiter's trace context.
   */
  batch(tokens: string[], contexts: unknown[]): Promise<Uint8Array[]>;
  /** The unary ValidateAccessToken, typed errors and all: the fallback. */
  single(token: string): Promise<Session | undefined>;
  /** The typed error a waiter of a failed batch gets (a new one for each waiter). */
  error(cause: unknown): Error;
  /** The caller's active trace context, captured when it calls (undefined without tracing). */
  context(): unknown;
}

interface Waiter {
  token: string;
  context: unknown;
  resolve(session: Session | undefined): void;
  reject(error: unknown): void;
}

const settled = Promise.resolve();

/**
 * Runs `flush` once the current turn's promise jobs and `nextTick` callbacks have all run, and
 * before any I/O or timer (DataLoader's schedule). A promise job first, then a tick: callers
 * resumed by the same answer are promise jobs, some several awaits deep, and a tick queued
 * from a promise job runs only once the whole promise queue is empty, so they all make it
 * into the batch; a lone call waits for nothing but the code already queued in this turn.
 */
function endOfTurn(flush: () => void): void {
  void settled.then(() => process.nextTick(flush));
}

/** Collects the validations of one turn and sends them as ValidateAccessTokens calls. */
export class ValidationBatcher {
  private pending: Waiter[] = [];
  /** The service answered UNIMPLEMENTED (it predates the RPC): unary calls from now on. */
  private unsupported = false;

  constructor(private readonly calls: BatchCalls) {}

  /** Whether calls still go out in batches (false after an UNIMPLEMENTED). */
  get batching(): boolean {
    return !this.unsupported;
  }

  /** The session of `token` or undefined, answered by the turn's batch call. */
  validate(token: string): Promise<Session | undefined> {
    if (this.unsupported) {
      return this.calls.single(token);
    }
    return new Promise((resolve, reject) => {
      if (this.pending.length === 0) {
        endOfTurn(this.flush);
      }
      this.pending.push({ token, context: this.calls.context(), resolve, reject });
    });
  }

  private readonly flush = (): void => {
    const waiters = this.pending;
    this.pending = [];
    if (waiters.length <= maxBatchSize) {
      void this.send(waiters);
      return;
    }
    for (let start = 0; start < waiters.length; start += maxBatchSize) {
      void this.send(waiters.slice(start, start + maxBatchSize));
    }
  };

  /** One batch call for `waiters`; never rejects (every waiter is settled instead). */
  private async send(waiters: Waiter[]): Promise<void> {
    // The same token twice in one turn (one user's parallel requests) is asked once.
    const slotOf = new Map<string, number>();
    const tokens: string[] = [];
    const slots = new Array<number>(waiters.length);
    for (let i = 0; i < waiters.length; i++) {
      const token = waiters[i]!.token;
      let slot = slotOf.get(token);
      if (slot === undefined) {
        slot = tokens.push(token) - 1;
        slotOf.set(token, slot);
      }
      slots[i] = slot;
    }
    let answers: Uint8Array[];
    try {
      answers = await this.calls.batch(tokens, waiters.map((w) => w.context));
      if (answers.length !== tokens.length) {
        throw new ConnectError(`the session service answered ${answers.length} results for ${tokens.length} tokens`, Code.Internal);
      }
    } catch (error) {
      if (codeOf(error) === Code.Unimplemented) {
        // An older service: not an answer about these tokens, so they are asked one by one.
        this.unsupported = true;
        for (const waiter of waiters) {
          this.calls.single(waiter.token).then(waiter.resolve, waiter.reject);
        }
        return;
      }
      for (const waiter of waiters) {
        waiter.reject(this.calls.error(error));
      }
      return;
    }
    for (let i = 0; i < waiters.length; i++) {
      const waiter = waiters[i]!;
      const answer = answers[slots[i]!]!;
      try {
        // A fresh object for each waiter: one caller changing its answer changes no other's.
        waiter.resolve(sessionFromAnswer(answer));
      } catch (error) {
        waiter.reject(this.calls.error(error));
      }
    }
  }
}
