//! What one GPU of a stage sends in one optimizer step, by kind: the replicas' gradient
//! all-reduce and weight all-gather, and the pipeline's activations and their gradients.

use serde::{Deserialize, Serialize};

use super::memory::compute_bytes;
use crate::v1alpha1::Precision;

/// Bytes one GPU of a stage sends per optimizer step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StageCommunication {
    /// Ring all-reduce of the stage's fp32 gradients across the replicas: 2·(R − 1)/R of them.
    pub gradients: i64,
    /// With sharded optimizer state, the ring all-gather of the updated fp32 weights: (R − 1)/R
    /// of them.
    pub weights: i64,
    /// Within the replica, every micro-batch: activations to the next stage, their gradients to
    /// the previous one.
    pub pipeline: i64,
}

impl StageCommunication {
    pub fn total(&self) -> i64 {
        self.gradients + self.weights + self.pipeline
    }
}

/// The inputs of one stage's traffic.
pub struct StageLinks {
    /// Parameters the stage holds.
    pub parameters: i64,
    pub replicas: i64,
    pub shard_optimizer_state: bool,
    pub first: bool,
    pub last: bool,
    /// Micro-batches of one replica's step, and the tokens of each.
    pub micro_batches: i64,
    pub micro_batch_tokens: i64,
    pub d_model: i64,
    pub precision: Precision,
}

/// `(R − 1)/R` of `bytes`, rounded up: what each member of a ring of R sends to gather (or
/// reduce-scatter) them.
fn ring_share(bytes: i64, replicas: i64) -> i64 {
    let r = replicas.max(1);
    (bytes * (r - 1) + r - 1) / r
}

pub fn stage_communication(s: &StageLinks) -> StageCommunication {
    let fp32 = 4 * s.parameters;
    // an all-reduce is a reduce-scatter then an all-gather
    let gradients = 2 * ring_share(fp32, s.replicas);
    let weights = if s.shard_optimizer_state { ring_share(fp32, s.replicas) } else { 0 };
    let neighbours = i64::from(!s.first) + i64::from(!s.last);
    let pipeline = neighbours * s.micro_batches * s.micro_batch_tokens * s.d_model * compute_bytes(s.precision);
    StageCommunication { gradients, weights, pipeline }
}
