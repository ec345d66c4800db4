//! The plan's memory against real runs. `status.plan.memoryPerGpuBytes` (and with it the GPU
//! count a budget is charged for) is the planner's estimate of one stage's weights, gradients,
//! optimizer state, activations and logits; here CPU runs of the same jobs are measured: the
//! persistent parts from the process's resident memory before and after the worker is built and
//! has stepped once, the transient parts (activations and logits) as the resident high-water
//! mark of one more step above where it started. Dense and MoE, with and without recomputation,
//! one stage and a 2-stage pipeline under GPipe and 1F1B; Llama's block in one stage. Allocations
//! of 64 KiB and more are mapped and unmapped directly (`mallopt`), so resident memory follows
//! live tensors.

mod common;

use frugal_trainer::data::Data;
use frugal_trainer::job::{self, Job};
use frugal_trainer::parallel::{ScheduleKind, Worker, layouts, run_in_process};
use std::sync::Mutex;
use tch::Device;

/// Resident and peak resident memory of this process (bytes), from /proc/self/status.
fn rss() -> (i64, i64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| -> i64 {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} in /proc/self/status"));
        line.split_whitespace().nth(1).unwrap().parse::<i64>().unwrap() * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Starts the peak (VmHWM) over from the current resident memory.
fn reset_peak() {
    std::fs::write("/proc/self/clear_refs", "5").expect("resetting the peak resident memory (Linux 4.0+)");
}

/// The job measured; `llama` gives it Llama's block (RMSNorm, SwiGLU of the default width).
fn job(llama: bool, moe: bool, recompute: bool, stages: i64, schedule: &str) -> Job {
    let moe = if moe { "\n    sparsity: {moe: {experts: 8, topK: 2, sharedExperts: 1, expertHidden: 128, everyNLayers: 1}}" } else { "" };
    let block = if llama { ", norm: rmsNorm, feedForward: swiglu" } else { "" };
    job::parse(&format!(
        r#"
apiVersion: frugal.dev/v1alpha1
kind: TrainingJob
metadata: {{name: memory}}
spec:
  model:
    type: Custom
    custom: {{layers: 4, dModel: 128, heads: 4, seqLen: 128, vocabSize: 2048{block}}}{moe}
  data: {{source: {{type: Synthetic, synthetic: {{branching: 4}}}}}}
  parallelism: {{pipelineStages: {stages}, schedule: {schedule}, microBatches: 4}}
  training:
    duration: {{type: Steps, steps: 10}}
    batchSize: 16
    precision: fp32
    activationCheckpointing: {recompute}
  resources: {{device: CPU}}
"#
    ))
    .unwrap()
}

/// (planned, measured) bytes: the persistent parts, then the transient ones, summed over stages.
fn measure(job: &Job) -> ((i64, i64), (i64, i64)) {
    let cfg = job.run_config(None).unwrap();
    let plan = &job.plan;
    let persistent: i64 = plan.stages.iter().map(|s| s.memory.weights + s.memory.gradients + s.memory.optimizer).sum();
    let transient: i64 = plan.stages.iter().map(|s| s.memory.activations + s.memory.logits).sum();
    let stages = plan.stages.len();
    let schedule = ScheduleKind::from(job.spec.parallelism.schedule);
    // the readers' corpora live in host memory, which the plan (of device memory) leaves out
    let (before, _) = rss();
    let readers: Vec<_> =
        (0..if stages == 1 { 1 } else { 2 }).map(|_| Data::new(&cfg.data, cfg.model.vocab_size, cfg.model.seq_len, 7).unwrap()).collect();
    let data_bytes = rss().0 - before;
    drop(readers);
    let (base, _) = rss();
    let marks = std::sync::Arc::new(Mutex::new((0i64, 0i64)));
    let m = marks.clone();
    run_in_process(&cfg, &layouts(&cfg.model, stages), schedule, &[Device::Cpu], move |w: &mut Worker| {
        // the first step creates the optimizer state and libtorch's workspaces
        w.train_step()?;
        w.barrier()?;
        if w.index() == 0 {
            let (now, _) = rss();
            m.lock().unwrap().0 = now;
            reset_peak();
        }
        w.barrier()?;
        w.train_step()?;
        w.barrier()?;
        if w.index() == 0 {
            m.lock().unwrap().1 = rss().1;
        }
        Ok(())
    })
    .unwrap();
    let (start, peak) = *marks.lock().unwrap();
    ((persistent, start - base - data_bytes), (transient, peak - start))
}

#[test]
fn planned_memory_is_close_to_the_measured() {
    tch::set_num_threads(1);
    // SAFETY: mallopt only changes the allocator's thresholds
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 * 1024);
    }
    // libtorch's own first-use allocations before any baseline
    let _ = Worker::single(job(false, false, false, 1, "gpipe").run_config(None).unwrap(), Device::Cpu).unwrap().train_step().unwrap();
    let mut rows = vec![];
    // GPT-2's block under every layout; Llama's (a wider feed-forward activation) in one stage
    let layouts = |llama: bool| if llama { vec![(1, "1f1b")] } else { vec![(1, "1f1b"), (2, "gpipe"), (2, "1f1b")] };
    for (llama, moe, recompute) in (0..8).map(|i| (i >= 4, i % 4 >= 2, i % 2 == 1)) {
        for (stages, schedule) in layouts(llama) {
            let j = job(llama, moe, recompute, stages, schedule);
            let ((pp, pm), (tp, tm)) = measure(&j);
            let block = if llama { "llama " } else { "" };
            let name = format!("{block}{} recompute={recompute} stages={stages} {schedule}", if moe { "moe" } else { "dense" });
            println!(
                "{name:<40} persistent planned {:>7.1} MiB measured {:>7.1} MiB ({:+.0}%) | transient planned {:>7.1} MiB measured {:>7.1} MiB ({:+.0}%)",
                pp as f64 / 1048576.0,
                pm as f64 / 1048576.0,
                100.0 * (pp - pm) as f64 / pm as f64,
                tp as f64 / 1048576.0,
                tm as f64 / 1048576.0,
                100.0 * (tp - tm) as f64 / tm as f64
            );
            rows.push((name, pp, pm, tp, tm));
        }
    }
    // The plan's activations and logits must be within a fifth of the measured peak either way.
    // The persistent measurement also carries the process's own overhead (a stage thread's
    // libtorch state and allocator arena: 2–5 MiB here, on 16–38 MiB), so there a quarter.
    for (name, pp, pm, tp, tm) in rows {
        let within = |planned: i64, measured: i64, share: f64| (planned - measured).abs() as f64 <= share * measured as f64;
        assert!(within(pp, pm, 0.25), "{name}: persistent memory planned {pp} bytes, measured {pm}");
        assert!(within(tp, tm, 0.2), "{name}: activations and logits planned {tp} bytes, measured {tm}");
    }
}
