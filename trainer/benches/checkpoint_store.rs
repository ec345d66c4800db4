//! Checkpoints in object storage against a real S3-compatible server (SeaweedFS on loopback, as
//! the tests start it; `scripts/seaweedfs.sh` builds it): a GPT-2-124M-shaped step (fp32
//! weights and AdamW state, as a run writes it) uploaded, fetched into an empty directory and
//! resumed from there, with the throughput of each; then the step time of a small run while that
//! upload goes on in the background against with none.
//!
//!   cargo bench -p frugal-trainer --bench checkpoint_store -- [at least this many idle steps]
//!
//! Needs about 3.5 GB of disk (the step on disk, its copy in the store) and 3 GB of memory.

#[path = "../tests/support/seaweedfs.rs"]
mod seaweedfs;

use frugal_api::planner::{self, PlanOptions};
use frugal_api::v1alpha1::TrainingJobSpec;
use frugal_trainer::checkpoint::remote::{self, Uploader};
use frugal_trainer::config::*;
use frugal_trainer::parallel::Worker;
use seaweedfs::{SECRET_KEY, SeaweedFs};
use std::path::Path;
use std::time::Instant;
use tch::Device;

fn gpt2_124m() -> ModelConfig {
    let spec: TrainingJobSpec = serde_saphyr::from_str(
        "model: {type: Preset, preset: gpt2-124m}\ndata: {source: {type: Synthetic}}\ntraining: {batchSize: 8, precision: fp32}\nresources: {device: CPU}\n",
    )
    .expect("the bench's spec parses");
    planner::plan(&spec, &PlanOptions::default()).expect("it plans").model
}

fn bytes_in(dir: &Path) -> u64 {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum()
}

/// Mean seconds of `steps` steps of `w`.
fn step_seconds(w: &mut Worker, steps: i64) -> f64 {
    let t = Instant::now();
    for _ in 0..steps {
        w.train_step().unwrap();
    }
    t.elapsed().as_secs_f64() / steps as f64
}

fn main() {
    let steps: i64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(20);
    tch::set_num_threads(1);
    let s3 = SeaweedFs::start("bench", "bench").expect("a SeaweedFS binary: run scripts/seaweedfs.sh");
    let store = s3.store("gpt2", SECRET_KEY);
    let root = std::env::temp_dir().join(format!("frugal-bench-store-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);

    // A GPT-2-124M-shaped step, written as a run writes it.
    let mut big = synthetic_run("store-bench", gpt2_124m(), 10, 1, 1);
    big.checkpoint_dir = Some(root.join("writer"));
    let mut w = Worker::single(big.clone(), Device::Cpu).unwrap();
    let t = Instant::now();
    let step = w.save_checkpoint_in(&root.join("writer"), 1).unwrap();
    let save = t.elapsed().as_secs_f64();
    let bytes = bytes_in(&step);
    let mb = bytes as f64 / 1e6;
    println!("GPT-2-124M-shaped step: {mb:.0} MB in {} files; written and synced in {save:.1} s", std::fs::read_dir(&step).unwrap().count());

    let t = Instant::now();
    let up = remote::upload(&store, &step, 1).unwrap();
    let up_s = t.elapsed().as_secs_f64();
    println!("upload (every part, then the manifest): {up_s:.1} s, {:.0} MB/s", up.bytes as f64 / 1e6 / up_s);

    // Another node: an empty directory, the step comes from the store and is loaded.
    let reader_root = root.join("reader");
    big.checkpoint_dir = Some(reader_root.clone());
    let mut r = Worker::single(big, Device::Cpu).unwrap();
    r.uploader = Some(Uploader::new(store.clone(), 1));
    let t = Instant::now();
    let fetched = remote::fetch(&store, &reader_root).unwrap();
    let fetch_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    r.restore(fetched.dir.as_deref().expect("the step came down")).unwrap();
    let load_s = t.elapsed().as_secs_f64();
    assert!(r.params.master.equal(&w.params.master));
    println!(
        "resume from the store into an empty directory: {:.1} s = download and verify {fetch_s:.1} s ({:.0} MB/s) + load (hashes again, copies) {load_s:.1} s",
        fetch_s + load_s,
        fetched.bytes as f64 / 1e6 / fetch_s
    );
    drop((w, r));
    std::fs::remove_dir_all(root.join("writer")).unwrap();

    // Step time of a small run while that step goes up in the background, then as many steps
    // with nothing going up.
    let small = synthetic_run("store-bench-steps", nano_model(256), 100_000, 16, 4);
    let mut s = Worker::single(small, Device::Cpu).unwrap();
    step_seconds(&mut s, 3);
    let mut uploader = Uploader::new(store.clone(), 1);
    let fetched_step = reader_root.join(frugal_trainer::checkpoint::step_dir_name(up.step));
    let t = Instant::now();
    uploader.start(fetched_step, up.step).unwrap();
    let (mut n, mut outcome) = (0, None);
    while outcome.is_none() {
        s.train_step().unwrap();
        n += 1;
        outcome = uploader.poll();
    }
    let busy = t.elapsed().as_secs_f64() / n as f64;
    let done = outcome.unwrap().unwrap();
    let idle = step_seconds(&mut s, n.max(steps));
    println!(
        "small run (1 intra-op thread): {:.1} ms a step with the upload running ({n} steps, the upload's {:.1} s), {:.1} ms with nothing: {:+.1}%",
        busy * 1e3,
        done.seconds,
        idle * 1e3,
        (busy / idle - 1.0) * 100.0
    );
    let _ = std::fs::remove_dir_all(&root);
}
