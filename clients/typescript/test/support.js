// The test harness: a real valkey-server and the real barazo-session binary, each on an
// ephemeral port, started by the tests and killed when the test file ends.
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
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

/** A valkey-server on an ephemeral port, ready to accept connections. */
export async function startValkey(port) {
  for (let tries = 0; ; tries++) {
    const chosen = port ?? (await freePort());
    const child = track(
      spawn(valkeyBinary, ["--port", String(chosen), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], {
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
