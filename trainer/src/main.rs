//! `frugal-trainer`: `train` runs a TrainingJob (the manifest a user applies, or the operator's
//! trainer configuration inside a pod); `plan` prints what it will cost before it runs; `prepare`
//! writes a text corpus as token shards; `eval` scores a checkpoint; `quantize` exports it in 8
//! bits, calibrated and measured; `report` compares runs; `info` says which libtorch and which
//! devices this binary sees.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use frugal_api::contract::{env, paths};
use frugal_trainer::data;
use frugal_trainer::export_store;
use frugal_trainer::hf;
use frugal_trainer::job::{self, Job};
use frugal_trainer::model::gpt::Gpt;
use frugal_trainer::parallel::run::{Exports, JobRun, Output};
use frugal_trainer::parallel::{launch, pick_device};
use frugal_trainer::report::compare;
use frugal_trainer::report::human;
use frugal_trainer::report::metrics::Metrics;
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

#[derive(Parser)]
#[command(name = "frugal-trainer", version, about = "Sparse, mixed-precision GPT training on libtorch")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// A job and one of its checkpoints, for the commands that read one.
#[derive(clap::Args)]
struct CheckpointArgs {
    job: PathBuf,
    /// A checkpoint (step directory), or a checkpoint root whose newest checkpoint is used
    /// (default: the job's checkpoint path).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// cpu or cuda (default: cpu).
    #[arg(long)]
    device: Option<String>,
    #[arg(long)]
    json: bool,
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
        /// Also write the run report here (it always goes to the checkpoint directory's
        /// report.json).
        #[arg(long)]
        report: Option<PathBuf>,
        /// Set a spec field first: FIELD=VALUE, FIELD a dotted path under spec (repeatable;
        /// `--set training.seed=2 --set training.duration.steps=300`).
        #[arg(long = "set", value_name = "FIELD=VALUE")]
        set: Vec<String>,
    },
    /// Tokenize the job's corpus (data.source.text, data.tokenizer, model vocabulary) into uint16
    /// (uint32 past 65,536 tokens) shards and a tokenizer file, for data.source.type Shards.
    Prepare {
        job: PathBuf,
        /// Directory to write the shards into.
        #[arg(long)]
        out: PathBuf,
        /// Tokens per shard.
        #[arg(long, default_value_t = 100_000_000)]
        shard_tokens: usize,
    },
    /// Evaluate a checkpoint: validation loss, bits per byte, perplexity, zero-shot sets.
    Eval(CheckpointArgs),
    /// Quantize a checkpoint to 8-bit weights (per-channel int8, SmoothQuant-calibrated on
    /// training batches), evaluate it beside the unquantized model and round-to-nearest, time
    /// the three, and write `quantized/int8.safetensors` into the step's directory. The device
    /// defaults to the CPU, whose int8 kernels run it; on cuda the weights are dequantized per
    /// product. `--json` prints what status.quality.quantized would hold.
    Quantize(CheckpointArgs),
    /// Write a checkpoint (any layout) in the Hugging Face layout: config.json, fp32
    /// safetensors (sharded past --max-shard-bytes), generation_config.json and the job's
    /// tokenizer as tokenizer.json and tokenizer_config.json, which
    /// `transformers.AutoModelForCausalLM.from_pretrained` loads without remote code.
    Export {
        #[command(flatten)]
        checkpoint: CheckpointArgs,
        /// The format: hf.
        #[arg(long, default_value = "hf")]
        format: String,
        /// The directory to write (default: hf/ in the checkpoint's step directory).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Shard the weights past this many bytes.
        #[arg(long, default_value_t = hf::DEFAULT_MAX_SHARD_BYTES)]
        max_shard_bytes: u64,
    },
    /// Compare run reports (report.json files, or directories holding them) in one table.
    Report {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// text, markdown, json or csv.
        #[arg(long, default_value = "text")]
        format: String,
        /// One row per job over its seeds (the runs sharing a job name): the mean, with the
        /// seeds' range.
        #[arg(long)]
        seeds: bool,
        /// Compare every run (with --seeds, every job's mean) against this job's.
        #[arg(long, value_name = "JOB")]
        baseline: Option<String>,
    },
    /// Print the job's plan: parameters, FLOPs, memory, GPU-hours and cost.
    Plan {
        job: PathBuf,
        #[arg(long)]
        json: bool,
        /// Set a spec field first, as for `train` (repeatable).
        #[arg(long = "set", value_name = "FIELD=VALUE")]
        set: Vec<String>,
    },
    /// Print the libtorch release, whether its CUDA backend loaded, and the CUDA devices seen.
    Info {
        #[arg(long)]
        json: bool,
    },
}

fn info(json: bool) {
    let (cuda_library, cuda_error) = match frugal_trainer::cuda::load() {
        frugal_trainer::cuda::Backend::Loaded(path) => (Some(path.as_str()), None),
        frugal_trainer::cuda::Backend::Absent(why) => (None, Some(why.as_str())),
    };
    let devices = if cuda_library.is_some() { tch::Cuda::device_count() } else { 0 };
    let libtorch = option_env!("FRUGAL_LIBTORCH_VERSION").unwrap_or("unknown");
    if json {
        let value = serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "libtorch": libtorch,
            "cuda_library": cuda_library,
            "cuda_library_error": cuda_error,
            "cuda_devices": devices,
            "cpu_threads": tch::get_num_threads(),
        });
        println!("{value}");
    } else {
        println!("frugal-trainer {}", env!("CARGO_PKG_VERSION"));
        println!("libtorch      {libtorch}");
        match (cuda_library, cuda_error) {
            (Some(path), _) => println!("CUDA backend  loaded from {path}"),
            (None, why) => println!("CUDA backend  not loaded ({})", why.unwrap_or("absent")),
        }
        println!("CUDA devices  {devices}");
        println!("CPU threads   {}", tch::get_num_threads());
    }
}

fn job_path(arg: Option<PathBuf>) -> PathBuf {
    arg.or_else(|| std::env::var_os(env::CONFIG_PATH).map(PathBuf::from)).unwrap_or_else(|| PathBuf::from(paths::CONFIG_FILE))
}

fn main() {
    // Before libtorch is first used: it picks its CUDA hooks once.
    frugal_trainer::cuda::load();
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            frugal_trainer::error!("{e:#}");
            match e.chain().find_map(|c| c.downcast_ref::<job::ConfigurationError>()) {
                Some(config) => {
                    // in a pod the kubelet mounts this file and reports what it holds
                    let log = std::path::Path::new("/dev/termination-log");
                    if log.exists() {
                        let _ = std::fs::write(log, config.0.chars().take(4000).collect::<String>());
                    }
                    job::CONFIGURATION_ERROR_EXIT_CODE
                }
                None => 1,
            }
        }
    };
    std::process::exit(code);
}

fn run(cli: Cli) -> Result<i32> {
    // the long commands show how far they are: on a terminal in place, otherwise as JSON lines
    let long_json = match &cli.command {
        Command::Prepare { .. } => Some(false),
        Command::Eval(a) | Command::Quantize(a) | Command::Export { checkpoint: a, .. } => Some(a.json),
        _ => None,
    };
    if let Some(json) = long_json {
        frugal_trainer::log::init(json || !std::io::stderr().is_terminal(), None, None);
        frugal_trainer::progress::enable();
    }
    match cli.command {
        Command::Info { json } => {
            info(json);
            Ok(0)
        }
        Command::Plan { job, json, set } => {
            let job = job::load_with(&job, &set)?;
            plan(&job, json)?;
            Ok(0)
        }
        Command::Prepare { job, out, shard_tokens } => {
            prepare(&load_resolved(&job)?, &out, shard_tokens)?;
            Ok(0)
        }
        Command::Eval(CheckpointArgs { job, checkpoint, device, json }) => {
            evaluate(&load_resolved(&job)?, checkpoint, device.as_deref(), json)?;
            Ok(0)
        }
        Command::Quantize(CheckpointArgs { job, checkpoint, device, json }) => {
            quantize(&load_resolved(&job)?, checkpoint, device.as_deref(), json)?;
            Ok(0)
        }
        Command::Export { checkpoint: CheckpointArgs { job, checkpoint, device: _, json }, format, out, max_shard_bytes } => {
            anyhow::ensure!(format == "hf", "--format {format:?}: the export format is hf (the Hugging Face layout)");
            let job = load_resolved(&job)?;
            let root = checkpoint.unwrap_or_else(|| PathBuf::from(&job.spec.checkpoint.path));
            let e = hf::export_checkpoint(&job.run_config(None)?, &root, out.as_deref(), max_shard_bytes)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&e)?);
            } else {
                println!("step {} -> {} ({}, {} bytes of fp32 weights)", e.step, e.path, e.architecture, e.weight_bytes);
            }
            Ok(0)
        }
        Command::Report { paths, format, seeds, baseline } => {
            let rows: Vec<compare::Row> = compare::load(&paths)?.iter().map(compare::Row::from_summary).collect();
            print!("{}", compare::render(&rows, &format, seeds, baseline.as_deref())?);
            Ok(0)
        }
        Command::Train { job, checkpoint_dir, metrics_port, device, threads, max_steps, json, report, set } => {
            let mut job = job::load_with(&job_path(job), &set)?;
            // JSON lines wherever the events are (a pod, --json), each naming the job
            let namespace = std::env::var(env::NAMESPACE).ok();
            let name = std::env::var(env::TRAINING_JOB).unwrap_or_else(|_| job.name.clone());
            frugal_trainer::log::init(json || !std::io::stderr().is_terminal(), Some(name), namespace);
            // what the spec alone decides, then the stores, then the inputs (downloaded first)
            job.check_spec()?;
            job.check_store()?;
            resolve_inputs(&mut job)?;
            job.check_inputs()?;
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
                        frugal_trainer::warn!("the job asks for a GPU but none is visible; training on the CPU");
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
            let port = metrics_port.or_else(|| std::env::var(env::METRICS_PORT).ok().and_then(|v| v.parse().ok()));
            let metrics = Metrics::new(&cfg.name);
            let served = port.map(|p| metrics.serve_port(p)).transpose()?;
            let mut run = JobRun::of(&job, Output { json, report }, metrics, served, stop, max_steps);
            let job = Arc::new(job);
            let exports = job.spec.export.clone().unwrap_or_default();
            if exports.quantize.is_some() || exports.hugging_face {
                let exported = job.clone();
                run.export = Some(Arc::new(move |root| {
                    let mut made = Exports {
                        // the int8 kernels are the CPU's, whatever the job trained on
                        quantized: exports.quantize.map(|_| frugal_trainer::quantize::export(&exported, root, tch::Device::Cpu)).transpose()?,
                        hugging_face: exports
                            .hugging_face
                            .then(|| hf::export_checkpoint(&exported.run_config(None)?, root, None, hf::DEFAULT_MAX_SHARD_BYTES))
                            .transpose()?,
                    };
                    // into the bucket, and the status names them there
                    if let Some(spec) = &exports.store {
                        let store = export_store::open(spec)?;
                        let paths = made.quantized.iter_mut().map(|q| &mut q.path).chain(made.hugging_face.iter_mut().map(|h| &mut h.path));
                        for path in paths {
                            let local = std::path::PathBuf::from(&*path);
                            let (uri, bytes) = export_store::upload(&store, &local, &export_store::name_in(root, &local)?)?;
                            frugal_trainer::info!("uploaded {} ({bytes} bytes) to {uri}", local.display());
                            *path = uri;
                        }
                    }
                    Ok(made)
                }));
            }
            Ok(launch::train(&job, cfg, device, run)?.exit_code())
        }
    }
}

/// The job at `path`, its `s3://` inputs brought into the local cache ([`resolve_inputs`]).
fn load_resolved(path: &std::path::Path) -> Result<Job> {
    let mut job = job::load(path)?;
    resolve_inputs(&mut job)?;
    Ok(job)
}

/// Brings the job's `s3://` inputs into the local cache and points the job at the copies,
/// saying on stderr what came from where.
fn resolve_inputs(job: &mut Job) -> Result<()> {
    let inputs = frugal_trainer::inputs::Inputs::of_job(&job.spec)?;
    for r in job.resolve_inputs(&inputs)? {
        frugal_trainer::info!(
            "{}: {} is {} ({} objects, {} bytes; {} downloaded, {} bytes, {} read in ranges as training needs them, the others reused from the cache)",
            r.field,
            r.uri,
            r.path.display(),
            r.objects,
            r.bytes,
            r.downloaded,
            r.downloaded_bytes,
            r.streamed
        );
    }
    Ok(())
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
        m.moe
            .as_ref()
            .map(|e| format!(", MoE {} experts top-{} (+{} shared) every {} layers", e.experts, e.top_k, e.shared_experts, e.every_n_layers))
            .unwrap_or_default()
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

fn prepare(job: &Job, out: &std::path::Path, shard_tokens: usize) -> Result<()> {
    let d = &job.spec.data;
    let text = d.source.text.as_ref().context("prepare reads data.source.text: give the job a Text source")?;
    let corpus = job::corpus_of(text)?;
    let p = data::prepare(&corpus, &job::tokenizer_source(d)?, job.plan.model.vocab_size, d.validation_fraction, out, shard_tokens)?;
    let m = &p.meta;
    println!(
        "wrote {} shards to {}: {} documents, {} training and {} validation tokens ({:.3} bytes per token), vocabulary {}, {}-bit ids",
        p.files.len(),
        out.display(),
        p.documents,
        m.train_tokens,
        m.val_tokens,
        p.bytes as f64 / (m.train_tokens + m.val_tokens).max(1) as f64,
        p.tokenizer.vocab_size(),
        8 * m.bytes_per_token
    );
    println!("data fingerprint {}", m.data_fingerprint);
    println!("use it with   data: {{source: {{type: Shards, shards: {{path: {}}}}}}}", out.display());
    Ok(())
}

fn evaluate(job: &Job, checkpoint: Option<PathBuf>, device: Option<&str>, json: bool) -> Result<()> {
    let mut cfg = job.run_config(None)?;
    // scoring a checkpoint needs no teacher
    cfg.distill = None;
    let root = checkpoint.unwrap_or_else(|| PathBuf::from(&job.spec.checkpoint.path));
    let dir = frugal_trainer::checkpoint::step_or_latest(&root)?.with_context(|| format!("no committed checkpoint under {}", root.display()))?;
    let device = pick_device(device.or(Some("cpu")))?;
    let (q, step, prov) = launch::evaluate_checkpoint(job, &cfg, &dir, device)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({"checkpoint": dir, "quality": q, "provenance": prov}))?);
        return Ok(());
    }
    println!("checkpoint       {} (step {step})", dir.display());
    println!("validation loss  {:.4} nats/token, perplexity {:.3}", q.validation_loss.unwrap_or(f64::NAN), q.perplexity.unwrap_or(f64::NAN));
    println!("bits per byte    {:.4}", q.bits_per_byte.unwrap_or(f64::NAN));
    for z in &q.zero_shot {
        println!("zero-shot        {} {:.2}% of {} examples", z.name, z.accuracy * 100.0, z.examples);
    }
    println!(
        "provenance       config {} seed {} code {} libtorch {} data {} tokenizer {} device {}",
        prov.config_hash, prov.seed, prov.code_version, prov.libtorch_version, prov.data_fingerprint, prov.tokenizer_fingerprint, prov.device
    );
    Ok(())
}

fn quantize(job: &Job, checkpoint: Option<PathBuf>, device: Option<&str>, json: bool) -> Result<()> {
    let root = checkpoint.unwrap_or_else(|| PathBuf::from(&job.spec.checkpoint.path));
    let device = pick_device(device.or(Some("cpu")))?;
    let e = frugal_trainer::quantize::export_measured(job, &root, device)?;
    let s = &e.status;
    if json {
        println!("{}", serde_json::to_string_pretty(s)?);
        return Ok(());
    }
    println!("checkpoint   step {} -> {}", s.step, s.path);
    println!("method       {}", s.method);
    let value = |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
    let zero_shot = |f: &frugal_api::v1alpha1::QualityFigures| {
        let parts: Vec<String> = f.zero_shot.iter().map(|z| format!("{} {:.1}%", z.name, z.accuracy * 100.0)).collect();
        if parts.is_empty() { "-".to_string() } else { parts.join(", ") }
    };
    println!("{:<17} {:>9} {:>7} {:>9} {:>12} {:>10}  zero-shot", "", "val loss", "bpb", "ppl", "weight bytes", "tokens/s");
    let rows = [
        ("unquantized", &s.unquantized, s.unquantized_weight_bytes, s.unquantized_tokens_per_second),
        ("round-to-nearest", &s.round_to_nearest, e.round_to_nearest_weight_bytes, e.round_to_nearest_tokens_per_second),
        ("calibrated", &s.calibrated, s.weight_bytes, s.tokens_per_second),
    ];
    for (name, f, bytes, tps) in rows {
        println!(
            "{name:<17} {:>9} {:>7} {:>9} {:>12} {:>10.0}  {}",
            value(f.validation_loss, 4),
            value(f.bits_per_byte, 4),
            value(f.perplexity, 3),
            bytes,
            tps,
            zero_shot(f)
        );
    }
    println!(
        "calibrated - unquantized: {} nats/token, {} bits per byte; weights {:.1}% of fp32",
        value(s.validation_loss_delta, 4),
        value(s.bits_per_byte_delta, 4),
        100.0 * s.weight_bytes as f64 / s.unquantized_weight_bytes.max(1) as f64
    );
    Ok(())
}
