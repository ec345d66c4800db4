//! The single-process trainer: the whole model in one process, as an [`Engine`] of the shared run
//! loop. One optimizer step is `micro_batches` forward/backward passes, a gradient gather into
//! the flat buffer, the loss-scale check, the clip and the update. Distilling, the process holds
//! the teacher too and runs it on each micro-batch before the student.

use crate::checkpoint::{self, State, Tensors, single};
use crate::config::RunConfig;
use crate::data::Data;
use crate::data::DataPosition;
use crate::distill::Teacher;
use crate::eval::{self, EvalConfig, GptModel};
use crate::model::gpt::{Gpt, Targets};
use crate::params::{ParamBuilder, ParamStore};
use crate::report::event;
use crate::report::metrics::Metrics;
use crate::report::{Provenance, Reporter, Summary};
use crate::rng::Rng;
use crate::train::flops::{self, ModelCounts};
use crate::train::optim::{self, Optimizer};
use crate::train::precision::{LossScaler, compute_kind};
use crate::train::run::{self, Engine, RunShape, Session, StepReport, Stop};
use anyhow::{Context, Result};
use frugal_api::v1alpha1::{DistillationStatus, QualityStatus};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Everything besides tensors that a resumed single-process run needs (`trainer.json`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainerState {
    pub step: i64,
    pub tokens: i64,
    pub data: DataPosition,
    pub loss_scaler: LossScaler,
    pub optimizer_updates: i64,
    pub model_fingerprint: String,
    pub job: String,
}

impl State for TrainerState {
    fn step(&self) -> i64 {
        self.step
    }
}

pub struct Trainer {
    pub cfg: RunConfig,
    pub device: Device,
    pub model: Gpt,
    pub params: ParamStore,
    pub optim: Optimizer,
    pub scaler: LossScaler,
    pub data: Data,
    /// Optimizer steps completed.
    pub step: i64,
    pub tokens: i64,
    pub counts: ModelCounts,
    /// Zero-shot sets, quality target and pricing (empty unless the job sets them).
    pub evaluation: EvalConfig,
    /// Corrupt checkpoints the last resume passed over for an older one, and why.
    pub skipped_checkpoints: Vec<String>,
    /// Distilling: the teacher (frozen, never checkpointed with the student).
    pub teacher: Option<Teacher>,
}

impl Trainer {
    pub fn new(cfg: RunConfig, device: Device) -> Result<Self> {
        cfg.validate().map_err(anyhow::Error::msg).context("invalid run configuration")?;
        let kind = compute_kind(cfg.train.precision);
        let mut builder = ParamBuilder::default();
        let mut model = Gpt::new(&mut builder, &cfg.model);
        model.prepare(kind, device);
        let mut init_rng = Rng::derive(cfg.train.seed, "init");
        let params = ParamStore::new(builder, &mut init_rng, device, kind);
        let optim = Optimizer::new(&cfg.train.optim, &params);
        let data = Data::new(&cfg.data, cfg.model.vocab_size, cfg.model.seq_len, cfg.train.seed)?;
        let mut counts = flops::count(&cfg.model, &params);
        let teacher = cfg.distill.as_ref().map(|d| Teacher::load(d, &cfg.model, device, kind)).transpose()?;
        counts.flops_per_token += cfg.distill.as_ref().map_or(0.0, |d| d.flops_per_token(&cfg.model));
        Ok(Self {
            scaler: LossScaler::new(cfg.train.precision),
            cfg,
            device,
            model,
            params,
            optim,
            data,
            step: 0,
            tokens: 0,
            counts,
            evaluation: EvalConfig::default(),
            skipped_checkpoints: Vec::new(),
            teacher,
        })
    }

    fn state(&self) -> TrainerState {
        TrainerState {
            step: self.step,
            tokens: self.tokens,
            data: self.data.position.clone(),
            loss_scaler: self.scaler.clone(),
            optimizer_updates: self.optim.updates,
            model_fingerprint: self.params.fingerprint(),
            job: self.cfg.name.clone(),
        }
    }

    pub fn save_checkpoint(&self) -> Result<Option<PathBuf>> {
        let Some(dir) = &self.cfg.checkpoint_dir else { return Ok(None) };
        let tensors = Tensors::of(&self.params, self.optim.state_tensors(&self.params), None);
        let state = self.state();
        Ok(Some(single::save(dir, &tensors, &state, &state.model_fingerprint, self.cfg.keep_checkpoints)?))
    }

    /// Loads a specific checkpoint directory.
    pub fn restore(&mut self, dir: &std::path::Path) -> Result<()> {
        let optimizer = self.optim.state_tensors(&self.params);
        let state = single::load(dir, &mut self.params, optimizer)?;
        self.resume_from(state);
        Ok(())
    }

    /// Takes over a loaded checkpoint's step, tokens, data position and loss scale.
    fn resume_from(&mut self, state: TrainerState) {
        self.optim.updates = state.optimizer_updates;
        self.step = state.step;
        self.tokens = state.tokens;
        self.data.position = state.data;
        self.scaler = state.loss_scaler;
    }

    /// Resumes from the newest committed checkpoint that is intact, if any; returns its step.
    /// A corrupt or partial newer one (a node lost mid-write, a flipped byte) is passed over,
    /// renamed `<step dir>.corrupt` so that nothing lists it again, and named in
    /// [`Trainer::skipped_checkpoints`] and on stderr. When every checkpoint is corrupt, or one
    /// belongs to another model, the error is returned and nothing is loaded or renamed: the run
    /// does not start over on top of checkpoints it cannot read.
    pub fn resume_latest(&mut self) -> Result<Option<i64>> {
        let Some(root) = self.cfg.checkpoint_dir.clone() else { return Ok(None) };
        self.skipped_checkpoints.clear();
        let (params, optim) = (&mut self.params, &self.optim);
        let load = |dir: &std::path::Path| {
            let optimizer = optim.state_tensors(params);
            Ok(single::load::<TrainerState>(dir, params, optimizer)?)
        };
        let Some(resumed) = checkpoint::newest_intact(&root, load)? else { return Ok(None) };
        resumed.set_aside()?;
        self.skipped_checkpoints = resumed.notes();
        self.resume_from(resumed.loaded);
        Ok(Some(self.step))
    }

    /// One optimizer step.
    pub fn train_step(&mut self) -> StepReport {
        let t0 = Instant::now();
        let micro = self.cfg.micro_batches();
        let total = self.cfg.train.steps;
        let lr = optim::lr_at(&self.cfg.train.optim, self.step, total);
        let scale = self.scaler.scale;
        let recompute = self.cfg.train.activation_checkpointing;
        let mut loss_sum = Tensor::zeros([], (Kind::Float, self.device));
        let mut soft_sum: Option<Tensor> = None;
        let mut aux_sum: Option<Tensor> = None;
        let mut dropped: Option<Tensor> = None;
        let mut mismatches: Option<Tensor> = None;
        let mut assignments = 0;
        for i in 0..micro {
            let batch = self.data.next_batch(self.cfg.train.micro_batch_size);
            let x = batch.inputs.to_device(self.device);
            let y = batch.targets.to_device(self.device);
            let soft = self.teacher.as_ref().and_then(|t| t.soft_targets(&x));
            let targets = Targets { tokens: &y, soft: soft.as_ref() };
            let grad_scale = scale / micro as f64;
            let stats = if recompute {
                if i == 0 {
                    self.params.zero_grad();
                }
                let stats = self.model.forward_backward(&self.params, &x, targets, grad_scale, true);
                self.params.accumulate_grads(1.0 / scale);
                stats
            } else {
                // The first micro-batch writes the gradient buffer, later ones add to it.
                let (total, stats) = self.model.forward(&self.params, &x, targets);
                self.params.backward_into_grad(&(total * grad_scale), 1.0 / scale, i > 0);
                stats
            };
            loss_sum += stats.loss;
            soft_sum = crate::model::gpt::add_opt(soft_sum, stats.soft_loss);
            aux_sum = crate::model::gpt::add_opt(aux_sum, stats.aux_loss);
            dropped = crate::model::gpt::add_opt(dropped, stats.dropped);
            mismatches = crate::model::gpt::add_opt(mismatches, stats.routing_mismatches);
            assignments += stats.assignments;
        }
        let norm = self.params.grad_norm();
        let grad_norm = norm.double_value(&[]);
        let finite = grad_norm.is_finite();
        let apply = self.scaler.update(finite);
        if apply {
            let clip = self.cfg.train.optim.grad_clip;
            let coef = if clip > 0.0 && grad_norm > clip { clip / (grad_norm + 1e-6) } else { 1.0 };
            self.optim.step_scaled(&mut self.params, lr, coef);
            self.params.sync_compute();
        }
        self.step += 1;
        self.tokens += self.cfg.tokens_per_step();
        let layers_moe = self.model.moe_blocks().max(1) as f64;
        StepReport {
            step: self.step,
            loss: loss_sum.double_value(&[]) / micro as f64,
            soft_loss: soft_sum.map(|s| s.double_value(&[]) / micro as f64),
            aux_loss: aux_sum.map(|a| a.double_value(&[]) / (micro as f64 * layers_moe)),
            dropped_fraction: dropped.map(|d| d.double_value(&[]) / assignments.max(1) as f64),
            grad_norm,
            lr,
            loss_scale: scale,
            skipped: !apply,
            seconds: t0.elapsed().as_secs_f64(),
            busy_seconds: None,
            ring_seconds: None,
            routing_mismatches: mismatches.map_or(0, |m| m.int64_value(&[])),
        }
    }

    /// Mean validation cross-entropy (nats per token).
    pub fn evaluate(&self) -> f64 {
        eval::validate(&self.language_model(), &self.data, self.cfg.train.micro_batch_size.max(16)).loss()
    }

    pub fn language_model(&self) -> GptModel<'_> {
        GptModel { model: &self.model, params: &self.params, device: self.device }
    }

    /// Validation loss, bits per byte, perplexity and the zero-shot sets, now.
    pub fn evaluate_quality(&self) -> Result<QualityStatus> {
        let batch = self.cfg.train.micro_batch_size.max(16);
        eval::evaluate(&self.language_model(), &self.data, &self.evaluation.sets, self.cfg.train.seed, self.step, batch)
    }

    /// What produced this run's results.
    pub fn provenance(&self) -> Provenance {
        Provenance::of(&self.cfg, &self.evaluation, &self.data, self.device)
    }

    /// Trains to the configured step count, reporting as it goes; on `stop` (SIGTERM) writes a
    /// checkpoint and returns [`Stop::Terminated`].
    pub fn run(&mut self, stop: &AtomicBool, reporter: &mut Reporter, metrics: &Metrics) -> Result<(Stop, Summary)> {
        self.run_until(stop, reporter, metrics, None)
    }

    /// As [`Trainer::run`], stopping after `max_steps` (when set) as if the run were complete
    /// there; the schedule still follows the configured step count.
    pub fn run_until(&mut self, stop: &AtomicBool, reporter: &mut Reporter, metrics: &Metrics, max_steps: Option<i64>) -> Result<(Stop, Summary)> {
        let evaluation = self.evaluation.clone();
        let session = Session { stop, reporter: Some(reporter), metrics, evaluation: &evaluation, max_steps, resume: false, metrics_port: None };
        let (stopped, summary) = run::run(self, session)?;
        Ok((stopped, summary.expect("a single-process run reports")))
    }

    /// GPUs this run holds (0 on the CPU).
    pub fn gpus(&self) -> i64 {
        i64::from(self.device != Device::Cpu)
    }
}

impl Engine for Trainer {
    fn cfg(&self) -> &RunConfig {
        &self.cfg
    }

    fn device(&self) -> Device {
        self.device
    }

    fn step(&self) -> i64 {
        self.step
    }

    fn tokens(&self) -> i64 {
        self.tokens
    }

    fn loss_scaler(&self) -> &LossScaler {
        &self.scaler
    }

    fn reports(&self) -> bool {
        true
    }

    fn gpus(&self) -> i64 {
        Trainer::gpus(self)
    }

    fn shape(&self) -> RunShape {
        let (peak_flops, peak_source) = flops::peak_flops(self.device, compute_kind(self.cfg.train.precision));
        RunShape { counts: self.counts.clone(), peak_flops, peak_source, pipeline_stages: None, micro_batches: self.cfg.micro_batches(), replicas: 1 }
    }

    fn resume(&mut self) -> Result<Option<event::Resume>> {
        Ok(self.resume_latest()?.map(|step| event::Resume { step, stages_written: None, skipped_corrupt: self.skipped_checkpoints.clone() }))
    }

    fn optimizer_step(&mut self) -> Result<StepReport> {
        Ok(self.train_step())
    }

    fn agree(&mut self, values: &[f64]) -> Result<Vec<f64>> {
        Ok(values.to_vec())
    }

    fn evaluate(&mut self, _: &EvalConfig) -> Result<Option<QualityStatus>> {
        Ok(Some(self.evaluate_quality()?))
    }

    fn distillation(&mut self, evaluation: &EvalConfig) -> Result<Option<DistillationStatus>> {
        let Some(teacher) = &self.teacher else { return Ok(None) };
        let batch = self.cfg.train.micro_batch_size.max(16);
        Ok(Some(teacher.report(&self.language_model(), &self.data, evaluation, self.cfg.train.seed, batch)?))
    }

    fn checkpoint(&mut self) -> Result<Option<PathBuf>> {
        self.save_checkpoint()
    }

    fn provenance(&self, _: &EvalConfig) -> Provenance {
        Trainer::provenance(self)
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
