//! Training a job as a pipeline: all stages in this process (a laptop, or a pod with all the
//! stages), or this pod's stages joined to its neighbours over TCP as the pod↔trainer contract
//! describes. Stages agree every step on whether to stop (SIGTERM reaches pods at different
//! moments), checkpoint together, and the last stage reports: on its output and, in a pod, into
//! the TrainingJob's status (progress, tokens/s, cost) as a single-process run does, so the
//! operator's progress watchdog sees a pipelined run advance, and ends with the run's summary.
//! Every `evalInterval` steps and at the end the stages evaluate together (validation loss,
//! perplexity, bits per byte, zero-shot sets; see `eval.rs`): the last stage records it in
//! `status.quality`, and when it reaches the job's quality target every stage stops there.
//! Every process serves Prometheus metrics when given a port: progress and the pipeline bubble
//! from each, the step's loss, throughput and MFU from the process holding the last stage.

use super::engine::{Replicas, StageWorker, run_in_process};
use super::process::ProcessStages;
use super::schedule::ScheduleKind;
use super::stage::layouts;
use super::transport::DEFAULT_TIMEOUT;
use crate::checkpoint;
use crate::config::RunConfig;
use crate::eval::EvalConfig;
use crate::job::Job;
use crate::report::Provenance;
use crate::report::event;
use crate::train::flops::{self, ModelCounts};
use crate::train::precision::{LossScaler, compute_kind};
use crate::train::run::{Engine, JobRun, RunShape, StepReport, Stop, train_job};
use anyhow::{Context, Result};
use frugal_api::contract::{PodEnv, TrainerConfig, env, paths};
use frugal_api::v1alpha1::{DistillationStatus, QualityStatus};
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

/// The job's replicas of the pipeline.
pub fn replicas(job: &Job) -> Replicas {
    let p = &job.spec.parallelism;
    Replicas { count: p.data_parallel.max(1) as usize, shard_optimizer: p.shard_optimizer_state && p.data_parallel > 1 }
}

/// This process's stages: from the pod's environment and configuration when it runs in a pod
/// (`JOB_COMPLETION_INDEX` set), else every stage of every replica of the job.
pub fn process_stages(job: &Job, cfg: &RunConfig) -> Result<ProcessStages> {
    let stages = job.spec.parallelism.pipeline_stages.max(1) as usize;
    let in_pod = std::env::var_os(env::POD_INDEX).is_some();
    if !in_pod {
        return Ok(ProcessStages::local(layouts(&cfg.model, stages), replicas(job)));
    }
    let pod = PodEnv::from_lookup(|k| std::env::var(k).ok())?;
    let text = std::fs::read_to_string(&pod.config_path).with_context(|| format!("reading {}", pod.config_path))?;
    let config = TrainerConfig::from_yaml(&text)?;
    let assignment = config.assignment(&pod)?;
    let token = std::fs::read(&pod.token_path).with_context(|| format!("reading the pipeline token {}", pod.token_path))?;
    let token = String::from_utf8_lossy(&token).trim().as_bytes().to_vec();
    let listen = frugal_api::contract::listen_address(std::env::var(env::POD_IP).ok().as_deref(), paths::PIPELINE_PORT);
    let first = assignment.stages.first().context("this pod runs no stage")?.index as usize;
    let ring_listen = frugal_api::contract::listen_address(std::env::var(env::POD_IP).ok().as_deref(), paths::RING_PORT);
    Ok(ProcessStages {
        layouts: config.pipeline.stages.clone(),
        first,
        count: assignment.stages.len(),
        listen: assignment.upstream.as_ref().map(|_| listen),
        downstream: assignment.downstream.as_ref().map(|p| format!("{}:{}", p.host, p.port)),
        token,
        timeout: DEFAULT_TIMEOUT,
        replicas: Replicas {
            count: assignment.replicas.max(1) as usize,
            shard_optimizer: config.spec.parallelism.shard_optimizer_state && assignment.replicas > 1,
        },
        replica: assignment.replica as usize,
        all_replicas_here: false,
        ring_listen: assignment.ring_previous.as_ref().map(|_| ring_listen),
        ring_next: assignment.ring_next.as_ref().map(|p| format!("{}:{}", p.host, p.port)),
    })
}

/// Trains `cfg` as a pipeline of this process's stages, resuming from the newest intact
/// checkpoint, reporting to `run` from the stage with the head.
pub fn train(job: &Job, cfg: RunConfig, device: Device, run: JobRun) -> Result<Stop> {
    let process = process_stages(job, &cfg)?;
    let schedule = ScheduleKind::from(job.spec.parallelism.schedule);
    let devices = devices_for(device);
    let stages = process.layouts.len() as i64;
    // MFU is taken against every device the pipeline trains on: this process's (stage s on
    // devices[s % n]) times the number of processes, in every replica.
    let replicas = process.replicas.count as i64;
    let devices_in_pipeline = if process.all_replicas_here {
        devices.len().min(process.count * process.replicas.count) as i64
    } else {
        (stages / process.count as i64).max(1) * devices.len().min(process.count) as i64 * replicas
    };
    let results = process.run(&cfg, schedule, &devices, move |w: &mut StageWorker| train_job(&mut Stage { worker: w, devices_in_pipeline }, &run))?;
    // The stages agree on how the run ends; a disagreement would be a bug, and stopping wins.
    Ok([Stop::Terminated, Stop::QualityTargetReached].into_iter().find(|s| results.contains(s)).unwrap_or(Stop::Completed))
}

/// One pipeline stage as a part of the run loop ([`Engine`]): the stage with the head reports.
struct Stage<'a> {
    worker: &'a mut StageWorker,
    devices_in_pipeline: i64,
}

impl Engine for Stage<'_> {
    fn cfg(&self) -> &RunConfig {
        &self.worker.cfg
    }

    fn device(&self) -> Device {
        self.worker.device
    }

    fn step(&self) -> i64 {
        self.worker.step
    }

    fn tokens(&self) -> i64 {
        self.worker.tokens
    }

    fn loss_scaler(&self) -> &LossScaler {
        &self.worker.scaler
    }

    fn reports(&self) -> bool {
        self.worker.model.layout.head && self.worker.replica == 0
    }

    fn gpus(&self) -> i64 {
        if self.worker.device.is_cuda() { self.devices_in_pipeline } else { 0 }
    }

    fn shape(&self) -> RunShape {
        let w = &self.worker;
        let (peak, source) = flops::peak_flops(w.device, compute_kind(w.cfg.train.precision));
        let n = self.devices_in_pipeline;
        let params = w.cfg.model.parameters();
        let teacher = w.cfg.distill.as_ref().map_or(0.0, |d| d.flops_per_token(&w.cfg.model));
        RunShape {
            counts: ModelCounts {
                params_total: params.total,
                params_active: params.active,
                flops_per_token: w.cfg.model.flops_per_token() + teacher,
            },
            peak_flops: peak * n as f64,
            peak_source: format!("{source} × {n} device(s)"),
            pipeline_stages: Some(w.stages as i64),
            micro_batches: w.micro_batches(),
            replicas: w.replicas as i64,
        }
    }

    /// Every stage of every replica loads the same step (verification reads the manifest every
    /// stage wrote, so each passes over the same corrupt steps); once all have, the first stage
    /// of the first replica sets the corrupt ones aside.
    fn resume(&mut self) -> Result<Option<event::Resume>> {
        let Some(root) = self.worker.cfg.checkpoint_dir.clone() else { return Ok(None) };
        let w = &mut *self.worker;
        let resumed = checkpoint::newest_intact(&root, |dir| super::checkpoint::load(w, dir))?;
        let step = resumed.as_ref().map_or(-1, |r| r.loaded.step);
        let agreed = self.agree(&[step as f64, 1.0])?;
        anyhow::ensure!(
            agreed[0] == step as f64 * agreed[1],
            "the pipeline's stages resumed from different checkpoints (this stage from step {step}); look for a checkpoint another stage cannot read"
        );
        let Some(resumed) = resumed else { return Ok(None) };
        if self.worker.index() == 0 && self.worker.replica == 0 {
            resumed.set_aside()?;
        }
        let state = &resumed.loaded;
        Ok(Some(event::Resume { step: state.step, stages_written: Some(state.stages as i64), skipped_corrupt: resumed.notes() }))
    }

    fn optimizer_step(&mut self) -> Result<StepReport> {
        self.worker.train_step()
    }

    fn agree(&mut self, values: &[f64]) -> Result<Vec<f64>> {
        let total = self.worker.all_reduce_global(Tensor::from_slice(values))?;
        Ok(Vec::<f64>::try_from(&total)?)
    }

    /// The first replica evaluates (every replica holds the same weights); the others go on to
    /// the agreement that follows.
    fn evaluate(&mut self, evaluation: &EvalConfig) -> Result<Option<QualityStatus>> {
        if self.worker.replica > 0 {
            return Ok(None);
        }
        self.worker.evaluate(evaluation)
    }

    /// The first replica's stages, as they evaluate.
    fn distillation(&mut self, evaluation: &EvalConfig) -> Result<Option<DistillationStatus>> {
        if self.worker.replica > 0 {
            return Ok(None);
        }
        self.worker.distillation(evaluation)
    }

    fn checkpoint(&mut self) -> Result<Option<PathBuf>> {
        let Some(root) = self.worker.cfg.checkpoint_dir.clone() else { return Ok(None) };
        let keep = self.worker.cfg.keep_checkpoints;
        Ok(Some(super::checkpoint::save(self.worker, &root, keep)?))
    }

    fn provenance(&self, evaluation: &EvalConfig) -> Provenance {
        let w = &self.worker;
        Provenance::of(&w.cfg, evaluation, w.data.as_ref().expect("the last stage holds the data"), w.device)
    }
}

/// The devices a process's stages run on, round-robin: every CUDA device when `device` is one.
fn devices_for(device: Device) -> Vec<Device> {
    match device {
        Device::Cuda(_) => (0..tch::Cuda::device_count().max(1) as usize).map(Device::Cuda).collect(),
        d => vec![d],
    }
}

/// Evaluates a pipelined job's checkpoint `dir` with all of the job's stages in this process
/// (`frugal-trainer eval`): the quality, the checkpoint's step and the provenance.
pub fn evaluate_checkpoint(job: &Job, cfg: &RunConfig, dir: &Path, device: Device) -> Result<(QualityStatus, i64, Provenance)> {
    let stages = job.spec.parallelism.pipeline_stages.max(1) as usize;
    let schedule = ScheduleKind::from(job.spec.parallelism.schedule);
    let (dir, evaluation) = (dir.to_path_buf(), job.eval_config());
    let results = run_in_process(cfg, &layouts(&cfg.model, stages), schedule, &devices_for(device), move |w: &mut StageWorker| {
        super::checkpoint::load(w, &dir)?;
        let quality = w.evaluate(&evaluation)?;
        Ok(quality.map(|q| {
            let data = w.data.as_ref().expect("the last stage holds the data");
            (q, w.step, Provenance::of(&w.cfg, &evaluation, data, w.device))
        }))
    })?;
    results.into_iter().flatten().next().context("the last stage returns the evaluation")
}
