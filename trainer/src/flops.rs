//! Parameter and FLOP counts from the model as built, and the peak the MFU is measured against.

use crate::config::ModelConfig;
use crate::params::ParamStore;
use serde::Serialize;
use tch::{Device, Kind, Tensor};

#[derive(Clone, Debug, Serialize)]
pub struct ModelCounts {
    /// Parameters as built (equal to the planner's count; a test checks it).
    pub params_total: i64,
    /// Parameters one token passes through (routed experts count top-k of E).
    pub params_active: i64,
    /// Training FLOPs per token (forward + backward, without recomputation), the planner's
    /// formula: 6 × matmul weights a token meets (head included, embedding lookups not) plus
    /// 12 · d · (keys attended) per layer.
    pub flops_per_token: f64,
}

pub fn count(cfg: &ModelConfig, store: &ParamStore) -> ModelCounts {
    let planned = cfg.parameters();
    ModelCounts {
        params_total: store.total_params(),
        params_active: planned.active,
        flops_per_token: cfg.flops_per_token(),
    }
}

/// Peak FLOP/s for MFU: `FRUGAL_PEAK_TFLOPS` if set; the datasheet dense bf16 figure of a known
/// GPU; otherwise a measured fp32 matmul rate on this device (a CPU has no datasheet figure).
pub fn peak_flops(device: Device, kind: Kind) -> (f64, String) {
    if let Some(t) = std::env::var("FRUGAL_PEAK_TFLOPS").ok().and_then(|v| v.parse::<f64>().ok()) {
        return (t * 1e12, "FRUGAL_PEAK_TFLOPS".into());
    }
    if device.is_cuda() {
        if let Some(name) = gpu_name() {
            let table = [("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L4", 121e12), ("A10", 125e12), ("L40S", 362e12)];
            for (k, v) in table {
                if name.contains(k) {
                    let v = if kind == Kind::Float { v / 2.0 } else { v };
                    return (v, format!("{name} datasheet"));
                }
            }
        }
    }
    (measure_matmul(device, kind), "measured matmul".into())
}

fn gpu_name() -> Option<String> {
    let out = std::process::Command::new("nvidia-smi").args(["--query-gpu=name", "--format=csv,noheader"]).output().ok()?;
    Some(String::from_utf8_lossy(&out.stdout).lines().next()?.trim().to_string())
}

fn measure_matmul(device: Device, kind: Kind) -> f64 {
    let n = if device.is_cuda() { 4096 } else { 512 };
    let kind = if device.is_cuda() { kind } else { Kind::Float };
    let a = Tensor::ones([n, n], (kind, device));
    let b = Tensor::ones([n, n], (kind, device));
    let _ = a.matmul(&b); // warm up
    let reps = if device.is_cuda() { 20 } else { 8 };
    let t0 = std::time::Instant::now();
    let mut c = a.matmul(&b);
    for _ in 1..reps {
        c = a.matmul(&b);
    }
    let _ = c.sum(Kind::Float).double_value(&[]);
    let secs = t0.elapsed().as_secs_f64();
    2.0 * (n * n * n) as f64 * reps as f64 / secs
}
