//! deploy/grafana/dashboards/barazo-session.json against what the service really exports:
//! every metric and label its PromQL queries read must be in a live `/metrics` scrape of
//! the real server (after calls that give every family a series), so a renamed metric or
//! label fails here instead of showing an empty panel.

use crate::support::http::get;
use crate::support::promql;
use crate::support::{TestApp, unique_did};
use barazo_session::config::StoreKind;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const DASHBOARD: &str = "deploy/grafana/dashboards/barazo-session.json";

/// Labels Prometheus adds to every scraped series; the exposition does not carry them.
const TARGET_LABELS: &[&str] = &["instance", "job"];

/// Each series name in an exposition, with the label names it carries.
fn exported(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut series: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = series.entry(line[..end].to_owned()).or_default();
        if let Some(rest) = line[end..].strip_prefix('{') {
            // name="value",… up to the closing brace; values may hold commas or braces.
            let mut in_value = false;
            let mut escaped = false;
            let mut name = String::new();
            for c in rest.chars() {
                match (in_value, c) {
                    (true, _) if escaped => escaped = false,
                    (true, '\\') => escaped = true,
                    (true, '"') => in_value = false,
                    (true, _) => {}
                    (false, '"') => in_value = true,
                    (false, '=') => {
                        labels.insert(std::mem::take(&mut name));
                    }
                    (false, '}') => break,
                    (false, ',') => {}
                    (false, c) => name.push(c),
                }
            }
        }
    }
    series
}

/// Every PromQL expression of the dashboard with where it is: panel targets (also inside
/// collapsed rows) and query variables (`label_values(<expr>, <label>)` split in two).
fn queries(dashboard: &Value) -> Vec<(String, String, Option<String>)> {
    let mut found = Vec::new();
    let mut panels: Vec<&Value> = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        panels.push(panel);
        panels.extend(panel["panels"].as_array().into_iter().flatten());
    }
    for panel in panels {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("every target has an expr");
            let title = panel["title"].as_str().unwrap_or_default();
            let place = format!("panel {title:?} {}", target["refId"]);
            found.push((place, expr.to_owned(), None));
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        if variable["type"] != "query" {
            continue;
        }
        let query = variable["query"]["query"]
            .as_str()
            .or_else(|| variable["query"].as_str())
            .expect("a query variable has a query");
        let place = format!("variable {}", variable["name"]);
        match query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
        {
            Some(args) => {
                let (expr, label) = args.rsplit_once(',').expect("label_values(expr, label)");
                found.push((place, expr.trim().to_owned(), Some(label.trim().to_owned())));
            }
            None => found.push((place, query.to_owned(), None)),
        }
    }
    found
}

/// What the dashboard reads that `exported` lacks, one line per problem; and the metric
/// names it reads.
fn check(
    dashboard: &Value,
    exported: &BTreeMap<String, BTreeSet<String>>,
) -> (Vec<String>, BTreeSet<String>) {
    let mut problems = Vec::new();
    let mut used = BTreeSet::new();
    let known = |label: &str, labels: &BTreeSet<String>| {
        TARGET_LABELS.contains(&label) || labels.contains(label)
    };
    for (place, expr, label_values) in queries(dashboard) {
        let reads = match promql::reads(&expr) {
            Ok(reads) => reads,
            Err(e) => {
                problems.push(format!("{place}: {e}"));
                continue;
            }
        };
        if reads.selectors.is_empty() {
            problems.push(format!("{place}: reads no metric: {expr}"));
        }
        let mut all_labels = BTreeSet::new();
        for selector in &reads.selectors {
            used.insert(selector.metric.clone());
            let Some(labels) = exported.get(&selector.metric) else {
                problems.push(format!(
                    "{place}: {} is not exported by the service",
                    selector.metric
                ));
                continue;
            };
            for label in &selector.labels {
                if !known(label, labels) {
                    problems.push(format!(
                        "{place}: {} has no label {label} (it has {labels:?})",
                        selector.metric
                    ));
                }
            }
            all_labels.extend(labels.iter().cloned());
        }
        for label in reads.grouping.iter().chain(&label_values) {
            if !known(label, &all_labels) {
                problems.push(format!(
                    "{place}: groups by {label}, which none of its metrics has"
                ));
            }
        }
    }
    (problems, used)
}

fn dashboard() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DASHBOARD);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{DASHBOARD} is not JSON: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_queries_only_what_the_service_exports() {
    let app = TestApp::spawn_with(StoreKind::Valkey, &["--metrics-listen", "127.0.0.1:0"]).await;
    // A series in every family: each RPC, a valid and an invalid validation, a refused
    // refresh (a non-OK status code), Valkey round trips.
    let did = unique_did();
    let session = app.create(&did, "alice.test").await;
    assert!(app.validate(&session.access_token).await.valid);
    assert!(!app.validate(&"0".repeat(64)).await.valid);
    app.refresh(&session.refresh_token).await.expect("refresh");
    let unknown = app.refresh(&"0".repeat(64)).await.expect_err("unknown");
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    let second = app.create(&did, "alice.test").await;
    assert!(app.delete(&second.refresh_token).await.expect("delete"));
    assert_eq!(app.delete_all(&did).await.expect("delete all"), 1);

    let (status, text) = get(app.metrics_addr.expect("admin listener"), "/metrics").await;
    assert_eq!(status, 200);
    let exported = exported(&text);
    let (problems, used) = check(&dashboard(), &exported);
    assert!(
        problems.is_empty(),
        "{DASHBOARD} reads what the service does not export:\n{}\n\nexported: {exported:#?}",
        problems.join("\n")
    );
    // The panels the dashboard exists for (docs/operations.md, "Metrics and probes"): validations,
    // latency per RPC and error codes, Valkey latency, in-flight commands, store health.
    for metric in [
        "barazo_session_validations_total",
        "barazo_session_sessions_total",
        "barazo_session_revocations_total",
        "rpc_server_call_duration_seconds_bucket",
        "rpc_server_call_duration_seconds_count",
        "barazo_session_valkey_round_trip_duration_seconds_bucket",
        "barazo_session_valkey_in_flight_commands",
        "barazo_session_store_up",
        "barazo_session_build_info",
    ] {
        assert!(used.contains(metric), "no panel reads {metric}: {used:?}");
    }
}

#[test]
fn a_query_for_what_is_not_exported_is_reported() {
    let exported = exported(concat!(
        "# TYPE barazo_session_validations counter\n",
        "barazo_session_validations_total{outcome=\"valid\"} 3\n",
        "rpc_server_call_duration_seconds_bucket{le=\"0.5\",rpc_method=\"X\",rpc_grpc_status_code=\"0\"} 1\n",
        "barazo_session_store_up 1\n",
        "# EOF\n",
    ));
    assert_eq!(
        exported["rpc_server_call_duration_seconds_bucket"],
        BTreeSet::from(["le", "rpc_method", "rpc_grpc_status_code"].map(String::from))
    );
    let dashboard = serde_json::json!({
        "panels": [
            {"title": "good", "targets": [
                {"refId": "A", "expr": "sum by (outcome) (rate(barazo_session_validations_total{instance=~\"$instance\"}[$__rate_interval]))"},
                {"refId": "B", "expr": "histogram_quantile(0.99, sum by (le, rpc_method) (rate(rpc_server_call_duration_seconds_bucket[5m])))"}
            ]},
            {"type": "row", "title": "collapsed", "panels": [
                {"title": "renamed", "targets": [{"refId": "A", "expr": "rate(barazo_session_validations[5m])"}]}
            ]},
            {"title": "labels", "targets": [
                {"refId": "A", "expr": "sum by (rpc_status) (barazo_session_store_up{outcome=\"x\"})"}
            ]}
        ],
        "templating": {"list": [
            {"type": "query", "name": "instance", "query": {"query": "label_values(barazo_session_build_info, instance)"}}
        ]}
    });
    let (problems, _) = check(&dashboard, &exported);
    assert_eq!(
        problems,
        [
            "panel \"renamed\" \"A\": barazo_session_validations is not exported by the service",
            "panel \"labels\" \"A\": barazo_session_store_up has no label outcome (it has {})",
            "panel \"labels\" \"A\": groups by rpc_status, which none of its metrics has",
            "variable \"instance\": barazo_session_build_info is not exported by the service",
        ]
    );
}

#[test]
fn dashboard_panels_are_well_formed() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "barazo-session");
    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = &panel["title"];
        assert!(
            ids.insert(panel["id"].as_u64().expect("numeric id")),
            "{title}: id used twice"
        );
        let grid = &panel["gridPos"];
        let (x, w) = (grid["x"].as_u64(), grid["w"].as_u64());
        assert!(
            x.zip(w).is_some_and(|(x, w)| w > 0 && x + w <= 24),
            "{title}: gridPos {grid} is outside the 24 columns"
        );
        if panel["type"] == "row" {
            continue;
        }
        // Every query goes to the data source the variable picks (the provisioned one in
        // deploy/compose.yml), so the JSON also imports into another Grafana.
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            assert_eq!(target["datasource"]["uid"], "${datasource}", "{title}");
        }
    }
}
