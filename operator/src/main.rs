//! `frugal-operator`: runs TrainingJobs as GPU pods within their budgets.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

mod admission_check;
mod conditions;
mod crd;
mod manager;
mod metrics;
mod names;
mod pods;
mod policies;
mod reaper;
mod run;
mod settings;
mod synced;
mod training_budget;
mod training_job;

#[derive(Parser)]
#[command(name = "frugal-operator", version, about = "Runs TrainingJobs as GPU pods within their budgets")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions as YAML, or write one file per CRD into --dir.
    Crd {
        /// Directory to write `<crd-name>.yaml` files into instead of printing.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Run the controller against the cluster in KUBECONFIG (or the in-cluster config).
    Run(Box<RunArgs>),
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Most GPUs one job may hold, whatever its budget.maxGpus says.
    #[arg(long, default_value_t = frugal_api::admission::DEFAULT_MAX_GPUS_PER_JOB)]
    pub max_gpus_per_job: i32,
    /// Trainer image for jobs whose spec.image is empty (GPU jobs: the `cuda` variant).
    #[arg(long)]
    pub trainer_image: Option<String>,
    /// Trainer image for CPU jobs (resources.device CPU) whose spec.image is empty: the `cpu`
    /// variant, without the CUDA libraries (default: --trainer-image).
    #[arg(long)]
    pub trainer_cpu_image: Option<String>,
    /// Seconds a stopping trainer pod gets to write its checkpoint.
    #[arg(long, default_value_t = 300)]
    pub termination_grace_seconds: i64,
    /// Watch only this namespace, repeated for several (default: all).
    #[arg(long = "namespace")]
    pub namespaces: Vec<String>,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub metrics_addr: std::net::SocketAddr,
    /// Elect a leader on a Lease so that only one replica reconciles.
    #[arg(long)]
    pub leader_elect: bool,
    /// Namespace of the leader-election Lease (default: the pod's namespace from
    /// POD_NAMESPACE, else `default`).
    #[arg(long)]
    pub lease_namespace: Option<String>,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "frugal-operator")]
    pub lease_name: String,
    /// Most API requests per second the operator sends (sustained).
    #[arg(long, default_value_t = 50)]
    pub api_qps: u64,
    /// An admission policy the chart installs (a ValidatingAdmissionPolicy and its binding of
    /// this name), repeated for each; one the API server lacks is reported in a metric and a
    /// condition on every job.
    #[arg(long = "admission-policy")]
    pub admission_policies: Vec<String>,
    /// Seconds after a job finished (one without ttlSecondsAfterFinished) that its attempt Jobs
    /// and their pods are deleted: the bill is final in its status by then; 0 keeps them.
    #[arg(long, default_value_t = 3600)]
    pub finished_attempt_ttl_seconds: i64,
    /// The namespace Prometheus scrapes trainer pods from: each job's NetworkPolicy admits the
    /// metrics port from it only (default: from any namespace).
    #[arg(long)]
    pub metrics_namespace: Option<String>,
    /// The ConfigMap, NAMESPACE/NAME, where each deleted job's final bill is added before the
    /// job goes, so that the billed counters never go down across restarts (default:
    /// POD_NAMESPACE, else `default`, and `frugal-billed`; `none` keeps no record).
    #[arg(long)]
    pub billed_record: Option<String>,
    /// Serve Kueue's AdmissionCheck controller `frugal.dev/budget`: the Workloads of every
    /// ClusterQueue that lists such an AdmissionCheck are decided against their TrainingBudgets
    /// and their pods billed into them (needs Kueue's v1beta2 API and the RBAC the chart gives
    /// with kueueAdmissionCheck.enabled).
    #[arg(long)]
    pub kueue_admission_check: bool,
    /// Log format: json (default) or text.
    #[arg(long, default_value = "json")]
    pub log_format: String,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd { dir: None } => print!("{}", crd::crds_yaml()),
        Command::Crd { dir: Some(dir) } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for (name, yaml) in crd::crd_files() {
                let path = dir.join(name);
                std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
            }
        }
        Command::Run(args) => {
            // Workers get the main thread's 8 MiB, not tokio's 2 MiB: an unoptimised build's
            // reconcile futures hold whole TrainingJobs on the stack, and a debug operator (the
            // end-to-end tests run one) must not overflow where a release one would not.
            let runtime = tokio::runtime::Builder::new_multi_thread().thread_stack_size(8 << 20).enable_all().build()?;
            runtime.block_on(run::run(*args))?;
        }
    }
    Ok(())
}
