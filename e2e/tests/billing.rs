//! Billing end to end: what the operator bills a job (`status.cost`) against what the test reads
//! from the job's pods themselves, and a budget's `maxGpus` against the GPUs its jobs' pods hold
//! at every instant. Each test starts `frugal-operator run` for its own namespace (see
//! `frugal_e2e::operator`); kwok's GPU nodes fake the pods, which the test finishes a few seconds
//! after they run.
//!
//! A pod's GPU time, as the test counts it, is what its own object says: its GPUs (its
//! containers' `nvidia.com/gpu` limits) from its PodScheduled=True `lastTransitionTime` to its
//! containers' latest `finishedAt`. Both stamps are whole seconds, and so are a record's `from`
//! and `until` once written (they are `metav1.Time`s). The operator reads the same two stamps, so
//! the test holds each pod's record to them: it starts at the scheduled stamp exactly, and ends
//! at the finish stamp, or a second after it when a pass billed the pod as still Running during
//! the second after that stamp (a record's end never moves back).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt as _, reflector, watcher};
use kube::{Api, ResourceExt as _};

use frugal_api::v1alpha1::{BudgetAdmission, Phase};
use frugal_api::{TrainingBudget, TrainingJob};
use frugal_e2e::operator::Operator;
use frugal_e2e::prometheus;
use frugal_e2e::training_job::{apply, condition, finish_pod, job_where, phase, run_ending_pods, running_pods};
use frugal_e2e::{FIELD_MANAGER, GPU_RESOURCE, TestContext, manifests, wait};

/// The operator's own ceiling is raised, so that the budget is the limit a job meets; a stopped
/// pod gets 5 s to write its checkpoint.
const OPERATOR_ARGS: [&str; 4] = ["--termination-grace-seconds", "5", "--max-gpus-per-job", "8"];
/// How often the operator bills a job whose pods hold GPUs (its `bill::BILLING_INTERVAL`).
const BILLING_INTERVAL: Duration = Duration::from_secs(15);
/// The grace a stopped pod gets (`--termination-grace-seconds` above).
const GRACE: Duration = Duration::from_secs(5);
/// How far past its pod's finish stamp a record may end: that stamp's resolution.
const STAMP_RESOLUTION_SECS: f64 = 1.0;

/// A job of `gpus` GPUs in one pod under budget `budget`.
fn training_job(name: &str, gpus: i32, budget: &str) -> TrainingJob {
    let mut tj = frugal_e2e::training_job::fake_gpu_job(name, gpus, gpus);
    tj.spec.budget.budget_ref = Some(budget.into());
    tj
}

fn training_budget(name: &str, max_gpus: i32, gpu_hours: f64, admission: BudgetAdmission) -> TrainingBudget {
    TrainingBudget::test(max_gpus).name(name).gpu_hours(Some(gpu_hours)).admission(admission).build()
}

async fn setup(ctx: &TestContext) -> Result<Operator> {
    manifests::install_crds(&ctx.client).await?;
    Operator::start(&ctx.namespace, &OPERATOR_ARGS)
}

async fn apply_budget(ctx: &TestContext, budget: &TrainingBudget) -> Result<()> {
    let api: Api<TrainingBudget> = ctx.api();
    api.patch(&budget.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(budget)).await?;
    Ok(())
}

async fn apply_all(ctx: &TestContext, names: &[String], gpus: i32, budget: &str) -> Result<()> {
    futures::future::try_join_all(names.iter().map(|n| {
        let tj = training_job(n, gpus, budget);
        async move { apply(ctx, &tj).await }
    }))
    .await?;
    Ok(())
}

fn secs(t: &Time) -> f64 {
    t.0.as_second() as f64 + f64::from(t.0.subsec_nanosecond()) / 1e9
}

/// GPUs a pod asks for: its containers' limits.
fn pod_gpus(pod: &Pod) -> i32 {
    let containers = pod.spec.iter().flat_map(|s| &s.containers);
    containers.filter_map(|c| c.resources.as_ref()?.limits.as_ref()?.get(GPU_RESOURCE)).filter_map(|q| q.0.parse::<i32>().ok()).sum()
}

fn terminal(pod: &Pod) -> bool {
    matches!(frugal_e2e::fixtures::phase(pod), "Succeeded" | "Failed")
}

/// One pod's hold on GPUs as its own object shows it (seconds since the epoch).
#[derive(Debug, Clone)]
struct PodHold {
    name: String,
    attempt: i32,
    gpus: i32,
    scheduled: f64,
    /// Its containers' latest finish, once it terminated.
    finished: Option<f64>,
}

impl PodHold {
    /// None for a pod never scheduled.
    fn of(pod: &Pod) -> Option<Self> {
        let status = pod.status.as_ref()?;
        let conditions = status.conditions.iter().flatten();
        let scheduled = conditions.filter(|c| c.type_ == "PodScheduled" && c.status == "True").find_map(|c| c.last_transition_time.as_ref())?;
        let containers = status.container_statuses.iter().flatten();
        let finished = containers.filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref()).map(secs).reduce(f64::max);
        Some(Self {
            name: pod.name_any(),
            attempt: pod.labels().get("frugal.dev/attempt").and_then(|a| a.parse().ok()).unwrap_or(0),
            gpus: pod_gpus(pod),
            scheduled: secs(scheduled),
            finished: finished.filter(|_| terminal(pod)),
        })
    }
}

/// A job's bill against its pods, in GPU-seconds.
#[derive(Debug, Clone, Default)]
struct Bill {
    pods: usize,
    /// Its pods' GPUs × (finish stamp − scheduled stamp).
    pod_gpu_seconds: f64,
    /// `status.cost.gpuHours` × 3600.
    billed_gpu_seconds: f64,
    /// How far past its pod's finish stamp the latest record ends.
    latest_end_past_finish: f64,
    /// Records that end past their pod's finish stamp.
    ends_past_finish: usize,
}

/// Checks finished job `tj`'s `status.cost` against `pods`, all of its pods (finished): one
/// record per pod that held GPUs, none twice, each of the pod's GPUs, from its scheduled stamp,
/// ended, and ending at its finish stamp or within the second after it; the total is their sum.
fn check_bill(tj: &TrainingJob, pods: &[Pod]) -> Result<Bill> {
    let name = tj.name_any();
    let Some(cost) = tj.status.as_ref().and_then(|s| s.cost.as_ref()) else { bail!("{name} has no status.cost") };
    let records = &cost.pods;
    let mut keys = HashSet::new();
    for r in records {
        ensure!(keys.insert((r.name.clone(), r.attempt)), "{name} bills pod {} (attempt {}) twice: {records:#?}", r.name, r.attempt);
    }
    let holds: Vec<PodHold> = pods.iter().filter_map(PodHold::of).filter(|h| h.gpus > 0).collect();
    ensure!(
        records.len() == holds.len(),
        "{name} has {} pod records for {} pods that held GPUs: {records:#?}\npods: {holds:#?}",
        records.len(),
        holds.len()
    );
    let mut bill = Bill { pods: holds.len(), billed_gpu_seconds: cost.gpu_hours * 3600.0, ..Bill::default() };
    let mut summed = 0.0;
    for hold in &holds {
        let Some(r) = records.iter().find(|r| r.name == hold.name && r.attempt == hold.attempt) else {
            bail!("{name}: pod {} (attempt {}) is not billed: {records:#?}", hold.name, hold.attempt)
        };
        let Some(finished) = hold.finished else { bail!("{name}: pod {} has not finished", hold.name) };
        let (from, until) = (secs(&r.from), secs(&r.until));
        let past = until - finished;
        ensure!(r.gpus == hold.gpus, "{name}: pod {} holds {} GPUs, billed {}", hold.name, hold.gpus, r.gpus);
        ensure!(r.ended, "{name} finished, but the bill of its pod {} is still open: {r:?}", hold.name);
        ensure!(from == hold.scheduled, "{name}: pod {} was scheduled at {}, billed from {from}", hold.name, hold.scheduled);
        ensure!(
            (0.0..=STAMP_RESOLUTION_SECS).contains(&past),
            "{name}: pod {} finished at {finished} (stamp), billed until {until}: {past:.3} s past it",
            hold.name
        );
        let record_seconds = f64::from(r.gpus) * (until - from);
        ensure!((r.gpu_hours * 3600.0 - record_seconds).abs() < 1e-6, "{name}: record {r:?} is not its GPUs × its interval");
        summed += record_seconds;
        bill.pod_gpu_seconds += f64::from(hold.gpus) * (finished - hold.scheduled);
        bill.latest_end_past_finish = bill.latest_end_past_finish.max(past);
        bill.ends_past_finish += usize::from(past > 0.0);
    }
    ensure!((summed - bill.billed_gpu_seconds).abs() < 1e-6, "{name}: status.cost.gpuHours {} is not the sum of its records", cost.gpu_hours);
    Ok(bill)
}

fn pods_of(pods: &[Pod], job: &str) -> Vec<Pod> {
    pods.iter().filter(|p| p.labels().get("frugal.dev/training-job").map(String::as_str) == Some(job)).cloned().collect()
}

/// The GPUs the namespace's pods held after each change a watch delivered (pods on a node, not
/// yet Succeeded or Failed, in the order the API server wrote them), and the most at once.
#[derive(Debug, Default, Clone)]
struct Held {
    now: i32,
    max: i32,
    /// The pods that held the most.
    at_max: Vec<String>,
}

impl Held {
    fn record(&mut self, pods: &BTreeMap<String, Pod>) {
        let holding: Vec<&Pod> = pods.values().filter(|p| p.spec.as_ref().is_some_and(|s| s.node_name.is_some()) && !terminal(p)).collect();
        self.now = holding.iter().map(|p| pod_gpus(p)).sum();
        if self.now > self.max {
            self.max = self.now;
            self.at_max = holding.iter().map(|p| p.name_any()).collect();
        }
    }
}

/// A watch on the test's pods that keeps [`Held`] and, with `run_for`, finishes each pod that
/// long after it is first seen Running (the job's "training").
struct PodWatch {
    held: Arc<Mutex<Held>>,
    task: tokio::task::JoinHandle<()>,
}

impl PodWatch {
    /// Starts the watch and returns once its first list is in, so that no change is missed.
    async fn start(ctx: &TestContext, run_for: Option<Duration>) -> Result<Self> {
        let held = Arc::new(Mutex::new(Held::default()));
        let (listed, first_list) = tokio::sync::oneshot::channel();
        let task = tokio::spawn({
            let (ctx, held) = (ctx.clone(), held.clone());
            async move {
                let mut listed = Some(listed);
                let (mut pods, mut listing) = (BTreeMap::new(), BTreeMap::new());
                let mut finishing = HashSet::new();
                let mut events = watcher(ctx.api::<Pod>(), watcher::Config::default()).default_backoff().boxed();
                while let Some(event) = events.next().await {
                    match event {
                        Ok(watcher::Event::Init) => listing.clear(),
                        Ok(watcher::Event::InitApply(p)) => drop(listing.insert(p.name_any(), p)),
                        Ok(watcher::Event::InitDone) => {
                            pods = std::mem::take(&mut listing);
                            if let Some(tx) = listed.take() {
                                let _ = tx.send(());
                            }
                        }
                        Ok(watcher::Event::Apply(p)) => drop(pods.insert(p.name_any(), p)),
                        Ok(watcher::Event::Delete(p)) => drop(pods.remove(&p.name_any())),
                        Err(_) => {}
                    }
                    held.lock().unwrap().record(&pods);
                    let Some(after) = run_for else { continue };
                    for pod in pods.values().filter(|p| frugal_e2e::fixtures::phase(p) == "Running") {
                        if finishing.insert(pod.name_any()) {
                            let (ctx, name) = (ctx.clone(), pod.name_any());
                            tokio::spawn(async move {
                                tokio::time::sleep(after).await;
                                let _ = finish_pod(&ctx, &name).await;
                            });
                        }
                    }
                }
            }
        });
        wait::until("the pod watch's first list", first_list).await?;
        Ok(Self { held, task })
    }

    fn held(&self) -> Held {
        self.held.lock().unwrap().clone()
    }
}

impl Drop for PodWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the test saw of the spending as it happened: each job's latest `status.cost.gpuHours`
/// and every time it went down (a bill only grows), and the most the budget's ledger had counted
/// of each job while it held an entry (`status.jobs[].gpuHoursCounted`).
#[derive(Debug, Default, Clone)]
struct Spent {
    latest: BTreeMap<String, f64>,
    drops: Vec<String>,
    counted: BTreeMap<String, f64>,
}

/// A watch on the test's TrainingJobs and its budget `budget` that keeps [`Spent`].
struct SpendWatch {
    spent: Arc<Mutex<Spent>>,
    task: tokio::task::JoinHandle<()>,
}

impl SpendWatch {
    fn start(ctx: &TestContext, budget: &str) -> Self {
        let spent = Arc::new(Mutex::new(Spent::default()));
        let jobs = watcher(ctx.api::<TrainingJob>(), watcher::Config::default()).default_backoff().applied_objects().map_ok(Ok);
        let budgets = watcher(ctx.api::<TrainingBudget>(), watcher::Config::default().fields(&format!("metadata.name={budget}")))
            .default_backoff()
            .applied_objects()
            .map_ok(Err);
        let mut changes = futures::stream::select(jobs.boxed(), budgets.boxed());
        let task = tokio::spawn({
            let spent = spent.clone();
            async move {
                while let Some(change) = changes.next().await {
                    let mut spent = spent.lock().unwrap();
                    match change {
                        Ok(Ok(tj)) => {
                            let Some(hours) = tj.status.as_ref().and_then(|s| s.cost.as_ref()).map(|c| c.gpu_hours) else { continue };
                            let was = spent.latest.insert(tj.name_any(), hours).unwrap_or_default();
                            if hours < was {
                                let line = format!(
                                    "{}: status.cost.gpuHours went down from {was} to {hours} ({:.3} GPU-s)",
                                    tj.name_any(),
                                    (was - hours) * 3600.0
                                );
                                spent.drops.push(line);
                            }
                        }
                        Ok(Err(b)) => {
                            for h in b.status.iter().flat_map(|s| &s.jobs) {
                                let counted = spent.counted.entry(h.name.clone()).or_default();
                                *counted = counted.max(h.gpu_hours_counted);
                            }
                        }
                        Err(_) => {}
                    }
                }
            }
        });
        Self { spent, task }
    }

    fn spent(&self) -> Spent {
        self.spent.lock().unwrap().clone()
    }
}

impl Drop for SpendWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits up to `limit` until every job of `names` is Succeeded, and returns them; one that
/// Failed fails the wait at once.
async fn all_succeeded(ctx: &TestContext, names: &[String], limit: Duration) -> Result<Vec<TrainingJob>> {
    let (reader, writer) = reflector::store();
    let mut changes = reflector::reflector(writer, watcher(ctx.api::<TrainingJob>(), watcher::Config::default())).touched_objects().boxed();
    wait::within(limit, &format!("{} jobs Succeeded", names.len()), async {
        while changes.try_next().await?.is_some() {
            let jobs: Vec<TrainingJob> = reader.state().iter().filter(|tj| names.contains(&tj.name_any())).map(|tj| (**tj).clone()).collect();
            if let Some(failed) = jobs.iter().find(|tj| phase(tj) == Some(Phase::Failed)) {
                bail!("{} Failed: {:?}", failed.name_any(), condition(failed, "Failed").map(|c| &c.message));
            }
            if jobs.len() == names.len() && jobs.iter().all(|tj| phase(tj) == Some(Phase::Succeeded)) {
                return Ok(jobs);
            }
        }
        bail!("watch ended")
    })
    .await
}

/// Checks every job's bill against its pods, and returns the bills summed.
async fn bills(ctx: &TestContext, jobs: &[TrainingJob]) -> Result<Bill> {
    let pods = ctx.api::<Pod>().list(&ListParams::default()).await?.items;
    let mut total = Bill::default();
    for tj in jobs {
        let bill = check_bill(tj, &pods_of(&pods, &tj.name_any()))?;
        total.pods += bill.pods;
        total.pod_gpu_seconds += bill.pod_gpu_seconds;
        total.billed_gpu_seconds += bill.billed_gpu_seconds;
        total.latest_end_past_finish = total.latest_end_past_finish.max(bill.latest_end_past_finish);
        total.ends_past_finish += bill.ends_past_finish;
    }
    Ok(total)
}

const BURST_ROUNDS: usize = 5;
const BURST_JOBS: usize = 20;
const BURST_MAX_GPUS: i32 = 4;
/// How long each pod of the burst "trains" once Running: long enough that the one second by
/// which a record may end past its pod's finish stamp is small against the total.
const BURST_RUN_FOR: Duration = Duration::from_secs(3);

/// One round of the burst, as the pods showed it.
#[derive(Debug)]
struct Round {
    worst_held: i32,
    succeeded: usize,
    took: Duration,
    bill: Bill,
}

/// 20 jobs of 2 GPUs applied at once under a budget of 4 GPUs; each pod finishes
/// [`BURST_RUN_FOR`] after it runs.
async fn burst(ctx: &TestContext) -> Result<Round> {
    let _operator = setup(ctx).await?;
    apply_budget(ctx, &training_budget("team", BURST_MAX_GPUS, 100.0, BudgetAdmission::LookAhead)).await?;
    let watch = PodWatch::start(ctx, Some(BURST_RUN_FOR)).await?;
    let names: Vec<String> = (0..BURST_JOBS).map(|i| format!("j{i}")).collect();
    let started = Instant::now();
    apply_all(ctx, &names, 2, "team").await?;
    let jobs = all_succeeded(ctx, &names, Duration::from_secs(150)).await?;
    let took = started.elapsed();
    let held = watch.held();
    ensure!(held.max <= BURST_MAX_GPUS, "the pods held {} GPUs at once under a budget of {BURST_MAX_GPUS}: {:?}", held.max, held.at_max);
    Ok(Round { worst_held: held.max, succeeded: jobs.len(), took, bill: bills(ctx, &jobs).await? })
}

/// The budget's ledger lets no more GPUs be held at once than its maxGpus, as the pods
/// themselves show it at every change, through five bursts of jobs applied at once; every job
/// succeeds, and each is billed its pods' own time.
#[tokio::test]
async fn twenty_jobs_in_a_burst_never_hold_more_than_the_budget_and_all_succeed() {
    if !frugal_e2e::enabled() {
        eprintln!("e2e: skipping the burst: set FRUGAL_E2E=1 (and KUBECONFIG) to run against a cluster");
        return;
    }
    let rounds = Arc::new(Mutex::new(Vec::new()));
    for round in 1..=BURST_ROUNDS {
        let rounds = rounds.clone();
        run_ending_pods(&format!("billing-burst-{round}"), move |ctx| async move {
            let r = burst(&ctx).await?;
            let b = &r.bill;
            eprintln!(
                "burst round {round}: worst GPUs held {} of {BURST_MAX_GPUS}; {} of {BURST_JOBS} jobs Succeeded in {:.1} s; billed {:.0} GPU-s for {:.0} GPU-s of pod time ({} pods, {} billed past their finish stamp, at most {:.3} s)",
                r.worst_held,
                r.succeeded,
                r.took.as_secs_f64(),
                b.billed_gpu_seconds,
                b.pod_gpu_seconds,
                b.pods,
                b.ends_past_finish,
                b.latest_end_past_finish
            );
            rounds.lock().unwrap().push(r);
            Ok(())
        })
        .await;
    }
    let rounds = rounds.lock().unwrap();
    let (pod, billed) = rounds.iter().fold((0.0, 0.0), |(p, b), r| (p + r.bill.pod_gpu_seconds, b + r.bill.billed_gpu_seconds));
    let ratio = billed / pod;
    eprintln!(
        "burst: worst GPUs held {} of {BURST_MAX_GPUS}; {} jobs Succeeded; billed {:.6} GPU-hours for {:.6} GPU-hours of pod time: ratio {ratio:.4}",
        rounds.iter().map(|r| r.worst_held).max().unwrap_or(0),
        rounds.iter().map(|r| r.succeeded).sum::<usize>(),
        billed / 3600.0,
        pod / 3600.0
    );
    assert!((ratio - 1.0).abs() <= 0.02, "billed {billed} GPU-s against {pod} GPU-s of pod time");
}

/// A small xorshift generator for the kill moments (no test dependency needed for three numbers);
/// `FRUGAL_E2E_SEED` replays a run.
struct Random(u64);

impl Random {
    fn seeded() -> Self {
        let clock = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
        let seed = std::env::var("FRUGAL_E2E_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(clock) | 1;
        eprintln!("kill moments from FRUGAL_E2E_SEED={seed}");
        Self(seed)
    }

    /// A duration in [lo, hi).
    fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        lo + Duration::from_millis(self.0 % (hi - lo).as_millis() as u64)
    }
}

/// An operator killed (SIGKILL) three times at random moments while its jobs' pods run bills
/// each job what its pods held, counts no pod twice, and its budget has spent their sum; its
/// billed counters never go down across the restarts and end equal to the bills and the ledger.
#[tokio::test]
async fn the_operator_killed_while_jobs_run_bills_the_same_totals() {
    run_ending_pods("billing-operator-killed", |ctx| async move {
        let mut operator = setup(&ctx).await?;
        let mut budget = training_budget("team", 4, 100.0, BudgetAdmission::LookAhead);
        // a cost limit far off, so that the cost gauges the chart's queries read exist too
        budget.spec.max_cost = Some(1e6);
        apply_budget(&ctx, &budget).await?;
        let watch = PodWatch::start(&ctx, Some(Duration::from_secs(8))).await?;
        let spending = SpendWatch::start(&ctx, "team");
        let names: Vec<String> = (0..6).map(|i| format!("j{i}")).collect();
        apply_all(&ctx, &names, 2, "team").await?;
        let mut random = Random::seeded();
        let started = Instant::now();
        let mut counters = Counters::new();
        for kill in 1..=3 {
            tokio::time::sleep(random.between(Duration::from_secs(1), Duration::from_secs(6))).await;
            // whatever the process exports by now (it may still be filling its caches: a kill
            // during its start is part of the test) is no lower than any earlier process did
            counters = counters_not_lower(&operator, &ctx.namespace, &counters, false, &format!("before kill {kill}")).await?;
            operator.kill()?;
            let killed_at = started.elapsed();
            // down a moment: pods may finish while no operator looks
            let down = random.between(Duration::ZERO, Duration::from_secs(2));
            tokio::time::sleep(down).await;
            operator = Operator::start(&ctx.namespace, &OPERATOR_ARGS)?;
            let held = watch.held();
            eprintln!("kill {kill}: SIGKILL at {:.1} s, restarted {:.1} s later, pods holding {} GPUs", killed_at.as_secs_f64(), down.as_secs_f64(), held.now);
        }
        // the last restarted process, once its caches are filled, exports every series the
        // killed ones did, none lower
        counters = counters_not_lower(&operator, &ctx.namespace, &counters, true, "after the last restart").await?;
        let jobs = all_succeeded(&ctx, &names, Duration::from_secs(150)).await?;
        let held = watch.held();
        ensure!(held.max <= 4, "the pods held {} GPUs at once under a budget of 4: {:?}", held.max, held.at_max);
        let pods = ctx.api::<Pod>().list(&ListParams::default()).await?.items;
        let mut billed_hours = 0.0;
        let mut per_job = Vec::new();
        for tj in &jobs {
            let bill = check_bill(tj, &pods_of(&pods, &tj.name_any()))?;
            eprintln!(
                "{}: billed {:.3} GPU-s for {:.0} GPU-s of pod time ({} pod(s), latest end {:.3} s past its finish)",
                tj.name_any(),
                bill.billed_gpu_seconds,
                bill.pod_gpu_seconds,
                bill.pods,
                bill.latest_end_past_finish
            );
            billed_hours += bill.billed_gpu_seconds / 3600.0;
            per_job.push((tj.name_any(), bill.billed_gpu_seconds));
        }
        let total = bills(&ctx, &jobs).await?;
        // each job's bill is counted when it finishes; the budget's own pass may come later
        let api: Api<TrainingBudget> = ctx.api();
        let counted = wait::for_object(&api, "team", "the budget to have counted the jobs' bills", move |b: Option<&TrainingBudget>| {
            b.and_then(|b| b.status.as_ref()).is_some_and(|s| s.jobs.is_empty() && (s.gpu_hours_spent - billed_hours).abs() <= 1e-6 * billed_hours)
        })
        .await;
        let spent = api.get("team").await?.status.map_or(0.0, |s| s.gpu_hours_spent);
        eprintln!(
            "after 3 kills: jobs billed {billed_hours:.6} GPU-hours ({:.1} GPU-s) for {:.1} GPU-s of pod time; the budget spent {spent:.6} GPU-hours ({:.1} GPU-s)",
            total.billed_gpu_seconds,
            total.pod_gpu_seconds,
            spent * 3600.0
        );
        // a job's final bill is counted when it leaves the ledger, if above what was counted
        let seen = spending.spent();
        let mut over = 0.0;
        let against: Vec<String> = per_job
            .iter()
            .map(|(job, billed)| {
                let counted = seen.counted.get(job).copied().unwrap_or_default() * 3600.0;
                over += (counted - billed).max(0.0);
                format!("{job}: billed {billed:.3} GPU-s; the ledger had counted {counted:.3} GPU-s of it before it left")
            })
            .collect();
        eprintln!("{against:#?}\ncounted past the final bills: {over:.3} GPU-s\nbills that went down: {:#?}", seen.drops);
        counted.map_err(|e| anyhow::anyhow!("{e:#}: the budget spent {spent} GPU-hours, its jobs were billed {billed_hours}: {against:?}; bills that went down: {:?}", seen.drops))?;
        ensure!(seen.drops.is_empty(), "bills went down: {:?}", seen.drops);
        the_metrics_of_money_match_the_bills_and_the_ledger(&ctx, &operator, &counters).await?;
        deleted_jobs_stay_billed_across_a_restart(&ctx, &mut operator, &jobs[..3]).await
    })
    .await;
}

/// Deletes `deleted`, restarts the operator, and checks that the billed counters are the same
/// before the deletion, after it, and in the new process: each job's finalizer added its bill
/// to the record ConfigMap, which the new process reads back.
async fn deleted_jobs_stay_billed_across_a_restart(ctx: &TestContext, operator: &mut Operator, deleted: &[TrainingJob]) -> Result<()> {
    let before = billed_counters(&operator.scrape().await?, &ctx.namespace)?;
    ensure!(!before.is_empty(), "no billed counters of {} to compare", ctx.namespace);
    let api: Api<TrainingJob> = ctx.api();
    for tj in deleted {
        api.delete(&tj.name_any(), &Default::default()).await?;
    }
    for tj in deleted {
        wait::for_deletion(&api, &tj.name_any(), &tj.uid().unwrap_or_default()).await?;
    }
    let same = |when: &str, now: &Counters| -> Result<()> {
        for (series, was) in &before {
            let is = now.get(series).copied().unwrap_or_default();
            ensure!((is - was).abs() <= 1e-9 * was.abs().max(1.0), "{when}: {series} is {is}, was {was} before {} jobs were deleted", deleted.len());
        }
        Ok(())
    };
    same("after the deletion", &billed_counters(&operator.scrape().await?, &ctx.namespace)?)?;
    let record = ctx.api::<k8s_openapi::api::core::v1::ConfigMap>().get("frugal-billed").await?;
    let json = record.data.as_ref().and_then(|d| d.get("billed.json")).context("the record ConfigMap has no billed.json")?;
    let folded: serde_json::Value = serde_json::from_str(json)?;
    let uids = folded["folded"].as_object().context("billed.json has no folded uids")?;
    for tj in deleted {
        ensure!(uids.contains_key(&tj.uid().unwrap_or_default()), "{} is not in the record: {json}", tj.name_any());
    }
    operator.kill()?;
    *operator = Operator::start(&ctx.namespace, &OPERATOR_ARGS)?;
    let after = counters_not_lower(operator, &ctx.namespace, &before, true, "after a restart with jobs deleted")
        .await
        .with_context(|| format!("the record the new process read: {json}"))?;
    same("after a restart with jobs deleted", &after).with_context(|| format!("the record the new process read: {json}"))?;
    eprintln!("{} jobs deleted, operator restarted: the billed counters stayed {before:?}", deleted.len());
    Ok(())
}

/// The billed counters of a namespace in a scrape, by series.
type Counters = BTreeMap<String, f64>;

fn billed_counters(exposition: &str, namespace: &str) -> Result<Counters> {
    let billed = prometheus::samples(exposition)?.into_iter().filter(|s| {
        matches!(s.name.as_str(), "frugal_billed_gpu_seconds_total" | "frugal_billed_cost_total")
            && s.labels.get("namespace").map(String::as_str) == Some(namespace)
    });
    Ok(billed.map(|s| (format!("{}{:?}", s.name, s.labels), s.value)).collect())
}

/// Scrapes `operator` and checks that none of its billed counters of `namespace` is lower than
/// in `before`; returns the highest of each seen. With `wait`, scrapes until every series of
/// `before` is there (a restarted operator exports them once its caches are filled).
async fn counters_not_lower(operator: &Operator, namespace: &str, before: &Counters, wait: bool, when: &str) -> Result<Counters> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = billed_counters(&operator.scrape().await?, namespace)?;
        for (series, value) in &now {
            let was = before.get(series).copied().unwrap_or_default();
            ensure!(*value >= was, "{when}: {series} went down from {was} to {value}");
        }
        if !wait || before.keys().all(|k| now.contains_key(k)) {
            eprintln!("{when}: {now:?}");
            let mut highest = before.clone();
            highest.extend(now);
            return Ok(highest);
        }
        let missing: Vec<&String> = before.keys().filter(|k| !now.contains_key(*k)).collect();
        ensure!(Instant::now() < deadline, "{when}: the operator's scrape still lacks {missing:?} after 30 s");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// After a billed run: the operator's billed counters equal what its jobs' status.cost says
/// and what the budget's ledger spent, are no lower than any earlier scrape (across its
/// restarts), the exposition passes `promtool check metrics`, and every series the chart's
/// dashboard and alerts ask of the operator is in it.
async fn the_metrics_of_money_match_the_bills_and_the_ledger(ctx: &TestContext, operator: &Operator, earlier: &Counters) -> Result<()> {
    let jobs = ctx.api::<TrainingJob>().list(&ListParams::default()).await?.items;
    let cost = |tj: &TrainingJob| tj.status.as_ref().and_then(|s| s.cost.clone()).unwrap_or_default();
    let job_gpu_seconds: f64 = jobs.iter().map(|tj| cost(tj).gpu_hours * 3600.0).sum();
    let job_cost: f64 = jobs.iter().map(|tj| cost(tj).cost).sum();
    let budget = ctx.api::<TrainingBudget>().get("team").await?.status.unwrap_or_default();
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1.0);
    // the budget's own pass may count the last bills a moment after the jobs' status says them
    let deadline = Instant::now() + Duration::from_secs(30);
    let exposition = loop {
        let exposition = operator.scrape().await?;
        let samples = prometheus::samples(&exposition)?;
        let within = [("namespace", ctx.namespace.as_str()), ("budget", "team")];
        let billed_seconds = prometheus::sum(&samples, "frugal_billed_gpu_seconds_total", &within);
        let billed_cost = prometheus::sum(&samples, "frugal_billed_cost_total", &within);
        let spent_seconds = prometheus::sum(&samples, "frugal_budget_spent_gpu_seconds", &within);
        let spent_cost = prometheus::sum(&samples, "frugal_budget_spent_cost", &within);
        let report = format!(
            "billed {billed_seconds} GPU-s and {billed_cost} (status.cost: {job_gpu_seconds} GPU-s, {job_cost}); the budget's gauges {spent_seconds} GPU-s and {spent_cost} (its ledger: {} GPU-s, {})",
            budget.gpu_hours_spent * 3600.0,
            budget.cost_spent
        );
        let agree = close(billed_seconds, job_gpu_seconds)
            && close(billed_cost, job_cost)
            && close(billed_seconds, budget.gpu_hours_spent * 3600.0)
            && close(billed_cost, budget.cost_spent)
            && close(spent_seconds, budget.gpu_hours_spent * 3600.0)
            && close(spent_cost, budget.cost_spent);
        if agree && billed_seconds > 0.0 {
            eprintln!("metrics of money: {report}");
            break exposition;
        }
        ensure!(Instant::now() < deadline, "the operator's metrics disagree with the bills: {report}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let last = billed_counters(&exposition, &ctx.namespace)?;
    for (series, was) in earlier {
        ensure!(last.get(series).is_some_and(|now| now >= was), "{series} went down from {was} to {:?}", last.get(series));
    }
    prometheus::promtool(&["check", "metrics"], Some(&exposition))?;
    // the chart's PromQL against this scrape: the trainer's series come from trainer pods, and
    // the policy gauge exists only where the operator is told of the chart's policies
    let scraped: BTreeSet<String> = prometheus::samples(&exposition)?.into_iter().map(|s| s.name).collect();
    let elsewhere = |name: &str| name.starts_with("frugal_trainer_") || name == "frugal_operator_admission_policy_missing";
    for query in prometheus::dashboard_queries()?.into_iter().chain(prometheus::rule_queries()?) {
        for name in frugal_api::promql::frugal_series(&query).into_iter().filter(|n| !elsewhere(n)) {
            ensure!(scraped.contains(&name), "the chart's query {query} names {name}, which the operator's scrape lacks:\n{exposition}");
        }
    }
    // and Prometheus's evaluator answers every panel of the operator's series with data, and
    // fires none of the chart's alerts, on this run's scrape
    let operator_panels: Vec<String> = prometheus::dashboard_queries()?
        .into_iter()
        .filter(|q| !frugal_api::promql::frugal_series(q).iter().any(|n| n.starts_with("frugal_trainer_")))
        .collect();
    prometheus::evaluate(&[prometheus::Scraped::once(&exposition)], &operator_panels, &[])?;
    eprintln!("{} dashboard panels of the operator's series gave data; no alert fired", operator_panels.len());
    Ok(())
}

/// A budget whose period's GPU-hours a running job spends stops it (its pods write a checkpoint
/// and go), overspent by at most one billing interval and the grace of its GPUs; the job waits,
/// Queued, and resumes with its next attempt once the budget's gpuHours is raised.
#[tokio::test]
async fn a_running_job_stopped_by_its_budget_resumes_when_the_budget_is_raised() {
    run_ending_pods("billing-budget-stop", |ctx| async move {
        let operator = setup(&ctx).await?;
        // 36 GPU-seconds: 18 s of a 2-GPU job; on spend, so that its estimate does not hold it
        let limit = 0.01;
        apply_budget(&ctx, &training_budget("team", 4, limit, BudgetAdmission::Spend)).await?;
        apply(&ctx, &training_job("lm", 2, "team")).await?;
        let first = running_pods(&ctx, "lm", 1, 1).await?.remove(0);
        let started = Instant::now();

        // it waits with attempt 1 stopped: a next attempt while the budget is spent is a failure
        let attempt = |tj: &TrainingJob| tj.status.as_ref().and_then(|s| s.attempt).unwrap_or(0);
        let tj = job_where(&ctx, "lm", "lm Queued with reason BudgetExhausted", move |tj| {
            attempt(tj) > 1
                || phase(tj) == Some(Phase::Queued) && condition(tj, "Queued").is_some_and(|c| c.status == "True" && c.reason == "BudgetExhausted")
        })
        .await?;
        if attempt(&tj) > 1 {
            let budget = ctx.api::<TrainingBudget>().get("team").await?;
            bail!(
                "lm started attempt {} while its budget is spent, instead of waiting Queued; its status: {}\nthe budget's: {}",
                attempt(&tj),
                serde_json::to_string_pretty(&tj.status)?,
                serde_json::to_string_pretty(&budget.status)?
            );
        }
        let queued = condition(&tj, "Queued").unwrap().message.clone();
        eprintln!("queued {:.1} s after its pod ran: {queued}", started.elapsed().as_secs_f64());
        ensure!(queued.contains("TrainingBudget \"team\"") && queued.contains("spec.gpuHours"), "queued: {queued}");

        // attempt 1 was stopped for its budget, and its pods are gone
        let attempt1 = ctx.api::<Job>().get("lm-a1").await?;
        let stop_reason = attempt1.annotations().get("frugal.dev/stop-reason").cloned();
        ensure!(stop_reason.as_deref() == Some("BudgetExhausted"), "lm-a1's stop reason: {stop_reason:?}");
        let left = ctx.api::<Pod>().list(&ListParams::default().labels("frugal.dev/training-job=lm,frugal.dev/attempt=1")).await?.items;
        ensure!(left.is_empty(), "attempt 1's pods are still there: {:?}", left.iter().map(|p| p.name_any()).collect::<Vec<_>>());

        // spent past the limit by at most a billing interval and the grace, of 2 GPUs
        let budget = ctx.api::<TrainingBudget>().get("team").await?;
        let spent = budget.status.as_ref().map_or(0.0, |s| s.gpu_hours_spent);
        let most = limit + 2.0 * (BILLING_INTERVAL + GRACE).as_secs_f64() / 3600.0;
        let billed = tj.status.as_ref().and_then(|s| s.cost.as_ref()).map_or(0.0, |c| c.gpu_hours);
        let held_for = tj.status.as_ref().and_then(|s| s.cost.as_ref()).and_then(|c| c.pods.first()).map_or(0.0, |r| secs(&r.until) - secs(&r.from));
        eprintln!(
            "spent {spent:.6} of {limit} GPU-hours: overspend {:.6} GPU-hours ({:.1} GPU-s; at most {:.6}); lm billed {billed:.6} GPU-hours, its pod {} for {held_for:.0} s",
            spent - limit,
            (spent - limit) * 3600.0,
            most - limit,
            first.name_any()
        );
        ensure!(spent >= limit, "the job was stopped with {spent} of {limit} GPU-hours spent");
        ensure!(spent <= most, "overspent: {spent} GPU-hours against a limit of {limit} (at most {most})");
        // the chart's alert for a budget past 80% fires on this scrape, and no other
        let exposition = operator.scrape().await?;
        prometheus::evaluate(&[prometheus::Scraped::once(&exposition)], &[], &["FrugalBudgetPast80Percent"])?;

        // raised: the job resumes with attempt 2
        let resumed = tokio::spawn({
            let ctx = ctx.clone();
            let messages = Arc::new(Mutex::new(Vec::<String>::new()));
            async move {
                let seen = messages.clone();
                let tj = job_where(&ctx, "lm", "lm Running attempt 2", move |tj| {
                    if let Some(c) = condition(tj, "Ready") {
                        let mut seen = seen.lock().unwrap();
                        if seen.last() != Some(&c.message) {
                            seen.push(c.message.clone());
                        }
                    }
                    phase(tj) == Some(Phase::Running) && tj.status.as_ref().and_then(|s| s.attempt) == Some(2)
                })
                .await?;
                let seen = messages.lock().unwrap().clone();
                Ok::<_, anyhow::Error>((tj, seen))
            }
        });
        let raise = serde_json::json!({"spec": {"gpuHours": 1.0}});
        ctx.api::<TrainingBudget>().patch("team", &PatchParams::default(), &Patch::Merge(&raise)).await?;
        let second = running_pods(&ctx, "lm", 2, 1).await?.remove(0);
        let (running, messages) = resumed.await??;
        eprintln!("after the raise, lm said: {messages:#?}");
        let resuming = messages.iter().find(|m| m.contains("starting attempt 2"));
        ensure!(resuming.is_some(), "lm never said it resumed with attempt 2: {messages:?}");
        eprintln!("resumed: {}", resuming.unwrap());
        eprintln!("running again: {}", condition(&running, "Running").map_or("", |c| &c.message));

        finish_pod(&ctx, &second.name_any()).await?;
        let done = job_where(&ctx, "lm", "lm Succeeded", |tj| phase(tj) == Some(Phase::Succeeded)).await?;
        let cost = done.status.as_ref().and_then(|s| s.cost.as_ref()).cloned().unwrap_or_default();
        let records: Vec<String> = cost.pods.iter().map(|r| format!("{} (attempt {}): {:.1} GPU-s", r.name, r.attempt, r.gpu_hours * 3600.0)).collect();
        eprintln!("lm Succeeded, billed {:.6} GPU-hours over {records:?}", cost.gpu_hours);
        ensure!(cost.pods.iter().map(|r| r.attempt).collect::<Vec<_>>() == [1, 2], "lm's pod records: {records:?}");
        Ok(())
    })
    .await;
}
