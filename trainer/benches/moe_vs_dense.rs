//! Dense against fine-grained MoE at equal active FLOPs (nanoGPT CPU shape, tinyshakespeare,
//! byte-level): throughput, and validation loss against steps and wall time.
//!
//!   cargo bench -p frugal-trainer --bench moe_vs_dense -- [steps] [eval_every] [threads] [moe fp32|bf16] [dense fp32|bf16] [experts]
//!
//! The two models train in lockstep (a step of one, then a step of the other), so a change in
//! the machine's load falls on both alike; tokens/s counts training steps only, not evaluation.
//! The MoE model replaces every feed-forward (4·d hidden) with 16 routed experts of d hidden,
//! top-3, plus one shared expert of d hidden: 3·d + d = 4·d active, as in DeepSeekMoE.
//! `experts` picks another split of the same 4·d active, written `{routed}x{hidden}k{top-k}s{shared}`
//! with an optional capacity factor `c{factor}` (default `16x128k3s1`, capacity factor 1.25):
//! `8x256k1s1` is 8 routed experts of 2·d hidden, top-1, plus one shared expert of 2·d hidden;
//! `16x128k3s1c1.0` the default split at capacity factor 1.0; a last `e{n}` puts the experts in
//! every n-th layer only (`16x128k3s1c1.0e2`: layers 2 and 4, dense feed-forwards in 1 and 3, as
//! in Switch Transformer and GShard). The bench refuses a split whose active width is not 4·d.
//! Set FRUGAL_BENCH_DATA to another text file to change the corpus.

use frugal_trainer::config::*;
use frugal_trainer::parallel::Worker;
use std::time::Instant;
use tch::Device;

/// One side of the comparison, trained a step at a time.
struct Side {
    name: String,
    trainer: Worker,
    train_seconds: f64,
    step_seconds: Vec<f64>,
    dropped: f64,
    /// (step, training seconds so far, validation loss)
    curve: Vec<(i64, f64, f64)>,
}

impl Side {
    fn new(name: &str, model: ModelConfig, precision: Precision, steps: i64, data: &str) -> Self {
        let cfg = nano_run(name, model, precision, steps, data);
        let trainer = Worker::single(cfg, Device::Cpu).unwrap();
        Self { name: format!("{name} {precision:?}"), trainer, train_seconds: 0.0, step_seconds: vec![], dropped: 0.0, curve: vec![] }
    }

    fn step(&mut self, steps: i64, eval_every: i64) {
        let r = self.trainer.train_step().unwrap();
        self.train_seconds += r.seconds;
        self.step_seconds.push(r.seconds);
        self.dropped += r.dropped_fraction.unwrap_or(0.0);
        let t = &self.trainer;
        if t.step % eval_every == 0 || t.step == steps {
            let v = t.validation_loss();
            self.curve.push((t.step, self.train_seconds, v));
            eprintln!("{:>10} step {:>5} train {:>7.1}s val {v:.4}", self.name, t.step, self.train_seconds);
        }
    }

    fn tokens_per_second(&self) -> f64 {
        self.trainer.step as f64 * self.trainer.cfg.tokens_per_step() as f64 / self.train_seconds
    }

    fn median_step_seconds(&self) -> f64 {
        let mut v = self.step_seconds.clone();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }

    fn report(&self, started: Instant) {
        let t = &self.trainer;
        let counts = t.counts();
        println!(
            "{{\"model\":\"{}\",\"params_total\":{},\"params_active\":{},\"flops_per_token\":{},\"steps\":{},\"tokens_per_second\":{:.1},\"median_step_ms\":{:.2},\"val_loss\":{:.4},\"dropped_fraction\":{:.4},\"wall_seconds\":{:.1}}}",
            self.name,
            counts.params_total,
            counts.params_active,
            counts.flops_per_token,
            t.step,
            self.tokens_per_second(),
            self.median_step_seconds() * 1e3,
            self.curve.last().unwrap().2,
            self.dropped / t.step as f64,
            started.elapsed().as_secs_f64()
        );
    }
}

fn precision_arg(a: Option<&String>) -> Precision {
    match a.map(String::as_str) {
        Some("bf16") => Precision::Bf16,
        _ => Precision::Fp32,
    }
}

/// `{routed}x{hidden}k{top-k}s{shared}[c{capacity factor}][e{every n layers}]`, e.g.
/// `16x128k3s1`, `16x128k3s1c1.0` or `16x128k3s1c1.0e2`: the rest as in [`nano_moe`].
fn experts_arg(a: &str) -> MoeConfig {
    let bad = || -> ! { panic!("experts: expected {{routed}}x{{hidden}}k{{top-k}}s{{shared}}[c{{factor}}][e{{n}}] such as 16x128k3s1, got {a:?}") };
    let (rest, every) = a.split_once('e').map_or((a, None), |(s, n)| (s, Some(n.parse::<i64>().unwrap_or_else(|_| bad()))));
    let (split, capacity) = rest.split_once('c').map_or((rest, None), |(s, c)| (s, Some(c.parse::<f64>().unwrap_or_else(|_| bad()))));
    let nums: Vec<i64> = split.split(['x', 'k', 's']).map(|n| n.parse().unwrap_or_else(|_| bad())).collect();
    let [experts, expert_hidden, top_k, shared_experts] = nums[..] else { bad() };
    let base = nano_moe();
    MoeConfig {
        experts,
        expert_hidden,
        top_k,
        shared_experts,
        capacity_factor: capacity.unwrap_or(base.capacity_factor),
        every_n_layers: every.unwrap_or(base.every_n_layers),
        ..base
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let steps: i64 = args.first().and_then(|s| s.parse().ok()).unwrap_or(300);
    let eval_every: i64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(steps);
    let threads: i32 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2);
    let moe_precision = precision_arg(args.get(3));
    let dense_precision = precision_arg(args.get(4));
    let data = std::env::var("FRUGAL_BENCH_DATA").unwrap_or_else(|_| "../data/tinyshakespeare.txt".into());
    tch::set_num_threads(threads);

    let dense = nano_model(257);
    let mut moe = nano_model(257);
    let experts = args.get(5).map_or_else(nano_moe, |a| experts_arg(a));
    let routed = experts.experts;
    moe.moe = Some(experts);
    let router_flops = 6 * moe.moe_layers() * dense.d_model * routed;
    assert_eq!(dense.flops_per_token() as i64 + router_flops, moe.flops_per_token() as i64, "equal active FLOPs (plus the router)");

    // Lockstep: one step of each in turn, so that the machine's load falls on both alike.
    let started = Instant::now();
    let mut dense = Side::new("dense", dense, dense_precision, steps, &data);
    let mut moe = Side::new("moe", moe, moe_precision, steps, &data);
    for _ in 0..steps {
        dense.step(steps, eval_every);
        moe.step(steps, eval_every);
    }
    dense.report(started);
    moe.report(started);
    println!(
        "{{\"moe_over_dense_tokens_per_second\":{:.3},\"moe_over_dense_median_step\":{:.3}}}",
        moe.tokens_per_second() / dense.tokens_per_second(),
        dense.median_step_seconds() / moe.median_step_seconds()
    );
    // Where the MoE model first reaches the dense model's final validation loss.
    let (_, dense_secs, dense_final) = *dense.curve.last().unwrap();
    if let Some(&(step, secs, v)) = moe.curve.iter().find(|(_, _, v)| *v <= dense_final) {
        println!(
            "{{\"dense_final_val_loss\":{dense_final:.4},\"moe_reaches_it_at_step\":{step},\"moe_seconds\":{secs:.1},\"dense_seconds\":{dense_secs:.1},\"moe_val_loss_there\":{v:.4}}}"
        );
    } else {
        println!("{{\"dense_final_val_loss\":{dense_final:.4},\"moe_reaches_it\":false,\"moe_final_val_loss\":{:.4}}}", moe.curve.last().unwrap().2);
    }
}
