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
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "yaml")).collect();
    files.sort();
    files
}

/// The examples: `examples/` and its subdirectories (`examples/economics/`).
fn example_files() -> Vec<PathBuf> {
    let dir = repo().join("examples");
    let mut files = yaml_files(&dir);
    for sub in std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()) {
        files.extend(yaml_files(&sub));
    }
    files
}

fn schema_for(object: &Value) -> Value {
    match object["kind"].as_str() {
        Some("TrainingJob") => schema_of(TrainingJob::crd()),
        Some("TrainingBudget") => schema_of(TrainingBudget::crd()),
        other => panic!("unexpected kind {other:?}"),
    }
}

fn validate(object: &Value) -> Result<(), String> {
    Validator::new().validate(&schema_for(object), object, None).map_err(|e| e.to_string())
}

/// The rules an object (or its update from `old`) breaks: (kind, schema path, rule).
fn broken_rules(object: &Value, old: Option<&Value>) -> Vec<(String, String, String)> {
    let kind = object["kind"].as_str().unwrap_or_default().to_string();
    match Validator::new().validate(&schema_for(object), object, old) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.as_slice().iter().map(|e| (kind.clone(), schema_path(&e.field_path), e.rule.clone())).collect(),
    }
}

/// An object's field path as a path in its schema: list indices and map keys dropped.
fn schema_path(field_path: &str) -> String {
    let mut out = String::new();
    let mut chars = field_path.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '[' {
            for c in chars.by_ref() {
                if c == ']' {
                    break;
                }
            }
            out.push_str("[]");
        } else {
            out.push(c);
        }
    }
    out
}

/// Every CEL rule of a schema: (schema path, rule), and, for each, whether it compares with
/// `oldSelf` (a transition rule, broken only by an update).
fn rules_in(schema: &Value, path: &str, out: &mut Vec<(String, String)>) {
    for rule in schema["x-kubernetes-validations"].as_array().into_iter().flatten() {
        out.push((path.to_string(), rule["rule"].as_str().unwrap().to_string()));
    }
    let join = |key: &str| if path.is_empty() { key.to_string() } else { format!("{path}.{key}") };
    for (key, child) in schema["properties"].as_object().into_iter().flatten() {
        rules_in(child, &join(key), out);
    }
    if schema["items"].is_object() {
        rules_in(&schema["items"], &format!("{path}[]"), out);
    }
    if schema["additionalProperties"].is_object() {
        rules_in(&schema["additionalProperties"], &format!("{path}[]"), out);
    }
}

/// The fixture's `# expect: ` line.
fn expected(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .next()
        .and_then(|l| l.strip_prefix("# expect: "))
        .unwrap_or_else(|| panic!("{} lacks its '# expect: ' line", path.display()))
        .to_string()
}

/// An update fixture: the object created, then the update the API server refuses.
fn load_update(path: &Path) -> (Value, Value) {
    let text = std::fs::read_to_string(path).unwrap();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(docs.len(), 2, "{}: an update fixture holds the object and its update", path.display());
    (docs[0].clone(), docs[1].clone())
}

#[test]
fn examples_pass_every_rule_and_plan() {
    let files = example_files();
    assert!(files.len() >= 2, "examples/ has the quick start and the pipeline job");
    for path in files {
        let object = load(&path);
        validate(&object).unwrap_or_else(|e| panic!("{} is rejected: {e}", path.display()));
        if object["kind"] == "TrainingJob" {
            // the bounds the API server checks before CEL (kube's validator evaluates only CEL)
            let broken = frugal_api::schema::training_job_violations(&object);
            assert!(broken.is_empty(), "{} breaks the schema:\n{}", path.display(), broken.join("\n"));
            let job: TrainingJob = serde_json::from_value(object).unwrap();
            let plan = planner::plan(&job.spec, &PlanOptions::default()).unwrap_or_else(|e| panic!("{} does not plan: {e}", path.display()));
            assert!(plan.fits(), "{}: {:?}", path.display(), plan.warnings);
        }
    }
}

/// Every input path the trainer reads may be an `s3://` URI (a key, a prefix, a bucket's root)
/// as well as a local path; only a value with a scheme is held to the URI's form.
#[test]
fn input_paths_take_s3_uris_and_local_paths() {
    for (text, tokenizer, shards, init, teacher) in [
        (
            "s3://corpora/web/part-0.jsonl",
            "s3://models/gpt2/tokenizer.json",
            "s3://datasets/web/shards/",
            "s3://models/gpt2",
            "s3://lm-checkpoints/teacher",
        ),
        ("/data/web", "/data/gpt2/tokenizer.json", "/data/shards", "/models/gpt2", "/checkpoints/teacher/step-000000100"),
        ("s3://corpora/", "s3://models.v2/tokenizer.json", "s3://datasets", "s3://models/.cache-free/gpt2", "s3://ckpt/ml/teacher/step-000000100"),
    ] {
        let job = serde_json::json!({
            "apiVersion": "frugal.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "inputs"},
            "spec": {
                "model": {"type": "Preset", "preset": "tiny", "init": init},
                "data": {
                    "source": {"type": "Text", "text": {"path": text, "format": "jsonl"}},
                    "tokenizer": "file", "tokenizerFile": {"path": tokenizer},
                    "evalSets": [{"name": "lambada", "type": "LastWord", "path": text}],
                },
                "distill": {"teacher": {"model": {"type": "Preset", "preset": "tiny"}, "checkpoint": teacher}},
            }
        });
        validate(&job).unwrap_or_else(|e| panic!("{text}, {init}: {e}"));
        let mut sharded = job.clone();
        sharded["spec"]["data"]["source"] = serde_json::json!({"type": "Shards", "shards": {"path": shards}});
        validate(&sharded).unwrap_or_else(|e| panic!("{shards}: {e}"));
    }
}

#[test]
fn each_invalid_manifest_is_rejected_with_its_message() {
    let files = yaml_files(&repo().join("api/tests/invalid"));
    assert!(files.len() >= 10);
    for path in files {
        let expect = expected(&path);
        let expect = expect.as_str();
        let err = validate(&load(&path)).expect_err(&format!("{} was accepted", path.display()));
        assert!(err.contains(expect), "{}: expected {expect:?} in {err:?}", path.display());
    }
}

#[test]
fn each_invalid_update_is_rejected_with_its_message() {
    let files = yaml_files(&repo().join("api/tests/invalid/updates"));
    assert!(!files.is_empty());
    for path in files {
        let expect = expected(&path);
        let (old, new) = load_update(&path);
        validate(&old).unwrap_or_else(|e| panic!("{}: the original is rejected: {e}", path.display()));
        let err = Validator::new()
            .validate(&schema_for(&new), &new, Some(&old))
            .expect_err(&format!("{}: the update was accepted", path.display()))
            .to_string();
        assert!(err.contains(&expect), "{}: expected {expect:?} in {err:?}", path.display());
    }
}

/// A rule nobody has seen refuse anything may refuse nothing (or everything): each rule of the
/// generated CRDs must be broken by at least one fixture under api/tests/invalid (updates/ for
/// the rules that compare with oldSelf), which the e2e tests also send to a real API server.
#[test]
fn every_cel_rule_has_a_fixture_that_breaks_it() {
    let mut rules = Vec::new();
    for (kind, crd) in [("TrainingJob", TrainingJob::crd()), ("TrainingBudget", TrainingBudget::crd())] {
        let mut found = Vec::new();
        rules_in(&schema_of(crd), "", &mut found);
        rules.extend(found.into_iter().map(|(path, rule)| (kind.to_string(), path, rule)));
    }
    assert!(rules.len() >= 30, "only {} rules found: is the walk still reading the schema?", rules.len());
    let mut broken = Vec::new();
    for path in yaml_files(&repo().join("api/tests/invalid")) {
        broken.extend(broken_rules(&load(&path), None));
    }
    for path in yaml_files(&repo().join("api/tests/invalid/updates")) {
        let (old, new) = load_update(&path);
        broken.extend(broken_rules(&new, Some(&old)));
    }
    let missing: Vec<String> = rules
        .iter()
        .filter(|rule| !broken.contains(rule))
        .map(|(kind, path, rule)| format!("{kind} {}: {rule}", if path.is_empty() { "(root)" } else { path }))
        .collect();
    assert!(missing.is_empty(), "rules no fixture breaks (add one under api/tests/invalid):\n{}", missing.join("\n"));
}

/// The API server checks an integer against a bound truncated to an integer, so a fractional
/// bound needs a CEL rule that compares the value itself; an integer just outside each is in a
/// fixture (checked above, and against a real API server by the e2e tests).
#[test]
fn every_fractional_bound_holds_for_integers() {
    fn walk(schema: &Value, path: &str, out: &mut Vec<String>) {
        for (bound, op) in [("minimum", ">="), ("maximum", "<=")] {
            if let Some(b) = schema[bound].as_f64().filter(|b| b.fract() != 0.0) {
                let rule = format!("self {op} {b}");
                let has = schema["x-kubernetes-validations"].as_array().into_iter().flatten().any(|r| r["rule"] == rule.as_str());
                out.push(format!("{path} {bound} {b}: {}", if has { "held" } else { "NO RULE" }));
            }
        }
        for (key, child) in schema["properties"].as_object().into_iter().flatten() {
            walk(child, &format!("{path}.{key}"), out);
        }
        if schema["items"].is_object() {
            walk(&schema["items"], &format!("{path}[]"), out);
        }
    }
    let mut bounds = Vec::new();
    walk(&schema_of(TrainingJob::crd()), "", &mut bounds);
    walk(&schema_of(TrainingBudget::crd()), "", &mut bounds);
    assert_eq!(
        bounds,
        [
            ".spec.data.validationFraction maximum 0.5: held",
            ".spec.distill.teacher.model.sparsity.moe.capacityFactor minimum 0.1: held",
            ".spec.distill.temperature minimum 0.1: held",
            ".spec.model.sparsity.moe.capacityFactor minimum 0.1: held"
        ],
        "a fractional bound needs `self >= b` (or `<=`) beside it, and a fixture with an integer just outside"
    );
    for (fixture, field) in [
        ("capacity-factor-integer-zero", "capacityFactor: 0}"),
        ("validation-fraction-integer-one", "validationFraction: 1}"),
        ("distill-temperature-integer-zero", "temperature: 0}"),
        ("teacher-capacity-factor-integer-zero", "capacityFactor: 0}"),
    ] {
        let text = std::fs::read_to_string(repo().join(format!("api/tests/invalid/{fixture}.yaml"))).unwrap();
        assert!(text.contains(field), "{fixture} sends an integer");
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
