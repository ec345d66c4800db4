//! The controller: what it watches, and `reconcile`, which runs the stages in order:
//! validate → plan → admit → build → apply → status.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::ListParams;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tracing::{Instrument, debug, info, info_span, warn};

use frugal_api::planner::Plan;
use frugal_api::v1alpha1::{BudgetSpec, Phase, TrainingJobStatus};
use frugal_api::{TrainingBudget, TrainingJob};

use crate::admit::{self, AdmitError};
use crate::budget::{self, Claim, Demand};
use crate::conditions::reasons;
use crate::error::Error;
use crate::ledger::{self, Admission, BudgetContext};
use crate::lifecycle::{self, Inputs, Spending};
use crate::metrics::{Backoff, CategoryLabels, Health, Metrics, ResultLabels};
use crate::names::{JOB_LABEL, Names};
use crate::observe;
use crate::plan::{self, PlannedJob};
use crate::settings::Settings;
use crate::status::{self, Summary};
use crate::synced::{mark_synced, synced};
use crate::{apply, build, rejection, validate};

pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub jobs: Store<Job>,
    pub pods: Store<Pod>,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    pub backoff: Backoff,
    pub seen: apply::Seen,
}

fn now() -> Time {
    Time(Timestamp::now())
}

/// One reconcile pass of one TrainingJob.
pub async fn reconcile(tj: Arc<TrainingJob>, ctx: Arc<Context>) -> Result<Action, Error> {
    let key = format!("{}/{}", tj.namespace().unwrap_or_default(), tj.name_any());
    let span = info_span!("reconcile", job = %key);
    let started = Instant::now();
    let result = async {
        if tj.meta().deletion_timestamp.is_some() {
            // children go with it through their owner references
            return Ok(Action::await_change());
        }
        let prev = tj.status.clone().unwrap_or_default();
        let outcome = run_stages(&tj, &ctx, &prev).await;
        finish(&tj, &ctx, &prev, outcome).await
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

async fn run_stages(tj: &TrainingJob, ctx: &Context, prev: &TrainingJobStatus) -> Result<Outcome, Error> {
    // a child the API server refused is refused again until the spec changes: nothing to send
    if refused_unchanged(tj, prev) {
        return Ok(Outcome::Unchanged);
    }
    // a job that ran and finished stays finished, whatever its spec says later; one stopped by
    // a spec that cannot work waits for a better one
    if status::is_terminal(prev.phase) && prev.attempt.unwrap_or(0) > 0 && !failed_on_spec(prev) {
        release_finished(tj, ctx, prev).await?;
        return Ok(Outcome::Finished);
    }
    let valid = validate::validate(tj, &ctx.settings)?;
    let planned = plan::plan(&valid, &ctx.settings.plan_options)?;
    let plan_status = planned.plan.to_status();
    if prev.plan.as_ref() != Some(&plan_status) {
        // the plan goes into the status before anything starts
        let summary = pending(reasons::CREATING, "planned; creating the job's children".into(), prev);
        return Ok(Outcome::Pass { summary, plan: Some(Box::new(plan_status)), requeue: Some(Duration::ZERO) });
    }
    let attempts = observe::attempts(&ctx.jobs, &ctx.pods, &valid);
    if admit::gates(&attempts) {
        let claim = match admit::claim_to_check(&planned) {
            Some(name) => Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &valid.names.namespace).get_opt(name).await?,
            None => None,
        };
        if let Err(e) = admit::admit(&planned, &ctx.settings, claim.as_ref()) {
            if let AdmitError::ClaimMissing { .. } = e {
                let summary = pending(reasons::WAITING_FOR_CHECKPOINT_CLAIM, e.to_string(), prev);
                return Ok(Outcome::Pass { summary, plan: Some(Box::new(plan_status)), requeue: Some(Duration::from_secs(15)) });
            }
            return Err(e.into());
        }
    }

    let start_time = prev.start_time.clone().or_else(|| attempts.iter().filter_map(|a| a.started.clone()).min_by_key(|t| t.0));
    let policy = &valid.spec.run_policy;
    let decision = lifecycle::decide(&Inputs {
        attempts: &attempts,
        suspend: policy.suspend,
        backoff_limit: policy.backoff_limit,
        active_deadline: policy.active_deadline_seconds.map(|s| Duration::from_secs(s.max(0) as u64)),
        progress_deadline: Duration::from_secs(policy.progress_deadline_seconds.max(0) as u64),
        startup_deadline: Duration::from_secs(policy.startup_deadline_seconds.max(0) as u64),
        start_time: start_time.clone(),
        last_progress: prev.progress.as_ref().and_then(|p| p.last_update_time.clone()),
        spending: spending(&valid.spec.budget, prev, &planned.plan),
        now: now(),
    });
    // the budget's ledger is written before any child is created
    if let Some(name) = valid.spec.budget.budget_ref.as_deref() {
        let claim = budget_claim(tj, planned.plan.gpus, prev);
        let demand = budget::demand(&decision, &attempts);
        if let Admission::Wait(w) = ledger::settle(&ctx.client, &valid.names.namespace, name, &claim, demand).await? {
            let summary = Summary { phase: Phase::Queued, ..pending(w.reason, w.message, prev) };
            // a change of the budget wakes the job (the controller watches TrainingBudgets)
            return Ok(Outcome::Pass { summary, plan: Some(Box::new(plan_status)), requeue: None });
        }
    }
    let children = build::build_children(&planned);
    let rejected = |e| rejection::classify(e, None);
    apply::apply_children(&ctx.client, &valid.names, &children, &ctx.seen).await.map_err(rejected)?;
    apply::ensure_secret(&ctx.client, &planned, &ctx.seen).await.map_err(rejected)?;

    if decision.action != lifecycle::Action::Nothing {
        info!(action = ?decision.action, reason = decision.reason, "{}", decision.message);
    }
    act(ctx, &planned, &decision.action).await?;
    let summary = Summary {
        phase: decision.phase,
        reason: decision.reason,
        message: decision.message,
        stalled: decision.stalled,
        attempt: Some(decision.attempt),
        restarts: Some(decision.restarts),
        start_time,
        completed_at: decision.succeeded_at,
    };
    // ttlSecondsAfterFinished is counted by a pass that finds the status finished; status writes
    // trigger no pass, and the children's last events may all come before this one's write
    let requeue = match policy.ttl_seconds_after_finished {
        Some(_) if status::is_terminal(Some(summary.phase)) => Some(Duration::from_secs(1)),
        _ => decision.requeue_after,
    };
    Ok(Outcome::Pass { summary, plan: Some(Box::new(plan_status)), requeue })
}

/// The job's own limits against what its status says it spent, and its rate while it runs.
fn spending(budget: &BudgetSpec, prev: &TrainingJobStatus, plan: &Plan) -> Spending {
    let finite = |x: f64| if x.is_finite() { x } else { 0.0 };
    Spending {
        gpu_hours: prev.cost.as_ref().map_or(0.0, |c| finite(c.gpu_hours)),
        cost: prev.cost.as_ref().map_or(0.0, |c| finite(c.cost)),
        max_gpu_hours: budget.max_gpu_hours,
        max_cost: budget.max_cost,
        gpus: plan.gpus as f64,
        price_per_gpu_hour: plan.price_per_gpu_hour(),
    }
}

/// The job as its budget's ledger sees it.
fn budget_claim<'a>(tj: &'a TrainingJob, gpus: i64, prev: &TrainingJobStatus) -> Claim<'a> {
    Claim {
        name: tj.metadata.name.as_deref().unwrap_or_default(),
        uid: tj.metadata.uid.as_deref().unwrap_or_default(),
        gpus: i32::try_from(gpus).unwrap_or(i32::MAX),
        gpu_type: &tj.spec.resources.gpu_type,
        gpu_hours: prev.cost.as_ref().map_or(0.0, |c| c.gpu_hours),
    }
}

/// A finished job holds nothing: its entry goes, with what it spent (the pass that finished it
/// released it already, unless that pass was cut short).
async fn release_finished(tj: &TrainingJob, ctx: &Context, prev: &TrainingJobStatus) -> Result<(), Error> {
    let (Some(name), Some(namespace)) = (tj.spec.budget.budget_ref.as_deref(), tj.namespace()) else {
        return Ok(());
    };
    let gpus = prev.plan.as_ref().map_or(0, |p| i64::from(p.gpus));
    ledger::settle(&ctx.client, &namespace, name, &budget_claim(tj, gpus, prev), Demand::Release).await?;
    Ok(())
}

async fn act(ctx: &Context, planned: &PlannedJob, action: &lifecycle::Action) -> Result<(), Error> {
    apply::act(&ctx.client, planned, action, &ctx.settings).await?;
    Ok(())
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
    }
}

/// Turns the stages' outcome into the one status patch of this pass and the next requeue.
async fn finish(tj: &TrainingJob, ctx: &Context, prev: &TrainingJobStatus, outcome: Result<Outcome, Error>) -> Result<Action, Error> {
    let generation = tj.metadata.generation.unwrap_or(0);
    let (summary, plan, requeue) = match outcome {
        Ok(Outcome::Finished) => return clean_up(tj, ctx, prev).await,
        Ok(Outcome::Unchanged) => return Ok(Action::await_change()),
        Ok(Outcome::Pass { summary, plan, requeue }) => (summary, plan, requeue),
        Err(e) => match e.permanent_reason() {
            // a spec that cannot work: say why, and wait for it to change
            Some(reason) => {
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
                };
                (summary, None, None)
            }
            None => return Err(e),
        },
    };
    let desired = status::desired(prev, generation, plan.map(|p| *p), &summary, &now());
    if status::changed(prev, &desired) {
        let api: Api<TrainingJob> = Api::namespaced(ctx.client.clone(), &tj.namespace().unwrap_or_default());
        status::patch(&api, &tj.name_any(), &desired).await?;
        ctx.metrics.status_patches.inc();
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

/// An event on each transition, a warning when the job failed or stalled.
async fn publish(ctx: &Context, tj: &TrainingJob, s: &Summary) {
    let warning = s.phase == Phase::Failed || s.stalled;
    let event = Event {
        type_: if warning { EventType::Warning } else { EventType::Normal },
        reason: s.reason.into(),
        note: Some(s.message.chars().take(1024).collect()),
        action: format!("{:?}", s.phase),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &tj.object_ref(&())).await {
        warn!("publishing an event: {e}");
    }
}

/// A finished job: deletes its children once ttlSecondsAfterFinished has passed.
async fn clean_up(tj: &TrainingJob, ctx: &Context, prev: &TrainingJobStatus) -> Result<Action, Error> {
    let (Some(ttl), Some(done)) = (tj.spec.run_policy.ttl_seconds_after_finished, prev.completion_time.as_ref()) else {
        return Ok(Action::await_change());
    };
    let due = done.0.as_second() + i64::from(ttl);
    let left = due - now().0.as_second();
    if left > 0 {
        return Ok(Action::requeue(Duration::from_secs(left as u64)));
    }
    let names = Names::new(&tj.namespace().unwrap_or_default(), &tj.name_any());
    let uid = tj.uid().unwrap_or_default();
    let attempt_jobs: Vec<String> =
        ctx.jobs.state().iter().filter(|j| j.owner_references().iter().any(|o| o.uid == uid)).map(|j| j.name_any()).collect();
    let service_exists = Api::<k8s_openapi::api::core::v1::Service>::namespaced(ctx.client.clone(), &names.namespace)
        .get_metadata_opt(&names.service())
        .await?
        .is_some();
    if !attempt_jobs.is_empty() || service_exists {
        info!(ttl, "ttlSecondsAfterFinished passed: deleting the job's children");
        apply::delete_children(&ctx.client, &names, &attempt_jobs).await?;
    }
    Ok(Action::await_change())
}

fn error_policy(tj: Arc<TrainingJob>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = format!("{}/{}", tj.namespace().unwrap_or_default(), tj.name_any());
    ctx.metrics.errors.get_or_create(&CategoryLabels { category: error.category() }).inc();
    let after = ctx.backoff.next(&key);
    warn!(job = %key, category = error.category(), retry_in = ?after, "reconcile failed: {error}");
    Action::requeue(after)
}

/// What a TrainingJob change must touch to trigger a reconcile: its spec (generation), labels
/// and annotations. Status writes (the trainer's progress reports, our own patches) do not.
fn spec_or_metadata(tj: &TrainingJob) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    tj.metadata.generation.hash(&mut h);
    tj.metadata.labels.hash(&mut h);
    tj.metadata.annotations.hash(&mut h);
    tj.metadata.deletion_timestamp.is_some().hash(&mut h);
    Some(h.finish())
}

/// Where the controller looks.
pub struct Scope {
    /// One namespace, or all.
    pub namespace: Option<String>,
}

impl Scope {
    fn api<K>(&self, client: &Client) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match &self.namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
}

/// Waits until the API server serves TrainingJobs and TrainingBudgets to this operator (the
/// CRDs are installed and established, and its identity may list them), retrying with backoff
/// and saying why; false when told to stop first.
async fn served(client: &Client, scope: &Scope, shutdown: impl std::future::Future<Output = ()>) -> bool {
    let mut delay = Duration::from_millis(500);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let jobs = scope.api::<TrainingJob>(client).list_metadata(&ListParams::default().limit(1)).await;
        let budgets = scope.api::<TrainingBudget>(client).list_metadata(&ListParams::default().limit(1)).await;
        match jobs.and(budgets) {
            Ok(_) => return true,
            Err(e) => warn!(
                retry_in = ?delay,
                "TrainingJobs and TrainingBudgets are not served yet ({e}): waiting for the CRDs (helm installs them; or frugal-operator crd | kubectl apply -f -)"
            ),
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {},
            _ = &mut shutdown => return false,
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// How long a stop waits for the passes in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    settings: Settings,
    scope: Scope,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let shutdown = shutdown.shared();
    // a Helm install applies the CRDs and the Deployment together: wait, not ready, until the
    // API server serves them
    if !served(&client, &scope, shutdown.clone()).await {
        return Ok(());
    }
    let children = watcher::Config::default().labels(&Names::managed_selector());

    let (job_reader, job_writer) = reflector::store();
    let (jobs_synced_tx, jobs_synced) = synced();
    let job_stream = reflector::reflector(job_writer, watcher(scope.api::<Job>(&client), children.clone()))
        .default_backoff()
        .inspect(mark_synced(jobs_synced_tx))
        .touched_objects();
    let (pod_reader, pod_writer) = reflector::store();
    let (pods_synced_tx, pods_synced) = synced();
    let pod_stream = reflector::reflector(pod_writer, watcher(scope.api::<Pod>(&client), children.clone()))
        .default_backoff()
        .inspect(mark_synced(pods_synced_tx))
        .touched_objects();
    // The other children: metadata only, and only the operator's own. Their stores let a pass
    // skip what is already as applied; a change to one wakes its job.
    fn seen_stream<K>(
        api: Api<PartialObjectMeta<K>>,
        selector: &watcher::Config,
    ) -> (Store<PartialObjectMeta<K>>, impl futures::Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>> + Send + 'static)
    where
        K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    {
        let (reader, writer) = reflector::store();
        (reader, reflector::reflector(writer, watcher(api, selector.clone())).default_backoff().touched_objects())
    }
    let (secret_store, secrets) = seen_stream::<Secret>(scope.api(&client), &children);
    let (config_store, configs) = seen_stream::<ConfigMap>(scope.api(&client), &children);
    let (service_store, services) = seen_stream::<Service>(scope.api(&client), &children);
    let (account_store, accounts) = seen_stream::<ServiceAccount>(scope.api(&client), &children);
    let (role_store, roles) = seen_stream::<Role>(scope.api(&client), &children);
    let (binding_store, bindings) = seen_stream::<RoleBinding>(scope.api(&client), &children);
    let seen = apply::Seen::new(account_store, role_store, binding_store, service_store, config_store, secret_store);

    let (tj_reader, tj_writer) = reflector::store();
    // every change of a TrainingJob naming a budget, its deletion included, wakes that budget's
    // controller (after the cache has it): it counts what the job spent, or releases its GPUs
    let (budget_tx, budget_rx) = futures::channel::mpsc::unbounded();
    let (tjs_synced_tx, tjs_synced) = synced();
    // an object that fails to decode fails the watch, which backs off instead of spinning
    let tj_stream = reflector::reflector(tj_writer, watcher(scope.api::<TrainingJob>(&client), watcher::Config::default()))
        .default_backoff()
        .inspect(mark_synced(tjs_synced_tx))
        .inspect({
            let seen = seen.clone();
            move |event| {
                if let Ok(watcher::Event::Apply(tj) | watcher::Event::Delete(tj) | watcher::Event::InitApply(tj)) = event
                    && let Some(budget) = ledger::budget_of(tj)
                {
                    let _ = budget_tx.unbounded_send(budget);
                }
                // a deleted job's children go with it, and so does what was applied for them
                if let Ok(watcher::Event::Delete(tj)) = event {
                    seen.forget(&tj.namespace().unwrap_or_default(), &tj.name_any());
                }
            }
        })
        .applied_objects()
        .predicate_filter(spec_or_metadata, Default::default());

    let recorder = Recorder::new(client.clone(), Reporter { controller: "frugal-operator".into(), instance: std::env::var("POD_NAME").ok() });
    let ctx = Arc::new(Context {
        client: client.clone(),
        settings,
        jobs: job_reader.clone(),
        pods: pod_reader.clone(),
        metrics,
        recorder,
        backoff: Backoff::default(),
        seen,
    });
    *health.store.lock().unwrap() = Some(tj_reader.clone());

    let stopping = shutdown.clone();
    let waiting = tj_reader.clone();
    let controller = Controller::for_stream(tj_stream, tj_reader.clone())
        .with_config(ControllerConfig::default().concurrency(16))
        .owns_stream(job_stream)
        .owns_stream(secrets)
        .owns_stream(configs)
        .owns_stream(services)
        .owns_stream(accounts)
        .owns_stream(roles)
        .owns_stream(bindings)
        .watches_stream(pod_stream, |pod: Pod| {
            let ns = pod.namespace()?;
            let job = pod.labels().get(JOB_LABEL)?.clone();
            Some(ObjectRef::<TrainingJob>::new(&job).within(&ns))
        })
        // a budget that appears, grows or releases GPUs wakes the jobs waiting for it
        .watches(scope.api::<TrainingBudget>(&client), watcher::Config::default(), move |b: TrainingBudget| {
            ledger::waiting_jobs(&b, &waiting.state())
        })
        .graceful_shutdown_on(shutdown.clone());
    // the budgets' own controller keeps each ledger true to the TrainingJobs
    let budgets = Controller::new(scope.api::<TrainingBudget>(&client), watcher::Config::default())
        .reconcile_on(budget_rx)
        .graceful_shutdown_on(shutdown)
        .run(ledger::reconcile, ledger::error_policy, Arc::new(BudgetContext::new(client.clone(), tj_reader.clone(), tjs_synced.clone())))
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!("budget controller: {e}");
            }
        });

    let health_ready = health.clone();
    tokio::spawn(async move {
        if let (Ok(()), Ok(()), Ok(())) = tokio::join!(tjs_synced.wait(), jobs_synced.wait(), pods_synced.wait()) {
            health_ready.ready.store(true, Ordering::Relaxed);
            info!("caches synced; ready");
        }
    });

    let jobs = controller.run(reconcile, error_policy, ctx).for_each(|result| async move {
        if let Err(e) = result {
            tracing::debug!("controller: {e}");
        }
    });
    let jobs = jobs.inspect(|()| info!("TrainingJob controller stopped"));
    let budgets = budgets.inspect(|()| info!("TrainingBudget controller stopped"));
    // a stop waits for the passes in flight, but not for ever: one stuck on an API call must not
    // keep the process (and its leader lease) past the pod's grace period
    tokio::select! {
        _ = async { tokio::join!(jobs, budgets) } => {},
        _ = async { stopping.await; tokio::time::sleep(SHUTDOWN_GRACE).await } => {
            warn!("passes still running {SHUTDOWN_GRACE:?} after the stop; leaving them");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::tests::training_job;
    use frugal_api::v1alpha1::ProgressStatus;

    #[test]
    fn status_writes_do_not_trigger_a_pass_but_spec_and_labels_do() {
        let tj = training_job(1);
        let before = spec_or_metadata(&tj);
        let mut reported = tj.clone();
        reported.status = Some(TrainingJobStatus { progress: Some(ProgressStatus { step: 10, ..Default::default() }), ..Default::default() });
        reported.metadata.resource_version = Some("2".into());
        assert_eq!(spec_or_metadata(&reported), before, "a trainer report is not a reason to reconcile");
        let mut edited = tj.clone();
        edited.metadata.generation = Some(3);
        assert_ne!(spec_or_metadata(&edited), before);
        let mut queued = tj.clone();
        queued.metadata.labels = Some([(crate::names::KUEUE_QUEUE_LABEL.to_string(), "q".to_string())].into());
        assert_ne!(spec_or_metadata(&queued), before);
    }
}
