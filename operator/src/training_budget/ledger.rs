//! The Kubernetes side of TrainingBudgets, kept thin: read a budget, let `budget` decide, write
//! its status with the resourceVersion it was read at. A write that loses a race (409 Conflict)
//! reads the budget again and decides again, so two jobs reconciled at once can never both take
//! the last GPUs: the budget's status is the ledger, and the API server serializes its writes.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, ResourceExt};
use tracing::{info, warn};

use frugal_api::v1alpha1::TrainingBudgetStatus;
use frugal_api::{TrainingBudget, TrainingJob};

use crate::budget::{self, Claim, Demand, Holder, Verdict, Wait};
use crate::error::Error;
use crate::names::FIELD_MANAGER;
use crate::status::is_terminal;

/// Reads and decisions a pass makes before it gives up on a contended ledger and backs off.
const TRIES: usize = 8;

fn now() -> Time {
    Time(Timestamp::now())
}

/// Whether the job may go on (create or keep its children), or must wait, Queued.
#[derive(Debug, Clone, PartialEq)]
pub enum Admission {
    Go,
    Wait(Wait),
}

async fn write(api: &Api<TrainingBudget>, budget: &TrainingBudget, status: TrainingBudgetStatus) -> Result<(), kube::Error> {
    let mut updated = budget.clone();
    updated.status = Some(status);
    // a replace carries metadata.resourceVersion: the API server refuses it (409) if the
    // budget changed since it was read
    let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    api.replace_status(&budget.name_any(), &params, &updated).await?;
    Ok(())
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// Makes budget `name`'s ledger say what `demand` asks for `job`, before any child is created.
/// Always reads the budget from the API server, not a cache: a stale copy could show an entry
/// already released and let the job start unrecorded.
pub async fn settle(client: &Client, namespace: &str, name: &str, job: &Claim<'_>, demand: Demand) -> Result<Admission, Error> {
    let api: Api<TrainingBudget> = Api::namespaced(client.clone(), namespace);
    let mut last = None;
    for _ in 0..TRIES {
        let Some(b) = api.get_opt(name).await? else {
            return Ok(match demand {
                Demand::Start => Admission::Wait(budget::not_found(name, namespace)),
                // nothing to release; a live attempt goes on and is recorded once the budget exists
                Demand::Release | Demand::Hold => Admission::Go,
            });
        };
        match budget::settle(&b, job, demand, &now()) {
            Verdict::Unchanged => return Ok(Admission::Go),
            Verdict::Wait(w) => return Ok(Admission::Wait(w)),
            Verdict::Refuse(e) => return Err(crate::admit::AdmitError::from(e).into()),
            Verdict::Write(status) => {
                let gpus_in_use = status.gpus_in_use;
                match write(&api, &b, *status).await {
                    Ok(()) => {
                        info!(budget = name, ?demand, gpus = job.gpus, gpus_in_use, "ledger written");
                        return Ok(Admission::Go);
                    }
                    Err(e) if is_conflict(&e) => {
                        info!(budget = name, "the budget changed since it was read (409 Conflict); reading it again");
                        last = Some(e);
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Err(last.expect("a conflict was recorded").into())
}

/// Everything the budgets' controller needs.
pub struct BudgetContext {
    pub client: Client,
    pub training_jobs: Store<TrainingJob>,
    /// Whether `training_jobs` holds its first full list.
    pub synced: crate::synced::Synced,
    /// When each budget's status (by uid) was last written by its controller.
    pub written: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

impl BudgetContext {
    pub fn new(client: Client, training_jobs: Store<TrainingJob>, synced: crate::synced::Synced) -> Self {
        Self { client, training_jobs, synced, written: Default::default() }
    }
}

/// How often a budget's spending alone is written back. Every status report of a job naming
/// the budget (one per job every few seconds) wakes its controller; without this each would
/// cost a write. Anything else that changes (a job added or gone, GPUs held, the Exhausted
/// condition, a new period) is written at once.
pub const SPENDING_WRITE_INTERVAL: Duration = Duration::from_secs(30);

/// The TrainingBudget a TrainingJob names, if any.
pub fn budget_of(tj: &TrainingJob) -> Option<ObjectRef<TrainingBudget>> {
    let name = tj.spec.budget.budget_ref.as_deref()?;
    Some(ObjectRef::new(name).within(&tj.namespace()?))
}

/// The jobs a change of budget `b` may let start: those naming it that hold no entry in its
/// ledger and have not run to the end.
pub fn waiting_jobs(b: &TrainingBudget, jobs: &[Arc<TrainingJob>]) -> Vec<ObjectRef<TrainingJob>> {
    let held: Vec<&str> = b.status.iter().flat_map(|s| &s.jobs).map(|h| h.uid.as_str()).collect();
    jobs.iter()
        .filter(|tj| tj.namespace() == b.namespace() && tj.spec.budget.budget_ref.as_deref() == Some(b.name_any().as_str()))
        .filter(|tj| !held.contains(&tj.uid().unwrap_or_default().as_str()))
        .filter(|tj| !tj.status.as_ref().is_some_and(|s| is_terminal(s.phase) && s.attempt.unwrap_or(0) > 0))
        .map(|tj| ObjectRef::from_obj(tj.as_ref()))
        .collect()
}

fn holder(tj: &TrainingJob, budget: &str) -> Holder {
    let status = tj.status.as_ref();
    Holder {
        uid: tj.uid().unwrap_or_default(),
        names_budget: tj.spec.budget.budget_ref.as_deref() == Some(budget),
        finished: status.is_some_and(|s| is_terminal(s.phase) && s.attempt.unwrap_or(0) > 0),
        gpu_type: tj.spec.resources.gpu_type.clone(),
        gpu_hours: status.and_then(|s| s.cost.as_ref()).map_or(0.0, |c| c.gpu_hours),
    }
}

/// One pass of a TrainingBudget: [`budget::refresh`] against the cached TrainingJobs, one
/// status write if anything changed, and a wake-up when the next period begins.
pub async fn reconcile(b: Arc<TrainingBudget>, ctx: Arc<BudgetContext>) -> Result<Action, Error> {
    // an entry whose job is missing from a cache still filling would be released by mistake
    ctx.synced.wait().await?;
    let namespace = b.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    let name = b.name_any();
    let now = now();
    let find = |job: &str| ctx.training_jobs.get(&ObjectRef::new(job).within(&namespace)).map(|tj| holder(&tj, &name));
    if let Verdict::Write(status) = budget::refresh(&b, find, &now) {
        let uid = b.uid().unwrap_or_default();
        let since = ctx.written.lock().unwrap().get(&uid).map(|t| t.elapsed());
        if budget::only_spending_changed(&b.status.clone().unwrap_or_default(), &status)
            && let Some(since) = since.filter(|s| *s < SPENDING_WRITE_INTERVAL)
        {
            // counted by a later pass: the jobs' reports keep what they spent
            return Ok(Action::requeue(SPENDING_WRITE_INTERVAL - since));
        }
        let api: Api<TrainingBudget> = Api::namespaced(ctx.client.clone(), &namespace);
        // on a conflict the error policy requeues, and the next pass reads the newer budget
        write(&api, &b, *status).await?;
        ctx.written.lock().unwrap().insert(uid, std::time::Instant::now());
    }
    let created = b.metadata.creation_timestamp.clone().unwrap_or_else(|| now.clone());
    Ok(Action::requeue(budget::until_next_period(&created, b.spec.period, &now)))
}

pub fn error_policy(b: Arc<TrainingBudget>, error: &Error, _ctx: Arc<BudgetContext>) -> Action {
    warn!(budget = %b.name_any(), "budget pass failed: {error}");
    Action::requeue(Duration::from_secs(if matches!(error, Error::Kube(e) if is_conflict(e)) { 1 } else { 5 }))
}
