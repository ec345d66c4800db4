//! Evaluating the model a run trains. A worker that holds the whole model evaluates it directly
//! ([`GptModel`]). Otherwise the evaluation (validation loss, bits per byte, perplexity and
//! the job's zero-shot sets, [`crate::eval::evaluate`]) runs on the first and on the last stage
//! at once, over the same batches: both hold the data, and which inputs an evaluation scores
//! never depends on the scores. Each of its forwards goes through the chain: the first stage
//! embeds the inputs and sends its activations on, stages in between pass theirs on, and the last
//! stage turns them into log-probabilities. Only the last stage's result means anything (the
//! first stage's run scores placeholders); the engine then shares what the stages must agree on
//! (whether the quality target was reached) with one all-reduce. A distilled run's start goes
//! the same way: the last stage times the student's forwards through the chain beside its
//! teacher's and evaluates the teacher, which it holds whole.

use super::transport::{Message, TransportError};
use super::worker::Worker;
use crate::data::Data;
use crate::distill::{self, Teacher};
use crate::eval::{self, GptModel, LanguageModel};
use anyhow::Result;
use frugal_api::v1alpha1::{DistillationStatus, QualityStatus};
use std::cell::RefCell;
use tch::{Device, Kind, Tensor};

/// The micro-batch number of an evaluation forward's activations.
const EVAL_FORWARD: u32 = u32::MAX - 1;
/// Sent by the first stage after its evaluation's last forward; every stage passes it on.
const EVAL_END: u32 = u32::MAX;

/// One stage seen as a [`LanguageModel`]: each call is one forward through the whole chain.
struct StageLm<'a> {
    worker: RefCell<&'a mut Worker>,
    /// The first failure; later calls send nothing and the evaluation returns it.
    failed: RefCell<Option<anyhow::Error>>,
}

impl StageLm<'_> {
    /// One forward through the chain: the last stage's log-probabilities [B, T, V] on its
    /// device, `None` on the first stage or after a failure (recorded for the evaluation).
    fn forward(&self, inputs: &Tensor) -> Option<Tensor> {
        if self.failed.borrow().is_some() {
            return None;
        }
        match self.worker.borrow_mut().eval_forward(inputs) {
            Ok(log_probs) => log_probs,
            Err(e) => {
                *self.failed.borrow_mut() = Some(e);
                None
            }
        }
    }
}

impl LanguageModel for StageLm<'_> {
    fn log_probs(&self, inputs: &Tensor) -> Tensor {
        match self.forward(inputs) {
            Some(log_probs) => log_probs.to_device(Device::Cpu),
            None => {
                // A placeholder of the right shape that allocates one element, not B × T × V.
                let (b, t) = inputs.size2().expect("token ids [B, T]");
                let v = self.worker.borrow().cfg.model.vocab_size;
                Tensor::zeros([1, 1, 1], (Kind::Float, Device::Cpu)).expand([b, t, v], false)
            }
        }
    }

    fn context(&self) -> i64 {
        self.worker.borrow().cfg.model.seq_len
    }

    fn score(&self, inputs: &Tensor, targets: &Tensor) -> (Tensor, Tensor) {
        match self.forward(inputs) {
            Some(log_probs) => eval::score_log_probs(&log_probs, targets),
            None => (Tensor::zeros(targets.size(), (Kind::Float, Device::Cpu)), Tensor::zeros(targets.size(), (Kind::Bool, Device::Cpu))),
        }
    }
}

impl Worker {
    /// The whole model as a [`LanguageModel`]: a one-stage worker's (a stage's slice is not one).
    pub fn language_model(&self) -> GptModel<'_> {
        assert!(self.is_first() && self.is_last(), "stage {} holds a slice of the model, not a language model", self.index());
        GptModel { model: &self.model, params: &self.params, device: self.device }
    }

    /// A one-stage worker's mean validation cross-entropy now, nats per token.
    pub fn validation_loss(&self) -> f64 {
        let data = self.data.as_ref().expect("the whole model's worker holds the data");
        eval::validate(&self.language_model(), data, self.cfg.train.micro_batch_size.max(16)).loss()
    }

    /// Evaluates the model at this step: validation loss, bits per byte, perplexity and the
    /// job's zero-shot sets ([`Worker::evaluation`]). Every stage calls it at the same step; the
    /// last stage of the first replica gets the result, the others `None` (every replica holds
    /// the same weights, so the others go straight on to the agreement that follows).
    pub fn evaluate(&mut self) -> Result<Option<QualityStatus>> {
        if self.replica > 0 {
            return Ok(None);
        }
        let batch = self.cfg.train.micro_batch_size.max(16);
        let (seed, step, sets) = (self.cfg.train.seed, self.step, self.evaluation.sets.clone());
        self.through_chain(|lm, data, _| eval::evaluate(lm, data, &sets, seed, step, batch))
    }

    /// Distilling: the teacher evaluated as [`Worker::evaluate`] evaluates the student, and
    /// both models' inference throughput, the student's through the chain
    /// ([`Teacher::report`]). Every stage calls it at the same point; the last stage of the
    /// first replica gets the result, the others `None`.
    pub fn distillation(&mut self) -> Result<Option<DistillationStatus>> {
        if self.cfg.distill.is_none() || self.replica > 0 {
            return Ok(None);
        }
        let evaluation = self.evaluation.clone();
        let (seed, batch) = (self.cfg.train.seed, self.cfg.train.micro_batch_size.max(16));
        let status = self.through_chain(|lm, data, teacher| match teacher {
            Some(teacher) => teacher.report(lm, data, &evaluation, seed, batch).map(Some),
            // the first stage sends the student's forwards that the last stage times
            None => {
                let _ = distill::tokens_per_second(lm, None, &distill::throughput_batches(data, batch));
                Ok(None)
            }
        })?;
        Ok(status.flatten())
    }

    /// Runs `f` on the worker's whole model; or, with stages, on the first and on the last stage
    /// at once, over the same data, with the stage
    /// as a [`LanguageModel`] whose every call is one forward through the chain, and the teacher
    /// where the stage holds one; the stages between relay the forwards. The last stage's
    /// result, `None` on the others.
    fn through_chain<T>(&mut self, f: impl FnOnce(&dyn LanguageModel, &Data, Option<&Teacher>) -> Result<T>) -> Result<Option<T>> {
        let (first, last) = (self.is_first(), self.is_last());
        if first && last {
            let data = self.data.as_ref().expect("the whole model's worker holds the data");
            return f(&self.language_model(), data, self.teacher.as_ref()).map(Some);
        }
        if !first && !last {
            self.relay_evaluation()?;
            return Ok(None);
        }
        let data = self.data.take().expect("the first and the last stage hold the data");
        let teacher = self.teacher.take();
        let lm = StageLm { worker: RefCell::new(&mut *self), failed: RefCell::new(None) };
        let result = f(&lm, &data, teacher.as_ref());
        let failed = lm.failed.into_inner();
        (self.data, self.teacher) = (Some(data), teacher);
        if let Some(e) = failed {
            return Err(e);
        }
        let value = result?;
        if !last {
            let end = Tensor::zeros([1], (Kind::Float, Device::Cpu));
            self.down().send(Message::Activation { micro_batch: EVAL_END, tensor: end })?;
        } else if !first {
            let _end = Self::recv_tensor(self.up(), "activation", Some(EVAL_END))?;
        }
        Ok(last.then_some(value))
    }

    /// One evaluation forward of `inputs` (token ids, which the first and the last stage both
    /// read): the log-probabilities [B, T, V] on this stage's device from the last stage, `None`
    /// from others.
    fn eval_forward(&mut self, inputs: &Tensor) -> Result<Option<Tensor>> {
        let x = if self.is_first() {
            inputs.to_device(self.device)
        } else {
            let x = Self::recv_tensor(self.up(), "activation", Some(EVAL_FORWARD))?;
            let (want, got) = (inputs.size(), x.size());
            anyhow::ensure!(
                got.len() == 3 && got[..2] == want[..],
                "stage {}: evaluation out of step: activations {got:?} arrived for token ids {want:?}",
                self.index()
            );
            x.to_device(self.device)
        };
        let y = self.model.eval_slice(&self.params, &x);
        if self.is_last() {
            return Ok(Some(y.log_softmax(-1, Kind::Float)));
        }
        self.down().send(Message::Activation { micro_batch: EVAL_FORWARD, tensor: y })?;
        Ok(None)
    }

    /// A stage between the first and the last: runs every evaluation forward that arrives and
    /// passes the result on, until the end marker (which it passes on too).
    fn relay_evaluation(&mut self) -> Result<()> {
        loop {
            let peer = self.up().peer();
            match self.up().recv()? {
                Message::Activation { micro_batch: EVAL_END, tensor } => {
                    self.down().send(Message::Activation { micro_batch: EVAL_END, tensor })?;
                    return Ok(());
                }
                Message::Activation { micro_batch: EVAL_FORWARD, tensor } => {
                    let x = tensor.to_device(self.device);
                    let y = self.model.eval_slice(&self.params, &x);
                    self.down().send(Message::Activation { micro_batch: EVAL_FORWARD, tensor: y })?;
                }
                other => {
                    let detail = match other {
                        Message::Activation { micro_batch, .. } => format!("expected an evaluation activation, received micro-batch {micro_batch}"),
                        other => format!("expected an evaluation activation, received {}", other.name()),
                    };
                    return Err(TransportError::Protocol { peer, detail }.into());
                }
            }
        }
    }
}
