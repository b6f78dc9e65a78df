// wire.ts reads ValidateAccessTokens's answers without protobuf-es: it must read exactly what
// protobuf-es + toSession would, skip what it does not know, refuse what is broken, and fail
// here the day the proto's fields change under it.
import assert from "node:assert/strict";
import { test } from "node:test";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { proto } from "../dist/index.js";
import { toSession } from "../dist/convert.js";
import { sessionFromAnswer, validateAccessTokensRaw } from "../dist/wire.js";

const full = {
  valid: true,
  session: {
    did: "did:plc:z72i7hdynmk6r22z27h6tvur",
    handle: "alice.bsky.social",
    createdAt: { seconds: 1_764_000_000n, nanos: 123_456_789 },
    accessTokenExpiresAt: { seconds: 1_764_000_900n, nanos: 999_999_999 },
    sessionKey: "ab".repeat(32),
    refreshedAt: { seconds: 1_764_000_100n, nanos: 500_000 },
    expiresAt: { seconds: 1_764_604_800n, nanos: 1 },
    client: { userAgent: "Mozilla/5.0 (X11; Linux x86_64) Firefox/141 – ünïcödé", ipAddress: "2001:db8::1" },
  },
};

function answerBytes(init) {
  return toBinary(proto.ValidateAccessTokenResponseSchema, create(proto.ValidateAccessTokenResponseSchema, init));
}

/** A field no version of the proto has, of each wire type: varint, fixed64, bytes, fixed32. */
const unknownFields = Buffer.from([
  0x98, 0x06, 0x96, 0x01, // field 99 varint 150
  0xa1, 0x06, 1, 2, 3, 4, 5, 6, 7, 8, // field 100 fixed64
  0xaa, 0x06, 0x03, 0x61, 0x62, 0x63, // field 101 bytes "abc"
  0xb5, 0x06, 1, 2, 3, 4, // field 102 fixed32
]);

test("a valid answer reads as protobuf-es and toSession read it", () => {
  const bytes = answerBytes(full);
  const expected = toSession(fromBinary(proto.ValidateAccessTokenResponseSchema, bytes).session);
  assert.deepEqual(sessionFromAnswer(bytes), expected);
  assert.equal(expected.createdAt, 1_764_000_000_123);
  assert.equal(expected.accessTokenExpiresAt, 1_764_000_901_000, "nanos rounded as timestampMs rounds them");
  // Empty fields and a session without client or timestamps, as the service may send.
  const sparse = answerBytes({ valid: true, session: { did: "did:plc:x", sessionKey: "cd".repeat(32) } });
  assert.deepEqual(sessionFromAnswer(sparse), toSession(fromBinary(proto.ValidateAccessTokenResponseSchema, sparse).session));
});

test("an invalid answer is undefined; a valid one without a session is INTERNAL", () => {
  assert.equal(sessionFromAnswer(answerBytes({ valid: false })), undefined);
  assert.equal(sessionFromAnswer(new Uint8Array(0)), undefined, "all defaults: not valid");
  assert.equal(sessionFromAnswer(answerBytes({ valid: false, session: full.session })), undefined);
  assert.throws(
    () => sessionFromAnswer(answerBytes({ valid: true })),
    (error) => error instanceof ConnectError && error.code === Code.Internal,
  );
});

test("fields it does not know are skipped, in the answer, the session and the client", () => {
  const expected = sessionFromAnswer(answerBytes(full));
  // Unknown fields at the end of the answer.
  assert.deepEqual(sessionFromAnswer(Buffer.concat([answerBytes(full), unknownFields])), expected);
  // And inside the session and its client: protobuf-es writes unknown fields back as it read them.
  const withUnknown = create(proto.ValidateAccessTokenResponseSchema, full);
  const unknown = [
    { no: 99, wireType: 0, data: new Uint8Array([0x96, 0x01]) },
    { no: 101, wireType: 2, data: new Uint8Array([0x03, 0x61, 0x62, 0x63]) },
  ];
  withUnknown.session.$unknown = unknown;
  withUnknown.session.client.$unknown = unknown;
  withUnknown.session.createdAt.$unknown = unknown;
  const bytes = toBinary(proto.ValidateAccessTokenResponseSchema, withUnknown);
  assert.ok(bytes.length > answerBytes(full).length, "the unknown fields were written");
  assert.deepEqual(sessionFromAnswer(bytes), expected);
});

test("a truncated answer is INTERNAL, never a shorter session", () => {
  const bytes = answerBytes(full);
  for (const cut of [1, 5, 40, bytes.length - 1]) {
    assert.throws(
      () => sessionFromAnswer(bytes.subarray(0, cut)),
      (error) => error instanceof ConnectError && error.code === Code.Internal,
      `cut at ${cut}`,
    );
  }
});

test("the fields wire.ts reads are the proto's: a change to these messages fails here", () => {
  const fields = (schema) =>
    schema.fields.map((f) => `${f.number} ${f.name} ${f.fieldKind}:${f.scalar ?? f.message?.typeName ?? f.listKind}`);
  assert.deepEqual(fields(proto.ValidateAccessTokenResponseSchema), ["1 valid scalar:8", "2 session message:barazo.session.v1.Session"]);
  assert.deepEqual(fields(proto.SessionSchema), [
    "1 did scalar:9",
    "2 handle scalar:9",
    "3 created_at message:google.protobuf.Timestamp",
    "4 access_token_expires_at message:google.protobuf.Timestamp",
    "5 session_key scalar:9",
    "6 refreshed_at message:google.protobuf.Timestamp",
    "7 expires_at message:google.protobuf.Timestamp",
    "8 client message:barazo.session.v1.ClientInfo",
  ]);
  assert.deepEqual(fields(proto.ClientInfoSchema), ["1 user_agent scalar:9", "2 ip_address scalar:9"]);
  assert.deepEqual(fields(proto.ValidateAccessTokensResponseSchema), [
    "1 results list:barazo.session.v1.ValidateAccessTokenResponse",
  ]);
  // The raw method is the real one with its answers left as bytes: same path, same request.
  const real = proto.SessionService.method.validateAccessTokens;
  assert.equal(validateAccessTokensRaw.name, real.name);
  assert.equal(validateAccessTokensRaw.parent.typeName, real.parent.typeName);
  assert.equal(validateAccessTokensRaw.input, real.input);
  const answers = create(proto.ValidateAccessTokensResponseSchema, { results: [full, { valid: false }, full] });
  const raw = fromBinary(validateAccessTokensRaw.output, toBinary(proto.ValidateAccessTokensResponseSchema, answers));
  assert.deepEqual(
    raw.results.map(sessionFromAnswer),
    answers.results.map((a) => (a.valid ? toSession(a.session) : undefined)),
  );
});
