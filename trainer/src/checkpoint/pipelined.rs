//! Pipeline checkpoints: every stage writes its own part under global parameter names, and the
//! step is committed by a manifest written only after every stage has written and synced.
//!
//!   step-<n>/stage-<i>.model.safetensors      fp32 master weights of stage i
//!   step-<n>/stage-<i>.optimizer.safetensors  its optimizer state, `<state>.<parameter name>`
//!   step-<n>/trainer.json                     step, tokens, data position, loss scaler
//!   step-<n>/MANIFEST.json                    written last: sizes and SHA-256 of every file
//!
//! The parts are written into `.step-<n>.partial` under the (shared) checkpoint directory; after a
//! barrier the first stage hashes them, writes the manifest through a temporary file and renames
//! the directory into place, and a second barrier keeps every stage until the step is committed.
//! A SIGTERM reaching all pods mid-step therefore leaves the last complete step. Loading reads
//! every part and takes the names a stage holds, so any stage count (one included) can resume.
//! With tied embeddings only the first stage writes `wte.weight`; the last stage's copy loads
//! from it.

use crate::pipeline::engine::StageWorker;
use crate::checkpoint::step_dir_name;
use crate::data::DataPosition;
use crate::train::precision::LossScaler;
use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

pub use crate::checkpoint::PIPELINED_FORMAT as FORMAT;
const MANIFEST: &str = "MANIFEST.json";
const TRAINER: &str = "trainer.json";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PipelineState {
    pub step: i64,
    pub tokens: i64,
    pub data: Option<DataPosition>,
    pub loss_scaler: LossScaler,
    pub optimizer_updates: i64,
    /// Stages that wrote the checkpoint (any count can load it).
    pub stages: usize,
    pub job: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    format: String,
    step: i64,
    stages: usize,
    /// File name → (bytes, SHA-256).
    files: BTreeMap<String, (u64, String)>,
    /// SHA-256 of this manifest serialised with `checksum` empty.
    checksum: String,
}

impl Manifest {
    fn compute_checksum(&self) -> String {
        let body = serde_json::json!({"format": self.format, "step": self.step, "stages": self.stages, "files": self.files});
        hex::encode(Sha256::digest(body.to_string().as_bytes()))
    }
}

fn hash_file(path: &Path) -> Result<(u64, String)> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok((bytes.len() as u64, hex::encode(Sha256::digest(&bytes))))
}

fn fsync(path: &Path) -> Result<()> {
    File::open(path).and_then(|f| f.sync_all()).with_context(|| format!("syncing {}", path.display()))
}

fn part(stage: usize, what: &str) -> String {
    format!("stage-{stage}.{what}.safetensors")
}

/// Writes this stage's part of the checkpoint of its current step and, on the first stage,
/// commits it once every stage has written. Every stage must call it at the same step.
pub fn save(worker: &mut StageWorker, root: &Path, keep: usize) -> Result<PathBuf> {
    let stage = worker.index();
    let final_dir = root.join(step_dir_name(worker.step));
    let tmp = root.join(format!(".{}.partial", step_dir_name(worker.step)));
    fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let skip = worker.model.tied_copy().map(|id| worker.params.spec(id).name.clone());
    let master = worker.params.master.to_device(Device::Cpu);
    let weights: Vec<(String, Tensor)> = worker
        .params
        .specs
        .iter()
        .filter(|s| Some(&s.name) != skip.as_ref())
        .map(|s| (s.name.clone(), master.narrow(0, s.offset, s.numel()).view(s.shape.as_slice())))
        .collect();
    let optimizer: Vec<(String, Tensor)> = worker
        .optim
        .state_tensors(&worker.params)
        .into_iter()
        .filter(|(n, _)| skip.as_ref().is_none_or(|s| !n.ends_with(&format!(".{s}"))))
        .map(|(n, t)| (n, t.to_device(Device::Cpu).contiguous()))
        .collect();
    for (what, tensors) in [("model", &weights), ("optimizer", &optimizer)] {
        let path = tmp.join(part(stage, what));
        Tensor::write_safetensors(tensors, &path).with_context(|| format!("writing {}", path.display()))?;
        fsync(&path)?;
    }
    // Every stage has written and synced its part.
    worker.barrier()?;
    if stage == 0 {
        let state = PipelineState {
            step: worker.step,
            tokens: worker.tokens,
            data: worker.data.as_ref().map(|d| d.position.clone()),
            loss_scaler: worker.scaler.clone(),
            optimizer_updates: worker.optim.updates,
            stages: worker.stages,
            job: worker.cfg.name.clone(),
        };
        let trainer = tmp.join(TRAINER);
        fs::write(&trainer, serde_json::to_vec_pretty(&state)?)?;
        fsync(&trainer)?;
        let mut files = BTreeMap::new();
        for s in 0..worker.stages {
            for what in ["model", "optimizer"] {
                let name = part(s, what);
                let path = tmp.join(&name);
                ensure!(path.exists(), "stage {s} reached the barrier without writing {}", path.display());
                files.insert(name, hash_file(&path)?);
            }
        }
        files.insert(TRAINER.into(), hash_file(&trainer)?);
        let mut manifest = Manifest { format: FORMAT.into(), step: worker.step, stages: worker.stages, files, checksum: String::new() };
        manifest.checksum = manifest.compute_checksum();
        let manifest_tmp = tmp.join(format!("{MANIFEST}.tmp"));
        {
            let mut f = File::create(&manifest_tmp)?;
            f.write_all(&serde_json::to_vec_pretty(&manifest)?)?;
            f.sync_all()?;
        }
        fs::rename(&manifest_tmp, tmp.join(MANIFEST))?;
        fsync(&tmp)?;
        if final_dir.exists() {
            fs::remove_dir_all(&final_dir)?;
        }
        fs::rename(&tmp, &final_dir).with_context(|| format!("committing {}", final_dir.display()))?;
        fsync(root)?;
        let all = crate::checkpoint::list(root)?;
        if keep > 0 && all.len() > keep {
            for (_, p) in &all[..all.len() - keep] {
                fs::remove_dir_all(p)?;
            }
        }
    }
    // Nobody moves on (or is told the checkpoint exists) before it is committed.
    worker.barrier()?;
    Ok(final_dir)
}

fn verify(dir: &Path) -> Result<Manifest> {
    let text = fs::read(dir.join(MANIFEST))?;
    if let Some(why) = crate::checkpoint::other_layout(&text, FORMAT) {
        bail!("checkpoint {} does not match this job: {why}", dir.display());
    }
    let manifest: Manifest = serde_json::from_slice(&text).with_context(|| format!("checkpoint {}: unreadable manifest", dir.display()))?;
    ensure!(manifest.format == FORMAT, "checkpoint {}: format {:?}, expected {FORMAT:?}", dir.display(), manifest.format);
    ensure!(manifest.checksum == manifest.compute_checksum(), "checkpoint {}: manifest checksum does not match its contents", dir.display());
    for (name, (bytes, sha)) in &manifest.files {
        let got = hash_file(&dir.join(name))?;
        if got != (*bytes, sha.clone()) {
            bail!(
                "checkpoint {}: {name} has {} bytes with SHA-256 {}, the manifest says {bytes} with {sha}; refusing a corrupt checkpoint",
                dir.display(),
                got.0,
                got.1
            );
        }
    }
    Ok(manifest)
}

/// Loads a committed pipeline checkpoint, written by any number of stages, into this stage.
pub fn load(worker: &mut StageWorker, dir: &Path) -> Result<PipelineState> {
    let manifest = verify(dir)?;
    let state: PipelineState = serde_json::from_slice(&fs::read(dir.join(TRAINER))?)?;
    ensure!(state.step == manifest.step, "checkpoint {}: trainer.json says step {}, the manifest {}", dir.display(), state.step, manifest.step);
    let read = |what: &str| -> Result<BTreeMap<String, Tensor>> {
        let mut all = BTreeMap::new();
        for s in 0..manifest.stages {
            let p = dir.join(part(s, what));
            all.extend(Tensor::read_safetensors(&p).with_context(|| format!("reading {}", p.display()))?);
        }
        Ok(all)
    };
    let weights = read("model")?;
    let optimizer = read("optimizer")?;
    let wanted = worker.optim.state_tensors(&worker.params);
    // Check everything before copying anything.
    for s in &worker.params.specs {
        let t = weights.get(&s.name).with_context(|| format!("checkpoint {} has no weight {}", dir.display(), s.name))?;
        ensure!(t.size() == s.shape, "checkpoint {}: {} is {:?}, this model's {:?}", dir.display(), s.name, t.size(), s.shape);
    }
    for (name, t) in &wanted {
        let src = optimizer.get(name).with_context(|| format!("checkpoint {} has no optimizer state {name} (another optimizer?)", dir.display()))?;
        ensure!(src.size() == t.size(), "checkpoint {}: optimizer state {name} is {:?}, expected {:?}", dir.display(), src.size(), t.size());
    }
    tch::no_grad(|| {
        for i in 0..worker.params.specs.len() {
            worker.params.master_view(i).copy_(&weights[&worker.params.specs[i].name]);
        }
        for (name, mut t) in wanted {
            t.copy_(&optimizer[&name]);
        }
    });
    worker.params.sync_compute();
    worker.optim.updates = state.optimizer_updates;
    worker.step = state.step;
    worker.tokens = state.tokens;
    worker.scaler = state.loss_scaler.clone();
    if let (Some(data), Some(position)) = (worker.data.as_mut(), &state.data) {
        data.position = position.clone();
    }
    Ok(state)
}
