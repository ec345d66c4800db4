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
//!
//! Stages in pods of their own, without a shared directory, cannot commit a step on disk: each
//! seals its own part instead ([`seal_part`]) into `.step-<n>.part-<i>` (its two files, the first
//! stage's `trainer.json`, and `stage-<i>.part.json`, a manifest of those files), and the step is
//! committed in object storage once every part is there (`remote.rs`). A step brought back from
//! there holds only the parts its pod needs ([`super::PARTIAL`]).

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

/// The files of stage `stage`'s part of a step.
pub fn part_files(stage: usize) -> [String; 2] {
    [part(stage, "model"), part(stage, "optimizer")]
}

/// The manifest of stage `stage`'s part, written after its files.
pub fn part_manifest(stage: usize) -> String {
    format!("stage-{stage}.part.json")
}

/// Whether every one of `stages` parts of step `step` is in the staging directory under `root`
/// (call it after every stage has written its part): false when the stages do not share `root`.
pub fn parts_here(root: &Path, step: i64, stages: usize) -> bool {
    let tmp = root.join(super::staging_name(step, "partial"));
    (0..stages).flat_map(part_files).all(|f| tmp.join(f).exists())
}

/// One stage's part of a step, written by stages that share no directory.
#[derive(Clone, Copy)]
pub struct PartOf<'a> {
    pub step: i64,
    pub stage: usize,
    pub stages: usize,
    pub model_fingerprint: &'a str,
    /// The write every stage's part of this checkpoint names (the first stage's nonce).
    pub write_id: &'a str,
}

/// Seals stage `part.stage`'s part of step `part.step`, written by [`write_part`] under `root`,
/// on its own: its files move into `.step-<n>.part-<stage>`, with `state` (`trainer.json`, the
/// first stage's) and `stage-<stage>.part.json` last, naming the write. The older parts this
/// stage sealed and all but the newest `keep` committed steps under `root` are removed. Returns
/// the part's directory.
pub fn seal_part(root: &Path, part: &PartOf, state: Option<&impl State>, keep: usize) -> Result<PathBuf> {
    let PartOf { step, stage, stages, model_fingerprint, write_id } = *part;
    let suffix = format!("part-{stage}");
    let dir = staging_dir(root, step, &suffix)?;
    let partial = root.join(super::staging_name(step, "partial"));
    let mut files: Vec<String> = part_files(stage).into();
    for f in &files {
        std::fs::rename(partial.join(f), dir.join(f)).map_err(super::io(&dir))?;
    }
    // the other stages of this pod may still be moving theirs out
    let _ = std::fs::remove_dir(&partial);
    if let Some(state) = state {
        write_state(&dir, state)?;
        files.push(super::TRAINER.into());
    }
    let mut manifest = Manifest::new(Layout::Pipelined, step);
    manifest.stages = Some(stages);
    manifest.model_fingerprint = Some(model_fingerprint.into());
    manifest.write_id = Some(write_id.into());
    super::seal_as(&dir, manifest, &files, &part_manifest(stage))?;
    // The previous part's upload has finished (one upload at a time): older parts go.
    for entry in std::fs::read_dir(root).map_err(super::io(root))? {
        let entry = entry.map_err(super::io(root))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some((older, s)) = super::parse_staging(&name)
            && s == suffix
            && older < step
        {
            super::discard(root, older, &entry.path())?;
        }
    }
    super::prune(root, keep)?;
    Ok(dir)
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
    // a step brought from object storage for some stages holds their parts alone
    let here = |names: Vec<String>| -> Vec<String> { names.into_iter().filter(|n| dir.join(n).exists()).collect() };
    let weights = read_tensors(dir, &here(names("model")))?;
    let opt = read_tensors(dir, &here(names("optimizer")))?;
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
