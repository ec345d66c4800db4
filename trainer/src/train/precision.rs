//! Mixed precision with explicit casts (tch's autocast is CUDA- and fp16-only).
//!
//! What stays fp32 whatever the compute dtype: the master weights, optimizer state and gradient
//! accumulator (`params.rs`, `optim.rs`); layer-norm statistics (`block.rs` upcasts); the MoE
//! router's logits, softmax and gates (`moe.rs`); logits and cross-entropy (`gpt.rs`). Softmax
//! inside attention accumulates in fp32 in the SDPA kernels. Matmuls, attention and the
//! residual stream run in the compute dtype.

use crate::config::Precision;
use serde::{Deserialize, Serialize};
use tch::Kind;

pub fn compute_kind(p: Precision) -> Kind {
    match p {
        Precision::Fp32 => Kind::Float,
        Precision::Bf16 => Kind::BFloat16,
        Precision::Fp16 => Kind::Half,
    }
}

/// Dynamic loss scaling for fp16: the loss is multiplied by `scale` before backward so small
/// gradients survive fp16; an overflow skips the step and halves the scale, and every
/// `growth_interval` clean steps the scale doubles. For bf16/fp32 the scale stays 1.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossScaler {
    pub enabled: bool,
    pub scale: f64,
    pub growth_interval: i64,
    pub clean_steps: i64,
    pub skipped_steps: i64,
}

impl LossScaler {
    pub fn new(p: Precision) -> Self {
        let enabled = p == Precision::Fp16;
        Self { enabled, scale: if enabled { 65536.0 } else { 1.0 }, growth_interval: 1000, clean_steps: 0, skipped_steps: 0 }
    }

    /// Records whether the step's gradients were finite; returns whether to apply the step.
    pub fn update(&mut self, finite: bool) -> bool {
        if !self.enabled {
            return finite;
        }
        if finite {
            self.clean_steps += 1;
            if self.clean_steps >= self.growth_interval {
                self.scale = (self.scale * 2.0).min(2f64.powi(24));
                self.clean_steps = 0;
            }
            true
        } else {
            self.scale = (self.scale / 2.0).max(1.0);
            self.clean_steps = 0;
            self.skipped_steps += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_skips_and_shrinks_then_grows() {
        let mut s = LossScaler::new(Precision::Fp16);
        s.growth_interval = 2;
        assert!(!s.update(false));
        assert_eq!(s.scale, 32768.0);
        assert!(s.update(true));
        assert!(s.update(true));
        assert_eq!(s.scale, 65536.0);
        assert_eq!(s.skipped_steps, 1);
        let mut b = LossScaler::new(Precision::Bf16);
        assert!(b.update(true));
        assert_eq!(b.scale, 1.0);
    }
}
