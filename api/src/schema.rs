//! The CRDs' OpenAPI schema, checked without an API server: the bounds the API server enforces
//! before any CEL rule (minimum and maximum, enums, string lengths, item and property counts,
//! required fields, types and unknown fields). `frugal-trainer train job.yaml` runs the manifest
//! a user would `kubectl apply`; with this it refuses what the API server would refuse, naming
//! the field, instead of training a job no cluster accepts.
//!
//! CEL rules are not evaluated here (that needs kube's `cel` feature); the planner and the
//! trainer's own checks cover what they guard.

use kube::CustomResourceExt;
use serde_json::Value;

/// Where `spec` of `object` (a `TrainingJob` as JSON) breaks the CRD's schema, one line per
/// field in the API server's words: `spec.training.checkpointInterval: Invalid value: 0: should
/// be greater than or equal to 1`. Empty when it conforms.
pub fn training_job_violations(object: &Value) -> Vec<String> {
    let crd = serde_json::to_value(crate::TrainingJob::crd()).expect("a CRD is JSON");
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let mut out = Vec::new();
    match object.get("spec") {
        Some(spec) => violations(schema, spec, "spec", &mut out),
        None => out.push("spec: Required value: a TrainingJob has a spec".into()),
    }
    out
}

/// The lines where `value` at `path` breaks `schema`, appended to `out`.
fn violations(schema: &Value, value: &Value, path: &str, out: &mut Vec<String>) {
    if value.is_null() {
        // an explicit null is "unset" to the API server when the field allows it
        if schema["nullable"] != true {
            out.push(format!("{path}: Invalid value: null: a value is needed, or leave the field out"));
        }
        return;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        let names: Vec<String> = allowed.iter().map(|a| a.to_string()).collect();
        out.push(format!("{path}: Unsupported value: {value}: supported values: {}", names.join(", ")));
        return;
    }
    let int_or_string = schema["x-kubernetes-int-or-string"] == true;
    match schema["type"].as_str() {
        Some("object") => object(schema, value, path, out),
        Some("array") => {
            let Some(items) = value.as_array() else { return wrong_type(path, value, "array", out) };
            if let Some(max) = schema["maxItems"].as_u64()
                && items.len() as u64 > max
            {
                out.push(format!("{path}: Too many: {}: must have at most {max} items", items.len()));
            }
            if let Some(min) = schema["minItems"].as_u64()
                && (items.len() as u64) < min
            {
                out.push(format!("{path}: Invalid value: {} items: must have at least {min} items", items.len()));
            }
            for (i, item) in items.iter().enumerate() {
                violations(&schema["items"], item, &format!("{path}[{i}]"), out);
            }
        }
        Some("integer") if !(value.is_i64() || value.is_u64()) => wrong_type(path, value, "integer", out),
        Some("number") if !value.is_number() => wrong_type(path, value, "number", out),
        Some("boolean") if !value.is_boolean() => wrong_type(path, value, "boolean", out),
        Some("string") if !(value.is_string() || (int_or_string && value.is_number())) => wrong_type(path, value, "string", out),
        _ if int_or_string && !(value.is_string() || value.is_i64() || value.is_u64()) => wrong_type(path, value, "integer or string", out),
        _ => {}
    }
    if let Some(n) = value.as_f64() {
        if let Some(min) = schema["minimum"].as_f64()
            && n < min
        {
            out.push(format!("{path}: Invalid value: {value}: should be greater than or equal to {}", number(min)));
        }
        if let Some(max) = schema["maximum"].as_f64()
            && n > max
        {
            out.push(format!("{path}: Invalid value: {value}: should be less than or equal to {}", number(max)));
        }
    }
    if let Some(s) = value.as_str() {
        let chars = s.chars().count() as u64;
        if let Some(max) = schema["maxLength"].as_u64()
            && chars > max
        {
            out.push(format!("{path}: Too long: may not be more than {max} bytes"));
        }
        if let Some(min) = schema["minLength"].as_u64()
            && chars < min
        {
            out.push(format!("{path}: Invalid value: {value}: should be at least {min} chars long"));
        }
    }
}

fn object(schema: &Value, value: &Value, path: &str, out: &mut Vec<String>) {
    let Some(fields) = value.as_object() else { return wrong_type(path, value, "object", out) };
    for name in schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str) {
        if !fields.contains_key(name) {
            out.push(format!("{path}.{name}: Required value"));
        }
    }
    if let Some(max) = schema["maxProperties"].as_u64()
        && fields.len() as u64 > max
    {
        out.push(format!("{path}: Too many: {}: must have at most {max} items", fields.len()));
    }
    let properties = schema["properties"].as_object();
    for (name, field) in fields {
        let at = format!("{path}.{name}");
        match (properties.and_then(|p| p.get(name)), schema.get("additionalProperties")) {
            (Some(s), _) => violations(s, field, &at, out),
            (None, Some(s)) if s.is_object() => violations(s, field, &at, out),
            (None, Some(Value::Bool(true))) => {}
            // kubectl apply refuses an unknown field (strict field validation); a typo would
            // otherwise be dropped and the default trained instead
            (None, _) if properties.is_some() => out.push(format!("{at}: unknown field \"{name}\" (docs/api.md lists the fields)")),
            (None, _) => {}
        }
    }
}

/// A bound as the API server prints it: 1, not 1.0.
fn number(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 { format!("{}", x as i64) } else { x.to_string() }
}

fn wrong_type(path: &str, value: &Value, want: &str, out: &mut Vec<String>) {
    out.push(format!("{path}: Invalid value: {value}: must be of type {want}"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(spec: Value) -> Value {
        json!({"apiVersion": "frugal.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "t"}, "spec": spec})
    }

    #[test]
    fn a_minimal_job_conforms() {
        assert_eq!(
            training_job_violations(&job(json!({"model": {"type": "Preset", "preset": "tiny"}, "data": {"source": {"type": "Synthetic"}}}))),
            Vec::<String>::new()
        );
    }

    #[test]
    fn bounds_enums_types_and_unknown_fields_are_named_by_path() {
        let v = training_job_violations(&job(json!({
            "model": {"type": "Preset", "preset": "tiny"},
            "data": {"source": {"type": "Synthetic"}},
            "training": {"checkpointInterval": 0, "batchSize": 70000, "precision": "fp8", "seed": "one", "evalIntervall": 5},
        })));
        let expect = [
            "spec.training.checkpointInterval: Invalid value: 0: should be greater than or equal to 1",
            "spec.training.batchSize: Invalid value: 70000: should be less than or equal to 65536",
            "spec.training.precision: Unsupported value: \"fp8\"",
            "spec.training.seed: Invalid value: \"one\": must be of type integer",
            "spec.training.evalIntervall: unknown field",
        ];
        for e in expect {
            assert!(v.iter().any(|line| line.starts_with(e)), "{e:?} not in {v:#?}");
        }
        assert_eq!(v.len(), expect.len(), "{v:#?}");
    }

    #[test]
    fn a_missing_spec_or_required_member_is_named() {
        assert_eq!(training_job_violations(&json!({"kind": "TrainingJob"})), ["spec: Required value: a TrainingJob has a spec"]);
        let v = training_job_violations(&job(
            json!({"model": {"type": "Preset", "preset": "tiny"}, "data": {"source": {"type": "Synthetic"}}, "training": {"duration": {"steps": 5}}}),
        ));
        assert_eq!(v, ["spec.training.duration.type: Required value"]);
    }
}
