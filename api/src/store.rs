//! Object storage: a prefix in a bucket of S3 or an S3-compatible store (`s3://bucket/prefix`,
//! the spec's [`ObjectStoreSpec`]), through the `object_store` crate, with a blocking face for
//! the trainer's threads. Credentials come from the environment only, as AWS's own tools take
//! them (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`,
//! `AWS_ENDPOINT_URL`, `AWS_WEB_IDENTITY_TOKEN_FILE` with `AWS_ROLE_ARN`, ...); nothing here
//! prints or serialises them: a [`Store`] shows its location alone.

use crate::v1alpha1::ObjectStoreSpec;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as Key;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig, WriteMultipart};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Files at least this large go up in parts of this size (S3 takes parts of 5 MiB and more).
const PART_BYTES: usize = 16 << 20;
/// Parts of one file in flight at once.
const PARTS_IN_FLIGHT: usize = 4;
/// The longest a request may take, its body included (the client's default, 30 s, cuts off a
/// checkpoint file of a few GB streamed down in one GET).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(900);
/// The longest the check before training waits for the store's answer.
const CHECK_TIMEOUT: Duration = Duration::from_secs(60);

/// A failed operation on the store, naming the spec's field, the location, what was asked and
/// what the store said (its own error code and message are in `source`).
#[derive(Debug, thiserror::Error)]
#[error("{field} ({uri}): {what}: {source}")]
pub struct StoreError {
    pub field: String,
    pub uri: String,
    pub what: String,
    #[source]
    pub source: Box<object_store::Error>,
}

impl StoreError {
    /// The object asked for is not there.
    pub fn is_not_found(&self) -> bool {
        matches!(*self.source, object_store::Error::NotFound { .. })
    }

    /// The store refused: no such object, or not with these credentials. Asking again will not
    /// help, unlike an address that does not answer.
    pub fn is_refusal(&self) -> bool {
        matches!(
            *self.source,
            object_store::Error::NotFound { .. } | object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. }
        )
    }
}

/// Where the objects are: the parsed `s3://bucket/prefix`, its endpoint and region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// The spec field it came from (`spec.checkpoint.store`), for errors.
    pub field: String,
    pub bucket: String,
    /// The prefix, without leading or trailing `/` (empty: the bucket's root).
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
}

impl Location {
    /// Parses `spec` (field `field` of the job); the API server's rule has checked its form, and
    /// this checks it again for a manifest that did not pass through one.
    pub fn of(field: &str, spec: &ObjectStoreSpec) -> Result<Self, String> {
        let (bucket, prefix) = parse_uri(&format!("{field}.uri"), &spec.uri)?;
        if let Some(e) = &spec.endpoint
            && !(e.starts_with("http://") || e.starts_with("https://"))
        {
            return Err(format!("{field}.endpoint: {e:?} is not an http:// or https:// URL"));
        }
        Ok(Self { field: field.into(), bucket, prefix, endpoint: spec.endpoint.clone(), region: spec.region.clone() })
    }

    /// An input the job reads, `uri` (`s3://bucket/key-or-prefix`) in the spec's field `field`
    /// (`spec.data.source.text.path`), reached with the endpoint and region of `settings` (the
    /// job's own store, already parsed) when given, else those of the environment.
    pub fn input(field: &str, uri: &str, settings: Option<&Location>) -> Result<Self, String> {
        let (bucket, prefix) = parse_uri(field, uri)?;
        let (endpoint, region) = settings.map(|s| (s.endpoint.clone(), s.region.clone())).unwrap_or_default();
        Ok(Self { field: field.into(), bucket, prefix, endpoint, region })
    }

    /// `s3://bucket/prefix`.
    pub fn uri(&self) -> String {
        if self.prefix.is_empty() { format!("s3://{}", self.bucket) } else { format!("s3://{}/{}", self.bucket, self.prefix) }
    }

    /// The key of `name` (a `/`-separated relative name; empty: the prefix itself).
    pub fn key(&self, name: &str) -> Key {
        match (self.prefix.is_empty(), name.is_empty()) {
            (true, _) => Key::from(name),
            (false, true) => Key::from(self.prefix.as_str()),
            (false, false) => Key::from(format!("{}/{name}", self.prefix)),
        }
    }

    /// Connects with the credentials and settings of this process's environment.
    pub fn open(&self) -> Result<Store, String> {
        self.open_with(std::env::vars())
    }

    /// Connects with the `AWS_*` settings among `vars` (an environment); the spec's endpoint and
    /// region win over `AWS_ENDPOINT_URL` and `AWS_REGION`. An `http://` endpoint is allowed:
    /// the spec (or the environment) names one.
    pub fn open_with(&self, vars: impl IntoIterator<Item = (String, String)>) -> Result<Store, String> {
        let mut builder = AmazonS3Builder::new();
        for (name, value) in vars {
            if name.starts_with("AWS_")
                && let Ok(key) = name.to_ascii_lowercase().parse::<AmazonS3ConfigKey>()
            {
                builder = builder.with_config(key, value);
            }
        }
        builder = builder.with_bucket_name(&self.bucket);
        if let Some(e) = &self.endpoint {
            builder = builder.with_endpoint(e);
        }
        if let Some(r) = &self.region {
            builder = builder.with_region(r);
        }
        let http = builder.get_config_value(&AmazonS3ConfigKey::Endpoint).is_some_and(|e| e.starts_with("http://"));
        // A wrong address fails in seconds, not after the default three minutes of retries; a
        // refusal (403, 404) is never retried.
        let retry = RetryConfig { max_retries: 3, retry_timeout: Duration::from_secs(30), ..RetryConfig::default() };
        // A request may take long (a part of a file, a whole file streamed down), a connection
        // must not: [`Store::check`] bounds its own listing.
        let options = ClientOptions::new().with_allow_http(http).with_connect_timeout(Duration::from_secs(5)).with_timeout(REQUEST_TIMEOUT);
        // reqwest's TLS takes the process's crypto provider: ring, the one kube uses too.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let s3 = builder.with_retry(retry).with_client_options(options).build().map_err(|e| format!("{}: {e}", self.field))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("frugal-store")
            .on_thread_start(yield_to_training)
            .enable_all()
            .build()
            .map_err(|e| format!("{}: cannot start the store's runtime: {e}", self.field))?;
        Ok(Store { location: self.clone(), s3: Arc::new(s3), runtime: Arc::new(runtime) })
    }
}

/// The bucket and the prefix (without leading or trailing `/`) of `uri`, an
/// `s3://<bucket>/<prefix>` URI in the field `uri_field`, whose name an error starts with.
fn parse_uri(uri_field: &str, uri: &str) -> Result<(String, String), String> {
    let rest = uri.strip_prefix("s3://").ok_or_else(|| format!("{uri_field}: {uri:?} is not an s3://<bucket>/<prefix> URI"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let prefix = prefix.trim_end_matches('/');
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && !bucket.starts_with(['.', '-'])
        && !bucket.ends_with(['.', '-']);
    if !bucket_ok {
        return Err(format!("{uri_field}: {bucket:?} is not a bucket name (3 to 63 lowercase letters, digits, dots and hyphens)"));
    }
    if !prefix.is_empty() && prefix.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        return Err(format!("{uri_field}: the prefix {prefix:?} has an empty, '.' or '..' part"));
    }
    Ok((bucket.into(), prefix.into()))
}

/// An object in the store: its name (relative to the location's prefix), size and ETag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    pub name: String,
    pub size: u64,
    /// The store's version tag of the object's contents (for S3, of a single-part upload, its
    /// MD5); `None` where the store gives none.
    pub etag: Option<String>,
}

/// A connected [`Location`]: blocking calls on a runtime of its own, so that any thread of the
/// trainer (the run loop, a background upload) can use it.
#[derive(Clone)]
pub struct Store {
    pub location: Location,
    s3: Arc<dyn ObjectStore>,
    runtime: Arc<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // the location only: the client holds the credentials
        f.debug_struct("Store").field("location", &self.location).finish_non_exhaustive()
    }
}

fn local_error(path: &Path) -> impl Fn(std::io::Error) -> object_store::Error + '_ {
    move |e| object_store::Error::Generic { store: "local file", source: format!("{}: {e}", path.display()).into() }
}

impl Store {
    fn error(&self, what: String) -> impl FnOnce(object_store::Error) -> StoreError + '_ {
        move |source| StoreError { field: self.location.field.clone(), uri: self.location.uri(), what, source: Box::new(source) }
    }

    /// Checks that the prefix can be listed with these credentials: a missing bucket, a wrong
    /// key or an unreachable endpoint fails here, in the store's words, before any training.
    pub fn check(&self) -> Result<(), StoreError> {
        let prefix = self.location.key("");
        let listing = async {
            match tokio::time::timeout(CHECK_TIMEOUT, self.s3.list_with_delimiter(Some(&prefix))).await {
                Ok(listed) => listed.map(drop),
                Err(_) => Err(object_store::Error::Generic { store: "S3", source: format!("no answer within {CHECK_TIMEOUT:?}").into() }),
            }
        };
        self.runtime.block_on(listing).map_err(self.error("listing the prefix".into()))
    }

    /// The names (relative to the prefix) of every object under `dir` (relative too; empty: the
    /// whole prefix).
    pub fn list(&self, dir: &str) -> Result<Vec<String>, StoreError> {
        Ok(self.list_objects(dir)?.into_iter().map(|o| o.name).collect())
    }

    /// Every object under `dir` (relative to the prefix; empty: the whole prefix), with its
    /// size and ETag.
    pub fn list_objects(&self, dir: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let base = self.location.key(dir);
        let metas: Vec<object_store::ObjectMeta> =
            self.runtime.block_on(async { self.s3.list(Some(&base)).try_collect().await }).map_err(self.error(format!("listing {base}")))?;
        Ok(metas.into_iter().map(|m| self.info(m)).collect())
    }

    /// The object `name` (relative to the prefix; empty: the prefix itself, as an object's key):
    /// its size and ETag, without its contents ([`StoreError::is_not_found`] when there is none).
    pub fn head(&self, name: &str) -> Result<ObjectInfo, StoreError> {
        let key = self.location.key(name);
        self.runtime.block_on(self.s3.head(&key)).map(|meta| self.info(meta)).map_err(self.error(format!("looking up {key}")))
    }

    fn info(&self, meta: object_store::ObjectMeta) -> ObjectInfo {
        let strip = if self.location.prefix.is_empty() { 0 } else { self.location.prefix.len() + 1 };
        let name = meta.location.as_ref().get(strip..).unwrap_or_default().to_string();
        ObjectInfo { name, size: meta.size, etag: meta.e_tag }
    }

    /// Uploads the file `path` as `name` (relative to the prefix): in one request when small,
    /// else in parts, several at once. Returns its size. S3 makes an object visible only once it
    /// is complete, so a reader never sees part of it.
    pub fn put_file(&self, name: &str, path: &Path) -> Result<u64, StoreError> {
        let key = self.location.key(name);
        let local = local_error(path);
        self.runtime
            .block_on(async {
                let mut file = std::fs::File::open(path).map_err(&local)?;
                let size = file.metadata().map_err(&local)?.len();
                if size < PART_BYTES as u64 {
                    let mut bytes = Vec::with_capacity(size as usize);
                    file.read_to_end(&mut bytes).map_err(&local)?;
                    self.s3.put(&key, PutPayload::from(bytes)).await?;
                    return Ok(size);
                }
                let mut upload = WriteMultipart::new_with_chunk_size(self.s3.put_multipart(&key).await?, PART_BYTES);
                let mut buf = vec![0u8; PART_BYTES];
                let sent: object_store::Result<()> = async {
                    loop {
                        let n = read_full(&mut file, &mut buf).map_err(&local)?;
                        if n == 0 {
                            return Ok(());
                        }
                        upload.wait_for_capacity(PARTS_IN_FLIGHT).await?;
                        upload.write(&buf[..n]);
                    }
                }
                .await;
                match sent {
                    Ok(()) => upload.finish().await.map(|_| size),
                    Err(e) => {
                        // the parts already up would otherwise stay in the bucket, unseen and billed
                        let _ = upload.abort().await;
                        Err(e)
                    }
                }
            })
            .map_err(self.error(format!("uploading {} to {key}", path.display())))
    }

    /// Uploads `bytes` as `name`.
    pub fn put_bytes(&self, name: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        let key = self.location.key(name);
        self.runtime.block_on(async { self.s3.put(&key, PutPayload::from(bytes)).await.map(drop) }).map_err(self.error(format!("uploading {key}")))
    }

    /// Downloads `name` into the file `path` (created or truncated), streaming, and syncs it.
    /// Returns its size.
    pub fn get_file(&self, name: &str, path: &Path) -> Result<u64, StoreError> {
        self.get_object(name, path).map(|o| o.size)
    }

    /// [`Store::get_file`], returning the object as the store served it: the bytes written and
    /// the ETag of the version they came from.
    pub fn get_object(&self, name: &str, path: &Path) -> Result<ObjectInfo, StoreError> {
        let key = self.location.key(name);
        let local = local_error(path);
        self.runtime
            .block_on(async {
                let got = self.s3.get(&key).await?;
                let etag = got.meta.e_tag.clone();
                let mut stream = got.into_stream();
                let mut file = std::fs::File::create(path).map_err(&local)?;
                let mut size = 0u64;
                while let Some(chunk) = stream.try_next().await? {
                    file.write_all(&chunk).map_err(&local)?;
                    size += chunk.len() as u64;
                }
                file.sync_all().map_err(&local)?;
                Ok(ObjectInfo { name: name.into(), size, etag })
            })
            .map_err(self.error(format!("downloading {key} to {}", path.display())))
    }

    /// The bytes `range` of `name`, of the version whose ETag is `etag` when given: an object
    /// replaced since it was listed is refused (`412 Precondition Failed`), not read half old and
    /// half new.
    pub fn get_range(&self, name: &str, range: std::ops::Range<u64>, etag: Option<&str>) -> Result<Vec<u8>, StoreError> {
        let key = self.location.key(name);
        let options = object_store::GetOptions { range: Some(range.clone().into()), if_match: etag.map(str::to_string), ..Default::default() };
        self.runtime
            .block_on(async { self.s3.get_opts(&key, options).await?.bytes().await })
            .map(|b| b.to_vec())
            .map_err(self.error(format!("reading bytes {}..{} of {key}", range.start, range.end)))
    }

    /// Reads `name` whole; `None` when there is no such object.
    pub fn get_bytes(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = self.location.key(name);
        match self.runtime.block_on(async { self.s3.get(&key).await?.bytes().await }) {
            Ok(b) => Ok(Some(b.to_vec())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(format!("downloading {key}"))(e)),
        }
    }

    /// Deletes the objects `names`, in this order (one gone already is no error).
    pub fn delete(&self, names: &[String]) -> Result<(), StoreError> {
        for name in names {
            let key = self.location.key(name);
            match self.runtime.block_on(self.s3.delete(&key)) {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.error(format!("deleting {key}"))(e)),
            }
        }
        Ok(())
    }
}

/// Lowers the calling thread's CPU priority (nice 10; on Linux a thread's own), so that the
/// store's transfers, which run beside training, take the CPU the training leaves.
pub fn yield_to_training() {
    // SAFETY: setpriority on the calling thread (who = 0) changes nothing else.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 10);
    }
}

/// Fills `buf` from `r` unless the file ends first; returns how much it read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(uri: &str) -> ObjectStoreSpec {
        ObjectStoreSpec { uri: uri.into(), endpoint: None, region: None, credentials_secret: None }
    }

    #[test]
    fn a_uri_names_a_bucket_and_a_prefix() {
        let l = Location::of("spec.checkpoint.store", &spec("s3://lm-checkpoints/team/run-1/")).unwrap();
        assert_eq!((l.bucket.as_str(), l.prefix.as_str()), ("lm-checkpoints", "team/run-1"));
        assert_eq!(l.uri(), "s3://lm-checkpoints/team/run-1");
        assert_eq!(l.key("step-000000004/MANIFEST.json").as_ref(), "team/run-1/step-000000004/MANIFEST.json");
        assert_eq!(l.key("").as_ref(), "team/run-1");
        let root = Location::of("f", &spec("s3://lm-checkpoints")).unwrap();
        assert_eq!((root.prefix.as_str(), root.uri().as_str()), ("", "s3://lm-checkpoints"));
        assert_eq!(root.key("a/b").as_ref(), "a/b");
    }

    #[test]
    fn a_uri_that_is_not_a_bucket_and_prefix_is_refused_naming_the_field() {
        for (uri, says) in [
            ("/checkpoints", "not an s3://"),
            ("gs://bucket/x", "not an s3://"),
            ("s3://Team_Bucket/x", "not a bucket name"),
            ("s3://ab/x", "not a bucket name"),
            ("s3://bucket/a//b", "empty, '.' or '..'"),
            ("s3://bucket/a/../b", "empty, '.' or '..'"),
        ] {
            let e = Location::of("spec.checkpoint.store", &spec(uri)).unwrap_err();
            assert!(e.starts_with("spec.checkpoint.store.uri: ") && e.contains(says), "{uri}: {e}");
        }
        let e =
            Location::of("spec.checkpoint.store", &ObjectStoreSpec { endpoint: Some("seaweedfs:8333".into()), ..spec("s3://bucket") }).unwrap_err();
        assert!(e.starts_with("spec.checkpoint.store.endpoint: "), "{e}");
    }

    #[test]
    fn an_input_uri_names_a_key_or_a_prefix_and_takes_the_jobs_store_settings() {
        let settings = Location::of(
            "spec.checkpoint.store",
            &ObjectStoreSpec { endpoint: Some("http://seaweedfs:8333".into()), region: Some("eu-west-1".into()), ..spec("s3://ckpt/run") },
        )
        .unwrap();
        let l = Location::input("spec.data.source.text.path", "s3://corpora/web/part-0.jsonl", Some(&settings)).unwrap();
        assert_eq!((l.bucket.as_str(), l.prefix.as_str()), ("corpora", "web/part-0.jsonl"));
        assert_eq!((l.endpoint.as_deref(), l.region.as_deref()), (Some("http://seaweedfs:8333"), Some("eu-west-1")));
        assert_eq!((l.field.as_str(), l.key("").as_ref()), ("spec.data.source.text.path", "web/part-0.jsonl"));
        let dir = Location::input("spec.model.init", "s3://models/gpt2/", None).unwrap();
        assert_eq!((dir.prefix.as_str(), dir.endpoint.as_deref(), dir.region.as_deref()), ("gpt2", None, None));
        // an error names the field itself, not a `.uri` under it
        for (uri, says) in [("gs://corpora/x", "not an s3://"), ("s3://Corpora/x", "not a bucket name"), ("s3://corpora/a/../b", "'..'")] {
            let e = Location::input("spec.data.tokenizerFile.path", uri, None).unwrap_err();
            assert!(e.starts_with("spec.data.tokenizerFile.path: ") && e.contains(says), "{uri}: {e}");
        }
    }

    #[test]
    fn a_store_shows_no_credentials() {
        let l = Location::of("f", &ObjectStoreSpec { endpoint: Some("http://127.0.0.1:1".into()), ..spec("s3://bucket/p") }).unwrap();
        let secret = "wJalrXUtnFEMI-very-secret";
        let vars = [("AWS_ACCESS_KEY_ID".to_string(), "AKIDEXAMPLE".to_string()), ("AWS_SECRET_ACCESS_KEY".into(), secret.into())];
        let store = l.open_with(vars).unwrap();
        let shown = format!("{store:?}");
        assert!(shown.contains("s3") || shown.contains("bucket"), "{shown}");
        assert!(!shown.contains(secret) && !shown.contains("AKIDEXAMPLE"), "{shown}");
    }
}
