//! Prometheus metrics and the health endpoints: `/metrics`, `/healthz`, `/readyz`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use frugal_api::TrainingJob;
use frugal_api::v1alpha1::Phase;
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: String,
}

pub struct Metrics {
    registry: Registry,
    pub reconciles: Family<ResultLabels, Counter>,
    pub errors: Family<CategoryLabels, Counter>,
    pub duration: Histogram,
    pub jobs: Family<PhaseLabels, Gauge>,
    pub status_patches: Counter,
    /// Orphans the reaper deleted, by kind.
    pub reaped: Family<KindLabels, Counter>,
    /// 1 for each of the chart's admission policies the operator was told of that the API
    /// server does not have (0 once it has).
    pub policy_missing: Family<PolicyLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("frugal_operator");
        let reconciles = Family::<ResultLabels, Counter>::default();
        let errors = Family::<CategoryLabels, Counter>::default();
        let duration = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        let jobs = Family::<PhaseLabels, Gauge>::default();
        let status_patches = Counter::default();
        let reaped = Family::<KindLabels, Counter>::default();
        let policy_missing = Family::<PolicyLabels, Gauge>::default();
        registry.register("reconciles", "Reconcile passes by result (ok or error)", reconciles.clone());
        registry.register("reconcile_errors", "Failed reconcile passes by error category", errors.clone());
        registry.register("reconcile_duration_seconds", "Duration of a reconcile pass", duration.clone());
        registry.register("training_jobs", "TrainingJobs by phase", jobs.clone());
        registry.register("status_patches", "Status patches sent (an unchanged status sends none)", status_patches.clone());
        registry.register("orphans_deleted", "Objects the operator made whose owner was gone, deleted by the reaper, by kind", reaped.clone());
        registry.register(
            "admission_policy_missing",
            "1 when an admission policy the chart installs is missing from the API server (without it the trainers' identities could write any status field)",
            policy_missing.clone(),
        );
        Self { registry, reconciles, errors, duration, jobs, status_patches, reaped, policy_missing }
    }
}

impl Metrics {
    /// Recounts jobs by phase from the controller's cache.
    fn count_phases(&self, stores: &[Store<DeserializeGuard<TrainingJob>>]) {
        let phases = [Phase::Pending, Phase::Queued, Phase::Running, Phase::Suspended, Phase::Succeeded, Phase::Failed];
        for p in phases {
            let n: usize = stores
                .iter()
                .map(|store| {
                    // an object that does not decode has no phase to count
                    let jobs = store.state();
                    jobs.iter()
                        .filter_map(|j| j.0.as_ref().ok())
                        .filter(|j| j.status.as_ref().and_then(|s| s.phase).unwrap_or(Phase::Pending) == p)
                        .count()
                })
                .sum();
            self.jobs.get_or_create(&PhaseLabels { phase: format!("{p:?}") }).set(n as i64);
        }
    }

    /// The exposition; `stores` are the TrainingJob caches (one per watched namespace, or one).
    pub fn encode(&self, stores: &[Store<DeserializeGuard<TrainingJob>>]) -> String {
        if !stores.is_empty() {
            self.count_phases(stores);
        }
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("metrics encode into a String");
        out
    }
}

/// What the health endpoints report.
#[derive(Default)]
pub struct Health {
    /// The controller's caches have synced (or this replica is a standby).
    pub ready: AtomicBool,
    /// The main loop is alive.
    pub alive: AtomicBool,
    /// The TrainingJob caches, one per watched namespace (or one for all).
    pub stores: Mutex<Vec<Store<DeserializeGuard<TrainingJob>>>>,
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
            get(|State(s): State<Shared>| async move {
                let stores = s.health.stores.lock().unwrap().clone();
                ([("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")], s.metrics.encode(&stores))
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
        let text = m.encode(&[]);
        assert!(text.contains("frugal_operator_reconciles_total{result=\"ok\"} 1"), "{text}");
        assert!(text.contains("frugal_operator_reconcile_errors_total{category=\"kubernetes\"} 1"), "{text}");
        assert!(text.contains("frugal_operator_reconcile_duration_seconds_count 1"), "{text}");
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
