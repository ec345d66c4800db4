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

mod lockstep;

use frugal_trainer::config::*;
use lockstep::Side;
use std::time::Instant;

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
    let mut dense = Side::new("dense", nano_run("dense", dense, dense_precision, steps, &data));
    let mut moe = Side::new("moe", nano_run("moe", moe, moe_precision, steps, &data));
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
