//! Planner numbers against hand-computed cases.

use super::*;
use crate::v1alpha1::*;

fn gpt2() -> TrainingJobSpec {
    TrainingJob::test().preset(ModelPreset::Gpt2_124m).steps(1000).batch_size(8).precision(Precision::Bf16).into_spec()
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
    TrainingJob::test()
        .custom_model(4, 128, 4, 64)
        .moe(16, 3)
        .with(|s| {
            let moe = s.model.sparsity.moe.as_mut().unwrap();
            (moe.shared_experts, moe.expert_hidden) = (1, Some(128));
        })
        .steps(100)
        .batch_size(12)
        .precision(Precision::Fp32)
        .cpu()
        .into_spec()
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
    let dense = TrainingJob::test().preset(ModelPreset::Tiny).steps(100).batch_size(12).precision(Precision::Fp32).cpu().into_spec();
    let dense = super::plan(&dense, &PlanOptions::default()).unwrap();
    let router = 6.0 * 128.0 * 16.0 * 4.0;
    assert_eq!(plan.flops_per_token, dense.flops_per_token + router);
    assert_eq!(plan.gpus, 0);
    assert_eq!(plan.estimated_gpu_hours, 0.0);
}

/// The tiny preset's shape with Llama's block: RMSNorm, SwiGLU of the default width, biases on.
fn llama_block(moe: bool) -> TrainingJobSpec {
    let spec = if moe {
        fine_grained_moe()
    } else {
        TrainingJob::test().custom_model(4, 128, 4, 64).steps(100).batch_size(12).precision(Precision::Fp32).cpu().into_spec()
    };
    TrainingJob::test()
        .with(|s| *s = spec)
        .with(|s| {
            let shape = s.model.custom.as_mut().unwrap();
            (shape.norm, shape.feed_forward, shape.bias) = (Norm::RmsNorm, FeedForward::Swiglu, true);
        })
        .into_spec()
}

#[test]
fn swiglus_default_width_is_eight_thirds_of_d_rounded_up_to_eight() {
    assert_eq!(FeedForward::Swiglu.default_hidden(128), 344); // 341.3 → 342 → 344
    assert_eq!(FeedForward::Swiglu.default_hidden(768), 2048); // exact
    assert_eq!(FeedForward::Swiglu.default_hidden(4096), 10928);
    assert_eq!(FeedForward::Gelu.default_hidden(128), 512);
    let m = ResolvedModel::from_spec(&llama_block(false).model).unwrap();
    assert_eq!(m.ffn_hidden, 344);
    // three d × 344 matrices against GELU's two d × 512: within 1% of the same parameters
    assert!((3.0 * 344.0 / (2.0 * 512.0) - 1.0f64).abs() < 0.01);
}

#[test]
fn a_llama_block_counts_three_feed_forward_matrices_and_norms_without_bias() {
    let plan = plan(&llama_block(false), &PlanOptions::default()).unwrap();
    let (d, h) = (128, 344);
    // per block: two RMSNorm gains (no bias), attention with biases, the fused gate and up
    // projection [2h, d] with its bias, the down projection [d, h] with its bias
    let block = 2 * d + (4 * d * d + 4 * d) + (2 * h * d + 2 * h) + (h * d + d);
    assert_eq!(plan.parameters.total, 257 * d + 4 * block + d);
    // FLOPs: 6 per matmul weight (4·d² attention, 3·d·h SwiGLU, the head), plus attention scores
    let matmul = 4.0 * (4.0 * 128.0 * 128.0 + 3.0 * 128.0 * 344.0) + 257.0 * 128.0;
    let attention = 4.0 * 12.0 * 128.0 * 32.5;
    assert_eq!(plan.flops_per_token, 6.0 * matmul + attention);
    // activations per token: 8·d around attention, each RMSNorm's normalised input (2·d), then
    // the gate and up projection (2h), the SiLU of the gate (h) and the product (h); 12
    // sequences of 64 tokens in fp32
    let m = &plan.stages[0].memory;
    assert_eq!(m.activations, 4 * 12 * 64 * 4 * (10 * d + 4 * h));
}

#[test]
fn swiglu_experts_count_three_matrices_each() {
    let plan = plan(&llama_block(true), &PlanOptions::default()).unwrap();
    let d = 128;
    // experts of 128 hidden: [d, 2·128] in, [128, d] out, biases of 2·128 and d
    let expert = 3 * d * 128 + 2 * 128 + d;
    let common = 2 * d + (4 * d * d + 4 * d) + d * 16;
    assert_eq!(plan.parameters.total, 257 * d + 4 * (common + 17 * expert) + d);
    assert_eq!(plan.parameters.active, 257 * d + 4 * (common + 4 * expert) + d);
    // 3 routed + 1 shared expert of 3·d·128 weights each, the router and attention, per layer
    let matmul = 4.0 * (4.0 * 128.0 * 128.0 + 128.0 * 16.0 + 4.0 * 3.0 * 128.0 * 128.0) + 257.0 * 128.0;
    assert_eq!(plan.flops_per_token, 6.0 * matmul + 4.0 * 12.0 * 128.0 * 32.5);
    // per routed copy at capacity factor 1.25: the input and output (2d) and the expert's
    // 4 · 128 hidden activations; the shared expert's 4 · 128
    let ffn = 16 + (3.0f64 * 1.25 * (2 * d + 4 * 128) as f64).ceil() as i64 + 4 * 128;
    assert_eq!(crate::planner::memory::block_activation_elements(&plan.model, 0), 10 * d + ffn);
}

#[test]
fn normalized_gates_need_two_experts_a_token() {
    let mut spec = fine_grained_moe();
    spec.model.sparsity.moe.as_mut().unwrap().normalize_top_k = true;
    assert!(ResolvedModel::from_spec(&spec.model).unwrap().moe.unwrap().normalize_top_k);
    spec.model.sparsity.moe.as_mut().unwrap().top_k = 1;
    let err = ResolvedModel::from_spec(&spec.model).unwrap_err();
    assert!(err.to_string().contains("normalizeTopK needs topK of at least 2"), "{err}");
}

#[test]
fn the_gpt2_block_serialises_as_before_the_llama_block_existed() {
    // a resolved model at GPT-2's block (and an MoE with raw gates) has no new keys, so the
    // pod contracts and configuration hashes written before stay what they were
    let m = ResolvedModel::from_spec(&fine_grained_moe().model).unwrap();
    let text = serde_json::to_string(&m).unwrap();
    for key in ["norm", "feedForward", "normalizeTopK"] {
        assert!(!text.contains(key), "{key} in {text}");
    }
    assert_eq!(serde_json::from_str::<ResolvedModel>(&text).unwrap(), m);
    let llama = ResolvedModel::from_spec(&llama_block(true).model).unwrap();
    let text = serde_json::to_string(&llama).unwrap();
    assert!(text.contains(r#""norm":"rmsNorm""#) && text.contains(r#""feedForward":"swiglu""#), "{text}");
    assert_eq!(serde_json::from_str::<ResolvedModel>(&text).unwrap(), llama);
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
    // one stage: its head runs in the backward before any block is rebuilt, and its logits
    // (50257 × 8192 × (4 + 2 + 4) bytes) outweigh one rebuilt block: only the inputs count
    let logits = 50257 * tokens * (4 + 2 + 4);
    assert_eq!(plan.stages[0].memory.logits, logits);
    assert_eq!(plan.stages[0].memory.activations, 2 * tokens * 12 * 768 + (2 * tokens * working - logits).max(0));
    // a stage without the head holds one rebuilt block beside the inputs of every block
    spec.parallelism.pipeline_stages = 2;
    spec.parallelism.schedule = PipelineSchedule::OneFOneB;
    let plan = super::plan(&spec, &PlanOptions::default()).unwrap();
    let first = &plan.stages[0];
    let micro = i64::from(spec.parallelism.micro_batches);
    let tokens = i64::from(spec.training.batch_size) / micro * 1024;
    let blocks = first.layers.clone().count() as i64;
    assert_eq!(first.memory.activations, 2 * tokens * (blocks * 768 * 2.min(micro) + working));
}

#[test]
fn a_model_too_big_for_its_gpu_is_flagged() {
    let mut spec = TrainingJob::test().preset(ModelPreset::Gpt2_774m).steps(10).batch_size(64).gpu_type("nvidia-t4-16gb").into_spec();
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
    let mut spec = TrainingJob::test().preset(ModelPreset::Tiny).into_spec();
    spec.parallelism.pipeline_stages = 8;
    let err = plan(&spec, &PlanOptions::default()).unwrap_err();
    assert_eq!(err, PlanError::TooManyStages { stages: 8, layers: 4 });
}

/// gpt2-124m on `stages` stages × `replicas` replicas, `micro` micro-batches per replica.
fn gpt2_laid_out(stages: i32, replicas: i32, micro: i32, batch: i32) -> TrainingJobSpec {
    let mut spec = gpt2();
    (spec.parallelism.pipeline_stages, spec.parallelism.data_parallel, spec.parallelism.micro_batches) = (stages, replicas, micro);
    spec.training.batch_size = batch;
    spec
}

#[test]
fn replicas_multiply_gpus_and_pods_and_share_the_batch() {
    let plan = plan(&gpt2_laid_out(2, 2, 2, 8), &PlanOptions::default()).unwrap();
    assert_eq!((plan.gpus, plan.pods, plan.replicas, plan.stages.len()), (4, 4, 2, 2));
    // each replica's micro-batch: 8 / (2 × 2) = 2 sequences, the same as one replica's of 4
    let alone = super::plan(&gpt2_laid_out(2, 1, 4, 8), &PlanOptions::default()).unwrap();
    assert_eq!(alone.gpus, 2);
    assert_eq!(plan.stages[0].memory, alone.stages[0].memory, "the same micro-batch, the same 1F1B depth");
    // bf16, 2 sequences of 1024 tokens, 2 micro-batches in flight on the first of 2 stages
    let blocks = plan.stages[0].layers.end - plan.stages[0].layers.start;
    assert_eq!(plan.stages[0].memory.activations, 2 * (2 * 1024) * 2 * blocks * (8 * 768 + 2 * 3072));
    // the whole batch's FLOPs and tokens; GPU-hours change only with the bubble, 1/3 here
    assert_eq!((plan.tokens, plan.total_flops), (alone.tokens, alone.total_flops));
    assert!((plan.pipeline_bubble - 1.0 / 3.0).abs() < 1e-12);
    let hours = plan.total_flops / (989e12 * 0.35 * (2.0 / 3.0)) / 3600.0;
    assert!((plan.estimated_gpu_hours - hours).abs() < 1e-12);
    let status = plan.to_status();
    assert_eq!((status.gpus, status.pods, status.replicas), (4, 4, 2));
    assert_eq!(status.communication_bytes_per_step, plan.communication_bytes_per_step);
    // several stages per pod; CPU jobs hold no GPUs but run every replica's pods
    let mut spec = gpt2_laid_out(2, 2, 2, 8);
    spec.parallelism.gpus_per_pod = 2;
    assert_eq!(super::plan(&spec, &PlanOptions::default()).unwrap().pods, 2);
    spec.resources.device = Device::Cpu;
    let cpu = super::plan(&spec, &PlanOptions::default()).unwrap();
    assert_eq!((cpu.gpus, cpu.pods, cpu.estimated_gpu_hours), (0, 2, 0.0));
}

#[test]
fn a_plan_status_written_before_replicas_still_reads() {
    let mut old = serde_json::to_value(plan(&gpt2(), &PlanOptions::default()).unwrap().to_status()).unwrap();
    let fields = old.as_object_mut().unwrap();
    assert!(fields.remove("replicas").is_some() && fields.remove("communicationBytesPerStep").is_some());
    let status: PlanStatus = serde_json::from_value(old).unwrap();
    assert_eq!((status.gpus, status.replicas, status.communication_bytes_per_step), (1, 0, 0));
}

#[test]
fn sharded_optimizer_state_is_divided_among_the_replicas() {
    let mut spec = gpt2_laid_out(1, 4, 1, 8);
    let whole = plan(&spec, &PlanOptions::default()).unwrap().stages[0].memory;
    spec.parallelism.shard_optimizer_state = true;
    let sharded = plan(&spec, &PlanOptions::default()).unwrap().stages[0].memory;
    assert_eq!(whole.optimizer, 8 * 124_439_808);
    assert_eq!(sharded.optimizer, 2 * 124_439_808);
    assert_eq!(StageMemory { optimizer: whole.optimizer, ..sharded }, whole, "only the optimizer state is sharded");
    // a share that does not divide evenly is rounded up
    spec.parallelism.data_parallel = 8;
    spec.training.batch_size = 8;
    let odd = plan(&spec, &PlanOptions::default()).unwrap().stages[0].memory.optimizer;
    assert_eq!(odd, 124_439_808);
    spec.parallelism.data_parallel = 3;
    spec.training.batch_size = 9;
    let odd = plan(&spec, &PlanOptions::default()).unwrap().stages[0].memory.optimizer;
    assert_eq!(odd, (8 * 124_439_808 + 2) / 3);
}

#[test]
fn communication_counts_the_gradient_ring_and_the_pipeline() {
    // one GPU: nothing to send
    let alone = plan(&gpt2(), &PlanOptions::default()).unwrap();
    assert_eq!((alone.communication_bytes_per_step, alone.stages[0].communication), (0, StageCommunication::default()));
    // 2 stages × 2 replicas, 2 micro-batches of 2 sequences each
    let mut spec = gpt2_laid_out(2, 2, 2, 8);
    let plan = super::plan(&spec, &PlanOptions::default()).unwrap();
    let activations = 2 * (2 * 1024) * 768 * 2; // micro-batches × tokens × d_model × bf16
    for (stage, s) in plan.stages.iter().enumerate() {
        // a ring of 2 all-reduces: each sends 2 · 1/2 of its fp32 gradients
        assert_eq!(s.communication.gradients, 4 * s.parameters, "stage {stage}");
        assert_eq!(s.communication.weights, 0);
        // stage 0 sends activations on, stage 1 their gradients back
        assert_eq!(s.communication.pipeline, activations, "stage {stage}");
    }
    let largest = plan.stages.iter().map(|s| s.communication.total()).max().unwrap();
    assert_eq!(plan.communication_bytes_per_step, largest);
    // sharded optimizer state: the updated fp32 weights are gathered as well, 1/2 of them
    spec.parallelism.shard_optimizer_state = true;
    let sharded = super::plan(&spec, &PlanOptions::default()).unwrap();
    assert_eq!(sharded.stages[0].communication.weights, 2 * sharded.stages[0].parameters);
    // a middle stage sends both ways, and a ring of 4 sends 2 · 3/4
    let four = super::plan(&gpt2_laid_out(3, 4, 1, 8), &PlanOptions::default()).unwrap();
    let middle = four.stages[1].communication;
    assert_eq!(middle.pipeline, 2 * (2 * 1024) * 768 * 2);
    assert_eq!(middle.gradients, 2 * (4 * four.stages[1].parameters * 3).div_euclid(4));
}

#[test]
fn a_batch_that_does_not_divide_among_the_replicas_is_refused() {
    let err = plan(&gpt2_laid_out(1, 3, 2, 8), &PlanOptions::default()).unwrap_err();
    assert_eq!(err, PlanError::UnevenReplicaBatches { batch: 8, micro: 2, replicas: 3 });
    assert_eq!(
        err.to_string(),
        "training.batchSize 8 is not a multiple of parallelism.microBatches 2 × parallelism.dataParallel 3 = 6: each replica's micro-batch holds batchSize / (dataParallel × microBatches) sequences; change one of them"
    );
    let err = plan(&gpt2_laid_out(1, 1, 3, 8), &PlanOptions::default()).unwrap_err();
    assert_eq!(err, PlanError::UnevenMicroBatches { batch: 8, micro: 3 });
}

fn custom_on_t4(d_model: i32, stages: i32) -> TrainingJobSpec {
    TrainingJob::test()
        .custom_model(4, d_model, 32, 512)
        .with(|s| s.model.custom.as_mut().unwrap().vocab_size = 32768)
        .steps(10)
        .gpu_type("nvidia-t4-16gb")
        .stages(stages)
        .micro_batches(8)
        .into_spec()
}

#[test]
fn a_model_that_fits_one_gpu_is_laid_out_as_replicas() {
    let options = PlanOptions::default();
    // 4 stages of gpt2-124m, 8 micro-batches of 4 sequences: one GPU holds it all
    let spec = gpt2_laid_out(4, 1, 8, 32);
    let layout = suggest_layout(&spec, &options).unwrap();
    assert_eq!((layout.pipeline_stages, layout.data_parallel, layout.micro_batches, layout.gpus_per_pod), (1, 4, 8, 1));
    assert_eq!(layout.gpus(), 4);
    assert_eq!(layout.pipeline_bubble, 0.0);
    let laid_out = plan(&layout.apply(&spec), &options).unwrap();
    assert_eq!((laid_out.gpus, laid_out.memory_per_device_bytes), (4, layout.memory_per_device_bytes));
    assert!(laid_out.fits());
    let warning = plan(&spec, &options).unwrap().warnings.into_iter().find(|w| w.contains("fits on one")).unwrap();
    assert!(
        warning.ends_with(
            ": set parallelism.pipelineStages: 1 and parallelism.dataParallel: 4 to use the same 4 GPUs with no pipeline bubble instead of 27%"
        ),
        "{warning}"
    );
    // the laid-out job is suggested nothing
    assert_eq!(suggest_layout(&layout.apply(&spec), &options), None);
    assert!(!laid_out.warnings.iter().any(|w| w.contains("to use the same")), "{:?}", laid_out.warnings);
}

#[test]
fn a_layout_keeps_the_batch_divisible_and_pods_whole() {
    // 8 sequences cannot be 4 replicas × 8 micro-batches: 4 × 2 of one sequence each
    let spec = gpt2_laid_out(4, 1, 8, 8);
    let layout = suggest_layout(&spec, &PlanOptions::default()).unwrap();
    assert_eq!((layout.pipeline_stages, layout.data_parallel, layout.micro_batches), (1, 4, 2));
    assert_eq!(layout.changes(&spec.parallelism), "parallelism.pipelineStages: 1, parallelism.dataParallel: 4 and parallelism.microBatches: 2");
    // pods of 4 stages become pods of the 2 stages a replica has
    let mut spec = custom_on_t4(4096, 4);
    spec.parallelism.gpus_per_pod = 4;
    let layout = suggest_layout(&spec, &PlanOptions::default()).unwrap();
    assert_eq!((layout.pipeline_stages, layout.data_parallel, layout.gpus_per_pod), (2, 2, 2));
    assert_eq!(plan(&layout.apply(&spec), &PlanOptions::default()).unwrap().pods, 2);
    // a CPU job or a single stage has nothing to suggest
    assert_eq!(suggest_layout(&gpt2(), &PlanOptions::default()), None);
    let mut cpu = gpt2_laid_out(4, 1, 8, 32);
    cpu.resources.device = Device::Cpu;
    assert_eq!(suggest_layout(&cpu, &PlanOptions::default()), None);
}

#[test]
fn a_model_that_needs_two_of_four_gpus_gets_two_replicas_of_two_stages() {
    let spec = custom_on_t4(4096, 4);
    let one = plan(&custom_on_t4(4096, 1), &PlanOptions::default()).unwrap();
    assert!(!one.fits(), "a single GPU is too small");
    let layout = suggest_layout(&spec, &PlanOptions::default()).unwrap();
    assert_eq!((layout.pipeline_stages, layout.data_parallel, layout.micro_batches), (2, 2, 8));
    assert!(layout.memory_per_device_bytes <= one.gpu_memory_bytes);
    let warnings = plan(&spec, &PlanOptions::default()).unwrap().warnings;
    let w = warnings.iter().find(|w| w.contains("stages per replica")).unwrap();
    assert!(w.starts_with("the model fits in 2 stages per replica (10.6 GiB of the nvidia-t4-16gb's 15.0 GiB)"), "{w}");
    assert!(
        w.ends_with("set parallelism.pipelineStages: 2 and parallelism.dataParallel: 2 to use the same 4 GPUs with a 11% bubble instead of 27%"),
        "{w}"
    );
}

#[test]
fn a_model_that_needs_every_stage_is_left_alone() {
    let spec = custom_on_t4(5376, 4);
    let plan = plan(&spec, &PlanOptions::default()).unwrap();
    assert!(plan.fits());
    assert_eq!(suggest_layout(&spec, &PlanOptions::default()), None);
    assert!(!plan.warnings.iter().any(|w| w.contains("to use the same")), "{:?}", plan.warnings);
    // sharding the optimizer state across two replicas makes room for two stages
    let mut sharded = spec.clone();
    sharded.parallelism.shard_optimizer_state = true;
    sharded.parallelism.data_parallel = 2;
    sharded.training.batch_size = 64;
    let layout = suggest_layout(&sharded, &PlanOptions::default()).unwrap();
    assert_eq!((layout.pipeline_stages, layout.data_parallel), (2, 4));
}

#[test]
fn a_distilled_job_pays_for_its_teachers_forward_on_the_last_stage() {
    let mut spec = gpt2_laid_out(2, 1, 4, 8);
    let alone = plan(&spec, &PlanOptions::default()).unwrap();
    spec.distill = Some(job_distill(Some(ModelPreset::Gpt2_350m), 0.5));
    let plan = super::plan(&spec, &PlanOptions::default()).unwrap();
    let teacher = plan.teacher.as_ref().expect("the teacher's model");
    // gpt2-350m: wte 50257·1024 + wpe 1024·1024 + 24 blocks of 12,596,224 + the final LayerNorm
    assert_eq!(teacher.parameters().total, 51_463_168 + 1_048_576 + 24 * 12_596_224 + 2_048);
    // its forward over the student's 1024-token sequences: 2 per matmul weight (24 blocks of
    // 12·1024², the head 50257·1024) and 4 · d · 512.5 keys per layer for attention
    let forward = 2.0 * (24.0 * 12.0 * 1024.0 * 1024.0 + 50257.0 * 1024.0) + 24.0 * 4.0 * 1024.0 * 512.5;
    assert_eq!(plan.flops_per_token, alone.flops_per_token + forward);
    assert_eq!(plan.total_flops, plan.flops_per_token * plan.tokens as f64);
    let ratio = plan.estimated_gpu_hours / alone.estimated_gpu_hours;
    assert!((ratio - plan.flops_per_token / alone.flops_per_token).abs() < 1e-12, "GPU-hours grow with the FLOPs: {ratio}");
    // the last stage runs the teacher and holds it (bf16 weights, fp32 logits of a micro-batch of
    // 2 sequences); the first stage is as it was
    let (first, last) = (&plan.stages[0], &plan.stages[1]);
    assert_eq!(first.flops_per_token, alone.stages[0].flops_per_token);
    assert_eq!(last.flops_per_token, alone.stages[1].flops_per_token + forward);
    assert_eq!(first.memory, alone.stages[0].memory);
    assert_eq!(last.memory.teacher, 2 * teacher.parameters().total + 8 * 50257 * 2 * 1024);
    assert_eq!(last.memory.total(), alone.stages[1].memory.total() + last.memory.teacher);
    assert_eq!(plan.parameters, alone.parameters, "the teacher trains nothing");
    // with softWeight 0 the trainer does not run the teacher, but still holds it
    spec.distill = Some(job_distill(Some(ModelPreset::Gpt2_350m), 0.0));
    let unweighted = super::plan(&spec, &PlanOptions::default()).unwrap();
    assert_eq!(unweighted.flops_per_token, alone.flops_per_token);
    assert_eq!(unweighted.stages[1].memory.teacher, last.memory.teacher);
    // a teacher model that does not resolve names its field
    spec.distill = Some(job_distill(None, 0.5));
    let err = super::plan(&spec, &PlanOptions::default()).unwrap_err().to_string();
    assert!(err.starts_with("distill.teacher.model.preset is required"), "{err}");
}

/// A teacher of `preset` (none: a preset model that names none) at /teacher, temperature 2.
fn job_distill(preset: Option<ModelPreset>, soft_weight: f64) -> DistillSpec {
    let model = ModelSpec { type_: ModelType::Preset, preset, custom: None, sparsity: SparsitySpec::default(), init: None };
    DistillSpec { teacher: TeacherSpec { model, checkpoint: "/teacher".into() }, temperature: 2.0, soft_weight }
}

#[test]
fn the_fewest_gpus_are_the_fewest_stages_that_fit() {
    let options = PlanOptions::default();
    let t4 = gpu_type("nvidia-t4-16gb").unwrap();
    let fits = |d_model: i32, stages: i32| plan(&custom_on_t4(d_model, stages), &options).unwrap().fits();
    // a model that needs more than one T4 but fits on two or three stages of it
    let d_model = (1..=32).map(|k| k * 256).find(|&d| !fits(d, 1) && fits(d, 4)).expect("a width that needs pipelining");
    let layout = fewest_gpus(&custom_on_t4(d_model, 1), t4, &options).unwrap();
    let s = layout.pipeline_stages;
    assert!(s > 1 && fits(d_model, s) && !fits(d_model, s - 1), "{d_model} wide: {s} stages");
    assert_eq!((layout.gpus(), layout.data_parallel, layout.micro_batches), (i64::from(s), 1, 8));
    assert_eq!(layout.memory_per_device_bytes, plan(&custom_on_t4(d_model, s), &options).unwrap().memory_per_device_bytes);
    // recomputation needs no more GPUs than keeping every activation
    let mut lean = custom_on_t4(d_model, 1);
    lean.training.activation_checkpointing = true;
    assert!(fewest_gpus(&lean, t4, &options).unwrap().pipeline_stages <= s);
    // nothing fits a model wider than every stage count can split
    assert_eq!(fewest_gpus(&custom_on_t4(16384, 1), t4, &options), None);
}

#[test]
fn a_gpu_job_without_a_checkpoint_claim_is_warned_that_evictions_restart_it() {
    let warning = |spec: &TrainingJobSpec| plan(spec, &PlanOptions::default()).unwrap().warnings.into_iter().find(|w| w.contains("claimName"));
    let w = warning(&gpt2()).expect("a GPU job without a claim is warned");
    assert!(w.contains("emptyDir") && w.contains("step 0") && w.contains("set spec.checkpoint.claimName"), "{w}");
    assert!(!w.contains("ReadWriteMany"), "one pod: {w}");
    let several = warning(&gpt2_laid_out(2, 2, 4, 16)).unwrap();
    assert!(several.contains("ReadWriteMany") && several.contains("4 GPU(s)"), "{several}");
    assert!(w.contains("spec.checkpoint.store"), "{w}");
    let mut claimed = gpt2();
    claimed.checkpoint.claim_name = Some("checkpoints".into());
    assert_eq!(warning(&claimed), None);
    // a bucket keeps the steps of a job of one pod and of one of several
    let bucket =
        Some(crate::v1alpha1::ObjectStoreSpec { uri: "s3://lm-checkpoints/gpt2".into(), endpoint: None, region: None, credentials_secret: None });
    let mut in_bucket = gpt2();
    in_bucket.checkpoint.store = bucket.clone();
    assert_eq!(warning(&in_bucket), None);
    let mut several_in_bucket = gpt2_laid_out(2, 2, 4, 16);
    several_in_bucket.checkpoint.store = bucket;
    assert_eq!(warning(&several_in_bucket), None);
    assert!(several.contains("spec.checkpoint.store"), "{several}");
    // a CPU job holds no GPU to lose
    assert_eq!(warning(&fine_grained_moe()), None);
}
