//! The dense feed-forward: a GELU MLP, d → hidden → d, in every block that is not a mixture of
//! experts.

use crate::config::ModelConfig;
use crate::params::{Init, ParamBuilder, ParamGroup, ParamId, ParamStore};
use tch::Tensor;

pub struct Mlp {
    fc_w: ParamId,
    fc_b: Option<ParamId>,
    proj_w: ParamId,
    proj_b: Option<ParamId>,
}

impl Mlp {
    pub fn new(b: &mut ParamBuilder, prefix: &str, cfg: &ModelConfig, hidden: i64) -> Self {
        let d = cfg.d_model;
        let proj_std = 0.02 / (2.0 * cfg.layers as f64).sqrt();
        Self {
            fc_w: b.add(format!("{prefix}.fc.weight"), &[hidden, d], ParamGroup::Hidden, Init::Normal(0.02)),
            fc_b: cfg.bias.then(|| b.add(format!("{prefix}.fc.bias"), &[hidden], ParamGroup::Gain, Init::Zeros)),
            proj_w: b.add(format!("{prefix}.proj.weight"), &[d, hidden], ParamGroup::Hidden, Init::Normal(proj_std)),
            proj_b: cfg.bias.then(|| b.add(format!("{prefix}.proj.bias"), &[d], ParamGroup::Gain, Init::Zeros)),
        }
    }

    pub fn forward(&self, p: &ParamStore, x: &Tensor) -> Tensor {
        p.linear(&p.linear(x, self.fc_w, self.fc_b).gelu("none"), self.proj_w, self.proj_b)
    }
}
