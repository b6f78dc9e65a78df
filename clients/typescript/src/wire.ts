// ValidateAccessTokens's answers read straight into `Session`s. protobuf-es decodes by
// reflection and builds seven messages per answer (the answer, its session, four timestamps
// with bigint seconds, the client info): at 64 tokens a call that was as much CPU per
// validation as the whole call's transport (BENCHMARKS.md, issue 20). Here connect decodes
// the outer message only, with each answer left as its bytes (`repeated bytes` has the
// same wire form as a repeated message), and `sessionFromAnswer` reads the few fields a
// `Session` needs. Fields it does not know are skipped, as protobuf requires;
// test/wire.test.js checks it against protobuf-es and the generated schema.
import { create, createFileRegistry, type DescMessage, type DescMethodUnary, type Message } from "@bufbuild/protobuf";
import type { GenMessage } from "@bufbuild/protobuf/codegenv2";
import {
  FieldDescriptorProto_Label,
  FieldDescriptorProto_Type,
  FileDescriptorProtoSchema,
} from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import type { Session } from "./convert.js";
import { SessionService, type ValidateAccessTokensRequest } from "./gen/barazo/session/v1/session_pb.js";

/** ValidateAccessTokensResponse with each answer undecoded. */
export type RawAnswers = Message<"barazo.session.v1.ValidateAccessTokensRawResponse"> & { results: Uint8Array[] };

const rawAnswersSchema = createFileRegistry(
  create(FileDescriptorProtoSchema, {
    name: "barazo/session/v1/validate_access_tokens_raw.proto",
    package: "barazo.session.v1",
    syntax: "proto3",
    messageType: [
      {
        name: "ValidateAccessTokensRawResponse",
        field: [
          {
            name: "results",
            jsonName: "results",
            number: 1,
            type: FieldDescriptorProto_Type.BYTES,
            label: FieldDescriptorProto_Label.REPEATED,
          },
        ],
      },
    ],
  }),
  () => undefined,
).getMessage("barazo.session.v1.ValidateAccessTokensRawResponse") as DescMessage;

/** The ValidateAccessTokens method, answering with undecoded answers (same path, same wire). */
export const validateAccessTokensRaw = {
  ...SessionService.method.validateAccessTokens,
  output: rawAnswersSchema,
} as unknown as DescMethodUnary<GenMessage<ValidateAccessTokensRequest>, GenMessage<RawAnswers>>;

/** A reader over one answer's bytes. */
class Reader {
  pos = 0;
  constructor(
    readonly buf: Buffer,
    readonly end: number,
  ) {}

  /** A varint as a Number (exact up to 2^53: lengths, bools, seconds and nanos here). */
  varint(): number {
    let value = 0;
    let scale = 1;
    for (;;) {
      if (this.pos >= this.end) throw truncated();
      const byte = this.buf[this.pos++]!;
      value += (byte & 0x7f) * scale;
      if (byte < 0x80) return value;
      scale *= 128;
    }
  }

  /** The end of a length-delimited field starting here. */
  delimited(): number {
    const length = this.varint();
    const end = this.pos + length;
    if (end > this.end) throw truncated();
    return end;
  }

  string(): string {
    const end = this.delimited();
    const text = this.buf.toString("utf8", this.pos, end);
    this.pos = end;
    return text;
  }

  /** Skips a field of `wireType` this reader does not use. */
  skip(wireType: number): void {
    switch (wireType) {
      case 0:
        this.varint();
        return;
      case 1:
        this.pos += 8;
        break;
      case 2:
        this.pos = this.delimited();
        return;
      case 5:
        this.pos += 4;
        break;
      default:
        throw new ConnectError(`the session service's answer has wire type ${wireType}`, Code.Internal);
    }
    if (this.pos > this.end) throw truncated();
  }

  /** A google.protobuf.Timestamp as epoch milliseconds, as protobuf-es's `timestampMs`. */
  timestampMs(): number {
    const end = this.delimited();
    let seconds = 0;
    let nanos = 0;
    while (this.pos < end) {
      const tag = this.varint();
      if (tag === 0x08) seconds = this.varint();
      else if (tag === 0x10) nanos = this.varint();
      else this.skip(tag & 7);
    }
    return seconds * 1000 + Math.round(nanos / 1_000_000);
  }
}

function truncated(): ConnectError {
  return new ConnectError("the session service's answer is truncated", Code.Internal);
}

/** A Session message (the reader at its length prefix). */
function readSession(r: Reader): Session {
  const end = r.delimited();
  const outer = r.end;
  const session: Session = {
    did: "",
    handle: "",
    createdAt: 0,
    accessTokenExpiresAt: 0,
    sessionKey: "",
    refreshedAt: 0,
    expiresAt: 0,
    client: { userAgent: "", ipAddress: "" },
  };
  while (r.pos < end) {
    const tag = r.varint();
    switch (tag) {
      case 0x0a:
        session.did = r.string();
        break;
      case 0x12:
        session.handle = r.string();
        break;
      case 0x1a:
        session.createdAt = r.timestampMs();
        break;
      case 0x22:
        session.accessTokenExpiresAt = r.timestampMs();
        break;
      case 0x2a:
        session.sessionKey = r.string();
        break;
      case 0x32:
        session.refreshedAt = r.timestampMs();
        break;
      case 0x3a:
        session.expiresAt = r.timestampMs();
        break;
      case 0x42: {
        const clientEnd = r.delimited();
        while (r.pos < clientEnd) {
          const field = r.varint();
          if (field === 0x0a) session.client.userAgent = r.string();
          else if (field === 0x12) session.client.ipAddress = r.string();
          else r.skip(field & 7);
        }
        break;
      }
      default:
        r.skip(tag & 7);
    }
  }
  if (r.pos !== end || end > outer) throw truncated();
  return session;
}

/**
 * One ValidateAccessTokenResponse's bytes: its session when `valid`, else undefined. Like
 * `toSession`, a valid answer without a session is a broken service (INTERNAL).
 */
export function sessionFromAnswer(bytes: Uint8Array): Session | undefined {
  const r = new Reader(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength), bytes.byteLength);
  let valid = false;
  let session: Session | undefined;
  while (r.pos < r.end) {
    const tag = r.varint();
    if (tag === 0x08) valid = r.varint() !== 0;
    else if (tag === 0x12) session = readSession(r);
    else r.skip(tag & 7);
  }
  if (!valid) return undefined;
  if (session === undefined) {
    throw new ConnectError("the session service answered without a session", Code.Internal);
  }
  return session;
}
