//! One optimizer step of a [`Worker`]. The forward/backward executes this stage's schedule: a
//! forward reads the micro-batch (first stage) or receives activations, runs the slice and sends
//! its output on; a backward receives the gradient at the output (or, on the last stage, starts
//! from the loss), differentiates, and sends its input's gradient upstream. Alone (one stage,
//! one replica) the schedule is the plain micro-batch loop, forward then backward, and nothing
//! is sent. With the graph kept, a backward hands the gradients straight into the flat fp32
//! buffer ([`ParamStore::backward_into_grad`]); with activation recomputation, the forward keeps
//! each block's input and the backward recomputes block by block ([`Gpt::forward_recorded`]).
//! After the last micro-batch, with replicas, each stage averages its gradient with the same
//! stage of the other replicas over its ring (as soon as its own backward is done, while the
//! stages before it are still in theirs). Then the stages agree, by all-reduces along the
//! chain, on the tied embedding's gradient, the global gradient norm (clip; the tied copy
//! counted once) and whether it is finite (loss scaling); then each steps its own optimizer
//! (with the optimizer state sharded, its replica's region of it, and the regions are gathered).
//!
//! [`ParamStore::backward_into_grad`]: crate::params::ParamStore::backward_into_grad
//! [`Gpt::forward_recorded`]: crate::model::gpt::Gpt::forward_recorded

use super::schedule::{Action, stage_actions};
use super::transport::Message;
use super::worker::Worker;
use crate::model::gpt::{Recorded, Targets, add_opt};
use crate::model::soft::SoftTargets;
use crate::train::optim;
use anyhow::{Result, anyhow};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

/// What one optimizer step measured (agreed across the run's parts where they share it: loss,
/// auxiliary loss, dropped fraction, gradient norm).
#[derive(Clone, Debug)]
pub struct StepReport {
    pub step: i64,
    /// Mean cross-entropy against the data (distilling too, so that runs compare).
    pub loss: f64,
    /// Distilling: the mean soft loss, T²·KL from the teacher's softened distribution.
    pub soft_loss: Option<f64>,
    /// Mean MoE auxiliary loss per MoE layer, if the model has MoE layers.
    pub aux_loss: Option<f64>,
    /// Token-expert assignments dropped for capacity, if any MoE.
    pub dropped_fraction: Option<f64>,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    pub lr: f64,
    /// The loss scale the step ran with.
    pub loss_scale: f64,
    /// The update was skipped (a non-finite gradient under fp16 loss scaling).
    pub skipped: bool,
    /// The step's wall time.
    pub seconds: f64,
    /// A pipeline stage: the seconds of the step it computed (the rest it waited).
    pub busy_seconds: Option<f64>,
    /// With replicas: the seconds of the step this part spent exchanging with the other
    /// replicas (gradient all-reduce, and the all-gather of sharded weights).
    pub ring_seconds: Option<f64>,
    pub routing_mismatches: i64,
}

/// What one stage keeps of a micro-batch between its forward and its backward.
enum Held {
    /// The graph kept: the stage's input (token ids on the first stage, else a leaf of the
    /// received activations), its output (on the last stage, the loss) and MoE auxiliary loss.
    Graph { input: Tensor, output: Tensor, aux_loss: Option<Tensor> },
    /// Per-block recomputation: the input, what the forward recorded, and on the last stage the
    /// targets (and distilling, the teacher's predictions) the head's loss is taken against.
    Recorded { input: Tensor, recorded: Recorded, targets: Option<Tensor>, soft: Option<SoftTargets> },
}

/// What one stage's forwards and backwards of a step measured, as device tensors read once.
#[derive(Default)]
struct Sums {
    loss: Option<Tensor>,
    soft: Option<Tensor>,
    aux: Option<Tensor>,
    dropped: Option<Tensor>,
    assignments: i64,
    mismatches: Option<Tensor>,
}

fn add(sum: &mut Option<Tensor>, value: Option<Tensor>) {
    *sum = add_opt(sum.take(), value);
}

/// A scalar tensor as a one-element f64 tensor, read with the step's others at once (absent: 0).
fn scalar(t: Option<&Tensor>, device: Device) -> Tensor {
    match t {
        Some(t) => t.detach().to_kind(Kind::Double).reshape([1]),
        None => Tensor::zeros([1], (Kind::Double, device)),
    }
}

/// What one stage's forward and backward of a step measured.
#[derive(Clone, Debug)]
pub struct StageTotals {
    /// Sums over micro-batches of the loss (the last stage; the cross-entropy), of the soft loss
    /// (distilling) and of the MoE auxiliary loss.
    pub loss_sum: f64,
    pub soft_sum: f64,
    pub aux_sum: f64,
    pub busy_seconds: f64,
    /// The most micro-batches held between forward and backward.
    pub peak_in_flight: usize,
    /// MoE token-expert assignments of this stage's layers, and how many were dropped.
    pub dropped: f64,
    pub assignments: i64,
    /// Recomputation: MoE routing choices that differed from the first forward.
    pub routing_mismatches: f64,
    /// Σ of the squared gradient over this stage's parameters, the tied copy left out.
    pub grad_squared: f64,
}

impl Worker {
    /// Forward and backward of every micro-batch of this replica's share of one step, in this
    /// stage's schedule order; leaves the step's gradient (unscaled, averaged over the
    /// replicas) in `params.grad`, with tied copies summed. Returns what this stage measured.
    pub fn forward_backward(&mut self) -> Result<StageTotals> {
        let m = self.micro_batches() as usize;
        let index = self.index();
        let actions = stage_actions(self.schedule, self.stages, index, m);
        let scale = self.scaler.scale;
        let grad_scale = scale / m as f64;
        let recompute = self.cfg.train.activation_checkpointing;
        let aux_weight = self.model.aux_weight;
        let mbs = self.cfg.train.micro_batch_size;
        self.ring_seconds = 0.0;
        // Recomputation's backward accumulates on the parameters' leaves, which are added into
        // the flat buffer after each micro-batch; the graph's backward writes into it directly.
        let mut written = recompute;
        if recompute {
            self.params.zero_grad();
        }
        // Replica r trains on sequences r·m·mbs .. (r+1)·m·mbs of the step's batch; the readers
        // pass over the others', so every replica reads the same order from the seed and the
        // position between steps does not depend on the replica count.
        let share = (m as i64) * mbs;
        if let Some(d) = self.data.as_mut() {
            d.skip(self.replica as i64 * share);
        }
        let mut held: HashMap<usize, Held> = HashMap::new();
        let mut sums = Sums::default();
        let mut busy = Duration::ZERO;
        let mut peak = 0;
        for action in actions {
            match action {
                Action::Forward(mb) => {
                    let batch = self.data.as_mut().map(|d| d.next_batch(mbs));
                    let input = if self.is_first() {
                        batch.as_ref().expect("the first stage reads the data").inputs.to_device(self.device)
                    } else {
                        Self::recv_tensor(self.up(), "activation", Some(mb as u32))?.to_device(self.device)
                    };
                    let targets = self.is_last().then(|| batch.as_ref().expect("the last stage reads the data").targets.to_device(self.device));
                    let t0 = Instant::now();
                    // the teacher (on the last stage) reads the micro-batch's inputs as the first stage does
                    let soft = self.teacher.as_ref().and_then(|t| t.soft_targets(&batch.as_ref().expect("the last stage reads the data").inputs));
                    let (keep, send) = if recompute {
                        let f = self.model.forward_recorded(&self.params, &input);
                        add(&mut sums.aux, f.aux_loss);
                        add(&mut sums.dropped, f.dropped);
                        sums.assignments += f.assignments;
                        (Held::Recorded { input, recorded: f.recorded, targets, soft }, f.output)
                    } else {
                        let input = if self.is_first() { input } else { input.detach().set_requires_grad(true) };
                        let out = self.model.forward_slice(
                            &self.params,
                            &input,
                            targets.as_ref().map(|tokens| Targets { tokens, soft: soft.as_ref() }),
                            None,
                        );
                        add(&mut sums.loss, out.cross_entropy);
                        add(&mut sums.soft, out.soft_loss);
                        add(&mut sums.aux, out.aux_loss.as_ref().map(Tensor::detach));
                        add(&mut sums.dropped, out.dropped);
                        sums.assignments += out.assignments;
                        let send = (!self.is_last()).then(|| out.y.detach());
                        (Held::Graph { input, output: out.y, aux_loss: out.aux_loss }, send)
                    };
                    held.insert(mb, keep);
                    peak = peak.max(held.len());
                    busy += t0.elapsed();
                    if let Some(y) = send {
                        self.down().send(Message::Activation { micro_batch: mb as u32, tensor: y })?;
                    }
                }
                Action::Backward(mb) => {
                    let upstream_grad =
                        if self.is_last() { None } else { Some(Self::recv_tensor(self.down(), "gradient", Some(mb as u32))?.to_device(self.device)) };
                    let t0 = Instant::now();
                    let h = held.remove(&mb).ok_or_else(|| anyhow!("stage {index}: backward of micro-batch {mb} before its forward"))?;
                    let input_grad = match h {
                        Held::Graph { input, output, aux_loss } => {
                            let mut surrogate = match &upstream_grad {
                                None => &output * grad_scale,
                                // d/dy Σ(y·g) = g
                                Some(g) => (&output * g).sum(Kind::Float),
                            };
                            if let Some(a) = aux_loss {
                                surrogate = surrogate + a * (aux_weight * grad_scale);
                            }
                            let leaf = (!self.is_first()).then_some(&input);
                            let g = self.params.backward_into_grad(&surrogate, leaf, 1.0 / scale, written);
                            written = true;
                            g
                        }
                        Held::Recorded { input, recorded, targets, soft } => {
                            let targets = targets.as_ref().map(|tokens| Targets { tokens, soft: soft.as_ref() });
                            let b = self.model.backward_recomputed(&self.params, &input, recorded, upstream_grad, targets, grad_scale);
                            if let Some(head) = b.head {
                                add(&mut sums.loss, Some(head.cross_entropy));
                                add(&mut sums.soft, head.soft);
                            }
                            add(&mut sums.mismatches, b.routing_mismatches);
                            self.params.accumulate_grads(1.0 / scale);
                            b.input_grad
                        }
                    };
                    busy += t0.elapsed();
                    if let Some(g) = input_grad {
                        self.up().send(Message::Gradient { micro_batch: mb as u32, tensor: g })?;
                    }
                }
            }
        }
        if let Some(d) = self.data.as_mut() {
            d.skip((self.replicas - 1 - self.replica) as i64 * share);
        }
        self.average_gradients()?;
        self.sum_tied_gradients()?;
        let t0 = Instant::now();
        let squared = tch::no_grad(|| {
            let mut sq = self.params.grad.dot(&self.params.grad);
            if let Some(id) = self.model.tied_copy() {
                let copy = self.grad_view(id);
                sq = sq - copy.dot(&copy);
            }
            sq
        });
        // one read of everything the step measured
        let d = self.device;
        let measured = Tensor::cat(
            &[
                scalar(Some(&squared), d),
                scalar(sums.loss.as_ref(), d),
                scalar(sums.soft.as_ref(), d),
                scalar(sums.aux.as_ref(), d),
                scalar(sums.dropped.as_ref(), d),
                scalar(sums.mismatches.as_ref(), d),
            ],
            0,
        );
        let v = Vec::<f64>::try_from(&measured.to_device(Device::Cpu))?;
        busy += t0.elapsed();
        Ok(StageTotals {
            grad_squared: v[0],
            loss_sum: v[1],
            soft_sum: v[2],
            aux_sum: v[3],
            dropped: v[4],
            assignments: sums.assignments,
            routing_mismatches: v[5],
            busy_seconds: busy.as_secs_f64(),
            peak_in_flight: peak,
        })
    }

    /// One optimizer step across the run: the loss, auxiliary loss, dropped fraction and
    /// gradient norm agreed across stages and replicas, this stage's busy seconds and the step's
    /// wall time.
    pub fn train_step(&mut self) -> Result<StepReport> {
        let t_step = Instant::now();
        let m = (self.micro_batches() * self.replicas as i64) as f64;
        let lr = optim::lr_at(&self.cfg.train.optim, self.step, self.cfg.train.steps);
        let loss_scale = self.scaler.scale;
        let totals = self.forward_backward()?;
        let mut busy = totals.busy_seconds;
        let sums = [
            totals.grad_squared,
            totals.loss_sum,
            totals.aux_sum,
            totals.dropped,
            totals.assignments as f64,
            totals.soft_sum,
            totals.routing_mismatches,
        ];
        let mut agreed = if self.stages > 1 { Vec::<f64>::try_from(&self.all_reduce(Some(Tensor::from_slice(&sums)))?)? } else { sums.to_vec() };
        // The gradients (and so their norm) are the same in every replica; the losses and the
        // routing counts are each replica's own.
        if self.replicas > 1 {
            let summed = Vec::<f64>::try_from(&self.ring_sum(Tensor::from_slice(&agreed[1..]))?)?;
            agreed[1..].copy_from_slice(&summed);
        }
        // (rounding can leave the tied copy's subtraction a hair below zero; NaN must stay NaN,
        // which `f64::max` would turn into 0 and so into a finite norm)
        let grad_norm = if agreed[0] < 0.0 { 0.0 } else { agreed[0].sqrt() };
        let t0 = Instant::now();
        let apply = self.scaler.update(grad_norm.is_finite());
        if apply {
            let clip = self.cfg.train.optim.grad_clip;
            let coef = if clip > 0.0 && grad_norm > clip { clip / (grad_norm + 1e-6) } else { 1.0 };
            self.optim.step_scaled(&mut self.params, lr, coef);
            if let (Some(regions), Some(ring)) = (&self.shards, self.ring.as_mut()) {
                let t0 = Instant::now();
                ring.all_gather(&self.params.master, regions)?;
                self.ring_seconds += t0.elapsed().as_secs_f64();
            }
            self.params.sync_compute();
        }
        busy += t0.elapsed().as_secs_f64();
        self.step += 1;
        self.tokens += self.cfg.tokens_per_step();
        let moe_layers = self.cfg.model.moe_layers();
        self.peak_in_flight = totals.peak_in_flight;
        Ok(StepReport {
            step: self.step,
            loss: agreed[1] / m,
            soft_loss: self.cfg.distill.as_ref().filter(|d| d.loss.runs_teacher()).map(|_| agreed[5] / m),
            aux_loss: (moe_layers > 0).then(|| agreed[2] / (m * moe_layers as f64)),
            dropped_fraction: (agreed[4] > 0.0).then(|| agreed[3] / agreed[4]),
            grad_norm,
            lr,
            loss_scale,
            skipped: !apply,
            seconds: t_step.elapsed().as_secs_f64(),
            busy_seconds: (!self.alone()).then_some(busy),
            ring_seconds: self.ring.is_some().then_some(self.ring_seconds),
            routing_mismatches: agreed[6] as i64,
        })
    }
}
