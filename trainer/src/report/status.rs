//! Reports progress into the TrainingJob's status from a pod: the trainer's events (steps,
//! evaluations, checkpoints) become `status.progress`, `quality`, `efficiency`, `checkpoint` and
//! `cost`, applied server-side under the trainer's own field manager (the operator owns the
//! rest of the status). At most one patch per interval; a failed report is logged and training
//! goes on. When an evaluation reaches the job's quality target, `cost.gpuHoursToTarget` records
//! the job's GPU-hours (all its GPUs, earlier attempts included) at that moment.

use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use frugal_api::TrainingJob;
use frugal_api::contract::PodEnv;
use frugal_api::finite::finite;
use frugal_api::v1alpha1::{CheckpointStatus, CostStatus, EfficiencyStatus, ProgressStatus, QualityStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};

use crate::report::event::RunEvent;

/// The field manager of the trainer's status patches.
pub const FIELD_MANAGER: &str = "frugal-trainer";

/// The condition the trainer owns: True while the training loss is not a finite number.
pub const NON_FINITE_LOSS: &str = "NonFiniteLoss";

/// What the job costs per second of this attempt.
#[derive(Debug, Clone)]
pub struct Pricing {
    pub gpus: f64,
    pub price_per_gpu_hour: f64,
    pub currency: String,
}

impl Pricing {
    /// A job's GPUs at its GPU type's list price (none on CPU jobs).
    pub fn for_job(spec: &frugal_api::TrainingJobSpec, plan: &frugal_api::planner::Plan) -> Self {
        let price = frugal_api::planner::gpu_type(&spec.resources.gpu_type).map_or(0.0, |g| g.usd_per_hour);
        Self { gpus: plan.gpus as f64, price_per_gpu_hour: price, currency: plan.currency.clone() }
    }
}

/// How often the trainer patches the status at most.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(5);

/// Where a trainer in a pod reports, when the operator asked it to (`FRUGAL_REPORT_STATUS`):
/// the pod's environment and the job's prices. Read once; started by whichever worker reports.
#[derive(Debug, Clone)]
pub struct StatusTarget {
    pod: PodEnv,
    pricing: Pricing,
}

impl StatusTarget {
    /// None outside a pod, or when the pod is not to report.
    pub fn from_env(spec: &frugal_api::TrainingJobSpec, plan: &frugal_api::planner::Plan) -> Option<Self> {
        let pod = PodEnv::from_lookup(|k| std::env::var(k).ok()).ok().filter(|pod| pod.report_status)?;
        Some(Self { pod, pricing: Pricing::for_job(spec, plan) })
    }

    pub fn start(self) -> StatusReporter {
        StatusReporter::start(self.pod, self.pricing, REPORT_INTERVAL)
    }
}

/// The status fields the trainer owns, folded from its events.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Fold {
    pub progress: Option<ProgressStatus>,
    pub quality: Option<QualityStatus>,
    pub efficiency: Option<EfficiencyStatus>,
    pub checkpoint: Option<CheckpointStatus>,
    /// The job's GPU-hours when an evaluation first reached the quality target.
    pub gpu_hours_to_target: Option<f64>,
    /// The `NonFiniteLoss` condition, once a loss was not a number.
    pub loss_condition: Option<Condition>,
    total_steps: i64,
}

fn now() -> Time {
    Time(Timestamp::now())
}

impl Fold {
    /// Continues an earlier attempt's report: a target it reached stays reached (a server-side
    /// apply that left the field out would remove it).
    pub fn resuming(earlier: Option<&CostStatus>) -> Self {
        Self { gpu_hours_to_target: earlier.and_then(|c| c.gpu_hours_to_target).and_then(finite), ..Self::default() }
    }

    /// Takes one of the run's events, which came `gpu_hours` into the job.
    pub fn observe(&mut self, event: &RunEvent, gpu_hours: f64) {
        match event {
            RunEvent::Start(start) => self.total_steps = start.steps,
            RunEvent::Step(step) => {
                self.progress = Some(ProgressStatus {
                    step: step.step,
                    total_steps: self.total_steps,
                    tokens: step.tokens,
                    loss: finite(step.loss),
                    last_update_time: Some(now()),
                });
                self.efficiency = Some(EfficiencyStatus {
                    tokens_per_second: finite(step.tokens_per_second).unwrap_or_default(),
                    achieved_tflops: finite(step.achieved_tflops).unwrap_or_default(),
                    mfu: finite(step.mfu).unwrap_or_default(),
                    pipeline_bubble: step.pipeline_bubble.and_then(finite),
                });
                self.observe_loss(step.step, step.loss);
            }
            RunEvent::Eval(eval) => {
                self.quality = Some(QualityStatus {
                    step: eval.step,
                    validation_loss: eval.val_loss.and_then(finite),
                    perplexity: eval.perplexity.and_then(finite),
                    bits_per_byte: eval.bits_per_byte.and_then(finite),
                    zero_shot: eval.zero_shot.iter().filter(|z| z.accuracy.is_finite()).take(8).cloned().collect(),
                });
                if self.gpu_hours_to_target.is_none() && eval.quality_target_reached {
                    self.gpu_hours_to_target = finite(gpu_hours);
                }
            }
            RunEvent::Checkpoint(c) => {
                self.checkpoint = Some(CheckpointStatus { path: c.path.clone(), step: c.step, time: Some(now()) });
            }
            RunEvent::Resume(_) | RunEvent::Metrics { .. } | RunEvent::Summary(_) => {}
        }
    }

    /// A loss that is not a number cannot go into the status (`progress.loss` keeps the last
    /// finite one out): the `NonFiniteLoss` condition says so, and goes False once a finite loss
    /// comes back. It is there only after a run has had one.
    fn observe_loss(&mut self, step: i64, loss: f64) {
        let was_bad = self.loss_condition.as_ref().is_some_and(|c| c.status == "True");
        let (status, reason, message) = match (loss.is_finite(), was_bad) {
            (true, false) => return,
            (true, true) => ("False", "FiniteLoss", format!("the training loss is finite again at step {step}")),
            (false, _) => (
                "True",
                NON_FINITE_LOSS,
                format!(
                    "the training loss at step {step} is {loss}, not a finite number: lower training.optimizer.learningRate, \
                     keep training.optimizer.gradClip on, or train in bf16 rather than fp16"
                ),
            ),
        };
        // the transition time moves only when the status does
        let since = self.loss_condition.as_ref().filter(|c| c.status == status).map_or_else(now, |c| c.last_transition_time.clone());
        self.loss_condition = Some(Condition {
            type_: NON_FINITE_LOSS.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            last_transition_time: since,
            observed_generation: None,
        });
    }

    /// The server-side apply patch of the trainer's fields, `gpu_hours` into the job.
    pub fn patch(&self, gpu_hours: f64, pricing: &Pricing) -> Value {
        let cost = CostStatus {
            gpu_hours,
            cost: gpu_hours * pricing.price_per_gpu_hour,
            currency: pricing.currency.clone(),
            gpu_hours_to_target: self.gpu_hours_to_target,
        };
        let mut status = serde_json::Map::new();
        let mut put = |k: &str, v: Value| {
            if !v.is_null() {
                status.insert(k.into(), v);
            }
        };
        put("progress", serde_json::to_value(&self.progress).unwrap_or_default());
        put("quality", serde_json::to_value(&self.quality).unwrap_or_default());
        put("efficiency", serde_json::to_value(&self.efficiency).unwrap_or_default());
        put("checkpoint", serde_json::to_value(&self.checkpoint).unwrap_or_default());
        put("cost", serde_json::to_value(&cost).unwrap_or_default());
        if let Some(c) = &self.loss_condition {
            // a list map keyed by type: the operator's conditions stay the operator's
            put("conditions", json!([c]));
        }
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
    pub fn start(pod: PodEnv, pricing: Pricing, interval: Duration) -> Self {
        let (tx, rx) = mpsc::channel::<RunEvent>();
        let thread = std::thread::Builder::new()
            .name("status-report".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(r) => r,
                    Err(e) => return eprintln!("frugal-trainer: status reports off: {e}"),
                };
                runtime.block_on(report_loop(pod, pricing, interval, rx));
            })
            .ok();
        Self { events: Some(tx), thread }
    }

    pub fn sender(&self) -> Option<Sender<RunEvent>> {
        self.events.clone()
    }

    /// Sends the final report and waits for it (a few seconds at most).
    pub fn finish(mut self) {
        self.events.take();
        if let Some(t) = self.thread.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

async fn report_loop(pod: PodEnv, pricing: Pricing, interval: Duration, events: mpsc::Receiver<RunEvent>) {
    let api: Option<Api<TrainingJob>> = match Client::try_default().await {
        Ok(client) => Some(Api::namespaced(client, &pod.namespace)),
        Err(e) => {
            eprintln!("frugal-trainer: status reports off: no Kubernetes client: {e}");
            None
        }
    };
    // What earlier attempts spent, which this attempt adds to.
    let earlier = match &api {
        Some(api) => api.get_status(&pod.training_job).await.ok().and_then(|j| j.status).and_then(|s| s.cost),
        None => None,
    };
    let started = Instant::now();
    let earlier_hours = earlier.as_ref().map_or(0.0, |c| c.gpu_hours);
    let gpu_hours = || earlier_hours + pricing.gpus * started.elapsed().as_secs_f64() / 3600.0;
    let mut fold = Fold::resuming(earlier.as_ref());
    let mut dirty = false;
    let mut last_sent: Option<Instant> = None;
    loop {
        let open = match events.recv_timeout(interval) {
            Ok(event) => {
                fold.observe(&event, gpu_hours());
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
                if let Err(e) = api.patch_status(&pod.training_job, &params, &Patch::Apply(fold.patch(gpu_hours(), &pricing))).await {
                    eprintln!("frugal-trainer: status report failed (training goes on): {e}");
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

    fn pricing() -> Pricing {
        Pricing { gpus: 4.0, price_per_gpu_hour: 2.5, currency: "USD".into() }
    }

    use crate::report::event::{Checkpoint, Eval, Start, Step};
    use frugal_api::v1alpha1::ZeroShotResult;

    fn step(step: i64, loss: f64) -> RunEvent {
        RunEvent::Step(Step { step, tokens: step * 100, loss, tokens_per_second: 1000.0, achieved_tflops: 0.002, mfu: 0.3, ..Default::default() })
    }

    fn eval(step: i64, val_loss: f64, reached: bool) -> RunEvent {
        RunEvent::Eval(Eval { step, val_loss: Some(val_loss), quality_target_reached: reached, ..Default::default() })
    }

    fn checkpoint(step: i64) -> RunEvent {
        RunEvent::Checkpoint(Checkpoint { step, path: format!("/c/step-{step:09}"), seconds: None })
    }

    #[test]
    fn events_fold_into_the_trainers_status_fields() {
        let mut fold = Fold::default();
        fold.observe(&RunEvent::Start(Start { steps: 100, ..Default::default() }), 0.0);
        fold.observe(&step(7, 2.5), 0.1);
        let cloze = ZeroShotResult { name: "cloze".into(), accuracy: 0.25, examples: 64 };
        let q =
            QualityStatus { step: 5, validation_loss: Some(2.0), perplexity: Some(7.39), bits_per_byte: Some(1.5), zero_shot: vec![cloze.clone()] };
        fold.observe(&RunEvent::Eval(Eval::of(&q, 5, false)), 0.2);
        fold.observe(&checkpoint(5), 0.3);
        let progress = fold.progress.clone().unwrap();
        assert_eq!((progress.step, progress.total_steps, progress.tokens, progress.loss), (7, 100, 700, Some(2.5)));
        // what the evaluation scored, with how many examples
        assert_eq!(fold.quality.clone().unwrap(), q);
        assert_eq!(fold.checkpoint.clone().unwrap().step, 5);
        let patch = fold.patch(1.0, &pricing());
        assert_eq!(patch["status"]["progress"]["step"], 7);
        assert_eq!(patch["status"]["efficiency"]["achievedTflops"], 0.002);
        assert_eq!(patch["status"]["quality"]["zeroShot"][0]["examples"], 64);
        assert!(patch["status"]["efficiency"].get("pipelineBubble").is_none(), "one process, no bubble: {patch}");
        assert_eq!(patch["status"]["cost"]["gpuHours"], 1.0);
        assert_eq!(patch["status"]["cost"]["cost"], 2.5);
        assert!(patch["status"].get("conditions").is_none(), "a healthy run adds no condition");
        assert!(patch["status"]["cost"].get("gpuHoursToTarget").is_none(), "no target reached: {patch}");
    }

    #[test]
    fn a_pipelined_step_reports_its_measured_bubble() {
        let mut fold = Fold::default();
        fold.observe(&RunEvent::Step(Step { step: 3, pipeline_bubble: Some(0.21), bubble_theory: Some(0.2), ..Default::default() }), 0.0);
        assert_eq!(fold.patch(0.0, &pricing())["status"]["efficiency"]["pipelineBubble"], 0.21);
    }

    #[test]
    fn reaching_the_target_records_the_gpu_hours_it_took() {
        let mut fold = Fold::default();
        fold.observe(&eval(100, 2.4, false), 0.5);
        assert!(fold.patch(0.6, &pricing())["status"]["cost"].get("gpuHoursToTarget").is_none());
        fold.observe(&eval(200, 1.9, true), 1.25);
        // Later events and patches keep the figure of the evaluation that reached it.
        fold.observe(&checkpoint(200), 1.3);
        fold.observe(&eval(200, 1.8, true), 1.4);
        let patch = fold.patch(1.5, &pricing());
        assert_eq!(patch["status"]["cost"]["gpuHoursToTarget"], 1.25, "{patch}");
        assert_eq!(patch["status"]["cost"]["gpuHours"], 1.5);
        assert_eq!(patch["status"]["quality"]["step"], 200);
        // The patch is a TrainingJob status the API types read back.
        let status: frugal_api::v1alpha1::TrainingJobStatus = serde_json::from_value(patch["status"].clone()).unwrap();
        assert_eq!(status.cost.unwrap().gpu_hours_to_target, Some(1.25));

        // A later attempt carries an earlier attempt's figure (server-side apply would drop a
        // field its manager leaves out) and does not replace it.
        let earlier = CostStatus { gpu_hours: 1.5, cost: 3.75, currency: "USD".into(), gpu_hours_to_target: Some(1.25) };
        let mut next = Fold::resuming(Some(&earlier));
        next.observe(&eval(200, 1.7, true), 1.6);
        assert_eq!(next.patch(1.7, &pricing())["status"]["cost"]["gpuHoursToTarget"], 1.25);
        assert!(Fold::resuming(None).patch(0.1, &pricing())["status"]["cost"].get("gpuHoursToTarget").is_none());
    }

    #[test]
    fn a_nan_loss_is_left_out_and_said_in_a_condition() {
        let mut fold = Fold::default();
        fold.observe(&step(1, 2.0), 0.0);
        fold.observe(&step(2, f64::NAN), 0.0);
        let patch = fold.patch(0.0, &pricing());
        assert!(patch["status"]["progress"].get("loss").is_none(), "{patch}");
        let c = &patch["status"]["conditions"][0];
        assert_eq!((c["type"].as_str(), c["status"].as_str(), c["reason"].as_str()), (Some(NON_FINITE_LOSS), Some("True"), Some(NON_FINITE_LOSS)));
        assert!(c["message"].as_str().unwrap().contains("step 2 is NaN"), "{c}");
        // the patch still reads back as a status, its condition beside the operator's
        let status: frugal_api::v1alpha1::TrainingJobStatus = serde_json::from_value(patch["status"].clone()).unwrap();
        assert_eq!(status.conditions.len(), 1);
        fold.observe(&step(3, 1.9), 0.0);
        let c = &fold.patch(0.0, &pricing())["status"]["conditions"][0];
        assert_eq!((c["status"].as_str(), c["reason"].as_str()), (Some("False"), Some("FiniteLoss")));
    }
}
