// createSessionClient: the AppView's SessionService over gRPC, on one shared connection.
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import type * as http2 from "node:http2";
import { ValidationBatcher } from "./batch.js";
import { sha256Hex, ValidationCache, type ValidationCacheState } from "./cache.js";
import { toSession, type ClientInfo, type Session, type SessionWithToken } from "./convert.js";
import {
  closedMessage,
  codeOf,
  sessionEndOf,
  SessionServiceInvalidArgumentError,
  toSessionServiceError,
  type SessionEnd,
} from "./errors.js";
import { RevocationFeed } from "./feed.js";
import {
  AccountStatus,
  ClientInfoSchema,
  RefreshSessionRequestSchema,
  SessionService,
} from "./gen/barazo/session/v1/session_pb.js";
import { defaultTimeoutMs, retrySafe, type SessionClientOptions, type SessionRpc } from "./options.js";
import { closedError, withRefreshRetries, withRetries } from "./retry.js";
import { activeContext, injectTraceContext, traced, type Peer } from "./tracing.js";
import { validateAccessTokensRaw } from "./wire.js";

/** Options of `refreshSession`. */
export interface RefreshOptions {
  /**
   * The refreshing tab's own current access token (its `Authorization` bearer), when it has
   * one: the service revokes only that token, so other tabs stay signed in (issue 13).
   */
  previousAccessToken?: string;
  /** The device refreshing (User-Agent, client IP); replaces the stored one. */
  client?: Partial<ClientInfo>;
  /**
   * Called, before `undefined` is answered, with why the session is gone when the service
   * says (`SessionEnd`): e.g. `REFRESH_TOKEN_REUSED` with the user's `did`, to tell them
   * their session was used from elsewhere. The answer stays `undefined` either way.
   */
  onEnded?: (ended: SessionEnd) => void;
}

/**
 * Why every session of an account ends: the `status` of an AT Protocol `#account` event
 * (`active: false`) that ends an account's sessions. Counted by the service under
 * `account-<status>` in `barazo_session_revocations_total{reason}`.
 */
export type AccountStatusName = "deleted" | "takendown" | "deactivated" | "suspended";

/** Options of `deleteAllSessionsForDid`. */
export interface DeleteAllOptions {
  /** Why (the `#account` event's `status`); omitted: counted as `all-for-did`. */
  reason?: AccountStatusName;
}

const accountStatuses: Record<AccountStatusName, AccountStatus> = {
  deleted: AccountStatus.ACCOUNT_DELETED,
  takendown: AccountStatus.ACCOUNT_TAKENDOWN,
  deactivated: AccountStatus.ACCOUNT_DEACTIVATED,
  suspended: AccountStatus.ACCOUNT_SUSPENDED,
};

/**
 * The session service, shaped like the AppView's `SessionService`. Every method throws
 * `SessionServiceUnavailableError` when the service cannot answer (never `undefined`: an
 * outage must not log anyone out), `SessionServiceInvalidArgumentError` for a malformed
 * argument, and `SessionServiceError` for anything else.
 */
export interface SessionClient {
  /** Creates a session after OAuth. `refreshToken` goes in the `barazo_refresh` cookie. */
  createSession(did: string, handle: string, client?: Partial<ClientInfo>): Promise<SessionWithToken>;
  /**
   * The session of a bearer access token, or `undefined` when the token is not the current
   * token of a live session (401). The session has no `sid`: an access token never reveals
   * the refresh token.
   */
  validateAccessToken(token: string): Promise<Session | undefined>;
  /**
   * A new access token for the session of a refresh token (sliding lifetime restarted), or
   * `undefined` when the session is unknown or expired (401 "Session expired", clear the
   * cookie). Set the cookie to the answer's `refreshToken` when `refreshTokenRotated`.
   */
  refreshSession(refreshToken: string, options?: RefreshOptions): Promise<SessionWithToken | undefined>;
  /** Logout: revokes the session; `false` when there was none. Idempotent. */
  deleteSession(refreshToken: string): Promise<boolean>;
  /**
   * Account deletion, takedown, deactivation or suspension: revokes every session of the
   * DID; how many there were. `reason` is the `#account` event's `status`; a status this
   * client does not know throws `SessionServiceInvalidArgumentError` (field `reason`)
   * without a call.
   */
  deleteAllSessionsForDid(did: string, options?: DeleteAllOptions): Promise<number>;
  /**
   * A handle change (the firehose's `#identity` event): every live session of the DID takes
   * `handle`; how many carry it now (0 for a DID without sessions).
   */
  updateHandle(did: string, handle: string): Promise<number>;
  /** The DID's live sessions, most recently refreshed first ("your sessions" page). */
  listSessions(did: string): Promise<Session[]>;
  /** "Log out that device": revokes the DID's session with this `sessionKey`; `false` when none. */
  revokeSession(did: string, sessionKey: string): Promise<boolean>;
  /**
   * "Log out everywhere else": revokes every other session of this refresh token's user;
   * how many. `undefined` when the refresh token names no live session (401).
   */
  revokeOtherSessions(refreshToken: string): Promise<number | undefined>;
  /**
   * Where the validation cache stands (`validationCache` option): `off` when not enabled,
   * `connecting` while answers are not reused (no revocation stream, or no reset on it yet),
   * `live`, `unsupported` when the service has no revocation feed (off for good), `closed`.
   */
  cacheState(): ValidationCacheState;
  /**
   * Closes the shared connection at once (calls still in flight fail); later calls throw a
   * `SessionServiceError` with code `canceled` instead of opening a new connection. Ends the
   * validation cache's revocation stream and drops its answers.
   */
  close(): void;
}

/** The base URL and the peer of an `address` option. */
function endpoint(address: string, tls: boolean): { baseUrl: string; peer: Peer } {
  const url = new URL(/^[a-z]+:\/\//i.test(address) ? address : `${tls ? "https" : "http"}://${address}`);
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new TypeError(`address: expected host:port, http://host:port or https://host:port, got ${address}`);
  }
  if (tls && url.protocol === "http:") {
    throw new TypeError(`address: ${address} is plaintext, but tls is set`);
  }
  const port = url.port === "" ? (url.protocol === "https:" ? 443 : 80) : Number(url.port);
  return { baseUrl: url.origin, peer: { address: url.hostname.replace(/^\[|\]$/g, ""), port } };
}

/** Node's TLS settings for the connection, or none for plaintext. */
function tlsSettings(options: SessionClientOptions): http2.SecureClientSessionOptions {
  const tls = options.tls;
  if (tls === undefined || tls === false || tls === true) {
    return {};
  }
  if ((tls.cert === undefined) !== (tls.key === undefined)) {
    throw new TypeError("tls: cert and key go together (mTLS needs both)");
  }
  const settings: http2.SecureClientSessionOptions = {};
  if (tls.ca !== undefined) settings.ca = tls.ca;
  if (tls.cert !== undefined) settings.cert = tls.cert;
  if (tls.key !== undefined) settings.key = tls.key;
  if (tls.serverName !== undefined) settings.servername = tls.serverName;
  return settings;
}

/**
 * Watches every HTTP/2 session the manager opens, through the streams it hands out:
 *
 * - A listener of its own for "error", so no session error can become an uncaught exception
 *   (which would end the caller's process). The manager removes its listener when it leaves a
 *   connection, and it leaves one that died of a PING timeout as soon as the next call
 *   arrives, before Node has emitted the error (seen with a frozen service: the retry of the
 *   call that failed crashed the process). The manager still learns of the failure from its
 *   own listener or the connection's state, and calls from their streams.
 * - `onGoaway` on a GOAWAY (the service is shutting down): the manager sends new calls to a
 *   new connection, but a long-lived stream would keep the old one, and the service's drain,
 *   open until its deadline.
 */
function watchSessions(manager: Http2SessionManager, onGoaway: () => void): void {
  const watched = new WeakSet<http2.Http2Session>();
  const request = manager.request.bind(manager);
  manager.request = async (...args) => {
    const stream = await request(...args);
    const session = stream.session;
    if (session !== undefined && !watched.has(session)) {
      watched.add(session);
      session.on("error", () => {});
      session.on("goaway", onGoaway);
    }
    return stream;
  };
}

/**
 * Runs `then` once `call` has settled, whether it answered or failed (a failed revocation
 * may still have happened), and passes the call's outcome on.
 */
async function after<T>(then: (answer: T | undefined) => void, call: Promise<T>): Promise<T> {
  let answer: T | undefined;
  try {
    answer = await call;
    return answer;
  } finally {
    then(answer);
  }
}

function clientInfo(client: Partial<ClientInfo> | undefined) {
  return client === undefined ? undefined : create(ClientInfoSchema, client);
}

/**
 * A client of the session service. One HTTP/2 connection is shared by every call (opened on
 * the first, reopened after a failure, kept alive with PINGs); `close()` ends it.
 */
export function createSessionClient(options: SessionClientOptions): SessionClient {
  const tls = options.tls !== undefined && options.tls !== false;
  const { baseUrl, peer } = endpoint(options.address, tls);
  const keepalive = options.keepalive ?? {};
  // With the cache, a connection that died silently (no FIN, no RST) keeps its revocation
  // stream looking open, and cached answers reused, until a PING goes unanswered: shorter
  // PINGs bound that to 10 s instead of 40 s.
  const caching = options.validationCache !== false;
  const sessionManager = new Http2SessionManager(
    baseUrl,
    {
      pingIntervalMs: keepalive.intervalMs ?? (caching ? 5_000 : 30_000),
      pingTimeoutMs: keepalive.timeoutMs ?? (caching ? 5_000 : 10_000),
      idleConnectionTimeoutMs: keepalive.idleTimeoutMs ?? 15 * 60_000,
    },
    tlsSettings(options),
  );
  // Set below once the cache's feed exists: it moves its stream off a closing connection.
  let onGoaway: (() => void) | undefined;
  watchSessions(sessionManager, () => onGoaway?.());
  const tracing = options.tracing ?? true;
  const authorization = options.serviceKey === undefined ? undefined : `Bearer ${options.serviceKey}`;
  const headers: Interceptor = (next) => async (request) => {
    if (authorization !== undefined) {
      request.header.set("authorization", authorization);
    }
    if (tracing) {
      injectTraceContext(request.header);
    }
    return next(request);
  };
  const transport = createGrpcTransport({
    baseUrl,
    sessionManager,
    interceptors: [headers, ...(options.interceptors ?? [])],
  });
  const grpc = createClient(SessionService, transport);
  const retry = options.retry ?? {};
  const refreshRetry = options.refreshRetry ?? {};
  let closed = false;

  // The validation cache and the revocation stream that keeps it coherent (opt-out).
  const cacheOptions =
    options.validationCache === false
      ? undefined
      : typeof options.validationCache === "object"
        ? options.validationCache
        : {};
  const cache = cacheOptions === undefined ? undefined : new ValidationCache(cacheOptions);
  const feed =
    cache === undefined || cacheOptions === undefined
      ? undefined
      : new RevocationFeed(cache, (signal) => grpc.watchRevocations({}, { signal }), cacheOptions);
  onGoaway = feed === undefined ? undefined : () => feed.moveOff();

  /**
   * After this client's own revocations: drop what they name at once, so this process sees
   * its own write before the feed's event for it arrives (a logout answered here must not
   * validate here a moment later). Every drop moves the generation on, so a validation in
   * flight does not cache what it read before the write. Rare calls (logout, "log out
   * everywhere else") whose session this client cannot name drop everything.
   */
  const forget = {
    hash(token: string | undefined) {
      if (token !== undefined && token !== "") cache?.dropHash(sha256Hex(token));
    },
    session(sessionKey: string) {
      cache?.dropSession(sessionKey);
    },
    did(did: string) {
      cache?.dropDid(did);
    },
    all() {
      if (cache?.live) cache.reset(true);
    },
  };

  /**
   * One logical call: traced, retried when safe, errors typed. `onNotFound` gives the answer
   * to NOT_FOUND for the calls where it is an answer (the session is gone), not an error.
   */
  async function call<T>(
    rpc: SessionRpc,
    attempt: (timeoutMs: number) => Promise<T>,
    onNotFound?: (error: unknown) => T,
  ): Promise<T> {
    const name = rpc[0]!.toUpperCase() + rpc.slice(1);
    try {
      return await traced(name, peer, tracing, () => {
        if (closed) {
          throw closedError();
        }
        const timeout = options.timeoutMs?.[rpc] ?? defaultTimeoutMs[rpc];
        if (rpc === "refreshSession") {
          return withRefreshRetries(attempt, timeout, refreshRetry);
        }
        return withRetries(attempt, timeout, retrySafe[rpc] ? retry : false);
      });
    } catch (error) {
      if (onNotFound !== undefined && codeOf(error) === Code.NotFound) {
        return onNotFound(error);
      }
      throw toSessionServiceError(name, error);
    }
  }

  /** One validation, one ValidateAccessToken call. */
  function validateOne(token: string): Promise<Session | undefined> {
    return call("validateAccessToken", async (timeoutMs) => {
      const answer = await grpc.validateAccessToken({ accessToken: token }, { timeoutMs });
      return answer.valid ? toSession(answer.session) : undefined;
    });
  }

  // Batched validation (on by default): the turn's validations in one ValidateAccessTokens
  // call, with validateAccessToken's deadline and retry rules, one span per batch call.
  const batcher =
    options.batching === false
      ? undefined
      : new ValidationBatcher({
          batch: (tokens, contexts) =>
            traced(
              "ValidateAccessTokens",
              peer,
              tracing,
              () => {
                if (closed) {
                  throw closedError();
                }
                const timeout = options.timeoutMs?.validateAccessToken ?? defaultTimeoutMs.validateAccessToken;
                // The answers undecoded: wire.ts reads them straight into sessions.
                return withRetries(
                  async (timeoutMs) =>
                    (await transport.unary(validateAccessTokensRaw, undefined, timeoutMs, undefined, { accessTokens: tokens }))
                      .message.results,
                  timeout,
                  retrySafe.validateAccessToken ? retry : false,
                );
              },
              { contexts, size: tokens.length },
            ),
          single: validateOne,
          error: (cause) => toSessionServiceError("ValidateAccessTokens", cause),
          context: () => activeContext(tracing),
        });

  return {
    async createSession(did, handle, client) {
      // The per-DID cap may revoke the DID's oldest sessions.
      return after(() => forget.did(did), call("createSession", async (timeoutMs) => {
        const answer = await grpc.createSession({ did, handle, client: clientInfo(client) }, { timeoutMs });
        return {
          ...toSession(answer.session),
          accessToken: answer.accessToken,
          refreshToken: answer.refreshToken,
          refreshTokenRotated: false,
        };
      }));
    },

    async validateAccessToken(token) {
      const validate = () => (batcher === undefined ? validateOne(token) : batcher.validate(token));
      if (cache === undefined) {
        return validate();
      }
      const hash = sha256Hex(token);
      const hit = cache.get(hash);
      if (hit !== undefined) {
        return hit;
      }
      const generation = cache.generation();
      const session = await validate();
      if (session !== undefined && generation !== undefined) {
        cache.insert(hash, session, generation);
      }
      return session;
    },

    async refreshSession(refreshToken, refreshOptions = {}) {
      const refreshed = call(
        "refreshSession",
        async (timeoutMs) => {
          const request = create(RefreshSessionRequestSchema, {
            refreshToken,
            previousAccessToken: refreshOptions.previousAccessToken ?? "",
            client: clientInfo(refreshOptions.client),
          });
          const answer = await grpc.refreshSession(request, { timeoutMs });
          // Set only when the service rotated the refresh token (--refresh-token-rotation on).
          const rotated = answer.refreshToken;
          return {
            ...toSession(answer.session),
            accessToken: answer.accessToken,
            refreshToken: rotated === "" ? refreshToken : rotated,
            refreshTokenRotated: rotated !== "",
          };
        },
        (error) => {
          const ended = refreshOptions.onEnded === undefined ? undefined : sessionEndOf(error);
          if (ended !== undefined) refreshOptions.onEnded?.(ended);
          return undefined;
        },
      );
      // The refreshing tab's token ends; the session changed. Without an answer (the session
      // is gone, or the call failed) the session may just have been ended by this very call (a
      // reused rotated cookie ends the whole session) and this client cannot name it: a
      // rotated cookie is not the session id its key is the hash of. Drop everything then.
      return after((answer) => {
        forget.hash(refreshOptions.previousAccessToken);
        if (answer === undefined) forget.all();
        else forget.session(answer.sessionKey);
      }, refreshed);
    },

    async deleteSession(refreshToken) {
      return after(forget.all, call("deleteSession", async (timeoutMs) => {
        return (await grpc.deleteSession({ refreshToken }, { timeoutMs })).deleted;
      }));
    },

    async deleteAllSessionsForDid(did, options) {
      const name = options?.reason;
      let reason = AccountStatus.ACCOUNT_STATUS_UNSPECIFIED;
      if (name !== undefined) {
        if (!Object.hasOwn(accountStatuses, name)) {
          throw new SessionServiceInvalidArgumentError(
            "deleteAllSessionsForDid",
            `reason is not one this client knows: ${String(name)}`,
          );
        }
        reason = accountStatuses[name];
      }
      return after(() => forget.did(did), call("deleteAllSessionsForDid", async (timeoutMs) => {
        return (await grpc.deleteAllSessionsForDid({ did, reason }, { timeoutMs })).deletedCount;
      }));
    },

    async updateHandle(did, handle) {
      return after(() => forget.did(did), call("updateHandle", async (timeoutMs) => {
        return (await grpc.updateHandle({ did, handle }, { timeoutMs })).updatedCount;
      }));
    },

    async listSessions(did) {
      return call("listSessions", async (timeoutMs) => {
        return (await grpc.listSessions({ did }, { timeoutMs })).sessions.map(toSession);
      });
    },

    async revokeSession(did, sessionKey) {
      return after(() => forget.session(sessionKey), call("revokeSession", async (timeoutMs) => {
        return (await grpc.revokeSession({ did, sessionKey }, { timeoutMs })).revoked;
      }));
    },

    async revokeOtherSessions(refreshToken) {
      return after(forget.all, call(
        "revokeOtherSessions",
        async (timeoutMs) => {
          return (await grpc.revokeOtherSessions({ refreshToken }, { timeoutMs })).revokedCount;
        },
        () => undefined,
      ));
    },

    cacheState() {
      const entries = cache?.size ?? 0;
      if (cache === undefined) return { state: "off", entries };
      if (closed) return { state: "closed", entries };
      const code = feed?.unsupported;
      if (code !== undefined) return { state: "unsupported", entries, code };
      return { state: cache.live ? "live" : "connecting", entries };
    },

    close() {
      closed = true;
      feed?.close();
      sessionManager.abort(new ConnectError(closedMessage, Code.Canceled));
    },
  };
}
