//! `frugal-trainer`: `train` runs a TrainingJob (the manifest a user applies, or the operator's
//! trainer configuration inside a pod); `plan` prints what it will cost before it runs.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use frugal_api::contract::{env, paths};
use frugal_trainer::gpt::Gpt;
use frugal_trainer::job::{self, Job};
use frugal_trainer::metrics::Metrics;
use frugal_trainer::report::{Reporter, human};
use frugal_trainer::train::{Stop, Trainer, pick_device};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

#[derive(Parser)]
#[command(name = "frugal-trainer", version, about = "Sparse, mixed-precision GPT training on libtorch")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a job, resuming from its newest checkpoint if there is one.
    Train {
        /// TrainingJob manifest or trainer configuration (default: $FRUGAL_CONFIG, then the
        /// pod's mounted configuration).
        job: Option<PathBuf>,
        /// Checkpoint directory (default: $FRUGAL_CHECKPOINT_DIR, then spec.checkpoint.path).
        #[arg(long)]
        checkpoint_dir: Option<PathBuf>,
        /// Serve Prometheus metrics on this port (default: $FRUGAL_METRICS_PORT; none if unset).
        #[arg(long)]
        metrics_port: Option<u16>,
        /// auto, cpu or cuda (default: the job's resources.device, CPU when no GPU is visible).
        #[arg(long)]
        device: Option<String>,
        /// CPU threads for libtorch (default: $FRUGAL_THREADS, else libtorch's choice).
        #[arg(long)]
        threads: Option<i32>,
        /// Stop after this many steps instead of the job's duration (the schedule still follows
        /// the job).
        #[arg(long)]
        max_steps: Option<i64>,
        /// JSON lines even on a terminal.
        #[arg(long)]
        json: bool,
    },
    /// Print the job's plan: parameters, FLOPs, memory, GPU-hours and cost.
    Plan {
        job: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

fn job_path(arg: Option<PathBuf>) -> PathBuf {
    arg.or_else(|| std::env::var_os(env::CONFIG_PATH).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(paths::CONFIG_FILE))
}

fn main() {
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("frugal-trainer: error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Plan { job, json } => {
            let job = job::load(&job)?;
            plan(&job, json)?;
            Ok(0)
        }
        Command::Train { job, checkpoint_dir, metrics_port, device, threads, max_steps, json } => {
            let job = job::load(&job_path(job))?;
            let ckpt = checkpoint_dir.or_else(|| std::env::var_os(env::CHECKPOINT_DIR).map(PathBuf::from));
            let cfg = job.run_config(ckpt)?;
            if let Some(t) = threads.or_else(|| std::env::var("FRUGAL_THREADS").ok().and_then(|v| v.parse().ok())) {
                tch::set_num_threads(t);
            }
            let device = match device.as_deref() {
                Some(d) => pick_device(Some(d))?,
                None if !job.wants_gpu() => pick_device(Some("cpu"))?,
                None => {
                    let d = pick_device(None)?;
                    if d == tch::Device::Cpu {
                        eprintln!("frugal-trainer: the job asks for a GPU but none is visible; training on the CPU");
                    }
                    d
                }
            };
            if let Some(dir) = &cfg.checkpoint_dir {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create checkpoint directory {} (use --checkpoint-dir)", dir.display()))?;
            }
            let stop = Arc::new(AtomicBool::new(false));
            for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
                signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
            }
            let metrics = Metrics::new(&cfg.name);
            let port = metrics_port.or_else(|| std::env::var(env::METRICS_PORT).ok().and_then(|v| v.parse().ok()));
            let mut trainer = Trainer::new(cfg, device)?;
            let mut reporter = Reporter::new(trainer.cfg.train.steps, json);
            if let Some(port) = port {
                let bound = metrics.serve(&format!("0.0.0.0:{port}")).with_context(|| format!("serving metrics on port {port}"))?;
                reporter.event("metrics", serde_json::json!({"port": bound}));
            }
            if let Some(step) = trainer.resume_latest()? {
                reporter.event("resume", serde_json::json!({"step": step}));
            }
            let (stopped, summary) = trainer.run_until(&stop, &mut reporter, &metrics, max_steps)?;
            reporter.summary(&summary);
            Ok(match stopped {
                Stop::Completed => 0,
                // Killed by a signal after saving: a non-zero status so a Job does not count it
                // as a success.
                Stop::Terminated => 143,
            })
        }
    }
}

fn plan(job: &Job, json: bool) -> Result<()> {
    let p = &job.plan;
    let built = Gpt::count_params(&p.model);
    if json {
        let mut v = serde_json::to_value(p.to_status())?;
        v["trainerParameters"] = serde_json::json!(built);
        v["steps"] = serde_json::json!(p.steps);
        v["tokens"] = serde_json::json!(p.tokens);
        v["warnings"] = serde_json::json!(p.warnings);
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let m = &p.model;
    println!("job              {}", job.name);
    println!(
        "model            {} layers × {} wide, {} heads, context {}, vocabulary {}{}",
        m.layers,
        m.d_model,
        m.heads,
        m.seq_len,
        m.vocab_size,
        m.moe.as_ref().map(|e| format!(", MoE {} experts top-{} (+{} shared) every {} layers", e.experts, e.top_k, e.shared_experts, e.every_n_layers)).unwrap_or_default()
    );
    println!("attention        {:?}", m.attention);
    println!(
        "parameters       {} total, {} active (trainer builds {})",
        human(p.parameters.total as f64),
        human(p.parameters.active as f64),
        human(built as f64)
    );
    println!("FLOPs            {:.3e} per token, {:.3e} total over {} steps / {} tokens", p.flops_per_token, p.total_flops, p.steps, p.tokens);
    println!("memory           {:.2} GiB per device", p.memory_per_device_bytes as f64 / (1u64 << 30) as f64);
    println!("GPUs             {} in {} pods, pipeline bubble {:.1}%", p.gpus, p.pods, p.pipeline_bubble * 100.0);
    println!("estimate         {:.3} GPU-hours, {:.2} {}", p.estimated_gpu_hours, p.estimated_cost, p.currency);
    for w in &p.warnings {
        println!("warning          {w}");
    }
    Ok(())
}
