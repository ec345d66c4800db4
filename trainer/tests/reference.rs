//! The training step checked against an outside reference: losses, gradient norms and the first
//! step's gradients recorded at a fixed seed (`tests/fixtures/reference/`), and a checkpoint in the
//! single-process layout (`frugal-checkpoint/1`) that must stay readable.

mod common;

use common::*;
use frugal_trainer::config::{Positions, RunConfig};
use frugal_trainer::train::Trainer;
use std::path::PathBuf;
use tch::{Device, Tensor};

const STEPS: i64 = 6;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reference")
}

/// The two recorded runs: a dense model (learned positions, tied head, two micro-batches, the
/// graph kept) and an MoE model (rotary positions, untied head, recomputation).
fn case(name: &str) -> RunConfig {
    match name {
        "dense" => small_run(small_model(false), STEPS, None),
        "moe" => {
            let mut m = small_model(true);
            m.positions = Positions::Rotary;
            m.tied_embeddings = false;
            let mut run = small_run(m, STEPS, None);
            run.train.activation_checkpointing = true;
            run.train.batch_size = 12;
            run
        }
        other => panic!("no case {other}"),
    }
}

#[test]
#[ignore = "records the fixtures"]
fn record() {
    tch::set_num_threads(1);
    for name in ["dense", "moe"] {
        let dir = fixtures().join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut cfg = case(name);
        cfg.checkpoint_dir = Some(dir.join("checkpoints"));
        cfg.keep_checkpoints = 1;
        let mut t = Trainer::new(cfg, Device::Cpu).unwrap();
        let mut steps = vec![];
        for step in 1..=STEPS {
            let r = t.train_step();
            steps.push(serde_json::json!({"loss": r.loss, "gradNorm": r.grad_norm, "auxLoss": r.aux_loss}));
            if step == 1 {
                let grads: Vec<(String, Tensor)> = t
                    .params
                    .specs
                    .iter()
                    .map(|s| (s.name.clone(), t.params.grad.narrow(0, s.offset, s.numel()).view(s.shape.as_slice()).copy()))
                    .collect();
                Tensor::write_safetensors(&grads, dir.join("grads-step-1.safetensors")).unwrap();
            }
            if step == 3 {
                t.save_checkpoint().unwrap();
            }
        }
        std::fs::write(dir.join("steps.json"), serde_json::to_string_pretty(&steps).unwrap()).unwrap();
    }
}
