//! Memory of one pipeline stage on one device, by part.

use serde::{Deserialize, Serialize};

use super::model::ResolvedModel;
use crate::v1alpha1::{OptimizerType, Precision};

/// Bytes per element at a compute precision.
pub fn compute_bytes(precision: Precision) -> i64 {
    match precision {
        Precision::Bf16 | Precision::Fp16 => 2,
        Precision::Fp32 => 4,
    }
}

/// What one stage keeps in device memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StageMemory {
    /// fp32 master weights, plus a compute-precision copy below fp32.
    pub weights: i64,
    /// fp32 gradients (one flat buffer).
    pub gradients: i64,
    /// Optimizer state: AdamW's two moments, Muon's momentum.
    pub optimizer: i64,
    /// Activations kept for the backward pass, for every micro-batch in flight.
    pub activations: i64,
    /// Logits, their fp32 log-softmax and its gradient, last stage only.
    pub logits: i64,
    /// Runtime workspace (CUDA context, library workspaces).
    pub overhead: i64,
    /// A distillation teacher, last stage only: see [`teacher_memory`].
    #[serde(default, skip_serializing_if = "is_zero")]
    pub teacher: i64,
}

fn is_zero(bytes: &i64) -> bool {
    *bytes == 0
}

impl StageMemory {
    pub fn total(&self) -> i64 {
        self.weights + self.gradients + self.optimizer + self.activations + self.logits + self.overhead + self.teacher
    }
}

/// What a distillation teacher adds to the last stage: its frozen weights in the compute
/// precision (no master copy, gradient or optimizer state), and for one micro-batch its fp32
/// logits and their softened log-probabilities.
pub fn teacher_memory(teacher: &ResolvedModel, precision: Precision, micro_batch_tokens: i64) -> i64 {
    compute_bytes(precision) * teacher.parameters().total + 8 * teacher.vocab_size * micro_batch_tokens
}

/// Activation elements one token keeps in block `layer` for the backward pass.
pub fn block_activation_elements(model: &ResolvedModel, layer: i64) -> i64 {
    let d = model.d_model;
    // block input, norm output, q/k/v, attention output, residual after attention, second norm
    let attention = 8 * d;
    let ffn = match (&model.moe, model.is_moe_layer(layer)) {
        (Some(moe), true) => {
            // router logits, and per routed copy: the gathered input, hidden and activated hidden
            moe.experts + moe.top_k * (d + 2 * moe.expert_hidden) + moe.shared_experts * 2 * moe.expert_hidden
        }
        _ => 2 * model.ffn_hidden,
    };
    attention + ffn
}

/// The inputs of the memory estimate of one stage.
pub struct StageShape<'a> {
    pub model: &'a ResolvedModel,
    pub layers: std::ops::Range<i64>,
    pub first: bool,
    pub last: bool,
    /// Parameters the stage holds (a tied embedding is held by both the first and last stage).
    pub parameters: i64,
    /// Of those, 2-D hidden matrices (Muon's share).
    pub matrix_parameters: i64,
    pub precision: Precision,
    pub optimizer: OptimizerType,
    /// Replicas the optimizer state is sharded across (1 unsharded): each keeps its share.
    pub optimizer_shards: i64,
    pub recompute: bool,
    /// Tokens in one micro-batch.
    pub micro_batch_tokens: i64,
    /// Micro-batches whose activations the stage holds at its peak.
    pub in_flight: i64,
    pub overhead: i64,
}

pub fn stage_memory(s: &StageShape<'_>) -> StageMemory {
    let cb = compute_bytes(s.precision);
    let weights = 4 * s.parameters + if cb < 4 { cb * s.parameters } else { 0 };
    let optimizer = match s.optimizer {
        OptimizerType::AdamW => 8 * s.parameters,
        OptimizerType::Muon => 4 * s.matrix_parameters + 8 * (s.parameters - s.matrix_parameters),
    };
    // ZeRO-1: the state of the stage's parameters split evenly, the largest share counted
    let shards = s.optimizer_shards.max(1);
    let optimizer = (optimizer + shards - 1) / shards;
    // Elements per token kept for every micro-batch in flight, and rebuilt for one at a time.
    let all_blocks = || s.layers.clone().map(|l| block_activation_elements(s.model, l));
    let (kept, working) =
        if s.recompute { (s.layers.clone().count() as i64 * s.model.d_model, all_blocks().max().unwrap_or(0)) } else { (all_blocks().sum(), 0) };
    let activations = cb * s.micro_batch_tokens * (kept * s.in_flight + working);
    let logits = if s.last { (cb + 8) * s.model.vocab_size * s.micro_batch_tokens } else { 0 };
    StageMemory { weights, gradients: 4 * s.parameters, optimizer, activations, logits, overhead: s.overhead, teacher: 0 }
}
