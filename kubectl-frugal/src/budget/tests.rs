use super::*;
use frugal_api::v1alpha1::{ModelPreset, PlanStatus, TrainingBudgetStatus, TrainingJobStatus};

fn t(secs: i64) -> Time {
    Time(Timestamp::from_second(1_700_000_000 + secs).unwrap())
}

fn training_budget(name: &str, default: bool) -> TrainingBudget {
    let mut b = TrainingBudget::test(4).name(name).namespace("ml").namespace_default(default).build();
    b.metadata.creation_timestamp = Some(t(0));
    b.status = Some(TrainingBudgetStatus {
        gpus_in_use: 4,
        gpu_hours_spent: 1.5,
        cost_spent: 3.75,
        period_start: Some(t(0)),
        jobs: vec![BudgetHolder {
            name: "first".into(),
            uid: "u1".into(),
            gpus: 4,
            gpu_hours_counted: 1.5,
            cost_counted: 3.75,
            admitted_at: Some(t(10)),
            estimated_gpu_hours: 2.0,
            estimated_cost: 5.0,
            kind: frugal_api::v1alpha1::HolderKind::TrainingJob,
        }],
        conditions: vec![Condition {
            type_: "Exhausted".into(),
            status: "True".into(),
            reason: "AllGpusInUse".into(),
            message: "4 of its 4 GPUs (spec.maxGpus) are held".into(),
            last_transition_time: t(10),
            observed_generation: Some(1),
        }],
        ..Default::default()
    });
    b
}

/// A job in `ml` naming `budget` (if any), Queued with `reason` (if any).
fn job(name: &str, budget: Option<&str>, queued: Option<&str>) -> TrainingJob {
    let status = match queued {
        None => TrainingJobStatus { phase: Some(Phase::Running), ..Default::default() },
        Some(reason) => TrainingJobStatus {
            phase: Some(Phase::Queued),
            plan: Some(PlanStatus { gpus: 4, pods: 1, currency: "USD".into(), ..Default::default() }),
            conditions: vec![Condition {
                type_: "Queued".into(),
                status: "True".into(),
                reason: reason.into(),
                message: "waits for team".into(),
                last_transition_time: Time("2026-12-02T03:00:00Z".parse().unwrap()),
                observed_generation: None,
            }],
            ..Default::default()
        },
    };
    let job = TrainingJob::test().name(name).namespace("ml").preset(ModelPreset::Tiny);
    job.with(|s| s.budget.budget_ref = budget.map(Into::into)).status(status).build()
}

#[test]
fn the_ledger_lists_holders_and_the_jobs_waiting_for_this_budget() {
    let team = training_budget("team", false);
    let jobs = [
        job("first", Some("team"), None),
        job("second", Some("team"), Some("BudgetExhausted")),
        job("elsewhere", Some("other"), Some("BudgetNotFound")),
        job("unbudgeted", None, Some("Queued")),
    ];
    let l = ledger(&team, std::slice::from_ref(&team), &jobs, &t(60));
    assert_eq!((l.name.as_str(), l.namespace_default, l.gpus_in_use), ("team", false, 4));
    assert_eq!((l.gpu_hours_spent, l.cost_spent), (1.5, 3.75));
    assert_eq!(l.holders.iter().map(|h| h.name.as_str()).collect::<Vec<_>>(), ["first"]);
    assert_eq!(l.waiting, [Waiter { name: "second".into(), gpus: Some(4), reason: "BudgetExhausted".into(), message: "waits for team".into() }]);
    assert_eq!(l.exhausted.as_ref().map(|c| c.reason.as_str()), Some("AllGpusInUse"));
    assert_eq!(l.next_period, t(86_400));
    let out = text(&[l], false);
    assert!(
        out.starts_with("TrainingBudget ml/team\n  limits     4 GPUs at once (spec.maxGpus), 100 GPU-hours per Day, admission LookAhead\n"),
        "{out}"
    );
    assert!(out.contains("  spent      1.50 of 100 GPU-hours, 3.75 USD (no limit)\n"), "{out}");
    assert!(out.contains("  Exhausted  True (AllGpusInUse): 4 of its 4 GPUs (spec.maxGpus) are held\n"), "{out}");
    assert!(out.contains("    job    GPUs  GPU-h counted  cost counted  estimated GPU-h  admitted at\n    first  4     1.50           3.75 USD      2.00             2023-11-14T22:13:30Z\n"), "{out}");
    assert!(out.contains("  waiting:\n    second (4 GPUs): BudgetExhausted: waits for team\n"), "{out}");
}

#[test]
fn a_default_budget_counts_every_job_of_its_namespace() {
    let shared = training_budget("shared", true);
    let jobs = [job("named-none", None, Some("BudgetExhausted")), job("named-other", Some("team"), Some("BudgetExhausted"))];
    let l = ledger(&shared, std::slice::from_ref(&shared), &jobs, &t(60));
    assert!(l.namespace_default);
    let waiting: Vec<&str> = l.waiting.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(waiting, ["named-none", "named-other"], "a live job naming another budget is counted in the default");
    assert!(text(&[l], false).starts_with("TrainingBudget ml/shared (the namespace's default)\n"));
}

#[test]
fn a_new_period_shows_nothing_spent_yet() {
    let team = training_budget("team", false);
    let l = ledger(&team, std::slice::from_ref(&team), &[], &t(86_400 + 5));
    assert_eq!((l.gpu_hours_spent, l.cost_spent), (0.0, 0.0));
    assert_eq!(l.period_start, Some(t(86_400)));
    assert!(text(&[l], false).contains("  waiting: none\n"));
}

#[test]
fn wide_names_and_yaml_of_the_ledgers() {
    let team = training_budget("team", false);
    let l = ledger(&team, std::slice::from_ref(&team), &[], &t(60));
    let wide = render(std::slice::from_ref(&l), BudgetFormat::Wide).unwrap();
    assert!(wide.contains("  admitted at           estimated cost  uid\n"), "{wide}");
    assert!(wide.contains("  2023-11-14T22:13:30Z  5.00 USD        u1\n"), "{wide}");
    assert!(!render(std::slice::from_ref(&l), BudgetFormat::Text).unwrap().contains("uid"));
    assert_eq!(render(std::slice::from_ref(&l), BudgetFormat::Name).unwrap(), "trainingbudget.frugal.dev/team\n");
    let json: serde_json::Value = serde_json::from_str(&render(std::slice::from_ref(&l), BudgetFormat::Json).unwrap()).unwrap();
    let yaml: serde_json::Value = serde_saphyr::from_str(&render(std::slice::from_ref(&l), BudgetFormat::Yaml).unwrap()).unwrap();
    assert_eq!(yaml, json);
    assert_eq!(yaml[0]["holders"][0]["name"], "first");
}

#[test]
fn a_kueue_workloads_entry_is_listed_beside_the_training_jobs() {
    let mut team = training_budget("team", false);
    let status = team.status.as_mut().unwrap();
    status.jobs.push(BudgetHolder {
        name: "job-plain-1a2b3".into(),
        uid: "u2".into(),
        gpus: 2,
        kind: frugal_api::v1alpha1::HolderKind::Workload,
        ..Default::default()
    });
    let l = ledger(&team, std::slice::from_ref(&team), &[], &t(60));
    let out = text(&[l], false);
    assert!(out.contains("    first ") && out.contains("    workload/job-plain-1a2b3 "), "{out}");
}
