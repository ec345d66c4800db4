//! A run's checkpoints, whatever its stages and replicas (the layout: `checkpoint/pipelined.rs`):
//! every stage of the first replica writes its part, a barrier, the first stage writes
//! `trainer.json` and commits the step, and a second barrier, across every replica, keeps every
//! stage until it is committed. A 1×1 run writes the same layout with one part. The data
//! position between steps is the same in every replica, so a checkpoint resumes under any
//! replica count as under any stage count. A SIGTERM reaching all pods mid-step therefore leaves
//! the last complete step. With tied embeddings only the first stage writes `wte.weight`; the
//! last stage's copy loads from it. Steps written by the earlier single-process trainer
//! (`checkpoint/single.rs`) load too, into any stage count.
//!
//! Stages in pods of their own without a shared volume (each stage sees only its own part in
//! the directory) need `spec.checkpoint.store`: each stage of the first replica then seals its
//! own part and uploads it, and the first stage commits the step in the bucket once every part
//! is there (`checkpoint/remote.rs`). On resume, the parts of the run that share a directory
//! find each other, one of them brings their stages' parts of the newest committed step from the
//! bucket, and every directory passes over a step that is corrupt in any of them.

use super::worker::Worker;
use crate::checkpoint::remote::{self, Uploaded, Uploader, Wanted};
use crate::checkpoint::{self, Layout, State, Tensors, pipelined, single};
use crate::data::DataPosition;
use crate::model::gpt::Gpt;
use crate::params::ParamBuilder;
use crate::report::event;
use crate::train::precision::LossScaler;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tch::Tensor;

/// How long a run stopped by SIGTERM waits for its last checkpoint's upload, unless
/// `FRUGAL_UPLOAD_GRACE_SECONDS` says otherwise: well inside the pods' grace period (300 s), so
/// that the trainer exits on its own, having written its checkpoint first.
pub const UPLOAD_GRACE: Duration = Duration::from_secs(120);

/// How long the first stage waits for the other stages' parts of a step to arrive in the bucket
/// before it gives the step up (it is then never committed there), unless
/// `FRUGAL_PART_WAIT_SECONDS` says otherwise.
pub const PART_WAIT: Duration = Duration::from_secs(600);

fn part_wait() -> Duration {
    std::env::var("FRUGAL_PART_WAIT_SECONDS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map_or(PART_WAIT, Duration::from_secs_f64)
}

/// The files through which the parts of a run that share a checkpoint directory find each other
/// on resume: `.frugal-probe-<nonce>-<replica>-<stage>`, holding the stages whose parts it loads.
const PROBE: &str = ".frugal-probe-";

/// A number every part of a run agrees on through a sum (the first part's, the others 0):
/// below 2^40, so that it survives the sum's floating point.
fn nonce() -> f64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    ((nanos ^ (u128::from(std::process::id()) << 20)) % (1u128 << 40)) as f64
}

/// What [`Worker::save_checkpoint_in`] left under the root.
enum Saved {
    /// The committed step (or, in another replica, where it is).
    Step(PathBuf),
    /// This stage's sealed part alone (`pipelined::seal_part`): the stages share no directory.
    Part(PathBuf),
}

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
        // before this commit prunes the local steps (or parts) that upload reads
        self.wait_for_upload(None);
        let saved = self.save_in(&root, keep)?;
        self.sealed_part = matches!(saved, Saved::Part(_));
        let (step, stage) = (self.step, self.index());
        match saved {
            Saved::Step(dir) => {
                if self.commits_checkpoints()
                    && let Some(uploader) = self.checkpoint_uploader()?
                {
                    uploader.start(dir.clone(), step)?;
                }
                Ok(Some(dir))
            }
            Saved::Part(dir) => {
                let wait = part_wait();
                self.checkpoint_uploader()?.expect("a part is sealed only with a store").start_part(dir.clone(), step, stage, wait)?;
                Ok(Some(dir))
            }
        }
    }

    /// Brings the committed step `step` whole from `spec.checkpoint.store` into the checkpoint
    /// root, verified: what a part that sealed only its own part of it (the stages share no
    /// volume) needs to export the final model. The step must be committed already (the first
    /// stage's upload finished; the run's last agreement waits for it).
    pub fn fetch_whole_step(&mut self, step: i64) -> Result<PathBuf> {
        let root = self.cfg.checkpoint_dir.clone().context("no checkpoint directory")?;
        let uploader =
            self.checkpoint_uploader()?.context("the stages share no volume, and there is no spec.checkpoint.store to take the step from")?;
        let store = uploader.store().clone();
        match remote::fetch_step(&store, &root, step, &Wanted::All)? {
            Ok((dir, bytes)) => {
                crate::info!("step {step} came down whole from {} ({bytes} bytes) for the export", store.location.uri());
                Ok(dir)
            }
            Err(why) => anyhow::bail!("the final step cannot be exported: {why}"),
        }
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
            Ok(up) if up.committed => self.uploaded.push(up),
            Ok(up) => crate::info!("stage {}'s part of step {} is in {} ({} bytes in {:.1} s)", self.index(), up.step, up.uri, up.bytes, up.seconds),
            Err(e) => crate::warn!("uploading step {step} failed: {e:#}; the bucket's newest step stays the one before"),
        }
    }

    /// The uploads finished since the last call.
    pub fn take_uploads(&mut self) -> Vec<Uploaded> {
        std::mem::take(&mut self.uploaded)
    }

    /// [`Worker::save_checkpoint`] under `root`, keeping the newest `keep` steps there: the
    /// committed step's directory, or where this stage sealed its part alone when the stages
    /// share no directory.
    pub fn save_checkpoint_in(&mut self, root: &Path, keep: usize) -> Result<PathBuf> {
        Ok(match self.save_in(root, keep)? {
            Saved::Step(dir) | Saved::Part(dir) => dir,
        })
    }

    fn save_in(&mut self, root: &Path, keep: usize) -> Result<Saved> {
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
        let mut saved = Saved::Step(root.join(checkpoint::step_dir_name(self.step)));
        if self.replica == 0 {
            let tensors = Tensors::of(&self.params, optimizer, skip.as_deref());
            pipelined::write_part(root, self.step, self.index(), &tensors)?;
            // Every stage has written and synced its part.
            self.barrier()?;
            let state = (self.index() == 0).then(|| RunState {
                step: self.step,
                tokens: self.tokens,
                data: self.data.as_ref().map(|d| d.position.clone()),
                loss_scaler: self.scaler.clone(),
                optimizer_updates: self.optim.updates,
                stages: self.stages,
                job: self.cfg.name.clone(),
            });
            // Whether the stages share the directory: each looks before any commits; the first
            // stage's nonce names this write in the parts' manifests when they do not.
            let (shared, write_id) = if self.stages == 1 {
                (true, 0.0)
            } else {
                let here = f64::from(u8::from(pipelined::parts_here(root, self.step, self.stages)));
                let nonce = if self.index() == 0 { nonce() } else { 0.0 };
                let agreed = Vec::<f64>::try_from(&self.all_reduce(Some(Tensor::from_slice(&[here, nonce])))?)?;
                (agreed[0] == self.stages as f64, agreed[1])
            };
            if shared {
                if let Some(state) = &state {
                    pipelined::commit_step(root, state, self.stages, &model_fingerprint(self), keep)?;
                }
            } else {
                anyhow::ensure!(
                    self.cfg.checkpoint_store.is_some(),
                    "stage {} does not see the other stages' parts of step {} under {}: stages in pods of their own need a checkpoint volume they share (ReadWriteMany) or spec.checkpoint.store",
                    self.index(),
                    self.step,
                    root.display()
                );
                let write_id = format!("{write_id:.0}");
                let fingerprint = model_fingerprint(self);
                let part = pipelined::PartOf {
                    step: self.step,
                    stage: self.index(),
                    stages: self.stages,
                    model_fingerprint: &fingerprint,
                    write_id: &write_id,
                };
                let dir = pipelined::seal_part(root, &part, state.as_ref(), keep)?;
                saved = Saved::Part(dir);
            }
        }
        // Nobody moves on (or is told the checkpoint exists) before it is committed.
        self.barrier_global()?;
        Ok(saved)
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
        let agreed = self.agree(&[step as f64, 1.0, in_bucket.len() as f64])?;
        anyhow::ensure!(
            agreed[0] == step as f64 * agreed[1],
            "the run's stages resumed from different checkpoints (this stage from step {step}); look for a checkpoint another stage cannot read"
        );
        let Some(resumed) = resumed else {
            anyhow::ensure!(
                agreed[2] == 0.0,
                "no intact checkpoint to resume from: the local directory holds none, and the store's steps are corrupt:\n  {}",
                if in_bucket.is_empty() { "(another part of the run says which)".to_string() } else { in_bucket.join("\n  ") }
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

    /// With `spec.checkpoint.store`: the bucket's newest intact step comes into `root` when it
    /// is newer than every step there, before any part sweeps and lists `root`. The parts of the
    /// run that share `root` (all of them on a shared volume, the stages of one pod otherwise)
    /// find each other through files they leave there, and the first of them brings what they
    /// need: the whole step when they are every stage, else their stages' parts
    /// ([`remote::fetch_step`]). A step corrupt in any directory is passed over in all of them,
    /// so that every stage resumes the same one. Returns the bucket's newer steps passed over
    /// (they stay in the bucket).
    fn fetch_from_store(&mut self, root: &Path) -> Result<Vec<String>> {
        if self.cfg.checkpoint_store.is_none() {
            return Ok(vec![]);
        }
        let (me, stage) = ((self.replica, self.index()), self.index());
        let first = self.replica == 0 && stage == 0;
        let nonce = self.agree(&[if first { nonce() } else { 0.0 }])?[0];
        let prefix = format!("{PROBE}{nonce:.0}-");
        let at = |path: &Path| format!("checkpoint directory {}", path.display());
        std::fs::create_dir_all(root).with_context(|| at(root))?;
        let probe = root.join(format!("{prefix}{}-{}", me.0, me.1));
        // the parts this stage loads: its own, and the first stage's when its tied copy of the
        // embedding loads from there
        let needs = if self.model.tied_copy().is_some() { format!("{stage},0") } else { stage.to_string() };
        std::fs::write(&probe, needs).with_context(|| at(&probe))?;
        self.barrier_global()?;
        let mut sharing = vec![];
        let mut needed = BTreeSet::new();
        let mut stale = vec![];
        for entry in std::fs::read_dir(root).with_context(|| at(root))? {
            let entry = entry.with_context(|| at(root))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(who) = name.strip_prefix(&prefix) else {
                // left by a run that stopped between writing and removing its own
                if name.starts_with(PROBE) {
                    stale.push(entry.path());
                }
                continue;
            };
            let Some((Ok(replica), Ok(stage))) = who.split_once('-').map(|(r, s)| (r.parse::<usize>(), s.parse::<usize>())) else { continue };
            sharing.push((replica, stage));
            let listed = std::fs::read_to_string(entry.path()).with_context(|| at(&entry.path()))?;
            needed.extend(listed.split(',').filter_map(|s| s.parse::<usize>().ok()));
        }
        self.barrier_global()?;
        std::fs::remove_file(&probe).with_context(|| at(&probe))?;
        let leads = sharing.iter().min() == Some(&me);
        if leads {
            for path in stale {
                let _ = std::fs::remove_file(path);
            }
        }
        let stages_here: BTreeSet<usize> = sharing.iter().map(|(_, s)| *s).collect();
        let wanted = if stages_here.len() == self.stages { Wanted::All } else { Wanted::Parts { stages: self.stages, of: needed } };
        let store = if leads { Some(self.checkpoint_uploader()?.expect("a store is configured").store().clone()) } else { None };
        let candidates = match &store {
            Some(store) => remote::candidates(store, root)?,
            None => vec![],
        };
        let mut passed_over = vec![];
        for round in 0.. {
            let t0 = std::time::Instant::now();
            let step = candidates.get(round).copied();
            let mut fetched = None;
            if let (Some(store), Some(step)) = (&store, step) {
                match remote::fetch_step(store, root, step, &wanted)? {
                    Ok((dir, bytes)) => fetched = Some((dir, bytes)),
                    Err(why) => passed_over.push(why),
                }
            }
            let corrupt = step.is_some() && fetched.is_none();
            let agreed = self.agree(&[f64::from(u8::from(step.is_some())), f64::from(u8::from(corrupt))])?;
            if agreed[0] == 0.0 {
                break;
            }
            if let (Some(store), Some(step)) = (&store, step) {
                if agreed[1] == 0.0 {
                    let bytes = fetched.as_ref().map_or(0, |(_, b)| *b);
                    crate::info!(
                        "fetched step {step} from {} ({bytes} bytes downloaded in {:.1} s)",
                        store.location.uri(),
                        t0.elapsed().as_secs_f64()
                    );
                    break;
                }
                if let Some((dir, _)) = fetched {
                    checkpoint::discard(root, step, &dir)?;
                    passed_over.push(format!(
                        "{}/{}: another stage's part of it is corrupt; passed over for an older step",
                        store.location.uri(),
                        checkpoint::step_dir_name(step)
                    ));
                }
            } else if agreed[1] == 0.0 {
                break;
            }
        }
        Ok(passed_over)
    }

    /// [`Worker::resume`]'s step.
    pub fn resume_latest(&mut self) -> Result<Option<i64>> {
        Ok(self.resume()?.map(|r| r.step))
    }
}
