//! A job's model, resolved from its preset or explicit shape, and its parameter counts.

use serde::{Deserialize, Serialize};

use crate::v1alpha1::{AttentionSpec, AttentionType, FeedForward, ModelPreset, ModelShape, ModelSpec, ModelType, MoeSpec, Norm, Positions};

/// Why a model cannot be resolved.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    #[error("model.{0} is required when model.type is {1}")]
    MissingMember(&'static str, &'static str),
    #[error("model: {0}")]
    Invalid(String),
}

/// The mixture-of-experts shape of a resolved model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedMoe {
    pub experts: i64,
    pub top_k: i64,
    pub shared_experts: i64,
    /// Hidden width of one expert (routed or shared).
    pub expert_hidden: i64,
    pub every_n_layers: i64,
    pub capacity_factor: f64,
    pub load_balance_weight: f64,
    /// The k gates of a token divided by their sum (absent from the serialised form when false,
    /// so the configurations written before it existed read and hash as they did).
    #[serde(default, skip_serializing_if = "is_false")]
    pub normalize_top_k: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_default<T: Default + PartialEq>(t: &T) -> bool {
    *t == T::default()
}

/// The attention actually computed.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "type")]
pub enum ResolvedAttention {
    Dense,
    SlidingWindow { window: i64 },
    BlockSparse { block_size: i64, local_blocks: i64, global_tokens: i64 },
}

/// A model with every shape decision made. The trainer builds exactly this and its parameter
/// count equals [`ResolvedModel::parameters`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedModel {
    pub layers: i64,
    pub d_model: i64,
    pub heads: i64,
    pub seq_len: i64,
    pub vocab_size: i64,
    /// Dense feed-forward hidden width (GELU MLP: d → ffn_hidden → d; SwiGLU: gate and up
    /// d → ffn_hidden, down ffn_hidden → d).
    pub ffn_hidden: i64,
    pub positions: Positions,
    pub tied_embeddings: bool,
    /// Biases in linear layers and LayerNorms (an RMSNorm has none).
    pub bias: bool,
    /// LayerNorm or RMSNorm. This and `feed_forward` are absent from the serialised form at
    /// their defaults (GPT-2's block), so configurations written before they existed read and
    /// hash as they did.
    #[serde(default, skip_serializing_if = "is_default")]
    pub norm: Norm,
    /// GELU MLP or SwiGLU, in dense layers and experts alike.
    #[serde(default, skip_serializing_if = "is_default")]
    pub feed_forward: FeedForward,
    pub moe: Option<ResolvedMoe>,
    pub attention: ResolvedAttention,
}

/// Parameter counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Parameters {
    /// Every parameter, a tied embedding counted once.
    pub total: i64,
    /// Parameters a token passes through: routed experts it is not sent to excluded.
    pub active: i64,
    /// Token and position embeddings (lookups, not matrix products).
    pub embedding: i64,
}

impl ResolvedModel {
    /// Resolves a preset or explicit shape and the sparsity options.
    pub fn from_spec(spec: &ModelSpec) -> Result<Self, ModelError> {
        let shape = match spec.type_ {
            ModelType::Preset => preset_shape(spec.preset.ok_or(ModelError::MissingMember("preset", "Preset"))?),
            ModelType::Custom => spec.custom.clone().ok_or(ModelError::MissingMember("custom", "Custom"))?,
        };
        let d = i64::from(shape.d_model);
        let ffn_hidden = shape.ffn_hidden.map_or(shape.feed_forward.default_hidden(d), i64::from);
        let model = Self {
            layers: shape.layers.into(),
            d_model: d,
            heads: shape.heads.into(),
            seq_len: shape.seq_len.into(),
            vocab_size: shape.vocab_size.into(),
            ffn_hidden,
            positions: shape.positions,
            tied_embeddings: shape.tied_embeddings,
            bias: shape.bias,
            norm: shape.norm,
            feed_forward: shape.feed_forward,
            moe: spec.sparsity.moe.as_ref().map(|m| resolve_moe(m, ffn_hidden)),
            attention: resolve_attention(&spec.sparsity.attention),
        };
        model.check()?;
        Ok(model)
    }

    /// The checks CEL makes at `kubectl apply`, repeated for shapes that come from presets.
    fn check(&self) -> Result<(), ModelError> {
        if self.d_model % self.heads != 0 {
            return Err(ModelError::Invalid(format!("dModel {} is not divisible by heads {}", self.d_model, self.heads)));
        }
        if self.positions == Positions::Rotary && self.head_dim() % 2 != 0 {
            return Err(ModelError::Invalid(format!("rotary positions need an even head size, got {}", self.head_dim())));
        }
        if let Some(moe) = &self.moe
            && moe.top_k > moe.experts
        {
            return Err(ModelError::Invalid(format!("sparsity.moe.topK {} exceeds sparsity.moe.experts {}", moe.top_k, moe.experts)));
        }
        if let Some(moe) = &self.moe
            && moe.normalize_top_k
            && moe.top_k < 2
        {
            return Err(ModelError::Invalid(
                "sparsity.moe.normalizeTopK needs topK of at least 2: a single gate divided by itself is always 1".into(),
            ));
        }
        match self.attention {
            ResolvedAttention::BlockSparse { block_size, .. } if self.seq_len % block_size != 0 => Err(ModelError::Invalid(format!(
                "sparsity.attention.blockSparse.blockSize {block_size} does not divide the context length {}",
                self.seq_len
            ))),
            ResolvedAttention::SlidingWindow { window } if window > self.seq_len => {
                Err(ModelError::Invalid(format!("sparsity.attention.slidingWindow.window {window} exceeds the context length {}", self.seq_len)))
            }
            _ => Ok(()),
        }
    }

    pub fn head_dim(&self) -> i64 {
        self.d_model / self.heads
    }

    /// Whether block `layer` (0-based) has a mixture-of-experts feed-forward layer: the last
    /// of every `everyNLayers` blocks does.
    pub fn is_moe_layer(&self, layer: i64) -> bool {
        self.moe.as_ref().is_some_and(|m| (layer + 1) % m.every_n_layers == 0)
    }

    pub fn moe_layers(&self) -> i64 {
        (0..self.layers).filter(|&l| self.is_moe_layer(l)).count() as i64
    }

    fn bias_of(&self, width: i64) -> i64 {
        if self.bias { width } else { 0 }
    }

    /// A norm: a gain, and a LayerNorm's bias when the model has biases.
    pub fn norm_parameters(&self) -> i64 {
        match self.norm {
            Norm::LayerNorm => self.d_model + self.bias_of(self.d_model),
            Norm::RmsNorm => self.d_model,
        }
    }

    /// Attention of one block: the fused query-key-value projection and the output projection.
    pub fn attention_parameters(&self) -> i64 {
        let d = self.d_model;
        d * 3 * d + self.bias_of(3 * d) + d * d + self.bias_of(d)
    }

    /// A feed-forward layer (or expert) d → hidden → d: the input projection (SwiGLU's gate and
    /// up side by side) and the output projection.
    pub fn mlp_parameters(&self, hidden: i64) -> i64 {
        let d = self.d_model;
        let input = self.feed_forward.input_width(hidden);
        d * input + self.bias_of(input) + hidden * d + self.bias_of(d)
    }

    /// Parameters of block `layer`: (total, active).
    pub fn block_parameters(&self, layer: i64) -> (i64, i64) {
        let common = 2 * self.norm_parameters() + self.attention_parameters();
        match (&self.moe, self.is_moe_layer(layer)) {
            (Some(moe), true) => {
                let expert = self.mlp_parameters(moe.expert_hidden);
                let router = self.d_model * moe.experts;
                let shared = moe.shared_experts * expert;
                (common + router + shared + moe.experts * expert, common + router + shared + moe.top_k * expert)
            }
            _ => {
                let mlp = self.mlp_parameters(self.ffn_hidden);
                (common + mlp, common + mlp)
            }
        }
    }

    /// Token embedding, plus the position table when positions are learned.
    pub fn embedding_parameters(&self) -> i64 {
        let positions = match self.positions {
            Positions::Learned => self.seq_len * self.d_model,
            Positions::Rotary => 0,
        };
        self.vocab_size * self.d_model + positions
    }

    /// The final norm, plus the output projection when it is not tied to the embedding.
    pub fn head_parameters(&self) -> i64 {
        let projection = if self.tied_embeddings { 0 } else { self.vocab_size * self.d_model };
        self.norm_parameters() + projection
    }

    pub fn parameters(&self) -> Parameters {
        let (blocks_total, blocks_active) = (0..self.layers).map(|l| self.block_parameters(l)).fold((0, 0), |(t, a), (bt, ba)| (t + bt, a + ba));
        let embedding = self.embedding_parameters();
        let head = self.head_parameters();
        Parameters { total: embedding + blocks_total + head, active: embedding + blocks_active + head, embedding }
    }

    /// Keys each query attends to, averaged over the positions of a full context: the attention
    /// the trainer computes (causal kernels skip the upper triangle; sparse patterns skip more).
    pub fn mean_attended_keys(&self) -> f64 {
        let t = self.seq_len;
        let keys: i64 = (0..t).map(|p| self.attended_keys(p)).sum();
        keys as f64 / t as f64
    }

    /// Keys the query at position `p` attends to.
    pub fn attended_keys(&self, p: i64) -> i64 {
        match self.attention {
            ResolvedAttention::Dense => p + 1,
            ResolvedAttention::SlidingWindow { window } => (p + 1).min(window),
            ResolvedAttention::BlockSparse { block_size, local_blocks, global_tokens } => {
                let start = ((p / block_size - local_blocks).max(0)) * block_size;
                (p - start + 1) + global_tokens.min(start)
            }
        }
    }

    /// Weights of block `layer` that a token is multiplied by (biases and gains left out).
    pub fn block_matmul_parameters(&self, layer: i64) -> i64 {
        let d = self.d_model;
        let attention = 4 * d * d;
        // d × hidden matrices of one feed-forward layer or expert: 2 for GELU, 3 for SwiGLU
        let matrices = self.feed_forward.matrices();
        match (&self.moe, self.is_moe_layer(layer)) {
            (Some(moe), true) => attention + d * moe.experts + (moe.top_k + moe.shared_experts) * matrices * d * moe.expert_hidden,
            _ => attention + matrices * d * self.ffn_hidden,
        }
    }

    /// Training FLOPs per token of block `layer` (forward and backward): 6 per matmul weight
    /// the token meets, plus the attention scores and weighted sum (per head, 2 matmuls of
    /// head_dim × keys: 4·d·keys forward, twice that backward).
    pub fn block_flops_per_token(&self, layer: i64) -> f64 {
        6.0 * self.block_matmul_parameters(layer) as f64 + 12.0 * self.d_model as f64 * self.mean_attended_keys()
    }

    /// Training FLOPs per token of the output projection (tied or not, it is a matmul).
    pub fn head_flops_per_token(&self) -> f64 {
        6.0 * (self.vocab_size * self.d_model) as f64
    }

    /// Training FLOPs per token of the whole model.
    pub fn flops_per_token(&self) -> f64 {
        (0..self.layers).map(|l| self.block_flops_per_token(l)).sum::<f64>() + self.head_flops_per_token()
    }

    /// Forward FLOPs per token of the whole model over sequences of `seq_len` tokens (a
    /// distillation teacher scores the student's sequences): 2 per matmul weight the token meets,
    /// the head included, plus 4 · d · (keys attended) per layer.
    pub fn forward_flops_per_token(&self, seq_len: i64) -> f64 {
        let at = Self { seq_len, ..self.clone() };
        let attention = 4.0 * self.d_model as f64 * at.mean_attended_keys();
        (0..self.layers).map(|l| 2.0 * self.block_matmul_parameters(l) as f64 + attention).sum::<f64>()
            + 2.0 * (self.vocab_size * self.d_model) as f64
    }
}

fn resolve_moe(moe: &MoeSpec, ffn_hidden: i64) -> ResolvedMoe {
    ResolvedMoe {
        experts: moe.experts.into(),
        top_k: moe.top_k.into(),
        shared_experts: moe.shared_experts.into(),
        expert_hidden: moe.expert_hidden.map_or(ffn_hidden, i64::from),
        every_n_layers: moe.every_n_layers.into(),
        capacity_factor: moe.capacity_factor,
        load_balance_weight: moe.load_balance_weight,
        normalize_top_k: moe.normalize_top_k,
    }
}

fn resolve_attention(spec: &AttentionSpec) -> ResolvedAttention {
    match (spec.type_, &spec.sliding_window, &spec.block_sparse) {
        (AttentionType::SlidingWindow, Some(w), _) => ResolvedAttention::SlidingWindow { window: w.window.into() },
        (AttentionType::BlockSparse, _, Some(b)) => ResolvedAttention::BlockSparse {
            block_size: b.block_size.into(),
            local_blocks: b.local_blocks.into(),
            global_tokens: b.global_tokens.into(),
        },
        _ => ResolvedAttention::Dense,
    }
}

/// The shapes behind the presets, all with GPT-2's block (LayerNorm, GELU MLP).
pub fn preset_shape(preset: ModelPreset) -> ModelShape {
    let (layers, d_model, heads, seq_len, vocab_size, positions, bias) = match preset {
        // nanoGPT's CPU recipe, byte-level.
        ModelPreset::Tiny => (4, 128, 4, 64, 257, Positions::Rotary, false),
        // nanoGPT's Shakespeare character model, byte-level.
        ModelPreset::Small => (6, 384, 6, 256, 257, Positions::Rotary, false),
        ModelPreset::Gpt2_124m => (12, 768, 12, 1024, 50257, Positions::Learned, true),
        ModelPreset::Gpt2_350m => (24, 1024, 16, 1024, 50257, Positions::Learned, true),
        ModelPreset::Gpt2_774m => (36, 1280, 20, 1024, 50257, Positions::Learned, true),
    };
    ModelShape {
        layers,
        d_model,
        heads,
        seq_len,
        vocab_size,
        ffn_hidden: None,
        positions,
        tied_embeddings: true,
        bias,
        norm: Norm::LayerNorm,
        feed_forward: FeedForward::Gelu,
    }
}
