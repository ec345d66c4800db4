//! Symmetric 8-bit weights with one scale per output channel, and the products that use them.
//!
//! Every quantized weight is seen here as a bank of X matrices in the kernel's layout
//! [X, K, N] (K inputs, N outputs): a bank of experts is one as it is stored, a linear layer's
//! [N, K] weight is the bank of one `W^T`. A channel's scale is `max |w| / 127` over its K
//! inputs; a code is `round(w / scale)`, in [-127, 127] (-128 is left out, so that `q` and `-q`
//! are both codes and zero is exact).
//!
//! Two ways to run a product:
//!
//! * [`Execution::Int8`] (a CPU): activations are quantized per token on the fly (symmetric,
//!   scale `max |x| / 127` over the token's K inputs) and multiplied as int8 × int8 → int32 by
//!   libtorch's `_int_mm` (oneDNN's VNNI kernels on x86), then rescaled by the token's and the
//!   channel's scale: W8A8 dynamic, `y = (q_x q_w^T) · s_x · s_w`. A bank of experts runs one
//!   such product per expert, the quantization and rescaling of all experts batched around them.
//!   libtorch's `fbgemm_linear_int8_weight_fp32_activation` would be the other int8 kernel, but
//!   tch 0.24 does not bind any `fbgemm_*` function (its generator excludes the prefix).
//! * [`Execution::Dequantized`] (a GPU, or a libtorch whose `_int_mm` fails): the codes are
//!   turned back into the activations' dtype at each product and multiplied as usual:
//!   weight-only; the weights stay 8-bit in memory between products.
//!
//! With SmoothQuant factors `s` (per input channel, `calibrate.rs`), the codes are those of
//! `W · diag(s)` and the activations are divided by `s` first: `(x / s)(W s)^T = x W^T`.

use tch::{Device, Kind, Tensor};

/// The largest code.
pub const QMAX: f64 = 127.0;

/// How 8-bit products run on a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Execution {
    /// int8 × int8 → int32 with activations quantized per token (W8A8 dynamic).
    Int8,
    /// Weights dequantized to the activations' dtype for each product (weight-only).
    Dequantized,
}

impl Execution {
    /// The int8 kernel on a CPU where libtorch's `_int_mm` runs and is exact on a probe; weight
    /// dequantization elsewhere (a GPU's `_int_mm` has shape rules of its own and its gain is
    /// memory, which dequantizing per product keeps).
    pub fn for_device(device: Device) -> Self {
        if device != Device::Cpu {
            return Self::Dequantized;
        }
        let a = Tensor::arange(24, (Kind::Int64, Device::Cpu)).remainder(7).to_kind(Kind::Int8).view([3, 8]);
        let want = a.to_kind(Kind::Int64).matmul(&a.to_kind(Kind::Int64).tr());
        match a.f_internal_int_mm(&a.tr()) {
            Ok(got) if got.to_kind(Kind::Int64).equal(&want) => Self::Int8,
            _ => Self::Dequantized,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Self::Int8 => "int8 x int8 products (activations per token)",
            Self::Dequantized => "weights dequantized per product",
        }
    }
}

/// Codes and per-channel scales of a bank `w` [X, K, N] (fp32): codes [X, K, N] int8, scales
/// [X, N] fp32. An all-zero channel gets scale 0 and codes 0 (no division by zero).
pub fn quantize_bank(w: &Tensor) -> (Tensor, Tensor) {
    let w = w.to_kind(Kind::Float);
    let scale = w.abs().amax([1i64].as_slice(), true) / QMAX; // [X, 1, N]
    let divisor = scale.where_self(&scale.gt(0.0), &scale.ones_like());
    let mut codes = &w / &divisor;
    let _ = codes.round_();
    let _ = codes.clamp_(-QMAX, QMAX);
    (codes.to_kind(Kind::Int8), scale.squeeze_dim(1))
}

/// The weights that codes and scales stand for: [X, K, N] in `kind`.
pub fn dequantize_bank(codes: &Tensor, scale: &Tensor, kind: Kind) -> Tensor {
    codes.to_kind(kind) * scale.to_kind(kind).unsqueeze(1)
}

/// Per-row codes of x [.., K] (int8) and the rows' scales [.., 1] (fp32): the dynamic
/// quantization of activations, one scale per token.
pub fn quantize_rows(x: &Tensor) -> (Tensor, Tensor) {
    let x = x.to_kind(Kind::Float);
    let codes = Tensor::empty(x.size(), (Kind::Int8, x.device()));
    let scale = quantize_rows_into(&x, &mut x.empty_like(), &codes);
    (codes, scale)
}

/// Writes the per-row codes of fp32 `x` into `codes` (int8, x's shape) by way of `work` (fp32,
/// x's shape; `x` itself may be it) and returns the rows' scales [.., 1].
fn quantize_rows_into(x: &Tensor, work: &mut Tensor, codes: &Tensor) -> Tensor {
    // max |x| as max(max x, −min x): two reductions and no |x| temporary.
    let scale = x.amax([-1i64].as_slice(), true).maximum(&x.amin([-1i64].as_slice(), true).neg()) / QMAX;
    // A row of zeros divides by the smallest normal float and stays zero.
    let _ = x.div_out(work, &scale.clamp_min(f64::from(f32::MIN_POSITIVE)));
    let _ = work.round_();
    let _ = work.clamp_(-QMAX, QMAX);
    codes.shallow_clone().copy_(work);
    scale
}

/// Temporaries of 8-bit products, kept from one product to the next. At the sizes of a
/// forward pass every fresh full-size temporary costs its page faults (glibc hands large freed
/// blocks back to the kernel), and measured on this project's CPU those cost more than the
/// int8 product itself: 2.3 ms against 0.5 for 16 experts of 128 × 128 on 180 slots each.
/// Only the product's output is allocated anew, as an fp32 product's is.
#[derive(Default)]
pub struct Scratch {
    buffers: Vec<(Kind, Tensor)>,
}

impl Scratch {
    /// A buffer of `shape` and `kind` on `device`, its contents undefined: a view of the one
    /// kept for `kind`, grown when too small. `slot` tells apart two buffers of one kind.
    fn get(&mut self, slot: usize, shape: &[i64], kind: Kind, device: Device) -> Tensor {
        let numel: i64 = shape.iter().product();
        let at = self.buffers.iter().enumerate().filter(|(_, (k, t))| *k == kind && t.device() == device).map(|(i, _)| i).nth(slot);
        let at = match at {
            Some(i) if self.buffers[i].1.numel() as i64 >= numel => i,
            Some(i) => {
                self.buffers[i].1 = Tensor::empty([numel], (kind, device));
                i
            }
            None => {
                self.buffers.push((kind, Tensor::empty([numel], (kind, device))));
                self.buffers.len() - 1
            }
        };
        self.buffers[at].1.narrow(0, 0, numel).view(shape)
    }
}

/// One 8-bit bank as a product runs it: codes [X, K, N], scales [X, N], and `1 / s` [X, K] of
/// its smoothing factors, if any.
pub struct BankRef<'a> {
    pub codes: &'a Tensor,
    pub scale: &'a Tensor,
    pub inv_smooth: Option<&'a Tensor>,
}

/// `x[e] W[e] + b[e]`: x [X, M, K], bias [X, N] → [X, M, N] in x's dtype, the temporaries
/// in `scratch`.
pub fn bank_matmul(x: &Tensor, bank: &BankRef, bias: Option<&Tensor>, execution: Execution, scratch: &mut Scratch) -> Tensor {
    let (kind, device) = (x.kind(), x.device());
    let (nx, m, k) = x.size3().expect("activations [X, M, K]");
    let n = bank.codes.size()[2];
    match execution {
        Execution::Int8 => {
            let mut work = scratch.get(0, &[nx, m, k], Kind::Float, device);
            let x = match bank.inv_smooth {
                Some(inv) => x.mul_out(&work, &inv.unsqueeze(1)),
                None if kind == Kind::Float => x.shallow_clone(),
                None => {
                    work.copy_(x);
                    work.shallow_clone()
                }
            };
            let codes = scratch.get(0, &[nx, m, k], Kind::Int8, device);
            let xs = quantize_rows_into(&x, &mut work, &codes);
            let acc = scratch.get(0, &[nx, m, n], Kind::Int, device);
            for e in 0..nx {
                let _ = codes.get(e).internal_int_mm_out(&acc.get(e), &bank.codes.get(e));
            }
            let mut y = acc * xs;
            let _ = y.g_mul_(&bank.scale.unsqueeze(1));
            if let Some(b) = bias {
                let _ = y.g_add_(&b.unsqueeze(1));
            }
            if kind == Kind::Float { y } else { y.to_kind(kind) }
        }
        Execution::Dequantized => {
            let x = match bank.inv_smooth {
                Some(inv) => x.mul_out(&scratch.get(1, &[nx, m, k], kind, device), &inv.to_kind(kind).unsqueeze(1)),
                None => x.shallow_clone(),
            };
            let mut w = scratch.get(0, &bank.codes.size(), kind, device);
            w.copy_(bank.codes);
            let _ = w.g_mul_(&bank.scale.to_kind(kind).unsqueeze(1));
            match bias {
                Some(b) => b.to_kind(kind).unsqueeze(1).baddbmm(&x, &w, 1.0, 1.0),
                None => x.bmm(&w),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max_abs(t: &Tensor) -> f64 {
        t.abs().max().double_value(&[])
    }

    #[test]
    fn rounding_error_is_at_most_half_a_step_and_multiples_of_the_step_are_exact() {
        tch::manual_seed(1);
        let w = Tensor::randn([3, 40, 24], (Kind::Float, Device::Cpu));
        let (q, s) = quantize_bank(&w);
        assert_eq!((q.kind(), q.size(), s.size()), (Kind::Int8, vec![3, 40, 24], vec![3, 24]));
        let err = (&w - dequantize_bank(&q, &s, Kind::Float)).abs();
        // |w − q·s| ≤ s/2 per element, up to fp32 rounding of w / s.
        let bound = s.unsqueeze(1) * (0.5 * (1.0 + 1e-5));
        let over = (&err - &bound).max().double_value(&[]);
        assert!(over <= 0.0, "an element is off by {over} more than half its channel's step");
        // Each channel's largest magnitude is code ±127 exactly.
        assert_eq!(q.abs().amax([1i64].as_slice(), false).to_kind(Kind::Int64).min().int64_value(&[]), 127);

        // Values that are multiples of the step come back exactly.
        let steps = Tensor::from_slice(&[0.5f32, 0.25, 2.0]).view([1, 1, 3]);
        let ints = Tensor::arange_start(-127, 128, (Kind::Float, Device::Cpu)).view([1, 255, 1]);
        let exact = &ints * &steps;
        let (q, s) = quantize_bank(&exact);
        assert!(s.allclose(&(steps.view([1, 3])), 0.0, 0.0, false), "{s}");
        assert_eq!(max_abs(&(dequantize_bank(&q, &s, Kind::Float) - &exact)), 0.0);
    }

    #[test]
    fn an_all_zero_channel_quantizes_to_zero_without_nan() {
        let w = Tensor::randn([1, 8, 4], (Kind::Float, Device::Cpu));
        let _ = w.narrow(2, 1, 1).zero_();
        let (q, s) = quantize_bank(&w);
        assert_eq!(s.double_value(&[0, 1]), 0.0);
        assert_eq!(q.narrow(2, 1, 1).abs().sum(Kind::Int64).int64_value(&[]), 0);
        let d = dequantize_bank(&q, &s, Kind::Float);
        assert!(d.isfinite().all().int64_value(&[]) == 1);
        // A zero row of activations, and its product, stay zero too.
        let x = Tensor::zeros([1, 2, 8], (Kind::Float, Device::Cpu));
        let (xq, xs) = quantize_rows(&x);
        assert_eq!(xq.abs().sum(Kind::Int64).int64_value(&[]), 0);
        assert_eq!(xs.double_value(&[0, 0, 0]), 0.0);
        let bank = BankRef { codes: &q, scale: &s, inv_smooth: None };
        for execution in [Execution::for_device(Device::Cpu), Execution::Dequantized] {
            let y = bank_matmul(&x, &bank, None, execution, &mut Scratch::default());
            assert_eq!(max_abs(&y), 0.0, "{execution:?}");
        }
    }

    /// The int8 product against the fp32 one on random weights and activations: the relative
    /// error (Frobenius) stays under 2% (about 1% is typical: 127 levels for the weights and
    /// for each token's activations), and weight-only under 1%.
    #[test]
    fn int8_products_match_fp32_within_two_percent() {
        tch::manual_seed(2);
        assert_eq!(Execution::for_device(Device::Cpu), Execution::Int8, "libtorch's _int_mm runs on this CPU");
        let x = Tensor::randn([3, 50, 64], (Kind::Float, Device::Cpu));
        let w = Tensor::randn([3, 64, 48], (Kind::Float, Device::Cpu)) * 0.05;
        let b = Tensor::randn([3, 48], (Kind::Float, Device::Cpu));
        let want = b.unsqueeze(1).baddbmm(&x, &w, 1.0, 1.0);
        let (q, s) = quantize_bank(&w);
        let bank = BankRef { codes: &q, scale: &s, inv_smooth: None };
        for (execution, limit) in [(Execution::Int8, 0.02), (Execution::Dequantized, 0.01)] {
            let got = bank_matmul(&x, &bank, Some(&b), execution, &mut Scratch::default());
            let rel = (&got - &want).norm().double_value(&[]) / (&want - b.unsqueeze(1)).norm().double_value(&[]);
            println!("{execution:?}: relative error {rel:.4}");
            assert!(rel < limit, "{execution:?}: relative error {rel}");
            assert!(rel > 1e-4, "{execution:?}: {rel} is too small for 8 bits; is the product quantized at all?");
        }
    }

    #[test]
    fn smoothing_is_an_identity_in_exact_arithmetic() {
        tch::manual_seed(3);
        let opts = (Kind::Double, Device::Cpu);
        let x = Tensor::randn([5, 12], opts);
        let w = Tensor::randn([7, 12], opts); // [N, K]
        let s = Tensor::rand([12], opts) * 10.0 + 0.1;
        let plain = x.linear::<Tensor>(&w, None);
        let smoothed = (&x / &s).linear::<Tensor>(&(&w * &s), None);
        assert!(max_abs(&(plain - smoothed)) < 1e-12);
    }
}
