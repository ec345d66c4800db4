//! The status stage: the conditions and phase a pass's outcome means (pure), compared with what
//! the object already says so an unchanged status sends nothing, and written as one server-side
//! apply patch of the fields the operator owns: everything but progress, quality, efficiency and
//! checkpoint, which the trainer owns under its own field manager (and the API server keeps it
//! to them: the chart's admission policy).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::Api;
use kube::api::{Patch, PatchParams};

use frugal_api::TrainingJob;
use frugal_api::v1alpha1::{CostStatus, Phase, PlanStatus, TrainingJobStatus};

use crate::conditions::{self, types};
use crate::names::FIELD_MANAGER;

/// What a pass found, in the words the status uses.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub phase: Phase,
    pub reason: &'static str,
    pub message: String,
    /// The watchdog found an attempt stalled.
    pub stalled: bool,
    pub attempt: Option<i32>,
    pub restarts: Option<i32>,
    pub start_time: Option<Time>,
    /// When a job that succeeded completed (its Job's time); failures complete now.
    pub completed_at: Option<Time>,
    /// What its pods were billed this pass (None: the pass billed nothing, the status keeps
    /// what it has).
    pub cost: Option<Box<CostStatus>>,
}

/// Whether `Ready` is True in a phase: the job is doing what its spec asks (running, suspended
/// as asked, or done). See docs/operator.md for what kstatus, Flux and Argo CD make of it.
pub fn ready(phase: Phase) -> bool {
    matches!(phase, Phase::Running | Phase::Suspended | Phase::Succeeded)
}

/// The operator-owned part of the status after this pass. Conditions the operator does not own
/// (if the trainer adds any) are left out: server-side apply keeps them.
pub fn desired(prev: &TrainingJobStatus, generation: i64, plan: Option<PlanStatus>, s: &Summary, now: &Time) -> TrainingJobStatus {
    let mut conditions: Vec<_> = prev.conditions.iter().filter(|c| types::ALL.contains(&c.type_.as_str())).cloned().collect();
    let phase = s.phase;
    let states = [
        (types::READY, ready(phase)),
        (types::QUEUED, phase == Phase::Queued),
        (types::RUNNING, phase == Phase::Running),
        (types::SUSPENDED, phase == Phase::Suspended),
        // kstatus reads Stalled=True as "will not progress by itself": a failed job, or an
        // attempt the watchdog is replacing
        (types::STALLED, s.stalled || phase == Phase::Failed),
        (types::SUCCEEDED, phase == Phase::Succeeded),
        (types::FAILED, phase == Phase::Failed),
    ];
    for (type_, status) in states {
        conditions::set(&mut conditions, type_, status, s.reason, &s.message, generation, now);
    }
    loss_condition(&mut conditions, prev, generation, now);
    let completion_time =
        if phase.is_terminal() { prev.completion_time.clone().or_else(|| s.completed_at.clone()).or_else(|| Some(now.clone())) } else { None };
    TrainingJobStatus {
        observed_generation: Some(generation),
        phase: Some(phase),
        conditions,
        plan: plan.or_else(|| prev.plan.clone()),
        attempt: s.attempt.or(prev.attempt),
        restarts: s.restarts.or(prev.restarts),
        start_time: prev.start_time.clone().or_else(|| s.start_time.clone()),
        completion_time,
        cost: s.cost.as_deref().cloned().or_else(|| prev.cost.clone()),
        ..Default::default()
    }
}

/// `NonFiniteLoss`: True while the trainer reports that its latest loss is not a finite number
/// (`progress.nonFiniteLossStep`), False once it reports a finite one again; absent on a run
/// that never had one.
fn loss_condition(conditions: &mut Vec<Condition>, prev: &TrainingJobStatus, generation: i64, now: &Time) {
    let had = conditions::get(conditions, types::NON_FINITE_LOSS).is_some();
    match prev.progress.as_ref().and_then(|p| p.non_finite_loss_step) {
        Some(step) => {
            let message = format!(
                "the training loss at step {step} is not a finite number: lower training.optimizer.learningRate, keep training.optimizer.gradClip on, or train in bf16 rather than fp16"
            );
            conditions::set(conditions, types::NON_FINITE_LOSS, true, types::NON_FINITE_LOSS, &message, generation, now);
        }
        None if had => {
            let step = prev.progress.as_ref().map_or(0, |p| p.step);
            let message = format!("the training loss is finite again (step {step})");
            conditions::set(conditions, types::NON_FINITE_LOSS, false, "FiniteLoss", &message, generation, now);
        }
        None => {}
    }
}

/// A finished job's status once its spec changed: the same status, as seen at `generation`. A job
/// that ran stays finished whatever its spec says later, and saying so at the new generation is
/// what lets kstatus, Flux and Argo CD read it as done rather than as waiting for the operator
/// forever. None when it is already current.
pub fn acknowledged(prev: &TrainingJobStatus, generation: i64) -> Option<TrainingJobStatus> {
    if prev.observed_generation == Some(generation) {
        return None;
    }
    let mut seen = operators_part(prev);
    seen.observed_generation = Some(generation);
    for c in &mut seen.conditions {
        c.observed_generation = Some(generation);
    }
    Some(seen)
}

/// `AdmissionPoliciesMissing`: True, naming them, while some of the chart's admission policies
/// are missing; gone once they are all in force.
pub fn policies_condition(status: &mut TrainingJobStatus, missing: &[String], generation: i64, now: &Time) {
    if missing.is_empty() {
        status.conditions.retain(|c| c.type_ != types::ADMISSION_POLICIES_MISSING);
    } else {
        let message = crate::policies::message(missing);
        conditions::set(&mut status.conditions, types::ADMISSION_POLICIES_MISSING, true, "PoliciesMissing", &message, generation, now);
    }
}

/// The operator's part of `prev` with the bill `cost`: what a deleted job's finalizer writes
/// while its pods stop.
pub fn billed(prev: &TrainingJobStatus, cost: CostStatus) -> TrainingJobStatus {
    TrainingJobStatus { cost: Some(cost), ..operators_part(prev) }
}

/// The fields of `prev` the operator writes, as they are.
pub fn operators_part(prev: &TrainingJobStatus) -> TrainingJobStatus {
    TrainingJobStatus {
        observed_generation: prev.observed_generation,
        phase: prev.phase,
        conditions: prev.conditions.iter().filter(|c| types::ALL.contains(&c.type_.as_str())).cloned().collect(),
        plan: prev.plan.clone(),
        attempt: prev.attempt,
        restarts: prev.restarts,
        start_time: prev.start_time.clone(),
        completion_time: prev.completion_time.clone(),
        cost: prev.cost.clone(),
        ..Default::default()
    }
}

/// Whether `desired` says anything the current status does not (timestamps of unchanged
/// conditions aside).
pub fn changed(current: &TrainingJobStatus, desired: &TrainingJobStatus) -> bool {
    let owned: Vec<_> = current.conditions.iter().filter(|c| types::ALL.contains(&c.type_.as_str())).cloned().collect();
    !conditions::same(&owned, &desired.conditions)
        || current.observed_generation != desired.observed_generation
        || current.phase != desired.phase
        || current.plan != desired.plan
        || current.attempt != desired.attempt
        || current.restarts != desired.restarts
        || current.start_time != desired.start_time
        || current.completion_time != desired.completion_time
        || current.cost != desired.cost
}

/// Writes the operator's fields with one server-side apply patch.
pub async fn patch(api: &Api<TrainingJob>, name: &str, status: &TrainingJobStatus) -> Result<(), kube::Error> {
    let body = serde_json::json!({
        "apiVersion": "frugal.dev/v1alpha1",
        "kind": "TrainingJob",
        "status": status,
    });
    api.patch_status(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn t(s: i64) -> Time {
        Time(Timestamp::from_second(1_700_000_000 + s).unwrap())
    }

    fn summary(phase: Phase, reason: &'static str) -> Summary {
        Summary {
            phase,
            reason,
            message: format!("because {reason}"),
            stalled: false,
            attempt: Some(1),
            restarts: Some(0),
            start_time: None,
            completed_at: None,
            cost: None,
        }
    }

    #[test]
    fn the_trainers_non_finite_loss_becomes_the_operators_condition() {
        let running = summary(Phase::Running, "Running");
        let healthy = desired(&TrainingJobStatus::default(), 1, None, &running, &t(0));
        assert!(conditions::get(&healthy.conditions, types::NON_FINITE_LOSS).is_none(), "a healthy run has no such condition");
        let nan = TrainingJobStatus {
            progress: Some(frugal_api::v1alpha1::ProgressStatus { step: 7, non_finite_loss_step: Some(7), ..Default::default() }),
            ..healthy.clone()
        };
        let bad = desired(&nan, 1, None, &running, &t(10));
        let c = conditions::get(&bad.conditions, types::NON_FINITE_LOSS).unwrap();
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", types::NON_FINITE_LOSS));
        assert!(c.message.contains("step 7 is not a finite number"), "{}", c.message);
        assert!(changed(&healthy, &bad));
        let finite = TrainingJobStatus { progress: Some(frugal_api::v1alpha1::ProgressStatus { step: 9, ..Default::default() }), ..bad.clone() };
        let again = desired(&finite, 1, None, &running, &t(20));
        let c = conditions::get(&again.conditions, types::NON_FINITE_LOSS).unwrap();
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "FiniteLoss"));
    }

    fn conditions_of(s: &TrainingJobStatus) -> Vec<(String, String)> {
        types::ALL
            .iter()
            .filter_map(|t| conditions::get(&s.conditions, t).map(|c| (c.type_.clone(), c.status.clone())))
            .filter(|(_, s)| s == "True")
            .collect()
    }

    /// Which conditions are True in each phase (the table in docs/operator.md).
    #[test]
    fn conditions_by_phase() {
        let cases = [
            (Phase::Pending, false, vec![]),
            (Phase::Queued, false, vec!["Queued"]),
            (Phase::Running, false, vec!["Ready", "Running"]),
            (Phase::Suspended, false, vec!["Ready", "Suspended"]),
            (Phase::Succeeded, false, vec!["Ready", "Succeeded"]),
            (Phase::Failed, false, vec!["Stalled", "Failed"]),
            (Phase::Pending, true, vec!["Stalled"]),
        ];
        for (phase, stalled, want) in cases {
            let s = Summary { stalled, ..summary(phase, "R") };
            let status = desired(&TrainingJobStatus::default(), 3, None, &s, &t(0));
            let trues: Vec<_> = conditions_of(&status).into_iter().map(|(t, _)| t).collect();
            assert_eq!(trues, want, "{phase:?} stalled={stalled}");
            assert_eq!(status.conditions.len(), 7);
            assert!(status.conditions.iter().all(|c| c.observed_generation == Some(3) && c.message == "because R"));
            assert_eq!(status.observed_generation, Some(3));
            assert_eq!(status.phase, Some(phase));
        }
    }

    #[test]
    fn an_unchanged_pass_changes_nothing() {
        let s = summary(Phase::Running, "Running");
        let first = desired(&TrainingJobStatus::default(), 1, None, &s, &t(0));
        let second = desired(&first, 1, None, &s, &t(60));
        assert!(!changed(&first, &second));
        assert_eq!(second.conditions, first.conditions, "transition times kept");
        let done = desired(&first, 1, None, &summary(Phase::Succeeded, "Succeeded"), &t(90));
        assert!(changed(&first, &done));
        let ready = conditions::get(&done.conditions, "Ready").unwrap();
        assert_eq!(ready.last_transition_time, t(0), "Ready stayed True");
        let running = conditions::get(&done.conditions, "Running").unwrap();
        assert_eq!((running.status.as_str(), running.last_transition_time.clone()), ("False", t(90)));
    }

    #[test]
    fn times_are_set_once() {
        let s = Summary { start_time: Some(t(5)), ..summary(Phase::Running, "Running") };
        let running = desired(&TrainingJobStatus::default(), 1, None, &s, &t(10));
        assert_eq!(running.start_time, Some(t(5)));
        assert_eq!(running.completion_time, None);
        let s = Summary { start_time: Some(t(7)), completed_at: Some(t(50)), ..summary(Phase::Succeeded, "Succeeded") };
        let done = desired(&running, 1, None, &s, &t(60));
        assert_eq!(done.start_time, Some(t(5)));
        assert_eq!(done.completion_time, Some(t(50)));
        let failed = desired(&TrainingJobStatus::default(), 1, None, &summary(Phase::Failed, "BackoffLimitExceeded"), &t(70));
        assert_eq!(failed.completion_time, Some(t(70)));
    }

    #[test]
    fn a_finished_job_acknowledges_a_new_generation_and_keeps_its_outcome() {
        let done = desired(&TrainingJobStatus::default(), 1, None, &summary(Phase::Succeeded, "Succeeded"), &t(0));
        assert_eq!(acknowledged(&done, 1), None, "current already");
        let with_progress = TrainingJobStatus { progress: Some(Default::default()), ..done.clone() };
        let seen = acknowledged(&with_progress, 2).unwrap();
        assert_eq!(seen.observed_generation, Some(2));
        assert!(seen.conditions.iter().all(|c| c.observed_generation == Some(2)));
        assert_eq!(conditions_of(&seen), conditions_of(&done), "the same conditions hold");
        assert_eq!((seen.phase, seen.completion_time.clone()), (done.phase, done.completion_time.clone()));
        assert!(seen.progress.is_none(), "the trainer's fields stay the trainer's");
        assert!(changed(&done, &seen));
    }

    #[test]
    fn the_trainers_fields_are_not_the_operators() {
        let prev = TrainingJobStatus { progress: Some(Default::default()), ..Default::default() };
        let d = desired(&prev, 1, None, &summary(Phase::Running, "Running"), &t(0));
        assert!(d.progress.is_none(), "progress is not applied by the operator");
        let json = serde_json::to_value(&d).unwrap();
        assert!(json.get("progress").is_none() && json.get("cost").is_none());
    }
}
