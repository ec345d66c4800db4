//! What GitOps tools make of TrainingJobs and TrainingBudgets (docs/gitops.md): Argo CD's health
//! scripts (`gitops/argocd/*.lua`) and kstatus, which Flux's health checks use, both evaluated
//! by `frugal-gitops` (`e2e/cluster/go/gitops`) with the libraries those tools embed. Fixtures
//! of every phase and reason (`e2e/tests/gitops/`) and real objects the operator wrote must read
//! as documented; the Argo CD and Flux configuration files must name what is really here.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context as _, Result, bail, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::{Api, ResourceExt as _};
use serde::Deserialize;
use serde_json::{Value, json};

use frugal_api::v1alpha1::{BudgetAdmission, Phase};
use frugal_api::{TrainingBudget, TrainingJob};
use frugal_e2e::operator::Operator;
use frugal_e2e::training_job::{apply, condition, fake_gpu_job, finish_pod, job_where, phase, run_ending_pods, running_pods};
use frugal_e2e::{FIELD_MANAGER, TEST_OUTCOME_ANNOTATION, TestContext, manifests, repo_root, wait};

/// What a tool made of an object.
#[derive(Debug, Deserialize)]
struct Health {
    status: String,
    message: String,
}

/// What Argo CD (status, and a piece of its message) and kstatus should make of an object.
#[derive(Debug, Clone, Copy)]
struct Reads {
    argo: &'static str,
    says: &'static str,
    kstatus: &'static str,
}

const fn reads(argo: &'static str, says: &'static str, kstatus: &'static str) -> Reads {
    Reads { argo, says, kstatus }
}

/// The evaluator: `FRUGAL_GITOPS_BIN`, which scripts/e2e.sh sets from `e2e/cluster/build`.
fn gitops_bin() -> Result<PathBuf> {
    std::env::var_os("FRUGAL_GITOPS_BIN").map(PathBuf::from).filter(|p| p.exists()).context(
        "FRUGAL_GITOPS_BIN does not name frugal-gitops: run `eval \"$(e2e/cluster/build)\"` and set FRUGAL_GITOPS_BIN=$GITOPS_BIN/frugal-gitops (scripts/e2e.sh does)",
    )
}

fn evaluate(args: &[&Path]) -> Result<Health> {
    let out = Command::new(gitops_bin()?).args(args).output().context("running frugal-gitops")?;
    ensure!(out.status.success(), "frugal-gitops {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).with_context(|| format!("frugal-gitops printed {}", String::from_utf8_lossy(&out.stdout)))
}

/// The Argo CD health script of an object's kind.
fn script(object: &Value) -> Result<PathBuf> {
    let file = match object["kind"].as_str() {
        Some("TrainingJob") => "trainingjob.lua",
        Some("TrainingBudget") => "trainingbudget.lua",
        other => bail!("no health script for kind {other:?}"),
    };
    Ok(repo_root().join("gitops/argocd").join(file))
}

/// Checks what Argo CD and kstatus make of the object in `path`.
fn check_file(path: &Path, object: &Value, want: Reads) -> Result<()> {
    let argo = evaluate(&[Path::new("argocd"), &script(object)?, path])?;
    let kstatus = evaluate(&[Path::new("kstatus"), path])?;
    ensure!(
        argo.status == want.argo && argo.message.contains(want.says) && kstatus.status == want.kstatus,
        "{}: Argo CD says {} ({:?}), kstatus {} ({:?}); expected {} (with {:?}) and {}",
        path.display(),
        argo.status,
        argo.message,
        kstatus.status,
        kstatus.message,
        want.argo,
        want.says,
        want.kstatus
    );
    Ok(())
}

/// Checks what Argo CD and kstatus make of `object`, written to a scratch file for the tools.
fn check(object: &Value, want: Reads) -> Result<()> {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let name = object["metadata"]["name"].as_str().unwrap_or("object");
    let path = std::env::temp_dir().join(format!("frugal-gitops-{}-{}-{name}.json", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)));
    std::fs::write(&path, serde_json::to_vec_pretty(object)?)?;
    let checked = check_file(&path, object, want);
    let _ = std::fs::remove_file(&path);
    checked
}

/// Every phase and reason the operator writes, as a fixture shaped like the objects it really
/// writes (e2e/tests/gitops/), and what each must read as.
const FIXTURES: &[(&str, Reads)] = &[
    ("job-no-status.json", reads("Progressing", "has not observed generation 1", "Current")),
    ("job-stale-generation.json", reads("Progressing", "has not observed generation 2", "InProgress")),
    ("job-pending-creating.json", reads("Progressing", "Creating: planned", "InProgress")),
    ("job-pending-pods-starting.json", reads("Progressing", "PodsStarting:", "InProgress")),
    ("job-pending-unschedulable.json", reads("Progressing", "Unschedulable: attempt 1: pod", "InProgress")),
    ("job-pending-restarting.json", reads("Progressing", "Restarting: attempt 1 failed", "InProgress")),
    ("job-pending-waiting-for-claim.json", reads("Progressing", "WaitingForCheckpointClaim:", "InProgress")),
    ("job-queued-by-kueue.json", reads("Progressing", "Queued: attempt 1 waits for its queue", "InProgress")),
    ("job-queued-budget-not-found.json", reads("Progressing", "BudgetNotFound:", "InProgress")),
    ("job-queued-budget-exhausted.json", reads("Suspended", "BudgetExhausted: TrainingBudget \"small\" has spent", "InProgress")),
    ("job-queued-budget-gpus-held.json", reads("Suspended", "BudgetExhausted: TrainingBudget \"team\" has 1 of its 1 GPUs", "InProgress")),
    ("job-running.json", reads("Healthy", "Running: attempt 1 is running", "Current")),
    ("job-running-non-finite-loss.json", reads("Degraded", "NonFiniteLoss: the training loss at step 7 is not a finite number", "Current")),
    ("job-running-stopping-for-budget.json", reads("Suspended", "BudgetExhausted:", "Current")),
    ("job-running-past-deadline.json", reads("Degraded", "DeadlineExceeded:", "Current")),
    ("job-stalled.json", reads("Degraded", "Stalled: attempt 1 made no progress", "Failed")),
    ("job-suspending.json", reads("Suspended", "Suspending:", "Current")),
    ("job-suspended.json", reads("Suspended", "Suspended: runPolicy.suspend is true", "Current")),
    ("job-succeeded.json", reads("Healthy", "Succeeded: attempt 1 completed", "Current")),
    ("job-succeeded-non-finite-loss.json", reads("Degraded", "NonFiniteLoss: the training loss at step 412", "Current")),
    ("job-failed-budget-too-small.json", reads("Degraded", "BudgetTooSmall: the job needs 2 GPUs", "Failed")),
    ("job-failed-rejected-by-api-server.json", reads("Degraded", "RejectedByApiServer:", "Failed")),
    ("job-failed-backoff-limit.json", reads("Degraded", "BackoffLimitExceeded: 1 failed attempts exceed runPolicy.backoffLimit 0", "Failed")),
    ("budget-within-limits.json", reads("Healthy", "WithinLimits:", "Current")),
    ("budget-all-gpus-in-use.json", reads("Healthy", "AllGpusInUse: 1 of its 1 GPUs", "Current")),
    ("budget-gpu-hours-spent.json", reads("Degraded", "GpuHoursSpent: spent", "Current")),
    ("budget-cost-spent.json", reads("Degraded", "CostSpent: spent", "Current")),
    ("budget-stale.json", reads("Progressing", "has not observed generation 2", "InProgress")),
];

fn fixture_dir() -> PathBuf {
    repo_root().join("e2e/tests/gitops")
}

#[test]
fn every_phase_and_reason_reads_to_argo_cd_and_kstatus_as_documented() -> Result<()> {
    if !frugal_e2e::enabled() {
        eprintln!("e2e: skipping gitops fixtures: set FRUGAL_E2E=1 with FRUGAL_GITOPS_BIN (scripts/e2e.sh does)");
        return Ok(());
    }
    let mut files: Vec<String> =
        std::fs::read_dir(fixture_dir())?.map(|e| Ok(e?.file_name().to_string_lossy().into_owned())).collect::<Result<_>>()?;
    files.sort();
    let mut listed: Vec<String> = FIXTURES.iter().map(|(f, _)| f.to_string()).collect();
    listed.sort();
    ensure!(files == listed, "the fixtures in {} and the table differ: {files:?} against {listed:?}", fixture_dir().display());
    let mut failures = Vec::new();
    for (file, want) in FIXTURES {
        let path = fixture_dir().join(file);
        let object: Value = serde_json::from_str(&std::fs::read_to_string(&path)?).with_context(|| format!("{file} is not JSON"))?;
        if let Err(e) = check_file(&path, &object, *want) {
            failures.push(format!("{e:#}"));
        }
    }
    ensure!(failures.is_empty(), "{} of {} fixtures read otherwise:\n{}", failures.len(), FIXTURES.len(), failures.join("\n"));
    Ok(())
}

/// The scripts inlined in the config map and the Helm values are the `.lua` files, byte for
/// byte, under the keys Argo CD reads (`resource.customizations.health.<group>_<Kind>`).
#[test]
fn the_argo_cd_config_inlines_the_scripts_unchanged() -> Result<()> {
    let dir = repo_root().join("gitops/argocd");
    let yaml = |file: &str| -> Result<Value> {
        let text = std::fs::read_to_string(dir.join(file))?;
        serde_saphyr::from_str(&text).with_context(|| format!("{file} is not YAML"))
    };
    let cm = yaml("argocd-cm.yaml")?;
    ensure!(cm["kind"] == "ConfigMap" && cm["metadata"]["name"] == "argocd-cm", "argocd-cm.yaml is not the argocd-cm ConfigMap: {cm}");
    let values = yaml("argo-cd-values.yaml")?;
    for (file, kind) in [("trainingjob.lua", "TrainingJob"), ("trainingbudget.lua", "TrainingBudget")] {
        let script = std::fs::read_to_string(dir.join(file))?;
        let key = format!("resource.customizations.health.frugal.dev_{kind}");
        for (what, data) in [("argocd-cm.yaml data", &cm["data"]), ("argo-cd-values.yaml configs.cm", &values["configs"]["cm"])] {
            let inline = data[&key].as_str().with_context(|| format!("{what} has no {key}"))?;
            ensure!(inline == script, "{what}[{key}] is not {file} byte for byte");
        }
    }
    Ok(())
}

/// The Flux examples install the chart that is here and health-check a TrainingJob of the
/// examples that their Kustomization really applies.
#[test]
fn the_flux_examples_name_the_chart_and_an_example_job() -> Result<()> {
    let dir = repo_root().join("gitops/flux");
    let docs = |file: &str| -> Result<Vec<Value>> {
        let text = std::fs::read_to_string(dir.join(file))?;
        serde_saphyr::from_multiple(&text).with_context(|| format!("{file} is not YAML"))
    };
    let find = |docs: &[Value], kind: &str| docs.iter().find(|d| d["kind"] == kind).cloned().with_context(|| format!("no {kind}"));

    // the HelmRelease: charts/frugal from the GitRepository of this repository
    let release = docs("frugal.yaml")?;
    let source = find(&release, "GitRepository")?;
    let helm_release = find(&release, "HelmRelease")?;
    ensure!(helm_release["apiVersion"] == "helm.toolkit.fluxcd.io/v2", "{helm_release}");
    let chart = &helm_release["spec"]["chart"]["spec"];
    let path = chart["chart"].as_str().context("spec.chart.spec.chart")?;
    ensure!(repo_root().join(path).join("Chart.yaml").exists(), "the HelmRelease names chart {path}, which is not a chart here");
    ensure!(chart["sourceRef"]["kind"] == "GitRepository" && chart["sourceRef"]["name"] == source["metadata"]["name"], "{chart}");
    // every value it sets is one the chart has
    let chart_values: Value = serde_saphyr::from_str(&std::fs::read_to_string(repo_root().join(path).join("values.yaml"))?)?;
    let mut unknown = Vec::new();
    known_values(&helm_release["spec"]["values"], &chart_values, "", &mut unknown);
    ensure!(unknown.is_empty(), "the HelmRelease sets values the chart does not have: {unknown:?}");

    // the Kustomization: applies the kustomize directory, which lists an example TrainingJob,
    // and health-checks that job
    let kustomization = find(&docs("training.yaml")?, "Kustomization")?;
    ensure!(kustomization["apiVersion"] == "kustomize.toolkit.fluxcd.io/v1", "{kustomization}");
    let spec = &kustomization["spec"];
    ensure!(spec["wait"] == false, "wait: true would make Flux ignore spec.healthChecks");
    ensure!(spec["timeout"].is_string(), "no spec.timeout: {spec}");
    let applied = repo_root().join(spec["path"].as_str().context("spec.path")?);
    let kustomize: Value = serde_saphyr::from_str(&std::fs::read_to_string(applied.join("kustomization.yaml"))?)?;
    let mut jobs = Vec::new();
    for resource in kustomize["resources"].as_array().context("resources")? {
        let file = applied.join(resource.as_str().context("a resource path")?);
        let file = file.canonicalize().with_context(|| format!("{} lists {}, which does not exist", applied.display(), file.display()))?;
        ensure!(file.starts_with(repo_root()), "{} is outside the repository", file.display());
        for object in manifests::read_objects(&file)? {
            if object.types.as_ref().is_some_and(|t| t.kind == "TrainingJob") {
                ensure!(file.starts_with(repo_root().join("examples")), "the TrainingJob {} is not an example", file.display());
                jobs.push(object.name_any());
            }
        }
    }
    let checks = spec["healthChecks"].as_array().context("spec.healthChecks")?;
    ensure!(!checks.is_empty(), "no health checks");
    for check in checks {
        ensure!(check["apiVersion"] == "frugal.dev/v1alpha1" && check["kind"] == "TrainingJob", "{check}");
        ensure!(check["namespace"] == spec["targetNamespace"], "the health check looks in another namespace than the job's: {check}");
        let name = check["name"].as_str().context("a health check's name")?;
        ensure!(jobs.iter().any(|j| j == name), "the health check names {name}, not one of the applied examples' jobs {jobs:?}");
    }
    Ok(())
}

/// Collects the paths of `set` that `chart` (the chart's values.yaml) does not have.
fn known_values(set: &Value, chart: &Value, at: &str, unknown: &mut Vec<String>) {
    let Some(set) = set.as_object() else { return };
    for (key, value) in set {
        let path = format!("{at}.{key}");
        match chart.get(key) {
            None => unknown.push(path),
            Some(default) if value.is_object() && default.is_object() => known_values(value, default, &path, unknown),
            Some(_) => {}
        }
    }
}

// --- real objects ---

/// The operator's ceiling is raised, so that a budget is the limit a large job meets.
async fn setup(ctx: &TestContext) -> Result<Operator> {
    manifests::install_crds(&ctx.client).await?;
    Operator::start(&ctx.namespace, &["--termination-grace-seconds", "5", "--max-gpus-per-job", "8"])
}

fn budget(name: &str, max_gpus: i32, gpu_hours: f64) -> TrainingBudget {
    TrainingBudget::test(max_gpus).name(name).gpu_hours(Some(gpu_hours)).build()
}

async fn apply_budget(ctx: &TestContext, budget: &TrainingBudget) -> Result<()> {
    ctx.api::<TrainingBudget>().patch(&budget.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(budget)).await?;
    Ok(())
}

/// A job of `gpus` GPUs in one pod on the fake GPU nodes, under `budget` if given.
fn job(name: &str, gpus: i32, budget: Option<&str>) -> TrainingJob {
    let mut tj = fake_gpu_job(name, gpus, gpus);
    tj.spec.budget.budget_ref = budget.map(Into::into);
    tj
}

/// The object as the API server serves it, as the tools get it.
async fn live<K>(ctx: &TestContext, name: &str) -> Result<Value>
where
    K: kube::Resource<DynamicType = ()>,
{
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ctx.namespace, &ApiResource::erase::<K>(&()));
    Ok(serde_json::to_value(api.get(name).await?)?)
}

/// Checks what the tools make of the live object `name`, and says what they made of it.
async fn reads_live<K>(ctx: &TestContext, name: &str, state: &str, want: Reads) -> Result<()>
where
    K: kube::Resource<DynamicType = ()>,
{
    let object = live::<K>(ctx, name).await?;
    eprintln!("{state}: {}", serde_json::to_string(&object)?);
    check(&object, want).with_context(|| format!("{name} {state}"))
}

async fn job_in(ctx: &TestContext, name: &str, want: Phase, reason: &'static str) -> Result<TrainingJob> {
    job_where(ctx, name, &format!("{name} {want:?} with reason {reason}"), move |tj| {
        phase(tj) == Some(want) && condition(tj, "Ready").is_some_and(|c| c.reason == reason)
    })
    .await
}

async fn budget_exhausted(ctx: &TestContext, name: &str, reason: &'static str) -> Result<()> {
    let api: Api<TrainingBudget> = ctx.api();
    wait::for_object(&api, name, &format!("{name}'s Exhausted condition with reason {reason}"), move |b: Option<&TrainingBudget>| {
        b.and_then(|b| b.status.as_ref()).is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Exhausted" && c.reason == reason))
    })
    .await?;
    Ok(())
}

/// A budget's jobs: one runs and holds its only GPU, one waits for it, one can never fit; the
/// first succeeds; a budget whose GPU-hours a job spends stops it.
#[tokio::test]
async fn real_jobs_under_budgets_read_as_documented() {
    run_ending_pods("gitops-budgets", |ctx| async move {
        let _operator = setup(&ctx).await?;
        apply_budget(&ctx, &budget("team", 1, 100.0)).await?;
        apply_budget(&ctx, &budget("spare", 2, 100.0)).await?;
        budget_exhausted(&ctx, "spare", "WithinLimits").await?;
        reads_live::<TrainingBudget>(&ctx, "spare", "within its limits", reads("Healthy", "WithinLimits:", "Current")).await?;

        apply(&ctx, &job("runs", 1, Some("team"))).await?;
        let pod = running_pods(&ctx, "runs", 1, 1).await?.remove(0);
        job_in(&ctx, "runs", Phase::Running, "Running").await?;
        reads_live::<TrainingJob>(&ctx, "runs", "Running", reads("Healthy", "Running: attempt 1 is running", "Current")).await?;
        budget_exhausted(&ctx, "team", "AllGpusInUse").await?;
        reads_live::<TrainingBudget>(&ctx, "team", "with all its GPUs held", reads("Healthy", "AllGpusInUse: 1 of its 1 GPUs", "Current")).await?;

        apply(&ctx, &job("waits", 1, Some("team"))).await?;
        job_in(&ctx, "waits", Phase::Queued, "BudgetExhausted").await?;
        reads_live::<TrainingJob>(
            &ctx,
            "waits",
            "Queued for its budget's GPUs",
            reads("Suspended", "BudgetExhausted: TrainingBudget \"team\" has 1 of its 1 GPUs", "InProgress"),
        )
        .await?;

        apply(&ctx, &job("huge", 2, Some("team"))).await?;
        job_in(&ctx, "huge", Phase::Failed, "BudgetTooSmall").await?;
        reads_live::<TrainingJob>(&ctx, "huge", "Failed on its spec", reads("Degraded", "BudgetTooSmall: the job needs 2 GPUs", "Failed")).await?;

        finish_pod(&ctx, &pod.name_any()).await?;
        job_in(&ctx, "runs", Phase::Succeeded, "Succeeded").await?;
        reads_live::<TrainingJob>(&ctx, "runs", "Succeeded", reads("Healthy", "Succeeded: attempt 1 completed", "Current")).await?;
        // a finished job's spec edited: it stays done, and says so at the new generation
        let edit = json!({"spec": {"runPolicy": {"backoffLimit": 7}}});
        let edited = ctx.api::<TrainingJob>().patch("runs", &PatchParams::default(), &Patch::Merge(&edit)).await?;
        let generation = edited.metadata.generation;
        job_where(&ctx, "runs", "the finished job's status at its new generation", move |tj| {
            tj.status.as_ref().and_then(|s| s.observed_generation) == generation && phase(tj) == Some(Phase::Succeeded)
        })
        .await?;
        reads_live::<TrainingJob>(&ctx, "runs", "Succeeded, then edited", reads("Healthy", "Succeeded: attempt 1 completed", "Current")).await?;

        // 3.6 GPU-seconds: the job's first bill spends them
        let mut small = budget("small", 1, 0.001);
        small.spec.admission = BudgetAdmission::Spend;
        apply_budget(&ctx, &small).await?;
        apply(&ctx, &job("spender", 1, Some("small"))).await?;
        budget_exhausted(&ctx, "small", "GpuHoursSpent").await?;
        reads_live::<TrainingBudget>(&ctx, "small", "with its GPU-hours spent", reads("Degraded", "GpuHoursSpent: spent", "Current")).await?;
        job_in(&ctx, "spender", Phase::Queued, "BudgetExhausted").await?;
        reads_live::<TrainingJob>(
            &ctx,
            "spender",
            "Queued for its budget's next period",
            reads("Suspended", "BudgetExhausted: TrainingBudget \"small\" has spent", "InProgress"),
        )
        .await?;
        Ok(())
    })
    .await;
}

/// Jobs without a budget: suspended, waiting for their checkpoint claim, failed by their
/// training, training on a non-finite loss; then, the operator stopped, a spec change it has not
/// seen and a job it has never seen.
#[tokio::test]
async fn real_jobs_on_their_own_read_as_documented() {
    run_ending_pods("gitops-jobs", |ctx| async move {
        let mut operator = setup(&ctx).await?;

        let mut paused = job("paused", 1, None);
        paused.spec.run_policy.suspend = true;
        apply(&ctx, &paused).await?;
        job_in(&ctx, "paused", Phase::Suspended, "Suspended").await?;
        reads_live::<TrainingJob>(&ctx, "paused", "Suspended", reads("Suspended", "Suspended: runPolicy.suspend is true", "Current")).await?;

        // two pods share a checkpoint claim, which does not exist yet
        let mut claimless = fake_gpu_job("claimless", 2, 1);
        claimless.spec.checkpoint.claim_name = Some("checkpoints".into());
        apply(&ctx, &claimless).await?;
        job_in(&ctx, "claimless", Phase::Pending, "WaitingForCheckpointClaim").await?;
        reads_live::<TrainingJob>(&ctx, "claimless", "Pending", reads("Progressing", "WaitingForCheckpointClaim:", "InProgress")).await?;

        let mut crashes = job("crashes", 1, None);
        crashes.spec.run_policy.backoff_limit = 0;
        apply(&ctx, &crashes).await?;
        let pod = running_pods(&ctx, "crashes", 1, 1).await?.remove(0);
        let fail = json!({"metadata": {"annotations": {TEST_OUTCOME_ANNOTATION: "Failed"}}});
        ctx.api::<Pod>().patch(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&fail)).await?;
        job_in(&ctx, "crashes", Phase::Failed, "BackoffLimitExceeded").await?;
        reads_live::<TrainingJob>(&ctx, "crashes", "Failed", reads("Degraded", "BackoffLimitExceeded: 1 failed attempts", "Failed")).await?;

        // the trainer reports a loss that is not a number, as it does in its status
        apply(&ctx, &job("diverges", 1, None)).await?;
        running_pods(&ctx, "diverges", 1, 1).await?;
        job_in(&ctx, "diverges", Phase::Running, "Running").await?;
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let nan = json!({"status": {"progress": {"step": 7, "totalSteps": 100, "tokens": 3584, "nonFiniteLossStep": 7, "lastUpdateTime": now}}});
        ctx.api::<TrainingJob>().patch_status("diverges", &PatchParams::default(), &Patch::Merge(&nan)).await?;
        job_where(&ctx, "diverges", "diverges with NonFiniteLoss", |tj| condition(tj, "NonFiniteLoss").is_some_and(|c| c.status == "True")).await?;
        reads_live::<TrainingJob>(
            &ctx,
            "diverges",
            "Running on a non-finite loss",
            reads("Degraded", "NonFiniteLoss: the training loss at step 7", "Current"),
        )
        .await?;

        // with the operator stopped: a spec change it has not seen, a budget's too, and a job
        // it has never seen (kstatus reads a status-less object as Current: docs/gitops.md)
        apply_budget(&ctx, &budget("later", 2, 10.0)).await?;
        budget_exhausted(&ctx, "later", "WithinLimits").await?;
        operator.kill()?;
        let change = json!({"spec": {"runPolicy": {"backoffLimit": 5}}});
        let changed = ctx.api::<TrainingJob>().patch("paused", &PatchParams::default(), &Patch::Merge(&change)).await?;
        ensure!(changed.metadata.generation == Some(2), "generation {:?}", changed.metadata.generation);
        reads_live::<TrainingJob>(
            &ctx,
            "paused",
            "with a spec change not yet seen",
            reads("Progressing", "has not observed generation 2", "InProgress"),
        )
        .await?;
        ctx.api::<TrainingBudget>().patch("later", &PatchParams::default(), &Patch::Merge(&json!({"spec": {"maxGpus": 3}}))).await?;
        reads_live::<TrainingBudget>(
            &ctx,
            "later",
            "with a spec change not yet seen",
            reads("Progressing", "has not observed generation 2", "InProgress"),
        )
        .await?;
        apply(&ctx, &job("unseen", 1, None)).await?;
        reads_live::<TrainingJob>(&ctx, "unseen", "never seen", reads("Progressing", "has not observed generation 1", "Current")).await?;
        Ok(())
    })
    .await;
}
