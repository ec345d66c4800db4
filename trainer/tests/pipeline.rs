//! The pipeline against a single-stage run: same gradients, same update, same loss.

mod common;

use common::*;
use frugal_api::v1alpha1::{EvalSet, EvalSetType};
use frugal_trainer::config::{FeedForward, Norm, Positions, RunConfig};
use frugal_trainer::eval::EvalConfig;
use frugal_trainer::parallel::{ScheduleKind, Worker, layouts, run_in_process};
use std::collections::BTreeMap;
use tch::{Device, Tensor};

/// 4 layers, all MoE, tied embeddings; 8 micro-batches of 2 sequences; no clipping, so the
/// gradient left in the buffer after a step is the raw one.
fn pipeline_run() -> RunConfig {
    let mut model = small_model(true);
    model.layers = 4;
    assert!(model.tied_embeddings);
    let mut cfg = small_run(model, 3, None);
    cfg.train.batch_size = 16;
    cfg.train.micro_batch_size = 2;
    cfg.train.optim.grad_clip = 0.0;
    cfg
}

type Named = BTreeMap<String, Tensor>;

fn reference(cfg: &RunConfig) -> (Named, Named, f64, Option<f64>) {
    let mut t = Worker::single(cfg.clone(), Device::Cpu).unwrap();
    let r = t.train_step().unwrap();
    let named = |flat: &Tensor| -> Named {
        t.params.specs.iter().map(|s| (s.name.clone(), flat.narrow(0, s.offset, s.numel()).view(s.shape.as_slice()).copy())).collect()
    };
    (named(&t.params.grad), named(&t.params.master), r.loss, r.dropped_fraction)
}

fn assert_close(what: &str, name: &str, got: &Tensor, want: &Tensor, rel: f64) {
    let scale = want.abs().max().double_value(&[]);
    let err = (got - want).abs().max().double_value(&[]);
    assert!(err <= rel * scale.max(1e-12), "{what} {name}: differs by {err}, max {scale}");
}

fn check_against_reference(cfg: &RunConfig, stages: usize, schedule: ScheduleKind) {
    let (want_grads, want_weights, want_loss, want_dropped) = reference(cfg);
    let per_stage = run_in_process(cfg, &layouts(&cfg.model, stages), schedule, &[Device::Cpu], |w: &mut Worker| {
        let r = w.train_step()?;
        Ok((w.named_grads(), w.named_weights(), r, w.peak_in_flight))
    })
    .unwrap();
    let mut seen = BTreeMap::new();
    for (s, (grads, weights, r, peak_in_flight)) in per_stage.iter().enumerate() {
        assert!((r.loss - want_loss).abs() <= 1e-5 * want_loss, "stage {s} loss {} vs {want_loss}", r.loss);
        // Dropped assignments summed over every stage's MoE layers, as one process counts them.
        assert_eq!(r.dropped_fraction.is_some(), want_dropped.is_some(), "stage {s}");
        if let (Some(got), Some(want)) = (r.dropped_fraction, want_dropped) {
            assert!((got - want).abs() < 1e-12, "stage {s} dropped fraction {got} vs {want}");
        }
        assert!(*peak_in_flight <= cfg.micro_batches() as usize);
        for ((name, g), (_, w)) in grads.iter().zip(weights) {
            assert_close("gradient", name, g, &want_grads[name], 1e-5);
            assert_close("updated weight", name, w, &want_weights[name], 1e-5);
            *seen.entry(name.clone()).or_insert(0) += 1;
        }
    }
    // Every parameter lives on exactly one stage, except the tied embedding on first and last.
    assert_eq!(seen.len(), want_grads.len());
    for (name, n) in seen {
        assert_eq!(n, if name == "wte.weight" && stages > 1 && cfg.model.tied_embeddings { 2 } else { 1 }, "{name}");
    }
}

#[test]
fn four_stage_gpipe_matches_one_stage() {
    tch::set_num_threads(1);
    check_against_reference(&pipeline_run(), 4, ScheduleKind::GPipe);
}

#[test]
fn four_stage_one_f_one_b_matches_one_stage() {
    tch::set_num_threads(1);
    check_against_reference(&pipeline_run(), 4, ScheduleKind::OneFOneB);
}

#[test]
fn one_f_one_b_with_recomputation_and_untied_head_matches_one_stage() {
    tch::set_num_threads(1);
    let mut cfg = pipeline_run();
    cfg.train.activation_checkpointing = true;
    cfg.model.tied_embeddings = false;
    check_against_reference(&cfg, 2, ScheduleKind::OneFOneB);
}

#[test]
fn a_llama_block_pipeline_with_recomputation_matches_one_stage() {
    tch::set_num_threads(1);
    let mut cfg = pipeline_run();
    (cfg.model.norm, cfg.model.feed_forward, cfg.model.positions) = (Norm::RmsNorm, FeedForward::Swiglu, Positions::Rotary);
    let moe = cfg.model.moe.as_mut().unwrap();
    // dense SwiGLU MLPs between SwiGLU experts, with Mixtral's renormalised gates
    (moe.every_n_layers, moe.normalize_top_k) = (2, true);
    cfg.train.activation_checkpointing = true;
    check_against_reference(&cfg, 2, ScheduleKind::OneFOneB);
}

#[test]
fn one_f_one_b_holds_fewer_micro_batches_than_gpipe() {
    tch::set_num_threads(1);
    let cfg = pipeline_run();
    let peaks = |schedule| {
        run_in_process(&cfg, &layouts(&cfg.model, 4), schedule, &[Device::Cpu], |w: &mut Worker| {
            w.train_step()?;
            Ok(w.peak_in_flight)
        })
        .unwrap()
    };
    assert_eq!(peaks(ScheduleKind::GPipe), vec![8, 8, 8, 8]);
    assert_eq!(peaks(ScheduleKind::OneFOneB), vec![4, 3, 2, 1]);
}

#[test]
fn a_four_stage_checkpoint_resumes_as_two_stages_and_as_one() {
    tch::set_num_threads(1);
    let root = temp_dir("pp-ckpt");
    let cfg = pipeline_run();
    // Four stages: two steps, a checkpoint, then a third step as the uninterrupted reference.
    let r = root.clone();
    let four = run_in_process(&cfg, &layouts(&cfg.model, 4), ScheduleKind::OneFOneB, &[Device::Cpu], move |w: &mut Worker| {
        w.train_step()?;
        w.train_step()?;
        w.save_checkpoint_in(&r, 2)?;
        let third = w.train_step()?;
        Ok((third.loss, w.named_weights()))
    })
    .unwrap();
    let want_loss = four[0].0;
    let want: BTreeMap<String, Tensor> = four.into_iter().flat_map(|(_, w)| w).collect();
    let dir = frugal_trainer::checkpoint::latest(&root).unwrap().expect("a committed checkpoint");
    assert!(dir.ends_with("step-000000002"), "{}", dir.display());
    for stages in [2, 1] {
        let d = dir.clone();
        let resumed = run_in_process(&cfg, &layouts(&cfg.model, stages), ScheduleKind::GPipe, &[Device::Cpu], move |w: &mut Worker| {
            let state = w.restore(&d)?;
            assert_eq!((state.step, state.stages), (2, 4));
            let third = w.train_step()?;
            assert_eq!(w.step, 3);
            Ok((third.loss, w.named_weights()))
        })
        .unwrap();
        for (loss, weights) in resumed {
            assert!((loss - want_loss).abs() <= 1e-5 * want_loss, "{stages} stages: loss {loss} vs {want_loss}");
            for (name, w) in weights {
                assert_close(&format!("{stages} stages: weight after resuming"), &name, &w, &want[&name], 1e-5);
            }
        }
    }
    // A corrupted part is refused before anything loads.
    let part = dir.join("stage-1.model.safetensors");
    let mut bytes = std::fs::read(&part).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 0xff;
    std::fs::write(&part, bytes).unwrap();
    let d = dir.clone();
    let err = run_in_process(&cfg, &layouts(&cfg.model, 1), ScheduleKind::GPipe, &[Device::Cpu], move |w: &mut Worker| w.restore(&d).map(|_| ()))
        .unwrap_err();
    assert!(format!("{err:#}").contains("stage-1.model.safetensors"), "{err:#}");
    let _ = std::fs::remove_dir_all(&root);
}

/// Four stages evaluate what one process evaluates: the same validation loss, bits per byte and
/// zero-shot accuracy, every forward going through the chain (the middle stages relaying).
#[test]
fn a_four_stage_evaluation_matches_one_stage() {
    tch::set_num_threads(1);
    let cfg = pipeline_run();
    let cloze = EvalSet { name: "cloze".into(), type_: EvalSetType::Cloze, path: None, max_examples: Some(40) };
    let evaluation = EvalConfig { sets: vec![cloze], ..Default::default() };
    let mut t = Worker::single(cfg.clone(), Device::Cpu).unwrap();
    t.evaluation = evaluation.clone();
    t.train_step().unwrap();
    let want = t.evaluate().unwrap().unwrap();
    let per_stage = run_in_process(&cfg, &layouts(&cfg.model, 4), ScheduleKind::OneFOneB, &[Device::Cpu], move |w: &mut Worker| {
        w.evaluation = evaluation.clone();
        w.train_step()?;
        w.evaluate()
    })
    .unwrap();
    assert!(per_stage[..3].iter().all(Option::is_none), "only the last stage has the result");
    let got = per_stage[3].as_ref().expect("the last stage's evaluation");
    assert_eq!(got.step, want.step);
    for (what, g, w) in [
        ("validation loss", got.validation_loss, want.validation_loss),
        ("bits per byte", got.bits_per_byte, want.bits_per_byte),
        ("perplexity", got.perplexity, want.perplexity),
    ] {
        let (g, w) = (g.unwrap(), w.unwrap());
        assert!(w.is_finite() && (g - w).abs() <= 1e-5 * w, "{what}: {g} vs {w}");
    }
    assert_eq!(got.zero_shot, want.zero_shot);
    assert!(got.zero_shot[0].examples > 0);
}

const PIPELINE_JOB: &str = r#"
apiVersion: frugal.dev/v1alpha1
kind: TrainingJob
metadata: {name: pipelined}
spec:
  model:
    type: Custom
    custom: {layers: 2, dModel: 32, heads: 2, seqLen: 16}
  data: {source: {type: Synthetic, synthetic: {branching: 4}}}
  parallelism: {pipelineStages: 2, schedule: 1f1b, microBatches: 4}
  training:
    duration: {type: Steps, steps: 4}
    batchSize: 8
    precision: fp32
    checkpointInterval: 2
    logInterval: 1
  resources: {device: CPU}
"#;

/// Runs `frugal-trainer train job --json` on one thread, checkpointing to `ckpt`, and returns
/// its JSON events; the run must succeed.
fn train_events(job: &std::path::Path, ckpt: &std::path::Path, extra: &[&str]) -> Vec<serde_json::Value> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_frugal-trainer"))
        .args(["train", job.to_str().unwrap(), "--threads", "1", "--json", "--checkpoint-dir", ckpt.to_str().unwrap()])
        .args(extra)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// Runs `frugal-trainer eval job --json --checkpoint ckpt` and returns its output.
fn eval_json(job: &std::path::Path, ckpt: &std::path::Path) -> serde_json::Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_frugal-trainer"))
        .args(["eval", job.to_str().unwrap(), "--json", "--checkpoint", ckpt.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_trainer_runs_a_pipelined_job_and_resumes_it() {
    let dir = temp_dir("pp-cli");
    let job = dir.join("job.yaml");
    std::fs::write(&job, PIPELINE_JOB).unwrap();
    let ckpt = dir.join("checkpoints");
    let run = |max_steps: &str| train_events(&job, &ckpt, &["--max-steps", max_steps]);
    let first = run("2");
    let steps: Vec<_> = first.iter().filter(|e| e["event"] == "step").collect();
    assert_eq!(steps.len(), 2);
    let bubble = steps[1]["pipeline_bubble"].as_f64().unwrap();
    assert!(bubble > 0.0 && bubble < 1.0, "{bubble}");
    assert!((steps[1]["bubble_theory"].as_f64().unwrap() - 0.2).abs() < 1e-12);
    // every line has its time, and the same lines, folded as a pod's status reporter folds
    // them, give the status the measured bubble and the achieved TFLOP/s
    assert!(first.iter().all(|e| e["timestamp"].as_str().is_some_and(|t| t.ends_with('Z'))), "{first:?}");
    let mut fold = frugal_trainer::report::status::TrainerStatus::default();
    for line in first.iter().filter(|l| l["event"] != "summary") {
        fold.observe(&serde_json::from_value(line.clone()).unwrap());
    }
    let efficiency = fold.efficiency.clone().expect("the steps' efficiency");
    assert_eq!(efficiency.pipeline_bubble, Some(bubble));
    assert!(efficiency.achieved_tflops > 0.0 && efficiency.tokens_per_second > 0.0, "{efficiency:?}");
    let committed = frugal_trainer::checkpoint::latest(&ckpt).unwrap().expect("a checkpoint");
    assert!(committed.ends_with("step-000000002"));
    let second = run("4");
    let resume = second.iter().find(|e| e["event"] == "resume").expect("a resume event");
    assert_eq!(resume["step"].as_i64(), Some(2));
    let first_step = second.iter().find(|e| e["event"] == "step").unwrap();
    assert_eq!(first_step["step"].as_i64(), Some(3));
    // `eval` reads the pipelined checkpoint (one part per stage) and scores what the run's final
    // evaluation scored.
    let at_end = second.iter().rfind(|e| e["event"] == "eval").expect("the final evaluation");
    let eval = eval_json(&job, &ckpt);
    let (got, want) = (eval["quality"]["validationLoss"].as_f64().unwrap(), at_end["val_loss"].as_f64().unwrap());
    assert!((got - want).abs() <= 1e-6 * want, "eval {got} vs the run's {want}");
    assert_eq!(eval["quality"]["step"].as_i64(), Some(4));
    // A corrupt newest checkpoint (one stage's part damaged) does not fail the run: every stage
    // falls back to the newest intact one, the run says so, and the corrupt one is set aside.
    let newest = frugal_trainer::checkpoint::latest(&ckpt).unwrap().unwrap();
    assert!(newest.ends_with("step-000000004"), "{}", newest.display());
    let part = newest.join("stage-1.model.safetensors");
    let mut bytes = std::fs::read(&part).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 0xff;
    std::fs::write(&part, bytes).unwrap();
    let third = run("3");
    let resume = third.iter().find(|e| e["event"] == "resume").expect("a resume event");
    assert_eq!(resume["step"].as_i64(), Some(2), "{resume}");
    let notes = resume["skipped_corrupt"].as_array().expect("the corrupt checkpoint is named");
    assert_eq!(notes.len(), 1, "{notes:?}");
    let note = notes[0].as_str().unwrap();
    assert!(note.contains("stage-1.model.safetensors") && note.contains("step-000000002"), "{note}");
    assert!(!newest.exists() && newest.with_file_name("step-000000004.corrupt").exists(), "the corrupt one is set aside");
    assert_eq!(third.iter().find(|e| e["event"] == "step").unwrap()["step"].as_i64(), Some(3));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn clipping_uses_the_global_norm_agreed_across_stages() {
    tch::set_num_threads(1);
    let mut cfg = pipeline_run();
    // Far below the gradient's norm, so every step clips: a stage clipping by its own norm would
    // scale its gradients differently from the single-stage run.
    cfg.train.optim.grad_clip = 0.01;
    let mut t = Worker::single(cfg.clone(), Device::Cpu).unwrap();
    let want_norm = t.train_step().unwrap().grad_norm;
    assert!(want_norm > 0.01, "{want_norm}");
    let norms = run_in_process(&cfg, &layouts(&cfg.model, 4), ScheduleKind::OneFOneB, &[Device::Cpu], |w: &mut Worker| Ok(w.train_step()?.grad_norm))
        .unwrap();
    for n in norms {
        assert!((n - want_norm).abs() <= 1e-5 * want_norm, "{n} vs {want_norm}");
    }
    check_against_reference(&cfg, 4, ScheduleKind::OneFOneB);
}

/// A pipelined job evaluates every `evalInterval` steps and at the end, reports the validation
/// loss in its summary, and stops every stage at the evaluation that reaches its quality target.
#[test]
fn a_pipelined_job_evaluates_and_stops_at_its_quality_target() {
    let dir = temp_dir("pp-eval");
    let run = |target: &str, name: &str| {
        let data = "  data: {source: {type: Synthetic, synthetic: {branching: 4}}}";
        let yaml = PIPELINE_JOB
            .replace("    checkpointInterval: 2\n", "    evalInterval: 2\n")
            .replace(data, &format!("  data: {{source: {{type: Synthetic, synthetic: {{branching: 4}}}}{target}}}"));
        let job = dir.join(format!("{name}.yaml"));
        std::fs::write(&job, yaml).unwrap();
        train_events(&job, &dir.join(name), &[])
    };
    let steps_of = |events: &[serde_json::Value], kind: &str| -> Vec<i64> {
        events.iter().filter(|e| e["event"] == kind).map(|e| e["step"].as_i64().unwrap()).collect()
    };
    // No target: evaluations at step 2 and at the end; the summary carries the last one.
    let events = run("", "no-target");
    assert_eq!(steps_of(&events, "eval"), vec![2, 4]);
    let last = events.iter().rfind(|e| e["event"] == "eval").unwrap();
    let val_loss = last["val_loss"].as_f64().unwrap();
    assert!(val_loss.is_finite() && val_loss > 0.0 && last["bits_per_byte"].as_f64().is_some(), "{last}");
    let summary = events.iter().find(|e| e["event"] == "summary").expect("a summary");
    assert_eq!(summary["val_loss"].as_f64(), Some(val_loss));
    assert_eq!(summary["stopped_by"], "completion");
    // A target the first evaluation reaches: the run stops there, at step 2 of 4.
    let events = run(", qualityTarget: {metric: validationLoss, value: 100}", "target");
    assert_eq!(steps_of(&events, "eval"), vec![2]);
    assert_eq!(steps_of(&events, "step"), vec![1, 2]);
    let eval = events.iter().find(|e| e["event"] == "eval").unwrap();
    assert_eq!(eval["quality_target_reached"], true);
    let summary = events.iter().find(|e| e["event"] == "summary").expect("a summary");
    assert_eq!(summary["stopped_by"], "quality target");
    assert_eq!(summary["steps"].as_i64(), Some(2));
    assert_eq!(summary["quality_target"]["reached"], true, "{summary}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every run writes one layout: what one process wrote resumes in two stages, and what two
/// stages wrote resumes in one process, with the same weights.
#[test]
fn one_process_and_two_stages_read_each_others_checkpoints() {
    tch::set_num_threads(1);
    let cfg = pipeline_run();
    let root = temp_dir("pp-layout");
    let two = root.join("two");
    let to = two.clone();
    let written = run_in_process(&cfg, &layouts(&cfg.model, 2), ScheduleKind::OneFOneB, &[Device::Cpu], move |w: &mut Worker| {
        w.train_step()?;
        w.save_checkpoint_in(&to, 1)?;
        Ok(w.named_weights())
    })
    .unwrap();
    let dir = frugal_trainer::checkpoint::latest(&two).unwrap().expect("a checkpoint of two stages");
    let mut one = Worker::single(cfg.clone(), Device::Cpu).unwrap();
    assert_eq!(one.restore(&dir).unwrap().stages, 2);
    let loaded: BTreeMap<String, Tensor> = one.named_weights().into_iter().collect();
    for (name, w) in written.into_iter().flatten() {
        assert!(loaded[&name].equal(&w), "{name} after loading two stages' checkpoint into one process");
    }

    let mut single_cfg = cfg.clone();
    single_cfg.checkpoint_dir = Some(root.join("one"));
    let mut single = Worker::single(single_cfg, Device::Cpu).unwrap();
    single.train_step().unwrap();
    let dir = single.save_checkpoint().unwrap().expect("a checkpoint");
    let want: BTreeMap<String, Tensor> = single.named_weights().into_iter().collect();
    let stages = run_in_process(&cfg, &layouts(&cfg.model, 2), ScheduleKind::OneFOneB, &[Device::Cpu], move |w: &mut Worker| {
        assert_eq!(w.restore(&dir)?.stages, 1);
        Ok(w.named_weights())
    })
    .unwrap();
    for (name, w) in stages.into_iter().flatten() {
        assert!(want[&name].equal(&w), "{name} after loading one process's checkpoint into two stages");
    }
    let _ = std::fs::remove_dir_all(&root);
}

/// A pipelined checkpoint written by an earlier release (`frugal-pipeline-checkpoint/1`, the
/// fixture: PIPELINE_JOB after 2 steps) still evaluates and resumes; the run then writes the
/// current layout.
#[test]
fn a_checkpoint_of_the_earlier_pipelined_format_still_loads() {
    let dir = temp_dir("pp-v1");
    let job = dir.join("job.yaml");
    std::fs::write(&job, PIPELINE_JOB).unwrap();
    let ckpt = dir.join("checkpoints");
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pipelined-v1/step-000000002");
    std::fs::create_dir_all(ckpt.join("step-000000002")).unwrap();
    for f in std::fs::read_dir(&fixture).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), ckpt.join("step-000000002").join(f.file_name())).unwrap();
    }
    let manifest = std::fs::read_to_string(ckpt.join("step-000000002/MANIFEST.json")).unwrap();
    assert!(manifest.contains("frugal-pipeline-checkpoint/1"), "{manifest}");
    let eval = eval_json(&job, &ckpt);
    assert_eq!(eval["quality"]["step"].as_i64(), Some(2));
    let events = train_events(&job, &ckpt, &["--max-steps", "3"]);
    let resume = events.iter().find(|e| e["event"] == "resume").expect("a resume event");
    assert_eq!(resume["step"].as_i64(), Some(2), "{resume}");
    let newest = frugal_trainer::checkpoint::latest(&ckpt).unwrap().unwrap();
    assert!(newest.ends_with("step-000000003"));
    let written = std::fs::read_to_string(newest.join("MANIFEST.json")).unwrap();
    assert!(written.contains(frugal_trainer::checkpoint::pipelined::FORMAT), "{written}");
    let _ = std::fs::remove_dir_all(&dir);
}
