//! The Helm chart as helm sees it before anything is installed: it lints, renders with the
//! defaults and namespace-scoped, names the images `images/build` makes, refuses a typo in its
//! values naming the field, and packages into the archive a user pushes to an OCI registry.
//! (Installing it for real is `real_node.rs`.)

use anyhow::{Result, ensure};
use frugal_e2e::node::{self, helm};

fn chart() -> String {
    frugal_e2e::repo_root().join("charts/frugal").display().to_string()
}

/// `helm template` of the chart at `chart_dir` as release `frugal` in `frugal-system`, with
/// `--set` `values`.
fn render(chart_dir: &str, values: &[&str]) -> Result<String> {
    let mut args = vec!["template", "frugal", chart_dir, "--namespace", "frugal-system"];
    args.extend(values.iter().flat_map(|v| ["--set", *v]));
    helm(&args)
}

/// helm runs only where scripts/e2e.sh put it on PATH, as every e2e test needs FRUGAL_E2E=1.
fn enabled(test: &str) -> bool {
    if !frugal_e2e::enabled() {
        eprintln!("e2e: skipping {test}: set FRUGAL_E2E=1 (scripts/e2e.sh puts helm on PATH)");
    }
    frugal_e2e::enabled()
}

#[test]
fn the_chart_lints_and_renders_with_the_images_make_images_builds() -> Result<()> {
    if !enabled("chart-render") {
        return Ok(());
    }
    helm(&["lint", "--strict", &chart()])?;
    let all = helm(&["template", "frugal", &chart(), "--namespace", "frugal-system"])?;
    for expected in [
        format!("image: \"{}\"", node::operator_image()),
        format!("--trainer-cpu-image={}", node::cpu_trainer_image()),
        format!("--trainer-image=frugal-trainer:{}-cuda", node::version()),
        "kind: ClusterRole".to_string(),
        "app.kubernetes.io/managed-by: Helm".to_string(),
        "readOnlyRootFilesystem: true".to_string(),
    ] {
        ensure!(all.contains(&expected), "the default render lacks {expected:?}:\n{all}");
    }
    let scoped = helm(&["template", "frugal", &chart(), "--namespace", "team", "--set", "operator.watchNamespace=team", "--set", "replicaCount=2"])?;
    // the operator's rules are a Role there; the only cluster-wide ones read the admission
    // policies by name and give users view, edit and admin on frugal's kinds
    ensure!(
        !scoped.contains("kind: ClusterRole\nmetadata:\n  name: frugal-operator\n") && scoped.contains("kind: Role"),
        "namespace-scoped RBAC:\n{scoped}"
    );
    for name in ["policies", "view", "edit", "admin"] {
        ensure!(
            scoped.contains(&format!("kind: ClusterRole\nmetadata:\n  name: frugal-operator-team-{name}\n")),
            "the {name} ClusterRole:\n{scoped}"
        );
    }
    ensure!(scoped.contains("--namespace=team") && scoped.contains("replicas: 2") && scoped.contains("--leader-elect"), "{scoped}");
    ensure!(scoped.contains("kubernetes.io/metadata.name: team"), "the scoped release's policy binding selects its namespace:\n{scoped}");
    // several namespaces: a Role and RoleBinding in each, a --namespace each, bindings to them
    let several = helm(&["template", "frugal", &chart(), "--namespace", "ops", "--set", "operator.watchNamespaces={team-a,team-b}"])?;
    for ns in ["team-a", "team-b"] {
        ensure!(several.contains(&format!("- --namespace={ns}\n")), "no --namespace={ns}:\n{several}");
        for kind in ["Role", "RoleBinding"] {
            let own = format!("kind: {kind}\nmetadata:\n  name: frugal-operator\n  namespace: {ns}\n");
            ensure!(several.contains(&own), "no {kind} in {ns}:\n{several}");
        }
    }
    ensure!(several.contains(r#"values: ["team-a","team-b"]"#), "the policy bindings do not select both namespaces:\n{several}");
    Ok(())
}

/// The admission policies (docs/admission.md): the status, operator-jobs and default-budget ones
/// by default, the GPU ceiling once a ceiling is set, each named after the release and its
/// namespace and named to the operator (--admission-policy), and none when disabled.
#[test]
fn the_admission_policies_render_by_default_and_go_when_disabled() -> Result<()> {
    if !enabled("chart-admission") {
        return Ok(());
    }
    let policy = |name: &str| format!("kind: ValidatingAdmissionPolicy\nmetadata:\n  name: frugal-operator-frugal-system-{name}\n");
    let binding = |name: &str| format!("kind: ValidatingAdmissionPolicyBinding\nmetadata:\n  name: frugal-operator-frugal-system-{name}\n");
    let chart_dir = chart();
    let render = |values: &[&str]| render(&chart_dir, values);
    let defaults = render(&[])?;
    for name in ["status", "operator-jobs", "default-budget", "secret-references"] {
        ensure!(defaults.contains(&policy(name)) && defaults.contains(&binding(name)), "{name} does not render by default:\n{defaults}");
        let arg = format!("- --admission-policy=frugal-operator-frugal-system-{name}\n");
        ensure!(defaults.contains(&arg), "the operator is not told of {name}:\n{defaults}");
    }
    ensure!(!defaults.contains("--admission-policy=frugal-operator-frugal-system-gpu-ceiling"), "{defaults}");
    ensure!(defaults.contains(r#"g in ["system:masters"]"#), "the default budget's admins:\n{defaults}");
    ensure!(defaults.contains("validationActions: [Deny]") && !defaults.contains("matchResources:"), "{defaults}");
    ensure!(!defaults.contains("gpu-ceiling"), "a GPU ceiling policy without a ceiling:\n{defaults}");

    let ceiling = render(&["admissionPolicies.gpuCeiling.namespaces.team-a=8", "admissionPolicies.gpuCeiling.default=2"])?;
    ensure!(ceiling.contains(&policy("gpu-ceiling")) && ceiling.contains(&binding("gpu-ceiling")), "{ceiling}");
    ensure!(ceiling.contains("- --admission-policy=frugal-operator-frugal-system-gpu-ceiling\n"), "{ceiling}");
    ensure!(ceiling.contains(r#"{"team-a":8}"#) && ceiling.contains(": 2\n"), "the ceilings as CEL:\n{ceiling}");

    let off = render(&[
        "admissionPolicies.status.enabled=false",
        "admissionPolicies.operatorJobs.enabled=false",
        "admissionPolicies.gpuCeiling.enabled=false",
        "admissionPolicies.gpuCeiling.default=2",
        "admissionPolicies.defaultBudget.enabled=false",
        "admissionPolicies.secretReferences.enabled=false",
    ])?;
    ensure!(!off.contains("ValidatingAdmissionPolicy") && !off.contains("--admission-policy"), "policies rendered while disabled:\n{off}");
    helm(&["lint", "--strict", &chart_dir, "--set", "admissionPolicies.gpuCeiling.default=0", "--set", "operator.watchNamespace=team"])?;
    Ok(())
}

/// Kueue's admission check (docs/kueue.md): off by default, with no rights on Kueue's objects;
/// on, the flag and only the verbs it needs, as Roles in the watched namespaces where some are.
#[test]
fn the_kueue_admission_check_and_its_rbac_render_only_when_enabled() -> Result<()> {
    if !enabled("chart-kueue-check") {
        return Ok(());
    }
    let chart_dir = chart();
    let render = |values: &[&str]| render(&chart_dir, values);
    let defaults = render(&[])?;
    ensure!(!defaults.contains("kueue.x-k8s.io") && !defaults.contains("--kueue-admission-check"), "Kueue rights by default:\n{defaults}");
    let on = render(&["kueueAdmissionCheck.enabled=true"])?;
    ensure!(on.contains("- --kueue-admission-check\n"), "{on}");
    for rule in [
        "resources: [admissionchecks]\n    verbs: [get, list, watch]",
        "resources: [admissionchecks/status]\n    verbs: [patch]",
        "resources: [workloads]\n    verbs: [get, list, watch]",
        "resources: [workloads/status]\n    verbs: [patch]",
        "resources: [localqueues]\n    verbs: [get]",
    ] {
        ensure!(on.contains(rule), "missing {rule:?}:\n{on}");
    }
    let scoped = render(&["kueueAdmissionCheck.enabled=true", "operator.watchNamespaces={team-a}"])?;
    ensure!(scoped.contains("kind: Role\nmetadata:\n  name: frugal-operator-workloads\n  namespace: team-a"), "{scoped}");
    ensure!(!scoped.contains("name: frugal-operator-frugal-system-workloads"), "cluster-wide workload rights while scoped:\n{scoped}");
    Ok(())
}

#[test]
fn a_typo_in_the_values_fails_naming_the_field() -> Result<()> {
    if !enabled("chart-schema") {
        return Ok(());
    }
    let typo = helm(&["template", "frugal", &chart(), "--set", "operator.trainerImg=x"]).expect_err("a typo renders");
    ensure!(typo.to_string().contains("trainerImg"), "{typo}");
    let wrong = helm(&["template", "frugal", &chart(), "--set", "replicaCount=0"]).expect_err("zero replicas render");
    ensure!(wrong.to_string().contains("replicaCount"), "{wrong}");
    let bad = helm(&["template", "frugal", &chart(), "--set", "image.pullPolicy=Sometimes"]).expect_err("a bad pull policy renders");
    ensure!(bad.to_string().contains("pullPolicy"), "{bad}");
    let ceiling =
        helm(&["template", "frugal", &chart(), "--set", "admissionPolicies.gpuCeiling.namespaces.team=-1"]).expect_err("a negative ceiling renders");
    ensure!(ceiling.to_string().contains("gpuCeiling/namespaces/team"), "{ceiling}");
    Ok(())
}

#[test]
fn the_chart_packages_for_an_oci_registry() -> Result<()> {
    if !enabled("chart-package") {
        return Ok(());
    }
    let out = std::env::temp_dir().join(format!("frugal-chart-{}", std::process::id()));
    std::fs::create_dir_all(&out)?;
    helm(&["package", &chart(), "--destination", out.to_str().unwrap()])?;
    let archive = out.join(format!("frugal-{}.tgz", node::version()));
    ensure!(archive.exists(), "no {}", archive.display());
    // what `helm push` would upload: the chart, its CRDs, schema and notes inside
    let shown = helm(&["show", "chart", archive.to_str().unwrap()])?;
    ensure!(shown.contains("name: frugal") && shown.contains(&format!("appVersion: {}", node::version())), "{shown}");
    let listing = std::process::Command::new("tar").args(["-tzf", archive.to_str().unwrap()]).output()?;
    let listing = String::from_utf8_lossy(&listing.stdout);
    for f in ["frugal/values.schema.json", "frugal/templates/NOTES.txt", "frugal/crds/trainingjobs.frugal.dev.yaml"] {
        ensure!(listing.contains(f), "the package lacks {f}:\n{listing}");
    }
    std::fs::remove_dir_all(&out).ok();
    Ok(())
}

/// The chart claims the Kubernetes it is built and tested against: its `kubeVersion` starts at
/// the minor the local cluster builds (`e2e/cluster/versions.env`), the kind path runs and the API
/// types are generated for (k8s-openapi's `v1_*` feature), and helm refuses an older cluster.
#[test]
fn the_chart_requires_the_kubernetes_it_is_tested_on() -> Result<()> {
    let root = frugal_e2e::repo_root();
    let read = |p: &str| std::fs::read_to_string(root.join(p));
    let versions = read("e2e/cluster/versions.env")?;
    let tested = versions.lines().find_map(|l| l.strip_prefix("K8S_VERSION=")).expect("versions.env names K8S_VERSION");
    let minor: u32 = tested.split('.').nth(1).expect("K8S_VERSION is major.minor.patch").parse()?;
    let chart_yaml = read("charts/frugal/Chart.yaml")?;
    let want = format!("kubeVersion: \">=1.{minor}.0-0\"");
    ensure!(chart_yaml.lines().any(|l| l == want), "charts/frugal/Chart.yaml should say {want} (the local cluster runs {tested})");
    // the kind path's node image is kindest/node at versions.env's release, or one made from it
    let kind = read("e2e/kind/up")?;
    ensure!(
        kind.contains("kindest/node:v$K8S_VERSION") && kind.contains("versions.env"),
        "e2e/kind/up should take its node image's Kubernetes release from e2e/cluster/versions.env"
    );
    let cargo = read("Cargo.toml")?;
    ensure!(cargo.contains(&format!("\"v1_{minor}\"")), "k8s-openapi's feature in Cargo.toml is not v1_{minor}");
    if enabled("chart-kube-version") {
        let older = format!("1.{}.0", minor - 1);
        let refused = helm(&["template", "frugal", &chart(), "--kube-version", &older]).expect_err("an older cluster renders");
        ensure!(refused.to_string().contains("kubeVersion"), "{refused}");
        helm(&["template", "frugal", &chart(), "--kube-version", tested])?;
    }
    Ok(())
}
