//! Parameter and FLOP counts of the model, and the peak the MFU is measured against.

use serde::Serialize;
use std::sync::Mutex;
use tch::{Device, Kind, Tensor};

#[derive(Clone, Debug, Serialize)]
pub struct ModelCounts {
    /// Parameters of the whole model (the planner's count, which a test checks against the model
    /// as built).
    pub params_total: i64,
    /// Parameters one token passes through (routed experts count top-k of E).
    pub params_active: i64,
    /// Training FLOPs per token (forward + backward, without recomputation), the planner's
    /// formula: 6 × matmul weights a token meets (head included, embedding lookups not) plus
    /// 12 · d · (keys attended) per layer; distilling, plus the teacher's forward.
    pub flops_per_token: f64,
}

/// Peak FLOP/s for MFU, and where it comes from: `FRUGAL_PEAK_TFLOPS` if set; the datasheet
/// dense figure of a known GPU (bf16, half of it for fp32); a measured matmul rate on another GPU;
/// on a CPU, [`cpu_peak`] in the compute dtype with libtorch's threads.
pub fn peak_flops(device: Device, kind: Kind) -> (f64, String) {
    if let Some(t) = std::env::var("FRUGAL_PEAK_TFLOPS").ok().and_then(|v| v.parse::<f64>().ok()) {
        return (t * 1e12, "FRUGAL_PEAK_TFLOPS".into());
    }
    if !device.is_cuda() {
        let threads = i64::from(tch::get_num_threads().max(1));
        let peak = cpu_peak(kind, threads);
        return (peak.flops(), peak.to_string());
    }
    if let Some(name) = gpu_name() {
        let table = [("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L4", 121e12), ("A10", 125e12), ("L40S", 362e12)];
        for (k, v) in table {
            if name.contains(k) {
                let v = if kind == Kind::Float { v / 2.0 } else { v };
                return (v, format!("{name} datasheet"));
            }
        }
    }
    (measure_gpu_matmul(device, kind), "measured matmul".into())
}

fn gpu_name() -> Option<String> {
    let out = std::process::Command::new("nvidia-smi").args(["--query-gpu=name", "--format=csv,noheader"]).output().ok()?;
    Some(String::from_utf8_lossy(&out.stdout).lines().next()?.trim().to_string())
}

fn measure_gpu_matmul(device: Device, kind: Kind) -> f64 {
    let n = 4096;
    let a = Tensor::ones([n, n], (kind, device));
    let b = Tensor::ones([n, n], (kind, device));
    let _ = a.matmul(&b); // warm up
    let reps = 20;
    let t0 = std::time::Instant::now();
    let mut c = a.matmul(&b);
    for _ in 1..reps {
        c = a.matmul(&b);
    }
    let _ = c.sum(Kind::Float).double_value(&[]);
    let secs = t0.elapsed().as_secs_f64();
    2.0 * (n * n * n) as f64 * reps as f64 / secs
}

/// A CPU's peak: what one thread does at best, times the threads the trainer runs.
#[derive(Clone, Debug, PartialEq)]
pub struct CpuPeak {
    /// The best FLOP/s of one thread on a matrix product in the compute dtype.
    pub per_thread: f64,
    pub threads: i64,
    pub kind: Kind,
}

impl CpuPeak {
    pub fn flops(&self) -> f64 {
        self.per_thread * self.threads as f64
    }
}

impl std::fmt::Display for CpuPeak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.3} TFLOP/s: {} threads × {:.1} GFLOP/s, the best {:?} matmul of one thread in CPU time",
            self.flops() / 1e12,
            self.threads,
            self.per_thread / 1e9,
            self.kind
        )
    }
}

/// The `[m, k] × [k, n]` products [`cpu_peak`] times: squares, and the tokens × width × 4·width
/// shapes of a small model's layers, on which oneDNN's bf16 (AMX) kernels run faster than on any
/// square.
pub const PEAK_SHAPES: [(i64, i64, i64); 5] = [(256, 256, 256), (512, 512, 512), (1024, 1024, 1024), (2048, 256, 1024), (2048, 1024, 256)];

/// Measures a CPU's peak for `threads` threads computing in `kind`.
///
/// A one-off timed matmul on all threads measures the machine's load as much as the machine:
/// on a busy machine it comes out low and MFU above 1 later. Here one thread runs square matmuls
/// of a few shapes ([`PEAK_SHAPES`]: the best shape differs by dtype and kernel), five times each, timed in the calling thread's CPU time (with one
/// libtorch thread the product runs on the caller), which does not count time other threads and
/// processes hold the core; the fastest is the rate of one thread. The peak is
/// that rate times the threads: a thread on a shared cache and memory bus never beats a thread
/// alone, so no training step's FLOP/s can exceed it, and load lowers MFU, not the peak.
pub fn cpu_peak(kind: Kind, threads: i64) -> CpuPeak {
    // libtorch's thread count is global: measurements running at once (trainers in one process)
    // take turns, so each puts back the count it found.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let before = tch::get_num_threads();
    tch::set_num_threads(1);
    let mut best: f64 = 0.0;
    for (m, k, n) in PEAK_SHAPES {
        let a = Tensor::ones([m, k], (kind, Device::Cpu));
        let b = Tensor::ones([k, n], (kind, Device::Cpu));
        let _ = a.matmul(&b); // warm up: kernels chosen, pages touched
        for _ in 0..5 {
            let t0 = thread_cpu_seconds();
            let c = a.matmul(&b);
            let seconds = thread_cpu_seconds() - t0;
            drop(c);
            if seconds > 0.0 {
                best = best.max(2.0 * (m * k * n) as f64 / seconds);
            }
        }
    }
    tch::set_num_threads(before);
    CpuPeak { per_thread: best, threads, kind }
}

/// CPU time the calling thread has used.
fn thread_cpu_seconds() -> f64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

#[cfg(test)]
mod tests {
    use super::*;

    // How the peak compares with all-thread matmuls and with a busy machine is a measurement,
    // not a test (`cargo run --release -p frugal-trainer --example cpu_peak`): timings under a
    // shared machine's load cannot make a test that fails only when the code is wrong.
    #[test]
    fn the_cpu_peak_is_one_threads_rate_times_the_threads_in_the_compute_dtype() {
        let threads = i64::from(tch::get_num_threads().max(1));
        for kind in [Kind::Float, Kind::BFloat16] {
            let peak = cpu_peak(kind, threads);
            assert_eq!((peak.kind, peak.threads), (kind, threads));
            assert!(peak.per_thread > 1e8, "{peak}");
            assert_eq!(peak.flops(), peak.per_thread * threads as f64);
            assert_eq!(tch::get_num_threads(), threads as i32, "the thread count is put back");
        }
        let (flops, source) = peak_flops(Device::Cpu, Kind::BFloat16);
        assert!(flops > 0.0 && source.contains("BFloat16") && source.contains(&format!("{threads} threads")), "{source}");
    }
}
