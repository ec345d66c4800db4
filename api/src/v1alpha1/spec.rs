//! `TrainingJob` spec: what to train, on what data, how, on how many GPUs, within which budget.
//!
//! Choices are discriminated unions (a `type` field plus one optional member per choice) with CEL
//! rules that the member matches the type. Defaults that change training live here, in the schema,
//! so that an operator and a trainer of different versions read the same job the same way.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, EnvVar, LocalObjectReference, Toleration, Volume, VolumeMount};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::status::TrainingJobStatus;

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
    validation = Rule::new("!has(self.export) || !has(self.export.quantize) || has(self.checkpoint.claimName) || self.parallelism.pipelineStages == self.parallelism.gpusPerPod")
        .message("spec.export.quantize needs the whole final checkpoint in one pod, and this job's pipeline spans pipelineStages / gpusPerPod pods that each keep their stages on their own emptyDir: set spec.checkpoint.claimName to a ReadWriteMany claim"),
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

// ---------------------------------------------------------------------------------------------
// model

/// Which model to train.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("self.type == 'Preset' ? has(self.preset) && !has(self.custom) : has(self.custom) && !has(self.preset)")
        .message("model: with type Preset set model.preset (and not model.custom); with type Custom set model.custom (and not model.preset)"),
)]
#[serde(rename_all = "camelCase")]
pub struct ModelSpec {
    /// `Preset` for a named shape, `Custom` for an explicit one.
    #[serde(rename = "type")]
    pub type_: ModelType,
    /// A named model shape; set when type is Preset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<ModelPreset>,
    /// An explicit model shape; set when type is Custom.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom: Option<ModelShape>,
    /// Mixture-of-experts feed-forward layers and the attention pattern.
    #[serde(default)]
    pub sparsity: SparsitySpec,
}

/// How the model's shape is given.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelType {
    Preset,
    Custom,
}

/// Named model shapes. `tiny` and `small` are character-level models that train on a CPU;
/// the `gpt2-*` presets are GPT-2's shapes (learned positions, biases, 50,257-token vocabulary).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelPreset {
    #[serde(rename = "tiny")]
    Tiny,
    #[serde(rename = "small")]
    Small,
    #[serde(rename = "gpt2-124m")]
    Gpt2_124m,
    #[serde(rename = "gpt2-350m")]
    Gpt2_350m,
    #[serde(rename = "gpt2-774m")]
    Gpt2_774m,
}

/// An explicit GPT shape.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("self.dModel % self.heads == 0")
        .message("model.custom.dModel must be divisible by model.custom.heads: each head gets dModel / heads dimensions; change dModel or heads"),
    validation = Rule::new("self.positions != 'rotary' || (self.dModel / self.heads) % 2 == 0")
        .message("model.custom: rotary positions need an even head size (dModel / heads); change dModel or heads, or use positions: learned"),
)]
#[serde(rename_all = "camelCase")]
pub struct ModelShape {
    /// Transformer blocks.
    #[schemars(range(min = 1, max = 512))]
    pub layers: i32,
    /// Width of the residual stream.
    #[schemars(range(min = 8, max = 65536))]
    pub d_model: i32,
    /// Attention heads per block.
    #[schemars(range(min = 1, max = 512))]
    pub heads: i32,
    /// Context length in tokens.
    #[schemars(range(min = 8, max = 1048576))]
    pub seq_len: i32,
    /// Vocabulary size. The byte tokenizer needs at least 257 (256 bytes and end-of-text); a BPE
    /// tokenizer is trained to this size.
    #[serde(default = "default_vocab_size")]
    #[schemars(range(min = 2, max = 1048576))]
    pub vocab_size: i32,
    /// Hidden width of a dense feed-forward layer. Unset means 4 × dModel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1048576))]
    pub ffn_hidden: Option<i32>,
    /// Position encoding: `rotary` (RoPE) or `learned` absolute embeddings.
    #[serde(default)]
    pub positions: Positions,
    /// Share the token embedding with the output head.
    #[serde(default = "default_true")]
    pub tied_embeddings: bool,
    /// Biases in linear layers and layer norms (GPT-2 has them).
    #[serde(default)]
    pub bias: bool,
}

fn default_vocab_size() -> i32 {
    257
}
fn default_true() -> bool {
    true
}

/// Position encoding.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Positions {
    #[default]
    #[serde(rename = "rotary")]
    Rotary,
    #[serde(rename = "learned")]
    Learned,
}

/// Sparsity: which feed-forward layers are mixtures of experts, and which attention is computed.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SparsitySpec {
    /// Mixture-of-experts feed-forward layers. Unset means every feed-forward layer is dense.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moe: Option<MoeSpec>,
    /// The attention pattern. Dense causal unless set.
    #[serde(default)]
    pub attention: AttentionSpec,
}

/// A mixture-of-experts feed-forward layer: a learned router sends each token to its topK experts.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("self.topK <= self.experts")
        .message("model.sparsity.moe.topK must be at most model.sparsity.moe.experts: a token cannot go to more experts than exist; lower topK or add experts"),
)]
#[serde(rename_all = "camelCase")]
pub struct MoeSpec {
    /// Routed experts per MoE layer.
    #[schemars(range(min = 1, max = 1024))]
    pub experts: i32,
    /// Experts each token is sent to.
    #[serde(rename = "topK")]
    #[schemars(range(min = 1, max = 64))]
    pub top_k: i32,
    /// Experts every token always passes through, beside the routed ones (DeepSeekMoE's shared experts).
    #[serde(default)]
    #[schemars(range(min = 0, max = 16))]
    pub shared_experts: i32,
    /// Hidden width of one expert. Unset means the dense feed-forward width; a fraction of it
    /// gives fine-grained experts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1048576))]
    pub expert_hidden: Option<i32>,
    /// Every Nth block has an MoE feed-forward layer (1: all of them); the others are dense.
    #[serde(default = "default_one")]
    #[schemars(range(min = 1, max = 512))]
    pub every_n_layers: i32,
    /// Slots per expert as a multiple of its fair share of tokens (tokens × topK / experts).
    /// Tokens past an expert's capacity are dropped from it and counted.
    #[serde(default = "default_capacity_factor")]
    #[schemars(range(min = 0.1, max = 64.0))]
    // the API server checks an integer against a bound truncated to an integer (0 passes
    // `minimum: 0.1`); CEL compares the value itself
    #[x_kube(validation = Rule::new("self >= 0.1").message("model.sparsity.moe.capacityFactor must be at least 0.1: at 0 an expert takes no tokens; the usual value is 1.25"))]
    pub capacity_factor: f64,
    /// Weight of the load-balancing loss added to the language-model loss.
    #[serde(default = "default_aux_loss_weight")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub load_balance_weight: f64,
}

fn default_one() -> i32 {
    1
}
fn default_capacity_factor() -> f64 {
    1.25
}
fn default_aux_loss_weight() -> f64 {
    0.01
}

/// Which attention is computed.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(
    validation = Rule::new("(self.type == 'SlidingWindow') == has(self.slidingWindow) && (self.type == 'BlockSparse') == has(self.blockSparse)")
        .message("model.sparsity.attention: set slidingWindow exactly when type is SlidingWindow and blockSparse exactly when type is BlockSparse"),
)]
#[serde(rename_all = "camelCase")]
pub struct AttentionSpec {
    /// `Dense` causal attention, `SlidingWindow` or `BlockSparse`.
    #[serde(rename = "type", default)]
    pub type_: AttentionType,
    /// Each token attends to the previous `window` tokens, itself included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<SlidingWindow>,
    /// Each block of tokens attends to itself, `localBlocks` blocks before it, and the first
    /// `globalTokens` tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_sparse: Option<BlockSparse>,
}

/// Attention patterns.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AttentionType {
    #[default]
    Dense,
    SlidingWindow,
    BlockSparse,
}

/// Sliding-window attention.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SlidingWindow {
    /// Tokens each token attends to, itself included.
    #[schemars(range(min = 1, max = 1048576))]
    pub window: i32,
}

/// Block-sparse attention: local blocks plus a few global tokens.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BlockSparse {
    /// Tokens per block.
    #[schemars(range(min = 1, max = 65536))]
    pub block_size: i32,
    /// Preceding blocks each block attends to, besides itself.
    #[serde(default = "default_one")]
    #[schemars(range(min = 0, max = 4096))]
    pub local_blocks: i32,
    /// Leading tokens every token attends to.
    #[serde(default)]
    #[schemars(range(min = 0, max = 65536))]
    pub global_tokens: i32,
}

// ---------------------------------------------------------------------------------------------
// data

/// The corpus, its tokenizer, the validation split, evaluation sets and an optional quality target.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DataSpec {
    /// Where the tokens come from.
    pub source: DataSource,
    /// How text becomes tokens: `byte` (one token a byte) or `bpe` (trained on the corpus).
    #[serde(default)]
    pub tokenizer: Tokenizer,
    /// Fraction of the corpus held out for validation.
    #[serde(default = "default_validation_fraction")]
    #[schemars(range(min = 0.0, max = 0.5))]
    #[x_kube(validation = Rule::new("self <= 0.5").message("data.validationFraction must be at most 0.5: at least half of the corpus is for training; the usual value is 0.1"))]
    pub validation_fraction: f64,
    /// Zero-shot evaluation sets, run at each evaluation and at the end.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub eval_sets: Vec<EvalSet>,
    /// Stop once validation quality reaches this target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality_target: Option<QualityTarget>,
}

fn default_validation_fraction() -> f64 {
    0.1
}

/// Where the tokens come from.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("(has(self.synthetic) ? 1 : 0) + (has(self.text) ? 1 : 0) + (has(self.shards) ? 1 : 0) <= 1 && (self.type != 'Text' || has(self.text)) && (self.type != 'Shards' || has(self.shards)) && (self.type == 'Synthetic' || !has(self.synthetic))")
        .message("data.source: set exactly one data source, the one data.source.type names (synthetic, text or shards)"),
)]
#[serde(rename_all = "camelCase")]
pub struct DataSource {
    /// `Synthetic` (built in, needs no files), `Text` (a text file or directory) or `Shards`
    /// (pre-tokenized uint16 shards).
    #[serde(rename = "type")]
    pub type_: DataSourceType,
    /// Options of the built-in generator; type Synthetic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synthetic: Option<SyntheticSource>,
    /// A text file, or a directory of `.txt` files, each a document; type Text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<TextSource>,
    /// Pre-tokenized shards written by `frugal-trainer prepare`; type Shards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<ShardsSource>,
}

/// Kinds of data source.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataSourceType {
    Synthetic,
    Text,
    Shards,
}

/// The built-in generator: documents from a random process with learnable structure whose
/// entropy is known, so the best reachable loss is known too.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SyntheticSource {
    /// Possible next tokens after each context; the process's entropy is log2(branching) bits per
    /// token.
    #[serde(default = "default_branching")]
    #[schemars(range(min = 1, max = 256))]
    pub branching: i32,
    /// Tokens generated for the corpus.
    #[serde(default = "default_synthetic_tokens")]
    #[schemars(range(min = 1024, max = 1073741824))]
    pub tokens: i64,
}

fn default_branching() -> i32 {
    4
}
fn default_synthetic_tokens() -> i64 {
    1 << 20
}

/// A text corpus.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TextSource {
    /// Path inside the pod (mount a PVC through podTemplate.volumes) or on the local machine.
    #[schemars(length(min = 1, max = 1024))]
    pub path: String,
}

/// Pre-tokenized shards.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ShardsSource {
    /// Directory holding the `.bin` shards and the tokenizer file they were written with.
    #[schemars(length(min = 1, max = 1024))]
    pub path: String,
}

/// Tokenizers.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Tokenizer {
    #[default]
    #[serde(rename = "byte")]
    Byte,
    #[serde(rename = "bpe")]
    Bpe,
}

/// A zero-shot evaluation set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("self.type == 'Cloze' || has(self.path)")
        .message("data.evalSets[].path is required for LastWord and MultipleChoice sets: point it at the JSONL file"),
)]
#[serde(rename_all = "camelCase")]
pub struct EvalSet {
    /// Name under which the accuracy is reported.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// `LastWord` (LAMBADA-style JSONL with `text`), `MultipleChoice` (JSONL with `context`,
    /// `choices`, `label`) or `Cloze` (built from the corpus's own validation split).
    #[serde(rename = "type")]
    pub type_: EvalSetType,
    /// JSONL file; not used by Cloze.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub path: Option<String>,
    /// Examples to score; unset means all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_examples: Option<i32>,
}

/// Kinds of evaluation set.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvalSetType {
    LastWord,
    MultipleChoice,
    Cloze,
}

/// A quality to reach: the trainer stops once validation reaches it.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct QualityTarget {
    /// `validationLoss` (nats per token) or `bitsPerByte` (comparable across tokenizers).
    pub metric: QualityMetric,
    /// Stop when the metric is at or below this value.
    #[schemars(range(min = 0.0))]
    pub value: f64,
}

/// Quality metrics a target can name.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum QualityMetric {
    #[serde(rename = "validationLoss")]
    ValidationLoss,
    #[serde(rename = "bitsPerByte")]
    BitsPerByte,
}

// ---------------------------------------------------------------------------------------------
// training

/// How long and how to train.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TrainingSpec {
    /// How long to train: a number of optimizer steps or of tokens.
    #[serde(default)]
    pub duration: Duration,
    /// Sequences per optimizer step, across all micro-batches.
    #[serde(default = "default_batch_size")]
    #[schemars(range(min = 1, max = 65536))]
    pub batch_size: i32,
    /// The optimizer and its hyper-parameters.
    #[serde(default)]
    pub optimizer: OptimizerSpec,
    /// The learning-rate schedule.
    #[serde(default)]
    pub schedule: ScheduleSpec,
    /// Compute precision: `bf16` or `fp16` (weights kept in fp32) or `fp32`.
    #[serde(default)]
    pub precision: Precision,
    /// Recompute each block's activations during the backward pass instead of keeping them:
    /// less memory, about a third more compute.
    #[serde(default)]
    pub activation_checkpointing: bool,
    /// Steps between evaluations.
    #[serde(default = "default_eval_interval")]
    #[schemars(range(min = 1))]
    pub eval_interval: i64,
    /// Validation batches per evaluation.
    #[serde(default = "default_eval_batches")]
    #[schemars(range(min = 1, max = 100000))]
    pub eval_batches: i32,
    /// Steps between checkpoints.
    #[serde(default = "default_checkpoint_interval")]
    #[schemars(range(min = 1))]
    pub checkpoint_interval: i64,
    /// Steps between progress reports.
    #[serde(default = "default_log_interval")]
    #[schemars(range(min = 1))]
    pub log_interval: i64,
    /// Seed of every random choice the trainer makes: initialization, data order, routing noise.
    #[serde(default = "default_seed")]
    #[schemars(range(min = 0))]
    pub seed: i64,
}

fn default_batch_size() -> i32 {
    32
}
fn default_eval_interval() -> i64 {
    250
}
fn default_eval_batches() -> i32 {
    20
}
fn default_checkpoint_interval() -> i64 {
    500
}
fn default_log_interval() -> i64 {
    10
}
fn default_seed() -> i64 {
    1337
}

impl Default for TrainingSpec {
    fn default() -> Self {
        Self {
            duration: Duration::default(),
            batch_size: default_batch_size(),
            optimizer: OptimizerSpec::default(),
            schedule: ScheduleSpec::default(),
            precision: Precision::default(),
            activation_checkpointing: false,
            eval_interval: default_eval_interval(),
            eval_batches: default_eval_batches(),
            checkpoint_interval: default_checkpoint_interval(),
            log_interval: default_log_interval(),
            seed: default_seed(),
        }
    }
}

/// How long to train.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("self.type == 'Steps' ? has(self.steps) && !has(self.tokens) : has(self.tokens) && !has(self.steps)")
        .message("training.duration: with type Steps set steps (and not tokens); with type Tokens set tokens (and not steps)"),
)]
#[serde(rename_all = "camelCase")]
pub struct Duration {
    /// `Steps` or `Tokens`.
    #[serde(rename = "type")]
    pub type_: DurationType,
    /// Optimizer steps; type Steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub steps: Option<i64>,
    /// Training tokens, rounded up to whole steps; type Tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub tokens: Option<i64>,
}

impl Default for Duration {
    fn default() -> Self {
        Self { type_: DurationType::Steps, steps: Some(1000), tokens: None }
    }
}

/// Units of training duration.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DurationType {
    Steps,
    Tokens,
}

/// The optimizer.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("self.beta1 < 1.0 && self.beta2 < 1.0")
        .message("training.optimizer.beta1 and beta2 must be below 1.0: they are moving-average decay rates; typical values are 0.9 and 0.95"),
)]
#[serde(rename_all = "camelCase")]
pub struct OptimizerSpec {
    /// `adamw`, or `muon` (Newton–Schulz orthogonalized momentum for 2-D weights, AdamW for
    /// embeddings, head, norms and biases).
    #[serde(rename = "type", default)]
    pub type_: OptimizerType,
    /// Peak learning rate of AdamW (and of the AdamW part of Muon).
    #[serde(default = "default_lr")]
    #[schemars(range(min = 0.0, max = 10.0))]
    pub learning_rate: f64,
    /// Peak learning rate of Muon's orthogonalized updates.
    #[serde(default = "default_muon_lr")]
    #[schemars(range(min = 0.0, max = 10.0))]
    pub muon_learning_rate: f64,
    /// Decoupled weight decay, applied to 2-D weights only.
    #[serde(default = "default_weight_decay")]
    #[schemars(range(min = 0.0, max = 10.0))]
    pub weight_decay: f64,
    /// AdamW's first-moment decay (and Muon's momentum).
    #[serde(default = "default_beta1")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub beta1: f64,
    /// AdamW's second-moment decay.
    #[serde(default = "default_beta2")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub beta2: f64,
    /// Clip the global gradient norm to this value; 0 turns clipping off.
    #[serde(default = "default_grad_clip")]
    #[schemars(range(min = 0.0, max = 1000.0))]
    pub grad_clip: f64,
}

fn default_lr() -> f64 {
    1e-3
}
fn default_muon_lr() -> f64 {
    0.02
}
fn default_weight_decay() -> f64 {
    0.1
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.95
}
fn default_grad_clip() -> f64 {
    1.0
}

impl Default for OptimizerSpec {
    fn default() -> Self {
        Self {
            type_: OptimizerType::default(),
            learning_rate: default_lr(),
            muon_learning_rate: default_muon_lr(),
            weight_decay: default_weight_decay(),
            beta1: default_beta1(),
            beta2: default_beta2(),
            grad_clip: default_grad_clip(),
        }
    }
}

/// Optimizers.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OptimizerType {
    #[default]
    #[serde(rename = "adamw")]
    AdamW,
    #[serde(rename = "muon")]
    Muon,
}

/// The learning-rate schedule: a linear warm-up, then the shape.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleSpec {
    /// `cosine` decay to minLearningRateRatio, `trapezoidal` (constant, then a linear cool-down
    /// over the last cooldownFraction of training), or `constant`.
    #[serde(rename = "type", default)]
    pub type_: ScheduleType,
    /// Steps of linear warm-up from zero.
    #[serde(default = "default_warmup")]
    #[schemars(range(min = 0))]
    pub warmup_steps: i64,
    /// Final learning rate as a fraction of the peak.
    #[serde(default = "default_min_lr_ratio")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub min_learning_rate_ratio: f64,
    /// Fraction of training spent cooling down; trapezoidal only.
    #[serde(default = "default_cooldown")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub cooldown_fraction: f64,
}

fn default_warmup() -> i64 {
    100
}
fn default_min_lr_ratio() -> f64 {
    0.1
}
fn default_cooldown() -> f64 {
    0.2
}

impl Default for ScheduleSpec {
    fn default() -> Self {
        Self {
            type_: ScheduleType::default(),
            warmup_steps: default_warmup(),
            min_learning_rate_ratio: default_min_lr_ratio(),
            cooldown_fraction: default_cooldown(),
        }
    }
}

/// Schedule shapes.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ScheduleType {
    #[default]
    #[serde(rename = "cosine")]
    Cosine,
    #[serde(rename = "trapezoidal")]
    Trapezoidal,
    #[serde(rename = "constant")]
    Constant,
}

/// Compute precision. Master weights, optimizer state, norms, softmax, the router and the loss
/// stay in fp32.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    #[serde(rename = "bf16")]
    Bf16,
    #[serde(rename = "fp16")]
    Fp16,
    #[serde(rename = "fp32")]
    Fp32,
}

// ---------------------------------------------------------------------------------------------
// distillation and export

/// Knowledge distillation: the student (this job's model) learns from a teacher's soft targets.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DistillSpec {
    /// The trained model whose predictions the student learns from.
    pub teacher: TeacherSpec,
    /// Softmax temperature of teacher and student in the soft loss; above 1 it shows the student
    /// the teacher's ranking of unlikely tokens. The soft loss is scaled by temperature², so its
    /// gradient keeps its size (Hinton et al.).
    #[serde(default = "default_temperature")]
    #[schemars(range(min = 0.1, max = 100.0))]
    #[x_kube(validation = Rule::new("self >= 0.1").message("distill.temperature must be at least 0.1: the usual values are 1 to 4"))]
    pub temperature: f64,
    /// Weight of the soft (teacher) loss; the hard loss against the data gets 1 − softWeight.
    #[serde(default = "default_soft_weight")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub soft_weight: f64,
}

fn default_temperature() -> f64 {
    2.0
}
fn default_soft_weight() -> f64 {
    0.5
}

/// A teacher: its model and the checkpoint it was trained to. Its vocabulary and context must
/// be the student's.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TeacherSpec {
    /// The teacher's model, as its own job gave it (a sparse model, say).
    pub model: ModelSpec,
    /// A checkpoint of it: a step directory, or a checkpoint root whose newest complete step is
    /// used (a path in the pod: mount its claim through podTemplate.volumes).
    #[schemars(length(min = 1, max = 1024))]
    pub checkpoint: String,
}

/// What is exported after training.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ExportSpec {
    /// `int8`: 8-bit weights with a scale per output channel for every linear layer (experts
    /// included), calibrated on held-out batches; embeddings, norms and the router stay in
    /// fp32. Written as `quantized/int8.safetensors` in the final checkpoint's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantize: Option<QuantizeFormat>,
    /// Batches (of training.batchSize sequences) whose activations calibrate the scales: drawn
    /// from the training split with their own seed, never from the validation split the
    /// quantized model is measured on.
    #[serde(default = "default_calibration_batches")]
    #[schemars(range(min = 1, max = 1024))]
    pub calibration_batches: i32,
}

fn default_calibration_batches() -> i32 {
    4
}

/// Quantized formats.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantizeFormat {
    #[serde(rename = "int8")]
    Int8,
}

// ---------------------------------------------------------------------------------------------
// parallelism

/// Pipeline and data parallelism: the layers are split into stages, one GPU each, and the
/// pipeline is replicated `dataParallel` times; the job runs on pipelineStages × dataParallel GPUs.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("self.pipelineStages % self.gpusPerPod == 0")
        .message("parallelism.pipelineStages must be a multiple of parallelism.gpusPerPod: every pod runs gpusPerPod stages; change one of them"),
    validation = Rule::new("self.pipelineStages * self.dataParallel <= 256")
        .message("parallelism.pipelineStages × parallelism.dataParallel must be at most 256 GPUs: lower one of them"),
    validation = Rule::new("!self.shardOptimizerState || self.dataParallel > 1")
        .message("parallelism.shardOptimizerState needs parallelism.dataParallel of at least 2: the optimizer state is sharded across replicas; raise dataParallel or unset shardOptimizerState"),
)]
#[serde(rename_all = "camelCase")]
pub struct ParallelismSpec {
    /// Pipeline stages of each replica, one GPU each.
    #[serde(default = "default_one")]
    #[schemars(range(min = 1, max = 64))]
    pub pipeline_stages: i32,
    /// `1f1b` (less activation memory) or `gpipe`.
    #[serde(default)]
    pub schedule: PipelineSchedule,
    /// Micro-batches per step of each replica; more shrink the pipeline bubble, (stages − 1) /
    /// (microBatches + stages − 1). With one stage they accumulate gradients.
    #[serde(default = "default_one")]
    #[schemars(range(min = 1, max = 4096))]
    pub micro_batches: i32,
    /// Stages (GPUs) per pod, all of one replica; the job runs pipelineStages / gpusPerPod pods
    /// per replica.
    #[serde(default = "default_one")]
    #[schemars(range(min = 1, max = 16))]
    pub gpus_per_pod: i32,
    /// Replicas of the pipeline (data parallelism). Each trains on its own share of every batch,
    /// batchSize / dataParallel sequences in microBatches micro-batches; gradients are averaged
    /// across replicas every step. The job runs on pipelineStages × dataParallel GPUs.
    #[serde(default = "default_one")]
    #[schemars(range(min = 1, max = 64))]
    pub data_parallel: i32,
    /// Shard the optimizer state across the replicas (ZeRO stage 1): each replica keeps and
    /// updates 1 / dataParallel of it and the updated weights are gathered after every step.
    /// Needs dataParallel ≥ 2.
    #[serde(default)]
    pub shard_optimizer_state: bool,
}

impl Default for ParallelismSpec {
    fn default() -> Self {
        Self {
            pipeline_stages: 1,
            schedule: PipelineSchedule::default(),
            micro_batches: 1,
            gpus_per_pod: 1,
            data_parallel: 1,
            shard_optimizer_state: false,
        }
    }
}

impl ParallelismSpec {
    /// GPUs (or, on CPU jobs, ranks) the job runs on: stages × replicas.
    pub fn ranks(&self) -> i64 {
        i64::from(self.pipeline_stages.max(1)) * i64::from(self.data_parallel.max(1))
    }
}

/// Pipeline schedules.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PipelineSchedule {
    #[default]
    #[serde(rename = "1f1b")]
    OneFOneB,
    #[serde(rename = "gpipe")]
    GPipe,
}

// ---------------------------------------------------------------------------------------------
// resources

/// What each pod asks of a node.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResourcesSpec {
    /// `GPU`, or `CPU` to train on the pods' CPUs (no GPUs requested; for small models and tests).
    #[serde(default)]
    pub device: Device,
    /// The extended resource a GPU is requested as.
    #[serde(default = "default_gpu_resource")]
    #[schemars(length(min = 1, max = 253))]
    pub gpu_resource_name: String,
    /// GPU model, for memory limits and pricing: one of frugal's GPU table
    /// (nvidia-h100-80gb, nvidia-h200-141gb, nvidia-a100-80gb, nvidia-a100-40gb, nvidia-l40s-48gb,
    /// nvidia-l4-24gb, nvidia-a10g-24gb, nvidia-t4-16gb).
    #[serde(default = "default_gpu_type")]
    #[schemars(length(min = 1, max = 63))]
    pub gpu_type: String,
    /// CPU request and limit of each pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(QUANTITY_RULE).message("resources.cpu must be a Kubernetes quantity of at least 0, such as 2 or 500m: a number, or a number with a suffix (m, Ki, Mi, Gi, k, M, G)"))]
    pub cpu: Option<Quantity>,
    /// Memory request and limit of each pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(QUANTITY_RULE).message("resources.memory must be a Kubernetes quantity of at least 0, such as 8Gi or 512Mi: a number, or a number with a suffix (m, Ki, Mi, Gi, k, M, G)"))]
    pub memory: Option<Quantity>,
    /// Nodes the pods may run on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(length(max = 32))]
    pub node_selector: BTreeMap<String, String>,
    /// Taints the pods tolerate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub tolerations: Vec<Toleration>,
    /// PriorityClass of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub priority_class_name: Option<String>,
}

fn default_gpu_resource() -> String {
    "nvidia.com/gpu".into()
}
fn default_gpu_type() -> String {
    "nvidia-h100-80gb".into()
}

impl Default for ResourcesSpec {
    fn default() -> Self {
        Self {
            device: Device::default(),
            gpu_resource_name: default_gpu_resource(),
            gpu_type: default_gpu_type(),
            cpu: None,
            memory: None,
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            priority_class_name: None,
        }
    }
}

/// Devices a job trains on.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Device {
    #[default]
    #[serde(rename = "GPU")]
    Gpu,
    #[serde(rename = "CPU")]
    Cpu,
}

// ---------------------------------------------------------------------------------------------
// budget, run policy, checkpoint, pod overrides

/// Limits the job must stay within. All may change while the job runs.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BudgetSpec {
    /// Most GPUs the job may hold at once. The operator also applies its own ceiling (4 unless
    /// configured otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1").message("budget.maxGpus must be at least 1: a job needs a GPU to run; remove maxGpus or raise it"))]
    pub max_gpus: Option<i32>,
    /// Most GPU-hours the job may spend; it stops with a checkpoint when they are spent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub max_gpu_hours: Option<f64>,
    /// Most the job may cost, in the TrainingBudget's currency (USD without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub max_cost: Option<f64>,
    /// A TrainingBudget in the same namespace whose limits this job also counts against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub budget_ref: Option<String>,
}

/// Restarts, deadlines, clean-up and suspension, with Kubernetes Job's field names.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RunPolicy {
    /// Failed attempts allowed before the job is Failed. Node disruptions, preemptions and
    /// Kueue evictions do not count.
    #[serde(default = "default_backoff_limit")]
    #[schemars(range(min = 0, max = 100))]
    pub backoff_limit: i32,
    /// Seconds the job may run, counted from its first start; then it is Failed with reason
    /// DeadlineExceeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub active_deadline_seconds: Option<i64>,
    /// Seconds after the job finishes when its pods and other children are deleted. The
    /// TrainingJob itself stays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i32>,
    /// Seconds without a progress report after which an attempt counts as stalled and is
    /// restarted.
    #[serde(default = "default_progress_deadline")]
    #[schemars(range(min = 30))]
    pub progress_deadline_seconds: i64,
    /// Seconds an attempt's pods may take to start (scheduled, images pulled, containers
    /// running) before the attempt is stopped and counted as a failure, its GPUs released. Until
    /// then a pod that cannot be scheduled or whose image cannot be pulled is named in the Ready
    /// condition.
    #[serde(default = "default_startup_deadline")]
    #[schemars(range(min = 10))]
    pub startup_deadline_seconds: i64,
    /// Stop the job's pods (each writes a checkpoint) and keep them stopped until false again.
    #[serde(default)]
    pub suspend: bool,
}

fn default_backoff_limit() -> i32 {
    3
}
fn default_progress_deadline() -> i64 {
    1800
}
fn default_startup_deadline() -> i64 {
    600
}

impl Default for RunPolicy {
    fn default() -> Self {
        Self {
            backoff_limit: default_backoff_limit(),
            active_deadline_seconds: None,
            ttl_seconds_after_finished: None,
            progress_deadline_seconds: default_progress_deadline(),
            startup_deadline_seconds: default_startup_deadline(),
            suspend: false,
        }
    }
}

/// Where checkpoints go.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointSpec {
    /// A PersistentVolumeClaim mounted at `path`. A job of several pods needs a ReadWriteMany
    /// claim; unset means an emptyDir, lost with the pod (no resume across attempts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub claim_name: Option<String>,
    /// Directory the checkpoints are written under (where the claim is mounted).
    #[serde(default = "default_checkpoint_path")]
    #[schemars(length(min = 1, max = 1024))]
    pub path: String,
    /// With a claim: the directory under `path` this job's steps go to. Unset, it is
    /// `<namespace>/<job name>`, so that jobs sharing a claim never prune or resume each other's
    /// steps. Name another job's (`<namespace>/<its name>`, or what it set here) to start from
    /// its checkpoint; `.` writes to the claim's root. Relative, without `..`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self == '.' || (!self.startsWith('/') && !self.split('/').exists(s, s == '..' || s == '' || s == '.'))")
        .message("checkpoint.subPath is a relative directory under checkpoint.path (such as team/lm), without '..', '.' or empty parts; '.' alone means the claim's root"))]
    pub sub_path: Option<String>,
    /// Complete checkpoints kept; older ones are deleted.
    #[serde(default = "default_keep")]
    #[schemars(range(min = 1, max = 100))]
    pub keep: i32,
}

fn default_checkpoint_path() -> String {
    "/checkpoints".into()
}

impl CheckpointSpec {
    /// The directory the trainer of job `name` in `namespace` writes its steps to: `path`
    /// itself without a claim (an emptyDir is the pod's own), else `path/subPath`, by default
    /// `path/<namespace>/<name>`.
    pub fn directory(&self, namespace: &str, name: &str) -> String {
        let root = self.path.trim_end_matches('/');
        match (&self.claim_name, self.sub_path.as_deref()) {
            (None, _) | (Some(_), Some(".")) => self.path.clone(),
            (Some(_), Some(sub)) => format!("{root}/{sub}"),
            (Some(_), None) => format!("{root}/{namespace}/{name}"),
        }
    }
}
fn default_keep() -> i32 {
    2
}

impl Default for CheckpointSpec {
    fn default() -> Self {
        Self { claim_name: None, path: default_checkpoint_path(), sub_path: None, keep: default_keep() }
    }
}

/// The CEL rule of a quantity that may also be written as a plain integer (int-or-string).
const QUANTITY_RULE: &str = "isQuantity(string(self)) && !quantity(string(self)).isLessThan(quantity('0'))";

/// [`pod_security::SECURITY_ANNOTATION_PREFIXES`] as a CEL list.
const SECURITY_ANNOTATION_PREFIXES: &str =
    "['container.apparmor.security.beta.kubernetes.io/', 'seccomp.security.alpha.kubernetes.io/', 'container.seccomp.security.alpha.kubernetes.io/']";

/// Additions to every pod of the job.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodOverrides {
    /// Extra pod labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    pub labels: BTreeMap<String, String>,
    /// Extra pod annotations. AppArmor and seccomp annotations are refused: the trainer runs
    /// under the runtime's default profiles, as Pod Security `restricted` requires.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    #[x_kube(validation = Rule::new("self.all(k, !SECURITY_ANNOTATION_PREFIXES.exists(p, k.startsWith(p)))".replace("SECURITY_ANNOTATION_PREFIXES", SECURITY_ANNOTATION_PREFIXES))
        .message("podTemplate.annotations may not set AppArmor or seccomp profiles (container.apparmor.security.beta.kubernetes.io/, seccomp.security.alpha.kubernetes.io/): the trainer runs under the runtime's default profiles (Pod Security restricted); remove the annotation"))]
    pub annotations: BTreeMap<String, String>,
    /// Extra environment variables of the trainer container. `NVIDIA_*` and
    /// `CUDA_VISIBLE_DEVICES` are reserved: which GPUs a pod sees is the device plugin's to say
    /// (a CPU job sees none), so a job cannot reach GPUs its budget does not count.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.all(e, !e.name.startsWith('NVIDIA_') && e.name != 'CUDA_VISIBLE_DEVICES')")
        .message("podTemplate.env may not set NVIDIA_* or CUDA_VISIBLE_DEVICES: the GPUs a pod sees are the ones the device plugin gave it and its budget counts (resources.device and parallelism.gpusPerPod); remove the variable"))]
    pub env: Vec<EnvVar>,
    /// Extra volumes, such as a dataset PersistentVolumeClaim. Only the sources Pod Security
    /// `restricted` allows: persistentVolumeClaim, configMap, secret, emptyDir, projected,
    /// ephemeral, csi and downwardAPI.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), schema_with = "super::pod_security::volumes_schema")]
    pub volumes: Vec<Volume>,
    /// Where the extra volumes are mounted in the trainer container: without mount propagation,
    /// and with sub-paths that stay inside their volume.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), schema_with = "super::pod_security::volume_mounts_schema")]
    pub volume_mounts: Vec<VolumeMount>,
    /// Secrets for pulling the image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// Node affinity and pod (anti-)affinity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Size of the in-memory `/dev/shm`; unset means 1Gi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(QUANTITY_RULE).message("podTemplate.shmSize must be a Kubernetes quantity of at least 0, such as 1Gi or 512Mi: a number, or a number with a suffix (m, Ki, Mi, Gi, k, M, G)"))]
    pub shm_size: Option<Quantity>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claims_checkpoints_go_to_the_jobs_own_directory_unless_it_names_one() {
        let mut c = CheckpointSpec::default();
        // an emptyDir is the pod's own
        assert_eq!(c.directory("ml", "lm"), "/checkpoints");
        c.claim_name = Some("ckpt".into());
        assert_eq!(c.directory("ml", "lm"), "/checkpoints/ml/lm");
        c.sub_path = Some("ml/teacher".into());
        assert_eq!(c.directory("ml", "lm"), "/checkpoints/ml/teacher");
        c.sub_path = Some(".".into());
        assert_eq!(c.directory("ml", "lm"), "/checkpoints");
        c.path = "/ckpt/".into();
        c.sub_path = None;
        assert_eq!(c.directory("ml", "lm"), "/ckpt/ml/lm");
    }
}
