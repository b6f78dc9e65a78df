// The one mapping of gRPC codes to the client's errors, pinned code by code, so a refactor
// cannot turn an outage into an "invalid token" (a logout) or into a plain error.
import assert from "node:assert/strict";
import { test } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  SessionServiceError,
  SessionServiceInvalidArgumentError,
  SessionServiceUnavailableError,
} from "../dist/index.js";
import { toSessionServiceError } from "../dist/errors.js";

test("every gRPC code maps to the error class and code name the README promises", () => {
  const expected = [
    [Code.Unavailable, SessionServiceUnavailableError, "unavailable"],
    [Code.DeadlineExceeded, SessionServiceUnavailableError, "deadline_exceeded"],
    [Code.ResourceExhausted, SessionServiceUnavailableError, "resource_exhausted"],
    [Code.InvalidArgument, SessionServiceInvalidArgumentError, "invalid_argument"],
    [Code.Unauthenticated, SessionServiceError, "unauthenticated"],
    [Code.PermissionDenied, SessionServiceError, "permission_denied"],
    [Code.Internal, SessionServiceError, "internal"],
    [Code.OutOfRange, SessionServiceError, "out_of_range"],
    [Code.Unknown, SessionServiceError, "unknown"],
    [Code.Canceled, SessionServiceError, "canceled"],
    [Code.NotFound, SessionServiceError, "not_found"],
  ];
  for (const [code, type, name] of expected) {
    const error = toSessionServiceError("ValidateAccessToken", new ConnectError("boom", code));
    assert.equal(error.constructor, type, `${Code[code]}`);
    assert.equal(error.code, name);
    assert.equal(error.rpc, "ValidateAccessToken");
    assert.ok(error instanceof SessionServiceError);
  }
});

test("anything thrown that is not a gRPC status is INTERNAL: a bug here is not an outage", () => {
  const error = toSessionServiceError("CreateSession", new TypeError("x is undefined"));
  assert.equal(error.constructor, SessionServiceError);
  assert.equal(error.code, "internal");
});

test("a stream the connection dropped under the call is UNAVAILABLE, not CANCELED", () => {
  const dropped = new ConnectError("http/2 stream closed with error code CANCEL (0x8)", Code.Canceled);
  const error = toSessionServiceError("ValidateAccessToken", dropped);
  assert.equal(error.constructor, SessionServiceUnavailableError);
  assert.equal(error.code, "unavailable");
});

test("the invalid field is read from the service's message; none for an undecodable request", () => {
  const field = (message) =>
    toSessionServiceError("CreateSession", new ConnectError(message, Code.InvalidArgument)).field;
  assert.equal(field("handle is not a valid handle: bad"), "handle");
  assert.equal(field("client.ip_address is not an IP address: give a textual IPv4 or IPv6 address, or none"), "client.ip_address");
  assert.equal(field("the request could not be decoded"), undefined);
});
