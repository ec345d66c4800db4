//! Planner numbers against hand-computed cases.

use super::*;
use crate::v1alpha1::*;

fn job(yaml: &str) -> TrainingJobSpec {
    serde_saphyr::from_str(yaml).expect("test spec parses")
}

fn gpt2() -> TrainingJobSpec {
    job(r#"
model: {type: Preset, preset: gpt2-124m}
data: {source: {type: Synthetic}}
training: {duration: {type: Steps, steps: 1000}, batchSize: 8, precision: bf16}
"#)
}

#[test]
fn gpt2_124m_has_gpt2s_parameter_count() {
    let plan = plan(&gpt2(), &PlanOptions::default()).unwrap();
    // wte 50257·768 + wpe 1024·768 + 12 blocks of 7,087,872 + final LayerNorm 2·768
    assert_eq!(plan.parameters.total, 38_597_376 + 786_432 + 12 * 7_087_872 + 1_536);
    assert_eq!(plan.parameters.total, 124_439_808);
    assert_eq!(plan.parameters.active, plan.parameters.total);
    assert_eq!(plan.parameters.embedding, 38_597_376 + 786_432);
}

#[test]
fn gpt2_124m_flops_per_token() {
    let plan = plan(&gpt2(), &PlanOptions::default()).unwrap();
    // matmul weights: 12 blocks of 12·768² plus the head 50257·768 = 123,532,032; times 6.
    let dense = 6.0 * (12.0 * 12.0 * 768.0 * 768.0 + 50257.0 * 768.0);
    assert_eq!(dense, 741_192_192.0);
    // causal attention: 12 layers · 12 · 768 · (1024 + 1) / 2 keys on average
    let attention = 12.0 * 12.0 * 768.0 * 512.5;
    assert_eq!(plan.flops_per_token, dense + attention);
    assert_eq!(plan.tokens, 1000 * 8 * 1024);
    assert_eq!(plan.total_flops, plan.flops_per_token * plan.tokens as f64);
}

#[test]
fn gpt2_124m_memory_and_cost() {
    let plan = plan(&gpt2(), &PlanOptions::default()).unwrap();
    let p = 124_439_808i64;
    let m = plan.stages[0].memory;
    assert_eq!(m.weights, 6 * p); // fp32 master + bf16 copy
    assert_eq!(m.gradients, 4 * p);
    assert_eq!(m.optimizer, 8 * p);
    // per token: 12 blocks of 8·768 + 2·3072 elements, 8 sequences of 1024 tokens, 2 bytes
    assert_eq!(m.activations, 2 * 8 * 1024 * 12 * (8 * 768 + 2 * 3072));
    assert_eq!(m.logits, (2 + 8) * 50257 * 8 * 1024);
    assert_eq!(m.overhead, 1 << 30);
    assert!(plan.fits());
    assert_eq!(plan.gpus, 1);
    // H100 bf16 peak 989 TFLOP/s at 35% MFU, no bubble
    let hours = plan.total_flops / (989e12 * 0.35) / 3600.0;
    assert!((plan.estimated_gpu_hours - hours).abs() < 1e-12);
    assert!((plan.estimated_cost - hours * 2.5).abs() < 1e-12);
}

fn fine_grained_moe() -> TrainingJobSpec {
    job(r#"
model:
  type: Custom
  custom: {layers: 4, dModel: 128, heads: 4, seqLen: 64, vocabSize: 257}
  sparsity:
    moe: {experts: 16, topK: 3, sharedExperts: 1, expertHidden: 128}
data: {source: {type: Synthetic}}
training: {duration: {type: Steps, steps: 100}, batchSize: 12, precision: fp32}
resources: {device: CPU}
"#)
}

#[test]
fn moe_active_parameters_are_well_below_total() {
    let plan = plan(&fine_grained_moe(), &PlanOptions::default()).unwrap();
    // per block: norms 256, attention 4·128², router 128·16, shared expert and 16 routed experts
    // of 2·128·128 each; active has 3 routed experts.
    let block_total = 256 + 65_536 + 2_048 + 32_768 + 16 * 32_768;
    let block_active = 256 + 65_536 + 2_048 + 32_768 + 3 * 32_768;
    assert_eq!(plan.parameters.total, 32_896 + 4 * block_total + 128);
    assert_eq!(plan.parameters.total, 2_532_608);
    assert_eq!(plan.parameters.active, 828_672);
    assert_eq!(plan.parameters.active, 32_896 + 4 * block_active + 128);
    assert!(plan.parameters.active * 3 < plan.parameters.total);
    // equal active FLOPs to the dense model of the same width: 4 quarter-width experts
    // (3 routed + 1 shared) match one 4·d hidden layer, plus the router.
    let dense = job(r#"
model: {type: Preset, preset: tiny}
data: {source: {type: Synthetic}}
training: {duration: {type: Steps, steps: 100}, batchSize: 12, precision: fp32}
resources: {device: CPU}
"#);
    let dense = super::plan(&dense, &PlanOptions::default()).unwrap();
    let router = 6.0 * 128.0 * 16.0 * 4.0;
    assert_eq!(plan.flops_per_token, dense.flops_per_token + router);
    assert_eq!(plan.gpus, 0);
    assert_eq!(plan.estimated_gpu_hours, 0.0);
}

#[test]
fn sparse_attention_counts_only_computed_keys() {
    let mut m = ResolvedModel::from_spec(&fine_grained_moe().model).unwrap();
    assert_eq!(m.mean_attended_keys(), 32.5); // (64 + 1) / 2
    m.attention = ResolvedAttention::SlidingWindow { window: 16 };
    // positions 0..15 see p+1 keys (136 in all), the other 48 see 16
    assert_eq!(m.mean_attended_keys(), (136.0 + 48.0 * 16.0) / 64.0);
    m.attention = ResolvedAttention::BlockSparse { block_size: 16, local_blocks: 1, global_tokens: 4 };
    // block 0: p+1; block 1: p+1 (blocks 0 and 1); block 2: p-16+1 plus 4 global; block 3 likewise
    assert_eq!(m.attended_keys(5), 6);
    assert_eq!(m.attended_keys(20), 21);
    assert_eq!(m.attended_keys(40), 40 - 16 + 1 + 4);
    assert_eq!(m.attended_keys(63), 63 - 32 + 1 + 4);
}

#[test]
fn pipelining_a_model_that_fits_one_gpu_warns() {
    let mut spec = gpt2();
    spec.parallelism.pipeline_stages = 4;
    spec.parallelism.micro_batches = 8;
    let plan = plan(&spec, &PlanOptions::default()).unwrap();
    assert_eq!(plan.gpus, 4);
    assert!((plan.pipeline_bubble - 3.0 / 11.0).abs() < 1e-12);
    assert!(plan.warnings.iter().any(|w| w.contains("fits on one")), "{:?}", plan.warnings);
    assert!(plan.warnings.iter().any(|w| w.contains("raise parallelism.microBatches")));
    // stages cover every layer once, in order, each non-empty
    let covered: Vec<i64> = plan.stages.iter().flat_map(|s| s.layers.clone()).collect();
    assert_eq!(covered, (0..12).collect::<Vec<_>>());
    // a tied embedding is held by the first and the last stage
    let held: i64 = plan.stages.iter().map(|s| s.parameters).sum();
    assert_eq!(held, plan.parameters.total + 50257 * 768);
}

#[test]
fn partition_balances_flops_with_the_head_on_the_last_stage() {
    let model = ResolvedModel::from_spec(&gpt2().model).unwrap();
    let parts = partition_layers(&model, 4);
    let cost = |r: &std::ops::Range<i64>, last: bool| {
        r.clone().map(|l| model.block_flops_per_token(l)).sum::<f64>() + if last { model.head_flops_per_token() } else { 0.0 }
    };
    let worst = parts.iter().enumerate().map(|(i, r)| cost(r, i == 3)).fold(0.0, f64::max);
    // the head costs about 4.6 blocks, so the last stage takes fewer blocks
    assert!(parts[3].end - parts[3].start < parts[0].end - parts[0].start, "{parts:?}");
    // no contiguous split does better: try them all
    let mut best = f64::INFINITY;
    for a in 1..10 {
        for b in a + 1..11 {
            for c in b + 1..12 {
                let r = [0..a, a..b, b..c, c..12];
                let w = r.iter().enumerate().map(|(i, r)| cost(r, i == 3)).fold(0.0, f64::max);
                best = f64::min(best, w);
            }
        }
    }
    assert_eq!(worst, best);
}

#[test]
fn one_f_one_b_holds_fewer_micro_batches_than_gpipe() {
    for stage in 0..4 {
        assert_eq!(in_flight_micro_batches(PipelineSchedule::OneFOneB, 4, stage, 8), 4 - stage);
        assert_eq!(in_flight_micro_batches(PipelineSchedule::GPipe, 4, stage, 8), 8);
    }
    let mut spec = gpt2();
    spec.parallelism.pipeline_stages = 4;
    spec.parallelism.micro_batches = 8;
    let one_f = plan(&spec, &PlanOptions::default()).unwrap();
    spec.parallelism.schedule = PipelineSchedule::GPipe;
    let gpipe = plan(&spec, &PlanOptions::default()).unwrap();
    assert!(one_f.memory_per_device_bytes < gpipe.memory_per_device_bytes);
}

#[test]
fn recomputation_keeps_only_block_inputs() {
    let mut spec = gpt2();
    spec.training.activation_checkpointing = true;
    let plan = plan(&spec, &PlanOptions::default()).unwrap();
    let tokens = 8 * 1024;
    let working = 8 * 768 + 2 * 3072;
    assert_eq!(plan.stages[0].memory.activations, 2 * tokens * (12 * 768 + working));
}

#[test]
fn a_model_too_big_for_its_gpu_is_flagged() {
    let mut spec = job(r#"
model: {type: Preset, preset: gpt2-774m}
data: {source: {type: Synthetic}}
training: {duration: {type: Steps, steps: 10}, batchSize: 64}
resources: {gpuType: nvidia-t4-16gb}
"#);
    let plan = super::plan(&spec, &PlanOptions::default()).unwrap();
    assert!(!plan.fits());
    assert!(plan.warnings.iter().any(|w| w.contains("exceeds the nvidia-t4-16gb")), "{:?}", plan.warnings);
    spec.resources.gpu_type = "nvidia-b9000".into();
    let err = super::plan(&spec, &PlanOptions::default()).unwrap_err();
    assert!(err.to_string().contains("resources.gpuType \"nvidia-b9000\""), "{err}");
}

#[test]
fn tokens_duration_rounds_up_to_whole_steps() {
    let mut spec = gpt2();
    spec.training.duration = Duration { type_: DurationType::Tokens, steps: None, tokens: Some(8 * 1024 * 10 + 1) };
    let plan = plan(&spec, &PlanOptions::default()).unwrap();
    assert_eq!(plan.steps, 11);
}

#[test]
fn presets_with_stages_beyond_their_layers_are_refused() {
    let mut spec = job(r#"
model: {type: Preset, preset: tiny}
data: {source: {type: Synthetic}}
"#);
    spec.parallelism.pipeline_stages = 8;
    let err = plan(&spec, &PlanOptions::default()).unwrap_err();
    assert_eq!(err, PlanError::TooManyStages { stages: 8, layers: 4 });
}
