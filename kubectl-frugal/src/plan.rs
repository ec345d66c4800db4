//! `kubectl frugal plan job.yaml`: the planner's table for a TrainingJob manifest before anything
//! is applied, and whether the operator would run it.
//!
//! Offline: the planner itself, memory per GPU against the GPU type ([`admission::fits_gpu`]),
//! the job's own `spec.budget` limits. Online, against the cluster: a server-side dry run of the
//! manifest (the CRD's CEL rules and the chart's admission policies, such as the GPU ceiling),
//! and admission against the TrainingBudget the job would be counted in
//! ([`admission::counted_in`], [`budget::admit`]). The operator decides with the same functions.

use std::path::Path;

use anyhow::{Context as _, Result, bail};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, ValidationDirective};
use serde::Serialize;

use frugal_api::admission::{self, budget, reasons};
use frugal_api::planner::{self, Layout, Plan, PlanOptions, StagePlan};
use frugal_api::report::{Table, describe_model, human};
use frugal_api::{TrainingBudget, TrainingJob};

use crate::cluster::{self, Target};

/// Field manager of the dry run.
const FIELD_MANAGER: &str = "kubectl-frugal";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Passed.
    Ok,
    /// Worth knowing, not a refusal: the job would wait, or a check could not be made.
    Note,
    /// The operator or the API server would refuse the job.
    Refused,
}

/// One check and what it found.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Check {
    pub check: &'static str,
    pub outcome: Outcome,
    /// The condition reason the operator would give (or the API server's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub message: String,
}

impl Check {
    fn ok(check: &'static str, message: impl Into<String>) -> Self {
        Self { check, outcome: Outcome::Ok, reason: None, message: message.into() }
    }
    fn note(check: &'static str, reason: Option<&str>, message: impl Into<String>) -> Self {
        Self { check, outcome: Outcome::Note, reason: reason.map(str::to_string), message: message.into() }
    }
    fn refused(check: &'static str, reason: &str, message: impl Into<String>) -> Self {
        Self { check, outcome: Outcome::Refused, reason: Some(reason.into()), message: message.into() }
    }
}

/// What `plan` found for one manifest.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Planned {
    pub job: String,
    /// The namespace it was checked in (none offline).
    pub namespace: Option<String>,
    pub plan: Option<Plan>,
    /// The same GPUs in fewer pipeline stages and more replicas, idling less, where every stage
    /// still fits ([`planner::suggest_layout`]; the plan's warnings say it too).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suggested_layout: Option<Layout>,
    pub checks: Vec<Check>,
    pub refused: bool,
}

/// Reads a TrainingJob manifest: the typed job, and the document as written (for the dry run).
pub fn load(path: &Path) -> Result<(TrainingJob, serde_json::Value)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let doc: serde_json::Value = serde_saphyr::from_str(&text).with_context(|| format!("{} is not YAML", path.display()))?;
    let (api_version, kind) = (doc["apiVersion"].as_str().unwrap_or_default(), doc["kind"].as_str().unwrap_or_default());
    if kind != "TrainingJob" || api_version != "frugal.dev/v1alpha1" {
        bail!("{} holds a {kind:?} of {api_version:?}, not a TrainingJob of frugal.dev/v1alpha1: give one TrainingJob manifest", path.display());
    }
    let job: TrainingJob = serde_saphyr::from_str(&text).with_context(|| format!("{} is not a valid TrainingJob", path.display()))?;
    if job.metadata.name.as_deref().is_none_or(str::is_empty) {
        bail!("{} has no metadata.name: name the TrainingJob", path.display());
    }
    Ok((job, doc))
}

/// The checks that need no cluster: the planner, GPU memory, the job's own limits.
/// `ceiling` is the operator's `--max-gpus-per-job`, where known.
pub fn offline(job: &TrainingJob, ceiling: Option<i32>) -> (Option<Plan>, Vec<Check>) {
    let spec = &job.spec;
    let plan = match planner::plan(spec, &PlanOptions::default()) {
        Ok(plan) => plan,
        Err(e) => return (None, vec![Check::refused("plan", reasons::PLAN_FAILED, e.to_string())]),
    };
    let mut checks = vec![Check::ok("plan", "the planner resolves the model, its pipeline stages and micro-batches")];
    checks.push(match admission::fits_gpu(&plan, &spec.resources.gpu_type) {
        Ok(()) if plan.gpu_memory_bytes == 0 => Check::ok("GPU memory", "trains on CPU"),
        Ok(()) => Check::ok(
            "GPU memory",
            format!(
                "{} of the {}'s {} on the largest stage",
                bytes(plan.memory_per_device_bytes),
                spec.resources.gpu_type,
                bytes(plan.gpu_memory_bytes)
            ),
        ),
        Err(e) => Check::refused("GPU memory", reasons::GPU_MEMORY_EXCEEDED, e.to_string()),
    });
    checks.push(match admission::within_gpu_limit(plan.gpus, &spec.parallelism, spec.budget.max_gpus, ceiling) {
        Err(e) => Check::refused("GPU limit", reasons::GPU_LIMIT_EXCEEDED, e.to_string()),
        Ok(()) => Check::ok(
            "GPU limit",
            match (spec.budget.max_gpus, ceiling) {
                _ if plan.gpus == 0 => "trains on CPU: holds no GPUs".into(),
                (Some(own), _) => format!("{}, within its spec.budget.maxGpus of {own}", gpus(plan.gpus)),
                (None, Some(c)) => format!("{}, within the operator's --max-gpus-per-job of {c}", gpus(plan.gpus)),
                (None, None) => format!(
                    "{}; no spec.budget.maxGpus (the operator's --max-gpus-per-job, {} unless set, applies: pass it as --max-gpus-per-job to check)",
                    gpus(plan.gpus),
                    admission::DEFAULT_MAX_GPUS_PER_JOB
                ),
            },
        ),
    });
    if let Some(check) = spend_limits(job, &plan) {
        checks.push(check);
    }
    (Some(plan), checks)
}

/// The job's own spec.budget.maxGpuHours and maxCost against its estimate: a job that reaches
/// one stops with a checkpoint, so an estimate above it will not finish.
fn spend_limits(job: &TrainingJob, plan: &Plan) -> Option<Check> {
    let own = &job.spec.budget;
    let limits = [
        (own.max_gpu_hours, plan.estimated_gpu_hours, "GPU-hours", "spec.budget.maxGpuHours"),
        (own.max_cost, plan.estimated_cost, plan.currency.as_str(), "spec.budget.maxCost"),
    ];
    let set: Vec<_> = limits.iter().filter_map(|(limit, need, unit, field)| limit.map(|l| (l, *need, *unit, *field))).collect();
    if set.is_empty() {
        return None;
    }
    if let Some((limit, need, unit, field)) = set.iter().find(|(limit, need, ..)| need > limit) {
        return Some(Check::note(
            "spend limits",
            None,
            format!(
                "the plan estimates {} {unit}, above its {field} of {limit}: the job would stop with a checkpoint when it is spent, before it finishes; raise {field} or shorten spec.training.duration",
                budget::amount(*need)
            ),
        ));
    }
    let within: Vec<String> =
        set.iter().map(|(limit, need, unit, field)| format!("{} of its {limit} {unit} ({field})", budget::amount(*need))).collect();
    Some(Check::ok("spend limits", format!("estimated {}", within.join(", "))))
}

/// The answer of the dry run, as a check. A cluster without the CRDs is an error, not a check.
pub fn dry_run_check(result: Result<(), kube::Error>) -> Result<Check> {
    const CHECK: &str = "API server";
    match result {
        Ok(()) => Ok(Check::ok(CHECK, "a server-side dry run accepts it (the CRD's CEL rules and the cluster's admission policies)")),
        // what the API server answers about this manifest (a field it does not know comes back as
        // a 500 from server-side apply, as `kubectl apply --server-side` shows it); not a missing
        // CRD, bad credentials or a busy server
        Err(kube::Error::Api(s)) if ![401, 404, 429, 503, 504].contains(&s.code) => {
            let reason = if s.reason.is_empty() { format!("HTTP {}", s.code) } else { s.reason.clone() };
            Ok(Check::refused(CHECK, &reason, s.message.clone()))
        }
        Err(e) => Err(cluster::explain(e, "the dry run of the TrainingJob")),
    }
}

/// Admission against the TrainingBudget the job would be counted in, from the namespace's
/// `budgets` and, if it exists already, the `existing` job of that name.
pub fn budget_check(
    job: &TrainingJob,
    plan: &Plan,
    namespace: &str,
    budgets: &[TrainingBudget],
    existing: Option<&TrainingJob>,
    now: &Time,
) -> Check {
    const CHECK: &str = "TrainingBudget";
    let default = admission::namespace_default(namespace, budgets);
    let named = job.spec.budget.budget_ref.clone();
    let name = match admission::counted_in(namespace, default, named, true) {
        Err(e) => return Check::refused(CHECK, reasons::BUDGET_NOT_ALLOWED, e.to_string()),
        Ok(None) => return Check::ok(CHECK, "counted in no TrainingBudget (it names none, and the namespace has no default)"),
        Ok(Some(name)) => name,
    };
    let Some(b) = budgets.iter().find(|b| b.metadata.name.as_deref() == Some(name.as_str())) else {
        return Check::note(CHECK, Some(reasons::BUDGET_NOT_FOUND), format!("would wait, Queued: {}", budget::not_found(&name, namespace)));
    };
    let job_name = job.metadata.name.as_deref().unwrap_or_default();
    let uid = existing.and_then(|e| e.metadata.uid.as_deref()).unwrap_or_default();
    let mut status = budget::this_period(b, now);
    // an entry of the same name with another uid is a deleted job's
    status.jobs.retain(|h| h.name != job_name || (!uid.is_empty() && h.uid == uid));
    if let Some(held) = status.jobs.iter().find(|h| h.name == job_name) {
        return Check::ok(CHECK, format!("{name:?}: the job holds {} of its GPUs already", held.gpus));
    }
    let cost = existing.and_then(|e| e.status.as_ref()).and_then(|s| s.cost.as_ref());
    let kueue = job.metadata.labels.as_ref().is_some_and(|l| l.contains_key(admission::KUEUE_QUEUE_LABEL));
    let claim = budget::Claim {
        name: job_name,
        uid,
        gpus: if kueue { 0 } else { i32::try_from(plan.gpus).unwrap_or(i32::MAX) },
        gpu_type: &job.spec.resources.gpu_type,
        gpu_hours: cost.map_or(0.0, |c| c.gpu_hours),
        cost: cost.map_or(0.0, |c| c.cost),
        estimated_gpu_hours: plan.estimated_gpu_hours,
        kind: frugal_api::v1alpha1::HolderKind::TrainingJob,
    };
    match budget::admit(b, &status, &claim, now) {
        Ok(()) => {
            let in_use: i32 = status.jobs.iter().map(|h| h.gpus).sum();
            Check::ok(
                CHECK,
                format!("{name:?} admits it now: {} of its {} GPUs free{}", b.spec.max_gpus - in_use, b.spec.max_gpus, spent_this_period(b, &status)),
            )
        }
        Err(budget::Refusal::Wait(w)) => Check::note(CHECK, Some(w.reason), format!("would wait, Queued: {}", w.message)),
        Err(budget::Refusal::TooSmall(e)) => Check::refused(CHECK, reasons::BUDGET_TOO_SMALL, e.to_string()),
    }
}

fn spent_this_period(b: &TrainingBudget, status: &frugal_api::v1alpha1::TrainingBudgetStatus) -> String {
    let spec = &b.spec;
    let mut parts = Vec::new();
    if let Some(limit) = spec.gpu_hours {
        parts.push(format!("{} of {limit} GPU-hours", budget::amount(status.gpu_hours_spent)));
    }
    if let Some(limit) = spec.max_cost {
        parts.push(format!("{} of {limit} {}", budget::amount(status.cost_spent), spec.currency));
    }
    if parts.is_empty() { String::new() } else { format!(", {} spent this {:?}", parts.join(" and "), spec.period) }
}

fn now() -> Time {
    Time(Timestamp::now())
}

/// Plans the manifest at `path`, online unless `offline`.
pub async fn run(path: &Path, offline: bool, ceiling: Option<i32>, target: &Target) -> Result<Planned> {
    let (job, manifest) = load(path)?;
    let (plan, mut checks) = self::offline(&job, ceiling);
    let mut namespace = None;
    if !offline {
        match online(&job, &manifest, plan.as_ref(), target).await? {
            Online::Checked { namespace: ns, checks: more } => {
                checks.extend(more);
                namespace = Some(ns);
            }
            Online::Unreachable(why) => {
                checks.push(Check::note("cluster", None, format!("offline checks only: {why}")));
                // the bucket needs no cluster where the job names no Secret
                checks.extend(bucket::checks(&job, None, job.metadata.namespace.as_deref().unwrap_or("default")).await);
            }
        }
    }
    let refused = checks.iter().any(|c| c.outcome == Outcome::Refused);
    let suggested_layout = plan.as_ref().and_then(|_| planner::suggest_layout(&job.spec, &PlanOptions::default()));
    Ok(Planned { job: job.metadata.name.clone().unwrap_or_default(), namespace, plan, suggested_layout, checks, refused })
}

enum Online {
    Checked {
        namespace: String,
        checks: Vec<Check>,
    },
    /// No cluster to ask: why.
    Unreachable(String),
}

async fn online(job: &TrainingJob, manifest: &serde_json::Value, plan: Option<&Plan>, target: &Target) -> Result<Online> {
    let cluster = match cluster::connect(target).await {
        Ok(c) => c,
        Err(e) => return Ok(Online::Unreachable(format!("{e:#}"))),
    };
    let namespace = match (&job.metadata.namespace, &target.namespace) {
        (Some(own), Some(flag)) if own != flag => {
            bail!("the manifest's metadata.namespace is {own:?} but -n names {flag:?}: drop one of them")
        }
        (Some(own), _) => own.clone(),
        (None, _) => cluster.namespace.clone(),
    };
    let name = job.metadata.name.clone().unwrap_or_default();
    let jobs: Api<TrainingJob> = Api::namespaced(cluster.client.clone(), &namespace);
    // strict, as `kubectl apply` is: an unknown field is refused, not dropped
    let params = PatchParams::apply(FIELD_MANAGER).force().dry_run().validation(ValidationDirective::Strict);
    let answer = jobs.patch(&name, &params, &Patch::Apply(manifest)).await.map(|_| ());
    if let Err(e) = &answer
        && cluster::unreachable(e)
    {
        return Ok(Online::Unreachable(format!("{:#}", cluster::explain(answer.unwrap_err(), "asking the API server"))));
    }
    let mut checks = vec![dry_run_check(answer)?];
    checks.extend(bucket::checks(job, Some(&cluster.client), &namespace).await);
    let Some(plan) = plan else {
        return Ok(Online::Checked { namespace, checks });
    };
    let budgets: Api<TrainingBudget> = Api::namespaced(cluster.client.clone(), &namespace);
    match budgets.list(&ListParams::default()).await {
        Ok(list) => {
            let existing = jobs.get_opt(&name).await.map_err(|e| cluster::explain(e, "reading the TrainingJob"))?;
            checks.push(budget_check(job, plan, &namespace, &list.items, existing.as_ref(), &now()));
        }
        Err(kube::Error::Api(s)) if s.code == 403 => {
            checks.push(Check::note("TrainingBudget", None, format!("not checked: cannot list TrainingBudgets: {}", s.message)));
        }
        Err(e) => return Err(cluster::explain(e, "listing TrainingBudgets")),
    }
    Ok(Online::Checked { namespace, checks })
}

pub fn count(n: i64, what: &str) -> String {
    if n == 1 { format!("1 {what}") } else { format!("{n} {what}s") }
}

fn gpus(n: i64) -> String {
    count(n, "GPU")
}

fn pods(n: i64) -> String {
    count(n, "pod")
}

/// What the busiest GPU (or process) sends per step, by kind.
fn sends(plan: &Plan) -> String {
    let Some(busiest) = plan.stages.iter().max_by_key(|s| s.communication.total()) else { return String::new() };
    let c = &busiest.communication;
    let parts: Vec<String> =
        [(c.gradients, "gradient all-reduce"), (c.weights, "weight all-gather"), (c.pipeline, "pipeline activations and gradients")]
            .iter()
            .filter(|(b, _)| *b > 0)
            .map(|(b, what)| format!("{what} {}", bytes(*b)))
            .collect();
    format!(
        "{} per step from the busiest {} ({})",
        bytes(plan.communication_bytes_per_step),
        if plan.gpus > 0 { "GPU" } else { "process" },
        parts.join(", ")
    )
}

/// Bytes in a few characters: 512 B, 12.0 KiB, 3.4 MiB, 1.25 GiB.
pub fn bytes(b: i64) -> String {
    let b = b as f64;
    const K: f64 = 1024.0;
    if b >= K * K * K {
        format!("{:.2} GiB", b / (K * K * K))
    } else if b >= K * K {
        format!("{:.1} MiB", b / (K * K))
    } else if b >= K {
        format!("{:.1} KiB", b / K)
    } else {
        format!("{b} B")
    }
}

fn stage_row(index: usize, s: &StagePlan, gpu_memory: i64) -> Vec<String> {
    let m = &s.memory;
    let share = if gpu_memory > 0 { format!("{:.0}%", 100.0 * m.total() as f64 / gpu_memory as f64) } else { "-".into() };
    let mut parts = Vec::new();
    if s.embedding {
        parts.push("embedding");
    }
    if s.head {
        parts.push("head");
    }
    vec![
        index.to_string(),
        format!("{}..{}{}", s.layers.start, s.layers.end, if parts.is_empty() { String::new() } else { format!(" +{}", parts.join("+")) }),
        human(s.parameters as f64),
        bytes(m.weights),
        bytes(m.gradients),
        bytes(m.optimizer),
        bytes(m.activations),
        bytes(m.logits),
        bytes(m.overhead),
        bytes(m.total()),
        share,
    ]
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

/// The plan and the checks, for people.
pub fn text(p: &Planned, job: &TrainingJob) -> String {
    let mut out = match &p.namespace {
        Some(ns) => format!("TrainingJob {ns}/{}\n", p.job),
        None => format!("TrainingJob {} (offline)\n", p.job),
    };
    if let Some(plan) = &p.plan {
        let m = &plan.model;
        let spec = &job.spec;
        let on_gpu = plan.gpu_memory_bytes > 0;
        let mut facts = Table::new(&["", ""]);
        let mut fact = |k: &str, v: String| facts.push(vec![k.into(), v]);
        fact(
            "model",
            format!(
                "{} ({} layers, {} wide, {} heads, context {}, vocabulary {})",
                describe_model(m, spec.training.precision),
                m.layers,
                m.d_model,
                m.heads,
                m.seq_len,
                m.vocab_size
            ),
        );
        fact("parameters", format!("{} total, {} active", human(plan.parameters.total as f64), human(plan.parameters.active as f64)));
        fact(
            "FLOPs",
            format!("{:.3e} per token, {:.3e} in all ({} steps, {} tokens)", plan.flops_per_token, plan.total_flops, plan.steps, plan.tokens),
        );
        // replicas × stages, where there are replicas
        let grid =
            if plan.replicas > 1 { format!(" ({} replicas × {})", plan.replicas, count(plan.stages.len() as i64, "stage")) } else { String::new() };
        fact(
            "GPUs",
            if on_gpu {
                format!(
                    "{} × {} in {}{grid}, pipeline bubble {:.1}%",
                    plan.gpus,
                    spec.resources.gpu_type,
                    pods(plan.pods),
                    plan.pipeline_bubble * 100.0
                )
            } else {
                format!("none: trains on CPU, in {}{grid}", pods(plan.pods))
            },
        );
        if plan.communication_bytes_per_step > 0 {
            fact("sends", sends(plan));
        }
        if let Some(layout) = &p.suggested_layout {
            fact(
                "better layout",
                format!(
                    "{}: the same {}, {} per GPU, pipeline bubble {:.1}% instead of {:.1}%",
                    layout.changes(&spec.parallelism),
                    gpus(layout.gpus()),
                    bytes(layout.memory_per_device_bytes),
                    layout.pipeline_bubble * 100.0,
                    plan.pipeline_bubble * 100.0
                ),
            );
        }
        fact(
            "estimate",
            if on_gpu {
                format!(
                    "{} GPU-hours, {} {} (at {:.0}% MFU)",
                    budget::amount(plan.estimated_gpu_hours),
                    budget::amount(plan.estimated_cost),
                    plan.currency,
                    PlanOptions::default().assumed_mfu * 100.0
                )
            } else {
                "no GPU-hours, no cost".into()
            },
        );
        // two columns without a header: the keys padded
        let facts_text: String = facts.text().lines().skip(1).map(|l| format!("  {l}\n")).collect();
        out += &facts_text;
        out += &format!("  memory per {}, by pipeline stage:\n", if on_gpu { "GPU" } else { "process" });
        let mut stages =
            Table::new(&["stage", "layers", "params", "weights", "gradients", "optimizer", "activations", "logits", "overhead", "total", "of GPU"]);
        for (i, s) in plan.stages.iter().enumerate() {
            stages.push(stage_row(i, s, plan.gpu_memory_bytes));
        }
        out += &indent(&indent(&stages.text()));
        if !plan.warnings.is_empty() {
            out += "  warnings:\n";
            for w in &plan.warnings {
                out += &format!("    - {w}\n");
            }
        }
    }
    out += "  checks:\n";
    let mut checks = Table::new(&["result", "check", "reason", "message"]);
    for c in &p.checks {
        let outcome = match c.outcome {
            Outcome::Ok => "ok",
            Outcome::Note => "note",
            Outcome::Refused => "REFUSED",
        };
        checks.push(vec![outcome.into(), c.check.into(), c.reason.clone().unwrap_or_else(|| "-".into()), c.message.clone()]);
    }
    out += &indent(&indent(&checks.text()));
    out += &verdict(p);
    out
}

/// The last line: refused (why), or admitted (and whether it would wait).
pub fn verdict(p: &Planned) -> String {
    let refused: Vec<&Check> = p.checks.iter().filter(|c| c.outcome == Outcome::Refused).collect();
    if !refused.is_empty() {
        let why: Vec<String> = refused.iter().map(|c| format!("{} ({}): {}", c.reason.as_deref().unwrap_or("-"), c.check, c.message)).collect();
        return format!("refused: {}\n", why.join("; "));
    }
    let wait = p.checks.iter().find(|c| c.outcome == Outcome::Note && c.reason.is_some());
    let checked = if p.namespace.is_some() { "" } else { " (offline checks only)" };
    match wait {
        Some(w) => format!("admitted{checked}, and it would wait, Queued ({})\n", w.reason.as_deref().unwrap_or_default()),
        None => format!("admitted{checked}\n"),
    }
}

mod bucket;
#[cfg(test)]
mod tests;
