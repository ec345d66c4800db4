//! Where a training step's time goes: the nanoGPT CPU shape (4 layers, 128 wide, context 64,
//! batch 12), dense against the fine-grained MoE of equal active FLOPs (16 experts of 128 hidden,
//! top-3, one shared), timed section by section, the models interleaved step by step so that a
//! change in machine load hits both alike. Medians over the timed steps.
//!
//!   cargo run --release -p frugal-trainer --example step_profile -- [steps] [threads] [fp32|bf16] [width] [batch]
//!
//! `width` (default 128) scales the model: d_model = width, heads = width / 32, the dense
//! feed-forward 4 · width, each expert (routed or shared) width wide; layers, context and batch
//! stay. `batch` (default 12, sequences of 64 tokens per step) changes how many tokens share
//! each step's per-parameter work (weight gradients, norm, optimizer), which the MoE has
//! several times more of. Both show which of its costs grow with what.
//!
//! Also the feed-forward layer alone (forward + backward of one MLP against one MoE layer on the
//! same 768 tokens), where the dispatch cost shows without the rest of the model around it.

use frugal_trainer::config::*;
use frugal_trainer::model::mlp::Mlp;
use frugal_trainer::model::moe::{Capacity, Moe};
use frugal_trainer::parallel::Worker;
use frugal_trainer::params::{ParamBuilder, ParamStore};
use frugal_trainer::rng::Rng;
use frugal_trainer::train::precision::compute_kind;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

const SECTIONS: [&str; 6] = ["data", "forward", "backward", "grad norm", "optimizer", "step"];

/// The nanoGPT shape at `width`, and its MoE at equal active FLOPs.
fn shapes(width: i64) -> (ModelConfig, MoeConfig) {
    let mut model = nano_model(257);
    model.d_model = width;
    model.heads = (width / 32).max(1);
    model.ffn_hidden = 4 * width;
    (model, MoeConfig { expert_hidden: width, ..nano_moe() })
}

fn trainer(moe: bool, precision: Precision, data: &str, width: i64, batch: i64) -> Worker {
    let (mut model, moe_cfg) = shapes(width);
    if moe {
        model.moe = Some(moe_cfg);
    }
    let mut cfg = nano_run("profile", model, precision, 1_000_000, data);
    cfg.train.batch_size = batch;
    cfg.train.micro_batch_size = batch;
    Worker::single(cfg, Device::Cpu).unwrap()
}

/// One optimizer step as `Worker::train_step` takes it (one micro-batch, no recomputation),
/// returning the seconds of each section.
fn timed_step(t: &mut Worker) -> [f64; 6] {
    let mut s = [0.0; 6];
    let t0 = Instant::now();
    let mut mark = Instant::now();
    let mut lap = |s: &mut [f64; 6], i: usize| {
        s[i] = mark.elapsed().as_secs_f64();
        mark = Instant::now();
    };
    let batch = t.data.as_mut().expect("the whole model reads the data").next_batch(t.cfg.train.micro_batch_size);
    lap(&mut s, 0);
    let (total, stats) = t.model.forward(&t.params, &batch.inputs, &batch.targets);
    lap(&mut s, 1);
    t.params.backward_into_grad(&total, None, 1.0, false);
    lap(&mut s, 2);
    let norm = t.params.grad_norm().double_value(&[]);
    lap(&mut s, 3);
    let lr = frugal_trainer::train::optim::lr_at(&t.cfg.train.optim, t.step, t.cfg.train.steps);
    let coef = if norm > 1.0 { 1.0 / (norm + 1e-6) } else { 1.0 };
    t.optim.step_scaled(&mut t.params, lr, coef);
    t.params.sync_compute();
    t.step += 1;
    let _ = stats.loss.double_value(&[]);
    lap(&mut s, 4);
    s[5] = t0.elapsed().as_secs_f64();
    s
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let steps: usize = args.first().and_then(|s| s.parse().ok()).unwrap_or(40);
    let threads: i32 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(2);
    let precision = match args.get(2).map(String::as_str) {
        Some("bf16") => Precision::Bf16,
        _ => Precision::Fp32,
    };
    let width: i64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(128);
    let batch: i64 = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(12);
    let data = std::env::var("FRUGAL_BENCH_DATA").unwrap_or_else(|_| "../data/tinyshakespeare.txt".into());
    tch::set_num_threads(threads);

    let mut models = [("dense", trainer(false, precision, &data, width, batch)), ("moe", trainer(true, precision, &data, width, batch))];
    let mut times = vec![vec![vec![]; SECTIONS.len()]; models.len()];
    for round in 0..steps + 5 {
        for (m, (_, t)) in models.iter_mut().enumerate() {
            let s = timed_step(t);
            if round >= 5 {
                for (i, x) in s.iter().enumerate() {
                    times[m][i].push(*x);
                }
            }
        }
    }
    println!("{precision:?}, {threads} threads, width {width}, batch {batch}, median of {steps} interleaved steps (ms):\n");
    println!("| section | {} |", models.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(" | "));
    println!("|---|{}", "---|".repeat(models.len()));
    let mut step_ms = vec![];
    for (i, name) in SECTIONS.iter().enumerate() {
        let row: Vec<f64> = times.iter_mut().map(|t| median(&mut t[i]) * 1e3).collect();
        if *name == "step" {
            step_ms = row.clone();
        }
        println!("| {name} | {} |", row.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(" | "));
    }
    println!("\nMoE / dense tokens/s (median step times): {:.3}", step_ms[0] / step_ms[1]);

    // The feed-forward layer alone, interleaved: MLP against MoE on the same tokens.
    let (cfg, moe_cfg) = shapes(width);
    let kind = compute_kind(precision);
    let mut b = ParamBuilder::default();
    let mlp = Mlp::new(&mut b, "mlp", &cfg, cfg.ffn_hidden);
    let moe = Moe::new(&mut b, "moe", &cfg, &moe_cfg);
    let p = ParamStore::new(b, &mut Rng::derive(1, "init"), Device::Cpu, kind);
    let x = Tensor::randn([batch, 64, cfg.d_model], (Kind::Float, Device::Cpu)).to_kind(kind);
    let (mut t_mlp, mut t_moe) = (vec![], vec![]);
    for round in 0..steps + 5 {
        let t0 = Instant::now();
        let y = mlp.forward(&p, &x);
        (y.to_kind(Kind::Float).square().mean(Kind::Float)).backward();
        let t1 = Instant::now();
        let out = moe.forward(&p, &x, None, Capacity::Factor);
        (out.y.to_kind(Kind::Float).square().mean(Kind::Float) + out.aux_loss * 0.01).backward();
        let t2 = Instant::now();
        if round >= 5 {
            t_mlp.push((t1 - t0).as_secs_f64() * 1e3);
            t_moe.push((t2 - t1).as_secs_f64() * 1e3);
        }
    }
    let (a, m) = (median(&mut t_mlp), median(&mut t_moe));
    println!("\nfeed-forward layer, forward + backward of {} tokens: MLP {a:.2} ms, MoE {m:.2} ms ({:.2}×)", batch * 64, m / a);
}
