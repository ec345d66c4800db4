//! The exported file: `<step dir>/quantized/int8.safetensors` and its sidecar `int8.json`.
//!
//!   `<name>`         int8 codes of a quantized parameter, in the parameter's own shape
//!   `<name>.scale`   fp32 scale per output channel: [N] of a linear layer, [X, N] of experts
//!   `<name>.smooth`  fp32 SmoothQuant factor per input channel ([K], [X, K]) where calibration
//!                    chose one: the codes are of `W · diag(s)`, activations are divided by `s`
//!   `<name>`         fp32, every parameter that is not quantized (embeddings, norms, router, ...)
//!
//! The sidecar names the format and method, the step and model it came from, and the size and
//! SHA-256 of the safetensors file. Both are written to temporary files, synced and renamed,
//! the tensors first: the sidecar is the commit, and a sidecar that does not describe the file
//! beside it (a crash between the two renames, a damaged or truncated file) is refused.

use super::table::{Int8Linears, Int8Weight, as_bank, quantized_params};
use crate::params::ParamStore;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// The directory, inside a checkpoint's step directory, of its exports.
pub const DIR: &str = "quantized";
pub const FILE: &str = "int8.safetensors";
pub const SIDECAR: &str = "int8.json";
/// The sidecar's `format`.
pub const FORMAT: &str = "frugal-int8/1";

/// What the sidecar says about the file beside it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sidecar {
    pub format: String,
    /// How the scales were set, in a few words.
    pub method: String,
    /// Step of the checkpoint that was quantized.
    pub step: i64,
    /// The model's fingerprint (names and shapes, [`ParamStore::fingerprint`]).
    pub model_fingerprint: String,
    pub bytes: u64,
    pub sha256: String,
    /// The α calibration chose for each matrix of each quantized parameter (`None`: no
    /// smoothing), by parameter name.
    pub alphas: BTreeMap<String, Vec<Option<f64>>>,
}

fn sha256_of(path: &Path) -> Result<(u64, String)> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok((bytes.len() as u64, hex::encode(Sha256::digest(&bytes))))
}

/// Writes `path` with `write` through a temporary file beside it, synced and renamed into
/// place: a reader finds the old file or the new one, never half of one.
fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    write(&tmp)?;
    fs::File::open(&tmp).and_then(|f| f.sync_all()).with_context(|| format!("syncing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

/// The tensors of the export, by name: codes, scales and smoothing factors of the 8-bit
/// parameters, fp32 for the rest. On the host, contiguous.
pub fn tensors(store: &ParamStore, linears: &Int8Linears) -> Vec<(String, Tensor)> {
    let host = |t: &Tensor| t.to_device(tch::Device::Cpu).contiguous();
    let mut out = Vec::new();
    for (i, s) in store.specs.iter().enumerate() {
        match linears.weights.get(&i) {
            Some(q) => {
                let vector = |t: &Tensor| host(&super::table::vector_from_bank(t, q.dim));
                out.push((s.name.clone(), host(&super::table::from_bank(&q.codes, q.dim))));
                out.push((format!("{}.scale", s.name), vector(&q.scale)));
                if let Some(smooth) = &q.smooth {
                    out.push((format!("{}.smooth", s.name), vector(smooth)));
                }
            }
            None => out.push((s.name.clone(), host(&store.master_view(i)))),
        }
    }
    out
}

/// Writes the export of `store` under `linears` into `step_dir/quantized/`; returns the path of
/// the safetensors file.
pub fn save(step_dir: &Path, store: &ParamStore, linears: &Int8Linears, mut sidecar: Sidecar) -> Result<PathBuf> {
    let dir = step_dir.join(DIR);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(FILE);
    let named = tensors(store, linears);
    write_atomically(&path, |tmp| Tensor::write_safetensors(&named, tmp).with_context(|| format!("writing {}", tmp.display())))?;
    (sidecar.bytes, sidecar.sha256) = sha256_of(&path)?;
    sidecar.format = FORMAT.into();
    let text = serde_json::to_vec_pretty(&sidecar).expect("a sidecar serialises");
    write_atomically(&dir.join(SIDECAR), |tmp| {
        let mut f = fs::File::create(tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(&text).with_context(|| format!("writing {}", tmp.display()))
    })?;
    fs::File::open(&dir).and_then(|f| f.sync_all()).with_context(|| format!("syncing {}", dir.display()))?;
    Ok(path)
}

/// Reads an export back into `store` (a whole model of the job that wrote it, on any device):
/// fp32 parameters into the store, 8-bit ones as the returned weights (and, dequantized, into
/// the store, so that it is complete). `path`: the safetensors file or the directory holding
/// it. Refused, with nothing changed, unless the sidecar describes the file exactly (size and
/// SHA-256), its model is the store's, and every tensor has the name, dtype and shape the model
/// expects.
pub fn load(path: &Path, store: &mut ParamStore) -> Result<(Sidecar, BTreeMap<usize, Int8Weight>)> {
    let file = if path.is_dir() { path.join(FILE) } else { path.to_path_buf() };
    let sidecar_path = file.with_file_name(SIDECAR);
    let refuse = |what: String| anyhow::anyhow!("8-bit export {}: {what}; refusing to load it", file.display());
    let text =
        fs::read(&sidecar_path).map_err(|e| refuse(format!("its sidecar {} cannot be read ({e}): export it again", sidecar_path.display())))?;
    let sidecar: Sidecar = serde_json::from_slice(&text).map_err(|e| refuse(format!("unreadable sidecar {SIDECAR}: {e}")))?;
    if sidecar.format != FORMAT {
        return Err(refuse(format!("format {:?}, this trainer reads {FORMAT:?}", sidecar.format)));
    }
    let (bytes, sha) = sha256_of(&file).map_err(|e| refuse(format!("{e:#}")))?;
    if bytes != sidecar.bytes || sha != sidecar.sha256 {
        return Err(refuse(format!(
            "corrupt: {bytes} bytes with SHA-256 {sha}, the sidecar says {} bytes with {} (a damaged or truncated file: export it again)",
            sidecar.bytes, sidecar.sha256
        )));
    }
    let fp = store.fingerprint();
    if sidecar.model_fingerprint != fp {
        return Err(refuse(format!("it is of a model with fingerprint {}, this job's model has {fp}", sidecar.model_fingerprint)));
    }
    let mut named: BTreeMap<String, Tensor> = Tensor::read_safetensors(&file).map_err(|e| refuse(format!("{e}")))?.into_iter().collect();
    let device = store.device;
    let quantized: Vec<usize> = quantized_params(store);
    let mut weights = BTreeMap::new();
    let mut fp32 = Vec::new();
    let take = |named: &mut BTreeMap<String, Tensor>, name: &str, kind: Kind, shape: &[i64]| -> Result<Tensor> {
        let t = named.remove(name).ok_or_else(|| refuse(format!("no tensor {name}")))?;
        if t.kind() != kind || t.size() != shape {
            return Err(refuse(format!("{name} is {:?} {:?}, the model needs {kind:?} {shape:?}", t.kind(), t.size())));
        }
        Ok(t.to_device(device))
    };
    for (i, s) in store.specs.iter().enumerate() {
        if !quantized.contains(&i) {
            fp32.push((i, take(&mut named, &s.name, Kind::Float, &s.shape)?));
            continue;
        }
        // Per output channel: the shape without the input dimension (1 of [N, K] and [X, K, N]);
        // per input channel: without the output one.
        let mut channels = s.shape.clone();
        channels.remove(1);
        let mut inputs = s.shape.clone();
        inputs.remove(if s.shape.len() == 2 { 0 } else { 2 });
        let codes = take(&mut named, &s.name, Kind::Int8, &s.shape)?;
        let scale = take(&mut named, &format!("{}.scale", s.name), Kind::Float, &channels)?;
        let smooth_name = format!("{}.smooth", s.name);
        let smooth = if named.contains_key(&smooth_name) { Some(take(&mut named, &smooth_name, Kind::Float, &inputs)?) } else { None };
        let bank = |t: &Tensor| if s.shape.len() == 2 { t.unsqueeze(0) } else { t.shallow_clone() };
        weights.insert(i, Int8Weight::from_parts(s.shape.len(), as_bank(&codes), bank(&scale), smooth.as_ref().map(bank)));
    }
    if let Some(extra) = named.keys().next() {
        return Err(refuse(format!("tensor {extra} is not part of this job's model")));
    }
    let _guard = tch::no_grad_guard();
    for (i, t) in fp32 {
        store.master_view(i).copy_(&t);
    }
    for (i, q) in &weights {
        store.master_view(*i).copy_(&q.dequantized());
    }
    store.sync_compute();
    Ok((sidecar, weights))
}
