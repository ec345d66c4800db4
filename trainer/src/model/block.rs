//! One pre-norm transformer block: x + attn(norm(x)), then + ffn(norm(x)), where the
//! feed-forward is a dense MLP or a mixture of experts.

use crate::config::ModelConfig;
use crate::model::attention::{Attention, Rotary};
use crate::model::{
    mlp::Mlp,
    moe::{Moe, Routing},
};
use crate::params::{Init, ParamBuilder, ParamGroup, ParamId, ParamStore};
use tch::{Kind, Tensor};

pub struct LayerNorm {
    w: ParamId,
    b: Option<ParamId>,
}

impl LayerNorm {
    pub fn new(b: &mut ParamBuilder, prefix: &str, cfg: &ModelConfig) -> Self {
        let d = cfg.d_model;
        Self {
            w: b.add(format!("{prefix}.weight"), &[d], ParamGroup::Gain, Init::Ones),
            b: cfg.bias.then(|| b.add(format!("{prefix}.bias"), &[d], ParamGroup::Gain, Init::Zeros)),
        }
    }

    /// Normalises in fp32 whatever the compute dtype, and returns the input's dtype.
    pub fn forward(&self, p: &ParamStore, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let d = *x.size().last().unwrap();
        let f32 = |t: &Tensor| if t.kind() == Kind::Float { t.shallow_clone() } else { t.to_kind(Kind::Float) };
        let y = f32(x).layer_norm([d], Some(f32(p.get(self.w))), self.b.map(|i| f32(p.get(i))), 1e-5, true);
        if kind == Kind::Float { y } else { y.to_kind(kind) }
    }
}

pub enum FeedForward {
    Dense(Mlp),
    Moe(Moe),
}

pub struct Block {
    pub index: i64,
    ln1: LayerNorm,
    attn: Attention,
    ln2: LayerNorm,
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
            ln1: LayerNorm::new(b, &format!("{prefix}.ln1"), cfg),
            attn: Attention::new(b, &format!("{prefix}.attn"), cfg),
            ln2: LayerNorm::new(b, &format!("{prefix}.ln2"), cfg),
            ffn,
        }
    }

    pub fn is_moe(&self) -> bool {
        matches!(self.ffn, FeedForward::Moe(_))
    }

    /// x: [B, T, D] → [B, T, D]. `routing` replays an earlier MoE decision (recomputation).
    pub fn forward(&self, p: &ParamStore, x: &Tensor, rope: Option<&Rotary>, routing: Option<&Routing>) -> BlockOutput {
        let h = x + self.attn.forward(p, &self.ln1.forward(p, x), rope);
        let n = self.ln2.forward(p, &h);
        match &self.ffn {
            FeedForward::Dense(mlp) => {
                BlockOutput { y: &h + mlp.forward(p, &n), aux_loss: None, dropped: None, assignments: 0, routing: None, routing_mismatches: None }
            }
            FeedForward::Moe(moe) => {
                let out = moe.forward(p, &n, routing);
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
