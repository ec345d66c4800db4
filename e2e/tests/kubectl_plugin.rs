//! `kubectl frugal` against the test cluster: the built `kubectl-frugal` binary, and the same
//! through kubectl's plugin lookup (`kubectl frugal ...` with the binary's directory on PATH), on
//! statuses the operator wrote for jobs it ran: a CPU job trained for real in a container on the
//! real node to Succeeded with its quality figures, and fake-GPU jobs on kwok's nodes under a TrainingBudget,
//! one holding it and one waiting for it. `report` rows and the baseline's ratios are checked
//! against the statuses, `budget` against the ledger, and `plan` exits 1 naming the reason for a
//! job its budget is too small for or whose memory does not fit, 0 for one that fits.
//!
//! kubectl's flags as kubectl means them: `--kubeconfig` and `--context` picking a second
//! kubeconfig's context (and its namespace), `--as`/`--as-group` impersonating a user the
//! cluster's RBAC lets read TrainingJobs and one it does not, `-o name|yaml|wide`, `describe`
//! and `logs` of jobs the operator has not run. And `logs -f` following a two-stage CPU job on the
//! real node: both stages' lines, prefixed, as they are written, until the job ends.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, Result, bail, ensure};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, ResourceExt as _};

use frugal_api::contract::pods::INDEX_ANNOTATION;
use frugal_api::report::seeds::EXPERIMENT_LABEL;
use frugal_api::v1alpha1::{EvalSet, EvalSetType, Phase, QualityMetric, QualityTarget};
use frugal_api::{TrainingBudget, TrainingJob};
use frugal_e2e::node::{self, TRAINING};
use frugal_e2e::operator::Operator;
use frugal_e2e::training_job::{apply, condition, fake_gpu_job, finish_pod, finished_within, job_where, phase, real_cpu_job, run_ending_pods};
use frugal_e2e::{FIELD_MANAGER, TestContext, manifests, wait};

/// The plugin: `FRUGAL_KUBECTL_FRUGAL_BIN`, else the one `cargo build -p kubectl-frugal` put
/// beside this test binary's profile directory.
fn plugin() -> Result<PathBuf> {
    if let Ok(path) = std::env::var("FRUGAL_KUBECTL_FRUGAL_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    let path = exe.parent().and_then(|deps| deps.parent()).map(|profile| profile.join("kubectl-frugal")).context("locating the target directory")?;
    ensure!(path.exists(), "{} does not exist: run `cargo build -p kubectl-frugal` first, or set FRUGAL_KUBECTL_FRUGAL_BIN", path.display());
    Ok(path)
}

/// What a command printed and how it exited.
struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn of(what: &str, output: Output) -> Self {
        let ran = Self {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into(),
            stderr: String::from_utf8_lossy(&output.stderr).into(),
        };
        // the output as the docs show it
        eprintln!("$ {what}  # exit {}\n{}{}", ran.code, ran.stdout, ran.stderr);
        ran
    }
}

/// `kubectl-frugal <args> -n <namespace>`.
async fn kubectl_frugal(ctx: &TestContext, args: &[&str]) -> Result<Ran> {
    let output = tokio::process::Command::new(plugin()?).args(args).args(["-n", &ctx.namespace]).output().await?;
    Ok(Ran::of(&format!("kubectl-frugal {}", args.join(" ")), output))
}

/// `kubectl-frugal <args>` with `env` set: no namespace given, the kubeconfig's context says it.
async fn plugin_with(args: &[&str], env: &[(&str, &Path)]) -> Result<Ran> {
    let mut command = tokio::process::Command::new(plugin()?);
    command.args(args);
    for (key, value) in env {
        command.env(key, value);
    }
    let shown: Vec<String> = env.iter().map(|(k, v)| format!("{k}={}", v.display())).collect();
    Ok(Ran::of(&format!("{} kubectl-frugal {}", shown.join(" "), args.join(" ")), command.output().await?))
}

/// `kubectl frugal <args> -n <namespace>`, kubectl finding the plugin on PATH.
async fn through_kubectl(ctx: &TestContext, args: &[&str]) -> Result<Ran> {
    let dir = plugin()?.parent().context("the plugin's directory")?.to_path_buf();
    let path = std::env::join_paths(std::iter::once(dir).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())))?;
    let output = tokio::process::Command::new("kubectl").arg("frugal").args(args).args(["-n", &ctx.namespace]).env("PATH", path).output().await?;
    Ok(Ran::of(&format!("kubectl frugal {}", args.join(" ")), output))
}

fn training_budget(name: &str, max_gpus: i32) -> TrainingBudget {
    TrainingBudget::test(max_gpus).name(name).build()
}

/// A fake-GPU job of `gpus` GPUs in one pod, counted in `budget`.
fn gpu_job(name: &str, gpus: i32, budget: &str) -> TrainingJob {
    let mut tj = fake_gpu_job(name, gpus, gpus);
    tj.spec.budget.budget_ref = Some(budget.into());
    tj
}

/// A manifest file for `plan`, written in `dir`.
fn manifest(dir: &Path, name: &str, yaml: &str) -> Result<String> {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, format!("apiVersion: frugal.dev/v1alpha1\nkind: TrainingJob\nmetadata: {{name: {name}}}\nspec:\n{yaml}"))?;
    Ok(path.display().to_string())
}

const SMALL_MODEL: &str = "  model: {type: Custom, custom: {layers: 8, dModel: 64, heads: 4, seqLen: 32}}\n  data: {source: {type: Synthetic}}\n";

async fn running_pod(ctx: &TestContext, job: &str) -> Result<Pod> {
    let selector = format!("frugal.dev/training-job={job},frugal.dev/attempt=1");
    wait::for_any(&ctx.api::<Pod>(), watcher::Config::default().labels(&selector), &format!("the pod of {job} Running"), |p| {
        frugal_e2e::fixtures::phase(p) == "Running"
    })
    .await
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

#[tokio::test]
async fn kubectl_frugal_plans_reports_and_shows_budgets() {
    if !frugal_e2e::node::available("kubectl-plugin") {
        return;
    }
    run_ending_pods("kubectl-plugin", |ctx| async move {
        manifests::install_crds(&ctx.client).await?;
        let _operator = Operator::start(&ctx.namespace, &["--termination-grace-seconds", "5", "--max-gpus-per-job", "8"])?;
        let budgets: Api<TrainingBudget> = ctx.api();
        budgets.patch("team", &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&training_budget("team", 4))).await?;

        // a CPU job trained in a container on the real node, evaluated on a cloze set at its end
        let mut cpu = real_cpu_job("cpu", 30, None, 1);
        cpu.spec.data.eval_sets = vec![EvalSet { name: "cloze".into(), type_: EvalSetType::Cloze, path: None, max_examples: Some(16) }];
        // a target its evaluation reaches (a byte-level model starts near 8 bits per byte), so
        // that the status carries the tokens to it; the seed of an experiment by its label
        cpu.spec.data.quality_target = Some(QualityTarget { metric: QualityMetric::BitsPerByte, value: 20.0 });
        cpu.metadata.labels = Some([(EXPERIMENT_LABEL.to_string(), "small".to_string())].into());
        apply(&ctx, &cpu).await?;
        // one fake-GPU job holds the budget's 4 GPUs, the next waits for them
        apply(&ctx, &gpu_job("first", 4, "team")).await?;
        let first_pod = running_pod(&ctx, "first").await?;
        apply(&ctx, &gpu_job("second", 4, "team")).await?;
        job_where(&ctx, "second", "second Queued with reason BudgetExhausted", |tj| {
            phase(tj) == Some(Phase::Queued) && condition(tj, "Queued").is_some_and(|c| c.reason == "BudgetExhausted")
        })
        .await?;
        wait::for_object(&budgets, "team", "team's ledger holding first", |b: Option<&TrainingBudget>| {
            b.and_then(|b| b.status.as_ref()).is_some_and(|s| s.jobs.iter().any(|h| h.name == "first"))
        })
        .await?;

        // budget: the holder, the waiter and why
        let out = kubectl_frugal(&ctx, &["budget"]).await?;
        ensure!(out.code == 0, "budget exited {}: {}", out.code, out.stderr);
        ensure!(out.stdout.starts_with(&format!("TrainingBudget {}/team\n", ctx.namespace)), "{}", out.stdout);
        ensure!(out.stdout.contains("  GPUs       4 of 4 in use\n"), "{}", out.stdout);
        ensure!(out.stdout.contains("    first  4     "), "no holder line: {}", out.stdout);
        ensure!(
            out.stdout.contains("    second (4 GPUs): BudgetExhausted: TrainingBudget \"team\" has 4 of its 4 GPUs (spec.maxGpus) held by first (4)"),
            "no waiter line: {}",
            out.stdout
        );
        let json = through_kubectl(&ctx, &["budget", "-o", "json"]).await?;
        ensure!(json.code == 0, "kubectl frugal budget exited {}: {}", json.code, json.stderr);
        let ledgers: serde_json::Value = serde_json::from_str(&json.stdout)?;
        let team = &ledgers[0];
        ensure!(team["holders"][0]["name"] == "first" && team["holders"][0]["gpus"] == 4, "{team}");
        ensure!(team["waiting"][0]["name"] == "second" && team["waiting"][0]["reason"] == "BudgetExhausted", "{team}");
        ensure!(team["exhausted"]["reason"] == "AllGpusInUse" && team["gpusInUse"] == 4, "{team}");

        // plan: refused by the budget, by memory and by the CRD's rules; admitted, or admitted to wait
        let dir = std::env::temp_dir().join(format!("kubectl-plugin-{}", ctx.namespace));
        std::fs::create_dir_all(&dir)?;
        let resources = "  resources: {nodeSelector: {type: kwok}}\n";
        let huge = manifest(&dir, "huge", &format!("{SMALL_MODEL}  parallelism: {{pipelineStages: 8, gpusPerPod: 4, microBatches: 8}}\n  training: {{batchSize: 16}}\n  budget: {{budgetRef: team}}\n{resources}"))?;
        let out = kubectl_frugal(&ctx, &["plan", &huge]).await?;
        ensure!(out.code == 1, "a job its budget is too small for: exit {}\n{}{}", out.code, out.stdout, out.stderr);
        ensure!(
            out.stdout.contains("refused: BudgetTooSmall (TrainingBudget): the job needs 8 GPUs, above the spec.maxGpus of 4 of TrainingBudget \"team\""),
            "{}",
            out.stdout
        );
        let big = manifest(
            &dir,
            "big",
            "  model: {type: Custom, custom: {layers: 48, dModel: 8192, heads: 64, seqLen: 4096}}\n  data: {source: {type: Synthetic}}\n  resources: {gpuType: nvidia-t4-16gb}\n",
        )?;
        let out = through_kubectl(&ctx, &["plan", &big]).await?;
        ensure!(out.code == 1, "a job whose memory does not fit: exit {}\n{}{}", out.code, out.stdout, out.stderr);
        ensure!(out.stdout.contains("refused: GpuMemoryExceeded (GPU memory): planned memory of"), "{}", out.stdout);
        ensure!(out.stdout.contains("set spec.training.activationCheckpointing: true"), "{}", out.stdout);
        let invalid = manifest(&dir, "invalid", &format!("{SMALL_MODEL}  budget: {{maxGpus: 0}}\n{resources}"))?;
        let out = kubectl_frugal(&ctx, &["plan", &invalid]).await?;
        ensure!(out.code == 1, "a job the CRD's rules refuse: exit {}\n{}{}", out.code, out.stdout, out.stderr);
        ensure!(out.stdout.contains("(API server)") && out.stdout.contains("budget.maxGpus must be at least 1"), "{}", out.stdout);
        let unknown = manifest(&dir, "unknown", &format!("{SMALL_MODEL}  resources: {{nodeSelector: {{type: kwok}}, env: []}}\n"))?;
        let out = kubectl_frugal(&ctx, &["plan", &unknown]).await?;
        ensure!(out.code == 1, "a field the CRD does not have: exit {}\n{}{}", out.code, out.stdout, out.stderr);
        ensure!(out.stdout.contains(".spec.resources.env: field not declared in schema"), "{}", out.stdout);
        let fits = manifest(&dir, "fits", &format!("{SMALL_MODEL}{resources}"))?;
        let out = kubectl_frugal(&ctx, &["plan", &fits]).await?;
        ensure!(out.code == 0, "a job that fits: exit {}\n{}{}", out.code, out.stdout, out.stderr);
        ensure!(out.stdout.ends_with("\nadmitted\n"), "{}", out.stdout);
        // the checkpoint store, with the job's keys: a Secret that is not there, then one whose
        // store does not answer (nothing listens on port 9)
        let store = "  checkpoint: {store: {uri: 's3://lm-checkpoints/team', endpoint: 'http://127.0.0.1:9', credentialsSecret: store-keys}}\n";
        let stored = manifest(&dir, "stored", &format!("{SMALL_MODEL}{store}{resources}"))?;
        let out = kubectl_frugal(&ctx, &["plan", &stored]).await?;
        ensure!(out.code == 1 && out.stdout.contains("Secret store-keys, which") && out.stdout.contains("create it with AWS_ACCESS_KEY_ID"), "{}", out.stdout);
        let keys = k8s_openapi::api::core::v1::Secret {
            metadata: ObjectMeta { name: Some("store-keys".into()), ..Default::default() },
            string_data: Some([("AWS_ACCESS_KEY_ID".to_string(), "plan-test".to_string()), ("AWS_SECRET_ACCESS_KEY".to_string(), "plan-test-secret".to_string())].into()),
            ..Default::default()
        };
        ctx.api::<k8s_openapi::api::core::v1::Secret>().create(&PostParams::default(), &keys).await?;
        let out = kubectl_frugal(&ctx, &["plan", &stored]).await?;
        ensure!(out.code == 1, "a store that does not answer: exit {}\n{}{}", out.code, out.stdout, out.stderr);
        for part in ["ConfigurationError (checkpoint store)", "spec.checkpoint.store (s3://lm-checkpoints/team)", "keys of Secret store-keys"] {
            ensure!(out.stdout.contains(part), "the plan does not say {part:?}:\n{}", out.stdout);
        }
        ensure!(!out.stdout.contains("plan-test-secret"), "the plan shows the Secret's key:\n{}", out.stdout);
        let waits = manifest(&dir, "waits", &format!("{SMALL_MODEL}  budget: {{budgetRef: team}}\n{resources}"))?;
        let out = through_kubectl(&ctx, &["plan", &waits, "-o", "json"]).await?;
        ensure!(out.code == 0, "a job that fits but waits: exit {}\n{}{}", out.code, out.stdout, out.stderr);
        let planned: serde_json::Value = serde_json::from_str(&out.stdout)?;
        let budget_check = planned["checks"].as_array().and_then(|c| c.iter().find(|c| c["check"] == "TrainingBudget").cloned()).unwrap_or_default();
        ensure!(budget_check["outcome"] == "note" && budget_check["reason"] == "BudgetExhausted", "{planned}");
        ensure!(planned["refused"] == false && planned["plan"]["gpus"] == 1, "{planned}");
        let fetched: Api<TrainingJob> = ctx.api();
        ensure!(fetched.get_opt("fits").await?.is_none(), "plan applied the job: a dry run creates nothing");

        // the CPU job trains to the end; the first job's pod ends and the second starts
        let cpu = finished_within(&ctx, "cpu", Duration::from_secs(300)).await?;
        ensure!(phase(&cpu) == Some(Phase::Succeeded), "the CPU job ended {:?}", cpu.status);
        ensure!(cpu.status.as_ref().and_then(|s| s.quality.as_ref()).is_some_and(|q| q.perplexity.is_some()), "no quality: {:?}", cpu.status);
        finish_pod(&ctx, &first_pod.name_any()).await?;
        job_where(&ctx, "first", "first Succeeded", |tj| phase(tj) == Some(Phase::Succeeded)).await?;
        job_where(&ctx, "second", "second Running", |tj| phase(tj) == Some(Phase::Running)).await?;

        // report: rows from the statuses, and the ratios against the baseline
        let out = kubectl_frugal(&ctx, &["report", "--baseline", "first", "-o", "json"]).await?;
        ensure!(out.code == 0, "report exited {}: {}", out.code, out.stderr);
        let rows: serde_json::Value = serde_json::from_str(&out.stdout)?;
        let jobs = fetched.list(&ListParams::default()).await?.items;
        check_rows(&rows, &jobs)?;
        let text = through_kubectl(&ctx, &["report", "--baseline", "first"]).await?;
        ensure!(text.code == 0, "kubectl frugal report exited {}: {}", text.code, text.stderr);
        ensure!(text.stdout.starts_with("job     phase      model"), "{}", text.stdout);
        let (_, against) = text.stdout.split_once("\nagainst first:\n").with_context(|| format!("no ratios table:\n{}", text.stdout))?;
        let header: Vec<&str> = against.lines().next().unwrap_or_default().split_whitespace().collect();
        ensure!(header == ["job", "FLOPs", "GPU-h", "cost", "params", "active", "ppl", "bits/byte", "Δ", "zero-shot", "Δ"], "{against}");
        let itself: Vec<&str> = against.lines().find(|l| l.starts_with("first ")).unwrap_or_default().split_whitespace().collect();
        ensure!(itself == ["first", "1.00×", "1.00×", "1.00×", "1.00×", "1.00×", "-", "-", "-"], "first against itself: {itself:?}");
        let csv = kubectl_frugal(&ctx, &["report", "-o", "csv"]).await?;
        ensure!(csv.stdout.lines().count() == 1 + jobs.len() && csv.stdout.lines().next().unwrap_or_default().ends_with(",phase"), "{}", csv.stdout);
        let markdown = kubectl_frugal(&ctx, &["report", "-o", "markdown"]).await?;
        ensure!(markdown.stdout.starts_with("| job | phase | model |"), "{}", markdown.stdout);

        // --seeds: one row per experiment, the FLOPs to the target from the trainer's tokens
        let out = kubectl_frugal(&ctx, &["report", "--seeds", "-o", "json"]).await?;
        ensure!(out.code == 0, "report --seeds exited {}: {}", out.code, out.stderr);
        let groups: serde_json::Value = serde_json::from_str(&out.stdout)?;
        let names: Vec<&str> = groups.as_array().into_iter().flatten().filter_map(|g| g["job"].as_str()).collect();
        ensure!(names.len() == 3 && names.contains(&"small") && !names.contains(&"cpu"), "the CPU job is reported as its experiment: {names:?}");
        let small = groups.as_array().into_iter().flatten().find(|g| g["job"] == "small").context("the experiment small")?;
        let s = cpu.status.as_ref().context("the CPU job's status")?;
        let tokens = s.quality.as_ref().and_then(|q| q.tokens_to_target).context("the trainer set quality.tokensToTarget")?;
        let trained = s.progress.as_ref().map_or(0, |p| p.tokens);
        ensure!(tokens > 0 && tokens <= trained, "tokens to the target {tokens}, trained {trained}");
        let flops = s.plan.as_ref().context("a plan")?.flops_per_token * tokens as f64;
        ensure!(small["seeds"] == serde_json::json!([cpu.spec.training.seed]) && small["withTarget"] == 1 && small["reached"] == 1, "{small}");
        ensure!(small["flopsToTarget"]["mean"].as_f64().is_some_and(|f| close(f, flops)), "FLOPs to target {} against {flops}", small["flopsToTarget"]);
        let text = kubectl_frugal(&ctx, &["report", "--seeds", "--baseline", "small"]).await?;
        ensure!(text.code == 0 && text.stdout.contains("FLOPs to target ÷ baseline"), "{}{}", text.stdout, text.stderr);

        // errors name what to fix
        let missing = kubectl_frugal(&ctx, &["report", "--baseline", "nope"]).await?;
        ensure!(missing.code == 2 && missing.stderr.contains("--baseline \"nope\": no TrainingJob of that name in namespace"), "{}", missing.stderr);
        let no_config = tokio::process::Command::new(plugin()?)
            .args(["report"])
            .env("KUBECONFIG", dir.join("no-such-kubeconfig"))
            .env("HOME", &dir)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .output()
            .await?;
        let no_config = Ran::of("KUBECONFIG=missing kubectl-frugal report", no_config);
        ensure!(no_config.code == 2 && no_config.stderr.contains("point KUBECONFIG at a kubeconfig"), "{}", no_config.stderr);
        std::fs::remove_dir_all(&dir).ok();
        Ok(())
    })
    .await;
}

/// Each row of `kubectl frugal report --baseline first -o json` against the TrainingJobs'
/// statuses, and its ratios against `first`'s.
fn check_rows(rows: &serde_json::Value, jobs: &[TrainingJob]) -> Result<()> {
    let rows = rows.as_array().context("the report is a JSON array")?;
    ensure!(rows.len() == jobs.len(), "{} rows for {} jobs", rows.len(), jobs.len());
    let status = |name: &str| jobs.iter().find(|j| j.name_any() == name).and_then(|j| j.status.clone()).unwrap_or_default();
    let flops = |s: &frugal_api::v1alpha1::TrainingJobStatus| {
        let plan = s.plan.as_ref().expect("planned");
        match s.progress.as_ref().filter(|p| p.tokens > 0) {
            Some(p) => plan.flops_per_token * p.tokens as f64,
            None => plan.total_flops,
        }
    };
    let base = status("first");
    let base_plan = base.plan.clone().context("first has a plan")?;
    for row in rows {
        let name = row["job"].as_str().context("a job name")?;
        let s = status(name);
        let plan = s.plan.as_ref().with_context(|| format!("{name} has a plan"))?;
        ensure!(row["phase"] == format!("{:?}", s.phase.context("a phase")?), "{name}: phase {}", row["phase"]);
        ensure!(row["paramsTotal"] == plan.parameters && row["paramsActive"] == plan.active_parameters, "{name}: {row}");
        ensure!(row["gpus"] == plan.gpus, "{name}: GPUs {}", row["gpus"]);
        ensure!(row["flops"].as_f64().is_some_and(|f| close(f, flops(&s))), "{name}: FLOPs {} against {}", row["flops"], flops(&s));
        let quality = s.quality.as_ref();
        ensure!(row["perplexity"].as_f64() == quality.and_then(|q| q.perplexity), "{name}: perplexity {}", row["perplexity"]);
        ensure!(row["bitsPerByte"].as_f64() == quality.and_then(|q| q.bits_per_byte), "{name}: bits/byte {}", row["bitsPerByte"]);
        let ratios = &row["vsBaseline"];
        ensure!(
            ratios["flops"].as_f64().is_some_and(|r| close(r, flops(&s) / flops(&base))),
            "{name}: FLOPs ratio {} against {}",
            ratios["flops"],
            flops(&s) / flops(&base)
        );
        ensure!(ratios["paramsTotal"].as_f64().is_some_and(|r| close(r, plan.parameters as f64 / base_plan.parameters as f64)), "{name}: {ratios}");
        let finished = |s: &frugal_api::v1alpha1::TrainingJobStatus| s.phase == Some(Phase::Succeeded);
        if finished(&s) && finished(&base) {
            // final bills: the ratio of what the statuses say
            let (hours, base_hours) = (s.cost.as_ref().map_or(0.0, |c| c.gpu_hours), base.cost.as_ref().map_or(0.0, |c| c.gpu_hours));
            ensure!(base_hours > 0.0, "first was billed no GPU-hours: {:?}", base.cost);
            ensure!(ratios["gpuHours"].as_f64().is_some_and(|r| close(r, hours / base_hours)), "{name}: GPU-hours ratio {}", ratios["gpuHours"]);
        }
        match name {
            "cpu" => {
                let q = quality.context("the CPU job's quality")?;
                ensure!(row["zeroShotAccuracy"].as_f64() == q.zero_shot.first().map(|z| z.accuracy), "cpu: zero-shot {}", row["zeroShotAccuracy"]);
                ensure!(row["tokensPerSecond"].as_f64().is_some_and(|t| t > 0.0), "cpu: tokens/s {}", row["tokensPerSecond"]);
                ensure!(row["gpus"] == 0, "cpu: GPUs {}", row["gpus"]);
                // first has no quality (kwok runs no trainer): no ratio, not a made-up one
                ensure!(ratios["perplexity"].is_null() && ratios["bitsPerByteDelta"].is_null(), "cpu: {ratios}");
            }
            "first" => ensure!(ratios["flops"] == 1.0 && ratios["gpuHours"] == 1.0 && ratios["cost"] == 1.0, "first against itself: {ratios}"),
            "second" => {}
            other => bail!("an unexpected job {other}"),
        }
    }
    Ok(())
}

/// A Role `name` that may read TrainingJobs and TrainingBudgets in the test's namespace, bound
/// to `subjects`.
async fn readers(ctx: &TestContext, name: &str, subjects: Vec<Subject>) -> Result<()> {
    let meta = ObjectMeta { name: Some(name.into()), ..Default::default() };
    let read = PolicyRule {
        api_groups: Some(vec!["frugal.dev".into()]),
        resources: Some(vec!["trainingjobs".into(), "trainingbudgets".into()]),
        verbs: vec!["get".into(), "list".into(), "watch".into()],
        ..Default::default()
    };
    ctx.api::<Role>().create(&PostParams::default(), &Role { metadata: meta.clone(), rules: Some(vec![read]) }).await?;
    let binding = RoleBinding {
        metadata: meta,
        role_ref: RoleRef { api_group: "rbac.authorization.k8s.io".into(), kind: "Role".into(), name: name.into() },
        subjects: Some(subjects),
    };
    ctx.api::<RoleBinding>().create(&PostParams::default(), &binding).await?;
    Ok(())
}

fn subject(kind: &str, name: &str) -> Subject {
    Subject { kind: kind.into(), name: name.into(), api_group: Some("rbac.authorization.k8s.io".into()), ..Default::default() }
}

/// A copy of the test's kubeconfig whose current context points nowhere, with a second context
/// `second` of the test's cluster and user, in the test's namespace.
fn second_kubeconfig(ctx: &TestContext, dir: &Path) -> Result<PathBuf> {
    let path = std::env::var_os("KUBECONFIG").context("KUBECONFIG (scripts/e2e.sh sets it)")?;
    let text = std::fs::read_to_string(&path)?;
    let mut config: serde_json::Value = serde_saphyr::from_str(&text)?;
    let current = config["current-context"].as_str().context("the kubeconfig's current-context")?.to_string();
    let contexts = config["contexts"].as_array_mut().context("the kubeconfig's contexts")?;
    let mut second = contexts.iter().find(|c| c["name"] == current.as_str()).cloned().context("the current context")?;
    second["name"] = "second".into();
    second["context"]["namespace"] = ctx.namespace.clone().into();
    let mut nowhere = second.clone();
    nowhere["name"] = "nowhere".into();
    nowhere["context"]["cluster"] = "nowhere".into();
    contexts.extend([second, nowhere]);
    config["clusters"].as_array_mut().context("the kubeconfig's clusters")?.push(serde_json::json!({
        "name": "nowhere",
        "cluster": {"server": "https://127.0.0.1:9"},
    }));
    config["current-context"] = "nowhere".into();
    let copy = dir.join("second-kubeconfig.yaml");
    // JSON is YAML
    std::fs::write(&copy, serde_json::to_string_pretty(&config)?)?;
    Ok(copy)
}

#[tokio::test]
async fn kubectl_frugal_takes_kubectls_flags() {
    frugal_e2e::run("kubectl-plugin-flags", |ctx| async move {
        manifests::install_crds(&ctx.client).await?;
        let budgets: Api<TrainingBudget> = ctx.api();
        budgets.patch("team", &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&training_budget("team", 4))).await?;
        // no operator: jobs as they were applied, with no status yet
        apply(&ctx, &gpu_job("a", 1, "team")).await?;
        apply(&ctx, &fake_gpu_job("b", 1, 1)).await?;
        let dir = std::env::temp_dir().join(format!("kubectl-plugin-flags-{}", ctx.namespace));
        std::fs::create_dir_all(&dir)?;
        let names = "trainingjob.frugal.dev/a\ntrainingjob.frugal.dev/b\n";

        // -o name, yaml and wide, as kubectl prints them
        let out = kubectl_frugal(&ctx, &["report", "-o", "name"]).await?;
        ensure!(out.code == 0 && out.stdout == names, "report -o name: {}{}", out.stdout, out.stderr);
        let out = through_kubectl(&ctx, &["budget", "-o", "name"]).await?;
        ensure!(out.code == 0 && out.stdout == "trainingbudget.frugal.dev/team\n", "budget -o name: {}{}", out.stdout, out.stderr);
        for command in ["report", "budget"] {
            let json = kubectl_frugal(&ctx, &[command, "-o", "json"]).await?;
            let yaml = kubectl_frugal(&ctx, &[command, "-o", "yaml"]).await?;
            ensure!(json.code == 0 && yaml.code == 0, "{command} -o json|yaml: {}{}", json.stderr, yaml.stderr);
            let (json, yaml): (serde_json::Value, serde_json::Value) = (serde_json::from_str(&json.stdout)?, serde_saphyr::from_str(&yaml.stdout)?);
            // the budget's ledger says when its next period begins, counted from now: the same
            // data, a second apart at most
            let strip = |mut v: serde_json::Value| {
                v.as_array_mut().into_iter().flatten().for_each(|l| l["nextPeriod"] = serde_json::Value::Null);
                v
            };
            ensure!(strip(yaml.clone()) == strip(json.clone()), "{command}: -o yaml is not -o json's data:\n{yaml}\n{json}");
            ensure!(json.as_array().is_some_and(|a| !a.is_empty()), "{command}: {json}");
        }
        let wide = kubectl_frugal(&ctx, &["report", "-o", "wide"]).await?;
        let header = wide.stdout.lines().next().unwrap_or_default();
        ensure!(
            wide.code == 0 && header.starts_with("job  phase") && header.ends_with("seed  attempt  restarts  step  budgetRef"),
            "{}",
            wide.stdout
        );
        ensure!(wide.stdout.lines().nth(1).is_some_and(|l| l.starts_with("a ") && l.ends_with(" team")), "{}", wide.stdout);

        // --kubeconfig and --context: the second context's cluster and namespace, whatever
        // KUBECONFIG says; its current context points nowhere
        let second = second_kubeconfig(&ctx, &dir)?;
        let missing = dir.join("no-such-kubeconfig");
        let out =
            plugin_with(&["report", "-o", "name", "--kubeconfig", second.to_str().unwrap(), "--context", "second"], &[("KUBECONFIG", &missing)])
                .await?;
        ensure!(out.code == 0 && out.stdout == names, "the second context: {}{}", out.stdout, out.stderr);
        let out = plugin_with(&["report", "--kubeconfig", second.to_str().unwrap()], &[("KUBECONFIG", &missing)]).await?;
        ensure!(out.code == 2 && out.stderr.contains("cannot reach the API server"), "the current context points nowhere: {}", out.stderr);
        let out = plugin_with(&["report", "--kubeconfig", second.to_str().unwrap(), "--context", "third"], &[]).await?;
        ensure!(out.code == 2 && out.stderr.contains("\"third\"") && out.stderr.contains("second, nowhere"), "{}", out.stderr);

        // --as: a user RBAC lets read them, one it does not, and one whose group may
        readers(&ctx, "frugal-readers", vec![subject("User", "reader"), subject("Group", "readers")]).await?;
        let allowed = |user: &'static str, group: Option<&'static str>| {
            let ctx = ctx.clone();
            async move {
                let mut args = vec!["report", "-o", "name", "--as", user];
                args.extend(group.iter().flat_map(|g| ["--as-group", *g]));
                kubectl_frugal(&ctx, &args).await
            }
        };
        // RBAC takes a moment to see a new binding: wait for the authorizer to say yes
        wait::until("reader may list TrainingJobs", async {
            while !node::may(&ctx, "reader", "list", "frugal.dev", "trainingjobs").await? {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            anyhow::Ok(())
        })
        .await?;
        let out = allowed("reader", None).await?;
        ensure!(out.code == 0 && out.stdout == names, "--as reader: {}{}", out.stdout, out.stderr);
        let out = allowed("nobody", None).await?;
        ensure!(out.code == 2, "--as nobody listed TrainingJobs: {}", out.stdout);
        for part in ["the API server refused", "User \"nobody\" cannot list resource \"trainingjobs\""] {
            ensure!(out.stderr.contains(part), "--as nobody: the error does not say {part:?}: {}", out.stderr);
        }
        let out = allowed("nobody", Some("readers")).await?;
        ensure!(out.code == 0 && out.stdout == names, "--as nobody --as-group readers: {}{}", out.stdout, out.stderr);
        let out = kubectl_frugal(&ctx, &["budget", "--as-group", "readers"]).await?;
        ensure!(out.code == 2 && out.stderr.contains("--as-group needs --as"), "{}", out.stderr);

        // describe and logs of a job the operator has not run
        let out = through_kubectl(&ctx, &["describe", "a"]).await?;
        ensure!(out.code == 0, "describe: {}", out.stderr);
        for part in [
            "Name:       a\n".to_string(),
            format!("Namespace:  {}\n", ctx.namespace),
            "Budget:     team (spec.budget.budgetRef)\n".into(),
            "Plan:\n  none yet".into(),
            format!("TrainingBudget {}/team:\n  limits ", ctx.namespace),
        ] {
            ensure!(out.stdout.contains(&part), "describe does not say {part:?}:\n{}", out.stdout);
        }
        let out = kubectl_frugal(&ctx, &["describe", "nope"]).await?;
        ensure!(out.code == 2 && out.stderr.contains("no TrainingJob \"nope\" in namespace"), "{}", out.stderr);
        let out = kubectl_frugal(&ctx, &["logs", "a"]).await?;
        ensure!(out.code == 2 && out.stderr.contains("a has not started an attempt yet"), "{}", out.stderr);
        std::fs::remove_dir_all(&dir).ok();
        Ok(())
    })
    .await;
}

/// `kubectl frugal logs -f` started before the job's pods exist, on a two-stage CPU job that
/// trains for real: lines of both stages arrive, prefixed, while the job trains, are each pod's
/// log as the API server has it, and the command exits once the job has ended.
#[tokio::test]
async fn kubectl_frugal_logs_follows_a_two_stage_job_on_the_real_node() {
    if !node::available("kubectl-plugin-logs") {
        return;
    }
    frugal_e2e::run("kubectl-plugin-logs", |ctx| async move {
        manifests::install_crds(&ctx.client).await?;
        node::enforce_restricted(&ctx).await?;
        let pv = node::shared_claim(&ctx, "ckpt").await?;
        let _operator = Operator::start(&ctx.namespace, &[])?;
        // long enough (seconds of steps) that the follower is attached while both stages run
        apply(&ctx, &real_cpu_job("lm", 400, Some("ckpt"), 2)).await?;

        let mut follower = tokio::process::Command::new(plugin()?)
            .args(["logs", "lm", "-f", "-n", &ctx.namespace])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = follower.stdout.take().context("the follower's stdout")?;
        // each line with when it arrived
        let reading = tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt as _;
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            let mut read = Vec::new();
            while let Ok(Some(line)) = lines.next_line().await {
                read.push((SystemTime::now(), line));
            }
            read
        });

        let started = Instant::now();
        let done = finished_within(&ctx, "lm", TRAINING).await?;
        let ended_after = started.elapsed();
        ensure!(phase(&done) == Some(Phase::Succeeded), "lm ended {:?}: {:?}", phase(&done), done.status);
        let exit = wait::within(Duration::from_secs(60), "kubectl frugal logs -f to exit after the job ended", follower.wait()).await?;
        let mut stderr = String::new();
        if let Some(mut e) = follower.stderr.take() {
            use tokio::io::AsyncReadExt as _;
            e.read_to_string(&mut stderr).await.ok();
        }
        let read = reading.await?;
        eprintln!("$ kubectl-frugal logs lm -f  # {exit}, {} lines, the job ended after {ended_after:?}\n{stderr}", read.len());
        ensure!(exit.success(), "logs -f exited {exit}: {stderr}");

        // every line says its stage
        let (stage0, stage1) = ("[stage 0 replica 0] ", "[stage 1 replica 0] ");
        let unprefixed: Vec<&String> = read.iter().map(|(_, l)| l).filter(|l| !l.starts_with(stage0) && !l.starts_with(stage1)).collect();
        ensure!(unprefixed.is_empty(), "lines without a stage prefix: {unprefixed:?}");
        ensure!(read.iter().any(|(_, l)| l.contains("\"step\":400")), "no stage logged step 400");

        // what each pod logged, whole and in order, under its stage's prefix; the first of it
        // while its container still ran (the kubelet's finishedAt is whole seconds, rounded down)
        let pods = node::attempt_pods(&ctx, "lm", 1).await?;
        ensure!(pods.len() == 2, "{} pods", pods.len());
        let mut lines_of = Vec::new();
        for pod in &pods {
            let index = pod.annotations().get(INDEX_ANNOTATION).with_context(|| format!("{} has no index", pod.name_any()))?;
            let prefix = format!("[stage {index} replica 0] ");
            let finished = pod
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.name == "trainer")?.state.as_ref()?.terminated.as_ref().map(|t| t.finished_at.clone()))
                .flatten()
                .with_context(|| format!("{} has not terminated", pod.name_any()))?;
            let finished = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(finished.0.as_second())?);
            let first = read.iter().find(|(_, l)| l.starts_with(&prefix)).with_context(|| format!("no line from {prefix}"))?;
            ensure!(first.0 < finished, "the first line of {prefix} came after its container ended ({finished:?}): not followed");
            let log = node::logs(&ctx, &pod.name_any()).await;
            let followed: Vec<&str> = read.iter().filter_map(|(_, l)| l.strip_prefix(&prefix)).collect();
            let logged: Vec<&str> = log.lines().collect();
            ensure!(followed == logged, "{} (stage {index}): followed {} lines, it logged {}:\n{log}", pod.name_any(), followed.len(), logged.len());
            lines_of.push((index.clone(), logged.len()));
        }
        lines_of.sort();

        // without -f: the last lines of each pod, the first stage's first
        let out = kubectl_frugal(&ctx, &["logs", "lm", "--tail", "2"]).await?;
        let prefixes: Vec<&str> = out.stdout.lines().map(|l| l.get(..stage0.len()).unwrap_or(l)).collect();
        // (the first stage, which does not report, logs one line)
        let expected: Vec<&str> =
            lines_of.iter().flat_map(|(i, n)| std::iter::repeat_n(if i == "0" { stage0 } else { stage1 }, (*n).min(2))).collect();
        ensure!(out.code == 0 && prefixes == expected, "logs --tail 2: {}{}", out.stdout, out.stderr);
        let out = kubectl_frugal(&ctx, &["describe", "lm"]).await?;
        ensure!(out.code == 0 && out.stdout.contains("Phase:      Succeeded, attempt 1 (0 restarts)\n"), "{}{}", out.stdout, out.stderr);
        Api::<k8s_openapi::api::core::v1::PersistentVolume>::all(ctx.client.clone()).delete(&pv, &DeleteParams::default()).await.ok();
        Ok(())
    })
    .await;
}

/// `make plugin-release`'s archive and manifest (scripts/plugin-release.sh, here on the built
/// plugin) installed by krew as a user installs a plugin from its manifest
/// (`kubectl krew install --manifest --archive`, no index, no download), then run as
/// `kubectl frugal` from krew's bin directory: krew accepts the manifest, checks the archive's
/// sha256, and the plugin it installs answers kubectl.
#[tokio::test]
async fn krew_installs_the_release_archive_and_kubectl_runs_the_plugin() {
    frugal_e2e::run("kubectl-plugin-krew", |ctx| async move {
        manifests::install_crds(&ctx.client).await?;
        let budgets: Api<TrainingBudget> = ctx.api();
        budgets.patch("team", &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&training_budget("team", 4))).await?;
        let dir = std::env::temp_dir().join(format!("kubectl-plugin-krew-{}", ctx.namespace));
        let (dist, krew_root) = (dir.join("dist"), dir.join("krew"));
        std::fs::create_dir_all(&dist)?;
        let release = std::process::Command::new("bash")
            .arg(frugal_e2e::repo_root().join("scripts/plugin-release.sh"))
            .env("FRUGAL_PLUGIN_BINARY", plugin()?)
            .env("FRUGAL_DIST", &dist)
            .output()?;
        let release = Ran::of("make plugin-release", release);
        ensure!(release.code == 0, "plugin-release failed");
        let version = env!("CARGO_PKG_VERSION");
        let archive = dist.join(format!("kubectl-frugal_{version}_linux_amd64.tar.gz"));
        let manifest = dist.join("frugal.yaml");
        let install = |archive: &Path| {
            std::process::Command::new("krew")
                .args(["install", "--manifest", manifest.to_str().unwrap(), "--archive", archive.to_str().unwrap()])
                .env("KREW_ROOT", &krew_root)
                .stdin(Stdio::null())
                .output()
                .context("running krew (scripts/e2e.sh puts it on PATH; e2e/cluster/build builds it)")
        };
        // an archive whose bytes are not the manifest's sha256 is refused
        let tampered = dir.join("tampered.tar.gz");
        let mut bytes = std::fs::read(&archive)?;
        bytes.extend_from_slice(b"\0");
        std::fs::write(&tampered, bytes)?;
        let refused = Ran::of("krew install --manifest frugal.yaml --archive tampered.tar.gz", install(&tampered)?);
        ensure!(refused.code != 0 && refused.stderr.contains("checksum does not match"), "krew installed an archive that is not the manifest's");
        let installed = Ran::of("krew install --manifest frugal.yaml --archive kubectl-frugal_….tar.gz", install(&archive)?);
        ensure!(installed.code == 0 && installed.stderr.contains("Installed plugin: frugal"), "krew did not install the plugin");
        // kubectl finds the plugin krew put in its bin directory
        let bin = krew_root.join("bin");
        ensure!(bin.join("kubectl-frugal").exists(), "no kubectl-frugal in {}", bin.display());
        let path = std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())))?;
        let run = |args: &[&str]| std::process::Command::new("kubectl").arg("frugal").args(args).env("PATH", &path).output();
        let shown = Ran::of("kubectl frugal --version", run(&["--version"])?);
        ensure!(shown.code == 0 && shown.stdout.contains(version), "the installed plugin's version");
        let listed = Ran::of("kubectl frugal budget -o name", run(&["budget", "-o", "name", "-n", &ctx.namespace])?);
        ensure!(listed.code == 0 && listed.stdout.trim() == "trainingbudget.frugal.dev/team", "the installed plugin against the cluster");
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    })
    .await;
}
