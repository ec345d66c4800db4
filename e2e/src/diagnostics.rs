//! What a failed test prints: the namespace's pods and events, and the operator's log.

use std::fmt::Write as _;

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt as _};

/// Lines of the operator log printed on failure.
const OPERATOR_LOG_LINES: usize = 200;

/// Prints everything useful about `namespace` to stderr. Never fails: a diagnostic that cannot
/// be fetched is reported in place.
pub async fn dump(client: &Client, namespace: &str) {
    let mut out = String::new();
    let _ = writeln!(out, "===== e2e diagnostics for namespace {namespace} =====");
    out.push_str(&pods(client, namespace).await);
    out.push_str(&events(client, namespace).await);
    out.push_str(&operator_log());
    out.push_str(&namespace_operator_log(namespace));
    out.push_str(&container_logs(client, namespace).await);
    let _ = writeln!(out, "===== end of diagnostics =====");
    eprint!("{out}");
}

async fn pods(client: &Client, namespace: &str) -> String {
    let mut out = String::from("--- pods ---\n");
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    match pods.list(&ListParams::default()).await {
        Err(e) => {
            let _ = writeln!(out, "(listing pods failed: {e})");
        }
        Ok(list) if list.items.is_empty() => out.push_str("(none)\n"),
        Ok(list) => {
            for pod in list {
                let _ = writeln!(out, "{}", describe_pod(&pod));
            }
        }
    }
    out
}

/// One pod in a few lines: phase, node, labels, annotations, conditions and container states.
pub fn describe_pod(pod: &Pod) -> String {
    let mut out = String::new();
    let status = pod.status.clone().unwrap_or_default();
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_else(|| "-".into());
    let _ = writeln!(
        out,
        "{} phase={} node={node} labels={:?} annotations={:?}",
        pod.name_any(),
        status.phase.as_deref().unwrap_or("-"),
        pod.labels(),
        pod.annotations()
    );
    for c in status.conditions.unwrap_or_default() {
        let _ =
            writeln!(out, "  condition {}={} reason={} message={}", c.type_, c.status, c.reason.unwrap_or_default(), c.message.unwrap_or_default());
    }
    for cs in status.container_statuses.unwrap_or_default() {
        let _ = writeln!(out, "  container {} ready={} state={:?}", cs.name, cs.ready, cs.state);
    }
    out.trim_end().to_string()
}

async fn events(client: &Client, namespace: &str) -> String {
    let mut out = String::from("--- events ---\n");
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    match events.list(&ListParams::default()).await {
        Err(e) => {
            let _ = writeln!(out, "(listing events failed: {e})");
        }
        Ok(list) if list.items.is_empty() => out.push_str("(none)\n"),
        Ok(list) => {
            let mut items = list.items;
            items.sort_by_key(|e| e.last_timestamp.as_ref().map(|t| t.0).or_else(|| e.event_time.as_ref().map(|t| t.0)));
            for e in items {
                let obj = &e.involved_object;
                let _ = writeln!(
                    out,
                    "{} {}/{}: {} {} (x{})",
                    e.type_.as_deref().unwrap_or("-"),
                    obj.kind.as_deref().unwrap_or("-"),
                    obj.name.as_deref().unwrap_or("-"),
                    e.reason.as_deref().unwrap_or("-"),
                    e.message.as_deref().unwrap_or(""),
                    e.count.unwrap_or(1)
                );
            }
        }
    }
    out
}

fn operator_log() -> String {
    let Ok(path) = std::env::var("FRUGAL_OPERATOR_LOG") else {
        return "--- operator log: FRUGAL_OPERATOR_LOG not set ---\n".into();
    };
    match std::fs::read_to_string(&path) {
        Err(e) => format!("--- operator log {path}: cannot read: {e} ---\n"),
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(OPERATOR_LOG_LINES)..];
            format!("--- operator log {path} (last {} of {} lines) ---\n{}\n", tail.len(), lines.len(), tail.join("\n"))
        }
    }
}

/// The log of an operator a test started for its own namespace ([`crate::operator`]), if any.
fn namespace_operator_log(namespace: &str) -> String {
    let path = crate::operator::log_path(namespace);
    match std::fs::read_to_string(&path) {
        Err(_) => String::new(),
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(OPERATOR_LOG_LINES)..];
            format!("--- operator log {} (last {} of {} lines) ---\n{}\n", path.display(), tail.len(), lines.len(), tail.join("\n"))
        }
    }
}

/// The last lines of every container of this namespace's pods on the real node (through the
/// API server, which asks the kubelet).
async fn container_logs(client: &Client, namespace: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let Ok(list) = pods.list(&ListParams::default()).await else {
        return String::new();
    };
    let mut out = String::new();
    for pod in list {
        let on_real_node = pod.spec.as_ref().and_then(|s| s.node_selector.as_ref()).is_some_and(|s| s.contains_key(crate::node::REAL_NODE_LABEL.0))
            || pod.labels().contains_key("app.kubernetes.io/instance");
        if !on_real_node {
            continue;
        }
        for c in pod.spec.as_ref().map(|s| s.containers.clone()).unwrap_or_default() {
            let params = kube::api::LogParams { container: Some(c.name.clone()), tail_lines: Some(OPERATOR_LOG_LINES as i64), ..Default::default() };
            let text = pods.logs(&pod.name_any(), &params).await.unwrap_or_else(|e| format!("(no log: {e})"));
            let _ = writeln!(out, "--- container log {}/{} ---\n{text}", pod.name_any(), c.name);
        }
    }
    out
}
