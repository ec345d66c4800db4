//! `kubectl frugal`: a kubectl plugin for frugal's TrainingJobs and TrainingBudgets.
//!
//! `plan` prints a manifest's plan and whether the operator would run it, before anything is
//! applied; `report` compares the cluster's TrainingJobs in one table, against a baseline job if
//! asked; `budget` shows each TrainingBudget's ledger, who holds its GPUs and who waits; `logs`
//! prints (or follows) the logs of a job's current attempt, every pod's lines prefixed by its
//! stage and replica; `describe` tells one job's plan, bill, conditions and budget. On PATH as
//! `kubectl-frugal`, kubectl runs it as `kubectl frugal`; its cluster flags are kubectl's
//! (`--kubeconfig`, `--context`, `-n`, `--as`, `--as-group`). Exit status: 0, 1 when `plan` finds
//! the job would be refused, 2 on an error (no cluster, no CRDs, a bad manifest).

mod budget;
mod cluster;
mod describe;
mod logs;
mod output;
mod plan;
mod report;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use cluster::Target;

#[derive(Parser)]
#[command(
    name = "kubectl-frugal",
    bin_name = "kubectl frugal",
    version,
    about = "frugal's TrainingJobs and TrainingBudgets: plan, report, budget, logs, describe"
)]
struct Cli {
    /// The kubeconfig file to use (default: KUBECONFIG, else ~/.kube/config).
    #[arg(long, global = true, value_name = "PATH")]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: the current context).
    #[arg(long, global = true)]
    context: Option<String>,
    /// The namespace (default: the context's namespace).
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    /// The user to impersonate, as kubectl's --as.
    #[arg(long = "as", global = true, value_name = "USER")]
    as_user: Option<String>,
    /// A group to impersonate (repeatable), with --as.
    #[arg(long = "as-group", global = true, value_name = "GROUP")]
    as_groups: Vec<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A TrainingJob manifest's plan (parameters, FLOPs, memory per GPU and stage, GPUs,
    /// GPU-hours, cost, warnings) and whether it would be admitted; exits 1 if it would be refused.
    Plan {
        /// The TrainingJob manifest.
        file: PathBuf,
        /// Check without a cluster: the planner, GPU memory and the job's own limits only.
        #[arg(long)]
        offline: bool,
        /// The operator's --max-gpus-per-job, to check the job against it.
        #[arg(long)]
        max_gpus_per_job: Option<i32>,
        #[arg(short = 'o', long, value_enum, default_value_t = PlanFormat::Text)]
        output: PlanFormat,
    },
    /// One row per TrainingJob from its status: model, parameters, FLOPs, GPUs, quality,
    /// throughput, GPU-hours and cost, phase; with --baseline, ratios against that job.
    Report {
        /// Every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// A TrainingJob to compare the others against (namespace/name with -A); with --seeds,
        /// an experiment.
        #[arg(long)]
        baseline: Option<String>,
        /// One row per experiment over its seeds: the jobs sharing the frugal.dev/experiment
        /// label (a job without it is an experiment of its own), the mean with the seeds' range,
        /// FLOPs and GPU-hours to the quality target.
        #[arg(long)]
        seeds: bool,
        #[arg(short = 'o', long, value_enum, default_value_t = ReportFormat::Text)]
        output: ReportFormat,
    },
    /// Each TrainingBudget's ledger: limits, spent this period, GPUs in use, who holds them and
    /// who waits, and why.
    Budget {
        /// Every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// wide: the holders' estimated cost and uid as well; name: `trainingbudget.frugal.dev/NAME` lines.
        #[arg(short = 'o', long, value_enum, default_value_t = BudgetFormat::Text)]
        output: BudgetFormat,
    },
    /// The logs of the job's current attempt: every pod's, each line prefixed by the pod's
    /// pipeline stage and replica (`[stage 0 replica 1] `); with -f, followed until every pod ends.
    Logs {
        /// The TrainingJob.
        job: String,
        /// Follow the logs as they are written, until every pod of the attempt has ended.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only the last N lines of each pod's log.
        #[arg(long, value_name = "N")]
        tail: Option<i64>,
    },
    /// One job, as kubectl describe tells it: its plan, the bill per pod, its conditions in the
    /// order they happened, and the view of the TrainingBudget it is counted in.
    Describe {
        /// The TrainingJob.
        job: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum PlanFormat {
    Text,
    Json,
    Yaml,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Text,
    /// The table with each job's attempt, restarts, progress and budget.
    Wide,
    Csv,
    Markdown,
    Json,
    Yaml,
    /// `trainingjob.frugal.dev/NAME`, one a line, as `kubectl get -o name`.
    Name,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BudgetFormat {
    Text,
    Wide,
    Json,
    Yaml,
    Name,
}

fn all_namespaces(all: bool, target: &Target) -> anyhow::Result<bool> {
    if all && target.namespace.is_some() {
        anyhow::bail!("-A and -n name different scopes: give one of them");
    }
    Ok(all)
}

/// Writes to stdout; a reader that went away (`| head`) is not an error.
fn emit(text: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    let target = Target { kubeconfig: cli.kubeconfig, context: cli.context, namespace: cli.namespace, user: cli.as_user, groups: cli.as_groups };
    match cli.command {
        Command::Plan { file, offline, max_gpus_per_job, output } => {
            let planned = plan::run(&file, offline, max_gpus_per_job, &target).await?;
            match output {
                PlanFormat::Text => {
                    let (job, _) = plan::load(&file)?;
                    emit(&plan::text(&planned, &job));
                }
                PlanFormat::Json => emit(&(serde_json::to_string_pretty(&planned)? + "\n")),
                PlanFormat::Yaml => emit(&output::yaml(&planned)?),
            }
            Ok(if planned.refused { 1 } else { 0 })
        }
        Command::Report { all_namespaces, baseline, seeds, output } => {
            let all = self::all_namespaces(all_namespaces, &target)?;
            emit(&report::run(&target, all, baseline.as_deref(), seeds, output).await?);
            Ok(0)
        }
        Command::Budget { all_namespaces, output } => {
            let all = self::all_namespaces(all_namespaces, &target)?;
            emit(&budget::run(&target, all, output).await?);
            Ok(0)
        }
        Command::Logs { job, follow, tail } => {
            logs::run(&target, &job, follow, tail).await?;
            Ok(0)
        }
        Command::Describe { job } => {
            emit(&describe::run(&target, &job).await?);
            Ok(0)
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
    let code = match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kubectl frugal: error: {e:#}");
            2
        }
    };
    std::process::exit(code);
}
