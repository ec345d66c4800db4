//! The plan's bucket checks: whether the job's checkpoint store (`spec.checkpoint.store`) and
//! export store (`spec.export.store`) exist and can be written with the job's credentials,
//! before the job is applied. It writes a small
//! probe object under the prefix and deletes it again, as the trainer's first upload would.
//! And whether each input the spec names by `s3://` URI (the corpus, shards, tokenizer file,
//! evaluation sets, init model, teacher checkpoint) is there and readable with the same
//! credentials: it lists the prefix, and reads the object's metadata where the field takes one
//! file, as the trainer does before it downloads.
//!
//! The credentials are the job's where the plugin can read them: the keys of
//! `credentialsSecret`, which its author may read (the chart's secret-references policy makes
//! that a condition of applying the job). Without a Secret the job's pods use their environment
//! or workload identity, which the plugin cannot take on: it uses its own environment's `AWS_*`
//! settings instead, and a failure is then only a note.

use frugal_api::TrainingJob;
use frugal_api::store::Location;
use frugal_api::v1alpha1::{InputShape, ObjectStoreSpec};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

use super::{Check, reasons};

/// A store of the spec: the plan's check and the field.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Which {
    pub check: &'static str,
    pub field: &'static str,
}

pub const CHECKPOINTS: Which = Which { check: "checkpoint store", field: "spec.checkpoint.store" };
pub const EXPORTS: Which = Which { check: "export store", field: "spec.export.store" };

/// Whose credentials the probe used.
#[derive(Debug, Clone, PartialEq)]
pub enum Identity {
    /// The keys of the job's `credentialsSecret`.
    Secret(String),
    /// This process's environment (not necessarily what the pods will have).
    Environment,
}

impl Identity {
    /// Whose keys a check used, as its message says it.
    fn whose(&self) -> String {
        match self {
            Self::Secret(name) => format!("with the keys of Secret {name}"),
            Self::Environment => "with this shell's AWS_* environment (the job sets no credentialsSecret; its pods may have another identity)".into(),
        }
    }
}

/// Writes and deletes a probe object under `spec`'s prefix with `vars` as the environment;
/// blocking (the store runs a runtime of its own).
pub fn probe(which: Which, spec: &ObjectStoreSpec, identity: &Identity, vars: Vec<(String, String)>) -> Check {
    let Which { check, field } = which;
    let location = match Location::of(field, spec) {
        Ok(l) => l,
        Err(e) => return Check::refused(check, reasons::INVALID_SPEC, e),
    };
    let whose = identity.whose();
    let store = match location.open_with(vars) {
        Ok(s) => s,
        Err(e) => return Check::refused(check, reasons::INVALID_SPEC, e),
    };
    let name = format!(
        ".frugal-plan-probe-{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
    );
    // listed first, as the trainer does before training: a store may create a missing bucket on
    // a write (SeaweedFS does for an admin), never on a listing
    let written = store
        .check()
        .and_then(|()| store.put_bytes(&name, b"kubectl frugal plan: a probe of the checkpoint store, deleted at once\n".to_vec()))
        .and_then(|()| store.delete(&[name]));
    match (written, identity) {
        (Ok(()), _) => Check::ok(check, format!("{}: wrote and deleted a probe object {whose}", location.uri())),
        (Err(e), Identity::Secret(_)) => Check::refused(
            check,
            reasons::CONFIGURATION_ERROR,
            format!("the trainer would stop before training: {e} ({whose}); fix the bucket, the endpoint or the Secret's keys"),
        ),
        (Err(e), Identity::Environment) => Check::note(check, None, format!("{e} ({whose})")),
    }
}

/// The plan's check of the inputs.
pub const INPUTS: &str = "input";

/// Whether the input `field` = `uri` (which takes `shape`) is in its bucket and readable with
/// `vars`, reached with the endpoint and region of `settings` (the job's checkpoint store's, else
/// its export store's, as the trainer reaches it); blocking.
pub fn probe_input(
    field: &str,
    uri: &str,
    shape: InputShape,
    settings: Option<&Location>,
    identity: &Identity,
    vars: Vec<(String, String)>,
) -> Check {
    let location = match Location::input(field, uri, settings) {
        Ok(l) => l,
        Err(e) => return Check::refused(INPUTS, reasons::INVALID_SPEC, e),
    };
    let store = match location.open_with(vars) {
        Ok(s) => s,
        Err(e) => return Check::refused(INPUTS, reasons::INVALID_SPEC, e),
    };
    let whose = identity.whose();
    let refuse = |what: String| match identity {
        Identity::Secret(_) => {
            Check::refused(INPUTS, reasons::CONFIGURATION_ERROR, format!("{field} ({uri}): {what} ({whose}); the trainer would stop before training"))
        }
        Identity::Environment => Check::note(INPUTS, None, format!("{field} ({uri}): {what} ({whose})")),
    };
    // listed first, as the trainer does: a missing bucket or a wrong key in the store's words
    let under = match store.list_objects("") {
        Ok(under) => under,
        Err(e) => return refuse(e.to_string()),
    };
    let one_file = matches!(shape, InputShape::File | InputShape::Tokenizer) || (shape == InputShape::FileOrDirectory && !uri.ends_with('/'));
    let object = if one_file && !location.prefix.is_empty() && !uri.ends_with('/') { store.head("").ok() } else { None };
    let (objects, bytes) = match &object {
        Some(o) => (1, o.size),
        None => (under.len(), under.iter().map(|o| o.size).sum::<u64>()),
    };
    if objects == 0 {
        return refuse("the bucket holds no object of this key or under this prefix: upload it, or fix the URI".into());
    }
    if object.is_none() && matches!(shape, InputShape::File | InputShape::Tokenizer) {
        return refuse(format!("the field takes one file, and this is a prefix of {objects} objects: name the file's key"));
    }
    Check::ok(INPUTS, format!("{field}: {uri} holds {objects} object(s), {bytes} bytes, readable {whose}"))
}

/// The bucket checks of `job` in `namespace` (none when it names no store): with the keys of
/// the checkpoint store's Secret when it names one (read through `client`; the export store's
/// keys are the same, as the pods have one set), else with this process's environment.
pub async fn checks(job: &TrainingJob, client: Option<&Client>, namespace: &str) -> Vec<Check> {
    let export = job.spec.export.as_ref().and_then(|e| e.store.clone());
    let stores: Vec<(Which, ObjectStoreSpec)> =
        [(CHECKPOINTS, job.spec.checkpoint.store.clone()), (EXPORTS, export.clone())].into_iter().filter_map(|(w, s)| Some((w, s?))).collect();
    let inputs = job.spec.input_uris();
    if stores.is_empty() && inputs.is_empty() {
        return vec![];
    }
    let settings = match (&job.spec.checkpoint.store, &export) {
        (Some(s), _) => Location::of(CHECKPOINTS.field, s).ok(),
        (None, Some(s)) => Location::of(EXPORTS.field, s).ok(),
        (None, None) => None,
    };
    let secret = job.spec.checkpoint.store.as_ref().and_then(|s| s.credentials_secret.clone());
    let (identity, vars) = match credentials(secret.as_deref(), client, namespace).await {
        Ok(found) => found,
        Err(check) => return vec![check],
    };
    // the store's blocking calls, and its runtime's drop, off this async task
    let probed = tokio::task::spawn_blocking(move || {
        let written = stores.iter().map(|(w, s)| probe(*w, s, &identity, vars.clone()));
        let read = inputs.iter().map(|(field, uri, shape)| probe_input(field, uri, *shape, settings.as_ref(), &identity, vars.clone()));
        written.chain(read).collect()
    });
    probed.await.unwrap_or_else(|e| vec![Check::note(CHECKPOINTS.check, None, format!("not checked: {e}"))])
}

/// Whose keys the probes use, and the keys; or the check that says why there are none.
async fn credentials(secret: Option<&str>, client: Option<&Client>, namespace: &str) -> Result<(Identity, Vec<(String, String)>), Check> {
    let check = CHECKPOINTS.check;
    let field = CHECKPOINTS.field;
    match (secret, client) {
        (Some(name), Some(client)) => match Api::<Secret>::namespaced(client.clone(), namespace).get(name).await {
            Ok(secret) => {
                let data = secret.data.unwrap_or_default();
                let vars =
                    data.into_iter().filter(|(k, _)| k.starts_with("AWS_")).map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned())).collect();
                Ok((Identity::Secret(name.to_string()), vars))
            }
            Err(kube::Error::Api(s)) if s.code == 404 => Err(Check::refused(
                check,
                reasons::CONFIGURATION_ERROR,
                format!(
                    "{field}.credentialsSecret names Secret {name}, which {namespace} does not have: the pods would not start; create it with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                ),
            )),
            Err(kube::Error::Api(s)) => {
                Err(Check::note(check, None, format!("not checked: cannot read Secret {name} ({}), whose keys the pods would use", s.message)))
            }
            Err(e) => Err(Check::note(check, None, format!("not checked: reading Secret {name}: {e}"))),
        },
        (Some(name), None) => {
            Err(Check::note(check, None, format!("not checked: the pods would use Secret {name}'s keys, and there is no cluster to read it from")))
        }
        (None, _) => Ok((Identity::Environment, std::env::vars().collect())),
    }
}
