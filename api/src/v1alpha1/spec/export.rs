//! What is made of the trained model once training completes.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What is exported after training.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ExportSpec {
    /// `int8`: 8-bit weights with a scale per output channel for every linear layer (experts
    /// included), calibrated on held-out batches; embeddings, norms and the router stay in
    /// fp32. Written as `quantized/int8.safetensors` in the final checkpoint's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantize: Option<QuantizeFormat>,
    /// Write the final checkpoint in the Hugging Face layout as `hf/` in its step directory
    /// (`config.json`, fp32 `model.safetensors`, sharded past 5 GiB, `generation_config.json`,
    /// and the tokenizer's `tokenizer.json` and `tokenizer_config.json`), which
    /// `transformers.AutoModelForCausalLM.from_pretrained` loads without remote code. Dense
    /// models export as GPT-2 (learned positions), GPT-NeoX (rotary, LayerNorm and GELU) or
    /// Llama (rotary, RMSNorm and SwiGLU), mixtures of experts of Llama's block as ERNIE 4.5
    /// MoE; a model no family computes exactly is refused before training, naming the field to
    /// change.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hugging_face: bool,
    /// Batches (of training.batchSize sequences) whose activations calibrate the scales: drawn
    /// from the training split with their own seed, never from the validation split the
    /// quantized model is measured on.
    #[serde(default = "default_calibration_batches")]
    #[schemars(range(min = 1, max = 1024))]
    pub calibration_batches: i32,
    /// A bucket the exports go to once written: `<prefix>/step-<n>/hf/` and
    /// `<prefix>/step-<n>/quantized/int8.safetensors`, each object complete before the export is
    /// reported, and the status then names them by their `s3://` URIs. The pods' credentials
    /// are the checkpoint store's (its `credentialsSecret`, or their environment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<super::ObjectStoreSpec>,
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
