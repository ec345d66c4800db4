//! The training loop: one optimizer step is `micro_batches` forward/backward passes, a gradient
//! gather into the flat buffer, the loss-scale check, the clip and the update.

use crate::checkpoint::{self, TrainerState};
use crate::config::RunConfig;
use crate::data::Data;
use crate::eval::{self, EvalConfig, GptModel};
use crate::report::event::{self, RunEvent};
use crate::train::flops::{self, ModelCounts};
use crate::model::gpt::Gpt;
use crate::report::metrics::{Metrics, StepGauges};
use crate::train::optim::{self, Optimizer};
use crate::params::{ParamBuilder, ParamStore};
use crate::train::precision::{LossScaler, compute_kind};
use crate::report::{Provenance, Reporter, Summary};
use crate::rng::Rng;
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

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
}

/// What one optimizer step measured.
#[derive(Clone, Debug)]
pub struct StepReport {
    pub step: i64,
    pub loss: f64,
    pub aux_loss: Option<f64>,
    pub dropped_fraction: Option<f64>,
    pub grad_norm: f64,
    pub lr: f64,
    pub loss_scale: f64,
    pub skipped: bool,
    pub seconds: f64,
    pub routing_mismatches: i64,
}

/// Why `run` returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    Completed,
    /// An evaluation reached the job's quality target.
    QualityTargetReached,
    /// SIGTERM/SIGINT: a checkpoint was written, the run can resume.
    Terminated,
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
        let counts = flops::count(&cfg.model, &params);
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
        Ok(Some(checkpoint::save(dir, &self.params, &self.optim, &self.state(), self.cfg.keep_checkpoints)?))
    }

    /// Loads a specific checkpoint directory.
    pub fn restore(&mut self, dir: &std::path::Path) -> Result<()> {
        let state = checkpoint::load(dir, &mut self.params, &mut self.optim)?;
        self.resume_from(state);
        Ok(())
    }

    /// Takes over a loaded checkpoint's step, tokens, data position and loss scale.
    fn resume_from(&mut self, state: TrainerState) {
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
        let mut corrupt: Vec<(PathBuf, checkpoint::CheckpointError)> = Vec::new();
        for (_, dir) in checkpoint::list(&root)?.into_iter().rev() {
            match checkpoint::load(&dir, &mut self.params, &mut self.optim) {
                Ok(state) => {
                    self.resume_from(state);
                    for (bad, why) in corrupt {
                        let aside = checkpoint::set_aside(&bad)?;
                        let note = format!("{why}; resumed from {} instead, and kept the corrupt one as {}", dir.display(), aside.display());
                        eprintln!("frugal-trainer: {note}");
                        self.skipped_checkpoints.push(note);
                    }
                    return Ok(Some(self.step));
                }
                Err(e) if e.is_corrupt() => corrupt.push((dir, e)),
                Err(e) => return Err(e.into()),
            }
        }
        match corrupt.into_iter().next() {
            Some((_, newest)) => Err(newest.into()),
            None => Ok(None),
        }
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
        let mut aux_sum: Option<Tensor> = None;
        let mut dropped: Option<Tensor> = None;
        let mut mismatches: Option<Tensor> = None;
        let mut assignments = 0;
        for i in 0..micro {
            let batch = self.data.next_batch(self.cfg.train.micro_batch_size);
            let x = batch.inputs.to_device(self.device);
            let y = batch.targets.to_device(self.device);
            let grad_scale = scale / micro as f64;
            let stats = if recompute {
                if i == 0 {
                    self.params.zero_grad();
                }
                let stats = self.model.forward_backward(&self.params, &x, &y, grad_scale, true);
                self.params.accumulate_grads(1.0 / scale);
                stats
            } else {
                // The first micro-batch writes the gradient buffer, later ones add to it.
                let (total, stats) = self.model.forward(&self.params, &x, &y);
                self.params.backward_into_grad(&(total * grad_scale), 1.0 / scale, i > 0);
                stats
            };
            loss_sum += stats.loss;
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
            aux_loss: aux_sum.map(|a| a.double_value(&[]) / (micro as f64 * layers_moe)),
            dropped_fraction: dropped.map(|d| d.double_value(&[]) / assignments.max(1) as f64),
            grad_norm,
            lr,
            loss_scale: scale,
            skipped: !apply,
            seconds: t0.elapsed().as_secs_f64(),
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
    pub fn evaluate_quality(&self) -> Result<frugal_api::v1alpha1::QualityStatus> {
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
        let end = max_steps.map_or(self.cfg.train.steps, |m| m.min(self.cfg.train.steps));
        let (peak, peak_source) = flops::peak_flops(self.device, compute_kind(self.cfg.train.precision));
        let c = self.counts.clone();
        reporter.emit(RunEvent::Start(event::Start {
            job: self.cfg.name.clone(),
            step: self.step,
            steps: self.cfg.train.steps,
            device: Some(format!("{:?}", self.device)),
            precision: Some(format!("{:?}", self.cfg.train.precision)),
            params_total: Some(c.params_total),
            params_active: Some(c.params_active),
            flops_per_token: Some(c.flops_per_token),
            pipeline_stages: None,
        }));
        let t_start = Instant::now();
        let start_tokens = self.tokens;
        let (mut last_loss, mut val_loss) = (f64::NAN, None);
        let (mut dropped_sum, mut dropped_n) = (0.0, 0);
        let mut stopped = Stop::Completed;
        let mut last_ckpt: Option<PathBuf> = None;
        let mut train_seconds = 0.0;
        let mut quality = None;
        let mut tracker = eval::TargetTracker::new(self.evaluation.target.clone(), self.gpus());
        while self.step < end {
            if stop.load(Ordering::SeqCst) {
                stopped = Stop::Terminated;
                break;
            }
            let r = self.train_step();
            train_seconds += r.seconds;
            last_loss = r.loss;
            if let Some(d) = r.dropped_fraction {
                dropped_sum += d;
                dropped_n += 1;
            }
            let tps = self.cfg.tokens_per_step() as f64 / r.seconds;
            let mfu = tps * c.flops_per_token / peak;
            metrics.record_progress(self.step, self.scaler.skipped_steps, r.dropped_fraction);
            metrics.record_step(&StepGauges {
                tokens: self.tokens,
                loss: r.loss,
                lr: r.lr,
                grad_norm: r.grad_norm,
                tokens_per_second: tps,
                mfu,
                loss_scale: self.scaler.scale,
            });
            let log_every = self.cfg.train.log_interval.max(1);
            if self.step % log_every == 0 || self.step == end {
                reporter.emit(RunEvent::Step(event::Step {
                    step: self.step,
                    tokens: self.tokens,
                    loss: r.loss,
                    lr: r.lr,
                    grad_norm: r.grad_norm,
                    tokens_per_second: tps,
                    achieved_tflops: tps * c.flops_per_token / 1e12,
                    mfu,
                    aux_loss: r.aux_loss,
                    dropped_fraction: r.dropped_fraction,
                    loss_scale: self.scaler.enabled.then_some(r.loss_scale),
                    skipped: self.scaler.enabled.then_some(r.skipped),
                    ..Default::default()
                }));
            }
            let every = self.cfg.train.eval_interval;
            if every > 0 && self.step % every == 0 && self.step < end {
                let q = self.evaluation_pass(reporter, metrics, &mut tracker, t_start.elapsed().as_secs_f64())?;
                val_loss = q.validation_loss;
                quality = Some(q);
                if tracker.reached() {
                    stopped = Stop::QualityTargetReached;
                    break;
                }
            }
            let every = self.cfg.train.checkpoint_interval;
            if every > 0 && self.step % every == 0 && self.step < end {
                last_ckpt = self.checkpoint(reporter, metrics)?;
            }
        }
        if stopped == Stop::Completed {
            let q = self.evaluation_pass(reporter, metrics, &mut tracker, t_start.elapsed().as_secs_f64())?;
            val_loss = q.validation_loss;
            quality = Some(q);
            if tracker.reached() {
                stopped = Stop::QualityTargetReached;
            }
        }
        if self.cfg.checkpoint_dir.is_some() {
            last_ckpt = self.checkpoint(reporter, metrics)?;
        }
        let tokens = self.tokens - start_tokens;
        let device_hours = t_start.elapsed().as_secs_f64() / 3600.0 * self.gpus().max(1) as f64;
        let tps = if train_seconds > 0.0 { tokens as f64 / train_seconds } else { 0.0 };
        let summary = Summary {
            job: self.cfg.name.clone(),
            device: format!("{:?}", self.device),
            precision: format!("{:?}", self.cfg.train.precision),
            steps: self.step,
            tokens: self.tokens,
            params_total: c.params_total,
            params_active: c.params_active,
            flops_per_token: c.flops_per_token,
            total_flops: c.flops_per_token * self.tokens as f64,
            seconds: t_start.elapsed().as_secs_f64(),
            tokens_per_second: tps,
            achieved_tflops: tps * c.flops_per_token / 1e12,
            mfu: tps * c.flops_per_token / peak,
            peak_source,
            train_loss: last_loss,
            val_loss,
            dropped_token_fraction: (dropped_n > 0).then(|| dropped_sum / dropped_n as f64),
            skipped_steps: self.scaler.skipped_steps,
            stopped_by: match stopped {
                Stop::Completed => "completion".into(),
                Stop::QualityTargetReached => "quality target".into(),
                Stop::Terminated => "signal".into(),
            },
            checkpoint: last_ckpt.map(|p| p.display().to_string()),
            reason: format!("{stopped:?}"),
            model: eval::describe_model(&self.cfg.model, &self.cfg.train.precision),
            gpus: self.gpus(),
            device_hours,
            cost: device_hours * self.evaluation.price_per_gpu_hour,
            currency: self.evaluation.currency.clone(),
            quality,
            target: tracker.outcome(self.step, end, stopped == Stop::Terminated),
            provenance: self.provenance(),
        };
        Ok((stopped, summary))
    }

    /// GPUs this run holds (0 on the CPU).
    pub fn gpus(&self) -> i64 {
        i64::from(self.device != Device::Cpu)
    }

    fn evaluation_pass(
        &self,
        reporter: &mut Reporter,
        metrics: &Metrics,
        tracker: &mut eval::TargetTracker,
        seconds: f64,
    ) -> Result<frugal_api::v1alpha1::QualityStatus> {
        let q = self.evaluate_quality()?;
        record_evaluation(&q, self.step, self.tokens, seconds, reporter, metrics, tracker);
        Ok(q)
    }

    fn checkpoint(&self, reporter: &mut Reporter, metrics: &Metrics) -> Result<Option<PathBuf>> {
        let t0 = Instant::now();
        let path = self.save_checkpoint()?;
        if let Some(p) = &path {
            metrics.gauge("frugal_trainer_checkpoint_step", "Step of the newest checkpoint.", self.step as f64);
            reporter.emit(RunEvent::Checkpoint(event::Checkpoint {
                step: self.step,
                path: p.display().to_string(),
                seconds: Some(t0.elapsed().as_secs_f64()),
            }));
        }
        Ok(path)
    }
}

/// Records an evaluation `seconds` into the run: the metrics, the `eval` event (in a pod the
/// status folds it into the TrainingJob's `status.quality`) and the quality target. True when
/// this evaluation first reached the target.
pub fn record_evaluation(
    q: &frugal_api::v1alpha1::QualityStatus,
    step: i64,
    tokens: i64,
    seconds: f64,
    reporter: &mut Reporter,
    metrics: &Metrics,
    tracker: &mut eval::TargetTracker,
) -> bool {
    let v = q.validation_loss.unwrap_or(f64::NAN);
    metrics.gauge("frugal_trainer_validation_loss", "Validation loss of the last evaluation.", v);
    if let Some(b) = q.bits_per_byte {
        metrics.gauge("frugal_trainer_bits_per_byte", "Validation bits per byte of the last evaluation.", b);
    }
    let reached = tracker.observe(q, step, tokens, seconds);
    reporter.emit(RunEvent::Eval(event::Eval::of(q, step, reached)));
    reached
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
