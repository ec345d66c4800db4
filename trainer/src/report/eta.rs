//! How far a run is and when it will end, from what it measured: `status.progress.percent`,
//! `estimatedRemainingSeconds` and `estimatedCompletionTime`.
//!
//! **The rate** is the steps per second over the latest [`WINDOW`] step reports (the time
//! between them includes the evaluations and checkpoints that fell in it, as the rest of the run
//! will), so a run that slows down or speeds up is estimated at its new rate once the window has
//! passed the change; the first estimate needs two reports.
//!
//! **The end** is the configured step count, unless the run stops at a quality target: then the
//! validation metric the target names is fitted, over the latest [`FIT_EVALUATIONS`]
//! evaluations, as a straight line in the logarithm of the training tokens (loss curves are
//! close to straight there over a run's later part), and the run is expected to end at the
//! tokens where that line reaches the target, or at its step count if that comes first. Until
//! two evaluations have shown the metric falling, the step count is the end. Tokens become steps
//! at the run's own tokens per step.
//!
//! The percentage is the steps done over the expected end's, so it can move back when a fit
//! moves the end later; a run at its end is 100.

use std::collections::VecDeque;

use frugal_api::v1alpha1::{QualityMetric, QualityTarget};

use crate::report::event::Start;

/// Step reports the rate is taken over.
pub const WINDOW: usize = 20;

/// Evaluations the quality target's fit is taken over.
pub const FIT_EVALUATIONS: usize = 4;

/// A step report: when (seconds on any monotonic clock), the step and the tokens so far.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Mark {
    at: f64,
    step: i64,
    tokens: i64,
}

/// The estimate at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// Steps done over the expected end's, 0–100.
    pub percent: i32,
    /// The step the run is expected to end at.
    pub end_step: i64,
    /// Seconds from the latest report to the expected end; none before a rate is known.
    pub remaining_seconds: Option<f64>,
}

/// Folds step reports and evaluations into an [`Estimate`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Eta {
    total_steps: i64,
    target: Option<QualityTarget>,
    marks: VecDeque<Mark>,
    /// (training tokens, the target's metric) of each evaluation, the latest last.
    evaluations: VecDeque<(i64, f64)>,
    reached: bool,
    /// Steps between evaluations: a run stops at its quality target only at one.
    eval_interval: i64,
}

impl Eta {
    pub fn new(total_steps: i64, target: Option<QualityTarget>) -> Self {
        Self { total_steps, target, ..Self::default() }
    }

    /// For the run a start event describes.
    pub fn for_run(start: &Start) -> Self {
        Self::new(start.steps, start.quality_target.clone()).evaluating_every(start.eval_interval.unwrap_or(0))
    }

    /// The run evaluates every `interval` steps (0: only at its end).
    pub fn evaluating_every(mut self, interval: i64) -> Self {
        self.eval_interval = interval.max(0);
        self
    }

    /// A step report at `at` seconds.
    pub fn step(&mut self, at: f64, step: i64, tokens: i64) {
        // a resumed run's reports start over from its step: older marks are another attempt's
        if self.marks.back().is_some_and(|m| step <= m.step || at < m.at) {
            self.marks.clear();
        }
        self.marks.push_back(Mark { at, step, tokens });
        while self.marks.len() > WINDOW {
            self.marks.pop_front();
        }
    }

    /// An evaluation: its validation loss and bits per byte, whether it reached the target.
    pub fn evaluation(&mut self, tokens: i64, val_loss: Option<f64>, bits_per_byte: Option<f64>, reached: bool) {
        self.reached |= reached;
        let value = match self.target.as_ref().map(|t| t.metric) {
            Some(QualityMetric::ValidationLoss) => val_loss,
            Some(QualityMetric::BitsPerByte) => bits_per_byte,
            None => return,
        };
        if let Some(v) = value.filter(|v| v.is_finite())
            && tokens > 0
        {
            self.evaluations.push_back((tokens, v));
            while self.evaluations.len() > FIT_EVALUATIONS {
                self.evaluations.pop_front();
            }
        }
    }

    /// The training tokens of a step still in the window of reports.
    pub fn tokens_at(&self, step: i64) -> Option<i64> {
        self.marks.iter().rev().find(|m| m.step == step).map(|m| m.tokens)
    }

    /// The estimate after the latest report; none before the first.
    pub fn estimate(&self) -> Option<Estimate> {
        let last = *self.marks.back()?;
        let end_step = if self.reached { last.step } else { self.end_step(last) };
        let percent = if end_step <= 0 { 100 } else { (100 * last.step / end_step).clamp(0, 100) as i32 };
        let first = self.marks.front()?;
        let rate = (last.step - first.step) as f64 / (last.at - first.at);
        let remaining_seconds = (end_step - last.step) as f64 / rate;
        let remaining_seconds = if end_step == last.step {
            Some(0.0)
        } else {
            (rate.is_finite() && rate > 0.0 && remaining_seconds.is_finite()).then_some(remaining_seconds)
        };
        Some(Estimate { percent, end_step, remaining_seconds })
    }

    /// The configured end, or the earlier step at which the fit reaches the target.
    fn end_step(&self, last: Mark) -> i64 {
        let Some(tokens) = self.target_tokens() else { return self.total_steps };
        let tokens_per_step = last.tokens as f64 / last.step.max(1) as f64;
        if tokens_per_step.is_nan() || tokens_per_step <= 0.0 {
            return self.total_steps;
        }
        let step = (tokens / tokens_per_step).ceil();
        if !step.is_finite() || step >= self.total_steps as f64 {
            return self.total_steps;
        }
        // it stops at an evaluation: the first at or after the fit's step and after the latest
        // report (a fit that says the target is behind, while no evaluation has reached it, means
        // the next one)
        let step = match self.eval_interval {
            0 => (step as i64).max(last.step),
            every => ((step as i64 + every - 1) / every * every).max((last.step / every + 1) * every),
        };
        step.min(self.total_steps)
    }

    /// The training tokens at which the least-squares line of the metric against ln(tokens),
    /// over the latest evaluations, reaches the target; none unless it falls.
    fn target_tokens(&self) -> Option<f64> {
        let target = self.target.as_ref()?.value;
        let points: Vec<(f64, f64)> = self.evaluations.iter().map(|&(t, v)| ((t as f64).ln(), v)).collect();
        if points.len() < 2 {
            return None;
        }
        let n = points.len() as f64;
        let (mx, my) = (points.iter().map(|p| p.0).sum::<f64>() / n, points.iter().map(|p| p.1).sum::<f64>() / n);
        let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
        let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
        let slope = sxy / sxx;
        // a flat or rising metric (or one evaluation's tokens twice: no slope) never reaches it
        if slope.is_nan() || slope >= 0.0 {
            return None;
        }
        // my + slope·(x − mx) = target
        let x = mx + (target - my) / slope;
        let tokens = x.exp();
        tokens.is_finite().then_some(tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(value: f64) -> Option<QualityTarget> {
        Some(QualityTarget { metric: QualityMetric::ValidationLoss, value })
    }

    /// A run of 1,000 steps at 2 steps a second, 512 tokens a step: halfway, 250 s are left.
    #[test]
    fn a_steady_rate_ends_when_the_steps_run_out() {
        let mut eta = Eta::new(1000, None);
        for step in (10..=500).step_by(10) {
            eta.step(step as f64 / 2.0, step, step * 512);
        }
        let e = eta.estimate().unwrap();
        assert_eq!((e.percent, e.end_step), (50, 1000));
        assert!((e.remaining_seconds.unwrap() - 250.0).abs() < 1e-9, "{e:?}");
    }

    /// The first report alone gives the percentage but no time: no rate yet.
    #[test]
    fn one_report_has_no_rate() {
        let mut eta = Eta::new(100, None);
        eta.step(3.0, 1, 64);
        assert_eq!(eta.estimate().unwrap(), Estimate { percent: 1, end_step: 100, remaining_seconds: None });
        assert_eq!(Eta::new(100, None).estimate(), None);
    }

    /// 2 steps a second, then 1 from step 400: once the window has passed the change, the
    /// estimate is at the new rate (the run's average would say 500 / 1.5 s).
    #[test]
    fn a_rate_that_changes_is_estimated_at_the_new_rate() {
        let mut eta = Eta::new(1000, None);
        let mut at = 0.0;
        for step in (10..=500).step_by(10) {
            at += if step <= 400 { 5.0 } else { 10.0 };
            eta.step(at, step, step * 512);
        }
        // 10 slow reports of 20: the window still mixes both rates
        let mixed = eta.estimate().unwrap().remaining_seconds.unwrap();
        assert!(mixed > 250.0 && mixed < 500.0, "{mixed}");
        for step in (510..=700).step_by(10) {
            at += 10.0;
            eta.step(at, step, step * 512);
        }
        let e = eta.estimate().unwrap();
        assert_eq!(e.percent, 70);
        assert!((e.remaining_seconds.unwrap() - 300.0).abs() < 1e-9, "{e:?}");
    }

    /// A resumed attempt starts its window over: the time between attempts is not a rate.
    #[test]
    fn a_resumed_run_starts_its_window_over() {
        let mut eta = Eta::new(100, None);
        for step in 1..=60 {
            eta.step(step as f64, step, step * 10);
        }
        // attempt 2 resumes at step 50 on a fresh clock, at 4 steps a second
        for (i, step) in (51..=60).enumerate() {
            eta.step(i as f64 * 0.25, step, step * 10);
        }
        let e = eta.estimate().unwrap();
        assert_eq!(e.percent, 60);
        assert!((e.remaining_seconds.unwrap() - 10.0).abs() < 1e-9, "{e:?}");
    }

    /// A loss falling by 0.5 nats each time the tokens double, from 4.0 at 1,000 tokens,
    /// reaches 2.5 at 8,000 tokens: a run to that target at 100 tokens a step ends at step 80
    /// of its 1,000, and is half way at step 40.
    #[test]
    fn a_run_to_a_quality_target_ends_where_the_fit_reaches_it() {
        let mut eta = Eta::new(1000, target(2.5));
        let loss = |tokens: f64| 4.0 - 0.5 * (tokens / 1000.0).log2();
        for step in 1..=40 {
            eta.step(step as f64, step, step * 100);
            if step % 10 == 0 {
                let tokens = step * 100;
                eta.evaluation(tokens, Some(loss(tokens as f64)), None, false);
            }
        }
        let e = eta.estimate().unwrap();
        assert_eq!((e.end_step, e.percent), (80, 50), "{e:?}");
        assert!((e.remaining_seconds.unwrap() - 40.0).abs() < 1e-9, "{e:?}");
    }

    /// Until the metric has fallen between two evaluations there is no fit: the step count is
    /// the end; a target already reached ends the run where it is; a fit that lands past the
    /// step count is cut to it.
    #[test]
    fn a_quality_target_falls_back_to_the_step_count() {
        let mut eta = Eta::new(200, target(1.0));
        eta.step(1.0, 10, 1000);
        eta.step(2.0, 20, 2000);
        eta.evaluation(2000, Some(3.0), None, false);
        assert_eq!(eta.estimate().unwrap().end_step, 200);
        // flat: still no fit
        eta.evaluation(2000, Some(3.0), None, false);
        assert_eq!(eta.estimate().unwrap().end_step, 200);
        // falling far too slowly: the fit's tokens lie past step 200
        eta.step(3.0, 30, 3000);
        eta.evaluation(3000, Some(2.99), None, false);
        assert_eq!(eta.estimate().unwrap().end_step, 200);
        eta.evaluation(3000, None, None, true);
        assert_eq!(eta.estimate().unwrap(), Estimate { percent: 100, end_step: 30, remaining_seconds: Some(0.0) });
    }

    /// The fit's step is rounded up to an evaluation, and when the fit says the target lies
    /// behind while no evaluation has reached it, the end is the next evaluation.
    #[test]
    fn a_quality_target_ends_at_an_evaluation() {
        let loss = |tokens: f64| 4.0 - 0.5 * (tokens / 1000.0).log2();
        let mut eta = Eta::new(1000, target(2.5)).evaluating_every(25);
        for step in 1..=40 {
            eta.step(step as f64, step, step * 100);
            if step % 10 == 0 {
                eta.evaluation(step * 100, Some(loss((step * 100) as f64)), None, false);
            }
        }
        // the fit says step 80: the evaluation at 100 is the first that can stop it
        assert_eq!(eta.estimate().unwrap().end_step, 100);
        for step in 41..=90 {
            eta.step(step as f64, step, step * 100);
        }
        // step 90, target "behind" at 80 but not reached: the next evaluation, at 100
        let e = eta.estimate().unwrap();
        assert_eq!((e.end_step, e.percent), (100, 90), "{e:?}");
        assert!((e.remaining_seconds.unwrap() - 10.0).abs() < 1e-9, "{e:?}");
    }

    /// A target in bits per byte fits the bits per byte, not the loss.
    #[test]
    fn a_bits_per_byte_target_fits_bits_per_byte() {
        let mut eta = Eta::new(1000, Some(QualityTarget { metric: QualityMetric::BitsPerByte, value: 1.0 }));
        eta.step(1.0, 10, 1000);
        eta.step(2.0, 20, 2000);
        // the loss would say never (it rises); bits per byte halve the gap per doubling
        eta.evaluation(1000, Some(1.0), Some(2.0), false);
        eta.evaluation(2000, Some(2.0), Some(1.5), false);
        assert_eq!(eta.estimate().unwrap().end_step, 40);
    }
}
