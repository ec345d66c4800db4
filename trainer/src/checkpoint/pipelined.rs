//! The pipelined layout: every stage writes its own part under global parameter names, and the
//! step is committed only after every stage has written and synced.
//!
//!   step-<n>/stage-<i>.model.safetensors      fp32 master weights of stage i
//!   step-<n>/stage-<i>.optimizer.safetensors  its optimizer state, `<state>.<parameter name>`
//!   step-<n>/trainer.json                     step, tokens, data position, loss scaler
//!   step-<n>/MANIFEST.json                    written last: sizes and SHA-256 of every file
//!
//! The parts are written into `.step-<n>.partial` under the (shared) checkpoint directory; after a
//! barrier the first stage writes `trainer.json` and commits the step as the single-process
//! layout does (the module above), and a second barrier keeps every stage until it is committed.
//! A SIGTERM reaching all pods mid-step therefore leaves the last complete step. Loading reads
//! every part and takes the names a stage holds, so any stage count (one included) can resume.
//! With tied embeddings only the first stage writes `wte.weight`; the last stage's copy loads
//! from it.

use super::{Layout, Manifest, commit, read_state, read_tensors, restore_tensors, staging_dir, verify, write_state, write_tensors};
use crate::data::DataPosition;
use crate::pipeline::engine::StageWorker;
use crate::train::precision::LossScaler;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

pub const FORMAT: &str = Layout::Pipelined.format();

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

fn part(stage: usize, what: &str) -> String {
    format!("stage-{stage}.{what}.safetensors")
}

/// Writes this stage's part of the checkpoint of its current step and, on the first stage,
/// commits it once every stage has written. Every stage must call it at the same step.
pub fn save(worker: &mut StageWorker, root: &Path, keep: usize) -> Result<PathBuf> {
    let stage = worker.index();
    let tmp = staging_dir(root, worker.step, "partial")?;
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
    write_tensors(&tmp.join(part(stage, "model")), &weights)?;
    write_tensors(&tmp.join(part(stage, "optimizer")), &optimizer)?;
    // Every stage has written and synced its part.
    worker.barrier()?;
    let final_dir = root.join(super::step_dir_name(worker.step));
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
        write_state(&tmp, &state)?;
        let mut files: Vec<String> = (0..worker.stages).flat_map(|s| [part(s, "model"), part(s, "optimizer")]).collect();
        files.push(super::TRAINER.into());
        let mut manifest = Manifest::new(Layout::Pipelined, worker.step);
        manifest.stages = Some(worker.stages);
        commit(root, &tmp, manifest, &files, keep)?;
    }
    // Nobody moves on (or is told the checkpoint exists) before it is committed.
    worker.barrier()?;
    Ok(final_dir)
}

/// Loads a committed pipeline checkpoint, written by any number of stages, into this stage.
pub fn load(worker: &mut StageWorker, dir: &Path) -> Result<PipelineState> {
    let manifest = verify(dir, Layout::Pipelined)?;
    let stages = manifest.stages.unwrap_or_default();
    let names = |what: &str| -> Vec<String> { (0..stages).map(|s| part(s, what)).collect() };
    for name in names("model").iter().chain(&names("optimizer")).chain([&super::TRAINER.to_string()]) {
        manifest.require(dir, name)?;
    }
    let state: PipelineState = read_state(dir, &manifest, |s: &PipelineState| s.step)?;
    let weights = read_tensors(dir, &names("model"))?;
    let optimizer = read_tensors(dir, &names("optimizer"))?;
    restore_tensors(dir, &mut worker.params, &mut worker.optim, &weights, &optimizer, false)?;
    worker.optim.updates = state.optimizer_updates;
    worker.step = state.step;
    worker.tokens = state.tokens;
    worker.scaler = state.loss_scaler.clone();
    if let (Some(data), Some(position)) = (worker.data.as_mut(), &state.data) {
        data.position = position.clone();
    }
    Ok(state)
}
