//! Small runs for the integration tests.
#![allow(dead_code)]

use frugal_trainer::config::*;
use std::path::PathBuf;

pub fn small_model(moe: bool) -> ModelConfig {
    let mut m = nano_model(257);
    m.layers = 2;
    m.d_model = 32;
    m.heads = 2;
    m.seq_len = 16;
    m.ffn_hidden = 64;
    if moe {
        m.moe = Some(MoeConfig {
            experts: 8,
            top_k: 2,
            shared_experts: 1,
            expert_hidden: 16,
            every_n_layers: 1,
            capacity_factor: 1.0,
            load_balance_weight: 0.01,
            normalize_top_k: false,
        });
    }
    m
}

pub fn small_run(model: ModelConfig, steps: i64, checkpoint_dir: Option<PathBuf>) -> RunConfig {
    RunConfig {
        name: "test".into(),
        model,
        data: DataConfig { source: DataSource::Synthetic { branching: 4, tokens: 50_000 }, validation_fraction: 0.1, eval_sequences: 8 },
        train: TrainConfig {
            steps,
            batch_size: 8,
            micro_batch_size: 4,
            precision: Precision::Fp32,
            activation_checkpointing: false,
            optim: OptimConfig { warmup_steps: 2, lr: 3e-3, ..Default::default() },
            seed: 7,
            eval_interval: 0,
            checkpoint_interval: 0,
            log_interval: 1,
        },
        checkpoint_dir,
        keep_checkpoints: 2,
        checkpoint_store: None,
        distill: None,
    }
}

pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("frugal-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
