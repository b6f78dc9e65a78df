// @barazo/session-client: a typed client of the Barazo session authority.
export { createSessionClient } from "./client.js";
export type { AccountStatusName, DeleteAllOptions, RefreshOptions, SessionClient } from "./client.js";
export type { ValidationCacheEvent, ValidationCacheOptions, ValidationCacheState } from "./cache.js";
export type { ClientInfo, Session, SessionWithToken } from "./convert.js";
export {
  SessionServiceError,
  SessionServiceInvalidArgumentError,
  SessionServiceUnavailableError,
} from "./errors.js";
export type { SessionEnd, StatusCodeName } from "./errors.js";
export type { KeepaliveOptions, SessionClientOptions, SessionRpc, TlsOptions } from "./options.js";
export type { RefreshRetryOptions, RetryOptions } from "./retry.js";
/** The generated wire messages and service descriptor, for callers that need the raw protocol. */
export * as proto from "./gen/barazo/session/v1/session_pb.js";
