//! Data parallelism against pipelining on the same model and CPU, in one run: tokens/s of
//! replicas × stages = 1 × 1, 2 × 1, 1 × 2 and 2 × 2, the share of a step the replicas spend
//! averaging gradients, and the planner's figures for each layout beside them.
//!
//!   cargo bench -p frugal-trainer --bench data_parallel -- [steps]
//!
//! Every rank (a stage of a replica) runs on a thread of one process with one intra-op thread, so
//! that a rank is a core, as a pod is a GPU; the rings are channels. 1 × 1 also runs with as many
//! intra-op threads as the other layouts have ranks (up to the cores), the fair single-process
//! baseline. The batch is 16 sequences of 64 tokens in micro-batches of 4 sequences for every
//! layout, so each layout computes the same kernels and the same gradient (the tests check that).

use frugal_api::planner::{self, PlanOptions};
use frugal_api::v1alpha1::TrainingJobSpec;
use frugal_trainer::config::*;
use frugal_trainer::parallel::{Replicas, ScheduleKind, Worker, layouts, run_replicated};
use tch::Device;

const BATCH: i64 = 16;
const MICRO_BATCH: i64 = 4;

fn run_config(steps: i64) -> RunConfig {
    synthetic_run("data-parallel-bench", nano_model(256), steps, BATCH, MICRO_BATCH)
}

/// The same job as a TrainingJob spec, for the planner.
fn spec(replicas: usize, stages: usize, shard: bool) -> TrainingJobSpec {
    let micro = BATCH / MICRO_BATCH / replicas as i64;
    serde_saphyr::from_str(&format!(
        r#"
model:
  type: Custom
  custom: {{layers: 4, dModel: 128, heads: 4, seqLen: 64, vocabSize: 256, positions: learned, tiedEmbeddings: true, bias: true}}
data: {{source: {{type: Synthetic}}}}
training: {{batchSize: {BATCH}, precision: fp32, optimizer: {{type: adamw}}}}
parallelism: {{pipelineStages: {stages}, dataParallel: {replicas}, microBatches: {micro}, shardOptimizerState: {shard}}}
resources: {{device: GPU, gpuType: nvidia-h100-80gb}}
"#
    ))
    .expect("the bench's spec parses")
}

struct Measured {
    tokens_per_second: f64,
    wall_ms: f64,
    /// Mean over ranks of the share of a step spent in the ring.
    ring_share: f64,
    /// Bytes one rank sent to the next replica per step, the most of any rank.
    ring_bytes: f64,
    optimizer_state_bytes: i64,
}

fn measure(replicas: usize, stages: usize, shard: bool, steps: i64) -> Measured {
    let cfg = run_config(steps + 1);
    let ranks = run_replicated(
        &cfg,
        &layouts(&cfg.model, stages),
        Replicas { count: replicas, shard_optimizer: shard },
        ScheduleKind::OneFOneB,
        &[Device::Cpu],
        move |w: &mut Worker| {
            w.train_step()?; // warm-up
            let sent0 = w.ring.as_ref().map_or(0, |r| r.sent_bytes);
            let (mut wall, mut ring) = (0.0, 0.0);
            for _ in 0..steps {
                let r = w.train_step()?;
                wall += r.seconds;
                ring += r.ring_seconds.unwrap_or(0.0);
            }
            let sent = w.ring.as_ref().map_or(0, |r| r.sent_bytes) - sent0;
            Ok((wall, ring, sent as f64 / steps as f64, w.optim.state_bytes()))
        },
    )
    .expect("the layout trains");
    let wall = ranks.iter().map(|r| r.0).fold(0.0, f64::max) / steps as f64;
    Measured {
        tokens_per_second: (BATCH * cfg.model.seq_len) as f64 / wall,
        wall_ms: wall * 1e3,
        ring_share: ranks.iter().map(|r| r.1 / r.0).sum::<f64>() / ranks.len() as f64,
        ring_bytes: ranks.iter().map(|r| r.2).fold(0.0, f64::max),
        optimizer_state_bytes: ranks.iter().map(|r| r.3).max().unwrap_or(0),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let steps: i64 = args.first().and_then(|s| s.parse().ok()).unwrap_or(5);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "# data parallel × pipeline, nano GPT (4 layers, d=128, context 64, 0.8M parameters), {BATCH} sequences a step in micro-batches of {MICRO_BATCH}, fp32 AdamW, {cores} cores, {steps} steps"
    );
    println!(
        "| replicas × stages | ranks | intra-op threads | tokens/s | × 1 × 1 | ms/step | all-reduce share | ring MB/step/rank | planned comm MB/step/GPU | planned bubble | optimizer state MB/rank | planned MB/GPU (no runtime overhead) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut base = None;
    let rows: [(usize, usize, bool, i32); 6] =
        [(1, 1, false, 1), (1, 1, false, cores.min(4) as i32), (2, 1, false, 1), (1, 2, false, 1), (2, 2, false, 1), (2, 2, true, 1)];
    for (replicas, stages, shard, threads) in rows {
        tch::set_num_threads(threads);
        let m = measure(replicas, stages, shard, steps);
        let base_tps = *base.get_or_insert(m.tokens_per_second);
        let plan = planner::plan(&spec(replicas, stages, shard), &PlanOptions { gpu_overhead_bytes: 0, ..PlanOptions::default() })
            .expect("the bench's spec plans");
        let status = plan.to_status();
        let ranks = replicas * stages;
        println!(
            "| {replicas} × {stages}{} | {ranks} | {threads} | {:.0} | {:.2} | {:.0} | {:.1}% | {:.2} | {:.2} | {:.3} | {:.2} | {:.3} |{}",
            if shard { " (sharded optimizer)" } else { "" },
            m.tokens_per_second,
            m.tokens_per_second / base_tps,
            m.wall_ms,
            m.ring_share * 100.0,
            m.ring_bytes / 1e6,
            status.communication_bytes_per_step as f64 / 1e6,
            plan.pipeline_bubble,
            m.optimizer_state_bytes as f64 / 1e6,
            plan.memory_per_device_bytes as f64 / 1e6,
            if ranks > cores { format!(" {ranks} ranks on {cores} cores") } else { String::new() },
        );
    }
}
