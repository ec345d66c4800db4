//! The pipeline's measured bubble against theory, and 1F1B's activation memory against GPipe's.
//!
//!   cargo bench -p frugal-trainer --bench pipeline_bubble -- [steps]
//!
//! Stages run on threads of one process on the CPU, one intra-op thread each, so that a stage is
//! one core; with more stages than cores they share cores and the measurement says so. For each
//! stage count p and micro-batch count m, every stage records its busy time (forward, backward,
//! optimizer) and the step's wall time; the measured bubble is 1 − Σ busy / (p × wall), printed
//! beside (p − 1)/(m + p − 1) and beside the bubble the schedule simulator gives with the
//! measured per-action costs. Memory: each schedule runs in a child process and reports its peak
//! resident set (VmHWM), a 4-stage pipeline with 8 micro-batches and no recomputation.

use frugal_api::planner::bubble_fraction;
use frugal_trainer::config::*;
use frugal_trainer::parallel::schedule::{schedule, simulate};
use frugal_trainer::parallel::{ScheduleKind, Worker, layouts, run_in_process};
use std::process::Command;
use tch::Device;

fn run_config(layers: i64, micro_batches: i64, micro_batch_size: i64, steps: i64) -> RunConfig {
    let mut model = nano_model(256);
    model.layers = layers;
    synthetic_run("pipeline-bench", model, steps, micro_batches * micro_batch_size, micro_batch_size)
}

/// (measured bubble, per-stage busy seconds per step, wall seconds per step, simulated bubble).
fn measure(p: usize, m: i64, kind: ScheduleKind, steps: i64) -> (f64, Vec<f64>, f64, f64) {
    let cfg = run_config(4, m, 4, steps + 1);
    let per_stage = run_in_process(&cfg, &layouts(&cfg.model, p), kind, &[Device::Cpu], move |w: &mut Worker| {
        w.train_step()?; // warm-up
        let (mut busy, mut wall) = (0.0, 0.0);
        for _ in 0..steps {
            let r = w.train_step()?;
            busy += r.busy_seconds.expect("a stage measures its busy time");
            wall += r.seconds;
        }
        Ok((busy / steps as f64, wall / steps as f64))
    })
    .expect("pipeline runs");
    let busy: Vec<f64> = per_stage.iter().map(|x| x.0).collect();
    let wall = per_stage.iter().map(|x| x.1).fold(0.0, f64::max);
    let measured = 1.0 - busy.iter().sum::<f64>() / (p as f64 * wall);
    // The schedule simulated with the measured mean cost of one micro-batch (backward ≈ 2 × forward).
    let per_mb = busy.iter().cloned().fold(0.0, f64::max) / m as f64;
    let simulated = simulate(&schedule(kind, p, m as usize), per_mb / 3.0, 2.0 * per_mb / 3.0).unwrap().bubble();
    (measured, busy, wall, simulated)
}

fn peak_rss_kib() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn memory_child(kind: ScheduleKind) {
    let cfg = run_config(4, 8, 16, 2);
    let held = run_in_process(&cfg, &layouts(&cfg.model, 4), kind, &[Device::Cpu], |w: &mut Worker| {
        let mut peak = 0;
        for _ in 0..2 {
            w.train_step()?;
            peak = peak.max(w.peak_in_flight);
        }
        Ok(peak)
    })
    .expect("pipeline runs");
    println!("{} {:?}", peak_rss_kib(), held);
}

fn main() {
    tch::set_num_threads(1);
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    if args.first().map(String::as_str) == Some("memory-child") {
        memory_child(if args[1] == "gpipe" { ScheduleKind::GPipe } else { ScheduleKind::OneFOneB });
        return;
    }
    let steps: i64 = args.first().and_then(|s| s.parse().ok()).unwrap_or(3);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("# pipeline bubble, nano GPT (4 layers, d=128, context 64), 4 sequences per micro-batch, {cores} cores, {steps} steps");
    println!("| schedule | p | m | theory (p−1)/(m+p−1) | simulated | measured | wall ms/step | busy ms/step per stage |");
    println!("|---|---|---|---|---|---|---|---|");
    for kind in [ScheduleKind::OneFOneB, ScheduleKind::GPipe] {
        for p in [2usize, 4] {
            for m in [4i64, 8, 12, 16] {
                let (measured, busy, wall, simulated) = measure(p, m, kind, steps);
                let busy: Vec<String> = busy.iter().map(|b| format!("{:.0}", b * 1e3)).collect();
                println!(
                    "| {kind:?} | {p} | {m} | {:.3} | {simulated:.3} | {measured:.3} | {:.0} | {} |{}",
                    bubble_fraction(p as i64, m),
                    wall * 1e3,
                    busy.join(" / "),
                    if p > cores { " oversubscribed" } else { "" }
                );
            }
        }
    }
    println!();
    println!("# peak memory, 4 stages, 8 micro-batches of 16 sequences, no recomputation");
    let exe = std::env::current_exe().unwrap();
    for (name, kind) in [("gpipe", "GPipe"), ("1f1b", "OneFOneB")] {
        let out = Command::new(&exe).args(["memory-child", name]).output().expect("child runs");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut parts = text.trim().splitn(2, ' ');
        let kib: f64 = parts.next().unwrap_or("0").parse().unwrap_or(0.0);
        println!("{kind}: peak resident {:.1} MiB, micro-batches held per stage {}", kib / 1024.0, parts.next().unwrap_or("?"));
    }
}
