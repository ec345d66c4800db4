//! The GPT: token (and learned position) embeddings, a stack of blocks, a final norm and a head
//! tied to the token embedding. A [`Gpt`] holds a slice of the model, a [`StageLayout`]: the whole
//! of it in a single-process run, one pipeline stage's share in a pipelined run (the embedding on
//! the first stage, a contiguous range of blocks, the norm, head and loss on the last), the way
//! torchtitan splits one module list. Every slice declares its parameters under their global
//! names and starts from the whole model's initial weights, so any split of a job starts from the
//! same weights and a checkpoint loads into any stage count. A slice's forward keeps its graph,
//! or with activation recomputation keeps only each block's input and recomputes the blocks one
//! at a time in the backward (per-block recomputation, as the planner's memory model assumes). The head's loss is
//! the cross-entropy against the data's next tokens, mixed with a teacher's soft targets when
//! distilling (`distill.rs`).
//!
//! With tied embeddings a last stage that is not also the first holds its own copy of
//! `wte.weight` as the head; the worker sums the two copies' gradients so that they stay
//! equal.

use crate::config::{ModelConfig, Positions};
use crate::model::attention::Rotary;
use crate::model::block::{Block, Norm};
use crate::model::moe::{Capacity, Routing};
use crate::model::soft::SoftTargets;
use crate::params::{Init, ParamBuilder, ParamGroup, ParamId, ParamStore};
use crate::rng::Rng;
use frugal_api::contract::StageLayout;
use tch::{Device, Kind, Reduction, Tensor};

pub struct Gpt {
    pub cfg: ModelConfig,
    /// The part of the model this holds ([`whole`] for a single-process run).
    pub layout: StageLayout,
    /// The token embedding: on the first stage, and on a last stage whose head is tied to it.
    wte: Option<ParamId>,
    wpe: Option<ParamId>,
    pub blocks: Vec<Block>,
    ln_f: Option<Norm>,
    /// The output projection on the last stage: `head.weight`, or with tied embeddings `wte`.
    head: Option<ParamId>,
    rope: Option<Rotary>,
    pub aux_weight: f64,
}

/// The layout of the whole model: every layer, the embedding and the head.
pub fn whole(cfg: &ModelConfig) -> StageLayout {
    StageLayout { index: 0, layers: 0..cfg.layers, embedding: true, head: true }
}

/// What the last stage's loss compares its logits with.
#[derive(Clone, Copy)]
pub struct Targets<'a> {
    /// The data's next tokens [B, T].
    pub tokens: &'a Tensor,
    /// Distilling: the teacher's predictions of the same inputs.
    pub soft: Option<&'a SoftTargets>,
}

impl<'a> From<&'a Tensor> for Targets<'a> {
    fn from(tokens: &'a Tensor) -> Self {
        Self { tokens, soft: None }
    }
}

/// The head's losses of one micro-batch, fp32.
pub struct HeadLoss {
    /// What to differentiate: the cross-entropy, or distilling, its mix with the soft loss.
    pub objective: Tensor,
    /// Mean cross-entropy against the data's tokens.
    pub cross_entropy: Tensor,
    /// Distilling: T²·KL from the teacher's softened distribution, the mean over tokens.
    pub soft: Option<Tensor>,
}

/// What a forward (and backward) pass of one micro-batch measured.
pub struct PassStats {
    /// Mean cross-entropy over the micro-batch's tokens (fp32, detached).
    pub loss: Tensor,
    /// Distilling: the mean soft loss (detached).
    pub soft_loss: Option<Tensor>,
    /// Sum over MoE layers of the load-balancing loss (detached), if any.
    pub aux_loss: Option<Tensor>,
    /// Dropped token-expert assignments, summed over MoE layers.
    pub dropped: Option<Tensor>,
    pub assignments: i64,
    /// Recomputation only: routing choices that differed from the first forward.
    pub routing_mismatches: Option<Tensor>,
}

/// What the forward of a slice of the model produced for one micro-batch.
pub struct SliceOutput {
    /// Activations [B, T, D]; on the last stage the loss to differentiate against the targets
    /// (see [`HeadLoss`]), or without targets the logits [B, T, V] in fp32.
    pub y: Tensor,
    /// The last stage with targets: the mean cross-entropy, and distilling the soft loss
    /// (detached).
    pub cross_entropy: Option<Tensor>,
    pub soft_loss: Option<Tensor>,
    /// Sum of the slice's MoE load-balancing losses.
    pub aux_loss: Option<Tensor>,
    /// Each block's MoE routing (`None` for a dense block), for recomputation to replay.
    pub routings: Vec<Option<Routing>>,
    pub dropped: Option<Tensor>,
    pub assignments: i64,
}

/// What [`Gpt::forward_recorded`] keeps of a micro-batch for its backward.
pub struct Recorded {
    /// Each block's input [B, T, D].
    block_inputs: Vec<Tensor>,
    /// Each block's MoE routing (`None` for a dense block), replayed by the recomputation.
    routings: Vec<Option<Routing>>,
    /// The last stage: the last block's output, the head's input.
    head_input: Option<Tensor>,
}

/// A forward without a graph: its output and what the backward recomputes from.
pub struct RecordedForward {
    /// The activations [B, T, D] a stage before the last sends on.
    pub output: Option<Tensor>,
    pub recorded: Recorded,
    /// Sum of the slice's MoE load-balancing losses, the dropped assignments and all
    /// assignments (as [`SliceOutput`] has them).
    pub aux_loss: Option<Tensor>,
    pub dropped: Option<Tensor>,
    pub assignments: i64,
}

/// What [`Gpt::backward_recomputed`] returns.
pub struct RecomputedBackward {
    /// The gradient at the slice's input (activations), to send upstream; `None` on the first
    /// stage.
    pub input_grad: Option<Tensor>,
    /// The last stage: the head's losses of the micro-batch (detached).
    pub head: Option<HeadLoss>,
    /// Routing choices the recomputation made otherwise than the first forward.
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
    /// Declares the whole model's parameters; the caller lays them out in a [`ParamStore`].
    pub fn new(b: &mut ParamBuilder, cfg: &ModelConfig) -> Self {
        Self::slice(b, cfg, &whole(cfg))
    }

    /// Declares the parameters of the `layout` slice, in the whole model's order.
    pub fn slice(b: &mut ParamBuilder, cfg: &ModelConfig, layout: &StageLayout) -> Self {
        let d = cfg.d_model;
        let tied_head = layout.head && cfg.tied_embeddings;
        let embedding = |b: &mut ParamBuilder, name: &str, rows: i64| b.add(name, &[rows, d], ParamGroup::Embedding, Init::Normal(0.02));
        let wte = (layout.embedding || tied_head).then(|| embedding(b, "wte.weight", cfg.vocab_size));
        let wpe = (layout.embedding && cfg.positions == Positions::Learned).then(|| embedding(b, "wpe.weight", cfg.seq_len));
        let blocks = layout.layers.clone().map(|i| Block::new(b, i, cfg)).collect();
        let ln_f = layout.head.then(|| Norm::new(b, "ln_f", cfg));
        let head = match (layout.head, tied_head) {
            (false, _) => None,
            (true, true) => wte,
            (true, false) => Some(embedding(b, "head.weight", cfg.vocab_size)),
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

    /// Builds the `layout` slice and its parameters on `device`, initialised as the whole model
    /// is from `seed` (the same weights whatever the split).
    pub fn build_slice(cfg: &ModelConfig, layout: &StageLayout, seed: u64, device: Device, kind: Kind) -> (Self, ParamStore) {
        let mut b = ParamBuilder::default();
        let mut model = Self::slice(&mut b, cfg, layout);
        model.prepare(kind, device);
        if *layout == whole(cfg) {
            let store = ParamStore::new(b, &mut Rng::derive(seed, "init"), device, kind);
            return (model, store);
        }
        let mut unused = Rng::derive(seed, "unused");
        let mut store = ParamStore::new(b, &mut unused, device, kind);
        // The whole model's initial weights, on the host, then this slice's share of them.
        let mut full = ParamBuilder::default();
        Gpt::new(&mut full, cfg);
        let all = ParamStore::new(full, &mut Rng::derive(seed, "init"), Device::Cpu, Kind::Float);
        tch::no_grad(|| {
            for i in 0..store.specs.len() {
                let j = all.find(&store.specs[i].name).expect("a slice's parameter is a model parameter");
                store.master_view(i).copy_(&all.master_view(j));
            }
        });
        store.sync_compute();
        (model, store)
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

    /// MoE blocks in this slice.
    pub fn moe_blocks(&self) -> usize {
        self.blocks.iter().filter(|b| b.is_moe()).count()
    }

    /// The tied head's copy of the embedding on a last stage that is not also the first: its
    /// gradient is summed with the first stage's.
    pub fn tied_copy(&self) -> Option<ParamId> {
        (self.cfg.tied_embeddings && self.layout.head && !self.layout.embedding).then(|| self.head.expect("the last stage has a head"))
    }

    /// The embedding the first stage holds, when the head is tied to it on another stage.
    pub fn tied_original(&self) -> Option<ParamId> {
        (self.cfg.tied_embeddings && self.layout.embedding && !self.layout.head).then(|| self.wte.expect("the first stage has the embedding"))
    }

    /// idx: [B, T] i64 → [B, T, D] (the first stage).
    pub fn embed(&self, p: &ParamStore, idx: &Tensor) -> Tensor {
        let t = idx.size()[1];
        let wte = self.wte.filter(|_| self.layout.embedding).expect("the embedding is on the first stage");
        let x = Tensor::embedding(p.get(wte), idx, -1, false, false);
        match self.wpe {
            Some(wpe) => x + p.get(wpe).narrow(0, 0, t),
            None => x,
        }
    }

    /// [B, T, D] → logits [B, T, V] in fp32 (the last stage).
    pub fn logits(&self, p: &ParamStore, x: &Tensor) -> Tensor {
        let (ln_f, head) = self.ln_f.as_ref().zip(self.head).expect("the head is on the last stage");
        ln_f.forward(p, x).linear::<Tensor>(p.get(head), None).to_kind(Kind::Float)
    }

    /// The head's losses against `targets`, computed in fp32 (the last stage).
    pub fn head_losses(&self, p: &ParamStore, x: &Tensor, targets: Targets) -> HeadLoss {
        let logits = self.logits(p, x);
        let v = self.cfg.vocab_size;
        let cross_entropy = logits.view([-1, v]).cross_entropy_loss::<Tensor>(&targets.tokens.view([-1]), None, Reduction::Mean, -100, 0.0);
        match targets.soft {
            Some(soft) => {
                let soft_loss = soft.loss.soft_loss(&logits, &soft.logits);
                HeadLoss { objective: soft.loss.mix(&cross_entropy, &soft_loss), cross_entropy, soft: Some(soft_loss) }
            }
            None => HeadLoss { objective: cross_entropy.shallow_clone(), cross_entropy, soft: None },
        }
    }

    /// The slice's training forward. `input`: token ids [B, T] on the first stage, else
    /// activations [B, T, D]. On the last stage the output is the loss against `targets`, or
    /// without them the logits. `routings` replays MoE decisions (recomputation).
    pub fn forward_slice(&self, p: &ParamStore, input: &Tensor, targets: Option<Targets>, routings: Option<&[Option<Routing>]>) -> SliceOutput {
        self.run_slice(p, input, targets, routings, Capacity::Factor)
    }

    /// The slice's evaluation forward, without a graph and with dropless experts: on the last
    /// stage the logits [B, T, V] in fp32, elsewhere the activations [B, T, D] to send on.
    pub fn eval_slice(&self, p: &ParamStore, input: &Tensor) -> Tensor {
        tch::no_grad(|| self.run_slice(p, input, None, None, Capacity::Dropless).y)
    }

    fn run_slice(
        &self,
        p: &ParamStore,
        input: &Tensor,
        targets: Option<Targets>,
        routings: Option<&[Option<Routing>]>,
        capacity: Capacity,
    ) -> SliceOutput {
        let mut x = if self.layout.embedding { self.embed(p, input) } else { input.shallow_clone() };
        let (mut aux, mut dropped, mut assignments) = (None, None, 0);
        let mut kept = Vec::with_capacity(self.blocks.len());
        for (i, block) in self.blocks.iter().enumerate() {
            let replay = routings.and_then(|r| r[i].as_ref());
            let out = block.forward(p, &x, self.rope.as_ref(), replay, capacity);
            x = out.y;
            aux = add_opt(aux, out.aux_loss);
            dropped = add_opt(dropped, out.dropped);
            assignments += out.assignments;
            kept.push(out.routing);
        }
        let (y, cross_entropy, soft_loss) = match (self.layout.head, targets) {
            (false, _) => (x, None, None),
            (true, Some(targets)) => {
                let head = self.head_losses(p, &x, targets);
                (head.objective, Some(head.cross_entropy.detach()), head.soft.map(|s| s.detach()))
            }
            (true, None) => (self.logits(p, &x), None, None),
        };
        SliceOutput { y, cross_entropy, soft_loss, aux_loss: aux, routings: kept, dropped, assignments }
    }

    /// Forward of the whole model keeping the graph; returns the loss to differentiate (the
    /// head's, plus the weighted auxiliary loss) and the stats.
    pub fn forward<'a>(&self, p: &ParamStore, idx: &Tensor, targets: impl Into<Targets<'a>>) -> (Tensor, PassStats) {
        let out = self.forward_slice(p, idx, Some(targets.into()), None);
        let total = match &out.aux_loss {
            Some(a) => &out.y + a * self.aux_weight,
            None => out.y,
        };
        let stats = PassStats {
            loss: out.cross_entropy.expect("the whole model's forward has a head"),
            soft_loss: out.soft_loss,
            aux_loss: out.aux_loss.map(|a| a.detach()),
            dropped: out.dropped,
            assignments: out.assignments,
            routing_mismatches: None,
        };
        (total, stats)
    }

    /// The slice's forward without a graph, keeping only what [`Gpt::backward_recomputed`]
    /// needs: each block's input and MoE routing, and on the last stage the head's input (the
    /// head and its loss run in the backward, once). `input`: token ids [B, T] on the first
    /// stage, else activations [B, T, D]. Per-block recomputation: between a micro-batch's
    /// forward and its backward a slice holds one [B, T, D] tensor per block.
    pub fn forward_recorded(&self, p: &ParamStore, input: &Tensor) -> RecordedForward {
        tch::no_grad(|| {
            let mut x = if self.layout.embedding { self.embed(p, input) } else { input.shallow_clone() };
            let n = self.blocks.len();
            let mut recorded = Recorded { block_inputs: Vec::with_capacity(n), routings: Vec::with_capacity(n), head_input: None };
            let (mut aux_loss, mut dropped, mut assignments) = (None, None, 0);
            for block in &self.blocks {
                let out = block.forward(p, &x, self.rope.as_ref(), None, Capacity::Factor);
                recorded.block_inputs.push(x);
                recorded.routings.push(out.routing);
                aux_loss = add_opt(aux_loss.take(), out.aux_loss);
                dropped = add_opt(dropped.take(), out.dropped);
                assignments += out.assignments;
                x = out.y;
            }
            let output = if self.layout.head {
                recorded.head_input = Some(x);
                None
            } else {
                Some(x)
            };
            RecordedForward { output, recorded, aux_loss, dropped, assignments }
        })
    }

    /// The backward of a [`Gpt::forward_recorded`] forward, recomputing each block just before
    /// its own backward (replaying its MoE routing). On the last stage `upstream` is `None`: the
    /// head's loss against `targets` is computed on the head's input with a graph and differentiated,
    /// times `grad_scale`; elsewhere `upstream` is the gradient arriving at the slice's output.
    /// Gradients accumulate on the parameter leaves; the MoE auxiliary losses are added with
    /// weight × `grad_scale`. Returns the gradient at the slice's input (none on the first stage,
    /// whose gradient ends in the embedding).
    pub fn backward_recomputed(
        &self,
        p: &ParamStore,
        input: &Tensor,
        recorded: Recorded,
        upstream: Option<Tensor>,
        targets: Option<Targets>,
        grad_scale: f64,
    ) -> RecomputedBackward {
        let (mut upstream, head) = match upstream {
            Some(g) => (g, None),
            None => {
                let x_last = recorded.head_input.as_ref().expect("the last stage recorded the head's input").detach().set_requires_grad(true);
                let head = self.head_losses(p, &x_last, targets.expect("the last stage's backward has targets"));
                (&head.objective * grad_scale).backward();
                (x_last.grad(), Some(head))
            }
        };
        let mut routing_mismatches: Option<Tensor> = None;
        for (i, block) in self.blocks.iter().enumerate().rev() {
            let x_in = recorded.block_inputs[i].detach().set_requires_grad(true);
            let out = block.forward(p, &x_in, self.rope.as_ref(), recorded.routings[i].as_ref(), Capacity::Factor);
            routing_mismatches = add_opt(routing_mismatches, out.routing_mismatches);
            // Inject the upstream gradient: d/dy Σ(y·g) = g.
            let mut surrogate = (&out.y * &upstream).sum(Kind::Float);
            if let Some(a) = out.aux_loss {
                surrogate = surrogate + a * (self.aux_weight * grad_scale);
            }
            surrogate.backward();
            upstream = x_in.grad();
        }
        let input_grad = if self.layout.embedding {
            (self.embed(p, input) * upstream).sum(Kind::Float).backward();
            None
        } else {
            Some(upstream)
        };
        let head =
            head.map(|h| HeadLoss { objective: h.objective.detach(), cross_entropy: h.cross_entropy.detach(), soft: h.soft.map(|s| s.detach()) });
        RecomputedBackward { input_grad, head, routing_mismatches }
    }

    /// Forward and backward of one micro-batch of the whole model; gradients, times
    /// `grad_scale`, accumulate on the parameter leaves. With `recompute`, per-block
    /// recomputation ([`Gpt::forward_recorded`], [`Gpt::backward_recomputed`]).
    pub fn forward_backward<'a>(&self, p: &ParamStore, idx: &Tensor, targets: impl Into<Targets<'a>>, grad_scale: f64, recompute: bool) -> PassStats {
        if !recompute {
            let (total, stats) = self.forward(p, idx, targets);
            (total * grad_scale).backward();
            return stats;
        }
        let RecordedForward { recorded, aux_loss, dropped, assignments, .. } = self.forward_recorded(p, idx);
        let back = self.backward_recomputed(p, idx, recorded, None, Some(targets.into()), grad_scale);
        let head = back.head.expect("the whole model has a head");
        PassStats { loss: head.cross_entropy, soft_loss: head.soft, aux_loss, dropped, assignments, routing_mismatches: back.routing_mismatches }
    }

    /// Logits [B, T, V] (fp32) of the whole model for evaluation ([`Gpt::eval_slice`]: no
    /// graph, dropless experts).
    pub fn eval_logits(&self, p: &ParamStore, idx: &Tensor) -> Tensor {
        self.eval_slice(p, idx)
    }

    /// Mean cross-entropy of the whole model for evaluation (no graph, dropless experts).
    pub fn eval_loss(&self, p: &ParamStore, idx: &Tensor, targets: &Tensor) -> Tensor {
        tch::no_grad(|| self.run_slice(p, idx, Some(targets.into()), None, Capacity::Dropless).y)
    }
}

/// The whole model of `cfg` in fp32 on `device`, its weights to be loaded.
pub fn whole_model(cfg: &crate::config::ModelConfig, device: Device) -> (Gpt, ParamStore) {
    let mut builder = ParamBuilder::default();
    let mut model = Gpt::new(&mut builder, cfg);
    model.prepare(Kind::Float, device);
    let store = ParamStore::new(builder, &mut Rng::new(0), device, Kind::Float);
    (model, store)
}
