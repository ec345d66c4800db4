//! The apply stage: sends the children the build stage made, the applied kinds with server-side
//! apply under one field manager, and creates what must be created once (the token Secret, each
//! attempt's Job); then carries out the rest of the lifecycle's action (a stop, a delete).
//! Server-side apply does not prune, so what is no longer wanted is deleted here by name.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, PartialObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::children::{Children, applied_kinds};
use super::error::Error;
use super::lifecycle::Action;
use super::observe::StopReason;
use super::plan::PlannedJob;
use super::rejection;
use super::validate::ValidJob;
use crate::names::{FIELD_MANAGER, Names, STOP_REASON_ANNOTATION};

fn ssa<K>(client: &Client, namespace: &str) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    Api::namespaced(client.clone(), namespace)
}

macro_rules! watched {
    ($($field:ident: $kind:ty = $name:ident),* $(,)?) => {
        /// The watches' caches of the applied kinds of children: metadata only, and only the
        /// operator's own (selected by the managed-by label).
        #[derive(Clone)]
        pub struct Watched {
            $(pub $field: Store<PartialObjectMeta<$kind>>,)*
        }
    };
}
applied_kinds!(watched);

/// What this process last applied of each child, and the watches that show whether it still
/// stands. A child the watch shows at the resourceVersion its last apply returned, with the same
/// content to apply, is not applied again: a pass that changes nothing sends nothing. A child
/// deleted or edited by anyone else changes in the watch, wakes its job and is applied again.
/// After a restart everything is applied once.
#[derive(Clone)]
pub struct AppliedChildren {
    pub watched: Watched,
    /// `<namespace>/<job>/<kind>/<name>` → (digest of the applied body, resourceVersion after it).
    last: Arc<Mutex<BTreeMap<String, (u64, String)>>>,
}

impl AppliedChildren {
    pub fn new(watched: Watched) -> Self {
        Self { watched, last: Arc::default() }
    }

    /// Forgets what was applied for a job (it is being deleted).
    pub fn forget(&self, namespace: &str, job: &str) {
        let prefix = format!("{namespace}/{job}/");
        self.last.lock().unwrap().retain(|k, _| !k.starts_with(&prefix));
    }
}

/// The child as it is applied (server-side apply needs its type in the body), and a digest of it.
pub(crate) fn applied_body<K>(object: &K) -> (serde_json::Value, u64)
where
    K: Resource<DynamicType = ()> + Serialize,
{
    let mut value = serde_json::to_value(object).expect("a child serializes");
    value["apiVersion"] = K::api_version(&()).into();
    value["kind"] = K::kind(&()).into();
    // serde_json's maps are ordered, so the same child always serializes to the same text
    let digest = fnv1a(value.to_string().as_bytes());
    (value, digest)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// True when the last apply sent this same body and the watch still shows what it returned.
pub(crate) fn up_to_date(last: Option<&(u64, String)>, watched_version: Option<&str>, digest: u64) -> bool {
    matches!((last, watched_version), (Some((d, v)), Some(w)) if *d == digest && v == w)
}

/// Why a child could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    /// An object of a child's name exists that this TrainingJob did not make.
    #[error(
        "{kind} {name} already exists and was not made for this TrainingJob (it is not its controller owner): the operator never changes or deletes an object it did not create. Delete or rename that {kind}, or give the TrainingJob another name"
    )]
    NameTaken { kind: &'static str, name: String },
}

/// Whether this TrainingJob (uid `uid`) is the controller owner of the object of `meta`.
pub fn controlled_by(meta: &kube::api::ObjectMeta, uid: &str) -> bool {
    meta.owner_references.iter().flatten().any(|o| o.controller == Some(true) && o.uid == uid)
}

/// Applies one child unless it is up to date; true when it sent the apply. A child that does
/// not exist yet is created (never applied over an object that appeared meanwhile), and one that
/// exists is changed only if this job controls it.
async fn apply_one<K>(
    client: &Client,
    names: &Names,
    uid: &str,
    object: &K,
    store: &Store<PartialObjectMeta<K>>,
    applied: &AppliedChildren,
) -> Result<bool, ApplyError>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + k8s_openapi::Resource
        + Serialize
        + DeserializeOwned
        + Clone
        + std::fmt::Debug,
{
    let (namespace, name) = (&names.namespace, object.name_any());
    let (value, digest) = applied_body(object);
    let key = format!("{namespace}/{}/{}/{name}", names.job, K::kind(&()));
    let watched = store.get(&ObjectRef::new(&name).within(namespace));
    if up_to_date(applied.last.lock().unwrap().get(&key), watched.as_ref().and_then(|m| m.resource_version()).as_deref(), digest) {
        return Ok(false);
    }
    let api: Api<K> = ssa(client, namespace);
    let taken = || ApplyError::NameTaken { kind: <K as k8s_openapi::Resource>::KIND, name: name.clone() };
    let controlled = match &watched {
        Some(m) => controlled_by(&m.metadata, uid),
        None => match api.create(&PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }, object).await {
            Ok(created) => {
                if let Some(version) = created.resource_version() {
                    applied.last.lock().unwrap().insert(key, (digest, version));
                }
                return Ok(true);
            }
            // there already: the cache has not caught up with an earlier pass, or someone else's
            Err(kube::Error::Api(s)) if s.code == 409 => api.get_metadata_opt(&name).await?.is_some_and(|m| controlled_by(&m.metadata, uid)),
            Err(e) => return Err(e.into()),
        },
    };
    if !controlled {
        return Err(taken());
    }
    let patched = api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&value)).await?;
    if let Some(version) = patched.resource_version() {
        applied.last.lock().unwrap().insert(key, (digest, version));
    }
    Ok(true)
}

/// Sends what the build stage made and carries out the lifecycle's action: the applied kinds
/// that are not already as applied, the token Secret unless the job has one, the attempt Job the
/// lifecycle starts; or the stop or delete it asks for.
pub async fn apply(client: &Client, job: &PlannedJob, children: &Children, action: &Action, applied: &AppliedChildren) -> Result<(), Error> {
    let rejected = |e| match e {
        ApplyError::Kube(e) => rejection::classify(e, None),
        taken @ ApplyError::NameTaken { .. } => Error::NameTaken(taken.to_string()),
    };
    apply_children(client, &job.valid.names, &job.valid.uid, children, applied).await.map_err(rejected)?;
    ensure_secret(client, &job.valid, &children.secret, applied).await.map_err(rejected)?;
    act(client, job, children.attempt_job.as_ref(), action).await
}

/// Server-side applies the children that follow the spec and are not already as applied;
/// returns how many it sent.
async fn apply_children(client: &Client, names: &Names, uid: &str, c: &Children, applied: &AppliedChildren) -> Result<usize, ApplyError> {
    macro_rules! apply_each {
        ($($field:ident: $kind:ty = $name:ident),* $(,)?) => {
            [$(apply_one(client, names, uid, &c.$field, &applied.watched.$field, applied).await?,)*]
        };
    }
    let sent = applied_kinds!(apply_each);
    Ok(sent.into_iter().filter(|s| *s).count())
}

/// Creates the token Secret unless this job has one: the token is never rotated while the job
/// lives. Secrets are neither listed nor watched (the operator's identity may not): a Secret of
/// its name is read once, by name, and taken only if this job made it.
async fn ensure_secret(client: &Client, job: &ValidJob, secret: &Secret, applied: &AppliedChildren) -> Result<(), ApplyError> {
    let namespace = &job.names.namespace;
    let name = job.names.secret();
    let key = format!("{namespace}/{}/Secret/{name}", job.names.job);
    if applied.last.lock().unwrap().contains_key(&key) {
        return Ok(());
    }
    let api: Api<Secret> = ssa(client, namespace);
    let existing = match api.get_metadata_opt(&name).await? {
        Some(m) => m.metadata,
        None => {
            match api.create(&PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }, secret).await {
                Ok(created) => created.metadata,
                // made meanwhile: by whom is read again
                Err(kube::Error::Api(s)) if s.code == 409 => api.get_metadata_opt(&name).await?.map(|m| m.metadata).unwrap_or_default(),
                Err(e) => return Err(e.into()),
            }
        }
    };
    if !controlled_by(&existing, &job.uid) {
        return Err(ApplyError::NameTaken { kind: "Secret", name });
    }
    applied.last.lock().unwrap().insert(key, (0, existing.resource_version.unwrap_or_default()));
    Ok(())
}

async fn create_once<K>(api: &Api<K>, object: &K) -> Result<(), kube::Error>
where
    K: Resource + Serialize + DeserializeOwned + Clone + std::fmt::Debug,
{
    match api.create(&PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }, object).await {
        Ok(_) => Ok(()),
        // created by an earlier pass whose view had not caught up yet
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

async fn delete_opt<K>(api: &Api<K>, name: &str) -> Result<(), kube::Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Carries out a lifecycle action: creates the attempt Job it starts (built with the other
/// children), or stops or deletes an attempt.
async fn act(client: &Client, job: &PlannedJob, attempt_job: Option<&Job>, action: &Action) -> Result<(), Error> {
    let names = &job.valid.names;
    let jobs: Api<Job> = ssa(client, &names.namespace);
    let result = match action {
        Action::Nothing => Ok(()),
        // a Job is created, never applied again: Kueue owns its suspend and scheduling fields
        Action::Create(_) => match attempt_job {
            Some(attempt_job) => {
                let overrides = job.valid.spec.pod_template.clone().unwrap_or_default();
                return create_once(&jobs, attempt_job).await.map_err(|e| rejection::classify(e, Some((attempt_job, &overrides))));
            }
            None => Ok(()),
        },
        Action::Stop(attempt, reason) => stop(&jobs, &names.attempt_job(*attempt), *reason).await,
        Action::Delete(attempt) => delete_opt(&jobs, &names.attempt_job(*attempt)).await,
    };
    result.map_err(|e| rejection::classify(e, None))
}

/// Stops a started attempt: the annotation records why, and a deadline already passed makes the
/// Job controller terminate its pods gracefully (SIGTERM, then the grace period for a
/// checkpoint) and fail the Job. Neither field is one Kueue owns.
async fn stop(jobs: &Api<Job>, name: &str, reason: StopReason) -> Result<(), kube::Error> {
    let patch = serde_json::json!({
        "metadata": {"annotations": {STOP_REASON_ANNOTATION: reason.as_str()}},
        "spec": {"activeDeadlineSeconds": 1},
    });
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    jobs.patch(name, &params, &Patch::Merge(&patch)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Settings;
    use crate::training_job::children::build_children;
    use crate::training_job::children::tests::planned;
    use kube::runtime::reflector;

    #[test]
    fn the_same_child_has_the_same_digest_and_a_changed_one_another() {
        let job = planned(1);
        let (a, b) = (build_children(&job, None, &Settings::default()), build_children(&job, None, &Settings::default()));
        assert_eq!(applied_body(&a.config_map).1, applied_body(&b.config_map).1);
        let mut changed = b.config_map.clone();
        changed.data.get_or_insert_with(Default::default).insert("x".into(), "y".into());
        assert_ne!(applied_body(&a.config_map).1, applied_body(&changed).1);
        let (body, _) = applied_body(&a.service);
        assert_eq!((body["apiVersion"].as_str(), body["kind"].as_str()), (Some("v1"), Some("Service")));
    }

    #[test]
    fn a_child_is_skipped_only_as_last_applied_and_still_watched_so() {
        let last = (7u64, "100".to_string());
        assert!(up_to_date(Some(&last), Some("100"), 7));
        // never applied by this process (a restart), or the content to apply changed
        assert!(!up_to_date(None, Some("100"), 7));
        assert!(!up_to_date(Some(&last), Some("100"), 8));
        // deleted, or not seen by the watch yet
        assert!(!up_to_date(Some(&last), None, 7));
        // changed by someone else since
        assert!(!up_to_date(Some(&last), Some("101"), 7));
    }

    #[test]
    fn forgetting_a_job_drops_only_its_entries() {
        macro_rules! empty {
            ($($field:ident: $kind:ty = $name:ident),* $(,)?) => {
                Watched { $($field: reflector::store().0,)* }
            };
        }
        let applied = AppliedChildren::new(applied_kinds!(empty));
        for key in ["ns/lm/ConfigMap/lm-config", "ns/lm/Service/lm", "ns/lm2/Service/lm2", "other/lm/Service/lm"] {
            applied.last.lock().unwrap().insert(key.into(), (1, "1".into()));
        }
        applied.forget("ns", "lm");
        let left: Vec<String> = applied.last.lock().unwrap().keys().cloned().collect();
        assert_eq!(left, ["ns/lm2/Service/lm2", "other/lm/Service/lm"]);
    }
}
