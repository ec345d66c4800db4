//! Checkpoints: a directory per step holding
//!   model.safetensors      fp32 master weights under global parameter names
//!   optimizer.safetensors  optimizer state, `<state>.<parameter name>`
//!   trainer.json           step, tokens, data position (the trainer's RNG), loss scaler
//!   MANIFEST.json          written last: sizes and SHA-256 of the files above, self-checksummed
//! The files are written into a temporary directory, synced, the manifest is written through a
//! temporary file, synced and renamed, and the directory is renamed into place: a step either
//! is complete on disk or does not exist. Loading verifies everything before touching a weight.

use crate::data::DataPosition;
use crate::train::optim::Optimizer;
use crate::params::ParamStore;
use crate::train::precision::LossScaler;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

pub const FORMAT: &str = "frugal-checkpoint/1";
const MANIFEST: &str = "MANIFEST.json";
const MODEL: &str = "model.safetensors";
const OPTIMIZER: &str = "optimizer.safetensors";
const TRAINER: &str = "trainer.json";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {path}: {what}; refusing to load a corrupt checkpoint")]
    Corrupt { path: PathBuf, what: String },
    #[error("checkpoint {path} does not match this job: {what}")]
    Mismatch { path: PathBuf, what: String },
    #[error("checkpoint {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("checkpoint {path}: {source}")]
    Tensor { path: PathBuf, source: tch::TchError },
}

impl CheckpointError {
    /// The checkpoint's files are damaged or incomplete (an older one may be intact), as opposed
    /// to a checkpoint of another model, or a directory that cannot be read at all.
    pub fn is_corrupt(&self) -> bool {
        matches!(self, Self::Corrupt { .. } | Self::Tensor { .. })
    }
}

type Result<T> = std::result::Result<T, CheckpointError>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io { path: path.to_path_buf(), source }
}

/// Everything besides tensors that a resumed run needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    pub step: i64,
    pub tokens: i64,
    pub data: DataPosition,
    pub loss_scaler: LossScaler,
    pub optimizer_updates: i64,
    pub model_fingerprint: String,
    pub job: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct FileEntry {
    bytes: u64,
    sha256: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    format: String,
    step: i64,
    model_fingerprint: String,
    files: BTreeMap<String, FileEntry>,
    /// SHA-256 of this manifest serialised with `checksum` empty.
    checksum: String,
}

impl Manifest {
    fn compute_checksum(&self) -> String {
        let body = serde_json::to_vec(&Manifest {
            format: self.format.clone(),
            step: self.step,
            model_fingerprint: self.model_fingerprint.clone(),
            files: self.files.iter().map(|(k, v)| (k.clone(), FileEntry { bytes: v.bytes, sha256: v.sha256.clone() })).collect(),
            checksum: String::new(),
        })
        .expect("manifest serialises");
        hex::encode(Sha256::digest(&body))
    }
}

fn sha256_file(path: &Path) -> Result<(u64, String)> {
    let mut f = File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).map_err(io(path))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((n, hex::encode(h.finalize())))
}

fn fsync(path: &Path) -> Result<()> {
    File::open(path).and_then(|f| f.sync_all()).map_err(io(path))
}

pub fn step_dir_name(step: i64) -> String {
    format!("step-{step:09}")
}

/// Writes a checkpoint of `step` under `root` and removes all but the newest `keep`.
pub fn save(root: &Path, store: &ParamStore, optim: &Optimizer, state: &TrainerState, keep: usize) -> Result<PathBuf> {
    fs::create_dir_all(root).map_err(io(root))?;
    let final_dir = root.join(step_dir_name(state.step));
    let tmp = root.join(format!(".{}.tmp-{}", step_dir_name(state.step), std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    fs::create_dir_all(&tmp).map_err(io(&tmp))?;

    // One device-to-host copy per flat buffer, then views under global names.
    let master = store.master.to_device(Device::Cpu);
    let weights: Vec<(String, Tensor)> =
        store.specs.iter().map(|s| (s.name.clone(), master.narrow(0, s.offset, s.numel()).view(s.shape.as_slice()))).collect();
    let opt_state: Vec<(String, Tensor)> = optim.state_tensors(store).into_iter().map(|(n, t)| (n, t.to_device(Device::Cpu).contiguous())).collect();
    let tensor_err = |p: &Path| {
        let p = p.to_path_buf();
        move |source| CheckpointError::Tensor { path: p, source }
    };
    let model_path = tmp.join(MODEL);
    Tensor::write_safetensors(&weights, &model_path).map_err(tensor_err(&model_path))?;
    let opt_path = tmp.join(OPTIMIZER);
    Tensor::write_safetensors(&opt_state, &opt_path).map_err(tensor_err(&opt_path))?;
    let trainer_path = tmp.join(TRAINER);
    fs::write(&trainer_path, serde_json::to_vec_pretty(state).expect("state serialises")).map_err(io(&trainer_path))?;

    let mut files = BTreeMap::new();
    for name in [MODEL, OPTIMIZER, TRAINER] {
        let p = tmp.join(name);
        fsync(&p)?;
        let (bytes, sha256) = sha256_file(&p)?;
        files.insert(name.to_string(), FileEntry { bytes, sha256 });
    }
    let mut manifest =
        Manifest { format: FORMAT.into(), step: state.step, model_fingerprint: state.model_fingerprint.clone(), files, checksum: String::new() };
    manifest.checksum = manifest.compute_checksum();
    let manifest_tmp = tmp.join(format!("{MANIFEST}.tmp"));
    {
        let mut f = File::create(&manifest_tmp).map_err(io(&manifest_tmp))?;
        f.write_all(&serde_json::to_vec_pretty(&manifest).expect("manifest serialises")).map_err(io(&manifest_tmp))?;
        f.sync_all().map_err(io(&manifest_tmp))?;
    }
    fs::rename(&manifest_tmp, tmp.join(MANIFEST)).map_err(io(&tmp))?;
    fsync(&tmp)?;
    if final_dir.exists() {
        fs::remove_dir_all(&final_dir).map_err(io(&final_dir))?;
    }
    fs::rename(&tmp, &final_dir).map_err(io(&final_dir))?;
    fsync(root)?;
    prune(root, keep)?;
    Ok(final_dir)
}

/// Committed checkpoints under `root`, oldest first.
pub fn list(root: &Path) -> Result<Vec<(i64, PathBuf)>> {
    if !root.exists() {
        return Ok(vec![]);
    }
    let mut out = vec![];
    for entry in fs::read_dir(root).map_err(io(root))? {
        let entry = entry.map_err(io(root))?;
        let name = entry.file_name().to_string_lossy().to_string();
        if let Some(step) = name.strip_prefix("step-").and_then(|s| s.parse::<i64>().ok())
            && entry.path().join(MANIFEST).exists()
        {
            out.push((step, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Renames a corrupt checkpoint `<step dir>.corrupt` (`.corrupt-2`, ... if taken), out of
/// [`list`]'s sight but kept for a person to look at; returns the new path.
pub fn set_aside(dir: &Path) -> Result<PathBuf> {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut aside = dir.with_file_name(format!("{name}.corrupt"));
    let mut n = 2;
    while aside.exists() {
        aside = dir.with_file_name(format!("{name}.corrupt-{n}"));
        n += 1;
    }
    fs::rename(dir, &aside).map_err(io(dir))?;
    if let Some(root) = dir.parent() {
        fsync(root)?;
    }
    Ok(aside)
}

pub fn latest(root: &Path) -> Result<Option<PathBuf>> {
    Ok(list(root)?.pop().map(|(_, p)| p))
}

fn prune(root: &Path, keep: usize) -> Result<()> {
    let all = list(root)?;
    if keep > 0 && all.len() > keep {
        for (_, p) in &all[..all.len() - keep] {
            fs::remove_dir_all(p).map_err(io(p))?;
        }
    }
    Ok(())
}

/// The `format` of a pipelined run's manifest (one part per stage; `pipeline/checkpoint.rs`).
pub const PIPELINED_FORMAT: &str = "frugal-pipeline-checkpoint/1";

/// Why a manifest in the other layout (single-process or pipelined) cannot load here, if it is
/// one: its `format` names the other layout. Anything else is left to the full parse.
pub(crate) fn other_layout(manifest: &[u8], expected: &str) -> Option<String> {
    let format = serde_json::from_slice::<serde_json::Value>(manifest).ok()?.get("format")?.as_str()?.to_string();
    let pipelined = PIPELINED_FORMAT;
    match format.as_str() {
        f if f == expected => None,
        f if f == pipelined => Some(
            "it was written by a pipelined run (one part per stage), and this job trains in one process: resume it with \
             the job that wrote it (parallelism.pipelineStages > 1); `frugal-trainer eval` of that job reads it"
                .into(),
        ),
        f if f == FORMAT => Some(
            "it was written by a single-process run, and this job trains as a pipeline: resume it with the job that \
             wrote it (parallelism.pipelineStages 1)"
                .into(),
        ),
        _ => None,
    }
}

fn verify(dir: &Path) -> Result<Manifest> {
    let corrupt = |what: String| CheckpointError::Corrupt { path: dir.to_path_buf(), what };
    let mpath = dir.join(MANIFEST);
    let text = fs::read(&mpath).map_err(io(&mpath))?;
    if let Some(why) = other_layout(&text, FORMAT) {
        return Err(CheckpointError::Mismatch { path: dir.to_path_buf(), what: why });
    }
    let manifest: Manifest = serde_json::from_slice(&text).map_err(|e| corrupt(format!("unreadable manifest: {e}")))?;
    if manifest.format != FORMAT {
        return Err(corrupt(format!("format {:?}, expected {FORMAT:?}", manifest.format)));
    }
    if manifest.checksum != manifest.compute_checksum() {
        return Err(corrupt("manifest checksum does not match its contents".into()));
    }
    for name in [MODEL, OPTIMIZER, TRAINER] {
        let entry = manifest.files.get(name).ok_or_else(|| corrupt(format!("manifest lists no {name}")))?;
        let p = dir.join(name);
        if !p.exists() {
            return Err(corrupt(format!("{name} is missing")));
        }
        let (bytes, sha) = sha256_file(&p)?;
        if bytes != entry.bytes || sha != entry.sha256 {
            return Err(corrupt(format!(
                "{name} has {bytes} bytes with SHA-256 {sha}, the manifest says {} bytes with {}",
                entry.bytes, entry.sha256
            )));
        }
    }
    Ok(manifest)
}

/// Verifies a checkpoint and loads it into `store` and `optim`; nothing is modified unless the
/// whole checkpoint is intact and matches.
pub fn load(dir: &Path, store: &mut ParamStore, optim: &mut Optimizer) -> Result<TrainerState> {
    let mismatch = |what: String| CheckpointError::Mismatch { path: dir.to_path_buf(), what };
    let corrupt = |what: String| CheckpointError::Corrupt { path: dir.to_path_buf(), what };
    let manifest = verify(dir)?;
    let fp = store.fingerprint();
    if manifest.model_fingerprint != fp {
        return Err(mismatch(format!(
            "its model has fingerprint {}, this job's model {fp} (different layers, widths, experts or vocabulary)",
            manifest.model_fingerprint
        )));
    }
    let tp = dir.join(TRAINER);
    let state: TrainerState = serde_json::from_slice(&fs::read(&tp).map_err(io(&tp))?).map_err(|e| corrupt(format!("unreadable {TRAINER}: {e}")))?;
    if state.step != manifest.step {
        return Err(corrupt(format!("{TRAINER} says step {}, the manifest {}", state.step, manifest.step)));
    }
    let read = |name: &str| -> Result<BTreeMap<String, Tensor>> {
        let p = dir.join(name);
        Ok(Tensor::read_safetensors(&p).map_err(|source| CheckpointError::Tensor { path: p.clone(), source })?.into_iter().collect())
    };
    let weights = read(MODEL)?;
    let opt = read(OPTIMIZER)?;
    // Check every name, shape and dtype before copying anything.
    if weights.len() != store.specs.len() {
        return Err(mismatch(format!("{} weights in the checkpoint, {} in the model", weights.len(), store.specs.len())));
    }
    for s in &store.specs {
        let t = weights.get(&s.name).ok_or_else(|| mismatch(format!("no weight named {}", s.name)))?;
        if t.size() != s.shape || t.kind() != Kind::Float {
            return Err(mismatch(format!("{}: {:?} {:?} in the checkpoint, {:?} f32 in the model", s.name, t.size(), t.kind(), s.shape)));
        }
    }
    let wanted = optim.state_tensors(store);
    if opt.len() != wanted.len() {
        return Err(mismatch(format!(
            "{} optimizer tensors in the checkpoint, {} expected (was it written with another optimizer?)",
            opt.len(),
            wanted.len()
        )));
    }
    for (name, dst) in &wanted {
        let t = opt.get(name).ok_or_else(|| mismatch(format!("no optimizer state named {name} (another optimizer?)")))?;
        if t.size() != dst.size() {
            return Err(mismatch(format!("optimizer state {name}: {:?} in the checkpoint, {:?} expected", t.size(), dst.size())));
        }
    }
    let _guard = tch::no_grad_guard();
    for (i, s) in store.specs.iter().enumerate() {
        store.master_view(i).copy_(&weights[&s.name]);
    }
    for (name, mut dst) in wanted {
        dst.copy_(&opt[&name]);
    }
    optim.updates = state.optimizer_updates;
    store.sync_compute();
    Ok(state)
}
