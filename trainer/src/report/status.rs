//! Reports progress into the TrainingJob's status from a pod: the trainer's events (steps,
//! evaluations, checkpoints) become `status.progress`, `quality`, `efficiency` and `checkpoint`,
//! applied server-side under the trainer's own field manager. Those four are all the trainer
//! may write: the operator owns the rest of the status (phase, conditions, plan, and the cost it
//! bills from the pods), and the chart's admission policy has the API server refuse the
//! trainer's identity anything else. At most one patch per interval; a failed report is logged
//! and training goes on; the last one is retried and waited for. A loss that is not a number is
//! reported as `progress.nonFiniteLossStep` (the operator turns it into the NonFiniteLoss
//! condition); the evaluation that first reaches the quality target sets
//! `quality.targetReachedTime` (the operator prices the GPU-hours up to it).

use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use frugal_api::TrainingJob;
use frugal_api::contract::PodEnv;
use frugal_api::finite::finite;
use frugal_api::v1alpha1::{
    CheckpointStatus, DistillationStatus, EfficiencyStatus, HuggingFaceExportStatus, ProgressStatus, QualityStatus, QuantizedStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};

use crate::report::event::RunEvent;

/// The field manager of the trainer's status patches.
pub const FIELD_MANAGER: &str = "frugal-trainer";

/// How often the trainer patches the status at most.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(5);

/// How long the trainer waits at its end for the last report to reach the API server: a busy
/// API server can take seconds per request, and the pod's grace period (300 s by default) is
/// far longer.
pub const FINAL_REPORT_WAIT: Duration = Duration::from_secs(60);

/// Tries of the last report: it is the one a finished job's status keeps.
const FINAL_REPORT_TRIES: u32 = 4;

/// Where a trainer in a pod reports, when the operator asked it to (`FRUGAL_REPORT_STATUS`):
/// the pod's environment. Read once; started by whichever worker reports.
#[derive(Debug, Clone)]
pub struct StatusTarget {
    pod: PodEnv,
}

impl StatusTarget {
    /// None outside a pod, or when the pod is not to report.
    pub fn from_env() -> Option<Self> {
        let pod = PodEnv::from_lookup(|k| std::env::var(k).ok()).ok().filter(|pod| pod.report_status)?;
        Some(Self { pod })
    }

    pub fn start(self) -> StatusReporter {
        StatusReporter::start(self.pod, REPORT_INTERVAL)
    }
}

/// The status fields the trainer owns, folded from its events.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct TrainerStatus {
    pub progress: Option<ProgressStatus>,
    pub quality: Option<QualityStatus>,
    pub efficiency: Option<EfficiencyStatus>,
    pub checkpoint: Option<CheckpointStatus>,
    /// When an evaluation first reached the quality target, and the training tokens up to it.
    pub target_reached_time: Option<Time>,
    pub tokens_to_target: Option<i64>,
    /// A distilled run's teacher against the student (the latest distillation event).
    pub distillation: Option<DistillationStatus>,
    /// The int8 export after training.
    pub quantized: Option<QuantizedStatus>,
    /// The Hugging Face export after training.
    pub hugging_face: Option<HuggingFaceExportStatus>,
    total_steps: i64,
}

fn now() -> Time {
    Time(Timestamp::now())
}

impl TrainerStatus {
    /// Continues an earlier attempt's report: a target it reached stays reached (a server-side
    /// apply that left the field out would remove it).
    pub fn resuming(earlier: Option<&QualityStatus>) -> Self {
        Self {
            target_reached_time: earlier.and_then(|q| q.target_reached_time.clone()),
            tokens_to_target: earlier.and_then(|q| q.tokens_to_target),
            ..Self::default()
        }
    }

    /// Takes one of the run's events.
    pub fn observe(&mut self, event: &RunEvent) {
        match event {
            RunEvent::Start(start) => self.total_steps = start.steps,
            RunEvent::Step(step) => {
                // the reporter that emitted the step estimated how far the run is
                let remaining = step.remaining_seconds.map(|s| s.round().min(i64::MAX as f64) as i64);
                let reported = Timestamp::now();
                let completion = remaining.and_then(|s| reported.checked_add(k8s_openapi::jiff::SignedDuration::from_secs(s)).ok());
                self.progress = Some(ProgressStatus {
                    step: step.step,
                    total_steps: self.total_steps,
                    tokens: step.tokens,
                    percent: step.percent,
                    estimated_remaining_seconds: remaining,
                    estimated_completion_time: completion.map(Time),
                    loss: finite(step.loss).or_else(|| self.progress.as_ref().and_then(|p| p.loss)),
                    last_update_time: Some(Time(reported)),
                    // a loss that is not a number cannot go into the status: its step can
                    non_finite_loss_step: (!step.loss.is_finite()).then_some(step.step),
                });
                self.efficiency = Some(EfficiencyStatus {
                    tokens_per_second: finite(step.tokens_per_second).unwrap_or_default(),
                    achieved_tflops: finite(step.achieved_tflops).unwrap_or_default(),
                    mfu: finite(step.mfu).unwrap_or_default(),
                    pipeline_bubble: step.pipeline_bubble.and_then(finite),
                });
            }
            RunEvent::Eval(eval) => {
                // the step event of the evaluation's step comes before it
                let tokens = self.progress.as_ref().filter(|p| p.step == eval.step).map(|p| p.tokens);
                self.quality = Some(QualityStatus {
                    step: eval.step,
                    validation_loss: eval.val_loss.and_then(finite),
                    perplexity: eval.perplexity.and_then(finite),
                    bits_per_byte: eval.bits_per_byte.and_then(finite),
                    zero_shot: eval.zero_shot.iter().filter(|z| z.accuracy.is_finite()).take(8).cloned().collect(),
                    target_reached_time: None,
                    ..Default::default()
                });
                if self.target_reached_time.is_none() && eval.quality_target_reached {
                    self.target_reached_time = Some(now());
                    self.tokens_to_target = tokens;
                }
            }
            RunEvent::Checkpoint(c) => {
                self.checkpoint = Some(CheckpointStatus { path: c.path.clone(), step: c.step, time: Some(now()) });
            }
            RunEvent::Distillation(d) => self.distillation = Some(d.clone()),
            RunEvent::Quantized(q) => self.quantized = Some((**q).clone()),
            RunEvent::HuggingFace(e) => self.hugging_face = Some(e.clone()),
            RunEvent::Resume(_) | RunEvent::Metrics { .. } | RunEvent::Summary(_) => {}
        }
    }

    /// The server-side apply patch of the trainer's fields: progress, quality, efficiency and
    /// checkpoint, nothing else.
    pub fn patch(&self) -> Value {
        let quality = self.quality.clone().map(|q| QualityStatus {
            target_reached_time: self.target_reached_time.clone(),
            tokens_to_target: self.tokens_to_target,
            distillation: self.distillation.clone(),
            quantized: self.quantized.clone(),
            hugging_face: self.hugging_face.clone(),
            ..q
        });
        let mut status = serde_json::Map::new();
        let mut put = |k: &str, v: Value| {
            if !v.is_null() {
                status.insert(k.into(), v);
            }
        };
        put("progress", serde_json::to_value(&self.progress).unwrap_or_default());
        put("quality", serde_json::to_value(&quality).unwrap_or_default());
        put("efficiency", serde_json::to_value(&self.efficiency).unwrap_or_default());
        put("checkpoint", serde_json::to_value(&self.checkpoint).unwrap_or_default());
        json!({"apiVersion": "frugal.dev/v1alpha1", "kind": "TrainingJob", "status": status})
    }
}

/// A running reporter: send it the trainer's events; [`Reporter::finish`] sends the last patch.
pub struct StatusReporter {
    events: Option<Sender<RunEvent>>,
    thread: Option<JoinHandle<()>>,
}

impl StatusReporter {
    /// Starts reporting for the TrainingJob named in the pod's environment.
    pub fn start(pod: PodEnv, interval: Duration) -> Self {
        let (tx, rx) = mpsc::channel::<RunEvent>();
        let thread = std::thread::Builder::new()
            .name("status-report".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(r) => r,
                    Err(e) => return crate::warn!("status reports off: {e}"),
                };
                runtime.block_on(report_loop(pod, interval, rx));
            })
            .ok();
        Self { events: Some(tx), thread }
    }

    pub fn sender(&self) -> Option<Sender<RunEvent>> {
        self.events.clone()
    }

    /// Sends the final report and waits for it ([`FINAL_REPORT_WAIT`] at most).
    pub fn finish(mut self) {
        self.events.take();
        if let Some(t) = self.thread.take() {
            let deadline = Instant::now() + FINAL_REPORT_WAIT;
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                crate::warn!("the last status report did not finish within {}s; the status may lag the run", FINAL_REPORT_WAIT.as_secs());
            }
        }
    }
}

async fn report_loop(pod: PodEnv, interval: Duration, events: mpsc::Receiver<RunEvent>) {
    let api: Option<Api<TrainingJob>> = match Client::try_default().await {
        Ok(client) => Some(Api::namespaced(client, &pod.namespace)),
        Err(e) => {
            crate::warn!("status reports off: no Kubernetes client: {e}");
            None
        }
    };
    // whether an earlier attempt reached the target
    let earlier = match &api {
        Some(api) => api.get_status(&pod.training_job).await.ok().and_then(|j| j.status).and_then(|s| s.quality),
        None => None,
    };
    let mut fold = TrainerStatus::resuming(earlier.as_ref());
    let mut dirty = false;
    let mut last_sent: Option<Instant> = None;
    loop {
        let open = match events.recv_timeout(interval) {
            Ok(event) => {
                fold.observe(&event);
                dirty = true;
                true
            }
            Err(RecvTimeoutError::Timeout) => true,
            Err(RecvTimeoutError::Disconnected) => false,
        };
        let due = last_sent.is_none_or(|t| t.elapsed() >= interval);
        if dirty && (due || !open) {
            if let Some(api) = &api {
                let params = PatchParams::apply(FIELD_MANAGER).force();
                // the last report is retried: nothing comes after it to correct the status
                let tries = if open { 1 } else { FINAL_REPORT_TRIES };
                for attempt in 1..=tries {
                    match api.patch_status(&pod.training_job, &params, &Patch::Apply(fold.patch())).await {
                        Ok(_) => break,
                        Err(e) if attempt < tries => {
                            crate::warn!("the last status report failed (try {attempt} of {tries}): {e}");
                            tokio::time::sleep(Duration::from_secs(1 << attempt)).await;
                        }
                        Err(e) => crate::warn!("status report failed (training goes on): {e}"),
                    }
                }
            }
            dirty = false;
            last_sent = Some(Instant::now());
        }
        if !open {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::report::event::{Checkpoint, Eval, Start, Step};
    use frugal_api::v1alpha1::{QualityFigures, ZeroShotResult};

    fn step(step: i64, loss: f64) -> RunEvent {
        RunEvent::Step(Step { step, tokens: step * 100, loss, tokens_per_second: 1000.0, achieved_tflops: 0.002, mfu: 0.3, ..Default::default() })
    }

    fn eval(step: i64, val_loss: f64, reached: bool) -> RunEvent {
        RunEvent::Eval(Eval { step, val_loss: Some(val_loss), quality_target_reached: reached, ..Default::default() })
    }

    fn checkpoint(step: i64) -> RunEvent {
        RunEvent::Checkpoint(Checkpoint { step, path: format!("/c/step-{step:09}"), seconds: None })
    }

    /// The four fields the trainer owns, and nothing else (the admission policy refuses more).
    fn keys(patch: &Value) -> Vec<String> {
        let mut k: Vec<String> = patch["status"].as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    }

    /// The percentage and the expected end reach the status from the step reports: none
    /// before a rate is known, then the completion time is the report's time plus the
    /// remaining seconds.
    #[test]
    fn progress_carries_the_percentage_and_the_expected_end() {
        // as in a pod: the run's reporter emits the events, the status folds what it sends on
        let (tx, rx) = mpsc::channel();
        let mut reporter = crate::report::Reporter::new(100, true).with_sink(Some(tx));
        let mut fold = TrainerStatus::default();
        let mut emit = |event: RunEvent, fold: &mut TrainerStatus| {
            reporter.emit(event);
            fold.observe(&rx.recv().unwrap());
        };
        emit(RunEvent::Start(Start { steps: 100, ..Default::default() }), &mut fold);
        emit(step(10, 3.0), &mut fold);
        let first = fold.progress.clone().unwrap();
        assert_eq!((first.percent, first.estimated_remaining_seconds, first.estimated_completion_time), (Some(10), None, None));
        std::thread::sleep(Duration::from_millis(50));
        emit(step(20, 2.9), &mut fold);
        let p = fold.progress.clone().unwrap();
        assert_eq!(p.percent, Some(20));
        // 10 steps in at least 50 ms: 80 steps in at least 0.4 s, and not hours
        let remaining = p.estimated_remaining_seconds.unwrap();
        assert!((0..3600).contains(&remaining), "{p:?}");
        let (end, at) = (p.estimated_completion_time.unwrap().0, p.last_update_time.unwrap().0);
        assert_eq!(end.duration_since(at).as_secs(), remaining);
        let patch = fold.patch();
        assert_eq!(patch["status"]["progress"]["percent"], 20);
        assert!(patch["status"]["progress"]["estimatedCompletionTime"].is_string(), "{patch}");
    }

    #[test]
    fn events_fold_into_the_trainers_status_fields_and_no_others() {
        let mut fold = TrainerStatus::default();
        fold.observe(&RunEvent::Start(Start { steps: 100, ..Default::default() }));
        fold.observe(&step(7, 2.5));
        let cloze = ZeroShotResult { name: "cloze".into(), accuracy: 0.25, examples: 64 };
        let q = QualityStatus {
            step: 5,
            validation_loss: Some(2.0),
            perplexity: Some(7.39),
            bits_per_byte: Some(1.5),
            zero_shot: vec![cloze.clone()],
            target_reached_time: None,
            ..Default::default()
        };
        fold.observe(&RunEvent::Eval(Eval::of(&q, 5, false)));
        fold.observe(&checkpoint(5));
        let progress = fold.progress.clone().unwrap();
        assert_eq!((progress.step, progress.total_steps, progress.tokens, progress.loss), (7, 100, 700, Some(2.5)));
        // what the evaluation scored, with how many examples
        assert_eq!(fold.quality.clone().unwrap(), q);
        assert_eq!(fold.checkpoint.clone().unwrap().step, 5);
        let patch = fold.patch();
        assert_eq!(keys(&patch), ["checkpoint", "efficiency", "progress", "quality"], "{patch}");
        assert_eq!(patch["status"]["progress"]["step"], 7);
        assert_eq!(patch["status"]["efficiency"]["achievedTflops"], 0.002);
        assert_eq!(patch["status"]["quality"]["zeroShot"][0]["examples"], 64);
        assert!(patch["status"]["efficiency"].get("pipelineBubble").is_none(), "one process, no bubble: {patch}");
        assert!(patch["status"]["quality"].get("targetReachedTime").is_none(), "no target reached: {patch}");
        assert!(patch["status"]["progress"].get("nonFiniteLossStep").is_none(), "{patch}");
    }

    #[test]
    fn the_teacher_and_the_int8_export_stay_in_quality_across_evaluations() {
        let mut fold = TrainerStatus::default();
        let teacher = DistillationStatus {
            teacher_checkpoint: "/t/step-000000100".into(),
            teacher_parameters: 1000,
            teacher: QualityFigures { bits_per_byte: Some(1.4), ..Default::default() },
            bits_per_byte_delta: Some(f64::NAN),
            teacher_tokens_per_second: 10.0,
            student_tokens_per_second: 40.0,
            ..Default::default()
        };
        fold.observe(&RunEvent::Distillation(teacher.clone()));
        fold.observe(&eval(10, 2.0, false));
        fold.observe(&eval(20, 1.9, false));
        let exported = QuantizedStatus {
            format: "int8".into(),
            bits_per_byte: Some(1.52),
            weight_bytes: 10,
            unquantized_weight_bytes: 40,
            ..Default::default()
        };
        fold.observe(&RunEvent::Quantized(Box::new(exported)));
        let hf = HuggingFaceExportStatus { step: 20, path: "/c/step-000000020/hf".into(), architecture: "GPT2LMHeadModel".into(), weight_bytes: 40 };
        fold.observe(&RunEvent::HuggingFace(hf));
        let patch = fold.patch();
        let quality = &patch["status"]["quality"];
        assert_eq!(quality["step"], 20, "{patch}");
        assert_eq!(quality["distillation"]["teacher"]["bitsPerByte"], 1.4, "{patch}");
        assert!(quality["distillation"].get("bitsPerByteDelta").is_none(), "a NaN is left out: {patch}");
        assert_eq!(quality["quantized"]["bitsPerByte"], 1.52, "{patch}");
        assert_eq!(quality["huggingFace"]["path"], "/c/step-000000020/hf", "{patch}");
        assert_eq!(quality["quantized"]["unquantizedWeightBytes"], 40, "{patch}");
        // still only the trainer's four fields
        assert_eq!(keys(&patch), ["quality"], "{patch}");
    }

    #[test]
    fn a_pipelined_step_reports_its_measured_bubble() {
        let mut fold = TrainerStatus::default();
        fold.observe(&RunEvent::Step(Step { step: 3, pipeline_bubble: Some(0.21), bubble_theory: Some(0.2), ..Default::default() }));
        assert_eq!(fold.patch()["status"]["efficiency"]["pipelineBubble"], 0.21);
    }

    #[test]
    fn reaching_the_target_records_when_and_keeps_it() {
        let mut fold = TrainerStatus::default();
        fold.observe(&eval(100, 2.4, false));
        assert!(fold.patch()["status"]["quality"].get("targetReachedTime").is_none());
        fold.observe(&step(200, 2.0));
        fold.observe(&eval(200, 1.9, true));
        let reached = fold.target_reached_time.clone().expect("reached");
        assert_eq!(fold.tokens_to_target, Some(20_000), "the tokens of step 200, when it reached the target");
        // later events and patches keep the time of the evaluation that reached it
        fold.observe(&checkpoint(200));
        fold.observe(&eval(300, 1.8, true));
        let patch = fold.patch();
        assert_eq!(patch["status"]["quality"]["step"], 300);
        // the patch is a TrainingJob status the API types read back
        let status: frugal_api::v1alpha1::TrainingJobStatus = serde_json::from_value(patch["status"].clone()).unwrap();
        // (to the second: that is what the API server keeps)
        let quality = status.quality.unwrap();
        assert_eq!(quality.target_reached_time.map(|t| t.0.as_second()), Some(reached.0.as_second()));
        assert_eq!(quality.tokens_to_target, Some(20_000), "later evaluations keep the tokens of the first that reached it");

        // a later attempt carries an earlier attempt's time (server-side apply would drop a
        // field its manager leaves out) and does not replace it
        let earlier = QualityStatus { step: 200, target_reached_time: Some(reached.clone()), tokens_to_target: Some(20_000), ..Default::default() };
        let mut next = TrainerStatus::resuming(Some(&earlier));
        next.observe(&step(400, 1.8));
        next.observe(&eval(400, 1.7, true));
        assert_eq!((next.target_reached_time, next.tokens_to_target), (Some(reached), Some(20_000)));
        let mut fresh = TrainerStatus::resuming(None);
        fresh.observe(&eval(1, 3.0, false));
        assert!(fresh.patch()["status"]["quality"].get("targetReachedTime").is_none());
    }

    #[test]
    fn a_nan_loss_is_left_out_and_its_step_reported() {
        let mut fold = TrainerStatus::default();
        fold.observe(&step(1, 2.0));
        fold.observe(&step(2, f64::NAN));
        let patch = fold.patch();
        // the last finite loss stays; the step of the bad one is said
        assert_eq!(patch["status"]["progress"]["loss"], 2.0, "{patch}");
        assert_eq!(patch["status"]["progress"]["nonFiniteLossStep"], 2, "{patch}");
        assert!(patch["status"].get("conditions").is_none(), "conditions are the operator's: {patch}");
        fold.observe(&step(3, 1.9));
        let patch = fold.patch();
        assert!(patch["status"]["progress"].get("nonFiniteLossStep").is_none(), "finite again: {patch}");
        assert_eq!(patch["status"]["progress"]["loss"], 1.9);
    }
}
