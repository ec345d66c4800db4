//! Parquet corpora: each row a document, its text in a named string column. Only that column is
//! read, row group by row group and page by page, so memory holds a page and one batch of
//! values whatever the file's size. Pages may be uncompressed, snappy (pyarrow's default) or
//! zstd.

use super::document::{Document, Origin, Position};
use ::parquet::basic::{Compression, ConvertedType, LogicalType, Type as PhysicalType};
use ::parquet::column::reader::{ColumnReader, ColumnReaderImpl};
use ::parquet::data_type::{ByteArray, ByteArrayType};
use ::parquet::file::reader::{FileReader, SerializedFileReader};
use anyhow::{Context, Result, anyhow, bail};
use std::path::Path;
use std::sync::Arc;

/// Rows decoded at a time.
const BATCH: usize = 1024;

pub struct Reader {
    file: Arc<Path>,
    parquet: SerializedFileReader<std::fs::File>,
    column: usize,
    field: String,
    /// Definition level of a present value; 0 for a required column.
    present: i16,
    next_row_group: usize,
    values: Option<ColumnReaderImpl<ByteArrayType>>,
    batch: Vec<ByteArray>,
    levels: Vec<i16>,
    /// Next level (row) of the batch, and next value.
    at: (usize, usize),
    row: u64,
}

impl Reader {
    pub fn open(path: &Path, field: &str) -> Result<Self> {
        let fix = "name the string column holding each document's text with data.source.text.field";
        let f = std::fs::File::open(path).with_context(|| format!("opening corpus file {}", path.display()))?;
        let parquet = SerializedFileReader::new(f).map_err(|e| anyhow!("corpus {}: not a Parquet file the reader reads: {e}", path.display()))?;
        let schema = parquet.metadata().file_metadata().schema_descr_ptr();
        let columns = schema.columns();
        let Some(column) = columns.iter().position(|c| c.path().string() == field) else {
            if let Some(nested) = columns.iter().find(|c| c.path().parts().first().is_some_and(|p| p == field)) {
                bail!("corpus {}: column {field:?} is a list or a struct ({}), not one string a row: {fix}", path.display(), nested.path().string());
            }
            let names: Vec<String> = columns.iter().map(|c| c.path().string()).collect();
            bail!("corpus {}: no column {field:?} (its columns: {}): {fix}", path.display(), names.join(", "));
        };
        let c = &columns[column];
        let string = c.physical_type() == PhysicalType::BYTE_ARRAY
            && (matches!(c.logical_type_ref(), Some(LogicalType::String)) || c.converted_type() == ConvertedType::UTF8);
        if !string {
            let kind = match c.logical_type_ref() {
                Some(l) => format!("{l:?}"),
                None => format!("{:?}", c.physical_type()),
            };
            bail!("corpus {}: column {field:?} holds {kind}, not strings: {fix}", path.display());
        }
        if c.max_rep_level() > 0 {
            bail!("corpus {}: column {field:?} is a list, not one string a row: {fix}", path.display());
        }
        for (i, group) in parquet.metadata().row_groups().iter().enumerate() {
            let codec = group.column(column).compression();
            if !matches!(codec, Compression::UNCOMPRESSED | Compression::SNAPPY | Compression::ZSTD(_)) {
                let name = format!("{codec:?}");
                bail!(
                    "corpus {}: column {field:?} is compressed with {} (row group {}), which this trainer does not read: write the file with snappy (pyarrow's default) or zstd compression",
                    path.display(),
                    name.split('(').next().unwrap_or_default(),
                    i + 1
                );
            }
        }
        Ok(Self {
            file: path.into(),
            present: c.max_def_level(),
            parquet,
            column,
            field: field.into(),
            next_row_group: 0,
            values: None,
            batch: Vec::with_capacity(BATCH),
            levels: Vec::with_capacity(BATCH),
            at: (0, 0),
            row: 0,
        })
    }

    /// Decodes the next batch of rows; false at the end of the file.
    fn fill(&mut self) -> Result<bool> {
        loop {
            if self.values.is_none() {
                if self.next_row_group >= self.parquet.num_row_groups() {
                    return Ok(false);
                }
                let group = self.parquet.get_row_group(self.next_row_group)?;
                self.next_row_group += 1;
                match group.get_column_reader(self.column)? {
                    ColumnReader::ByteArrayColumnReader(r) => self.values = Some(r),
                    _ => bail!("column {:?} is not a byte array column", self.field),
                }
            }
            let Some(r) = self.values.as_mut() else { continue };
            self.batch.clear();
            self.levels.clear();
            let levels = if self.present > 0 { Some(&mut self.levels) } else { None };
            let (rows, _, _) = r.read_records(BATCH, levels, None, &mut self.batch)?;
            if rows == 0 {
                self.values = None;
                continue;
            }
            if self.present == 0 {
                self.levels.resize(rows, 0);
            }
            self.at = (0, 0);
            return Ok(true);
        }
    }

    fn read(&mut self) -> Result<Option<Document>> {
        if self.at.0 >= self.levels.len() {
            let filled =
                self.fill().map_err(|e| anyhow!("corpus {} row {}: reading column {:?}: {e}", self.file.display(), self.row + 1, self.field))?;
            if !filled {
                return Ok(None);
            }
        }
        self.row += 1;
        let origin = Origin { file: self.file.clone(), at: Position::Row(self.row) };
        let level = self.levels[self.at.0];
        self.at.0 += 1;
        if level < self.present {
            bail!("corpus {origin}: column {:?} is null: every row needs its text; drop the rows without text or fill them", self.field);
        }
        let value = &self.batch[self.at.1];
        self.at.1 += 1;
        Ok(Some(Document { text: value.data().to_vec(), origin }))
    }
}

impl Iterator for Reader {
    type Item = Result<Document>;

    fn next(&mut self) -> Option<Self::Item> {
        self.read().transpose()
    }
}
