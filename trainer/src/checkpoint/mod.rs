//! Checkpoints: a directory per step under the job's checkpoint path, in one of two layouts. This
//! module knows files, not runs: it takes tensors and a state to write and hands them back
//! verified, so that the trainer and the pipeline depend on it and not the other way round.
//!
//!   [`single`]     a single-process run: `model.safetensors`, `optimizer.safetensors`
//!   [`pipelined`]  a pipelined run: `stage-<i>.model.safetensors`, `stage-<i>.optimizer...`
//!
//! Both hold `trainer.json` (step, tokens, data position, loss scaler) and `MANIFEST.json`,
//! written last: the layout, the step, and the size and SHA-256 of every other file, with a
//! checksum of its own. This module is what the layouts share: the files are written into a
//! temporary directory and synced, the manifest is written through a temporary file, synced and
//! renamed, and the directory is renamed into place ([`commit`]), so a step either is complete
//! on disk or does not exist; [`verify`] checks a step before any weight is touched and says
//! when it was written in the other layout; [`newest_intact`] finds the step a run resumes from,
//! passing over corrupt ones; older steps are pruned.

pub mod pipelined;
pub mod single;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
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
    fn of(format: &str) -> Option<Self> {
        match format {
            f if f == Self::Single.format() => Some(Self::Single),
            f if f == Self::Pipelined.format() || f == PIPELINED_V1 => Some(Self::Pipelined),
            _ => None,
        }
    }

    /// Why a step of this layout cannot load into a run of the other one.
    fn refusal(self) -> &'static str {
        match self {
            Self::Pipelined => {
                "it was written by a pipelined run (one part per stage), and this job trains in one process: resume it with \
                 the job that wrote it (parallelism.pipelineStages > 1); `frugal-trainer eval` of that job reads it"
            }
            Self::Single => {
                "it was written by a single-process run, and this job trains as a pipeline: resume it with the job that \
                 wrote it (parallelism.pipelineStages 1)"
            }
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
enum FileEntry {
    Named {
        bytes: u64,
        sha256: String,
    },
    /// `[bytes, sha256]`, as `frugal-pipeline-checkpoint/1` wrote it.
    Pair(u64, String),
}

impl FileEntry {
    fn parts(&self) -> (u64, &str) {
        match self {
            Self::Named { bytes, sha256 } | Self::Pair(bytes, sha256) => (*bytes, sha256),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub step: i64,
    /// The single-process layout: the model's fingerprint (names, shapes, dtypes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_fingerprint: Option<String>,
    /// The pipelined layout: how many stages wrote it (any count can load it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stages: Option<usize>,
    files: BTreeMap<String, FileEntry>,
    /// SHA-256 of this manifest serialised with `checksum` empty.
    checksum: String,
}

impl Manifest {
    pub(crate) fn new(layout: Layout, step: i64) -> Self {
        Self { format: layout.format().into(), step, model_fingerprint: None, stages: None, files: BTreeMap::new(), checksum: String::new() }
    }

    /// Checks that the manifest lists `name` (verification has checked what it lists).
    pub(crate) fn require(&self, dir: &Path, name: &str) -> Result<()> {
        if self.files.contains_key(name) { Ok(()) } else { Err(corrupt(dir, format!("manifest lists no {name}"))) }
    }

    fn compute_checksum(&self) -> String {
        if self.format == PIPELINED_V1 {
            let files: BTreeMap<&String, (u64, &str)> = self.files.iter().map(|(k, v)| (k, v.parts())).collect();
            let body = serde_json::json!({"format": self.format, "step": self.step, "stages": self.stages, "files": files});
            return hex::encode(Sha256::digest(body.to_string().as_bytes()));
        }
        let body = serde_json::to_vec(&Manifest { checksum: String::new(), ..self.clone() }).expect("a manifest serialises");
        hex::encode(Sha256::digest(&body))
    }
}

fn sha256_file(path: &Path) -> Result<(u64, String)> {
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
    }
    Ok((n, hex::encode(h.finalize())))
}

pub(crate) fn fsync(path: &Path) -> Result<()> {
    File::open(path).and_then(|f| f.sync_all()).map_err(io(path))
}

pub fn step_dir_name(step: i64) -> String {
    format!("step-{step:09}")
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

/// The temporary directory a step is written into before [`commit`].
pub(crate) fn staging_dir(root: &Path, step: i64, suffix: &str) -> Result<PathBuf> {
    fs::create_dir_all(root).map_err(io(root))?;
    let tmp = root.join(format!(".{}.{suffix}", step_dir_name(step)));
    fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    Ok(tmp)
}

/// Commits the step written into `tmp`: hashes `files`, writes the manifest through a temporary
/// file, syncs, renames `tmp` to the step's directory under `root` and keeps the newest `keep`
/// steps (all when 0).
pub(crate) fn commit(root: &Path, tmp: &Path, mut manifest: Manifest, files: &[String], keep: usize) -> Result<PathBuf> {
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
    let manifest_tmp = tmp.join(format!("{MANIFEST}.tmp"));
    {
        let mut f = File::create(&manifest_tmp).map_err(io(&manifest_tmp))?;
        f.write_all(&serde_json::to_vec_pretty(&manifest).expect("a manifest serialises")).map_err(io(&manifest_tmp))?;
        f.sync_all().map_err(io(&manifest_tmp))?;
    }
    fs::rename(&manifest_tmp, tmp.join(MANIFEST)).map_err(io(tmp))?;
    fsync(tmp)?;
    let final_dir = root.join(step_dir_name(manifest.step));
    if final_dir.exists() {
        fs::remove_dir_all(&final_dir).map_err(io(&final_dir))?;
    }
    fs::rename(tmp, &final_dir).map_err(io(&final_dir))?;
    fsync(root)?;
    prune(root, keep)?;
    Ok(final_dir)
}

/// The layout a manifest's text names (`None` if it names none it can be read for).
fn layout_named(manifest: &[u8]) -> Option<Layout> {
    let value: serde_json::Value = serde_json::from_slice(manifest).ok()?;
    Layout::of(value.get("format")?.as_str()?)
}

/// Checks a step before anything is loaded from it: a manifest of the `expected` layout (one of
/// the other layout is refused saying which it is), its checksum, and every file's size and
/// SHA-256. Returns the manifest.
pub fn verify(dir: &Path, expected: Layout) -> Result<Manifest> {
    let mpath = dir.join(MANIFEST);
    let text = fs::read(&mpath).map_err(io(&mpath))?;
    if let Some(found) = layout_named(&text).filter(|l| *l != expected) {
        return Err(mismatch(dir, found.refusal().into()));
    }
    let manifest: Manifest = serde_json::from_slice(&text).map_err(|e| corrupt(dir, format!("unreadable manifest: {e}")))?;
    if Layout::of(&manifest.format) != Some(expected) {
        return Err(corrupt(dir, format!("format {:?}, expected {:?}", manifest.format, expected.format())));
    }
    if manifest.checksum != manifest.compute_checksum() {
        return Err(corrupt(dir, "manifest checksum does not match its contents".into()));
    }
    for (name, entry) in &manifest.files {
        let p = dir.join(name);
        if !p.exists() {
            return Err(corrupt(dir, format!("{name} is missing")));
        }
        let (bytes, sha) = sha256_file(&p)?;
        let (want_bytes, want_sha) = entry.parts();
        if bytes != want_bytes || sha != want_sha {
            return Err(corrupt(dir, format!("{name} has {bytes} bytes with SHA-256 {sha}, the manifest says {want_bytes} bytes with {want_sha}")));
        }
    }
    Ok(manifest)
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

/// Verifies the committed step `dir`, of either layout, and loads its weights alone into
/// `store`, which holds a whole model (a pipelined step, written by any number of stages,
/// included): a model that does not train on, such as a distillation teacher. The optimizer
/// state is not read. Returns the step's manifest.
pub fn load_weights(dir: &Path, store: &mut crate::params::ParamStore) -> Result<Manifest> {
    let mpath = dir.join(MANIFEST);
    let text = fs::read(&mpath).map_err(io(&mpath))?;
    match layout_named(&text) {
        Some(Layout::Pipelined) => pipelined::load_weights(dir, store),
        // verification says what is wrong with a manifest that names no layout
        _ => single::load_weights(dir, store),
    }
}

/// Committed checkpoints under `root`, oldest first.
pub fn list(root: &Path) -> Result<Vec<(i64, PathBuf)>> {
    if !root.exists() {
        return Ok(vec![]);
    }
    let mut out = vec![];
    for entry in fs::read_dir(root).map_err(io(root))? {
        let entry = entry.map_err(io(root))?;
        let name = entry.file_name().to_string_lossy().to_string();
        if let Some(step) = name.strip_prefix("step-").and_then(|s| s.parse::<i64>().ok())
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

fn prune(root: &Path, keep: usize) -> Result<()> {
    let all = list(root)?;
    if keep > 0 && all.len() > keep {
        for (_, p) in &all[..all.len() - keep] {
            fs::remove_dir_all(p).map_err(io(p))?;
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

/// The step a run resumes from: `load` is tried on the committed steps under `root`, newest
/// first, until one loads. A corrupt or partial newer step (a node lost mid-write, a flipped
/// byte) is passed over and returned in [`Resumed::corrupt`] for [`Resumed::set_aside`]; any
/// other failure (a checkpoint of another model or layout, an unreadable directory) is returned
/// as it is, and so is the newest step's error when every step is corrupt: a run does not start
/// over on top of checkpoints it cannot read. `None` when there is no committed step.
pub fn newest_intact<T>(root: &Path, mut load: impl FnMut(&Path) -> anyhow::Result<T>) -> anyhow::Result<Option<Resumed<T>>> {
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
            eprintln!("frugal-trainer: {note} ({})", kept.display());
        }
        Ok(())
    }
}
