use super::*;
use frugal_api::testing::TrainingJobBuilder;
use frugal_api::v1alpha1::{BudgetHolder, TrainingBudgetStatus};

/// A GPU job `lm` in `ml` of `stages` stages of a small model, 8 micro-batches of 16 sequences.
fn job(stages: i32) -> TrainingJobBuilder {
    TrainingJob::test().namespace("ml").stages(stages).micro_batches(8).batch_size(16)
}

fn refusals(checks: &[Check]) -> Vec<(&str, &str)> {
    checks.iter().filter(|c| c.outcome == Outcome::Refused).map(|c| (c.check, c.reason.as_deref().unwrap_or_default())).collect()
}

fn t(secs: i64) -> Time {
    Time(Timestamp::from_second(1_700_000_000 + secs).unwrap())
}

/// Budget `name` in `ml` of `max_gpus` GPUs and `gpu_hours` a Day, created at 0.
fn training_budget(name: &str, max_gpus: i32, gpu_hours: Option<f64>) -> TrainingBudget {
    let mut b = TrainingBudget::test(max_gpus).name(name).namespace("ml").gpu_hours(gpu_hours).build();
    b.metadata.creation_timestamp = Some(t(0));
    b
}

fn holding(mut b: TrainingBudget, holders: &[(&str, i32)]) -> TrainingBudget {
    b.status = Some(TrainingBudgetStatus {
        period_start: Some(t(0)),
        jobs: holders.iter().map(|(n, g)| BudgetHolder { name: n.to_string(), uid: format!("uid-{n}"), gpus: *g, ..Default::default() }).collect(),
        ..Default::default()
    });
    b
}

#[test]
fn a_job_that_fits_passes_every_offline_check() {
    let (plan, checks) = offline(&job(2).build(), None);
    let plan = plan.unwrap();
    assert_eq!((plan.gpus, plan.pods, plan.stages.len()), (2, 2, 2));
    assert!(refusals(&checks).is_empty(), "{checks:?}");
    let names: Vec<&str> = checks.iter().map(|c| c.check).collect();
    assert_eq!(names, ["plan", "GPU memory", "GPU limit"]);
    assert!(checks[1].message.contains("of the nvidia-h100-80gb's 79.65 GiB"), "{}", checks[1].message);
}

#[test]
fn memory_that_does_not_fit_is_refused_naming_the_fix() {
    let mut j = job(1).gpu_type("nvidia-t4-16gb").build();
    let c = j.spec.model.custom.as_mut().unwrap();
    (c.layers, c.d_model, c.heads, c.seq_len) = (48, 8192, 64, 4096);
    let (_, checks) = offline(&j, None);
    assert_eq!(refusals(&checks), [("GPU memory", "GpuMemoryExceeded")]);
    let m = &checks[1].message;
    assert!(m.contains("nvidia-t4-16gb") && m.contains("activationCheckpointing") && m.contains("pipelineStages"), "{m}");
}

#[test]
fn the_jobs_own_limits_and_the_operators_ceiling() {
    let (_, checks) = offline(&job(4).max_gpus(2).build(), None);
    assert_eq!(refusals(&checks), [("GPU limit", "GpuLimitExceeded")]);
    assert!(checks[2].message.contains("its budget.maxGpus of 2") && checks[2].message.contains("raise spec.budget.maxGpus"));
    // the ceiling is only known when given
    let (_, checks) = offline(&job(8).build(), None);
    assert!(refusals(&checks).is_empty() && checks[2].message.contains("--max-gpus-per-job"), "{checks:?}");
    let (_, checks) = offline(&job(8).build(), Some(4));
    assert_eq!(refusals(&checks), [("GPU limit", "GpuLimitExceeded")]);
    // a spend limit below the estimate is a note: the job would stop before it finishes
    let (_, checks) = offline(&job(1).max_gpu_hours(0.000001).build(), None);
    let spend = checks.iter().find(|c| c.check == "spend limits").unwrap();
    assert_eq!(spend.outcome, Outcome::Note);
    assert!(spend.message.contains("above its spec.budget.maxGpuHours of 0.000001"), "{}", spend.message);
}

#[test]
fn replicas_count_as_gpus_and_a_better_layout_is_suggested() {
    let mut j = job(2).max_gpus(2).build();
    j.spec.parallelism.data_parallel = 2;
    let (plan, checks) = offline(&j, None);
    let plan = plan.unwrap();
    assert_eq!((plan.gpus, plan.pods, plan.replicas), (4, 4, 2));
    assert_eq!(refusals(&checks), [("GPU limit", "GpuLimitExceeded")]);
    assert!(checks[2].message.starts_with("the job needs 4 GPUs (2 pipeline stages × 2 replicas)"), "{}", checks[2].message);
    assert!(checks[2].message.contains("lower spec.parallelism.pipelineStages or spec.parallelism.dataParallel"), "{}", checks[2].message);
    // the small model fits one GPU: 4 replicas of one stage, each in as many of its 8 micro-batches
    // as its 16 / 4 sequences allow
    let suggested_layout = planner::suggest_layout(&j.spec, &PlanOptions::default());
    let layout = suggested_layout.unwrap();
    assert_eq!((layout.pipeline_stages, layout.data_parallel, layout.micro_batches), (1, 4, 4));
    let p = Planned { job: "lm".into(), namespace: None, plan: Some(plan), suggested_layout, checks, refused: true };
    let out = text(&p, &j);
    assert!(out.contains("  GPUs           4 × nvidia-h100-80gb in 4 pods (2 replicas × 2 stages), pipeline bubble 11.1%\n"), "{out}");
    assert!(out.contains("  sends          "), "{out}");
    assert!(out.contains("gradient all-reduce") && out.contains("pipeline activations and gradients"), "{out}");
    assert!(
        out.contains(
            "  better layout  parallelism.pipelineStages: 1, parallelism.dataParallel: 4 and parallelism.microBatches: 4: the same 4 GPUs, "
        ),
        "{out}"
    );
    assert!(out.contains("pipeline bubble 0.0% instead of 11.1%\n"), "{out}");
    let json = serde_json::to_value(&p).unwrap();
    assert_eq!(json["suggestedLayout"]["dataParallel"], 4);
    assert_eq!(json["plan"]["replicas"], 2);
}

#[test]
fn a_plan_error_is_refused_with_the_planners_words() {
    let (plan, checks) = offline(&job(9).build(), None);
    assert!(plan.is_none());
    assert_eq!(refusals(&checks), [("plan", "PlanFailed")]);
    assert!(checks[0].message.contains("pipelineStages 9 exceeds the model's 8 layers"), "{}", checks[0].message);
}

/// The budget check of a 4-GPU job (`lm`) in namespace `ml`, naming `budget_ref` if given, among
/// `budgets`.
fn budget_verdict(budget_ref: Option<&str>, budgets: &[TrainingBudget]) -> Check {
    let j = job(4).with(|s| s.budget.budget_ref = budget_ref.map(Into::into)).build();
    let (plan, _) = offline(&j, None);
    budget_check(&j, &plan.unwrap(), "ml", budgets, None, &t(60))
}

#[test]
fn a_budget_too_small_for_the_job_refuses_it() {
    let c = budget_verdict(Some("team"), &[training_budget("team", 2, None)]);
    assert_eq!((c.outcome, c.reason.as_deref()), (Outcome::Refused, Some("BudgetTooSmall")));
    assert!(c.message.contains("needs 4 GPUs, above the spec.maxGpus of 2 of TrainingBudget \"team\""), "{}", c.message);
    // look-ahead: more GPU-hours than a whole period allows
    let mut long = job(4).budget_ref("team").build();
    long.spec.training.duration.steps = Some(100_000_000);
    let (plan, _) = offline(&long, None);
    let c = budget_check(&long, &plan.unwrap(), "ml", &[training_budget("team", 8, Some(0.001))], None, &t(60));
    assert_eq!((c.outcome, c.reason.as_deref()), (Outcome::Refused, Some("BudgetTooSmall")), "{c:?}");
    assert!(c.message.contains("more than the 0.00100 GPU-hours a Day of TrainingBudget \"team\" allows (spec.gpuHours)"), "{}", c.message);
}

#[test]
fn a_full_budget_makes_it_wait_and_a_free_one_admits_it() {
    let full = holding(training_budget("team", 4, None), &[("first", 4)]);
    let c = budget_verdict(Some("team"), &[full]);
    assert_eq!((c.outcome, c.reason.as_deref()), (Outcome::Note, Some("BudgetExhausted")));
    assert!(
        c.message.starts_with("would wait, Queued: TrainingBudget \"team\" has 4 of its 4 GPUs (spec.maxGpus) held by first (4)"),
        "{}",
        c.message
    );
    let free = holding(training_budget("team", 8, Some(100.0)), &[("first", 4)]);
    let c = budget_verdict(Some("team"), &[free]);
    assert_eq!(c.outcome, Outcome::Ok, "{c:?}");
    assert!(c.message.starts_with("\"team\" admits it now: 4 of its 8 GPUs free, 0.00 of 100 GPU-hours spent this Day"), "{}", c.message);
    // no budget at all
    assert_eq!(budget_verdict(None, &[]).outcome, Outcome::Ok);
    // a budget that does not exist yet: it would wait for it
    let c = budget_verdict(Some("team"), &[]);
    assert_eq!((c.outcome, c.reason.as_deref()), (Outcome::Note, Some("BudgetNotFound")));
}

#[test]
fn the_namespace_default_counts_the_job_and_refuses_another_budget() {
    let mut default = training_budget("shared", 2, None);
    default.spec.namespace_default = true;
    let c = budget_verdict(None, std::slice::from_ref(&default));
    assert_eq!((c.outcome, c.reason.as_deref()), (Outcome::Refused, Some("BudgetTooSmall")), "counted in the default though it names none");
    let c = budget_verdict(Some("team"), &[default, training_budget("team", 8, None)]);
    assert_eq!((c.outcome, c.reason.as_deref()), (Outcome::Refused, Some("BudgetNotAllowed")));
    assert!(c.message.contains("remove spec.budget.budgetRef or set it to \"shared\""), "{}", c.message);
}

#[test]
fn a_job_already_holding_its_budget_is_not_admitted_again() {
    let full = holding(training_budget("team", 4, None), &[("lm", 4)]);
    let j = job(4).budget_ref("team").build();
    let mut existing = j.clone();
    existing.metadata.uid = Some("uid-lm".into());
    let (plan, _) = offline(&j, None);
    let c = budget_check(&j, plan.as_ref().unwrap(), "ml", std::slice::from_ref(&full), Some(&existing), &t(60));
    assert_eq!(c.outcome, Outcome::Ok);
    assert!(c.message.contains("holds 4 of its GPUs already"), "{}", c.message);
    // a deleted job's entry under the same name is not this job's
    existing.metadata.uid = Some("another".into());
    let c = budget_check(&j, plan.as_ref().unwrap(), "ml", &[full], Some(&existing), &t(60));
    assert_eq!(c.outcome, Outcome::Ok, "the stale entry goes and the GPUs are free: {c:?}");
}

#[test]
fn the_api_servers_refusal_is_printed_as_it_said_it() {
    let status = |code: u16, reason: &str, message: &str| {
        kube::Error::Api(Box::new(kube::core::Status { code, reason: reason.into(), message: message.into(), ..Default::default() }))
    };
    let c = dry_run_check(Err(status(403, "Forbidden", "denied request: TrainingJob lm would hold 4 GPUs"))).unwrap();
    assert_eq!(
        (c.outcome, c.reason.as_deref(), c.message.as_str()),
        (Outcome::Refused, Some("Forbidden"), "denied request: TrainingJob lm would hold 4 GPUs")
    );
    let c = dry_run_check(Err(status(422, "Invalid", "spec.parallelism: Invalid value"))).unwrap();
    assert_eq!(c.reason.as_deref(), Some("Invalid"));
    let unknown =
        "failed to create typed patch object (/lm; frugal.dev/v1alpha1, Kind=TrainingJob): .spec.resources.env: field not declared in schema";
    let c = dry_run_check(Err(status(500, "", unknown))).unwrap();
    assert_eq!((c.outcome, c.reason.as_deref()), (Outcome::Refused, Some("HTTP 500")));
    assert!(dry_run_check(Err(status(503, "ServiceUnavailable", "busy"))).is_err(), "a busy server is not a verdict");
    let e = dry_run_check(Err(status(404, "NotFound", "the server could not find the requested resource"))).unwrap_err().to_string();
    assert!(e.contains("install frugal's CRDs") && e.contains("kubectl apply --server-side -f crds/"), "{e}");
    assert_eq!(dry_run_check(Ok(())).unwrap().outcome, Outcome::Ok);
}

#[test]
fn the_verdict_says_refused_why_or_admitted() {
    let j = job(4).max_gpus(2).build();
    let (plan, checks) = offline(&j, None);
    let p = Planned { job: "lm".into(), namespace: None, plan, suggested_layout: None, checks, refused: true };
    let v = verdict(&p);
    assert!(v.starts_with("refused: GpuLimitExceeded (GPU limit): the job needs 4 GPUs"), "{v}");
    let out = text(&p, &j);
    assert!(out.starts_with("TrainingJob lm (offline)\n"), "{out}");
    assert!(out.contains("  memory per GPU, by pipeline stage:\n    stage  layers"), "{out}");
    assert!(out.contains("    REFUSED  GPU limit"), "{out}");
    let (plan, mut checks) = offline(&job(1).build(), None);
    checks.push(Check::note("TrainingBudget", Some("BudgetExhausted"), "would wait"));
    let p = Planned { job: "lm".into(), namespace: Some("ml".into()), plan, suggested_layout: None, checks, refused: false };
    assert_eq!(verdict(&p), "admitted, and it would wait, Queued (BudgetExhausted)\n");
}

#[test]
fn a_manifest_is_read_as_written_and_checked_for_its_kind() {
    let dir = std::env::temp_dir().join(format!("kubectl-frugal-plan-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("job.yaml");
    std::fs::write(&path, "apiVersion: frugal.dev/v1alpha1\nkind: TrainingJob\nmetadata: {name: lm}\nspec:\n  model: {type: Preset, preset: tiny}\n  data: {source: {type: Synthetic}}\n").unwrap();
    let (job, doc) = load(&path).unwrap();
    assert_eq!(job.metadata.name.as_deref(), Some("lm"));
    assert!(doc["spec"].get("training").is_none(), "the dry run sends the manifest as written, not its defaults");
    std::fs::write(&path, "apiVersion: frugal.dev/v1alpha1\nkind: TrainingBudget\nmetadata: {name: b}\nspec: {maxGpus: 1}\n").unwrap();
    assert!(load(&path).unwrap_err().to_string().contains("not a TrainingJob"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[path = "../../../trainer/tests/support/seaweedfs.rs"]
mod seaweedfs;

/// The bucket check against a real S3-compatible server (SeaweedFS, `scripts/seaweedfs.sh`):
/// the job's keys write and delete a probe under its prefix, leaving nothing; a wrong key or a
/// missing bucket is a refusal in the store's words, naming the field and never the key; with
/// the plugin's own environment (no Secret named) a failure is only a note.
#[test]
fn the_bucket_check_writes_a_probe_with_the_jobs_keys_and_says_what_the_store_refused() {
    use bucket::{CHECKPOINTS, EXPORTS, Identity, probe};
    use seaweedfs::{ACCESS_KEY, SECRET_KEY, SeaweedFs};
    let Some(s3) = SeaweedFs::start("plan-bucket", "plan") else { return };
    let keys =
        |secret: &str| vec![("AWS_ACCESS_KEY_ID".to_string(), ACCESS_KEY.to_string()), ("AWS_SECRET_ACCESS_KEY".to_string(), secret.to_string())];
    let secret = Identity::Secret("store-keys".into());
    let ok = probe(CHECKPOINTS, &s3.spec("team/run-1"), &secret, keys(SECRET_KEY));
    assert_eq!(ok.outcome, Outcome::Ok, "{ok:?}");
    assert!(ok.message.contains("s3://plan/team/run-1") && ok.message.contains("Secret store-keys"), "{}", ok.message);
    assert_eq!(s3.store("team", SECRET_KEY).list("").unwrap(), Vec::<String>::new(), "the probe is deleted");

    let wrong = probe(CHECKPOINTS, &s3.spec("team/run-1"), &secret, keys("not-the-key"));
    assert_eq!((wrong.outcome, wrong.reason.as_deref()), (Outcome::Refused, Some(reasons::CONFIGURATION_ERROR)), "{wrong:?}");
    assert!(wrong.message.contains("spec.checkpoint.store (s3://plan/team/run-1)") && !wrong.message.contains("not-the-key"), "{}", wrong.message);
    let no_bucket = frugal_api::v1alpha1::ObjectStoreSpec { uri: "s3://no-such-bucket/x".into(), ..s3.spec("") };
    let missing = probe(EXPORTS, &no_bucket, &secret, keys(SECRET_KEY));
    assert_eq!((missing.outcome, missing.check), (Outcome::Refused, "export store"), "{missing:?}");
    assert!(missing.message.contains("spec.export.store (s3://no-such-bucket/x)"), "{}", missing.message);

    let mine = probe(CHECKPOINTS, &s3.spec("team/run-1"), &Identity::Environment, keys("not-the-key"));
    assert_eq!(mine.outcome, Outcome::Note, "{mine:?}");
    assert!(mine.message.contains("AWS_* environment"), "{}", mine.message);
}

/// The input check against SeaweedFS: a corpus file, a prefix of shards and a missing key, with
/// the job's keys and with a wrong one.
#[test]
fn the_input_check_reads_what_the_trainer_would_download() {
    use bucket::{Identity, probe_input};
    use frugal_api::store::Location;
    use frugal_api::v1alpha1::InputShape;
    use seaweedfs::{ACCESS_KEY, SECRET_KEY, SeaweedFs};
    let Some(s3) = SeaweedFs::start("plan-inputs", "corpora") else { return };
    let store = s3.store("", SECRET_KEY);
    store.put_bytes("web/part-0.txt", b"some text\n".to_vec()).unwrap();
    store.put_bytes("shards/train-0.bin", vec![0; 64]).unwrap();
    store.put_bytes("shards/train-1.bin", vec![0; 32]).unwrap();
    let settings = Location::of("spec.checkpoint.store", &s3.spec("")).unwrap();
    let keys =
        |secret: &str| vec![("AWS_ACCESS_KEY_ID".to_string(), ACCESS_KEY.to_string()), ("AWS_SECRET_ACCESS_KEY".to_string(), secret.to_string())];
    let secret = Identity::Secret("store-keys".into());
    let probe = |field: &str, uri: &str, shape, key: &str| probe_input(field, uri, shape, Some(&settings), &secret, keys(key));

    let text = probe("spec.data.source.text.path", "s3://corpora/web/part-0.txt", InputShape::FileOrDirectory, SECRET_KEY);
    assert_eq!(text.outcome, Outcome::Ok, "{text:?}");
    assert!(text.message.contains("1 object(s), 10 bytes") && text.message.contains("Secret store-keys"), "{}", text.message);
    let shards = probe("spec.data.source.shards.path", "s3://corpora/shards", InputShape::Directory, SECRET_KEY);
    assert!(shards.outcome == Outcome::Ok && shards.message.contains("2 object(s), 96 bytes"), "{shards:?}");

    let missing = probe("spec.data.evalSets[0].path", "s3://corpora/web/valid.txt", InputShape::File, SECRET_KEY);
    assert_eq!((missing.outcome, missing.reason.as_deref()), (Outcome::Refused, Some(reasons::CONFIGURATION_ERROR)), "{missing:?}");
    assert!(
        missing.message.contains("spec.data.evalSets[0].path (s3://corpora/web/valid.txt)") && missing.message.contains("no object"),
        "{}",
        missing.message
    );
    let prefix = probe("spec.data.tokenizerFile.path", "s3://corpora/shards/", InputShape::Tokenizer, SECRET_KEY);
    assert!(prefix.outcome == Outcome::Refused && prefix.message.contains("takes one file"), "{prefix:?}");
    let wrong = probe("spec.data.source.text.path", "s3://corpora/web/part-0.txt", InputShape::FileOrDirectory, "not-the-key");
    assert_eq!(wrong.outcome, Outcome::Refused, "{wrong:?}");
    assert!(wrong.message.contains("spec.data.source.text.path") && !wrong.message.contains("not-the-key"), "{}", wrong.message);
}
