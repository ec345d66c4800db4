//! How the CPU peak that MFU is measured against compares with what the machine does: for fp32
//! and bf16, the peak (`flops::cpu_peak`, one thread's best matmul in CPU time × threads) against
//! the best wall-clock rate of all-thread matmuls of square and model-like shapes, and the peak
//! measured again beside spinning threads. Reports, does not judge.
//!
//! `cargo run --release -p frugal-trainer --example cpu_peak -- [threads]`

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use frugal_trainer::train::flops::{PEAK_SHAPES, cpu_peak};
use tch::{Device, Kind, Tensor};

/// The best wall-clock FLOP/s of `[m, k] × [k, n]` on all of libtorch's threads.
fn wall_rate(kind: Kind, m: i64, k: i64, n: i64) -> f64 {
    let a = Tensor::ones([m, k], (kind, Device::Cpu));
    let b = Tensor::ones([k, n], (kind, Device::Cpu));
    let _ = a.matmul(&b);
    (0..5)
        .map(|_| {
            let t0 = Instant::now();
            let _c = a.matmul(&b);
            2.0 * (m * k * n) as f64 / t0.elapsed().as_secs_f64()
        })
        .fold(0.0, f64::max)
}

fn main() {
    if let Some(threads) = std::env::args().nth(1).and_then(|t| t.parse().ok()) {
        tch::set_num_threads(threads);
    }
    let threads = i64::from(tch::get_num_threads().max(1));
    for kind in [Kind::Float, Kind::BFloat16] {
        let peak = cpu_peak(kind, threads);
        println!("{kind:?} peak: {peak}");
        for (m, k, n) in PEAK_SHAPES.into_iter().chain([(4096, 512, 2048)]) {
            let rate = wall_rate(kind, m, k, n);
            println!("  {m}×{k}×{n} on {threads} threads: {:.1} GFLOP/s = {:.2} of the peak", rate / 1e9, rate / peak.flops());
        }
        let stop = Arc::new(AtomicBool::new(false));
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let spinners: Vec<_> = (0..2 * cores)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                    }
                })
            })
            .collect();
        let busy = cpu_peak(kind, threads);
        stop.store(true, Ordering::Relaxed);
        for s in spinners {
            s.join().unwrap();
        }
        println!("  measured beside {} spinning threads: {busy} ({:.2} of the quiet one)", 2 * cores, busy.flops() / peak.flops());
    }
}
