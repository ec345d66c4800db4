//! The GPT: token (and learned position) embeddings, a stack of blocks, a final norm and a head
//! tied to the token embedding. Also the forward/backward of one micro-batch, with or without
//! activation recomputation.

use crate::model::attention::Rotary;
use crate::model::block::{Block, LayerNorm};
use crate::config::{ModelConfig, Positions};
use crate::model::moe::Routing;
use crate::params::{Init, ParamBuilder, ParamGroup, ParamId, ParamStore};
use tch::{Device, Kind, Reduction, Tensor};

pub struct Gpt {
    pub cfg: ModelConfig,
    wte: ParamId,
    wpe: Option<ParamId>,
    pub blocks: Vec<Block>,
    ln_f: LayerNorm,
    head: Option<ParamId>,
    rope: Option<Rotary>,
    aux_weight: f64,
}

/// What a forward (and backward) pass of one micro-batch measured.
pub struct PassStats {
    /// Mean cross-entropy over the micro-batch's tokens (fp32, detached).
    pub loss: Tensor,
    /// Sum over MoE layers of the load-balancing loss (detached), if any.
    pub aux_loss: Option<Tensor>,
    /// Dropped token-expert assignments, summed over MoE layers.
    pub dropped: Option<Tensor>,
    pub assignments: i64,
    /// Recomputation only: routing choices that differed from the first forward.
    pub routing_mismatches: Option<Tensor>,
}

/// The sum of two optional tensors (an absent one counts as zero).
pub(crate) fn add_opt(a: Option<Tensor>, b: Option<Tensor>) -> Option<Tensor> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a + b),
        (a, None) => a,
        (None, b) => b,
    }
}

impl Gpt {
    /// Declares the parameters; the caller lays them out in a [`ParamStore`].
    pub fn new(b: &mut ParamBuilder, cfg: &ModelConfig) -> Self {
        let d = cfg.d_model;
        let wte = b.add("wte.weight", &[cfg.vocab_size, d], ParamGroup::Embedding, Init::Normal(0.02));
        let wpe = (cfg.positions == Positions::Learned).then(|| b.add("wpe.weight", &[cfg.seq_len, d], ParamGroup::Embedding, Init::Normal(0.02)));
        let blocks = (0..cfg.layers).map(|i| Block::new(b, i, cfg)).collect();
        let ln_f = LayerNorm::new(b, "ln_f", cfg);
        let head = (!cfg.tied_embeddings).then(|| b.add("head.weight", &[cfg.vocab_size, d], ParamGroup::Embedding, Init::Normal(0.02)));
        Self { cfg: cfg.clone(), wte, wpe, blocks, ln_f, head, rope: None, aux_weight: cfg.moe.as_ref().map_or(0.0, |m| m.load_balance_weight) }
    }

    /// Parameters of the model `cfg` describes, counted from its declarations (no allocation).
    pub fn count_params(cfg: &ModelConfig) -> i64 {
        let mut b = ParamBuilder::default();
        Gpt::new(&mut b, cfg);
        b.numel()
    }

    /// Builds device-side tables (rotary) once the compute dtype and device are known.
    pub fn prepare(&mut self, kind: Kind, device: Device) {
        if self.cfg.positions == Positions::Rotary {
            self.rope = Some(Rotary::new(self.cfg.seq_len, self.cfg.head_dim(), kind, device));
        }
    }

    /// idx: [B, T] i64 → [B, T, D]
    pub fn embed(&self, p: &ParamStore, idx: &Tensor) -> Tensor {
        let t = idx.size()[1];
        let x = Tensor::embedding(p.get(self.wte), idx, -1, false, false);
        match self.wpe {
            Some(wpe) => x + p.get(wpe).narrow(0, 0, t),
            None => x,
        }
    }

    /// [B, T, D] → logits [B, T, V] in fp32.
    pub fn logits(&self, p: &ParamStore, x: &Tensor) -> Tensor {
        let x = self.ln_f.forward(p, x);
        let w = p.get(self.head.unwrap_or(self.wte));
        x.linear::<Tensor>(w, None).to_kind(Kind::Float)
    }

    /// Mean cross-entropy, computed in fp32.
    pub fn head_loss(&self, p: &ParamStore, x: &Tensor, targets: &Tensor) -> Tensor {
        let logits = self.logits(p, x);
        let v = self.cfg.vocab_size;
        logits.view([-1, v]).cross_entropy_loss::<Tensor>(&targets.view([-1]), None, Reduction::Mean, -100, 0.0)
    }

    /// Forward keeping the whole graph; returns the loss to differentiate (cross-entropy plus
    /// weighted auxiliary loss) and the stats.
    pub fn forward(&self, p: &ParamStore, idx: &Tensor, targets: &Tensor) -> (Tensor, PassStats) {
        let mut x = self.embed(p, idx);
        let (mut aux, mut dropped, mut assignments) = (None, None, 0);
        for block in &self.blocks {
            let out = block.forward(p, &x, self.rope.as_ref(), None);
            x = out.y;
            aux = add_opt(aux, out.aux_loss);
            dropped = add_opt(dropped, out.dropped);
            assignments += out.assignments;
        }
        let loss = self.head_loss(p, &x, targets);
        let total = match &aux {
            Some(a) => &loss + a * self.aux_weight,
            None => loss.shallow_clone(),
        };
        let stats = PassStats { loss: loss.detach(), aux_loss: aux.map(|a| a.detach()), dropped, assignments, routing_mismatches: None };
        (total, stats)
    }

    /// Forward and backward of one micro-batch; gradients, times `grad_scale`, accumulate on the
    /// parameter leaves. With `recompute`, blocks run forward without a graph keeping only their
    /// inputs (and MoE routing), and each is recomputed just before its backward.
    pub fn forward_backward(&self, p: &ParamStore, idx: &Tensor, targets: &Tensor, grad_scale: f64, recompute: bool) -> PassStats {
        if !recompute {
            let (total, stats) = self.forward(p, idx, targets);
            (total * grad_scale).backward();
            return stats;
        }
        // Forward without a graph, keeping block inputs and routing decisions.
        let mut inputs = Vec::with_capacity(self.blocks.len());
        let mut routings: Vec<Option<Routing>> = Vec::with_capacity(self.blocks.len());
        let (mut aux, mut dropped, mut assignments) = (None, None, 0);
        let x = tch::no_grad(|| {
            let mut x = self.embed(p, idx);
            for block in &self.blocks {
                let out = block.forward(p, &x, self.rope.as_ref(), None);
                inputs.push(x);
                routings.push(out.routing);
                aux = add_opt(aux.take(), out.aux_loss);
                dropped = add_opt(dropped.take(), out.dropped);
                assignments += out.assignments;
                x = out.y;
            }
            x
        });
        // Head and loss with a graph; its backward yields the gradient at the last block output.
        let x_last = x.detach().set_requires_grad(true);
        let loss = self.head_loss(p, &x_last, targets);
        (&loss * grad_scale).backward();
        let mut upstream = x_last.grad();
        let mut mismatches: Option<Tensor> = None;
        for (i, block) in self.blocks.iter().enumerate().rev() {
            let x_in = inputs[i].detach().set_requires_grad(true);
            let out = block.forward(p, &x_in, self.rope.as_ref(), routings[i].as_ref());
            mismatches = add_opt(mismatches, out.routing_mismatches);
            // Inject the upstream gradient: d/dy Σ(y·g) = g.
            let mut surrogate = (&out.y * &upstream).sum(Kind::Float);
            if let Some(a) = out.aux_loss {
                surrogate = surrogate + a * (self.aux_weight * grad_scale);
            }
            surrogate.backward();
            upstream = x_in.grad();
        }
        let x0 = self.embed(p, idx);
        (x0 * upstream).sum(Kind::Float).backward();
        PassStats { loss: loss.detach(), aux_loss: aux, dropped, assignments, routing_mismatches: mismatches }
    }

    /// Logits [B, T, V] (fp32) without a graph, for evaluation.
    pub fn eval_logits(&self, p: &ParamStore, idx: &Tensor) -> Tensor {
        tch::no_grad(|| {
            let mut x = self.embed(p, idx);
            for block in &self.blocks {
                x = block.forward(p, &x, self.rope.as_ref(), None).y;
            }
            self.logits(p, &x)
        })
    }

    /// Mean cross-entropy without a graph.
    pub fn eval_loss(&self, p: &ParamStore, idx: &Tensor, targets: &Tensor) -> Tensor {
        tch::no_grad(|| {
            let mut x = self.embed(p, idx);
            for block in &self.blocks {
                x = block.forward(p, &x, self.rope.as_ref(), None).y;
            }
            self.head_loss(p, &x, targets)
        })
    }
}
