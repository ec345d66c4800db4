//! The engine: one [`StageWorker`] per stage executes its schedule. A forward detaches the
//! stage's input, runs the stage and sends the output on; a backward injects the gradient that
//! came back (d/dy Σ y·g = g), adds the stage's MoE auxiliary loss, and sends its input's gradient
//! upstream. With recomputation a stage keeps only its inputs (and MoE routing) between the two.
//! After the last micro-batch, with replicas (data parallelism), each stage averages its gradient
//! with the same stage of the other replicas over its ring (`ring.rs`); a stage does so as soon
//! as its own backward is done, while the stages before it are still in theirs. Then the stages
//! agree, by all-reduces along the chain, on the tied embedding's gradient, the global gradient
//! norm (clip) and whether it is finite (fp16 skip); then each steps its own optimizer (with the
//! optimizer state sharded, its replica's region of it, and the regions are gathered).
//!
//! Distilling, the last stage of every replica holds the whole teacher and runs it on each
//! micro-batch's input tokens, which it reads as the first stage does, for the loss.

use super::ring::{DEFAULT_BUCKET_ELEMENTS, Ring};
use super::schedule::{Action, ScheduleKind, stage_actions};
use super::transport::{Fault, Link, Message, Rank, TransportError};
use crate::config::RunConfig;
use crate::data::Data;
use crate::distill::Teacher;
use crate::model::gpt::{Gpt, Targets};
use crate::model::moe::Routing;
use crate::model::soft::SoftTargets;
use crate::params::{ParamId, ParamStore};
use crate::train::optim::{self, Optimizer};
use crate::train::precision::{LossScaler, compute_kind};
use crate::train::run::StepReport;
use anyhow::{Context, Result, anyhow, bail};
use frugal_api::contract::StageLayout;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

/// What one stage keeps of a micro-batch between its forward and its backward.
struct Saved {
    /// The stage's input: token ids on the first stage, else the detached activations (a leaf
    /// that requires grad when the graph is kept).
    input: Tensor,
    targets: Option<Tensor>,
    /// Distilling, on the last stage: the teacher's predictions of the micro-batch.
    soft: Option<SoftTargets>,
    /// Without recomputation: the output (loss on the last stage) and aux loss, with graph.
    output: Option<(Tensor, Option<Tensor>)>,
    /// With recomputation: the MoE routing to replay.
    routings: Vec<Option<Routing>>,
}

/// What one stage's forward and backward of a step measured.
#[derive(Clone, Debug)]
pub struct StageTotals {
    /// Sum over micro-batches of the loss (the last stage; the cross-entropy), of the soft loss
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
}

pub struct StageWorker {
    pub cfg: RunConfig,
    pub stages: usize,
    pub schedule: ScheduleKind,
    pub device: Device,
    /// This stage's slice of the model.
    pub model: Gpt,
    pub params: ParamStore,
    pub optim: Optimizer,
    pub scaler: LossScaler,
    /// The first stage reads inputs, the last targets, from readers drawing in lockstep.
    pub data: Option<Data>,
    pub upstream: Option<Box<dyn Link>>,
    pub downstream: Option<Box<dyn Link>>,
    pub step: i64,
    pub tokens: i64,
    /// The most micro-batches this stage held between forward and backward in its last step.
    pub peak_in_flight: usize,
    /// This stage's replica, of `replicas` (data parallelism; 0 of 1 without).
    pub replica: usize,
    pub replicas: usize,
    /// The ring to the same stage of the other replicas.
    pub ring: Option<Ring>,
    /// With the optimizer state sharded: each replica's region of the flat buffer.
    pub shards: Option<Vec<(i64, i64)>>,
    /// Elements per all-reduce bucket.
    pub bucket_elements: i64,
    /// Seconds the last step spent exchanging with the other replicas (all-reduce, all-gather).
    pub ring_seconds: f64,
    /// Distilling, on the last stage: the teacher (frozen, never checkpointed with the student).
    pub teacher: Option<Teacher>,
}

impl StageWorker {
    pub fn new(
        cfg: &RunConfig,
        layout: StageLayout,
        stages: usize,
        schedule: ScheduleKind,
        device: Device,
        upstream: Option<Box<dyn Link>>,
        downstream: Option<Box<dyn Link>>,
    ) -> Result<Self> {
        cfg.validate().map_err(anyhow::Error::msg).context("invalid run configuration")?;
        let index = layout.index as usize;
        anyhow::ensure!(index < stages, "stage {index} of {stages}");
        anyhow::ensure!(upstream.is_some() == (index > 0), "stage {index} needs an upstream link exactly when it is not first");
        anyhow::ensure!(downstream.is_some() == (index + 1 < stages), "stage {index} needs a downstream link exactly when it is not last");
        let kind = compute_kind(cfg.train.precision);
        let (model, params) = Gpt::build_slice(&cfg.model, &layout, cfg.train.seed, device, kind);
        let optim = Optimizer::new(&cfg.train.optim, &params);
        let data =
            (layout.embedding || layout.head).then(|| Data::new(&cfg.data, cfg.model.vocab_size, cfg.model.seq_len, cfg.train.seed)).transpose()?;
        let head = layout.head;
        let mut worker = Self {
            cfg: cfg.clone(),
            stages,
            schedule,
            device,
            model,
            params,
            optim,
            scaler: LossScaler::new(cfg.train.precision),
            data,
            upstream,
            downstream,
            step: 0,
            tokens: 0,
            peak_in_flight: 0,
            replica: 0,
            replicas: 1,
            ring: None,
            shards: None,
            bucket_elements: DEFAULT_BUCKET_ELEMENTS,
            ring_seconds: 0.0,
            teacher: None,
        };
        if let (true, Some(distill)) = (head, &cfg.distill) {
            match Teacher::load(distill, &cfg.model, device, kind) {
                Ok(teacher) => worker.teacher = Some(teacher),
                Err(e) => {
                    // the other stages learn why at once, instead of waiting for a timeout
                    worker.abort(&format!("{e:#}"));
                    return Err(e);
                }
            }
        }
        Ok(worker)
    }

    /// Makes this stage replica `replica` of `replicas`, joined to the same stage of the others
    /// by `ring`; with `shard_optimizer`, it keeps and updates only its replica's region of the
    /// optimizer state.
    pub fn replicate(&mut self, replica: usize, replicas: usize, ring: Option<Ring>, shard_optimizer: bool) -> Result<()> {
        anyhow::ensure!(replica < replicas, "replica {replica} of {replicas}");
        anyhow::ensure!(ring.is_some() == (replicas > 1), "a stage needs a ring exactly when the pipeline has several replicas");
        let micro = self.cfg.micro_batches();
        anyhow::ensure!(
            micro % replicas as i64 == 0,
            "the batch's {micro} micro-batches do not divide among {replicas} replicas: make batchSize a multiple of microBatches × dataParallel"
        );
        self.replica = replica;
        self.replicas = replicas;
        self.ring = ring;
        if shard_optimizer && replicas > 1 {
            let regions = crate::train::optim::shard_regions(&self.params, replicas);
            self.optim = Optimizer::for_region(&self.cfg.train.optim, &self.params, regions[replica]);
            self.shards = Some(regions);
        }
        Ok(())
    }

    /// Who this stage is, as its peers name it.
    pub fn rank(&self) -> Rank {
        Rank::of(self.index(), self.replica, self.replicas)
    }

    /// Micro-batches of this replica's share of a step.
    pub fn micro_batches(&self) -> i64 {
        self.cfg.micro_batches() / self.replicas as i64
    }

    /// Sums `values` over every stage of every replica: along the chain, then around the ring.
    pub fn all_reduce_global(&mut self, values: Tensor) -> Result<Tensor> {
        let total = self.all_reduce(Some(values))?;
        self.ring_sum(total)
    }

    /// Sums a small host tensor across the replicas of this stage.
    fn ring_sum(&mut self, t: Tensor) -> Result<Tensor> {
        let bucket = self.bucket_elements;
        if let Some(ring) = self.ring.as_mut() {
            let t = t.to_device(Device::Cpu).copy();
            ring.all_reduce(&t, bucket)?;
            return Ok(t);
        }
        Ok(t)
    }

    /// A point every stage of every replica reaches before any leaves it.
    pub fn barrier_global(&mut self) -> Result<()> {
        let _ = self.all_reduce_global(Tensor::zeros([1], (Kind::Float, Device::Cpu)))?;
        Ok(())
    }

    /// Averages this stage's gradient with the other replicas' (a no-op with one).
    fn average_gradients(&mut self) -> Result<()> {
        let Some(ring) = self.ring.as_mut() else { return Ok(()) };
        let t0 = Instant::now();
        ring.all_reduce(&self.params.grad, self.bucket_elements)?;
        let _ = tch::no_grad(|| self.params.grad.g_mul_scalar_(1.0 / self.replicas as f64));
        self.ring_seconds += t0.elapsed().as_secs_f64();
        Ok(())
    }

    pub fn index(&self) -> usize {
        self.model.layout.index as usize
    }

    pub(super) fn is_first(&self) -> bool {
        self.model.layout.embedding
    }

    pub(super) fn is_last(&self) -> bool {
        self.model.layout.head
    }

    pub(super) fn up(&mut self) -> &mut Box<dyn Link> {
        self.upstream.as_mut().expect("a stage after the first has an upstream link")
    }

    pub(super) fn down(&mut self) -> &mut Box<dyn Link> {
        self.downstream.as_mut().expect("a stage before the last has a downstream link")
    }

    pub(super) fn recv_tensor(link: &mut Box<dyn Link>, want: &str, micro_batch: Option<u32>) -> Result<Tensor, TransportError> {
        let peer = link.peer();
        let msg = link.recv()?;
        let (got_mb, tensor) = match msg {
            Message::Activation { micro_batch, tensor } if want == "activation" => (Some(micro_batch), tensor),
            Message::Gradient { micro_batch, tensor } if want == "gradient" => (Some(micro_batch), tensor),
            Message::Reduce { tensor } if want == "reduce" => (None, tensor),
            other => {
                return Err(TransportError::Protocol { peer, detail: format!("expected {want}, received {}", other.name()) });
            }
        };
        if got_mb != micro_batch {
            return Err(TransportError::Protocol { peer, detail: format!("expected {want} of micro-batch {micro_batch:?}, received {got_mb:?}") });
        }
        Ok(tensor)
    }

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
        self.params.zero_grad();
        self.ring_seconds = 0.0;
        // Replica r trains on sequences r·m·mbs .. (r+1)·m·mbs of the step's batch; the readers
        // pass over the others', so every replica reads the same order from the seed and the
        // position between steps does not depend on the replica count.
        let share = (m as i64) * mbs;
        if let Some(d) = self.data.as_mut() {
            d.skip(self.replica as i64 * share);
        }
        let mut saved: HashMap<usize, Saved> = HashMap::new();
        let (mut loss_sum, mut soft_sum, mut aux_sum) = (0.0, 0.0, 0.0);
        let (mut dropped, mut assignments) = (0.0, 0);
        let mut busy = Duration::ZERO;
        let mut peak = 0;
        for action in actions {
            match action {
                Action::Forward(mb) => {
                    let batch = self.data.as_mut().map(|d| d.next_batch(mbs));
                    let input = if self.is_first() {
                        batch.as_ref().unwrap().inputs.to_device(self.device)
                    } else {
                        Self::recv_tensor(self.up(), "activation", Some(mb as u32))?.to_device(self.device)
                    };
                    let targets = self.is_last().then(|| batch.as_ref().unwrap().targets.to_device(self.device));
                    let t0 = Instant::now();
                    // the teacher (on the last stage) reads the micro-batch's inputs as the first stage does
                    let soft = self.teacher.as_ref().and_then(|t| t.soft_targets(&batch.as_ref().unwrap().inputs));
                    let input = if self.is_first() || recompute { input } else { input.detach().set_requires_grad(true) };
                    let forward = || {
                        self.model.forward_slice(&self.params, &input, targets.as_ref().map(|tokens| Targets { tokens, soft: soft.as_ref() }), None)
                    };
                    let out = if recompute { tch::no_grad(forward) } else { forward() };
                    dropped += out.dropped.as_ref().map_or(0.0, |d| d.double_value(&[]));
                    assignments += out.assignments;
                    if let Some(s) = &out.soft_loss {
                        soft_sum += s.double_value(&[]);
                    }
                    let cross_entropy = out.cross_entropy;
                    let (out, keep) = if recompute {
                        (out.y, Saved { input, targets, soft, output: None, routings: out.routings })
                    } else {
                        (out.y.shallow_clone(), Saved { input, targets, soft, output: Some((out.y, out.aux_loss)), routings: vec![] })
                    };
                    if let Some((_, Some(aux))) = &keep.output {
                        aux_sum += aux.double_value(&[]);
                    }
                    saved.insert(mb, keep);
                    peak = peak.max(saved.len());
                    busy += t0.elapsed();
                    if self.is_last() {
                        loss_sum += cross_entropy.expect("the last stage's loss").double_value(&[]);
                    } else {
                        let y = out.detach();
                        self.down().send(Message::Activation { micro_batch: mb as u32, tensor: y })?;
                    }
                }
                Action::Backward(mb) => {
                    let upstream_grad =
                        if self.is_last() { None } else { Some(Self::recv_tensor(self.down(), "gradient", Some(mb as u32))?.to_device(self.device)) };
                    let t0 = Instant::now();
                    let s = saved.remove(&mb).ok_or_else(|| anyhow!("stage {index}: backward of micro-batch {mb} before its forward"))?;
                    let (input, (y, aux)) = match s.output {
                        Some(out) => (s.input, out),
                        None => {
                            let x = if self.is_first() { s.input } else { s.input.detach().set_requires_grad(true) };
                            let targets = s.targets.as_ref().map(|tokens| Targets { tokens, soft: s.soft.as_ref() });
                            let out = self.model.forward_slice(&self.params, &x, targets, Some(&s.routings));
                            if let Some(a) = &out.aux_loss {
                                aux_sum += a.double_value(&[]);
                            }
                            (x, (out.y, out.aux_loss))
                        }
                    };
                    let mut surrogate = match &upstream_grad {
                        None => &y * grad_scale,
                        Some(g) => (&y * g).sum(Kind::Float),
                    };
                    if let Some(a) = aux {
                        surrogate = surrogate + a * (aux_weight * grad_scale);
                    }
                    surrogate.backward();
                    let input_grad = (!self.is_first()).then(|| input.grad());
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
        let t0 = Instant::now();
        self.params.accumulate_grads(1.0 / scale);
        busy += t0.elapsed();
        self.average_gradients()?;
        self.sum_tied_gradients()?;
        Ok(StageTotals { loss_sum, soft_sum, aux_sum, busy_seconds: busy.as_secs_f64(), peak_in_flight: peak, dropped, assignments })
    }

    /// A grad view of one parameter in the flat gradient buffer.
    fn grad_view(&self, id: ParamId) -> Tensor {
        let s = self.params.spec(id);
        self.params.grad.narrow(0, s.offset, s.numel())
    }

    /// First and last stage hold copies of the tied embedding: both get the sum of their
    /// gradients, relayed through the stages between them.
    fn sum_tied_gradients(&mut self) -> Result<()> {
        if !self.cfg.model.tied_embeddings || self.stages == 1 {
            return Ok(());
        }
        let mine = self.model.tied_original().or(self.model.tied_copy());
        let contribution = mine.map(|id| self.grad_view(id).copy());
        let total = self.all_reduce(contribution)?;
        if let Some(id) = mine {
            tch::no_grad(|| self.grad_view(id).copy_(&total.to_device(self.device)));
        }
        Ok(())
    }

    /// Sums the stages' contributions along the chain and gives every stage the total: partial
    /// sums flow downstream, the total flows back upstream. A stage without a contribution relays.
    pub fn all_reduce(&mut self, contribution: Option<Tensor>) -> Result<Tensor> {
        let mut acc = contribution.map(|t| t.to_device(Device::Cpu));
        if self.upstream.is_some() {
            let partial = Self::recv_tensor(self.up(), "reduce", None)?;
            acc = Some(match acc {
                Some(a) => a + partial,
                None => partial,
            });
        }
        let index = self.index();
        let total = if self.downstream.is_some() {
            let acc = acc.ok_or_else(|| anyhow!("stage {index}: nothing to reduce"))?;
            self.down().send(Message::Reduce { tensor: acc })?;
            Self::recv_tensor(self.down(), "reduce", None)?
        } else {
            acc.ok_or_else(|| anyhow!("stage {index}: nothing to reduce"))?
        };
        if self.upstream.is_some() {
            self.up().send(Message::Reduce { tensor: total.copy() })?;
        }
        Ok(total)
    }

    /// A point every stage reaches before any leaves it.
    pub fn barrier(&mut self) -> Result<()> {
        let _ = self.all_reduce(Some(Tensor::zeros([1], (Kind::Float, Device::Cpu))))?;
        Ok(())
    }

    /// One optimizer step across the pipeline: the loss, auxiliary loss, dropped fraction and
    /// gradient norm agreed across stages, this stage's busy seconds and the step's wall time.
    pub fn train_step(&mut self) -> Result<StepReport> {
        let t_step = Instant::now();
        let m = (self.micro_batches() * self.replicas as i64) as f64;
        let lr = optim::lr_at(&self.cfg.train.optim, self.step, self.cfg.train.steps);
        let loss_scale = self.scaler.scale;
        let totals = self.forward_backward()?;
        let mut busy = totals.busy_seconds;
        let t0 = Instant::now();
        let squared = tch::no_grad(|| {
            let mut sq = self.params.grad.to_kind(Kind::Double).square().sum(Kind::Double);
            if let Some(id) = self.model.tied_copy() {
                sq -= self.grad_view(id).to_kind(Kind::Double).square().sum(Kind::Double);
            }
            sq.double_value(&[])
        });
        busy += t0.elapsed().as_secs_f64();
        let sums = [squared, totals.loss_sum, totals.aux_sum, totals.dropped, totals.assignments as f64, totals.soft_sum];
        let agreed = self.all_reduce(Some(Tensor::from_slice(&sums)))?;
        let mut agreed: Vec<f64> = Vec::<f64>::try_from(&agreed)?;
        // The gradients (and so their norm) are the same in every replica; the losses and the
        // routing counts are each replica's own.
        if self.replicas > 1 {
            let sums = Vec::<f64>::try_from(&self.ring_sum(Tensor::from_slice(&agreed[1..]))?)?;
            agreed[1..].copy_from_slice(&sums);
        }
        let grad_norm = agreed[0].max(0.0).sqrt();
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
            busy_seconds: Some(busy),
            ring_seconds: self.ring.is_some().then_some(self.ring_seconds),
            routing_mismatches: 0,
        })
    }

    /// Tells both neighbours that this stage failed, so that they fail naming it rather than
    /// waiting for a timeout.
    pub fn abort(&mut self, reason: &str) {
        let reason = format!("{}: {reason}", self.rank());
        for link in [self.upstream.as_mut(), self.downstream.as_mut()].into_iter().flatten() {
            let _ = link.send(Message::Abort { reason: reason.clone() });
        }
        if let Some(ring) = self.ring.as_mut() {
            ring.abort(&reason);
        }
    }

    /// Named gradients of this stage's parameters (the tied copy included), for tests.
    pub fn named_grads(&self) -> Vec<(String, Tensor)> {
        self.params.specs.iter().map(|s| (s.name.clone(), self.params.grad.narrow(0, s.offset, s.numel()).view(s.shape.as_slice()).copy())).collect()
    }

    /// Named master weights of this stage.
    pub fn named_weights(&self) -> Vec<(String, Tensor)> {
        (0..self.params.specs.len()).map(|i| (self.params.specs[i].name.clone(), self.params.master_view(i).copy())).collect()
    }
}

/// Links of one stage: (upstream, downstream).
pub type StageLinks = (Option<Box<dyn Link>>, Option<Box<dyn Link>>);

/// Runs `body` on one thread per stage, each with its worker, the stages linked by channels.
/// Devices: stage s runs on `devices[s % devices.len()]` (several stages may share one).
pub fn run_in_process<T: Send + 'static>(
    cfg: &RunConfig,
    layouts: &[StageLayout],
    schedule: ScheduleKind,
    devices: &[Device],
    body: impl Fn(&mut StageWorker) -> Result<T> + Send + Sync + 'static,
) -> Result<Vec<T>> {
    run_replicated(cfg, layouts, Replicas::one(), schedule, devices, body)
}

/// How many replicas of the pipeline train side by side, and whether they shard the optimizer
/// state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replicas {
    pub count: usize,
    pub shard_optimizer: bool,
}

impl Replicas {
    pub const fn one() -> Self {
        Self { count: 1, shard_optimizer: false }
    }
}

/// Runs `body` on one thread per stage of every replica of the pipeline, in one process: the
/// stages of a replica linked by channels, the same stage of every replica by a ring of them.
/// Results come back replica by replica, stage by stage. Stage s of replica r runs on
/// `devices[(r · stages + s) % devices.len()]`.
pub fn run_replicated<T: Send + 'static>(
    cfg: &RunConfig,
    layouts: &[StageLayout],
    replicas: Replicas,
    schedule: ScheduleKind,
    devices: &[Device],
    body: impl Fn(&mut StageWorker) -> Result<T> + Send + Sync + 'static,
) -> Result<Vec<T>> {
    if layouts.is_empty() {
        bail!("a pipeline needs at least one stage");
    }
    let (stages, n) = (layouts.len(), replicas.count.max(1));
    let timeout = super::transport::DEFAULT_TIMEOUT;
    let faults: Vec<Vec<Fault>> = (0..n).map(|_| (0..stages).map(|_| Fault::default()).collect()).collect();
    let mut chains: Vec<Vec<StageLinks>> =
        faults.iter().enumerate().map(|(r, f)| super::transport::inproc::chain_from(0, (n > 1).then_some(r), timeout, f)).collect();
    let mut rings: Vec<Vec<Option<Ring>>> = (0..n).map(|_| (0..stages).map(|_| None).collect()).collect();
    if n > 1 {
        for s in 0..stages {
            let column: Vec<Fault> = faults.iter().map(|f| f[s].clone()).collect();
            for (r, (next, previous)) in super::transport::inproc::ring(s, timeout, &column).into_iter().enumerate() {
                rings[r][s] = Some(Ring::new(r, n, next, previous));
            }
        }
    }
    let body = std::sync::Arc::new(body);
    let mut handles = vec![];
    for r in 0..n {
        let links = std::mem::take(&mut chains[r]);
        let ring = std::mem::take(&mut rings[r]);
        let placed: Vec<Device> = (0..stages).map(|s| devices[(r * stages + s) % devices.len()]).collect();
        handles.extend(spawn_stages(cfg, stages, layouts.to_vec(), links, ring, (r, replicas), schedule, &placed, body.clone())?);
    }
    join(handles)
}

/// Runs this process's stages (`mine`, of `stages` in all) on threads with the given links.
pub fn run_stages<T: Send + 'static>(
    cfg: &RunConfig,
    stages: usize,
    mine: Vec<StageLayout>,
    links: Vec<StageLinks>,
    schedule: ScheduleKind,
    devices: &[Device],
    body: impl Fn(&mut StageWorker) -> Result<T> + Send + Sync + 'static,
) -> Result<Vec<T>> {
    let rings = mine.iter().map(|_| None).collect();
    run_replica_stages(cfg, stages, mine, links, rings, (0, Replicas::one()), schedule, devices, body)
}

/// Runs this process's stages of replica `replica.0` on threads with the given links and rings.
#[allow(clippy::too_many_arguments)]
pub fn run_replica_stages<T: Send + 'static>(
    cfg: &RunConfig,
    stages: usize,
    mine: Vec<StageLayout>,
    links: Vec<StageLinks>,
    rings: Vec<Option<Ring>>,
    replica: (usize, Replicas),
    schedule: ScheduleKind,
    devices: &[Device],
    body: impl Fn(&mut StageWorker) -> Result<T> + Send + Sync + 'static,
) -> Result<Vec<T>> {
    let placed: Vec<Device> = (0..mine.len()).map(|i| devices[i % devices.len()]).collect();
    join(spawn_stages(cfg, stages, mine, links, rings, replica, schedule, &placed, std::sync::Arc::new(body))?)
}

type Handle<T> = std::thread::JoinHandle<Result<T>>;

#[allow(clippy::too_many_arguments)]
fn spawn_stages<T: Send + 'static, F: Fn(&mut StageWorker) -> Result<T> + Send + Sync + 'static>(
    cfg: &RunConfig,
    stages: usize,
    mine: Vec<StageLayout>,
    links: Vec<StageLinks>,
    rings: Vec<Option<Ring>>,
    (replica, replicas): (usize, Replicas),
    schedule: ScheduleKind,
    devices: &[Device],
    body: std::sync::Arc<F>,
) -> Result<Vec<Handle<T>>> {
    let mut handles = Vec::with_capacity(mine.len());
    for (i, ((layout, (up, down)), ring)) in mine.into_iter().zip(links).zip(rings).enumerate() {
        let cfg = cfg.clone();
        let s = layout.index as usize;
        let device = devices[i % devices.len()];
        let body = body.clone();
        let name = if replicas.count > 1 { format!("r{replica}-stage-{s}") } else { format!("stage-{s}") };
        handles.push(std::thread::Builder::new().name(name).spawn(move || -> Result<T> {
            let mut worker = StageWorker::new(&cfg, layout, stages, schedule, device, up, down)?;
            worker.replicate(replica, replicas.count, ring, replicas.shard_optimizer)?;
            match body(&mut worker) {
                Ok(v) => Ok(v),
                Err(e) => {
                    worker.abort(&format!("{e:#}"));
                    Err(e.context(worker.rank().to_string()))
                }
            }
        })?);
    }
    Ok(handles)
}

/// The stages' results, or the error of the stage that failed first rather than its neighbours'
/// reports of it (a stage whose teacher does not load aborts, and the others fail for that).
fn join<T>(handles: Vec<Handle<T>>) -> Result<Vec<T>> {
    let results: Vec<Result<T>> = handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("a stage thread panicked")))).collect();
    if results.iter().all(Result::is_ok) {
        return results.into_iter().collect();
    }
    let mut errors: Vec<anyhow::Error> = results.into_iter().filter_map(Result::err).collect();
    let peer_failed = |e: &anyhow::Error| {
        e.chain().any(|c| matches!(c.downcast_ref::<TransportError>(), Some(TransportError::PeerAborted { .. } | TransportError::PeerGone { .. })))
    };
    let first = errors.iter().position(|e| !peer_failed(e)).unwrap_or(0);
    Err(errors.swap_remove(first))
}
