//! Real training through the operator: a TrainingJob becomes a Job whose pod the pod runner runs
//! as a real `frugal-trainer` process; a stage killed mid-run makes the operator start the next
//! attempt, which resumes from the checkpoint on the shared claim.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::api::core::v1::{PersistentVolume, Pod};
use kube::api::{DeleteParams, ListParams};
use kube::{Api, ResourceExt as _};

use frugal_api::TrainingJob;
use frugal_api::v1alpha1::Phase;
use frugal_e2e::operator::Operator;
use frugal_e2e::training_job::{apply, finished, phase, pod_output};
use frugal_e2e::{TestContext, manifests, run};

fn cpu_job(name: &str, steps: i64, claim: Option<&str>) -> TrainingJob {
    frugal_e2e::training_job::cpu_job(name, steps, claim, 1)
}

async fn attempt_pods(ctx: &TestContext, attempt: i32) -> Result<Vec<Pod>> {
    let selector = format!("frugal.dev/attempt={attempt}");
    Ok(ctx.api::<Pod>().list(&ListParams::default().labels(&selector)).await?.items)
}

#[tokio::test]
async fn a_job_trains_for_real_and_succeeds() {
    run("training-real", |ctx: TestContext| async move {
        manifests::install_crds(&ctx.client).await?;
        let _operator = Operator::start(&ctx.namespace, &[])?;
        apply(&ctx, &cpu_job("lm", 30, None)).await?;
        let done = finished(&ctx, "lm").await?;
        let pods = attempt_pods(&ctx, 1).await?;
        let pod = pods.first().context("attempt 1 has a pod")?;
        let log = pod_output(&ctx.namespace, &pod.name_any());
        ensure!(phase(&done) == Some(Phase::Succeeded), "the job ended {:?}; trainer output:\n{log}", phase(&done));
        ensure!(log.contains("\"step\":30"), "the trainer did not reach step 30:\n{log}");
        let status = done.status.unwrap();
        ensure!(status.start_time.is_some() && status.completion_time.is_some(), "start and completion times");
        // the trainer reported into the status with its pod's own service-account token
        let progress = status.progress.context("status.progress from the trainer")?;
        ensure!(progress.step == 30 && progress.total_steps == 30, "progress {progress:?}");
        ensure!(progress.loss.is_some_and(|l| l > 0.0), "loss {:?}", progress.loss);
        let efficiency = status.efficiency.context("status.efficiency from the trainer")?;
        ensure!(efficiency.tokens_per_second > 0.0, "{efficiency:?}");
        ensure!(status.checkpoint.is_some_and(|c| c.step == 30), "the final checkpoint in the status");
        ensure!(status.cost.is_some_and(|c| c.gpu_hours == 0.0), "a CPU job spends no GPU-hours");
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn a_killed_stage_restarts_and_the_next_attempt_resumes_from_the_checkpoint() {
    run("training-resume", |ctx: TestContext| async move {
        manifests::install_crds(&ctx.client).await?;
        let pv_name = frugal_e2e::fixtures::shared_claim(&ctx, "ckpt").await?;
        let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());

        let _operator = Operator::start(&ctx.namespace, &["--termination-grace-seconds", "20"])?;
        let steps = 400;
        apply(&ctx, &cpu_job("lm", steps, Some("ckpt"))).await?;

        // Let attempt 1 write a checkpoint, then kill its trainer as a crash would.
        let deadline = Instant::now() + frugal_e2e::timeout();
        let first = loop {
            let pods = attempt_pods(&ctx, 1).await?;
            if let Some(pod) = pods.first() {
                let log = pod_output(&ctx.namespace, &pod.name_any());
                if log.contains("\"event\":\"checkpoint\"") {
                    break pod.clone();
                }
            }
            ensure!(Instant::now() < deadline, "attempt 1 wrote no checkpoint");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let pid: i32 = first
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c.first())
            .and_then(|c| c.container_id.as_deref())
            .and_then(|id| id.strip_prefix("pod-runner://"))
            .context("the pod runner reports the pid as the container id")?
            .parse()?;
        // SAFETY: kill(2) of the trainer process the pod runner started for this test.
        unsafe { libc_kill(pid, 9) };

        let done = finished(&ctx, "lm").await?;
        let second = attempt_pods(&ctx, 2).await?;
        let pod = second.first().context("attempt 2 has a pod")?;
        let log = pod_output(&ctx.namespace, &pod.name_any());
        ensure!(phase(&done) == Some(Phase::Succeeded), "ended {:?}; attempt 2 output:\n{log}", phase(&done));
        let status = done.status.as_ref().unwrap();
        ensure!(status.restarts == Some(1) && status.attempt == Some(2), "restarts {:?}, attempt {:?}", status.restarts, status.attempt);
        // attempt 2 resumed where attempt 1's checkpoint left off, not from step 0
        let resumed_at = frugal_e2e::training_job::resumed_at(&log).with_context(|| format!("attempt 2 did not resume:\n{log}"))?;
        ensure!(resumed_at >= 10, "resumed at step {resumed_at}");
        ensure!(log.contains(&format!("\"step\":{steps}")), "attempt 2 did not finish:\n{log}");
        let first_steps = log.lines().filter(|l| l.contains("\"event\":\"step\"")).count() as i64;
        ensure!(first_steps <= steps - resumed_at, "attempt 2 took {first_steps} steps after resuming at {resumed_at}");
        ctx.api::<TrainingJob>().delete("lm", &DeleteParams::default()).await.ok();
        pvs.delete(&pv_name, &DeleteParams::default()).await.ok();
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn a_four_pod_pipeline_trains_end_to_end() {
    run("training-pipeline", |ctx: TestContext| async move {
        manifests::install_crds(&ctx.client).await?;
        let pv_name = frugal_e2e::fixtures::shared_claim(&ctx, "ckpt").await?;
        let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
        let _operator = Operator::start(&ctx.namespace, &[])?;
        apply(&ctx, &frugal_e2e::training_job::cpu_job("lm", 20, Some("ckpt"), 4)).await?;
        let done = finished(&ctx, "lm").await?;
        let mut pods = attempt_pods(&ctx, 1).await?;
        pods.sort_by_key(|p| p.name_any());
        let logs: Vec<String> = pods.iter().map(|p| format!("{}:\n{}", p.name_any(), pod_output(&ctx.namespace, &p.name_any()))).collect();
        ensure!(pods.len() == 4, "{} pods in attempt 1", pods.len());
        ensure!(phase(&done) == Some(Phase::Succeeded), "ended {:?}; outputs:\n{}", phase(&done), logs.join("\n"));
        // the last stage computed the loss through all four pods
        ensure!(logs.iter().any(|l| l.contains("\"step\":20")), "no stage reached step 20:\n{}", logs.join("\n"));
        // and reported into the status as a one-pod run does (the progress watchdog reads it)
        let status = done.status.context("no status")?;
        let progress = status.progress.context("status.progress from the pipeline's last stage")?;
        ensure!(progress.step == 20 && progress.total_steps == 20, "progress {progress:?}");
        ensure!(progress.loss.is_some_and(|l| l > 0.0), "loss {:?}", progress.loss);
        ensure!(status.efficiency.as_ref().is_some_and(|e| e.tokens_per_second > 0.0 && e.mfu > 0.0), "status.efficiency from the pipeline: {:?}", status.efficiency);
        ensure!(status.checkpoint.is_some_and(|c| c.step == 20), "the final checkpoint in the status");
        // and evaluated through the four pods at the end
        let quality = status.quality.context("status.quality from the pipeline's final evaluation")?;
        ensure!(quality.step == 20 && quality.validation_loss.is_some_and(|v| v.is_finite() && v > 0.0), "quality {quality:?}");
        pvs.delete(&pv_name, &DeleteParams::default()).await.ok();
        Ok(())
    })
    .await;
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}
