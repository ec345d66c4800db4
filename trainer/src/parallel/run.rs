//! The run loop every worker drives. A [`Worker`] is one part of a run (stage s of replica r;
//! the whole model in a 1×1 run): it takes an optimizer step, sums numbers with the run's other
//! workers, evaluates, checkpoints and resumes; [`run`] drives it with one cadence: every step
//! the workers agree on whether to stop (SIGTERM reaches pods at different moments) and measure
//! the pipeline bubble, every `evalInterval` steps they evaluate (and stop together at the
//! quality target), every `checkpointInterval` steps and at the end they checkpoint. The worker
//! that [`Worker::reports`] (the stage with the head, in the first replica) emits the run's
//! events, which the JSON log, the pod's status reporter and the progress bar all consume,
//! records the step's metrics and builds the [`Summary`]. A distilled run's reporting worker
//! also reports its teacher, at the start and beside each evaluation.

pub use super::step::StepReport;
pub use super::worker::RunShape;
use super::worker::Worker;
use crate::eval::{EvalConfig, TargetTracker};
use crate::job::Job;
use crate::report::event::{self, RunEvent};
use crate::report::metrics::{Metrics, StepGauges};
use crate::report::status::{StatusReporter, StatusTarget};
use crate::report::{Reporter, Summary};
use anyhow::Result;
use frugal_api::planner::bubble_fraction;
use frugal_api::v1alpha1::{DistillationStatus, HuggingFaceExportStatus, QualityStatus, QuantizedStatus};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Why a run returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    Completed,
    /// An evaluation reached the job's quality target (every part stops at that step).
    QualityTargetReached,
    /// SIGTERM/SIGINT: a checkpoint was written at the step every part agreed on; the run can
    /// resume.
    Terminated,
}

impl Stop {
    /// The exit status of `frugal-trainer train`: 143 (killed by SIGTERM,
    /// [`frugal_api::contract::exit::TERMINATED`]) after a checkpoint on a signal, so that a
    /// Job does not count it as a success.
    pub fn exit_code(self) -> i32 {
        match self {
            Self::Completed | Self::QualityTargetReached => 0,
            Self::Terminated => frugal_api::contract::exit::TERMINATED,
        }
    }

    fn said(self) -> &'static str {
        match self {
            Self::Completed => "completion",
            Self::QualityTargetReached => "quality target",
            Self::Terminated => "signal",
        }
    }
}

/// Where a run reports and when it ends.
pub struct Session<'a> {
    pub stop: &'a AtomicBool,
    /// Present on the reporting part.
    pub reporter: Option<&'a mut Reporter>,
    pub metrics: &'a Metrics,
    /// Stop after this many steps as if the run were complete there (the schedule still follows
    /// the configured step count).
    pub max_steps: Option<i64>,
    /// Resume from the newest intact checkpoint first.
    pub resume: bool,
    /// The port Prometheus metrics are served on, to announce.
    pub metrics_port: Option<u16>,
}

/// Trains `worker` to the configured step count (or [`Session::max_steps`]), reporting as it
/// goes; on a signal checkpoints and returns [`Stop::Terminated`]. The reporting worker also
/// returns the run's summary.
pub fn run(worker: &mut Worker, mut s: Session) -> Result<(Stop, Option<Summary>)> {
    if s.resume
        && let Some(resumed) = worker.resume()?
        && let Some(rep) = s.reporter.as_deref_mut()
    {
        rep.emit(RunEvent::Resume(resumed));
    }
    let cfg = worker.cfg.clone();
    let end = s.max_steps.map_or(cfg.train.steps, |m| m.min(cfg.train.steps));
    if !worker.reports() {
        // the stages that do not report say once that they run, so every pod's log has a line
        let l = &worker.model.layout;
        crate::info!(
            "stage {} of {} (layers {}..{}) of replica {} of {} trains from step {} to {end}",
            l.index,
            worker.stages,
            l.layers.start,
            l.layers.end,
            worker.replica,
            worker.replicas,
            worker.step
        );
    }
    let shape = worker.reports().then(|| worker.shape());
    if let (Some(rep), Some(shape)) = (s.reporter.as_deref_mut(), &shape) {
        let c = &shape.counts;
        rep.emit(RunEvent::Start(event::Start {
            job: cfg.name.clone(),
            step: worker.step,
            steps: cfg.train.steps,
            device: Some(format!("{:?}", worker.device)),
            precision: Some(format!("{:?}", cfg.train.precision)),
            params_total: Some(c.params_total),
            params_active: Some(c.params_active),
            flops_per_token: Some(c.flops_per_token),
            pipeline_stages: shape.pipeline_stages,
            replicas: (shape.replicas > 1).then_some(shape.replicas),
            quality_target: worker.evaluation.target.clone(),
            eval_interval: Some(cfg.train.eval_interval),
        }));
        if let Some(port) = s.metrics_port {
            rep.emit(RunEvent::Metrics { port });
        }
    }
    let flops_per_token = shape.as_ref().map_or(f64::NAN, |sh| sh.counts.flops_per_token);
    let peak = shape.as_ref().map_or(f64::NAN, |sh| sh.peak_flops);
    let theory = shape.as_ref().and_then(|sh| sh.pipeline_stages).map(|p| bubble_fraction(p, shape.as_ref().map_or(1, |sh| sh.micro_batches)));
    let t_start = Instant::now();
    // the teacher's evaluation is the run's time too
    let mut distillation = worker.distillation()?;
    if let (Some(rep), Some(d)) = (s.reporter.as_deref_mut(), &distillation) {
        rep.emit(RunEvent::Distillation(d.clone()));
    }
    let start_tokens = worker.tokens;
    let (mut train_seconds, mut last_loss) = (0.0, f64::NAN);
    let (mut dropped_sum, mut dropped_n) = (0.0, 0);
    let (mut quality, mut last_checkpoint) = (None, None);
    let mut tracker = TargetTracker::new(worker.evaluation.target.clone(), worker.gpus());
    let mut stopped = Stop::Completed;
    let log_every = cfg.train.log_interval.max(1);
    while worker.step < end {
        let r = worker.train_step()?;
        let signalled = f64::from(u8::from(s.stop.load(Ordering::SeqCst)));
        worker.poll_upload();
        let committed = report_uploads(worker, &mut s);
        let agreed = worker.agree(&[r.busy_seconds.unwrap_or(r.seconds), r.seconds, signalled, committed])?;
        relay_commit(worker, &mut s, agreed[3]);
        // Σ busy / Σ wall over the stages: the fraction of the pipeline's device time that computed.
        let bubble = r.busy_seconds.map(|_| 1.0 - agreed[0] / agreed[1]);
        train_seconds += r.seconds;
        last_loss = r.loss;
        if let Some(d) = r.dropped_fraction {
            dropped_sum += d;
            dropped_n += 1;
        }
        s.metrics.record_progress(r.step, worker.scaler.skipped_steps, r.dropped_fraction);
        if let Some(b) = bubble {
            s.metrics.gauge("frugal_trainer_pipeline_bubble_ratio", "Idle fraction of the pipeline's stages in the last step.", b);
        }
        if let Some(t) = r.ring_seconds {
            s.metrics.gauge("frugal_trainer_allreduce_seconds", "Seconds of the last step spent exchanging gradients with the other replicas.", t);
        }
        if let Some(rep) = s.reporter.as_deref_mut() {
            let tps = cfg.tokens_per_step() as f64 / r.seconds;
            let mfu = tps * flops_per_token / peak;
            let scaled = worker.scaler.enabled;
            s.metrics.record_step(&StepGauges {
                tokens: worker.tokens,
                loss: r.loss,
                lr: r.lr,
                grad_norm: r.grad_norm,
                tokens_per_second: tps,
                mfu,
                loss_scale: worker.scaler.scale,
            });
            if r.step % log_every == 0 || r.step == end {
                rep.emit(RunEvent::Step(event::Step {
                    step: r.step,
                    tokens: worker.tokens,
                    loss: r.loss,
                    soft_loss: r.soft_loss,
                    lr: r.lr,
                    grad_norm: r.grad_norm,
                    tokens_per_second: tps,
                    achieved_tflops: tps * flops_per_token / 1e12,
                    mfu,
                    aux_loss: r.aux_loss,
                    dropped_fraction: r.dropped_fraction,
                    loss_scale: scaled.then_some(r.loss_scale),
                    skipped: scaled.then_some(r.skipped),
                    pipeline_bubble: bubble,
                    bubble_theory: theory,
                    stage_busy_seconds: r.busy_seconds,
                    allreduce_seconds: r.ring_seconds,
                    // the reporter estimates them
                    percent: None,
                    remaining_seconds: None,
                }));
            }
        }
        if agreed[2] > 0.0 {
            stopped = Stop::Terminated;
            break;
        }
        let every = cfg.train.eval_interval;
        if every > 0
            && r.step % every == 0
            && r.step < end
            && evaluation_pass(worker, &mut s, &mut tracker, t_start, &mut quality, &mut distillation)?
        {
            stopped = Stop::QualityTargetReached;
            break;
        }
        let every = cfg.train.checkpoint_interval;
        if every > 0 && r.step % every == 0 && r.step < end {
            last_checkpoint = checkpoint(worker, &mut s)?.or(last_checkpoint);
        }
    }
    if stopped == Stop::Completed && evaluation_pass(worker, &mut s, &mut tracker, t_start, &mut quality, &mut distillation)? {
        stopped = Stop::QualityTargetReached;
    }
    last_checkpoint = checkpoint(worker, &mut s)?.or(last_checkpoint);
    // The last step's upload: for as long as it takes, or within the grace period after SIGTERM.
    worker.wait_for_upload((stopped == Stop::Terminated).then(upload_grace));
    let committed = report_uploads(worker, &mut s);
    let agreed = worker.agree(&[committed])?;
    relay_commit(worker, &mut s, agreed[0]);
    let Some(shape) = shape else { return Ok((stopped, None)) };
    let c = &shape.counts;
    let tokens = worker.tokens - start_tokens;
    let seconds = t_start.elapsed().as_secs_f64();
    let gpus = worker.gpus();
    let device_hours = seconds / 3600.0 * gpus.max(1) as f64;
    let tps = if train_seconds > 0.0 { tokens as f64 / train_seconds } else { 0.0 };
    let summary = Summary {
        job: cfg.name.clone(),
        device: format!("{:?}", worker.device),
        precision: format!("{:?}", cfg.train.precision),
        steps: worker.step,
        tokens: worker.tokens,
        params_total: c.params_total,
        params_active: c.params_active,
        flops_per_token: c.flops_per_token,
        total_flops: c.flops_per_token * worker.tokens as f64,
        seconds,
        tokens_per_second: tps,
        achieved_tflops: tps * c.flops_per_token / 1e12,
        mfu: tps * c.flops_per_token / shape.peak_flops,
        peak_source: shape.peak_source.clone(),
        train_loss: last_loss,
        val_loss: quality.as_ref().and_then(|q: &QualityStatus| q.validation_loss),
        dropped_token_fraction: (dropped_n > 0).then(|| dropped_sum / dropped_n as f64),
        skipped_steps: worker.scaler.skipped_steps,
        stopped_by: stopped.said().into(),
        checkpoint: last_checkpoint.map(|p| p.display().to_string()),
        reason: format!("{stopped:?}"),
        model: frugal_api::report::describe_model(&cfg.model, cfg.train.precision.into()),
        gpus,
        device_hours,
        cost: device_hours * worker.evaluation.price_per_gpu_hour,
        currency: worker.evaluation.currency.clone(),
        target: tracker.outcome(worker.step, end, stopped == Stop::Terminated),
        quality: quality.map(|q| QualityStatus { distillation, ..q }),
        provenance: worker.provenance(),
    };
    Ok((stopped, Some(summary)))
}

/// One evaluation by every part at the same step; the reporting part records it (metrics, the
/// `eval` event, the quality target; distilling, the student against its teacher) and keeps it
/// in `quality`. Returns whether it reached the quality target, which every part learns by
/// agreeing on it, so that all stop together.
fn evaluation_pass(
    worker: &mut Worker,
    s: &mut Session,
    tracker: &mut TargetTracker,
    t_start: Instant,
    quality: &mut Option<QualityStatus>,
    distillation: &mut Option<DistillationStatus>,
) -> Result<bool> {
    let mut reached = false;
    if let Some(q) = worker.evaluate()? {
        if let Some(rep) = s.reporter.as_deref_mut() {
            reached = record_evaluation(&q, worker.step, worker.tokens, t_start.elapsed().as_secs_f64(), rep, s.metrics, tracker);
            if let Some(d) = distillation.as_mut() {
                crate::distill::compare(d, &q);
                rep.emit(RunEvent::Distillation(d.clone()));
            }
        }
        *quality = Some(q);
    }
    Ok(worker.agree(&[f64::from(u8::from(reached))])?[0] > 0.0)
}

fn checkpoint(worker: &mut Worker, s: &mut Session) -> Result<Option<PathBuf>> {
    let t0 = Instant::now();
    let path = worker.save_checkpoint()?;
    // The previous step's upload, which this save waited for, is reported (or relayed to the
    // reporting part) after the next step, or after the run's last upload.
    if path.is_some() {
        s.metrics.gauge("frugal_trainer_checkpoint_step", "Step of the newest checkpoint.", worker.step as f64);
    }
    // A stage that sealed its part alone (stages sharing no directory) has no step on disk to
    // report: the step exists once the first stage commits it in the bucket.
    let committed = path.filter(|_| !worker.sealed_part);
    if let (Some(p), Some(rep)) = (&committed, s.reporter.as_deref_mut()) {
        let seconds = Some(t0.elapsed().as_secs_f64());
        rep.emit(RunEvent::Checkpoint(event::Checkpoint { step: worker.step, path: p.display().to_string(), seconds }));
    }
    Ok(committed)
}

/// Reports the uploads that finished: on stderr, and as a `checkpoint` event naming the step in
/// the bucket (in a pod, `status.checkpoint` then says where the newest committed step is).
/// Returns what the other parts learn of them through [`relay_commit`]: the newest committed
/// step + 1 when this part committed it without reporting it (the first stage of a pipeline),
/// else 0.
fn report_uploads(worker: &mut Worker, s: &mut Session) -> f64 {
    let mut relayed = 0.0;
    for up in worker.take_uploads() {
        crate::info!("step {} is in {} ({} bytes in {:.1} s)", up.step, up.uri, up.bytes, up.seconds);
        s.metrics.gauge("frugal_trainer_checkpoint_uploaded_step", "Step of the newest checkpoint committed in object storage.", up.step as f64);
        match s.reporter.as_deref_mut() {
            Some(rep) => rep.emit(RunEvent::Checkpoint(event::Checkpoint { step: up.step, path: up.uri, seconds: Some(up.seconds) })),
            None => relayed = (up.step + 1) as f64,
        }
    }
    relayed
}

/// On the reporting part, the `checkpoint` event of a step another part committed in the bucket
/// (`relayed`: the sum over the parts of [`report_uploads`]' returns, which only the committing
/// part makes nonzero), so that `status.checkpoint` follows a pipeline whose stages share no
/// volume.
fn relay_commit(worker: &Worker, s: &mut Session, relayed: f64) {
    let (Some(rep), Some(spec)) = (s.reporter.as_deref_mut(), &worker.cfg.checkpoint_store) else { return };
    if relayed < 1.0 {
        return;
    }
    let step = relayed as i64 - 1;
    let Ok(location) = crate::store::Location::of(crate::checkpoint::remote::STORE_FIELD, spec) else { return };
    let uri = format!("{}/{}", location.uri(), crate::checkpoint::step_dir_name(step));
    rep.emit(RunEvent::Checkpoint(event::Checkpoint { step, path: uri, seconds: None }));
}

/// How long a run stopped by SIGTERM waits for its last upload: `FRUGAL_UPLOAD_GRACE_SECONDS`,
/// else [`crate::parallel::checkpoint::UPLOAD_GRACE`].
fn upload_grace() -> std::time::Duration {
    std::env::var("FRUGAL_UPLOAD_GRACE_SECONDS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map_or(super::checkpoint::UPLOAD_GRACE, std::time::Duration::from_secs_f64)
}

/// Records an evaluation `seconds` into the run: the metrics, the `eval` event (in a pod the
/// status folds it into the TrainingJob's `status.quality`) and the quality target. True when
/// this evaluation first reached the target.
pub fn record_evaluation(
    q: &QualityStatus,
    step: i64,
    tokens: i64,
    seconds: f64,
    reporter: &mut Reporter,
    metrics: &Metrics,
    tracker: &mut TargetTracker,
) -> bool {
    let v = q.validation_loss.unwrap_or(f64::NAN);
    metrics.gauge("frugal_trainer_validation_loss", "Validation loss of the last evaluation.", v);
    if let Some(b) = q.bits_per_byte {
        metrics.gauge("frugal_trainer_bits_per_byte", "Validation bits per byte of the last evaluation.", b);
    }
    let reached = tracker.observe(q, step, tokens, seconds);
    reporter.emit(RunEvent::Eval(event::Eval::of(q, step, reached)));
    reached
}

/// How a run reports, as the `train` command's flags say.
#[derive(Clone, Debug, Default)]
pub struct Output {
    /// JSON lines on stdout instead of a progress bar.
    pub json: bool,
    /// Also write the final run report here (it always goes into the checkpoint directory).
    pub report: Option<PathBuf>,
}

/// Everything a part of a job's run reports to, shared by every part in a process.
#[derive(Clone)]
pub struct JobRun {
    /// In a pod (the operator set `FRUGAL_REPORT_STATUS`): the TrainingJob whose status the
    /// reporting part writes.
    pub status: Option<StatusTarget>,
    pub evaluation: EvalConfig,
    pub output: Output,
    pub metrics: Metrics,
    /// The port `metrics` is served on, if it is.
    pub metrics_port: Option<u16>,
    pub stop: Arc<AtomicBool>,
    pub max_steps: Option<i64>,
    /// What the reporting part runs once training has completed, before the final report.
    pub export: Option<Export>,
}

/// The exports after training (spec.export): given the checkpoint root, it quantizes the newest
/// checkpoint and measures it, and writes it in the Hugging Face layout; the results go into the
/// status and the run report.
pub type Export = Arc<dyn Fn(&std::path::Path) -> Result<Exports> + Send + Sync>;

/// What [`Export`] made.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Exports {
    pub quantized: Option<QuantizedStatus>,
    pub hugging_face: Option<HuggingFaceExportStatus>,
}

impl JobRun {
    pub fn of(job: &Job, output: Output, metrics: Metrics, metrics_port: Option<u16>, stop: Arc<AtomicBool>, max_steps: Option<i64>) -> Self {
        let status = StatusTarget::from_env();
        Self { status, evaluation: job.eval_config(), output, metrics, metrics_port, stop, max_steps, export: None }
    }
}

/// Runs `worker` as one part of a job's run: resumes, trains, and on the reporting part reports
/// into the TrainingJob's status when in a pod, prints the summary and writes the run report.
pub fn train_job(worker: &mut Worker, job: &JobRun) -> Result<Stop> {
    let status = job.status.clone().filter(|_| worker.reports()).map(StatusTarget::start);
    let mut reporter =
        worker.reports().then(|| Reporter::new(worker.cfg.train.steps, job.output.json).with_sink(status.as_ref().and_then(StatusReporter::sender)));
    let session = Session {
        stop: &job.stop,
        reporter: reporter.as_mut(),
        metrics: &job.metrics,
        max_steps: job.max_steps,
        resume: true,
        metrics_port: job.metrics_port,
    };
    let (stopped, mut summary) = run(worker, session)?;
    // a run cut short (a signal, --max-steps) has no final model to export
    let finished = match stopped {
        Stop::Terminated => false,
        Stop::QualityTargetReached => true,
        Stop::Completed => worker.step >= worker.cfg.train.steps,
    };
    if let (Some(export), Some(rep), Some(summary), Some(root)) =
        (&job.export, reporter.as_mut(), summary.as_mut(), worker.cfg.checkpoint_dir.clone())
        && finished
    {
        if worker.sealed_part {
            // the stages share no volume: the final step is whole only in the bucket
            worker.fetch_whole_step(worker.step)?;
        }
        let exports = export(&root)?;
        if let Some(quantized) = &exports.quantized {
            rep.emit(RunEvent::Quantized(Box::new(quantized.clone())));
        }
        if let Some(hf) = &exports.hugging_face {
            rep.emit(RunEvent::HuggingFace(hf.clone()));
        }
        if let Some(q) = summary.quality.as_mut() {
            q.quantized = exports.quantized;
            q.hugging_face = exports.hugging_face;
        }
    }
    if let (Some(rep), Some(summary)) = (reporter.as_mut(), &summary) {
        rep.summary(summary);
        summary.write_report(worker.cfg.checkpoint_dir.as_deref(), job.output.report.as_deref())?;
    }
    drop(reporter);
    if let Some(status) = status {
        status.finish();
    }
    Ok(stopped)
}
