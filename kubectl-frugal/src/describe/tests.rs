use super::*;
use frugal_api::v1alpha1::{CostStatus, ModelPreset, Phase, PlanStatus, PodCost, ProgressStatus, TrainingBudgetStatus, TrainingJobStatus};

fn t(secs: i64) -> Time {
    Time(Timestamp::from_second(1_700_000_000 + secs).unwrap())
}

fn condition(type_: &str, reason: &str, message: &str, at: i64) -> Condition {
    Condition {
        type_: type_.into(),
        status: "True".into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: t(at),
        observed_generation: Some(1),
    }
}

fn pod_cost(name: &str, attempt: i32, gpu_hours: f64, ended: bool) -> PodCost {
    PodCost {
        name: name.into(),
        attempt,
        gpus: 2,
        gpu_type: "nvidia-h100-80gb".into(),
        priced_from: PricedFrom::NodeLabel,
        price_per_gpu_hour: 2.5,
        gpu_hours,
        cost: gpu_hours * 2.5,
        from: t(0),
        until: t(3600),
        ended,
    }
}

/// A 2-GPU job in `ml` naming `team`, Running its second attempt after a restart.
fn running() -> TrainingJob {
    let status = TrainingJobStatus {
        phase: Some(Phase::Running),
        attempt: Some(2),
        restarts: Some(1),
        start_time: Some(t(0)),
        plan: Some(PlanStatus {
            parameters: 60000,
            active_parameters: 50000,
            flops_per_token: 300000.0,
            tokens: 6400,
            steps: 100,
            total_flops: 1.92e9,
            gpus: 2,
            pods: 2,
            replicas: 1,
            estimated_gpu_hours: 0.5,
            estimated_cost: 1.25,
            currency: "USD".into(),
            warnings: vec!["the pipeline idles".into()],
            ..Default::default()
        }),
        progress: Some(ProgressStatus { step: 40, total_steps: 100, tokens: 2560, loss: Some(3.25), ..Default::default() }),
        cost: Some(CostStatus {
            gpu_hours: 3.0,
            cost: 7.5,
            currency: "USD".into(),
            pods: vec![pod_cost("lm-a1-0-x", 1, 2.0, true), pod_cost("lm-a2-0-y", 2, 1.0, false)],
            ..Default::default()
        }),
        // written out of order: the story puts them in the order they happened
        conditions: vec![
            condition("Ready", "Running", "every pod runs", 300),
            condition("Restarted", "PodFailed", "pod lm-a1-0-x failed: OOMKilled", 200),
            condition("Admitted", "Admitted", "TrainingBudget \"team\" admitted it", 100),
        ],
        ..Default::default()
    };
    let job = TrainingJob::test().name("lm").namespace("ml").preset(ModelPreset::Tiny);
    job.with(|s| s.budget.budget_ref = Some("team".into())).status(status).build()
}

fn team(default: bool) -> TrainingBudget {
    let mut b = TrainingBudget::test(4).name("team").namespace("ml").namespace_default(default).build();
    b.metadata.creation_timestamp = Some(t(0));
    b.status = Some(TrainingBudgetStatus { gpu_hours_spent: 3.0, cost_spent: 7.5, period_start: Some(t(0)), ..Default::default() });
    b
}

#[test]
fn the_conditions_tell_their_story_oldest_first() {
    let tj = running();
    let order: Vec<&str> = story(&tj.status.as_ref().unwrap().conditions).iter().map(|c| c.type_.as_str()).collect();
    assert_eq!(order, ["Admitted", "Restarted", "Ready"]);
}

#[test]
fn describe_tells_the_plan_the_bill_per_pod_the_conditions_and_the_budget() {
    let tj = running();
    let budgets = [team(false)];
    let view = budget_view(&tj, &budgets, std::slice::from_ref(&tj), &t(60));
    assert!(matches!(&view, BudgetView::Ledger(l) if l.name == "team"), "{view:?}");
    let out = text(&tj, &view);
    assert!(out.starts_with("Name:       lm\nNamespace:  ml\nPhase:      Running, attempt 2 (1 restart)\n"), "{out}");
    assert!(out.contains("Budget:     team (spec.budget.budgetRef)\n"), "{out}");
    assert!(out.contains("Plan:\n  parameters:  60.0K total, 50.0K active\n"), "{out}");
    assert!(out.contains("  GPUs:        2 × nvidia-h100-80gb in 2 pods (1 replica)"), "{out}");
    assert!(out.contains("  warning: the pipeline idles\n"), "{out}");
    assert!(out.contains("Progress:  step 40 of 100, 2560 tokens, loss 3.2500\n"), "{out}");
    assert!(out.contains("Bill:\n  3.00 GPU-hours, 7.50 USD in all\n  pod        attempt  GPUs  priced as"), "{out}");
    assert!(
        out.contains(
            "  lm-a1-0-x  1        2     nvidia-h100-80gb (node label)  2.50 USD      2.00   5.00 USD  2023-11-14T22:13:20Z  2023-11-14T23:13:20Z\n"
        ),
        "{out}"
    );
    assert!(out.contains("2023-11-14T23:13:20Z (running)\n"), "the pod still billing: {out}");
    let conditions = out.split_once("Conditions:\n").unwrap().1;
    let lines: Vec<&str> = conditions.lines().take(4).collect();
    assert!(
        lines[0].starts_with("  since") && lines[1].contains("Admitted") && lines[2].contains("PodFailed  pod lm-a1-0-x failed: OOMKilled"),
        "{out}"
    );
    assert!(lines[3].contains("Ready"), "{out}");
    assert!(out.contains("TrainingBudget ml/team:\n  limits "), "{out}");
    assert!(out.contains("  spent   3.00 of 100 GPU-hours, 7.50 USD (no limit)\n"), "{out}");
}

#[test]
fn the_budget_is_the_namespaces_default_or_the_one_named() {
    let tj = running();
    let mut shared = team(true);
    shared.metadata.name = Some("shared".into());
    // a default budget counts every job of its namespace, whatever it names
    let view = budget_view(&tj, &[team(false), shared], &[], &t(60));
    assert!(matches!(&view, BudgetView::Ledger(l) if l.name == "shared" && l.namespace_default), "{view:?}");
    assert_eq!(budget_view(&tj, &[], &[], &t(60)), BudgetView::NotFound("team".into()));
    assert!(
        text(&tj, &BudgetView::NotFound("team".into())).ends_with("TrainingBudget: \"team\" does not exist: the job waits, Queued, until it does\n")
    );
    let mut unbudgeted = running();
    unbudgeted.spec.budget.budget_ref = None;
    assert_eq!(budget_view(&unbudgeted, &[team(false)], &[], &t(60)), BudgetView::None);
}

#[test]
fn a_new_job_says_what_it_does_not_have_yet() {
    let fresh = TrainingJob::test().name("new").namespace("ml").preset(ModelPreset::Tiny).build();
    let out = text(&fresh, &BudgetView::None);
    assert!(out.contains("Phase:      - (the operator has not seen it yet)\n"), "{out}");
    for part in ["Plan:\n  none yet", "Bill:\n  nothing billed yet\n", "Conditions:\n  none yet\n", "TrainingBudget: none"] {
        assert!(out.contains(part), "no {part:?}: {out}");
    }
}
