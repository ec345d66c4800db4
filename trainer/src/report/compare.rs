//! The comparison table of run reports: one row per report, in the shape models are compared by
//! (model, parameters total / active, FLOPs, GPUs, bits per byte, perplexity, zero-shot accuracy,
//! tokens/s, GPU-hours, cost, GPU-hours to target), as text, Markdown, JSON or CSV. The table is
//! `frugal_api::report`'s, which `kubectl frugal report` prints from TrainingJobs' statuses too;
//! this builds its rows from run reports.

use crate::report::summary::Summary;
use anyhow::{Context, Result};
use frugal_api::report;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The file a run writes its report to, in its checkpoint directory.
pub use crate::report::summary::REPORT_FILE;

/// A run report's row of the table.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(transparent)]
pub struct Row(pub report::Row);

impl std::ops::Deref for Row {
    type Target = report::Row;
    fn deref(&self) -> &report::Row {
        &self.0
    }
}

impl Row {
    pub fn from_summary(s: &Summary) -> Self {
        let q = s.quality.as_ref();
        let zs = q.map(|q| &q.zero_shot).filter(|z| !z.is_empty());
        Self(
            report::Row {
                job: s.job.clone(),
                model: s.model.clone(),
                params_total: Some(s.params_total),
                params_active: Some(s.params_active),
                flops: Some(s.total_flops),
                gpus: Some(s.gpus),
                bits_per_byte: q.and_then(|q| q.bits_per_byte),
                perplexity: q.and_then(|q| q.perplexity),
                zero_shot_accuracy: zs.map(|z| z.iter().map(|r| r.accuracy).sum::<f64>() / z.len() as f64),
                tokens_per_second: Some(s.tokens_per_second),
                gpu_hours: Some(s.device_hours),
                cost: Some(s.cost),
                currency: s.currency.clone(),
                gpu_hours_to_target: s.target.as_ref().and_then(|t| t.device_hours),
                tokens_to_target: s.target.as_ref().and_then(|t| t.tokens),
                flops_to_target: s
                    .target
                    .as_ref()
                    .and_then(|t| t.tokens)
                    .filter(|_| s.tokens > 0)
                    .map(|k| k as f64 * s.total_flops / s.tokens as f64),
                target_reached: s.target.as_ref().map(|t| t.reached),
                seed: Some(s.provenance.seed),
                config_hash: Some(s.provenance.config_hash.clone()),
                phase: None,
                ..report::Row::default()
            }
            .with_quality_extras(q),
        )
    }
}

/// Reads run reports: files, or directories holding `report.json` (searched recursively).
pub fn load(paths: &[PathBuf]) -> Result<Vec<Summary>> {
    let mut files = vec![];
    for p in paths {
        collect(p, &mut files)?;
    }
    files.sort();
    files
        .iter()
        .map(|f| {
            let text = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
            serde_json::from_slice(&text).with_context(|| format!("{} is not a run report", f.display()))
        })
        .collect()
}

fn collect(p: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    if p.is_dir() {
        for e in std::fs::read_dir(p).with_context(|| format!("listing {}", p.display()))? {
            let e = e?.path();
            if e.is_dir() || e.file_name().is_some_and(|n| n == REPORT_FILE) {
                collect(&e, out)?;
            }
        }
        Ok(())
    } else if p.exists() {
        out.push(p.to_path_buf());
        Ok(())
    } else {
        anyhow::bail!("{} does not exist", p.display())
    }
}

fn rows(rows: &[Row]) -> Vec<report::Row> {
    rows.iter().map(|r| r.0.clone()).collect()
}

/// An aligned text table.
pub fn text(rows: &[Row]) -> String {
    report::text(&self::rows(rows))
}

/// A Markdown table.
pub fn markdown(rows: &[Row]) -> String {
    report::markdown(&self::rows(rows))
}

pub fn json(rows: &[Row]) -> String {
    report::json(&self::rows(rows))
}

/// CSV with raw numbers (empty where a value is missing).
pub fn csv(rows: &[Row]) -> String {
    report::csv(&self::rows(rows))
}

/// The table in `format` (text, markdown, json or csv): one row per run, or with `seeds` one
/// row per job over its seeds; with a `baseline` job, every row (job) against it.
pub fn render(rows: &[Row], format: &str, seeds: bool, baseline: Option<&str>) -> Result<String> {
    let rows = self::rows(rows);
    if !["text", "markdown", "json", "csv"].contains(&format) {
        anyhow::bail!("--format {format:?}: write text, markdown, json or csv");
    }
    if seeds {
        return report::seeds::render(&rows, baseline, format).map_err(anyhow::Error::msg);
    }
    let Some(name) = baseline else {
        return Ok(match format {
            "text" => report::text(&rows),
            "markdown" => report::markdown(&rows),
            "json" => report::json(&rows),
            _ => report::csv(&rows),
        });
    };
    let matching: Vec<&report::Row> = rows.iter().filter(|r| r.job == name).collect();
    let base = match matching.as_slice() {
        [one] => *one,
        [] => anyhow::bail!("--baseline {name:?}: no run of that job among the reports"),
        _ => anyhow::bail!("--baseline {name:?}: {} runs of that job (seeds?): add --seeds to compare jobs over their seeds", matching.len()),
    };
    let ratios = report::against(&rows, base);
    Ok(match format {
        "text" => format!("{}\nagainst {name}:\n{}", report::text(&rows), report::ratios_table(&ratios).text()),
        "markdown" => format!("{}\nAgainst `{name}`:\n\n{}", report::markdown(&rows), report::ratios_table(&ratios).markdown()),
        // each row with its ratios under vsBaseline, as kubectl frugal report writes them
        "json" => {
            let mut out = vec![];
            for (row, r) in rows.iter().zip(&ratios) {
                let mut v = serde_json::to_value(row)?;
                v["vsBaseline"] = serde_json::to_value(r)?;
                out.push(v);
            }
            serde_json::to_string_pretty(&out)? + "\n"
        }
        _ => report::csv_against(&rows, &ratios),
    })
}
