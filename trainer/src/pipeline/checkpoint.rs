//! A pipelined run's checkpoints (the layout: `checkpoint/pipelined.rs`): every stage of the first
//! replica writes its part, a barrier, the first stage writes `trainer.json` and commits the
//! step, and a second barrier, across every replica, keeps every stage until it is committed.
//! The data position between steps is the same in every replica, so a checkpoint resumes under
//! any replica count as under any stage count. A SIGTERM reaching all pods mid-step
//! therefore leaves the last complete step. With tied embeddings only the first stage writes
//! `wte.weight`; the last stage's copy loads from it.

use super::engine::StageWorker;
use crate::checkpoint::{self, State, Tensors, pipelined};
use crate::data::DataPosition;
use crate::train::precision::LossScaler;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

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

impl State for PipelineState {
    fn step(&self) -> i64 {
        self.step
    }
}

/// Writes this stage's part of the checkpoint of its current step and, on the first stage,
/// commits it once every stage has written. Every stage of every replica must call it at the
/// same step. The first replica writes (every replica holds the same weights); with the
/// optimizer state sharded, the replicas first sum their shards into the whole state (a
/// checkpoint holds it whole, so that any replica count can resume it).
pub fn save(worker: &mut StageWorker, root: &Path, keep: usize) -> Result<PathBuf> {
    let skip = worker.model.tied_copy().map(|id| worker.params.spec(id).name.clone());
    let optimizer = match (&worker.shards, worker.ring.as_mut()) {
        (Some(_), Some(ring)) => {
            let whole = worker.optim.widened(&worker.params);
            for buffer in whole.state_buffers() {
                ring.all_reduce(buffer, worker.bucket_elements)?;
            }
            whole.state_tensors(&worker.params)
        }
        _ => worker.optim.state_tensors(&worker.params),
    };
    if worker.replica == 0 {
        let tensors = Tensors::of(&worker.params, optimizer, skip.as_deref());
        pipelined::write_part(root, worker.step, worker.index(), &tensors)?;
        // Every stage has written and synced its part.
        worker.barrier()?;
        if worker.index() == 0 {
            let state = PipelineState {
                step: worker.step,
                tokens: worker.tokens,
                data: worker.data.as_ref().map(|d| d.position.clone()),
                loss_scaler: worker.scaler.clone(),
                optimizer_updates: worker.optim.updates,
                stages: worker.stages,
                job: worker.cfg.name.clone(),
            };
            pipelined::commit_step(root, &state, worker.stages, keep)?;
        }
    }
    // Nobody moves on (or is told the checkpoint exists) before it is committed.
    worker.barrier_global()?;
    Ok(root.join(checkpoint::step_dir_name(worker.step)))
}

/// Loads a committed pipeline checkpoint, written by any number of stages, into this stage.
pub fn load(worker: &mut StageWorker, dir: &Path) -> Result<PipelineState> {
    let optimizer = worker.optim.state_tensors(&worker.params);
    let state: PipelineState = pipelined::load(dir, &mut worker.params, optimizer)?;
    worker.optim.updates = state.optimizer_updates;
    worker.step = state.step;
    worker.tokens = state.tokens;
    worker.scaler = state.loss_scaler.clone();
    if let (Some(data), Some(position)) = (worker.data.as_mut(), &state.data) {
        data.position = position.clone();
    }
    Ok(state)
}
