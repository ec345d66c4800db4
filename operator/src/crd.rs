//! The CRDs, generated from the API types: `frugal-operator crd` prints them and `crds/` holds
//! that output.

use frugal_api::{TrainingBudget, TrainingJob};
use kube::CustomResourceExt;

/// Each CRD's file name under `crds/` and its YAML.
pub fn crd_files() -> Vec<(String, String)> {
    [TrainingJob::crd(), TrainingBudget::crd()]
        .into_iter()
        .map(|crd| {
            let name = crd.metadata.name.clone().expect("a derived CRD is named");
            // no folding at 80 columns: a description stays on its line, so a changed word in the
            // types changes one line of crds/, not a reflowed paragraph
            let options = serde_saphyr::ser_options! { folded_wrap_chars: usize::MAX };
            let yaml = serde_saphyr::to_string_with_options(&crd, options).expect("a CRD serializes");
            (format!("{name}.yaml"), yaml)
        })
        .collect()
}

/// All CRDs as one multi-document YAML stream.
pub fn crds_yaml() -> String {
    crd_files().into_iter().map(|(_, yaml)| format!("---\n{yaml}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `crds/` must be exactly what the types generate: regenerate with
    /// `cargo run -p frugal-operator -- crd --dir crds`.
    #[test]
    fn checked_in_crds_match_the_types() {
        assert_dir_matches("crds");
    }

    /// The chart ships the same CRDs: regenerate with
    /// `cargo run -p frugal-operator -- crd --dir charts/frugal/crds`.
    #[test]
    fn the_charts_crds_match_the_types() {
        assert_dir_matches("charts/frugal/crds");
    }

    fn assert_dir_matches(relative: &str) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(relative);
        let mut expected: Vec<String> = crd_files().into_iter().map(|(name, _)| name).collect();
        expected.sort();
        let mut found: Vec<String> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{relative}/: {e}"))
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        found.sort();
        assert_eq!(found, expected, "{relative}/ holds other files than the generated CRDs");
        for (name, yaml) in crd_files() {
            let on_disk = std::fs::read_to_string(dir.join(&name)).unwrap();
            assert!(on_disk == yaml, "{relative}/{name} differs from the types; run `cargo run -p frugal-operator -- crd --dir {relative}`");
        }
    }

    #[test]
    fn crds_carry_printer_columns_short_names_and_cel() {
        let yaml = crds_yaml();
        for needle in ["shortNames:\n    - tj", "shortNames:\n    - tb", "x-kubernetes-validations", "GPU-Hours", "Perplexity"] {
            assert!(yaml.contains(needle), "CRDs lack {needle:?}");
        }
    }
}
