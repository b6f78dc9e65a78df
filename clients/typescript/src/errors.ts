// The errors a caller can act on, and the one mapping from gRPC status codes to them.
import { BinaryReader, WireType } from "@bufbuild/protobuf/wire";
import { Code, ConnectError } from "@connectrpc/connect";

/** The gRPC status code names this client reports, as in the gRPC spec (lower case). */
export type StatusCodeName =
  | "canceled"
  | "unknown"
  | "invalid_argument"
  | "deadline_exceeded"
  | "not_found"
  | "already_exists"
  | "permission_denied"
  | "resource_exhausted"
  | "failed_precondition"
  | "aborted"
  | "out_of_range"
  | "unimplemented"
  | "internal"
  | "unavailable"
  | "data_loss"
  | "unauthenticated";

const codeNames: Record<Code, StatusCodeName> = {
  [Code.Canceled]: "canceled",
  [Code.Unknown]: "unknown",
  [Code.InvalidArgument]: "invalid_argument",
  [Code.DeadlineExceeded]: "deadline_exceeded",
  [Code.NotFound]: "not_found",
  [Code.AlreadyExists]: "already_exists",
  [Code.PermissionDenied]: "permission_denied",
  [Code.ResourceExhausted]: "resource_exhausted",
  [Code.FailedPrecondition]: "failed_precondition",
  [Code.Aborted]: "aborted",
  [Code.OutOfRange]: "out_of_range",
  [Code.Unimplemented]: "unimplemented",
  [Code.Internal]: "internal",
  [Code.Unavailable]: "unavailable",
  [Code.DataLoss]: "data_loss",
  [Code.Unauthenticated]: "unauthenticated",
};

/**
 * Any failure of a call to the session service that is not an answer ("invalid token" and
 * "session expired" are answers: `undefined`). Subclasses mark the cases a caller treats
 * differently; anything else (`UNAUTHENTICATED`, `PERMISSION_DENIED`, `INTERNAL`, …) is a
 * deployment error or a bug: log it, answer 500.
 */
export class SessionServiceError extends Error {
  /** The gRPC status code. */
  readonly code: StatusCodeName;
  /** The RPC that failed, e.g. `ValidateAccessToken`. */
  readonly rpc: string;

  constructor(rpc: string, code: StatusCodeName, message: string, options?: ErrorOptions) {
    super(`${rpc}: ${code}: ${message}`, options);
    this.name = "SessionServiceError";
    this.rpc = rpc;
    this.code = code;
  }
}

/**
 * The service could not answer: it is unreachable or stopped (`UNAVAILABLE`), its store is
 * down (`UNAVAILABLE`), the call ran out of time (`DEADLINE_EXCEEDED`) or was shed under load
 * (`RESOURCE_EXHAUSTED`). Answer 502/503, never 401: an outage must not log users out.
 */
export class SessionServiceUnavailableError extends SessionServiceError {
  constructor(rpc: string, code: StatusCodeName, message: string, options?: ErrorOptions) {
    super(rpc, code, message, options);
    this.name = "SessionServiceUnavailableError";
  }
}

/**
 * The service refused an argument (`INVALID_ARGUMENT`): a bug in the caller, e.g. a DID that
 * is not valid AT Protocol syntax. `field` names the request field as the proto spells it
 * (`did`, `handle`, `session_key`, `client.ip_address`), or is `undefined` when the whole
 * request was refused (it could not be decoded).
 */
export class SessionServiceInvalidArgumentError extends SessionServiceError {
  /** The refused request field, as the proto names it. */
  readonly field: string | undefined;

  constructor(rpc: string, message: string, options?: ErrorOptions) {
    super(rpc, "invalid_argument", message, options);
    this.name = "SessionServiceInvalidArgumentError";
    // The service's messages start with the field: "handle is not a valid handle: …".
    this.field = /^([a-z_]+(?:\.[a-z_]+)*) is not /.exec(message)?.[1];
  }
}

/** Codes that mean "the service could not answer now"; see SessionServiceUnavailableError. */
const unavailableCodes = new Set<Code>([Code.Unavailable, Code.DeadlineExceeded, Code.ResourceExhausted]);

/**
 * The status code of a failed call. The transport reports network failures as ConnectErrors
 * (UNAVAILABLE and so on); anything else thrown is a bug on this side, INTERNAL, so it is
 * neither retried nor mistaken for an outage.
 */
export function codeOf(error: unknown): Code {
  return normalized(error).code;
}

/**
 * The ConnectError a failure stands for. Node reports an HTTP/2 stream or connection that
 * went away under a call (the service stopped or was killed mid-call) as CANCELED ("http/2
 * stream closed with error code CANCEL"), though this client did not cancel it: that is
 * UNAVAILABLE, as gRPC's own clients report a dropped connection, so it is retried where
 * safe and never mistaken for an answer. A CANCELLED status the service sent, and close(),
 * stay CANCELED.
 */
function normalized(error: unknown): ConnectError {
  const connect = ConnectError.from(error, Code.Internal);
  if (connect.code === Code.Canceled && /^http\/2 (stream|session) /.test(connect.rawMessage)) {
    return new ConnectError(`connection lost during the call: ${connect.rawMessage}`, Code.Unavailable, undefined, undefined, error);
  }
  return connect;
}

/** The message of the error close() ends calls in flight with. */
export const closedMessage = "the session client is closed";

/** Turns any failure of a call into the typed error the caller sees. */
export function toSessionServiceError(rpc: string, error: unknown): SessionServiceError {
  if (error instanceof SessionServiceError) {
    return error;
  }
  const connect = normalized(error);
  const message = connect.rawMessage;
  if (connect.code === Code.InvalidArgument) {
    return new SessionServiceInvalidArgumentError(rpc, message, { cause: error });
  }
  const name = codeNames[connect.code];
  if (unavailableCodes.has(connect.code)) {
    return new SessionServiceUnavailableError(rpc, name, message, { cause: error });
  }
  return new SessionServiceError(rpc, name, message, { cause: error });
}

/**
 * Why a session named by a refresh token is gone, as the service says it (a
 * `google.rpc.ErrorInfo` in the NOT_FOUND's details, domain `session.barazo.forum`):
 * - `REFRESH_TOKEN_REUSED`: an older refresh token of the session was presented again, so
 *   the whole session was revoked by this very call, as theft; `did` names the user to tell
 *   ("you were signed out because your session was used from elsewhere").
 * - `SESSION_REVOKED`: the session was revoked; `metadata.revocation` says how (`logout`,
 *   `user`, `others`, `cap`, `reuse`, `all-for-did`, `account-takendown`, …).
 * - `SESSION_LIFETIME_REACHED`: the session reached the service's absolute lifetime.
 * - `SESSION_UNKNOWN`: no live session has the token (it expired, or was never issued).
 * A newer service may name other reasons; `metadata` holds whatever it attached.
 */
export interface SessionEnd {
  reason:
    | "REFRESH_TOKEN_REUSED"
    | "SESSION_REVOKED"
    | "SESSION_LIFETIME_REACHED"
    | "SESSION_UNKNOWN"
    | (string & {});
  /** The user, for `REFRESH_TOKEN_REUSED`. */
  did?: string;
  metadata: Record<string, string>;
}

const errorDomain = "session.barazo.forum";

/** `google.rpc.ErrorInfo` (reason = 1, domain = 2, map<string, string> metadata = 3). */
function decodeErrorInfo(bytes: Uint8Array): { reason: string; domain: string; metadata: Record<string, string> } {
  const reader = new BinaryReader(bytes);
  const info = { reason: "", domain: "", metadata: {} as Record<string, string> };
  while (reader.pos < reader.len) {
    const [field, wireType] = reader.tag();
    if (field === 1 && wireType === WireType.LengthDelimited) info.reason = reader.string();
    else if (field === 2 && wireType === WireType.LengthDelimited) info.domain = reader.string();
    else if (field === 3 && wireType === WireType.LengthDelimited) {
      const entry = new BinaryReader(reader.bytes());
      let key = "";
      let value = "";
      while (entry.pos < entry.len) {
        const [entryField, entryType] = entry.tag();
        if (entryField === 1 && entryType === WireType.LengthDelimited) key = entry.string();
        else if (entryField === 2 && entryType === WireType.LengthDelimited) value = entry.string();
        else entry.skip(entryType);
      }
      info.metadata[key] = value;
    } else reader.skip(wireType);
  }
  return info;
}

/** Why the service said a session is gone, from a NOT_FOUND error; `undefined` when it did not say. */
export function sessionEndOf(error: unknown): SessionEnd | undefined {
  if (!(error instanceof ConnectError)) return undefined;
  for (const detail of error.details) {
    if (!("type" in detail) || detail.type !== "google.rpc.ErrorInfo") continue;
    try {
      const info = decodeErrorInfo(detail.value);
      if (info.domain !== errorDomain) continue;
      const end: SessionEnd = { reason: info.reason, metadata: info.metadata };
      if (info.metadata.did !== undefined) end.did = info.metadata.did;
      return end;
    } catch {
      // A malformed detail says nothing.
    }
  }
  return undefined;
}
