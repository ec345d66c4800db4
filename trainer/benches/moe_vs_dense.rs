//! Dense against fine-grained MoE at equal active FLOPs (nanoGPT CPU shape, tinyshakespeare,
//! byte-level): throughput, and validation loss against steps and wall time.
//!
//!   cargo bench -p frugal-trainer --bench moe_vs_dense -- [steps] [eval_every] [threads]
//!
//! The MoE model replaces every feed-forward (4·d hidden) with 16 routed experts of d hidden,
//! top-3, plus one shared expert of d hidden: 3·d + d = 4·d active, as in DeepSeekMoE.
//! Set FRUGAL_BENCH_DATA to another text file to change the corpus.

use frugal_trainer::config::*;
use frugal_trainer::train::Trainer;
use std::time::Instant;
use tch::Device;

fn run(name: &str, model: ModelConfig, steps: i64, eval_every: i64, data: &str) -> (f64, Vec<(i64, f64, f64)>) {
    let cfg = RunConfig {
        name: name.into(),
        model,
        data: DataConfig { source: DataSource::TextFile { path: data.into() }, validation_fraction: 0.1, eval_sequences: 0 },
        train: TrainConfig {
            steps,
            batch_size: 12,
            micro_batch_size: 12,
            precision: Precision::Fp32,
            activation_checkpointing: false,
            optim: OptimConfig::default(),
            seed: 1337,
            eval_interval: 0,
            checkpoint_interval: 0,
            log_interval: 100,
        },
        checkpoint_dir: None,
        keep_checkpoints: 1,
    };
    let tokens_per_step = cfg.tokens_per_step() as f64;
    let mut t = Trainer::new(cfg, Device::Cpu).unwrap();
    let mut curve = vec![];
    let mut train_seconds = 0.0;
    let mut dropped = 0.0;
    let started = Instant::now();
    for _ in 0..steps {
        let r = t.train_step();
        train_seconds += r.seconds;
        dropped += r.dropped_fraction.unwrap_or(0.0);
        if t.step % eval_every == 0 || t.step == steps {
            let v = t.evaluate();
            curve.push((t.step, train_seconds, v));
            eprintln!("{name:>6} step {:>5} train {:>7.1}s val {v:.4}", t.step, train_seconds);
        }
    }
    let tps = steps as f64 * tokens_per_step / train_seconds;
    println!(
        "{{\"model\":\"{name}\",\"params_total\":{},\"params_active\":{},\"flops_per_token\":{},\"steps\":{steps},\"tokens_per_second\":{tps:.1},\"val_loss\":{:.4},\"dropped_fraction\":{:.4},\"wall_seconds\":{:.1}}}",
        t.counts.params_total,
        t.counts.params_active,
        t.counts.flops_per_token,
        curve.last().unwrap().2,
        dropped / steps as f64,
        started.elapsed().as_secs_f64()
    );
    (tps, curve)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let steps: i64 = args.first().and_then(|s| s.parse().ok()).unwrap_or(300);
    let eval_every: i64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(steps);
    let threads: i32 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2);
    let data = std::env::var("FRUGAL_BENCH_DATA").unwrap_or_else(|_| "../../shared/data/tinyshakespeare.txt".into());
    tch::set_num_threads(threads);

    let dense = nano_model(257);
    let mut moe = nano_model(257);
    moe.moe = Some(MoeConfig {
        experts: 16,
        top_k: 3,
        shared_experts: 1,
        expert_hidden: 128,
        every_n_layers: 1,
        capacity_factor: 1.25,
        load_balance_weight: 0.01,
    });
    assert_eq!(dense.flops_per_token() as i64 + 6 * 4 * 128 * 16, moe.flops_per_token() as i64, "equal active FLOPs (plus the router)");

    let (dense_tps, dense_curve) = run("dense", dense, steps, eval_every, &data);
    let (moe_tps, moe_curve) = run("moe", moe, steps, eval_every, &data);
    println!("{{\"moe_over_dense_tokens_per_second\":{:.3}}}", moe_tps / dense_tps);
    // Where the MoE model first reaches the dense model's final validation loss.
    let (_, dense_secs, dense_final) = *dense_curve.last().unwrap();
    if let Some(&(step, secs, v)) = moe_curve.iter().find(|(_, _, v)| *v <= dense_final) {
        println!(
            "{{\"dense_final_val_loss\":{dense_final:.4},\"moe_reaches_it_at_step\":{step},\"moe_seconds\":{secs:.1},\"dense_seconds\":{dense_secs:.1},\"moe_val_loss_there\":{v:.4}}}"
        );
    } else {
        println!("{{\"dense_final_val_loss\":{dense_final:.4},\"moe_reaches_it\":false,\"moe_final_val_loss\":{:.4}}}", moe_curve.last().unwrap().2);
    }
}
