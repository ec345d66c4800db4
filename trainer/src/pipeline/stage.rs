//! One pipeline stage's share of the GPT: the token (and position) embedding on the first stage,
//! a contiguous range of blocks, and the final norm, head and loss on the last. Parameters keep
//! their global names, and are initialised exactly as the whole model would be, so any split of
//! the same job starts from the same weights and a checkpoint loads into any stage count.
//!
//! With tied embeddings the last stage holds its own copy of `wte.weight` as the head; the engine
//! sums the two copies' gradients across the transport so that they stay equal.

use crate::model::attention::Rotary;
use crate::model::block::{Block, LayerNorm};
use crate::config::{ModelConfig, Positions};
use crate::model::gpt::{Gpt, add_opt};
use crate::model::moe::Routing;
use crate::params::{Init, ParamBuilder, ParamGroup, ParamId, ParamStore};
use crate::rng::Rng;
use frugal_api::contract::StageLayout;
use frugal_api::planner::partition_layers;
use tch::{Device, Kind, Reduction, Tensor};

/// The stages of a `stages`-way pipeline over `model`, split by the planner's cost model.
pub fn layouts(model: &ModelConfig, stages: usize) -> Vec<StageLayout> {
    let ranges = partition_layers(model, stages as i64);
    let n = ranges.len();
    ranges.into_iter().enumerate().map(|(i, layers)| StageLayout { index: i as i64, layers, embedding: i == 0, head: i + 1 == n }).collect()
}

pub struct StageModel {
    pub cfg: ModelConfig,
    pub layout: StageLayout,
    wte: Option<ParamId>,
    wpe: Option<ParamId>,
    pub blocks: Vec<Block>,
    ln_f: Option<LayerNorm>,
    /// The output projection: `head.weight`, or with tied embeddings this stage's `wte.weight`.
    head: Option<ParamId>,
    rope: Option<Rotary>,
    pub aux_weight: f64,
}

/// What a stage's forward of one micro-batch produced.
pub struct StageOutput {
    /// Activations [B, T, D], or on the last stage the mean cross-entropy (the logits without
    /// targets).
    pub y: Tensor,
    /// Sum of this stage's MoE load-balancing losses.
    pub aux_loss: Option<Tensor>,
    pub routings: Vec<Option<Routing>>,
    pub dropped: Option<Tensor>,
    pub assignments: i64,
}
impl StageModel {
    /// Declares this stage's parameters in the whole model's order.
    pub fn new(b: &mut ParamBuilder, cfg: &ModelConfig, layout: &StageLayout) -> Self {
        let d = cfg.d_model;
        let tied_head = layout.head && cfg.tied_embeddings;
        let wte = (layout.embedding || tied_head).then(|| b.add("wte.weight", &[cfg.vocab_size, d], ParamGroup::Embedding, Init::Normal(0.02)));
        let wpe = (layout.embedding && cfg.positions == Positions::Learned)
            .then(|| b.add("wpe.weight", &[cfg.seq_len, d], ParamGroup::Embedding, Init::Normal(0.02)));
        let blocks = layout.layers.clone().map(|i| Block::new(b, i, cfg)).collect();
        let ln_f = layout.head.then(|| LayerNorm::new(b, "ln_f", cfg));
        let head = if !layout.head {
            None
        } else if cfg.tied_embeddings {
            wte
        } else {
            Some(b.add("head.weight", &[cfg.vocab_size, d], ParamGroup::Embedding, Init::Normal(0.02)))
        };
        Self {
            cfg: cfg.clone(),
            layout: layout.clone(),
            wte,
            wpe,
            blocks,
            ln_f,
            head,
            rope: None,
            aux_weight: cfg.moe.as_ref().map_or(0.0, |m| m.load_balance_weight),
        }
    }

    /// Builds the stage and its parameters on `device`, initialised as [`Gpt`] initialises the
    /// whole model from `seed`.
    pub fn build(cfg: &ModelConfig, layout: &StageLayout, seed: u64, device: Device, kind: Kind) -> (Self, ParamStore) {
        let mut b = ParamBuilder::default();
        let mut model = Self::new(&mut b, cfg, layout);
        model.prepare(kind, device);
        let mut unused = Rng::derive(seed, "unused");
        let mut store = ParamStore::new(b, &mut unused, device, kind);
        // The whole model's initial weights, on the host, then this stage's share of them.
        let mut full = ParamBuilder::default();
        Gpt::new(&mut full, cfg);
        let whole = ParamStore::new(full, &mut Rng::derive(seed, "init"), Device::Cpu, Kind::Float);
        tch::no_grad(|| {
            for i in 0..store.specs.len() {
                let j = whole.find(&store.specs[i].name).expect("a stage parameter is a model parameter");
                store.master_view(i).copy_(&whole.master_view(j));
            }
        });
        store.sync_compute();
        (model, store)
    }

    pub fn prepare(&mut self, kind: Kind, device: Device) {
        if self.cfg.positions == Positions::Rotary {
            self.rope = Some(Rotary::new(self.cfg.seq_len, self.cfg.head_dim(), kind, device));
        }
    }

    /// The tied head's copy of the embedding on the last stage (not the first): its gradient
    /// is summed with the first stage's.
    pub fn tied_copy(&self) -> Option<ParamId> {
        (self.cfg.tied_embeddings && self.layout.head && !self.layout.embedding).then(|| self.head.unwrap())
    }

    /// The embedding the first stage holds, when the head is tied to it on another stage.
    pub fn tied_original(&self) -> Option<ParamId> {
        (self.cfg.tied_embeddings && self.layout.embedding && !self.layout.head).then(|| self.wte.unwrap())
    }

    /// input: token ids [B, T] on the first stage, else activations [B, T, D]. On the last stage
    /// the output is the mean cross-entropy against `targets`, or without them the logits
    /// [B, T, V] in fp32 (evaluation). `routings` replays MoE decisions (recomputation).
    pub fn forward(&self, p: &ParamStore, input: &Tensor, targets: Option<&Tensor>, routings: Option<&[Option<Routing>]>) -> StageOutput {
        let mut x = match self.wte.filter(|_| self.layout.embedding) {
            Some(wte) => {
                let t = input.size()[1];
                let e = Tensor::embedding(p.get(wte), input, -1, false, false);
                match self.wpe {
                    Some(wpe) => e + p.get(wpe).narrow(0, 0, t),
                    None => e,
                }
            }
            None => input.shallow_clone(),
        };
        let (mut aux, mut dropped, mut assignments) = (None, None, 0);
        let mut kept = Vec::with_capacity(self.blocks.len());
        for (i, block) in self.blocks.iter().enumerate() {
            let replay = routings.and_then(|r| r[i].as_ref());
            let out = block.forward(p, &x, self.rope.as_ref(), replay);
            x = out.y;
            aux = add_opt(aux, out.aux_loss);
            dropped = add_opt(dropped, out.dropped);
            assignments += out.assignments;
            kept.push(out.routing);
        }
        let y = match (&self.ln_f, self.head) {
            (Some(ln_f), Some(head)) => {
                let logits = ln_f.forward(p, &x).linear::<Tensor>(p.get(head), None).to_kind(Kind::Float);
                let v = self.cfg.vocab_size;
                match targets {
                    Some(targets) => logits.view([-1, v]).cross_entropy_loss::<Tensor>(&targets.view([-1]), None, Reduction::Mean, -100, 0.0),
                    None => logits,
                }
            }
            _ => x,
        };
        StageOutput { y, aux_loss: aux, routings: kept, dropped, assignments }
    }
}
