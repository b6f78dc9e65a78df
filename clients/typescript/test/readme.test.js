// The repository README's "Calling from TypeScript" block, run as written: pack the package,
// install the tarball in a fresh Node project, make calls against a running server.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { cpSync, mkdirSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { startServer, tempDir } from "./support.js";

const repo = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");

/** The first ```sh block of the README's `## <title>` section. */
function shBlock(title) {
  const readme = readFileSync(join(repo, "README.md"), "utf8");
  const start = readme.indexOf(`\n## ${title}\n`);
  assert.ok(start >= 0, `README.md has "## ${title}"`);
  const section = readme.slice(start + 1, readme.indexOf("\n## ", start + 1));
  const block = /```sh\n([\s\S]*?)\n```/.exec(section);
  assert.ok(block, `a sh block in "## ${title}"`);
  return block[1];
}

test("README: Calling from TypeScript works in a fresh Node project", async (t) => {
  const script = shBlock("Calling from TypeScript");
  const dir = tempDir();
  t.after(() => dir.remove());
  // A copy of the package as a checkout has it (no node_modules, dist or tarball), so the
  // block's `npm ci` and `npm pack` do not disturb the suite running from this directory.
  const checkout = join(dir.path, "repo");
  mkdirSync(join(checkout, "clients"), { recursive: true });
  cpSync(join(repo, "clients/typescript"), join(checkout, "clients/typescript"), {
    recursive: true,
    filter: (source) => !/\/(node_modules|dist)$|\.tgz$/.test(source),
  });
  const server = await startServer({ args: ["--store", "memory"] });
  t.after(() => server.kill());

  const { stdout } = await promisify(execFile)("bash", ["-euo", "pipefail", "-c", script], {
    cwd: checkout,
    env: {
      ...process.env,
      SESSION_ADDR: server.addr,
      // mktemp -d inside the test's directory, removed with it.
      TMPDIR: dir.path,
      // Packages already in the npm cache (the suite's own `npm ci` put them there) are used
      // as they are; the lockfile's integrity hashes are checked either way.
      npm_config_prefer_offline: "true",
      npm_config_audit: "false",
      npm_config_fund: "false",
      npm_config_update_notifier: "false",
    },
    maxBuffer: 16 * 1024 * 1024,
  });
  assert.match(stdout, /^valid: did:plc:z72i7hdynmk6r22z27h6tvur key: [0-9a-f]{8}$/m);
  assert.match(stdout, /^after logout: true undefined$/m);
});
