//! Knowledge distillation (Hinton et al., 2015): the student learns from a trained teacher's
//! softened next-token distribution as well as from the data. Per token, in fp32 in the head:
//!
//!   (1 − w)·CE(student, data) + w·T²·KL(softmax(teacher/T) ‖ softmax(student/T))
//!
//! with w the soft weight and T the temperature; T² keeps the soft term's gradient the size of
//! the hard one's as T grows. The teacher is a whole model loaded from its checkpoint (either
//! layout, verified), frozen and run without a graph in the run's compute dtype, by the part of
//! the run that computes the loss: the single process, or the last stage of every pipeline
//! replica, on the micro-batch's own input tokens. It is never in the optimizer nor in the
//! student's checkpoints. At the start of a run the teacher is evaluated as the student is and
//! both models' inference throughput is measured side by side, for the run's
//! [`DistillationStatus`].

use crate::checkpoint::{self, CheckpointError};
use crate::config::{DistillConfig, DistillLoss, ModelConfig, check_teacher};
use crate::data::{Batch, Data};
use crate::eval::{self, EvalConfig, GptModel, LanguageModel};
use crate::job::ConfigurationError;
use crate::model::gpt::Gpt;
use crate::model::soft::SoftTargets;
use crate::params::{ParamBuilder, ParamStore};
use crate::rng::Rng;
use anyhow::Result;
use frugal_api::v1alpha1::{DistillationStatus, QualityStatus};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Held-out batches timed for throughput, after one of warm-up.
const TIMED_BATCHES: usize = 4;

/// A trained model, frozen, whose predictions the student learns from.
pub struct Teacher {
    pub model: Gpt,
    pub params: ParamStore,
    pub device: Device,
    /// The step directory its weights came from, and its step.
    pub checkpoint: PathBuf,
    pub step: i64,
    pub loss: DistillLoss,
}

impl Teacher {
    /// Loads the teacher of `distill` for `student` on `device`, computing in `kind`: its whole
    /// model from the checkpoint's step (a pipelined one under any stage count), verified. A
    /// teacher that cannot teach the student, a checkpoint that is not there, is corrupt or holds
    /// another model is a [`ConfigurationError`] naming the field to change.
    pub fn load(distill: &DistillConfig, student: &ModelConfig, device: Device, kind: Kind) -> Result<Self> {
        check_teacher(student, &distill.teacher).map_err(ConfigurationError)?;
        let dir = crate::job::teacher_step(&distill.checkpoint)?;
        let mut builder = ParamBuilder::default();
        let mut model = Gpt::new(&mut builder, &distill.teacher);
        model.prepare(kind, device);
        // initial weights the checkpoint's replace
        let mut params = ParamStore::new(builder, &mut Rng::derive(0, "teacher"), device, kind);
        let manifest = checkpoint::load_weights(&dir, &mut params).map_err(|e| refusal(&dir, e))?;
        freeze(&mut params);
        Ok(Self { model, params, device, checkpoint: dir, step: manifest.step, loss: distill.loss })
    }

    /// The teacher's logits of `inputs` [B, T] (on any device): [B, T, V] fp32 on its device,
    /// without a graph.
    pub fn logits(&self, inputs: &Tensor) -> Tensor {
        self.model.eval_logits(&self.params, &inputs.to_device(self.device))
    }

    /// What the student's loss needs of the teacher for the micro-batch `inputs`; `None` when the
    /// soft weight is 0 and the teacher does not run.
    pub fn soft_targets(&self, inputs: &Tensor) -> Option<SoftTargets> {
        self.loss.runs_teacher().then(|| SoftTargets { logits: self.logits(inputs), loss: self.loss })
    }

    pub fn language_model(&self) -> GptModel<'_> {
        GptModel { model: &self.model, params: &self.params, device: self.device }
    }

    /// The teacher on the job's evaluation, beside the `student` (a [`LanguageModel`] of the
    /// same run: the whole model, or a pipeline's chain of stages): the status a distilled run
    /// reports before the student's first evaluation. Both models score the same held-out
    /// batches of `batch` sequences for their throughput.
    pub fn report(&self, student: &dyn LanguageModel, data: &Data, evaluation: &EvalConfig, seed: u64, batch: i64) -> Result<DistillationStatus> {
        let batches = throughput_batches(data, batch);
        let teacher = self.language_model();
        let (student_tokens_per_second, teacher_tokens_per_second) = tokens_per_second(student, Some(&teacher), &batches);
        let quality = eval::evaluate(&teacher, data, &evaluation.sets, seed, self.step, batch)?;
        let parameters = self.model.cfg.parameters();
        Ok(DistillationStatus {
            teacher_checkpoint: self.checkpoint.display().to_string(),
            teacher_parameters: parameters.total,
            teacher_active_parameters: parameters.active,
            teacher: quality.figures(),
            bits_per_byte_delta: None,
            teacher_tokens_per_second,
            student_tokens_per_second,
        })
    }
}

/// A frozen model keeps its compute-dtype weights only: no gradient buffer, and below fp32 no
/// fp32 master copy (it is never updated, so never refreshed from one).
fn freeze(params: &mut ParamStore) {
    params.grad = Tensor::zeros([0], (Kind::Float, params.device));
    if params.compute_kind != Kind::Float {
        params.master = Tensor::zeros([0], (Kind::Float, params.device));
    }
}

/// Why the teacher's checkpoint step `dir` was refused, naming the field to change.
fn refusal(dir: &Path, e: CheckpointError) -> anyhow::Error {
    let message = match &e {
        CheckpointError::Mismatch { .. } => format!(
            "spec.distill.teacher.model does not match the checkpoint spec.distill.teacher.checkpoint names ({}): {e}; set \
             spec.distill.teacher.model to the model the teacher's job trained (its spec.model)",
            dir.display()
        ),
        _ => format!("spec.distill.teacher.checkpoint ({}): {e}; point it at an intact step directory of the teacher's checkpoints", dir.display()),
    };
    ConfigurationError(message).into()
}

/// Puts the student's evaluation `student` beside the teacher's in `status`.
pub fn compare(status: &mut DistillationStatus, student: &QualityStatus) {
    status.bits_per_byte_delta = student.bits_per_byte.zip(status.teacher.bits_per_byte).map(|(s, t)| s - t);
}

/// The held-out batches throughput is measured on: full batches of up to `batch` sequences, the
/// first a warm-up.
pub fn throughput_batches(data: &Data, batch: i64) -> Vec<Batch> {
    let seq_len = data.seq_len();
    data.validation(batch).into_iter().filter(|b| b.inputs.size()[1] == seq_len).take(1 + TIMED_BATCHES).collect()
}

/// Inference tokens per second of `student` and of `teacher` over the same `batches`, measured
/// side by side: [`TIMED_BATCHES`] forwards of each (the batches over again if there are fewer),
/// each batch through one, then the other, without a graph, after the first batch as a warm-up
/// of each. The scores come back to the host, so a device's queue is drained in the time. NaN
/// without a batch. A model that only relays (a pipeline's first stage) runs the same forwards.
pub fn tokens_per_second(student: &dyn LanguageModel, teacher: Option<&dyn LanguageModel>, batches: &[Batch]) -> (f64, f64) {
    let Some((warm_up, _)) = batches.split_first() else { return (f64::NAN, f64::NAN) };
    // a short validation split is timed more than once
    let timed = batches.iter().cycle().skip(usize::from(batches.len() > 1)).take(TIMED_BATCHES);
    let score = |lm: &dyn LanguageModel, b: &Batch| {
        let t0 = Instant::now();
        let _ = tch::no_grad(|| lm.score(&b.inputs, &b.targets));
        t0.elapsed().as_secs_f64()
    };
    let _ = score(student, warm_up);
    if let Some(t) = teacher {
        let _ = score(t, warm_up);
    }
    let (mut student_seconds, mut teacher_seconds, mut tokens) = (0.0, 0.0, 0);
    for b in timed {
        student_seconds += score(student, b);
        if let Some(t) = teacher {
            teacher_seconds += score(t, b);
        }
        tokens += b.targets.numel();
    }
    let rate = |seconds: f64| if tokens > 0 && seconds > 0.0 { tokens as f64 / seconds } else { f64::NAN };
    (rate(student_seconds), rate(teacher_seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The soft loss against the definition, and its gradient: T·(softmax(s/T) − softmax(t/T))
    /// per token, over the tokens.
    #[test]
    fn the_soft_loss_is_t_squared_kl_and_its_gradient_keeps_its_size() {
        let loss = DistillLoss { temperature: 2.0, soft_weight: 0.5 };
        let student = Tensor::from_slice(&[1.0f32, 2.0, 0.5, -1.0, 0.0, 3.0]).view([1, 2, 3]).set_requires_grad(true);
        let teacher = Tensor::from_slice(&[0.0f32, 1.0, 2.0, 2.0, 0.0, 0.0]).view([1, 2, 3]);
        let soft = loss.soft_loss(&student, &teacher);
        let (s, t) = ((&student / 2.0).log_softmax(-1, Kind::Float), (&teacher / 2.0).log_softmax(-1, Kind::Float));
        let kl = (t.exp() * (&t - &s)).sum(Kind::Float) / 2.0;
        assert!((soft.double_value(&[]) - 4.0 * kl.double_value(&[])).abs() < 1e-6);
        soft.backward();
        let want = ((&student / 2.0).softmax(-1, Kind::Float) - (&teacher / 2.0).softmax(-1, Kind::Float)) * (2.0 / 2.0);
        let err = (student.grad() - want).abs().max().double_value(&[]);
        assert!(err < 1e-6, "{err}");
        // the same distribution: no soft loss
        assert!(loss.soft_loss(&teacher, &teacher).double_value(&[]).abs() < 1e-6);
        let mixed = loss.mix(&Tensor::from(3.0f32), &Tensor::from(1.0f32)).double_value(&[]);
        assert!((mixed - 2.0).abs() < 1e-12);
    }
}
