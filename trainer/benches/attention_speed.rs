//! Forward + backward time of causal attention as the sequence grows: dense (fused SDPA)
//! against sliding-window and block-sparse computed block by block.
//!
//!   cargo bench -p frugal-trainer --bench attention_speed -- [threads]

use frugal_trainer::config::AttentionPattern;
use frugal_trainer::model::attention::{attend, keys_computed_per_query};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

fn time_pattern(t: i64, pattern: AttentionPattern, device: Device) -> f64 {
    let (b, h, hd) = (2, 4, 32);
    let opts = (Kind::Float, device);
    let q = Tensor::randn([b, h, t, hd], opts).set_requires_grad(true);
    let k = Tensor::randn([b, h, t, hd], opts).set_requires_grad(true);
    let v = Tensor::randn([b, h, t, hd], opts).set_requires_grad(true);
    let once = || {
        let y = attend(&q, &k, &v, pattern);
        y.sum(Kind::Float).backward();
    };
    once();
    let reps = (8192 / t).clamp(2, 20);
    let t0 = Instant::now();
    for _ in 0..reps {
        once();
    }
    t0.elapsed().as_secs_f64() * 1e3 / reps as f64
}

fn main() {
    let threads: i32 = std::env::args().skip(1).find(|a| !a.starts_with("--")).and_then(|s| s.parse().ok()).unwrap_or(2);
    tch::set_num_threads(threads);
    tch::manual_seed(0);
    frugal_trainer::cuda::load();
    let device = Device::cuda_if_available();
    let window = AttentionPattern::SlidingWindow { window: 128 };
    let sparse = AttentionPattern::BlockSparse { block_size: 64, local_blocks: 1, global_tokens: 16 };
    println!("| T | dense ms | sliding window 128 ms | speed-up | block-sparse 64×(1+1)+16 ms | speed-up | keys per query dense / window / block |");
    println!("|---|---|---|---|---|---|---|");
    for t in [256, 512, 1024, 2048, 4096] {
        let d = time_pattern(t, AttentionPattern::Dense, device);
        let w = time_pattern(t, window, device);
        let s = time_pattern(t, sparse, device);
        println!(
            "| {t} | {d:.2} | {w:.2} | {:.2}× | {s:.2} | {:.2}× | {} / {} / {} |",
            d / w,
            d / s,
            keys_computed_per_query(t, AttentionPattern::Dense),
            keys_computed_per_query(t, window),
            keys_computed_per_query(t, sparse)
        );
    }
}
