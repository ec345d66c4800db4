//! Admission: whether a planned job may start. Its GPUs must be within both the job's own
//! `budget.maxGpus` and the operator's ceiling, and a job of several pods must checkpoint to a
//! volume they all share (ReadWriteMany), checked before anything starts. A job counted in a
//! TrainingBudget is admitted against it later in the pass, by the charge stage (`charge`) once
//! the lifecycle has said what the job is about to do: [`demand`] and [`budget_claim`] put that in
//! the ledger's terms, and `training_budget::ledger` writes it.

use k8s_openapi::api::core::v1::PersistentVolumeClaim;

use frugal_api::TrainingJob;
use frugal_api::admission::{self, GpuLimit, NotTheDefaultBudget};
use frugal_api::v1alpha1::{CostStatus, HolderKind, Phase};

use super::lifecycle::{Action, Decision};
use super::observe::{AttemptState, AttemptView};
use super::plan::PlannedJob;
use crate::conditions::reasons;
use crate::settings::Settings;
use crate::training_budget::budget::{Claim, Demand, TooSmall};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AdmitError {
    #[error(transparent)]
    GpuLimit(#[from] GpuLimit),
    #[error("spec.checkpoint.claimName {claim:?} does not exist yet; the job's {pods} pods start once it does")]
    ClaimMissing { claim: String, pods: i64 },
    #[error(transparent)]
    BudgetTooSmall(#[from] TooSmall),
    #[error(
        "spec.checkpoint.claimName {claim:?} is not ReadWriteMany, but the job's {pods} pods all write checkpoints to it: use a ReadWriteMany claim, or one pod (spec.parallelism.gpusPerPod = pipelineStages)"
    )]
    ClaimNotShared { claim: String, pods: i64 },
    #[error(transparent)]
    NotTheDefaultBudget(#[from] NotTheDefaultBudget),
}

impl AdmitError {
    /// Reason of a permanent admission error; a missing claim is waited for.
    pub fn permanent_reason(&self) -> Option<&'static str> {
        match self {
            Self::GpuLimit(_) => Some(reasons::GPU_LIMIT_EXCEEDED),
            Self::ClaimNotShared { .. } => Some(reasons::CHECKPOINT_NOT_SHARED),
            Self::BudgetTooSmall(_) => Some(reasons::BUDGET_TOO_SMALL),
            Self::NotTheDefaultBudget(_) => Some(reasons::BUDGET_NOT_ALLOWED),
            Self::ClaimMissing { .. } => None,
        }
    }
}

/// Whether admission gates this pass: it does while no attempt is live. The checks are about
/// starting an attempt; a running one holds its GPUs and claim already, so a cap lowered under
/// it (spec.budget.maxGpus, the operator's setting) applies to the next attempt instead of
/// failing a job whose pods keep running.
pub fn gates(attempts: &[AttemptView]) -> bool {
    !attempts.last().is_some_and(|a| !matches!(a.state, AttemptState::Succeeded { .. } | AttemptState::Failed { .. }))
}

/// The checkpoint claim a job must have checked before it starts, if any.
pub fn claim_to_check(job: &PlannedJob) -> Option<&str> {
    (job.plan.pods > 1).then_some(job.valid.spec.checkpoint.claim_name.as_deref()).flatten()
}

/// Admits a job; `claim` is the claim [`claim_to_check`] named, as read from the cluster.
pub fn admit(job: &PlannedJob, settings: &Settings, claim: Option<&PersistentVolumeClaim>) -> Result<(), AdmitError> {
    let spec = &job.valid.spec;
    admission::within_gpu_limit(job.plan.gpus, &spec.parallelism, spec.budget.max_gpus, Some(settings.max_gpus_per_job))?;
    if let Some(name) = claim_to_check(job) {
        let pods = job.plan.pods;
        let claim = claim.ok_or_else(|| AdmitError::ClaimMissing { claim: name.into(), pods })?;
        let modes = claim.spec.as_ref().and_then(|s| s.access_modes.clone()).unwrap_or_default();
        if !modes.iter().any(|m| m == "ReadWriteMany") {
            return Err(AdmitError::ClaimNotShared { claim: name.into(), pods });
        }
    }
    Ok(())
}

/// What a job's next step means for its budget.
pub fn demand(decision: &Decision, attempts: &[AttemptView]) -> Demand {
    if matches!(decision.phase, Phase::Succeeded | Phase::Failed) {
        return Demand::Release;
    }
    let live = attempts
        .last()
        .is_some_and(|a| matches!(a.state, AttemptState::Starting | AttemptState::Running | AttemptState::Stopping(_) | AttemptState::Queued));
    if live {
        Demand::Hold
    } else if matches!(decision.action, Action::Create(_)) {
        Demand::Start
    } else {
        Demand::Release
    }
}

/// GPUs the job holds in its budget's ledger. A job Kueue manages (it has a queue) holds none
/// while Kueue keeps its attempt suspended, or before it has one: GPUs at an instant are Kueue's
/// business, and the budget keeps its GPU-hours and cost.
pub fn held_gpus(gpus: i64, kueue: bool, demand: Demand, attempts: &[AttemptView]) -> i64 {
    let suspended_by_kueue = demand == Demand::Start || attempts.last().is_some_and(|a| a.state == AttemptState::Queued);
    if kueue && suspended_by_kueue { 0 } else { gpus }
}

/// The job as its budget's ledger sees it.
pub fn budget_claim<'a>(tj: &'a TrainingJob, gpus: i64, estimated_gpu_hours: f64, cost: Option<&CostStatus>) -> Claim<'a> {
    Claim {
        estimated_gpu_hours,
        name: tj.metadata.name.as_deref().unwrap_or_default(),
        uid: tj.metadata.uid.as_deref().unwrap_or_default(),
        gpus: i32::try_from(gpus).unwrap_or(i32::MAX),
        gpu_type: &tj.spec.resources.gpu_type,
        gpu_hours: cost.map_or(0.0, |c| c.gpu_hours),
        cost: cost.map_or(0.0, |c| c.cost),
        kind: HolderKind::TrainingJob,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_kueue_holds_suspended_holds_no_gpus_in_its_budget() {
        let view = |state| vec![AttemptView { attempt: 1, state, started: None, trouble: None, billed: Default::default() }];
        assert_eq!(held_gpus(4, true, Demand::Start, &[]), 0, "admitted by Kueue, not by the budget's maxGpus");
        assert_eq!(held_gpus(4, true, Demand::Hold, &view(AttemptState::Queued)), 0, "suspended by Kueue");
        assert_eq!(held_gpus(4, true, Demand::Hold, &view(AttemptState::Running)), 4, "running: its pods hold them");
        assert_eq!(held_gpus(4, false, Demand::Start, &[]), 4);
        assert_eq!(held_gpus(4, false, Demand::Hold, &view(AttemptState::Queued)), 4);
    }
    use crate::training_job::observe::{FailureKind, StopReason};
    use crate::training_job::plan::plan;
    use crate::training_job::validate::{tests::training_job, validate};
    use k8s_openapi::api::core::v1::PersistentVolumeClaimSpec;

    fn planned(stages: i32, max_gpus: Option<i32>, gpus_per_pod: i32, claim: Option<&str>) -> PlannedJob {
        let mut job = training_job(stages);
        job.spec.budget.max_gpus = max_gpus;
        job.spec.parallelism.gpus_per_pod = gpus_per_pod;
        job.spec.checkpoint.claim_name = claim.map(str::to_string);
        let settings = Settings::default();
        plan(&validate(&job, &settings).unwrap(), &settings.plan_options).unwrap()
    }

    fn pvc(modes: &[&str]) -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            spec: Some(PersistentVolumeClaimSpec { access_modes: Some(modes.iter().map(|m| m.to_string()).collect()), ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn gpus_within_both_caps_are_admitted() {
        let s = Settings::default();
        assert_eq!(admit(&planned(4, None, 1, None), &s, None), Ok(()));
        assert_eq!(admit(&planned(2, Some(2), 1, None), &s, None), Ok(()));
    }

    #[test]
    fn the_operator_ceiling_defaults_to_four() {
        let e = admit(&planned(8, None, 1, None), &Settings::default(), None).unwrap_err();
        assert_eq!(e.permanent_reason(), Some("GpuLimitExceeded"));
        assert_eq!(
            e.to_string(),
            "the job needs 8 GPUs (8 pipeline stages), above the operator's limit of 4 GPUs per job (its --max-gpus-per-job setting): lower spec.parallelism.pipelineStages"
        );
        // a job's own maxGpus cannot lift the operator's ceiling
        assert!(admit(&planned(8, Some(8), 1, None), &Settings::default(), None).is_err());
        let wide = Settings { max_gpus_per_job: 8, ..Settings::default() };
        assert_eq!(admit(&planned(8, None, 1, None), &wide, None), Ok(()));
    }

    #[test]
    fn the_jobs_own_max_gpus_applies() {
        let e = admit(&planned(4, Some(2), 1, None), &Settings::default(), None).unwrap_err();
        assert!(e.to_string().contains("budget.maxGpus of 2"), "{e}");
        assert!(e.to_string().contains("raise spec.budget.maxGpus"), "{e}");
    }

    #[test]
    fn only_a_job_without_a_live_attempt_is_gated() {
        let view = |attempt, state| AttemptView { attempt, state, started: None, trouble: None, billed: Default::default() };
        let failed = AttemptState::Failed { kind: FailureKind::Failed, message: String::new() };
        let cases = [
            ("never started", vec![], true),
            ("attempt 1 running", vec![view(1, AttemptState::Running)], false),
            ("attempt 1 starting", vec![view(1, AttemptState::Starting)], false),
            ("attempt 1 queued by Kueue", vec![view(1, AttemptState::Queued)], false),
            ("attempt 1 stopping", vec![view(1, AttemptState::Stopping(None))], false),
            ("attempt 1 failed: the next one starts", vec![view(1, failed.clone())], true),
            ("attempt 2 running after a failure", vec![view(1, failed), view(2, AttemptState::Running)], false),
            ("succeeded", vec![view(1, AttemptState::Succeeded { at: None })], true),
        ];
        for (what, attempts, gated) in cases {
            assert_eq!(gates(&attempts), gated, "{what}");
        }
    }

    #[test]
    fn several_pods_need_a_shared_checkpoint_claim() {
        let s = Settings::default();
        let two_pods = planned(2, None, 1, Some("ckpt"));
        assert_eq!(claim_to_check(&two_pods), Some("ckpt"));
        let e = admit(&two_pods, &s, Some(&pvc(&["ReadWriteOnce"]))).unwrap_err();
        assert_eq!(e.permanent_reason(), Some("CheckpointNotShared"));
        assert!(e.to_string().contains("ReadWriteMany"));
        let e = admit(&two_pods, &s, None).unwrap_err();
        assert_eq!(e.permanent_reason(), None, "a missing claim is waited for");
        assert_eq!(admit(&two_pods, &s, Some(&pvc(&["ReadWriteMany"]))), Ok(()));
        // one pod holding both stages needs no sharing
        let one_pod = planned(2, None, 2, Some("ckpt"));
        assert_eq!(claim_to_check(&one_pod), None);
        assert_eq!(admit(&one_pod, &s, None), Ok(()));
    }

    fn decision(phase: Phase, action: Action) -> Decision {
        Decision {
            action,
            phase,
            reason: "R",
            message: String::new(),
            stalled: false,
            attempt: 1,
            restarts: 0,
            succeeded_at: None,
            requeue_after: None,
        }
    }

    fn attempt(state: AttemptState) -> Vec<AttemptView> {
        vec![AttemptView { attempt: 1, state, started: None, trouble: None, billed: Default::default() }]
    }

    /// What each step of the lifecycle asks of the budget.
    #[test]
    fn demand_table() {
        use AttemptState::*;
        let failed = |kind| Failed { kind, message: String::new() };
        let cases: Vec<(&str, Decision, Vec<AttemptView>, Demand)> = vec![
            ("first attempt to create", decision(Phase::Pending, Action::Create(1)), vec![], Demand::Start),
            ("suspended before it started", decision(Phase::Suspended, Action::Nothing), vec![], Demand::Release),
            ("starting", decision(Phase::Pending, Action::Nothing), attempt(Starting), Demand::Hold),
            ("running", decision(Phase::Running, Action::Nothing), attempt(Running), Demand::Hold),
            ("queued by Kueue", decision(Phase::Queued, Action::Nothing), attempt(Queued), Demand::Hold),
            (
                "suspending: pods still stopping",
                decision(Phase::Suspended, Action::Nothing),
                attempt(Stopping(Some(StopReason::Suspended))),
                Demand::Hold,
            ),
            ("suspended, pods gone", decision(Phase::Suspended, Action::Nothing), attempt(failed(FailureKind::Suspended)), Demand::Release),
            ("resumed", decision(Phase::Pending, Action::Create(2)), attempt(failed(FailureKind::Suspended)), Demand::Start),
            ("restarting after a failure", decision(Phase::Pending, Action::Create(2)), attempt(failed(FailureKind::Failed)), Demand::Start),
            ("succeeded", decision(Phase::Succeeded, Action::Nothing), attempt(Succeeded { at: None }), Demand::Release),
            ("failed", decision(Phase::Failed, Action::Nothing), attempt(failed(FailureKind::Failed)), Demand::Release),
        ];
        for (what, d, attempts, want) in cases {
            assert_eq!(demand(&d, &attempts), want, "{what}");
        }
    }
}
