//! The GPU table: memory, peak throughput and a list price per GPU type.
//!
//! Peaks are the vendors' dense (no structured sparsity) figures; prices are typical on-demand
//! cloud prices per GPU-hour in USD, overridable by a TrainingBudget.

use crate::v1alpha1::Precision;

/// One GPU type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpuType {
    pub name: &'static str,
    /// Memory the device reports, in bytes.
    pub memory_bytes: i64,
    /// Dense bf16 / fp16 tensor-core peak, TFLOP/s.
    pub peak_tflops_16bit: f64,
    /// fp32 peak (TF32 tensor cores where the trainer allows them), TFLOP/s.
    pub peak_tflops_fp32: f64,
    /// Whether the GPU computes in bf16.
    pub bf16: bool,
    /// List price of one GPU-hour, USD.
    pub usd_per_hour: f64,
}

const MIB: i64 = 1 << 20;

pub const GPU_TYPES: &[GpuType] = &[
    GpuType {
        name: "nvidia-h100-80gb",
        memory_bytes: 81_559 * MIB,
        peak_tflops_16bit: 989.0,
        peak_tflops_fp32: 494.0,
        bf16: true,
        usd_per_hour: 2.50,
    },
    GpuType {
        name: "nvidia-h200-141gb",
        memory_bytes: 143_771 * MIB,
        peak_tflops_16bit: 989.0,
        peak_tflops_fp32: 494.0,
        bf16: true,
        usd_per_hour: 3.50,
    },
    GpuType {
        name: "nvidia-a100-80gb",
        memory_bytes: 81_920 * MIB,
        peak_tflops_16bit: 312.0,
        peak_tflops_fp32: 156.0,
        bf16: true,
        usd_per_hour: 1.80,
    },
    GpuType {
        name: "nvidia-a100-40gb",
        memory_bytes: 40_960 * MIB,
        peak_tflops_16bit: 312.0,
        peak_tflops_fp32: 156.0,
        bf16: true,
        usd_per_hour: 1.30,
    },
    GpuType {
        name: "nvidia-l40s-48gb",
        memory_bytes: 46_068 * MIB,
        peak_tflops_16bit: 362.0,
        peak_tflops_fp32: 183.0,
        bf16: true,
        usd_per_hour: 1.20,
    },
    GpuType { name: "nvidia-l4-24gb", memory_bytes: 23_034 * MIB, peak_tflops_16bit: 121.0, peak_tflops_fp32: 60.0, bf16: true, usd_per_hour: 0.80 },
    GpuType { name: "nvidia-a10g-24gb", memory_bytes: 23_028 * MIB, peak_tflops_16bit: 70.0, peak_tflops_fp32: 35.0, bf16: true, usd_per_hour: 1.00 },
    GpuType { name: "nvidia-t4-16gb", memory_bytes: 15_360 * MIB, peak_tflops_16bit: 65.0, peak_tflops_fp32: 8.1, bf16: false, usd_per_hour: 0.35 },
];

/// The names the table knows, for error messages.
pub fn gpu_type_names() -> Vec<&'static str> {
    GPU_TYPES.iter().map(|g| g.name).collect()
}

pub fn gpu_type(name: &str) -> Option<&'static GpuType> {
    GPU_TYPES.iter().find(|g| g.name == name)
}

impl GpuType {
    /// Peak TFLOP/s at a compute precision.
    pub fn peak_tflops(&self, precision: Precision) -> f64 {
        match precision {
            Precision::Bf16 | Precision::Fp16 => self.peak_tflops_16bit,
            Precision::Fp32 => self.peak_tflops_fp32,
        }
    }
}
