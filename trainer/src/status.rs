//! Reports progress into the TrainingJob's status from a pod: the trainer's events (steps,
//! evaluations, checkpoints) become `status.progress`, `quality`, `efficiency`, `checkpoint` and
//! `cost`, applied server-side under the trainer's own field manager (the operator owns the
//! rest of the status). At most one patch per interval; a failed report is logged and training
//! goes on.

use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use frugal_api::TrainingJob;
use frugal_api::contract::PodEnv;
use frugal_api::finite::finite;
use frugal_api::v1alpha1::{
    CheckpointStatus, CostStatus, EfficiencyStatus, ProgressStatus, QualityStatus, ZeroShotResult,
};
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

/// The status fields the trainer owns, folded from its events.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Fold {
    pub progress: Option<ProgressStatus>,
    pub quality: Option<QualityStatus>,
    pub efficiency: Option<EfficiencyStatus>,
    pub checkpoint: Option<CheckpointStatus>,
    total_steps: i64,
}

fn now() -> Time {
    Time(Timestamp::now())
}

impl Fold {
    /// Takes one event of the trainer's JSON lines.
    pub fn observe(&mut self, event: &Value) {
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

    /// The server-side apply patch of the trainer's fields.
    pub fn patch(&self, cost: &CostStatus) -> Value {
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
        put("cost", serde_json::to_value(cost).unwrap_or_default());
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
    // GPU-hours of earlier attempts, which this attempt adds to.
    let earlier = match &api {
        Some(api) => api
            .get_status(&pod.training_job)
            .await
            .ok()
            .and_then(|j| j.status)
            .and_then(|s| s.cost)
            .map(|c| c.gpu_hours)
            .unwrap_or_default(),
        None => 0.0,
    };
    let started = Instant::now();
    let mut fold = Fold::default();
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
            let gpu_hours = earlier + pricing.gpus * started.elapsed().as_secs_f64() / 3600.0;
            let cost = CostStatus {
                gpu_hours,
                cost: gpu_hours * pricing.price_per_gpu_hour,
                currency: pricing.currency.clone(),
                gpu_hours_to_target: None,
            };
            if let Some(api) = &api {
                let params = PatchParams::apply(FIELD_MANAGER).force();
                if let Err(e) = api.patch_status(&pod.training_job, &params, &Patch::Apply(fold.patch(&cost))).await {
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

    #[test]
    fn events_fold_into_the_trainers_status_fields() {
        let mut fold = Fold::default();
        fold.observe(&json!({"event": "start", "steps": 100}));
        fold.observe(&json!({"event": "step", "step": 7, "tokens": 700, "loss": 2.5, "tokens_per_second": 1000.0, "mfu": 0.3}));
        fold.observe(&json!({"event": "eval", "step": 5, "val_loss": 2.0, "perplexity": 7.39, "bits_per_byte": 1.5, "acc_cloze": 0.25}));
        fold.observe(&json!({"event": "checkpoint", "step": 5, "path": "/checkpoints/step-000000005"}));
        let progress = fold.progress.clone().unwrap();
        assert_eq!((progress.step, progress.total_steps, progress.tokens, progress.loss), (7, 100, 700, Some(2.5)));
        let quality = fold.quality.clone().unwrap();
        assert_eq!(quality.zero_shot, vec![ZeroShotResult { name: "cloze".into(), accuracy: 0.25, examples: 0 }]);
        assert_eq!(fold.checkpoint.clone().unwrap().step, 5);
        let cost = CostStatus { gpu_hours: 1.0, cost: 2.5, currency: "USD".into(), gpu_hours_to_target: None };
        let patch = fold.patch(&cost);
        assert_eq!(patch["status"]["progress"]["step"], 7);
        assert_eq!(patch["status"]["cost"]["cost"], 2.5);
        assert!(patch["status"].get("conditions").is_none(), "the operator owns conditions");
    }

    #[test]
    fn a_nan_loss_is_left_out() {
        let mut fold = Fold::default();
        fold.observe(&json!({"event": "step", "step": 1, "tokens": 10, "loss": f64::NAN}));
        let cost = CostStatus::default();
        let patch = fold.patch(&cost);
        assert!(patch["status"]["progress"].get("loss").is_none(), "{patch}");
    }
}
