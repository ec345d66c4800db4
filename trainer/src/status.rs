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
use frugal_api::v1alpha1::{CheckpointStatus, CostStatus, EfficiencyStatus, ProgressStatus, QualityStatus, ZeroShotResult};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};

/// The field manager of the trainer's status patches.
pub const FIELD_MANAGER: &str = "frugal-trainer";

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

    /// Takes one event of the trainer's JSON lines, which came `gpu_hours` into the job.
    pub fn observe(&mut self, event: &Value, gpu_hours: f64) {
        let num = |k: &str| event.get(k).and_then(Value::as_f64);
        let int = |k: &str| event.get(k).and_then(Value::as_i64);
        match event.get("event").and_then(Value::as_str) {
            Some("start") => self.total_steps = int("steps").unwrap_or(self.total_steps),
            Some("step") => {
                self.progress = Some(ProgressStatus {
                    step: int("step").unwrap_or_default(),
                    total_steps: self.total_steps,
                    tokens: int("tokens").unwrap_or_default(),
                    loss: num("loss").and_then(finite),
                    last_update_time: Some(now()),
                });
                let tokens_per_second = num("tokens_per_second").and_then(finite).unwrap_or_default();
                let mfu = num("mfu").and_then(finite).unwrap_or_default();
                self.efficiency = Some(EfficiencyStatus {
                    tokens_per_second,
                    achieved_tflops: num("achieved_tflops").and_then(finite).unwrap_or_default(),
                    mfu,
                    pipeline_bubble: num("bubble").and_then(finite),
                });
            }
            Some("eval") => {
                let zero_shot = event
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter_map(|(k, v)| Some((k.strip_prefix("acc_")?, v.as_f64()?)))
                    .map(|(name, accuracy)| ZeroShotResult { name: name.into(), accuracy, examples: 0 })
                    .take(8)
                    .collect();
                self.quality = Some(QualityStatus {
                    step: int("step").unwrap_or_default(),
                    validation_loss: num("val_loss").and_then(finite),
                    perplexity: num("perplexity").and_then(finite),
                    bits_per_byte: num("bits_per_byte").and_then(finite),
                    zero_shot,
                });
                if self.gpu_hours_to_target.is_none() && event.get("quality_target_reached").and_then(Value::as_bool) == Some(true) {
                    self.gpu_hours_to_target = finite(gpu_hours);
                }
            }
            Some("checkpoint") => {
                self.checkpoint = Some(CheckpointStatus {
                    path: event.get("path").and_then(Value::as_str).unwrap_or_default().into(),
                    step: int("step").unwrap_or_default(),
                    time: Some(now()),
                });
            }
            _ => {}
        }
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
        json!({"apiVersion": "frugal.dev/v1alpha1", "kind": "TrainingJob", "status": status})
    }
}

/// A running reporter: send it the trainer's events; [`Reporter::finish`] sends the last patch.
pub struct StatusReporter {
    events: Option<Sender<Value>>,
    thread: Option<JoinHandle<()>>,
}

impl StatusReporter {
    /// Starts reporting for the TrainingJob named in the pod's environment.
    pub fn start(pod: PodEnv, pricing: Pricing, interval: Duration) -> Self {
        let (tx, rx) = mpsc::channel::<Value>();
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

    pub fn sender(&self) -> Option<Sender<Value>> {
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

async fn report_loop(pod: PodEnv, pricing: Pricing, interval: Duration, events: mpsc::Receiver<Value>) {
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

    #[test]
    fn events_fold_into_the_trainers_status_fields() {
        let mut fold = Fold::default();
        fold.observe(&json!({"event": "start", "steps": 100}), 0.0);
        fold.observe(&json!({"event": "step", "step": 7, "tokens": 700, "loss": 2.5, "tokens_per_second": 1000.0, "mfu": 0.3}), 0.1);
        fold.observe(&json!({"event": "eval", "step": 5, "val_loss": 2.0, "perplexity": 7.39, "bits_per_byte": 1.5, "acc_cloze": 0.25}), 0.2);
        fold.observe(&json!({"event": "checkpoint", "step": 5, "path": "/checkpoints/step-000000005"}), 0.3);
        let progress = fold.progress.clone().unwrap();
        assert_eq!((progress.step, progress.total_steps, progress.tokens, progress.loss), (7, 100, 700, Some(2.5)));
        let quality = fold.quality.clone().unwrap();
        assert_eq!(quality.zero_shot, vec![ZeroShotResult { name: "cloze".into(), accuracy: 0.25, examples: 0 }]);
        assert_eq!(fold.checkpoint.clone().unwrap().step, 5);
        let patch = fold.patch(1.0, &pricing());
        assert_eq!(patch["status"]["progress"]["step"], 7);
        assert_eq!(patch["status"]["cost"]["gpuHours"], 1.0);
        assert_eq!(patch["status"]["cost"]["cost"], 2.5);
        assert!(patch["status"].get("conditions").is_none(), "the operator owns conditions");
        assert!(patch["status"]["cost"].get("gpuHoursToTarget").is_none(), "no target reached: {patch}");
    }

    #[test]
    fn reaching_the_target_records_the_gpu_hours_it_took() {
        let mut fold = Fold::default();
        fold.observe(&json!({"event": "eval", "step": 100, "val_loss": 2.4}), 0.5);
        assert!(fold.patch(0.6, &pricing())["status"]["cost"].get("gpuHoursToTarget").is_none());
        fold.observe(&json!({"event": "eval", "step": 200, "val_loss": 1.9, "quality_target_reached": true}), 1.25);
        // Later events and patches keep the figure of the evaluation that reached it.
        fold.observe(&json!({"event": "checkpoint", "step": 200, "path": "/c/step-000000200"}), 1.3);
        fold.observe(&json!({"event": "eval", "step": 200, "val_loss": 1.8, "quality_target_reached": true}), 1.4);
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
        next.observe(&json!({"event": "eval", "step": 200, "val_loss": 1.7, "quality_target_reached": true}), 1.6);
        assert_eq!(next.patch(1.7, &pricing())["status"]["cost"]["gpuHoursToTarget"], 1.25);
        assert!(Fold::resuming(None).patch(0.1, &pricing())["status"]["cost"].get("gpuHoursToTarget").is_none());
    }

    #[test]
    fn a_nan_loss_is_left_out() {
        let mut fold = Fold::default();
        fold.observe(&json!({"event": "step", "step": 1, "tokens": 10, "loss": f64::NAN}), 0.0);
        let patch = fold.patch(0.0, &pricing());
        assert!(patch["status"]["progress"].get("loss").is_none(), "{patch}");
    }
}
