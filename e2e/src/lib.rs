//! End-to-end test harness for frugal.
//!
//! The tests run against a real API server: the local control plane from `e2e/cluster/up` or a
//! kind cluster from `e2e/kind/run`. They are gated behind `FRUGAL_E2E=1` so a plain
//! `cargo test` passes without a cluster; once enabled, an unreachable cluster is a failure, not
//! a skip.
//!
//! Each test runs inside [`run`], which gives it a fresh namespace, waits on conditions through
//! watches (never sleeps), and on failure prints the namespace's pods and events and the tail of
//! the operator log named by `FRUGAL_OPERATOR_LOG`, then deletes the namespace (a failed test's
//! is kept for inspection with `FRUGAL_E2E_KEEP_NAMESPACE=1`).

pub mod argocd;
pub mod diagnostics;
pub mod fixtures;
pub mod flux;
pub mod manifests;
pub mod node;
pub mod operator;
pub mod processes;
pub mod prometheus;
pub mod training_job;
pub mod wait;

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::{Api, Client};

/// Label put on every namespace the harness creates, so leftovers are easy to find.
pub const NAMESPACE_LABEL: &str = "frugal.dev/e2e";
/// Field manager for server-side apply from tests.
pub const FIELD_MANAGER: &str = "frugal-e2e";

/// Annotation the local cluster's kwok stages read to finish a Running pod
/// (`Succeeded` or `Failed`); see `e2e/cluster/kwok/stages.yaml`.
pub const TEST_OUTCOME_ANNOTATION: &str = "frugal.dev/test-outcome";
/// Exit code written into the finished pod's container statuses (default 0 / 1).
pub const TEST_EXIT_CODE_ANNOTATION: &str = "frugal.dev/test-exit-code";

/// GPU resource the fake nodes offer, and how many each GPU node has.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";
pub const GPUS_PER_NODE: u32 = 4;

/// True when `FRUGAL_E2E=1`.
pub fn enabled() -> bool {
    std::env::var("FRUGAL_E2E").is_ok_and(|v| v == "1")
}

/// True when `FRUGAL_E2E_KEEP_NAMESPACE=1`: a failed test leaves its namespace, and what is in
/// it, for inspection.
pub fn keep_failed_namespace() -> bool {
    std::env::var("FRUGAL_E2E_KEEP_NAMESPACE").is_ok_and(|v| v == "1")
}

/// How long any single wait may take (`FRUGAL_E2E_TIMEOUT_SECS`, default 90).
pub fn timeout() -> Duration {
    let secs = std::env::var("FRUGAL_E2E_TIMEOUT_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(90);
    Duration::from_secs(secs)
}

/// The repository root (for `crds/`, `examples/`, `api/tests/invalid/`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("e2e crate sits inside the repository").to_path_buf()
}

/// What a test body gets: a client and its own namespace.
#[derive(Clone)]
pub struct TestContext {
    pub client: Client,
    pub namespace: String,
}

impl TestContext {
    /// A namespaced API in this test's namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }
}

/// Connects using `KUBECONFIG` (or the in-cluster config) and checks the API server answers.
pub async fn connect() -> Result<Client> {
    let client = Client::try_default().await.context("building a client from KUBECONFIG")?;
    let version = tokio::time::timeout(Duration::from_secs(15), client.apiserver_version())
        .await
        .context("API server did not answer /version within 15s")?
        .context("API server unreachable")?;
    eprintln!("e2e: API server {}", version.git_version);
    Ok(client)
}

/// Runs one e2e test in a fresh namespace.
///
/// Without `FRUGAL_E2E=1` it prints a note and returns, so the test passes without a cluster.
/// With it, a missing cluster, an `Err` or a panic in `body` fails the test; on failure the
/// namespace's pods, events and the operator log are printed first. The namespace is deleted,
/// unless the test failed and [`keep_failed_namespace`] says to keep it.
pub async fn run<F, Fut>(test: &str, body: F)
where
    F: FnOnce(TestContext) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    if !enabled() {
        eprintln!("e2e: skipping {test}: set FRUGAL_E2E=1 (and KUBECONFIG) to run against a cluster");
        return;
    }
    let client = connect().await.unwrap_or_else(|e| panic!("FRUGAL_E2E=1 but no usable cluster: {e:#}"));
    let namespace = create_namespace(&client, test).await.unwrap_or_else(|e| panic!("creating the test namespace: {e:#}"));
    let ctx = TestContext { client: client.clone(), namespace: namespace.clone() };

    // Spawned so that a panic inside the body still lets us dump state and clean up.
    let outcome = tokio::spawn(body(ctx)).await;
    let failure = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("{e:?}")),
        Err(join) => Some(match join.try_into_panic() {
            Ok(payload) => panic_message(&payload),
            Err(e) => e.to_string(),
        }),
    };
    if failure.is_some() {
        diagnostics::dump(&client, &namespace).await;
    }
    if failure.is_some() && keep_failed_namespace() {
        eprintln!("e2e: kept namespace {namespace} for inspection (FRUGAL_E2E_KEEP_NAMESPACE=1); `kubectl delete namespace {namespace}` removes it");
    } else if let Err(e) = delete_namespace(&client, &namespace).await {
        eprintln!("e2e: deleting namespace {namespace}: {e:#}");
    }
    if let Some(msg) = failure {
        panic!("{test} failed in namespace {namespace}: {msg}");
    }
}

fn panic_message(payload: &Box<dyn std::any::Any + Send>) -> String {
    payload.downcast_ref::<String>().cloned().or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_else(|| "panic".to_string())
}

/// A DNS-1123 name unique per run: `e2e-<test>-<suffix>`.
fn namespace_name(test: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
    let suffix = format!("{:x}", (nanos ^ (u128::from(std::process::id()) << 64)) & 0xff_ffff_ffff);
    let slug: String = test.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    let slug = slug.trim_matches('-');
    let slug = &slug[..slug.len().min(63 - 5 - suffix.len())];
    format!("e2e-{}-{suffix}", slug.trim_end_matches('-'))
}

async fn create_namespace(client: &Client, test: &str) -> Result<String> {
    let name = namespace_name(test);
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some([(NAMESPACE_LABEL.to_string(), "true".to_string())].into()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.with_context(|| format!("creating namespace {name}"))?;
    // Pods are rejected until the controller-manager has created the default ServiceAccount.
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &name);
    wait::until(
        &format!("ServiceAccount {name}/default"),
        kube::runtime::wait::await_condition(sas, "default", kube::runtime::wait::conditions::is_created()),
    )
    .await?;
    Ok(name)
}

async fn delete_namespace(client: &Client, name: &str) -> Result<()> {
    // Background deletion: the namespace controller finishes it; tests never share namespaces.
    Api::<Namespace>::all(client.clone()).delete(name, &DeleteParams::background()).await?;
    Ok(())
}
