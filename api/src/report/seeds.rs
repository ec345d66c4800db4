//! Runs of one job over several seeds, summarised: each job's mean with the seeds' range
//! (bits per byte, perplexity, zero-shot accuracy, tokens/s, and the FLOPs and device-hours it
//! took to reach the quality target), and against a baseline job the ratio of the means. The
//! runs of a job are the rows that carry its name; two runs of one job with one seed, or with
//! different parameter counts, are not seeds of one configuration and are refused.

use serde::Serialize;

use super::{Row, Table, delta, hours, human, opt, ratio, raw};

/// The label that makes TrainingJobs the seeds of one experiment in a report over seeds
/// (`kubectl frugal report --seeds`): the same value on each, and its own `spec.training.seed`.
pub const EXPERIMENT_LABEL: &str = "frugal.dev/experiment";

/// A value over the seeds: mean, lowest and highest.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct Spread {
    pub mean: f64,
    pub min: f64,
    pub max: f64,
    /// Seeds the value is known for.
    pub n: usize,
}

impl Spread {
    /// Over the finite values; None when there are none.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Self> {
        let v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        let (min, max) = v.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        Some(Self { mean: v.iter().sum::<f64>() / v.len() as f64, min, max, n: v.len() })
    }

    /// The mean, and the range when more than one seed gave a value.
    fn cell(&self, fmt: impl Fn(f64) -> String) -> String {
        if self.n > 1 { format!("{} ({}–{})", fmt(self.mean), fmt(self.min), fmt(self.max)) } else { fmt(self.mean) }
    }
}

/// One job over its seeds.
#[derive(Clone, Debug, Serialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SeedGroup {
    pub job: String,
    pub model: String,
    pub seeds: Vec<u64>,
    pub params_total: Option<i64>,
    pub params_active: Option<i64>,
    pub gpus: Option<i64>,
    /// Runs that had a quality target, and those of them that reached it.
    pub with_target: usize,
    pub reached: usize,
    /// Over the runs that reached the target.
    pub flops_to_target: Option<Spread>,
    pub gpu_hours_to_target: Option<Spread>,
    pub bits_per_byte: Option<Spread>,
    pub perplexity: Option<Spread>,
    pub zero_shot_accuracy: Option<Spread>,
    pub tokens_per_second: Option<Spread>,
}

/// A job's means against the baseline job's: what it cost as a multiple, what it reached as a
/// difference.
#[derive(Clone, Debug, Serialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct GroupRatios {
    pub job: String,
    pub flops_to_target: Option<f64>,
    pub gpu_hours_to_target: Option<f64>,
    pub params_active: Option<f64>,
    pub bits_per_byte_delta: Option<f64>,
    pub zero_shot_accuracy_delta: Option<f64>,
}

/// The rows grouped by job, in the order the jobs first appear.
pub fn groups(rows: &[Row]) -> Result<Vec<SeedGroup>, String> {
    let mut order: Vec<&str> = vec![];
    for r in rows {
        if !order.contains(&r.job.as_str()) {
            order.push(&r.job);
        }
    }
    order.into_iter().map(|job| group(job, &rows.iter().filter(|r| r.job == job).collect::<Vec<_>>())).collect()
}

fn group(job: &str, runs: &[&Row]) -> Result<SeedGroup, String> {
    let first = runs[0];
    let mut seeds = vec![];
    for r in runs {
        if (r.params_total, r.params_active) != (first.params_total, first.params_active) {
            return Err(format!(
                "the runs of job {job:?} differ in parameters ({:?} and {:?}): they are not seeds of one configuration; give each configuration its own metadata.name",
                first.params_total, r.params_total
            ));
        }
        if let Some(s) = r.seed {
            if seeds.contains(&s) {
                return Err(format!(
                    "two runs of job {job:?} have seed {s}: seeds of one job need different training.seed; give other configurations their own metadata.name"
                ));
            }
            seeds.push(s);
        }
    }
    let reached: Vec<&&Row> = runs.iter().filter(|r| r.target_reached == Some(true)).collect();
    let over = |v: &dyn Fn(&Row) -> Option<f64>| Spread::of(runs.iter().filter_map(|r| v(r)));
    Ok(SeedGroup {
        job: job.into(),
        model: first.model.clone(),
        seeds,
        params_total: first.params_total,
        params_active: first.params_active,
        gpus: first.gpus,
        with_target: runs.iter().filter(|r| r.target_reached.is_some()).count(),
        reached: reached.len(),
        flops_to_target: Spread::of(reached.iter().filter_map(|r| r.flops_to_target)),
        gpu_hours_to_target: Spread::of(reached.iter().filter_map(|r| r.gpu_hours_to_target)),
        bits_per_byte: over(&|r| r.bits_per_byte),
        perplexity: over(&|r| r.perplexity),
        zero_shot_accuracy: over(&|r| r.zero_shot_accuracy),
        tokens_per_second: over(&|r| r.tokens_per_second),
    })
}

/// The baseline's group among `groups`, by job name.
pub fn find<'a>(groups: &'a [SeedGroup], job: &str) -> Result<&'a SeedGroup, String> {
    groups.iter().find(|g| g.job == job).ok_or_else(|| {
        let names: Vec<&str> = groups.iter().map(|g| g.job.as_str()).collect();
        format!("--baseline {job:?}: no run of that job among the reports ({}): name one of them", names.join(", "))
    })
}

/// Each group's means against the baseline's. A cost to the target is compared only when every
/// run of both reached it: a mean over the seeds that happened to reach it would flatter.
pub fn against(groups: &[SeedGroup], baseline: &SeedGroup) -> Vec<GroupRatios> {
    let all_reached = |g: &SeedGroup| g.with_target > 0 && g.reached == g.with_target;
    let mean = |s: Option<Spread>| s.map(|s| s.mean);
    let to_target = |g: &SeedGroup, f: fn(&SeedGroup) -> Option<Spread>| {
        if all_reached(g) && all_reached(baseline) { ratio(mean(f(g)), mean(f(baseline))) } else { None }
    };
    groups
        .iter()
        .map(|g| GroupRatios {
            job: g.job.clone(),
            flops_to_target: to_target(g, |g| g.flops_to_target),
            gpu_hours_to_target: to_target(g, |g| g.gpu_hours_to_target),
            params_active: ratio(g.params_active.map(|p| p as f64), baseline.params_active.map(|p| p as f64)),
            bits_per_byte_delta: delta(mean(g.bits_per_byte), mean(baseline.bits_per_byte)),
            zero_shot_accuracy_delta: delta(mean(g.zero_shot_accuracy), mean(baseline.zero_shot_accuracy)),
        })
        .collect()
}

/// The groups as a table for people (means, with the seeds' range in brackets), with the ratio
/// columns when there is a baseline.
pub fn table(groups: &[SeedGroup], ratios: Option<&[GroupRatios]>) -> Table {
    let mut header = vec![
        "job",
        "model",
        "seeds",
        "params",
        "active",
        "GPUs",
        "reached target",
        "FLOPs to target",
        "GPU-h to target",
        "bits/byte",
        "ppl",
        "zero-shot",
        "tok/s",
    ];
    if ratios.is_some() {
        header.extend(["FLOPs to target ÷ baseline", "GPU-h to target ÷ baseline", "bits/byte Δ", "zero-shot Δ"]);
    }
    let mut t = Table::new(&header);
    for (i, g) in groups.iter().enumerate() {
        let count = |v: Option<i64>| v.map_or("-".into(), |x| human(x as f64));
        let cell = |s: &Option<Spread>, f: &dyn Fn(f64) -> String| s.as_ref().map_or("-".into(), |s| s.cell(f));
        let mut cells = vec![
            g.job.clone(),
            g.model.clone(),
            g.seeds.iter().map(u64::to_string).collect::<Vec<_>>().join(","),
            count(g.params_total),
            count(g.params_active),
            match g.gpus {
                Some(0) => "0 (CPU)".into(),
                Some(n) => n.to_string(),
                None => "-".into(),
            },
            if g.with_target == 0 { "-".into() } else { format!("{} of {}", g.reached, g.with_target) },
            cell(&g.flops_to_target, &|f| format!("{f:.2e}")),
            cell(&g.gpu_hours_to_target, &hours),
            cell(&g.bits_per_byte, &|x| opt(Some(x), 4)),
            cell(&g.perplexity, &|x| opt(Some(x), 3)),
            cell(&g.zero_shot_accuracy, &|a| format!("{:.1}%", a * 100.0)),
            cell(&g.tokens_per_second, &|x| opt(Some(x), 0)),
        ];
        if let Some(r) = ratios.and_then(|r| r.get(i)) {
            let times = |v: Option<f64>| v.map_or("-".into(), |x| format!("{x:.2}×"));
            cells.extend([
                times(r.flops_to_target),
                times(r.gpu_hours_to_target),
                r.bits_per_byte_delta.map_or("-".into(), |d| format!("{d:+.4}")),
                r.zero_shot_accuracy_delta.map_or("-".into(), |d| format!("{:+.1} pp", d * 100.0)),
            ]);
        }
        t.push(cells);
    }
    t
}

/// CSV with raw numbers: each spread as its mean, min and max.
pub fn csv(groups: &[SeedGroup], ratios: Option<&[GroupRatios]>) -> String {
    const SPREADS: [&str; 6] = ["flops_to_target", "gpu_hours_to_target", "bits_per_byte", "perplexity", "zero_shot_accuracy", "tokens_per_second"];
    let mut header: Vec<String> =
        ["job", "model", "seeds", "params_total", "params_active", "gpus", "with_target", "reached"].map(String::from).to_vec();
    for s in SPREADS {
        header.extend([format!("{s}_mean"), format!("{s}_min"), format!("{s}_max")]);
    }
    if ratios.is_some() {
        header.extend(
            ["flops_to_target_ratio", "gpu_hours_to_target_ratio", "params_active_ratio", "bits_per_byte_delta", "zero_shot_accuracy_delta"]
                .map(String::from),
        );
    }
    let mut t = Table { header, rows: vec![] };
    for (i, g) in groups.iter().enumerate() {
        let mut f = vec![
            g.job.clone(),
            g.model.clone(),
            g.seeds.iter().map(u64::to_string).collect::<Vec<_>>().join(" "),
            raw(g.params_total),
            raw(g.params_active),
            raw(g.gpus),
            g.with_target.to_string(),
            g.reached.to_string(),
        ];
        for s in [g.flops_to_target, g.gpu_hours_to_target, g.bits_per_byte, g.perplexity, g.zero_shot_accuracy, g.tokens_per_second] {
            f.extend([raw(s.map(|s| s.mean)), raw(s.map(|s| s.min)), raw(s.map(|s| s.max))]);
        }
        if let Some(r) = ratios.and_then(|r| r.get(i)) {
            f.extend([
                raw(r.flops_to_target),
                raw(r.gpu_hours_to_target),
                raw(r.params_active),
                raw(r.bits_per_byte_delta),
                raw(r.zero_shot_accuracy_delta),
            ]);
        }
        t.push(f);
    }
    t.csv()
}

/// The runs grouped by job over their seeds, against the `baseline` job's group when one is
/// named, in `format` (text, markdown, json or csv).
pub fn render(rows: &[Row], baseline: Option<&str>, format: &str) -> Result<String, String> {
    let groups = groups(rows)?;
    let ratios = baseline.map(|b| find(&groups, b).map(|b| against(&groups, b))).transpose()?;
    let ratios = ratios.as_deref();
    Ok(match format {
        "text" => table(&groups, ratios).text(),
        "markdown" => table(&groups, ratios).markdown(),
        "json" => json(&groups, ratios),
        "csv" => csv(&groups, ratios),
        other => return Err(format!("format {other:?}: write text, markdown, json or csv")),
    })
}

/// A group with its ratios against the baseline, for JSON.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Compared<'a> {
    #[serde(flatten)]
    group: &'a SeedGroup,
    #[serde(skip_serializing_if = "Option::is_none")]
    vs_baseline: Option<&'a GroupRatios>,
}

pub fn json(groups: &[SeedGroup], ratios: Option<&[GroupRatios]>) -> String {
    let out: Vec<Compared> = groups.iter().enumerate().map(|(i, group)| Compared { group, vs_baseline: ratios.and_then(|r| r.get(i)) }).collect();
    serde_json::to_string_pretty(&out).expect("groups serialise") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(job: &str, seed: u64, bpb: f64, hours: Option<f64>, active: i64) -> Row {
        Row {
            job: job.into(),
            model: "4l/128d/4h dense fp32".into(),
            params_total: Some(active * 2),
            params_active: Some(active),
            gpus: Some(0),
            bits_per_byte: Some(bpb),
            zero_shot_accuracy: Some(0.5 + bpb / 100.0),
            tokens_per_second: Some(1000.0),
            gpu_hours_to_target: hours,
            flops_to_target: hours.map(|h| h * 1e12),
            target_reached: Some(hours.is_some()),
            seed: Some(seed),
            ..Row::default()
        }
    }

    #[test]
    fn seeds_of_a_job_give_its_mean_and_range() {
        let rows = [run("base", 1, 2.30, Some(0.2), 100), run("recipe", 1, 2.20, Some(0.1), 80), run("base", 2, 2.40, Some(0.4), 100)];
        let g = groups(&rows).unwrap();
        assert_eq!(g.iter().map(|g| g.job.as_str()).collect::<Vec<_>>(), ["base", "recipe"], "first-seen order");
        let bpb = g[0].bits_per_byte.unwrap();
        assert_eq!((bpb.n, bpb.min, bpb.max), (2, 2.30, 2.40));
        assert!((bpb.mean - 2.35).abs() < 1e-12);
        assert_eq!(g[0].seeds, [1, 2]);
        assert!((g[0].gpu_hours_to_target.unwrap().mean - 0.3).abs() < 1e-12);

        let r = against(&g, find(&g, "base").unwrap());
        assert!((r[1].gpu_hours_to_target.unwrap() - 0.1 / 0.3).abs() < 1e-12, "{:?}", r[1]);
        assert!((r[1].bits_per_byte_delta.unwrap() + 0.15).abs() < 1e-12);
        assert_eq!(r[1].params_active, Some(0.8));
        assert_eq!(r[0].gpu_hours_to_target, Some(1.0));

        let t = table(&g, Some(&r)).text();
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].ends_with("FLOPs to target ÷ baseline  GPU-h to target ÷ baseline  bits/byte Δ  zero-shot Δ"), "{t}");
        assert!(lines[1].contains("2.3500 (2.3000–2.4000)") && lines[1].contains("2 of 2"), "{t}");
        assert!(lines[2].contains("0.33×") && lines[2].contains("-0.1500"), "{t}");
        let csv = csv(&g, Some(&r));
        assert!(csv.lines().next().unwrap().contains("bits_per_byte_mean,bits_per_byte_min,bits_per_byte_max"), "{csv}");
        let json: serde_json::Value = serde_json::from_str(&json(&g, Some(&r))).unwrap();
        assert_eq!(json[1]["vsBaseline"]["paramsActive"], 0.8);
        assert_eq!(json[0]["bitsPerByte"]["n"], 2);
    }

    #[test]
    fn a_seed_that_missed_the_target_leaves_the_cost_to_target_uncompared() {
        let rows = [run("base", 1, 2.30, Some(0.2), 100), run("recipe", 1, 2.20, Some(0.1), 80), run("recipe", 2, 2.50, None, 80)];
        let g = groups(&rows).unwrap();
        assert_eq!((g[1].reached, g[1].with_target), (1, 2));
        let r = against(&g, &g[0]);
        assert_eq!(r[1].gpu_hours_to_target, None, "a mean over the seeds that reached would flatter");
        assert!(table(&g, Some(&r)).text().contains("1 of 2"));
    }

    #[test]
    fn runs_that_are_not_seeds_of_one_job_are_refused() {
        let e = groups(&[run("a", 1, 2.3, None, 100), run("a", 1, 2.4, None, 100)]).unwrap_err();
        assert!(e.contains("seed 1") && e.contains("metadata.name"), "{e}");
        let e = groups(&[run("a", 1, 2.3, None, 100), run("a", 2, 2.4, None, 90)]).unwrap_err();
        assert!(e.contains("differ in parameters"), "{e}");
        let e = find(&groups(&[run("a", 1, 2.3, None, 100)]).unwrap(), "b").unwrap_err();
        assert!(e.contains("--baseline \"b\"") && e.contains("a"), "{e}");
    }
}
