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

    /// Like [`Queues::gpus`], with frugal's budget AdmissionCheck (named after the namespace)
    /// listed on the ClusterQueue, and the LocalQueue `team` labelled with `queue_budget`, if any.
    async fn gpus_checked(ctx: &TestContext, gpus: u32, queue_budget: Option<&str>) -> Result<Self> {
        let check = serde_json::json!({
            "apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "AdmissionCheck",
            "metadata": {"name": ctx.namespace}, "spec": {"controllerName": "frugal.dev/budget"},
        });
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        Api::<DynamicObject>::all_with(ctx.client.clone(), &kueue("AdmissionCheck")).patch(&ctx.namespace, &pp, &Patch::Apply(&check)).await?;
        let queues = Self::gpus(ctx, gpus).await?;
        let strategy = serde_json::json!({
            "spec": {"admissionChecksStrategy": {"admissionChecks": [{"name": ctx.namespace}]}},
        });
        Api::<DynamicObject>::all_with(ctx.client.clone(), &kueue("ClusterQueue"))
            .patch(&ctx.namespace, &PatchParams::default(), &Patch::Merge(&strategy))
            .await?;
        if let Some(budget) = queue_budget {
            let label = serde_json::json!({"metadata": {"labels": {"frugal.dev/budget": budget}}});
            Api::<DynamicObject>::namespaced_with(ctx.client.clone(), &ctx.namespace, &kueue("LocalQueue"))
                .patch("team", &PatchParams::default(), &Patch::Merge(&label))
                .await?;
        }
        // the operator marks the check Active; Kueue admits nothing through an inactive one
        let checks = Api::<DynamicObject>::all_with(ctx.client.clone(), &kueue("AdmissionCheck"));
        wait::for_object(&checks, &ctx.namespace, "the AdmissionCheck Active", |c: Option<&DynamicObject>| {
            c.is_some_and(|c| {
                c.data["status"]["conditions"].as_array().is_some_and(|cs| cs.iter().any(|c| c["type"] == "Active" && c["status"] == "True"))
            })
        })
        .await?;
        Ok(queues)
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
            for kind in ["ClusterQueue", "ResourceFlavor", "AdmissionCheck"] {
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

// ---- frugal as Kueue's AdmissionCheck controller (`frugal.dev/budget`) ----

/// A plain `batch/v1` Job of `pods` pods with `gpus` GPUs each on the fake GPU nodes, queued on
/// `team`; with `max_exec`, Kueue's maximum execution time label.
fn plain_job(name: &str, pods: i32, gpus: u32, max_exec: Option<i64>) -> Job {
    use frugal_e2e::fixtures::{self, PodExt};
    let mut job = fixtures::job(name, fixtures::pod(name).gpus(gpus));
    let labels = job.metadata.labels.get_or_insert_default();
    labels.insert(QUEUE_LABEL.into(), "team".into());
    if let Some(seconds) = max_exec {
        labels.insert("kueue.x-k8s.io/max-exec-time-seconds".into(), seconds.to_string());
    }
    let spec = job.spec.as_mut().unwrap();
    (spec.parallelism, spec.completions) = (Some(pods), Some(pods));
    job
}

/// The Workload Kueue made for the plain Job `job`.
async fn workload_of_job(ctx: &TestContext, job: &str) -> Result<DynamicObject> {
    let api = Api::<DynamicObject>::namespaced_with(ctx.client.clone(), &ctx.namespace, &kueue("Workload"));
    let owner = job.to_string();
    wait::for_any(&api, Default::default(), &format!("the Workload of Job {job}"), move |w: &DynamicObject| {
        w.owner_references().iter().any(|o| o.kind == "Job" && o.name == owner)
    })
    .await
}

/// The state and message of the test's admission check on Workload `workload`.
fn check_of(w: &DynamicObject, check: &str) -> Option<(String, String)> {
    let entry = w.data["status"]["admissionChecks"].as_array()?.iter().find(|c| c["name"] == check)?.clone();
    Some((entry["state"].as_str()?.to_string(), entry["message"].as_str().unwrap_or_default().to_string()))
}

/// Waits until the check on Workload `workload` is in `state`, and prints it as Kueue holds it.
async fn check_state(ctx: &TestContext, workload: &str, state: &'static str) -> Result<(String, String)> {
    let api = Api::<DynamicObject>::namespaced_with(ctx.client.clone(), &ctx.namespace, &kueue("Workload"));
    let check = ctx.namespace.clone();
    let w = wait::for_object(&api, workload, &format!("the admission check {state} on Workload {workload}"), move |w: Option<&DynamicObject>| {
        w.and_then(|w| check_of(w, &check)).is_some_and(|(s, _)| s == state)
    })
    .await?;
    let got = check_of(&w, &ctx.namespace).context("the check's entry")?;
    eprintln!("Workload {workload}: admission check {:?} state {} message {:?}", ctx.namespace, got.0, got.1);
    Ok(got)
}

/// The pods of the plain Job `job`.
async fn job_pods(ctx: &TestContext, job: &str) -> Result<Vec<Pod>> {
    Ok(ctx.api::<Pod>().list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}"))).await?.items)
}

/// Waits for `n` running pods of the plain Job `job`.
async fn running_job_pods(ctx: &TestContext, job: &str, n: usize) -> Result<Vec<Pod>> {
    let api: Api<Pod> = ctx.api();
    let selector = format!("batch.kubernetes.io/job-name={job}");
    wait::until(&format!("{n} running pods of Job {job}"), async {
        loop {
            let pods = api.list(&ListParams::default().labels(&selector)).await?;
            let running: Vec<Pod> = pods.items.into_iter().filter(|p| frugal_e2e::fixtures::phase(p) == "Running").collect();
            if running.len() >= n {
                return Ok::<_, anyhow::Error>(running);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await
}

/// A pod's GPU-seconds: its GPUs from PodScheduled until its container finished.
fn gpu_seconds(pod: &Pod) -> Option<f64> {
    let status = pod.status.as_ref()?;
    let scheduled = status.conditions.as_ref()?.iter().find(|c| c.type_ == "PodScheduled" && c.status == "True")?.last_transition_time.clone()?;
    let finished =
        status.container_statuses.as_ref()?.iter().filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.clone()).max_by_key(|t| t.0)?;
    let gpus: f64 =
        pod.spec.as_ref()?.containers.iter().filter_map(|c| c.resources.as_ref()?.limits.as_ref()?.get(GPU_RESOURCE)?.0.parse::<f64>().ok()).sum();
    Some(gpus * (finished.0.as_second() - scheduled.0.as_second()) as f64)
}

fn budgets(ctx: &TestContext) -> Api<frugal_api::TrainingBudget> {
    ctx.api()
}

async fn apply_budget(ctx: &TestContext, budget: &frugal_api::TrainingBudget) -> Result<()> {
    budgets(ctx).patch(&budget.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(budget)).await?;
    Ok(())
}

/// Waits until budget `name`'s ledger satisfies `pred`.
async fn ledger_where(
    ctx: &TestContext,
    name: &str,
    what: &str,
    pred: impl Fn(&frugal_api::v1alpha1::TrainingBudgetStatus) -> bool + Send + 'static,
) -> Result<frugal_api::v1alpha1::TrainingBudgetStatus> {
    let b = wait::for_object(&budgets(ctx), name, what, move |b: Option<&frugal_api::TrainingBudget>| {
        b.and_then(|b| b.status.as_ref()).is_some_and(&pred)
    })
    .await?;
    Ok(b.status.unwrap_or_default())
}

fn succeed(pods: &[Pod]) -> serde_json::Value {
    let _ = pods;
    serde_json::json!({"metadata": {"annotations": {TEST_OUTCOME_ANNOTATION: "Succeeded"}}})
}

/// A plain Job under a 4-GPU-hour budget (bound by its LocalQueue's label): admitted (Ready),
/// its pods billed into the ledger within 2% of their GPU time across an operator restart, evicted through Kueue (Retry,
/// naming the budget, what it spent and when it frees) once the period is spent, and admitted
/// again (Ready) once the budget is raised.
#[tokio::test]
async fn a_plain_job_is_admitted_billed_evicted_when_spent_and_readmitted_when_raised() {
    run("kueue-check-plain-job", |ctx: TestContext| async move {
        manifests::install_crds(&ctx.client).await?;
        let mut operator = Operator::start(&ctx.namespace, &["--kueue-admission-check"])?;
        apply_budget(&ctx, &frugal_api::TrainingBudget::test(8).name("team").gpu_hours(Some(4.0)).build()).await?;
        let _queues = Queues::gpus_checked(&ctx, 8, Some("team")).await?;
        let jobs: Api<Job> = ctx.api();
        let pp = PatchParams::apply(FIELD_MANAGER);

        // admitted: the check says Ready, Kueue admits it, its pods run
        jobs.patch("first", &pp, &Patch::Apply(&plain_job("first", 2, 2, None))).await?;
        let first = workload_of_job(&ctx, "first").await?.name_any();
        let (_, ready) = check_state(&ctx, &first, "Ready").await?;
        ensure!(ready.contains("\"team\""), "{ready}");
        let pods = running_job_pods(&ctx, "first", 2).await?;
        // billed while it runs; an operator restarted then neither loses nor counts twice what
        // the entry counted (the final bill below is the pods' time)
        ledger_where(&ctx, "team", "the workload billed while it runs", move |s| s.jobs.iter().any(|h| h.gpu_hours_counted > 0.0)).await?;
        drop(operator);
        operator = Operator::start(&ctx.namespace, &["--kueue-admission-check"])?;
        let counted = budgets(&ctx).get("team").await?.status.map_or(0.0, |s| s.jobs.iter().map(|h| h.gpu_hours_counted).sum::<f64>());
        ledger_where(&ctx, "team", "the restarted operator billing on", move |s| s.jobs.iter().any(|h| h.gpu_hours_counted > counted)).await?;
        let api: Api<Pod> = ctx.api();
        for pod in &pods {
            api.patch(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&succeed(&pods))).await?;
        }
        // finished: its entry goes, with what its pods spent
        let ledger = ledger_where(&ctx, "team", "the finished workload's entry released", |s| s.jobs.is_empty() && s.gpu_hours_spent > 0.0).await?;
        let pod_seconds: f64 = job_pods(&ctx, "first").await?.iter().filter_map(gpu_seconds).sum();
        let billed = ledger.gpu_hours_spent * 3600.0;
        eprintln!("pods' GPU time {pod_seconds} s, billed {billed:.1} GPU-seconds");
        ensure!(pod_seconds > 0.0 && (billed - pod_seconds).abs() <= 0.02 * pod_seconds, "billed {billed} GPU-seconds for {pod_seconds} of pod time");

        // nearly spent: a second job is admitted, runs, and is evicted when the period is spent
        let spent = serde_json::json!({"status": {"gpuHoursSpent": 3.995}});
        budgets(&ctx).patch_status("team", &PatchParams::default(), &Patch::Merge(&spent)).await?;
        jobs.patch("second", &pp, &Patch::Apply(&plain_job("second", 2, 2, None))).await?;
        let second = workload_of_job(&ctx, "second").await?.name_any();
        check_state(&ctx, &second, "Ready").await?;
        running_job_pods(&ctx, "second", 2).await?;
        let (_, retry) = check_state(&ctx, &second, "Retry").await?;
        ensure!(
            retry.contains("\"team\"")
                && retry.contains("has spent")
                && retry.contains("Kueue evicts the workload")
                && retry.contains("next period begins at"),
            "{retry}"
        );
        let suspended = wait::for_object(&jobs, "second", "Kueue suspends the evicted Job", |j: Option<&Job>| {
            j.and_then(|j| j.spec.as_ref()?.suspend).unwrap_or(false)
        })
        .await?;
        ensure!(suspended.spec.unwrap().suspend == Some(true));
        let workloads = Api::<DynamicObject>::namespaced_with(ctx.client.clone(), &ctx.namespace, &kueue("Workload"));
        let evicted = workloads.get(&second).await?;
        eprintln!("Workload {second} conditions after the eviction: {}", evicted.data["status"]["conditions"]);

        // raised: Kueue asks again, the check says Ready, the Job runs again
        apply_budget(&ctx, &frugal_api::TrainingBudget::test(8).name("team").gpu_hours(Some(6.0)).build()).await?;
        check_state(&ctx, &second, "Ready").await?;
        wait::for_object(&jobs, "second", "Kueue admits the Job again", |j: Option<&Job>| j.and_then(|j| j.spec.as_ref()?.suspend) == Some(false))
            .await?;
        running_job_pods(&ctx, "second", 2).await?;
        drop(operator);
        Ok(())
    })
    .await;
}

/// A Workload whose GPUs times its maximum execution time can never fit the budget's period is
/// Rejected, saying why.
#[tokio::test]
async fn a_workload_that_could_never_fit_is_rejected() {
    run("kueue-check-rejected", |ctx: TestContext| async move {
        manifests::install_crds(&ctx.client).await?;
        let _operator = Operator::start(&ctx.namespace, &["--kueue-admission-check"])?;
        apply_budget(&ctx, &frugal_api::TrainingBudget::test(8).name("team").gpu_hours(Some(1.0)).build()).await?;
        let _queues = Queues::gpus_checked(&ctx, 8, Some("team")).await?;
        // 4 GPUs for up to an hour: 4 GPU-hours, in a budget of 1 a day
        ctx.api::<Job>().patch("long", &PatchParams::apply(FIELD_MANAGER), &Patch::Apply(&plain_job("long", 2, 2, Some(3600)))).await?;
        let long = workload_of_job(&ctx, "long").await?.name_any();
        let (_, message) = check_state(&ctx, &long, "Rejected").await?;
        ensure!(message.contains("4.00 GPU-hours") && message.contains("max-exec-time-seconds") && message.contains("\"team\""), "{message}");
        ensure!(job_pods(&ctx, "long").await?.is_empty(), "a rejected workload ran pods");
        Ok(())
    })
    .await;
}

/// A TrainingJob and a plain Job under one ClusterQueue with the check share the namespace's
/// default budget: each is decided by the check (Ready), the TrainingJob counted once (its own
/// entry, none for its attempt's Workload), the plain Job in its Workload's entry.
#[tokio::test]
async fn a_training_job_and_a_plain_job_share_one_budget_without_double_counting() {
    run("kueue-check-shared", |ctx: TestContext| async move {
        manifests::install_crds(&ctx.client).await?;
        let _operator = Operator::start(&ctx.namespace, &["--kueue-admission-check", "--termination-grace-seconds", "5"])?;
        let budget = frugal_api::TrainingBudget::test(8).name("team").gpu_hours(Some(100.0)).namespace_default(true).build();
        apply_budget(&ctx, &budget).await?;
        let _queues = Queues::gpus_checked(&ctx, 8, None).await?;

        apply(&ctx, &gpu_job("tj", 2)).await?;
        ctx.api::<Job>().patch("plain", &PatchParams::apply(FIELD_MANAGER), &Patch::Apply(&plain_job("plain", 1, 2, None))).await?;
        let tj_workload = workload_of(&ctx, "tj", 1).await?.name_any();
        let plain_workload = workload_of_job(&ctx, "plain").await?.name_any();
        check_state(&ctx, &tj_workload, "Ready").await?;
        check_state(&ctx, &plain_workload, "Ready").await?;
        let tj_pods = running_pods(&ctx, "tj", 1, 2).await?;
        let plain_pods = running_job_pods(&ctx, "plain", 1).await?;
        let (tw, pw) = (tj_workload.clone(), plain_workload.clone());
        let ledger = ledger_where(&ctx, "team", "both held, each once", move |s| {
            s.jobs.iter().any(|h| h.name == "tj") && s.jobs.iter().any(|h| h.name == pw) && !s.jobs.iter().any(|h| h.name == tw)
        })
        .await?;
        eprintln!("ledger: {:?}", ledger.jobs.iter().map(|h| (h.name.clone(), h.kind, h.gpus)).collect::<Vec<_>>());
        ensure!(ledger.jobs.len() == 2, "entries {:?}", ledger.jobs);
        job_where(&ctx, "tj", "a bill of more than nothing", |tj| {
            tj.status.as_ref().and_then(|s| s.cost.as_ref()).is_some_and(|c| c.gpu_hours > 0.0)
        })
        .await?;
        let api: Api<Pod> = ctx.api();
        for pod in tj_pods.iter().chain(&plain_pods) {
            api.patch(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&succeed(&[]))).await?;
        }
        let tj = job_where(&ctx, "tj", "phase Succeeded", |tj| phase(tj) == Some(Phase::Succeeded)).await?;
        let ledger = ledger_where(&ctx, "team", "both released", |s| s.jobs.is_empty()).await?;
        let tj_hours = tj.status.as_ref().and_then(|s| s.cost.as_ref()).map_or(0.0, |c| c.gpu_hours);
        let plain_hours = job_pods(&ctx, "plain").await?.iter().filter_map(gpu_seconds).sum::<f64>() / 3600.0;
        eprintln!("spent {} GPU-hours: TrainingJob {tj_hours}, plain Job {plain_hours}", ledger.gpu_hours_spent);
        let want = tj_hours + plain_hours;
        ensure!((ledger.gpu_hours_spent - want).abs() <= 0.02 * want + 1.0 / 3600.0, "spent {} for {want}", ledger.gpu_hours_spent);
        Ok(())
    })
    .await;
}
