//! The TrainingJob controller. `reconcile` holds the finalizer: a deleted job's pass is
//! `cleanup`; any other's runs the stages in the order `run_stages` gives (the one place it is
//! written), each a module of its own here, and `finish` writes their outcome. The manager
//! (`manager.rs`) wires it to the caches it reads.

pub mod admit;
pub mod apply;
pub mod bill;
pub mod charge;
pub mod children;
pub mod cleanup;
pub mod error;
pub mod lifecycle;
pub mod observe;
pub mod plan;
pub mod rejection;
pub mod status;
pub mod validate;

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ObjectReference, PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::Store;
use kube::{Api, Client, Resource, ResourceExt};
use tracing::{Instrument, debug, info, info_span, warn};

use frugal_api::v1alpha1::{Phase, TrainingJobStatus};
use frugal_api::{TrainingBudget, TrainingJob};

use crate::conditions::reasons;
use crate::metrics::{Backoff, CategoryLabels, Metrics, ResultLabels};
use crate::names::{FINALIZER, Names};
use crate::settings::Settings;
use admit::AdmitError;
use charge::Charged;
use error::Error;
use lifecycle::Inputs;
use plan::PlannedJob;
use status::Summary;

/// A TrainingJob as its cache holds it: the job, or, for an object that does not decode as one,
/// its metadata and the error. One such object is reported by its own pass and waits for a
/// change; it does not stop the watch, and so the other jobs, from being reconciled.
pub type CachedJob = DeserializeGuard<TrainingJob>;

/// What a pass works with: the client, the operator's settings, the caches of its Jobs and pods,
/// the metrics, the event recorder, the per-job backoff, and what was last applied.
pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub jobs: Store<Job>,
    pub pods: Store<Pod>,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    pub backoff: Backoff,
    pub applied: apply::AppliedChildren,
    /// Whether the Job and pod caches hold their first full list: a pod missing from a cache
    /// still filling would be billed as gone.
    pub synced: [crate::synced::Synced; 3],
    /// The TrainingBudgets, for the namespace's default.
    pub budgets: Store<TrainingBudget>,
    /// The GPU product label of each node the job's pods ran on (None: no label, or the node
    /// cannot be read), read once per node.
    pub gpu_products: std::sync::Mutex<std::collections::HashMap<String, Option<String>>>,
    /// The chart's admission policies the API server lacks, as last checked.
    pub policies_missing: crate::policies::Missing,
    /// GPU-hours of the bill this process last wrote into each job's status, by uid: a pass
    /// whose cached status bills less reads a cache that has not yet seen that write, and
    /// billing from it would lower a pod's end (it waits for the cache instead).
    pub written_bills: std::sync::Mutex<std::collections::HashMap<String, f64>>,
}

impl Context {
    /// Remembers the bill of a status just written for job `uid`.
    pub fn wrote_bill(&self, uid: &str, status: &TrainingJobStatus) {
        if let Some(cost) = &status.cost {
            self.written_bills.lock().unwrap().insert(uid.to_string(), cost.gpu_hours);
        }
    }

    /// Whether `prev`, job `uid`'s status as cached, bills less than this process last wrote.
    pub fn stale_bill(&self, uid: &str, prev: &TrainingJobStatus) -> bool {
        let cached = prev.cost.as_ref().map_or(0.0, |c| c.gpu_hours);
        self.written_bills.lock().unwrap().get(uid).is_some_and(|written| cached < *written)
    }
}

/// How often a job whose child's name another object holds looks again.
const NAME_TAKEN_RECHECK: Duration = Duration::from_secs(30);

fn now() -> Time {
    Time(Timestamp::now())
}

/// The job in a cached object, or why it cannot be read.
fn decoded(object: &CachedJob) -> Result<Arc<TrainingJob>, Error> {
    object.0.as_ref().map(|tj| Arc::new(tj.clone())).map_err(|invalid| Error::Undecodable(invalid.error.clone()))
}

/// One reconcile pass of one TrainingJob.
pub async fn reconcile(object: Arc<CachedJob>, ctx: Arc<Context>) -> Result<Action, Error> {
    let tj = match decoded(&object) {
        Ok(tj) => tj,
        Err(e) => {
            report_undecodable(&ctx, &object, &e).await;
            return Err(e);
        }
    };
    let key = format!("{}/{}", tj.namespace().unwrap_or_default(), tj.name_any());
    // every line a pass logs names its TrainingJob and namespace (the JSON log's `span`)
    let span = info_span!("reconcile", namespace = %tj.namespace().unwrap_or_default(), job = %tj.name_any());
    let started = Instant::now();
    let result = async {
        for cache in &ctx.synced {
            cache.wait().await.map_err(|_| Error::CacheClosed)?;
        }
        // Deleting a job stops it first: its finalizer is removed only once its pods are gone,
        // billed and released from its budget (`cleanup`), however it was deleted.
        let api: Api<TrainingJob> = Api::namespaced(ctx.client.clone(), &tj.namespace().unwrap_or_default());
        finalizer(&api, FINALIZER, tj, |event| async {
            match event {
                FinalizerEvent::Apply(tj) => {
                    let prev = tj.status.clone().unwrap_or_default();
                    let outcome = run_stages(&tj, &ctx, &prev).await;
                    finish(&tj, &ctx, &prev, outcome).await
                }
                FinalizerEvent::Cleanup(tj) => cleanup::cleanup(&tj, &ctx).await,
            }
        })
        .await
        .map_err(Error::from)
    }
    .instrument(span.clone())
    .await;
    ctx.metrics.duration.observe(started.elapsed().as_secs_f64());
    span.in_scope(|| debug!(elapsed_ms = started.elapsed().as_millis() as u64, result = ?result.as_ref().map_err(|e| e.to_string()), "pass done"));
    let label = if result.is_ok() { "ok" } else { "error" };
    ctx.metrics.reconciles.get_or_create(&ResultLabels { result: label }).inc();
    if result.is_ok() {
        ctx.backoff.reset(&key);
    }
    result
}

/// Whether an attempt of the job still runs: one of its attempt Jobs has not completed or failed,
/// or one of its pods still holds its GPUs.
fn attempt_live(tj: &TrainingJob, ctx: &Context) -> bool {
    let (namespace, uid) = (tj.namespace().unwrap_or_default(), tj.uid().unwrap_or_default());
    let jobs = ctx.jobs.state();
    jobs.iter().any(|j| j.namespace().as_deref() == Some(namespace.as_str()) && cleanup::made_by(&j.metadata, &uid) && !observe::ended(j))
        || !crate::pods::live_pods_of(&ctx.pods, &namespace, &tj.name_any(), &uid).is_empty()
}

/// Whether the job failed because its spec cannot work (a permanent error, not its training):
/// it waits for the spec to change, and then goes on.
fn failed_on_spec(prev: &TrainingJobStatus) -> bool {
    failed_reason(prev).is_some_and(|r| reasons::PERMANENT.contains(&r))
}

/// Whether the API server refused this job's children for the spec it still has.
fn refused_unchanged(tj: &TrainingJob, prev: &TrainingJobStatus) -> bool {
    prev.observed_generation == tj.metadata.generation && failed_reason(prev) == Some(reasons::REJECTED_BY_API_SERVER)
}

/// The reason of a Failed job's Failed condition.
fn failed_reason(prev: &TrainingJobStatus) -> Option<&str> {
    (prev.phase == Some(Phase::Failed))
        .then(|| crate::conditions::get(&prev.conditions, crate::conditions::types::FAILED))
        .flatten()
        .map(|c| c.reason.as_str())
}

/// What the stages decided.
enum Outcome {
    /// The job is finished; only clean-up is left.
    Finished,
    /// Nothing to do or write until the spec changes.
    Unchanged,
    /// A status to write, and when to look again.
    Pass { summary: Summary, plan: Option<Box<frugal_api::v1alpha1::PlanStatus>>, requeue: Option<Duration> },
}

/// One pass of a TrainingJob that is not being deleted. The stages run in this order, written
/// down here only (the modules and docs/operator.md say what each does):
///
/// 1. **validate** the spec into a `ValidJob` (`validate`);
/// 2. **plan** it (`plan`); a new plan is written into the status before anything starts;
/// 3. **observe** the attempts in the caches (`observe`), and **admit** the next attempt while
///    none is live (`admit`);
/// 4. **charge**: bill the pods, **decide** the run policy's next step knowing what they spent
///    (`lifecycle`), and settle the job's entry in its budget's ledger (`charge`);
/// 5. **build** the children, the attempt Job to start among them (`children`);
/// 6. **apply** them and the decision (`apply`);
/// 7. **status**: `finish` writes what the pass found in one patch (`status`).
///
/// A job whose children the API server refused waits for a new spec; a finished one only lets
/// its budget go.
async fn run_stages(tj: &TrainingJob, ctx: &Context, prev: &TrainingJobStatus) -> Result<Outcome, Error> {
    // a child the API server refused is refused again until the spec changes: nothing to send
    if refused_unchanged(tj, prev) {
        return Ok(Outcome::Unchanged);
    }
    // a job that ran and finished stays finished, whatever its spec says later; one stopped by
    // a spec that cannot work waits for a better one
    // (finished as its children say, not as the status alone says: a status written by anyone
    // but the operator must not end the billing of pods that run)
    if prev.phase.is_some_and(Phase::is_terminal) && prev.attempt.unwrap_or(0) > 0 && !failed_on_spec(prev) && !attempt_live(tj, ctx) {
        charge::release_finished(tj, ctx, prev).await?;
        return Ok(Outcome::Finished);
    }
    let valid = validate::validate(tj, &ctx.settings)?;
    let planned = plan::plan(&valid, &ctx.settings.plan_options)?;
    let plan_status = planned.plan.to_status();
    if prev.plan.as_ref() != Some(&plan_status) {
        // what the plan warns of (among it: a GPU job with nowhere durable to checkpoint) is
        // said once as an event too, where `kubectl describe` and event alerts see it
        if !plan_status.warnings.is_empty() {
            warn_of_plan(ctx, tj, &plan_status.warnings).await;
        }
        // the plan goes into the status before anything starts
        let summary = pending(reasons::CREATING, "planned; creating the job's children".into(), prev);
        return Ok(Outcome::Pass { summary, plan: Some(Box::new(plan_status)), requeue: Some(Duration::ZERO) });
    }
    let attempts = observe::attempts(&ctx.jobs, &ctx.pods, &valid);
    if let Some(waiting) = admit_next(ctx, &planned, &attempts, prev).await? {
        return Ok(Outcome::Pass { summary: waiting, plan: Some(Box::new(plan_status)), requeue: Some(CLAIM_RECHECK) });
    }
    let start_time = prev.start_time.clone().or_else(|| attempts.iter().filter_map(|a| a.started.clone()).min_by_key(|t| t.0));
    let policy = &valid.spec.run_policy;
    let decide = |spending| {
        lifecycle::decide(&Inputs {
            attempts: &attempts,
            suspend: policy.suspend,
            backoff_limit: policy.backoff_limit,
            active_deadline: policy.active_deadline_seconds.map(|s| Duration::from_secs(s.max(0) as u64)),
            progress_deadline: Duration::from_secs(policy.progress_deadline_seconds.max(0) as u64),
            startup_deadline: Duration::from_secs(policy.startup_deadline_seconds.max(0) as u64),
            start_time: start_time.clone(),
            last_progress: prev.progress.as_ref().and_then(|p| p.last_update_time.clone()),
            spending,
            now: now(),
        })
    };
    let (cost, decision) = match charge::charge(tj, ctx, &planned, &attempts, prev, decide).await? {
        Charged::Go { cost, decision } => (cost, decision),
        Charged::Wait { cost, wait } => {
            let summary = Summary { phase: Phase::Queued, cost: Some(Box::new(cost)), ..pending(wait.reason, wait.message, prev) };
            // a change of the budget wakes the job (the controller watches TrainingBudgets)
            return Ok(Outcome::Pass { summary, plan: Some(Box::new(plan_status)), requeue: None });
        }
    };
    let children = children::build_children(&planned, decision.action.starts(), &ctx.settings);
    if decision.action != lifecycle::Action::Nothing {
        info!(action = ?decision.action, reason = decision.reason, "{}", decision.message);
    }
    apply::apply(&ctx.client, &planned, &children, &decision.action, &ctx.applied).await?;
    let summary = Summary {
        phase: decision.phase,
        reason: decision.reason,
        message: decision.message,
        stalled: decision.stalled,
        attempt: Some(decision.attempt),
        restarts: Some(decision.restarts),
        start_time,
        completed_at: decision.succeeded_at,
        cost: Some(Box::new(cost.clone())),
    };
    // ttlSecondsAfterFinished (or the operator's default for finished attempts) is counted by a
    // pass that finds the status finished; status writes trigger no pass, and the children's last
    // events may all come before this one's write
    let ttl = policy.ttl_seconds_after_finished.is_some() || ctx.settings.finished_attempt_ttl_seconds.is_some();
    let requeue = if ttl && summary.phase.is_terminal() { Some(Duration::from_secs(1)) } else { decision.requeue_after };
    // pods holding GPUs are billed again within the billing interval
    let requeue = if bill::open(&cost) { Some(requeue.map_or(bill::BILLING_INTERVAL, |r| r.min(bill::BILLING_INTERVAL))) } else { requeue };
    Ok(Outcome::Pass { summary, plan: Some(Box::new(plan_status)), requeue })
}

/// How often a job whose checkpoint claim is missing looks again.
const CLAIM_RECHECK: Duration = Duration::from_secs(15);

/// The admit stage, while no attempt is live (a cap lowered under a running attempt applies to
/// the next one): `Some` is the status of a job waiting for its checkpoint claim to appear.
async fn admit_next(
    ctx: &Context,
    planned: &PlannedJob,
    attempts: &[observe::AttemptView],
    prev: &TrainingJobStatus,
) -> Result<Option<Summary>, Error> {
    if !admit::gates(attempts) {
        return Ok(None);
    }
    let claim = match admit::claim_to_check(planned) {
        Some(name) => Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &planned.valid.names.namespace).get_opt(name).await?,
        None => None,
    };
    match admit::admit(planned, &ctx.settings, claim.as_ref()) {
        Ok(()) => Ok(None),
        Err(e @ AdmitError::ClaimMissing { .. }) => Ok(Some(pending(reasons::WAITING_FOR_CHECKPOINT_CLAIM, e.to_string(), prev))),
        Err(e) => Err(e.into()),
    }
}

fn pending(reason: &'static str, message: String, prev: &TrainingJobStatus) -> Summary {
    Summary {
        phase: Phase::Pending,
        reason,
        message,
        stalled: false,
        attempt: prev.attempt,
        restarts: prev.restarts,
        start_time: None,
        completed_at: None,
        cost: None,
    }
}

/// Turns the stages' outcome into the one status patch of this pass and the next requeue.
async fn finish(tj: &TrainingJob, ctx: &Context, prev: &TrainingJobStatus, outcome: Result<Outcome, Error>) -> Result<Action, Error> {
    let generation = tj.metadata.generation.unwrap_or(0);
    let (summary, plan, requeue) = match outcome {
        Ok(Outcome::Finished) => {
            // a finished job says whether the chart's policies are in force like any other
            let mut current = status::operators_part(prev);
            status::policies_condition(&mut current, &ctx.policies_missing.get(), prev.observed_generation.unwrap_or(generation), &now());
            if status::acknowledged(prev, generation).is_none() && status::changed(prev, &current) {
                let api: Api<TrainingJob> = Api::namespaced(ctx.client.clone(), &tj.namespace().unwrap_or_default());
                status::patch(&api, &tj.name_any(), &current).await?;
                ctx.metrics.status_patches.inc();
            }
            if let Some(mut seen) = status::acknowledged(prev, generation) {
                status::policies_condition(&mut seen, &ctx.policies_missing.get(), generation, &now());
                let api: Api<TrainingJob> = Api::namespaced(ctx.client.clone(), &tj.namespace().unwrap_or_default());
                status::patch(&api, &tj.name_any(), &seen).await?;
                ctx.metrics.status_patches.inc();
                info!(generation, "the job has finished: its changed spec does not run it again (create a new TrainingJob for another run)");
            }
            return clean_up(tj, ctx, prev).await;
        }
        Ok(Outcome::Unchanged) => return Ok(Action::await_change()),
        Ok(Outcome::Pass { summary, plan, requeue }) => (summary, plan, requeue),
        Err(e) => match e.permanent_reason() {
            // a spec that cannot work: say why, and wait for it to change (or, for a name taken
            // by another's object, look again now and then: nothing of the operator's wakes it)
            Some(reason) => {
                let recheck = matches!(e, Error::NameTaken(_)).then_some(NAME_TAKEN_RECHECK);
                warn!(reason, "{e}");
                let summary = Summary {
                    phase: Phase::Failed,
                    reason,
                    message: e.to_string(),
                    stalled: false,
                    attempt: prev.attempt,
                    restarts: prev.restarts,
                    start_time: None,
                    completed_at: None,
                    cost: None,
                };
                (summary, None, recheck)
            }
            None => return Err(e),
        },
    };
    let mut desired = status::desired(prev, generation, plan.map(|p| *p), &summary, &now());
    status::policies_condition(&mut desired, &ctx.policies_missing.get(), generation, &now());
    if status::changed(prev, &desired) {
        let api: Api<TrainingJob> = Api::namespaced(ctx.client.clone(), &tj.namespace().unwrap_or_default());
        status::patch(&api, &tj.name_any(), &desired).await?;
        ctx.metrics.status_patches.inc();
        ctx.wrote_bill(&tj.uid().unwrap_or_default(), &desired);
        if prev.phase != desired.phase || ready_reason(prev) != ready_reason(&desired) {
            publish(ctx, tj, &summary).await;
        }
    }
    Ok(match requeue {
        Some(after) => Action::requeue(after),
        None => Action::await_change(),
    })
}

fn ready_reason(s: &TrainingJobStatus) -> Option<String> {
    crate::conditions::get(&s.conditions, crate::conditions::types::READY).map(|c| c.reason.clone())
}

/// A Warning event with the plan's warnings, when a new plan has any.
async fn warn_of_plan(ctx: &Context, tj: &TrainingJob, warnings: &[String]) {
    publish_event(ctx, &tj.object_ref(&()), EventType::Warning, "PlanWarning", &warnings.join("; "), "Plan".into()).await;
}

/// An event on each transition, a warning when the job failed or stalled.
async fn publish(ctx: &Context, tj: &TrainingJob, s: &Summary) {
    let type_ = if s.phase == Phase::Failed || s.stalled { EventType::Warning } else { EventType::Normal };
    publish_event(ctx, &tj.object_ref(&()), type_, s.reason, &s.message, format!("{:?}", s.phase)).await;
}

/// Publishes an event on `object`, its note cut to the API's 1024 characters; a failure to
/// publish is only logged.
async fn publish_event(ctx: &Context, object: &ObjectReference, type_: EventType, reason: &str, note: &str, action: String) {
    let event = Event { type_, reason: reason.into(), note: Some(note.chars().take(1024).collect()), action, secondary: None };
    if let Err(e) = ctx.recorder.publish(&event, object).await {
        warn!("publishing an event: {e}");
    }
}

/// A finished job: deletes its children once ttlSecondsAfterFinished has passed.
/// Without ttlSecondsAfterFinished, a finished job's attempt Jobs (and so their pods) are deleted
/// `--finished-attempt-ttl-seconds` after it finished: their bill is final in the status, and
/// they would otherwise stay in the operator's caches for as long as the TrainingJob does.
async fn clean_up(tj: &TrainingJob, ctx: &Context, prev: &TrainingJobStatus) -> Result<Action, Error> {
    let Some(done) = prev.completion_time.as_ref() else {
        return Ok(Action::await_change());
    };
    let names = Names::new(&tj.namespace().unwrap_or_default(), &tj.name_any());
    let uid = tj.uid().unwrap_or_default();
    let attempt_jobs: Vec<Arc<Job>> = ctx.jobs.state().into_iter().filter(|j| cleanup::made_by(&j.metadata, &uid)).collect();
    let Some(ttl) = tj.spec.run_policy.ttl_seconds_after_finished else {
        let Some(ttl) = ctx.settings.finished_attempt_ttl_seconds.filter(|_| !attempt_jobs.is_empty()) else {
            return Ok(Action::await_change());
        };
        let left = done.0.as_second() + ttl - now().0.as_second();
        if left > 0 {
            return Ok(Action::requeue(Duration::from_secs(left as u64)));
        }
        info!(ttl, "the job finished {ttl}s ago and its bill is final: deleting its attempt Jobs");
        cleanup::delete_attempt_jobs(&ctx.client, &names.namespace, &attempt_jobs).await?;
        return Ok(Action::await_change());
    };
    let due = done.0.as_second() + i64::from(ttl);
    let left = due - now().0.as_second();
    if left > 0 {
        return Ok(Action::requeue(Duration::from_secs(left as u64)));
    }
    let service =
        Api::<k8s_openapi::api::core::v1::Service>::namespaced(ctx.client.clone(), &names.namespace).get_metadata_opt(&names.service()).await?;
    if !attempt_jobs.is_empty() || service.is_some_and(|s| cleanup::made_by(&s.metadata, &uid)) {
        info!(ttl, "ttlSecondsAfterFinished passed: deleting the job's children");
        cleanup::delete_attempt_jobs(&ctx.client, &names.namespace, &attempt_jobs).await?;
        cleanup::delete_children(ctx, &names, &uid).await?;
    }
    Ok(Action::await_change())
}

/// A Warning event on an object that does not decode as a TrainingJob, saying why.
async fn report_undecodable(ctx: &Context, object: &CachedJob, error: &Error) {
    let note = format!("{error}; fix the object (or delete it): the operator does nothing with it until it changes");
    publish_event(ctx, &object.object_ref(&()), EventType::Warning, "Undecodable", &note, "Read".into()).await;
}

/// When a failed pass is tried again.
#[derive(Debug, PartialEq)]
enum NextTry {
    /// Not a failure: soon, without counting it or backing off.
    Soon(Duration),
    /// After the job's next backoff.
    Backoff,
    /// Once the object changes: the same object would fail the same way.
    OnChange,
}

fn next_try(error: &Error) -> NextTry {
    match error {
        // a deleted job waits for its pods (each pod's end wakes it too)
        Error::Stopping { .. } => NextTry::Soon(cleanup::STOPPING_CHECK),
        Error::StaleCache => NextTry::Soon(Duration::from_millis(200)),
        Error::Undecodable(_) => NextTry::OnChange,
        _ => NextTry::Backoff,
    }
}

pub fn error_policy(object: Arc<CachedJob>, error: &Error, ctx: Arc<Context>) -> Action {
    let (namespace, job) = (object.namespace().unwrap_or_default(), object.name_any());
    let key = format!("{namespace}/{job}");
    let next = next_try(error);
    if let NextTry::Soon(after) = next {
        debug!(namespace, job, "{error}");
        return Action::requeue(after);
    }
    ctx.metrics.errors.get_or_create(&CategoryLabels { category: error.category() }).inc();
    if next == NextTry::OnChange {
        warn!(namespace, job, category = error.category(), "{error}; waiting for the object to change");
        return Action::await_change();
    }
    let after = ctx.backoff.next(&key);
    warn!(namespace, job, category = error.category(), retry_in = ?after, "reconcile failed: {error}");
    Action::requeue(after)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::training_job::validate::tests::training_job;

    #[test]
    fn an_object_that_does_not_decode_is_reported_and_waits_for_a_change() {
        // what the watch gets for an object whose spec does not fit the types
        let mut value = serde_json::to_value(training_job(1)).unwrap();
        value["spec"]["runPolicy"]["backoffLimit"] = "four".into();
        let object: CachedJob = serde_json::from_value(value).unwrap();
        assert_eq!(object.name_any(), "lm", "its metadata is kept");
        let error = decoded(&object).unwrap_err();
        assert!(matches!(error, Error::Undecodable(_)), "{error}");
        assert_eq!(error.category(), "undecodable");
        assert_eq!(error.permanent_reason(), None, "there is no status to write it into");
        assert_eq!(next_try(&error), NextTry::OnChange);
        // a job that decodes is the job
        let object: CachedJob = serde_json::from_value(serde_json::to_value(training_job(1)).unwrap()).unwrap();
        assert_eq!(decoded(&object).unwrap().spec.run_policy.backoff_limit, training_job(1).spec.run_policy.backoff_limit);
        assert_eq!(next_try(&Error::CacheClosed), NextTry::Backoff);
    }
}
