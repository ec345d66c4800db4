//! The pods the operator made, as its cache shows them: which TrainingJob each belongs to, and
//! which still hold their GPUs. GPUs are held by pods, whatever becomes of the TrainingJob that
//! made them, so the budgets and a deleted job's finalizer count from here.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::runtime::reflector::Store;

use crate::names::{JOB_LABEL, JOB_UID_LABEL};

/// Whether `pod` is one the operator made for TrainingJob `job` (uid `uid`) in `namespace` (the
/// pod cache holds only pods labelled as the operator's). A pod made before the uid label
/// existed is told by the job's name.
pub fn belongs_to(pod: &Pod, namespace: &str, job: &str, uid: &str) -> bool {
    let labels = pod.labels();
    pod.namespace().as_deref() == Some(namespace)
        && match labels.get(JOB_UID_LABEL) {
            Some(u) => u == uid,
            None => labels.get(JOB_LABEL).map(String::as_str) == Some(job),
        }
}

/// Whether a pod still holds what it was given: it is not Succeeded or Failed (a pod being
/// deleted holds its GPUs until its containers have stopped).
pub fn holds(pod: &Pod) -> bool {
    !matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

/// The pods of TrainingJob `job` (uid `uid`) in `namespace` that still hold their GPUs.
pub fn live_pods_of(pods: &Store<Pod>, namespace: &str, job: &str, uid: &str) -> Vec<Arc<Pod>> {
    pods.state().into_iter().filter(|p| belongs_to(p, namespace, job, uid) && holds(p)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodStatus;
    use kube::api::ObjectMeta;

    fn pod(labels: &[(&str, &str)], phase: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some("ml".into()),
                labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
                ..Default::default()
            },
            status: Some(PodStatus { phase: Some(phase.into()), ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn a_pod_belongs_to_the_job_of_its_uid_and_holds_until_it_ends() {
        let ours = pod(&[(JOB_LABEL, "lm"), (JOB_UID_LABEL, "u-1")], "Running");
        assert!(belongs_to(&ours, "ml", "lm", "u-1"));
        // a job made again under the same name is another job
        assert!(!belongs_to(&ours, "ml", "lm", "u-2"));
        assert!(!belongs_to(&ours, "other", "lm", "u-1"));
        // made before the uid label: told by the name
        assert!(belongs_to(&pod(&[(JOB_LABEL, "lm")], "Running"), "ml", "lm", "u-2"));
        assert!(holds(&ours) && holds(&pod(&[], "Pending")));
        assert!(!holds(&pod(&[], "Succeeded")) && !holds(&pod(&[], "Failed")));
    }
}
