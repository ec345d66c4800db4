use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use frugal_api::TrainingBudget;
use frugal_api::v1alpha1::{BudgetAdmission, BudgetHolder, GpuPrice, HolderKind, TrainingBudgetStatus};

use super::*;

const CREATED: i64 = 1_700_000_000;
const DAY: i64 = 86_400;

fn t(secs: i64) -> Time {
    Time(Timestamp::from_second(CREATED + secs).unwrap())
}

/// A budget created at `t(0)`, with `holders` as (name, gpus) and what it spent this period.
fn budget(max_gpus: i32, holders: &[(&str, i32)], spent_hours: f64) -> TrainingBudget {
    let mut b: TrainingBudget = serde_saphyr::from_str(&format!(
        "apiVersion: frugal.dev/v1alpha1\nkind: TrainingBudget\nmetadata: {{name: team, namespace: ml, generation: 1}}\nspec: {{maxGpus: {max_gpus}, gpuHours: 100, maxCost: 1000, period: Day}}\n"
    ))
    .unwrap();
    b.metadata.creation_timestamp = Some(t(0));
    b.status = Some(TrainingBudgetStatus {
        gpus_in_use: holders.iter().map(|h| h.1).sum(),
        gpu_hours_spent: spent_hours,
        period_start: Some(t(0)),
        jobs: holders.iter().map(|(n, g)| BudgetHolder { name: n.to_string(), uid: format!("uid-{n}"), gpus: *g, ..Default::default() }).collect(),
        ..Default::default()
    });
    b
}

fn claim(name: &str, gpus: i32, gpu_hours: f64) -> Claim<'_> {
    Claim {
        name,
        uid: Box::leak(format!("uid-{name}").into_boxed_str()),
        gpus,
        gpu_type: "nvidia-h100-80gb",
        gpu_hours,
        cost: gpu_hours * 2.5,
        estimated_gpu_hours: 0.0,
        kind: HolderKind::TrainingJob,
    }
}

fn written(v: Verdict) -> TrainingBudgetStatus {
    match v {
        Verdict::Write(s) => *s,
        other => panic!("expected a write, got {other:?}"),
    }
}

fn holders(s: &TrainingBudgetStatus) -> Vec<(String, i32)> {
    s.jobs.iter().map(|h| (h.name.clone(), h.gpus)).collect()
}

/// Admission against maxGpus: (held, the job's GPUs, demand) → admitted, waits or refused.
#[test]
fn admission_table() {
    #[derive(Debug, PartialEq)]
    enum Want {
        Admitted(i32),
        Waits,
        Refused,
        Unchanged,
    }
    use Want::*;
    type Case<'a> = (&'a str, Vec<(&'a str, i32)>, i32, Demand, Want);
    let cases: Vec<Case> = vec![
        ("empty budget, fits", vec![], 4, Demand::Start, Admitted(4)),
        ("fits beside another", vec![("a", 2)], 2, Demand::Start, Admitted(4)),
        ("one GPU too many", vec![("a", 2)], 3, Demand::Start, Waits),
        ("full", vec![("a", 4)], 4, Demand::Start, Waits),
        ("alone above maxGpus", vec![], 8, Demand::Start, Refused),
        ("above maxGpus with others there too", vec![("a", 4)], 8, Demand::Start, Refused),
        ("already held: a restart is not admitted again", vec![("a", 4), ("lm", 4)], 4, Demand::Start, Unchanged),
        ("a live attempt is recorded past the limit", vec![("a", 4)], 4, Demand::Hold, Admitted(8)),
        ("held and live", vec![("lm", 4)], 4, Demand::Hold, Unchanged),
        ("released", vec![("a", 2), ("lm", 2)], 2, Demand::Release, Admitted(2)),
        ("nothing to release", vec![("a", 2)], 2, Demand::Release, Unchanged),
    ];
    for (what, held, gpus, demand, want) in cases {
        let mut b = budget(4, &held, 0.0);
        // a ledger that already says the rest, so that only the job's own entry can change it
        b.status = match settle_unchanged(&b) {
            Verdict::Write(s) => Some(*s),
            _ => b.status,
        };
        let got = match settle(&b, &claim("lm", gpus, 0.0), demand, &t(60)) {
            Verdict::Write(s) => Admitted(s.gpus_in_use),
            Verdict::Wait(w) => {
                assert_eq!(w.reason, "BudgetExhausted", "{what}");
                Waits
            }
            Verdict::Refuse(e) => {
                assert_eq!(crate::training_job::admit::AdmitError::from(e).permanent_reason(), Some("BudgetTooSmall"), "{what}");
                Refused
            }
            Verdict::Unchanged => Unchanged,
            Verdict::Release(..) => panic!("{what}: nothing is spent here"),
        };
        assert_eq!(got, want, "{what}");
    }
}

/// A job that holds the budget and asks to start again (a restart, or the resume after its
/// budget stopped it) while the period is spent gives its entry back and waits, so that a raised
/// limit or the next period wakes it; a live attempt is still recorded.
#[test]
fn a_restart_in_a_spent_period_gives_the_entry_back_and_waits() {
    let b = budget(4, &[("a", 2), ("lm", 2)], 100.0);
    let Verdict::Release(status, w) = settle(&b, &claim("lm", 2, 0.0), Demand::Start, &t(60)) else { panic!("expected a release") };
    assert_eq!(holders(&status), vec![("a".to_string(), 2)]);
    assert_eq!(w.reason, "BudgetExhausted");
    assert!(w.message.contains("has spent 100.00 of its 100 GPU-hours (spec.gpuHours) this Day") && w.message.contains("raised"), "{}", w.message);
    // a live attempt holds its GPUs whatever is spent
    assert!(!matches!(settle(&b, &claim("lm", 2, 0.0), Demand::Hold, &t(60)), Verdict::Release(..) | Verdict::Wait(_)));
}

/// What the budget's own pass writes for a ledger that already matches its jobs.
fn settle_unchanged(b: &TrainingBudget) -> Verdict {
    let status = b.status.clone().unwrap_or_default();
    let jobs: Vec<(String, String)> = status.jobs.iter().map(|h| (h.name.clone(), h.uid.clone())).collect();
    refresh(b, |name| jobs.iter().find(|(n, _)| n == name).map(|(_, uid)| holder(uid, 0.0)), no_pods, |_| false, &t(60))
}

fn holder(uid: &str, gpu_hours: f64) -> Holder {
    Holder { uid: uid.into(), names_budget: true, finished: false, gpu_hours, cost: gpu_hours * 2.5 }
}

#[test]
fn the_messages_name_the_budget_what_is_held_and_the_fix() {
    let full = budget(4, &[("a", 4)], 0.0);
    let Verdict::Wait(w) = settle(&full, &claim("lm", 4, 0.0), Demand::Start, &t(60)) else { panic!() };
    assert_eq!(
        w.message,
        "TrainingBudget \"team\" has 4 of its 4 GPUs (spec.maxGpus) held by a (4); this job needs 4: it starts when enough of them finish, are suspended or are deleted, or raise the budget's spec.maxGpus"
    );
    let Verdict::Refuse(e) = settle(&full, &claim("big", 8, 0.0), Demand::Start, &t(60)) else { panic!() };
    assert_eq!(
        e.to_string(),
        "the job needs 8 GPUs, above the spec.maxGpus of 4 of TrainingBudget \"team\", so it could never be admitted: lower spec.parallelism.pipelineStages or spec.parallelism.dataParallel, raise the budget's spec.maxGpus, or name another budget in spec.budget.budgetRef"
    );
    let missing = not_found("team", "ml");
    assert_eq!(missing.reason, "BudgetNotFound");
    assert!(missing.message.contains("create it") && missing.message.contains("spec.budget.budgetRef"), "{}", missing.message);
}

#[test]
fn spent_gpu_hours_or_cost_make_new_jobs_wait_until_the_next_period() {
    let spent = budget(8, &[], 100.0);
    let Verdict::Wait(w) = settle(&spent, &claim("lm", 1, 0.0), Demand::Start, &t(3600)) else { panic!() };
    assert_eq!(w.reason, "BudgetExhausted");
    assert!(w.message.contains("spent 100.00 of its 100 GPU-hours (spec.gpuHours) this Day"), "{}", w.message);
    assert!(
        w.message.contains("next period begins at 2023-11-15T22:13:20Z") && w.message.contains("raise the budget's spec.gpuHours"),
        "{}",
        w.message
    );
    // the next day is a new period: nothing spent, the job starts
    let next_day = written(settle(&spent, &claim("lm", 1, 0.0), Demand::Start, &t(DAY + 5)));
    assert_eq!((next_day.gpu_hours_spent, next_day.period_start.clone()), (0.0, Some(t(DAY))));
    assert_eq!(holders(&next_day), vec![("lm".to_string(), 1)]);
    // cost: 400 H100-hours at the budget's price of 3.0 reach maxCost 1000
    let mut priced = budget(8, &[], 0.0);
    priced.spec.gpu_hours = None;
    priced.spec.prices = vec![GpuPrice { gpu_type: "nvidia-h100-80gb".into(), per_gpu_hour: 3.0 }];
    priced.status.as_mut().unwrap().cost_spent = 1200.0;
    let Verdict::Wait(w) = settle(&priced, &claim("lm", 1, 0.0), Demand::Start, &t(60)) else { panic!() };
    assert!(w.message.contains("1200.00 of its 1000 USD (spec.maxCost)") && w.message.contains("raise the budget's spec.maxCost"), "{}", w.message);
    // a job already holding GPUs goes on: exhaustion stops admissions, not running jobs
    let held = budget(8, &[("lm", 1)], 100.0);
    assert!(!matches!(settle(&held, &claim("lm", 1, 0.0), Demand::Hold, &t(60)), Verdict::Wait(_)));
}

#[test]
fn periods_follow_each_other_from_the_creation() {
    use frugal_api::v1alpha1::BudgetPeriod::*;
    let cases = [
        (Day, 0, 0),
        (Day, DAY - 1, 0),
        (Day, DAY, DAY),
        (Day, 3 * DAY + 7, 3 * DAY),
        (Week, 6 * DAY, 0),
        (Week, 8 * DAY, 7 * DAY),
        (Month, 29 * DAY, 0),
        (Month, 31 * DAY, 30 * DAY),
        (Month, -5, 0),
    ];
    for (period, now, start) in cases {
        assert_eq!(period_start(&t(0), period, &t(now)), t(start), "{period:?} at {now}");
    }
    assert_eq!(until_next_period(&t(0), Day, &t(DAY - 10)), Duration::from_secs(10));
}

#[test]
fn spending_is_counted_from_the_jobs_bills() {
    let b = budget(8, &[("a", 2)], 0.0);
    let billed = |gpu_hours: f64, cost: f64| Holder { cost, ..holder("uid-a", gpu_hours) };
    // a's pods were billed 3 GPU-hours costing 6.0 (the operator priced them): both counted
    let s = written(refresh(&b, |_| Some(billed(3.0, 6.0)), no_pods, |_| false, &t(60)));
    assert_eq!((s.gpu_hours_spent, s.cost_spent, s.jobs[0].gpu_hours_counted, s.jobs[0].cost_counted), (3.0, 6.0, 3.0, 6.0));
    // counted once: the same bill again adds nothing
    let mut b = b;
    b.status = Some(s);
    assert_eq!(refresh(&b, |_| Some(billed(3.0, 6.0)), no_pods, |_| false, &t(61)), Verdict::Unchanged);
    // its release counts the rest
    let released = written(settle(&b, &Claim { cost: 11.0, ..claim("a", 2, 5.0) }, Demand::Release, &t(62)));
    assert_eq!((released.gpu_hours_spent, released.cost_spent), (5.0, 11.0));
    assert!(released.jobs.is_empty());
    // an entry counted before costs were (cost_counted 0): its GPU-hours so far at the job's
    // average price, so that its earlier cost is not counted again
    let mut old = b.clone();
    old.status.as_mut().unwrap().jobs[0].cost_counted = 0.0;
    let s = written(refresh(&old, |_| Some(billed(6.0, 12.0)), no_pods, |_| false, &t(63)));
    assert_eq!((s.gpu_hours_spent, s.cost_spent), (6.0, 12.0));
    // a new period starts from nothing; what was counted before is not counted again
    b.status.as_mut().unwrap().gpu_hours_spent = 50.0;
    let s = written(refresh(&b, |_| Some(billed(4.0, 8.0)), no_pods, |_| false, &t(DAY + 1)));
    assert_eq!((s.gpu_hours_spent, s.cost_spent), (1.0, 2.0));
    assert_eq!(s.period_start, Some(t(DAY)));
}

#[test]
fn spending_alone_is_told_apart_from_changes_admission_needs_at_once() {
    let mut b = budget(8, &[("a", 2)], 0.0);
    // as the controller left it: summarized, the Exhausted condition set
    b.status = Some(written(refresh(&b, |_| Some(holder("uid-a", 1.0)), no_pods, |_| false, &t(30))));
    let current = b.status.clone().unwrap();
    // a report that only adds spending may wait for the next spending write
    let spent = written(refresh(&b, |_| Some(holder("uid-a", 3.0)), no_pods, |_| false, &t(60)));
    assert!(only_spending_changed(&current, &spent));
    // unchanged is not "only spending"
    assert!(!only_spending_changed(&current, &current));
    // a job gone (its GPUs released) must be written now, spending or not
    let released = written(refresh(&b, |_| None, no_pods, |_| false, &t(60)));
    assert!(!only_spending_changed(&current, &released));
    // so must the Exhausted condition turning on: 100 GPU-hours is the limit
    let over = written(refresh(&b, |_| Some(holder("uid-a", 120.0)), no_pods, |_| false, &t(60)));
    assert!(!only_spending_changed(&current, &over), "the Exhausted condition changed too");
}

#[test]
fn the_budgets_pass_releases_jobs_that_are_gone_finished_or_moved() {
    let b = budget(8, &[("deleted", 1), ("recreated", 1), ("done", 1), ("moved", 1), ("running", 1)], 0.0);
    let s = written(refresh(
        &b,
        |name| match name {
            "deleted" => None,
            "recreated" => Some(holder("another-uid", 0.0)),
            "done" => Some(Holder { finished: true, ..holder("uid-done", 0.0) }),
            "moved" => Some(Holder { names_budget: false, ..holder("uid-moved", 0.0) }),
            _ => Some(holder("uid-running", 0.0)),
        },
        no_pods,
        |_| false,
        &t(60),
    ));
    assert_eq!(holders(&s), vec![("running".to_string(), 1)]);
    assert_eq!(s.gpus_in_use, 1);
}

fn no_pods(_: &BudgetHolder) -> bool {
    false
}

#[test]
fn a_job_recreated_under_the_same_name_waits_until_the_old_ones_pods_are_gone() {
    let mut b = budget(4, &[("lm", 4)], 0.0);
    let mut again = claim("lm", 4, 0.0);
    again.uid = "new-uid";
    // the deleted job's entry stands while its pods may still run: the new one waits
    assert!(matches!(settle(&b, &again, Demand::Start, &t(60)), Verdict::Wait(_)));
    // the budget's pass keeps the entry while pods of the old uid run, and releases it after
    let gone = |_: &str| None;
    let kept = written(refresh(&b, gone, |h: &BudgetHolder| h.uid == "uid-lm", |_| false, &t(61)));
    assert_eq!(holders(&kept), vec![("lm".to_string(), 4)]);
    b.status = Some(written(refresh(&b, gone, no_pods, |_| false, &t(62))));
    assert!(b.status.as_ref().unwrap().jobs.is_empty());
    let s = written(settle(&b, &again, Demand::Start, &t(63)));
    assert_eq!(s.jobs.len(), 1);
    assert_eq!((s.jobs[0].uid.as_str(), s.jobs[0].admitted_at.clone()), ("new-uid", Some(t(63))));
}

#[test]
fn an_entry_whose_pods_run_is_kept_whatever_its_job_says() {
    let b = budget(8, &[("deleted", 2), ("forged", 2)], 0.0);
    let s = written(refresh(
        &b,
        |name| match name {
            "forged" => Some(Holder { finished: true, ..holder("uid-forged", 0.0) }),
            _ => None,
        },
        |_| true,
        |_| false,
        &t(60),
    ));
    assert_eq!(holders(&s), vec![("deleted".to_string(), 2), ("forged".to_string(), 2)], "both jobs' pods still hold their GPUs");
    assert_eq!(s.gpus_in_use, 4);
}

#[test]
fn the_exhausted_condition_says_which_limit() {
    let cond = |s: &TrainingBudgetStatus| {
        let c = crate::conditions::get(&s.conditions, "Exhausted").unwrap();
        (c.status.clone(), c.reason.clone())
    };
    let within = written(settle(&budget(8, &[], 0.0), &claim("lm", 4, 0.0), Demand::Start, &t(60)));
    assert_eq!(cond(&within), ("False".into(), "WithinLimits".into()));
    assert_eq!((within.gpus_in_use, within.observed_generation), (4, Some(1)));
    let full = written(settle(&budget(8, &[("a", 4)], 0.0), &claim("lm", 4, 0.0), Demand::Start, &t(60)));
    assert_eq!(cond(&full), ("True".into(), "AllGpusInUse".into()));
    let spent = written(refresh(&budget(8, &[("a", 4)], 0.0), |_| Some(holder("uid-a", 120.0)), no_pods, |_| false, &t(60)));
    assert_eq!(cond(&spent), ("True".into(), "GpuHoursSpent".into()));
}

/// Look-ahead admission: (GPU-hours spent, holders as (estimated, counted), the job's estimate,
/// the budget's admission) → admitted, waits (with the numbers) or refused. The budget allows
/// 100 GPU-hours a Day and 1,000 USD.
#[test]
fn look_ahead_table() {
    #[derive(Debug, PartialEq)]
    enum Want {
        Admitted,
        Waits(&'static [&'static str]),
        Refused,
    }
    use Want::*;
    /// (what, GPU-hours spent, holders as (estimated, counted), the job's estimate, admission, want)
    type Case = (&'static str, f64, Vec<(f64, f64)>, f64, BudgetAdmission, Want);
    let cases: Vec<Case> = vec![
        ("fits what is left", 50.0, vec![], 30.0, BudgetAdmission::LookAhead, Admitted),
        ("exactly what is left", 50.0, vec![], 50.0, BudgetAdmission::LookAhead, Admitted),
        (
            "more than is left",
            50.0,
            vec![],
            60.0,
            BudgetAdmission::LookAhead,
            Waits(&[
                "needs an estimated 60.00 GPU-hours",
                "has 50.00 left this Day",
                "100.00 in spec.gpuHours, 50.00 spent",
                "spec.admission to Spend",
            ]),
        ),
        ("more than is left, on spend only", 50.0, vec![], 60.0, BudgetAdmission::Spend, Admitted),
        ("more than a whole period", 0.0, vec![], 120.0, BudgetAdmission::LookAhead, Refused),
        ("held back for a holder", 50.0, vec![(40.0, 10.0)], 30.0, BudgetAdmission::LookAhead, Waits(&["has 20.00 left", "30.00 held back"])),
        ("beside a holder", 50.0, vec![(40.0, 10.0)], 20.0, BudgetAdmission::LookAhead, Admitted),
        ("a holder past its estimate holds nothing back", 50.0, vec![(40.0, 45.0)], 50.0, BudgetAdmission::LookAhead, Admitted),
    ];
    for (what, spent, held, estimate, admission, want) in cases {
        let mut b = budget(8, &[], spent);
        b.spec.admission = admission;
        let status = b.status.as_mut().unwrap();
        for (i, (estimated, counted)) in held.iter().enumerate() {
            status.jobs.push(BudgetHolder {
                name: format!("holder-{i}"),
                uid: format!("uid-holder-{i}"),
                gpus: 1,
                gpu_hours_counted: *counted,
                estimated_gpu_hours: *estimated,
                ..Default::default()
            });
        }
        let job = Claim { estimated_gpu_hours: estimate, ..claim("new", 1, 0.0) };
        match (settle(&b, &job, Demand::Start, &t(100)), want) {
            (Verdict::Write(s), Admitted) => {
                let entry = s.jobs.iter().find(|h| h.name == "new").expect(what);
                assert_eq!(entry.estimated_gpu_hours, estimate, "{what}");
                assert!(entry.estimated_cost > 0.0, "{what}: the estimate is priced");
            }
            (Verdict::Wait(w), Waits(words)) => {
                assert_eq!(w.reason, "BudgetExhausted", "{what}");
                for word in words {
                    assert!(w.message.contains(word), "{what}: {word:?} not in {}", w.message);
                }
            }
            (Verdict::Refuse(e), Refused) => {
                let message = e.to_string();
                assert!(message.contains("needs an estimated 120.00 GPU-hours, more than the 100.00 GPU-hours a Day"), "{message}");
                assert_eq!(crate::training_job::admit::AdmitError::from(e).permanent_reason(), Some("BudgetTooSmall"), "{what}");
            }
            (got, want) => panic!("{what}: got {got:?}, wanted {want:?}"),
        }
    }
}

/// The cost limit looks ahead at the budget's price for the job's GPU type.
#[test]
fn look_ahead_prices_the_estimate() {
    let mut b = budget(8, &[], 0.0);
    b.spec.gpu_hours = None;
    b.spec.max_cost = Some(100.0);
    b.spec.prices = vec![GpuPrice { gpu_type: "nvidia-h100-80gb".into(), per_gpu_hour: 4.0 }];
    b.status.as_mut().unwrap().cost_spent = 80.0;
    let fits = Claim { estimated_gpu_hours: 5.0, ..claim("small", 1, 0.0) };
    assert!(matches!(settle(&b, &fits, Demand::Start, &t(100)), Verdict::Write(_)));
    let job = Claim { estimated_gpu_hours: 6.0, ..claim("big", 1, 0.0) };
    match settle(&b, &job, Demand::Start, &t(100)) {
        Verdict::Wait(w) => {
            assert!(w.message.contains("needs an estimated 24.00 USD; TrainingBudget \"team\" has 20.00 left this Day"), "{}", w.message)
        }
        other => panic!("expected a wait, got {other:?}"),
    }
    // a job that spent part of its estimate before needs only the rest
    let resumed = Claim { estimated_gpu_hours: 6.0, ..claim("resumed", 1, 2.0) };
    assert!(matches!(settle(&b, &resumed, Demand::Start, &t(100)), Verdict::Write(_)));
}

#[test]
fn amounts_keep_three_significant_digits_below_one() {
    assert_eq!(amount(123.456), "123.46");
    assert_eq!(amount(0.5), "0.500");
    assert_eq!(amount(0.000312), "0.000312");
    assert_eq!(amount(0.0), "0.00");
}

/// A small limit's spend is said in the digits it needs, not rounded to 0.00.
#[test]
fn a_small_spend_is_said_in_its_own_digits() {
    let mut b = budget(4, &[], 0.00101);
    b.spec.gpu_hours = Some(0.001);
    let (_, said) = frugal_api::admission::budget::exhausted(&b.spec, b.status.as_ref().unwrap()).expect("spent");
    assert!(said.starts_with("0.00101 of its 0.001 GPU-hours"), "{said}");
}

#[test]
fn a_workload_entry_is_the_checks_and_goes_only_with_its_workload() {
    let mut b = budget(8, &[("wl", 2)], 0.0);
    b.status.as_mut().unwrap().jobs[0].kind = HolderKind::Workload;
    // no TrainingJob of that name exists, and no pod of the operator's holds it: still kept
    let kept = match refresh(&b, |_| None, no_pods, |_| false, &t(60)) {
        Verdict::Write(s) => *s,
        _ => b.status.clone().unwrap(),
    };
    assert_eq!(holders(&kept), vec![("wl".to_string(), 2)]);
    let gone = written(refresh(&b, |_| None, no_pods, |h| h.name == "wl", &t(60)));
    assert!(gone.jobs.is_empty(), "its Workload is gone");
}
