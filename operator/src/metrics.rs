//! Prometheus metrics and the health endpoints: `/metrics`, `/healthz`, `/readyz`.
//!
//! What the operator does (passes, errors, admission decisions) is counted as it happens; what
//! the cluster holds (bills, budgets, jobs by phase) is read from the caches at each scrape
//! (`spend`). `docs/operator.md` lists every series.

pub mod folded;
#[cfg(test)]
mod queries;
pub mod spend;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use frugal_api::{TrainingBudget, TrainingJob};
use kube::core::DeserializeGuard;
use kube::runtime::reflector::Store;
use prometheus_client::encoding::{EncodeLabelSet, text::encode};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CategoryLabels {
    pub category: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    pub policy: String,
}

/// One admission decision of a TrainingBudget's ledger.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdmissionLabels {
    pub namespace: String,
    pub budget: String,
    /// `admitted`, `queued` (the job waits), `refused` (it could never fit) or `stopped` (a
    /// running attempt stopped because the period is spent).
    pub outcome: &'static str,
    /// The condition reason of a queued, refused or stopped job; empty when admitted.
    pub reason: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub reconciles: Family<ResultLabels, Counter>,
    pub errors: Family<CategoryLabels, Counter>,
    pub duration: Histogram,
    /// Decisions of the budgets' ledgers on jobs asking to start (and running attempts stopped
    /// for a spent period).
    pub admissions: Family<AdmissionLabels, Counter>,
    pub status_patches: Counter,
    /// Orphans the reaper deleted, by kind.
    pub reaped: Family<KindLabels, Counter>,
    /// 1 for each of the chart's admission policies the operator was told of that the API
    /// server does not have (0 once it has).
    pub policy_missing: Family<PolicyLabels, Gauge>,
    /// The series read from the caches, as of the last scrape.
    exposition: Arc<spend::Scraped>,
    /// The billed totals this process exported.
    billed: Mutex<spend::Billed>,
    /// The durable record of deleted jobs' bills, as last read or written.
    folded: Mutex<folded::Folded>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut root = Registry::default();
        let exposition = Arc::new(spend::Scraped::default());
        root.register_collector(Box::new(exposition.clone()));
        let admissions = Family::<AdmissionLabels, Counter>::default();
        root.register(
            "frugal_budget_admission_decisions",
            "Decisions of TrainingBudgets' ledgers on jobs asking to start, by outcome and reason",
            admissions.clone(),
        );
        let registry = root.sub_registry_with_prefix("frugal_operator");
        let reconciles = Family::<ResultLabels, Counter>::default();
        for result in ["ok", "error"] {
            // both series exist from the start, at 0
            let _ = reconciles.get_or_create(&ResultLabels { result });
        }
        let errors = Family::<CategoryLabels, Counter>::default();
        let duration = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        let status_patches = Counter::default();
        let reaped = Family::<KindLabels, Counter>::default();
        let policy_missing = Family::<PolicyLabels, Gauge>::default();
        registry.register("reconciles", "Reconcile passes by result (ok or error)", reconciles.clone());
        registry.register("reconcile_errors", "Failed reconcile passes by error category", errors.clone());
        registry.register("reconcile_duration_seconds", "Duration of a reconcile pass", duration.clone());
        registry.register("status_patches", "Status patches sent (an unchanged status sends none)", status_patches.clone());
        registry.register("orphans_deleted", "Objects the operator made whose owner was gone, deleted by the reaper, by kind", reaped.clone());
        registry.register(
            "admission_policy_missing",
            "1 when an admission policy the chart installs is missing from the API server (without it the trainers' identities could write any status field)",
            policy_missing.clone(),
        );
        Self {
            registry: root,
            reconciles,
            errors,
            duration,
            admissions,
            status_patches,
            reaped,
            policy_missing,
            exposition,
            billed: Mutex::default(),
            folded: Mutex::default(),
        }
    }
}

impl Metrics {
    /// The exposition, with what the caches hold now: `jobs` the TrainingJob caches and
    /// `budgets` the TrainingBudget caches (one per watched namespace, or one).
    /// `complete`: every watched namespace's caches are filled, so the record of deleted jobs'
    /// bills (which spans them all) is added; before that it would show totals lower than the
    /// last process exported.
    pub fn encode(&self, jobs: &[Store<DeserializeGuard<TrainingJob>>], budgets: &[Store<TrainingBudget>], complete: bool) -> String {
        let jobs: Vec<_> = jobs.iter().flat_map(|s| s.state()).collect();
        let budgets: Vec<_> = budgets.iter().flat_map(|s| s.state()).collect();
        let budgets: Vec<&TrainingBudget> = budgets.iter().map(|b| b.as_ref()).collect();
        // an object that does not decode has nothing to count
        let snapshot = spend::snapshot(jobs.iter().filter_map(|j| j.0.as_ref().ok()), &budgets, k8s_openapi::jiff::Timestamp::now());
        self.encode_with(snapshot, complete)
    }

    /// The exposition with `snapshot` as what the caches hold.
    #[cfg(test)]
    pub fn encode_snapshot(&self, snapshot: spend::Snapshot) -> String {
        self.encode_with(snapshot, true)
    }

    fn encode_with(&self, snapshot: spend::Snapshot, complete: bool) -> String {
        let folded = if complete { self.folded.lock().unwrap().clone() } else { Default::default() };
        let billed = self.billed.lock().unwrap().observe(&snapshot.bills, &folded);
        self.exposition.set(spend::Exposition { billed, snapshot });
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("metrics encode into a String");
        out
    }
}

impl Metrics {
    /// The record of deleted jobs' bills as the API server now has it.
    pub fn set_folded(&self, folded: folded::Folded) {
        *self.folded.lock().unwrap() = folded;
    }
}

/// The Prometheus text format (0.0.4) of an OpenMetrics exposition, for a scraper that does not
/// ask for OpenMetrics (`promtool check metrics`, `curl`): a counter's HELP and TYPE name its
/// samples' `_total` name, and there is no `# EOF` (prometheus-client writes no `# UNIT`,
/// `_created` or exemplars here).
pub fn prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> =
        openmetrics.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter")).filter(|n| !n.ends_with("_total")).collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines().filter(|l| *l != "# EOF" && !l.starts_with("# UNIT ")) {
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let (name, rest) = line.strip_prefix(prefix)?.split_once(' ')?;
            counters.contains(name).then(|| format!("{prefix}{name}_total {rest}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// What the health endpoints report.
#[derive(Default)]
pub struct Health {
    /// The controller's caches have synced (or this replica is a standby).
    pub ready: AtomicBool,
    /// The main loop is alive.
    pub alive: AtomicBool,
    /// The TrainingJob caches, one per watched namespace (or one for all), each once it has
    /// its first full list.
    pub stores: Mutex<Vec<Store<DeserializeGuard<TrainingJob>>>>,
    /// The TrainingBudget caches, likewise.
    pub budgets: Mutex<Vec<Store<TrainingBudget>>>,
    /// How many watched scopes have synced their caches, and how many there are.
    pub synced: std::sync::atomic::AtomicUsize,
    pub scopes: std::sync::atomic::AtomicUsize,
}

#[derive(Clone)]
struct Shared {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

pub async fn serve(addr: std::net::SocketAddr, metrics: Arc<Metrics>, health: Arc<Health>) -> anyhow::Result<()> {
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(s): State<Shared>, headers: axum::http::HeaderMap| async move {
                let stores = s.health.stores.lock().unwrap().clone();
                let budgets = s.health.budgets.lock().unwrap().clone();
                let complete = !stores.is_empty() && stores.len() >= s.health.scopes.load(Ordering::Relaxed);
                let exposition = s.metrics.encode(&stores, &budgets, complete);
                // OpenMetrics to whoever asks for it (Prometheus does), else the text format
                let accept = headers.get(axum::http::header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or_default();
                if accept.contains("application/openmetrics-text") {
                    ([("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")], exposition)
                } else {
                    ([("content-type", "text/plain; version=0.0.4; charset=utf-8")], prometheus_text(&exposition))
                }
            }),
        )
        .route(
            "/healthz",
            get(|State(s): State<Shared>| async move {
                if s.health.alive.load(Ordering::Relaxed) { (StatusCode::OK, "ok") } else { (StatusCode::SERVICE_UNAVAILABLE, "stopped") }
            }),
        )
        .route(
            "/readyz",
            get(|State(s): State<Shared>| async move {
                if s.health.ready.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "caches not synced")
                }
            }),
        )
        .with_state(Shared { metrics, health });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    // the address bound (a port of 0 is chosen now): the e2e tests read it from this line
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    axum::serve(listener, app).await?;
    Ok(())
}

/// Per-job retry backoff for transient errors: 2s, 4s, ... up to 5 minutes.
#[derive(Default)]
pub struct Backoff(Mutex<std::collections::HashMap<String, u32>>);

impl Backoff {
    pub fn next(&self, key: &str) -> Duration {
        let mut m = self.0.lock().unwrap();
        let n = m.entry(key.to_string()).or_default();
        *n = (*n + 1).min(8);
        Duration::from_secs((1u64 << *n).min(300))
    }
    pub fn reset(&self, key: &str) {
        self.0.lock().unwrap().remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_named_for_prometheus() {
        let m = Metrics::default();
        m.reconciles.get_or_create(&ResultLabels { result: "ok" }).inc();
        m.errors.get_or_create(&CategoryLabels { category: "kubernetes" }).inc();
        m.duration.observe(0.01);
        let text = m.encode(&[], &[], true);
        assert!(text.contains("frugal_operator_reconciles_total{result=\"ok\"} 1"), "{text}");
        assert!(text.contains("frugal_operator_reconcile_errors_total{category=\"kubernetes\"} 1"), "{text}");
        assert!(text.contains("frugal_operator_reconcile_duration_seconds_count 1"), "{text}");
    }

    /// The whole exposition of a cluster with one budget, two jobs billed under it and one
    /// waiting: every series the docs list, named by Prometheus's rules.
    #[test]
    fn the_money_series_are_exposed_with_their_units() {
        let m = Metrics::default();
        m.admissions.get_or_create(&AdmissionLabels { namespace: "ml".into(), budget: "team".into(), outcome: "admitted", reason: "" }).inc();
        let text = m.encode_snapshot(spend::tests_support::cluster());
        for line in [
            "# TYPE frugal_billed_gpu_seconds counter",
            "frugal_billed_gpu_seconds_total{namespace=\"ml\",budget=\"team\",gpu_type=\"nvidia-h100-80gb\"} 5400.0",
            "frugal_billed_cost_total{namespace=\"ml\",budget=\"team\",gpu_type=\"nvidia-h100-80gb\",currency=\"EUR\"} 6.0",
            "frugal_budget_spent_gpu_seconds{namespace=\"ml\",budget=\"team\"} 1800.0",
            "frugal_budget_limit_gpu_seconds{namespace=\"ml\",budget=\"team\"} 36000.0",
            "frugal_budget_spent_cost{namespace=\"ml\",budget=\"team\",currency=\"EUR\"} 2.0",
            "frugal_budget_limit_cost{namespace=\"ml\",budget=\"team\",currency=\"EUR\"} 40.0",
            "frugal_budget_gpus_held{namespace=\"ml\",budget=\"team\"} 2",
            "frugal_budget_gpus_limit{namespace=\"ml\",budget=\"team\"} 4",
            "frugal_budget_period_start_timestamp_seconds{namespace=\"ml\",budget=\"team\"} 100.0",
            "frugal_budget_waiting_jobs{namespace=\"ml\",budget=\"team\",reason=\"BudgetExhausted\"} 1",
            "frugal_budget_oldest_wait_seconds{namespace=\"ml\",budget=\"team\",reason=\"BudgetExhausted\"} 600.0",
            "frugal_budget_admission_decisions_total{namespace=\"ml\",budget=\"team\",outcome=\"admitted\",reason=\"\"} 1",
            "frugal_operator_training_jobs{phase=\"Queued\",reason=\"BudgetExhausted\"} 1",
            "frugal_operator_training_jobs{phase=\"Running\",reason=\"\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn a_scraper_that_does_not_ask_for_openmetrics_gets_the_text_format() {
        let m = Metrics::default();
        let openmetrics = m.encode_snapshot(spend::tests_support::cluster());
        let text = prometheus_text(&openmetrics);
        for line in [
            "# HELP frugal_billed_cost_total Cost billed from the jobs' pods (status.cost), in the currency its label names",
            "# TYPE frugal_billed_cost_total counter",
            "# TYPE frugal_operator_reconciles_total counter",
            "# TYPE frugal_operator_reconcile_duration_seconds histogram",
            "# TYPE frugal_budget_gpus_held gauge",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
        assert!(!text.contains("# EOF") && !text.contains("_total_total"), "{text}");
        let samples = |t: &str| t.lines().filter(|l| !l.starts_with('#')).map(String::from).collect::<Vec<_>>();
        assert_eq!(samples(&text), samples(&openmetrics), "the samples are the same");
    }

    #[test]
    fn backoff_grows_and_resets() {
        let b = Backoff::default();
        assert_eq!(b.next("a"), Duration::from_secs(2));
        assert_eq!(b.next("a"), Duration::from_secs(4));
        for _ in 0..10 {
            b.next("a");
        }
        assert_eq!(b.next("a"), Duration::from_secs(256));
        b.reset("a");
        assert_eq!(b.next("a"), Duration::from_secs(2));
    }
}
