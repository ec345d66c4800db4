use super::*;
use crate::ReportFormat;
use frugal_api::testing::TrainingJobBuilder;
use frugal_api::v1alpha1::{
    CostStatus, EfficiencyStatus, Phase, PlanStatus, Precision, ProgressStatus, QualityMetric, QualityStatus, ResolvedModelStatus, TrainingJobStatus,
    ZeroShotResult,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// A job `name` in `ml` of a small model on synthetic data: batches of 4, fp32, seed 7.
fn job(name: &str) -> TrainingJobBuilder {
    TrainingJob::test().name(name).namespace("ml").custom_model(4, 32, 2, 16).batch_size(4).precision(Precision::Fp32).seed(7)
}

/// The plan of a 2-GPU run of 100 steps: 300,000 FLOPs a token.
fn plan() -> PlanStatus {
    PlanStatus {
        model: ResolvedModelStatus { layers: 4, d_model: 32, heads: 2, seq_len: 16, vocab_size: 257, ffn_hidden: 128, moe_layers: 0 },
        parameters: 60000,
        active_parameters: 50000,
        flops_per_token: 300000.0,
        tokens: 6400,
        steps: 100,
        total_flops: 1920000000.0,
        gpus: 2,
        pods: 2,
        memory_per_gpu_bytes: 1000,
        gpu_memory_bytes: 80000,
        currency: "USD".into(),
        ..Default::default()
    }
}

/// A job that trained: quality, efficiency, its bill and a quality target reached.
fn trained(name: &str, perplexity: f64, bits: f64, accuracy: f64, gpu_hours: f64) -> TrainingJob {
    let zero_shot = |name: &str, accuracy: f64| ZeroShotResult { name: name.into(), accuracy, examples: 10 };
    job(name)
        .quality_target(QualityMetric::BitsPerByte, 2.0)
        .status(TrainingJobStatus {
            phase: Some(Phase::Succeeded),
            plan: Some(plan()),
            progress: Some(ProgressStatus { step: 100, total_steps: 100, tokens: 3200, ..Default::default() }),
            quality: Some(QualityStatus {
                step: 100,
                perplexity: Some(perplexity),
                bits_per_byte: Some(bits),
                zero_shot: vec![zero_shot("a", accuracy), zero_shot("b", 0.2)],
                target_reached_time: Some(Time("2026-12-02T03:00:00Z".parse().unwrap())),
                ..Default::default()
            }),
            efficiency: Some(EfficiencyStatus { tokens_per_second: 812.6, achieved_tflops: 0.1, mfu: 0.01, pipeline_bubble: None }),
            cost: Some(CostStatus {
                gpu_hours,
                cost: gpu_hours * 2.5,
                currency: "USD".into(),
                gpu_hours_to_target: Some(gpu_hours / 2.0),
                ..Default::default()
            }),
            ..Default::default()
        })
        .build()
}

#[test]
fn a_row_from_a_status_with_everything() {
    let r = row(&trained("lm", 8.0, 1.5, 0.6, 2.0), false);
    assert_eq!(r.job, "lm");
    assert_eq!(r.model, "4l/32d/2h dense fp32");
    assert_eq!((r.params_total, r.params_active, r.gpus), (Some(60000), Some(50000), Some(2)));
    // FLOPs trained: tokens so far times the plan's FLOPs per token
    assert_eq!(r.flops, Some(300000.0 * 3200.0));
    assert_eq!((r.perplexity, r.bits_per_byte), (Some(8.0), Some(1.5)));
    assert_eq!(r.zero_shot_accuracy, Some(0.4), "the mean over the sets");
    assert_eq!((r.tokens_per_second, r.gpu_hours, r.cost), (Some(812.6), Some(2.0), Some(5.0)));
    assert_eq!((r.gpu_hours_to_target, r.target_reached), (Some(1.0), Some(true)));
    assert_eq!((r.seed, r.config_hash.as_deref(), r.phase.as_deref()), (Some(7), None, Some("Succeeded")));
    assert_eq!(row(&trained("lm", 8.0, 1.5, 0.6, 2.0), true).job, "ml/lm", "-A names the namespace");
}

#[test]
fn a_new_job_has_dashes_not_made_up_numbers() {
    let fresh = job("new").build();
    let r = row(&fresh, false);
    assert_eq!((r.params_total, r.flops, r.gpus, r.tokens_per_second, r.gpu_hours, r.cost), (None, None, None, None, None, None));
    assert_eq!((r.perplexity, r.bits_per_byte, r.zero_shot_accuracy, r.target_reached), (None, None, None, None));
    assert_eq!(r.phase.as_deref(), Some("-"));
    let t = report::text(&[r]);
    let cells: Vec<&str> = t.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(cells, ["new", "-", "4l/32d/2h", "dense", "fp32", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "7"]);
    // planned, not trained: the plan's FLOPs, no quality
    let planned =
        row(&job("planned").status(TrainingJobStatus { phase: Some(Phase::Pending), plan: Some(plan()), ..Default::default() }).build(), false);
    assert_eq!(planned.flops, Some(1920000000.0));
    assert_eq!(planned.gpu_hours, None);
}

#[test]
fn the_report_renders_the_trainers_table_with_a_phase() {
    let rows = [row(&trained("dense", 8.0, 1.5, 0.6, 2.0), false), row(&job("new").build(), false)];
    let t = render(&rows, &[], None, ReportFormat::Text).unwrap();
    let header = t.lines().next().unwrap();
    assert!(header.starts_with("job    phase      model"), "{t}");
    assert!(header.ends_with("GPU-h to target  seed"), "{t}");
    assert!(
        t.lines()
            .nth(1)
            .unwrap()
            .contains("Succeeded  4l/32d/2h dense fp32  60.0K   50.0K   9.60e8  2     1.5000     8.000  40.0%      813    2.000  5.00 USD  1.000"),
        "{t}"
    );
    let csv = render(&rows, &[], None, ReportFormat::Csv).unwrap();
    assert_eq!(csv.lines().nth(1).unwrap(), "dense,4l/32d/2h dense fp32,60000,50000,960000000,2,1.5,8,0.4,812.6,2,5,USD,1,,7,,Succeeded");
    assert_eq!(csv.lines().nth(2).unwrap(), "new,4l/32d/2h dense fp32,,,,,,,,,,,USD,,,7,,-");
    let md = render(&rows, &[], None, ReportFormat::Markdown).unwrap();
    assert!(md.starts_with("| job | phase | model |") && md.contains("| new | - | 4l/32d/2h dense fp32 | - |"), "{md}");
    let json: serde_json::Value = serde_json::from_str(&render(&rows, &[], None, ReportFormat::Json).unwrap()).unwrap();
    assert_eq!(json[0]["perplexity"], 8.0);
    assert_eq!(json[1]["perplexity"], serde_json::Value::Null);
}

#[test]
fn ratios_against_the_baseline_in_every_format() {
    let rows = [row(&trained("dense", 8.0, 1.5, 0.6, 2.0), false), row(&trained("sparse", 8.4, 1.52, 0.5, 0.5), false)];
    let base = baseline(&rows, "dense", "namespace \"ml\"").unwrap();
    let t = render(&rows, &[], Some(base), ReportFormat::Text).unwrap();
    let (_, against) = t.split_once("\nagainst dense:\n").expect(&t);
    let lines: Vec<&str> = against.lines().collect();
    assert_eq!(lines[0], "job     FLOPs  GPU-h  cost   params  active  ppl     bits/byte Δ  zero-shot Δ");
    assert_eq!(lines[1], "dense   1.00×  1.00×  1.00×  1.00×   1.00×   1.000×  +0.0000      +0.0 pp");
    assert_eq!(lines[2], "sparse  1.00×  0.25×  0.25×  1.00×   1.00×   1.050×  +0.0200      -5.0 pp");
    let csv = render(&rows, &[], Some(base), ReportFormat::Csv).unwrap();
    assert!(csv.lines().next().unwrap().ends_with(",phase,flops_ratio,gpu_hours_ratio,cost_ratio,params_total_ratio,params_active_ratio,perplexity_ratio,bits_per_byte_delta,zero_shot_accuracy_delta"));
    let sparse: Vec<&str> = csv.lines().nth(2).unwrap().split(',').collect();
    assert_eq!(&sparse[18..21], ["1", "0.25", "0.25"]);
    let json: serde_json::Value = serde_json::from_str(&render(&rows, &[], Some(base), ReportFormat::Json).unwrap()).unwrap();
    assert_eq!(json[1]["vsBaseline"]["gpuHours"], 0.25);
    assert_eq!(json[1]["job"], "sparse");
    let md = render(&rows, &[], Some(base), ReportFormat::Markdown).unwrap();
    assert!(md.contains("Against `dense`:\n\n| job | FLOPs |"), "{md}");
}

#[test]
fn an_unknown_baseline_names_the_jobs_there_are() {
    let rows = [row(&job("a").build(), false), row(&job("b").build(), false)];
    let e = baseline(&rows, "c", "namespace \"ml\"").unwrap_err().to_string();
    assert_eq!(e, "--baseline \"c\": no TrainingJob of that name in namespace \"ml\" (it has a, b): name one of them, or pass -n");
    let e = baseline(&[], "c", "any namespace").unwrap_err().to_string();
    assert!(e.contains("there are none") && e.ends_with("as namespace/name"), "{e}");
}

/// A seed of an experiment: a trained job labelled with the experiment, its own seed, and the
/// tokens it took to reach the target.
fn seed_of(experiment: &str, seed: i64, bits: f64, gpu_hours: f64, tokens_to_target: i64) -> TrainingJob {
    let mut tj = trained(&format!("{experiment}-s{seed}"), 8.0, bits, 0.6, gpu_hours);
    tj.metadata.labels = Some([(EXPERIMENT_LABEL.to_string(), experiment.to_string())].into());
    tj.spec.training.seed = seed;
    tj.status.as_mut().unwrap().quality.as_mut().unwrap().tokens_to_target = Some(tokens_to_target);
    tj
}

#[test]
fn seeds_group_by_experiment_with_flops_to_target_from_the_status() {
    let jobs = [
        seed_of("baseline", 1, 1.50, 2.0, 3200),
        seed_of("baseline", 2, 1.52, 2.4, 3200),
        seed_of("recipe", 1, 1.49, 1.2, 1600),
        seed_of("recipe", 2, 1.51, 1.6, 2400),
        trained("alone", 8.0, 1.6, 0.6, 1.0),
    ];
    let r = seed_row(&jobs[2], false);
    assert_eq!((r.job.as_str(), r.seed, r.tokens_to_target), ("recipe", Some(1), Some(1600)));
    assert_eq!(r.flops_to_target, Some(300000.0 * 1600.0), "the plan's FLOPs per token times the tokens to the target");
    assert_eq!(seed_row(&jobs[2], true).job, "ml/recipe", "-A names the namespace");
    assert_eq!(seed_row(&jobs[4], false).job, "alone", "a job without the label is an experiment of its own");

    let rows: Vec<Row> = jobs.iter().map(|tj| seed_row(tj, false)).collect();
    let json: serde_json::Value = serde_json::from_str(&render_seeds(&rows, Some("baseline"), ReportFormat::Json).unwrap()).unwrap();
    let names: Vec<&str> = json.as_array().unwrap().iter().map(|g| g["job"].as_str().unwrap()).collect();
    assert_eq!(names, ["baseline", "recipe", "alone"]);
    assert_eq!(json[1]["seeds"], serde_json::json!([1, 2]));
    assert_eq!(json[1]["flopsToTarget"]["mean"], 300000.0 * 2000.0);
    // GPU-hours to target are half the bill in trained(): recipe 0.7 against baseline 1.1
    let ratio = json[1]["vsBaseline"]["gpuHoursToTarget"].as_f64().unwrap();
    assert!((ratio - 0.7 / 1.1).abs() < 1e-12, "{ratio}");
    assert_eq!(json[1]["vsBaseline"]["flopsToTarget"].as_f64().unwrap(), 2000.0 / 3200.0);
    let text = render_seeds(&rows, Some("baseline"), ReportFormat::Text).unwrap();
    assert!(text.lines().nth(2).unwrap().starts_with("recipe "), "{text}");
    assert!(text.contains("2 of 2"), "{text}");

    let e = render_seeds(&rows, Some("nope"), ReportFormat::Text).unwrap_err().to_string();
    assert!(e.contains("baseline, recipe, alone"), "{e}");
    // two jobs of one experiment with one seed are not two seeds
    let twice = [seed_row(&seed_of("x", 1, 1.5, 1.0, 10), false), seed_row(&seed_of("x", 1, 1.5, 1.0, 10), false)];
    assert!(render_seeds(&twice, None, ReportFormat::Text).unwrap_err().to_string().contains("seed 1"));
}

#[test]
fn wide_adds_the_attempt_restarts_step_and_budget_name_and_yaml_hold_the_rows() {
    let mut running = trained("dense", 8.0, 1.5, 0.6, 2.0);
    running.spec.budget.budget_ref = Some("team".into());
    let status = running.status.as_mut().unwrap();
    (status.attempt, status.restarts) = (Some(2), Some(1));
    let jobs = [running, job("new").build()];
    let rows: Vec<Row> = jobs.iter().map(|tj| row(tj, true)).collect();
    let wide: Vec<Vec<String>> = jobs.iter().map(wide_cells).collect();
    let t = render(&rows, &wide, None, ReportFormat::Wide).unwrap();
    let lines: Vec<&str> = t.lines().collect();
    assert!(lines[0].starts_with("job       phase ") && lines[0].ends_with("seed  attempt  restarts  step     budgetRef"), "{t}");
    assert!(lines[1].ends_with("7     2        1         100/100  team"), "{t}");
    assert!(lines[2].ends_with("7     -        -         -        -"), "{t}");
    // -A qualifies the rows; names are kubectl's, without the namespace
    assert_eq!(render(&rows, &wide, None, ReportFormat::Name).unwrap(), "trainingjob.frugal.dev/dense\ntrainingjob.frugal.dev/new\n");
    let base = baseline(&rows, "ml/dense", "any namespace").unwrap();
    let json: serde_json::Value = serde_json::from_str(&render(&rows, &wide, Some(base), ReportFormat::Json).unwrap()).unwrap();
    let yaml: serde_json::Value = serde_saphyr::from_str(&render(&rows, &wide, Some(base), ReportFormat::Yaml).unwrap()).unwrap();
    assert_eq!(yaml, json);
    assert_eq!(yaml[0]["vsBaseline"]["gpuHours"], 1.0);
    assert!(render(&rows, &wide, Some(base), ReportFormat::Wide).unwrap().contains("\nagainst ml/dense:\n"));
    let e = render_seeds(&rows, None, ReportFormat::Name).unwrap_err().to_string();
    assert!(e.contains("--seeds reports experiments"), "{e}");
}
