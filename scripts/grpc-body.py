#!/usr/bin/env python3
"""Writes the body of one gRPC validation request, for h2load's `-d` (BENCHMARKS.md).

h2load sends the same bytes with every request, so the body is made once: the 5-byte gRPC
frame header (not compressed, big-endian length) and the protobuf message, encoded here by
hand (both messages are one repeated or single string field, so no protobuf library is
needed).

    scripts/grpc-body.py TOKEN > validate.bin
        ValidateAccessTokenRequest { access_token = TOKEN }
    scripts/grpc-body.py --batch 64 TOKEN [TOKEN ...] > validate64.bin
        ValidateAccessTokensRequest with 64 tokens: the ones given, in order, repeated
        from the first until there are 64 (the service allows duplicates)
    Tokens may also come on stdin, one per line (TOKEN given as -).
"""

import argparse
import struct
import sys


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def string_field(number: int, value: str) -> bytes:
    """A length-delimited field (wire type 2)."""
    data = value.encode()
    return varint(number << 3 | 2) + varint(len(data)) + data


def frame(message: bytes) -> bytes:
    """gRPC's length-prefixed message: flag 0 (not compressed), then the length."""
    return struct.pack(">BI", 0, len(message)) + message


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, metavar="N",
                        help="a ValidateAccessTokens request of N tokens (at most 1000)")
    parser.add_argument("tokens", nargs="+", metavar="TOKEN", help="access tokens; - reads stdin")
    args = parser.parse_args()
    tokens = []
    for token in args.tokens:
        if token == "-":
            tokens.extend(line.strip() for line in sys.stdin if line.strip())
        else:
            tokens.append(token)
    if not tokens:
        parser.error("no token given")
    if args.batch is None:
        # ValidateAccessTokenRequest: access_token = 1.
        message = string_field(1, tokens[0])
    else:
        if not 1 <= args.batch <= 1000:
            parser.error("--batch takes 1 to 1000 tokens (the service's limit)")
        # ValidateAccessTokensRequest: repeated access_tokens = 1.
        message = b"".join(string_field(1, tokens[i % len(tokens)]) for i in range(args.batch))
    sys.stdout.buffer.write(frame(message))
    return 0


if __name__ == "__main__":
    sys.exit(main())
