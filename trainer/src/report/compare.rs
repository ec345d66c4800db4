//! The comparison table: one row per run report, in the shape models are compared by (model,
//! parameters total / active, FLOPs, GPUs, bits per byte, perplexity, zero-shot accuracy,
//! tokens/s, GPU-hours, cost, GPU-hours to target), as text, JSON or CSV.

use crate::report::summary::{Summary, human};
use anyhow::{Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The file a run writes its report to, in its checkpoint directory.
pub use crate::report::summary::REPORT_FILE;

#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    pub job: String,
    pub model: String,
    pub params_total: i64,
    pub params_active: i64,
    pub flops: f64,
    pub gpus: i64,
    pub bits_per_byte: Option<f64>,
    pub perplexity: Option<f64>,
    /// Mean over the zero-shot sets.
    pub zero_shot_accuracy: Option<f64>,
    pub tokens_per_second: f64,
    /// GPU-hours, or CPU-hours for CPU runs (gpus = 0).
    pub gpu_hours: f64,
    pub cost: f64,
    pub currency: String,
    pub gpu_hours_to_target: Option<f64>,
    pub tokens_to_target: Option<i64>,
    /// None when the run had no quality target.
    pub target_reached: Option<bool>,
    pub seed: u64,
    pub config_hash: String,
}

impl Row {
    pub fn from_summary(s: &Summary) -> Self {
        let q = s.quality.as_ref();
        let zs = q.map(|q| &q.zero_shot).filter(|z| !z.is_empty());
        Self {
            job: s.job.clone(),
            model: s.model.clone(),
            params_total: s.params_total,
            params_active: s.params_active,
            flops: s.total_flops,
            gpus: s.gpus,
            bits_per_byte: q.and_then(|q| q.bits_per_byte),
            perplexity: q.and_then(|q| q.perplexity),
            zero_shot_accuracy: zs.map(|z| z.iter().map(|r| r.accuracy).sum::<f64>() / z.len() as f64),
            tokens_per_second: s.tokens_per_second,
            gpu_hours: s.device_hours,
            cost: s.cost,
            currency: s.currency.clone(),
            gpu_hours_to_target: s.target.as_ref().and_then(|t| t.device_hours),
            tokens_to_target: s.target.as_ref().and_then(|t| t.tokens),
            target_reached: s.target.as_ref().map(|t| t.reached),
            seed: s.provenance.seed,
            config_hash: s.provenance.config_hash.clone(),
        }
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

fn opt(v: Option<f64>, digits: usize) -> String {
    v.filter(|x| x.is_finite()).map_or("-".into(), |x| format!("{x:.digits$}"))
}

const HEADER: [&str; 14] =
    ["job", "model", "params", "active", "FLOPs", "GPUs", "bits/byte", "ppl", "zero-shot", "tok/s", "GPU-h", "cost", "GPU-h to target", "seed"];

fn cells(r: &Row) -> [String; 14] {
    let hours = |h: f64| if h < 0.01 { format!("{h:.2e}") } else { format!("{h:.3}") };
    [
        r.job.clone(),
        r.model.clone(),
        human(r.params_total as f64),
        human(r.params_active as f64),
        format!("{:.2e}", r.flops),
        if r.gpus == 0 { "0 (CPU)".into() } else { r.gpus.to_string() },
        opt(r.bits_per_byte, 4),
        opt(r.perplexity, 3),
        r.zero_shot_accuracy.map_or("-".into(), |a| format!("{:.1}%", a * 100.0)),
        format!("{:.0}", r.tokens_per_second),
        hours(r.gpu_hours),
        format!("{:.2} {}", r.cost, r.currency),
        match (r.target_reached, r.gpu_hours_to_target) {
            (Some(true), Some(h)) => hours(h),
            (Some(_), _) => "not reached".into(),
            (None, _) => "-".into(),
        },
        r.seed.to_string(),
    ]
}

/// An aligned text table.
pub fn text(rows: &[Row]) -> String {
    let body: Vec<[String; 14]> = rows.iter().map(cells).collect();
    let mut width: Vec<usize> = HEADER.iter().map(|h| h.chars().count()).collect();
    for r in &body {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cols: Vec<String>| -> String {
        cols.iter()
            .zip(&width)
            .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = vec![line(HEADER.iter().map(|s| s.to_string()).collect())];
    out.extend(body.into_iter().map(|r| line(r.to_vec())));
    out.join("\n") + "\n"
}

pub fn json(rows: &[Row]) -> String {
    serde_json::to_string_pretty(rows).expect("rows serialise") + "\n"
}

/// CSV with raw numbers (empty where a value is missing).
pub fn csv(rows: &[Row]) -> String {
    let esc = |s: &str| if s.contains([',', '"', '\n']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() };
    let num = |v: Option<f64>| v.map_or(String::new(), |x| x.to_string());
    let mut out = String::from(
        "job,model,params_total,params_active,flops,gpus,bits_per_byte,perplexity,zero_shot_accuracy,tokens_per_second,gpu_hours,cost,currency,gpu_hours_to_target,tokens_to_target,seed,config_hash\n",
    );
    for r in rows {
        let fields = [
            esc(&r.job),
            esc(&r.model),
            r.params_total.to_string(),
            r.params_active.to_string(),
            r.flops.to_string(),
            r.gpus.to_string(),
            num(r.bits_per_byte),
            num(r.perplexity),
            num(r.zero_shot_accuracy),
            r.tokens_per_second.to_string(),
            r.gpu_hours.to_string(),
            r.cost.to_string(),
            esc(&r.currency),
            num(r.gpu_hours_to_target),
            r.tokens_to_target.map_or(String::new(), |t| t.to_string()),
            r.seed.to_string(),
            r.config_hash.clone(),
        ];
        out += &fields.join(",");
        out.push('\n');
    }
    out
}
