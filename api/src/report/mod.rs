//! The comparison table: one row per run, in the shape models are compared by (model,
//! parameters total / active, FLOPs, GPUs, bits per byte, perplexity, zero-shot accuracy,
//! tokens/s, GPU-hours, cost, GPU-hours to target), as text, Markdown, CSV or JSON, and the
//! ratios of each run against a baseline run.
//!
//! The trainer builds rows from its run reports (`frugal-trainer report`), `kubectl frugal
//! report` from TrainingJobs' statuses; both print them here. A value a run does not have is
//! `None` and prints as `-` (empty in CSV), never as a made-up number.

pub mod seeds;

use serde::Serialize;

use crate::planner::{ResolvedAttention, ResolvedModel};
use crate::v1alpha1::{FeedForward, Norm, Precision};

#[derive(Clone, Debug, Serialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    pub job: String,
    pub model: String,
    pub params_total: Option<i64>,
    pub params_active: Option<i64>,
    /// Training FLOPs.
    pub flops: Option<f64>,
    pub gpus: Option<i64>,
    pub bits_per_byte: Option<f64>,
    pub perplexity: Option<f64>,
    /// Mean over the zero-shot sets.
    pub zero_shot_accuracy: Option<f64>,
    pub tokens_per_second: Option<f64>,
    /// GPU-hours, or CPU-hours for a CPU run of the trainer (gpus = 0).
    pub gpu_hours: Option<f64>,
    pub cost: Option<f64>,
    pub currency: String,
    pub gpu_hours_to_target: Option<f64>,
    pub tokens_to_target: Option<i64>,
    /// Training FLOPs up to the evaluation that reached the target (a run report's; a
    /// TrainingJob's status has none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flops_to_target: Option<f64>,
    /// None when the run had no quality target.
    pub target_reached: Option<bool>,
    pub seed: Option<u64>,
    pub config_hash: Option<String>,
    /// A TrainingJob's phase (Pending, Queued, Running, ...); a run report has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// The int8 export's validation bits per byte (spec.export.quantize), and its difference
    /// from the unquantized model's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub int8_bits_per_byte: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub int8_bits_per_byte_delta: Option<f64>,
    /// The int8 export's CPU inference tokens/s over the unquantized model's, measured side by
    /// side.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub int8_speedup: Option<f64>,
    /// A distilled run's teacher: its validation bits per byte on the same evaluation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub teacher_bits_per_byte: Option<f64>,
}

impl Row {
    /// Fills the export and distillation columns from a job's quality.
    pub fn with_quality_extras(mut self, quality: Option<&crate::v1alpha1::QualityStatus>) -> Self {
        if let Some(q) = quality.and_then(|q| q.quantized.as_ref()) {
            self.int8_bits_per_byte = q.bits_per_byte;
            self.int8_bits_per_byte_delta = q.bits_per_byte_delta;
            self.int8_speedup = ratio(Some(q.tokens_per_second), Some(q.unquantized_tokens_per_second));
        }
        if let Some(d) = quality.and_then(|q| q.distillation.as_ref()) {
            self.teacher_bits_per_byte = d.teacher.bits_per_byte;
        }
        self
    }

    fn has_int8(&self) -> bool {
        self.int8_bits_per_byte.is_some()
    }

    fn has_teacher(&self) -> bool {
        self.teacher_bits_per_byte.is_some()
    }
}

/// A run against the baseline: ratios of what it cost, differences of what it reached.
#[derive(Clone, Debug, Serialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Ratios {
    pub job: String,
    pub flops: Option<f64>,
    pub gpu_hours: Option<f64>,
    /// Only between runs of the same currency.
    pub cost: Option<f64>,
    pub params_total: Option<f64>,
    pub params_active: Option<f64>,
    pub perplexity: Option<f64>,
    /// Bits per byte less the baseline's (negative: better).
    pub bits_per_byte_delta: Option<f64>,
    /// Mean zero-shot accuracy less the baseline's, as a fraction (positive: better).
    pub zero_shot_accuracy_delta: Option<f64>,
}

/// `a / b`, when both are known and the ratio is a finite number.
pub(crate) fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    let (a, b) = (a?, b?);
    let r = a / b;
    (b != 0.0 && r.is_finite()).then_some(r)
}

pub(crate) fn delta(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    Some(a? - b?).filter(|d| d.is_finite())
}

/// Each row against `baseline`.
pub fn against(rows: &[Row], baseline: &Row) -> Vec<Ratios> {
    let b = baseline;
    let count = |v: Option<i64>| v.map(|x| x as f64);
    rows.iter()
        .map(|r| Ratios {
            job: r.job.clone(),
            flops: ratio(r.flops, b.flops),
            gpu_hours: ratio(r.gpu_hours, b.gpu_hours),
            cost: if r.currency == b.currency { ratio(r.cost, b.cost) } else { None },
            params_total: ratio(count(r.params_total), count(b.params_total)),
            params_active: ratio(count(r.params_active), count(b.params_active)),
            perplexity: ratio(r.perplexity, b.perplexity),
            bits_per_byte_delta: delta(r.bits_per_byte, b.bits_per_byte),
            zero_shot_accuracy_delta: delta(r.zero_shot_accuracy, b.zero_shot_accuracy),
        })
        .collect()
}

/// A count in a few characters: 1.25M, 3.4K.
pub fn human(x: f64) -> String {
    if x >= 1e9 {
        format!("{:.2}B", x / 1e9)
    } else if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1}K", x / 1e3)
    } else {
        format!("{x}")
    }
}

/// The model in a few words: shape, feed-forward (dense or MoE), attention and precision, such as
/// `4l/32d/2h dense fp32` or `8l/512d/8h moe 16x128 top-3+1 sw256 bf16`.
pub fn describe_model(m: &ResolvedModel, precision: Precision) -> String {
    let ffn = match &m.moe {
        Some(e) => format!(
            "MoE {}x{} top-{}{}",
            e.experts,
            e.expert_hidden,
            e.top_k,
            if e.shared_experts > 0 { format!("+{}", e.shared_experts) } else { String::new() }
        ),
        None => "dense".into(),
    };
    let attention = match m.attention {
        ResolvedAttention::Dense => String::new(),
        ResolvedAttention::SlidingWindow { window } => format!(" sw{window}"),
        ResolvedAttention::BlockSparse { .. } => " block-sparse".into(),
    };
    // the block, where it is not GPT-2's
    let norm = if m.norm == Norm::RmsNorm { " rmsnorm" } else { "" };
    let feed_forward = if m.feed_forward == FeedForward::Swiglu { " swiglu" } else { "" };
    format!("{}L/{}d/{}h{norm}{feed_forward} {ffn}{attention} {precision:?}", m.layers, m.d_model, m.heads).to_lowercase()
}

/// Text cells under a header: rendered aligned for a terminal, as Markdown or as CSV.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Table {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self { header: header.iter().map(|h| h.to_string()).collect(), rows: Vec::new() }
    }

    pub fn push(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    /// Columns padded to their widest cell, two spaces apart.
    pub fn text(&self) -> String {
        let mut width: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (w, c) in width.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cols: &[String]| -> String {
            cols.iter()
                .zip(&width)
                .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        };
        let mut out = vec![line(&self.header)];
        out.extend(self.rows.iter().map(|r| line(r)));
        out.join("\n") + "\n"
    }

    /// A GitHub-flavoured Markdown table.
    pub fn markdown(&self) -> String {
        let line = |cols: &[String]| format!("| {} |", cols.iter().map(|c| c.replace('|', "\\|")).collect::<Vec<_>>().join(" | "));
        let mut out = vec![line(&self.header), format!("|{}", "---|".repeat(self.header.len()))];
        out.extend(self.rows.iter().map(|r| line(r)));
        out.join("\n") + "\n"
    }

    /// RFC 4180 CSV: a field with a comma, quote or newline is quoted.
    pub fn csv(&self) -> String {
        let esc = |s: &String| if s.contains([',', '"', '\n']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.clone() };
        let line = |cols: &[String]| cols.iter().map(esc).collect::<Vec<_>>().join(",");
        let mut out = String::new();
        for r in std::iter::once(&self.header).chain(&self.rows) {
            out += &line(r);
            out.push('\n');
        }
        out
    }
}

pub(crate) fn opt(v: Option<f64>, digits: usize) -> String {
    v.filter(|x| x.is_finite()).map_or("-".into(), |x| format!("{x:.digits$}"))
}

pub(crate) fn hours(h: f64) -> String {
    // none at all: a CPU job's pods hold no GPUs
    if h == 0.0 {
        "0".into()
    } else if h < 0.01 {
        format!("{h:.2e}")
    } else {
        format!("{h:.3}")
    }
}

const HEADER: [&str; 14] =
    ["job", "model", "params", "active", "FLOPs", "GPUs", "bits/byte", "ppl", "zero-shot", "tok/s", "GPU-h", "cost", "GPU-h to target", "seed"];

/// The table of `rows` for people: a `phase` column after the job when any row has a phase.
pub fn table(rows: &[Row]) -> Table {
    let phases = rows.iter().any(|r| r.phase.is_some());
    let (int8, teacher) = (rows.iter().any(Row::has_int8), rows.iter().any(Row::has_teacher));
    let mut header: Vec<&str> = HEADER.to_vec();
    if phases {
        header.insert(1, "phase");
    }
    if int8 {
        header.extend(["int8 bits/byte", "int8 Δ", "int8 speed"]);
    }
    if teacher {
        header.push("teacher bits/byte");
    }
    let mut t = Table::new(&header);
    for r in rows {
        let count = |v: Option<i64>| v.map_or("-".into(), |x| human(x as f64));
        let mut cells = vec![
            r.job.clone(),
            r.model.clone(),
            count(r.params_total),
            count(r.params_active),
            r.flops.filter(|f| f.is_finite()).map_or("-".into(), |f| format!("{f:.2e}")),
            match r.gpus {
                Some(0) => "0 (CPU)".into(),
                Some(g) => g.to_string(),
                None => "-".into(),
            },
            opt(r.bits_per_byte, 4),
            opt(r.perplexity, 3),
            r.zero_shot_accuracy.filter(|a| a.is_finite()).map_or("-".into(), |a| format!("{:.1}%", a * 100.0)),
            opt(r.tokens_per_second, 0),
            r.gpu_hours.filter(|h| h.is_finite()).map_or("-".into(), hours),
            r.cost.filter(|c| c.is_finite()).map_or("-".into(), |c| format!("{c:.2} {}", r.currency)),
            match (r.target_reached, r.gpu_hours_to_target) {
                (Some(true), Some(h)) => hours(h),
                (Some(_), _) => "not reached".into(),
                (None, _) => "-".into(),
            },
            r.seed.map_or("-".into(), |s| s.to_string()),
        ];
        if phases {
            cells.insert(1, r.phase.clone().unwrap_or_else(|| "-".into()));
        }
        if int8 {
            cells.extend([
                opt(r.int8_bits_per_byte, 4),
                r.int8_bits_per_byte_delta.filter(|d| d.is_finite()).map_or("-".into(), |d| format!("{d:+.4}")),
                times(r.int8_speedup),
            ]);
        }
        if teacher {
            cells.push(opt(r.teacher_bits_per_byte, 4));
        }
        t.push(cells);
    }
    t
}

/// An aligned text table.
pub fn text(rows: &[Row]) -> String {
    table(rows).text()
}

pub fn markdown(rows: &[Row]) -> String {
    table(rows).markdown()
}

pub fn json(rows: &[Row]) -> String {
    serde_json::to_string_pretty(rows).expect("rows serialise") + "\n"
}

const CSV_HEADER: [&str; 17] = [
    "job",
    "model",
    "params_total",
    "params_active",
    "flops",
    "gpus",
    "bits_per_byte",
    "perplexity",
    "zero_shot_accuracy",
    "tokens_per_second",
    "gpu_hours",
    "cost",
    "currency",
    "gpu_hours_to_target",
    "tokens_to_target",
    "seed",
    "config_hash",
];

pub(crate) fn raw<T: ToString>(v: Option<T>) -> String {
    v.map_or(String::new(), |x| x.to_string())
}

/// CSV with raw numbers (empty where a value is missing); a last `phase` column when any row has
/// a phase.
pub fn csv(rows: &[Row]) -> String {
    csv_table(rows).csv()
}

fn csv_table(rows: &[Row]) -> Table {
    let phases = rows.iter().any(|r| r.phase.is_some());
    let (int8, teacher) = (rows.iter().any(Row::has_int8), rows.iter().any(Row::has_teacher));
    let mut header: Vec<&str> = CSV_HEADER.to_vec();
    if phases {
        header.push("phase");
    }
    if int8 {
        header.extend(["int8_bits_per_byte", "int8_bits_per_byte_delta", "int8_speedup"]);
    }
    if teacher {
        header.push("teacher_bits_per_byte");
    }
    let mut t = Table::new(&header);
    for r in rows {
        let mut fields = vec![
            r.job.clone(),
            r.model.clone(),
            raw(r.params_total),
            raw(r.params_active),
            raw(r.flops),
            raw(r.gpus),
            raw(r.bits_per_byte),
            raw(r.perplexity),
            raw(r.zero_shot_accuracy),
            raw(r.tokens_per_second),
            raw(r.gpu_hours),
            raw(r.cost),
            r.currency.clone(),
            raw(r.gpu_hours_to_target),
            raw(r.tokens_to_target),
            raw(r.seed),
            r.config_hash.clone().unwrap_or_default(),
        ];
        if phases {
            fields.push(r.phase.clone().unwrap_or_default());
        }
        if int8 {
            fields.extend([raw(r.int8_bits_per_byte), raw(r.int8_bits_per_byte_delta), raw(r.int8_speedup)]);
        }
        if teacher {
            fields.push(raw(r.teacher_bits_per_byte));
        }
        t.push(fields);
    }
    t
}

fn times(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{x:.2}×"))
}

/// The ratios as a table for people: costs as multiples of the baseline's, quality as the
/// difference from it.
pub fn ratios_table(ratios: &[Ratios]) -> Table {
    let mut t = Table::new(&["job", "FLOPs", "GPU-h", "cost", "params", "active", "ppl", "bits/byte Δ", "zero-shot Δ"]);
    for r in ratios {
        t.push(vec![
            r.job.clone(),
            times(r.flops),
            times(r.gpu_hours),
            times(r.cost),
            times(r.params_total),
            times(r.params_active),
            r.perplexity.map_or("-".into(), |x| format!("{x:.3}×")),
            r.bits_per_byte_delta.map_or("-".into(), |d| format!("{d:+.4}")),
            r.zero_shot_accuracy_delta.map_or("-".into(), |d| format!("{:+.1} pp", d * 100.0)),
        ]);
    }
    t
}

/// The rows' CSV with the ratios against the baseline as more columns, empty where one is
/// unknown.
pub fn csv_against(rows: &[Row], ratios: &[Ratios]) -> String {
    let mut t = csv_table(rows);
    t.header.extend(
        [
            "flops_ratio",
            "gpu_hours_ratio",
            "cost_ratio",
            "params_total_ratio",
            "params_active_ratio",
            "perplexity_ratio",
            "bits_per_byte_delta",
            "zero_shot_accuracy_delta",
        ]
        .map(String::from),
    );
    for (fields, r) in t.rows.iter_mut().zip(ratios) {
        fields.extend([
            raw(r.flops),
            raw(r.gpu_hours),
            raw(r.cost),
            raw(r.params_total),
            raw(r.params_active),
            raw(r.perplexity),
            raw(r.bits_per_byte_delta),
            raw(r.zero_shot_accuracy_delta),
        ]);
    }
    t.csv()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(job: &str) -> Row {
        Row {
            job: job.into(),
            model: "4l/32d/2h dense fp32".into(),
            params_total: Some(2_000_000),
            params_active: Some(250_000),
            flops: Some(4.0e15),
            gpus: Some(2),
            bits_per_byte: Some(1.25),
            perplexity: Some(8.0),
            zero_shot_accuracy: Some(0.5),
            tokens_per_second: Some(1234.4),
            gpu_hours: Some(2.0),
            cost: Some(5.0),
            currency: "USD".into(),
            gpu_hours_to_target: Some(1.5),
            tokens_to_target: Some(1000),
            target_reached: Some(true),
            seed: Some(7),
            config_hash: Some("abc".into()),
            phase: None,
            ..Row::default()
        }
    }

    #[test]
    fn the_text_table_aligns_and_prints_what_is_missing_as_a_dash() {
        let missing = Row { job: "new".into(), model: "-".into(), currency: "USD".into(), ..Row::default() };
        let out = text(&[run("base"), missing]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "job   model                 params  active  FLOPs    GPUs  bits/byte  ppl    zero-shot  tok/s  GPU-h  cost      GPU-h to target  seed"
        );
        assert_eq!(
            lines[1],
            "base  4l/32d/2h dense fp32  2.00M   250.0K  4.00e15  2     1.2500     8.000  50.0%      1234   2.000  5.00 USD  1.500            7"
        );
        assert_eq!(
            lines[2],
            "new   -                     -       -       -        -     -          -      -          -      -      -         -                -"
        );
        // no row has a phase: no phase column, as in the trainer's table
        assert!(!lines[0].contains("phase"));
    }

    #[test]
    fn a_phase_adds_a_column_to_every_format() {
        let rows = [Row { phase: Some("Succeeded".into()), ..run("a") }, run("b")];
        let t = text(&rows);
        assert!(t.lines().next().unwrap().starts_with("job  phase      model"), "{t}");
        assert!(t.lines().nth(2).unwrap().starts_with("b    -          4l/32d"), "{t}");
        let c = csv(&rows);
        assert!(c.lines().next().unwrap().ends_with(",config_hash,phase"), "{c}");
        assert!(c.lines().nth(1).unwrap().ends_with(",abc,Succeeded"), "{c}");
        assert!(c.lines().nth(2).unwrap().ends_with(",abc,"), "{c}");
        let j: serde_json::Value = serde_json::from_str(&json(&rows)).unwrap();
        assert_eq!(j[0]["phase"], "Succeeded");
        assert!(j[1].get("phase").is_none(), "no phase, no key");
    }

    #[test]
    fn csv_has_raw_numbers_and_quotes_what_needs_it() {
        let rows = [Row { model: "a, b".into(), ..run("x") }, Row { job: "y".into(), currency: "USD".into(), ..Row::default() }];
        let c = csv(&rows);
        let lines: Vec<&str> = c.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[1], "x,\"a, b\",2000000,250000,4000000000000000,2,1.25,8,0.5,1234.4,2,5,USD,1.5,1000,7,abc");
        assert_eq!(lines[2], "y,,,,,,,,,,,,USD,,,,");
        assert_eq!(lines[2].split(',').count(), 17);
    }

    #[test]
    fn an_int8_export_and_a_teacher_add_their_columns() {
        let quantized = Row {
            int8_bits_per_byte: Some(1.2625),
            int8_bits_per_byte_delta: Some(0.0125),
            int8_speedup: Some(1.5),
            teacher_bits_per_byte: Some(1.1),
            ..run("q")
        };
        let t = text(&[quantized, run("plain")]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].ends_with("seed  int8 bits/byte  int8 Δ   int8 speed  teacher bits/byte"), "{t}");
        assert!(lines[1].ends_with("7     1.2625          +0.0125  1.50×       1.1000"), "{t}");
        assert!(lines[2].ends_with("7     -               -        -           -"), "{t}");
        let c = csv(&[Row { int8_bits_per_byte: Some(1.25), ..run("q") }]);
        assert!(c.lines().next().unwrap().ends_with(",config_hash,int8_bits_per_byte,int8_bits_per_byte_delta,int8_speedup"), "{c}");
        assert!(c.lines().nth(1).unwrap().ends_with(",abc,1.25,,"), "{c}");
        // without them, no columns
        assert!(!text(&[run("plain")]).contains("int8"));
    }

    #[test]
    fn markdown_is_a_github_table() {
        let out = markdown(&[Row { model: "a|b".into(), ..run("x") }]);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("| job | model | params |"), "{out}");
        assert_eq!(lines[1], format!("|{}", "---|".repeat(14)));
        assert!(lines[2].starts_with("| x | a\\|b | 2.00M | 250.0K | 4.00e15 | 2 |"), "{out}");
    }

    #[test]
    fn cpu_runs_and_targets_not_reached() {
        let cpu = Row { gpus: Some(0), target_reached: Some(false), gpu_hours_to_target: None, gpu_hours: Some(0.004), ..run("cpu") };
        let unbilled = Row { gpu_hours: Some(0.0), ..cpu.clone() };
        let t = table(&[cpu, unbilled]);
        assert_eq!(t.rows[0][5], "0 (CPU)");
        assert_eq!(t.rows[0][10], "4.00e-3");
        assert_eq!(t.rows[1][10], "0");
        assert_eq!(t.rows[0][12], "not reached");
        let no_target = Row { target_reached: None, ..run("x") };
        assert_eq!(table(&[no_target]).rows[0][12], "-");
    }

    #[test]
    fn ratios_against_a_baseline() {
        let base = run("base");
        let sparse = Row {
            params_active: Some(62_500),
            flops: Some(1.0e15),
            gpu_hours: Some(0.5),
            cost: Some(1.25),
            perplexity: Some(8.8),
            bits_per_byte: Some(1.3),
            zero_shot_accuracy: Some(0.47),
            ..run("sparse")
        };
        let r = against(&[base.clone(), sparse], &base);
        assert_eq!(r[0].flops, Some(1.0));
        assert_eq!(r[0].bits_per_byte_delta, Some(0.0));
        let s = &r[1];
        assert_eq!((s.flops, s.gpu_hours, s.cost, s.params_total, s.params_active), (Some(0.25), Some(0.25), Some(0.25), Some(1.0), Some(0.25)));
        assert!((s.perplexity.unwrap() - 1.1).abs() < 1e-12);
        assert!((s.bits_per_byte_delta.unwrap() - 0.05).abs() < 1e-12);
        assert!((s.zero_shot_accuracy_delta.unwrap() + 0.03).abs() < 1e-12);
        let t = ratios_table(&r).text();
        let line = t.lines().nth(2).unwrap();
        assert_eq!(line, "sparse  0.25×  0.25×  0.25×  1.00×   0.25×   1.100×  +0.0500      -3.0 pp");
    }

    #[test]
    fn ratios_need_both_values_a_nonzero_baseline_and_one_currency() {
        let base = Row { gpu_hours: Some(0.0), perplexity: None, ..run("base") };
        let other = Row { currency: "EUR".into(), zero_shot_accuracy: None, ..run("other") };
        let r = &against(&[other], &base)[0];
        assert_eq!(r.gpu_hours, None, "a baseline of 0 GPU-hours (a CPU job) has no ratio");
        assert_eq!(r.cost, None, "EUR against USD");
        assert_eq!(r.perplexity, None);
        assert_eq!(r.zero_shot_accuracy_delta, None);
        let t = ratios_table(std::slice::from_ref(r));
        assert_eq!(t.rows[0], ["other", "1.00×", "-", "-", "1.00×", "1.00×", "-", "+0.0000", "-"]);
        let c = csv_against(&[run("other")], std::slice::from_ref(r));
        let lines: Vec<&str> = c.lines().collect();
        assert!(lines[0].ends_with(",config_hash,flops_ratio,gpu_hours_ratio,cost_ratio,params_total_ratio,params_active_ratio,perplexity_ratio,bits_per_byte_delta,zero_shot_accuracy_delta"));
        assert!(lines[1].ends_with(",abc,1,,,1,1,,0,"), "{}", lines[1]);
    }

    #[test]
    fn models_are_described_in_a_few_words() {
        use crate::planner::ResolvedMoe;
        use crate::v1alpha1::Positions;
        let mut m = ResolvedModel {
            layers: 4,
            d_model: 32,
            heads: 2,
            seq_len: 16,
            vocab_size: 257,
            ffn_hidden: 128,
            positions: Positions::Learned,
            tied_embeddings: true,
            bias: true,
            norm: Norm::LayerNorm,
            feed_forward: FeedForward::Gelu,
            moe: None,
            attention: ResolvedAttention::Dense,
        };
        assert_eq!(describe_model(&m, Precision::Fp32), "4l/32d/2h dense fp32");
        m.moe = Some(ResolvedMoe {
            experts: 16,
            top_k: 3,
            shared_experts: 1,
            expert_hidden: 128,
            every_n_layers: 1,
            capacity_factor: 1.25,
            load_balance_weight: 0.01,
            normalize_top_k: false,
        });
        m.attention = ResolvedAttention::SlidingWindow { window: 8 };
        assert_eq!(describe_model(&m, Precision::Bf16), "4l/32d/2h moe 16x128 top-3+1 sw8 bf16");
        (m.norm, m.feed_forward) = (Norm::RmsNorm, FeedForward::Swiglu);
        assert_eq!(describe_model(&m, Precision::Bf16), "4l/32d/2h rmsnorm swiglu moe 16x128 top-3+1 sw8 bf16");
    }
}
