//! A job's inputs named by `s3://` URI, against a real S3-compatible server (SeaweedFS, started
//! per test as in `tests/s3.rs`): a JSONL corpus and a tokenizer file read from the bucket train
//! the same first loss as the same files read locally; a shard directory's small files come
//! down and its shards are read in ranges through a bounded cache (the same first loss, fewer
//! bytes fetched than the shards hold); a Hugging Face model directory under a prefix comes down
//! whole, and a teacher's checkpoint root only its newest step; a second resolve reuses the cache, a changed object comes down again and one
//! gone from the bucket leaves the copy; a missing key, a missing bucket or a wrong secret is
//! refused before training, naming the field, in the store's own words.
//!
//! Without the SeaweedFS binary these tests say so and pass, unless `FRUGAL_REQUIRE_S3` is set.

mod common;
#[path = "support/seaweedfs.rs"]
mod seaweedfs;

use common::*;
use frugal_trainer::inputs::{Inputs, Resolved, Shape, settings_of};
use frugal_trainer::job::{self, ConfigurationError, Job};
use frugal_trainer::parallel::Worker;
use frugal_trainer::store::Store;
use seaweedfs::{ACCESS_KEY, SECRET_KEY, SeaweedFs};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use tch::Device;

/// Documents of a small deterministic language: enough text for a BPE and a few batches.
fn documents(n: usize) -> Vec<String> {
    let words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "red", "ball", "under", "tree", "with", "big"];
    let mut state = 12345u64;
    (0..n)
        .map(|_| {
            let len = 8 + (state % 17) as usize;
            (0..len)
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    words[(state >> 33) as usize % words.len()]
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn write_jsonl(path: &Path, docs: &[String]) {
    let lines: Vec<String> = docs.iter().map(|d| serde_json::json!({ "text": d }).to_string()).collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// A TrainingJob reading `source` (a YAML flow mapping) with `tokenizer` (YAML lines of
/// `data`), its checkpoint store (whose settings the inputs take) in the server's bucket.
fn manifest(s3: &SeaweedFs, source: &str, tokenizer: &str, extra: &str) -> String {
    format!(
        "apiVersion: frugal.dev/v1alpha1
kind: TrainingJob
metadata: {{name: inputs}}
spec:
  model: {{type: Custom, custom: {{layers: 2, dModel: 32, heads: 2, seqLen: 16, vocabSize: 300}}}}
  data:
    source: {source}
{tokenizer}
  training: {{duration: {{type: Steps, steps: 10}}, batchSize: 4, precision: fp32, evalInterval: 100000, evalBatches: 1, logInterval: 1}}
  checkpoint: {{store: {{uri: \"s3://{bucket}/ckpt\", endpoint: \"{endpoint}\", region: us-east-1}}}}
  resources: {{device: CPU}}
{extra}",
        bucket = s3.bucket,
        endpoint = s3.endpoint
    )
}

fn vars(secret: &str) -> Vec<(String, String)> {
    vec![("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()), ("AWS_SECRET_ACCESS_KEY".into(), secret.into())]
}

/// The inputs of `job` as a pod would reach them (the job's store settings), with the test's
/// keys, copied under `cache`.
fn inputs_of(job: &Job, cache: &Path, secret: &str) -> Inputs {
    Inputs::new(cache.to_path_buf(), settings_of(&job.spec).unwrap(), vars(secret))
}

/// Uploads every file under `dir` as `prefix/<its relative name>`.
fn upload_dir(store: &Store, dir: &Path, prefix: &str) {
    for (name, path) in files_under(dir) {
        store.put_file(&format!("{prefix}/{name}"), &path).unwrap();
    }
}

/// Every file under `dir` by its `/`-separated relative name.
fn files_under(dir: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.strip_prefix(dir).unwrap().to_string_lossy().replace('\\', "/"), p);
            }
        }
    }
    out
}

/// Whether the two directories hold the same files, byte for byte.
fn assert_same_files(a: &Path, b: &Path) {
    let (fa, fb) = (files_under(a), files_under(b));
    assert_eq!(fa.keys().collect::<Vec<_>>(), fb.keys().collect::<Vec<_>>(), "{} and {} hold other files", a.display(), b.display());
    for (name, pa) in &fa {
        assert!(std::fs::read(pa).unwrap() == std::fs::read(&fb[name]).unwrap(), "{name} differs");
    }
}

/// The first step's loss of `job`.
fn first_loss(job: &Job, checkpoints: &Path) -> f64 {
    let cfg = job.run_config(Some(checkpoints.to_path_buf())).unwrap();
    let mut w = Worker::single(cfg, Device::Cpu).unwrap();
    w.train_step().unwrap().loss
}

fn configuration_error(e: anyhow::Error) -> String {
    e.chain().find_map(|c| c.downcast_ref::<ConfigurationError>()).unwrap_or_else(|| panic!("not a configuration error: {e:#}")).0.clone()
}

#[test]
fn a_corpus_and_a_tokenizer_from_the_bucket_train_the_same_first_loss_as_from_disk() {
    tch::set_num_threads(1);
    let Some(s3) = SeaweedFs::start("inputs-corpus", "corpora") else { return };
    let dir = temp_dir("s3-inputs-corpus");
    let local = dir.join("local");
    std::fs::create_dir_all(&local).unwrap();
    let docs = documents(300);
    write_jsonl(&local.join("web.jsonl"), &docs);
    frugal_trainer::data::TextTokenizer::train_bpe(docs.iter(), 300).unwrap().save(&local.join("tokenizer.json")).unwrap();
    std::fs::write(local.join("tokenizer_config.json"), r#"{"eos_token": "<|endoftext|>"}"#).unwrap();
    let store = s3.store("", SECRET_KEY);
    store.put_file("web/part-0.jsonl", &local.join("web.jsonl")).unwrap();
    store.put_file("tokenizers/bpe/tokenizer.json", &local.join("tokenizer.json")).unwrap();
    store.put_file("tokenizers/bpe/tokenizer_config.json", &local.join("tokenizer_config.json")).unwrap();

    let on_disk = job::parse(&manifest(
        &s3,
        &format!("{{type: Text, text: {{path: {}, format: jsonl}}}}", local.join("web.jsonl").display()),
        &format!("    tokenizer: file\n    tokenizerFile: {{path: {}}}", local.join("tokenizer.json").display()),
        "",
    ))
    .unwrap();
    let remote_manifest = manifest(
        &s3,
        "{type: Text, text: {path: \"s3://corpora/web/part-0.jsonl\", format: jsonl}}",
        "    tokenizer: file\n    tokenizerFile: {path: \"s3://corpora/tokenizers/bpe/tokenizer.json\"}",
        "",
    );
    let mut in_bucket = job::parse(&remote_manifest).unwrap();
    let cache = dir.join("cache");
    let resolved = in_bucket.resolve_inputs(&inputs_of(&in_bucket, &cache, SECRET_KEY)).unwrap();
    let summary: Vec<(&str, usize, usize)> = resolved.iter().map(|r| (r.field.as_str(), r.objects, r.downloaded)).collect();
    assert_eq!(summary, [("spec.data.source.text.path", 1, 1), ("spec.data.tokenizerFile.path", 2, 2)], "the tokenizer's config comes with it");
    let corpus_copy = PathBuf::from(&in_bucket.spec.data.source.text.as_ref().unwrap().path);
    assert_eq!(corpus_copy, cache.join("s3/corpora/web/part-0.jsonl"));
    assert_eq!(std::fs::read(&corpus_copy).unwrap(), std::fs::read(local.join("web.jsonl")).unwrap());
    assert!(cache.join("s3/corpora/tokenizers/bpe/tokenizer_config.json").is_file());
    in_bucket.check_inputs().unwrap();

    let (a, b) = (first_loss(&on_disk, &dir.join("ckpt-a")), first_loss(&in_bucket, &dir.join("ckpt-b")));
    eprintln!("first loss: {a} from disk, {b} from the bucket");
    assert!(a.is_finite() && a > 1.0, "{a}");
    assert_eq!(a.to_bits(), b.to_bits(), "first loss: {a} from disk, {b} from the bucket");

    // A second resolve (another attempt in the same pod) reuses the copies: nothing comes down.
    let mut again = job::parse(&remote_manifest).unwrap();
    let resolved = again.resolve_inputs(&inputs_of(&again, &cache, SECRET_KEY)).unwrap();
    assert_eq!(resolved.iter().map(|r| (r.downloaded, r.downloaded_bytes)).collect::<Vec<_>>(), [(0, 0), (0, 0)]);
    assert_eq!(again.spec.data.source.text.as_ref().unwrap().path, corpus_copy.to_string_lossy());

    // The object changes in the bucket: it comes down again, and only it.
    write_jsonl(&local.join("web.jsonl"), &documents(310));
    store.put_file("web/part-0.jsonl", &local.join("web.jsonl")).unwrap();
    let mut changed = job::parse(&remote_manifest).unwrap();
    let resolved = changed.resolve_inputs(&inputs_of(&changed, &cache, SECRET_KEY)).unwrap();
    assert_eq!(resolved.iter().map(|r| r.downloaded).collect::<Vec<_>>(), [1, 0]);
    assert_eq!(std::fs::read(&corpus_copy).unwrap(), std::fs::read(local.join("web.jsonl")).unwrap());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn shards_are_read_in_ranges_a_model_directory_comes_down_whole_and_a_teachers_root_only_its_newest_step() {
    tch::set_num_threads(1);
    let Some(s3) = SeaweedFs::start("inputs-dirs", "datasets") else { return };
    let dir = temp_dir("s3-inputs-dirs");
    let store = s3.store("", SECRET_KEY);
    let cache = dir.join("cache");

    // Shards: several files and their metadata, beside a prefix that merely starts the same.
    let corpus = dir.join("corpus.jsonl");
    write_jsonl(&corpus, &documents(300));
    let shards = dir.join("shards");
    let prepared = frugal_trainer::data::prepare(
        &frugal_trainer::data::corpus::Corpus::jsonl(&corpus, "text"),
        &frugal_trainer::data::TokenizerSource::Bpe,
        300,
        0.1,
        &shards,
        1500,
    )
    .unwrap();
    assert!(prepared.files.len() >= 3, "{:?}", prepared.files);
    upload_dir(&store, &shards, "web/shards");
    store.put_bytes("web/shards-old/train_000000.bin", b"not a shard".to_vec()).unwrap();
    let source = |path: &str| format!("{{type: Shards, shards: {{path: \"{path}\"}}}}");
    let on_disk = job::parse(&manifest(&s3, &source(&shards.to_string_lossy()), "", "")).unwrap();
    let mut in_bucket = job::parse(&manifest(&s3, &source("s3://datasets/web/shards"), "", "")).unwrap();
    let resolved = in_bucket.resolve_inputs(&inputs_of(&in_bucket, &cache, SECRET_KEY)).unwrap();
    let copy = cache.join("s3/datasets/web/shards");
    assert_eq!(resolved[0].path, copy);
    // The shards stay in the bucket: the copy holds data.json, the tokenizer and the record.
    let all = files_under(&shards);
    let bins: Vec<&String> = all.keys().filter(|n| n.ends_with(".bin")).collect();
    let shard_bytes: u64 = bins.iter().map(|n| std::fs::metadata(&all[*n]).unwrap().len()).sum();
    assert_eq!((resolved[0].objects, resolved[0].downloaded, resolved[0].streamed), (all.len(), all.len() - bins.len(), bins.len()));
    let mut held: Vec<String> = files_under(&copy).into_keys().collect();
    held.sort();
    assert_eq!(held, ["data.json", "streamed.json", "tokenizer.json"]);
    // The pod's keys are its environment's (the operator sets them from credentialsSecret); the
    // blocks are small and the cache holds four, far less than the shards.
    // SAFETY: no other test of this binary reads these variables, nor streams shards.
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", ACCESS_KEY);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
        std::env::set_var("FRUGAL_STREAM_BLOCK_BYTES", "1024");
        std::env::set_var("FRUGAL_STREAM_CACHE_BYTES", "4096");
    }
    let fetched = frugal_trainer::data::streamed::fetched_bytes();
    let (a, b) = (first_loss(&on_disk, &dir.join("ckpt-a")), first_loss(&in_bucket, &dir.join("ckpt-b")));
    let fetched = frugal_trainer::data::streamed::fetched_bytes() - fetched;
    eprintln!("shards' first loss: {a} from disk, {b} from the bucket ({fetched} of the shards' {shard_bytes} bytes fetched)");
    assert_eq!(a.to_bits(), b.to_bits());
    assert!(fetched > 0 && fetched < shard_bytes, "{fetched} bytes fetched of {shard_bytes}");

    // A shard the bucket no longer holds leaves the record, and a stray file in the copy goes.
    let gone = bins.iter().find(|n| n.starts_with("train_")).unwrap().to_string();
    store.delete(&[format!("web/shards/{gone}")]).unwrap();
    std::fs::write(copy.join("stray.bin"), b"x").unwrap();
    let mut again = job::parse(&manifest(&s3, &source("s3://datasets/web/shards/"), "", "")).unwrap();
    let resolved = again.resolve_inputs(&inputs_of(&again, &cache, SECRET_KEY)).unwrap();
    assert_eq!((resolved[0].downloaded, resolved[0].streamed), (0, bins.len() - 1));
    assert!(!copy.join("stray.bin").exists());
    let record = frugal_trainer::data::streamed::Streamed::in_dir(&copy).unwrap().unwrap();
    assert!(record.shards.len() == bins.len() - 1 && !record.shards.iter().any(|s| s.name == gone), "{record:?}");
    // A shard replaced in the bucket after the listing is refused, not read half old.
    let kept = record.shards.iter().find(|s| s.name.starts_with("train_")).unwrap().name.clone();
    store.put_bytes(&format!("web/shards/{kept}"), std::fs::read(&all[&kept]).unwrap().into_iter().rev().collect()).unwrap();
    let cfg = again.run_config(Some(dir.join("ckpt-c"))).unwrap();
    let e = Worker::single(cfg, Device::Cpu).map(drop).unwrap_err();
    assert!(format!("{e:#}").contains("Precondition") || format!("{e:#}").contains("412"), "{e:#}");

    // A Hugging Face model directory, its weights in several shards: spec.model.init.
    let plain = job::parse(&manifest(&s3, "{type: Synthetic, synthetic: {branching: 4, tokens: 20000}}", "", "")).unwrap();
    let root = dir.join("teacher");
    let mut w = Worker::single(plain.run_config(Some(root.clone())).unwrap(), Device::Cpu).unwrap();
    w.train_step().unwrap();
    w.save_checkpoint_in(&root, 3).unwrap();
    let hf = dir.join("hf");
    frugal_trainer::hf::export_checkpoint(&plain.run_config(None).unwrap(), &root, Some(&hf), 40_000).unwrap();
    assert!(hf.join("model.safetensors.index.json").exists(), "sharded");
    upload_dir(&store, &hf, "models/tiny");
    let init = manifest(&s3, "{type: Synthetic, synthetic: {branching: 4, tokens: 20000}}", "", "")
        .replace("seqLen: 16, vocabSize: 300}", "seqLen: 16, vocabSize: 300}, init: \"s3://datasets/models/tiny\"");
    let mut from_init = job::parse(&init).unwrap();
    let resolved = from_init.resolve_inputs(&inputs_of(&from_init, &cache, SECRET_KEY)).unwrap();
    assert_eq!((resolved[0].field.as_str(), resolved[0].objects), ("spec.model.init", files_under(&hf).len()));
    assert_same_files(&hf, &cache.join("s3/datasets/models/tiny"));
    from_init.check_inputs().unwrap();

    // A teacher's checkpoint root in the bucket (two steps): only the newest comes down,
    // verified, and the teacher's check finds it.
    w.train_step().unwrap();
    w.save_checkpoint_in(&root, 3).unwrap();
    let teacher = s3.store("teachers/tiny", SECRET_KEY);
    for (_, step) in frugal_trainer::checkpoint::list(&root).unwrap() {
        frugal_trainer::checkpoint::remote::upload(&teacher, &step, 0).unwrap();
    }
    let inputs = inputs_of(&plain, &cache, SECRET_KEY);
    let got: Resolved = inputs.resolve("spec.distill.teacher.checkpoint", "s3://datasets/teachers/tiny", Shape::Checkpoint).unwrap().unwrap();
    let steps: Vec<i64> = frugal_trainer::checkpoint::list(&got.path).unwrap().into_iter().map(|(s, _)| s).collect();
    assert_eq!(steps, [2], "only the newest step comes down");
    assert!(got.downloaded > 0 && got.downloaded_bytes > 0, "{got:?}");
    assert_eq!(job::teacher_step(&got.path).unwrap(), got.path.join("step-000000002"));
    let again = inputs.resolve("spec.distill.teacher.checkpoint", "s3://datasets/teachers/tiny", Shape::Checkpoint).unwrap().unwrap();
    assert_eq!((again.downloaded, again.downloaded_bytes), (0, 0), "the cached step is reused");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_missing_key_a_missing_bucket_or_a_wrong_secret_is_refused_naming_the_field_in_the_stores_words() {
    let Some(s3) = SeaweedFs::start("inputs-refused", "inputs") else { return };
    let dir = temp_dir("s3-inputs-refused");
    let cache = dir.join("cache");
    s3.store("", SECRET_KEY).put_bytes("eval/lambada.jsonl", b"{\"text\": \"the cat sat\"}\n".to_vec()).unwrap();
    let job = job::parse(&manifest(&s3, "{type: Synthetic}", "", "")).unwrap();
    let inputs = inputs_of(&job, &cache, SECRET_KEY);
    let refused = |inputs: &Inputs, field: &str, uri: &str, shape: Shape| configuration_error(inputs.resolve(field, uri, shape).unwrap_err());

    let e = refused(&inputs, "spec.data.evalSets[0].path", "s3://inputs/eval/lambda.jsonl", Shape::File);
    eprintln!("a missing key: {e}");
    assert!(e.starts_with("spec.data.evalSets[0].path (s3://inputs/eval/lambda.jsonl): "), "{e}");
    assert!(e.contains("not found") || e.contains("NotFound") || e.contains("NoSuchKey"), "{e}");

    let e = refused(&inputs, "spec.data.source.text.path", "s3://no-such-bucket/web.jsonl", Shape::FileOrDirectory);
    eprintln!("a missing bucket: {e}");
    assert!(e.starts_with("spec.data.source.text.path (s3://no-such-bucket/web.jsonl): ") && e.contains("NoSuchBucket"), "{e}");

    let wrong = inputs_of(&job, &cache, "not-the-secret");
    let e = refused(&wrong, "spec.model.init", "s3://inputs/eval", Shape::Directory);
    eprintln!("a wrong secret: {e}");
    assert!(e.starts_with("spec.model.init (s3://inputs/eval): "), "{e}");
    assert!(e.contains("SignatureDoesNotMatch") || e.contains("InvalidAccessKeyId") || e.contains("AccessDenied"), "{e}");
    assert!(!e.contains("not-the-secret") && !e.contains(SECRET_KEY), "a secret in an error: {e}");

    // A field that takes one file, given a prefix; a prefix with nothing under it.
    let e = refused(&inputs, "spec.data.tokenizerFile.path", "s3://inputs/eval", Shape::Tokenizer);
    assert!(
        e.starts_with("spec.data.tokenizerFile.path (s3://inputs/eval): ") && e.contains("a prefix of 1 objects") && e.contains("names one file"),
        "{e}"
    );
    let e = refused(&inputs, "spec.data.source.shards.path", "s3://inputs/shards/", Shape::Directory);
    assert!(e.starts_with("spec.data.source.shards.path (s3://inputs/shards): ") && e.contains("no object under this prefix"), "{e}");
    assert!(!cache.join("s3/inputs/eval/lambda.jsonl").exists());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_trainer_reads_its_corpus_from_the_bucket_and_stops_with_exit_78_on_a_missing_one() {
    let Some(s3) = SeaweedFs::start("inputs-cli", "cli-inputs") else { return };
    let dir = temp_dir("s3-inputs-cli");
    let docs = documents(200);
    write_jsonl(&dir.join("web.jsonl"), &docs);
    s3.store("", SECRET_KEY).put_file("web.jsonl", &dir.join("web.jsonl")).unwrap();
    let run = |path: &str, name: &str| {
        let job = dir.join(format!("{name}.yaml"));
        let source = format!("{{type: Text, text: {{path: \"{path}\", format: jsonl}}}}");
        // each run its own checkpoint prefix: a run would resume from another's steps
        let text = manifest(&s3, &source, "    tokenizer: byte", "").replace("s3://cli-inputs/ckpt", &format!("s3://cli-inputs/ckpt-{name}"));
        std::fs::write(&job, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_frugal-trainer"))
            .args(["train", job.to_str().unwrap(), "--threads", "1", "--json", "--max-steps", "1"])
            .args(["--checkpoint-dir", dir.join(format!("ckpt-{name}")).to_str().unwrap()])
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("FRUGAL_CACHE_DIR", dir.join("cache"))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let loss = stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|e| e["event"] == "step")
            .and_then(|e| e["loss"].as_f64());
        (out.status.code().unwrap_or(-1), loss, format!("{}\n{stdout}", String::from_utf8_lossy(&out.stderr)))
    };
    let (code, local, stderr) = run(&dir.join("web.jsonl").to_string_lossy(), "local");
    assert_eq!(code, 0, "{stderr}");
    let (code, remote, stderr) = run("s3://cli-inputs/web.jsonl", "remote");
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("spec.data.source.text.path: s3://cli-inputs/web.jsonl is "), "{stderr}");
    eprintln!("the trainer's first loss: {local:?} from disk, {remote:?} from the bucket");
    assert!(local.is_some() && local == remote, "{local:?} {remote:?}: {stderr}");

    let (code, loss, stderr) = run("s3://cli-inputs/missing.jsonl", "missing");
    assert_eq!(code, 78, "{stderr}");
    assert!(stderr.contains("spec.data.source.text.path (s3://cli-inputs/missing.jsonl)"), "{stderr}");
    assert_eq!(loss, None, "no step before the refusal");
    let _ = std::fs::remove_dir_all(dir);
}
