//! `kubectl frugal report`: one row per TrainingJob, from what its status says (the plan, the
//! trainer's quality and efficiency, the operator's bill), in the comparison table
//! `frugal-trainer report` prints for run reports (`frugal_api::report`), plus the phase; with
//! `--baseline`, every job against that one; with `--seeds`, one row per experiment (the jobs
//! labelled [`EXPERIMENT_LABEL`] alike, one per seed) over its seeds.

use anyhow::{Result, bail};
use kube::Api;
use kube::api::ListParams;
use serde::Serialize;

use frugal_api::TrainingJob;
use frugal_api::planner::ResolvedModel;
use frugal_api::report::seeds::EXPERIMENT_LABEL;
use frugal_api::report::{self, Row};

use crate::ReportFormat;
use crate::cluster::{self, Target};
use crate::output;

/// The job's row. `qualified` names it `namespace/name` (for a report over every namespace).
pub fn row(tj: &TrainingJob, qualified: bool) -> Row {
    let job = in_scope(tj, tj.metadata.name.as_deref().unwrap_or_default(), qualified);
    let spec = &tj.spec;
    let status = tj.status.as_ref();
    let plan = status.and_then(|s| s.plan.as_ref());
    let quality = status.and_then(|s| s.quality.as_ref());
    let cost = status.and_then(|s| s.cost.as_ref());
    let progress = status.and_then(|s| s.progress.as_ref()).filter(|p| p.tokens > 0);
    let zero_shot = quality.map(|q| &q.zero_shot).filter(|z| !z.is_empty());
    Row {
        job,
        model: ResolvedModel::from_spec(&spec.model).map_or("-".into(), |m| report::describe_model(&m, spec.training.precision)),
        params_total: plan.map(|p| p.parameters),
        params_active: plan.map(|p| p.active_parameters),
        // what it trained, once it has: the plan's total before
        flops: match (plan, progress) {
            (Some(p), Some(progress)) => Some(p.flops_per_token * progress.tokens as f64),
            (Some(p), None) => Some(p.total_flops),
            (None, _) => None,
        },
        gpus: plan.map(|p| i64::from(p.gpus)),
        bits_per_byte: quality.and_then(|q| q.bits_per_byte),
        perplexity: quality.and_then(|q| q.perplexity),
        zero_shot_accuracy: zero_shot.map(|z| z.iter().map(|r| r.accuracy).sum::<f64>() / z.len() as f64),
        tokens_per_second: status.and_then(|s| s.efficiency.as_ref()).map(|e| e.tokens_per_second),
        gpu_hours: cost.map(|c| c.gpu_hours),
        cost: cost.map(|c| c.cost),
        currency: cost.map(|c| c.currency.clone()).or_else(|| plan.map(|p| p.currency.clone())).unwrap_or_else(|| "USD".into()),
        gpu_hours_to_target: cost.and_then(|c| c.gpu_hours_to_target),
        tokens_to_target: quality.and_then(|q| q.tokens_to_target),
        flops_to_target: match (plan, quality.and_then(|q| q.tokens_to_target)) {
            (Some(p), Some(tokens)) => Some(p.flops_per_token * tokens as f64),
            _ => None,
        },
        target_reached: spec.data.quality_target.as_ref().map(|_| quality.is_some_and(|q| q.target_reached_time.is_some())),
        seed: u64::try_from(spec.training.seed).ok(),
        config_hash: None,
        phase: Some(status.and_then(|s| s.phase).map_or("-".into(), |p| format!("{p:?}"))),
        ..Row::default()
    }
    .with_quality_extras(quality)
}

/// The job's row under its experiment's name (the [`EXPERIMENT_LABEL`], else its own name), so
/// that the seeds of one experiment group together.
pub fn seed_row(tj: &TrainingJob, qualified: bool) -> Row {
    let mut r = row(tj, qualified);
    if let Some(experiment) = tj.metadata.labels.as_ref().and_then(|l| l.get(EXPERIMENT_LABEL)) {
        r.job = in_scope(tj, experiment, qualified);
    }
    r
}

/// `name` as a report names it: `namespace/name` when `qualified` (a report over every
/// namespace).
fn in_scope(tj: &TrainingJob, name: &str, qualified: bool) -> String {
    match (&tj.metadata.namespace, qualified) {
        (Some(ns), true) => format!("{ns}/{name}"),
        _ => name.to_string(),
    }
}

/// The report over seeds: one row per experiment, against the `baseline` experiment.
pub fn render_seeds(rows: &[Row], baseline: Option<&str>, format: ReportFormat) -> Result<String> {
    let format = match format {
        ReportFormat::Text => "text",
        ReportFormat::Markdown => "markdown",
        ReportFormat::Json | ReportFormat::Yaml => "json",
        ReportFormat::Csv => "csv",
        ReportFormat::Wide | ReportFormat::Name => bail!("--seeds reports experiments, not jobs: give -o text, csv, markdown, json or yaml"),
    };
    report::seeds::render(rows, baseline, format).map_err(anyhow::Error::msg)
}

/// The cells `-o wide` adds to a job's row: its current attempt, restarts, progress and the
/// budget it names.
pub fn wide_cells(tj: &TrainingJob) -> Vec<String> {
    let status = tj.status.as_ref();
    let number = |n: Option<i32>| n.map_or("-".into(), |n| n.to_string());
    vec![
        number(status.and_then(|s| s.attempt)),
        number(status.and_then(|s| s.restarts)),
        status.and_then(|s| s.progress.as_ref()).map_or("-".into(), |p| format!("{}/{}", p.step, p.total_steps)),
        tj.spec.budget.budget_ref.clone().unwrap_or_else(|| "-".into()),
    ]
}

const WIDE_HEADER: [&str; 4] = ["attempt", "restarts", "step", "budgetRef"];

/// The baseline's row among `rows`, found by name (or namespace/name).
pub fn baseline<'a>(rows: &'a [Row], name: &str, scope: &str) -> Result<&'a Row> {
    if let Some(row) = rows.iter().find(|r| r.job == name) {
        return Ok(row);
    }
    let known: Vec<&str> = rows.iter().map(|r| r.job.as_str()).collect();
    let listed = if known.is_empty() { "there are none".to_string() } else { format!("it has {}", known.join(", ")) };
    bail!(
        "--baseline {name:?}: no TrainingJob of that name in {scope} ({listed}): name one of them{}",
        if scope.starts_with("namespace") { ", or pass -n" } else { " as namespace/name" }
    )
}

/// A row with its ratios against the baseline, for JSON.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Compared<'a> {
    #[serde(flatten)]
    row: &'a Row,
    vs_baseline: &'a report::Ratios,
}

/// The report in `format`, with the ratios against `baseline` when one is given. `wide` holds
/// each row's [`wide_cells`], for `-o wide`.
pub fn render(rows: &[Row], wide: &[Vec<String>], baseline: Option<&Row>, format: ReportFormat) -> Result<String> {
    let ratios = baseline.map(|b| report::against(rows, b));
    let against = |table: String, r: &[report::Ratios]| {
        format!("{table}\nagainst {}:\n{}", baseline.map_or("", |b| b.job.as_str()), report::ratios_table(r).text())
    };
    Ok(match (format, ratios) {
        (ReportFormat::Text, None) => report::text(rows),
        (ReportFormat::Text, Some(r)) => against(report::text(rows), &r),
        (ReportFormat::Wide, ratios) => {
            let mut table = report::table(rows);
            table.header.extend(WIDE_HEADER.map(String::from));
            for (cells, extra) in table.rows.iter_mut().zip(wide) {
                cells.extend(extra.iter().cloned());
            }
            match ratios {
                None => table.text(),
                Some(r) => against(table.text(), &r),
            }
        }
        // without the namespace, as kubectl prints names
        (ReportFormat::Name, _) => output::names(output::TRAINING_JOB, rows.iter().map(|r| r.job.rsplit('/').next().unwrap_or_default())),
        (ReportFormat::Yaml, _) => output::yaml_of_json(&render(rows, wide, baseline, ReportFormat::Json)?)?,
        (ReportFormat::Markdown, None) => report::markdown(rows),
        (ReportFormat::Markdown, Some(r)) => {
            format!("{}\nAgainst `{}`:\n\n{}", report::markdown(rows), baseline.map_or("", |b| b.job.as_str()), report::ratios_table(&r).markdown())
        }
        (ReportFormat::Csv, None) => report::csv(rows),
        (ReportFormat::Csv, Some(r)) => report::csv_against(rows, &r),
        (ReportFormat::Json, None) => report::json(rows),
        (ReportFormat::Json, Some(r)) => {
            let compared: Vec<Compared> = rows.iter().zip(&r).map(|(row, vs_baseline)| Compared { row, vs_baseline }).collect();
            serde_json::to_string_pretty(&compared).expect("rows serialise") + "\n"
        }
    })
}

pub async fn run(target: &Target, all: bool, baseline: Option<&str>, seeds: bool, format: ReportFormat) -> Result<String> {
    let cluster = cluster::connect(target).await?;
    let api: Api<TrainingJob> = if all { Api::all(cluster.client.clone()) } else { Api::namespaced(cluster.client.clone(), &cluster.namespace) };
    let scope = if all { "any namespace".to_string() } else { format!("namespace {:?}", cluster.namespace) };
    let jobs = api.list(&ListParams::default()).await.map_err(|e| cluster::explain(e, "listing TrainingJobs"))?;
    if jobs.items.is_empty()
        && baseline.is_none()
        && matches!(format, ReportFormat::Text | ReportFormat::Wide | ReportFormat::Markdown | ReportFormat::Name)
    {
        eprintln!("No TrainingJobs in {scope}.");
        return Ok(String::new());
    }
    if seeds {
        let rows: Vec<Row> = jobs.items.iter().map(|tj| seed_row(tj, all)).collect();
        let out = render_seeds(&rows, baseline, format)?;
        return if format == ReportFormat::Yaml { output::yaml_of_json(&out) } else { Ok(out) };
    }
    let rows: Vec<Row> = jobs.items.iter().map(|tj| row(tj, all)).collect();
    let wide: Vec<Vec<String>> = jobs.items.iter().map(wide_cells).collect();
    let baseline = baseline.map(|name| self::baseline(&rows, name, &scope)).transpose()?;
    render(&rows, &wide, baseline, format)
}

#[cfg(test)]
mod tests;
