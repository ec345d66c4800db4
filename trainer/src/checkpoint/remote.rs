//! A checkpoint root's copy in object storage, so that checkpoints outlive the node. Steps keep
//! their local names and files:
//!
//!   <prefix>/step-<n>/<file>            every file the step's manifest lists
//!   <prefix>/step-<n>/MANIFEST.json     uploaded last
//!
//! A step is committed locally first (the module above); [`upload`] then puts every file its
//! manifest lists and, only once all of them are in the bucket, the manifest itself. A step
//! exists in the bucket exactly when its manifest does ([`committed`]), so a reader never takes
//! a step whose parts are still going up, and an upload cut short (a SIGTERM's grace period
//! running out, a lost node) leaves the previous step the newest. A step uploaded again (a run
//! that resumed from an older step and reached it anew) first loses its old manifest, so that no
//! reader pairs it with new parts. [`prune`] keeps the newest `keep` steps there, deleting a
//! step's manifest before its parts. [`fetch`] brings the newest committed step that is newer
//! than what the local root holds, and intact, into the root, verified as a local step is.
//!
//! Stages in pods of their own, sharing no directory, each upload their own part instead
//! ([`upload_part`]): its files, then `stage-<i>.part.json` (the part's manifest, naming the
//! write every part of this checkpoint names). The first stage, once its own part is up, waits
//! until every stage's part manifest of the same write is in the bucket, checks that each file
//! they list is there with its size, and only then writes the step's `MANIFEST.json`, the same
//! manifest a shared directory commits: so the rule is unchanged, a step exists in the bucket
//! exactly when its manifest does, and that is written after every part. [`fetch_step`] can
//! bring only some stages' parts of a step (each pod its own).

use super::pipelined::{part_files, part_manifest};
use super::{
    CheckpointError, Layout, MANIFEST, Manifest, PARTIAL, TRAINER, discard, layout_of, list, parse_step_name, put_in_place, staging_dir,
    step_dir_name, sweep, verify,
};
use crate::store::{Store, StoreError};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;
use std::time::Instant;

/// The spec field a run's checkpoint store comes from, as errors name it.
pub const STORE_FIELD: &str = "spec.checkpoint.store";

/// What [`upload`] did.
#[derive(Clone, Debug, PartialEq)]
pub struct Uploaded {
    pub step: i64,
    /// `s3://bucket/prefix/step-<n>`.
    pub uri: String,
    pub bytes: u64,
    pub seconds: f64,
    /// Steps [`prune`] removed from the bucket afterwards.
    pub pruned: Vec<i64>,
    /// Whether this upload committed the step (wrote its manifest): false for a part that
    /// another stage commits ([`upload_part`]).
    pub committed: bool,
}

/// The objects under the prefix by step, and whether each step's manifest is there.
fn steps_in(store: &Store) -> Result<BTreeMap<i64, (bool, Vec<String>)>, StoreError> {
    let mut steps: BTreeMap<i64, (bool, Vec<String>)> = BTreeMap::new();
    for name in store.list("")? {
        let Some((dir, file)) = name.split_once('/') else { continue };
        let Some(step) = parse_step_name(dir) else { continue };
        let entry = steps.entry(step).or_default();
        entry.0 |= file == MANIFEST;
        entry.1.push(name);
    }
    Ok(steps)
}

/// The steps committed in the bucket (their manifest is there), oldest first.
pub fn committed(store: &Store) -> Result<Vec<i64>, StoreError> {
    Ok(steps_in(store)?.into_iter().filter(|(_, (has_manifest, _))| *has_manifest).map(|(s, _)| s).collect())
}

/// Reads a committed local step's manifest (its checksum checked; the files were verified or
/// written by this process, and are hashed again by whoever loads them).
fn read_manifest(dir: &Path) -> Result<(Manifest, Vec<u8>)> {
    read_manifest_named(dir, MANIFEST)
}

fn read_manifest_named(dir: &Path, name: &str) -> Result<(Manifest, Vec<u8>)> {
    let path = dir.join(name);
    let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let manifest: Manifest = serde_json::from_slice(&text).with_context(|| format!("{} is not a manifest", path.display()))?;
    anyhow::ensure!(manifest.checksum == manifest.compute_checksum(), "{}: the manifest's checksum does not match its contents", path.display());
    Ok((manifest, text))
}

/// Uploads the committed local step `dir`: every file its manifest lists, then the manifest,
/// then prunes the bucket to the newest `keep` steps (all when 0).
pub fn upload(store: &Store, dir: &Path, keep: usize) -> Result<Uploaded> {
    let t0 = Instant::now();
    let (manifest, manifest_text) = read_manifest(dir)?;
    let step_dir = step_dir_name(manifest.step);
    // A step of this number already there is no longer committed while its parts change.
    let bytes = put_listed(store, &step_dir, dir, manifest.files.keys(), MANIFEST, manifest_text)?;
    let pruned = prune(store, keep)?;
    let uri = format!("{}/{step_dir}", store.location.uri());
    Ok(Uploaded { step: manifest.step, uri, bytes, seconds: t0.elapsed().as_secs_f64(), pruned, committed: true })
}

/// Takes the step's manifest at `step_dir` away (the step is not committed while its files
/// change), uploads `files` from `dir` under `step_dir`, then `listing` (the manifest that lists
/// them) as `listing_name`, last. Returns the bytes sent.
fn put_listed<'a>(
    store: &Store,
    step_dir: &str,
    dir: &Path,
    files: impl Iterator<Item = &'a String>,
    listing_name: &str,
    listing: Vec<u8>,
) -> Result<u64> {
    store.delete(&[format!("{step_dir}/{MANIFEST}")])?;
    let mut bytes = 0;
    for f in files {
        bytes += store.put_file(&format!("{step_dir}/{f}"), &dir.join(f))?;
    }
    bytes += listing.len() as u64;
    store.put_bytes(&format!("{step_dir}/{listing_name}"), listing)?;
    Ok(bytes)
}

/// Uploads stage `stage`'s sealed part `dir` of a step (`pipelined::seal_part`): its files, then
/// its part manifest. The first stage then commits the step: once every stage's part of the same
/// write is in the bucket (waiting at most `wait`), it writes the step's manifest and prunes the
/// bucket to the newest `keep` steps, as [`upload`] does.
pub fn upload_part(store: &Store, dir: &Path, stage: usize, keep: usize, wait: Duration) -> Result<Uploaded> {
    let t0 = Instant::now();
    let name = part_manifest(stage);
    let (part, text) = read_manifest_named(dir, &name)?;
    let step_dir = step_dir_name(part.step);
    // A step of this number already there is no longer committed while its parts change: each
    // stage takes its manifest away before it touches its part, and the first stage writes the
    // new one only after every part of this write is up.
    let bytes = put_listed(store, &step_dir, dir, part.files.keys(), &name, text)?;
    let uri = format!("{}/{step_dir}", store.location.uri());
    let mut up = Uploaded { step: part.step, uri, bytes, seconds: 0.0, pruned: vec![], committed: false };
    if stage == 0 {
        let manifest = gather_parts(store, &part, wait)?;
        let text = serde_json::to_vec_pretty(&manifest).expect("a manifest serialises");
        up.bytes += text.len() as u64;
        store.put_bytes(&format!("{step_dir}/{MANIFEST}"), text)?;
        up.committed = true;
        up.pruned = prune(store, keep)?;
    }
    up.seconds = t0.elapsed().as_secs_f64();
    Ok(up)
}

/// The step's manifest, made of every stage's part manifest of the write `first` (stage 0's)
/// belongs to, once all of them are in the bucket and every file they list is there with its
/// size. Waits at most `wait` for the other stages.
fn gather_parts(store: &Store, first: &Manifest, wait: Duration) -> Result<Manifest> {
    let stages = first.stages.unwrap_or(1);
    let step_dir = step_dir_name(first.step);
    let deadline = Instant::now() + wait;
    let mut parts: BTreeMap<usize, Manifest> = BTreeMap::from([(0, first.clone())]);
    loop {
        let missing: Vec<usize> = (1..stages).filter(|s| !parts.contains_key(s)).collect();
        for stage in missing {
            let Some(text) = store.get_bytes(&format!("{step_dir}/{}", part_manifest(stage)))? else { continue };
            // another write's part (an earlier attempt at this step) or one being replaced: wait
            // for this write's
            if let Ok(m) = serde_json::from_slice::<Manifest>(&text)
                && m.checksum == m.compute_checksum()
                && m.write_id == first.write_id
                && m.step == first.step
            {
                parts.insert(stage, m);
            }
        }
        if parts.len() == stages {
            break;
        }
        let missing: Vec<usize> = (0..stages).filter(|s| !parts.contains_key(s)).collect();
        anyhow::ensure!(
            Instant::now() < deadline,
            "{}/{step_dir}: the parts of stages {missing:?} did not arrive within {wait:?}; the step is not committed in the bucket",
            store.location.uri()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let listed: BTreeMap<String, u64> = store.list_objects(&step_dir)?.into_iter().map(|o| (o.name, o.size)).collect();
    let mut manifest = Manifest::new(Layout::Pipelined, first.step);
    manifest.stages = Some(stages);
    manifest.model_fingerprint = first.model_fingerprint.clone();
    for (stage, part) in &parts {
        anyhow::ensure!(part.model_fingerprint == first.model_fingerprint, "{step_dir}: stage {stage}'s part is of another model");
        for (f, entry) in &part.files {
            let got = listed.get(&format!("{step_dir}/{f}"));
            anyhow::ensure!(
                got == Some(&entry.parts().0),
                "{step_dir}/{f}: {got:?} bytes in the bucket, stage {stage}'s part manifest says {}; the step is not committed",
                entry.parts().0
            );
            manifest.files.insert(f.clone(), entry.clone());
        }
    }
    anyhow::ensure!(manifest.files.contains_key(TRAINER), "{step_dir}: the first stage's part holds no {TRAINER}");
    manifest.checksum = manifest.compute_checksum();
    Ok(manifest)
}

/// Removes all but the newest `keep` committed steps from the bucket (none when 0), each
/// manifest before its parts, and the parts of uncommitted steps older than the oldest step
/// kept (uploads that were cut short). Uncommitted steps newer than that are left: one may be
/// going up. Returns the committed steps removed.
pub fn prune(store: &Store, keep: usize) -> Result<Vec<i64>, StoreError> {
    let steps = steps_in(store)?;
    let committed: Vec<i64> = steps.iter().filter(|(_, (m, _))| *m).map(|(s, _)| *s).collect();
    if keep == 0 || committed.len() <= keep {
        return Ok(vec![]);
    }
    let oldest_kept = committed[committed.len() - keep];
    let mut removed = vec![];
    for (step, (has_manifest, mut names)) in steps.into_iter().filter(|(s, _)| *s < oldest_kept) {
        let manifest = format!("{}/{MANIFEST}", step_dir_name(step));
        names.sort_by_key(|n| *n != manifest);
        store.delete(&names)?;
        if has_manifest {
            removed.push(step);
        }
    }
    Ok(removed)
}

/// What [`fetch`] brought into the local root.
#[derive(Debug, Default)]
pub struct Fetched {
    /// The step downloaded into the root, verified; `None` when the bucket holds no committed
    /// step newer than the root's newest, or none of those is intact.
    pub dir: Option<PathBuf>,
    pub step: Option<i64>,
    pub bytes: u64,
    pub seconds: f64,
    /// The newer steps in the bucket passed over as corrupt, newest first: one line each.
    pub corrupt: Vec<String>,
}

/// What of a step to bring from the bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wanted {
    /// Every file its manifest lists.
    All,
    /// `trainer.json` and the parts of the stages `of`, when the step was written by `stages`
    /// stages (every file otherwise: its parts do not match this run's).
    Parts { stages: usize, of: BTreeSet<usize> },
}

/// Brings the newest intact step of the bucket that is newer than every committed step under
/// `root` into `root`: each candidate, newest first, is downloaded (only its own files) into a
/// staging directory, manifest last, verified as any local step is (the manifest's checksum,
/// every file's size and SHA-256), and put in place; a corrupt one is dropped and the next older
/// one tried. The run then resumes from `root` as it always does. Call it where the run sweeps
/// its root (before any part of the run writes a checkpoint, with no other part resuming yet).
pub fn fetch(store: &Store, root: &Path) -> Result<Fetched> {
    let t0 = Instant::now();
    let mut fetched = Fetched::default();
    for step in candidates(store, root)? {
        match fetch_step(store, root, step, &Wanted::All)? {
            Ok((dir, bytes)) => {
                fetched.bytes += bytes;
                fetched.dir = Some(dir);
                fetched.step = Some(step);
                break;
            }
            Err(why) => fetched.corrupt.push(why),
        }
    }
    fetched.seconds = t0.elapsed().as_secs_f64();
    Ok(fetched)
}

/// The committed steps of the bucket newer than every committed step under `root`, newest
/// first (the staging under `root` swept first).
pub fn candidates(store: &Store, root: &Path) -> Result<Vec<i64>> {
    sweep(root)?;
    let local_newest = list(root)?.last().map(|(s, _)| *s);
    Ok(committed(store)?.into_iter().rev().take_while(|s| local_newest.is_none_or(|l| *s > l)).collect())
}

/// Brings what `wanted` names of the committed step `step` into `root`, verified, as [`fetch`]
/// does; a step of which only some parts came down holds [`PARTIAL`]. `Ok(Err(line))` when the
/// step is corrupt (or lost a file since the listing): one line saying so, nothing left under
/// `root`.
pub fn fetch_step(store: &Store, root: &Path, step: i64, wanted: &Wanted) -> Result<std::result::Result<(PathBuf, u64), String>> {
    let step_dir = step_dir_name(step);
    let tmp = staging_dir(root, step, &format!("download-{}", std::process::id()))?;
    let uri = format!("{}/{step_dir}", store.location.uri());
    let bytes = match download(store, &step_dir, &tmp, wanted) {
        Ok(bytes) => bytes,
        Err(e) => {
            discard(root, step, &tmp)?;
            return match e.downcast_ref::<StoreError>() {
                // a part or the manifest went between the listing and the download (another
                // writer pruning): as good as corrupt
                Some(s) if s.is_not_found() => Ok(Err(format!("{uri}: {e:#}; passed over for an older step"))),
                _ => Err(e),
            };
        }
    };
    match verify(&tmp, layout_of(&tmp)?) {
        Ok(_) => {
            let final_dir = root.join(&step_dir);
            put_in_place(root, &tmp, &final_dir, step)?;
            Ok(Ok((final_dir, bytes)))
        }
        Err(e) if e.is_corrupt() => {
            discard(root, step, &tmp)?;
            Ok(Err(format!("{uri}: {}; passed over for an older step", corrupt_what(&e))))
        }
        Err(e) => {
            discard(root, step, &tmp)?;
            Err(e.into())
        }
    }
}

/// A corrupt step's error without the local staging path it was found under.
fn corrupt_what(e: &CheckpointError) -> String {
    match e {
        CheckpointError::Corrupt { what, .. } => format!("{what}; refusing to load a corrupt checkpoint"),
        other => other.to_string(),
    }
}

/// Downloads the step `step_dir` of the bucket into `tmp`: the manifest is read first (it says
/// which files make the step), the files go down, and the manifest is written last, so that the
/// staging directory holds a manifest only once it holds the step. Returns the bytes.
fn download(store: &Store, step_dir: &str, tmp: &Path, wanted: &Wanted) -> Result<u64> {
    let manifest_name = format!("{step_dir}/{MANIFEST}");
    let text = store.get_bytes(&manifest_name)?.ok_or_else(|| StoreError {
        field: store.location.field.clone(),
        uri: store.location.uri(),
        what: format!("downloading {manifest_name}"),
        source: Box::new(object_store::Error::NotFound { path: manifest_name.clone(), source: "gone since the listing".into() }),
    })?;
    let mut bytes = text.len() as u64;
    // An unreadable manifest lists nothing: verification then says what is wrong with it.
    if let Ok(manifest) = serde_json::from_slice::<Manifest>(&text) {
        let names: Vec<&String> = match wanted {
            Wanted::Parts { stages, of } if manifest.stages == Some(*stages) && layout_of_manifest(&manifest) == Some(Layout::Pipelined) => {
                let keep: BTreeSet<String> = of.iter().flat_map(|s| part_files(*s)).chain([TRAINER.to_string()]).collect();
                manifest.files.keys().filter(|n| keep.contains(*n)).collect()
            }
            _ => manifest.files.keys().collect(),
        };
        if names.len() < manifest.files.len() {
            let path = tmp.join(PARTIAL);
            let listing: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
            std::fs::write(&path, listing.join("\n")).with_context(|| format!("writing {}", path.display()))?;
        }
        let total = names.iter().map(|n| manifest.files[*n].parts().0).sum();
        crate::progress::begin(&format!("download {}/{step_dir}", store.location.uri()), "bytes", Some(total));
        for name in names {
            anyhow::ensure!(
                !name.contains('/') && !name.starts_with('.') && !name.is_empty(),
                "{}/{step_dir}: the manifest names a file {name:?} outside the step",
                store.location.uri()
            );
            let got = store.get_file(&format!("{step_dir}/{name}"), &tmp.join(name)).inspect_err(|_| crate::progress::cancel())?;
            crate::progress::advance(got);
            bytes += got;
        }
        crate::progress::end();
    }
    let path = tmp.join(MANIFEST);
    std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
    super::fsync(&path)?;
    super::fsync(tmp)?;
    Ok(bytes)
}

fn layout_of_manifest(manifest: &Manifest) -> Option<Layout> {
    Layout::of(&manifest.format)
}

/// Uploads in the background, one step at a time, while training goes on: [`Uploader::start`]
/// hands a committed step to a thread of its own (after the previous upload has finished, so
/// that the local pruning of the next commit never takes files still going up), and
/// [`Uploader::wait`] collects the outcome, within a deadline if need be. An upload given up on
/// at its deadline keeps going until the process exits; its manifest, the last object, is then
/// never written, so the bucket's newest step stays the previous one.
pub struct Uploader {
    store: Store,
    keep: usize,
    in_flight: Option<(i64, std::sync::mpsc::Receiver<Result<Uploaded>>)>,
}

impl Uploader {
    pub fn new(store: Store, keep: usize) -> Self {
        Self { store, keep, in_flight: None }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The step going up, if any.
    pub fn in_flight(&self) -> Option<i64> {
        self.in_flight.as_ref().map(|(s, _)| *s)
    }

    /// Starts uploading the committed local step `dir` of step `step`. Call [`Uploader::wait`]
    /// first: one upload at a time.
    pub fn start(&mut self, dir: PathBuf, step: i64) -> Result<()> {
        self.start_with(step, move |store, keep| upload(store, &dir, keep))
    }

    /// Starts uploading stage `stage`'s sealed part `dir` of step `step` ([`upload_part`]; the
    /// first stage's commits the step once every part is there, waiting at most `wait`).
    pub fn start_part(&mut self, dir: PathBuf, step: i64, stage: usize, wait: Duration) -> Result<()> {
        self.start_with(step, move |store, keep| upload_part(store, &dir, stage, keep, wait))
    }

    fn start_with(&mut self, step: i64, up: impl FnOnce(&Store, usize) -> Result<Uploaded> + Send + 'static) -> Result<()> {
        anyhow::ensure!(self.in_flight.is_none(), "step {} is still going up", self.in_flight().unwrap_or_default());
        let (tx, rx) = std::sync::mpsc::channel();
        let (store, keep) = (self.store.clone(), self.keep);
        std::thread::Builder::new()
            .name("frugal-upload".into())
            .spawn(move || {
                crate::store::yield_to_training();
                let _ = tx.send(up(&store, keep));
            })
            .context("starting the upload thread")?;
        self.in_flight = Some((step, rx));
        Ok(())
    }

    /// The outcome of the upload in flight once it has finished, waiting at most `deadline`
    /// (for ever when `None`); `None` when none was in flight, or it is still going at the
    /// deadline (then it is given up on: see the type).
    pub fn wait(&mut self, deadline: Option<std::time::Duration>) -> Option<Result<Uploaded>> {
        let (step, rx) = self.in_flight.take()?;
        let outcome = match deadline {
            None => rx.recv().map_err(|_| anyhow::anyhow!("the upload of step {step} stopped without an outcome")),
            Some(d) => match rx.recv_timeout(d) {
                Ok(r) => Ok(r),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => return None,
                Err(_) => Err(anyhow::anyhow!("the upload of step {step} stopped without an outcome")),
            },
        };
        Some(outcome.and_then(|r| r))
    }

    /// The outcome of the upload in flight if it has finished; it stays in flight otherwise.
    pub fn poll(&mut self) -> Option<Result<Uploaded>> {
        let (step, rx) = self.in_flight.as_ref()?;
        let outcome = match rx.try_recv() {
            Err(std::sync::mpsc::TryRecvError::Empty) => return None,
            Ok(outcome) => outcome,
            Err(std::sync::mpsc::TryRecvError::Disconnected) => Err(anyhow::anyhow!("the upload of step {step} stopped without an outcome")),
        };
        self.in_flight = None;
        Some(outcome)
    }
}
