#!/usr/bin/env python3
"""Measures how much Valkey memory a session takes, through the real service.

Starts a throw-away valkey-server (no persistence) and barazo-session on loopback ports,
creates sessions with CreateSession over gRPC (grpcurl), and reads Valkey's own
accounting: INFO memory's used_memory before and after, MEMORY USAGE of one key of each
kind, and the size of an RDB snapshot. The figures are in deploy/README.md ("Valkey
sizing and durability"); run this again when the key layout or Valkey changes.

    scripts/test.sh --no-run            # once: puts valkey-server and grpcurl in .tools/
    cargo build --bin barazo-session
    scripts/valkey-sizing.py [--sessions 10000] [--extra-per-did 2000]
    scripts/valkey-sizing.py --valkey-server PATH   # another build, e.g. a redis-server
    scripts/valkey-sizing.py --tabs 3 --tab-sessions 2000   # extra tabs (RefreshSession)
    scripts/valkey-sizing.py --rotation              # with --refresh-token-rotation on
    scripts/valkey-sizing.py --revoke 2000           # then revoke that many (takedowns): what
                                                     # is remembered of each (ended: keys)

It takes about three minutes on two cores (each session is one grpcurl process).

DIDs and handles have production lengths: did:plc: plus 24 base32 characters, handles
of two or three labels such as "name1234.bsky.social". Nothing leaves 127.0.0.1.
"""

import argparse
import concurrent.futures
import json
import os
import pathlib
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading

from resp import Resp

ROOT = pathlib.Path(__file__).resolve().parent.parent
PREFIX = "barazo:session:"


def tool(name):
    """A program from PATH or the .tools/bin that scripts/test.sh fills."""
    found = shutil.which(name) or shutil.which(name, path=str(ROOT / ".tools/bin"))
    if not found:
        sys.exit(f"{name} not found: run scripts/test.sh --no-run first")
    return found


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_lines(stream, *needles):
    """Reads a process's output until it has printed a line containing each needle, in
    order, and returns those lines (the process says when it is ready: no sleeps)."""
    found = []
    for line in stream:
        if needles[len(found)] in line:
            found.append(line)
            if len(found) == len(needles):
                # Keep reading in the background, so a full pipe never blocks the process.
                threading.Thread(target=stream.read, daemon=True).start()
                return found
    sys.exit(f"process exited before printing {needles[len(found)]!r}")


def random_did(rng):
    return "did:plc:" + "".join(rng.choice("abcdefghijklmnopqrstuvwxyz234567") for _ in range(24))


def random_handle(rng, i):
    return rng.choice([f"user{i}.bsky.social", f"name{i}.example.com", f"forum{i}.barazo.forum"])


def call(grpcurl, addr, method, request):
    answer = subprocess.run(
        [grpcurl, "-plaintext", "-d", json.dumps(request), addr,
         f"barazo.session.v1.SessionService/{method}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if answer.returncode != 0:
        raise RuntimeError(f"{method} failed: {answer.stderr.strip()}")
    return json.loads(answer.stdout)


def create(grpcurl, addr, did, handle):
    """Creates a session; returns its refresh token."""
    return call(grpcurl, addr, "CreateSession", {"did": did, "handle": handle})["refreshToken"]


def create_all(grpcurl, addr, pairs, workers):
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return [future.result()
                for future in [pool.submit(create, grpcurl, addr, did, handle)
                               for did, handle in pairs]]


def open_tabs(grpcurl, addr, refresh_token, tabs):
    """`tabs` more browser tabs: each refreshes without a previous access token, so each
    adds one access token to the session (the cookie each answer gives is the next one's)."""
    for _ in range(tabs):
        answer = call(grpcurl, addr, "RefreshSession", {"refresh_token": refresh_token})
        refresh_token = answer.get("refreshToken") or refresh_token


def used_memory(valkey):
    return int(valkey.info("memory")["used_memory"])


def first_key(valkey, pattern):
    cursor = "0"
    while True:
        cursor, keys = valkey.call("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
        if keys:
            return keys[0]
        if cursor == "0":
            sys.exit(f"no key matches {pattern}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=10000, help="sessions of distinct DIDs")
    parser.add_argument("--extra-per-did", type=int, default=2000,
                        help="then a second session for this many of those DIDs")
    parser.add_argument("--tabs", type=int, default=0,
                        help="then this many more tabs (refreshes) on --tab-sessions sessions")
    parser.add_argument("--tab-sessions", type=int, default=2000,
                        help="how many sessions open the extra --tabs")
    parser.add_argument("--rotation", action="store_true",
                        help="run the service with --refresh-token-rotation on")
    parser.add_argument("--revoke", type=int, default=0,
                        help="then revoke this many single-session DIDs (DeleteAllSessionsForDid, "
                             "ACCOUNT_TAKENDOWN): the ended: keys that remember why")
    parser.add_argument("--workers", type=int, default=4, help="concurrent grpcurl calls")
    parser.add_argument("--server", default=str(ROOT / "target/debug/barazo-session"))
    parser.add_argument("--valkey-server", default=None,
                        help="another valkey-server or redis-server (default: PATH, .tools/bin)")
    args = parser.parse_args()

    grpcurl = tool("grpcurl")
    rng = random.Random(20261201)
    work = tempfile.mkdtemp(prefix="valkey-sizing-")
    processes = []
    try:
        port = free_port()
        valkey_process = subprocess.Popen(
            [args.valkey_server or tool("valkey-server"), "--port", str(port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", work, "--maxmemory-policy", "noeviction"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        processes.append(valkey_process)
        wait_for_lines(valkey_process.stdout, "Ready to accept connections")
        valkey = Resp(port)

        env = dict(os.environ, LOG_FORMAT="json", RUST_LOG="info")
        server = subprocess.Popen(
            [args.server, "--store", "valkey", "--valkey-url", f"redis://127.0.0.1:{port}",
             "--listen", "127.0.0.1:0"]
            + (["--refresh-token-rotation", "on"] if args.rotation else []),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        processes.append(server)
        # The log says where it listens (port 0 picks a free one) and when Valkey answers.
        listening, _ = wait_for_lines(server.stderr, '"listening"', "answers: SERVING")
        addr = json.loads(listening)["addr"]

        # Warm-up: the first call loads the scripts into Valkey's script cache; that memory
        # is paid once per Valkey, not per session, so it stays out of the baseline.
        create_all(grpcurl, addr, [(random_did(rng), "warmup.bsky.social") for _ in range(20)], 1)
        before = used_memory(valkey)
        keys_before = valkey.call("DBSIZE")

        dids = [random_did(rng) for _ in range(args.sessions)]
        cookies = create_all(grpcurl, addr,
                             [(did, random_handle(rng, i)) for i, did in enumerate(dids)],
                             args.workers)
        after = used_memory(valkey)
        keys_after = valkey.call("DBSIZE")
        # data, access, did; and refresh:<family> with rotation.
        keys_per_session = 4 if args.rotation else 3
        assert keys_after - keys_before == keys_per_session * args.sessions, (keys_before, keys_after)
        per_session = (after - before) / args.sessions

        create_all(grpcurl, addr,
                   [(did, random_handle(rng, i)) for i, did in enumerate(dids[:args.extra_per_did])],
                   args.workers)
        again = used_memory(valkey)
        keys_again = valkey.call("DBSIZE")
        assert keys_again - keys_after == (keys_per_session - 1) * args.extra_per_did
        per_extra = (again - after) / args.extra_per_did if args.extra_per_did else 0.0

        tab_sessions = min(args.tab_sessions, args.sessions) if args.tabs else 0
        with concurrent.futures.ThreadPoolExecutor(args.workers) as pool:
            for future in [pool.submit(open_tabs, grpcurl, addr, cookie, args.tabs)
                           for cookie in cookies[:tab_sessions]]:
                future.result()
        tabbed = used_memory(valkey)
        if tab_sessions:
            # One access key per tab (within --max-access-tokens-per-session).
            assert valkey.call("DBSIZE") - keys_again == args.tabs * tab_sessions
        per_tab = (tabbed - again) / (args.tabs * tab_sessions) if tab_sessions else 0.0

        # Revocations: each session's keys go, and why it ended stays (one ended: key, two
        # with rotation: by the sid's SHA-1 and by the family), for as long as its data had.
        revoked = dids[args.extra_per_did:args.extra_per_did + args.revoke]
        keys_before_revoke = valkey.call("DBSIZE")
        before_revoke = used_memory(valkey)
        with concurrent.futures.ThreadPoolExecutor(args.workers) as pool:
            for future in [pool.submit(call, grpcurl, addr, "DeleteAllSessionsForDid",
                                       {"did": did, "reason": "ACCOUNT_TAKENDOWN"})
                           for did in revoked]:
                assert future.result().get("deletedCount") == 1
        after_revoke = used_memory(valkey)
        if revoked:
            ended_per_session = 2 if args.rotation else 1
            assert (keys_before_revoke - valkey.call("DBSIZE")
                    == (keys_per_session - ended_per_session) * len(revoked))

        usage = {}
        for kind in ("data", "access", "did") + (("refresh",) if args.rotation else ()) + (
                ("ended",) if revoked else ()):
            key = first_key(valkey, f"{PREFIX}{kind}:*")
            usage[kind] = (valkey.call("MEMORY", "USAGE", key, "SAMPLES", "0"), len(key))
        multi_did = f"{PREFIX}did:{dids[0]}"
        usage["did (2 sessions)"] = (valkey.call("MEMORY", "USAGE", multi_did, "SAMPLES", "0"),
                                     len(multi_did))

        valkey.call("SAVE")
        rdb = pathlib.Path(work, "dump.rdb").stat().st_size
        total_sessions = args.sessions + args.extra_per_did + 20
        server_info = valkey.info("server")
        memory_info = valkey.info("memory")

        version = (f"valkey {server_info['valkey_version']}" if "valkey_version" in server_info
                   else f"redis {server_info.get('redis_version')}")
        print(f"{version}, allocator {memory_info.get('mem_allocator')}")
        print(f"sessions of distinct DIDs: {args.sessions}: used_memory {before} -> {after} bytes, "
              f"{per_session:.0f} bytes per session ({keys_per_session} keys each)")
        if args.rotation:
            print("with --refresh-token-rotation on (a refresh: key per session)")
        print(f"a second session on {args.extra_per_did} of those DIDs: "
              f"{per_extra:.0f} bytes per extra session ({keys_per_session - 1} keys + one set member)")
        if tab_sessions:
            print(f"{args.tabs} more tabs on {tab_sessions} sessions: {per_tab:.0f} bytes per extra tab "
                  f"(an access key and an accessTokens entry in the data)")
        if revoked:
            print(f"{len(revoked)} sessions revoked (takedowns): used_memory {before_revoke} -> "
                  f"{after_revoke} bytes, {(after_revoke - before_revoke) / len(revoked):.0f} bytes "
                  f"per revoked session (its keys gone, why it ended remembered)")
        for kind, (size, key_length) in usage.items():
            print(f"MEMORY USAGE {kind} key ({key_length}-byte name): {size} bytes")
        print(f"RDB snapshot: {rdb} bytes for {total_sessions} sessions, "
              f"{rdb / total_sessions:.0f} bytes per session")
    finally:
        for process in reversed(processes):
            process.terminate()
            process.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
