//! Memory of one pipeline stage on one device, by part.

use serde::{Deserialize, Serialize};

use super::model::ResolvedModel;
use crate::v1alpha1::{FeedForward, Norm, OptimizerType, Precision};

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
    /// fp32 gradients (one flat buffer); with recomputation also the compute-precision
    /// gradients its block-by-block backward accumulates on the parameters.
    pub gradients: i64,
    /// Optimizer state: AdamW's two moments, Muon's momentum.
    pub optimizer: i64,
    /// Activations kept for the backward pass, for every micro-batch in flight, and with
    /// recomputation the one block rebuilt at a time.
    pub activations: i64,
    /// Last stage only: the fp32 log-probabilities the loss keeps for every micro-batch in flight
    /// (one with recomputation, whose head runs in the backward), and one micro-batch's logits
    /// and their gradient while the loss is taken and differentiated.
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
    // block input, norm output, q/k/v, attention output, residual after attention, second
    // norm; an RMSNorm also keeps its normalised input before the gain, which the gain's
    // gradient reads (LayerNorm's kernel rebuilds it from two saved statistics per token)
    let norms = match model.norm {
        Norm::LayerNorm => 0,
        Norm::RmsNorm => 2 * d,
    };
    let attention = 8 * d + norms;
    let ffn = match (&model.moe, model.is_moe_layer(layer)) {
        (Some(moe), true) => {
            // router probabilities, and per routed copy, in slots padded by the capacity factor:
            // the gathered input, the expert's hidden activations, and the expert's output, which
            // its gate multiplies; the shared experts' hidden activations
            let hidden = ffn_hidden_elements(model, moe.expert_hidden);
            let routed = 2 * d + hidden;
            moe.experts + (moe.top_k as f64 * moe.capacity_factor * routed as f64).ceil() as i64 + moe.shared_experts * hidden
        }
        _ => ffn_hidden_elements(model, model.ffn_hidden),
    };
    attention + ffn
}

/// Elements one token keeps inside a feed-forward layer (or expert) of `hidden` width for the
/// backward pass: GELU's hidden and activated hidden (2 · hidden); SwiGLU's gate and up
/// projection (one tensor of 2 · hidden), the SiLU of the gate and its product with the up
/// projection, which the down projection reads (4 · hidden).
fn ffn_hidden_elements(model: &ResolvedModel, hidden: i64) -> i64 {
    match model.feed_forward {
        FeedForward::Gelu => 2 * hidden,
        FeedForward::Swiglu => 4 * hidden,
    }
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
    let per_logit = s.model.vocab_size * s.micro_batch_tokens;
    // the log-probabilities the loss's backward reads, per micro-batch held; then one
    // micro-batch's logits and their gradient
    let logits = if s.last { 4 * per_logit * if s.recompute { 1 } else { s.in_flight } + (cb + 4) * per_logit } else { 0 };
    // With recomputation the last stage's head runs in the backward before its blocks are
    // rebuilt, so the rebuilt block and the logits are never held at once.
    let working = if s.recompute && s.last { (cb * s.micro_batch_tokens * working - logits).max(0) } else { cb * s.micro_batch_tokens * working };
    let activations = cb * s.micro_batch_tokens * kept * s.in_flight + working;
    let gradients = 4 * s.parameters + if s.recompute { cb * s.parameters } else { 0 };
    StageMemory { weights, gradients, optimizer, activations, logits, overhead: s.overhead, teacher: 0 }
}
