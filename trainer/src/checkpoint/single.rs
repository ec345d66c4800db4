//! The single-process layout: a step directory holding
//!   model.safetensors      fp32 master weights under global parameter names
//!   optimizer.safetensors  optimizer state, `<state>.<parameter name>`
//!   trainer.json           step, tokens, data position (the trainer's RNG), loss scaler
//!   MANIFEST.json          written last (see the module above): sizes and SHA-256 of the files
//!                          above and the model's fingerprint
//! Loading verifies everything before touching a weight.

use super::{Layout, Manifest, Result, commit, mismatch, read_state, read_tensors, restore_tensors, staging_dir, verify, write_state, write_tensors};
use crate::data::DataPosition;
use crate::params::ParamStore;
use crate::train::optim::Optimizer;
use crate::train::precision::LossScaler;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

pub const FORMAT: &str = Layout::Single.format();
const MODEL: &str = "model.safetensors";
const OPTIMIZER: &str = "optimizer.safetensors";

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

/// Writes a checkpoint of `step` under `root` and removes all but the newest `keep`.
pub fn save(root: &Path, store: &ParamStore, optim: &Optimizer, state: &TrainerState, keep: usize) -> Result<PathBuf> {
    let tmp = staging_dir(root, state.step, &format!("tmp-{}", std::process::id()))?;
    // One device-to-host copy per flat buffer, then views under global names.
    let master = store.master.to_device(Device::Cpu);
    let weights: Vec<(String, Tensor)> =
        store.specs.iter().map(|s| (s.name.clone(), master.narrow(0, s.offset, s.numel()).view(s.shape.as_slice()))).collect();
    let opt_state: Vec<(String, Tensor)> = optim.state_tensors(store).into_iter().map(|(n, t)| (n, t.to_device(Device::Cpu).contiguous())).collect();
    write_tensors(&tmp.join(MODEL), &weights)?;
    write_tensors(&tmp.join(OPTIMIZER), &opt_state)?;
    write_state(&tmp, state)?;
    let mut manifest = Manifest::new(Layout::Single, state.step);
    manifest.model_fingerprint = Some(state.model_fingerprint.clone());
    commit(root, &tmp, manifest, &[MODEL.into(), OPTIMIZER.into(), super::TRAINER.into()], keep)
}

/// Verifies a checkpoint and loads it into `store` and `optim`; nothing is modified unless the
/// whole checkpoint is intact and matches.
pub fn load(dir: &Path, store: &mut ParamStore, optim: &mut Optimizer) -> Result<TrainerState> {
    let manifest = verify(dir, Layout::Single)?;
    for name in [MODEL, OPTIMIZER, super::TRAINER] {
        manifest.require(dir, name)?;
    }
    let fp = store.fingerprint();
    let theirs = manifest.model_fingerprint.as_deref().unwrap_or_default();
    if theirs != fp {
        return Err(mismatch(
            dir,
            format!("its model has fingerprint {theirs}, this job's model {fp} (different layers, widths, experts or vocabulary)"),
        ));
    }
    let state: TrainerState = read_state(dir, &manifest, |s: &TrainerState| s.step)?;
    let weights = read_tensors(dir, &[MODEL.into()])?;
    let opt = read_tensors(dir, &[OPTIMIZER.into()])?;
    restore_tensors(dir, store, optim, &weights, &opt, true)?;
    optim.updates = state.optimizer_updates;
    Ok(state)
}
