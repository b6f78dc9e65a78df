#!/usr/bin/env python3
"""A throwaway Valkey Cluster for benchmarks and trials (no valkey-cli needed).

    scripts/valkey-cluster.py [--primaries 3] [--replicas 0]

Starts `valkey-server` (from PATH; scripts/tools.sh puts one in .tools/bin) nodes on free
ports with no persistence, assigns the slots evenly to the primaries (CLUSTER
ADDSLOTSRANGE), joins them (CLUSTER MEET), attaches replicas (CLUSTER REPLICATE), waits
until every node reports cluster_state:ok, then prints one line

    seeds redis://127.0.0.1:P1,redis://127.0.0.1:P2,...

and runs until interrupted (SIGINT/SIGTERM), when it stops the nodes and removes their
files.
"""

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from resp import command


def free_port():
    """A port whose cluster-bus port (port + 10000) is free too."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port >= 55000:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def wait_until(what, check, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, RuntimeError):
            pass
        time.sleep(0.05)
    sys.exit(f"valkey-cluster: timed out waiting for {what}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--primaries", type=int, default=3)
    parser.add_argument("--replicas", type=int, default=0, help="replicas per primary")
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="valkey-cluster-")
    nodes = []

    def stop(*_):
        for node in nodes:
            node.terminate()
        for node in nodes:
            node.wait()
        shutil.rmtree(work, ignore_errors=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    ports = []
    for _ in range(args.primaries * (1 + args.replicas)):
        port = free_port()
        nodes.append(
            subprocess.Popen(
                [
                    "valkey-server", "--port", str(port), "--bind", "127.0.0.1",
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", os.path.join(work, f"nodes-{port}.conf"),
                    "--cluster-node-timeout", "2000",
                    "--save", "", "--appendonly", "no", "--dir", work,
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        ports.append(port)
    for port in ports:
        wait_until(f"node {port}", lambda p=port: command(p, "PING") == "PONG")

    primaries = ports[: args.primaries]
    per = 16384 // args.primaries
    for i, port in enumerate(primaries):
        first = i * per
        last = 16383 if i == args.primaries - 1 else first + per - 1
        command(port, "CLUSTER", "ADDSLOTSRANGE", first, last)
    for port in ports[1:]:
        command(port, "CLUSTER", "MEET", "127.0.0.1", ports[0])
    wait_until(
        "every node to know every other",
        lambda: all(
            len(command(p, "CLUSTER", "NODES").strip().splitlines()) == len(ports)
            for p in ports
        ),
    )
    replicas = ports[args.primaries :]
    for i, port in enumerate(replicas):
        primary = primaries[i % args.primaries]
        primary_id = command(primary, "CLUSTER", "MYID")
        wait_until(
            f"{port} to know {primary}",
            lambda p=port, pid=primary_id: pid in command(p, "CLUSTER", "NODES"),
        )
        command(port, "CLUSTER", "REPLICATE", primary_id)
    wait_until(
        "cluster_state:ok on every node",
        lambda: all("cluster_state:ok" in command(p, "CLUSTER", "INFO") for p in ports),
    )
    for port in replicas:
        wait_until(
            f"replica {port} in sync",
            lambda p=port: "master_link_status:up" in command(p, "INFO", "replication"),
        )
    print("seeds " + ",".join(f"redis://127.0.0.1:{p}" for p in ports), flush=True)
    signal.pause()


if __name__ == "__main__":
    main()
