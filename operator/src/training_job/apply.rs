//! The apply stage: writes children with server-side apply under one field manager, creates
//! what must be created once (the token Secret, each attempt's Job), and carries out the
//! lifecycle's action. Server-side apply does not prune, so what is no longer wanted is deleted
//! here by name.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{DeleteParams, PartialObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::build::{Children, build_job, build_secret, new_token};
use super::error::Error;
use super::lifecycle::Action;
use super::observe::StopReason;
use super::plan::PlannedJob;
use super::rejection;
use crate::names::{FIELD_MANAGER, Names, STOP_REASON_ANNOTATION};
use crate::settings::Settings;

fn ssa<K>(client: &Client, namespace: &str) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    Api::namespaced(client.clone(), namespace)
}

/// What the operator's watches have seen of its children (metadata only, selected by the
/// managed-by label), and what it last applied. A child the watch shows at the resourceVersion
/// its last apply returned, with the same content to apply, is not applied again: a pass that
/// changes nothing sends nothing. A child deleted or edited by anyone else changes in the
/// watch, wakes its job and is applied again. After a restart everything is applied once.
#[derive(Clone)]
pub struct Seen {
    pub service_accounts: Store<PartialObjectMeta<ServiceAccount>>,
    pub roles: Store<PartialObjectMeta<Role>>,
    pub role_bindings: Store<PartialObjectMeta<RoleBinding>>,
    pub services: Store<PartialObjectMeta<Service>>,
    pub config_maps: Store<PartialObjectMeta<ConfigMap>>,
    pub secrets: Store<PartialObjectMeta<Secret>>,
    /// `<namespace>/<job>/<kind>/<name>` → (digest of the applied body, resourceVersion after it).
    applied: Arc<Mutex<BTreeMap<String, (u64, String)>>>,
}

impl Seen {
    pub fn new(
        service_accounts: Store<PartialObjectMeta<ServiceAccount>>,
        roles: Store<PartialObjectMeta<Role>>,
        role_bindings: Store<PartialObjectMeta<RoleBinding>>,
        services: Store<PartialObjectMeta<Service>>,
        config_maps: Store<PartialObjectMeta<ConfigMap>>,
        secrets: Store<PartialObjectMeta<Secret>>,
    ) -> Self {
        Self { service_accounts, roles, role_bindings, services, config_maps, secrets, applied: Arc::default() }
    }

    /// Forgets what was applied for a job (it is being deleted).
    pub fn forget(&self, namespace: &str, job: &str) {
        let prefix = format!("{namespace}/{job}/");
        self.applied.lock().unwrap().retain(|k, _| !k.starts_with(&prefix));
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

/// Applies one child unless it is up to date; true when it sent the apply.
async fn apply_one<K>(client: &Client, names: &Names, object: &K, store: &Store<PartialObjectMeta<K>>, seen: &Seen) -> Result<bool, kube::Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()> + Serialize + DeserializeOwned + Clone + std::fmt::Debug,
{
    let (namespace, name) = (&names.namespace, object.name_any());
    let (value, digest) = applied_body(object);
    let key = format!("{namespace}/{}/{}/{name}", names.job, K::kind(&()));
    let watched = store.get(&ObjectRef::new(&name).within(namespace)).and_then(|m| m.resource_version());
    if up_to_date(seen.applied.lock().unwrap().get(&key), watched.as_deref(), digest) {
        return Ok(false);
    }
    let api: Api<K> = ssa(client, namespace);
    let applied = api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&value)).await?;
    if let Some(version) = applied.resource_version() {
        seen.applied.lock().unwrap().insert(key, (digest, version));
    }
    Ok(true)
}

/// Server-side applies the children that follow the spec and are not already as applied;
/// returns how many it sent.
pub async fn apply_children(client: &Client, names: &Names, c: &Children, seen: &Seen) -> Result<usize, kube::Error> {
    let sent = [
        apply_one(client, names, &c.service_account, &seen.service_accounts, seen).await?,
        apply_one(client, names, &c.role, &seen.roles, seen).await?,
        apply_one(client, names, &c.role_binding, &seen.role_bindings, seen).await?,
        apply_one(client, names, &c.service, &seen.services, seen).await?,
        apply_one(client, names, &c.config_map, &seen.config_maps, seen).await?,
    ];
    Ok(sent.into_iter().filter(|s| *s).count())
}

/// Creates the token Secret unless it exists: the token is never rotated while the job lives.
/// One the watch has seen needs no request at all.
pub async fn ensure_secret(client: &Client, job: &PlannedJob, seen: &Seen) -> Result<(), kube::Error> {
    let namespace = &job.valid.names.namespace;
    let name = job.valid.names.secret();
    if seen.secrets.get(&ObjectRef::new(&name).within(namespace)).is_some() {
        return Ok(());
    }
    let api: Api<Secret> = ssa(client, namespace);
    if api.get_metadata_opt(&name).await?.is_some() {
        return Ok(());
    }
    let secret = build_secret(&job.valid, &new_token());
    create_once(&api, &secret).await
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

/// Carries out a lifecycle action.
pub async fn act(client: &Client, job: &PlannedJob, action: &Action, settings: &Settings) -> Result<(), Error> {
    let names = &job.valid.names;
    let jobs: Api<Job> = ssa(client, &names.namespace);
    let result = match action {
        Action::Nothing => Ok(()),
        // a Job is created, never applied again: Kueue owns its suspend and scheduling fields
        Action::Create(attempt) => {
            let attempt_job = build_job(job, *attempt, settings);
            let overrides = job.valid.spec.pod_template.clone().unwrap_or_default();
            return create_once(&jobs, &attempt_job).await.map_err(|e| rejection::classify(e, Some((&attempt_job, &overrides))));
        }
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

/// Deletes every child of a finished job (its ttlSecondsAfterFinished passed); the TrainingJob
/// stays. `attempt_jobs` are the attempt Jobs the job has.
pub async fn delete_children(client: &Client, names: &Names, attempt_jobs: &[String]) -> Result<(), kube::Error> {
    let ns = &names.namespace;
    let jobs: Api<Job> = ssa(client, ns);
    for name in attempt_jobs {
        delete_opt(&jobs, name).await?;
    }
    delete_opt(&ssa::<Service>(client, ns), &names.service()).await?;
    delete_opt(&ssa::<ConfigMap>(client, ns), &names.config_map()).await?;
    delete_opt(&ssa::<Secret>(client, ns), &names.secret()).await?;
    delete_opt(&ssa::<RoleBinding>(client, ns), &names.trainer_identity()).await?;
    delete_opt(&ssa::<Role>(client, ns), &names.trainer_identity()).await?;
    delete_opt(&ssa::<ServiceAccount>(client, ns), &names.trainer_identity()).await?;
    Ok(())
}

#[cfg(test)]
mod seen_tests {
    use super::*;
    use crate::training_job::build::build_children;
    use crate::training_job::build::tests::planned;
    use kube::runtime::reflector;

    #[test]
    fn the_same_child_has_the_same_digest_and_a_changed_one_another() {
        let job = planned(1);
        let (a, b) = (build_children(&job), build_children(&job));
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
        let (s0, s1, s2, s3, s4, s5) =
            (reflector::store().0, reflector::store().0, reflector::store().0, reflector::store().0, reflector::store().0, reflector::store().0);
        let seen = Seen::new(s0, s1, s2, s3, s4, s5);
        for key in ["ns/lm/ConfigMap/lm-config", "ns/lm/Service/lm", "ns/lm2/Service/lm2", "other/lm/Service/lm"] {
            seen.applied.lock().unwrap().insert(key.into(), (1, "1".into()));
        }
        seen.forget("ns", "lm");
        let left: Vec<String> = seen.applied.lock().unwrap().keys().cloned().collect();
        assert_eq!(left, ["ns/lm2/Service/lm2", "other/lm/Service/lm"]);
    }
}
