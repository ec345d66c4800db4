//! The layout every run writes: every stage writes its own part under global parameter names
//! (a run of one stage, one part), and the step is committed only after every stage has written
//! and synced.
//!
//!   step-<n>/stage-<i>.model.safetensors      fp32 master weights of stage i
//!   step-<n>/stage-<i>.optimizer.safetensors  its optimizer state, `<state>.<parameter name>`
//!   step-<n>/trainer.json                     step, tokens, data position, loss scaler
//!   step-<n>/MANIFEST.json                    written last: sizes and SHA-256 of every file
//!
//! The parts are written into `.step-<n>.partial` under the (shared) checkpoint directory; once
//! every stage has written its part, one commits the step as the single-process layout does (the
//! module above). The stages' agreement around it is the workers' (`parallel/checkpoint.rs`).
//! Loading reads every part, so a stage takes the names it holds and any stage count (one
//! included) can resume.

use super::{
    Layout, Manifest, Result, State, Tensors, commit, read_state, read_tensors, restore_tensors, staging_dir, verify, write_state, write_tensors,
};
use crate::params::ParamStore;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::Tensor;

pub const FORMAT: &str = Layout::Pipelined.format();

fn part(stage: usize, what: &str) -> String {
    format!("stage-{stage}.{what}.safetensors")
}

/// Writes stage `stage`'s part of the step `step` under `root` (synced); returns the staging
/// directory.
pub fn write_part(root: &Path, step: i64, stage: usize, tensors: &Tensors) -> Result<PathBuf> {
    let tmp = staging_dir(root, step, "partial")?;
    write_tensors(&tmp.join(part(stage, "model")), &tensors.weights)?;
    write_tensors(&tmp.join(part(stage, "optimizer")), &tensors.optimizer)?;
    Ok(tmp)
}

/// Commits the step of `state` of the model with fingerprint `model_fingerprint` once all
/// `stages` parts are in its staging directory, and removes all but the newest `keep` steps.
pub fn commit_step(root: &Path, state: &impl State, stages: usize, model_fingerprint: &str, keep: usize) -> Result<PathBuf> {
    let tmp = staging_dir(root, state.step(), "partial")?;
    write_state(&tmp, state)?;
    let mut files: Vec<String> = (0..stages).flat_map(|s| [part(s, "model"), part(s, "optimizer")]).collect();
    files.push(super::TRAINER.into());
    let mut manifest = Manifest::new(Layout::Pipelined, state.step());
    manifest.stages = Some(stages);
    manifest.model_fingerprint = Some(model_fingerprint.into());
    commit(root, &tmp, manifest, &files, keep)
}

/// Verifies a committed step, written by any number of stages, of the model with fingerprint
/// `model_fingerprint` (steps written before the manifest recorded it are checked by names and
/// shapes alone), and loads the names `store` holds (and the optimizer's state views
/// `optimizer`) from it; nothing is modified unless the step is intact and matches. Returns its
/// state.
pub fn load<S: State>(dir: &Path, store: &mut ParamStore, optimizer: Vec<(String, Tensor)>, model_fingerprint: &str) -> Result<S> {
    let manifest = verify(dir, Layout::Pipelined)?;
    if manifest.model_fingerprint.is_some() {
        manifest.require_model(dir, model_fingerprint)?;
    }
    let stages = manifest.stages.unwrap_or_default();
    let names = |what: &str| -> Vec<String> { (0..stages).map(|s| part(s, what)).collect() };
    for name in names("model").iter().chain(&names("optimizer")).chain([&super::TRAINER.to_string()]) {
        manifest.require(dir, name)?;
    }
    let state: S = read_state(dir, &manifest)?;
    let weights = read_tensors(dir, &names("model"))?;
    let opt = read_tensors(dir, &names("optimizer"))?;
    restore_tensors(dir, store, optimizer, &weights, &opt, false)?;
    Ok(state)
}

/// Verifies a committed pipelined step and loads the weights of every stage's part into
/// `store`, a whole model (one that does not train on, such as a distillation teacher): the
/// parts together must hold exactly its weights; the optimizer state is not read. Returns the
/// manifest.
pub fn load_weights(dir: &Path, store: &mut ParamStore) -> Result<Manifest> {
    let manifest = verify(dir, Layout::Pipelined)?;
    if manifest.model_fingerprint.is_some() {
        manifest.require_model(dir, &store.fingerprint())?;
    }
    let parts: Vec<String> = (0..manifest.stages.unwrap_or_default()).map(|s| part(s, "model")).collect();
    for name in &parts {
        manifest.require(dir, name)?;
    }
    let weights = read_tensors(dir, &parts)?;
    restore_tensors(dir, store, vec![], &weights, &BTreeMap::new(), true)?;
    Ok(manifest)
}
