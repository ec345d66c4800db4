//! The job's quality target (`spec.evaluation.target`): which value an evaluation is judged on,
//! when a run first reaches it, and how the run ended against it (the summary's `target`).

use frugal_api::v1alpha1::{QualityMetric, QualityStatus, QualityTarget};
use serde::{Deserialize, Serialize};

/// The value a target is judged on.
pub fn target_value(target: &QualityTarget, q: &QualityStatus) -> Option<f64> {
    match target.metric {
        QualityMetric::ValidationLoss => q.validation_loss,
        QualityMetric::BitsPerByte => q.bits_per_byte,
    }
}

pub fn target_reached(target: &QualityTarget, q: &QualityStatus) -> bool {
    target_value(target, q).is_some_and(|v| v.is_finite() && v <= target.value)
}

/// Watches evaluations against the job's quality target.
pub struct TargetTracker {
    target: Option<QualityTarget>,
    gpus: i64,
    best: Option<f64>,
    /// (step, tokens, device-hours) when first reached.
    reached_at: Option<(i64, i64, f64)>,
}

impl TargetTracker {
    pub fn new(target: Option<QualityTarget>, gpus: i64) -> Self {
        Self { target, gpus, best: None, reached_at: None }
    }

    /// Records an evaluation `seconds` into the run; true when it reaches the target.
    pub fn observe(&mut self, q: &QualityStatus, step: i64, tokens: i64, seconds: f64) -> bool {
        let Some(t) = &self.target else { return false };
        if let Some(v) = target_value(t, q).filter(|v| v.is_finite()) {
            self.best = Some(self.best.map_or(v, |b: f64| b.min(v)));
        }
        if self.reached_at.is_none() && target_reached(t, q) {
            self.reached_at = Some((step, tokens, seconds / 3600.0 * self.gpus.max(1) as f64));
            return true;
        }
        false
    }

    pub fn reached(&self) -> bool {
        self.reached_at.is_some()
    }

    /// The device-hours it took, once reached.
    pub fn device_hours_to_target(&self) -> Option<f64> {
        self.reached_at.map(|r| r.2)
    }

    /// The outcome for the report; `step` of `end` steps when the run stopped.
    pub fn outcome(&self, step: i64, end: i64, terminated: bool) -> Option<TargetOutcome> {
        let t = self.target.as_ref()?;
        let metric = match t.metric {
            QualityMetric::ValidationLoss => "validationLoss",
            QualityMetric::BitsPerByte => "bitsPerByte",
        };
        let unit = if self.gpus > 0 { "GPU-hours" } else { "CPU-hours" };
        let best = self.best.map_or("no evaluation".to_string(), |b| format!("best {b:.4}"));
        let message = match self.reached_at {
            Some((s, tokens, hours)) => {
                format!("{metric} ≤ {} reached at step {s} after {tokens} tokens and {hours:.6} {unit}", t.value)
            }
            None if terminated => format!("{metric} ≤ {} not reached before the run was stopped at step {step} ({best})", t.value),
            None => format!("{metric} ≤ {} not reached within the budget of {end} steps ({best})", t.value),
        };
        Some(TargetOutcome {
            metric: metric.into(),
            value: t.value,
            reached: self.reached_at.is_some(),
            step: self.reached_at.map(|r| r.0),
            tokens: self.reached_at.map(|r| r.1),
            device_hours: self.reached_at.map(|r| r.2),
            best: self.best,
            message,
        })
    }
}

/// How a run ended against its quality target.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TargetOutcome {
    /// `validationLoss` or `bitsPerByte`.
    pub metric: String,
    pub value: f64,
    pub reached: bool,
    /// Step, training tokens and device-hours (GPU-hours; CPU-hours on a CPU) when it was reached.
    pub step: Option<i64>,
    pub tokens: Option<i64>,
    pub device_hours: Option<f64>,
    /// The best value any evaluation reached.
    pub best: Option<f64>,
    pub message: String,
}
