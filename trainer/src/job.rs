//! From the job's own types to a run: a `TrainingJob` manifest (what a user applies) or the
//! operator's `TrainerConfig` (what a pod is given) becomes a [`RunConfig`].

use crate::config::{DataConfig, DataSource, OptimConfig, OptimizerKind, Precision, RunConfig, Schedule, TrainConfig};
use anyhow::{Context, Result};
use frugal_api::contract::{TRAINER_CONFIG_VERSION, TrainerConfig};
use frugal_api::planner::{self, Plan, PlanOptions};
use frugal_api::v1alpha1::{self as api, TrainingJob, TrainingJobSpec};
use std::path::{Path, PathBuf};

/// A job as the trainer runs it.
pub struct Job {
    pub name: String,
    pub spec: TrainingJobSpec,
    pub plan: Plan,
}

/// Reads a `TrainingJob` manifest, or a pod's `TrainerConfig`, from a YAML file.
pub fn load(path: &Path) -> Result<Job> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse(&text).with_context(|| format!("in {}", path.display()))
}

pub fn parse(text: &str) -> Result<Job> {
    let (name, spec) = if text.contains(TRAINER_CONFIG_VERSION) {
        let cfg = TrainerConfig::from_yaml(text)?;
        (cfg.job.name, cfg.spec)
    } else {
        let job: TrainingJob = serde_yaml::from_str(text).context("not a TrainingJob manifest")?;
        (job.metadata.name.clone().unwrap_or_else(|| "local".into()), job.spec)
    };
    let plan = planner::plan(&spec, &PlanOptions::default())?;
    Ok(Job { name, spec, plan })
}

impl Job {
    /// The run this job asks for; `checkpoint_dir` overrides the spec's path.
    pub fn run_config(&self, checkpoint_dir: Option<PathBuf>) -> Result<RunConfig> {
        let spec = &self.spec;
        let t = &spec.training;
        let micro_batches = i64::from(spec.parallelism.micro_batches);
        let batch = i64::from(t.batch_size);
        let o = &t.optimizer;
        let sched = &t.schedule;
        let optim = OptimConfig {
            kind: match o.type_ {
                api::OptimizerType::AdamW => OptimizerKind::AdamW,
                api::OptimizerType::Muon => OptimizerKind::Muon,
            },
            lr: o.learning_rate,
            min_lr: o.learning_rate * sched.min_learning_rate_ratio,
            warmup_steps: sched.warmup_steps,
            schedule: match sched.type_ {
                api::ScheduleType::Cosine => Schedule::Cosine,
                api::ScheduleType::Trapezoidal => Schedule::Trapezoidal { decay_fraction: sched.cooldown_fraction },
                api::ScheduleType::Constant => Schedule::Constant,
            },
            beta1: o.beta1,
            beta2: o.beta2,
            eps: 1e-8,
            weight_decay: o.weight_decay,
            grad_clip: o.grad_clip,
            muon_lr: o.muon_learning_rate,
            muon_momentum: o.beta1,
        };
        let d = &spec.data;
        let source = match d.source.type_ {
            api::DataSourceType::Synthetic => {
                let s = d.source.synthetic.clone().unwrap_or(api::SyntheticSource { branching: 4, tokens: 1 << 20 });
                DataSource::Synthetic { branching: s.branching.into(), tokens: s.tokens }
            }
            api::DataSourceType::Text => {
                let text = d.source.text.as_ref().context("data.source.text is required with type Text")?;
                DataSource::Text { path: PathBuf::from(&text.path), tokenizer: d.tokenizer }
            }
            api::DataSourceType::Shards => {
                let shards = d.source.shards.as_ref().context("data.source.shards is required with type Shards")?;
                DataSource::Shards { path: PathBuf::from(&shards.path) }
            }
        };
        let micro_batch_size = batch / micro_batches;
        let run = RunConfig {
            name: self.name.clone(),
            model: self.plan.model.clone(),
            data: DataConfig { source, validation_fraction: d.validation_fraction, eval_sequences: i64::from(t.eval_batches) * micro_batch_size },
            train: TrainConfig {
                steps: self.plan.steps,
                batch_size: batch,
                micro_batch_size,
                precision: match t.precision {
                    api::Precision::Fp32 => Precision::Fp32,
                    api::Precision::Bf16 => Precision::Bf16,
                    api::Precision::Fp16 => Precision::Fp16,
                },
                activation_checkpointing: t.activation_checkpointing,
                optim,
                seed: t.seed as u64,
                eval_interval: t.eval_interval,
                checkpoint_interval: t.checkpoint_interval,
                log_interval: t.log_interval,
            },
            checkpoint_dir: Some(checkpoint_dir.unwrap_or_else(|| PathBuf::from(&spec.checkpoint.path))),
            keep_checkpoints: spec.checkpoint.keep.max(1) as usize,
        };
        run.validate().map_err(anyhow::Error::msg)?;
        Ok(run)
    }

    /// Zero-shot sets, quality target and the price of a GPU-hour, from the spec and its plan.
    pub fn eval_config(&self) -> crate::eval::EvalConfig {
        let p = &self.plan;
        crate::eval::EvalConfig {
            sets: self.spec.data.eval_sets.clone(),
            target: self.spec.data.quality_target.clone(),
            price_per_gpu_hour: p.price_per_gpu_hour(),
            currency: p.currency.clone(),
        }
    }

    /// Whether the job asks for a GPU.
    pub fn wants_gpu(&self) -> bool {
        self.spec.resources.device == api::Device::Gpu
    }
}
