//! Calibration: SmoothQuant's per-input-channel factors, with α searched per layer.
//!
//! Activations are quantized per token, so one input channel that is large in every token (an
//! outlier channel: LayerNorm gains make them) sets every token's scale and leaves the other
//! channels a few levels. SmoothQuant moves that range into the weights: with
//! `s_j = max|X_j|^α / max|W_j|^(1−α)` the product `(X / s)(W s)^T` equals `X W^T`, the
//! activations' channels are evened out and the weights' columns take the range (they are
//! quantized per output channel, so a larger column costs that column's neighbours in the same
//! row some precision). α trades the two; like AWQ, it is searched per layer (per expert in a
//! bank): every α of [`ALPHAS`] and no smoothing at all are tried on the layer's recorded
//! activations, and the one whose 8-bit output is nearest the fp32 output (mean squared error,
//! through the very product that will run) is kept, so a layer is never worse on its
//! calibration activations than round-to-nearest.
//!
//! The activations come from forward passes of the unquantized model over calibration batches,
//! through a [`Recorder`] set on the store: every linear layer's input is seen where the model
//! multiplies it, by the same quantization-aware call the 8-bit model uses.

use super::int8::{self, Execution, Scratch};
use super::table::{Int8Linears, Int8Weight, as_bank, quantized_params};
use crate::data::Batch;
use crate::model::gpt::Gpt;
use crate::params::{Linears, ParamId, ParamStore};
use anyhow::{Result, bail};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tch::{Kind, Tensor};

/// The α grid of the per-layer search.
pub const ALPHAS: [f64; 11] = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];

/// Rows (tokens) of activations kept per quantized weight for the search, shared out among
/// the experts of a bank, each of which keeps at least [`ROWS_KEPT_PER_EXPERT`]; the channel
/// maxima are taken over every row seen. 1024 rows of the widest input (4·d) of a d = 2048
/// model are 32 MB per layer; a bank of 16 experts of 2048 keeps 16 MB.
pub const ROWS_KEPT: i64 = 1024;
pub const ROWS_KEPT_PER_EXPERT: i64 = 128;

/// Bounds of a smoothing factor: a channel that is all zeros in the activations or the weights
/// gets 1, and no factor moves a range by more than 10⁵.
const SMOOTH_RANGE: (f64, f64) = (1e-5, 1e5);

/// What calibration saw at one quantized weight, in the bank view.
#[derive(Default)]
struct ActivationStats {
    /// max |x| per input channel, [X, K].
    max_abs: Option<Tensor>,
    /// Kept rows, each [X, r, K].
    rows: Vec<Tensor>,
    kept: i64,
}

/// Records the input of every linear layer it is set for; computes nothing itself, so the
/// forward is the unquantized model's. An expert's empty slots are recorded with the rest:
/// they read token 0 (under gate 0), a real activation, counted once more.
pub struct Recorder {
    targets: Vec<usize>,
    /// Forwards the calibration makes: each keeps its share of the rows.
    calls: i64,
    seen: Arc<Mutex<BTreeMap<usize, ActivationStats>>>,
}

impl Recorder {
    fn record(&self, w: ParamId, x: &Tensor) {
        if !self.targets.contains(&w.0) {
            return;
        }
        let x = x.detach().to_kind(Kind::Float);
        let (nx, m) = (x.size()[0], x.size()[1]);
        let mut seen = self.seen.lock().expect("calibration statistics");
        let entry = seen.entry(w.0).or_default();
        let max = x.abs().amax([1i64].as_slice(), false);
        entry.max_abs = Some(match entry.max_abs.take() {
            Some(m) => m.maximum(&max),
            None => max,
        });
        let cap = (ROWS_KEPT / nx).max(ROWS_KEPT_PER_EXPERT);
        let room = (cap - entry.kept).min((cap / self.calls).max(1));
        if room > 0 {
            // Evenly spread over the call's rows.
            let step = (m + room - 1) / room;
            let idx = Tensor::arange_start_step(0, m, step, (Kind::Int64, x.device()));
            let rows = x.index_select(1, &idx);
            entry.kept += rows.size()[1];
            entry.rows.push(rows);
        }
    }
}

impl Linears for Recorder {
    fn replaces(&self, w: ParamId) -> bool {
        self.targets.contains(&w.0)
    }

    fn linear(&self, _: &ParamStore, x: &Tensor, w: ParamId, _: Option<ParamId>) -> Option<Tensor> {
        let k = *x.size().last().expect("an input with a channel dimension");
        self.record(w, &x.reshape([1, -1, k]));
        None
    }

    fn expert_matmul(&self, _: &ParamStore, x: &Tensor, w: ParamId, _: Option<ParamId>) -> Option<Tensor> {
        self.record(w, x);
        None
    }
}

/// Activation statistics of every quantized weight, from calibration forwards.
pub struct Activations {
    seen: BTreeMap<usize, ActivationStats>,
}

impl Activations {
    /// Runs the unquantized model over `batches` (in pieces of at most `chunk` sequences) and
    /// records every quantized weight's input. Fails naming any quantized weight the forward
    /// never multiplied through the store's quantization-aware calls.
    pub fn record(model: &Gpt, store: &mut ParamStore, batches: &[Batch], chunk: i64) -> Result<Self> {
        let targets = quantized_params(store);
        let calls = batches.iter().map(|b| (b.inputs.size()[0] + chunk - 1) / chunk).sum::<i64>().max(1);
        let seen = Arc::new(Mutex::new(BTreeMap::new()));
        let recorder = Recorder { targets: targets.clone(), calls, seen: seen.clone() };
        let before = store.set_linears(Some(Box::new(recorder)));
        crate::progress::begin("calibration", "batches", Some(batches.len() as u64));
        for b in batches {
            for piece in b.inputs.split(chunk, 0) {
                let _ = model.eval_logits(store, &piece.to_device(store.device));
            }
            crate::progress::advance(1);
        }
        crate::progress::end();
        store.set_linears(before);
        let seen = std::mem::take(&mut *seen.lock().expect("calibration statistics"));
        if let Some(&missed) = targets.iter().find(|i| !seen.contains_key(i)) {
            bail!(
                "parameter {} is a hidden matrix that the forward never multiplied through ParamStore::linear or expert_matmul: it cannot be quantized",
                store.specs[missed].name
            );
        }
        Ok(Self { seen })
    }

    /// The kept rows of a weight's input, [X, R, K].
    fn rows(&self, i: usize) -> Tensor {
        Tensor::cat(&self.seen[&i].rows, 1)
    }
}

/// The α chosen for one matrix (`None`: no smoothing won) and the output errors that chose it.
#[derive(Clone, Debug, PartialEq)]
pub struct Choice {
    pub alpha: Option<f64>,
    /// Mean squared output error on the calibration rows, with the chosen factors.
    pub error: f64,
    /// The same without smoothing (round-to-nearest).
    pub round_to_nearest_error: f64,
}

/// The calibrated 8-bit weights and, per quantized parameter name, each matrix's choice.
pub struct Calibrated {
    pub linears: Int8Linears,
    pub choices: BTreeMap<String, Vec<Choice>>,
}

/// SmoothQuant factors `max|X_j|^α / max|W_j|^(1−α)` per input channel: x_max and w_max [X, K].
pub fn smoothing_factors(x_max: &Tensor, w_max: &Tensor, alpha: f64) -> Tensor {
    let s = x_max.pow_tensor_scalar(alpha) / w_max.pow_tensor_scalar(1.0 - alpha);
    let usable = x_max.gt(0.0).logical_and(&w_max.gt(0.0)).logical_and(&s.isfinite());
    let s = s.clamp(SMOOTH_RANGE.0, SMOOTH_RANGE.1);
    s.where_self(&usable, &s.ones_like())
}

/// Mean squared error per matrix of an 8-bit product against the reference: [X].
fn output_error(x: &Tensor, want: &Tensor, q: &Int8Weight, execution: Execution) -> Tensor {
    let got = int8::bank_matmul(x, &q.bank(), None, execution, &mut Scratch::default());
    (got - want).square().mean_dim([1i64, 2].as_slice(), false, Kind::Double)
}

/// Per matrix of a bank, the α (or none) whose 8-bit product is nearest fp32 on `x` [X, R, K].
fn search(w: &Tensor, x: &Tensor, x_max: &Tensor, execution: Execution) -> (Option<Tensor>, Vec<Choice>) {
    let bank = as_bank(&w.to_kind(Kind::Float));
    let want = x.bmm(&bank);
    let w_max = bank.abs().amax([2i64].as_slice(), false); // [X, K]
    let plain = output_error(x, &want, &Int8Weight::quantize(w, None), execution);
    let nx = bank.size()[0];
    let mut best: Vec<(f64, Option<f64>)> = Vec::<f64>::try_from(&plain).unwrap().into_iter().map(|e| (e, None)).collect();
    let rtn: Vec<f64> = best.iter().map(|b| b.0).collect();
    let mut factors: Vec<Option<Tensor>> = (0..nx).map(|_| None).collect();
    for alpha in ALPHAS {
        let s = smoothing_factors(x_max, &w_max, alpha);
        let errors = Vec::<f64>::try_from(&output_error(x, &want, &Int8Weight::quantize(w, Some(s.shallow_clone())), execution)).unwrap();
        for (e, err) in errors.into_iter().enumerate() {
            if err < best[e].0 {
                best[e] = (err, Some(alpha));
                factors[e] = Some(s.get(e as i64));
            }
        }
    }
    let choices = best.iter().zip(&rtn).map(|(&(error, alpha), &r)| Choice { alpha, error, round_to_nearest_error: r }).collect();
    if factors.iter().all(Option::is_none) {
        return (None, choices);
    }
    let k = bank.size()[1];
    let ones = Tensor::ones([k], (Kind::Float, bank.device()));
    let rows: Vec<Tensor> = factors.into_iter().map(|f| f.unwrap_or_else(|| ones.shallow_clone())).collect();
    (Some(Tensor::stack(&rows, 0)), choices)
}

/// The calibrated 8-bit weights of `store` from the recorded `activations`, searched through
/// the products `execution` runs.
pub fn calibrate(store: &ParamStore, activations: &Activations, execution: Execution) -> Calibrated {
    let _guard = tch::no_grad_guard();
    let probe = Int8Linears::new(BTreeMap::new(), execution);
    let mut weights = BTreeMap::new();
    let mut choices = BTreeMap::new();
    for i in quantized_params(store) {
        let w = store.master_view(i);
        let x = activations.rows(i);
        let x_max = activations.seen[&i].max_abs.as_ref().expect("recorded").shallow_clone();
        let run = probe.execution_for(&as_bank(&w).size());
        let (smooth, chosen) = search(&w, &x, &x_max, run);
        weights.insert(i, Int8Weight::quantize(&w, smooth));
        choices.insert(store.specs[i].name.clone(), chosen);
    }
    Calibrated { linears: Int8Linears::new(weights, execution), choices }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// The output error of a weight under given factors.
    fn matrix_error(w: &Tensor, x: &Tensor, smooth: Option<Tensor>, execution: Execution) -> f64 {
        let want = x.bmm(&as_bank(w));
        output_error(x, &want, &Int8Weight::quantize(w, smooth), execution).mean(Kind::Double).double_value(&[])
    }

    /// A layer whose input has three outlier channels (60× the rest) and whose weights are
    /// correspondingly small there: round-to-nearest loses most of the other channels, and the
    /// searched smoothing gets the error down by well over 10×.
    #[test]
    fn smoothing_beats_round_to_nearest_on_outlier_channels() {
        tch::manual_seed(4);
        let opts = (Kind::Float, Device::Cpu);
        let (k, n, r) = (64, 48, 256);
        let mut gain = vec![1f32; k as usize];
        for j in [3, 17, 40] {
            gain[j] = 60.0;
        }
        let gain = Tensor::from_slice(&gain);
        let x = (Tensor::randn([1, r, k], opts) * &gain).contiguous();
        let w = Tensor::randn([n, k], opts) * 0.05 / &gain; // [N, K]
        let execution = Execution::for_device(Device::Cpu);
        let x_max = x.abs().amax([1i64].as_slice(), false);
        let (smooth, choices) = search(&w, &x, &x_max, execution);
        let c = &choices[0];
        println!("outlier channels: α {:?}, error {:.3e} against {:.3e} round-to-nearest", c.alpha, c.error, c.round_to_nearest_error);
        assert!(c.alpha.is_some() && smooth.is_some(), "{c:?}");
        assert!(c.error * 10.0 < c.round_to_nearest_error, "{c:?}");
        let direct = matrix_error(&w, &x, smooth, execution);
        assert!((direct - c.error).abs() <= 1e-9 * c.error.max(1e-30), "{direct} vs {c:?}");
    }

    /// A hidden matrix the forward never multiplies through the store would stay fp32 in an
    /// "8-bit" model without anyone noticing: calibration refuses it by name.
    #[test]
    fn a_hidden_matrix_outside_the_quantization_aware_calls_is_refused() {
        use crate::params::{Init, ParamBuilder, ParamGroup};
        let mut cfg = crate::config::nano_model(64);
        (cfg.layers, cfg.d_model, cfg.ffn_hidden, cfg.seq_len) = (1, 16, 32, 8);
        let mut b = ParamBuilder::default();
        let model = Gpt::new(&mut b, &cfg);
        b.add("blocks.0.stray.weight", &[4, 4], ParamGroup::Hidden, Init::Zeros);
        let mut store = ParamStore::new(b, &mut crate::rng::Rng::new(1), Device::Cpu, Kind::Float);
        let inputs = Tensor::zeros([2, 8], (Kind::Int64, Device::Cpu));
        let batch = Batch { inputs: inputs.shallow_clone(), targets: inputs };
        let e = Activations::record(&model, &mut store, &[batch], 2).err().expect("a stray matrix is refused").to_string();
        assert!(e.contains("blocks.0.stray.weight") && e.contains("cannot be quantized"), "{e}");
        assert!(!store.replaces(ParamId(0)), "the recorder is taken off the store");
    }

    #[test]
    fn factors_are_one_where_a_channel_is_all_zero() {
        let x_max = Tensor::from_slice(&[0f32, 2.0, 8.0]).view([1, 3]);
        let w_max = Tensor::from_slice(&[1f32, 0.0, 0.5]).view([1, 3]);
        let s = Vec::<f32>::try_from(smoothing_factors(&x_max, &w_max, 0.5).view([-1])).unwrap();
        assert_eq!(&s[..2], &[1.0, 1.0]);
        assert!((s[2] - 4.0).abs() < 1e-6, "{s:?}");
    }
}
