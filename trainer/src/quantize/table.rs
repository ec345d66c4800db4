//! The 8-bit linear layers of one model: which parameters are quantized, their codes, scales and
//! smoothing factors, and the [`Linears`] that makes the model's own forward use them.
//!
//! Quantized: every weight of the [`ParamGroup::Hidden`] group, the 2-D matrices (attention qkv
//! and proj, the dense MLP's fc and proj) and the banks of experts (routed and shared, w_in and
//! w_out, per expert). Kept in fp32: embeddings and the tied head, layer norms, biases, and the
//! MoE router, whose top-k decisions flip on small changes of its logits (a token sent to
//! another expert costs more than any rounding of the experts themselves).

use super::int8::{self, BankRef, Execution, Scratch};
use crate::params::{Linears, ParamGroup, ParamId, ParamStore};
use std::cell::RefCell;
use std::collections::BTreeMap;
use tch::{Kind, Tensor};

/// The parameters an 8-bit export quantizes, in store order.
pub fn quantized_params(store: &ParamStore) -> Vec<usize> {
    (0..store.specs.len()).filter(|&i| store.specs[i].group == ParamGroup::Hidden).collect()
}

/// A weight in the bank view [X, K, N]: a bank of experts as it is, a linear layer's [N, K]
/// as the bank of one `W^T`.
pub fn as_bank(w: &Tensor) -> Tensor {
    match w.dim() {
        2 => w.tr().unsqueeze(0),
        3 => w.shallow_clone(),
        d => panic!("a quantized weight is a matrix or a bank of them, not {d}-D"),
    }
}

/// A bank-view tensor [X, K, N] back in the parameter's own layout (`dim` 2 or 3).
pub fn from_bank(t: &Tensor, dim: usize) -> Tensor {
    if dim == 2 { t.squeeze_dim(0).tr() } else { t.shallow_clone() }
}

/// Per-channel (or per input channel) vectors [X, C] in the parameter's layout: [C] for a
/// linear layer.
pub fn vector_from_bank(t: &Tensor, dim: usize) -> Tensor {
    if dim == 2 { t.squeeze_dim(0) } else { t.shallow_clone() }
}

/// One weight in 8 bits.
pub struct Int8Weight {
    /// Rank of the parameter: 2 (a linear layer, [N, K]) or 3 (a bank of experts, [X, K, N]).
    pub dim: usize,
    /// Codes in the bank view [X, K, N] (for a linear layer a view of its [N, K] codes).
    pub codes: Tensor,
    /// Scale per output channel [X, N].
    pub scale: Tensor,
    /// SmoothQuant factors per input channel [X, K]: the codes are those of `W · diag(s)`, the
    /// activations are divided by `s` before their product. `None`: round-to-nearest.
    pub smooth: Option<Tensor>,
    inv_smooth: Option<Tensor>,
}

impl Int8Weight {
    /// Quantizes `w` (the parameter as stored) after scaling its input channels by `smooth`
    /// ([X, K], bank view).
    pub fn quantize(w: &Tensor, smooth: Option<Tensor>) -> Self {
        let bank = as_bank(&w.to_kind(Kind::Float));
        let scaled = match &smooth {
            Some(s) => bank * s.unsqueeze(2),
            None => bank,
        };
        let (codes, scale) = int8::quantize_bank(&scaled);
        Self::from_parts(w.dim(), codes, scale, smooth)
    }

    /// From codes, scales and smoothing factors in the bank view.
    pub fn from_parts(dim: usize, codes: Tensor, scale: Tensor, smooth: Option<Tensor>) -> Self {
        let inv_smooth = smooth.as_ref().map(|s| s.reciprocal());
        Self { dim, codes, scale, smooth, inv_smooth }
    }

    pub fn bank(&self) -> BankRef<'_> {
        BankRef { codes: &self.codes, scale: &self.scale, inv_smooth: self.inv_smooth.as_ref() }
    }

    /// The fp32 weight it stands for, in the parameter's layout: `deq(q) / s`.
    pub fn dequantized(&self) -> Tensor {
        let w = int8::dequantize_bank(&self.codes, &self.scale, Kind::Float);
        let w = match &self.inv_smooth {
            Some(inv) => w * inv.unsqueeze(2),
            None => w,
        };
        from_bank(&w, self.dim)
    }

    /// Bytes as exported: one per code, four per scale and smoothing factor.
    pub fn bytes(&self) -> i64 {
        let floats = self.scale.numel() + self.smooth.as_ref().map_or(0, Tensor::numel);
        (self.codes.numel() + 4 * floats) as i64
    }
}

/// The 8-bit weights of a model, by parameter, and how their products run.
pub struct Int8Linears {
    pub weights: BTreeMap<usize, Int8Weight>,
    /// How products run on the device: int8 on a CPU, dequantized elsewhere. Banks of small
    /// experts run dequantized on a CPU too ([`Int8Linears::execution_for`]).
    pub execution: Execution,
    scratch: RefCell<Scratch>,
}

/// The smallest expert (inputs × outputs of one matrix) whose bank runs as int8 products on a
/// CPU; smaller ones run dequantized (weight-only). An int8 bank is one `_int_mm` per expert
/// with the activations' quantization and rescaling batched around them: about 20 µs of extra
/// ops and 5 µs more per expert, against a product 2 to 4 times faster. Measured on this
/// project's 2-core CPU, one thread (`expert_banks_in_int8_against_dequantized` below): 16
/// experts of 128 × 128 on 180 slots each 0.45 ms in int8 against 0.98 in fp32 (1.0 with the
/// weights dequantized); 8 of 64 × 64 break even (0.13 against 0.13); 8 of 32 × 16, the tests'
/// size, 0.08 against 0.02 (0.026 dequantized). Linear layers always run in int8 on a CPU.
pub const EXPERT_INT8_MIN_WEIGHTS: i64 = 64 * 128;

impl Int8Linears {
    /// The products for `execution` (a device's, [`Execution::for_device`]).
    pub fn new(weights: BTreeMap<usize, Int8Weight>, execution: Execution) -> Self {
        Self { weights, execution, scratch: RefCell::default() }
    }

    /// How the product of a bank of `shape` [X, K, N] runs: see [`EXPERT_INT8_MIN_WEIGHTS`].
    pub fn execution_for(&self, shape: &[i64]) -> Execution {
        match self.execution {
            Execution::Int8 if shape[0] > 1 && shape[1] * shape[2] < EXPERT_INT8_MIN_WEIGHTS => Execution::Dequantized,
            e => e,
        }
    }

    /// Round-to-nearest: every quantized parameter of `store` with its own per-channel scales.
    pub fn round_to_nearest(store: &ParamStore, execution: Execution) -> Self {
        let _guard = tch::no_grad_guard();
        let weights = quantized_params(store).into_iter().map(|i| (i, Int8Weight::quantize(&store.master_view(i), None))).collect();
        Self::new(weights, execution)
    }

    /// Bytes of every parameter as exported: 8-bit ones as [`Int8Weight::bytes`], the rest fp32.
    pub fn weight_bytes(&self, store: &ParamStore) -> i64 {
        (0..store.specs.len()).map(|i| self.weights.get(&i).map_or(4 * store.specs[i].numel(), Int8Weight::bytes)).sum()
    }
}

impl Linears for Int8Linears {
    fn replaces(&self, w: ParamId) -> bool {
        self.weights.contains_key(&w.0)
    }

    fn linear(&self, p: &ParamStore, x: &Tensor, w: ParamId, b: Option<ParamId>) -> Option<Tensor> {
        let q = self.weights.get(&w.0)?;
        let shape = x.size();
        let k = *shape.last().expect("an input with a channel dimension");
        let bias = b.map(|i| p.get(i).unsqueeze(0));
        let y =
            int8::bank_matmul(&x.reshape([1, -1, k]), &q.bank(), bias.as_ref(), self.execution_for(&q.codes.size()), &mut self.scratch.borrow_mut());
        let mut out = shape;
        *out.last_mut().unwrap() = q.codes.size()[2];
        Some(y.view(out.as_slice()))
    }

    fn expert_matmul(&self, p: &ParamStore, x: &Tensor, w: ParamId, b: Option<ParamId>) -> Option<Tensor> {
        let q = self.weights.get(&w.0)?;
        Some(int8::bank_matmul(x, &q.bank(), b.map(|i| p.get(i)), self.execution_for(&q.codes.size()), &mut self.scratch.borrow_mut()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;
    use tch::Device;

    /// Without a [`Linears`], the store's products are the plain ones, to the bit; with one set
    /// and cleared again, too.
    #[test]
    fn a_store_without_linears_multiplies_as_before() {
        use crate::params::{Init, ParamBuilder, ParamGroup};
        let mut b = ParamBuilder::default();
        let w = b.add("w", &[6, 5], ParamGroup::Hidden, Init::Normal(1.0));
        let bias = b.add("b", &[6], ParamGroup::Gain, Init::Normal(1.0));
        let bank = b.add("bank", &[3, 5, 4], ParamGroup::Hidden, Init::Normal(1.0));
        let bank_bias = b.add("bank_b", &[3, 4], ParamGroup::Gain, Init::Normal(1.0));
        let mut p = ParamStore::new(b, &mut crate::rng::Rng::new(2), Device::Cpu, Kind::Float);
        let x = Tensor::randn([2, 7, 5], (Kind::Float, Device::Cpu));
        let xb = Tensor::randn([3, 7, 5], (Kind::Float, Device::Cpu));
        let plain = x.linear(p.get(w), Some(p.get(bias)));
        let plain_bank = p.get(bank_bias).unsqueeze(1).baddbmm(&xb, p.get(bank), 1.0, 1.0);
        for pass in 0..2 {
            assert!(p.linear(&x, w, Some(bias)).equal(&plain), "pass {pass}");
            assert!(p.expert_matmul(&xb, bank, Some(bank_bias)).equal(&plain_bank), "pass {pass}");
            let q = Int8Linears::round_to_nearest(&p, Execution::for_device(Device::Cpu));
            p.set_linears(Some(Box::new(q)));
            assert!(p.replaces(w) && p.replaces(bank) && !p.replaces(bias));
            assert!(!p.linear(&x, w, Some(bias)).equal(&plain), "8-bit weights change the product");
            p.set_linears(None);
        }
    }

    /// Milliseconds per call of `f`, the best of 5 runs of 10 calls after 30 calls of warm-up
    /// (the allocator takes that long to keep the outputs' memory instead of mapping it anew).
    fn millis(mut f: impl FnMut() -> Tensor) -> f64 {
        for _ in 0..30 {
            let _ = f();
        }
        (0..5)
            .map(|_| {
                let t0 = Instant::now();
                for _ in 0..10 {
                    let _ = f();
                }
                t0.elapsed().as_secs_f64() * 100.0
            })
            .fold(f64::INFINITY, f64::min)
    }

    /// The measurement behind [`EXPERT_INT8_MIN_WEIGHTS`] and the linear layers' int8 products:
    /// `cargo test -p frugal-trainer --lib expert_banks_in_int8 -- --ignored --nocapture`.
    /// Timings only, so not run by default.
    #[test]
    #[ignore]
    fn expert_banks_in_int8_against_dequantized() {
        let _guard = tch::no_grad_guard();
        tch::manual_seed(5);
        let opts = (Kind::Float, Device::Cpu);
        tch::set_num_threads(1);
        // (experts, slots, K, N): nano_moe's 16 experts of 128 at a 12 × 64 batch, 8 of 16 at
        // the tests' size, a bank of one as a linear layer.
        let mut shapes = vec![(16, 180, 128, 128), (4, 512, 256, 256), (1, 768, 128, 384), (1, 768, 512, 128), (1, 768, 128, 512)];
        for (k, n) in [(16, 32), (32, 16), (32, 32), (64, 32), (64, 64), (128, 64)] {
            for (nx, c) in [(8, 32), (8, 64), (8, 180), (16, 64), (16, 180)] {
                shapes.push((nx, c, k, n));
            }
        }
        for (k, n) in [(32, 96), (32, 32), (96, 32), (64, 192), (64, 64), (128, 128)] {
            for m in [64, 256, 1024] {
                shapes.push((1, m, k, n));
            }
        }
        for (nx, c, k, n) in shapes {
            let x = Tensor::randn([nx, c, k], opts);
            let w = Tensor::randn([nx, k, n], opts) * 0.05;
            let b = Tensor::randn([nx, n], opts);
            let q = Int8Weight::quantize(&w, None);
            let fp32 = millis(|| b.unsqueeze(1).baddbmm(&x, &w, 1.0, 1.0));
            let mut scratch = Scratch::default();
            let int8 = millis(|| int8::bank_matmul(&x, &q.bank(), Some(&b), Execution::Int8, &mut scratch));
            let deq = millis(|| int8::bank_matmul(&x, &q.bank(), Some(&b), Execution::Dequantized, &mut scratch));
            println!("X={nx} C={c} K={k} N={n}: fp32 bmm {fp32:.3} ms, int8 per expert {int8:.3} ms, dequantized bmm {deq:.3} ms");
        }
    }
}
