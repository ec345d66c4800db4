//! Knowledge distillation: a student taught by a trained teacher learns more from the same
//! tokens; a soft weight of 0 is the run without a teacher, bit for bit; a pipeline (and its
//! replicas) distills as one process does, with recomputation too; a distilled run resumes as if
//! uninterrupted; the run reports its teacher; a teacher that cannot teach is refused, naming the
//! field to change.

mod common;

use common::*;
use frugal_trainer::config::{DistillConfig, DistillLoss, FeedForward, ModelConfig, Norm, Precision, RunConfig};
use frugal_trainer::distill::Teacher;
use frugal_trainer::job::{self, ConfigurationError};
use frugal_trainer::parallel::run::Session;
use frugal_trainer::parallel::{Replicas, ScheduleKind, Worker, layouts, run_in_process, run_replicated};
use frugal_trainer::report::Reporter;
use frugal_trainer::report::event::RunEvent;
use frugal_trainer::report::metrics::Metrics;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::AtomicBool;
use tch::{Device, Kind, Tensor};

/// Optimizer steps the teacher trains for: enough to come near the synthetic language's floor of
/// ln 4 = 1.386 nats (about 1.69 on the validation split).
const TEACHER_STEPS: i64 = 300;

/// Twice the student's width (`small_model(false)`: 2 layers, 32 wide), the same vocabulary and
/// context; [`TEACHER_YAML`] is the same model as a job's spec gives it.
fn teacher_model() -> ModelConfig {
    let mut m = small_model(false);
    m.d_model = 64;
    m.heads = 4;
    m.ffn_hidden = 256;
    m
}

const TEACHER_YAML: &str = "{type: Custom, custom: {layers: 2, dModel: 64, heads: 4, seqLen: 16, ffnHidden: 256, positions: learned, bias: true}}";

/// The checkpoint root of the teacher, trained once for every test of this file.
fn teacher() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let root = temp_dir("distill-teacher");
        let cfg = small_run(teacher_model(), TEACHER_STEPS, Some(root.clone()));
        let mut t = Worker::single(cfg, Device::Cpu).unwrap();
        for _ in 0..TEACHER_STEPS {
            t.train_step().unwrap();
        }
        t.save_checkpoint().unwrap().expect("the teacher's checkpoint");
        root
    })
}

fn distill(soft_weight: f64) -> DistillConfig {
    DistillConfig { teacher: teacher_model(), checkpoint: teacher().to_path_buf(), loss: DistillLoss { temperature: 2.0, soft_weight } }
}

/// The student's run: `small_run` of `small_model(false)`, distilled with `soft_weight` if given.
fn student(steps: i64, soft_weight: Option<f64>) -> RunConfig {
    let mut cfg = small_run(small_model(false), steps, None);
    cfg.distill = soft_weight.map(distill);
    cfg
}

/// Runs `cfg` to its end through the run loop, returning the events it reported.
fn run_events(cfg: RunConfig) -> Vec<RunEvent> {
    let (sink, events) = std::sync::mpsc::channel();
    let mut reporter = Reporter::new(cfg.train.steps, true).with_sink(Some(sink));
    let mut t = Worker::single(cfg, Device::Cpu).unwrap();
    let (stop, metrics) = (AtomicBool::new(false), Metrics::new("test"));
    let session = Session { stop: &stop, reporter: Some(&mut reporter), metrics: &metrics, max_steps: None, resume: false, metrics_port: None };
    frugal_trainer::parallel::run::run(&mut t, session).unwrap();
    drop(reporter);
    events.try_iter().collect()
}

fn final_val_loss(events: &[RunEvent]) -> f64 {
    events.iter().rev().find_map(|e| if let RunEvent::Eval(e) = e { e.val_loss } else { None }).expect("a final evaluation")
}

#[test]
fn a_distilled_student_learns_more_from_the_same_tokens_and_reports_its_teacher() {
    tch::set_num_threads(1);
    let steps = 80;
    let mut plain = student(steps, None);
    plain.train.eval_interval = 40;
    let mut taught = student(steps, Some(0.5));
    taught.train.eval_interval = 40;
    let (plain, taught) = (run_events(plain), run_events(taught));
    let (without, with) = (final_val_loss(&plain), final_val_loss(&taught));
    let reports: Vec<_> = taught.iter().filter_map(|e| if let RunEvent::Distillation(d) = e { Some(d) } else { None }).collect();
    let first = reports[0];
    let teacher_loss = first.teacher.validation_loss.unwrap();
    println!(
        "after {steps} steps of {} tokens: validation loss {without:.4} without the teacher, {with:.4} with it (teacher {teacher_loss:.4}); \
         inference {:.0} tokens/s student, {:.0} teacher",
        8 * 16,
        first.student_tokens_per_second,
        first.teacher_tokens_per_second
    );
    // measured: 4.32 with the teacher (temperature 2, soft weight 0.5), 4.67 without
    assert!(with < without - 0.2, "distilled {with} vs {without}");
    assert!(teacher_loss < with, "the teacher {teacher_loss} knows more than its student {with}");

    // the run reports its teacher at the start, then beside each evaluation
    let first_step = taught.iter().position(|e| matches!(e, RunEvent::Step(_))).unwrap();
    assert!(taught[..first_step].iter().any(|e| matches!(e, RunEvent::Distillation(_))));
    assert_eq!(reports.len(), 3, "at the start and after the evaluations at steps 40 and 80");
    assert!(first.teacher_checkpoint.ends_with("step-000000300"), "{}", first.teacher_checkpoint);
    let planned = teacher_model().parameters();
    assert_eq!((first.teacher_parameters, first.teacher_active_parameters), (planned.total, planned.active));
    assert!(first.teacher_tokens_per_second > 0.0 && first.student_tokens_per_second > 0.0, "{first:?}");
    assert!(first.teacher.bits_per_byte.is_some() && first.teacher.perplexity.is_some() && first.bits_per_byte_delta.is_none());
    let evals: Vec<f64> = taught.iter().filter_map(|e| if let RunEvent::Eval(e) = e { e.bits_per_byte } else { None }).collect();
    for (report, student_bpb) in reports[1..].iter().zip(&evals) {
        let delta = report.bits_per_byte_delta.expect("the student beside the teacher");
        assert!((delta - (student_bpb - first.teacher.bits_per_byte.unwrap())).abs() < 1e-12);
        assert_eq!(report.teacher, first.teacher);
    }
    // the steps' loss stays the cross-entropy, the soft loss beside it
    let soft =
        |events: &[RunEvent]| events.iter().filter_map(|e| if let RunEvent::Step(s) = e { Some(s.soft_loss) } else { None }).collect::<Vec<_>>();
    assert!(soft(&taught).iter().all(|s| s.is_some_and(|s| s.is_finite() && s > 0.0)));
    assert!(soft(&plain).iter().all(Option::is_none));
    assert!(!plain.iter().any(|e| matches!(e, RunEvent::Distillation(_))));
}

#[test]
fn a_soft_weight_of_zero_trains_as_without_a_teacher() {
    tch::set_num_threads(1);
    let mut without = Worker::single(student(5, None), Device::Cpu).unwrap();
    let mut zero = Worker::single(student(5, Some(0.0)), Device::Cpu).unwrap();
    assert!(zero.teacher.is_some(), "the teacher is loaded, for the report");
    for _ in 0..5 {
        let (a, b) = (without.train_step().unwrap(), zero.train_step().unwrap());
        assert_eq!(a.loss.to_bits(), b.loss.to_bits());
        assert_eq!(a.grad_norm.to_bits(), b.grad_norm.to_bits());
        assert_eq!(b.soft_loss, None);
    }
    assert!(without.params.master.equal(&zero.params.master), "bit for bit");
}

type Named = BTreeMap<String, Tensor>;

/// One step of the single process: gradients, updated weights, loss and soft loss.
fn reference(cfg: &RunConfig) -> (Named, Named, f64, f64) {
    let mut t = Worker::single(cfg.clone(), Device::Cpu).unwrap();
    let r = t.train_step().unwrap();
    let named = |flat: &Tensor| -> Named {
        t.params.specs.iter().map(|s| (s.name.clone(), flat.narrow(0, s.offset, s.numel()).view(s.shape.as_slice()).copy())).collect()
    };
    (named(&t.params.grad), named(&t.params.master), r.loss, r.soft_loss.unwrap())
}

fn assert_close(what: &str, name: &str, got: &Tensor, want: &Tensor, rel: f64) {
    let scale = want.abs().max().double_value(&[]);
    let err = (got - want).abs().max().double_value(&[]);
    assert!(err <= rel * scale.max(1e-12), "{what} {name}: differs by {err}, max {scale}");
}

/// 8 micro-batches of 2 sequences, no clipping (the gradient left is the raw one).
fn pipelined_student() -> RunConfig {
    let mut cfg = student(2, Some(0.5));
    cfg.train.batch_size = 16;
    cfg.train.micro_batch_size = 2;
    cfg.train.optim.grad_clip = 0.0;
    cfg
}

/// Every stage of every replica against the single process after one step.
fn check_against_one_process(cfg: &RunConfig, replicas: usize, schedule: ScheduleKind) {
    let (want_grads, want_weights, want_loss, want_soft) = reference(cfg);
    let replicas = Replicas { count: replicas, shard_optimizer: false };
    let per_stage = run_replicated(cfg, &layouts(&cfg.model, 2), replicas, schedule, &[Device::Cpu], |w: &mut Worker| {
        let r = w.train_step()?;
        Ok((w.named_grads(), w.named_weights(), r, w.teacher.is_some(), w.model.layout.head))
    })
    .unwrap();
    for (s, (grads, weights, r, has_teacher, head)) in per_stage.iter().enumerate() {
        assert_eq!(has_teacher, head, "stage {s}: the last stage of each replica holds the teacher");
        assert!((r.loss - want_loss).abs() <= 1e-5 * want_loss, "stage {s} loss {} vs {want_loss}", r.loss);
        let soft = r.soft_loss.expect("the soft loss, agreed");
        assert!((soft - want_soft).abs() <= 1e-5 * want_soft, "stage {s} soft loss {soft} vs {want_soft}");
        for ((name, g), (_, w)) in grads.iter().zip(weights) {
            assert_close("gradient", name, g, &want_grads[name], 1e-5);
            // AdamW's first step moves every weight by about the learning rate whatever the size of
            // its gradient, so the gradients' rounding shows more in the weights
            assert_close("updated weight", name, w, &want_weights[name], 1e-4);
        }
    }
}

#[test]
fn a_pipeline_and_its_replicas_distill_as_one_process_does() {
    tch::set_num_threads(1);
    let cfg = pipelined_student();
    check_against_one_process(&cfg, 1, ScheduleKind::OneFOneB);
    check_against_one_process(&cfg, 2, ScheduleKind::GPipe);
    // recomputing the blocks in the backward gives the same gradient, in one process and in a
    // pipeline
    let mut recomputed = cfg.clone();
    recomputed.train.activation_checkpointing = true;
    let (kept, _, loss, soft) = reference(&cfg);
    let (again, _, loss_again, soft_again) = reference(&recomputed);
    assert!((loss - loss_again).abs() <= 1e-6 && (soft - soft_again).abs() <= 1e-6, "{loss} {soft} vs {loss_again} {soft_again}");
    for (name, g) in &again {
        assert_close("recomputed gradient", name, g, &kept[name], 1e-5);
    }
    check_against_one_process(&recomputed, 1, ScheduleKind::OneFOneB);
}

#[test]
fn either_block_teaches_and_learns_in_a_pipeline_as_in_one_process() {
    tch::set_num_threads(1);
    let llama = |m: &mut ModelConfig| (m.norm, m.feed_forward) = (Norm::RmsNorm, FeedForward::Swiglu);
    // a student with Llama's block, taught by the GPT-2-block teacher
    let mut cfg = pipelined_student();
    llama(&mut cfg.model);
    check_against_one_process(&cfg, 1, ScheduleKind::OneFOneB);
    // a GPT-2-block student taught by a teacher with Llama's block (briefly trained)
    let mut teacher = teacher_model();
    llama(&mut teacher);
    let root = temp_dir("distill-llama-teacher");
    let mut t = Worker::single(small_run(teacher.clone(), 20, Some(root.clone())), Device::Cpu).unwrap();
    for _ in 0..20 {
        t.train_step().unwrap();
    }
    t.save_checkpoint().unwrap().expect("the teacher's checkpoint");
    let mut cfg = pipelined_student();
    cfg.distill = Some(DistillConfig { teacher, checkpoint: root.clone(), loss: DistillLoss { temperature: 2.0, soft_weight: 0.5 } });
    check_against_one_process(&cfg, 1, ScheduleKind::OneFOneB);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_bf16_student_learns_from_a_bf16_teacher() {
    tch::set_num_threads(1);
    let mut cfg = student(4, Some(0.5));
    cfg.train.precision = Precision::Bf16;
    let mut t = Worker::single(cfg, Device::Cpu).unwrap();
    let teacher = t.teacher.as_ref().unwrap();
    assert_eq!(teacher.params.compute_kind, Kind::BFloat16);
    assert_eq!(teacher.params.master.numel(), 0, "a frozen teacher keeps only its bf16 weights");
    let x = t.data.as_ref().unwrap().validation(4)[0].inputs.shallow_clone();
    let logits = teacher.logits(&x);
    assert_eq!(logits.kind(), Kind::Float);
    let fp32 = Teacher::load(&distill(0.5), &small_model(false), Device::Cpu, Kind::Float).unwrap();
    let err = (&logits - fp32.logits(&x)).abs().max().double_value(&[]);
    assert!(err < 0.25, "bf16 logits differ from fp32 by {err}");
    let reports: Vec<_> = (0..4).map(|_| t.train_step().unwrap()).collect();
    assert!(reports.iter().all(|r| r.loss.is_finite() && r.soft_loss.is_some_and(f64::is_finite)), "{reports:?}");
    assert!(reports[3].loss < reports[0].loss, "{reports:?}");
}

#[test]
fn a_resumed_distilled_run_continues_the_uninterrupted_one() {
    tch::set_num_threads(1);
    let total = 6;
    let mut straight = Worker::single(student(total, Some(0.5)), Device::Cpu).unwrap();
    let reference: Vec<f64> = (0..total).map(|_| straight.train_step().unwrap().loss).collect();
    let dir = temp_dir("distill-resume");
    let mut cfg = student(total, Some(0.5));
    cfg.checkpoint_dir = Some(dir.clone());
    let mut first = Worker::single(cfg.clone(), Device::Cpu).unwrap();
    let mut resumed: Vec<f64> = (0..3).map(|_| first.train_step().unwrap().loss).collect();
    let saved = first.save_checkpoint().unwrap().unwrap();
    drop(first);
    let mut second = Worker::single(cfg.clone(), Device::Cpu).unwrap();
    assert_eq!(second.resume_latest().unwrap(), Some(3));
    resumed.extend((3..total).map(|_| second.train_step().unwrap().loss));
    for (i, (a, b)) in reference.iter().zip(&resumed).enumerate() {
        assert!((a - b).abs() <= 1e-5, "step {}: uninterrupted {a}, resumed {b}", i + 1);
    }
    assert!(reference[5] < reference[0] - 0.1, "{reference:?}");
    // the checkpoint is the student's alone, in the format of any run: an undistilled run of the
    // same model reads it
    let mut files: Vec<String> = std::fs::read_dir(&saved).unwrap().map(|f| f.unwrap().file_name().to_string_lossy().into_owned()).collect();
    files.sort();
    assert_eq!(files, ["MANIFEST.json", "stage-0.model.safetensors", "stage-0.optimizer.safetensors", "trainer.json"]);
    let weights = Tensor::read_safetensors(saved.join("stage-0.model.safetensors")).unwrap();
    assert_eq!(weights.len(), second.params.specs.len());
    let mut plain = Worker::single(small_run(small_model(false), total, None), Device::Cpu).unwrap();
    plain.restore(&saved).unwrap();
    assert_eq!(plain.step, 3);

    // a pipelined distilled run: two steps, a checkpoint, a third; resumed from the checkpoint,
    // the third again
    let cfg = pipelined_student();
    let root = dir.join("pipelined");
    let r = root.clone();
    let straight = run_in_process(&cfg, &layouts(&cfg.model, 2), ScheduleKind::OneFOneB, &[Device::Cpu], move |w: &mut Worker| {
        w.train_step()?;
        w.train_step()?;
        w.save_checkpoint_in(&r, 2)?;
        Ok((w.train_step()?.loss, w.named_weights()))
    })
    .unwrap();
    let d = frugal_trainer::checkpoint::latest(&root).unwrap().unwrap();
    let resumed = run_in_process(&cfg, &layouts(&cfg.model, 2), ScheduleKind::OneFOneB, &[Device::Cpu], move |w: &mut Worker| {
        assert_eq!(w.restore(&d)?.step, 2);
        Ok((w.train_step()?.loss, w.named_weights()))
    })
    .unwrap();
    for ((want_loss, want), (loss, got)) in straight.iter().zip(&resumed) {
        assert!((loss - want_loss).abs() <= 1e-5 * want_loss, "resumed loss {loss} vs {want_loss}");
        for ((name, w), (_, g)) in want.iter().zip(got) {
            assert_close("weight after resuming", name, g, w, 1e-5);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A teacher checkpoint written by a pipeline loads whole, under no stages at all.
#[test]
fn a_pipelined_teacher_checkpoint_loads_whole() {
    tch::set_num_threads(1);
    let root = temp_dir("distill-pipelined-teacher");
    let cfg = small_run(teacher_model(), 1, None);
    let r = root.clone();
    let stages = run_in_process(&cfg, &layouts(&cfg.model, 2), ScheduleKind::OneFOneB, &[Device::Cpu], move |w: &mut Worker| {
        w.train_step()?;
        w.save_checkpoint_in(&r, 1)?;
        Ok(w.named_weights())
    })
    .unwrap();
    let want: Named = stages.into_iter().flatten().collect();
    let d = DistillConfig { checkpoint: root.clone(), ..distill(0.5) };
    let teacher = Teacher::load(&d, &small_model(false), Device::Cpu, Kind::Float).unwrap();
    assert_eq!((teacher.step, teacher.params.specs.len()), (1, want.len()));
    for (i, s) in teacher.params.specs.iter().enumerate() {
        assert!(teacher.params.master_view(i).equal(&want[&s.name]), "{}", s.name);
    }
    let _ = std::fs::remove_dir_all(&root);
}

/// A job of the student distilled from the teacher `model` at `checkpoint`.
fn job_yaml(model: &str, checkpoint: &Path, parallelism: &str) -> String {
    format!(
        r#"
apiVersion: frugal.dev/v1alpha1
kind: TrainingJob
metadata: {{name: distilled}}
spec:
  model:
    type: Custom
    custom: {{layers: 2, dModel: 32, heads: 2, seqLen: 16, ffnHidden: 64, positions: learned, bias: true}}
  data: {{source: {{type: Synthetic, synthetic: {{branching: 4, tokens: 50000}}}}}}
  parallelism: {parallelism}
  training:
    duration: {{type: Steps, steps: 4}}
    batchSize: 8
    precision: fp32
    seed: 7
    evalInterval: 2
    logInterval: 1
  distill:
    teacher: {{model: {model}, checkpoint: {}}}
    temperature: 2.0
    softWeight: 0.5
  resources: {{device: CPU}}
"#,
        checkpoint.display()
    )
}

fn refusal(e: anyhow::Error) -> String {
    let config = e.chain().find_map(|c| c.downcast_ref::<ConfigurationError>()).unwrap_or_else(|| panic!("not a configuration error: {e:#}"));
    config.0.clone()
}

#[test]
fn a_teacher_that_cannot_teach_is_refused_naming_the_field() {
    tch::set_num_threads(1);
    let dir = temp_dir("distill-refused");
    let job = |model: &str, checkpoint: &Path| job::parse(&job_yaml(model, checkpoint, "{}")).unwrap();
    let good = job(TEACHER_YAML, teacher());
    assert_eq!(good.plan.teacher, Some(teacher_model()), "TEACHER_YAML is the teacher's model");
    good.check_inputs().unwrap();
    let check = |model: &str, checkpoint: &Path| job(model, checkpoint).check_inputs().unwrap_err().0;

    let e = check(&TEACHER_YAML.replace("bias: true", "bias: true, vocabSize: 300"), teacher());
    assert!(e.contains("spec.distill.teacher.model has a vocabulary of 300 tokens and the student's model 257"), "{e}");
    let e = check(&TEACHER_YAML.replace("seqLen: 16", "seqLen: 8"), teacher());
    assert!(e.contains("spec.distill.teacher.model reads a context of 8 tokens, shorter than the student's 16"), "{e}");
    let e = check(TEACHER_YAML, &dir.join("nowhere"));
    assert!(e.contains("spec.distill.teacher.checkpoint") && e.contains("cannot be read"), "{e}");
    let e = check(TEACHER_YAML, &dir);
    assert!(e.contains("spec.distill.teacher.checkpoint") && e.contains("holds no committed checkpoint"), "{e}");

    // another model than the checkpoint's
    let narrow = job(&TEACHER_YAML.replace("dModel: 64", "dModel: 48"), teacher());
    narrow.check_inputs().unwrap();
    let e = refusal(Worker::single(narrow.run_config(Some(dir.join("c"))).unwrap(), Device::Cpu).err().unwrap());
    assert!(e.contains("spec.distill.teacher.model does not match the checkpoint") && e.contains("fingerprint"), "{e}");

    // a corrupt checkpoint, in one process and in a pipeline (whose first stage learns why)
    let step = frugal_trainer::checkpoint::latest(teacher()).unwrap().unwrap();
    let corrupt = dir.join("corrupt").join("step-000000300");
    std::fs::create_dir_all(&corrupt).unwrap();
    for f in std::fs::read_dir(&step).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), corrupt.join(f.file_name())).unwrap();
    }
    let weights = corrupt.join("stage-0.model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&weights, bytes).unwrap();
    let mut cfg = student(1, Some(0.5));
    cfg.distill.as_mut().unwrap().checkpoint = corrupt.clone();
    let e = refusal(Worker::single(cfg.clone(), Device::Cpu).err().unwrap());
    assert!(e.contains("spec.distill.teacher.checkpoint") && e.contains("corrupt") && e.contains("stage-0.model.safetensors"), "{e}");
    let e = run_in_process(&cfg, &layouts(&cfg.model, 2), ScheduleKind::OneFOneB, &[Device::Cpu], |w: &mut Worker| w.train_step().map(|_| ()))
        .unwrap_err();
    let e = refusal(e);
    assert!(e.contains("spec.distill.teacher.checkpoint") && e.contains("corrupt"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `frugal-trainer train` of a pipelined distilled job: the run reports its teacher (from the
/// last stage) at the start and beside each evaluation, and prices the teacher's forward in.
#[test]
fn the_trainer_runs_a_pipelined_distilled_job_and_reports_its_teacher() {
    let dir = temp_dir("distill-cli");
    let yaml = job_yaml(TEACHER_YAML, teacher(), "{pipelineStages: 2, schedule: 1f1b, microBatches: 4}");
    let path = dir.join("job.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_frugal-trainer"))
        .args(["train", path.to_str().unwrap(), "--threads", "1", "--json", "--checkpoint-dir", dir.join("c").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    let first_step = kinds.iter().position(|k| *k == "step").unwrap();
    assert!(kinds[..first_step].contains(&"distillation"), "{kinds:?}");
    let reports: Vec<&serde_json::Value> = events.iter().filter(|e| e["event"] == "distillation").collect();
    assert_eq!(reports.len(), 3, "{kinds:?}");
    assert!(reports[0]["teacherCheckpoint"].as_str().unwrap().ends_with("step-000000300"), "{}", reports[0]);
    assert!(reports[0]["teacherTokensPerSecond"].as_f64().unwrap() > 0.0 && reports[0]["studentTokensPerSecond"].as_f64().unwrap() > 0.0);
    let teacher_bpb = reports[0]["teacher"]["bitsPerByte"].as_f64().unwrap();
    let last_eval = events.iter().rfind(|e| e["event"] == "eval").unwrap();
    let delta = reports[2]["bitsPerByteDelta"].as_f64().unwrap();
    assert!((delta - (last_eval["bits_per_byte"].as_f64().unwrap() - teacher_bpb)).abs() < 1e-9, "{delta}");
    // the teacher's figures are those the same job in one process finds
    let one = job::parse(&job_yaml(TEACHER_YAML, teacher(), "{microBatches: 4}")).unwrap().run_config(Some(dir.join("one"))).unwrap();
    let one = Worker::single(one, Device::Cpu).unwrap();
    let teacher = one.teacher.as_ref().unwrap();
    let q = frugal_trainer::eval::evaluate(&teacher.language_model(), one.data.as_ref().unwrap(), &[], 7, TEACHER_STEPS, 16).unwrap();
    assert!((q.bits_per_byte.unwrap() - teacher_bpb).abs() < 1e-6, "{q:?} vs {teacher_bpb}");
    // the steps carry the soft loss; the start prices the teacher's forward in, as the plan does
    assert!(events.iter().filter(|e| e["event"] == "step").all(|s| s["soft_loss"].as_f64().is_some_and(|l| l > 0.0)));
    let plan = job::parse(&yaml).unwrap().plan;
    let start = events.iter().find(|e| e["event"] == "start").unwrap();
    assert_eq!(start["flops_per_token"].as_f64(), Some(plan.flops_per_token));
    assert!(plan.flops_per_token > small_model(false).flops_per_token());
    let _ = std::fs::remove_dir_all(&dir);
}
