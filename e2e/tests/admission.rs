//! The chart's ValidatingAdmissionPolicies as the API server enforces them, with no operator
//! running: a trainer's identity patches its own job's progress but not what the operator owns,
//! and not another job's status; nobody but the operator's identity writes the status of either
//! kind, a namespace admin with every verb included; a job above its namespace's GPU ceiling is
//! refused at create.
//!
//! Policies are cluster-wide and other tests run beside these, so each test renders them with
//! helm as a release in its own namespace, scoped to it (operator.watchNamespace, the ceiling set
//! for that namespace only), and deletes them when it ends, pass or fail.

use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use futures::FutureExt as _;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::api::{DeleteParams, DynamicObject, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt as _};
use serde_json::{Value, json};

use frugal_api::TrainingJob;
use frugal_api::v1alpha1::Device;
use frugal_e2e::node::helm;
use frugal_e2e::training_job::fake_gpu_job;
use frugal_e2e::{FIELD_MANAGER, TestContext, manifests, run};

/// The field managers the trainer and the operator write the status with.
const TRAINER_MANAGER: &str = "frugal-trainer";
const OPERATOR_MANAGER: &str = "frugal-operator";

const STATUS_POLICY: &str = "templates/status-policy.yaml";
const CEILING_POLICY: &str = "templates/gpu-ceiling-policy.yaml";
const DEFAULT_BUDGET_POLICY: &str = "templates/default-budget-policy.yaml";
const SECRET_REFERENCES_POLICY: &str = "templates/secret-references-policy.yaml";

#[tokio::test]
async fn a_trainer_identity_changes_only_its_own_jobs_progress() {
    run("admission-trainer", |t: TestContext| async move {
        manifests::install_crds(&t.client).await?;
        let api: Api<TrainingJob> = t.api();
        let post = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
        for job in ["lm", "other"] {
            api.create(&post, &fake_gpu_job(job, 2, 1)).await?;
            trainer_identity(&t, job).await?;
        }
        // the operator's part of the status, as it writes it before the pods start
        let operator_status = json!({"phase": "Running", "attempt": 1, "cost": {"gpuHours": 0.0, "cost": 0.0, "currency": "USD"}});
        api.patch_status("lm", &PatchParams::apply(OPERATOR_MANAGER), &Patch::Apply(status_patch(operator_status))).await?;

        with_policies(&t, STATUS_POLICY, &[], async {
            let trainer: Api<TrainingJob> = Api::namespaced(impersonating(&service_account(&t, "lm-trainer")).await?, &t.namespace);
            let as_trainer = PatchParams::apply(TRAINER_MANAGER).force();

            // the policy takes a moment to be enforced: probe with a dry run until it is
            let dry_run = PatchParams { dry_run: true, ..as_trainer.clone() };
            let probe = Patch::Apply(status_patch(json!({"restarts": 7})));
            let denied = until_refused("the trainer policy in force (dry run)", || trainer.patch_status("lm", &dry_run, &probe)).await?;
            ensure!(denied.contains("this request changes status.restarts"), "{denied}");

            let progress = Patch::Apply(status_patch(json!({"progress": {"step": 10, "totalSteps": 100, "tokens": 5120, "loss": 4.2}})));
            let patched = trainer.patch_status("lm", &as_trainer, &progress).await.context("the trainer reporting progress")?;
            let status = patched.status.context("no status")?;
            ensure!(status.progress.as_ref().is_some_and(|p| p.step == 10), "{status:?}");
            eprintln!("e2e: the trainer's status.progress patch was accepted: {:?}", status.progress);

            // server-side apply (forced over the operator's ownership) and a merge patch alike
            let phase = status_patch(json!({"phase": "Succeeded"}));
            let message = refused(trainer.patch_status("lm", &as_trainer, &Patch::Apply(&phase)).await, "the trainer applying status.phase")?;
            ensure!(message.contains("this request changes status.phase"), "{message}");
            let cost = json!({"status": {"cost": {"gpuHours": 0.0, "cost": 0.0, "currency": "EUR"}}});
            let message =
                refused(trainer.patch_status("lm", &PatchParams::default(), &Patch::Merge(&cost)).await, "the trainer merging status.cost")?;
            ensure!(message.ends_with("this request changes status.cost"), "{message}");
            let several = Patch::Apply(status_patch(json!({"restarts": 3, "phase": "Failed", "observedGeneration": 9})));
            let message = refused(trainer.patch_status("lm", &dry_run, &several).await, "the trainer applying three of the operator's fields")?;
            ensure!(message.ends_with("this request changes status.observedGeneration, status.phase, status.restarts"), "{message}");

            // another job's trainer: RBAC refuses it, and the policy too once RBAC is too wide
            let other: Api<TrainingJob> = Api::namespaced(impersonating(&service_account(&t, "other-trainer")).await?, &t.namespace);
            let message = refused(other.patch_status("lm", &as_trainer, &progress).await, "other's trainer on lm (RBAC)")?;
            ensure!(message.contains("cannot patch resource \"trainingjobs/status\""), "{message}");
            grant(&t, "too-wide", "other-trainer", None).await?;
            let message = until_refused_with("other's trainer on lm under a too-wide Role", "own trainer identity", || {
                other.patch_status("lm", &as_trainer, &progress)
            })
            .await?;
            ensure!(message.contains(&service_account(&t, "lm-trainer")) && message.contains(&service_account(&t, "other-trainer")), "{message}");

            // the operator's identity writes what it owns
            let operator = service_account(&t, "admission-frugal-operator");
            let status_writer = |resource: &str| PolicyRule {
                api_groups: Some(vec!["frugal.dev".into()]),
                resources: Some(vec![resource.into()]),
                verbs: vec!["get".into(), "patch".into(), "update".into()],
                ..Default::default()
            };
            let account =
                |name: &str| Subject { kind: "ServiceAccount".into(), name: name.into(), namespace: Some(t.namespace.clone()), ..Default::default() };
            bind(&t, "operator-status", status_writer("trainingjobs/status"), account("admission-frugal-operator")).await?;
            let as_operator: Api<TrainingJob> = Api::namespaced(impersonating(&operator).await?, &t.namespace);
            let done = status_patch(json!({"phase": "Succeeded"}));
            as_operator
                .patch_status("lm", &PatchParams::apply(OPERATOR_MANAGER).force(), &Patch::Apply(&done))
                .await
                .context("the operator writing status.phase")?;
            Ok(())
        })
        .await
    })
    .await;
}

/// A namespace admin whom RBAC lets do anything with frugal's kinds and their status still
/// cannot write the status of either: not mark a job Succeeded, not reset a budget's ledger.
#[tokio::test]
async fn only_the_operator_writes_the_status_of_jobs_and_budgets() {
    run("admission-status", |t: TestContext| async move {
        manifests::install_crds(&t.client).await?;
        let post = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
        t.api::<TrainingJob>().create(&post, &fake_gpu_job("lm", 2, 1)).await?;
        let budget = frugal_api::TrainingBudget::test(4).gpu_hours(Some(10.0)).build();
        t.api::<frugal_api::TrainingBudget>().create(&post, &budget).await?;
        // bob is a namespace admin: every verb on every frugal.dev resource, status included
        let everything = PolicyRule {
            api_groups: Some(vec!["frugal.dev".into()]),
            resources: Some(vec!["*".into()]),
            verbs: vec!["*".into()],
            ..Default::default()
        };
        let bob = Subject { kind: "User".into(), name: "bob".into(), api_group: Some("rbac.authorization.k8s.io".into()), ..Default::default() };
        bind(&t, "namespace-admin", everything, bob).await?;
        with_policies(&t, STATUS_POLICY, &[], async {
            let bob = impersonating("bob").await?;
            let jobs: Api<TrainingJob> = Api::namespaced(bob.clone(), &t.namespace);
            let budgets: Api<frugal_api::TrainingBudget> = Api::namespaced(bob, &t.namespace);
            let forged = Patch::Merge(json!({"status": {"phase": "Succeeded"}}));
            let merge = PatchParams::default();
            let message = until_refused("bob marking the job Succeeded", || jobs.patch_status("lm", &merge, &forged)).await?;
            for part in ["the status of TrainingJob lm is written by the frugal operator", "not by bob"] {
                ensure!(message.contains(part), "the refusal does not say {part:?}: {message}");
            }
            let reset = Patch::Merge(json!({"status": {"gpuHoursSpent": 0.0, "jobs": []}}));
            let message = refused(budgets.patch_status("team", &PatchParams::default(), &reset).await, "bob resetting the budget's ledger")?;
            ensure!(message.contains("the status of TrainingBudget team is written by the frugal operator"), "{message}");
            // RBAC still lets bob do what is his: change the job's spec
            let label = Patch::Merge(json!({"metadata": {"labels": {"team": "ml"}}}));
            jobs.patch("lm", &PatchParams::default(), &label).await.context("bob labelling his job")?;
            Ok(())
        })
        .await
    })
    .await;
}

#[tokio::test]
async fn a_job_above_its_namespaces_gpu_ceiling_is_refused() {
    run("admission-gpu-ceiling", |t: TestContext| async move {
        manifests::install_crds(&t.client).await?;
        let api: Api<TrainingJob> = t.api();
        let post = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
        // created before the ceiling: still editable under it, as long as its GPUs do not grow
        api.create(&post, &fake_gpu_job("before", 4, 1)).await?;

        let ceiling = format!("admissionPolicies.gpuCeiling.namespaces.{}=2", t.namespace);
        with_policies(&t, CEILING_POLICY, &[&ceiling], async {
            let dry_run = PostParams { dry_run: true, ..post.clone() };
            let above = fake_gpu_job("above", 4, 2);
            until_refused("the ceiling in force (dry run)", || api.create(&dry_run, &above)).await?;
            let message = refused(api.create(&post, &above).await, "a 4-GPU job under a ceiling of 2")?;
            for part in [&format!("namespace {}", t.namespace), "would hold 4 GPUs", "ceiling of 2 GPUs", "spec.parallelism.pipelineStages"] {
                ensure!(message.contains(part), "the refusal does not say {part:?}: {message}");
            }

            api.create(&post, &fake_gpu_job("at", 2, 1)).await.context("a job at the ceiling")?;
            let mut cpu = fake_gpu_job("cpu", 8, 1);
            cpu.spec.resources.device = Device::Cpu;
            api.create(&post, &cpu).await.context("a CPU job of 8 stages, which holds no GPUs")?;
            eprintln!("e2e: a job of 2 GPUs and a CPU job of 8 stages were accepted under the ceiling of 2");

            // an update that would make the CPU job hold 8 GPUs is refused; one that leaves the
            // older 4-GPU job's GPUs alone is not
            let to_gpu = json!({"spec": {"resources": {"device": "GPU"}}});
            let message = refused(api.patch("cpu", &PatchParams::default(), &Patch::Merge(&to_gpu)).await, "the CPU job moved to GPUs")?;
            ensure!(message.contains("would hold 8 GPUs"), "{message}");
            let label = json!({"metadata": {"labels": {"team": "ml"}}});
            api.patch("before", &PatchParams::default(), &Patch::Merge(&label)).await.context("labelling the job older than the ceiling")?;
            Ok(())
        })
        .await
    })
    .await;
}

/// A namespace's default TrainingBudget is the admins': a user whom RBAC lets edit budgets may
/// create and change an ordinary one, but not create, change, make or delete a default one.
#[tokio::test]
async fn only_admins_change_a_namespaces_default_budget() {
    run("admission-default-budget", |t: TestContext| async move {
        manifests::install_crds(&t.client).await?;
        // alice may do anything with budgets in the namespace, as RBAC goes
        let rule = PolicyRule {
            api_groups: Some(vec!["frugal.dev".into()]),
            resources: Some(vec!["trainingbudgets".into()]),
            verbs: vec!["*".into()],
            ..Default::default()
        };
        let alice = Subject { kind: "User".into(), name: "alice".into(), api_group: Some("rbac.authorization.k8s.io".into()), ..Default::default() };
        bind(&t, "budget-editor", rule, alice).await?;
        let budget =
            |name: &str, default: bool| frugal_api::TrainingBudget::test(4).name(name).gpu_hours(Some(10.0)).namespace_default(default).build();
        with_policies(&t, DEFAULT_BUDGET_POLICY, &[], async {
            let admin: Api<frugal_api::TrainingBudget> = t.api();
            let alice: Api<frugal_api::TrainingBudget> = Api::namespaced(impersonating("alice").await?, &t.namespace);
            let post = PostParams::default();
            let alices = budget("alices-default", true);
            let message = until_refused("alice creating a default budget", || alice.create(&post, &alices)).await?;
            for part in ["namespace's default (spec.namespaceDefault)", "system:masters", "alice may not"] {
                ensure!(message.contains(part), "the refusal does not say {part:?}: {message}");
            }
            admin.create(&post, &budget("team", true)).await.context("the admin creating the default budget")?;
            alice.create(&post, &budget("scratch", false)).await.context("alice creating an ordinary budget")?;
            let loosen = json!({"spec": {"gpuHours": 1000}});
            alice.patch("scratch", &PatchParams::default(), &Patch::Merge(&loosen)).await.context("alice changing her own budget")?;
            refused(alice.patch("team", &PatchParams::default(), &Patch::Merge(&loosen)).await, "alice raising the default budget")?;
            let make_default = json!({"spec": {"namespaceDefault": true}});
            refused(alice.patch("scratch", &PatchParams::default(), &Patch::Merge(&make_default)).await, "alice making her budget the default")?;
            refused(alice.delete("team", &DeleteParams::default()).await, "alice deleting the default budget")?;
            admin.patch("team", &PatchParams::default(), &Patch::Merge(&loosen)).await.context("the admin raising the default budget")?;
            Ok(())
        })
        .await
    })
    .await;
}

/// A user whom RBAC lets create TrainingJobs but not read Secrets cannot have one's pods read a
/// Secret for them: a job naming one (checkpoint.store.credentialsSecret, a podTemplate.env
/// secretKeyRef, a secret or projected volume) is refused naming it; once the user may get that
/// one Secret, the job naming it is accepted, and one naming another still refused.
#[tokio::test]
async fn a_job_may_name_only_secrets_its_author_may_read() {
    run("admission-secret-references", |t: TestContext| async move {
        manifests::install_crds(&t.client).await?;
        let user = Subject { kind: "User".into(), name: "bob".into(), api_group: Some("rbac.authorization.k8s.io".into()), ..Default::default() };
        let jobs = PolicyRule {
            api_groups: Some(vec!["frugal.dev".into()]),
            resources: Some(vec!["trainingjobs".into()]),
            verbs: vec!["*".into()],
            ..Default::default()
        };
        bind(&t, "job-editor", jobs, user.clone()).await?;
        let with_store = |name: &str, secret: &str| {
            let mut tj = fake_gpu_job(name, 1, 1);
            tj.spec.checkpoint.store = Some(frugal_api::v1alpha1::ObjectStoreSpec {
                uri: "s3://lm-checkpoints/team".into(),
                endpoint: Some("http://seaweedfs.storage:8333".into()),
                region: None,
                credentials_secret: Some(secret.into()),
            });
            tj
        };
        let with_template = |name: &str, template: Value| -> Result<TrainingJob> {
            let mut tj = fake_gpu_job(name, 1, 1);
            tj.spec.pod_template = Some(serde_json::from_value(template)?);
            Ok(tj)
        };
        let env_ref =
            with_template("env", json!({"env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "db-password", "key": "password"}}}]}))?;
        let volume = with_template("volume", json!({"volumes": [{"name": "keys", "secret": {"secretName": "db-password"}}]}))?;
        let projected =
            with_template("projected", json!({"volumes": [{"name": "bundle", "projected": {"sources": [{"secret": {"name": "db-password"}}]}}]}))?;
        with_policies(&t, SECRET_REFERENCES_POLICY, &[], async {
            let bob: Api<TrainingJob> = Api::namespaced(impersonating("bob").await?, &t.namespace);
            let post = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
            let store = with_store("store", "store-keys");
            let message = until_refused("bob naming a store Secret he may not read", || bob.create(&post, &store)).await?;
            for part in ["Secret store-keys", "checkpoint.store.credentialsSecret", "bob may not get", "secrets/store-keys"] {
                ensure!(message.contains(part), "the refusal does not say {part:?}: {message}");
            }
            for (what, tj) in [("a secretKeyRef", &env_ref), ("a secret volume", &volume)] {
                let message = refused(bob.create(&post, tj).await, &format!("bob's job with {what}"))?;
                ensure!(message.contains("Secret db-password"), "{message}");
            }
            let message = refused(bob.create(&post, &projected).await, "bob's job projecting a Secret")?;
            ensure!(message.contains("podTemplate.volumes bundle project Secrets") && message.contains("bob may not get"), "{message}");

            // bob may get store-keys, and only it
            let get_one = PolicyRule {
                api_groups: Some(vec![String::new()]),
                resources: Some(vec!["secrets".into()]),
                resource_names: Some(vec!["store-keys".into()]),
                verbs: vec!["get".into()],
                ..Default::default()
            };
            bind(&t, "store-keys-reader", get_one, user.clone()).await?;
            let deadline = tokio::time::Instant::now() + frugal_e2e::timeout();
            loop {
                match bob.create(&post, &store).await {
                    Ok(_) => break,
                    // the RoleBinding reaches the authorizer's cache a moment after it is stored
                    Err(kube::Error::Api(s)) if s.code == 403 && tokio::time::Instant::now() < deadline => {
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await
                    }
                    Err(e) => return Err(e).context("bob's job naming the Secret he may read"),
                }
            }
            refused(bob.create(&post, &with_store("other", "db-password")).await, "bob naming another Secret")?;
            // an update to his job goes through; one that swaps in a Secret he may not read does not
            let label = json!({"metadata": {"labels": {"team": "ml"}}});
            bob.patch("store", &PatchParams::default(), &Patch::Merge(&label)).await.context("bob labelling his job")?;
            let swap = json!({"spec": {"checkpoint": {"store": {"credentialsSecret": "db-password"}}}});
            refused(bob.patch("store", &PatchParams::default(), &Patch::Merge(&swap)).await, "bob swapping in another Secret")?;
            Ok(())
        })
        .await
    })
    .await;
}

/// Renders `template` of the chart as a release in the test's namespace, watching only it,
/// applies what it renders, runs `body`, and deletes the objects again whatever `body` did.
async fn with_policies(t: &TestContext, template: &str, values: &[&str], body: impl Future<Output = Result<()>>) -> Result<()> {
    let chart = frugal_e2e::repo_root().join("charts/frugal");
    let watch = format!("operator.watchNamespace={}", t.namespace);
    let mut args = vec!["template", "admission", chart.to_str().unwrap(), "--namespace", &t.namespace, "--show-only", template, "--set", &watch];
    for v in values {
        args.extend(["--set", v]);
    }
    let rendered = helm(&args)?;
    let docs: Vec<Value> = serde_saphyr::from_multiple(&rendered).with_context(|| format!("helm rendered something other than YAML:\n{rendered}"))?;
    let objects: Vec<DynamicObject> = docs.into_iter().filter(|d| !d.is_null()).map(serde_json::from_value).collect::<Result<_, _>>()?;
    ensure!(objects.len() == 2, "{template} rendered {} objects, not a policy and its binding:\n{rendered}", objects.len());

    let mut applied = Vec::new();
    let mut outcome = Ok(());
    for obj in &objects {
        let api = manifests::api_for(&t.client, obj, &t.namespace).await?;
        match api.patch(&obj.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(obj)).await {
            Ok(_) => applied.push((api, obj.name_any(), obj.types.as_ref().map_or("?", |t| t.kind.as_str()))),
            Err(e) => {
                outcome = Err(e).with_context(|| format!("applying {} from {template}", obj.name_any()));
                break;
            }
        }
    }
    if outcome.is_ok() {
        let names: Vec<String> = applied.iter().map(|(_, name, kind)| format!("{kind}/{name}")).collect();
        eprintln!("e2e: applied {}", names.join(", "));
        outcome = match std::panic::AssertUnwindSafe(body).catch_unwind().await {
            Ok(result) => result,
            Err(panic) => {
                let message = panic.downcast_ref::<String>().map(String::as_str).or_else(|| panic.downcast_ref::<&str>().copied());
                Err(anyhow::anyhow!("panicked: {}", message.unwrap_or("?")))
            }
        };
    }
    // the binding first, so that no request meets a binding without its policy
    for (api, name, _) in applied.iter().rev() {
        if let Err(e) = api.delete(name, &DeleteParams::default()).await {
            eprintln!("e2e: deleting {name}: {e}");
        }
    }
    outcome
}

/// The ServiceAccount `<job>-trainer` with a Role and RoleBinding as the operator makes them
/// (operator/src/training_job/children/identity.rs): get and patch on this job's status only.
async fn trainer_identity(t: &TestContext, job: &str) -> Result<()> {
    let name = format!("{job}-trainer");
    let sa = ServiceAccount { metadata: ObjectMeta { name: Some(name.clone()), ..Default::default() }, ..Default::default() };
    t.api::<ServiceAccount>().create(&PostParams::default(), &sa).await?;
    grant(t, &name, &name, Some(job)).await
}

/// A Role of get and patch on `trainingjobs/status` (of `job` only, or of every job) bound to
/// the ServiceAccount `account`.
async fn grant(t: &TestContext, role: &str, account: &str, job: Option<&str>) -> Result<()> {
    let rule = PolicyRule {
        api_groups: Some(vec!["frugal.dev".into()]),
        resources: Some(vec!["trainingjobs/status".into()]),
        resource_names: job.map(|j| vec![j.to_string()]),
        verbs: vec!["get".into(), "patch".into()],
        ..Default::default()
    };
    let account = Subject { kind: "ServiceAccount".into(), name: account.into(), namespace: Some(t.namespace.clone()), ..Default::default() };
    bind(t, role, rule, account).await
}

/// A Role `name` of `rule` in the test's namespace, bound to `subject`.
async fn bind(t: &TestContext, name: &str, rule: PolicyRule, subject: Subject) -> Result<()> {
    let meta = ObjectMeta { name: Some(name.into()), ..Default::default() };
    t.api::<Role>().create(&PostParams::default(), &Role { metadata: meta.clone(), rules: Some(vec![rule]) }).await?;
    let binding = RoleBinding {
        metadata: meta,
        role_ref: RoleRef { api_group: "rbac.authorization.k8s.io".into(), kind: "Role".into(), name: name.into() },
        subjects: Some(vec![subject]),
    };
    t.api::<RoleBinding>().create(&PostParams::default(), &binding).await?;
    Ok(())
}

fn service_account(t: &TestContext, name: &str) -> String {
    format!("system:serviceaccount:{}:{name}", t.namespace)
}

/// A client of the kubeconfig's admin, impersonating `user`.
async fn impersonating(user: &str) -> Result<Client> {
    let mut config = kube::Config::infer().await?;
    config.auth_info.impersonate = Some(user.into());
    Ok(Client::try_from(config)?)
}

/// A server-side apply body of the status subresource.
fn status_patch(status: Value) -> Value {
    json!({"apiVersion": "frugal.dev/v1alpha1", "kind": "TrainingJob", "status": status})
}

/// The API server's message refusing a request with 403 Forbidden, printed.
fn refused<T>(answer: kube::Result<T>, what: &str) -> Result<String> {
    match answer {
        Ok(_) => bail!("{what}: accepted, expected a refusal"),
        Err(kube::Error::Api(status)) if status.code == 403 => {
            eprintln!("e2e: {what}: refused ({}): {}", status.code, status.message);
            Ok(status.message)
        }
        Err(e) => bail!("{what}: expected 403 Forbidden, got: {e}"),
    }
}

/// Repeats `request` until the API server refuses it by a ValidatingAdmissionPolicy, and returns
/// the message: a new policy reaches the API server's admission a moment after it is stored, and
/// there is nothing to watch for that.
async fn until_refused<T, F>(what: &str, request: impl Fn() -> F) -> Result<String>
where
    F: Future<Output = kube::Result<T>>,
{
    until_refused_with(what, "ValidatingAdmissionPolicy", request).await
}

/// [`until_refused`], for a refusal whose message contains `expect`.
async fn until_refused_with<T, F>(what: &str, expect: &str, request: impl Fn() -> F) -> Result<String>
where
    F: Future<Output = kube::Result<T>>,
{
    let deadline = tokio::time::Instant::now() + frugal_e2e::timeout();
    loop {
        let answer = request().await;
        if let Err(kube::Error::Api(status)) = &answer
            && status.code == 403
            && status.message.contains(expect)
        {
            eprintln!("e2e: {what}: refused ({}): {}", status.code, status.message);
            return Ok(status.message.clone());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{what}: not refused with {expect:?} within {:?}; last answer: {:?}", frugal_e2e::timeout(), answer.err());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
