//! The chart's PromQL (its Grafana dashboard and its alerts) against the series the operator and
//! the trainer export: a query naming a series nobody exports shows nothing and never fires,
//! which no one notices until they need it. `e2e/tests/monitoring.rs` has promtool parse the
//! same queries; `e2e/tests/billing.rs` checks the operator's names against a real scrape.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::spend::tests_support::cluster;
use super::*;
use frugal_api::promql::frugal_series;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Every PromQL expression of the dashboard (its panels' targets and its variables' queries).
fn dashboard_queries() -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr" | "definition", serde_json::Value::String(q)) => out.push(q.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let text = std::fs::read_to_string(repo().join("charts/frugal/files/dashboards/frugal-spend.json")).unwrap();
    let mut out = Vec::new();
    walk(&serde_json::from_str(&text).unwrap(), &mut out);
    out
}

#[derive(serde::Deserialize)]
struct RuleFile {
    groups: Vec<RuleGroup>,
}

#[derive(serde::Deserialize)]
struct RuleGroup {
    rules: Vec<Rule>,
}

#[derive(serde::Deserialize)]
struct Rule {
    alert: String,
    expr: String,
}

fn rules() -> Vec<Rule> {
    let text = std::fs::read_to_string(repo().join("charts/frugal/files/prometheus-rules.yaml")).unwrap();
    let file: RuleFile = serde_saphyr::from_str(&text).unwrap();
    file.groups.into_iter().flat_map(|g| g.rules).collect()
}

/// The sample names of an exposition.
fn sample_names(exposition: &str) -> BTreeSet<String> {
    exposition.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split(['{', ' ']).next()).map(String::from).collect()
}

/// The trainer's series: the names it registers (`trainer/src`), counters with `_total`.
fn trainer_names() -> BTreeSet<String> {
    fn walk(dir: &Path, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for (i, _) in text.match_indices("\"frugal_trainer_") {
                    let name: String = text[i + 1..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                    out.insert(format!("{name}_total"));
                    out.insert(name);
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(&repo().join("trainer/src"), &mut out);
    out
}

/// An operator's exposition with a sample in every family.
fn operator_exposition() -> String {
    let m = Metrics::default();
    m.reconciles.get_or_create(&ResultLabels { result: "ok" }).inc();
    m.errors.get_or_create(&CategoryLabels { category: "kubernetes" }).inc();
    m.reaped.get_or_create(&KindLabels { kind: "Job" }).inc();
    m.policy_missing.get_or_create(&PolicyLabels { policy: "frugal-status".into() }).set(0);
    m.admissions
        .get_or_create(&AdmissionLabels { namespace: "ml".into(), budget: "team".into(), outcome: "queued", reason: "BudgetExhausted" })
        .inc();
    m.encode_snapshot(cluster())
}

#[test]
fn every_query_of_the_chart_names_series_that_are_exported() {
    let exported: BTreeSet<String> = sample_names(&operator_exposition()).into_iter().chain(trainer_names()).collect();
    assert!(exported.contains("frugal_trainer_mfu_ratio") && exported.contains("frugal_billed_cost_total"), "{exported:?}");
    let queries: Vec<String> = dashboard_queries().into_iter().chain(rules().into_iter().map(|r| r.expr)).collect();
    assert!(queries.len() >= 20, "read {} queries", queries.len());
    for q in &queries {
        let names = frugal_series(q);
        assert!(!names.is_empty(), "{q} names none of frugal's series");
        for name in names {
            assert!(exported.contains(&name), "{q} names {name}, which neither the operator nor the trainer exports");
        }
    }
}

#[test]
fn the_dashboard_shows_spend_gpus_waiting_jobs_and_training() {
    let queried: BTreeSet<String> = dashboard_queries().iter().flat_map(|q| frugal_series(q)).collect();
    for name in [
        "frugal_budget_spent_cost",
        "frugal_budget_limit_cost",
        "frugal_budget_spent_gpu_seconds",
        "frugal_budget_limit_gpu_seconds",
        "frugal_billed_cost_total",
        "frugal_billed_gpu_seconds_total",
        "frugal_budget_gpus_held",
        "frugal_budget_waiting_jobs",
        "frugal_budget_oldest_wait_seconds",
        "frugal_trainer_tokens_per_second",
        "frugal_trainer_mfu_ratio",
        "frugal_trainer_loss",
    ] {
        assert!(queried.contains(name), "no panel shows {name}");
    }
}

#[test]
fn the_rules_hold_the_five_alerts() {
    let alerts: Vec<String> = rules().into_iter().map(|r| r.alert).collect();
    assert_eq!(
        alerts,
        [
            "FrugalBudgetPast80Percent",
            "FrugalJobWaitingOnBudget",
            "FrugalTrainingJobStalled",
            "FrugalOperatorNotReconciling",
            "FrugalAdmissionPoliciesMissing"
        ]
    );
}

#[test]
fn names_are_read_from_queries_and_expositions() {
    let q = "sum by (le) (rate(frugal_operator_reconcile_duration_seconds_bucket{reason=\"frugal_x\"}[5m])) / frugal_a:b";
    assert_eq!(
        frugal_series(q).into_iter().collect::<Vec<_>>(),
        ["frugal_a:b", "frugal_operator_reconcile_duration_seconds_bucket", "frugal_x"],
        "a label value counts too: the checks err on the strict side"
    );
    let names = sample_names("# TYPE a counter\na_total{x=\"1\"} 2\nb 3\n# EOF\n");
    assert_eq!(names.into_iter().collect::<Vec<_>>(), ["a_total", "b"]);
}
