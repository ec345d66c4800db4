//! What a run produced, as data: its summary (the run report, `report.json`), where it came
//! from, and the number formatting the report table shares. `report.rs` prints it; `compare.rs`
//! puts several in one table.

use frugal_api::v1alpha1::QualityStatus;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::eval::TargetOutcome;

/// The run report's file name in a checkpoint directory.
pub const REPORT_FILE: &str = "report.json";

/// Where a result came from: enough to reproduce it, or to see why two results differ.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// SHA-256 of the resolved run configuration (model, data, training, evaluation).
    pub config_hash: String,
    pub seed: u64,
    pub code_version: String,
    pub libtorch_version: String,
    pub data_fingerprint: String,
    pub tokenizer_fingerprint: String,
    pub device: String,
}

impl Provenance {
    /// Where a run of `cfg` on `data` comes from.
    pub fn of(cfg: &crate::config::RunConfig, evaluation: &crate::eval::EvalConfig, data: &crate::data::Data, device: tch::Device) -> Self {
        Self {
            config_hash: crate::eval::config_hash(cfg, evaluation),
            seed: cfg.train.seed,
            code_version: Self::code_version(),
            libtorch_version: Self::libtorch_version(),
            data_fingerprint: data.fingerprint.clone(),
            tokenizer_fingerprint: data.tokenizer_fingerprint.clone(),
            device: format!("{device:?}"),
        }
    }

    /// The crate version and, when built from a git checkout, its commit.
    pub fn code_version() -> String {
        match option_env!("FRUGAL_GIT_COMMIT") {
            Some(c) if !c.is_empty() => format!("{}+{c}", env!("CARGO_PKG_VERSION")),
            _ => env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    /// The PyTorch release whose libtorch the trainer was linked against.
    pub fn libtorch_version() -> String {
        option_env!("FRUGAL_LIBTORCH_VERSION").unwrap_or("unknown").to_string()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub job: String,
    pub device: String,
    pub precision: String,
    pub steps: i64,
    pub tokens: i64,
    pub params_total: i64,
    pub params_active: i64,
    pub flops_per_token: f64,
    pub total_flops: f64,
    pub seconds: f64,
    pub tokens_per_second: f64,
    pub achieved_tflops: f64,
    pub mfu: f64,
    pub peak_source: String,
    pub train_loss: f64,
    pub val_loss: Option<f64>,
    pub dropped_token_fraction: Option<f64>,
    pub skipped_steps: i64,
    pub stopped_by: String,
    pub checkpoint: Option<String>,
    /// Why the run ended: `Completed`, `QualityTargetReached` or `Terminated`.
    #[serde(default)]
    pub reason: String,
    /// The model in a few words (shape, MoE, attention).
    #[serde(default)]
    pub model: String,
    /// GPUs held (0 on a CPU run).
    #[serde(default)]
    pub gpus: i64,
    /// Wall-clock hours times devices: GPU-hours, or CPU-hours on a CPU run.
    #[serde(default)]
    pub device_hours: f64,
    #[serde(default)]
    pub cost: f64,
    #[serde(default)]
    pub currency: String,
    #[serde(default)]
    pub quality: Option<QualityStatus>,
    /// How the run fared against data.qualityTarget. Written as `quality_target` (`target` is
    /// every log line's module); reports written before are read too.
    #[serde(default, rename = "quality_target", alias = "target")]
    pub target: Option<TargetOutcome>,
    #[serde(default)]
    pub provenance: Provenance,
}

/// Fields that measure time (and what is derived from it, such as a CPU peak timed at the start,
/// named in `peak_source`); everything else in a report is determined by the configuration and
/// seed.
pub const TIMING_FIELDS: &[&str] = &["seconds", "tokens_per_second", "achieved_tflops", "mfu", "peak_source", "device_hours", "cost", "checkpoint"];

impl Summary {
    /// Writes the run report: `report.json` in the checkpoint directory, if there is one, and
    /// `extra` (the `--report` flag).
    pub fn write_report(&self, checkpoint_dir: Option<&std::path::Path>, extra: Option<&std::path::Path>) -> anyhow::Result<()> {
        let text = serde_json::to_vec_pretty(self)?;
        let in_checkpoints = checkpoint_dir.map(|d| d.join(REPORT_FILE));
        for path in in_checkpoints.as_deref().into_iter().chain(extra) {
            anyhow::Context::with_context(std::fs::write(path, &text), || format!("writing the run report {}", path.display()))?;
        }
        Ok(())
    }

    /// The report as JSON without its timings, for comparing two runs.
    pub fn without_timings(&self) -> Value {
        let mut v = serde_json::to_value(self).expect("summary serialises");
        if let Value::Object(m) = &mut v {
            for k in TIMING_FIELDS {
                m.remove(*k);
            }
            if let Some(Value::Object(t)) = m.get_mut("quality_target") {
                t.remove("device_hours");
            }
        }
        v
    }
}

/// A count in a few characters: 1.25M, 3.4K.
pub use frugal_api::report::human;
