//! Evaluation and the quality target: bits per byte where the answer is known, a run stopped by
//! its target, and the same seed and configuration giving the same report.

mod common;

use common::*;
use frugal_api::v1alpha1::{EvalSet, EvalSetType, QualityMetric, QualityTarget};
use frugal_trainer::config::{DataConfig, DataSource};
use frugal_trainer::data::{Corpus, Data, TextTokenizer, TokenizerSource};
use frugal_trainer::eval::{self, LanguageModel};
use frugal_trainer::parallel::Stop;
use frugal_trainer::parallel::Worker;
use frugal_trainer::parallel::run::Session;
use frugal_trainer::report::Reporter;
use frugal_trainer::report::compare;
use frugal_trainer::report::metrics::Metrics;
use frugal_trainer::report::status::TrainerStatus;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use tch::{Device, Kind, Tensor};

const SHAKESPEARE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/tinyshakespeare.txt");

/// The first `bytes` of Tiny Shakespeare as a corpus file in a temporary directory.
fn corpus(name: &str, bytes: usize) -> PathBuf {
    let text = std::fs::read(SHAKESPEARE).expect("data/tinyshakespeare.txt");
    let dir = temp_dir(name);
    let path = dir.join("corpus.txt");
    std::fs::write(&path, &text[..bytes.min(text.len())]).unwrap();
    path
}

fn text_data(path: &std::path::Path, tokenizer: TokenizerSource, vocab: i64) -> Data {
    let cfg = DataConfig { source: DataSource::Text { corpus: Corpus::text(path), tokenizer }, validation_fraction: 0.1, eval_sequences: 0 };
    Data::new(&cfg, vocab, 16, 1).unwrap()
}

/// Every byte equally likely, end-of-text never.
struct UniformBytes {
    vocab: i64,
}

impl LanguageModel for UniformBytes {
    fn log_probs(&self, inputs: &Tensor) -> Tensor {
        let s = inputs.size();
        let row: Vec<f32> = (0..self.vocab).map(|v| if v < 256 { -(256f32.ln()) } else { f32::NEG_INFINITY }).collect();
        Tensor::from_slice(&row).view([1, 1, self.vocab]).expand([s[0], s[1], self.vocab], false).contiguous()
    }
    fn context(&self) -> i64 {
        16
    }
}

/// A byte bigram model (add-one smoothed, fitted on `text`), exposed through any tokenizer: a
/// token's log-probability is the sum of its bytes' log-probabilities, each given the byte before.
struct ByteBigram {
    /// [previous byte, or 256 after end-of-text][byte], nats; [_][256] is end-of-text.
    logp: Vec<[f64; 257]>,
    tokens: Vec<Vec<u8>>,
    end_of_text: usize,
}

impl ByteBigram {
    fn fit(text: &[u8], tokenizer: &TextTokenizer, vocab: i64) -> Self {
        let mut counts = vec![[1f64; 257]; 257];
        for w in text.windows(2) {
            counts[w[0] as usize][w[1] as usize] += 1.0;
        }
        let logp = counts
            .iter()
            .map(|row| {
                let total: f64 = row.iter().sum();
                let mut out = [0f64; 257];
                for (o, c) in out.iter_mut().zip(row) {
                    *o = (c / total).ln();
                }
                out
            })
            .collect();
        let mut tokens = tokenizer.token_bytes();
        tokens.resize(vocab as usize, vec![]);
        Self { logp, tokens, end_of_text: tokenizer.end_of_text() as usize }
    }
}

impl LanguageModel for ByteBigram {
    fn log_probs(&self, inputs: &Tensor) -> Tensor {
        let s = inputs.size();
        let ids: Vec<i64> = Vec::try_from(inputs.view([-1])).unwrap();
        let vocab = self.tokens.len();
        let mut out = vec![0f32; ids.len() * vocab];
        for (i, &id) in ids.iter().enumerate() {
            let start = self.tokens[id as usize].last().map_or(256, |&b| b as usize);
            for (v, bytes) in self.tokens.iter().enumerate() {
                let lp = if v == self.end_of_text {
                    self.logp[start][256]
                } else if bytes.is_empty() {
                    -1e9
                } else {
                    let mut prev = start;
                    bytes
                        .iter()
                        .map(|&b| {
                            let l = self.logp[prev][b as usize];
                            prev = b as usize;
                            l
                        })
                        .sum()
                };
                out[i * vocab + v] = lp as f32;
            }
        }
        Tensor::from_slice(&out).view([s[0], s[1], vocab as i64]).to_kind(Kind::Float)
    }
    fn context(&self) -> i64 {
        16
    }
}

#[test]
fn a_uniform_byte_model_scores_eight_bits_per_byte() {
    let path = corpus("uniform", 20_000);
    let data = text_data(&path, TokenizerSource::Byte, 257);
    let v = eval::validate(&UniformBytes { vocab: 257 }, &data, 8);
    assert!(v.bytes > 1_500, "{v:?}");
    assert!((v.bits_per_byte() - 8.0).abs() < 1e-6, "{}", v.bits_per_byte());
    assert!((v.loss() - 256f64.ln()).abs() < 1e-6);
    assert!((v.perplexity() - 256.0).abs() < 1e-3);

    // The real model with every weight zero is uniform over its 257 tokens, end-of-text included.
    let mut run = small_run(small_model(false), 1, None);
    run.data.source = DataSource::Text { corpus: Corpus::text(&path), tokenizer: TokenizerSource::Byte };
    run.data.eval_sequences = 0;
    let mut t = Worker::single(run, Device::Cpu).unwrap();
    let _ = t.params.master.zero_();
    t.params.sync_compute();
    let q = t.evaluate().unwrap().unwrap();
    assert!((q.bits_per_byte.unwrap() - 257f64.log2()).abs() < 1e-4, "{q:?}");
    assert!((q.perplexity.unwrap() - 257.0).abs() < 1e-2, "{q:?}");
}

#[test]
fn one_model_through_two_tokenizations_gives_one_bits_per_byte() {
    let path = corpus("two-tokenizers", 30_000);
    let vocab = 320;
    let bytes = text_data(&path, TokenizerSource::Byte, vocab);
    let bpe = text_data(&path, TokenizerSource::Bpe, vocab);
    let train_text = std::fs::read(&path).unwrap();
    let model_bytes = ByteBigram::fit(&train_text[..27_000], bytes.tokenizer.as_ref().unwrap(), vocab);
    let model_bpe = ByteBigram::fit(&train_text[..27_000], bpe.tokenizer.as_ref().unwrap(), vocab);
    let a = eval::validate(&model_bytes, &bytes, 8);
    let b = eval::validate(&model_bpe, &bpe, 8);
    // Same text, so same bytes and same total loss; BPE has fewer, harder tokens.
    assert_eq!(a.bytes, b.bytes);
    assert!(b.tokens * 3 < a.tokens * 2, "BPE {} tokens vs bytes {}", b.tokens, a.tokens);
    assert!(b.loss() > 1.4 * a.loss(), "per-token losses differ: {} vs {}", b.loss(), a.loss());
    assert!((a.bits_per_byte() - b.bits_per_byte()).abs() < 1e-6, "{} vs {}", a.bits_per_byte(), b.bits_per_byte());
    assert!(a.bits_per_byte() > 2.0 && a.bits_per_byte() < 5.0, "{}", a.bits_per_byte());
}

/// Trains `t` through the run loop, reporting to `reporter`; returns how it ended and its summary.
fn run_with(mut t: Worker, reporter: &mut Reporter) -> (Stop, frugal_trainer::report::Summary) {
    let metrics = Metrics::new("test");
    let stop = AtomicBool::new(false);
    let session = Session { stop: &stop, reporter: Some(reporter), metrics: &metrics, max_steps: None, resume: false, metrics_port: None };
    let (stopped, summary) = frugal_trainer::parallel::run::run(&mut t, session).unwrap();
    (stopped, summary.expect("the whole model's worker reports"))
}

fn run(t: Worker) -> (Stop, frugal_trainer::report::Summary) {
    let mut reporter = Reporter::new(t.cfg.train.steps, true);
    run_with(t, &mut reporter)
}

fn with_target(value: f64, steps: i64) -> Worker {
    let mut cfg = small_run(small_model(false), steps, None);
    cfg.train.eval_interval = 5;
    let mut t = Worker::single(cfg, Device::Cpu).unwrap();
    t.evaluation.target = Some(QualityTarget { metric: QualityMetric::ValidationLoss, value });
    t
}

#[test]
fn the_quality_target_stops_the_run() {
    tch::set_num_threads(2);
    let (events, received) = std::sync::mpsc::channel();
    let mut reporter = Reporter::new(300, true).with_sink(Some(events));
    let (stop, s) = run_with(with_target(5.0, 300), &mut reporter);
    drop(reporter);
    assert_eq!(stop, Stop::QualityTargetReached);
    let target = s.target.as_ref().unwrap();
    assert!(target.reached, "{target:?}");
    assert_eq!(s.reason, "QualityTargetReached");
    assert!(s.steps < 300 && s.steps % 5 == 0, "stopped at step {}", s.steps);
    assert!(s.quality.as_ref().unwrap().validation_loss.unwrap() <= 5.0);
    assert_eq!(target.step, Some(s.steps));
    assert_eq!(target.tokens, Some(s.steps * 8 * 16));
    assert!(target.device_hours.unwrap() > 0.0 && target.device_hours.unwrap() <= s.device_hours);
    let row = compare::Row::from_summary(&s);
    assert_eq!(row.gpu_hours_to_target, target.device_hours);
    // In a pod, the same events put the moment the target was reached into the status (the
    // operator prices the GPU-hours up to it); a later evaluation does not move it.
    let mut fold = TrainerStatus::default();
    let mut reached_at_eval = None;
    for event in received.try_iter() {
        fold.observe(&event);
        if reached_at_eval.is_none() && fold.target_reached_time.is_some() {
            reached_at_eval = match &event {
                frugal_trainer::report::event::RunEvent::Eval(e) => Some(e.step),
                _ => None,
            };
        }
    }
    let patch = fold.patch();
    assert_eq!(reached_at_eval, Some(s.steps), "the evaluation that reached the target set the time");
    assert!(patch["status"]["quality"]["targetReachedTime"].is_string(), "{patch}");
    assert_eq!(patch["status"]["quality"]["step"], s.steps);

    // A target out of reach: the run uses its steps and says so.
    let (stop, s) = run(with_target(0.01, 10));
    assert_eq!(stop, Stop::Completed);
    let target = s.target.unwrap();
    assert!(!target.reached && target.device_hours.is_none());
    assert!(target.message.contains("not reached within the budget of 10 steps"), "{}", target.message);
    assert!(target.best.unwrap() > 1.0);
}

#[test]
fn the_same_seed_and_configuration_give_the_same_report() {
    tch::set_num_threads(2);
    let report = |seed: u64| {
        let mut cfg = small_run(small_model(true), 6, None);
        cfg.train.seed = seed;
        cfg.train.eval_interval = 3;
        let mut t = Worker::single(cfg, Device::Cpu).unwrap();
        t.evaluation.sets = vec![EvalSet { name: "cloze".into(), type_: EvalSetType::Cloze, path: None, max_examples: Some(16) }];
        run(t).1
    };
    let (a, b, c) = (report(3), report(3), report(4));
    assert_eq!(a.without_timings(), b.without_timings());
    assert_ne!(a.without_timings(), c.without_timings());
    assert_eq!(a.provenance.config_hash, b.provenance.config_hash);
    assert_ne!(a.provenance.config_hash, c.provenance.config_hash);
    let q = a.quality.as_ref().unwrap();
    assert_eq!(q.zero_shot[0].examples, 16);
    assert!(!a.provenance.data_fingerprint.is_empty() && !a.provenance.libtorch_version.is_empty());

    // The comparison table, three ways.
    let rows: Vec<compare::Row> = [&a, &c].iter().map(|s| compare::Row::from_summary(s)).collect();
    let csv = compare::csv(&rows);
    assert_eq!(csv.lines().count(), 3);
    assert!(csv.lines().all(|l| l.split(',').count() == 17), "{csv}");
    let text = compare::text(&rows);
    assert!(text.lines().next().unwrap().contains("GPU-h to target") && !text.contains("not reached"));
    let json: serde_json::Value = serde_json::from_str(&compare::json(&rows)).unwrap();
    assert_eq!(json[1]["seed"], 4);

    // The same job over its two seeds, in one row; a baseline of two runs asks for --seeds.
    let grouped = compare::render(&rows, "text", true, Some(&a.job)).unwrap();
    assert_eq!(grouped.lines().count(), 2, "one job over two seeds:\n{grouped}");
    assert!(grouped.contains("3,4") && grouped.contains("÷ baseline"), "{grouped}");
    let e = compare::render(&rows, "text", false, Some(&a.job)).unwrap_err().to_string();
    assert!(e.contains("--seeds"), "{e}");
    assert!(compare::render(&rows, "yaml", false, None).unwrap_err().to_string().contains("--format"));
    let one = [rows[0].clone()];
    let json: serde_json::Value = serde_json::from_str(&compare::render(&one, "json", false, Some(&a.job)).unwrap()).unwrap();
    assert_eq!(json[0]["vsBaseline"]["flops"], 1.0, "{json}");
}
