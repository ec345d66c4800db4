//! The reaper: what the operator made and nothing owns any more is deleted. An attempt Job whose
//! TrainingJob is gone (its owner reference stripped by an orphaning delete or an edit, its
//! finalizer removed by hand) and a pod whose Job is gone would otherwise run on, outside every
//! budget and never billed. It reads only the operator's caches, so a cluster at rest costs the
//! API server nothing; an object is deleted only when two scans in a row found it orphaned, so
//! a cache that saw a new pod before its Job cannot make it delete a live one.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, Preconditions};
use kube::runtime::reflector::Store;
use kube::{Api, Client, ResourceExt};
use tracing::{info, warn};

use frugal_api::TrainingJob;
use kube::core::DeserializeGuard;

use crate::metrics::Metrics;
use crate::names::{JOB_LABEL, JOB_UID_LABEL};
use crate::synced::Synced;

/// How often the caches are scanned.
pub const SCAN_INTERVAL: Duration = Duration::from_secs(10);

/// The TrainingJob an object the operator made says it belongs to: its controller owner's uid,
/// else its uid label, else (made before that label) its job label's name.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Whose {
    Uid(String),
    Name(String),
    Nobody,
}

fn whose(meta: &kube::api::ObjectMeta) -> Whose {
    let controller = meta.owner_references.iter().flatten().find(|o| o.controller == Some(true) && o.kind == "TrainingJob");
    let label = |k: &str| meta.labels.as_ref().and_then(|l| l.get(k)).cloned();
    match (controller, label(JOB_UID_LABEL), label(JOB_LABEL)) {
        (Some(o), _, _) => Whose::Uid(o.uid.clone()),
        (None, Some(uid), _) => Whose::Uid(uid),
        (None, None, Some(name)) => Whose::Name(name),
        _ => Whose::Nobody,
    }
}

/// An object by `(namespace, name, uid)`.
type Found = (String, String, String);

/// The orphans in the caches now: attempt Jobs whose TrainingJob does not exist, and pods whose
/// Job does not exist.
fn orphans(training_jobs: &[Arc<DeserializeGuard<TrainingJob>>], jobs: &[Arc<Job>], pods: &[Arc<Pod>]) -> (Vec<Found>, Vec<Found>) {
    let tj_uids: HashSet<String> = training_jobs.iter().filter_map(|tj| tj.uid()).collect();
    let tj_names: HashSet<(String, String)> = training_jobs.iter().map(|tj| (tj.namespace().unwrap_or_default(), tj.name_any())).collect();
    let key =
        |m: &kube::api::ObjectMeta| (m.namespace.clone().unwrap_or_default(), m.name.clone().unwrap_or_default(), m.uid.clone().unwrap_or_default());
    let orphan_jobs = jobs
        .iter()
        .filter(|j| match whose(&j.metadata) {
            Whose::Uid(uid) => !tj_uids.contains(&uid),
            Whose::Name(name) => !tj_names.contains(&(j.namespace().unwrap_or_default(), name)),
            Whose::Nobody => true,
        })
        .map(|j| key(&j.metadata))
        .collect();
    let job_uids: HashSet<String> = jobs.iter().filter_map(|j| j.uid()).collect();
    let orphan_pods = pods
        .iter()
        .filter(|p| crate::pods::holds(p) && p.metadata.deletion_timestamp.is_none())
        .filter(|p| !p.owner_references().iter().any(|o| o.kind == "Job" && job_uids.contains(&o.uid)))
        .map(|p| key(&p.metadata))
        .collect();
    (orphan_jobs, orphan_pods)
}

/// Scans the caches every [`SCAN_INTERVAL`] until `shutdown`, deleting what was orphaned at two
/// scans in a row.
pub async fn run(
    client: Client,
    training_jobs: Store<DeserializeGuard<TrainingJob>>,
    jobs: Store<Job>,
    pods: Store<Pod>,
    synced: [Synced; 3],
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    for cache in &synced {
        tokio::select! {
            r = cache.wait() => if r.is_err() { return },
            _ = &mut shutdown => return,
        }
    }
    let mut suspects: HashSet<String> = HashSet::new();
    loop {
        let (orphan_jobs, orphan_pods) = orphans(&training_jobs.state(), &jobs.state(), &pods.state());
        let mut now_suspect = HashSet::new();
        for (kind, list) in [("Job", orphan_jobs), ("Pod", orphan_pods)] {
            for (namespace, name, uid) in list {
                if suspects.contains(&uid) {
                    info!(kind, namespace, name, "deleting what the operator made and nothing owns any more");
                    let params = DeleteParams {
                        preconditions: Some(Preconditions { uid: Some(uid.clone()), resource_version: None }),
                        ..DeleteParams::background()
                    };
                    let result = match kind {
                        "Job" => Api::<Job>::namespaced(client.clone(), &namespace).delete(&name, &params).await.map(|_| ()),
                        _ => Api::<Pod>::namespaced(client.clone(), &namespace).delete(&name, &params).await.map(|_| ()),
                    };
                    match result {
                        Ok(()) => metrics.reaped.get_or_create(&crate::metrics::KindLabels { kind }).inc(),
                        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => 0,
                        Err(e) => {
                            warn!(kind, namespace, name, "deleting an orphan: {e}");
                            0
                        }
                    };
                }
                now_suspect.insert(uid);
            }
        }
        suspects = now_suspect;
        tokio::select! {
            _ = tokio::time::sleep(SCAN_INTERVAL) => {},
            _ = &mut shutdown => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use kube::api::ObjectMeta;

    fn meta(name: &str, uid: &str, owner: Option<(&str, &str)>, labels: &[(&str, &str)]) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some("ml".into()),
            uid: Some(uid.into()),
            owner_references: owner
                .map(|(kind, uid)| vec![OwnerReference { kind: kind.into(), uid: uid.into(), controller: Some(true), ..Default::default() }]),
            labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            ..Default::default()
        }
    }

    #[test]
    fn jobs_without_their_training_job_and_pods_without_their_job_are_orphans() {
        let mut tj = crate::training_job::validate::tests::training_job(1);
        tj.metadata = meta("lm", "tj-1", None, &[]);
        // the cache holds the jobs as the watch decoded them; one that does not decode still
        // owns what it made
        let tj = Arc::new(DeserializeGuard(Ok(tj)));
        let undecodable = Arc::new(DeserializeGuard::<TrainingJob>(Err(kube::core::error_boundary::InvalidObject {
            error: "spec.resources.gpus: invalid type".into(),
            metadata: meta("lm2", "tj-2", None, &[]),
        })));
        let jobs = vec![
            // owned, or with its reference stripped but its uid label left: lm's
            Arc::new(Job { metadata: meta("lm-a1", "j-1", Some(("TrainingJob", "tj-1")), &[]), ..Default::default() }),
            Arc::new(Job { metadata: meta("lm-a2", "j-2", None, &[(JOB_UID_LABEL, "tj-1")]), ..Default::default() }),
            // a deleted job's, whose reference was stripped
            Arc::new(Job { metadata: meta("old-a1", "j-3", None, &[(JOB_UID_LABEL, "tj-0"), (JOB_LABEL, "old")]), ..Default::default() }),
            // made before the uid label: by name
            Arc::new(Job { metadata: meta("lm-a3", "j-4", None, &[(JOB_LABEL, "lm")]), ..Default::default() }),
            Arc::new(Job { metadata: meta("lm2-a1", "j-5", Some(("TrainingJob", "tj-2")), &[]), ..Default::default() }),
        ];
        let pod = |name: &str, uid: &str, owner: Option<&str>| {
            Arc::new(Pod { metadata: meta(name, uid, owner.map(|o| ("Job", o)), &[]), ..Default::default() })
        };
        let pods = vec![pod("lm-a1-0", "p-1", Some("j-1")), pod("old-a0-0", "p-2", Some("j-gone")), pod("bare", "p-3", None)];
        let (orphan_jobs, orphan_pods) = orphans(&[tj, undecodable], &jobs, &pods);
        let uids = |v: Vec<Found>| v.into_iter().map(|(_, _, u)| u).collect::<Vec<_>>();
        assert_eq!(uids(orphan_jobs), ["j-3"]);
        assert_eq!(uids(orphan_pods), ["p-2", "p-3"]);
    }
}
