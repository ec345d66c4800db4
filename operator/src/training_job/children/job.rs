//! An attempt's Indexed Job: one pod per group of `gpusPerPod` pipeline stages of every replica
//! (pods `r·P .. (r+1)·P` run replica `r`, as the trainer contract places them), failing as a whole
//! on any pod failure (restarts are gang restarts, made by the operator as a new attempt).

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{
    Job, JobSpec, PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement, PodFailurePolicyOnPodConditionsPattern, PodFailurePolicyRule,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, KeyToPath, ObjectFieldSelector,
    PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec, ResourceRequirements, SeccompProfile, SecretKeySelector,
    SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::ObjectMeta;

use frugal_api::contract::{PodEnv, exit, paths};
use frugal_api::v1alpha1::Device;

use super::child_meta;
use crate::names::KUEUE_QUEUE_LABEL;
use crate::settings::Settings;
use crate::training_job::plan::PlannedJob;
use crate::training_job::validate::HOME_DIR;

pub use frugal_api::contract::pods::TRAINER_CONTAINER;
/// Which GPUs NVIDIA's container runtime shows a container.
const NVIDIA_VISIBLE_DEVICES: &str = "NVIDIA_VISIBLE_DEVICES";
/// The unprivileged user the trainer runs as.
const TRAINER_UID: i64 = 65532;

/// Exit code with which the trainer says its configuration can never work (sysexits' EX_CONFIG);
/// such a failure is permanent and not retried.
pub const CONFIGURATION_ERROR_EXIT_CODE: i32 = exit::CONFIGURATION_ERROR;

/// Indices of the rules of [`pod_failure_policy`]; the Job controller names the matching rule's
/// index in its Failed condition's message, which `observe` reads back.
pub mod rules {
    pub const DISRUPTION: usize = 0;
    pub const CONFIGURATION: usize = 1;
    pub const FAILURE: usize = 2;
}

/// Attempt `attempt`'s Job. With Kueue (a queue label on the TrainingJob) it starts suspended and
/// carries the queue label; Kueue unsuspends it once admitted.
pub fn build_job(job: &PlannedJob, attempt: i32, settings: &Settings) -> Job {
    let valid = &job.valid;
    let names = &valid.names;
    let pods = job.plan.pods as i32;
    let mut job_labels = names.attempt_labels(attempt, &valid.uid);
    if let Some(queue) = &valid.queue {
        job_labels.insert(KUEUE_QUEUE_LABEL.into(), queue.clone());
    }
    // Kueue orders (and preempts) the attempt's Workload by the TrainingJob's priority class
    if let Some(priority) = &valid.kueue_priority_class {
        job_labels.insert(frugal_api::admission::KUEUE_PRIORITY_CLASS_LABEL.into(), priority.clone());
    }
    Job {
        metadata: child_meta(valid, names.attempt_job(attempt), job_labels),
        spec: Some(JobSpec {
            completion_mode: Some("Indexed".into()),
            completions: Some(pods),
            parallelism: Some(pods),
            backoff_limit: Some(0),
            pod_failure_policy: Some(pod_failure_policy()),
            // a replacement pod is never made while the failed one still holds its GPU
            pod_replacement_policy: Some("Failed".into()),
            suspend: Some(valid.queue.is_some()),
            template: pod_template(job, attempt, settings),
            ..Default::default()
        }),
        status: None,
    }
}

/// Any pod failure fails the attempt; the matched rule's index tells the operator why.
fn pod_failure_policy() -> PodFailurePolicy {
    let fail_job = |rule: PodFailurePolicyRule| PodFailurePolicyRule { action: "FailJob".into(), ..rule };
    let mut rules = vec![PodFailurePolicyRule::default(); 3];
    rules[rules::DISRUPTION] = fail_job(PodFailurePolicyRule {
        on_pod_conditions: Some(vec![PodFailurePolicyOnPodConditionsPattern { type_: "DisruptionTarget".into(), status: Some("True".into()) }]),
        ..Default::default()
    });
    let exit_codes = |operator: &str, values: Vec<i32>| PodFailurePolicyRule {
        on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
            container_name: Some(TRAINER_CONTAINER.into()),
            operator: operator.into(),
            values,
        }),
        ..Default::default()
    };
    rules[rules::CONFIGURATION] = fail_job(exit_codes("In", vec![CONFIGURATION_ERROR_EXIT_CODE]));
    // A trainer stopped by SIGTERM (it checkpointed) matches no rule: the Job controller then
    // counts it only if it still tracks the pod, so a stop the Job made itself (Kueue suspending
    // it) fails nothing, while any other stop is counted and, at backoffLimit 0, fails the
    // attempt. A rule matching it would fail a suspended Job whose stopped pod the controller
    // sees before the pod is gone, as it may on a loaded node.
    rules[rules::FAILURE] = fail_job(exit_codes("NotIn", vec![0, exit::TERMINATED]));
    PodFailurePolicy { rules }
}

fn pod_template(job: &PlannedJob, attempt: i32, settings: &Settings) -> PodTemplateSpec {
    let valid = &job.valid;
    let spec = &valid.spec;
    let names = &valid.names;
    let overrides = spec.pod_template.clone().unwrap_or_default();

    let mut labels = overrides.labels.clone();
    labels.extend(names.attempt_labels(attempt, &valid.uid));
    let annotations = (!overrides.annotations.is_empty()).then(|| overrides.annotations.clone());

    let pod_env = PodEnv {
        config_path: paths::CONFIG_FILE.into(),
        pod_index: 0, // from JOB_COMPLETION_INDEX, set by Kubernetes
        attempt: attempt.into(),
        job_name: names.attempt_job(attempt),
        service: names.service(),
        namespace: names.namespace.clone(),
        training_job: names.job.clone(),
        token_path: paths::TOKEN_FILE.into(),
        checkpoint_dir: spec.checkpoint.directory(&names.namespace, &names.job),
        metrics_port: paths::METRICS_PORT,
        report_status: true,
    };
    let mut env: Vec<EnvVar> =
        pod_env.to_env().into_iter().map(|(name, value)| EnvVar { name: name.into(), value: Some(value), ..Default::default() }).collect();
    env.push(EnvVar {
        name: frugal_api::contract::env::POD_IP.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: "status.podIP".into(), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    });
    env.push(EnvVar { name: "HOME".into(), value: Some(HOME_DIR.into()), ..Default::default() });
    env.push(EnvVar { name: "CUDA_CACHE_PATH".into(), value: Some(format!("{HOME_DIR}/.nv/ComputeCache")), ..Default::default() });
    // the store's keys from the Secret the spec names: the pod gets them, the operator never reads them
    if let Some(secret) = spec.checkpoint.store.as_ref().and_then(|s| s.credentials_secret.as_ref()) {
        for (key, optional) in [("AWS_ACCESS_KEY_ID", false), ("AWS_SECRET_ACCESS_KEY", false), ("AWS_SESSION_TOKEN", true)] {
            let selector = SecretKeySelector { name: secret.clone(), key: key.into(), optional: optional.then_some(true) };
            let value_from = Some(EnvVarSource { secret_key_ref: Some(selector), ..Default::default() });
            env.push(EnvVar { name: key.into(), value_from, ..Default::default() });
        }
    }
    env.extend(overrides.env.iter().cloned());
    // a CPU job sees no GPU, whatever the node's runtime or the image would show it (the API
    // server refuses NVIDIA_* and CUDA_VISIBLE_DEVICES in podTemplate.env)
    if spec.resources.device == Device::Cpu {
        env.push(EnvVar { name: NVIDIA_VISIBLE_DEVICES.into(), value: Some("void".into()), ..Default::default() });
    }

    let mut limits = BTreeMap::new();
    if spec.resources.device == Device::Gpu {
        limits.insert(spec.resources.gpu_resource_name.clone(), Quantity(spec.parallelism.gpus_per_pod.to_string()));
    }
    if let Some(cpu) = &spec.resources.cpu {
        limits.insert("cpu".to_string(), cpu.clone());
    }
    if let Some(memory) = &spec.resources.memory {
        limits.insert("memory".to_string(), memory.clone());
    }
    // requests default to limits, so the pods are Guaranteed when cpu and memory are set

    let empty_dir = |medium: Option<&str>, size: Option<Quantity>| EmptyDirVolumeSource { medium: medium.map(str::to_string), size_limit: size };
    let mut volumes = vec![
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: names.config_map(),
                items: Some(vec![KeyToPath { key: paths::CONFIG_KEY.into(), path: paths::CONFIG_KEY.into(), ..Default::default() }]),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: "token".into(),
            secret: Some(SecretVolumeSource { secret_name: Some(names.secret()), default_mode: Some(0o440), ..Default::default() }),
            ..Default::default()
        },
        match &spec.checkpoint.claim_name {
            Some(claim) => Volume {
                name: "checkpoint".into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource { claim_name: claim.clone(), read_only: Some(false) }),
                ..Default::default()
            },
            None => Volume { name: "checkpoint".into(), empty_dir: Some(empty_dir(None, None)), ..Default::default() },
        },
        Volume {
            name: "shm".into(),
            empty_dir: Some(empty_dir(Some("Memory"), Some(overrides.shm_size.clone().unwrap_or_else(|| Quantity("1Gi".into()))))),
            ..Default::default()
        },
        Volume { name: "tmp".into(), empty_dir: Some(empty_dir(None, None)), ..Default::default() },
        Volume { name: "home".into(), empty_dir: Some(empty_dir(None, None)), ..Default::default() },
    ];
    volumes.extend(overrides.volumes.iter().cloned());
    let mount = |name: &str, path: &str, read_only: bool| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..Default::default()
    };
    let mut volume_mounts = vec![
        mount("config", paths::CONFIG_DIR, true),
        mount("token", paths::TOKEN_DIR, true),
        mount("checkpoint", &spec.checkpoint.path, false),
        mount("shm", "/dev/shm", false),
        mount("tmp", "/tmp", false),
        mount("home", HOME_DIR, false),
    ];
    volume_mounts.extend(overrides.volume_mounts.iter().cloned());

    let container = Container {
        name: TRAINER_CONTAINER.into(),
        image: Some(valid.image.clone()),
        command: Some(settings.trainer_command.clone()),
        env: Some(env),
        ports: Some(vec![
            ContainerPort { name: Some("pipeline".into()), container_port: paths::PIPELINE_PORT.into(), ..Default::default() },
            ContainerPort { name: Some("ring".into()), container_port: paths::RING_PORT.into(), ..Default::default() },
            ContainerPort { name: Some("metrics".into()), container_port: paths::METRICS_PORT.into(), ..Default::default() },
        ]),
        resources: (!limits.is_empty()).then(|| ResourceRequirements { limits: Some(limits), ..Default::default() }),
        volume_mounts: Some(volume_mounts),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Default::default() }),
            seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
            ..Default::default()
        }),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    };
    let node_selector = &spec.resources.node_selector;
    PodTemplateSpec {
        metadata: Some(ObjectMeta { labels: Some(labels), annotations, ..Default::default() }),
        spec: Some(PodSpec {
            containers: vec![container],
            restart_policy: Some("Never".into()),
            subdomain: Some(names.service()),
            service_account_name: Some(names.trainer_identity()),
            automount_service_account_token: Some(true),
            termination_grace_period_seconds: Some(settings.termination_grace_seconds),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(TRAINER_UID),
                run_as_group: Some(TRAINER_UID),
                fs_group: Some(TRAINER_UID),
                seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
                ..Default::default()
            }),
            node_selector: (!node_selector.is_empty()).then(|| node_selector.clone()),
            tolerations: (!spec.resources.tolerations.is_empty()).then(|| spec.resources.tolerations.clone()),
            affinity: overrides.affinity.clone(),
            priority_class_name: spec.resources.priority_class_name.clone(),
            image_pull_secrets: (!overrides.image_pull_secrets.is_empty()).then(|| overrides.image_pull_secrets.clone()),
            volumes: Some(volumes),
            ..Default::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::training_job::children::tests::{assert_owned, planned, planned_from};
    use crate::training_job::validate::tests::training_job;
    use frugal_api::contract::env;
    use frugal_api::v1alpha1::PodOverrides;
    use k8s_openapi::api::core::v1::{LocalObjectReference, Toleration};

    fn parts(job: &Job) -> (&ObjectMeta, &PodSpec, &Container) {
        let t = &job.spec.as_ref().unwrap().template;
        let spec = t.spec.as_ref().unwrap();
        (t.metadata.as_ref().unwrap(), spec, &spec.containers[0])
    }

    fn env_of(c: &Container) -> BTreeMap<String, String> {
        c.env.as_ref().unwrap().iter().map(|e| (e.name.clone(), e.value.clone().unwrap_or_default())).collect()
    }

    #[test]
    fn the_stores_keys_come_from_the_named_secret_and_never_as_values() {
        let mut tj = training_job(1);
        let job = build_job(&planned_from(&tj), 1, &Settings::default());
        assert!(!env_of(parts(&job).2).keys().any(|k| k.starts_with("AWS_")), "no store, no keys");
        tj.spec.checkpoint.store = Some(frugal_api::v1alpha1::ObjectStoreSpec {
            uri: "s3://lm-checkpoints/team".into(),
            endpoint: None,
            region: None,
            credentials_secret: Some("store-keys".into()),
        });
        let job = build_job(&planned_from(&tj), 1, &Settings::default());
        let env = parts(&job).2.env.clone().unwrap();
        let keys: Vec<(&str, &str, &str, Option<bool>)> = env
            .iter()
            .filter_map(|e| {
                let r = e.value_from.as_ref()?.secret_key_ref.as_ref()?;
                assert!(e.value.is_none());
                Some((e.name.as_str(), r.name.as_str(), r.key.as_str(), r.optional))
            })
            .collect();
        assert_eq!(
            keys,
            [
                ("AWS_ACCESS_KEY_ID", "store-keys", "AWS_ACCESS_KEY_ID", None),
                ("AWS_SECRET_ACCESS_KEY", "store-keys", "AWS_SECRET_ACCESS_KEY", None),
                ("AWS_SESSION_TOKEN", "store-keys", "AWS_SESSION_TOKEN", Some(true)),
            ]
        );
    }

    #[test]
    fn an_attempt_is_an_indexed_gang() {
        let mut tj = training_job(4);
        tj.spec.parallelism.gpus_per_pod = 2;
        let job = build_job(&planned_from(&tj), 3, &Settings::default());
        assert_owned(&job.metadata);
        assert_eq!(job.metadata.name.as_deref(), Some("lm-a3"));
        let labels = job.metadata.labels.as_ref().unwrap();
        assert_eq!(labels["frugal.dev/attempt"], "3");
        assert!(!labels.contains_key(KUEUE_QUEUE_LABEL));
        let spec = job.spec.as_ref().unwrap();
        assert_eq!(spec.completion_mode.as_deref(), Some("Indexed"));
        assert_eq!((spec.completions, spec.parallelism), (Some(2), Some(2)));
        assert_eq!(spec.backoff_limit, Some(0));
        assert_eq!(spec.suspend, Some(false));
        assert_eq!(spec.selector, None, "Kubernetes generates the selector from the Job's uid");
        let (meta, pod, c) = parts(&job);
        assert_eq!(meta.labels.as_ref().unwrap()["frugal.dev/attempt"], "3");
        assert_eq!(meta.labels.as_ref().unwrap()["frugal.dev/training-job"], "lm");
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert_eq!(pod.subdomain.as_deref(), Some("lm"));
        assert_eq!(pod.service_account_name.as_deref(), Some("lm-trainer"));
        assert_eq!(pod.automount_service_account_token, Some(true));
        assert_eq!(pod.termination_grace_period_seconds, Some(300));
        assert_eq!(c.resources.as_ref().unwrap().limits.as_ref().unwrap()["nvidia.com/gpu"], Quantity("2".into()));
    }

    #[test]
    fn replicas_of_the_pipeline_are_pods_of_the_one_gang() {
        let mut tj = training_job(2);
        tj.spec.parallelism.data_parallel = 2;
        let planned = planned_from(&tj);
        let config = frugal_api::contract::TrainerConfig::from_yaml(&planned.trainer_config).unwrap();
        assert_eq!((planned.plan.pods, config.pods(), config.pods_per_replica()), (4, 4, 2));
        let job = build_job(&planned, 1, &Settings::default());
        let spec = job.spec.as_ref().unwrap();
        assert_eq!((spec.completions, spec.parallelism), (Some(4), Some(4)), "2 replicas × 2 stages, one GPU each");
        assert_eq!(spec.backoff_limit, Some(0), "any pod of any replica restarts the whole attempt");
        assert!(spec.pod_failure_policy.as_ref().unwrap().rules.iter().all(|r| r.action == "FailJob"));
        let c = parts(&job).2;
        assert_eq!(c.resources.as_ref().unwrap().limits.as_ref().unwrap()["nvidia.com/gpu"], Quantity("1".into()));
        let ports: Vec<(&str, i32)> = c.ports.as_ref().unwrap().iter().map(|p| (p.name.as_deref().unwrap(), p.container_port)).collect();
        assert_eq!(ports, [("pipeline", 29500), ("ring", 29501), ("metrics", 9090)]);
        // two stages a pod: one pod a replica
        tj.spec.parallelism.gpus_per_pod = 2;
        let job = build_job(&planned_from(&tj), 1, &Settings::default());
        assert_eq!(job.spec.as_ref().unwrap().completions, Some(2));
        assert_eq!(parts(&job).2.resources.as_ref().unwrap().limits.as_ref().unwrap()["nvidia.com/gpu"], Quantity("2".into()));
    }

    #[test]
    fn any_pod_failure_fails_the_attempt_and_the_rule_says_why() {
        let job = build_job(&planned(2), 1, &Settings::default());
        let rules = job.spec.unwrap().pod_failure_policy.unwrap().rules;
        assert!(rules.iter().all(|r| r.action == "FailJob"));
        assert_eq!(rules[rules::DISRUPTION].on_pod_conditions.as_ref().unwrap()[0].type_, "DisruptionTarget");
        let config = rules[rules::CONFIGURATION].on_exit_codes.as_ref().unwrap();
        assert_eq!((config.operator.as_str(), config.values.as_slice()), ("In", &[78][..]));
        let any = rules[rules::FAILURE].on_exit_codes.as_ref().unwrap();
        assert_eq!(
            (any.operator.as_str(), any.values.as_slice()),
            ("NotIn", &[0, 143][..]),
            "a trainer stopped by SIGTERM is left to the Job's own counting"
        );
        assert_eq!(any.container_name.as_deref(), Some(TRAINER_CONTAINER));
    }

    #[test]
    fn pods_carry_the_contract_env() {
        let job = build_job(&planned(2), 2, &Settings::default());
        let env = env_of(parts(&job).2);
        assert_eq!(env[env::CONFIG_PATH], paths::CONFIG_FILE);
        assert_eq!(env[env::ATTEMPT], "2");
        assert_eq!(env[env::JOB_NAME], "lm-a2");
        assert_eq!(env[env::SERVICE], "lm");
        assert_eq!(env[env::NAMESPACE], "ml");
        assert_eq!(env[env::TRAINING_JOB], "lm");
        assert_eq!(env[env::TOKEN_PATH], paths::TOKEN_FILE);
        assert_eq!(env[env::CHECKPOINT_DIR], "/checkpoints");
        assert_eq!(env["HOME"], HOME_DIR);
        assert!(!env.contains_key(env::POD_INDEX), "Kubernetes sets the index");
        // the trainer reads the same environment back (with the index Kubernetes adds)
        let mut vars = env.clone();
        vars.insert(env::POD_INDEX.into(), "1".into());
        let parsed = PodEnv::from_lookup(|k| vars.get(k).cloned()).unwrap();
        assert_eq!(parsed.peer_host(0), "lm-a2-0.lm.ml.svc");
    }

    #[test]
    fn pods_meet_the_restricted_pod_security_standard() {
        let job = build_job(&planned(1), 1, &Settings::default());
        let (_, pod, c) = parts(&job);
        let psc = pod.security_context.as_ref().unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(psc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
        assert!(psc.run_as_user.unwrap() > 0);
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.capabilities.as_ref().unwrap().drop.as_deref(), Some(&["ALL".to_string()][..]));
        assert!(sc.capabilities.as_ref().unwrap().add.is_none());
        assert!(pod.host_network.is_none() && pod.host_pid.is_none() && pod.host_ipc.is_none());
        // a read-only root still has writable /tmp, HOME and the CUDA cache under HOME
        let mounts: BTreeMap<_, _> = c.volume_mounts.as_ref().unwrap().iter().map(|m| (m.mount_path.as_str(), m)).collect();
        for writable in ["/tmp", HOME_DIR, "/dev/shm", "/checkpoints"] {
            assert_ne!(mounts[writable].read_only, Some(true), "{writable}");
        }
        assert!(env_of(c)["CUDA_CACHE_PATH"].starts_with(HOME_DIR));
        // restricted allows only these volume types
        for v in pod.volumes.as_ref().unwrap() {
            assert!(v.config_map.is_some() || v.secret.is_some() || v.empty_dir.is_some() || v.persistent_volume_claim.is_some(), "{}", v.name);
        }
    }

    #[test]
    fn volumes_hold_config_token_checkpoint_and_shm() {
        let mut tj = training_job(2);
        tj.spec.checkpoint.claim_name = Some("ckpt".into());
        let job = build_job(&planned_from(&tj), 1, &Settings::default());
        let (_, pod, c) = parts(&job);
        let volumes: BTreeMap<_, _> = pod.volumes.as_ref().unwrap().iter().map(|v| (v.name.as_str(), v)).collect();
        assert_eq!(volumes["config"].config_map.as_ref().unwrap().name, "lm-config");
        assert_eq!(volumes["token"].secret.as_ref().unwrap().secret_name.as_deref(), Some("lm-token"));
        assert_eq!(volumes["checkpoint"].persistent_volume_claim.as_ref().unwrap().claim_name, "ckpt");
        let shm = volumes["shm"].empty_dir.as_ref().unwrap();
        assert_eq!((shm.medium.as_deref(), shm.size_limit.clone()), (Some("Memory"), Some(Quantity("1Gi".into()))));
        let mounts: BTreeMap<_, _> = c.volume_mounts.as_ref().unwrap().iter().map(|m| (m.name.as_str(), m)).collect();
        assert_eq!(mounts["config"].mount_path, paths::CONFIG_DIR);
        assert_eq!(mounts["config"].read_only, Some(true));
        assert_eq!(mounts["token"].mount_path, paths::TOKEN_DIR);
        assert_eq!(mounts["checkpoint"].mount_path, "/checkpoints");
        // on a claim, each job writes to its own directory: jobs sharing it never prune each
        // other's steps
        assert_eq!(env_of(c)[env::CHECKPOINT_DIR], "/checkpoints/ml/lm");
        // without a claim, checkpoints live in an emptyDir
        let job = build_job(&planned(1), 1, &Settings::default());
        let v = parts(&job).1.volumes.as_ref().unwrap().iter().find(|v| v.name == "checkpoint").unwrap().clone();
        assert!(v.empty_dir.is_some());
    }

    #[test]
    fn overrides_and_placement_reach_the_pods() {
        let mut tj = training_job(1);
        tj.spec.resources.node_selector = [("gpu".to_string(), "h100".to_string())].into();
        tj.spec.resources.tolerations =
            vec![Toleration { key: Some("nvidia.com/gpu".into()), operator: Some("Exists".into()), ..Default::default() }];
        tj.spec.resources.priority_class_name = Some("training".into());
        tj.spec.resources.cpu = Some(Quantity("8".into()));
        tj.spec.resources.memory = Some(Quantity("64Gi".into()));
        tj.spec.pod_template = Some(PodOverrides {
            labels: [("team".to_string(), "a".to_string())].into(),
            annotations: [("note".to_string(), "x".to_string())].into(),
            env: vec![EnvVar { name: "NCCL_DEBUG".into(), value: Some("INFO".into()), ..Default::default() }],
            volumes: vec![Volume {
                name: "data".into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource { claim_name: "corpus".into(), read_only: Some(true) }),
                ..Default::default()
            }],
            volume_mounts: vec![VolumeMount { name: "data".into(), mount_path: "/data".into(), read_only: Some(true), ..Default::default() }],
            image_pull_secrets: vec![LocalObjectReference { name: "regcred".into() }],
            shm_size: Some(Quantity("8Gi".into())),
            ..Default::default()
        });
        tj.metadata.labels = Some(
            [
                (KUEUE_QUEUE_LABEL.to_string(), "team-a".to_string()),
                (frugal_api::admission::KUEUE_PRIORITY_CLASS_LABEL.to_string(), "high".to_string()),
            ]
            .into(),
        );
        let job = build_job(&planned_from(&tj), 1, &Settings::default());
        assert_eq!(job.metadata.labels.as_ref().unwrap()[KUEUE_QUEUE_LABEL], "team-a");
        assert_eq!(job.metadata.labels.as_ref().unwrap()[frugal_api::admission::KUEUE_PRIORITY_CLASS_LABEL], "high", "Kueue's priority passed on");
        assert_eq!(job.spec.as_ref().unwrap().suspend, Some(true), "Kueue admits it");
        let (meta, pod, c) = parts(&job);
        assert_eq!(meta.labels.as_ref().unwrap()["team"], "a");
        assert_eq!(meta.annotations.as_ref().unwrap()["note"], "x");
        assert_eq!(pod.node_selector.as_ref().unwrap()["gpu"], "h100");
        assert_eq!(pod.tolerations.as_ref().unwrap().len(), 1);
        assert_eq!(pod.priority_class_name.as_deref(), Some("training"));
        assert_eq!(pod.image_pull_secrets.as_ref().unwrap()[0].name, "regcred");
        assert_eq!(env_of(c)["NCCL_DEBUG"], "INFO");
        assert!(pod.volumes.as_ref().unwrap().iter().any(|v| v.name == "data"));
        assert!(c.volume_mounts.as_ref().unwrap().iter().any(|m| m.mount_path == "/data"));
        let shm = pod.volumes.as_ref().unwrap().iter().find(|v| v.name == "shm").unwrap();
        assert_eq!(shm.empty_dir.as_ref().unwrap().size_limit, Some(Quantity("8Gi".into())));
        let limits = c.resources.as_ref().unwrap().limits.as_ref().unwrap();
        assert_eq!(limits["cpu"], Quantity("8".into()));
        assert_eq!(limits["memory"], Quantity("64Gi".into()));
        assert_eq!(limits["nvidia.com/gpu"], Quantity("1".into()));
    }

    #[test]
    fn cpu_jobs_ask_for_no_gpu() {
        let mut tj = training_job(1);
        tj.spec.resources.device = Device::Cpu;
        let job = build_job(&planned_from(&tj), 1, &Settings::default());
        assert!(parts(&job).2.resources.is_none());
        // and sees none, whatever the node's container runtime would show it
        assert_eq!(env_of(parts(&job).2)[NVIDIA_VISIBLE_DEVICES], "void");
        let gpu = build_job(&planned(1), 1, &Settings::default());
        assert!(!env_of(parts(&gpu).2).contains_key(NVIDIA_VISIBLE_DEVICES), "the device plugin sets it on GPU jobs");
    }
}
