//! Forward-only evaluation: validation loss, bits per byte and perplexity over the held-out split,
//! and zero-shot accuracy on LAMBADA-style last-word JSONL, multiple-choice JSONL and a cloze set
//! built from the corpus's own validation split.
//!
//! Bits per byte is the total loss over the held-out text divided by its bytes (times ln 2), not
//! a per-token mean rescaled, so models with different tokenizers are compared on the same text.

use crate::data::{Data, TextTokenizer};
use crate::model::gpt::Gpt;
use crate::params::ParamStore;
use crate::progress;
use crate::rng::Rng;
use anyhow::{Context, Result, bail};
use frugal_api::v1alpha1::{EvalSet, EvalSetType, QualityStatus, QualityTarget, ZeroShotResult};
use serde::Deserialize;
use std::f64::consts::LN_2;
use std::path::Path;
use tch::{Device, Kind, Tensor};

mod target;
pub use target::{TargetOutcome, TargetTracker, target_reached, target_value};

/// Anything that gives next-token log-probabilities: the GPT, or a reference model in tests.
pub trait LanguageModel {
    /// inputs [B, T] i64 → log-probabilities [B, T, V] f32 on the CPU.
    fn log_probs(&self, inputs: &Tensor) -> Tensor;
    /// The longest context it reads.
    fn context(&self) -> i64;
    /// What the evaluations read, per position of `inputs`: the log-probability of `targets`
    /// [B, T] and whether it is the most likely token, both [B, T] on the CPU. A model on a GPU
    /// computes them there, so that B × T values come to the host rather than B × T × V.
    fn score(&self, inputs: &Tensor, targets: &Tensor) -> (Tensor, Tensor) {
        score_log_probs(&self.log_probs(inputs), targets)
    }
}

/// [`LanguageModel::score`] from log-probabilities [B, T, V]: computed on their device, returned
/// on the CPU.
pub fn score_log_probs(log_probs: &Tensor, targets: &Tensor) -> (Tensor, Tensor) {
    let targets = targets.to_device(log_probs.device());
    let picked = log_probs.gather(2, &targets.unsqueeze(-1), false).squeeze_dim(-1);
    let greedy = log_probs.argmax(-1, false).eq_tensor(&targets);
    (picked.to_device(Device::Cpu), greedy.to_device(Device::Cpu))
}

/// The trained GPT as a [`LanguageModel`].
pub struct GptModel<'a> {
    pub model: &'a Gpt,
    pub params: &'a ParamStore,
    pub device: Device,
}

impl GptModel<'_> {
    /// Log-probabilities [B, T, V] on the model's device.
    fn device_log_probs(&self, inputs: &Tensor) -> Tensor {
        self.model.eval_logits(self.params, &inputs.to_device(self.device)).log_softmax(-1, Kind::Float)
    }
}

impl LanguageModel for GptModel<'_> {
    fn log_probs(&self, inputs: &Tensor) -> Tensor {
        self.device_log_probs(inputs).to_device(Device::Cpu)
    }
    fn context(&self) -> i64 {
        self.model.cfg.seq_len
    }
    fn score(&self, inputs: &Tensor, targets: &Tensor) -> (Tensor, Tensor) {
        score_log_probs(&self.device_log_probs(inputs), targets)
    }
}

/// Totals over the held-out split.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Validation {
    pub tokens: i64,
    pub bytes: i64,
    /// Summed negative log-likelihood, nats.
    pub nats: f64,
}

impl Validation {
    /// Mean loss per token, nats.
    pub fn loss(&self) -> f64 {
        if self.tokens == 0 { f64::NAN } else { self.nats / self.tokens as f64 }
    }
    pub fn perplexity(&self) -> f64 {
        self.loss().exp()
    }
    /// Total loss over the text's bytes, in bits.
    pub fn bits_per_byte(&self) -> f64 {
        if self.bytes == 0 { f64::NAN } else { self.nats / (self.bytes as f64 * LN_2) }
    }
}

/// Scores every held-out token once.
pub fn validate(lm: &dyn LanguageModel, data: &Data, batch: i64) -> Validation {
    let bytes_of = Tensor::from_slice(&data.token_bytes.iter().map(|&b| i64::from(b)).collect::<Vec<_>>());
    let mut v = Validation { tokens: 0, bytes: 0, nats: 0.0 };
    let batches = data.validation(batch);
    progress::begin("validation", "batches", Some(batches.len() as u64));
    for b in batches {
        let (picked, _) = lm.score(&b.inputs, &b.targets);
        v.nats -= picked.sum(Kind::Double).double_value(&[]);
        v.tokens += b.targets.numel() as i64;
        v.bytes += bytes_of.index_select(0, &b.targets.view([-1])).sum(Kind::Int64).int64_value(&[]);
        progress::advance(1);
    }
    progress::end();
    v
}

/// Log-probability of `continuation` after `context` (at least one token, cut from the left to
/// fit the model), and whether greedy decoding would have produced it token for token.
pub fn score_continuation(lm: &dyn LanguageModel, context: &[u32], continuation: &[u32]) -> (f64, bool) {
    let (logp, greedy) = score_batch(lm, context, &[continuation]);
    (logp[0], greedy[0])
}

/// As [`score_continuation`] for several continuations of one length, in one forward pass.
fn score_batch(lm: &dyn LanguageModel, context: &[u32], continuations: &[&[u32]]) -> (Vec<f64>, Vec<bool>) {
    let k = continuations[0].len();
    debug_assert!(continuations.iter().all(|c| c.len() == k));
    assert!(!context.is_empty(), "a continuation is scored after at least one token (end-of-text starts a document)");
    let max = lm.context() as usize + 1;
    let keep_ctx = context.len().min(max.saturating_sub(k)).max(1);
    let ctx = &context[context.len() - keep_ctx..];
    let mut rows = vec![];
    for c in continuations {
        let mut seq: Vec<i64> = ctx.iter().chain(c.iter()).map(|&t| i64::from(t)).collect();
        if seq.len() > max {
            seq.drain(..seq.len() - max);
        }
        rows.push(seq);
    }
    let n = rows[0].len() as i64;
    let all = Tensor::from_slice(&rows.concat()).view([rows.len() as i64, n]);
    // Input position i predicts token i + 1: the continuation's k tokens close the row.
    let (picked, greedy) = lm.score(&all.narrow(1, 0, n - 1), &all.narrow(1, 1, n - 1));
    let (from, k) = (n - 1 - k as i64, k as i64);
    let picked = picked.narrow(1, from, k).sum_dim_intlist(-1, false, Kind::Double);
    let greedy = greedy.narrow(1, from, k).all_dim(-1, false);
    let sums: Vec<f64> = Vec::try_from(picked).unwrap_or_default();
    let hits: Vec<bool> = Vec::try_from(greedy).unwrap_or_default();
    (sums, hits)
}

fn read_jsonl<T: for<'de> Deserialize<'de>>(path: &Path, max: Option<i32>) -> Result<Vec<T>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading evaluation set {}", path.display()))?;
    let mut out = vec![];
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        if max.is_some_and(|m| out.len() >= m as usize) {
            break;
        }
        out.push(serde_json::from_str(line).with_context(|| format!("{}:{}", path.display(), i + 1))?);
    }
    Ok(out)
}

#[derive(Deserialize)]
struct LastWordExample {
    text: String,
}

#[derive(Deserialize)]
struct ChoiceExample {
    context: String,
    choices: Vec<String>,
    label: usize,
}

/// LAMBADA: the last word (with its leading space) must come out of greedy decoding exactly.
pub fn last_word(lm: &dyn LanguageModel, tok: &TextTokenizer, path: &Path, max: Option<i32>) -> Result<(i64, i64)> {
    let mut hits = 0;
    let mut n = 0;
    let examples = read_jsonl::<LastWordExample>(path, max)?;
    progress::begin(&format!("LastWord {}", path.display()), "examples", Some(examples.len() as u64));
    for (i, ex) in examples.into_iter().enumerate() {
        progress::advance(1);
        let text = ex.text.trim_end();
        let Some(cut) = text.rfind(' ') else { continue };
        let ctx: Vec<u32> = std::iter::once(tok.end_of_text())
            .chain(tok.encode(&text.as_bytes()[..cut]).with_context(|| format!("{} example {}", path.display(), i + 1))?)
            .collect();
        let word = tok.encode(&text.as_bytes()[cut..]).with_context(|| format!("{} example {}", path.display(), i + 1))?;
        if word.is_empty() || word.len() as i64 >= lm.context() {
            continue;
        }
        hits += i64::from(score_continuation(lm, &ctx, &word).1);
        n += 1;
    }
    Ok((hits, n))
}

/// Multiple choice: the choice with the highest log-probability per byte wins (so long choices
/// are not penalised for their length).
pub fn multiple_choice(lm: &dyn LanguageModel, tok: &TextTokenizer, path: &Path, max: Option<i32>) -> Result<(i64, i64)> {
    let mut hits = 0;
    let mut n = 0;
    let examples = read_jsonl::<ChoiceExample>(path, max)?;
    progress::begin(&format!("MultipleChoice {}", path.display()), "examples", Some(examples.len() as u64));
    for (i, ex) in examples.into_iter().enumerate() {
        progress::advance(1);
        if ex.label >= ex.choices.len() {
            bail!("{} example {}: label {} but {} choices", path.display(), i + 1, ex.label, ex.choices.len());
        }
        let ctx: Vec<u32> = std::iter::once(tok.end_of_text())
            .chain(tok.encode(ex.context.as_bytes()).with_context(|| format!("{} example {}", path.display(), i + 1))?)
            .collect();
        let mut best = (f64::NEG_INFINITY, usize::MAX);
        for (j, choice) in ex.choices.iter().enumerate() {
            let ids = tok.encode(choice.as_bytes()).with_context(|| format!("{} example {}", path.display(), i + 1))?;
            if ids.is_empty() {
                continue;
            }
            let ids = &ids[..ids.len().min(lm.context() as usize - 1)];
            let per_byte = score_continuation(lm, &ctx, ids).0 / choice.len().max(1) as f64;
            if per_byte > best.0 {
                best = (per_byte, j);
            }
        }
        hits += i64::from(best.1 == ex.label);
        n += 1;
    }
    Ok((hits, n))
}

/// Cloze examples from the validation split: a context of half the model's window, then the true
/// next span against three spans taken from elsewhere in the split; the most likely span wins
/// (chance is 25%). Without `max`, up to 256 non-overlapping examples.
pub fn cloze(lm: &dyn LanguageModel, data: &Data, seed: u64, max: Option<i32>) -> Result<(i64, i64)> {
    let val = data.validation_tokens();
    let ctx_len = (lm.context() / 2).max(1) as usize;
    let span = (lm.context() / 8).clamp(1, 8) as usize;
    let window = ctx_len + span;
    if val.len() < 4 * window {
        bail!("the validation split ({} tokens) is too short for a cloze set of {window}-token examples", val.len());
    }
    let examples = (val.len() / window).min(max.map_or(256, |m| m as usize));
    let mut rng = Rng::derive(seed, "cloze");
    let (mut hits, mut n) = (0, 0);
    progress::begin("Cloze", "examples", Some(examples as u64));
    for e in 0..examples {
        progress::advance(1);
        let at = e * window;
        let mut options: Vec<Vec<u32>> = vec![val.range(at + ctx_len, span)];
        let mut tries = 0;
        while options.len() < 4 && tries < 100 {
            tries += 1;
            let s = rng.below((val.len() - span + 1) as u64) as usize;
            let cand = val.range(s, span);
            if !options.contains(&cand) {
                options.push(cand);
            }
        }
        if options.len() < 4 {
            continue;
        }
        let options: Vec<&[u32]> = options.iter().map(Vec::as_slice).collect();
        let (scores, _) = score_batch(lm, &val.range(at, ctx_len), &options);
        let best = scores.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i);
        hits += i64::from(best == Some(0));
        n += 1;
    }
    Ok((hits, n))
}

/// Runs the job's zero-shot sets.
pub fn zero_shot(lm: &dyn LanguageModel, data: &Data, sets: &[EvalSet], seed: u64) -> Result<Vec<ZeroShotResult>> {
    let mut out = vec![];
    for set in sets {
        let needs_text = || -> Result<(&TextTokenizer, &Path)> {
            let tok = data
                .tokenizer
                .as_ref()
                .with_context(|| format!("evaluation set {}: {:?} needs text data, not the synthetic language", set.name, set.type_))?;
            let path = set.path.as_deref().with_context(|| format!("evaluation set {} needs a path", set.name))?;
            Ok((tok, Path::new(path)))
        };
        let (hits, n) = match set.type_ {
            EvalSetType::LastWord => {
                let (tok, path) = needs_text()?;
                last_word(lm, tok, path, set.max_examples)?
            }
            EvalSetType::MultipleChoice => {
                let (tok, path) = needs_text()?;
                multiple_choice(lm, tok, path, set.max_examples)?
            }
            EvalSetType::Cloze => cloze(lm, data, seed, set.max_examples)?,
        };
        progress::end();
        out.push(ZeroShotResult { name: set.name.clone(), accuracy: if n > 0 { hits as f64 / n as f64 } else { 0.0 }, examples: n });
    }
    Ok(out)
}

/// One evaluation: validation figures at `step` and the zero-shot sets.
pub fn evaluate(lm: &dyn LanguageModel, data: &Data, sets: &[EvalSet], seed: u64, step: i64, batch: i64) -> Result<QualityStatus> {
    let v = validate(lm, data, batch);
    Ok(QualityStatus {
        step,
        validation_loss: Some(v.loss()),
        perplexity: Some(v.perplexity()),
        bits_per_byte: Some(v.bits_per_byte()),
        zero_shot: zero_shot(lm, data, sets, seed)?,
        target_reached_time: None,
        ..Default::default()
    })
}

/// What a job asks evaluation to do beyond validation loss, and what a device-hour costs.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct EvalConfig {
    pub sets: Vec<EvalSet>,
    pub target: Option<QualityTarget>,
    #[serde(skip)]
    pub price_per_gpu_hour: f64,
    #[serde(skip)]
    pub currency: String,
}

/// SHA-256 of the resolved run: model, data, training and evaluation (not where checkpoints go).
pub fn config_hash(cfg: &crate::config::RunConfig, evaluation: &EvalConfig) -> String {
    use sha2::{Digest, Sha256};
    let mut run = cfg.clone();
    run.checkpoint_dir = None;
    let text = serde_json::to_vec(&(run, evaluation)).expect("configuration serialises");
    hex::encode(Sha256::digest(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Certain that token t is followed by t + 1.
    struct Counting;

    impl LanguageModel for Counting {
        fn log_probs(&self, inputs: &Tensor) -> Tensor {
            let v = 16;
            let next = (inputs + 1).remainder(v);
            Tensor::full([inputs.size()[0], inputs.size()[1], v], -20.0, (Kind::Float, Device::Cpu)).scatter_value(2, &next.unsqueeze(-1), 0.0)
        }
        fn context(&self) -> i64 {
            8
        }
    }

    #[test]
    fn continuations_are_scored_at_their_own_positions() {
        let (lp, greedy) = score_continuation(&Counting, &[3, 4], &[5, 6, 7]);
        assert!(greedy && lp.abs() < 1e-6, "{lp}");
        let (lp, greedy) = score_continuation(&Counting, &[3, 4], &[5, 7, 8]);
        assert!(!greedy && (lp + 20.0).abs() < 1e-4, "{lp}");
        // A long context is cut from the left; the continuation still lines up.
        let ctx: Vec<u32> = (0..12).collect();
        assert!(score_continuation(&Counting, &ctx, &[12, 13]).1);
        let (scores, _) = score_batch(&Counting, &[1, 2], &[&[3, 4], &[9, 11], &[3, 9]]);
        assert!(scores[0] > scores[2] && scores[2] > scores[1], "{scores:?}");
    }

    /// Knows a text by heart (byte tokens): the byte that follows the longest suffix of the
    /// input, up to 12 bytes, found in the text is all but certain; anything else is unlikely.
    struct Recites(Vec<u8>);

    impl LanguageModel for Recites {
        fn log_probs(&self, inputs: &Tensor) -> Tensor {
            let (b, t) = inputs.size2().unwrap();
            let rows: Vec<i64> = Vec::try_from(inputs.reshape([-1])).unwrap();
            let mut out = vec![-20f32; (b * t * 257) as usize];
            for r in 0..b as usize {
                let row = &rows[r * t as usize..(r + 1) * t as usize];
                for i in 0..t as usize {
                    let next = (1..=12.min(i + 1)).rev().find_map(|n| {
                        let suffix: Vec<u8> = row[i + 1 - n..=i].iter().map(|&x| x as u8).collect();
                        self.0.windows(n + 1).find(|w| w[..n] == suffix[..]).map(|w| w[n])
                    });
                    if let Some(next) = next {
                        out[(r * t as usize + i) * 257 + next as usize] = -1e-4;
                    }
                }
            }
            Tensor::from_slice(&out).view([b, t, 257])
        }
        fn context(&self) -> i64 {
            64
        }
    }

    const TEXT: &str = "the quick brown fox jumps over the lazy dog while the cat sleeps by the warm fire";

    fn jsonl(lines: &[serde_json::Value]) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("frugal-eval-{}-{}.jsonl", std::process::id(), lines.len()));
        std::fs::write(&path, lines.iter().map(|l| l.to_string() + "\n").collect::<String>()).unwrap();
        path
    }

    #[test]
    fn last_word_scores_a_known_answer_set() {
        let lm = Recites(TEXT.as_bytes().to_vec());
        // the text's own phrases end in the word it knows; the altered ones do not
        let examples = [
            ("the quick brown fox jumps", true),
            ("jumps over the lazy dog", true),
            ("the cat sleeps by the warm fire", true),
            ("the quick brown fox sleeps", false),
            ("over the lazy cat", false),
            ("nospace", false),
        ];
        let lines: Vec<serde_json::Value> = examples.iter().map(|(t, _)| serde_json::json!({"text": t})).collect();
        let path = jsonl(&lines);
        let (hits, n) = last_word(&lm, &TextTokenizer::Byte, &path, None).unwrap();
        // an example without a space has no last word to score and is skipped
        assert_eq!((hits, n), (3, 5));
        assert_eq!(last_word(&lm, &TextTokenizer::Byte, &path, Some(2)).unwrap(), (2, 2));
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn multiple_choice_scores_a_known_answer_set() {
        let lm = Recites(TEXT.as_bytes().to_vec());
        let example = |context: &str, choices: &[&str], label: usize| serde_json::json!({"context": context, "choices": choices, "label": label});
        let lines = [
            example("the quick brown", &[" cat", " fox jumps", " dog"], 1),
            example("over the lazy", &[" dog while", " fire"], 0),
            example("sleeps by the warm", &[" dog", " fox", " fire"], 2),
            // the label names a wrong choice: the evaluator must count it a miss
            example("the quick brown", &[" cat", " fox jumps"], 0),
        ];
        let path = jsonl(&lines);
        assert_eq!(multiple_choice(&lm, &TextTokenizer::Byte, &path, None).unwrap(), (3, 4));
        std::fs::remove_file(&path).unwrap();
        let bad = jsonl(&[example("a", &[" b"], 1)]);
        let e = multiple_choice(&lm, &TextTokenizer::Byte, &bad, None).unwrap_err().to_string();
        assert!(e.contains("label 1 but 1 choices"), "{e}");
        std::fs::remove_file(bad).unwrap();
    }
}
