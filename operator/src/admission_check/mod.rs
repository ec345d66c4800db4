//! Kueue's AdmissionCheck controller for TrainingBudgets (`controllerName: frugal.dev/budget`):
//! a ClusterQueue that lists such a check has each of its Workloads (a Job, JobSet, PyTorchJob,
//! ... whatever made it) decided against the TrainingBudget that binds it, and the pods of the
//! Workloads it admits billed into that budget's ledger like a TrainingJob's.
//!
//! A pass of a Workload: which budget binds it ([`decide::binding`]), what it asks of the
//! ledger ([`decide::demand`]: start, hold, release), the ledger's answer (written by
//! `training_budget::ledger`, the same arithmetic a TrainingJob is admitted with), and the
//! check's state from it ([`decide::verdict`]), written into the Workload's
//! `status.admissionChecks` with a server-side apply of its own field manager, only when it
//! changes. Ready: within budget. Retry, with why and until when: Kueue requeues the Workload,
//! and evicts it if it runs (a spent period stops it). Rejected: it could never fit.
//!
//! A Workload made for a TrainingJob's attempt Job is the TrainingJob's: its own pass admitted
//! it into the budget and bills its pods, so the check only says whether it holds its entry.

pub mod decide;
pub mod kueue;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tracing::{info, warn};

use frugal_api::TrainingBudget;
use frugal_api::admission::budget::{Claim, spent_out};
use frugal_api::v1alpha1::HolderKind;

use crate::names::{JOB_LABEL, JOB_UID_LABEL};
use crate::synced::Synced;
use crate::training_budget::budget::Demand;
use crate::training_budget::ledger::{self, Admission, SettleError};
use crate::training_job::bill::{self, BILLING_INTERVAL, GPU_PRODUCT_LABEL};
use decide::{BUDGET_LABEL, Stage, Verdict};
use kueue::{AdmissionCheck, Workload};

/// The controller name an AdmissionCheck names to be decided by frugal.
pub const CONTROLLER_NAME: &str = "frugal.dev/budget";

/// The field manager of the check's writes (a Workload's check entry, an AdmissionCheck's
/// Active condition), apart from the operator's own.
pub const FIELD_MANAGER: &str = "frugal-operator-admission-check";

/// The GPU resource a Workload's pods ask for.
const GPU_RESOURCE: &str = "nvidia.com/gpu";

/// How soon Kueue looks again at a Workload the check said Retry to: a raised budget lets it in
/// within this long; a spent period keeps saying Retry until the next.
pub const RETRY_AFTER_SECONDS: i32 = 15;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("the cache closed: the operator is stopping")]
    CacheClosed,
}

/// The Workloads the operator has seen: whether a ledger entry's Workload is gone.
#[derive(Clone)]
pub struct Workloads {
    store: Store<Workload>,
    synced: Arc<AtomicBool>,
}

impl Workloads {
    /// Whether Workload `name` (uid `uid`) of `namespace` no longer exists; never before the
    /// cache holds its first full list.
    pub fn gone(&self, namespace: &str, name: &str, uid: &str) -> bool {
        self.synced.load(Ordering::Relaxed)
            && self.store.get(&ObjectRef::new(name).within(namespace)).is_none_or(|w| w.metadata.uid.as_deref() != Some(uid))
    }
}

pub struct Context {
    pub client: Client,
    pub budgets: Store<TrainingBudget>,
    pub checks: Store<AdmissionCheck>,
    /// The operator's attempt Jobs: a Workload owned by one is a TrainingJob's.
    pub jobs: Store<Job>,
    pub gpu_products: std::sync::Mutex<std::collections::HashMap<String, Option<String>>>,
    /// Whether `budgets` and `jobs` hold their first full lists.
    pub synced: [Synced; 2],
}

use crate::training_budget::now;

/// The names of the AdmissionChecks that are frugal's.
fn our_checks(checks: &Store<AdmissionCheck>) -> Vec<String> {
    checks.state().iter().filter(|c| c.spec.controller_name == CONTROLLER_NAME).map(|c| c.name_any()).collect()
}

/// One pass of a Workload.
pub async fn reconcile(w: Arc<Workload>, ctx: Arc<Context>) -> Result<Action, Error> {
    let span = tracing::info_span!("workload", namespace = %w.namespace().unwrap_or_default(), workload = %w.name_any());
    tracing::Instrument::instrument(reconcile_workload(w, ctx), span).await
}

async fn reconcile_workload(w: Arc<Workload>, ctx: Arc<Context>) -> Result<Action, Error> {
    // a budget missing from a cache still filling would leave a Workload unbound
    for cache in &ctx.synced {
        cache.wait().await.map_err(|_| Error::CacheClosed)?;
    }
    let namespace = w.namespace().unwrap_or_default();
    let (name, uid) = (w.name_any(), w.uid().unwrap_or_default());
    let checks: Vec<String> = our_checks(&ctx.checks).into_iter().filter(|c| w.check(c).is_some()).collect();
    let held_in = ctx.budgets.state().into_iter().find(|b| {
        b.namespace().as_deref() == Some(namespace.as_str())
            && b.status.iter().flat_map(|s| &s.jobs).any(|h| h.kind == HolderKind::Workload && h.uid == uid)
    });
    if checks.is_empty() && held_in.is_none() {
        return Ok(Action::await_change());
    }
    let stage = checks.first().map_or(Stage::Waiting, |c| decide::stage(&w, c));
    let now = now();

    // a TrainingJob's attempt: decided and billed by the TrainingJob's own pass
    if let Some(job) = owner_job(&w, &ctx.jobs) {
        let (verdict, budget) = training_job_verdict(&job, &namespace, &ctx.budgets, &now);
        if matches!(stage, Stage::Deciding | Stage::Admitted) {
            write_checks(&ctx.client, &w, &checks, &verdict, &budget, &now).await?;
        }
        return Ok(requeue(stage));
    }

    let pods = pods_of(&ctx.client, &w).await?;
    let pods_hold = pods.iter().any(crate::pods::holds);
    let Some(demand) = decide::demand(stage, held_in.is_some(), pods_hold) else {
        return Ok(Action::await_change());
    };
    let bound = binding(&ctx, &w, &namespace).await;
    let Some((budget_name, by)) = bound.or_else(|| held_in.as_ref().map(|b| (b.name_any(), decide::BoundBy::Workload))) else {
        write_checks(&ctx.client, &w, &checks, &Verdict::Retry(decide::unbound(&namespace)), "", &now).await?;
        return Ok(requeue(stage));
    };
    let budget = ctx.budgets.get(&ObjectRef::new(&budget_name).within(&namespace));
    let Some(budget) = budget else {
        if matches!(stage, Stage::Deciding | Stage::Admitted) {
            let verdict = Verdict::Retry(decide::not_found(&budget_name, &namespace, by));
            write_checks(&ctx.client, &w, &checks, &verdict, &budget_name, &now).await?;
        }
        return Ok(requeue(stage));
    };

    // what its pods spent since this budget admitted it
    let since = budget.status.iter().flat_map(|s| &s.jobs).find(|h| h.uid == uid).and_then(|h| h.admitted_at.clone()).unwrap_or_else(|| now.clone());
    // each pod priced once, by its node's GPU product
    let (mut priced, mut prices, mut gpu_type) = (Vec::new(), std::collections::HashMap::new(), None);
    for pod in &pods {
        let product = match pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
            Some(node) => gpu_product(&ctx, node).await,
            None => None,
        };
        let seen = bill::seen(pod, 0, GPU_RESOURCE);
        prices.insert(seen.name.clone(), crate::training_budget::budget::price(&budget.spec, product.as_deref().unwrap_or_default()));
        gpu_type = gpu_type.or(product);
        priced.push((seen, pod.metadata.creation_timestamp.clone().unwrap_or_else(|| now.clone())));
    }
    let gpu_type = gpu_type.unwrap_or_default();
    let (gpu_hours, cost) = decide::bill(&priced, &since, &now, |pod| prices.get(&pod.name).copied().unwrap_or_default());
    let gpus = decide::gpus(&w, GPU_RESOURCE);
    let claim = Claim {
        name: &name,
        uid: &uid,
        gpus,
        gpu_type: &gpu_type,
        gpu_hours,
        cost,
        estimated_gpu_hours: decide::look_ahead_gpu_hours(gpus, w.spec.maximum_execution_time_seconds),
        kind: HolderKind::Workload,
    };
    let answer = match ledger::settle(&ctx.client, &namespace, &budget_name, &claim, demand).await {
        Ok(a) => Ok(a),
        Err(SettleError::TooSmall(e)) => Err(e),
        Err(SettleError::Kube(e)) => return Err(e.into()),
    };
    if demand == Demand::Start && matches!(answer, Ok(Admission::Go)) {
        info!(budget = %budget_name, gpus, gpu_hours_estimated = claim.estimated_gpu_hours, "admitted within the budget");
    }
    // the ledger was just written: an eviction's message says what it spent as of that write
    let budget = match answer {
        Ok(Admission::SpentOut(_)) => {
            let api: Api<TrainingBudget> = Api::namespaced(ctx.client.clone(), &namespace);
            api.get_opt(&budget_name).await?.map(Arc::new).unwrap_or(budget)
        }
        _ => budget,
    };
    if let Some(verdict) = decide::verdict(stage, answer, &budget, &now) {
        write_checks(&ctx.client, &w, &checks, &verdict, &budget_name, &now).await?;
    }
    Ok(requeue(stage))
}

/// A Workload that runs is billed every billing interval; one being decided is looked at again
/// soon, in case a write was lost; the others wait for a change.
fn requeue(stage: Stage) -> Action {
    match stage {
        Stage::Admitted | Stage::Deciding => Action::requeue(BILLING_INTERVAL),
        Stage::Finished | Stage::Waiting => Action::requeue(BILLING_INTERVAL * 4),
    }
}

/// The budget that binds `w`: see [`decide::binding`].
async fn binding(ctx: &Context, w: &Workload, namespace: &str) -> Option<(String, decide::BoundBy)> {
    let default = crate::training_budget::namespace_default(namespace, &ctx.budgets.state());
    let local_queue = match w.spec.queue_name.as_deref() {
        Some(queue) => {
            let ar = kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(kueue::GROUP, kueue::VERSION, "LocalQueue"));
            let api: Api<kube::api::DynamicObject> = Api::namespaced_with(ctx.client.clone(), namespace, &ar);
            match api.get_metadata_opt(queue).await {
                Ok(q) => q.and_then(|q| q.labels().get(BUDGET_LABEL).cloned()),
                Err(e) => {
                    warn!(queue, "reading the LocalQueue's {BUDGET_LABEL} label: {e}");
                    None
                }
            }
        }
        None => None,
    };
    decide::binding(default, local_queue, w.labels().get(BUDGET_LABEL).cloned())
}

/// The operator's attempt Job that owns `w`, if it is one.
fn owner_job(w: &Workload, jobs: &Store<Job>) -> Option<Arc<Job>> {
    let namespace = w.namespace()?;
    w.owner_references()
        .iter()
        .filter(|o| o.kind == "Job")
        .find_map(|o| jobs.get(&ObjectRef::new(&o.name).within(&namespace)).filter(|j| j.metadata.uid.as_deref() == Some(o.uid.as_str())))
}

/// The check of a TrainingJob's attempt: Ready while the TrainingJob holds its entry in a budget
/// with something left this period, Retry otherwise; and the budget's name.
fn training_job_verdict(job: &Job, namespace: &str, budgets: &Store<TrainingBudget>, now: &Time) -> (Verdict, String) {
    let labels = job.labels();
    let (tj, tj_uid) = (labels.get(JOB_LABEL).cloned().unwrap_or_default(), labels.get(JOB_UID_LABEL).cloned().unwrap_or_default());
    let holding = budgets.state().into_iter().find(|b| {
        b.namespace().as_deref() == Some(namespace)
            && b.status
                .iter()
                .flat_map(|s| &s.jobs)
                .any(|h| h.kind == HolderKind::TrainingJob && (h.uid == tj_uid || (tj_uid.is_empty() && h.name == tj)))
    });
    match holding {
        Some(b) => match spent_out(&b, &frugal_api::admission::budget::this_period(&b, now), now) {
            Some(w) => (Verdict::Retry(w.message), b.name_any()),
            None => (Verdict::Ready, b.name_any()),
        },
        None => (
            Verdict::Retry(format!(
                "TrainingJob {tj:?} holds no entry in a TrainingBudget: it waits until its budget admits it (its status says why), or names one"
            )),
            String::new(),
        ),
    }
}

/// The pods of `w`'s job: those its owner made (owned by it, or labelled with its uid, as a
/// batch Job's pods are with `batch.kubernetes.io/controller-uid`).
async fn pods_of(client: &Client, w: &Workload) -> Result<Vec<Pod>, kube::Error> {
    let owners: Vec<&str> = w.owner_references().iter().map(|o| o.uid.as_str()).collect();
    if owners.is_empty() {
        return Ok(Vec::new());
    }
    let api: Api<Pod> = Api::namespaced(client.clone(), &w.namespace().unwrap_or_default());
    let pods = api.list(&ListParams::default()).await?;
    Ok(pods
        .items
        .into_iter()
        .filter(|p| {
            p.owner_references().iter().any(|o| owners.contains(&o.uid.as_str())) || p.labels().values().any(|v| owners.contains(&v.as_str()))
        })
        .collect())
}

/// The GPU product label of node `name`, read once and remembered.
async fn gpu_product(ctx: &Context, name: &str) -> Option<String> {
    if let Some(known) = ctx.gpu_products.lock().unwrap().get(name) {
        return known.clone();
    }
    let api: Api<k8s_openapi::api::core::v1::Node> = Api::all(ctx.client.clone());
    let product = api.get_metadata_opt(name).await.ok().flatten().and_then(|n| n.labels().get(GPU_PRODUCT_LABEL).cloned());
    ctx.gpu_products.lock().unwrap().insert(name.to_string(), product.clone());
    product
}

/// Writes `verdict` into each of `checks` on `w` where it changes what `w` says.
async fn write_checks(client: &Client, w: &Workload, checks: &[String], verdict: &Verdict, budget: &str, now: &Time) -> Result<(), kube::Error> {
    let message = verdict.message(budget);
    let entries: Vec<_> =
        checks.iter().filter_map(|c| decide::entry(w.check(c), c, verdict.state(), &message, Some(RETRY_AFTER_SECONDS), now)).collect();
    if entries.is_empty() {
        return Ok(());
    }
    let api: Api<Workload> = Api::namespaced(client.clone(), &w.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": format!("{}/{}", kueue::GROUP, kueue::VERSION),
        "kind": "Workload",
        "metadata": {"name": w.name_any()},
        "status": {"admissionChecks": entries},
    });
    api.patch_status(&w.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await?;
    info!(state = verdict.state(), message, "admission check written");
    Ok(())
}

pub fn error_policy(w: Arc<Workload>, error: &Error, _ctx: Arc<Context>) -> Action {
    warn!(workload = %w.name_any(), "workload pass failed: {error}");
    Action::requeue(Duration::from_secs(5))
}

/// Sets the Active condition of every AdmissionCheck that names frugal's controller, when it
/// does not say so already.
async fn activate(client: &Client, check: &AdmissionCheck) -> Result<(), kube::Error> {
    if check.spec.controller_name != CONTROLLER_NAME {
        return Ok(());
    }
    const MESSAGE: &str = "frugal-operator decides each Workload against the TrainingBudget that binds it";
    let active = check.status.iter().flat_map(|s| &s.conditions).any(|c| c.type_ == "Active" && c.status == "True" && c.message == MESSAGE);
    if active {
        return Ok(());
    }
    let patch = serde_json::json!({
        "apiVersion": format!("{}/{}", kueue::GROUP, kueue::VERSION),
        "kind": "AdmissionCheck",
        "metadata": {"name": check.name_any()},
        "status": {"conditions": [{
            "type": "Active", "status": "True", "reason": "Active", "message": MESSAGE,
            "lastTransitionTime": now(), "observedGeneration": check.metadata.generation.unwrap_or(0),
        }]},
    });
    let api: Api<AdmissionCheck> = Api::all(client.clone());
    api.patch_status(&check.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await?;
    info!(check = %check.name_any(), "AdmissionCheck marked Active");
    Ok(())
}

/// Runs the check's controllers until `shutdown`: the AdmissionChecks' Active condition, and a
/// pass of every Workload in `workloads`; returns the Workloads' cache.
pub fn run(
    client: Client,
    workloads: Api<Workload>,
    budgets: Store<TrainingBudget>,
    jobs: Store<Job>,
    caches_synced: [Synced; 2],
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + Clone + 'static,
) -> Workloads {
    let (checks, checks_writer) = reflector::store();
    let check_client = client.clone();
    let check_stream = reflector::reflector(checks_writer, watcher(Api::<AdmissionCheck>::all(client.clone()), watcher::Config::default()))
        .default_backoff()
        .applied_objects();
    let stop_checks = shutdown.clone();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(check_stream.take_until(stop_checks));
        while let Some(event) = stream.next().await {
            match event {
                Ok(check) => {
                    if let Err(e) = activate(&check_client, &check).await {
                        warn!(check = %check.name_any(), "setting the AdmissionCheck's Active condition: {e}");
                    }
                }
                Err(e) => warn!("watching AdmissionChecks: {e}"),
            }
        }
    });

    let (store, writer) = reflector::store();
    let synced = Arc::new(AtomicBool::new(false));
    let marker = synced.clone();
    let stream = reflector::reflector(writer, watcher(workloads, watcher::Config::default()))
        .default_backoff()
        .inspect(move |e| {
            if matches!(e, Ok(watcher::Event::InitDone)) {
                marker.store(true, Ordering::Relaxed);
            }
        })
        .touched_objects();
    let ctx = Arc::new(Context { client, budgets, checks, jobs, gpu_products: Default::default(), synced: caches_synced });
    let controller = Controller::for_stream(stream, store.clone()).graceful_shutdown_on(shutdown).run(reconcile, error_policy, ctx).for_each(
        |result| async move {
            if let Err(e) = result {
                tracing::debug!("admission check: {e}");
            }
        },
    );
    tokio::spawn(controller);
    Workloads { store, synced }
}
