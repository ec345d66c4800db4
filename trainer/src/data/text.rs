//! Text corpora: a file (one document) or a directory of `.txt` files (each a document), split
//! into training and validation text at document (or, for one document, line) boundaries, so the
//! tokenizer is trained on training text only.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

/// Documents of a corpus, in a fixed (sorted) order.
pub fn read_documents(path: &Path) -> Result<Vec<Vec<u8>>> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading corpus {}", path.display()))?;
    if meta.is_file() {
        return Ok(vec![std::fs::read(path).with_context(|| format!("reading corpus {}", path.display()))?]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("listing corpus directory {}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("corpus directory {} holds no .txt files", path.display());
    }
    files.iter().map(|f| std::fs::read(f).with_context(|| format!("reading {}", f.display()))).collect()
}

/// Training and validation documents: the last documents holding about `fraction` of the bytes
/// are held out; a single document is cut at the first line break after that point.
pub fn split(mut docs: Vec<Vec<u8>>, fraction: f64) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let total: usize = docs.iter().map(Vec::len).sum();
    let want = (total as f64 * fraction).round() as usize;
    if want == 0 {
        return (docs, vec![]);
    }
    if docs.len() == 1 {
        let doc = docs.pop().unwrap_or_default();
        let mut at = doc.len() - want.min(doc.len());
        while at < doc.len() && at > 0 && doc[at - 1] != b'\n' {
            at += 1;
        }
        if at >= doc.len() {
            at = doc.len() - want.min(doc.len());
        }
        let (a, b) = doc.split_at(at);
        return (vec![a.to_vec()], vec![b.to_vec()]);
    }
    let mut val = vec![];
    let mut held = 0;
    while held < want && docs.len() > 1 {
        let d = docs.pop().unwrap_or_default();
        held += d.len();
        val.push(d);
    }
    val.reverse();
    (docs, val)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keeps_documents_and_lines_whole() {
        let docs = vec![b"a".repeat(50), b"b".repeat(30), b"c".repeat(20)];
        let (t, v) = split(docs, 0.2);
        assert_eq!((t.len(), v.len()), (2, 1));
        let doc = b"line one\nline two\nline three\nline four\n".to_vec();
        let (t, v) = split(vec![doc.clone()], 0.3);
        assert_eq!([t[0].clone(), v[0].clone()].concat(), doc);
        assert!(t[0].ends_with(b"\n") && !v[0].is_empty());
    }
}
