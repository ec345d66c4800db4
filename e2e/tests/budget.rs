//! TrainingBudgets end to end: each test starts `frugal-operator run` for its own namespace (see
//! `frugal_e2e::operator`); kwok's GPU nodes fake the pods, which finish when the test sets their
//! outcome annotation. A budget's status is the ledger of the GPUs its jobs hold.

use anyhow::{Result, ensure};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::watcher;
use kube::{Api, ResourceExt as _};

use frugal_api::v1alpha1::Phase;
use frugal_api::{TrainingBudget, TrainingJob};
use frugal_e2e::operator::Operator;
use frugal_e2e::training_job::{apply, condition, finish_pod, job_where, phase, run_ending_pods};
use frugal_e2e::{FIELD_MANAGER, TestContext, manifests, wait};

/// A job of `gpus` GPUs in one pod (a fake GPU node has 4) under budget `budget`.
fn training_job(name: &str, gpus: i32, budget: &str) -> TrainingJob {
    let mut tj = frugal_e2e::training_job::fake_gpu_job(name, gpus, gpus);
    tj.spec.budget.budget_ref = Some(budget.into());
    tj
}

/// Budget `name` of `max_gpus` GPUs and 100 GPU-hours a day.
fn training_budget(name: &str, max_gpus: i32) -> TrainingBudget {
    TrainingBudget::test(max_gpus).name(name).build()
}

/// The operator's own ceiling is raised, so that the budget is the limit a too-large job meets.
async fn setup(ctx: &TestContext) -> Result<Operator> {
    manifests::install_crds(&ctx.client).await?;
    Operator::start(&ctx.namespace, &["--termination-grace-seconds", "5", "--max-gpus-per-job", "8"])
}

async fn apply_budget(ctx: &TestContext, budget: &TrainingBudget) -> Result<()> {
    let api: Api<TrainingBudget> = ctx.api();
    api.patch(&budget.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(budget)).await?;
    Ok(())
}

/// Waits until `job`'s first attempt has its one pod Running on a fake GPU node.
async fn running_pod(ctx: &TestContext, job: &str) -> Result<Pod> {
    let selector = format!("frugal.dev/training-job={job},frugal.dev/attempt=1");
    wait::for_any(&ctx.api::<Pod>(), watcher::Config::default().labels(&selector), &format!("the pod of {job} Running on a GPU node"), |p: &Pod| {
        frugal_e2e::fixtures::phase(p) == "Running"
            && p.spec.as_ref().and_then(|s| s.node_name.as_deref()).is_some_and(|n| n.starts_with("frugal-gpu-"))
    })
    .await
}

/// Waits until `job` is Queued with `reason`, and returns its Queued condition's message.
async fn queued(ctx: &TestContext, job: &str, reason: &'static str) -> Result<String> {
    let tj = job_where(ctx, job, &format!("{job} Queued with reason {reason}"), move |tj| {
        phase(tj) == Some(Phase::Queued) && condition(tj, "Queued").is_some_and(|c| c.status == "True" && c.reason == reason)
    })
    .await?;
    Ok(condition(&tj, "Queued").unwrap().message.clone())
}

/// None of `job`'s children exist: not the attempt's Job, its Service or its ConfigMap.
async fn no_children(ctx: &TestContext, job: &str) -> Result<()> {
    let jobs = ctx.api::<Job>().list(&ListParams::default().labels(&format!("frugal.dev/training-job={job}"))).await?;
    ensure!(jobs.items.is_empty(), "{job} has Jobs while it waits for its budget");
    ensure!(ctx.api::<Service>().get_opt(job).await?.is_none(), "{job} has its Service while it waits");
    ensure!(ctx.api::<ConfigMap>().get_opt(&format!("{job}-config")).await?.is_none(), "{job} has its ConfigMap while it waits");
    Ok(())
}

/// Waits until the budget's ledger holds exactly `holders` (name, GPUs).
async fn ledger(ctx: &TestContext, budget: &str, holders: &[(&str, i32)]) -> Result<TrainingBudget> {
    let want: Vec<(String, i32)> = holders.iter().map(|(n, g)| (n.to_string(), *g)).collect();
    let total: i32 = holders.iter().map(|h| h.1).sum();
    let api: Api<TrainingBudget> = ctx.api();
    wait::for_object(&api, budget, &format!("{budget}'s ledger to hold {want:?}"), move |b: Option<&TrainingBudget>| {
        b.and_then(|b| b.status.as_ref())
            .is_some_and(|s| s.gpus_in_use == total && s.jobs.iter().map(|h| (h.name.clone(), h.gpus)).collect::<Vec<_>>() == want)
    })
    .await
}

#[tokio::test]
async fn a_budget_admits_jobs_within_max_gpus_and_queues_the_rest() {
    run_ending_pods("budget-max-gpus", |ctx| async move {
        let _operator = setup(&ctx).await?;
        apply_budget(&ctx, &training_budget("team", 4)).await?;

        apply(&ctx, &training_job("first", 4, "team")).await?;
        let first = running_pod(&ctx, "first").await?;
        let b = ledger(&ctx, "team", &[("first", 4)]).await?;
        let exhausted = b.status.as_ref().unwrap().conditions.iter().find(|c| c.type_ == "Exhausted").cloned();
        ensure!(exhausted.as_ref().is_some_and(|c| c.status == "True" && c.reason == "AllGpusInUse"), "Exhausted: {exhausted:?}");

        // the budget is full: the second job waits, with nothing created
        apply(&ctx, &training_job("second", 4, "team")).await?;
        let message = queued(&ctx, "second", "BudgetExhausted").await?;
        ensure!(
            message.contains("TrainingBudget \"team\" has 4 of its 4 GPUs (spec.maxGpus) held by first (4); this job needs 4")
                && message.contains("raise the budget's spec.maxGpus"),
            "message: {message}"
        );
        no_children(&ctx, "second").await?;

        // a job that could never fit is refused, not queued forever
        apply(&ctx, &training_job("huge", 8, "team")).await?;
        let refused = job_where(&ctx, "huge", "huge Failed", |tj| phase(tj) == Some(Phase::Failed)).await?;
        let failed = condition(&refused, "Failed").unwrap();
        ensure!(failed.reason == "BudgetTooSmall", "reason {}", failed.reason);
        ensure!(
            failed.message.contains("needs 8 GPUs, above the spec.maxGpus of 4 of TrainingBudget \"team\"")
                && failed.message.contains("raise the budget's spec.maxGpus"),
            "message: {}",
            failed.message
        );
        no_children(&ctx, "huge").await?;

        // the first job finishes: its GPUs go back, and the second job starts
        finish_pod(&ctx, &first.name_any()).await?;
        job_where(&ctx, "first", "first Succeeded", |tj| phase(tj) == Some(Phase::Succeeded)).await?;
        running_pod(&ctx, "second").await?;
        ledger(&ctx, "team", &[("second", 4)]).await?;
        job_where(&ctx, "second", "second Running", |tj| phase(tj) == Some(Phase::Running)).await?;
        let huge = ctx.api::<TrainingJob>().get("huge").await?;
        assert_eq!(phase(&huge), Some(Phase::Failed), "the refused job stays refused");
        Ok(())
    })
    .await;
}

/// A namespace's default budget counts every job there: one that names no budget is written
/// into its ledger and waits like any other when it is full, and one that names another budget
/// is refused, naming the default.
#[tokio::test]
async fn a_namespaces_default_budget_counts_jobs_that_name_none() {
    run_ending_pods("budget-default", |ctx| async move {
        let _operator = setup(&ctx).await?;
        let mut team = training_budget("team", 4);
        team.spec.namespace_default = true;
        apply_budget(&ctx, &team).await?;
        apply_budget(&ctx, &training_budget("elsewhere", 8)).await?;

        let unnamed = |name: &str, gpus: i32| {
            let mut tj = training_job(name, gpus, "unused");
            tj.spec.budget.budget_ref = None;
            tj
        };
        apply(&ctx, &unnamed("first", 4)).await?;
        running_pod(&ctx, "first").await?;
        ledger(&ctx, "team", &[("first", 4)]).await?;
        apply(&ctx, &unnamed("second", 2)).await?;
        let message = queued(&ctx, "second", "BudgetExhausted").await?;
        ensure!(message.contains("TrainingBudget \"team\" has 4 of its 4 GPUs"), "message: {message}");
        no_children(&ctx, "second").await?;

        // naming another budget does not opt out of the default
        apply(&ctx, &training_job("escape", 1, "elsewhere")).await?;
        let refused = job_where(&ctx, "escape", "escape Failed", |tj| phase(tj) == Some(Phase::Failed)).await?;
        let failed = condition(&refused, "Failed").unwrap();
        eprintln!("refused: {}: {}", failed.reason, failed.message);
        ensure!(failed.reason == "BudgetNotAllowed", "reason {}", failed.reason);
        ensure!(failed.message.contains("default TrainingBudget \"team\"") && failed.message.contains("names \"elsewhere\""), "{}", failed.message);
        no_children(&ctx, "escape").await?;
        let elsewhere: TrainingBudget = ctx.api().get("elsewhere").await?;
        ensure!(elsewhere.status.is_none_or(|s| s.jobs.is_empty()), "nothing is counted in the other budget");
        Ok(())
    })
    .await;
}

/// Look-ahead admission: a job whose plan's estimated GPU-hours do not fit what its budget has
/// left this period, after what the jobs it admitted are still estimated to spend, waits with
/// both numbers; a budget that admits on spend only lets it start.
#[tokio::test]
async fn a_job_whose_estimate_does_not_fit_what_is_left_waits_saying_both_numbers() {
    run_ending_pods("budget-look-ahead", |ctx| async move {
        let _operator = setup(&ctx).await?;
        apply_budget(&ctx, &training_budget("team", 8)).await?;
        // a long run, so that its estimate is GPU-hours rather than seconds
        let long = |name: &str| {
            let mut tj = training_job(name, 2, "team");
            tj.spec.training.duration.steps = Some(20_000_000);
            tj
        };
        apply(&ctx, &long("first")).await?;
        running_pod(&ctx, "first").await?;
        let b = ledger(&ctx, "team", &[("first", 2)]).await?;
        let first = ctx.api::<TrainingJob>().get("first").await?;
        let estimate = first.status.as_ref().and_then(|s| s.plan.as_ref()).map(|p| p.estimated_gpu_hours).unwrap_or_default();
        ensure!(estimate > 0.0, "the plan estimates GPU-hours: {estimate}");
        let entry = &b.status.as_ref().unwrap().jobs[0];
        ensure!(entry.estimated_gpu_hours == estimate && entry.estimated_cost > 0.0, "the ledger holds the estimate back: {entry:?}");

        // room for one and a half such jobs this period: the second would overspend it
        let mut budget = training_budget("team", 8);
        budget.spec.gpu_hours = Some(estimate * 1.5);
        apply_budget(&ctx, &budget).await?;
        apply(&ctx, &long("second")).await?;
        let message = queued(&ctx, "second", "BudgetExhausted").await?;
        let said = message
            .strip_prefix("the job needs an estimated ")
            .and_then(|m| m.split_once(" GPU-hours; TrainingBudget \"team\" has "))
            .and_then(|(need, rest)| Some((need.parse::<f64>().ok()?, rest.split_once(" left this Day")?.0.parse::<f64>().ok()?)));
        let Some((need, left)) = said else { anyhow::bail!("message: {message}") };
        // three significant digits of each: the job's estimate, and half of it left
        ensure!((need - estimate).abs() <= 0.005 * estimate && (left - estimate / 2.0).abs() <= 0.01 * estimate, "message: {message}");
        ensure!(message.contains("spec.admission to Spend"), "message: {message}");
        no_children(&ctx, "second").await?;

        // on spend only, nothing is spent yet: it starts
        budget.spec.admission = frugal_api::v1alpha1::BudgetAdmission::Spend;
        apply_budget(&ctx, &budget).await?;
        running_pod(&ctx, "second").await?;
        ledger(&ctx, "team", &[("first", 2), ("second", 2)]).await?;
        println!("look-ahead: estimate {estimate} GPU-hours per job; queued with: {message}");
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn a_job_naming_a_missing_budget_waits_until_it_exists() {
    run_ending_pods("budget-missing", |ctx| async move {
        let _operator = setup(&ctx).await?;
        apply(&ctx, &training_job("lm", 1, "later")).await?;
        let message = queued(&ctx, "lm", "BudgetNotFound").await?;
        ensure!(message.contains("TrainingBudget \"later\", which does not exist") && message.contains("create it"), "message: {message}");
        no_children(&ctx, "lm").await?;

        // the budget appears: the watch on budgets wakes the job
        apply_budget(&ctx, &training_budget("later", 2)).await?;
        running_pod(&ctx, "lm").await?;
        let b = ledger(&ctx, "later", &[("lm", 1)]).await?;
        let lm = ctx.api::<TrainingJob>().get("lm").await?;
        assert_eq!(b.status.as_ref().unwrap().jobs[0].uid, lm.uid().unwrap());
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn suspending_or_deleting_a_job_releases_its_gpus() {
    run_ending_pods("budget-release", |ctx| async move {
        let _operator = setup(&ctx).await?;
        apply_budget(&ctx, &training_budget("team", 2)).await?;
        apply(&ctx, &training_job("a", 1, "team")).await?;
        apply(&ctx, &training_job("b", 1, "team")).await?;
        running_pod(&ctx, "a").await?;
        running_pod(&ctx, "b").await?;
        ledger(&ctx, "team", &[("a", 1), ("b", 1)]).await?;

        // suspended: released once its pod is gone
        let suspend = serde_json::json!({"spec": {"runPolicy": {"suspend": true}}});
        ctx.api::<TrainingJob>().patch("a", &PatchParams::default(), &Patch::Merge(&suspend)).await?;
        ledger(&ctx, "team", &[("b", 1)]).await?;

        // deleted: released once its pod has ended (the job's finalizer waits for it)
        let b = ctx.api::<TrainingJob>().get("b").await?;
        let b_pod = running_pod(&ctx, "b").await?;
        ctx.api::<TrainingJob>().delete("b", &Default::default()).await?;
        stopped(&ctx, &b_pod).await?;
        // gone already if the Job controller let it go with its Job
        finish_pod(&ctx, &b_pod.name_any()).await.ok();
        wait::for_deletion(&ctx.api::<TrainingJob>(), "b", &b.uid().unwrap()).await?;
        ledger(&ctx, "team", &[]).await?;
        Ok(())
    })
    .await;
}

/// Keeps `pod` past its deletion until [`release`] (a finalizer of the test's).
async fn hold(ctx: &TestContext, pod: &Pod) -> Result<()> {
    let hold = serde_json::json!({"metadata": {"finalizers": ["frugal.dev/test-hold"]}});
    ctx.api::<Pod>().patch(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&hold)).await?;
    Ok(())
}

async fn release(ctx: &TestContext, pod: &Pod) -> Result<()> {
    let release = serde_json::json!({"metadata": {"finalizers": null}});
    match ctx.api::<Pod>().patch(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&release)).await {
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        other => other.map(|_| ()).map_err(Into::into),
    }
}

/// Waits until `pod` is being deleted (or is gone): the operator stopped it.
async fn stopped(ctx: &TestContext, pod: &Pod) -> Result<()> {
    wait::for_object(&ctx.api::<Pod>(), &pod.name_any(), &format!("{} stopped", pod.name_any()), |p: Option<&Pod>| {
        p.is_none_or(|p| p.metadata.deletion_timestamp.is_some())
    })
    .await
    .map(|_| ())
    .or_else(|e| if e.to_string().contains("was deleted") { Ok(()) } else { Err(e) })
}

/// For `for_secs` seconds, `job` stays Queued and the ledger holds `holders`: nothing freed the
/// GPUs a pod still holds.
async fn still_waiting(ctx: &TestContext, job: &str, budget: &str, holders: &[(&str, i32)], for_secs: u64) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(for_secs);
    let want: Vec<(String, i32)> = holders.iter().map(|(n, g)| (n.to_string(), *g)).collect();
    while std::time::Instant::now() < deadline {
        let tj = ctx.api::<TrainingJob>().get(job).await?;
        ensure!(phase(&tj) == Some(Phase::Queued), "{job} left the queue while the GPUs were held: {:?}", tj.status.map(|s| s.phase));
        let b = ctx.api::<TrainingBudget>().get(budget).await?;
        let held: Vec<(String, i32)> = b.status.iter().flat_map(|s| &s.jobs).map(|h| (h.name.clone(), h.gpus)).collect();
        ensure!(held == want, "{budget}'s ledger holds {held:?} while the pods of {want:?} run");
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    Ok(())
}

/// `kubectl delete tj a --cascade=orphan` needs only delete on TrainingJobs. It used to leave the
/// attempt and its pods running, unbilled and outside the budget, release the GPUs to the next
/// job, and make a new job of the same name hang on its attempt Job "already exists". Now the
/// job's finalizer stops its pods, keeps its GPUs in the ledger until they have ended, and a new
/// job of the same name then runs.
#[tokio::test]
async fn an_orphaning_delete_keeps_the_budget_whole_and_stops_the_pods() {
    run_ending_pods("budget-orphan", |ctx| async move {
        let _operator = setup(&ctx).await?;
        apply_budget(&ctx, &training_budget("team", 4)).await?;
        let a = apply(&ctx, &training_job("a", 4, "team")).await?;
        let a_pod = running_pod(&ctx, "a").await?;
        ledger(&ctx, "team", &[("a", 4)]).await?;
        apply(&ctx, &training_job("b", 4, "team")).await?;
        queued(&ctx, "b", "BudgetExhausted").await?;
        // the pod outlives its deletion until the test ends it, as a real one does for its grace
        // period (kwok's would go at once)
        hold(&ctx, &a_pod).await?;

        let orphan = kube::api::DeleteParams { propagation_policy: Some(kube::api::PropagationPolicy::Orphan), ..Default::default() };
        ctx.api::<TrainingJob>().delete("a", &orphan).await?;
        stopped(&ctx, &a_pod).await?;
        eprintln!("e2e: the orphaned attempt's pod {} was stopped", a_pod.name_any());
        still_waiting(&ctx, "b", "team", &[("a", 4)], 5).await?;

        // the pod ends (kwok removes it once the test's finalizer goes)
        release(&ctx, &a_pod).await?;
        wait::for_deletion(&ctx.api::<TrainingJob>(), "a", &a.uid().unwrap()).await?;
        ledger(&ctx, "team", &[("b", 4)]).await?;
        let b_pod = running_pod(&ctx, "b").await?;
        let jobs = ctx.api::<Job>().list(&ListParams::default().labels("frugal.dev/training-job=a")).await?;
        ensure!(jobs.items.is_empty(), "the orphaned attempt Job is still there: {:?}", jobs.items.iter().map(|j| j.name_any()).collect::<Vec<_>>());

        // a new job of the same name starts its own attempt once the GPUs are free
        finish_pod(&ctx, &b_pod.name_any()).await?;
        let again = apply(&ctx, &training_job("a", 4, "team")).await?;
        let new_pod = running_pod(&ctx, "a").await?;
        ensure!(
            new_pod.labels().get("frugal.dev/training-job-uid") == again.uid().as_ref(),
            "the new a's pod is not its own: {:?}",
            new_pod.labels()
        );
        Ok(())
    })
    .await;
}

/// A waiting job is not admitted while a deleted job's pods still run (here held by a test
/// finalizer past their deletion): the GPUs are the pods', not the TrainingJob's.
#[tokio::test]
async fn a_waiting_job_waits_until_a_deleted_jobs_pods_are_gone() {
    run_ending_pods("budget-delete-race", |ctx| async move {
        let _operator = setup(&ctx).await?;
        apply_budget(&ctx, &training_budget("team", 4)).await?;
        let a = apply(&ctx, &training_job("a", 4, "team")).await?;
        let a_pod = running_pod(&ctx, "a").await?;
        apply(&ctx, &training_job("b", 4, "team")).await?;
        queued(&ctx, "b", "BudgetExhausted").await?;
        hold(&ctx, &a_pod).await?;

        ctx.api::<TrainingJob>().delete("a", &Default::default()).await?;
        stopped(&ctx, &a_pod).await?;
        still_waiting(&ctx, "b", "team", &[("a", 4)], 5).await?;
        let deleting = ctx.api::<TrainingJob>().get_opt("a").await?;
        ensure!(deleting.is_some_and(|tj| tj.metadata.deletion_timestamp.is_some()), "a went while its pod ran");

        // the pod ends (kwok removes it once the test's finalizer goes): the GPUs go to b
        release(&ctx, &a_pod).await?;
        wait::for_deletion(&ctx.api::<TrainingJob>(), "a", &a.uid().unwrap()).await?;
        ledger(&ctx, "team", &[("b", 4)]).await?;
        running_pod(&ctx, "b").await?;
        Ok(())
    })
    .await;
}

/// What the operator made and lost its owner (the TrainingJob deleted orphaning its attempt, and
/// its finalizer removed by hand while the operator was down) is found and stopped by the
/// reaper, and the budget counts the GPUs its pod holds until then.
#[tokio::test]
async fn the_reaper_stops_an_orphaned_attempt_and_the_budget_counts_its_pods() {
    run_ending_pods("budget-reaper", |ctx| async move {
        let mut operator = setup(&ctx).await?;
        apply_budget(&ctx, &training_budget("team", 4)).await?;
        let a = apply(&ctx, &training_job("a", 4, "team")).await?;
        let a_pod = running_pod(&ctx, "a").await?;
        ledger(&ctx, "team", &[("a", 4)]).await?;
        operator.kill()?;

        let orphan = kube::api::DeleteParams { propagation_policy: Some(kube::api::PropagationPolicy::Orphan), ..Default::default() };
        ctx.api::<TrainingJob>().delete("a", &orphan).await?;
        // only the operator's finalizer goes: the garbage collector's `orphan` one stays and strips
        // the attempt Job's owner reference (taking both away would race it)
        for attempt in 1.. {
            let held = ctx.api::<TrainingJob>().get("a").await?;
            let others: Vec<String> = held.finalizers().iter().filter(|f| *f != "frugal.dev/stop-and-bill").cloned().collect();
            let no_finalizer = serde_json::json!({"metadata": {"finalizers": others, "resourceVersion": held.resource_version()}});
            match ctx.api::<TrainingJob>().patch("a", &PatchParams::default(), &Patch::Merge(&no_finalizer)).await {
                // the garbage collector wrote it meanwhile: read it again
                Err(kube::Error::Api(s)) if s.code == 409 && attempt < 10 => continue,
                other => {
                    other?;
                    break;
                }
            }
        }
        wait::for_deletion(&ctx.api::<TrainingJob>(), "a", &a.uid().unwrap()).await?;
        let jobs: Api<Job> = ctx.api();
        wait::for_object(&jobs, "a-a1", "a-a1 orphaned (no owner)", |j: Option<&Job>| j.is_some_and(|j| j.owner_references().is_empty())).await?;

        let _operator = setup(&ctx).await?;
        apply(&ctx, &training_job("b", 4, "team")).await?;
        queued(&ctx, "b", "BudgetExhausted").await?;
        // the reaper deletes only what two scans 10 s apart found orphaned: until then the
        // budget counts the pod, whose TrainingJob is gone
        still_waiting(&ctx, "b", "team", &[("a", 4)], 3).await?;
        stopped(&ctx, &a_pod).await?;
        eprintln!("e2e: the reaper stopped the orphaned pod {}", a_pod.name_any());
        finish_pod(&ctx, &a_pod.name_any()).await.ok();
        ledger(&ctx, "team", &[("b", 4)]).await?;
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn jobs_applied_at_once_never_take_more_than_the_budget() {
    run_ending_pods("budget-concurrent", |ctx| async move {
        let _operator = setup(&ctx).await?;
        apply_budget(&ctx, &training_budget("team", 3)).await?;
        // the operator reconciles these at the same time; the ledger's resourceVersion check
        // lets exactly three in
        let names: Vec<String> = (0..6).map(|i| format!("j{i}")).collect();
        futures::future::try_join_all(names.iter().map(|n| {
            let ctx = ctx.clone();
            let tj = training_job(n, 1, "team");
            async move { apply(&ctx, &tj).await }
        }))
        .await?;
        let api: Api<TrainingBudget> = ctx.api();
        let full = wait::for_object(&api, "team", "3 GPUs in use", |b: Option<&TrainingBudget>| {
            b.and_then(|b| b.status.as_ref()).is_some_and(|s| s.gpus_in_use == 3)
        })
        .await?;
        let admitted: Vec<String> = full.status.unwrap().jobs.iter().map(|h| h.name.clone()).collect();
        assert_eq!(admitted.len(), 3, "{admitted:?}");
        for n in &names {
            if admitted.contains(n) {
                running_pod(&ctx, n).await?;
            } else {
                queued(&ctx, n, "BudgetExhausted").await?;
                no_children(&ctx, n).await?;
            }
        }
        let jobs = ctx.api::<Job>().list(&ListParams::default()).await?;
        assert_eq!(jobs.items.len(), 3, "only the admitted jobs have Jobs");
        let b = api.get("team").await?;
        assert_eq!(b.status.unwrap().gpus_in_use, 3, "the ledger never holds more than maxGpus");
        Ok(())
    })
    .await;
}

/// A busy operator stops when told to: after it has reconciled jobs under a budget (and been
/// killed and restarted along the way), SIGTERM ends it within seconds and it hands its leader
/// lease back, so that a Deployment's next replica takes over at once instead of after the
/// grace period's SIGKILL and the lease's expiry.
#[tokio::test]
async fn a_busy_operator_stops_within_seconds_of_sigterm_and_releases_its_lease() {
    run_ending_pods("budget-sigterm", |ctx| async move {
        manifests::install_crds(&ctx.client).await?;
        let args =
            ["--termination-grace-seconds", "5", "--leader-elect", "--lease-namespace", ctx.namespace.as_str(), "--lease-name", "frugal-operator"];
        let mut operator = Operator::start(&ctx.namespace, &args)?;
        let mut budget = training_budget("team", 4);
        budget.spec.max_cost = Some(1000.0);
        apply_budget(&ctx, &budget).await?;
        let jobs = 24;
        let names: Vec<String> = (0..jobs).map(|i| format!("short-{i}")).collect();
        for n in &names {
            apply(&ctx, &training_job(n, 1, "team")).await?;
        }
        // every pod that runs finishes at once
        let finisher = {
            let ctx = ctx.clone();
            tokio::spawn(async move {
                loop {
                    if let Ok(pods) = ctx.api::<Pod>().list(&ListParams::default()).await {
                        for pod in pods.items.iter().filter(|p| frugal_e2e::fixtures::phase(p) == "Running") {
                            let _ = finish_pod(&ctx, &pod.name_any()).await;
                        }
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
            })
        };
        let succeeded = |n: usize| {
            let ctx = ctx.clone();
            async move {
                wait::until(&format!("{n} jobs Succeeded"), async {
                    loop {
                        let list = ctx.api::<TrainingJob>().list(&ListParams::default()).await?;
                        if list.items.iter().filter(|tj| phase(tj) == Some(Phase::Succeeded)).count() >= n {
                            return Ok::<_, anyhow::Error>(());
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    }
                })
                .await
            }
        };
        succeeded(jobs / 3).await?;
        // a crash half-way: the next operator takes the lease over once it expires
        operator.kill()?;
        let mut operator = Operator::start(&ctx.namespace, &args)?;
        succeeded(jobs).await?;
        finisher.abort();
        // the restarted operator, which met a full queue at start, reports ready too (its caches'
        // readiness once woke only one of the tasks waiting for it)
        let log = operator.log();
        ensure!(log.matches("caches synced; ready").count() == 2, "the restarted operator never said its caches synced");
        let took = operator.terminate_within(std::time::Duration::from_secs(20))?;
        eprintln!("the busy operator exited {took:?} after SIGTERM");
        ensure!(took < std::time::Duration::from_secs(10), "SIGTERM took {took:?}");
        let lease = Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(ctx.client.clone(), &ctx.namespace).get("frugal-operator").await?;
        let holder = lease.spec.as_ref().and_then(|s| s.holder_identity.clone());
        eprintln!("lease holder after SIGTERM: {holder:?}");
        ensure!(holder.as_deref().is_none_or(str::is_empty), "the lease is still held by {holder:?}");
        Ok(())
    })
    .await;
}
