//! Data parallelism: replicas of the pipeline, each on its share of the batch, averaging their
//! gradients over rings. Against one process training the whole batch: the same gradients, the
//! same updates and the same loss step for step, in threads and over TCP between processes; the
//! optimizer state sharded across replicas changes nothing but its memory; a checkpoint resumes
//! under other replica and stage counts; a killed replica stops every rank, naming it. Replica
//! processes are this test binary re-run as `replica_process`.

mod common;

use common::*;
use frugal_trainer::config::RunConfig;
use frugal_trainer::parallel::{ProcessStages, Replicas, ScheduleKind, Worker, layouts, run_replicated};
use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tch::{Device, Tensor};

type Named = BTreeMap<String, Tensor>;

/// 4 layers, all MoE, tied embeddings, fp32; 16 sequences a step in micro-batches of 2.
fn dp_run(steps: i64, clip: f64) -> RunConfig {
    let mut model = small_model(true);
    model.layers = 4;
    let mut cfg = small_run(model, steps, None);
    cfg.train.batch_size = 16;
    cfg.train.micro_batch_size = 2;
    cfg.train.optim.grad_clip = clip;
    cfg
}

fn named(t: &Worker, flat: &Tensor) -> Named {
    t.params.specs.iter().map(|s| (s.name.clone(), flat.narrow(0, s.offset, s.numel()).view(s.shape.as_slice()).copy())).collect()
}

fn assert_close(what: &str, name: &str, got: &Tensor, want: &Tensor, rel: f64) {
    let scale = want.abs().max().double_value(&[]);
    let err = (got - want).abs().max().double_value(&[]);
    assert!(err <= rel * scale.max(1e-12), "{what} {name}: differs by {err}, max {scale}");
}

/// One process's first step: gradients, updated weights, loss.
fn reference(cfg: &RunConfig) -> (Named, Named, f64) {
    let mut t = Worker::single(cfg.clone(), Device::Cpu).unwrap();
    let r = t.train_step().unwrap();
    (named(&t, &t.params.grad), named(&t, &t.params.master), r.loss)
}

#[test]
fn replicas_of_the_pipeline_match_one_process() {
    tch::set_num_threads(1);
    let cfg = dp_run(1, 0.0);
    let (want_grads, want_weights, want_loss) = reference(&cfg);
    for (replicas, stages, shard) in [(2, 2, false), (2, 1, false), (4, 1, false), (2, 2, true), (4, 2, true)] {
        let what = format!("{replicas} replicas × {stages} stages{}", if shard { ", sharded optimizer" } else { "" });
        let ranks = run_replicated(
            &cfg,
            &layouts(&cfg.model, stages),
            Replicas { count: replicas, shard_optimizer: shard },
            ScheduleKind::OneFOneB,
            &[Device::Cpu],
            |w: &mut Worker| {
                w.bucket_elements = 1000; // several buckets, one not a multiple of the replicas
                let r = w.train_step()?;
                Ok((w.replica, w.named_grads(), w.named_weights(), r.loss, w.optim.state_bytes()))
            },
        )
        .unwrap();
        assert_eq!(ranks.len(), replicas * stages);
        let mut seen = BTreeMap::new();
        let mut state = [0i64; 4];
        for (replica, grads, weights, loss, bytes) in &ranks {
            assert!((loss - want_loss).abs() <= 1e-5 * want_loss, "{what}: replica {replica} loss {loss} vs {want_loss}");
            for ((name, g), (_, w)) in grads.iter().zip(weights) {
                assert_close(&format!("{what}: replica {replica} gradient"), name, g, &want_grads[name], 1e-5);
                assert_close(&format!("{what}: replica {replica} updated weight"), name, w, &want_weights[name], 1e-5);
                *seen.entry(name.clone()).or_insert(0) += 1;
            }
            state[*replica] += bytes;
        }
        assert_eq!(seen.len(), want_grads.len(), "{what}: every parameter trained");
        // Sharded, each replica holds a part of the optimizer state, together all of it once.
        let whole = Worker::single(cfg.clone(), Device::Cpu).unwrap().optim.state_bytes();
        if shard {
            assert!(state[..replicas].iter().all(|&b| b < whole), "{what}: {state:?} of {whole}");
        } else {
            assert!(state[..replicas].iter().all(|&b| b >= whole), "{what}: {state:?} of {whole}");
        }
    }
}

#[test]
fn two_replicas_of_two_stages_follow_one_process_step_for_step() {
    tch::set_num_threads(1);
    let cfg = dp_run(6, 1.0); // clipped by the global norm every replica agrees on
    let mut one = Worker::single(cfg.clone(), Device::Cpu).unwrap();
    let want: Vec<f64> = (0..6).map(|_| one.train_step().unwrap().loss).collect();
    let want_weights = named(&one, &one.params.master);
    for shard in [false, true] {
        let ranks = run_replicated(
            &cfg,
            &layouts(&cfg.model, 2),
            Replicas { count: 2, shard_optimizer: shard },
            ScheduleKind::OneFOneB,
            &[Device::Cpu],
            |w: &mut Worker| {
                let losses: Vec<f64> = (0..6).map(|_| w.train_step().map(|r| r.loss)).collect::<anyhow::Result<_>>()?;
                Ok((losses, w.named_weights()))
            },
        )
        .unwrap();
        for (losses, weights) in ranks {
            for (step, (got, want)) in losses.iter().zip(&want).enumerate() {
                assert!((got - want).abs() <= 1e-5 * want, "sharded {shard}: step {} loss {got} vs {want}", step + 1);
            }
            // Adam divides by the gradient's running RMS, so elements with tiny gradients carry
            // float noise of the summation order into the weights: bound it against the step
            // size (lr = 3e-3), well below one update.
            for (name, w) in weights {
                let err = (&w - &want_weights[&name]).abs().max().double_value(&[]);
                assert!(err < 1e-5, "sharded {shard}: weight {name} after 6 steps differs by {err}");
            }
        }
    }
}

#[test]
fn a_checkpoint_resumes_under_other_replica_and_stage_counts() {
    tch::set_num_threads(1);
    let root = temp_dir("dp-ckpt");
    let cfg = dp_run(4, 1.0);
    let r = root.clone();
    // Two replicas of two stages, the optimizer state sharded: two steps, a checkpoint, a third.
    let written = run_replicated(
        &cfg,
        &layouts(&cfg.model, 2),
        Replicas { count: 2, shard_optimizer: true },
        ScheduleKind::OneFOneB,
        &[Device::Cpu],
        move |w: &mut Worker| {
            w.train_step()?;
            w.train_step()?;
            w.save_checkpoint_in(&r, 2)?;
            let third = w.train_step()?;
            Ok((third.loss, w.named_weights()))
        },
    )
    .unwrap();
    let want_loss = written[0].0;
    let want: Named = written.into_iter().flat_map(|(_, w)| w).collect();
    let dir = frugal_trainer::checkpoint::latest(&root).unwrap().expect("a committed checkpoint");
    // Only the first replica wrote: one part per stage.
    let parts =
        std::fs::read_dir(&dir).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".model.safetensors")).count();
    assert_eq!(parts, 2);
    for (replicas, stages, shard) in [(1, 2, false), (1, 1, false), (2, 1, true), (4, 4, false)] {
        let d = dir.clone();
        let resumed = run_replicated(
            &cfg,
            &layouts(&cfg.model, stages),
            Replicas { count: replicas, shard_optimizer: shard },
            ScheduleKind::GPipe,
            &[Device::Cpu],
            move |w: &mut Worker| {
                let state = w.restore(&d)?;
                assert_eq!((state.step, state.stages), (2, 2));
                let third = w.train_step()?;
                Ok((third.loss, w.named_weights()))
            },
        )
        .unwrap();
        for (loss, weights) in resumed {
            assert!((loss - want_loss).abs() <= 1e-5 * want_loss, "{replicas} × {stages}: loss {loss} vs {want_loss}");
            for (name, w) in weights {
                assert_close(&format!("{replicas} × {stages}: weight after resuming"), &name, &w, &want[&name], 1e-5);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&root);
}

// ---------------------------------------------------------------------------------------------
// over TCP, one process per stage of each replica

const TOKEN: &str = "dp-token";

fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    held.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

/// Runs one stage of one replica when the test binary is started as a replica process.
#[test]
fn replica_process() {
    let Ok(dir) = std::env::var("FRUGAL_TEST_DP_DIR") else { return };
    tch::set_num_threads(1);
    let dir = PathBuf::from(dir);
    let var = |k: &str| std::env::var(k).unwrap();
    let (replica, replicas, stage, stages): (usize, usize, usize, usize) = (
        var("FRUGAL_TEST_REPLICA").parse().unwrap(),
        var("FRUGAL_TEST_REPLICAS").parse().unwrap(),
        var("FRUGAL_TEST_STAGE").parse().unwrap(),
        var("FRUGAL_TEST_STAGES").parse().unwrap(),
    );
    let ports: Vec<u16> = var("FRUGAL_TEST_PORTS").split(',').map(|p| p.parse().unwrap()).collect();
    // ports[2 · (r · stages + s)]: the pipeline port of stage s of replica r; + 1: its ring port
    let port = |r: usize, s: usize, ring: usize| format!("127.0.0.1:{}", ports[2 * (r * stages + s) + ring]);
    let cfg: RunConfig = serde_json::from_slice(&std::fs::read(dir.join("run.json")).unwrap()).unwrap();
    let process = ProcessStages {
        layouts: layouts(&cfg.model, stages),
        first: stage,
        count: 1,
        listen: (stage > 0).then(|| port(replica, stage, 0)),
        downstream: (stage + 1 < stages).then(|| port(replica, stage + 1, 0)),
        token: TOKEN.as_bytes().to_vec(),
        timeout: Duration::from_secs(60),
        replicas: Replicas { count: replicas, shard_optimizer: false },
        replica,
        all_replicas_here: false,
        ring_listen: Some(port(replica, stage, 1)),
        ring_next: Some(port((replica + 1) % replicas, stage, 1)),
    };
    let out = dir.clone();
    let result = process.run(&cfg, ScheduleKind::OneFOneB, &[Device::Cpu], move |w: &mut Worker| {
        for step in 0..w.cfg.train.steps {
            w.train_step()?;
            if step == 0 {
                let path = out.join(format!("grads-{}-{}.safetensors", w.replica, w.index()));
                Tensor::write_safetensors(&w.named_grads(), &path)?;
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        eprintln!("replica {replica} stage {stage} error: {e:#}");
        std::process::exit(3);
    }
}

fn spawn_replicas(dir: &Path, replicas: usize, stages: usize) -> Vec<Child> {
    let ports = free_ports(2 * replicas * stages).iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",");
    let mut children = vec![];
    for r in 0..replicas {
        for s in 0..stages {
            children.push(
                Command::new(std::env::current_exe().unwrap())
                    .args(["--exact", "replica_process", "--nocapture", "--test-threads=1"])
                    .env("FRUGAL_TEST_DP_DIR", dir)
                    .env("FRUGAL_TEST_REPLICA", r.to_string())
                    .env("FRUGAL_TEST_REPLICAS", replicas.to_string())
                    .env("FRUGAL_TEST_STAGE", s.to_string())
                    .env("FRUGAL_TEST_STAGES", stages.to_string())
                    .env("FRUGAL_TEST_PORTS", &ports)
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap(),
            );
        }
    }
    children
}

fn finish(child: Child) -> (bool, String) {
    let out = child.wait_with_output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn two_replica_processes_over_tcp_match_one_process() {
    tch::set_num_threads(1);
    let cfg = dp_run(2, 0.0);
    let (want, _, _) = reference(&cfg);
    let dir = temp_dir("dp-tcp");
    std::fs::write(dir.join("run.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
    for (r, c) in spawn_replicas(&dir, 2, 1).into_iter().enumerate() {
        let (ok, err) = finish(c);
        assert!(ok, "replica {r} failed: {err}");
    }
    for r in 0..2 {
        let got = Tensor::read_safetensors(dir.join(format!("grads-{r}-0.safetensors"))).unwrap();
        assert_eq!(got.len(), want.len());
        for (name, g) in got {
            assert_close(&format!("replica {r} over TCP: gradient"), &name, &g, &want[&name], 1e-5);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_killed_replica_stops_every_rank_naming_it() {
    tch::set_num_threads(1);
    let dir = temp_dir("dp-tcp-kill");
    std::fs::write(dir.join("run.json"), serde_json::to_vec(&dp_run(100_000, 1.0)).unwrap()).unwrap();
    // 2 replicas × 2 stages, four processes; children[r · 2 + s]
    let mut children = spawn_replicas(&dir, 2, 2);
    let t0 = Instant::now();
    while !(0..2).all(|r| (0..2).all(|s| dir.join(format!("grads-{r}-{s}.safetensors")).exists())) {
        assert!(t0.elapsed() < Duration::from_secs(120), "the replicas never completed a step");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Kill stage 0 of replica 1.
    children[2].kill().unwrap();
    let _ = children[2].wait();
    let t1 = Instant::now();
    for (i, c) in children.into_iter().enumerate() {
        if i == 2 {
            continue;
        }
        let (ok, err) = finish(c);
        assert!(!ok, "rank {i} kept running after replica 1's stage 0 was killed");
        assert!(err.contains("pipeline stage 0 of replica 1 disappeared"), "rank {i} does not name the killed one: {err}");
    }
    assert!(t1.elapsed() < Duration::from_secs(30), "the others took {:?} to notice", t1.elapsed());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `frugal-trainer train` on the shipped example (2 replicas × 2 stages, the optimizer state
/// sharded) reports its replicas and the all-reduce's seconds, and its checkpoint resumes as one
/// replica of two stages.
#[test]
fn the_trainer_runs_the_data_parallel_example_and_resumes_it_as_one_replica() {
    let dir = temp_dir("dp-cli");
    let job = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/data-parallel.yaml");
    let ckpt = dir.join("checkpoints");
    let run = |extra: &[&str]| -> Vec<serde_json::Value> {
        let out = Command::new(env!("CARGO_BIN_EXE_frugal-trainer"))
            .args(["train", job.to_str().unwrap(), "--threads", "1", "--json", "--checkpoint-dir", ckpt.to_str().unwrap()])
            .args([
                "--set",
                "training.checkpointInterval=2",
                "--set",
                "training.evalInterval=100",
                "--set",
                "training.evalBatches=2",
                "--set",
                "training.logInterval=1",
            ])
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    };
    let first = run(&["--max-steps", "2"]);
    let start = first.iter().find(|e| e["event"] == "start").unwrap();
    assert_eq!((start["pipeline_stages"].as_i64(), start["replicas"].as_i64()), (Some(2), Some(2)), "{start}");
    let steps: Vec<_> = first.iter().filter(|e| e["event"] == "step").collect();
    assert_eq!(steps.len(), 2);
    assert!(steps.iter().all(|s| s["allreduce_seconds"].as_f64().is_some_and(|t| t > 0.0)), "{steps:?}");
    let committed = frugal_trainer::checkpoint::latest(&ckpt).unwrap().expect("a checkpoint");
    assert!(committed.ends_with("step-000000002"), "{}", committed.display());
    let second = run(&["--max-steps", "3", "--set", "parallelism.dataParallel=1", "--set", "parallelism.shardOptimizerState=false"]);
    let resume = second.iter().find(|e| e["event"] == "resume").expect("a resume event");
    assert_eq!(resume["step"].as_i64(), Some(2), "{resume}");
    let start = second.iter().find(|e| e["event"] == "start").unwrap();
    assert_eq!(start["replicas"].as_i64(), None, "{start}");
    assert_eq!(second.iter().find(|e| e["event"] == "step").unwrap()["step"].as_i64(), Some(3));
    let _ = std::fs::remove_dir_all(&dir);
}
