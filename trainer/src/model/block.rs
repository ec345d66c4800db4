//! One pre-norm transformer block: x + attn(norm(x)), then + ffn(norm(x)), where the
//! feed-forward is a dense MLP or a mixture of experts.

use crate::config::ModelConfig;
use crate::model::attention::{Attention, Rotary};
use crate::model::{
    mlp::Mlp,
    moe::{Capacity, Moe, Routing},
};
use crate::params::{Init, ParamBuilder, ParamGroup, ParamId, ParamStore};
use frugal_api::v1alpha1::Norm as NormType;
use tch::{Kind, Tensor};

/// The normalisation of a block's inputs and of the head's: GPT-2's LayerNorm or Llama's
/// RMSNorm, as the model's `norm` says. Either has a gain `{prefix}.weight`; a LayerNorm of a
/// model with biases also `{prefix}.bias`.
pub enum Norm {
    /// (x − mean) / sqrt(var + 1e-5) · weight + bias, in fp32.
    Layer { w: ParamId, b: Option<ParamId> },
    /// weight · (x / sqrt(mean(x²) + 1e-6)), Hugging Face's `LlamaRMSNorm`: normalised in
    /// fp32, cast back to the input's dtype, then multiplied by the weight.
    Rms { w: ParamId },
}

/// RMSNorm's ε, Llama's.
pub const RMS_NORM_EPS: f64 = 1e-6;

impl Norm {
    pub fn new(b: &mut ParamBuilder, prefix: &str, cfg: &ModelConfig) -> Self {
        let d = cfg.d_model;
        let w = b.add(format!("{prefix}.weight"), &[d], ParamGroup::Gain, Init::Ones);
        match cfg.norm {
            NormType::LayerNorm => Self::Layer { w, b: cfg.bias.then(|| b.add(format!("{prefix}.bias"), &[d], ParamGroup::Gain, Init::Zeros)) },
            NormType::RmsNorm => Self::Rms { w },
        }
    }

    /// Normalises in fp32 (fp64 stays fp64) whatever the compute dtype, and returns the
    /// input's dtype.
    pub fn forward(&self, p: &ParamStore, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let reduced = |k: Kind| matches!(k, Kind::BFloat16 | Kind::Half);
        let f32 = |t: &Tensor| if reduced(t.kind()) { t.to_kind(Kind::Float) } else { t.shallow_clone() };
        let back = |y: Tensor| if reduced(kind) { y.to_kind(kind) } else { y };
        match *self {
            Self::Layer { w, b } => {
                let d = *x.size().last().unwrap();
                back(f32(x).layer_norm([d], Some(f32(p.get(w))), b.map(|i| f32(p.get(i))), 1e-5, true))
            }
            Self::Rms { w } => {
                let x = f32(x);
                let mean_square = x.square().mean_dim([-1i64].as_slice(), true, x.kind());
                p.get(w) * back(x * (mean_square + RMS_NORM_EPS).rsqrt())
            }
        }
    }
}

pub enum FeedForward {
    Dense(Mlp),
    Moe(Moe),
}

pub struct Block {
    pub index: i64,
    ln1: Norm,
    attn: Attention,
    ln2: Norm,
    ffn: FeedForward,
}

pub struct BlockOutput {
    pub y: Tensor,
    /// MoE load-balancing loss of this block.
    pub aux_loss: Option<Tensor>,
    pub dropped: Option<Tensor>,
    pub assignments: i64,
    pub routing: Option<Routing>,
    pub routing_mismatches: Option<Tensor>,
}

impl Block {
    pub fn new(b: &mut ParamBuilder, index: i64, cfg: &ModelConfig) -> Self {
        let prefix = format!("blocks.{index}");
        let ffn = match &cfg.moe {
            Some(m) if cfg.is_moe_layer(index) => FeedForward::Moe(Moe::new(b, &format!("{prefix}.moe"), cfg, m)),
            _ => FeedForward::Dense(Mlp::new(b, &format!("{prefix}.mlp"), cfg, cfg.ffn_hidden)),
        };
        Self {
            index,
            ln1: Norm::new(b, &format!("{prefix}.ln1"), cfg),
            attn: Attention::new(b, &format!("{prefix}.attn"), cfg),
            ln2: Norm::new(b, &format!("{prefix}.ln2"), cfg),
            ffn,
        }
    }

    pub fn is_moe(&self) -> bool {
        matches!(self.ffn, FeedForward::Moe(_))
    }

    /// x: [B, T, D] → [B, T, D]. `routing` replays an earlier MoE decision (recomputation);
    /// `capacity` bounds the experts' slots (training) or not (evaluation).
    pub fn forward(&self, p: &ParamStore, x: &Tensor, rope: Option<&Rotary>, routing: Option<&Routing>, capacity: Capacity) -> BlockOutput {
        let h = x + self.attn.forward(p, &self.ln1.forward(p, x), rope);
        let n = self.ln2.forward(p, &h);
        match &self.ffn {
            FeedForward::Dense(mlp) => {
                BlockOutput { y: &h + mlp.forward(p, &n), aux_loss: None, dropped: None, assignments: 0, routing: None, routing_mismatches: None }
            }
            FeedForward::Moe(moe) => {
                let out = moe.forward(p, &n, routing, capacity);
                BlockOutput {
                    y: &h + out.y,
                    aux_loss: Some(out.aux_loss),
                    dropped: Some(out.dropped),
                    assignments: out.assignments,
                    routing: Some(out.routing),
                    routing_mismatches: out.routing_mismatches,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FeedForward, Positions, nano_model};
    use crate::rng::Rng;
    use tch::Device;

    /// Llama's block at a small size: RMSNorm, SwiGLU, rotary positions, no biases.
    fn llama(d_model: i64) -> ModelConfig {
        let mut cfg = nano_model(16);
        (cfg.layers, cfg.d_model, cfg.heads, cfg.seq_len, cfg.ffn_hidden) = (1, d_model, 2, 4, 6);
        (cfg.norm, cfg.feed_forward, cfg.positions, cfg.bias) = (NormType::RmsNorm, FeedForward::Swiglu, Positions::Rotary, false);
        cfg
    }

    fn rms_norm(kind: Kind) -> (Norm, ParamStore) {
        let mut b = ParamBuilder::default();
        let cfg = ModelConfig { bias: true, ..llama(4) };
        let norm = Norm::new(&mut b, "ln", &cfg);
        assert_eq!(b.numel(), 4, "an RMSNorm has a gain and no bias, whatever the model's bias");
        let store = ParamStore::new(b, &mut Rng::new(0), Device::Cpu, kind);
        (norm, store)
    }

    #[test]
    fn rms_norm_divides_by_the_root_mean_square_then_scales() {
        let (norm, p) = rms_norm(Kind::Double);
        let Norm::Rms { w } = norm else { panic!("an RMSNorm") };
        assert!(p.get(w).equal(&Tensor::ones([4], (Kind::Double, Device::Cpu))), "initialised to ones");
        tch::no_grad(|| p.get(w).shallow_clone().copy_(&Tensor::from_slice(&[1.0, 0.5, 2.0, -1.0])));
        let x = Tensor::from_slice(&[1.0, 2.0, 3.0, 4.0, -3.0, 0.0, 0.0, 3.0]).view([1, 2, 4]);
        // mean squares 7.5 and 4.5, ε = 1e-6: x / sqrt(7.5 + 1e-6) and x / sqrt(4.5 + 1e-6), times
        // the gains
        let want = Tensor::from_slice(&[
            0.365_148_347_326_888_4,
            0.365_148_347_326_888_4,
            2.190_890_083_961_330_3,
            -1.460_593_389_307_553_6,
            -1.414_213_405_238_281,
            0.0,
            0.0,
            -1.414_213_405_238_281,
        ])
        .view([1, 2, 4]);
        let diff = (norm.forward(&p, &x) - want).abs().max().double_value(&[]);
        assert!(diff < 1e-12, "differs from the hand-computed values by {diff}");
    }

    #[test]
    fn rms_norm_in_bf16_normalises_in_fp32_and_casts_before_the_gain() {
        let (norm, p) = rms_norm(Kind::BFloat16);
        let Norm::Rms { w } = norm else { panic!("an RMSNorm") };
        tch::no_grad(|| p.get(w).shallow_clone().copy_(&Tensor::from_slice(&[1.0f32, 0.5, 2.0, -1.0]).to_kind(Kind::BFloat16)));
        tch::manual_seed(4);
        let x = (Tensor::randn([3, 5, 4], (Kind::Float, Device::Cpu)) * 7.0).to_kind(Kind::BFloat16);
        let y = norm.forward(&p, &x);
        assert_eq!(y.kind(), Kind::BFloat16);
        // Hugging Face's LlamaRMSNorm, step by step
        let xf = x.to_kind(Kind::Float);
        let variance = xf.pow_tensor_scalar(2).mean_dim([-1i64].as_slice(), true, Kind::Float);
        let want = p.get(w) * (&xf * (variance + 1e-6).rsqrt()).to_kind(Kind::BFloat16);
        assert!(y.equal(&want), "bf16 RMSNorm differs from LlamaRMSNorm's order of operations");
    }

    #[test]
    fn a_llama_blocks_gradients_match_finite_differences() {
        let cfg = llama(8);
        let mut b = ParamBuilder::default();
        let block = Block::new(&mut b, 0, &cfg);
        let p = ParamStore::new(b, &mut Rng::new(3), Device::Cpu, Kind::Double);
        tch::manual_seed(5);
        tch::no_grad(|| {
            for i in 0..p.specs.len() {
                let mut leaf = p.get(ParamId(i)).shallow_clone();
                leaf.copy_(
                    &(Tensor::randn(leaf.size(), (Kind::Double, Device::Cpu)) * 0.5 + if p.specs[i].group == ParamGroup::Gain { 1.0 } else { 0.0 }),
                );
            }
        });
        let names: Vec<&str> = p.specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "blocks.0.mlp.fc.weight",
                "blocks.0.mlp.proj.weight",
                "blocks.0.ln1.weight",
                "blocks.0.attn.qkv.weight",
                "blocks.0.attn.proj.weight",
                "blocks.0.ln2.weight"
            ]
        );
        let rope = Rotary::new(4, 4, Kind::Double, Device::Cpu);
        let x = Tensor::randn([2, 4, 8], (Kind::Double, Device::Cpu)).set_requires_grad(true);
        let upstream = Tensor::randn([2, 4, 8], (Kind::Double, Device::Cpu));
        let loss = || (block.forward(&p, &x, Some(&rope), None, Capacity::Factor).y * &upstream).sum(Kind::Double);
        let mut leaves = vec![&x];
        leaves.extend((0..p.specs.len()).map(|i| p.get(ParamId(i))));
        crate::model::assert_gradients_match_finite_differences(loss, &leaves);
    }
}
