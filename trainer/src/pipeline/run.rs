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

use crate::checkpoint::pipelined as checkpoint;
use super::engine::{StageWorker, run_in_process};
use super::process::ProcessStages;
use super::schedule::ScheduleKind;
use super::stage::layouts;
use super::transport::DEFAULT_TIMEOUT;
use crate::config::RunConfig;
use crate::eval::{EvalConfig, TargetTracker};
use crate::report::event::{self, RunEvent};
use crate::job::Job;
use crate::report::metrics::{Metrics, StepGauges};
use crate::report::{Provenance, Reporter, Summary};
use crate::report::status::{StatusReporter, StatusTarget};
use crate::train::record_evaluation;
use anyhow::{Context, Result};
use frugal_api::contract::{PodEnv, TrainerConfig, env, paths};
use frugal_api::planner::bubble_fraction;
use frugal_api::v1alpha1::QualityStatus;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tch::{Device, Tensor};

/// How a pipelined run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PipelineStop {
    Completed,
    /// An evaluation reached the job's quality target (all stages stop at that step).
    QualityTargetReached,
    /// SIGTERM/SIGINT: a checkpoint was written at the step all stages agreed on.
    Terminated,
}

/// This process's stages: from the pod's environment and configuration when it runs in a pod
/// (`JOB_COMPLETION_INDEX` set), else every stage of the job.
pub fn process_stages(job: &Job, cfg: &RunConfig) -> Result<ProcessStages> {
    let stages = job.spec.parallelism.pipeline_stages.max(1) as usize;
    let in_pod = std::env::var_os(env::POD_INDEX).is_some();
    if !in_pod {
        return Ok(ProcessStages {
            layouts: layouts(&cfg.model, stages),
            first: 0,
            count: stages,
            listen: None,
            downstream: None,
            token: vec![],
            timeout: DEFAULT_TIMEOUT,
        });
    }
    let pod = PodEnv::from_lookup(|k| std::env::var(k).ok())?;
    let text = std::fs::read_to_string(&pod.config_path).with_context(|| format!("reading {}", pod.config_path))?;
    let config = TrainerConfig::from_yaml(&text)?;
    let assignment = config.assignment(&pod)?;
    let token = std::fs::read(&pod.token_path).with_context(|| format!("reading the pipeline token {}", pod.token_path))?;
    let token = String::from_utf8_lossy(&token).trim().as_bytes().to_vec();
    let listen = frugal_api::contract::listen_address(std::env::var(env::POD_IP).ok().as_deref(), paths::PIPELINE_PORT);
    let first = assignment.stages.first().context("this pod runs no stage")?.index as usize;
    Ok(ProcessStages {
        layouts: config.pipeline.stages.clone(),
        first,
        count: assignment.stages.len(),
        listen: assignment.upstream.as_ref().map(|_| listen),
        downstream: assignment.downstream.as_ref().map(|p| format!("{}:{}", p.host, p.port)),
        token,
        timeout: DEFAULT_TIMEOUT,
    })
}

/// How a pipelined run reports, as the `train` command's flags say.
#[derive(Clone, Debug, Default)]
pub struct Output {
    /// JSON lines on stdout instead of a progress bar.
    pub json: bool,
    /// Serve Prometheus metrics on this port.
    pub metrics_port: Option<u16>,
    /// Also write the final run report here (it always goes into the checkpoint directory).
    pub report: Option<PathBuf>,
}

/// Trains `cfg` as a pipeline of this process's stages; resumes from the newest checkpoint.
pub fn train(job: &Job, cfg: RunConfig, device: Device, stop: Arc<AtomicBool>, max_steps: Option<i64>, output: Output) -> Result<PipelineStop> {
    let process = process_stages(job, &cfg)?;
    let json = output.json;
    let metrics = Metrics::new(&cfg.name);
    let served = output.metrics_port.map(|port| metrics.serve_port(port)).transpose()?;
    let schedule = ScheduleKind::from(job.spec.parallelism.schedule);
    let devices = devices_for(device);
    let end = max_steps.map_or(cfg.train.steps, |m| m.min(cfg.train.steps));
    let stages = process.layouts.len() as i64;
    // MFU is taken against every device the pipeline trains on: this process's (stage s on
    // devices[s % n]) times the number of processes.
    let devices_in_pipeline = (stages / process.count as i64).max(1) * devices.len().min(process.count) as i64;
    let kind = crate::train::precision::compute_kind(cfg.train.precision);
    let evaluation = job.eval_config();
    let report = output.report;
    // In a pod the operator set FRUGAL_REPORT_STATUS; the stage with the head reports.
    let target = StatusTarget::from_env(&job.spec, &job.plan);
    let results = process.run(&cfg, schedule, &devices, move |w: &mut StageWorker| {
        let root = w.cfg.checkpoint_dir.clone();
        let status = target.clone().filter(|_| w.model.layout.head).map(StatusTarget::start);
        let mut reporter =
            w.model.layout.head.then(|| Reporter::new(w.cfg.train.steps, json).with_sink(status.as_ref().and_then(StatusReporter::sender)));
        if let Some(dir) = root.as_ref().map(|r| crate::checkpoint::latest(r)).transpose()?.flatten() {
            let state = checkpoint::load(w, &dir)?;
            if let Some(rep) = reporter.as_mut() {
                rep.emit(RunEvent::Resume(event::Resume { step: state.step, stages_written: Some(state.stages as i64), ..Default::default() }));
            }
        }
        if let Some(rep) = reporter.as_mut() {
            rep.emit(RunEvent::Start(event::Start {
                job: w.cfg.name.clone(),
                step: w.step,
                steps: w.cfg.train.steps,
                pipeline_stages: Some(stages),
                ..Default::default()
            }));
            if let Some(port) = served {
                rep.emit(RunEvent::Metrics { port });
            }
        }
        let m = w.cfg.micro_batches();
        let (peak, peak_source) = if w.model.layout.head {
            let (p, source) = crate::train::flops::peak_flops(w.device, kind);
            (p * devices_in_pipeline as f64, format!("{source} × {devices_in_pipeline} device(s)"))
        } else {
            (f64::NAN, String::new())
        };
        let flops_per_token = w.cfg.model.flops_per_token();
        let (t_start, start_step) = (Instant::now(), w.step);
        let (mut train_seconds, mut last_loss, mut last_checkpoint) = (0.0, f64::NAN, None);
        let gpus = if w.device.is_cuda() { devices_in_pipeline } else { 0 };
        let mut tracker = TargetTracker::new(evaluation.target.clone(), gpus);
        let mut quality = None;
        let (mut dropped_sum, mut dropped_n) = (0.0, 0);
        let mut stopped = PipelineStop::Completed;
        while w.step < end {
            let r = w.train_step()?;
            let agreed =
                w.all_reduce(Some(tch::Tensor::from_slice(&[r.busy_seconds, r.wall_seconds, if stop.load(Ordering::SeqCst) { 1.0 } else { 0.0 }])))?;
            let agreed = Vec::<f64>::try_from(&agreed)?;
            // Σ busy / (p × mean wall), the walls summed over the p stages.
            let bubble = 1.0 - agreed[0] / agreed[1];
            train_seconds += r.wall_seconds;
            last_loss = r.loss;
            if let Some(d) = r.dropped_fraction {
                dropped_sum += d;
                dropped_n += 1;
            }
            metrics.record_progress(w.step, w.scaler.skipped_steps, r.dropped_fraction);
            metrics.gauge("frugal_trainer_pipeline_bubble_ratio", "Idle fraction of the pipeline's stages in the last step.", bubble);
            if let Some(rep) = reporter.as_mut() {
                let tps = w.cfg.tokens_per_step() as f64 / r.wall_seconds;
                let mfu = tps * flops_per_token / peak;
                metrics.record_step(&StepGauges {
                    tokens: w.step * w.cfg.tokens_per_step(),
                    loss: r.loss,
                    lr: r.lr,
                    grad_norm: r.grad_norm,
                    tokens_per_second: tps,
                    mfu,
                    loss_scale: w.scaler.scale,
                });
                rep.emit(RunEvent::Step(event::Step {
                    step: w.step,
                    tokens: w.step * w.cfg.tokens_per_step(),
                    loss: r.loss,
                    lr: r.lr,
                    grad_norm: r.grad_norm,
                    tokens_per_second: tps,
                    achieved_tflops: tps * flops_per_token / 1e12,
                    mfu,
                    aux_loss: r.aux_loss,
                    dropped_fraction: r.dropped_fraction,
                    skipped: Some(r.skipped),
                    pipeline_bubble: Some(bubble),
                    bubble_theory: Some(bubble_fraction(stages, m)),
                    stage_busy_seconds: Some(r.busy_seconds),
                    ..Default::default()
                }));
            }
            let every = w.cfg.train.checkpoint_interval;
            if let Some(root) = &root
                && (agreed[2] > 0.0 || (every > 0 && w.step % every == 0 && w.step < end))
            {
                let dir = checkpoint::save(w, root, w.cfg.keep_checkpoints)?;
                if let Some(rep) = reporter.as_mut() {
                    rep.emit(RunEvent::Checkpoint(event::Checkpoint { step: w.step, path: dir.display().to_string(), seconds: None }));
                }
                last_checkpoint = Some(dir);
            }
            if agreed[2] > 0.0 {
                stopped = PipelineStop::Terminated;
                break;
            }
            let every = w.cfg.train.eval_interval;
            if every > 0 && w.step % every == 0 && w.step < end {
                let seconds = t_start.elapsed().as_secs_f64();
                if evaluation_pass(w, &evaluation, reporter.as_mut(), &metrics, &mut tracker, seconds, &mut quality)? {
                    stopped = PipelineStop::QualityTargetReached;
                    break;
                }
            }
        }
        if stopped == PipelineStop::Completed {
            let seconds = t_start.elapsed().as_secs_f64();
            if evaluation_pass(w, &evaluation, reporter.as_mut(), &metrics, &mut tracker, seconds, &mut quality)? {
                stopped = PipelineStop::QualityTargetReached;
            }
        }
        if stopped != PipelineStop::Terminated
            && let Some(root) = &root
        {
            let dir = checkpoint::save(w, root, w.cfg.keep_checkpoints)?;
            if let Some(rep) = reporter.as_mut() {
                rep.emit(RunEvent::Checkpoint(event::Checkpoint { step: w.step, path: dir.display().to_string(), seconds: None }));
            }
            last_checkpoint = Some(dir);
        }
        if let Some(rep) = reporter.as_mut() {
            let tokens = (w.step - start_step) * w.cfg.tokens_per_step();
            let tps = if train_seconds > 0.0 { tokens as f64 / train_seconds } else { 0.0 };
            let device_hours = t_start.elapsed().as_secs_f64() / 3600.0 * gpus.max(1) as f64;
            let params = w.cfg.model.parameters();
            let data = w.data.as_ref().expect("the last stage holds the data");
            let summary = Summary {
                job: w.cfg.name.clone(),
                device: format!("{:?}", w.device),
                precision: format!("{:?}", w.cfg.train.precision),
                steps: w.step,
                tokens: w.step * w.cfg.tokens_per_step(),
                params_total: params.total,
                params_active: params.active,
                flops_per_token,
                total_flops: flops_per_token * (w.step * w.cfg.tokens_per_step()) as f64,
                seconds: t_start.elapsed().as_secs_f64(),
                tokens_per_second: tps,
                achieved_tflops: tps * flops_per_token / 1e12,
                mfu: tps * flops_per_token / peak,
                peak_source: peak_source.clone(),
                train_loss: last_loss,
                val_loss: quality.as_ref().and_then(|q: &QualityStatus| q.validation_loss),
                dropped_token_fraction: (dropped_n > 0).then(|| dropped_sum / dropped_n as f64),
                skipped_steps: w.scaler.skipped_steps,
                stopped_by: match stopped {
                    PipelineStop::Completed => "completion",
                    PipelineStop::QualityTargetReached => "quality target",
                    PipelineStop::Terminated => "signal",
                }
                .into(),
                checkpoint: last_checkpoint.as_ref().map(|p| p.display().to_string()),
                reason: format!("{stopped:?}"),
                model: crate::eval::describe_model(&w.cfg.model, &w.cfg.train.precision),
                gpus,
                device_hours,
                cost: device_hours * evaluation.price_per_gpu_hour,
                currency: evaluation.currency.clone(),
                target: tracker.outcome(w.step, end, stopped == PipelineStop::Terminated),
                quality,
                provenance: Provenance::of(&w.cfg, &evaluation, data, w.device),
            };
            rep.summary(&summary);
            summary.write_report(w.cfg.checkpoint_dir.as_deref(), report.as_deref())?;
        }
        drop(reporter);
        if let Some(status) = status {
            status.finish();
        }
        Ok(stopped)
    })?;
    // The stages agree on how the run ends; a disagreement would be a bug, and stopping wins.
    Ok([PipelineStop::Terminated, PipelineStop::QualityTargetReached].into_iter().find(|s| results.contains(s)).unwrap_or(PipelineStop::Completed))
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
        checkpoint::load(w, &dir)?;
        let quality = w.evaluate(&evaluation)?;
        Ok(quality.map(|q| {
            let data = w.data.as_ref().expect("the last stage holds the data");
            (q, w.step, Provenance::of(&w.cfg, &evaluation, data, w.device))
        }))
    })?;
    results.into_iter().flatten().next().context("the last stage returns the evaluation")
}

/// One evaluation through the pipeline (every stage at the same step); the last stage records
/// it as a single-stage run does and keeps it in `quality`. Returns whether it reached the
/// quality target, which every stage learns by an all-reduce so that all stop together.
fn evaluation_pass(
    w: &mut StageWorker,
    evaluation: &EvalConfig,
    reporter: Option<&mut Reporter>,
    metrics: &Metrics,
    tracker: &mut TargetTracker,
    seconds: f64,
    quality: &mut Option<QualityStatus>,
) -> Result<bool> {
    let mut reached = false;
    if let Some(q) = w.evaluate(evaluation)? {
        if let Some(rep) = reporter {
            reached = record_evaluation(&q, w.step, w.step * w.cfg.tokens_per_step(), seconds, rep, metrics, tracker);
        }
        *quality = Some(q);
    }
    let agreed = w.all_reduce(Some(Tensor::from_slice(&[f64::from(u8::from(reached))])))?;
    Ok(Vec::<f64>::try_from(&agreed)?[0] > 0.0)
}
