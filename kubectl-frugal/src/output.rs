//! The output formats kubectl shares across commands: `-o yaml` (the same data as `-o json`)
//! and `-o name` (`kind.group/name`, one a line).

use anyhow::Result;
use serde::Serialize;

/// The resource of `-o name` lines, as `kubectl get -o name` prints them.
pub const TRAINING_JOB: &str = "trainingjob.frugal.dev";
pub const TRAINING_BUDGET: &str = "trainingbudget.frugal.dev";

/// `value` as YAML: the same fields as its JSON.
pub fn yaml(value: &impl Serialize) -> Result<String> {
    // through JSON, so that YAML and JSON cannot name a field differently
    let json = serde_json::to_value(value)?;
    Ok(serde_saphyr::to_string(&json)?)
}

/// JSON text as YAML.
pub fn yaml_of_json(json: &str) -> Result<String> {
    yaml(&serde_json::from_str::<serde_json::Value>(json)?)
}

/// `resource/name` lines for `names`.
pub fn names<'a>(resource: &str, names: impl IntoIterator<Item = &'a str>) -> String {
    names.into_iter().map(|n| format!("{resource}/{n}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_lines_are_kubectls() {
        assert_eq!(names(TRAINING_JOB, ["a", "b"]), "trainingjob.frugal.dev/a\ntrainingjob.frugal.dev/b\n");
        assert_eq!(names(TRAINING_BUDGET, []), "");
    }

    #[test]
    fn yaml_holds_what_json_holds() {
        let json = r#"[{"job": "lm", "gpus": 2, "vsBaseline": {"flops": 1.5}, "phase": null}]"#;
        let yaml = yaml_of_json(json).unwrap();
        let back: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(back, serde_json::from_str::<serde_json::Value>(json).unwrap(), "{yaml}");
        assert!(yaml.contains("job: lm"), "{yaml}");
    }
}
