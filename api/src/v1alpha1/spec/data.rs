//! The data: the corpus, its tokenizer, the validation split, evaluation sets and a quality
//! target.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The corpus, its tokenizer, the validation split, evaluation sets and an optional quality target.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("(has(self.tokenizer) && self.tokenizer == 'file') == has(self.tokenizerFile)")
        .message("data.tokenizerFile goes with data.tokenizer: file, and only with it: set both (tokenizerFile.path names a Hugging Face tokenizer.json), or neither"),
)]
#[serde(rename_all = "camelCase")]
pub struct DataSpec {
    /// Where the tokens come from.
    pub source: DataSource,
    /// How text becomes tokens: `byte` (one token a byte), `bpe` (trained on the corpus) or
    /// `file` (an existing tokenizer, `tokenizerFile`, used as it is).
    #[serde(default)]
    pub tokenizer: Tokenizer,
    /// The tokenizer file; tokenizer `file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer_file: Option<TokenizerFile>,
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
    /// `Synthetic` (built in, needs no files), `Text` (documents in text, JSONL or Parquet files)
    /// or `Shards` (pre-tokenized uint16 or uint32 shards).
    #[serde(rename = "type")]
    pub type_: DataSourceType,
    /// Options of the built-in generator; type Synthetic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synthetic: Option<SyntheticSource>,
    /// Documents: a text file or a directory of `.txt` files, JSONL records or Parquet rows;
    /// type Text.
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

/// A corpus of documents, each closed by the end-of-text token.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("!has(self.field) || (has(self.format) && self.format != 'text')")
        .message("data.source.text.field names a JSONL key or a Parquet column: set data.source.text.format to jsonl or parquet, or leave field out"),
)]
#[serde(rename_all = "camelCase")]
pub struct TextSource {
    /// A file, or a directory whose files of the format (`.txt`, `.jsonl`, `.parquet`) are read in
    /// name order: a path inside the pod (mount a PVC through podTemplate.volumes) or on the
    /// local machine, or an `s3://<bucket>/<key>` URI (one object, else every object under the
    /// prefix; a URI ending in `/` is always a prefix), downloaded into the pod before training.
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(validation = Rule::new("!self.contains('://') || (self.matches('^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^/]+)*/?$') && !self.contains('/./') && !self.contains('/../') && !self.endsWith('/.') && !self.endsWith('/..'))")
        .message("data.source.text.path is a local path or an s3://<bucket>/<key> URI: a bucket of 3 to 63 lowercase letters, digits, dots and hyphens, then a key or prefix without empty, '.' or '..' parts (such as s3://corpora/web/part-0.jsonl); no other scheme is read"))]
    pub path: String,
    /// How the documents are stored: `text` (a text file is one document), `jsonl` (one JSON
    /// object a line, each a document) or `parquet` (each row a document).
    #[serde(default)]
    pub format: TextFormat,
    /// Where a JSONL record or Parquet row keeps its text: a top-level key, or a string column.
    /// Unset means `text`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub field: Option<String>,
}

/// How a corpus stores its documents.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TextFormat {
    #[default]
    #[serde(rename = "text")]
    Text,
    #[serde(rename = "jsonl")]
    Jsonl,
    #[serde(rename = "parquet")]
    Parquet,
}

/// Pre-tokenized shards.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ShardsSource {
    /// Directory holding the `.bin` shards and the tokenizer file they were written with, or an
    /// `s3://<bucket>/<prefix>` URI of them, downloaded into the pod before training.
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(validation = Rule::new("!self.contains('://') || (self.matches('^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^/]+)*/?$') && !self.contains('/./') && !self.contains('/../') && !self.endsWith('/.') && !self.endsWith('/..'))")
        .message("data.source.shards.path is a local path or an s3://<bucket>/<key> URI: a bucket of 3 to 63 lowercase letters, digits, dots and hyphens, then a key or prefix without empty, '.' or '..' parts (such as s3://corpora/web/part-0.jsonl); no other scheme is read"))]
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
    #[serde(rename = "file")]
    File,
}

/// An existing tokenizer, used as it is: never retrained, its vocabulary the model's.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TokenizerFile {
    /// A Hugging Face `tokenizer.json`: a path inside the pod (mount its volume through
    /// podTemplate.volumes) or on the local machine, or an `s3://<bucket>/<key>` URI of it
    /// (with the `tokenizer_config.json` beside it, when there is one), downloaded into the pod
    /// before training.
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(validation = Rule::new("!self.contains('://') || (self.matches('^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^/]+)*/?$') && !self.contains('/./') && !self.contains('/../') && !self.endsWith('/.') && !self.endsWith('/..'))")
        .message("data.tokenizerFile.path is a local path or an s3://<bucket>/<key> URI: a bucket of 3 to 63 lowercase letters, digits, dots and hyphens, then a key or prefix without empty, '.' or '..' parts (such as s3://corpora/web/part-0.jsonl); no other scheme is read"))]
    pub path: String,
    /// The token that closes each document. Unset means the file's own: the `eos_token` of a
    /// `tokenizer_config.json` beside it, else the first of `<|endoftext|>`, `<|end_of_text|>`,
    /// `</s>`, `<eos>`, `<|eos|>` among its special tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub end_of_text: Option<String>,
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
    /// JSONL file, or an `s3://<bucket>/<key>` URI of one (downloaded into the pod before
    /// training); not used by Cloze.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    #[x_kube(validation = Rule::new("!self.contains('://') || (self.matches('^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^/]+)*/?$') && !self.contains('/./') && !self.contains('/../') && !self.endsWith('/.') && !self.endsWith('/..'))")
        .message("data.evalSets[].path is a local path or an s3://<bucket>/<key> URI: a bucket of 3 to 63 lowercase letters, digits, dots and hyphens, then a key or prefix without empty, '.' or '..' parts (such as s3://corpora/web/part-0.jsonl); no other scheme is read"))]
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
