//! The pipeline across processes over loopback TCP: the same gradients as one process, a wrong
//! token refused, and a killed stage making the others fail naming it. Stage processes are this
//! test binary re-run as `stage_process` with the stage in the environment.

mod common;

use common::*;
use frugal_trainer::config::RunConfig;
use frugal_trainer::parallel::transport::{Fault, tcp};
use frugal_trainer::parallel::{ProcessStages, Replicas, ScheduleKind, Worker, layouts};
use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tch::{Device, Tensor};

const TOKEN: &str = "s3cret-token";

fn pipeline_run(steps: i64) -> RunConfig {
    let mut model = small_model(true);
    model.layers = 4;
    let mut cfg = small_run(model, steps, None);
    cfg.train.batch_size = 16;
    cfg.train.micro_batch_size = 2;
    cfg.train.optim.grad_clip = 0.0;
    cfg
}

fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    held.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

/// Runs one stage when the test binary is started as a stage process; a no-op otherwise.
#[test]
fn stage_process() {
    let Ok(dir) = std::env::var("FRUGAL_TEST_STAGE_DIR") else { return };
    tch::set_num_threads(1);
    let dir = PathBuf::from(dir);
    let stage: usize = std::env::var("FRUGAL_TEST_STAGE").unwrap().parse().unwrap();
    let schedule = match std::env::var("FRUGAL_TEST_SCHEDULE").unwrap().as_str() {
        "gpipe" => ScheduleKind::GPipe,
        _ => ScheduleKind::OneFOneB,
    };
    let cfg: RunConfig = serde_json::from_slice(&std::fs::read(dir.join("run.json")).unwrap()).unwrap();
    let ports: Vec<u16> = std::env::var("FRUGAL_TEST_PORTS").unwrap().split(',').map(|p| p.parse().unwrap()).collect();
    let all = layouts(&cfg.model, ports.len());
    let process = ProcessStages {
        layouts: all,
        first: stage,
        count: 1,
        listen: Some(format!("127.0.0.1:{}", ports[stage])),
        downstream: ports.get(stage + 1).map(|p| format!("127.0.0.1:{p}")),
        token: std::env::var("FRUGAL_TEST_TOKEN").unwrap().into_bytes(),
        timeout: Duration::from_secs(60),
        replicas: Replicas::one(),
        replica: 0,
        all_replicas_here: false,
        ring_listen: None,
        ring_next: None,
    };
    let out = dir.clone();
    let result = process.run(&cfg, schedule, &[Device::Cpu], move |w: &mut Worker| {
        for step in 0..w.cfg.train.steps {
            w.train_step()?;
            if step == 0 {
                let grads = w.named_grads();
                let path = out.join(format!("grads-{}.safetensors", w.index()));
                Tensor::write_safetensors(&grads, &path)?;
            }
        }
        // An evaluation through the same links: the last stage writes what it measured.
        if let Some(q) = w.evaluate()? {
            std::fs::write(out.join("val_loss"), q.validation_loss.unwrap().to_string())?;
        }
        Ok(())
    });
    if let Err(e) = result {
        eprintln!("stage {stage} error: {e:#}");
        std::process::exit(3);
    }
}

fn spawn_stages(dir: &Path, stages: usize, schedule: &str, token_of: impl Fn(usize) -> String) -> Vec<Child> {
    let ports = free_ports(stages).iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",");
    (0..stages)
        .map(|s| {
            Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "stage_process", "--nocapture", "--test-threads=1"])
                .env("FRUGAL_TEST_STAGE_DIR", dir)
                .env("FRUGAL_TEST_STAGE", s.to_string())
                .env("FRUGAL_TEST_SCHEDULE", schedule)
                .env("FRUGAL_TEST_PORTS", &ports)
                .env("FRUGAL_TEST_TOKEN", token_of(s))
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect()
}

fn finish(child: Child) -> (bool, String) {
    let out = child.wait_with_output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn four_processes_over_tcp_match_one_stage() {
    tch::set_num_threads(1);
    let cfg = pipeline_run(1);
    let mut reference = Worker::single(cfg.clone(), Device::Cpu).unwrap();
    reference.train_step().unwrap();
    let want_val_loss = reference.validation_loss();
    let want: BTreeMap<String, Tensor> = reference
        .params
        .specs
        .iter()
        .map(|s| (s.name.clone(), reference.params.grad.narrow(0, s.offset, s.numel()).view(s.shape.as_slice())))
        .collect();
    for schedule in ["gpipe", "1f1b"] {
        let dir = temp_dir(&format!("pp-tcp-{schedule}"));
        std::fs::write(dir.join("run.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
        let children = spawn_stages(&dir, 4, schedule, |_| TOKEN.into());
        for (s, c) in children.into_iter().enumerate() {
            let (ok, err) = finish(c);
            assert!(ok, "{schedule} stage {s} failed: {err}");
        }
        let mut seen = 0;
        for s in 0..4 {
            for (name, got) in Tensor::read_safetensors(dir.join(format!("grads-{s}.safetensors"))).unwrap() {
                let w = &want[&name];
                let scale = w.abs().max().double_value(&[]);
                let err = (&got - w).abs().max().double_value(&[]);
                assert!(err <= 1e-5 * scale, "{schedule} stage {s} {name}: differs by {err}, max {scale}");
                seen += 1;
            }
        }
        // Every parameter once, the tied embedding twice (first and last stage).
        assert_eq!(seen, want.len() + 1, "{schedule}");
        let val_loss: f64 = std::fs::read_to_string(dir.join("val_loss")).unwrap().parse().unwrap();
        assert!((val_loss - want_val_loss).abs() <= 1e-5 * want_val_loss, "{schedule}: validation loss {val_loss} vs {want_val_loss}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn a_wrong_token_is_refused_and_the_right_peer_still_gets_in() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = std::thread::spawn(move || tcp::accept_upstream(&listener, 0, b"right", Duration::from_secs(20), &Fault::default()).map(|_| ()));
    let wrong = tcp::connect_downstream(&addr, 0, b"wrong", Duration::from_secs(20), &Fault::default());
    let err = wrong.err().expect("a wrong token must be refused").to_string();
    assert!(err.contains("refused") && err.contains("wrong token") && err.contains("stage 1"), "{err}");
    let impostor = tcp::connect_downstream(&addr, 2, b"right", Duration::from_secs(20), &Fault::default());
    let err = impostor.err().expect("the wrong stage must be refused").to_string();
    assert!(err.contains("pipeline stage 2 connected, expected pipeline stage 0"), "{err}");
    let right = tcp::connect_downstream(&addr, 0, b"right", Duration::from_secs(20), &Fault::default());
    assert!(right.is_ok(), "{:?}", right.err());
    server.join().unwrap().unwrap();
}

#[test]
fn a_killed_stage_makes_the_others_fail_naming_it() {
    tch::set_num_threads(1);
    let dir = temp_dir("pp-tcp-kill");
    std::fs::write(dir.join("run.json"), serde_json::to_vec(&pipeline_run(100_000)).unwrap()).unwrap();
    let mut children = spawn_stages(&dir, 4, "1f1b", |_| TOKEN.into());
    // Wait until the pipeline has run a step (every stage wrote its gradients), then kill stage 2.
    let t0 = Instant::now();
    while !(0..4).all(|s| dir.join(format!("grads-{s}.safetensors")).exists()) {
        assert!(t0.elapsed() < Duration::from_secs(120), "the pipeline never completed a step");
        std::thread::sleep(Duration::from_millis(50));
    }
    children[2].kill().unwrap();
    let _ = children[2].wait();
    let t1 = Instant::now();
    for (s, c) in children.into_iter().enumerate() {
        if s == 2 {
            continue;
        }
        let (ok, err) = finish(c);
        assert!(!ok, "stage {s} kept running after stage 2 was killed");
        assert!(err.contains("stage 2 disappeared"), "stage {s} does not name stage 2: {err}");
    }
    assert!(t1.elapsed() < Duration::from_secs(30), "the others took {:?} to notice", t1.elapsed());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_stage_without_the_token_stops_the_pipeline() {
    let dir = temp_dir("pp-tcp-token");
    std::fs::write(dir.join("run.json"), serde_json::to_vec(&pipeline_run(1)).unwrap()).unwrap();
    // Stage 1 connects to stage 2 with a wrong token: it is refused and fails saying so.
    let mut children = spawn_stages(&dir, 3, "1f1b", |s| if s == 1 { "forged".into() } else { TOKEN.into() });
    let stage1 = children.remove(1);
    let (ok, err) = finish(stage1);
    assert!(!ok && err.contains("wrong token"), "{err}");
    for c in children {
        let mut c = c;
        let _ = c.kill();
        let _ = c.wait();
    }
    let _ = std::fs::remove_dir_all(&dir);
}
