//! Validation: a TrainingJob's spec into a [`ValidJob`] that every later stage trusts, or a
//! permanent error naming the field and the fix. The API server's CEL rules already caught what
//! CEL can see; this checks what it cannot (names with our suffixes, overrides that would
//! collide with the operator's own labels, env, volumes and mounts).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource;

use frugal_api::contract::{env, paths};
use frugal_api::v1alpha1::{Device, MAX_JOB_NAME_LENGTH, pod_security};
use frugal_api::{TrainingJob, TrainingJobSpec};

use crate::conditions::reasons;
use crate::names::{self, Names};
use crate::settings::Settings;

/// Volumes the operator adds to every pod; overrides may not reuse their names.
pub const OWN_VOLUMES: [&str; 6] = ["config", "token", "checkpoint", "shm", "tmp", "home"];
/// Where the operator mounts them.
pub const HOME_DIR: &str = "/home/frugal";
pub const OWN_MOUNT_PATHS: [&str; 5] = [paths::CONFIG_DIR, paths::TOKEN_DIR, "/dev/shm", "/tmp", HOME_DIR];

/// A job the later stages can build from without checking anything again.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidJob {
    pub names: Names,
    pub uid: String,
    pub generation: i64,
    pub spec: TrainingJobSpec,
    pub image: String,
    /// Kueue's queue, from the TrainingJob's `kueue.x-k8s.io/queue-name` label.
    pub queue: Option<String>,
    /// Kueue's WorkloadPriorityClass, from the TrainingJob's `kueue.x-k8s.io/priority-class` label.
    pub kueue_priority_class: Option<String>,
    /// The owner reference every child carries.
    pub owner: OwnerReference,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValidationError {
    #[error(
        "metadata.name {0:?} must be a DNS-1035 label of at most {MAX_JOB_NAME_LENGTH} characters: children add suffixes to it; choose a shorter name"
    )]
    Name(String),
    #[error("no trainer image: set spec.image, or start the operator with --trainer-image")]
    NoImage,
    #[error("spec.podTemplate.{field}: {value:?} is set by the operator; {fix}")]
    Reserved { field: &'static str, value: String, fix: &'static str },
    #[error("spec.podTemplate.labels: {0}")]
    Label(String),
    /// What Pod Security `restricted` would refuse the job's author; the CRD's rules refuse it
    /// first, this holds where an older CRD is installed.
    #[error("spec.podTemplate.{field}[{index}]: {message}")]
    PodSecurity { field: &'static str, index: usize, message: String },
    #[error("the object has no {0}")]
    MissingMetadata(&'static str),
}

impl ValidationError {
    pub fn reason(&self) -> &'static str {
        reasons::INVALID_SPEC
    }
}

fn is_dns_1035(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty() && b[0].is_ascii_lowercase() && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-') && !s.ends_with('-')
}

/// A label value: at most 63 characters, alphanumerics with `-_.` inside.
fn is_label_value(s: &str) -> bool {
    s.len() <= 63
        && (s.is_empty()
            || (s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                && s.starts_with(|c: char| c.is_ascii_alphanumeric())
                && s.ends_with(|c: char| c.is_ascii_alphanumeric())))
}

pub fn validate(job: &TrainingJob, settings: &Settings) -> Result<ValidJob, ValidationError> {
    use ValidationError::MissingMetadata;
    let name = job.metadata.name.clone().ok_or(MissingMetadata("name"))?;
    let namespace = job.metadata.namespace.clone().ok_or(MissingMetadata("namespace"))?;
    let uid = job.metadata.uid.clone().ok_or(MissingMetadata("uid"))?;
    let owner = job.controller_owner_ref(&()).ok_or(MissingMetadata("uid"))?;
    let generation = job.metadata.generation.unwrap_or(0);
    validate_spec(&name, &namespace, &job.spec, job.metadata.labels.as_ref(), settings).map(|(image, queue)| ValidJob {
        names: Names::new(&namespace, &name),
        uid,
        generation,
        spec: job.spec.clone(),
        image,
        queue,
        kueue_priority_class: job.metadata.labels.as_ref().and_then(|l| l.get(frugal_api::admission::KUEUE_PRIORITY_CLASS_LABEL)).cloned(),
        owner,
    })
}

fn validate_spec(
    name: &str,
    _namespace: &str,
    spec: &TrainingJobSpec,
    labels: Option<&std::collections::BTreeMap<String, String>>,
    settings: &Settings,
) -> Result<(String, Option<String>), ValidationError> {
    if name.len() > MAX_JOB_NAME_LENGTH || !is_dns_1035(name) {
        return Err(ValidationError::Name(name.into()));
    }
    let default_image = match spec.resources.device {
        Device::Cpu => settings.trainer_cpu_image.clone().or_else(|| settings.trainer_image.clone()),
        Device::Gpu => settings.trainer_image.clone(),
    };
    let image = spec.image.clone().filter(|i| !i.is_empty()).or(default_image).ok_or(ValidationError::NoImage)?;
    if let Some(o) = &spec.pod_template {
        for (key, value) in &o.labels {
            if [names::MANAGED_BY, names::JOB_LABEL, names::ATTEMPT_LABEL, names::COMPONENT].contains(&key.as_str())
                || key.starts_with("batch.kubernetes.io/")
            {
                return Err(ValidationError::Reserved { field: "labels", value: key.clone(), fix: "remove it" });
            }
            if !is_label_value(value) {
                return Err(ValidationError::Label(format!(
                    "the value {value:?} of {key:?} is not a label value (at most 63 letters, digits, '-', '_', '.')"
                )));
            }
        }
        let own_env = [
            env::CONFIG_PATH,
            env::POD_INDEX,
            env::ATTEMPT,
            env::JOB_NAME,
            env::SERVICE,
            env::NAMESPACE,
            env::TRAINING_JOB,
            env::TOKEN_PATH,
            env::CHECKPOINT_DIR,
            env::METRICS_PORT,
            env::REPORT_STATUS,
            "HOME",
        ];
        if let Some(e) = o.env.iter().find(|e| own_env.contains(&e.name.as_str())) {
            return Err(ValidationError::Reserved { field: "env", value: e.name.clone(), fix: "rename the variable" });
        }
        // which GPUs a pod sees is the device plugin's to say (the CRD refuses these too)
        if let Some(e) = o.env.iter().find(|e| e.name.starts_with("NVIDIA_") || e.name == "CUDA_VISIBLE_DEVICES") {
            return Err(ValidationError::Reserved {
                field: "env",
                value: e.name.clone(),
                fix: "remove it: the GPUs a pod sees are the ones the device plugin gave it and its budget counts",
            });
        }
        for (index, v) in o.volumes.iter().enumerate() {
            if let Some(message) = pod_security::refuse_volume(v) {
                return Err(ValidationError::PodSecurity { field: "volumes", index, message });
            }
        }
        for (index, m) in o.volume_mounts.iter().enumerate() {
            if let Some(message) = pod_security::refuse_mount(m) {
                return Err(ValidationError::PodSecurity { field: "volumeMounts", index, message });
            }
        }
        if let Some(key) = o.annotations.keys().find(|k| pod_security::SECURITY_ANNOTATION_PREFIXES.iter().any(|p| k.starts_with(p))) {
            return Err(ValidationError::Reserved {
                field: "annotations",
                value: key.clone(),
                fix: "remove it: the trainer runs under the runtime's default AppArmor and seccomp profiles (Pod Security restricted)",
            });
        }
        if let Some(v) = o.volumes.iter().find(|v| OWN_VOLUMES.contains(&v.name.as_str())) {
            return Err(ValidationError::Reserved { field: "volumes", value: v.name.clone(), fix: "rename the volume" });
        }
        if let Some(m) = o.volume_mounts.iter().find(|m| {
            OWN_MOUNT_PATHS.contains(&m.mount_path.trim_end_matches('/'))
                || m.mount_path.trim_end_matches('/') == spec.checkpoint.path.trim_end_matches('/')
        }) {
            return Err(ValidationError::Reserved { field: "volumeMounts", value: m.mount_path.clone(), fix: "mount it elsewhere" });
        }
    }
    let queue = labels.and_then(|l| l.get(names::KUEUE_QUEUE_LABEL)).cloned();
    Ok((image, queue))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use frugal_api::v1alpha1::PodOverrides;
    use k8s_openapi::api::core::v1::{EnvVar, Volume, VolumeMount};

    /// A valid TrainingJob for tests: `lm` in `ml`, `stages` pipeline stages of one GPU each.
    pub fn training_job(stages: i32) -> TrainingJob {
        TrainingJob::test()
            .namespace("ml")
            .uid("u-1")
            .generation(2)
            .stages(stages)
            .micro_batches(8)
            .batch_size(16)
            .image("registry.example/frugal/trainer:1")
            .build()
    }

    fn err(job: &TrainingJob) -> String {
        validate(job, &Settings::default()).unwrap_err().to_string()
    }

    #[test]
    fn a_valid_job_carries_names_owner_and_image() {
        let mut job = training_job(2);
        job.metadata.labels = Some([(names::KUEUE_QUEUE_LABEL.to_string(), "team-a".to_string())].into());
        let v = validate(&job, &Settings::default()).unwrap();
        assert_eq!(v.names, Names::new("ml", "lm"));
        assert_eq!(v.image, "registry.example/frugal/trainer:1");
        assert_eq!(v.queue.as_deref(), Some("team-a"));
        assert_eq!(v.owner.uid, "u-1");
        assert_eq!(v.owner.kind, "TrainingJob");
        assert_eq!(v.owner.controller, Some(true));
        assert_eq!(v.generation, 2);
    }

    #[test]
    fn the_image_falls_back_to_the_operator_setting() {
        let mut job = training_job(1);
        job.spec.image = None;
        assert!(err(&job).contains("--trainer-image"));
        let settings = Settings { trainer_image: Some("img:2".into()), ..Settings::default() };
        assert_eq!(validate(&job, &settings).unwrap().image, "img:2");
        // a CPU job gets the image without CUDA libraries when there is one
        job.spec.resources.device = Device::Cpu;
        assert_eq!(validate(&job, &settings).unwrap().image, "img:2");
        let settings = Settings { trainer_cpu_image: Some("img:2-cpu".into()), ..settings };
        assert_eq!(validate(&job, &settings).unwrap().image, "img:2-cpu");
        job.spec.resources.device = Device::Gpu;
        assert_eq!(validate(&job, &settings).unwrap().image, "img:2");
    }

    #[test]
    fn names_without_room_for_suffixes_are_refused() {
        let mut job = training_job(1);
        job.metadata.name = Some("x".repeat(41));
        assert!(err(&job).contains("at most 40 characters"));
        job.metadata.name = Some("9lm".into());
        assert!(err(&job).contains("DNS-1035"));
    }

    /// The error of the test job with `o` as its pod overrides.
    fn with(o: PodOverrides) -> String {
        let mut job = training_job(1);
        job.spec.pod_template = Some(o);
        err(&job)
    }

    #[test]
    fn overrides_may_not_take_the_operators_own() {
        let e = with(PodOverrides { labels: [(names::JOB_LABEL.to_string(), "x".to_string())].into(), ..Default::default() });
        assert!(e.contains("spec.podTemplate.labels") && e.contains("frugal.dev/training-job"), "{e}");
        let e = with(PodOverrides { labels: [("team".to_string(), "a b".to_string())].into(), ..Default::default() });
        assert!(e.contains("not a label value"), "{e}");
        let e = with(PodOverrides { env: vec![EnvVar { name: env::ATTEMPT.into(), ..Default::default() }], ..Default::default() });
        assert!(e.contains("FRUGAL_ATTEMPT") && e.contains("rename"), "{e}");
        let e = with(PodOverrides { volumes: vec![Volume { name: "shm".into(), ..Default::default() }], ..Default::default() });
        assert!(e.contains("volumes") && e.contains("shm"), "{e}");
        let e = with(PodOverrides {
            volume_mounts: vec![VolumeMount { name: "data".into(), mount_path: "/checkpoints/".into(), ..Default::default() }],
            ..Default::default()
        });
        assert!(e.contains("volumeMounts"), "{e}");
    }

    /// The CRD refuses these at `kubectl apply`; the operator refuses them too, so that no
    /// CRD version lets it create a pod that Pod Security `restricted` would refuse.
    #[test]
    fn overrides_stay_within_pod_security_restricted() {
        let host: Volume = serde_json::from_value(serde_json::json!({"name": "host", "hostPath": {"path": "/"}})).unwrap();
        let data: Volume = serde_json::from_value(serde_json::json!({"name": "data", "persistentVolumeClaim": {"claimName": "d"}})).unwrap();
        let e = with(PodOverrides { volumes: vec![data.clone(), host], ..Default::default() });
        assert!(e.contains("spec.podTemplate.volumes[1]") && e.contains("hostPath"), "{e}");
        let escaping = VolumeMount { name: "data".into(), mount_path: "/data".into(), sub_path: Some("../..".into()), ..Default::default() };
        let e = with(PodOverrides { volumes: vec![data.clone()], volume_mounts: vec![escaping], ..Default::default() });
        assert!(e.contains("spec.podTemplate.volumeMounts[0]") && e.contains("subPath"), "{e}");
        let annotations = [("container.apparmor.security.beta.kubernetes.io/trainer".to_string(), "unconfined".to_string())].into();
        let e = with(PodOverrides { annotations, ..Default::default() });
        assert!(e.contains("spec.podTemplate.annotations") && e.contains("AppArmor"), "{e}");
        let mut job = training_job(1);
        job.spec.pod_template = Some(PodOverrides { volumes: vec![data], ..Default::default() });
        assert!(validate(&job, &Settings::default()).is_ok());
    }
}
