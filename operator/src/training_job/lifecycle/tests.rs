use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::*;
use crate::training_job::observe::StartTrouble;

fn t(secs: i64) -> Time {
    Time(Timestamp::from_second(1_700_000_000 + secs).unwrap())
}

fn view(attempt: i32, state: AttemptState, started: Option<i64>) -> AttemptView {
    AttemptView { attempt, state, started: started.map(t), trouble: None, billed: Default::default() }
}

fn failed(kind: FailureKind) -> AttemptState {
    AttemptState::Failed { kind, message: String::new() }
}

struct Case {
    name: &'static str,
    attempts: Vec<AttemptView>,
    suspend: bool,
    deadline: Option<u64>,
    progress: Option<i64>,
    /// GPU-hours spent, against spec.budget.maxGpuHours = 10.
    spent: f64,
    now: i64,
    want: (Action, Phase, &'static str, i32),
}

fn case(name: &'static str, attempts: Vec<AttemptView>, want: (Action, Phase, &'static str, i32)) -> Case {
    Case { name, attempts, suspend: false, deadline: None, progress: None, spent: 1.0, now: 30, want }
}

/// The state machine table of docs/operator.md: (action, phase, reason, restarts).
#[test]
fn decide_table() {
    use Action::*;
    use AttemptState::*;
    use FailureKind as F;
    use Phase as P;
    let cases = vec![
        case("nothing yet", vec![], (Create(1), P::Pending, "Creating", 0)),
        Case { suspend: true, ..case("suspended before start", vec![], (Nothing, P::Suspended, "Suspended", 0)) },
        case("queued by Kueue", vec![view(1, Queued, None)], (Nothing, P::Queued, "Queued", 0)),
        case("pods starting", vec![view(1, Starting, Some(0))], (Nothing, P::Pending, "PodsStarting", 0)),
        case("running", vec![view(1, Running, Some(0))], (Nothing, P::Running, "Running", 0)),
        case("succeeded", vec![view(1, Succeeded { at: None }, Some(0))], (Nothing, P::Succeeded, "Succeeded", 0)),
        case("stage failed: retry", vec![view(1, failed(F::Failed), Some(0))], (Create(2), P::Pending, "Restarting", 1)),
        case("pods still stopping", vec![view(1, Stopping(None), Some(0))], (Nothing, P::Pending, "WaitingForPods", 0)),
        case(
            "disruption is not counted",
            vec![view(1, failed(F::Failed), Some(0)), view(2, failed(F::Disrupted), Some(0))],
            (Create(3), P::Pending, "Restarting", 1),
        ),
        case(
            "backoff limit (3) exceeded",
            (1..=4).map(|a| view(a, failed(F::Failed), Some(0))).collect(),
            (Nothing, P::Failed, "BackoffLimitExceeded", 4),
        ),
        case("last retry", (1..=3).map(|a| view(a, failed(F::Failed), Some(0))).collect(), (Create(4), P::Pending, "Restarting", 3)),
        case("configuration error is permanent", vec![view(1, failed(F::Configuration), Some(0))], (Nothing, P::Failed, "ConfigurationError", 0)),
        Case {
            suspend: true,
            ..case("suspend a running attempt", vec![view(1, Running, Some(0))], (Stop(1, StopReason::Suspended), P::Suspended, "Suspending", 0))
        },
        Case { suspend: true, ..case("suspend a queued attempt", vec![view(1, Queued, None)], (Delete(1), P::Suspended, "Suspending", 0)) },
        Case {
            suspend: true,
            ..case("suspending", vec![view(1, Stopping(Some(StopReason::Suspended)), Some(0))], (Nothing, P::Suspended, "Suspending", 0))
        },
        Case { suspend: true, ..case("suspended", vec![view(1, failed(F::Suspended), Some(0))], (Nothing, P::Suspended, "Suspended", 0)) },
        case("resume", vec![view(1, failed(F::Suspended), Some(0))], (Create(2), P::Pending, "Creating", 0)),
        Case {
            deadline: Some(50),
            now: 100,
            ..case("deadline passes", vec![view(1, Running, Some(0))], (Stop(1, StopReason::DeadlineExceeded), P::Running, "DeadlineExceeded", 0))
        },
        Case {
            deadline: Some(50),
            now: 100,
            ..case("deadline stop done", vec![view(1, failed(F::DeadlineExceeded), Some(0))], (Nothing, P::Failed, "DeadlineExceeded", 0))
        },
        Case {
            deadline: Some(50),
            now: 100,
            ..case("no retry past the deadline", vec![view(1, failed(F::Failed), Some(0))], (Nothing, P::Failed, "DeadlineExceeded", 1))
        },
        Case {
            now: 100,
            ..case("stalled: no report in 60s", vec![view(1, Running, Some(0))], (Stop(1, StopReason::Stalled), P::Pending, "Stalled", 0))
        },
        Case {
            progress: Some(90),
            now: 100,
            ..case("a recent report is progress", vec![view(1, Running, Some(0))], (Nothing, P::Running, "Running", 0))
        },
        case("stall stop done: counted retry", vec![view(1, failed(F::Stalled), Some(0))], (Create(2), P::Pending, "Restarting", 1)),
        Case {
            spent: 10.0,
            ..case("own GPU-hours spent", vec![view(1, Running, Some(0))], (Stop(1, StopReason::BudgetExceeded), P::Running, "BudgetExhausted", 0))
        },
        Case {
            spent: 10.0,
            ..case(
                "stopping over budget",
                vec![view(1, Stopping(Some(StopReason::BudgetExceeded)), Some(0))],
                (Nothing, P::Running, "BudgetExhausted", 0),
            )
        },
        Case {
            spent: 10.0,
            ..case("budget stop done: waits", vec![view(1, failed(F::BudgetExceeded), Some(0))], (Nothing, P::Queued, "BudgetExhausted", 0))
        },
        case("own limit raised: resumes", vec![view(1, failed(F::BudgetExceeded), Some(0))], (Create(2), P::Pending, "Creating", 0)),
        case(
            "shared budget stop done: resumes if admitted",
            vec![view(1, failed(F::BudgetExhausted), Some(0))],
            (Create(2), P::Pending, "Creating", 0),
        ),
        Case {
            spent: 10.0,
            ..case("failed over budget: waits", vec![view(1, failed(F::Failed), Some(0))], (Nothing, P::Queued, "BudgetExhausted", 1))
        },
        Case {
            spent: 10.0,
            ..case(
                "over budget, next attempt not started",
                vec![view(1, failed(F::Disrupted), Some(0)), view(2, Queued, None)],
                (Delete(2), P::Pending, "BudgetExhausted", 0),
            )
        },
        Case {
            now: 130,
            ..case(
                "pods not started by the startup deadline (120s)",
                vec![view(1, Starting, Some(0))],
                (Stop(1, StopReason::StartupTimeout), P::Pending, "StartupTimeout", 0),
            )
        },
        case("stopping: not started", vec![view(1, Stopping(Some(StopReason::StartupTimeout)), Some(0))], (Nothing, P::Pending, "StartupTimeout", 0)),
        case("not started: counted retry", vec![view(1, failed(F::StartupTimeout), Some(0))], (Create(2), P::Pending, "Restarting", 1)),
        Case { now: 1000, ..case("a queued attempt has no startup deadline", vec![view(1, Queued, None)], (Nothing, P::Queued, "Queued", 0)) },
    ];
    for c in cases {
        let inputs = Inputs {
            attempts: &c.attempts,
            suspend: c.suspend,
            backoff_limit: 3,
            active_deadline: c.deadline.map(Duration::from_secs),
            progress_deadline: Duration::from_secs(60),
            startup_deadline: Duration::from_secs(120),
            start_time: Some(t(0)),
            last_progress: c.progress.map(t),
            spending: Spending { gpu_hours: c.spent, max_gpu_hours: Some(10.0), ..Default::default() },
            now: t(c.now),
        };
        let d = decide(&inputs);
        assert_eq!((d.action.clone(), d.phase, d.reason, d.restarts), c.want, "{}: {}", c.name, d.message);
        assert!(!d.message.is_empty() || d.reason == "Creating", "{}: a decision says why", c.name);
    }
}

#[test]
fn watchdog_and_deadline_schedule_the_next_look() {
    let attempts = [view(1, AttemptState::Running, Some(0))];
    let d = decide(&Inputs {
        attempts: &attempts,
        suspend: false,
        backoff_limit: 3,
        active_deadline: Some(Duration::from_secs(500)),
        progress_deadline: Duration::from_secs(60),
        startup_deadline: Duration::from_secs(120),
        start_time: Some(t(0)),
        last_progress: Some(t(30)),
        spending: Spending::default(),
        now: t(40),
    });
    assert_eq!(d.action, Action::Nothing);
    // the stall would be at 30 + 60 = 90, before the deadline at 500
    assert_eq!(d.requeue_after, Some(Duration::from_secs(50)));
}

#[test]
fn a_running_job_is_looked_at_again_when_its_own_limit_would_be_spent() {
    let attempts = [view(1, AttemptState::Running, Some(0))];
    let inputs = |spending: Spending| Inputs {
        attempts: &attempts,
        suspend: false,
        backoff_limit: 3,
        active_deadline: None,
        progress_deadline: Duration::from_secs(600),
        startup_deadline: Duration::from_secs(120),
        start_time: Some(t(0)),
        last_progress: Some(t(30)),
        spending,
        now: t(40),
    };
    // 4 GPUs spend 4 GPU-hours an hour: 0.1 GPU-hours left is 90 s
    let hours = Spending { gpu_hours: 0.9, max_gpu_hours: Some(1.0), gpus: 4.0, price_per_gpu_hour: 2.0, ..Default::default() };
    assert_eq!(decide(&inputs(hours.clone())).requeue_after, Some(Duration::from_secs(90)));
    // at $2 a GPU-hour they spend $8 an hour: $0.40 left of maxCost is 180 s, after the GPU-hours
    let cost = Spending { cost: 1.6, max_cost: Some(2.0), max_gpu_hours: None, ..hours.clone() };
    assert_eq!(decide(&inputs(cost)).requeue_after, Some(Duration::from_secs(180)));
    // within a report's interval of the limit: not sooner than the next report
    let close = Spending { gpu_hours: 0.9999, ..hours.clone() };
    assert_eq!(decide(&inputs(close)).requeue_after, Some(Duration::from_secs(5)));
    // spent: stopped with the field named
    let d = decide(&inputs(Spending { gpu_hours: 1.0, ..hours.clone() }));
    assert_eq!(d.action, Action::Stop(1, StopReason::BudgetExceeded));
    assert!(d.message.contains("spec.budget.maxGpuHours is 1"), "{}", d.message);
    let d = decide(&inputs(Spending { cost: 2.5, max_cost: Some(2.0), max_gpu_hours: None, ..hours.clone() }));
    assert!(d.message.contains("spec.budget.maxCost is 2"), "{}", d.message);
    // a CPU job spends no GPU-hours: even a limit of 0 is not spent, and nothing is scheduled
    let cpu = Spending { max_gpu_hours: Some(0.0), ..Default::default() };
    let d = decide(&inputs(cpu));
    assert_eq!((d.action, d.requeue_after), (Action::Nothing, Some(Duration::from_secs(600 - 10))));
}

#[test]
fn a_pod_that_cannot_start_is_named_until_the_startup_deadline_stops_the_attempt() {
    let trouble = StartTrouble {
        reason: reasons::IMAGE_PULL_FAILED,
        message: "pod lm-a1-0 cannot pull image \"registry.invalid/x:1\" (ErrImagePull): no such host".into(),
    };
    let attempts = [AttemptView { trouble: Some(trouble), ..view(1, AttemptState::Starting, Some(0)) }];
    let inputs = |now| Inputs {
        attempts: &attempts,
        suspend: false,
        backoff_limit: 0,
        active_deadline: None,
        progress_deadline: Duration::from_secs(600),
        startup_deadline: Duration::from_secs(120),
        start_time: Some(t(0)),
        last_progress: None,
        spending: Spending::default(),
        now: t(now),
    };
    let d = decide(&inputs(20));
    assert_eq!((d.action.clone(), d.reason), (Action::Nothing, reasons::IMAGE_PULL_FAILED));
    assert!(d.message.contains("registry.invalid/x:1") && d.message.contains("no such host"), "{}", d.message);
    // looked at again when the startup deadline passes, with no event to wake it
    assert_eq!(d.requeue_after, Some(Duration::from_secs(100)));
    let d = decide(&inputs(120));
    assert_eq!(d.action, Action::Stop(1, StopReason::StartupTimeout));
    assert!(d.message.contains("runPolicy.startupDeadlineSeconds (120s)") && d.message.contains("registry.invalid/x:1"), "{}", d.message);
    // stopped and counted: with backoffLimit 0 the job fails, saying why
    let stopped = [view(1, failed(FailureKind::StartupTimeout), Some(0))];
    let d = decide(&Inputs { attempts: &stopped, ..inputs(130) });
    assert_eq!((d.phase, d.reason, d.restarts), (Phase::Failed, reasons::BACKOFF_LIMIT_EXCEEDED, 1));
    assert!(d.message.contains("did not start within runPolicy.startupDeadlineSeconds"), "{}", d.message);
}

/// A budget spent out while an attempt is live stops it (or removes one Kueue never started);
/// an attempt already stopping, or none live, is left as the decision says.
#[test]
fn a_spent_budget_stops_the_live_attempt() {
    let d = |attempts: &[AttemptView]| Decision {
        action: Action::Nothing,
        phase: Phase::Running,
        reason: reasons::RUNNING,
        message: String::new(),
        stalled: false,
        attempt: attempts.last().map_or(0, |a| a.attempt),
        restarts: 0,
        succeeded_at: None,
        requeue_after: Some(Duration::from_secs(15)),
    };
    let why = "TrainingBudget \"team\" has spent 10.00 of its 10 GPU-hours (spec.gpuHours) this Day";
    let running = [view(1, AttemptState::Running, Some(0))];
    let stop = stop_for_budget(&d(&running), &running, why).expect("stopped");
    assert_eq!((stop.action, stop.phase, stop.reason), (Action::Stop(1, StopReason::BudgetExhausted), Phase::Running, reasons::BUDGET_EXHAUSTED));
    assert!(stop.message.starts_with(why) && stop.message.contains("checkpoint"), "{}", stop.message);
    let kueue_held = [view(2, AttemptState::Queued, None)];
    assert_eq!(stop_for_budget(&d(&kueue_held), &kueue_held, why).unwrap().action, Action::Delete(2));
    let stopping = [view(1, AttemptState::Stopping(Some(StopReason::BudgetExhausted)), Some(0))];
    assert_eq!(stop_for_budget(&d(&stopping), &stopping, why), None);
    let done = [view(1, failed(FailureKind::BudgetExhausted), Some(0))];
    assert_eq!(stop_for_budget(&d(&done), &done, why), None);
    assert_eq!(stop_for_budget(&d(&[]), &[], why), None);
}
