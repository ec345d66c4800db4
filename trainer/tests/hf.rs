//! Hugging Face interop, proved with `transformers` itself (the project venv's python, offline):
//! frugal's exports load in `transformers` and compute the same logits, and models `transformers`
//! builds and saves load in frugal and compute the same logits and loss.

mod common;
#[path = "support/seaweedfs.rs"]
mod seaweedfs;

use std::path::{Path, PathBuf};
use std::process::Command;

use frugal_trainer::config::{FeedForward, ModelConfig, MoeConfig, Norm, Positions, nano_model};
use frugal_trainer::data::tokenizer::TextTokenizer;
use frugal_trainer::hf;
use frugal_trainer::model::gpt::Gpt;
use frugal_trainer::params::ParamStore;
use frugal_trainer::quantize::whole_model;
use tch::{Device, Kind, Tensor};

/// The largest difference of logits allowed between frugal and `transformers` in fp32.
const LOGITS_TOLERANCE: f64 = 1e-4;

fn python() -> PathBuf {
    let venv = std::env::var_os("FRUGAL_VENV").map(PathBuf::from).unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv"));
    venv.join("bin/python")
}

/// Runs the Hugging Face side and returns what it printed.
fn hf_side(args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/hf_check.py");
    let out = Command::new(python()).arg(script).args(args).output().expect("the venv's python runs (make test installs transformers)");
    assert!(out.status.success(), "hf_check.py {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s.lines().last().unwrap_or_default()).unwrap_or_else(|e| panic!("{e}: {s}"))
}

fn random(m: &ModelConfig, seed: i64) -> (Gpt, ParamStore) {
    let (gpt, mut store) = whole_model(m, Device::Cpu);
    tch::manual_seed(seed);
    tch::no_grad(|| {
        for i in 0..store.specs.len() {
            let mut view = store.master_view(i);
            view.copy_(&(Tensor::randn(view.size(), (Kind::Float, Device::Cpu)) * 0.2));
        }
    });
    store.sync_compute();
    (gpt, store)
}

fn logits(gpt: &Gpt, store: &ParamStore, tokens: &Tensor) -> Tensor {
    gpt.eval_slice(store, tokens)
}

fn next_token_loss(logits: &Tensor, tokens: &Tensor) -> f64 {
    let (b, t, v) = logits.size3().unwrap();
    logits.narrow(1, 0, t - 1).reshape([b * (t - 1), v]).cross_entropy_for_logits(&tokens.narrow(1, 1, t - 1).reshape([-1])).double_value(&[])
}

/// The models of every family: (model, its architecture).
fn every_family() -> Vec<(ModelConfig, &'static str)> {
    let mut out = vec![];
    for (positions, architecture) in [(Positions::Learned, "GPT2LMHeadModel"), (Positions::Rotary, "GPTNeoXForCausalLM")] {
        for (bias, tied) in [(true, true), (false, false)] {
            let mut m = nano_model(300);
            (m.layers, m.d_model, m.heads, m.seq_len, m.ffn_hidden) = (2, 32, 4, 32, 48);
            (m.positions, m.bias, m.tied_embeddings) = (positions, bias, tied);
            out.push((m, architecture));
        }
    }
    for (bias, tied, moe) in [(false, true, None), (true, false, None), (false, true, Some((1, 1))), (false, false, Some((2, 2)))] {
        let mut m = nano_model(300);
        (m.layers, m.d_model, m.heads, m.seq_len, m.ffn_hidden) = (2, 32, 4, 32, 48);
        (m.positions, m.bias, m.tied_embeddings) = (Positions::Rotary, bias, tied);
        (m.norm, m.feed_forward) = (Norm::RmsNorm, FeedForward::Swiglu);
        m.moe = moe.map(|(shared, every)| MoeConfig {
            experts: 4,
            top_k: 2,
            shared_experts: shared,
            expert_hidden: 16,
            every_n_layers: every,
            capacity_factor: 1.0,
            load_balance_weight: 0.01,
            normalize_top_k: true,
        });
        out.push((m, if moe.is_some() { "Ernie4_5_MoeForCausalLM" } else { "LlamaForCausalLM" }));
    }
    out
}

#[test]
fn frugal_exports_load_in_transformers_with_the_same_logits() {
    {
        for (m, architecture) in every_family() {
            let (positions, bias, tied) = (m.positions, m.bias, m.tied_embeddings);
            let (gpt, store) = random(&m, 11);
            let root = common::temp_dir(&format!("hf-export-{architecture}-{bias}"));
            let tokens = Tensor::randint(300, [2, 32], (Kind::Int64, Device::Cpu));
            let ours = logits(&gpt, &store, &tokens);
            Tensor::write_safetensors(&[("tokens", &tokens), ("logits", &ours)], root.join("frugal.safetensors")).unwrap();
            // sharded, to load the index too
            hf::export(&root.join("model"), &m, &store, Some(&TextTokenizer::Byte), 30_000).unwrap();
            let r = json(&hf_side(&["load", root.join("model").to_str().unwrap()]));
            eprintln!("{architecture} {positions:?} bias {bias} tied {tied} MoE {}: {r}", m.moe.is_some());
            assert_eq!(r["architecture"], architecture);
            let diff = r["max_abs_diff"].as_f64().unwrap();
            assert!(diff <= LOGITS_TOLERANCE, "{architecture}: logits differ by {diff}");
            let (loss, frugal_loss) = (r["loss"].as_f64().unwrap(), next_token_loss(&ours, &tokens));
            assert!((loss - frugal_loss).abs() <= LOGITS_TOLERANCE, "loss {loss} in transformers, {frugal_loss} in frugal");
            std::fs::remove_dir_all(&root).unwrap();
        }
    }
}

#[test]
fn models_transformers_saves_load_in_frugal_with_the_same_logits_and_loss() {
    for family in ["gpt2", "gpt_neox", "llama", "ernie4_5_moe"] {
        let root = common::temp_dir(&format!("hf-import-{family}"));
        let dir = root.join("model");
        hf_side(&["build", family, dir.to_str().unwrap()]);
        let reference: std::collections::HashMap<String, Tensor> =
            Tensor::read_safetensors(root.join("reference.safetensors")).unwrap().into_iter().collect();
        let imported = hf::import(&dir, None).unwrap();
        assert_eq!(imported.family.model_type(), family);
        let (gpt, mut store) = whole_model(&imported.model, Device::Cpu);
        imported.load_into(&mut store).unwrap();
        let tokens = &reference["tokens"];
        let ours = logits(&gpt, &store, tokens);
        let diff = (&ours - &reference["logits"]).abs().max().double_value(&[]);
        let (loss, theirs) = (next_token_loss(&ours, tokens), reference["loss"].double_value(&[0]));
        eprintln!("{family}: logits differ by {diff:.2e}; step-0 loss {loss:.6} in frugal, {theirs:.6} in transformers");
        assert!(diff <= LOGITS_TOLERANCE, "{family}: logits differ by {diff}");
        assert!((loss - theirs).abs() <= LOGITS_TOLERANCE, "{family}: loss {loss} against {theirs}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}

#[test]
fn the_exported_tokenizer_gives_frugals_ids_in_transformers() {
    let text = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer";
    let docs: Vec<&str> = std::iter::repeat_n(text, 20).collect();
    for tokenizer in [TextTokenizer::Byte, TextTokenizer::train_bpe(docs.iter().copied(), 300).unwrap()] {
        let mut m = nano_model(tokenizer.vocab_size());
        (m.layers, m.d_model, m.heads, m.seq_len, m.ffn_hidden) = (1, 16, 2, 16, 32);
        let (_, store) = random(&m, 5);
        let root = common::temp_dir("hf-tokenizer");
        hf::export(&root.join("model"), &m, &store, Some(&tokenizer), hf::DEFAULT_MAX_SHARD_BYTES).unwrap();
        let r = json(&hf_side(&["tokenize", root.join("model").to_str().unwrap(), text]));
        let ids: Vec<i64> = r["ids"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
        let ours: Vec<i64> = tokenizer.encode(text.as_bytes()).unwrap().into_iter().map(i64::from).collect();
        assert_eq!(ids, ours, "{r}");
        assert_eq!(r["eos"].as_i64(), Some(256));
        std::fs::remove_dir_all(&root).unwrap();
    }
}

/// A CPU job on the first 60,000 characters of tinyshakespeare (BPE of 300), a two-stage
/// pipeline trained in one process; `extra` goes under spec.
fn text_job(root: &Path, name: &str, steps: i64, extra: &str) -> PathBuf {
    let corpus = root.join("corpus.txt");
    if !corpus.exists() {
        let text: String = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/tinyshakespeare.txt"))
            .unwrap()
            .chars()
            .take(60_000)
            .collect();
        std::fs::write(&corpus, text).unwrap();
    }
    let manifest = root.join(format!("{name}.yaml"));
    std::fs::write(
        &manifest,
        format!(
            r#"
apiVersion: frugal.dev/v1alpha1
kind: TrainingJob
metadata: {{name: {name}}}
spec:
  model:
    type: Custom
    custom: {{layers: 2, dModel: 32, heads: 2, seqLen: 32, vocabSize: 300}}
  data:
    source: {{type: Text, text: {{path: {}}}}}
    tokenizer: bpe
  training:
    duration: {{type: Steps, steps: {steps}}}
    batchSize: 8
    precision: fp32
  resources: {{device: CPU}}
  parallelism: {{pipelineStages: 2, microBatches: 2}}
{extra}"#,
            corpus.display()
        ),
    )
    .unwrap();
    manifest
}

/// Trains `manifest` into `root/<dir>` and returns its JSON log.
fn train(manifest: &Path, ckpt: &Path) -> String {
    let args = ["train", manifest.to_str().unwrap(), "--checkpoint-dir", ckpt.to_str().unwrap(), "--json", "--threads", "2"];
    let out = Command::new(env!("CARGO_BIN_EXE_frugal-trainer")).args(args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The losses of a JSON log's step events, in order.
fn step_losses(log: &str) -> Vec<f64> {
    log.lines()
        .filter(|l| l.contains(r#""event":"step""#))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64().unwrap())
        .collect()
}

/// `train` with spec.export.huggingFace writes the final checkpoint of a two-stage pipeline
/// (trained in one process) as `hf/` in its step directory and reports it in the log and the
/// run report; transformers loads it with the logits of frugal's own checkpoint; `export` writes
/// the same from the command line.
#[test]
fn training_with_spec_export_hugging_face_writes_and_reports_the_export() {
    let root = common::temp_dir("hf-train");
    let manifest = text_job(&root, "exported", 12, "  export: {huggingFace: true}\n");
    let ckpt = root.join("ckpt");
    let bin = env!("CARGO_BIN_EXE_frugal-trainer");
    let log = train(&manifest, &ckpt);
    let event = log.lines().find(|l| l.contains(r#""event":"hugging_face""#)).unwrap_or_else(|| panic!("no hugging_face event:\n{log}"));
    let event: serde_json::Value = serde_json::from_str(event).unwrap();
    let export = ckpt.join("step-000000012/hf");
    assert_eq!(event["path"].as_str(), Some(export.to_str().unwrap()), "{event}");
    assert_eq!((event["step"].as_i64(), event["architecture"].as_str()), (Some(12), Some("GPTNeoXForCausalLM")), "{event}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(ckpt.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["quality"]["huggingFace"]["path"], event["path"], "{report}");

    // frugal's own checkpoint, read as frugal reads it, against transformers on the export
    same_logits_in_transformers(&manifest, &ckpt.join("step-000000012"), &export);

    let cli = root.join("cli");
    let out = Command::new(bin)
        .args(["export", manifest.to_str().unwrap(), "--checkpoint", ckpt.to_str().unwrap(), "--out", cli.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((printed["step"].as_i64(), printed["weightBytes"].as_i64()), (Some(12), event["weightBytes"].as_i64()));
    for file in ["config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json"] {
        assert_eq!(std::fs::read(cli.join(file)).unwrap(), std::fs::read(export.join(file)).unwrap(), "{file}");
    }
    std::fs::remove_dir_all(&root).unwrap();
}

/// spec.export.store: the Hugging Face export goes into the bucket (SeaweedFS, a real S3 server)
/// under `<prefix>/step-<n>/hf/`, the event and the report name it by its `s3://` URI, and what
/// comes down from the bucket is the export byte for byte, which `transformers` loads (the
/// tokenizer and the model, with frugal's logits).
#[test]
fn an_export_into_a_bucket_comes_down_whole_and_loads_in_transformers() {
    use seaweedfs::{ACCESS_KEY, SECRET_KEY, SeaweedFs};
    let Some(s3) = SeaweedFs::start("hf-export", "models") else { return };
    let root = common::temp_dir("hf-bucket");
    let extra =
        format!("  export: {{huggingFace: true, store: {{uri: 's3://models/team/run-1', endpoint: '{}', region: us-east-1}}}}\n", s3.endpoint);
    let manifest = text_job(&root, "bucketed", 12, &extra);
    let ckpt = root.join("ckpt");
    let out = Command::new(env!("CARGO_BIN_EXE_frugal-trainer"))
        .args(["train", manifest.to_str().unwrap(), "--checkpoint-dir", ckpt.to_str().unwrap(), "--json", "--threads", "2"])
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .output()
        .unwrap();
    let (log, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    let event = log.lines().find(|l| l.contains(r#""event":"hugging_face""#)).unwrap_or_else(|| panic!("no hugging_face event:\n{log}"));
    let event: serde_json::Value = serde_json::from_str(event).unwrap();
    assert_eq!(event["path"], "s3://models/team/run-1/step-000000012/hf", "{event}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(ckpt.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["quality"]["huggingFace"]["path"], event["path"], "{report}");

    // down from the bucket into an empty directory: the same files, byte for byte
    let store = s3.store("team/run-1", SECRET_KEY);
    let down = root.join("down/hf");
    std::fs::create_dir_all(&down).unwrap();
    let names = store.list("step-000000012/hf").unwrap();
    let local = ckpt.join("step-000000012/hf");
    let mut files: Vec<String> = std::fs::read_dir(&local).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    files.sort();
    let mut listed: Vec<String> = names.iter().map(|n| n.trim_start_matches("step-000000012/hf/").to_string()).collect();
    listed.sort();
    assert_eq!(listed, files, "the bucket holds the export's files");
    for name in &listed {
        store.get_file(&format!("step-000000012/hf/{name}"), &down.join(name)).unwrap();
        assert!(std::fs::read(down.join(name)).unwrap() == std::fs::read(local.join(name)).unwrap(), "{name} came down different");
    }
    // transformers on what came down: the tokenizer, and the model with frugal's logits
    let tokenized = json(&hf_side(&["tokenize", down.to_str().unwrap(), "To be, or not to be"]));
    assert!(tokenized["ids"].as_array().is_some_and(|ids| !ids.is_empty()), "{tokenized}");
    same_logits_in_transformers(&manifest, &ckpt.join("step-000000012"), &down);
    std::fs::remove_dir_all(&root).unwrap();
}

/// The logits of the checkpoint `step` of the job `manifest`, as frugal computes them, against
/// `transformers` on the export in `export` (frugal's are written beside it, as hf_check.py's
/// `load` reads them).
fn same_logits_in_transformers(manifest: &Path, step: &Path, export: &Path) {
    let job = frugal_trainer::job::load(manifest).unwrap();
    let (gpt, mut store) = whole_model(&job.plan.model, Device::Cpu);
    frugal_trainer::checkpoint::load_weights(step, &mut store).unwrap();
    let tokens = Tensor::randint(300, [2, 32], (Kind::Int64, Device::Cpu));
    let ours = logits(&gpt, &store, &tokens);
    let beside = export.parent().unwrap().join("frugal.safetensors");
    Tensor::write_safetensors(&[("tokens", &tokens), ("logits", &ours)], beside).unwrap();
    let r = json(&hf_side(&["load", export.to_str().unwrap()]));
    assert!(r["max_abs_diff"].as_f64().unwrap() <= LOGITS_TOLERANCE, "{r}");
}

/// Continued pretraining: a job whose spec.model.init is a Hugging Face export of a trained
/// model starts at that model's loss, not at a fresh model's, in every stage of its pipeline; a
/// spec whose shape differs from the model's is refused before training, naming both values.
#[test]
fn a_job_started_from_a_hugging_face_model_starts_at_its_loss() {
    let root = common::temp_dir("hf-init");
    let trained = text_job(&root, "trained", 80, "  export: {huggingFace: true}\n");
    let first = step_losses(&train(&trained, &root.join("trained")));
    let export = root.join("trained/step-000000080/hf");
    assert!(export.join("config.json").exists());

    let fresh = step_losses(&train(&text_job(&root, "fresh", 3, ""), &root.join("fresh")));
    let init = format!(
        "  model:\n    type: Custom\n    custom: {{layers: 2, dModel: 32, heads: 2, seqLen: 32, vocabSize: 300}}\n    init: {}\n",
        export.display()
    );
    let manifest = text_job(&root, "continued", 3, "");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let model_block = "  model:\n    type: Custom\n    custom: {layers: 2, dModel: 32, heads: 2, seqLen: 32, vocabSize: 300}\n";
    std::fs::write(&manifest, text.replace(model_block, &init)).unwrap();
    let continued = step_losses(&train(&manifest, &root.join("continued")));
    let (trained_last, fresh_first, continued_first) = (first[first.len() - 1], fresh[0], continued[0]);
    eprintln!("trained model's last loss {trained_last:.3}; a fresh model's first {fresh_first:.3}; the continued job's first {continued_first:.3}");
    assert!(fresh_first - trained_last > 0.6, "80 steps did not train: {first:?}");
    assert!(
        (continued_first - trained_last).abs() < 0.3 * (fresh_first - trained_last),
        "the continued job started at {continued_first}, the model it started from ended at {trained_last}, a fresh one starts at {fresh_first}"
    );

    // a shape that is not the model's: refused before training, naming the field and both values
    std::fs::write(&manifest, text.replace(model_block, &init.replace("dModel: 32", "dModel: 64"))).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_frugal-trainer"))
        .args(["train", manifest.to_str().unwrap(), "--checkpoint-dir", root.join("refused").to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(err.contains("spec.model.custom.dModel is 64") && err.contains("has 32"), "{err}");
    std::fs::remove_dir_all(&root).unwrap();
}

/// The figures frugal puts in a job's status, computed again by an evaluation written in Python
/// against the Hugging Face export with `transformers` and `AutoTokenizer` (tests/interop): the
/// validation loss within 1e-4 nats on the same held-out windows, and the LastWord and
/// MultipleChoice accuracies exactly, on sets cut from the corpus.
#[test]
fn an_independent_evaluation_in_transformers_matches_the_status() {
    let root = common::temp_dir("hf-eval");
    let corpus: String = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/tinyshakespeare.txt")).unwrap();
    let lines: Vec<&str> = corpus.lines().filter(|l| l.split(' ').count() >= 4).take(200).collect();
    let last_word: String = lines.iter().take(40).map(|l| serde_json::json!({"text": l}).to_string() + "\n").collect();
    let choices: String = (0..30)
        .map(|i| {
            let label = i % 4;
            let mut options: Vec<&str> = (1..4).map(|j| lines[100 + (i * 7 + j * 13) % 100]).collect();
            options.insert(label, lines[2 * i + 1]);
            serde_json::json!({"context": lines[2 * i], "choices": options, "label": label}).to_string() + "\n"
        })
        .collect();
    std::fs::write(root.join("last_word.jsonl"), last_word).unwrap();
    std::fs::write(root.join("choices.jsonl"), choices).unwrap();
    let sets = format!(
        "    evalSets:\n    - {{name: words, type: LastWord, path: {}}}\n    - {{name: choices, type: MultipleChoice, path: {}}}\n",
        root.join("last_word.jsonl").display(),
        root.join("choices.jsonl").display()
    );
    let manifest = text_job(&root, "evaluated", 60, "  export: {huggingFace: true}\n");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text.replace("    tokenizer: bpe\n", &format!("    tokenizer: bpe\n{sets}"))).unwrap();
    let ckpt = root.join("ckpt");
    train(&manifest, &ckpt);
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(ckpt.join("report.json")).unwrap()).unwrap();
    let quality = &report["quality"];

    // the held-out windows frugal scores, written for the other side
    let job = frugal_trainer::job::load(&manifest).unwrap();
    let cfg = job.run_config(None).unwrap();
    let data = frugal_trainer::data::Data::new(&cfg.data, cfg.model.vocab_size, cfg.model.seq_len, cfg.train.seed).unwrap();
    let batches = data.validation(8);
    let named: Vec<(String, Tensor)> = batches
        .iter()
        .enumerate()
        .flat_map(|(i, b)| [(format!("inputs_{i}"), b.inputs.shallow_clone()), (format!("targets_{i}"), b.targets.shallow_clone())])
        .collect();
    Tensor::write_safetensors(&named, root.join("validation.safetensors")).unwrap();
    let export = quality["huggingFace"]["path"].as_str().unwrap().to_string();
    let files: Vec<String> =
        ["validation.safetensors", "last_word.jsonl", "choices.jsonl"].iter().map(|f| root.join(f).display().to_string()).collect();
    let r = json(&hf_side(&["evaluate", export.as_str(), &files[0], &files[1], &files[2]]));
    let zero_shot = |name: &str| quality["zeroShot"].as_array().unwrap().iter().find(|z| z["name"] == name).unwrap().clone();
    let (words, choices) = (zero_shot("words"), zero_shot("choices"));
    eprintln!("frugal's status: validation loss {}, words {}, choices {}", quality["validationLoss"], words, choices);
    eprintln!("transformers:    {r}");
    let (ours, theirs) = (quality["validationLoss"].as_f64().unwrap(), r["validation_loss"].as_f64().unwrap());
    assert!((ours - theirs).abs() <= 1e-4, "validation loss {ours} in the status, {theirs} in transformers");
    assert_eq!((words["accuracy"].as_f64(), words["examples"].as_i64()), (r["last_word"].as_f64(), r["last_word_examples"].as_i64()));
    assert_eq!((choices["accuracy"].as_f64(), choices["examples"].as_i64()), (r["multiple_choice"].as_f64(), r["multiple_choice_examples"].as_i64()));
    assert!(choices["accuracy"].as_f64().unwrap() > 0.0, "no choice right: the comparison shows nothing");
    std::fs::remove_dir_all(&root).unwrap();
}

/// A mixture-of-experts model of Llama's block trained as a two-stage pipeline exports as
/// ERNIE 4.5 MoE, and transformers computes the logits of frugal's own checkpoint from it.
#[test]
fn a_pipelined_moe_job_exports_as_ernie_moe() {
    let root = common::temp_dir("hf-train-moe");
    let manifest = text_job(&root, "moe", 8, "  export: {huggingFace: true}\n");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let moe = "    custom: {layers: 2, dModel: 32, heads: 2, seqLen: 32, vocabSize: 300, norm: rmsNorm, feedForward: swiglu}\n    sparsity: {moe: {experts: 4, topK: 2, sharedExperts: 1, expertHidden: 16, normalizeTopK: true}}\n";
    std::fs::write(&manifest, text.replace("    custom: {layers: 2, dModel: 32, heads: 2, seqLen: 32, vocabSize: 300}\n", moe)).unwrap();
    let ckpt = root.join("ckpt");
    let log = train(&manifest, &ckpt);
    let event = log.lines().find(|l| l.contains(r#""event":"hugging_face""#)).unwrap_or_else(|| panic!("no hugging_face event:\n{log}"));
    let event: serde_json::Value = serde_json::from_str(event).unwrap();
    assert_eq!(event["architecture"].as_str(), Some("Ernie4_5_MoeForCausalLM"), "{event}");
    let job = frugal_trainer::job::load(&manifest).unwrap();
    let (gpt, mut store) = whole_model(&job.plan.model, Device::Cpu);
    frugal_trainer::checkpoint::load_weights(&ckpt.join("step-000000008"), &mut store).unwrap();
    let tokens = Tensor::randint(300, [2, 32], (Kind::Int64, Device::Cpu));
    let ours = logits(&gpt, &store, &tokens);
    Tensor::write_safetensors(&[("tokens", &tokens), ("logits", &ours)], ckpt.join("step-000000008/frugal.safetensors")).unwrap();
    let r = json(&hf_side(&["load", event["path"].as_str().unwrap()]));
    eprintln!("{r}");
    assert!(r["max_abs_diff"].as_f64().unwrap() <= LOGITS_TOLERANCE, "{r}");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(Path::new(event["path"].as_str().unwrap()).join("config.json")).unwrap()).unwrap();
    eprintln!("config.json of the MoE export:\n{}", serde_json::to_string_pretty(&config).unwrap());
    std::fs::remove_dir_all(&root).unwrap();
}
