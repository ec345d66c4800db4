//! The planner: pure functions from a job's spec to what it will cost before it runs.
//!
//! Parameters (total and active), FLOPs per token, total FLOPs, memory per GPU per pipeline stage,
//! the bytes each GPU sends per step, estimated GPU-hours and cost, and warnings (among them a
//! better layout of the same GPUs, [`suggest_layout`]). The operator writes the plan into the job's
//! status and refuses jobs whose plan breaks a limit; the trainer builds the same model and splits
//! it into the same stages.

mod communication;
mod gpus;
mod layout;
mod memory;
mod model;

pub use communication::{StageCommunication, StageLinks, stage_communication};
pub use gpus::{GPU_TYPES, GpuType, gpu_type, gpu_type_names, gpu_type_of_product};
pub use layout::{Layout, fewest_gpus, suggest_layout};
pub use memory::{StageMemory, StageShape, block_activation_elements, compute_bytes, stage_memory, teacher_memory};
pub use model::{ModelError, Parameters, ResolvedAttention, ResolvedModel, ResolvedMoe, preset_shape};

use serde::{Deserialize, Serialize};

use crate::v1alpha1::{Device, DurationType, PipelineSchedule, PlanStatus, Precision, ResolvedModelStatus, TrainingJobSpec};

const GIB: f64 = (1u64 << 30) as f64;

/// Why a job cannot be planned. Each names the field to change.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The distillation teacher's model (spec.distill.teacher.model) does not resolve.
    #[error("distill.teacher.{0}")]
    Teacher(ModelError),
    #[error("resources.gpuType {0:?} is not a known GPU type; use one of: {1}")]
    UnknownGpuType(String, String),
    #[error("parallelism.pipelineStages {stages} exceeds the model's {layers} layers; every stage needs a layer: lower pipelineStages")]
    TooManyStages { stages: i64, layers: i64 },
    #[error("training.batchSize {batch} is not a multiple of parallelism.microBatches {micro}; change one of them")]
    UnevenMicroBatches { batch: i64, micro: i64 },
    #[error(
        "training.batchSize {batch} is not a multiple of parallelism.microBatches {micro} × parallelism.dataParallel {replicas} = {}: each replica's micro-batch holds batchSize / (dataParallel × microBatches) sequences; change one of them",
        micro * replicas
    )]
    UnevenReplicaBatches { batch: i64, micro: i64, replicas: i64 },
}

/// Settings of the estimate that are not part of a job.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanOptions {
    /// Model FLOPs utilization assumed for the GPU-hours estimate.
    pub assumed_mfu: f64,
    /// Price of one GPU-hour; the GPU table's list price when unset.
    pub price_per_gpu_hour: Option<f64>,
    pub currency: String,
    /// Device memory set aside for the CUDA context and library workspaces.
    pub gpu_overhead_bytes: i64,
}

impl Default for PlanOptions {
    fn default() -> Self {
        Self { assumed_mfu: 0.35, price_per_gpu_hour: None, currency: "USD".into(), gpu_overhead_bytes: 1 << 30 }
    }
}

/// One pipeline stage: its layers, parameters, FLOPs and memory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StagePlan {
    /// Blocks `start..end`.
    pub layers: std::ops::Range<i64>,
    /// Holds the token (and position) embedding.
    pub embedding: bool,
    /// Holds the final norm, output head and loss.
    pub head: bool,
    pub parameters: i64,
    pub flops_per_token: f64,
    pub memory: StageMemory,
    /// What each of its GPUs sends per step.
    pub communication: StageCommunication,
}

/// A job's plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub model: ResolvedModel,
    /// With spec.distill: the teacher's model, whose forward over every training token
    /// `flops_per_token` includes and whose weights the last stage holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher: Option<ResolvedModel>,
    pub parameters: Parameters,
    /// Training FLOPs per token: the model's forward and backward, plus a distillation teacher's
    /// forward.
    pub flops_per_token: f64,
    pub steps: i64,
    pub tokens: i64,
    pub total_flops: f64,
    /// GPUs held: one per stage of every replica (stages × replicas) on GPU jobs, none on CPU
    /// jobs.
    pub gpus: i64,
    /// Pods: replicas × stages / gpusPerPod.
    pub pods: i64,
    /// Replicas of the pipeline (parallelism.dataParallel), each on its share of every batch.
    pub replicas: i64,
    /// The stages of one replica (every replica holds the same).
    pub stages: Vec<StagePlan>,
    /// The largest stage's memory.
    pub memory_per_device_bytes: i64,
    /// The most bytes one GPU sends per step: the gradient all-reduce (and weight all-gather)
    /// across replicas plus the pipeline's activations and their gradients.
    pub communication_bytes_per_step: i64,
    /// The GPU type's memory (0 on CPU jobs).
    pub gpu_memory_bytes: i64,
    pub pipeline_bubble: f64,
    pub estimated_gpu_hours: f64,
    pub estimated_cost: f64,
    pub currency: String,
    pub warnings: Vec<String>,
}

impl Plan {
    /// What one GPU-hour of this plan costs (its estimated cost over its GPU-hours; 0 without
    /// GPU-hours).
    pub fn price_per_gpu_hour(&self) -> f64 {
        let price = self.estimated_cost / self.estimated_gpu_hours;
        if self.estimated_gpu_hours > 0.0 && price.is_finite() { price } else { 0.0 }
    }

    /// Whether every stage fits its GPU (always true on CPU jobs).
    pub fn fits(&self) -> bool {
        self.gpu_memory_bytes == 0 || self.memory_per_device_bytes <= self.gpu_memory_bytes
    }

    pub fn to_status(&self) -> PlanStatus {
        let m = &self.model;
        PlanStatus {
            model: ResolvedModelStatus {
                layers: m.layers as i32,
                d_model: m.d_model as i32,
                heads: m.heads as i32,
                seq_len: m.seq_len as i32,
                vocab_size: m.vocab_size as i32,
                ffn_hidden: m.ffn_hidden as i32,
                moe_layers: m.moe_layers() as i32,
            },
            parameters: self.parameters.total,
            active_parameters: self.parameters.active,
            flops_per_token: self.flops_per_token,
            tokens: self.tokens,
            steps: self.steps,
            total_flops: self.total_flops,
            gpus: self.gpus as i32,
            pods: self.pods as i32,
            replicas: self.replicas as i32,
            memory_per_gpu_bytes: self.memory_per_device_bytes,
            communication_bytes_per_step: self.communication_bytes_per_step,
            gpu_memory_bytes: self.gpu_memory_bytes,
            pipeline_bubble: self.pipeline_bubble,
            estimated_gpu_hours: self.estimated_gpu_hours,
            estimated_cost: self.estimated_cost,
            currency: self.currency.clone(),
            warnings: self.warnings.iter().take(16).cloned().collect(),
        }
    }
}

/// The pipeline's idle fraction: (p − 1) / (m + p − 1).
pub fn bubble_fraction(stages: i64, micro_batches: i64) -> f64 {
    (stages - 1) as f64 / (micro_batches + stages - 1) as f64
}

/// Micro-batches whose activations stage `stage` holds at its peak.
pub fn in_flight_micro_batches(schedule: PipelineSchedule, stages: i64, stage: i64, micro_batches: i64) -> i64 {
    match schedule {
        // one stage runs the plain micro-batch loop whatever the schedule
        PipelineSchedule::GPipe if stages <= 1 => micro_batches.min(1),
        PipelineSchedule::GPipe => micro_batches,
        PipelineSchedule::OneFOneB => (stages - stage).min(micro_batches),
    }
}

/// Splits blocks into `stages` contiguous, non-empty ranges minimizing the largest stage's
/// FLOPs, the head (output projection and loss) counted on the last stage.
pub fn partition_layers(model: &ResolvedModel, stages: i64) -> Vec<std::ops::Range<i64>> {
    let layers = model.layers as usize;
    let stages = (stages.max(1) as usize).min(layers.max(1));
    let cost: Vec<f64> = (0..model.layers).map(|l| model.block_flops_per_token(l)).collect();
    let mut prefix = vec![0.0; layers + 1];
    for i in 0..layers {
        prefix[i + 1] = prefix[i] + cost[i];
    }
    let head = model.head_flops_per_token();
    let span = |a: usize, b: usize| prefix[b] - prefix[a] + if b == layers { head } else { 0.0 };
    // best[s][i]: the smallest achievable max over the first i layers cut into s stages
    let mut best = vec![vec![f64::INFINITY; layers + 1]; stages + 1];
    let mut cut = vec![vec![0usize; layers + 1]; stages + 1];
    best[0][0] = 0.0;
    for s in 1..=stages {
        for i in s..=layers {
            for j in (s - 1)..i {
                let c = best[s - 1][j].max(span(j, i));
                // `<=` keeps the latest cut among ties, putting spare layers on early stages
                if c <= best[s][i] {
                    best[s][i] = c;
                    cut[s][i] = j;
                }
            }
        }
    }
    let mut ranges = Vec::with_capacity(stages);
    let mut end = layers;
    for s in (1..=stages).rev() {
        let start = cut[s][end];
        ranges.push(start as i64..end as i64);
        end = start;
    }
    ranges.reverse();
    ranges
}

/// Plans a job.
pub fn plan(spec: &TrainingJobSpec, options: &PlanOptions) -> Result<Plan, PlanError> {
    let model = ResolvedModel::from_spec(&spec.model)?;
    let stages = i64::from(spec.parallelism.pipeline_stages);
    if stages > model.layers {
        return Err(PlanError::TooManyStages { stages, layers: model.layers });
    }
    let batch = i64::from(spec.training.batch_size);
    let micro = i64::from(spec.parallelism.micro_batches);
    let replicas = i64::from(spec.parallelism.data_parallel.max(1));
    if replicas == 1 && batch % micro != 0 {
        return Err(PlanError::UnevenMicroBatches { batch, micro });
    }
    if batch % (micro * replicas) != 0 {
        return Err(PlanError::UnevenReplicaBatches { batch, micro, replicas });
    }
    let on_gpu = spec.resources.device == Device::Gpu;
    let gpu = if on_gpu {
        Some(
            gpu_type(&spec.resources.gpu_type)
                .ok_or_else(|| PlanError::UnknownGpuType(spec.resources.gpu_type.clone(), gpu_type_names().join(", ")))?,
        )
    } else {
        None
    };

    let tokens_per_step = batch * model.seq_len;
    let steps = match spec.training.duration.type_ {
        DurationType::Steps => spec.training.duration.steps.unwrap_or(0),
        DurationType::Tokens => {
            let tokens = spec.training.duration.tokens.unwrap_or(0);
            (tokens + tokens_per_step - 1) / tokens_per_step
        }
    };
    let tokens = steps * tokens_per_step;
    let parameters = model.parameters();
    let teacher = spec.distill.as_ref().map(|d| ResolvedModel::from_spec(&d.teacher.model)).transpose().map_err(PlanError::Teacher)?;
    let flops_per_token = model.flops_per_token() + distillation_flops_per_token(spec, &model, teacher.as_ref());
    let total_flops = flops_per_token * tokens as f64;

    let overhead = if on_gpu { options.gpu_overhead_bytes } else { 0 };
    let stage_plans = plan_stages(spec, &model, overhead);
    let memory_per_device_bytes = stage_plans.iter().map(|s| s.memory.total()).max().unwrap_or(0);
    let communication_bytes_per_step = stage_plans.iter().map(|s| s.communication.total()).max().unwrap_or(0);
    let bubble = bubble_fraction(stages, micro);

    let (gpus, gpu_memory_bytes, gpu_hours, price) = match gpu {
        Some(g) => {
            // GPU-seconds: every GPU computes its share of the FLOPs, and idles in the bubble;
            // replicas add GPUs, not work. Communication is taken to overlap computation.
            let peak = g.peak_tflops(spec.training.precision) * 1e12;
            let seconds = total_flops / (peak * options.assumed_mfu * (1.0 - bubble));
            let price = options.price_per_gpu_hour.unwrap_or(g.usd_per_hour);
            (spec.parallelism.ranks(), g.memory_bytes, seconds / 3600.0, price)
        }
        None => (0, 0, 0.0, 0.0),
    };

    let mut plan = Plan {
        parameters,
        flops_per_token,
        steps,
        tokens,
        total_flops,
        gpus,
        pods: replicas * stages / i64::from(spec.parallelism.gpus_per_pod),
        replicas,
        stages: stage_plans,
        memory_per_device_bytes,
        communication_bytes_per_step,
        gpu_memory_bytes,
        pipeline_bubble: bubble,
        estimated_gpu_hours: gpu_hours,
        estimated_cost: gpu_hours * price,
        currency: options.currency.clone(),
        warnings: Vec::new(),
        model,
        teacher,
    };
    plan.warnings = warnings(spec, &plan, gpu, overhead);
    Ok(plan)
}

/// FLOPs per training token of a distillation teacher (spec.distill): its forward over the
/// student's sequences, on the last stage. None with softWeight 0, where the trainer does not
/// run it.
pub fn distillation_flops_per_token(spec: &TrainingJobSpec, student: &ResolvedModel, teacher: Option<&ResolvedModel>) -> f64 {
    match (&spec.distill, teacher) {
        (Some(d), Some(t)) if d.soft_weight > 0.0 => t.forward_flops_per_token(student.seq_len),
        _ => 0.0,
    }
}

/// The stages of one replica as `spec.parallelism` lays them out; the batch divides into its
/// replicas' micro-batches.
fn plan_stages(spec: &TrainingJobSpec, model: &ResolvedModel, overhead: i64) -> Vec<StagePlan> {
    let p = &spec.parallelism;
    let micro = i64::from(p.micro_batches);
    let replicas = i64::from(p.data_parallel.max(1));
    let micro_batch_tokens = i64::from(spec.training.batch_size) / (replicas * micro) * model.seq_len;
    // plan() has refused a teacher that does not resolve
    let teacher = spec.distill.as_ref().and_then(|d| ResolvedModel::from_spec(&d.teacher.model).ok());
    let teacher_flops = distillation_flops_per_token(spec, model, teacher.as_ref());
    let ranges = partition_layers(model, p.pipeline_stages.into());
    let count = ranges.len() as i64;
    ranges
        .into_iter()
        .enumerate()
        .map(|(index, layers)| {
            let index = index as i64;
            let (first, last) = (index == 0, index == count - 1);
            let blocks: i64 = layers.clone().map(|l| model.block_parameters(l).0).sum();
            let matrices: i64 = layers.clone().map(|l| block_matrix_parameters(model, l)).sum();
            // A tied embedding is held by both ends of a pipeline; with one stage, once.
            let head_projection = if model.tied_embeddings && !first { model.vocab_size * model.d_model } else { 0 };
            let parameters =
                blocks + if first { model.embedding_parameters() } else { 0 } + if last { model.head_parameters() + head_projection } else { 0 };
            let flops_per_token: f64 = layers.clone().map(|l| model.block_flops_per_token(l)).sum::<f64>()
                + if last { model.head_flops_per_token() + teacher_flops } else { 0.0 };
            let in_flight = if count == 1 { 1 } else { in_flight_micro_batches(spec.parallelism.schedule, count, index, micro) };
            let mut memory = stage_memory(&StageShape {
                model,
                layers: layers.clone(),
                first,
                last,
                parameters,
                matrix_parameters: matrices,
                precision: spec.training.precision,
                optimizer: spec.training.optimizer.type_,
                optimizer_shards: if p.shard_optimizer_state { replicas } else { 1 },
                recompute: spec.training.activation_checkpointing,
                micro_batch_tokens,
                in_flight,
                overhead,
            });
            if let (true, Some(t)) = (last, &teacher) {
                memory.teacher = teacher_memory(t, spec.training.precision, micro_batch_tokens);
            }
            let communication = stage_communication(&StageLinks {
                parameters,
                replicas,
                shard_optimizer_state: p.shard_optimizer_state,
                first,
                last,
                micro_batches: micro,
                micro_batch_tokens,
                d_model: model.d_model,
                precision: spec.training.precision,
            });
            StagePlan { layers, embedding: first, head: last, parameters, flops_per_token, memory, communication }
        })
        .collect()
}

/// 2-D hidden weights of a block (Muon's share): attention projections, MLPs and experts.
fn block_matrix_parameters(model: &ResolvedModel, layer: i64) -> i64 {
    let d = model.d_model;
    let attention = 4 * d * d;
    let matrices = model.feed_forward.matrices();
    match (&model.moe, model.is_moe_layer(layer)) {
        (Some(moe), true) => attention + d * moe.experts + (moe.experts + moe.shared_experts) * matrices * d * moe.expert_hidden,
        _ => attention + matrices * d * model.ffn_hidden,
    }
}

fn warnings(spec: &TrainingJobSpec, plan: &Plan, gpu: Option<&GpuType>, overhead: i64) -> Vec<String> {
    let mut out = Vec::new();
    let stages = plan.stages.len() as i64;
    if let Some(g) = gpu {
        if !plan.fits() {
            // replicas that each keep all of the optimizer state could share it instead
            let shard = if plan.replicas > 1 && !spec.parallelism.shard_optimizer_state { ", set parallelism.shardOptimizerState: true" } else { "" };
            out.push(format!(
                "planned memory of {:.1} GiB per GPU exceeds the {} GPU's {:.1} GiB: set training.activationCheckpointing: true{shard}, add parallelism.pipelineStages, or use more parallelism.microBatches",
                plan.memory_per_device_bytes as f64 / GIB,
                g.name,
                g.memory_bytes as f64 / GIB
            ));
        }
        if let Some(layout) = layout::better_layout(spec, &plan.model, g, overhead) {
            out.push(layout.warning(spec, g, plan));
        }
        if spec.training.precision == Precision::Fp16 && g.bf16 {
            out.push(format!("{} computes in bf16, which needs no loss scaling: prefer training.precision: bf16", g.name));
        }
        if spec.training.precision == Precision::Bf16 && !g.bf16 {
            out.push(format!("{} has no bf16 tensor cores: use training.precision: fp16", g.name));
        }
        // GPU-hours are what an eviction throws away; a CPU job's are not billed as such.
        // A bucket keeps the steps of a job of any number of pods: each stage's pod uploads its
        // own part, and each fetches its own on resume.
        let in_bucket = spec.checkpoint.store.is_some();
        if plan.gpus > 0 && spec.checkpoint.claim_name.is_none() && !in_bucket {
            let access = if plan.pods > 1 { " (ReadWriteMany: the job has several pods)" } else { "" };
            let or_bucket = ", or name a bucket in spec.checkpoint.store";
            out.push(format!(
                "spec.checkpoint.claimName is unset: checkpoints go to an emptyDir, lost with the pod, so every eviction or preemption restarts the job from step 0 on its {} GPU(s); set spec.checkpoint.claimName to a PersistentVolumeClaim{access}{or_bucket}",
                plan.gpus
            ));
        }
    }
    if plan.pipeline_bubble > 0.2 {
        out.push(format!(
            "the pipeline idles {:.0}% of the time: raise parallelism.microBatches to at least {}",
            plan.pipeline_bubble * 100.0,
            4 * stages
        ));
    }
    if let Some(moe) = &plan.model.moe
        && moe.capacity_factor < 1.0
    {
        out.push(format!("model.sparsity.moe.capacityFactor {} is below 1: experts drop tokens even when balanced", moe.capacity_factor));
    }
    out
}

#[cfg(test)]
mod tests;
