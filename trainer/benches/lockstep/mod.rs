//! Two or more runs trained in lockstep, a step of each in turn, so that a change in the
//! machine's load falls on all of them alike: the harness of the benches that compare models
//! (`moe_vs_dense`, `block_ab`). Tokens/s counts training steps only, not evaluation.

use frugal_trainer::config::RunConfig;
use frugal_trainer::parallel::Worker;
use std::time::Instant;
use tch::Device;

/// One side of the comparison, trained a step at a time.
pub struct Side {
    pub name: String,
    pub trainer: Worker,
    pub train_seconds: f64,
    step_seconds: Vec<f64>,
    dropped: f64,
    /// (step, training seconds so far, validation loss)
    pub curve: Vec<(i64, f64, f64)>,
}

impl Side {
    pub fn new(name: &str, cfg: RunConfig) -> Self {
        let name = format!("{name} {:?}", cfg.train.precision);
        let trainer = Worker::single(cfg, Device::Cpu).unwrap();
        Self { name, trainer, train_seconds: 0.0, step_seconds: vec![], dropped: 0.0, curve: vec![] }
    }

    pub fn step(&mut self, steps: i64, eval_every: i64) {
        let r = self.trainer.train_step().unwrap();
        self.train_seconds += r.seconds;
        self.step_seconds.push(r.seconds);
        self.dropped += r.dropped_fraction.unwrap_or(0.0);
        let t = &self.trainer;
        if t.step % eval_every == 0 || t.step == steps {
            let v = t.validation_loss();
            self.curve.push((t.step, self.train_seconds, v));
            eprintln!("{:>10} step {:>5} train {:>7.1}s val {v:.4}", self.name, t.step, self.train_seconds);
        }
    }

    pub fn tokens_per_second(&self) -> f64 {
        self.trainer.step as f64 * self.trainer.cfg.tokens_per_step() as f64 / self.train_seconds
    }

    pub fn median_step_seconds(&self) -> f64 {
        let mut v = self.step_seconds.clone();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }

    pub fn report(&self, started: Instant) {
        let t = &self.trainer;
        let counts = t.counts();
        println!(
            "{{\"model\":\"{}\",\"params_total\":{},\"params_active\":{},\"flops_per_token\":{},\"steps\":{},\"tokens_per_second\":{:.1},\"median_step_ms\":{:.2},\"val_loss\":{:.4},\"dropped_fraction\":{:.4},\"wall_seconds\":{:.1}}}",
            self.name,
            counts.params_total,
            counts.params_active,
            counts.flops_per_token,
            t.step,
            self.tokens_per_second(),
            self.median_step_seconds() * 1e3,
            self.curve.last().unwrap().2,
            self.dropped / t.step as f64,
            started.elapsed().as_secs_f64()
        );
    }
}
