use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;

use frugal_api::admission::budget::Wait;
use frugal_api::v1alpha1::BudgetPeriod;

use super::*;
use crate::admission_check::kueue::{PodSet, WorkloadStatus};

fn t(secs: i64) -> Time {
    Time(Timestamp::from_second(1_800_000_000 + secs).unwrap())
}

fn workload(sets: &[(i32, i32)], conditions: &[&str], check: Option<&str>) -> Workload {
    let pod_sets = sets
        .iter()
        .map(|(count, gpus)| PodSet {
            name: "main".into(),
            count: *count,
            template: PodTemplateSpec {
                spec: Some(PodSpec {
                    containers: vec![Container {
                        resources: Some(ResourceRequirements {
                            requests: Some([("nvidia.com/gpu".to_string(), Quantity(gpus.to_string()))].into()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            },
        })
        .collect();
    Workload {
        spec: crate::admission_check::kueue::WorkloadSpec { pod_sets, ..Default::default() },
        status: Some(WorkloadStatus {
            conditions: conditions
                .iter()
                .map(|c| Condition {
                    type_: c.to_string(),
                    status: "True".into(),
                    reason: "Test".into(),
                    message: String::new(),
                    last_transition_time: t(0),
                    observed_generation: None,
                })
                .collect(),
            admission_checks: check
                .map(|state| AdmissionCheckState { name: "budget".into(), state: state.into(), ..Default::default() })
                .into_iter()
                .collect(),
        }),
        ..Default::default()
    }
}

#[test]
fn the_namespace_default_binds_whatever_a_label_says_then_the_local_queue_then_the_workload() {
    let s = |v: &str| Some(v.to_string());
    assert_eq!(binding(s("team"), s("queue"), s("mine")), Some(("team".into(), BoundBy::NamespaceDefault)));
    assert_eq!(binding(None, s("queue"), s("mine")), Some(("queue".into(), BoundBy::LocalQueue)));
    assert_eq!(binding(None, None, s("mine")), Some(("mine".into(), BoundBy::Workload)));
    assert_eq!(binding(None, None, None), None);
}

#[test]
fn gpus_are_each_pod_sets_count_times_its_containers_gpus() {
    assert_eq!(gpus(&workload(&[(2, 4), (1, 1)], &[], None), "nvidia.com/gpu"), 9);
    assert_eq!(gpus(&workload(&[(3, 0)], &[], None), "nvidia.com/gpu"), 0);
    assert_eq!(look_ahead_gpu_hours(4, Some(1800)), 2.0);
    assert_eq!(look_ahead_gpu_hours(4, None), 0.0, "no maximum execution time: nothing to look ahead at");
}

#[test]
fn a_workload_is_decided_once_kueue_reserved_quota_and_asks_for_this_check() {
    assert_eq!(stage(&workload(&[], &["QuotaReserved"], Some("Pending")), "budget"), Stage::Deciding);
    assert_eq!(stage(&workload(&[], &[], Some("Pending")), "budget"), Stage::Waiting, "no quota yet");
    assert_eq!(stage(&workload(&[], &["QuotaReserved", "Admitted"], Some("Ready")), "budget"), Stage::Admitted);
    assert_eq!(stage(&workload(&[], &["QuotaReserved"], Some("Ready")), "budget"), Stage::Admitted, "Ready, Kueue not yet done admitting it");
    assert_eq!(stage(&workload(&[], &["QuotaReserved", "Admitted", "Finished"], Some("Ready")), "budget"), Stage::Finished);
    assert_eq!(stage(&workload(&[], &["QuotaReserved"], Some("Retry")), "budget"), Stage::Waiting, "already answered");
}

#[test]
fn demands_follow_the_stage_and_stopping_pods_are_held_until_they_end() {
    assert_eq!(demand(Stage::Deciding, false, false), Some(Demand::Start));
    assert_eq!(demand(Stage::Admitted, true, true), Some(Demand::Hold));
    assert_eq!(demand(Stage::Waiting, true, true), Some(Demand::Hold), "evicted, pods stopping: billed to their end");
    assert_eq!(demand(Stage::Waiting, true, false), Some(Demand::Release));
    assert_eq!(demand(Stage::Finished, true, false), Some(Demand::Release));
    assert_eq!(demand(Stage::Waiting, false, false), None);
}

#[test]
fn the_ledgers_answer_becomes_ready_retry_or_rejected() {
    let mut b: TrainingBudget = serde_json::from_value(serde_json::json!({
        "apiVersion": "frugal.dev/v1alpha1", "kind": "TrainingBudget",
        "metadata": {"name": "team", "namespace": "ml", "creationTimestamp": t(0)},
        "spec": {"maxGpus": 8, "gpuHours": 4, "period": "Day"},
        "status": {"gpuHoursSpent": 4.01, "periodStart": t(0)},
    }))
    .unwrap();
    let now = t(3600);
    let wait = Wait { reason: "BudgetExhausted", message: "TrainingBudget \"team\" has 8 of its 8 GPUs held".into() };
    assert_eq!(verdict(Stage::Deciding, Ok(Admission::Go), &b, &now), Some(Verdict::Ready));
    assert_eq!(verdict(Stage::Deciding, Ok(Admission::Wait(wait.clone())), &b, &now), Some(Verdict::Retry(wait.message.clone())));
    let Some(Verdict::Retry(m)) = verdict(Stage::Admitted, Ok(Admission::SpentOut(wait.clone())), &b, &now) else { panic!("evicted") };
    assert!(m.contains("has spent 4.01 of its 4 GPU-hours") && m.contains("Kueue evicts the workload") && m.contains("2027-01-16T08:00:00Z"), "{m}");
    assert_eq!(verdict(Stage::Waiting, Ok(Admission::Go), &b, &now), None, "a workload not being decided keeps what it was told");
    b.status = None;
    let never = TooSmall::Period {
        budget: "team".into(),
        need: 8.0,
        limit: 4.0,
        unit: "GPU-hours".into(),
        field: "spec.gpuHours",
        period: BudgetPeriod::Day,
    };
    let Some(Verdict::Rejected(m)) = verdict(Stage::Deciding, Err(never), &b, &now) else { panic!("rejected") };
    assert!(m.contains("8.00 GPU-hours") && m.contains("max-exec-time-seconds") && m.contains("\"team\""), "{m}");
}

#[test]
fn an_entry_is_written_only_when_it_changes_and_keeps_its_transition_time() {
    let current = AdmissionCheckState {
        name: "budget".into(),
        state: "Ready".into(),
        message: "ok".into(),
        last_transition_time: Some(t(0)),
        requeue_after_seconds: None,
    };
    assert_eq!(entry(Some(&current), "budget", "Ready", "ok", Some(15), &t(10)), None, "no write at rest");
    let moved = entry(Some(&current), "budget", "Ready", "still ok", Some(15), &t(10)).unwrap();
    assert_eq!(moved.last_transition_time, Some(t(0)));
    let retry = entry(Some(&current), "budget", "Retry", "spent", Some(15), &t(10)).unwrap();
    assert_eq!((retry.last_transition_time, retry.requeue_after_seconds), (Some(t(10)), Some(15)));
}

#[test]
fn pods_are_billed_gpus_times_scheduled_to_terminated_and_earlier_admissions_pods_are_not() {
    let pod = |name: &str, gpus: i32, from: i64, until: Option<i64>| PodSeen {
        name: name.into(),
        attempt: 0,
        gpus,
        node: None,
        scheduled: Some(t(from)),
        terminated: until.map(t),
    };
    let pods = vec![
        (pod("old", 4, 0, Some(3600)), t(0)),
        (pod("a", 2, 3700, Some(3700 + 1800)), t(3700)),
        (pod("b", 2, 3700, None), t(3700)),
        (PodSeen { scheduled: None, ..pod("unscheduled", 8, 0, None) }, t(3700)),
    ];
    let (hours, cost) = bill(&pods, &t(3650), &t(3700 + 3600), |_| 2.0);
    assert!((hours - (1.0 + 2.0)).abs() < 1e-9, "{hours}");
    assert!((cost - 6.0).abs() < 1e-9, "{cost}");
    // a running pod is billed to the whole second: never past the end the API server will show
    let later = Time(Timestamp::from_second(1_800_000_000 + 3700 + 3600).unwrap() + std::time::Duration::from_millis(900));
    assert_eq!(bill(&pods, &t(3650), &later, |_| 2.0), (hours, cost));
}
