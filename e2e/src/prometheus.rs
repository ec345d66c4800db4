//! Prometheus from the tests' side: scraping the operator's `/metrics`, reading an exposition's
//! samples, Prometheus's own `promtool` (built from its Go module into the cluster's binary cache,
//! on PATH from scripts/e2e.sh), and the PromQL the chart ships (its dashboard and alerts).

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};

/// `GET /metrics` of the server at `addr`: the exposition.
pub fn scrape(addr: SocketAddr) -> Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    // HTTP/1.0: the answer is the body up to the end of the stream, never chunked
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let (head, body) = answer.split_once("\r\n\r\n").context("an HTTP answer without a body")?;
    ensure!(head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"), "GET /metrics of {addr}: {head}");
    Ok(body.to_string())
}

/// One sample of an exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// The samples of an OpenMetrics or Prometheus text exposition (label values without escaped
/// quotes, as frugal's are).
pub fn samples(exposition: &str) -> Result<Vec<Sample>> {
    let mut out = Vec::new();
    for line in exposition.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').with_context(|| format!("a sample without a value: {line}"))?;
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.strip_suffix('}').with_context(|| format!("unclosed labels: {line}"))?),
            None => (series, ""),
        };
        let mut parsed = BTreeMap::new();
        for pair in labels.split("\",").filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once("=\"").with_context(|| format!("a label without a value: {line}"))?;
            parsed.insert(k.to_string(), v.trim_end_matches('"').to_string());
        }
        let value = value.parse().with_context(|| format!("not a number: {line}"))?;
        out.push(Sample { name: name.to_string(), labels: parsed, value });
    }
    Ok(out)
}

/// The sum of the samples of `name` whose labels include all of `matching`.
pub fn sum(samples: &[Sample], name: &str, matching: &[(&str, &str)]) -> f64 {
    samples.iter().filter(|s| s.name == name && matching.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))).map(|s| s.value).sum()
}

/// Runs `promtool` (from PATH, as scripts/e2e.sh sets it) with `stdin`; its output.
pub fn promtool(args: &[&str], stdin: Option<&str>) -> Result<String> {
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running promtool (scripts/e2e.sh puts it on PATH; e2e/cluster/build builds it)")?;
    if let Some(text) = stdin {
        child.stdin.take().unwrap().write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("promtool {} failed ({}):\n{text}", args.join(" "), out.status);
    }
    Ok(text)
}

/// The chart's dashboard as Grafana loads it.
pub fn dashboard() -> Result<serde_json::Value> {
    let path = crate::repo_root().join("charts/frugal/files/dashboards/frugal-spend.json");
    serde_json::from_str(&std::fs::read_to_string(&path)?).with_context(|| format!("{} is not JSON", path.display()))
}

/// The PromQL of the dashboard's panels (its variables' `label_values(...)` are Grafana's, not
/// PromQL), with Grafana's variables replaced by what Prometheus would be sent.
pub fn dashboard_queries() -> Result<Vec<String>> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => m.iter().for_each(|(k, v)| match (k.as_str(), v.as_str()) {
                ("expr", Some(q)) => out.push(q.to_string()),
                _ => walk(v, out),
            }),
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&dashboard()?, &mut out);
    let grafana = [("$__rate_interval", "2m"), ("$__range", "24h"), ("$namespace", ".*"), ("$training_job", ".*")];
    Ok(out.into_iter().map(|q| grafana.iter().fold(q, |q, (var, value)| q.replace(var, value))).collect())
}

/// The chart's rule file (`files/prometheus-rules.yaml`, the PrometheusRule's spec).
pub fn rule_file() -> std::path::PathBuf {
    crate::repo_root().join("charts/frugal/files/prometheus-rules.yaml")
}

/// The expressions of the chart's alerts.
pub fn rule_queries() -> Result<Vec<String>> {
    let file: serde_json::Value = serde_saphyr::from_str(&std::fs::read_to_string(rule_file())?)?;
    let rules = file["groups"].as_array().context("no groups")?.iter().flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default());
    rules.map(|r| r["expr"].as_str().map(String::from).context("a rule without expr")).collect()
}

/// The names of the chart's alerts.
pub fn alert_names() -> Result<Vec<String>> {
    let file: serde_json::Value = serde_saphyr::from_str(&std::fs::read_to_string(rule_file())?)?;
    let rules = file["groups"].as_array().context("no groups")?.iter().flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default());
    rules.map(|r| r["alert"].as_str().map(String::from).context("a rule without alert")).collect()
}

/// One target's scrapes as Prometheus would hold them.
#[derive(Debug, Default, Clone)]
pub struct Scraped<'a> {
    /// A scrape some seconds before `later`, if there is one.
    pub earlier: Option<&'a str>,
    pub later: &'a str,
    /// The labels Prometheus adds to the target's series (a PodMonitor's `namespace`, `pod`).
    pub target: Vec<(&'a str, &'a str)>,
}

impl<'a> Scraped<'a> {
    pub fn once(exposition: &'a str) -> Self {
        Self { later: exposition, ..Default::default() }
    }
}

/// Has Prometheus's own evaluator (promtool's rule tester) answer `queries` and the chart's
/// alerts over `scrapes` as if each target had been scraped every minute for 30 minutes: a
/// series in both scrapes of a target going from its earlier value to its later one, a counter
/// (`_total`, `_count`, `_sum`, `_bucket`) scraped once rising from 0 to its value, any other
/// series scraped once as it was. Fails, with promtool's account of what it got, when a query
/// gives no series at the end or an alert other than `firing` fires; each of `firing` must fire.
pub fn evaluate(scrapes: &[Scraped], queries: &[String], firing: &[&str]) -> Result<()> {
    const MINUTES: u32 = 30;
    let mut series = Vec::new();
    for scraped in scrapes {
        let earlier = scraped.earlier.map(samples).transpose()?.unwrap_or_default();
        for s in samples(scraped.later)? {
            let mut labels = s.labels.clone();
            labels.extend(scraped.target.iter().map(|(k, v)| (k.to_string(), v.to_string())));
            let before = earlier.iter().find(|e| e.name == s.name && e.labels == s.labels).map(|e| e.value);
            let rising = ["_total", "_count", "_sum", "_bucket"].iter().any(|x| s.name.ends_with(x));
            let start = match before {
                Some(v) => v,
                None if rising => 0.0,
                None => s.value,
            };
            if !(start.is_finite() && s.value.is_finite()) {
                continue;
            }
            let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
            // promtool's notation: `a+bxn` rising, `a-bxn` falling (a loss), `a+0xn` flat
            let step = (s.value - start) / f64::from(MINUTES);
            let values = if step < 0.0 { format!("{start}-{}x{MINUTES}", -step) } else { format!("{start}+{step}x{MINUTES}") };
            series.push(serde_json::json!({"series": format!("{}{{{}}}", s.name, labels.join(",")), "values": values}));
        }
    }
    let empty: Vec<serde_json::Value> = queries
        .iter()
        .enumerate()
        .map(|(i, q)| serde_json::json!({"alert": "FrugalTestQueryEmpty", "expr": format!("absent({q})"), "labels": {"query": i.to_string()}}))
        .collect();
    let dir = std::env::temp_dir().join(format!("frugal-promql-{}-{}", std::process::id(), series.len()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("queries.yaml"), serde_saphyr::to_string(&serde_json::json!({"groups": [{"name": "queries", "rules": empty}]}))?)?;
    std::fs::copy(rule_file(), dir.join("chart.yaml"))?;
    let eval_time = format!("{MINUTES}m");
    let mut alerts = vec![serde_json::json!({"eval_time": eval_time, "alertname": "FrugalTestQueryEmpty", "exp_alerts": []})];
    for name in alert_names()? {
        if !firing.contains(&name.as_str()) {
            alerts.push(serde_json::json!({"eval_time": eval_time, "alertname": name, "exp_alerts": []}));
        }
    }
    let test = serde_json::json!({
        "rule_files": ["queries.yaml", "chart.yaml"],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "alert_rule_test": alerts}],
    });
    let file = dir.join("test.yaml");
    let result = run_rule_tests(&file, &test, queries, firing, &eval_time);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_rule_tests(file: &std::path::Path, test: &serde_json::Value, queries: &[String], firing: &[&str], eval_time: &str) -> Result<()> {
    std::fs::write(file, serde_saphyr::to_string(test)?)?;
    let out = promtool(&["test", "rules", file.to_str().unwrap()], None).map_err(|e| {
        let numbered: Vec<String> = queries.iter().enumerate().map(|(i, q)| format!("  query {i}: {q}")).collect();
        anyhow::anyhow!("{e:#}\n(an alert FrugalTestQueryEmpty names a query that gave no series:)\n{}", numbered.join("\n"))
    })?;
    ensure!(out.contains("SUCCESS"), "{out}");
    // each alert said to fire does: promtool fails a test that expects none of it
    for name in firing {
        let mut only = test.clone();
        only["tests"][0]["alert_rule_test"] = serde_json::json!([{"eval_time": eval_time, "alertname": name, "exp_alerts": []}]);
        std::fs::write(file, serde_saphyr::to_string(&only)?)?;
        ensure!(promtool(&["test", "rules", file.to_str().unwrap()], None).is_err(), "{name} does not fire on these series");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs promtool on PATH (scripts/e2e.sh), as every e2e test needs FRUGAL_E2E=1.
    #[test]
    fn the_evaluator_finds_empty_queries_and_fires_the_alerts_the_series_call_for() {
        if !crate::enabled() {
            eprintln!("e2e: skipping the evaluator's test: set FRUGAL_E2E=1 (scripts/e2e.sh puts promtool on PATH)");
            return;
        }
        let spent = "frugal_budget_spent_gpu_seconds{namespace=\"ml\",budget=\"team\"} 3500\n\
                     frugal_budget_limit_gpu_seconds{namespace=\"ml\",budget=\"team\"} 3600\n\
                     frugal_operator_reconcile_duration_seconds_count 40\n";
        let query = ["sum by (budget) (frugal_budget_spent_gpu_seconds) / 3600".to_string()];
        let spent = [Scraped::once(spent)];
        evaluate(&spent, &query, &["FrugalBudgetPast80Percent"]).unwrap();
        let e = evaluate(&spent, &query, &[]).unwrap_err().to_string();
        assert!(e.contains("FrugalBudgetPast80Percent"), "an alert that fires and was not expected: {e}");
        let e = evaluate(&spent, &["frugal_nobody_exports_this".to_string()], &["FrugalBudgetPast80Percent"]).unwrap_err().to_string();
        assert!(e.contains("FrugalTestQueryEmpty") && e.contains("query 0: frugal_nobody_exports_this"), "{e}");
        let calm = spent[0].later.replace("3500", "100");
        let e = evaluate(&[Scraped::once(&calm)], &query, &["FrugalBudgetPast80Percent"]).unwrap_err().to_string();
        assert!(e.contains("does not fire"), "{e}");
        // a trainer whose step did not move between two scrapes is stalled; one whose step did is not
        let step = |n: u32| {
            // the loss falls as the step rises
            let loss = 5.0 - f64::from(n) / 20.0;
            format!(
                "frugal_trainer_step{{training_job=\"lm\"}} {n}\nfrugal_trainer_loss{{training_job=\"lm\"}} {loss}\nfrugal_operator_reconcile_duration_seconds_count 40\n"
            )
        };
        let (before, moved, still) = (step(10), step(40), step(10));
        let target = vec![("namespace", "ml"), ("pod", "lm-a1-0")];
        let moved = Scraped { earlier: Some(&before), later: &moved, target: target.clone() };
        evaluate(&[moved], &["frugal_trainer_step{namespace=\"ml\"}".to_string(), "frugal_trainer_loss < 4".to_string()], &[]).unwrap();
        let still = Scraped { earlier: Some(&before), later: &still, target };
        evaluate(&[still], &[], &["FrugalTrainingJobStalled"]).unwrap();
    }

    #[test]
    fn samples_are_read_with_their_labels() {
        let text = "# TYPE a counter\na_total{ns=\"x\",budget=\"\"} 2.5\nb 3\n# EOF\n";
        let s = samples(text).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].labels.get("budget").map(String::as_str), Some(""));
        assert_eq!(sum(&s, "a_total", &[("ns", "x")]), 2.5);
        assert_eq!(sum(&s, "a_total", &[("ns", "y")]), 0.0);
        assert_eq!(sum(&s, "b", &[]), 3.0);
    }

    #[test]
    fn the_chart_queries_are_read() {
        let dashboard = dashboard_queries().unwrap();
        assert!(dashboard.len() >= 15 && dashboard.iter().all(|q| !q.contains('$')), "{dashboard:#?}");
        assert_eq!(rule_queries().unwrap().len(), 5);
    }
}
