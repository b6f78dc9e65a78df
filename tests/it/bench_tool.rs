//! The `session-bench` load tool works end to end (its figures are for BENCHMARKS.md; here
//! only that it runs, loads real servers and reports no errors).

use std::process::Stdio;

const BENCH: &str = env!("CARGO_BIN_EXE_session-bench");

async fn bench(args: &[&str]) -> String {
    let output = tokio::process::Command::new(BENCH)
        .args([
            "--duration",
            "1",
            "--rounds",
            "1",
            "--warmup",
            "0",
            "--sessions",
            "20",
        ])
        .args(["--connections", "2", "--callers", "4"])
        .args(args)
        .env_remove("VALKEY_URL")
        .stderr(Stdio::inherit())
        .output()
        .await
        .expect("session-bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{stdout}");
    stdout
}

/// The table rows: label, calls/s, …, errors, invalid.
fn rows(report: &str) -> Vec<Vec<String>> {
    report
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| server"))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_owned())
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mix_runs_against_a_started_server_without_errors() {
    let report = bench(&["--scenario", "mix"]).await;
    let rows = rows(&report);
    assert_eq!(rows.len(), 1, "{report}");
    let row = &rows[0];
    assert_eq!(row[0], "memory");
    assert!(row[1].parse::<f64>().expect("calls/s") > 0.0, "{report}");
    assert_eq!(
        (row[6].as_str(), row[7].as_str()),
        ("0", "0"),
        "no errors or invalid answers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tracing_comparison_exports_spans() {
    let report = bench(&["--compare", "tracing"]).await;
    let rows = rows(&report);
    let labels: Vec<_> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(
        labels,
        ["memory, tracing off", "memory, tracing on"],
        "{report}"
    );
    assert!(report.contains("second / first throughput:"), "{report}");
    let exports: u64 = report
        .lines()
        .find_map(|l| l.strip_prefix("export requests accepted by the OTLP receiver: "))
        .and_then(|rest| rest.split(';').next()?.parse().ok())
        .expect("export count");
    assert!(exports > 0, "the traced server exported spans: {report}");
}
