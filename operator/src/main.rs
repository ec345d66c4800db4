//! `frugal-operator`: runs TrainingJobs as GPU pods within their budgets.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

mod crd;

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
    }
    Ok(())
}
