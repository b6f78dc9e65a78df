// The test harness: a real valkey-server and the real barazo-session binary, each on an
// ephemeral port, started by the tests and killed when the test file ends.
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { connect, createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { randomBytes } from "node:crypto";

const repo = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");

/** The service binary: `$BARAZO_SESSION_BIN`, else the debug build scripts/test.sh makes. */
export const serverBinary = process.env.BARAZO_SESSION_BIN ?? join(repo, "target/debug/barazo-session");

/** Valkey: `$VALKEY_SERVER`, else scripts/tools.sh's .tools/bin, else PATH. */
const valkeyBinary =
  process.env.VALKEY_SERVER ??
  (existsSync(join(repo, ".tools/bin/valkey-server")) ? join(repo, ".tools/bin/valkey-server") : "valkey-server");

const children = new Set();
process.on("exit", () => {
  for (const child of children) child.kill("SIGKILL");
});

/** A port nobody listens on right now. */
export async function freePort() {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolvePort(port));
    });
  });
}

/** Resolves with the first line `match` accepts, rejects when the process exits first. */
function waitForLine(child, stream, match, what) {
  return new Promise((resolveLine, reject) => {
    const lines = [];
    const onExit = (code) => reject(new Error(`${what} exited (${code}) before it was ready:\n${lines.join("\n")}`));
    child.once("exit", onExit);
    createInterface({ input: stream }).on("line", (line) => {
      lines.push(line);
      const found = match(line);
      if (found !== undefined) {
        child.off("exit", onExit);
        resolveLine(found);
      }
    });
  });
}

function track(child) {
  children.add(child);
  child.once("exit", () => children.delete(child));
  return child;
}

/** Stops a process with `signal` and waits until it has exited. */
async function stop(child, signal) {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((done) => child.once("exit", done));
  child.kill(signal);
  await exited;
}

/** A valkey-server on an ephemeral port (or `port`), ready to accept connections; `args` are extra flags. */
export async function startValkey(port, args = []) {
  for (let tries = 0; ; tries++) {
    const chosen = port ?? (await freePort());
    const child = track(
      spawn(valkeyBinary, ["--port", String(chosen), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", ...args], {
        stdio: ["ignore", "pipe", "ignore"],
      }),
    );
    try {
      // Valkey logs this once it listens: the readiness signal, no polling.
      await waitForLine(child, child.stdout, (l) => (l.includes("Ready to accept connections") ? true : undefined), "valkey-server");
      return {
        port: chosen,
        url: `redis://127.0.0.1:${chosen}`,
        child,
        /** SIGKILL, as a crash. */
        kill: () => stop(child, "SIGKILL"),
        /** Freezes (STOP) or resumes (CONT) the process. */
        signal: (name) => child.kill(name),
      };
    } catch (error) {
      // Another process took the port between probing and binding: try another.
      if (port !== undefined || tries >= 4) throw error;
    }
  }
}

/** The server's environment: nothing of the test runner's own, so no stray setting applies. */
function serverEnv(env) {
  return { PATH: process.env.PATH ?? "/usr/bin:/bin", LOG_FORMAT: "json", RUST_LOG: "info", ...env };
}

/**
 * The real barazo-session on 127.0.0.1:0; resolves once its JSON "listening" line gives the
 * bound address. `args` are extra flags, `env` extra environment, `listen` another address.
 */
export async function startServer({ args = [], env = {}, listen = "127.0.0.1:0" } = {}) {
  const child = track(
    spawn(serverBinary, ["--listen", listen, ...args], {
      env: serverEnv(env),
      stdio: ["ignore", "ignore", "pipe"],
    }),
  );
  const logs = [];
  child.stderr.setEncoding("utf8");
  const listening = await waitForLine(
    child,
    child.stderr,
    (line) => {
      logs.push(line);
      try {
        const event = JSON.parse(line);
        return event.message === "listening" ? event : undefined;
      } catch {
        return undefined;
      }
    },
    "barazo-session",
  );
  return {
    addr: listening.addr,
    admin: listening.admin,
    child,
    logs,
    kill: () => stop(child, "SIGKILL"),
    terminate: () => stop(child, "SIGTERM"),
  };
}

/** A Valkey and a server using it. */
export async function startStack({ args = [], env = {} } = {}) {
  const valkey = await startValkey();
  const server = await startServer({ args: ["--valkey-url", valkey.url, ...args], env });
  return {
    valkey,
    server,
    // Whatever `valkey` and `server` hold by then (a test may have replaced one).
    async stop() {
      await this.server.kill();
      await this.valkey.kill();
    },
  };
}

/** A Valkey error reply (`-ERR …`), as a value inside a parsed reply. */
class RespError extends Error {}

/**
 * Parses the RESP2 reply starting at `at` in `buffer`: `{ value, end }`, or undefined while
 * the buffer does not hold all of it yet. Simple strings and bulk strings become strings,
 * integers numbers, nulls null, arrays arrays, error replies RespError values.
 */
function parseReply(buffer, at) {
  const eol = buffer.indexOf("\r\n", at);
  if (eol < 0) return undefined;
  const type = String.fromCharCode(buffer[at]);
  const line = buffer.toString("utf8", at + 1, eol);
  const next = eol + 2;
  switch (type) {
    case "+":
      return { value: line, end: next };
    case "-":
      return { value: new RespError(line), end: next };
    case ":":
      return { value: Number(line), end: next };
    case "$": {
      const length = Number(line);
      if (length < 0) return { value: null, end: next };
      if (buffer.length < next + length + 2) return undefined;
      return { value: buffer.toString("utf8", next, next + length), end: next + length + 2 };
    }
    case "*": {
      const count = Number(line);
      if (count < 0) return { value: null, end: next };
      const items = [];
      let end = next;
      for (let i = 0; i < count; i++) {
        const item = parseReply(buffer, end);
        if (item === undefined) return undefined;
        items.push(item.value);
        end = item.end;
      }
      return { value: items, end };
    }
    default:
      throw new Error(`unexpected RESP reply type ${JSON.stringify(type)}`);
  }
}

/**
 * A plain RESP2 connection to the Valkey on 127.0.0.1:`port` (the client has no Redis library
 * and there is no valkey-cli): `send(...args)` resolves with the reply, rejects with the
 * error reply (or when the connection fails); `close()` ends it. Replies come in order.
 */
export async function respConnect(port) {
  const socket = connect({ host: "127.0.0.1", port });
  await new Promise((resolveConnect, reject) => {
    socket.once("error", reject);
    socket.once("connect", () => {
      socket.off("error", reject);
      resolveConnect();
    });
  });
  const pending = [];
  let buffered = Buffer.alloc(0);
  const failAll = (error) => {
    for (const waiter of pending.splice(0)) waiter.reject(error);
  };
  socket.on("data", (chunk) => {
    buffered = buffered.length === 0 ? chunk : Buffer.concat([buffered, chunk]);
    for (;;) {
      let reply;
      try {
        reply = parseReply(buffered, 0);
      } catch (error) {
        failAll(error);
        socket.destroy();
        return;
      }
      if (reply === undefined) return;
      buffered = buffered.subarray(reply.end);
      const waiter = pending.shift();
      if (waiter === undefined) continue;
      if (reply.value instanceof RespError) {
        waiter.reject(new Error(`${waiter.command} on 127.0.0.1:${port}: ${reply.value.message}`));
      } else {
        waiter.resolve(reply.value);
      }
    }
  });
  socket.on("error", failAll);
  socket.on("close", () => failAll(new Error(`the connection to 127.0.0.1:${port} closed`)));
  return {
    send(...args) {
      return new Promise((resolveReply, reject) => {
        if (socket.destroyed) {
          reject(new Error(`the connection to 127.0.0.1:${port} is closed`));
          return;
        }
        pending.push({ resolve: resolveReply, reject, command: args.slice(0, 2).join(" ") });
        let frame = `*${args.length}\r\n`;
        for (const arg of args) {
          const text = String(arg);
          frame += `$${Buffer.byteLength(text)}\r\n${text}\r\n`;
        }
        socket.write(frame);
      });
    },
    close: () => socket.destroy(),
  };
}

/** Whether nothing listens on 127.0.0.1:`port` right now. */
function portIsFree(port) {
  return new Promise((resolveFree) => {
    const server = createServer();
    server.once("error", () => resolveFree(false));
    server.listen(port, "127.0.0.1", () => server.close(() => resolveFree(true)));
  });
}

/** A free port whose cluster-bus port (port + 10000) is free too. */
async function clusterPort() {
  for (;;) {
    const port = await freePort();
    if (port + 10_000 <= 65_535 && (await portIsFree(port + 10_000))) return port;
  }
}

/** The slots of the three primaries of `startCluster`, in node order. */
export const clusterSlots = [
  [0, 5460],
  [5461, 10922],
  [10923, 16383],
];

/**
 * A Valkey Cluster of three primaries on ephemeral ports (each with its bus port free),
 * slots assigned with `CLUSTER ADDSLOTSRANGE` (`clusterSlots`), joined with `CLUSTER MEET`;
 * resolves once every node's `CLUSTER INFO` says `cluster_state:ok` with all 16384 slots
 * served and all three nodes known (polled every 20 ms, rejecting after `timeoutMs`).
 * `urls` is the comma-separated seed list `--valkey-url` takes in cluster mode; `command(i,
 * ...args)` sends a raw command to node i; `ownerOf(key)` is the index of the node serving
 * the key's slot; `stop()` kills every node and removes their cluster config files.
 */
export async function startCluster({ timeoutMs = 20_000 } = {}) {
  const dir = tempDir();
  const nodes = [];
  const connections = [];
  const stopAll = async () => {
    for (const connection of connections) connection.close();
    await Promise.all(nodes.map((node) => node.kill()));
    dir.remove();
  };
  try {
    for (const slots of clusterSlots) {
      for (let tries = 0; ; tries++) {
        const port = await clusterPort();
        const flags = [
          "--cluster-enabled",
          "yes",
          "--cluster-config-file",
          join(dir.path, `nodes-${port}.conf`),
          "--cluster-node-timeout",
          "2000",
        ];
        try {
          nodes.push({ ...(await startValkey(port, flags)), slots });
          break;
        } catch (error) {
          // The port or its bus port was taken between probing and binding: try another.
          if (tries >= 4) throw error;
        }
      }
    }
    for (const node of nodes) connections.push(await respConnect(node.port));
    for (const [i, [from, to]] of clusterSlots.entries()) {
      await connections[i].send("CLUSTER", "ADDSLOTSRANGE", from, to);
    }
    for (const connection of connections.slice(1)) {
      await connection.send("CLUSTER", "MEET", "127.0.0.1", nodes[0].port);
    }
    // Readiness: every node sees the whole cluster serving (gossip takes about a second).
    const until = Date.now() + timeoutMs;
    for (;;) {
      const infos = await Promise.all(connections.map((connection) => connection.send("CLUSTER", "INFO")));
      const ready = (info) =>
        info.includes("cluster_state:ok\r\n") &&
        info.includes("cluster_slots_ok:16384\r\n") &&
        info.includes("cluster_known_nodes:3\r\n");
      if (infos.every(ready)) break;
      if (Date.now() > until) {
        const field = (info, name) => new RegExp(`${name}:(\\S+)`).exec(info)?.[1] ?? "?";
        const states = infos.map(
          (info, i) =>
            `127.0.0.1:${nodes[i].port}: ` +
            ["cluster_state", "cluster_slots_ok", "cluster_known_nodes"].map((name) => `${name}:${field(info, name)}`).join(" "),
        );
        throw new Error(`the Valkey Cluster did not form within ${timeoutMs} ms:\n${states.join("\n")}`);
      }
      await new Promise((resolveTick) => setTimeout(resolveTick, 20));
    }
  } catch (error) {
    await stopAll();
    throw error;
  }
  return {
    nodes,
    urls: nodes.map((node) => node.url).join(","),
    command: (index, ...args) => connections[index].send(...args),
    async ownerOf(key) {
      const slot = await connections[0].send("CLUSTER", "KEYSLOT", key);
      return clusterSlots.findIndex(([from, to]) => slot >= from && slot <= to);
    },
    stop: stopAll,
  };
}

/** A three-primary Valkey Cluster (`startCluster`) and a server using it in cluster mode. */
export async function startClusterStack({ args = [], env = {} } = {}) {
  const cluster = await startCluster();
  let server;
  try {
    server = await startServer({ args: ["--valkey-mode", "cluster", "--valkey-url", cluster.urls, ...args], env });
  } catch (error) {
    await cluster.stop();
    throw error;
  }
  return {
    cluster,
    server,
    async stop() {
      await this.server.kill();
      await this.cluster.stop();
    },
  };
}

/** A DID no other test uses. */
export function uniqueDid() {
  return `did:plc:${randomBytes(12).toString("hex")}`;
}

/** A temporary directory, removed by `remove()`. */
export function tempDir() {
  const path = mkdtempSync(join(tmpdir(), "barazo-session-client-test-"));
  return {
    path,
    write: (name, contents) => {
      const file = join(path, name);
      writeFileSync(file, contents);
      return file;
    },
    remove: () => rmSync(path, { recursive: true, force: true }),
  };
}

/** The server's /metrics text (start it with `--metrics-listen 127.0.0.1:0`). */
export async function metrics(server) {
  const response = await fetch(`http://${server.admin}/metrics`);
  return response.text();
}

/**
 * Resolves once the server's /readyz says `ready` (true: 200, the store answers its health
 * probe; false: 503), polling every 20 ms for at most 15 s. Needs `--metrics-listen`.
 */
export async function readiness(server, ready) {
  const until = Date.now() + 15_000;
  for (;;) {
    const status = (await fetch(`http://${server.admin}/readyz`)).status;
    if ((status === 200) === ready) return;
    if (Date.now() > until) throw new Error(`/readyz still ${status} after 15 s`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** The value of one metric sample in Prometheus text, e.g. `name{a="b"}`; 0 when absent. */
export function sample(text, name, labels = {}) {
  for (const line of text.split("\n")) {
    if (line.startsWith(`${name} `) && Object.keys(labels).length === 0) {
      return Number(line.slice(name.length + 1));
    }
    if (!line.startsWith(`${name}{`)) continue;
    const body = line.slice(name.length + 1, line.indexOf("}"));
    if (Object.entries(labels).every(([k, v]) => body.includes(`${k}="${v}"`))) {
      return Number(line.slice(line.lastIndexOf(" ") + 1));
    }
  }
  return 0;
}

/**
 * Events as they come (a validation cache's `onEvent`, a stream's messages), and a promise for
 * the next one `match` accepts (the readiness signal).
 */
export function events() {
  const seen = [];
  const waiters = [];
  const push = (event) => {
    seen.push(event);
    for (const waiter of [...waiters]) {
      if (waiter.match(event)) {
        waiters.splice(waiters.indexOf(waiter), 1);
        waiter.resolve(event);
      }
    }
  };
  const next = (match) => new Promise((resolve) => waiters.push({ match, resolve }));
  return {
    seen,
    push,
    /** `push`, as a validation cache's `onEvent` option (needs no `this`). */
    onEvent: push,
    next,
    /** The first event seen so far that `match` accepts, else the next one. */
    some(match) {
      const found = seen.find(match);
      return found === undefined ? next(match) : Promise.resolve(found);
    },
  };
}
