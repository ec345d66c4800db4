//! The resolved run: what the trainer needs after a `TrainingJob` spec has been defaulted and
//! checked (see `job.rs`). It is not a second configuration language: nothing reads it from a
//! file; it is built from the job's own types, or directly in tests and benchmarks.

use serde::{Deserialize, Serialize};

/// Where the tokens come from: the data's own types, named here beside the rest of the run.
pub use crate::data::{DataConfig, DataSource};
pub use frugal_api::planner::{ResolvedAttention as AttentionPattern, ResolvedModel as ModelConfig, ResolvedMoe as MoeConfig};
pub use frugal_api::v1alpha1::{FeedForward, Norm, Positions};

/// nanoGPT's character-level CPU recipe (4 layers, 128 wide, 4 heads, context 64, GPT-2 style:
/// learned positions, biases, tied embeddings) over `vocab_size` tokens.
pub fn nano_model(vocab_size: i64) -> ModelConfig {
    ModelConfig {
        layers: 4,
        d_model: 128,
        heads: 4,
        seq_len: 64,
        vocab_size,
        ffn_hidden: 512,
        positions: Positions::Learned,
        tied_embeddings: true,
        bias: true,
        norm: Norm::LayerNorm,
        feed_forward: FeedForward::Gelu,
        moe: None,
        attention: AttentionPattern::Dense,
    }
}

/// The fine-grained MoE that replaces [`nano_model`]'s feed-forward at equal active FLOPs, as in
/// DeepSeekMoE: 16 routed experts of d = 128 hidden, top-3, plus one shared expert of d hidden
/// (3·d + d = the dense 4·d), in every layer.
pub fn nano_moe() -> MoeConfig {
    MoeConfig {
        experts: 16,
        top_k: 3,
        shared_experts: 1,
        expert_hidden: 128,
        every_n_layers: 1,
        capacity_factor: 1.25,
        load_balance_weight: 0.01,
        normalize_top_k: false,
    }
}

/// A run of `model` for `steps` steps on 200,000 synthetic tokens, `batch_size` sequences a step
/// in micro-batches of `micro_batch_size`, fp32, constant learning rate, no evaluation or
/// checkpoints of its own: what the parallelism benchmarks drive and time.
pub fn synthetic_run(name: &str, model: ModelConfig, steps: i64, batch_size: i64, micro_batch_size: i64) -> RunConfig {
    RunConfig {
        name: name.into(),
        model,
        data: DataConfig { source: DataSource::Synthetic { branching: 4, tokens: 200_000 }, validation_fraction: 0.1, eval_sequences: 8 },
        train: TrainConfig {
            steps,
            batch_size,
            micro_batch_size,
            precision: Precision::Fp32,
            activation_checkpointing: false,
            optim: OptimConfig { warmup_steps: 0, ..Default::default() },
            seed: 1,
            eval_interval: 0,
            checkpoint_interval: 0,
            log_interval: 1,
        },
        checkpoint_dir: None,
        keep_checkpoints: 1,
        checkpoint_store: None,
        distill: None,
    }
}

/// A run of `model` for `steps` steps on a text file, the nanoGPT CPU recipe's batch of 12, with
/// no evaluation or checkpoints of its own (benchmarks and profiles drive and time it).
pub fn nano_run(name: &str, model: ModelConfig, precision: Precision, steps: i64, text_file: &str) -> RunConfig {
    RunConfig {
        name: name.into(),
        model,
        data: DataConfig { source: DataSource::TextFile { path: text_file.into() }, validation_fraction: 0.1, eval_sequences: 0 },
        train: TrainConfig {
            steps,
            batch_size: 12,
            micro_batch_size: 12,
            precision,
            activation_checkpointing: false,
            optim: OptimConfig::default(),
            seed: 1337,
            eval_interval: 0,
            checkpoint_interval: 0,
            log_interval: 100,
        },
        checkpoint_dir: None,
        keep_checkpoints: 1,
        checkpoint_store: None,
        distill: None,
    }
}

/// Checks a model built directly (the planner checks the ones it resolves from a spec).
pub fn validate_model(m: &ModelConfig) -> Result<(), String> {
    if m.layers < 1 || m.d_model < 1 || m.heads < 1 || m.seq_len < 1 || m.vocab_size < 2 {
        return Err("layers, dModel, heads, seqLen and vocabSize must be positive".into());
    }
    if m.d_model % m.heads != 0 {
        return Err(format!("dModel {} is not divisible by heads {}", m.d_model, m.heads));
    }
    if m.positions == Positions::Rotary && m.head_dim() % 2 != 0 {
        return Err("rotary positions need an even head dimension".into());
    }
    if let Some(moe) = &m.moe {
        if moe.top_k < 1 || moe.top_k > moe.experts || moe.every_n_layers < 1 {
            return Err(format!("MoE: topK {} must be between 1 and experts {}, everyNLayers ≥ 1", moe.top_k, moe.experts));
        }
        if moe.capacity_factor <= 0.0 {
            return Err("MoE: capacityFactor must be positive".into());
        }
        if moe.normalize_top_k && moe.top_k < 2 {
            return Err("MoE: normalizeTopK needs topK of at least 2 (a single gate divided by itself is always 1)".into());
        }
    }
    match m.attention {
        AttentionPattern::Dense => Ok(()),
        AttentionPattern::SlidingWindow { window } if window < 1 => Err("sliding window must be at least 1".into()),
        AttentionPattern::BlockSparse { block_size, local_blocks, global_tokens } if block_size < 1 || local_blocks < 0 || global_tokens < 0 => {
            Err("block-sparse attention needs blockSize ≥ 1, localBlocks ≥ 0, globalTokens ≥ 0".into())
        }
        _ => Ok(()),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Precision {
    Fp32,
    Bf16,
    Fp16,
}

impl From<frugal_api::v1alpha1::Precision> for Precision {
    fn from(p: frugal_api::v1alpha1::Precision) -> Self {
        use frugal_api::v1alpha1::Precision as Api;
        match p {
            Api::Fp32 => Self::Fp32,
            Api::Bf16 => Self::Bf16,
            Api::Fp16 => Self::Fp16,
        }
    }
}

impl From<Precision> for frugal_api::v1alpha1::Precision {
    fn from(p: Precision) -> Self {
        match p {
            Precision::Fp32 => Self::Fp32,
            Precision::Bf16 => Self::Bf16,
            Precision::Fp16 => Self::Fp16,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OptimizerKind {
    AdamW,
    /// Newton–Schulz orthogonalised momentum on hidden matrices; AdamW on the rest.
    Muon,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Schedule {
    /// Linear warm-up, then cosine decay to `min_lr` at the last step.
    Cosine,
    /// Linear warm-up, constant, then linear decay to `min_lr` over the last `decay_fraction`.
    Trapezoidal {
        decay_fraction: f64,
    },
    Constant,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimConfig {
    pub kind: OptimizerKind,
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_steps: i64,
    pub schedule: Schedule,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Global-norm gradient clip; 0 disables it.
    pub grad_clip: f64,
    /// Muon's own learning rate and momentum for hidden matrices.
    pub muon_lr: f64,
    pub muon_momentum: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            kind: OptimizerKind::AdamW,
            lr: 1e-3,
            min_lr: 1e-4,
            warmup_steps: 100,
            schedule: Schedule::Cosine,
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.1,
            grad_clip: 1.0,
            muon_lr: 0.02,
            muon_momentum: 0.95,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub steps: i64,
    /// Sequences per optimizer step.
    pub batch_size: i64,
    /// Sequences per forward/backward; batch_size must be a multiple of it.
    pub micro_batch_size: i64,
    pub precision: Precision,
    pub activation_checkpointing: bool,
    pub optim: OptimConfig,
    pub seed: u64,
    /// Steps between validation passes (0: only at the end).
    pub eval_interval: i64,
    /// Steps between checkpoints (0: only on SIGTERM and at the end).
    pub checkpoint_interval: i64,
    /// Steps between progress reports.
    pub log_interval: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub name: String,
    pub model: ModelConfig,
    pub data: DataConfig,
    pub train: TrainConfig,
    /// Checkpoint directory; None disables checkpoints.
    pub checkpoint_dir: Option<std::path::PathBuf>,
    /// Checkpoints kept on disk (older ones are removed after a new one commits), and in the
    /// store.
    pub keep_checkpoints: usize,
    /// Object storage each committed step is uploaded to and a resume fetches from
    /// (spec.checkpoint.store); absent from the serialised run without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_store: Option<frugal_api::v1alpha1::ObjectStoreSpec>,
    /// Knowledge distillation from a trained teacher (spec.distill); absent from the serialised
    /// run (and so from its configuration hash) without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distill: Option<DistillConfig>,
}

/// Knowledge distillation: the teacher and how its soft targets enter the loss.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DistillConfig {
    /// The teacher's model (spec.distill.teacher.model, resolved by the planner).
    pub teacher: ModelConfig,
    /// A step directory of a checkpoint of it, or a checkpoint root whose newest committed step
    /// is used; either layout.
    pub checkpoint: std::path::PathBuf,
    pub loss: DistillLoss,
}

/// The distillation loss per token: (1 − w)·CE(student, data) + w·T²·KL(softmax(teacher/T) ‖
/// softmax(student/T)), w = `soft_weight`, T = `temperature` (`distill.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct DistillLoss {
    pub temperature: f64,
    pub soft_weight: f64,
}

impl DistillConfig {
    /// FLOPs per training token the teacher adds: its forward over the student's sequences,
    /// the planner's count (none with soft weight 0, where the teacher does not run).
    pub fn flops_per_token(&self, student: &ModelConfig) -> f64 {
        if self.loss.runs_teacher() { self.teacher.forward_flops_per_token(student.seq_len) } else { 0.0 }
    }
}

/// Whether `teacher` can teach `student`: a distribution over the same vocabulary, at every
/// position the student trains on. The error names the field to change.
pub fn check_teacher(student: &ModelConfig, teacher: &ModelConfig) -> Result<(), String> {
    if teacher.vocab_size != student.vocab_size {
        return Err(format!(
            "spec.distill.teacher.model has a vocabulary of {} tokens and the student's model {}: the teacher's predictions must be over the \
             student's tokens; give the teacher the student's vocabSize and tokenizer (a teacher trained on the same data.tokenizer)",
            teacher.vocab_size, student.vocab_size
        ));
    }
    if teacher.seq_len < student.seq_len {
        return Err(format!(
            "spec.distill.teacher.model reads a context of {} tokens, shorter than the student's {}: the teacher must score every position \
             the student trains on; use a teacher with seqLen ≥ {} or lower the student's model seqLen",
            teacher.seq_len, student.seq_len, student.seq_len
        ));
    }
    Ok(())
}

impl RunConfig {
    pub fn validate(&self) -> Result<(), String> {
        validate_model(&self.model)?;
        let t = &self.train;
        if t.steps < 0 || t.batch_size < 1 || t.micro_batch_size < 1 {
            return Err("steps must be ≥ 0 and batch sizes ≥ 1".into());
        }
        if t.batch_size % t.micro_batch_size != 0 {
            return Err(format!("batch size {} is not a multiple of the micro-batch size {}", t.batch_size, t.micro_batch_size));
        }
        if let Some(d) = &self.distill {
            validate_model(&d.teacher).map_err(|e| format!("spec.distill.teacher.model: {e}"))?;
            check_teacher(&self.model, &d.teacher)?;
            if !(d.loss.temperature > 0.0 && (0.0..=1.0).contains(&d.loss.soft_weight)) {
                return Err(format!(
                    "spec.distill: temperature {} must be positive and softWeight {} between 0 and 1",
                    d.loss.temperature, d.loss.soft_weight
                ));
            }
        }
        Ok(())
    }

    pub fn micro_batches(&self) -> i64 {
        self.train.batch_size / self.train.micro_batch_size
    }

    pub fn tokens_per_step(&self) -> i64 {
        self.train.batch_size * self.model.seq_len
    }
}
