//! What GitOps tools make of TrainingJobs and TrainingBudgets (docs/gitops.md): Argo CD's health
//! scripts (`gitops/argocd/*.lua`) and kstatus, which Flux's health checks use, both evaluated
//! by `frugal-gitops` (`e2e/cluster/go/gitops`) with the libraries those tools embed. Fixtures
//! of every phase and reason (`e2e/tests/gitops/`) and real objects the operator wrote must read
//! as documented; the Argo CD and Flux configuration files must name what is really here.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::{Api, ResourceExt as _};
use serde::Deserialize;
use serde_json::{Value, json};

use frugal_api::v1alpha1::{BudgetAdmission, DataSource, DataSourceType, Phase, TextFormat, TextSource};
use frugal_api::{TrainingBudget, TrainingJob};
use frugal_e2e::argocd::{self, AppState};
use frugal_e2e::flux::{self, GitServer, Ready};
use frugal_e2e::node;
use frugal_e2e::operator::Operator;
use frugal_e2e::processes::Processes;
use frugal_e2e::training_job::{apply, condition, fake_gpu_job, finish_pod, job_where, phase, real_cpu_job, run_ending_pods, running_pods};
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

// --- Flux, reconciling from Git ---

/// An object as a file in the Git repository: JSON, which is YAML, without a status.
fn manifest<K: serde::Serialize>(object: &K) -> Result<String> {
    let mut value = serde_json::to_value(object)?;
    value.as_object_mut().context("not an object")?.remove("status");
    Ok(serde_json::to_string_pretty(&value)? + "\n")
}

/// Writes `text` to `relative` in `dir`, creating its directory.
fn write(dir: &Path, relative: &str, text: &str) -> Result<()> {
    let path = dir.join(relative);
    std::fs::create_dir_all(path.parent().context("no parent")?)?;
    std::fs::write(path, text)?;
    Ok(())
}

/// A Kustomization of `path` in the served repository, applied into the test's namespace.
fn kustomization(ctx: &TestContext, name: &str, path: &str, extra: Value) -> Value {
    let mut k = json!({
        "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
        "kind": "Kustomization",
        "metadata": {"name": name, "namespace": ctx.namespace},
        "spec": {
            "interval": "10m",
            "retryInterval": "5s",
            "sourceRef": {"kind": "GitRepository", "name": "frugal"},
            "path": path,
            "prune": true,
            "targetNamespace": ctx.namespace,
        },
    });
    for (key, value) in extra.as_object().cloned().unwrap_or_default() {
        k["spec"][key] = value;
    }
    k
}

/// A directory removed when dropped (declared before what runs in it, it is dropped after).
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

/// What a GitOps test starts from: its namespace enforcing Pod Security `restricted`, a scratch
/// directory for `tool`, and an empty Git repository served from it.
async fn repository(ctx: &TestContext, tool: &str) -> Result<(Scratch, GitServer)> {
    node::enforce_restricted(ctx).await?;
    let scratch = Scratch(std::env::temp_dir().join(format!("frugal-e2e-{tool}-{}", ctx.namespace)));
    std::fs::remove_dir_all(&scratch.0).ok();
    std::fs::create_dir_all(&scratch.0)?;
    let git = GitServer::start(&scratch.0)?;
    Ok((scratch, git))
}

/// The repository's first commit, as both GitOps tools reconcile it: the chart as `helm
/// template` renders it for the test's namespace, CRDs included (`operator/`); a budget of one
/// GPU, one fake job holding it and one waiting (`budget/`); a CPU job for the real node
/// (`training/quick.yaml`). The commit's hash.
fn first_commit(ctx: &TestContext, git: &GitServer) -> Result<String> {
    let chart = repo_root().join("charts/frugal");
    let settings = node::chart_settings(ctx);
    let mut args = vec!["template", "frugal", chart.to_str().context("chart path")?, "--namespace", &ctx.namespace, "--include-crds"];
    args.extend(settings.iter().map(String::as_str));
    let rendered = node::helm(&args)?;
    write(git.work(), "operator/frugal.yaml", &rendered)?;
    // a budget of one GPU: one fake job holds it, the other waits
    let team = TrainingBudget::test(1).name("team").build();
    write(git.work(), "budget/team.yaml", &manifest(&team)?)?;
    write(git.work(), "budget/holder.yaml", &manifest(&job("holder", 1, Some("team")))?)?;
    write(git.work(), "budget/waiter.yaml", &manifest(&job("waiter", 1, Some("team")))?)?;
    // a CPU job that trains on the real node
    write(git.work(), "training/quick.yaml", &manifest(&real_cpu_job("quick", 30, None, 1))?)?;
    git.commit("frugal, a budget and a training job")
}

/// Waits until one of the two 1-GPU jobs holds the budget's only GPU and the other waits on it
/// (which is which depends on the order the tool applied them); the waiting one's name.
async fn one_holds_one_waits(ctx: &TestContext) -> Result<&'static str> {
    let api = ctx.api::<TrainingJob>();
    let start = Instant::now();
    loop {
        let (a, b) = (api.get_opt("holder").await?, api.get_opt("waiter").await?);
        let state =
            |tj: &Option<TrainingJob>| tj.as_ref().map(|tj| (phase(tj), condition(tj, "Ready").map(|c| (c.reason.clone(), c.message.clone()))));
        for (runs, waits, name) in [(&a, &b, "waiter"), (&b, &a, "holder")] {
            let running = state(runs).is_some_and(|(p, _)| p == Some(Phase::Running));
            if let Some((Some(Phase::Queued), Some((reason, message)))) = state(waits)
                && running
                && reason == "BudgetExhausted"
            {
                eprintln!("e2e: {name} waits: {message}");
                return Ok(name);
            }
        }
        ensure!(start.elapsed() < frugal_e2e::timeout(), "neither job holds the GPU while the other waits: {:?} {:?}", state(&a), state(&b));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Waits until `waiter` is admitted (its pod created) after the commit `sha` raised the budget.
async fn admitted(ctx: &TestContext, waiter: &str, sha: &str) -> Result<()> {
    let what = format!("{waiter} admitted once the budget is raised");
    let started = job_where(ctx, waiter, &what, |tj| matches!(phase(tj), Some(Phase::Running | Phase::Pending))).await?;
    eprintln!("e2e: after {sha}, {waiter} {:?}", phase(&started));
    Ok(())
}

/// A commit raising the budget to 2 GPUs.
fn raise_budget(git: &GitServer) -> Result<String> {
    write(git.work(), "budget/team.yaml", &manifest(&TrainingBudget::test(2).name("team").build())?)?;
    git.commit("team's budget: 2 GPUs")
}

/// A commit replacing the CPU job with one whose corpus does not exist.
fn break_the_job(git: &GitServer) -> Result<String> {
    std::fs::remove_file(git.work().join("training/quick.yaml"))?;
    let mut broken = real_cpu_job("broken", 30, None, 1);
    broken.spec.data.source = DataSource {
        type_: DataSourceType::Text,
        synthetic: None,
        text: Some(TextSource { path: "/data/no-such-corpus.txt".into(), format: TextFormat::Text, field: None }),
        shards: None,
    };
    write(git.work(), "training/broken.yaml", &manifest(&broken)?)?;
    git.commit("a job whose corpus does not exist")
}

/// A commit adding a job whose spec the API server refuses (dModel 33 over 2 heads).
fn add_a_refused_job(git: &GitServer) -> Result<String> {
    let mut refused = real_cpu_job("refused", 30, None, 1);
    refused.spec.model.custom.as_mut().context("a custom shape")?.d_model = 33;
    write(git.work(), "training/refused.yaml", &manifest(&refused)?)?;
    git.commit("a job the API server refuses")
}

const DIVISIBLE: &str = "model.custom.dModel must be divisible by model.custom.heads";

/// Reads a GitOps tool's object every second (`read`; `None` while it has no state to show)
/// until `done` accepts it, failing with every distinct state seen, and the tool's logs, after
/// `limit`; the distinct states, in order, each logged as `show` writes it.
async fn seen_until<T: Clone + std::fmt::Debug, F: Future<Output = Result<Option<T>>>>(
    tool: &mut Processes,
    what: &str,
    limit: Duration,
    read: impl Fn() -> F,
    same: impl Fn(&T, &T) -> bool,
    show: impl Fn(&T) -> String,
    mut done: impl FnMut(&T) -> bool,
) -> Result<Vec<T>> {
    let start = Instant::now();
    let mut seen: Vec<T> = Vec::new();
    loop {
        tool.running()?;
        if let Some(state) = read().await? {
            if !seen.last().is_some_and(|last| same(last, &state)) {
                eprintln!("e2e: {what} {}", show(&state));
                seen.push(state.clone());
            }
            if done(&state) {
                return Ok(seen);
            }
        }
        ensure!(start.elapsed() < limit, "{what} after {limit:?}: {seen:#?}\n{}", tool.log_tail(40));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// [`seen_until`] for the Ready condition of the Flux object `kind`/`name`.
async fn flux_until(
    ctx: &TestContext,
    flux: &mut Processes,
    kind: &str,
    name: &str,
    limit: Duration,
    done: impl FnMut(&Ready) -> bool,
) -> Result<Vec<Ready>> {
    let show = |r: &Ready| format!("Ready={} {}: {} (applied {}, attempted {})", r.status, r.reason, r.message, r.revision, r.attempted);
    seen_until(flux, &format!("{kind} {name}"), limit, || flux::ready(ctx, kind, name), Ready::same, show, done).await
}

/// Flux as users run it: its source-controller clones a Git repository (served on loopback) that
/// holds the chart, rendered by `helm template` (Flux's helm-controller does not build here), a
/// budget with two GPU jobs, and a CPU TrainingJob. Its kustomize-controller applies the chart
/// and waits for the operator's Deployment; then the training Kustomization, whose health check
/// asks for a Succeeded TrainingJob (`healthCheckExprs`, as docs/gitops.md shows), is Ready only
/// once the job has trained on the real node and Succeeded. A commit raising the budget lets the
/// job that waited on it start; a commit whose job fails turns the Kustomization not Ready,
/// naming the job.
#[tokio::test]
async fn flux_reconciles_the_chart_and_a_training_job_from_git() {
    if !node::available("flux") {
        return;
    }
    run_ending_pods("flux", |ctx| async move {
        let (scratch, git) = repository(&ctx, "flux").await?;
        let mut flux = flux::start(&ctx, &scratch.0).await?;

        let first = first_commit(&ctx, &git)?;

        flux::apply(
            &ctx,
            &json!({
                "apiVersion": "source.toolkit.fluxcd.io/v1",
                "kind": "GitRepository",
                "metadata": {"name": "frugal", "namespace": ctx.namespace},
                "spec": {"interval": "5s", "url": git.url(), "ref": {"branch": "main"}},
            }),
        )
        .await?;
        flux::apply(&ctx, &kustomization(&ctx, "operator", "./operator", json!({"wait": true, "timeout": "4m"}))).await?;
        let after_operator = json!({"dependsOn": [{"name": "operator"}]});
        flux::apply(&ctx, &kustomization(&ctx, "budget", "./budget", after_operator.clone())).await?;
        let mut training = after_operator.clone();
        training["wait"] = json!(true);
        training["timeout"] = json!("5m");
        // the TrainingJob is healthy when it has Succeeded, and failed when it has Failed
        training["healthCheckExprs"] = json!([{
            "apiVersion": "frugal.dev/v1alpha1",
            "kind": "TrainingJob",
            "current": "status.phase == 'Succeeded'",
            "failed": "status.phase == 'Failed'",
        }]);
        flux::apply(&ctx, &kustomization(&ctx, "training", "./training", training)).await?;

        let source = flux_until(&ctx, &mut flux, "GitRepository", "frugal", wait_limit(), |r| r.status == "True").await?;
        let fetched = &source.last().context("no condition")?.revision;
        ensure!(fetched.ends_with(&first), "the GitRepository fetched {fetched}, the commit was {first}");
        let operator = flux_until(&ctx, &mut flux, "Kustomization", "operator", Duration::from_secs(300), |r| r.status == "True").await?;
        ensure!(operator.last().unwrap().revision.ends_with(&first), "operator applied {:?}", operator.last());
        let pods = ctx.api::<Pod>().list(&kube::api::ListParams::default().labels("app.kubernetes.io/instance=frugal")).await?.items;
        let pod = pods.first().context("Flux applied the chart, but no operator pod exists")?;
        ensure!(pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"), "operator {}", node::describe(pod));
        eprintln!("e2e: Flux applied the chart; operator {}", node::describe(pod));

        // Ready only once the job has Succeeded: read the Kustomization, then the job (a
        // Succeeded job stays Succeeded, so a Ready Kustomization read first must see it)
        let api = ctx.api::<TrainingJob>();
        let start = Instant::now();
        let (mut waited_while_running, mut seen) = (false, Vec::<Ready>::new());
        loop {
            flux.running()?;
            let ready = flux::ready(&ctx, "Kustomization", "training").await?;
            let job_phase = api.get_opt("quick").await?.as_ref().and_then(phase);
            if let Some(r) = &ready {
                if !seen.last().is_some_and(|last| last.same(r)) {
                    eprintln!("e2e: Kustomization training Ready={} {}: {} (job {job_phase:?})", r.status, r.reason, r.message);
                    seen.push(r.clone());
                }
                if r.status == "True" {
                    ensure!(job_phase == Some(Phase::Succeeded), "training is Ready while its job is {job_phase:?}");
                    ensure!(r.revision.ends_with(&first), "training applied {}", r.revision);
                    break;
                }
            }
            waited_while_running |= job_phase == Some(Phase::Running) && ready.is_some();
            ensure!(job_phase != Some(Phase::Failed), "quick Failed: {:?}", api.get("quick").await?.status);
            ensure!(start.elapsed() < node::TRAINING, "training not Ready after {:?}: {seen:#?}\n{}", node::TRAINING, flux.log_tail(40));
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        ensure!(waited_while_running, "the Kustomization was never seen waiting while the job ran: {seen:#?}");
        let pods = node::attempt_pods(&ctx, "quick", 1).await?;
        ensure!(pods.iter().all(|p| node::placement(p).1.starts_with("containerd://")), "quick's pods did not run in containers");
        eprintln!("e2e: training Ready after {:?}, its job Succeeded", start.elapsed());

        // the budget: one job holds its GPU, the other waits; a commit raising it lets it start
        let waiter = one_holds_one_waits(&ctx).await?;
        let second = raise_budget(&git)?;
        flux_until(&ctx, &mut flux, "Kustomization", "budget", wait_limit(), |r| r.status == "True" && r.revision.ends_with(&second)).await?;
        admitted(&ctx, waiter, &second).await?;

        // a commit whose job fails: the Kustomization turns not Ready, naming it
        let third = break_the_job(&git)?;
        // (a failed health check leaves lastAppliedRevision where it was: the new commit is the
        // one attempted)
        let failing =
            flux_until(&ctx, &mut flux, "Kustomization", "training", node::TRAINING, |r| r.status == "False" && r.attempted.ends_with(&third))
                .await?;
        let said = failing.last().context("no condition")?;
        let job = api.get("broken").await?;
        ensure!(phase(&job) == Some(Phase::Failed), "broken is {:?}", phase(&job));
        let why = job.status.iter().flat_map(|s| &s.conditions).find(|c| c.type_ == "Ready").map(|c| c.message.clone()).unwrap_or_default();
        eprintln!("e2e: broken's condition: {why}");
        ensure!(said.reason == "HealthCheckFailed" && said.message.contains("TrainingJob/") && said.message.contains("broken"), "{said:?}");
        ensure!(api.get_opt("quick").await?.is_none(), "quick was not pruned when the commit removed it");

        // a commit whose job the API server refuses: Flux says so in the API server's words
        let fourth = add_a_refused_job(&git)?;
        let rejected =
            flux_until(&ctx, &mut flux, "Kustomization", "training", wait_limit(), |r| r.status == "False" && r.attempted.ends_with(&fourth)).await?;
        let said = rejected.last().context("no condition")?;
        ensure!(said.reason == "ReconciliationFailed" && said.message.contains("refused") && said.message.contains(DIVISIBLE), "{said:?}");
        ensure!(api.get_opt("refused").await?.is_none(), "the refused job exists");
        Ok(())
    })
    .await;
}

fn wait_limit() -> Duration {
    Duration::from_secs(120)
}

// --- Argo CD, syncing from Git ---

/// An Application of `path` in the served repository, synced automatically into the test's
/// namespace (server-side apply, as the chart's TrainingJob CRD is too large for the
/// last-applied annotation; retried while a dependency such as the CRDs is not there yet). Its
/// diff is the API server's too (`ServerSideDiff=true`): Argo CD's own schema is Kubernetes
/// 1.31's, and a diff against it fails on what newer servers write (a Deployment's
/// `status.terminatingReplicas`, a ComparisonError and sync status Unknown).
fn application(ctx: &TestContext, repo: &str, name: &str, path: &str) -> Value {
    json!({
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Application",
        "metadata": {
            "name": name,
            "namespace": ctx.namespace,
            "annotations": {"argocd.argoproj.io/compare-options": "ServerSideDiff=true"},
        },
        "spec": {
            "project": "default",
            "source": {"repoURL": repo, "targetRevision": "main", "path": path},
            "destination": {"server": "https://kubernetes.default.svc", "namespace": ctx.namespace},
            "syncPolicy": {
                "automated": {"prune": true, "selfHeal": true},
                "syncOptions": ["ServerSideApply=true"],
                "retry": {"limit": 20, "backoff": {"duration": "5s", "factor": 1, "maxDuration": "5s"}},
            },
        },
    })
}

/// [`seen_until`] for the Application `name`.
async fn app_until(
    ctx: &TestContext,
    argo: &mut Processes,
    name: &str,
    limit: Duration,
    done: impl FnMut(&AppState) -> bool,
) -> Result<Vec<AppState>> {
    let show = |s: &AppState| {
        format!(
            "{} {} at {:.12}, operation {} {:?}, resources {:?}, conditions {:?}, not synced {:?}",
            s.sync, s.health, s.revision, s.operation, s.operation_message, s.resources, s.conditions, s.unsynced
        )
    };
    let read = || async move { argocd::app(ctx, name).await.map(Some) };
    seen_until(argo, &format!("Application {name}"), limit, read, AppState::eq, show, done).await
}

/// The health Argo CD gave the resource `kind/name` of a state, with its message.
fn health_of<'a>(state: &'a AppState, resource: &str) -> Option<(&'a str, &'a str)> {
    state.resources.iter().find(|(r, _, _)| r == resource).map(|(_, h, m)| (h.as_str(), m.as_str()))
}

/// Argo CD as users run it: its application controller and repo-server sync the same repository
/// as the Flux test (the rendered chart, a budget with two GPU jobs, a CPU job) into the cluster,
/// with frugal's health checks from `gitops/argocd/argocd-cm.yaml` in its settings. The chart's
/// Application is Healthy once the operator runs; the job's is Progressing while the job waits
/// for its pod and Healthy while it trains and once it has Succeeded (the documented semantics of
/// the Lua script); a budget commit lets the waiting job start; a failing job makes the
/// Application Degraded with the job's own condition message; a refused spec fails the sync
/// with the API server's words.
#[tokio::test]
async fn argo_cd_syncs_the_chart_and_a_training_job_from_git() {
    if !node::available("argocd") {
        return;
    }
    run_ending_pods("argocd", |ctx| async move {
        let (scratch, git) = repository(&ctx, "argocd").await?;
        let mut argo = argocd::start(&ctx, &scratch.0).await?;
        let first = first_commit(&ctx, &git)?;
        for (name, path) in [("operator", "operator"), ("budget", "budget"), ("training", "training")] {
            argocd::apply_object(&ctx, &application(&ctx, &git.url(), name, path)).await?;
        }
        let synced_at = |sha: &str| {
            let sha = sha.to_string();
            move |s: &AppState| s.sync == "Synced" && s.revision == sha
        };
        let healthy_at = |sha: &str| {
            let sha = sha.to_string();
            move |s: &AppState| s.sync == "Synced" && s.revision == sha && s.health == "Healthy"
        };
        app_until(&ctx, &mut argo, "operator", Duration::from_secs(300), healthy_at(&first)).await?;
        let pods = ctx.api::<Pod>().list(&kube::api::ListParams::default().labels("app.kubernetes.io/instance=frugal")).await?.items;
        let pod = pods.first().context("Argo CD synced the chart, but no operator pod exists")?;
        ensure!(pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"), "operator {}", node::describe(pod));
        eprintln!("e2e: Argo CD synced the chart; operator {}", node::describe(pod));

        // the job's health as the Lua script reads it, until the job has Succeeded: Argo CD is
        // read first, then the job, so a Healthy read must find the job running or done (a job
        // ahead of Argo CD's cache may be read Progressing a moment longer)
        let api = ctx.api::<TrainingJob>();
        let start = Instant::now();
        let mut healths: Vec<(String, String, Option<Phase>)> = Vec::new();
        loop {
            argo.running()?;
            let state = argocd::app(&ctx, "training").await?;
            let job_phase = api.get_opt("quick").await?.as_ref().and_then(phase);
            if let Some((health, message)) = health_of(&state, "TrainingJob/quick")
                && healths.last().map(|(h, m, p)| (h.as_str(), m.as_str(), *p)) != Some((health, message, job_phase))
            {
                eprintln!("e2e: Application training: TrainingJob/quick {health} ({message}), job {job_phase:?}, app {}", state.health);
                // a job that ran does not read Pending again on its way to Succeeded (it did, for
                // the moment between its trainer's exit and the kubelet reporting the pod done)
                if job_phase == Some(Phase::Pending) && healths.iter().any(|(_, _, p)| *p == Some(Phase::Running)) {
                    let jobs = ctx.api::<k8s_openapi::api::batch::v1::Job>().list(&Default::default()).await?.items;
                    let statuses: Vec<String> =
                        jobs.iter().map(|j| format!("{}: {}", j.name_any(), serde_json::to_string(&j.status).unwrap_or_default())).collect();
                    bail!("quick went back from Running to Pending ({message}); its Jobs: {statuses:?}");
                }
                healths.push((health.to_string(), message.to_string(), job_phase));
                let running = matches!(job_phase, Some(Phase::Running | Phase::Succeeded));
                ensure!(health != "Healthy" || running, "Argo CD read quick Healthy while it was {job_phase:?}");
                // the documented table: Running and Succeeded are Healthy, what waits Progressing
                // (Missing: not applied yet)
                let want = match message {
                    _ if health == "Missing" => "Missing",
                    m if m.starts_with("Running:") || m.starts_with("Succeeded:") => "Healthy",
                    _ => "Progressing",
                };
                ensure!(health == want, "Argo CD read quick {health} with the message {message:?}");
            }
            if job_phase == Some(Phase::Succeeded) && state.health == "Healthy" {
                break;
            }
            ensure!(job_phase != Some(Phase::Failed), "quick Failed: {:?}", api.get("quick").await?.status);
            ensure!(start.elapsed() < node::TRAINING, "training after {:?}: {healths:?}\n{}", node::TRAINING, argo.log_tail(40));
            tokio::time::sleep(Duration::from_secs(1)).await;
        }

        // the budget
        let waiter = one_holds_one_waits(&ctx).await?;
        let state = argocd::app(&ctx, "budget").await?;
        let waiting = health_of(&state, &format!("TrainingJob/{waiter}"));
        eprintln!("e2e: Application budget: TrainingJob/{waiter} {waiting:?}");
        let second = raise_budget(&git)?;
        app_until(&ctx, &mut argo, "budget", wait_limit(), synced_at(&second)).await?;
        admitted(&ctx, waiter, &second).await?;

        // a job that fails: Degraded, in the job's own words
        let third = break_the_job(&git)?;
        let seen = app_until(&ctx, &mut argo, "training", node::TRAINING, |s| {
            s.revision == third && s.health == "Degraded" && health_of(s, "TrainingJob/broken").is_some_and(|(h, _)| h == "Degraded")
        })
        .await?;
        let (_, message) = health_of(seen.last().unwrap(), "TrainingJob/broken").unwrap();
        let job = api.get("broken").await?;
        let why = condition(&job, "Ready").map(|c| c.message.clone()).unwrap_or_default();
        ensure!(message.contains(&why) && why.contains("data.source.text.path"), "Argo CD says {message:?}, the job {why:?}");
        ensure!(api.get_opt("quick").await?.is_none(), "quick was not pruned when the commit removed it");

        // a job the API server refuses: the sync fails, quoting it
        let fourth = add_a_refused_job(&git)?;
        let seen = app_until(&ctx, &mut argo, "training", wait_limit(), |s| s.revision == fourth && s.operation_message.contains(DIVISIBLE)).await?;
        eprintln!("e2e: the refused job's sync: {} {}", seen.last().unwrap().operation, seen.last().unwrap().operation_message);
        ensure!(api.get_opt("refused").await?.is_none(), "the refused job exists");
        Ok(())
    })
    .await;
}
