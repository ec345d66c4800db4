//! The CRD's CEL rules, evaluated locally (kube's `cel` feature) the way the API server does:
//! defaults applied, then every rule. The e2e tests check the same manifests against a real
//! API server.

use std::path::{Path, PathBuf};

use frugal_api::planner::{self, PlanOptions};
use frugal_api::{TrainingBudget, TrainingJob};
use kube::CustomResourceExt;
use kube::core::cel::Validator;
use serde_json::Value;

fn schema_of(crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition) -> Value {
    let schema = crd.spec.versions[0].schema.clone().unwrap().open_api_v3_schema.unwrap();
    serde_json::to_value(schema).unwrap()
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn load(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn validate(object: &Value) -> Result<(), String> {
    let schema = match object["kind"].as_str() {
        Some("TrainingJob") => schema_of(TrainingJob::crd()),
        Some("TrainingBudget") => schema_of(TrainingBudget::crd()),
        other => panic!("unexpected kind {other:?}"),
    };
    Validator::new().validate(&schema, object, None).map_err(|e| e.to_string())
}

#[test]
fn examples_pass_every_rule_and_plan() {
    let files = yaml_files(&repo().join("examples"));
    assert!(files.len() >= 2, "examples/ has the quick start and the pipeline job");
    for path in files {
        let object = load(&path);
        validate(&object).unwrap_or_else(|e| panic!("{} is rejected: {e}", path.display()));
        if object["kind"] == "TrainingJob" {
            let job: TrainingJob = serde_json::from_value(object).unwrap();
            let plan = planner::plan(&job.spec, &PlanOptions::default())
                .unwrap_or_else(|e| panic!("{} does not plan: {e}", path.display()));
            assert!(plan.fits(), "{}: {:?}", path.display(), plan.warnings);
        }
    }
}

#[test]
fn each_invalid_manifest_is_rejected_with_its_message() {
    let files = yaml_files(&repo().join("api/tests/invalid"));
    assert!(files.len() >= 10);
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} lacks its '# expect: ' line", path.display()));
        let err = validate(&load(&path)).expect_err(&format!("{} was accepted", path.display()));
        assert!(err.contains(expect), "{}: expected {expect:?} in {err:?}", path.display());
    }
}

#[test]
fn budgets_may_change_on_a_running_job() {
    // No transition rule pins a budget or suspend: an update that lowers a budget passes.
    let mut object = load(&repo().join("examples/sparse-pipeline-4gpu.yaml"));
    let old = object.clone();
    object["spec"]["budget"]["maxGpuHours"] = 50.into();
    object["spec"]["runPolicy"]["suspend"] = true.into();
    let schema = schema_of(TrainingJob::crd());
    Validator::new().validate(&schema, &object, Some(&old)).unwrap();
}

#[test]
fn model_data_training_and_parallelism_are_immutable() {
    let old = load(&repo().join("examples/sparse-pipeline-4gpu.yaml"));
    let schema = schema_of(TrainingJob::crd());
    for (group, field, value) in [
        ("model", "custom", serde_json::json!({"layers": 12, "dModel": 1024, "heads": 16, "seqLen": 2048})),
        ("data", "validationFraction", 0.2.into()),
        ("training", "batchSize", 128.into()),
        ("parallelism", "microBatches", 32.into()),
    ] {
        let mut new = old.clone();
        new["spec"][group][field] = value;
        let err = Validator::new().validate(&schema, &new, Some(&old)).unwrap_err().to_string();
        assert!(err.contains(&format!("spec.{group} is immutable")), "{group}: {err}");
    }
}
