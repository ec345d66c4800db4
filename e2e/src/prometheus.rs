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

#[cfg(test)]
mod tests {
    use super::*;

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
