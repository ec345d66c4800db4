//! 8-bit export of a trained GPT (spec.export.quantize: int8), calibrated and measured.
//!
//!   [`int8`]       codes and per-channel scales; the int8 and the dequantized products
//!   [`table`]      which parameters are 8-bit, and the [`crate::params::Linears`] that runs them
//!   [`calibrate`]  SmoothQuant factors with α searched per layer on recorded activations
//!   [`file`]       `quantized/int8.safetensors` and its sidecar, written atomically, verified
//!
//! [`export`] loads a committed checkpoint whole (either layout), evaluates it unquantized,
//! round-to-nearest and calibrated with the evaluation the training runs, times forwards of
//! the three side by side, writes the calibrated export into the step's directory and reports
//! it as the job's `status.quality.quantized`. The 8-bit models are the model's own forward
//! with the store's linear layers taken over ([`crate::params::ParamStore::linear`]); nothing
//! of the model is written twice.
//!
//! Everything is evaluated in fp32 (the master weights a checkpoint holds), whatever the job's
//! training precision: the price of quantization is measured against the weights themselves.
//!
//! Calibration data: `calibrationBatches` batches of `training.batchSize` sequences drawn from
//! the training split with a random stream of their own, never from the validation split the
//! figures are measured on (calibrating on it would tune the scales to the very tokens that
//! then score them). They are training text the model has seen, as GPTQ's and AWQ's
//! calibration sets are for the models they quantize.

pub mod calibrate;
pub mod file;
pub mod int8;
pub mod table;

use crate::checkpoint;
use crate::data::{Batch, Data, DataPosition};
use crate::eval::{self, GptModel};
use crate::job::Job;
use crate::model::gpt::Gpt;
use crate::params::{Linears, ParamStore};
use crate::rng::Rng;
use anyhow::{Context, Result, bail};
use calibrate::{Activations, Choice};
use file::Sidecar;
use frugal_api::v1alpha1::QuantizedStatus;
use int8::Execution;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use table::Int8Linears;
use tch::Device;

/// Calibration batches when the job has no spec.export (the API's default).
pub const DEFAULT_CALIBRATION_BATCHES: i32 = 4;

/// Held-out (validation) batches each model's forward is timed on, and the rounds over them;
/// the three models take turns batch by batch, so that a machine busy with something else
/// slows them alike.
const TIMED_BATCHES: usize = 4;
const TIMED_ROUNDS: usize = 3;

/// What [`export_measured`] found, beyond the job's status.
pub struct Exported {
    pub status: QuantizedStatus,
    /// Round-to-nearest's forward throughput, measured with the two others.
    pub round_to_nearest_tokens_per_second: f64,
    pub round_to_nearest_weight_bytes: i64,
    /// Per quantized parameter, each matrix's α and output errors.
    pub choices: BTreeMap<String, Vec<Choice>>,
}

/// Calibration batches the job asks for (spec.export.calibrationBatches).
pub fn calibration_batches(job: &Job) -> Result<i32> {
    let n = job.spec.export.as_ref().map_or(DEFAULT_CALIBRATION_BATCHES, |e| e.calibration_batches);
    if n < 1 {
        bail!("spec.export.calibrationBatches is {n}: calibration needs at least 1 batch (4 is the default)");
    }
    Ok(n)
}

/// The step directory `path` names: itself when it holds a manifest, else the newest committed
/// step under it.
pub fn step_dir(path: &Path) -> Result<PathBuf> {
    checkpoint::step_or_latest(path)?
        .with_context(|| format!("no committed checkpoint under {} (give a step directory or a checkpoint root)", path.display()))
}

pub use crate::model::gpt::whole_model;

/// The calibration batches: from the training split, with a random stream of their own.
fn calibration_data(data: &mut Data, seed: u64, batches: i32, batch_size: i64) -> Vec<Batch> {
    data.position = DataPosition { rng: Rng::derive(seed, "quantize-calibration"), sequences_drawn: 0 };
    (0..batches).map(|_| data.next_batch(batch_size)).collect()
}

fn delta(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    Some(a? - b?)
}

/// Quantizes the checkpoint `checkpoint_dir` (a step directory, or a root whose newest committed
/// step is used) of `job`, writes the calibrated export into its step directory and returns
/// what the job's status reports of it. Everything runs on `device`, the throughput included:
/// the CPU's int8 kernels are what the status's "CPU tokens/s" measure, so a CPU is the device
/// to export on; on a GPU the 8-bit weights are dequantized per product.
pub fn export(job: &Job, checkpoint_dir: &Path, device: Device) -> Result<QuantizedStatus> {
    Ok(export_measured(job, checkpoint_dir, device)?.status)
}

/// [`export`], with what the status does not hold.
pub fn export_measured(job: &Job, checkpoint_dir: &Path, device: Device) -> Result<Exported> {
    let cfg = job.run_config(None)?;
    let batches = calibration_batches(job)?;
    let dir = step_dir(checkpoint_dir)?;
    let (model, mut store) = whole_model(&cfg.model, device);
    let step = checkpoint::load_weights(&dir, &mut store).with_context(|| format!("loading the checkpoint {} to quantize", dir.display()))?.step;
    let mut data = Data::new(&cfg.data, cfg.model.vocab_size, cfg.model.seq_len, cfg.train.seed)?;
    let evaluation = job.eval_config();
    let (seed, eval_batch) = (cfg.train.seed, cfg.train.micro_batch_size.max(16));
    let evaluate = |store: &ParamStore, data: &Data| {
        eval::evaluate(&GptModel { model: &model, params: store, device }, data, &evaluation.sets, seed, step, eval_batch)
    };
    let unquantized = evaluate(&store, &data)?;

    let calibration = calibration_data(&mut data, seed, batches, cfg.train.batch_size);
    let activations = Activations::record(&model, &mut store, &calibration, cfg.train.micro_batch_size.max(1))?;
    let execution = Execution::for_device(device);
    let rtn = Int8Linears::round_to_nearest(&store, execution);
    let calibrated = calibrate::calibrate(&store, &activations, execution);
    drop(activations);
    let smoothed = calibrated.choices.values().flatten().filter(|c| c.alpha.is_some()).count();
    let matrices = calibrated.choices.values().map(Vec::len).sum::<usize>();
    let dequantized_banks = calibrated.linears.weights.values().filter(|q| calibrated.linears.execution_for(&q.codes.size()) != execution).count();
    let small_experts = if dequantized_banks > 0 { format!(", {dequantized_banks} banks of small experts dequantized") } else { String::new() };
    let method = format!(
        "per-channel int8, SmoothQuant scales with per-layer α search ({smoothed} of {matrices} matrices smoothed), {batches} calibration batches; {}{small_experts}",
        execution.describe()
    );
    let sidecar = Sidecar {
        format: file::FORMAT.into(),
        method: method.clone(),
        step,
        model_fingerprint: store.fingerprint(),
        bytes: 0,
        sha256: String::new(),
        alphas: calibrated.choices.iter().map(|(name, c)| (name.clone(), c.iter().map(|c| c.alpha).collect())).collect(),
    };
    let path = file::save(&dir, &store, &calibrated.linears, sidecar)?;
    let (weight_bytes, rtn_bytes) = (calibrated.linears.weight_bytes(&store), rtn.weight_bytes(&store));
    let unquantized_weight_bytes = 4 * store.numel;

    let mut tables: Vec<Option<Box<dyn Linears + Send>>> = vec![None, Some(Box::new(rtn)), Some(Box::new(calibrated.linears))];
    let mut quality = Vec::new();
    for table in tables.iter_mut().skip(1) {
        store.set_linears(table.take());
        quality.push(evaluate(&store, &data)?);
        *table = store.set_linears(None);
    }
    let throughput = time_forwards(&model, &mut store, &mut tables, &data.validation(eval_batch));
    let (rtn_q, cal_q) = (&quality[0], &quality[1]);
    let status = QuantizedStatus {
        format: "int8".into(),
        method,
        step,
        path: path.display().to_string(),
        bits_per_byte: cal_q.bits_per_byte,
        bits_per_byte_delta: delta(cal_q.bits_per_byte, unquantized.bits_per_byte),
        validation_loss_delta: delta(cal_q.validation_loss, unquantized.validation_loss),
        calibrated: cal_q.figures(),
        round_to_nearest: rtn_q.figures(),
        unquantized: unquantized.figures(),
        weight_bytes,
        unquantized_weight_bytes,
        tokens_per_second: throughput[2],
        unquantized_tokens_per_second: throughput[0],
    };
    Ok(Exported { status, round_to_nearest_tokens_per_second: throughput[1], round_to_nearest_weight_bytes: rtn_bytes, choices: calibrated.choices })
}

/// Forward throughput (tokens per second) of the store under each of `tables` (`None`: the
/// unquantized weights), over the first [`TIMED_BATCHES`] of `batches`: a round of warm-up
/// (the allocator settles on the forwards' sizes only after a few), then [`TIMED_ROUNDS`]
/// timed rounds in which they take turns batch by batch.
fn time_forwards(model: &Gpt, store: &mut ParamStore, tables: &mut [Option<Box<dyn Linears + Send>>], batches: &[Batch]) -> Vec<f64> {
    let batches: Vec<_> = batches.iter().take(TIMED_BATCHES).map(|b| b.inputs.to_device(store.device)).collect();
    let sync = |device: Device| {
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    let mut seconds = vec![0f64; tables.len()];
    let mut tokens = vec![0i64; tables.len()];
    crate::progress::begin("throughput", "rounds", Some(TIMED_ROUNDS as u64 + 1));
    for round in 0..=TIMED_ROUNDS {
        for inputs in &batches {
            for (k, table) in tables.iter_mut().enumerate() {
                store.set_linears(table.take());
                let t0 = Instant::now();
                let _ = model.eval_logits(store, inputs);
                sync(store.device);
                if round > 0 {
                    seconds[k] += t0.elapsed().as_secs_f64();
                    tokens[k] += inputs.numel() as i64;
                }
                *table = store.set_linears(None);
            }
        }
        crate::progress::advance(1);
    }
    crate::progress::end();
    seconds.iter().zip(&tokens).map(|(&s, &n)| if s > 0.0 { n as f64 / s } else { f64::NAN }).collect()
}

/// An export read back: the whole model with its 8-bit linear layers, ready to evaluate.
pub struct QuantizedModel {
    pub model: Gpt,
    pub params: ParamStore,
    pub sidecar: Sidecar,
    pub device: Device,
}

impl QuantizedModel {
    /// Reads the export at `path` (the safetensors file, its `quantized/` directory, or the
    /// checkpoint step directory holding that) for `job`'s model; refused if the file is damaged
    /// or of another model (see [`file::load`]).
    pub fn load(job: &Job, path: &Path, device: Device) -> Result<Self> {
        let in_step = path.join(file::DIR).join(file::FILE);
        let path = if in_step.exists() { in_step } else { path.to_path_buf() };
        let (model, mut params) = whole_model(&job.plan.model, device);
        let (sidecar, weights) = file::load(&path, &mut params)?;
        params.set_linears(Some(Box::new(Int8Linears::new(weights, Execution::for_device(device)))));
        Ok(Self { model, params, sidecar, device })
    }

    pub fn language_model(&self) -> GptModel<'_> {
        GptModel { model: &self.model, params: &self.params, device: self.device }
    }
}
