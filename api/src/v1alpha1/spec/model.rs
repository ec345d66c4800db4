//! The model: a preset or an explicit GPT shape, and its sparsity (mixture of experts, attention
//! pattern).

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::default_one;

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
    /// A Hugging Face model directory (`config.json` and safetensors weights, a path on a
    /// mounted volume, or an `s3://<bucket>/<prefix>` URI whose objects are downloaded into the
    /// pod before training) to start from instead of random weights: continued pretraining. Its
    /// family must be one frugal computes exactly (GPT-2, GPT-NeoX), and the shape above must be
    /// its shape (the operator plans GPUs and budgets from the spec before any pod can read the
    /// volume); the trainer refuses a difference before training, naming the field and both
    /// values. A checkpoint of the job, when there is one, still wins: a restarted job resumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    #[x_kube(validation = Rule::new("!self.contains('://') || (self.matches('^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^/]+)*/?$') && !self.contains('/./') && !self.contains('/../') && !self.endsWith('/.') && !self.endsWith('/..'))")
        .message("model.init is a local path or an s3://<bucket>/<key> URI: a bucket of 3 to 63 lowercase letters, digits, dots and hyphens, then a key or prefix without empty, '.' or '..' parts (such as s3://corpora/web/part-0.jsonl); no other scheme is read"))]
    pub init: Option<String>,
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
    /// Hidden width of a dense feed-forward layer. Unset means 4 × dModel for `gelu`, and for
    /// `swiglu` 8 × dModel / 3 rounded up to a multiple of 8 (about the same parameters and
    /// FLOPs, since SwiGLU has three matrices where GELU has two).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1048576))]
    pub ffn_hidden: Option<i32>,
    /// Position encoding: `rotary` (RoPE) or `learned` absolute embeddings.
    #[serde(default)]
    pub positions: Positions,
    /// Share the token embedding with the output head.
    #[serde(default = "default_true")]
    pub tied_embeddings: bool,
    /// Biases in linear layers and layer norms (GPT-2 has them). An RMSNorm has no bias
    /// whatever this says: with `norm: rmsNorm` it adds biases to the linear layers only.
    #[serde(default)]
    pub bias: bool,
    /// The normalisation before attention, before the feed-forward layer and before the head:
    /// `layerNorm` (GPT-2: subtract the mean, divide by the standard deviation, then a gain and
    /// with `bias` a bias) or `rmsNorm` (Llama: divide by the root mean square, computed in
    /// fp32, then a gain; no mean, no bias).
    #[serde(default)]
    pub norm: Norm,
    /// The feed-forward layer, dense or each expert: `gelu` (GPT-2: d → hidden → d with a GELU
    /// between) or `swiglu` (Llama: a gate and an up projection d → hidden, the SiLU of the
    /// gate times the up projection, then a down projection hidden → d).
    #[serde(default)]
    pub feed_forward: FeedForward,
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

/// The normalisation of a block's inputs and of the head's.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Norm {
    #[default]
    #[serde(rename = "layerNorm")]
    LayerNorm,
    #[serde(rename = "rmsNorm")]
    RmsNorm,
}

/// The feed-forward layer: GPT-2's GELU MLP or Llama's SwiGLU.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FeedForward {
    #[default]
    #[serde(rename = "gelu")]
    Gelu,
    #[serde(rename = "swiglu")]
    Swiglu,
}

impl FeedForward {
    /// Matrices of shape d × hidden in one feed-forward layer (or one expert).
    pub fn matrices(self) -> i64 {
        match self {
            Self::Gelu => 2,
            Self::Swiglu => 3,
        }
    }

    /// Width of the input projection's output: the hidden layer, or for SwiGLU the gate and
    /// the up projection side by side.
    pub fn input_width(self, hidden: i64) -> i64 {
        (self.matrices() - 1) * hidden
    }

    /// The hidden width when none is given: GPT-2's 4 · d, or for SwiGLU 8 · d / 3 rounded up to
    /// a multiple of 8, the same parameters and FLOPs (3 · 8/3 · d² against 2 · 4 · d²) give or
    /// take the rounding.
    pub fn default_hidden(self, d_model: i64) -> i64 {
        match self {
            Self::Gelu => 4 * d_model,
            Self::Swiglu => ((8 * d_model + 2) / 3 + 7) / 8 * 8,
        }
    }
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
    validation = Rule::new("!self.normalizeTopK || self.topK >= 2")
        .message("model.sparsity.moe.normalizeTopK needs topK of at least 2: a single gate divided by itself is always 1 and the router would learn nothing from the loss; raise topK or leave normalizeTopK false"),
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
    /// How a token's k gates are taken from the router's softmax over all experts: false, each
    /// is the probability of its expert (Switch, GShard, DeepSeekMoE); true, they are those
    /// probabilities divided by their sum, so that they add up to 1 (Mixtral, ERNIE 4.5).
    #[serde(default, rename = "normalizeTopK")]
    pub normalize_top_k: bool,
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
