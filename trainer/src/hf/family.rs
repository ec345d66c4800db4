//! Which `transformers` architecture computes exactly what a frugal model computes, its
//! `config.json`, and the weights in its names and layouts.
//!
//! | frugal model | family | why it is exact |
//! |---|---|---|
//! | learned positions, LayerNorm, GELU | GPT-2 (`GPT2LMHeadModel`) | same block; its Conv1D weights are ours transposed; absent biases are zeros |
//! | rotary positions, LayerNorm, GELU | GPT-NeoX (`GPTNeoXForCausalLM`) | sequential residual, full rotary in the half-split convention; its fused projection is head-major |
//!
//! Everything else is refused with the spec field to change: a sparse attention pattern (every
//! family attends densely), and mixture-of-experts layers (no family computes the GELU experts).

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use tch::{Kind, Tensor};

use crate::config::{AttentionPattern, ModelConfig, Positions};

/// Tensors by name.
pub type Tensors = BTreeMap<String, Tensor>;

/// A `transformers` model family frugal reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Gpt2,
    GptNeox,
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
/// Rotary base frequency of frugal's rotary positions.
const ROPE_THETA: f64 = 10_000.0;

impl Family {
    /// The family that computes `m` exactly.
    pub fn of(m: &ModelConfig) -> Result<Self, Unsupported> {
        if m.moe.is_some() {
            return Err(Unsupported {
                field: "model.sparsity.moe",
                why: "no Hugging Face family computes mixture-of-experts layers of GELU experts; train a dense model to export it".into(),
            });
        }
        if m.attention != AttentionPattern::Dense {
            return Err(Unsupported {
                field: "model.sparsity.attention",
                why: format!(
                    "the Hugging Face families attend densely, so the {:?} pattern would be served as another model; use dense attention to export",
                    m.attention
                ),
            });
        }
        Ok(match m.positions {
            Positions::Learned => Self::Gpt2,
            Positions::Rotary => Self::GptNeox,
        })
    }

    /// The class `config.json` names.
    pub fn architecture(self) -> &'static str {
        match self {
            Self::Gpt2 => "GPT2LMHeadModel",
            Self::GptNeox => "GPTNeoXForCausalLM",
        }
    }

    pub fn model_type(self) -> &'static str {
        match self {
            Self::Gpt2 => "gpt2",
            Self::GptNeox => "gpt_neox",
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
                    moe: None,
                    attention: AttentionPattern::Dense,
                };
                Ok((Self::GptNeox, m))
            }
            other => bail!("config.json model_type {other:?} is not a family frugal reads (gpt2, gpt_neox)"),
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
                    put(format!("{o}.attn.qkv.weight"), Transposed(format!("{t}.attn.c_attn.weight")));
                    put(format!("{o}.attn.qkv.bias"), Same(format!("{t}.attn.c_attn.bias")));
                    put(format!("{o}.attn.proj.weight"), Transposed(format!("{t}.attn.c_proj.weight")));
                    put(format!("{o}.attn.proj.bias"), Same(format!("{t}.attn.c_proj.bias")));
                    put(format!("{o}.ln2.weight"), Same(format!("{t}.ln_2.weight")));
                    put(format!("{o}.ln2.bias"), Same(format!("{t}.ln_2.bias")));
                    put(format!("{o}.mlp.fc.weight"), Transposed(format!("{t}.mlp.c_fc.weight")));
                    put(format!("{o}.mlp.fc.bias"), Same(format!("{t}.mlp.c_fc.bias")));
                    put(format!("{o}.mlp.proj.weight"), Transposed(format!("{t}.mlp.c_proj.weight")));
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
                    put(format!("{o}.attn.qkv.weight"), QkvFromHeadMajor(format!("{t}.attention.query_key_value.weight"), m.heads));
                    // a model saved without attention biases computes as with zero ones
                    let qkv_bias = ZerosIfAbsent(format!("{t}.attention.query_key_value.bias"), 3 * m.d_model);
                    put(format!("{o}.attn.qkv.bias"), QkvFromHeadMajorOf(Box::new(qkv_bias), m.heads));
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
        }
        plan
    }
}

/// How one of frugal's parameters is made from the family's tensors.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    Same(String),
    /// GPT-2's Conv1D weights: [in, out].
    Transposed(String),
    /// Learned positions longer than the job's context: the first rows.
    FirstRows(String, i64),
    /// GPT-NeoX's head-by-head fused projection, for `heads` heads.
    QkvFromHeadMajor(String, i64),
    QkvFromHeadMajorOf(Box<Source>, i64),
    /// A bias the model may lack: zeros of this length then.
    ZerosIfAbsent(String, i64),
}

impl Source {
    /// The parameter, in fp32, from `get` (the family's tensor by name; `None` when absent).
    pub fn read(&self, get: &dyn Fn(&str) -> Result<Option<Tensor>>) -> Result<Tensor> {
        let need = |name: &str| -> Result<Tensor> { get(name)?.with_context(|| format!("the Hugging Face model has no tensor {name}")) };
        Ok(match self {
            Self::Same(name) => need(name)?,
            Self::Transposed(name) => need(name)?.tr(),
            Self::FirstRows(name, rows) => {
                let t = need(name)?;
                ensure!(t.size()[0] >= *rows, "{name} has {} rows, fewer than the {rows} the model needs", t.size()[0]);
                t.narrow(0, 0, *rows)
            }
            Self::QkvFromHeadMajor(name, heads) => qkv_from_head_major(&need(name)?, *heads),
            Self::QkvFromHeadMajorOf(source, heads) => qkv_from_head_major(&source.read(get)?, *heads),
            Self::ZerosIfAbsent(name, len) => get(name)?.unwrap_or_else(|| Tensor::zeros([*len], (Kind::Float, tch::Device::Cpu))),
        })
    }
}

/// Frugal's fused projection is [q; k; v], each [heads, head_dim] rows; GPT-NeoX's is head by
/// head, [q_h; k_h; v_h]. Works on a weight [3d, d] or a bias [3d].
fn qkv_to_head_major(t: &Tensor, heads: i64) -> Tensor {
    let rows = t.size()[0];
    let rest: Vec<i64> = t.size()[1..].to_vec();
    let hd = rows / 3 / heads;
    let shape: Vec<i64> = [3, heads, hd].into_iter().chain(rest.iter().copied()).collect();
    let mut perm: Vec<i64> = vec![1, 0, 2];
    perm.extend(3..3 + rest.len() as i64);
    t.reshape(shape.as_slice()).permute(perm.as_slice()).reshape([[rows].as_slice(), rest.as_slice()].concat().as_slice())
}

fn qkv_from_head_major(t: &Tensor, heads: i64) -> Tensor {
    let rows = t.size()[0];
    let rest: Vec<i64> = t.size()[1..].to_vec();
    let hd = rows / 3 / heads;
    let shape: Vec<i64> = [heads, 3, hd].into_iter().chain(rest.iter().copied()).collect();
    let mut perm: Vec<i64> = vec![1, 0, 2];
    perm.extend(3..3 + rest.len() as i64);
    t.reshape(shape.as_slice()).permute(perm.as_slice()).reshape([[rows].as_slice(), rest.as_slice()].concat().as_slice())
}
