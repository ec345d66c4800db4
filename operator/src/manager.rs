//! The controller manager: the caches the two controllers share (the operator's Jobs, pods and
//! other children, the TrainingJobs), the TrainingJob controller and the TrainingBudget
//! controller wired to them, the wait until the API server serves the CRDs, readiness once the
//! caches hold their first lists, and a bounded stop.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tracing::{info, warn};

use frugal_api::{TrainingBudget, TrainingJob};

use crate::metrics::{Backoff, Health, Metrics};
use crate::names::{JOB_LABEL, Names};
use crate::settings::Settings;
use crate::synced::{mark_synced, synced};
use crate::training_job::CachedJob;
use crate::training_job::apply::{AppliedChildren, Watched};
use crate::training_job::children::applied_kinds;
use crate::{training_budget, training_job};

/// What a TrainingJob change must touch to trigger a reconcile: its spec (generation), labels
/// and annotations. Status writes (the trainer's progress reports, our own patches) do not.
fn spec_or_metadata(tj: &CachedJob) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let meta = tj.meta();
    meta.generation.hash(&mut h);
    meta.labels.hash(&mut h);
    meta.annotations.hash(&mut h);
    meta.deletion_timestamp.is_some().hash(&mut h);
    // the finalizer's add and a removal by anyone else
    meta.finalizers.hash(&mut h);
    Some(h.finish())
}

/// The annotation `kubectl apply` (client-side) keeps a whole copy of the object in.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// What a cached object needs no copy of: its managed fields and kubectl's last-applied copy,
/// which can be larger than the rest of it. Without this one tenant's large objects could grow
/// the operator's memory until it is killed, switching off enforcement for everyone.
fn lean<K: Resource>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
}

/// A watch of one applied kind of children: metadata only, and only the operator's own. Its
/// store lets a pass skip what is already as applied; a change to one wakes its job.
fn watch_metadata<K>(
    api: Api<PartialObjectMeta<K>>,
    selector: &watcher::Config,
) -> (Store<PartialObjectMeta<K>>, impl futures::Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>> + Send + 'static)
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    (reader, reflector::reflector(writer, watcher(api, selector.clone()).modify(lean)).default_backoff().touched_objects())
}

macro_rules! watch_applied_kinds {
    ($($field:ident: $kind:ty = $name:ident),* $(,)?) => {
        /// Watches every applied kind of children (`children::applied_kinds`): their caches, for
        /// the apply stage, and what makes the TrainingJob controller own them.
        fn watch_applied_kinds(
            scope: &Scope,
            client: &Client,
            selector: &watcher::Config,
        ) -> (Watched, impl FnOnce(Controller<CachedJob>) -> Controller<CachedJob>) {
            $(let $field = watch_metadata::<$kind>(scope.api(client), selector);)*
            let watched = Watched { $($field: $field.0,)* };
            $(let $field = $field.1;)*
            (watched, move |controller| controller$(.owns_stream($field))*)
        }
    };
}
applied_kinds!(watch_applied_kinds);

/// Where the controllers look.
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

/// Runs the controllers for each of `namespaces` (all namespaces when there is none) until
/// `shutdown` resolves: one set of caches and controllers a namespace, in this one process (a
/// TrainingJob, its children and its budget are always in one namespace).
pub async fn run_scopes(
    client: Client,
    settings: Settings,
    namespaces: Vec<String>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let shutdown = shutdown.shared();
    if let Some(location) = &settings.billed_record {
        load_billed_record(&client, location, &metrics).await;
    }
    let scopes: Vec<Scope> =
        if namespaces.is_empty() { vec![Scope { namespace: None }] } else { namespaces.into_iter().map(|n| Scope { namespace: Some(n) }).collect() };
    health.scopes.store(scopes.len(), Ordering::Relaxed);
    let runs = scopes.into_iter().map(|scope| run(client.clone(), settings.clone(), scope, metrics.clone(), health.clone(), shutdown.clone()));
    futures::future::try_join_all(runs).await?;
    Ok(())
}

/// Reads the record of deleted jobs' bills before /metrics shows any total, retrying an API
/// error a few times; a record that cannot be read is reported, and the counters then start
/// from the jobs that exist.
async fn load_billed_record(client: &Client, location: &crate::metrics::folded::Location, metrics: &Metrics) {
    let mut delay = Duration::from_millis(500);
    for attempt in 1..=5 {
        match crate::metrics::folded::load(client, location).await {
            Ok(folded) => {
                info!(record = %location, jobs_in_flight = folded.uids.len(), series = folded.totals.len(), "read the record of deleted jobs' bills");
                metrics.set_folded(folded);
                return;
            }
            Err(crate::metrics::folded::Error::Kube(e)) if attempt < 5 && !matches!(&e, kube::Error::Api(s) if s.code == 403) => {
                warn!(record = %location, retry_in = ?delay, "reading the record of deleted jobs' bills: {e}");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => {
                warn!(record = %location, "the record of deleted jobs' bills is not read, the billed counters count only the jobs that exist: {e}");
                return;
            }
        }
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
    let job_stream = reflector::reflector(job_writer, watcher(scope.api::<Job>(&client), children.clone()).modify(lean))
        .default_backoff()
        .inspect(mark_synced(jobs_synced_tx))
        .touched_objects();
    let (pod_reader, pod_writer) = reflector::store();
    let (pods_synced_tx, pods_synced) = synced();
    let pod_stream = reflector::reflector(pod_writer, watcher(scope.api::<Pod>(&client), children.clone()).modify(lean))
        .default_backoff()
        .inspect(mark_synced(pods_synced_tx))
        .touched_objects();
    let (watched, owns_applied_kinds) = watch_applied_kinds(&scope, &client, &children);
    let applied = AppliedChildren::new(watched);

    // the budgets' cache: which budget is its namespace's default, for every pass of a job
    let (budget_reader, budget_writer) = reflector::store();
    let (budgets_synced_tx, budgets_synced) = synced();
    let budget_stream = reflector::reflector(budget_writer, watcher(scope.api::<TrainingBudget>(&client), watcher::Config::default()).modify(lean))
        .default_backoff()
        .inspect(mark_synced(budgets_synced_tx))
        .touched_objects();

    let (tj_reader, tj_writer) = reflector::store();
    // every change of a TrainingJob naming a budget, its deletion included, wakes that budget's
    // controller (after the cache has it): it counts what the job spent, or releases its GPUs
    let (budget_tx, budget_rx) = futures::channel::mpsc::unbounded();
    let (tjs_synced_tx, tjs_synced) = synced();
    // an object that does not decode is cached as its metadata and the error (DeserializeGuard):
    // its pass reports it, and the watch goes on for the others
    let tj_stream = reflector::reflector(tj_writer, watcher(scope.api::<CachedJob>(&client), watcher::Config::default()).modify(lean))
        .default_backoff()
        .inspect(mark_synced(tjs_synced_tx))
        .inspect({
            let applied = applied.clone();
            let budgets = budget_reader.clone();
            move |event| {
                if let Ok(watcher::Event::Apply(object) | watcher::Event::Delete(object) | watcher::Event::InitApply(object)) = event
                    && let Ok(tj) = &object.0
                    && let Some(budget) = training_budget::budget_of(tj, &budgets)
                {
                    let _ = budget_tx.unbounded_send(budget);
                }
                // a deleted job's children go with it, and so does what was applied for them
                if let Ok(watcher::Event::Delete(tj)) = event {
                    applied.forget(&tj.namespace().unwrap_or_default(), &tj.name_any());
                }
            }
        })
        .applied_objects()
        .predicate_filter(spec_or_metadata, Default::default());

    // whether the chart's admission policies are in force; a change reconciles every job
    let policies_missing = crate::policies::Missing::default();
    crate::policies::first_check(&client, &settings.admission_policies, &policies_missing, &metrics).await;
    let (policies_tx, policies_rx) = futures::channel::mpsc::unbounded();
    tokio::spawn(crate::policies::watch(
        client.clone(),
        settings.admission_policies.clone(),
        policies_missing.clone(),
        metrics.clone(),
        policies_tx,
        shutdown.clone(),
    ));
    let settings_admission_check = settings.admission_check;
    let recorder = Recorder::new(client.clone(), Reporter { controller: "frugal-operator".into(), instance: std::env::var("POD_NAME").ok() });
    for category in training_job::error::Error::CATEGORIES {
        let _ = metrics.errors.get_or_create(&crate::metrics::CategoryLabels { category });
    }
    let ctx = Arc::new(training_job::Context {
        client: client.clone(),
        settings,
        jobs: job_reader.clone(),
        pods: pod_reader.clone(),
        metrics,
        recorder,
        backoff: Backoff::default(),
        applied,
        synced: [jobs_synced.clone(), pods_synced.clone(), budgets_synced.clone()],
        budgets: budget_reader.clone(),
        gpu_products: Default::default(),
        policies_missing: policies_missing.clone(),
        written_bills: Default::default(),
    });
    // /metrics reads the caches once they hold their first full list: a half-filled cache
    // would show the billed counters lower than the last process exported
    let (health_stores, stores_synced) = (health.clone(), [tjs_synced.clone(), budgets_synced.clone()]);
    let (metrics_jobs, metrics_budgets) = (tj_reader.clone(), budget_reader.clone());
    tokio::spawn(async move {
        let [jobs, budgets] = &stores_synced;
        if let (Ok(()), Ok(())) = tokio::join!(jobs.wait(), budgets.wait()) {
            health_stores.stores.lock().unwrap().push(metrics_jobs);
            health_stores.budgets.lock().unwrap().push(metrics_budgets);
        }
    });

    let stopping = shutdown.clone();
    let shutdown_reaper = shutdown.clone();
    let waiting = tj_reader.clone();
    let waiting_budgets = budget_reader.clone();
    let controller = owns_applied_kinds(Controller::for_stream(tj_stream, tj_reader.clone()))
        .with_config(ControllerConfig::default().concurrency(16))
        .owns_stream(job_stream)
        .watches_stream(pod_stream, |pod: Pod| {
            let ns = pod.namespace()?;
            let job = pod.labels().get(JOB_LABEL)?.clone();
            Some(ObjectRef::<CachedJob>::new(&job).within(&ns))
        })
        // a budget that appears, grows or releases GPUs wakes the jobs waiting for it
        .watches(scope.api::<TrainingBudget>(&client), watcher::Config::default(), move |b: TrainingBudget| {
            training_budget::waiting_jobs(&b, &waiting.state(), &waiting_budgets)
        })
        .reconcile_all_on(policies_rx)
        .graceful_shutdown_on(shutdown.clone());
    // Kueue's admission check, when on: Workloads of any kind decided against their budgets
    let workload_gone = settings_admission_check.then(|| {
        let workloads = crate::admission_check::run(
            client.clone(),
            scope.api::<crate::admission_check::kueue::Workload>(&client),
            budget_reader.clone(),
            job_reader.clone(),
            [budgets_synced.clone(), jobs_synced.clone()],
            shutdown.clone(),
        );
        let gone: training_budget::WorkloadGone = Arc::new(move |namespace, name, uid| workloads.gone(namespace, name, uid));
        gone
    });
    // the budgets' own controller keeps each ledger true to the TrainingJobs
    let budgets = Controller::for_stream(budget_stream, budget_reader.clone())
        .reconcile_on(budget_rx)
        .graceful_shutdown_on(shutdown)
        .run(
            training_budget::reconcile,
            training_budget::error_policy,
            Arc::new(training_budget::Context::new(
                client.clone(),
                tj_reader.clone(),
                pod_reader.clone(),
                [tjs_synced.clone(), pods_synced.clone()],
                budget_reader.clone(),
                workload_gone,
            )),
        )
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!("budget controller: {e}");
            }
        });

    // what lost its owner is deleted (it would run on outside every budget)
    tokio::spawn(crate::reaper::run(
        client.clone(),
        tj_reader.clone(),
        job_reader.clone(),
        pod_reader.clone(),
        [tjs_synced.clone(), jobs_synced.clone(), pods_synced.clone()],
        ctx.metrics.clone(),
        shutdown_reaper,
    ));
    let health_ready = health.clone();
    tokio::spawn(async move {
        if let (Ok(()), Ok(()), Ok(())) = tokio::join!(tjs_synced.wait(), jobs_synced.wait(), pods_synced.wait()) {
            // ready once every watched namespace's caches are
            let synced = health_ready.synced.fetch_add(1, Ordering::Relaxed) + 1;
            if synced >= health_ready.scopes.load(Ordering::Relaxed).max(1) {
                health_ready.ready.store(true, Ordering::Relaxed);
                info!("caches synced; ready");
            }
        }
    });

    let jobs = controller.run(training_job::reconcile, training_job::error_policy, ctx).for_each(|result| async move {
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
    use crate::training_job::validate::tests::training_job;
    use frugal_api::v1alpha1::{ProgressStatus, TrainingJobStatus};

    #[test]
    fn cached_objects_keep_no_managed_fields_nor_last_applied_copy() {
        let mut tj = training_job(1);
        tj.metadata.managed_fields = Some(vec![Default::default()]);
        tj.metadata.annotations = Some([(LAST_APPLIED.to_string(), "x".repeat(100_000)), ("team".to_string(), "ml".to_string())].into());
        lean(&mut tj);
        assert_eq!(tj.metadata.managed_fields, None);
        assert_eq!(tj.metadata.annotations.unwrap().keys().collect::<Vec<_>>(), ["team"]);
    }

    #[test]
    fn status_writes_do_not_trigger_a_pass_but_spec_and_labels_do() {
        let spec_or_metadata = |tj: &TrainingJob| spec_or_metadata(&kube::core::DeserializeGuard(Ok(tj.clone())));
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
