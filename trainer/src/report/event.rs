//! What a run says while it runs, as one type: the JSON log writes these (with a timestamp), the
//! pod's status reporter folds them into the TrainingJob's status, and the progress bar draws
//! them. A value is named once here, so what the log shows is what the status says.

use frugal_api::v1alpha1::{DistillationStatus, HuggingFaceExportStatus, QualityStatus, QualityTarget, QuantizedStatus, ZeroShotResult};
use serde::{Deserialize, Serialize};

use crate::report::summary::Summary;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RunEvent {
    /// Training begins (or goes on from a checkpoint) at `step`.
    Start(Start),
    /// A checkpoint was loaded.
    Resume(Resume),
    /// The Prometheus endpoint is served on `port`.
    Metrics { port: u16 },
    /// An optimizer step, every `logInterval` steps.
    Step(Step),
    /// An evaluation.
    Eval(Eval),
    /// A checkpoint was committed.
    Checkpoint(Checkpoint),
    /// A distilled run's teacher, evaluated as the student is, and both models' inference
    /// throughput: once at the start (with no bits-per-byte delta yet), then after every `eval`
    /// with the student's bits per byte against the teacher's. Its fields are the status's
    /// (`status.quality.distillation`), camelCase.
    Distillation(DistillationStatus),
    /// The int8 export of the final checkpoint (spec.export.quantize), measured against it: once,
    /// after training, before the summary. Its fields are `status.quality.quantized`'s.
    Quantized(Box<QuantizedStatus>),
    /// The Hugging Face export of the final checkpoint (spec.export.huggingFace): once, after
    /// training, before the summary. Its fields are `status.quality.huggingFace`'s.
    HuggingFace(HuggingFaceExportStatus),
    /// The run's summary, at its end.
    Summary(Box<Summary>),
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Start {
    pub job: String,
    pub step: i64,
    pub steps: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params_total: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params_active: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flops_per_token: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline_stages: Option<i64>,
    /// Replicas of the pipeline training side by side (data-parallel runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i64>,
    /// The quality the run stops at, if it stops at one (data.qualityTarget).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality_target: Option<QualityTarget>,
    /// Steps between evaluations (training.evalInterval), where a quality target can stop it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_interval: Option<i64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Resume {
    pub step: i64,
    /// Stages whose state the checkpoint holds (pipelined runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stages_written: Option<i64>,
    /// Newer checkpoints passed over as corrupt, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped_corrupt: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub step: i64,
    /// Training tokens so far.
    pub tokens: i64,
    /// Non-finite values serialize as `null` (and the status says so in a condition).
    #[serde(deserialize_with = "number_or_nan")]
    pub loss: f64,
    /// Distilling: the mean soft loss, T²·KL from the teacher's softened distribution (`loss`
    /// stays the cross-entropy against the data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft_loss: Option<f64>,
    #[serde(deserialize_with = "number_or_nan")]
    pub lr: f64,
    #[serde(deserialize_with = "number_or_nan")]
    pub grad_norm: f64,
    #[serde(deserialize_with = "number_or_nan")]
    pub tokens_per_second: f64,
    /// tokens/s × FLOPs per token.
    #[serde(deserialize_with = "number_or_nan")]
    pub achieved_tflops: f64,
    /// `achieved_tflops` over the devices' peak.
    #[serde(deserialize_with = "number_or_nan")]
    pub mfu: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aux_loss: Option<f64>,
    /// Token-expert assignments past an expert's capacity, this step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped_fraction: Option<f64>,
    /// Mixed precision's loss scale, with fp16.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<f64>,
    /// The step was skipped for a non-finite gradient (fp16).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<bool>,
    /// Idle fraction of the pipeline's stages this step, measured (pipelined runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline_bubble: Option<f64>,
    /// The schedule's bubble in theory, (stages − 1) / (micro-batches + stages − 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bubble_theory: Option<f64>,
    /// Seconds this process's stages computed this step (pipelined runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage_busy_seconds: Option<f64>,
    /// Seconds the reporting stage spent averaging gradients with the other replicas (and
    /// gathering sharded weights) this step (data-parallel runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allreduce_seconds: Option<f64>,
    /// How far the run is, in percent of the steps it is expected to take, and the seconds it
    /// has left at its measured rate ([`crate::report::eta`]): filled in by the [`Reporter`]
    /// that emits the step, so the JSON line, the bar and the status say the same.
    ///
    /// [`Reporter`]: crate::report::Reporter
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining_seconds: Option<f64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Eval {
    pub step: i64,
    pub val_loss: Option<f64>,
    pub bits_per_byte: Option<f64>,
    pub perplexity: Option<f64>,
    /// Each zero-shot set's accuracy and how many examples it scored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub zero_shot: Vec<ZeroShotResult>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub quality_target_reached: bool,
}

impl Eval {
    pub fn of(q: &QualityStatus, step: i64, reached: bool) -> Self {
        Self {
            step,
            val_loss: q.validation_loss,
            bits_per_byte: q.bits_per_byte,
            perplexity: q.perplexity,
            zero_shot: q.zero_shot.clone(),
            quality_target_reached: reached,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub step: i64,
    pub path: String,
    /// Seconds the save took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
}

/// A number of a JSON line; `null` is how serde_json writes a NaN or an infinity.
fn number_or_nan<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

impl RunEvent {
    /// The event as one JSON object, its kind under `event`.
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("a run event serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_through_their_json_line() {
        let events = [
            RunEvent::Start(Start { job: "lm".into(), step: 0, steps: 100, pipeline_stages: Some(2), ..Default::default() }),
            RunEvent::Step(Step { step: 7, tokens: 700, loss: 2.5, achieved_tflops: 0.01, pipeline_bubble: Some(0.2), ..Default::default() }),
            RunEvent::Eval(Eval {
                step: 5,
                val_loss: Some(2.0),
                zero_shot: vec![ZeroShotResult { name: "cloze".into(), accuracy: 0.25, examples: 64 }],
                ..Default::default()
            }),
            RunEvent::Checkpoint(Checkpoint { step: 5, path: "/c/step-000000005".into(), seconds: None }),
            RunEvent::Metrics { port: 9090 },
            RunEvent::Step(Step { step: 3, loss: 2.0, soft_loss: Some(0.4), ..Default::default() }),
            RunEvent::Distillation(frugal_api::v1alpha1::DistillationStatus {
                teacher_checkpoint: "/t/step-000000100".into(),
                teacher_parameters: 1000,
                teacher_active_parameters: 800,
                teacher: frugal_api::v1alpha1::QualityFigures { bits_per_byte: Some(1.5), ..Default::default() },
                bits_per_byte_delta: Some(0.25),
                teacher_tokens_per_second: 100.0,
                student_tokens_per_second: 400.0,
            }),
        ];
        for e in events {
            let line = e.to_value().to_string();
            let back: RunEvent = serde_json::from_str(&line).unwrap();
            assert_eq!(back, e, "{line}");
        }
        let line = RunEvent::Step(Step { step: 1, pipeline_bubble: Some(0.5), ..Default::default() }).to_value();
        assert_eq!((line["event"].as_str(), line["pipeline_bubble"].as_f64()), (Some("step"), Some(0.5)));
        // a NaN loss is written as null and read back as NaN; the log's timestamp is ignored
        let line = r#"{"timestamp":"2026-12-01T00:00:00Z","event":"step","step":2,"tokens":20,"loss":null,"lr":0.001,"grad_norm":1.0,"tokens_per_second":10.0,"achieved_tflops":0.0,"mfu":0.0}"#;
        let RunEvent::Step(step) = serde_json::from_str(line).unwrap() else { panic!("not a step") };
        assert!(step.loss.is_nan());
    }
}
