//! Where checkpoints are written and how many are kept.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Where checkpoints go.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointSpec {
    /// A PersistentVolumeClaim mounted at `path`. A job of several pods needs a ReadWriteMany
    /// claim; unset means an emptyDir, lost with the pod (no resume across attempts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub claim_name: Option<String>,
    /// Directory the checkpoints are written under (where the claim is mounted).
    #[serde(default = "default_checkpoint_path")]
    #[schemars(length(min = 1, max = 1024))]
    pub path: String,
    /// With a claim: the directory under `path` this job's steps go to. Unset, it is
    /// `<namespace>/<job name>`, so that jobs sharing a claim never prune or resume each other's
    /// steps. Name another job's (`<namespace>/<its name>`, or what it set here) to start from
    /// its checkpoint; `.` writes to the claim's root. Relative, without `..`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self == '.' || (!self.startsWith('/') && !self.split('/').exists(s, s == '..' || s == '' || s == '.'))")
        .message("checkpoint.subPath is a relative directory under checkpoint.path (such as team/lm), without '..', '.' or empty parts; '.' alone means the claim's root"))]
    pub sub_path: Option<String>,
    /// Object storage each committed step is uploaded to (while training continues) and a run
    /// resumes from when `path` holds no newer step: checkpoints that outlive the node without
    /// a claim. A step there is complete once its `MANIFEST.json` is, which is uploaded last;
    /// `keep` applies there too. One job per prefix: jobs sharing one prune each other's steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<super::ObjectStoreSpec>,
    /// Complete checkpoints kept; older ones are deleted.
    #[serde(default = "default_keep")]
    #[schemars(range(min = 1, max = 100))]
    pub keep: i32,
}

fn default_checkpoint_path() -> String {
    "/checkpoints".into()
}

impl CheckpointSpec {
    /// The directory the trainer of job `name` in `namespace` writes its steps to: `path`
    /// itself without a claim (an emptyDir is the pod's own), else `path/subPath`, by default
    /// `path/<namespace>/<name>`.
    pub fn directory(&self, namespace: &str, name: &str) -> String {
        let root = self.path.trim_end_matches('/');
        match (&self.claim_name, self.sub_path.as_deref()) {
            (None, _) | (Some(_), Some(".")) => self.path.clone(),
            (Some(_), Some(sub)) => format!("{root}/{sub}"),
            (Some(_), None) => format!("{root}/{namespace}/{name}"),
        }
    }
}
fn default_keep() -> i32 {
    2
}

impl Default for CheckpointSpec {
    fn default() -> Self {
        Self { claim_name: None, path: default_checkpoint_path(), sub_path: None, store: None, keep: default_keep() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claims_checkpoints_go_to_the_jobs_own_directory_unless_it_names_one() {
        let mut c = CheckpointSpec::default();
        // an emptyDir is the pod's own
        assert_eq!(c.directory("ml", "lm"), "/checkpoints");
        c.claim_name = Some("ckpt".into());
        assert_eq!(c.directory("ml", "lm"), "/checkpoints/ml/lm");
        c.sub_path = Some("ml/teacher".into());
        assert_eq!(c.directory("ml", "lm"), "/checkpoints/ml/teacher");
        c.sub_path = Some(".".into());
        assert_eq!(c.directory("ml", "lm"), "/checkpoints");
        c.path = "/ckpt/".into();
        c.sub_path = None;
        assert_eq!(c.directory("ml", "lm"), "/ckpt/ml/lm");
    }
}
