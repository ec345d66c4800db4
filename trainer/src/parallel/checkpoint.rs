//! A run's checkpoints, whatever its stages and replicas (the layout: `checkpoint/pipelined.rs`):
//! every stage of the first replica writes its part, a barrier, the first stage writes
//! `trainer.json` and commits the step, and a second barrier, across every replica, keeps every
//! stage until it is committed. A 1×1 run writes the same layout with one part. The data
//! position between steps is the same in every replica, so a checkpoint resumes under any
//! replica count as under any stage count. A SIGTERM reaching all pods mid-step therefore leaves
//! the last complete step. With tied embeddings only the first stage writes `wte.weight`; the
//! last stage's copy loads from it. Steps written by the earlier single-process trainer
//! (`checkpoint/single.rs`) load too, into any stage count.

use super::worker::Worker;
use crate::checkpoint::remote::{self, Uploaded, Uploader};
use crate::checkpoint::{self, Layout, State, Tensors, pipelined, single};
use crate::data::DataPosition;
use crate::model::gpt::Gpt;
use crate::params::ParamBuilder;
use crate::report::event;
use crate::train::precision::LossScaler;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a run stopped by SIGTERM waits for its last checkpoint's upload, unless
/// `FRUGAL_UPLOAD_GRACE_SECONDS` says otherwise: well inside the pods' grace period (300 s), so
/// that the trainer exits on its own, having written its checkpoint first.
pub const UPLOAD_GRACE: Duration = Duration::from_secs(120);

/// `trainer.json`: everything besides tensors that a resumed run needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    pub step: i64,
    pub tokens: i64,
    pub data: Option<DataPosition>,
    pub loss_scaler: LossScaler,
    pub optimizer_updates: i64,
    /// Stages that wrote the checkpoint (any count can load it).
    pub stages: usize,
    pub job: String,
}

impl State for RunState {
    fn step(&self) -> i64 {
        self.step
    }
}

/// `trainer.json` of a step the single-process trainer wrote (`frugal-checkpoint/1`).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct SingleState {
    step: i64,
    tokens: i64,
    data: DataPosition,
    loss_scaler: LossScaler,
    optimizer_updates: i64,
    job: String,
}

impl State for SingleState {
    fn step(&self) -> i64 {
        self.step
    }
}

impl From<SingleState> for RunState {
    fn from(s: SingleState) -> Self {
        Self {
            step: s.step,
            tokens: s.tokens,
            data: Some(s.data),
            loss_scaler: s.loss_scaler,
            optimizer_updates: s.optimizer_updates,
            stages: 1,
            job: s.job,
        }
    }
}

/// The fingerprint of the whole model a worker's slice belongs to (names and shapes), which a
/// step records and a resume compares.
fn model_fingerprint(worker: &Worker) -> String {
    let mut b = ParamBuilder::default();
    Gpt::new(&mut b, &worker.cfg.model);
    b.fingerprint()
}

impl Worker {
    /// Writes this stage's part of the checkpoint of its current step and, on the first stage,
    /// commits it once every stage has written; `None` without a checkpoint directory. Every
    /// stage of every replica must call it at the same step. The first replica writes (every
    /// replica holds the same weights); with the optimizer state sharded, the replicas first sum
    /// their shards into the whole state (a checkpoint holds it whole, so that any replica count
    /// can resume it).
    ///
    /// With `spec.checkpoint.store`, the part that commits then uploads the step in the
    /// background ([`Uploader`]), once the previous upload has finished.
    pub fn save_checkpoint(&mut self) -> Result<Option<PathBuf>> {
        let Some(root) = self.cfg.checkpoint_dir.clone() else { return Ok(None) };
        let keep = self.cfg.keep_checkpoints;
        if self.commits_checkpoints() {
            // before this commit prunes the local steps that upload reads
            self.wait_for_upload(None);
        }
        let dir = self.save_checkpoint_in(&root, keep)?;
        let step = self.step;
        if self.commits_checkpoints()
            && let Some(uploader) = self.checkpoint_uploader()?
        {
            uploader.start(dir.clone(), step)?;
        }
        Ok(Some(dir))
    }

    /// Whether this part commits the run's checkpoints (and uploads them): the first stage of
    /// the first replica.
    pub fn commits_checkpoints(&self) -> bool {
        self.replica == 0 && self.index() == 0
    }

    /// The uploader to `spec.checkpoint.store`, connected on first use; `None` without one.
    fn checkpoint_uploader(&mut self) -> Result<Option<&mut Uploader>> {
        let Some(spec) = &self.cfg.checkpoint_store else { return Ok(None) };
        if self.uploader.is_none() {
            let location = crate::store::Location::of(remote::STORE_FIELD, spec).map_err(anyhow::Error::msg)?;
            let store = location.open().map_err(anyhow::Error::msg)?;
            self.uploader = Some(Uploader::new(store, self.cfg.keep_checkpoints));
        }
        Ok(self.uploader.as_mut())
    }

    /// Waits for the upload in flight, at most `deadline` (for ever when `None`), and records its
    /// outcome: a finished one in [`Worker::uploaded`], a failed one on stderr (the bucket's
    /// newest step stays the previous one; the next checkpoint uploads anew). Returns whether
    /// nothing is left going up.
    pub fn wait_for_upload(&mut self, deadline: Option<Duration>) -> bool {
        let Some(uploader) = self.uploader.as_mut() else { return true };
        let step = uploader.in_flight();
        match uploader.wait(deadline) {
            Some(outcome) => {
                self.record_upload(step.unwrap_or_default(), outcome);
                true
            }
            None if step.is_some() => {
                let uri = self.uploader.as_ref().map(|u| u.store().location.uri()).unwrap_or_default();
                crate::warn!(
                    "the upload of step {} to {uri} did not finish within {:?}; its manifest is not there, so the bucket's newest step stays the one before",
                    step.unwrap_or_default(),
                    deadline.unwrap_or_default()
                );
                false
            }
            None => true,
        }
    }

    /// Collects an upload that has finished, without waiting.
    pub fn poll_upload(&mut self) {
        let Some(uploader) = self.uploader.as_mut() else { return };
        let step = uploader.in_flight().unwrap_or_default();
        if let Some(outcome) = uploader.poll() {
            self.record_upload(step, outcome);
        }
    }

    fn record_upload(&mut self, step: i64, outcome: Result<Uploaded>) {
        match outcome {
            Ok(up) => self.uploaded.push(up),
            Err(e) => crate::warn!("uploading step {step} failed: {e:#}; the bucket's newest step stays the one before"),
        }
    }

    /// The uploads finished since the last call.
    pub fn take_uploads(&mut self) -> Vec<Uploaded> {
        std::mem::take(&mut self.uploaded)
    }

    /// [`Worker::save_checkpoint`] under `root`, keeping the newest `keep` steps there.
    pub fn save_checkpoint_in(&mut self, root: &Path, keep: usize) -> Result<PathBuf> {
        let skip = self.model.tied_copy().map(|id| self.params.spec(id).name.clone());
        let optimizer = match (&self.shards, self.ring.as_mut()) {
            (Some(_), Some(ring)) => {
                let whole = self.optim.widened(&self.params);
                for buffer in whole.state_buffers() {
                    ring.all_reduce(buffer, self.bucket_elements)?;
                }
                whole.state_tensors(&self.params)
            }
            _ => self.optim.state_tensors(&self.params),
        };
        if self.replica == 0 {
            let tensors = Tensors::of(&self.params, optimizer, skip.as_deref());
            pipelined::write_part(root, self.step, self.index(), &tensors)?;
            // Every stage has written and synced its part.
            self.barrier()?;
            if self.index() == 0 {
                let state = RunState {
                    step: self.step,
                    tokens: self.tokens,
                    data: self.data.as_ref().map(|d| d.position.clone()),
                    loss_scaler: self.scaler.clone(),
                    optimizer_updates: self.optim.updates,
                    stages: self.stages,
                    job: self.cfg.name.clone(),
                };
                pipelined::commit_step(root, &state, self.stages, &model_fingerprint(self), keep)?;
            }
        }
        // Nobody moves on (or is told the checkpoint exists) before it is committed.
        self.barrier_global()?;
        Ok(root.join(checkpoint::step_dir_name(self.step)))
    }

    /// Loads the committed step `dir` (either layout, written by any number of stages) into this
    /// stage: its weights, optimizer state, step, tokens, loss scale and data position. Nothing
    /// is modified unless the step is intact and of this model.
    pub fn restore(&mut self, dir: &Path) -> Result<RunState> {
        let optimizer = self.optim.state_tensors(&self.params);
        let fingerprint = model_fingerprint(self);
        let state: RunState = match checkpoint::layout_of(dir)? {
            Layout::Single => single::load::<SingleState>(dir, &mut self.params, optimizer, &fingerprint)?.into(),
            Layout::Pipelined => pipelined::load(dir, &mut self.params, optimizer, &fingerprint)?,
        };
        self.optim.updates = state.optimizer_updates;
        self.step = state.step;
        self.tokens = state.tokens;
        self.scaler = state.loss_scaler.clone();
        if let (Some(data), Some(position)) = (self.data.as_mut(), &state.data) {
            data.position = position.clone();
        }
        Ok(state)
    }

    /// Resumes from the newest committed step that is intact, if any. Every stage of every
    /// replica loads the same step (verification reads the manifest every stage wrote, so each
    /// passes over the same corrupt steps); once all have, the first stage of the first replica
    /// renames the corrupt ones `<step dir>.corrupt` so that nothing lists them again, and they
    /// are named in [`Worker::skipped_checkpoints`]. When every step is corrupt, or one belongs
    /// to another model, the error is returned and nothing is loaded or renamed: the run does not
    /// start over on top of checkpoints it cannot read.
    pub fn resume(&mut self) -> Result<Option<event::Resume>> {
        let Some(root) = self.cfg.checkpoint_dir.clone() else { return Ok(None) };
        self.skipped_checkpoints.clear();
        // the first stage of the first replica shows the download and verification of the step
        let shown = (self.index() == 0 && self.replica == 0).then(crate::progress::shown);
        let in_bucket = self.fetch_from_store(&root)?;
        let resumed = checkpoint::newest_intact(&root, |dir| self.restore(dir))?;
        drop(shown);
        let step = resumed.as_ref().map_or(-1, |r| r.loaded.step);
        let agreed = self.agree(&[step as f64, 1.0])?;
        anyhow::ensure!(
            agreed[0] == step as f64 * agreed[1],
            "the run's stages resumed from different checkpoints (this stage from step {step}); look for a checkpoint another stage cannot read"
        );
        let Some(resumed) = resumed else {
            anyhow::ensure!(
                in_bucket.is_empty(),
                "no intact checkpoint to resume from: the local directory holds none, and the store's steps are corrupt:\n  {}",
                in_bucket.join("\n  ")
            );
            return Ok(None);
        };
        if self.index() == 0 && self.replica == 0 {
            resumed.set_aside()?;
        }
        self.skipped_checkpoints = in_bucket.into_iter().chain(resumed.notes()).collect();
        let state = &resumed.loaded;
        let stages_written = (state.stages > 1 || self.stages > 1).then_some(state.stages as i64);
        Ok(Some(event::Resume { step: state.step, stages_written, skipped_corrupt: self.skipped_checkpoints.clone() }))
    }

    /// With `spec.checkpoint.store`: the committing part brings the bucket's newest intact step
    /// into `root` when it is newer than every step there ([`remote::fetch`]), and every part
    /// waits for it before sweeping and listing `root`. Returns the bucket's newer steps passed
    /// over as corrupt (they stay in the bucket).
    fn fetch_from_store(&mut self, root: &Path) -> Result<Vec<String>> {
        if self.cfg.checkpoint_store.is_none() {
            return Ok(vec![]);
        }
        let mut corrupt = vec![];
        if self.commits_checkpoints() {
            let store = self.checkpoint_uploader()?.expect("a store is configured").store().clone();
            let fetched = remote::fetch(&store, root)?;
            if let Some(step) = fetched.step {
                crate::info!("fetched step {step} from {} ({} bytes downloaded in {:.1} s)", store.location.uri(), fetched.bytes, fetched.seconds);
            }
            corrupt = fetched.corrupt;
        }
        self.barrier_global()?;
        Ok(corrupt)
    }

    /// [`Worker::resume`]'s step.
    pub fn resume_latest(&mut self) -> Result<Option<i64>> {
        Ok(self.resume()?.map(|r| r.step))
    }
}
