//! The training step checked against an outside reference: losses, gradient norms and the first
//! step's gradients recorded at a fixed seed (`tests/fixtures/reference/`), and a checkpoint in the
//! single-process layout (`frugal-checkpoint/1`) that must stay readable.

mod common;

use common::*;
use frugal_trainer::config::{Positions, RunConfig};
use frugal_trainer::parallel::StepReport;
use frugal_trainer::parallel::{Replicas, ScheduleKind, Worker, layouts, run_replicated};
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

/// What the fixtures recorded for each step.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Recorded {
    loss: f64,
    grad_norm: f64,
    aux_loss: Option<f64>,
}

fn recorded(name: &str) -> Vec<Recorded> {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join(name).join("steps.json")).unwrap()).unwrap()
}

fn close(what: &str, got: f64, want: f64, tolerance: f64) {
    assert!((got - want).abs() <= tolerance * want.abs().max(1.0), "{what}: {got}, recorded {want}");
}

fn check_step(name: &str, step: usize, r: &StepReport, want: &Recorded) {
    close(&format!("{name} step {step} loss"), r.loss, want.loss, 1e-5);
    close(&format!("{name} step {step} gradient norm"), r.grad_norm, want.grad_norm, 1e-4);
    match (r.aux_loss, want.aux_loss) {
        (Some(got), Some(want)) => close(&format!("{name} step {step} aux loss"), got, want, 1e-4),
        (got, want) => assert_eq!(got.is_some(), want.is_some(), "{name} step {step}: aux loss {got:?}, recorded {want:?}"),
    }
}

/// Every gradient of the first step against the recorded one.
fn check_grads(name: &str, grads: &[(String, Tensor)]) {
    let want: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(fixtures().join(name).join("grads-step-1.safetensors")).unwrap().into_iter().collect();
    assert_eq!(grads.len(), want.len(), "{name}: parameters");
    for (n, g) in grads {
        let w = &want[n];
        let err = (g - w).abs().max().double_value(&[]);
        let scale = w.abs().max().double_value(&[]).max(1e-6);
        assert!(err <= 1e-4 * scale, "{name}: gradient of {n} differs by {err} (largest {scale})");
    }
}

#[test]
fn the_one_stage_worker_trains_as_the_recorded_reference() {
    tch::set_num_threads(1);
    for name in ["dense", "moe"] {
        let mut w = Worker::single(case(name), Device::Cpu).unwrap();
        for (i, want) in recorded(name).iter().enumerate() {
            let r = w.train_step().unwrap();
            check_step(name, i + 1, &r, want);
            if i == 0 {
                check_grads(name, &w.named_grads());
            }
        }
    }
}

/// The same runs split reach the same losses as the reference: the dense one in two stages of
/// two replicas (1F1B), the MoE one (three micro-batches) in two stages (GPipe).
#[test]
fn split_runs_train_as_the_recorded_reference() {
    tch::set_num_threads(1);
    for (name, replicas, schedule) in [("dense", 2, ScheduleKind::OneFOneB), ("moe", 1, ScheduleKind::GPipe)] {
        let cfg = case(name);
        let want = recorded(name);
        let replicas = Replicas { count: replicas, shard_optimizer: false };
        let results = run_replicated(&cfg, &layouts(&cfg.model, 2), replicas, schedule, &[Device::Cpu], |w: &mut Worker| {
            (0..STEPS).map(|_| w.train_step()).collect::<anyhow::Result<Vec<StepReport>>>()
        })
        .unwrap();
        for reports in results {
            for (i, (r, want)) in reports.iter().zip(&want).enumerate() {
                close(&format!("{name} step {} loss", i + 1), r.loss, want.loss, 1e-4);
                close(&format!("{name} step {} gradient norm", i + 1), r.grad_norm, want.grad_norm, 1e-3);
            }
        }
    }
}

/// A step the single-process trainer wrote (`frugal-checkpoint/1`) resumes, in one stage and in
/// two, and training goes on as the recorded run went on.
#[test]
fn single_process_checkpoints_stay_readable() {
    tch::set_num_threads(1);
    for name in ["dense", "moe"] {
        let root = temp_dir(&format!("reference-{name}"));
        let copy = |to: &std::path::Path| {
            let from = fixtures().join(name).join("checkpoints/step-000000003");
            let to = to.join("step-000000003");
            std::fs::create_dir_all(&to).unwrap();
            for f in std::fs::read_dir(&from).unwrap() {
                let f = f.unwrap();
                std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
            }
        };
        let want = recorded(name);
        let mut cfg = case(name);
        cfg.checkpoint_dir = Some(root.join("one"));
        copy(&root.join("one"));
        let mut w = Worker::single(cfg.clone(), Device::Cpu).unwrap();
        assert_eq!(w.resume_latest().unwrap(), Some(3));
        for (i, want) in want.iter().enumerate().skip(3) {
            let r = w.train_step().unwrap();
            check_step(name, i + 1, &r, want);
        }
        cfg.checkpoint_dir = Some(root.join("two"));
        copy(&root.join("two"));
        let results =
            frugal_trainer::parallel::run_in_process(&cfg, &layouts(&cfg.model, 2), ScheduleKind::GPipe, &[Device::Cpu], |w: &mut Worker| {
                assert_eq!(w.resume_latest()?, Some(3));
                (3..STEPS).map(|_| w.train_step()).collect::<anyhow::Result<Vec<StepReport>>>()
            })
            .unwrap();
        for (i, r) in results[1].iter().enumerate() {
            close(&format!("{name} two stages, step {} loss", i + 4), r.loss, want[i + 3].loss, 1e-4);
        }
        // a step of another model is refused, naming the difference
        let mut other = case(name);
        other.model.d_model = 48;
        other.checkpoint_dir = Some(root.join("one"));
        let e = Worker::single(other, Device::Cpu).unwrap().resume_latest().unwrap_err();
        assert!(format!("{e:#}").contains("does not match this job"), "{e:#}");
        let _ = std::fs::remove_dir_all(&root);
    }
}
