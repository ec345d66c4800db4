//! How long and how to train: duration, batch, optimizer, learning-rate schedule, precision,
//! intervals and seed.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How long and how to train.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TrainingSpec {
    /// How long to train: a number of optimizer steps or of tokens.
    #[serde(default)]
    pub duration: Duration,
    /// Sequences per optimizer step, across all micro-batches.
    #[serde(default = "default_batch_size")]
    #[schemars(range(min = 1, max = 65536))]
    pub batch_size: i32,
    /// The optimizer and its hyper-parameters.
    #[serde(default)]
    pub optimizer: OptimizerSpec,
    /// The learning-rate schedule.
    #[serde(default)]
    pub schedule: ScheduleSpec,
    /// Compute precision: `bf16` or `fp16` (weights kept in fp32) or `fp32`.
    #[serde(default)]
    pub precision: Precision,
    /// Recompute each block's activations during the backward pass instead of keeping them:
    /// less memory, about a third more compute.
    #[serde(default)]
    pub activation_checkpointing: bool,
    /// Steps between evaluations.
    #[serde(default = "default_eval_interval")]
    #[schemars(range(min = 1))]
    pub eval_interval: i64,
    /// Validation batches per evaluation.
    #[serde(default = "default_eval_batches")]
    #[schemars(range(min = 1, max = 100000))]
    pub eval_batches: i32,
    /// Steps between checkpoints.
    #[serde(default = "default_checkpoint_interval")]
    #[schemars(range(min = 1))]
    pub checkpoint_interval: i64,
    /// Steps between progress reports.
    #[serde(default = "default_log_interval")]
    #[schemars(range(min = 1))]
    pub log_interval: i64,
    /// Seed of every random choice the trainer makes: initialization, data order, routing noise.
    #[serde(default = "default_seed")]
    #[schemars(range(min = 0))]
    pub seed: i64,
}

fn default_batch_size() -> i32 {
    32
}
fn default_eval_interval() -> i64 {
    250
}
fn default_eval_batches() -> i32 {
    20
}
fn default_checkpoint_interval() -> i64 {
    500
}
fn default_log_interval() -> i64 {
    10
}
fn default_seed() -> i64 {
    1337
}

impl Default for TrainingSpec {
    fn default() -> Self {
        Self {
            duration: Duration::default(),
            batch_size: default_batch_size(),
            optimizer: OptimizerSpec::default(),
            schedule: ScheduleSpec::default(),
            precision: Precision::default(),
            activation_checkpointing: false,
            eval_interval: default_eval_interval(),
            eval_batches: default_eval_batches(),
            checkpoint_interval: default_checkpoint_interval(),
            log_interval: default_log_interval(),
            seed: default_seed(),
        }
    }
}

/// How long to train.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("self.type == 'Steps' ? has(self.steps) && !has(self.tokens) : has(self.tokens) && !has(self.steps)")
        .message("training.duration: with type Steps set steps (and not tokens); with type Tokens set tokens (and not steps)"),
)]
#[serde(rename_all = "camelCase")]
pub struct Duration {
    /// `Steps` or `Tokens`.
    #[serde(rename = "type")]
    pub type_: DurationType,
    /// Optimizer steps; type Steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub steps: Option<i64>,
    /// Training tokens, rounded up to whole steps; type Tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub tokens: Option<i64>,
}

impl Default for Duration {
    fn default() -> Self {
        Self { type_: DurationType::Steps, steps: Some(1000), tokens: None }
    }
}

/// Units of training duration.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DurationType {
    Steps,
    Tokens,
}

/// The optimizer.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("self.beta1 < 1.0 && self.beta2 < 1.0")
        .message("training.optimizer.beta1 and beta2 must be below 1.0: they are moving-average decay rates; typical values are 0.9 and 0.95"),
)]
#[serde(rename_all = "camelCase")]
pub struct OptimizerSpec {
    /// `adamw`, or `muon` (Newton–Schulz orthogonalized momentum for 2-D weights, AdamW for
    /// embeddings, head, norms and biases).
    #[serde(rename = "type", default)]
    pub type_: OptimizerType,
    /// Peak learning rate of AdamW (and of the AdamW part of Muon).
    #[serde(default = "default_lr")]
    #[schemars(range(min = 0.0, max = 10.0))]
    pub learning_rate: f64,
    /// Peak learning rate of Muon's orthogonalized updates.
    #[serde(default = "default_muon_lr")]
    #[schemars(range(min = 0.0, max = 10.0))]
    pub muon_learning_rate: f64,
    /// Decoupled weight decay, applied to 2-D weights only.
    #[serde(default = "default_weight_decay")]
    #[schemars(range(min = 0.0, max = 10.0))]
    pub weight_decay: f64,
    /// AdamW's first-moment decay (and Muon's momentum).
    #[serde(default = "default_beta1")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub beta1: f64,
    /// AdamW's second-moment decay.
    #[serde(default = "default_beta2")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub beta2: f64,
    /// Clip the global gradient norm to this value; 0 turns clipping off.
    #[serde(default = "default_grad_clip")]
    #[schemars(range(min = 0.0, max = 1000.0))]
    pub grad_clip: f64,
}

fn default_lr() -> f64 {
    1e-3
}
fn default_muon_lr() -> f64 {
    0.02
}
fn default_weight_decay() -> f64 {
    0.1
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.95
}
fn default_grad_clip() -> f64 {
    1.0
}

impl Default for OptimizerSpec {
    fn default() -> Self {
        Self {
            type_: OptimizerType::default(),
            learning_rate: default_lr(),
            muon_learning_rate: default_muon_lr(),
            weight_decay: default_weight_decay(),
            beta1: default_beta1(),
            beta2: default_beta2(),
            grad_clip: default_grad_clip(),
        }
    }
}

/// Optimizers.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OptimizerType {
    #[default]
    #[serde(rename = "adamw")]
    AdamW,
    #[serde(rename = "muon")]
    Muon,
}

/// The learning-rate schedule: a linear warm-up, then the shape.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleSpec {
    /// `cosine` decay to minLearningRateRatio, `trapezoidal` (constant, then a linear cool-down
    /// over the last cooldownFraction of training), or `constant`.
    #[serde(rename = "type", default)]
    pub type_: ScheduleType,
    /// Steps of linear warm-up from zero.
    #[serde(default = "default_warmup")]
    #[schemars(range(min = 0))]
    pub warmup_steps: i64,
    /// Final learning rate as a fraction of the peak.
    #[serde(default = "default_min_lr_ratio")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub min_learning_rate_ratio: f64,
    /// Fraction of training spent cooling down; trapezoidal only.
    #[serde(default = "default_cooldown")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub cooldown_fraction: f64,
}

fn default_warmup() -> i64 {
    100
}
fn default_min_lr_ratio() -> f64 {
    0.1
}
fn default_cooldown() -> f64 {
    0.2
}

impl Default for ScheduleSpec {
    fn default() -> Self {
        Self {
            type_: ScheduleType::default(),
            warmup_steps: default_warmup(),
            min_learning_rate_ratio: default_min_lr_ratio(),
            cooldown_fraction: default_cooldown(),
        }
    }
}

/// Schedule shapes.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ScheduleType {
    #[default]
    #[serde(rename = "cosine")]
    Cosine,
    #[serde(rename = "trapezoidal")]
    Trapezoidal,
    #[serde(rename = "constant")]
    Constant,
}

/// Compute precision. Master weights, optimizer state, norms, softmax, the router and the loss
/// stay in fp32.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    #[serde(rename = "bf16")]
    Bf16,
    #[serde(rename = "fp16")]
    Fp16,
    #[serde(rename = "fp32")]
    Fp32,
}
