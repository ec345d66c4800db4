//! The soft loss of knowledge distillation, as the head computes it: the student's softened
//! distribution against a teacher's (`distill.rs` loads and runs the teacher).

use crate::config::DistillLoss;
use tch::{Kind, Reduction, Tensor};

impl DistillLoss {
    /// Whether the teacher's predictions enter the loss. With a soft weight of 0 the teacher
    /// does not run in training, and the run is the run without distillation, bit for bit.
    pub fn runs_teacher(&self) -> bool {
        self.soft_weight > 0.0
    }

    /// T²·KL(softmax(teacher/T) ‖ softmax(student/T)), the mean over tokens, in fp32; both
    /// logits [.., V].
    pub fn soft_loss(&self, student: &Tensor, teacher: &Tensor) -> Tensor {
        let v = *student.size().last().expect("logits [.., V]");
        let t = self.temperature;
        let softened = |logits: &Tensor| (logits.view([-1, v]).to_kind(Kind::Float) / t).log_softmax(-1, Kind::Float);
        let (student, teacher) = (softened(student), softened(teacher));
        let tokens = student.size()[0];
        // Σ p_teacher · (log p_teacher − log p_student), over the vocabulary and the tokens
        student.kl_div(&teacher, Reduction::Sum, true) * (t * t / tokens as f64)
    }

    /// The loss to differentiate: (1 − w)·`cross_entropy` + w·`soft`.
    pub fn mix(&self, cross_entropy: &Tensor, soft: &Tensor) -> Tensor {
        cross_entropy * (1.0 - self.soft_weight) + soft * self.soft_weight
    }
}

/// The teacher's predictions for one micro-batch, as the head's loss reads them.
pub struct SoftTargets {
    /// [B, T, V] fp32, without a graph.
    pub logits: Tensor,
    pub loss: DistillLoss,
}
