//! The dense feed-forward, d → hidden → d, in every block that is not a mixture of experts:
//! GPT-2's GELU MLP, or Llama's SwiGLU, down(silu(gate(x)) · up(x)).
//!
//! SwiGLU's gate and up projections are one matrix, `fc.weight` [2·hidden, d], the gate in
//! rows 0..hidden and the up projection in rows hidden..2·hidden: one product, then the two
//! halves. An export to another framework splits it there.

use crate::config::{FeedForward, ModelConfig};
use crate::params::{Init, ParamBuilder, ParamGroup, ParamId, ParamStore};
use tch::Tensor;

pub struct Mlp {
    /// [hidden, d], or for SwiGLU [2·hidden, d]: the gate, then the up projection
    fc_w: ParamId,
    fc_b: Option<ParamId>,
    /// [d, hidden]
    proj_w: ParamId,
    proj_b: Option<ParamId>,
    feed_forward: FeedForward,
}

impl Mlp {
    pub fn new(b: &mut ParamBuilder, prefix: &str, cfg: &ModelConfig, hidden: i64) -> Self {
        let d = cfg.d_model;
        let input = cfg.feed_forward.input_width(hidden);
        let proj_std = 0.02 / (2.0 * cfg.layers as f64).sqrt();
        Self {
            fc_w: b.add(format!("{prefix}.fc.weight"), &[input, d], ParamGroup::Hidden, Init::Normal(0.02)),
            fc_b: cfg.bias.then(|| b.add(format!("{prefix}.fc.bias"), &[input], ParamGroup::Gain, Init::Zeros)),
            proj_w: b.add(format!("{prefix}.proj.weight"), &[d, hidden], ParamGroup::Hidden, Init::Normal(proj_std)),
            proj_b: cfg.bias.then(|| b.add(format!("{prefix}.proj.bias"), &[d], ParamGroup::Gain, Init::Zeros)),
            feed_forward: cfg.feed_forward,
        }
    }

    /// x: [.., d] → [.., d]
    pub fn forward(&self, p: &ParamStore, x: &Tensor) -> Tensor {
        let h = activate(self.feed_forward, &p.linear(x, self.fc_w, self.fc_b));
        p.linear(&h, self.proj_w, self.proj_b)
    }
}

/// The hidden activation of a feed-forward layer from its input projection `h`: GELU of
/// [.., hidden], or SwiGLU's silu(gate) · up of [.., 2·hidden] (the gate first) → [.., hidden].
pub fn activate(feed_forward: FeedForward, h: &Tensor) -> Tensor {
    match feed_forward {
        FeedForward::Gelu => h.gelu("none"),
        FeedForward::Swiglu => {
            let hidden = h.size().last().expect("a hidden dimension") / 2;
            h.narrow(-1, 0, hidden).silu() * h.narrow(-1, hidden, hidden)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::nano_model;
    use crate::rng::Rng;
    use tch::{Device, Kind};

    /// A SwiGLU MLP of d = 6, hidden 5, with biases and every weight random, in fp64.
    fn swiglu() -> (Mlp, ParamStore) {
        let mut cfg = nano_model(16);
        (cfg.d_model, cfg.feed_forward, cfg.bias) = (6, FeedForward::Swiglu, true);
        let mut b = ParamBuilder::default();
        let mlp = Mlp::new(&mut b, "mlp", &cfg, 5);
        let store = ParamStore::new(b, &mut Rng::new(1), Device::Cpu, Kind::Double);
        tch::manual_seed(2);
        tch::no_grad(|| {
            for i in 0..store.specs.len() {
                let mut leaf = store.get(ParamId(i)).shallow_clone();
                leaf.copy_(&Tensor::randn(leaf.size(), (Kind::Double, Device::Cpu)));
            }
        });
        (mlp, store)
    }

    /// down(silu(x Wg^T + bg) · (x Wu^T + bu)) + bd, with Wg, Wu the rows 0..5 and 5..10 of
    /// `fc.weight`, each product on its own.
    fn reference(mlp: &Mlp, p: &ParamStore, x: &Tensor) -> Tensor {
        let (w, b) = (p.get(mlp.fc_w), p.get(mlp.fc_b.unwrap()));
        let gate = x.matmul(&w.narrow(0, 0, 5).tr()) + b.narrow(0, 0, 5);
        let up = x.matmul(&w.narrow(0, 5, 5).tr()) + b.narrow(0, 5, 5);
        let silu = &gate / (gate.neg().exp() + 1.0);
        (silu * up).matmul(&p.get(mlp.proj_w).tr()) + p.get(mlp.proj_b.unwrap())
    }

    #[test]
    fn swiglu_is_down_of_silu_gate_times_up_with_the_gate_in_the_first_rows() {
        let (mlp, p) = swiglu();
        assert_eq!(p.spec(mlp.fc_w).shape, [10, 6]);
        assert_eq!(p.spec(mlp.proj_w).shape, [6, 5]);
        assert_eq!(p.spec(mlp.fc_b.unwrap()).shape, [10]);
        let x = Tensor::randn([3, 4, 6], (Kind::Double, Device::Cpu));
        let diff = (mlp.forward(&p, &x) - reference(&mlp, &p, &x)).abs().max().double_value(&[]);
        assert!(diff < 1e-12, "differs from the reference by {diff}");
    }

    #[test]
    fn swiglu_gradients_match_finite_differences() {
        let (mlp, p) = swiglu();
        let x = Tensor::randn([2, 3, 6], (Kind::Double, Device::Cpu)).set_requires_grad(true);
        let upstream = Tensor::randn([2, 3, 6], (Kind::Double, Device::Cpu));
        let loss = || (mlp.forward(&p, &x) * &upstream).sum(Kind::Double);
        let fc_b = p.get(mlp.fc_b.unwrap());
        crate::model::assert_gradients_match_finite_differences(loss, &[&x, p.get(mlp.fc_w), fc_b, p.get(mlp.proj_w)]);
    }
}
