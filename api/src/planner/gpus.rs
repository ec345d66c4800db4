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

/// The table's GPU type of a node labelled `nvidia.com/gpu.product=<product>` by NVIDIA's GPU
/// feature discovery ("NVIDIA-H100-80GB-HBM3", "NVIDIA-A100-SXM4-40GB", "Tesla-T4"): the entry
/// whose model is one of the label's words, and whose memory is too where two entries share a
/// model. `None` for a product the table does not know.
pub fn gpu_type_of_product(product: &str) -> Option<&'static GpuType> {
    let lower = product.to_ascii_lowercase();
    let words: Vec<&str> = lower.split(|c: char| !c.is_ascii_alphanumeric()).filter(|w| !w.is_empty()).collect();
    let parts = |g: &GpuType| -> (&'static str, &'static str) {
        let mut it = g.name.split('-').skip(1);
        (it.next().unwrap_or_default(), it.next().unwrap_or_default())
    };
    let same_model: Vec<&'static GpuType> = GPU_TYPES.iter().filter(|g| words.contains(&parts(g).0)).collect();
    same_model.iter().find(|g| words.contains(&parts(g).1)).or(same_model.first()).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_product_labels_name_the_tables_types() {
        let cases = [
            ("NVIDIA-H100-80GB-HBM3", Some("nvidia-h100-80gb")),
            ("NVIDIA-H200", Some("nvidia-h200-141gb")),
            ("NVIDIA-A100-SXM4-40GB", Some("nvidia-a100-40gb")),
            ("NVIDIA-A100-PCIE-80GB", Some("nvidia-a100-80gb")),
            ("NVIDIA-L40S", Some("nvidia-l40s-48gb")),
            ("NVIDIA-L4", Some("nvidia-l4-24gb")),
            ("Tesla-T4", Some("nvidia-t4-16gb")),
            ("NVIDIA-B200", None),
            ("", None),
        ];
        for (label, want) in cases {
            assert_eq!(gpu_type_of_product(label).map(|g| g.name), want, "{label}");
        }
    }
}
