//! The operator end to end: each test starts `frugal-operator run` for its own namespace (see
//! `frugal_e2e::operator`) against the local control plane, whose kwok nodes fake the GPU pods;
//! a pod finishes when the test sets its outcome annotation.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};

use futures::{FutureExt as _, StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, ResourceExt as _};

use frugal_api::TrainingJob;
use frugal_api::v1alpha1::Phase;
use frugal_e2e::operator::Operator;
use frugal_e2e::training_job::{apply, condition, job_where, phase, running_pods};
use frugal_e2e::{TEST_OUTCOME_ANNOTATION, TestContext, manifests, run, wait};

/// A small job of `stages` one-GPU pods on the fake nodes.
fn training_job(name: &str, stages: i32, backoff_limit: i32) -> TrainingJob {
    let mut tj = frugal_e2e::training_job::fake_gpu_job(name, stages, 1);
    tj.spec.run_policy.backoff_limit = backoff_limit;
    tj
}

/// kwok removes a deleted pod once its grace period is over; a short one keeps the fake GPUs
/// free for the next test.
const OPERATOR_ARGS: &[&str] = &["--termination-grace-seconds", "5"];

async fn setup(ctx: &TestContext) -> Result<Operator> {
    manifests::install_crds(&ctx.client).await?;
    Operator::start(&ctx.namespace, OPERATOR_ARGS)
}

/// Runs `body` in a fresh namespace and, pass or fail, ends its pods before the namespace goes:
/// a pod deleted while Running keeps the Job controller's finalizer on kwok's nodes (no kubelet
/// reports it terminated), and would hold its fake GPU for every later test.
async fn operator_test<F, Fut>(name: &str, body: F)
where
    F: FnOnce(TestContext) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send + 'static,
{
    run(name, |ctx| async move {
        let outcome = std::panic::AssertUnwindSafe(body(ctx.clone())).catch_unwind().await;
        if let Err(e) = settle(&ctx).await {
            eprintln!("e2e: ending the pods of {}: {e:#}", ctx.namespace);
        }
        match outcome {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
    .await;
}

/// Marks every pod of the namespace that is still live as Succeeded.
async fn settle(ctx: &TestContext) -> Result<()> {
    for pod in ctx.api::<Pod>().list(&ListParams::default()).await?.items {
        if !matches!(frugal_e2e::fixtures::phase(&pod), "Succeeded" | "Failed") {
            match finish(ctx, &pod, "Succeeded").await {
                Err(e) if e.downcast_ref::<kube::Error>().is_some_and(|e| matches!(e, kube::Error::Api(s) if s.code == 404)) => {}
                other => other?,
            }
        }
    }
    Ok(())
}

/// Ends a pod as the kubelet would report it: Succeeded or Failed (kwok's stages read this).
async fn finish(ctx: &TestContext, pod: &Pod, outcome: &str) -> Result<()> {
    let api: Api<Pod> = ctx.api();
    let patch = serde_json::json!({"metadata": {"annotations": {TEST_OUTCOME_ANNOTATION: outcome}}});
    api.patch(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

async fn attempt_jobs(ctx: &TestContext, job: &str) -> Result<Vec<String>> {
    let api: Api<Job> = ctx.api();
    let mut names: Vec<String> =
        api.list(&ListParams::default().labels(&format!("frugal.dev/training-job={job}"))).await?.items.iter().map(|j| j.name_any()).collect();
    names.sort();
    Ok(names)
}

#[tokio::test]
async fn a_job_runs_on_gpu_nodes_and_succeeds_with_its_times() {
    operator_test("operator-succeeds", |ctx| async move {
        let _operator = setup(&ctx).await?;
        apply(&ctx, &training_job("lm", 2, 3)).await?;
        let planned = job_where(&ctx, "lm", "a plan in the status", |tj| tj.status.as_ref().is_some_and(|s| s.plan.is_some())).await?;
        assert_eq!(planned.status.as_ref().unwrap().plan.as_ref().unwrap().gpus, 2);

        let pods = running_pods(&ctx, "lm", 1, 2).await?;
        let job: Job = ctx.api::<Job>().get("lm-a1").await?;
        assert_eq!(job.labels()["frugal.dev/attempt"], "1");
        let spec = job.spec.as_ref().unwrap();
        assert_eq!((spec.backoff_limit, spec.completion_mode.as_deref()), (Some(0), Some("Indexed")));
        for name in ["lm", "lm-config", "lm-token"] {
            let found = match name {
                "lm" => ctx.api::<Service>().get_opt(name).await?.is_some(),
                "lm-config" => ctx.api::<ConfigMap>().get_opt(name).await?.is_some(),
                _ => ctx.api::<Secret>().get_opt(name).await?.is_some(),
            };
            ensure!(found, "child {name} missing");
        }
        let running = job_where(&ctx, "lm", "phase Running", |tj| phase(tj) == Some(Phase::Running)).await?;
        assert_eq!(condition(&running, "Ready").map(|c| c.status.as_str()), Some("True"));

        for pod in &pods {
            finish(&ctx, pod, "Succeeded").await?;
        }
        let done = job_where(&ctx, "lm", "phase Succeeded", |tj| phase(tj) == Some(Phase::Succeeded)).await?;
        let status = done.status.unwrap();
        let (start, end) = (status.start_time.context("startTime")?, status.completion_time.context("completionTime")?);
        ensure!(start.0 <= end.0, "started {start:?} after completing {end:?}");
        assert_eq!((status.attempt, status.restarts), (Some(1), Some(0)));
        let succeeded = status.conditions.iter().find(|c| c.type_ == "Succeeded").unwrap();
        assert_eq!((succeeded.status.as_str(), succeeded.observed_generation), ("True", done.metadata.generation));
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn a_failed_stage_starts_the_next_attempt_until_the_backoff_limit() {
    operator_test("operator-backoff", |ctx| async move {
        let _operator = setup(&ctx).await?;
        apply(&ctx, &training_job("lm", 2, 1)).await?;
        let pods = running_pods(&ctx, "lm", 1, 2).await?;
        // one stage fails: the whole attempt goes, and a new Job runs attempt 2
        finish(&ctx, &pods[0], "Failed").await?;
        let second = running_pods(&ctx, "lm", 2, 2).await?;
        assert_eq!(attempt_jobs(&ctx, "lm").await?, vec!["lm-a1", "lm-a2"]);
        job_where(&ctx, "lm", "attempt 2 Running, restarts 1", |tj| {
            phase(tj) == Some(Phase::Running) && tj.status.as_ref().is_some_and(|s| s.restarts == Some(1) && s.attempt == Some(2))
        })
        .await?;
        // attempt 2 fails too: backoffLimit 1 is used up
        finish(&ctx, &second[1], "Failed").await?;
        let failed = job_where(&ctx, "lm", "phase Failed", |tj| phase(tj) == Some(Phase::Failed)).await?;
        let c = condition(&failed, "Failed").unwrap();
        assert_eq!(c.reason, "BackoffLimitExceeded");
        ensure!(c.message.contains("exceed runPolicy.backoffLimit 1"), "message: {}", c.message);
        assert_eq!(failed.status.as_ref().unwrap().restarts, Some(2));
        assert!(failed.status.as_ref().unwrap().completion_time.is_some());
        assert_eq!(attempt_jobs(&ctx, "lm").await?, vec!["lm-a1", "lm-a2"], "no third attempt");
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn suspend_stops_the_pods_and_resume_starts_the_next_attempt() {
    operator_test("operator-suspend", |ctx| async move {
        let _operator = setup(&ctx).await?;
        apply(&ctx, &training_job("lm", 1, 3)).await?;
        running_pods(&ctx, "lm", 1, 1).await?;
        let api: Api<TrainingJob> = ctx.api();
        let suspend = |on: bool| serde_json::json!({"spec": {"runPolicy": {"suspend": on}}});
        api.patch("lm", &PatchParams::default(), &Patch::Merge(&suspend(true))).await?;
        let suspended = job_where(&ctx, "lm", "Suspended with reason Suspended", |tj| {
            phase(tj) == Some(Phase::Suspended) && condition(tj, "Suspended").is_some_and(|c| c.reason == "Suspended")
        })
        .await?;
        assert_eq!(condition(&suspended, "Ready").map(|c| c.status.as_str()), Some("True"));
        let live: Vec<Pod> = ctx.api::<Pod>().list(&ListParams::default().labels("frugal.dev/training-job=lm")).await?.items;
        ensure!(live.iter().all(|p| matches!(frugal_e2e::fixtures::phase(p), "Failed" | "Succeeded")), "pods still live while suspended");

        api.patch("lm", &PatchParams::default(), &Patch::Merge(&suspend(false))).await?;
        running_pods(&ctx, "lm", 2, 1).await?;
        let resumed = job_where(&ctx, "lm", "Running again", |tj| phase(tj) == Some(Phase::Running)).await?;
        assert_eq!(resumed.status.as_ref().unwrap().restarts, Some(0), "a suspension is not a failure");
        Ok(())
    })
    .await;
}

/// Deleting a job stops it: its pods are deleted (SIGTERM and the grace period to checkpoint on a
/// real node), the TrainingJob stays (its finalizer) until they have ended, and then it and its
/// children go.
#[tokio::test]
async fn deleting_the_job_stops_its_pods_and_then_deletes_its_children() {
    operator_test("operator-cascade", |ctx| async move {
        let _operator = setup(&ctx).await?;
        let tj = apply(&ctx, &training_job("lm", 1, 3)).await?;
        let pods = running_pods(&ctx, "lm", 1, 1).await?;
        let jobs: Api<Job> = ctx.api();
        let job = jobs.get("lm-a1").await?;
        let secret = ctx.api::<Secret>().get("lm-token").await?;
        let held = job_where(&ctx, "lm", "the finalizer on lm", |tj| tj.finalizers().iter().any(|f| f == "frugal.dev/stop-and-bill")).await?;
        eprintln!("e2e: finalizers of lm: {:?}", held.finalizers());
        // the pod outlives its deletion until the test ends it, as a real one does for its grace
        // period (kwok's would go at once)
        let hold = serde_json::json!({"metadata": {"finalizers": ["frugal.dev/test-hold"]}});
        ctx.api::<Pod>().patch(&pods[0].name_any(), &PatchParams::default(), &Patch::Merge(&hold)).await?;
        ctx.api::<TrainingJob>().delete("lm", &DeleteParams::background()).await?;
        let pod_api: Api<Pod> = ctx.api();
        let stopping = wait::for_object(&pod_api, &pods[0].name_any(), "lm's pod deleted (stopping)", |p: Option<&Pod>| {
            p.is_none_or(|p| p.metadata.deletion_timestamp.is_some())
        })
        .await;
        // its pod still runs: the job is still there, deleting
        let deleting = ctx.api::<TrainingJob>().get_opt("lm").await?.context("lm went while its pod ran")?;
        ensure!(deleting.metadata.deletion_timestamp.is_some(), "lm is not being deleted");
        stopping?;
        // the pod ends (kwok removes it once the test's finalizer goes)
        let release = serde_json::json!({"metadata": {"finalizers": null}});
        ctx.api::<Pod>().patch(&pods[0].name_any(), &PatchParams::default(), &Patch::Merge(&release)).await?;
        wait::for_deletion(&ctx.api::<TrainingJob>(), "lm", &tj.uid().unwrap()).await?;
        wait::for_deletion(&jobs, "lm-a1", &job.uid().unwrap()).await?;
        wait::for_deletion(&ctx.api::<Secret>(), "lm-token", &secret.uid().unwrap()).await?;
        Ok(())
    })
    .await;
}

/// An object of a child's name that the job did not make is never taken over, changed or
/// deleted: the job fails saying which object and what to do, and the object survives the
/// job's creation and deletion as it was.
#[tokio::test]
async fn an_object_the_job_did_not_make_is_left_alone() {
    operator_test("operator-name-taken", |ctx| async move {
        use k8s_openapi::api::rbac::v1::Role;
        let _operator = setup(&ctx).await?;
        // a Role an admin made, named as the job's trainer identity would be
        let role: Role = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "lm-trainer"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}],
        }))?;
        let roles: Api<Role> = ctx.api();
        let before = roles.create(&Default::default(), &role).await?;
        let tj = apply(&ctx, &training_job("lm", 1, 3)).await?;
        let failed = job_where(&ctx, "lm", "lm Failed with NameTaken", |tj| {
            phase(tj) == Some(Phase::Failed) && condition(tj, "Failed").is_some_and(|c| c.reason == "NameTaken")
        })
        .await?;
        let message = &condition(&failed, "Failed").unwrap().message;
        eprintln!("e2e: lm's Failed condition: {message}");
        for part in ["Role lm-trainer already exists and was not made for this TrainingJob", "Delete or rename that Role"] {
            ensure!(message.contains(part), "the condition does not say {part:?}: {message}");
        }
        ensure!(ctx.api::<Job>().get_opt("lm-a1").await?.is_none(), "an attempt started under another's Role");
        let after = roles.get("lm-trainer").await?;
        ensure!(after.resource_version() == before.resource_version() && after.rules == before.rules, "the Role was changed: {after:?}");
        ctx.api::<TrainingJob>().delete("lm", &DeleteParams::background()).await?;
        wait::for_deletion(&ctx.api::<TrainingJob>(), "lm", &tj.uid().unwrap()).await?;
        let survived = roles.get("lm-trainer").await.context("the Role was deleted with the job")?;
        ensure!(survived.resource_version() == before.resource_version(), "the Role was changed: {survived:?}");
        Ok(())
    })
    .await;
}

/// A finished job that sets no ttlSecondsAfterFinished keeps its status and children, but its
/// attempt Jobs and their pods go once its bill is final (--finished-attempt-ttl-seconds), so a
/// namespace of old jobs does not fill the operator's caches.
#[tokio::test]
async fn a_finished_jobs_attempts_go_after_the_default_ttl() {
    operator_test("operator-attempt-ttl", |ctx| async move {
        manifests::install_crds(&ctx.client).await?;
        let _operator = Operator::start(&ctx.namespace, &["--termination-grace-seconds", "5", "--finished-attempt-ttl-seconds", "2"])?;
        apply(&ctx, &training_job("lm", 1, 3)).await?;
        let pods = running_pods(&ctx, "lm", 1, 1).await?;
        let job = ctx.api::<Job>().get("lm-a1").await?;
        finish(&ctx, &pods[0], "Succeeded").await?;
        let done = job_where(&ctx, "lm", "phase Succeeded", |tj| phase(tj) == Some(Phase::Succeeded)).await?;
        wait::for_deletion(&ctx.api::<Job>(), "lm-a1", &job.uid().unwrap()).await?;
        let after = ctx.api::<TrainingJob>().get("lm").await?;
        ensure!(
            phase(&after) == Some(Phase::Succeeded) && after.status.as_ref().and_then(|s| s.cost.clone()) == done.status.and_then(|s| s.cost),
            "the status changed"
        );
        ensure!(ctx.api::<Service>().get_opt("lm").await?.is_some(), "the Service went too");
        Ok(())
    })
    .await;
}

/// One operator process watches several namespaces (`--namespace` repeated, the chart's
/// operator.watchNamespaces): a job in each runs.
#[tokio::test]
async fn one_operator_runs_the_jobs_of_several_namespaces() {
    operator_test("operator-namespaces", |ctx| async move {
        use k8s_openapi::api::core::v1::Namespace;
        manifests::install_crds(&ctx.client).await?;
        let other = TestContext { client: ctx.client.clone(), namespace: format!("{}-b", ctx.namespace) };
        let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
        let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": other.namespace}}))?;
        namespaces.create(&Default::default(), &ns).await?;
        let outcome = async {
            let _operator = Operator::start(&ctx.namespace, &["--termination-grace-seconds", "5", "--namespace", &other.namespace])?;
            apply(&ctx, &training_job("lm", 1, 3)).await?;
            apply(&other, &training_job("lm", 1, 3)).await?;
            let here = running_pods(&ctx, "lm", 1, 1).await?;
            eprintln!("e2e: lm runs in {}", ctx.namespace);
            let there = running_pods(&other, "lm", 1, 1).await?;
            eprintln!("e2e: lm runs in {}", other.namespace);
            for (c, pods) in [(&ctx, &here), (&other, &there)] {
                finish(c, &pods[0], "Succeeded").await?;
                job_where(c, "lm", &format!("lm Succeeded in {}", c.namespace), |tj| phase(tj) == Some(Phase::Succeeded)).await?;
            }
            Ok::<_, anyhow::Error>(())
        }
        .await;
        settle(&other).await.ok();
        namespaces.delete(&other.namespace, &DeleteParams::background()).await.ok();
        outcome
    })
    .await;
}

/// An operator told of an admission policy the API server does not have says so on every job:
/// without the chart's policies a trainer's identity could write any status field.
#[tokio::test]
async fn a_missing_admission_policy_is_said_on_every_job() {
    operator_test("operator-policy-missing", |ctx| async move {
        manifests::install_crds(&ctx.client).await?;
        let policy = format!("{}-status", ctx.namespace);
        let _operator = Operator::start(&ctx.namespace, &["--termination-grace-seconds", "5", "--admission-policy", &policy])?;
        apply(&ctx, &training_job("lm", 1, 3)).await?;
        let said = job_where(&ctx, "lm", "the AdmissionPoliciesMissing condition", |tj| {
            condition(tj, "AdmissionPoliciesMissing").is_some_and(|c| c.status == "True")
        })
        .await?;
        let message = &condition(&said, "AdmissionPoliciesMissing").unwrap().message;
        eprintln!("e2e: AdmissionPoliciesMissing: {message}");
        ensure!(message.contains(&policy) && message.contains("a trainer's identity may write any field"), "{message}");
        Ok(())
    })
    .await;
}

/// A status that says a running job is over, written by anyone but the operator (no admission
/// policy in this namespace stops it), does not end it: the operator reads where the job is
/// from its attempt Job and pods, says so again, and goes on billing it.
#[tokio::test]
async fn a_forged_succeeded_phase_does_not_end_a_running_job() {
    operator_test("operator-forged-phase", |ctx| async move {
        let _operator = setup(&ctx).await?;
        apply(&ctx, &training_job("lm", 1, 3)).await?;
        let pods = running_pods(&ctx, "lm", 1, 1).await?;
        job_where(&ctx, "lm", "lm Running", |tj| phase(tj) == Some(Phase::Running)).await?;
        let forged = serde_json::json!({"status": {"phase": "Succeeded"}});
        ctx.api::<TrainingJob>().patch_status("lm", &PatchParams::default(), &Patch::Merge(&forged)).await?;
        // a spec change makes the operator look at it (status writes alone do not)
        let label = serde_json::json!({"metadata": {"labels": {"touched": "yes"}}});
        ctx.api::<TrainingJob>().patch("lm", &PatchParams::default(), &Patch::Merge(&label)).await?;
        let again = job_where(&ctx, "lm", "lm Running again", |tj| phase(tj) == Some(Phase::Running)).await?;
        eprintln!("e2e: after a forged Succeeded the operator says {:?}", again.status.as_ref().and_then(|s| s.phase));
        let pod = ctx.api::<Pod>().get(&pods[0].name_any()).await?;
        ensure!(pod.metadata.deletion_timestamp.is_none() && frugal_e2e::fixtures::phase(&pod) == "Running", "the pod was stopped");
        finish(&ctx, &pods[0], "Succeeded").await?;
        job_where(&ctx, "lm", "phase Succeeded", |tj| phase(tj) == Some(Phase::Succeeded)).await?;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn a_restarted_operator_neither_loses_nor_doubles_attempts() {
    operator_test("operator-restart", |ctx| async move {
        let mut operator = setup(&ctx).await?;
        apply(&ctx, &training_job("lm", 1, 3)).await?;
        let pods = running_pods(&ctx, "lm", 1, 1).await?;
        finish(&ctx, &pods[0], "Failed").await?;
        let second = running_pods(&ctx, "lm", 2, 1).await?;
        job_where(&ctx, "lm", "attempt 2 in the status", |tj| tj.status.as_ref().is_some_and(|s| s.attempt == Some(2))).await?;
        let before = ctx.api::<TrainingJob>().get("lm").await?.status.unwrap();

        // the operator dies mid-job; meanwhile attempt 2 fails
        operator.kill()?;
        finish(&ctx, &second[0], "Failed").await?;
        let failed: Api<Job> = ctx.api();
        wait::for_object(&failed, "lm-a2", "attempt 2's Job Failed", |j: Option<&Job>| {
            j.and_then(|j| j.status.as_ref()).and_then(|s| s.failed).is_some_and(|n| n > 0)
        })
        .await?;

        let _operator = Operator::start(&ctx.namespace, OPERATOR_ARGS)?;
        running_pods(&ctx, "lm", 3, 1).await?;
        let after =
            job_where(&ctx, "lm", "attempt 3, restarts 2", |tj| tj.status.as_ref().is_some_and(|s| s.attempt == Some(3) && s.restarts == Some(2)))
                .await?;
        assert_eq!(attempt_jobs(&ctx, "lm").await?, vec!["lm-a1", "lm-a2", "lm-a3"]);
        let status = after.status.unwrap();
        assert_eq!(status.plan, before.plan, "the plan survived");
        assert_eq!(status.start_time, before.start_time, "the start time survived");
        // one Secret, created once: the token did not change
        assert_eq!(ctx.api::<Secret>().list(&ListParams::default().labels("frugal.dev/training-job=lm")).await?.items.len(), 1);
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn a_job_over_the_gpu_cap_is_rejected_with_its_message() {
    operator_test("operator-gpu-cap", |ctx| async move {
        let _operator = setup(&ctx).await?;
        apply(&ctx, &training_job("big", 8, 3)).await?;
        let rejected = job_where(&ctx, "big", "phase Failed", |tj| phase(tj) == Some(Phase::Failed)).await?;
        let c = condition(&rejected, "Failed").unwrap();
        assert_eq!(c.reason, "GpuLimitExceeded");
        assert_eq!(
            c.message,
            "the job needs 8 GPUs (8 pipeline stages), above the operator's limit of 4 GPUs per job (its --max-gpus-per-job setting): lower spec.parallelism.pipelineStages"
        );
        assert_eq!(condition(&rejected, "Ready").map(|c| c.status.as_str()), Some("False"));
        assert!(attempt_jobs(&ctx, "big").await?.is_empty(), "nothing started");
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn a_cap_lowered_under_a_running_job_applies_to_its_next_attempt() {
    operator_test("operator-cap-lowered", |ctx| async move {
        let _operator = setup(&ctx).await?;
        apply(&ctx, &training_job("lm", 2, 3)).await?;
        let pods = running_pods(&ctx, "lm", 1, 2).await?;
        job_where(&ctx, "lm", "phase Running", |tj| phase(tj) == Some(Phase::Running)).await?;
        // the running attempt holds its 2 GPUs: a cap of 1 does not fail it under its pods
        let tjs: Api<TrainingJob> = ctx.api();
        let patch = serde_json::json!({"spec": {"budget": {"maxGpus": 1}}});
        tjs.patch("lm", &PatchParams::default(), &Patch::Merge(&patch)).await?;
        let seen =
            job_where(&ctx, "lm", "the lowered cap observed", |tj| tj.status.as_ref().and_then(|s| s.observed_generation) == tj.metadata.generation)
                .await?;
        assert_eq!(phase(&seen), Some(Phase::Running), "{:?}", seen.status);
        // the next attempt is held to it: a failed stage ends the job with the cap's message
        finish(&ctx, &pods[0], "Failed").await?;
        let failed = job_where(&ctx, "lm", "phase Failed", |tj| phase(tj) == Some(Phase::Failed)).await?;
        let c = condition(&failed, "Failed").unwrap();
        assert_eq!(c.reason, "GpuLimitExceeded");
        ensure!(c.message.contains("budget.maxGpus of 1"), "message: {}", c.message);
        assert_eq!(attempt_jobs(&ctx, "lm").await?, vec!["lm-a1"], "no second attempt above the cap");
        Ok(())
    })
    .await;
}

/// The next object from `seen` that belongs to the TrainingJob `job`.
async fn next_of<K: kube::Resource>(seen: &mut futures::stream::BoxStream<'_, Result<K, watcher::Error>>, job: &str, what: &str) -> Result<K> {
    wait::until(&format!("{what} of {job}"), async {
        while let Some(obj) = seen.try_next().await? {
            if obj.labels().get("frugal.dev/training-job").map(String::as_str) == Some(job) {
                return Ok::<_, anyhow::Error>(obj);
            }
        }
        anyhow::bail!("watch ended")
    })
    .await
}

/// Time from `kubectl apply` (the server-side apply returning) to the operator's pods existing,
/// for 20 one-GPU jobs applied one after another; prints the median.
#[tokio::test]
async fn apply_to_pods_created_latency() {
    operator_test("operator-latency", |ctx| async move {
        let _operator = setup(&ctx).await?;
        let pods: Api<Pod> = ctx.api();
        let selector = watcher::Config::default().labels("frugal.dev/training-job");
        let mut jobs_seen = watcher(ctx.api::<Job>(), selector.clone()).applied_objects().boxed();
        let mut pods_seen = watcher(pods.clone(), selector).applied_objects().boxed();
        // Apply to pod, and its two parts: apply to the operator's Job, Job to the Job
        // controller's pod (kube-controller-manager, not frugal).
        let (mut latencies, mut to_job, mut to_pod) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..20 {
            let name = format!("lat-{i}");
            let applied = Instant::now();
            apply(&ctx, &training_job(&name, 1, 3)).await?;
            next_of(&mut jobs_seen, &name, "the Job").await?;
            let job_at = applied.elapsed();
            let pod = next_of(&mut pods_seen, &name, "a pod").await?;
            latencies.push(applied.elapsed());
            to_job.push(job_at);
            to_pod.push(applied.elapsed() - job_at);
            // free its GPU for the next ones
            finish(&ctx, &pod, "Succeeded").await?;
        }
        let ms = |v: &[Duration]| v.iter().map(|d| d.as_millis()).collect::<Vec<_>>();
        eprintln!("apply -> Job, in apply order (ms): {:?}", ms(&to_job));
        eprintln!("Job -> pod, in apply order (ms): {:?}", ms(&to_pod));
        let middle = |v: &mut Vec<Duration>| {
            v.sort();
            (v[9] + v[10]) / 2
        };
        eprintln!("medians: apply -> Job {} ms, Job -> pod {} ms", middle(&mut to_job).as_millis(), middle(&mut to_pod).as_millis());
        latencies.sort();
        let ms: Vec<u128> = latencies.iter().map(|d| d.as_millis()).collect();
        let median = (latencies[9] + latencies[10]) / 2;
        eprintln!("apply -> pods created, 20 jobs: median {} ms; sorted ms: {ms:?}", median.as_millis());
        ensure!(median < Duration::from_secs(10), "median {median:?}");
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn a_child_edited_or_deleted_by_hand_is_applied_again() {
    operator_test("operator-child-drift", |ctx| async move {
        let _operator = setup(&ctx).await?;
        apply(&ctx, &training_job("lm", 1, 3)).await?;
        let pods = running_pods(&ctx, "lm", 1, 1).await?;
        // passes skip children that are as last applied; a change by anyone else must still
        // be undone, through the watch that sees it
        let configs: Api<ConfigMap> = ctx.api();
        let original = configs.get("lm-config").await?;
        let edit = serde_json::json!({"data": {"trainer-config.yaml": "edited by hand"}});
        configs.patch("lm-config", &PatchParams::default(), &Patch::Merge(&edit)).await?;
        wait::for_object(&configs, "lm-config", "the ConfigMap's content restored", |c: Option<&ConfigMap>| {
            c.is_some_and(|c| c.data == original.data)
        })
        .await?;
        let uid = original.uid().context("no uid")?;
        configs.delete("lm-config", &DeleteParams::default()).await?;
        wait::for_object(&configs, "lm-config", "the ConfigMap created again", |c: Option<&ConfigMap>| {
            c.is_some_and(|c| c.uid().as_deref() != Some(uid.as_str()) && c.data == original.data)
        })
        .await?;
        let services: Api<Service> = ctx.api();
        let uid = services.get("lm").await?.uid().context("no uid")?;
        services.delete("lm", &DeleteParams::default()).await?;
        wait::for_object(&services, "lm", "the Service created again", |s: Option<&Service>| {
            s.is_some_and(|s| s.uid().as_deref() != Some(uid.as_str()))
        })
        .await?;
        for pod in &pods {
            finish(&ctx, pod, "Succeeded").await?;
        }
        job_where(&ctx, "lm", "phase Succeeded", |tj| phase(tj) == Some(Phase::Succeeded)).await?;
        Ok(())
    })
    .await;
}

/// Sets `spec.runPolicy` fields on a test job.
fn with_run_policy(mut tj: TrainingJob, policy: serde_json::Value) -> TrainingJob {
    let mut value = serde_json::to_value(&tj.spec.run_policy).unwrap();
    for (k, v) in policy.as_object().unwrap() {
        value[k] = v.clone();
    }
    tj.spec.run_policy = serde_json::from_value(value).unwrap();
    tj
}

#[tokio::test]
async fn a_job_past_its_active_deadline_fails_with_deadline_exceeded() {
    operator_test("operator-deadline", |ctx| async move {
        let _operator = setup(&ctx).await?;
        apply(&ctx, &with_run_policy(training_job("lm", 1, 3), serde_json::json!({"activeDeadlineSeconds": 5}))).await?;
        running_pods(&ctx, "lm", 1, 1).await?;
        let failed = job_where(&ctx, "lm", "phase Failed", |tj| phase(tj) == Some(Phase::Failed)).await?;
        let c = condition(&failed, "Failed").unwrap();
        assert_eq!(c.reason, "DeadlineExceeded");
        ensure!(c.message.contains("activeDeadlineSeconds (5s)"), "message: {}", c.message);
        assert_eq!(attempt_jobs(&ctx, "lm").await?, vec!["lm-a1"], "no retry past the deadline");
        Ok(())
    })
    .await;
}

/// The operator bills the job from its pod's own times (kwok's pod runs no trainer, so nothing
/// else could report), stops it when it has spent its own limit, and the job waits, Queued,
/// until the limit is raised: then the next attempt starts (from the checkpoint a real trainer
/// would have written).
#[tokio::test]
async fn a_job_that_spends_its_own_gpu_hours_waits_and_resumes_when_the_limit_is_raised() {
    operator_test("operator-own-budget", |ctx| async move {
        let _operator = setup(&ctx).await?;
        // 0.003 GPU-hours is 10.8 s of the job's one GPU: the operator looks again when its bill
        // would reach the limit at that rate
        let mut tj = training_job("lm", 1, 3);
        tj.spec.budget.max_gpu_hours = Some(0.003);
        apply(&ctx, &tj).await?;
        running_pods(&ctx, "lm", 1, 1).await?;
        job_where(&ctx, "lm", "phase Running", |tj| phase(tj) == Some(Phase::Running)).await?;
        let running = Instant::now();
        let stopping = job_where(&ctx, "lm", "reason BudgetExhausted", |tj| {
            phase(tj) != Some(Phase::Queued) && condition(tj, "Ready").is_some_and(|c| c.reason == "BudgetExhausted")
        })
        .await?;
        let looked = running.elapsed();
        ensure!(looked >= Duration::from_secs(5) && looked < Duration::from_secs(40), "stopped {looked:?} after Running: {:?}", stopping.status);
        let billed = stopping.status.as_ref().and_then(|s| s.cost.clone()).expect("a bill");
        ensure!(billed.gpu_hours >= 0.003 && billed.pods.len() == 1 && billed.pods[0].gpus == 1, "billed from the pod: {billed:?}");
        let queued = job_where(&ctx, "lm", "phase Queued", |tj| phase(tj) == Some(Phase::Queued)).await?;
        let c = condition(&queued, "Queued").unwrap();
        assert_eq!(c.reason, "BudgetExhausted");
        eprintln!("queued: {}", c.message);
        ensure!(c.message.contains("spec.budget.maxGpuHours is 0.003") && c.message.contains("raised"), "message: {}", c.message);
        let first: Job = ctx.api::<Job>().get("lm-a1").await?;
        assert_eq!(first.annotations().get("frugal.dev/stop-reason").map(String::as_str), Some("BudgetExceeded"));
        assert_eq!(attempt_jobs(&ctx, "lm").await?, vec!["lm-a1"], "no further attempt over the limit");
        let cost = queued.status.as_ref().and_then(|s| s.cost.clone()).unwrap();
        ensure!(cost.pods.iter().all(|p| p.ended), "the stopped pod's bill is final: {cost:?}");
        // raising the limit resumes the job: attempt 2 starts, and the bill goes on from the first
        let jobs: Api<TrainingJob> = ctx.api();
        let raise = serde_json::json!({"spec": {"budget": {"maxGpuHours": 1.0}}});
        jobs.patch("lm", &PatchParams::default(), &Patch::Merge(&raise)).await?;
        running_pods(&ctx, "lm", 2, 1).await?;
        let resumed = job_where(&ctx, "lm", "attempt 2 Running", |tj| {
            phase(tj) == Some(Phase::Running) && tj.status.as_ref().and_then(|s| s.attempt) == Some(2)
        })
        .await?;
        let c = condition(&resumed, "Running").unwrap();
        eprintln!("resumed: {}", c.message);
        let cost = resumed.status.unwrap().cost.unwrap();
        ensure!(cost.gpu_hours >= billed.gpu_hours && cost.pods.iter().any(|p| p.attempt == 2 && !p.ended), "{cost:?}");
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn an_attempt_without_progress_is_restarted_as_stalled() {
    operator_test("operator-stalled", |ctx| async move {
        let _operator = setup(&ctx).await?;
        // kwok's pods report no progress, so the watchdog fires after 30 s of running
        apply(&ctx, &with_run_policy(training_job("lm", 1, 1), serde_json::json!({"progressDeadlineSeconds": 30}))).await?;
        running_pods(&ctx, "lm", 1, 1).await?;
        let events: Api<k8s_openapi::api::core::v1::Event> = ctx.api();
        let stalled = wait::for_event(&events, "lm", "a Stalled event", |e| e.reason.as_deref() == Some("Stalled")).await?;
        ensure!(stalled.type_.as_deref() == Some("Warning"), "{stalled:?}");
        running_pods(&ctx, "lm", 2, 1).await?;
        let restarted = job_where(&ctx, "lm", "attempt 2 running after the stall", |tj| {
            phase(tj) == Some(Phase::Running) && tj.status.as_ref().is_some_and(|s| s.attempt == Some(2))
        })
        .await?;
        assert_eq!(restarted.status.as_ref().unwrap().restarts, Some(1), "a stall counts against backoffLimit");
        assert_eq!(condition(&restarted, "Stalled").map(|c| c.status.as_str()), Some("False"));
        let first: Job = ctx.api::<Job>().get("lm-a1").await?;
        assert_eq!(first.annotations().get("frugal.dev/stop-reason").map(String::as_str), Some("Stalled"));
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn ttl_after_finished_deletes_the_children_and_keeps_the_job() {
    operator_test("operator-ttl", |ctx| async move {
        let _operator = setup(&ctx).await?;
        apply(&ctx, &with_run_policy(training_job("lm", 1, 3), serde_json::json!({"ttlSecondsAfterFinished": 2}))).await?;
        let pods = running_pods(&ctx, "lm", 1, 1).await?;
        let job = ctx.api::<Job>().get("lm-a1").await?;
        let service = ctx.api::<Service>().get("lm").await?;
        finish(&ctx, &pods[0], "Succeeded").await?;
        job_where(&ctx, "lm", "phase Succeeded", |tj| phase(tj) == Some(Phase::Succeeded)).await?;
        wait::for_deletion(&ctx.api::<Job>(), "lm-a1", &job.uid().unwrap()).await?;
        wait::for_deletion(&ctx.api::<Service>(), "lm", &service.uid().unwrap()).await?;
        let kept = ctx.api::<TrainingJob>().get("lm").await?;
        assert_eq!(phase(&kept), Some(Phase::Succeeded), "the TrainingJob and its status stay");
        assert!(kept.status.unwrap().completion_time.is_some());
        ensure!(ctx.api::<ConfigMap>().get_opt("lm-config").await?.is_none(), "ConfigMap left behind");
        ensure!(ctx.api::<Secret>().get_opt("lm-token").await?.is_none(), "Secret left behind");
        Ok(())
    })
    .await;
}

/// A spec whose attempt Job the API server refuses (a mount of a volume that does not exist,
/// which no CEL rule can see) fails with a condition that names the TrainingJob's field, and
/// is not retried until the spec changes; fixed, it runs.
#[tokio::test]
async fn a_child_the_api_server_refuses_becomes_a_condition_not_a_retry_loop() {
    operator_test("rejected-child", |ctx| async move {
        let operator = setup(&ctx).await?;
        let mut tj = training_job("lm", 1, 3);
        let mount: k8s_openapi::api::core::v1::VolumeMount = serde_json::from_value(serde_json::json!({"name": "data", "mountPath": "/data"}))?;
        tj.spec.pod_template = Some(frugal_api::v1alpha1::PodOverrides { volume_mounts: vec![mount], ..Default::default() });
        apply(&ctx, &tj).await?;
        let failed = job_where(&ctx, "lm", "lm Failed with RejectedByApiServer", |tj| {
            condition(tj, "Failed").is_some_and(|c| c.status == "True" && c.reason == "RejectedByApiServer")
        })
        .await?;
        let message = condition(&failed, "Failed").unwrap().message.clone();
        eprintln!("Failed condition: {message}");
        ensure!(
            message.contains("Not found: \"data\"") && message.contains("(in the TrainingJob: spec.podTemplate.volumeMounts[0])"),
            "message: {message}"
        );
        ensure!(attempt_jobs(&ctx, "lm").await?.is_empty(), "a refused Job exists");
        // no retry loop: in the next seconds the operator sends the Job no more
        let refusals = |log: &str| log.lines().filter(|l| l.contains("lm") && l.contains("Not found: \\\"data\\\"")).count();
        let before = refusals(&operator.log());
        tokio::time::sleep(Duration::from_secs(8)).await;
        let after = refusals(&operator.log());
        ensure!(after == before, "the operator logged {} more refusals after the condition", after - before);
        let again = ctx.api::<TrainingJob>().get("lm").await?;
        ensure!(condition(&again, "Failed") == condition(&failed, "Failed"), "the condition changed without a spec change");

        // the spec adds the volume: the job runs
        let fix = serde_json::json!({"spec": {"podTemplate": {"volumes": [{"name": "data", "emptyDir": {}}]}}});
        ctx.api::<TrainingJob>().patch("lm", &PatchParams::default(), &Patch::Merge(&fix)).await?;
        running_pods(&ctx, "lm", 1, 1).await?;
        job_where(&ctx, "lm", "lm Running", |tj| phase(tj) == Some(Phase::Running)).await?;
        Ok(())
    })
    .await;
}

/// Writes a kubeconfig for service account `account` of the test namespace: the test cluster's
/// server and CA, a token from the TokenRequest API.
async fn service_account_kubeconfig(ctx: &TestContext, account: &str) -> Result<std::path::PathBuf> {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;
    let sas = ctx.api::<ServiceAccount>();
    let sa: ServiceAccount = serde_json::from_value(serde_json::json!({"metadata": {"name": account}}))?;
    sas.create(&Default::default(), &sa).await?;
    let request = TokenRequest { spec: TokenRequestSpec { expiration_seconds: Some(3600), ..Default::default() }, ..Default::default() };
    let token = sas.create_token_request(account, &Default::default(), &request).await?.status.context("TokenRequest without status")?.token;
    let admin: serde_json::Value = serde_saphyr::from_str(&std::fs::read_to_string(std::env::var("KUBECONFIG").context("KUBECONFIG")?)?)?;
    let cluster = admin["clusters"][0]["cluster"].clone();
    let config = serde_json::json!({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "test", "cluster": cluster}],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "test", "user": account, "namespace": ctx.namespace}}],
    });
    let path = std::env::temp_dir().join(format!("kubeconfig-{}-{account}", ctx.namespace));
    std::fs::write(&path, serde_saphyr::to_string(&config)?)?;
    Ok(path)
}

/// Applies a Role and its RoleBinding to `account` in the test namespace.
async fn grant(ctx: &TestContext, account: &str, name: &str, rules: serde_json::Value) -> Result<()> {
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    let role: Role = serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "rules": rules}))?;
    ctx.api::<Role>().create(&Default::default(), &role).await?;
    let binding: RoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": ctx.namespace}],
    }))?;
    ctx.api::<RoleBinding>().create(&Default::default(), &binding).await?;
    Ok(())
}

/// Started before it may see TrainingJobs (as when Helm applies the CRDs and the Deployment
/// together, or its RBAC lags), the operator does not exit: it waits, not ready, saying why,
/// and goes on once they are served to it. Its identity here is a service account with the
/// chart's rules, the frugal.dev ones granted only later.
#[tokio::test]
async fn the_operator_waits_until_training_jobs_are_served() {
    operator_test("waits-for-crds", |ctx| async move {
        manifests::install_crds(&ctx.client).await?;
        let kubeconfig = service_account_kubeconfig(&ctx, "frugal-operator").await?;
        let children = serde_json::json!([
            {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "delete"]},
            {"apiGroups": [""], "resources": ["services", "configmaps", "serviceaccounts"], "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create", "delete"]},
            {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
            {"apiGroups": [""], "resources": ["persistentvolumeclaims"], "verbs": ["get"]},
            {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"], "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
            {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
        ]);
        grant(&ctx, "frugal-operator", "children", children).await?;
        let kubeconfig = kubeconfig.to_string_lossy().into_owned();
        let mut operator = Operator::start_with_env(&ctx.namespace, OPERATOR_ARGS, &[("KUBECONFIG", kubeconfig.as_str())])?;
        wait::until("the operator to say it waits for TrainingJobs", async {
            while !operator.log().contains("are not served yet") {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok::<_, anyhow::Error>(())
        })
        .await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        ensure!(operator.running()?, "the operator exited instead of waiting");
        ensure!(!operator.log().contains("caches synced"), "the operator said it was ready before it could list TrainingJobs");
        let waiting = operator.log().lines().find(|l| l.contains("are not served yet")).unwrap_or_default().to_string();
        eprintln!("while waiting: {waiting}");

        let frugal = serde_json::json!([
            {"apiGroups": ["frugal.dev"], "resources": ["trainingbudgets"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["frugal.dev"], "resources": ["trainingjobs"], "verbs": ["get", "list", "watch", "patch"]},
            {"apiGroups": ["frugal.dev"], "resources": ["trainingjobs/status"], "verbs": ["get", "patch", "update"]},
            {"apiGroups": ["frugal.dev"], "resources": ["trainingbudgets/status"], "verbs": ["get", "update"]},
        ]);
        grant(&ctx, "frugal-operator", "training-jobs", frugal).await?;
        apply(&ctx, &training_job("lm", 1, 0)).await?;
        running_pods(&ctx, "lm", 1, 1).await?;
        job_where(&ctx, "lm", "lm Running", |tj| phase(tj) == Some(Phase::Running)).await?;
        ensure!(operator.log().contains("caches synced; ready"), "the operator never said it was ready");
        Ok(())
    })
    .await;
}

/// Writes `object` straight into the control plane's etcd (through its JSON gateway, at
/// `FRUGAL_ETCD_PORT`), past the CRD's schema; false when that etcd cannot be reached (a cluster
/// other than the local control plane).
fn put_into_etcd(key: &str, object: &serde_json::Value) -> bool {
    use base64::Engine as _;
    let port = std::env::var("FRUGAL_ETCD_PORT").unwrap_or_else(|_| "23790".into());
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let body = serde_json::json!({"key": b64(key), "value": b64(&object.to_string())});
    let url = format!("http://127.0.0.1:{port}/v3/kv/put");
    std::process::Command::new("curl").args(["-sf", "-X", "POST", &url, "-d", &body.to_string()]).output().is_ok_and(|o| o.status.success())
}

/// An object that does not decode as a TrainingJob (stored past the CRD's schema) is reported on
/// itself, and the watch goes on: the namespace's other jobs still run.
#[tokio::test]
async fn an_object_that_does_not_decode_does_not_stop_the_other_jobs() {
    operator_test("operator-undecodable", |ctx| async move {
        let _operator = setup(&ctx).await?;
        let mut broken = serde_json::to_value(training_job("broken", 1, 3))?;
        broken["spec"]["runPolicy"]["backoffLimit"] = "four".into();
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos();
        broken["metadata"] = serde_json::json!({
            "name": "broken",
            "namespace": ctx.namespace,
            "uid": format!("{:08x}-0000-4000-8000-{:012x}", nanos as u32, (nanos >> 32) as u64 & 0xffff_ffff_ffff),
            "creationTimestamp": k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
            "generation": 1,
        });
        if !put_into_etcd(&format!("/registry/frugal.dev/trainingjobs/{}/broken", ctx.namespace), &broken) {
            eprintln!("e2e: the cluster's etcd cannot be reached at FRUGAL_ETCD_PORT; skipping");
            return Ok(());
        }
        let events: Api<k8s_openapi::api::core::v1::Event> = ctx.api();
        let reported = wait::for_event(&events, "broken", "an Undecodable event", |e| e.reason.as_deref() == Some("Undecodable")).await?;
        let note = reported.message.unwrap_or_default();
        ensure!(note.contains("\"four\""), "the event does not say what does not decode: {note}");
        apply(&ctx, &training_job("lm", 1, 3)).await?;
        running_pods(&ctx, "lm", 1, 1).await?;
        Ok(())
    })
    .await;
}
