//! The contract between the operator's pods and the trainer in them.
//!
//! The operator renders a [`TrainerConfig`] (the job's own spec, resolved, plus the pipeline's
//! layout) into a ConfigMap mounted at [`paths::CONFIG_FILE`], and gives each pod the
//! environment in [`env`]. The trainer reads both back with [`TrainerConfig::from_yaml`] and
//! [`PodEnv::from_lookup`], and [`TrainerConfig::assignment`] tells it which stages it runs and
//! where their peers are. There is no second configuration language: the spec is the job's.

use std::collections::BTreeMap;
use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::planner::{self, PlanError, PlanOptions, ResolvedModel};
use crate::v1alpha1::TrainingJobSpec;

/// The version of this contract. A trainer refuses a configuration of another version.
pub const TRAINER_CONFIG_VERSION: &str = "frugal.dev/trainer-config/v2";

/// Environment variables a pod carries.
pub mod env {
    /// Path of the rendered [`super::TrainerConfig`].
    pub const CONFIG_PATH: &str = "FRUGAL_CONFIG";
    /// The pod's index in the attempt's Indexed Job, set by Kubernetes.
    pub const POD_INDEX: &str = "JOB_COMPLETION_INDEX";
    /// The attempt, counting from 1.
    pub const ATTEMPT: &str = "FRUGAL_ATTEMPT";
    /// The attempt's Job name; pod hostnames are `<job>-<index>`.
    pub const JOB_NAME: &str = "FRUGAL_JOB_NAME";
    /// The headless Service whose subdomain the pods share.
    pub const SERVICE: &str = "FRUGAL_SERVICE";
    /// The namespace the job runs in.
    pub const NAMESPACE: &str = "FRUGAL_NAMESPACE";
    /// The TrainingJob's name, for status reports.
    pub const TRAINING_JOB: &str = "FRUGAL_TRAINING_JOB";
    /// Path of the file holding the stage-to-stage authentication token.
    pub const TOKEN_PATH: &str = "FRUGAL_TOKEN_PATH";
    /// Directory checkpoints are written under.
    pub const CHECKPOINT_DIR: &str = "FRUGAL_CHECKPOINT_DIR";
    /// Port of the Prometheus metrics endpoint.
    pub const METRICS_PORT: &str = "FRUGAL_METRICS_PORT";
    /// Directory the inputs a job names by `s3://` URI are downloaded into and reused from;
    /// unset means `frugal-inputs` in the system's temporary directory (`/tmp`, an emptyDir in
    /// a pod).
    pub const CACHE_DIR: &str = "FRUGAL_CACHE_DIR";
    /// `true` when the trainer should patch the TrainingJob's status.
    pub const REPORT_STATUS: &str = "FRUGAL_REPORT_STATUS";
    /// The pod's IP (downward API `status.podIP`); the trainer's listeners bind to it, or to
    /// every address when it is unset.
    pub const POD_IP: &str = "POD_IP";
}

/// The address a listener on `port` binds to: the pod's IP when [`env::POD_IP`] is set.
pub fn listen_address(pod_ip: Option<&str>, port: u16) -> String {
    match pod_ip.filter(|ip| !ip.is_empty()) {
        Some(ip) if ip.contains(':') => format!("[{ip}]:{port}"),
        Some(ip) => format!("{ip}:{port}"),
        None => format!("0.0.0.0:{port}"),
    }
}

/// Files and ports in a pod.
pub mod paths {
    /// Where the ConfigMap holding the configuration is mounted.
    pub const CONFIG_DIR: &str = "/etc/frugal";
    /// The ConfigMap's key, and the file name under [`CONFIG_DIR`].
    pub const CONFIG_KEY: &str = "trainer-config.yaml";
    pub const CONFIG_FILE: &str = "/etc/frugal/trainer-config.yaml";
    /// Where the token Secret is mounted.
    pub const TOKEN_DIR: &str = "/var/run/frugal";
    /// The Secret's key, and the file name under [`TOKEN_DIR`].
    pub const TOKEN_KEY: &str = "token";
    pub const TOKEN_FILE: &str = "/var/run/frugal/token";
    /// Port stages listen on for their upstream peer.
    pub const PIPELINE_PORT: u16 = 29500;
    /// Port stages listen on for the same stages of the previous replica (gradient all-reduce).
    pub const RING_PORT: u16 = 29501;
    /// Port of the metrics endpoint.
    pub const METRICS_PORT: u16 = 9090;
}

/// How an attempt's pods are found and told apart, by the operator that labels them and by
/// whoever looks for them (`kubectl frugal logs`, the tests).
pub mod pods {
    /// The TrainingJob a child belongs to.
    pub const JOB_LABEL: &str = "frugal.dev/training-job";
    /// The uid of the TrainingJob an attempt's Job and pods belong to.
    pub const JOB_UID_LABEL: &str = "frugal.dev/training-job-uid";
    /// The attempt an attempt's Job and pods belong to, counting from 1.
    pub const ATTEMPT_LABEL: &str = "frugal.dev/attempt";
    /// The container that runs the trainer.
    pub const TRAINER_CONTAINER: &str = "trainer";
    /// Where Kubernetes writes an Indexed Job pod's index ([`super::env::POD_INDEX`] in the pod).
    pub const INDEX_ANNOTATION: &str = "batch.kubernetes.io/job-completion-index";

    /// The label selector of the pods of attempt `attempt` of the TrainingJob `job` (of `uid`).
    pub fn attempt_selector(job: &str, uid: &str, attempt: i32) -> String {
        format!("{JOB_LABEL}={job},{JOB_UID_LABEL}={uid},{ATTEMPT_LABEL}={attempt}")
    }
}

/// Exit codes of `frugal-trainer train` that the operator's pod failure policy tells apart.
pub mod exit {
    /// EX_CONFIG: the job as given can never run (a field, a file, a contract version); the
    /// attempt fails for good and the termination message says what to fix.
    pub const CONFIGURATION_ERROR: i32 = 78;
    /// Stopped by SIGTERM (128 + 15) after the checkpoint every stage agreed on. Not a failure
    /// of its own: the pod was stopped from outside, and whoever stopped it decides what
    /// happens (a Job suspended by Kueue stops its pods without counting them; any other stop
    /// of a pod the Job still tracks is counted, and fails the attempt).
    pub const TERMINATED: i32 = 143;
}

/// Which TrainingJob a configuration belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The spec generation the configuration was rendered from.
    pub generation: i64,
}

/// One pipeline stage: its blocks, and whether it holds the embedding or the head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StageLayout {
    pub index: i64,
    pub layers: Range<i64>,
    pub embedding: bool,
    pub head: bool,
}

/// The pipeline: stages in order, how many each pod runs, and how many replicas of it train
/// side by side (data parallelism). Pods `r·P .. (r+1)·P` run replica `r`, where P is the pods of
/// one replica (stages / stagesPerPod).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PipelineLayout {
    pub stages: Vec<StageLayout>,
    pub stages_per_pod: i64,
    pub replicas: i64,
}

/// Everything a trainer pod needs besides its own environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrainerConfig {
    /// [`TRAINER_CONFIG_VERSION`].
    pub version: String,
    pub job: JobRef,
    /// The job's spec, as the API server stored it (defaults applied).
    pub spec: TrainingJobSpec,
    /// The model the spec resolves to.
    pub model: ResolvedModel,
    pub pipeline: PipelineLayout,
}

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    #[error("trainer configuration version {found:?} is not {expected:?}: run a trainer image that matches the operator")]
    Version { found: String, expected: &'static str },
    /// On one line, without the source snippet: the message ends in a pod's termination log
    /// and from there in the job's condition.
    #[error("trainer configuration is not valid YAML: {}", .0.without_snippet())]
    Parse(#[from] serde_saphyr::Error),
    #[error("environment variable {0} is not set")]
    MissingEnv(&'static str),
    #[error("environment variable {0}={1:?} is not a number")]
    BadNumber(&'static str, String),
    #[error("pod index {index} is outside the job's {pods} pods")]
    PodIndex { index: i64, pods: i64 },
    #[error(transparent)]
    Plan(#[from] PlanError),
}

impl TrainerConfig {
    /// Renders the configuration of a job: resolves its model and splits it into stages.
    pub fn render(job: JobRef, spec: &TrainingJobSpec) -> Result<Self, ContractError> {
        let plan = planner::plan(spec, &PlanOptions::default())?;
        let stages = plan
            .stages
            .iter()
            .enumerate()
            .map(|(index, s)| StageLayout { index: index as i64, layers: s.layers.clone(), embedding: s.embedding, head: s.head })
            .collect();
        Ok(Self {
            version: TRAINER_CONFIG_VERSION.into(),
            job,
            spec: spec.clone(),
            model: plan.model,
            pipeline: PipelineLayout {
                stages,
                stages_per_pod: spec.parallelism.gpus_per_pod.into(),
                replicas: spec.parallelism.data_parallel.max(1).into(),
            },
        })
    }

    pub fn to_yaml(&self) -> String {
        serde_saphyr::to_string(self).expect("a trainer configuration serializes")
    }

    /// Parses a configuration, refusing one of another contract version.
    pub fn from_yaml(text: &str) -> Result<Self, ContractError> {
        #[derive(Deserialize)]
        struct Versioned {
            version: String,
        }
        let found = serde_saphyr::from_str::<Versioned>(text)?.version;
        if found != TRAINER_CONFIG_VERSION {
            return Err(ContractError::Version { found, expected: TRAINER_CONFIG_VERSION });
        }
        Ok(serde_saphyr::from_str(text)?)
    }

    /// Pods of one replica of the pipeline.
    pub fn pods_per_replica(&self) -> i64 {
        self.pipeline.stages.len() as i64 / self.pipeline.stages_per_pod
    }

    /// Pods of the job: every replica's.
    pub fn pods(&self) -> i64 {
        self.pods_per_replica() * self.pipeline.replicas.max(1)
    }

    /// The replica and stages a pod runs, the peers its first and last stage talk to in its
    /// pipeline, and the pods holding the same stages in the next and previous replica (the
    /// gradient ring).
    pub fn assignment(&self, pod: &PodEnv) -> Result<PodAssignment, ContractError> {
        let pods = self.pods();
        if pod.pod_index < 0 || pod.pod_index >= pods {
            return Err(ContractError::PodIndex { index: pod.pod_index, pods });
        }
        let per_replica = self.pods_per_replica();
        let replicas = self.pipeline.replicas.max(1);
        let (replica, position) = (pod.pod_index / per_replica, pod.pod_index % per_replica);
        let per = self.pipeline.stages_per_pod as usize;
        let first = position as usize * per;
        let stages = self.pipeline.stages[first..first + per].to_vec();
        let peer = |index: i64, port: u16| Peer { pod_index: index, host: pod.peer_host(index), port };
        let in_replica = |r: i64| r.rem_euclid(replicas) * per_replica + position;
        Ok(PodAssignment {
            stages,
            replica,
            replicas,
            upstream: (position > 0).then(|| peer(pod.pod_index - 1, paths::PIPELINE_PORT)),
            downstream: (position + 1 < per_replica).then(|| peer(pod.pod_index + 1, paths::PIPELINE_PORT)),
            ring_next: (replicas > 1).then(|| peer(in_replica(replica + 1), paths::RING_PORT)),
            ring_previous: (replicas > 1).then(|| peer(in_replica(replica - 1), paths::RING_PORT)),
        })
    }
}

/// Another pod of the same attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub pod_index: i64,
    pub host: String,
    pub port: u16,
}

/// What one pod runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodAssignment {
    /// The pod's stages, in pipeline order.
    pub stages: Vec<StageLayout>,
    /// The replica of the pipeline the pod belongs to, of `replicas`.
    pub replica: i64,
    pub replicas: i64,
    /// The pod before this one in its replica, which sends activations in.
    pub upstream: Option<Peer>,
    /// The pod after this one in its replica, which activations go out to.
    pub downstream: Option<Peer>,
    /// With replicas: the pod with the same stages in the next replica, which this pod's stages
    /// send gradient chunks to (it listens on [`paths::RING_PORT`]).
    pub ring_next: Option<Peer>,
    /// With replicas: the pod with the same stages in the previous replica, which connects to
    /// this pod's ring port.
    pub ring_previous: Option<Peer>,
}

/// A pod's own environment, as the operator sets it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodEnv {
    pub config_path: String,
    pub pod_index: i64,
    pub attempt: i64,
    pub job_name: String,
    pub service: String,
    pub namespace: String,
    pub training_job: String,
    pub token_path: String,
    pub checkpoint_dir: String,
    pub metrics_port: u16,
    pub report_status: bool,
}

impl PodEnv {
    /// The variables the operator sets, except [`env::POD_INDEX`], which Kubernetes sets.
    pub fn to_env(&self) -> BTreeMap<&'static str, String> {
        BTreeMap::from([
            (env::CONFIG_PATH, self.config_path.clone()),
            (env::ATTEMPT, self.attempt.to_string()),
            (env::JOB_NAME, self.job_name.clone()),
            (env::SERVICE, self.service.clone()),
            (env::NAMESPACE, self.namespace.clone()),
            (env::TRAINING_JOB, self.training_job.clone()),
            (env::TOKEN_PATH, self.token_path.clone()),
            (env::CHECKPOINT_DIR, self.checkpoint_dir.clone()),
            (env::METRICS_PORT, self.metrics_port.to_string()),
            (env::REPORT_STATUS, self.report_status.to_string()),
        ])
    }

    /// Reads the environment through `lookup` (`|k| std::env::var(k).ok()` in a pod).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ContractError> {
        let get = |key: &'static str| lookup(key).ok_or(ContractError::MissingEnv(key));
        let number = |key: &'static str| -> Result<i64, ContractError> {
            let value = get(key)?;
            value.trim().parse().map_err(|_| ContractError::BadNumber(key, value))
        };
        Ok(Self {
            config_path: get(env::CONFIG_PATH)?,
            pod_index: number(env::POD_INDEX)?,
            attempt: number(env::ATTEMPT)?,
            job_name: get(env::JOB_NAME)?,
            service: get(env::SERVICE)?,
            namespace: get(env::NAMESPACE)?,
            training_job: get(env::TRAINING_JOB)?,
            token_path: get(env::TOKEN_PATH)?,
            checkpoint_dir: get(env::CHECKPOINT_DIR)?,
            metrics_port: u16::try_from(number(env::METRICS_PORT)?)
                .map_err(|_| ContractError::BadNumber(env::METRICS_PORT, "out of range".into()))?,
            report_status: get(env::REPORT_STATUS)? == "true",
        })
    }

    /// The stable DNS name of pod `index` of this attempt (Indexed Job hostname under the
    /// headless Service's subdomain).
    pub fn peer_host(&self, index: i64) -> String {
        format!("{}-{}.{}.{}.svc", self.job_name, index, self.service, self.namespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TrainingJobSpec {
        crate::TrainingJob::test().moe(4, 2).stages(4).micro_batches(8).gpus_per_pod(2).batch_size(16).into_spec()
    }

    fn job() -> JobRef {
        JobRef { namespace: "ml".into(), name: "lm".into(), uid: "u-1".into(), generation: 3 }
    }

    fn pod(index: i64) -> PodEnv {
        PodEnv {
            config_path: paths::CONFIG_FILE.into(),
            pod_index: index,
            attempt: 2,
            job_name: "lm-a2".into(),
            service: "lm".into(),
            namespace: "ml".into(),
            training_job: "lm".into(),
            token_path: paths::TOKEN_FILE.into(),
            checkpoint_dir: "/checkpoints".into(),
            metrics_port: paths::METRICS_PORT,
            report_status: true,
        }
    }

    #[test]
    fn config_round_trips_through_yaml() {
        let config = TrainerConfig::render(job(), &spec()).unwrap();
        let parsed = TrainerConfig::from_yaml(&config.to_yaml()).unwrap();
        assert_eq!(parsed, config);
        assert_eq!(parsed.pipeline.stages.len(), 4);
        assert_eq!(parsed.pods(), 2);
    }

    #[test]
    fn env_round_trips() {
        let env = pod(1);
        let mut vars = env.to_env();
        vars.insert(super::env::POD_INDEX, "1".into());
        let parsed = PodEnv::from_lookup(|k| vars.get(k).cloned()).unwrap();
        assert_eq!(parsed, env);
    }

    #[test]
    fn missing_or_bad_env_is_named() {
        let err = PodEnv::from_lookup(|_| None).unwrap_err();
        assert_eq!(err.to_string(), "environment variable FRUGAL_CONFIG is not set");
        let mut vars = pod(0).to_env();
        vars.insert(super::env::POD_INDEX, "zero".into());
        let err = PodEnv::from_lookup(|k| vars.get(k).cloned()).unwrap_err();
        assert!(err.to_string().contains("JOB_COMPLETION_INDEX=\"zero\""), "{err}");
    }

    #[test]
    fn listeners_bind_to_the_pod_ip() {
        assert_eq!(listen_address(Some("10.1.2.3"), 9090), "10.1.2.3:9090");
        assert_eq!(listen_address(Some("fd00::1"), 9090), "[fd00::1]:9090");
        assert_eq!(listen_address(None, 29500), "0.0.0.0:29500");
        assert_eq!(listen_address(Some(""), 29500), "0.0.0.0:29500");
    }

    #[test]
    fn another_version_is_refused() {
        let text = TrainerConfig::render(job(), &spec()).unwrap().to_yaml();
        let old = text.replace(TRAINER_CONFIG_VERSION, "frugal.dev/trainer-config/v0");
        let err = TrainerConfig::from_yaml(&old).unwrap_err();
        assert!(err.to_string().contains("trainer-config/v0"), "{err}");
    }

    #[test]
    fn a_config_that_does_not_parse_says_where_on_one_line() {
        let text = format!("version: {TRAINER_CONFIG_VERSION}\njob: {{namespace: ml}}\n");
        let err = TrainerConfig::from_yaml(&text).unwrap_err().to_string();
        assert!(err.contains("missing field `name`") && err.contains("line 2"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn pods_get_their_stages_and_peers() {
        let config = TrainerConfig::render(job(), &spec()).unwrap();
        let first = config.assignment(&pod(0)).unwrap();
        assert_eq!(first.stages.iter().map(|s| s.index).collect::<Vec<_>>(), vec![0, 1]);
        assert!(first.stages[0].embedding && !first.stages[1].head);
        assert_eq!(first.upstream, None);
        assert_eq!(first.downstream.as_ref().unwrap().host, "lm-a2-1.lm.ml.svc");
        let last = config.assignment(&pod(1)).unwrap();
        assert_eq!(last.stages.iter().map(|s| s.index).collect::<Vec<_>>(), vec![2, 3]);
        assert!(last.stages[1].head);
        assert_eq!(last.upstream.as_ref().unwrap().host, "lm-a2-0.lm.ml.svc");
        assert_eq!(last.downstream, None);
        let layers: Vec<i64> = config.pipeline.stages.iter().flat_map(|s| s.layers.clone()).collect();
        assert_eq!(layers, (0..8).collect::<Vec<_>>());
        assert!(matches!(config.assignment(&pod(2)), Err(ContractError::PodIndex { index: 2, pods: 2 })));
        assert_eq!((first.replica, first.replicas, first.ring_next.clone(), last.ring_previous.clone()), (0, 1, None, None));
    }

    #[test]
    fn replicas_get_their_pipeline_and_ring_peers() {
        let mut spec = spec();
        spec.parallelism.data_parallel = 3;
        spec.training.batch_size = 24;
        let config = TrainerConfig::render(job(), &spec).unwrap();
        assert_eq!((config.pods_per_replica(), config.pods()), (2, 6));
        // pod 3: replica 1, its second pod (stages 2 and 3)
        let a = config.assignment(&pod(3)).unwrap();
        assert_eq!((a.replica, a.replicas), (1, 3));
        assert_eq!(a.stages.iter().map(|s| s.index).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(a.upstream.as_ref().map(|p| p.pod_index), Some(2));
        assert_eq!(a.downstream, None);
        assert_eq!(a.ring_next.as_ref().map(|p| (p.pod_index, p.port)), Some((5, paths::RING_PORT)));
        assert_eq!(a.ring_previous.as_ref().map(|p| p.host.as_str()), Some("lm-a2-1.lm.ml.svc"));
        // the last replica's ring closes on the first
        let z = config.assignment(&pod(4)).unwrap();
        assert_eq!((z.replica, z.ring_next.as_ref().unwrap().pod_index, z.ring_previous.as_ref().unwrap().pod_index), (2, 0, 2));
        assert!(matches!(config.assignment(&pod(6)), Err(ContractError::PodIndex { index: 6, pods: 6 })));
    }
}
