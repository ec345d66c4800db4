//! Checkpoints: a resumed run continues the same run; corrupt or mismatched checkpoints are
//! refused before anything is loaded.

mod common;

use common::*;
use frugal_trainer::config::{OptimizerKind, Positions};
use frugal_trainer::parallel::Worker;
use tch::Device;

fn losses(t: &mut Worker, steps: i64) -> Vec<f64> {
    (0..steps).map(|_| t.train_step().unwrap().loss).collect()
}

fn resumed_equals_uninterrupted(mut model: frugal_trainer::config::ModelConfig, optimizer: OptimizerKind, name: &str) {
    tch::set_num_threads(1);
    model.positions = Positions::Rotary;
    let total = 10;
    let mut cfg = small_run(model, total, None);
    cfg.train.optim.kind = optimizer;
    let mut straight = Worker::single(cfg.clone(), Device::Cpu).unwrap();
    let reference = losses(&mut straight, total);

    let dir = temp_dir(name);
    cfg.checkpoint_dir = Some(dir.clone());
    let mut first = Worker::single(cfg.clone(), Device::Cpu).unwrap();
    let head = losses(&mut first, 4);
    first.save_checkpoint().unwrap();
    drop(first);
    let mut second = Worker::single(cfg, Device::Cpu).unwrap();
    assert_eq!(second.resume_latest().unwrap(), Some(4));
    let tail = losses(&mut second, total - 4);
    let resumed: Vec<f64> = head.into_iter().chain(tail).collect();
    for (i, (a, b)) in reference.iter().zip(&resumed).enumerate() {
        assert!((a - b).abs() <= 1e-6, "{name}: step {}: uninterrupted {a}, resumed {b}", i + 1);
    }
    // The run learned something, so equality is not of two constant sequences.
    assert!(reference[total as usize - 1] < reference[0] - 0.1, "{reference:?}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn resumed_dense_adamw_run_equals_uninterrupted_run() {
    resumed_equals_uninterrupted(small_model(false), OptimizerKind::AdamW, "resume-dense");
}

#[test]
fn resumed_moe_muon_run_equals_uninterrupted_run() {
    resumed_equals_uninterrupted(small_model(true), OptimizerKind::Muon, "resume-moe");
}

#[test]
fn corrupt_checkpoint_is_refused_and_nothing_is_loaded() {
    tch::set_num_threads(1);
    let dir = temp_dir("corrupt");
    let cfg = small_run(small_model(false), 4, Some(dir.clone()));
    let mut t = Worker::single(cfg.clone(), Device::Cpu).unwrap();
    t.train_step().unwrap();
    let saved = t.save_checkpoint().unwrap().unwrap();

    // Flip one byte in the middle of the weights.
    let weights = saved.join("stage-0.model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&weights, &bytes).unwrap();

    let mut fresh = Worker::single(cfg.clone(), Device::Cpu).unwrap();
    let before = fresh.params.master.copy();
    let err = fresh.resume_latest().unwrap_err().to_string();
    assert!(err.contains("corrupt") && err.contains("stage-0.model.safetensors"), "{err}");
    assert!(fresh.params.master.equal(&before), "a refused checkpoint must not be half-loaded");
    assert_eq!(fresh.step, 0);

    // A tampered manifest is refused too.
    bytes[mid] ^= 0x40;
    std::fs::write(&weights, &bytes).unwrap();
    let manifest = saved.join("MANIFEST.json");
    let text = std::fs::read_to_string(&manifest).unwrap().replace("\"step\": 1", "\"step\": 2");
    std::fs::write(&manifest, text).unwrap();
    let err = fresh.resume_latest().unwrap_err().to_string();
    assert!(err.contains("manifest checksum"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

/// A corrupt newest checkpoint (a byte flipped, or a node lost while it was written) does not
/// fail every attempt: the run resumes from the newest intact one and says so, and the corrupt
/// one is kept aside, out of the way of the next save.
#[test]
fn a_corrupt_newest_checkpoint_falls_back_to_the_newest_valid_one() {
    tch::set_num_threads(1);
    let dir = temp_dir("fallback");
    let cfg = small_run(small_model(false), 4, Some(dir.clone()));
    let mut t = Worker::single(cfg.clone(), Device::Cpu).unwrap();
    t.train_step().unwrap();
    let first = t.save_checkpoint().unwrap().unwrap();
    let at_first = t.params.master.copy();
    t.train_step().unwrap();
    let newest = t.save_checkpoint().unwrap().unwrap();
    let weights = newest.join("stage-0.model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&weights, &bytes).unwrap();

    let mut resumed = Worker::single(cfg.clone(), Device::Cpu).unwrap();
    assert_eq!(resumed.resume_latest().unwrap(), Some(1));
    assert!(resumed.params.master.equal(&at_first), "the weights of the older checkpoint");
    assert_eq!(resumed.skipped_checkpoints.len(), 1);
    let note = &resumed.skipped_checkpoints[0];
    assert!(note.contains("corrupt") && note.contains("stage-0.model.safetensors") && note.contains(&first.display().to_string()), "{note}");
    assert!(!newest.exists() && newest.with_file_name("step-000000002.corrupt").exists(), "the corrupt one is set aside");
    assert_eq!(frugal_trainer::checkpoint::list(&dir).unwrap().len(), 1);
    // training goes on, and the step it reaches again saves where the corrupt one was
    resumed.train_step().unwrap();
    assert_eq!(resumed.save_checkpoint().unwrap().unwrap(), newest);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn checkpoint_of_another_model_is_refused() {
    tch::set_num_threads(1);
    let dir = temp_dir("mismatch");
    let cfg = small_run(small_model(false), 4, Some(dir.clone()));
    let mut t = Worker::single(cfg, Device::Cpu).unwrap();
    t.save_checkpoint().unwrap();
    let mut wider = small_model(false);
    wider.ffn_hidden = 128;
    let mut other = Worker::single(small_run(wider, 4, Some(dir.clone())), Device::Cpu).unwrap();
    let err = other.resume_latest().unwrap_err().to_string();
    assert!(err.contains("does not match this job"), "{err}");

    // Same model, another optimizer: its state does not fit.
    let mut cfg = small_run(small_model(false), 4, Some(dir.clone()));
    cfg.train.optim.kind = OptimizerKind::Muon;
    let mut muon = Worker::single(cfg, Device::Cpu).unwrap();
    let err = muon.resume_latest().unwrap_err().to_string();
    assert!(err.contains("optimizer"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn incomplete_checkpoint_directories_are_ignored_and_old_ones_pruned() {
    tch::set_num_threads(1);
    let dir = temp_dir("prune");
    let cfg = small_run(small_model(false), 6, Some(dir.clone()));
    let mut t = Worker::single(cfg.clone(), Device::Cpu).unwrap();
    for _ in 0..3 {
        t.train_step().unwrap();
        t.save_checkpoint().unwrap();
    }
    let steps: Vec<i64> = frugal_trainer::checkpoint::list(&dir).unwrap().into_iter().map(|(s, _)| s).collect();
    assert_eq!(steps, vec![2, 3], "keep_checkpoints = 2");
    // A step directory without a manifest (a crash mid-write) does not count.
    std::fs::create_dir_all(dir.join("step-000000009")).unwrap();
    let mut fresh = Worker::single(cfg, Device::Cpu).unwrap();
    assert_eq!(fresh.resume_latest().unwrap(), Some(3));
    let _ = std::fs::remove_dir_all(dir);
}
