//! Helpers for tests that drive TrainingJobs: apply one, wait on its status.

use anyhow::Result;
use frugal_api::TrainingJob;
use frugal_api::testing::TrainingJobBuilder;
use frugal_api::v1alpha1::{Phase, Precision};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Patch, PatchParams};
use kube::runtime::{reflector, watcher};
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

/// The TrainingJob's condition of type `type_`, if it has one.
pub fn condition<'a>(tj: &'a TrainingJob, type_: &str) -> Option<&'a Condition> {
    tj.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)
}

/// Waits until attempt `attempt`'s `pods` pods are Running on fake GPU nodes, and returns them.
pub async fn running_pods(ctx: &TestContext, job: &str, attempt: i32, pods: usize) -> Result<Vec<Pod>> {
    let api: Api<Pod> = ctx.api();
    let selector = format!("frugal.dev/training-job={job},frugal.dev/attempt={attempt}");
    let (reader, writer) = reflector::store();
    // every event, the initial list's end included: pods already Running when the watch starts
    // are in the store only once its InitDone has been applied
    let mut changes = reflector::reflector(writer, watcher(api, watcher::Config::default().labels(&selector))).boxed();
    let what = format!("{pods} pods of {job} attempt {attempt} Running on GPU nodes");
    wait::until(&what, async {
        while changes.try_next().await?.is_some() {
            let running: Vec<Pod> = reader
                .state()
                .iter()
                .filter(|p| crate::fixtures::phase(p) == "Running")
                .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()).is_some_and(|n| n.starts_with("frugal-gpu-")))
                .map(|p| (**p).clone())
                .collect();
            if running.len() == pods {
                return Ok(running);
            }
        }
        anyhow::bail!("watch ended")
    })
    .await
}

/// The step a trainer's output says it resumed at (its `resume` event), if it resumed.
pub fn resumed_at(output: &str) -> Option<i64> {
    event_steps(output, "resume").next()
}

/// The step of the last checkpoint a trainer's output says it committed (its `checkpoint`
/// events), if any.
pub fn last_checkpoint(output: &str) -> Option<i64> {
    event_steps(output, "checkpoint").last()
}

/// The training loss of each `step` event in a trainer's output, in order, as (step, loss).
pub fn step_losses(output: &str) -> Vec<(i64, f64)> {
    output
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "step")
        .filter_map(|v| Some((v["step"].as_i64()?, v["loss"].as_f64()?)))
        .collect()
}

/// Checks a trainer's output as a log collector reads it: every line a JSON object with
/// `timestamp`, `level`, `target`, and the TrainingJob's `job` and `namespace`. Returns the
/// number of lines.
pub fn check_trainer_log(output: &str, job: &str, namespace: &str) -> anyhow::Result<usize> {
    let lines = json_log(output, "a trainer")?;
    for (line, v) in &lines {
        anyhow::ensure!(v["job"] == job && v["namespace"] == namespace, "a trainer log line does not name {namespace}/{job}: {line}");
    }
    Ok(lines.len())
}

/// The lines of `who`'s JSON log, each parsed and checked for `timestamp`, `level` and `target`.
fn json_log<'a>(output: &'a str, who: &str) -> anyhow::Result<Vec<(&'a str, serde_json::Value)>> {
    let mut lines = Vec::new();
    for line in output.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| anyhow::anyhow!("{who} log line is not JSON ({e}): {line}"))?;
        for key in ["timestamp", "level", "target"] {
            anyhow::ensure!(v[key].is_string(), "{who} log line has no {key}: {line}");
        }
        lines.push((line, v));
    }
    Ok(lines)
}

/// Checks the operator's JSON log: every line an object with `timestamp`, `level` and `target`,
/// and every line a reconcile pass logged (its `span`) naming the `namespace` and the `job` or
/// `budget`. Returns the lines that name TrainingJob `job` of `namespace`.
pub fn check_operator_log(output: &str, namespace: &str, job: &str) -> anyhow::Result<usize> {
    let mut named = 0;
    for (line, v) in json_log(output, "an operator")? {
        let span = &v["span"];
        if span["name"] == "reconcile" {
            anyhow::ensure!(
                span["namespace"].is_string() && (span["job"].is_string() || span["budget"].is_string()),
                "a reconcile's log line does not name its object and namespace: {line}"
            );
            named += usize::from(span["namespace"] == namespace && span["job"] == job);
        }
    }
    Ok(named)
}

/// The steps of a trainer's JSON events named `event`, in order.
fn event_steps<'a>(output: &'a str, event: &'a str) -> impl Iterator<Item = i64> + 'a {
    output
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(move |v| v["event"] == event)
        .filter_map(|v| v["step"].as_i64())
}

/// Waits until the TrainingJob has Succeeded or Failed.
pub async fn finished(ctx: &TestContext, name: &str) -> Result<TrainingJob> {
    job_where(ctx, name, "phase Succeeded or Failed", |tj| matches!(phase(tj), Some(Phase::Succeeded | Phase::Failed))).await
}

/// Waits up to `limit` until the TrainingJob has Succeeded or Failed: for jobs that train in
/// containers on the real node.
pub async fn finished_within(ctx: &TestContext, name: &str, limit: std::time::Duration) -> Result<TrainingJob> {
    let api: Api<TrainingJob> = ctx.api();
    let done = |tj: Option<&TrainingJob>| tj.is_some_and(|tj| matches!(phase(tj), Some(Phase::Succeeded | Phase::Failed)));
    wait::within(limit, &format!("{name} Succeeded or Failed"), kube::runtime::wait::await_condition(api, name, done))
        .await?
        .ok_or_else(|| anyhow::anyhow!("{name} was deleted"))
}

/// A job of `stages` pipeline stages of a small model, `gpus_per_pod` of them to a pod, on the
/// fake GPU nodes: kwok runs its pods, which stay Running until a test sets their outcome.
pub fn fake_gpu_job(name: &str, stages: i32, gpus_per_pod: i32) -> TrainingJob {
    TrainingJob::test().name(name).stages(stages).gpus_per_pod(gpus_per_pod).micro_batches(8).batch_size(16).node_selector("type", "kwok").build()
}

/// A CPU job on the real node: `steps` steps of a tiny model on synthetic data in `stages`
/// pipeline stages (one pod each), checkpointing every 10 steps to `claim` if given. Its pods
/// run the trainer image in containers (the operator's `--trainer-cpu-image`), find their peers
/// through cluster DNS and report with their own token.
pub fn real_cpu_job(name: &str, steps: i64, claim: Option<&str>, stages: i32) -> TrainingJob {
    let (key, value) = crate::node::REAL_NODE_LABEL;
    cpu_training_job(name, steps, claim, stages).node_selector(key, value).build()
}

/// `steps` steps of a tiny model on synthetic data in `stages` pipeline stages (one pod each) on
/// one CPU thread a pod, reporting every step and checkpointing every 10 steps to `claim` if given.
fn cpu_training_job(name: &str, steps: i64, claim: Option<&str>, stages: i32) -> TrainingJobBuilder {
    TrainingJob::test()
        .name(name)
        .custom_model(4, 32, 2, 16)
        .synthetic_tokens(20_000)
        .stages(stages)
        .micro_batches(4)
        .steps(steps)
        .batch_size(4)
        .precision(Precision::Fp32)
        .with(|s| {
            (s.training.eval_interval, s.training.checkpoint_interval, s.training.log_interval) = (1_000_000, 10, 1);
            s.run_policy.backoff_limit = 2;
            s.checkpoint.claim_name = claim.map(Into::into);
        })
        .cpu()
        .env("FRUGAL_THREADS", "1")
}

/// Ends a Running fake pod as Succeeded: kwok's stage reads [`crate::TEST_OUTCOME_ANNOTATION`]
/// and writes the containers' `finishedAt`.
pub async fn finish_pod(ctx: &TestContext, pod: &str) -> Result<()> {
    let patch = serde_json::json!({"metadata": {"annotations": {crate::TEST_OUTCOME_ANNOTATION: "Succeeded"}}});
    ctx.api::<Pod>().patch(pod, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

/// [`crate::run`], and, pass or fail, ends the namespace's fake pods before the namespace goes,
/// so that none of them holds its node's GPUs while the namespace is being deleted.
pub async fn run_ending_pods<F, Fut>(test: &str, body: F)
where
    F: FnOnce(TestContext) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send + 'static,
{
    use futures::FutureExt as _;
    crate::run(test, |ctx| async move {
        let outcome = std::panic::AssertUnwindSafe(body(ctx.clone())).catch_unwind().await;
        for pod in ctx.api::<Pod>().list(&Default::default()).await?.items {
            if !matches!(crate::fixtures::phase(&pod), "Succeeded" | "Failed") {
                let _ = finish_pod(&ctx, &pod.name_any()).await;
            }
        }
        match outcome {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
    .await;
}
