//! Token ids of a split, stored as narrow as the vocabulary allows: 16 bits when it holds at
//! most 65,536 tokens, 32 bits above. Ids sit as little-endian bytes, in memory or in shard files
//! read where they lie, a window at a time, so a split much larger than memory costs the trainer
//! no memory: what it reads stays in the kernel's page cache, which gives it back under pressure.
//! Shards in a bucket are read the same way, in ranges through a bounded cache
//! ([`super::streamed`]).

use super::streamed::RemoteShard;
use sha2::Digest;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

/// Bytes per token id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Width {
    U16,
    U32,
}

impl Width {
    /// The narrowest width that holds every id of a vocabulary of `vocab` tokens.
    pub fn for_vocab(vocab: i64) -> Self {
        if vocab <= i64::from(u16::MAX) + 1 { Self::U16 } else { Self::U32 }
    }

    pub fn bytes(self) -> usize {
        match self {
            Self::U16 => 2,
            Self::U32 => 4,
        }
    }

    fn read(self, b: &[u8]) -> u32 {
        match self {
            Self::U16 => u32::from(u16::from_le_bytes([b[0], b[1]])),
            Self::U32 => u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        }
    }

    /// Appends `id` (which must fit) as little-endian bytes.
    pub fn write(self, id: u32, out: &mut Vec<u8>) {
        match self {
            Self::U16 => out.extend_from_slice(&(id as u16).to_le_bytes()),
            Self::U32 => out.extend_from_slice(&id.to_le_bytes()),
        }
    }
}

/// Where a run of ids lives.
#[derive(Clone)]
enum Part {
    Memory(Vec<u8>),
    /// `bytes` of a shard file (its body, after the header).
    File {
        file: Arc<std::fs::File>,
        path: Arc<Path>,
        bytes: std::ops::Range<u64>,
    },
    /// `bytes` of a shard in a bucket.
    Remote {
        shard: Arc<RemoteShard>,
        bytes: std::ops::Range<u64>,
    },
}

/// Bytes a file part is read in by [`Part::scan`].
const SCAN_BYTES: usize = 8 << 20;

impl Part {
    /// The part's bytes `from..to`, borrowed from memory or read from the file into `buf`.
    fn read<'a>(&'a self, from: usize, to: usize, buf: &'a mut Vec<u8>) -> &'a [u8] {
        match self {
            Self::Memory(v) => &v[from..to],
            Self::File { file, path, bytes } => {
                buf.resize(to - from, 0);
                // A shard that cannot be read any more mid-run (a lost volume) stops the run.
                if let Err(e) = file.read_exact_at(buf, bytes.start + from as u64) {
                    panic!("reading token shard {}: {e}", path.display());
                }
                buf
            }
            Self::Remote { shard, bytes } => {
                buf.resize(to - from, 0);
                // a bucket that refuses mid-run (the shard replaced, the keys revoked) stops the run
                if let Err(e) = shard.read_at(buf, bytes.start + from as u64) {
                    panic!("reading token shard {}: {e:#}", shard.uri());
                }
                buf
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::Memory(v) => v.len(),
            Self::File { bytes, .. } | Self::Remote { bytes, .. } => (bytes.end - bytes.start) as usize,
        }
    }

    /// Calls `f` on the part's bytes in order, in pieces.
    fn scan(&self, mut f: impl FnMut(&[u8])) {
        let mut buf = Vec::new();
        let mut at = 0;
        while at < self.len() {
            let end = (at + SCAN_BYTES).min(self.len());
            f(self.read(at, end, &mut buf));
            at = end;
        }
    }
}

/// The ids of one split: parts read one after another as one sequence.
#[derive(Clone)]
pub struct Tokens {
    width: Width,
    parts: Vec<Part>,
    /// Ids before each part, and the total last.
    starts: Vec<usize>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} × {:?} in {} parts)", self.len(), self.width, self.parts.len())
    }
}

impl Tokens {
    /// No ids yet, held in memory; [`Tokens::push`] adds them.
    pub fn new(width: Width) -> Self {
        Self { width, parts: vec![Part::Memory(Vec::new())], starts: vec![0, 0] }
    }

    pub fn from_ids(width: Width, ids: impl IntoIterator<Item = u32>) -> Self {
        let mut t = Self::new(width);
        for id in ids {
            t.push(id);
        }
        t
    }

    /// Ids already written as `width` little-endian bytes: `bytes` of each of `files` (open shard
    /// files and their paths), read when asked for.
    pub(crate) fn in_files(width: Width, files: Vec<(std::fs::File, &Path, std::ops::Range<u64>)>) -> Self {
        let mut starts = vec![0];
        let mut out = Vec::with_capacity(files.len());
        for (file, path, bytes) in files {
            starts.push(starts.last().copied().unwrap_or(0) + (bytes.end - bytes.start) as usize / width.bytes());
            out.push(Part::File { file: Arc::new(file), path: path.into(), bytes });
        }
        Self { width, parts: out, starts }
    }

    /// Ids already written as `width` little-endian bytes: `bytes` of each shard in a bucket,
    /// fetched when asked for.
    pub(crate) fn in_bucket(width: Width, shards: Vec<(Arc<RemoteShard>, std::ops::Range<u64>)>) -> Self {
        let mut starts = vec![0];
        let mut parts = Vec::with_capacity(shards.len());
        for (shard, bytes) in shards {
            starts.push(starts.last().copied().unwrap_or(0) + (bytes.end - bytes.start) as usize / width.bytes());
            parts.push(Part::Remote { shard, bytes });
        }
        Self { width, parts, starts }
    }

    /// Whether some ids are in a bucket, where reading all of them (for [`Tokens::max`] or
    /// [`Tokens::hash_into`]) would fetch the whole split.
    pub fn is_streamed(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Remote { .. }))
    }

    pub fn width(&self) -> Width {
        self.width
    }

    pub fn len(&self) -> usize {
        self.starts.last().copied().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends an id to a split held in memory.
    pub fn push(&mut self, id: u32) {
        debug_assert!(self.width == Width::U32 || id <= u32::from(u16::MAX), "id {id} does not fit {:?}", self.width);
        match self.parts.last_mut() {
            Some(Part::Memory(v)) => self.width.write(id, v),
            _ => {
                let mut v = Vec::new();
                self.width.write(id, &mut v);
                self.parts.push(Part::Memory(v));
                self.starts.push(self.len());
            }
        }
        if let Some(total) = self.starts.last_mut() {
            *total += 1;
        }
    }

    pub fn get(&self, i: usize) -> u32 {
        let mut id = 0;
        self.for_range(i, 1, |t| id = t);
        id
    }

    /// Calls `each` with the ids `at..at + n`, in order, across parts.
    pub fn for_range(&self, at: usize, n: usize, mut each: impl FnMut(u32)) {
        assert!(at + n <= self.len(), "ids {at}..{} of {}", at + n, self.len());
        let w = self.width.bytes();
        let mut p = self.starts.partition_point(|&s| s <= at).saturating_sub(1);
        let (mut i, end) = (at, at + n);
        let mut buf = Vec::new();
        while i < end {
            let part_end = self.starts[p + 1].min(end);
            let bytes = self.parts[p].read((i - self.starts[p]) * w, (part_end - self.starts[p]) * w, &mut buf);
            for c in bytes.chunks_exact(w) {
                each(self.width.read(c));
            }
            i = part_end;
            p += 1;
        }
    }

    /// The ids `at..at + n`.
    pub fn range(&self, at: usize, n: usize) -> Vec<u32> {
        let mut out = Vec::with_capacity(n);
        self.for_range(at, n, |t| out.push(t));
        out
    }

    pub fn to_vec(&self) -> Vec<u32> {
        self.range(0, self.len())
    }

    /// The largest id, or None for no ids.
    pub fn max(&self) -> Option<u32> {
        let w = self.width;
        let mut m = None;
        for p in &self.parts {
            p.scan(|bytes| {
                if let Some(x) = bytes.chunks_exact(w.bytes()).map(|c| w.read(c)).max() {
                    m = Some(m.map_or(x, |y: u32| y.max(x)));
                }
            });
        }
        m
    }

    /// Feeds the count, then the ids as little-endian bytes of this width, to `h`.
    pub fn hash_into(&self, h: &mut sha2::Sha256) {
        h.update((self.len() as u64).to_le_bytes());
        for p in &self.parts {
            p.scan(|bytes| h.update(bytes));
        }
    }
}

impl PartialEq for Tokens {
    /// The same ids in the same order, however they are stored.
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && (0..self.len()).all(|i| self.get(i) == other.get(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_read_back_across_parts_at_either_width() {
        assert_eq!(Width::for_vocab(65_536), Width::U16);
        assert_eq!(Width::for_vocab(65_537), Width::U32);
        let ids: Vec<u32> = (0..1000).map(|i| i * 70 % 65_536).collect();
        let narrow = Tokens::from_ids(Width::U16, ids.iter().copied());
        assert_eq!(narrow.to_vec(), ids);
        let wide_ids: Vec<u32> = ids.iter().map(|&i| i + 70_000).collect();
        let wide = Tokens::from_ids(Width::U32, wide_ids.iter().copied());
        assert_eq!(wide.range(990, 10), wide_ids[990..].to_vec());
        assert_eq!(wide.max(), wide_ids.iter().copied().max());

        // A split in several shard files reads as one sequence, windows crossing the seams.
        let dir = std::env::temp_dir().join(format!("frugal-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut files = vec![];
        for (i, chunk) in wide_ids.chunks(300).enumerate() {
            let path = dir.join(format!("{i}.bin"));
            let mut bytes = vec![7u8; 16];
            for &t in chunk {
                Width::U32.write(t, &mut bytes);
            }
            std::fs::write(&path, &bytes).unwrap();
            files.push((path, 16..bytes.len() as u64));
        }
        let in_files = Tokens::in_files(Width::U32, files.iter().map(|(p, r)| (std::fs::File::open(p).unwrap(), p.as_path(), r.clone())).collect());
        assert_eq!(in_files.len(), 1000);
        assert_eq!(in_files, wide);
        assert_eq!(in_files.range(295, 310), wide_ids[295..605].to_vec());
        assert_eq!(in_files.get(999), wide_ids[999]);
        assert_eq!(in_files.max(), wide.max());
        let hash = |t: &Tokens| {
            let mut h = sha2::Sha256::new();
            t.hash_into(&mut h);
            h.finalize()
        };
        assert_eq!(hash(&in_files), hash(&wide));
        assert_ne!(hash(&narrow), hash(&wide));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
