//! The single-process layout, which the single-process trainer of earlier releases wrote and
//! every run still reads (runs now write `pipelined.rs`'s layout, with one part per stage): a
//! step directory holding
//!   model.safetensors      fp32 master weights under global parameter names
//!   optimizer.safetensors  optimizer state, `<state>.<parameter name>`
//!   trainer.json           step, tokens, data position (the trainer's RNG), loss scaler
//!   MANIFEST.json          written last (see the module above): sizes and SHA-256 of the files
//!                          above and the model's fingerprint
//! Loading verifies everything before touching a weight.

use super::{Layout, Manifest, Result, State, read_state, read_tensors, restore_tensors, verify};
use crate::params::ParamStore;
use std::collections::BTreeMap;
use std::path::Path;
use tch::Tensor;

pub const FORMAT: &str = Layout::Single.format();
const MODEL: &str = "model.safetensors";
const OPTIMIZER: &str = "optimizer.safetensors";

/// Verifies a checkpoint of the model with fingerprint `model_fingerprint` and loads the names
/// `store` holds (the whole model, or one stage's slice of it) into it and the optimizer's
/// state views `optimizer` (`Optimizer::state_tensors`); nothing is modified unless the whole
/// checkpoint is intact and matches. Returns its state.
pub fn load<S: State>(dir: &Path, store: &mut ParamStore, optimizer: Vec<(String, Tensor)>, model_fingerprint: &str) -> Result<S> {
    let manifest = verify(dir, Layout::Single)?;
    for name in [MODEL, OPTIMIZER, super::TRAINER] {
        manifest.require(dir, name)?;
    }
    manifest.require_model(dir, model_fingerprint)?;
    let state: S = read_state(dir, &manifest)?;
    let weights = read_tensors(dir, &[MODEL.into()])?;
    let opt = read_tensors(dir, &[OPTIMIZER.into()])?;
    restore_tensors(dir, store, optimizer, &weights, &opt, false)?;
    Ok(state)
}

/// Verifies a checkpoint and loads its weights alone into `store`, for a model that does not
/// train on (a distillation teacher): the optimizer state is not read. Returns the manifest.
pub fn load_weights(dir: &Path, store: &mut ParamStore) -> Result<Manifest> {
    let manifest = verify(dir, Layout::Single)?;
    manifest.require(dir, MODEL)?;
    manifest.require_model(dir, &store.fingerprint())?;
    let weights = read_tensors(dir, &[MODEL.into()])?;
    restore_tensors(dir, store, vec![], &weights, &BTreeMap::new(), true)?;
    Ok(manifest)
}
