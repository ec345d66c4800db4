//! Model-level checks: recomputation (with MoE routing replayed), parameter and FLOP counts
//! against the planner, mixed precision and loss scaling, dropless evaluation; GPT-2's block and
//! Llama's.

mod common;

use common::*;
use frugal_trainer::config::{AttentionPattern, FeedForward, ModelConfig, Norm, Positions, Precision};
use frugal_trainer::data::Data;
use frugal_trainer::model::gpt::Gpt;
use frugal_trainer::parallel::Worker;
use frugal_trainer::params::{Linears, ParamId, ParamStore};
use std::sync::{Arc, Mutex};
use tch::{Device, Kind, Tensor};

/// Flat gradient of one micro-batch, with or without recomputation.
fn grads(t: &mut Worker, x: &Tensor, y: &Tensor, recompute: bool) -> (Tensor, Option<i64>) {
    t.params.zero_grad();
    let stats = t.model.forward_backward(&t.params, x, y, 1.0, recompute);
    t.params.accumulate_grads(1.0);
    (t.params.grad.copy(), stats.routing_mismatches.map(|m| m.int64_value(&[])))
}

#[test]
fn recomputation_gives_the_same_gradients_and_moe_routing() {
    tch::set_num_threads(1);
    let mut model = small_model(true);
    model.positions = Positions::Rotary;
    model.attention = AttentionPattern::SlidingWindow { window: 4 };
    // Tight capacity so that dropping happens and must be replayed identically.
    model.moe.as_mut().unwrap().capacity_factor = 0.75;
    let cfg = small_run(model, 4, None);
    let mut t = Worker::single(cfg.clone(), Device::Cpu).unwrap();
    // Train a little so the router is not uniform.
    for _ in 0..3 {
        t.train_step().unwrap();
    }
    let mut data = Data::new(&cfg.data, cfg.model.vocab_size, cfg.model.seq_len, 99).unwrap();
    let b = data.next_batch(8);
    let (full, none) = grads(&mut t, &b.inputs, &b.targets, false);
    let (recomputed, mismatches) = grads(&mut t, &b.inputs, &b.targets, true);
    assert_eq!(none, None);
    assert_eq!(mismatches, Some(0), "recomputed routing differs from the first forward");
    let err = (&full - &recomputed).abs().max().double_value(&[]);
    let scale = full.abs().max().double_value(&[]);
    assert!(scale > 0.0 && err <= 1e-5 * scale, "gradients differ by {err} (max {scale})");
    let stats = t.model.forward_backward(&t.params, &b.inputs, &b.targets, 1.0, false);
    let dropped = stats.dropped.unwrap().int64_value(&[]);
    assert!(dropped > 0, "capacity factor 0.75 must drop some assignments");
}

#[test]
fn trainer_builds_the_parameters_the_planner_counts() {
    let mut shapes = vec![small_model(false), small_model(true)];
    let mut untied = small_model(true);
    untied.tied_embeddings = false;
    untied.bias = false;
    untied.positions = Positions::Rotary;
    untied.moe.as_mut().unwrap().every_n_layers = 2;
    untied.moe.as_mut().unwrap().shared_experts = 2;
    shapes.push(untied.clone());
    // Llama's block: RMSNorm (no bias even with bias: true), SwiGLU in the MLP and experts
    for (i, mut m) in [small_model(false), small_model(true), untied].into_iter().enumerate() {
        (m.norm, m.feed_forward, m.bias) = (Norm::RmsNorm, FeedForward::Swiglu, i != 2);
        shapes.push(m);
    }
    let mut gpt2 = frugal_trainer::config::nano_model(50257);
    gpt2.layers = 12;
    gpt2.d_model = 768;
    gpt2.heads = 12;
    gpt2.seq_len = 1024;
    gpt2.ffn_hidden = 3072;
    shapes.push(gpt2);
    for m in shapes {
        assert_eq!(Gpt::count_params(&m), m.parameters().total, "{m:?}");
    }
    // GPT-2 small: 124,439,808 parameters with learned positions and tied embeddings.
    let mut gpt2 = frugal_trainer::config::nano_model(50257);
    (gpt2.layers, gpt2.d_model, gpt2.heads, gpt2.seq_len, gpt2.ffn_hidden) = (12, 768, 12, 1024, 3072);
    assert_eq!(Gpt::count_params(&gpt2), 124_439_808);
}

/// The small MoE model with Llama's block: RMSNorm, SwiGLU experts, renormalised top-k gates.
fn llama_moe() -> ModelConfig {
    let mut m = small_model(true);
    (m.norm, m.feed_forward, m.bias, m.positions) = (Norm::RmsNorm, FeedForward::Swiglu, false, Positions::Rotary);
    m.moe.as_mut().unwrap().normalize_top_k = true;
    m
}

#[test]
fn bf16_training_tracks_fp32() {
    tch::set_num_threads(1);
    for (block, model) in [("GPT-2", small_model(true)), ("Llama", llama_moe())] {
        let run = |precision: Precision, recompute: bool| {
            let mut cfg = small_run(model.clone(), 40, None);
            cfg.train.precision = precision;
            cfg.train.activation_checkpointing = recompute;
            cfg.train.optim.lr = 1e-2;
            let mut t = Worker::single(cfg, Device::Cpu).unwrap();
            let losses: Vec<f64> = (0..40).map(|_| t.train_step().unwrap().loss).collect();
            (losses, t.validation_loss())
        };
        let (fp32, fp32_val) = run(Precision::Fp32, false);
        let (bf16, bf16_val) = run(Precision::Bf16, true);
        assert!(fp32[39] < fp32[0] - 0.5, "{block} block: fp32 loss went from {} to {}", fp32[0], fp32[39]);
        assert!((bf16[39] - fp32[39]).abs() < 0.1, "{block} block: bf16 ends at {}, fp32 at {}", bf16[39], fp32[39]);
        assert!((bf16_val - fp32_val).abs() < 0.1, "{block} block: validation: bf16 {bf16_val}, fp32 {fp32_val}");
    }
}

/// Counts the FLOPs of every product the store's linear layers compute (2 per multiply-add),
/// leaving the products to the store.
struct MatmulCounter(Arc<Mutex<f64>>);

impl Linears for MatmulCounter {
    fn replaces(&self, _: ParamId) -> bool {
        // banks of experts then run expert by expert, through expert_matmul
        true
    }
    fn linear(&self, p: &ParamStore, x: &Tensor, w: ParamId, _: Option<ParamId>) -> Option<Tensor> {
        let shape = &p.spec(w).shape; // [N, K]
        *self.0.lock().unwrap() += 2.0 * (x.numel() as i64 / shape[1] * shape[1] * shape[0]) as f64;
        None
    }
    fn expert_matmul(&self, p: &ParamStore, x: &Tensor, w: ParamId, _: Option<ParamId>) -> Option<Tensor> {
        let shape = &p.spec(w).shape; // [X, K, N]
        *self.0.lock().unwrap() += 2.0 * (x.numel() as i64 / shape[1] * shape[1] * shape[2]) as f64;
        None
    }
}

#[test]
fn the_planners_feed_forward_flops_are_the_products_the_model_computes() {
    tch::set_num_threads(1);
    let mut dense = llama_moe();
    dense.moe = None;
    let mut moe = llama_moe();
    // every token goes to both experts: no slot of the dropless evaluation is padding
    (moe.moe.as_mut().unwrap().experts, moe.moe.as_mut().unwrap().top_k) = (2, 2);
    let mut gelu = moe.clone();
    gelu.feed_forward = FeedForward::Gelu;
    for m in [dense, moe, gelu] {
        let (model, mut store) = Gpt::build_slice(&m, &frugal_trainer::model::gpt::whole(&m), 1, Device::Cpu, Kind::Float);
        let flops = Arc::new(Mutex::new(0.0));
        store.set_linears(Some(Box::new(MatmulCounter(flops.clone()))));
        let tokens = Tensor::zeros([3, m.seq_len], (Kind::Int64, Device::Cpu));
        let _ = model.eval_logits(&store, &tokens);
        let per_token = *flops.lock().unwrap() / (3 * m.seq_len) as f64;
        // the planner's forward FLOPs (2 per matmul weight a token meets), less the products
        // that do not go through the store's linear layers: the router's and the head's
        let router = m.moe.as_ref().map_or(0, |e| m.moe_layers() * m.d_model * e.experts);
        let planned = m.forward_flops_per_token(m.seq_len) - 4.0 * m.d_model as f64 * m.mean_attended_keys() * m.layers as f64;
        let want = planned - 2.0 * (router + m.vocab_size * m.d_model) as f64;
        assert_eq!(per_token, want, "{m:?}");
    }
}

#[test]
fn evaluation_drops_no_token_that_training_drops() {
    tch::set_num_threads(1);
    let mut tight = small_run(llama_moe(), 4, None);
    tight.model.moe.as_mut().unwrap().capacity_factor = 0.5;
    let mut wide = tight.clone();
    wide.model.moe.as_mut().unwrap().capacity_factor = 64.0;
    let t = Worker::single(tight.clone(), Device::Cpu).unwrap();
    let w = Worker::single(wide, Device::Cpu).unwrap();
    assert!(t.params.master.equal(&w.params.master), "the capacity factor is not a parameter");
    let mut data = Data::new(&tight.data, tight.model.vocab_size, tight.model.seq_len, 99).unwrap();
    let b = data.next_batch(8);
    let stats = t.model.forward_backward(&t.params, &b.inputs, &b.targets, 1.0, false);
    assert!(stats.dropped.unwrap().int64_value(&[]) > 0, "capacity factor 0.5 drops in training");
    assert!(t.model.eval_logits(&t.params, &b.inputs).equal(&w.model.eval_logits(&w.params, &b.inputs)));
    assert_eq!(t.validation_loss(), w.validation_loss());
}

#[test]
fn fp16_overflow_skips_the_step_and_halves_the_scale() {
    tch::set_num_threads(1);
    let mut cfg = small_run(small_model(false), 10, None);
    cfg.train.precision = Precision::Fp16;
    let mut t = Worker::single(cfg, Device::Cpu).unwrap();
    assert_eq!(t.params.get(frugal_trainer::params::ParamId(0)).kind(), Kind::Half);
    // A scale no fp16 gradient survives.
    t.scaler.scale = 1e30;
    let before = t.params.master.copy();
    let r = t.train_step().unwrap();
    assert!(r.skipped, "an overflowing step must be skipped");
    assert_eq!(t.scaler.scale, 5e29);
    assert!(t.params.master.equal(&before), "a skipped step must not change the weights");
    // With a sane scale, steps go through and the loss falls.
    t.scaler.scale = 1024.0;
    let first = t.train_step().unwrap();
    assert!(!first.skipped);
    let mut last = first.loss;
    for _ in 0..8 {
        last = t.train_step().unwrap().loss;
    }
    assert!(last < first.loss, "fp16 loss went from {} to {last}", first.loss);
}
