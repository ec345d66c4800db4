//! What the chart installs for Prometheus and Grafana, as helm renders it and promtool reads it,
//! with no cluster: the ServiceMonitor, PodMonitor and PrometheusRule only where the Prometheus
//! Operator's CRDs are served (and their switches on), the dashboard's ConfigMap for Grafana's
//! sidecar, and every PromQL expression of the dashboard and the alerts parsed by promtool.
//! (That each names a series the operator really exports is checked against a scrape after a
//! billed run, `billing.rs`; against the trainer's names by the operator's unit tests.)

use anyhow::{Context as _, Result, ensure};
use frugal_e2e::node::helm;
use frugal_e2e::prometheus::{self, promtool};
use serde_json::Value;

fn chart() -> String {
    frugal_e2e::repo_root().join("charts/frugal").display().to_string()
}

/// helm and promtool run only where scripts/e2e.sh put them on PATH, as every e2e test needs
/// FRUGAL_E2E=1.
fn enabled(test: &str) -> bool {
    if !frugal_e2e::enabled() {
        eprintln!("e2e: skipping {test}: set FRUGAL_E2E=1 (scripts/e2e.sh puts helm and promtool on PATH)");
    }
    frugal_e2e::enabled()
}

/// The objects `helm template` renders with `args`.
fn render(args: &[&str]) -> Result<Vec<Value>> {
    let mut all = vec!["template", "frugal", chart().leak(), "--namespace", "monitoring-test"];
    all.extend(args);
    let rendered = helm(&all)?;
    let docs: Vec<Value> = serde_saphyr::from_multiple(&rendered).with_context(|| format!("helm rendered something other than YAML:\n{rendered}"))?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

fn kinds(objects: &[Value], api_version: &str) -> Vec<String> {
    let mut kinds: Vec<String> =
        objects.iter().filter(|o| o["apiVersion"] == api_version).filter_map(|o| o["kind"].as_str().map(String::from)).collect();
    kinds.sort();
    kinds
}

const CRDS: [&str; 2] = ["--api-versions", "monitoring.coreos.com/v1"];

#[test]
fn the_monitors_and_rules_render_only_where_the_prometheus_operators_crds_are_served() -> Result<()> {
    if !enabled("monitoring-render") {
        return Ok(());
    }
    let monitoring = "monitoring.coreos.com/v1";
    ensure!(kinds(&render(&[])?, monitoring).is_empty(), "monitoring objects rendered for a cluster without the CRDs");
    let served = render(&CRDS)?;
    ensure!(kinds(&served, monitoring) == ["PodMonitor", "PrometheusRule", "ServiceMonitor"], "{:?}", kinds(&served, monitoring));
    // each switch turns its own object off
    for (switch, kind) in [("serviceMonitor", "ServiceMonitor"), ("podMonitor", "PodMonitor"), ("prometheusRule", "PrometheusRule")] {
        let off = render(&[&CRDS[..], &["--set", &format!("metrics.{switch}.enabled=false")]].concat())?;
        let left = kinds(&off, monitoring);
        ensure!(!left.iter().any(|k| k == kind) && left.len() == 2, "metrics.{switch}.enabled=false left {left:?}");
    }
    // the ServiceMonitor finds the metrics Service; the PodMonitor the watched namespace's trainers
    let scoped = render(&[&CRDS[..], &["--set", "operator.watchNamespace=team", "--set", "metrics.serviceMonitor.labels.release=kps"]].concat())?;
    let find = |kind: &str| scoped.iter().find(|o| o["kind"] == kind).cloned().with_context(|| format!("no {kind}"));
    let (service, monitor, pods) = (find("Service")?, find("ServiceMonitor")?, find("PodMonitor")?);
    let selector = monitor["spec"]["selector"]["matchLabels"].as_object().context("ServiceMonitor selector")?;
    ensure!(
        selector.iter().all(|(k, v)| service["metadata"]["labels"][k] == *v),
        "the ServiceMonitor selects {selector:?}, the Service is labelled {}",
        service["metadata"]["labels"]
    );
    ensure!(monitor["spec"]["endpoints"][0]["port"] == "metrics" && service["spec"]["ports"][0]["name"] == "metrics");
    ensure!(monitor["metadata"]["labels"]["release"] == "kps", "extra labels: {}", monitor["metadata"]["labels"]);
    ensure!(pods["spec"]["namespaceSelector"]["matchNames"] == serde_json::json!(["team"]), "{}", pods["spec"]);
    ensure!(pods["spec"]["selector"]["matchLabels"]["app.kubernetes.io/managed-by"] == "frugal-operator");
    ensure!(pods["spec"]["podMetricsEndpoints"][0]["port"] == "metrics", "the trainer container's port is named metrics");
    Ok(())
}

#[test]
fn the_dashboard_is_a_configmap_for_grafanas_sidecar() -> Result<()> {
    if !enabled("monitoring-dashboard") {
        return Ok(());
    }
    // no CRD needed
    let objects = render(&[])?;
    let map = objects
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"].as_str().is_some_and(|n| n.ends_with("-dashboard")))
        .context("no dashboard ConfigMap")?;
    ensure!(map["metadata"]["labels"]["grafana_dashboard"] == "1", "{}", map["metadata"]);
    let json: Value = serde_json::from_str(map["data"]["frugal-spend.json"].as_str().context("no frugal-spend.json")?)?;
    ensure!(json == prometheus::dashboard()?, "the ConfigMap holds another dashboard than files/dashboards/frugal-spend.json");
    let off = render(&["--set", "metrics.dashboard.enabled=false"])?;
    ensure!(!off.iter().any(|o| o["metadata"]["name"].as_str().is_some_and(|n| n.ends_with("-dashboard"))));
    Ok(())
}

/// `promtool check rules` on the PrometheusRule's spec as helm renders it (the chart's rule file
/// as it is), and on every dashboard query as a recording rule, so promtool parses each.
#[test]
fn promtool_checks_the_alerts_and_parses_every_dashboard_query() -> Result<()> {
    if !enabled("monitoring-promtool") {
        return Ok(());
    }
    let dir = std::env::temp_dir().join(format!("frugal-monitoring-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let rule = render(&CRDS)?.into_iter().find(|o| o["kind"] == "PrometheusRule").context("no PrometheusRule")?;
    let rendered = dir.join("rules.yaml");
    std::fs::write(&rendered, serde_saphyr::to_string(&rule["spec"])?)?;
    let checked = promtool(&["check", "rules", rendered.to_str().unwrap()], None)?;
    ensure!(checked.contains("SUCCESS: 5 rules found"), "{checked}");
    // the file the chart ships, as it is
    promtool(&["check", "rules", prometheus::rule_file().to_str().unwrap()], None)?;

    let queries = prometheus::dashboard_queries()?;
    let rules: Vec<Value> =
        queries.iter().enumerate().map(|(i, q)| serde_json::json!({"record": format!("frugal:dashboard_query_{i}"), "expr": q})).collect();
    let file = dir.join("dashboard.yaml");
    std::fs::write(&file, serde_saphyr::to_string(&serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]}))?)?;
    let parsed = promtool(&["check", "rules", file.to_str().unwrap()], None)?;
    ensure!(parsed.contains(&format!("SUCCESS: {} rules found", queries.len())), "{parsed}");
    // and promtool does refuse what is not PromQL
    std::fs::write(&file, "groups: [{name: broken, rules: [{record: 'frugal:broken', expr: 'sum by (namespace (frugal_budget_gpus_held)'}]}]\n")?;
    ensure!(promtool(&["check", "rules", file.to_str().unwrap()], None).is_err(), "promtool passed an unbalanced expression");
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
