//! `frugal-pod-runner`: runs marked pods of a test cluster as local processes (test
//! infrastructure; see the crate's documentation).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use frugal_pod_runner::pod::ApiServer;
use frugal_pod_runner::runner::{Settings, run};

#[derive(Parser)]
#[command(about = "Runs marked pods of a test cluster as local processes, standing in for the kubelet")]
struct Args {
    /// Pods to run: a label selector. By default marked pods that are not held
    /// (`frugal.dev/pod-runner-hold` set waits until the label is removed).
    #[arg(long, default_value = "frugal.dev/pod-runner=true,!frugal.dev/pod-runner-hold")]
    selector: String,
    /// Per-pod directories and shared claim directories go here.
    #[arg(long)]
    work_dir: PathBuf,
    /// Each pod's output goes to `<namespace>.<pod>.log` here.
    #[arg(long)]
    log_dir: PathBuf,
    /// Directories put first on the processes' PATH (colon-separated).
    #[arg(long, default_value = "")]
    path_prefix: String,
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into())).init();
    let args = Args::parse();
    let config = kube::Config::infer().await.context("reading KUBECONFIG")?;
    let api_server = ApiServer { url: config.cluster_url.to_string().trim_end_matches('/').to_string(), ca_pem: ca_pem(&config) };
    let client = kube::Client::try_from(config)?;
    let settings = Settings { selector: args.selector, work_dir: args.work_dir, log_dir: args.log_dir, path_prefix: args.path_prefix };
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! { _ = term.recv() => {}, _ = tokio::signal::ctrl_c() => {} }
    };
    run(client, api_server, settings, shutdown).await
}

fn ca_pem(config: &kube::Config) -> String {
    use base64::Engine;
    let mut pem = String::new();
    for der in config.root_cert.iter().flatten() {
        let body = base64::engine::general_purpose::STANDARD.encode(der);
        pem.push_str("-----BEGIN CERTIFICATE-----\n");
        for chunk in body.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(chunk).unwrap());
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
    }
    pem
}
