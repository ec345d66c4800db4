//! The single-process layout: a step directory holding
//!   model.safetensors      fp32 master weights under global parameter names
//!   optimizer.safetensors  optimizer state, `<state>.<parameter name>`
//!   trainer.json           step, tokens, data position (the trainer's RNG), loss scaler
//!   MANIFEST.json          written last (see the module above): sizes and SHA-256 of the files
//!                          above and the model's fingerprint
//! Loading verifies everything before touching a weight.

use super::{
    Layout, Manifest, Result, State, Tensors, commit, mismatch, read_state, read_tensors, restore_tensors, staging_dir, verify, write_state,
    write_tensors,
};
use crate::params::ParamStore;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::Tensor;

pub const FORMAT: &str = Layout::Single.format();
const MODEL: &str = "model.safetensors";
const OPTIMIZER: &str = "optimizer.safetensors";

/// Writes a checkpoint of `state`'s step under `root`, of the model with fingerprint
/// `model_fingerprint`, and removes all but the newest `keep`.
pub fn save(root: &Path, tensors: &Tensors, state: &impl State, model_fingerprint: &str, keep: usize) -> Result<PathBuf> {
    let tmp = staging_dir(root, state.step(), &format!("tmp-{}", std::process::id()))?;
    write_tensors(&tmp.join(MODEL), &tensors.weights)?;
    write_tensors(&tmp.join(OPTIMIZER), &tensors.optimizer)?;
    write_state(&tmp, state)?;
    let mut manifest = Manifest::new(Layout::Single, state.step());
    manifest.model_fingerprint = Some(model_fingerprint.into());
    commit(root, &tmp, manifest, &[MODEL.into(), OPTIMIZER.into(), super::TRAINER.into()], keep)
}

/// Verifies a checkpoint and loads it into `store` and the optimizer's state views `optimizer`
/// (`Optimizer::state_tensors`); nothing is modified unless the whole checkpoint is intact and
/// matches. Returns its state.
pub fn load<S: State>(dir: &Path, store: &mut ParamStore, optimizer: Vec<(String, Tensor)>) -> Result<S> {
    let manifest = verify(dir, Layout::Single)?;
    for name in [MODEL, OPTIMIZER, super::TRAINER] {
        manifest.require(dir, name)?;
    }
    same_model(dir, &manifest, store)?;
    let state: S = read_state(dir, &manifest)?;
    let weights = read_tensors(dir, &[MODEL.into()])?;
    let opt = read_tensors(dir, &[OPTIMIZER.into()])?;
    restore_tensors(dir, store, optimizer, &weights, &opt, true)?;
    Ok(state)
}

/// Verifies a checkpoint and loads its weights alone into `store`, for a model that does not
/// train on (a distillation teacher): the optimizer state is not read. Returns the manifest.
pub fn load_weights(dir: &Path, store: &mut ParamStore) -> Result<Manifest> {
    let manifest = verify(dir, Layout::Single)?;
    manifest.require(dir, MODEL)?;
    same_model(dir, &manifest, store)?;
    let weights = read_tensors(dir, &[MODEL.into()])?;
    restore_tensors(dir, store, vec![], &weights, &BTreeMap::new(), true)?;
    Ok(manifest)
}

/// Refuses a checkpoint of another model than `store`'s.
fn same_model(dir: &Path, manifest: &Manifest, store: &ParamStore) -> Result<()> {
    let fp = store.fingerprint();
    let theirs = manifest.model_fingerprint.as_deref().unwrap_or_default();
    if theirs != fp {
        return Err(mismatch(
            dir,
            format!("its model has fingerprint {theirs}, this job's model {fp} (different layers, widths, experts or vocabulary)"),
        ));
    }
    Ok(())
}
