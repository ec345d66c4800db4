//! Which `transformers` architecture computes exactly what a frugal model computes, its
//! `config.json`, and the weights in its names and layouts.
//!
//! | frugal model | family | why it is exact |
//! |---|---|---|
//! | learned positions, LayerNorm, GELU | GPT-2 (`GPT2LMHeadModel`) | same block; its Conv1D weights are ours transposed; absent biases are zeros |
//! | rotary positions, LayerNorm, GELU | GPT-NeoX (`GPTNeoXForCausalLM`) | sequential residual, full rotary in the half-split convention; its fused projection is head-major |
//! | rotary positions, RMSNorm, SwiGLU (Llama's block) | Llama (`LlamaForCausalLM`) | the same block; our fused projections split into q, k, v and gate, up |
//! | Llama's block with mixture-of-experts layers whose k gates are renormalised | ERNIE 4.5 MoE (`Ernie4_5_MoeForCausalLM`) | softmax over all experts in fp32, top-k, gates divided by their sum; shared experts summed ungated as one MLP; every Nth layer; its rotary pairs are interleaved, so query and key rows are permuted |
//!
//! Everything else is refused with the spec field to change: a sparse attention pattern (every
//! family attends densely), mixture-of-experts layers of GELU experts or with raw softmax gates
//! (no family computes them), and mixed blocks.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use tch::{Kind, Tensor};

use crate::config::{AttentionPattern, FeedForward, ModelConfig, MoeConfig, Norm, Positions};

/// Tensors by name.
pub type Tensors = BTreeMap<String, Tensor>;

/// A `transformers` model family frugal reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Gpt2,
    GptNeox,
    Llama,
    Ernie45Moe,
}

/// A model that no family reproduces exactly: the spec field to change, and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("spec.{field}: {why}")]
pub struct Unsupported {
    pub field: &'static str,
    pub why: String,
}

/// LayerNorm's epsilon in frugal's GPT-2 block.
const LAYER_NORM_EPS: f64 = 1e-5;
/// RMSNorm's epsilon in frugal's Llama block.
const RMS_NORM_EPS: f64 = 1e-6;
/// Rotary base frequency of frugal's rotary positions.
const ROPE_THETA: f64 = 10_000.0;
/// ERNIE's floor under the sum of a token's k gates: below anything k softmax probabilities of
/// the top experts can sum to, so it never acts.
const MOE_NORM_MIN: f64 = 1e-12;

impl Family {
    /// The family that computes `m` exactly.
    pub fn of(m: &ModelConfig) -> Result<Self, Unsupported> {
        if m.attention != AttentionPattern::Dense {
            return Err(Unsupported {
                field: "model.sparsity.attention",
                why: format!(
                    "the Hugging Face families attend densely, so the {:?} pattern would be served as another model; use dense attention to export",
                    m.attention
                ),
            });
        }
        match (m.norm, m.feed_forward, m.positions) {
            (Norm::LayerNorm, FeedForward::Gelu, positions) => {
                if m.moe.is_some() {
                    return Err(Unsupported {
                        field: "model.custom.feedForward",
                        why: "no Hugging Face family computes mixture-of-experts layers of GELU experts; use Llama's block (norm: rmsNorm, feedForward: swiglu) with normalizeTopK".into(),
                    });
                }
                Ok(if positions == Positions::Learned { Self::Gpt2 } else { Self::GptNeox })
            }
            (Norm::RmsNorm, FeedForward::Swiglu, Positions::Rotary) => match &m.moe {
                None => Ok(Self::Llama),
                Some(moe) if moe.normalize_top_k && !m.bias => Ok(Self::Ernie45Moe),
                Some(moe) if moe.normalize_top_k => Err(Unsupported {
                    field: "model.custom.bias",
                    why: "ERNIE 4.5 MoE's routed experts have no biases and its head has one; set bias: false".into(),
                }),
                Some(_) => Err(Unsupported {
                    field: "model.sparsity.moe.normalizeTopK",
                    why: "the Hugging Face families with shared experts ungated divide a token's k gates by their sum; set normalizeTopK: true"
                        .into(),
                }),
            },
            (Norm::RmsNorm, FeedForward::Swiglu, Positions::Learned) => Err(Unsupported {
                field: "model.custom.positions",
                why: "the Llama-block families use rotary positions; set positions: rotary".into(),
            }),
            (Norm::RmsNorm, FeedForward::Gelu, _) | (Norm::LayerNorm, FeedForward::Swiglu, _) => Err(Unsupported {
                field: "model.custom.norm",
                why: "no Hugging Face family mixes the blocks: use layerNorm with gelu (GPT-2, GPT-NeoX) or rmsNorm with swiglu (Llama)".into(),
            }),
        }
    }

    /// The class `config.json` names.
    pub fn architecture(self) -> &'static str {
        match self {
            Self::Gpt2 => "GPT2LMHeadModel",
            Self::GptNeox => "GPTNeoXForCausalLM",
            Self::Llama => "LlamaForCausalLM",
            Self::Ernie45Moe => "Ernie4_5_MoeForCausalLM",
        }
    }

    pub fn model_type(self) -> &'static str {
        match self {
            Self::Gpt2 => "gpt2",
            Self::GptNeox => "gpt_neox",
            Self::Llama => "llama",
            Self::Ernie45Moe => "ernie4_5_moe",
        }
    }

    /// `config.json` for `m`; `eos` is the end-of-text token's id when the model has a tokenizer.
    pub fn config(self, m: &ModelConfig, eos: Option<i64>) -> Value {
        let mut c = match self {
            Self::Gpt2 => json!({
                "n_layer": m.layers,
                "n_embd": m.d_model,
                "n_head": m.heads,
                "n_positions": m.seq_len,
                "n_inner": m.ffn_hidden,
                "vocab_size": m.vocab_size,
                "activation_function": "gelu",
                "layer_norm_epsilon": LAYER_NORM_EPS,
                "resid_pdrop": 0.0,
                "embd_pdrop": 0.0,
                "attn_pdrop": 0.0,
                "scale_attn_weights": true,
                "scale_attn_by_inverse_layer_idx": false,
                "reorder_and_upcast_attn": false,
            }),
            Self::GptNeox => json!({
                "num_hidden_layers": m.layers,
                "hidden_size": m.d_model,
                "num_attention_heads": m.heads,
                "intermediate_size": m.ffn_hidden,
                "max_position_embeddings": m.seq_len,
                "vocab_size": m.vocab_size,
                "hidden_act": "gelu",
                "layer_norm_eps": LAYER_NORM_EPS,
                "use_parallel_residual": false,
                "attention_bias": true,
                "rope_parameters": {"rope_type": "default", "rope_theta": ROPE_THETA, "partial_rotary_factor": 1.0},
                "rotary_pct": 1.0,
                "rotary_emb_base": ROPE_THETA,
                "attention_dropout": 0.0,
                "hidden_dropout": 0.0,
                "classifier_dropout": 0.0,
            }),
            Self::Llama => json!({
                "num_hidden_layers": m.layers,
                "hidden_size": m.d_model,
                "num_attention_heads": m.heads,
                "num_key_value_heads": m.heads,
                "head_dim": m.head_dim(),
                "intermediate_size": m.ffn_hidden,
                "max_position_embeddings": m.seq_len,
                "vocab_size": m.vocab_size,
                "hidden_act": "silu",
                "rms_norm_eps": RMS_NORM_EPS,
                "attention_bias": m.bias,
                "mlp_bias": m.bias,
                "rope_parameters": {"rope_type": "default", "rope_theta": ROPE_THETA},
                "attention_dropout": 0.0,
                "pretraining_tp": 1,
            }),
            Self::Ernie45Moe => {
                let moe = m.moe.as_ref().expect("an MoE model");
                json!({
                    "num_hidden_layers": m.layers,
                    "hidden_size": m.d_model,
                    "num_attention_heads": m.heads,
                    "num_key_value_heads": m.heads,
                    "head_dim": m.head_dim(),
                    "intermediate_size": m.ffn_hidden,
                    "max_position_embeddings": m.seq_len,
                    "vocab_size": m.vocab_size,
                    "hidden_act": "silu",
                    "rms_norm_eps": RMS_NORM_EPS,
                    "use_bias": m.bias,
                    "rope_parameters": {"rope_type": "default", "rope_theta": ROPE_THETA},
                    "moe_num_experts": moe.experts,
                    "moe_k": moe.top_k,
                    "moe_intermediate_size": moe.expert_hidden,
                    "moe_num_shared_experts": moe.shared_experts,
                    "moe_layer_start_index": 0,
                    "moe_layer_end_index": m.layers - 1,
                    "moe_layer_interval": moe.every_n_layers,
                    "moe_norm_min": MOE_NORM_MIN,
                    "output_router_logits": false,
                })
            }
        };
        let o = c.as_object_mut().expect("an object");
        o.insert("architectures".into(), json!([self.architecture()]));
        o.insert("model_type".into(), json!(self.model_type()));
        o.insert("tie_word_embeddings".into(), json!(m.tied_embeddings));
        o.insert("dtype".into(), json!("float32"));
        o.insert("use_cache".into(), json!(true));
        if let Some(eos) = eos {
            o.insert("bos_token_id".into(), json!(eos));
            o.insert("eos_token_id".into(), json!(eos));
        }
        c
    }

    /// The family and model a `config.json` describes; refused, naming the field, where frugal
    /// would compute something else.
    pub fn from_config(c: &Value) -> Result<(Self, ModelConfig)> {
        let model_type = c.get("model_type").and_then(Value::as_str).context("config.json has no model_type")?;
        let int = |key: &str| -> Result<i64> { c.get(key).and_then(Value::as_i64).with_context(|| format!("config.json has no integer {key}")) };
        let float = |key: &str, default: f64| c.get(key).and_then(Value::as_f64).unwrap_or(default);
        let string = |key: &str, default: &'static str| c.get(key).and_then(Value::as_str).unwrap_or(default).to_string();
        let tied = c.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(true);
        let close = |key: &str, got: f64, want: f64| -> Result<()> {
            ensure!((got - want).abs() <= want * 1e-9, "config.json {key} is {got}; frugal's model computes with {want}");
            Ok(())
        };
        match model_type {
            "gpt2" => {
                let act = string("activation_function", "gelu_new");
                ensure!(act == "gelu", "config.json activation_function is {act:?}; frugal's GPT-2 block computes the exact GELU (\"gelu\")");
                close("layer_norm_epsilon", float("layer_norm_epsilon", LAYER_NORM_EPS), LAYER_NORM_EPS)?;
                for (key, default) in [("scale_attn_by_inverse_layer_idx", false), ("reorder_and_upcast_attn", false)] {
                    let v = c.get(key).and_then(Value::as_bool).unwrap_or(default);
                    ensure!(!v, "config.json {key} is true; frugal's attention does not scale or upcast so");
                }
                let d = int("n_embd")?;
                let m = ModelConfig {
                    layers: int("n_layer")?,
                    d_model: d,
                    heads: int("n_head")?,
                    seq_len: int("n_positions")?,
                    vocab_size: int("vocab_size")?,
                    ffn_hidden: c.get("n_inner").and_then(Value::as_i64).unwrap_or(4 * d),
                    positions: Positions::Learned,
                    tied_embeddings: tied,
                    bias: true,
                    norm: Norm::LayerNorm,
                    feed_forward: FeedForward::Gelu,
                    moe: None,
                    attention: AttentionPattern::Dense,
                };
                Ok((Self::Gpt2, m))
            }
            "gpt_neox" => {
                let act = string("hidden_act", "gelu");
                ensure!(act == "gelu", "config.json hidden_act is {act:?}; frugal's block computes the exact GELU (\"gelu\")");
                let parallel = c.get("use_parallel_residual").and_then(Value::as_bool).unwrap_or(true);
                ensure!(!parallel, "config.json use_parallel_residual is true; frugal's block adds attention and feed-forward in sequence");
                let rope = c.get("rope_parameters");
                let rope_f = |key: &str, legacy: &str, default: f64| {
                    rope.and_then(|r| r.get(key)).and_then(Value::as_f64).or_else(|| c.get(legacy).and_then(Value::as_f64)).unwrap_or(default)
                };
                close("rotary fraction (rope_parameters.partial_rotary_factor)", rope_f("partial_rotary_factor", "rotary_pct", 0.25), 1.0)?;
                close("rope_theta", rope_f("rope_theta", "rotary_emb_base", ROPE_THETA), ROPE_THETA)?;
                if let Some(kind) = rope.and_then(|r| r.get("rope_type")).and_then(Value::as_str) {
                    ensure!(
                        kind == "default",
                        "config.json rope_parameters.rope_type is {kind:?}; frugal's rotary positions are unscaled (\"default\")"
                    );
                }
                close("layer_norm_eps", float("layer_norm_eps", LAYER_NORM_EPS), LAYER_NORM_EPS)?;
                let m = ModelConfig {
                    layers: int("num_hidden_layers")?,
                    d_model: int("hidden_size")?,
                    heads: int("num_attention_heads")?,
                    seq_len: int("max_position_embeddings")?,
                    vocab_size: int("vocab_size")?,
                    ffn_hidden: int("intermediate_size")?,
                    positions: Positions::Rotary,
                    tied_embeddings: c.get("tie_word_embeddings").and_then(Value::as_bool).unwrap_or(false),
                    bias: true,
                    norm: Norm::LayerNorm,
                    feed_forward: FeedForward::Gelu,
                    moe: None,
                    attention: AttentionPattern::Dense,
                };
                Ok((Self::GptNeox, m))
            }
            "llama" | "ernie4_5_moe" => {
                let act = string("hidden_act", "silu");
                ensure!(act == "silu", "config.json hidden_act is {act:?}; frugal's SwiGLU gates with SiLU (\"silu\")");
                close("rms_norm_eps", float("rms_norm_eps", RMS_NORM_EPS), RMS_NORM_EPS)?;
                let rope = c.get("rope_parameters");
                let theta = rope
                    .and_then(|r| r.get("rope_theta"))
                    .and_then(Value::as_f64)
                    .or_else(|| c.get("rope_theta").and_then(Value::as_f64))
                    .unwrap_or(ROPE_THETA);
                close("rope_theta", theta, ROPE_THETA)?;
                let kind = rope.and_then(|r| r.get("rope_type")).and_then(Value::as_str).unwrap_or("default");
                ensure!(kind == "default", "config.json rope_parameters.rope_type is {kind:?}; frugal's rotary positions are unscaled (\"default\")");
                let (d, heads) = (int("hidden_size")?, int("num_attention_heads")?);
                let kv = c.get("num_key_value_heads").and_then(Value::as_i64).unwrap_or(heads);
                ensure!(
                    kv == heads,
                    "config.json num_key_value_heads is {kv}, not num_attention_heads {heads}: frugal's attention has a key and value head per query head"
                );
                if let Some(hd) = c.get("head_dim").and_then(Value::as_i64) {
                    ensure!(hd * heads == d, "config.json head_dim {hd} × {heads} heads is not hidden_size {d}");
                }
                let flag = |key: &str| c.get(key).and_then(Value::as_bool).unwrap_or(false);
                let family = if model_type == "llama" { Self::Llama } else { Self::Ernie45Moe };
                let bias = match family {
                    Self::Llama => {
                        ensure!(
                            flag("attention_bias") == flag("mlp_bias"),
                            "config.json attention_bias and mlp_bias differ; frugal's bias is one switch for every linear layer"
                        );
                        ensure!(c.get("pretraining_tp").and_then(Value::as_i64).unwrap_or(1) == 1, "config.json pretraining_tp is not 1");
                        flag("attention_bias")
                    }
                    _ => {
                        ensure!(
                            !flag("use_bias"),
                            "config.json use_bias is true: ERNIE 4.5 MoE's head then has a bias and its routed experts none, which frugal's model does not compute"
                        );
                        false
                    }
                };
                let moe = match family {
                    Self::Ernie45Moe => {
                        let layers = int("num_hidden_layers")?;
                        let (start, end) = (int("moe_layer_start_index")?, int("moe_layer_end_index")?);
                        ensure!(
                            start == 0 && end >= layers - 1,
                            "config.json moe_layer_start_index {start} and moe_layer_end_index {end}: frugal's MoE layers are every Nth of all {layers} layers (start 0, end {})",
                            layers - 1
                        );
                        let min = float("moe_norm_min", MOE_NORM_MIN);
                        ensure!(
                            min <= 1e-6,
                            "config.json moe_norm_min is {min}; frugal divides the k gates by their sum, floored only far below any sum of them"
                        );
                        Some(MoeConfig {
                            experts: int("moe_num_experts")?,
                            top_k: int("moe_k")?,
                            shared_experts: int("moe_num_shared_experts")?,
                            expert_hidden: int("moe_intermediate_size")?,
                            every_n_layers: int("moe_layer_interval")?,
                            capacity_factor: 1.25,
                            load_balance_weight: 0.01,
                            normalize_top_k: true,
                        })
                    }
                    _ => None,
                };
                let m = ModelConfig {
                    layers: int("num_hidden_layers")?,
                    d_model: d,
                    heads,
                    seq_len: int("max_position_embeddings")?,
                    vocab_size: int("vocab_size")?,
                    ffn_hidden: int("intermediate_size")?,
                    positions: Positions::Rotary,
                    tied_embeddings: tied,
                    bias,
                    norm: Norm::RmsNorm,
                    feed_forward: FeedForward::Swiglu,
                    moe,
                    attention: AttentionPattern::Dense,
                };
                Ok((family, m))
            }
            other => bail!("config.json model_type {other:?} is not a family frugal reads (gpt2, gpt_neox, llama, ernie4_5_moe)"),
        }
    }

    /// `m`'s weights (frugal's names, fp32) in the family's names and layouts.
    pub fn to_hf(self, m: &ModelConfig, ours: &Tensors) -> Result<Tensors> {
        let get = |name: &str| ours.get(name).map(|t| t.shallow_clone()).with_context(|| format!("the model has no parameter {name}"));
        // an absent bias is a zero one: the same computation
        let bias = |name: &str, len: i64| match ours.get(name) {
            Some(t) => t.shallow_clone(),
            None => Tensor::zeros([len], (Kind::Float, tch::Device::Cpu)),
        };
        let (d, h) = (m.d_model, m.ffn_hidden);
        let mut hf = Tensors::new();
        let mut put = |name: String, t: Tensor| {
            hf.insert(name, t);
        };
        match self {
            Self::Gpt2 => {
                put("transformer.wte.weight".into(), get("wte.weight")?);
                put("transformer.wpe.weight".into(), get("wpe.weight")?);
                for i in 0..m.layers {
                    let (o, t) = (format!("blocks.{i}"), format!("transformer.h.{i}"));
                    put(format!("{t}.ln_1.weight"), get(&format!("{o}.ln1.weight"))?);
                    put(format!("{t}.ln_1.bias"), bias(&format!("{o}.ln1.bias"), d));
                    // Conv1D holds [in, out]: the transpose of a Linear's weight
                    put(format!("{t}.attn.c_attn.weight"), get(&format!("{o}.attn.qkv.weight"))?.tr());
                    put(format!("{t}.attn.c_attn.bias"), bias(&format!("{o}.attn.qkv.bias"), 3 * d));
                    put(format!("{t}.attn.c_proj.weight"), get(&format!("{o}.attn.proj.weight"))?.tr());
                    put(format!("{t}.attn.c_proj.bias"), bias(&format!("{o}.attn.proj.bias"), d));
                    put(format!("{t}.ln_2.weight"), get(&format!("{o}.ln2.weight"))?);
                    put(format!("{t}.ln_2.bias"), bias(&format!("{o}.ln2.bias"), d));
                    put(format!("{t}.mlp.c_fc.weight"), get(&format!("{o}.mlp.fc.weight"))?.tr());
                    put(format!("{t}.mlp.c_fc.bias"), bias(&format!("{o}.mlp.fc.bias"), h));
                    put(format!("{t}.mlp.c_proj.weight"), get(&format!("{o}.mlp.proj.weight"))?.tr());
                    put(format!("{t}.mlp.c_proj.bias"), bias(&format!("{o}.mlp.proj.bias"), d));
                }
                put("transformer.ln_f.weight".into(), get("ln_f.weight")?);
                put("transformer.ln_f.bias".into(), bias("ln_f.bias", d));
                if !m.tied_embeddings {
                    put("lm_head.weight".into(), get("head.weight")?);
                }
            }
            Self::GptNeox => {
                put("gpt_neox.embed_in.weight".into(), get("wte.weight")?);
                for i in 0..m.layers {
                    let (o, t) = (format!("blocks.{i}"), format!("gpt_neox.layers.{i}"));
                    put(format!("{t}.input_layernorm.weight"), get(&format!("{o}.ln1.weight"))?);
                    put(format!("{t}.input_layernorm.bias"), bias(&format!("{o}.ln1.bias"), d));
                    put(format!("{t}.attention.query_key_value.weight"), qkv_to_head_major(&get(&format!("{o}.attn.qkv.weight"))?, m.heads));
                    put(format!("{t}.attention.query_key_value.bias"), qkv_to_head_major(&bias(&format!("{o}.attn.qkv.bias"), 3 * d), m.heads));
                    put(format!("{t}.attention.dense.weight"), get(&format!("{o}.attn.proj.weight"))?);
                    put(format!("{t}.attention.dense.bias"), bias(&format!("{o}.attn.proj.bias"), d));
                    put(format!("{t}.post_attention_layernorm.weight"), get(&format!("{o}.ln2.weight"))?);
                    put(format!("{t}.post_attention_layernorm.bias"), bias(&format!("{o}.ln2.bias"), d));
                    put(format!("{t}.mlp.dense_h_to_4h.weight"), get(&format!("{o}.mlp.fc.weight"))?);
                    put(format!("{t}.mlp.dense_h_to_4h.bias"), bias(&format!("{o}.mlp.fc.bias"), h));
                    put(format!("{t}.mlp.dense_4h_to_h.weight"), get(&format!("{o}.mlp.proj.weight"))?);
                    put(format!("{t}.mlp.dense_4h_to_h.bias"), bias(&format!("{o}.mlp.proj.bias"), d));
                }
                put("gpt_neox.final_layer_norm.weight".into(), get("ln_f.weight")?);
                put("gpt_neox.final_layer_norm.bias".into(), bias("ln_f.bias", d));
                if !m.tied_embeddings {
                    put("embed_out.weight".into(), get("head.weight")?);
                }
            }
            Self::Llama | Self::Ernie45Moe => {
                // ERNIE rotates interleaved pairs of a head's dimensions, frugal (as Llama)
                // its two halves: the same rotation once query and key rows are permuted
                let rope = |t: Tensor| if self == Self::Ernie45Moe { rope_to_interleaved(&t, m.heads) } else { t };
                put("model.embed_tokens.weight".into(), get("wte.weight")?);
                for i in 0..m.layers {
                    let (o, t) = (format!("blocks.{i}"), format!("model.layers.{i}"));
                    put(format!("{t}.input_layernorm.weight"), get(&format!("{o}.ln1.weight"))?);
                    put(format!("{t}.post_attention_layernorm.weight"), get(&format!("{o}.ln2.weight"))?);
                    let qkv = get(&format!("{o}.attn.qkv.weight"))?;
                    put(format!("{t}.self_attn.q_proj.weight"), rope(qkv.narrow(0, 0, d)));
                    put(format!("{t}.self_attn.k_proj.weight"), rope(qkv.narrow(0, d, d)));
                    put(format!("{t}.self_attn.v_proj.weight"), qkv.narrow(0, 2 * d, d));
                    put(format!("{t}.self_attn.o_proj.weight"), get(&format!("{o}.attn.proj.weight"))?);
                    if m.bias {
                        let qkv = get(&format!("{o}.attn.qkv.bias"))?;
                        put(format!("{t}.self_attn.q_proj.bias"), rope(qkv.narrow(0, 0, d)));
                        put(format!("{t}.self_attn.k_proj.bias"), rope(qkv.narrow(0, d, d)));
                        put(format!("{t}.self_attn.v_proj.bias"), qkv.narrow(0, 2 * d, d));
                        put(format!("{t}.self_attn.o_proj.bias"), get(&format!("{o}.attn.proj.bias"))?);
                    }
                    let mlp = format!("{t}.mlp");
                    match &m.moe {
                        Some(moe) if m.is_moe_layer(i) => {
                            let (e, x) = (moe.expert_hidden, format!("{o}.moe"));
                            put(format!("{mlp}.gate.weight"), get(&format!("{x}.router.weight"))?);
                            // the router's selection bias (none in frugal's)
                            put(
                                format!("{mlp}.moe_statics.e_score_correction_bias"),
                                Tensor::zeros([1, moe.experts], (Kind::Float, tch::Device::Cpu)),
                            );
                            let w_in = get(&format!("{x}.experts.w_in"))?;
                            let w_out = get(&format!("{x}.experts.w_out"))?;
                            let (b_in, b_out) = (ours.get(&format!("{x}.experts.b_in")), ours.get(&format!("{x}.experts.b_out")));
                            for j in 0..moe.experts {
                                let w = w_in.get(j);
                                put(format!("{mlp}.experts.{j}.gate_proj.weight"), w.narrow(1, 0, e).tr());
                                put(format!("{mlp}.experts.{j}.up_proj.weight"), w.narrow(1, e, e).tr());
                                put(format!("{mlp}.experts.{j}.down_proj.weight"), w_out.get(j).tr());
                                if let (Some(b_in), Some(b_out)) = (b_in, b_out) {
                                    put(format!("{mlp}.experts.{j}.gate_proj.bias"), b_in.get(j).narrow(0, 0, e));
                                    put(format!("{mlp}.experts.{j}.up_proj.bias"), b_in.get(j).narrow(0, e, e));
                                    put(format!("{mlp}.experts.{j}.down_proj.bias"), b_out.get(j));
                                }
                            }
                            if moe.shared_experts > 0 {
                                // the shared experts, summed, are one MLP of their hidden units side by side
                                let (n, sx) = (moe.shared_experts, format!("{x}.shared"));
                                let w_in = get(&format!("{sx}.w_in"))?;
                                let side = |cols: i64| w_in.narrow(2, cols, e).permute([0, 2, 1]).reshape([n * e, d]);
                                put(format!("{mlp}.shared_experts.gate_proj.weight"), side(0));
                                put(format!("{mlp}.shared_experts.up_proj.weight"), side(e));
                                put(format!("{mlp}.shared_experts.down_proj.weight"), get(&format!("{sx}.w_out"))?.reshape([n * e, d]).tr());
                                if let (Some(b_in), Some(b_out)) = (ours.get(&format!("{sx}.b_in")), ours.get(&format!("{sx}.b_out"))) {
                                    put(format!("{mlp}.shared_experts.gate_proj.bias"), b_in.narrow(1, 0, e).reshape([n * e]));
                                    put(format!("{mlp}.shared_experts.up_proj.bias"), b_in.narrow(1, e, e).reshape([n * e]));
                                    put(format!("{mlp}.shared_experts.down_proj.bias"), b_out.sum_dim_intlist([0i64].as_slice(), false, Kind::Float));
                                }
                            }
                        }
                        _ => {
                            let fc = get(&format!("{o}.mlp.fc.weight"))?;
                            put(format!("{mlp}.gate_proj.weight"), fc.narrow(0, 0, h));
                            put(format!("{mlp}.up_proj.weight"), fc.narrow(0, h, h));
                            put(format!("{mlp}.down_proj.weight"), get(&format!("{o}.mlp.proj.weight"))?);
                            if m.bias {
                                let fc = get(&format!("{o}.mlp.fc.bias"))?;
                                put(format!("{mlp}.gate_proj.bias"), fc.narrow(0, 0, h));
                                put(format!("{mlp}.up_proj.bias"), fc.narrow(0, h, h));
                                put(format!("{mlp}.down_proj.bias"), get(&format!("{o}.mlp.proj.bias"))?);
                            }
                        }
                    }
                }
                put("model.norm.weight".into(), get("ln_f.weight")?);
                if !m.tied_embeddings {
                    put("lm_head.weight".into(), get("head.weight")?);
                }
            }
        }
        Ok(hf)
    }

    /// Where each of frugal's parameters of `m` (as [`Family::from_config`] made it) comes from
    /// in the family's weights: a plan, read one tensor at a time by [`super::Imported`].
    pub fn from_hf(self, m: &ModelConfig) -> Vec<(String, Source)> {
        use Source::*;
        let mut plan = vec![];
        let mut put = |ours: String, source: Source| plan.push((ours, source));
        match self {
            Self::Gpt2 => {
                put("wte.weight".into(), Same("transformer.wte.weight".into()));
                put("wpe.weight".into(), FirstRows("transformer.wpe.weight".into(), m.seq_len));
                for i in 0..m.layers {
                    let (o, t) = (format!("blocks.{i}"), format!("transformer.h.{i}"));
                    put(format!("{o}.ln1.weight"), Same(format!("{t}.ln_1.weight")));
                    put(format!("{o}.ln1.bias"), Same(format!("{t}.ln_1.bias")));
                    put(format!("{o}.attn.qkv.weight"), Transposed(Box::new(Same(format!("{t}.attn.c_attn.weight")))));
                    put(format!("{o}.attn.qkv.bias"), Same(format!("{t}.attn.c_attn.bias")));
                    put(format!("{o}.attn.proj.weight"), Transposed(Box::new(Same(format!("{t}.attn.c_proj.weight")))));
                    put(format!("{o}.attn.proj.bias"), Same(format!("{t}.attn.c_proj.bias")));
                    put(format!("{o}.ln2.weight"), Same(format!("{t}.ln_2.weight")));
                    put(format!("{o}.ln2.bias"), Same(format!("{t}.ln_2.bias")));
                    put(format!("{o}.mlp.fc.weight"), Transposed(Box::new(Same(format!("{t}.mlp.c_fc.weight")))));
                    put(format!("{o}.mlp.fc.bias"), Same(format!("{t}.mlp.c_fc.bias")));
                    put(format!("{o}.mlp.proj.weight"), Transposed(Box::new(Same(format!("{t}.mlp.c_proj.weight")))));
                    put(format!("{o}.mlp.proj.bias"), Same(format!("{t}.mlp.c_proj.bias")));
                }
                put("ln_f.weight".into(), Same("transformer.ln_f.weight".into()));
                put("ln_f.bias".into(), Same("transformer.ln_f.bias".into()));
                if !m.tied_embeddings {
                    put("head.weight".into(), Same("lm_head.weight".into()));
                }
            }
            Self::GptNeox => {
                put("wte.weight".into(), Same("gpt_neox.embed_in.weight".into()));
                for i in 0..m.layers {
                    let (o, t) = (format!("blocks.{i}"), format!("gpt_neox.layers.{i}"));
                    put(format!("{o}.ln1.weight"), Same(format!("{t}.input_layernorm.weight")));
                    put(format!("{o}.ln1.bias"), Same(format!("{t}.input_layernorm.bias")));
                    put(format!("{o}.attn.qkv.weight"), QkvFromHeadMajor(Box::new(Same(format!("{t}.attention.query_key_value.weight"))), m.heads));
                    // a model saved without attention biases computes as with zero ones
                    let qkv_bias = ZerosIfAbsent(format!("{t}.attention.query_key_value.bias"), 3 * m.d_model);
                    put(format!("{o}.attn.qkv.bias"), QkvFromHeadMajor(Box::new(qkv_bias), m.heads));
                    put(format!("{o}.attn.proj.weight"), Same(format!("{t}.attention.dense.weight")));
                    put(format!("{o}.attn.proj.bias"), ZerosIfAbsent(format!("{t}.attention.dense.bias"), m.d_model));
                    put(format!("{o}.ln2.weight"), Same(format!("{t}.post_attention_layernorm.weight")));
                    put(format!("{o}.ln2.bias"), Same(format!("{t}.post_attention_layernorm.bias")));
                    put(format!("{o}.mlp.fc.weight"), Same(format!("{t}.mlp.dense_h_to_4h.weight")));
                    put(format!("{o}.mlp.fc.bias"), Same(format!("{t}.mlp.dense_h_to_4h.bias")));
                    put(format!("{o}.mlp.proj.weight"), Same(format!("{t}.mlp.dense_4h_to_h.weight")));
                    put(format!("{o}.mlp.proj.bias"), Same(format!("{t}.mlp.dense_4h_to_h.bias")));
                }
                put("ln_f.weight".into(), Same("gpt_neox.final_layer_norm.weight".into()));
                put("ln_f.bias".into(), Same("gpt_neox.final_layer_norm.bias".into()));
                if !m.tied_embeddings {
                    put("head.weight".into(), Same("embed_out.weight".into()));
                }
            }
            Self::Llama | Self::Ernie45Moe => {
                let same = |n: String| Same(n);
                let t_ = |n: String| Transposed(Box::new(Same(n)));
                let rope = |n: String| if self == Self::Ernie45Moe { RopeFromInterleaved(Box::new(Same(n)), m.heads) } else { Same(n) };
                put("wte.weight".into(), Same("model.embed_tokens.weight".into()));
                for i in 0..m.layers {
                    let (o, t) = (format!("blocks.{i}"), format!("model.layers.{i}"));
                    put(format!("{o}.ln1.weight"), same(format!("{t}.input_layernorm.weight")));
                    put(format!("{o}.ln2.weight"), same(format!("{t}.post_attention_layernorm.weight")));
                    let a = format!("{t}.self_attn");
                    let qkv = |kind: &str| {
                        Cat(vec![rope(format!("{a}.q_proj.{kind}")), rope(format!("{a}.k_proj.{kind}")), same(format!("{a}.v_proj.{kind}"))], 0)
                    };
                    put(format!("{o}.attn.qkv.weight"), qkv("weight"));
                    put(format!("{o}.attn.proj.weight"), same(format!("{a}.o_proj.weight")));
                    if m.bias {
                        put(format!("{o}.attn.qkv.bias"), qkv("bias"));
                        put(format!("{o}.attn.proj.bias"), same(format!("{a}.o_proj.bias")));
                    }
                    let mlp = format!("{t}.mlp");
                    match &m.moe {
                        Some(moe) if m.is_moe_layer(i) => {
                            let (e, d, x) = (moe.expert_hidden, m.d_model, format!("{o}.moe"));
                            put(format!("{x}.router.weight"), same(format!("{mlp}.gate.weight")));
                            let experts = |f: &dyn Fn(i64) -> Source| Stack((0..moe.experts).map(f).collect());
                            let ex = |j: i64, p: &str| format!("{mlp}.experts.{j}.{p}");
                            put(format!("{x}.experts.w_in"), experts(&|j| Cat(vec![t_(ex(j, "gate_proj.weight")), t_(ex(j, "up_proj.weight"))], 1)));
                            put(format!("{x}.experts.w_out"), experts(&|j| t_(ex(j, "down_proj.weight"))));
                            if m.bias {
                                put(
                                    format!("{x}.experts.b_in"),
                                    experts(&|j| Cat(vec![same(ex(j, "gate_proj.bias")), same(ex(j, "up_proj.bias"))], 0)),
                                );
                                put(format!("{x}.experts.b_out"), experts(&|j| same(ex(j, "down_proj.bias"))));
                            }
                            if moe.shared_experts > 0 {
                                let (n, sx, sh) = (moe.shared_experts, format!("{x}.shared"), format!("{mlp}.shared_experts"));
                                // one MLP of n · e hidden units, as n experts of e
                                let bank = |p: &str| Permute(Box::new(Reshape(Box::new(same(format!("{sh}.{p}"))), vec![n, e, d])), vec![0, 2, 1]);
                                put(format!("{sx}.w_in"), Cat(vec![bank("gate_proj.weight"), bank("up_proj.weight")], 2));
                                put(format!("{sx}.w_out"), Reshape(Box::new(t_(format!("{sh}.down_proj.weight"))), vec![n, e, d]));
                                if m.bias {
                                    let b = |p: &str| Reshape(Box::new(same(format!("{sh}.{p}"))), vec![n, e]);
                                    put(format!("{sx}.b_in"), Cat(vec![b("gate_proj.bias"), b("up_proj.bias")], 1));
                                    // the summed down bias, on the first shared expert
                                    let first = Reshape(Box::new(same(format!("{sh}.down_proj.bias"))), vec![1, d]);
                                    put(format!("{sx}.b_out"), Cat(vec![first, Zeros(vec![n - 1, d])], 0));
                                }
                            }
                        }
                        _ => {
                            put(
                                format!("{o}.mlp.fc.weight"),
                                Cat(vec![same(format!("{mlp}.gate_proj.weight")), same(format!("{mlp}.up_proj.weight"))], 0),
                            );
                            put(format!("{o}.mlp.proj.weight"), same(format!("{mlp}.down_proj.weight")));
                            if m.bias {
                                put(
                                    format!("{o}.mlp.fc.bias"),
                                    Cat(vec![same(format!("{mlp}.gate_proj.bias")), same(format!("{mlp}.up_proj.bias"))], 0),
                                );
                                put(format!("{o}.mlp.proj.bias"), same(format!("{mlp}.down_proj.bias")));
                            }
                        }
                    }
                }
                put("ln_f.weight".into(), Same("model.norm.weight".into()));
                if !m.tied_embeddings {
                    put("head.weight".into(), Same("lm_head.weight".into()));
                }
            }
        }
        plan
    }
}

/// How one of frugal's parameters is made from the family's tensors.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    Same(String),
    /// A transposed matrix (GPT-2's Conv1D weights are [in, out]).
    Transposed(Box<Source>),
    /// Sources joined along a dimension.
    Cat(Vec<Source>, i64),
    /// Sources stacked along a new first dimension (experts).
    Stack(Vec<Source>),
    Reshape(Box<Source>, Vec<i64>),
    Permute(Box<Source>, Vec<i64>),
    Zeros(Vec<i64>),
    /// ERNIE's interleaved rotary rows of `heads` heads, as frugal's halves.
    RopeFromInterleaved(Box<Source>, i64),
    /// Learned positions longer than the job's context: the first rows.
    FirstRows(String, i64),
    /// GPT-NeoX's head-by-head fused projection, for `heads` heads.
    QkvFromHeadMajor(Box<Source>, i64),
    /// A bias the model may lack: zeros of this length then.
    ZerosIfAbsent(String, i64),
}

impl Source {
    /// The parameter, in fp32, from `get` (the family's tensor by name; `None` when absent).
    pub fn read(&self, get: &dyn Fn(&str) -> Result<Option<Tensor>>) -> Result<Tensor> {
        let need = |name: &str| -> Result<Tensor> { get(name)?.with_context(|| format!("the Hugging Face model has no tensor {name}")) };
        Ok(match self {
            Self::Same(name) => need(name)?,
            Self::Transposed(source) => source.read(get)?.tr(),
            Self::Cat(sources, dim) => Tensor::cat(&sources.iter().map(|s| s.read(get)).collect::<Result<Vec<_>>>()?, *dim),
            Self::Stack(sources) => Tensor::stack(&sources.iter().map(|s| s.read(get)).collect::<Result<Vec<_>>>()?, 0),
            Self::Reshape(source, shape) => source.read(get)?.reshape(shape.as_slice()),
            Self::Permute(source, dims) => source.read(get)?.permute(dims.as_slice()),
            Self::Zeros(shape) => Tensor::zeros(shape.as_slice(), (Kind::Float, tch::Device::Cpu)),
            Self::RopeFromInterleaved(source, heads) => rope_from_interleaved(&source.read(get)?, *heads),
            Self::FirstRows(name, rows) => {
                let t = need(name)?;
                ensure!(t.size()[0] >= *rows, "{name} has {} rows, fewer than the {rows} the model needs", t.size()[0]);
                t.narrow(0, 0, *rows)
            }
            Self::QkvFromHeadMajor(source, heads) => qkv_from_head_major(&source.read(get)?, *heads),
            Self::ZerosIfAbsent(name, len) => get(name)?.unwrap_or_else(|| Tensor::zeros([*len], (Kind::Float, tch::Device::Cpu))),
        })
    }
}

/// Frugal's fused projection is [q; k; v], each [heads, head_dim] rows; GPT-NeoX's is head by
/// head, [q_h; k_h; v_h]. Works on a weight [3d, d] or a bias [3d].
fn qkv_to_head_major(t: &Tensor, heads: i64) -> Tensor {
    regroup_rows(t, [3, heads, -1], [1, 0, 2])
}

fn qkv_from_head_major(t: &Tensor, heads: i64) -> Tensor {
    regroup_rows(t, [heads, 3, -1], [1, 0, 2])
}

/// A head's rows [first half; second half] (frugal's rotary pairs i and i + hd/2) as ERNIE's
/// interleaved pairs (2i, 2i + 1). Works on a weight [heads · hd, d] or a bias [heads · hd].
fn rope_to_interleaved(t: &Tensor, heads: i64) -> Tensor {
    regroup_rows(t, [heads, 2, -1], [0, 2, 1])
}

fn rope_from_interleaved(t: &Tensor, heads: i64) -> Tensor {
    let hd = t.size()[0] / heads;
    regroup_rows(t, [heads, hd / 2, 2], [0, 2, 1])
}

/// `t`'s rows (its first dimension) split into three groups of the sizes `groups` (one may be
/// -1), the groups reordered by `order`, and joined again; any further dimensions ride along.
fn regroup_rows(t: &Tensor, groups: [i64; 3], order: [i64; 3]) -> Tensor {
    let size = t.size();
    let rest = &size[1..];
    let split: Vec<i64> = groups.iter().chain(rest).copied().collect();
    let perm: Vec<i64> = order.into_iter().chain(3..3 + rest.len() as i64).collect();
    t.reshape(split.as_slice()).permute(perm.as_slice()).reshape(size.as_slice())
}
