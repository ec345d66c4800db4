//! `spec.export.store`: the exports made after training (the Hugging Face directory, the int8
//! file) copied into a bucket, under `<prefix>/step-<n>/` as in the checkpoint directory
//! (`hf/...`, `quantized/int8.safetensors`), each object complete before the export is
//! reported; the status then names the export by its `s3://` URI.

use std::path::Path;

use anyhow::{Context as _, Result};
use frugal_api::v1alpha1::ObjectStoreSpec;

use crate::store::{Location, Store};

/// The spec field, as errors name it.
pub const FIELD: &str = "spec.export.store";

/// The connected export store.
pub fn open(spec: &ObjectStoreSpec) -> Result<Store> {
    Location::of(FIELD, spec).and_then(|l| l.open()).map_err(anyhow::Error::msg)
}

/// Uploads `path` (a file, or a directory and everything under it) as `name` under the store's
/// prefix; returns its `s3://` URI and the bytes sent.
pub fn upload(store: &Store, path: &Path, name: &str) -> Result<(String, u64)> {
    let mut files = Vec::new();
    if path.is_dir() {
        collect(path, "", &mut files)?;
    } else {
        files.push((String::new(), path.to_path_buf()));
    }
    files.sort();
    crate::progress::begin(&format!("upload {}/{name}", store.location.uri()), "files", Some(files.len() as u64));
    let mut bytes = 0;
    for (relative, file) in &files {
        let key = if relative.is_empty() { name.to_string() } else { format!("{name}/{relative}") };
        bytes += store.put_file(&key, file).inspect_err(|_| crate::progress::cancel())?;
        crate::progress::advance(1);
    }
    crate::progress::end();
    Ok((format!("{}/{name}", store.location.uri()), bytes))
}

fn collect(dir: &Path, under: &str, out: &mut Vec<(String, std::path::PathBuf)>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let relative = if under.is_empty() { name } else { format!("{under}/{name}") };
        if entry.file_type()?.is_dir() {
            collect(&entry.path(), &relative, out)?;
        } else {
            out.push((relative, entry.path()));
        }
    }
    Ok(())
}

/// `path` (inside the checkpoint root `root`) as the name it gets under the store's prefix: its
/// place below the root (`step-000000400/hf`).
pub fn name_in(root: &Path, path: &Path) -> Result<String> {
    let relative = path.strip_prefix(root).with_context(|| format!("{} is not under the checkpoint directory {}", path.display(), root.display()))?;
    Ok(relative.to_string_lossy().into_owned())
}
