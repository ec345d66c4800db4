//! The TrainingBudget controller: keeps each budget's ledger (`status.jobs`) true to the
//! TrainingJobs that name it, counts what they spend, and starts each new period. The decisions
//! are pure functions in `budget`; `ledger` writes them, for this controller and for a
//! TrainingJob's pass that asks to start or release.

pub mod budget;
pub mod ledger;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, ResourceExt};
use tracing::warn;

use frugal_api::v1alpha1::{BudgetHolder, Phase};
use frugal_api::{TrainingBudget, TrainingJob};
use k8s_openapi::api::core::v1::Pod;

use crate::synced::Synced;
use budget::{Holder, Verdict};

/// The current time, as the API's types hold it.
pub(crate) fn now() -> Time {
    Time(Timestamp::now())
}

/// Why a budget pass failed; the error policy retries it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("the object has no {0}")]
    MissingMetadata(&'static str),
    #[error("the TrainingJob cache closed: the operator is stopping")]
    CacheClosed,
}

/// Everything the budgets' controller needs.
pub struct Context {
    pub client: Client,
    pub training_jobs: Store<DeserializeGuard<TrainingJob>>,
    /// The operator's pods: an entry stays while its job's pods hold GPUs.
    pub pods: Store<Pod>,
    /// The budgets, for which is its namespace's default.
    pub budgets: Store<TrainingBudget>,
    /// Whether `training_jobs` and `pods` hold their first full lists.
    pub synced: [Synced; 2],
    /// When each budget's status (by uid) was last written by its controller.
    pub written: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
    /// Whether a Kueue Workload (namespace, name, uid) is gone, when the admission check runs:
    /// a Workload's entry goes with it.
    pub workload_gone: Option<WorkloadGone>,
}

/// Tells whether the Workload of a ledger entry (namespace, name, uid) no longer exists.
pub type WorkloadGone = Arc<dyn Fn(&str, &str, &str) -> bool + Send + Sync>;

impl Context {
    pub fn new(
        client: Client,
        training_jobs: Store<DeserializeGuard<TrainingJob>>,
        pods: Store<Pod>,
        synced: [Synced; 2],
        budgets: Store<TrainingBudget>,
        workload_gone: Option<WorkloadGone>,
    ) -> Self {
        Self { client, training_jobs, pods, budgets, synced, written: Default::default(), workload_gone }
    }
}

/// How often a budget's spending alone is written back. Every billing pass of a job naming
/// the budget (one per running job every 15 s) wakes its controller; without this each would
/// cost a write. Anything else that changes (a job added or gone, GPUs held, the Exhausted
/// condition, a new period) is written at once.
pub const SPENDING_WRITE_INTERVAL: Duration = Duration::from_secs(30);

/// How soon a budget holding GPUs only for the pods of a job that is gone looks again.
const PODS_GONE_CHECK: Duration = Duration::from_secs(5);

/// The default budget of `namespace`: the oldest of its budgets with spec.namespaceDefault (by
/// creation time, then name).
pub fn namespace_default(namespace: &str, budgets: &[Arc<TrainingBudget>]) -> Option<String> {
    frugal_api::admission::namespace_default(namespace, budgets.iter().map(|b| b.as_ref()))
}

/// The budget a job is counted in: its namespace's default if there is one (a job that names
/// another is refused by its pass), else the one it names in spec.budget.budgetRef.
pub fn effective_budget(tj: &TrainingJob, budgets: &Store<TrainingBudget>) -> Option<String> {
    namespace_default(&tj.namespace()?, &budgets.state()).or_else(|| tj.spec.budget.budget_ref.clone())
}

/// The TrainingBudget a TrainingJob is counted in, if any.
pub fn budget_of(tj: &TrainingJob, budgets: &Store<TrainingBudget>) -> Option<ObjectRef<TrainingBudget>> {
    let name = effective_budget(tj, budgets)?;
    Some(ObjectRef::new(&name).within(&tj.namespace()?))
}

/// The jobs a change of budget `b` may let start: those counted in it that hold no entry in its
/// ledger and have not run to the end.
pub fn waiting_jobs(
    b: &TrainingBudget,
    jobs: &[Arc<DeserializeGuard<TrainingJob>>],
    budgets: &Store<TrainingBudget>,
) -> Vec<ObjectRef<DeserializeGuard<TrainingJob>>> {
    let held: Vec<&str> = b.status.iter().flat_map(|s| &s.jobs).map(|h| h.uid.as_str()).collect();
    // a budget that became its namespace's default (or stopped being it) concerns every job there
    let name = b.name_any();
    jobs.iter()
        .filter_map(|object| object.0.as_ref().ok().map(|tj| (object, tj)))
        .filter(|(_, tj)| {
            tj.namespace() == b.namespace()
                && (b.spec.namespace_default
                    || effective_budget(tj, budgets).as_deref() == Some(name.as_str())
                    || tj.spec.budget.budget_ref.as_deref() == Some(name.as_str()))
        })
        .filter(|(_, tj)| !held.contains(&tj.uid().unwrap_or_default().as_str()))
        .filter(|(_, tj)| !finished(tj))
        .map(|(object, _)| ObjectRef::from_obj(object.as_ref()))
        .collect()
}

/// Whether a job ran and finished: it holds no GPUs and asks for none again.
fn finished(tj: &TrainingJob) -> bool {
    tj.status.as_ref().is_some_and(|s| s.phase.is_some_and(Phase::is_terminal) && s.attempt.unwrap_or(0) > 0)
}

fn holder(tj: &TrainingJob, budget: &str, budgets: &Store<TrainingBudget>) -> Holder {
    let status = tj.status.as_ref();
    Holder {
        uid: tj.uid().unwrap_or_default(),
        names_budget: effective_budget(tj, budgets).as_deref() == Some(budget),
        finished: finished(tj),
        gpu_hours: status.and_then(|s| s.cost.as_ref()).map_or(0.0, |c| c.gpu_hours),
        cost: status.and_then(|s| s.cost.as_ref()).map_or(0.0, |c| c.cost),
    }
}

/// One pass of a TrainingBudget: [`budget::refresh`] against the cached TrainingJobs, one
/// status write if anything changed, and a wake-up when the next period begins.
pub async fn reconcile(b: Arc<TrainingBudget>, ctx: Arc<Context>) -> Result<Action, Error> {
    // every line a pass logs names its budget and namespace (the JSON log's `span`)
    let span = tracing::info_span!("reconcile", namespace = %b.namespace().unwrap_or_default(), budget = %b.name_any());
    tracing::Instrument::instrument(reconcile_budget(b, ctx), span).await
}

async fn reconcile_budget(b: Arc<TrainingBudget>, ctx: Arc<Context>) -> Result<Action, Error> {
    // an entry whose job or pods are missing from a cache still filling would be released by mistake
    for cache in &ctx.synced {
        cache.wait().await.map_err(|_| Error::CacheClosed)?;
    }
    let namespace = b.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let name = b.name_any();
    let now = now();
    // a job that does not decode counts as gone: its entry stays while its pods hold GPUs
    let decoded = |job: &str| ctx.training_jobs.get(&ObjectRef::new(job).within(&namespace)).and_then(|object| object.0.clone().ok());
    let find = |job: &str| decoded(job).map(|tj| holder(&tj, &name, &ctx.budgets));
    let pods_hold = |h: &BudgetHolder| !crate::pods::live_pods_of(&ctx.pods, &namespace, &h.name, &h.uid).is_empty();
    // an entry kept only by its pods (its job is gone or says it finished) is looked at again
    // soon: nothing else wakes this budget when those pods end
    let held_only_by_pods = b.status.iter().flat_map(|s| &s.jobs).any(|h| {
        let job = decoded(&h.name);
        let gone = job.as_ref().is_none_or(|tj| tj.uid().as_deref() != Some(h.uid.as_str()) || finished(tj));
        gone && pods_hold(h)
    });
    let workload_gone = |h: &BudgetHolder| ctx.workload_gone.as_ref().is_some_and(|gone| gone(&namespace, &h.name, &h.uid));
    if let Verdict::Write(status) = budget::refresh(&b, find, pods_hold, workload_gone, &now) {
        let uid = b.uid().unwrap_or_default();
        let since = ctx.written.lock().unwrap().get(&uid).map(|t| t.elapsed());
        if budget::only_spending_changed(&b.status.clone().unwrap_or_default(), &status)
            && let Some(since) = since.filter(|s| *s < SPENDING_WRITE_INTERVAL)
        {
            // counted by a later pass: the jobs' bills keep what they spent
            return Ok(Action::requeue(SPENDING_WRITE_INTERVAL - since));
        }
        let api: Api<TrainingBudget> = Api::namespaced(ctx.client.clone(), &namespace);
        // on a conflict the error policy requeues, and the next pass reads the newer budget
        ledger::write(&api, &b, *status).await?;
        ctx.written.lock().unwrap().insert(uid, std::time::Instant::now());
    }
    let created = b.metadata.creation_timestamp.clone().unwrap_or_else(|| now.clone());
    let next_period = budget::until_next_period(&created, b.spec.period, &now);
    Ok(Action::requeue(if held_only_by_pods { next_period.min(PODS_GONE_CHECK) } else { next_period }))
}

pub fn error_policy(b: Arc<TrainingBudget>, error: &Error, _ctx: Arc<Context>) -> Action {
    warn!(budget = %b.name_any(), "budget pass failed: {error}");
    Action::requeue(Duration::from_secs(if matches!(error, Error::Kube(e) if ledger::is_conflict(e)) { 1 } else { 5 }))
}
