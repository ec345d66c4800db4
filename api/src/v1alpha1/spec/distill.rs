//! Knowledge distillation from a trained teacher.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::ModelSpec;

/// Knowledge distillation: the student (this job's model) learns from a teacher's soft targets.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DistillSpec {
    /// The trained model whose predictions the student learns from.
    pub teacher: TeacherSpec,
    /// Softmax temperature of teacher and student in the soft loss; above 1 it shows the student
    /// the teacher's ranking of unlikely tokens. The soft loss is scaled by temperature², so its
    /// gradient keeps its size (Hinton et al.).
    #[serde(default = "default_temperature")]
    #[schemars(range(min = 0.1, max = 100.0))]
    #[x_kube(validation = Rule::new("self >= 0.1").message("distill.temperature must be at least 0.1: the usual values are 1 to 4"))]
    pub temperature: f64,
    /// Weight of the soft (teacher) loss; the hard loss against the data gets 1 − softWeight.
    #[serde(default = "default_soft_weight")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub soft_weight: f64,
}

fn default_temperature() -> f64 {
    2.0
}
fn default_soft_weight() -> f64 {
    0.5
}

/// A teacher: its model and the checkpoint it was trained to. Its vocabulary and context must
/// be the student's.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TeacherSpec {
    /// The teacher's model, as its own job gave it (a sparse model, say).
    pub model: ModelSpec,
    /// A checkpoint of it: a step directory, or a checkpoint root whose newest complete step is
    /// used (a path in the pod: mount its claim through podTemplate.volumes), or an
    /// `s3://<bucket>/<prefix>` URI of either (such as the teacher's `checkpoint.store`), whose
    /// step is downloaded into the pod and verified before training.
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(validation = Rule::new("!self.contains('://') || (self.matches('^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^/]+)*/?$') && !self.contains('/./') && !self.contains('/../') && !self.endsWith('/.') && !self.endsWith('/..'))")
        .message("distill.teacher.checkpoint is a local path or an s3://<bucket>/<key> URI: a bucket of 3 to 63 lowercase letters, digits, dots and hyphens, then a key or prefix without empty, '.' or '..' parts (such as s3://corpora/web/part-0.jsonl); no other scheme is read"))]
    pub checkpoint: String,
}
