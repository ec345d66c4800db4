//! The Hugging Face export and import of a GPT-2-124M-shaped model (12 layers of 768, 12 heads,
//! context 1,024, vocabulary 50,257, learned positions, biases, tied embeddings): seconds and
//! peak resident memory of each, beside the bytes of its fp32 weights and the time of one
//! training step of the same model on this machine (one sequence of 1,024 tokens, forward and
//! backward and the optimizer, fp32).
//!
//! `cargo bench -p frugal-trainer --bench hf_export` (FRUGAL_THREADS sets libtorch's threads,
//! default 2). Peaks are the process's VmHWM, reset before each phase (`/proc/self/clear_refs`),
//! so each phase's peak counts what was resident when it began (the model) and what it added.

use std::time::Instant;

use frugal_trainer::config::{Positions, nano_model, synthetic_run};
use frugal_trainer::data::tokenizer::TextTokenizer;
use frugal_trainer::hf;
use frugal_trainer::parallel::worker::Worker;
use frugal_trainer::quantize::whole_model;
use tch::Device;

fn status_kib(field: &str) -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Resets VmHWM to the current resident set.
fn reset_peak() {
    std::fs::write("/proc/self/clear_refs", "5").expect("resetting VmHWM (Linux)");
}

fn mib(kib: i64) -> f64 {
    kib as f64 / 1024.0
}

/// A phase's seconds and its peak resident memory (VmHWM since [`reset_peak`]) against what the
/// process held before it (`before` KiB) and the weights (`weight_kib`).
fn print_phase(phase: &str, seconds: f64, before: i64, weight_kib: i64) {
    let peak = status_kib("VmHWM:");
    println!(
        "{phase:<16} {seconds:.2} s; peak {:.0} MiB resident, {:.0} MiB over the {:.0} MiB held before it ({:.2}× the weights in all, +{:.2}×)",
        mib(peak),
        mib(peak - before),
        mib(before),
        peak as f64 / weight_kib as f64,
        (peak - before) as f64 / weight_kib as f64
    );
}

fn main() {
    let threads = std::env::var("FRUGAL_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
    tch::set_num_threads(threads);
    let mut m = nano_model(50_257);
    (m.layers, m.d_model, m.heads, m.seq_len, m.ffn_hidden) = (12, 768, 12, 1024, 3072);
    (m.positions, m.bias, m.tied_embeddings) = (Positions::Learned, true, true);
    let dir = std::env::temp_dir().join(format!("frugal-bench-hf-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);

    let (_, store) = whole_model(&m, Device::Cpu);
    let weight_kib = store.numel * 4 / 1024;
    println!("model            GPT-2-124M shape, {} parameters, {:.0} MiB of fp32 weights; {threads} threads", store.numel, mib(weight_kib));

    let before = status_kib("VmRSS:");
    reset_peak();
    let t = Instant::now();
    let e = hf::export(&dir, &m, &store, Some(&TextTokenizer::Byte), hf::DEFAULT_MAX_SHARD_BYTES).unwrap();
    let export_s = t.elapsed().as_secs_f64();
    print_phase("export", export_s, before, weight_kib);
    assert_eq!(e.weight_files.len(), 1);
    drop(store);

    // the destination a job loads into is its own model; it is there before the import
    let (_, mut target) = whole_model(&m, Device::Cpu);
    let before = status_kib("VmRSS:");
    reset_peak();
    let t = Instant::now();
    hf::import(&dir, None).unwrap().load_into(&mut target).unwrap();
    let import_s = t.elapsed().as_secs_f64();
    print_phase("import", import_s, before, weight_kib);
    drop(target);
    std::fs::remove_dir_all(&dir).unwrap();

    let mut w = Worker::single(synthetic_run("hf-bench", m, 2, 1, 1), Device::Cpu).unwrap();
    w.train_step().unwrap();
    let t = Instant::now();
    w.train_step().unwrap();
    let step_s = t.elapsed().as_secs_f64();
    println!("one training step {step_s:.2} s (1 × 1,024 tokens, fp32, after a warm-up step)");
    println!("export / step    {:.2}; import / step {:.2}", export_s / step_s, import_s / step_s);
}
