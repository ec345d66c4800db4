//! GPT-2's block against Llama's at the economics recipe's shape (`examples/economics/recipe.yaml`:
//! 4 layers, 128 wide, context 1,024, 8 sequences a step, tinyshakespeare byte level, bf16,
//! AdamW at 4e-3, cosine with 50 warm-up steps), dense and with the recipe's mixture of experts:
//!
//!   cargo bench -p frugal-trainer --bench block_ab -- [steps] [eval_every] [threads]
//!
//! Four runs in lockstep (`lockstep.rs`): dense with GPT-2's block (LayerNorm, GELU MLP of
//! 4·d = 512), dense with Llama's (RMSNorm, SwiGLU of 344, the default 8·d/3 rounded up to 8),
//! and the recipe's MoE (16 experts, top-2, one shared, every second layer) with each block, the
//! SwiGLU experts 88 wide against GELU's 128: 2/3 of the width to the nearest multiple of 8, so
//! the parameters match within 3%. Positions stay rotary and linear layers bias-free on both
//! sides, so only the norm and the feed-forward differ. The cosine runs over `steps`. Prints each
//! run's report, then per pair Llama against GPT-2 in tokens/s and final validation loss. Run from
//! `trainer/` (cargo bench does); FRUGAL_BENCH_DATA names another text file.

mod lockstep;

use frugal_trainer::job;
use lockstep::Side;
use std::path::Path;
use std::time::Instant;

/// The recipe's run with `overrides` (`--set` fields) and the cosine over `steps`.
fn recipe(steps: i64, data: &str, overrides: &[&str]) -> frugal_trainer::config::RunConfig {
    let mut set = vec![format!("data.source.text.path={data}"), format!("training.duration.steps={steps}")];
    set.extend(overrides.iter().map(|o| o.to_string()));
    job::load_with(Path::new("../examples/economics/recipe.yaml"), &set).unwrap().run_config(None).unwrap()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let steps: i64 = args.first().and_then(|s| s.parse().ok()).unwrap_or(150);
    let eval_every: i64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(50);
    let threads: i32 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2);
    let data = std::env::var("FRUGAL_BENCH_DATA").unwrap_or_else(|_| "../data/tinyshakespeare.txt".into());
    tch::set_num_threads(threads);

    let llama = ["model.custom.norm=rmsNorm", "model.custom.feedForward=swiglu"];
    let dense = ["model.sparsity.moe=null"];
    let mut sides = [
        Side::new("dense gpt2", recipe(steps, &data, &dense)),
        Side::new("dense llama", recipe(steps, &data, &[&dense[..], &llama[..]].concat())),
        Side::new("moe gpt2", recipe(steps, &data, &[])),
        Side::new("moe llama", recipe(steps, &data, &[&llama[..], &["model.sparsity.moe.expertHidden=88"]].concat())),
    ];
    let started = Instant::now();
    for _ in 0..steps {
        for side in &mut sides {
            side.step(steps, eval_every);
        }
    }
    for side in &sides {
        side.report(started);
    }
    for pair in sides.chunks(2) {
        let (gpt2, llama) = (&pair[0], &pair[1]);
        let final_loss = |s: &Side| s.curve.last().unwrap().2;
        println!(
            "{{\"pair\":\"{}\",\"llama_over_gpt2_tokens_per_second\":{:.3},\"llama_minus_gpt2_val_loss\":{:.4}}}",
            gpt2.name.replace(" gpt2", ""),
            llama.tokens_per_second() / gpt2.tokens_per_second(),
            final_loss(llama) - final_loss(gpt2)
        );
    }
}
