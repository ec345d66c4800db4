//! The operator under Kueue, with Kueue's own controller manager from the test cluster
//! (`e2e/cluster/up` runs it, webhooks included): a TrainingJob labelled with a LocalQueue becomes
//! a suspended Job that Kueue admits within the ClusterQueue's GPU quota, injecting its flavor's
//! node selector; a second job waits in the queue; on the real node, within a quota of its CPUs,
//! an eviction is not a failure, and the readmitted attempt resumes from the checkpoint the
//! evicted pod left.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, PersistentVolume, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt as _};

use frugal_api::TrainingJob;
use frugal_api::v1alpha1::Phase;
use frugal_e2e::node::{self, REAL_NODE_LABEL, TRAINING};
use frugal_e2e::operator::Operator;
use frugal_e2e::training_job::{apply, condition, finished_within, job_where, last_checkpoint, phase, real_cpu_job, resumed_at, running_pods};
use frugal_e2e::{FIELD_MANAGER, GPU_RESOURCE, TEST_OUTCOME_ANNOTATION, TestContext, manifests, run, wait};

use frugal_api::admission::KUEUE_QUEUE_LABEL as QUEUE_LABEL;
const GPU_PRODUCT: (&str, &str) = ("nvidia.com/gpu.product", "NVIDIA-H100-80GB-HBM3");

fn kueue(kind: &str) -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk("kueue.x-k8s.io", "v1beta2", kind))
}

/// A ResourceFlavor, a ClusterQueue over this test's namespace with a quota of the flavor's
/// resources, and the LocalQueue `team` pointing at it; the cluster-scoped two are named after
/// the namespace and deleted when the returned guard goes.
struct Queues {
    client: kube::Client,
    name: String,
}

impl Queues {
    /// For the fake H100 nodes: `gpus` GPUs of quota, CPUs and memory to spare.
    async fn gpus(ctx: &TestContext, gpus: u32) -> Result<Self> {
        let quota = [("cpu", serde_json::json!(64)), ("memory", serde_json::json!("512Gi")), (GPU_RESOURCE, serde_json::json!(gpus))];
        Self::create(ctx, serde_json::json!({GPU_PRODUCT.0: GPU_PRODUCT.1}), &quota).await
    }

    /// For the real node: its label, and a quota of the CPUs and memory it offers (its
    /// allocatable), so Kueue admits what the node can run.
    async fn real_node(ctx: &TestContext) -> Result<Self> {
        let (key, value) = REAL_NODE_LABEL;
        let nodes = Api::<Node>::all(ctx.client.clone()).list(&ListParams::default().labels(&format!("{key}={value}"))).await?;
        let allocatable =
            nodes.items.first().and_then(|n| n.status.as_ref()?.allocatable.clone()).context("the real node's allocatable resources")?;
        let quota: Vec<(&str, serde_json::Value)> = ["cpu", "memory"]
            .into_iter()
            .map(|r| Ok((r, serde_json::json!(allocatable.get(r).with_context(|| format!("the real node's {r}"))?.0))))
            .collect::<Result<_>>()?;
        Self::create(ctx, serde_json::json!({key: value}), &quota).await
    }

    async fn create(ctx: &TestContext, node_labels: serde_json::Value, quota: &[(&str, serde_json::Value)]) -> Result<Self> {
        let name = ctx.namespace.clone();
        let flavor = serde_json::json!({
            "apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor",
            "metadata": {"name": name}, "spec": {"nodeLabels": node_labels},
        });
        let covered: Vec<&str> = quota.iter().map(|(resource, _)| *resource).collect();
        let resources: Vec<serde_json::Value> = quota.iter().map(|(resource, n)| serde_json::json!({"name": resource, "nominalQuota": n})).collect();
        let cluster_queue = serde_json::json!({
            "apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ClusterQueue",
            "metadata": {"name": name},
            "spec": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ctx.namespace}},
                "resourceGroups": [{"coveredResources": covered, "flavors": [{"name": name, "resources": resources}]}],
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
        let _queues = Queues::gpus(&ctx, 4).await?;
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
        let _queues = Queues::gpus(&ctx, 2).await?;
        let _operator = Operator::start(&ctx.namespace, &["--termination-grace-seconds", "5"])?;
        let budget = frugal_api::TrainingBudget::test(2).name("money").admission(frugal_api::v1alpha1::BudgetAdmission::Spend).build();
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
        eprintln!(
            "ledger while Kueue holds second: {:?}",
            b.status.as_ref().map(|s| (s.gpus_in_use, s.jobs.iter().map(|h| (h.name.clone(), h.gpus)).collect::<Vec<_>>()))
        );
        let api: Api<Pod> = ctx.api();
        let outcome = serde_json::json!({"metadata": {"annotations": {TEST_OUTCOME_ANNOTATION: "Succeeded"}}});
        // pods are billed in whole seconds: on a fast machine a pod finished at once has run 0 s,
        // so each job runs until its first bill says it spent something
        let billed = |name: &'static str| {
            job_where(&ctx, name, "a bill of more than nothing", |tj| {
                tj.status.as_ref().and_then(|s| s.cost.as_ref()).is_some_and(|c| c.gpu_hours > 0.0)
            })
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

/// A CPU job in a container on the real node, queued on `team`, asking for one of the node's
/// CPUs (which the ClusterQueue's quota counts) and checkpointing every 100 steps; with
/// `backoffLimit: 0`, an eviction counted as a failure would fail it.
fn queued_cpu_job(name: &str, steps: i64, claim: &str) -> TrainingJob {
    let mut tj = queued(real_cpu_job(name, steps, Some(claim), 1));
    tj.spec.run_policy.backoff_limit = 0;
    tj.spec.training.checkpoint_interval = 100;
    tj.spec.resources.cpu = Some(Quantity("1".into()));
    tj
}

/// A finalizer the eviction test holds the evicted pod with.
const LINGER_FINALIZER: &str = "e2e.frugal.dev/linger";

#[tokio::test]
async fn a_kueue_eviction_is_not_a_failure_and_the_readmitted_job_resumes() {
    if !node::available("kueue-eviction") {
        return;
    }
    run("kueue-eviction", |ctx: TestContext| async move {
        manifests::install_crds(&ctx.client).await?;
        let pv_name = node::shared_claim(&ctx, "ckpt").await?;
        let _queues = Queues::real_node(&ctx).await?;
        let _operator = Operator::start(&ctx.namespace, &["--termination-grace-seconds", "20"])?;
        let steps = 2000;
        apply(&ctx, &queued_cpu_job("lm", steps, "ckpt")).await?;

        // attempt 1, admitted within the real node's CPUs, trains in a container and checkpoints
        let first = node::pod_logging(&ctx, "lm", 1, "\"event\":\"checkpoint\"", TRAINING).await?;
        let output = node::follow_logs(&ctx, &first.name_any());
        let workloads = Api::<DynamicObject>::namespaced_with(ctx.client.clone(), &ctx.namespace, &kueue("Workload"));
        let workload = workload_of(&ctx, "lm", 1).await?;
        let flavor = &workload.data["status"]["admission"]["podSetAssignments"][0]["flavors"]["cpu"];
        ensure!(flavor == ctx.namespace.as_str(), "admitted to flavor {flavor} for its CPU");

        // Kueue evicts it (a deactivated Workload is evicted like a preempted one): the Job is
        // suspended, its pod stopped, and the TrainingJob waits in the queue, not failed. The
        // stopped pod is held by a finalizer of the test's, so the Job controller surely sees it
        // failed with the trainer's exit code 143 (a loaded kubelet leaves the same window
        // before it removes the pod): that exit, from a pod the Job deleted, fails nothing.
        let pods: Api<Pod> = ctx.api();
        let hold = serde_json::json!({"metadata": {"finalizers": [LINGER_FINALIZER]}});
        pods.patch(&first.name_any(), &PatchParams::default(), &Patch::Strategic(&hold)).await?;
        let deactivate = serde_json::json!({"spec": {"active": false}});
        workloads.patch(&workload.name_any(), &PatchParams::default(), &Patch::Merge(&deactivate)).await?;
        let lingering = wait::for_object(&pods, &first.name_any(), "the evicted pod stopped", |p: Option<&Pod>| {
            p.and_then(|p| p.status.as_ref()?.phase.as_deref()) == Some("Failed")
        })
        .await?;
        let exit =
            lingering.status.as_ref().and_then(|s| s.container_statuses.as_ref()?.first()?.state.as_ref()?.terminated.as_ref()).map(|t| t.exit_code);
        ensure!(exit == Some(143), "the evicted trainer exited {exit:?}, not 143 after its checkpoint");
        let evicted = job_where(&ctx, "lm", "phase Queued after the eviction", |tj| phase(tj) == Some(Phase::Queued)).await?;
        let status = evicted.status.as_ref().unwrap();
        ensure!(status.restarts.unwrap_or(0) == 0, "the eviction counted as a restart: {status:?}");
        // the Job controller syncs a Job within a second or so of its pod's change
        tokio::time::sleep(Duration::from_secs(3)).await;
        let attempt = ctx.api::<Job>().get("lm-a1").await?;
        let failing: Vec<_> =
            attempt.status.iter().flat_map(|s| s.conditions.iter().flatten()).filter(|c| c.type_ == "FailureTarget" || c.type_ == "Failed").collect();
        ensure!(failing.is_empty(), "the suspended Job counts its evicted pod as a failure: {failing:?}");
        let release = serde_json::json!({"metadata": {"$deleteFromPrimitiveList/finalizers": [LINGER_FINALIZER]}});
        pods.patch(&first.name_any(), &PatchParams::default(), &Patch::Strategic(&release)).await?;
        wait::for_deletion(&pods, &first.name_any(), first.metadata.uid.as_deref().unwrap_or_default()).await?;
        let stopped = tokio::time::timeout(Duration::from_secs(60), output).await.context("the evicted pod's log did not end")??;
        let checkpoint = last_checkpoint(&stopped).with_context(|| format!("attempt 1 wrote no checkpoint:\n{stopped}"))?;

        // readmitted: the same attempt's Job starts a new pod, which resumes from the last checkpoint
        let activate = serde_json::json!({"spec": {"active": true}});
        workloads.patch(&workload.name_any(), &PatchParams::default(), &Patch::Merge(&activate)).await?;
        let done = finished_within(&ctx, "lm", TRAINING).await?;
        let mut after = node::attempt_pods(&ctx, "lm", 1).await?;
        after.retain(|p| p.name_any() != first.name_any());
        let pod = after.first().context("a pod after readmission")?;
        let log = node::logs(&ctx, &pod.name_any()).await;
        ensure!(phase(&done) == Some(Phase::Succeeded), "ended {:?}; output after readmission:\n{log}", phase(&done));
        let status = done.status.as_ref().unwrap();
        ensure!(status.restarts.unwrap_or(0) == 0, "restarts {:?}", status.restarts);
        let resumed_at = resumed_at(&log).with_context(|| format!("the readmitted pod did not resume:\n{log}"))?;
        ensure!(resumed_at == checkpoint, "resumed at step {resumed_at}, attempt 1's last checkpoint was at {checkpoint}");
        ensure!(log.contains(&format!("\"step\":{steps}")), "did not finish:\n{log}");
        ctx.api::<TrainingJob>().delete("lm", &DeleteParams::default()).await.ok();
        Api::<PersistentVolume>::all(ctx.client.clone()).delete(&pv_name, &DeleteParams::default()).await.ok();
        Ok(())
    })
    .await;
}
