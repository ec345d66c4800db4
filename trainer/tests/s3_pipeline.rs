//! Checkpoints of a pipeline whose stages run in processes of their own, each with its own
//! checkpoint directory (pods without a shared volume), and one bucket: SeaweedFS, as in
//! `tests/s3.rs`. Each stage uploads its own part; the first stage writes the step's manifest
//! only once every part is in the bucket; a resume into empty directories brings each stage
//! its own part and the same weights, bit for bit; a corrupt part of the newest step makes
//! every stage resume the step before. Stage processes are this test binary re-run as
//! `s3_stage_process`.
//!
//! Without the SeaweedFS binary these tests say so and pass, unless `FRUGAL_REQUIRE_S3` is set.

mod common;
#[path = "support/seaweedfs.rs"]
mod seaweedfs;

use anyhow::Context as _;
use common::*;
use frugal_api::store::{Location, Store};
use frugal_api::v1alpha1::ObjectStoreSpec;
use frugal_trainer::checkpoint::remote::{self, Uploader};
use frugal_trainer::checkpoint::{Tensors, pipelined};
use frugal_trainer::config::RunConfig;
use frugal_trainer::parallel::checkpoint::RunState;
use frugal_trainer::parallel::{ProcessStages, Replicas, ScheduleKind, Worker, layouts};
use seaweedfs::{ACCESS_KEY, FIELD, SECRET_KEY, SeaweedFs};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tch::Tensor;

const TOKEN: &str = "s3-pipeline-token";

/// Four layers with tied embeddings (the last stage's copy loads from the first stage's part),
/// checkpointing every two steps, keeping two.
fn pipeline_run() -> RunConfig {
    let mut model = small_model(false);
    model.layers = 4;
    let mut cfg = small_run(model, 4, None);
    cfg.train.micro_batch_size = 2;
    cfg.keep_checkpoints = 2;
    cfg
}

fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    held.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

fn open_store(endpoint: &str, uri: &str) -> Store {
    let spec = ObjectStoreSpec { uri: uri.into(), endpoint: Some(endpoint.into()), region: Some("us-east-1".into()), credentials_secret: None };
    let vars = [("AWS_ACCESS_KEY_ID".to_string(), ACCESS_KEY.to_string()), ("AWS_SECRET_ACCESS_KEY".to_string(), SECRET_KEY.to_string())];
    Location::of(FIELD, &spec).unwrap().open_with(vars).unwrap()
}

/// One stage of one replica, when the test binary is started as a stage process: resumes from
/// the bucket (its own directory), writes what it resumed, then trains `FRUGAL_TEST_STEPS` more
/// steps checkpointing every second step (each checkpoint's weights written beside it).
#[test]
fn s3_stage_process() {
    let Ok(out) = std::env::var("FRUGAL_TEST_S3PP_DIR") else { return };
    tch::set_num_threads(1);
    let out = PathBuf::from(out);
    let var = |k: &str| std::env::var(k).unwrap();
    let num = |k: &str| -> usize { var(k).parse().unwrap() };
    let (replica, replicas, stage, stages, steps) =
        (num("FRUGAL_TEST_REPLICA"), num("FRUGAL_TEST_REPLICAS"), num("FRUGAL_TEST_STAGE"), num("FRUGAL_TEST_STAGES"), num("FRUGAL_TEST_STEPS"));
    let ports: Vec<u16> = var("FRUGAL_TEST_PORTS").split(',').map(|p| p.parse().unwrap()).collect();
    let port = |r: usize, s: usize, ring: usize| format!("127.0.0.1:{}", ports[2 * (r * stages + s) + ring]);
    let mut cfg: RunConfig = serde_json::from_slice(&std::fs::read(out.join("run.json")).unwrap()).unwrap();
    // a directory of its own, as an emptyDir in a pod of its own
    cfg.checkpoint_dir = Some(PathBuf::from(var("FRUGAL_TEST_CKPT")));
    // no store when the URI is empty
    let (endpoint, uri) = (var("FRUGAL_TEST_S3_ENDPOINT"), var("FRUGAL_TEST_S3_URI"));
    if !uri.is_empty() {
        cfg.checkpoint_store = Some(ObjectStoreSpec { uri: uri.clone(), endpoint: Some(endpoint.clone()), region: None, credentials_secret: None });
    }
    let process = ProcessStages {
        layouts: layouts(&cfg.model, stages),
        first: stage,
        count: 1,
        listen: (stage > 0).then(|| port(replica, stage, 0)),
        downstream: (stage + 1 < stages).then(|| port(replica, stage + 1, 0)),
        token: TOKEN.as_bytes().to_vec(),
        timeout: Duration::from_secs(120),
        replicas: Replicas { count: replicas, shard_optimizer: false },
        replica,
        all_replicas_here: false,
        ring_listen: (replicas > 1).then(|| port(replica, stage, 1)),
        ring_next: (replicas > 1).then(|| port((replica + 1) % replicas, stage, 1)),
    };
    let result = process.run(&cfg, ScheduleKind::OneFOneB, &[tch::Device::Cpu], move |w: &mut Worker| {
        let keep = w.cfg.keep_checkpoints;
        if !uri.is_empty() {
            w.uploader = Some(Uploader::new(open_store(&endpoint, &uri), keep));
        }
        let tag = format!("{}-{}-{}", std::env::var("FRUGAL_TEST_RUN").unwrap(), w.replica, w.index());
        if std::env::var("FRUGAL_TEST_MODE").as_deref() == Ok("run") {
            return run_loop(w, &out.join(format!("events-{tag}")));
        }
        if std::env::var("FRUGAL_TEST_MODE").as_deref() == Ok("export") {
            return export_loop(w, &out.join(format!("exported-{tag}")));
        }
        let resumed = w.resume()?;
        std::fs::write(out.join(format!("resumed-{tag}")), resumed.as_ref().map_or(-1, |r| r.step).to_string())?;
        std::fs::write(out.join(format!("skipped-{tag}")), w.skipped_checkpoints.join("\n"))?;
        Tensor::write_safetensors(&[("master", &w.params.master)], out.join(format!("weights-{tag}-{}.safetensors", w.step)))?;
        for _ in 0..steps {
            w.train_step()?;
            if w.step % 2 == 0 {
                w.save_checkpoint()?;
                // sealed as a part: the stages share no directory
                anyhow::ensure!(w.sealed_part == (w.replica == 0), "replica {} stage {}: sealed_part {}", w.replica, w.index(), w.sealed_part);
                Tensor::write_safetensors(&[("master", &w.params.master)], out.join(format!("weights-{tag}-{}.safetensors", w.step)))?;
                Tensor::write_safetensors(&w.named_weights(), out.join(format!("named-{tag}-{}.safetensors", w.step)))?;
            }
            w.poll_upload();
        }
        anyhow::ensure!(w.wait_for_upload(None), "an upload did not finish");
        Ok(())
    });
    if let Err(e) = result {
        eprintln!("replica {replica} stage {stage} error: {e:#}");
        std::process::exit(3);
    }
}

/// The job's run loop (`parallel::run::run`, as in a pod), checkpointing every second step; the
/// reporting part writes the `checkpoint` events it emitted to `events`, a line each: the step
/// and where it is.
fn run_loop(w: &mut Worker, events: &Path) -> anyhow::Result<()> {
    use frugal_trainer::parallel::run::{Session, run};
    use frugal_trainer::report::event::RunEvent;
    use frugal_trainer::report::{Reporter, metrics::Metrics};
    w.cfg.train.checkpoint_interval = 2;
    let (sink, received) = std::sync::mpsc::channel();
    let mut reporter = w.reports().then(|| Reporter::new(w.cfg.train.steps, true).with_sink(Some(sink)));
    let (stop, metrics) = (std::sync::atomic::AtomicBool::new(false), Metrics::new("s3-pipeline"));
    let session = Session { stop: &stop, reporter: reporter.as_mut(), metrics: &metrics, max_steps: None, resume: true, metrics_port: None };
    run(w, session)?;
    drop(reporter);
    let lines: Vec<String> = received
        .try_iter()
        .filter_map(|e| match e {
            RunEvent::Checkpoint(c) => Some(format!("{} {}", c.step, c.path)),
            _ => None,
        })
        .collect();
    if w.reports() {
        std::fs::write(events, lines.join("\n"))?;
    }
    Ok(())
}

/// A job's whole run (`parallel::run::train_job`) with an export: the export records the
/// newest committed step it found under the checkpoint root and the files in it.
fn export_loop(w: &mut Worker, exported: &Path) -> anyhow::Result<()> {
    use frugal_trainer::parallel::run::{Exports, JobRun, Output, train_job};
    use frugal_trainer::report::metrics::Metrics;
    w.cfg.train.checkpoint_interval = 2;
    let exported = exported.to_path_buf();
    let export = move |root: &Path| -> anyhow::Result<Exports> {
        let step = frugal_trainer::checkpoint::latest(root)?.context("no committed step to export")?;
        std::fs::write(&exported, format!("{}\n{}", step.file_name().unwrap().to_string_lossy(), names_in(&step).join("\n")))?;
        Ok(Exports::default())
    };
    let job = JobRun {
        status: None,
        evaluation: Default::default(),
        output: Output { json: true, report: None },
        metrics: Metrics::new("s3-pipeline"),
        metrics_port: None,
        stop: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
        max_steps: None,
        export: Some(std::sync::Arc::new(export)),
    };
    train_job(w, &job)?;
    Ok(())
}

/// Runs `replicas` × `stages` stage processes, each with the checkpoint directory
/// `<out>/<name>-<replica>-<stage>`, resuming from `s3` and training `steps` steps.
fn run_stages(out: &Path, s3: &SeaweedFs, uri: &str, replicas: usize, stages: usize, name: &str, steps: i64) {
    for (r, s, ok, err) in spawn_stages(out, &s3.endpoint, uri, replicas, stages, name, steps) {
        assert!(ok, "{name}: replica {r} stage {s} failed: {err}");
    }
}

/// [`run_stages`]' processes (with the store at `endpoint`, none when `uri` is empty), each one's
/// replica, stage, success and stderr.
fn spawn_stages(out: &Path, endpoint: &str, uri: &str, replicas: usize, stages: usize, name: &str, steps: i64) -> Vec<(usize, usize, bool, String)> {
    let ports = free_ports(2 * replicas * stages).iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",");
    let mut children: Vec<(usize, usize, Child)> = vec![];
    for r in 0..replicas {
        for s in 0..stages {
            let child = Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "s3_stage_process", "--nocapture", "--test-threads=1"])
                .env("FRUGAL_TEST_S3PP_DIR", out)
                .env("FRUGAL_TEST_CKPT", out.join(format!("{name}-{r}-{s}")))
                .env("FRUGAL_TEST_REPLICA", r.to_string())
                .env("FRUGAL_TEST_REPLICAS", replicas.to_string())
                .env("FRUGAL_TEST_STAGE", s.to_string())
                .env("FRUGAL_TEST_STAGES", stages.to_string())
                .env("FRUGAL_TEST_STEPS", steps.to_string())
                .env("FRUGAL_TEST_RUN", name)
                .env("FRUGAL_TEST_PORTS", &ports)
                .env("FRUGAL_TEST_S3_ENDPOINT", endpoint)
                .env("FRUGAL_TEST_S3_URI", uri)
                .env("FRUGAL_PART_WAIT_SECONDS", "60")
                .env(
                    "FRUGAL_TEST_MODE",
                    if name.starts_with("loop") {
                        "run"
                    } else if name.starts_with("export") {
                        "export"
                    } else {
                        "steps"
                    },
                )
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            children.push((r, s, child));
        }
    }
    children
        .into_iter()
        .map(|(r, s, c)| {
            let o = c.wait_with_output().unwrap();
            (r, s, o.status.success(), String::from_utf8_lossy(&o.stderr).into_owned())
        })
        .collect()
}

/// Without a store, stages that do not share a directory cannot commit a step: the first
/// checkpoint stops the run saying what it needs.
#[test]
fn stages_in_their_own_directories_without_a_store_stop_saying_what_they_need() {
    let out = temp_dir("s3-pp-no-store");
    std::fs::write(out.join("run.json"), serde_json::to_vec(&pipeline_run()).unwrap()).unwrap();
    let ran = spawn_stages(&out, "", "", 1, 2, "alone", 2);
    assert!(ran.iter().all(|(_, _, ok, _)| !ok), "a stage went on");
    let (_, _, _, first) = &ran[0];
    assert!(first.contains("does not see the other stages' parts") && first.contains("spec.checkpoint.store"), "{first}");
    assert!(!out.join("alone-0-0/step-000000002").exists());
    let _ = std::fs::remove_dir_all(&out);
}

fn weights(out: &Path, run: &str, replica: usize, stage: usize, step: i64) -> Tensor {
    let path = out.join(format!("weights-{run}-{replica}-{stage}-{step}.safetensors"));
    Tensor::read_safetensors(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).remove(0).1
}

fn read(out: &Path, what: &str, run: &str, replica: usize, stage: usize) -> String {
    std::fs::read_to_string(out.join(format!("{what}-{run}-{replica}-{stage}"))).unwrap()
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).map(|d| d.map(|e| e.unwrap().file_name().into_string().unwrap()).collect()).unwrap_or_default();
    names.sort();
    names
}

/// The stages of `replicas` × 2, each in a process with a directory of its own: one step in
/// the bucket holds every stage's part, a resume into empty directories brings each stage its
/// own part and the same weights, and a corrupt part of the newest step makes every stage
/// resume the step before.
fn stages_in_their_own_directories(name: &str, replicas: usize) {
    tch::set_num_threads(1);
    let Some(s3) = SeaweedFs::start(name, "pipeline") else { return };
    let uri = "s3://pipeline/team/run";
    let store = s3.store("team/run", SECRET_KEY);
    let out = temp_dir(name);
    std::fs::write(out.join("run.json"), serde_json::to_vec(&pipeline_run()).unwrap()).unwrap();

    // Train 4 steps, checkpoints at 2 and 4.
    run_stages(&out, &s3, uri, replicas, 2, "writer", 4);
    assert_eq!(remote::committed(&store).unwrap(), [2, 4]);
    let in_bucket = store.list("step-000000004").unwrap();
    for f in ["stage-0.model.safetensors", "stage-0.optimizer.safetensors", "stage-1.model.safetensors", "stage-1.optimizer.safetensors"] {
        assert!(in_bucket.contains(&format!("step-000000004/{f}")), "{f} is not in the bucket: {in_bucket:?}");
    }
    // No directory holds the whole step: each stage of the first replica sealed its own part.
    for s in 0..2 {
        let dir = out.join(format!("writer-0-{s}"));
        assert!(!dir.join("step-000000004").exists(), "stage {s}'s directory holds a committed step");
        let part = names_in(&dir.join(".step-000000004.part-".to_string() + &s.to_string()));
        let other = format!("stage-{}.model.safetensors", 1 - s);
        assert!(part.contains(&format!("stage-{s}.model.safetensors")) && !part.contains(&other), "stage {s}'s part: {part:?}");
    }

    // The pods are gone with their directories; new ones resume from the bucket.
    run_stages(&out, &s3, uri, replicas, 2, "reader", 0);
    for r in 0..replicas {
        for s in 0..2 {
            assert_eq!(read(&out, "resumed", "reader", r, s), "4", "replica {r} stage {s}");
            let (got, saved) = (weights(&out, "reader", r, s, 4), weights(&out, "writer", 0, s, 4));
            assert!(got.equal(&saved), "replica {r} stage {s}: resumed weights differ from the saved ones");
        }
    }
    // Each directory holds its own stage's part (and the last stage the first stage's, which its
    // tied embedding loads from), not the other's.
    let first = names_in(&out.join("reader-0-0/step-000000004"));
    assert!(first.contains(&"stage-0.model.safetensors".into()) && !first.contains(&"stage-1.model.safetensors".into()), "{first:?}");
    assert!(first.contains(&"PARTIAL".into()), "{first:?}");

    // One process of one stage (another stage count) resumes the same step from the bucket,
    // bringing every part.
    let alone = temp_dir(&format!("{name}-alone"));
    let mut cfg = pipeline_run();
    cfg.checkpoint_dir = Some(alone.clone());
    cfg.checkpoint_store = Some(s3.spec("team/run"));
    let mut one = Worker::single(cfg, tch::Device::Cpu).unwrap();
    one.uploader = Some(Uploader::new(store.clone(), 2));
    assert_eq!(one.resume_latest().unwrap(), Some(4));
    let whole: std::collections::BTreeMap<String, Tensor> = one.named_weights().into_iter().collect();
    for s in 0..2 {
        for (n, t) in Tensor::read_safetensors(out.join(format!("named-writer-0-{s}-4.safetensors"))).unwrap() {
            assert!(t.equal(&whole[&n]), "{n} of stage {s} differs in one process");
        }
    }
    assert!(!alone.join("step-000000004").join("PARTIAL").exists(), "one process holds every stage: the whole step comes down");
    let _ = std::fs::remove_dir_all(&alone);

    // One flipped byte in stage 1's part of step 4: every stage resumes step 2.
    let name = "step-000000004/stage-1.optimizer.safetensors";
    let local = out.join("corrupt");
    store.get_file(name, &local).unwrap();
    let mut bytes = std::fs::read(&local).unwrap();
    let at = bytes.len() - 5;
    bytes[at] ^= 0x40;
    std::fs::write(&local, bytes).unwrap();
    store.put_file(name, &local).unwrap();
    run_stages(&out, &s3, uri, replicas, 2, "fallback", 0);
    for r in 0..replicas {
        for s in 0..2 {
            assert_eq!(read(&out, "resumed", "fallback", r, s), "2", "replica {r} stage {s} did not fall back");
            let (got, saved) = (weights(&out, "fallback", r, s, 2), weights(&out, "writer", 0, s, 2));
            assert!(got.equal(&saved), "replica {r} stage {s}: step 2's weights differ");
        }
    }
    let skipped = read(&out, "skipped", "fallback", 0, 0);
    assert!(skipped.contains("step-000000004") && skipped.contains("another stage's part"), "stage 0: {skipped}");
    let skipped = read(&out, "skipped", "fallback", 0, 1);
    assert!(skipped.contains("stage-1.optimizer.safetensors") && skipped.contains("SHA-256"), "stage 1: {skipped}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn two_stages_in_their_own_directories_commit_and_resume_one_step() {
    stages_in_their_own_directories("s3-pp-2x1", 1);
}

#[test]
fn two_stages_by_two_replicas_in_their_own_directories_commit_and_resume_one_step() {
    stages_in_their_own_directories("s3-pp-2x2", 2);
}

/// A pipeline whose stages share no volume, trained by the job's run loop: the stage that
/// reports (the last) is not the one that commits (the first), and still tells the status
/// which step the bucket holds, as it does for a step committed on a shared volume.
#[test]
fn the_reporting_stage_names_the_step_the_first_stage_committed_in_the_bucket() {
    tch::set_num_threads(1);
    let Some(s3) = SeaweedFs::start("s3-pp-loop", "looped") else { return };
    let uri = "s3://looped/lm";
    let out = temp_dir("s3-pp-loop");
    std::fs::write(out.join("run.json"), serde_json::to_vec(&pipeline_run()).unwrap()).unwrap();
    run_stages(&out, &s3, uri, 1, 2, "loop", 4);
    assert_eq!(remote::committed(&s3.store("lm", SECRET_KEY)).unwrap(), [2, 4]);
    let events = std::fs::read_to_string(out.join("events-loop-0-1")).unwrap();
    let last = events.lines().last().unwrap_or_default();
    assert_eq!(last, "4 s3://looped/lm/step-000000004", "the reporting stage's checkpoint events: {events:?}");
    // Only steps in the bucket (an upload that finished while a newer one was saved is passed
    // over for it): the stages' own directories hold parts, never a committed step to name.
    assert!(events.lines().all(|l| l.contains(" s3://looped/lm/step-")), "{events:?}");
    let _ = std::fs::remove_dir_all(&out);
}

/// A job whose stages share no volume exports its final model: the reporting stage holds only
/// its own part of the final step, so it takes the step whole from the bucket first.
#[test]
fn the_reporting_stage_exports_the_final_step_taken_whole_from_the_bucket() {
    tch::set_num_threads(1);
    let Some(s3) = SeaweedFs::start("s3-pp-export", "exported") else { return };
    let out = temp_dir("s3-pp-export");
    std::fs::write(out.join("run.json"), serde_json::to_vec(&pipeline_run()).unwrap()).unwrap();
    run_stages(&out, &s3, "s3://exported/lm", 1, 2, "export", 4);
    assert_eq!(remote::committed(&s3.store("lm", SECRET_KEY)).unwrap(), [2, 4]);
    let exported = std::fs::read_to_string(out.join("exported-export-0-1")).unwrap();
    let mut lines = exported.lines();
    assert_eq!(lines.next(), Some("step-000000004"), "{exported}");
    let files: Vec<&str> = lines.collect();
    for f in ["MANIFEST.json", "stage-0.model.safetensors", "stage-1.model.safetensors"] {
        assert!(files.contains(&f), "the exported step lacks {f}: {files:?}");
    }
    assert!(!files.contains(&"PARTIAL"), "{files:?}");
    // the first stage, which committed, exports nothing
    assert!(!out.join("exported-export-0-0").exists());
    let _ = std::fs::remove_dir_all(&out);
}

/// A sealed part of step `step` for stage `stage` of two, of the write `write_id`, under `root`.
fn part(root: &Path, step: i64, stage: usize, write_id: &str) -> PathBuf {
    let t = |v: f32| Tensor::from_slice(&[v; 64]);
    let tensors = Tensors { weights: vec![(format!("w{stage}"), t(stage as f32))], optimizer: vec![(format!("m.w{stage}"), t(0.5))] };
    pipelined::write_part(root, step, stage, &tensors).unwrap();
    let state = RunState {
        step,
        tokens: 1,
        data: None,
        loss_scaler: frugal_trainer::train::precision::LossScaler::new(frugal_trainer::config::Precision::Fp32),
        optimizer_updates: step,
        stages: 2,
        job: "t".into(),
    };
    let of = pipelined::PartOf { step, stage, stages: 2, model_fingerprint: "fp", write_id };
    pipelined::seal_part(root, &of, (stage == 0).then_some(&state), 2).unwrap()
}

/// The first stage commits a step only once every stage's part of the same write is in the
/// bucket: a part missing, half uploaded, or left by another write keeps the step out of sight,
/// and so does a part of a new write of a committed step.
#[test]
fn a_step_is_committed_only_once_every_stage_part_is_in_the_bucket() {
    let Some(s3) = SeaweedFs::start("s3-pp-commit", "commit") else { return };
    let store = s3.store("lm", SECRET_KEY);
    let (a, b) = (temp_dir("s3-pp-commit-0"), temp_dir("s3-pp-commit-1"));
    let short = Duration::from_secs(1);

    // Stage 0's part alone: the first stage gives up waiting, and nothing is committed.
    let p0 = part(&a, 4, 0, "77");
    let err = remote::upload_part(&store, &p0, 0, 2, short).unwrap_err().to_string();
    assert!(err.contains("stages [1]") && err.contains("not committed"), "{err}");
    assert!(remote::committed(&store).unwrap().is_empty());

    // Stage 1's files are going up, its part manifest not yet: still nothing.
    let p1 = part(&b, 4, 1, "77");
    store.put_file("step-000000004/stage-1.model.safetensors", &p1.join("stage-1.model.safetensors")).unwrap();
    assert!(remote::upload_part(&store, &p0, 0, 2, short).is_err());
    assert!(remote::committed(&store).unwrap().is_empty());

    // A part of another write of the same step (an earlier attempt) does not count.
    let stale = part(&temp_dir("s3-pp-commit-stale"), 4, 1, "12");
    remote::upload_part(&store, &stale, 1, 2, short).unwrap();
    assert!(remote::upload_part(&store, &p0, 0, 2, short).is_err());
    assert!(remote::committed(&store).unwrap().is_empty());

    // Stage 1's part of this write, uploaded while stage 0 waits: stage 0 commits the step.
    let waiting = {
        let (store, p0) = (store.clone(), p0.clone());
        std::thread::spawn(move || remote::upload_part(&store, &p0, 0, 2, Duration::from_secs(30)))
    };
    std::thread::sleep(Duration::from_millis(500));
    assert!(remote::committed(&store).unwrap().is_empty());
    let up1 = remote::upload_part(&store, &p1, 1, 2, short).unwrap();
    assert!(!up1.committed);
    let up0 = waiting.join().unwrap().unwrap();
    assert!(up0.committed && up0.uri.ends_with("lm/step-000000004"), "{up0:?}");
    assert_eq!(remote::committed(&store).unwrap(), [4]);

    // A reader brings the whole step back and it verifies.
    let reader = temp_dir("s3-pp-commit-reader");
    let fetched = remote::fetch(&store, &reader).unwrap();
    assert_eq!(fetched.step, Some(4), "{:?}", fetched.corrupt);
    let manifest = frugal_trainer::checkpoint::verify(&reader.join("step-000000004"), frugal_trainer::checkpoint::Layout::Pipelined).unwrap();
    assert_eq!(manifest.stages, Some(2));

    // The step written again (a run resumed from an older step): the second stage's new part
    // takes the old manifest away before it goes up, so no reader pairs the two.
    let again = temp_dir("s3-pp-commit-again");
    remote::upload_part(&store, &part(&again, 4, 1, "78"), 1, 2, short).unwrap();
    assert!(remote::committed(&store).unwrap().is_empty());
    for d in [a, b, reader, again] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// Pruning after a commit leaves the parts of a newer step alone: another stage may be uploading
/// into it (a stage uploads one step at a time, and a step is committed only once every part of
/// it is up, so every part still going up is of a newer step).
#[test]
fn pruning_leaves_the_parts_of_a_newer_step_alone() {
    let Some(s3) = SeaweedFs::start("s3-pp-prune", "prune") else { return };
    let store = s3.store("run", SECRET_KEY);
    let (a, b) = (temp_dir("s3-pp-prune-0"), temp_dir("s3-pp-prune-1"));
    let short = Duration::from_secs(5);
    // step 2, committed
    remote::upload_part(&store, &part(&b, 2, 1, "2"), 1, 1, short).unwrap();
    assert!(remote::upload_part(&store, &part(&a, 2, 0, "2"), 0, 1, short).unwrap().committed);
    // the second stage is a step ahead: its parts of steps 4 and 6 are up before the first
    // stage commits step 4, keeping one step
    remote::upload_part(&store, &part(&b, 4, 1, "4"), 1, 1, short).unwrap();
    remote::upload_part(&store, &part(&b, 6, 1, "6"), 1, 1, short).unwrap();
    let up = remote::upload_part(&store, &part(&a, 4, 0, "4"), 0, 1, short).unwrap();
    assert_eq!(up.pruned, [2]);
    assert_eq!(remote::committed(&store).unwrap(), [4]);
    assert!(store.list("step-000000002").unwrap().is_empty(), "the pruned step's parts are gone");
    let newer = store.list("step-000000006").unwrap();
    assert_eq!(newer.len(), 3, "stage 1's part of step 6 (two files and its part manifest): {newer:?}");
    for d in [a, b] {
        let _ = std::fs::remove_dir_all(d);
    }
}
