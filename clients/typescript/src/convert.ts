// The generated wire messages turned into the plain objects callers get.
import { timestampMs, type Timestamp } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import type { Session as WireSession } from "./gen/barazo/session/v1/session_pb.js";

/** The device a session was used from, as the AppView passed it. */
export interface ClientInfo {
  /** The browser's User-Agent (stored cut to 512 bytes); empty when unknown. */
  userAgent: string;
  /** A textual IPv4 or IPv6 address; empty when unknown. */
  ipAddress: string;
}

/**
 * A session as the service describes it. Unlike the AppView's old module it carries no
 * credential: no `sid` (the refresh token) and no `accessTokenHash`. Use `sessionKey` (the
 * SHA-256 of the sid, hex) wherever a session must be named, logged or listed.
 */
export interface Session {
  /** The user's DID. */
  did: string;
  /** The user's handle at login time. */
  handle: string;
  /** When the session was created, epoch milliseconds (as the old module). */
  createdAt: number;
  /** When the current access token stops validating, epoch milliseconds. */
  accessTokenExpiresAt: number;
  /** Lowercase hex SHA-256 of the session id: a non-secret handle for this session. */
  sessionKey: string;
  /** The last refresh (the creation time before the first), epoch milliseconds. */
  refreshedAt: number;
  /** When the session ends unless refreshed (the sliding expiry), epoch milliseconds. */
  expiresAt: number;
  /** The device it was last created or refreshed from; empty strings when unknown. */
  client: ClientInfo;
}

/**
 * A session with its credentials, as created or refreshed. `refreshToken` is what the
 * `barazo_refresh` cookie must hold from now on.
 */
export interface SessionWithToken extends Session {
  /** The new access token (64 hex characters). A credential: keep it in memory only. */
  accessToken: string;
  /**
   * The refresh token to keep. After `createSession`: the new session's. After
   * `refreshSession`: the rotated one when the service rotated it (then
   * `refreshTokenRotated` is true and the cookie must be replaced), else the one passed in.
   */
  refreshToken: string;
  /** True when this answer rotated the refresh token: set the cookie to `refreshToken`. */
  refreshTokenRotated: boolean;
}

function ms(timestamp: Timestamp | undefined): number {
  return timestamp === undefined ? 0 : timestampMs(timestamp);
}

/** A wire session as the public `Session`. */
export function toSession(wire: WireSession | undefined): Session {
  if (wire === undefined) {
    // The service always sets it on success; a missing one is a broken server.
    throw new ConnectError("the session service answered without a session", Code.Internal);
  }
  return {
    did: wire.did,
    handle: wire.handle,
    createdAt: ms(wire.createdAt),
    accessTokenExpiresAt: ms(wire.accessTokenExpiresAt),
    sessionKey: wire.sessionKey,
    refreshedAt: ms(wire.refreshedAt),
    expiresAt: ms(wire.expiresAt),
    client: {
      userAgent: wire.client?.userAgent ?? "",
      ipAddress: wire.client?.ipAddress ?? "",
    },
  };
}
