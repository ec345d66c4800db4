//! Pipeline schedules as data: a pure function from (stages, micro-batches, schedule) to each
//! stage's ordered actions. The worker executes them (`step.rs`); communication is implied by the action
//! (a forward on stage s > 0 first receives its input from s − 1 and, on s < p − 1, ends by
//! sending its output to s + 1; a backward mirrors that with gradients).
//!
//! [`simulate`] runs the schedules of all stages against each other with blocking receives and
//! unit-cost actions: it proves a schedule cannot deadlock, and gives the bubble the schedule
//! implies, which tests compare with (p − 1) / (m + p − 1).

use frugal_api::v1alpha1::PipelineSchedule;

/// What a schedule is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScheduleKind {
    /// All forwards, then all backwards (Huang et al., 2019).
    GPipe,
    /// One forward, one backward in the steady state, at most p − s micro-batches in flight
    /// (PipeDream-Flush, Narayanan et al., 2021).
    OneFOneB,
    /// Forwards only: evaluation.
    ForwardOnly,
}

impl From<PipelineSchedule> for ScheduleKind {
    fn from(s: PipelineSchedule) -> Self {
        match s {
            PipelineSchedule::GPipe => ScheduleKind::GPipe,
            PipelineSchedule::OneFOneB => ScheduleKind::OneFOneB,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Forward(usize),
    Backward(usize),
}

/// The ordered actions of stage `stage` of `stages` over `micro_batches` micro-batches. With
/// one stage every training schedule is the plain micro-batch loop, each forward followed by its
/// backward (nothing waits on a neighbour, and one micro-batch is held at a time).
pub fn stage_actions(kind: ScheduleKind, stages: usize, stage: usize, micro_batches: usize) -> Vec<Action> {
    assert!(stage < stages, "stage {stage} of {stages}");
    let m = micro_batches;
    match kind {
        ScheduleKind::ForwardOnly => (0..m).map(Action::Forward).collect(),
        ScheduleKind::GPipe if stages == 1 => (0..m).flat_map(|i| [Action::Forward(i), Action::Backward(i)]).collect(),
        ScheduleKind::GPipe => (0..m).map(Action::Forward).chain((0..m).map(Action::Backward)).collect(),
        ScheduleKind::OneFOneB => {
            let warmup = (stages - stage - 1).min(m);
            let mut out: Vec<Action> = (0..warmup).map(Action::Forward).collect();
            for i in 0..m - warmup {
                out.push(Action::Forward(warmup + i));
                out.push(Action::Backward(i));
            }
            out.extend((m - warmup..m).map(Action::Backward));
            out
        }
    }
}

/// Every stage's actions.
pub fn schedule(kind: ScheduleKind, stages: usize, micro_batches: usize) -> Vec<Vec<Action>> {
    (0..stages).map(|s| stage_actions(kind, stages, s, micro_batches)).collect()
}

/// Micro-batches whose activations a stage holds at its peak under `actions`.
pub fn peak_in_flight(actions: &[Action]) -> usize {
    let (mut now, mut peak) = (0usize, 0usize);
    for a in actions {
        match a {
            Action::Forward(_) => {
                now += 1;
                peak = peak.max(now);
            }
            Action::Backward(_) => now -= 1,
        }
    }
    peak
}

/// When each action ran, from [`simulate`].
#[derive(Clone, Debug, PartialEq)]
pub struct Timeline {
    /// Per stage: (action, start, end), in execution order.
    pub stages: Vec<Vec<(Action, f64, f64)>>,
    pub makespan: f64,
}

impl Timeline {
    /// Fraction of stage-time spent idle: 1 − busy / (stages × makespan).
    pub fn bubble(&self) -> f64 {
        let busy: f64 = self.stages.iter().flatten().map(|(_, s, e)| e - s).sum();
        1.0 - busy / (self.stages.len() as f64 * self.makespan)
    }
}

/// Why a schedule cannot run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScheduleError {
    #[error("deadlock: stage {stage} waits at action {action:?} for data that never comes")]
    Deadlock { stage: usize, action: Action },
    #[error("stage {stage} runs {action:?} twice or before its forward")]
    Order { stage: usize, action: Action },
}

/// Executes the stages' action lists against each other: sends never block, a receive waits for
/// the matching send; a forward costs `forward` and a backward `backward` time units. Fails on a
/// deadlock or on an action out of order.
pub fn simulate(actions: &[Vec<Action>], forward: f64, backward: f64) -> Result<Timeline, ScheduleError> {
    let p = actions.len();
    // Time at which the activation of (stage, mb) arrived from upstream / gradient from downstream.
    let mut act_ready: Vec<std::collections::HashMap<usize, f64>> = vec![Default::default(); p];
    let mut grad_ready: Vec<std::collections::HashMap<usize, f64>> = vec![Default::default(); p];
    let mut done_forward: Vec<std::collections::HashSet<usize>> = vec![Default::default(); p];
    let mut done_backward: Vec<std::collections::HashSet<usize>> = vec![Default::default(); p];
    let mut next = vec![0usize; p];
    let mut clock = vec![0.0f64; p];
    let mut out = vec![Vec::new(); p];
    loop {
        let mut progressed = false;
        for s in 0..p {
            while let Some(&a) = actions[s].get(next[s]) {
                let ready = match a {
                    Action::Forward(mb) => {
                        if done_forward[s].contains(&mb) {
                            return Err(ScheduleError::Order { stage: s, action: a });
                        }
                        if s == 0 { Some(0.0) } else { act_ready[s].get(&mb).copied() }
                    }
                    Action::Backward(mb) => {
                        if !done_forward[s].contains(&mb) || done_backward[s].contains(&mb) {
                            return Err(ScheduleError::Order { stage: s, action: a });
                        }
                        if s == p - 1 { Some(0.0) } else { grad_ready[s].get(&mb).copied() }
                    }
                };
                let Some(ready) = ready else { break };
                let start = clock[s].max(ready);
                let end = start + if matches!(a, Action::Forward(_)) { forward } else { backward };
                clock[s] = end;
                out[s].push((a, start, end));
                match a {
                    Action::Forward(mb) => {
                        done_forward[s].insert(mb);
                        if s + 1 < p {
                            act_ready[s + 1].insert(mb, end);
                        }
                    }
                    Action::Backward(mb) => {
                        done_backward[s].insert(mb);
                        if s > 0 {
                            grad_ready[s - 1].insert(mb, end);
                        }
                    }
                }
                next[s] += 1;
                progressed = true;
            }
        }
        if (0..p).all(|s| next[s] == actions[s].len()) {
            break;
        }
        if !progressed {
            let s = (0..p).find(|&s| next[s] < actions[s].len()).unwrap();
            return Err(ScheduleError::Deadlock { stage: s, action: actions[s][next[s]] });
        }
    }
    let makespan = clock.iter().cloned().fold(0.0, f64::max);
    Ok(Timeline { stages: out, makespan })
}

#[cfg(test)]
mod tests {
    use super::*;
    use frugal_api::planner::{bubble_fraction, in_flight_micro_batches};

    const TRAINING: [ScheduleKind; 2] = [ScheduleKind::GPipe, ScheduleKind::OneFOneB];

    #[test]
    fn every_micro_batch_goes_forward_then_backward_through_every_stage() {
        for kind in TRAINING {
            for p in 1..=6 {
                for m in 1..=12 {
                    let all = schedule(kind, p, m);
                    for (s, actions) in all.iter().enumerate() {
                        assert_eq!(actions.len(), 2 * m, "{kind:?} p={p} m={m} stage {s}");
                        for mb in 0..m {
                            let f = actions.iter().position(|&a| a == Action::Forward(mb));
                            let b = actions.iter().position(|&a| a == Action::Backward(mb));
                            assert!(f.is_some() && b.is_some() && f < b, "{kind:?} p={p} m={m} stage {s} mb {mb}");
                        }
                    }
                    // Across stages: the simulation checks the order of every send and receive.
                    let t = simulate(&all, 1.0, 2.0).unwrap_or_else(|e| panic!("{kind:?} p={p} m={m}: {e}"));
                    for s in 0..p {
                        for mb in 0..m {
                            let when = |stage: usize, a: Action| t.stages[stage].iter().find(|(x, _, _)| *x == a).map(|(_, _, e)| *e).unwrap();
                            if s > 0 {
                                assert!(when(s - 1, Action::Forward(mb)) <= when(s, Action::Forward(mb)));
                                assert!(when(s, Action::Backward(mb)) <= when(s - 1, Action::Backward(mb)));
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn forward_only_runs_every_micro_batch_once_in_order() {
        let all = schedule(ScheduleKind::ForwardOnly, 4, 5);
        for actions in &all {
            assert_eq!(actions, &(0..5).map(Action::Forward).collect::<Vec<_>>());
        }
        assert!(simulate(&all, 1.0, 1.0).is_ok());
    }

    #[test]
    fn one_f_one_b_holds_at_most_stages_minus_index_micro_batches() {
        for p in 1..=8 {
            for m in 1..=16 {
                for s in 0..p {
                    let one = peak_in_flight(&stage_actions(ScheduleKind::OneFOneB, p, s, m));
                    assert!(one <= p - s, "p={p} m={m} s={s}: {one}");
                    assert_eq!(one as i64, in_flight_micro_batches(PipelineSchedule::OneFOneB, p as i64, s as i64, m as i64));
                    let gpipe = peak_in_flight(&stage_actions(ScheduleKind::GPipe, p, s, m));
                    assert_eq!(gpipe, if p == 1 { 1 } else { m });
                    assert_eq!(gpipe as i64, in_flight_micro_batches(PipelineSchedule::GPipe, p as i64, s as i64, m as i64));
                }
            }
        }
    }

    #[test]
    fn simulated_bubble_matches_theory() {
        for kind in TRAINING {
            for p in [2usize, 4, 8] {
                for m in [1usize, 4, 8, 16] {
                    // Backward twice the forward, as with real layers: the idle fraction is the same.
                    let t = simulate(&schedule(kind, p, m), 1.0, 2.0).unwrap();
                    let theory = bubble_fraction(p as i64, m as i64);
                    assert!((t.bubble() - theory).abs() < 1e-9, "{kind:?} p={p} m={m}: {} vs {theory}", t.bubble());
                }
            }
        }
    }

    #[test]
    fn a_wrong_order_deadlocks_and_is_caught() {
        // Stage 1 waits for micro-batch 1 first while stage 0 waits for micro-batch 0's gradient.
        let deadlock = vec![
            vec![Action::Forward(0), Action::Backward(0), Action::Forward(1), Action::Backward(1)],
            vec![Action::Forward(1), Action::Forward(0), Action::Backward(0), Action::Backward(1)],
        ];
        assert!(matches!(simulate(&deadlock, 1.0, 1.0), Err(ScheduleError::Deadlock { .. })));
        let twice = vec![vec![Action::Forward(0), Action::Forward(0)]];
        assert!(matches!(simulate(&twice, 1.0, 1.0), Err(ScheduleError::Order { .. })));
    }
}
