//! The test cluster behaves as the operator's tests assume: GPU nodes exist, the scheduler
//! enforces GPU counts, pods stay Running until a test finishes them, and ServiceAccount tokens
//! can be requested.

use anyhow::{Context as _, ensure};
use frugal_e2e::fixtures::{PodExt as _, job, phase, pod};
use frugal_e2e::wait::{for_any, for_event, for_object};
use frugal_e2e::{GPU_RESOURCE, GPUS_PER_NODE, TEST_OUTCOME_ANNOTATION, TestContext, run};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec, TokenReview, TokenReviewSpec};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, Node, Pod, ServiceAccount};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::Condition as _;
use kube::runtime::wait::conditions::is_job_completed;
use kube::runtime::watcher;
use kube::{Api, ResourceExt as _};
use serde_json::json;

const GPU_PRODUCT_LABEL: &str = "nvidia.com/gpu.product";

fn has_phase(want: &'static str) -> impl Fn(Option<&Pod>) -> bool {
    move |p: Option<&Pod>| p.is_some_and(|p| phase(p) == want)
}

#[tokio::test]
async fn gpu_nodes_are_ready() {
    run("gpu-nodes", |t: TestContext| async move {
        let nodes = Api::<Node>::all(t.client.clone()).list(&ListParams::default()).await?;
        let gpus = |n: &Node| n.status.as_ref().and_then(|s| s.allocatable.as_ref()).and_then(|a| a.get(GPU_RESOURCE)).map(|q| q.0.clone());
        let gpu_nodes: Vec<&Node> = nodes.items.iter().filter(|n| gpus(n).as_deref() == Some(&GPUS_PER_NODE.to_string())).collect();
        ensure!(gpu_nodes.len() >= 2, "want at least two nodes with {GPUS_PER_NODE} {GPU_RESOURCE}");
        for n in &gpu_nodes {
            ensure!(n.labels().contains_key(GPU_PRODUCT_LABEL), "{} has no {GPU_PRODUCT_LABEL} label", n.name_any());
        }
        ensure!(nodes.items.iter().any(|n| gpus(n).is_none()), "want a CPU-only node");
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn too_many_gpus_stays_pending_with_the_schedulers_reason() {
    run("gpu-unschedulable", |t: TestContext| async move {
        let pods: Api<Pod> = t.api();
        pods.create(&PostParams::default(), &pod("greedy").gpus(GPUS_PER_NODE + 1)).await?;

        let event =
            for_event(&t.api::<Event>(), "greedy", "FailedScheduling for greedy", |e| e.reason.as_deref() == Some("FailedScheduling")).await?;
        let message = event.message.unwrap_or_default();
        eprintln!("scheduler: {message}");
        ensure!(message.contains(&format!("Insufficient {GPU_RESOURCE}")), "FailedScheduling does not name the GPU shortage: {message}");

        // The scheduler records the event and writes the pod's condition separately; wait for both.
        let greedy = for_object(&pods, "greedy", "PodScheduled condition on greedy", |p: Option<&Pod>| {
            p.and_then(|p| p.status.as_ref()?.conditions.as_ref()).is_some_and(|cs| cs.iter().any(|c| c.type_ == "PodScheduled"))
        })
        .await?;
        ensure!(phase(&greedy) == "Pending", "phase is {:?}", phase(&greedy));
        let scheduled = greedy
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "PodScheduled")
            .context("no PodScheduled condition")?;
        ensure!(
            scheduled.status == "False" && scheduled.reason.as_deref() == Some("Unschedulable"),
            "PodScheduled is {}/{:?}",
            scheduled.status,
            scheduled.reason
        );
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn job_pod_stays_running_until_the_test_says_succeeded() {
    run("job-held", |t: TestContext| async move {
        let jobs: Api<Job> = t.api();
        let pods: Api<Pod> = t.api();
        jobs.create(&PostParams::default(), &job("held", pod("held").gpus(1))).await?;
        let held = for_any(&pods, watcher::Config::default().labels("batch.kubernetes.io/job-name=held"), "held's pod Running", |p: &Pod| {
            phase(p) == "Running"
        })
        .await?;
        let held_name = held.name_any();
        let node = held.spec.as_ref().and_then(|s| s.node_name.clone()).context("no node")?;
        let node_gpu = Api::<Node>::all(t.client.clone()).get(&node).await?;
        ensure!(node_gpu.labels().contains_key(GPU_PRODUCT_LABEL), "GPU pod landed on {node}");

        // A second Job told to succeed from the start completes: kwok is finishing Job pods, just
        // not the held one.
        jobs.create(&PostParams::default(), &job("canary", pod("canary").outcome("Succeeded", None))).await?;
        for_object(&jobs, "canary", "canary Job complete", is_job_completed()).await?;

        let held = pods.get(&held_name).await?;
        ensure!(phase(&held) == "Running", "held pod left Running on its own: {:?}", phase(&held));
        let held_job = jobs.get("held").await?;
        ensure!(!is_job_completed().matches_object(Some(&held_job)), "held Job completed on its own");

        let patch = json!({"metadata": {"annotations": {TEST_OUTCOME_ANNOTATION: "Succeeded"}}});
        pods.patch(&held_name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        let done = for_object(&pods, &held_name, "held pod Succeeded", has_phase("Succeeded")).await?;
        let exit = done
            .status
            .and_then(|s| s.container_statuses)
            .and_then(|cs| cs.into_iter().next())
            .and_then(|c| c.state)
            .and_then(|s| s.terminated)
            .map(|t| t.exit_code);
        ensure!(exit == Some(0), "exit code {exit:?}");
        for_object(&jobs, "held", "held Job complete", is_job_completed()).await?;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn failed_outcome_fails_the_pod_with_its_exit_code() {
    run("pod-failed", |t: TestContext| async move {
        let pods: Api<Pod> = t.api();
        pods.create(&PostParams::default(), &pod("doomed").outcome("Failed", Some(3))).await?;
        let failed = for_object(&pods, "doomed", "doomed pod Failed", has_phase("Failed")).await?;
        let terminated = failed
            .status
            .and_then(|s| s.container_statuses)
            .and_then(|cs| cs.into_iter().next())
            .and_then(|c| c.state)
            .and_then(|s| s.terminated)
            .context("no terminated container state")?;
        ensure!(terminated.exit_code == 3, "exit code {}", terminated.exit_code);
        ensure!(terminated.reason.as_deref() == Some("Error"), "reason {:?}", terminated.reason);
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn service_account_tokens_can_be_requested_and_verified() {
    run("token-request", |t: TestContext| async move {
        let sas: Api<ServiceAccount> = t.api();
        let sa = ServiceAccount { metadata: kube::api::ObjectMeta { name: Some("trainer".into()), ..Default::default() }, ..Default::default() };
        sas.create(&PostParams::default(), &sa).await?;
        let request =
            TokenRequest { spec: TokenRequestSpec { audiences: vec![], expiration_seconds: Some(600), ..Default::default() }, ..Default::default() };
        let issued = sas.create_token_request("trainer", &PostParams::default(), &request).await?;
        let token = issued.status.context("TokenRequest without status")?.token;
        ensure!(!token.is_empty(), "empty token");

        let review = TokenReview { spec: TokenReviewSpec { token: Some(token), ..Default::default() }, ..Default::default() };
        let reviewed =
            Api::<TokenReview>::all(t.client.clone()).create(&PostParams::default(), &review).await?.status.context("TokenReview without status")?;
        let user = reviewed.user.and_then(|u| u.username).unwrap_or_default();
        ensure!(reviewed.authenticated == Some(true), "token not authenticated: {:?}", reviewed.error);
        ensure!(user == format!("system:serviceaccount:{}:trainer", t.namespace), "token authenticates as {user}");
        Ok(())
    })
    .await;
}
