//! `TrainingJob` spec: what to train, on what data, how, on how many GPUs, within which budget.
//!
//! Choices are discriminated unions (a `type` field plus one optional member per choice) with CEL
//! rules that the member matches the type. Defaults that change training live here, in the schema,
//! so that an operator and a trainer of different versions read the same job the same way.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::status::TrainingJobStatus;

mod checkpoint;
mod data;
mod distill;
mod export;
mod inputs;
mod limits;
mod model;
mod parallelism;
mod pod_template;
mod resources;
mod run_policy;
mod storage;
mod training;

pub use checkpoint::*;
pub use data::*;
pub use distill::*;
pub use export::*;
pub use inputs::*;
pub use limits::*;
pub use model::*;
pub use parallelism::*;
pub use pod_template::*;
pub use resources::*;
pub use run_policy::*;
pub use storage::*;
pub use training::*;

/// The longest TrainingJob name: children append suffixes such as `-a12-3` (attempt and pod index)
/// and a pod's hostname must stay within 63 characters.
pub const MAX_JOB_NAME_LENGTH: usize = 40;

/// A training run of a GPT-style language model, planned against a GPU budget and run as pods.
// kube's printcolumn(...) arguments repeat their keys, which clippy reads as duplicated attributes
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "frugal.dev",
    version = "v1alpha1",
    kind = "TrainingJob",
    namespaced,
    status = "TrainingJobStatus",
    shortname = "tj",
    category = "frugal",
    doc = "A training run of a GPT-style language model, planned against a GPU budget and run as pods.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase", description = "Where the job is in its lifecycle"),
    printcolumn(name = "GPUs", type_ = "integer", json_path = ".status.plan.gpus", description = "GPUs the job runs on"),
    printcolumn(name = "Step", type_ = "integer", json_path = ".status.progress.step", description = "Last optimizer step reported"),
    printcolumn(name = "Done%", type_ = "integer", json_path = ".status.progress.percent", description = "Percent of the steps the run is expected to take"),
    printcolumn(name = "ETA", type_ = "string", json_path = ".status.progress.estimatedCompletionTime", description = "When the run is expected to end, at its measured step rate"),
    printcolumn(name = "Loss", type_ = "number", json_path = ".status.progress.loss", description = "Last training loss reported"),
    printcolumn(name = "Perplexity", type_ = "number", json_path = ".status.quality.perplexity", description = "Validation perplexity"),
    printcolumn(name = "GPU-Hours", type_ = "number", json_path = ".status.cost.gpuHours", description = "GPU-hours spent so far"),
    printcolumn(name = "Cost", type_ = "number", json_path = ".status.cost.cost", description = "Cost spent so far"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    // `kubectl get tj -o wide` adds the plan's estimate beside what was spent, and why the job is where it is
    printcolumn(name = "Est-GPU-Hours", type_ = "number", json_path = ".status.plan.estimatedGpuHours", description = "GPU-hours the plan estimates for the whole run", priority = 1),
    printcolumn(name = "Est-Cost", type_ = "number", json_path = ".status.plan.estimatedCost", description = "Cost the plan estimates for the whole run", priority = 1),
    printcolumn(name = "Currency", type_ = "string", json_path = ".status.plan.currency", description = "Currency of the cost figures", priority = 1),
    printcolumn(name = "Int8-BPB", type_ = "number", json_path = ".status.quality.quantized.bitsPerByte", description = "Validation bits per byte of the int8 export (spec.export.quantize)", priority = 1),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason", description = "Why the job is in its phase", priority = 1),
    validation = Rule::new("self.metadata.name.size() <= 40 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')")
        .message("metadata.name must be a DNS-1035 label of at most 40 characters (lower-case letters, digits and '-', starting with a letter): children add suffixes to it; choose a shorter name"),
)]
#[x_kube(
    validation = Rule::new("!has(self.model.custom) || self.parallelism.pipelineStages <= self.model.custom.layers")
        .message("parallelism.pipelineStages must be at most model.custom.layers: every stage needs at least one layer; lower pipelineStages or add layers"),
    validation = Rule::new("self.training.batchSize % (self.parallelism.microBatches * self.parallelism.dataParallel) == 0")
        .message("training.batchSize must be a multiple of parallelism.microBatches × parallelism.dataParallel: each replica's micro-batch holds batchSize / (dataParallel × microBatches) sequences; change one of them"),
    validation = Rule::new("!has(self.model.sparsity.attention.blockSparse) || !has(self.model.custom) || self.model.custom.seqLen % self.model.sparsity.attention.blockSparse.blockSize == 0")
        .message("model.sparsity.attention.blockSparse.blockSize must divide model.custom.seqLen: attention is computed block by block; pick a block size that divides the context length"),
    validation = Rule::new("!has(self.export) || !has(self.export.quantize) || has(self.checkpoint.claimName) || has(self.checkpoint.store) || self.parallelism.pipelineStages == self.parallelism.gpusPerPod")
        .message("spec.export.quantize needs the whole final checkpoint in one pod, and this job's pipeline spans pipelineStages / gpusPerPod pods that each keep their stages on their own emptyDir: set spec.checkpoint.claimName to a ReadWriteMany claim, or spec.checkpoint.store (the final step is then taken whole from the bucket)"),
    validation = Rule::new("!has(self.export) || !has(self.export.huggingFace) || !self.export.huggingFace || has(self.checkpoint.claimName) || has(self.checkpoint.store) || self.parallelism.pipelineStages == self.parallelism.gpusPerPod")
        .message("spec.export.huggingFace needs the whole final checkpoint in one pod, and this job's pipeline spans pipelineStages / gpusPerPod pods that each keep their stages on their own emptyDir: set spec.checkpoint.claimName to a ReadWriteMany claim, or spec.checkpoint.store (the final step is then taken whole from the bucket)"),
    validation = Rule::new("!has(self.export) || !has(self.export.huggingFace) || !self.export.huggingFace || !has(self.model.sparsity.moe) || (has(self.model.custom) && self.model.custom.norm == 'rmsNorm' && self.model.custom.feedForward == 'swiglu' && !self.model.custom.bias && self.model.sparsity.moe.normalizeTopK)")
        .message("spec.export.huggingFace: the Hugging Face family for mixture-of-experts layers (ERNIE 4.5 MoE) has Llama's block without biases and divides a token's k gates by their sum; set model.custom.norm: rmsNorm, feedForward: swiglu, bias: false and model.sparsity.moe.normalizeTopK: true, or remove the export"),
    validation = Rule::new("!has(self.export) || !has(self.export.huggingFace) || !self.export.huggingFace || self.model.sparsity.attention.type == 'Dense'")
        .message("spec.export.huggingFace: the Hugging Face families attend densely, so a model.sparsity.attention pattern would be served as another model; use type Dense or remove the export"),
    validation = Rule::new("!has(self.export) || !has(self.export.store) || !has(self.export.store.credentialsSecret) || (has(self.checkpoint.store) && has(self.checkpoint.store.credentialsSecret) && self.checkpoint.store.credentialsSecret == self.export.store.credentialsSecret)")
        .message("spec.export.store.credentialsSecret: the pods have one set of store keys, the checkpoint store's; remove it, or name the same Secret in spec.checkpoint.store.credentialsSecret"),
    validation = Rule::new("!has(self.model.sparsity.attention.slidingWindow) || !has(self.model.custom) || self.model.sparsity.attention.slidingWindow.window <= self.model.custom.seqLen")
        .message("model.sparsity.attention.slidingWindow.window must be at most model.custom.seqLen: a wider window is dense attention; use type Dense or a smaller window"),
)]
#[serde(rename_all = "camelCase")]
pub struct TrainingJobSpec {
    /// The model to train: a named preset or an explicit shape, and its sparsity.
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.model is immutable: a running job resumes checkpoints of the model it started with; delete and recreate the job to change it"))]
    pub model: ModelSpec,
    /// The corpus the model learns from, how it is tokenized, and how quality is measured.
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.data is immutable: a running job resumes checkpoints of the data it started with; delete and recreate the job to change it"))]
    pub data: DataSpec,
    /// How long to train and how: batch, optimizer, schedule, precision, intervals, seed.
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.training is immutable: a running job resumes checkpoints of the training run it started with; delete and recreate the job to change it"))]
    #[serde(default)]
    pub training: TrainingSpec,
    /// How the model is split across GPUs: pipeline stages, schedule, micro-batches and replicas.
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.parallelism is immutable: a running job resumes checkpoints of the pipeline layout it started with; delete and recreate the job to change it"))]
    #[serde(default)]
    pub parallelism: ParallelismSpec,
    /// What each pod asks of a node: device, GPU type, CPU, memory and placement.
    #[serde(default)]
    pub resources: ResourcesSpec,
    /// Limits the job must stay within: GPUs at once, GPU-hours, cost, and a shared TrainingBudget.
    #[serde(default)]
    pub budget: BudgetSpec,
    /// Restarts, deadlines, clean-up and suspension.
    #[serde(default)]
    pub run_policy: RunPolicy,
    /// Where checkpoints are written and how many are kept.
    #[serde(default)]
    pub checkpoint: CheckpointSpec,
    /// The trainer's container image. Empty means the image the operator is configured with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub image: Option<String>,
    /// Additions to every pod of the job: labels, annotations, env, volumes (a dataset PVC, say),
    /// affinity and image pull secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<PodOverrides>,
    /// Train this job's model as a student of a trained teacher (knowledge distillation): the
    /// loss mixes the teacher's softened next-token distribution with the data's hard targets.
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.distill is immutable: a running job resumes checkpoints of the run it started with; delete and recreate the job to change it"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distill: Option<DistillSpec>,
    /// What is made of the trained model once training completes: an 8-bit quantized copy,
    /// evaluated like the original, its price in quality reported in status.quality.quantized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export: Option<ExportSpec>,
}

/// Default of the counts that are one unless set (stages, replicas, micro-batches, ...).
fn default_one() -> i32 {
    1
}

/// The CEL rule of a quantity that may also be written as a plain integer (int-or-string).
const QUANTITY_RULE: &str = "isQuantity(string(self)) && !quantity(string(self)).isLessThan(quantity('0'))";
