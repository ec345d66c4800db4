//! A corpus as a stream of documents, whichever files hold it: text files (a file is a
//! document), JSONL (a line's object is a document) or Parquet (a row is a document). A directory
//! is read file by file in name order, a file record by record, so a corpus much larger than
//! memory streams through in bounded memory (one document, or one Parquet page, at a time).
//!
//! The same documents in the same order are the same corpus whatever holds them: they are split
//! the same way and give the same tokens.

pub use super::document::{Document, Origin, Position};
use super::{jsonl, parquet};
use anyhow::{Context, Result, bail};
use frugal_api::v1alpha1::TextFormat;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Where a corpus is and how it stores its documents.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Corpus {
    pub path: PathBuf,
    pub format: TextFormat,
    /// The JSONL key or Parquet column that holds a document's text.
    pub field: String,
}

/// The field a JSONL record or Parquet row keeps its text in when the spec names none.
pub const DEFAULT_FIELD: &str = "text";

/// How many documents a corpus holds and how many bytes of text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Survey {
    pub documents: u64,
    pub bytes: u64,
}

impl Corpus {
    /// Text files: a file, or a directory of `.txt` files.
    pub fn text(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into(), format: TextFormat::Text, field: DEFAULT_FIELD.into() }
    }

    pub fn jsonl(path: impl Into<PathBuf>, field: &str) -> Self {
        Self { path: path.into(), format: TextFormat::Jsonl, field: field.into() }
    }

    pub fn parquet(path: impl Into<PathBuf>, field: &str) -> Self {
        Self { path: path.into(), format: TextFormat::Parquet, field: field.into() }
    }

    fn extension(&self) -> &'static str {
        match self.format {
            TextFormat::Text => "txt",
            TextFormat::Jsonl => "jsonl",
            TextFormat::Parquet => "parquet",
        }
    }

    /// The files that hold the corpus, in reading order: the path itself, or the files of its
    /// format in the directory, sorted by name.
    pub fn files(&self) -> Result<Vec<PathBuf>> {
        let path = &self.path;
        let meta = std::fs::metadata(path).with_context(|| format!("reading corpus {}", path.display()))?;
        if meta.is_file() {
            return Ok(vec![path.clone()]);
        }
        let ext = self.extension();
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("listing corpus directory {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == ext))
            .collect();
        files.sort();
        if files.is_empty() {
            bail!("corpus directory {} holds no .{ext} files (data.source.text.format is {:?})", path.display(), self.format);
        }
        Ok(files)
    }

    /// The documents, in order, read as they are asked for.
    pub fn documents(&self) -> Result<Documents> {
        Ok(Documents { files: self.files()?.into_iter(), format: self.format, field: self.field.clone(), reader: None, failed: false })
    }

    /// Counts the documents and their bytes: text files from their sizes, records by reading them.
    pub fn survey(&self) -> Result<Survey> {
        let mut s = Survey { documents: 0, bytes: 0 };
        if self.format == TextFormat::Text {
            for f in self.files()? {
                s.documents += 1;
                s.bytes += std::fs::metadata(&f).with_context(|| format!("reading {}", f.display()))?.len();
            }
            return Ok(s);
        }
        for d in self.documents()? {
            s.documents += 1;
            s.bytes += d?.text.len() as u64;
        }
        Ok(s)
    }

    /// The documents with the split each belongs to (see [`Split`]); the single document of a
    /// one-document corpus comes as its training part, then its held-out tail.
    pub fn split_documents(&self, split: Split) -> Result<SplitDocuments> {
        if split.survey.documents == 1 {
            let mut docs = self.documents()?;
            let doc = docs.next().context("the corpus has no document")??;
            let (train, val) = cut(doc.text, split.want());
            let origin = doc.origin;
            let pieces = std::iter::once((train, false)).chain(val.map(|v| (v, true)));
            let pieces: Vec<(Document, bool)> = pieces.map(|(text, held)| (Document { text, origin: origin.clone() }, held)).collect();
            return Ok(SplitDocuments { inner: Inner::Pieces(pieces.into_iter()), split, index: 0, through: 0 });
        }
        Ok(SplitDocuments { inner: Inner::Stream(self.documents()?), split, index: 0, through: 0 })
    }
}

/// The training/validation split: the last documents holding about `fraction` of the bytes are
/// held out (at least one document stays for training); a corpus of one document is cut at the
/// first line break after that point.
#[derive(Clone, Copy, Debug)]
pub struct Split {
    pub survey: Survey,
    pub fraction: f64,
}

impl Split {
    fn want(&self) -> u64 {
        (self.survey.bytes as f64 * self.fraction).round() as u64
    }

    /// Whether document `index` (0-based) of several, which ends `through` bytes into the corpus,
    /// is held out: documents are held out from the end while fewer than the wanted bytes are.
    fn holds_out(&self, index: u64, through: u64) -> bool {
        index >= 1 && self.survey.bytes.saturating_sub(through) < self.want()
    }
}

/// A single document's training text and held-out tail of about `want` bytes, cut after a line
/// break where there is one.
fn cut(doc: Vec<u8>, want: u64) -> (Vec<u8>, Option<Vec<u8>>) {
    let want = want as usize;
    if want == 0 {
        return (doc, None);
    }
    let mut at = doc.len() - want.min(doc.len());
    while at < doc.len() && at > 0 && doc[at - 1] != b'\n' {
        at += 1;
    }
    if at >= doc.len() {
        at = doc.len() - want.min(doc.len());
    }
    let mut train = doc;
    let val = train.split_off(at);
    (train, Some(val))
}

/// Documents of a corpus, read as they are asked for.
pub struct Documents {
    files: std::vec::IntoIter<PathBuf>,
    format: TextFormat,
    field: String,
    reader: Option<Reader>,
    failed: bool,
}

enum Reader {
    Text(Option<PathBuf>),
    Jsonl(jsonl::Reader),
    Parquet(Box<parquet::Reader>),
}

impl Iterator for Documents {
    type Item = Result<Document>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        loop {
            let next = match &mut self.reader {
                Some(Reader::Text(file)) => file.take().map(|f| {
                    let text = std::fs::read(&f).with_context(|| format!("reading corpus file {}", f.display()))?;
                    Ok(Document { text, origin: Origin { file: f.into(), at: Position::WholeFile } })
                }),
                Some(Reader::Jsonl(r)) => r.next(),
                Some(Reader::Parquet(r)) => r.next(),
                None => None,
            };
            if let Some(d) = next {
                self.failed = d.is_err();
                return Some(d);
            }
            let file = self.files.next()?;
            self.reader = Some(match self.format {
                TextFormat::Text => Reader::Text(Some(file)),
                TextFormat::Jsonl => match jsonl::Reader::open(&file, &self.field) {
                    Ok(r) => Reader::Jsonl(r),
                    Err(e) => {
                        self.failed = true;
                        return Some(Err(e));
                    }
                },
                TextFormat::Parquet => match parquet::Reader::open(&file, &self.field) {
                    Ok(r) => Reader::Parquet(Box::new(r)),
                    Err(e) => {
                        self.failed = true;
                        return Some(Err(e));
                    }
                },
            });
        }
    }
}

enum Inner {
    Stream(Documents),
    Pieces(std::vec::IntoIter<(Document, bool)>),
}

/// Documents, each with whether it is held out for validation.
pub struct SplitDocuments {
    inner: Inner,
    split: Split,
    index: u64,
    through: u64,
}

impl Iterator for SplitDocuments {
    type Item = Result<(Document, bool)>;

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.inner {
            Inner::Pieces(p) => p.next().map(Ok),
            Inner::Stream(docs) => {
                let doc = match docs.next()? {
                    Ok(d) => d,
                    Err(e) => return Some(Err(e)),
                };
                self.through += doc.text.len() as u64;
                let held = self.split.want() > 0 && self.split.holds_out(self.index, self.through);
                self.index += 1;
                Some(Ok((doc, held)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rule as a list: pop documents from the end while fewer than the wanted bytes are held
    /// out, leaving at least one.
    fn held_out_by_popping(docs: &[Vec<u8>], fraction: f64) -> usize {
        let total: usize = docs.iter().map(Vec::len).sum();
        let want = (total as f64 * fraction).round() as usize;
        let (mut held, mut n) = (0, 0);
        while want > 0 && held < want && docs.len() - n > 1 {
            n += 1;
            held += docs[docs.len() - n].len();
        }
        n
    }

    #[test]
    fn documents_are_held_out_from_the_end_as_they_stream_by() {
        let dir = std::env::temp_dir().join(format!("frugal-corpus-split-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sizes = [50usize, 30, 20, 7, 1, 0, 12];
        for (i, n) in sizes.iter().enumerate() {
            std::fs::write(dir.join(format!("{i}.txt")), vec![b'a' + i as u8; *n]).unwrap();
        }
        std::fs::write(dir.join("notes.md"), "not a document").unwrap();
        let corpus = Corpus::text(&dir);
        let survey = corpus.survey().unwrap();
        assert_eq!(survey, Survey { documents: 7, bytes: 120 });
        let docs: Vec<Vec<u8>> = corpus.documents().unwrap().map(|d| d.unwrap().text).collect();
        for fraction in [0.0, 0.01, 0.1, 0.2, 0.3, 0.5] {
            let streamed: Vec<(Vec<u8>, bool)> =
                corpus.split_documents(Split { survey, fraction }).unwrap().map(|d| d.map(|(d, held)| (d.text, held)).unwrap()).collect();
            let n = held_out_by_popping(&docs, fraction);
            let expected: Vec<(Vec<u8>, bool)> = docs.iter().enumerate().map(|(i, d)| (d.clone(), i >= docs.len() - n)).collect();
            assert_eq!(streamed, expected, "fraction {fraction}");
        }
        assert_eq!(held_out_by_popping(&docs, 0.1), 1);
        assert_eq!(held_out_by_popping(&docs, 0.3), 5);

        // One document is cut after a line break.
        std::fs::write(dir.join("one.txt"), "line one\nline two\nline three\nline four\n").unwrap();
        let one = Corpus::text(dir.join("one.txt"));
        let pieces: Vec<(Vec<u8>, bool)> = one
            .split_documents(Split { survey: one.survey().unwrap(), fraction: 0.3 })
            .unwrap()
            .map(|d| d.map(|(d, h)| (d.text, h)).unwrap())
            .collect();
        assert_eq!(pieces, vec![(b"line one\nline two\nline three\n".to_vec(), false), (b"line four\n".to_vec(), true)]);
        let e = format!("{:#}", Corpus::jsonl(&dir, "text").files().unwrap_err());
        assert!(e.contains("holds no .jsonl files"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
