//! The CRDs as the API server sees them: they install, the examples pass, every invalid fixture
//! is rejected with its CEL message, and server-side apply is stable.

use anyhow::{Context as _, Result, bail, ensure};
use frugal_e2e::manifests::{self, api_for, expected_message, in_namespace, install_crds, label, read_objects};
use frugal_e2e::{FIELD_MANAGER, TestContext, repo_root, run};
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};

#[tokio::test]
async fn crds_install_and_are_established() {
    run("crds-install", |t: TestContext| async move {
        let names = install_crds(&t.client).await?;
        eprintln!("installed CRDs: {names:?}");
        for expected in ["trainingjobs.frugal.dev", "trainingbudgets.frugal.dev"] {
            ensure!(names.iter().any(|n| n == expected), "crds/ does not define {expected}");
        }
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn examples_are_accepted() {
    run("examples-accepted", |t: TestContext| async move {
        install_crds(&t.client).await?;
        let files = manifests::yaml_files(&repo_root().join("examples"))?;
        ensure!(!files.is_empty(), "examples/ holds no manifests");
        let dry_run = PostParams { dry_run: true, field_manager: Some(FIELD_MANAGER.into()) };
        let mut checked = 0;
        for file in &files {
            for obj in read_objects(file)? {
                let what = label(&obj, file);
                let api = api_for(&t.client, &obj, &t.namespace).await?;
                let obj = if api.namespace().is_some() { in_namespace(obj, &t.namespace) } else { obj };
                api.create(&dry_run, &obj).await.with_context(|| format!("the API server rejected {what}"))?;
                checked += 1;
            }
        }
        eprintln!("{checked} example objects accepted (server-side dry run)");
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn invalid_manifests_are_rejected_with_their_message() {
    run("invalid-rejected", |t: TestContext| async move {
        install_crds(&t.client).await?;
        let dir = repo_root().join("api/tests/invalid");
        let files = manifests::yaml_files(&dir)?;
        ensure!(!files.is_empty(), "{} holds no fixtures", dir.display());
        let dry_run = PostParams { dry_run: true, field_manager: Some(FIELD_MANAGER.into()) };
        let mut failures = Vec::new();
        for file in &files {
            let expect = expected_message(file)?;
            for obj in read_objects(file)? {
                let what = label(&obj, file);
                let api = api_for(&t.client, &obj, &t.namespace).await?;
                let obj = if api.namespace().is_some() { in_namespace(obj, &t.namespace) } else { obj };
                failures.extend(refused(api.create(&dry_run, &obj).await, &what, &expect));
            }
        }
        all_refused(failures, files.len(), "fixtures")
    })
    .await;
}

/// The transition rules (`self == oldSelf`): each fixture under updates/ is an object the API
/// server accepts and an update of it that it refuses with the fixture's message.
#[tokio::test]
async fn invalid_updates_are_rejected_with_their_message() {
    run("invalid-updates-rejected", |t: TestContext| async move {
        install_crds(&t.client).await?;
        let files = manifests::yaml_files(&repo_root().join("api/tests/invalid/updates"))?;
        ensure!(!files.is_empty(), "api/tests/invalid/updates holds no fixtures");
        let post = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
        let mut failures = Vec::new();
        for (i, file) in files.iter().enumerate() {
            let expect = expected_message(file)?;
            let mut objects = read_objects(file)?.into_iter();
            let (Some(old), Some(mut new), None) = (objects.next(), objects.next(), objects.next()) else {
                bail!("{} must hold two objects: the original and its update", file.display());
            };
            let what = label(&new, file);
            // each fixture under its own name, so that they do not meet
            let name = format!("update-{i}");
            let api = api_for(&t.client, &old, &t.namespace).await?;
            let mut old = in_namespace(old, &t.namespace);
            old.metadata.name = Some(name.clone());
            let created = api.create(&post, &old).await.with_context(|| format!("creating the original of {what}"))?;
            new = in_namespace(new, &t.namespace);
            new.metadata.name = Some(name.clone());
            new.metadata.resource_version = created.metadata.resource_version.clone();
            failures.extend(refused(api.replace(&name, &post, &new).await, &format!("{what} (update)"), &expect));
        }
        all_refused(failures, files.len(), "update fixtures")
    })
    .await;
}

#[tokio::test]
async fn server_side_apply_twice_changes_nothing() {
    run("ssa-idempotent", |t: TestContext| async move {
        install_crds(&t.client).await?;
        let (file, job) = first_training_job()?;
        let what = label(&job, &file);
        let api = api_for(&t.client, &job, &t.namespace).await?;
        let job = in_namespace(job, &t.namespace);
        let name = job.metadata.name.clone().context("example TrainingJob has no name")?;
        let params = PatchParams::apply(FIELD_MANAGER);

        let first = api.patch(&name, &params, &Patch::Apply(&job)).await.with_context(|| format!("applying {what}"))?;
        let second = api.patch(&name, &params, &Patch::Apply(&job)).await.with_context(|| format!("re-applying {what}"))?;
        ensure!(
            first.metadata.resource_version == second.metadata.resource_version,
            "re-applying {what} changed resourceVersion {:?} -> {:?}",
            first.metadata.resource_version,
            second.metadata.resource_version
        );
        ensure!(first.metadata.generation == second.metadata.generation, "generation changed");
        Ok(())
    })
    .await;
}

/// What is wrong with the API server's answer to a request it should refuse with `expect`.
fn refused<T>(answer: kube::Result<T>, what: &str, expect: &str) -> Option<String> {
    match answer {
        Ok(_) => Some(format!("{what}: accepted, expected rejection with {expect:?}")),
        Err(kube::Error::Api(status)) if status.message.contains(expect) => {
            eprintln!("{what}: rejected ({}): {}", status.code, status.message);
            None
        }
        Err(e) => Some(format!("{what}: expected a message containing {expect:?}, got: {e}")),
    }
}

fn all_refused(failures: Vec<String>, of: usize, what: &str) -> Result<()> {
    if !failures.is_empty() {
        bail!("{} of {of} {what} misbehaved:\n{}", failures.len(), failures.join("\n"));
    }
    Ok(())
}

/// The first TrainingJob among the examples.
fn first_training_job() -> Result<(std::path::PathBuf, DynamicObject)> {
    for file in manifests::yaml_files(&repo_root().join("examples"))? {
        for obj in read_objects(&file)? {
            if obj.types.as_ref().is_some_and(|t| t.kind == "TrainingJob") {
                return Ok((file, obj));
            }
        }
    }
    bail!("no TrainingJob among examples/")
}
