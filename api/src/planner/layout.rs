//! A better layout of the same GPUs: fewer pipeline stages and more replicas of them, when every
//! stage still fits its GPU, idle less in the pipeline bubble.

use serde::{Deserialize, Serialize};

use super::{GIB, GpuType, Plan, PlanOptions, ResolvedModel, bubble_fraction, gpu_type, plan_stages};
use crate::v1alpha1::{Device, ParallelismSpec, TrainingJobSpec};

/// The schema's bound on parallelism.dataParallel.
const MAX_DATA_PARALLEL: i32 = 64;

/// A layout of a job's GPUs: the parallelism fields, and the memory and bubble they give.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Layout {
    pub pipeline_stages: i32,
    pub data_parallel: i32,
    /// Micro-batches of each replica's step.
    pub micro_batches: i32,
    pub gpus_per_pod: i32,
    /// The largest stage's memory laid out so, in bytes.
    pub memory_per_device_bytes: i64,
    /// The pipeline's idle fraction laid out so.
    pub pipeline_bubble: f64,
}

impl Layout {
    /// GPUs of the layout: stages × replicas.
    pub fn gpus(&self) -> i64 {
        i64::from(self.pipeline_stages) * i64::from(self.data_parallel)
    }

    /// The fields to set to lay `from` out so, those that differ:
    /// `parallelism.pipelineStages: 2 and parallelism.dataParallel: 2`.
    pub fn changes(&self, from: &ParallelismSpec) -> String {
        let fields = [
            ("pipelineStages", self.pipeline_stages, from.pipeline_stages),
            ("dataParallel", self.data_parallel, from.data_parallel),
            ("microBatches", self.micro_batches, from.micro_batches),
            ("gpusPerPod", self.gpus_per_pod, from.gpus_per_pod),
        ];
        let set: Vec<String> = fields.iter().filter(|(_, new, old)| new != old).map(|(name, new, _)| format!("parallelism.{name}: {new}")).collect();
        match set.split_last() {
            Some((last, [])) => last.clone(),
            Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
            None => String::new(),
        }
    }

    /// `spec` with this layout.
    pub fn apply(&self, spec: &TrainingJobSpec) -> TrainingJobSpec {
        let mut laid_out = spec.clone();
        let p = &mut laid_out.parallelism;
        (p.pipeline_stages, p.data_parallel, p.micro_batches, p.gpus_per_pod) =
            (self.pipeline_stages, self.data_parallel, self.micro_batches, self.gpus_per_pod);
        laid_out
    }

    /// The planner's warning that suggests it instead of `plan`'s layout.
    pub(super) fn warning(&self, spec: &TrainingJobSpec, gpu: &GpuType, plan: &Plan) -> String {
        let (memory, capacity) = (self.memory_per_device_bytes as f64 / GIB, gpu.memory_bytes as f64 / GIB);
        let fits = if self.pipeline_stages == 1 {
            format!("the model fits on one {} ({memory:.1} GiB of {capacity:.1} GiB)", gpu.name)
        } else {
            format!("the model fits in {} stages per replica ({memory:.1} GiB of the {}'s {capacity:.1} GiB)", self.pipeline_stages, gpu.name)
        };
        let bubble =
            if self.pipeline_stages == 1 { "no pipeline bubble".to_string() } else { format!("a {:.0}% bubble", self.pipeline_bubble * 100.0) };
        format!(
            "{fits}: set {} to use the same {} GPUs with {bubble} instead of {:.0}%",
            self.changes(&spec.parallelism),
            self.gpus(),
            plan.pipeline_bubble * 100.0
        )
    }
}

/// The layout of the same GPUs with the fewest pipeline stages whose every stage fits its GPU and
/// which idles less than the job's, if there is one: stages S' < S that divide the job's S × R GPUs
/// into R' = S × R / S' replicas, each replica's step in as many of its micro-batches as still
/// divide the batch (at most the job's), and gpusPerPod kept or cut to divide S'. `None` for CPU
/// jobs, one-stage jobs and specs that do not plan.
pub fn suggest_layout(spec: &TrainingJobSpec, options: &PlanOptions) -> Option<Layout> {
    if spec.resources.device != Device::Gpu {
        return None;
    }
    let gpu = gpu_type(&spec.resources.gpu_type)?;
    let model = ResolvedModel::from_spec(&spec.model).ok()?;
    better_layout(spec, &model, gpu, options.gpu_overhead_bytes)
}

pub(super) fn better_layout(spec: &TrainingJobSpec, model: &ResolvedModel, gpu: &GpuType, overhead: i64) -> Option<Layout> {
    let p = &spec.parallelism;
    let (stages, replicas, micro) = (p.pipeline_stages.max(1), p.data_parallel.max(1), p.micro_batches.max(1));
    let gpus = stages * replicas;
    let batch = spec.training.batch_size;
    let current = bubble_fraction(stages.into(), micro.into());
    (1..stages).filter(|s| gpus % s == 0 && gpus / s <= MAX_DATA_PARALLEL).find_map(|s| {
        let r = gpus / s;
        let m = (1..=micro).rev().find(|m| batch % (m * r) == 0)?;
        let pipeline_bubble = bubble_fraction(s.into(), m.into());
        if pipeline_bubble >= current {
            return None;
        }
        let mut layout = Layout {
            pipeline_stages: s,
            data_parallel: r,
            micro_batches: m,
            gpus_per_pod: gcd(s, p.gpus_per_pod.max(1)),
            memory_per_device_bytes: 0,
            pipeline_bubble,
        };
        let stages = plan_stages(&layout.apply(spec), model, overhead);
        layout.memory_per_device_bytes = stages.iter().map(|s| s.memory.total()).max().unwrap_or(0);
        (layout.memory_per_device_bytes <= gpu.memory_bytes).then_some(layout)
    })
}

/// The fewest GPUs that hold `spec`'s model, as it is written, on `gpu`: one replica of the
/// fewest pipeline stages whose every stage fits the GPU's memory, with the spec's batch,
/// micro-batches, precision, recomputation and schedule. `None` when no stage count up to the
/// model's layers (and the schema's 64) fits, or for a model that does not resolve.
pub fn fewest_gpus(spec: &TrainingJobSpec, gpu: &GpuType, options: &PlanOptions) -> Option<Layout> {
    let model = ResolvedModel::from_spec(&spec.model).ok()?;
    let micro = spec.parallelism.micro_batches.max(1);
    (1..=model.layers.min(64) as i32).find_map(|s| {
        let mut layout =
            Layout { pipeline_stages: s, data_parallel: 1, micro_batches: micro, gpus_per_pod: 1, memory_per_device_bytes: 0, pipeline_bubble: 0.0 };
        let mut laid_out = layout.apply(spec);
        laid_out.parallelism.shard_optimizer_state = false;
        let stages = plan_stages(&laid_out, &model, options.gpu_overhead_bytes);
        layout.memory_per_device_bytes = stages.iter().map(|s| s.memory.total()).max().unwrap_or(0);
        layout.pipeline_bubble = bubble_fraction(s.into(), micro.into());
        (layout.memory_per_device_bytes <= gpu.memory_bytes).then_some(layout)
    })
}

fn gcd(a: i32, b: i32) -> i32 {
    if b == 0 { a } else { gcd(b, a % b) }
}
