// TLS, mTLS and service keys against the real server: certificates made here with openssl, a
// policy that names callers by certificate identity and by service-key digest.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { after, before, describe, test } from "node:test";
import { createSessionClient, SessionServiceError } from "../dist/index.js";
import { startServer, startValkey, tempDir, uniqueDid } from "./support.js";

const AUTH_ID = "spiffe://barazo.forum/appview-auth";
const PLUGINS_ID = "spiffe://barazo.forum/plugins";
const AUTH_KEY = "appview-auth-service-key-0123456789";
const PLUGIN_KEY = "plugin-service-key-0123456789";
const sha256 = (text) => createHash("sha256").update(text).digest("hex");

/** A CA, a server certificate for session.internal and client certificates, made with openssl. */
function makePki(dir) {
  const openssl = (...args) => execFileSync("openssl", args, { cwd: dir.path, stdio: ["ignore", "ignore", "pipe"] });
  const ca = (name) => {
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
      "-subj", `/CN=${name}`, "-keyout", `${name}.key`, "-out", `${name}.pem`,
      "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign");
  };
  const leaf = (name, issuer, san, usage) => {
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", `/CN=${name}`,
      "-keyout", `${name}.key`, "-out", `${name}.csr`);
    dir.write(`${name}.ext`, `subjectAltName=${san}\nextendedKeyUsage=${usage}\nbasicConstraints=CA:FALSE\n`);
    openssl("x509", "-req", "-in", `${name}.csr`, "-CA", `${issuer}.pem`, "-CAkey", `${issuer}.key`,
      "-CAcreateserial", "-days", "2", "-extfile", `${name}.ext`, "-out", `${name}.pem`);
  };
  ca("ca");
  ca("other-ca");
  leaf("server", "ca", "DNS:session.internal", "serverAuth");
  leaf("appview-auth", "ca", `URI:${AUTH_ID}`, "clientAuth");
  leaf("plugins", "ca", `URI:${PLUGINS_ID}`, "clientAuth");
  leaf("stranger", "other-ca", "URI:spiffe://elsewhere/stranger", "clientAuth");
  const read = (name) => readFileSync(`${dir.path}/${name}`);
  return {
    ca: read("ca.pem"),
    otherCa: read("other-ca.pem"),
    client: (name) => ({ cert: read(`${name}.pem`), key: read(`${name}.key`) }),
  };
}

const policy = `
[callers.appview-auth]
identities = ["${AUTH_ID}"]
keys_sha256 = ["${sha256(AUTH_KEY)}"]
allow = ["*"]

[callers.plugins]
identities = ["${PLUGINS_ID}"]
keys_sha256 = ["${sha256(PLUGIN_KEY)}"]
allow = ["ValidateAccessToken"]
`;

let dir;
let pki;
let valkey;
let mtls;
let keyed;

before(async () => {
  dir = tempDir();
  pki = makePki(dir);
  dir.write("policy.toml", policy);
  valkey = await startValkey();
  const common = ["--valkey-url", valkey.url, "--authz-policy", `${dir.path}/policy.toml`];
  mtls = await startServer({
    args: [...common, "--tls-cert", `${dir.path}/server.pem`, "--tls-key", `${dir.path}/server.key`,
      "--tls-client-ca", `${dir.path}/ca.pem`],
  });
  keyed = await startServer({ args: common });
});
after(async () => {
  await mtls?.kill();
  await keyed?.kill();
  await valkey?.kill();
  dir?.remove();
});

/** A client of the mTLS server; `tls` overrides its TLS settings. */
function mtlsClient(tls) {
  return createSessionClient({ address: mtls.addr, tls: { ca: pki.ca, serverName: "session.internal", ...tls } });
}

function refusedWith(code) {
  return (error) => {
    assert.ok(error instanceof SessionServiceError, `${error}`);
    assert.equal(error.code, code, `${error}`);
    return true;
  };
}

describe("mTLS", () => {
  test("a caller with its certificate does what the policy allows it", async (t) => {
    const auth = mtlsClient(pki.client("appview-auth"));
    t.after(() => auth.close());
    const created = await auth.createSession(uniqueDid(), "alice.test");
    assert.equal((await auth.validateAccessToken(created.accessToken))?.did, created.did);

    const plugins = mtlsClient(pki.client("plugins"));
    t.after(() => plugins.close());
    assert.equal((await plugins.validateAccessToken(created.accessToken))?.did, created.did);
    await assert.rejects(plugins.createSession(uniqueDid(), "alice.test"), refusedWith("permission_denied"));
    await assert.rejects(plugins.deleteSession(created.refreshToken), refusedWith("permission_denied"));
  });

  test("without a client certificate, or with one from another CA, nothing gets through", async (t) => {
    for (const tls of [{}, pki.client("stranger")]) {
      const client = mtlsClient(tls);
      t.after(() => client.close());
      // A TLS failure is a deployment error (500), not an outage: connect reports INTERNAL.
      await assert.rejects(client.validateAccessToken("0".repeat(64)), refusedWith("internal"));
    }
  });

  test("the server's certificate is checked: another CA or another name is refused", async (t) => {
    for (const tls of [{ ...pki.client("appview-auth"), ca: pki.otherCa }, { ...pki.client("appview-auth"), serverName: "elsewhere.internal" }]) {
      const client = mtlsClient(tls);
      t.after(() => client.close());
      await assert.rejects(client.createSession(uniqueDid(), "alice.test"), refusedWith("internal"));
    }
  });

  test("cert without key is a configuration error at once", () => {
    assert.throws(() => mtlsClient({ cert: pki.client("plugins").cert }), /cert and key go together/);
  });
});

describe("service keys", () => {
  test("the key is sent as authorization: Bearer and the policy applies to it", async (t) => {
    const auth = createSessionClient({ address: keyed.addr, serviceKey: AUTH_KEY });
    const plugin = createSessionClient({ address: keyed.addr, serviceKey: PLUGIN_KEY });
    t.after(() => {
      auth.close();
      plugin.close();
    });
    const created = await auth.createSession(uniqueDid(), "alice.test");
    assert.equal((await plugin.validateAccessToken(created.accessToken))?.did, created.did);
    await assert.rejects(plugin.refreshSession(created.refreshToken), refusedWith("permission_denied"));
    assert.equal(await auth.deleteSession(created.refreshToken), true);
  });

  test("no key or an unknown key is UNAUTHENTICATED", async (t) => {
    for (const serviceKey of [undefined, "not-a-known-key"]) {
      const client = createSessionClient({ address: keyed.addr, ...(serviceKey ? { serviceKey } : {}) });
      t.after(() => client.close());
      await assert.rejects(client.validateAccessToken("0".repeat(64)), refusedWith("unauthenticated"));
    }
  });
});
