//! Whether the admission policies the chart installs are in force. Without them a trainer's
//! identity could write any field of its job's status and namespace users could write the
//! operator's status of both kinds, so the operator checks at start and now and then that the
//! API server has each one it was told of (`--admission-policy`), exports the result as a metric
//! and, while one is missing, says so in a condition on every job it reconciles.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding};
use kube::{Api, Client};
use tracing::{info, warn};

use crate::metrics::{Metrics, PolicyLabels};

/// How often the policies are looked for again, while all are there and while one is missing
/// (a Helm install creates them beside the operator's Deployment: the first look may come first).
pub const CHECK_INTERVAL: Duration = Duration::from_secs(60);
pub const CHECK_INTERVAL_MISSING: Duration = Duration::from_secs(10);

/// The policies found missing at the last check, shared with the TrainingJob passes.
#[derive(Clone, Default)]
pub struct Missing(Arc<RwLock<Vec<String>>>);

impl Missing {
    pub fn get(&self) -> Vec<String> {
        self.0.read().unwrap().clone()
    }
    fn set(&self, missing: Vec<String>) -> bool {
        let mut current = self.0.write().unwrap();
        let changed = *current != missing;
        *current = missing;
        changed
    }
}

/// The message of the condition that says which policies are missing.
pub fn message(missing: &[String]) -> String {
    format!(
        "the API server does not enforce the frugal chart's admission policies {} (a ValidatingAdmissionPolicy and its binding each): without them a trainer's identity may write any field of its job's status, and anyone RBAC lets may rewrite the operator's status of TrainingJobs and TrainingBudgets; install the chart's admissionPolicies, or ask your cluster admin",
        missing.join(", ")
    )
}

/// Each of `names` whose policy or binding (of the same name) the API server does not have, or
/// that cannot be read (the operator's identity may not: then nothing says it is there).
async fn check(client: &Client, names: &[String]) -> Vec<String> {
    let policies: Api<ValidatingAdmissionPolicy> = Api::all(client.clone());
    let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(client.clone());
    let mut missing = Vec::new();
    for name in names {
        let found = match (policies.get_metadata_opt(name).await, bindings.get_metadata_opt(name).await) {
            (Ok(p), Ok(b)) => p.is_some() && b.is_some(),
            (Err(e), _) | (_, Err(e)) => {
                warn!(policy = %name, "cannot read the admission policy: {e}");
                false
            }
        };
        if !found {
            missing.push(name.clone());
        }
    }
    missing
}

/// Looks once: records what is missing in `missing` and the metric, and says it in the log on the
/// `first` look and on a change; true when the set of missing policies changed.
async fn look(client: &Client, names: &[String], missing: &Missing, metrics: &Metrics, first: bool) -> bool {
    let now_missing = check(client, names).await;
    for name in names {
        metrics.policy_missing.get_or_create(&PolicyLabels { policy: name.clone() }).set(i64::from(now_missing.contains(name)));
    }
    let changed = missing.set(now_missing.clone());
    if changed || first {
        if now_missing.is_empty() {
            info!(policies = ?names, "the chart's admission policies are in force");
        } else {
            warn!(missing = ?now_missing, "{}", message(&now_missing));
        }
    }
    changed
}

/// The first look, before any job is reconciled: a missing policy is said from the first pass.
pub async fn first_check(client: &Client, names: &[String], missing: &Missing, metrics: &Metrics) {
    if !names.is_empty() {
        look(client, names, missing, metrics, true).await;
    }
}

/// Looks every [`CHECK_INTERVAL`] (every [`CHECK_INTERVAL_MISSING`] while one is missing) after
/// the [`first_check`], until `shutdown`; `changed` is told when the set of missing policies
/// changes (so that every job is reconciled and says it).
pub async fn watch(
    client: Client,
    names: Vec<String>,
    missing: Missing,
    metrics: Arc<Metrics>,
    changed: futures::channel::mpsc::UnboundedSender<()>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    if names.is_empty() {
        return;
    }
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let interval = if missing.get().is_empty() { CHECK_INTERVAL } else { CHECK_INTERVAL_MISSING };
        tokio::select! {
            _ = tokio::time::sleep(interval) => {},
            _ = &mut shutdown => return,
        }
        if look(&client, &names, &missing, &metrics, false).await {
            let _ = changed.unbounded_send(());
        }
    }
}
