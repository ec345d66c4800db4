//! Helpers for tests that drive TrainingJobs: apply one, wait on its status.

use anyhow::Result;
use frugal_api::TrainingJob;
use frugal_api::v1alpha1::Phase;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt as _};

use crate::{FIELD_MANAGER, TestContext, wait};

/// Server-side applies `tj` in the test's namespace and returns what the API server stored.
pub async fn apply(ctx: &TestContext, tj: &TrainingJob) -> Result<TrainingJob> {
    let api: Api<TrainingJob> = ctx.api();
    Ok(api.patch(&tj.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(tj)).await?)
}

/// Waits until the TrainingJob satisfies `pred`.
pub async fn job_where(ctx: &TestContext, name: &str, what: &str, pred: impl Fn(&TrainingJob) -> bool + Send + 'static) -> Result<TrainingJob> {
    let api: Api<TrainingJob> = ctx.api();
    wait::for_object(&api, name, what, move |tj: Option<&TrainingJob>| tj.is_some_and(&pred)).await
}

pub fn phase(tj: &TrainingJob) -> Option<Phase> {
    tj.status.as_ref().and_then(|s| s.phase)
}

/// Waits until the TrainingJob has Succeeded or Failed.
pub async fn finished(ctx: &TestContext, name: &str) -> Result<TrainingJob> {
    job_where(ctx, name, "phase Succeeded or Failed", |tj| matches!(phase(tj), Some(Phase::Succeeded | Phase::Failed))).await
}

/// What the pod runner captured of a pod's output (`FRUGAL_POD_RUNNER_LOG_DIR`).
pub fn pod_output(namespace: &str, pod: &str) -> String {
    let dir = std::env::var("FRUGAL_POD_RUNNER_LOG_DIR").unwrap_or_default();
    std::fs::read_to_string(std::path::Path::new(&dir).join(format!("{namespace}.{pod}.log"))).unwrap_or_default()
}
