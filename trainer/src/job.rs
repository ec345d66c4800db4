//! From the job's own types to a run: a `TrainingJob` manifest (what a user applies) or the
//! operator's `TrainerConfig` (what a pod is given) becomes a [`RunConfig`].

use crate::config::{DataConfig, DataSource, DistillConfig, DistillLoss, OptimConfig, OptimizerKind, RunConfig, Schedule, TrainConfig};
use crate::data::TokenizerSource;
use crate::data::corpus::{Corpus, DEFAULT_FIELD};
use anyhow::{Context, Result};
use frugal_api::contract::TrainerConfig;
use frugal_api::planner::{self, Plan, PlanOptions};
use frugal_api::v1alpha1::{self as api, TrainingJob, TrainingJobSpec};
use std::path::{Path, PathBuf};

/// The job as given cannot run, and running it again will not help: a TrainerConfig of another
/// contract version, a manifest that is not a TrainingJob, a corpus or evaluation file that is
/// not there. `frugal-trainer` exits with [`CONFIGURATION_ERROR_EXIT_CODE`] for it, which the
/// operator's pod failure policy treats as permanent (no retry), and writes the message to the
/// pod's termination log, which the operator puts in the job's condition.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigurationError(pub String);

/// EX_CONFIG, the exit code of a [`ConfigurationError`].
pub const CONFIGURATION_ERROR_EXIT_CODE: i32 = frugal_api::contract::exit::CONFIGURATION_ERROR;

/// A job as the trainer runs it.
pub struct Job {
    pub name: String,
    pub spec: TrainingJobSpec,
    pub plan: Plan,
}

/// Where the spec's text corpus is and how it stores its documents.
pub fn corpus_of(text: &api::TextSource) -> Result<Corpus> {
    if text.field.is_some() && text.format == api::TextFormat::Text {
        anyhow::bail!(
            "data.source.text.field names a JSONL key or a Parquet column: set data.source.text.format to jsonl or parquet, or leave field out"
        );
    }
    let field = text.field.clone().unwrap_or_else(|| DEFAULT_FIELD.into());
    Ok(Corpus { path: PathBuf::from(&text.path), format: text.format, field })
}

/// Where the spec's tokenizer comes from.
pub fn tokenizer_source(d: &api::DataSpec) -> Result<TokenizerSource> {
    Ok(match (d.tokenizer, &d.tokenizer_file) {
        (api::Tokenizer::Byte, None) => TokenizerSource::Byte,
        (api::Tokenizer::Bpe, None) => TokenizerSource::Bpe,
        (api::Tokenizer::File, Some(f)) => TokenizerSource::File { path: PathBuf::from(&f.path), end_of_text: f.end_of_text.clone() },
        _ => anyhow::bail!(
            "data.tokenizerFile goes with data.tokenizer: file, and only with it: set both (tokenizerFile.path names a Hugging Face tokenizer.json), or neither"
        ),
    })
}

/// Reads a `TrainingJob` manifest, or a pod's `TrainerConfig`, from a YAML file.
pub fn load(path: &Path) -> Result<Job> {
    load_with(path, &[])
}

/// [`load`], with spec fields set from the command line first: each of `overrides` is
/// `FIELD=VALUE`, the field a dotted path under `spec` (`training.seed=2`,
/// `training.duration.steps=300`) and the value YAML (a number, `true`, a word, `{...}`).
pub fn load_with(path: &Path, overrides: &[String]) -> Result<Job> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigurationError(format!("the job {} cannot be read: {e}", path.display())))?;
    let text = if overrides.is_empty() { text } else { with_overrides(&text, overrides)? };
    parse(&text).map_err(|e| ConfigurationError(format!("{}: {e:#}", path.display())).into())
}

/// The YAML `text` (a manifest or a TrainerConfig, both with `spec` at the top) with
/// `overrides` set; a field the spec does not have is an error, not ignored.
pub fn with_overrides(text: &str, overrides: &[String]) -> Result<String> {
    // serde-saphyr has no YAML value type of its own; a job's YAML is JSON's data model anyway
    use serde_json::Value;
    let mut doc: Value = serde_saphyr::from_str(text).context("the job is not YAML")?;
    let mut set = Vec::new();
    for o in overrides {
        let (path, value) = o.split_once('=').with_context(|| format!("--set {o:?}: write FIELD=VALUE, such as training.seed=2"))?;
        let value: Value = serde_saphyr::from_str(value).with_context(|| format!("--set {o:?}: the value is not YAML"))?;
        let parts: Vec<&str> = path.split('.').collect();
        if parts.iter().any(|p| p.is_empty()) {
            anyhow::bail!("--set {o:?}: {path:?} is not a dotted field path under spec, such as training.seed");
        }
        let mut at = doc.get_mut("spec").context("the job has no spec to set fields in")?;
        for (i, part) in parts.iter().enumerate() {
            let Value::Object(map) = at else {
                anyhow::bail!("--set {o:?}: spec.{} is not an object", parts[..i].join("."));
            };
            if i + 1 == parts.len() {
                map.insert((*part).into(), value.clone());
                break;
            }
            at = map.entry(*part).or_insert_with(|| Value::Object(Default::default()));
        }
        set.push((o, parts, value));
    }
    // the spec's types drop what they do not know: a field that does not come back is a typo
    let spec: TrainingJobSpec = serde_json::from_value(doc["spec"].clone()).context("the spec with --set applied")?;
    let known = serde_json::to_value(&spec)?;
    for (o, parts, value) in set {
        let empty =
            matches!(&value, Value::Null) || value.as_object().is_some_and(|m| m.is_empty()) || value.as_array().is_some_and(|v| v.is_empty());
        let found = parts.iter().try_fold(&known, |at, p| at.get(*p)).is_some();
        if !found && !empty {
            anyhow::bail!("--set {o:?}: spec.{} is not a field of a TrainingJob spec (docs/api.md lists them)", parts.join("."));
        }
    }
    Ok(serde_saphyr::to_string(&doc)?)
}

pub fn parse(text: &str) -> Result<Job> {
    let object: serde_json::Value = serde_saphyr::from_str(text).context("not a TrainingJob manifest: the file is not YAML")?;
    // a TrainerConfig has a version and no kind; its own reader names a version it does not read
    let (name, spec) = if object.get("kind").is_none() && object.get("version").is_some() {
        let cfg = TrainerConfig::from_yaml(text)?;
        (cfg.job.name, cfg.spec)
    } else {
        // what the API server would refuse is refused here too, before anything trains
        let broken = frugal_api::schema::training_job_violations(&object);
        if !broken.is_empty() {
            anyhow::bail!("the API server would refuse this TrainingJob:\n  {}", broken.join("\n  "));
        }
        let job: TrainingJob = serde_json::from_value(object).context("not a TrainingJob manifest")?;
        (job.metadata.name.clone().unwrap_or_else(|| "local".into()), job.spec)
    };
    let plan = planner::plan(&spec, &PlanOptions::default())?;
    Ok(Job { name, spec, plan })
}

impl Job {
    /// The job trains as a pipeline (several stages, or several replicas of one) and writes the
    /// pipelined checkpoint layout.
    pub fn pipelined(&self) -> bool {
        self.spec.parallelism.pipeline_stages > 1 || self.spec.parallelism.data_parallel > 1
    }

    /// The run this job asks for; `checkpoint_dir` overrides the spec's path.
    pub fn run_config(&self, checkpoint_dir: Option<PathBuf>) -> Result<RunConfig> {
        let spec = &self.spec;
        let t = &spec.training;
        let micro_batches = i64::from(spec.parallelism.micro_batches);
        let batch = i64::from(t.batch_size);
        let o = &t.optimizer;
        let sched = &t.schedule;
        let optim = OptimConfig {
            kind: match o.type_ {
                api::OptimizerType::AdamW => OptimizerKind::AdamW,
                api::OptimizerType::Muon => OptimizerKind::Muon,
            },
            lr: o.learning_rate,
            min_lr: o.learning_rate * sched.min_learning_rate_ratio,
            warmup_steps: sched.warmup_steps,
            schedule: match sched.type_ {
                api::ScheduleType::Cosine => Schedule::Cosine,
                api::ScheduleType::Trapezoidal => Schedule::Trapezoidal { decay_fraction: sched.cooldown_fraction },
                api::ScheduleType::Constant => Schedule::Constant,
            },
            beta1: o.beta1,
            beta2: o.beta2,
            eps: 1e-8,
            weight_decay: o.weight_decay,
            grad_clip: o.grad_clip,
            muon_lr: o.muon_learning_rate,
            muon_momentum: o.beta1,
        };
        let d = &spec.data;
        let source = match d.source.type_ {
            api::DataSourceType::Synthetic => {
                let s = d.source.synthetic.clone().unwrap_or(api::SyntheticSource { branching: 4, tokens: 1 << 20 });
                DataSource::Synthetic { branching: s.branching.into(), tokens: s.tokens }
            }
            api::DataSourceType::Text => {
                let text = d.source.text.as_ref().context("data.source.text is required with type Text")?;
                DataSource::Text { corpus: corpus_of(text)?, tokenizer: tokenizer_source(d)? }
            }
            api::DataSourceType::Shards => {
                let shards = d.source.shards.as_ref().context("data.source.shards is required with type Shards")?;
                DataSource::Shards { path: PathBuf::from(&shards.path) }
            }
        };
        // Each replica's micro-batch: the batch splits into replicas × micro-batches. An
        // evaluation batch is a micro-batch of one replica's worth of the batch, whatever the
        // replica count, so that the evaluation does not change with the layout.
        let replicas = i64::from(spec.parallelism.data_parallel.max(1));
        let micro_batch_size = batch / (micro_batches * replicas);
        let run = RunConfig {
            name: self.name.clone(),
            model: self.plan.model.clone(),
            data: DataConfig {
                source,
                validation_fraction: d.validation_fraction,
                eval_sequences: i64::from(t.eval_batches) * (batch / micro_batches),
            },
            train: TrainConfig {
                steps: self.plan.steps,
                batch_size: batch,
                micro_batch_size,
                precision: t.precision.into(),
                activation_checkpointing: t.activation_checkpointing,
                optim,
                seed: t.seed as u64,
                eval_interval: t.eval_interval,
                checkpoint_interval: t.checkpoint_interval,
                log_interval: t.log_interval,
            },
            checkpoint_dir: Some(checkpoint_dir.unwrap_or_else(|| PathBuf::from(&spec.checkpoint.path))),
            keep_checkpoints: spec.checkpoint.keep.max(1) as usize,
            checkpoint_store: spec.checkpoint.store.clone(),
            distill: match (&spec.distill, &self.plan.teacher) {
                (Some(d), Some(teacher)) => Some(DistillConfig {
                    teacher: teacher.clone(),
                    checkpoint: PathBuf::from(&d.teacher.checkpoint),
                    loss: DistillLoss { temperature: d.temperature, soft_weight: d.soft_weight },
                }),
                _ => None,
            },
        };
        run.validate().map_err(anyhow::Error::msg)?;
        Ok(run)
    }

    /// Zero-shot sets, quality target and the price of a GPU-hour, from the spec and its plan.
    pub fn eval_config(&self) -> crate::eval::EvalConfig {
        let p = &self.plan;
        crate::eval::EvalConfig {
            sets: self.spec.data.eval_sets.clone(),
            target: self.spec.data.quality_target.clone(),
            price_per_gpu_hour: p.price_per_gpu_hour(),
            currency: p.currency.clone(),
        }
    }

    /// Checks that `spec.checkpoint.store` (and `spec.export.store`) can be listed with this process's credentials before
    /// anything trains: a missing bucket, a wrong key or an unreachable endpoint is a
    /// [`ConfigurationError`] naming the field, with what the store said (its error code and
    /// message), and the job fails instead of retrying as if it were transient.
    pub fn check_store(&self) -> std::result::Result<(), ConfigurationError> {
        let export = self.spec.export.as_ref().and_then(|e| e.store.as_ref()).map(|s| (crate::export_store::FIELD, s));
        for (field, spec) in self.spec.checkpoint.store.as_ref().map(|s| (crate::checkpoint::remote::STORE_FIELD, s)).into_iter().chain(export) {
            let location = crate::store::Location::of(field, spec).map_err(ConfigurationError)?;
            location.open().map_err(ConfigurationError)?.check().map_err(|e| ConfigurationError(format!("{e:#}")))?;
        }
        Ok(())
    }

    /// Checks what the spec alone decides, before any input is read or downloaded: that the
    /// teacher can teach the model (its vocabulary, its context) and that a Hugging Face export
    /// has a family that computes the model.
    pub fn check_spec(&self) -> std::result::Result<(), ConfigurationError> {
        if let Some(teacher) = &self.plan.teacher {
            crate::config::check_teacher(&self.plan.model, teacher).map_err(ConfigurationError)?;
        }
        if self.spec.export.as_ref().is_some_and(|e| e.hugging_face) {
            crate::hf::Family::of(&self.plan.model)
                .map_err(|e| ConfigurationError(format!("spec.export.huggingFace: no Hugging Face family computes this model exactly: {e}")))?;
        }
        Ok(())
    }

    /// Checks that the files the spec names are there before anything trains: the corpus
    /// (`data.source.text.path`, `data.source.shards.path`), each evaluation set's file and a
    /// distillation teacher's checkpoint, and that the teacher can teach the model (its
    /// vocabulary, its context). A missing one is a [`ConfigurationError`] naming the field, not
    /// a failure at the first evaluation an hour in.
    pub fn check_inputs(&self) -> std::result::Result<(), ConfigurationError> {
        self.check_spec()?;
        let d = &self.spec.data;
        let mut paths: Vec<(String, &str)> = Vec::new();
        if let Some(text) = &d.source.text {
            paths.push(("data.source.text.path".into(), &text.path));
        }
        if let Some(shards) = &d.source.shards {
            paths.push(("data.source.shards.path".into(), &shards.path));
        }
        if let Some(file) = &d.tokenizer_file {
            paths.push(("data.tokenizerFile.path".into(), &file.path));
        }
        for (i, set) in d.eval_sets.iter().enumerate() {
            if let Some(path) = &set.path {
                paths.push((format!("data.evalSets[{i}].path ({})", set.name), path));
            }
        }
        if let Some(distill) = &self.spec.distill {
            paths.push(("spec.distill.teacher.checkpoint".into(), &distill.teacher.checkpoint));
        }
        if let Some(init) = &self.spec.model.init {
            paths.push(("spec.model.init".into(), init));
        }
        for (field, path) in paths {
            if let Err(e) = std::fs::metadata(path) {
                return Err(ConfigurationError(format!(
                    "{field} {path:?} cannot be read ({e}): mount it into the pod (spec.podTemplate.volumes and volumeMounts), name it by an s3:// URI, or fix the path"
                )));
            }
        }
        if let Some(file) = &d.tokenizer_file {
            // the tokenizer's vocabulary must fit the model's: refused here, before anything trains
            let tok = crate::data::TextTokenizer::from_file(Path::new(&file.path), file.end_of_text.as_deref())
                .map_err(|e| ConfigurationError(format!("data.tokenizerFile: {e:#}")))?;
            let what = format!("data.tokenizerFile.path {:?}", file.path);
            if let Some(e) = crate::data::tokenizer::vocabulary_mismatch(tok.vocab_size(), self.plan.model.vocab_size, &what) {
                return Err(ConfigurationError(e));
            }
        }
        if let Some(distill) = &self.spec.distill {
            teacher_step(Path::new(&distill.teacher.checkpoint))?;
        }
        if let Some(init) = &self.spec.model.init {
            crate::hf::check_init(&self.plan.model, Path::new(init)).map_err(|e| ConfigurationError(format!("{e:#}")))?;
        }
        Ok(())
    }

    /// Whether the job asks for a GPU.
    pub fn wants_gpu(&self) -> bool {
        self.spec.resources.device == api::Device::Gpu
    }
}

/// The teacher's checkpoint step `path` (spec.distill.teacher.checkpoint) names: itself when
/// it is a step directory, else the newest committed step under it.
pub fn teacher_step(path: &Path) -> std::result::Result<PathBuf, ConfigurationError> {
    match crate::checkpoint::step_or_latest(path) {
        Ok(Some(dir)) => Ok(dir),
        Ok(None) => Err(ConfigurationError(format!(
            "spec.distill.teacher.checkpoint {path:?} holds no committed checkpoint: point it at the teacher job's checkpoint path \
             (its spec.checkpoint.path) or at one of its step directories"
        ))),
        Err(e) => Err(ConfigurationError(format!("spec.distill.teacher.checkpoint {path:?}: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = "apiVersion: frugal.dev/v1alpha1\nkind: TrainingJob\nmetadata: {name: lm}\nspec:\n  model: {type: Preset, preset: tiny}\n  data: {source: {type: Synthetic}}\n  training: {duration: {type: Steps, steps: 2000}}\n";

    fn set(sets: &[&str]) -> Result<String> {
        with_overrides(MANIFEST, &sets.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    /// A job reading `source` with `tokenizer` (YAML flow mappings), a custom model of `vocab`.
    fn data_job(source: &str, tokenizer: &str, vocab: i64) -> Result<Job> {
        parse(&format!(
            "apiVersion: frugal.dev/v1alpha1\nkind: TrainingJob\nmetadata: {{name: lm}}\nspec:\n  model: {{type: Custom, custom: {{layers: 2, dModel: 32, heads: 2, seqLen: 16, vocabSize: {vocab}}}}}\n  data: {{source: {source}, {tokenizer}}}\n"
        ))
    }

    #[test]
    fn the_spec_names_the_corpus_format_and_the_tokenizer_file() {
        let dir = std::env::temp_dir().join(format!("frugal-job-tokenizer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tokenizer = dir.join("tokenizer.json");
        let trained = crate::data::TextTokenizer::train_bpe(["the cat sat on the mat, the cat sat"].into_iter(), 300).unwrap();
        trained.save(&tokenizer).unwrap();
        let n = trained.vocab_size();
        let source = format!("{{type: Text, text: {{path: {}, format: parquet, field: content}}}}", dir.display());
        let file = format!("tokenizer: file, tokenizerFile: {{path: {}}}", tokenizer.display());

        let job = data_job(&source, &file, n).unwrap();
        let run = job.run_config(None).unwrap();
        let DataSource::Text { corpus, tokenizer: t } = &run.data.source else { panic!("{:?}", run.data.source) };
        assert_eq!((corpus.format, corpus.field.as_str()), (api::TextFormat::Parquet, "content"));
        assert_eq!(t, &TokenizerSource::File { path: tokenizer.clone(), end_of_text: None });
        job.check_inputs().unwrap();
        // A model wider than the tokenizer pads; a narrower one is refused before training.
        data_job(&source, &file, n + 8).unwrap().check_inputs().unwrap();
        let e = data_job(&source, &file, 257).unwrap().check_inputs().unwrap_err().0;
        assert!(
            e.contains("data.tokenizerFile.path")
                && e.contains(&format!("{n} tokens"))
                && e.contains("holds 257")
                && e.contains(&format!("vocabSize to {n}")),
            "{e}"
        );
        // A JSONL corpus reads `text` unless told otherwise.
        let jsonl = format!("{{type: Text, text: {{path: {}, format: jsonl}}}}", dir.display());
        let run = data_job(&jsonl, "tokenizer: bpe", 300).unwrap().run_config(None).unwrap();
        assert!(matches!(&run.data.source, DataSource::Text { corpus, tokenizer: TokenizerSource::Bpe } if corpus.field == "text"));

        // What CEL refuses at the API server, the trainer refuses for a local manifest too.
        let e = data_job(&source, "tokenizer: file", n).unwrap().run_config(None).unwrap_err().to_string();
        assert!(e.contains("data.tokenizerFile goes with data.tokenizer: file"), "{e}");
        let text = format!("{{type: Text, text: {{path: {}, field: content}}}}", dir.display());
        let e = data_job(&text, "tokenizer: byte", 300).unwrap().run_config(None).unwrap_err().to_string();
        assert!(e.contains("data.source.text.field names a JSONL key or a Parquet column"), "{e}");
        let missing = format!("tokenizer: file, tokenizerFile: {{path: {}}}", dir.join("absent.json").display());
        let e = data_job(&source, &missing, n).unwrap().check_inputs().unwrap_err().0;
        assert!(e.contains("data.tokenizerFile.path") && e.contains("cannot be read"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn command_line_overrides_set_spec_fields() {
        let job =
            parse(&set(&["training.seed=2", "training.duration.steps=300", "training.precision=fp32", "resources.device=CPU"]).unwrap()).unwrap();
        assert_eq!(job.spec.training.seed, 2);
        assert_eq!(job.spec.training.duration.steps, Some(300));
        assert_eq!(job.spec.training.precision, api::Precision::Fp32);
        assert_eq!(job.spec.resources.device, api::Device::Cpu);
        assert_eq!(job.name, "lm");
    }

    #[test]
    fn an_override_keeps_its_yaml_type() {
        let text = set(&["training.seed=2", "training.activationCheckpointing=true", "image='7'", "training.precision=fp32"]).unwrap();
        let spec = &serde_saphyr::from_str::<serde_json::Value>(&text).unwrap()["spec"];
        assert_eq!(spec["training"]["seed"], serde_json::json!(2));
        assert_eq!(spec["training"]["activationCheckpointing"], serde_json::json!(true));
        assert_eq!(spec["image"], serde_json::json!("7"), "a quoted number stays a string");
        assert_eq!(spec["training"]["precision"], serde_json::json!("fp32"));
        assert_eq!(spec["training"]["duration"]["steps"], serde_json::json!(2000), "a field not set keeps its value");
        assert_eq!(parse(&text).unwrap().spec.image.as_deref(), Some("7"));
    }

    #[test]
    fn a_bad_override_names_what_is_wrong() {
        let e = set(&["training.sede=2"]).unwrap_err().to_string();
        assert!(e.contains("spec.training.sede is not a field"), "{e}");
        let e = set(&["training.seed"]).unwrap_err().to_string();
        assert!(e.contains("FIELD=VALUE"), "{e}");
        let e = set(&["model.preset.size=1"]).unwrap_err().to_string();
        assert!(e.contains("spec.model.preset is not an object"), "{e}");
        let e = format!("{:#}", set(&["training.seed=lots"]).unwrap_err());
        assert!(e.contains("--set") || e.contains("spec"), "{e}");
    }
}
