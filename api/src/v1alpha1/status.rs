//! `TrainingJob` status: the plan, progress, cost, quality and efficiency, and conditions.
//!
//! Every number here is finite: a non-finite value (a NaN loss, say) is left out when the status is
//! serialized, and the operator or trainer reports it through a condition instead.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::finite::{is_not_finite, is_not_finite_opt};

/// What the operator and the trainer report about a TrainingJob.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TrainingJobStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// A one-word summary for people and printer columns: Pending, Queued, Running, Suspended,
    /// Succeeded or Failed. Tools should read the conditions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Standard conditions: Ready, Queued, Running, Suspended, Stalled, Succeeded, Failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The plan, filled before anything starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<PlanStatus>,
    /// Training progress as the trainer last reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<ProgressStatus>,
    /// What the job has spent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<CostStatus>,
    /// Model quality at the last evaluation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<QualityStatus>,
    /// Throughput and utilization.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub efficiency: Option<EfficiencyStatus>,
    /// The latest complete checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<CheckpointStatus>,
    /// The current attempt, counting from 1; each restart runs a new attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<i32>,
    /// Failed attempts counted against runPolicy.backoffLimit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarts: Option<i32>,
    /// When the job's first pods started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the job succeeded or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
}

/// Lifecycle phases.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Pending,
    Queued,
    Running,
    Suspended,
    Succeeded,
    Failed,
}

impl Phase {
    /// Succeeded or Failed: the job's pods are done (one that failed on its spec runs again when
    /// the spec changes).
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
}

/// The model as resolved from a preset or explicit shape.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedModelStatus {
    /// Transformer blocks.
    pub layers: i32,
    /// Residual width.
    pub d_model: i32,
    /// Attention heads.
    pub heads: i32,
    /// Context length.
    pub seq_len: i32,
    /// Vocabulary size.
    pub vocab_size: i32,
    /// Dense feed-forward hidden width.
    pub ffn_hidden: i32,
    /// Blocks with a mixture-of-experts feed-forward layer.
    pub moe_layers: i32,
}

/// The planner's estimate, made before the job starts.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PlanStatus {
    /// The resolved model shape.
    pub model: ResolvedModelStatus,
    /// All parameters.
    pub parameters: i64,
    /// Parameters used for each token (routed experts not chosen are not).
    pub active_parameters: i64,
    /// Training FLOPs per token: 6 × active matmul parameters plus the attention actually computed.
    #[serde(default, skip_serializing_if = "is_not_finite")]
    pub flops_per_token: f64,
    /// Tokens the job trains on.
    pub tokens: i64,
    /// Optimizer steps.
    pub steps: i64,
    /// Training FLOPs in all.
    #[serde(default, skip_serializing_if = "is_not_finite")]
    pub total_flops: f64,
    /// GPUs the job holds: pipeline stages × replicas (none on CPU).
    pub gpus: i32,
    /// Pods the job runs: replicas × pipelineStages / gpusPerPod.
    pub pods: i32,
    /// Replicas of the pipeline (spec.parallelism.dataParallel).
    #[serde(default)]
    pub replicas: i32,
    /// Largest planned memory of one GPU, in bytes.
    pub memory_per_gpu_bytes: i64,
    /// The most bytes one GPU sends per step: the replicas' gradient all-reduce (and, with
    /// shardOptimizerState, weight all-gather) plus the pipeline's activations and their gradients.
    #[serde(default)]
    pub communication_bytes_per_step: i64,
    /// The GPU type's memory, in bytes.
    pub gpu_memory_bytes: i64,
    /// The pipeline's idle fraction, (stages − 1) / (microBatches + stages − 1).
    #[serde(default, skip_serializing_if = "is_not_finite")]
    pub pipeline_bubble: f64,
    /// Estimated GPU-hours, at the assumed MFU.
    #[serde(default, skip_serializing_if = "is_not_finite")]
    pub estimated_gpu_hours: f64,
    /// Estimated cost.
    #[serde(default, skip_serializing_if = "is_not_finite")]
    pub estimated_cost: f64,
    /// Currency of the cost figures.
    pub currency: String,
    /// Things worth changing before spending GPU-hours.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub warnings: Vec<String>,
}

/// Progress as reported by the trainer.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ProgressStatus {
    /// Last completed optimizer step.
    pub step: i64,
    /// Steps the job will run.
    pub total_steps: i64,
    /// Tokens trained on.
    pub tokens: i64,
    /// Steps done over the steps the run is expected to end at (totalSteps, or fewer where a
    /// quality target is expected to stop it sooner), 0–100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub percent: Option<i32>,
    /// Seconds from lastUpdateTime to the expected end, at the step rate of the latest reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub estimated_remaining_seconds: Option<i64>,
    /// When the run is expected to end: lastUpdateTime plus estimatedRemainingSeconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_completion_time: Option<Time>,
    /// Training loss at the last step.
    #[serde(default, skip_serializing_if = "is_not_finite_opt")]
    pub loss: Option<f64>,
    /// When the trainer last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update_time: Option<Time>,
    /// The step whose training loss was not a finite number, while the latest loss is not
    /// (`loss` keeps the last finite one); the operator's NonFiniteLoss condition says so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub non_finite_loss_step: Option<i64>,
}

/// Spending, as the operator bills it from the job's pods: each pod's GPUs from when it was
/// scheduled until it terminated (a running pod: until the operator last looked).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CostStatus {
    /// GPU-hours held by the job's pods so far, across attempts.
    #[serde(default, skip_serializing_if = "is_not_finite")]
    pub gpu_hours: f64,
    /// What those GPU-hours cost.
    #[serde(default, skip_serializing_if = "is_not_finite")]
    pub cost: f64,
    /// Currency of the cost: the budget's (spec.budget.budgetRef), else USD.
    pub currency: String,
    /// GPU-hours it took to reach the quality target (at quality.targetReachedTime), once
    /// reached.
    #[serde(default, skip_serializing_if = "is_not_finite_opt")]
    pub gpu_hours_to_target: Option<f64>,
    /// The pods billed, newest attempt last: the durable record the totals are summed from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub pods: Vec<PodCost>,
}

/// Where the GPU type a pod was priced at came from.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PricedFrom {
    /// The `nvidia.com/gpu.product` label of the node the pod ran on.
    NodeLabel,
    /// The job's spec.resources.gpuType (the node had no label frugal knows a price for).
    #[default]
    JobSpec,
}

/// One pod's bill.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodCost {
    /// The pod's name.
    pub name: String,
    /// Its attempt.
    pub attempt: i32,
    /// GPUs it held (its containers' limits).
    pub gpus: i32,
    /// The GPU type it was priced at, and where that came from.
    pub gpu_type: String,
    pub priced_from: PricedFrom,
    /// Price of one of its GPU-hours, in the job's currency.
    #[serde(default, skip_serializing_if = "is_not_finite")]
    pub price_per_gpu_hour: f64,
    /// Its GPUs times the time from `from` to `until`.
    #[serde(default, skip_serializing_if = "is_not_finite")]
    pub gpu_hours: f64,
    /// What those GPU-hours cost.
    #[serde(default, skip_serializing_if = "is_not_finite")]
    pub cost: f64,
    /// When it was scheduled.
    pub from: Time,
    /// Billed up to here: when it terminated, or when the operator last saw it hold its GPUs.
    pub until: Time,
    /// It terminated (or is gone): its bill is final.
    #[serde(default)]
    pub ended: bool,
}

/// Quality at the last evaluation.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct QualityStatus {
    /// Step of the evaluation.
    pub step: i64,
    /// Validation loss, nats per token.
    #[serde(default, skip_serializing_if = "is_not_finite_opt")]
    pub validation_loss: Option<f64>,
    /// exp(validation loss).
    #[serde(default, skip_serializing_if = "is_not_finite_opt")]
    pub perplexity: Option<f64>,
    /// Validation bits per byte of text.
    #[serde(default, skip_serializing_if = "is_not_finite_opt")]
    pub bits_per_byte: Option<f64>,
    /// Zero-shot accuracy per evaluation set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub zero_shot: Vec<ZeroShotResult>,
    /// When an evaluation first reached spec.training.qualityTarget (kept across attempts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_reached_time: Option<Time>,
    /// Training tokens up to the evaluation that first reached the quality target (kept across
    /// attempts): with status.plan.flopsPerToken, the FLOPs the target took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub tokens_to_target: Option<i64>,
    /// The quantized export (spec.export.quantize) of the final checkpoint, evaluated the same
    /// way, beside the unquantized figures and round-to-nearest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantized: Option<QuantizedStatus>,
    /// The Hugging Face export (spec.export.huggingFace) of the final checkpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hugging_face: Option<HuggingFaceExportStatus>,
    /// With spec.distill: the teacher, evaluated the same way, and the student against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distillation: Option<DistillationStatus>,
}

impl QualityStatus {
    /// The evaluation's figures, without its step and target.
    pub fn figures(&self) -> QualityFigures {
        QualityFigures {
            validation_loss: self.validation_loss,
            perplexity: self.perplexity,
            bits_per_byte: self.bits_per_byte,
            zero_shot: self.zero_shot.clone(),
        }
    }
}

/// One model's figures on the job's evaluation.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct QualityFigures {
    /// Validation loss, nats per token.
    #[serde(default, skip_serializing_if = "is_not_finite_opt")]
    pub validation_loss: Option<f64>,
    /// exp(validation loss).
    #[serde(default, skip_serializing_if = "is_not_finite_opt")]
    pub perplexity: Option<f64>,
    /// Validation bits per byte.
    #[serde(default, skip_serializing_if = "is_not_finite_opt")]
    pub bits_per_byte: Option<f64>,
    /// Zero-shot accuracy per evaluation set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub zero_shot: Vec<ZeroShotResult>,
}

/// The quantized model against the model it was made from.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct QuantizedStatus {
    /// The format (spec.export.quantize).
    #[schemars(length(max = 64))]
    pub format: String,
    /// How the scales were set, in a few words.
    #[schemars(length(max = 256))]
    pub method: String,
    /// Step of the checkpoint that was quantized.
    pub step: i64,
    /// Where the quantized weights were written.
    #[schemars(length(max = 4096))]
    pub path: String,
    /// The calibrated quantized model's validation bits per byte (the printer column).
    #[serde(default, skip_serializing_if = "is_not_finite_opt")]
    pub bits_per_byte: Option<f64>,
    /// Its bits per byte minus the unquantized model's: the price in quality.
    #[serde(default, skip_serializing_if = "is_not_finite_opt")]
    pub bits_per_byte_delta: Option<f64>,
    /// Its validation loss minus the unquantized model's.
    #[serde(default, skip_serializing_if = "is_not_finite_opt")]
    pub validation_loss_delta: Option<f64>,
    /// The calibrated quantized model on the whole evaluation.
    pub calibrated: QualityFigures,
    /// Round-to-nearest per-channel quantization without calibration: the baseline calibration
    /// must beat.
    pub round_to_nearest: QualityFigures,
    /// The checkpoint itself, unquantized, on the same evaluation.
    pub unquantized: QualityFigures,
    /// Bytes of all weights as exported (8-bit linear layers, their scales, fp32 for the rest).
    pub weight_bytes: i64,
    /// Bytes of the same weights in fp32.
    pub unquantized_weight_bytes: i64,
    /// CPU inference throughput of the quantized model (forward passes over held-out batches).
    #[serde(default, skip_serializing_if = "is_not_finite")]
    pub tokens_per_second: f64,
    /// The same of the unquantized model, measured in the same run.
    #[serde(default, skip_serializing_if = "is_not_finite")]
    pub unquantized_tokens_per_second: f64,
}

/// The final checkpoint in the Hugging Face layout.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct HuggingFaceExportStatus {
    /// Step of the checkpoint that was exported.
    pub step: i64,
    /// The directory `from_pretrained` loads.
    #[schemars(length(max = 4096))]
    pub path: String,
    /// The `transformers` class its config.json names (GPT2LMHeadModel, GPTNeoXForCausalLM,
    /// LlamaForCausalLM, Ernie4_5_MoeForCausalLM).
    #[schemars(length(max = 128))]
    pub architecture: String,
    /// Bytes of its fp32 weights.
    pub weight_bytes: i64,
}

/// A distilled student against its teacher.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DistillationStatus {
    /// The teacher's checkpoint step directory.
    #[schemars(length(max = 4096))]
    pub teacher_checkpoint: String,
    /// The teacher's parameters, all and used per token.
    pub teacher_parameters: i64,
    pub teacher_active_parameters: i64,
    /// The teacher on this job's evaluation.
    pub teacher: QualityFigures,
    /// The student's bits per byte at the last evaluation minus the teacher's.
    #[serde(default, skip_serializing_if = "is_not_finite_opt")]
    pub bits_per_byte_delta: Option<f64>,
    /// CPU inference throughput of the teacher and of the student, measured in the same run.
    #[serde(default, skip_serializing_if = "is_not_finite")]
    pub teacher_tokens_per_second: f64,
    #[serde(default, skip_serializing_if = "is_not_finite")]
    pub student_tokens_per_second: f64,
}

/// One evaluation set's accuracy.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ZeroShotResult {
    /// The set's name from spec.data.evalSets.
    #[schemars(length(max = 253))]
    pub name: String,
    /// Fraction correct.
    #[serde(default, skip_serializing_if = "is_not_finite")]
    pub accuracy: f64,
    /// Examples scored.
    pub examples: i64,
}

/// Throughput and utilization.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct EfficiencyStatus {
    /// Training tokens per second, the whole job.
    #[serde(default, skip_serializing_if = "is_not_finite")]
    pub tokens_per_second: f64,
    /// Achieved training TFLOP/s per GPU.
    #[serde(default, skip_serializing_if = "is_not_finite")]
    pub achieved_tflops: f64,
    /// Model FLOPs utilization: achieved over the GPU's peak.
    #[serde(default, skip_serializing_if = "is_not_finite")]
    pub mfu: f64,
    /// Measured pipeline idle fraction.
    #[serde(default, skip_serializing_if = "is_not_finite_opt")]
    pub pipeline_bubble: Option<f64>,
}

/// The latest complete checkpoint.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointStatus {
    /// Its directory.
    #[schemars(length(max = 4096))]
    pub path: String,
    /// Its step.
    pub step: i64,
    /// When it was committed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
}
