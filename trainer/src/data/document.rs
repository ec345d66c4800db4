//! One document of a corpus and where it came from, shared by the corpus and its readers.

use std::path::Path;
use std::sync::Arc;

/// One document and where it came from.
pub struct Document {
    pub text: Vec<u8>,
    pub origin: Origin,
}

/// Where a document came from, for messages: a file, a line of one, or a row of one.
#[derive(Clone, Debug)]
pub struct Origin {
    pub file: Arc<Path>,
    pub at: Position,
}

#[derive(Clone, Copy, Debug)]
pub enum Position {
    WholeFile,
    /// 1-based, counting every line.
    Line(u64),
    /// 1-based, counting every row of the file.
    Row(u64),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.at {
            Position::WholeFile => write!(f, "{}", self.file.display()),
            Position::Line(n) => write!(f, "{} line {n}", self.file.display()),
            Position::Row(n) => write!(f, "{} row {n}", self.file.display()),
        }
    }
}
