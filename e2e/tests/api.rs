//! The CRDs as the API server sees them: they install, the examples pass, every invalid fixture
//! is rejected with its CEL message, and server-side apply is stable.

use anyhow::{Context as _, Result, bail, ensure};
use frugal_e2e::manifests::{self, api_for, expected_message, in_namespace, install_crds, label, read_objects};
use frugal_e2e::node::kubectl;
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
        let files = manifests::yaml_files_deep(&repo_root().join("examples"))?;
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

/// The field paths `kubectl explain --recursive` lists under its `FIELDS:` heading, each as a
/// dotted path below the explained field (children are indented two spaces more than their parent).
fn explained_fields(out: &str) -> Result<Vec<String>> {
    let mut paths = Vec::new();
    let mut stack: Vec<(usize, String)> = Vec::new();
    for line in out.lines().skip_while(|l| !l.starts_with("FIELDS:")).skip(1) {
        // a field's allowed values follow it on a line of their own
        if line.trim().is_empty() || line.trim_start().starts_with("enum:") {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let name = line.split_whitespace().next().context("an empty field line")?;
        ensure!(line.contains('<'), "not a field line: {line:?}");
        while stack.last().is_some_and(|(i, _)| *i >= indent) {
            stack.pop();
        }
        let path = match stack.last() {
            Some((_, parent)) => format!("{parent}.{name}"),
            None => name.to_string(),
        };
        paths.push(path.clone());
        stack.push((indent, path));
    }
    Ok(paths)
}

/// Every property below `node` in an OpenAPI schema, by the path kubectl explain gives it (list
/// items and map values are explained as their element's fields), with its description.
fn schema_fields(node: &serde_json::Value, prefix: &str, out: &mut Vec<(String, String)>) {
    if let Some(props) = node.get("properties").and_then(|p| p.as_object()) {
        for (name, child) in props {
            let path = if prefix.is_empty() { name.clone() } else { format!("{prefix}.{name}") };
            out.push((path.clone(), child.get("description").and_then(|d| d.as_str()).unwrap_or_default().to_string()));
            schema_fields(child, &path, out);
        }
    }
    for inner in ["items", "additionalProperties"] {
        if let Some(child) = node.get(inner).filter(|c| c.is_object()) {
            schema_fields(child, prefix, out);
        }
    }
}

/// The README's way of installing the CRDs (`kubectl apply --server-side`), and `kubectl explain`
/// on what it installed: every field of the spec is listed and described.
#[tokio::test]
async fn kubectl_explain_describes_every_field_of_the_spec() {
    run("explain", |_t: TestContext| async move {
        let crds = repo_root().join("charts/frugal/crds");
        kubectl(&["apply", "--server-side", "--field-manager=frugal-e2e", "-f", crds.to_str().unwrap()])?;
        kubectl(&["wait", "--for=condition=Established", "--timeout=60s", "crd/trainingjobs.frugal.dev", "crd/trainingbudgets.frugal.dev"])?;
        let crd: serde_json::Value = serde_json::to_value(&read_objects(&repo_root().join("crds/trainingjobs.frugal.dev.yaml"))?[0])?;
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let mut fields = Vec::new();
        schema_fields(spec, "", &mut fields);
        let undescribed: Vec<_> = fields.iter().filter(|(_, d)| d.trim().is_empty()).map(|(p, _)| p.as_str()).collect();
        ensure!(undescribed.is_empty(), "fields of the TrainingJob spec without a description (add a doc comment):\n{}", undescribed.join("\n"));
        // the API server publishes the CRD's schema; explain can take a moment to see a new one
        let explained = frugal_e2e::wait::until("kubectl explain to list the spec's fields", async {
            loop {
                if let Ok(out) = kubectl(&["explain", "trainingjob.spec", "--recursive"]) {
                    let paths = explained_fields(&out)?;
                    if paths.len() == fields.len() {
                        return Ok::<_, anyhow::Error>(paths);
                    }
                }
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        })
        .await?;
        let schema_paths: std::collections::BTreeSet<_> = fields.iter().map(|(p, _)| p.clone()).collect();
        let explained_paths: std::collections::BTreeSet<_> = explained.iter().cloned().collect();
        ensure!(
            schema_paths == explained_paths,
            "explain and the schema differ: {:?}",
            schema_paths.symmetric_difference(&explained_paths).collect::<Vec<_>>()
        );
        // and each top-level field's own page carries its description
        let top: Vec<_> = fields.iter().filter(|(p, _)| !p.contains('.')).collect();
        for (path, description) in &top {
            let out = kubectl(&["explain", &format!("trainingjob.spec.{path}")])?;
            let first = description.split_whitespace().take(4).collect::<Vec<_>>().join(" ");
            ensure!(
                out.split_whitespace().collect::<Vec<_>>().join(" ").contains(&first),
                "kubectl explain trainingjob.spec.{path} lacks {first:?}:\n{out}"
            );
        }
        eprintln!("kubectl explain lists and describes all {} fields of the spec ({} top-level pages checked)", fields.len(), top.len());
        Ok(())
    })
    .await;
}

/// `kubectl get tj -o wide` shows the plan's estimate and the reason beside the default columns.
#[tokio::test]
async fn wide_output_shows_the_estimate_and_the_reason() {
    run("wide-columns", |t: TestContext| async move {
        install_crds(&t.client).await?;
        let example = read_objects(&repo_root().join("examples/quickstart-cpu.yaml"))?.remove(0);
        let api = api_for(&t.client, &example, &t.namespace).await?;
        let name = example.metadata.name.clone().context("the example has a name")?;
        api.create(&PostParams::default(), &in_namespace(example, &t.namespace)).await?;
        let plan = frugal_api::v1alpha1::PlanStatus { estimated_gpu_hours: 1.25, estimated_cost: 3.5, currency: "EUR".into(), ..Default::default() };
        let status = serde_json::json!({ "status": {
            "phase": "Queued",
            "plan": plan,
            "conditions": [{ "type": "Ready", "status": "False", "reason": "BudgetExhausted", "message": "waiting",
                "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1 }],
        }});
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status)).await?;
        let plain = kubectl(&["get", "tj", &name, "-n", &t.namespace])?;
        let wide = kubectl(&["get", "tj", &name, "-n", &t.namespace, "-o", "wide"])?;
        ensure!(!plain.contains("EST-COST") && !plain.contains("BudgetExhausted"), "the default columns grew:\n{plain}");
        for expected in ["EST-GPU-HOURS", "EST-COST", "CURRENCY", "REASON", "1.25", "3.5", "EUR", "BudgetExhausted"] {
            ensure!(wide.contains(expected), "-o wide lacks {expected:?}:\n{wide}");
        }
        eprintln!("{wide}");
        Ok(())
    })
    .await;
}
