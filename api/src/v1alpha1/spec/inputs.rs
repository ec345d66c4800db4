//! The inputs a job reads (its corpus, tokenizer file, evaluation sets, init model and a
//! distillation teacher's checkpoint), each a local path or an `s3://` URI: one list, which the
//! trainer resolves (downloading what is in a bucket) and `kubectl frugal plan` probes.

use super::TrainingJobSpec;

/// What an input's field takes, which decides what of the bucket it reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputShape {
    /// One object (an evaluation set).
    File,
    /// A `tokenizer.json`: the object, and the `tokenizer_config.json` beside it when there is
    /// one (it names the end-of-text token).
    Tokenizer,
    /// Every object under the prefix (a Hugging Face model directory).
    Directory,
    /// Pre-tokenized shards: the directory's small files (`data.json`, the tokenizer) are read
    /// whole, the `.bin` shards in ranges as training needs them.
    Shards,
    /// The object of that key when there is one, else every object under the prefix (a text
    /// corpus: a file or a directory of files). A URI ending in `/` is always a prefix.
    FileOrDirectory,
    /// A checkpoint: a step (a prefix holding `MANIFEST.json`), all of it; or a checkpoint
    /// root, whose newest intact committed step alone is read.
    Checkpoint,
}

/// One input of a spec: its field's path (`spec.data.evalSets[0].path`), its value, and what it
/// takes.
#[derive(Debug)]
pub struct InputField<'a> {
    pub field: String,
    pub value: &'a mut String,
    pub shape: InputShape,
}

impl TrainingJobSpec {
    /// Every input the spec names, in the order the trainer reads them.
    pub fn input_fields(&mut self) -> Vec<InputField<'_>> {
        fn field(field: String, value: &mut String, shape: InputShape) -> InputField<'_> {
            InputField { field, value, shape }
        }
        let d = &mut self.data;
        let mut out = Vec::new();
        if let Some(text) = &mut d.source.text {
            out.push(field("spec.data.source.text.path".into(), &mut text.path, InputShape::FileOrDirectory));
        }
        if let Some(shards) = &mut d.source.shards {
            out.push(field("spec.data.source.shards.path".into(), &mut shards.path, InputShape::Shards));
        }
        if let Some(file) = &mut d.tokenizer_file {
            out.push(field("spec.data.tokenizerFile.path".into(), &mut file.path, InputShape::Tokenizer));
        }
        for (i, set) in d.eval_sets.iter_mut().enumerate() {
            if let Some(path) = &mut set.path {
                out.push(field(format!("spec.data.evalSets[{i}].path"), path, InputShape::File));
            }
        }
        if let Some(init) = &mut self.model.init {
            out.push(field("spec.model.init".into(), init, InputShape::Directory));
        }
        if let Some(distill) = &mut self.distill {
            out.push(field("spec.distill.teacher.checkpoint".into(), &mut distill.teacher.checkpoint, InputShape::Checkpoint));
        }
        out
    }

    /// The inputs the spec names by `s3://` URI: each field's path and URI.
    pub fn input_uris(&self) -> Vec<(String, String, InputShape)> {
        let mut spec = self.clone();
        spec.input_fields().into_iter().filter(|f| f.value.starts_with("s3://")).map(|f| (f.field, f.value.clone(), f.shape)).collect()
    }
}
