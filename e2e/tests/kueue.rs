//! The operator under Kueue, with Kueue's own controller manager from the test cluster
//! (`e2e/cluster/up` runs it, webhooks included): a TrainingJob labelled with a LocalQueue becomes
//! a suspended Job that Kueue admits within the ClusterQueue's GPU quota, injecting its flavor's
//! node selector; a second job waits in the queue; an eviction is not a failure, and the
//! readmitted attempt resumes from the checkpoint.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolume, Pod};
use kube::api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt as _};

use frugal_api::TrainingJob;
use frugal_api::v1alpha1::Phase;
use frugal_e2e::operator::Operator;
use frugal_e2e::training_job::{apply, condition, finished, job_where, phase, pod_output, resumed_at, running_pods};
use frugal_e2e::{FIELD_MANAGER, TEST_OUTCOME_ANNOTATION, TestContext, manifests, run, wait};

use frugal_api::admission::KUEUE_QUEUE_LABEL as QUEUE_LABEL;
const GPU_PRODUCT: (&str, &str) = ("nvidia.com/gpu.product", "NVIDIA-H100-80GB-HBM3");

fn kueue(kind: &str) -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk("kueue.x-k8s.io", "v1beta2", kind))
}

/// A ResourceFlavor, a ClusterQueue over this test's namespace with `gpus` GPUs of quota, and the
/// LocalQueue `team` pointing at it; the cluster-scoped two are named after the namespace and
/// deleted when the returned guard goes.
struct Queues {
    client: kube::Client,
    name: String,
}

impl Queues {
    async fn create(ctx: &TestContext, gpus: u32, node_labels: serde_json::Value) -> Result<Self> {
        let name = ctx.namespace.clone();
        let flavor = serde_json::json!({
            "apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor",
            "metadata": {"name": name}, "spec": {"nodeLabels": node_labels},
        });
        let cluster_queue = serde_json::json!({
            "apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ClusterQueue",
            "metadata": {"name": name},
            "spec": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ctx.namespace}},
                "resourceGroups": [{
                    "coveredResources": ["cpu", "memory", "nvidia.com/gpu"],
                    "flavors": [{"name": name, "resources": [
                        {"name": "cpu", "nominalQuota": 64},
                        {"name": "memory", "nominalQuota": "512Gi"},
                        {"name": "nvidia.com/gpu", "nominalQuota": gpus},
                    ]}],
                }],
            },
        });
        let local_queue = serde_json::json!({
            "apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue",
            "metadata": {"name": "team", "namespace": ctx.namespace}, "spec": {"clusterQueue": name},
        });
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        Api::<DynamicObject>::all_with(ctx.client.clone(), &kueue("ResourceFlavor")).patch(&name, &pp, &Patch::Apply(&flavor)).await?;
        Api::<DynamicObject>::all_with(ctx.client.clone(), &kueue("ClusterQueue")).patch(&name, &pp, &Patch::Apply(&cluster_queue)).await?;
        Api::<DynamicObject>::namespaced_with(ctx.client.clone(), &ctx.namespace, &kueue("LocalQueue"))
            .patch("team", &pp, &Patch::Apply(&local_queue))
            .await?;
        Ok(Self { client: ctx.client.clone(), name })
    }
}

impl Drop for Queues {
    fn drop(&mut self) {
        let (client, name) = (self.client.clone(), self.name.clone());
        // Best effort: Kueue keeps a ClusterQueue until its workloads are gone with the namespace.
        tokio::spawn(async move {
            for kind in ["ClusterQueue", "ResourceFlavor"] {
                Api::<DynamicObject>::all_with(client.clone(), &kueue(kind)).delete(&name, &DeleteParams::default()).await.ok();
            }
        });
    }
}

/// `tj` queued on the LocalQueue `team`.
fn queued(mut tj: TrainingJob) -> TrainingJob {
    tj.metadata.labels.get_or_insert_default().insert(QUEUE_LABEL.into(), "team".into());
    tj
}

/// A job of `gpus` one-GPU pipeline stages on the fake GPU nodes, queued on `team`.
fn gpu_job(name: &str, gpus: i32) -> TrainingJob {
    let mut tj = queued(frugal_e2e::training_job::fake_gpu_job(name, gpus, 1));
    tj.spec.run_policy.backoff_limit = 1;
    tj
}

/// The Kueue Workload of attempt `attempt`'s Job, once Kueue has made it.
async fn workload_of(ctx: &TestContext, job: &str, attempt: i32) -> Result<DynamicObject> {
    let api = Api::<DynamicObject>::namespaced_with(ctx.client.clone(), &ctx.namespace, &kueue("Workload"));
    let owner = format!("{job}-a{attempt}");
    wait::for_any(&api, Default::default(), &format!("the Workload of Job {owner}"), move |w: &DynamicObject| {
        w.owner_references().iter().any(|o| o.kind == "Job" && o.name == owner)
    })
    .await
}

#[tokio::test]
async fn kueue_admits_within_quota_and_the_operator_leaves_its_fields_alone() {
    run("kueue-admission", |ctx: TestContext| async move {
        manifests::install_crds(&ctx.client).await?;
        let _queues = Queues::create(&ctx, 4, serde_json::json!({GPU_PRODUCT.0: GPU_PRODUCT.1})).await?;
        let _operator = Operator::start(&ctx.namespace, &["--termination-grace-seconds", "5"])?;

        apply(&ctx, &gpu_job("first", 4)).await?;
        // the attempt's Job carries the queue and was created suspended: Kueue's webhook and the
        // operator agree, and Kueue's Workload for it is admitted within the 4-GPU quota
        let workload = workload_of(&ctx, "first", 1).await?;
        assert_eq!(workload.data["spec"]["queueName"], "team");
        let pods = running_pods(&ctx, "first", 1, 4).await?;
        let job: Job = ctx.api::<Job>().get("first-a1").await?;
        assert_eq!(job.labels()[QUEUE_LABEL], "team");
        let spec = job.spec.as_ref().unwrap();
        assert_eq!(spec.suspend, Some(false), "Kueue unsuspended the admitted Job");
        // Kueue injected its flavor's node labels; the pods landed on the matching nodes
        let selector = spec.template.spec.as_ref().and_then(|s| s.node_selector.clone()).unwrap_or_default();
        assert_eq!(selector.get(GPU_PRODUCT.0).map(String::as_str), Some(GPU_PRODUCT.1), "node selector {selector:?}");
        for pod in &pods {
            let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
            ensure!(node.starts_with("frugal-gpu-"), "{} on {node}", pod.name_any());
        }
        job_where(&ctx, "first", "phase Running", |tj| phase(tj) == Some(Phase::Running)).await?;

        // the quota is used up: a second job's Job exists, suspended, and the TrainingJob says Queued
        apply(&ctx, &gpu_job("second", 4)).await?;
        workload_of(&ctx, "second", 1).await?;
        let queued = job_where(&ctx, "second", "phase Queued", |tj| phase(tj) == Some(Phase::Queued)).await?;
        let c = condition(&queued, "Queued").context("a Queued condition")?;
        ensure!(c.status == "True" && !c.message.is_empty(), "Queued condition {c:?}");
        let second: Job = ctx.api::<Job>().get("second-a1").await?;
        assert_eq!(second.spec.as_ref().unwrap().suspend, Some(true));
        ensure!(
            ctx.api::<Pod>().list(&ListParams::default().labels("frugal.dev/training-job=second")).await?.items.is_empty(),
            "pods before admission"
        );

        // an update to the first TrainingJob makes the operator reconcile it again: the fields
        // Kueue owns stay as Kueue set them
        let tjs: Api<TrainingJob> = ctx.api();
        let patch = serde_json::json!({"spec": {"budget": {"maxGpus": 4}}});
        tjs.patch("first", &PatchParams::default(), &Patch::Merge(&patch)).await?;
        job_where(&ctx, "first", "the update observed", |tj| tj.status.as_ref().and_then(|s| s.observed_generation) == tj.metadata.generation)
            .await?;
        let job: Job = ctx.api::<Job>().get("first-a1").await?;
        let spec = job.spec.as_ref().unwrap();
        assert_eq!(spec.suspend, Some(false));
        let selector = spec.template.spec.as_ref().and_then(|s| s.node_selector.clone()).unwrap_or_default();
        assert_eq!(selector.get(GPU_PRODUCT.0).map(String::as_str), Some(GPU_PRODUCT.1));
        for entry in job.metadata.managed_fields.iter().flatten() {
            if entry.manager.as_deref().is_some_and(|m| m.starts_with("frugal-operator")) {
                let fields = serde_json::to_string(&entry.fields_v1).unwrap_or_default();
                ensure!(!fields.contains("f:suspend"), "the operator owns spec.suspend: {fields}");
            }
        }

        // the first job finishes: its quota goes to the second, which starts
        let api: Api<Pod> = ctx.api();
        let outcome = serde_json::json!({"metadata": {"annotations": {TEST_OUTCOME_ANNOTATION: "Succeeded"}}});
        for pod in &pods {
            api.patch(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&outcome)).await?;
        }
        job_where(&ctx, "first", "phase Succeeded", |tj| phase(tj) == Some(Phase::Succeeded)).await?;
        let second_pods = running_pods(&ctx, "second", 1, 4).await?;
        job_where(&ctx, "second", "phase Running", |tj| phase(tj) == Some(Phase::Running)).await?;
        for pod in &second_pods {
            api.patch(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&outcome)).await?;
        }
        job_where(&ctx, "second", "phase Succeeded", |tj| phase(tj) == Some(Phase::Succeeded)).await?;
        Ok(())
    })
    .await;
}

/// Under Kueue, GPUs at an instant are Kueue's business: a job Kueue keeps suspended is in its
/// TrainingBudget's ledger with no GPUs held, so it is not held back by the budget's maxGpus
/// (Kueue admits it when its quota allows), and the budget keeps counting GPU-hours and cost.
#[tokio::test]
async fn a_budget_does_not_count_a_job_kueue_keeps_suspended() {
    run("kueue-budget", |ctx: TestContext| async move {
        manifests::install_crds(&ctx.client).await?;
        let _queues = Queues::create(&ctx, 2, serde_json::json!({GPU_PRODUCT.0: GPU_PRODUCT.1})).await?;
        let _operator = Operator::start(&ctx.namespace, &["--termination-grace-seconds", "5"])?;
        let budget: frugal_api::TrainingBudget = serde_saphyr::from_str(
            "apiVersion: frugal.dev/v1alpha1\nkind: TrainingBudget\nmetadata: {name: money}\nspec: {maxGpus: 2, gpuHours: 100, period: Day, admission: Spend}\n",
        )?;
        let budgets: Api<frugal_api::TrainingBudget> = ctx.api();
        budgets.patch("money", &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&budget)).await?;
        let budgeted = |name: &str| {
            let mut tj = gpu_job(name, 2);
            tj.spec.budget.budget_ref = Some("money".into());
            tj
        };
        let held = |want: Vec<(&'static str, i32)>| {
            let what = format!("the ledger to hold {want:?}");
            let budgets = budgets.clone();
            async move {
                wait::for_object(&budgets, "money", &what, move |b: Option<&frugal_api::TrainingBudget>| {
                    b.and_then(|b| b.status.as_ref()).is_some_and(|s| {
                        let mut got: Vec<(String, i32)> = s.jobs.iter().map(|h| (h.name.clone(), h.gpus)).collect();
                        got.sort();
                        got == want.iter().map(|(n, g)| (n.to_string(), *g)).collect::<Vec<_>>()
                    })
                })
                .await
            }
        };
        apply(&ctx, &budgeted("first")).await?;
        let pods = running_pods(&ctx, "first", 1, 2).await?;
        // Kueue's quota is used up: the second job's Job is made, suspended, and its entry in the
        // budget holds no GPUs (the budget's maxGpus of 2 would otherwise keep it from Kueue)
        apply(&ctx, &budgeted("second")).await?;
        workload_of(&ctx, "second", 1).await?;
        job_where(&ctx, "second", "phase Queued", |tj| phase(tj) == Some(Phase::Queued)).await?;
        let b = held(vec![("first", 2), ("second", 0)]).await?;
        eprintln!("ledger while Kueue holds second: {:?}", b.status.as_ref().map(|s| (s.gpus_in_use, s.jobs.iter().map(|h| (h.name.clone(), h.gpus)).collect::<Vec<_>>())));
        let api: Api<Pod> = ctx.api();
        let outcome = serde_json::json!({"metadata": {"annotations": {TEST_OUTCOME_ANNOTATION: "Succeeded"}}});
        // pods are billed in whole seconds: on a fast machine a pod finished at once has run 0 s,
        // so each job runs until its first bill says it spent something
        let billed = |name: &'static str| {
            job_where(&ctx, name, "a bill of more than nothing", |tj| tj.status.as_ref().and_then(|s| s.cost.as_ref()).is_some_and(|c| c.gpu_hours > 0.0))
        };
        billed("first").await?;
        for pod in &pods {
            api.patch(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&outcome)).await?;
        }
        let second_pods = running_pods(&ctx, "second", 1, 2).await?;
        held(vec![("second", 2)]).await?;
        billed("second").await?;
        for pod in &second_pods {
            api.patch(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&outcome)).await?;
        }
        job_where(&ctx, "second", "phase Succeeded", |tj| phase(tj) == Some(Phase::Succeeded)).await?;
        let spent = budgets.get("money").await?.status.map_or(0.0, |s| s.gpu_hours_spent);
        ensure!(spent > 0.0, "the budget counted the GPU-hours of both: {spent}");
        Ok(())
    })
    .await;
}

/// A CPU job the pod runner runs for real, queued on `team`, checkpointing every 10 steps; with
/// `backoffLimit: 0`, an eviction counted as a failure would fail it.
fn queued_cpu_job(name: &str, steps: i64, claim: &str) -> TrainingJob {
    let mut tj = queued(frugal_e2e::training_job::cpu_job(name, steps, Some(claim), 1));
    tj.spec.run_policy.backoff_limit = 0;
    tj
}

#[tokio::test]
async fn a_kueue_eviction_is_not_a_failure_and_the_readmitted_job_resumes() {
    run("kueue-eviction", |ctx: TestContext| async move {
        manifests::install_crds(&ctx.client).await?;
        let pv_name = frugal_e2e::fixtures::shared_claim(&ctx, "ckpt").await?;
        let _queues = Queues::create(&ctx, 4, serde_json::json!({})).await?;
        let _operator = Operator::start(&ctx.namespace, &["--termination-grace-seconds", "20"])?;
        let steps = 400;
        // backoffLimit 0: were the eviction counted as a failure, the job would fail
        apply(&ctx, &queued_cpu_job("lm", steps, "ckpt")).await?;

        // attempt 1 runs for real and writes a checkpoint
        let pods: Api<Pod> = ctx.api();
        let deadline = Instant::now() + frugal_e2e::timeout();
        let first = loop {
            let found = pods.list(&ListParams::default().labels("frugal.dev/attempt=1")).await?.items;
            if let Some(pod) = found.first()
                && pod_output(&ctx.namespace, &pod.name_any()).contains("\"event\":\"checkpoint\"")
            {
                break pod.clone();
            }
            if Instant::now() >= deadline {
                let workloads = Api::<DynamicObject>::namespaced_with(ctx.client.clone(), &ctx.namespace, &kueue("Workload"))
                    .list(&ListParams::default())
                    .await?;
                let conditions: Vec<_> = workloads.items.iter().map(|w| w.data["status"]["conditions"].clone()).collect();
                let outputs: Vec<_> = found
                    .iter()
                    .map(|p| format!("{} ({}):\n{}", p.name_any(), frugal_e2e::fixtures::phase(p), pod_output(&ctx.namespace, &p.name_any())))
                    .collect();
                anyhow::bail!("attempt 1 wrote no checkpoint; workload conditions {conditions:?}; pods:\n{}", outputs.join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };

        // Kueue evicts it (a deactivated Workload is evicted like a preempted one): the Job is
        // suspended, its pod stopped, and the TrainingJob waits in the queue, not failed
        let workloads = Api::<DynamicObject>::namespaced_with(ctx.client.clone(), &ctx.namespace, &kueue("Workload"));
        let workload = workload_of(&ctx, "lm", 1).await?;
        let deactivate = serde_json::json!({"spec": {"active": false}});
        workloads.patch(&workload.name_any(), &PatchParams::default(), &Patch::Merge(&deactivate)).await?;
        wait::for_deletion(&pods, &first.name_any(), first.metadata.uid.as_deref().unwrap_or_default()).await?;
        let evicted = job_where(&ctx, "lm", "phase Queued after the eviction", |tj| phase(tj) == Some(Phase::Queued)).await?;
        let status = evicted.status.as_ref().unwrap();
        ensure!(status.restarts.unwrap_or(0) == 0, "the eviction counted as a restart: {status:?}");
        let stopped = pod_output(&ctx.namespace, &first.name_any());
        ensure!(stopped.matches("\"event\":\"checkpoint\"").count() >= 1, "attempt 1 output:\n{stopped}");

        // readmitted: the same attempt's Job starts a new pod, which resumes from the checkpoint
        let activate = serde_json::json!({"spec": {"active": true}});
        workloads.patch(&workload.name_any(), &PatchParams::default(), &Patch::Merge(&activate)).await?;
        let done = finished(&ctx, "lm").await?;
        let mut after: Vec<Pod> = pods.list(&ListParams::default().labels("frugal.dev/training-job=lm")).await?.items;
        after.retain(|p| p.name_any() != first.name_any());
        let pod = after.first().context("a pod after readmission")?;
        let log = pod_output(&ctx.namespace, &pod.name_any());
        ensure!(phase(&done) == Some(Phase::Succeeded), "ended {:?}; output after readmission:\n{log}", phase(&done));
        let status = done.status.as_ref().unwrap();
        ensure!(status.restarts.unwrap_or(0) == 0, "restarts {:?}", status.restarts);
        let resumed_at = resumed_at(&log).with_context(|| format!("the readmitted pod did not resume:\n{log}"))?;
        ensure!(resumed_at >= 10, "resumed at step {resumed_at}");
        ensure!(log.contains(&format!("\"step\":{steps}")), "did not finish:\n{log}");
        ctx.api::<TrainingJob>().delete("lm", &DeleteParams::default()).await.ok();
        Api::<PersistentVolume>::all(ctx.client.clone()).delete(&pv_name, &DeleteParams::default()).await.ok();
        Ok(())
    })
    .await;
}
