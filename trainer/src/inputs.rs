//! The inputs a job reads (its corpus, tokenizer file, evaluation sets, init model and a
//! distillation teacher's checkpoint), wherever the spec names them: a local path is used as it
//! is; an `s3://bucket/key-or-prefix` URI is first downloaded into a local cache, one object or
//! every object under a prefix, and the local readers then run on the copy. All of an input
//! comes down before training starts: nothing is streamed yet, and the cache is not bounded.
//!
//!   <cache>/s3/<bucket>/<key>          the copies
//!   <cache>/meta/s3/<bucket>/<key>     what each copy was made from: the object's size and ETag
//!
//! A copy whose size and ETag are the bucket's is reused, not downloaded again; an object that
//! changed comes down anew; a file under a prefix that the bucket no longer holds is removed from
//! the copy (a corpus directory read whole must not keep a file the bucket lost). Each object
//! comes down beside its place and is renamed into it once its size and ETag are checked, so a
//! copy is never half an object, and processes sharing a cache never read one.
//!
//! The store is reached with the job's own store settings (`spec.checkpoint.store`'s endpoint
//! and region, else `spec.export.store`'s) when it names one, else with the environment's
//! (`AWS_ENDPOINT_URL`, `AWS_REGION`), and with the environment's credentials, which the
//! operator sets from `credentialsSecret`. A missing bucket or object, a wrong key or an
//! unreachable endpoint is a [`ConfigurationError`] naming the field, the URI and what the store
//! said, before anything trains.

use crate::checkpoint::{MANIFEST, remote};
use crate::data::streamed::{STREAMED_FILE, Streamed, StreamedShard};
use crate::job::ConfigurationError;
use crate::store::{Location, ObjectInfo, Store, StoreError};
use anyhow::{Context, Result};
use frugal_api::contract::env;
use frugal_api::v1alpha1::TrainingJobSpec;
use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

/// What an input's field takes, which decides what of the bucket comes down.
pub use frugal_api::v1alpha1::InputShape as Shape;

/// Whether a spec's value names a location by URI (`s3://...`; any other scheme is refused)
/// rather than a local path.
pub fn is_uri(value: &str) -> bool {
    value.split_once("://").is_some_and(|(scheme, _)| {
        scheme.starts_with(|c: char| c.is_ascii_alphabetic()) && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c))
    })
}

/// An input brought from the store into the cache.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resolved {
    /// The spec's field (`spec.data.source.text.path`).
    pub field: String,
    pub uri: String,
    /// The local copy the readers take, a file or a directory.
    pub path: PathBuf,
    /// The objects the input holds, and their bytes.
    pub objects: usize,
    pub bytes: u64,
    /// Of those, the ones downloaded now; the others were in the cache, unchanged.
    pub downloaded: usize,
    pub downloaded_bytes: u64,
    /// Of those, the ones read in ranges as training needs them (shards), not downloaded.
    pub streamed: usize,
}

/// Where inputs come from (the store's settings, the environment's credentials) and where their
/// copies go.
pub struct Inputs {
    pub cache: PathBuf,
    settings: Option<Location>,
    vars: Vec<(String, String)>,
}

impl std::fmt::Debug for Inputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // not the environment: it holds the credentials
        f.debug_struct("Inputs").field("cache", &self.cache).field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl Inputs {
    /// The inputs of a job of `spec` in this process: its store settings, this process's
    /// environment, and the cache in `FRUGAL_CACHE_DIR`, else `frugal-inputs` in the temporary
    /// directory.
    pub fn of_job(spec: &TrainingJobSpec) -> Result<Self, ConfigurationError> {
        let cache = std::env::var_os(env::CACHE_DIR)
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join("frugal-inputs"));
        Ok(Self::new(cache, settings_of(spec)?, std::env::vars().collect()))
    }

    /// Inputs reached with the endpoint and region of `settings` (else the environment's) and
    /// the `AWS_*` settings among `vars`, copied under `cache`.
    pub fn new(cache: PathBuf, settings: Option<Location>, vars: Vec<(String, String)>) -> Self {
        Self { cache, settings, vars }
    }

    /// The local path the readers of `field` take for `value`: the value itself when it is a
    /// local path (`None`), else the copy of what the URI names, brought up to date first.
    pub fn resolve(&self, field: &str, value: &str, shape: Shape) -> Result<Option<Resolved>> {
        if !is_uri(value) {
            return Ok(None);
        }
        let location = Location::input(field, value, self.settings.as_ref()).map_err(ConfigurationError)?;
        let store = location.open_with(self.vars.clone()).map_err(ConfigurationError)?;
        let local = self.local_path(&location);
        let uri = location.uri();
        // Listed first, whatever the shape: a missing bucket, a wrong key or an endpoint that
        // does not answer is refused here in the store's own words (a HEAD's answer has none).
        let under = store.list_objects("").map_err(refused)?;
        let as_prefix = value.ends_with('/') || location.prefix.is_empty();
        let object = match shape {
            Shape::File | Shape::Tokenizer | Shape::FileOrDirectory if !as_prefix => match store.head("") {
                Ok(o) => Some(o),
                Err(e) if e.is_not_found() && shape == Shape::FileOrDirectory && !under.is_empty() => None,
                Err(e) if e.is_not_found() && !under.is_empty() => return Err(not_one_file(field, &uri, under.len()).into()),
                Err(e) => return Err(refused(e).into()),
            },
            _ => None,
        };
        if let Some(object) = object {
            let mut resolved = self.mirror(&store, &[object], &local, &uri, false)?;
            if shape == Shape::Tokenizer {
                self.add_tokenizer_config(&location, &mut resolved)?;
            }
            return Ok(Some(Resolved { path: local, ..resolved }));
        }
        if under.is_empty() {
            return Err(ConfigurationError(format!(
                "{field} ({uri}): the bucket holds no object under this prefix{}: upload it, or fix the URI",
                if as_prefix { "" } else { ", nor one of this key" }
            ))
            .into());
        }
        if matches!(shape, Shape::File | Shape::Tokenizer) {
            return Err(not_one_file(field, &uri, under.len()).into());
        }
        if shape == Shape::Shards {
            return self.stream_shards(&store, &under, &local, &uri).map(Some);
        }
        if shape == Shape::Checkpoint && !under.iter().any(|o| o.name == MANIFEST) {
            return self.fetch_checkpoint(&store, &local, field, &uri, &under).map(Some);
        }
        Ok(Some(self.mirror(&store, &under, &local, &uri, true)?))
    }

    /// A shard directory in the bucket: its small files come down into `local` as any
    /// directory's, its `.bin` shards do not; [`STREAMED_FILE`] there lists them, and the shard
    /// reader fetches their ranges as training needs them ([`crate::data::streamed`]).
    fn stream_shards(&self, store: &Store, under: &[ObjectInfo], local: &Path, uri: &str) -> Result<Resolved> {
        let (shards, small): (Vec<ObjectInfo>, Vec<ObjectInfo>) = under.iter().cloned().partition(|o| o.name.ends_with(".bin"));
        let mut resolved = self.mirror(store, &small, local, uri, false)?;
        std::fs::create_dir_all(local).with_context(|| format!("creating {}", local.display()))?;
        // shards copied whole before go; the record is not the bucket's, and is rewritten below
        let keep = small.iter().map(|o| o.name.as_str()).chain([STREAMED_FILE]).map(|n| local.join(n)).collect();
        self.remove_stale(local, &keep)?;
        let location = &store.location;
        let record = Streamed {
            field: location.field.clone(),
            uri: location.uri(),
            endpoint: location.endpoint.clone(),
            region: location.region.clone(),
            shards: shards.iter().map(|o| StreamedShard { name: o.name.clone(), size: o.size, etag: o.etag.clone() }).collect(),
        };
        record.write(local)?;
        resolved.objects += shards.len();
        resolved.bytes += shards.iter().map(|o| o.size).sum::<u64>();
        resolved.streamed = shards.len();
        Ok(resolved)
    }

    /// Where the copy of `location`'s key or prefix goes.
    pub fn local_path(&self, location: &Location) -> PathBuf {
        let bucket = self.cache.join("s3").join(&location.bucket);
        if location.prefix.is_empty() { bucket } else { bucket.join(&location.prefix) }
    }

    /// Where what the copy `local` was made from is recorded.
    fn meta_path(&self, local: &Path) -> PathBuf {
        self.cache.join("meta").join(local.strip_prefix(&self.cache).unwrap_or(local))
    }

    /// Brings the copies of `objects` (names relative to the store's prefix) under `local` up
    /// to date: a file when `objects` is the object at the prefix itself (its name empty),
    /// else a directory, from which files the bucket no longer holds are removed when
    /// `whole_dir`.
    fn mirror(&self, store: &Store, objects: &[ObjectInfo], local: &Path, uri: &str, whole_dir: bool) -> Result<Resolved> {
        let field = &store.location.field;
        let mut resolved = Resolved { field: field.clone(), uri: uri.into(), path: local.to_path_buf(), ..Default::default() };
        let mut wanted = Vec::new();
        for o in objects {
            // a "directory" marker some tools write holds nothing to read
            if o.name.ends_with('/') {
                continue;
            }
            let dest = if o.name.is_empty() { local.to_path_buf() } else { local.join(relative(field, uri, &o.name)?) };
            resolved.objects += 1;
            resolved.bytes += o.size;
            if !self.is_fresh(&dest, o) {
                wanted.push((o, dest));
            }
        }
        let total = wanted.iter().map(|(o, _)| o.size).sum();
        if !wanted.is_empty() {
            crate::progress::begin(&format!("download {uri}"), "bytes", Some(total));
        }
        for (o, dest) in &wanted {
            let got = self.download(store, o, dest, uri).inspect_err(|_| crate::progress::cancel())?;
            crate::progress::advance(got);
            resolved.downloaded += 1;
            resolved.downloaded_bytes += got;
        }
        if !wanted.is_empty() {
            crate::progress::end();
        }
        if whole_dir {
            std::fs::create_dir_all(local).with_context(|| format!("creating {}", local.display()))?;
            let keep: BTreeSet<PathBuf> = objects.iter().filter(|o| !o.name.ends_with('/')).map(|o| local.join(&o.name)).collect();
            self.remove_stale(local, &keep)?;
        }
        Ok(resolved)
    }

    /// Whether `dest` is a copy of `object` as the bucket holds it now: its recorded size and
    /// ETag are the object's, and the file is that size.
    fn is_fresh(&self, dest: &Path, object: &ObjectInfo) -> bool {
        let recorded = std::fs::read(self.meta_path(dest)).ok().and_then(|b| serde_json::from_slice::<Recorded>(&b).ok());
        let on_disk = std::fs::metadata(dest).ok().filter(|m| m.is_file()).map(|m| m.len());
        recorded.is_some_and(|r| r.size == object.size && r.etag == object.etag) && on_disk == Some(object.size)
    }

    /// Downloads `object` beside `dest`, checks that what came is the object as listed (its
    /// size and ETag), and renames it into place, then records it. Returns its bytes.
    fn download(&self, store: &Store, object: &ObjectInfo, dest: &Path, uri: &str) -> Result<u64> {
        let parent = dest.parent().context("a copy has a directory")?;
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        let file_name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let part = parent.join(format!(".{file_name}.download-{}", std::process::id()));
        let got = match store.get_object(&object.name, &part) {
            Ok(got) => got,
            Err(e) => {
                let _ = std::fs::remove_file(&part);
                // refused (gone since the listing, not with these keys): asking again will not help
                return Err(if e.is_refusal() { refused(e).into() } else { e.into() });
            }
        };
        let changed = got.size != object.size || (got.etag.is_some() && object.etag.is_some() && got.etag != object.etag);
        if changed {
            let _ = std::fs::remove_file(&part);
            anyhow::bail!(
                "{} ({uri}): {} changed while it came down ({} bytes, ETag {:?}; listed {} bytes, ETag {:?}): run again once it is written",
                store.location.field,
                if object.name.is_empty() { "the object" } else { object.name.as_str() },
                got.size,
                got.etag,
                object.size,
                object.etag
            );
        }
        std::fs::rename(&part, dest).with_context(|| format!("renaming {} to {}", part.display(), dest.display()))?;
        let meta = self.meta_path(dest);
        let meta_dir = meta.parent().context("a record has a directory")?;
        std::fs::create_dir_all(meta_dir).with_context(|| format!("creating {}", meta_dir.display()))?;
        let tmp = meta_dir.join(format!(".{file_name}.{}", std::process::id()));
        std::fs::write(&tmp, serde_json::to_vec(&Recorded { size: got.size, etag: got.etag })?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &meta).with_context(|| format!("renaming {} to {}", tmp.display(), meta.display()))?;
        Ok(got.size)
    }

    /// Removes the files under `dir` that are not in `keep` (objects gone from the bucket), with
    /// their records; files being downloaded by another process are left alone.
    fn remove_stale(&self, dir: &Path, keep: &BTreeSet<PathBuf>) -> Result<()> {
        for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                self.remove_stale(&path, keep)?;
            } else if !keep.contains(&path) && !entry.file_name().to_string_lossy().contains(".download-") {
                std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
                let _ = std::fs::remove_file(self.meta_path(&path));
            }
        }
        Ok(())
    }

    /// Adds the `tokenizer_config.json` beside the tokenizer file `location`, when the bucket has
    /// one there.
    fn add_tokenizer_config(&self, location: &Location, resolved: &mut Resolved) -> Result<()> {
        let (parent, _) = location.prefix.rsplit_once('/').unwrap_or(("", location.prefix.as_str()));
        let beside = Location { prefix: parent.into(), ..location.clone() };
        let store = beside.open_with(self.vars.clone()).map_err(ConfigurationError)?;
        let config = match store.head(CONFIG) {
            Ok(o) => o,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(refused(e).into()),
        };
        let more = self.mirror(&store, &[config], &self.local_path(&beside), &format!("{}/{CONFIG}", beside.uri()), false)?;
        resolved.objects += more.objects;
        resolved.bytes += more.bytes;
        resolved.downloaded += more.downloaded;
        resolved.downloaded_bytes += more.downloaded_bytes;
        Ok(())
    }

    /// Brings the newest intact committed step of the checkpoint root in the store into the
    /// root `local` (as a resume from the bucket does), unless `local` holds it already.
    fn fetch_checkpoint(&self, store: &Store, local: &Path, field: &str, uri: &str, under: &[ObjectInfo]) -> Result<Resolved> {
        std::fs::create_dir_all(local).with_context(|| format!("creating {}", local.display()))?;
        let fetched = remote::fetch(store, local).map_err(|e| ConfigurationError(format!("{field} ({uri}): {e:#}")))?;
        for c in &fetched.corrupt {
            crate::warn!("{field}: {c}");
        }
        let newest = crate::checkpoint::latest(local).ok().flatten();
        let step_objects = newest
            .as_ref()
            .and_then(|d| d.file_name())
            .map(|step| under.iter().filter(|o| o.name.starts_with(&format!("{}/", step.to_string_lossy()))).collect::<Vec<_>>())
            .unwrap_or_default();
        Ok(Resolved {
            field: field.into(),
            uri: uri.into(),
            path: local.to_path_buf(),
            objects: step_objects.len(),
            bytes: step_objects.iter().map(|o| o.size).sum(),
            downloaded: if fetched.dir.is_some() { step_objects.len() } else { 0 },
            downloaded_bytes: fetched.bytes,
            streamed: 0,
        })
    }
}

/// The tokenizer's configuration, read beside a `tokenizer.json` for its end-of-text token.
const CONFIG: &str = "tokenizer_config.json";

/// What a copy was made from.
#[derive(serde::Serialize, serde::Deserialize)]
struct Recorded {
    size: u64,
    etag: Option<String>,
}

/// The store refused, or could not be asked: a configuration error in the store's words.
fn refused(e: StoreError) -> ConfigurationError {
    ConfigurationError(format!("{e:#}"))
}

/// A field that takes one file was given a prefix of `objects` objects.
fn not_one_file(field: &str, uri: &str, objects: usize) -> ConfigurationError {
    ConfigurationError(format!("{field} ({uri}): no object has this key, but it is a prefix of {objects} objects: {field} names one file"))
}

/// An object's name under a prefix as a relative local path, refusing one that would leave the
/// copy's directory.
fn relative(field: &str, uri: &str, name: &str) -> Result<PathBuf> {
    let path = PathBuf::from(name);
    if path.components().all(|c| matches!(c, Component::Normal(_))) {
        Ok(path)
    } else {
        Err(ConfigurationError(format!("{field} ({uri}): the object {name:?} cannot be copied under the prefix's directory")).into())
    }
}

/// The store settings an input URI is reached with: `spec.checkpoint.store`'s, else
/// `spec.export.store`'s (the pods' credentials are theirs), else none (the environment's).
pub fn settings_of(spec: &TrainingJobSpec) -> Result<Option<Location>, ConfigurationError> {
    let export = spec.export.as_ref().and_then(|e| e.store.as_ref()).map(|s| (crate::export_store::FIELD, s));
    let checkpoint = spec.checkpoint.store.as_ref().map(|s| (remote::STORE_FIELD, s));
    checkpoint.or(export).map(|(field, s)| Location::of(field, s).map_err(ConfigurationError)).transpose()
}

// The job's side of resolving lives here, as an inherent method of `Job`, so that the job module
// does not import this one (which imports the job module's ConfigurationError).
impl crate::job::Job {
    /// Brings the inputs the spec names by `s3://` URI (the corpus, the tokenizer file, the
    /// evaluation sets, the init model and a distillation teacher's checkpoint) into `inputs`'
    /// cache, and points the spec at the copies, so that everything after this reads local
    /// paths; a local path stays as it is. A missing object, a wrong key or an unreachable store
    /// is a [`ConfigurationError`] naming the field, the URI and the store's words. Returns what
    /// was resolved, one entry per URI.
    pub fn resolve_inputs(&mut self, inputs: &Inputs) -> Result<Vec<Resolved>> {
        let mut resolved = Vec::new();
        for f in self.spec.input_fields() {
            if let Some(r) = inputs.resolve(&f.field, f.value, f.shape)? {
                *f.value = r.path.to_string_lossy().into_owned();
                resolved.push(r);
            }
        }
        Ok(resolved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_with_a_scheme_is_a_uri_and_anything_else_a_local_path() {
        for uri in ["s3://corpora/web.jsonl", "s3://models/gpt2/", "gs://corpora/x", "hf://gpt2", "https://example.com/x"] {
            assert!(is_uri(uri), "{uri}");
        }
        for path in ["/data/corpus.txt", "data/shards", "./s3:/x", "://x", "C:\\data", "1s3://x"] {
            assert!(!is_uri(path), "{path}");
        }
    }

    fn inputs(settings: Option<Location>) -> Inputs {
        Inputs::new(PathBuf::from("/cache"), settings, vec![])
    }

    #[test]
    fn a_local_path_is_used_as_it_is_and_another_scheme_is_refused_naming_the_field() {
        let i = inputs(None);
        assert_eq!(i.resolve("spec.data.source.text.path", "/data/corpus.txt", Shape::FileOrDirectory).unwrap(), None);
        for (uri, says) in [
            ("gs://corpora/web.jsonl", "is not an s3://<bucket>/<prefix> URI"),
            ("s3://Corpora/web.jsonl", "is not a bucket name"),
            ("s3://corpora/web/../x", "'..' part"),
        ] {
            let e = i.resolve("spec.data.source.text.path", uri, Shape::FileOrDirectory).unwrap_err();
            let config = e.downcast_ref::<ConfigurationError>().unwrap_or_else(|| panic!("{uri}: not a configuration error: {e:#}"));
            assert!(config.0.starts_with("spec.data.source.text.path: ") && config.0.contains(says), "{uri}: {}", config.0);
        }
    }

    #[test]
    fn a_copy_lies_under_its_bucket_and_key_and_its_record_beside_the_copies() {
        let i = inputs(None);
        let l = Location::input("f", "s3://corpora/web/part-0.jsonl", None).unwrap();
        assert_eq!(i.local_path(&l), Path::new("/cache/s3/corpora/web/part-0.jsonl"));
        assert_eq!(i.meta_path(&i.local_path(&l)), Path::new("/cache/meta/s3/corpora/web/part-0.jsonl"));
        let root = Location::input("f", "s3://corpora", None).unwrap();
        assert_eq!(i.local_path(&root), Path::new("/cache/s3/corpora"));
        assert!(relative("f", "s3://b/p", "a/b.bin").is_ok());
        for bad in ["../x", "/etc/passwd", "a/../b", "./a"] {
            let e = relative("f", "s3://b/p", bad).map(|_| ()).unwrap_err().to_string();
            assert!(e.contains("cannot be copied"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_copy_is_fresh_only_with_the_objects_size_and_etag() {
        let dir = std::env::temp_dir().join(format!("frugal-inputs-fresh-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let i = Inputs::new(dir.clone(), None, vec![]);
        let dest = dir.join("s3/b/k.txt");
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::write(&dest, b"hello").unwrap();
        let o = ObjectInfo { name: String::new(), size: 5, etag: Some("\"abc\"".into()) };
        assert!(!i.is_fresh(&dest, &o), "no record: not fresh");
        let meta = i.meta_path(&dest);
        std::fs::create_dir_all(meta.parent().unwrap()).unwrap();
        std::fs::write(&meta, serde_json::to_vec(&Recorded { size: 5, etag: o.etag.clone() }).unwrap()).unwrap();
        assert!(i.is_fresh(&dest, &o));
        assert!(!i.is_fresh(&dest, &ObjectInfo { etag: Some("\"def\"".into()), ..o.clone() }), "another version");
        assert!(!i.is_fresh(&dest, &ObjectInfo { size: 6, ..o.clone() }), "another size");
        std::fs::write(&dest, b"hell").unwrap();
        assert!(!i.is_fresh(&dest, &o), "a copy cut short");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn inputs_take_the_checkpoint_stores_settings_else_the_export_stores() {
        let manifest = "apiVersion: frugal.dev/v1alpha1\nkind: TrainingJob\nmetadata: {name: lm}\nspec:\n  model: {type: Preset, preset: tiny}\n  data: {source: {type: Synthetic}}\n";
        let mut spec = crate::job::parse(manifest).unwrap().spec;
        assert_eq!(settings_of(&spec).unwrap(), None);
        let store = |uri: &str, endpoint: &str| frugal_api::v1alpha1::ObjectStoreSpec {
            uri: uri.into(),
            endpoint: Some(endpoint.into()),
            region: None,
            credentials_secret: None,
        };
        spec.export = Some(frugal_api::v1alpha1::ExportSpec { store: Some(store("s3://exports", "http://exports:8333")), ..Default::default() });
        assert_eq!(settings_of(&spec).unwrap().unwrap().endpoint.as_deref(), Some("http://exports:8333"));
        spec.checkpoint.store = Some(store("s3://ckpt", "http://ckpt:8333"));
        assert_eq!(settings_of(&spec).unwrap().unwrap().endpoint.as_deref(), Some("http://ckpt:8333"));
        let shown = format!("{:?}", Inputs::new(PathBuf::from("/c"), None, vec![("AWS_SECRET_ACCESS_KEY".into(), "very-secret".into())]));
        assert!(!shown.contains("very-secret"), "{shown}");
    }
}
