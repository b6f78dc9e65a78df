//! The deployment files in `deploy/` against the configuration reference's table
//! (docs/configuration.md, "Settings"): every
//! environment variable they set is documented there (spelled exactly as there), every
//! value parses as the service's own configuration, and the Kubernetes files agree with
//! each other (Secret files, probe ports, grace period). The YAML is read by `yaml.rs`.

use crate::yaml::{block, blocks, child_block, children, indent, key_value, values_of};
use barazo_session::authz::Policy;
use barazo_session::config::Config;
use clap::Parser;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;

fn repo_file(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The variables of the configuration reference's table (docs/configuration.md).
struct Documented {
    /// Exact names, e.g. `LISTEN_ADDR`.
    names: BTreeSet<String>,
    /// Families written with a `*`, e.g. `OTEL_BSP_` for `OTEL_BSP_*`.
    prefixes: Vec<String>,
    /// The flag of each variable that has one, e.g. `LISTEN_ADDR` → `--listen`.
    flags: BTreeMap<String, String>,
}

/// The words between backticks in a table cell.
fn backticked(cell: &str) -> impl Iterator<Item = &str> {
    cell.split('`').skip(1).step_by(2)
}

fn is_variable_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_uppercase())
        && name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

impl Documented {
    fn from_reference(reference: &str) -> Self {
        let section = reference
            .split_once("\n## Settings\n")
            .expect("docs/configuration.md has a \"## Settings\" section")
            .1;
        let rows: Vec<&str> = section
            .lines()
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .collect();
        let header: Vec<&str> = rows[0].split('|').map(str::trim).collect();
        assert_eq!(
            header.get(1..3),
            Some(&["flag", "environment"][..]),
            "the configuration table's first columns are flag and environment: {}",
            rows[0]
        );
        let mut documented = Self {
            names: BTreeSet::new(),
            prefixes: Vec::new(),
            flags: BTreeMap::new(),
        };
        // rows[1] is the |---| separator.
        for row in &rows[2..] {
            let cells: Vec<&str> = row.split('|').collect();
            assert!(
                cells.len() >= 4,
                "a row without flag and environment: {row}"
            );
            let flags: Vec<&str> = backticked(cells[1])
                .filter(|f| f.starts_with("--"))
                .collect();
            let mut names = Vec::new();
            for word in backticked(cells[2]) {
                if let Some(prefix) = word.strip_suffix('*') {
                    assert!(
                        is_variable_name(prefix),
                        "not a variable family: {word} in {row}"
                    );
                    documented.prefixes.push(prefix.to_owned());
                } else {
                    assert!(is_variable_name(word), "not a variable: {word} in {row}");
                    names.push(word.to_owned());
                }
            }
            assert!(!names.is_empty(), "a row without a variable: {row}");
            // "— " rows are standard variables without a flag; otherwise flags and
            // variables pair up in order (`--tls-cert`, `--tls-key` / `TLS_CERT`, `TLS_KEY`).
            if !flags.is_empty() {
                assert_eq!(
                    flags.len(),
                    names.len(),
                    "flags and variables do not pair up: {row}"
                );
                for (flag, name) in flags.iter().zip(&names) {
                    documented.flags.insert(name.clone(), (*flag).to_owned());
                }
            }
            documented.names.extend(names);
        }
        documented
    }

    fn load() -> Self {
        Self::from_reference(&repo_file(crate::readme::CONFIGURATION))
    }

    fn contains(&self, name: &str) -> bool {
        self.names.contains(name) || self.prefixes.iter().any(|p| name.starts_with(p.as_str()))
    }

    /// Asserts that every name is documented, naming the file and the strays.
    fn assert_all_documented<'a>(&self, file: &str, names: impl IntoIterator<Item = &'a str>) {
        let undocumented: Vec<&str> = names.into_iter().filter(|n| !self.contains(n)).collect();
        assert!(
            undocumented.is_empty(),
            "{file} sets {undocumented:?}, which docs/configuration.md's table does not \
             document (spelling and case must match): document them or remove them"
        );
    }

    /// The service's configuration from these variables, parsed the way the binary does
    /// (as flags, so the test does not depend on the process environment); the checks
    /// that need the files to exist (`validated`) are left out.
    fn parse_config(&self, file: &str, env: &[(String, String)]) -> Config {
        let mut argv = vec!["barazo-session".to_owned()];
        for (name, value) in env {
            if let Some(flag) = self.flags.get(name) {
                argv.push(format!("{flag}={value}"));
            }
        }
        Config::try_parse_from(&argv)
            .unwrap_or_else(|e| panic!("{file}: the service refuses {argv:?}:\n{e}"))
    }
}

const BASE_CONFIGMAP: &str = "deploy/kubernetes/base/configmap.yaml";
const BASE_DEPLOYMENT: &str = "deploy/kubernetes/base/deployment.yaml";
const TLS_PATCH: &str = "deploy/kubernetes/overlays/tls/deployment-tls.yaml";
const VALKEY_COMPONENT: &str = "deploy/kubernetes/components/valkey";

/// A ConfigMap's `data:` entries.
fn configmap_data(file: &str) -> Vec<(String, String)> {
    let text = repo_file(file);
    let lines: Vec<&str> = text.lines().collect();
    let data = children(&block(&lines, "data"));
    assert!(!data.is_empty(), "{file} has no data");
    data.into_iter().map(key_value).collect()
}

/// The base ConfigMap's `data:` entries (the pod's envFrom).
fn configmap_env() -> Vec<(String, String)> {
    configmap_data(BASE_CONFIGMAP)
}

/// The `env:` entries of every container in a Deployment or a patch of one (`- name:`
/// with `value:`).
fn env_entries(file: &str) -> Vec<(String, String)> {
    let text = repo_file(file);
    let lines: Vec<&str> = text.lines().collect();
    let mut env = Vec::new();
    for block in blocks(&lines, "env") {
        let mut current: Option<String> = None;
        let item_indent = block.iter().map(|l| indent(l)).min().unwrap_or_default();
        for line in block {
            let trimmed = line.trim();
            if indent(line) == item_indent {
                let item = trimmed
                    .strip_prefix("- ")
                    .unwrap_or_else(|| panic!("{file}: env entry is not a list item: {line}"));
                let (key, name) = key_value(item);
                assert_eq!(key, "name", "{file}: an env entry starts with name: {line}");
                if let Some(previous) = current.replace(name) {
                    env.push((previous, String::new()));
                }
            } else if let Some(value) = trimmed.strip_prefix("value:") {
                let name = current.take().expect("value: after name:");
                env.push((name, key_value(&format!("value:{value}")).1));
            }
        }
        if let Some(name) = current {
            // valueFrom: the value is not in this file.
            env.push((name, String::new()));
        }
    }
    env
}

/// The base Deployment's `env:` entries.
fn deployment_env() -> Vec<(String, String)> {
    env_entries(BASE_DEPLOYMENT)
}

/// Every YAML file under deploy/kubernetes (base, overlays, components), relative to the
/// repository root, sorted.
fn kubernetes_files() -> Vec<String> {
    fn walk(dir: &Path, found: &mut Vec<String>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                walk(&path, found);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                let root = Path::new(env!("CARGO_MANIFEST_DIR"));
                let relative = path.strip_prefix(root).expect("under the repository");
                found.push(relative.to_str().expect("UTF-8 path").to_owned());
            }
        }
    }
    let mut found = Vec::new();
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes"),
        &mut found,
    );
    found.sort();
    found
}

/// The Kubernetes pod's environment: the ConfigMap (envFrom) plus the Deployment's env.
fn pod_env() -> Vec<(String, String)> {
    let mut env = configmap_env();
    env.extend(deployment_env());
    env
}

/// The TLS overlay's pod environment: the base's, with the patch's entries added or
/// replacing the base's of the same name, as the strategic merge does.
fn tls_pod_env() -> Vec<(String, String)> {
    let mut env = pod_env();
    for (name, value) in env_entries(TLS_PATCH) {
        env.retain(|(n, _)| *n != name);
        env.push((name, value));
    }
    env
}

/// `- NAME=value` items of every `literals:` list (a kustomization's configMapGenerator).
fn generator_literals(file: &str) -> Vec<(String, String)> {
    let text = repo_file(file);
    let lines: Vec<&str> = text.lines().collect();
    blocks(&lines, "literals")
        .iter()
        .flat_map(|literals| children(literals))
        .filter_map(|item| item.strip_prefix("- "))
        .map(|item| {
            let (name, value) = item.split_once('=').unwrap_or((item, ""));
            (name.to_owned(), value.to_owned())
        })
        .collect()
}

/// The `containerPort` of the port called `name` in a Deployment's text.
fn container_port(deployment: &str, name: &str) -> u64 {
    let lines: Vec<&str> = deployment.lines().collect();
    let ports = block(&lines, "ports");
    let at = ports
        .iter()
        .position(|l| l.trim() == format!("- name: {name}"))
        .unwrap_or_else(|| panic!("no container port named {name}"));
    ports[at + 1..]
        .iter()
        .take_while(|l| !l.trim().starts_with("- "))
        .map(|l| key_value(l.trim()))
        .find(|(k, _)| k == "containerPort")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("port {name} has no containerPort"))
}

/// The `session` service's `environment:` in deploy/compose.yml (map or list form).
fn compose_env() -> Vec<(String, String)> {
    let text = repo_file("deploy/compose.yml");
    let lines: Vec<&str> = text.lines().collect();
    let services = block(&lines, "services");
    let session = child_block(&services, "session");
    children(&block(&session, "environment"))
        .into_iter()
        .map(|entry| match entry.strip_prefix("- ") {
            Some(item) => {
                let (name, value) = item.split_once('=').unwrap_or((item, ""));
                (name.to_owned(), value.to_owned())
            }
            None => key_value(entry),
        })
        .collect()
}

/// The `ENV` instructions of deploy/Dockerfile, continuation lines joined.
fn dockerfile_env() -> Vec<(String, String)> {
    let text = repo_file("deploy/Dockerfile");
    let joined = text.replace("\\\n", " ");
    let mut env = Vec::new();
    for line in joined.lines() {
        let Some(rest) = line.trim().strip_prefix("ENV ") else {
            continue;
        };
        let words: Vec<&str> = rest.split_whitespace().collect();
        if words.first().is_some_and(|w| !w.contains('=')) {
            // Legacy `ENV NAME value`.
            env.push((words[0].to_owned(), words[1..].join(" ")));
        } else {
            for word in words {
                let (name, value) = word.split_once('=').unwrap_or((word, ""));
                env.push((name.to_owned(), value.trim_matches('"').to_owned()));
            }
        }
    }
    env
}

fn names(env: &[(String, String)]) -> impl Iterator<Item = &str> {
    env.iter().map(|(name, _)| name.as_str())
}

fn lookup<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
    env.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

#[test]
fn configuration_reference_table_is_read() {
    let documented = Documented::load();
    for name in [
        "LISTEN_ADDR",
        "VALKEY_URL",
        "VALKEY_PASSWORD_FILE",
        "TLS_CERT",
        "TLS_KEY",
        "HTTP2_KEEPALIVE_TIMEOUT",
        "METRICS_LISTEN",
        "RUST_LOG",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_SERVICE_NAME",
    ] {
        assert!(
            documented.names.contains(name),
            "{name} not read from docs/configuration.md"
        );
    }
    assert!(
        documented.contains("OTEL_BSP_SCHEDULE_DELAY"),
        "OTEL_BSP_* not read"
    );
    assert_eq!(documented.flags["TLS_KEY"], "--tls-key");
    assert_eq!(documented.flags["LISTEN_ADDR"], "--listen");
    assert!(!documented.flags.contains_key("RUST_LOG"));
    assert!(
        !documented.contains("VALKEY_PASSWORD"),
        "a prefix matched too much"
    );
    assert!(documented.names.len() >= 25, "{:?}", documented.names);
}

#[test]
fn kubernetes_configmap_keys_are_documented_variables() {
    let env = configmap_env();
    for (name, _) in &env {
        assert!(
            is_variable_name(name),
            "configmap.yaml: {name} is not a variable name"
        );
    }
    Documented::load().assert_all_documented(BASE_CONFIGMAP, names(&env));
}

#[test]
fn kubernetes_deployment_env_is_documented() {
    let env = deployment_env();
    assert!(
        lookup(&env, "VALKEY_PASSWORD_FILE").is_some(),
        "deployment.yaml: no env entries read"
    );
    Documented::load().assert_all_documented(BASE_DEPLOYMENT, names(&env));
}

#[test]
fn every_kubernetes_file_sets_only_documented_variables() {
    let documented = Documented::load();
    let mut read = BTreeSet::new();
    for file in kubernetes_files() {
        let text = repo_file(&file);
        let mut env = env_entries(&file);
        // The service's ConfigMap (its envFrom); another's, such as Valkey's
        // configuration file, holds no variables of the service.
        if text.lines().any(|l| l.trim() == "kind: ConfigMap")
            && values_of(&text, "name").first().map(String::as_str) == Some("barazo-session")
        {
            env.extend(configmap_data(&file));
        }
        env.extend(generator_literals(&file));
        for (name, _) in &env {
            assert!(
                is_variable_name(name),
                "{file}: {name} is not a variable name"
            );
        }
        if !env.is_empty() {
            read.insert(file.clone());
        }
        documented.assert_all_documented(&file, names(&env));
    }
    // The walk reached the base and the overlay (else this test checks nothing).
    for file in [BASE_CONFIGMAP, BASE_DEPLOYMENT, TLS_PATCH] {
        assert!(
            read.contains(file),
            "no variables read from {file}: {read:?}"
        );
    }
}

#[test]
fn kubernetes_tls_overlay_serves_tls_and_probes_the_admin_listener() {
    let config = Documented::load().parse_config("deploy/kubernetes/overlays/tls", &tls_pod_env());
    let patch = repo_file(TLS_PATCH);
    let lines: Vec<&str> = patch.lines().collect();

    // The certificate and key the service reads are the kubernetes.io/tls Secret's keys,
    // in the directory the patch mounts that Secret at.
    let mounts = values_of(&patch, "mountPath");
    for (name, path, key) in [
        ("TLS_CERT", &config.tls_cert, "tls.crt"),
        ("TLS_KEY", &config.tls_key, "tls.key"),
    ] {
        let path = path
            .as_deref()
            .unwrap_or_else(|| panic!("overlays/tls does not set {name}"));
        let directory = path.parent().and_then(Path::to_str).unwrap_or_default();
        assert!(
            mounts.iter().any(|m| m == directory),
            "{name}={}: the patch mounts nothing at {directory} ({mounts:?})",
            path.display()
        );
        assert_eq!(
            path.file_name().and_then(|f| f.to_str()),
            Some(key),
            "{name}: not the kubernetes.io/tls key"
        );
    }
    // The optional cert-manager Certificate writes the Secret the patch mounts.
    let secret = values_of(&patch, "secretName");
    let certificate = repo_file("deploy/kubernetes/components/cert-manager/certificate.yaml");
    assert_eq!(secret.len(), 1, "one Secret mounted: {secret:?}");
    assert_eq!(values_of(&certificate, "secretName"), secret);

    // Both probes ask the admin listener over HTTP, replacing the base's gRPC probes
    // (which speak plaintext and cannot reach a TLS-only port).
    let metrics = config.metrics_listen.expect("METRICS_LISTEN set");
    let base = repo_file(BASE_DEPLOYMENT);
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/livez")] {
        let probe_block = block(&lines, probe);
        assert!(
            probe_block.iter().any(|l| l.trim() == "$patch: replace"),
            "{probe}: must replace the base's probe (a merge keeps its grpc handler too)"
        );
        assert!(
            blocks(&probe_block, "grpc").is_empty(),
            "{probe}: a gRPC probe"
        );
        let http: BTreeMap<String, String> = children(&block(&probe_block, "httpGet"))
            .into_iter()
            .map(key_value)
            .collect();
        assert_eq!(http.get("path").map(String::as_str), Some(path), "{probe}");
        let port = &http["port"];
        let port = port.parse().unwrap_or_else(|_| container_port(&base, port));
        assert_eq!(
            port,
            u64::from(metrics.port()),
            "{probe} port vs METRICS_LISTEN"
        );
    }
}

#[test]
fn compose_session_environment_is_documented() {
    let env = compose_env();
    assert!(
        lookup(&env, "VALKEY_URL").is_some(),
        "compose.yml: no environment read"
    );
    Documented::load().assert_all_documented("deploy/compose.yml", names(&env));
}

#[test]
fn dockerfile_env_is_documented() {
    let env = dockerfile_env();
    assert!(
        lookup(&env, "LISTEN_ADDR").is_some(),
        "Dockerfile: no ENV read"
    );
    Documented::load().assert_all_documented("deploy/Dockerfile", names(&env));
}

#[test]
fn deployed_values_parse_as_the_service_configuration() {
    let documented = Documented::load();
    let pod = documented.parse_config("deploy/kubernetes", &pod_env());
    let compose = documented.parse_config("deploy/compose.yml", &compose_env());
    let image = documented.parse_config("deploy/Dockerfile", &dockerfile_env());
    for (file, config) in [
        ("kubernetes", &pod),
        ("compose", &compose),
        ("Dockerfile", &image),
    ] {
        // Reachable from other containers, metrics on, JSON logs.
        assert!(
            config.listen.ip().is_unspecified(),
            "{file}: {}",
            config.listen
        );
        assert!(
            config
                .metrics_listen
                .is_some_and(|a| a.ip().is_unspecified()),
            "{file}"
        );
        assert_eq!(
            config.log_format,
            barazo_session::observe::telemetry::LogFormat::Json,
            "{file}"
        );
    }
    for (file, config) in [("kubernetes", &pod), ("compose", &compose)] {
        // The password comes from a file, never from the URL.
        assert!(
            !config.valkey_url.expose().contains('@'),
            "{file}: a password in VALKEY_URL"
        );
        assert!(
            config.valkey_password_file.is_some(),
            "{file}: no VALKEY_PASSWORD_FILE"
        );
        assert_eq!(
            config.store,
            barazo_session::config::StoreKind::Valkey,
            "{file}"
        );
    }
    assert!(pod.authz_policy.is_some(), "kubernetes: no AUTHZ_POLICY");
    // Compose publishes 8081 for trying forward auth, so the listener must be on and reachable.
    assert!(
        compose
            .http_listen
            .is_some_and(|a| a.ip().is_unspecified() && a.port() == 8081),
        "compose: HTTP_LISTEN {:?}",
        compose.http_listen
    );
}

#[test]
fn kubernetes_secret_files_are_where_the_configuration_looks() {
    let env = pod_env();
    let secret = repo_file("deploy/kubernetes/base/secret.yaml");
    let secret_lines: Vec<&str> = secret.lines().collect();
    let string_data = block(&secret_lines, "stringData");
    let keys: BTreeSet<String> = children(&string_data)
        .into_iter()
        .map(|entry| key_value(entry).0)
        .collect();
    let deployment = repo_file(BASE_DEPLOYMENT);
    let mount_paths: Vec<String> = deployment
        .lines()
        .filter_map(|l| l.trim().strip_prefix("mountPath:"))
        .map(|p| p.trim().to_owned())
        .collect();
    for name in ["VALKEY_PASSWORD_FILE", "AUTHZ_POLICY"] {
        let path = Path::new(lookup(&env, name).unwrap_or_else(|| panic!("{name} not set")));
        let directory = path.parent().and_then(Path::to_str).unwrap_or_default();
        let file = path
            .file_name()
            .and_then(|f| f.to_str())
            .unwrap_or_default();
        assert!(
            mount_paths.iter().any(|m| m == directory),
            "{name}={}: no volume is mounted at {directory} ({mount_paths:?})",
            path.display()
        );
        assert!(
            keys.contains(file),
            "{name}={}: secret.yaml has no key {file} ({keys:?})",
            path.display()
        );
    }
    // The placeholder policy is one the service accepts.
    let policy_block = block(&string_data, "policy.toml");
    let dedent = policy_block
        .iter()
        .map(|l| indent(l))
        .min()
        .unwrap_or_default();
    let policy: String = policy_block
        .iter()
        .map(|l| format!("{}\n", &l[dedent..]))
        .collect();
    Policy::parse(&policy).unwrap_or_else(|e| panic!("secret.yaml policy.toml: {e}\n{policy}"));
}

#[test]
fn kubernetes_probes_scrape_and_grace_period_match_the_configuration() {
    let documented = Documented::load();
    let config = documented.parse_config("deploy/kubernetes", &pod_env());
    let deployment = repo_file(BASE_DEPLOYMENT);
    let lines: Vec<&str> = deployment.lines().collect();
    // The one `key: <number>` line anywhere in the block.
    let number = |block: &[&str], key: &str| -> u64 {
        let values: Vec<String> = block
            .iter()
            .map(|l| key_value(l.trim()))
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v)
            .collect();
        assert_eq!(
            values.len(),
            1,
            "deployment.yaml: expected one {key}: {values:?}"
        );
        values[0]
            .parse()
            .unwrap_or_else(|e| panic!("deployment.yaml {key}: {e}"))
    };

    let readiness = block(&lines, "readinessProbe");
    let grpc_port = number(&block(&readiness, "grpc"), "port");
    assert_eq!(
        grpc_port,
        u64::from(config.listen.port()),
        "readiness probe port vs LISTEN_ADDR"
    );
    // Liveness asks the health service that stays SERVING while Valkey is down.
    let liveness = block(&lines, "livenessProbe");
    let liveness_grpc = block(&liveness, "grpc");
    assert_eq!(
        number(&liveness_grpc, "port"),
        u64::from(config.listen.port()),
        "liveness probe port vs LISTEN_ADDR"
    );
    let service = liveness_grpc
        .iter()
        .map(|l| key_value(l.trim()))
        .find(|(k, _)| k == "service")
        .expect("liveness probe names a health service")
        .1;
    assert_eq!(service, barazo_session::api::health::LIVENESS);

    let metrics: SocketAddr = config.metrics_listen.expect("METRICS_LISTEN set");
    let annotations = block(&lines, "annotations");
    let scrape_port = children(&annotations)
        .into_iter()
        .map(key_value)
        .find(|(k, _)| k == "prometheus.io/port")
        .expect("prometheus.io/port annotation")
        .1;
    assert_eq!(
        scrape_port,
        metrics.port().to_string(),
        "scrape port vs METRICS_LISTEN"
    );

    // The kubelet must not kill a pod still draining: preStop sleep + SHUTDOWN_TIMEOUT
    // stay below the grace period.
    let grace = number(&lines, "terminationGracePeriodSeconds");
    let pre_stop = blocks(&lines, "sleep")
        .first()
        .map_or(0, |sleep| number(sleep, "seconds"));
    assert!(
        pre_stop + config.shutdown_timeout.as_secs() < grace,
        "terminationGracePeriodSeconds {grace} <= preStop {pre_stop} + SHUTDOWN_TIMEOUT {}",
        config.shutdown_timeout.as_secs()
    );
}

/// The image's build stage copies everything `cargo build` reads: the manifest and lock,
/// build.rs and every path it watches (the protos, the vendored Envoy protos), the
/// directory of every target the manifest declares, and `.cargo/` (the allocator's
/// settings, compiled in). A missing one fails the image build, or worse, builds an image
/// without jemalloc's background purge; no Docker engine runs here to find out.
#[test]
fn the_image_build_copies_every_input_of_the_build() {
    let dockerfile = repo_file("deploy/Dockerfile");
    let build_stage = dockerfile
        .split("\nFROM ")
        .nth(1)
        .expect("a build stage after the first FROM");
    let copied: BTreeSet<&str> = build_stage
        .lines()
        .filter_map(|line| line.trim().strip_prefix("COPY "))
        .filter(|args| !args.starts_with("--from"))
        .flat_map(|args| {
            let words: Vec<&str> = args.split_whitespace().collect();
            words[..words.len().saturating_sub(1)].to_vec()
        })
        .map(|source| source.trim_end_matches('/'))
        .collect();

    let mut needed: BTreeSet<String> = ["Cargo.toml", "Cargo.lock", "build.rs", ".cargo"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    let top = |path: &str| path.split('/').next().unwrap_or(path).to_owned();
    for line in repo_file("build.rs").lines() {
        if let Some(path) = line
            .split("cargo:rerun-if-changed=")
            .nth(1)
            .map(|rest| rest.trim_end_matches(['"', ')', ';']))
        {
            needed.insert(top(path));
        }
    }
    for line in repo_file("Cargo.toml").lines() {
        if let Some(path) = line.trim().strip_prefix("path = ") {
            needed.insert(top(path.trim_matches('"')));
        }
        // A bench without `path` lives in benches/ (Cargo's default).
        if line.trim() == "[[bench]]" {
            needed.insert("benches".to_owned());
        }
    }
    assert!(
        needed.len() >= 9,
        "the inputs were read (manifest, build.rs, targets): {needed:?}"
    );
    let missing: Vec<&String> = needed
        .iter()
        .filter(|path| !copied.contains(path.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "deploy/Dockerfile's build stage does not COPY {missing:?} (it copies {copied:?})"
    );
}

/// The optional in-cluster Valkey is the one the base is configured for: the Service
/// VALKEY_URL names, on its port; the password file the service reads (one Secret key for
/// both); pods the service's NetworkPolicy lets it reach, admitting the service's pods;
/// and the durability deploy/README.md asks for (AOF, noeviction, a PersistentVolume).
#[test]
fn kubernetes_valkey_component_is_the_valkey_the_base_expects() {
    let file = |name: &str| repo_file(&format!("{VALKEY_COMPONENT}/{name}"));
    let env = pod_env();
    let url = lookup(&env, "VALKEY_URL").expect("VALKEY_URL set");
    let (host, port) = url
        .strip_prefix("redis://")
        .and_then(|rest| rest.split_once(':'))
        .unwrap_or_else(|| panic!("VALKEY_URL {url}: redis://host:port"));

    let service = file("service.yaml");
    assert_eq!(
        values_of(&service, "name").first().map(String::as_str),
        Some(host)
    );
    assert!(
        values_of(&service, "port").iter().any(|p| p == port),
        "service.yaml does not serve VALKEY_URL's port {port}"
    );

    // The password: the key of the service's Secret that VALKEY_PASSWORD_FILE names.
    let password_file = lookup(&env, "VALKEY_PASSWORD_FILE").expect("VALKEY_PASSWORD_FILE");
    let key = Path::new(password_file)
        .file_name()
        .and_then(|f| f.to_str())
        .expect("a file name");
    let statefulset = file("statefulset.yaml");
    assert_eq!(values_of(&statefulset, "secretName"), ["barazo-session"]);
    assert_eq!(values_of(&statefulset, "key"), [key]);
    assert!(
        values_of(&statefulset, "replicas") == ["1"]
            && statefulset.contains("volumeClaimTemplates:")
            && values_of(&statefulset, "readOnlyRootFilesystem") == ["true"]
            && values_of(&statefulset, "runAsNonRoot")
                .iter()
                .all(|v| v == "true"),
        "statefulset.yaml: one replica, a PersistentVolumeClaim, non-root, read-only root"
    );
    let image = values_of(&statefulset, "image");
    assert!(
        image.len() == 1
            && image[0].starts_with("valkey/valkey:")
            && !image[0].ends_with(":latest"),
        "a pinned Valkey image: {image:?}"
    );

    // The password goes into the include the configuration reads, never onto a command
    // line; the configuration keeps every write (AOF) and never evicts a session.
    let configmap = file("configmap.yaml");
    let conf: Vec<&str> = configmap.lines().map(str::trim).collect();
    for line in [
        "appendonly yes",
        "appendfsync everysec",
        "maxmemory-policy noeviction",
    ] {
        assert!(conf.contains(&line), "configmap.yaml: no `{line}`");
    }
    let include = conf
        .iter()
        .find_map(|l| l.strip_prefix("include "))
        .expect("configmap.yaml includes the password file");
    assert!(
        statefulset.contains(&format!("> {include}")),
        "statefulset.yaml does not write {include}"
    );
    assert!(
        !statefulset.contains("--requirepass"),
        "the password on a command line"
    );

    // The base lets the service out to the pods labelled as these are; this component
    // lets in only the service's pods, on the port.
    let label = |text: &str| -> Vec<String> { values_of(text, "app.kubernetes.io/name") };
    let valkey_pods = label(&statefulset);
    assert!(valkey_pods.iter().all(|l| l == "valkey"), "{valkey_pods:?}");
    let base_policy = repo_file("deploy/kubernetes/base/networkpolicy.yaml");
    assert!(
        label(&base_policy).iter().any(|l| l == "valkey"),
        "the base NetworkPolicy lets the service out to pods labelled valkey"
    );
    let policy = file("networkpolicy.yaml");
    assert_eq!(
        label(&policy),
        ["valkey", "valkey", "barazo-session"],
        "networkpolicy.yaml: for the Valkey pods, admitting the service's pods only"
    );
    assert_eq!(values_of(&policy, "port"), [port]);
}
