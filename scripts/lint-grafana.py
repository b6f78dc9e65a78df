#!/usr/bin/env python3
"""Checks deploy/grafana and deploy/prometheus.yml against deploy/compose.yml, and writes
the dashboards' PromQL queries as a Prometheus rules file for `promtool check rules`.

Run by scripts/lint-deploy.sh:

    lint-grafana.py RULES_OUT

- every dashboard is JSON, and Compose mounts it where the dashboard provider looks;
- the data source's URL and every scrape target name a Compose service, and a target's
  port is that service's METRICS_LISTEN port;
- RULES_OUT gets one recording rule per query, Grafana's $variables replaced, so promtool
  parses each one as Prometheus would.
Which metrics the queries read is checked against a live server by tests/docs/dashboard.rs.
"""

import json
import pathlib
import re
import sys
import urllib.parse

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
problems = []


def problem(where, text):
    problems.append(f"{where}: {text}")


def load_yaml(path):
    return yaml.safe_load(path.read_text())


def mounted(compose, service):
    """Target path -> source file (relative to deploy/) of a service's Compose configs."""
    configs = compose.get("configs") or {}
    found = {}
    for ref in compose["services"][service].get("configs") or []:
        if isinstance(ref, dict) and ref.get("source") in configs:
            found[ref["target"]] = configs[ref["source"]]["file"]
    return found


def queries(dashboard):
    panels = []
    for panel in dashboard.get("panels", []):
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    for panel in panels:
        for target in panel.get("targets", []):
            if "expr" in target:
                yield f"panel {panel.get('title')!r} {target.get('refId')}", target["expr"]


def grafana_to_promql(expr):
    # $__rate_interval and friends are durations; other variables (${instance}) sit in
    # regex matchers, where .* stands for "All".
    expr = re.sub(r"\$__(rate_interval|interval|range)\b", "5m", expr)
    return re.sub(r"\$\{?\w+(:\w+)?\}?", ".*", expr)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    compose = load_yaml(DEPLOY / "compose.yml")
    services = compose["services"]

    providers = load_yaml(DEPLOY / "grafana/provisioning/dashboards/barazo-session.yaml")["providers"]
    provider_paths = [p["options"]["path"].rstrip("/") for p in providers]
    grafana_mounts = mounted(compose, "grafana")
    rules = []
    for path in sorted((DEPLOY / "grafana/dashboards").glob("*.json")):
        where = path.relative_to(ROOT)
        try:
            dashboard = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            problem(where, f"not JSON: {e}")
            continue
        source = f"./{path.relative_to(DEPLOY)}"
        targets = [t for t, f in grafana_mounts.items() if f == source]
        if not any(t.rsplit("/", 1)[0] in provider_paths for t in targets):
            problem(where, f"Compose does not mount it under a provider path {provider_paths} "
                           f"(mounted at {targets})")
        for place, expr in queries(dashboard):
            rules.append({"record": f"dashboard:query_{len(rules)}",
                          "expr": grafana_to_promql(expr),
                          "labels": {"where": f"{path.name} {place}"}})
    if not rules:
        problem("deploy/grafana/dashboards", "no queries found")

    datasources = load_yaml(DEPLOY / "grafana/provisioning/datasources/prometheus.yaml")
    for source in datasources["datasources"]:
        host = urllib.parse.urlsplit(source["url"]).hostname
        if host not in services:
            problem("grafana datasource", f"{source['url']}: no Compose service {host}")

    prometheus = load_yaml(DEPLOY / "prometheus.yml")
    for job in prometheus["scrape_configs"]:
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, _, port = target.rpartition(":")
                if host not in services:
                    problem(f"prometheus.yml job {job['job_name']}", f"{target}: no Compose service {host}")
                    continue
                listen = (services[host].get("environment") or {}).get("METRICS_LISTEN", "")
                if listen.rpartition(":")[2] != port:
                    problem(f"prometheus.yml job {job['job_name']}",
                            f"{target}: {host}'s METRICS_LISTEN is {listen!r}")

    pathlib.Path(sys.argv[1]).write_text(
        yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}, sort_keys=False))
    print(f"    {len(rules)} dashboard queries written for promtool")
    for line in problems:
        print(line)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
