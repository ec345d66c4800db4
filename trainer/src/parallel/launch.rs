//! Training a job: its workers in this process (every stage of every replica on a laptop or in
//! a pod that holds them all; one worker when the job has one stage and one replica), or this
//! pod's stages joined to their neighbours over TCP as the pod↔trainer contract describes. Each
//! worker drives the run loop (`run.rs`): the workers agree every step on whether to stop
//! (SIGTERM reaches pods at different moments), checkpoint together, and the last stage of the
//! first replica reports: on its output and, in a pod, into the TrainingJob's status (progress,
//! tokens/s, cost, quality), and ends with the run's summary. Every process serves Prometheus
//! metrics when given a port: progress and the pipeline bubble from each, the step's loss,
//! throughput and MFU from the process holding the last stage.

use super::layout::layouts;
use super::process::ProcessStages;
use super::schedule::ScheduleKind;
use super::threads::{Replicas, run_in_process};
use super::transport::DEFAULT_TIMEOUT;
use super::worker::Worker;
use crate::config::RunConfig;
use crate::job::Job;
use crate::parallel::run::{JobRun, Stop, train_job};
use crate::report::Provenance;
use anyhow::{Context, Result};
use frugal_api::contract::{PodEnv, TrainerConfig, env, paths};
use frugal_api::v1alpha1::QualityStatus;
use std::path::Path;
use tch::Device;

/// The job's replicas of the pipeline.
pub fn replicas(job: &Job) -> Replicas {
    let p = &job.spec.parallelism;
    Replicas { count: p.data_parallel.max(1) as usize, shard_optimizer: p.shard_optimizer_state && p.data_parallel > 1 }
}

/// This process's stages: from the pod's environment and configuration when a pipelined or
/// replicated job runs in a pod (`JOB_COMPLETION_INDEX` set), else every stage of every replica
/// of the job (one worker for a job of one stage and one replica).
pub fn process_stages(job: &Job, cfg: &RunConfig) -> Result<ProcessStages> {
    let stages = job.spec.parallelism.pipeline_stages.max(1) as usize;
    let in_pod = std::env::var_os(env::POD_INDEX).is_some();
    if !in_pod || !job.pipelined() {
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

/// Trains `cfg` with this process's workers, resuming from the newest intact checkpoint,
/// reporting to `run` from the stage with the head.
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
    let init = job.spec.model.init.clone().map(std::path::PathBuf::from);
    let results = process.run(&cfg, schedule, &devices, move |w: &mut Worker| {
        w.devices_in_run = devices_in_pipeline;
        w.evaluation = run.evaluation.clone();
        // the model.init weights, unless a checkpoint of the run is resumed over them
        if let Some(init) = &init {
            crate::hf::load_init(&mut w.params, &w.cfg.model, init).with_context(|| format!("spec.model.init {}", init.display()))?;
        }
        train_job(w, &run)
    })?;
    // The stages agree on how the run ends; a disagreement would be a bug, and stopping wins.
    Ok([Stop::Terminated, Stop::QualityTargetReached].into_iter().find(|s| results.contains(s)).unwrap_or(Stop::Completed))
}

/// The devices a process's stages run on, round-robin: every CUDA device when `device` is one.
fn devices_for(device: Device) -> Vec<Device> {
    match device {
        Device::Cuda(_) => (0..tch::Cuda::device_count().max(1) as usize).map(Device::Cuda).collect(),
        d => vec![d],
    }
}

/// Evaluates a job's checkpoint `dir` (either layout, written by any stage count) with all of
/// the job's stages in this process (`frugal-trainer eval`): the quality, the checkpoint's step
/// and the provenance.
pub fn evaluate_checkpoint(job: &Job, cfg: &RunConfig, dir: &Path, device: Device) -> Result<(QualityStatus, i64, Provenance)> {
    let stages = job.spec.parallelism.pipeline_stages.max(1) as usize;
    let schedule = ScheduleKind::from(job.spec.parallelism.schedule);
    let (dir, evaluation) = (dir.to_path_buf(), job.eval_config());
    let results = run_in_process(cfg, &layouts(&cfg.model, stages), schedule, &devices_for(device), move |w: &mut Worker| {
        w.evaluation = evaluation.clone();
        w.restore(&dir)?;
        let quality = w.evaluate()?;
        Ok(quality.map(|q| (q, w.step, w.provenance())))
    })?;
    results.into_iter().flatten().next().context("the last stage returns the evaluation")
}
