//! `frugal-operator run`: logging, a rate-limited client, the health and metrics server, leader
//! election on a Lease, and the controllers (`manager`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use kube::client::ClientBuilder;
use kube::{Client, Config};
use kube_lease_manager::LeaseManagerBuilder;
use tracing::{error, info};

use crate::RunArgs;
use crate::manager;
use crate::metrics::folded::Location;
use crate::metrics::{self, Health, Metrics};
use crate::settings::Settings;

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn,kube_lease_manager=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if format == "text" {
        builder.init();
    } else {
        // the reconcile span carries `job`, so every line a pass logs names its TrainingJob
        builder.json().flatten_event(true).with_current_span(true).with_span_list(false).init();
    }
}

/// A client that sends at most `qps` requests per second (the rest wait their turn).
async fn client(qps: u64) -> anyhow::Result<Client> {
    let config = Config::infer().await.context("no Kubernetes configuration (KUBECONFIG or in-cluster)")?;
    let builder = ClientBuilder::try_from(config)?;
    let limited = builder.with_layer(&tower::limit::RateLimitLayer::new(qps.max(1), Duration::from_secs(1)));
    Ok(limited.build())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("a SIGTERM handler installs");
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
}

/// `--billed-record` as a location (None for `none`).
fn billed_record(flag: Option<&str>) -> anyhow::Result<Option<Location>> {
    match flag {
        Some("none") => Ok(None),
        Some(s) => Ok(Some(s.parse().map_err(anyhow::Error::msg)?)),
        None => {
            let namespace = std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "default".into());
            Ok(Some(Location { namespace, name: "frugal-billed".into() }))
        }
    }
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    init_logging(&args.log_format);
    let settings = Settings {
        max_gpus_per_job: args.max_gpus_per_job,
        trainer_image: args.trainer_image.clone(),
        trainer_cpu_image: args.trainer_cpu_image.clone(),
        termination_grace_seconds: args.termination_grace_seconds,
        admission_policies: args.admission_policies.clone(),
        metrics_namespace: args.metrics_namespace.clone(),
        finished_attempt_ttl_seconds: (args.finished_attempt_ttl_seconds > 0).then_some(args.finished_attempt_ttl_seconds),
        billed_record: billed_record(args.billed_record.as_deref())?,
        admission_check: args.kueue_admission_check,
        ..Settings::default()
    };
    let client = client(args.api_qps).await?;
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health::default());
    health.alive.store(true, Ordering::Relaxed);
    {
        let (metrics, health) = (metrics.clone(), health.clone());
        let addr = args.metrics_addr;
        tokio::spawn(async move {
            if let Err(e) = metrics::serve(addr, metrics, health).await {
                error!("metrics server: {e:#}");
                std::process::exit(1);
            }
        });
    }
    let namespaces = args.namespaces.clone();

    if !args.leader_elect {
        info!(max_gpus_per_job = settings.max_gpus_per_job, "starting the controller");
        manager::run_scopes(client, settings, namespaces, metrics, health.clone(), shutdown_signal()).await?;
        health.alive.store(false, Ordering::Relaxed);
        return Ok(());
    }

    let identity =
        std::env::var("POD_NAME").or_else(|_| std::env::var("HOSTNAME")).unwrap_or_else(|_| format!("frugal-operator-{}", std::process::id()));
    let namespace = args.lease_namespace.clone().or_else(|| std::env::var("POD_NAMESPACE").ok()).unwrap_or_else(|| "default".into());
    let manager = LeaseManagerBuilder::new(client.clone(), &args.lease_name)
        .with_namespace(&namespace)
        .with_identity(&identity)
        .with_duration(15)
        .with_grace(5)
        .build()
        .await
        .context("setting up leader election")?;
    let (mut leader, lease_task) = manager.watch().await;
    // a standby is ready: it serves its purpose by waiting
    health.ready.store(true, Ordering::Relaxed);
    info!(%identity, lease = %format!("{namespace}/{}", args.lease_name), "waiting to be elected leader");
    tokio::select! {
        _ = async { while !*leader.borrow_and_update() { if leader.changed().await.is_err() { break; } } } => {},
        _ = shutdown_signal() => return Ok(()),
    }
    info!(%identity, "elected leader; starting the controller");
    health.ready.store(false, Ordering::Relaxed);
    let mut lost = leader.clone();
    let stop = async move {
        tokio::select! {
            _ = async { while *lost.borrow_and_update() { if lost.changed().await.is_err() { break; } } } => {
                error!("lost the leader lease; stopping");
            },
            _ = shutdown_signal() => {},
        }
    };
    manager::run_scopes(client, settings, namespaces, metrics, health.clone(), stop).await?;
    health.alive.store(false, Ordering::Relaxed);
    drop(leader);
    // dropping the channel ends the lease task, which releases the lease for the next leader
    let _ = lease_task.await;
    Ok(())
}
