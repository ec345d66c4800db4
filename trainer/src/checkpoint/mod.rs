//! Checkpoints: a directory per step under the job's checkpoint path. This module knows files,
//! not runs: it takes tensors and a state to write and hands them back verified, so that the
//! workers depend on it and not the other way round. Two layouts:
//!
//!   [`pipelined`]  what every run writes: `stage-<i>.model.safetensors`, `stage-<i>.optimizer...`
//!                  (one part per stage; one part in a run of one stage)
//!   [`single`]     what the single-process trainer of earlier releases wrote, still read:
//!                  `model.safetensors`, `optimizer.safetensors`
//!
//! Both hold `trainer.json` (step, tokens, data position, loss scaler) and `MANIFEST.json`,
//! written last: the layout, the step, and the size and SHA-256 of every other file, with a
//! checksum of its own. This module is what the layouts share: the files are written into a
//! staging directory (`.step-<n>.<suffix>`) and synced, the manifest is written through a
//! temporary file, synced and renamed, and the directory is renamed into place ([`commit`]; a
//! step of the same number already there is exchanged for it, never deleted first), so a step
//! either is complete on disk or does not exist; [`verify`] checks a step before any weight is
//! touched; [`newest_intact`] sweeps the staging
//! a killed writer left ([`sweep`]) and finds the step a run resumes from, passing over corrupt
//! ones; older steps are pruned. [`remote`] keeps a copy of the committed steps in object
//! storage and brings one back when the root has nothing newer.

pub mod pipelined;
pub mod remote;
pub mod single;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use tch::{Device, Kind, Tensor};

/// What a step holds besides tensors (`trainer.json`): the run's position and loss scale.
pub trait State: Serialize + serde::de::DeserializeOwned {
    fn step(&self) -> i64;
}

/// The tensors of a step (or of one pipeline stage's part of it), on the host: fp32 master
/// weights and optimizer state under global parameter names.
pub struct Tensors {
    pub weights: Vec<(String, Tensor)>,
    pub optimizer: Vec<(String, Tensor)>,
}

impl Tensors {
    /// `store`'s master weights and `optimizer_state` (the optimizer's `<state>.<name>` views)
    /// copied to the host, without the parameter named `skip` (a tied copy another stage writes).
    pub fn of(store: &crate::params::ParamStore, optimizer_state: Vec<(String, Tensor)>, skip: Option<&str>) -> Self {
        // One device-to-host copy per flat buffer, then views under global names.
        let master = store.master.to_device(Device::Cpu);
        let weights = store
            .specs
            .iter()
            .filter(|s| Some(s.name.as_str()) != skip)
            .map(|s| (s.name.clone(), master.narrow(0, s.offset, s.numel()).view(s.shape.as_slice())))
            .collect();
        let optimizer = optimizer_state
            .into_iter()
            .filter(|(n, _)| skip.is_none_or(|s| !n.ends_with(&format!(".{s}"))))
            .map(|(n, t)| (n, t.to_device(Device::Cpu).contiguous()))
            .collect();
        Self { weights, optimizer }
    }
}

pub const MANIFEST: &str = "MANIFEST.json";
pub const TRAINER: &str = "trainer.json";

/// The `format` a manifest names: which layout wrote the step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Single,
    Pipelined,
}

impl Layout {
    pub const fn format(self) -> &'static str {
        match self {
            Self::Single => "frugal-checkpoint/1",
            Self::Pipelined => "frugal-pipeline-checkpoint/2",
        }
    }

    /// The layout of a manifest's `format`; `frugal-pipeline-checkpoint/1` (earlier releases,
    /// the same files under a differently serialised manifest) still loads.
    pub(crate) fn of(format: &str) -> Option<Self> {
        match format {
            f if f == Self::Single.format() => Some(Self::Single),
            f if f == Self::Pipelined.format() || f == PIPELINED_V1 => Some(Self::Pipelined),
            _ => None,
        }
    }
}

const PIPELINED_V1: &str = "frugal-pipeline-checkpoint/1";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {path}: {what}; refusing to load a corrupt checkpoint")]
    Corrupt { path: PathBuf, what: String },
    #[error("checkpoint {path} does not match this job: {what}")]
    Mismatch { path: PathBuf, what: String },
    #[error("checkpoint {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("checkpoint {path}: {source}")]
    Tensor { path: PathBuf, source: tch::TchError },
}

impl CheckpointError {
    /// The checkpoint's files are damaged or incomplete (an older one may be intact), as opposed
    /// to a checkpoint of another model, or a directory that cannot be read at all.
    pub fn is_corrupt(&self) -> bool {
        matches!(self, Self::Corrupt { .. } | Self::Tensor { .. })
    }

    /// Whether `e` (from either layout's load) is a corrupt checkpoint.
    pub fn is_corrupt_error(e: &anyhow::Error) -> bool {
        e.chain().any(|c| c.downcast_ref::<Self>().is_some_and(Self::is_corrupt))
    }
}

pub type Result<T> = std::result::Result<T, CheckpointError>;

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io { path: path.to_path_buf(), source }
}

pub(crate) fn corrupt(dir: &Path, what: String) -> CheckpointError {
    CheckpointError::Corrupt { path: dir.to_path_buf(), what }
}

pub(crate) fn mismatch(dir: &Path, what: String) -> CheckpointError {
    CheckpointError::Mismatch { path: dir.to_path_buf(), what }
}

/// A file the manifest lists: its size and SHA-256.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub(crate) enum FileEntry {
    Named {
        bytes: u64,
        sha256: String,
    },
    /// `[bytes, sha256]`, as `frugal-pipeline-checkpoint/1` wrote it.
    Pair(u64, String),
}

impl FileEntry {
    pub(crate) fn parts(&self) -> (u64, &str) {
        match self {
            Self::Named { bytes, sha256 } | Self::Pair(bytes, sha256) => (*bytes, sha256),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub step: i64,
    /// The whole model's fingerprint (names and shapes); pipelined steps written before it was
    /// recorded lack it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_fingerprint: Option<String>,
    /// The pipelined layout: how many stages wrote it (any count can load it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stages: Option<usize>,
    /// A stage's part manifest (`stage-<i>.part.json`, see [`remote`]): the write it belongs
    /// to, the same in every stage's part of one checkpoint. A step's manifest has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_id: Option<String>,
    pub(crate) files: BTreeMap<String, FileEntry>,
    /// SHA-256 of this manifest serialised with `checksum` empty.
    checksum: String,
}

impl Manifest {
    pub(crate) fn new(layout: Layout, step: i64) -> Self {
        Self {
            format: layout.format().into(),
            step,
            model_fingerprint: None,
            stages: None,
            write_id: None,
            files: BTreeMap::new(),
            checksum: String::new(),
        }
    }

    /// Checks that the manifest lists `name` (verification has checked what it lists).
    pub(crate) fn require(&self, dir: &Path, name: &str) -> Result<()> {
        if self.files.contains_key(name) { Ok(()) } else { Err(corrupt(dir, format!("manifest lists no {name}"))) }
    }

    /// Refuses a step of another model than the one with fingerprint `fp`.
    pub(crate) fn require_model(&self, dir: &Path, fp: &str) -> Result<()> {
        let theirs = self.model_fingerprint.as_deref().unwrap_or_default();
        if theirs != fp {
            return Err(mismatch(
                dir,
                format!("its model has fingerprint {theirs}, this job's model {fp} (different layers, widths, experts or vocabulary)"),
            ));
        }
        Ok(())
    }

    pub(crate) fn compute_checksum(&self) -> String {
        if self.format == PIPELINED_V1 {
            let files: BTreeMap<&String, (u64, &str)> = self.files.iter().map(|(k, v)| (k, v.parts())).collect();
            let body = serde_json::json!({"format": self.format, "step": self.step, "stages": self.stages, "files": files});
            return hex::encode(Sha256::digest(body.to_string().as_bytes()));
        }
        let body = serde_json::to_vec(&Manifest { checksum: String::new(), ..self.clone() }).expect("a manifest serialises");
        hex::encode(Sha256::digest(&body))
    }
}

pub(crate) fn sha256_file(path: &Path) -> Result<(u64, String)> {
    sha256_file_with(path, |_| {})
}

/// [`sha256_file`], telling `read` each chunk's length as it goes.
fn sha256_file_with(path: &Path, mut read: impl FnMut(u64)) -> Result<(u64, String)> {
    let mut f = File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).map_err(io(path))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
        read(k as u64);
    }
    Ok((n, hex::encode(h.finalize())))
}

pub(crate) fn fsync(path: &Path) -> Result<()> {
    File::open(path).and_then(|f| f.sync_all()).map_err(io(path))
}

pub fn step_dir_name(step: i64) -> String {
    format!("step-{step:09}")
}

/// The step a step directory's name names: exactly what [`step_dir_name`] writes, so that
/// nothing else under a root (`step-7`, `step-000000007.corrupt`, another job's folder) is taken
/// for a step.
fn parse_step_name(name: &str) -> Option<i64> {
    let step: i64 = name.strip_prefix("step-")?.parse().ok()?;
    (step >= 0 && step_dir_name(step) == name).then_some(step)
}

/// Staging entries are `.step-<n>.<suffix>`: `tmp-<pid>` (a single-process write), `partial` (a
/// pipeline's parts), `replaced-<pid>` (a step moved aside by [`replace_through_aside`]) and
/// `discarded-...` (on its way out, see [`discard`]).
pub(crate) fn staging_name(step: i64, suffix: &str) -> String {
    format!(".{}.{suffix}", step_dir_name(step))
}

const REPLACED: &str = "replaced";
const DISCARDED: &str = "discarded";

/// The step and suffix of a staging entry's name.
pub(crate) fn parse_staging(name: &str) -> Option<(i64, &str)> {
    let (step_name, suffix) = name.strip_prefix('.')?.split_once('.')?;
    let step = parse_step_name(step_name)?;
    (!suffix.is_empty()).then_some((step, suffix))
}

/// Writes `tensors` as a safetensors file and syncs it.
pub(crate) fn write_tensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    Tensor::write_safetensors(tensors, path).map_err(|source| CheckpointError::Tensor { path: path.to_path_buf(), source })?;
    fsync(path)
}

/// Reads the safetensors files `names` of `dir` into one map.
pub(crate) fn read_tensors(dir: &Path, names: &[String]) -> Result<BTreeMap<String, Tensor>> {
    let mut all = BTreeMap::new();
    for name in names {
        let p = dir.join(name);
        all.extend(Tensor::read_safetensors(&p).map_err(|source| CheckpointError::Tensor { path: p.clone(), source })?);
    }
    Ok(all)
}

/// Writes `state` as `trainer.json` in `dir` and syncs it.
pub(crate) fn write_state<S: Serialize>(dir: &Path, state: &S) -> Result<()> {
    let path = dir.join(TRAINER);
    fs::write(&path, serde_json::to_vec_pretty(state).expect("trainer state serialises")).map_err(io(&path))?;
    fsync(&path)
}

/// Reads `trainer.json` of a verified step and checks that it is of the manifest's step.
pub(crate) fn read_state<S: State>(dir: &Path, manifest: &Manifest) -> Result<S> {
    let path = dir.join(TRAINER);
    let state: S = serde_json::from_slice(&fs::read(&path).map_err(io(&path))?).map_err(|e| corrupt(dir, format!("unreadable {TRAINER}: {e}")))?;
    if state.step() != manifest.step {
        return Err(corrupt(dir, format!("{TRAINER} says step {}, the manifest {}", state.step(), manifest.step)));
    }
    Ok(state)
}

/// The staging directory a step is written into before [`commit`].
pub(crate) fn staging_dir(root: &Path, step: i64, suffix: &str) -> Result<PathBuf> {
    fs::create_dir_all(root).map_err(io(root))?;
    let tmp = root.join(staging_name(step, suffix));
    fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    Ok(tmp)
}

/// Commits the step written into `tmp`: seals it ([`seal`]), puts it in place as the step's
/// directory under `root` ([`put_in_place`]) and keeps the newest `keep` steps (all when 0).
pub(crate) fn commit(root: &Path, tmp: &Path, manifest: Manifest, files: &[String], keep: usize) -> Result<PathBuf> {
    let step = manifest.step;
    seal(tmp, manifest, files)?;
    let final_dir = root.join(step_dir_name(step));
    put_in_place(root, tmp, &final_dir, step)?;
    prune(root, keep)?;
    Ok(final_dir)
}

/// Hashes `files` of `tmp` into `manifest` and writes it through a temporary file, synced and
/// renamed: from then on `tmp` holds a complete step.
fn seal(tmp: &Path, manifest: Manifest, files: &[String]) -> Result<()> {
    seal_as(tmp, manifest, files, MANIFEST)
}

/// [`seal`], the manifest written as `manifest_name`.
pub(crate) fn seal_as(tmp: &Path, mut manifest: Manifest, files: &[String], manifest_name: &str) -> Result<()> {
    for name in files {
        let p = tmp.join(name);
        if !p.exists() {
            return Err(corrupt(tmp, format!("{name} was not written")));
        }
        fsync(&p)?;
        let (bytes, sha256) = sha256_file(&p)?;
        manifest.files.insert(name.clone(), FileEntry::Named { bytes, sha256 });
    }
    manifest.checksum = manifest.compute_checksum();
    let manifest_tmp = tmp.join(format!("{manifest_name}.tmp"));
    {
        let mut f = File::create(&manifest_tmp).map_err(io(&manifest_tmp))?;
        f.write_all(&serde_json::to_vec_pretty(&manifest).expect("a manifest serialises")).map_err(io(&manifest_tmp))?;
        f.sync_all().map_err(io(&manifest_tmp))?;
    }
    fs::rename(&manifest_tmp, tmp.join(manifest_name)).map_err(io(tmp))?;
    fsync(tmp)
}

/// Renames the complete step `staged` to `final_dir`. A step already there (a run that resumed
/// from an older step and wrote this one again) is exchanged for it atomically, so that a reader
/// finds the old or the new step there at every moment and a crash loses neither; the old one,
/// then under `staged`'s staging name, is discarded. Where the filesystem cannot exchange (NFS),
/// [`replace_through_aside`].
fn put_in_place(root: &Path, staged: &Path, final_dir: &Path, step: i64) -> Result<()> {
    if !final_dir.exists() {
        fs::rename(staged, final_dir).map_err(io(final_dir))?;
    } else if exchange(staged, final_dir)? {
        fsync(root)?;
        discard(root, step, staged)?;
    } else {
        replace_through_aside(root, staged, final_dir, step)?;
    }
    fsync(root)
}

/// Swaps the directories `a` and `b` in one step (`renameat2` with `RENAME_EXCHANGE`); false
/// where the filesystem or kernel cannot.
fn exchange(a: &Path, b: &Path) -> Result<bool> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|e| io(p)(e.into()));
    let (ca, cb) = (c_path(a)?, c_path(b)?);
    // SAFETY: two NUL-terminated paths that outlive the call.
    let rc = unsafe { libc::renameat2(libc::AT_FDCWD, ca.as_ptr(), libc::AT_FDCWD, cb.as_ptr(), libc::RENAME_EXCHANGE) };
    if rc == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) => Ok(false),
        _ => Err(io(b)(e)),
    }
}

/// Replaces the step `final_dir` with the complete step `staged` without an exchange: the old
/// step is renamed aside to a staging name first, then the new one in, then the aside discarded.
/// Readers find no step of this number between the two renames; a crash there leaves both
/// complete under staging names, and [`sweep`] puts one back.
fn replace_through_aside(root: &Path, staged: &Path, final_dir: &Path, step: i64) -> Result<()> {
    let aside = move_aside(root, final_dir, step)?;
    fs::rename(staged, final_dir).map_err(io(final_dir))?;
    fsync(root)?;
    discard(root, step, &aside)?;
    Ok(())
}

/// Renames the step `final_dir` to its `replaced` staging name; returns that.
fn move_aside(root: &Path, final_dir: &Path, step: i64) -> Result<PathBuf> {
    let aside = root.join(staging_name(step, &format!("{REPLACED}-{}", std::process::id())));
    fs::rename(final_dir, &aside).map_err(io(final_dir))?;
    fsync(root)?;
    Ok(aside)
}

/// Removes the step or staging directory `dir` of `step` under `root`. It is renamed first to a
/// `discarded` staging name, which is only ever removed, so that a crash mid-way leaves nothing
/// that could be listed or put back half deleted, only something the next [`sweep`] finishes.
/// False when `dir` was gone already (another stage sweeping the same root took it).
pub(crate) fn discard(root: &Path, step: i64, dir: &Path) -> Result<bool> {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    // The process id alone repeats across containers (often 1); the clock and a counter do not.
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let suffix = format!("{DISCARDED}-{}-{nanos}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
    let doomed = root.join(staging_name(step, &suffix));
    match fs::rename(dir, &doomed) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io(dir)(e)),
    }
    fs::remove_dir_all(&doomed).map_err(io(&doomed))?;
    Ok(true)
}

/// What [`sweep`] did under a root.
#[derive(Debug, Default)]
pub struct Swept {
    /// Staging directories removed.
    pub removed: Vec<PathBuf>,
    /// Complete steps found under a staging name with no step of their number in place (a
    /// writer died between sealing and renaming, or between the renames of
    /// [`replace_through_aside`]), renamed into place.
    pub restored: Vec<PathBuf>,
}

/// Cleans the staging that writers killed mid-checkpoint left under `root` (each as big as a
/// checkpoint, so repeated preemptions would fill the volume): a staging directory holding a
/// manifest is a complete step (the manifest is written last) and goes into place when its step
/// is missing; every other one is removed. Only names of the staging pattern are touched.
///
/// Call it once at the start of a run, before anything of the run writes a checkpoint:
/// [`newest_intact`] does. Every part of a run (each stage of each replica, one process or many
/// pods on one volume) resumes through it before the agreement on the resumed step, and no part
/// writes before that agreement, so no part of this attempt is writing while any part sweeps:
/// all of what it finds was left by processes that are gone. A process of an earlier attempt
/// still writing its last checkpoint (a pod still terminating) loses that write, cleanly: the
/// staging directory is renamed away before it is removed, so that writer's own rename into place
/// fails rather than committing a half-deleted step. Stages sweeping at once take each entry by
/// renaming it, so each is handled once, and all of them list the same steps afterwards.
pub fn sweep(root: &Path) -> Result<Swept> {
    let mut swept = Swept::default();
    if !root.exists() {
        return Ok(swept);
    }
    let mut staged = vec![];
    for entry in fs::read_dir(root).map_err(io(root))? {
        let entry = entry.map_err(io(root))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((step, suffix)) = parse_staging(&name) else { continue };
        if entry.file_type().map_err(io(root))?.is_dir() {
            // Within a step: a write's own staging first (when a swap died between its renames,
            // the new step goes back, not the old), discarded ones last and never put back.
            let rank = if suffix.starts_with(DISCARDED) {
                2
            } else if suffix.starts_with(REPLACED) {
                1
            } else {
                0
            };
            staged.push((step, rank, entry.path()));
        }
    }
    staged.sort();
    for (step, rank, dir) in staged {
        let final_dir = root.join(step_dir_name(step));
        let restorable = rank < 2 && dir.join(MANIFEST).exists() && !final_dir.exists();
        if restorable {
            match fs::rename(&dir, &final_dir) {
                Ok(()) => {
                    swept.restored.push(final_dir);
                    continue;
                }
                // another stage took it
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                // another stage put a copy of this step in place first: this one goes
                Err(_) if final_dir.exists() => {}
                Err(e) => return Err(io(&dir)(e)),
            }
        }
        if discard(root, step, &dir)? {
            swept.removed.push(dir);
        }
    }
    if !swept.removed.is_empty() || !swept.restored.is_empty() {
        fsync(root)?;
    }
    Ok(swept)
}

/// The layout a manifest's text names (`None` if it names none it can be read for).
fn layout_named(manifest: &[u8]) -> Option<Layout> {
    let value: serde_json::Value = serde_json::from_slice(manifest).ok()?;
    Layout::of(value.get("format")?.as_str()?)
}

/// A step directory holding [`PARTIAL`] holds only some of the files its manifest lists: the
/// parts of the stages of one pod, brought from object storage ([`remote`]) by a pod that shares
/// no directory with the other stages. [`verify`] checks the files it holds; loading takes the
/// names it needs from them.
pub const PARTIAL: &str = "PARTIAL";

/// Checks a step before anything is loaded from it: a manifest of the `expected` layout (one of
/// the other layout is refused saying which it is), its checksum, and every file's size and
/// SHA-256 (in a [`PARTIAL`] step, every file it holds). Returns the manifest.
pub fn verify(dir: &Path, expected: Layout) -> Result<Manifest> {
    let partial = dir.join(PARTIAL).exists();
    let mpath = dir.join(MANIFEST);
    let text = fs::read(&mpath).map_err(io(&mpath))?;
    if let Some(found) = layout_named(&text).filter(|l| *l != expected) {
        return Err(mismatch(dir, format!("it is a {:?} step, read as a {:?} one", found.format(), expected.format())));
    }
    let manifest: Manifest = serde_json::from_slice(&text).map_err(|e| corrupt(dir, format!("unreadable manifest: {e}")))?;
    if Layout::of(&manifest.format) != Some(expected) {
        return Err(corrupt(dir, format!("format {:?}, expected {:?}", manifest.format, expected.format())));
    }
    if manifest.checksum != manifest.compute_checksum() {
        return Err(corrupt(dir, "manifest checksum does not match its contents".into()));
    }
    let total = manifest.files.values().map(|e| e.parts().0).sum();
    crate::progress::begin(&format!("verify {}", dir.display()), "bytes", Some(total));
    let checked = (|| {
        for (name, entry) in &manifest.files {
            let p = dir.join(name);
            if !p.exists() {
                if partial {
                    continue;
                }
                return Err(corrupt(dir, format!("{name} is missing")));
            }
            let (bytes, sha) = sha256_file_with(&p, crate::progress::advance)?;
            let (want_bytes, want_sha) = entry.parts();
            if bytes != want_bytes || sha != want_sha {
                return Err(corrupt(
                    dir,
                    format!("{name} has {bytes} bytes with SHA-256 {sha}, the manifest says {want_bytes} bytes with {want_sha}"),
                ));
            }
        }
        Ok(())
    })();
    match checked {
        Ok(()) => {
            crate::progress::end();
            Ok(manifest)
        }
        Err(e) => {
            crate::progress::cancel();
            Err(e)
        }
    }
}

/// Checks every name, shape and dtype of `weights` and `optimizer` against `store` and the
/// optimizer's state views `wanted`, then copies them in: nothing is modified unless everything
/// matches. `exact`: the checkpoint holds no weight the store lacks (a single-process checkpoint;
/// a pipelined one holds every stage's).
pub(crate) fn restore_tensors(
    dir: &Path,
    store: &mut crate::params::ParamStore,
    wanted: Vec<(String, Tensor)>,
    weights: &BTreeMap<String, Tensor>,
    optimizer: &BTreeMap<String, Tensor>,
    exact: bool,
) -> Result<()> {
    if exact && weights.len() != store.specs.len() {
        return Err(mismatch(dir, format!("{} weights in the checkpoint, {} in the model", weights.len(), store.specs.len())));
    }
    for s in &store.specs {
        let t = weights.get(&s.name).ok_or_else(|| mismatch(dir, format!("no weight named {}", s.name)))?;
        if t.size() != s.shape || t.kind() != Kind::Float {
            return Err(mismatch(dir, format!("{}: {:?} {:?} in the checkpoint, {:?} f32 in the model", s.name, t.size(), t.kind(), s.shape)));
        }
    }
    if exact && optimizer.len() != wanted.len() {
        return Err(mismatch(
            dir,
            format!("{} optimizer tensors in the checkpoint, {} expected (was it written with another optimizer?)", optimizer.len(), wanted.len()),
        ));
    }
    for (name, dst) in &wanted {
        let t = optimizer.get(name).ok_or_else(|| mismatch(dir, format!("no optimizer state named {name} (another optimizer?)")))?;
        if t.size() != dst.size() {
            return Err(mismatch(dir, format!("optimizer state {name}: {:?} in the checkpoint, {:?} expected", t.size(), dst.size())));
        }
    }
    let _guard = tch::no_grad_guard();
    for (i, s) in store.specs.iter().enumerate() {
        store.master_view(i).copy_(&weights[&s.name]);
    }
    for (name, mut dst) in wanted {
        dst.copy_(&optimizer[&name]);
    }
    store.sync_compute();
    Ok(())
}

/// The layout of the committed step `dir`, as its manifest names it; a manifest that names none
/// is taken for the layout runs write, whose verification then says what is wrong with it.
pub fn layout_of(dir: &Path) -> Result<Layout> {
    let mpath = dir.join(MANIFEST);
    let text = fs::read(&mpath).map_err(io(&mpath))?;
    Ok(layout_named(&text).unwrap_or(Layout::Pipelined))
}

/// Verifies the committed step `dir`, of either layout, and loads its weights alone into
/// `store`, which holds a whole model (a pipelined step, written by any number of stages,
/// included): a model that does not train on, such as a distillation teacher. The optimizer
/// state is not read. Returns the step's manifest.
pub fn load_weights(dir: &Path, store: &mut crate::params::ParamStore) -> Result<Manifest> {
    match layout_of(dir)? {
        Layout::Pipelined => pipelined::load_weights(dir, store),
        Layout::Single => single::load_weights(dir, store),
    }
}

/// Committed checkpoints under `root`, oldest first: directories named as [`step_dir_name`]
/// writes them that hold a manifest.
pub fn list(root: &Path) -> Result<Vec<(i64, PathBuf)>> {
    if !root.exists() {
        return Ok(vec![]);
    }
    let mut out = vec![];
    for entry in fs::read_dir(root).map_err(io(root))? {
        let entry = entry.map_err(io(root))?;
        let name = entry.file_name().to_string_lossy().to_string();
        if let Some(step) = parse_step_name(&name)
            && entry.path().join(MANIFEST).exists()
        {
            out.push((step, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

pub fn latest(root: &Path) -> Result<Option<PathBuf>> {
    Ok(list(root)?.pop().map(|(_, p)| p))
}

/// The step `path` names: itself when it holds a manifest (a step directory), else the newest
/// committed step under it (a checkpoint root), if any.
pub fn step_or_latest(path: &Path) -> Result<Option<PathBuf>> {
    if path.join(MANIFEST).exists() { Ok(Some(path.to_path_buf())) } else { latest(path) }
}

/// Removes all but the newest `keep` committed steps (none when 0). Only [`list`]'s steps are
/// touched: nothing else under the root, whoever put it there.
pub(crate) fn prune(root: &Path, keep: usize) -> Result<()> {
    let all = list(root)?;
    if keep > 0 && all.len() > keep {
        for (step, p) in &all[..all.len() - keep] {
            discard(root, *step, p)?;
        }
    }
    Ok(())
}

/// Renames a corrupt checkpoint `<step dir>.corrupt` (`.corrupt-2`, ... if taken), out of
/// [`list`]'s sight but kept for a person to look at; returns the new path.
pub fn set_aside(dir: &Path) -> Result<PathBuf> {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut aside = dir.with_file_name(format!("{name}.corrupt"));
    let mut n = 2;
    while aside.exists() {
        aside = dir.with_file_name(format!("{name}.corrupt-{n}"));
        n += 1;
    }
    fs::rename(dir, &aside).map_err(io(dir))?;
    if let Some(root) = dir.parent() {
        fsync(root)?;
    }
    Ok(aside)
}

/// The step a run resumes from. First the staging left by killed writers is swept ([`sweep`],
/// which says why this is the place: every part of a run calls this before any part writes).
/// Then `load` is tried on the committed steps under `root`, newest first, until one loads. A
/// corrupt or partial newer step (a node lost mid-write, a flipped byte) is passed over and
/// returned in [`Resumed::corrupt`] for [`Resumed::set_aside`]; any other failure (a checkpoint
/// of another model or layout, an unreadable directory) is returned as it is, and so is the
/// newest step's error when every step is corrupt: a run does not start over on top of
/// checkpoints it cannot read. `None` when there is no committed step.
pub fn newest_intact<T>(root: &Path, mut load: impl FnMut(&Path) -> anyhow::Result<T>) -> anyhow::Result<Option<Resumed<T>>> {
    let swept = sweep(root)?;
    for step in &swept.restored {
        crate::warn!("{} was complete under a staging name when its writer stopped; put it in place", step.display());
    }
    if !swept.removed.is_empty() {
        crate::warn!("removed {} staging directories of interrupted checkpoint writes under {}", swept.removed.len(), root.display());
    }
    let mut corrupt: Vec<(PathBuf, anyhow::Error)> = Vec::new();
    for (_, dir) in list(root)?.into_iter().rev() {
        match load(&dir) {
            Ok(loaded) => return Ok(Some(Resumed { loaded, dir, corrupt })),
            Err(e) if CheckpointError::is_corrupt_error(&e) => corrupt.push((dir, e)),
            Err(e) => return Err(e),
        }
    }
    match corrupt.into_iter().next() {
        Some((_, newest)) => Err(newest),
        None => Ok(None),
    }
}

/// What [`newest_intact`] resumed from.
pub struct Resumed<T> {
    pub loaded: T,
    pub dir: PathBuf,
    /// The newer steps passed over, newest first, and why.
    pub corrupt: Vec<(PathBuf, anyhow::Error)>,
}

impl<T> Resumed<T> {
    /// One line per corrupt step passed over: what is wrong with it, and what was loaded.
    pub fn notes(&self) -> Vec<String> {
        let dir = self.dir.display();
        self.corrupt.iter().map(|(_, why)| format!("{why:#}; resumed from {dir} instead, and set the corrupt one aside as <step>.corrupt")).collect()
    }

    /// Renames the corrupt steps passed over (see [`set_aside`]) and says so on stderr. In a
    /// pipeline one process does it, once every stage has loaded.
    pub fn set_aside(&self) -> Result<()> {
        for ((bad, _), note) in self.corrupt.iter().zip(self.notes()) {
            let kept = set_aside(bad)?;
            crate::warn!("{note} ({})", kept.display());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
