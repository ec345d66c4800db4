//! The Hugging Face model layout, out and in: a directory `transformers` loads with
//! `AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained`, without remote
//! code, and that frugal reads back as a model to start from.
//!
//! A directory holds `config.json` (the family's own configuration), the weights in fp32 as
//! `model.safetensors` or, past `max_shard_bytes`, as `model-0000i-of-0000n.safetensors` with
//! `model.safetensors.index.json`, `generation_config.json`, and, when the model has a tokenizer,
//! `tokenizer.json` and `tokenizer_config.json`. Which family a model maps to, and what is refused,
//! is [`family`]'s.

pub mod family;

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use tch::{Kind, Tensor};

pub use family::{Family, Tensors, Unsupported};

use frugal_api::v1alpha1::HuggingFaceExportStatus;

use crate::config::ModelConfig;
use crate::data::tokenizer::TextTokenizer;
use crate::params::ParamStore;

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";
pub const GENERATION_CONFIG_FILE: &str = "generation_config.json";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
/// Shards past this size, as `transformers` does by default.
pub const DEFAULT_MAX_SHARD_BYTES: u64 = 5 << 30;
/// Where an export after training goes, in the step directory.
pub const EXPORT_DIR: &str = "hf";

/// What an export wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Exported {
    pub dir: PathBuf,
    pub family: Family,
    /// The weight files, in order.
    pub weight_files: Vec<String>,
    /// Bytes of weights.
    pub weight_bytes: u64,
}

/// The parameters of `store` by name, as fp32 tensors on the CPU.
pub fn named_weights(store: &ParamStore) -> Tensors {
    (0..store.specs.len()).map(|i| (store.specs[i].name.clone(), store.master_view(i).to_device(tch::Device::Cpu).to_kind(Kind::Float))).collect()
}

/// Writes `m`'s weights (`store`, the whole model) and `tokenizer` to `out` in the Hugging Face
/// layout. The directory is written beside `out` and renamed into place, so `out` is either the
/// previous export or the new one; an existing `out` that is not an export is refused.
pub fn export(out: &Path, m: &ModelConfig, store: &ParamStore, tokenizer: Option<&TextTokenizer>, max_shard_bytes: u64) -> Result<Exported> {
    let family = Family::of(m)?;
    ensure!(max_shard_bytes > 0, "the largest shard must hold at least one byte");
    let hf = family.to_hf(m, &named_weights(store))?;
    if out.exists() {
        ensure!(
            out.join(CONFIG_FILE).exists() || std::fs::read_dir(out)?.next().is_none(),
            "{} exists and is not a Hugging Face export; name a new or empty directory",
            out.display()
        );
    }
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let name = out.file_name().context("the export directory has no name")?.to_string_lossy().into_owned();
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp)?;

    let eos = tokenizer.map(|t| i64::from(t.end_of_text()));
    write_json(&tmp.join(CONFIG_FILE), &family.config(m, eos))?;
    let mut generation = json!({"do_sample": false});
    if let Some(eos) = eos {
        generation["bos_token_id"] = json!(eos);
        generation["eos_token_id"] = json!(eos);
    }
    write_json(&tmp.join(GENERATION_CONFIG_FILE), &generation)?;
    let (weight_files, weight_bytes) = write_weights(&tmp, &hf, max_shard_bytes)?;
    if let Some(tokenizer) = tokenizer {
        tokenizer.save(&tmp.join(TOKENIZER_FILE))?;
        let eot = tokenizer.end_of_text_text();
        let config = json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": eot,
            "eos_token": eot,
            "model_max_length": m.seq_len,
            "clean_up_tokenization_spaces": false,
            "add_prefix_space": false,
        });
        write_json(&tmp.join(TOKENIZER_CONFIG_FILE), &config)?;
    }
    if out.exists() {
        std::fs::remove_dir_all(out).with_context(|| format!("replacing {}", out.display()))?;
    }
    std::fs::rename(&tmp, out).with_context(|| format!("moving the export into {}", out.display()))?;
    Ok(Exported { dir: out.to_path_buf(), family, weight_files, weight_bytes })
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(v)? + "\n").with_context(|| format!("writing {}", path.display()))
}

/// One tensor handed to the safetensors writer: made contiguous, and its bytes copied, only
/// when the writer reaches it, so a transposed view costs memory one tensor at a time.
struct Weight<'a> {
    tensor: &'a Tensor,
    shape: Vec<usize>,
}

impl safetensors::View for Weight<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        safetensors::Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        let t = self.tensor.contiguous();
        let mut bytes = vec![0u8; self.data_len()];
        t.copy_data_u8(&mut bytes, t.numel());
        Cow::Owned(bytes)
    }
    fn data_len(&self) -> usize {
        self.tensor.numel() * 4
    }
}

/// Writes `hf` as one file, or as shards of at most `max_shard_bytes` (a larger tensor gets a
/// shard of its own) with the index `transformers` reads.
fn write_weights(dir: &Path, hf: &Tensors, max_shard_bytes: u64) -> Result<(Vec<String>, u64)> {
    let mut shards: Vec<Vec<(&String, &Tensor)>> = vec![vec![]];
    let mut size = 0u64;
    for (name, t) in hf {
        ensure!(t.kind() == Kind::Float, "{name} is {:?}, not fp32", t.kind());
        let bytes = t.numel() as u64 * 4;
        if size > 0 && size + bytes > max_shard_bytes {
            shards.push(vec![]);
            size = 0;
        }
        shards.last_mut().expect("a shard").push((name, t));
        size += bytes;
    }
    let total: u64 = hf.values().map(|t| t.numel() as u64 * 4).sum();
    let metadata = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
    let n = shards.len();
    let names: Vec<String> =
        if n == 1 { vec![WEIGHTS_FILE.to_string()] } else { (1..=n).map(|i| format!("model-{i:05}-of-{n:05}.safetensors")).collect() };
    let mut weight_map = serde_json::Map::new();
    crate::progress::begin(&format!("export {}", dir.display()), "bytes", Some(total));
    for (shard, file) in shards.iter().zip(&names) {
        let views = shard.iter().map(|(name, t)| (name.as_str(), Weight { tensor: t, shape: t.size().iter().map(|&s| s as usize).collect() }));
        safetensors::tensor::serialize_to_file(views, &metadata, &dir.join(file)).with_context(|| format!("writing {file}"))?;
        for (name, _) in shard {
            weight_map.insert((*name).clone(), json!(file));
        }
        crate::progress::advance(shard.iter().map(|(_, t)| t.numel() as u64 * 4).sum());
    }
    crate::progress::end();
    if n > 1 {
        write_json(&dir.join(INDEX_FILE), &json!({"metadata": {"total_size": total}, "weight_map": weight_map}))?;
    }
    Ok((names, total))
}

/// A Hugging Face model directory opened: its family, the frugal model it is, and where each of
/// frugal's parameters comes from. Nothing but the files' headers is read until a tensor is
/// asked for, and then only that tensor, so loading a model costs the model it loads into and
/// one tensor more.
pub struct Imported {
    pub family: Family,
    pub model: ModelConfig,
    plan: Vec<(String, family::Source)>,
    files: SafetensorsFiles,
}

impl Imported {
    /// Frugal's parameter names, in the model's order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.plan.iter().map(|(n, _)| n.as_str())
    }

    /// One of frugal's parameters, read and converted (fp32, on the CPU).
    pub fn tensor(&self, name: &str) -> Result<Tensor> {
        let (_, source) = self.plan.iter().find(|(n, _)| n == name).with_context(|| format!("the imported model has no {name}"))?;
        source.read(&|hf| self.files.read(hf))
    }

    /// Loads the parameters `store` declares (the whole model, or a stage's slice of it) one at
    /// a time.
    pub fn load_into(&self, store: &mut ParamStore) -> Result<()> {
        tch::no_grad(|| {
            for i in 0..store.specs.len() {
                let s = &store.specs[i];
                let t = self.tensor(&s.name)?;
                ensure!(t.size() == s.shape, "{} is {:?} in the imported model, {:?} in frugal's", s.name, t.size(), s.shape);
                store.master_view(i).copy_(&t);
            }
            Ok(())
        })?;
        store.sync_compute();
        Ok(())
    }
}

/// The family and model `dir`'s `config.json` describes, without reading the weights.
pub fn read_config(dir: &Path) -> Result<(Family, ModelConfig)> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let config: Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    Family::from_config(&config).with_context(|| format!("{}", path.display()))
}

/// Opens the model in `dir`; with `seq_len`, a context shorter than the model's own (learned
/// position embeddings keep their first rows).
pub fn import(dir: &Path, seq_len: Option<i64>) -> Result<Imported> {
    let (family, mut model) = read_config(dir)?;
    if let Some(t) = seq_len {
        ensure!(
            t <= model.seq_len || family != Family::Gpt2,
            "a context of {t} tokens is longer than the {} positions the model learned",
            model.seq_len
        );
        model.seq_len = t;
    }
    let files = SafetensorsFiles::open(dir, &weight_files(dir)?)?;
    // a router with a selection bias picks experts frugal's would not
    for layer in 0..model.layers {
        let name = format!("model.layers.{layer}.mlp.moe_statics.e_score_correction_bias");
        if let Some(t) = files.read(&name)? {
            ensure!(t.abs().max().double_value(&[]) == 0.0, "{name} is not zero: frugal's router selects experts by their probability alone");
        }
    }
    let plan = family.from_hf(&model);
    Ok(Imported { family, model, plan, files })
}

/// The tensors of safetensors files by name, read one at a time from their offsets.
struct SafetensorsFiles {
    tensors: HashMap<String, Entry>,
}

struct Entry {
    file: PathBuf,
    kind: Kind,
    shape: Vec<i64>,
    /// Byte offset of the data in the file, and its length.
    at: u64,
    len: u64,
}

impl SafetensorsFiles {
    fn open(dir: &Path, files: &[String]) -> Result<Self> {
        use std::io::Read;
        let mut tensors = HashMap::new();
        for name in files {
            let path = dir.join(name);
            let mut f = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
            let size = f.metadata()?.len();
            let mut n = [0u8; 8];
            f.read_exact(&mut n).with_context(|| format!("{}: not a safetensors file", path.display()))?;
            let n = u64::from_le_bytes(n);
            ensure!(n <= size.saturating_sub(8) && n < 100 << 20, "{}: a header of {n} bytes in a file of {size}", path.display());
            let mut header = vec![0u8; n as usize];
            f.read_exact(&mut header)?;
            let header: serde_json::Map<String, Value> =
                serde_json::from_slice(&header).with_context(|| format!("{}: the safetensors header is not JSON", path.display()))?;
            for (tensor, info) in header {
                if tensor == "__metadata__" {
                    continue;
                }
                let bad = || anyhow::anyhow!("{}: tensor {tensor} has a malformed header entry", path.display());
                let dtype = info.get("dtype").and_then(Value::as_str).ok_or_else(bad)?;
                let (kind, width) = match dtype {
                    "F32" => (Kind::Float, 4),
                    "F16" => (Kind::Half, 2),
                    "BF16" => (Kind::BFloat16, 2),
                    "F64" => (Kind::Double, 8),
                    other => bail!("{}: tensor {tensor} is {other}; frugal reads floating-point weights (F32, F16, BF16, F64)", path.display()),
                };
                let shape: Vec<i64> =
                    info.get("shape").and_then(Value::as_array).ok_or_else(bad)?.iter().map(|d| d.as_i64().ok_or_else(bad)).collect::<Result<_>>()?;
                let offsets: Vec<u64> = info
                    .get("data_offsets")
                    .and_then(Value::as_array)
                    .ok_or_else(bad)?
                    .iter()
                    .map(|d| d.as_u64().ok_or_else(bad))
                    .collect::<Result<_>>()?;
                let [begin, end] = offsets[..] else { return Err(bad()) };
                let len = end.checked_sub(begin).ok_or_else(bad)?;
                ensure!(
                    len == shape.iter().product::<i64>().max(0) as u64 * width,
                    "{}: tensor {tensor} holds {len} bytes, not its shape's",
                    path.display()
                );
                ensure!(8 + n + end <= size, "{}: tensor {tensor} runs past the end of the file (truncated?)", path.display());
                tensors.insert(tensor, Entry { file: path.clone(), kind, shape, at: 8 + n + begin, len });
            }
        }
        Ok(Self { tensors })
    }

    /// The tensor `name` in fp32, or `None` when no file holds it.
    fn read(&self, name: &str) -> Result<Option<Tensor>> {
        use std::os::unix::fs::FileExt;
        let Some(e) = self.tensors.get(name) else { return Ok(None) };
        let t = Tensor::empty(e.shape.as_slice(), (e.kind, tch::Device::Cpu));
        if e.len > 0 {
            // read straight into the tensor's storage: no second copy of it
            // SAFETY: `t` is a fresh contiguous CPU tensor of exactly `e.len` bytes, written
            // here only and not shared until returned.
            let bytes = unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut u8, e.len as usize) };
            let f = std::fs::File::open(&e.file).with_context(|| format!("opening {}", e.file.display()))?;
            f.read_exact_at(bytes, e.at).with_context(|| format!("reading {name} from {}", e.file.display()))?;
        }
        // safetensors is little-endian, as the machines frugal runs on
        Ok(Some(if e.kind == Kind::Float { t } else { t.to_kind(Kind::Float) }))
    }
}

/// The weight files of `dir`: the index's, or the single file.
fn weight_files(dir: &Path) -> Result<Vec<String>> {
    let index = dir.join(INDEX_FILE);
    if index.exists() {
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&index)?).with_context(|| format!("parsing {}", index.display()))?;
        let map = v.get("weight_map").and_then(Value::as_object).with_context(|| format!("{} has no weight_map", index.display()))?;
        let mut files: Vec<String> = map.values().filter_map(Value::as_str).map(str::to_string).collect();
        files.sort();
        files.dedup();
        return Ok(files);
    }
    if dir.join(WEIGHTS_FILE).exists() {
        return Ok(vec![WEIGHTS_FILE.to_string()]);
    }
    bail!("{} holds neither {WEIGHTS_FILE} nor {INDEX_FILE} (frugal reads safetensors weights)", dir.display())
}

/// Refuses a job whose model (`spec`, resolved from `spec.model`) is not the model in `dir`,
/// naming the spec field and both values; the job's context may be shorter than the positions a
/// model with learned positions has.
pub fn check_init(spec: &ModelConfig, dir: &Path) -> Result<()> {
    let (family, init) = read_config(dir)?;
    let at = dir.join(CONFIG_FILE);
    let differ = |field: &str, ours: String, theirs: String| {
        anyhow::anyhow!("spec.model.{field} is {ours} but the model.init model ({}) has {theirs}: make the spec's shape the model's", at.display())
    };
    // the first of (field, ours, theirs) that differs
    let first_difference = |pairs: &[(&str, i64, i64)]| -> Result<()> {
        match pairs.iter().find(|(_, ours, theirs)| ours != theirs) {
            Some((field, ours, theirs)) => Err(differ(field, ours.to_string(), theirs.to_string())),
            None => Ok(()),
        }
    };
    first_difference(&[
        ("custom.layers", spec.layers, init.layers),
        ("custom.dModel", spec.d_model, init.d_model),
        ("custom.heads", spec.heads, init.heads),
        ("custom.vocabSize", spec.vocab_size, init.vocab_size),
        ("custom.ffnHidden", spec.ffn_hidden, init.ffn_hidden),
    ])?;
    if spec.positions != init.positions {
        return Err(differ("custom.positions", format!("{:?}", spec.positions), format!("{:?} positions ({})", init.positions, family.model_type())));
    }
    if spec.tied_embeddings != init.tied_embeddings {
        return Err(differ("custom.tiedEmbeddings", spec.tied_embeddings.to_string(), init.tied_embeddings.to_string()));
    }
    // the families always have biases; a model without them (frugal's, exported) has zero ones
    if spec.bias != init.bias {
        let imported = import(dir, None)?;
        for name in imported.names().filter(|n| n.ends_with(".bias")) {
            if imported.tensor(name)?.abs().max().double_value(&[]) != 0.0 {
                return Err(differ("custom.bias", "false".into(), format!("non-zero biases ({name})")));
            }
        }
    }
    if spec.norm != init.norm || spec.feed_forward != init.feed_forward {
        let block = |m: &ModelConfig| format!("{:?} with {:?}", m.norm, m.feed_forward);
        return Err(differ("custom.norm and feedForward", block(spec), block(&init)));
    }
    match (&spec.moe, &init.moe) {
        (None, None) => {}
        (Some(_), None) => return Err(differ("sparsity.moe", "set".into(), "dense feed-forward layers".into())),
        (None, Some(_)) => return Err(differ("sparsity.moe", "unset".into(), "mixture-of-experts layers".into())),
        (Some(ours), Some(theirs)) => {
            first_difference(&[
                ("sparsity.moe.experts", ours.experts, theirs.experts),
                ("sparsity.moe.topK", ours.top_k, theirs.top_k),
                ("sparsity.moe.sharedExperts", ours.shared_experts, theirs.shared_experts),
                ("sparsity.moe.expertHidden", ours.expert_hidden, theirs.expert_hidden),
                ("sparsity.moe.everyNLayers", ours.every_n_layers, theirs.every_n_layers),
            ])?;
            if !ours.normalize_top_k {
                return Err(differ("sparsity.moe.normalizeTopK", "false".into(), "gates divided by their sum".into()));
            }
        }
    }
    if spec.attention != init.attention {
        return Err(differ("sparsity.attention", format!("{:?}", spec.attention), "dense attention".into()));
    }
    if family == Family::Gpt2 && spec.seq_len > init.seq_len {
        return Err(differ("custom.seqLen", spec.seq_len.to_string(), format!("{} learned positions", init.seq_len)));
    }
    Ok(())
}

/// Loads the parameters `store` declares (a whole model or a stage's slice of it) from the
/// model in `dir`, after [`check_init`].
pub fn load_init(store: &mut ParamStore, spec: &ModelConfig, dir: &Path) -> Result<()> {
    check_init(spec, dir)?;
    let imported = import(dir, Some(spec.seq_len))?;
    // a model without biases declares none: the imported ones are zero (check_init saw to it)
    ensure!(
        spec.bias || store.specs.iter().all(|s| !s.name.ends_with(".bias")),
        "the job's model declares biases though spec.model.custom.bias is false"
    );
    imported.load_into(store)
}

/// Exports the checkpoint `checkpoint` (a step directory, or a root whose newest committed step
/// is used; any layout) of the run `cfg` to `out`, or to `hf/` in the step directory, with the
/// run's tokenizer when its data has one.
pub fn export_checkpoint(
    cfg: &crate::config::RunConfig,
    checkpoint: &Path,
    out: Option<&Path>,
    max_shard_bytes: u64,
) -> Result<HuggingFaceExportStatus> {
    let dir = crate::checkpoint::step_or_latest(checkpoint)?
        .with_context(|| format!("no committed checkpoint under {} (give a step directory or a checkpoint root)", checkpoint.display()))?;
    Family::of(&cfg.model).map_err(|e| anyhow::anyhow!("no Hugging Face family computes this model exactly: {e}"))?;
    let (_, mut store) = crate::model::gpt::whole_model(&cfg.model, tch::Device::Cpu);
    let step = crate::checkpoint::load_weights(&dir, &mut store).with_context(|| format!("loading the checkpoint {} to export", dir.display()))?.step;
    let data = crate::data::Data::new(&cfg.data, cfg.model.vocab_size, cfg.model.seq_len, cfg.train.seed)?;
    let out = out.map_or_else(|| dir.join(EXPORT_DIR), Path::to_path_buf);
    let e = export(&out, &cfg.model, &store, data.tokenizer.as_ref(), max_shard_bytes)?;
    Ok(HuggingFaceExportStatus {
        step,
        path: e.dir.display().to_string(),
        architecture: e.family.architecture().into(),
        weight_bytes: e.weight_bytes as i64,
    })
}

#[cfg(test)]
mod tests;
