//! The apply stage: writes children with server-side apply under one field manager, creates
//! what must be created once (the token Secret, each attempt's Job), and carries out the
//! lifecycle's action. Server-side apply does not prune, so what is no longer wanted is deleted
//! here by name.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::build::{build_job, build_secret, new_token, Children};
use crate::lifecycle::{Action, StopReason};
use crate::names::{Names, FIELD_MANAGER, STOP_REASON_ANNOTATION};
use crate::plan::PlannedJob;
use crate::settings::Settings;

fn ssa<K>(client: &Client, namespace: &str) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    Api::namespaced(client.clone(), namespace)
}

async fn apply_one<K>(client: &Client, namespace: &str, object: &K) -> Result<(), kube::Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()> + Serialize + DeserializeOwned + Clone + std::fmt::Debug,
{
    let api: Api<K> = ssa(client, namespace);
    // server-side apply needs the type in the body
    let mut value = serde_json::to_value(object).expect("a child serializes");
    value["apiVersion"] = K::api_version(&()).into();
    value["kind"] = K::kind(&()).into();
    api.patch(&object.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&value)).await?;
    Ok(())
}

/// Server-side applies the children that follow the spec.
pub async fn apply_children(client: &Client, namespace: &str, c: &Children) -> Result<(), kube::Error> {
    apply_one(client, namespace, &c.service_account).await?;
    apply_one(client, namespace, &c.role).await?;
    apply_one(client, namespace, &c.role_binding).await?;
    apply_one(client, namespace, &c.service).await?;
    apply_one(client, namespace, &c.config_map).await?;
    Ok(())
}

/// Creates the token Secret unless it exists: the token is never rotated while the job lives.
pub async fn ensure_secret(client: &Client, job: &PlannedJob) -> Result<(), kube::Error> {
    let api: Api<Secret> = ssa(client, &job.valid.names.namespace);
    if api.get_metadata_opt(&job.valid.names.secret()).await?.is_some() {
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
pub async fn act(client: &Client, job: &PlannedJob, action: &Action, settings: &Settings) -> Result<(), kube::Error> {
    let names = &job.valid.names;
    let jobs: Api<Job> = ssa(client, &names.namespace);
    match action {
        Action::Nothing => Ok(()),
        // a Job is created, never applied again: Kueue owns its suspend and scheduling fields
        Action::Create(attempt) => create_once(&jobs, &build_job(job, *attempt, settings)).await,
        Action::Stop(attempt, reason) => stop(&jobs, &names.attempt_job(*attempt), *reason).await,
        Action::Delete(attempt) => delete_opt(&jobs, &names.attempt_job(*attempt)).await,
    }
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
