//! The worker: one part of a run, stage s of replica r, and the only engine there is. A single
//! process training the whole model is the 1×1 worker (one stage, one replica, no neighbours);
//! a pipelined or data-parallel run has one worker per stage of every replica, each holding its
//! slice of the one model ([`Gpt::build_slice`]). Every worker builds, steps its optimizer,
//! checkpoints, resumes and evaluates the same way; what differs is only how its
//! forward/backward is scheduled (`step.rs`) and whom it talks to: its upstream and downstream
//! stages over [`Link`]s, the same stage of the other replicas over a [`Ring`].
//!
//! Distilling, the last stage of every replica holds the whole teacher and runs it on each
//! micro-batch's input tokens, which it reads as the first stage does, for the loss.

use super::ring::{DEFAULT_BUCKET_ELEMENTS, Ring};
use super::schedule::ScheduleKind;
use super::transport::{Link, Message, Rank, TransportError};
use crate::config::RunConfig;
use crate::data::Data;
use crate::distill::Teacher;
use crate::eval::EvalConfig;
use crate::model::gpt::{Gpt, whole};
use crate::params::{ParamId, ParamStore};
use crate::report::Provenance;
use crate::train::flops::{self, ModelCounts};
use crate::train::optim::Optimizer;
use crate::train::precision::{LossScaler, compute_kind};
use anyhow::{Context, Result, anyhow};
use frugal_api::contract::StageLayout;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// What the reporting part of a run needs to know about it for MFU and the summary.
#[derive(Clone, Debug)]
pub struct RunShape {
    pub counts: ModelCounts,
    /// Peak FLOP/s of every device the run trains on, and where the figure comes from.
    pub peak_flops: f64,
    pub peak_source: String,
    pub pipeline_stages: Option<i64>,
    /// Micro-batches of one replica's share of a step (the pipeline's bubble depends on them).
    pub micro_batches: i64,
    /// Replicas of the model training side by side (data parallelism).
    pub replicas: i64,
}

pub struct Worker {
    pub cfg: RunConfig,
    pub stages: usize,
    pub schedule: ScheduleKind,
    pub device: Device,
    /// This stage's slice of the model (the whole model in a 1×1 run).
    pub model: Gpt,
    pub params: ParamStore,
    pub optim: Optimizer,
    pub scaler: LossScaler,
    /// The first stage reads inputs, the last targets, from readers drawing in lockstep.
    pub data: Option<Data>,
    pub upstream: Option<Box<dyn Link>>,
    pub downstream: Option<Box<dyn Link>>,
    /// Optimizer steps completed.
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
    /// Devices the whole run trains on (every stage of every replica), for MFU and the GPUs it
    /// holds; 1 in a 1×1 run.
    pub devices_in_run: i64,
    /// Zero-shot sets, quality target and pricing (empty unless the job sets them).
    pub evaluation: EvalConfig,
    /// Corrupt checkpoints the last resume passed over for an older one, and why.
    pub skipped_checkpoints: Vec<String>,
    /// Whether the last checkpoint was sealed as this stage's part alone (the stages share no
    /// directory, and the step is committed in the bucket only).
    pub sealed_part: bool,
    /// On the part that commits checkpoints (the first stage of the first replica), with
    /// `spec.checkpoint.store`: the background upload of committed steps (opened on first use).
    pub uploader: Option<crate::checkpoint::remote::Uploader>,
    /// Uploads finished since the run loop last looked ([`Worker::take_uploads`]).
    pub uploaded: Vec<crate::checkpoint::remote::Uploaded>,
}

impl Worker {
    /// Stage `layout` of a `stages`-stage run, linked to its neighbours (a stage needs an
    /// upstream link exactly when it is not first, a downstream one exactly when it is not
    /// last).
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
            devices_in_run: 1,
            evaluation: EvalConfig::default(),
            skipped_checkpoints: Vec::new(),
            sealed_part: false,
            uploader: None,
            uploaded: Vec::new(),
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

    /// The 1×1 worker: the whole model, one stage, one replica, on `device`.
    pub fn single(cfg: RunConfig, device: Device) -> Result<Self> {
        let layout = whole(&cfg.model);
        Self::new(&cfg, layout, 1, ScheduleKind::OneFOneB, device, None, None)
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

    /// Whether this worker is the whole run (no neighbour, no other replica).
    pub fn alone(&self) -> bool {
        self.stages == 1 && self.replicas == 1
    }

    /// Sums `values` over every stage of every replica: along the chain, then around the ring.
    pub fn all_reduce_global(&mut self, values: Tensor) -> Result<Tensor> {
        let total = self.all_reduce(Some(values))?;
        self.ring_sum(total)
    }

    /// Sums a small host tensor across the replicas of this stage.
    pub(super) fn ring_sum(&mut self, t: Tensor) -> Result<Tensor> {
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
    pub(super) fn average_gradients(&mut self) -> Result<()> {
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

    /// A grad view of one parameter in the flat gradient buffer.
    pub(super) fn grad_view(&self, id: ParamId) -> Tensor {
        let s = self.params.spec(id);
        self.params.grad.narrow(0, s.offset, s.numel())
    }

    /// First and last stage hold copies of the tied embedding: both get the sum of their
    /// gradients, relayed through the stages between them.
    pub(super) fn sum_tied_gradients(&mut self) -> Result<()> {
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

    /// `values` summed over every part of the run (themselves in a 1×1 run).
    pub fn agree(&mut self, values: &[f64]) -> Result<Vec<f64>> {
        if self.alone() {
            return Ok(values.to_vec());
        }
        let total = self.all_reduce_global(Tensor::from_slice(values))?;
        Ok(Vec::<f64>::try_from(&total)?)
    }

    /// Whether this worker emits the run's events and summary: the stage with the head, in the
    /// first replica.
    pub fn reports(&self) -> bool {
        self.is_last() && self.replica == 0
    }

    /// GPUs the whole run holds (0 on the CPU).
    pub fn gpus(&self) -> i64 {
        if self.device.is_cuda() { self.devices_in_run } else { 0 }
    }

    /// The whole model's parameters and the FLOPs a token costs (the teacher's forward
    /// included when distilling).
    pub fn counts(&self) -> ModelCounts {
        let params = self.cfg.model.parameters();
        let teacher = self.cfg.distill.as_ref().map_or(0.0, |d| d.flops_per_token(&self.cfg.model));
        ModelCounts { params_total: params.total, params_active: params.active, flops_per_token: self.cfg.model.flops_per_token() + teacher }
    }

    /// What the reporting worker needs to know about the run for MFU and the summary.
    pub fn shape(&self) -> RunShape {
        let (peak, source) = flops::peak_flops(self.device, compute_kind(self.cfg.train.precision));
        let n = self.devices_in_run.max(1);
        RunShape {
            counts: self.counts(),
            peak_flops: peak * n as f64,
            peak_source: if n == 1 { source } else { format!("{source} × {n} devices") },
            pipeline_stages: (self.stages > 1).then_some(self.stages as i64),
            micro_batches: self.micro_batches(),
            replicas: self.replicas as i64,
        }
    }

    /// What produced the run's results (the reporting worker, which holds the data).
    pub fn provenance(&self) -> Provenance {
        Provenance::of(&self.cfg, &self.evaluation, self.data.as_ref().expect("the last stage holds the data"), self.device)
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

/// The device a run uses: `cuda` when libtorch sees a GPU, else the CPU.
pub fn pick_device(requested: Option<&str>) -> Result<Device> {
    crate::cuda::load();
    match requested.unwrap_or("auto") {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" => {
            anyhow::ensure!(tch::Cuda::is_available(), "--device cuda, but libtorch sees no CUDA device");
            Ok(Device::Cuda(0))
        }
        other => anyhow::bail!("unknown device {other:?} (auto, cpu or cuda)"),
    }
}
