//! Milliseconds per training step of 2 replicas × 2 stages as four processes linked over
//! loopback TCP (pipeline links and rings), the way four pods run: what the transport costs a
//! step, handshakes aside. The model and batch are `benches/data_parallel.rs`'s (nano GPT,
//! 4 layers, d=128, context 64; 16 sequences a step in micro-batches of 4; fp32), one intra-op
//! thread per process. Prints, as one JSON line, the median over steps of the slowest rank's
//! step time, each rank's median, and the CPU time all four processes used per step (every
//! thread, link readers included), which the machine's other load moves far less than the
//! wall time.
//!
//!   cargo run --release -p frugal-trainer --example pipeline_tcp_steps -- [steps] [warm-up steps]
//!
//! `bench/ab-pipeline-tcp.sh` runs two builds of it alternately (default 40 steps, 5 warm-up).

use frugal_trainer::config::*;
use frugal_trainer::parallel::{ProcessStages, Replicas, ScheduleKind, Worker, layouts};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::Duration;
use tch::Device;

const REPLICAS: usize = 2;
const STAGES: usize = 2;
const TOKEN: &str = "bench-token-of-the-job";

fn run_config(steps: i64) -> RunConfig {
    synthetic_run("pipeline-tcp-steps", nano_model(256), steps, 16, 4)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// CPU seconds this process has used, all its threads (link readers included).
fn cpu_seconds() -> f64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct it is given.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// One rank: trains `steps` steps and prints, on one line, the CPU milliseconds per step it
/// used after the warm-up, then each step's milliseconds.
fn rank(replica: usize, stage: usize, steps: i64, warmup: usize, ports: &[u16]) {
    tch::set_num_threads(1);
    // ports[2 · (r · STAGES + s)]: the pipeline port of stage s of replica r; + 1: its ring port
    let port = |r: usize, s: usize, ring: usize| format!("127.0.0.1:{}", ports[2 * (r * STAGES + s) + ring]);
    let cfg = run_config(steps);
    let process = ProcessStages {
        layouts: layouts(&cfg.model, STAGES),
        first: stage,
        count: 1,
        listen: (stage > 0).then(|| port(replica, stage, 0)),
        downstream: (stage + 1 < STAGES).then(|| port(replica, stage + 1, 0)),
        token: TOKEN.as_bytes().to_vec(),
        timeout: Duration::from_secs(120),
        replicas: Replicas { count: REPLICAS, shard_optimizer: false },
        replica,
        all_replicas_here: false,
        ring_listen: Some(port(replica, stage, 1)),
        ring_next: Some(port((replica + 1) % REPLICAS, stage, 1)),
    };
    let mut ranks = process
        .run(&cfg, ScheduleKind::OneFOneB, &[Device::Cpu], move |w: &mut Worker| {
            let mut times = vec![];
            let mut cpu = 0.0;
            for step in 0..w.cfg.train.steps as usize {
                if step == warmup {
                    cpu = cpu_seconds();
                }
                times.push(w.train_step()?.seconds * 1e3);
            }
            Ok((times, (cpu_seconds() - cpu) * 1e3 / (w.cfg.train.steps as usize - warmup) as f64))
        })
        .expect("the rank trains");
    let (times, cpu_ms) = ranks.remove(0);
    let line: Vec<String> = std::iter::once(cpu_ms).chain(times).map(|ms| format!("{ms:.3}")).collect();
    println!("{}", line.join(" "));
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let steps: i64 = args.first().and_then(|s| s.parse().ok()).unwrap_or(40);
    let warmup: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(5);
    if let Ok(at) = std::env::var("FRUGAL_BENCH_RANK") {
        let (r, s) = at.split_once(',').expect("FRUGAL_BENCH_RANK=replica,stage");
        let ports: Vec<u16> = std::env::var("FRUGAL_BENCH_PORTS").unwrap().split(',').map(|p| p.parse().unwrap()).collect();
        return rank(r.parse().unwrap(), s.parse().unwrap(), steps, warmup, &ports);
    }
    let held: Vec<TcpListener> = (0..2 * REPLICAS * STAGES).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let ports = held.iter().map(|l| l.local_addr().unwrap().port().to_string()).collect::<Vec<_>>().join(",");
    drop(held);
    let children: Vec<_> = (0..REPLICAS)
        .flat_map(|r| (0..STAGES).map(move |s| (r, s)))
        .map(|(r, s)| {
            Command::new(std::env::current_exe().unwrap())
                .args([steps.to_string(), warmup.to_string()])
                .env("FRUGAL_BENCH_RANK", format!("{r},{s}"))
                .env("FRUGAL_BENCH_PORTS", &ports)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // Per rank: CPU ms per step, then each step's ms.
    let ranks: Vec<Vec<f64>> = children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            assert!(out.status.success(), "a rank failed");
            String::from_utf8_lossy(&out.stdout).split_whitespace().map(|t| t.parse().unwrap()).collect()
        })
        .collect();
    let slowest: Vec<f64> = (1 + warmup..=steps as usize).map(|i| ranks.iter().map(|r| r[i]).fold(0.0, f64::max)).collect();
    let per_rank: Vec<String> = ranks.iter().map(|r| format!("{:.2}", median(r[1 + warmup..].to_vec()))).collect();
    println!(
        "{{\"replicas\":{REPLICAS},\"stages\":{STAGES},\"steps\":{},\"median_ms_per_step\":{:.2},\"cpu_ms_per_step\":{:.2},\"rank_median_ms\":[{}]}}",
        slowest.len(),
        median(slowest),
        ranks.iter().map(|r| r[0]).sum::<f64>(),
        per_rank.join(",")
    );
}
